package plugin

import (
	"encoding/json"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/cli/inspect"
	"github.com/agentmesh/agentmesh/test/cluster"
)

func TestInspectIdentity(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "inspect-")
	cluster.Create(t, k8s, cluster.NewIdentity(ns, "worker", func(id *mtlsv1alpha1.AgentIdentity) {
		id.Spec.DNSNames = []string{"worker." + ns + ".svc"}
	}))
	id := waitReady(t, ns, "worker")

	res := run(t, "inspect", "identity", "worker", "-n", ns, "-o", "json")
	if res.code != 0 {
		t.Fatalf("inspect: code %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	var s inspect.Summary
	if err := json.Unmarshal([]byte(res.stdout), &s); err != nil {
		t.Fatal(err)
	}
	sec := &corev1.Secret{}
	if err := k8s.Get(t.Context(), clientKey(ns, "worker-tls"), sec); err != nil {
		t.Fatal(err)
	}
	certs, err := ca.ParseCertificatesPEM(sec.Data["tls.crt"])
	if err != nil {
		t.Fatal(err)
	}
	c := s.Certificate
	if c == nil || c.Serial != ca.SerialHex(certs[0].SerialNumber) || c.Serial != id.Status.SerialNumber {
		t.Fatalf("certificate %+v, Secret serial %s, status %s", c, ca.SerialHex(certs[0].SerialNumber), id.Status.SerialNumber)
	}
	if s.SPIFFEID != "spiffe://cluster.local/ns/"+ns+"/agent/worker" || c.KeyType != "ECDSA P-256" || c.DNSNames[0] != "worker."+ns+".svc" ||
		!s.SecretMatchesStatus || s.KeyMatches == nil || !*s.KeyMatches || s.Ready != "True" || s.RenewalTime == nil {
		t.Errorf("summary %+v", s)
	}
	if s.Ingress == nil || !strings.HasPrefix(s.Ingress.Prefixes[0], "spiffe://cluster.local/") {
		t.Errorf("ingress %+v", s.Ingress)
	}
	// No output carries the key.
	key := string(sec.Data["tls.key"])
	body := key[strings.Index(key, "\n")+1 : strings.Index(key, "\n")+40]
	for _, args := range [][]string{{"-o", "json"}, {"-o", "yaml"}, {}} {
		out := run(t, append([]string{"inspect", "identity", "worker", "-n", ns}, args...)...)
		if strings.Contains(out.stdout, "PRIVATE KEY") || strings.Contains(out.stdout, body) {
			t.Errorf("inspect %v printed key material:\n%s", args, out.stdout)
		}
		if len(args) == 0 && (!strings.Contains(out.stdout, "Matches status:  yes") || !strings.Contains(out.stdout, c.Serial)) {
			t.Errorf("inspect table:\n%s", out.stdout)
		}
	}

	// Errors name the object.
	if res := run(t, "inspect", "identity", "nope", "-n", ns); res.code != 1 || !strings.Contains(res.stderr, "AgentIdentity "+ns+"/nope not found") {
		t.Errorf("inspect of a missing identity: code %d, stderr %q", res.code, res.stderr)
	}
}

func clientKey(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}
