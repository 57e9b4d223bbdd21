package controller

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	certv1 "k8s.io/api/certificates/v1"
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
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/identity"
	"github.com/agentmesh/agentmesh/internal/policy"
)

// Event reasons of AgentIdentities.
const (
	eventIssued         = "Issued"
	eventRenewed        = "Renewed"
	eventReissued       = "Reissued"
	eventSecretRepaired = "SecretRepaired"
	eventIssuanceFailed = "IssuanceFailed"
	eventSecretConflict = "SecretConflict"
	eventInvalidSpec    = "InvalidSpec"
)

// errSecretConflict means a Secret of the wanted name exists and is not ours.
var errSecretConflict = errors.New("secret conflict")

// +kubebuilder:rbac:groups=mtls.agentmesh.dev,resources=agentidentities,verbs=get;list;watch
// +kubebuilder:rbac:groups=mtls.agentmesh.dev,resources=agentidentities/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=mtls.agentmesh.dev,resources=agentidentities/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=mtls.agentmesh.dev,resources=agenttrustpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// AgentIdentityReconciler issues and renews the certificate of every
// AgentIdentity into its Secret, publishes its trust bundle and effective
// policy into its trust ConfigMap, and reports both in the status.
type AgentIdentityReconciler struct {
	// Client reads through the operator's caches (Secrets: only those
	// labelled as agentmesh's) and writes to the API server.
	Client client.Client
	// APIReader reads past the cache, to inspect a Secret that exists but
	// is not in the cache (not labelled as ours).
	APIReader   client.Reader
	Recorder    recorder.EventRecorder
	Clock       clock.PassiveClock
	CA          *ca.Holder
	Keys        *KeyPool
	Metrics     *Metrics
	TrustDomain spiffeid.TrustDomain
	// DefaultPosture applies to a direction that no AgentTrustPolicy governs.
	DefaultPosture policy.Posture
	// Reissue bounds the rate of reissues a CA rotation causes.
	Reissue *ReissueGate
	// BundleReader reads ConfigMaps labelled as federated trust bundles;
	// BundleCache is the same cache, watched for changes.
	BundleReader client.Reader
	BundleCache  cache.Cache
	// MaxConcurrentReconciles is the number of parallel workers.
	MaxConcurrentReconciles int

	// written remembers a hash of the last status written per identity, so
	// that a pass that runs before the cache has caught up with that write
	// does not write the same status again.
	written sync.Map // types.UID -> uint64
}

// identityScope is what one reconcile pass works on.
type identityScope struct {
	id       *mtlsv1alpha1.AgentIdentity
	original *mtlsv1alpha1.AgentIdentity
	now      time.Time
	log      logr.Logger
	req      identity.Request
	ca       *ca.State
	// secret is the identity's Secret when it exists and is ours.
	secret *corev1.Secret
}

