package controller

import (
	"context"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

// IndexPolicyBundleConfigMap indexes AgentTrustPolicies by the names of the
// trust bundle ConfigMaps they read.
const IndexPolicyBundleConfigMap = "spec.trustBundles.configMap.name"

// PolicyBundleConfigMaps is the indexer of IndexPolicyBundleConfigMap.
func PolicyBundleConfigMaps(obj client.Object) []string {
	p, ok := obj.(*mtlsv1alpha1.AgentTrustPolicy)
	if !ok {
		return nil
	}
	names := make([]string, 0, len(p.Spec.TrustBundles))
	for _, b := range p.Spec.TrustBundles {
		names = append(names, b.ConfigMap.Name)
	}
	return names
}

// Names of the two AgentIdentity controllers (in metrics and logs).
const (
	CertificateControllerName = "agentidentity-certificate"
	TrustControllerName       = "agentidentity-trust"
)

// trustPublicationChanged lets through identity updates in which the trust
// reconciler published its trust ConfigMap, stopped doing so, or changed
// its PolicyResolved condition: what Ready depends on besides the
// certificate.
var trustPublicationChanged = predicate.Funcs{
	CreateFunc:  func(event.CreateEvent) bool { return false },
	DeleteFunc:  func(event.DeleteEvent) bool { return false },
	GenericFunc: func(event.GenericEvent) bool { return false },
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, ok1 := e.ObjectOld.(*mtlsv1alpha1.AgentIdentity)
		n, ok2 := e.ObjectNew.(*mtlsv1alpha1.AgentIdentity)
		if !ok1 || !ok2 {
			return false
		}
		if o.Status.TrustConfigMap != n.Status.TrustConfigMap {
			return true
		}
		a := meta.FindStatusCondition(o.Status.Conditions, mtlsv1alpha1.ConditionPolicyResolved)
		b := meta.FindStatusCondition(n.Status.Conditions, mtlsv1alpha1.ConditionPolicyResolved)
		return (a == nil) != (b == nil) || (a != nil && (a.Status != b.Status || a.Reason != b.Reason || a.Message != b.Message))
	},
}

// renewRequested lets through identity updates that add or change a renew
// request (mtls.agentmesh.dev/renew), which bumps no generation.
var renewRequested = predicate.Funcs{
	CreateFunc:  func(event.CreateEvent) bool { return false },
	DeleteFunc:  func(event.DeleteEvent) bool { return false },
	GenericFunc: func(event.GenericEvent) bool { return false },
	UpdateFunc: func(e event.UpdateEvent) bool {
		n := e.ObjectNew.GetAnnotations()[mtlsv1alpha1.AnnotationRenew]
		return n != "" && n != e.ObjectOld.GetAnnotations()[mtlsv1alpha1.AnnotationRenew]
	},
}

// enqueueAllIdentities queues every AgentIdentity (after a CA change).
func enqueueAllIdentities(c client.Reader) func(context.Context, workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	return func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		list := &mtlsv1alpha1.AgentIdentityList{}
		if err := c.List(ctx, list, client.UnsafeDisableDeepCopy); err != nil {
			logf.FromContext(ctx).Error(err, "listing AgentIdentities after a CA change")
			return
		}
		for i := range list.Items {
			q.Add(reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
	}
}

// labelsChanged lets through creations, deletions and updates that change
// an object's labels.
var labelsChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		return !equality.Semantic.DeepEqual(e.ObjectOld.GetLabels(), e.ObjectNew.GetLabels())
	},
}

