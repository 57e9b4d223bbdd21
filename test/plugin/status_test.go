package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/cli/status"
	"github.com/agentmesh/agentmesh/test/cluster"
)

func TestStatus(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "status-")
	cluster.Create(t, k8s, cluster.NewIdentity(ns, "planner"))
	cluster.Create(t, k8s, cluster.NewIdentity(ns, "worker"))
	waitReady(t, ns, "planner")
	waitReady(t, ns, "worker")

	var r status.Report
	cluster.Eventually(t, 30*time.Second, "status OK", func() error {
		res := run(t, "status", "-o", "json")
		r = status.Report{}
		if err := json.Unmarshal([]byte(res.stdout), &r); err != nil {
			return err
		}
		if res.code != 0 {
			return &codeError{res}
		}
		return nil
	})
	if r.Identities.Ready < 2 || r.Identities.NotReady != 0 {
		t.Errorf("identities = %+v", r.Identities)
	}
	if !r.CA.StatusFound || r.CA.Managed != "managed" || r.CA.Phase != "Stable" || r.CA.Serial == "" || r.CA.NotAfter == nil {
		t.Errorf("CA = %+v", r.CA)
	}
	st, err := running.CA.Get()
	if err != nil {
		t.Fatal(err)
	}
	if r.CA.Serial != st.Active.SerialHex() {
		t.Errorf("CA serial = %s, the operator's CA is %s", r.CA.Serial, st.Active.SerialHex())
	}
	for _, c := range r.CRDs {
		if !c.Found || !c.Established || c.Storage != "v1alpha1" {
			t.Errorf("CRD %+v", c)
		}
	}
	for _, w := range r.Webhooks {
		if !w.Found || len(w.Webhooks) == 0 {
			t.Errorf("webhook configuration %+v", w)
		}
		for _, h := range w.Webhooks {
			if h.CABundle != "match" {
				t.Errorf("%s %s: caBundle %s", w.Kind, h.Name, h.CABundle)
			}
		}
	}
	if !strings.HasPrefix(r.ServerVersion, "v1.") {
		t.Errorf("server version %q", r.ServerVersion)
	}

	// The human table and YAML say the same.
	if res := run(t, "status"); res.code != 0 || !strings.Contains(res.stdout, "OK: no problem found") || !strings.Contains(res.stdout, r.CA.Serial) {
		t.Errorf("status: code %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	var fromYAML status.Report
	if res := run(t, "status", "-o", "yaml"); yaml.Unmarshal([]byte(res.stdout), &fromYAML) != nil || fromYAML.CA.Serial != r.CA.Serial {
		t.Errorf("status -o yaml: %s", res.stdout)
	}

	// A Secret of the wanted name that is not agentmesh's: the identity is
	// not Ready, status names it and exits 1.
	cluster.Create(t, k8s, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "taken-tls"}})
	taken := cluster.NewIdentity(ns, "taken")
	cluster.Create(t, k8s, taken)
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), taken) })
	cluster.WaitCondition(t, k8s, taken, 30*time.Second, cluster.Condition{Type: mtlsv1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: mtlsv1alpha1.ReasonSecretConflict})
	res := run(t, "status")
	if res.code != 1 || !strings.Contains(res.stdout, "problem: 1 identities not Ready (SecretConflict): "+ns+"/taken") {
		t.Errorf("status with a conflict: code %d\n%s%s", res.code, res.stdout, res.stderr)
	}
}

type codeError struct{ r result }

func (e *codeError) Error() string {
	return fmt.Sprintf("exit code %d: %s%s", e.r.code, e.r.stdout, e.r.stderr)
}
