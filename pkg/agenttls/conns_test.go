package agenttls_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
	"github.com/agentmesh/agentmesh/pkg/agenttls/agenttlstest"
)

// startServer serves src's NewServer with opts on 127.0.0.1.
func startServer(t *testing.T, src *agenttls.Source, h http.Handler, opts ...agenttls.TLSOption) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := src.NewServer(ln.Addr().String(), h, opts...)
	srv.ErrorLog = log.New(io.Discard, "", 0)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ServeTLS(ln, "", "")
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return "https://" + ln.Addr().String()
}

var hello = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello") })

// get makes one request and says whether it reused a pooled connection.
func get(t *testing.T, c *http.Client, url string) (reused bool, err error) {
	t.Helper()
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
	})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		return false, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err == nil && string(b) != "hello" {
		err = fmt.Errorf("body %q", b)
	}
	return reused, err
}

func egressOnly(id spiffeid.ID, policy string, ids ...spiffeid.ID) *agenttls.Policy {
	p := agenttlstest.DefaultPolicy(id)
	p.Egress = agenttls.Rules{Mode: agenttls.ModeEnforce, Policies: []string{policy}, SPIFFEIDs: []string{}, Prefixes: []string{}}
	for _, a := range ids {
		p.Egress.SPIFFEIDs = append(p.Egress.SPIFFEIDs, a.String())
	}
	return p
}

// TestRevokedPeersAreDisconnected: a connection made while the policy
// allowed its peer is closed, on the side whose policy changed, once the
// new files are loaded; in Audit mode, and with KeepRevokedConnections, it
// is kept.
func TestRevokedPeersAreDisconnected(t *testing.T) {
	ca := newCA(t, tdLocal)
	cases := []struct {
		name string
		// revoke changes the worker's (server) or the planner's (client)
		// files.
		revoke     func(t *testing.T, worker, planner *identity)
		serverOpts []agenttls.TLSOption
		clientOpts []agenttls.TLSOption
		closes     string // "server", "client" or "" (kept)
		log        string
	}{
		{name: "the server's ingress stops allowing the client", closes: "server",
			revoke: func(t *testing.T, worker, _ *identity) {
				worker.policy = ingressOnly(workerID, "worker-ingress", agenttls.ModeEnforce, outsiderID)
				worker.write(t)
			}, log: "does not allow " + plannerID.String()},
		{name: "the client's egress stops allowing the server", closes: "client",
			revoke: func(t *testing.T, _, planner *identity) {
				planner.policy = egressOnly(plannerID, "planner-egress", outsiderID)
				planner.write(t)
			}, log: "does not allow " + workerID.String()},
		{name: "the client's CA leaves the server's bundle", closes: "server",
			revoke: func(t *testing.T, worker, _ *identity) {
				other := newCA(t, tdLocal)
				worker.bundles = map[spiffeid.TrustDomain][]*x509.Certificate{tdLocal: {other.Root}}
				worker.leaf = issue(t, other, workerID)
				worker.write(t)
			}, log: "does not verify against the CAs of its trust domain"},
		{name: "Audit mode logs and keeps the connection", closes: "",
			revoke: func(t *testing.T, worker, _ *identity) {
				worker.policy = ingressOnly(workerID, "worker-ingress", agenttls.ModeAudit, outsiderID)
				worker.write(t)
			}, log: "let through in audit mode"},
		{name: "KeepRevokedConnections keeps it", closes: "",
			serverOpts: []agenttls.TLSOption{agenttls.KeepRevokedConnections()},
			revoke: func(t *testing.T, worker, _ *identity) {
				worker.policy = ingressOnly(workerID, "worker-ingress", agenttls.ModeEnforce, outsiderID)
				worker.write(t)
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var serverLog logBuffer
			worker := newIdentity(t, ca, workerID, ingressOnly(workerID, "worker-ingress", agenttls.ModeEnforce, plannerID), nil)
			workerSrc := worker.source(t, agenttls.WithLogger(serverLog.logger()), agenttls.WithPollInterval(20*time.Millisecond))
			planner := newIdentity(t, ca, plannerID, nil, nil)
			var clientLog logBuffer
			plannerSrc := planner.source(t, agenttls.WithLogger(clientLog.logger()), agenttls.WithPollInterval(20*time.Millisecond))
			url := startServer(t, workerSrc, hello, tc.serverOpts...)
			client := plannerSrc.NewHTTPClient(tc.clientOpts...)
			defer client.CloseIdleConnections()

			if _, err := get(t, client, url); err != nil {
				t.Fatal(err)
			}
			if reused, err := get(t, client, url); err != nil || !reused {
				t.Fatalf("second request: reused %v, err %v; want the pooled connection", reused, err)
			}
			if n, m := workerSrc.Connections(), plannerSrc.Connections(); n != 1 || m != 1 {
				t.Fatalf("tracked connections: server %d, client %d; want 1 and 1", n, m)
			}
			before := workerSrc.Snapshot()
			beforeClient := plannerSrc.Snapshot()
			tc.revoke(t, worker, planner)
			waitFor(t, "the new files", func() bool {
				return workerSrc.Snapshot() != before || plannerSrc.Snapshot() != beforeClient
			})

			switch tc.closes {
			case "server", "client":
				waitFor(t, "both ends to drop the connection", func() bool {
					return workerSrc.Connections() == 0 && plannerSrc.Connections() == 0
				})
				logs := serverLog.String()
				if tc.closes == "client" {
					logs = clientLog.String()
				}
				mustContain(t, logs, "closing a connection whose peer is no longer allowed", tc.log)
				// And the peer does not get back in with a new one.
				if _, err := get(t, client, url); err == nil {
					t.Error("a new connection was let in after the revocation")
				}
			default:
				// Give a wrong close time to happen.
				time.Sleep(200 * time.Millisecond)
				if reused, err := get(t, client, url); err != nil || !reused {
					t.Fatalf("after the change: reused %v, err %v; want the connection kept", reused, err)
				}
				if tc.log != "" {
					mustContain(t, serverLog.String(), tc.log)
				}
				if strings.Contains(serverLog.String(), "closing a connection") {
					t.Error("a connection was closed")
				}
			}
		})
	}
}

