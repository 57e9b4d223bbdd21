package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

// An AgentIdentity's status has two writers, each applying its own part
// with server-side apply under its own field manager, so neither overwrites
// the other's fields or conditions (conditions are a map keyed by type):
//
//   - the certificate reconciler (FieldManagerCertificate): spiffeID, the
//     certificate fields, failures, Pod counts, observedGeneration and the
//     Ready and Issuing conditions;
//   - the trust reconciler (FieldManagerTrust): trustConfigMap, policies
//     and the PolicyResolved condition.
//
// A field a writer leaves out of its part is removed when that writer owned
// it, so a part is always the whole truth of its writer.

// certificateStatus is the certificate reconciler's part of st.
func certificateStatus(st *mtlsv1alpha1.AgentIdentityStatus) *mtlsv1alpha1.AgentIdentityStatus {
	part := st.DeepCopy()
	part.TrustConfigMap, part.Policies = "", nil
	part.Conditions = conditionsOf(st, mtlsv1alpha1.ConditionReady, mtlsv1alpha1.ConditionIssuing)
	return part
}

// trustStatus is the trust reconciler's part of st.
func trustStatus(st *mtlsv1alpha1.AgentIdentityStatus) *mtlsv1alpha1.AgentIdentityStatus {
	return &mtlsv1alpha1.AgentIdentityStatus{
		TrustConfigMap: st.TrustConfigMap,
		Policies:       slices.Clone(st.Policies),
		Conditions:     conditionsOf(st, mtlsv1alpha1.ConditionPolicyResolved),
	}
}

func conditionsOf(st *mtlsv1alpha1.AgentIdentityStatus, types ...string) []metav1.Condition {
	var out []metav1.Condition
	for _, c := range st.Conditions {
		if slices.Contains(types, c.Type) {
			out = append(out, c)
		}
	}
	return out
}

// statusWriter applies one writer's part of AgentIdentity statuses; its
// zero value is ready to use.
type statusWriter struct {
	// written remembers a hash of the part last applied per identity, so
	// that a pass that runs before the cache has caught up with that write
	// does not apply the same part again.
	written sync.Map // types.NamespacedName -> writtenPart
}

type writtenPart struct {
	uid  types.UID
	hash uint64
}

// write applies, as field manager owner, the part of id's status that part
// selects, when it differs from that part of original (what the pass
// started from).
func (w *statusWriter) write(ctx context.Context, c client.Client, owner string,
	part func(*mtlsv1alpha1.AgentIdentityStatus) *mtlsv1alpha1.AgentIdentityStatus, original, id *mtlsv1alpha1.AgentIdentity) error {
	mine := part(&id.Status)
	h := hashJSON(mine)
	if h == hashJSON(part(&original.Status)) {
		return nil
	}
	key := client.ObjectKeyFromObject(id)
	if prev, ok := w.written.Load(key); ok && prev.(writtenPart) == (writtenPart{id.UID, h}) {
		// Applied by an earlier pass; the cache has not caught up yet.
		return nil
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(mine)
	if err != nil {
		return fmt.Errorf("encoding the status: %w", err)
	}
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(mtlsv1alpha1.GroupVersion.WithKind("AgentIdentity"))
	u.SetNamespace(id.Namespace)
	u.SetName(id.Name)
	// The UID makes the apply fail rather than land on a new identity of
	// the same name.
	u.SetUID(id.UID)
	u.Object["status"] = obj
	if err := c.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u),
		client.FieldOwner(owner), client.ForceOwnership); err != nil {
		return client.IgnoreNotFound(err)
	}
	w.written.Store(key, writtenPart{id.UID, h})
	return nil
}

// forget drops what the writer remembers of a deleted identity.
func (w *statusWriter) forget(key types.NamespacedName) { w.written.Delete(key) }

// hashJSON hashes the JSON form of v, which is what the API server stores
// (times at second precision).
func hashJSON(v any) uint64 {
	b, _ := json.Marshal(v)
	h := fnv.New64a()
	_, _ = h.Write(b)
	return h.Sum64()
}
