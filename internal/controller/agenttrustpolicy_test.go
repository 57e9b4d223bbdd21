package controller_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/policy"
	"github.com/agentmesh/agentmesh/test/cluster"
)

// agents creates the planner, worker and outsider identities of a test.
func agents(t *testing.T, ns string) {
	t.Helper()
	for _, name := range []string{"planner", "worker", "outsider"} {
		cluster.Create(t, k8s, cluster.NewIdentity(ns, name, func(a *mtlsv1alpha1.AgentIdentity) {
			a.Labels = map[string]string{"role": name}
		}))
	}
}

func workerIngressPolicy(ns string) *mtlsv1alpha1.AgentTrustPolicy {
	return &mtlsv1alpha1.AgentTrustPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "worker-ingress"},
		Spec: mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"role": "worker"}},
			Ingress: []mtlsv1alpha1.IngressRule{{From: []mtlsv1alpha1.AgentPeer{{
				IdentitySelector: &mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"role": "planner"}},
			}}}},
		},
	}
}

// effective reads an identity's policy.json.
func effective(t *testing.T, ns, name string) (*policy.Effective, *corev1.ConfigMap) {
	t.Helper()
	cm := &corev1.ConfigMap{}
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name + "-trust"}, cm); err != nil {
		return nil, nil
	}
	eff := &policy.Effective{}
	if err := json.Unmarshal([]byte(cm.Data["policy.json"]), eff); err != nil {
		t.Fatalf("%s policy.json: %v", name, err)
	}
	return eff, cm
}

// waitEffective waits until the identity's effective policy satisfies ok.
func waitEffective(t *testing.T, ns, name, what string, ok func(*policy.Effective) error) *policy.Effective {
	t.Helper()
	var eff *policy.Effective
	cluster.Eventually(t, 20*time.Second, name+": "+what, func() error {
		eff, _ = effective(t, ns, name)
		if eff == nil {
			return fmt.Errorf("no trust ConfigMap yet")
		}
		return ok(eff)
	})
	return eff
}

func waitPolicy(t *testing.T, nn types.NamespacedName, status metav1.ConditionStatus, reason string) *mtlsv1alpha1.AgentTrustPolicy {
	t.Helper()
	p := &mtlsv1alpha1.AgentTrustPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: nn.Namespace, Name: nn.Name}}
	cluster.WaitCondition(t, k8s, p, 20*time.Second, cluster.Condition{Type: mtlsv1alpha1.ConditionReady, Status: status, Reason: reason, Current: true})
	return p
}

func idOf(ns, name string) string { return "spiffe://cluster.local/ns/" + ns + "/agent/" + name }

