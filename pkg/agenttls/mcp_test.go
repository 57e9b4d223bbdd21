package agenttls_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

// fakeClock is the clock of the Source's policy decisions.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// decisions collects the decision log.
type decisions struct {
	mu  sync.Mutex
	all []agenttls.DecisionRecord
}

func (d *decisions) hook(_ context.Context, dec agenttls.DecisionRecord) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.all = append(d.all, dec)
}

func (d *decisions) list() []agenttls.DecisionRecord {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.all)
}

var (
	grantStart  = time.Date(2026, 12, 4, 18, 0, 0, 0, time.UTC)
	grantExpiry = grantStart.Add(time.Hour)
)

// toolPolicy is the worker's policy.json v2 as the operator compiles
// AgentTrustPolicy worker-tools: the planner may call search and read_*,
// and delete_records until grantExpiry; nobody else gets in.
func toolPolicy(mode agenttls.Mode) *agenttls.Policy {
	p := ingressOnly(workerID, "worker-tools", mode)
	p.Version = agenttls.PolicySchemaVersionV2
	p.Ingress.Grants = []agenttls.Grant{
		{Policy: "worker-tools", Rule: "ingress[0]", SPIFFEIDs: []string{plannerID.String()}, Prefixes: []string{},
			Protocols: &agenttls.GrantProtocols{MCP: &agenttls.MCPGrant{Tools: []string{"read_*", "search"}}, A2A: &agenttls.A2AGrant{Skills: []string{"summarize"}}}},
		{Policy: "worker-tools", Rule: "ingress[1]", SPIFFEIDs: []string{plannerID.String()}, Prefixes: []string{},
			ExpiresAt: grantExpiry.Format(time.RFC3339),
			Protocols: &agenttls.GrantProtocols{MCP: &agenttls.MCPGrant{Tools: []string{"delete_records"}}}},
	}
	return p
}

type mcpFixture struct {
	url      string
	clock    *fakeClock
	log      *decisions
	planner  *agenttls.Source
	outsider *agenttls.Source
	worker   *agenttls.Source
	calls    chan string
}

// newMCPFixture runs an MCP server of the official Go SDK, behind
// MCPHandler, on an agentmesh mTLS server for the worker.
func newMCPFixture(t *testing.T, mode agenttls.Mode, jsonResponse bool) *mcpFixture {
	t.Helper()
	ca := newCA(t, tdLocal)
	f := &mcpFixture{clock: &fakeClock{now: grantStart}, log: &decisions{}, calls: make(chan string, 64)}
	f.worker = newIdentity(t, ca, workerID, toolPolicy(mode), nil).source(t, agenttls.WithClock(f.clock.Now))
	f.planner = newIdentity(t, ca, plannerID, nil, nil).source(t)
	f.outsider = newIdentity(t, ca, outsiderID, nil, nil).source(t)

	server := mcp.NewServer(&mcp.Implementation{Name: "worker", Version: "v1"}, nil)
	for _, name := range []string{"search", "read_file", "delete_records", "admin"} {
		mcp.AddTool(server, &mcp.Tool{Name: name, Description: "the " + name + " tool"},
			func(_ context.Context, _ *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
				f.calls <- name
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: name + " done"}}}, nil, nil
			})
	}
	handler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, &mcp.StreamableHTTPOptions{JSONResponse: jsonResponse})
	mux := http.NewServeMux()
	mux.Handle("/mcp", f.worker.MCPHandler(handler, agenttls.WithDecisionHook(f.log.hook)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := f.worker.NewServer(ln.Addr().String(), mux)
	srv.ErrorLog = log.New(io.Discard, "", 0)
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	f.url = "https://" + ln.Addr().String() + "/mcp"
	return f
}

func (f *mcpFixture) connect(t *testing.T, src *agenttls.Source) (*mcp.ClientSession, error) {
	t.Helper()
	client := mcp.NewClient(&mcp.Implementation{Name: src.ID().String(), Version: "v1"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: f.url, HTTPClient: src.NewHTTPClient(), MaxRetries: -1}, nil)
	if err == nil {
		t.Cleanup(func() { _ = cs.Close() })
	}
	return cs, err
}

func callTool(cs *mcp.ClientSession, name string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: map[string]any{}})
	if err != nil {
		return "", err
	}
	if res.IsError {
		return "", errors.New("tool error")
	}
	return res.Content[0].(*mcp.TextContent).Text, nil
}

