package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

// Keys of the CA Secret. They are the keys cert-manager writes, so that a
// CA issued by cert-manager (or any kubernetes.io/tls Secret) can be used
// as is.
const (
	// SecretCertKey holds the signing CA certificate, optionally followed by
	// the intermediates above it.
	SecretCertKey = mtlsv1alpha1.SecretCertKey
	// SecretKeyKey holds the signing CA's private key.
	SecretKeyKey = mtlsv1alpha1.SecretKeyKey
	// SecretTrustKey optionally holds the trust anchors of the trust domain:
	// the root(s) that the signing CA chains to. It may hold several
	// certificates, for example an old and a new root during a rotation.
	SecretTrustKey = mtlsv1alpha1.SecretTrustKey
	// NextCertKey and NextKeyKey hold the next CA during a rotation:
	// published in every trust bundle, not yet signing. A user migrating
	// to another CA (an enterprise intermediate) puts it here, with its
	// anchors in NextTrustKey when it does not chain to one in ca.crt.
	NextCertKey  = "next.crt"
	NextKeyKey   = "next.key"
	NextTrustKey = "next-ca.crt"
)

// DefaultLifetime is the lifetime of a bootstrapped root CA.
const DefaultLifetime = 365 * 24 * time.Hour

// caBackdate is how far before its creation a bootstrapped CA is valid, so
// that nodes whose clocks lag still accept it.
const caBackdate = time.Hour

// Authority is a CA that can sign: its certificate, the certificates above
// it that peers may need to build a chain, and its private key.
type Authority struct {
	// Cert is the signing CA certificate.
	Cert *x509.Certificate
	// Chain holds the intermediates above Cert, in order, without
	// self-signed roots; it is appended to every leaf's chain.
	Chain []*x509.Certificate
	// Signer is the CA's private key.
	Signer crypto.Signer
}

// SerialHex is the serial number of the CA certificate in lower-case hex.
func (a *Authority) SerialHex() string { return SerialHex(a.Cert.SerialNumber) }

// SerialHex formats a certificate serial number as lower-case hex.
func SerialHex(n *big.Int) string { return fmt.Sprintf("%x", n) }

// State is the CA material the operator works with: the authority that
// signs, and the trust anchors that every identity's trust bundle lists.
type State struct {
	// Active signs new leaves.
	Active *Authority
	// Next is the CA a rotation is moving to: trusted, not yet signing.
	Next *Authority
	// Anchors are the trust anchors of the trust domain, deduplicated, in a
	// stable order: every CA that may currently have signed a valid leaf.
	// They include the next CA's and the retired ones.
	Anchors []*x509.Certificate
	// Retired are anchors that neither the active nor the next CA chains
	// to: a rotation keeps them until every leaf they signed is replaced or
	// expired.
	Retired []*x509.Certificate
	// Rotation is the state of the CA rotation.
	Rotation Rotation
	// TrustDomain is the trust domain the CA signs for.
	TrustDomain spiffeid.TrustDomain

	bundlePEM []byte
	pool      *x509.CertPool
}

// newState builds a State and its derived bundle and pool.
func newState(td spiffeid.TrustDomain, active *Authority, anchors []*x509.Certificate) *State {
	s := &State{Active: active, TrustDomain: td}
	pool := x509.NewCertPool()
	for _, a := range anchors {
		if containsCert(s.Anchors, a) {
			continue
		}
		s.Anchors = append(s.Anchors, a)
		pool.AddCert(a)
	}
	s.bundlePEM = EncodeCertificatesPEM(s.Anchors...)
	s.pool = pool
	return s
}

// BundlePEM is the PEM trust bundle of the trust domain (every anchor).
func (s *State) BundlePEM() []byte { return bytes.Clone(s.bundlePEM) }

// BundleHash identifies the trust bundle (the anchors), so that a rotation
// can tell which written bundles are current by comparing a hash.
func (s *State) BundleHash() string {
	sum := sha256.Sum256(s.bundlePEM)
	return hex.EncodeToString(sum[:16])
}

// Pool is the trust bundle as a certificate pool. Callers must not modify it.
func (s *State) Pool() *x509.CertPool { return s.pool }