// Reconcile brings one AgentIdentity's Secret and status up to date.
func (r *AgentIdentityReconciler) Reconcile(ctx context.Context, req reconcile.Request) (ctrl.Result, error) {
	id := &mtlsv1alpha1.AgentIdentity{}
	if err := r.Client.Get(ctx, req.NamespacedName, id); err != nil {
		if apierrors.IsNotFound(err) {
			// The Secret goes with its owner through garbage collection.
			r.Metrics.ForgetIdentity(req.NamespacedName)
			r.Keys.Forget(req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if !id.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	s := &identityScope{id: id, original: id.DeepCopy(), now: r.Clock.Now(), log: logf.FromContext(ctx)}
	result, err := r.reconcilePhases(ctx, s)
	if werr := r.writeStatus(ctx, s); werr != nil {
		return ctrl.Result{}, errors.Join(err, werr)
	}
	r.recordMetrics(s)
	return result, err
}

// reconcilePhases keeps the certificate in place, then publishes the trust
// ConfigMap (which needs the CA's trust anchors).
func (r *AgentIdentityReconciler) reconcilePhases(ctx context.Context, s *identityScope) (ctrl.Result, error) {
	result, err := r.reconcileCertificate(ctx, s)
	if s.original == nil {
		return result, err
	}
	if perr := r.countPods(ctx, s); perr != nil {
		return result, errors.Join(err, perr)
	}
	if s.ca == nil {
		return result, err
	}
	trust, terr := r.publishTrust(ctx, s)
	if terr != nil {
		return result, errors.Join(err, terr)
	}
	if trust.reason == mtlsv1alpha1.ReasonCompiled {
		s.setCondition(mtlsv1alpha1.ConditionPolicyResolved, metav1.ConditionTrue, trust.reason, trust.message)
	} else {
		s.setCondition(mtlsv1alpha1.ConditionPolicyResolved, metav1.ConditionFalse, trust.reason, trust.message)
	}
	if !trust.published && meta.IsStatusConditionTrue(s.id.Status.Conditions, mtlsv1alpha1.ConditionReady) {
		// Pods cannot mount the identity without its trust ConfigMap.
		s.notReady(trust.reason, "the trust ConfigMap cannot be written: "+trust.message)
	}
	return result, err
}

// podCertificates keeps an identity in PodCertificate delivery: no Secret
// (one left from Secret delivery is deleted), and the status counts the
// Pods that hold a current certificate and the next refresh.
func (r *AgentIdentityReconciler) podCertificates(ctx context.Context, s *identityScope) error {
	if old := s.original.Status.SecretName; old != "" {
		sec := &corev1.Secret{}
		err := r.Client.Get(ctx, types.NamespacedName{Namespace: s.id.Namespace, Name: old}, sec)
		if err == nil && ownedBy(sec, s.id) {
			if err := r.Client.Delete(ctx, sec, client.Preconditions{UID: &sec.UID}); client.IgnoreNotFound(err) != nil {
				return fmt.Errorf("deleting Secret %s, unused in PodCertificate delivery: %w", old, err)
			}
			s.log.Info("deleted the Secret of Secret delivery", "secret", old)
		} else if client.IgnoreNotFound(err) != nil {
			return err
		}
	}
	count, next, err := CountPodCertificates(ctx, r.Client, s.id, s.now)
	if err != nil {
		return err
	}
	st := &s.id.Status
	st.SecretName, st.SerialNumber, st.CASerial = "", "", ""
	st.NotBefore, st.NotAfter, st.RenewalTime, st.LastFailureTime = nil, nil, nil, nil
	st.FailedIssuanceAttempts = 0
	st.ObservedGeneration = s.id.Generation
	st.PodCertificates, st.NextRefreshTime = count, next
	s.setCondition(mtlsv1alpha1.ConditionReady, metav1.ConditionTrue, mtlsv1alpha1.ReasonPodCertificate,
		"each Pod gets its own key and certificate from the signer "+mtlsv1alpha1.PodCertificateSignerName)
	s.setCondition(mtlsv1alpha1.ConditionIssuing, metav1.ConditionFalse, mtlsv1alpha1.ReasonPodCertificate,
		"the kubelet requests and refreshes each Pod's certificate")
	return nil
}

// countPods records how many running Pods use the identity.
func (r *AgentIdentityReconciler) countPods(ctx context.Context, s *identityScope) error {
	pods := &corev1.PodList{}
	if err := r.Client.List(ctx, pods, client.InNamespace(s.id.Namespace),
		client.MatchingLabels{mtlsv1alpha1.LabelIdentity: s.id.Name}, client.UnsafeDisableDeepCopy); err != nil {
		return fmt.Errorf("listing Pods: %w", err)
	}
	var running int32
	for i := range pods.Items {
		if pods.Items[i].Status.Phase == corev1.PodRunning && pods.Items[i].DeletionTimestamp.IsZero() {
			running++
		}
	}
	s.id.Status.Pods = running
	return nil
}

// reconcileCertificate runs the certificate phases in order; each one either
// hands over to the next or ends with a result.
func (r *AgentIdentityReconciler) reconcileCertificate(ctx context.Context, s *identityScope) (ctrl.Result, error) {
	if err := r.resolveRequest(s); err != nil {
		return ctrl.Result{}, reconcile.TerminalError(err)
	}
	ctx = logf.IntoContext(ctx, s.log)
	if !r.loadCA(s) {
		return ctrl.Result{}, nil
	}
	if s.id.Spec.KeyDelivery == mtlsv1alpha1.KeyDeliveryPodCertificate {
		return ctrl.Result{}, r.podCertificates(ctx, s)
	}
	if wait := r.backoffRemaining(s); wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	if err := r.loadSecret(ctx, s); err != nil {
		if errors.Is(err, errSecretConflict) {
			return r.conflict(s), nil
		}
		return ctrl.Result{}, err
	}
	if s.secret == nil && r.conflictPersists(ctx, s) {
		return r.conflict(s), nil
	}
	d := identity.Decide(s.req, s.ca, identity.Observed{
		Data:       secretData(s.secret),
		SpecHash:   annotation(s.secret, mtlsv1alpha1.AnnotationSpecHash),
		EverIssued: s.id.Status.SerialNumber != "",
		UID:        string(s.id.UID),
	}, s.now)
	if d.Reissue {
		return r.issue(ctx, s, d)
	}
	return r.keep(ctx, s, d)
}

// resolveRequest validates the spec and derives the issuance request.
func (r *AgentIdentityReconciler) resolveRequest(s *identityScope) error {
	req, err := identity.NewRequest(r.TrustDomain, s.id)
	if err != nil {
		if !isCondition(s.id, mtlsv1alpha1.ConditionReady, metav1.ConditionFalse, mtlsv1alpha1.ReasonInvalidSpec, err.Error()) {
			r.Recorder.Eventf(s.id, nil, corev1.EventTypeWarning, eventInvalidSpec, "Validate", "Invalid spec: %s", err.Error())
		}
		s.notReady(mtlsv1alpha1.ReasonInvalidSpec, err.Error())
		s.setCondition(mtlsv1alpha1.ConditionIssuing, metav1.ConditionFalse, mtlsv1alpha1.ReasonInvalidSpec, "nothing is issued until the spec is fixed")
		return fmt.Errorf("invalid spec: %w", err)
	}
	s.req = req
	s.id.Status.SPIFFEID = req.SPIFFEID.String()
	s.log = s.log.WithValues("spiffeID", s.id.Status.SPIFFEID)
	return nil
}

// loadCA fetches the CA. Before the CA was loaded once, the pass ends
// quietly: loading it queues every identity again.
func (r *AgentIdentityReconciler) loadCA(s *identityScope) bool {
	st, err := r.CA.Get()
	switch {
	case errors.Is(err, ca.ErrNotLoaded):
		s.skipStatus()
		return false
	case err != nil:
		msg := "the agent CA is not usable: " + err.Error()
		s.notReady(mtlsv1alpha1.ReasonCANotReady, msg)
		s.setCondition(mtlsv1alpha1.ConditionIssuing, metav1.ConditionTrue, mtlsv1alpha1.ReasonCANotReady, msg)
		return false
	}
	s.ca = st
	return true
}

// backoffRemaining is how long the previous failure still holds off the next
// attempt, unless the spec changed since.
func (r *AgentIdentityReconciler) backoffRemaining(s *identityScope) time.Duration {
	st := s.id.Status
	if st.FailedIssuanceAttempts == 0 || st.LastFailureTime == nil {
		return 0
	}
	c := meta.FindStatusCondition(st.Conditions, mtlsv1alpha1.ConditionIssuing)
	if c == nil || c.Status != metav1.ConditionTrue || c.ObservedGeneration != s.id.Generation ||
		(c.Reason != mtlsv1alpha1.ReasonIssuanceFailed && c.Reason != mtlsv1alpha1.ReasonSecretConflict) {
		return 0
	}
	wait := identity.Backoff(st.FailedIssuanceAttempts)
	if c.Reason == mtlsv1alpha1.ReasonSecretConflict {
		wait = min(wait, conflictPollMax)
	}
	return st.LastFailureTime.Add(wait).Sub(s.now)
}

// loadSecret finds the identity's Secret in the cache. A Secret there that
// another identity owns is a conflict; one that is not in the cache at all
// may still exist unlabelled, which creating it reveals.
func (r *AgentIdentityReconciler) loadSecret(ctx context.Context, s *identityScope) error {
	sec := &corev1.Secret{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: s.id.Namespace, Name: s.id.EffectiveSecretName()}, sec)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading Secret: %w", err)
	}
	if !ownedBy(sec, s.id) {
		return errSecretConflict
	}
	s.secret = sec
	return nil
}

// conflictPersists checks, after a pass that found the Secret name taken,
// whether it still is, before any key is generated for nothing. The Secret
// is not in the cache (it is not labelled as ours), so this reads the API.
func (r *AgentIdentityReconciler) conflictPersists(ctx context.Context, s *identityScope) bool {
	if !isConditionReason(s.id, mtlsv1alpha1.ConditionReady, mtlsv1alpha1.ReasonSecretConflict) {
		return false
	}
	live := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: s.id.Namespace, Name: s.id.EffectiveSecretName()}, live); err != nil {
		return false
	}
	return !ownedBy(live, s.id)
}

