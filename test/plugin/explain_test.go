package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/cli/explain"
	"github.com/agentmesh/agentmesh/pkg/agenttls"
	"github.com/agentmesh/agentmesh/test/cluster"
)

func labelled(role string) func(*mtlsv1alpha1.AgentIdentity) {
	return func(id *mtlsv1alpha1.AgentIdentity) { id.Labels = map[string]string{"agentmesh.dev/role": role} }
}

// TestExplain runs explain on identities under a real AgentTrustPolicy and
// checks each verdict against a handshake between SDK agents that load the
// files the operator wrote for them.
func TestExplain(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "explain-")
	for _, n := range []string{"planner", "worker", "outsider"} {
		cluster.Create(t, k8s, cluster.NewIdentity(ns, n, labelled(n)))
	}
	cluster.Create(t, k8s, &mtlsv1alpha1.AgentTrustPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "worker-ingress"},
		Spec: mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"agentmesh.dev/role": "worker"}},
			Ingress: []mtlsv1alpha1.IngressRule{{From: []mtlsv1alpha1.AgentPeer{{
				IdentitySelector: &mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"agentmesh.dev/role": "planner"}},
			}}}},
		},
	})
	for _, n := range []string{"planner", "worker", "outsider"} {
		waitReady(t, ns, n)
	}
	cluster.Eventually(t, 30*time.Second, "the worker's policy.json compiles worker-ingress", func() error {
		cm := &corev1.ConfigMap{}
		if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "worker-trust"}, cm); err != nil {
			return err
		}
		if !strings.Contains(cm.Data["policy.json"], "worker-ingress") {
			return fmt.Errorf("policy.json: %s", cm.Data["policy.json"])
		}
		return nil
	})
	dirs := map[string]string{}
	for _, n := range []string{"planner", "worker", "outsider"} {
		dirs[n] = identityFiles(t, ns, n)
	}

	tests := []struct {
		from, to string
		allowed  bool
		check    func(*testing.T, *explain.Verdict)
	}{
		{from: "planner", to: "worker", allowed: true, check: func(t *testing.T, v *explain.Verdict) {
			d := v.Ingress.Decision
			if d == nil || d.Match == nil || d.Match.Kind != agenttls.MatchSPIFFEID || !strings.HasSuffix(d.Match.Value, "/agent/planner") ||
				!slices.Equal(d.Policies, []string{"worker-ingress"}) || d.Mode != agenttls.ModeEnforce {
				t.Errorf("ingress decision %+v", d)
			}
			// The entry is traced back to the policy rule that made it.
			if want := []explain.Source{{Policy: "worker-ingress", Rule: 0}}; !slices.Equal(v.Ingress.Sources, want) ||
				!strings.HasSuffix(v.Ingress.Summary, "; from worker-ingress rule 0") {
				t.Errorf("ingress sources %+v (%q), want %+v", v.Ingress.Sources, v.Ingress.Summary, want)
			}
			if len(v.Egress.Sources) != 0 {
				t.Errorf("egress, which no policy governs, is attributed to %+v", v.Egress.Sources)
			}
			if e := v.Egress.Decision; e == nil || e.Match == nil || e.Match.Kind != agenttls.MatchPrefix || e.Default != "allow-authenticated" {
				t.Errorf("egress decision %+v", e)
			}
		}},
		{from: "outsider", to: "worker", allowed: false, check: func(t *testing.T, v *explain.Verdict) {
			d := v.Ingress.Decision
			if d == nil || d.Allowed || !strings.Contains(d.Reason, "(policies: worker-ingress)") || v.Ingress.Passes || !v.Egress.Passes {
				t.Errorf("verdict %+v", v)
			}
		}},
		{from: "worker", to: "planner", allowed: true},
		{from: ns + "/outsider", to: "spiffe://cluster.local/ns/" + ns + "/agent/planner", allowed: true},
	}
	for _, tc := range tests {
		t.Run(tc.from+"->"+tc.to, func(t *testing.T) {
			res := run(t, "explain", tc.from, tc.to, "-n", ns, "-o", "json")
			var v explain.Verdict
			if err := json.Unmarshal([]byte(res.stdout), &v); err != nil {
				t.Fatalf("explain: code %d, %v\n%s%s", res.code, err, res.stdout, res.stderr)
			}
			if v.Allowed != tc.allowed || (res.code == 0) != tc.allowed {
				t.Errorf("explain: allowed %v (code %d), want %v\n%s", v.Allowed, res.code, tc.allowed, res.stdout)
			}
			// The SDK, on the operator's files, agrees.
			from, to := short(tc.from), short(tc.to)
			if got := handshake(t, dirs[from], dirs[to]); got != v.Allowed {
				t.Errorf("explain says allowed=%v, a handshake of the SDK on the same files says %v", v.Allowed, got)
			}
			if tc.check != nil {
				tc.check(t, &v)
			}
		})
	}

	// The human table names the policy; a partner's SPIFFE ID that the worker
	// does not trust is refused; errors name the object.
	if res := run(t, "explain", "outsider", "worker", "-n", ns); res.code != 1 || !strings.Contains(res.stdout, "REFUSED") ||
		!strings.Contains(res.stdout, "policies: worker-ingress") {
		t.Errorf("explain table: code %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if res := run(t, "explain", "spiffe://partner.example/ns/ops/agent/auditor", "worker", "-n", ns); res.code != 1 ||
		!strings.Contains(res.stdout, "trusts no CA of trust domain partner.example") {
		t.Errorf("explain of a partner: code %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if res := run(t, "explain", "planner", "nope", "-n", ns); res.code != 1 || !strings.Contains(res.stderr, "AgentIdentity "+ns+"/nope not found") {
		t.Errorf("explain of a missing identity: code %d, %q", res.code, res.stderr)
	}
}

func short(arg string) string {
	return arg[strings.LastIndexByte(arg, '/')+1:]
}

// identityFiles writes an identity's four files from its Secret and trust
// ConfigMap, as the kubelet projects them.
func identityFiles(t *testing.T, ns, name string) string {
	t.Helper()
	sec := &corev1.Secret{}
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name + "-tls"}, sec); err != nil {
		t.Fatal(err)
	}
	cm := &corev1.ConfigMap{}
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name + "-trust"}, cm); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for file, data := range map[string][]byte{
		agenttls.CertFileName: sec.Data["tls.crt"], agenttls.KeyFileName: sec.Data["tls.key"],
		agenttls.BundleFileName: []byte(cm.Data["bundle.pem"]), agenttls.PolicyFileName: []byte(cm.Data["policy.json"]),
	} {
		if err := os.WriteFile(filepath.Join(dir, file), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func handshake(t *testing.T, clientDir, serverDir string) bool {
	t.Helper()
	quiet := agenttls.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	cs, err := agenttls.NewSource(agenttls.WithDir(clientDir), agenttls.WithoutFSNotify(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	ss, err := agenttls.NewSource(agenttls.WithDir(serverDir), agenttls.WithoutFSNotify(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	return explain.Handshake(cs, ss)
}
