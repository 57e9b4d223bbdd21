package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/operator"
)

// The helpers below are the one test harness of the repository: every test
// that polls, makes a namespace, waits for a condition or an Event, or runs
// the operator in its own process uses them, and each cleans up with
// t.Cleanup.

// PollInterval is how often Eventually tries again.
const PollInterval = 25 * time.Millisecond

// ErrStop wraps an error that ends a Poll (or an Eventually) at once.
type ErrStop struct{ error }

// Poll calls f every 200 ms until it returns nil, returns an ErrStop, or
// timeout passes; the error names what was awaited.
func Poll(ctx context.Context, timeout time.Duration, what string, f func() error) error {
	if err := poll(ctx, 200*time.Millisecond, timeout, what, f); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	return nil
}

// Eventually calls f every PollInterval until it returns nil, and fails the
// test with f's last error when timeout passes first (or at once, on an
// ErrStop).
func Eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	EventuallyEvery(t, PollInterval, timeout, what, f)
}

// EventuallyEvery is Eventually with its own interval, for checks that are
// expensive (reading a node's files, listing many objects).
func EventuallyEvery(t testing.TB, interval, timeout time.Duration, what string, f func() error) {
	t.Helper()
	if err := poll(context.Background(), interval, timeout, what, f); err != nil {
		t.Fatal(err)
	}
}

func poll(ctx context.Context, interval, timeout time.Duration, what string, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := f()
		if err == nil {
			return nil
		}
		var stop ErrStop
		if errors.As(err, &stop) {
			return fmt.Errorf("%s: %w", what, stop.error)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not within %s: %w", what, timeout, err)
		case <-time.After(interval):
		}
	}
}

// NewClient is an admin client of the cluster with the operator's scheme,
// able to watch.
func (c *Cluster) NewClient(t testing.TB) client.WithWatch {
	t.Helper()
	cl, err := client.NewWithWatch(c.Config, client.Options{Scheme: operator.NewScheme()})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// ForTest starts a control plane of the test's own and stops it when the
// test ends.
func ForTest(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
	})
	return c
}

// NewNamespace creates a namespace named prefix plus a random suffix and
// deletes it when the test ends.
func NewNamespace(t testing.TB, c client.Client, prefix string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix}}
	if err := c.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating a namespace: %v", err)
	}
	t.Cleanup(func() { deleteNamespace(t, c, ns) })
	return ns.Name
}

// NewIdentity is an AgentIdentity named ns/name with the defaults of its
// API, changed by mutate in order.
func NewIdentity(ns, name string, mutate ...func(*mtlsv1alpha1.AgentIdentity)) *mtlsv1alpha1.AgentIdentity {
	id := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	for _, m := range mutate {
		m(id)
	}
	return id
}

// Create creates obj and fails the test if it cannot. It registers no
// cleanup: obj goes when its namespace does.
func Create(t testing.TB, c client.Client, obj client.Object) {
	t.Helper()
	if err := c.Create(context.Background(), obj); err != nil {
		t.Fatalf("creating %T %s: %v", obj, obj.GetName(), err)
	}
}

// CreateNamespaces creates namespaces with the given names (for tests on a
// control plane of their own, where names are fixed) and deletes them when
// the test ends.
func CreateNamespaces(t testing.TB, c client.Client, names ...string) {
	t.Helper()
	for _, name := range names {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
		if err := c.Create(context.Background(), ns); err != nil {
			t.Fatalf("creating namespace %s: %v", name, err)
		}
		t.Cleanup(func() { deleteNamespace(t, c, ns) })
	}
}

func deleteNamespace(t testing.TB, c client.Client, ns *corev1.Namespace) {
	if err := c.Delete(context.Background(), ns); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("deleting namespace %s: %v", ns.Name, err)
	}
}

// Conditioned is an object with status conditions.
type Conditioned interface {
	client.Object
	GetConditions() []metav1.Condition
}

// Condition is what WaitCondition waits for. Empty fields match anything;
// Message matches a condition whose message contains it.
type Condition struct {
	Type    string
	Status  metav1.ConditionStatus
	Reason  string
	Message string
	// Current also requires the condition's observedGeneration to be the
	// object's generation.
	Current bool
}

func (w Condition) String() string {
	s := w.Type + "=" + string(w.Status)
	if w.Reason != "" {
		s += "/" + w.Reason
	}
	if w.Message != "" {
		s += fmt.Sprintf(" %q", w.Message)
	}
	return s
}

// Matches says whether obj has the condition.
func (w Condition) Matches(obj Conditioned) error {
	c := meta.FindStatusCondition(obj.GetConditions(), w.Type)
	switch {
	case c == nil:
		return fmt.Errorf("no %s condition", w.Type)
	case w.Status != "" && c.Status != w.Status,
		w.Reason != "" && c.Reason != w.Reason,
		w.Message != "" && !strings.Contains(c.Message, w.Message):
		return fmt.Errorf("condition is %s=%s/%s %q", c.Type, c.Status, c.Reason, c.Message)
	case w.Current && c.ObservedGeneration != obj.GetGeneration():
		return fmt.Errorf("condition observed generation %d, object at %d", c.ObservedGeneration, obj.GetGeneration())
	}
	return nil
}

// WaitCondition reads obj (by its namespace and name) until it has the
// condition, and fails the test when timeout passes first. obj holds the
// last read.
func WaitCondition(t testing.TB, c client.Client, obj Conditioned, timeout time.Duration, want Condition) {
	t.Helper()
	key := client.ObjectKeyFromObject(obj)
	Eventually(t, timeout, fmt.Sprintf("%T %s %s", obj, key, want), func() error {
		if err := c.Get(context.Background(), key, obj); err != nil {
			return err
		}
		return want.Matches(obj)
	})
}

// FindEvent returns the note of an Event with the reason about obj (of the
// given kind), and whether there is one.
func FindEvent(c client.Client, obj client.Object, kind, reason string) (string, bool, error) {
	list := &eventsv1.EventList{}
	if err := c.List(context.Background(), list, client.InNamespace(obj.GetNamespace())); err != nil {
		return "", false, err
	}
	for _, e := range list.Items {
		if e.Regarding.Name == obj.GetName() && e.Regarding.Kind == kind && e.Reason == reason {
			return e.Note, true, nil
		}
	}
	return "", false, nil
}

// WaitEvent waits up to timeout for an Event with the reason about obj and
// returns its note.
func WaitEvent(t testing.TB, c client.Client, obj client.Object, kind, reason string, timeout time.Duration) string {
	t.Helper()
	var note string
	Eventually(t, timeout, "event "+reason+" on "+kind+" "+obj.GetName(), func() error {
		n, ok, err := FindEvent(c, obj, kind, reason)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("no %s event yet", reason)
		}
		note = n
		return nil
	})
	return note
}
