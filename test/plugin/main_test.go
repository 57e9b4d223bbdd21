// Package plugin tests kubectl-agentmesh against a real kube-apiserver and
// etcd, with the operator running in the test's process (test/cluster), by
// running its commands as a user would, with a kubeconfig.
package plugin

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
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
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/logging"
	"github.com/agentmesh/agentmesh/internal/operator"
	"github.com/agentmesh/agentmesh/test/cluster"
)

const operatorNamespace = "agentmesh-system"

var (
	env        *cluster.Cluster
	k8s        client.Client
	kubeconfig string
	td         = spiffeid.RequireTrustDomainFromString("cluster.local")
	running    *cluster.InProcess
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	level := zapcore.ErrorLevel
	if os.Getenv("AGENTMESH_TEST_LOGS") != "" {
		level = zapcore.DebugLevel
	}
	ctrl.SetLogger(logging.Cap(zap.New(zap.WriteTo(os.Stderr), zap.Level(level))))
	var err error
	if env, err = cluster.Start(cluster.Options{ControllerManager: true}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	ctx := context.Background()
	if k8s, err = client.New(env.Config, client.Options{Scheme: operator.NewScheme()}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir, err := os.MkdirTemp("", "agentmesh-plugin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := env.WriteAdminKubeconfig(kubeconfig); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNamespace}}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	port, err := cluster.FreePort()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := env.InstallWebhooks(ctx, port); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	running, err = cluster.RunOperator(env.Config, operator.Config{
		TrustDomain: td,
		CASecret:    types.NamespacedName{Namespace: operatorNamespace, Name: "agentmesh-ca"},
		Webhook: operator.WebhookConfig{
			Host: "127.0.0.1", Port: port,
			CASecret:   types.NamespacedName{Namespace: operatorNamespace, Name: "agentmesh-webhook-ca"},
			Hosts:      []string{"agentmesh-webhook.agentmesh-system.svc", "127.0.0.1"},
			ConfigName: "agentmesh",
		},
		// Rotations in seconds, for rotate-ca.
		Rotation: ca.RotationPolicy{RotateAt: 0.5, Grace: 2 * time.Second, Lifetime: ca.DefaultLifetime},
	}, ctrl.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := running.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "the operator ended with:", err)
		}
	}()
	if err := running.AwaitCA(30 * time.Second); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := running.AwaitWebhookCertificate(30 * time.Second); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// status reads agentmesh-ca-status, which the rotation controller
	// writes just after the CA is loaded.
	if err := cluster.Poll(ctx, 30*time.Second, "agentmesh-ca-status", func() error {
		return k8s.Get(ctx, types.NamespacedName{Namespace: operatorNamespace, Name: "agentmesh-ca-status"}, &corev1.ConfigMap{})
	}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// result is what one run of kubectl-agentmesh printed and returned.
type result struct {
	code           int
	stdout, stderr string
}

// run runs kubectl-agentmesh with the admin kubeconfig.
func run(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code, stdout, stderr := cluster.RunPlugin(ctx, kubeconfig, args...)
	return result{code: code, stdout: stdout, stderr: stderr}
}

func waitReady(t *testing.T, ns, name string) *mtlsv1alpha1.AgentIdentity {
	t.Helper()
	id := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	cluster.WaitCondition(t, k8s, id, 30*time.Second, cluster.Condition{Type: mtlsv1alpha1.ConditionReady, Status: metav1.ConditionTrue})
	return id
}
