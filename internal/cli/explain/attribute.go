package explain

import (
	"slices"

	"github.com/agentmesh/agentmesh/internal/policy"
	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

// Source is a rule of an AgentTrustPolicy that, alone, allows the peer.
type Source struct {
	Policy string `json:"policy"`
	// Rule is the rule's index in the policy's ingress or egress list.
	Rule int `json:"rule"`
}

// Attribute finds the rules behind the entry m of policy.json that allowed
// a peer in direction d: policy.json holds the union of what the policies
// allow, so each rule of each policy that selects in.Identity is resolved
// on its own, by the operator's own resolution, and those whose output
// holds m are returned. It reads the policies as they are now (in.Policies,
// compiled), which may be newer than the policy.json that was evaluated.
// Grants of policy.json v2 name their rule already and are not attributed
// again.
func Attribute(in policy.Input, d agenttls.Direction, m *agenttls.Match) []Source {
	if m == nil || m.Kind == agenttls.MatchGrant {
		return nil
	}
	var out []Source
	for _, c := range in.Policies {
		if c.Namespace != in.Identity.Namespace || c.AgentSelector == nil || !c.Selects(in.Identity.Labels) {
			continue
		}
		dir := c.Ingress
		if d == agenttls.Egress {
			dir = c.Egress
		}
		if dir == nil {
			continue
		}
		for i, r := range dir.Rules {
			if r.Grant() {
				continue
			}
			one := *c
			only := &policy.Direction{Rules: []policy.Rule{r}}
			one.Ingress, one.Egress = nil, nil
			if d == agenttls.Egress {
				one.Egress = only
			} else {
				one.Ingress = only
			}
			single := in
			single.Policies = []*policy.Compiled{&one}
			eff, _ := policy.Resolve(single)
			a := eff.Ingress
			if d == agenttls.Egress {
				a = eff.Egress
			}
			if holds(a, m) {
				out = append(out, Source{Policy: c.Name, Rule: i})
			}
		}
	}
	return out
}

func holds(a policy.Allowed, m *agenttls.Match) bool {
	switch m.Kind {
	case agenttls.MatchAllowAll:
		return a.AllowAll
	case agenttls.MatchSPIFFEID:
		return slices.Contains(a.SPIFFEIDs, m.Value)
	case agenttls.MatchPrefix:
		return slices.Contains(a.Prefixes, m.Value)
	}
	return false
}
