// Package integration holds the tests that exercise the API itself (CRD
// schemas, CEL rules, defaults, printer columns, kubectl explain) against a
// real kube-apiserver and etcd built from source.
package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/test/cluster"
)

var (
	k8s        client.Client
	kubeconfig string
	testRoot   string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	c, err := cluster.Start(cluster.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the control plane:", err)
		}
	}()
	dir, err := os.MkdirTemp("", "agentmesh-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := c.WriteAdminKubeconfig(kubeconfig); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(mtlsv1alpha1.AddToScheme(scheme))
	k8s, err = client.New(c.Config, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	testRoot = c.Root
	return m.Run()
}
