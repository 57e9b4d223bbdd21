package controller

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
)

// series gathers g through a pedantic registry (which checks that Collect
// keeps to what Describe announced) as "name{namespace/name}" -> value.
func series(t *testing.T, g *identityGauges) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(g); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			out[fmt.Sprintf("%s{%s/%s}", f.GetName(), labels["namespace"], labels["name"])] = m.GetGauge().GetValue()
		}
	}
	return out
}

func TestIdentityGauges(t *testing.T) {
	worker := types.NamespacedName{Namespace: "agents", Name: "worker"}
	planner := types.NamespacedName{Namespace: "agents", Name: "planner"}
	const (
		ready   = "agentmesh_identity_ready"
		expiry  = "agentmesh_identity_expiration_timestamp_seconds"
		renewal = "agentmesh_identity_renewal_timestamp_seconds"
	)
	g := newIdentityGauges()
	for _, step := range []struct {
		name string
		do   func()
		want map[string]float64
	}{{
		name: "no certificate yet: ready only",
		do:   func() { g.set(worker, false, 0, 0) },
		want: map[string]float64{ready + "{agents/worker}": 0},
	}, {
		name: "issued",
		do:   func() { g.set(worker, true, 2000, 1500) },
		want: map[string]float64{ready + "{agents/worker}": 1, expiry + "{agents/worker}": 2000, renewal + "{agents/worker}": 1500},
	}, {
		name: "a second identity",
		do:   func() { g.set(planner, true, 3000, 2500) },
		want: map[string]float64{
			ready + "{agents/worker}": 1, expiry + "{agents/worker}": 2000, renewal + "{agents/worker}": 1500,
			ready + "{agents/planner}": 1, expiry + "{agents/planner}": 3000, renewal + "{agents/planner}": 2500,
		},
	}, {
		name: "not ready, no certificate in the status: the last times stay",
		do:   func() { g.set(worker, false, 0, 0) },
		want: map[string]float64{
			ready + "{agents/worker}": 0, expiry + "{agents/worker}": 2000, renewal + "{agents/worker}": 1500,
			ready + "{agents/planner}": 1, expiry + "{agents/planner}": 3000, renewal + "{agents/planner}": 2500,
		},
	}, {
		name: "renewed",
		do:   func() { g.set(worker, true, 4000, 3500) },
		want: map[string]float64{
			ready + "{agents/worker}": 1, expiry + "{agents/worker}": 4000, renewal + "{agents/worker}": 3500,
			ready + "{agents/planner}": 1, expiry + "{agents/planner}": 3000, renewal + "{agents/planner}": 2500,
		},
	}, {
		name: "deleted: every series of the identity goes",
		do:   func() { g.forget(worker) },
		want: map[string]float64{ready + "{agents/planner}": 1, expiry + "{agents/planner}": 3000, renewal + "{agents/planner}": 2500},
	}} {
		step.do()
		got := series(t, g)
		if len(got) != len(step.want) {
			t.Errorf("%s: %d series %v, want %v", step.name, len(got), got, step.want)
			continue
		}
		for k, v := range step.want {
			if got[k] != v {
				t.Errorf("%s: %s = %v, want %v", step.name, k, got[k], v)
			}
		}
	}
}
