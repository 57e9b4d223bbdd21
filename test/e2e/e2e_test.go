// Package e2e proves the whole path: the operator installed with its Helm
// chart and running as a Pod of the operator image, and agents as real
// Pods on the local node (a kubelet with containerd and runc), created from
// Deployments so the webhook sees what a controller sends, reading the
// files the kubelet projected and doing mTLS under an AgentTrustPolicy,
// through leaf and CA rotations. It needs root, as the node does.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/operator"
	"github.com/agentmesh/agentmesh/test/cluster"
)

const (
	operatorNamespace = "agentmesh-system"
	agentsNamespace   = "agents"
	// kubeletSync is the node's syncFrequency, which is how often the
	// kubelet refreshes projected Secrets and ConfigMaps (a refresh lands
	// 5-14 s after a change at 10 s).
	kubeletSync = 10 * time.Second
	// caGrace is the operator's --ca-propagation-grace: longer than the
	// kubelet's slowest refresh.
	caGrace = 25 * time.Second
	// e2ePoll is how often the tests look again: each look reads the
	// agents' logs or the node's files.
	e2ePoll = 500 * time.Millisecond
	// release is the chart's release, in operatorNamespace.
	release = "agentmesh"
	// nodeAddress is the node's loopback address, 127.0.0.nodeAddress.
	nodeAddress = 21
)

var (
	env        *cluster.Cluster
	k8s        client.Client
	cs         kubernetes.Interface
	kubeconfig string
	workDir    string
	agentBin   string
	agentImage string
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		if workDir != "" && env != nil {
			saveManagerLogs()
			fmt.Fprintln(os.Stderr, "e2e: the manager's and the cluster's logs are in", workDir, "(AGENTMESH_E2E_KEEP=1 keeps them)")
		}
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
	if os.Geteuid() != 0 {
		return fail(errors.New("the end-to-end suite runs its agents on the local node, which needs root (containerd and the kubelet mount filesystems)"))
	}
	// The images the node runs, from the code as it is now.
	if err := cluster.BuildImages(root, cluster.ImagesDir(root)); err != nil {
		return fail(err)
	}
	tag, err := cluster.ImageTag(root)
	if err != nil {
		return fail(err)
	}
	agentImage = cluster.AgentImage.Ref(tag)
	// The same agent as a local binary, for the calls the tests make from
	// outside the node.
	agentBin = filepath.Join(workDir, "agent")
	build := exec.Command("go", "build", "-o", agentBin, "./examples/agent")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fail(fmt.Errorf("building the example agent: %w", err))
	}

	nodeLog, err := os.Create(filepath.Join(workDir, "cluster.log"))
	if err != nil {
		return fail(err)
	}
	defer func() { _ = nodeLog.Close() }()
	// The chart brings the CRDs. The node has its own loopback address:
	// test/helm's nodes, which may run beside this suite, run the chart's
	// hostNetwork manager on the same ports at 127.0.0.1 and 127.0.0.2.
	if env, err = cluster.Start(cluster.Options{WithoutCRDs: true, Output: nodeLog,
		Node: &cluster.NodeOptions{SyncFrequency: kubeletSync, FirstAddress: nodeAddress}}); err != nil {
		return fail(fmt.Errorf("%w (the cluster's log: %s)", err, nodeLog.Name()))
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
		if err := cluster.EnsureNamespace(ctx, cs, ns); err != nil {
			return fail(err)
		}
	}
	if err := installChart(ctx); err != nil {
		return fail(err)
	}
	defer saveManagerLogs()

	code := m.Run()
	if code != 0 {
		fmt.Fprintln(os.Stderr, "e2e: the manager's and the cluster's logs are in", workDir, "(AGENTMESH_E2E_KEEP=1 keeps them)")
	}
	return code
}

// podsOf lists the Pods of an agent's Deployment, oldest first.
func podsOf(t *testing.T, deployment string) []corev1.Pod {
	t.Helper()
	pods, err := cs.CoreV1().Pods(agentsNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: appLabel + "=" + deployment})
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(pods.Items, func(i, j int) bool {
		return pods.Items[i].CreationTimestamp.Before(&pods.Items[j].CreationTimestamp) ||
			pods.Items[i].CreationTimestamp.Equal(&pods.Items[j].CreationTimestamp) && pods.Items[i].Name < pods.Items[j].Name
	})
	return pods.Items
}

// podOf is the one running Pod of an agent's Deployment.
func podOf(t *testing.T, deployment string) *corev1.Pod {
	t.Helper()
	var running []corev1.Pod
	for _, p := range podsOf(t, deployment) {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			running = append(running, p)
		}
	}
	if len(running) != 1 {
		t.Fatalf("%s: %d running Pods, want 1", deployment, len(running))
	}
	return &running[0]
}

// logOf is the log of a Pod's agent container, read through the API server
// from the kubelet.
func logOf(t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	b, err := cs.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{Container: "agent"}).DoRaw(context.Background())
	if err != nil && pod.Status.Phase == corev1.PodRunning {
		// Before its container starts, a Pod has no log yet.
		t.Logf("the log of Pod %s: %v", pod.Name, err)
	}
	return string(b)
}

// results reads the JSON lines the calling agent of a Deployment wrote.
func results(t *testing.T, deployment string) []Result {
	t.Helper()
	pods := podsOf(t, deployment)
	if len(pods) == 0 {
		return nil
	}
	return parseResults(logOf(t, &pods[0]))
}

func parseResults(log string) []Result {
	var out []Result
	sc := bufio.NewScanner(strings.NewReader(log))
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

// volumeDir is the agentmesh volume of a Deployment's running Pod, as the
// kubelet wrote it on the node.
func volumeDir(t *testing.T, deployment string) string {
	t.Helper()
	return env.ProjectedVolumeDir(podOf(t, deployment), mtlsv1alpha1.VolumeName)
}

// Result mirrors the agent's JSON lines.
type Result struct {
	Time time.Time `json:"time"`
	Conn string    `json:"conn"`
	// Tool and Listed: the MCP client's lines.
	Tool   string   `json:"tool"`
	Listed []string `json:"listed"`
	OK     bool     `json:"ok"`
	Error  string   `json:"error"`
	Reply  *struct {
		Server       string `json:"server"`
		ServerSerial string `json:"serverSerial"`
		Client       string `json:"client"`
		ClientSerial string `json:"clientSerial"`
	} `json:"reply"`
}
