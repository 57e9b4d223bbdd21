package webhook_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/webhook"
	"github.com/agentmesh/agentmesh/internal/webhookcert"
	"github.com/agentmesh/agentmesh/test/cluster"
)

func labelledPod(ns, name, identity, sa string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			InitContainers:     []corev1.Container{{Name: "init", Image: "busybox"}},
			Containers:         []corev1.Container{{Name: "agent", Image: "agent", Env: []corev1.EnvVar{{Name: "MODEL", Value: "m"}}}, {Name: "sidecar", Image: "s"}},
		},
	}
	if identity != "" {
		p.Labels = map[string]string{mtlsv1alpha1.LabelIdentity: identity}
	}
	return p
}

func createIdentity(t *testing.T, ns, name string, mutate ...func(*mtlsv1alpha1.AgentIdentity)) {
	t.Helper()
	id := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	for _, m := range mutate {
		m(id)
	}
	if err := k8s.Create(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	// The webhook reads identities from the operator's cache.
	cluster.Eventually(t, 10*time.Second, "the operator's cache sees "+name, func() error {
		return running.Manager.GetClient().Get(context.Background(), client.ObjectKeyFromObject(id), &mtlsv1alpha1.AgentIdentity{})
	})
}

func TestLabelledPodIsInjected(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	createIdentity(t, ns, "worker", func(a *mtlsv1alpha1.AgentIdentity) {
		a.Spec.ServiceAccountName = "worker-sa"
		a.Spec.SecretName = "worker-cert"
	})
	pod := labelledPod(ns, "worker-0", "worker", "worker-sa")
	if err := warned.Create(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	got := &corev1.Pod{}
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(pod), got); err != nil {
		t.Fatal(err)
	}
	var vol *corev1.Volume
	for i := range got.Spec.Volumes {
		if got.Spec.Volumes[i].Name == "agentmesh-identity" {
			vol = &got.Spec.Volumes[i]
		}
	}
	if vol == nil || vol.Projected == nil || len(vol.Projected.Sources) != 2 {
		t.Fatalf("volumes %+v", got.Spec.Volumes)
	}
	sec, cm := vol.Projected.Sources[0].Secret, vol.Projected.Sources[1].ConfigMap
	if sec.Name != "worker-cert" || cm.Name != "worker-trust" ||
		!slices.Equal(paths(sec.Items), []string{"tls.crt", "tls.key"}) || !slices.Equal(paths(cm.Items), []string{"bundle.pem", "policy.json"}) {
		t.Errorf("projected sources: secret %+v, configMap %+v", sec, cm)
	}
	wantEnv := []corev1.EnvVar{
		{Name: "AGENTMESH_SPIFFE_ID", Value: "spiffe://cluster.local/ns/" + ns + "/agent/worker"},
		{Name: "AGENTMESH_CERT_FILE", Value: "/var/run/agentmesh/tls.crt"},
		{Name: "AGENTMESH_KEY_FILE", Value: "/var/run/agentmesh/tls.key"},
		{Name: "AGENTMESH_BUNDLE_FILE", Value: "/var/run/agentmesh/bundle.pem"},
		{Name: "AGENTMESH_POLICY_FILE", Value: "/var/run/agentmesh/policy.json"},
	}
	for _, c := range append(append([]corev1.Container{}, got.Spec.InitContainers...), got.Spec.Containers...) {
		mounts := 0
		for _, m := range c.VolumeMounts {
			if m.Name == "agentmesh-identity" {
				mounts++
				if m.MountPath != "/var/run/agentmesh" || !m.ReadOnly {
					t.Errorf("container %s mount %+v", c.Name, m)
				}
			}
		}
		if mounts != 1 {
			t.Errorf("container %s has %d agentmesh mounts", c.Name, mounts)
		}
		env := slices.DeleteFunc(slices.Clone(c.Env), func(e corev1.EnvVar) bool { return !strings.HasPrefix(e.Name, "AGENTMESH_") })
		if !slices.Equal(env, wantEnv) {
			t.Errorf("container %s env %+v", c.Name, env)
		}
	}
	if got.Spec.Containers[0].Env[0].Name != "MODEL" {
		t.Errorf("the Pod's own env was disturbed: %+v", got.Spec.Containers[0].Env)
	}
	if got.Annotations[mtlsv1alpha1.AnnotationInjected] != "spiffe://cluster.local/ns/"+ns+"/agent/worker" {
		t.Errorf("annotations %v", got.Annotations)
	}
	if w := warnings.take(); len(w) != 0 {
		t.Errorf("unexpected warnings %v", w)
	}

	// The identity counts its running Pods.
	got.Status.Phase = corev1.PodRunning
	if err := k8s.Status().Update(context.Background(), got); err != nil {
		t.Fatal(err)
	}
	cluster.Eventually(t, 10*time.Second, "status.pods", func() error {
		id := &mtlsv1alpha1.AgentIdentity{}
		if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "worker"}, id); err != nil {
			return err
		}
		if id.Status.Pods != 1 {
			return fmt.Errorf("pods %d", id.Status.Pods)
		}
		return nil
	})
}

