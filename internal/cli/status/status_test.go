package status

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentmesh/agentmesh/internal/cli/golden"
)

var now = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

func healthy() Input {
	renewed := now.Add(-3 * time.Second)
	notAfter := now.Add(300 * 24 * time.Hour)
	return Input{
		Now:           now,
		ServerVersion: "v1.37.2",
		CRDs: []CRD{
			{Name: "agentidentities.mtls.agentmesh.dev", Found: true, Established: true, Served: []string{"v1alpha1"}, Storage: "v1alpha1"},
			{Name: "agenttrustpolicies.mtls.agentmesh.dev", Found: true, Established: true, Served: []string{"v1alpha1"}, Storage: "v1alpha1"},
		},
		Operator: Operator{Namespace: "agentmesh-system", Deployment: "agentmesh", Found: true, Replicas: 2, Ready: 2, Available: 2,
			Leader: "agentmesh-7d9f_1b2c", LeaseRenewed: &renewed, LeaseDuration: 15 * time.Second},
		Webhooks: []WebhookConfiguration{
			{Kind: "MutatingWebhookConfiguration", Name: "agentmesh", Found: true, Webhooks: []Webhook{{Name: "pods.mtls.agentmesh.dev", CABundle: "match"}}},
			{Kind: "ValidatingWebhookConfiguration", Name: "agentmesh", Found: true, Webhooks: []Webhook{{Name: "agenttrustpolicies.mtls.agentmesh.dev", CABundle: "match"}}},
		},
		CA: CA{StatusFound: true, Managed: "managed", Phase: "Stable", Serial: "d0360894f801beb8e166d73bb54d24f2", NotAfter: &notAfter,
			BundlesCurrent: 4, Bundles: 4, IdentitiesOnActive: 2, IdentitiesTotal: 2, NextRotation: "2027-05-27T23:44:39Z"},
		Identities: []Identity{{Namespace: "agents", Name: "planner", Ready: true, Reason: "Issued"}, {Namespace: "agents", Name: "worker", Ready: true, Reason: "Issued"}},
	}
}

