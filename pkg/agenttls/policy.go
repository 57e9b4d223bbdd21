package agenttls

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// PolicySchemaVersion is the only policy.json version this package reads.
const PolicySchemaVersion = "agentmesh.dev/policy/v1"

// Mode says what a direction does with a peer that its rules do not allow.
type Mode string

const (
	// ModeEnforce refuses peers that the rules do not allow.
	ModeEnforce Mode = "Enforce"
	// ModeAudit lets peers that the rules do not allow through and logs them.
	ModeAudit Mode = "Audit"
)

// Direction is the side of a connection a rule governs.
type Direction string

const (
	// Ingress governs who may connect to the agent (its servers).
	Ingress Direction = "ingress"
	// Egress governs whom the agent may connect to (its clients).
	Egress Direction = "egress"
)

// Policy is the content of policy.json: the effective policy of one
// identity, as the operator resolved it from every AgentTrustPolicy that
// selects the identity. Values returned by this package are copies; changing
// them changes nothing that a Source enforces.
type Policy struct {
	// Version is PolicySchemaVersion.
	Version string `json:"version"`
	// SPIFFEID is the identity's own SPIFFE ID.
	SPIFFEID string `json:"spiffeID"`
	// TrustDomain is the identity's own trust domain.
	TrustDomain string `json:"trustDomain"`
	// Ingress says who may connect to the identity.
	Ingress Rules `json:"ingress"`
	// Egress says whom the identity may connect to.
	Egress Rules `json:"egress"`
	// TrustDomains maps each trust domain of bundle.pem to the hex SHA-256
	// fingerprints of its CA certificates' DER. A CA of bundle.pem that is
	// not listed here is trusted for nothing.
	TrustDomains map[string][]string `json:"trustDomains"`
}

// Rules is the allow list of one direction. A peer is allowed when AllowAll
// is true, its SPIFFE ID is one of SPIFFEIDs, or it starts with one of
// Prefixes; in every case it must first verify against the CAs of its own
// trust domain.
type Rules struct {
	// Mode is ModeEnforce or ModeAudit.
	Mode Mode `json:"mode"`
	// AllowAll allows every peer that verifies.
	AllowAll bool `json:"allowAll"`
	// SPIFFEIDs are the exact SPIFFE IDs allowed.
	SPIFFEIDs []string `json:"spiffeIDs"`
	// Prefixes are the SPIFFE ID prefixes allowed; each ends in "/", so that
	// it matches whole path segments only.
	Prefixes []string `json:"prefixes"`
	// Policies names the AgentTrustPolicies that govern the direction; empty
	// when the default posture applies.
	Policies []string `json:"policies"`
	// Default is the cluster's default posture ("allow-authenticated" or
	// "deny") when no policy governs the direction.
	Default string `json:"default,omitempty"`
}

// maxPolicySize caps policy.json, as the operator caps a trust ConfigMap.
const maxPolicySize = 512 << 10

// ParsePolicy parses and validates policy.json. It refuses an unknown
// version or mode, SPIFFE IDs and trust domains that go-spiffe does not
// accept, prefixes that do not end in "/", and fingerprints that are not
// hex SHA-256, so that a malformed file can never widen what is allowed.
func ParsePolicy(b []byte) (*Policy, error) {
	if len(b) > maxPolicySize {
		return nil, fmt.Errorf("policy.json is %d bytes, over the limit of %d", len(b), maxPolicySize)
	}
	var p Policy
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("policy.json: %w", err)
	}
	if err := p.validate(); err != nil {
		return nil, fmt.Errorf("policy.json: %w", err)
	}
	return &p, nil
}

func (p *Policy) validate() error {
	if p.Version != PolicySchemaVersion {
		return fmt.Errorf("version %q is not supported, want %q", p.Version, PolicySchemaVersion)
	}
	id, err := spiffeid.FromString(p.SPIFFEID)
	if err != nil {
		return fmt.Errorf("spiffeID: %w", err)
	}
	if id.TrustDomain().Name() != p.TrustDomain {
		return fmt.Errorf("trustDomain %q is not the trust domain of spiffeID %s", p.TrustDomain, p.SPIFFEID)
	}
	if err := p.Ingress.validate(); err != nil {
		return fmt.Errorf("ingress: %w", err)
	}
	if err := p.Egress.validate(); err != nil {
		return fmt.Errorf("egress: %w", err)
	}
	for name, fps := range p.TrustDomains {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil || td.Name() != name {
			return fmt.Errorf("trustDomains: %q is not a trust domain name", name)
		}
		for _, fp := range fps {
			if b, err := hex.DecodeString(fp); err != nil || len(b) != 32 || strings.ToLower(fp) != fp {
				return fmt.Errorf("trustDomains[%s]: %q is not a lower-case hex SHA-256 fingerprint", name, fp)
			}
		}
	}
	return nil
}

