package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/controller"
	"github.com/agentmesh/agentmesh/internal/operator"
	"github.com/agentmesh/agentmesh/test/cluster"
)

// TestCARotationAtABoundedRate rotates the CA under 1,000 identities on a
// control plane of its own, with the reissue rate at 100/s: the next CA
// reaches every bundle before it signs, every identity is reissued under
// it without ever exceeding the rate, and the old CA then leaves every
// bundle. The rotation is visible in agentmesh-ca-status and in Events.
func TestCARotationAtABoundedRate(t *testing.T) {
	const (
		n    = 1000
		rate = 100.0
	)
	c := cluster.ForTest(t, cluster.Options{})
	cl := c.NewClient(t)
	ctx := context.Background()
	cluster.CreateNamespaces(t, cl, operatorNamespace, "fleet")
	op := cluster.StartOperator(t, c.Config, operator.Config{
		TrustDomain: td, CASecret: caSecret, Clock: clock.RealClock{}, MaxConcurrentReconciles: 8,
		Rotation:    ca.RotationPolicy{Grace: time.Second, Lifetime: 365 * 24 * time.Hour},
		ReissueRate: rate,
	}, ctrl.Options{})

	for i := range n {
		if err := cl.Create(ctx, cluster.NewIdentity("fleet", fmt.Sprintf("agent-%04d", i))); err != nil {
			t.Fatal(err)
		}
	}
	status := func() controller.RotationStatus {
		cm := &corev1.ConfigMap{}
		var s controller.RotationStatus
		if err := cl.Get(ctx, types.NamespacedName{Namespace: operatorNamespace, Name: controller.CAStatusConfigMapName}, cm); err == nil {
			_ = json.Unmarshal([]byte(cm.Data["status.json"]), &s)
		}
		return s
	}
	cluster.Eventually(t, 120*time.Second, "1,000 identities on the first CA", func() error {
		// Two bundles per identity (Secret and trust ConfigMap) and the
		// ClusterTrustBundle.
		if s := status(); s.Progress.Identities != n || s.Progress.IdentitiesOnActive != n || s.Progress.BundlesCurrent != 2*n+1 {
			return fmt.Errorf("progress %+v", s.Progress)
		}
		return nil
	})
	first := status().Active.Serial

	// Watch the Secrets: every change of tls.crt is a reissue.
	secrets := &corev1.SecretList{}
	if err := cl.List(ctx, secrets, client.InNamespace("fleet")); err != nil {
		t.Fatal(err)
	}
	w, err := cl.Watch(ctx, &corev1.SecretList{}, client.InNamespace("fleet"), &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: secrets.ResourceVersion}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	leaf := map[string]string{}
	for _, s := range secrets.Items {
		leaf[s.Name] = string(s.Data["tls.crt"])
	}
	var (
		mu       sync.Mutex
		reissued []time.Time
	)
	go func() {
		for ev := range w.ResultChan() {
			s, ok := ev.Object.(*corev1.Secret)
			if !ok || ev.Type != watch.Modified {
				continue
			}
			mu.Lock()
			if string(s.Data["tls.crt"]) != leaf[s.Name] {
				leaf[s.Name] = string(s.Data["tls.crt"])
				reissued = append(reissued, time.Now())
			}
			mu.Unlock()
		}
	}()

	// Rotate now.
	sec := &corev1.Secret{}
	if err := cl.Get(ctx, caSecret, sec); err != nil {
		t.Fatal(err)
	}
	sec.Annotations[ca.AnnotationRotate] = ca.RotateNow
	if err := cl.Update(ctx, sec); err != nil {
		t.Fatal(err)
	}
	var phases []ca.Phase
	cluster.Eventually(t, 180*time.Second, "the rotation completes", func() error {
		s := status()
		if len(phases) == 0 || phases[len(phases)-1] != s.Phase {
			phases = append(phases, s.Phase)
		}
		if s.Phase != ca.PhaseStable || s.Active.Serial == first || s.Progress.IdentitiesOnActive != n ||
			s.Progress.BundlesCurrent != 2*n+1 || s.Progress.Bundles != 2*n+1 {
			return fmt.Errorf("phase %s, active %s, progress %+v", s.Phase, s.Active.Serial, s.Progress)
		}
		return nil
	})
	t.Logf("phases seen: %v", phases)

	mu.Lock()
	seen := len(reissued)
	mu.Unlock()
	if seen != n {
		t.Errorf("the watch saw %d reissues, want %d (one per identity)", seen, n)
	}
	// The certificates say when they were issued: NotBefore is the issuance
	// second minus the 2m backdate. No second may hold more than the rate
	// plus the token bucket's burst (a tenth of a second's worth).
	all := &corev1.SecretList{}
	if err := cl.List(ctx, all, client.InNamespace("fleet")); err != nil {
		t.Fatal(err)
	}
	perSecond := map[int64]int{}
	var firstIssued, lastIssued time.Time
	for _, sec := range all.Items {
		certs, err := ca.ParseCertificatesPEM(sec.Data["tls.crt"])
		if err != nil {
			t.Fatal(err)
		}
		at := certs[0].NotBefore
		perSecond[at.Unix()]++
		if firstIssued.IsZero() || at.Before(firstIssued) {
			firstIssued = at
		}
		if at.After(lastIssued) {
			lastIssued = at
		}
	}
	worst := 0
	for _, c := range perSecond {
		worst = max(worst, c)
	}
	spread := lastIssued.Sub(firstIssued)
	t.Logf("%d reissues over %s; at most %d in one second (rate %v/s)", len(all.Items), spread, worst, rate)
	if limit := int(rate) + int(rate/10); worst > limit {
		t.Errorf("%d certificates issued within one second, over the rate of %v/s plus its burst (%d)", worst, rate, limit)
	}
	if floor := time.Duration((n-rate/10)/rate*float64(time.Second)) - time.Second; spread < floor {
		t.Errorf("1,000 reissues took %s, faster than the rate allows (%s)", spread, floor)
	}

	// Every bundle holds the new CA only.
	st, err := op.CA.Get()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Anchors) != 1 || st.Active.SerialHex() == first {
		t.Errorf("anchors after the rotation: %d, active %s", len(st.Anchors), st.Active.SerialHex())
	}
	list := &corev1.SecretList{}
	if err := cl.List(ctx, list, client.InNamespace("fleet")); err != nil {
		t.Fatal(err)
	}
	for _, s := range list.Items {
		if string(s.Data["ca.crt"]) != string(st.BundlePEM()) {
			var serials []string
			if certs, err := ca.ParseCertificatesPEM(s.Data["ca.crt"]); err == nil {
				for _, c := range certs {
					serials = append(serials, ca.SerialHex(c.SerialNumber))
				}
			}
			t.Fatalf("Secret %s holds a stale bundle %v (resourceVersion %s); the CA's anchors: %d, active %s, status %+v",
				s.Name, serials, s.ResourceVersion, len(st.Anchors), st.Active.SerialHex(), status())
		}
	}
	for _, reason := range []string{"RotationStarted", "BundlesPropagated", "CAActivated", "CARetired"} {
		cluster.WaitEvent(t, cl, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: operatorNamespace, Name: caSecret.Name}}, "Secret", reason, 10*time.Second)
	}
	ctb := &certv1.ClusterTrustBundle{}
	cluster.Eventually(t, 10*time.Second, "the ClusterTrustBundle follows the rotation", func() error {
		if err := cl.Get(ctx, types.NamespacedName{Name: controller.ClusterTrustBundleName(td)}, ctb); err != nil {
			return err
		}
		if ctb.Spec.TrustBundle != string(st.BundlePEM()) {
			return fmt.Errorf("stale ClusterTrustBundle")
		}
		return nil
	})
	id := &mtlsv1alpha1.AgentIdentity{}
	if err := cl.Get(ctx, types.NamespacedName{Namespace: "fleet", Name: "agent-0500"}, id); err != nil {
		t.Fatal(err)
	}
	if id.Status.CASerial != st.Active.SerialHex() {
		t.Errorf("agent-0500 is on CA %s, want %s", id.Status.CASerial, st.Active.SerialHex())
	}
}
