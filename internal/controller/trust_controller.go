package controller

import (
	"cmp"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/identity"
	"github.com/agentmesh/agentmesh/internal/policy"
)

// +kubebuilder:rbac:groups=mtls.agentmesh.dev,resources=agentidentities,verbs=get;list;watch
// +kubebuilder:rbac:groups=mtls.agentmesh.dev,resources=agentidentities/status,verbs=get;patch
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=mtls.agentmesh.dev,resources=agenttrustpolicies,verbs=get;list;watch

// TrustReconciler publishes every AgentIdentity's trust ConfigMap
// (<name>-trust: the trust bundle and the effective policy compiled from the
// AgentTrustPolicies that select it) and writes the trust part of its
// status: trustConfigMap (set only while a trust ConfigMap is in place),
// policies and PolicyResolved.
type TrustReconciler struct {
	// Client reads through the operator's caches and writes to the API
	// server.
	Client client.Client
	// APIReader reads past the cache, to tell a ConfigMap that is not ours
	// from one the cache has not seen yet.
	APIReader   client.Reader
	Clock       clock.PassiveClock
	CA          *ca.Holder
	TrustDomain spiffeid.TrustDomain
	// DefaultPosture applies to a direction that no AgentTrustPolicy governs.
	DefaultPosture policy.Posture
	// BundleReader reads ConfigMaps labelled as federated trust bundles;
	// BundleCache is the same cache, watched for changes.
	BundleReader client.Reader
	BundleCache  cache.Cache
	// Progress records the passes that end with the trust status written
	// or confirmed, for the certificate reconciler (may be nil).
	Progress *TrustProgress
	// MaxConcurrentReconciles is the number of parallel workers.
	MaxConcurrentReconciles int

	status statusWriter
}

// trustScope is what one trust pass works on.
type trustScope struct {
	id       *mtlsv1alpha1.AgentIdentity
	original *mtlsv1alpha1.AgentIdentity
	now      time.Time
	ca       *ca.State
}

// Reconcile brings one AgentIdentity's trust ConfigMap and the trust part
// of its status up to date. An identity whose spec is invalid, or a CA that
// is not usable, is the certificate reconciler's to report: nothing is
// published then, and what is in place stays.
func (r *TrustReconciler) Reconcile(ctx context.Context, req reconcile.Request) (ctrl.Result, error) {
	id := &mtlsv1alpha1.AgentIdentity{}
	if err := r.Client.Get(ctx, req.NamespacedName, id); err != nil {
		if apierrors.IsNotFound(err) {
			// The ConfigMap goes with its owner through garbage collection.
			r.status.forget(req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if !id.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	if _, err := identity.NewRequest(r.TrustDomain, id); err != nil {
		return ctrl.Result{}, nil
	}
	st, err := r.CA.Get()
	if err != nil {
		// A CA change queues every identity again.
		return ctrl.Result{}, nil
	}
	s := &trustScope{id: id, original: id.DeepCopy(), now: r.Clock.Now(), ca: st}
	trust, err := r.publishTrust(ctx, s)
	if err != nil {
		// Nothing was written; what is in place stays until a pass succeeds.
		return ctrl.Result{}, err
	}
	s.id.Status.TrustConfigMap, s.id.Status.TrustContentHash = "", ""
	if trust.published {
		s.id.Status.TrustConfigMap, s.id.Status.TrustContentHash = s.id.TrustConfigMapName(), trust.hash
	}
	status := metav1.ConditionFalse
	if trust.reason == mtlsv1alpha1.ReasonCompiled {
		status = metav1.ConditionTrue
	}
	setIdentityCondition(s.id, s.now, mtlsv1alpha1.ConditionPolicyResolved, status, trust.reason, trust.message)
	if err := r.status.write(ctx, r.Client, mtlsv1alpha1.FieldManagerTrust, trustStatus, s.original, s.id); err != nil {
		return ctrl.Result{}, err
	}
	r.Progress.Passed(r.Clock.Now())
	// A rule with expiresAt is compiled out at that instant.
	var result ctrl.Result
	if !trust.nextExpiry.IsZero() {
		result.RequeueAfter = max(trust.nextExpiry.Sub(s.now), time.Millisecond)
	}
	return result, nil
}

// SetupWithManager watches AgentIdentities (spec and label changes: labels
// decide which policies select an identity), their trust ConfigMaps, the
// policies of their namespace, what those policies' peers and bundles
// depend on (other identities, namespace labels, bundle ConfigMaps), and CA
// changes (the trust anchors), which queue every identity.
func (r *TrustReconciler) SetupWithManager(mgr ctrl.Manager) error {
	caChanged := r.CA.Subscribe()
	c := mgr.GetClient()
	b := ctrl.NewControllerManagedBy(mgr).
		Named(TrustControllerName).
		For(&mtlsv1alpha1.AgentIdentity{}, builder.WithPredicates(predicate.Or[client.Object](predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{}))).
		Owns(&corev1.ConfigMap{}).
		Watches(&mtlsv1alpha1.AgentTrustPolicy{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, obj client.Object) []reconcile.Request {
			return identitiesIn(ctx, c, obj.GetNamespace())
		}), builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&mtlsv1alpha1.AgentIdentity{}, handler.EnqueueRequestsFromMapFunc(dependentsOfIdentity(c)), builder.WithPredicates(labelsChanged)).
		WatchesMetadata(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(dependentsOfNamespace(c)), builder.WithPredicates(labelsChanged))
	if r.BundleCache != nil {
		b = b.WatchesRawSource(source.Kind(r.BundleCache, &corev1.ConfigMap{}, handler.TypedEnqueueRequestsFromMapFunc(dependentsOfBundle(c))))
	}
	return b.
		WatchesRawSource(onSignal(caChanged, enqueueAllIdentities(c))).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(r.MaxConcurrentReconciles, 1)}).
		Complete(r)
}

