package policy

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

var (
	t0     = time.Date(2026, 12, 4, 18, 0, 0, 0, time.UTC)
	expiry = metav1.NewTime(t0.Add(time.Hour))
)

func toolRule(tools []string, skills []string, expires *metav1.Time, peers ...mtlsv1alpha1.AgentPeer) mtlsv1alpha1.IngressRule {
	r := mtlsv1alpha1.IngressRule{From: peers, ExpiresAt: expires}
	if tools != nil || skills != nil {
		r.Protocols = &mtlsv1alpha1.ProtocolRules{}
		if tools != nil {
			r.Protocols.MCP = &mtlsv1alpha1.MCPRule{Tools: tools}
		}
		if skills != nil {
			r.Protocols.A2A = &mtlsv1alpha1.A2ARule{Skills: skills}
		}
	}
	return r
}

func resolveAt(t *testing.T, now time.Time, policies ...*mtlsv1alpha1.AgentTrustPolicy) *Effective {
	t.Helper()
	var compiled []*Compiled
	for _, p := range policies {
		c := Compile(p)
		if len(c.Errors) > 0 {
			t.Fatalf("compile %s: %v", p.Name, c.Errors)
		}
		compiled = append(compiled, c)
	}
	eff, _ := Resolve(Input{TrustDomain: td, Default: AllowAuthenticated, Identity: testWorld.identities[1], Policies: compiled, World: testWorld, Now: now})
	return eff
}

func TestResolveGrants(t *testing.T) {
	workerSel := mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"role": "worker"}}
	planner := mtlsv1alpha1.AgentPeer{IdentitySelector: sel("role", "planner")}
	research := mtlsv1alpha1.AgentPeer{NamespaceSelector: sel("team", "research")}
	type want struct {
		version    string
		whole      []string
		grants     string // JSON of the grants
		nextExpiry time.Time
	}
	cases := map[string]struct {
		rules []mtlsv1alpha1.IngressRule
		now   time.Time
		want  want
	}{
		"a rule without protocols or expiry keeps v1 and its whole-peer meaning": {
			rules: []mtlsv1alpha1.IngressRule{toolRule(nil, nil, nil, planner)}, now: t0,
			want: want{SchemaVersion, []string{plannerID}, `null`, time.Time{}},
		},
		"MCP tools per peer": {
			rules: []mtlsv1alpha1.IngressRule{toolRule([]string{"search", "read_*", "search"}, nil, nil, planner)}, now: t0,
			want: want{SchemaVersionV2, []string{}, `[{"policy":"p","rule":"ingress[0]","allowAll":false,"spiffeIDs":["` + plannerID + `"],"prefixes":[],"protocols":{"mcp":{"tools":["read_*","search"]}}}]`, time.Time{}},
		},
		"A2A skills for a namespace, and whole-peer rules beside": {
			rules: []mtlsv1alpha1.IngressRule{toolRule(nil, []string{"summarize"}, nil, research), toolRule(nil, nil, nil, planner)}, now: t0,
			want: want{SchemaVersionV2, []string{plannerID}, `[{"policy":"p","rule":"ingress[0]","allowAll":false,"spiffeIDs":[],"prefixes":["spiffe://cluster.local/ns/research/"],"protocols":{"a2a":{"skills":["summarize"]}}}]`, time.Time{}},
		},
		"an expiring whole-peer rule before its expiry": {
			rules: []mtlsv1alpha1.IngressRule{toolRule(nil, nil, nil, planner), toolRule([]string{"*"}, nil, &expiry, research)}, now: t0,
			want: want{SchemaVersionV2, []string{plannerID}, `[{"policy":"p","rule":"ingress[1]","allowAll":false,"spiffeIDs":[],"prefixes":["spiffe://cluster.local/ns/research/"],"expiresAt":"2026-12-04T19:00:00Z","protocols":{"mcp":{"tools":["*"]}}}]`, expiry.Time},
		},
		"one second before expiry": {
			rules: []mtlsv1alpha1.IngressRule{toolRule(nil, nil, &expiry)}, now: expiry.Add(-time.Second),
			want: want{SchemaVersionV2, []string{}, `[{"policy":"p","rule":"ingress[0]","allowAll":true,"spiffeIDs":[],"prefixes":[],"expiresAt":"2026-12-04T19:00:00Z"}]`, expiry.Time},
		},
		"at expiry the rule is gone and the file is v1 again": {
			rules: []mtlsv1alpha1.IngressRule{toolRule([]string{"search"}, nil, &expiry, planner)}, now: expiry.Time,
			want: want{SchemaVersion, []string{}, `null`, time.Time{}},
		},
		"after expiry": {
			rules: []mtlsv1alpha1.IngressRule{toolRule([]string{"search"}, nil, &expiry, planner)}, now: expiry.Add(time.Hour),
			want: want{SchemaVersion, []string{}, `null`, time.Time{}},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			eff := resolveAt(t, tc.now, pol("p", mtlsv1alpha1.AgentTrustPolicySpec{AgentSelector: workerSel, Ingress: tc.rules}))
			if eff.Version != tc.want.version {
				t.Errorf("version %s, want %s", eff.Version, tc.want.version)
			}
			if strings.Join(eff.Ingress.SPIFFEIDs, ",") != strings.Join(tc.want.whole, ",") || eff.Ingress.AllowAll {
				t.Errorf("whole-peer allows %v (allowAll %v), want %v", eff.Ingress.SPIFFEIDs, eff.Ingress.AllowAll, tc.want.whole)
			}
			g, _ := json.Marshal(eff.Ingress.Grants)
			if string(g) != tc.want.grants {
				t.Errorf("grants\n got %s\nwant %s", g, tc.want.grants)
			}
			if !eff.NextExpiry.Equal(tc.want.nextExpiry) {
				t.Errorf("next expiry %v, want %v", eff.NextExpiry, tc.want.nextExpiry)
			}
		})
	}
}