func listTools(t *testing.T, cs *mcp.ClientSession) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	res, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatalf("tools/list: %v", err)
	}
	var names []string
	for _, tool := range res.Tools {
		names = append(names, tool.Name)
	}
	slices.Sort(names)
	return names
}

// TestMCPToolsByPeer: with the official MCP Go SDK as client and server
// over agentmesh mTLS, the planner may call search and read_file and not
// admin, sees only those in tools/list (JSON and event-stream responses),
// may call delete_records until its grant expires and not a second after;
// the outsider gets nothing. Each refusal is one decision record.
func TestMCPToolsByPeer(t *testing.T) {
	for name, jsonResponse := range map[string]bool{"event stream": false, "json": true} {
		t.Run(name, func(t *testing.T) {
			f := newMCPFixture(t, agenttls.ModeEnforce, jsonResponse)
			cs, err := f.connect(t, f.planner)
			if err != nil {
				t.Fatalf("planner cannot connect: %v", err)
			}
			if got := listTools(t, cs); strings.Join(got, ",") != "delete_records,read_file,search" {
				t.Errorf("tools/list for the planner = %v", got)
			}
			for _, tool := range []string{"search", "read_file", "delete_records"} {
				if out, err := callTool(cs, tool); err != nil || out != tool+" done" {
					t.Errorf("planner calls %s: %q, %v", tool, out, err)
				}
			}
			_, err = callTool(cs, "admin")
			if err == nil {
				t.Fatal("the planner called admin")
			}
			mustContain(t, err.Error(), `MCP tool "admin" is not allowed for spiffe://cluster.local/ns/agents/agent/planner`,
				"by the ingress policy of spiffe://cluster.local/ns/agents/agent/worker", "policies: worker-tools",
				"worker-tools ingress[0]: tools read_*, search", "worker-tools ingress[1]: tools delete_records")

			// The grant of delete_records stops at its expiry, with no new
			// policy.json: the SDK checks expiresAt on every call.
			f.clock.Set(grantExpiry.Add(-time.Second))
			if _, err := callTool(cs, "delete_records"); err != nil {
				t.Errorf("a second before expiry: %v", err)
			}
			f.clock.Set(grantExpiry)
			_, err = callTool(cs, "delete_records")
			if err == nil {
				t.Fatal("delete_records still works at the grant's expiry")
			}
			mustContain(t, err.Error(), "worker-tools ingress[1]: expired at 2026-12-04T19:00:00Z")
			if got := listTools(t, cs); strings.Join(got, ",") != "read_file,search" {
				t.Errorf("tools/list after expiry = %v", got)
			}
			if _, err := callTool(cs, "search"); err != nil {
				t.Errorf("search after the other grant expired: %v", err)
			}

			var refused []string
			for _, d := range f.log.list() {
				if d.Verdict != agenttls.VerdictDenied || d.Protocol != agenttls.ProtocolMCP || d.Local != workerID || d.Peer != plannerID ||
					d.Method != "tools/call" || !d.Time.Equal(f.clock.Now()) && !d.Time.Equal(grantStart) || len(d.Policies) != 1 || len(d.Rules) == 0 {
					t.Errorf("decision %+v", d)
				}
				refused = append(refused, d.Tool)
			}
			if strings.Join(refused, ",") != "admin,delete_records" {
				t.Errorf("decision log holds %v, want admin then delete_records", refused)
			}
			close(f.calls)
			var ran []string
			for c := range f.calls {
				ran = append(ran, c)
			}
			if slices.Contains(ran, "admin") || strings.Count(strings.Join(ran, ","), "delete_records") != 2 {
				t.Errorf("the server ran %v", ran)
			}

			// The outsider is refused at the handshake: no session, no tools.
			if _, err := f.connect(t, f.outsider); err == nil {
				t.Error("the outsider connected")
			}
		})
	}
}

// TestMCPAuditMode: in Audit mode a call the rules do not allow runs, and
// the decision log says it would have been refused.
func TestMCPAuditMode(t *testing.T) {
	f := newMCPFixture(t, agenttls.ModeAudit, false)
	cs, err := f.connect(t, f.planner)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := callTool(cs, "admin"); err != nil || out != "admin done" {
		t.Fatalf("audit mode: %q, %v", out, err)
	}
	if got := listTools(t, cs); len(got) != 4 {
		t.Errorf("tools/list in audit mode = %v, want all four", got)
	}
	records := f.log.list()
	if len(records) != 1 || records[0].Verdict != agenttls.VerdictAudited || records[0].Tool != "admin" {
		t.Errorf("decision log %+v", records)
	}
}