// trustResult is what the trust phase found, for the conditions.
type trustResult struct {
	// published is true when a trust ConfigMap is in place (current, or the
	// last good one kept because of an error); hash is its content hash.
	published bool
	hash      string
	reason    string
	message   string
	// nextExpiry is when a rule of the published policy expires; zero when
	// none does.
	nextExpiry time.Time
}

// publishTrust resolves every AgentTrustPolicy that selects the identity
// into its effective policy, assembles its trust bundle, and writes both
// into the identity's trust ConfigMap when they changed.
func (r *TrustReconciler) publishTrust(ctx context.Context, s *trustScope) (trustResult, error) {
	existing, previous, err := r.currentTrust(ctx, s)
	if err != nil {
		return trustResult{}, err
	}
	compiled, err := r.compiledPolicies(ctx, s.id.Namespace)
	if err != nil {
		return trustResult{}, err
	}
	// A policy that cannot tell whom it governs (invalid agentSelector) and
	// governed this identity before freezes its last output: the identity
	// neither loses nor gains what that policy said. Only what agentmesh
	// wrote is kept: content changed by someone else is resolved afresh,
	// under which the unparseable policy allows nothing.
	if c, before := frozenBy(compiled, existing); c != nil {
		ours, err := r.keptIsOurs(ctx, s, existing)
		if err != nil {
			return trustResult{}, err
		}
		if ours {
			s.id.Status.Policies = before
			hash, err := r.refreshAnchors(ctx, s, existing, previous)
			if err != nil {
				return trustResult{}, err
			}
			return trustResult{published: true, hash: hash, reason: mtlsv1alpha1.ReasonPolicyInvalid,
				message: fmt.Sprintf("AgentTrustPolicy %s cannot be compiled (%s); the last trust ConfigMap is kept", c.Name, c.ErrorMessage())}, nil
		}
		logf.FromContext(ctx).Info("the kept trust ConfigMap was changed by someone else: it is resolved again", "configMap", existing.Name,
			"contentHash", contentHash(existing), "recordedHash", s.id.Status.TrustContentHash)
	}

	world := &cacheWorld{ctx: ctx, c: r.Client}
	eff, selecting := policy.Resolve(policy.Input{
		TrustDomain: r.TrustDomain,
		Default:     r.DefaultPosture,
		Identity:    policy.Identity{Namespace: s.id.Namespace, Name: s.id.Name, Labels: s.id.Labels},
		Policies:    compiled,
		World:       world,
		Now:         s.now,
	})
	if world.err != nil {
		// A peer list that could not be read would narrow (or, for an
		// exception, widen) the policy: write nothing.
		return trustResult{}, fmt.Errorf("resolving the policies: %w", world.err)
	}
	sel := summarize(selecting)
	s.id.Status.Policies = sel.names

	bundles, bundleProblems, err := r.trustBundles(ctx, s, selecting, previous)
	if err != nil {
		return trustResult{}, err
	}
	if len(bundleProblems) > 0 {
		sel.reason = mtlsv1alpha1.ReasonBundleInvalid
		sel.problems = append(sel.problems, bundleProblems...)
	}
	out, err := policy.Render(eff, bundles)
	var tooLarge *policy.TooLargeError
	if errors.As(err, &tooLarge) {
		return r.keepTooLarge(ctx, s, existing, previous, err)
	}
	if err != nil {
		return trustResult{}, err
	}
	if err := r.writeTrustConfigMap(ctx, s, existing, out, strings.Join(sel.keys, ",")); err != nil {
		return trustResult{}, err
	}
	return trustResult{published: true, hash: out.ContentHash(), reason: sel.reason, message: sel.message(r.DefaultPosture), nextExpiry: eff.NextExpiry}, nil
}

