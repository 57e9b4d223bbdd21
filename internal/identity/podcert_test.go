package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"strings"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
)

func stubCSR(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestAuthorizePodCertificate(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	good := stubCSR(t, key)
	tampered := append([]byte{}, good...)
	tampered[len(tampered)-3] ^= 0xff

	pcOne := identityObj("worker", func(s *mtlsv1alpha1.AgentIdentitySpec) {
		s.KeyDelivery = mtlsv1alpha1.KeyDeliveryPodCertificate
		s.ServiceAccountName = "worker"
	})
	secretMode := identityObj("worker", func(s *mtlsv1alpha1.AgentIdentitySpec) { s.ServiceAccountName = "worker" })
	pod := func() *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: "worker-0", UID: "pod-uid", Labels: map[string]string{mtlsv1alpha1.LabelIdentity: "worker"},
				Annotations: map[string]string{mtlsv1alpha1.AnnotationInjected: "spiffe://" + td.Name() + "/ns/agents/agent/worker"}},
			Spec: corev1.PodSpec{ServiceAccountName: "worker", NodeName: "node-1"},
		}
	}
	request := func(mutate ...func(*certv1.PodCertificateRequestSpec)) *certv1.PodCertificateRequest {
		r := &certv1.PodCertificateRequest{ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: "worker-0-x"},
			Spec: certv1.PodCertificateRequestSpec{
				SignerName: mtlsv1alpha1.PodCertificateSignerName, PodName: "worker-0", PodUID: "pod-uid",
				ServiceAccountName: "worker", ServiceAccountUID: "sa-uid", NodeName: "node-1", NodeUID: "node-uid",
				MaxExpirationSeconds: ptr.To[int32](86400), StubPKCS10Request: good,
			}}
		for _, m := range mutate {
			m(&r.Spec)
		}
		return r
	}
	facts := func(mutate ...func(*PodCertificateFacts)) PodCertificateFacts {
		f := PodCertificateFacts{Pod: pod(), Identity: pcOne, ServiceAccountUID: "sa-uid", NodeUID: "node-uid"}
		for _, m := range mutate {
			m(&f)
		}
		return f
	}
	cases := []struct {
		name   string
		pcr    *certv1.PodCertificateRequest
		facts  PodCertificateFacts
		reason string
		msg    string
	}{
		{"a correct request", request(), facts(), "", ""},
		{"no such Pod", request(), facts(func(f *PodCertificateFacts) { f.Pod = nil }), "PodNotFound", "Pod agents/worker-0 does not exist"},
		{"another Pod's UID", request(func(s *certv1.PodCertificateRequestSpec) { s.PodUID = "other" }), facts(), "PodNotFound", "has UID pod-uid, not the request's other"},
		{"a Pod without the label", request(), facts(func(f *PodCertificateFacts) { f.Pod.Labels = nil; f.Identity = nil }), "IdentityNotFound", "is not labelled mtls.agentmesh.dev/identity"},
		{"a label naming no identity", request(), facts(func(f *PodCertificateFacts) { f.Identity = nil }), "IdentityNotFound", "AgentIdentity agents/worker, named by Pod worker-0, does not exist"},
		{"an identity in Secret mode", request(), facts(func(f *PodCertificateFacts) { f.Identity = secretMode }), "NotPodCertificateDelivery", "set spec.keyDelivery to PodCertificate"},
		{"a Pod relabelled after admission", request(), facts(func(f *PodCertificateFacts) {
			f.Pod.Annotations[mtlsv1alpha1.AnnotationInjected] = "spiffe://" + td.Name() + "/ns/agents/agent/planner"
		}), "NotInjected", "Pod worker-0 was not admitted for AgentIdentity worker (annotation mtls.agentmesh.dev/injected is \"spiffe://" + td.Name() + "/ns/agents/agent/planner\")"},
		{"a Pod the injector never saw", request(), facts(func(f *PodCertificateFacts) { f.Pod.Annotations = nil }), "NotInjected", `annotation mtls.agentmesh.dev/injected is ""`},
		{"the Pod runs as another account", request(), facts(func(f *PodCertificateFacts) { f.Pod.Spec.ServiceAccountName = "planner" }), "ServiceAccountMismatch", `Pod worker-0 runs as "planner"`},
		{"the request names another account", request(func(s *certv1.PodCertificateRequestSpec) { s.ServiceAccountName = "planner" }), facts(), "ServiceAccountMismatch", `the request names "planner"`},
		{"the account's UID differs", request(), facts(func(f *PodCertificateFacts) { f.ServiceAccountUID = "recreated" }), "ServiceAccountMismatch", `has UID "recreated"`},
		{"another node", request(func(s *certv1.PodCertificateRequestSpec) { s.NodeName = "node-2" }), facts(), "NodeMismatch", `not the request's "node-2"`},
		{"the node's UID differs", request(), facts(func(f *PodCertificateFacts) { f.NodeUID = "" }), "NodeMismatch", "node node-1 has UID"},
		{"no proof of possession", request(func(s *certv1.PodCertificateRequestSpec) { s.StubPKCS10Request = tampered }), facts(), "InvalidStubPKCS10Request", "does not"},
		{"a key of the wrong type", request(func(s *certv1.PodCertificateRequestSpec) { s.StubPKCS10Request = stubCSR(t, edKey) }), facts(), "UnsupportedKeyType", "takes ECDSAP256 keys, not ED25519"},
		{"user annotations", request(func(s *certv1.PodCertificateRequestSpec) {
			s.UnverifiedUserAnnotations = map[string]string{"x.example/a": "b"}
		}), facts(), "InvalidUnverifiedUserAnnotations", "no unverifiedUserAnnotations"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := AuthorizePodCertificate(tc.pcr, tc.facts, td)
			if v.Reason != tc.reason || !strings.Contains(v.Message, tc.msg) {
				t.Errorf("verdict %q %q, want %q containing %q", v.Reason, v.Message, tc.reason, tc.msg)
			}
			if tc.reason == "" && !key.PublicKey.Equal(v.PublicKey) {
				t.Error("the verdict does not carry the requester's key")
			}
		})
	}
}

