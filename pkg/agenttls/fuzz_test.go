package agenttls_test

import (
	"crypto"
	"crypto/x509"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
	"github.com/agentmesh/agentmesh/pkg/agenttls/agenttlstest"
)

// Fuzz targets for the four files an agent reads; `make fuzz` runs them
// for long, `make test` for a few seconds each.

// FuzzSource: all four files of an identity volume replaced at once by
// anything, and reloaded by a running Source. Invariants: no panic; a
// refused update leaves the last good Snapshot in place, untouched (never
// a partially accepted one); an accepted one is a whole, consistent
// identity: the pinned SPIFFE ID, a key that matches the leaf, a leaf that
// verifies against the CAs of its own trust domain, and a policy about it.
func FuzzSource(f *testing.F) {
	local, err := agenttlstest.NewCA(tdLocal)
	if err != nil {
		f.Fatal(err)
	}
	inter, err := local.NewIntermediate()
	if err != nil {
		f.Fatal(err)
	}
	partner, err := agenttlstest.NewCA(tdPartner)
	if err != nil {
		f.Fatal(err)
	}
	payload := func(ca *agenttlstest.CA, id spiffeid.ID, p *agenttls.Policy, bundles map[spiffeid.TrustDomain][]*x509.Certificate, opts ...agenttlstest.LeafOption) map[string][]byte {
		leaf, err := ca.Issue(id, opts...)
		if err != nil {
			f.Fatal(err)
		}
		if p == nil {
			p = agenttlstest.DefaultPolicy(id)
		}
		trust, err := agenttlstest.RenderTrust(p, bundles)
		if err != nil {
			f.Fatal(err)
		}
		files, err := agenttlstest.Payload(leaf, trust)
		if err != nil {
			f.Fatal(err)
		}
		return files
	}
	own := map[spiffeid.TrustDomain][]*x509.Certificate{tdLocal: {local.Root}}
	good := payload(local, workerID, nil, own)
	add := func(p map[string][]byte) {
		f.Add(p[agenttls.CertFileName], p[agenttls.KeyFileName], p[agenttls.BundleFileName], p[agenttls.PolicyFileName])
	}
	add(good)
	add(payload(inter, workerID, ingressOnly(workerID, "from-planner", agenttls.ModeEnforce, plannerID),
		map[spiffeid.TrustDomain][]*x509.Certificate{tdLocal: {local.Root}, tdPartner: {partner.Root}}))
	now := time.Now()
	add(payload(local, workerID, nil, own, agenttlstest.WithValidity(now.Add(-50*time.Minute), now.Add(-10*time.Minute))))
	add(payload(local, plannerID, nil, own))                                                                      // another identity
	add(payload(partner, workerID, nil, map[spiffeid.TrustDomain][]*x509.Certificate{tdPartner: {partner.Root}})) // wrong CA
	mixed := payload(local, workerID, nil, own)
	mixed[agenttls.KeyFileName] = good[agenttls.KeyFileName]
	add(mixed)

	dir := f.TempDir()
	write := func(p map[string][]byte) error {
		for name, b := range p {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
				return err
			}
		}
		return nil
	}
	if err := write(good); err != nil {
		f.Fatal(err)
	}
	src, err := agenttls.NewSource(agenttls.WithDir(dir), agenttls.WithPollInterval(0), agenttls.WithoutFSNotify(), agenttls.WithLogger(discard()))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = src.Close() })

	f.Fuzz(func(t *testing.T, cert, key, bundle, policy []byte) {
		before := src.Snapshot()
		beforePolicy := before.Policy()
		if err := write(map[string][]byte{agenttls.CertFileName: cert, agenttls.KeyFileName: key,
			agenttls.BundleFileName: bundle, agenttls.PolicyFileName: policy}); err != nil {
			t.Fatal(err)
		}
		if err := src.Reload(); err != nil {
			if src.Snapshot() != before || !reflect.DeepEqual(before.Policy(), beforePolicy) {
				t.Fatalf("a refused update (%v) changed the Snapshot", err)
			}
			return
		}
		s := src.Snapshot()
		if s.ID() != workerID {
			t.Fatalf("accepted the files of %s, pinned %s", s.ID(), workerID)
		}
		svid, err := s.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		if pub, ok := svid.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(s.Leaf().PublicKey) {
			t.Fatal("the key is not the leaf's")
		}
		at := time.Now()
		if leaf := s.Leaf(); at.After(leaf.NotAfter) {
			at = leaf.NotAfter
		} else if at.Before(leaf.NotBefore) {
			at = leaf.NotBefore
		}
		if _, _, err := x509svid.Verify(s.Certificates(), s, x509svid.WithTime(at)); err != nil {
			t.Fatalf("the accepted leaf does not verify against its own trust domain: %v", err)
		}
		if p := s.Policy(); p.SPIFFEID != workerID.String() {
			t.Fatalf("the accepted policy is about %s", p.SPIFFEID)
		}
	})
}
