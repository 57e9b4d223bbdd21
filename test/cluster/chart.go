package cluster

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ManagerSelector selects the chart's manager Pods.
const ManagerSelector = "app.kubernetes.io/component=manager"

// ChartOptions says how InstallChart installs charts/agentmesh.
type ChartOptions struct {
	// Release and Namespace of the release; "agentmesh" and
	// "agentmesh-system" when empty.
	Release, Namespace string
	// Kubeconfig is the admin kubeconfig helm uses (WriteAdminKubeconfig).
	Kubeconfig string
	// Values are the release's values (YAML), after those the local node
	// needs; they may override them.
	Values string
	// Timeout bounds the wait for the manager to be ready; 0 means 2m.
	Timeout time.Duration
}

func (o *ChartOptions) defaults() {
	if o.Release == "" {
		o.Release = "agentmesh"
	}
	if o.Namespace == "" {
		o.Namespace = "agentmesh-system"
	}
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Minute
	}
}

// InstallChart installs the chart, as a user would with helm, with the
// operator image of ImagesDir (imported into the nodes, hence pullPolicy
// Never), and waits until its Deployment's replicas are ready. The local
// nodes need: hostNetwork (they have no Pod network), the API server's
// address in the manager's environment (its serving certificate names
// only 127.0.0.1 and localhost, not the kubernetes Service's ClusterIP),
// and one replica per node (hostNetwork replicas on one node would want the
// same ports), so replicas is the number of nodes.
func (c *Cluster) InstallChart(ctx context.Context, opts ChartOptions) error {
	opts.defaults()
	if len(c.nodes) == 0 {
		return fmt.Errorf("cluster: the chart's manager runs as a Pod, which needs a node")
	}
	api, err := url.Parse(c.Config.Host)
	if err != nil {
		return err
	}
	nodeValues := fmt.Sprintf(`replicas: %d
hostNetwork: true
image: {pullPolicy: Never}
extraEnv:
- {name: KUBERNETES_SERVICE_HOST, value: %q}
- {name: KUBERNETES_SERVICE_PORT, value: %q}
`, len(c.nodes), api.Hostname(), api.Port())
	// Not under a name with commas: helm splits -f at them.
	dir, err := os.MkdirTemp("", "agentmesh-chart-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	args := []string{"install", opts.Release, filepath.Join(c.Root, "charts", "agentmesh"),
		"--kubeconfig", opts.Kubeconfig, "-n", opts.Namespace, "--create-namespace"}
	for i, v := range []string{nodeValues, opts.Values} {
		f := filepath.Join(dir, fmt.Sprintf("values-%d.yaml", i))
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			return err
		}
		args = append(args, "-f", f)
	}
	helmCtx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	if out, err := exec.CommandContext(helmCtx, filepath.Join(AssetsDir(c.Root), "helm"), args...).CombinedOutput(); err != nil {
		return fmt.Errorf("cluster: helm install: %w\n%s", err, out)
	}
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	err = Poll(ctx, opts.Timeout, "the chart's manager ready", func() error {
		dep, err := cs.AppsV1().Deployments(opts.Namespace).Get(ctx, opts.Release, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if want := *dep.Spec.Replicas; dep.Status.ReadyReplicas != want {
			return fmt.Errorf("%d of %d replicas ready", dep.Status.ReadyReplicas, want)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cluster: %w; the manager's log:\n%s", err, lastBytes(ManagerLogs(ctx, cs, opts.Namespace), 3000))
	}
	return nil
}

// ManagerLogs is the log of every manager container of the chart in
// namespace that ran, those before a restart included.
func ManagerLogs(ctx context.Context, cs kubernetes.Interface, namespace string) string {
	pods, err := cs.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: ManagerSelector})
	if err != nil {
		return "listing the manager Pods: " + err.Error()
	}
	var b strings.Builder
	for _, p := range pods.Items {
		restarts := int32(0)
		for _, st := range p.Status.ContainerStatuses {
			restarts = max(restarts, st.RestartCount)
		}
		for _, previous := range []bool{true, false} {
			if previous && restarts == 0 {
				continue
			}
			log, err := cs.CoreV1().Pods(namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: "manager", Previous: previous}).DoRaw(ctx)
			if err != nil {
				fmt.Fprintf(&b, "# Pod %s (previous: %v): %v\n", p.Name, previous, err)
				continue
			}
			b.Write(log)
		}
	}
	return b.String()
}

func lastBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
