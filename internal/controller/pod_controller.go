package controller

import (
	"context"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// PodReconciler makes problems with opted-in Pods visible on the Pods
// themselves: a Pod that asks for an AgentIdentity that does not exist, and
// a Pod that carries the opt-in label but was never injected (created while
// the webhook was missing or unreachable). Each Pod is told once per
// operator run. It only sees Pods with the opt-in label (a label-scoped
// cache).
type PodReconciler struct {
	Client   client.Client
	Recorder recorder.EventRecorder
	// OperatorNamespace is never injected, so its Pods are not reported.
	OperatorNamespace string

	told sync.Map // types.UID -> reason
}

// Reconcile reports on one opted-in Pod.
func (r *PodReconciler) Reconcile(ctx context.Context, req reconcile.Request) (ctrl.Result, error) {
	pod := &corev1.Pod{}
	if err := r.Client.Get(ctx, req.NamespacedName, pod); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !pod.DeletionTimestamp.IsZero() || pod.Namespace == r.OperatorNamespace || pod.Namespace == "kube-system" {
		r.told.Delete(pod.UID)
		return ctrl.Result{}, nil
	}
	name := pod.Labels[mtlsv1alpha1.LabelIdentity]
	var reason, note string
	id := &mtlsv1alpha1.AgentIdentity{}
	switch err := r.Client.Get(ctx, types.NamespacedName{Namespace: pod.Namespace, Name: name}, id); {
	case apierrors.IsNotFound(err):
		reason = mtlsv1alpha1.ReasonIdentityNotFound
		note = fmt.Sprintf("AgentIdentity %s does not exist in namespace %s: the Pod has no identity; create the identity, then recreate the Pod",
			name, pod.Namespace)
	case err != nil:
		return ctrl.Result{}, err
	case pod.Annotations[mtlsv1alpha1.AnnotationInjected] == "":
		reason = mtlsv1alpha1.ReasonNotInjected
		note = fmt.Sprintf("the Pod is labelled %s=%s but was not injected (it was created while the agentmesh webhook was not installed or not reachable); recreate it to get its identity",
			mtlsv1alpha1.LabelIdentity, name)
	}
	if reason == "" {
		r.told.Delete(pod.UID)
		return ctrl.Result{}, nil
	}
	if prev, ok := r.told.Load(pod.UID); ok && prev == reason {
		return ctrl.Result{}, nil
	}
	r.told.Store(pod.UID, reason)
	r.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, reason, "Inject", "%s", note)
	return ctrl.Result{}, nil
}

// SetupWithManager watches opted-in Pods and the identities they name.
func (r *PodReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("pod").
		For(&corev1.Pod{}).
		Complete(r)
}