// keepTooLarge keeps the last trust ConfigMap when the current policy does
// not fit in one. Content someone else changed is not kept: it is replaced
// by a policy that allows nothing until the policy fits.
func (r *TrustReconciler) keepTooLarge(ctx context.Context, s *trustScope, existing *corev1.ConfigMap, previous *previousTrust, tooLarge error) (trustResult, error) {
	res := trustResult{published: existing != nil, reason: mtlsv1alpha1.ReasonPolicyTooLarge, message: tooLarge.Error() + "; the last trust ConfigMap is kept"}
	if existing == nil {
		return res, nil
	}
	ours, err := r.keptIsOurs(ctx, s, existing)
	if err != nil {
		return trustResult{}, err
	}
	if ours {
		res.hash, err = r.refreshAnchors(ctx, s, existing, previous)
		return res, err
	}
	deny, _ := policy.Resolve(policy.Input{
		TrustDomain: r.TrustDomain, Default: policy.Deny,
		Identity: policy.Identity{Namespace: s.id.Namespace, Name: s.id.Name, Labels: s.id.Labels},
	})
	out, err := policy.Render(deny, map[string][]*x509.Certificate{r.TrustDomain.Name(): s.ca.Anchors})
	if err != nil {
		return trustResult{}, err
	}
	if err := r.writeTrustConfigMap(ctx, s, existing, out, ""); err != nil {
		return trustResult{}, err
	}
	res.hash = out.ContentHash()
	res.message = tooLarge.Error() + "; the last trust ConfigMap was changed by someone else, so it allows nothing until the policy fits"
	return res, nil
}

// keptIsOurs says whether the trust ConfigMap in place holds what
// agentmesh last wrote into it, by the hash in the identity's status (read
// again from the API server when the cache's copy differs, which it may
// just after a write). An identity whose status has no hash yet (written
// by an earlier version) is checked against the ConfigMap's own hash
// annotation.
func (r *TrustReconciler) keptIsOurs(ctx context.Context, s *trustScope, existing *corev1.ConfigMap) (bool, error) {
	hash := contentHash(existing)
	if hash == mtlsv1alpha1.CachedHashOther {
		return false, nil
	}
	recorded := s.id.Status.TrustContentHash
	if recorded == "" {
		return existing.Annotations[mtlsv1alpha1.AnnotationContentHash] == hash, nil
	}
	if recorded == hash {
		return true, nil
	}
	live := &mtlsv1alpha1.AgentIdentity{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(s.id), live); err != nil {
		return false, fmt.Errorf("reading AgentIdentity %s: %w", s.id.Name, err)
	}
	return live.Status.TrustContentHash == hash, nil
}

// currentTrust reads the identity's trust ConfigMap, nil when there is none
// or it is not the identity's, and what it holds.
func (r *TrustReconciler) currentTrust(ctx context.Context, s *trustScope) (*corev1.ConfigMap, *previousTrust, error) {
	name := s.id.TrustConfigMapName()
	existing := &corev1.ConfigMap{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: s.id.Namespace, Name: name}, existing); err != nil {
		if !apierrors.IsNotFound(err) {
			return nil, &previousTrust{}, fmt.Errorf("reading ConfigMap %s: %w", name, err)
		}
		return nil, &previousTrust{}, nil
	}
	if !ownedConfigMap(existing, s.id) {
		return nil, &previousTrust{}, nil
	}
	return existing, &previousTrust{r: r, cm: existing}, nil
}