func paths(items []corev1.KeyToPath) []string {
	var out []string
	for _, i := range items {
		out = append(out, i.Path)
	}
	return out
}

func TestPodsTheInjectorLeavesAlone(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	createIdentity(t, ns, "worker")
	createIdentity(t, operatorNamespace, "worker")
	for name, pod := range map[string]*corev1.Pod{
		"unlabelled":           labelledPod(ns, "plain", "", ""),
		"operator's namespace": labelledPod(operatorNamespace, "op", "worker", ""),
	} {
		if err := k8s.Create(context.Background(), pod); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := &corev1.Pod{}
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(pod), got); err != nil {
			t.Fatal(err)
		}
		if len(got.Spec.Volumes) != 0 || got.Annotations[mtlsv1alpha1.AnnotationInjected] != "" {
			t.Errorf("%s: the Pod was touched: volumes %v annotations %v", name, got.Spec.Volumes, got.Annotations)
		}
	}
}

func TestWrongServiceAccountIsDenied(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	createIdentity(t, ns, "worker", func(a *mtlsv1alpha1.AgentIdentity) { a.Spec.ServiceAccountName = "worker" })
	err := k8s.Create(context.Background(), labelledPod(ns, "impostor", "worker", "planner"))
	if err == nil || !apierrors.IsForbidden(err) ||
		!strings.Contains(err.Error(), `the Pod runs as service account "planner" but AgentIdentity "worker" requires "worker"`) {
		t.Fatalf("error %v, want a denial naming both service accounts", err)
	}
	// A conflict is named too.
	pod := labelledPod(ns, "clash", "worker", "worker")
	pod.Spec.Containers[0].Env = append(pod.Spec.Containers[0].Env, corev1.EnvVar{Name: "AGENTMESH_KEY_FILE", Value: "/mine"})
	err = k8s.Create(context.Background(), pod)
	if err == nil || !strings.Contains(err.Error(), `container "agent" already sets AGENTMESH_KEY_FILE`) {
		t.Fatalf("error %v, want the conflict named", err)
	}
}

