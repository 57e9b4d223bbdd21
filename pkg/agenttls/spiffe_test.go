package agenttls_test

import (
	"crypto/x509"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

// The Source is a go-spiffe source.
var (
	_ x509svid.Source   = (*agenttls.Source)(nil)
	_ x509bundle.Source = (*agenttls.Source)(nil)
)

func TestGoSPIFFETLSConfigInterop(t *testing.T) {
	ca := newCA(t, tdLocal)
	worker := newIdentity(t, ca, workerID, nil, nil)
	workerSrc := worker.source(t)
	plannerSrc := newIdentity(t, ca, plannerID, nil, nil).source(t)

	// Both sides written against go-spiffe's tlsconfig.
	srv := serve(t, tlsconfig.MTLSServerConfig(workerSrc, workerSrc, tlsconfig.AuthorizeID(plannerID)))
	client := tlsconfig.MTLSClientConfig(plannerSrc, plannerSrc, tlsconfig.AuthorizeID(workerID))
	c, err := dial(t, srv.addr, client)
	if err != nil {
		t.Fatalf("go-spiffe handshake: %v", err)
	}
	if r := srv.next(t); r.err != nil || r.peer != plannerID {
		t.Fatalf("server saw %v, %v", r.peer, r.err)
	}
	if serialOf(c) != serial(worker.leaf) {
		t.Errorf("serial %s, want %s", serialOf(c), serial(worker.leaf))
	}

	// go-spiffe asks the source on every handshake: a rotation shows.
	worker.leaf = issue(t, ca, workerID)
	worker.write(t)
	waitFor(t, "the rotation", func() bool { return leafSerial(workerSrc) == serial(worker.leaf) })
	c, err = dial(t, srv.addr, client)
	if err != nil {
		t.Fatal(err)
	}
	_ = srv.next(t)
	if serialOf(c) != serial(worker.leaf) {
		t.Errorf("after rotation the go-spiffe server presented %s, want %s", serialOf(c), serial(worker.leaf))
	}

	// An agenttls client against the go-spiffe server.
	if _, err := dial(t, srv.addr, plannerSrc.ClientTLSConfig()); err != nil {
		t.Fatalf("agenttls client to go-spiffe server: %v", err)
	}
	_ = srv.next(t)

	// go-spiffe's authorizer refuses another peer.
	outsiderSrc := newIdentity(t, ca, outsiderID, nil, nil).source(t)
	if _, err := dial(t, srv.addr, tlsconfig.MTLSClientConfig(outsiderSrc, outsiderSrc, tlsconfig.AuthorizeAny())); err == nil {
		t.Fatal("go-spiffe's AuthorizeID let the outsider in")
	}
	mustContain(t, srv.next(t).err.Error(), "unexpected ID")
}

func TestGoSPIFFEBundleSourceIsPerTrustDomain(t *testing.T) {
	local, partner := newCA(t, tdLocal), newCA(t, tdPartner)
	bundles := map[spiffeid.TrustDomain][]*x509.Certificate{tdLocal: {local.Root}, tdPartner: {partner.Root}}
	workerSrc := newIdentity(t, local, workerID, nil, bundles).source(t)
	srv := serve(t, tlsconfig.MTLSServerConfig(workerSrc, workerSrc, tlsconfig.AuthorizeAny()))

	if _, err := dial(t, srv.addr, rawClient(issue(t, partner, auditorID))); err != nil {
		t.Fatalf("the partner's own identity was refused: %v", err)
	}
	_ = srv.next(t)
	if _, err := dial(t, srv.addr, rawClient(issue(t, partner, plannerID))); err == nil {
		t.Fatal("go-spiffe with the agentmesh bundle source let the partner CA vouch for a cluster.local ID")
	}
	mustContain(t, srv.next(t).err.Error(), "unknown authority")
}
