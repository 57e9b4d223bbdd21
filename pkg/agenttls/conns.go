package agenttls

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Bounds on established connections, the defaults of NewServer. A TLS
// handshake checks the peer once; these bound how long that check stands.
const (
	// DefaultMaxConnectionAge is how long NewServer keeps a connection: an
	// idle one is closed at that age, a busy one when it next goes idle, or
	// DefaultConnectionGrace later at the latest.
	DefaultMaxConnectionAge = time.Hour
	// DefaultConnectionGrace is how long a connection past its maximum age
	// may finish the requests in flight.
	DefaultConnectionGrace = time.Minute
	// DefaultIdleTimeout is how long NewServer keeps a keep-alive
	// connection with no request in flight (http.Server.IdleTimeout).
	DefaultIdleTimeout = 5 * time.Minute
	// RevokedDrain is how long a connection whose peer is no longer allowed
	// may finish the requests it had in flight when the files changed (see
	// NewServer and NewTransport); it is closed once idle, or then.
	RevokedDrain = 5 * time.Second
)

// revokedSettle is how long a revoked connection that went idle stays open
// for its last response to be flushed; revokedPoll is how often a client
// looks for its revoked connections to have gone idle.
const (
	revokedSettle = 5 * time.Millisecond
	revokedPoll   = 50 * time.Millisecond
)

// WithMaxConnectionAge bounds how long NewServer keeps a connection
// (DefaultMaxConnectionAge otherwise); 0 keeps connections for as long as
// the client does. A busy connection gets DefaultConnectionGrace, or d when
// shorter, to finish its requests. Clients and the TLS configurations
// ignore it.
func WithMaxConnectionAge(d time.Duration) TLSOption {
	return func(o *tlsOptions) { o.maxAge, o.grace = d, min(d, DefaultConnectionGrace) }
}

// WithIdleTimeout sets NewServer's idle keep-alive timeout
// (DefaultIdleTimeout otherwise); 0 uses net/http's rule (ReadTimeout, or
// no limit).
func WithIdleTimeout(d time.Duration) TLSOption {
	return func(o *tlsOptions) { o.idle = d }
}

// KeepRevokedConnections leaves established connections alone when the
// policy or the CAs change. By default NewServer and NewTransport drain and
// close every connection whose peer the new files would refuse in a
// handshake: its CA left the bundle, its certificate expired, or the policy
// no longer allows it (in Audit mode the refusal is logged and the
// connection kept). See RevokedDrain.
func KeepRevokedConnections() TLSOption {
	return func(o *tlsOptions) { o.keepRevoked = true }
}

// conn is one established connection the Source re-checks.
type conn struct {
	tls  *tls.Conn
	dir  Direction
	want spiffeid.ID // WithServerID of a client, or zero
	// keep: KeepRevokedConnections; only the age applies.
	keep bool
	// server: a connection of NewServer, whose idleness ConnState reports;
	// closeIdle: a client connection's transport's CloseIdleConnections.
	// A revoked connection of either drains; one given to Track is closed
	// at once.
	server    bool
	closeIdle func()
	idle      atomic.Bool
	gen       atomic.Uint64 // counts state changes
	old       atomic.Bool   // past its maximum age
	revoked   atomic.Bool   // its peer is no longer allowed
	// revokedAt and idleAt (UnixNano): when it was revoked, and when its
	// last request in flight ended.
	revokedAt, idleAt atomic.Int64
	closed            atomic.Bool
	mu                sync.Mutex
	timers            []*time.Timer
}

// after runs f after d unless the connection is taken off the set first.
func (c *conn) after(d time.Duration, f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.timers = append(c.timers, time.AfterFunc(d, f))
}

func (c *conn) stopTimers() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.timers {
		t.Stop()
	}
}

// closeIfStillIdle closes the connection after settle if no request came
// in meanwhile. The delay lets the last response reach the socket: HTTP/2
// reports a connection idle when its last stream ends, which can be before
// that stream's final frames are flushed.
func (c *conn) closeIfStillIdle(settle time.Duration) {
	gen := c.gen.Load()
	time.AfterFunc(settle, func() {
		if c.idle.Load() && c.gen.Load() == gen {
			c.close()
		}
	})
}

