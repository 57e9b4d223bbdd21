// Package explain says whether one agent may call another, and why, from
// both identities' policy.json. It does not evaluate policies itself: each
// direction is decided by agenttls.Policy.Decide, the function the SDK
// applies on every handshake, after the same trust check the SDK makes (a
// peer verifies only against CAs that policy.json assigns to the peer's
// trust domain).
package explain

import (
	"fmt"
	"io"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentmesh/agentmesh/internal/cli/output"
	"github.com/agentmesh/agentmesh/internal/policy"
	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

// Side is one end of the call: an identity of the cluster with its
// policy.json, or a bare SPIFFE ID (another trust domain) whose policy is
// not known here.
type Side struct {
	// Identity is namespace/name, empty for a bare SPIFFE ID.
	Identity string
	ID       spiffeid.ID
	// Policy is the identity's policy.json; nil when not known.
	Policy *agenttls.Policy
	// Source, when set, is the identity with its namespace's
	// AgentTrustPolicies as they are now, to name the rules behind an
	// entry that allowed a peer (Attribute).
	Source *policy.Input
}

// Step is one direction's evaluation.
type Step struct {
	// Evaluated is false when the deciding side's policy is not known.
	Evaluated bool `json:"evaluated"`
	// Trusted says the deciding side trusts the peer's trust domain (has
	// CAs for it); a peer it does not trust fails verification, in any mode.
	Trusted bool `json:"trusted"`
	// Decision is agenttls.Policy.Decide's verdict (when Trusted).
	Decision *agenttls.Decision `json:"decision,omitempty"`
	// Sources are the policy rules behind the entry that allowed the peer
	// (when the policies could be read).
	Sources []Source `json:"sources,omitempty"`
	// Passes says this direction lets the connection through.
	Passes bool `json:"passes"`
	// Summary is one line for people.
	Summary string `json:"summary"`
}

// Verdict is the answer to "may FROM call TO?".
type Verdict struct {
	From         string `json:"from"`
	To           string `json:"to"`
	FromIdentity string `json:"fromIdentity,omitempty"`
	ToIdentity   string `json:"toIdentity,omitempty"`
	// Allowed says the handshake succeeds: every evaluated direction passes
	// (a side whose policy is unknown is assumed to let it through, and a
	// note says so).
	Allowed bool `json:"allowed"`
	// Audited says it succeeds only because a direction is in Audit mode.
	Audited bool `json:"audited"`
	// Egress is FROM's egress policy about TO; Ingress TO's ingress about FROM.
	Egress  Step     `json:"egress"`
	Ingress Step     `json:"ingress"`
	Notes   []string `json:"notes,omitempty"`
}

// Evaluate decides FROM -> TO as the SDK would on a handshake: FROM's client
// applies its egress policy to TO, TO's server its ingress policy to FROM.
func Evaluate(from, to Side) *Verdict {
	v := &Verdict{From: from.ID.String(), To: to.ID.String(), FromIdentity: from.Identity, ToIdentity: to.Identity}
	v.Egress = step(from, to.ID, agenttls.Egress)
	v.Ingress = step(to, from.ID, agenttls.Ingress)
	v.Allowed = v.Egress.Passes && v.Ingress.Passes
	for _, s := range []Step{v.Egress, v.Ingress} {
		if s.Decision != nil && s.Passes && !s.Decision.Allowed {
			v.Audited = true
		}
	}
	if !v.Egress.Evaluated {
		v.Notes = append(v.Notes, fmt.Sprintf("%s is not an identity of this cluster: its own egress rules also decide", v.From))
	}
	if !v.Ingress.Evaluated {
		v.Notes = append(v.Notes, fmt.Sprintf("%s is not an identity of this cluster: its own ingress rules also decide", v.To))
	}
	return v
}

func step(local Side, peer spiffeid.ID, d agenttls.Direction) Step {
	if local.Policy == nil {
		return Step{Passes: true, Summary: "not evaluated: the policy of " + local.ID.String() + " is not known here"}
	}
	s := Step{Evaluated: true, Trusted: local.Policy.Trusts(peer.TrustDomain())}
	if !s.Trusted {
		s.Summary = fmt.Sprintf("refused: %s trusts no CA of trust domain %s, so %s fails verification (whatever the mode)",
			local.ID, peer.TrustDomain().Name(), peer)
		return s
	}
	dec := local.Policy.Decide(d, peer)
	s.Decision = &dec
	s.Passes = dec.Admitted
	switch {
	case dec.Allowed:
		s.Summary = fmt.Sprintf("allowed by %s (%s mode, %s)", matchText(dec.Match), dec.Mode, governed(dec))
		if local.Source != nil {
			s.Sources = Attribute(*local.Source, d, dec.Match)
			s.Summary += sourcesText(s.Sources)
		}
	case dec.Admitted:
		s.Summary = fmt.Sprintf("not allowed, let through in Audit mode and logged (%s)", governed(dec))
	default:
		s.Summary = fmt.Sprintf("refused in %s mode: no rule allows %s (%s)", dec.Mode, peer, governed(dec))
	}
	return s
}

func matchText(m *agenttls.Match) string {
	switch m.Kind {
	case agenttls.MatchAllowAll:
		return "allowAll"
	case agenttls.MatchSPIFFEID:
		return "spiffeIDs entry " + m.Value
	}
	return "prefix " + m.Value
}

func sourcesText(sources []Source) string {
	if len(sources) == 0 {
		return ""
	}
	parts := make([]string, 0, len(sources))
	for _, src := range sources {
		parts = append(parts, fmt.Sprintf("%s rule %d", src.Policy, src.Rule))
	}
	return "; from " + strings.Join(parts, ", ")
}

func governed(d agenttls.Decision) string {
	if len(d.Policies) == 0 {
		if d.Default != "" {
			return "no policy governs this direction; the default posture " + d.Default + " applies"
		}
		return "no policy governs this direction"
	}
	return "policies: " + strings.Join(d.Policies, ", ")
}

// WriteHuman prints the verdict.
func (v *Verdict) WriteHuman(w io.Writer) error {
	verdict := "REFUSED"
	switch {
	case v.Allowed && v.Audited:
		verdict = "ALLOWED (only because of Audit mode)"
	case v.Allowed:
		verdict = "ALLOWED"
	}
	if _, err := fmt.Fprintf(w, "%s -> %s: %s\n\n", name(v.FromIdentity, v.From), name(v.ToIdentity, v.To), verdict); err != nil {
		return err
	}
	t := &output.Table{Header: []string{"direction", "policy of", "peer", "mode", "result", "why"}}
	add := func(dir, local, peer string, s Step) {
		mode, result := "", "refused"
		if s.Decision != nil {
			mode = string(s.Decision.Mode)
		}
		switch {
		case !s.Evaluated:
			result = "unknown"
		case s.Passes && s.Decision.Allowed:
			result = "allowed"
		case s.Passes:
			result = "audited"
		}
		t.Add(dir, local, peer, mode, result, s.Summary)
	}
	add("egress", v.From, v.To, v.Egress)
	add("ingress", v.To, v.From, v.Ingress)
	if err := t.Write(w); err != nil {
		return err
	}
	for _, n := range v.Notes {
		if _, err := fmt.Fprintf(w, "note: %s\n", n); err != nil {
			return err
		}
	}
	for _, s := range []Step{v.Egress, v.Ingress} {
		if s.Decision != nil && s.Decision.Reason != "" {
			if _, err := fmt.Fprintf(w, "the SDK reports: %s\n", s.Decision.Reason); err != nil {
				return err
			}
		}
	}
	return nil
}

func name(identity, id string) string {
	if identity == "" {
		return id
	}
	return identity
}
