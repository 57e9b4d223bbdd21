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

// TestPolicyV2MatchesOperator: a policy.json v2 that the operator renders
// (grants with tools, skills and an expiry) parses in the SDK and
// marshals back to the same bytes.
func TestPolicyV2MatchesOperator(t *testing.T) {
	ca := mustCA(t, tdLocal)
	eff := &policy.Effective{
		Version:     policy.SchemaVersionV2,
		SPIFFEID:    workerID.String(),
		TrustDomain: "cluster.local",
		Ingress: policy.Allowed{Mode: policy.ModeEnforce, SPIFFEIDs: []string{}, Prefixes: []string{}, Policies: []string{"worker-tools"},
			Grants: []policy.Grant{
				{Policy: "worker-tools", Rule: "ingress[0]", SPIFFEIDs: []string{"spiffe://cluster.local/ns/agents/agent/planner"}, Prefixes: []string{},
					Protocols: &policy.GrantProtocols{MCP: &policy.MCPGrant{Tools: []string{"read_*", "search"}}, A2A: &policy.A2AGrant{Skills: []string{"summarize"}}}},
				{Policy: "worker-tools", Rule: "ingress[1]", AllowAll: true, SPIFFEIDs: []string{}, Prefixes: []string{}, ExpiresAt: "2026-12-04T19:00:00Z"},
			}},
		Egress: policy.Allowed{Mode: policy.ModeEnforce, SPIFFEIDs: []string{}, Prefixes: []string{"spiffe://cluster.local/"},
			Policies: []string{}, Default: policy.AllowAuthenticated},
	}
	want, err := policy.Render(eff, map[string][]*x509.Certificate{"cluster.local": {ca.Root}})
	if err != nil {
		t.Fatal(err)
	}
	p, err := agenttls.ParsePolicy(want.PolicyJSON)
	if err != nil {
		t.Fatalf("the SDK refuses the operator's v2 policy.json: %v", err)
	}
	if len(p.Ingress.Grants) != 2 || p.Ingress.Grants[1].ExpiryTime().IsZero() {
		t.Fatalf("grants %+v", p.Ingress.Grants)
	}
	again, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(again, '\n'), want.PolicyJSON) {
		t.Errorf("agenttls.Policy does not round-trip policy.json v2:\n got %s\nwant %s", again, want.PolicyJSON)
	}
}