func (r *Rules) validate() error {
	if r.Mode != ModeEnforce && r.Mode != ModeAudit {
		return fmt.Errorf("mode %q is neither %s nor %s", r.Mode, ModeEnforce, ModeAudit)
	}
	for _, s := range r.SPIFFEIDs {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return fmt.Errorf("spiffeIDs: %q: %w", s, err)
		}
		if id.String() != s {
			return fmt.Errorf("spiffeIDs: %q is not in canonical form", s)
		}
	}
	for _, s := range r.Prefixes {
		if !strings.HasSuffix(s, "/") {
			return fmt.Errorf("prefixes: %q does not end in \"/\"", s)
		}
		id, err := spiffeid.FromString(strings.TrimSuffix(s, "/"))
		if err != nil {
			return fmt.Errorf("prefixes: %q: %w", s, err)
		}
		if id.String()+"/" != s {
			return fmt.Errorf("prefixes: %q is not in canonical form", s)
		}
	}
	return nil
}

// Rules returns the rules of a direction, or nil for an unknown direction.
func (p *Policy) Rules(d Direction) *Rules {
	switch d {
	case Ingress:
		return &p.Ingress
	case Egress:
		return &p.Egress
	}
	return nil
}

// Allows reports whether the rules allow a peer, whatever the mode.
func (r *Rules) Allows(peer spiffeid.ID) bool {
	_, ok := r.Match(peer)
	return ok
}

// Check returns nil when the rules of direction d allow peer, and a
// *PolicyError otherwise. It ignores the mode: in Audit mode the TLS
// configurations of this package log the error and let the peer through.
func (p *Policy) Check(d Direction, peer spiffeid.ID) error {
	r := p.Rules(d)
	if r == nil {
		return fmt.Errorf("agentmesh: unknown direction %q", d)
	}
	if r.Allows(peer) {
		return nil
	}
	local, _ := spiffeid.FromString(p.SPIFFEID)
	return &PolicyError{
		Direction: d,
		Local:     local,
		Peer:      peer,
		Policies:  slices.Clone(r.Policies),
		Default:   r.Default,
	}
}

func (p *Policy) clone() *Policy {
	c := *p
	c.Ingress = p.Ingress.clone()
	c.Egress = p.Egress.clone()
	c.TrustDomains = make(map[string][]string, len(p.TrustDomains))
	for td, fps := range p.TrustDomains {
		c.TrustDomains[td] = slices.Clone(fps)
	}
	return &c
}

func (r Rules) clone() Rules {
	r.SPIFFEIDs = slices.Clone(r.SPIFFEIDs)
	r.Prefixes = slices.Clone(r.Prefixes)
	r.Policies = slices.Clone(r.Policies)
	return r
}

// PolicyError says that policy.json does not allow a peer. It names both
// SPIFFE IDs, the direction, and the policies (or the default posture) that
// decided.
type PolicyError struct {
	// Direction is Ingress (the agent is the server) or Egress (the agent
	// is the client).
	Direction Direction
	// Local is the agent's own SPIFFE ID.
	Local spiffeid.ID
	// Peer is the refused peer's SPIFFE ID.
	Peer spiffeid.ID
	// Policies are the AgentTrustPolicies that govern the direction.
	Policies []string
	// Default is the default posture when no policy governs the direction.
	Default string
}

// Error implements error, e.g. "agentmesh: ingress policy of
// spiffe://cluster.local/ns/agents/agent/worker does not allow
// spiffe://cluster.local/ns/agents/agent/outsider (policies: worker-ingress)".
func (e *PolicyError) Error() string {
	rule := "policies: " + strings.Join(e.Policies, ", ")
	switch {
	case len(e.Policies) == 0 && e.Default != "":
		rule = "default posture: " + e.Default
	case len(e.Policies) == 0:
		rule = "no policy"
	}
	return fmt.Sprintf("agentmesh: %s policy of %s does not allow %s (%s)", e.Direction, e.Local, e.Peer, rule)
}
