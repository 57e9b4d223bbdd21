package inspect

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/cli/golden"
)

var (
	now       = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	notBefore = now.Add(-time.Hour)
	notAfter  = now.Add(23 * time.Hour)
	spiffeID  = "spiffe://cluster.local/ns/agents/agent/worker"
)

// fixture is a deterministic CA and leaf (Ed25519 keys from fixed seeds,
// fixed serials and times), so that the golden output never changes.
type fixture struct {
	caCert, leaf *x509.Certificate
	leafKeyPEM   []byte
	otherKeyPEM  []byte
}

func seedKey(b byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize))
}

func keyPEM(t *testing.T, k ed25519.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func newFixture(t *testing.T) *fixture {
	caKey := seedKey(1)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(0xca), Subject: pkix.Name{Organization: []string{"agentmesh"}, CommonName: "agentmesh agent CA cluster.local"},
		NotBefore: now.Add(-24 * time.Hour), NotAfter: now.Add(365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(nil, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leafKey := seedKey(2)
	u, _ := url.Parse(spiffeID)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(0x1eaf), NotBefore: notBefore, NotAfter: notAfter, URIs: []*url.URL{u},
		DNSNames: []string{"worker.agents.svc"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(nil, leafTmpl, caCert, leafKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(leafDER)
	return &fixture{caCert: caCert, leaf: leaf, leafKeyPEM: keyPEM(t, leafKey), otherKeyPEM: keyPEM(t, seedKey(3))}
}

const policyJSON = `{
  "version": "agentmesh.dev/policy/v1",
  "spiffeID": "spiffe://cluster.local/ns/agents/agent/worker",
  "trustDomain": "cluster.local",
  "ingress": {"mode": "Enforce", "allowAll": false, "spiffeIDs": ["spiffe://cluster.local/ns/agents/agent/planner"], "prefixes": [], "policies": ["worker-ingress"]},
  "egress": {"mode": "Enforce", "allowAll": false, "spiffeIDs": [], "prefixes": ["spiffe://cluster.local/"], "policies": [], "default": "allow-authenticated"},
  "trustDomains": {"cluster.local": ["062cea9b109e3afdff195037ca6209e0d44c7f7cae2a7fe872ffa2f99e6443de"]}
}`

func (f *fixture) input() Input {
	mt := func(t time.Time) *metav1.Time { v := metav1.NewTime(t); return &v }
	id := &mtlsv1alpha1.AgentIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: "worker", Generation: 1},
		Spec:       mtlsv1alpha1.AgentIdentitySpec{DNSNames: []string{"worker.agents.svc"}},
		Status: mtlsv1alpha1.AgentIdentityStatus{
			SPIFFEID: spiffeID, SecretName: "worker-tls", SerialNumber: "1eaf", NotBefore: mt(notBefore), NotAfter: mt(notAfter),
			RenewalTime: mt(now.Add(10 * time.Hour)), CASerial: "ca", TrustConfigMap: "worker-trust", Policies: []string{"worker-ingress"},
			Conditions: []metav1.Condition{
				{Type: "Ready", Status: "True", Reason: "Issued", Message: "certificate 1eaf is valid until " + notAfter.Format(time.RFC3339), ObservedGeneration: 1},
				{Type: "Issuing", Status: "False", Reason: "Issued", Message: "renewal is due at 2026-12-04T22:00:00Z", ObservedGeneration: 1},
			},
		},
	}
	return Input{
		Now:      now,
		Identity: id,
		Secret: &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: "worker-tls", Annotations: map[string]string{mtlsv1alpha1.AnnotationSPIFFEID: spiffeID}},
			Data: map[string][]byte{
				"tls.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.leaf.Raw}),
				"tls.key": f.leafKeyPEM,
				"ca.crt":  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.caCert.Raw}),
			},
		},
		TrustConfigMap: &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: "worker-trust"}, Data: map[string]string{"policy.json": policyJSON}},
		Pods: []corev1.Pod{
			{ObjectMeta: metav1.ObjectMeta{Name: "worker-2", Annotations: map[string]string{mtlsv1alpha1.AnnotationInjected: spiffeID}}, Spec: corev1.PodSpec{NodeName: "node1"}, Status: corev1.PodStatus{Phase: corev1.PodRunning}},
			{ObjectMeta: metav1.ObjectMeta{Name: "worker-1", Annotations: map[string]string{mtlsv1alpha1.AnnotationInjected: spiffeID}}, Spec: corev1.PodSpec{NodeName: "node1"}, Status: corev1.PodStatus{Phase: corev1.PodRunning}},
		},
	}
}

