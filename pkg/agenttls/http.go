package agenttls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// readHeaderTimeout bounds how long NewServer's server waits for a request's
// headers.
const readHeaderTimeout = 10 * time.Second

// NewServer returns an HTTPS server for addr whose TLS configuration is
// ServerTLSConfig. Start it with ListenAndServeTLS("", "") or
// ServeTLS(listener, "", ""): the certificate comes from the Source.
//
// Its connections do not outlive what allowed them: one whose client the
// current files would refuse (its CA left the bundle, its certificate
// expired, the ingress policy no longer allows it) serves no request that
// starts after the files change (421 Misdirected Request), finishes those
// in flight and is closed once idle, RevokedDrain later at the latest
// (KeepRevokedConnections turns that off); none is kept longer than
// DefaultMaxConnectionAge (WithMaxConnectionAge) or idle longer than
// DefaultIdleTimeout (WithIdleTimeout). Its ConnState and ConnContext hooks
// and its Handler (handler, wrapped) do this: a caller that sets its own
// must call the ones NewServer set.
func (s *Source) NewServer(addr string, handler http.Handler, opts ...TLSOption) *http.Server {
	o := newTLSOptions(opts)
	return &http.Server{
		Addr:              addr,
		Handler:           s.refuseRevoked(handler),
		TLSConfig:         s.ServerTLSConfig(opts...),
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       o.idle,
		ConnState:         s.serverConnState(o),
		ConnContext:       connContext,
	}
}

// NewTransport returns a copy of http.DefaultTransport whose TLS
// configuration is ClientTLSConfig. New connections use the current files;
// a pooled connection whose server the current files would refuse (its CA
// left the bundle, its certificate expired, the egress policy or
// WithServerID no longer allows it) is closed as soon as it is idle after
// the files change (the transport's CloseIdleConnections, until it is:
// the requests in flight on it finish, for RevokedDrain at most), unless
// KeepRevokedConnections is given. Until then an HTTP/2 connection may
// still carry a request that starts beside one in flight. Idle pooled connections are
// closed after the transport's IdleConnTimeout (90 seconds). Connections
// through an HTTPS proxy are verified but not re-checked.
func (s *Source) NewTransport(opts ...TLSOption) *http.Transport {
	o := newTLSOptions(opts)
	t, ok := http.DefaultTransport.(*http.Transport)
	if ok {
		t = t.Clone()
	} else {
		t = &http.Transport{Proxy: http.ProxyFromEnvironment}
	}
	t.TLSClientConfig = s.ClientTLSConfig(opts...)
	t.ForceAttemptHTTP2 = true
	if !o.keepRevoked {
		dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		t.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			raw, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The transport has added its ALPN protocols (h2) to
			// TLSClientConfig by the time it dials.
			cfg := t.TLSClientConfig.Clone()
			if cfg.ServerName == "" {
				if host, _, err := net.SplitHostPort(addr); err == nil {
					cfg.ServerName = host
				}
			}
			w := &untrackOnClose{Conn: raw}
			tc := tls.Client(w, cfg)
			w.untrack = func() { s.conns.remove(tc) }
			if err := tc.HandshakeContext(ctx); err != nil {
				_ = raw.Close()
				return nil, err
			}
			s.conns.add(&conn{tls: tc, dir: Egress, want: o.serverID, closeIdle: t.CloseIdleConnections})
			if w.closed.Load() {
				// Closed while it was being added.
				s.conns.remove(tc)
			}
			return tc, nil
		}
	}
	return t
}

// untrackOnClose is the TCP connection under a tracked client connection:
// closing it (tls.Conn.Close does) takes the connection off the set.
type untrackOnClose struct {
	net.Conn
	closed  atomic.Bool
	untrack func()
}

func (u *untrackOnClose) Close() error {
	if u.closed.CompareAndSwap(false, true) {
		u.untrack()
	}
	return u.Conn.Close()
}

// NewHTTPClient returns an HTTP client that uses NewTransport.
func (s *Source) NewHTTPClient(opts ...TLSOption) *http.Client {
	return &http.Client{Transport: s.NewTransport(opts...)}
}

// PeerID returns the SPIFFE ID of the client of a request served over a
// connection that this package (or go-spiffe's tlsconfig) verified.
func PeerID(r *http.Request) (spiffeid.ID, error) {
	if r.TLS == nil {
		return spiffeid.ID{}, errors.New("agentmesh: the request did not come over TLS")
	}
	return PeerIDFromConnectionState(*r.TLS)
}

// PeerIDFromConnectionState returns the SPIFFE ID of the peer of a TLS
// connection (for a client, the server: resp.TLS). It reads the verified
// peer certificate; it does not verify it again.
func PeerIDFromConnectionState(cs tls.ConnectionState) (spiffeid.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("agentmesh: the peer presented no certificate")
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("agentmesh: peer certificate: %w", err)
	}
	return id, nil
}
