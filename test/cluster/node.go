package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// NodeName is the name of the (first) local node.
const NodeName = "node1"

// nodeName and nodeIP are the name and loopback address of node i (from 0):
// node1 on 127.0.0.1, node2 on 127.0.0.2, and so on (from 127.0.0.first
// when first is set). Every node is a kubelet with its own containerd on
// the same machine; hostNetwork Pods of different nodes bind the same ports
// on different loopback addresses.
func nodeName(i int) string { return "node" + strconv.Itoa(i+1) }
func nodeIP(i, first int) string {
	return "127.0.0." + strconv.Itoa(max(first, 1)+i)
}

// ErrNotRoot is returned by Start when a node is asked for and the process
// is not root: containerd and the kubelet mount filesystems and run
// containers, which only root may do.
var ErrNotRoot = errors.New("cluster: the node (containerd and the kubelet) needs root")

// NodeOptions configure the local node: containerd with Debian's runc and
// the CNI loopback plugin, and a kubelet registered as node1.
type NodeOptions struct {
	// Nodes is how many nodes to start (at most 8); 0 means 1.
	Nodes int
	// FirstAddress is the last byte of the first node's loopback address
	// (127.0.0.FirstAddress; the next nodes follow); 0 means 1. Clusters
	// that run side by side (the test packages do) and run hostNetwork Pods
	// on fixed ports, such as the chart's manager, need different ones.
	FirstAddress int
	// SyncFrequency is the kubelet's syncFrequency, which is also how often
	// it refreshes the Secrets and ConfigMaps projected into Pods; 0 means
	// the kubelet's default (1m).
	SyncFrequency time.Duration
}

// node is the running node: containerd and the kubelet as child processes,
// their state under one directory.
type node struct {
	name       string
	ip         string
	dir        string
	socket     string
	containerd *process
	kubelet    *process
	out        io.Writer
	assets     string
	runc       string
	tag        string
}

// process is a child process that is stopped with SIGTERM.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startProcess starts bin with env added to this process's environment.
func startProcess(name string, out io.Writer, env []string, bin string, args ...string) (*process, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cluster: starting %s: %w", name, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// stop sends SIGTERM and kills the process after grace.
func (p *process) stop(grace time.Duration) {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// nodeDirPrefix names the node directories in the temporary directory; a
// directory whose owner process is gone is cleaned up by the next Start.
const nodeDirPrefix = "agentmesh-node-"

// nodeAPIServerFlags are the kube-apiserver flags a real node needs: the
// Node authorizer and NodeRestriction for a kubelet that authenticates as
// system:node:node1, the ServiceAccount admission plugin (envtest disables
// it) so Pods get their service account token, and a loopback Service CIDR
// (envtest's is 10.0.0.0/24). The API server calls a webhook Service at
// its ClusterIP:port (no aggregator routing: that resolves a Service
// through its EndpointSlices, which cannot hold the Pods' loopback
// addresses), where the cluster's Service proxy listens and forwards to a
// ready Pod; there is no kube-proxy.
func nodeAPIServerFlags(serviceCIDR string) map[string]string {
	return map[string]string{
		"authorization-mode":              "Node,RBAC",
		"enable-admission-plugins":        "NodeRestriction",
		"disable-admission-plugins":       "",
		"service-cluster-ip-range":        serviceCIDR,
		"kubelet-preferred-address-types": "InternalIP,Hostname",
	}
}

// startNodes starts opts.Nodes nodes, one after the other.
func (c *Cluster) startNodes(ctx context.Context, opts NodeOptions, assets string, out io.Writer) error {
	count := max(opts.Nodes, 1)
	if count > 8 {
		return fmt.Errorf("cluster: %d nodes asked for, at most 8", count)
	}
	if first := max(opts.FirstAddress, 1); first+count-1 > 99 {
		return fmt.Errorf("cluster: nodes from 127.0.0.%d: at most 127.0.0.99", first)
	}
	cleanStaleNodes(out)
	for i := range count {
		if err := c.startNode(ctx, i, opts, assets, out); err != nil {
			return err
		}
	}
	return nil
}

// startNode starts containerd, imports the images of ImagesDir, and starts
// the kubelet of node i with a node client certificate, then waits for the
// node to be Ready.
func (c *Cluster) startNode(ctx context.Context, i int, opts NodeOptions, assets string, out io.Writer) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		return errors.New("cluster: runc not found: install Debian's runc package (.ci/run does)")
	}
	if _, err := os.Stat(cniLoopback); err != nil {
		return fmt.Errorf("cluster: %s not found: install Debian's containernetworking-plugins package (.ci/run does)", cniLoopback)
	}
	for _, b := range []string{"kubelet", "containerd", "ctr", "containerd-shim-runc-v2"} {
		if _, err := os.Stat(filepath.Join(assets, b)); err != nil {
			return fmt.Errorf("cluster: %s not found in %s: run `make tools` first", b, assets)
		}
	}
	for _, img := range Images {
		if _, err := os.Stat(filepath.Join(ImagesDir(c.Root), img.File())); err != nil {
			return fmt.Errorf("cluster: image %s not found in %s: run `make images` first", img.File(), ImagesDir(c.Root))
		}
	}
	tag, err := ImageTag(c.Root)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", nodeDirPrefix)
	if err != nil {
		return err
	}
	if out == nil {
		out = io.Discard
	}
	n := &node{name: nodeName(i), ip: nodeIP(i, opts.FirstAddress), dir: dir, socket: filepath.Join(dir, "containerd", "containerd.sock"),
		out: out, assets: assets, runc: runc, tag: tag}
	c.nodes = append(c.nodes, n)
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return err
	}
	if err := n.startContainerd(ctx); err != nil {
		return err
	}
	if err := n.importImages(ctx, ImagesDir(c.Root)); err != nil {
		return err
	}
	return c.startKubelet(ctx, n, opts)
}

