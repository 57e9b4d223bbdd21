package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
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
func Load(data map[string][]byte, td spiffeid.TrustDomain, now time.Time) (*State, error) {
	certPEM, ok := data[SecretCertKey]
	if !ok || len(certPEM) == 0 {
		return nil, invalid("%s is missing or empty", SecretCertKey)
	}
	certs, err := ParseCertificatesPEM(certPEM)
	if err != nil {
		return nil, invalid("%s: %v", SecretCertKey, err)
	}
	keyPEM, ok := data[SecretKeyKey]
	if !ok || len(keyPEM) == 0 {
		return nil, invalid("%s is missing or empty", SecretKeyKey)
	}
	key, err := ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, invalid("%s: %v", SecretKeyKey, err)
	}

	cert := certs[0]
	switch {
	case !cert.BasicConstraintsValid || !cert.IsCA:
		return nil, invalid("%s: the certificate (subject %q) is not a CA certificate", SecretCertKey, cert.Subject.String())
	case cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return nil, invalid("%s: the CA certificate's key usage does not allow signing certificates (certSign)", SecretCertKey)
	case now.Before(cert.NotBefore):
		return nil, invalid("%s: the CA certificate is not valid before %s", SecretCertKey, cert.NotBefore.UTC().Format(time.RFC3339))
	case !now.Before(cert.NotAfter):
		return nil, invalid("%s: the CA certificate expired at %s", SecretCertKey, cert.NotAfter.UTC().Format(time.RFC3339))
	case !KeyMatchesCertificate(key, cert):
		return nil, invalid("%s is not the private key of the CA certificate in %s", SecretKeyKey, SecretCertKey)
	}

	var chain []*x509.Certificate
	for _, c := range certs[1:] {
		if !isSelfSigned(c) {
			chain = append(chain, c)
		}
	}
	var anchors []*x509.Certificate
	if b, ok := data[SecretTrustKey]; ok && len(b) > 0 {
		anchors, err = ParseCertificatesPEM(b)
		if err != nil {
			return nil, invalid("%s: %v", SecretTrustKey, err)
		}
		for i, a := range anchors {
			if !a.BasicConstraintsValid || !a.IsCA {
				return nil, invalid("%s: certificate %d (subject %q) is not a CA certificate", SecretTrustKey, i+1, a.Subject.String())
			}
		}
	} else {
		anchors = []*x509.Certificate{certs[len(certs)-1]}
	}

	s := newState(td, &Authority{Cert: cert, Chain: chain, Signer: key}, anchors)
	inter := x509.NewCertPool()
	for _, c := range chain {
		inter.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots: s.pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, invalid("%s: the CA certificate does not chain to the trust anchors (%s): %v", SecretCertKey, anchorSource(data), err)
	}
	if err := selfTest(s, now); err != nil {
		return nil, invalid("the CA cannot issue certificates for trust domain %q: %v", td.Name(), err)
	}
	return s, nil
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

// selfTest signs a throw-away leaf for a SPIFFE ID of the trust domain and
// verifies it to the anchors.
func selfTest(s *State, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	id, err := spiffeid.FromSegments(s.TrustDomain, "ns", "agentmesh-system", "agent", "self-test")
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
