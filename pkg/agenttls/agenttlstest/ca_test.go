package agenttlstest_test

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/agentmesh/agentmesh/pkg/agenttls/agenttlstest"
)

func TestIssueMakesX509SVIDs(t *testing.T) {
	root := mustCA(t, tdLocal)
	inter, err := root.NewIntermediate()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := inter.Issue(workerID)
	if err != nil {
		t.Fatal(err)
	}
	key, err := leaf.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	// go-spiffe parses it as an X.509-SVID and verifies the chain to the root.
	svid, err := x509svid.Parse(leaf.CertPEM(), key)
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != workerID || len(svid.Certificates) != 2 || !svid.Certificates[1].Equal(inter.Cert) {
		t.Fatalf("SVID %s with %d certificates", svid.ID, len(svid.Certificates))
	}
	pool := x509.NewCertPool()
	pool.AddCert(root.Root)
	inters := x509.NewCertPool()
	inters.AddCert(inter.Cert)
	if _, err := leaf.Cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inters,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the leaf does not verify to the root: %v", err)
	}
	if inter.Root != root.Root || root.Root != root.Cert {
		t.Error("Root is not the self-signed root")
	}

	past := time.Now().Add(-time.Hour)
	old, err := root.Issue(workerID, agenttlstest.WithValidity(past.Add(-time.Hour), past))
	if err != nil {
		t.Fatal(err)
	}
	if !old.Cert.NotAfter.Equal(past.Truncate(time.Second)) || len(old.Chain) != 0 {
		t.Errorf("NotAfter %s, want %s; chain %d", old.Cert.NotAfter, past, len(old.Chain))
	}
}
