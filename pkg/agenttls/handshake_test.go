package agenttls_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
	"github.com/agentmesh/agentmesh/pkg/agenttls/agenttlstest"
)

// workerServer starts the worker, whose ingress allows the planner only.
func workerServer(t *testing.T, ca *agenttlstest.CA, mode agenttls.Mode, opts ...agenttls.Option) (*identity, *agenttls.Source, *server) {
	t.Helper()
	id := newIdentity(t, ca, workerID, ingressOnly(workerID, "worker-ingress", mode, plannerID), nil)
	src := id.source(t, opts...)
	return id, src, serve(t, src.ServerTLSConfig())
}

func TestHandshakeAllowed(t *testing.T) {
	ca := newCA(t, tdLocal)
	worker, _, srv := workerServer(t, ca, agenttls.ModeEnforce)
	planner := newIdentity(t, ca, plannerID, nil, nil)

	c, err := dial(t, srv.addr, planner.source(t).ClientTLSConfig())
	if err != nil {
		t.Fatalf("planner refused: %v", err)
	}
	r := srv.next(t)
	if r.err != nil || r.peer != plannerID {
		t.Fatalf("server saw peer %v, error %v; want %s", r.peer, r.err, plannerID)
	}
	st := c.ConnectionState()
	if st.Version != tls.VersionTLS13 {
		t.Errorf("version %x, want TLS 1.3", st.Version)
	}
	got, err := agenttls.PeerIDFromConnectionState(st)
	if err != nil || got != workerID {
		t.Errorf("client saw server %v (%v), want %s", got, err, workerID)
	}
	if serialOf(c) != serial(worker.leaf) {
		t.Errorf("server presented serial %s, want %s", serialOf(c), serial(worker.leaf))
	}
}

func TestIngressRefusedNamesBothIDs(t *testing.T) {
	ca := newCA(t, tdLocal)
	_, _, srv := workerServer(t, ca, agenttls.ModeEnforce)
	outsider := newIdentity(t, ca, outsiderID, nil, nil)

	if _, err := dial(t, srv.addr, outsider.source(t).ClientTLSConfig()); err == nil {
		t.Fatal("the outsider's round trip succeeded")
	}
	r := srv.next(t)
	const want = "agentmesh: ingress policy of spiffe://cluster.local/ns/agents/agent/worker does not allow " +
		"spiffe://cluster.local/ns/agents/agent/outsider (policies: worker-ingress)"
	if r.err == nil || r.err.Error() != want {
		t.Fatalf("server error %v, want %q", r.err, want)
	}
	var pe *agenttls.PolicyError
	if !errors.As(r.err, &pe) || pe.Direction != agenttls.Ingress || pe.Local != workerID || pe.Peer != outsiderID {
		t.Errorf("error %#v is not the expected *PolicyError", r.err)
	}
}

func TestEgressRefusedOnClient(t *testing.T) {
	ca := newCA(t, tdLocal)
	_, _, srv := workerServer(t, ca, agenttls.ModeEnforce)
	pol := agenttlstest.DefaultPolicy(plannerID)
	pol.Egress = agenttls.Rules{Mode: agenttls.ModeEnforce, Prefixes: []string{"spiffe://cluster.local/ns/research/"},
		Policies: []string{"planner-egress", "research-only"}}
	planner := newIdentity(t, ca, plannerID, pol, nil)

	_, err := dial(t, srv.addr, planner.source(t).ClientTLSConfig())
	const want = "agentmesh: egress policy of spiffe://cluster.local/ns/agents/agent/planner does not allow " +
		"spiffe://cluster.local/ns/agents/agent/worker (policies: planner-egress, research-only)"
	var pe *agenttls.PolicyError
	if !errors.As(err, &pe) || pe.Error() != want || pe.Direction != agenttls.Egress {
		t.Fatalf("client error %v, want %q", err, want)
	}
	if r := srv.next(t); r.err == nil {
		t.Error("the server completed a handshake the client refused")
	}
}

func TestEgressDefaultPostureDeny(t *testing.T) {
	ca := newCA(t, tdLocal)
	_, _, srv := workerServer(t, ca, agenttls.ModeEnforce)
	pol := agenttlstest.DefaultPolicy(plannerID)
	pol.Egress = agenttls.Rules{Mode: agenttls.ModeEnforce, Default: "deny"}
	planner := newIdentity(t, ca, plannerID, pol, nil)

	_, err := dial(t, srv.addr, planner.source(t).ClientTLSConfig())
	if err == nil || !errors.As(err, new(*agenttls.PolicyError)) {
		t.Fatalf("client error %v, want a *PolicyError", err)
	}
	mustContain(t, err.Error(), "(default posture: deny)")
}

