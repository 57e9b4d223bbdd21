package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

// mcpTools are the tools the MCP server mode offers. Which of them a peer
// may call is the policy's business (pkg/agenttls's MCPHandler), not the
// agent's.
var mcpTools = []string{"search", "lookup", "delete_records"}

// peerHeader carries the verified mTLS peer from the HTTP layer to the MCP
// tool handlers (which see the request's headers, not its TLS state). The
// server sets it on every request it passes on, and drops whatever a client
// sent under that name.
const peerHeader = "Agentmesh-Peer-Id"

// serveMCP serves an MCP server (the official MCP Go SDK, Streamable HTTP)
// on addr at /mcp, behind agenttls's MCPHandler: each peer may call the
// tools its policy grants and tools/list shows it only those. Refusals go
// to the decision log on stderr.
func serveMCP(ctx context.Context, src *agenttls.Source, addr string, logger *slog.Logger) error {
	server := mcp.NewServer(&mcp.Implementation{Name: src.ID().String(), Version: "v1"}, nil)
	for _, name := range mcpTools {
		mcp.AddTool(server, &mcp.Tool{Name: name, Description: "the example agent's " + name + " tool"},
			func(_ context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
				rep := Reply{Server: src.ID().String(), ServerSerial: fmt.Sprintf("%x", src.Snapshot().Leaf().SerialNumber)}
				if req.Extra != nil {
					rep.Client = req.Extra.Header.Get(peerHeader)
				}
				b, err := json.Marshal(rep)
				if err != nil {
					return nil, nil, err
				}
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: string(b)}}}, nil, nil
			})
	}
	streamable := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil)
	withPeer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del(peerHeader)
		if peer, err := agenttls.PeerID(r); err == nil {
			r.Header.Set(peerHeader, peer.String())
		}
		streamable.ServeHTTP(w, r)
	})
	mux := http.NewServeMux()
	mux.Handle("/mcp", src.MCPHandler(withPeer, agenttls.WithDecisionHook(agenttls.SlogDecisionHook(logger))))
	logger.Info("serving MCP", "addr", addr, "path", "/mcp", "spiffeID", src.ID().String(), "tools", mcpTools)
	return serveTLS(ctx, src, addr, mux, logger)
}

// callMCP keeps one MCP session with the server at url and calls each of
// tools in turn, every interval, writing one JSON line per call (Conn
// "mcp", Tool the tool) and one per session it opens (Listed: what
// tools/list showed it). A call the server refuses is a failed result with
// the JSON-RPC error; a session that breaks is opened again at the next
// tick.
func callMCP(ctx context.Context, src *agenttls.Source, url string, tools []string, interval time.Duration, out io.Writer) error {
	client := mcp.NewClient(&mcp.Implementation{Name: src.ID().String(), Version: "v1"}, nil)
	// One HTTP/2 connection, kept: the calls are requests on it. No
	// standalone event stream: this client needs no server notifications.
	transport := &mcp.StreamableClientTransport{Endpoint: url, HTTPClient: src.NewHTTPClient(), DisableStandaloneSSE: true}
	enc := json.NewEncoder(out)
	var session *mcp.ClientSession
	defer func() {
		if session != nil {
			_ = session.Close()
		}
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if session == nil {
			res := Result{Time: time.Now(), Conn: "mcp"}
			s, listed, err := openMCP(ctx, client, transport)
			if ctx.Err() != nil {
				return nil
			}
			if err != nil {
				res.Error = err.Error()
			} else {
				session, res.OK, res.Listed = s, true, listed
			}
			_ = enc.Encode(res)
		}
		for _, tool := range tools {
			if session == nil {
				break
			}
			res := Result{Time: time.Now(), Conn: "mcp", Tool: tool}
			rep, err := callTool(ctx, session, tool)
			if ctx.Err() != nil {
				return nil
			}
			if err != nil {
				res.Error = err.Error()
				if !isRPCError(err) {
					_ = session.Close()
					session = nil
				}
			} else {
				res.OK, res.Reply = true, rep
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

func openMCP(ctx context.Context, client *mcp.Client, transport mcp.Transport) (*mcp.ClientSession, []string, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := client.Connect(cctx, transport, nil)
	if err != nil {
		return nil, nil, err
	}
	list, err := s.ListTools(cctx, nil)
	if err != nil {
		_ = s.Close()
		return nil, nil, fmt.Errorf("tools/list: %w", err)
	}
	listed := []string{}
	for _, tool := range list.Tools {
		listed = append(listed, tool.Name)
	}
	slices.Sort(listed)
	return s, listed, nil
}

func callTool(ctx context.Context, s *mcp.ClientSession, tool string) (*Reply, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := s.CallTool(cctx, &mcp.CallToolParams{Name: tool, Arguments: map[string]any{}})
	if err != nil {
		return nil, err
	}
	var text strings.Builder
	for _, c := range res.Content {
		if t, ok := c.(*mcp.TextContent); ok {
			text.WriteString(t.Text)
		}
	}
	if res.IsError {
		return nil, fmt.Errorf("tool error: %s", text.String())
	}
	rep := &Reply{}
	if err := json.Unmarshal([]byte(text.String()), rep); err != nil {
		return nil, fmt.Errorf("tool %s answered %q: %w", tool, text.String(), err)
	}
	return rep, nil
}

// isRPCError reports whether err is the server's JSON-RPC error response
// (a refusal, say): the session is fine.
func isRPCError(err error) bool {
	var rpc *jsonrpc.Error
	return errors.As(err, &rpc)
}
