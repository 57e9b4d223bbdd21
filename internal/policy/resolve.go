package policy

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/agentmesh/agentmesh/internal/agentid"
)

// SchemaVersion is the version of the policy.json contract that an
// effective policy without grants is written in: byte for byte what
// operators before v2 wrote, so agents with an older SDK keep reading it.
const SchemaVersion = "agentmesh.dev/policy/v1"

// SchemaVersionV2 is the version of a policy.json with grants: rules that
// restrict protocols (MCP tools, A2A skills) or expire. It is written only
// where a policy needs it.
const SchemaVersionV2 = "agentmesh.dev/policy/v2"

// Posture is what a direction allows when no policy governs it.
type Posture string

const (
	// AllowAuthenticated allows every peer of the identity's own trust domain.
	AllowAuthenticated Posture = "allow-authenticated"
	// Deny allows no peer.
	Deny Posture = "deny"
)

// Modes of a resolved direction.
const (
	ModeEnforce = "Enforce"
	ModeAudit   = "Audit"
)

// Identity is an AgentIdentity as resolution sees it.
type Identity struct {
	Namespace string
	Name      string
	Labels    map[string]string
}

// Namespace is a namespace and its labels.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// World is the rest of the cluster that peers may select.
type World interface {
	// Identities lists the identities of a namespace.
	Identities(namespace string) []Identity
	// Namespaces lists every namespace.
	Namespaces() []Namespace
}

// Effective is the effective policy of one identity: the policy.json an
// agent enforces.
type Effective struct {
	// Version is SchemaVersion.
	Version string `json:"version"`
	// SPIFFEID is the identity's own SPIFFE ID.
	SPIFFEID string `json:"spiffeID"`
	// TrustDomain is the identity's own trust domain.
	TrustDomain string `json:"trustDomain"`
	// Ingress says who may connect to the identity; Egress whom it may
	// connect to.
	Ingress Allowed `json:"ingress"`
	Egress  Allowed `json:"egress"`
	// TrustDomains maps each trust domain in bundle.pem to the SHA-256
	// fingerprints (hex) of its CA certificates, so that a peer of one
	// trust domain is verified against that trust domain's CAs only.
	TrustDomains map[string][]string `json:"trustDomains"`

	// NextExpiry is the earliest expiresAt of the grants in the policy, when
	// the policy must be resolved again; zero when no grant expires.
	NextExpiry time.Time `json:"-"`
}

// Allowed is the resolved allow list of one direction. A peer is allowed
// when allowAll is true, its SPIFFE ID equals one of spiffeIDs, or it
// starts with one of prefixes (which end in "/", so they match whole path
// segments). Peers must in any case verify against the bundle of their own
// trust domain.
type Allowed struct {
	// Mode is Enforce (refuse peers that are not allowed) or Audit (allow
	// them and report).
	Mode string `json:"mode"`
	// AllowAll allows every peer that verifies against the trust bundle.
	AllowAll bool `json:"allowAll"`
	// SPIFFEIDs are allowed exact SPIFFE IDs.
	SPIFFEIDs []string `json:"spiffeIDs"`
	// Prefixes are allowed SPIFFE ID prefixes: a trust domain
	// ("spiffe://td/") or a namespace ("spiffe://td/ns/<ns>/").
	Prefixes []string `json:"prefixes"`
	// Policies names the AgentTrustPolicies that govern this direction;
	// empty when the default posture applies.
	Policies []string `json:"policies"`
	// Default is the default posture when no policy governs the direction.
	Default Posture `json:"default,omitempty"`
	// Grants (v2 only) are the rules that restrict what their peers may do
	// or that expire: a peer a grant matches may connect until the grant's
	// expiresAt, and may use what its protocols list. Absent in v1.
	Grants []Grant `json:"grants,omitempty"`
}

// Grant is one ingress rule with protocol restrictions or an expiry.
type Grant struct {
	// Policy and Rule name the rule: the AgentTrustPolicy and the rule's
	// place in it ("ingress[0]").
	Policy string `json:"policy"`
	Rule   string `json:"rule"`
	// AllowAll, SPIFFEIDs and Prefixes are the peers, as in Allowed.
	AllowAll  bool     `json:"allowAll"`
	SPIFFEIDs []string `json:"spiffeIDs"`
	Prefixes  []string `json:"prefixes"`
	// ExpiresAt (RFC 3339, UTC) is when the grant stops; empty: never.
	ExpiresAt string `json:"expiresAt,omitempty"`
	// Protocols lists what the peers may do; nil: everything.
	Protocols *GrantProtocols `json:"protocols,omitempty"`
}

