package controller

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/policy"
)

// +kubebuilder:rbac:groups=mtls.agentmesh.dev,resources=agenttrustpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=mtls.agentmesh.dev,resources=agenttrustpolicies/status,verbs=get;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// AgentTrustPolicyReconciler reports on each AgentTrustPolicy: whether it
// compiles, whether the trust bundles it names are usable, how many
// identities it selects, and whether it is compiled into all of their trust
// ConfigMaps (which the AgentIdentity controller writes).
type AgentTrustPolicyReconciler struct {
	Client       client.Client
	APIReader    client.Reader
	BundleReader client.Reader
	BundleCache  cache.Cache
	Recorder     recorder.EventRecorder
	Clock        clock.PassiveClock
	TrustDomain  spiffeid.TrustDomain
	// MaxConcurrentReconciles is the number of parallel workers.
	MaxConcurrentReconciles int
}

// Reconcile computes one policy's status.
func (r *AgentTrustPolicyReconciler) Reconcile(ctx context.Context, req reconcile.Request) (ctrl.Result, error) {
	p := &mtlsv1alpha1.AgentTrustPolicy{}
	if err := r.Client.Get(ctx, req.NamespacedName, p); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !p.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	original := p.DeepCopy()
	now := r.Clock.Now()
	c := policy.Compile(p)

	selected, compiled, err := r.selection(ctx, p, c)
	if err != nil {
		return ctrl.Result{}, err
	}
	p.Status.SelectedIdentities = int32(len(selected))

	var (
		reason  = mtlsv1alpha1.ReasonCompiled
		message string
		result  ctrl.Result
	)
	bundleProblems := r.checkBundles(ctx, p, c)
	switch {
	case len(c.Errors) > 0 && c.AgentSelector == nil:
		reason = mtlsv1alpha1.ReasonPolicyInvalid
		message = "the policy cannot tell which identities it governs, so the identities it governed keep their last trust ConfigMap: " + c.ErrorMessage()
	case len(c.Errors) > 0:
		reason = mtlsv1alpha1.ReasonPolicyInvalid
		message = "these fields are left out, which narrows what the policy allows: " + c.ErrorMessage()
	case len(bundleProblems) > 0:
		reason = mtlsv1alpha1.ReasonBundleInvalid
		message = strings.Join(bundleProblems, "; ") + " (the last good bundle is kept)"
	case compiled < len(selected):
		reason = mtlsv1alpha1.ReasonCompiling
		message = fmt.Sprintf("compiled into %d of %d selected identities", compiled, len(selected))
		// The trust ConfigMaps' updates queue this policy again; look anyway
		// in case an identity cannot be written at all.
		result.RequeueAfter = 10 * time.Second
	default:
		message = fmt.Sprintf("compiled into the trust ConfigMaps of %d selected identities", len(selected))
	}
	// Rules that expired allow nothing any more; say so, and look again at
	// the next expiry.
	expired, next := expiries(c, now)
	if len(expired) > 0 {
		message += "; expired rules (they allow nothing): " + strings.Join(expired, ", ")
	}
	if !next.IsZero() && (result.RequeueAfter == 0 || next.Sub(now) < result.RequeueAfter) {
		result.RequeueAfter = max(next.Sub(now), time.Millisecond)
	}
	status := metav1.ConditionTrue
	if reason != mtlsv1alpha1.ReasonCompiled {
		status = metav1.ConditionFalse
	}
	prev := meta.FindStatusCondition(p.Status.Conditions, mtlsv1alpha1.ConditionReady)
	if status == metav1.ConditionFalse && reason != mtlsv1alpha1.ReasonCompiling && (prev == nil || prev.Reason != reason || prev.Message != message) {
		r.Recorder.Eventf(p, nil, corev1.EventTypeWarning, reason, "Compile", "%s", message)
	}
	meta.SetStatusCondition(&p.Status.Conditions, metav1.Condition{
		Type: mtlsv1alpha1.ConditionReady, Status: status, Reason: reason, Message: message,
		ObservedGeneration: p.Generation, LastTransitionTime: metav1.NewTime(now),
	})
	if status == metav1.ConditionTrue {
		p.Status.ObservedGeneration = p.Generation
	}
	if !equalPolicyStatus(&original.Status, &p.Status) {
		if err := r.Client.Status().Patch(ctx, p, client.MergeFrom(original), client.FieldOwner(mtlsv1alpha1.FieldManager)); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
		logf.FromContext(ctx).V(1).Info("policy status", "reason", reason, "selected", len(selected), "compiled", compiled)
	}
	return result, nil
}

// expiries lists the ingress rules that have expired at now ("ingress[1]
// at 2026-12-31T18:00:00Z") and returns the next expiry still to come.
func expiries(c *policy.Compiled, now time.Time) ([]string, time.Time) {
	if c.Ingress == nil {
		return nil, time.Time{}
	}
	var expired []string
	var next time.Time
	for i, r := range c.Ingress.Rules {
		switch {
		case r.ExpiresAt.IsZero():
		case !now.Before(r.ExpiresAt):
			expired = append(expired, fmt.Sprintf("ingress[%d] at %s", i, r.ExpiresAt.Format(time.RFC3339)))
		case next.IsZero() || r.ExpiresAt.Before(next):
			next = r.ExpiresAt
		}
	}
	return expired, next
}

