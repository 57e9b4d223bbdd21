package operator

import (
	"bytes"
	"strings"
	"testing"
	"unsafe"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/identity"
	"github.com/agentmesh/agentmesh/internal/policy"
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
	want := identity.SecretDataHash(identitySecret(bundle, key).Data)
	for i, s := range got {
		if s.ManagedFields != nil {
			t.Errorf("secret %d: managed fields kept", i)
		}
		if !bytes.Equal(s.Data[identity.SecretTrustKey], []byte(bundle)) {
			t.Errorf("secret %d: ca.crt changed", i)
		}
		if _, ok := s.Data[identity.SecretKeyKey]; ok {
			t.Errorf("secret %d: tls.key kept in the cache", i)
		}
		if h := s.Annotations[mtlsv1alpha1.AnnotationCachedHash]; h != want {
			t.Errorf("secret %d: cached hash %q, want the hash of the data seen, %q", i, h, want)
		}
		if unsafe.SliceData(s.Data[identity.SecretTrustKey]) != unsafe.SliceData(got[0].Data[identity.SecretTrustKey]) {
			t.Errorf("secret %d: ca.crt not shared with secret 0", i)
		}
	}
	// The reflector's streaming list transforms an object twice: the second
	// pass leaves the hash of the data seen.
	o, err := in.secretTransform(got[0])
	if err != nil {
		t.Fatal(err)
	}
	if h := o.(*corev1.Secret).Annotations[mtlsv1alpha1.AnnotationCachedHash]; h != want {
		t.Errorf("transformed twice: cached hash %q, want %q", h, want)
	}
	// What the API server sends never passes for a slim copy, whatever it
	// holds: an empty stringData and a forged hash are transformed anew.
	forged := identitySecret(bundle, key)
	forged.StringData = map[string]string{}
	forged.Annotations = map[string]string{mtlsv1alpha1.AnnotationCachedHash: "forged"}
	if o, err = in.secretTransform(forged); err != nil {
		t.Fatal(err)
	}
	if h := o.(*corev1.Secret).Annotations[mtlsv1alpha1.AnnotationCachedHash]; h != want {
		t.Errorf("a forged cached hash was kept: %q", h)
	}
	// Another key is other data, with another hash.
	o, err = in.secretTransform(identitySecret(bundle, strings.Repeat("L", 200)))
	if err != nil {
		t.Fatal(err)
	}
	if o.(*corev1.Secret).Annotations[mtlsv1alpha1.AnnotationCachedHash] == want {
		t.Errorf("a different tls.key has the same cached hash")
	}
	// A different bundle (a CA rotation) is its own payload.
	o, err = in.secretTransform(identitySecret(strings.Repeat("C", 900), key))
	if err != nil {
		t.Fatal(err)
	}
	if other := o.(*corev1.Secret).Data[identity.SecretTrustKey]; unsafe.SliceData(other) == unsafe.SliceData(got[0].Data[identity.SecretTrustKey]) || other[0] != 'C' {
		t.Errorf("a different bundle was mapped to the first one")
	}
}