// TestMissingIdentityIsRefused: a Pod whose identity does not exist is not
// let in unchecked; once the identity exists the same Pod is admitted at
// once (the cache miss falls back to the API server), with the identity's
// service account checked.
func TestMissingIdentityIsRefused(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	err := k8s.Create(context.Background(), labelledPod(ns, "early", "later", ""))
	want := "AgentIdentity " + ns + "/later, named by label mtls.agentmesh.dev/identity, does not exist: create it before the Pods that use it"
	if err == nil || !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want %q", err, want)
	}
	// Created straight through the API, without waiting for the
	// operator's cache.
	id := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "later"},
		Spec: mtlsv1alpha1.AgentIdentitySpec{ServiceAccountName: "later"}}
	if err := k8s.Create(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	err = k8s.Create(context.Background(), labelledPod(ns, "impostor", "later", ""))
	if err == nil || !strings.Contains(err.Error(), `the Pod runs as service account "default" but AgentIdentity "later" requires "later"`) {
		t.Fatalf("error %v, want the service account checked", err)
	}
	pod := labelledPod(ns, "early", "later", "later")
	if err := k8s.Create(context.Background(), pod); err != nil {
		t.Fatalf("the Pod was refused once its identity existed: %v", err)
	}
	if len(pod.Spec.Volumes) != 1 || pod.Spec.Volumes[0].Projected.Sources[0].Secret.Name != "later-tls" {
		t.Errorf("volumes %+v", pod.Spec.Volumes)
	}

	// A Pod that gains the label after its creation was never injected:
	// that is said on the Pod, not silently skipped.
	createIdentity(t, ns, "worker")
	plain := labelledPod(ns, "relabelled", "", "")
	if err := k8s.Create(context.Background(), plain); err != nil {
		t.Fatal(err)
	}
	plain.Labels = map[string]string{mtlsv1alpha1.LabelIdentity: "worker"}
	if err := k8s.Update(context.Background(), plain); err != nil {
		t.Fatal(err)
	}
	waitPodEvent(t, plain, mtlsv1alpha1.ReasonNotInjected, "was not injected")
	// One labelled after its creation with an identity that does not
	// exist is told so.
	ghost := labelledPod(ns, "ghost", "", "")
	if err := k8s.Create(context.Background(), ghost); err != nil {
		t.Fatal(err)
	}
	ghost.Labels = map[string]string{mtlsv1alpha1.LabelIdentity: "ghost"}
	if err := k8s.Update(context.Background(), ghost); err != nil {
		t.Fatal(err)
	}
	waitPodEvent(t, ghost, mtlsv1alpha1.ReasonIdentityNotFound, "AgentIdentity ghost does not exist")
}

func waitPodEvent(t *testing.T, pod *corev1.Pod, reason, want string) {
	t.Helper()
	cluster.Eventually(t, 10*time.Second, reason+" event on "+pod.Name, func() error {
		list := &eventsv1.EventList{}
		if err := k8s.List(context.Background(), list, client.InNamespace(pod.Namespace)); err != nil {
			return err
		}
		for _, e := range list.Items {
			if e.Regarding.Kind == "Pod" && e.Regarding.Name == pod.Name && e.Reason == reason && strings.Contains(e.Note, want) {
				return nil
			}
		}
		return errors.New("no such event")
	})
}

func TestInvalidPolicyIsRejectedAtAdmission(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	p := &mtlsv1alpha1.AgentTrustPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bad"},
		Spec: mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"not a key!": "x"}},
			Ingress:       []mtlsv1alpha1.IngressRule{{From: []mtlsv1alpha1.AgentPeer{{SPIFFEIDs: []string{"spiffe://UPPER.example/x"}}}}},
		},
	}
	err := k8s.Create(context.Background(), p)
	if err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.agentSelector") ||
		!strings.Contains(err.Error(), "spec.ingress[0].from[0].spiffeIDs[0]") {
		t.Fatalf("error %v, want both fields named", err)
	}
	p.Spec.AgentSelector.MatchLabels = map[string]string{"role": "worker"}
	p.Spec.Ingress[0].From[0].SPIFFEIDs = []string{"spiffe://partner.example/x"}
	if err := k8s.Create(context.Background(), p); err != nil {
		t.Fatalf("the fixed policy was refused: %v", err)
	}
}

