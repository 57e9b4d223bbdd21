package controller

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
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
)

// errSecretConflict means a Secret of the wanted name exists and is not ours.
var errSecretConflict = errors.New("secret conflict")

// errSecretNotCached means the Secret exists, ours and labelled as ours, but
// the cache has not shown it yet: an earlier pass wrote it a moment ago.
var errSecretNotCached = errors.New("secret not in the cache yet")

// +kubebuilder:rbac:groups=mtls.agentmesh.dev,resources=agentidentities,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=mtls.agentmesh.dev,resources=agentidentities/status,verbs=get;patch
// +kubebuilder:rbac:groups=mtls.agentmesh.dev,resources=agentidentities/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;delete
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// CertificateReconciler keeps every AgentIdentity's certificate in place:
// it issues and renews it into the identity's Secret (or, in PodCertificate
// delivery, leaves that to the kubelet and the signer), and writes the
// certificate part of the status, Issuing, and Ready.
//
// Ready has one rule and this one writer: it is True when the certificate
// in place (or PodCertificate delivery) is usable and the trust ConfigMap is
// published, which the trust reconciler reports by setting
// status.trustConfigMap.
type CertificateReconciler struct {
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
	// DNS decides which spec.dnsNames an identity may have; one it may not
	// have is InvalidSpec.
	DNS identity.DNSScope
	// Reissue bounds the rate of reissues a CA rotation causes.
	Reissue *ReissueGate
	// TrustProgress is the trust reconciler's work, which a new identity's
	// first status waits for; nil waits firstStatusWait at most.
	TrustProgress *TrustProgress
	// MaxConcurrentReconciles is the number of parallel workers.
	MaxConcurrentReconciles int

	status statusWriter
}

// certScope is what one certificate pass works on.
type certScope struct {
	id       *mtlsv1alpha1.AgentIdentity
	original *mtlsv1alpha1.AgentIdentity
	now      time.Time
	log      logr.Logger
	req      identity.Request
	ca       *ca.State
	// secret is the identity's Secret when it exists and is ours.
	secret *corev1.Secret
	// ready is whether the certificate in place is usable, set by the pass
	// (Ready then also needs the trust ConfigMap).
	ready *metav1.Condition
	// skip leaves the status as it is for this pass.
	skip bool
	// renewServed is a renew request (mtls.agentmesh.dev/renew) that the
	// certificate in place now serves: its annotation is removed after the
	// status is written.
	renewServed string
}

