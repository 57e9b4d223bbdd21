// Command devcluster is `make dev`: it starts a local cluster on loopback
// (etcd, kube-apiserver and kube-controller-manager built from source by
// hack/tools.sh and, as root, a node: containerd and a kubelet running the
// images of `make images`), installs the operator with its Helm chart (a
// Pod of the operator image on the node; without a node, or with
// -operator-process, the CRDs and the manager binary as a process),
// applies config/samples/ and, with the node, the sample agents of
// config/samples/pods/, and prints what to try next. Ctrl-C stops the
// operator, the agents and the cluster and removes their data and mounts;
// no process is left behind.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/agentmesh/agentmesh/test/cluster"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "devcluster: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	root, err := cluster.RepoRoot()
	if err != nil {
		return err
	}
	manager := flag.String("manager", filepath.Join(root, "bin", "manager"), "manager binary to run")
	devDir := flag.String("dir", filepath.Join(root, "bin", "dev"), "directory for the kubeconfig and the logs")
	noSamples := flag.Bool("no-samples", false, "do not apply config/samples/")
	managerArgs := flag.String("manager-args", "", "extra flags for the operator, separated by spaces")
	withNode := flag.Bool("node", true, "also start a node (containerd and a kubelet; needs root) and run the sample agents on it")
	asProcess := flag.Bool("operator-process", false, "run the operator binary (-manager) as a process rather than the chart's Pod (always so without a node)")
	syncFrequency := flag.Duration("sync-frequency", 0, "the node's kubelet syncFrequency (how often it refreshes projected Secrets); 0 is the kubelet's default, 1m")
	flag.Parse()
	if *withNode && os.Geteuid() != 0 {
		say("not root: the node (containerd and the kubelet) needs root, so this runs the control plane alone; Pods stay Pending")
		*withNode = false
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := os.MkdirAll(*devDir, 0o755); err != nil {
		return err
	}
	cpLog, err := os.Create(filepath.Join(*devDir, "controlplane.log"))
	if err != nil {
		return err
	}
	defer func() { _ = cpLog.Close() }()

	// With a node the chart installs the CRDs, as it does for users.
	opts := cluster.Options{Output: cpLog, ControllerManager: true, WithoutCRDs: *withNode && !*asProcess}
	what := "etcd, kube-apiserver and kube-controller-manager"
	if *withNode {
		opts.Node = &cluster.NodeOptions{SyncFrequency: *syncFrequency}
		what += ", containerd and the kubelet (node " + cluster.NodeName + ")"
	}
	say("starting %s on 127.0.0.1 (logs: %s)", what, cpLog.Name())
	c, err := cluster.Start(opts)
	if err != nil {
		return err
	}
	defer func() {
		say("stopping the control plane")
		if err := c.Stop(); err != nil {
			say("stopping the control plane: %v", err)
		}
	}()
	kubeconfig := filepath.Join(*devDir, "kubeconfig")
	if err := c.WriteAdminKubeconfig(kubeconfig); err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	if err := cluster.EnsureNamespace(ctx, cs, "agentmesh-system"); err != nil {
		return err
	}

	kubectl := filepath.Join(cluster.AssetsDir(root), "kubectl")
	var exited <-chan struct{}
	if *withNode && !*asProcess {
		// The operator as users run it: the chart, its image, a Pod.
		say("installing the chart (charts/agentmesh) with the operator image of bin/images: the operator runs as a Pod on %s", cluster.NodeName)
		if err := c.InstallChart(ctx, cluster.ChartOptions{Kubeconfig: kubeconfig, Values: chartValues(strings.Fields(*managerArgs))}); err != nil {
			return err
		}
		// Its log on the terminal, as the process's would be.
		logs := exec.CommandContext(ctx, kubectl, "--kubeconfig", kubeconfig, "logs", "-f", "-n", "agentmesh-system",
			"-l", cluster.ManagerSelector, "-c", "manager", "--tail=-1")
		logs.Stdout, logs.Stderr = os.Stdout, os.Stderr
		if err := logs.Start(); err != nil {
			return err
		}
		defer func() { _ = logs.Process.Kill(); _ = logs.Wait() }()
	} else {
		stopManager, done, err := startProcess(ctx, c, *manager, kubeconfig, strings.Fields(*managerArgs))
		if err != nil {
			return err
		}
		defer stopManager()
		exited = done
	}

	if !*noSamples {
		say("applying config/samples/")
		if err := runKubectl(ctx, kubectl, kubeconfig, os.Stdout, "apply", "-f", filepath.Join(root, "config", "samples")); err != nil {
			return err
		}
		say("waiting for the sample identities to be Ready")
		if err := runKubectl(ctx, kubectl, kubeconfig, os.Stdout, "wait", "--for=condition=Ready", "agentidentity", "--all", "-n", "agents", "--timeout=60s"); err != nil {
			return err
		}
		_ = runKubectl(ctx, kubectl, kubeconfig, os.Stdout, "get", "agentidentities", "-A")
		if *withNode {
			if err := runAgents(ctx, root, kubectl, kubeconfig); err != nil {
				return err
			}
		}
	}

	fmt.Printf(`
agentmesh is running against a local control plane. In another terminal:

  export KUBECONFIG=%s
  export PATH=%s:$PATH
  kubectl get agentidentities -A -o wide
  kubectl get secret worker-tls -n agents -o jsonpath='{.data.tls\.crt}' | base64 -d | openssl x509 -noout -text
  kubectl describe agentidentity worker -n agents   # conditions, serial, renewal time, events
  kubectl get pods -A -o wide   # the operator's Pod and the sample agents (config/samples/pods/)
%s  kubectl logs deploy/planner -n agents --tail=3   # one JSON line per mTLS call to the worker
  kubectl exec deploy/worker -n agents -- /agent ls /var/run/agentmesh   # the files the kubelet projected

Press Ctrl-C to stop the operator and the control plane.
`, kubeconfig, filepath.Dir(kubectl), operatorLogHint(exited == nil))

	select {
	case <-ctx.Done():
		return nil
	case <-exited:
		return errors.New("the operator exited; see its log above")
	}
}

