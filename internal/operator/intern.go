package operator

import (
	"reflect"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/identity"
	"github.com/agentmesh/agentmesh/internal/policy"
)

// Every identity's Secret holds the same trust bundle (ca.crt). Decoded
// from the API, each copy is a separate allocation: at 10,000 identities
// that is tens of MiB of one bundle repeated. The cache transforms below
// make every cached copy share one backing array per distinct payload. The
// bytes are unchanged, so nothing that reads the cache can tell; readers
// get deep copies (or, with UnsafeDisableDeepCopy, promise not to mutate),
// as for any cached object.
//
// What reconciling does not read is not kept at all: an identity Secret's
// tls.key and a trust ConfigMap's content give way to a hash of what the
// cache saw (mtlsv1alpha1.AnnotationCachedHash), which the reconcilers
// compare with the hash they recorded when they wrote the object; they
// read the object from the API server when a decision needs its data.

// internMinSize is the smallest payload worth sharing: below it the
// lookup costs more than the copy.
const internMinSize = 128

// internMaxEntries bounds the distinct payloads kept. Bundles are few (one
// per CA generation); policies are one per distinct effective policy. When
// the bound is reached the table starts afresh, so a cluster with many
// distinct policies shares less but never holds more than the bound.
const internMaxEntries = 1024

// stripManagedFields is the transform every cache of the operator applies.
var stripManagedFields = cache.TransformStripManagedFields()

// interner shares the memory of identical payloads among cached objects.
type interner struct {
	// operatorNamespace holds the objects agentmesh writes without an
	// owning identity; elsewhere those are look-alikes (lookalike.go).
	operatorNamespace string

	mu      sync.Mutex
	strings map[string]string
	bytes   map[string][]byte
	// names are the short strings every object's metadata repeats (see
	// shareMeta).
	names map[string]string
}

func newInterner(operatorNamespace string) *interner {
	return &interner{operatorNamespace: operatorNamespace, strings: map[string]string{}, bytes: map[string][]byte{}, names: map[string]string{}}
}

// name returns the shared copy of a short string that repeats; the caller
// holds mu.
func (in *interner) name(s string) string {
	if v, ok := in.names[s]; ok {
		return v
	}
	if len(in.names) >= internMaxEntries {
		clear(in.names)
	}
	in.names[s] = s
	return s
}

// shareMeta shares the strings that every cached object's metadata
// repeats: its namespace, its label and annotation keys, the managed-by
// label's value and its owner references' apiVersion and kind. Decoded,
// each is its own allocation, a few hundred bytes an object in all. (A
// map assignment to a key that is present stores the new, shared key.)
func (in *interner) shareMeta(m *metav1.ObjectMeta) {
	in.mu.Lock()
	defer in.mu.Unlock()
	m.Namespace = in.name(m.Namespace)
	for k, v := range m.Labels {
		if k == mtlsv1alpha1.LabelManagedBy {
			v = in.name(v)
		}
		m.Labels[in.name(k)] = v
	}
	for k, v := range m.Annotations {
		m.Annotations[in.name(k)] = v
	}
	for i := range m.OwnerReferences {
		r := &m.OwnerReferences[i]
		r.APIVersion, r.Kind = in.name(r.APIVersion), in.name(r.Kind)
	}
}