// issue generates a key, issues a certificate and writes the Secret.
func (r *AgentIdentityReconciler) issue(ctx context.Context, s *identityScope, d identity.Decision) (ctrl.Result, error) {
	if d.Reason == mtlsv1alpha1.ReasonCARotated && !s.ca.Rotation.Compromised && r.Reissue != nil {
		if wait := r.Reissue.Admit(s.id.UID, s.now); wait > 0 {
			// The certificate in place is valid and trusted: wait for this
			// identity's slot without touching its status.
			return ctrl.Result{RequeueAfter: wait}, nil
		}
	}
	s.log.V(1).Info("issuing", "reason", d.Reason, "why", d.Message)
	var key crypto.Signer
	if identity.IsSlowKey(s.req.KeyAlgorithm) {
		k, ready, err := r.Keys.Take(ctx, s.id.UID, client.ObjectKeyFromObject(s.id), s.req.KeyAlgorithm, s.req.KeySize)
		if err != nil {
			return r.fail(s, d, fmt.Errorf("generating the private key: %w", err)), nil
		}
		if !ready {
			s.keepReadyIfValid(d)
			s.setCondition(mtlsv1alpha1.ConditionIssuing, metav1.ConditionTrue, mtlsv1alpha1.ReasonKeyGenerating,
				fmt.Sprintf("generating an %s-%d key off the reconcile path (%s)", s.req.KeyAlgorithm, s.req.KeySize, d.Message))
			return ctrl.Result{}, nil
		}
		key = k
	} else {
		k, err := identity.GenerateKey(s.req.KeyAlgorithm, s.req.KeySize, rand.Reader)
		if err != nil {
			return r.fail(s, d, fmt.Errorf("generating the private key: %w", err)), nil
		}
		key = k
	}
	issued, err := identity.Issue(s.ca, s.req, key, s.now, rand.Reader)
	if err != nil {
		return r.fail(s, d, err), nil
	}
	data, err := issued.SecretData(s.ca.BundlePEM())
	if err != nil {
		return r.fail(s, d, err), nil
	}
	if err := r.writeSecret(ctx, s, func(sec *corev1.Secret) { sec.Data = data }); err != nil {
		switch {
		case errors.Is(err, errSecretConflict):
			return r.conflict(s), nil
		case apierrors.IsConflict(err):
			// Our view of the Secret was stale; the next pass sees the
			// current one (and may find it fine already).
			return ctrl.Result{}, err
		}
		return r.fail(s, d, fmt.Errorf("writing Secret %s: %w", s.id.EffectiveSecretName(), err)), nil
	}
	renewal := identity.RenewalFor(s.req, string(s.id.UID), issued.Leaf)
	r.Metrics.Issued(d.Reason)
	s.log.Info("issued certificate", "reason", d.Reason, "serial", ca.SerialHex(issued.Leaf.SerialNumber),
		"notAfter", issued.Leaf.NotAfter, "renewalTime", renewal)
	// A first issuance that went through at once is not an Event: the
	// status says it (Ready, serialNumber, notAfter, renewalTime), and
	// when thousands of identities are created together an Event each
	// would be a quarter of the operator's writes. Every later issuance
	// (renewal, reissue, repair) and a first one after failures is.
	if d.Reason != mtlsv1alpha1.ReasonPending || s.original.Status.FailedIssuanceAttempts > 0 {
		r.Recorder.Eventf(s.id, nil, corev1.EventTypeNormal, eventFor(d.Reason), "Issue",
			"Issued certificate %s for %s, valid until %s, renewal at %s (%s)",
			ca.SerialHex(issued.Leaf.SerialNumber), s.req.SPIFFEID, issued.Leaf.NotAfter.UTC().Format(time.RFC3339),
			renewal.UTC().Format(time.RFC3339), d.Message)
	}
	s.succeeded(issued.Leaf, renewal, s.ca.Active.SerialHex())
	if err := r.removeOldSecret(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: renewal.Sub(s.now)}, nil
}