// previousTrust is what the trust ConfigMap in place holds. The cache
// keeps only its metadata and the hash of its content (see the operator's
// cache transforms), which is what the common decisions need ("does it
// hold what the policies say now?"). The content itself is read from the
// API server, at most once a pass, by the few paths that reuse it: a kept
// policy (frozen or too large) whose anchors change, a federated bundle
// that cannot be read and keeps its last good content.
type previousTrust struct {
	r *TrustReconciler
	// cm is the cached trust ConfigMap; nil when there is none.
	cm  *corev1.ConfigMap
	out *policy.Output
}

// output is the content of the trust ConfigMap in place, empty when there
// is none. The API server's copy must be the one the cache saw (the same
// content hash): otherwise the pass fails and is retried once the cache
// has caught up.
func (p *previousTrust) output(ctx context.Context) (policy.Output, error) {
	switch {
	case p.out != nil:
		return *p.out, nil
	case p.cm == nil:
		return policy.Output{}, nil
	}
	cm := p.cm
	if _, slim := cm.Annotations[mtlsv1alpha1.AnnotationCachedHash]; slim {
		live := &corev1.ConfigMap{}
		if err := p.r.APIReader.Get(ctx, client.ObjectKeyFromObject(p.cm), live); err != nil {
			return policy.Output{}, fmt.Errorf("reading ConfigMap %s: %w", p.cm.Name, err)
		}
		if policy.DataContentHash(live.Data, live.BinaryData) != contentHash(p.cm) {
			return policy.Output{}, fmt.Errorf("ConfigMap %s changed since the cache saw it", p.cm.Name)
		}
		cm = live
	}
	out := policy.Output{BundlePEM: []byte(cm.Data[policy.BundleKey]), PolicyJSON: []byte(cm.Data[policy.PolicyKey])}
	p.out = &out
	return out, nil
}

// contentHash is the content hash of a trust ConfigMap: the one the cache
// recorded when it dropped the data, or computed from the data of a copy
// that has it.
func contentHash(cm *corev1.ConfigMap) string {
	if h, ok := cm.Annotations[mtlsv1alpha1.AnnotationCachedHash]; ok {
		return h
	}
	return policy.DataContentHash(cm.Data, cm.BinaryData)
}

// compiledPolicies compiles the namespace's AgentTrustPolicies.
func (r *TrustReconciler) compiledPolicies(ctx context.Context, namespace string) ([]*policy.Compiled, error) {
	list := &mtlsv1alpha1.AgentTrustPolicyList{}
	if err := r.Client.List(ctx, list, client.InNamespace(namespace)); err != nil {
		return nil, fmt.Errorf("listing AgentTrustPolicies: %w", err)
	}
	compiled := make([]*policy.Compiled, 0, len(list.Items))
	for i := range list.Items {
		compiled = append(compiled, policy.Compile(&list.Items[i]))
	}
	return compiled, nil
}

// frozenBy returns a policy that governed the identity's trust ConfigMap
// (at an earlier generation) and can no longer say whom it selects, with
// the policies the ConfigMap was compiled from; nil when there is none.
func frozenBy(compiled []*policy.Compiled, existing *corev1.ConfigMap) (*policy.Compiled, []string) {
	if existing == nil {
		return nil, nil
	}
	annotation := existing.Annotations[mtlsv1alpha1.AnnotationPolicies]
	before, gens := compiledPolicyNames(annotation), compiledPolicyGenerations(annotation)
	for _, c := range compiled {
		// Compiled from this very generation, the ConfigMap already holds
		// what the unparseable policy says (deny, see policy.Resolve).
		if gen, ok := gens[c.Name]; c.AgentSelector == nil && ok && gen != strconv.FormatInt(c.Generation, 10) {
			return c, before
		}
	}
	return nil, nil
}

// selection is what the policies selecting an identity say about it, for
// its status.
type selection struct {
	names, keys, problems []string
	reason                string
}

