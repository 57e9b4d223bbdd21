package agenttls_test

import (
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

// agentCard is an A2A Agent Card (A2A 1.0 JSON, camelCase) with three
// skills.
const agentCard = `{"name":"worker","description":"summarizes and translates","version":"1.0.0",` +
	`"supportedInterfaces":[{"url":"https://worker.agents.svc/a2a","protocolBinding":"JSONRPC","protocolVersion":"1.0"}],` +
	`"capabilities":{"streaming":true},"defaultInputModes":["text/plain"],"defaultOutputModes":["text/plain"],` +
	`"skills":[{"id":"summarize","name":"Summarize","description":"","tags":["text"]},` +
	`{"id":"translate","name":"Translate","description":"","tags":["text"]},` +
	`{"id":"admin","name":"Admin","description":"","tags":["ops"]}]}`

// a2aServer is a minimal A2A server on the wire format of the
// specification: the Agent Card at the well-known path, and JSON-RPC
// message sending (1.0 and 0.3 method names) that answers with a Message.
func a2aServer(ran chan<- string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/agent-card.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, agentCard)
	})
	mux.HandleFunc("POST /a2a", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Params struct {
				Message struct {
					Metadata map[string]string `json:"metadata"`
				} `json:"message"`
			} `json:"params"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		ran <- req.Method + " " + req.Params.Message.Metadata["skillId"]
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"jsonrpc": "2.0", "id": req.ID, "result": map[string]any{
			"message": map[string]any{"messageId": "m2", "role": "ROLE_AGENT", "parts": []any{map[string]any{"text": "done"}}},
		}})
	})
	return mux
}

// TestA2ASkillsByPeer: the planner's Agent Card lists only summarize, its
// message for summarize runs and its message for admin (or for no skill)
// is refused with a JSON-RPC error naming the rule; an agent whose rules
// are whole-peer sees the whole card.
func TestA2ASkillsByPeer(t *testing.T) {
	ca := newCA(t, tdLocal)
	clock := &fakeClock{now: grantStart}
	records := &decisions{}
	p := toolPolicy(agenttls.ModeEnforce)
	p.Ingress.SPIFFEIDs = []string{auditorLocal.String()}
	worker := newIdentity(t, ca, workerID, p, nil).source(t, agenttls.WithClock(clock.Now))
	planner := newIdentity(t, ca, plannerID, nil, nil).source(t)
	auditor := newIdentity(t, ca, auditorLocal, nil, nil).source(t)
	ran := make(chan string, 16)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := worker.NewServer(ln.Addr().String(), worker.A2AHandler(a2aServer(ran), agenttls.WithDecisionHook(records.hook)))
	srv.ErrorLog = log.New(io.Discard, "", 0)
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	base := "https://" + ln.Addr().String()

	card := func(src *agenttls.Source) []string {
		t.Helper()
		resp, err := src.NewHTTPClient().Get(base + "/.well-known/agent-card.json")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var c struct {
			Name   string `json:"name"`
			Skills []struct {
				ID string `json:"id"`
			} `json:"skills"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || c.Name != "worker" {
			t.Fatalf("agent card: %v %+v", err, c)
		}
		var ids []string
		for _, s := range c.Skills {
			ids = append(ids, s.ID)
		}
		return ids
	}
	if got := card(planner); strings.Join(got, ",") != "summarize" {
		t.Errorf("the planner's Agent Card lists %v, want summarize only", got)
	}
	if got := card(auditor); strings.Join(got, ",") != "summarize,translate,admin" {
		t.Errorf("a whole-peer caller's Agent Card lists %v", got)
	}

	send := func(src *agenttls.Source, method, skill string) map[string]json.RawMessage {
		t.Helper()
		md := ""
		if skill != "" {
			md = `,"metadata":{"skillId":"` + skill + `"}`
		}
		body := `{"jsonrpc":"2.0","id":"r1","method":"` + method + `","params":{"message":{"messageId":"m1","role":"ROLE_USER","parts":[{"text":"hi"}]` + md + `}}}`
		resp, err := src.NewHTTPClient().Post(base+"/a2a", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]json.RawMessage
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, method := range []string{"SendMessage", "message/send"} {
		if out := send(planner, method, "summarize"); out["result"] == nil {
			t.Errorf("%s summarize: %s", method, out["error"])
		}
	}
	for _, tc := range []struct{ method, skill, want string }{
		{"SendMessage", "admin", `A2A skill \"admin\" is not allowed for spiffe://cluster.local/ns/agents/agent/planner`},
		{"SendStreamingMessage", "translate", `A2A skill \"translate\"`},
		{"message/send", "", "names no skill"},
	} {
		out := send(planner, tc.method, tc.skill)
		if out["result"] != nil || !strings.Contains(string(out["error"]), tc.want) || !strings.Contains(string(out["error"]), "worker-tools ingress[0]: skills summarize") ||
			!strings.Contains(string(out["error"]), `"code":-32001`) || string(out["id"]) != `"r1"` {
			t.Errorf("%s %q: %s", tc.method, tc.skill, out["error"])
		}
	}
	if out := send(auditor, "SendMessage", "admin"); out["result"] == nil {
		t.Errorf("a whole-peer caller: %s", out["error"])
	}
	close(ran)
	var got []string
	for r := range ran {
		got = append(got, r)
	}
	if strings.Join(got, ",") != "SendMessage summarize,message/send summarize,SendMessage admin" {
		t.Errorf("the server ran %v", got)
	}
	var skills []string
	for _, d := range records.list() {
		if d.Protocol != agenttls.ProtocolA2A || d.Verdict != agenttls.VerdictDenied || d.Peer != plannerID || !d.Time.Equal(grantStart) {
			t.Errorf("decision %+v", d)
		}
		skills = append(skills, d.Method+" "+d.Skill)
	}
	if !slices.Equal(skills, []string{"SendMessage admin", "SendStreamingMessage translate", "message/send "}) {
		t.Errorf("decision log %v", skills)
	}
}