func TestPolicyJSONIsExact(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	agents(t, ns)
	cluster.Create(t, k8s, workerIngressPolicy(ns))
	p := waitPolicy(t, types.NamespacedName{Namespace: ns, Name: "worker-ingress"}, metav1.ConditionTrue, mtlsv1alpha1.ReasonCompiled)
	if p.Status.SelectedIdentities != 1 || p.Status.ObservedGeneration != p.Generation {
		t.Errorf("policy status %+v", p.Status)
	}

	_, cm := effective(t, ns, "worker")
	st, _ := running.CA.Get()
	fp := policy.Fingerprint(st.Anchors[0])
	want := fmt.Sprintf(`{
  "version": "agentmesh.dev/policy/v1",
  "spiffeID": "%s",
  "trustDomain": "cluster.local",
  "ingress": {
    "mode": "Enforce",
    "allowAll": false,
    "spiffeIDs": [
      "%s"
    ],
    "prefixes": [],
    "policies": [
      "worker-ingress"
    ]
  },
  "egress": {
    "mode": "Enforce",
    "allowAll": false,
    "spiffeIDs": [],
    "prefixes": [
      "spiffe://cluster.local/"
    ],
    "policies": [],
    "default": "allow-authenticated"
  },
  "trustDomains": {
    "cluster.local": [
      "%s"
    ]
  }
}
`, idOf(ns, "worker"), idOf(ns, "planner"), fp)
	if cm.Data["policy.json"] != want {
		t.Errorf("worker policy.json:\n%s\nwant:\n%s", cm.Data["policy.json"], want)
	}
	bundle, err := ca.ParseCertificatesPEM([]byte(cm.Data["bundle.pem"]))
	if err != nil || len(bundle) != 1 || !bundle[0].Equal(st.Anchors[0]) {
		t.Errorf("bundle.pem holds %d certificates (%v), want the CA", len(bundle), err)
	}
	ref := metav1.GetControllerOf(cm)
	if ref == nil || ref.Kind != "AgentIdentity" || ref.Name != "worker" || cm.Labels[mtlsv1alpha1.LabelManagedBy] != "agentmesh" {
		t.Errorf("ConfigMap owner %+v labels %v", ref, cm.Labels)
	}

	// The planner is governed by nothing: the default posture both ways.
	planner, _ := effective(t, ns, "planner")
	if len(planner.Ingress.Policies) != 0 || planner.Ingress.Default != policy.AllowAuthenticated ||
		!slices.Equal(planner.Ingress.Prefixes, []string{"spiffe://cluster.local/"}) {
		t.Errorf("planner ingress %+v", planner.Ingress)
	}

	// The identity's status says which policies govern it.
	worker := waitReady(t, types.NamespacedName{Namespace: ns, Name: "worker"})
	c := meta.FindStatusCondition(worker.Status.Conditions, mtlsv1alpha1.ConditionPolicyResolved)
	if !slices.Equal(worker.Status.Policies, []string{"worker-ingress"}) || worker.Status.TrustConfigMap != "worker-trust" ||
		c == nil || c.Status != metav1.ConditionTrue || c.Reason != mtlsv1alpha1.ReasonCompiled {
		t.Errorf("worker status: policies %v, trust %q, PolicyResolved %+v", worker.Status.Policies, worker.Status.TrustConfigMap, c)
	}
}

func TestPolicyFollowsLabelsAndDeletion(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	agents(t, ns)
	cluster.Create(t, k8s, workerIngressPolicy(ns))
	allowed := func(ids ...string) func(*policy.Effective) error {
		return func(e *policy.Effective) error {
			if !slices.Equal(e.Ingress.SPIFFEIDs, ids) || len(e.Ingress.Prefixes) != 0 {
				return fmt.Errorf("ingress %+v", e.Ingress)
			}
			return nil
		}
	}
	waitEffective(t, ns, "worker", "only the planner", allowed(idOf(ns, "planner")))

	// The outsider takes the planner's label: it enters the policy.
	relabel(t, ns, "outsider", "planner")
	waitEffective(t, ns, "worker", "the relabelled outsider enters", allowed(idOf(ns, "outsider"), idOf(ns, "planner")))
	relabel(t, ns, "outsider", "outsider")
	waitEffective(t, ns, "worker", "and leaves again", allowed(idOf(ns, "planner")))

	// The worker itself loses the label: the policy no longer governs it.
	relabel(t, ns, "worker", "retired")
	waitEffective(t, ns, "worker", "default posture once unselected", func(e *policy.Effective) error {
		if len(e.Ingress.Policies) != 0 || !slices.Equal(e.Ingress.Prefixes, []string{"spiffe://cluster.local/"}) {
			return fmt.Errorf("ingress %+v", e.Ingress)
		}
		return nil
	})
	p := waitPolicy(t, types.NamespacedName{Namespace: ns, Name: "worker-ingress"}, metav1.ConditionTrue, mtlsv1alpha1.ReasonCompiled)
	cluster.Eventually(t, 10*time.Second, "selected count", func() error {
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(p), p); err != nil {
			return err
		}
		if p.Status.SelectedIdentities != 0 {
			return fmt.Errorf("selected %d", p.Status.SelectedIdentities)
		}
		return nil
	})
	relabel(t, ns, "worker", "worker")
	waitEffective(t, ns, "worker", "selected again", allowed(idOf(ns, "planner")))

	// Deleting the policy returns the output to the default.
	if err := k8s.Delete(context.Background(), workerIngressPolicy(ns)); err != nil {
		t.Fatal(err)
	}
	waitEffective(t, ns, "worker", "default posture after deletion", func(e *policy.Effective) error {
		if len(e.Ingress.Policies) != 0 || e.Ingress.Default != policy.AllowAuthenticated || !slices.Equal(e.Ingress.Prefixes, []string{"spiffe://cluster.local/"}) {
			return fmt.Errorf("ingress %+v", e.Ingress)
		}
		return nil
	})
	cluster.Eventually(t, 10*time.Second, "status.policies empties", func() error {
		w := &mtlsv1alpha1.AgentIdentity{}
		if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "worker"}, w); err != nil {
			return err
		}
		if len(w.Status.Policies) != 0 {
			return fmt.Errorf("policies %v", w.Status.Policies)
		}
		return nil
	})
}

