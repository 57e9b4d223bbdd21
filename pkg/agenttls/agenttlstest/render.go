package agenttlstest

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

// DefaultPolicy returns the policy.json that the operator writes for an
// identity that no AgentTrustPolicy selects, under the default posture
// allow-authenticated: every identity of its own trust domain is allowed in
// both directions. TrustDomains is filled in by RenderTrust.
func DefaultPolicy(id spiffeid.ID) *agenttls.Policy {
	prefix := id.TrustDomain().IDString() + "/"
	rules := agenttls.Rules{
		Mode:      agenttls.ModeEnforce,
		SPIFFEIDs: []string{},
		Prefixes:  []string{prefix},
		Policies:  []string{},
		Default:   "allow-authenticated",
	}
	egress := rules
	egress.Prefixes = []string{prefix}
	return &agenttls.Policy{
		Version:     agenttls.PolicySchemaVersion,
		SPIFFEID:    id.String(),
		TrustDomain: id.TrustDomain().Name(),
		Ingress:     rules,
		Egress:      egress,
	}
}

// Trust is the content of an identity's trust ConfigMap.
type Trust struct {
	// BundlePEM is bundle.pem.
	BundlePEM []byte
	// PolicyJSON is policy.json.
	PolicyJSON []byte
}

// RenderTrust renders bundle.pem and policy.json as the operator does: the
// own trust domain first, then the others by name, each CA preceded by a
// "# trust domain: <td>, subject: <subject>" line and listed once; and
// policy.json, indented, with trustDomains mapping each trust domain to its
// CAs' SHA-256 fingerprints (p's own TrustDomains is ignored and p is not
// modified). Nil lists are written as [], as the operator writes them.
func RenderTrust(p *agenttls.Policy, bundles map[spiffeid.TrustDomain][]*x509.Certificate) (Trust, error) {
	domains := make([]spiffeid.TrustDomain, 0, len(bundles))
	var own []spiffeid.TrustDomain
	for td := range bundles {
		if td.Name() == p.TrustDomain {
			own = append(own, td)
			continue
		}
		domains = append(domains, td)
	}
	slices.SortFunc(domains, func(a, b spiffeid.TrustDomain) int { return a.Compare(b) })
	domains = append(own, domains...)

	out := *p
	out.Ingress, out.Egress = emptyLists(p.Ingress), emptyLists(p.Egress)
	out.TrustDomains = map[string][]string{}
	var b bytes.Buffer
	for _, td := range domains {
		fps := []string{}
		for _, c := range bundles[td] {
			sum := sha256.Sum256(c.Raw)
			fp := hex.EncodeToString(sum[:])
			if slices.Contains(fps, fp) {
				continue
			}
			fps = append(fps, fp)
			fmt.Fprintf(&b, "# trust domain: %s, subject: %s\n", td.Name(), c.Subject.String())
			b.Write(EncodeCertificatesPEM(c))
		}
		out.TrustDomains[td.Name()] = fps
	}
	pj, err := json.MarshalIndent(&out, "", "  ")
	if err != nil {
		return Trust{}, fmt.Errorf("render policy.json: %w", err)
	}
	return Trust{BundlePEM: b.Bytes(), PolicyJSON: append(pj, '\n')}, nil
}

func emptyLists(r agenttls.Rules) agenttls.Rules {
	for _, l := range []*[]string{&r.SPIFFEIDs, &r.Prefixes, &r.Policies} {
		if *l == nil {
			*l = []string{}
		}
	}
	return r
}

// Payload returns the four files of an identity volume, by file name, for
// AtomicWriter.Write.
func Payload(leaf *Leaf, trust Trust) (map[string][]byte, error) {
	key, err := leaf.KeyPEM()
	if err != nil {
		return nil, err
	}
	return map[string][]byte{
		agenttls.CertFileName:   leaf.CertPEM(),
		agenttls.KeyFileName:    key,
		agenttls.BundleFileName: trust.BundlePEM,
		agenttls.PolicyFileName: trust.PolicyJSON,
	}, nil
}
