package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"reflect"
	"testing"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

// fuzzKeyTypes are the key settings of the identity a fuzzed request is
// for, picked by the fuzzer's byte.
var fuzzKeyTypes = []*mtlsv1alpha1.PrivateKey{
	nil,
	{Algorithm: mtlsv1alpha1.ECDSAKeyAlgorithm, Size: 384},
	{Algorithm: mtlsv1alpha1.Ed25519KeyAlgorithm},
	{Algorithm: mtlsv1alpha1.RSAKeyAlgorithm, Size: 3072},
	{Algorithm: mtlsv1alpha1.RSAKeyAlgorithm, Size: 4096},
}

// FuzzAuthorizePodCertificate: the stub PKCS#10 request of a
// PodCertificateRequest (written by the kubelet, or by anyone who can
// create one), for an identity of each key type, every other claim true.
// Invariants: no panic; a verdict is the same twice; a request is granted
// only with the requester's key, proven by the request's signature and of
// the identity's key type, and a denial carries no key and says why.
func FuzzAuthorizePodCertificate(f *testing.F) {
	csr := func(key crypto.Signer) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			f.Fatal(err)
		}
		return der
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rk, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		f.Fatal(err)
	}
	good := csr(p256)
	tampered := append([]byte{}, good...)
	tampered[len(tampered)-3] ^= 0xff
	f.Add(good, uint8(0))
	f.Add(csr(p384), uint8(1))
	f.Add(csr(ed), uint8(2))
	f.Add(csr(rk), uint8(3))
	f.Add(csr(rk), uint8(4))
	f.Add(csr(p224), uint8(0))
	f.Add(tampered, uint8(0))
	f.Add(good[:len(good)/2], uint8(0))

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: "worker-0", UID: "pod-uid", Labels: map[string]string{mtlsv1alpha1.LabelIdentity: "worker"},
			Annotations: map[string]string{mtlsv1alpha1.AnnotationInjected: "spiffe://" + td.Name() + "/ns/agents/agent/worker"}},
		Spec: corev1.PodSpec{ServiceAccountName: "worker", NodeName: "node-1"},
	}
	f.Fuzz(func(t *testing.T, stub []byte, keyType uint8) {
		id := identityObj("worker", func(s *mtlsv1alpha1.AgentIdentitySpec) {
			s.KeyDelivery = mtlsv1alpha1.KeyDeliveryPodCertificate
			s.ServiceAccountName = "worker"
			s.PrivateKey = fuzzKeyTypes[int(keyType)%len(fuzzKeyTypes)]
		})
		pcr := &certv1.PodCertificateRequest{ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: "worker-0-x"},
			Spec: certv1.PodCertificateRequestSpec{
				SignerName: mtlsv1alpha1.PodCertificateSignerName, PodName: "worker-0", PodUID: "pod-uid",
				ServiceAccountName: "worker", ServiceAccountUID: "sa-uid", NodeName: "node-1", NodeUID: "node-uid",
				StubPKCS10Request: stub,
			}}
		facts := PodCertificateFacts{Pod: pod, Identity: id, ServiceAccountUID: "sa-uid", NodeUID: "node-uid"}
		v := AuthorizePodCertificate(pcr, facts, td)
		if again := AuthorizePodCertificate(pcr, facts, td); !reflect.DeepEqual(again, v) {
			t.Fatalf("two verdicts on one request: %+v, %+v", v, again)
		}
		if v.Reason != "" {
			if v.PublicKey != nil || v.Message == "" {
				t.Fatalf("denied (%s) with a key, or without a message", v.Reason)
			}
			return
		}
		parsed, err := x509.ParseCertificateRequest(stub)
		if err != nil || parsed.CheckSignature() != nil {
			t.Fatal("granted a request that does not parse or prove possession")
		}
		if pub, ok := v.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(parsed.PublicKey) {
			t.Fatal("granted with a key that is not the request's")
		}
		req, err := NewRequest(td, id)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := KeyTypeOf(v.PublicKey), PodCertificateKeyType(req); got != want {
			t.Fatalf("granted a %s key to an identity of %s keys", got, want)
		}
	})
}
