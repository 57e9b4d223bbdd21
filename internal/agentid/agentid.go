// Package agentid is the one owner of the shape of an agent's SPIFFE ID:
// spiffe://<trust domain>/ns/<namespace>/agent/<name>, and of the prefix
// that every ID of a namespace starts with.
package agentid

import "github.com/spiffe/go-spiffe/v2/spiffeid"

// ID is the SPIFFE ID of the agent name in namespace ns.
func ID(td spiffeid.TrustDomain, ns, name string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "ns", ns, "agent", name)
}

// NamespacePrefix is what the SPIFFE ID of every agent of namespace ns
// starts with: spiffe://<trust domain>/ns/<namespace>/.
func NamespacePrefix(td spiffeid.TrustDomain, ns string) string {
	return td.IDString() + "/ns/" + ns + "/"
}
