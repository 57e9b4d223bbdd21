package agenttls_test

import (
	"crypto/tls"
	"crypto/x509"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
	"github.com/agentmesh/agentmesh/pkg/agenttls/agenttlstest"
)

// svidLeafCases are leaves a CA the bundle trusts may sign, with what the
// X.509-SVID rules say of each as a peer ("" = accepted).
var svidLeafCases = []struct {
	name    string
	opt     agenttlstest.LeafOption
	wantErr string
}{
	{"server and client auth", func(*x509.Certificate) {}, ""},
	{"no extended key usage", func(c *x509.Certificate) { c.ExtKeyUsage = nil }, ""},
	{"any extended key usage", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageAny} }, ""},
	{"digitalSignature and keyEncipherment", func(c *x509.Certificate) {
		c.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	}, ""},
	{"no digitalSignature", func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyEncipherment },
		"lacks the digitalSignature key usage"},
	{"no key usage at all", func(c *x509.Certificate) { c.KeyUsage = 0 }, "lacks the digitalSignature key usage"},
	{"code signing only", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning} },
		"has an extended key usage without serverAuth"},
	{"client auth only", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth} },
		"has an extended key usage without serverAuth"},
	{"server auth only", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} },
		"has an extended key usage without clientAuth"},
	{"e-mail protection with client auth", func(c *x509.Certificate) {
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection, x509.ExtKeyUsageClientAuth}
	}, "has an extended key usage without serverAuth"},
}

// TestPeerLeavesAreSVIDs: a client whose leaf is not an X.509-SVID is
// refused by the worker's ingress, on the SDK's own configuration and on
// the go-spiffe one, even though its CA is trusted and the policy allows its
// SPIFFE ID.
func TestPeerLeavesAreSVIDs(t *testing.T) {
	ca := newCA(t, tdLocal)
	worker := newIdentity(t, ca, workerID, ingressOnly(workerID, "worker-ingress", agenttls.ModeEnforce, plannerID), nil)
	src := worker.source(t)
	servers := map[string]*server{
		"sdk":       serve(t, src.ServerTLSConfig()),
		"go-spiffe": serve(t, src.GuardResumption(tlsconfig.MTLSServerConfig(src, src, src.Authorizer(agenttls.Ingress)), agenttls.Ingress)),
	}
	for _, tc := range svidLeafCases {
		for name, srv := range servers {
			t.Run(name+"/"+tc.name, func(t *testing.T) {
				leaf := issue(t, ca, plannerID, tc.opt)
				_, err := dial(t, srv.addr, rawClient(leaf))
				r := srv.next(t)
				if tc.wantErr == "" {
					if err != nil || r.err != nil {
						t.Fatalf("refused: client %v, server %v", err, r.err)
					}
					return
				}
				if err == nil || r.err == nil {
					t.Fatalf("accepted a leaf that %s (server error %v)", tc.wantErr, r.err)
				}
				mustContain(t, r.err.Error(), "ingress peer "+plannerID.String(), "is not an X.509-SVID", tc.wantErr)
			})
		}
	}
}

// TestServerLeavesAreSVIDs: the client refuses a server whose leaf is not
// an X.509-SVID.
func TestServerLeavesAreSVIDs(t *testing.T) {
	ca := newCA(t, tdLocal)
	planner := newIdentity(t, ca, plannerID, nil, nil).source(t)
	for _, tc := range svidLeafCases {
		t.Run(tc.name, func(t *testing.T) {
			leaf := issue(t, ca, workerID, tc.opt)
			raw := rawClient(leaf)
			srv := serve(t, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: raw.Certificates, ClientAuth: tls.RequireAnyClientCert})
			_, err := dial(t, srv.addr, planner.ClientTLSConfig())
			_ = srv.next(t)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted a server leaf that %s", tc.wantErr)
			}
			mustContain(t, err.Error(), "egress peer "+workerID.String(), "is not an X.509-SVID", tc.wantErr)
		})
	}
}
