package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	td  = spiffeid.RequireTrustDomainFromString("cluster.local")
	now = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
)

// testCA is a CA built for a test, with knobs for every way it can be wrong.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

type caOpts struct {
	parent      *testCA
	isCA        bool
	keyUsage    x509.KeyUsage
	notBefore   time.Time
	notAfter    time.Time
	key         crypto.Signer
	excludedURI []string
}

func newTestCA(t *testing.T, o caOpts) *testCA {
	t.Helper()
	key := o.key
	if key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	}
	if o.notBefore.IsZero() {
		o.notBefore = now.Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = now.Add(365 * 24 * time.Hour)
	}
	serial, _ := NewSerial(rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber:                serial,
		Subject:                     pkix.Name{CommonName: "test CA " + SerialHex(serial)},
		NotBefore:                   o.notBefore,
		NotAfter:                    o.notAfter,
		KeyUsage:                    o.keyUsage,
		BasicConstraintsValid:       true,
		IsCA:                        o.isCA,
		ExcludedURIDomains:          o.excludedURI,
		PermittedDNSDomainsCritical: len(o.excludedURI) > 0,
	}
	parentCert, parentKey := tmpl, key
	if o.parent != nil {
		parentCert, parentKey = o.parent.cert, o.parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: c, key: key}
}

func goodCA(t *testing.T) *testCA {
	return newTestCA(t, caOpts{isCA: true, keyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign})
}

