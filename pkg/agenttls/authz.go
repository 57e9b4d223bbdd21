package agenttls

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Protocol is an agent protocol whose requests the SDK authorizes.
type Protocol string

const (
	// ProtocolMCP is the Model Context Protocol (tools).
	ProtocolMCP Protocol = "mcp"
	// ProtocolA2A is the Agent2Agent protocol (skills).
	ProtocolA2A Protocol = "a2a"
)

// Access is what the ingress rules let one peer do at one instant: the
// union of the whole-peer allow lists (everything) and of the grants that
// match the peer and have not expired (what their protocols list).
type Access struct {
	// Peer is the peer's SPIFFE ID.
	Peer spiffeid.ID
	// Whole is true when the peer may do everything: a whole-peer list
	// allows it, or a live grant without protocol restrictions does.
	Whole bool
	// Grants are the live grants that match the peer.
	Grants []*Grant
	// Expired are the grants that match the peer but have expired.
	Expired []*Grant
}

// AccessAt returns what the rules let peer do at now.
func (r *Rules) AccessAt(peer spiffeid.ID, now time.Time) Access {
	a := Access{Peer: peer}
	if peer.IsZero() {
		return a
	}
	id := peer.String()
	a.Whole = r.allowsWhole(id)
	for i := range r.Grants {
		g := &r.Grants[i]
		if !g.matches(id) {
			continue
		}
		if g.Expired(now) {
			a.Expired = append(a.Expired, g)
			continue
		}
		a.Grants = append(a.Grants, g)
		if g.Protocols == nil {
			a.Whole = true
		}
	}
	return a
}

// Connect reports whether the peer may connect at all.
func (a *Access) Connect() bool { return a.Whole || len(a.Grants) > 0 }

// AllowsTool reports whether the peer may call the MCP tool name.
func (a *Access) AllowsTool(name string) bool {
	if a.Whole {
		return true
	}
	for _, g := range a.Grants {
		if g.Protocols.MCP != nil && matchName(g.Protocols.MCP.Tools, name) {
			return true
		}
	}
	return false
}

// AllowsSkill reports whether the peer may use the A2A skill id.
func (a *Access) AllowsSkill(id string) bool {
	if a.Whole {
		return true
	}
	for _, g := range a.Grants {
		if g.Protocols.A2A != nil && matchName(g.Protocols.A2A.Skills, id) {
			return true
		}
	}
	return false
}

// uses reports whether the peer may use the protocol at all: it is whole,
// or a live grant lists something of the protocol.
func (a *Access) uses(p Protocol) bool {
	if a.Whole {
		return true
	}
	for _, g := range a.Grants {
		if (p == ProtocolMCP && g.Protocols.MCP != nil && len(g.Protocols.MCP.Tools) > 0) ||
			(p == ProtocolA2A && g.Protocols.A2A != nil && len(g.Protocols.A2A.Skills) > 0) {
			return true
		}
	}
	return false
}

// rules describes the grants that decided, for errors and the decision
// log: the live ones with what they allow, then the expired ones.
func (a *Access) rules(p Protocol) []string {
	out := make([]string, 0, len(a.Grants)+len(a.Expired))
	for _, g := range a.Grants {
		var what string
		switch {
		case p == ProtocolMCP && g.Protocols.MCP != nil:
			what = "tools " + strings.Join(g.Protocols.MCP.Tools, ", ")
		case p == ProtocolA2A && g.Protocols.A2A != nil:
			what = "skills " + strings.Join(g.Protocols.A2A.Skills, ", ")
		case p == ProtocolMCP:
			what = "no MCP tool"
		default:
			what = "no A2A skill"
		}
		out = append(out, g.Name()+": "+what)
	}
	for _, g := range a.Expired {
		out = append(out, g.Name()+": expired at "+g.ExpiresAt)
	}
	return out
}

// Verdict is what a decision did with a request.
type Verdict string

const (
	// VerdictDenied is a request that was refused (mode Enforce).
	VerdictDenied Verdict = "denied"
	// VerdictAudited is a request that would have been refused and was let
	// through (mode Audit).
	VerdictAudited Verdict = "audited"
)

// DecisionRecord is one refusal, or in Audit mode one would-be refusal, of an
// agent-protocol request: the structured record of the decision log.
type DecisionRecord struct {
	// Time is when the decision was made (the Source's clock).
	Time time.Time
	// Local is the agent's own SPIFFE ID; Peer the verified client's.
	Local, Peer spiffeid.ID
	// Protocol is ProtocolMCP or ProtocolA2A.
	Protocol Protocol
	// Method is the JSON-RPC method ("tools/call", "message/send"), or the
	// HTTP method and path for requests that are not JSON-RPC.
	Method string
	// Tool is the MCP tool requested, Skill the A2A skill; either may be
	// empty (a request that names none).
	Tool, Skill string
	// Policies are the AgentTrustPolicies that govern ingress.
	Policies []string
	// Rules are the grants that apply to the peer, with what they allow or
	// when they expired ("worker-tools ingress[0]: tools search, read_*").
	Rules []string
	// Verdict is VerdictDenied or VerdictAudited.
	Verdict Verdict
	// Reason is the error message the peer got (or would have got).
	Reason string
}