func TestNamespaceSelectorFollowsNamespaceLabels(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	agents(t, ns)
	other := cluster.NewNamespace(t, k8s, "agents-")
	cluster.Create(t, k8s, &mtlsv1alpha1.AgentTrustPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "from-research"},
		Spec: mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"role": "worker"}},
			Ingress: []mtlsv1alpha1.IngressRule{{From: []mtlsv1alpha1.AgentPeer{{
				NamespaceSelector: &mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"team": "research-" + ns}},
			}}}},
		},
	})
	waitEffective(t, ns, "worker", "nothing allowed yet", func(e *policy.Effective) error {
		if len(e.Ingress.Policies) != 1 || len(e.Ingress.Prefixes)+len(e.Ingress.SPIFFEIDs) != 0 {
			return fmt.Errorf("ingress %+v", e.Ingress)
		}
		return nil
	})
	n := &corev1.Namespace{}
	if err := k8s.Get(context.Background(), types.NamespacedName{Name: other}, n); err != nil {
		t.Fatal(err)
	}
	n.Labels["team"] = "research-" + ns
	if err := k8s.Update(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	waitEffective(t, ns, "worker", "the labelled namespace is a prefix", func(e *policy.Effective) error {
		if !slices.Equal(e.Ingress.Prefixes, []string{"spiffe://cluster.local/ns/" + other + "/"}) {
			return fmt.Errorf("ingress %+v", e.Ingress)
		}
		return nil
	})
}

