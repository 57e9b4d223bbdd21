package controller_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/controller"
	"github.com/agentmesh/agentmesh/test/cluster"
)

// TestTwoWritersOfTheStatus: the certificate and the trust reconciler each
// apply their own part of an identity's status under their own field
// manager, and the events of one (a Pod starting) do not run the other.
func TestTwoWritersOfTheStatus(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	id := cluster.NewIdentity(ns, "split")
	cluster.Create(t, k8s, id)
	nn := client.ObjectKeyFromObject(id)
	got := waitReady(t, nn)
	if got.Status.TrustConfigMap != "split-trust" || got.Status.SerialNumber == "" {
		t.Fatalf("status %+v", got.Status)
	}

	owned := map[string]string{}
	for _, mf := range got.ManagedFields {
		if mf.Subresource != "status" || mf.FieldsV1 == nil {
			continue
		}
		if mf.Operation != metav1.ManagedFieldsOperationApply {
			t.Errorf("%s wrote the status with %s, want Apply", mf.Manager, mf.Operation)
		}
		owned[mf.Manager] = mf.FieldsV1.GetRawString()
	}
	for manager, want := range map[string][]string{
		mtlsv1alpha1.FieldManagerCertificate: {`"f:serialNumber"`, `"k:{\"type\":\"Ready\"}"`, `"k:{\"type\":\"Issuing\"}"`},
		mtlsv1alpha1.FieldManagerTrust:       {`"f:trustConfigMap"`, `"k:{\"type\":\"PolicyResolved\"}"`},
	} {
		for _, w := range want {
			if !strings.Contains(owned[manager], w) {
				t.Errorf("%s does not own %s: %s", manager, w, owned[manager])
			}
		}
	}
	if strings.Contains(owned[mtlsv1alpha1.FieldManagerCertificate], "PolicyResolved") ||
		strings.Contains(owned[mtlsv1alpha1.FieldManagerTrust], `"Ready\"`) {
		t.Errorf("a writer owns the other's condition: %v", owned)
	}

	// A Pod of the identity starts: the certificate reconciler counts it,
	// the trust reconciler does not run.
	waitIdle(t)
	cert, trust := reconcileCount(t, controller.CertificateControllerName), reconcileCount(t, controller.TrustControllerName)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "split-0", Labels: map[string]string{mtlsv1alpha1.LabelIdentity: "split"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "example.invalid/agent"}}},
	}
	cluster.Create(t, k8s, pod)
	pod.Status.Phase = corev1.PodRunning
	if err := k8s.Status().Update(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	cluster.Eventually(t, 10*time.Second, "status.pods counts the running Pod", func() error {
		if err := k8s.Get(context.Background(), nn, got); err != nil {
			return err
		}
		if got.Status.Pods != 1 {
			return fmt.Errorf("pods %d", got.Status.Pods)
		}
		return nil
	})
	waitIdle(t)
	if d := reconcileCount(t, controller.CertificateControllerName) - cert; d < 1 {
		t.Errorf("the certificate reconciler ran %v times for the Pod", d)
	}
	if d := reconcileCount(t, controller.TrustControllerName) - trust; d != 0 {
		t.Errorf("a Pod starting ran the trust reconciler %v times", d)
	}
}

// reconcileCount is how many passes the named controller has made.
func reconcileCount(t *testing.T, name string) float64 {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != "controller_runtime_reconcile_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			if label(m, "controller") == name {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