func TestAggregate(t *testing.T) {
	tests := map[string]struct {
		change   func(*Input)
		problems []string // substrings, in order
		notes    []string
	}{
		"healthy": {change: func(*Input) {}},
		"crd missing": {
			change:   func(in *Input) { in.CRDs[1] = CRD{Name: "agenttrustpolicies.mtls.agentmesh.dev"} },
			problems: []string{"CRD agenttrustpolicies.mtls.agentmesh.dev is not installed"},
		},
		"crd not established": {
			change:   func(in *Input) { in.CRDs[0].Established = false },
			problems: []string{"CRD agentidentities.mtls.agentmesh.dev is not Established"},
		},
		"replica not ready": {
			change:   func(in *Input) { in.Operator.Ready, in.Operator.Available = 1, 1 },
			problems: []string{"Deployment agentmesh-system/agentmesh: 1 of 2 replicas ready"},
		},
		"no replica available": {
			change:   func(in *Input) { in.Operator.Ready, in.Operator.Available = 0, 0 },
			problems: []string{"has no available replica (0 of 2 ready)"},
		},
		"operator outside the cluster": {
			change: func(in *Input) { in.Operator.Found = false },
			notes:  []string{"no Deployment agentmesh-system/agentmesh"},
		},
		"stale lease": {
			change: func(in *Input) {
				old := now.Add(-time.Minute)
				in.Operator.LeaseRenewed = &old
			},
			problems: []string{"last renewed 1m0s ago by agentmesh-7d9f_1b2c"},
		},
		"caBundle mismatch and empty": {
			change: func(in *Input) {
				in.Webhooks[0].Webhooks[0].CABundle = "mismatch"
				in.Webhooks[1].Webhooks[0].CABundle = "empty"
			},
			problems: []string{"webhook pods.mtls.agentmesh.dev has a caBundle that is not", "webhook agenttrustpolicies.mtls.agentmesh.dev has no caBundle"},
		},
		"caBundle unknown is no problem": {
			change: func(in *Input) { in.Webhooks[0].Webhooks[0].CABundle = "unknown" },
		},
		"webhook configuration missing": {
			change: func(in *Input) {
				in.Webhooks[1] = WebhookConfiguration{Kind: "ValidatingWebhookConfiguration", Name: "agentmesh"}
			},
			problems: []string{"ValidatingWebhookConfiguration agentmesh does not exist"},
		},
		"no CA status": {
			change:   func(in *Input) { in.CA = CA{} },
			problems: []string{"agentmesh-system/agentmesh-ca-status does not exist"},
		},
		"CA expires soon": {
			change: func(in *Input) {
				t := now.Add(10 * 24 * time.Hour)
				in.CA.NotAfter = &t
			},
			problems: []string{"expires in 10d and no rotation is under way"},
		},
		"CA expires soon, rotation under way": {
			change: func(in *Input) {
				t := now.Add(10 * 24 * time.Hour)
				in.CA.NotAfter, in.CA.Next, in.CA.Phase, in.CA.Reason = &t, "abc", "Propagating", "Scheduled"
				in.CA.BundlesCurrent = 1
			},
			notes: []string{"CA rotation in progress: Propagating (Scheduled), bundles 1/4 current"},
		},
		"CA expired": {
			change: func(in *Input) {
				t := now.Add(-time.Hour)
				in.CA.NotAfter = &t
			},
			problems: []string{"expired at 2026-12-04T11:00:00Z"},
		},
		"stranded": {
			change: func(in *Input) {
				in.CA.Phase, in.CA.Stranded, in.CA.StrandedIdentities = "Reissuing", 1, []string{"agents/bad"}
			},
			problems: []string{"left 1 identities behind (InvalidSpec or SecretConflict): agents/bad"},
			notes:    []string{"CA rotation in progress: Reissuing"},
		},
		"identities not ready": {
			change: func(in *Input) {
				for i := range 5 {
					in.Identities = append(in.Identities, Identity{Namespace: "agents", Name: "x" + string(rune('a'+i)), Reason: "SecretConflict"})
				}
				in.Identities = append(in.Identities, Identity{Namespace: "b", Name: "new"})
			},
			problems: []string{"1 identities not Ready (NoStatus): b/new", "5 identities not Ready (SecretConflict): agents/xa, agents/xb, agents/xc and 2 more"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			in := healthy()
			tc.change(&in)
			r := Aggregate(in)
			if len(r.Problems) != len(tc.problems) {
				t.Fatalf("problems = %q, want %d like %q", r.Problems, len(tc.problems), tc.problems)
			}
			for i, want := range tc.problems {
				if !strings.Contains(r.Problems[i], want) {
					t.Errorf("problem %d = %q, want it to contain %q", i, r.Problems[i], want)
				}
			}
			if r.OK() != (len(tc.problems) == 0) {
				t.Errorf("OK() = %v with problems %q", r.OK(), r.Problems)
			}
			for _, want := range tc.notes {
				if !slices.ContainsFunc(r.Notes, func(n string) bool { return strings.Contains(n, want) }) {
					t.Errorf("notes = %q, want one containing %q", r.Notes, want)
				}
			}
		})
	}
}

func TestIdentityCounts(t *testing.T) {
	in := healthy()
	in.Identities = append(in.Identities, Identity{Namespace: "a", Name: "c", Reason: "InvalidSpec"}, Identity{Namespace: "a", Name: "d", Reason: "InvalidSpec"})
	s := Aggregate(in).Identities
	if s.Total != 4 || s.Ready != 2 || s.NotReady != 2 || s.ByReason["InvalidSpec"] != 2 {
		t.Errorf("summary = %+v", s)
	}
}

func TestGolden(t *testing.T) {
	for name, change := range map[string]func(*Input){
		"healthy": func(*Input) {},
		"problems": func(in *Input) {
			in.Operator.Ready, in.Operator.Available = 1, 1
			in.Webhooks[0].Webhooks[0].CABundle = "mismatch"
			in.CA.Phase, in.CA.Reason, in.CA.IdentitiesOnActive = "Reissuing", "Manual", 1
			in.Identities[1] = Identity{Namespace: "agents", Name: "worker", Reason: "IssuanceFailed"}
		},
	} {
		t.Run(name, func(t *testing.T) {
			in := healthy()
			change(&in)
			var b bytes.Buffer
			if err := Aggregate(in).WriteHuman(&b); err != nil {
				t.Fatal(err)
			}
			golden.Assert(t, "status-"+name, b.Bytes())
		})
	}
}
