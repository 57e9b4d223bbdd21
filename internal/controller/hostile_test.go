package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/controller"
	"github.com/agentmesh/agentmesh/internal/identity"
	"github.com/agentmesh/agentmesh/internal/operator"
	"github.com/agentmesh/agentmesh/test/cluster"
)

// TestRotationIgnoresLookAlikesAndStrandedIdentities: in a tenant's
// namespace, a ConfigMap and a Secret carrying agentmesh's labels (which
// anyone may set) and an identity whose Secret name is held by someone
// else's Secret must not hold an emergency rotation open. The rotation
// ends, names the stranded identity in agentmesh-ca-status and in an
// Event, and the operator's cache keeps only the look-alikes' metadata.
func TestRotationIgnoresLookAlikesAndStrandedIdentities(t *testing.T) {
	c := cluster.ForTest(t, cluster.Options{})
	cl := c.NewClient(t)
	ctx := context.Background()
	cluster.CreateNamespaces(t, cl, operatorNamespace, "tenant")
	op := cluster.StartOperator(t, c.Config, operator.Config{
		TrustDomain: td, CASecret: caSecret, Clock: clock.RealClock{},
		Rotation:    ca.RotationPolicy{Grace: time.Second, Lifetime: 365 * 24 * time.Hour},
		ReissueRate: 100,
	}, ctrl.Options{})
	if err := op.AwaitCA(30 * time.Second); err != nil {
		t.Fatal(err)
	}

	ready := cluster.Condition{Type: mtlsv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: mtlsv1alpha1.ReasonIssued}
	good := cluster.NewIdentity("tenant", "good")
	stuck := cluster.NewIdentity("tenant", "stuck")
	for _, id := range []*mtlsv1alpha1.AgentIdentity{good, stuck} {
		if err := cl.Create(ctx, id); err != nil {
			t.Fatal(err)
		}
		cluster.WaitCondition(t, cl, id, 20*time.Second, ready)
	}
	// stuck moves to a Secret name that the tenant's own Secret holds.
	if err := cl.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "taken"}}); err != nil {
		t.Fatal(err)
	}
	stuck.Spec.SecretName = "taken"
	if err := cl.Update(ctx, stuck); err != nil {
		t.Fatal(err)
	}
	cluster.WaitCondition(t, cl, stuck, 20*time.Second, cluster.Condition{
		Type: mtlsv1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: mtlsv1alpha1.ReasonSecretConflict})

	// Look-alikes: agentmesh's labels, a stale anchors hash, a bundle that
	// is not the CA's, and a payload no cache should hold.
	labels := map[string]string{mtlsv1alpha1.LabelManagedBy: mtlsv1alpha1.ManagedByValue, mtlsv1alpha1.LabelIdentity: "good"}
	payload := strings.Repeat("x", 64<<10)
	lookAlikeCM := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "evil-trust", Labels: labels,
			Annotations: map[string]string{mtlsv1alpha1.AnnotationAnchorsHash: "stale"}},
		Data: map[string]string{mtlsv1alpha1.TrustBundleKey: payload},
	}
	lookAlikeSecret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "evil-tls", Labels: labels},
		Data:       map[string][]byte{mtlsv1alpha1.SecretTrustKey: []byte(payload)},
	}
	for _, o := range []client.Object{lookAlikeCM, lookAlikeSecret} {
		if err := cl.Create(ctx, o); err != nil {
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
	first := status().Active.Serial
	sec := &corev1.Secret{}
	if err := cl.Get(ctx, caSecret, sec); err != nil {
		t.Fatal(err)
	}
	sec.Annotations[ca.AnnotationRotate] = ca.RotateCompromised
	if err := cl.Update(ctx, sec); err != nil {
		t.Fatal(err)
	}

	var stranded []string
	cluster.Eventually(t, 60*time.Second, "the emergency rotation ends", func() error {
		s := status()
		if s.Progress.Stranded > 0 {
			stranded = s.Progress.StrandedIdentities
		}
		if s.Phase != ca.PhaseStable || s.Active.Serial == first || len(s.Retired) != 0 {
			return fmt.Errorf("phase %s, active %s (was %s), progress %+v", s.Phase, s.Active.Serial, first, s.Progress)
		}
		return nil
	})
	if want := []string{"tenant/stuck (SecretConflict)"}; fmt.Sprint(stranded) != fmt.Sprint(want) {
		t.Errorf("stranded identities %v, want %v", stranded, want)
	}
	note := cluster.WaitEvent(t, cl, sec, "Secret", mtlsv1alpha1.EventRotationStranded, 10*time.Second)
	if !strings.Contains(note, "1 identity: tenant/stuck (SecretConflict)") {
		t.Errorf("RotationStranded event %q does not name the identity", note)
	}
	cluster.WaitCondition(t, cl, good, 20*time.Second, ready)
	if st, err := op.CA.Get(); err != nil || good.Status.CASerial != st.Active.SerialHex() {
		t.Errorf("good is on CA %s after the rotation (%v)", good.Status.CASerial, err)
	}

	// The operator's cache holds the look-alikes' metadata, not their data.
	cached := op.Manager.GetClient()
	cm := &corev1.ConfigMap{}
	if err := cached.Get(ctx, client.ObjectKeyFromObject(lookAlikeCM), cm); err != nil {
		t.Fatal(err)
	}
	if len(cm.Data) != 0 || len(cm.Annotations) != 0 || cm.Labels[mtlsv1alpha1.LabelIdentity] != "good" {
		t.Errorf("cached look-alike ConfigMap: %d data keys, annotations %v, labels %v", len(cm.Data), cm.Annotations, cm.Labels)
	}
	s := &corev1.Secret{}
	if err := cached.Get(ctx, client.ObjectKeyFromObject(lookAlikeSecret), s); err != nil {
		t.Fatal(err)
	}
	if len(s.Data) != 0 {
		t.Errorf("cached look-alike Secret holds %d data keys", len(s.Data))
	}
	// The identity's own trust ConfigMap keeps its metadata and the hash of
	// its content, the same as the one agentmesh recorded at the write;
	// its Secret keeps tls.crt and ca.crt, and the hash of its data.
	own := &corev1.ConfigMap{}
	if err := cached.Get(ctx, types.NamespacedName{Namespace: "tenant", Name: good.TrustConfigMapName()}, own); err != nil {
		t.Fatal(err)
	}
	if h := own.Annotations[mtlsv1alpha1.AnnotationCachedHash]; h == "" || h != own.Annotations[mtlsv1alpha1.AnnotationContentHash] ||
		own.Annotations[mtlsv1alpha1.AnnotationAnchorsHash] == "" || len(own.Data) != 0 {
		t.Errorf("the identity's own trust ConfigMap in the cache: annotations %v, %d data keys", own.Annotations, len(own.Data))
	}
	ownSecret := &corev1.Secret{}
	if err := cached.Get(ctx, types.NamespacedName{Namespace: "tenant", Name: good.EffectiveSecretName()}, ownSecret); err != nil {
		t.Fatal(err)
	}
	if h := ownSecret.Annotations[mtlsv1alpha1.AnnotationCachedHash]; h == "" || h != ownSecret.Annotations[mtlsv1alpha1.AnnotationDataHash] ||
		len(ownSecret.Data[mtlsv1alpha1.SecretCertKey]) == 0 || len(ownSecret.Data[mtlsv1alpha1.SecretTrustKey]) == 0 {
		t.Errorf("the identity's own Secret in the cache: annotations %v, data keys %v", ownSecret.Annotations, slices.Collect(maps.Keys(ownSecret.Data)))
	}
	if _, ok := ownSecret.Data[mtlsv1alpha1.SecretKeyKey]; ok {
		t.Errorf("the operator's cache holds the private key of %s", ownSecret.Name)
	}
	// Nothing the cache computed reaches the API server.
	live := &corev1.Secret{}
	if err := cl.Get(ctx, client.ObjectKeyFromObject(ownSecret), live); err != nil {
		t.Fatal(err)
	}
	if _, ok := live.Annotations[mtlsv1alpha1.AnnotationCachedHash]; ok {
		t.Errorf("the cache-only annotation %s was written to the API server", mtlsv1alpha1.AnnotationCachedHash)
	}
}

// TestEditedTrustConfigMapIsRepaired: someone with write access to the
// namespace widens a trust ConfigMap (allowAll in policy.json, an extra CA
// under the cluster's own trust domain in bundle.pem, a stray key) and
// leaves the hash annotations alone. The operator compares the content and
// puts back what it wrote.
func TestEditedTrustConfigMapIsRepaired(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	id := cluster.NewIdentity(ns, "worker")
	cluster.Create(t, k8s, id)
	waitReady(t, client.ObjectKeyFromObject(id))
	key := types.NamespacedName{Namespace: ns, Name: id.TrustConfigMapName()}
	original := &corev1.ConfigMap{}
	if err := k8s.Get(context.Background(), key, original); err != nil {
		t.Fatal(err)
	}
	rogue, err := ca.Generate(ca.GenerateOptions{TrustDomain: td, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	edits := map[string]func(cm *corev1.ConfigMap){
		"allowAll in policy.json": func(cm *corev1.ConfigMap) {
			var doc map[string]any
			if err := json.Unmarshal([]byte(cm.Data[mtlsv1alpha1.TrustPolicyKey]), &doc); err != nil {
				t.Fatal(err)
			}
			doc["ingress"].(map[string]any)["allowAll"] = true
			b, err := json.Marshal(doc)
			if err != nil {
				t.Fatal(err)
			}
			cm.Data[mtlsv1alpha1.TrustPolicyKey] = string(b)
		},
		"a rogue CA in bundle.pem": func(cm *corev1.ConfigMap) {
			cm.Data[mtlsv1alpha1.TrustBundleKey] += string(ca.EncodeCertificatesPEM(rogue.Cert))
		},
		"a stray key": func(cm *corev1.ConfigMap) { cm.Data["extra.pem"] = "x" },
	}
	for what, edit := range edits {
		cm := &corev1.ConfigMap{}
		if err := k8s.Get(context.Background(), key, cm); err != nil {
			t.Fatal(err)
		}
		before := maps.Clone(cm.Data)
		edit(cm)
		if maps.Equal(before, cm.Data) {
			t.Fatalf("%s: the edit changed nothing", what)
		}
		if err := k8s.Update(context.Background(), cm); err != nil {
			t.Fatal(err)
		}
		cluster.Eventually(t, 10*time.Second, what+" is repaired", func() error {
			got := &corev1.ConfigMap{}
			if err := k8s.Get(context.Background(), key, got); err != nil {
				return err
			}
			if !maps.Equal(got.Data, original.Data) {
				return fmt.Errorf("data keys %d, policy.json %.120s", len(got.Data), got.Data[mtlsv1alpha1.TrustPolicyKey])
			}
			return nil
		})
	}
}

// TestDNSNamesAreScoped: a tenant cannot get a certificate of the cluster
// CA for another namespace's Service, the API server, or a public name the
// cluster's allow-list does not hold; the reconciler refuses them even
// without the admission webhook (this suite runs none), and an identity
// that had a certificate keeps it.
func TestDNSNamesAreScoped(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	for name, dns := range map[string]string{
		"other-ns":  "worker.agents.svc",
		"apiserver": "kubernetes.default.svc",
		"public":    "*.example.com",
	} {
		id := cluster.NewIdentity(ns, name, func(a *mtlsv1alpha1.AgentIdentity) { a.Spec.DNSNames = []string{"ok." + ns + ".svc", dns} })
		cluster.Create(t, k8s, id)
		cluster.WaitCondition(t, k8s, id, 20*time.Second, cluster.Condition{
			Type: mtlsv1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: mtlsv1alpha1.ReasonInvalidSpec,
			Message: fmt.Sprintf("spec.dnsNames[1]: Forbidden: %q is outside the identity's namespace: allowed are names under %s.svc and %s.svc.cluster.local and the cluster's allow-list (*.example)", dns, ns, ns)})
		if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name + "-tls"}, &corev1.Secret{}); err == nil {
			t.Errorf("%s: a Secret was written for %s", name, dns)
		}
	}

	// In scope: the own namespace's names, and the allow-list.
	ok := cluster.NewIdentity(ns, "ok", func(a *mtlsv1alpha1.AgentIdentity) {
		a.Spec.DNSNames = []string{"*." + ns + ".svc", "ok." + ns + ".svc.cluster.local", "api.example"}
	})
	cluster.Create(t, k8s, ok)
	waitReady(t, client.ObjectKeyFromObject(ok))
	before := getSecret(t, ns, "ok-tls")

	// Widening an issued identity: InvalidSpec, and the certificate in
	// place stays.
	update(t, client.ObjectKeyFromObject(ok), func(a *mtlsv1alpha1.AgentIdentity) {
		a.Spec.DNSNames = append(a.Spec.DNSNames, "worker.kube-system.svc")
	})
	cluster.WaitCondition(t, k8s, ok, 20*time.Second, cluster.Condition{
		Type: mtlsv1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: mtlsv1alpha1.ReasonInvalidSpec, Message: `"worker.kube-system.svc"`})
	if after := getSecret(t, ns, "ok-tls"); string(after.Data["tls.crt"]) != string(before.Data["tls.crt"]) {
		t.Error("the certificate in place was replaced")
	}
}

// TestEmergencyRotationEndsAtItsDeadline: a Pod certificate of the
// compromised CA, which the signer cannot reissue (the kubelet comes back
// at its beginRefreshAt), would keep the compromised CA trusted until it
// expires. The deadline bounds it: half-way the next CA signs, at the end
// the compromised CA leaves the bundles, a Warning Event says what was left
// behind, and a Pod certificate issued while the compromised CA still
// signed asks the kubelet back as early as the API server allows.
func TestEmergencyRotationEndsAtItsDeadline(t *testing.T) {
	c := cluster.ForTest(t, cluster.Options{})
	cl := c.NewClient(t)
	ctx := context.Background()
	cluster.CreateNamespaces(t, cl, operatorNamespace, "tenant")
	const deadline = 20 * time.Second
	op := cluster.StartOperator(t, c.Config, operator.Config{
		TrustDomain: td, CASecret: caSecret, Clock: clock.RealClock{},
		// A grace far longer than the deadline: only the deadline can move
		// this rotation on.
		Rotation:    ca.RotationPolicy{Grace: time.Hour, Lifetime: 365 * 24 * time.Hour, EmergencyDeadline: deadline},
		ReissueRate: 100,
	}, ctrl.Options{})
	if err := op.AwaitCA(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := cl.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "edge"}}); err != nil {
		t.Fatal(err)
	}
	id := podCertIdentity("tenant", "edge", 24*time.Hour)
	if err := cl.Create(ctx, id); err != nil {
		t.Fatal(err)
	}
	k := newKubeletOn(t, cl)
	pod := k.pod("tenant", "edge-0", "edge", "edge")
	before := k.request(pod, newKey(t))
	if !meta.IsStatusConditionTrue(before.Status.Conditions, certv1.PodCertificateRequestConditionTypeIssued) {
		t.Fatalf("no certificate before the rotation: %+v", before.Status.Conditions)
	}
	if d := before.Status.BeginRefreshAt.Sub(before.Status.NotBefore.Time); d < time.Hour {
		t.Fatalf("beginRefreshAt %s after notBefore before any rotation, want the renewal rule's hours", d)
	}
	compromised, err := op.CA.Get()
	if err != nil {
		t.Fatal(err)
	}

	sec := &corev1.Secret{}
	if err := cl.Get(ctx, caSecret, sec); err != nil {
		t.Fatal(err)
	}
	sec.Annotations[ca.AnnotationRotate] = ca.RotateCompromised
	if err := cl.Update(ctx, sec); err != nil {
		t.Fatal(err)
	}
	asked := time.Now()
	status := func() controller.RotationStatus {
		cm := &corev1.ConfigMap{}
		var s controller.RotationStatus
		if err := cl.Get(ctx, types.NamespacedName{Namespace: operatorNamespace, Name: controller.CAStatusConfigMapName}, cm); err == nil {
			_ = json.Unmarshal([]byte(cm.Data["status.json"]), &s)
		}
		return s
	}
	cluster.Eventually(t, 10*time.Second, "the emergency rotation shows its deadline", func() error {
		if s := status(); !s.Compromised || s.Deadline == "" || s.Phase != ca.PhasePropagating {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})

	// While the compromised CA still signs, a new Pod certificate comes
	// back for a refresh 10 minutes after its notBefore.
	during := k.request(pod, newKey(t))
	certs, err := ca.ParseCertificatesPEM([]byte(during.Status.CertificateChain))
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := op.CA.Get(); st.Rotation.Phase == ca.PhasePropagating && compromised.SignedByActive(certs[0]) {
		if got := during.Status.BeginRefreshAt.Sub(during.Status.NotBefore.Time); got != identity.MinPodCertificateRefreshDelay {
			t.Errorf("a Pod certificate of the compromised CA refreshes %s after its notBefore, want %s", got, identity.MinPodCertificateRefreshDelay)
		}
	} else {
		t.Fatalf("the rotation moved on before the deadline (phase %s): the grace of an hour cannot have passed", st.Rotation.Phase)
	}

	cluster.Eventually(t, 2*deadline, "the emergency rotation ends at its deadline", func() error {
		s := status()
		if s.Phase != ca.PhaseStable || s.Active.Serial == compromised.Active.SerialHex() || len(s.Retired) != 0 {
			return fmt.Errorf("phase %s, active %s, progress %+v", s.Phase, s.Active.Serial, s.Progress)
		}
		return nil
	})
	if took := time.Since(asked); took < deadline-time.Second {
		t.Errorf("the compromised CA left after %s, before the deadline of %s, although a Pod certificate was still on it", took, deadline)
	}
	st, err := op.CA.Get()
	if err != nil {
		t.Fatal(err)
	}
	if st.Trusts(certs[0], nil) {
		t.Error("the CA still trusts the Pod certificate the compromised CA signed")
	}
	note := cluster.WaitEvent(t, cl, sec, "Secret", mtlsv1alpha1.EventEmergencyDeadlineReached, 10*time.Second)
	if !strings.Contains(note, "1 of 1 identities are still on it") {
		t.Errorf("EmergencyDeadlineReached event %q does not say what was left behind", note)
	}
	// The bundle the Pod reads no longer holds the compromised CA.
	cluster.Eventually(t, 20*time.Second, "the trust ConfigMap drops the compromised CA", func() error {
		cm := &corev1.ConfigMap{}
		if err := cl.Get(ctx, types.NamespacedName{Namespace: "tenant", Name: id.TrustConfigMapName()}, cm); err != nil {
			return err
		}
		anchors, err := ca.ParseCertificatesPEM([]byte(cm.Data[mtlsv1alpha1.TrustBundleKey]))
		if err != nil {
			return err
		}
		for _, a := range anchors {
			if a.Equal(compromised.Active.Cert) {
				return fmt.Errorf("bundle.pem still holds CA %s", compromised.Active.SerialHex())
			}
		}
		return nil
	})
}
