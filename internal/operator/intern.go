package operator

import (
	"sync"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	"github.com/agentmesh/agentmesh/internal/identity"
)

// Every identity's Secret holds the same trust bundle (ca.crt), and every
// trust ConfigMap the same bundle.pem and, for identities under the same
// policies, the same policy.json. Decoded from the API, each copy is a
// separate allocation: at 10,000 identities that is tens of MiB of one
// bundle repeated. The cache transforms below make every cached copy share
// one backing array per distinct payload. The bytes are unchanged, so
// nothing that reads the cache can tell; readers get deep copies (or, with
// UnsafeDisableDeepCopy, promise not to mutate), as for any cached object.

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
}

func newInterner(operatorNamespace string) *interner {
	return &interner{operatorNamespace: operatorNamespace, strings: map[string]string{}, bytes: map[string][]byte{}}
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
// look-alike, and shares the trust bundle of an identity Secret.
func (in *interner) secretTransform(obj any) (any, error) {
	obj, err := stripManagedFields(obj)
	if err != nil {
		return obj, err
	}
	obj = shrinkLookAlike(obj, in.operatorNamespace)
	if s, ok := obj.(*corev1.Secret); ok {
		if b, ok := s.Data[identity.SecretTrustKey]; ok {
			s.Data[identity.SecretTrustKey] = in.bytesOf(b)
		}
	}
	return obj, nil
}

// configMapTransform strips managed fields, keeps only the metadata of a
// look-alike, and shares every large value of a trust ConfigMap
// (bundle.pem, policy.json).
func (in *interner) configMapTransform(obj any) (any, error) {
	obj, err := stripManagedFields(obj)
	if err != nil {
		return obj, err
	}
	obj = shrinkLookAlike(obj, in.operatorNamespace)
	if cm, ok := obj.(*corev1.ConfigMap); ok {
		for k, v := range cm.Data {
			cm.Data[k] = in.str(v)
		}
	}
	return obj, nil
}