// keep keeps the certificate in place, refreshing the Secret's trust
// bundle when it is stale.
func (r *AgentIdentityReconciler) keep(ctx context.Context, s *identityScope, d identity.Decision) (ctrl.Result, error) {
	if d.BundleStale {
		bundle := s.ca.BundlePEM()
		if err := r.writeSecret(ctx, s, func(sec *corev1.Secret) { sec.Data[identity.SecretTrustKey] = bundle }); err != nil {
			return ctrl.Result{}, fmt.Errorf("updating the trust bundle of Secret %s: %w", s.secret.Name, err)
		}
		s.log.V(1).Info("updated the trust bundle in the Secret")
	}
	s.succeeded(d.Current.Leaf, d.Current.RenewalTime, signerSerial(s.ca, d.Current.Leaf, d.Current.Chain))
	if err := r.removeOldSecret(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: d.Current.RenewalTime.Sub(s.now)}, nil
}

// fail records a failed issuance and schedules the next attempt.
func (r *AgentIdentityReconciler) fail(s *identityScope, d identity.Decision, err error) ctrl.Result {
	attempts := s.id.Status.FailedIssuanceAttempts + 1
	s.id.Status.FailedIssuanceAttempts = attempts
	t := metav1.NewTime(s.now)
	s.id.Status.LastFailureTime = &t
	backoff := identity.Backoff(attempts)
	msg := fmt.Sprintf("issuance failed (attempt %d, next in %s): %v", attempts, backoff, err)
	s.keepReadyIfValid(d)
	s.setCondition(mtlsv1alpha1.ConditionIssuing, metav1.ConditionTrue, mtlsv1alpha1.ReasonIssuanceFailed, msg)
	r.Metrics.Failed(mtlsv1alpha1.ReasonIssuanceFailed)
	s.log.Info("issuance failed", "attempt", attempts, "backoff", backoff, "error", err.Error())
	r.Recorder.Eventf(s.id, nil, corev1.EventTypeWarning, eventIssuanceFailed, "Issue", "%s", msg)
	return ctrl.Result{RequeueAfter: backoff}
}

