package agenttls

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestDecide(t *testing.T) {
	local := "spiffe://cluster.local/ns/agents/agent/worker"
	planner := spiffeid.RequireFromString("spiffe://cluster.local/ns/agents/agent/planner")
	research := spiffeid.RequireFromString("spiffe://cluster.local/ns/research/agent/r1")
	evil := spiffeid.RequireFromString("spiffe://cluster.local/ns/agents-evil/agent/x")
	rules := Rules{Mode: ModeEnforce, SPIFFEIDs: []string{planner.String()}, Prefixes: []string{"spiffe://cluster.local/ns/research/"}, Policies: []string{"p1"}}
	tests := map[string]struct {
		rules    Rules
		peer     spiffeid.ID
		allowed  bool
		admitted bool
		match    *Match
		reason   string
	}{
		"exact ID":          {rules: rules, peer: planner, allowed: true, admitted: true, match: &Match{Kind: MatchSPIFFEID, Value: planner.String()}},
		"prefix":            {rules: rules, peer: research, allowed: true, admitted: true, match: &Match{Kind: MatchPrefix, Value: "spiffe://cluster.local/ns/research/"}},
		"prefix is by path": {rules: rules, peer: evil, reason: "agentmesh: ingress policy of " + local + " does not allow " + evil.String() + " (policies: p1)"},
		"audit admits":      {rules: func() Rules { r := rules; r.Mode = ModeAudit; return r }(), peer: evil, admitted: true, reason: "agentmesh: ingress policy of " + local + " does not allow " + evil.String() + " (policies: p1)"},
		"allowAll":          {rules: Rules{Mode: ModeEnforce, AllowAll: true}, peer: evil, allowed: true, admitted: true, match: &Match{Kind: MatchAllowAll}},
		"default deny":      {rules: Rules{Mode: ModeEnforce, Default: "deny"}, peer: planner, reason: "agentmesh: ingress policy of " + local + " does not allow " + planner.String() + " (default posture: deny)"},
		"zero peer":         {rules: Rules{Mode: ModeEnforce, AllowAll: true}, reason: "agentmesh: ingress policy of " + local + " does not allow  (no policy)"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := &Policy{SPIFFEID: local, Ingress: tc.rules}
			d := p.Decide(Ingress, tc.peer)
			if d.Allowed != tc.allowed || d.Admitted != tc.admitted || d.Reason != tc.reason {
				t.Errorf("Decide = %+v, want allowed %v admitted %v reason %q", d, tc.allowed, tc.admitted, tc.reason)
			}
			if (d.Match == nil) != (tc.match == nil) || (d.Match != nil && *d.Match != *tc.match) {
				t.Errorf("match = %+v, want %+v", d.Match, tc.match)
			}
			// Check, which the handshake returns, agrees with Decide.
			if err := p.Check(Ingress, tc.peer); (err == nil) != tc.allowed || (err != nil && err.Error() != tc.reason) {
				t.Errorf("Check = %v, Decide = %+v", err, d)
			}
		})
	}
}

func TestDecideUnknownDirection(t *testing.T) {
	p := &Policy{SPIFFEID: "spiffe://cluster.local/ns/a/agent/b", Ingress: Rules{AllowAll: true}}
	if d := p.Decide("sideways", spiffeid.RequireFromString("spiffe://cluster.local/x")); d.Allowed || d.Admitted {
		t.Errorf("Decide = %+v", d)
	}
}
