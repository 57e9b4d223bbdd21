package cluster

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestNode starts the local cluster with a node, runs a Pod of the example
// agent image with a projected Secret on it, reads the Pod's log through the
// API server (API server -> kubelet), and checks that Stop leaves no
// process, mount or directory behind.
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
	c, err := Start(Options{Output: logFile, Node: &NodeOptions{SyncFrequency: 5 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = c.Stop()
		}
	}()
	dir := c.node.dir
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	nd, err := cs.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ip := nd.Status.Addresses; len(ip) == 0 || ip[0].Address != "127.0.0.1" {
		t.Errorf("node addresses: %+v", ip)
	}
	if v := nd.Status.NodeInfo.KubeletVersion; !strings.HasPrefix(v, "v1.") {
		t.Errorf("kubelet version %q", v)
	}
	if err := EnsureNamespace(ctx, cs, "node-test"); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts("node-test").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !strings.Contains(err.Error(), "already exists") {
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
	if err := poll(ctx, 90*time.Second, "the Pod succeeds", func() error {
		p, err := cs.CoreV1().Pods("node-test").Get(ctx, "cat", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase == corev1.PodFailed {
			return errStop{errorf("the Pod failed: %+v", p.Status)}
		}
		if p.Status.Phase != corev1.PodSucceeded {
			return errorf("phase %s", p.Status.Phase)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	log, err := cs.CoreV1().Pods("node-test").GetLogs("cat", &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil || string(log) != "from the kubelet" {
		t.Errorf("the Pod's log: %q, %v", log, err)
	}
	if len(mountsUnder(dir)) == 0 {
		t.Error("the kubelet mounted nothing under the node's directory")
	}

	if err := c.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	stopped = true
	if m := mountsUnder(dir); len(m) != 0 {
		t.Errorf("mounts left after Stop: %v", m)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the node's directory %s is left: %v", dir, err)
	}
	sock := filepath.Join(dir, "containerd", "containerd.sock")
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		b, _ := os.ReadFile(f)
		if strings.Contains(string(b), dir) || strings.Contains(string(b), sock) {
			t.Errorf("a process of the node is left: %s", strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}
