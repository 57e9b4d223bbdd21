package plugin

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/cli/check"
	"github.com/agentmesh/agentmesh/test/cluster"
)

func checks(t *testing.T, res result) map[string]check.Item {
	t.Helper()
	var r check.Result
	if err := json.Unmarshal([]byte(res.stdout), &r); err != nil {
		t.Fatalf("check: code %d, %v\n%s%s", res.code, err, res.stdout, res.stderr)
	}
	out := map[string]check.Item{}
	for _, c := range r.Checks {
		if prev, ok := out[c.Name]; ok && prev.Status == check.Fail {
			continue
		}
		out[c.Name] = c
	}
	return out
}

func TestCheck(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "check-")
	res := run(t, "check", "-n", ns, "-o", "json")
	got := checks(t, res)
	if res.code != 0 {
		t.Errorf("check failed (code %d):\n%s%s", res.code, res.stdout, res.stderr)
	}
	for _, name := range []string{"Kubernetes version", "can create customresourcedefinitions.apiextensions.k8s.io", "status", "probe identity"} {
		if got[name].Status != check.Pass {
			t.Errorf("%s: %+v", name, got[name])
		}
	}
	if p := got["probe identity"].Message; !strings.Contains(p, "verified against bundle.pem by the SDK; deleted") || !strings.Contains(p, "spiffe://cluster.local/ns/"+ns+"/agent/agentmesh-check-") {
		t.Errorf("probe: %q", p)
	}
	// The probe is gone.
	list := &mtlsv1alpha1.AgentIdentityList{}
	if err := k8s.List(context.Background(), list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, id := range list.Items {
		if id.DeletionTimestamp.IsZero() {
			t.Errorf("the probe identity %s is left behind", id.Name)
		}
	}

	// --pre: the preflight only.
	got = checks(t, run(t, "check", "--pre", "-n", ns, "-o", "json"))
	if _, ok := got["probe identity"]; ok {
		t.Errorf("check --pre ran the probe: %+v", got)
	}

	// A user without rights fails the RBAC checks, naming what is missing.
	res = run(t, "check", "--pre", "-n", ns, "--as", "alice")
	if res.code != 1 || !strings.Contains(res.stdout, "can create customresourcedefinitions.apiextensions.k8s.io") ||
		!strings.Contains(res.stdout, "FAIL     not allowed cluster-wide: install the CRDs") {
		t.Errorf("check as alice: code %d\n%s%s", res.code, res.stdout, res.stderr)
	}
}
