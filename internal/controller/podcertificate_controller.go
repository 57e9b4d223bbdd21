package controller

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/identity"
)

// +kubebuilder:rbac:groups=certificates.k8s.io,resources=podcertificaterequests,verbs=get;list;watch
// +kubebuilder:rbac:groups=certificates.k8s.io,resources=podcertificaterequests/status,verbs=update
// +kubebuilder:rbac:groups=certificates.k8s.io,resources=signers,resourceNames=agentmesh.dev/agent-identity,verbs=sign;attest
// +kubebuilder:rbac:groups="",resources=nodes;serviceaccounts,verbs=get

// PodCertificateSigner is the signer agentmesh.dev/agent-identity: it
// checks every PodCertificateRequest addressed to it against the Pod, its
// AgentIdentity, its service account and its node, and either issues the
// identity's SPIFFE X.509-SVID for the key the kubelet generated on the
// node, or denies the request with a reason the user can act on. The
// operator's cache only holds requests for this signer.
type PodCertificateSigner struct {
	// Client reads through the caches (requests for this signer, opted-in
	// Pods, identities) and writes request status.
	Client client.Client
	// APIReader reads Pods that are not opted in, service accounts and
	// nodes, which are not cached.
	APIReader   client.Reader
	Recorder    recorder.EventRecorder
	Clock       clock.PassiveClock
	CA          *ca.Holder
	TrustDomain spiffeid.TrustDomain
	// DNS decides which spec.dnsNames an identity may have.
	DNS     identity.DNSScope
	Metrics *Metrics
	// MaxConcurrentReconciles is the number of parallel workers.
	MaxConcurrentReconciles int
}