func TestFederatedTrustBundle(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	agents(t, ns)
	partner := newCA(t, true)
	bundle := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "partner-bundle", Labels: map[string]string{mtlsv1alpha1.LabelTrustBundle: "true"}},
		Data:       map[string]string{"ca.crt": string(ca.EncodeCertificatesPEM(partner))},
	}
	cluster.Create(t, k8s, bundle)
	cluster.Create(t, k8s, &mtlsv1alpha1.AgentTrustPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "partner"},
		Spec: mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"role": "worker"}},
			Ingress: []mtlsv1alpha1.IngressRule{{From: []mtlsv1alpha1.AgentPeer{
				{SPIFFEIDs: []string{"spiffe://partner.example/ns/ops/agent/auditor"}},
			}}},
			TrustBundles: []mtlsv1alpha1.TrustBundle{{TrustDomain: "partner.example", ConfigMap: mtlsv1alpha1.ConfigMapKeyRef{Name: "partner-bundle", Key: "ca.crt"}}},
		},
	})
	nn := types.NamespacedName{Namespace: ns, Name: "partner"}
	waitPolicy(t, nn, metav1.ConditionTrue, mtlsv1alpha1.ReasonCompiled)
	waitEffective(t, ns, "worker", "the partner's CA is in the bundle", func(e *policy.Effective) error {
		if fps := e.TrustDomains["partner.example"]; len(fps) != 1 || fps[0] != policy.Fingerprint(partner) {
			return fmt.Errorf("trustDomains %v", e.TrustDomains)
		}
		return nil
	})
	_, good := effective(t, ns, "worker")
	if !strings.Contains(good.Data["bundle.pem"], "# trust domain: partner.example") {
		t.Errorf("bundle.pem does not name the partner's trust domain:\n%s", good.Data["bundle.pem"])
	}
	// The planner is not selected: it does not trust the partner.
	if pl, _ := effective(t, ns, "planner"); pl == nil || len(pl.TrustDomains) != 1 {
		t.Errorf("planner trust domains %v", pl)
	}

	for _, bad := range []struct {
		name string
		data string
		want string
	}{
		{"garbage", "this is not PEM", "ConfigMap partner-bundle key ca.crt: no PEM certificate found"},
		{"a leaf, not a CA", string(ca.EncodeCertificatesPEM(newCA(t, false))), "is not a CA certificate"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			cm := &corev1.ConfigMap{}
			if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(bundle), cm); err != nil {
				t.Fatal(err)
			}
			cm.Data["ca.crt"] = bad.data
			if err := k8s.Update(context.Background(), cm); err != nil {
				t.Fatal(err)
			}
			waitMessage(t, &mtlsv1alpha1.AgentTrustPolicy{}, nn, mtlsv1alpha1.ConditionReady, mtlsv1alpha1.ReasonBundleInvalid, bad.want)
			waitMessage(t, &mtlsv1alpha1.AgentIdentity{}, types.NamespacedName{Namespace: ns, Name: "worker"},
				mtlsv1alpha1.ConditionPolicyResolved, mtlsv1alpha1.ReasonBundleInvalid, bad.want+"; the last good bundle is kept")
			// The previous output stays.
			if _, now := effective(t, ns, "worker"); now.Data["bundle.pem"] != good.Data["bundle.pem"] || now.Data["policy.json"] != good.Data["policy.json"] {
				t.Errorf("the trust ConfigMap changed:\n%s", now.Data["bundle.pem"])
			}
		})
	}
	cluster.WaitEvent(t, k8s, &mtlsv1alpha1.AgentTrustPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "partner"}}, "AgentTrustPolicy", mtlsv1alpha1.ReasonBundleInvalid, 10*time.Second)

	// A ConfigMap without the label is not read, and the message says so.
	cluster.Create(t, k8s, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "unlabelled"}, Data: map[string]string{"ca.crt": string(ca.EncodeCertificatesPEM(partner))}})
	update := &mtlsv1alpha1.AgentTrustPolicy{}
	if err := k8s.Get(context.Background(), nn, update); err != nil {
		t.Fatal(err)
	}
	update.Spec.TrustBundles[0].ConfigMap.Name = "unlabelled"
	if err := k8s.Update(context.Background(), update); err != nil {
		t.Fatal(err)
	}
	waitMessage(t, &mtlsv1alpha1.AgentTrustPolicy{}, nn, mtlsv1alpha1.ConditionReady, mtlsv1alpha1.ReasonBundleInvalid,
		"ConfigMap unlabelled is not labelled mtls.agentmesh.dev/trust-bundle=true")
}

// waitMessage waits for a condition with the reason and a message that
// contains want.
func waitMessage(t *testing.T, obj cluster.Conditioned, nn types.NamespacedName, typ, reason, want string) {
	t.Helper()
	obj.SetNamespace(nn.Namespace)
	obj.SetName(nn.Name)
	cluster.WaitCondition(t, k8s, obj, 20*time.Second, cluster.Condition{Type: typ, Reason: reason, Message: want})
}