// identitiesIn queues every AgentIdentity of a namespace.
func identitiesIn(ctx context.Context, c client.Reader, ns string) []reconcile.Request {
	list := &mtlsv1alpha1.AgentIdentityList{}
	if err := c.List(ctx, list, client.InNamespace(ns), client.UnsafeDisableDeepCopy); err != nil {
		logf.FromContext(ctx).Error(err, "listing AgentIdentities to queue after a change: they are not queued", "namespace", ns)
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return out
}

// identitiesSelectedBy queues the AgentIdentities a policy selects.
func identitiesSelectedBy(ctx context.Context, c client.Reader, p *mtlsv1alpha1.AgentTrustPolicy) []reconcile.Request {
	sel, err := p.Spec.AgentSelector.AsSelector()
	if err != nil {
		// It cannot tell whom it governs: look at the whole namespace.
		return identitiesIn(ctx, c, p.Namespace)
	}
	list := &mtlsv1alpha1.AgentIdentityList{}
	if err := c.List(ctx, list, client.InNamespace(p.Namespace), client.MatchingLabelsSelector{Selector: sel}, client.UnsafeDisableDeepCopy); err != nil {
		logf.FromContext(ctx).Error(err, "listing the AgentIdentities a policy selects: they are not queued", "policy", client.ObjectKeyFromObject(p))
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return out
}

// policiesWhere lists every AgentTrustPolicy for which keep returns true.
func policiesWhere(ctx context.Context, c client.Reader, keep func(*mtlsv1alpha1.AgentTrustPolicy) bool, opts ...client.ListOption) []*mtlsv1alpha1.AgentTrustPolicy {
	list := &mtlsv1alpha1.AgentTrustPolicyList{}
	if err := c.List(ctx, list, opts...); err != nil {
		logf.FromContext(ctx).Error(err, "listing AgentTrustPolicies to queue their identities: they are not queued")
		return nil
	}
	var out []*mtlsv1alpha1.AgentTrustPolicy
	for i := range list.Items {
		if keep(&list.Items[i]) {
			out = append(out, &list.Items[i])
		}
	}
	return out
}

// peersMayList reports whether a policy has a peer that lists identities
// of namespace ns by label (so that identities appearing, disappearing or
// being relabelled there change its output).
func peersMayList(p *mtlsv1alpha1.AgentTrustPolicy, ns string) bool {
	check := func(peers []mtlsv1alpha1.AgentPeer) bool {
		for _, peer := range peers {
			if peer.IdentitySelector == nil || len(peer.IdentitySelector.MatchLabels)+len(peer.IdentitySelector.MatchExpressions) == 0 {
				continue
			}
			if peer.NamespaceSelector != nil || p.Namespace == ns {
				return true
			}
		}
		return false
	}
	for _, r := range p.Spec.Ingress {
		if check(r.From) {
			return true
		}
	}
	for _, r := range p.Spec.Egress {
		if check(r.To) {
			return true
		}
	}
	return false
}

// hasNamespaceSelector reports whether a policy selects peers by namespace
// labels.
func hasNamespaceSelector(p *mtlsv1alpha1.AgentTrustPolicy) bool {
	for _, r := range p.Spec.Ingress {
		for _, peer := range r.From {
			if peer.NamespaceSelector != nil {
				return true
			}
		}
	}
	for _, r := range p.Spec.Egress {
		for _, peer := range r.To {
			if peer.NamespaceSelector != nil {
				return true
			}
		}
	}
	return false
}

// dependentsOfIdentity queues the identities whose effective policy lists
// identities of this one's namespace by label.
func dependentsOfIdentity(c client.Reader) func(context.Context, client.Object) []reconcile.Request {
	return func(ctx context.Context, obj client.Object) []reconcile.Request {
		var out []reconcile.Request
		for _, p := range policiesWhere(ctx, c, func(p *mtlsv1alpha1.AgentTrustPolicy) bool { return peersMayList(p, obj.GetNamespace()) }) {
			out = append(out, identitiesSelectedBy(ctx, c, p)...)
		}
		return out
	}
}

// dependentsOfNamespace queues the identities governed by policies that
// select peers by namespace labels.
func dependentsOfNamespace(c client.Reader) func(context.Context, client.Object) []reconcile.Request {
	return func(ctx context.Context, _ client.Object) []reconcile.Request {
		var out []reconcile.Request
		for _, p := range policiesWhere(ctx, c, hasNamespaceSelector) {
			out = append(out, identitiesSelectedBy(ctx, c, p)...)
		}
		return out
	}
}

// dependentsOfBundle queues the identities selected by the policies that
// read a trust bundle ConfigMap.
func dependentsOfBundle(c client.Reader) func(context.Context, *corev1.ConfigMap) []reconcile.Request {
	return func(ctx context.Context, cm *corev1.ConfigMap) []reconcile.Request {
		var out []reconcile.Request
		for _, p := range policiesWhere(ctx, c, func(*mtlsv1alpha1.AgentTrustPolicy) bool { return true },
			client.InNamespace(cm.Namespace), client.MatchingFields{IndexPolicyBundleConfigMap: cm.Name}) {
			out = append(out, identitiesSelectedBy(ctx, c, p)...)
		}
		return out
	}
}

// recountDelay is how long a count in a status (the identities a policy
// has compiled into, the running Pods of an identity) waits after an event
// before it is taken again. The status follows a burst at most this late,
// and a count over N objects is taken about once per recountDelay instead
// of once per event (which made a fan-out or a scale-up cost O(N^2)).
const recountDelay = 500 * time.Millisecond

// delayed queues what mapFn returns, recountDelay after each event (for an
// update, for the old and the new object), so that a burst of events
// queues each request once per recountDelay.
func delayed(mapFn func(context.Context, client.Object) []reconcile.Request) handler.Funcs {
	add := func(ctx context.Context, obj client.Object, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		for _, req := range mapFn(ctx, obj) {
			q.AddAfter(req, recountDelay)
		}
	}
	return handler.Funcs{
		CreateFunc: func(ctx context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(ctx, e.Object, q)
		},
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(ctx, e.ObjectOld, q)
			add(ctx, e.ObjectNew, q)
		},
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(ctx, e.Object, q)
		},
		GenericFunc: func(ctx context.Context, e event.GenericEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(ctx, e.Object, q)
		},
	}
}