// TestOutOfScopeDNSNamesAreRejectedAtAdmission: an identity may have DNS
// names under its own namespace's Service domains only (no allow-list is
// configured here); the refusal names the field and the rule.
func TestOutOfScopeDNSNamesAreRejectedAtAdmission(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	id := &mtlsv1alpha1.AgentIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "worker"},
		Spec:       mtlsv1alpha1.AgentIdentitySpec{DNSNames: []string{"worker." + ns + ".svc", "kubernetes.default.svc"}},
	}
	err := k8s.Create(context.Background(), id)
	want := `spec.dnsNames[1]: Forbidden: "kubernetes.default.svc" is outside the identity's namespace: allowed are names under ` + ns + ".svc and " + ns + ".svc.cluster.local"
	if err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want one containing %q", err, want)
	}
	id.Spec.DNSNames = []string{"worker." + ns + ".svc", "*." + ns + ".svc.cluster.local"}
	if err := k8s.Create(context.Background(), id); err != nil {
		t.Fatalf("an identity with its own namespace's names was refused: %v", err)
	}
	// An update is checked too. The operator may write the object between
	// the create and the update (finalizer, status), so a conflict is
	// retried on the latest version; only the refusal ends the loop.
	var err2 error
	for range 20 {
		latest := &mtlsv1alpha1.AgentIdentity{}
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(id), latest); err != nil {
			t.Fatal(err)
		}
		latest.Spec.DNSNames = append(latest.Spec.DNSNames, "*.example.com")
		if err2 = k8s.Update(context.Background(), latest); !apierrors.IsConflict(err2) {
			break
		}
	}
	if err2 == nil || !strings.Contains(err2.Error(), `spec.dnsNames[2]: Forbidden: "*.example.com"`) {
		t.Fatalf("widening update: error %v", err2)
	}
}

// TestWebhookDownBlocksOnlyLabelledPods: with the operator stopped and
// failurePolicy Fail, a Pod that asks for an identity is refused and every
// other Pod is created.
func TestWebhookDownBlocksOnlyLabelledPods(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	stopOperator()
	defer func() {
		if err := startOperator("agentmesh-webhook-ca", webhookcert.Policy{}, 0); err != nil {
			t.Fatal(err)
		}
	}()
	err := k8s.Create(context.Background(), labelledPod(ns, "blocked", "worker", ""))
	if err == nil || !strings.Contains(err.Error(), "failed calling webhook") {
		t.Fatalf("error %v, want the webhook call to fail", err)
	}
	if err := k8s.Create(context.Background(), labelledPod(ns, "free", "", "")); err != nil {
		t.Fatalf("an unlabelled Pod was blocked: %v", err)
	}
	if err := k8s.Create(context.Background(), labelledPod(operatorNamespace, "operator-pod", "worker", "")); err != nil {
		t.Fatalf("a Pod of the operator's namespace was blocked: %v", err)
	}
}