func TestTrustConfigMapsKeepOnlyTheHashOfTheirContent(t *testing.T) {
	in := newInterner("agentmesh-system")
	out := policy.Output{BundlePEM: []byte(strings.Repeat("B", 900)), PolicyJSON: []byte(`{"mode":"Enforce"}`)}
	cases := map[string]struct {
		data   map[string]string
		binary map[string][]byte
		want   string
	}{
		"what agentmesh writes": {map[string]string{"bundle.pem": string(out.BundlePEM), "policy.json": string(out.PolicyJSON)}, nil, out.ContentHash()},
		"policy.json edited":    {map[string]string{"bundle.pem": string(out.BundlePEM), "policy.json": `{"allowAll":true}`}, nil, policy.Output{BundlePEM: out.BundlePEM, PolicyJSON: []byte(`{"allowAll":true}`)}.ContentHash()},
		"a key added":           {map[string]string{"bundle.pem": string(out.BundlePEM), "policy.json": string(out.PolicyJSON), "x": "y"}, nil, mtlsv1alpha1.CachedHashOther},
		"binary data added":     {map[string]string{"bundle.pem": string(out.BundlePEM), "policy.json": string(out.PolicyJSON)}, map[string][]byte{"x": {1}}, mtlsv1alpha1.CachedHashOther},
		"policy.json removed":   {map[string]string{"bundle.pem": string(out.BundlePEM)}, nil, mtlsv1alpha1.CachedHashOther},
		"emptied":               {nil, map[string][]byte{}, mtlsv1alpha1.CachedHashOther},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			o, err := in.configMapTransform(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "agents", OwnerReferences: writtenForAnIdentity}, Data: tc.data, BinaryData: tc.binary})
			if err != nil {
				t.Fatal(err)
			}
			cm := o.(*corev1.ConfigMap)
			if len(cm.Data) != 0 || len(cm.BinaryData) != 0 {
				t.Errorf("the cache keeps the content: %v %v", cm.Data, cm.BinaryData)
			}
			if got := cm.Annotations[mtlsv1alpha1.AnnotationCachedHash]; got != tc.want {
				t.Errorf("cached hash %q, want %q", got, tc.want)
			}
			// The reflector's streaming list transforms an object twice.
			o, err = in.configMapTransform(cm)
			if err != nil {
				t.Fatal(err)
			}
			if got := o.(*corev1.ConfigMap).Annotations[mtlsv1alpha1.AnnotationCachedHash]; got != tc.want {
				t.Errorf("transformed twice: cached hash %q, want %q", got, tc.want)
			}
		})
	}
}

func TestInternConfigMapValues(t *testing.T) {
	in := newInterner("agentmesh-system")
	bundle, policy := strings.Repeat("B", 900), `{"allow":[`+strings.Repeat(`"x",`, 60)+`"y"]}`
	cm := func() *corev1.ConfigMap {
		// Build the values at run time so that each is its own allocation.
		// A ConfigMap of the operator's namespace that no identity owns
		// keeps its data (a trust ConfigMap keeps only its hash).
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "agentmesh-system"}, Data: map[string]string{
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

func TestMetadataStringsAreShared(t *testing.T) {
	in := newInterner("agentmesh-system")
	obj := func(name string) *corev1.ConfigMap {
		// Clones: each object decoded has its own copies.
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
			Namespace: strings.Clone("agents"), Name: name,
			Labels: map[string]string{strings.Clone(mtlsv1alpha1.LabelManagedBy): strings.Clone(mtlsv1alpha1.ManagedByValue),
				strings.Clone(mtlsv1alpha1.LabelIdentity): name},
			Annotations: map[string]string{strings.Clone(mtlsv1alpha1.AnnotationPolicies): "p=1"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: strings.Clone(mtlsv1alpha1.GroupVersion.String()), Kind: strings.Clone("AgentIdentity"),
				Name: name, UID: "u", Controller: ptr.To(true)}},
		}}
	}
	var got []*corev1.ConfigMap
	for _, name := range []string{"a", "b"} {
		o, err := in.configMapTransform(obj(name))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, o.(*corev1.ConfigMap))
	}
	keyData := func(m map[string]string, key string) *byte {
		for k := range m {
			if k == key {
				return unsafe.StringData(k)
			}
		}
		t.Fatalf("no key %s in %v", key, m)
		return nil
	}
	a, b := got[0], got[1]
	for what, same := range map[string]bool{
		"namespace":          unsafe.StringData(a.Namespace) == unsafe.StringData(b.Namespace),
		"label key":          keyData(a.Labels, mtlsv1alpha1.LabelIdentity) == keyData(b.Labels, mtlsv1alpha1.LabelIdentity),
		"managed-by value":   unsafe.StringData(a.Labels[mtlsv1alpha1.LabelManagedBy]) == unsafe.StringData(b.Labels[mtlsv1alpha1.LabelManagedBy]),
		"annotation key":     keyData(a.Annotations, mtlsv1alpha1.AnnotationPolicies) == keyData(b.Annotations, mtlsv1alpha1.AnnotationPolicies),
		"owner's apiVersion": unsafe.StringData(a.OwnerReferences[0].APIVersion) == unsafe.StringData(b.OwnerReferences[0].APIVersion),
	} {
		if !same {
			t.Errorf("%s: not shared", what)
		}
	}
	if a.Labels[mtlsv1alpha1.LabelIdentity] != "a" || b.Labels[mtlsv1alpha1.LabelIdentity] != "b" || b.Annotations[mtlsv1alpha1.AnnotationPolicies] != "p=1" {
		t.Errorf("metadata changed: %v %v", a.ObjectMeta, b.ObjectMeta)
	}
}

