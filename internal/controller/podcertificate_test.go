package controller_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/controller"
	"github.com/agentmesh/agentmesh/internal/identity"
	"github.com/agentmesh/agentmesh/test/cluster"
)

// kubelet plays the node agent: it owns a Node object and asks the signer
// for Pod certificates exactly as the kubelet does for a podCertificate
// projection (a key generated on the node, a stub PKCS#10 request signed
// with it, the Pod, service account and node names and UIDs).
type kubelet struct {
	t    *testing.T
	cl   client.Client
	node *corev1.Node
}

func newKubelet(t *testing.T) *kubelet { return newKubeletOn(t, k8s) }

// newKubeletOn plays the kubelet against another cluster's client.
func newKubeletOn(t *testing.T, cl client.Client) *kubelet {
	t.Helper()
	k := &kubelet{t: t, cl: cl, node: &corev1.Node{ObjectMeta: metav1.ObjectMeta{GenerateName: "node-"}}}
	k.create(k.node)
	return k
}

func (k *kubelet) create(o client.Object) {
	k.t.Helper()
	if err := k.cl.Create(context.Background(), o); err != nil {
		k.t.Fatalf("creating %T %s: %v", o, o.GetName(), err)
	}
}

// pod creates a Pod bound to this node.
func (k *kubelet) pod(ns, name, identityLabel, sa string) *corev1.Pod {
	k.t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{NodeName: k.node.Name, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "agent", Image: "agent"}}},
	}
	if identityLabel != "" {
		// As the injector admits it: labelled, and annotated with the
		// SPIFFE ID of the identity it was admitted for.
		p.Labels = map[string]string{mtlsv1alpha1.LabelIdentity: identityLabel}
		p.Annotations = map[string]string{mtlsv1alpha1.AnnotationInjected: "spiffe://cluster.local/ns/" + ns + "/agent/" + identityLabel}
	}
	k.create(p)
	return p
}

// relabel changes the Pod's identity label after its admission.
func (k *kubelet) relabel(p *corev1.Pod, identityLabel string) *corev1.Pod {
	k.t.Helper()
	p.Labels[mtlsv1alpha1.LabelIdentity] = identityLabel
	if err := k.cl.Update(context.Background(), p); err != nil {
		k.t.Fatal(err)
	}
	return p
}

// request creates a PodCertificateRequest for the Pod with a fresh key of
// the type and waits for the signer's decision.
func (k *kubelet) request(p *corev1.Pod, key crypto.Signer, mutate ...func(*certv1.PodCertificateRequestSpec)) *certv1.PodCertificateRequest {
	k.t.Helper()
	sa := &corev1.ServiceAccount{}
	_ = k.cl.Get(context.Background(), types.NamespacedName{Namespace: p.Namespace, Name: p.Spec.ServiceAccountName}, sa)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		k.t.Fatal(err)
	}
	pcr := &certv1.PodCertificateRequest{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, GenerateName: p.Name + "-"},
		Spec: certv1.PodCertificateRequestSpec{
			SignerName: mtlsv1alpha1.PodCertificateSignerName,
			PodName:    p.Name, PodUID: p.UID,
			ServiceAccountName: p.Spec.ServiceAccountName, ServiceAccountUID: sa.UID,
			NodeName: types.NodeName(k.node.Name), NodeUID: k.node.UID,
			MaxExpirationSeconds: ptr.To[int32](86400),
			StubPKCS10Request:    csr,
		},
	}
	for _, m := range mutate {
		m(&pcr.Spec)
	}
	k.create(pcr)
	cluster.Eventually(k.t, 10*time.Second, "a decision on "+pcr.Name, func() error {
		if err := k.cl.Get(context.Background(), client.ObjectKeyFromObject(pcr), pcr); err != nil {
			return err
		}
		if len(pcr.Status.Conditions) == 0 {
			return fmt.Errorf("undecided")
		}
		return nil
	})
	return pcr
}

func newKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func podCertIdentity(ns, name string, duration time.Duration) *mtlsv1alpha1.AgentIdentity {
	return cluster.NewIdentity(ns, name, func(a *mtlsv1alpha1.AgentIdentity) {
		a.Spec.KeyDelivery = mtlsv1alpha1.KeyDeliveryPodCertificate
		a.Spec.ServiceAccountName = name
		a.Spec.Duration = &metav1.Duration{Duration: duration}
	})
}

func serviceAccount(t *testing.T, ns, name string) {
	t.Helper()
	cluster.Create(t, k8s, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})
}

func TestPodCertificatesAreIssuedPerPod(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	serviceAccount(t, ns, "edge")
	id := podCertIdentity(ns, "edge", 2*time.Hour)
	cluster.Create(t, k8s, id)
	k := newKubelet(t)
	pods := []*corev1.Pod{k.pod(ns, "edge-0", "edge", "edge"), k.pod(ns, "edge-1", "edge", "edge")}

	keys := []crypto.Signer{newKey(t), newKey(t)}
	var leaves []*x509.Certificate
	for i, p := range pods {
		pcr := k.request(p, keys[i])
		if !meta.IsStatusConditionTrue(pcr.Status.Conditions, certv1.PodCertificateRequestConditionTypeIssued) {
			t.Fatalf("%s: %+v", p.Name, pcr.Status.Conditions)
		}
		certs, err := ca.ParseCertificatesPEM([]byte(pcr.Status.CertificateChain))
		if err != nil {
			t.Fatal(err)
		}
		leaf := certs[0]
		leaves = append(leaves, leaf)
		if !ca.KeyMatchesCertificate(keys[i], leaf) {
			t.Errorf("%s: the certificate is not for the Pod's key", p.Name)
		}
		want := "spiffe://cluster.local/ns/" + ns + "/agent/edge"
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want || leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature {
			t.Errorf("%s: URIs %v isCA %v usage %v", p.Name, leaf.URIs, leaf.IsCA, leaf.KeyUsage)
		}
		st, _ := running.CA.Get()
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: st.Pool(), CurrentTime: clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: does not verify to the CA: %v", p.Name, err)
		}
		if d := leaf.NotAfter.Sub(leaf.NotBefore); d != 2*time.Hour {
			t.Errorf("%s: validity %s, want the identity's 2h (the backdate included)", p.Name, d)
		}
		if back := clk.Now().Sub(leaf.NotBefore); back < identity.MaxBackdate-5*time.Second || back > identity.MaxBackdate+5*time.Second {
			t.Errorf("%s: NotBefore backdated by %s, want %s", p.Name, back, identity.MaxBackdate)
		}
		if !pcr.Status.NotBefore.Time.Equal(leaf.NotBefore) || !pcr.Status.NotAfter.Time.Equal(leaf.NotAfter) {
			t.Errorf("%s: status times %s..%s, leaf %s..%s", p.Name, pcr.Status.NotBefore, pcr.Status.NotAfter, leaf.NotBefore, leaf.NotAfter)
		}
		got := &mtlsv1alpha1.AgentIdentity{}
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(id), got); err != nil {
			t.Fatal(err)
		}
		if want := identity.RenewalFor(mustRequest(t, got), string(got.UID), leaf); !pcr.Status.BeginRefreshAt.Time.Equal(want) {
			t.Errorf("%s: beginRefreshAt %s, want %s (the Secret renewal rule and jitter)", p.Name, pcr.Status.BeginRefreshAt, want)
		}
	}
	// Two replicas of one agent hold different keys for one identity.
	if ca.KeyMatchesCertificate(keys[0], leaves[1]) || leaves[0].URIs[0].String() != leaves[1].URIs[0].String() {
		t.Error("the replicas share a key, or differ in identity")
	}

	// A refresh is a new certificate for a new key.
	refreshKey := newKey(t)
	refreshed := k.request(pods[0], refreshKey)
	certs, _ := ca.ParseCertificatesPEM([]byte(refreshed.Status.CertificateChain))
	if !ca.KeyMatchesCertificate(refreshKey, certs[0]) || certs[0].SerialNumber.Cmp(leaves[0].SerialNumber) == 0 {
		t.Error("the refresh did not issue a new certificate for the new key")
	}

	// A request with a shorter maxExpirationSeconds gets that lifetime.
	short := k.request(pods[1], newKey(t), func(s *certv1.PodCertificateRequestSpec) { s.MaxExpirationSeconds = ptr.To[int32](3600) })
	if d := short.Status.NotAfter.Sub(short.Status.NotBefore.Time); d != time.Hour {
		t.Errorf("validity %s, want the request's maxExpirationSeconds of 1h", d)
	}

	// The identity says how many Pods hold a certificate, and no Secret
	// holds their keys.
	cluster.Eventually(t, 10*time.Second, "the identity counts its Pod certificates", func() error {
		got := &mtlsv1alpha1.AgentIdentity{}
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(id), got); err != nil {
			return err
		}
		c := meta.FindStatusCondition(got.Status.Conditions, mtlsv1alpha1.ConditionReady)
		if got.Status.PodCertificates != 2 || got.Status.NextRefreshTime == nil || c == nil || c.Reason != mtlsv1alpha1.ReasonPodCertificate || c.Status != metav1.ConditionTrue {
			return fmt.Errorf("podCertificates %d, next refresh %v, Ready %+v", got.Status.PodCertificates, got.Status.NextRefreshTime, c)
		}
		return nil
	})
	secrets := &corev1.SecretList{}
	if err := k8s.List(context.Background(), secrets, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets.Items {
		if len(s.Data["tls.key"]) > 0 {
			t.Errorf("Secret %s holds a key", s.Name)
		}
	}
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "edge-trust"}, &corev1.ConfigMap{}); err != nil {
		t.Errorf("no trust ConfigMap: %v", err)
	}
}

