package controller_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/identity"
	"github.com/agentmesh/agentmesh/internal/logging"
	"github.com/agentmesh/agentmesh/internal/operator"
	"github.com/agentmesh/agentmesh/test/cluster"
)

const operatorNamespace = "agentmesh-system"

var (
	env      *cluster.Cluster
	k8s      client.Client
	clk      = &testClock{}
	td       = spiffeid.RequireTrustDomainFromString("cluster.local")
	caSecret = types.NamespacedName{Namespace: operatorNamespace, Name: "agentmesh-ca"}

	// logs holds everything the operator logged, at the highest verbosity.
	logs = &syncBuffer{}

	// running is the operator under test.
	running *cluster.InProcess
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	// Log at the highest verbosity the operator offers, into a buffer that
	// TestNoPrivateKeyInLogs searches.
	ctrl.SetLogger(logging.Cap(zap.New(zap.WriteTo(logs), zap.Level(zapcore.Level(-127)))))

	var err error
	env, err = cluster.Start(cluster.Options{ControllerManager: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	k8s, err = client.New(env.Config, client.Options{Scheme: operator.NewScheme()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNamespace}}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := startOperator(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	stopOperator()
	if code != 0 && os.Getenv("AGENTMESH_TEST_LOGS") != "" {
		fmt.Fprintln(os.Stderr, logs.String())
	}
	return code
}

// startOperator runs the operator, exactly as cmd/manager wires it, with the
// fake clock, and waits until it has loaded the CA.
func startOperator() error {
	op, err := cluster.RunOperator(env.Config, operator.Config{
		TrustDomain:             td,
		CASecret:                caSecret,
		MaxConcurrentReconciles: 4,
		Clock:                   clk,
		// Names under example are allowed cluster-wide, as a platform team
		// would allow its public domain (TestDNSNamesAreScoped).
		DNS: identity.DNSScope{Allowed: []string{"*.example"}},
	}, ctrl.Options{})
	if err != nil {
		return err
	}
	if err := op.AwaitCA(30 * time.Second); err != nil {
		_ = op.Stop()
		return err
	}
	running = op
	return nil
}

func stopOperator() {
	if running == nil {
		return
	}
	if err := running.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "the operator ended with:", err)
	}
	running = nil
}

// testClock runs with real time, from an offset the tests move: backoffs
// and requeues expire as they would, and a test jumps to a renewal time.
type testClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *testClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

// SetTime moves the clock to t (it keeps running from there).
func (c *testClock) SetTime(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset = time.Until(t)
}

// Reset puts the clock back on real time. Tests that move the clock reset
// it when they end: the API server checks some times against its own
// clock (a PodCertificateRequest's notBefore must be within 5 minutes).
func (c *testClock) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset = 0
}

// Step moves the clock forward by d.
func (c *testClock) Step(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

// --- helpers shared by the tests ---

// waitCondition waits for an identity's condition to have the given status
// and reason, and returns the identity.
func waitCondition(t *testing.T, nn types.NamespacedName, typ string, status metav1.ConditionStatus, reason string) *mtlsv1alpha1.AgentIdentity {
	t.Helper()
	return waitConditionWithin(t, 20*time.Second, nn, typ, status, reason)
}

func waitConditionWithin(t *testing.T, timeout time.Duration, nn types.NamespacedName, typ string, status metav1.ConditionStatus, reason string) *mtlsv1alpha1.AgentIdentity {
	t.Helper()
	id := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: nn.Namespace, Name: nn.Name}}
	cluster.WaitCondition(t, k8s, id, timeout, cluster.Condition{Type: typ, Status: status, Reason: reason})
	return id
}

func waitReady(t *testing.T, nn types.NamespacedName) *mtlsv1alpha1.AgentIdentity {
	t.Helper()
	return waitCondition(t, nn, mtlsv1alpha1.ConditionReady, metav1.ConditionTrue, mtlsv1alpha1.ReasonIssued)
}

func getSecret(t *testing.T, ns, name string) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{}
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, s); err != nil {
		t.Fatalf("getting Secret %s/%s: %v", ns, name, err)
	}
	return s
}

// assertNoEvent fails when obj has an Event of that reason.
func assertNoEvent(t *testing.T, obj client.Object, kind, reason string) {
	t.Helper()
	note, found, err := cluster.FindEvent(k8s, obj, kind, reason)
	if err != nil {
		t.Fatal(err)
	}
	if found {
		t.Errorf("unexpected %s event on %s: %q", reason, obj.GetName(), note)
	}
}