func TestIdentitiesShareWhatTheyRepeat(t *testing.T) {
	in := newInterner("agentmesh-system")
	obj := func(name string) *mtlsv1alpha1.AgentIdentity {
		// Clones: each object decoded has its own copies.
		return &mtlsv1alpha1.AgentIdentity{
			TypeMeta: metav1.TypeMeta{APIVersion: strings.Clone(mtlsv1alpha1.GroupVersion.String()), Kind: strings.Clone("AgentIdentity")},
			ObjectMeta: metav1.ObjectMeta{Namespace: strings.Clone("agents"), Name: name,
				ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
				Labels:        map[string]string{strings.Clone("app"): name},
				Annotations: map[string]string{corev1.LastAppliedConfigAnnotation: `{"spec":{}}`,
					strings.Clone("team"): "search"}},
			Spec: mtlsv1alpha1.AgentIdentitySpec{KeyDelivery: mtlsv1alpha1.KeyDelivery(strings.Clone("Secret")), ServiceAccountName: strings.Clone("worker")},
			Status: mtlsv1alpha1.AgentIdentityStatus{
				Conditions: []metav1.Condition{{Type: strings.Clone("Ready"), Status: metav1.ConditionStatus(strings.Clone("True")),
					Reason: strings.Clone("Issued"), Message: "certificate " + name + " is valid"}},
				CASerial: strings.Clone("0a1b2c3d"), Policies: []string{strings.Clone("worker-ingress")},
				SerialNumber: name + "-serial",
			},
		}
	}
	var got []*mtlsv1alpha1.AgentIdentity
	for _, name := range []string{"a", "b"} {
		o, err := in.identityTransform(obj(name))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, o.(*mtlsv1alpha1.AgentIdentity))
	}
	a, b := got[0], got[1]
	for what, same := range map[string]bool{
		"namespace":        unsafe.StringData(a.Namespace) == unsafe.StringData(b.Namespace),
		"kind":             unsafe.StringData(a.Kind) == unsafe.StringData(b.Kind),
		"key delivery":     unsafe.StringData(string(a.Spec.KeyDelivery)) == unsafe.StringData(string(b.Spec.KeyDelivery)),
		"service account":  unsafe.StringData(a.Spec.ServiceAccountName) == unsafe.StringData(b.Spec.ServiceAccountName),
		"condition type":   unsafe.StringData(a.Status.Conditions[0].Type) == unsafe.StringData(b.Status.Conditions[0].Type),
		"condition status": unsafe.StringData(string(a.Status.Conditions[0].Status)) == unsafe.StringData(string(b.Status.Conditions[0].Status)),
		"condition reason": unsafe.StringData(a.Status.Conditions[0].Reason) == unsafe.StringData(b.Status.Conditions[0].Reason),
		"CA serial":        unsafe.StringData(a.Status.CASerial) == unsafe.StringData(b.Status.CASerial),
		"policy name":      unsafe.StringData(a.Status.Policies[0]) == unsafe.StringData(b.Status.Policies[0]),
	} {
		if !same {
			t.Errorf("%s: not shared", what)
		}
	}
	// Nothing the reconcilers read changed; only what they never read went.
	want := obj("b")
	want.ManagedFields = nil
	delete(want.Annotations, corev1.LastAppliedConfigAnnotation)
	if !equality.Semantic.DeepEqual(b, want) {
		t.Errorf("the cached identity differs from the object:\n got %+v\nwant %+v", b, want)
	}
	// An identity with only the last-applied annotation keeps none.
	only := obj("c")
	only.Annotations = map[string]string{corev1.LastAppliedConfigAnnotation: "{}"}
	o, err := in.identityTransform(only)
	if err != nil {
		t.Fatal(err)
	}
	if ann := o.(*mtlsv1alpha1.AgentIdentity).Annotations; ann != nil {
		t.Errorf("annotations %v, want none", ann)
	}
}
