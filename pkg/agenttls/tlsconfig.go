package agenttls

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// TLSOption configures ServerTLSConfig and ClientTLSConfig.
type TLSOption func(*tlsOptions)

type tlsOptions struct {
	minVersion  uint16
	serverID    spiffeid.ID
	maxAge      time.Duration
	grace       time.Duration
	idle        time.Duration
	keepRevoked bool
}

// AllowTLS12 accepts TLS 1.2 as well as TLS 1.3 (only TLS 1.3 otherwise),
// for peers whose TLS stack has no TLS 1.3.
func AllowTLS12() TLSOption {
	return func(o *tlsOptions) { o.minVersion = tls.VersionTLS12 }
}

// WithServerID makes a client accept only a server with exactly this SPIFFE
// ID, on top of the egress policy. Servers ignore it.
func WithServerID(id spiffeid.ID) TLSOption {
	return func(o *tlsOptions) { o.serverID = id }
}

func newTLSOptions(opts []TLSOption) tlsOptions {
	o := tlsOptions{minVersion: tls.VersionTLS13, maxAge: DefaultMaxConnectionAge, grace: DefaultConnectionGrace, idle: DefaultIdleTimeout}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// ServerTLSConfig returns a configuration for a server that presents the
// current certificate on every handshake, requires a client certificate,
// verifies it against the current CAs of the client's own trust domain, and
// enforces the current ingress policy. Files that change are used by the
// next handshake; established connections are left alone unless the server
// is NewServer or they are given to Track.
func (s *Source) ServerTLSConfig(opts ...TLSOption) *tls.Config {
	o := newTLSOptions(opts)
	return &tls.Config{
		MinVersion: o.minVersion,
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.Snapshot().tlsCert, nil
		},
		// VerifyConnection, unlike VerifyPeerCertificate, runs on resumed
		// sessions too, so a policy change is never bypassed.
		VerifyConnection: func(cs tls.ConnectionState) error {
			return s.verifyPeer(Ingress, cs.PeerCertificates, spiffeid.ID{})
		},
	}
}

// ClientTLSConfig returns a configuration for a client that presents the
// current certificate on every handshake, verifies the server against the
// current CAs of the server's own trust domain, and enforces the current
// egress policy (and WithServerID). Host names are not verified: a SPIFFE
// peer is authenticated by its SPIFFE ID.
func (s *Source) ClientTLSConfig(opts ...TLSOption) *tls.Config {
	o := newTLSOptions(opts)
	return &tls.Config{
		MinVersion: o.minVersion,
		// The default verification checks host names against the system
		// roots; VerifyConnection does SPIFFE verification instead.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.Snapshot().tlsCert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return s.verifyPeer(Egress, cs.PeerCertificates, o.serverID)
		},
	}
}

// verifyPeer verifies a peer's chain against the CAs of the peer's own
// trust domain (a federated CA can never vouch for another trust domain's
// identity), then applies the policy of the direction; in Audit mode a peer
// the rules do not allow is logged and let through.
func (s *Source) verifyPeer(d Direction, chain []*x509.Certificate, want spiffeid.ID) error {
	snap := s.Snapshot()
	if len(chain) == 0 {
		return fmt.Errorf("agentmesh: the %s peer of %s presented no certificate", d, snap.id)
	}
	id, _, err := x509svid.Verify(chain, bundleMap(snap.bundles), x509svid.WithTime(time.Now()))
	if err != nil {
		peer := "without a SPIFFE ID"
		if pid, idErr := x509svid.IDFromCert(chain[0]); idErr == nil {
			peer = pid.String()
		}
		return fmt.Errorf("agentmesh: %s peer %s of %s does not verify against the CAs of its trust domain: %w", d, peer, snap.id, err)
	}
	if err := checkSVIDLeaf(chain[0]); err != nil {
		return fmt.Errorf("agentmesh: %s peer %s of %s is not an X.509-SVID: its leaf %w", d, id, snap.id, err)
	}
	if !want.IsZero() && id != want {
		return fmt.Errorf("agentmesh: the server is %s, not the required %s (egress of %s)", id, want, snap.id)
	}
	return s.authorize(snap, d, id)
}

// authorize applies the snapshot's policy of the direction to a verified
// peer; in Audit mode a peer the rules do not allow is logged and let
// through.
func (s *Source) authorize(snap *Snapshot, d Direction, peer spiffeid.ID) error {
	now := s.cfg.now()
	dec := snap.policy.DecideAt(d, peer, now)
	switch {
	case dec.Allowed:
		return nil
	case dec.Admitted:
		s.cfg.log.Warn("agentmesh: peer not allowed by policy, let through in audit mode",
			"direction", string(d), "spiffeID", snap.id.String(), "peer", peer.String(), "reason", dec.Reason)
		return nil
	}
	return snap.policy.CheckAt(d, peer, now)
}

// Authorizer returns a go-spiffe authorizer that enforces the current
// policy.json of the direction (Ingress for a server, Egress for a client),
// Audit mode included, exactly as ServerTLSConfig and ClientTLSConfig do.
// go-spiffe calls it from VerifyPeerCertificate, which Go skips when a
// session is resumed, so wrap the configuration with GuardResumption:
//
//	cfg := src.GuardResumption(tlsconfig.MTLSServerConfig(src, src, src.Authorizer(agenttls.Ingress)), agenttls.Ingress)
//
// go-spiffe has verified the chain against the Source's bundles before it
// calls the authorizer. A policy that changes applies from the next
// handshake.
func (s *Source) Authorizer(d Direction) tlsconfig.Authorizer {
	return func(peer spiffeid.ID, chains [][]*x509.Certificate) error {
		snap := s.Snapshot()
		if len(chains) > 0 && len(chains[0]) > 0 {
			if err := checkSVIDLeaf(chains[0][0]); err != nil {
				return fmt.Errorf("agentmesh: %s peer %s of %s is not an X.509-SVID: its leaf %w", d, peer, snap.id, err)
			}
		}
		return s.authorize(snap, d, peer)
	}
}

// GuardResumption returns a copy of cfg (built by go-spiffe's tlsconfig, or
// any configuration that verifies peers in VerifyPeerCertificate) that
// checks a resumed session as a full handshake would: the peer's chain
// against the current CAs of its trust domain, then the current policy of
// the direction. Go does not call VerifyPeerCertificate on resumption, so
// without it a peer allowed once gets back in by resuming a session after
// the policy denies it or its CA has left the bundles. Session tickets stay
// on: resumption keeps its speed and loses nothing of the checks.
// ServerTLSConfig and ClientTLSConfig need no guard; they verify in
// VerifyConnection, which Go calls on every connection.
func (s *Source) GuardResumption(cfg *tls.Config, d Direction) *tls.Config {
	c := cfg.Clone()
	next := c.VerifyConnection
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if cs.DidResume {
			if err := s.verifyPeer(d, cs.PeerCertificates, spiffeid.ID{}); err != nil {
				return err
			}
		}
		if next != nil {
			return next(cs)
		}
		return nil
	}
	return c
}