// conflict reports a Secret name taken by something that is not ours. The
// Secret is never touched; the name is looked at again with back-off.
func (r *AgentIdentityReconciler) conflict(s *identityScope) ctrl.Result {
	name := s.id.EffectiveSecretName()
	msg := fmt.Sprintf("Secret %s exists and was not created by agentmesh for this identity; it is left untouched: "+
		"delete it or set spec.secretName to another name", name)
	attempts := s.id.Status.FailedIssuanceAttempts + 1
	if !isCondition(s.id, mtlsv1alpha1.ConditionReady, metav1.ConditionFalse, mtlsv1alpha1.ReasonSecretConflict, msg) {
		r.Recorder.Eventf(s.id, nil, corev1.EventTypeWarning, eventSecretConflict, "Issue", "%s", msg)
		r.Metrics.Failed(mtlsv1alpha1.ReasonSecretConflict)
	}
	s.id.Status.FailedIssuanceAttempts = attempts
	t := metav1.NewTime(s.now)
	s.id.Status.LastFailureTime = &t
	s.notReady(mtlsv1alpha1.ReasonSecretConflict, msg)
	s.setCondition(mtlsv1alpha1.ConditionIssuing, metav1.ConditionTrue, mtlsv1alpha1.ReasonSecretConflict, msg)
	// The foreign Secret is not watched (only our own Secrets are cached),
	// so its removal is noticed by looking again, at most every 30s.
	return ctrl.Result{RequeueAfter: min(identity.Backoff(attempts), conflictPollMax)}
}

// conflictPollMax bounds the back-off between looks at a taken Secret name.
const conflictPollMax = 30 * time.Second