func keyPEM(t *testing.T, k crypto.Signer) []byte {
	t.Helper()
	b, err := EncodePrivateKeyPEM(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestGenerate(t *testing.T) {
	a, err := Generate(GenerateOptions{TrustDomain: td, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	c := a.Cert
	if !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("basic constraints: isCA=%v valid=%v maxPathLen=%d zero=%v", c.IsCA, c.BasicConstraintsValid, c.MaxPathLen, c.MaxPathLenZero)
	}
	if c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("key usage %v lacks certSign", c.KeyUsage)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://cluster.local" {
		t.Errorf("URIs = %v, want [spiffe://cluster.local]", c.URIs)
	}
	if c.Subject.SerialNumber != SerialHex(c.SerialNumber) || !strings.Contains(c.Subject.String(), SerialHex(c.SerialNumber)) {
		t.Errorf("subject %q does not carry the serial %s", c.Subject, SerialHex(c.SerialNumber))
	}
	if !c.NotBefore.Equal(now.Add(-time.Hour)) || !c.NotAfter.Equal(now.Add(DefaultLifetime)) {
		t.Errorf("validity %s..%s", c.NotBefore, c.NotAfter)
	}
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", c.PublicKey)
	}
	if c.SerialNumber.BitLen() < 64 {
		t.Errorf("serial %s is too short", c.SerialNumber)
	}
	b, err := Generate(GenerateOptions{TrustDomain: td, Now: now, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if b.Cert.Subject.String() == c.Subject.String() {
		t.Errorf("two roots share the subject %q", c.Subject)
	}
	if !b.Cert.NotAfter.Equal(now.Add(time.Hour)) {
		t.Errorf("lifetime option ignored: NotAfter %s", b.Cert.NotAfter)
	}
}

func TestEncodeLoadRoundTrip(t *testing.T) {
	a, err := Generate(GenerateOptions{TrustDomain: td, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	data, err := Encode(a)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Load(data, nil, td, now)
	if err != nil {
		t.Fatalf("Load of a generated CA: %v", err)
	}
	if !s.Active.Cert.Equal(a.Cert) || !KeyMatchesCertificate(s.Active.Signer, a.Cert) {
		t.Error("loaded CA differs from the generated one")
	}
	if len(s.Anchors) != 1 || !s.Anchors[0].Equal(a.Cert) {
		t.Errorf("anchors = %d certs, want the root", len(s.Anchors))
	}
	if !bytes.Equal(s.BundlePEM(), EncodeCertificatesPEM(a.Cert)) || !bytes.Equal(data[SecretTrustKey], s.BundlePEM()) {
		t.Error("bundle is not the root's PEM")
	}
}

func TestLoadIntermediate(t *testing.T) {
	root := goodCA(t)
	mid := newTestCA(t, caOpts{parent: root, isCA: true, keyUsage: x509.KeyUsageCertSign})
	issuing := newTestCA(t, caOpts{parent: mid, isCA: true, keyUsage: x509.KeyUsageCertSign})

	// tls.crt: issuing CA, then the intermediate and the root (as many
	// enterprise PKIs hand them out); ca.crt: the root.
	data := map[string][]byte{
		SecretCertKey:  EncodeCertificatesPEM(issuing.cert, mid.cert, root.cert),
		SecretKeyKey:   keyPEM(t, issuing.key),
		SecretTrustKey: EncodeCertificatesPEM(root.cert),
	}
	s, err := Load(data, nil, td, now)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(s.Active.Chain) != 1 || !s.Active.Chain[0].Equal(mid.cert) {
		t.Errorf("chain = %d certs, want the intermediate only (self-signed roots are dropped)", len(s.Active.Chain))
	}
	if len(s.Anchors) != 1 || !s.Anchors[0].Equal(root.cert) {
		t.Error("anchor is not the root from ca.crt")
	}

	// Without ca.crt, the top of tls.crt is the anchor.
	delete(data, SecretTrustKey)
	s, err = Load(data, nil, td, now)
	if err != nil {
		t.Fatalf("Load without ca.crt: %v", err)
	}
	if !s.Anchors[0].Equal(root.cert) {
		t.Error("without ca.crt the anchor should be the last certificate of tls.crt")
	}

	// An ca.crt holding an old and a new root (a rotation) lists both, once.
	other := goodCA(t)
	data[SecretTrustKey] = EncodeCertificatesPEM(other.cert, root.cert, root.cert)
	s, err = Load(data, nil, td, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Anchors) != 2 {
		t.Errorf("anchors = %d, want 2 (deduplicated)", len(s.Anchors))
	}
}

func TestLoadKeyFormats(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	ecDER, _ := x509.MarshalECPrivateKey(ecKey)
	for name, tc := range map[string]struct {
		key crypto.Signer
		pem []byte
	}{
		"RSA PKCS#1": {rsaKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})},
		"EC SEC 1":   {ecKey, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})},
		"RSA PKCS#8": {rsaKey, keyPEM(t, rsaKey)},
	} {
		t.Run(name, func(t *testing.T) {
			c := newTestCA(t, caOpts{isCA: true, keyUsage: x509.KeyUsageCertSign, key: tc.key})
			if _, err := Load(map[string][]byte{SecretCertKey: EncodeCertificatesPEM(c.cert), SecretKeyKey: tc.pem}, nil, td, now); err != nil {
				t.Fatalf("Load: %v", err)
			}
		})
	}
}

func TestLoadRejects(t *testing.T) {
	good := goodCA(t)
	other := goodCA(t)
	leafCert := newTestCA(t, caOpts{parent: good, isCA: false, keyUsage: x509.KeyUsageDigitalSignature})
	noCertSign := newTestCA(t, caOpts{isCA: true, keyUsage: x509.KeyUsageDigitalSignature})
	expired := newTestCA(t, caOpts{isCA: true, keyUsage: x509.KeyUsageCertSign, notBefore: now.Add(-48 * time.Hour), notAfter: now.Add(-time.Hour)})
	future := newTestCA(t, caOpts{isCA: true, keyUsage: x509.KeyUsageCertSign, notBefore: now.Add(time.Hour)})
	constrained := newTestCA(t, caOpts{isCA: true, keyUsage: x509.KeyUsageCertSign, excludedURI: []string{"cluster.local"}})
	huge := bytes.Repeat([]byte("A"), MaxCertificatesPEMSize+1)
	secret := func(c *testCA, k crypto.Signer) map[string][]byte {
		return map[string][]byte{SecretCertKey: EncodeCertificatesPEM(c.cert), SecretKeyKey: keyPEM(t, k)}
	}
	with := func(d map[string][]byte, k string, v []byte) map[string][]byte {
		d[k] = v
		return d
	}
	cases := map[string]struct {
		data map[string][]byte
		want string
	}{
		"no tls.crt":             {map[string][]byte{SecretKeyKey: keyPEM(t, good.key)}, "tls.crt is missing or empty"},
		"garbage tls.crt":        {with(secret(good, good.key), SecretCertKey, []byte("not a certificate")), "tls.crt: no PEM certificate found"},
		"key in tls.crt":         {with(secret(good, good.key), SecretCertKey, keyPEM(t, good.key)), `tls.crt: PEM block 1 is of type "PRIVATE KEY", want CERTIFICATE`},
		"oversized tls.crt":      {with(secret(good, good.key), SecretCertKey, huge), "over the limit of 65536"},
		"no tls.key":             {map[string][]byte{SecretCertKey: EncodeCertificatesPEM(good.cert)}, "tls.key is missing or empty"},
		"garbage tls.key":        {with(secret(good, good.key), SecretKeyKey, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")), "tls.key: the PKCS#8 private key cannot be decoded"},
		"oversized tls.key":      {with(secret(good, good.key), SecretKeyKey, bytes.Repeat([]byte("k"), MaxPrivateKeyPEMSize+1)), "private key PEM is 16385 bytes, over the limit of 16384"},
		"certificate in tls.key": {with(secret(good, good.key), SecretKeyKey, EncodeCertificatesPEM(good.cert)), `PEM block of type "CERTIFICATE" is not a private key`},
		"not a CA":               {secret(leafCert, leafCert.key), "is not a CA certificate"},
		"no certSign":            {secret(noCertSign, noCertSign.key), "does not allow signing certificates (certSign)"},
		"expired":                {secret(expired, expired.key), "the CA certificate expired at 2026-11-26T11:00:00Z"},
		"not yet valid":          {secret(future, future.key), "the CA certificate is not valid before 2026-11-26T13:00:00Z"},
		"key of another CA":      {secret(good, other.key), "tls.key is not the private key of the CA certificate in tls.crt"},
		"ca.crt unrelated":       {with(secret(good, good.key), SecretTrustKey, EncodeCertificatesPEM(other.cert)), "does not chain to the trust anchors (ca.crt)"},
		"ca.crt not a CA":        {with(secret(good, good.key), SecretTrustKey, EncodeCertificatesPEM(leafCert.cert)), "ca.crt: certificate 1"},
		"ca.crt garbage":         {with(secret(good, good.key), SecretTrustKey, []byte("junk")), "ca.crt: no PEM certificate found"},
		"name constraints":       {secret(constrained, constrained.key), `the CA cannot issue certificates for trust domain "cluster.local"`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Load(tc.data, nil, td, now)
			if err == nil {
				t.Fatal("accepted")
			}
			if !IsInvalid(err) {
				t.Errorf("error %v is not an InvalidError", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if k := tc.data[SecretKeyKey]; len(k) > 40 && strings.Contains(err.Error(), string(k[30:40])) {
				t.Errorf("error quotes the private key: %q", err)
			}
		})
	}
}

func TestTrusts(t *testing.T) {
	a, _ := Generate(GenerateOptions{TrustDomain: td, Now: now})
	data, _ := Encode(a)
	s, err := Load(data, nil, td, now)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := Generate(GenerateOptions{TrustDomain: td, Now: now})
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := func() *x509.Certificate {
		return &x509.Certificate{
			SerialNumber: big.NewInt(7), NotBefore: now, NotAfter: now.Add(time.Hour),
			URIs: []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/a/agent/b"}},
		}
	}
	mine, err := a.Sign(tmpl(), key.Public(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	theirs, _ := other.Sign(tmpl(), key.Public(), rand.Reader)
	if !s.Trusts(mine, nil) {
		t.Error("a leaf of the CA is not trusted")
	}
	if s.Trusts(theirs, nil) {
		t.Error("a leaf of another CA is trusted")
	}
	// Expiry is a separate question: a long-expired leaf of the CA is still
	// "from a trusted CA".
	old := tmpl()
	old.NotBefore, old.NotAfter = now.Add(-50*time.Minute), now.Add(-40*time.Minute)
	expired, err := a.Sign(old, key.Public(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Trusts(expired, nil) {
		t.Error("an expired leaf of the CA is reported as not trusted")
	}
}