const cniLoopback = "/usr/lib/cni/loopback"

func (n *node) path(p ...string) string { return filepath.Join(append([]string{n.dir}, p...)...) }

func (n *node) startContainerd(ctx context.Context) error {
	for _, d := range []string{"containerd/root", "containerd/state", "containerd/opt", "cni/net.d"} {
		if err := os.MkdirAll(n.path(d), 0o755); err != nil {
			return err
		}
	}
	// The node's only network is loopback: the CRI reports the network
	// ready and Pods run with hostNetwork.
	if err := os.WriteFile(n.path("cni/net.d/10-loopback.conflist"),
		[]byte(`{"cniVersion": "1.0.0", "name": "loopback-only", "plugins": [{"type": "loopback"}]}`+"\n"), 0o644); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`version = 3
root = %q
state = %q

[grpc]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q

[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %q

[plugins."io.containerd.cri.v1.runtime"]
  # This machine has no CAP_SYS_RESOURCE: runc cannot lower a container's
  # oom_score_adj below the containerd's own (the pause container asks -998).
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = %q
        Root = %q
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [%q]
    conf_dir = %q

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = %q
`, n.path("containerd/root"), n.path("containerd/state"), n.socket, n.path("containerd/opt"),
		PauseImage.Ref(n.tag), n.runc, n.path("runc"), filepath.Dir(cniLoopback), n.path("cni/net.d"), n.ip)
	if err := os.WriteFile(n.path("containerd/config.toml"), []byte(cfg), 0o644); err != nil {
		return err
	}
	// The shims find containerd (and their binaries) on the PATH.
	p, err := startProcess("containerd", n.out, []string{"PATH=" + n.assets + ":" + os.Getenv("PATH")},
		filepath.Join(n.assets, "containerd"), "--config", n.path("containerd/config.toml"))
	if err != nil {
		return err
	}
	n.containerd = p
	return Poll(ctx, 30*time.Second, "containerd answers on "+n.socket, func() error {
		if p.exited() {
			return ErrStop{errors.New("containerd exited; see the node's log")}
		}
		_, err := n.ctr(ctx, "version")
		return err
	})
}

