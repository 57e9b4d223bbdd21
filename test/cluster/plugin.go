package cluster

import (
	"bytes"
	"context"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/agentmesh/agentmesh/internal/cli/command"
)

// RunPlugin runs kubectl-agentmesh in the test's process, as a user would
// with the kubeconfig, and returns its exit code and what it printed.
func RunPlugin(ctx context.Context, kubeconfig string, args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = command.Execute(ctx, genericiooptions.IOStreams{In: &bytes.Buffer{}, Out: &out, ErrOut: &errOut},
		append([]string{"--kubeconfig", kubeconfig}, args...))
	return code, out.String(), errOut.String()
}