func TestAuditModeAllowsAndLogs(t *testing.T) {
	ca := newCA(t, tdLocal)
	var logs logBuffer
	_, _, srv := workerServer(t, ca, agenttls.ModeAudit, agenttls.WithLogger(logs.logger()))
	outsider := newIdentity(t, ca, outsiderID, nil, nil)

	if _, err := dial(t, srv.addr, outsider.source(t).ClientTLSConfig()); err != nil {
		t.Fatalf("audit mode refused the outsider: %v", err)
	}
	if r := srv.next(t); r.err != nil || r.peer != outsiderID {
		t.Fatalf("server saw %v, %v", r.peer, r.err)
	}
	mustContain(t, logs.String(), "let through in audit mode", "direction=ingress",
		"spiffeID="+workerID.String(), "peer="+outsiderID.String(), "worker-ingress")
}

func TestExpiredPeerRefused(t *testing.T) {
	ca := newCA(t, tdLocal)
	_, _, srv := workerServer(t, ca, agenttls.ModeEnforce)
	past := time.Now().Add(-30 * time.Minute)
	planner := newIdentity(t, ca, plannerID, nil, nil, agenttlstest.WithValidity(past.Add(-time.Hour), past))

	if _, err := dial(t, srv.addr, planner.source(t).ClientTLSConfig()); err == nil {
		t.Fatal("the expired planner's round trip succeeded")
	}
	r := srv.next(t)
	if r.err == nil {
		t.Fatal("the server accepted an expired certificate")
	}
	mustContain(t, r.err.Error(), "ingress peer "+plannerID.String(), "expired")
}

func TestUnknownTrustDomainRefused(t *testing.T) {
	local := newCA(t, tdLocal)
	other := newCA(t, tdOther)
	pol := agenttlstest.DefaultPolicy(workerID)
	pol.Ingress = agenttls.Rules{Mode: agenttls.ModeEnforce, AllowAll: true, Policies: []string{"open"}}
	worker := newIdentity(t, local, workerID, pol, nil)
	srv := serve(t, worker.source(t).ServerTLSConfig())
	stranger := issue(t, other, spiffeid.RequireFromString("spiffe://other.example/ns/x/agent/y"))

	if _, err := dial(t, srv.addr, rawClient(stranger)); err == nil {
		t.Fatal("a peer of an unknown trust domain was accepted")
	}
	r := srv.next(t)
	if r.err == nil {
		t.Fatal("no server error")
	}
	mustContain(t, r.err.Error(), `no CA is trusted for trust domain "other.example"`)
}

// federation returns a worker trusting cluster.local and partner.example,
// whose ingress allows everyone who verifies.
func federation(t *testing.T) (local, partner *agenttlstest.CA, srv *server) {
	t.Helper()
	local, partner = newCA(t, tdLocal), newCA(t, tdPartner)
	pol := agenttlstest.DefaultPolicy(workerID)
	pol.Ingress = agenttls.Rules{Mode: agenttls.ModeEnforce, AllowAll: true, Policies: []string{"open"}}
	bundles := map[spiffeid.TrustDomain][]*x509.Certificate{tdLocal: {local.Root}, tdPartner: {partner.Root}}
	worker := newIdentity(t, local, workerID, pol, bundles)
	return local, partner, serve(t, worker.source(t).ServerTLSConfig())
}

func TestFederatedCACannotVouchForLocalID(t *testing.T) {
	local, partner, srv := federation(t)
	bundles := map[spiffeid.TrustDomain][]*x509.Certificate{tdLocal: {local.Root}, tdPartner: {partner.Root}}

	// The partner's CA signs for its own trust domain: accepted.
	auditor := newIdentity(t, partner, auditorID, agenttlstest.DefaultPolicy(auditorID), bundles)
	auditor.policy.Egress.Prefixes = []string{"spiffe://cluster.local/"}
	auditor.write(t)
	if _, err := dial(t, srv.addr, auditor.source(t).ClientTLSConfig()); err != nil {
		t.Fatalf("the partner's auditor was refused: %v", err)
	}
	if r := srv.next(t); r.err != nil || r.peer != auditorID {
		t.Fatalf("server saw %v, %v", r.peer, r.err)
	}

	// The partner's CA signs a cluster.local ID: it must not verify, even
	// though the server trusts the partner CA and allows every peer.
	forged := issue(t, partner, plannerID)
	if _, err := dial(t, srv.addr, rawClient(forged)); err == nil {
		t.Fatal("a partner-signed cluster.local identity was accepted")
	}
	r := srv.next(t)
	if r.err == nil {
		t.Fatal("no server error")
	}
	mustContain(t, r.err.Error(), "ingress peer "+plannerID.String(), "does not verify", "unknown authority")
}

