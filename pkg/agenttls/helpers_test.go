package agenttls_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
	"github.com/agentmesh/agentmesh/pkg/agenttls/agenttlstest"
)

var (
	tdLocal   = spiffeid.RequireTrustDomainFromString("cluster.local")
	tdPartner = spiffeid.RequireTrustDomainFromString("partner.example")
	tdOther   = spiffeid.RequireTrustDomainFromString("other.example")

	workerID   = spiffeid.RequireFromString("spiffe://cluster.local/ns/agents/agent/worker")
	plannerID  = spiffeid.RequireFromString("spiffe://cluster.local/ns/agents/agent/planner")
	outsiderID = spiffeid.RequireFromString("spiffe://cluster.local/ns/agents/agent/outsider")
	auditorID  = spiffeid.RequireFromString("spiffe://partner.example/ns/ops/agent/auditor")

	auditorLocal = spiffeid.RequireFromString("spiffe://cluster.local/ns/ops/agent/auditor")
)

// timeout bounds every wait of these tests.
const timeout = 5 * time.Second

func newCA(t testing.TB, td spiffeid.TrustDomain) *agenttlstest.CA {
	t.Helper()
	ca, err := agenttlstest.NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func issue(t testing.TB, ca *agenttlstest.CA, id spiffeid.ID, opts ...agenttlstest.LeafOption) *agenttlstest.Leaf {
	t.Helper()
	l, err := ca.Issue(id, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// ingressOnly returns the default policy of id with ingress rules that
// allow exactly ids, governed by the named policy.
func ingressOnly(id spiffeid.ID, policy string, mode agenttls.Mode, ids ...spiffeid.ID) *agenttls.Policy {
	p := agenttlstest.DefaultPolicy(id)
	p.Ingress = agenttls.Rules{Mode: mode, Policies: []string{policy}}
	for _, a := range ids {
		p.Ingress.SPIFFEIDs = append(p.Ingress.SPIFFEIDs, a.String())
	}
	return p
}

// identity is the volume of one agent: its writer, and what it last wrote.
type identity struct {
	w       *agenttlstest.AtomicWriter
	leaf    *agenttlstest.Leaf
	policy  *agenttls.Policy
	bundles map[spiffeid.TrustDomain][]*x509.Certificate
}

// newIdentity issues a leaf of ca for id and writes the volume with policy
// (the default policy when nil) and the bundles (ca's root when nil).
func newIdentity(t testing.TB, ca *agenttlstest.CA, id spiffeid.ID, policy *agenttls.Policy,
	bundles map[spiffeid.TrustDomain][]*x509.Certificate, opts ...agenttlstest.LeafOption) *identity {
	t.Helper()
	if policy == nil {
		policy = agenttlstest.DefaultPolicy(id)
	}
	if bundles == nil {
		bundles = map[spiffeid.TrustDomain][]*x509.Certificate{ca.TrustDomain: {ca.Root}}
	}
	w, err := agenttlstest.NewAtomicWriter(filepath.Join(t.TempDir(), "agentmesh"))
	if err != nil {
		t.Fatal(err)
	}
	i := &identity{w: w, leaf: issue(t, ca, id, opts...), policy: policy, bundles: bundles}
	i.write(t)
	return i
}

// write renders and writes the identity's current leaf, policy and bundles.
func (i *identity) write(t testing.TB) {
	t.Helper()
	i.writePayload(t, i.payload(t))
}

func (i *identity) payload(t testing.TB) map[string][]byte {
	t.Helper()
	trust, err := agenttlstest.RenderTrust(i.policy, i.bundles)
	if err != nil {
		t.Fatal(err)
	}
	p, err := agenttlstest.Payload(i.leaf, trust)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (i *identity) writePayload(t testing.TB, p map[string][]byte) {
	t.Helper()
	if err := i.w.Write(p); err != nil {
		t.Fatal(err)
	}
}

// source starts a Source on the identity's directory, closed at cleanup.
func (i *identity) source(t testing.TB, opts ...agenttls.Option) *agenttls.Source {
	t.Helper()
	opts = append([]agenttls.Option{agenttls.WithDir(i.w.Dir()), agenttls.WithLogger(discard())}, opts...)
	s, err := agenttls.NewSource(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// logBuffer collects log lines from several goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// result is what the test server saw of one handshake.
type result struct {
	peer spiffeid.ID
	err  error
}

// server accepts TLS connections on 127.0.0.1, reports each handshake, and
// echoes what the client sends.
type server struct {
	addr    string
	results chan result
}

func serve(t *testing.T, cfg *tls.Config) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{addr: ln.Addr().String(), results: make(chan result, 64)}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { s.handle(tls.Server(c, cfg)) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return s
}

func (s *server) handle(c *tls.Conn) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := c.HandshakeContext(ctx)
	var r result
	if err == nil {
		r.peer, err = agenttls.PeerIDFromConnectionState(c.ConnectionState())
	}
	r.err = err
	s.results <- r
	if err == nil {
		_, _ = io.Copy(c, c)
	}
}

// next returns the server's view of the next handshake.
func (s *server) next(t *testing.T) result {
	t.Helper()
	select {
	case r := <-s.results:
		return r
	case <-time.After(timeout):
		t.Fatal("no handshake reached the server")
		return result{}
	}
}

// dial connects and makes one round trip: under TLS 1.3 the client's
// handshake completes before the server has checked the client's
// certificate, so only the round trip tells whether the server accepted.
func dial(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	d := &tls.Dialer{Config: cfg}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := nc.(*tls.Conn)
	t.Cleanup(func() { _ = c.Close() })
	if err := roundTrip(c); err != nil {
		return nil, err
	}
	return c, nil
}

func roundTrip(c *tls.Conn) error {
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping" {
		return errors.New("echo mismatch: " + string(buf))
	}
	return nil
}

// serialOf is the hex serial of the certificate the peer of c presented.
func serialOf(c *tls.Conn) string {
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
}

func serial(l *agenttlstest.Leaf) string { return l.Cert.SerialNumber.Text(16) }

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mustContain(t *testing.T, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%q does not contain %q", s, sub)
		}
	}
}