func TestPodCertificateDenials(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	for _, sa := range []string{"edge", "other"} {
		serviceAccount(t, ns, sa)
	}
	cluster.Create(t, k8s, podCertIdentity(ns, "edge", 24*time.Hour))
	cluster.Create(t, k8s, cluster.NewIdentity(ns, "classic", func(a *mtlsv1alpha1.AgentIdentity) { a.Spec.ServiceAccountName = "edge" }))
	k := newKubelet(t)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	cases := []struct {
		name   string
		pod    func() *corev1.Pod
		mutate func(*certv1.PodCertificateRequestSpec)
		key    crypto.Signer
		reason string
		msg    string
	}{
		{"the Pod runs as another service account", func() *corev1.Pod { return k.pod(ns, "wrong-sa", "edge", "other") }, nil, nil,
			"ServiceAccountMismatch", `AgentIdentity edge requires service account "edge"; Pod wrong-sa runs as "other"`},
		{"the Pod was relabelled after admission", func() *corev1.Pod { return k.relabel(k.pod(ns, "relabelled", "classic", "edge"), "edge") }, nil, nil,
			"NotInjected", "Pod relabelled was not admitted for AgentIdentity edge (annotation mtls.agentmesh.dev/injected is \"spiffe://cluster.local/ns/" + ns + "/agent/classic\")"},
		{"the Pod has no identity label", func() *corev1.Pod { return k.pod(ns, "unlabelled", "", "edge") }, nil, nil,
			"IdentityNotFound", "is not labelled mtls.agentmesh.dev/identity"},
		{"the label names no identity", func() *corev1.Pod { return k.pod(ns, "ghost", "ghost", "edge") }, nil, nil,
			"IdentityNotFound", "AgentIdentity " + ns + "/ghost, named by Pod ghost, does not exist"},
		{"the identity delivers through a Secret", func() *corev1.Pod { return k.pod(ns, "classic-0", "classic", "edge") }, nil, nil,
			"NotPodCertificateDelivery", "set spec.keyDelivery to PodCertificate"},
		{"the request names another Pod UID", func() *corev1.Pod { return k.pod(ns, "uid", "edge", "edge") },
			func(s *certv1.PodCertificateRequestSpec) { s.PodUID = "8b2d6a52-7d52-4a1f-9a1b-0b1f3c1d2e3f" }, nil,
			"PodNotFound", "not the request's 8b2d6a52-7d52-4a1f-9a1b-0b1f3c1d2e3f"},
		{"the request names another node UID", func() *corev1.Pod { return k.pod(ns, "node-uid", "edge", "edge") },
			func(s *certv1.PodCertificateRequestSpec) { s.NodeUID = "11111111-2222-3333-4444-555555555555" }, nil,
			"NodeMismatch", "not the request's 11111111-2222-3333-4444-555555555555"},
		{"a key of another type", func() *corev1.Pod { return k.pod(ns, "ed", "edge", "edge") }, nil, edKey,
			"UnsupportedKeyType", "takes ECDSAP256 keys, not ED25519"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := tc.key
			if key == nil {
				key = newKey(t)
			}
			p := tc.pod()
			var mutate []func(*certv1.PodCertificateRequestSpec)
			if tc.mutate != nil {
				mutate = append(mutate, tc.mutate)
			}
			pcr := k.request(p, key, mutate...)
			c := meta.FindStatusCondition(pcr.Status.Conditions, certv1.PodCertificateRequestConditionTypeDenied)
			if c == nil || c.Reason != tc.reason || !strings.Contains(c.Message, tc.msg) || pcr.Status.CertificateChain != "" {
				t.Fatalf("conditions %+v, want Denied/%s containing %q", pcr.Status.Conditions, tc.reason, tc.msg)
			}
			cluster.WaitEvent(t, k8s, p, "Pod", tc.reason, 10*time.Second)
		})
	}
	t.Run("a key without proof of possession", func(t *testing.T) {
		// The API server checks the stub request's signature itself; the
		// signer checks it again (see the unit tests).
		p := k.pod(ns, "pop", "edge", "edge")
		csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, newKey(t))
		csr[len(csr)-4] ^= 0xff
		err := k8s.Create(context.Background(), &certv1.PodCertificateRequest{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "pop-"},
			Spec: certv1.PodCertificateRequestSpec{SignerName: mtlsv1alpha1.PodCertificateSignerName, PodName: p.Name, PodUID: p.UID,
				ServiceAccountName: "edge", ServiceAccountUID: "x", NodeName: types.NodeName(k.node.Name), NodeUID: k.node.UID, StubPKCS10Request: csr},
		})
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.stubPKCS10Request") {
			t.Fatalf("error %v, want the request refused for its signature", err)
		}
	})
}

func TestClusterTrustBundlePublished(t *testing.T) {
	st, err := running.CA.Get()
	if err != nil {
		t.Fatal(err)
	}
	name := controller.ClusterTrustBundleName(td)
	if name != "agentmesh.dev:agent-identity:cluster.local" {
		t.Errorf("name %s", name)
	}
	cluster.Eventually(t, 10*time.Second, "the ClusterTrustBundle holds the CA", func() error {
		ctb := &certv1.ClusterTrustBundle{}
		if err := k8s.Get(context.Background(), types.NamespacedName{Name: name}, ctb); err != nil {
			return err
		}
		if ctb.Spec.SignerName != mtlsv1alpha1.PodCertificateSignerName || ctb.Labels[mtlsv1alpha1.LabelTrustDomain] != "cluster.local" ||
			ctb.Spec.TrustBundle != string(st.BundlePEM()) {
			return fmt.Errorf("bundle %+v", ctb.Spec.SignerName)
		}
		return nil
	})
}