// DecisionHook receives every DecisionRecord. It is called on the request's
// goroutine and must not block for long.
type DecisionHook func(context.Context, DecisionRecord)

// SlogDecisionHook returns the default hook: one Warn record per decision
// on l, with the keys time (the record's), spiffeID, peer, protocol,
// method, tool or skill, policies, rules, verdict and reason.
func SlogDecisionHook(l *slog.Logger) DecisionHook {
	return func(ctx context.Context, d DecisionRecord) {
		msg := "agentmesh: request refused by policy"
		if d.Verdict == VerdictAudited {
			msg = "agentmesh: request not allowed by policy, let through in audit mode"
		}
		attrs := []slog.Attr{
			slog.String("spiffeID", d.Local.String()), slog.String("peer", d.Peer.String()),
			slog.String("protocol", string(d.Protocol)), slog.String("method", d.Method),
		}
		if d.Tool != "" {
			attrs = append(attrs, slog.String("tool", d.Tool))
		}
		if d.Skill != "" {
			attrs = append(attrs, slog.String("skill", d.Skill))
		}
		attrs = append(attrs, slog.Any("policies", d.Policies), slog.Any("rules", d.Rules),
			slog.String("verdict", string(d.Verdict)), slog.String("reason", d.Reason))
		r := slog.NewRecord(d.Time, slog.LevelWarn, msg, 0)
		r.AddAttrs(attrs...)
		if l.Enabled(ctx, slog.LevelWarn) {
			_ = l.Handler().Handle(ctx, r)
		}
	}
}

// AuthzOption configures MCPHandler and A2AHandler.
type AuthzOption func(*authzConfig)

type authzConfig struct {
	hook     DecisionHook
	maxBody  int64
	skillOf  func(method string, params []byte) (string, bool)
	cardPath []string
}

// DefaultMaxRequestBody caps the body of a request that MCPHandler and
// A2AHandler read to authorize it.
const DefaultMaxRequestBody = 8 << 20

// WithDecisionHook sends the decision log to h instead of the Source's
// logger.
func WithDecisionHook(h DecisionHook) AuthzOption {
	return func(c *authzConfig) {
		if h != nil {
			c.hook = h
		}
	}
}

// WithMaxRequestBody caps the request bodies read for authorization
// (DefaultMaxRequestBody otherwise); a larger body is refused with 413.
func WithMaxRequestBody(n int64) AuthzOption {
	return func(c *authzConfig) {
		if n > 0 {
			c.maxBody = n
		}
	}
}

func (s *Source) authzConfig(opts []AuthzOption) *authzConfig {
	c := &authzConfig{hook: SlogDecisionHook(s.cfg.log), maxBody: DefaultMaxRequestBody, skillOf: DefaultA2ASkill,
		cardPath: slices.Clone(defaultAgentCardPaths)}
	for _, o := range opts {
		o(c)
	}
	return c
}

// access opens MCPHandler and A2AHandler: the policy snapshot, and what its
// ingress rules let the verified peer of r do now. Without a verified peer
// it answers 401 and reports false.
func (s *Source) access(w http.ResponseWriter, r *http.Request) (*Snapshot, Access, bool) {
	snap := s.Snapshot()
	peer, err := PeerID(r)
	if err != nil {
		writeJSON(w, http.StatusUnauthorized, newRPCError(nil, codeInvalidRequest, err.Error(), nil))
		return nil, Access{}, false
	}
	return snap, snap.policy.Ingress.AccessAt(peer, s.cfg.now()), true
}

// decide records a refusal and reports whether the request must be
// refused (false in Audit mode).
func (s *Source) decide(ctx context.Context, c *authzConfig, snap *Snapshot, a *Access, d DecisionRecord) bool {
	d.Time = s.cfg.now()
	d.Local = snap.id
	d.Peer = a.Peer
	d.Policies = slices.Clone(snap.policy.Ingress.Policies)
	d.Rules = a.rules(d.Protocol)
	d.Verdict = VerdictDenied
	audit := snap.policy.Ingress.Mode == ModeAudit
	if audit {
		d.Verdict = VerdictAudited
	}
	c.hook(ctx, d)
	return !audit
}

// refusal is the message of a refused request, naming both SPIFFE IDs and
// the rules that decided.
func refusal(snap *Snapshot, a *Access, p Protocol, what string) string {
	rules := a.rules(p)
	by := "policies: " + strings.Join(snap.policy.Ingress.Policies, ", ")
	if len(snap.policy.Ingress.Policies) == 0 {
		by = "default posture: " + snap.policy.Ingress.Default
	}
	if len(rules) > 0 {
		by += "; rules: " + strings.Join(rules, "; ")
	}
	return "agentmesh: " + what + " is not allowed for " + a.Peer.String() + " by the ingress policy of " + snap.id.String() + " (" + by + ")"
}
