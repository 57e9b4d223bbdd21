package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"time"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
)

// MaxBackdate is the most a leaf's NotBefore is set before its issuance, so
// that peers whose clocks lag accept it at once.
const MaxBackdate = 2 * time.Minute

// GenerateKey generates a fresh private key. RSA keys take tens to hundreds
// of milliseconds; callers keep them off the reconcile path.
func GenerateKey(alg mtlsv1alpha1.PrivateKeyAlgorithm, size int, r io.Reader) (crypto.Signer, error) {
	switch alg {
	case mtlsv1alpha1.ECDSAKeyAlgorithm, "":
		curve := elliptic.P256()
		switch size {
		case 0, 256:
		case 384:
			curve = elliptic.P384()
		default:
			return nil, fmt.Errorf("unsupported ECDSA key size %d", size)
		}
		return ecdsa.GenerateKey(curve, r)
	case mtlsv1alpha1.Ed25519KeyAlgorithm:
		_, k, err := ed25519.GenerateKey(r)
		return k, err
	case mtlsv1alpha1.RSAKeyAlgorithm:
		if size != 2048 && size != 3072 && size != 4096 {
			return nil, fmt.Errorf("unsupported RSA key size %d", size)
		}
		return rsa.GenerateKey(r, size)
	}
	return nil, fmt.Errorf("unsupported key algorithm %q", alg)
}

// IsSlowKey reports whether generating a key of this kind is slow enough
// (RSA) to keep off the reconcile path.
func IsSlowKey(alg mtlsv1alpha1.PrivateKeyAlgorithm) bool {
	return alg == mtlsv1alpha1.RSAKeyAlgorithm
}

// KeyMatchesRequest reports whether key has the algorithm and size that r
// asks for.
func KeyMatchesRequest(pub crypto.PublicKey, r Request) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return r.KeyAlgorithm == mtlsv1alpha1.ECDSAKeyAlgorithm && k.Curve.Params().BitSize == r.KeySize
	case ed25519.PublicKey:
		return r.KeyAlgorithm == mtlsv1alpha1.Ed25519KeyAlgorithm
	case *rsa.PublicKey:
		return r.KeyAlgorithm == mtlsv1alpha1.RSAKeyAlgorithm && k.N.BitLen() == r.KeySize
	}
	return false
}

// Issued is a freshly issued certificate with its key and chain.
type Issued struct {
	Leaf *x509.Certificate
	// Chain is what follows the leaf in tls.crt: the signing CA unless it is
	// a self-signed root, then its intermediates.
	Chain []*x509.Certificate
	Key   crypto.Signer
}

// Issue signs a SPIFFE X.509-SVID for key, as requested, with the active
// CA of st at time now: exactly one URI SAN (the SPIFFE ID) plus the DNS
// names; not a CA; digitalSignature; server and client auth. NotBefore is
// backdated by up to MaxBackdate (at most a tenth of the lifetime, never
// before the CA's NotBefore); NotAfter never passes the CA's NotAfter.
func Issue(st *ca.State, req Request, key crypto.Signer, now time.Time, r io.Reader) (*Issued, error) {
	if st == nil || st.Active == nil {
		return nil, errors.New("no CA")
	}
	caCert := st.Active.Cert
	notAfter := now.Add(req.Duration)
	if notAfter.After(caCert.NotAfter) {
		notAfter = caCert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("the CA expired at %s", caCert.NotAfter.UTC().Format(time.RFC3339))
	}
	backdate := min(MaxBackdate, req.Duration/10, notAfter.Sub(now)/10)
	notBefore := now.Add(-backdate)
	if notBefore.Before(caCert.NotBefore) {
		notBefore = caCert.NotBefore
	}
	serial, err := ca.NewSerial(r)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		URIs:                  []*url.URL{req.SPIFFEID.URL()},
		DNSNames:              req.DNSNames,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	leaf, err := st.Active.Sign(tmpl, key.Public(), r)
	if err != nil {
		return nil, err
	}
	return &Issued{Leaf: leaf, Chain: ExpectedChain(st), Key: key}, nil
}

// ExpectedChain is what must follow a leaf of the active CA in tls.crt.
func ExpectedChain(st *ca.State) []*x509.Certificate {
	var chain []*x509.Certificate
	if c := st.Active.Cert; c.CheckSignatureFrom(c) != nil {
		chain = append(chain, c)
	}
	return append(chain, st.Active.Chain...)
}

// Secret data keys of an identity Secret (type kubernetes.io/tls).
const (
	SecretCertKey  = "tls.crt"
	SecretKeyKey   = "tls.key"
	SecretTrustKey = "ca.crt"
)

// SecretData renders the Secret data: tls.crt (leaf and chain), tls.key
// (PKCS#8 PEM) and ca.crt (the trust bundle).
func (i *Issued) SecretData(bundlePEM []byte) (map[string][]byte, error) {
	key, err := ca.EncodePrivateKeyPEM(i.Key)
	if err != nil {
		return nil, err
	}
	certs := append([]*x509.Certificate{i.Leaf}, i.Chain...)
	return map[string][]byte{
		SecretCertKey:  ca.EncodeCertificatesPEM(certs...),
		SecretKeyKey:   key,
		SecretTrustKey: bundlePEM,
	}, nil
}