func TestCANotListedInPolicyTrustsNothing(t *testing.T) {
	local := newCA(t, tdLocal)
	rogue := newCA(t, tdLocal)
	pol := agenttlstest.DefaultPolicy(workerID)
	pol.Ingress = agenttls.Rules{Mode: agenttls.ModeEnforce, AllowAll: true, Policies: []string{"open"}}
	worker := newIdentity(t, local, workerID, pol, nil)
	p := worker.payload(t)
	// bundle.pem holds the rogue CA, policy.json does not list it.
	p[agenttls.BundleFileName] = append(p[agenttls.BundleFileName], agenttlstest.EncodeCertificatesPEM(rogue.Root)...)
	worker.writePayload(t, p)
	var logs logBuffer
	src := worker.source(t, agenttls.WithLogger(logs.logger()))
	mustContain(t, logs.String(), "trusted for nothing", "count=1")
	srv := serve(t, src.ServerTLSConfig())

	forged := issue(t, rogue, plannerID)
	if _, err := dial(t, srv.addr, rawClient(forged)); err == nil {
		t.Fatal("a peer of an unlisted CA was accepted")
	}
	mustContain(t, srv.next(t).err.Error(), "unknown authority")
}

// rawClient presents leaf and trusts any server: the peer an attacker
// controls.
func rawClient(leaf *agenttlstest.Leaf) *tls.Config {
	chain := [][]byte{leaf.Cert.Raw}
	for _, c := range leaf.Chain {
		chain = append(chain, c.Raw)
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true,
		Certificates:       []tls.Certificate{{Certificate: chain, PrivateKey: leaf.Key}},
	}
}

func TestRequiredServerID(t *testing.T) {
	ca := newCA(t, tdLocal)
	_, _, srv := workerServer(t, ca, agenttls.ModeEnforce)
	planner := newIdentity(t, ca, plannerID, nil, nil).source(t)

	_, err := dial(t, srv.addr, planner.ClientTLSConfig(agenttls.WithServerID(outsiderID)))
	if err == nil {
		t.Fatal("connected to a server that is not the required one")
	}
	mustContain(t, err.Error(), "the server is "+workerID.String()+", not the required "+outsiderID.String())
	_ = srv.next(t)

	if _, err := dial(t, srv.addr, planner.ClientTLSConfig(agenttls.WithServerID(workerID))); err != nil {
		t.Fatalf("the required server was refused: %v", err)
	}
}

func TestTLS13OnlyByDefault(t *testing.T) {
	ca := newCA(t, tdLocal)
	worker := newIdentity(t, ca, workerID, nil, nil).source(t)
	planner := newIdentity(t, ca, plannerID, nil, nil).source(t)
	client := planner.ClientTLSConfig(agenttls.AllowTLS12())
	client.MaxVersion = tls.VersionTLS12

	strict := serve(t, worker.ServerTLSConfig())
	if _, err := dial(t, strict.addr, client); err == nil {
		t.Fatal("a TLS 1.2 client was accepted by default")
	}
	mustContain(t, strict.next(t).err.Error(), "unsupported versions")

	lenient := serve(t, worker.ServerTLSConfig(agenttls.AllowTLS12()))
	c, err := dial(t, lenient.addr, client)
	if err != nil {
		t.Fatalf("AllowTLS12 refused TLS 1.2: %v", err)
	}
	if v := c.ConnectionState().Version; v != tls.VersionTLS12 {
		t.Errorf("version %x, want TLS 1.2", v)
	}
	if r := lenient.next(t); r.err != nil || r.peer != plannerID {
		t.Errorf("server saw %v, %v", r.peer, r.err)
	}
}

func TestIntermediateChain(t *testing.T) {
	root := newCA(t, tdLocal)
	inter, err := root.NewIntermediate()
	if err != nil {
		t.Fatal(err)
	}
	bundles := map[spiffeid.TrustDomain][]*x509.Certificate{tdLocal: {root.Root}}
	worker := newIdentity(t, inter, workerID, nil, bundles)
	planner := newIdentity(t, root, plannerID, nil, nil)
	srv := serve(t, worker.source(t).ServerTLSConfig())

	c, err := dial(t, srv.addr, planner.source(t).ClientTLSConfig())
	if err != nil {
		t.Fatalf("a leaf of an intermediate was refused: %v", err)
	}
	if n := len(c.ConnectionState().PeerCertificates); n != 2 {
		t.Errorf("the server sent %d certificates, want leaf and intermediate", n)
	}
	_ = srv.next(t)
}
