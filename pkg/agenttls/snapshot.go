package agenttls

import (
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Snapshot is one consistent, validated version of the identity files: the
// agent's X.509-SVID, the CAs of each trusted trust domain, and the policy.
// A Snapshot never changes; a Source replaces it as a whole when the files
// change. It implements go-spiffe's x509svid.Source and x509bundle.Source.
type Snapshot struct {
	id      spiffeid.ID
	certs   []*x509.Certificate
	key     crypto.Signer
	tlsCert *tls.Certificate
	policy  *Policy
	bundles map[spiffeid.TrustDomain]*x509bundle.Bundle
	// untrusted counts the CAs of bundle.pem that policy.json does not
	// assign to a trust domain.
	untrusted int
}

// Load reads and validates the identity files once, without watching them.
// Most agents want NewSource instead, which follows updates.
func Load(files Files) (*Snapshot, error) {
	if err := files.validate(); err != nil {
		return nil, err
	}
	r, err := readConsistent(files)
	if err != nil {
		return nil, err
	}
	return parse(r)
}

// parse validates the content of the four files: the certificate and key
// parse and match, the leaf is an X.509-SVID with exactly one SPIFFE ID,
// policy.json is valid and about that SPIFFE ID, every CA that policy.json
// names is in bundle.pem, and the leaf verifies against the CAs of its own
// trust domain. Errors never quote the key.
func parse(r *raw) (*Snapshot, error) {
	certs, err := parseCertificatesPEM(r.cert, MaxCertFileCertificates)
	if err != nil {
		return nil, fmt.Errorf("agentmesh: %s: %w", CertFileName, err)
	}
	leaf := certs[0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("agentmesh: %s: the leaf is not an X.509-SVID: %w", CertFileName, err)
	}
	if err := checkLeaf(leaf, id); err != nil {
		return nil, fmt.Errorf("agentmesh: %s: %w", CertFileName, err)
	}
	key, err := parsePrivateKeyPEM(r.key)
	if err != nil {
		return nil, fmt.Errorf("agentmesh: %s: %w", KeyFileName, err)
	}
	if !keyMatches(key, leaf) {
		return nil, fmt.Errorf("agentmesh: %s does not match the certificate of %s in %s (serial %s)",
			KeyFileName, id, CertFileName, leaf.SerialNumber.Text(16))
	}
	pol, err := ParsePolicy(r.policy)
	if err != nil {
		return nil, fmt.Errorf("agentmesh: %w", err)
	}
	if pol.SPIFFEID != id.String() {
		return nil, fmt.Errorf("agentmesh: %s is about %s but the certificate is of %s", PolicyFileName, pol.SPIFFEID, id)
	}
	bundles, untrusted, err := mapBundle(r.bundle, pol)
	if err != nil {
		return nil, err
	}
	s := &Snapshot{id: id, certs: certs, key: key, policy: pol, bundles: bundles, untrusted: untrusted}
	// An expired own certificate is still loaded (the operator renews it;
	// peers refuse it), so verify at an instant when the leaf is valid; but
	// a leaf that a stale bundle does not trust is an inconsistent update.
	if _, _, err := x509svid.Verify(certs, bundleMap(bundles), x509svid.WithTime(validInstant(leaf, time.Now()))); err != nil {
		return nil, fmt.Errorf("agentmesh: the certificate of %s does not verify against the CAs of its own trust domain in %s: %w",
			id, BundleFileName, err)
	}
	s.tlsCert = &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range certs {
		s.tlsCert.Certificate = append(s.tlsCert.Certificate, c.Raw)
	}
	return s, nil
}

// validInstant is now, or the nearest instant inside the leaf's validity.
func validInstant(leaf *x509.Certificate, now time.Time) time.Time {
	switch {
	case now.Before(leaf.NotBefore):
		return leaf.NotBefore
	case now.After(leaf.NotAfter):
		return leaf.NotAfter
	}
	return now
}

// checkLeaf applies the X.509-SVID rules to the agent's own leaf.
func checkLeaf(leaf *x509.Certificate, id spiffeid.ID) error {
	if id.Path() == "" {
		return fmt.Errorf("the SPIFFE ID %s has no path", id)
	}
	if err := checkSVIDLeaf(leaf); err != nil {
		return fmt.Errorf("the leaf of %s %w", id, err)
	}
	return nil
}

// mapBundle assigns the CAs of bundle.pem to trust domains by the
// fingerprints of policy.json. A CA that policy.json does not list is
// trusted for nothing; a listed fingerprint missing from bundle.pem makes the
// files inconsistent.
func mapBundle(pemData []byte, pol *Policy) (map[spiffeid.TrustDomain]*x509bundle.Bundle, int, error) {
	certs, err := parseCertificatesPEM(pemData, MaxBundleFileCertificates)
	if err != nil {
		return nil, 0, fmt.Errorf("agentmesh: %s: %w", BundleFileName, err)
	}
	byFP := make(map[string]*x509.Certificate, len(certs))
	for _, c := range certs {
		byFP[fingerprint(c)] = c
	}
	used := map[string]bool{}
	out := make(map[spiffeid.TrustDomain]*x509bundle.Bundle, len(pol.TrustDomains))
	for name, fps := range pol.TrustDomains {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return nil, 0, fmt.Errorf("agentmesh: %s: trust domain %q: %w", PolicyFileName, name, err)
		}
		b := x509bundle.New(td)
		for _, fp := range fps {
			c, ok := byFP[fp]
			if !ok {
				return nil, 0, fmt.Errorf("agentmesh: %s lists CA %s of trust domain %s, which %s does not hold",
					PolicyFileName, fp, name, BundleFileName)
			}
			used[fp] = true
			b.AddX509Authority(c)
		}
		out[td] = b
	}
	return out, len(byFP) - len(used), nil
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// bundleMap is an x509bundle.Source over the bundles of a snapshot; it
// hands out the snapshot's own bundles, for verification only.
type bundleMap map[spiffeid.TrustDomain]*x509bundle.Bundle

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (m bundleMap) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	b, ok := m[td]
	if !ok || b.Empty() {
		return nil, fmt.Errorf("agentmesh: no CA is trusted for trust domain %q", td.Name())
	}
	return b, nil
}

