package controller_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/policy"
	"github.com/agentmesh/agentmesh/test/cluster"
)

// TestGrantRecompiledAtExpiry: a policy that restricts MCP tools compiles
// into the worker's trust ConfigMap as grants of policy.json v2, and at a
// rule's expiresAt the operator recompiles by itself (nothing in the
// cluster changes): the expired grant is gone, the other one stays.
func TestGrantRecompiledAtExpiry(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "grants-")
	agents(t, ns)
	// Far enough ahead that a loaded machine (make test runs the packages
	// side by side) still compiles the grant before it expires.
	expires := clk.Now().Add(20 * time.Second).UTC().Truncate(time.Second)
	selector := func(role string) []mtlsv1alpha1.AgentPeer {
		return []mtlsv1alpha1.AgentPeer{{IdentitySelector: &mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"role": role}}}}
	}
	p := &mtlsv1alpha1.AgentTrustPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "worker-tools"},
		Spec: mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"role": "worker"}},
			Ingress: []mtlsv1alpha1.IngressRule{
				{From: selector("planner"), Protocols: &mtlsv1alpha1.ProtocolRules{MCP: &mtlsv1alpha1.MCPRule{Tools: []string{"search", "read_*"}}}},
				{From: selector("outsider"), Protocols: &mtlsv1alpha1.ProtocolRules{MCP: &mtlsv1alpha1.MCPRule{Tools: []string{"delete_records"}}},
					ExpiresAt: &metav1.Time{Time: expires}},
			},
		},
	}
	cluster.Create(t, k8s, p)
	waitPolicy(t, types.NamespacedName{Namespace: ns, Name: p.Name}, metav1.ConditionTrue, mtlsv1alpha1.ReasonCompiled)

	grant := func(peer string, tools, expiresAt string) string {
		return fmt.Sprintf(`{"policy":"worker-tools","rule":"%s","allowAll":false,"spiffeIDs":["%s"],"prefixes":[]%s,"protocols":{"mcp":{"tools":[%s]}}}`,
			map[string]string{"planner": "ingress[0]", "outsider": "ingress[1]"}[peer], idOf(ns, peer), expiresAt, tools)
	}
	before := "[" + grant("planner", `"read_*","search"`, "") + "," +
		grant("outsider", `"delete_records"`, `,"expiresAt":"`+expires.Format(time.RFC3339)+`"`) + "]"
	after := "[" + grant("planner", `"read_*","search"`, "") + "]"
	wantGrants := func(want string) func(*policy.Effective) error {
		return func(eff *policy.Effective) error {
			got, _ := json.Marshal(eff.Ingress.Grants)
			if eff.Version != policy.SchemaVersionV2 || string(got) != want || len(eff.Ingress.SPIFFEIDs) != 0 || eff.Ingress.AllowAll {
				return fmt.Errorf("version %s, whole-peer %v, grants %s; want grants %s", eff.Version, eff.Ingress.SPIFFEIDs, got, want)
			}
			return nil
		}
	}
	waitEffective(t, ns, "worker", "both grants compiled", wantGrants(before))
	if now := clk.Now(); !now.Before(expires) {
		t.Fatalf("the test was too slow: it is %v, the grant expired at %v", now, expires)
	}
	waitEffective(t, ns, "worker", "the expired grant compiled out", wantGrants(after))
	if now := clk.Now(); now.Before(expires) || now.After(expires.Add(5*time.Second)) {
		t.Errorf("recompiled at %v, want at the expiry %v (within seconds)", now, expires)
	}
	// The policy's status says which rule expired.
	waitMessage(t, &mtlsv1alpha1.AgentTrustPolicy{}, types.NamespacedName{Namespace: ns, Name: p.Name}, mtlsv1alpha1.ConditionReady,
		mtlsv1alpha1.ReasonCompiled, "expired rules (they allow nothing): ingress[1] at "+expires.Format(time.RFC3339))
	// The planner, whom the policy does not govern, keeps the default.
	planner, _ := effective(t, ns, "planner")
	if planner.Version != policy.SchemaVersion || len(planner.Ingress.Grants) != 0 {
		t.Errorf("planner policy.json %+v", planner)
	}
}