// selection lists the identities the policy selects and counts those whose
// trust ConfigMap holds this generation of the policy.
func (r *AgentTrustPolicyReconciler) selection(ctx context.Context, p *mtlsv1alpha1.AgentTrustPolicy, c *policy.Compiled) (selected []types.NamespacedName, compiled int, err error) {
	if c.AgentSelector == nil {
		return nil, 0, nil
	}
	list := &mtlsv1alpha1.AgentIdentityList{}
	if err := r.Client.List(ctx, list, client.InNamespace(p.Namespace), client.MatchingLabelsSelector{Selector: c.AgentSelector}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, 0, err
	}
	want := strconv.FormatInt(p.Generation, 10)
	for i := range list.Items {
		id := &list.Items[i]
		selected = append(selected, client.ObjectKeyFromObject(id))
		cm := &corev1.ConfigMap{}
		if err := r.Client.Get(ctx, types.NamespacedName{Namespace: id.Namespace, Name: id.TrustConfigMapName()}, cm, client.UnsafeDisableDeepCopy); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return nil, 0, err
		}
		if compiledPolicyGenerations(cm.Annotations[mtlsv1alpha1.AnnotationPolicies])[p.Name] == want {
			compiled++
		}
	}
	return selected, compiled, nil
}

// checkBundles reads every trust bundle the policy names.
func (r *AgentTrustPolicyReconciler) checkBundles(ctx context.Context, p *mtlsv1alpha1.AgentTrustPolicy, c *policy.Compiled) []string {
	var problems []string
	for _, ref := range c.TrustBundles {
		if ref.TrustDomain == r.TrustDomain {
			problems = append(problems, fmt.Sprintf("trust bundle of %s: trustBundles cannot name the own trust domain", ref.TrustDomain.Name()))
			continue
		}
		if _, err := ReadTrustBundle(ctx, r.BundleReader, r.APIReader, p.Namespace, ref); err != nil {
			problems = append(problems, fmt.Sprintf("trust bundle of %s: %v", ref.TrustDomain.Name(), err))
		}
	}
	sort.Strings(problems)
	return problems
}

// SetupWithManager watches policies (spec changes), the identities of their
// namespace (which decide the selection), the trust ConfigMaps (which say
// what is compiled) and the trust bundle ConfigMaps.
func (r *AgentTrustPolicyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	c := mgr.GetClient()
	policiesIn := func(ctx context.Context, ns string) []reconcile.Request {
		var out []reconcile.Request
		for _, p := range policiesWhere(ctx, c, func(*mtlsv1alpha1.AgentTrustPolicy) bool { return true }, client.InNamespace(ns)) {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(p)})
		}
		return out
	}
	// A trust ConfigMap names the policies compiled into it; an update may
	// remove one, so both the old and the new list are queued. A policy's
	// pass reads every selected identity's ConfigMap, so while thousands of
	// them change it is queued once per recountDelay, not once per
	// ConfigMap (which made a fan-out over N identities cost O(N^2)).
	named := func(q workqueue.TypedRateLimitingInterface[reconcile.Request], cm client.Object) {
		for _, name := range compiledPolicyNames(cm.GetAnnotations()[mtlsv1alpha1.AnnotationPolicies]) {
			q.AddAfter(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: cm.GetNamespace(), Name: name}}, recountDelay)
		}
	}
	trustConfigMaps := handler.Funcs{
		CreateFunc: func(_ context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			named(q, e.Object)
		},
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			named(q, e.ObjectOld)
			named(q, e.ObjectNew)
		},
		DeleteFunc: func(_ context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			named(q, e.Object)
		},
	}
	b := ctrl.NewControllerManagedBy(mgr).
		For(&mtlsv1alpha1.AgentTrustPolicy{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&mtlsv1alpha1.AgentIdentity{}, delayed(func(ctx context.Context, obj client.Object) []reconcile.Request {
			return policiesIn(ctx, obj.GetNamespace())
		}), builder.WithPredicates(labelsChanged)).
		Watches(&corev1.ConfigMap{}, trustConfigMaps)
	if r.BundleCache != nil {
		b = b.WatchesRawSource(source.Kind(r.BundleCache, &corev1.ConfigMap{},
			handler.TypedEnqueueRequestsFromMapFunc(func(ctx context.Context, cm *corev1.ConfigMap) []reconcile.Request {
				var out []reconcile.Request
				for _, p := range policiesWhere(ctx, c, func(*mtlsv1alpha1.AgentTrustPolicy) bool { return true },
					client.InNamespace(cm.Namespace), client.MatchingFields{IndexPolicyBundleConfigMap: cm.Name}) {
					out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(p)})
				}
				return out
			})))
	}
	return b.WithOptions(controller.Options{MaxConcurrentReconciles: max(r.MaxConcurrentReconciles, 1)}).
		Complete(r)
}

func equalPolicyStatus(a, b *mtlsv1alpha1.AgentTrustPolicyStatus) bool {
	return a.SelectedIdentities == b.SelectedIdentities && a.ObservedGeneration == b.ObservedGeneration &&
		conditionsEqual(a.Conditions, b.Conditions)
}

func conditionsEqual(a, b []metav1.Condition) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Type != y.Type || x.Status != y.Status || x.Reason != y.Reason || x.Message != y.Message ||
			x.ObservedGeneration != y.ObservedGeneration || !x.LastTransitionTime.Equal(&y.LastTransitionTime) {
			return false
		}
	}
	return true
}