// writeSecret creates or updates the identity's Secret with our labels,
// annotations and owner reference, and with the data set by mutate. A
// Secret that exists but is not in the cache is inspected directly: if it
// is ours (the cache lags, or someone removed our labels) it is updated,
// otherwise it is a conflict and left alone.
func (r *AgentIdentityReconciler) writeSecret(ctx context.Context, s *identityScope, mutate func(*corev1.Secret)) error {
	sec := s.secret
	if sec == nil {
		sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: s.id.Namespace, Name: s.id.EffectiveSecretName()}, Type: corev1.SecretTypeTLS}
		if err := r.decorateSecret(s, sec, mutate); err != nil {
			return err
		}
		err := r.Client.Create(ctx, sec, client.FieldOwner(FieldOwner))
		if !apierrors.IsAlreadyExists(err) {
			return err
		}
		live := &corev1.Secret{}
		if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(sec), live); err != nil {
			return err
		}
		if !ownedBy(live, s.id) {
			return errSecretConflict
		}
		sec = live
	} else {
		sec = sec.DeepCopy()
	}
	if err := r.decorateSecret(s, sec, mutate); err != nil {
		return err
	}
	return r.Client.Update(ctx, sec, client.FieldOwner(FieldOwner))
}

func (r *AgentIdentityReconciler) decorateSecret(s *identityScope, sec *corev1.Secret, mutate func(*corev1.Secret)) error {
	if sec.Labels == nil {
		sec.Labels = map[string]string{}
	}
	sec.Labels[mtlsv1alpha1.LabelManagedBy] = mtlsv1alpha1.ManagedByValue
	sec.Labels[mtlsv1alpha1.LabelIdentity] = s.id.Name
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	sec.Annotations[mtlsv1alpha1.AnnotationSPIFFEID] = s.req.SPIFFEID.String()
	sec.Annotations[mtlsv1alpha1.AnnotationSpecHash] = s.req.Hash()
	if sec.Data == nil {
		sec.Data = map[string][]byte{}
	}
	mutate(sec)
	// Drop a stale owner (an earlier identity of the same name) first.
	refs := sec.OwnerReferences[:0]
	for _, ref := range sec.OwnerReferences {
		if ref.Kind != "AgentIdentity" || ref.UID == s.id.UID {
			refs = append(refs, ref)
		}
	}
	sec.OwnerReferences = refs
	return controllerutil.SetControllerReference(s.id, sec, r.Client.Scheme())
}

// removeOldSecret deletes the Secret of a previous spec.secretName once the
// new one is in place, if it is ours.
func (r *AgentIdentityReconciler) removeOldSecret(ctx context.Context, s *identityScope) error {
	old := s.original.Status.SecretName
	if old == "" || old == s.id.EffectiveSecretName() {
		return nil
	}
	sec := &corev1.Secret{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: s.id.Namespace, Name: old}, sec); err != nil {
		return client.IgnoreNotFound(err)
	}
	if !ownedBy(sec, s.id) {
		return nil
	}
	if err := r.Client.Delete(ctx, sec, client.Preconditions{UID: &sec.UID}); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("deleting the previous Secret %s: %w", old, err)
	}
	s.log.Info("deleted the Secret of the previous secretName", "secret", old)
	return nil
}

// writeStatus patches the status when it changed, once per pass.
func (r *AgentIdentityReconciler) writeStatus(ctx context.Context, s *identityScope) error {
	if s.original == nil {
		return nil
	}
	if equalStatus(&s.original.Status, &s.id.Status) {
		return nil
	}
	h := statusHash(&s.id.Status)
	if prev, ok := r.written.Load(s.id.UID); ok && prev.(uint64) == h {
		// Written by an earlier pass; the cache has not caught up yet.
		return nil
	}
	if err := r.Client.Status().Patch(ctx, s.id, client.MergeFrom(s.original), client.FieldOwner(FieldOwner)); err != nil {
		return client.IgnoreNotFound(err)
	}
	r.written.Store(s.id.UID, h)
	return nil
}

func (r *AgentIdentityReconciler) recordMetrics(s *identityScope) {
	st := &s.id.Status
	ready := meta.IsStatusConditionTrue(st.Conditions, mtlsv1alpha1.ConditionReady)
	var notAfter, renewal float64
	if st.NotAfter != nil {
		notAfter = float64(st.NotAfter.Unix())
	}
	if st.RenewalTime != nil {
		renewal = float64(st.RenewalTime.Unix())
	}
	r.Metrics.SetIdentity(client.ObjectKeyFromObject(s.id), ready, notAfter, renewal)
}

