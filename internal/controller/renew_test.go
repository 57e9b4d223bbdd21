package controller_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/test/cluster"
)

// TestRenewAnnotation: mtls.agentmesh.dev/renew reissues at once (a new key
// and serial, reason RenewRequested, Ready throughout), and the operator
// removes the annotation; the request is served once.
func TestRenewAnnotation(t *testing.T) {
	ctx := context.Background()
	ns := cluster.NewNamespace(t, k8s, "renew-")
	nn := types.NamespacedName{Namespace: ns, Name: "worker"}
	cluster.Create(t, k8s, cluster.NewIdentity(ns, "worker"))
	before := waitReady(t, nn)
	oldKey := getSecret(t, ns, "worker-tls").Data["tls.key"]

	annotate := func(v string) {
		t.Helper()
		id := &mtlsv1alpha1.AgentIdentity{}
		if err := k8s.Get(ctx, nn, id); err != nil {
			t.Fatal(err)
		}
		patch := client.MergeFrom(id.DeepCopy())
		if id.Annotations == nil {
			id.Annotations = map[string]string{}
		}
		id.Annotations[mtlsv1alpha1.AnnotationRenew] = v
		if err := k8s.Patch(ctx, id, patch); err != nil {
			t.Fatal(err)
		}
	}
	served := func() *mtlsv1alpha1.AgentIdentity {
		t.Helper()
		id := &mtlsv1alpha1.AgentIdentity{}
		cluster.Eventually(t, 20*time.Second, "the renew annotation removed", func() error {
			if err := k8s.Get(ctx, nn, id); err != nil {
				return err
			}
			if v, ok := id.Annotations[mtlsv1alpha1.AnnotationRenew]; ok {
				return fmt.Errorf("annotation still %q", v)
			}
			return nil
		})
		return id
	}

	annotate("2026-12-04T18:00:00.1Z")
	after := served()
	cluster.Eventually(t, 20*time.Second, "a new serial in the status", func() error {
		if err := k8s.Get(ctx, nn, after); err != nil {
			return err
		}
		if after.Status.SerialNumber == before.Status.SerialNumber {
			return fmt.Errorf("serial still %s", after.Status.SerialNumber)
		}
		return nil
	})
	sec := getSecret(t, ns, "worker-tls")
	if string(sec.Data["tls.key"]) == string(oldKey) {
		t.Error("the renewal kept the key")
	}
	if got := sec.Annotations[mtlsv1alpha1.AnnotationRenewed]; got != "2026-12-04T18:00:00.1Z" {
		t.Errorf("Secret annotation %s = %q", mtlsv1alpha1.AnnotationRenewed, got)
	}
	note := cluster.WaitEvent(t, k8s, after, "AgentIdentity", mtlsv1alpha1.EventReissued, 10*time.Second)
	if !strings.Contains(note, "a renewal was requested (mtls.agentmesh.dev/renew=2026-12-04T18:00:00.1Z)") {
		t.Errorf("Reissued event: %q", note)
	}
	ready := waitReady(t, nn)

	// Served once: the serial stays.
	time.Sleep(2 * time.Second)
	if err := k8s.Get(ctx, nn, after); err != nil {
		t.Fatal(err)
	}
	if after.Status.SerialNumber != ready.Status.SerialNumber {
		t.Errorf("reissued again: %s, then %s", ready.Status.SerialNumber, after.Status.SerialNumber)
	}

	// A second request (another value) reissues again.
	annotate("2026-12-04T18:05:00Z")
	served()
	cluster.Eventually(t, 20*time.Second, "a third serial", func() error {
		if err := k8s.Get(ctx, nn, after); err != nil {
			return err
		}
		if after.Status.SerialNumber == ready.Status.SerialNumber {
			return fmt.Errorf("serial still %s", after.Status.SerialNumber)
		}
		return nil
	})
}

// TestRenewAnnotationPodCertificate: in PodCertificate delivery there is no
// Secret to renew; the request is removed at once.
func TestRenewAnnotationPodCertificate(t *testing.T) {
	ctx := context.Background()
	ns := cluster.NewNamespace(t, k8s, "renew-pc-")
	nn := types.NamespacedName{Namespace: ns, Name: "edge"}
	cluster.Create(t, k8s, cluster.NewIdentity(ns, "edge", func(id *mtlsv1alpha1.AgentIdentity) {
		id.Spec.KeyDelivery = mtlsv1alpha1.KeyDeliveryPodCertificate
		id.Spec.Duration = nil
		id.Annotations = map[string]string{mtlsv1alpha1.AnnotationRenew: "now"}
	}))
	cluster.Eventually(t, 20*time.Second, "the renew annotation removed", func() error {
		id := &mtlsv1alpha1.AgentIdentity{}
		if err := k8s.Get(ctx, nn, id); err != nil {
			return err
		}
		if _, ok := id.Annotations[mtlsv1alpha1.AnnotationRenew]; ok {
			return fmt.Errorf("annotation still there; conditions %+v", id.Status.Conditions)
		}
		return nil
	})
	if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "edge-tls"}, &corev1.Secret{}); err == nil {
		t.Error("a Secret was written for a PodCertificate identity")
	}
}
