package policy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/pkg/agenttls"
	"github.com/agentmesh/agentmesh/pkg/agenttls/agenttlstest"
)

// Fuzz targets for what tenants write and the operator compiles: the
// AgentTrustPolicies of a namespace and the federated bundles they name.
// `make fuzz` runs them for long, `make test` for a few seconds each.

// FuzzParseBundle: a federated trust domain's ConfigMap key, and a trust
// ConfigMap read back (PreviousBundles, which keeps the last good bundle).
// Invariants: no panic; an error returns no certificate (never a partial
// bundle); an accepted bundle is CAs only, the ones ca.ParseBundlePEM
// reads; PreviousBundles only ever returns CAs of bundle.pem, under a trust
// domain whose fingerprint list in policy.json names them.
func FuzzParseBundle(f *testing.F) {
	a, b := fuzzCACert(f, "partner CA"), fuzzCACert(f, "partner CA 2")
	leafish := fuzzCert(f, "not a CA", false)
	eff, _ := Resolve(Input{TrustDomain: td, Default: AllowAuthenticated, Identity: testWorld.identities[1], World: testWorld})
	out, err := Render(eff, map[string][]*x509.Certificate{td.Name(): {a}, "partner.example": {b, a}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ca.EncodeCertificatesPEM(a, b), out.PolicyJSON)
	f.Add(out.BundlePEM, out.PolicyJSON)
	f.Add(ca.EncodeCertificatesPEM(a, leafish), []byte(`{"trustDomains":{"partner.example":["`+Fingerprint(leafish)+`"]}}`))
	f.Fuzz(func(t *testing.T, bundle, policyJSON []byte) {
		certs, err := ParseBundle(bundle)
		if err != nil {
			if certs != nil {
				t.Fatalf("%d certificates with error %v", len(certs), err)
			}
		} else {
			all, err := ca.ParseBundlePEM(bundle)
			if err != nil || len(all) != len(certs) {
				t.Fatalf("ParseBundle accepts what ca.ParseBundlePEM does not: %v", err)
			}
			for i, c := range certs {
				if !c.IsCA || !c.BasicConstraintsValid || !c.Equal(all[i]) {
					t.Fatalf("certificate %d accepted: not a CA", i+1)
				}
			}
		}
		prev := PreviousBundles(Output{BundlePEM: bundle, PolicyJSON: policyJSON})
		if prev == nil {
			return
		}
		var listed Effective
		if err := json.Unmarshal(policyJSON, &listed); err != nil {
			t.Fatalf("PreviousBundles read a policy.json that does not parse: %v", err)
		}
		for tdName, cs := range prev {
			for _, c := range cs {
				if !contains(listed.TrustDomains[tdName], Fingerprint(c)) {
					t.Fatalf("PreviousBundles returned a CA for %s that policy.json does not list there", tdName)
				}
			}
		}
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// FuzzResolve compiles random policies (selectors, peers, modes, policy
// types, trust bundles) of the identity agents/worker's namespace, resolves
// and renders its trust ConfigMap with a federated CA whose subject is
// random too. Invariants:
//   - no panic;
//   - the same policies, or any others, in another namespace change
//     nothing in the result for the identity;
//   - what the operator writes (bundle.pem and policy.json) is accepted by
//     the SDK's reader (agenttls.Load, with the identity's tls.crt and
//     tls.key), which reads back exactly the allow lists resolved;
//   - the trust ConfigMap reads back (PreviousBundles) to the CAs written,
//     so that the last good bundle can be kept.
func FuzzResolve(f *testing.F) {
	sdk := newSDKFiles(f)
	fedKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	seed := func(subject, labels string, specs ...mtlsv1alpha1.AgentTrustPolicySpec) {
		b, err := json.Marshal(specs)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, labels, subject)
	}
	workerSel := mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"role": "worker"}}
	seed("partner CA", "role=worker")
	seed("partner CA", "role=worker", mtlsv1alpha1.AgentTrustPolicySpec{
		AgentSelector: workerSel, Ingress: from(mtlsv1alpha1.AgentPeer{IdentitySelector: sel("role", "planner")}),
		TrustBundles: []mtlsv1alpha1.TrustBundle{{TrustDomain: "partner.example", ConfigMap: mtlsv1alpha1.ConfigMapKeyRef{Name: "partner"}}},
	})
	seed("O=Partner, Inc.,CN=root", "role=worker,tier=a", mtlsv1alpha1.AgentTrustPolicySpec{
		AgentSelector: workerSel, PolicyTypes: []mtlsv1alpha1.PolicyType{"Ingress", "Egress"}, Mode: mtlsv1alpha1.PolicyModeAudit,
		Ingress: from(mtlsv1alpha1.AgentPeer{NamespaceSelector: sel("team", "research")},
			mtlsv1alpha1.AgentPeer{SPIFFEIDs: []string{"spiffe://partner.example/ns/ops/agent/auditor"}}),
		Egress: to(mtlsv1alpha1.AgentPeer{TrustDomains: []string{"partner.example"}},
			mtlsv1alpha1.AgentPeer{NamespaceSelector: sel(), IdentitySelector: sel("role", "planner")}),
	}, mtlsv1alpha1.AgentTrustPolicySpec{
		Ingress: []mtlsv1alpha1.IngressRule{{}},
	})
	seed("x", "role=worker", mtlsv1alpha1.AgentTrustPolicySpec{
		AgentSelector: mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"not a label key!": "x"}},
		Ingress:       []mtlsv1alpha1.IngressRule{{}},
	}, mtlsv1alpha1.AgentTrustPolicySpec{
		AgentSelector: mtlsv1alpha1.LabelSelector{MatchExpressions: []mtlsv1alpha1.LabelSelectorRequirement{{Key: "role", Operator: "NotIn", Values: []string{"planner"}}}},
		Egress:        to(mtlsv1alpha1.AgentPeer{IdentitySelector: sel(), NamespaceSelector: sel()}),
	})

	f.Fuzz(func(t *testing.T, specsJSON []byte, labels, subject string) {
		var specs []mtlsv1alpha1.AgentTrustPolicySpec
		if json.Unmarshal(specsJSON, &specs) != nil || len(specs) > 8 {
			return
		}
		self := Identity{Namespace: "agents", Name: "worker", Labels: parseLabels(labels)}
		var own, all []*Compiled
		for i, s := range specs {
			p := &mtlsv1alpha1.AgentTrustPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: "p" + string(rune('a'+i)), Generation: int64(i + 1)}, Spec: s}
			own = append(own, Compile(p))
			for _, ns := range []string{"research", "ops", "agents-other"} {
				q := p.DeepCopy()
				q.Namespace = ns
				// Another namespace's policies: the same, and one that
				// selects everything and allows everyone.
				all = append(all, Compile(q), Compile(&mtlsv1alpha1.AgentTrustPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: q.Name + "-open"},
					Spec: mtlsv1alpha1.AgentTrustPolicySpec{Ingress: []mtlsv1alpha1.IngressRule{{}}, Egress: []mtlsv1alpha1.EgressRule{{}}}}))
			}
		}
		in := Input{TrustDomain: td, Default: AllowAuthenticated, Identity: self, Policies: own, World: testWorld}
		eff, selecting := Resolve(in)
		in.Policies = append(append([]*Compiled{}, all...), own...)
		effAll, selectingAll := Resolve(in)
		if !reflect.DeepEqual(eff, effAll) || !reflect.DeepEqual(selecting, selectingAll) {
			t.Fatalf("policies of other namespaces changed the result:\n%+v\n%+v", eff, effAll)
		}

		fed, err := signCA(fedKey, subject)
		if err != nil {
			return // not a subject a certificate can carry
		}
		bundles := map[string][]*x509.Certificate{td.Name(): {sdk.ca.Root}, "partner.example": {fed}}
		for _, p := range selecting {
			for _, b := range p.TrustBundles {
				if b.TrustDomain != td {
					bundles[b.TrustDomain.Name()] = append(bundles[b.TrustDomain.Name()], fed)
				}
			}
		}
		out, err := Render(eff, bundles)
		var tooLarge *TooLargeError
		if errors.As(err, &tooLarge) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		snap, err := sdk.load(out)
		if err != nil {
			t.Fatalf("the SDK refuses what the operator writes: %v\nbundle.pem:\n%s\npolicy.json:\n%s", err, out.BundlePEM, out.PolicyJSON)
		}
		got := snap.Policy()
		for _, d := range []struct {
			name string
			sdk  agenttls.Rules
			op   Allowed
		}{{"ingress", got.Ingress, eff.Ingress}, {"egress", got.Egress, eff.Egress}} {
			if string(d.sdk.Mode) != d.op.Mode || d.sdk.AllowAll != d.op.AllowAll || !reflect.DeepEqual(d.sdk.SPIFFEIDs, d.op.SPIFFEIDs) ||
				!reflect.DeepEqual(d.sdk.Prefixes, d.op.Prefixes) || !reflect.DeepEqual(d.sdk.Policies, d.op.Policies) {
				t.Fatalf("%s: the SDK reads %+v, the operator wrote %+v", d.name, d.sdk, d.op)
			}
		}
		prev := PreviousBundles(out)
		for tdName, cs := range bundles {
			if len(prev[tdName]) != 1 || !prev[tdName][0].Equal(cs[0]) {
				t.Fatalf("the trust ConfigMap reads back %d CAs of %s, want 1", len(prev[tdName]), tdName)
			}
		}
	})
}

