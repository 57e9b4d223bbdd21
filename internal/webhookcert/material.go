package webhookcert

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/agentmesh/agentmesh/internal/ca"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

// Keys and annotation of the webhook CA Secret.
const (
	// KeyCert and KeyKey hold the CA that signs serving certificates.
	KeyCert = mtlsv1alpha1.SecretCertKey
	KeyKey  = mtlsv1alpha1.SecretKeyKey
	// KeyBundle holds every CA the API server must trust: the caBundle.
	KeyBundle = mtlsv1alpha1.SecretTrustKey
	// KeyNextCert and KeyNextKey hold the next CA while it is published in
	// the bundle but not yet signing.
	KeyNextCert = "next.crt"
	KeyNextKey  = "next.key"
	// AnnotationNextPublished is when the next CA entered the bundle.
	AnnotationNextPublished = "mtls.agentmesh.dev/next-ca-published-at"
)

// Policy is the timing of the webhook PKI.
type Policy struct {
	// CALifetime is the lifetime of a webhook CA; a new one is prepared at
	// two thirds of it.
	CALifetime time.Duration
	// ServingLifetime is the lifetime of a serving certificate; it is
	// renewed at two thirds of it.
	ServingLifetime time.Duration
	// Propagation is how long a new CA sits in the bundle before it signs,
	// so that the API server trusts it before it is shown.
	Propagation time.Duration
}

// DefaultPolicy has five-year CAs, seven-day serving certificates, ten
// minutes for a new CA to reach the API server.
var DefaultPolicy = Policy{CALifetime: 5 * 365 * 24 * time.Hour, ServingLifetime: 7 * 24 * time.Hour, Propagation: 10 * time.Minute}

// State is the webhook CA Secret's content.
type State struct {
	Current *ca.Authority
	Next    *ca.Authority
	// NextPublished is when Next entered the bundle.
	NextPublished time.Time
	// Bundle are the CAs the API server trusts.
	Bundle []*x509.Certificate
}

// BundlePEM is the caBundle.
func (s *State) BundlePEM() []byte { return ca.EncodeCertificatesPEM(s.Bundle...) }

// Plan computes the webhook CA Secret's next content at now: it creates
// the CA when there is none, publishes a next CA when a third of
// CALifetime is left of the current one, promotes it once it had
// Propagation to spread, and drops expired CAs from the bundle. changed
// says the Secret must be written.
func Plan(data map[string][]byte, annotations map[string]string, now time.Time, p Policy) (st *State, changed bool, err error) {
	if len(data[KeyCert]) == 0 || len(data[KeyKey]) == 0 {
		a, err := newCA(now, p.CALifetime)
		if err != nil {
			return nil, false, err
		}
		return &State{Current: a, Bundle: []*x509.Certificate{a.Cert}}, true, nil
	}
	st = &State{}
	if st.Current, err = load(data[KeyCert], data[KeyKey]); err != nil {
		return nil, false, fmt.Errorf("webhook CA: %w", err)
	}
	if len(data[KeyNextCert]) > 0 {
		if st.Next, err = load(data[KeyNextCert], data[KeyNextKey]); err != nil {
			return nil, false, fmt.Errorf("next webhook CA: %w", err)
		}
		st.NextPublished, _ = time.Parse(time.RFC3339, annotations[AnnotationNextPublished])
	}
	if len(data[KeyBundle]) > 0 {
		if st.Bundle, err = ca.ParseCertificatesPEM(data[KeyBundle]); err != nil {
			return nil, false, fmt.Errorf("webhook CA bundle: %w", err)
		}
	}

	switch {
	case st.Next != nil && !now.Before(st.NextPublished.Add(p.Propagation)):
		st.Current, st.Next, st.NextPublished = st.Next, nil, time.Time{}
		changed = true
	case st.Next == nil && !now.Before(st.Current.Cert.NotAfter.Add(-p.CALifetime/3)):
		if st.Next, err = newCA(now, p.CALifetime); err != nil {
			return nil, false, err
		}
		st.NextPublished = now
		changed = true
	}
	bundle := slices.DeleteFunc(slices.Clone(st.Bundle), func(c *x509.Certificate) bool { return !now.Before(c.NotAfter) })
	for _, a := range []*ca.Authority{st.Current, st.Next} {
		if a != nil && !slices.ContainsFunc(bundle, a.Cert.Equal) {
			bundle = append(bundle, a.Cert)
		}
	}
	if !slices.EqualFunc(bundle, st.Bundle, func(a, b *x509.Certificate) bool { return a.Equal(b) }) {
		changed = true
	}
	st.Bundle = bundle
	return st, changed, nil
}

// Encode renders a state as Secret data and annotations.
func Encode(st *State) (map[string][]byte, map[string]string, error) {
	key, err := ca.EncodePrivateKeyPEM(st.Current.Signer)
	if err != nil {
		return nil, nil, err
	}
	data := map[string][]byte{KeyCert: ca.EncodeCertificatesPEM(st.Current.Cert), KeyKey: key, KeyBundle: st.BundlePEM()}
	annotations := map[string]string{}
	if st.Next != nil {
		nk, err := ca.EncodePrivateKeyPEM(st.Next.Signer)
		if err != nil {
			return nil, nil, err
		}
		data[KeyNextCert], data[KeyNextKey] = ca.EncodeCertificatesPEM(st.Next.Cert), nk
		annotations[AnnotationNextPublished] = st.NextPublished.UTC().Format(time.RFC3339)
	}
	return data, annotations, nil
}

func load(certPEM, keyPEM []byte) (*ca.Authority, error) {
	certs, err := ca.ParseCertificatesPEM(certPEM)
	if err != nil {
		return nil, err
	}
	key, err := ca.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, err
	}
	if !certs[0].IsCA || !ca.KeyMatchesCertificate(key, certs[0]) {
		return nil, errors.New("not a CA certificate with its key")
	}
	return &ca.Authority{Cert: certs[0], Signer: key}, nil
}

func newCA(now time.Time, lifetime time.Duration) (*ca.Authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := ca.NewSerial(rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"agentmesh"}, CommonName: "agentmesh webhook CA", SerialNumber: ca.SerialHex(serial)},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &ca.Authority{Cert: cert, Signer: key}, nil
}

// Serving is a serving certificate in use.
type Serving struct {
	TLS   *tls.Certificate
	Leaf  *x509.Certificate
	Hosts []string
}

// IssueServing mints a serving certificate for hosts (DNS names or IPs)
// from the CA, valid for lifetime (never past the CA).
func IssueServing(a *ca.Authority, hosts []string, now time.Time, lifetime time.Duration) (*Serving, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := ca.NewSerial(rand.Reader)
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(a.Cert.NotAfter) {
		notAfter = a.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hosts[0]},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	leaf, err := a.Sign(tmpl, key.Public(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &Serving{
		TLS:   &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: crypto.Signer(key), Leaf: leaf},
		Leaf:  leaf,
		Hosts: slices.Clone(hosts),
	}, nil
}

// NeedsRenewal says whether s must be replaced at now: a third of the
// serving lifetime is left, another CA signs now, or the hosts changed.
func (s *Serving) NeedsRenewal(signer *ca.Authority, hosts []string, now time.Time, servingLifetime time.Duration) bool {
	if s == nil {
		return true
	}
	due := s.Leaf.NotAfter.Add(-servingLifetime / 3)
	return !now.Before(due) || !bytes.Equal(s.Leaf.RawIssuer, signer.Cert.RawSubject) ||
		s.Leaf.CheckSignatureFrom(signer.Cert) != nil || !slices.Equal(s.Hosts, hosts)
}