// TestNamespaceWideRuleAtScale: 1,000 identities under one namespace-wide
// rule; every trust ConfigMap gets the policy, and policy.json stays small.
func TestNamespaceWideRuleAtScale(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	const n = 1000
	for i := range n {
		cluster.Create(t, k8s, cluster.NewIdentity(ns, fmt.Sprintf("a-%04d", i)))
	}
	cluster.Create(t, k8s, &mtlsv1alpha1.AgentTrustPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "namespace-only"},
		Spec: mtlsv1alpha1.AgentTrustPolicySpec{
			Ingress: []mtlsv1alpha1.IngressRule{{From: []mtlsv1alpha1.AgentPeer{{IdentitySelector: &mtlsv1alpha1.LabelSelector{}}}}},
		},
	})
	nn := types.NamespacedName{Namespace: ns, Name: "namespace-only"}
	p := &mtlsv1alpha1.AgentTrustPolicy{}
	cluster.Eventually(t, 120*time.Second, "compiled into 1,000 identities", func() error {
		if err := k8s.Get(context.Background(), nn, p); err != nil {
			return err
		}
		c := meta.FindStatusCondition(p.Status.Conditions, mtlsv1alpha1.ConditionReady)
		if p.Status.SelectedIdentities != n || c == nil || c.Reason != mtlsv1alpha1.ReasonCompiled {
			return fmt.Errorf("selected %d, %+v", p.Status.SelectedIdentities, c)
		}
		return nil
	})
	for _, name := range []string{"a-0000", "a-0500", "a-0999"} {
		eff, cm := effective(t, ns, name)
		if !slices.Equal(eff.Ingress.Prefixes, []string{"spiffe://cluster.local/ns/" + ns + "/"}) || len(eff.Ingress.SPIFFEIDs) != 0 {
			t.Errorf("%s ingress %+v", name, eff.Ingress)
		}
		t.Logf("%s policy.json: %d bytes", name, len(cm.Data["policy.json"]))
		if size := len(cm.Data["policy.json"]); size > 1024 {
			t.Errorf("%s policy.json is %d bytes", name, size)
		}
	}
}

func relabel(t *testing.T, ns, name, role string) {
	t.Helper()
	update(t, types.NamespacedName{Namespace: ns, Name: name}, func(a *mtlsv1alpha1.AgentIdentity) {
		a.Labels["role"] = role
	})
}

