package webhook_test

import (
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
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/agentmesh/agentmesh/internal/logging"
	"github.com/agentmesh/agentmesh/internal/operator"
	"github.com/agentmesh/agentmesh/internal/webhookcert"
	"github.com/agentmesh/agentmesh/test/cluster"
)

const operatorNamespace = "agentmesh-system"

var (
	env         *cluster.Cluster
	k8s         client.Client
	warnings    = &warningCollector{}
	warned      client.Client
	webhookPort int
	running     *runningOperator
	td          = spiffeid.RequireTrustDomainFromString("cluster.local")
)

type runningOperator struct {
	op     *operator.Operator
	cancel context.CancelFunc
	done   chan error
}

// warningCollector records the admission warnings the API server relays.
type warningCollector struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warningCollector) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func (w *warningCollector) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.msgs
	w.msgs = nil
	return out
}

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	ctrl.SetLogger(logging.Cap(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.Level(zapLevel())))))
	var err error
	env, err = cluster.Start(cluster.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	ctx := context.Background()
	if k8s, err = client.New(env.Config, client.Options{Scheme: operator.NewScheme()}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	wc := rest.CopyConfig(env.Config)
	wc.WarningHandler = warnings
	if warned, err = client.New(wc, client.Options{Scheme: operator.NewScheme()}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNamespace}}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if webhookPort, err = cluster.FreePort(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := env.InstallWebhooks(ctx, webhookPort); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := startOperator("agentmesh-webhook-ca", webhookcert.Policy{}, 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	stopOperator()
	return code
}

func zapLevel() int8 {
	if os.Getenv("AGENTMESH_TEST_LOGS") != "" {
		return -2
	}
	return int8(zapcore.ErrorLevel)
}

// startOperator runs the operator with its webhooks on 127.0.0.1 and waits
// until the webhook configurations trust it.
func startOperator(webhookCASecret string, policy webhookcert.Policy, interval time.Duration) error {
	op, err := operator.New(env.Config, operator.Config{
		TrustDomain: td,
		CASecret:    types.NamespacedName{Namespace: operatorNamespace, Name: "agentmesh-ca"},
		Webhook: operator.WebhookConfig{
			Host:         "127.0.0.1",
			Port:         webhookPort,
			CASecret:     types.NamespacedName{Namespace: operatorNamespace, Name: webhookCASecret},
			Hosts:        []string{"agentmesh-webhook.agentmesh-system.svc", "127.0.0.1"},
			ConfigName:   "agentmesh",
			CertPolicy:   policy,
			CertInterval: interval,
		},
	}, ctrl.Options{
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             ctrlconfig.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningOperator{op: op, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- op.Manager.Start(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for op.Certs.Ready(nil) != nil {
		if time.Now().After(deadline) {
			cancel()
			return fmt.Errorf("the webhook certificate was not ready within 30s: %w", op.Certs.Ready(nil))
		}
		time.Sleep(20 * time.Millisecond)
	}
	running = r
	return nil
}

func stopOperator() {
	if running == nil {
		return
	}
	running.cancel()
	if err := <-running.done; err != nil {
		fmt.Fprintln(os.Stderr, "the operator ended with:", err)
	}
	running = nil
}

func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "agents-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}