// Reconcile brings one AgentIdentity's certificate and its status up to date.
func (r *CertificateReconciler) Reconcile(ctx context.Context, req reconcile.Request) (ctrl.Result, error) {
	id := &mtlsv1alpha1.AgentIdentity{}
	if err := r.Client.Get(ctx, req.NamespacedName, id); err != nil {
		if apierrors.IsNotFound(err) {
			// The Secret goes with its owner through garbage collection.
			r.Metrics.ForgetIdentity(req.NamespacedName)
			r.Keys.Forget(req.NamespacedName)
			r.status.forget(req.NamespacedName)
			if r.Reissue != nil {
				r.Reissue.Forget(req.NamespacedName)
			}
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if !id.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	s := &certScope{id: id, original: id.DeepCopy(), now: r.Clock.Now(), log: logf.FromContext(ctx)}
	result, err := r.reconcileCertificate(ctx, s)
	if !s.skip {
		if perr := r.countPods(ctx, s); perr != nil {
			err = errors.Join(err, perr)
		}
		s.setReady()
		if wait := s.awaitTrust(r.TrustProgress); wait > 0 {
			// The trust reconciler's status write queues this identity again.
			r.recordMetrics(s)
			if result.RequeueAfter == 0 || wait < result.RequeueAfter {
				result.RequeueAfter = wait
			}
			return result, err
		}
		if werr := r.status.write(ctx, r.Client, mtlsv1alpha1.FieldManagerCertificate, certificateStatus, s.original, s.id); werr != nil {
			return ctrl.Result{}, errors.Join(err, werr)
		}
		if rerr := r.removeRenewRequest(ctx, s); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	r.recordMetrics(s)
	return result, err
}

// reconcileCertificate validates the spec, loads the CA and hands over to
// the identity's delivery.
func (r *CertificateReconciler) reconcileCertificate(ctx context.Context, s *certScope) (ctrl.Result, error) {
	if err := r.resolveRequest(s); err != nil {
		return ctrl.Result{}, reconcile.TerminalError(err)
	}
	ctx = logf.IntoContext(ctx, s.log)
	if !r.loadCA(s) {
		return ctrl.Result{}, nil
	}
	if s.req.KeyDelivery == mtlsv1alpha1.KeyDeliveryPodCertificate {
		return ctrl.Result{}, r.podCertificates(ctx, s)
	}
	return r.secretDelivery(ctx, s)
}

// secretDelivery keeps the certificate and key in the identity's Secret:
// it observes the Secret, plans the pass, and carries the plan out.
func (r *CertificateReconciler) secretDelivery(ctx context.Context, s *certScope) (ctrl.Result, error) {
	conflict := false
	if err := r.loadSecret(ctx, s); err != nil {
		if !errors.Is(err, errSecretConflict) {
			return ctrl.Result{}, err
		}
		conflict = true
	}
	if s.secret == nil && !conflict {
		conflict = r.conflictPersists(ctx, s)
	}
	obs := identity.Observed{
		Data:         secretData(s.secret),
		SpecHash:     annotation(s.secret, mtlsv1alpha1.AnnotationSpecHash),
		EverIssued:   s.id.Status.SerialNumber != "",
		UID:          string(s.id.UID),
		Failure:      failureOf(s.id),
		Conflict:     conflict,
		RenewRequest: s.id.Annotations[mtlsv1alpha1.AnnotationRenew],
		RenewedFor:   annotation(s.secret, mtlsv1alpha1.AnnotationRenewed),
		Unchanged:    s.secret != nil && dataUnchanged(s.secret),
	}
	p := identity.Decide(s.req, s.ca, obs, s.now)
	switch {
	case p.Wait > 0:
		// Inside a failure's back-off: nothing is attempted or counted.
		s.plannedReadiness(p)
		return ctrl.Result{RequeueAfter: p.Wait}, nil
	case p.Conflict:
		return r.conflict(s), nil
	case p.Reissue:
		return r.issue(ctx, s, p)
	}
	if obs.RenewRequest != "" && !obs.RenewPending() {
		// Served by an earlier pass whose removal of the annotation failed
		// or is not in the cache yet.
		s.renewServed = obs.RenewRequest
	}
	return r.keep(ctx, s, p)
}

// podCertificates keeps an identity in PodCertificate delivery: no Secret
// (one left from Secret delivery is deleted), and the status counts the
// Pods that hold a current certificate and the next refresh.
func (r *CertificateReconciler) podCertificates(ctx context.Context, s *certScope) error {
	// The kubelet refreshes each Pod's certificate: a renew request has
	// nothing to act on, and goes.
	s.renewServed = s.id.Annotations[mtlsv1alpha1.AnnotationRenew]
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
	s.certReady(mtlsv1alpha1.ReasonPodCertificate,
		"each Pod gets its own key and certificate from the signer "+mtlsv1alpha1.PodCertificateSignerName)
	s.setCondition(mtlsv1alpha1.ConditionIssuing, metav1.ConditionFalse, mtlsv1alpha1.ReasonPodCertificate,
		"the kubelet requests and refreshes each Pod's certificate")
	return nil
}

// countPods records how many running Pods use the identity.
func (r *CertificateReconciler) countPods(ctx context.Context, s *certScope) error {
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

// resolveRequest validates the spec and derives the issuance request.
func (r *CertificateReconciler) resolveRequest(s *certScope) error {
	req, err := identity.NewRequest(r.TrustDomain, s.id)
	if err == nil {
		err = r.DNS.Check(s.id.Namespace, s.id.Spec.DNSNames).ToAggregate()
	}
	if err != nil {
		if !isCondition(s.id, mtlsv1alpha1.ConditionReady, metav1.ConditionFalse, mtlsv1alpha1.ReasonInvalidSpec, err.Error()) {
			r.Recorder.Eventf(s.id, nil, corev1.EventTypeWarning, mtlsv1alpha1.EventInvalidSpec, "Validate", "Invalid spec: %s", err.Error())
		}
		s.certNotReady(mtlsv1alpha1.ReasonInvalidSpec, err.Error())
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
func (r *CertificateReconciler) loadCA(s *certScope) bool {
	st, err := r.CA.Get()
	switch {
	case errors.Is(err, ca.ErrNotLoaded):
		s.skip = true
		return false
	case err != nil:
		msg := "the agent CA is not usable: " + err.Error()
		s.certNotReady(mtlsv1alpha1.ReasonCANotReady, msg)
		s.setCondition(mtlsv1alpha1.ConditionIssuing, metav1.ConditionTrue, mtlsv1alpha1.ReasonCANotReady, msg)
		return false
	}
	s.ca = st
	return true
}

// failureOf is the failed issuance the status reports, when it stands for
// the current spec.
func failureOf(id *mtlsv1alpha1.AgentIdentity) *identity.Failure {
	st := id.Status
	if st.FailedIssuanceAttempts == 0 || st.LastFailureTime == nil {
		return nil
	}
	c := meta.FindStatusCondition(st.Conditions, mtlsv1alpha1.ConditionIssuing)
	if c == nil || c.Status != metav1.ConditionTrue || c.ObservedGeneration != id.Generation ||
		(c.Reason != mtlsv1alpha1.ReasonIssuanceFailed && c.Reason != mtlsv1alpha1.ReasonSecretConflict) {
		return nil
	}
	return &identity.Failure{Attempts: st.FailedIssuanceAttempts, At: st.LastFailureTime.Time, Reason: c.Reason}
}

// loadSecret finds the identity's Secret in the cache. A Secret there that
// another identity owns is a conflict; one that is not in the cache at all
// may still exist unlabelled, which creating it reveals.
func (r *CertificateReconciler) loadSecret(ctx context.Context, s *certScope) error {
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
	if _, ok := sec.Data[identity.SecretKeyKey]; !ok && !dataUnchanged(sec) {
		// The cache keeps no tls.key, and the data is not what agentmesh
		// wrote (tampered with, or written by an earlier version without
		// a data hash): decide from the Secret in the API server.
		live := &corev1.Secret{}
		if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(sec), live); err != nil {
			if apierrors.IsNotFound(err) {
				return nil
			}
			return fmt.Errorf("reading Secret: %w", err)
		}
		if !ownedBy(live, s.id) {
			return errSecretConflict
		}
		sec = live
	}
	s.secret = sec
	return nil
}

// dataUnchanged says the Secret, as the cache saw it, holds exactly the data
// agentmesh wrote into it: the hash of its data (computed by the cache)
// is the one recorded at the write.
func dataUnchanged(sec *corev1.Secret) bool {
	seen := sec.Annotations[mtlsv1alpha1.AnnotationCachedHash]
	return seen != "" && seen == sec.Annotations[mtlsv1alpha1.AnnotationDataHash]
}

// conflictPersists checks, after a pass that found the Secret name taken,
// whether it still is, before any key is generated for nothing. The Secret
// is not in the cache (it is not labelled as ours), so this reads the API.
func (r *CertificateReconciler) conflictPersists(ctx context.Context, s *certScope) bool {
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
func (r *CertificateReconciler) issue(ctx context.Context, s *certScope, p identity.Plan) (ctrl.Result, error) {
	if p.Reason == mtlsv1alpha1.ReasonCARotated && !s.ca.Rotation.Compromised && r.Reissue != nil {
		wait, at := r.Reissue.Admit(client.ObjectKeyFromObject(s.id), s.now)
		if wait > 0 {
			// The certificate in place is valid and trusted: wait for this
			// identity's slot; the status stays as it is.
			s.plannedReadiness(p)
			return ctrl.Result{RequeueAfter: wait}, nil
		}
		s.now = at
	}
	s.log.V(1).Info("issuing", "reason", p.Reason, "why", p.Message)
	var key crypto.Signer
	if identity.IsSlowKey(s.req.KeyAlgorithm) {
		k, ready, err := r.Keys.Take(ctx, s.id.UID, client.ObjectKeyFromObject(s.id), s.req.KeyAlgorithm, s.req.KeySize)
		if err != nil {
			return r.fail(s, p, fmt.Errorf("generating the private key: %w", err)), nil
		}
		if !ready {
			s.plannedReadiness(p)
			s.setCondition(mtlsv1alpha1.ConditionIssuing, metav1.ConditionTrue, mtlsv1alpha1.ReasonKeyGenerating,
				fmt.Sprintf("generating an %s-%d key off the reconcile path (%s)", s.req.KeyAlgorithm, s.req.KeySize, p.Message))
			return ctrl.Result{}, nil
		}
		key = k
	} else {
		k, err := identity.GenerateKey(s.req.KeyAlgorithm, s.req.KeySize, rand.Reader)
		if err != nil {
			return r.fail(s, p, fmt.Errorf("generating the private key: %w", err)), nil
		}
		key = k
	}
	issued, err := identity.Issue(s.ca, s.req, key, s.now, rand.Reader)
	if err != nil {
		return r.fail(s, p, err), nil
	}
	data, err := issued.SecretData(s.ca.BundlePEM())
	if err != nil {
		return r.fail(s, p, err), nil
	}
	renew := s.id.Annotations[mtlsv1alpha1.AnnotationRenew]
	if err := r.writeSecret(ctx, s, false, func(sec *corev1.Secret) {
		sec.Data = data
		if renew != "" {
			// Whatever the reason of this issuance, it serves the request.
			sec.Annotations[mtlsv1alpha1.AnnotationRenewed] = renew
		}
	}); err != nil {
		switch {
		case errors.Is(err, errSecretConflict):
			return r.conflict(s), nil
		case errors.Is(err, errSecretNotCached):
			return ctrl.Result{RequeueAfter: 250 * time.Millisecond}, nil
		case apierrors.IsConflict(err):
			// Our view of the Secret was stale; the next pass sees the
			// current one (and may find it fine already).
			return ctrl.Result{}, err
		}
		return r.fail(s, p, fmt.Errorf("writing Secret %s: %w", s.id.EffectiveSecretName(), err)), nil
	}
	renewal := identity.RenewalFor(s.req, string(s.id.UID), issued.Leaf)
	r.Metrics.Issued(p.Reason)
	s.log.Info("issued certificate", "reason", p.Reason, "serial", ca.SerialHex(issued.Leaf.SerialNumber),
		"notAfter", issued.Leaf.NotAfter, "renewalTime", renewal)
	// A first issuance that went through at once is not an Event: the
	// status says it (Ready, serialNumber, notAfter, renewalTime), and
	// when thousands of identities are created together an Event each
	// would be a quarter of the operator's writes. Every later issuance
	// (renewal, reissue, repair) and a first one after failures is.
	if p.Reason != mtlsv1alpha1.ReasonPending || s.original.Status.FailedIssuanceAttempts > 0 {
		r.Recorder.Eventf(s.id, nil, corev1.EventTypeNormal, eventFor(p.Reason), "Issue",
			"Issued certificate %s for %s, valid until %s, renewal at %s (%s)",
			ca.SerialHex(issued.Leaf.SerialNumber), s.req.SPIFFEID, issued.Leaf.NotAfter.UTC().Format(time.RFC3339),
			renewal.UTC().Format(time.RFC3339), p.Message)
	}
	s.succeeded(issued.Leaf, renewal, s.ca.Active.SerialHex())
	s.renewServed = renew
	if err := r.removeOldSecret(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: renewal.Sub(s.now)}, nil
}

// keep keeps the certificate in place, refreshing the Secret's trust
// bundle when it is stale.
func (r *CertificateReconciler) keep(ctx context.Context, s *certScope, p identity.Plan) (ctrl.Result, error) {
	if p.BundleStale {
		bundle := s.ca.BundlePEM()
		if err := r.writeSecret(ctx, s, true, func(sec *corev1.Secret) { sec.Data[identity.SecretTrustKey] = bundle }); err != nil {
			return ctrl.Result{}, fmt.Errorf("updating the trust bundle of Secret %s: %w", s.secret.Name, err)
		}
		s.log.V(1).Info("updated the trust bundle in the Secret")
	}
	s.succeeded(p.Current.Leaf, p.Current.RenewalTime, p.Current.CASerial)
	if err := r.removeOldSecret(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: p.Current.RenewalTime.Sub(s.now)}, nil
}

// fail records a failed issuance and schedules the next attempt.
func (r *CertificateReconciler) fail(s *certScope, p identity.Plan, err error) ctrl.Result {
	attempts := s.id.Status.FailedIssuanceAttempts + 1
	s.id.Status.FailedIssuanceAttempts = attempts
	t := metav1.NewTime(s.now)
	s.id.Status.LastFailureTime = &t
	backoff := identity.Backoff(attempts)
	msg := fmt.Sprintf("issuance failed (attempt %d, next in %s): %v", attempts, backoff, err)
	s.plannedReadiness(p)
	s.setCondition(mtlsv1alpha1.ConditionIssuing, metav1.ConditionTrue, mtlsv1alpha1.ReasonIssuanceFailed, msg)
	r.Metrics.Failed(mtlsv1alpha1.ReasonIssuanceFailed)
	s.log.Info("issuance failed", "attempt", attempts, "backoff", backoff, "error", err.Error())
	r.Recorder.Eventf(s.id, nil, corev1.EventTypeWarning, mtlsv1alpha1.EventIssuanceFailed, "Issue", "%s", msg)
	return ctrl.Result{RequeueAfter: backoff}
}

// conflict reports a Secret name taken by something that is not ours. The
// Secret is never touched; the name is looked at again with back-off.
func (r *CertificateReconciler) conflict(s *certScope) ctrl.Result {
	msg := conflictMessage(s.id)
	attempts := s.id.Status.FailedIssuanceAttempts + 1
	if !isCondition(s.id, mtlsv1alpha1.ConditionReady, metav1.ConditionFalse, mtlsv1alpha1.ReasonSecretConflict, msg) {
		r.Recorder.Eventf(s.id, nil, corev1.EventTypeWarning, mtlsv1alpha1.EventSecretConflict, "Issue", "%s", msg)
		r.Metrics.Failed(mtlsv1alpha1.ReasonSecretConflict)
	}
	s.id.Status.FailedIssuanceAttempts = attempts
	t := metav1.NewTime(s.now)
	s.id.Status.LastFailureTime = &t
	s.certNotReady(mtlsv1alpha1.ReasonSecretConflict, msg)
	s.setCondition(mtlsv1alpha1.ConditionIssuing, metav1.ConditionTrue, mtlsv1alpha1.ReasonSecretConflict, msg)
	// The foreign Secret is not watched (only our own Secrets are cached),
	// so its removal is noticed by looking again, at most every 30s.
	return ctrl.Result{RequeueAfter: min(identity.Backoff(attempts), identity.ConflictPollMax)}
}

func conflictMessage(id *mtlsv1alpha1.AgentIdentity) string {
	return fmt.Sprintf("Secret %s exists and was not created by agentmesh for this identity; it is left untouched: "+
		"delete it or set spec.secretName to another name", id.EffectiveSecretName())
}

// writeSecret creates or updates the identity's Secret with our labels,
// annotations and owner reference, and with the data set by mutate, which
// keeps some of the data in place when keepsData is true. A
// Secret that exists but is not in the cache is inspected directly: if it
// is ours and labelled so, the cache lags (errSecretNotCached: decide again
// when it shows it); ours with our labels removed, it is updated; otherwise
// it is a conflict and left alone.
func (r *CertificateReconciler) writeSecret(ctx context.Context, s *certScope, keepsData bool, mutate func(*corev1.Secret)) error {
	sec := s.secret
	if sec == nil {
		sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: s.id.Namespace, Name: s.id.EffectiveSecretName()}, Type: corev1.SecretTypeTLS}
		if err := r.decorateSecret(s, sec, mutate); err != nil {
			return err
		}
		err := r.Client.Create(ctx, sec, client.FieldOwner(mtlsv1alpha1.FieldManager))
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
		if live.Labels[mtlsv1alpha1.LabelManagedBy] == mtlsv1alpha1.ManagedByValue && live.Labels[mtlsv1alpha1.LabelIdentity] == s.id.Name {
			// The cache lags behind a write of an earlier pass: deciding
			// again once it shows the Secret keeps a certificate that is
			// fine instead of replacing it. (One whose labels were removed
			// never reaches the cache, and is repaired below.)
			return errSecretNotCached
		}
		sec = live
	} else if _, ok := sec.Data[identity.SecretKeyKey]; ok || !keepsData {
		sec = sec.DeepCopy()
	} else {
		// The cache keeps no tls.key: the update starts from the Secret in
		// the API server, the version the pass decided on, or is refused
		// as a conflict and decided again.
		live := &corev1.Secret{}
		if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(sec), live); err != nil {
			return err
		}
		if live.ResourceVersion != sec.ResourceVersion {
			return apierrors.NewConflict(corev1.Resource("secrets"), sec.Name, errors.New("the Secret changed since the cache saw it"))
		}
		sec = live
	}
	if err := r.decorateSecret(s, sec, mutate); err != nil {
		return err
	}
	return r.Client.Update(ctx, sec, client.FieldOwner(mtlsv1alpha1.FieldManager))
}

func (r *CertificateReconciler) decorateSecret(s *certScope, sec *corev1.Secret, mutate func(*corev1.Secret)) error {
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
	delete(sec.Annotations, mtlsv1alpha1.AnnotationCachedHash)
	if sec.Data == nil {
		sec.Data = map[string][]byte{}
	}
	mutate(sec)
	sec.Annotations[mtlsv1alpha1.AnnotationDataHash] = identity.SecretDataHash(sec.Data)
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

// removeRenewRequest removes a served renew request from the identity with
// a JSON patch that first tests its value, so a newer request made
// meanwhile stays (and is served by the pass its update queues).
func (r *CertificateReconciler) removeRenewRequest(ctx context.Context, s *certScope) error {
	if s.renewServed == "" {
		return nil
	}
	path := "/metadata/annotations/" + strings.ReplaceAll(strings.ReplaceAll(mtlsv1alpha1.AnnotationRenew, "~", "~0"), "/", "~1")
	ops, err := json.Marshal([]map[string]string{{"op": "test", "path": path, "value": s.renewServed}, {"op": "remove", "path": path}})
	if err != nil {
		return err
	}
	err = r.Client.Patch(ctx, s.original.DeepCopy(), client.RawPatch(types.JSONPatchType, ops), client.FieldOwner(mtlsv1alpha1.FieldManager))
	switch {
	case err == nil:
		s.log.Info("renew request served", "request", s.renewServed, "serial", s.id.Status.SerialNumber)
		return nil
	case apierrors.IsNotFound(err), apierrors.IsInvalid(err), apierrors.IsConflict(err):
		// Gone, or replaced by a newer request, which queues another pass.
		return nil
	}
	return fmt.Errorf("removing the served annotation %s: %w", mtlsv1alpha1.AnnotationRenew, err)
}

// removeOldSecret deletes the Secrets of previous spec.secretNames once the
// new one is in place: every Secret in the cache that is ours for this
// identity under another name. The status names the previous Secret, but
// not when the name changed before the status recorded it: the first status
// waits for the trust ConfigMap, and the operator may be killed between
// writing a Secret and writing the status (test/faults). So the identity's
// Secrets are looked up by its label whenever the name may have changed:
// the status names another Secret, or names none although the spec changed
// (generation above 1); a first issuance looks up nothing.
func (r *CertificateReconciler) removeOldSecret(ctx context.Context, s *certScope) error {
	current, old := s.id.EffectiveSecretName(), s.original.Status.SecretName
	if old == current || (old == "" && s.id.Generation <= 1) {
		return nil
	}
	list := &corev1.SecretList{}
	if err := r.Client.List(ctx, list, client.InNamespace(s.id.Namespace), client.MatchingLabels{mtlsv1alpha1.LabelIdentity: s.id.Name}); err != nil {
		return fmt.Errorf("listing the Secrets of the identity: %w", err)
	}
	for i := range list.Items {
		sec := &list.Items[i]
		if sec.Name == current || !ownedBy(sec, s.id) {
			continue
		}
		if err := r.Client.Delete(ctx, sec, client.Preconditions{UID: &sec.UID}); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("deleting the previous Secret %s: %w", sec.Name, err)
		}
		s.log.Info("deleted the Secret of a previous secretName", "secret", sec.Name)
	}
	return nil
}

func (r *CertificateReconciler) recordMetrics(s *certScope) {
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

// SetupWithManager watches AgentIdentities (spec changes, and the trust
// reconciler publishing or failing to publish their trust ConfigMap, which
// Ready depends on), their Secrets, their Pods (the running count) and
// PodCertificateRequests, keys that became ready, and CA changes (which
// queue every identity).
func (r *CertificateReconciler) SetupWithManager(mgr ctrl.Manager) error {
	caChanged := r.CA.Subscribe()
	c := mgr.GetClient()
	return ctrl.NewControllerManagedBy(mgr).
		Named(CertificateControllerName).
		For(&mtlsv1alpha1.AgentIdentity{}, builder.WithPredicates(predicate.Or[client.Object](predicate.GenerationChangedPredicate{}, trustPublicationChanged, renewRequested))).
		Owns(&corev1.Secret{}).
		Watches(&corev1.Pod{}, delayed(identityOfPod), builder.WithPredicates(podPhaseChanged)).
		Watches(&certv1.PodCertificateRequest{}, handler.EnqueueRequestsFromMapFunc(identityOfPodCertificateRequest(c))).
		WatchesRawSource(source.Channel(r.Keys.events, &handler.EnqueueRequestForObject{})).
		WatchesRawSource(onSignal(caChanged, enqueueAllIdentities(c))).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(r.MaxConcurrentReconciles, 1), RateLimiter: retryLimiter()}).
		Complete(r)
}

// --- scope helpers ---

func (s *certScope) setCondition(typ string, status metav1.ConditionStatus, reason, msg string) {
	setIdentityCondition(s.id, s.now, typ, status, reason, msg)
}

// certReady and certNotReady say whether the certificate in place is usable.
func (s *certScope) certReady(reason, msg string) {
	s.ready = &metav1.Condition{Status: metav1.ConditionTrue, Reason: reason, Message: msg}
}

func (s *certScope) certNotReady(reason, msg string) {
	s.ready = &metav1.Condition{Status: metav1.ConditionFalse, Reason: reason, Message: msg}
}

// plannedReadiness is the readiness while a planned reissue waits or
// fails: the certificate in place when the plan keeps it usable, not
// ready (for the plan's reason) otherwise.
func (s *certScope) plannedReadiness(p identity.Plan) {
	switch {
	case p.Conflict:
		s.certNotReady(mtlsv1alpha1.ReasonSecretConflict, conflictMessage(s.id))
	case p.KeepReady:
		s.certReady(mtlsv1alpha1.ReasonIssued, validUntil(p.Current.Leaf))
	default:
		s.certNotReady(p.Reason, p.Message)
	}
}

// setReady writes Ready by its rule: the certificate in place is usable
// and the trust ConfigMap is published (status.trustConfigMap, set by the
// trust reconciler only then). While it is not, Ready says why: the trust
// reconciler's reason when it could not publish, TrustPending before it
// has.
func (s *certScope) setReady() {
	c := s.ready
	if c == nil {
		return
	}
	if c.Status == metav1.ConditionTrue && s.id.Status.TrustConfigMap == "" {
		if pr := meta.FindStatusCondition(s.id.Status.Conditions, mtlsv1alpha1.ConditionPolicyResolved); pr != nil && pr.Status == metav1.ConditionFalse {
			c = &metav1.Condition{Status: metav1.ConditionFalse, Reason: pr.Reason, Message: "the trust ConfigMap cannot be written: " + pr.Message}
		} else {
			c = &metav1.Condition{Status: metav1.ConditionFalse, Reason: mtlsv1alpha1.ReasonTrustPending,
				Message: "the certificate is in place; the trust ConfigMap " + s.id.TrustConfigMapName() + " is not published yet"}
		}
	}
	s.setCondition(mtlsv1alpha1.ConditionReady, c.Status, c.Reason, c.Message)
}

// succeeded records the certificate in place. The messages depend on the
// certificate only, so that the status a pass computes for a Secret is the
// same whether the pass issued it or found it.
func (s *certScope) succeeded(leaf *x509.Certificate, renewal time.Time, caSerial string) {
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
	s.certReady(mtlsv1alpha1.ReasonIssued, validUntil(leaf))
	s.setCondition(mtlsv1alpha1.ConditionIssuing, metav1.ConditionFalse, mtlsv1alpha1.ReasonIssued,
		"renewal is due at "+renewal.UTC().Format(time.RFC3339))
}

// firstStatusWait is how long the first status of a new identity waits for
// its trust ConfigMap when the trust reconciler is not at work.
const firstStatusWait = 10 * time.Second

// firstStatusMaxWait bounds the wait of a first status while the trust
// reconciler works through a backlog.
const firstStatusMaxWait = 5 * time.Minute

// awaitTrust says how long to hold back the first status of a new identity
// whose certificate is in place while the trust reconciler has not yet
// reported: its report queues the identity again, and one status write then
// says Ready instead of two saying TrustPending and then Ready. It holds
// back only the first status: for firstStatusWait after the identity was
// created, and beyond that, up to firstStatusMaxWait, while the trust
// reconciler ends passes (a backlog: see TrustProgress); then TrustPending
// is written.
func (s *certScope) awaitTrust(trust *TrustProgress) time.Duration {
	ready := meta.FindStatusCondition(s.id.Status.Conditions, mtlsv1alpha1.ConditionReady)
	if ready == nil || ready.Reason != mtlsv1alpha1.ReasonTrustPending ||
		meta.FindStatusCondition(s.original.Status.Conditions, mtlsv1alpha1.ConditionReady) != nil ||
		meta.FindStatusCondition(s.id.Status.Conditions, mtlsv1alpha1.ConditionPolicyResolved) != nil {
		return 0
	}
	// A creation time ahead of this clock (skew) counts as now.
	age := max(0, s.now.Sub(s.id.CreationTimestamp.Time))
	switch {
	case age < firstStatusWait:
		return firstStatusWait - age
	case age < firstStatusMaxWait && trust.Working(s.now):
		return min(firstStatusWait, firstStatusMaxWait-age)
	}
	return 0
}

// --- small functions ---

func validUntil(leaf *x509.Certificate) string {
	return fmt.Sprintf("certificate %s is valid until %s", ca.SerialHex(leaf.SerialNumber), leaf.NotAfter.UTC().Format(time.RFC3339))
}

// setIdentityCondition sets a condition of id at now, for its generation.
func setIdentityCondition(id *mtlsv1alpha1.AgentIdentity, now time.Time, typ string, status metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&id.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg,
		ObservedGeneration: id.Generation, LastTransitionTime: metav1.NewTime(now),
	})
}

func eventFor(reason string) string {
	switch reason {
	case mtlsv1alpha1.ReasonPending:
		return mtlsv1alpha1.EventIssued
	case mtlsv1alpha1.ReasonRenewing:
		return mtlsv1alpha1.EventRenewed
	case mtlsv1alpha1.ReasonSecretRepaired:
		return mtlsv1alpha1.EventSecretRepaired
	}
	return mtlsv1alpha1.EventReissued
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
