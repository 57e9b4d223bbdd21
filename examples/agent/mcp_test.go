package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
	"github.com/agentmesh/agentmesh/pkg/agenttls/agenttlstest"
)

// lockedBuffer is the client's stdout, read while the client writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

func (l *lockedBuffer) results(t *testing.T) []Result {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Result
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		var r Result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// source writes an identity volume for id and opens a Source on it.
func source(t *testing.T, ca *agenttlstest.CA, id spiffeid.ID, p *agenttls.Policy) *agenttls.Source {
	t.Helper()
	leaf, err := ca.Issue(id)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := agenttlstest.RenderTrust(p, map[spiffeid.TrustDomain][]*x509.Certificate{ca.TrustDomain: {ca.Root}})
	if err != nil {
		t.Fatal(err)
	}
	payload, err := agenttlstest.Payload(leaf, trust)
	if err != nil {
		t.Fatal(err)
	}
	w, err := agenttlstest.NewAtomicWriter(filepath.Join(t.TempDir(), "agentmesh"))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(payload); err != nil {
		t.Fatal(err)
	}
	src, err := agenttls.NewSource(agenttls.WithDir(w.Dir()), agenttls.WithExpectedID(id),
		agenttls.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

// TestMCPModes runs the agent's MCP server and client against each other:
// the server's policy grants the client the search tool only, so the
// client's one session lists search, its search calls succeed (the tool
// saw the verified peer) and its delete_records calls are refused by the
// server's policy with a JSON-RPC error, on the same session.
func TestMCPModes(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, err := agenttlstest.NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	toolsID := spiffeid.RequireFromString("spiffe://cluster.local/ns/agents/agent/toolbox")
	clientID := spiffeid.RequireFromString("spiffe://cluster.local/ns/agents/agent/assistant")
	p := agenttlstest.DefaultPolicy(toolsID)
	p.Version = agenttls.PolicySchemaVersionV2
	p.Ingress = agenttls.Rules{Mode: agenttls.ModeEnforce, Policies: []string{"toolbox-tools"}, Grants: []agenttls.Grant{{
		Policy: "toolbox-tools", Rule: "ingress[0]", SPIFFEIDs: []string{clientID.String()},
		Protocols: &agenttls.GrantProtocols{MCP: &agenttls.MCPGrant{Tools: []string{"search"}}},
	}}}
	server := source(t, ca, toolsID, p)
	client := source(t, ca, clientID, agenttlstest.DefaultPolicy(clientID))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- serveMCP(ctx, server, addr, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	out := &lockedBuffer{}
	called := make(chan error, 1)
	go func() {
		called <- callMCP(ctx, client, "https://"+addr+"/mcp", []string{"search", "delete_records"}, 50*time.Millisecond, out)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && out.count(`"tool":"delete_records"`) < 3 {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-called; err != nil {
		t.Errorf("client: %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("server: %v", err)
	}

	sessions, searches, refusals := 0, 0, 0
	for _, r := range out.results(t) {
		switch r.Tool {
		case "":
			// The server may not listen yet at the first try.
			if r.OK {
				sessions++
				if !slices.Equal(r.Listed, []string{"search"}) {
					t.Errorf("tools/list showed %v, want [search]", r.Listed)
				}
			}
		case "search":
			if !r.OK || r.Reply.Server != toolsID.String() || r.Reply.Client != clientID.String() {
				t.Errorf("search: %+v", r)
			}
			searches++
		case "delete_records":
			if r.OK || !strings.Contains(r.Error, `MCP tool "delete_records"`) {
				t.Errorf("delete_records: ok %v, error %q, want a refusal naming the tool", r.OK, r.Error)
			}
			refusals++
		}
	}
	if sessions != 1 || searches < 3 || refusals < 3 {
		t.Errorf("%d sessions, %d searches, %d refusals; want 1 session (refusals keep it) and >= 3 of each", sessions, searches, refusals)
	}
}
