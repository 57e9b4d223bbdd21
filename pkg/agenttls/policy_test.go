package agenttls_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

func TestRulesAllows(t *testing.T) {
	rules := agenttls.Rules{
		Mode:      agenttls.ModeEnforce,
		SPIFFEIDs: []string{"spiffe://cluster.local/ns/agents/agent/planner", "spiffe://partner.example/ns/ops/agent/auditor"},
		Prefixes:  []string{"spiffe://cluster.local/ns/research/", "spiffe://friend.example/"},
	}
	tests := map[string]bool{
		"spiffe://cluster.local/ns/agents/agent/planner":     true,
		"spiffe://cluster.local/ns/agents/agent/planner2":    false,
		"spiffe://cluster.local/ns/agents/agent/plan":        false,
		"spiffe://partner.example/ns/ops/agent/auditor":      true,
		"spiffe://partner.example/ns/ops/agent/other":        false,
		"spiffe://cluster.local/ns/research/agent/a":         true,
		"spiffe://cluster.local/ns/research-evil/agent/a":    false,
		"spiffe://cluster.local/ns/researc/agent/a":          false,
		"spiffe://friend.example/anything/at/all":            true,
		"spiffe://friend.example.evil/ns/x/agent/y":          false,
		"spiffe://other.example/ns/agents/agent/planner":     false,
		"spiffe://cluster.local/ns/agents/agent/planner/sub": false,
	}
	for id, want := range tests {
		if got := rules.Allows(spiffeid.RequireFromString(id)); got != want {
			t.Errorf("Allows(%s) = %v, want %v", id, got, want)
		}
	}
	if rules.Allows(spiffeid.ID{}) {
		t.Error("the zero ID is allowed")
	}
	all := agenttls.Rules{Mode: agenttls.ModeEnforce, AllowAll: true}
	if !all.Allows(spiffeid.RequireFromString("spiffe://anywhere.example/x")) {
		t.Error("allowAll does not allow")
	}
	var none agenttls.Rules
	if none.Allows(plannerID) {
		t.Error("empty rules allow")
	}
}

func TestPolicyErrorMessages(t *testing.T) {
	tests := []struct {
		err  agenttls.PolicyError
		want string
	}{
		{
			agenttls.PolicyError{Direction: agenttls.Ingress, Local: workerID, Peer: outsiderID, Policies: []string{"worker-ingress"}},
			"agentmesh: ingress policy of spiffe://cluster.local/ns/agents/agent/worker does not allow spiffe://cluster.local/ns/agents/agent/outsider (policies: worker-ingress)",
		},
		{
			agenttls.PolicyError{Direction: agenttls.Egress, Local: workerID, Peer: auditorID, Default: "allow-authenticated"},
			"agentmesh: egress policy of spiffe://cluster.local/ns/agents/agent/worker does not allow spiffe://partner.example/ns/ops/agent/auditor (default posture: allow-authenticated)",
		},
		{
			agenttls.PolicyError{Direction: agenttls.Egress, Local: workerID, Peer: plannerID},
			"agentmesh: egress policy of spiffe://cluster.local/ns/agents/agent/worker does not allow spiffe://cluster.local/ns/agents/agent/planner (no policy)",
		},
	}
	for _, tc := range tests {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
	}
}

const validPolicy = `{
  "version": "agentmesh.dev/policy/v1",
  "spiffeID": "spiffe://cluster.local/ns/agents/agent/worker",
  "trustDomain": "cluster.local",
  "ingress": {"mode": "Enforce", "allowAll": false, "spiffeIDs": ["spiffe://cluster.local/ns/agents/agent/planner"],
    "prefixes": [], "policies": ["worker-ingress"]},
  "egress": {"mode": "Audit", "allowAll": false, "spiffeIDs": [], "prefixes": ["spiffe://cluster.local/"],
    "policies": [], "default": "allow-authenticated"},
  "trustDomains": {"cluster.local": ["062cea9b109e3afdff195037ca6209e0d44c7f7cae2a7fe872ffa2f99e6443de"]}
}`