// TestNextExpiryIsTheEarliest: two policies with expiring rules requeue at
// the earlier expiry, and then at the later one.
func TestNextExpiryIsTheEarliest(t *testing.T) {
	later := metav1.NewTime(expiry.Add(30 * time.Minute))
	a := pol("a", mtlsv1alpha1.AgentTrustPolicySpec{Ingress: []mtlsv1alpha1.IngressRule{toolRule([]string{"search"}, nil, &later)}})
	b := pol("b", mtlsv1alpha1.AgentTrustPolicySpec{Ingress: []mtlsv1alpha1.IngressRule{toolRule([]string{"delete_*"}, nil, &expiry)}})
	for _, step := range []struct {
		now    time.Time
		next   time.Time
		grants int
	}{{t0, expiry.Time, 2}, {expiry.Time, later.Time, 1}, {later.Time, time.Time{}, 0}} {
		eff := resolveAt(t, step.now, a, b)
		if !eff.NextExpiry.Equal(step.next) || len(eff.Ingress.Grants) != step.grants {
			t.Errorf("at %v: next expiry %v with %d grants, want %v with %d", step.now, eff.NextExpiry, len(eff.Ingress.Grants), step.next, step.grants)
		}
	}
}

func TestCompileProtocols(t *testing.T) {
	cases := map[string]struct {
		rule      mtlsv1alpha1.IngressRule
		errs      []string
		tools     []string
		skills    []string
		protocols bool
	}{
		"valid": {rule: toolRule([]string{"search", "read_*", "*"}, []string{"summarize"}, nil),
			tools: []string{"*", "read_*", "search"}, skills: []string{"summarize"}, protocols: true},
		"a star inside a name is dropped, which narrows": {rule: toolRule([]string{"se*rch", "search"}, nil, nil),
			errs: []string{"spec.ingress[0].protocols.mcp.tools[0]"}, tools: []string{"search"}, protocols: true},
		"no valid tool allows no tool, never every tool": {rule: toolRule([]string{"bad name"}, nil, nil),
			errs: []string{"spec.ingress[0].protocols.mcp.tools[0]"}, tools: []string{}, protocols: true},
		"empty protocols allow nothing": {rule: mtlsv1alpha1.IngressRule{Protocols: &mtlsv1alpha1.ProtocolRules{}},
			errs: []string{"spec.ingress[0].protocols"}, protocols: true},
		"an empty tool list": {rule: toolRule([]string{}, nil, nil),
			errs: []string{"spec.ingress[0].protocols.mcp.tools"}, tools: []string{}, protocols: true},
		"too long": {rule: toolRule([]string{strings.Repeat("a", 129)}, nil, nil),
			errs: []string{"spec.ingress[0].protocols.mcp.tools[0]"}, tools: []string{}, protocols: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := Compile(pol("p", mtlsv1alpha1.AgentTrustPolicySpec{Ingress: []mtlsv1alpha1.IngressRule{tc.rule}}))
			if len(c.Errors) != len(tc.errs) {
				t.Fatalf("errors %v, want %v", c.Errors, tc.errs)
			}
			for _, e := range tc.errs {
				if !strings.Contains(c.ErrorMessage(), e) {
					t.Errorf("%q does not name %s", c.ErrorMessage(), e)
				}
			}
			r := c.Ingress.Rules[0]
			if (r.Protocols != nil) != tc.protocols || !r.Grant() {
				t.Fatalf("protocols %+v", r.Protocols)
			}
			if strings.Join(r.Protocols.MCPTools, ",") != strings.Join(tc.tools, ",") || (r.Protocols.MCPTools == nil) != (tc.tools == nil) {
				t.Errorf("tools %#v, want %#v", r.Protocols.MCPTools, tc.tools)
			}
			if strings.Join(r.Protocols.A2ASkills, ",") != strings.Join(tc.skills, ",") {
				t.Errorf("skills %v, want %v", r.Protocols.A2ASkills, tc.skills)
			}
		})
	}
}

// TestGrantsRoundTrip: a v2 policy.json reads back into Effective whole, as
// the trust controller does when it keeps a frozen policy.
func TestGrantsRoundTrip(t *testing.T) {
	eff := resolveAt(t, t0, pol("p", mtlsv1alpha1.AgentTrustPolicySpec{Ingress: []mtlsv1alpha1.IngressRule{
		toolRule([]string{"search"}, []string{"summarize"}, &expiry, mtlsv1alpha1.AgentPeer{IdentitySelector: sel("role", "planner")}),
	}}))
	out, err := Render(eff, nil)
	if err != nil {
		t.Fatal(err)
	}
	var back Effective
	if err := json.Unmarshal(out.PolicyJSON, &back); err != nil {
		t.Fatal(err)
	}
	again, err := Render(&back, nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(again.PolicyJSON) != string(out.PolicyJSON) || back.Version != SchemaVersionV2 {
		t.Errorf("round trip:\n%s\n%s", out.PolicyJSON, again.PolicyJSON)
	}
}
