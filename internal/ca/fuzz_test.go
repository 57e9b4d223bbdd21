package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"strings"
	"testing"
	"time"
)

// Fuzz targets for the parsers of the CA Secret, which an administrator (or
// cert-manager) writes: `make fuzz` runs them for long, `make test` for a
// few seconds each. Seeds are made with the package's own helpers at the
// fixed time now, plus the hostile inputs of testdata/fuzz/<target>/.

// fuzzCA is a root made by Generate, as the operator bootstraps it.
func fuzzCA(f *testing.F) *Authority {
	f.Helper()
	a, err := Generate(GenerateOptions{TrustDomain: td, Now: now})
	if err != nil {
		f.Fatal(err)
	}
	return a
}

// fuzzIntermediate is a CA signed by parent, as an enterprise intermediate.
func fuzzIntermediate(f *testing.F, parent *Authority) *Authority {
	f.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	serial, err := NewSerial(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	cert, err := parent.Sign(&x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "fuzz intermediate " + SerialHex(serial)},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}, key.Public(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	return &Authority{Cert: cert, Chain: append([]*x509.Certificate{parent.Cert}, parent.Chain...), Signer: key}
}

func fuzzKeyPEM(f *testing.F, a *Authority) []byte {
	f.Helper()
	b, err := EncodePrivateKeyPEM(a.Signer)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

func sameCertificates(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// FuzzParseCertificatesPEM: tls.crt, ca.crt, next-ca.crt and federated
// bundles. Invariants: no panic; an error returns nothing (no partial
// list); what ParseCertificatesPEM accepts the bundle parser accepts too,
// identically (one format, one set of limits); an accepted list is within
// the caps, holds no RSA key over MaxRSAKeyBits, and reads back identically
// once written the way the operator writes it (EncodeCertificatesPEM).
func FuzzParseCertificatesPEM(f *testing.F) {
	root := fuzzCA(f)
	inter := fuzzIntermediate(f, root)
	other := fuzzCA(f)
	f.Add(EncodeCertificatesPEM(root.Cert))
	f.Add(EncodeCertificatesPEM(inter.Cert, root.Cert))
	f.Add(append([]byte("# trust domain: cluster.local, subject: CN=x\n"), EncodeCertificatesPEM(root.Cert, other.Cert)...))
	f.Add(bytes.ReplaceAll(EncodeCertificatesPEM(root.Cert), []byte("\n"), []byte("\r\n")))
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := ParseCertificatesPEM(b)
		bundle, berr := ParseBundlePEM(b)
		if err != nil && certs != nil {
			t.Fatalf("ParseCertificatesPEM returned %d certificates with error %v", len(certs), err)
		}
		if berr != nil && bundle != nil {
			t.Fatalf("ParseBundlePEM returned %d certificates with error %v", len(bundle), berr)
		}
		if err == nil {
			if len(certs) == 0 || len(certs) > MaxCertificatesPerPEM {
				t.Fatalf("ParseCertificatesPEM accepted %d certificates", len(certs))
			}
			if berr != nil || !sameCertificates(certs, bundle) {
				t.Fatalf("ParseBundlePEM refuses (%v) or reads otherwise what ParseCertificatesPEM accepts", berr)
			}
		}
		if berr != nil {
			return
		}
		if len(bundle) == 0 || len(bundle) > MaxBundleCertificates {
			t.Fatalf("ParseBundlePEM accepted %d certificates", len(bundle))
		}
		for i, c := range bundle {
			if err := checkRSAPublicKey(c.PublicKey, false); err != nil {
				t.Fatalf("certificate %d accepted: %v", i+1, err)
			}
		}
		out := EncodeCertificatesPEM(bundle...)
		if len(out) > MaxBundlePEMSize {
			return // one long base64 line re-encoded in 64-column lines
		}
		again, err := ParseBundlePEM(out)
		if err != nil || !sameCertificates(again, bundle) {
			t.Fatalf("the re-encoded bundle does not read back: %v", err)
		}
	})
}

// FuzzParsePrivateKeyPEM: tls.key and next.key. Invariants: no panic; an
// error returns no key and never quotes the key's bytes; an accepted key is
// ECDSA, Ed25519 or RSA within MinRSAKeyBits..MaxRSAKeyBits, and written
// back as the operator writes it (PKCS#8) it reads back as the same key.
func FuzzParsePrivateKeyPEM(f *testing.F) {
	ec, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	for _, k := range []crypto.Signer{ec, ed, rk} {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	}
	sec1, _ := x509.MarshalECPrivateKey(ec)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)}))
	if big, err := os.ReadFile("testdata/rsa-9216.key"); err == nil {
		f.Add(big) // over MaxRSAKeyBits: refused, quickly
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		key, err := ParsePrivateKeyPEM(b)
		if err != nil {
			if key != nil {
				t.Fatalf("a key with error %v", err)
			}
			if block, _ := pem.Decode(b); block != nil && len(block.Bytes) >= 12 {
				if enc := base64.StdEncoding.EncodeToString(block.Bytes); strings.Contains(err.Error(), enc[:16]) {
					t.Fatalf("the error quotes the key: %v", err)
				}
			}
			return
		}
		switch k := key.(type) {
		case *ecdsa.PrivateKey, ed25519.PrivateKey:
		case *rsa.PrivateKey:
			if bits := k.N.BitLen(); bits < MinRSAKeyBits || bits > MaxRSAKeyBits {
				t.Fatalf("accepted a %d-bit RSA key", bits)
			}
		default:
			t.Fatalf("accepted a key of type %T", key)
		}
		out, err := EncodePrivateKeyPEM(key)
		if err != nil {
			t.Fatalf("an accepted key cannot be written back: %v", err)
		}
		again, err := ParsePrivateKeyPEM(out)
		if err != nil || !publicKeysEqual(again.Public(), key.Public()) {
			t.Fatalf("the written-back key does not read back: %v", err)
		}
	})
}

