// Package e2e proves the whole path: the manager binary as a process
// against a local control plane with the webhooks registered, agent Pods
// mutated by the webhook and run by a local pod runner that lays out their
// volumes as the kubelet does, and real agent processes doing mTLS under
// an AgentTrustPolicy, through leaf and CA rotations.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/agentmesh/agentmesh/internal/operator"
	"github.com/agentmesh/agentmesh/test/cluster"
	"github.com/agentmesh/agentmesh/test/e2e/podrunner"
)

const (
	operatorNamespace = "agentmesh-system"
	agentsNamespace   = "agents"
	agentImage        = "agentmesh-e2e-agent"
)

var (
	env        *cluster.Cluster
	k8s        client.Client
	cs         kubernetes.Interface
	manager    *cluster.Manager
	managerLog *syncFile
	runner     *podrunner.Runner
	kubeconfig string
	workDir    string
	agentBin   string
)

// syncFile is a log file written by the manager and read by the tests.
type syncFile struct {
	mu sync.Mutex
	f  *os.File
}

func (s *syncFile) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f.Write(p)
}

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	var err error
	if workDir, err = os.MkdirTemp("", "agentmesh-e2e-"); err != nil {
		return fail(err)
	}
	defer func() {
		if os.Getenv("AGENTMESH_E2E_KEEP") == "" {
			_ = os.RemoveAll(workDir)
		} else {
			fmt.Fprintln(os.Stderr, "e2e: kept", workDir)
		}
	}()
	root, err := cluster.RepoRoot()
	if err != nil {
		return fail(err)
	}
	managerBin := filepath.Join(workDir, "manager")
	agentBin = filepath.Join(workDir, "agent")
	for bin, pkg := range map[string]string{managerBin: "./cmd/manager", agentBin: "./examples/agent"} {
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		cmd.Dir, cmd.Stdout, cmd.Stderr = root, os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fail(fmt.Errorf("building %s: %w", pkg, err))
		}
	}

	if env, err = cluster.Start(cluster.Options{ControllerManager: true}); err != nil {
		return fail(err)
	}
	defer func() { _ = env.Stop() }()
	kubeconfig = filepath.Join(workDir, "kubeconfig")
	if err := env.WriteAdminKubeconfig(kubeconfig); err != nil {
		return fail(err)
	}
	if k8s, err = client.New(env.Config, client.Options{Scheme: operator.NewScheme()}); err != nil {
		return fail(err)
	}
	if cs, err = kubernetes.NewForConfig(env.Config); err != nil {
		return fail(err)
	}
	ctx := context.Background()
	for _, ns := range []string{operatorNamespace, agentsNamespace} {
		if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return fail(err)
		}
	}
	webhookPort, err := cluster.FreePort()
	if err != nil {
		return fail(err)
	}
	if err := env.InstallWebhooks(ctx, webhookPort); err != nil {
		return fail(err)
	}
	f, err := os.Create(filepath.Join(workDir, "manager.log"))
	if err != nil {
		return fail(err)
	}
	managerLog = &syncFile{f: f}
	manager, err = cluster.StartManager(cluster.ManagerOptions{
		Binary:      managerBin,
		Kubeconfig:  kubeconfig,
		WebhookPort: webhookPort,
		Output:      managerLog,
		Args: []string{
			// The highest verbosity: the logs are searched for key material.
			"--zap-log-level=10",
			"--ca-propagation-grace=3s",
			"--ca-reissue-rate=50",
		},
	})
	if err != nil {
		return fail(err)
	}
	defer func() { _ = manager.Stop(15 * time.Second) }()
	readyCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := manager.WaitReady(readyCtx); err != nil {
		return fail(err)
	}

	runCtx, stopRunner := context.WithCancel(ctx)
	runner = &podrunner.Runner{Client: cs, Namespace: agentsNamespace, Dir: filepath.Join(workDir, "pods"),
		Images: map[string]string{agentImage: agentBin}}
	runnerDone := make(chan error, 1)
	go func() { runnerDone <- runner.Run(runCtx) }()
	defer func() {
		stopRunner()
		if err := <-runnerDone; err != nil {
			fmt.Fprintln(os.Stderr, "e2e: pod runner:", err)
		}
	}()
	code := m.Run()
	if code != 0 {
		fmt.Fprintln(os.Stderr, "e2e: the manager's log is in", filepath.Join(workDir, "manager.log"), "(AGENTMESH_E2E_KEEP=1 keeps it)")
	}
	return code
}

// results reads the JSON lines a calling agent wrote.
func results(t *testing.T, podName string) []Result {
	t.Helper()
	procs := runner.Processes(podName)
	if len(procs) == 0 {
		return nil
	}
	f, err := os.Open(procs[0].Log)
	if err != nil {
		return nil
	}
	defer func() { _ = f.Close() }()
	var out []Result
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var r Result
		if err := json.Unmarshal(line, &r); err == nil {
			out = append(out, r)
		}
	}
	return out
}

// Result mirrors the agent's JSON lines.
type Result struct {
	Time  time.Time `json:"time"`
	Conn  string    `json:"conn"`
	OK    bool      `json:"ok"`
	Error string    `json:"error"`
	Reply *struct {
		Server       string `json:"server"`
		ServerSerial string `json:"serverSerial"`
		Client       string `json:"client"`
		ClientSerial string `json:"clientSerial"`
	} `json:"reply"`
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
		time.Sleep(200 * time.Millisecond)
	}
}

func logOf(podName string) string {
	var b strings.Builder
	for _, p := range runner.Processes(podName) {
		b.WriteString(podrunner.ReadLog(p))
	}
	return b.String()
}
