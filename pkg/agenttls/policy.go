package agenttls

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// PolicySchemaVersion is policy.json version 1: whole-peer allow lists.
const PolicySchemaVersion = "agentmesh.dev/policy/v1"

// PolicySchemaVersionV2 is policy.json version 2: version 1 plus grants,
// rules that restrict what their peers may do (MCP tools, A2A skills) or
// that expire. The operator writes it only for identities whose policies
// have such rules. This package reads both.
const PolicySchemaVersionV2 = "agentmesh.dev/policy/v2"

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
	// Version is PolicySchemaVersion or PolicySchemaVersionV2.
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
	// Grants (version 2 only) allow more peers, each for what its protocols
	// list and until its ExpiresAt. A peer that AllowAll, SPIFFEIDs or
	// Prefixes allows may do everything, forever.
	Grants []Grant `json:"grants,omitempty"`
}

// Grant is one ingress rule of an AgentTrustPolicy that restricts what its
// peers may do or that expires.
type Grant struct {
	// Policy and Rule name the rule: its AgentTrustPolicy and its place in
	// it ("ingress[0]").
	Policy string `json:"policy"`
	Rule   string `json:"rule"`
	// AllowAll, SPIFFEIDs and Prefixes are the peers of the grant, matched
	// as in Rules.
	AllowAll  bool     `json:"allowAll"`
	SPIFFEIDs []string `json:"spiffeIDs"`
	Prefixes  []string `json:"prefixes"`
	// ExpiresAt (RFC 3339) is when the grant stops allowing anything; empty:
	// never. The SDK checks it on every decision, so a policy.json that is
	// not updated in time cannot extend a grant.
	ExpiresAt string `json:"expiresAt,omitempty"`
	// Protocols lists what the peers may do; nil allows everything.
	Protocols *GrantProtocols `json:"protocols,omitempty"`

	expires time.Time
}

// GrantProtocols is what a grant allows per protocol; a nil protocol
// allows nothing of it.
type GrantProtocols struct {
	// MCP lists the MCP tools the peers may call.
	MCP *MCPGrant `json:"mcp,omitempty"`
	// A2A lists the A2A skills the peers may use.
	A2A *A2AGrant `json:"a2a,omitempty"`
}

// MCPGrant lists MCP tool names and patterns ending in "*".
type MCPGrant struct {
	Tools []string `json:"tools"`
}

// A2AGrant lists A2A skill IDs and patterns ending in "*".
type A2AGrant struct {
	Skills []string `json:"skills"`
}

// Name is "<policy> <rule>", e.g. "worker-tools ingress[0]".
func (g *Grant) Name() string { return g.Policy + " " + g.Rule }

// Expired reports whether the grant has expired at now.
func (g *Grant) Expired(now time.Time) bool { return !g.expires.IsZero() && !now.Before(g.expires) }

// ExpiryTime is the parsed ExpiresAt; zero when the grant does not expire.
func (g *Grant) ExpiryTime() time.Time { return g.expires }

func (g *Grant) matches(id string) bool { return matchPeer(g.AllowAll, g.SPIFFEIDs, g.Prefixes, id) }

var (
	toolPattern  = regexp.MustCompile(`^(\*|[A-Za-z0-9_./-]+\*?)$`)
	skillPattern = regexp.MustCompile(`^(\*|[A-Za-z0-9_.:/-]+\*?)$`)
)