func (c *conn) close() {
	if c.closed.CompareAndSwap(false, true) {
		_ = c.tls.Close()
	}
}

// connSet is the Source's established connections.
type connSet struct {
	mu sync.Mutex
	m  map[*tls.Conn]*conn
}

func (s *connSet) add(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[*tls.Conn]*conn{}
	}
	s.m[c.tls] = c
}

func (s *connSet) get(tc *tls.Conn) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[tc]
}

func (s *connSet) remove(tc *tls.Conn) {
	s.mu.Lock()
	c := s.m[tc]
	delete(s.m, tc)
	s.mu.Unlock()
	if c != nil {
		c.stopTimers()
	}
}

func (s *connSet) all() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*conn, 0, len(s.m))
	for _, c := range s.m {
		out = append(out, c)
	}
	return out
}

// Connections reports how many established connections the Source
// re-checks on a policy or bundle change (those of NewServer, NewTransport
// and Track).
func (s *Source) Connections() int {
	s.conns.mu.Lock()
	defer s.conns.mu.Unlock()
	return len(s.conns.m)
}

// Track makes the Source re-check an established connection of a server
// or client built otherwise than with NewServer or NewTransport: after each
// change of the files, the connection is closed if its peer would now be
// refused in direction d. Call the returned function when the connection
// is closed.
func (s *Source) Track(tc *tls.Conn, d Direction) (untrack func()) {
	s.conns.add(&conn{tls: tc, dir: d})
	return func() { s.conns.remove(tc) }
}

// recheck ends the tracked connections whose peer the current Snapshot
// refuses. A connection whose handshake is still under way is checked by
// that handshake, against the same Snapshot, so it is skipped; each check
// runs apart so that a slow peer delays no other.
//
// A revoked connection drains rather than being cut under the requests it
// has in flight (a routine CA retirement would otherwise fail them): a
// server's is closed once idle, and NewServer's handler refuses every
// request that starts on it meanwhile; a client's is closed once idle
// (its transport's CloseIdleConnections, which also closes the other idle
// connections of that transport); both at RevokedDrain at the latest. A
// connection given to Track is closed at once.
func (s *Source) recheck() {
	for _, c := range s.conns.all() {
		go func() {
			cs := c.tls.ConnectionState()
			if c.keep || !cs.HandshakeComplete || c.closed.Load() || c.revoked.Load() {
				return
			}
			if err := s.verifyPeer(c.dir, cs.PeerCertificates, c.want); err != nil {
				s.cfg.log.Warn("agentmesh: closing a connection whose peer is no longer allowed",
					"direction", string(c.dir), "spiffeID", s.Snapshot().id.String(),
					"remote", c.tls.RemoteAddr().String(), "reason", err.Error())
				s.revoke(c)
			}
		}()
	}
}

// revoke drains c (see recheck).
func (s *Source) revoke(c *conn) {
	c.revokedAt.Store(time.Now().UnixNano())
	c.revoked.Store(true)
	switch {
	case c.server:
		c.after(RevokedDrain, c.close)
		if c.idle.Load() {
			// Idle: nothing to drain; the settle is for a response that
			// ended a moment ago to be flushed.
			c.closeIfStillIdle(revokedSettle)
		}
	case c.closeIdle != nil:
		deadline := time.Now().Add(RevokedDrain)
		var poll func()
		poll = func() {
			if c.closed.Load() {
				return
			}
			if time.Now().After(deadline) {
				c.close()
				return
			}
			c.closeIdle()
			c.after(revokedPoll, poll)
		}
		poll()
	default:
		c.close()
		s.conns.remove(c.tls)
	}
}

