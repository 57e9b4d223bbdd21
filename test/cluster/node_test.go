package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// TestNode starts the local cluster with two nodes, runs a Pod of the
// example agent image with a Secret volume on the second, reads the Pod's
// log through the API server (API server -> kubelet on 127.0.0.2), calls
// the API server through the kubernetes Service (the loopback Service
// proxy), measures how fast the first node's kubelet refreshes a projected
// Secret, and checks that Stop leaves no process, mount, directory or
// listener behind.
func TestNode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the node needs root")
	}
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if err := BuildImages(root, ImagesDir(root)); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(t.TempDir(), "cluster.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			t.Logf("the cluster's log, last 8 KiB:\n%s", b[max(0, len(b)-8192):])
		}
	}()
	// AGENTMESH_NODE_SYNC measures another syncFrequency (e.g. 1m, the
	// kubelet's default).
	sync := 5 * time.Second
	if v := os.Getenv("AGENTMESH_NODE_SYNC"); v != "" {
		if sync, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	c, err := Start(Options{Output: logFile, Node: &NodeOptions{Nodes: 2, SyncFrequency: sync}})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = c.Stop()
		}
	}()
	var dirs []string
	for _, n := range c.nodes {
		dirs = append(dirs, n.dir)
	}
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for name, ip := range map[string]string{"node1": "127.0.0.1", "node2": "127.0.0.2"} {
		nd, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if a := nd.Status.Addresses; len(a) == 0 || a[0].Address != ip {
			t.Errorf("%s addresses: %+v", name, a)
		}
		if v := nd.Status.NodeInfo.KubeletVersion; !strings.HasPrefix(v, "v1.") {
			t.Errorf("%s: kubelet version %q", name, v)
		}
	}
	if err := EnsureNamespace(ctx, cs, "node-test"); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts("node-test").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Secrets("node-test").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "files"},
		StringData: map[string]string{"hello": "from the kubelet"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tag, err := ImageTag(root)
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "cat", Namespace: "node-test"},
		Spec: corev1.PodSpec{
			NodeName:      "node2",
			HostNetwork:   true,
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "cat", Image: AgentImage.Ref(tag), ImagePullPolicy: corev1.PullIfNotPresent,
				Args:         []string{"cat", "/files/hello"},
				VolumeMounts: []corev1.VolumeMount{{Name: "files", MountPath: "/files"}}}},
			Volumes: []corev1.Volume{{Name: "files", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "files"}}}},
		},
	}
	if _, err := cs.CoreV1().Pods("node-test").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := Poll(ctx, 90*time.Second, "the Pod succeeds", func() error {
		p, err := cs.CoreV1().Pods("node-test").Get(ctx, "cat", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase == corev1.PodFailed {
			return ErrStop{fmt.Errorf("the Pod failed: %+v", p.Status)}
		}
		if p.Status.Phase != corev1.PodSucceeded {
			return fmt.Errorf("phase %s", p.Status.Phase)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	log, err := cs.CoreV1().Pods("node-test").GetLogs("cat", &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil || string(log) != "from the kubelet" {
		t.Errorf("the Pod's log: %q, %v", log, err)
	}
	if len(mountsUnder(dirs[1])) == 0 {
		t.Error("the kubelet of node2 mounted nothing under its directory")
	}
	kubeService := checkKubernetesService(ctx, t, c, cs)
	measureRefresh(ctx, t, c, cs, tag, sync)

	if err := c.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	stopped = true
	if err := refused(kubeService); err != nil {
		t.Errorf("the Service proxy after Stop: %v", err)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, dir := range dirs {
		if m := mountsUnder(dir); len(m) != 0 {
			t.Errorf("mounts left after Stop: %v", m)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("the node's directory %s is left: %v", dir, err)
		}
		for _, f := range procs {
			b, _ := os.ReadFile(f)
			if strings.Contains(string(b), dir) {
				t.Errorf("a process of the node is left: %s", strings.ReplaceAll(string(b), "\x00", " "))
			}
		}
	}
}

// checkKubernetesService calls the API server through the kubernetes
// Service: its ClusterIP is in the loopback Service CIDR and the Service
// proxy forwards it to the API server (whose serving certificate names
// localhost and 127.0.0.1, not the ClusterIP). It returns the Service's
// address.
func checkKubernetesService(ctx context.Context, t *testing.T, c *Cluster, cs kubernetes.Interface) string {
	t.Helper()
	svc, err := cs.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.TrimSuffix(c.ServiceCIDR(), "0/24") + "1"; svc.Spec.ClusterIP != want {
		t.Errorf("the kubernetes Service's ClusterIP is %s, want %s (the first of %s)", svc.Spec.ClusterIP, want, c.ServiceCIDR())
	}
	addr := net.JoinHostPort(svc.Spec.ClusterIP, "443")
	cfg := rest.CopyConfig(c.Config)
	cfg.Host = "https://" + addr
	cfg.ServerName = "localhost"
	before := c.ServiceConnections(metav1.NamespaceDefault, "kubernetes")
	v, err := kubernetes.NewForConfigOrDie(cfg).Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("the API server through the kubernetes Service at %s: %v", addr, err)
	}
	if n := c.ServiceConnections(metav1.NamespaceDefault, "kubernetes") - before; n < 1 {
		t.Errorf("the Service proxy counted %d connections of default/kubernetes", n)
	}
	t.Logf("the API server (%s) answered through the kubernetes Service at %s", v.GitVersion, addr)
	return addr
}

// measureRefresh runs a Pod that projects a Secret, changes the Secret three
// times, and measures how long the kubelet takes to swap the volume's
// ..data link each time: the delay a CA rotation's grace must cover.
func measureRefresh(ctx context.Context, t *testing.T, c *Cluster, cs kubernetes.Interface, tag string, sync time.Duration) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sleeper", Namespace: "node-test"},
		Spec: corev1.PodSpec{
			NodeName:    NodeName,
			HostNetwork: true,
			// The example agent with neither --listen nor --call exits: the
			// pause image holds the volume instead.
			Containers: []corev1.Container{{Name: "pause", Image: PauseImage.Ref(tag), ImagePullPolicy: corev1.PullIfNotPresent,
				VolumeMounts: []corev1.VolumeMount{{Name: "files", MountPath: "/files"}}}},
			Volumes: []corev1.Volume{{Name: "files", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
				Sources: []corev1.VolumeProjection{{Secret: &corev1.SecretProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "files"}}}}}}}},
		},
	}
	created, err := cs.CoreV1().Pods("node-test").Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := Poll(ctx, 60*time.Second, "the sleeper runs", func() error {
		p, err := cs.CoreV1().Pods("node-test").Get(ctx, "sleeper", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("phase %s", p.Status.Phase)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	dir := c.ProjectedVolumeDir(created, "files")
	var delays []time.Duration
	for i := 0; i < 3; i++ {
		before, err := os.Readlink(filepath.Join(dir, "..data"))
		if err != nil {
			t.Fatal(err)
		}
		value := "update " + strconv.Itoa(i)
		changed := time.Now()
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "files", Namespace: "node-test"}, StringData: map[string]string{"hello": value}}
		if _, err := cs.CoreV1().Secrets("node-test").Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// The kubelet promises a refresh within its sync period plus the
		// cache's TTL; allow twice the period and a margin.
		if err := Poll(ctx, 2*sync+30*time.Second, "the kubelet swaps ..data", func() error {
			now, err := os.Readlink(filepath.Join(dir, "..data"))
			if err != nil || now == before {
				return fmt.Errorf("still %s", before)
			}
			b, err := os.ReadFile(filepath.Join(dir, "hello"))
			if err != nil {
				return err
			}
			if string(b) != value {
				return fmt.Errorf("hello is %q", b)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		delays = append(delays, time.Since(changed).Round(100*time.Millisecond))
	}
	t.Logf("kubelet syncFrequency %s: a changed Secret reached the Pod's volume after %v", sync, delays)
}
