package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentmesh/agentmesh/internal/agentid"
)

// InvalidError says why CA material cannot be used. Its message is meant
// for users (conditions, Events, readiness) and never quotes key material.
type InvalidError struct {
	msg string
}

func (e *InvalidError) Error() string { return e.msg }

func invalid(format string, args ...any) error {
	return &InvalidError{msg: fmt.Sprintf(format, args...)}
}

// IsInvalid reports whether err says that CA material is unusable (as
// opposed to a transient failure).
func IsInvalid(err error) bool {
	var ie *InvalidError
	return errors.As(err, &ie)
}

// Load parses and validates CA Secret data at time now: tls.crt must start
// with a CA certificate that may sign certificates, is valid now, and whose
// private key is in tls.key; the certificates after it in tls.crt are its
// chain; ca.crt, when present, holds the trust anchors that it must chain
// to (otherwise the top of tls.crt is the anchor). Finally the CA must
// actually be able to sign a SPIFFE certificate for td that verifies to the
// anchors, which catches name constraints and broken keys.
//
// A next CA (next.crt, next.key, optional next-ca.crt with its anchors),
// prepared by a rotation or supplied by a user to migrate, passes the same
// checks. Anchors of ca.crt that neither CA chains to are retired: still
// trusted until the rotation that retired them completes. The rotation
// state is read from the annotations.
func Load(data map[string][]byte, annotations map[string]string, td spiffeid.TrustDomain, now time.Time) (*State, error) {
	active, err := loadAuthority(data, SecretCertKey, SecretKeyKey, now)
	if err != nil {
		return nil, err
	}
	var anchors []*x509.Certificate
	if b, ok := data[SecretTrustKey]; ok && len(b) > 0 {
		if anchors, err = parseAnchors(b, SecretTrustKey); err != nil {
			return nil, err
		}
	} else {
		anchors = []*x509.Certificate{active.top}
	}
	var next *authority
	if len(data[NextCertKey]) > 0 || len(data[NextKeyKey]) > 0 {
		if next, err = loadAuthority(data, NextCertKey, NextKeyKey, now); err != nil {
			return nil, err
		}
		nextAnchors := []*x509.Certificate{next.top}
		if b := data[NextTrustKey]; len(b) > 0 {
			if nextAnchors, err = parseAnchors(b, NextTrustKey); err != nil {
				return nil, err
			}
		}
		anchors = append(anchors, nextAnchors...)
	}
	rot, err := ParseRotation(annotations)
	if err != nil {
		return nil, invalid("annotation %s: %v", AnnotationRotation, err)
	}

	s := newState(td, active.Authority, anchors)
	if n := len(s.bundlePEM); n > MaxBundlePEMSize || len(s.Anchors) > MaxBundleCertificates {
		// The operator writes them into ca.crt and reads them back.
		return nil, invalid("%s and %s hold %d trust anchors in %d bytes of PEM, over the limits of %d and %d bytes",
			SecretTrustKey, NextTrustKey, len(s.Anchors), n, MaxBundleCertificates, MaxBundlePEMSize)
	}
	s.Rotation = rot
	if err := s.verifyChains(active, SecretCertKey, anchorSource(data), now); err != nil {
		return nil, err
	}
	if next != nil {
		s.Next = next.Authority
		if err := s.verifyChains(next, NextCertKey, "the anchors of ca.crt and next-ca.crt", now); err != nil {
			return nil, err
		}
	}
	for _, a := range s.Anchors {
		if !s.chainsTo(s.Active, a) && (s.Next == nil || !s.chainsTo(s.Next, a)) {
			s.Retired = append(s.Retired, a)
		}
	}
	if err := selfTests.run(s, data, now); err != nil {
		return nil, invalid("the CA cannot issue certificates for trust domain %q: %v", td.Name(), err)
	}
	return s, nil
}

// authority is a loaded CA with the top certificate of its tls.crt.
type authority struct {
	*Authority
	top *x509.Certificate
}

func loadAuthority(data map[string][]byte, certKey, keyKey string, now time.Time) (*authority, error) {
	certPEM, ok := data[certKey]
	if !ok || len(certPEM) == 0 {
		return nil, invalid("%s is missing or empty", certKey)
	}
	certs, err := ParseCertificatesPEM(certPEM)
	if err != nil {
		return nil, invalid("%s: %v", certKey, err)
	}
	keyPEM, ok := data[keyKey]
	if !ok || len(keyPEM) == 0 {
		return nil, invalid("%s is missing or empty", keyKey)
	}
	key, err := ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, invalid("%s: %v", keyKey, err)
	}
	cert := certs[0]
	switch {
	case !cert.BasicConstraintsValid || !cert.IsCA:
		return nil, invalid("%s: the certificate (subject %q) is not a CA certificate", certKey, cert.Subject.String())
	case cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return nil, invalid("%s: the CA certificate's key usage does not allow signing certificates (certSign)", certKey)
	case now.Before(cert.NotBefore):
		return nil, invalid("%s: the CA certificate is not valid before %s", certKey, cert.NotBefore.UTC().Format(time.RFC3339))
	case !now.Before(cert.NotAfter):
		return nil, invalid("%s: the CA certificate expired at %s", certKey, cert.NotAfter.UTC().Format(time.RFC3339))
	case !KeyMatchesCertificate(key, cert):
		return nil, invalid("%s is not the private key of the CA certificate in %s", keyKey, certKey)
	}
	var chain []*x509.Certificate
	for _, c := range certs[1:] {
		if !isSelfSigned(c) {
			chain = append(chain, c)
		}
	}
	return &authority{Authority: &Authority{Cert: cert, Chain: chain, Signer: key}, top: certs[len(certs)-1]}, nil
}