func summarize(selecting []*policy.Compiled) selection {
	sel := selection{names: make([]string, 0, len(selecting)), keys: make([]string, 0, len(selecting)), reason: mtlsv1alpha1.ReasonCompiled}
	for _, p := range selecting {
		sel.names = append(sel.names, p.Name)
		sel.keys = append(sel.keys, p.Key())
		switch {
		case p.AgentSelector == nil:
			sel.reason = mtlsv1alpha1.ReasonPolicyInvalid
			sel.problems = append(sel.problems, fmt.Sprintf("AgentTrustPolicy %s: %s (it cannot tell whom it governs, so it allows nothing in the directions it governs until fixed)", p.Name, p.ErrorMessage()))
		case len(p.Errors) > 0:
			sel.reason = mtlsv1alpha1.ReasonPolicyInvalid
			sel.problems = append(sel.problems, fmt.Sprintf("AgentTrustPolicy %s: %s (left out)", p.Name, p.ErrorMessage()))
		}
	}
	return sel
}

func (sel selection) message(posture policy.Posture) string {
	switch {
	case len(sel.problems) > 0:
		return strings.Join(sel.problems, "; ")
	case len(sel.names) == 0:
		return fmt.Sprintf("no AgentTrustPolicy selects this identity: the default posture (%s) applies", posture)
	default:
		return fmt.Sprintf("compiled from AgentTrustPolicies %s", strings.Join(sel.names, ", "))
	}
}

// refreshAnchors keeps a trust ConfigMap whose policy is frozen (kept
// because of an error) current in one respect: the own trust domain's CAs,
// which a CA rotation must be able to propagate whatever the policies say.
// It returns the content hash of what is in place afterwards.
func (r *TrustReconciler) refreshAnchors(ctx context.Context, s *trustScope, existing *corev1.ConfigMap, prev *previousTrust) (string, error) {
	if existing.Annotations[mtlsv1alpha1.AnnotationAnchorsHash] == s.ca.BundleHash() {
		return contentHash(existing), nil
	}
	previous, err := prev.output(ctx)
	if err != nil {
		return "", err
	}
	eff := &policy.Effective{}
	if err := json.Unmarshal(previous.PolicyJSON, eff); err != nil {
		return "", fmt.Errorf("reading the kept policy.json of ConfigMap %s: %w", existing.Name, err)
	}
	bundles := policy.PreviousBundles(previous)
	if bundles == nil {
		bundles = map[string][]*x509.Certificate{}
	}
	bundles[r.TrustDomain.Name()] = s.ca.Anchors
	out, err := policy.Render(eff, bundles)
	if err != nil {
		return "", err
	}
	return out.ContentHash(), r.writeTrustConfigMap(ctx, s, existing, out, existing.Annotations[mtlsv1alpha1.AnnotationPolicies])
}

// trustBundles collects the bundle of the own trust domain and of every
// federated trust domain that a selecting policy names. A federated bundle
// that cannot be read keeps its last good content from the previous
// ConfigMap (or is left out when there is none, which refuses that trust
// domain's peers rather than trusting something unchecked).
func (r *TrustReconciler) trustBundles(ctx context.Context, s *trustScope, selecting []*policy.Compiled, previous *previousTrust) (map[string][]*x509.Certificate, []string, error) {
	own := r.TrustDomain.Name()
	bundles := map[string][]*x509.Certificate{own: s.ca.Anchors}
	var prev map[string][]*x509.Certificate
	var problems []string
	for _, p := range selecting {
		for _, ref := range p.TrustBundles {
			td := ref.TrustDomain.Name()
			if td == own {
				problems = append(problems, fmt.Sprintf("AgentTrustPolicy %s: trustBundles cannot name the own trust domain %s", p.Name, td))
				continue
			}
			certs, err := r.readBundle(ctx, s.id.Namespace, ref)
			if err != nil {
				if prev == nil {
					out, perr := previous.output(ctx)
					if perr != nil {
						// Without the last good bundle the ConfigMap would
						// lose it: write nothing this pass.
						return nil, nil, perr
					}
					if prev = policy.PreviousBundles(out); prev == nil {
						prev = map[string][]*x509.Certificate{}
					}
				}
				kept := "no earlier bundle to keep: its peers are refused"
				if len(prev[td]) > 0 {
					bundles[td] = appendNew(bundles[td], prev[td])
					kept = "the last good bundle is kept"
				}
				problems = append(problems, fmt.Sprintf("AgentTrustPolicy %s: trust bundle of %s: %v; %s", p.Name, td, err, kept))
				continue
			}
			bundles[td] = appendNew(bundles[td], certs)
		}
	}
	return bundles, problems, nil
}