// TestMCPBodyAndHeaders drives the handler with raw JSON-RPC, as a client
// older than the 2026-07-28 revision does (body only), and as one that
// sends the standard headers; headers that contradict the body, and bodies
// that could be read two ways, are refused.
func TestMCPBodyAndHeaders(t *testing.T) {
	f := newMCPFixture(t, agenttls.ModeEnforce, true)
	client := f.planner.NewHTTPClient()
	post := func(body string, headers ...string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, f.url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	call := func(tool string) string {
		return `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"` + tool + `","arguments":{}}}`
	}
	for name, tc := range map[string]struct {
		body    string
		headers []string
		status  int
		want    string
	}{
		"body only, refused": {call("admin"), nil, 200, `"code":-32001`},
		"headers, refused":   {call("admin"), []string{"Mcp-Method", "tools/call", "Mcp-Name", "admin"}, 200, `"code":-32001`},
		"a header naming an allowed tool for a refused body": {call("admin"), []string{"Mcp-Method", "tools/call", "Mcp-Name", "search"}, 400,
			`does not name the tool of the body`},
		"a method header that lies":              {call("admin"), []string{"Mcp-Method", "ping"}, 400, `header says \"ping\"`},
		"base64 header":                          {call("admin"), []string{"Mcp-Method", "tools/call", "Mcp-Name", "=?base64?YWRtaW4=?="}, 200, `"code":-32001`},
		"a key twice":                            {`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","name":"admin"}}`, nil, 400, "same key twice"},
		"a key twice in another case":            {`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","Name":"admin"}}`, nil, 400, "same key twice"},
		"a method twice":                         {`{"jsonrpc":"2.0","id":7,"method":"ping","Method":"tools/call","params":{"name":"admin"}}`, nil, 400, "same key twice"},
		"a batch with a refused call is refused": {`[` + call("search") + `,` + strings.Replace(call("admin"), `"id":7`, `"id":8`, 1) + `]`, nil, 200, `"id":8`},
		"not JSON":                               {`{"jsonrpc":`, nil, 400, "unreadable JSON-RPC message"},
	} {
		t.Run(name, func(t *testing.T) {
			status, body := post(tc.body, tc.headers...)
			if status != tc.status || !strings.Contains(body, tc.want) {
				t.Errorf("status %d, body %s; want %d with %q", status, body, tc.status, tc.want)
			}
		})
	}
	select {
	case c := <-f.calls:
		t.Errorf("the server ran %s", c)
	default:
	}
}

// TestMCPPolicyV1 keeps today's meaning: a v1 policy.json allows the whole
// peer, every tool included.
func TestMCPPolicyV1(t *testing.T) {
	ca := newCA(t, tdLocal)
	worker := newIdentity(t, ca, workerID, ingressOnly(workerID, "from-planner", agenttls.ModeEnforce, plannerID), nil).source(t)
	if p := worker.Snapshot().Policy(); p.Version != agenttls.PolicySchemaVersion {
		t.Fatalf("version %s", p.Version)
	}
	a := worker.Snapshot().Policy().Ingress.AccessAt(plannerID, time.Now())
	if !a.Whole || !a.AllowsTool("delete_records") || !a.AllowsSkill("anything") {
		t.Errorf("v1 access %+v", a)
	}
	if a := worker.Snapshot().Policy().Ingress.AccessAt(outsiderID, time.Now()); a.Connect() || a.AllowsTool("search") {
		t.Errorf("outsider access %+v", a)
	}
}

// TestPolicyV2Parsing: what ParsePolicy accepts and refuses in v2.
func TestPolicyV2Parsing(t *testing.T) {
	base := func(mutate func(p *agenttls.Policy)) []byte {
		p := toolPolicy(agenttls.ModeEnforce)
		p.TrustDomains = map[string][]string{}
		mutate(p)
		b, _ := json.Marshal(p)
		return b
	}
	for name, tc := range map[string]struct {
		json []byte
		want string
	}{
		"v2":                    {base(func(*agenttls.Policy) {}), ""},
		"grants in v1":          {base(func(p *agenttls.Policy) { p.Version = agenttls.PolicySchemaVersion }), "grants need version"},
		"v3":                    {base(func(p *agenttls.Policy) { p.Version = "agentmesh.dev/policy/v3" }), "not supported"},
		"bad expiry":            {base(func(p *agenttls.Policy) { p.Ingress.Grants[1].ExpiresAt = "tomorrow" }), "expiresAt"},
		"bad tool":              {base(func(p *agenttls.Policy) { p.Ingress.Grants[0].Protocols.MCP.Tools = []string{"a*b"} }), "not a tool name"},
		"bad skill":             {base(func(p *agenttls.Policy) { p.Ingress.Grants[0].Protocols.A2A.Skills = []string{"a b"} }), "not a skill ID"},
		"bad grant peer":        {base(func(p *agenttls.Policy) { p.Ingress.Grants[0].Prefixes = []string{"spiffe://cluster.local/ns"} }), "does not end in"},
		"unnamed grant":         {base(func(p *agenttls.Policy) { p.Ingress.Grants[0].Rule = "" }), "must name the rule"},
		"non-canonical grantee": {base(func(p *agenttls.Policy) { p.Ingress.Grants[0].SPIFFEIDs = []string{"spiffe://cluster.local/a/../b"} }), "spiffeIDs"},
	} {
		t.Run(name, func(t *testing.T) {
			p, err := agenttls.ParsePolicy(tc.json)
			switch {
			case tc.want == "" && err != nil:
				t.Fatal(err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want %q", err, tc.want)
			case tc.want == "" && !p.Ingress.Grants[1].ExpiryTime().Equal(grantExpiry):
				t.Errorf("expiry %v", p.Ingress.Grants[1].ExpiryTime())
			}
		})
	}
}

// TestGrantExpiryAtTheHandshake: a peer allowed only by an expiring grant
// is refused at the handshake from the expiry on, with a stale policy.json.
func TestGrantExpiryAtTheHandshake(t *testing.T) {
	ca := newCA(t, tdLocal)
	clock := &fakeClock{now: grantStart}
	p := ingressOnly(workerID, "temp", agenttls.ModeEnforce)
	p.Version = agenttls.PolicySchemaVersionV2
	p.Ingress.Grants = []agenttls.Grant{{Policy: "temp", Rule: "ingress[0]", AllowAll: true, SPIFFEIDs: []string{}, Prefixes: []string{},
		ExpiresAt: grantExpiry.Format(time.RFC3339)}}
	worker := newIdentity(t, ca, workerID, p, nil).source(t, agenttls.WithClock(clock.Now))
	planner := newIdentity(t, ca, plannerID, nil, map[spiffeid.TrustDomain][]*x509.Certificate{tdLocal: {ca.Root}}).source(t)
	srv := serve(t, worker.ServerTLSConfig())
	if _, err := dial(t, srv.addr, planner.ClientTLSConfig()); err != nil {
		t.Fatalf("before expiry: %v", err)
	}
	srv.next(t)
	clock.Set(grantExpiry)
	if _, err := dial(t, srv.addr, planner.ClientTLSConfig()); err == nil {
		t.Fatal("the handshake passed at the grant's expiry")
	}
	r := srv.next(t)
	if r.err == nil {
		t.Fatal("the server accepted")
	}
	mustContain(t, r.err.Error(), "does not allow spiffe://cluster.local/ns/agents/agent/planner", "temp ingress[0] expired at 2026-12-04T19:00:00Z")
}

// TestMCPFiltersEventStreams: tools/list results are filtered in event
// streams written in pieces, on POST and on GET (a stream may replay
// responses), and other events pass unchanged.
func TestMCPFiltersEventStreams(t *testing.T) {
	ca := newCA(t, tdLocal)
	worker := newIdentity(t, ca, workerID, toolPolicy(agenttls.ModeEnforce), nil).source(t)
	planner := issue(t, ca, plannerID)
	list := `{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"search"},{"name":"admin"},{"name":"read_x"}],"nextCursor":"c"}}`
	other := `{"jsonrpc":"2.0","method":"notifications/progress","params":{"tools":[{"name":"admin"}]}}`
	server := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		half := len(list) / 2
		_, _ = io.WriteString(w, "id: 1\nevent: message\ndata: "+list[:half])
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, list[half:]+"\n\nid: 2\ndata: "+other+"\n\n")
	})
	h := worker.MCPHandler(server, agenttls.WithDecisionHook(func(context.Context, agenttls.DecisionRecord) {}))
	for _, method := range []string{http.MethodPost, http.MethodGet} {
		req, _ := http.NewRequest(method, "https://worker/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":3,"method":"tools/list"}`))
		req.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{planner.Cert}}
		w := newFlushRecorder()
		h.ServeHTTP(w, req)
		got := w.String()
		mustContain(t, got, "id: 1\nevent: message\ndata: ", `{"name":"search"}`, `{"name":"read_x"}`, `"nextCursor":"c"`, "id: 2\ndata: "+other+"\n\n")
		if strings.Contains(strings.Split(got, "id: 2")[0], "admin") {
			t.Errorf("%s: admin is listed:\n%s", method, got)
		}
		if w.flushes == 0 {
			t.Errorf("%s: the stream was never flushed", method)
		}
	}
}

type flushRecorder struct {
	header  http.Header
	mu      sync.Mutex
	b       strings.Builder
	flushes int
}

func newFlushRecorder() *flushRecorder { return &flushRecorder{header: http.Header{}} }

func (f *flushRecorder) Header() http.Header { return f.header }
func (f *flushRecorder) WriteHeader(int)     {}
func (f *flushRecorder) Flush()              { f.mu.Lock(); f.flushes++; f.mu.Unlock() }
func (f *flushRecorder) String() string      { f.mu.Lock(); defer f.mu.Unlock(); return f.b.String() }
func (f *flushRecorder) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.b.Write(p)
}

// TestSlogDecisionHook: the default decision log is one Warn record with
// every field of the decision.
func TestSlogDecisionHook(t *testing.T) {
	var buf logBuffer
	hook := agenttls.SlogDecisionHook(slog.New(slog.NewJSONHandler(&buf, nil)))
	at := grantExpiry.Add(5 * time.Second)
	hook(context.Background(), agenttls.DecisionRecord{Time: at, Local: workerID, Peer: plannerID, Protocol: agenttls.ProtocolMCP,
		Method: "tools/call", Tool: "delete_records", Policies: []string{"worker-tools"}, Rules: []string{"worker-tools ingress[1]: expired at x"},
		Verdict: agenttls.VerdictDenied, Reason: "refused"})
	var rec map[string]any
	if err := json.Unmarshal([]byte(buf.String()), &rec); err != nil {
		t.Fatalf("%v: %s", err, buf.String())
	}
	want := map[string]any{"time": at.Format(time.RFC3339), "level": "WARN", "msg": "agentmesh: request refused by policy",
		"spiffeID": workerID.String(), "peer": plannerID.String(), "protocol": "mcp", "method": "tools/call", "tool": "delete_records",
		"verdict": "denied", "reason": "refused"}
	for k, v := range want {
		if rec[k] != v {
			t.Errorf("%s = %v, want %v", k, rec[k], v)
		}
	}
	if p, _ := rec["policies"].([]any); len(p) != 1 || p[0] != "worker-tools" {
		t.Errorf("policies %v", rec["policies"])
	}
	if r, _ := rec["rules"].([]any); len(r) != 1 {
		t.Errorf("rules %v", rec["rules"])
	}
	if _, ok := rec["skill"]; ok {
		t.Error("an empty skill is logged")
	}
}

// TestDecideWithGrants: Decide (the handshake's evaluation, and kubectl
// agentmesh explain's) counts a grant until its expiry, and Check agrees.
func TestDecideWithGrants(t *testing.T) {
	src := toolPolicy(agenttls.ModeEnforce)
	src.TrustDomains = map[string][]string{}
	p, err := agenttls.ParsePolicy(mustJSON(t, src))
	if err != nil {
		t.Fatal(err)
	}
	d := p.DecideAt(agenttls.Ingress, plannerID, grantStart)
	if !d.Allowed || d.Match == nil || d.Match.Kind != agenttls.MatchGrant || d.Match.Value != "worker-tools ingress[0]" {
		t.Errorf("planner: %+v", d)
	}
	d = p.DecideAt(agenttls.Ingress, outsiderID, grantStart)
	if d.Allowed || d.Admitted || !strings.Contains(d.Reason, "does not allow "+outsiderID.String()) {
		t.Errorf("outsider: %+v", d)
	}
	if err := p.CheckAt(agenttls.Ingress, outsiderID, grantStart); err == nil || err.Error() != d.Reason {
		t.Errorf("Check %v, Decide %q", err, d.Reason)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
