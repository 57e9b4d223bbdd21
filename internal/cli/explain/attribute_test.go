package explain

import (
	"reflect"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/policy"
	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

type staticWorld struct{ ids []policy.Identity }

func (w staticWorld) Identities(ns string) []policy.Identity {
	var out []policy.Identity
	for _, i := range w.ids {
		if i.Namespace == ns {
			out = append(out, i)
		}
	}
	return out
}

func (w staticWorld) Namespaces() []policy.Namespace {
	return []policy.Namespace{{Name: "agents", Labels: map[string]string{"team": "a"}}}
}

// TestAttribute: policy.json holds the union of the rules; Attribute names
// the rules that, alone, produce the entry that allowed the peer.
func TestAttribute(t *testing.T) {
	planner := policy.Identity{Namespace: "agents", Name: "planner", Labels: map[string]string{"role": "planner"}}
	worker := policy.Identity{Namespace: "agents", Name: "worker", Labels: map[string]string{"role": "worker"}}
	byRole := func(role string) mtlsv1alpha1.AgentPeer {
		return mtlsv1alpha1.AgentPeer{IdentitySelector: &mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"role": role}}}
	}
	pol := func(name, selects string, rules ...mtlsv1alpha1.IngressRule) *policy.Compiled {
		return policy.Compile(&mtlsv1alpha1.AgentTrustPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: name, Generation: 1},
			Spec: mtlsv1alpha1.AgentTrustPolicySpec{
				AgentSelector: mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"role": selects}},
				Ingress:       rules,
			},
		})
	}
	in := policy.Input{
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Default: policy.Deny, Identity: worker,
		World: staticWorld{ids: []policy.Identity{planner, worker}},
		Policies: []*policy.Compiled{
			pol("a-planner", "worker", mtlsv1alpha1.IngressRule{From: []mtlsv1alpha1.AgentPeer{byRole("ops")}}, mtlsv1alpha1.IngressRule{From: []mtlsv1alpha1.AgentPeer{byRole("planner")}}),
			pol("b-planner-too", "worker", mtlsv1alpha1.IngressRule{From: []mtlsv1alpha1.AgentPeer{byRole("planner")}}),
			pol("c-everyone", "worker", mtlsv1alpha1.IngressRule{}),
			pol("d-other-agent", "planner", mtlsv1alpha1.IngressRule{From: []mtlsv1alpha1.AgentPeer{byRole("planner")}}),
		},
	}
	for _, tc := range []struct {
		name string
		d    agenttls.Direction
		m    *agenttls.Match
		want []Source
	}{
		{"a SPIFFE ID two policies list", agenttls.Ingress, &agenttls.Match{Kind: agenttls.MatchSPIFFEID, Value: "spiffe://cluster.local/ns/agents/agent/planner"},
			[]Source{{"a-planner", 1}, {"b-planner-too", 0}}},
		{"allowAll", agenttls.Ingress, &agenttls.Match{Kind: agenttls.MatchAllowAll}, []Source{{"c-everyone", 0}}},
		{"an entry no rule makes", agenttls.Ingress, &agenttls.Match{Kind: agenttls.MatchSPIFFEID, Value: "spiffe://cluster.local/ns/agents/agent/outsider"}, nil},
		{"egress, which none governs", agenttls.Egress, &agenttls.Match{Kind: agenttls.MatchAllowAll}, nil},
		{"a grant names itself", agenttls.Ingress, &agenttls.Match{Kind: agenttls.MatchGrant, Value: "a-planner ingress[1]"}, nil},
	} {
		if got := Attribute(in, tc.d, tc.m); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