// TestA2AOtherPaths: the extended card over JSON-RPC is filtered, the
// HTTP+JSON binding's message:send is authorized like SendMessage, and
// Audit mode serves the whole card and lets a message through, with a
// decision record.
func TestA2AOtherPaths(t *testing.T) {
	ca := newCA(t, tdLocal)
	planner := newIdentity(t, ca, plannerID, nil, nil).source(t)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /a2a", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":`+string(req.ID)+`,"result":`+agentCard+`}`)
	})
	mux.HandleFunc("POST /v1/message:send", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"message":{"messageId":"m2","role":"ROLE_AGENT","parts":[{"text":"done"}]}}`)
	})
	mux.HandleFunc("GET /.well-known/agent-card.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, agentCard)
	})
	start := func(mode agenttls.Mode, clock *fakeClock) (string, *decisions) {
		records := &decisions{}
		worker := newIdentity(t, ca, workerID, toolPolicy(mode), nil).source(t, agenttls.WithClock(clock.Now))
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := worker.NewServer(ln.Addr().String(), worker.A2AHandler(mux, agenttls.WithDecisionHook(records.hook)))
		srv.ErrorLog = log.New(io.Discard, "", 0)
		go func() { _ = srv.ServeTLS(ln, "", "") }()
		t.Cleanup(func() { _ = srv.Close() })
		return "https://" + ln.Addr().String(), records
	}
	do := func(method, url, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := planner.NewHTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	clock := &fakeClock{now: grantStart}
	base, _ := start(agenttls.ModeEnforce, clock)
	_, card := do(http.MethodPost, base+"/a2a", `{"jsonrpc":"2.0","id":5,"method":"GetExtendedAgentCard","params":{}}`)
	if !strings.Contains(card, `"id":"summarize"`) || strings.Contains(card, `"id":"admin"`) || !strings.Contains(card, `"id":5`) {
		t.Errorf("extended card: %s", card)
	}
	if _, out := do(http.MethodPost, base+"/v1/message:send", `{"message":{"messageId":"m1","role":"ROLE_USER","parts":[{"text":"hi"}]},"metadata":{"skillId":"admin"}}`); !strings.Contains(out, `A2A skill \"admin\" is not allowed`) {
		t.Errorf("REST message:send admin: %s", out)
	}
	if _, out := do(http.MethodPost, base+"/v1/message:send", `{"message":{"messageId":"m1","role":"ROLE_USER","parts":[{"text":"hi"}]},"metadata":{"skillId":"summarize"}}`); !strings.Contains(out, `"messageId":"m2"`) {
		t.Errorf("REST message:send summarize: %s", out)
	}
	audit, records := start(agenttls.ModeAudit, &fakeClock{now: grantStart})
	if _, body := do(http.MethodGet, audit+"/.well-known/agent-card.json", ""); !strings.Contains(body, `"id":"admin"`) {
		t.Errorf("audit mode card: %s", body)
	}
	if _, out := do(http.MethodPost, audit+"/v1/message:send", `{"message":{"messageId":"m1","role":"ROLE_USER","parts":[{"text":"hi"}]},"metadata":{"skillId":"admin"}}`); !strings.Contains(out, `"messageId":"m2"`) {
		t.Errorf("audit mode message: %s", out)
	}
	if got := records.list(); len(got) != 1 || got[0].Verdict != agenttls.VerdictAudited || got[0].Skill != "admin" || got[0].Method != "SendMessage" {
		t.Errorf("audit decisions %+v", got)
	}
}