func TestPodCertificateLifetimeAndKeyTypes(t *testing.T) {
	r := request(t, identityObj("w", func(s *mtlsv1alpha1.AgentIdentitySpec) { s.Duration = &metav1.Duration{Duration: 24 * time.Hour} }))
	for _, tc := range []struct {
		max  *int32
		want time.Duration
	}{
		{nil, 24 * time.Hour},
		{ptr.To[int32](7200), 2 * time.Hour},
		{ptr.To[int32](7 * 86400), 24 * time.Hour},
	} {
		if got := PodCertificateLifetime(r, tc.max); got != tc.want {
			t.Errorf("lifetime with max %v = %s, want %s", tc.max, got, tc.want)
		}
	}
	short := request(t, identityObj("w", func(s *mtlsv1alpha1.AgentIdentitySpec) { s.Duration = &metav1.Duration{Duration: time.Minute} }))
	if got := PodCertificateLifetime(short, nil); got != time.Hour {
		t.Errorf("a 1m identity gets %s, want the API's minimum of 1h", got)
	}
	if got := PodCertificateMaxExpirationSeconds(short); got != 3600 {
		t.Errorf("maxExpirationSeconds %d, want 3600", got)
	}
	for alg, want := range map[string]string{"ECDSA/0": "ECDSAP256", "ECDSA/384": "ECDSAP384", "Ed25519/0": "ED25519", "RSA/0": "RSA3072", "RSA/4096": "RSA4096"} {
		a, size, _ := strings.Cut(alg, "/")
		id := identityObj("w", func(s *mtlsv1alpha1.AgentIdentitySpec) {
			s.KeyDelivery = mtlsv1alpha1.KeyDeliveryPodCertificate
			s.PrivateKey = &mtlsv1alpha1.PrivateKey{Algorithm: mtlsv1alpha1.PrivateKeyAlgorithm(a)}
			if size != "0" {
				s.PrivateKey.Size = map[string]int32{"384": 384, "4096": 4096}[size]
			}
		})
		if got := PodCertificateKeyType(request(t, id)); got != want {
			t.Errorf("%s: key type %s, want %s", alg, got, want)
		}
	}
	bad := identityObj("w", func(s *mtlsv1alpha1.AgentIdentitySpec) {
		s.KeyDelivery = mtlsv1alpha1.KeyDeliveryPodCertificate
		s.PrivateKey = &mtlsv1alpha1.PrivateKey{Algorithm: "RSA", Size: 2048}
	})
	if _, err := NewRequest(td, bad); err == nil || !strings.Contains(err.Error(), "3072 and 4096 bits only") {
		t.Errorf("RSA 2048 in PodCertificate mode: %v", err)
	}
}

// TestPodCertificateRefreshDuringAnEmergency: while a compromised CA still
// signs, the kubelet is sent back for a new certificate as soon as the API
// server allows; at any other time the renewal rule applies.
func TestPodCertificateRefreshDuringAnEmergency(t *testing.T) {
	r := request(t, identityObj("w", func(s *mtlsv1alpha1.AgentIdentitySpec) { s.Duration = &metav1.Duration{Duration: 24 * time.Hour} }))
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: nb, NotAfter: nb.Add(24 * time.Hour)}
	normal := RenewalFor(r, "uid-w", leaf)
	for _, tc := range []struct {
		name string
		rot  ca.Rotation
		want time.Time
	}{
		{"stable", ca.Rotation{Phase: ca.PhaseStable}, normal},
		{"scheduled rotation, propagating", ca.Rotation{Phase: ca.PhasePropagating}, normal},
		{"emergency, compromised CA still signs", ca.Rotation{Phase: ca.PhasePropagating, Compromised: true}, nb.Add(10 * time.Minute)},
		{"emergency, next CA signs", ca.Rotation{Phase: ca.PhaseReissuing, Compromised: true}, normal},
	} {
		if got := PodCertificateRefresh(r, "uid-w", leaf, tc.rot); !got.Equal(tc.want) {
			t.Errorf("%s: beginRefreshAt %s, want %s", tc.name, got, tc.want)
		}
	}
	if !normal.After(nb.Add(10 * time.Minute)) {
		t.Fatalf("the renewal rule gives %s, which leaves the emergency case untested", normal)
	}
}
