package controller_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/policy"
	"github.com/agentmesh/agentmesh/test/cluster"
)

// TestDocumentedExamples applies each policy example of docs/policies/ and
// compares the worker's policy.json with the documented one
// (docs/policies/<example>.policy.json; "CLUSTER-CA-SHA256" stands for the
// fingerprint of this run's CA). AGENTMESH_UPDATE_GOLDEN=1 rewrites them.
func TestDocumentedExamples(t *testing.T) {
	ctx := context.Background()
	for _, ns := range []string{"agents", "research"} {
		if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	for _, id := range []struct{ ns, name, role string }{{"agents", "planner", "planner"}, {"agents", "worker", "worker"}, {"research", "analyst", "analyst"}} {
		cluster.Create(t, k8s, cluster.NewIdentity(id.ns, id.name, func(a *mtlsv1alpha1.AgentIdentity) {
			a.Labels = map[string]string{"agentmesh.dev/role": id.role}
		}))
	}
	st, _ := running.CA.Get()
	fp := policy.Fingerprint(st.Anchors[0])
	dir := filepath.Join(env.Root, "docs", "policies")
	for _, example := range []string{"allow-one-caller", "allow-namespace", "federate-partner", "mcp-tools"} {
		t.Run(example, func(t *testing.T) {
			objs := decodeAll(t, filepath.Join(dir, example+".yaml"))
			var policyName string
			for _, o := range objs {
				if err := k8s.Create(ctx, o); err != nil {
					t.Fatalf("applying %s %s: %v", o.GetKind(), o.GetName(), err)
				}
				if o.GetKind() == "AgentTrustPolicy" {
					policyName = o.GetName()
				}
			}
			defer func() {
				for _, o := range objs {
					_ = k8s.Delete(ctx, o)
				}
			}()
			var got string
			cluster.Eventually(t, 20*time.Second, "the worker compiles "+policyName, func() error {
				_, cm := effective(t, "agents", "worker")
				// Exactly this example's policy: the previous one is gone.
				if cm == nil || cm.Annotations[mtlsv1alpha1.AnnotationPolicies] != policyName+"=1" {
					return errors.New("not compiled yet")
				}
				got = strings.ReplaceAll(cm.Data["policy.json"], fp, "CLUSTER-CA-SHA256")
				return nil
			})
			golden := filepath.Join(dir, example+".policy.json")
			if os.Getenv("AGENTMESH_UPDATE_GOLDEN") != "" {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("policy.json of the worker:\n%s\ndocumented in %s:\n%s", got, golden, want)
			}
		})
	}
}

func decodeAll(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return out
			}
			t.Fatalf("%s: %v", path, err)
		}
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
}