// readBundle reads a federated bundle from its ConfigMap, through the cache
// of ConfigMaps labelled as trust bundles. A ConfigMap that is not there is
// looked up directly, to tell "missing" from "not labelled".
func (r *TrustReconciler) readBundle(ctx context.Context, ns string, ref policy.BundleRef) ([]*x509.Certificate, error) {
	return ReadTrustBundle(ctx, r.BundleReader, r.APIReader, ns, ref)
}

// ReadTrustBundle reads and checks the federated bundle ref names.
func ReadTrustBundle(ctx context.Context, cached, live client.Reader, ns string, ref policy.BundleRef) ([]*x509.Certificate, error) {
	cm := &corev1.ConfigMap{}
	key := types.NamespacedName{Namespace: ns, Name: ref.ConfigMap}
	if err := cached.Get(ctx, key, cm); err != nil {
		if !apierrors.IsNotFound(err) {
			return nil, err
		}
		if err := live.Get(ctx, key, &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"}}); err == nil {
			return nil, fmt.Errorf("ConfigMap %s is not labelled %s=true, so agentmesh does not read it", ref.ConfigMap, mtlsv1alpha1.LabelTrustBundle)
		}
		return nil, fmt.Errorf("ConfigMap %s not found", ref.ConfigMap)
	}
	data, ok := cm.Data[ref.Key]
	if !ok {
		return nil, fmt.Errorf("ConfigMap %s has no key %s", ref.ConfigMap, ref.Key)
	}
	certs, err := policy.ParseBundle([]byte(data))
	if err != nil {
		return nil, fmt.Errorf("ConfigMap %s key %s: %w", ref.ConfigMap, ref.Key, err)
	}
	return certs, nil
}

// holdsExactly reports whether a trust ConfigMap holds out and nothing
// else. The content is compared, not the hash annotation: someone who edits
// policy.json (allowAll: true) or adds a CA to bundle.pem and leaves the
// annotation alone gets the ConfigMap rewritten.
//
// The cache keeps no content, only the hash of the content it saw
// (AnnotationCachedHash, computed from the data, not read from an
// annotation anyone can set), which is compared then.
func holdsExactly(cm *corev1.ConfigMap, out policy.Output) bool {
	if h, ok := cm.Annotations[mtlsv1alpha1.AnnotationCachedHash]; ok {
		return h == out.ContentHash()
	}
	return len(cm.Data) == 2 && len(cm.BinaryData) == 0 &&
		cm.Data[policy.BundleKey] == string(out.BundlePEM) && cm.Data[policy.PolicyKey] == string(out.PolicyJSON)
}