// matchName reports whether a tool or skill name matches one of patterns:
// exactly, or by the prefix of a pattern ending in "*".
func matchName(patterns []string, name string) bool {
	for _, p := range patterns {
		if prefix, ok := strings.CutSuffix(p, "*"); ok {
			if strings.HasPrefix(name, prefix) {
				return true
			}
		} else if p == name {
			return true
		}
	}
	return false
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
	if p.Version != PolicySchemaVersion && p.Version != PolicySchemaVersionV2 {
		return fmt.Errorf("version %q is not supported, want %q or %q", p.Version, PolicySchemaVersion, PolicySchemaVersionV2)
	}
	if p.Version == PolicySchemaVersion && (len(p.Ingress.Grants) > 0 || len(p.Egress.Grants) > 0) {
		return fmt.Errorf("grants need version %q", PolicySchemaVersionV2)
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
	if err := validatePeers(r.SPIFFEIDs, r.Prefixes); err != nil {
		return err
	}
	for i := range r.Grants {
		if err := r.Grants[i].validate(); err != nil {
			return fmt.Errorf("grants[%d]: %w", i, err)
		}
	}
	return nil
}

func (g *Grant) validate() error {
	if g.Policy == "" || g.Rule == "" {
		return fmt.Errorf("policy and rule must name the rule")
	}
	if err := validatePeers(g.SPIFFEIDs, g.Prefixes); err != nil {
		return err
	}
	if g.ExpiresAt != "" {
		t, err := time.Parse(time.RFC3339, g.ExpiresAt)
		if err != nil {
			return fmt.Errorf("expiresAt: %w", err)
		}
		g.expires = t
	}
	if g.Protocols == nil {
		return nil
	}
	if m := g.Protocols.MCP; m != nil {
		for _, t := range m.Tools {
			if len(t) > 128 || !toolPattern.MatchString(t) {
				return fmt.Errorf("protocols.mcp.tools: %q is not a tool name or pattern", t)
			}
		}
	}
	if a := g.Protocols.A2A; a != nil {
		for _, s := range a.Skills {
			if len(s) > 128 || !skillPattern.MatchString(s) {
				return fmt.Errorf("protocols.a2a.skills: %q is not a skill ID or pattern", s)
			}
		}
	}
	return nil
}

func validatePeers(ids, prefixes []string) error {
	for _, s := range ids {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return fmt.Errorf("spiffeIDs: %q: %w", s, err)
		}
		if id.String() != s {
			return fmt.Errorf("spiffeIDs: %q is not in canonical form", s)
		}
	}
	for _, s := range prefixes {
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

// Allows reports whether the rules allow a peer to connect now, whatever
// the mode: the whole-peer lists or a grant that has not expired.
func (r *Rules) Allows(peer spiffeid.ID) bool { return r.AllowsAt(peer, time.Now()) }

// AllowsAt is Allows at the instant now.
func (r *Rules) AllowsAt(peer spiffeid.ID, now time.Time) bool {
	if peer.IsZero() {
		return false
	}
	id := peer.String()
	if r.allowsWhole(id) {
		return true
	}
	for i := range r.Grants {
		if g := &r.Grants[i]; g.matches(id) && !g.Expired(now) {
			return true
		}
	}
	return false
}

func (r *Rules) allowsWhole(id string) bool {
	return matchPeer(r.AllowAll, r.SPIFFEIDs, r.Prefixes, id)
}

func matchPeer(all bool, ids, prefixes []string, id string) bool {
	if all || slices.Contains(ids, id) {
		return true
	}
	for _, p := range prefixes {
		if strings.HasPrefix(id, p) {
			return true
		}
	}
	return false
}

// Check returns nil when the rules of direction d allow peer now, and a
// *PolicyError otherwise. It ignores the mode: in Audit mode the TLS
// configurations of this package log the error and let the peer through.
func (p *Policy) Check(d Direction, peer spiffeid.ID) error { return p.CheckAt(d, peer, time.Now()) }

// CheckAt is Check at the instant now.
func (p *Policy) CheckAt(d Direction, peer spiffeid.ID, now time.Time) error {
	r := p.Rules(d)
	if r == nil {
		return fmt.Errorf("agentmesh: unknown direction %q", d)
	}
	if r.AllowsAt(peer, now) {
		return nil
	}
	local, _ := spiffeid.FromString(p.SPIFFEID)
	e := &PolicyError{
		Direction: d,
		Local:     local,
		Peer:      peer,
		Policies:  slices.Clone(r.Policies),
		Default:   r.Default,
	}
	for i := range r.Grants {
		if g := &r.Grants[i]; g.matches(peer.String()) {
			e.Expired = append(e.Expired, g.Name()+" expired at "+g.ExpiresAt)
		}
	}
	return e
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
	if r.Grants != nil {
		grants := make([]Grant, len(r.Grants))
		for i, g := range r.Grants {
			g.SPIFFEIDs = slices.Clone(g.SPIFFEIDs)
			g.Prefixes = slices.Clone(g.Prefixes)
			if g.Protocols != nil {
				p := &GrantProtocols{}
				if g.Protocols.MCP != nil {
					p.MCP = &MCPGrant{Tools: slices.Clone(g.Protocols.MCP.Tools)}
				}
				if g.Protocols.A2A != nil {
					p.A2A = &A2AGrant{Skills: slices.Clone(g.Protocols.A2A.Skills)}
				}
				g.Protocols = p
			}
			grants[i] = g
		}
		r.Grants = grants
	}
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
	// Expired names the grants that matched the peer but have expired.
	Expired []string
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
	if len(e.Expired) > 0 {
		rule += "; " + strings.Join(e.Expired, ", ")
	}
	return fmt.Sprintf("agentmesh: %s policy of %s does not allow %s (%s)", e.Direction, e.Local, e.Peer, rule)
}