// FuzzLoad: the whole CA Secret (tls.crt, tls.key, ca.crt, next.crt,
// next.key, next-ca.crt and the rotation annotation) at the fixed time now.
// Invariants: no panic; an error is an *InvalidError (the operator's cue
// that the Secret is unusable, not a transient failure) and returns no
// state; a loaded state signs with the key of its certificate, a CA, valid
// now, that chains to its anchors, and the bundle it publishes (ca.crt of
// every identity Secret, and of the CA Secret during a rotation) is read
// back by the parser of ca.crt to the same anchors.
func FuzzLoad(f *testing.F) {
	root := fuzzCA(f)
	inter := fuzzIntermediate(f, root)
	next := fuzzCA(f)
	stale := fuzzCA(f)
	plain, err := Encode(root)
	if err != nil {
		f.Fatal(err)
	}
	add := func(d map[string][]byte, rotation string) {
		f.Add(d[SecretCertKey], d[SecretKeyKey], d[SecretTrustKey], d[NextCertKey], d[NextKeyKey], d[NextTrustKey], rotation)
	}
	add(plain, "")
	add(map[string][]byte{SecretCertKey: EncodeCertificatesPEM(inter.Cert, root.Cert), SecretKeyKey: fuzzKeyPEM(f, inter),
		SecretTrustKey: EncodeCertificatesPEM(root.Cert, stale.Cert)}, "")
	rot, _ := json.Marshal(Rotation{Phase: PhasePropagating, Reason: RotationManual, PreparedAt: &now, Previous: root.SerialHex()})
	add(map[string][]byte{SecretCertKey: plain[SecretCertKey], SecretKeyKey: plain[SecretKeyKey],
		SecretTrustKey: EncodeCertificatesPEM(root.Cert, next.Cert),
		NextCertKey:    EncodeCertificatesPEM(next.Cert), NextKeyKey: fuzzKeyPEM(f, next)}, string(rot))
	add(map[string][]byte{SecretCertKey: plain[SecretCertKey], SecretKeyKey: fuzzKeyPEM(f, next)}, "")
	add(plain, `{"phase":"Exploding"}`)
	// Regression: a ca.crt of MaxCertificatesPerPEM anchors and a next CA
	// to migrate to. The rotation writes their union (one more) into
	// ca.crt, which Load read with the cap of tls.crt: the CA Secret the
	// operator wrote no longer loaded.
	full := []*x509.Certificate{root.Cert}
	for len(full) < MaxCertificatesPerPEM {
		full = append(full, fuzzCA(f).Cert)
	}
	add(map[string][]byte{SecretCertKey: plain[SecretCertKey], SecretKeyKey: plain[SecretKeyKey],
		SecretTrustKey: EncodeCertificatesPEM(full...),
		NextCertKey:    EncodeCertificatesPEM(next.Cert), NextKeyKey: fuzzKeyPEM(f, next)}, "")

	f.Fuzz(func(t *testing.T, crt, key, trust, nextCrt, nextKey, nextTrust []byte, rotation string) {
		data := map[string][]byte{}
		for k, v := range map[string][]byte{SecretCertKey: crt, SecretKeyKey: key, SecretTrustKey: trust,
			NextCertKey: nextCrt, NextKeyKey: nextKey, NextTrustKey: nextTrust} {
			if len(v) > 0 {
				data[k] = v
			}
		}
		st, err := Load(data, map[string]string{AnnotationRotation: rotation}, td, now)
		if err != nil {
			if st != nil {
				t.Fatalf("a state with error %v", err)
			}
			if !IsInvalid(err) {
				t.Fatalf("error %v (%T) is not an InvalidError", err, err)
			}
			return
		}
		a := st.Active
		switch {
		case !a.Cert.IsCA || !KeyMatchesCertificate(a.Signer, a.Cert):
			t.Fatal("the active CA is not a CA, or its key is not the certificate's")
		case now.Before(a.Cert.NotBefore) || !now.Before(a.Cert.NotAfter):
			t.Fatal("the active CA is not valid now")
		case len(st.Anchors) == 0:
			t.Fatal("no anchors")
		}
		if st.Next != nil && !KeyMatchesCertificate(st.Next.Signer, st.Next.Cert) {
			t.Fatal("the next CA's key is not the certificate's")
		}
		anchors, err := parseAnchors(st.BundlePEM(), SecretTrustKey)
		if err != nil || !sameCertificates(anchors, st.Anchors) {
			t.Fatalf("the published bundle of %d anchors does not read back as ca.crt: %v", len(st.Anchors), err)
		}
	})
}
