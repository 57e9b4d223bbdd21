package agenttlstest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Validity of what this package issues, around the time of issuance.
const (
	caLifetime   = 24 * time.Hour
	leafLifetime = time.Hour
	backdate     = time.Hour
)

// CA is a certificate authority of one trust domain.
type CA struct {
	// TrustDomain is the trust domain the CA signs for.
	TrustDomain spiffeid.TrustDomain
	// Cert is the CA's certificate.
	Cert *x509.Certificate
	// Key is the CA's private key.
	Key crypto.Signer
	// Root is the self-signed root above Cert (Cert itself for a root): the
	// certificate that goes into bundle.pem.
	Root *x509.Certificate
	// chain is what follows a leaf of this CA in tls.crt.
	chain []*x509.Certificate
}

// NewCA creates a self-signed ECDSA P-256 root CA for td, valid from an hour
// ago for a day, like the one the operator bootstraps.
func NewCA(td spiffeid.TrustDomain) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl, err := caTemplate(td, "agentmesh test CA ")
	if err != nil {
		return nil, err
	}
	cert, err := sign(tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	return &CA{TrustDomain: td, Cert: cert, Key: key, Root: cert}, nil
}

// NewIntermediate creates an intermediate CA signed by c. Leaves of the
// intermediate carry it (and c, when c is an intermediate too) as their chain.
func (c *CA) NewIntermediate() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl, err := caTemplate(c.TrustDomain, "agentmesh test intermediate CA ")
	if err != nil {
		return nil, err
	}
	cert, err := sign(tmpl, c.Cert, key.Public(), c.Key)
	if err != nil {
		return nil, err
	}
	return &CA{TrustDomain: c.TrustDomain, Cert: cert, Key: key, Root: c.Root, chain: append([]*x509.Certificate{cert}, c.chain...)}, nil
}

func caTemplate(td spiffeid.TrustDomain, cn string) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"agentmesh"}, CommonName: cn + td.Name(), SerialNumber: serial.Text(16)},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{td.ID().URL()},
	}, nil
}

// LeafOption changes the template of a leaf before it is signed, e.g. its
// validity (WithValidity) or, to build a broken certificate, anything else.
type LeafOption func(*x509.Certificate)

// WithValidity sets a leaf's NotBefore and NotAfter, e.g. in the past to
// issue an expired certificate.
func WithValidity(notBefore, notAfter time.Time) LeafOption {
	return func(t *x509.Certificate) { t.NotBefore, t.NotAfter = notBefore, notAfter }
}

// Leaf is an issued X.509-SVID with its chain and key.
type Leaf struct {
	// ID is the SPIFFE ID of the leaf.
	ID spiffeid.ID
	// Cert is the leaf certificate.
	Cert *x509.Certificate
	// Chain is what follows the leaf in tls.crt: the intermediates, never
	// the root.
	Chain []*x509.Certificate
	// Key is the leaf's private key.
	Key crypto.Signer
}

// Issue signs an X.509-SVID for id with a fresh ECDSA P-256 key, as the
// operator does: exactly one URI SAN, not a CA, digitalSignature, server and
// client auth, valid from an hour ago for two hours unless opts say otherwise.
// The SPIFFE ID may be of another trust domain than the CA's, to build the
// certificates that a verifier must refuse.
func (c *CA) Issue(id spiffeid.ID, opts ...LeafOption) (*Leaf, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate leaf key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(leafLifetime),
		URIs:                  []*url.URL{id.URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	for _, o := range opts {
		o(tmpl)
	}
	cert, err := sign(tmpl, c.Cert, key.Public(), c.Key)
	if err != nil {
		return nil, err
	}
	return &Leaf{ID: id, Cert: cert, Chain: append([]*x509.Certificate(nil), c.chain...), Key: key}, nil
}

// CertPEM is the content of tls.crt: the leaf, then its chain.
func (l *Leaf) CertPEM() []byte {
	return EncodeCertificatesPEM(append([]*x509.Certificate{l.Cert}, l.Chain...)...)
}

// KeyPEM is the content of tls.key: the key as PKCS#8 PEM.
func (l *Leaf) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(l.Key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// EncodeCertificatesPEM encodes certs as consecutive CERTIFICATE blocks.
func EncodeCertificatesPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse signed certificate: %w", err)
	}
	return cert, nil
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}
