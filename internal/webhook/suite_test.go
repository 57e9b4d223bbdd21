package webhook_test

import (
	"context"
	"flag"
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
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

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
	running     *cluster.InProcess
	td          = spiffeid.RequireTrustDomainFromString("cluster.local")
)

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
	if fuzzingOnly() {
		return m.Run()
	}
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

// fuzzingOnly reports a fuzz run with no test selected (-fuzz X -run '^$',
// as make fuzz runs it): the fuzz targets need no cluster.
func fuzzingOnly() bool {
	flag.Parse()
	fuzz, run := flag.Lookup("test.fuzz"), flag.Lookup("test.run")
	return fuzz != nil && fuzz.Value.String() != "" && run != nil && run.Value.String() == "^$"
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
	op, err := cluster.RunOperator(env.Config, operator.Config{
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
	}, ctrl.Options{})
	if err != nil {
		return err
	}
	if err := op.AwaitWebhookCertificate(30 * time.Second); err != nil {
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
