package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/agentmesh/agentmesh/test/cluster"
)

// installChart installs charts/agentmesh as a user would (cluster's
// InstallChart: the operator image that `make images` built, one
// hostNetwork replica on the node) with the suite's settings.
func installChart(ctx context.Context) error {
	return env.InstallChart(ctx, cluster.ChartOptions{Release: release, Namespace: operatorNamespace, Kubeconfig: kubeconfig,
		Values: fmt.Sprintf(`trustDomain: cluster.local
# The highest verbosity: the logs are searched for key material.
logLevel: 6
caRotation:
  propagationGrace: %s
  reissueRate: 50
`, caGrace)})
}

// managerLogs is the log of every manager container of the chart that ran.
func managerLogs(ctx context.Context) string {
	return cluster.ManagerLogs(ctx, cs, operatorNamespace)
}

// saveManagerLogs writes the managers' logs into workDir, next to the
// cluster's, for a failed run.
func saveManagerLogs() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = os.WriteFile(filepath.Join(workDir, "manager.log"), []byte(managerLogs(ctx)), 0o600)
}