// ctr runs ctr against this node's containerd, in the CRI's namespace.
func (n *node) ctr(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(n.assets, "ctr"), append([]string{"--address", n.socket, "--namespace", "k8s.io"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// importImages imports every image tarball into containerd, where the CRI
// finds them (the Pods use imagePullPolicy IfNotPresent: nothing is pulled).
func (n *node) importImages(ctx context.Context, dir string) error {
	for _, img := range Images {
		if _, err := n.ctr(ctx, "images", "import", filepath.Join(dir, img.File())); err != nil {
			return fmt.Errorf("cluster: importing %s: %w", img.File(), err)
		}
	}
	return nil
}

func (c *Cluster) startKubelet(ctx context.Context, n *node, opts NodeOptions) error {
	if err := os.MkdirAll(n.path("kubelet", "root"), 0o755); err != nil {
		return err
	}
	// The kubelet authenticates as the node, so the Node authorizer and
	// NodeRestriction limit it to its own Node and the Pods bound to it.
	if err := c.writeKubeconfig(n.path("kubelet", "kubeconfig"),
		envtest.User{Name: "system:node:" + n.name, Groups: []string{"system:nodes"}}); err != nil {
		return err
	}
	port, err := FreePort()
	if err != nil {
		return err
	}
	healthz, err := FreePort()
	if err != nil {
		return err
	}
	sync := ""
	if opts.SyncFrequency > 0 {
		sync = "syncFrequency: " + opts.SyncFrequency.String() + "\n"
	}
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine runs cgroup v1, which the kubelet refuses unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
containerRuntimeEndpoint: unix://%s
address: %s
port: %d
readOnlyPort: 0
healthzBindAddress: %s
healthzPort: %d
# The API server calls the kubelet (logs, exec) without a client
# certificate: anonymous requests on loopback, allowed.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
podLogsDir: %s
volumePluginDir: %s
resolvConf: /etc/resolv.conf
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# No KUBE-FIREWALL chains in the machine's iptables.
makeIPTablesUtilChains: false
%s`, n.socket, n.ip, port, n.ip, healthz, n.path("kubelet", "pod-logs"), n.path("kubelet", "volume-plugins"), sync)
	if err := os.WriteFile(n.path("kubelet", "config.yaml"), []byte(cfg), 0o644); err != nil {
		return err
	}
	p, err := startProcess("kubelet", n.out, nil, filepath.Join(n.assets, "kubelet"),
		"--config="+n.path("kubelet", "config.yaml"),
		"--kubeconfig="+n.path("kubelet", "kubeconfig"),
		"--root-dir="+n.path("kubelet", "root"),
		"--cert-dir="+n.path("kubelet", "pki"),
		"--node-ip="+n.ip,
		"--hostname-override="+n.name,
		"--v=1",
	)
	if err != nil {
		return err
	}
	n.kubelet = p
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	if err := Poll(ctx, 60*time.Second, "node "+n.name+" registers", func() error {
		if p.exited() {
			return ErrStop{errors.New("the kubelet exited; see the node's log")}
		}
		_, err := cs.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
		return err
	}); err != nil {
		return err
	}
	// The kubelet refuses a loopback node IP ("nodeIP can't be loopback")
	// and then leaves the addresses alone: set them once, so the API
	// server reaches the kubelet (logs, exec) at its loopback address.
	patch := `{"status":{"addresses":[{"type":"InternalIP","address":"` + n.ip + `"},{"type":"Hostname","address":"` + n.name + `"}]}}`
	if _, err := cs.CoreV1().Nodes().Patch(ctx, n.name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("cluster: setting the node's addresses: %w", err)
	}
	return Poll(ctx, 90*time.Second, "node "+n.name+" is Ready and untainted", func() error {
		if p.exited() {
			return ErrStop{errors.New("the kubelet exited; see the node's log")}
		}
		nd, err := cs.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, t := range nd.Spec.Taints {
			return fmt.Errorf("taint %s", t.Key)
		}
		for _, cond := range nd.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return errors.New("not Ready")
	})
}

// stopNodes deletes every Pod bound to a node while the kubelets run (so
// they stop their containers and unmount their volumes), then stops each
// node.
func (c *Cluster) stopNodes() {
	nodes := c.nodes
	c.nodes = nil
	for _, n := range nodes {
		if n.kubelet != nil && !n.kubelet.exited() {
			c.drainNode(n)
		}
	}
	for _, n := range nodes {
		n.stop()
	}
}

// stop stops the kubelet, kills what containers are left and their shims,
// stops containerd, and unmounts whatever is still mounted under the node's
// directory before removing it.
func (n *node) stop() {
	n.kubelet.stop(15 * time.Second)
	if n.containerd != nil && !n.containerd.exited() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if out, err := n.ctr(ctx, "tasks", "ls", "--quiet"); err == nil {
			for _, t := range strings.Fields(out) {
				_, _ = n.ctr(ctx, "tasks", "kill", "--signal", "SIGKILL", t)
			}
			for _, t := range strings.Fields(out) {
				_, _ = n.ctr(ctx, "tasks", "delete", "--force", t)
			}
		}
		cancel()
	}
	killShims(n.socket)
	n.containerd.stop(15 * time.Second)
	removeNodeDir(n.dir, n.out)
}

// drainNode deletes the node's Pods and waits up to 60s for the kubelet to
// have stopped them.
func (c *Cluster) drainNode(n *node) {
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sel := metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.name}
	pods, err := cs.CoreV1().Pods("").List(ctx, sel)
	if err != nil {
		return
	}
	grace := int64(1)
	for _, p := range pods.Items {
		// Controllers would make new Pods: delete their owners first.
		for _, ref := range p.OwnerReferences {
			if ref.Kind == "ReplicaSet" {
				deleteReplicaSetOwner(ctx, cs, p.Namespace, ref.Name)
			}
		}
		err := cs.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
		if err != nil && !apierrors.IsNotFound(err) {
			fmt.Fprintf(n.out, "cluster: deleting Pod %s/%s: %v\n", p.Namespace, p.Name, err)
		}
	}
	// A Pod deleted gracefully disappears once the kubelet has stopped its
	// containers and unmounted its volumes.
	if err := Poll(ctx, 60*time.Second, "the kubelet stops every Pod", func() error {
		left, err := cs.CoreV1().Pods("").List(ctx, sel)
		if err != nil {
			return err
		}
		if len(left.Items) > 0 {
			return fmt.Errorf("%d Pods left, %s/%s among them", len(left.Items), left.Items[0].Namespace, left.Items[0].Name)
		}
		return nil
	}); err != nil {
		fmt.Fprintln(n.out, err)
	}
}

// deleteReplicaSetOwner deletes the Deployment (or else the ReplicaSet)
// that owns a Pod's ReplicaSet, so nothing recreates the Pod.
func deleteReplicaSetOwner(ctx context.Context, cs kubernetes.Interface, ns, rsName string) {
	rs, err := cs.AppsV1().ReplicaSets(ns).Get(ctx, rsName, metav1.GetOptions{})
	if err != nil {
		return
	}
	for _, ref := range rs.OwnerReferences {
		if ref.Kind == "Deployment" {
			_ = cs.AppsV1().Deployments(ns).Delete(ctx, ref.Name, metav1.DeleteOptions{})
		}
	}
	_ = cs.AppsV1().ReplicaSets(ns).Delete(ctx, rsName, metav1.DeleteOptions{})
}

// killShims kills the containerd-shim-runc-v2 processes started for the
// containerd at socket (a shim outlives containerd on purpose).
func killShims(socket string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || filepath.Base(args[0]) != "containerd-shim-runc-v2" || !containsArg(args, socket) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f))); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func containsArg(args []string, want string) bool {
	for _, a := range args {
		if a == want || strings.HasSuffix(a, "="+want) {
			return true
		}
	}
	return false
}

// removeNodeDir unmounts everything mounted under dir, deepest first (the
// kubelet's bind mount of its root directory onto itself, the Pods' tmpfs
// volumes, containerd's overlay and shm mounts), then removes dir.
func removeNodeDir(dir string, out io.Writer) {
	for attempt := 0; attempt < 3; attempt++ {
		mounts := mountsUnder(dir)
		if len(mounts) == 0 {
			break
		}
		for _, m := range mounts {
			if err := syscall.Unmount(m, 0); err != nil {
				_ = syscall.Unmount(m, syscall.MNT_DETACH)
			}
		}
	}
	if left := mountsUnder(dir); len(left) > 0 {
		fmt.Fprintf(out, "cluster: still mounted under %s: %v\n", dir, left)
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintf(out, "cluster: removing %s: %v\n", dir, err)
	}
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return strings.Count(out[i], "/") > strings.Count(out[j], "/") })
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cleanStaleNodes removes what a node left behind when its process died
// without stopping it (killed, or a test binary that panicked): the shims
// and containers of its containerd, its mounts and its directory.
func cleanStaleNodes(out io.Writer) {
	if out == nil {
		out = io.Discard
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), nodeDirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "owner.pid"))
		if err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && syscall.Kill(pid, 0) == nil {
				continue // its owner still runs
			}
		}
		fmt.Fprintf(out, "cluster: cleaning up the stale node directory %s\n", dir)
		killShims(filepath.Join(dir, "containerd", "containerd.sock"))
		killUnder(dir)
		removeNodeDir(dir, out)
	}
}

// killUnder kills the processes whose working directory or root lies
// under dir: the containers of a stale node, whose shims are gone.
func killUnder(dir string) {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		for _, link := range []string{"cwd", "root"} {
			target, err := os.Readlink(filepath.Join(p, link))
			if err == nil && strings.HasPrefix(target, dir+"/") {
				if pid, err := strconv.Atoi(filepath.Base(p)); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
				break
			}
		}
	}
}

// ProjectedVolumeDir is where the kubelet of the Pod's node wrote a Pod's
// projected volume: <root-dir>/pods/<uid>/volumes/kubernetes.io~projected/
// <volume>, a directory of symlinks into the ..data directory it swaps on
// every update. It is empty without a node.
func (c *Cluster) ProjectedVolumeDir(pod *corev1.Pod, volume string) string {
	for _, n := range c.nodes {
		if n.name == pod.Spec.NodeName {
			return n.path("kubelet", "root", "pods", string(pod.UID), "volumes", "kubernetes.io~projected", volume)
		}
	}
	return ""
}

// KillContainer sends SIGKILL to a container of a running Pod through its
// node's containerd, as an out-of-memory kill or a crash would end it: the
// process gets no chance to clean up (a leader keeps its Lease until it
// expires). The kubelet then restarts the container as the Pod's
// restartPolicy says.
func (c *Cluster) KillContainer(ctx context.Context, pod *corev1.Pod, container string) error {
	var n *node
	for _, nd := range c.nodes {
		if nd.name == pod.Spec.NodeName {
			n = nd
		}
	}
	if n == nil {
		return fmt.Errorf("cluster: Pod %s/%s is on no node of this cluster", pod.Namespace, pod.Name)
	}
	for _, st := range pod.Status.ContainerStatuses {
		if st.Name != container {
			continue
		}
		id, ok := strings.CutPrefix(st.ContainerID, "containerd://")
		if !ok {
			return fmt.Errorf("cluster: container %s of Pod %s/%s has no containerd ID (%q)", container, pod.Namespace, pod.Name, st.ContainerID)
		}
		_, err := n.ctr(ctx, "tasks", "kill", "--signal", "SIGKILL", id)
		return err
	}
	return fmt.Errorf("cluster: Pod %s/%s has no container %s", pod.Namespace, pod.Name, container)
}
