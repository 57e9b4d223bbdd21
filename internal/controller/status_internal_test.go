package controller

import (
	"context"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

// applyCounter is a client whose status writer counts applies; statusWriter
// uses nothing else of it.
type applyCounter struct {
	client.Client
	applies int
}

func (a *applyCounter) Status() client.SubResourceWriter {
	return statusApplies{SubResourceWriter: nil, a: a}
}

type statusApplies struct {
	client.SubResourceWriter
	a *applyCounter
}

func (s statusApplies) Apply(context.Context, runtime.ApplyConfiguration, ...client.SubResourceApplyOption) error {
	s.a.applies++
	return nil
}

// TestStatusWriterComparesWithItsLastWrite: a pass that starts from a cache
// still showing an older status applies what it computes whenever that
// differs from what this writer last applied, and only then; after
// writtenTTL the cache is the reference again.
func TestStatusWriterComparesWithItsLastWrite(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	w := &statusWriter{now: func() time.Time { return now }}
	c := &applyCounter{}
	withPolicies := func(p ...string) *mtlsv1alpha1.AgentIdentity {
		id := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: "worker", UID: "u1"}}
		id.Status.Policies = p
		return id
	}
	write := func(original, want *mtlsv1alpha1.AgentIdentity) {
		t.Helper()
		if err := w.write(context.Background(), c, mtlsv1alpha1.FieldManagerTrust, trustStatus, original, want); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		what           string
		cached, wanted []string
		advance        time.Duration
		applies        int
	}{
		{"a change is applied", nil, []string{"p"}, 0, 1},
		{"the cache lags: the same part is not applied again", nil, []string{"p"}, 0, 1},
		{"the cache lags: a change back to what it shows is applied", nil, nil, 0, 2},
		{"the cache lags behind both writes: nothing to apply", []string{"p"}, nil, 0, 2},
		{"the cache caught up: nothing to apply", nil, nil, 0, 2},
		{"after the TTL the cache is the reference: repaired", []string{"someone-else"}, nil, writtenTTL, 3},
	}
	for _, s := range steps {
		now = now.Add(s.advance)
		write(withPolicies(s.cached...), withPolicies(s.wanted...))
		if c.applies != s.applies {
			t.Fatalf("%s: %d applies, want %d", s.what, c.applies, s.applies)
		}
	}
	// A new identity of the same name starts from its cache.
	fresh := withPolicies()
	fresh.UID = "u2"
	if err := w.write(context.Background(), c, mtlsv1alpha1.FieldManagerTrust, trustStatus, fresh, fresh.DeepCopy()); err != nil {
		t.Fatal(err)
	}
	if c.applies != 3 {
		t.Fatalf("a new identity with nothing to change was applied (%d applies)", c.applies)
	}
}

// TestStatusPartsAreDisjoint: each trust-side field is in the trust
// reconciler's part only. The certificate reconciler once applied
// trustContentHash from its own (possibly stale) view of the identity and
// overwrote the trust reconciler's, so that a kept trust ConfigMap looked
// changed by someone else.
func TestStatusPartsAreDisjoint(t *testing.T) {
	st := &mtlsv1alpha1.AgentIdentityStatus{
		SPIFFEID: "spiffe://cluster.local/ns/a/agent/b", TrustConfigMap: "b-trust", TrustContentHash: "h", Policies: []string{"p"},
		Conditions: []metav1.Condition{
			{Type: mtlsv1alpha1.ConditionReady}, {Type: mtlsv1alpha1.ConditionIssuing}, {Type: mtlsv1alpha1.ConditionPolicyResolved},
		},
	}
	cert, trust := certificateStatus(st), trustStatus(st)
	if cert.TrustConfigMap != "" || cert.TrustContentHash != "" || cert.Policies != nil || len(cert.Conditions) != 2 {
		t.Errorf("the certificate part holds trust fields: %+v", cert)
	}
	if trust.TrustConfigMap != "b-trust" || trust.TrustContentHash != "h" || len(trust.Policies) != 1 || trust.SPIFFEID != "" ||
		len(trust.Conditions) != 1 || trust.Conditions[0].Type != mtlsv1alpha1.ConditionPolicyResolved {
		t.Errorf("the trust part: %+v", trust)
	}
}

// TestStatusWriterForgetsOldWrites: what the writer remembers of a write
// goes once writtenTTL has passed and another write comes, so that its
// memory follows the identities written recently, not every identity.
func TestStatusWriterForgetsOldWrites(t *testing.T) {
	now := time.Date(2026, 12, 8, 12, 0, 0, 0, time.UTC)
	w := &statusWriter{now: func() time.Time { return now }}
	c := &applyCounter{}
	write := func(name string) {
		t.Helper()
		id := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: name, UID: types.UID(name)}}
		want := id.DeepCopy()
		want.Status.Policies = []string{"p"}
		if err := w.write(context.Background(), c, mtlsv1alpha1.FieldManagerTrust, trustStatus, id, want); err != nil {
			t.Fatal(err)
		}
	}
	remembered := func() []string {
		var names []string
		w.written.Range(func(k, _ any) bool {
			names = append(names, k.(types.NamespacedName).Name)
			return true
		})
		slices.Sort(names)
		return names
	}
	write("a")
	write("b")
	now = now.Add(writtenTTL / 2)
	write("c")
	if got := remembered(); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("within the TTL: remembered %v, want [a b c]", got)
	}
	now = now.Add(writtenTTL/2 + time.Second)
	write("d")
	if got := remembered(); !slices.Equal(got, []string{"c", "d"}) {
		t.Fatalf("after the TTL: remembered %v, want [c d]", got)
	}
	if c.applies != 4 {
		t.Errorf("%d applies, want 4", c.applies)
	}
}
