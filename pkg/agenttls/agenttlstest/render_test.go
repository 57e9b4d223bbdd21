package agenttlstest_test

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentmesh/agentmesh/internal/policy"
	"github.com/agentmesh/agentmesh/pkg/agenttls"
	"github.com/agentmesh/agentmesh/pkg/agenttls/agenttlstest"
)

var (
	tdLocal   = spiffeid.RequireTrustDomainFromString("cluster.local")
	tdPartner = spiffeid.RequireTrustDomainFromString("partner.example")
	tdZeta    = spiffeid.RequireTrustDomainFromString("a.example")
	workerID  = spiffeid.RequireFromString("spiffe://cluster.local/ns/agents/agent/worker")
)

// TestRenderTrustMatchesOperator renders the same effective policy and
// bundles with the operator's policy.Render and with RenderTrust, and wants
// the same bytes.
func TestRenderTrustMatchesOperator(t *testing.T) {
	local, partner, zeta := mustCA(t, tdLocal), mustCA(t, tdPartner), mustCA(t, tdZeta)
	local2 := mustCA(t, tdLocal)
	eff := &policy.Effective{
		Version:     policy.SchemaVersion,
		SPIFFEID:    workerID.String(),
		TrustDomain: "cluster.local",
		Ingress: policy.Allowed{Mode: policy.ModeAudit, SPIFFEIDs: []string{"spiffe://partner.example/ns/ops/agent/auditor"},
			Prefixes: []string{"spiffe://cluster.local/ns/research/"}, Policies: []string{"a", "b"}},
		Egress: policy.Allowed{Mode: policy.ModeEnforce, SPIFFEIDs: []string{}, Prefixes: []string{"spiffe://cluster.local/"},
			Policies: []string{}, Default: policy.AllowAuthenticated},
	}
	opBundles := map[string][]*x509.Certificate{
		"cluster.local":   {local.Root, local2.Root, local.Root},
		"partner.example": {partner.Root},
		"a.example":       {zeta.Root},
	}
	want, err := policy.Render(eff, opBundles)
	if err != nil {
		t.Fatal(err)
	}

	var p agenttls.Policy
	if err := json.Unmarshal(want.PolicyJSON, &p); err != nil {
		t.Fatal(err)
	}
	p.TrustDomains = nil
	got, err := agenttlstest.RenderTrust(&p, map[spiffeid.TrustDomain][]*x509.Certificate{
		tdLocal: {local.Root, local2.Root, local.Root}, tdPartner: {partner.Root}, tdZeta: {zeta.Root},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.PolicyJSON, want.PolicyJSON) {
		t.Errorf("policy.json differs:\n got %s\nwant %s", got.PolicyJSON, want.PolicyJSON)
	}
	if !bytes.Equal(got.BundlePEM, want.BundlePEM) {
		t.Errorf("bundle.pem differs:\n got %s\nwant %s", got.BundlePEM, want.BundlePEM)
	}
	if p.TrustDomains != nil {
		t.Error("RenderTrust modified its input")
	}

	// The SDK's Policy round-trips the operator's JSON unchanged.
	var q agenttls.Policy
	if err := json.Unmarshal(want.PolicyJSON, &q); err != nil {
		t.Fatal(err)
	}
	again, err := json.MarshalIndent(&q, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(again, '\n'), want.PolicyJSON) {
		t.Errorf("agenttls.Policy does not round-trip policy.json:\n got %s\nwant %s", again, want.PolicyJSON)
	}
}

func TestDefaultPolicyMatchesOperator(t *testing.T) {
	eff, _ := policy.Resolve(policy.Input{
		TrustDomain: tdLocal,
		Default:     policy.AllowAuthenticated,
		Identity:    policy.Identity{Namespace: "agents", Name: "worker"},
		World:       emptyWorld{},
	})
	ca := mustCA(t, tdLocal)
	want, err := policy.Render(eff, map[string][]*x509.Certificate{"cluster.local": {ca.Root}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := agenttlstest.RenderTrust(agenttlstest.DefaultPolicy(workerID),
		map[spiffeid.TrustDomain][]*x509.Certificate{tdLocal: {ca.Root}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.PolicyJSON, want.PolicyJSON) {
		t.Errorf("DefaultPolicy differs from the operator's:\n got %s\nwant %s", got.PolicyJSON, want.PolicyJSON)
	}
}

type emptyWorld struct{}

func (emptyWorld) Identities(string) []policy.Identity { return nil }
func (emptyWorld) Namespaces() []policy.Namespace      { return nil }

func mustCA(t *testing.T, td spiffeid.TrustDomain) *agenttlstest.CA {
	t.Helper()
	ca, err := agenttlstest.NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}