// newCA returns a self-signed certificate, a CA or not.
func newCA(t *testing.T, isCA bool) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "partner CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		BasicConstraintsValid: true, IsCA: isCA, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestInvalidAgentSelectorKeepsLastOutput: a policy whose agentSelector
// cannot be parsed cannot tell whom it governs; the identities it governed
// keep their last trust ConfigMap instead of falling back to the default,
// and the others of its namespace are governed by it with no rules.
func TestInvalidAgentSelectorKeepsLastOutput(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	agents(t, ns)
	cluster.Create(t, k8s, workerIngressPolicy(ns))
	nn := types.NamespacedName{Namespace: ns, Name: "worker-ingress"}
	waitPolicy(t, nn, metav1.ConditionTrue, mtlsv1alpha1.ReasonCompiled)
	waitEffective(t, ns, "worker", "only the planner", func(e *policy.Effective) error {
		if !slices.Equal(e.Ingress.SPIFFEIDs, []string{idOf(ns, "planner")}) {
			return fmt.Errorf("ingress %+v", e.Ingress)
		}
		return nil
	})
	// The last output is published when the identity's status records its
	// hash too (a policy broken before that is resolved afresh, under which
	// it allows nothing: see keptIsOurs).
	var before *corev1.ConfigMap
	cluster.Eventually(t, 20*time.Second, "the worker's status records its trust ConfigMap", func() error {
		_, before = effective(t, ns, "worker")
		id := &mtlsv1alpha1.AgentIdentity{}
		if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "worker"}, id); err != nil {
			return err
		}
		if before == nil || id.Status.TrustContentHash != before.Annotations[mtlsv1alpha1.AnnotationContentHash] {
			return fmt.Errorf("status hash %q", id.Status.TrustContentHash)
		}
		return nil
	})

	p := &mtlsv1alpha1.AgentTrustPolicy{}
	if err := k8s.Get(context.Background(), nn, p); err != nil {
		t.Fatal(err)
	}
	p.Spec.AgentSelector.MatchLabels["not a label key!"] = "x"
	if err := k8s.Update(context.Background(), p); err != nil {
		t.Fatalf("the API server refused a selector only the operator can check: %v", err)
	}
	waitMessage(t, &mtlsv1alpha1.AgentTrustPolicy{}, nn, mtlsv1alpha1.ConditionReady, mtlsv1alpha1.ReasonPolicyInvalid, "spec.agentSelector")
	waitMessage(t, &mtlsv1alpha1.AgentIdentity{}, types.NamespacedName{Namespace: ns, Name: "worker"},
		mtlsv1alpha1.ConditionPolicyResolved, mtlsv1alpha1.ReasonPolicyInvalid, "the last trust ConfigMap is kept")
	if _, now := effective(t, ns, "worker"); now.Data["policy.json"] != before.Data["policy.json"] {
		t.Errorf("the worker's policy changed:\n%s", now.Data["policy.json"])
	}
	// Identities it did not govern before, and a new one, might be governed
	// by it now: their ingress denies (governed by it, with no rules) rather
	// than keeping or falling back to the default posture; their egress,
	// which it does not govern, is unchanged.
	cluster.Create(t, k8s, cluster.NewIdentity(ns, "newcomer"))
	for _, name := range []string{"planner", "newcomer"} {
		waitEffective(t, ns, name, "ingress denied by the unparseable policy", func(e *policy.Effective) error {
			in := e.Ingress
			if !slices.Equal(in.Policies, []string{"worker-ingress"}) || in.AllowAll || len(in.SPIFFEIDs) > 0 || len(in.Prefixes) > 0 ||
				in.Mode != policy.ModeEnforce {
				return fmt.Errorf("ingress %+v", in)
			}
			if len(e.Egress.Policies) != 0 || !slices.Equal(e.Egress.Prefixes, []string{"spiffe://cluster.local/"}) {
				return fmt.Errorf("egress %+v", e.Egress)
			}
			return nil
		})
		waitMessage(t, &mtlsv1alpha1.AgentIdentity{}, types.NamespacedName{Namespace: ns, Name: name},
			mtlsv1alpha1.ConditionPolicyResolved, mtlsv1alpha1.ReasonPolicyInvalid, "it cannot tell whom it governs, so it allows nothing")
	}
	// Only what agentmesh wrote is kept: someone who widens the kept
	// policy.json, and fixes up its hash annotation, does not get it kept.
	worker := &mtlsv1alpha1.AgentIdentity{}
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "worker"}, worker); err != nil {
		t.Fatal(err)
	}
	_, kept := effective(t, ns, "worker")
	if got, want := worker.Status.TrustContentHash, (policy.Output{BundlePEM: []byte(kept.Data["bundle.pem"]), PolicyJSON: []byte(kept.Data["policy.json"])}).ContentHash(); got != want {
		t.Fatalf("status.trustContentHash %q, want the kept content's %q", got, want)
	}
	doc := map[string]any{}
	if err := json.Unmarshal([]byte(kept.Data["policy.json"]), &doc); err != nil {
		t.Fatal(err)
	}
	doc["ingress"].(map[string]any)["allowAll"] = true
	raw, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	widened := string(raw)
	kept.Data["policy.json"] = widened
	kept.Annotations[mtlsv1alpha1.AnnotationContentHash] = (policy.Output{BundlePEM: []byte(kept.Data["bundle.pem"]), PolicyJSON: []byte(widened)}).ContentHash()
	if err := k8s.Update(context.Background(), kept); err != nil {
		t.Fatal(err)
	}
	waitEffective(t, ns, "worker", "the widened kept policy resolved again: ingress denied", func(e *policy.Effective) error {
		if in := e.Ingress; !slices.Equal(in.Policies, []string{"worker-ingress"}) || in.AllowAll || len(in.SPIFFEIDs) > 0 || len(in.Prefixes) > 0 {
			return fmt.Errorf("ingress %+v", in)
		}
		return nil
	})
	// Fixing the policy resumes compilation.
	if err := k8s.Get(context.Background(), nn, p); err != nil {
		t.Fatal(err)
	}
	delete(p.Spec.AgentSelector.MatchLabels, "not a label key!")
	if err := k8s.Update(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	waitPolicy(t, nn, metav1.ConditionTrue, mtlsv1alpha1.ReasonCompiled)
	waitCondition(t, types.NamespacedName{Namespace: ns, Name: "worker"}, mtlsv1alpha1.ConditionPolicyResolved, metav1.ConditionTrue, mtlsv1alpha1.ReasonCompiled)
	waitEffective(t, ns, "newcomer", "the default posture again", func(e *policy.Effective) error {
		if len(e.Ingress.Policies) != 0 || !slices.Equal(e.Ingress.Prefixes, []string{"spiffe://cluster.local/"}) {
			return fmt.Errorf("ingress %+v", e.Ingress)
		}
		return nil
	})
}