// TestConnectionsHaveABoundedAge: NewServer closes an idle connection at
// its maximum age, lets a busy one finish within the grace, and cuts one
// that is still busy after it.
func TestConnectionsHaveABoundedAge(t *testing.T) {
	ca := newCA(t, tdLocal)
	workerSrc := newIdentity(t, ca, workerID, nil, nil).source(t)
	plannerSrc := newIdentity(t, ca, plannerID, nil, nil).source(t)
	const age = 300 * time.Millisecond // the grace is as long
	url := startServer(t, workerSrc, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil {
			time.Sleep(d)
		}
		fmt.Fprint(w, "hello")
	}), agenttls.WithMaxConnectionAge(age))

	t.Run("idle", func(t *testing.T) {
		client := plannerSrc.NewHTTPClient()
		defer client.CloseIdleConnections()
		if _, err := get(t, client, url); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the idle connection to be closed at its age", func() bool { return workerSrc.Connections() == 0 })
		if reused, err := get(t, client, url); err != nil || reused {
			t.Fatalf("reused %v, err %v; want a new connection", reused, err)
		}
	})
	t.Run("busy within the grace", func(t *testing.T) {
		client := plannerSrc.NewHTTPClient()
		defer client.CloseIdleConnections()
		start := time.Now()
		if _, err := get(t, client, url+"/?sleep=450ms"); err != nil {
			t.Fatalf("a request that ends within the grace failed: %v", err)
		}
		if d := time.Since(start); d < 450*time.Millisecond {
			t.Fatalf("took %s", d)
		}
		waitFor(t, "the connection to be closed once idle", func() bool { return workerSrc.Connections() == 0 })
	})
	t.Run("busy past the grace", func(t *testing.T) {
		client := plannerSrc.NewHTTPClient()
		defer client.CloseIdleConnections()
		if _, err := get(t, client, url+"/?sleep=3s"); err == nil {
			t.Fatal("a request still running past the age and the grace was not cut")
		}
	})
}

// TestRevokedConnectionsDrain: a request in flight when its connection's
// peer stops being allowed finishes, on whichever side the files changed;
// the connection is closed once idle, and on the server a request that
// starts on the draining connection is refused.
func TestRevokedConnectionsDrain(t *testing.T) {
	ca := newCA(t, tdLocal)
	for _, tc := range []struct {
		name   string
		revoke func(t *testing.T, worker, planner *identity)
	}{
		{"the server's ingress stops allowing the client", func(t *testing.T, worker, _ *identity) {
			worker.policy = ingressOnly(workerID, "worker-ingress", agenttls.ModeEnforce, outsiderID)
			worker.write(t)
		}},
		{"the client's egress stops allowing the server", func(t *testing.T, _, planner *identity) {
			planner.policy = egressOnly(plannerID, "planner-egress", outsiderID)
			planner.write(t)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			worker := newIdentity(t, ca, workerID, ingressOnly(workerID, "worker-ingress", agenttls.ModeEnforce, plannerID), nil)
			workerSrc := worker.source(t, agenttls.WithPollInterval(20*time.Millisecond))
			planner := newIdentity(t, ca, plannerID, nil, nil)
			plannerSrc := planner.source(t, agenttls.WithPollInterval(20*time.Millisecond))
			entered, release := make(chan struct{}, 1), make(chan struct{})
			url := startServer(t, workerSrc, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/slow" {
					entered <- struct{}{}
					<-release
				}
				fmt.Fprint(w, "hello")
			}))
			client := plannerSrc.NewHTTPClient()
			defer client.CloseIdleConnections()
			if _, err := get(t, client, url); err != nil {
				t.Fatal(err)
			}
			slow := make(chan error, 1)
			go func() { _, err := get(t, client, url+"/slow"); slow <- err }()
			<-entered
			before, beforeClient := workerSrc.Snapshot(), plannerSrc.Snapshot()
			tc.revoke(t, worker, planner)
			waitFor(t, "the new files", func() bool {
				return workerSrc.Snapshot() != before || plannerSrc.Snapshot() != beforeClient
			})
			// Let a wrong cut happen.
			time.Sleep(150 * time.Millisecond)
			if workerSrc.Snapshot() != before {
				// On the draining connection (HTTP/2, beside the request in
				// flight) a new request is refused.
				resp, err := client.Get(url)
				if err != nil {
					t.Fatalf("a request beside the one in flight: %v", err)
				}
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusMisdirectedRequest || resp.ProtoMajor != 2 {
					t.Errorf("a request that started on the draining connection: %s over HTTP/%d, want 421 over HTTP/2", resp.Status, resp.ProtoMajor)
				}
			}
			close(release)
			if err := <-slow; err != nil {
				t.Errorf("the request in flight at the revocation failed: %v", err)
			}
			waitFor(t, "both ends to drop the connection once idle", func() bool {
				return workerSrc.Connections() == 0 && plannerSrc.Connections() == 0
			})
			if _, err := get(t, client, url); err == nil {
				t.Error("a new connection was let in after the revocation")
			}
		})
	}
}

