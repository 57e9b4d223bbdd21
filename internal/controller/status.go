package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"sync/atomic"
	"time"

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
//   - the trust reconciler (FieldManagerTrust): trustConfigMap,
//     trustContentHash, policies and the PolicyResolved condition.
//
// A field a writer leaves out of its part is removed when that writer owned
// it, so a part is always the whole truth of its writer.

// certificateStatus is the certificate reconciler's part of st.
func certificateStatus(st *mtlsv1alpha1.AgentIdentityStatus) *mtlsv1alpha1.AgentIdentityStatus {
	part := st.DeepCopy()
	part.TrustConfigMap, part.TrustContentHash, part.Policies = "", "", nil
	part.Conditions = conditionsOf(st, mtlsv1alpha1.ConditionReady, mtlsv1alpha1.ConditionIssuing)
	return part
}

// trustStatus is the trust reconciler's part of st.
func trustStatus(st *mtlsv1alpha1.AgentIdentityStatus) *mtlsv1alpha1.AgentIdentityStatus {
	return &mtlsv1alpha1.AgentIdentityStatus{
		TrustConfigMap:   st.TrustConfigMap,
		TrustContentHash: st.TrustContentHash,
		Policies:         slices.Clone(st.Policies),
		Conditions:       conditionsOf(st, mtlsv1alpha1.ConditionPolicyResolved),
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
	// written remembers a hash of the part last applied per identity. For a
	// while after a write the cache may still show an older status: a pass
	// then compares with what it applied, not with the cache, so it neither
	// applies the same part again nor skips a change back to what the stale
	// cache happens to show.
	written sync.Map // types.NamespacedName -> writtenPart
	// sweptAt is when written was last rid of the parts older than
	// writtenTTL (Unix nanoseconds): they are never read again, and at
	// 10,000 identities they held about 4.5 MiB.
	sweptAt atomic.Int64
	// now is the real clock (cache lag is real time); nil means time.Now.
	now func() time.Time
}

type writtenPart struct {
	uid  types.UID
	hash uint64
	at   time.Time
}

// writtenTTL is how long a write is trusted over the cache: far longer than
// a watch event takes to arrive, short enough that a status changed by
// someone else is repaired by a later pass.
const writtenTTL = 30 * time.Second

// write applies, as field manager owner, the part of id's status that part
// selects, when it differs from what the status holds: the part this writer
// applied within writtenTTL, or else that part of original (what the pass
// started from, as cached).
func (w *statusWriter) write(ctx context.Context, c client.Client, owner string,
	part func(*mtlsv1alpha1.AgentIdentityStatus) *mtlsv1alpha1.AgentIdentityStatus, original, id *mtlsv1alpha1.AgentIdentity) error {
	mine := part(&id.Status)
	h := hashJSON(mine)
	key := client.ObjectKeyFromObject(id)
	now := time.Now
	if w.now != nil {
		now = w.now
	}
	w.sweep(now())
	current := hashJSON(part(&original.Status))
	if prev, ok := w.written.Load(key); ok {
		if p := prev.(writtenPart); p.uid == id.UID && now().Sub(p.at) < writtenTTL {
			current = p.hash
		}
	}
	if h == current {
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
	w.written.Store(key, writtenPart{uid: id.UID, hash: h, at: now()})
	return nil
}

// sweep drops the parts applied more than writtenTTL before now, at most
// once per writtenTTL.
func (w *statusWriter) sweep(now time.Time) {
	last := w.sweptAt.Load()
	if now.Sub(time.Unix(0, last)) < writtenTTL || !w.sweptAt.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	w.written.Range(func(k, v any) bool {
		if now.Sub(v.(writtenPart).at) >= writtenTTL {
			w.written.CompareAndDelete(k, v)
		}
		return true
	})
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
