package agenttls

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
)

// defaultAgentCardPaths are where A2A servers publish their Agent Card:
// the well-known paths of A2A 0.3 and later and of earlier versions, and
// the extended card of the HTTP+JSON binding.
var defaultAgentCardPaths = []string{"/.well-known/agent-card.json", "/.well-known/agent.json", "/extendedAgentCard", "/v1/card"}

// A2ASkillMetadataKey is the metadata key that names the skill a message
// asks for, in the params' metadata or the message's (DefaultA2ASkill).
// A2A has no field for it: a client that talks to an agent whose skills
// are restricted names the skill there.
const A2ASkillMetadataKey = "skillId"

// a2aSendMethods are the JSON-RPC methods that run a skill, A2A 1.0 and
// 0.x names.
var a2aSendMethods = []string{"SendMessage", "SendStreamingMessage", "message/send", "message/stream", "tasks/send", "tasks/sendSubscribe"}

// a2aCardMethods are the JSON-RPC methods that return an Agent Card.
var a2aCardMethods = []string{"GetExtendedAgentCard", "agent/getAuthenticatedExtendedCard", "agent/authenticatedExtendedCard"}

// DefaultA2ASkill finds the skill a message asks for: the string at
// params.metadata.skillId, else at params.message.metadata.skillId.
func DefaultA2ASkill(_ string, params []byte) (string, bool) {
	var p struct {
		Metadata map[string]json.RawMessage `json:"metadata"`
		Message  struct {
			Metadata map[string]json.RawMessage `json:"metadata"`
		} `json:"message"`
	}
	if json.Unmarshal(params, &p) != nil {
		return "", false
	}
	for _, md := range []map[string]json.RawMessage{p.Metadata, p.Message.Metadata} {
		var s string
		if raw, ok := md[A2ASkillMetadataKey]; ok && json.Unmarshal(raw, &s) == nil && s != "" {
			return s, true
		}
	}
	return "", false
}

// WithA2ASkill replaces DefaultA2ASkill: f returns the skill that a
// message-sending request (method, its JSON params) asks for.
func WithA2ASkill(f func(method string, params []byte) (string, bool)) AuthzOption {
	return func(c *authzConfig) {
		if f != nil {
			c.skillOf = f
		}
	}
}

// WithAgentCardPaths sets the paths at which the Agent Card is served
// (the well-known paths otherwise).
func WithAgentCardPaths(paths ...string) AuthzOption {
	return func(c *authzConfig) { c.cardPath = slices.Clone(paths) }
}

// A2AHandler wraps an A2A server's HTTP handler (JSON-RPC binding, and the
// message:send and message:stream endpoints of the HTTP+JSON binding) so
// that every request is authorized against the ingress rules of
// policy.json for the verified mTLS peer:
//
//   - the Agent Card (GET on the well-known paths, and the extended card)
//     served to a peer lists only the skills it may use;
//   - a message (SendMessage, SendStreamingMessage, message/send,
//     message/stream) must name a skill the peer may use, in the metadata
//     key A2ASkillMetadataKey (WithA2ASkill changes where it is read),
//     unless the peer may use every skill; a refusal is a JSON-RPC error
//     with code CodeForbidden naming both SPIFFE IDs and the rules;
//   - other requests (tasks, push notification configurations) pass for a
//     peer that may use some skill, and are refused otherwise.
//
// Audit mode and the decision log work as for MCPHandler.
func (s *Source) A2AHandler(next http.Handler, opts ...AuthzOption) http.Handler {
	c := s.authzConfig(opts)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.serveA2A(c, next, w, r)
	})
}

