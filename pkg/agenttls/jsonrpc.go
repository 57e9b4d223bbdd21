package agenttls

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// JSON-RPC error codes of refusals.
const (
	// CodeForbidden is the JSON-RPC error code of a request that the policy
	// refuses: a tool or skill the peer may not use.
	CodeForbidden = -32001
	// codeInvalidRequest is JSON-RPC's "Invalid Request".
	codeInvalidRequest = -32600
)

// rpcMessage is one JSON-RPC message as the handlers read it.
type rpcMessage struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
}

func (m *rpcMessage) isRequest() bool {
	return m.Method != "" && len(m.ID) > 0 && string(m.ID) != "null"
}

// errAmbiguous is a JSON object with a key twice (also when they differ
// only in case): JSON parsers disagree on which one counts, so a message
// that the handler and the server behind it could read differently is
// refused.
var errAmbiguous = errors.New("a JSON object has the same key twice")

// checkKeys refuses an object that repeats a key, case-insensitively. Only
// the top level of raw is checked; nil or non-object input passes.
func checkKeys(raw []byte) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return err
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, ok := tok.(string)
		if !ok {
			return errors.New("object key is not a string")
		}
		k := strings.ToLower(key)
		if seen[k] {
			return fmt.Errorf("%w: %q", errAmbiguous, key)
		}
		seen[k] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	return nil
}

// parseMessages parses a request body: one JSON-RPC message or a batch.
// Every message and its params must be unambiguous objects.
func parseMessages(body []byte) (msgs []rpcMessage, batch bool, err error) {
	body = bytes.TrimSpace(body)
	var raws []json.RawMessage
	if len(body) > 0 && body[0] == '[' {
		batch = true
		if err := json.Unmarshal(body, &raws); err != nil {
			return nil, true, err
		}
	} else {
		raws = []json.RawMessage{body}
	}
	for _, raw := range raws {
		if err := checkKeys(raw); err != nil {
			return nil, batch, err
		}
		var m rpcMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, batch, err
		}
		if err := checkKeys(m.Params); err != nil {
			return nil, batch, err
		}
		msgs = append(msgs, m)
	}
	return msgs, batch, nil
}

// rpcError is a JSON-RPC error response.
type rpcError struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Error   rpcErrorBody    `json:"error"`
}

type rpcErrorBody struct {
	Code    int        `json:"code"`
	Message string     `json:"message"`
	Data    *errorData `json:"data,omitempty"`
}

// errorData is the data of a refusal, for programs.
type errorData struct {
	SPIFFEID string   `json:"spiffeID"`
	Peer     string   `json:"peer"`
	Tool     string   `json:"tool,omitempty"`
	Skill    string   `json:"skill,omitempty"`
	Policies []string `json:"policies"`
	Rules    []string `json:"rules"`
}

func newRPCError(id json.RawMessage, code int, msg string, data *errorData) rpcError {
	if len(id) == 0 {
		id = json.RawMessage("null")
	}
	return rpcError{JSONRPC: "2.0", ID: id, Error: rpcErrorBody{Code: code, Message: msg, Data: data}}
}

// writeJSON answers with a JSON-RPC error (or a batch of them) and status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "agentmesh: cannot encode the error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// readBody reads the request body up to limit and puts it back for the
// next handler. It returns false after answering when the body is too
// large or unreadable.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	if r.Body == nil {
		return nil, true
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	_ = r.Body.Close()
	if err != nil {
		writeJSON(w, http.StatusBadRequest, newRPCError(nil, codeInvalidRequest, "agentmesh: reading the request: "+err.Error(), nil))
		return nil, false
	}
	if int64(len(body)) > limit {
		writeJSON(w, http.StatusRequestEntityTooLarge, newRPCError(nil, codeInvalidRequest,
			fmt.Sprintf("agentmesh: the request body is over the limit of %d bytes", limit), nil))
		return nil, false
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	return body, true
}

// filterWriter rewrites JSON-RPC messages of a response on their way out:
// a whole application/json body (one message or a batch), or each event of
// a text/event-stream as it is flushed. Other responses pass unchanged.
type filterWriter struct {
	http.ResponseWriter
	rewrite func(msg []byte) []byte
	mode    int // 0 undecided, 1 JSON (buffered), 2 SSE (per event), 3 pass
	buf     bytes.Buffer
	status  int
}

const (
	modeUndecided = iota
	modeJSON
	modeSSE
	modePass
)

func (f *filterWriter) Unwrap() http.ResponseWriter { return f.ResponseWriter }

func (f *filterWriter) WriteHeader(status int) {
	if f.mode != modeUndecided {
		return
	}
	ct := f.Header().Get("Content-Type")
	switch {
	case status == http.StatusOK && strings.HasPrefix(ct, "application/json"):
		f.mode, f.status = modeJSON, status
		// Written with the body, once its length is known.
		return
	case status == http.StatusOK && strings.HasPrefix(ct, "text/event-stream"):
		f.mode = modeSSE
		f.Header().Del("Content-Length")
	default:
		f.mode = modePass
	}
	f.ResponseWriter.WriteHeader(status)
}