// parseAnchors reads ca.crt or next-ca.crt under the bundle caps: the
// operator writes the union of every anchor there during a rotation, which
// may hold more certificates than a tls.crt may.
func parseAnchors(b []byte, key string) ([]*x509.Certificate, error) {
	anchors, err := ParseBundlePEM(b)
	if err != nil {
		return nil, invalid("%s: %v", key, err)
	}
	for i, a := range anchors {
		if !a.BasicConstraintsValid || !a.IsCA {
			return nil, invalid("%s: certificate %d (subject %q) is not a CA certificate", key, i+1, a.Subject.String())
		}
	}
	return anchors, nil
}

// verifyChains checks that a CA chains to the anchors.
func (s *State) verifyChains(a *authority, certKey, source string, now time.Time) error {
	inter := x509.NewCertPool()
	for _, c := range a.Chain {
		inter.AddCert(c)
	}
	if _, err := a.Cert.Verify(x509.VerifyOptions{
		Roots: s.pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return invalid("%s: the CA certificate does not chain to the trust anchors (%s): %v", certKey, source, err)
	}
	return nil
}

// chainsTo reports whether the CA a chains to the anchor.
func (s *State) chainsTo(a *Authority, anchor *x509.Certificate) bool {
	if a.Cert.Equal(anchor) {
		return true
	}
	roots := x509.NewCertPool()
	roots.AddCert(anchor)
	inter := x509.NewCertPool()
	for _, c := range a.Chain {
		inter.AddCert(c)
	}
	_, err := a.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: a.Cert.NotBefore.Add(time.Second),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

func anchorSource(data map[string][]byte) string {
	if len(data[SecretTrustKey]) > 0 {
		return SecretTrustKey
	}
	return "the last certificate of " + SecretCertKey
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil
}

// selfTests remembers the CAs that passed the self-test, so that it runs
// once per CA rather than on every load (each rotation pass loads the CA
// Secret). A CA is the digest of what the test depends on: the trust
// domain, tls.crt, tls.key and the anchors. Failures are not remembered.
var selfTests = &selfTestCache{passed: map[[sha256.Size]byte]bool{}}

// maxSelfTests bounds the memory of the cache; past it, it starts over.
const maxSelfTests = 16

type selfTestCache struct {
	mu     sync.Mutex
	passed map[[sha256.Size]byte]bool
	runs   int // self-tests actually run, for tests
}

func (c *selfTestCache) run(s *State, data map[string][]byte, now time.Time) error {
	h := sha256.New()
	for _, b := range [][]byte{[]byte(s.TrustDomain.Name()), data[SecretCertKey], data[SecretKeyKey]} {
		_, _ = fmt.Fprintf(h, "%d:", len(b))
		_, _ = h.Write(b)
	}
	for _, a := range s.Anchors {
		_, _ = fmt.Fprintf(h, "%d:", len(a.Raw))
		_, _ = h.Write(a.Raw)
	}
	var key [sha256.Size]byte
	h.Sum(key[:0])
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.passed[key] {
		return nil
	}
	c.runs++
	if err := selfTest(s, now); err != nil {
		return err
	}
	if len(c.passed) >= maxSelfTests {
		clear(c.passed)
	}
	c.passed[key] = true
	return nil
}

// selfTest signs a throw-away leaf for a SPIFFE ID of the trust domain and
// verifies it to the anchors.
func selfTest(s *State, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	id, err := agentid.ID(s.TrustDomain, "agentmesh-system", "self-test")
	if err != nil {
		return err
	}
	serial, err := NewSerial(rand.Reader)
	if err != nil {
		return err
	}
	notAfter := now.Add(time.Minute)
	if notAfter.After(s.Active.Cert.NotAfter) {
		notAfter = s.Active.Cert.NotAfter
	}
	leaf, err := s.Active.Sign(&x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-time.Second),
		NotAfter:              notAfter,
		URIs:                  []*url.URL{id.URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}, key.Public(), rand.Reader)
	if err != nil {
		return err
	}
	inter := x509.NewCertPool()
	inter.AddCert(s.Active.Cert)
	for _, c := range s.Active.Chain {
		inter.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots: s.pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return err
}

// Sign issues a certificate from tmpl for pub, signed by the authority.
func (a *Authority) Sign(tmpl *x509.Certificate, pub any, r io.Reader) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(r, tmpl, a.Cert, pub, a.Signer)
	if err != nil {
		return nil, fmt.Errorf("signing certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}