func TestSummarize(t *testing.T) {
	f := newFixture(t)
	tests := map[string]struct {
		change   func(*Input)
		problems []string
		check    func(*testing.T, *Summary)
	}{
		"in order": {
			change: func(*Input) {},
			check: func(t *testing.T, s *Summary) {
				c := s.Certificate
				if c.Serial != "1eaf" || c.KeyType != "Ed25519" || c.URIs[0] != spiffeID || c.Chain != 0 || !s.SecretMatchesStatus || !*s.KeyMatches {
					t.Errorf("summary = %+v, certificate %+v", s, c)
				}
				if s.Ingress.SPIFFEIDs[0] != "spiffe://cluster.local/ns/agents/agent/planner" || s.Egress.Default != "allow-authenticated" {
					t.Errorf("policy = %+v %+v", s.Ingress, s.Egress)
				}
				if len(s.Pods) != 2 || s.Pods[0].Name != "worker-1" {
					t.Errorf("pods = %+v", s.Pods)
				}
			},
		},
		"secret missing": {
			change:   func(in *Input) { in.Secret = nil },
			problems: []string{"Secret agents/worker-tls does not exist"},
		},
		"secret of another certificate": {
			change:   func(in *Input) { in.Identity.Status.SerialNumber = "beef" },
			problems: []string{"Secret agents/worker-tls does not match the status (serial: Secret 1eaf, status beef)"},
		},
		"key of another certificate": {
			change:   func(in *Input) { in.Secret.Data["tls.key"] = f.otherKeyPEM },
			problems: []string{"tls.key does not belong to the certificate"},
		},
		"key unreadable": {
			change:   func(in *Input) { in.Secret.Data["tls.key"] = []byte("garbage") },
			problems: []string{"Secret agents/worker-tls: tls.key cannot be parsed"},
		},
		"expired": {
			change:   func(in *Input) { in.Now = notAfter.Add(time.Second) },
			problems: []string{"the certificate 1eaf expired"},
		},
		"not ready": {
			change: func(in *Input) {
				in.Identity.Status.Conditions[0] = metav1.Condition{Type: "Ready", Status: "False", Reason: "SecretConflict", Message: "Secret worker-tls exists", ObservedGeneration: 1}
			},
			problems: []string{"not Ready (SecretConflict): Secret worker-tls exists"},
		},
		"stale generation": {
			change:   func(in *Input) { in.Identity.Generation = 2 },
			problems: []string{"the Ready condition is for generation 1, the spec is at 2"},
		},
		"no trust configmap": {
			change:   func(in *Input) { in.TrustConfigMap = nil },
			problems: []string{"trust ConfigMap agents/worker-trust does not exist"},
		},
		"bad policy": {
			change:   func(in *Input) { in.TrustConfigMap.Data["policy.json"] = `{"version":"x"}` },
			problems: []string{"ConfigMap agents/worker-trust: policy.json: version \"x\" is not supported"},
		},
		"pod not injected": {
			change:   func(in *Input) { in.Pods[0].Annotations = nil },
			problems: []string{"Pod worker-2 carries the label but was not injected"},
		},
		"secret forbidden": {
			change: func(in *Input) {
				in.Secret = nil
				in.ReadErrors = map[string]string{"Secret worker-tls": "forbidden"}
			},
			problems: []string{"Secret worker-tls: forbidden"},
		},
		"pod certificate delivery": {
			change: func(in *Input) {
				in.Identity.Spec.KeyDelivery = mtlsv1alpha1.KeyDeliveryPodCertificate
				in.Secret = nil
			},
			check: func(t *testing.T, s *Summary) {
				if s.Certificate != nil || s.KeyDelivery != "PodCertificate" {
					t.Errorf("summary = %+v", s)
				}
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			in := f.input()
			tc.change(&in)
			s := Summarize(in)
			if len(s.Problems) != len(tc.problems) {
				t.Fatalf("problems = %q, want %q", s.Problems, tc.problems)
			}
			for i, want := range tc.problems {
				if !strings.Contains(s.Problems[i], want) {
					t.Errorf("problem %d = %q, want it to contain %q", i, s.Problems[i], want)
				}
			}
			if tc.check != nil {
				tc.check(t, s)
			}
		})
	}
}

// TestNoKeyMaterial checks that neither the table nor JSON holds the key.
func TestNoKeyMaterial(t *testing.T) {
	f := newFixture(t)
	s := Summarize(f.input())
	var b bytes.Buffer
	if err := s.WriteHuman(&b); err != nil {
		t.Fatal(err)
	}
	j, _ := json.Marshal(s)
	block, _ := pem.Decode(f.leafKeyPEM)
	for _, out := range []string{b.String(), string(j)} {
		if strings.Contains(out, "PRIVATE KEY") || strings.Contains(out, string(f.leafKeyPEM[30:60])) || bytes.Contains([]byte(out), block.Bytes[16:32]) {
			t.Errorf("output holds key material:\n%s", out)
		}
	}
}

func TestGolden(t *testing.T) {
	f := newFixture(t)
	for name, change := range map[string]func(*Input){
		"identity": func(*Input) {},
		"identity-broken": func(in *Input) {
			in.Identity.Status.SerialNumber = "beef"
			in.Identity.Annotations = map[string]string{mtlsv1alpha1.AnnotationRenew: "2026-12-04T11:59:00Z"}
			in.Pods = in.Pods[:1]
			in.Pods[0].Annotations = nil
		},
	} {
		t.Run(name, func(t *testing.T) {
			in := f.input()
			change(&in)
			var b bytes.Buffer
			if err := Summarize(in).WriteHuman(&b); err != nil {
				t.Fatal(err)
			}
			golden.Assert(t, "inspect-"+name, b.Bytes())
		})
	}
}
