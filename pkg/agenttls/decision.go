package agenttls

import (
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MatchKind names the entry of a direction's rules that allowed a peer.
type MatchKind string

const (
	// MatchAllowAll says the direction allows every peer that verifies.
	MatchAllowAll MatchKind = "allowAll"
	// MatchSPIFFEID says the peer's SPIFFE ID is listed exactly.
	MatchSPIFFEID MatchKind = "spiffeID"
	// MatchPrefix says the peer's SPIFFE ID starts with a listed prefix.
	MatchPrefix MatchKind = "prefix"
	// MatchGrant says a grant of policy.json v2 that has not expired
	// matches the peer; Value names it ("worker-tools ingress[0]").
	MatchGrant MatchKind = "grant"
)

// Match is the entry of the rules that allowed a peer: its kind and, for
// an exact ID or a prefix, the entry itself.
type Match struct {
	Kind  MatchKind `json:"kind"`
	Value string    `json:"value,omitempty"`
}

// Decision is what policy.json decides for one peer in one direction,
// before the mode is applied and after it. It is the one evaluation the
// SDK's TLS configurations and authorizers apply on every handshake (after
// the peer verified against its trust domain's CAs), exported so that tools
// such as kubectl-agentmesh explain reach the same verdict from the same
// file.
type Decision struct {
	// Direction is Ingress (the local agent serves) or Egress (it calls).
	Direction Direction `json:"direction"`
	// Local is the SPIFFE ID whose policy decided; Peer the other side.
	Local string `json:"local"`
	Peer  string `json:"peer"`
	// Mode is the direction's mode.
	Mode Mode `json:"mode"`
	// Allowed says the rules allow the peer, whatever the mode.
	Allowed bool `json:"allowed"`
	// Admitted says the handshake lets the peer through: it is allowed, or
	// the direction is in Audit mode (which logs the refusal instead).
	Admitted bool `json:"admitted"`
	// Match is the entry that allowed the peer; nil when it is not allowed.
	Match *Match `json:"match,omitempty"`
	// Policies are the AgentTrustPolicies that govern the direction; empty
	// when the default posture applies.
	Policies []string `json:"policies"`
	// Default is the default posture when no policy governs the direction.
	Default string `json:"default,omitempty"`
	// Reason is the refusal as the handshake reports it (a PolicyError's
	// text); empty when the peer is allowed.
	Reason string `json:"reason,omitempty"`
}

// Decide evaluates direction d of the policy for peer, now. An unknown
// direction decides nothing and admits nothing.
func (p *Policy) Decide(d Direction, peer spiffeid.ID) Decision {
	return p.DecideAt(d, peer, time.Now())
}

// DecideAt is Decide at the instant now, which decides whether the grants
// of policy.json v2 have expired.
func (p *Policy) DecideAt(d Direction, peer spiffeid.ID, now time.Time) Decision {
	dec := Decision{Direction: d, Local: p.SPIFFEID, Peer: peer.String()}
	r := p.Rules(d)
	if r == nil {
		dec.Reason = "agentmesh: unknown direction " + string(d)
		return dec
	}
	dec.Mode, dec.Policies, dec.Default = r.Mode, slices.Clone(r.Policies), r.Default
	if m, ok := r.MatchAt(peer, now); ok {
		dec.Allowed, dec.Admitted, dec.Match = true, true, &m
		return dec
	}
	dec.Reason = p.CheckAt(d, peer, now).Error()
	dec.Admitted = r.Mode == ModeAudit
	return dec
}

// MatchAt is Match, and then the first grant that matches peer and has not
// expired at now.
func (r *Rules) MatchAt(peer spiffeid.ID, now time.Time) (Match, bool) {
	if m, ok := r.Match(peer); ok || peer.IsZero() {
		return m, ok
	}
	for i := range r.Grants {
		if g := &r.Grants[i]; g.matches(peer.String()) && !g.Expired(now) {
			return Match{Kind: MatchGrant, Value: g.Name()}, true
		}
	}
	return Match{}, false
}

// Match returns the whole-peer entry of the rules that allows peer, whatever
// the mode: allowAll first, then an exact SPIFFE ID, then the first prefix.
// Grants are MatchAt's.
func (r *Rules) Match(peer spiffeid.ID) (Match, bool) {
	if peer.IsZero() {
		return Match{}, false
	}
	id := peer.String()
	switch {
	case r.AllowAll:
		return Match{Kind: MatchAllowAll}, true
	case slices.Contains(r.SPIFFEIDs, id):
		return Match{Kind: MatchSPIFFEID, Value: id}, true
	}
	for _, p := range r.Prefixes {
		if strings.HasPrefix(id, p) {
			return Match{Kind: MatchPrefix, Value: p}, true
		}
	}
	return Match{}, false
}

// Trusts reports whether the policy assigns at least one CA to trust domain
// td: a peer of td can only verify (and so reach the policy at all) when it
// does.
func (p *Policy) Trusts(td spiffeid.TrustDomain) bool {
	return len(p.TrustDomains[td.Name()]) > 0
}
