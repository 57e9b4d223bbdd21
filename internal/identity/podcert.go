package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/agentid"
	"github.com/agentmesh/agentmesh/internal/ca"
)

// Bounds the API server puts on a PodCertificateRequest's lifetime.
const (
	MinPodCertificateLifetime = time.Hour
	MaxPodCertificateLifetime = 7862400 * time.Second // 91 days
)

// MinPodCertificateRefreshDelay is how soon after a leaf's notBefore the API
// server lets its beginRefreshAt be (and so the kubelet refresh it).
const MinPodCertificateRefreshDelay = 10 * time.Minute

// PodCertificateRefresh is the beginRefreshAt of a Pod certificate: the
// renewal rule of Secret delivery, except while a compromised CA is still
// signing (an emergency rotation before the next CA takes over), when it is
// the earliest the API server allows, so that the kubelet comes back for a
// certificate of the next CA as soon as it can instead of keeping one the
// emergency rotation will stop trusting.
func PodCertificateRefresh(req Request, uid string, leaf *x509.Certificate, rot ca.Rotation) time.Time {
	refresh := RenewalFor(req, uid, leaf)
	if earliest := leaf.NotBefore.Add(MinPodCertificateRefreshDelay); rot.Compromised && rot.Phase == ca.PhasePropagating && earliest.Before(refresh) {
		refresh = earliest
	}
	return refresh
}

// PodCertificateKeyType is the kubelet key type (podCertificate projection
// keyType) for the identity's key: ECDSAP256, ECDSAP384, ED25519, RSA3072
// or RSA4096.
func PodCertificateKeyType(r Request) string {
	switch r.KeyAlgorithm {
	case mtlsv1alpha1.Ed25519KeyAlgorithm:
		return "ED25519"
	case mtlsv1alpha1.RSAKeyAlgorithm:
		return fmt.Sprintf("RSA%d", max(r.KeySize, 3072))
	}
	return fmt.Sprintf("ECDSAP%d", r.KeySize)
}

// KeyTypeOf names a public key the way PodCertificateKeyType does.
func KeyTypeOf(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return fmt.Sprintf("ECDSAP%d", k.Curve.Params().BitSize)
	case ed25519.PublicKey:
		return "ED25519"
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA%d", k.N.BitLen())
	}
	return fmt.Sprintf("%T", pub)
}

// PodCertificateMaxExpirationSeconds is the maxExpirationSeconds the
// injector asks for: the identity's duration, within the API server's bounds.
func PodCertificateMaxExpirationSeconds(r Request) int32 {
	d := min(max(r.Duration, MinPodCertificateLifetime), MaxPodCertificateLifetime)
	return int32(d / time.Second)
}

// PodCertificateLifetime is the lifetime of a certificate issued for a
// request: the identity's duration, no longer than the request's
// maxExpirationSeconds, and no shorter than the API server's minimum of 1h.
func PodCertificateLifetime(r Request, maxExpirationSeconds *int32) time.Duration {
	d := r.Duration
	if maxExpirationSeconds != nil {
		d = min(d, time.Duration(*maxExpirationSeconds)*time.Second)
	}
	return max(d, MinPodCertificateLifetime)
}

// PodCertificateFacts is what the signer knows about a request's claims.
type PodCertificateFacts struct {
	// Pod is the Pod named by the request, nil when it does not exist.
	Pod *corev1.Pod
	// Identity is the AgentIdentity the Pod's label names, nil when the Pod
	// has no label or the identity does not exist.
	Identity *mtlsv1alpha1.AgentIdentity
	// ServiceAccountUID and NodeUID are the UIDs of the service account and
	// node the request names, empty when they do not exist.
	ServiceAccountUID types.UID
	NodeUID           types.UID
}

// Verdict is the signer's decision on a request.
type Verdict struct {
	// Reason is empty when the request may be signed; otherwise it is the
	// reason of a Denied condition and Message says what to do.
	Reason  string
	Message string
	// PublicKey is the requester's key, proven by the stub PKCS#10 request.
	PublicKey crypto.PublicKey
}