// TestServingCertificateRotation runs the operator with a webhook PKI on a
// short clock (CAs of 24s, serving certificates of 6s, 2s for a new CA to
// propagate) and keeps creating labelled Pods through two serving
// certificate renewals and a CA rollover: every Pod is injected, a new
// certificate is served, the caBundle follows, and nothing restarts.
func TestServingCertificateRotation(t *testing.T) {
	stopOperator()
	defer func() {
		stopOperator()
		if err := startOperator("agentmesh-webhook-ca", webhookcert.Policy{}, 0); err != nil {
			t.Fatal(err)
		}
	}()
	policy := webhookcert.Policy{CALifetime: 24 * time.Second, ServingLifetime: 6 * time.Second, Propagation: 2 * time.Second}
	if err := startOperator("rotation-webhook-ca", policy, 250*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	ns := cluster.NewNamespace(t, k8s, "agents-")
	createIdentity(t, ns, "worker")

	serials := map[string]bool{}
	cas := map[string]bool{}
	var bundleSizes []int
	deadline := time.Now().Add(26 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		if err := k8s.Create(context.Background(), labelledPod(ns, fmt.Sprintf("p-%03d", i), "worker", "")); err != nil {
			t.Fatalf("Pod %d refused during rotation: %v", i, err)
		}
		leaf := servedCertificate(t)
		serials[ca.SerialHex(leaf.SerialNumber)] = true
		cas[string(leaf.AuthorityKeyId)] = true
		bundleSizes = append(bundleSizes, len(caBundle(t)))
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("%d Pods created; %d serving certificates from %d CAs; caBundle sizes %v", len(bundleSizes), len(serials), len(cas), slices.Compact(bundleSizes))
	if len(serials) < 3 {
		t.Errorf("%d serving certificates seen in 26s, want at least 3", len(serials))
	}
	if len(cas) < 2 {
		t.Errorf("serving certificates from %d CAs, want 2 (a CA rollover)", len(cas))
	}
	if !slices.Contains(bundleSizes, 2) {
		t.Errorf("the caBundle never held two CAs during the rollover: %v", bundleSizes)
	}
	// The certificate served verifies to the caBundle in the configuration.
	pool := x509.NewCertPool()
	for _, c := range caBundle(t) {
		pool.AddCert(c)
	}
	if _, err := servedCertificate(t).Verify(x509.VerifyOptions{Roots: pool, DNSName: "agentmesh-webhook.agentmesh-system.svc"}); err != nil {
		t.Errorf("the served certificate does not verify to the caBundle: %v", err)
	}
}

func servedCertificate(t *testing.T) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", webhookPort), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // the test reads the certificate only
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	return conn.ConnectionState().PeerCertificates[0]
}

// caBundle returns the CAs of the mutating configuration once the validating
// one holds the same: the operator writes the two one after the other, so a
// reader between the writes sees them differ for a moment; they must agree
// within 2 seconds.
func caBundle(t *testing.T) []*x509.Certificate {
	t.Helper()
	var bundle []byte
	cluster.Eventually(t, 2*time.Second, "the validating and mutating configurations hold the same caBundle", func() error {
		m := &admissionregistrationv1.MutatingWebhookConfiguration{}
		if err := k8s.Get(context.Background(), types.NamespacedName{Name: "agentmesh"}, m); err != nil {
			return err
		}
		v := &admissionregistrationv1.ValidatingWebhookConfiguration{}
		if err := k8s.Get(context.Background(), types.NamespacedName{Name: "agentmesh"}, v); err != nil {
			return err
		}
		bundle = m.Webhooks[0].ClientConfig.CABundle
		if string(v.Webhooks[0].ClientConfig.CABundle) != string(bundle) {
			return errors.New("they differ")
		}
		return nil
	})
	certs, err := ca.ParseCertificatesPEM(bundle)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

// identityAdmissions is how many admission requests the identity validator
// has answered in this process (agentmesh_webhook_request_duration_seconds).
func identityAdmissions(t *testing.T) uint64 {
	t.Helper()
	count, _ := webhook.Observed(t, "agentidentities")
	return count
}

// TestOnlyIdentitiesWithDNSNamesCallTheWebhook: the identity validator
// checks DNS names only, so the API server calls it for an identity that
// has some (created or updated) and admits the others without a call.
func TestOnlyIdentitiesWithDNSNamesCallTheWebhook(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	before := identityAdmissions(t)
	plain := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "plain"}}
	if err := k8s.Create(context.Background(), plain); err != nil {
		t.Fatal(err)
	}
	// The operator writes the status meanwhile: a conflict is retried on
	// the latest version.
	for i := 0; ; i++ {
		latest := &mtlsv1alpha1.AgentIdentity{}
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(plain), latest); err != nil {
			t.Fatal(err)
		}
		latest.Labels = map[string]string{"team": "search"}
		err := k8s.Update(context.Background(), latest)
		if err == nil {
			break
		}
		if !apierrors.IsConflict(err) || i == 20 {
			t.Fatal(err)
		}
	}
	if got := identityAdmissions(t); got != before {
		t.Fatalf("identities without DNS names made %d calls to the webhook, want none", got-before)
	}
	named := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "named"},
		Spec: mtlsv1alpha1.AgentIdentitySpec{DNSNames: []string{"named." + ns + ".svc"}}}
	if err := k8s.Create(context.Background(), named); err != nil {
		t.Fatal(err)
	}
	if got := identityAdmissions(t); got != before+1 {
		t.Fatalf("an identity with DNS names made %d calls to the webhook, want 1", got-before)
	}
}