// Trusts reports whether leaf, with the intermediates in chain, verifies to
// one of the anchors. Expiry is not considered: the check is made at the
// leaf's NotBefore, so that "expired" and "signed by a CA no longer trusted"
// stay separate questions.
func (s *State) Trusts(leaf *x509.Certificate, chain []*x509.Certificate) bool {
	inter := x509.NewCertPool()
	for _, c := range chain {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         s.pool,
		Intermediates: inter,
		CurrentTime:   leaf.NotBefore.Add(time.Second),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	return err == nil
}

// SignedByActive reports whether leaf (with the intermediates in chain) was
// signed by the active CA.
func (s *State) SignedByActive(leaf *x509.Certificate) bool {
	a := s.Active.Cert
	if len(leaf.AuthorityKeyId) > 0 && len(a.SubjectKeyId) > 0 {
		return bytes.Equal(leaf.AuthorityKeyId, a.SubjectKeyId) && leaf.CheckSignatureFrom(a) == nil
	}
	return leaf.CheckSignatureFrom(a) == nil
}

// SignerSerial is the serial, in hex, of the CA that signed leaf: the
// active CA, an intermediate of chain, or an anchor; empty when none did.
func (s *State) SignerSerial(leaf *x509.Certificate, chain []*x509.Certificate) string {
	candidates := append(append([]*x509.Certificate{s.Active.Cert}, chain...), s.Anchors...)
	for _, c := range candidates {
		if len(leaf.AuthorityKeyId) > 0 && len(c.SubjectKeyId) > 0 {
			if bytes.Equal(leaf.AuthorityKeyId, c.SubjectKeyId) {
				return SerialHex(c.SerialNumber)
			}
			continue
		}
		if leaf.CheckSignatureFrom(c) == nil {
			return SerialHex(c.SerialNumber)
		}
	}
	return ""
}

func containsCert(list []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range list {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

// GenerateOptions configure Generate.
type GenerateOptions struct {
	// TrustDomain is put in the root as its SPIFFE ID (spiffe://<td>).
	TrustDomain spiffeid.TrustDomain
	// Lifetime of the root; DefaultLifetime when zero.
	Lifetime time.Duration
	// Now is the time of creation.
	Now time.Time
	// Rand is the source of randomness; crypto/rand when nil.
	Rand io.Reader
}

// Generate creates a self-signed ECDSA P-256 root CA. Its Subject carries
// its serial number, so that two roots of the same trust domain (an old and
// a new one during a rotation) never share a Subject.
func Generate(o GenerateOptions) (*Authority, error) {
	if o.TrustDomain.IsZero() {
		return nil, errors.New("generate CA: no trust domain")
	}
	r := o.Rand
	if r == nil {
		r = rand.Reader
	}
	lifetime := o.Lifetime
	if lifetime <= 0 {
		lifetime = DefaultLifetime
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), r)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := NewSerial(r)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"agentmesh"},
			CommonName:   "agentmesh agent CA " + o.TrustDomain.Name(),
			SerialNumber: SerialHex(serial),
		},
		NotBefore:             o.Now.Add(-caBackdate),
		NotAfter:              o.Now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{o.TrustDomain.ID().URL()},
	}
	der, err := x509.CreateCertificate(r, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("generate CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Authority{Cert: cert, Signer: key}, nil
}

// NewSerial returns a random, positive 128-bit serial number.
func NewSerial(r io.Reader) (*big.Int, error) {
	max := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(r, max)
		if err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// Encode renders a bootstrapped authority as CA Secret data: tls.crt,
// tls.key and ca.crt (the anchors; the authority itself when none are given).
func Encode(a *Authority, anchors ...*x509.Certificate) (map[string][]byte, error) {
	key, err := EncodePrivateKeyPEM(a.Signer)
	if err != nil {
		return nil, err
	}
	if len(anchors) == 0 {
		anchors = []*x509.Certificate{a.Cert}
	}
	return map[string][]byte{
		SecretCertKey:  EncodeCertificatesPEM(append([]*x509.Certificate{a.Cert}, a.Chain...)...),
		SecretKeyKey:   key,
		SecretTrustKey: EncodeCertificatesPEM(anchors...),
	}, nil
}
