package agenttls

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
)

// MCP Streamable HTTP headers of the 2026-07-28 revision.
const (
	mcpMethodHeader = "Mcp-Method"
	mcpNameHeader   = "Mcp-Name"
)

// MCPHandler wraps the Streamable HTTP handler of an MCP server (for
// example the MCP Go SDK's mcp.NewStreamableHTTPHandler) so that every
// request is authorized against the ingress rules of policy.json for the
// verified mTLS peer (PeerID): serve it with NewServer or ServerTLSConfig.
//
//   - tools/call: the tool, named by the Mcp-Method and Mcp-Name headers
//     (2026-07-28 revision) and always by the JSON-RPC body (params.name;
//     older clients send only the body), must be allowed to the peer. When
//     both are present they must agree, or the request is refused as
//     invalid. A refusal is a JSON-RPC error with code CodeForbidden whose
//     message names both SPIFFE IDs, the policies and the rules.
//   - tools/list: the result lists only the tools the peer may call, in a
//     JSON or an event-stream response.
//   - every other method, and GET and DELETE requests, pass for a peer the
//     rules allow at all; a peer they no longer allow (its grant expired)
//     gets nothing.
//
// A batch is refused as a whole if one of its calls is. A message whose
// objects repeat a key (also in another case) is refused, so that the
// handler and the server never read different tools from one request. In
// Audit mode refusals are logged (the decision log) and the request passes
// unchanged. Every refusal goes to the decision log: WithDecisionHook, or
// the Source's logger.
func (s *Source) MCPHandler(next http.Handler, opts ...AuthzOption) http.Handler {
	c := s.authzConfig(opts)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.serveMCP(c, next, w, r)
	})
}

func (s *Source) serveMCP(c *authzConfig, next http.Handler, w http.ResponseWriter, r *http.Request) {
	snap, a, ok := s.access(w, r)
	if !ok {
		return
	}
	if r.Method != http.MethodPost {
		if !a.uses(ProtocolMCP) && s.decide(r.Context(), c, snap, &a, DecisionRecord{Protocol: ProtocolMCP, Method: r.Method + " " + r.URL.Path,
			Reason: refusal(snap, &a, ProtocolMCP, "MCP")}) {
			writeJSON(w, http.StatusForbidden, newRPCError(nil, CodeForbidden, refusal(snap, &a, ProtocolMCP, "MCP"), nil))
			return
		}
		if r.Method == http.MethodGet && !a.Whole && snap.policy.Ingress.Mode != ModeAudit {
			// A stream may replay responses: filter every tools/list result.
			f := &filterWriter{ResponseWriter: w, rewrite: func(m []byte) []byte {
				return filterList(m, func(json.RawMessage) bool { return true }, "tools", "name", a.AllowsTool)
			}}
			next.ServeHTTP(f, r)
			f.finish()
			return
		}
		next.ServeHTTP(w, r)
		return
	}
	body, ok := readBody(w, r, c.maxBody)
	if !ok {
		return
	}
	msgs, batch, err := parseMessages(body)
	if err != nil {
		// The server behind would refuse it too; a message this handler
		// cannot read is never let through.
		writeJSON(w, http.StatusBadRequest, newRPCError(nil, codeInvalidRequest, "agentmesh: unreadable JSON-RPC message: "+err.Error(), nil))
		return
	}
	if len(msgs) == 1 && !batch {
		if msg, ok := mcpHeadersAgree(r.Header, &msgs[0]); !ok {
			writeJSON(w, http.StatusBadRequest, newRPCError(msgs[0].ID, codeInvalidRequest, msg, nil))
			return
		}
	}
	var refused []rpcError
	var lists []json.RawMessage
	for i := range msgs {
		m := &msgs[i]
		var tool, what string
		switch {
		case m.Method == "tools/call":
			var p struct {
				Name string `json:"name"`
			}
			_ = json.Unmarshal(m.Params, &p)
			tool = p.Name
			if a.AllowsTool(tool) {
				continue
			}
			what = "MCP tool " + quote(tool)
		case m.Method == "tools/list" && m.isRequest():
			lists = append(lists, m.ID)
			if a.uses(ProtocolMCP) {
				continue
			}
			what = "MCP"
		case a.uses(ProtocolMCP):
			continue
		default:
			what = "MCP"
		}
		reason := refusal(snap, &a, ProtocolMCP, what)
		if !s.decide(r.Context(), c, snap, &a, DecisionRecord{Protocol: ProtocolMCP, Method: m.Method, Tool: tool, Reason: reason}) {
			continue
		}
		refused = append(refused, newRPCError(m.ID, CodeForbidden, reason, &errorData{
			SPIFFEID: snap.id.String(), Peer: a.Peer.String(), Tool: tool,
			Policies: snap.policy.Ingress.Policies, Rules: a.rules(ProtocolMCP),
		}))
	}
	if len(refused) > 0 {
		if !batch {
			writeJSON(w, http.StatusOK, refused[0])
			return
		}
		for i := range msgs {
			if m := &msgs[i]; m.isRequest() && !refusedID(refused, m.ID) {
				refused = append(refused, newRPCError(m.ID, CodeForbidden, "agentmesh: the batch holds a refused request", nil))
			}
		}
		writeJSON(w, http.StatusOK, refused)
		return
	}
	if len(lists) == 0 || a.Whole || snap.policy.Ingress.Mode == ModeAudit {
		next.ServeHTTP(w, r)
		return
	}
	f := &filterWriter{ResponseWriter: w, rewrite: func(m []byte) []byte {
		return filterList(m, func(id json.RawMessage) bool { return refusedOrListed(lists, id) }, "tools", "name", a.AllowsTool)
	}}
	next.ServeHTTP(f, r)
	f.finish()
}

func refusedID(refused []rpcError, id json.RawMessage) bool {
	for _, e := range refused {
		if sameID(e.ID, id) {
			return true
		}
	}
	return false
}

func refusedOrListed(ids []json.RawMessage, id json.RawMessage) bool {
	for _, l := range ids {
		if sameID(l, id) {
			return true
		}
	}
	return false
}

// mcpHeadersAgree checks the standard headers of the 2026-07-28 revision
// against the body: when a client sends them, they must name the same
// method and tool as the body does.
func mcpHeadersAgree(h http.Header, m *rpcMessage) (string, bool) {
	method := h.Get(mcpMethodHeader)
	if method == "" {
		return "", true
	}
	if method != m.Method {
		return "agentmesh: the " + mcpMethodHeader + " header says " + quote(method) + " but the body " + quote(m.Method), false
	}
	if m.Method != "tools/call" {
		return "", true
	}
	name, ok := decodeHeaderValue(h.Get(mcpNameHeader))
	var p struct {
		Name string `json:"name"`
	}
	_ = json.Unmarshal(m.Params, &p)
	if !ok || name != p.Name {
		return "agentmesh: the " + mcpNameHeader + " header does not name the tool of the body, " + quote(p.Name), false
	}
	return "", true
}

// decodeHeaderValue undoes the "=?base64?...?=" encoding MCP uses for
// header values that are not plain ASCII.
func decodeHeaderValue(v string) (string, bool) {
	if inner, ok := strings.CutPrefix(v, "=?base64?"); ok {
		inner, ok = strings.CutSuffix(inner, "?=")
		if !ok {
			return "", false
		}
		b, err := base64.StdEncoding.DecodeString(inner)
		if err != nil {
			return "", false
		}
		return string(b), true
	}
	return v, true
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
