package agenttls

import (
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
// policy or the CAs change. By default NewServer and NewTransport close
// every connection whose peer the new files would refuse in a handshake:
// its CA left the bundle, its certificate expired, or the policy no longer
// allows it (in Audit mode the refusal is logged and the connection kept).
func KeepRevokedConnections() TLSOption {
	return func(o *tlsOptions) { o.keepRevoked = true }
}

// conn is one established connection the Source re-checks.
type conn struct {
	tls  *tls.Conn
	dir  Direction
	want spiffeid.ID // WithServerID of a client, or zero
	// keep: KeepRevokedConnections; only the age applies.
	keep   bool
	idle   atomic.Bool
	gen    atomic.Uint64 // counts state changes
	old    atomic.Bool   // past its maximum age
	closed atomic.Bool
	timers []*time.Timer
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
		for _, t := range c.timers {
			t.Stop()
		}
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

// recheck closes the tracked connections whose peer the current Snapshot
// refuses. A connection whose handshake is still under way is checked by
// that handshake, against the same Snapshot, so it is skipped; each check
// runs apart so that a slow peer delays no other.
func (s *Source) recheck() {
	for _, c := range s.conns.all() {
		go func() {
			cs := c.tls.ConnectionState()
			if c.keep || !cs.HandshakeComplete || c.closed.Load() {
				return
			}
			if err := s.verifyPeer(c.dir, cs.PeerCertificates, c.want); err != nil {
				s.cfg.log.Warn("agentmesh: closing a connection whose peer is no longer allowed",
					"direction", string(c.dir), "spiffeID", s.Snapshot().id.String(),
					"remote", c.tls.RemoteAddr().String(), "reason", err.Error())
				c.close()
				s.conns.remove(c.tls)
			}
		}()
	}
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
			c := &conn{tls: tc, dir: Ingress, keep: o.keepRevoked}
			if o.maxAge > 0 {
				c.timers = append(c.timers, time.AfterFunc(o.maxAge, func() {
					c.old.Store(true)
					if c.idle.Load() {
						c.closeIfStillIdle(settle(o))
					}
				}), time.AfterFunc(o.maxAge+o.grace, c.close))
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
				c.idle.Store(true)
				if c.old.Load() {
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
