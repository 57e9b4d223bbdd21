package agenttls_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

// BenchmarkMCPHandler measures what MCPHandler adds to one MCP request, in
// process (no network, no TLS): "bare" is the server handler alone, the
// others the same handler behind MCPHandler with the worker's tool policy.
// The difference of ns/op is the added latency per call.
//
//	go test ./pkg/agenttls -run X -bench MCPHandler -benchmem
func BenchmarkMCPHandler(b *testing.B) {
	ca := newCA(b, tdLocal)
	worker := newIdentity(b, ca, workerID, toolPolicy(agenttls.ModeEnforce), nil).source(b)
	planner := issue(b, ca, plannerID)
	state := &tls.ConnectionState{PeerCertificates: []*x509.Certificate{planner.Cert}}

	var tools []string
	for i := range 20 {
		tools = append(tools, fmt.Sprintf(`{"name":"tool_%02d","description":"tool %d","inputSchema":{"type":"object"}}`, i, i))
	}
	tools = append(tools, `{"name":"search","description":"search","inputSchema":{"type":"object"}}`)
	listResult := `{"jsonrpc":"2.0","id":1,"result":{"tools":[` + strings.Join(tools, ",") + `]}}`
	callResult := `{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"done"}]}}`
	// The server: reads the body and answers as an MCP server would.
	server := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		if strings.Contains(string(body), `"tools/list"`) {
			_, _ = io.WriteString(w, listResult)
			return
		}
		_, _ = io.WriteString(w, callResult)
	})
	wrapped := worker.MCPHandler(server, agenttls.WithDecisionHook(func(context.Context, agenttls.DecisionRecord) {}))
	call := func(tool string) string {
		return `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"` + tool + `","arguments":{"query":"agents","limit":10}}}`
	}
	for _, bc := range []struct {
		name    string
		h       http.Handler
		body    string
		headers bool
	}{
		{"bare/tools-call", server, call("search"), true},
		{"mcphandler/tools-call-allowed/headers", wrapped, call("search"), true},
		{"mcphandler/tools-call-allowed/body-only", wrapped, call("search"), false},
		{"mcphandler/tools-call-refused", wrapped, call("admin"), true},
		{"bare/tools-list", server, `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}`, false},
		{"mcphandler/tools-list-filtered", wrapped, `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}`, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPost, "https://worker/mcp", strings.NewReader(bc.body))
				req.TLS = state
				if bc.headers {
					req.Header.Set("Mcp-Method", "tools/call")
					req.Header.Set("Mcp-Name", strings.Split(strings.Split(bc.body, `"name":"`)[1], `"`)[0])
				}
				w := httptest.NewRecorder()
				bc.h.ServeHTTP(w, req)
				if w.Code != http.StatusOK {
					b.Fatalf("status %d: %s", w.Code, w.Body)
				}
			}
		})
	}
}