// onSignal is a source that calls enqueue after every value received from
// signal (a CA change subscription) until the controller stops.
func onSignal(signal <-chan struct{}, enqueue func(context.Context, workqueue.TypedRateLimitingInterface[reconcile.Request])) source.Source {
	return source.Func(func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-signal:
					enqueue(ctx, q)
				}
			}
		}()
		return nil
	})
}

// identityOfPod queues the identity a Pod names with its opt-in label.
func identityOfPod(_ context.Context, obj client.Object) []reconcile.Request {
	name, ok := obj.GetLabels()[mtlsv1alpha1.LabelIdentity]
	if !ok || name == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: obj.GetNamespace(), Name: name}}}
}

// podPhaseChanged lets through Pods appearing, disappearing, changing phase
// or starting to terminate: what the running count depends on.
var podPhaseChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, ok1 := e.ObjectOld.(*corev1.Pod)
		n, ok2 := e.ObjectNew.(*corev1.Pod)
		return !ok1 || !ok2 || o.Status.Phase != n.Status.Phase || o.DeletionTimestamp.IsZero() != n.DeletionTimestamp.IsZero() ||
			o.Labels[mtlsv1alpha1.LabelIdentity] != n.Labels[mtlsv1alpha1.LabelIdentity]
	},
}

// identityOfPodCertificateRequest queues the identity of the Pod a
// PodCertificateRequest is for.
func identityOfPodCertificateRequest(c client.Reader) func(context.Context, client.Object) []reconcile.Request {
	return func(ctx context.Context, obj client.Object) []reconcile.Request {
		pcr, ok := obj.(*certv1.PodCertificateRequest)
		if !ok {
			return nil
		}
		pod := &corev1.Pod{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: pcr.Namespace, Name: pcr.Spec.PodName}, pod); err != nil {
			if client.IgnoreNotFound(err) != nil {
				logf.FromContext(ctx).Error(err, "reading the Pod of a PodCertificateRequest: its identity is not queued", "pod", pcr.Spec.PodName)
			}
			return nil
		}
		return identityOfPod(ctx, pod)
	}
}