// SetupWithManager watches AgentIdentities (spec and label changes), their
// Secrets and trust ConfigMaps, the policies of their namespace, what those
// policies' peers and bundles depend on (other identities, namespace
// labels, bundle ConfigMaps), CA changes (which queue every identity) and
// keys that became ready.
func (r *AgentIdentityReconciler) SetupWithManager(mgr ctrl.Manager) error {
	caChanged := r.CA.Subscribe()
	c := mgr.GetClient()
	b := ctrl.NewControllerManagedBy(mgr).
		For(&mtlsv1alpha1.AgentIdentity{}, builder.WithPredicates(predicate.Or[client.Object](predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{}))).
		Owns(&corev1.Secret{}).
		Owns(&corev1.ConfigMap{}).
		Watches(&mtlsv1alpha1.AgentTrustPolicy{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, obj client.Object) []reconcile.Request {
			return identitiesIn(ctx, c, obj.GetNamespace())
		}), builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&mtlsv1alpha1.AgentIdentity{}, handler.EnqueueRequestsFromMapFunc(dependentsOfIdentity(c)), builder.WithPredicates(labelsChanged)).
		WatchesMetadata(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(dependentsOfNamespace(c)), builder.WithPredicates(labelsChanged)).
		Watches(&corev1.Pod{}, delayed(identityOfPod), builder.WithPredicates(podPhaseChanged)).
		Watches(&certv1.PodCertificateRequest{}, handler.EnqueueRequestsFromMapFunc(identityOfPodCertificateRequest(c)))
	if r.BundleCache != nil {
		b = b.WatchesRawSource(source.Kind(r.BundleCache, &corev1.ConfigMap{}, handler.TypedEnqueueRequestsFromMapFunc(dependentsOfBundle(c))))
	}
	return b.
		WatchesRawSource(source.Channel(r.Keys.events, &handler.EnqueueRequestForObject{})).
		WatchesRawSource(onSignal(caChanged, func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			list := &mtlsv1alpha1.AgentIdentityList{}
			if err := mgr.GetClient().List(ctx, list); err != nil {
				logf.FromContext(ctx).Error(err, "listing AgentIdentities after a CA change")
				return
			}
			for i := range list.Items {
				q.Add(reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
			}
		})).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(r.MaxConcurrentReconciles, 1)}).
		Complete(r)
}

// --- scope helpers ---

func (s *identityScope) setCondition(typ string, status metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&s.id.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg,
		ObservedGeneration: s.id.Generation, LastTransitionTime: metav1.NewTime(s.now),
	})
}

func (s *identityScope) notReady(reason, msg string) {
	s.setCondition(mtlsv1alpha1.ConditionReady, metav1.ConditionFalse, reason, msg)
}

// skipStatus leaves the status as it is for this pass.
func (s *identityScope) skipStatus() { s.original = nil }

// keepReadyIfValid keeps Ready=True while a renewal or a reissue under a
// rotated CA is pending or failing and the certificate in place is still
// valid (and trusted) for the current spec; any other reason to reissue
// means there is no usable certificate.
func (s *identityScope) keepReadyIfValid(d identity.Decision) {
	if (d.Reason == mtlsv1alpha1.ReasonRenewing || d.Reason == mtlsv1alpha1.ReasonCARotated) &&
		s.id.Status.NotAfter != nil && s.now.Before(s.id.Status.NotAfter.Time) &&
		meta.IsStatusConditionTrue(s.id.Status.Conditions, mtlsv1alpha1.ConditionReady) {
		return
	}
	s.notReady(d.Reason, d.Message)
}