// TestCARetirementFailsNoRequest: at the end of a CA rotation the retired
// CA leaves the bundles, and the connections made with its certificates
// are revoked, on the server and on the client, while a client sends POST
// requests back to back on its kept connection: none fails (a POST is not
// retried by net/http, so a connection cut under one, or one refused on a
// draining connection, would count).
func TestCARetirementFailsNoRequest(t *testing.T) {
	for _, serverFirst := range []bool{true, false} {
		t.Run(fmt.Sprintf("server first %v", serverFirst), func(t *testing.T) {
			old, next := newCA(t, tdLocal), newCA(t, tdLocal)
			both := map[spiffeid.TrustDomain][]*x509.Certificate{tdLocal: {old.Root, next.Root}}
			worker := newIdentity(t, old, workerID, nil, both)
			planner := newIdentity(t, old, plannerID, nil, both)
			var serverLog logBuffer
			workerSrc := worker.source(t, agenttls.WithLogger(serverLog.logger()), agenttls.WithPollInterval(10*time.Millisecond))
			plannerSrc := planner.source(t, agenttls.WithPollInterval(10*time.Millisecond))
			url := startServer(t, workerSrc, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				fmt.Fprint(w, "hello")
			}))
			client := plannerSrc.NewHTTPClient()
			defer client.CloseIdleConnections()

			stop := make(chan struct{})
			type tally struct{ ok, failed int }
			done := make(chan tally, 1)
			var firstErr error
			go func() {
				var n tally
				for {
					select {
					case <-stop:
						done <- n
						return
					default:
					}
					resp, err := client.Post(url, "application/json", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/call"}`))
					if err == nil {
						b, _ := io.ReadAll(resp.Body)
						_ = resp.Body.Close()
						if resp.StatusCode != http.StatusOK || string(b) != "hello" {
							err = fmt.Errorf("%s: %s", resp.Status, b)
						}
					}
					if err != nil {
						if n.failed == 0 {
							firstErr = err
						}
						n.failed++
						continue
					}
					n.ok++
				}
			}()
			change := func(i *identity, src *agenttls.Source, leaf bool, bundles map[spiffeid.TrustDomain][]*x509.Certificate) {
				before := src.Snapshot()
				if leaf {
					i.leaf = issue(t, next, i.leaf.ID)
				}
				if bundles != nil {
					i.bundles = bundles
				}
				i.write(t)
				waitFor(t, "the new files", func() bool { return src.Snapshot() != before })
				time.Sleep(200 * time.Millisecond)
			}
			time.Sleep(200 * time.Millisecond)
			// Reissued under the next CA; then the old one retires.
			change(worker, workerSrc, true, nil)
			change(planner, plannerSrc, true, nil)
			onlyNext := map[spiffeid.TrustDomain][]*x509.Certificate{tdLocal: {next.Root}}
			if serverFirst {
				change(worker, workerSrc, false, onlyNext)
				change(planner, plannerSrc, false, onlyNext)
			} else {
				change(planner, plannerSrc, false, onlyNext)
				change(worker, workerSrc, false, onlyNext)
			}
			close(stop)
			n := <-done
			t.Logf("%d requests succeeded, %d failed", n.ok, n.failed)
			if n.failed > 0 || n.ok < 100 {
				t.Errorf("%d requests failed (first: %v), %d succeeded", n.failed, firstErr, n.ok)
			}
			if serverFirst {
				mustContain(t, serverLog.String(), "closing a connection whose peer is no longer allowed")
			}
		})
	}
}
