package policy

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"unicode"

	"github.com/agentmesh/agentmesh/internal/ca"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

// Keys of a trust ConfigMap (<identity>-trust).
const (
	BundleKey = mtlsv1alpha1.TrustBundleKey
	PolicyKey = mtlsv1alpha1.TrustPolicyKey
)

// MaxTrustDataSize caps what a trust ConfigMap holds (bundle.pem and
// policy.json together), well below the API server's 1 MiB object limit;
// bundle.pem alone is then within ca.MaxBundlePEMSize, which the operator
// and the SDK read it with.
const MaxTrustDataSize = ca.MaxBundlePEMSize

// ParseBundle parses the PEM of a federated trust domain's bundle: within
// the bundle caps, certificates only, and every one a CA.
func ParseBundle(pemData []byte) ([]*x509.Certificate, error) {
	certs, err := ca.ParseBundlePEM(pemData)
	if err != nil {
		return nil, err
	}
	for i, c := range certs {
		if !c.BasicConstraintsValid || !c.IsCA {
			return nil, fmt.Errorf("certificate %d (subject %q) is not a CA certificate", i+1, c.Subject.String())
		}
	}
	return certs, nil
}

// Fingerprint is the hex SHA-256 of a certificate's DER.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// Output is the content of a trust ConfigMap.
type Output struct {
	BundlePEM  []byte
	PolicyJSON []byte
}

// Render writes the effective policy and the bundle of every trust domain
// into the ConfigMap content. bundle.pem lists the own trust domain first,
// then the others by name, each block preceded by a comment line naming its
// trust domain (PEM readers skip text outside the blocks); policy.json maps
// each trust domain to its CAs' fingerprints.
func Render(eff *Effective, bundles map[string][]*x509.Certificate) (Output, error) {
	domains := make([]string, 0, len(bundles))
	for td := range bundles {
		if td != eff.TrustDomain {
			domains = append(domains, td)
		}
	}
	slices.Sort(domains)
	if _, ok := bundles[eff.TrustDomain]; ok {
		domains = append([]string{eff.TrustDomain}, domains...)
	}
	var b bytes.Buffer
	written := 0
	eff.TrustDomains = map[string][]string{}
	for _, td := range domains {
		fps := []string{}
		for _, c := range bundles[td] {
			fp := Fingerprint(c)
			if slices.Contains(fps, fp) {
				continue
			}
			fps = append(fps, fp)
			written++
			fmt.Fprintf(&b, "# trust domain: %s, subject: %s\n", td, commentSafe(c.Subject.String()))
			b.Write(ca.EncodeCertificatesPEM(c))
		}
		eff.TrustDomains[td] = fps
	}
	pj, err := json.MarshalIndent(eff, "", "  ")
	if err != nil {
		return Output{}, err
	}
	out := Output{BundlePEM: b.Bytes(), PolicyJSON: append(pj, '\n')}
	if n := len(out.BundlePEM) + len(out.PolicyJSON); n > MaxTrustDataSize || written > ca.MaxBundleCertificates {
		return out, &TooLargeError{Size: n, Certificates: written}
	}
	return out, nil
}

// commentSafe keeps a subject on its comment line of bundle.pem: a control
// character is written as a \u escape, since a newline in a federated CA's
// subject (which whoever writes the bundle's ConfigMap chooses) would start
// a line of its own, and with it a PEM block that every reader refuses.
func commentSafe(s string) string {
	if !strings.ContainsFunc(s, unicode.IsControl) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if unicode.IsControl(r) {
			fmt.Fprintf(&b, "\\u%04x", r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// TooLargeError says a trust ConfigMap would exceed MaxTrustDataSize or
// hold more than ca.MaxBundleCertificates CAs.
type TooLargeError struct{ Size, Certificates int }

func (e *TooLargeError) Error() string {
	if e.Certificates > ca.MaxBundleCertificates {
		return fmt.Sprintf("the trust bundle would hold %d CA certificates, over the limit of %d: federate fewer CAs",
			e.Certificates, ca.MaxBundleCertificates)
	}
	return fmt.Sprintf("the trust bundle and policy would take %d bytes, over the limit of %d: "+
		"select peers by namespace (a prefix) instead of listing identities, or federate fewer CAs", e.Size, MaxTrustDataSize)
}

// PreviousBundles recovers, from a trust ConfigMap written before, the CAs
// of each trust domain, so that a federated bundle whose source turned bad
// keeps its last good content.
func PreviousBundles(out Output) map[string][]*x509.Certificate {
	var eff Effective
	if err := json.Unmarshal(out.PolicyJSON, &eff); err != nil || len(out.BundlePEM) == 0 {
		return nil
	}
	certs, err := ca.ParseBundlePEM(out.BundlePEM)
	if err != nil {
		return nil
	}
	byFP := map[string]*x509.Certificate{}
	for _, c := range certs {
		byFP[Fingerprint(c)] = c
	}
	prev := map[string][]*x509.Certificate{}
	for td, fps := range eff.TrustDomains {
		for _, fp := range fps {
			if c, ok := byFP[fp]; ok {
				prev[td] = append(prev[td], c)
			}
		}
	}
	return prev
}

// DataContentHash is the content hash of a trust ConfigMap's data: that of
// the Output it holds (ContentHash) when it holds exactly bundle.pem and
// policy.json, and mtlsv1alpha1.CachedHashOther otherwise.
func DataContentHash(data map[string]string, binaryData map[string][]byte) string {
	bundle, okB := data[BundleKey]
	pol, okP := data[PolicyKey]
	if len(data) != 2 || len(binaryData) != 0 || !okB || !okP {
		return mtlsv1alpha1.CachedHashOther
	}
	return Output{BundlePEM: []byte(bundle), PolicyJSON: []byte(pol)}.ContentHash()
}

// ContentHash identifies a trust ConfigMap's content, to skip no-op writes.
func (o Output) ContentHash() string {
	h := sha256.New()
	h.Write(o.BundlePEM)
	h.Write([]byte{0})
	h.Write(o.PolicyJSON)
	return hex.EncodeToString(h.Sum(nil))[:32]
}