// str returns the shared copy of s.
func (in *interner) str(s string) string {
	if len(s) < internMinSize {
		return s
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if v, ok := in.strings[s]; ok {
		return v
	}
	if len(in.strings) >= internMaxEntries {
		clear(in.strings)
	}
	in.strings[s] = s
	return s
}

// bytesOf returns the shared copy of b.
func (in *interner) bytesOf(b []byte) []byte {
	if len(b) < internMinSize {
		return b
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if v, ok := in.bytes[string(b)]; ok {
		return v
	}
	if len(in.bytes) >= internMaxEntries {
		clear(in.bytes)
	}
	in.bytes[string(b)] = b
	return b
}

// secretTransform strips managed fields, keeps only the metadata of a
// look-alike, and of an identity Secret keeps what the certificate
// reconciler decides from: its metadata, tls.crt, ca.crt (shared) and the
// hash of the data it holds (AnnotationCachedHash), not tls.key. The
// reconciler trusts the key in place when that hash is the one it recorded
// when it wrote the Secret (AnnotationDataHash), and otherwise reads the
// Secret from the API server.
func (in *interner) secretTransform(obj any) (any, error) {
	obj, err := stripManagedFields(obj)
	if err != nil {
		return obj, err
	}
	obj = shrinkLookAlike(obj, in.operatorNamespace)
	if s, ok := obj.(*corev1.Secret); ok {
		defer in.shareMeta(&s.ObjectMeta)
		if identityOwned(s) && !sameMap(s.StringData, slimSecret) {
			if s.Annotations == nil {
				s.Annotations = map[string]string{}
			}
			s.Annotations[mtlsv1alpha1.AnnotationCachedHash] = identity.SecretDataHash(s.Data)
			delete(s.Data, identity.SecretKeyKey)
			s.StringData = slimSecret
		}
		if b, ok := s.Data[identity.SecretTrustKey]; ok {
			s.Data[identity.SecretTrustKey] = in.bytesOf(b)
		}
	}
	return obj, nil
}

// configMapTransform strips managed fields, keeps only the metadata of a
// look-alike, and of a trust ConfigMap only its metadata and the hash of
// its content (AnnotationCachedHash), which is all the trust reconciler
// decides from; it reads the content from the API server in the few cases
// that reuse it. Other ConfigMaps (the CA status in the operator's
// namespace) keep their data, large values shared.
func (in *interner) configMapTransform(obj any) (any, error) {
	obj, err := stripManagedFields(obj)
	if err != nil {
		return obj, err
	}
	obj = shrinkLookAlike(obj, in.operatorNamespace)
	if cm, ok := obj.(*corev1.ConfigMap); ok {
		defer in.shareMeta(&cm.ObjectMeta)
		if identityOwned(cm) {
			if sameMap(cm.BinaryData, slimConfigMap) {
				return cm, nil
			}
			if cm.Annotations == nil {
				cm.Annotations = map[string]string{}
			}
			cm.Annotations[mtlsv1alpha1.AnnotationCachedHash] = policy.DataContentHash(cm.Data, cm.BinaryData)
			cm.Data, cm.BinaryData = nil, slimConfigMap
			return cm, nil
		}
		for k, v := range cm.Data {
			cm.Data[k] = in.str(v)
		}
	}
	return obj, nil
}

// identityTransform strips managed fields and kubectl's last-applied
// configuration (a copy of the whole object that nothing here reads, as
// large as the object), and shares the strings that every AgentIdentity
// repeats: its metadata's (shareMeta), its API version and kind, the
// enums of its spec, its conditions' types, statuses and reasons, the CA
// serial and the names of the policies that select it. Nothing else
// changes: the reconcilers read the whole spec and status (the status
// writers compare with it), so the cached copy must stay equal to the
// object.
func (in *interner) identityTransform(obj any) (any, error) {
	obj, err := stripManagedFields(obj)
	if err != nil {
		return obj, err
	}
	id, ok := obj.(*mtlsv1alpha1.AgentIdentity)
	if !ok {
		return obj, nil
	}
	delete(id.Annotations, corev1.LastAppliedConfigAnnotation)
	if len(id.Annotations) == 0 {
		id.Annotations = nil
	}
	in.shareMeta(&id.ObjectMeta)
	in.mu.Lock()
	defer in.mu.Unlock()
	id.APIVersion, id.Kind = in.name(id.APIVersion), in.name(id.Kind)
	id.Spec.KeyDelivery = mtlsv1alpha1.KeyDelivery(in.name(string(id.Spec.KeyDelivery)))
	id.Spec.ServiceAccountName = in.name(id.Spec.ServiceAccountName)
	if k := id.Spec.PrivateKey; k != nil {
		k.Algorithm = mtlsv1alpha1.PrivateKeyAlgorithm(in.name(string(k.Algorithm)))
	}
	st := &id.Status
	for i := range st.Conditions {
		c := &st.Conditions[i]
		c.Type, c.Reason = in.name(c.Type), in.name(c.Reason)
		c.Status = metav1.ConditionStatus(in.name(string(c.Status)))
	}
	st.CASerial = in.name(st.CASerial)
	for i, p := range st.Policies {
		st.Policies[i] = in.name(p)
	}
	return id, nil
}

// The transforms may see an object twice: the reflector's streaming list
// (WatchList) transforms each object into its temporary store, and the
// queue transforms it again when the list replaces the cache's content. A
// second pass over an object slimmed already must leave it alone (its hash
// would otherwise be of what is left). Slimmed objects carry a marker that
// no decoded object can: one of these empty maps, told by its address,
// where the API server never sends anything (a Secret's write-only
// stringData; a trust ConfigMap's binaryData, which the slim copy drops).
// Readers get deep copies, in which the marker is an ordinary empty map.
var (
	slimSecret    = map[string]string{}
	slimConfigMap = map[string][]byte{}
)

// sameMap says a and b are the same map (not only equal).
func sameMap[M ~map[K]V, K comparable, V any](a, b M) bool {
	return a != nil && reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// identityOwned says an AgentIdentity controls obj: it is an identity's
// Secret or trust ConfigMap (or a look-alike in the operator's namespace,
// which may hold the same).
func identityOwned(obj metav1.Object) bool {
	ref := metav1.GetControllerOfNoCopy(obj)
	return ref != nil && ref.Kind == "AgentIdentity" && ref.APIVersion == mtlsv1alpha1.GroupVersion.String()
}