// GrantProtocols is what a grant allows, per protocol; a nil protocol
// allows nothing of it.
type GrantProtocols struct {
	MCP *MCPGrant `json:"mcp,omitempty"`
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

// Allows reports whether the whole-peer allow list lets a peer with this
// SPIFFE ID in (Audit mode aside); grants are not consulted.
func (a *Allowed) Allows(id string) bool {
	return matches(a.AllowAll, a.SPIFFEIDs, a.Prefixes, id)
}

func matches(all bool, ids, prefixes []string, id string) bool {
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

// Input is everything the effective policy of one identity depends on.
type Input struct {
	TrustDomain spiffeid.TrustDomain
	Default     Posture
	Identity    Identity
	// Policies are the compiled policies of the identity's namespace.
	Policies []*Compiled
	World    World
	// Now is the instant of resolution: rules that expire at or before it
	// are left out.
	Now time.Time
}

// Resolve computes the effective policy of one identity. It also returns
// the policies that select the identity (for its trust bundles and status),
// sorted by name.
//
// A policy of the namespace whose agentSelector cannot be parsed might
// govern the identity: it counts as selecting it, governing the directions
// it names with no rules, so that those directions deny rather than fall
// back to the default posture, and its rules (which may allow peers) are
// left out. An error in a policy thus never widens what is allowed.
func Resolve(in Input) (*Effective, []*Compiled) {
	self, _ := agentid.ID(in.TrustDomain, in.Identity.Namespace, in.Identity.Name)
	eff := &Effective{Version: SchemaVersion, SPIFFEID: self.String(), TrustDomain: in.TrustDomain.Name()}
	var selecting []*Compiled
	for _, p := range in.Policies {
		if p.Namespace == in.Identity.Namespace && (p.AgentSelector == nil || p.Selects(in.Identity.Labels)) {
			selecting = append(selecting, p)
		}
	}
	slices.SortFunc(selecting, func(a, b *Compiled) int { return strings.Compare(a.Name, b.Name) })
	eff.Ingress = resolveDirection(in, selecting, "ingress", func(p *Compiled) *Direction { return p.Ingress })
	eff.Egress = resolveDirection(in, selecting, "egress", func(p *Compiled) *Direction { return p.Egress })
	for _, g := range append(slices.Clone(eff.Ingress.Grants), eff.Egress.Grants...) {
		eff.Version = SchemaVersionV2
		if g.ExpiresAt == "" {
			continue
		}
		if t, err := time.Parse(time.RFC3339, g.ExpiresAt); err == nil && (eff.NextExpiry.IsZero() || t.Before(eff.NextExpiry)) {
			eff.NextExpiry = t
		}
	}
	return eff, selecting
}

func resolveDirection(in Input, selecting []*Compiled, name string, dir func(*Compiled) *Direction) Allowed {
	a := Allowed{Mode: ModeEnforce, SPIFFEIDs: []string{}, Prefixes: []string{}, Policies: []string{}}
	audit := true
	for _, p := range selecting {
		d := dir(p)
		if d == nil {
			continue
		}
		a.Policies = append(a.Policies, p.Name)
		audit = audit && p.Audit
		if p.AgentSelector == nil {
			// It might govern the identity; nothing it allows counts.
			continue
		}
		for i, r := range d.Rules {
			if r.Grant() {
				if g, ok := resolveGrant(in, p, r, fmt.Sprintf("%s[%d]", name, i)); ok {
					a.Grants = append(a.Grants, g)
				}
				continue
			}
			if r.All {
				a.AllowAll = true
				continue
			}
			for _, peer := range r.Peers {
				addPeer(&a, in, p, peer)
			}
		}
	}
	if len(a.Policies) == 0 {
		a.Default = in.Default
		if in.Default != Deny {
			a.Prefixes = append(a.Prefixes, trustDomainPrefix(in.TrustDomain))
		}
		return normalize(a)
	}
	if audit {
		a.Mode = ModeAudit
	}
	return normalize(a)
}

// resolveGrant resolves a rule with protocols or an expiry; an expired rule
// resolves to nothing.
func resolveGrant(in Input, p *Compiled, r Rule, rule string) (Grant, bool) {
	if !r.ExpiresAt.IsZero() && !in.Now.Before(r.ExpiresAt) {
		return Grant{}, false
	}
	peers := Allowed{SPIFFEIDs: []string{}, Prefixes: []string{}, AllowAll: r.All}
	for _, peer := range r.Peers {
		addPeer(&peers, in, p, peer)
	}
	peers = normalize(peers)
	g := Grant{Policy: p.Name, Rule: rule, AllowAll: peers.AllowAll, SPIFFEIDs: peers.SPIFFEIDs, Prefixes: peers.Prefixes}
	if !r.ExpiresAt.IsZero() {
		g.ExpiresAt = r.ExpiresAt.UTC().Format(time.RFC3339)
	}
	if r.Protocols != nil {
		g.Protocols = &GrantProtocols{}
		if r.Protocols.MCPTools != nil {
			g.Protocols.MCP = &MCPGrant{Tools: slices.Clone(r.Protocols.MCPTools)}
		}
		if r.Protocols.A2ASkills != nil {
			g.Protocols.A2A = &A2AGrant{Skills: slices.Clone(r.Protocols.A2ASkills)}
		}
	}
	return g, true
}

func addPeer(a *Allowed, in Input, p *Compiled, peer Peer) {
	for _, id := range peer.SPIFFEIDs {
		a.SPIFFEIDs = append(a.SPIFFEIDs, id.String())
	}
	for _, td := range peer.TrustDomains {
		a.Prefixes = append(a.Prefixes, trustDomainPrefix(td))
	}
	if peer.IdentitySelector == nil && peer.NamespaceSelector == nil {
		return
	}
	allIdentities := peer.IdentitySelector == nil || peer.IdentitySelector.Empty()
	var namespaces []string
	switch {
	case peer.NamespaceSelector == nil:
		namespaces = []string{p.Namespace}
	case peer.NamespaceSelector.Empty():
		if allIdentities {
			// Every identity of every namespace: the trust domain.
			a.Prefixes = append(a.Prefixes, trustDomainPrefix(in.TrustDomain))
			return
		}
		for _, ns := range in.World.Namespaces() {
			namespaces = append(namespaces, ns.Name)
		}
	default:
		for _, ns := range in.World.Namespaces() {
			if peer.NamespaceSelector.Matches(labels.Set(ns.Labels)) {
				namespaces = append(namespaces, ns.Name)
			}
		}
	}
	for _, ns := range namespaces {
		if allIdentities {
			// A namespace-wide rule is a prefix, never a list of identities.
			a.Prefixes = append(a.Prefixes, namespacePrefix(in.TrustDomain, ns))
			continue
		}
		for _, id := range in.World.Identities(ns) {
			if peer.IdentitySelector.Matches(labels.Set(id.Labels)) {
				sid, err := agentid.ID(in.TrustDomain, id.Namespace, id.Name)
				if err == nil {
					a.SPIFFEIDs = append(a.SPIFFEIDs, sid.String())
				}
			}
		}
	}
}

func trustDomainPrefix(td spiffeid.TrustDomain) string { return td.IDString() + "/" }

func namespacePrefix(td spiffeid.TrustDomain, ns string) string {
	return agentid.NamespacePrefix(td, ns)
}

// normalize sorts and deduplicates, and drops what a broader entry covers:
// everything under allowAll, prefixes under shorter prefixes, and IDs under
// a prefix.
func normalize(a Allowed) Allowed {
	if a.AllowAll {
		a.SPIFFEIDs, a.Prefixes = []string{}, []string{}
	}
	slices.Sort(a.Prefixes)
	a.Prefixes = slices.Compact(a.Prefixes)
	prefixes := a.Prefixes[:0]
	for _, p := range a.Prefixes {
		covered := false
		for _, q := range prefixes {
			if strings.HasPrefix(p, q) {
				covered = true
				break
			}
		}
		if !covered {
			prefixes = append(prefixes, p)
		}
	}
	a.Prefixes = prefixes
	slices.Sort(a.SPIFFEIDs)
	a.SPIFFEIDs = slices.Compact(a.SPIFFEIDs)
	ids := a.SPIFFEIDs[:0]
	for _, id := range a.SPIFFEIDs {
		covered := false
		for _, p := range a.Prefixes {
			if strings.HasPrefix(id, p) {
				covered = true
				break
			}
		}
		if !covered {
			ids = append(ids, id)
		}
	}
	a.SPIFFEIDs = ids
	a.Policies = slices.Compact(a.Policies)
	return a
}
