package agenttls_test

import (
	"crypto/x509"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/policy"
	"github.com/agentmesh/agentmesh/pkg/agenttls"
	"github.com/agentmesh/agentmesh/pkg/agenttls/agenttlstest"
)

// world is the cluster as policy resolution sees it.
type world struct {
	identities []policy.Identity
	namespaces []policy.Namespace
}

func (w world) Identities(ns string) []policy.Identity {
	var out []policy.Identity
	for _, i := range w.identities {
		if i.Namespace == ns {
			out = append(out, i)
		}
	}
	return out
}

func (w world) Namespaces() []policy.Namespace { return w.namespaces }

// operatorTrust resolves and renders the worker's trust ConfigMap with the
// operator's own code: ingress from planners and the partner's auditor,
// egress to the agents namespace.
func operatorTrust(t *testing.T, bundles map[string][]*x509.Certificate) policy.Output {
	t.Helper()
	role := func(r string) labels.Selector { return labels.SelectorFromSet(labels.Set{"agentmesh.dev/role": r}) }
	w := world{
		identities: []policy.Identity{
			{Namespace: "agents", Name: "worker", Labels: map[string]string{"agentmesh.dev/role": "worker"}},
			{Namespace: "agents", Name: "planner", Labels: map[string]string{"agentmesh.dev/role": "planner"}},
			{Namespace: "agents", Name: "outsider", Labels: map[string]string{"agentmesh.dev/role": "outsider"}},
		},
		namespaces: []policy.Namespace{{Name: "agents"}},
	}
	compiled := &policy.Compiled{
		Namespace:     "agents",
		Name:          "worker-ingress",
		AgentSelector: role("worker"),
		Ingress: &policy.Direction{Rules: []policy.Rule{{Peers: []policy.Peer{
			{IdentitySelector: role("planner")},
			{SPIFFEIDs: []spiffeid.ID{auditorID}},
		}}}},
		Egress: &policy.Direction{Rules: []policy.Rule{{Peers: []policy.Peer{{IdentitySelector: labels.Everything()}}}}},
	}
	eff, selecting := policy.Resolve(policy.Input{
		TrustDomain: tdLocal,
		Default:     policy.AllowAuthenticated,
		Identity:    w.identities[0],
		Policies:    []*policy.Compiled{compiled},
		World:       w,
	})
	if len(selecting) != 1 {
		t.Fatalf("the policy does not select the worker")
	}
	out, err := policy.Render(eff, bundles)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestOperatorRenderedFiles loads the operator's policy.json and bundle.pem
// with the SDK and checks the verdicts of real handshakes.
func TestOperatorRenderedFiles(t *testing.T) {
	local, partner := newCA(t, tdLocal), newCA(t, tdPartner)
	out := operatorTrust(t, map[string][]*x509.Certificate{"cluster.local": {local.Root}, "partner.example": {partner.Root}})

	leaf := issue(t, local, workerID)
	payload, err := agenttlstest.Payload(leaf, agenttlstest.Trust{BundlePEM: out.BundlePEM, PolicyJSON: out.PolicyJSON})
	if err != nil {
		t.Fatal(err)
	}
	w, err := agenttlstest.NewAtomicWriter(filepath.Join(t.TempDir(), "agentmesh"))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(payload); err != nil {
		t.Fatal(err)
	}
	src, err := agenttls.NewSource(agenttls.WithDir(w.Dir()), agenttls.WithLogger(discard()))
	if err != nil {
		t.Fatalf("the SDK refused the operator's files: %v", err)
	}
	defer src.Close()

	snap := src.Snapshot()
	p := snap.Policy()
	if p.Ingress.Mode != agenttls.ModeEnforce || len(p.Ingress.Policies) != 1 || p.Ingress.Policies[0] != "worker-ingress" ||
		len(p.Egress.Prefixes) != 1 || p.Egress.Prefixes[0] != "spiffe://cluster.local/ns/agents/" {
		t.Errorf("policy as loaded: %+v", p)
	}
	if tds := snap.TrustDomains(); len(tds) != 2 || tds[0] != tdLocal || tds[1] != tdPartner {
		t.Errorf("trust domains %v", tds)
	}

	srv := serve(t, src.ServerTLSConfig())
	tests := []struct {
		name  string
		leaf  *agenttlstest.Leaf
		allow bool
		err   string
	}{
		{"planner", issue(t, local, plannerID), true, ""},
		{"partner auditor", issue(t, partner, auditorID), true, ""},
		{"outsider", issue(t, local, outsiderID), false,
			"agentmesh: ingress policy of spiffe://cluster.local/ns/agents/agent/worker does not allow spiffe://cluster.local/ns/agents/agent/outsider (policies: worker-ingress)"},
		{"partner CA vouching for the planner", issue(t, partner, plannerID), false, "unknown authority"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dial(t, srv.addr, rawClient(tc.leaf))
			r := srv.next(t)
			if tc.allow {
				if err != nil || r.err != nil || r.peer != tc.leaf.ID {
					t.Fatalf("refused: client %v, server %v", err, r.err)
				}
				return
			}
			if err == nil || r.err == nil {
				t.Fatalf("allowed, want %q", tc.err)
			}
			mustContain(t, r.err.Error(), tc.err)
		})
	}
}

// TestCapsAgreeWithTheOperator pins the SDK's file caps to the operator's,
// and loads a trust ConfigMap federating 80 CAs (more than a chain may
// hold) that the operator rendered.
func TestCapsAgreeWithTheOperator(t *testing.T) {
	if agenttls.MaxBundleFileSize != ca.MaxBundlePEMSize || agenttls.MaxBundleFileCertificates != ca.MaxBundleCertificates ||
		agenttls.MaxCertFileSize != ca.MaxCertificatesPEMSize || agenttls.MaxCertFileCertificates != ca.MaxCertificatesPerPEM ||
		policy.MaxTrustDataSize > agenttls.MaxBundleFileSize {
		t.Fatalf("caps differ: SDK bundle %d bytes / %d certificates, chain %d / %d; operator bundle %d / %d, chain %d / %d, trust data %d",
			agenttls.MaxBundleFileSize, agenttls.MaxBundleFileCertificates, agenttls.MaxCertFileSize, agenttls.MaxCertFileCertificates,
			ca.MaxBundlePEMSize, ca.MaxBundleCertificates, ca.MaxCertificatesPEMSize, ca.MaxCertificatesPerPEM, policy.MaxTrustDataSize)
	}
	local := newCA(t, tdLocal)
	var partners []*x509.Certificate
	for range 80 {
		partners = append(partners, newCA(t, tdPartner).Root)
	}
	out := operatorTrust(t, map[string][]*x509.Certificate{"cluster.local": {local.Root}, "partner.example": partners})
	payload, err := agenttlstest.Payload(issue(t, local, workerID), agenttlstest.Trust{BundlePEM: out.BundlePEM, PolicyJSON: out.PolicyJSON})
	if err != nil {
		t.Fatal(err)
	}
	w, err := agenttlstest.NewAtomicWriter(filepath.Join(t.TempDir(), "agentmesh"))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(payload); err != nil {
		t.Fatal(err)
	}
	src, err := agenttls.NewSource(agenttls.WithDir(w.Dir()), agenttls.WithLogger(discard()))
	if err != nil {
		t.Fatalf("the SDK refused a bundle of 81 CAs: %v", err)
	}
	defer src.Close()
	if tds := src.Snapshot().TrustDomains(); len(tds) != 2 {
		t.Errorf("trust domains %v", tds)
	}
}
