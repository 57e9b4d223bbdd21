package agenttls

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
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
func (s *Source) NewServer(addr string, handler http.Handler, opts ...TLSOption) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           handler,
		TLSConfig:         s.ServerTLSConfig(opts...),
		ReadHeaderTimeout: readHeaderTimeout,
	}
}

// NewTransport returns a copy of http.DefaultTransport whose TLS
// configuration is ClientTLSConfig. Pooled connections outlive file updates;
// new connections use the current files.
func (s *Source) NewTransport(opts ...TLSOption) *http.Transport {
	t, ok := http.DefaultTransport.(*http.Transport)
	if ok {
		t = t.Clone()
	} else {
		t = &http.Transport{Proxy: http.ProxyFromEnvironment}
	}
	t.TLSClientConfig = s.ClientTLSConfig(opts...)
	t.ForceAttemptHTTP2 = true
	return t
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