// operatorLogHint is the line of the hints that says where the operator's
// log is, when it runs as a Pod.
func operatorLogHint(asPod bool) string {
	if !asPod {
		return ""
	}
	return "  kubectl logs -n agentmesh-system deploy/agentmesh   # the operator's log (also on this terminal)\n"
}

// chartValues are the chart's values for make dev: the operator's extra
// flags (MANAGER_ARGS) and a log for a terminal.
func chartValues(args []string) string {
	var b strings.Builder
	b.WriteString("extraArgs:\n- --zap-encoder=console\n")
	for _, a := range args {
		fmt.Fprintf(&b, "- %q\n", a)
	}
	return b.String()
}

// startProcess runs the operator binary as a process, serving the webhooks
// on loopback (their configurations point at it; the operator fills in
// their caBundle): without a node, or with -operator-process.
func startProcess(ctx context.Context, c *cluster.Cluster, bin, kubeconfig string, args []string) (stop func(), exited <-chan struct{}, err error) {
	webhookPort, err := cluster.FreePort()
	if err != nil {
		return nil, nil, err
	}
	if err := c.InstallWebhooks(ctx, webhookPort); err != nil {
		return nil, nil, err
	}
	say("starting the operator: %s (logs below)", bin)
	m, err := cluster.StartManager(cluster.ManagerOptions{
		Binary:      bin,
		Kubeconfig:  kubeconfig,
		Output:      os.Stdout,
		WebhookPort: webhookPort,
		Args:        append([]string{"--zap-log-level=info", "--zap-encoder=console"}, args...),
	})
	if err != nil {
		return nil, nil, err
	}
	stop = func() {
		say("stopping the operator")
		if err := m.Stop(15 * time.Second); err != nil {
			say("operator: %v", err)
		}
	}
	readyCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := m.WaitReady(readyCtx); err != nil {
		stop()
		return nil, nil, err
	}
	return stop, m.Exited(), nil
}

// runAgents applies the sample agents' Deployments, waits for them, and
// shows their Pods and the files the kubelet projected into the worker.
func runAgents(ctx context.Context, root, kubectl, kubeconfig string) error {
	say("applying config/samples/pods/ (the sample agents)")
	if err := runKubectl(ctx, kubectl, kubeconfig, os.Stdout, "apply", "-f", filepath.Join(root, "config", "samples", "pods")); err != nil {
		return err
	}
	say("waiting for the sample agents to be Available")
	if err := runKubectl(ctx, kubectl, kubeconfig, os.Stdout, "wait", "--for=condition=Available", "deployment", "--all", "-n", "agents", "--timeout=120s"); err != nil {
		return err
	}
	_ = runKubectl(ctx, kubectl, kubeconfig, os.Stdout, "get", "pods", "-A", "-o", "wide")
	say("the worker's files, as the kubelet projected them")
	_ = runKubectl(ctx, kubectl, kubeconfig, os.Stdout, "exec", "deploy/worker", "-n", "agents", "--", "/agent", "ls", "/var/run/agentmesh")
	return nil
}

func say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "devcluster: "+format+"\n", args...)
}

func runKubectl(ctx context.Context, kubectl, kubeconfig string, out io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, kubectl, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Stdout, cmd.Stderr = out, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kubectl %v: %w", args, err)
	}
	return nil
}