// refuseRevoked is NewServer's handler. A request that starts on a
// connection whose peer is no longer allowed is refused (421: this
// connection is not the one to use), unless it starts within revokedSettle
// (5 ms) of the revocation or of the connection's last response, so a
// draining connection serves what it had in flight and what was already on
// its way. A response that begins after the connection was
// revoked says "Connection: close": over HTTP/2 the server then sends
// GOAWAY, and the client moves its next requests to a new connection
// instead of meeting the close.
func (s *Source) refuseRevoked(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tc, ok := r.Context().Value(connKey{}).(*tls.Conn)
		c := (*conn)(nil)
		if ok {
			c = s.conns.get(tc)
		}
		if c == nil || c.keep {
			next.ServeHTTP(w, r)
			return
		}
		if c.revoked.Load() && !c.settling() {
			w.Header().Set("Connection", "close")
			http.Error(w, "agentmesh: the peer of this connection is no longer allowed", http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(&drainWriter{ResponseWriter: w, c: c}, r)
	})
}

// settling reports whether a revoked connection is within revokedSettle of
// its revocation or of the end of its last request: a request that starts
// then was most likely sent before the client could learn of the close, and
// is served, with "Connection: close" (net/http does not retry a POST that
// meets a closing connection); later ones are refused.
func (c *conn) settling() bool {
	since := time.Now().UnixNano() - max(c.revokedAt.Load(), c.idleAt.Load())
	return since < int64(revokedSettle)
}

// drainWriter adds "Connection: close" to a response whose headers are
// written after its connection was revoked.
type drainWriter struct {
	http.ResponseWriter
	c       *conn
	started bool
}

func (d *drainWriter) WriteHeader(code int) {
	if !d.started && code >= 200 {
		d.started = true
		if d.c.revoked.Load() {
			d.Header().Set("Connection", "close")
		}
	}
	d.ResponseWriter.WriteHeader(code)
}

func (d *drainWriter) Write(b []byte) (int, error) {
	if !d.started {
		d.WriteHeader(http.StatusOK)
	}
	return d.ResponseWriter.Write(b)
}

// Flush, Hijack and Unwrap keep what the connection's ResponseWriter can
// do (streaming responses, websockets).
func (d *drainWriter) Flush() {
	if !d.started {
		d.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(d.ResponseWriter).Flush()
}

func (d *drainWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(d.ResponseWriter).Hijack()
}

func (d *drainWriter) Unwrap() http.ResponseWriter { return d.ResponseWriter }

// connKey is the context key of a request's *tls.Conn in NewServer.
type connKey struct{}

// connContext is NewServer's http.Server.ConnContext.
func connContext(ctx context.Context, nc net.Conn) context.Context {
	if tc, ok := nc.(*tls.Conn); ok {
		return context.WithValue(ctx, connKey{}, tc)
	}
	return ctx
}

// serverConnState is NewServer's http.Server.ConnState: it tracks each
// connection and ends it at its maximum age.
func (s *Source) serverConnState(o tlsOptions) func(net.Conn, http.ConnState) {
	return func(nc net.Conn, st http.ConnState) {
		tc, ok := nc.(*tls.Conn)
		if !ok {
			return
		}
		switch st {
		case http.StateNew:
			if o.keepRevoked && o.maxAge <= 0 {
				return
			}
			c := &conn{tls: tc, dir: Ingress, keep: o.keepRevoked, server: true}
			if o.maxAge > 0 {
				c.after(o.maxAge, func() {
					c.old.Store(true)
					if c.idle.Load() {
						c.closeIfStillIdle(settle(o))
					}
				})
				c.after(o.maxAge+o.grace, c.close)
			}
			s.conns.add(c)
		case http.StateActive:
			if c := s.conns.get(tc); c != nil {
				c.gen.Add(1)
				c.idle.Store(false)
			}
		case http.StateIdle:
			if c := s.conns.get(tc); c != nil {
				c.gen.Add(1)
				c.idleAt.Store(time.Now().UnixNano())
				c.idle.Store(true)
				switch {
				case c.revoked.Load():
					c.closeIfStillIdle(revokedSettle)
				case c.old.Load():
					c.closeIfStillIdle(settle(o))
				}
			}
		case http.StateClosed, http.StateHijacked:
			s.conns.remove(tc)
		}
	}
}

// settle is how long an idle connection past its age stays open before it
// is closed: long enough for the last response to be flushed, short
// against the grace.
func settle(o tlsOptions) time.Duration {
	return min(time.Second, o.grace/2)
}
