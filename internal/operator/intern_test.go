package operator

import (
	"bytes"
	"strings"
	"testing"
	"unsafe"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/identity"
)

// writtenForAnIdentity is the owner of what agentmesh writes for an
// identity; without it an object is a look-alike (lookalike.go).
var writtenForAnIdentity = []metav1.OwnerReference{{
	APIVersion: mtlsv1alpha1.GroupVersion.String(), Kind: "AgentIdentity", Name: "worker", UID: "u1", Controller: ptr.To(true)}}

func identitySecret(bundle, key string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "s", ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "agentmesh"}}, OwnerReferences: writtenForAnIdentity},
		Data: map[string][]byte{
			identity.SecretTrustKey: []byte(bundle),
			identity.SecretKeyKey:   []byte(key),
		},
	}
}

func TestInternSharesTheBundleOfSecrets(t *testing.T) {
	in := newInterner("agentmesh-system")
	bundle := strings.Repeat("B", 900)
	key := strings.Repeat("K", 200)
	var got []*corev1.Secret
	for range 3 {
		o, err := in.secretTransform(identitySecret(bundle, key))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, o.(*corev1.Secret))
	}
	for i, s := range got {
		if s.ManagedFields != nil {
			t.Errorf("secret %d: managed fields kept", i)
		}
		if !bytes.Equal(s.Data[identity.SecretTrustKey], []byte(bundle)) || !bytes.Equal(s.Data[identity.SecretKeyKey], []byte(key)) {
			t.Errorf("secret %d: data changed", i)
		}
		if unsafe.SliceData(s.Data[identity.SecretTrustKey]) != unsafe.SliceData(got[0].Data[identity.SecretTrustKey]) {
			t.Errorf("secret %d: ca.crt not shared with secret 0", i)
		}
		if i > 0 && unsafe.SliceData(s.Data[identity.SecretKeyKey]) == unsafe.SliceData(got[0].Data[identity.SecretKeyKey]) {
			t.Errorf("secret %d: tls.key shared; only the bundle should be", i)
		}
	}
	// A different bundle (a CA rotation) is its own payload.
	o, err := in.secretTransform(identitySecret(strings.Repeat("C", 900), key))
	if err != nil {
		t.Fatal(err)
	}
	if other := o.(*corev1.Secret).Data[identity.SecretTrustKey]; unsafe.SliceData(other) == unsafe.SliceData(got[0].Data[identity.SecretTrustKey]) || other[0] != 'C' {
		t.Errorf("a different bundle was mapped to the first one")
	}
}

func TestInternConfigMapValues(t *testing.T) {
	in := newInterner("agentmesh-system")
	bundle, policy := strings.Repeat("B", 900), `{"allow":[`+strings.Repeat(`"x",`, 60)+`"y"]}`
	cm := func() *corev1.ConfigMap {
		// Build the values at run time so that each is its own allocation.
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{OwnerReferences: writtenForAnIdentity}, Data: map[string]string{
			"bundle.pem": strings.Clone(bundle), "policy.json": strings.Clone(policy), "small": strings.Clone("tiny"),
		}}
	}
	a, err := in.configMapTransform(cm())
	if err != nil {
		t.Fatal(err)
	}
	b, err := in.configMapTransform(cm())
	if err != nil {
		t.Fatal(err)
	}
	x, y := a.(*corev1.ConfigMap).Data, b.(*corev1.ConfigMap).Data
	for _, k := range []string{"bundle.pem", "policy.json"} {
		if x[k] != y[k] || unsafe.StringData(x[k]) != unsafe.StringData(y[k]) {
			t.Errorf("%s: not shared", k)
		}
	}
	if y["bundle.pem"] != bundle || y["policy.json"] != policy || y["small"] != "tiny" {
		t.Errorf("values changed: %v", y)
	}
	if unsafe.StringData(x["small"]) == unsafe.StringData(y["small"]) {
		t.Errorf("a value below %d bytes was interned", internMinSize)
	}
}

func TestInternIsBounded(t *testing.T) {
	in := newInterner("agentmesh-system")
	for i := range internMaxEntries + 10 {
		in.str(strings.Repeat("p", internMinSize) + strings.Repeat("x", i))
	}
	if n := len(in.strings); n > internMaxEntries {
		t.Fatalf("%d entries kept, bound is %d", n, internMaxEntries)
	}
	if n := len(in.strings); n != 10 {
		t.Errorf("after the reset: %d entries, want 10", n)
	}
}