func (r *TrustReconciler) writeTrustConfigMap(ctx context.Context, s *trustScope, existing *corev1.ConfigMap, out policy.Output, policies string) error {
	hash := out.ContentHash()
	anchors := s.ca.BundleHash()
	if existing != nil && holdsExactly(existing, out) &&
		existing.Annotations[mtlsv1alpha1.AnnotationContentHash] == hash &&
		existing.Annotations[mtlsv1alpha1.AnnotationPolicies] == policies &&
		existing.Annotations[mtlsv1alpha1.AnnotationAnchorsHash] == anchors &&
		existing.Labels[mtlsv1alpha1.LabelIdentity] == s.id.Name {
		return nil
	}
	cm := existing
	if cm == nil {
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: s.id.Namespace, Name: s.id.TrustConfigMapName()}}
	} else {
		cm = cm.DeepCopy()
	}
	if cm.Labels == nil {
		cm.Labels = map[string]string{}
	}
	cm.Labels[mtlsv1alpha1.LabelManagedBy] = mtlsv1alpha1.ManagedByValue
	cm.Labels[mtlsv1alpha1.LabelIdentity] = s.id.Name
	if cm.Annotations == nil {
		cm.Annotations = map[string]string{}
	}
	delete(cm.Annotations, mtlsv1alpha1.AnnotationCachedHash)
	cm.Annotations[mtlsv1alpha1.AnnotationContentHash] = hash
	cm.Annotations[mtlsv1alpha1.AnnotationPolicies] = policies
	cm.Annotations[mtlsv1alpha1.AnnotationAnchorsHash] = anchors
	cm.Data = map[string]string{policy.BundleKey: string(out.BundlePEM), policy.PolicyKey: string(out.PolicyJSON)}
	cm.BinaryData = nil
	if err := controllerutil.SetControllerReference(s.id, cm, r.Client.Scheme()); err != nil {
		return err
	}
	if existing == nil {
		err := r.Client.Create(ctx, cm, client.FieldOwner(mtlsv1alpha1.FieldManager))
		if apierrors.IsAlreadyExists(err) {
			// Not in the cache: either the cache lags or the name is taken by
			// a ConfigMap that is not ours, which is never overwritten.
			live := &corev1.ConfigMap{}
			if gerr := r.APIReader.Get(ctx, client.ObjectKeyFromObject(cm), live); gerr != nil {
				return gerr
			}
			if !ownedConfigMap(live, s.id) {
				return fmt.Errorf("ConfigMap %s exists and was not created by agentmesh for this identity; it is left untouched", cm.Name)
			}
			return fmt.Errorf("ConfigMap %s is not in the cache yet: %w", cm.Name, err)
		}
		if err != nil {
			return fmt.Errorf("creating ConfigMap %s: %w", cm.Name, err)
		}
		return nil
	}
	if err := r.Client.Update(ctx, cm, client.FieldOwner(mtlsv1alpha1.FieldManager)); err != nil {
		return fmt.Errorf("updating ConfigMap %s: %w", cm.Name, err)
	}
	return nil
}

// ownedConfigMap reports whether cm is the trust ConfigMap agentmesh wrote
// for id (or for an earlier identity of the same name).
func ownedConfigMap(cm *corev1.ConfigMap, id *mtlsv1alpha1.AgentIdentity) bool {
	ref := metav1.GetControllerOf(cm)
	if ref == nil || ref.Kind != "AgentIdentity" || ref.APIVersion != mtlsv1alpha1.GroupVersion.String() || ref.Name != id.Name {
		return false
	}
	return ref.UID == id.UID || cm.Labels[mtlsv1alpha1.LabelIdentity] == id.Name
}

// compiledPolicyNames parses the policies annotation ("a=3,b=1") into names.
func compiledPolicyNames(annotation string) []string {
	var names []string
	for _, kv := range strings.Split(annotation, ",") {
		if name, _, ok := strings.Cut(kv, "="); ok && name != "" {
			names = append(names, name)
		}
	}
	return names
}

// compiledPolicyGenerations parses the policies annotation into
// name -> generation strings.
func compiledPolicyGenerations(annotation string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(annotation, ",") {
		if name, gen, ok := strings.Cut(kv, "="); ok && name != "" {
			out[name] = gen
		}
	}
	return out
}

func appendNew(list, add []*x509.Certificate) []*x509.Certificate {
	for _, c := range add {
		if !slices.ContainsFunc(list, c.Equal) {
			list = append(list, c)
		}
	}
	return list
}

// cacheWorld answers resolution's questions about other identities and
// namespaces from the operator's caches, without copying objects. A list
// that fails is recorded in err: the caller must not use the result then.
type cacheWorld struct {
	ctx context.Context
	c   client.Reader
	err error
}

func (w *cacheWorld) Identities(ns string) []policy.Identity {
	list := &mtlsv1alpha1.AgentIdentityList{}
	if err := w.c.List(w.ctx, list, client.InNamespace(ns), client.UnsafeDisableDeepCopy); err != nil {
		w.err = cmp.Or(w.err, fmt.Errorf("listing the AgentIdentities of %s: %w", ns, err))
		return nil
	}
	out := make([]policy.Identity, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, policy.Identity{Namespace: list.Items[i].Namespace, Name: list.Items[i].Name, Labels: list.Items[i].Labels})
	}
	return out
}

func (w *cacheWorld) Namespaces() []policy.Namespace {
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("NamespaceList"))
	if err := w.c.List(w.ctx, list, client.UnsafeDisableDeepCopy); err != nil {
		w.err = cmp.Or(w.err, fmt.Errorf("listing namespaces: %w", err))
		return nil
	}
	out := make([]policy.Namespace, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, policy.Namespace{Name: list.Items[i].Name, Labels: list.Items[i].Labels})
	}
	return out
}
