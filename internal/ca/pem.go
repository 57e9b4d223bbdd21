package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// Size caps, checked before anything is decoded, so that a hostile or
// mistaken input costs little to refuse.
const (
	// MaxCertificatesPEMSize caps a PEM input of certificates (tls.crt,
	// ca.crt, a federated bundle).
	MaxCertificatesPEMSize = 64 << 10
	// MaxPrivateKeyPEMSize caps a PEM private key.
	MaxPrivateKeyPEMSize = 16 << 10
	// MaxCertificatesPerPEM caps the number of certificates in one input.
	MaxCertificatesPerPEM = 32

	// MaxBundlePEMSize and MaxBundleCertificates cap a trust bundle of
	// several trust domains (a trust ConfigMap's bundle.pem, a federated
	// bundle): what the operator writes, re-reads and the SDK reads agree.
	// The size decides; the count is as many CA certificates as fit.
	MaxBundlePEMSize      = 512 << 10
	MaxBundleCertificates = 1024

	// MinRSAKeyBits and MaxRSAKeyBits bound the RSA keys agentmesh signs
	// with or verifies: below 2048 bits is too weak (NIST SP 800-131A), and
	// above 8192 one signature costs seconds of CPU (Go's TLS stack refuses
	// larger peer keys for the same reason). Certificates are held to the
	// maximum only; a private key to both.
	MinRSAKeyBits = 2048
	MaxRSAKeyBits = 8192
)

// checkRSAPublicKey refuses an RSA key over MaxRSAKeyBits, and one under
// MinRSAKeyBits when min is set. Other key types pass.
func checkRSAPublicKey(pub any, min bool) error {
	k, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil
	}
	switch bits := k.N.BitLen(); {
	case bits > MaxRSAKeyBits:
		return fmt.Errorf("the RSA key has %d bits, over the limit of %d", bits, MaxRSAKeyBits)
	case min && bits < MinRSAKeyBits:
		return fmt.Errorf("the RSA key has %d bits, under the minimum of %d", bits, MinRSAKeyBits)
	}
	return nil
}

// ParseBundlePEM decodes a trust bundle as ParseCertificatesPEM does, under
// the bundle caps. Text between blocks (bundle.pem's comment lines) is
// skipped.
func ParseBundlePEM(b []byte) ([]*x509.Certificate, error) {
	return parseCertificates(b, MaxBundlePEMSize, MaxBundleCertificates)
}

// ParseCertificatesPEM decodes every CERTIFICATE block of b. Other block
// types are an error, as is an input with no certificate or one over the
// size caps. Errors name what is wrong and never quote the input.
func ParseCertificatesPEM(b []byte) ([]*x509.Certificate, error) {
	return parseCertificates(b, MaxCertificatesPEMSize, MaxCertificatesPerPEM)
}

func parseCertificates(b []byte, maxSize, maxCount int) ([]*x509.Certificate, error) {
	if len(b) > maxSize {
		return nil, fmt.Errorf("PEM is %d bytes, over the limit of %d", len(b), maxSize)
	}
	var certs []*x509.Certificate
	rest := b
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is of type %q, want CERTIFICATE", len(certs)+1, block.Type)
		}
		if len(certs) == maxCount {
			return nil, fmt.Errorf("more than %d certificates", maxCount)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		if err := checkRSAPublicKey(c.PublicKey, false); err != nil {
			return nil, fmt.Errorf("certificate %d (subject %q): %w", len(certs)+1, c.Subject.String(), err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

// ParsePrivateKeyPEM decodes the first PEM block of b as a PKCS#8, SEC 1
// (EC PRIVATE KEY) or PKCS#1 (RSA PRIVATE KEY) private key: ECDSA (the
// curves Go parses: P-256, P-384, P-521), Ed25519, or RSA of
// MinRSAKeyBits to MaxRSAKeyBits.
func ParsePrivateKeyPEM(b []byte) (crypto.Signer, error) {
	if len(b) > MaxPrivateKeyPEMSize {
		return nil, fmt.Errorf("private key PEM is %d bytes, over the limit of %d", len(b), MaxPrivateKeyPEMSize)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM private key found")
	}
	var (
		key    any
		err    error
		format string
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		format = "PKCS#8"
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
		format = "SEC 1 (EC)"
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		format = "PKCS#1 (RSA)"
	default:
		return nil, fmt.Errorf("PEM block of type %q is not a private key", block.Type)
	}
	if err != nil {
		// Say which format failed, not how: the parser's detail is noise
		// to a user, and nothing about a key belongs in a message.
		return nil, fmt.Errorf("the %s private key cannot be decoded", format)
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		return k, nil
	case *rsa.PrivateKey:
		if err := checkRSAPublicKey(&k.PublicKey, true); err != nil {
			return nil, err
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	default:
		return nil, fmt.Errorf("unsupported private key type %T", key)
	}
}

// EncodeCertificatesPEM encodes certs as consecutive CERTIFICATE blocks.
func EncodeCertificatesPEM(certs ...*x509.Certificate) []byte {
	out := make([]byte, 0, 800*len(certs))
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// EncodePrivateKeyPEM encodes key as a PKCS#8 "PRIVATE KEY" block.
func EncodePrivateKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// publicKeysEqual reports whether the two public keys are the same key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	ea, ok := a.(equaler)
	return ok && ea.Equal(b)
}

// KeyMatchesCertificate reports whether key is the private key of cert.
func KeyMatchesCertificate(key crypto.Signer, cert *x509.Certificate) bool {
	return publicKeysEqual(key.Public(), cert.PublicKey)
}