// parseLabels reads "k=v,k2=v2".
func parseLabels(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

// sdkFiles are the identity files of agents/worker in a directory: its
// tls.crt and tls.key are fixed; each load writes bundle.pem and
// policy.json from a rendered trust ConfigMap.
type sdkFiles struct {
	ca  *agenttlstest.CA
	dir string
}

func newSDKFiles(f *testing.F) *sdkFiles {
	f.Helper()
	c, err := agenttlstest.NewCA(td)
	if err != nil {
		f.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/agents/agent/worker")
	leaf, err := c.Issue(id)
	if err != nil {
		f.Fatal(err)
	}
	key, err := leaf.KeyPEM()
	if err != nil {
		f.Fatal(err)
	}
	dir := f.TempDir()
	for name, b := range map[string][]byte{agenttls.CertFileName: leaf.CertPEM(), agenttls.KeyFileName: key} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			f.Fatal(err)
		}
	}
	return &sdkFiles{ca: c, dir: dir}
}

func (s *sdkFiles) load(out Output) (*agenttls.Snapshot, error) {
	for name, b := range map[string][]byte{agenttls.BundleFileName: out.BundlePEM, agenttls.PolicyFileName: out.PolicyJSON} {
		if err := os.WriteFile(filepath.Join(s.dir, name), b, 0o600); err != nil {
			return nil, err
		}
	}
	return agenttls.Load(agenttls.FilesInDir(s.dir))
}

// signCA is a self-signed CA with the given subject common name (or
// distinguished name, when it parses as one).
func signCA(key *ecdsa.PrivateKey, subject string) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: subject},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func fuzzCert(f *testing.F, cn string, isCA bool) *x509.Certificate {
	f.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	c, err := signCA(key, cn)
	if err != nil {
		f.Fatal(err)
	}
	if !isCA {
		tmpl := *c
		tmpl.IsCA, tmpl.KeyUsage = false, x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, key.Public(), key)
		if err != nil {
			f.Fatal(err)
		}
		if c, err = x509.ParseCertificate(der); err != nil {
			f.Fatal(err)
		}
	}
	return c
}

func fuzzCACert(f *testing.F, cn string) *x509.Certificate { return fuzzCert(f, cn, true) }