// AuthorizePodCertificate checks every claim of a PodCertificateRequest:
// the Pod exists with that UID, is labelled with an AgentIdentity of its
// namespace whose keyDelivery is PodCertificate, runs as that identity's
// service account (the request's, with its UID), on the request's node
// (with its UID); the stub PKCS#10 request proves possession of a key of
// the identity's type; and no unverified annotation is set, since agentmesh
// knows none.
func AuthorizePodCertificate(pcr *certv1.PodCertificateRequest, f PodCertificateFacts, td spiffeid.TrustDomain) Verdict {
	deny := func(reason, format string, args ...any) Verdict {
		return Verdict{Reason: reason, Message: fmt.Sprintf(format, args...)}
	}
	spec := pcr.Spec
	pod := f.Pod
	switch {
	case pod == nil:
		return deny(mtlsv1alpha1.PodCertificatePodNotFound, "Pod %s/%s does not exist", pcr.Namespace, spec.PodName)
	case pod.UID != spec.PodUID:
		return deny(mtlsv1alpha1.PodCertificatePodNotFound, "Pod %s/%s has UID %s, not the request's %s", pcr.Namespace, spec.PodName, pod.UID, spec.PodUID)
	}
	name := pod.Labels[mtlsv1alpha1.LabelIdentity]
	id := f.Identity
	switch {
	case name == "":
		return deny(mtlsv1alpha1.PodCertificateNoIdentity, "Pod %s is not labelled %s=<AgentIdentity>", pod.Name, mtlsv1alpha1.LabelIdentity)
	case id == nil:
		return deny(mtlsv1alpha1.PodCertificateNoIdentity, "AgentIdentity %s/%s, named by Pod %s, does not exist", pcr.Namespace, name, pod.Name)
	case id.Spec.KeyDelivery != mtlsv1alpha1.KeyDeliveryPodCertificate:
		return deny(mtlsv1alpha1.PodCertificateWrongDelivery, "AgentIdentity %s delivers its key through Secret %s, not per Pod: set spec.keyDelivery to PodCertificate",
			id.Name, id.EffectiveSecretName())
	}
	// The signer signs for the identity the Pod was admitted with: the
	// injector wrote that identity's SPIFFE ID into the annotation after
	// checking the Pod's service account, so a label changed afterwards
	// (or a hand-written projection on a Pod the injector never saw) is
	// refused rather than followed.
	if sid, err := agentid.ID(td, pcr.Namespace, id.Name); err != nil || pod.Annotations[mtlsv1alpha1.AnnotationInjected] != sid.String() {
		return deny(mtlsv1alpha1.PodCertificateNotInjected, "Pod %s was not admitted for AgentIdentity %s (annotation %s is %q): recreate the Pod with label %s=%s",
			pod.Name, id.Name, mtlsv1alpha1.AnnotationInjected, pod.Annotations[mtlsv1alpha1.AnnotationInjected], mtlsv1alpha1.LabelIdentity, id.Name)
	}
	sa := id.EffectiveServiceAccountName()
	podSA := pod.Spec.ServiceAccountName
	if podSA == "" {
		podSA = mtlsv1alpha1.DefaultServiceAccountName
	}
	switch {
	case podSA != sa || spec.ServiceAccountName != sa:
		return deny(mtlsv1alpha1.PodCertificateServiceAccountMismatch, "AgentIdentity %s requires service account %q; Pod %s runs as %q and the request names %q",
			id.Name, sa, pod.Name, podSA, spec.ServiceAccountName)
	case f.ServiceAccountUID == "" || f.ServiceAccountUID != spec.ServiceAccountUID:
		return deny(mtlsv1alpha1.PodCertificateServiceAccountMismatch, "service account %s has UID %q, not the request's %s", sa, f.ServiceAccountUID, spec.ServiceAccountUID)
	case pod.Spec.NodeName == "" || string(spec.NodeName) != pod.Spec.NodeName:
		return deny(mtlsv1alpha1.PodCertificateNodeMismatch, "Pod %s is on node %q, not the request's %q", pod.Name, pod.Spec.NodeName, spec.NodeName)
	case f.NodeUID == "" || f.NodeUID != spec.NodeUID:
		return deny(mtlsv1alpha1.PodCertificateNodeMismatch, "node %s has UID %q, not the request's %s", spec.NodeName, f.NodeUID, spec.NodeUID)
	case len(spec.UnverifiedUserAnnotations) > 0:
		return deny(certv1.PodCertificateRequestConditionInvalidUserConfig, "agentmesh takes no unverifiedUserAnnotations; remove them from the podCertificate projection")
	}
	csr, err := x509.ParseCertificateRequest(spec.StubPKCS10Request)
	if err != nil {
		// Not the parser's detail: an ASN.1 structure error prints its
		// field parameters, pointers included, so the same request would
		// be denied with a different message each time.
		return deny(mtlsv1alpha1.PodCertificateBadRequest, "the stub PKCS#10 request is not a DER-encoded PKCS#10 certificate request")
	}
	if err := csr.CheckSignature(); err != nil {
		return deny(mtlsv1alpha1.PodCertificateBadRequest, "the stub PKCS#10 request does not prove possession of its key: %v", err)
	}
	req, err := NewRequest(td, id)
	if err != nil {
		return deny(mtlsv1alpha1.ReasonInvalidSpec, "AgentIdentity %s cannot be issued: %v", id.Name, err)
	}
	if got, want := KeyTypeOf(csr.PublicKey), PodCertificateKeyType(req); got != want {
		return deny(certv1.PodCertificateRequestConditionUnsupportedKeyType, "AgentIdentity %s takes %s keys, not %s: use keyType %s in the podCertificate projection",
			id.Name, want, got, want)
	}
	return Verdict{PublicKey: csr.PublicKey}
}