func TestParsePolicy(t *testing.T) {
	p, err := agenttls.ParsePolicy([]byte(validPolicy))
	if err != nil {
		t.Fatal(err)
	}
	if p.SPIFFEID != workerID.String() || p.Egress.Mode != agenttls.ModeAudit || p.Egress.Default != "allow-authenticated" ||
		len(p.TrustDomains["cluster.local"]) != 1 || p.Ingress.Policies[0] != "worker-ingress" {
		t.Errorf("parsed %+v", p)
	}
	if err := p.Check(agenttls.Ingress, plannerID); err != nil {
		t.Errorf("Check(ingress, planner) = %v", err)
	}
	if err := p.Check(agenttls.Ingress, outsiderID); err == nil {
		t.Error("Check(ingress, outsider) = nil")
	}
	if err := p.Check("sideways", plannerID); err == nil {
		t.Error("Check of an unknown direction = nil")
	}

	bad := map[string]struct{ from, to, want string }{
		"version":           {`"agentmesh.dev/policy/v1"`, `"v0"`, `version "v0" is not supported`},
		"mode":              {`"Audit"`, `"Relaxed"`, `egress: mode "Relaxed" is neither Enforce nor Audit`},
		"spiffeID":          {`"spiffeID": "spiffe://cluster.local/ns/agents/agent/worker"`, `"spiffeID": "https://x"`, "spiffeID:"},
		"trust domain":      {`"trustDomain": "cluster.local"`, `"trustDomain": "other.example"`, "is not the trust domain of spiffeID"},
		"allowed ID":        {`["spiffe://cluster.local/ns/agents/agent/planner"]`, `["spiffe://cluster.local/ns/../x"]`, "ingress: spiffeIDs:"},
		"upper-case ID":     {`["spiffe://cluster.local/ns/agents/agent/planner"]`, `["spiffe://CLUSTER.local/ns/a"]`, "ingress: spiffeIDs:"},
		"prefix no slash":   {`["spiffe://cluster.local/"]`, `["spiffe://cluster.local"]`, `does not end in "/"`},
		"prefix not SPIFFE": {`["spiffe://cluster.local/"]`, `["https://cluster.local/"]`, "egress: prefixes:"},
		"prefix double":     {`["spiffe://cluster.local/"]`, `["spiffe://cluster.local//"]`, "egress: prefixes:"},
		"fingerprint":       {`"062cea9b`, `"XX2cea9b`, "is not a lower-case hex SHA-256 fingerprint"},
		"trust domain key":  {`"cluster.local": [`, `"Cluster.Local": [`, `trustDomains: "Cluster.Local" is not a trust domain name`},
		"syntax":            {`"trustDomains"`, `trustDomains`, "policy.json: invalid character"},
	}
	for name, tc := range bad {
		t.Run(name, func(t *testing.T) {
			in := strings.Replace(validPolicy, tc.from, tc.to, 1)
			if in == validPolicy {
				t.Fatalf("%q not found", tc.from)
			}
			_, err := agenttls.ParsePolicy([]byte(in))
			if err == nil {
				t.Fatalf("ParsePolicy accepted it, want %q", tc.want)
			}
			mustContain(t, err.Error(), tc.want)
		})
	}
	if _, err := agenttls.ParsePolicy(bytes.Repeat([]byte(" "), 513<<10)); err == nil {
		t.Error("an oversized policy.json was parsed")
	}
}

// TestDocumentedPolicies parses the policy.json examples of the README
// (docs/policies), with a real fingerprint for the placeholder.
func TestDocumentedPolicies(t *testing.T) {
	files, err := filepath.Glob("../../docs/policies/*.policy.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Skip("no documented policies")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.ReplaceAll(b, []byte("CLUSTER-CA-SHA256"), []byte(strings.Repeat("ab", 32)))
		p, err := agenttls.ParsePolicy(b)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if p.SPIFFEID != workerID.String() {
			t.Errorf("%s: spiffeID %s", f, p.SPIFFEID)
		}
	}
}

// FuzzParsePolicy: policy.json. Invariants: no panic; an error returns no
// policy; what parses holds up its promises (prefixes end in "/", the own
// ID is a valid SPIFFE ID); and written back as JSON it reads back
// identically (nothing accepted is lost or reinterpreted on the way).
func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(validPolicy))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"version":"agentmesh.dev/policy/v1","ingress":{"prefixes":["spiffe://a/"]}}`))
	f.Add([]byte(`{"version":"agentmesh.dev/policy/v1","spiffeID":"spiffe://cluster.local/ns/a/agent/b","trustDomain":"cluster.local",` +
		`"ingress":{"mode":"Enforce","allowAll":true},"egress":{"mode":"Audit","prefixes":["spiffe://Cluster.local/"]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := agenttls.ParsePolicy(b)
		if err != nil {
			if p != nil {
				t.Fatalf("a policy with error %v", err)
			}
			return
		}
		// Whatever parses holds up its promises: prefixes end in "/" and
		// the own ID is a valid SPIFFE ID.
		for _, r := range []agenttls.Rules{p.Ingress, p.Egress} {
			for _, pre := range r.Prefixes {
				if !strings.HasSuffix(pre, "/") {
					t.Fatalf("prefix %q accepted", pre)
				}
			}
		}
		if _, err := spiffeid.FromString(p.SPIFFEID); err != nil {
			t.Fatalf("spiffeID %q accepted", p.SPIFFEID)
		}
		out, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		again, err := agenttls.ParsePolicy(out)
		if err != nil {
			t.Fatalf("an accepted policy written back is refused: %v", err)
		}
		if !reflect.DeepEqual(p, again) {
			t.Fatalf("an accepted policy reads back otherwise:\n%+v\n%+v", p, again)
		}
	})
}
