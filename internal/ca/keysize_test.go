package ca

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestKeySizesAreBounded: a CA key over MaxRSAKeyBits (the 9216-bit test
// key in testdata, made with `openssl genrsa 9216` for this test only) or
// under MinRSAKeyBits is refused with a message giving its size, quickly,
// and a certificate carrying such a large key is refused by every PEM parser
// of outside input.
func TestKeySizesAreBounded(t *testing.T) {
	bigPEM, err := os.ReadFile("testdata/rsa-9216.key")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(bigPEM)
	big, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		pem  []byte
		want string
	}{
		"9216-bit PKCS#1": {bigPEM, "the RSA key has 9216 bits, over the limit of 8192"},
		"9216-bit PKCS#8": {keyPEM(t, big), "the RSA key has 9216 bits, over the limit of 8192"},
		"1024-bit":        {keyPEM(t, small), "the RSA key has 1024 bits, under the minimum of 2048"},
	} {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			_, err := ParsePrivateKeyPEM(tc.pem)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("refusing the key took %s", d)
			}
		})
	}

	// A CA certificate for the big key (signed by a small CA, so the test
	// never signs with the big key) is refused in tls.crt and in a bundle.
	issuer := goodCA(t)
	serial, _ := NewSerial(rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}, issuer.cert, &big.PublicKey, issuer.key)
	if err != nil {
		t.Fatal(err)
	}
	bigCert, _ := x509.ParseCertificate(der)
	pemCert := EncodeCertificatesPEM(issuer.cert, bigCert)
	for name, parse := range map[string]func([]byte) ([]*x509.Certificate, error){
		"certificates": ParseCertificatesPEM, "bundle": ParseBundlePEM,
	} {
		if _, err := parse(pemCert); err == nil || !strings.Contains(err.Error(), "certificate 2") ||
			!strings.Contains(err.Error(), "the RSA key has 9216 bits, over the limit of 8192") {
			t.Errorf("%s: error %v, want certificate 2 refused for its 9216-bit key", name, err)
		}
	}
	_, err = Load(map[string][]byte{SecretCertKey: EncodeCertificatesPEM(bigCert), SecretKeyKey: bigPEM}, nil, td, now)
	if err == nil || !IsInvalid(err) || !strings.Contains(err.Error(), "tls.crt: certificate 1") {
		t.Errorf("Load of the 9216-bit CA: %v", err)
	}
}

// TestSelfTestOncePerCA: loading the same CA again does not sign another
// self-test certificate; a different CA (or a different key file) does.
func TestSelfTestOncePerCA(t *testing.T) {
	a, b := goodCA(t), goodCA(t)
	data := func(c *testCA) map[string][]byte {
		return map[string][]byte{SecretCertKey: EncodeCertificatesPEM(c.cert), SecretKeyKey: keyPEM(t, c.key)}
	}
	runs := func() int {
		selfTests.mu.Lock()
		defer selfTests.mu.Unlock()
		return selfTests.runs
	}
	da, db := data(a), data(b)
	before := runs()
	for range 5 {
		if _, err := Load(da, nil, td, now); err != nil {
			t.Fatal(err)
		}
	}
	if got := runs() - before; got != 1 {
		t.Errorf("5 loads of one CA ran %d self-tests, want 1", got)
	}
	if _, err := Load(db, nil, td, now); err != nil {
		t.Fatal(err)
	}
	if got := runs() - before; got != 2 {
		t.Errorf("a second CA brought the self-tests to %d, want 2", got)
	}
	// The same CA in another trust domain is tested again.
	if _, err := Load(da, nil, spiffeid.RequireTrustDomainFromString("other.example"), now); err != nil {
		t.Fatal(err)
	}
	if got := runs() - before; got != 3 {
		t.Errorf("another trust domain brought the self-tests to %d, want 3", got)
	}
}