// succeeded records the certificate in place. The messages depend on the
// certificate only, so that the status a pass computes for a Secret is the
// same whether the pass issued it or found it.
func (s *identityScope) succeeded(leaf *x509.Certificate, renewal time.Time, caSerial string) {
	st := &s.id.Status
	serial := ca.SerialHex(leaf.SerialNumber)
	st.SecretName = s.id.EffectiveSecretName()
	st.SerialNumber = serial
	st.NotBefore = ptrTime(leaf.NotBefore)
	st.NotAfter = ptrTime(leaf.NotAfter)
	st.RenewalTime = ptrTime(renewal)
	st.CASerial = caSerial
	st.ObservedGeneration = s.id.Generation
	st.FailedIssuanceAttempts = 0
	st.LastFailureTime = nil
	s.setCondition(mtlsv1alpha1.ConditionReady, metav1.ConditionTrue, mtlsv1alpha1.ReasonIssued,
		fmt.Sprintf("certificate %s is valid until %s", serial, leaf.NotAfter.UTC().Format(time.RFC3339)))
	s.setCondition(mtlsv1alpha1.ConditionIssuing, metav1.ConditionFalse, mtlsv1alpha1.ReasonIssued,
		"renewal is due at "+renewal.UTC().Format(time.RFC3339))
}

// --- small functions ---

func eventFor(reason string) string {
	switch reason {
	case mtlsv1alpha1.ReasonPending:
		return eventIssued
	case mtlsv1alpha1.ReasonRenewing:
		return eventRenewed
	case mtlsv1alpha1.ReasonSecretRepaired:
		return eventSecretRepaired
	}
	return eventReissued
}

// ownedBy reports whether sec is the Secret agentmesh wrote for id: it is
// controlled by id, or by an earlier AgentIdentity of the same name (which
// garbage collection has not removed yet) and labelled for that name.
func ownedBy(sec *corev1.Secret, id *mtlsv1alpha1.AgentIdentity) bool {
	ref := metav1.GetControllerOf(sec)
	if ref == nil || ref.Kind != "AgentIdentity" || ref.APIVersion != mtlsv1alpha1.GroupVersion.String() || ref.Name != id.Name {
		return false
	}
	if ref.UID == id.UID {
		return true
	}
	return sec.Labels[mtlsv1alpha1.LabelManagedBy] == mtlsv1alpha1.ManagedByValue && sec.Labels[mtlsv1alpha1.LabelIdentity] == id.Name
}

func isConditionReason(id *mtlsv1alpha1.AgentIdentity, typ, reason string) bool {
	c := meta.FindStatusCondition(id.Status.Conditions, typ)
	return c != nil && c.Reason == reason
}

func isCondition(id *mtlsv1alpha1.AgentIdentity, typ string, status metav1.ConditionStatus, reason, msg string) bool {
	c := meta.FindStatusCondition(id.Status.Conditions, typ)
	return c != nil && c.Status == status && c.Reason == reason && c.Message == msg
}

// signerSerial is the serial of the CA that signed leaf: the active CA, an
// anchor, or an intermediate of the chain.
func signerSerial(st *ca.State, leaf *x509.Certificate, chain []*x509.Certificate) string {
	candidates := append(append([]*x509.Certificate{st.Active.Cert}, chain...), st.Anchors...)
	for _, c := range candidates {
		if len(leaf.AuthorityKeyId) > 0 && len(c.SubjectKeyId) > 0 {
			if bytes.Equal(leaf.AuthorityKeyId, c.SubjectKeyId) {
				return ca.SerialHex(c.SerialNumber)
			}
			continue
		}
		if leaf.CheckSignatureFrom(c) == nil {
			return ca.SerialHex(c.SerialNumber)
		}
	}
	return ""
}

func secretData(s *corev1.Secret) map[string][]byte {
	if s == nil {
		return nil
	}
	if s.Data == nil {
		return map[string][]byte{}
	}
	return s.Data
}

func annotation(s *corev1.Secret, key string) string {
	if s == nil {
		return ""
	}
	return s.Annotations[key]
}

func ptrTime(t time.Time) *metav1.Time {
	mt := metav1.NewTime(t)
	return &mt
}

func equalStatus(a, b *mtlsv1alpha1.AgentIdentityStatus) bool {
	return statusHash(a) == statusHash(b)
}

// statusHash hashes the JSON form of a status, which is what the API
// server stores (times at second precision).
func statusHash(st *mtlsv1alpha1.AgentIdentityStatus) uint64 {
	b, _ := json.Marshal(st)
	h := fnv.New64a()
	_, _ = h.Write(b)
	return h.Sum64()
}