// Reconcile decides one request, once: a decided request is immutable.
func (r *PodCertificateSigner) Reconcile(ctx context.Context, req reconcile.Request) (ctrl.Result, error) {
	pcr := &certv1.PodCertificateRequest{}
	if err := r.Client.Get(ctx, req.NamespacedName, pcr); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if pcr.Spec.SignerName != mtlsv1alpha1.PodCertificateSignerName || decided(pcr) {
		return ctrl.Result{}, nil
	}
	log := logf.FromContext(ctx).WithValues("pod", pcr.Spec.PodName)
	st, err := r.CA.Get()
	switch {
	case errors.Is(err, ca.ErrNotLoaded):
		return ctrl.Result{RequeueAfter: time.Second}, nil
	case err != nil:
		return ctrl.Result{}, r.conclude(ctx, pcr, nil, certv1.PodCertificateRequestConditionTypeFailed, mtlsv1alpha1.PodCertificateCANotReady,
			"the agent CA cannot sign: "+err.Error())
	}

	facts, err := r.facts(ctx, pcr)
	if err != nil {
		return ctrl.Result{}, err
	}
	v := identity.AuthorizePodCertificate(pcr, facts, r.TrustDomain)
	if v.Reason != "" {
		log.Info("denied a PodCertificateRequest", "reason", v.Reason, "detail", v.Message)
		return ctrl.Result{}, r.conclude(ctx, pcr, facts.Pod, certv1.PodCertificateRequestConditionTypeDenied, v.Reason, v.Message)
	}

	id := facts.Identity
	ireq, err := identity.NewRequest(r.TrustDomain, id)
	if err == nil {
		err = r.DNS.Check(id.Namespace, id.Spec.DNSNames).ToAggregate()
	}
	if err != nil {
		return ctrl.Result{}, r.conclude(ctx, pcr, facts.Pod, certv1.PodCertificateRequestConditionTypeDenied, mtlsv1alpha1.ReasonInvalidSpec, err.Error())
	}
	now := r.Clock.Now()
	leaf, err := identity.IssueWindow(st, ireq, v.PublicKey, identity.PodCertificateLifetime(ireq, pcr.Spec.MaxExpirationSeconds), now, rand.Reader)
	if err != nil {
		r.Metrics.Failed(mtlsv1alpha1.ReasonIssuanceFailed)
		return ctrl.Result{}, r.conclude(ctx, pcr, facts.Pod, certv1.PodCertificateRequestConditionTypeFailed, mtlsv1alpha1.ReasonIssuanceFailed, err.Error())
	}
	// The refresh follows the renewal rule and jitter of Secret delivery,
	// and is as early as allowed while a compromised CA signs.
	refresh := identity.PodCertificateRefresh(ireq, string(id.UID), leaf, st.Rotation)
	pcr.Status.CertificateChain = string(ca.EncodeCertificatesPEM(append([]*x509.Certificate{leaf}, identity.ExpectedChain(st)...)...))
	pcr.Status.NotBefore = ptrTime(leaf.NotBefore)
	pcr.Status.NotAfter = ptrTime(leaf.NotAfter)
	pcr.Status.BeginRefreshAt = ptrTime(refresh)
	meta.SetStatusCondition(&pcr.Status.Conditions, metav1.Condition{
		Type: certv1.PodCertificateRequestConditionTypeIssued, Status: metav1.ConditionTrue, Reason: mtlsv1alpha1.ReasonIssued,
		Message:            fmt.Sprintf("issued %s for %s, valid until %s", ca.SerialHex(leaf.SerialNumber), ireq.SPIFFEID, leaf.NotAfter.UTC().Format(time.RFC3339)),
		ObservedGeneration: pcr.Generation, LastTransitionTime: metav1.NewTime(now),
	})
	if err := r.Client.Status().Update(ctx, pcr, client.FieldOwner(mtlsv1alpha1.FieldManager)); err != nil {
		if apierrors.IsInvalid(err) {
			// The API server refused the certificate: say so, once, rather
			// than retrying the same refusal.
			fresh := &certv1.PodCertificateRequest{}
			if gerr := r.Client.Get(ctx, req.NamespacedName, fresh); gerr != nil {
				return ctrl.Result{}, client.IgnoreNotFound(gerr)
			}
			return ctrl.Result{}, r.conclude(ctx, fresh, facts.Pod, certv1.PodCertificateRequestConditionTypeFailed, mtlsv1alpha1.ReasonIssuanceFailed, err.Error())
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	r.Metrics.Issued(mtlsv1alpha1.ReasonPodCertificate)
	log.Info("issued a pod certificate", "spiffeID", ireq.SPIFFEID.String(), "serial", ca.SerialHex(leaf.SerialNumber),
		"notAfter", leaf.NotAfter, "beginRefreshAt", refresh)
	return ctrl.Result{}, nil
}

// facts gathers what the request claims about, from the caches where the
// object is cached (opted-in Pods, identities) and from the API otherwise.
func (r *PodCertificateSigner) facts(ctx context.Context, pcr *certv1.PodCertificateRequest) (identity.PodCertificateFacts, error) {
	var f identity.PodCertificateFacts
	ns := pcr.Namespace
	pod := &corev1.Pod{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: pcr.Spec.PodName}, pod)
	if apierrors.IsNotFound(err) {
		// Not opted in (or not cached yet): ask the API server.
		err = r.APIReader.Get(ctx, types.NamespacedName{Namespace: ns, Name: pcr.Spec.PodName}, pod)
	}
	switch {
	case apierrors.IsNotFound(err):
		return f, nil
	case err != nil:
		return f, err
	}
	f.Pod = pod
	if name := pod.Labels[mtlsv1alpha1.LabelIdentity]; name != "" {
		id := &mtlsv1alpha1.AgentIdentity{}
		switch err := r.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, id); {
		case err == nil:
			f.Identity = id
		case !apierrors.IsNotFound(err):
			return f, err
		}
	}
	sa := &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"}}
	switch err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: ns, Name: pcr.Spec.ServiceAccountName}, sa); {
	case err == nil:
		f.ServiceAccountUID = sa.UID
	case !apierrors.IsNotFound(err):
		return f, err
	}
	node := &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"}}
	switch err := r.APIReader.Get(ctx, types.NamespacedName{Name: string(pcr.Spec.NodeName)}, node); {
	case err == nil:
		f.NodeUID = node.UID
	case !apierrors.IsNotFound(err):
		return f, err
	}
	return f, nil
}

// conclude writes a Denied or Failed condition, and tells the Pod why.
func (r *PodCertificateSigner) conclude(ctx context.Context, pcr *certv1.PodCertificateRequest, pod *corev1.Pod, typ, reason, message string) error {
	meta.SetStatusCondition(&pcr.Status.Conditions, metav1.Condition{
		Type: typ, Status: metav1.ConditionTrue, Reason: reason, Message: message,
		ObservedGeneration: pcr.Generation, LastTransitionTime: metav1.NewTime(r.Clock.Now()),
	})
	if err := r.Client.Status().Update(ctx, pcr, client.FieldOwner(mtlsv1alpha1.FieldManager)); err != nil {
		return client.IgnoreNotFound(err)
	}
	if pod != nil {
		r.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, reason, "SignPodCertificate", "PodCertificateRequest %s %s: %s", pcr.Name, typ, message)
	}
	return nil
}

// decided reports whether a request already carries its final condition.
func decided(pcr *certv1.PodCertificateRequest) bool {
	for _, t := range []string{certv1.PodCertificateRequestConditionTypeIssued, certv1.PodCertificateRequestConditionTypeDenied,
		certv1.PodCertificateRequestConditionTypeFailed} {
		if meta.IsStatusConditionTrue(pcr.Status.Conditions, t) {
			return true
		}
	}
	return false
}

// SetupWithManager watches the requests addressed to this signer.
func (r *PodCertificateSigner) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("podcertificatesigner").
		For(&certv1.PodCertificateRequest{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(r.MaxConcurrentReconciles, 1)}).
		Complete(r)
}
