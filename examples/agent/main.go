// Command agent is agentmesh's example agent, run by the sample Pods and
// the end-to-end tests (image ghcr.io/agentmesh/example-agent, built by
// `make images`): a Go program that gets its identity from the files
// agentmesh injects (through pkg/agenttls, no agentmesh code of its own)
// and either serves HTTPS to the peers its policy allows, or calls a server
// over and over, on a connection it keeps and on a new connection each time,
// writing one JSON line per request to stdout. With --mcp-listen it is an
// MCP server whose tools the policy grants per peer (pkg/agenttls's
// MCPHandler), with --mcp-call an MCP client calling tools over and over.
//
// Its image has no shell, so `agent ls DIR` and `agent cat FILE` stand in
// for them under `kubectl exec`.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

// Reply is what the server answers: who it is and whom it saw.
type Reply struct {
	Server       string `json:"server"`
	ServerSerial string `json:"serverSerial"`
	Client       string `json:"client"`
	ClientSerial string `json:"clientSerial"`
}

// Result is one request of a client, as a JSON line on stdout.
type Result struct {
	Time time.Time `json:"time"`
	Conn string    `json:"conn"` // "kept", "new" or "mcp"
	// Tool is the MCP tool called; empty on the line of a new MCP session.
	Tool string `json:"tool,omitempty"`
	// Listed is what tools/list showed a new MCP session.
	Listed []string `json:"listed,omitempty"`
	OK     bool     `json:"ok"`
	Error  string   `json:"error,omitempty"`
	Reply  *Reply   `json:"reply,omitempty"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) == 3 {
		switch os.Args[1] {
		case "ls":
			return list(os.Args[2])
		case "cat":
			return show(os.Args[2])
		}
	}
	listen := flag.String("listen", "", "serve HTTPS on this address")
	call := flag.String("call", "", "call this https:// URL repeatedly")
	mcpListen := flag.String("mcp-listen", "", "serve MCP (Streamable HTTP at /mcp) over HTTPS on this address")
	mcpCall := flag.String("mcp-call", "", "call the tools of the MCP server at this https:// URL repeatedly")
	tools := flag.String("tools", "search", "the MCP tools --mcp-call calls, comma-separated")
	interval := flag.Duration("interval", 200*time.Millisecond, "time between two calls")
	flag.Parse()

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	src, err := agenttls.NewSource(agenttls.WithLogger(logger), agenttls.WithPollInterval(time.Second))
	if err != nil {
		return err
	}
	defer func() { _ = src.Close() }()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	switch {
	case *listen != "":
		return serve(ctx, src, *listen, logger)
	case *call != "":
		return callForever(ctx, src, *call, *interval)
	case *mcpListen != "":
		return serveMCP(ctx, src, *mcpListen, logger)
	case *mcpCall != "":
		return callMCP(ctx, src, *mcpCall, strings.Split(*tools, ","), *interval, os.Stdout)
	}
	return errors.New("give --listen, --call, --mcp-listen or --mcp-call")
}

// list prints the entries of dir, as `ls -l` would, without following the
// kubelet's ..data symlink.
func list(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %8d %s", info.Mode(), info.Size(), e.Name())
		if info.Mode()&os.ModeSymlink != 0 {
			if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
				line += " -> " + target
			}
		}
		fmt.Println(line)
	}
	return nil
}

// show copies a file to stdout. Nothing checks what it prints: `cat` on
// tls.key prints the key, as cat would, to whoever may exec in the Pod.
func show(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	_, err = io.Copy(os.Stdout, f)
	return err
}

func serve(ctx context.Context, src *agenttls.Source, addr string, logger *slog.Logger) error {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer, err := agenttls.PeerID(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		rep := Reply{
			Server:       src.ID().String(),
			ServerSerial: fmt.Sprintf("%x", src.Snapshot().Leaf().SerialNumber),
			Client:       peer.String(),
			ClientSerial: fmt.Sprintf("%x", r.TLS.PeerCertificates[0].SerialNumber),
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(rep)
	})
	logger.Info("serving", "addr", addr, "spiffeID", src.ID().String())
	return serveTLS(ctx, src, addr, h, logger)
}

// serveTLS serves h with src's NewServer on addr until ctx ends, then
// shuts down within 5 s. A refused handshake's reason (it names both
// SPIFFE IDs) goes to the log.
func serveTLS(ctx context.Context, src *agenttls.Source, addr string, h http.Handler, logger *slog.Logger) error {
	srv := src.NewServer(addr, h)
	srv.ErrorLog = slog.NewLogLogger(logger.Handler(), slog.LevelWarn)
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.ListenAndServeTLS("", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func callForever(ctx context.Context, src *agenttls.Source, url string, interval time.Duration) error {
	kept := src.NewTransport()
	kept.MaxConnsPerHost = 1
	fresh := src.NewTransport()
	fresh.DisableKeepAlives = true
	clients := map[string]*http.Client{
		"kept": {Transport: kept, Timeout: 5 * time.Second},
		"new":  {Transport: fresh, Timeout: 5 * time.Second},
	}
	enc := json.NewEncoder(os.Stdout)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for _, conn := range []string{"kept", "new"} {
			res := Result{Time: time.Now(), Conn: conn}
			rep, err := get(ctx, clients[conn], url)
			if err != nil {
				res.Error = err.Error()
			} else {
				res.OK, res.Reply = true, rep
			}
			if ctx.Err() != nil {
				return nil
			}
			_ = enc.Encode(res)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func get(ctx context.Context, c *http.Client, url string) (*Reply, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	rep := &Reply{}
	if err := json.Unmarshal(body, rep); err != nil {
		// Not an agent (e.g. openssl s_server): its TLS state says enough.
		return &Reply{}, nil
	}
	return rep, nil
}