func (s *Source) serveA2A(c *authzConfig, next http.Handler, w http.ResponseWriter, r *http.Request) {
	snap, a, ok := s.access(w, r)
	if !ok {
		return
	}
	audit := snap.policy.Ingress.Mode == ModeAudit
	filterCard := func(m []byte) []byte {
		out, _ := filterArray(m, "skills", "id", a.AllowsSkill)
		return out
	}
	if r.Method == http.MethodGet && slices.Contains(c.cardPath, r.URL.Path) {
		if !a.Connect() && s.decide(r.Context(), c, snap, &a, DecisionRecord{Protocol: ProtocolA2A, Method: "GET " + r.URL.Path,
			Reason: refusal(snap, &a, ProtocolA2A, "the Agent Card")}) {
			writeJSON(w, http.StatusForbidden, newRPCError(nil, CodeForbidden, refusal(snap, &a, ProtocolA2A, "the Agent Card"), nil))
			return
		}
		if a.Whole || audit {
			next.ServeHTTP(w, r)
			return
		}
		f := &filterWriter{ResponseWriter: w, rewrite: filterCard}
		next.ServeHTTP(f, r)
		f.finish()
		return
	}
	if r.Method != http.MethodPost {
		if !a.uses(ProtocolA2A) && s.decide(r.Context(), c, snap, &a, DecisionRecord{Protocol: ProtocolA2A, Method: r.Method + " " + r.URL.Path,
			Reason: refusal(snap, &a, ProtocolA2A, "A2A")}) {
			writeJSON(w, http.StatusForbidden, newRPCError(nil, CodeForbidden, refusal(snap, &a, ProtocolA2A, "A2A"), nil))
			return
		}
		next.ServeHTTP(w, r)
		return
	}
	body, ok := readBody(w, r, c.maxBody)
	if !ok {
		return
	}
	var msgs []rpcMessage
	if rest := restSendMethod(r.URL.Path); rest != "" {
		// HTTP+JSON binding: the body is the params.
		if err := checkKeys(body); err != nil {
			writeJSON(w, http.StatusBadRequest, newRPCError(nil, codeInvalidRequest, "agentmesh: unreadable A2A request: "+err.Error(), nil))
			return
		}
		msgs = []rpcMessage{{Method: rest, Params: body}}
	} else {
		var (
			batch bool
			err   error
		)
		msgs, batch, err = parseMessages(body)
		if err == nil && batch {
			err = errBatch
		}
		if err != nil {
			writeJSON(w, http.StatusBadRequest, newRPCError(nil, codeInvalidRequest, "agentmesh: unreadable JSON-RPC message: "+err.Error(), nil))
			return
		}
	}
	m := &msgs[0]
	var skill, what string
	switch {
	case slices.Contains(a2aSendMethods, m.Method):
		var named bool
		skill, named = c.skillOf(m.Method, m.Params)
		switch {
		case a.Whole || (named && a.AllowsSkill(skill)):
		case !named:
			what = "an A2A message that names no skill (metadata " + A2ASkillMetadataKey + ")"
		default:
			what = "A2A skill " + quote(skill)
		}
	case !a.uses(ProtocolA2A):
		what = "A2A"
	}
	if what != "" {
		reason := refusal(snap, &a, ProtocolA2A, what)
		if s.decide(r.Context(), c, snap, &a, DecisionRecord{Protocol: ProtocolA2A, Method: m.Method, Skill: skill, Reason: reason}) {
			writeJSON(w, http.StatusOK, newRPCError(m.ID, CodeForbidden, reason, &errorData{
				SPIFFEID: snap.id.String(), Peer: a.Peer.String(), Skill: skill,
				Policies: snap.policy.Ingress.Policies, Rules: a.rules(ProtocolA2A),
			}))
			return
		}
	}
	if slices.Contains(a2aCardMethods, m.Method) && !a.Whole && !audit {
		f := &filterWriter{ResponseWriter: w, rewrite: func(msg []byte) []byte {
			return filterList(msg, func(id json.RawMessage) bool { return sameID(id, m.ID) }, "skills", "id", a.AllowsSkill)
		}}
		next.ServeHTTP(f, r)
		f.finish()
		return
	}
	next.ServeHTTP(w, r)
}

// errBatch: A2A has no batches.
var errBatch = errorString("A2A requests are single JSON-RPC messages, not batches")

type errorString string

func (e errorString) Error() string { return string(e) }

// restSendMethod maps the message endpoints of the HTTP+JSON binding to
// their operation; "" for other paths.
func restSendMethod(path string) string {
	switch {
	case strings.HasSuffix(path, "/message:send"):
		return "SendMessage"
	case strings.HasSuffix(path, "/message:stream"):
		return "SendStreamingMessage"
	}
	return ""
}
