package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/cli/progress"
	"github.com/agentmesh/agentmesh/test/cluster"
)

func TestRenewIdentity(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "renew-")
	cluster.Create(t, k8s, cluster.NewIdentity(ns, "worker"))
	before := waitReady(t, ns, "worker")

	res := run(t, "renew", "identity", "worker", "-n", ns, "-o", "json")
	var r progress.Renewal
	if err := json.Unmarshal([]byte(res.stdout), &r); err != nil || res.code != 0 {
		t.Fatalf("renew: code %d, %v\n%s%s", res.code, err, res.stdout, res.stderr)
	}
	if r.State != progress.StateDone || r.PreviousSerial != before.Status.SerialNumber || r.Serial == r.PreviousSerial {
		t.Errorf("renewal %+v, serial before %s", r, before.Status.SerialNumber)
	}
	if !strings.Contains(res.stderr, "renewal requested") || !strings.Contains(res.stderr, "reissued: serial "+r.Serial) {
		t.Errorf("progress on stderr:\n%s", res.stderr)
	}
	after := &mtlsv1alpha1.AgentIdentity{}
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "worker"}, after); err != nil {
		t.Fatal(err)
	}
	if after.Status.SerialNumber != r.Serial || after.Annotations[mtlsv1alpha1.AnnotationRenew] != "" {
		t.Errorf("identity after renew: serial %s, annotations %v", after.Status.SerialNumber, after.Annotations)
	}

	// --no-wait returns at once; the operator still serves the request.
	res = run(t, "renew", "identity", "worker", "-n", ns, "--no-wait")
	if res.code != 0 || !strings.Contains(res.stdout, "Requested") {
		t.Errorf("renew --no-wait: code %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	cluster.Eventually(t, 20*time.Second, "the second renewal", func() error {
		cur := &mtlsv1alpha1.AgentIdentity{}
		if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "worker"}, cur); err != nil {
			return err
		}
		if cur.Status.SerialNumber == r.Serial || cur.Annotations[mtlsv1alpha1.AnnotationRenew] != "" {
			return fmt.Errorf("serial %s, annotations %v", cur.Status.SerialNumber, cur.Annotations)
		}
		return nil
	})

	if res := run(t, "renew", "identity", "nope", "-n", ns); res.code != 1 || !strings.Contains(res.stderr, "AgentIdentity "+ns+"/nope not found") {
		t.Errorf("renew of a missing identity: code %d, %q", res.code, res.stderr)
	}
}

func TestRotateCA(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "rotate-")
	cluster.Create(t, k8s, cluster.NewIdentity(ns, "worker"))
	waitReady(t, ns, "worker")
	for _, tc := range []struct{ args []string }{{}, {[]string{"--emergency"}}} {
		t.Run(strings.Join(append([]string{"rotate-ca"}, tc.args...), " "), func(t *testing.T) {
			before, err := running.CA.Get()
			if err != nil {
				t.Fatal(err)
			}
			res := run(t, append([]string{"rotate-ca", "-o", "json", "--timeout", "90s"}, tc.args...)...)
			var r progress.Rotation
			if err := json.Unmarshal([]byte(res.stdout), &r); err != nil || res.code != 0 {
				t.Fatalf("rotate-ca: code %d, %v\n%s%s", res.code, err, res.stdout, res.stderr)
			}
			if r.State != progress.StateDone || r.Previous != before.Active.SerialHex() || r.Active == r.Previous {
				t.Errorf("rotation %+v, CA before %s", r, before.Active.SerialHex())
			}
			phases := []string{"rotation requested", "rotated: CA " + r.Active}
			if len(tc.args) == 0 {
				// With a grace of 2 s the phases last seconds; an emergency
				// rotation may pass Reissuing between two polls.
				phases = append(phases, "Propagating", "Reissuing")
			}
			for _, phase := range phases {
				if !strings.Contains(res.stderr, phase) {
					t.Errorf("progress does not mention %q:\n%s", phase, res.stderr)
				}
			}
			cur := &mtlsv1alpha1.AgentIdentity{}
			if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "worker"}, cur); err != nil {
				t.Fatal(err)
			}
			if cur.Status.CASerial != r.Active {
				t.Errorf("the identity is on CA %s, the rotation reports %s", cur.Status.CASerial, r.Active)
			}
		})
	}
}