// ID is the agent's SPIFFE ID.
func (s *Snapshot) ID() spiffeid.ID { return s.id }

// Leaf is the agent's leaf certificate. Callers must not modify it.
func (s *Snapshot) Leaf() *x509.Certificate { return s.certs[0] }

// Certificates are the leaf followed by its chain, as in tls.crt.
func (s *Snapshot) Certificates() []*x509.Certificate { return slices.Clone(s.certs) }

// Policy returns a copy of the effective policy.
func (s *Snapshot) Policy() *Policy { return s.policy.clone() }

// TrustDomains lists the trust domains that have at least one CA, sorted.
func (s *Snapshot) TrustDomains() []spiffeid.TrustDomain {
	out := make([]spiffeid.TrustDomain, 0, len(s.bundles))
	for td, b := range s.bundles {
		if !b.Empty() {
			out = append(out, td)
		}
	}
	slices.SortFunc(out, func(a, b spiffeid.TrustDomain) int { return a.Compare(b) })
	return out
}

// GetX509SVID returns the agent's X.509-SVID. It implements go-spiffe's
// x509svid.Source.
func (s *Snapshot) GetX509SVID() (*x509svid.SVID, error) {
	return &x509svid.SVID{ID: s.id, Certificates: slices.Clone(s.certs), PrivateKey: s.key}, nil
}

// GetX509BundleForTrustDomain returns a copy of the CAs that may vouch for
// identities of td. It implements go-spiffe's x509bundle.Source; a trust
// domain without CAs is an error, so its peers fail verification.
func (s *Snapshot) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	b, err := bundleMap(s.bundles).GetX509BundleForTrustDomain(td)
	if err != nil {
		return nil, err
	}
	return b.Clone(), nil
}
