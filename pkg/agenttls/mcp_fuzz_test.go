package agenttls_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

// FuzzMCPHandler sends anything (a body and the standard headers) from the
// planner to the official MCP Go SDK's server (stateless, so a tools/call
// needs no session) behind MCPHandler. Invariant: whatever the server
// reads from the request, it never runs a tool the planner may not call
// (admin, delete_records before it is granted: the fuzz clock is after the
// grant's expiry), and the handler never panics.
func FuzzMCPHandler(f *testing.F) {
	ca := newCA(f, tdLocal)
	clock := &fakeClock{now: grantExpiry}
	worker := newIdentity(f, ca, workerID, toolPolicy(agenttls.ModeEnforce), nil).source(f, agenttls.WithClock(clock.Now))
	planner := issue(f, ca, plannerID)
	state := &tls.ConnectionState{PeerCertificates: []*x509.Certificate{planner.Cert}}

	var forbidden atomic.Int64
	server := mcp.NewServer(&mcp.Implementation{Name: "worker", Version: "v1"}, nil)
	for _, name := range []string{"search", "admin", "delete_records"} {
		mcp.AddTool(server, &mcp.Tool{Name: name}, func(context.Context, *mcp.CallToolRequest, struct{}) (*mcp.CallToolResult, any, error) {
			if name != "search" {
				forbidden.Add(1)
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "ok"}}}, nil, nil
		})
	}
	h := worker.MCPHandler(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server },
		&mcp.StreamableHTTPOptions{Stateless: true, JSONResponse: true}),
		agenttls.WithDecisionHook(func(context.Context, agenttls.DecisionRecord) {}))

	call := func(tool string) string {
		return `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"` + tool + `","arguments":{}}}`
	}
	f.Add(call("search"), "", "")
	f.Add(call("admin"), "tools/call", "admin")
	f.Add(call("admin"), "tools/call", "search")
	f.Add(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","Name":"admin"}}`, "", "")
	f.Add(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","name":"admin"}}`, "tools/call", "search")
	f.Add(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"na\u006de":"admin"}}`, "", "")
	f.Add(`[`+call("search")+`,`+call("admin")+`]`, "", "")
	f.Add(`{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, "tools/list", "")
	f.Add(`{"jsonrpc":"2.0","id":1,"Method":"tools/call","method":"ping","params":{"name":"admin"}}`, "ping", "")
	f.Fuzz(func(t *testing.T, body, method, name string) {
		before := forbidden.Load()
		req := httptest.NewRequest(http.MethodPost, "https://worker/mcp", strings.NewReader(body))
		req.TLS = state
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		// 2025-11-25: the server then runs a tools/call without the _meta
		// that 2026-07-28 requires; the handler checks the headers anyway.
		req.Header.Set("Mcp-Protocol-Version", "2025-11-25")
		if method != "" && !strings.ContainsAny(method, "\r\n\x00") {
			req.Header.Set("Mcp-Method", method)
		}
		if name != "" && !strings.ContainsAny(name, "\r\n\x00") {
			req.Header.Set("Mcp-Name", name)
		}
		h.ServeHTTP(httptest.NewRecorder(), req)
		if forbidden.Load() != before {
			t.Fatalf("the server ran a tool the planner may not call, for body %q, Mcp-Method %q, Mcp-Name %q", body, method, name)
		}
	})
}
