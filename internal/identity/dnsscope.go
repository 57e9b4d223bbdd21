package identity

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// DefaultClusterDomain is the cluster's DNS domain unless --cluster-domain
// says otherwise.
const DefaultClusterDomain = "cluster.local"

// DNSScope decides which DNS names an identity may have in its certificate.
// The cluster CA signs them, and every workload that trusts the CA for host
// names trusts them, so a tenant must not get a certificate for another
// namespace's Service, the API server's, or a public name.
//
// By default an identity in namespace ns may have names under its own
// namespace's Service domains, ns.svc and ns.svc.<cluster domain>:
// "worker.ns.svc", "worker.ns.svc.cluster.local", "a.worker.ns.svc" (a Pod
// of a headless Service). A wildcard is allowed as the leftmost label of a
// name in those domains, the domain itself included: "*.ns.svc" covers
// every Service of the namespace, and nothing else. Allowed extends this
// cluster-wide (every namespace): an entry "api.example.com" allows exactly
// that name, an entry "*.example.com" allows any name under example.com,
// and wildcards under it. The zero value is the default rule for
// DefaultClusterDomain with nothing more allowed.
type DNSScope struct {
	ClusterDomain string
	Allowed       []string
}

// ParseAllowedDNSNames checks the entries of a cluster-wide allow-list.
func ParseAllowedDNSNames(entries []string) ([]string, error) {
	out := make([]string, 0, len(entries))
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if msgs := validation.IsDNS1123Subdomain(strings.TrimPrefix(e, "*.")); len(msgs) > 0 {
			return nil, fmt.Errorf("%q is not a DNS name or a *.domain pattern: %s", e, strings.Join(msgs, "; "))
		}
		out = append(out, e)
	}
	return out, nil
}

// Check returns an error for every name of names (spec.dnsNames) that an
// identity in namespace may not have.
func (s DNSScope) Check(namespace string, names []string) field.ErrorList {
	var errs field.ErrorList
	for i, n := range names {
		if !s.allows(namespace, n) {
			errs = append(errs, field.Forbidden(field.NewPath("spec", "dnsNames").Index(i), fmt.Sprintf(
				"%q is outside the identity's namespace: allowed are names under %s.svc and %s.svc.%s%s",
				n, namespace, namespace, s.clusterDomain(), s.allowedText())))
		}
	}
	return errs
}

func (s DNSScope) clusterDomain() string {
	if s.ClusterDomain == "" {
		return DefaultClusterDomain
	}
	return s.ClusterDomain
}

func (s DNSScope) allowedText() string {
	if len(s.Allowed) == 0 {
		return ""
	}
	return " and the cluster's allow-list (" + strings.Join(s.Allowed, ", ") + ")"
}

func (s DNSScope) allows(namespace, name string) bool {
	base, wildcard := strings.CutPrefix(name, "*.")
	if strings.Contains(base, "*") {
		return false
	}
	svc := namespace + ".svc"
	for _, zone := range []string{svc, svc + "." + s.clusterDomain()} {
		if under(base, zone, wildcard) {
			return true
		}
	}
	for _, a := range s.Allowed {
		if domain, ok := strings.CutPrefix(a, "*."); ok {
			if under(base, domain, wildcard) {
				return true
			}
		} else if !wildcard && base == a {
			return true
		}
	}
	return false
}

// under reports whether base is a name below zone or, for the base of a
// wildcard, zone itself.
func under(base, zone string, wildcard bool) bool {
	return strings.HasSuffix(base, "."+zone) || (wildcard && base == zone)
}
