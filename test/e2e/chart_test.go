package e2e

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/agentmesh/agentmesh/test/cluster"
)

// managerSelector selects the chart's manager Pods.
const managerSelector = "app.kubernetes.io/component=manager"

// installChart installs charts/agentmesh as a user would, with the
// operator image that `make images` built (imported into the node, so
// pullPolicy Never), and waits for its manager to be ready.
func installChart(ctx context.Context, root string) error {
	api, err := url.Parse(env.Config.Host)
	if err != nil {
		return err
	}
	// One replica: two hostNetwork replicas on one node would want the
	// same ports (test/helm runs two on two nodes). The node has no Pod
	// network, hence hostNetwork; the API server's serving certificate
	// names only 127.0.0.1 and localhost, hence the address in the env.
	values := fmt.Sprintf(`trustDomain: cluster.local
replicas: 1
hostNetwork: true
image: {pullPolicy: Never}
# The highest verbosity: the logs are searched for key material.
logLevel: 6
caRotation:
  propagationGrace: %s
  reissueRate: 50
extraEnv:
- {name: KUBERNETES_SERVICE_HOST, value: %q}
- {name: KUBERNETES_SERVICE_PORT, value: %q}
`, caGrace, api.Hostname(), api.Port())
	file := filepath.Join(workDir, "values.yaml")
	if err := os.WriteFile(file, []byte(values), 0o600); err != nil {
		return err
	}
	helmCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(helmCtx, filepath.Join(cluster.AssetsDir(root), "helm"), "install", release, filepath.Join(root, "charts", "agentmesh"),
		"--kubeconfig", kubeconfig, "-n", operatorNamespace, "-f", file)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("helm install: %w\n%s", err, out)
	}
	err = cluster.Poll(ctx, 2*time.Minute, "the chart's manager ready", func() error {
		dep := &appsv1.Deployment{}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: operatorNamespace, Name: release}, dep); err != nil {
			return err
		}
		if dep.Status.ReadyReplicas != 1 {
			return fmt.Errorf("%d of 1 replicas ready", dep.Status.ReadyReplicas)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w; the manager's log:\n%s", err, tail(managerLogs(ctx), 3000))
	}
	return nil
}

// managerLogs is the log of every manager container of the chart that ran,
// the ones before a restart included.
func managerLogs(ctx context.Context) string {
	pods, err := cs.CoreV1().Pods(operatorNamespace).List(ctx, metav1.ListOptions{LabelSelector: managerSelector})
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
			log, err := cs.CoreV1().Pods(operatorNamespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: "manager", Previous: previous}).DoRaw(ctx)
			if err != nil {
				fmt.Fprintf(&b, "# Pod %s (previous: %v): %v\n", p.Name, previous, err)
				continue
			}
			b.Write(log)
		}
	}
	return b.String()
}

// saveManagerLogs writes the managers' logs into workDir, next to the
// cluster's, for a failed run.
func saveManagerLogs() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = os.WriteFile(filepath.Join(workDir, "manager.log"), []byte(managerLogs(ctx)), 0o600)
}