func (f *filterWriter) Write(p []byte) (int, error) {
	if f.mode == modeUndecided {
		f.WriteHeader(http.StatusOK)
	}
	switch f.mode {
	case modeJSON:
		return f.buf.Write(p)
	case modeSSE:
		f.buf.Write(p)
		if err := f.flushEvents(); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return f.ResponseWriter.Write(p)
}

// Flush implements http.Flusher: complete events go out now.
func (f *filterWriter) Flush() {
	if f.mode == modeSSE {
		_ = f.flushEvents()
	}
	if fl, ok := f.ResponseWriter.(http.Flusher); ok && f.mode != modeJSON {
		fl.Flush()
	}
}

// flushEvents writes out every complete event in buf, rewritten.
func (f *filterWriter) flushEvents() error {
	for {
		data := f.buf.Bytes()
		end, sep := bytes.Index(data, []byte("\n\n")), 2
		if i := bytes.Index(data, []byte("\r\n\r\n")); i >= 0 && (end < 0 || i < end) {
			end, sep = i, 4
		}
		if end < 0 {
			return nil
		}
		event := rewriteEvent(data[:end], f.rewrite)
		f.buf.Next(end + sep)
		if _, err := f.ResponseWriter.Write(append(event, '\n', '\n')); err != nil {
			return err
		}
	}
}

// rewriteEvent rewrites the data of one SSE event, keeping its other
// fields (id, event, retry).
func rewriteEvent(event []byte, rewrite func([]byte) []byte) []byte {
	var out bytes.Buffer
	var data [][]byte
	sc := bufio.NewScanner(bytes.NewReader(event))
	sc.Buffer(make([]byte, 0, 64<<10), 64<<20)
	for sc.Scan() {
		line := bytes.TrimSuffix(sc.Bytes(), []byte("\r"))
		if d, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			data = append(data, bytes.TrimPrefix(d, []byte(" ")))
			continue
		}
		out.Write(line)
		out.WriteByte('\n')
	}
	if len(data) > 0 {
		msg := rewrite(bytes.Join(data, []byte("\n")))
		for _, l := range bytes.Split(msg, []byte("\n")) {
			out.WriteString("data: ")
			out.Write(l)
			out.WriteByte('\n')
		}
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\n"))
}

// finish writes a buffered JSON body, rewritten, or what is left of an
// event stream.
func (f *filterWriter) finish() {
	switch f.mode {
	case modeJSON:
		body := rewriteJSONBody(f.buf.Bytes(), f.rewrite)
		f.Header().Set("Content-Length", strconv.Itoa(len(body)))
		f.ResponseWriter.WriteHeader(f.status)
		_, _ = f.ResponseWriter.Write(body)
	case modeSSE:
		_ = f.flushEvents()
		if f.buf.Len() > 0 {
			_, _ = f.ResponseWriter.Write(rewriteEvent(f.buf.Bytes(), f.rewrite))
		}
	}
}

// rewriteJSONBody rewrites one message or each message of a batch.
func rewriteJSONBody(body []byte, rewrite func([]byte) []byte) []byte {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) > 0 && trimmed[0] == '[' {
		var msgs []json.RawMessage
		if err := json.Unmarshal(trimmed, &msgs); err != nil {
			return body
		}
		for i, m := range msgs {
			msgs[i] = rewrite(m)
		}
		b, err := json.Marshal(msgs)
		if err != nil {
			return body
		}
		return b
	}
	return rewrite(body)
}

// filterList rewrites the JSON-RPC response msg when match accepts its id:
// the array result[key] keeps the elements whose field idField keep
// accepts. Anything else is returned unchanged.
func filterList(msg []byte, match func(id json.RawMessage) bool, key, idField string, keep func(string) bool) []byte {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(msg, &m); err != nil {
		return msg
	}
	res, ok := m["result"]
	if !ok || !match(m["id"]) {
		return msg
	}
	filtered, changed := filterArray(res, key, idField, keep)
	if !changed {
		return msg
	}
	m["result"] = filtered
	b, err := json.Marshal(m)
	if err != nil {
		return msg
	}
	return b
}

// filterArray keeps the elements of obj[key] whose idField ("name" or
// "id") keep accepts; an element that does not parse is left out.
func filterArray(obj json.RawMessage, key, idField string, keep func(string) bool) (json.RawMessage, bool) {
	var o map[string]json.RawMessage
	if err := json.Unmarshal(obj, &o); err != nil {
		return obj, false
	}
	raw, ok := o[key]
	if !ok {
		return obj, false
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return obj, false
	}
	kept := make([]json.RawMessage, 0, len(items))
	for _, it := range items {
		var item struct {
			Name string `json:"name"`
			ID   string `json:"id"`
		}
		if json.Unmarshal(it, &item) != nil {
			continue
		}
		name := item.Name
		if idField == "id" {
			name = item.ID
		}
		if keep(name) {
			kept = append(kept, it)
		}
	}
	b, err := json.Marshal(kept)
	if err != nil {
		return obj, false
	}
	o[key] = b
	out, err := json.Marshal(o)
	if err != nil {
		return obj, false
	}
	return out, true
}

// sameID compares JSON-RPC ids by their compact encoding.
func sameID(a, b json.RawMessage) bool {
	var ca, cb bytes.Buffer
	if json.Compact(&ca, a) != nil || json.Compact(&cb, b) != nil {
		return false
	}
	return bytes.Equal(ca.Bytes(), cb.Bytes())
}
