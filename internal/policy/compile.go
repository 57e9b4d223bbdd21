package policy

import (
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation/field"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

// Compiled is an AgentTrustPolicy in the form resolution works with.
type Compiled struct {
	Namespace  string
	Name       string
	Generation int64
	// Audit is true for mode Audit.
	Audit bool
	// AgentSelector is nil when the selector is invalid: the policy then
	// cannot know which identities it governs.
	AgentSelector labels.Selector
	Ingress       *Direction
	Egress        *Direction
	TrustBundles  []BundleRef
	// Errors lists what is invalid, by field; invalid peers are dropped,
	// which only ever narrows what the policy allows.
	Errors field.ErrorList
}

// Direction is the compiled form of one governed direction; nil when the
// policy does not govern it.
type Direction struct {
	Rules []Rule
}

// Rule is one ingress or egress rule.
type Rule struct {
	// All allows every peer that verifies against the trust bundle (the
	// rule listed no peers).
	All   bool
	Peers []Peer
	// Protocols restricts what the peers may do; nil allows the whole peer.
	Protocols *Protocols
	// ExpiresAt is when the rule stops allowing anything; zero: never.
	ExpiresAt time.Time
}

// Grant reports whether the rule compiles to a grant of policy.json v2 (it
// restricts protocols or expires) rather than to a whole-peer allow.
func (r Rule) Grant() bool { return r.Protocols != nil || !r.ExpiresAt.IsZero() }

// Protocols is the compiled form of an ingress rule's protocols. A nil
// list allows nothing of that protocol; patterns that could not be compiled
// are left out, which only narrows the rule.
type Protocols struct {
	MCPTools  []string
	A2ASkills []string
}

var (
	toolPattern  = regexp.MustCompile(`^(\*|[A-Za-z0-9_./-]+\*?)$`)
	skillPattern = regexp.MustCompile(`^(\*|[A-Za-z0-9_.:/-]+\*?)$`)
)

// maxPatternLength bounds a tool or skill pattern, as the CRD schema does.
const maxPatternLength = 128

// Peer is one compiled peer; exactly one form is set.
type Peer struct {
	// IdentitySelector and NamespaceSelector are nil when not set. A nil
	// NamespaceSelector means the policy's own namespace.
	IdentitySelector  labels.Selector
	NamespaceSelector labels.Selector
	SPIFFEIDs         []spiffeid.ID
	TrustDomains      []spiffeid.TrustDomain
}

// BundleRef names the ConfigMap key holding a federated trust domain's CAs.
type BundleRef struct {
	TrustDomain spiffeid.TrustDomain
	ConfigMap   string
	Key         string
}

// Compile compiles p. It never fails: what cannot be compiled is recorded in
// Errors and left out.
func Compile(p *mtlsv1alpha1.AgentTrustPolicy) *Compiled {
	c := &Compiled{
		Namespace:  p.Namespace,
		Name:       p.Name,
		Generation: p.Generation,
		Audit:      p.Spec.Mode == mtlsv1alpha1.PolicyModeAudit,
	}
	spec := field.NewPath("spec")
	switch p.Spec.Mode {
	case "", mtlsv1alpha1.PolicyModeEnforce, mtlsv1alpha1.PolicyModeAudit:
	default:
		// An unknown mode enforces: the safe reading.
		c.Errors = append(c.Errors, field.NotSupported(spec.Child("mode"), p.Spec.Mode,
			[]mtlsv1alpha1.PolicyMode{mtlsv1alpha1.PolicyModeEnforce, mtlsv1alpha1.PolicyModeAudit}))
	}
	sel, err := p.Spec.AgentSelector.AsSelector()
	if err != nil {
		c.Errors = append(c.Errors, field.Invalid(spec.Child("agentSelector"), p.Spec.AgentSelector, err.Error()))
	} else {
		c.AgentSelector = sel
	}

	ingress, egress := governs(p, c, spec)
	if ingress {
		c.Ingress = &Direction{}
		for i, r := range p.Spec.Ingress {
			path := spec.Child("ingress").Index(i)
			rule := c.compileRule(r.From, path.Child("from"))
			if r.Protocols != nil {
				rule.Protocols = c.compileProtocols(r.Protocols, path.Child("protocols"))
			}
			if r.ExpiresAt != nil {
				rule.ExpiresAt = r.ExpiresAt.UTC().Truncate(time.Second)
			}
			c.Ingress.Rules = append(c.Ingress.Rules, rule)
		}
	}
	if egress {
		c.Egress = &Direction{}
		for i, r := range p.Spec.Egress {
			c.Egress.Rules = append(c.Egress.Rules, c.compileRule(r.To, spec.Child("egress").Index(i).Child("to")))
		}
	}
	seen := map[string]bool{}
	for i, b := range p.Spec.TrustBundles {
		path := spec.Child("trustBundles").Index(i)
		td, err := spiffeid.TrustDomainFromString(b.TrustDomain)
		if err != nil {
			c.Errors = append(c.Errors, field.Invalid(path.Child("trustDomain"), b.TrustDomain, err.Error()))
			continue
		}
		if seen[td.Name()] {
			c.Errors = append(c.Errors, field.Duplicate(path.Child("trustDomain"), b.TrustDomain))
			continue
		}
		seen[td.Name()] = true
		key := b.ConfigMap.Key
		if key == "" {
			key = mtlsv1alpha1.SecretTrustKey
		}
		c.TrustBundles = append(c.TrustBundles, BundleRef{TrustDomain: td, ConfigMap: b.ConfigMap.Name, Key: key})
	}
	return c
}

// governs decides the directions a policy governs, as NetworkPolicy does:
// policyTypes when set, otherwise Ingress, plus Egress when egress rules
// are present.
func governs(p *mtlsv1alpha1.AgentTrustPolicy, c *Compiled, spec *field.Path) (ingress, egress bool) {
	if len(p.Spec.PolicyTypes) == 0 {
		return true, len(p.Spec.Egress) > 0
	}
	for i, t := range p.Spec.PolicyTypes {
		switch t {
		case mtlsv1alpha1.PolicyTypeIngress:
			ingress = true
		case mtlsv1alpha1.PolicyTypeEgress:
			egress = true
		default:
			c.Errors = append(c.Errors, field.NotSupported(spec.Child("policyTypes").Index(i), t,
				[]mtlsv1alpha1.PolicyType{mtlsv1alpha1.PolicyTypeIngress, mtlsv1alpha1.PolicyTypeEgress}))
		}
	}
	return ingress, egress
}

func (c *Compiled) compileRule(peers []mtlsv1alpha1.AgentPeer, path *field.Path) Rule {
	if len(peers) == 0 {
		return Rule{All: true}
	}
	var r Rule
	for i, ap := range peers {
		pp := path.Index(i)
		peer, ok := c.compilePeer(ap, pp)
		if ok {
			r.Peers = append(r.Peers, peer)
		}
	}
	return r
}

// compileProtocols keeps the valid patterns of each protocol that the rule
// names. A protocol named with no valid pattern allows nothing, never
// everything.
func (c *Compiled) compileProtocols(p *mtlsv1alpha1.ProtocolRules, path *field.Path) *Protocols {
	out := &Protocols{}
	if p.MCP == nil && p.A2A == nil {
		c.Errors = append(c.Errors, field.Required(path, "protocols must restrict mcp, a2a or both"))
	}
	if p.MCP != nil {
		out.MCPTools = c.compilePatterns(p.MCP.Tools, toolPattern, path.Child("mcp", "tools"))
	}
	if p.A2A != nil {
		out.A2ASkills = c.compilePatterns(p.A2A.Skills, skillPattern, path.Child("a2a", "skills"))
	}
	return out
}

func (c *Compiled) compilePatterns(in []string, re *regexp.Regexp, path *field.Path) []string {
	out := []string{}
	if len(in) == 0 {
		c.Errors = append(c.Errors, field.Required(path, "list at least one name or pattern"))
	}
	for i, s := range in {
		if len(s) > maxPatternLength || !re.MatchString(s) {
			c.Errors = append(c.Errors, field.Invalid(path.Index(i), s,
				fmt.Sprintf("must be a name of at most %d characters (%s), optionally ending in \"*\"", maxPatternLength, re.String())))
			continue
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (c *Compiled) compilePeer(ap mtlsv1alpha1.AgentPeer, path *field.Path) (Peer, bool) {
	forms := 0
	if ap.IdentitySelector != nil || ap.NamespaceSelector != nil {
		forms++
	}
	if len(ap.SPIFFEIDs) > 0 {
		forms++
	}
	if len(ap.TrustDomains) > 0 {
		forms++
	}
	if forms != 1 {
		c.Errors = append(c.Errors, field.Invalid(path, "", "set exactly one of: identitySelector and/or namespaceSelector, spiffeIDs, trustDomains"))
		return Peer{}, false
	}
	var p Peer
	switch {
	case len(ap.SPIFFEIDs) > 0:
		for j, s := range ap.SPIFFEIDs {
			id, err := spiffeid.FromString(s)
			if err != nil {
				c.Errors = append(c.Errors, field.Invalid(path.Child("spiffeIDs").Index(j), s, err.Error()))
				continue
			}
			p.SPIFFEIDs = append(p.SPIFFEIDs, id)
		}
		if len(p.SPIFFEIDs) == 0 {
			return Peer{}, false
		}
	case len(ap.TrustDomains) > 0:
		for j, s := range ap.TrustDomains {
			td, err := spiffeid.TrustDomainFromString(s)
			if err != nil || td.Name() != s {
				msg := "not a trust domain name"
				if err != nil {
					msg = err.Error()
				}
				c.Errors = append(c.Errors, field.Invalid(path.Child("trustDomains").Index(j), s, msg))
				continue
			}
			p.TrustDomains = append(p.TrustDomains, td)
		}
		if len(p.TrustDomains) == 0 {
			return Peer{}, false
		}
	default:
		if ap.IdentitySelector != nil {
			s, err := ap.IdentitySelector.AsSelector()
			if err != nil {
				c.Errors = append(c.Errors, field.Invalid(path.Child("identitySelector"), "", err.Error()))
				return Peer{}, false
			}
			p.IdentitySelector = s
		}
		if ap.NamespaceSelector != nil {
			s, err := ap.NamespaceSelector.AsSelector()
			if err != nil {
				c.Errors = append(c.Errors, field.Invalid(path.Child("namespaceSelector"), "", err.Error()))
				return Peer{}, false
			}
			p.NamespaceSelector = s
		}
	}
	return p, true
}

// Selects reports whether the policy governs an identity with these labels.
func (c *Compiled) Selects(identityLabels map[string]string) bool {
	return c.AgentSelector != nil && c.AgentSelector.Matches(labels.Set(identityLabels))
}

// Key is the policy's name with its generation, as recorded in the
// annotation of the trust ConfigMaps it was compiled into.
func (c *Compiled) Key() string { return fmt.Sprintf("%s=%d", c.Name, c.Generation) }

// ErrorMessage joins the compile errors into one line.
func (c *Compiled) ErrorMessage() string {
	msgs := make([]string, 0, len(c.Errors))
	for _, e := range c.Errors {
		msgs = append(msgs, e.Error())
	}
	slices.Sort(msgs)
	return joinCapped(msgs, 1024)
}

func joinCapped(msgs []string, limit int) string {
	out := ""
	for i, m := range msgs {
		if i > 0 {
			m = "; " + m
		}
		if len(out)+len(m) > limit {
			return out + fmt.Sprintf("; and %d more", len(msgs)-i)
		}
		out += m
	}
	return out
}
