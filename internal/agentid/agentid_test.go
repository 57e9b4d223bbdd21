package agentid

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestShape(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	id, err := ID(td, "agents", "worker")
	if err != nil || id.String() != "spiffe://cluster.local/ns/agents/agent/worker" {
		t.Fatalf("ID: %v, %v", id, err)
	}
	if p := NamespacePrefix(td, "agents"); p != "spiffe://cluster.local/ns/agents/" || !strings.HasPrefix(id.String(), p) {
		t.Errorf("prefix %q", p)
	}
	if _, err := ID(td, "agents", "bad/name"); err == nil {
		t.Error("a name with a slash formed an ID")
	}
}
