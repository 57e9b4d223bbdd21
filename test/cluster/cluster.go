// Package cluster starts a local Kubernetes cluster (etcd, kube-apiserver
// and kube-controller-manager built from source by hack/tools.sh and, as
// root, a node: containerd with runc and a kubelet) with the agentmesh CRDs
// installed, builds the images the node runs, and runs the manager binary
// against it. `make dev`, the integration and end-to-end tests and
// `make bench` all use it, so there is one way to bring up the local
// cluster.
package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"
)

// Options configure a local control plane.
type Options struct {
	// APIServerFlags are extra kube-apiserver flags, e.g. "feature-gates".
	APIServerFlags map[string]string
	// Output receives the control plane's logs; nil discards them.
	Output io.Writer
	// WithoutCRDs skips installing config/crd/bases.
	WithoutCRDs bool
	// ControllerManager also runs kube-controller-manager with the
	// controllers a local cluster needs: garbage collection (owner
	// references), namespace deletion, and the default service accounts.
	ControllerManager bool
	// Node, when set, also starts nodes (each containerd and a kubelet:
	// node1 on 127.0.0.1, node2 on 127.0.0.2, ...) that run the Pods, with
	// kube-controller-manager and kube-scheduler (implied). It needs root,
	// runc, the CNI loopback plugin and the images of `make images`.
	Node *NodeOptions
	// TransformCRD, when set, changes each CRD of config/crd/bases before it
	// is installed (tests use it to install a CRD without validation).
	TransformCRD func(*apiextensionsv1.CustomResourceDefinition)
}

// Cluster is a running local control plane.
type Cluster struct {
	// Env is the underlying envtest environment.
	Env *envtest.Environment
	// Config is an admin (system:masters) client config.
	Config *rest.Config
	// Root is the repository root.
	Root string

	kcm       *process
	scheduler *process
	kcmDir    string
	// apiCertDir holds the API server's serving certificate, service account
	// keys and client CA: a directory of the cluster's own rather than
	// envtest's, so that KillAPIServer and StartAPIServer keep them.
	apiCertDir string
	nodes      []*node
	proxy      *serviceProxy
	// serviceCIDR is the loopback Service IP range of a cluster with nodes.
	serviceCIDR string
}

// ServiceCIDR is the loopback Service IP range of a cluster with nodes
// (empty without nodes).
func (c *Cluster) ServiceCIDR() string { return c.serviceCIDR }

// RepoRoot finds the repository root by walking up from the working
// directory to the directory that holds the project's go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && isProjectGoMod(b) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cluster: not inside the agentmesh repository (no go.mod of github.com/agentmesh/agentmesh above the working directory)")
		}
		dir = parent
	}
}

func isProjectGoMod(b []byte) bool {
	const want = "module github.com/agentmesh/agentmesh\n"
	return len(b) >= len(want) && string(b[:len(want)]) == want
}

// AssetsDir is where kube-apiserver, etcd and kubectl are found:
// $KUBEBUILDER_ASSETS, or the repository's bin/.
func AssetsDir(root string) string {
	if d := os.Getenv("KUBEBUILDER_ASSETS"); d != "" {
		return d
	}
	return filepath.Join(root, "bin")
}

// Start starts etcd and kube-apiserver on loopback with their data in a
// temporary directory and installs the CRDs. Stop removes all of it.
func Start(opts Options) (*Cluster, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	assets := AssetsDir(root)
	bins := []string{"kube-apiserver", "etcd", "kubectl"}
	if opts.Node != nil {
		opts.ControllerManager = true
		if os.Geteuid() != 0 {
			return nil, ErrNotRoot
		}
	}
	if opts.ControllerManager {
		bins = append(bins, "kube-controller-manager")
	}
	if opts.Node != nil {
		bins = append(bins, "kube-scheduler")
	}
	for _, b := range bins {
		if _, err := os.Stat(filepath.Join(assets, b)); err != nil {
			return nil, fmt.Errorf("cluster: %s not found in %s: run `make tools` first", b, assets)
		}
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		ErrorIfCRDPathMissing:    !opts.WithoutCRDs,
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	switch {
	case opts.WithoutCRDs:
	case opts.TransformCRD != nil:
		crds, err := readCRDs(filepath.Join(root, "config", "crd", "bases"))
		if err != nil {
			return nil, err
		}
		for _, c := range crds {
			opts.TransformCRD(c)
		}
		env.CRDs = crds
	default:
		env.CRDDirectoryPaths = []string{filepath.Join(root, "config", "crd", "bases")}
	}
	if opts.Output != nil {
		env.AttachControlPlaneOutput = true
		env.ControlPlane.APIServer = &envtest.APIServer{Out: opts.Output, Err: opts.Output}
		env.ControlPlane.Etcd = &envtest.Etcd{Out: opts.Output, Err: opts.Output}
	}
	api := env.ControlPlane.GetAPIServer()
	api.Address = "127.0.0.1"
	serviceCIDR := ""
	if opts.Node != nil {
		cidr, err := freeServiceCIDR()
		if err != nil {
			return nil, err
		}
		serviceCIDR = cidr
		for k, v := range nodeAPIServerFlags(cidr) {
			api.Configure().Set(k, v)
		}
	}
	for k, v := range opts.APIServerFlags {
		api.Configure().Set(k, v)
	}
	// envtest removes a certificate directory it made itself when the API
	// server stops, and a restart would then serve a new certificate.
	certDir, err := os.MkdirTemp("", "agentmesh-apiserver-")
	if err != nil {
		return nil, err
	}
	api.CertDir = certDir
	cfg, err := env.Start()
	if err != nil {
		_ = env.Stop()
		_ = os.RemoveAll(certDir)
		return nil, fmt.Errorf("cluster: starting the control plane: %w", err)
	}
	// Keep the client fast: tests and the dev cluster create many objects.
	cfg.QPS, cfg.Burst = 500, 1000
	c := &Cluster{Env: env, Config: cfg, Root: root, serviceCIDR: serviceCIDR, apiCertDir: certDir}
	if opts.Node != nil {
		if err := c.startServiceProxy(opts.Output); err != nil {
			_ = c.Stop()
			return nil, err
		}
	}
	if opts.ControllerManager {
		if err := c.startControllerManager(assets, opts.Output, opts.Node != nil); err != nil {
			_ = c.Stop()
			return nil, err
		}
	}
	if opts.Node != nil {
		if err := c.startNodes(context.Background(), *opts.Node, assets, opts.Output); err != nil {
			_ = c.Stop()
			return nil, err
		}
	}
	return c, nil
}

// startControllerManager runs kube-controller-manager against the API
// server with an admin kubeconfig, serving nothing. With a node it also runs
// what Pods need: Deployments and ReplicaSets, the node lifecycle (the
// not-ready taint), Pod garbage collection and the kube-root-ca.crt
// ConfigMap that service account token volumes project; and kube-scheduler.
// It runs no endpoint controllers: the API server refuses the Pods'
// loopback addresses in Endpoints and EndpointSlices, and the Service proxy
// finds a Service's Pods itself.
func (c *Cluster) startControllerManager(assets string, out io.Writer, withNode bool) error {
	dir, err := os.MkdirTemp("", "agentmesh-kcm-")
	if err != nil {
		return err
	}
	c.kcmDir = dir
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := c.WriteAdminKubeconfig(kubeconfig); err != nil {
		return err
	}
	controllers := "garbagecollector,namespace,serviceaccount"
	args := []string{"--kubeconfig=" + kubeconfig, "--leader-elect=false", "--secure-port=0",
		"--use-service-account-credentials=false", "--concurrent-gc-syncs=5"}
	if withNode {
		controllers += ",deployment,replicaset,nodelifecycle,root-ca-cert-publisher,podgc"
		rootCA := filepath.Join(dir, "root-ca.crt")
		if err := os.WriteFile(rootCA, c.Config.CAData, 0o644); err != nil {
			return err
		}
		args = append(args, "--root-ca-file="+rootCA)
	}
	args = append(args, "--controllers="+controllers)
	if out == nil {
		out = io.Discard
	}
	p, err := startProcess("kube-controller-manager", out, nil, filepath.Join(assets, "kube-controller-manager"), args...)
	if err != nil {
		return err
	}
	c.kcm = p
	if withNode {
		// The scheduler binds the Pods of Deployments to the node.
		s, err := startProcess("kube-scheduler", out, nil, filepath.Join(assets, "kube-scheduler"),
			"--kubeconfig="+kubeconfig, "--leader-elect=false", "--secure-port=0")
		if err != nil {
			return err
		}
		c.scheduler = s
	}
	return nil
}

func readCRDs(dir string) ([]*apiextensionsv1.CustomResourceDefinition, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	var crds []*apiextensionsv1.CustomResourceDefinition
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		c := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.Unmarshal(b, c); err != nil {
			return nil, fmt.Errorf("cluster: %s: %w", f, err)
		}
		crds = append(crds, c)
	}
	return crds, nil
}

// Stop stops the nodes (see stopNodes), the Service proxy,
// kube-controller-manager, kube-apiserver and etcd and removes their data.
func (c *Cluster) Stop() error {
	c.stopNodes()
	c.proxy.close()
	c.proxy = nil
	c.scheduler.stop(10 * time.Second)
	c.kcm.stop(10 * time.Second)
	c.kcm, c.scheduler = nil, nil
	if c.kcmDir != "" {
		_ = os.RemoveAll(c.kcmDir)
	}
	err := c.Env.Stop()
	if c.apiCertDir != "" {
		_ = os.RemoveAll(c.apiCertDir)
	}
	return err
}

// KillAPIServer kills kube-apiserver with SIGKILL, as a crash or the loss
// of its machine would: etcd, kube-controller-manager and every client keep
// running and find nothing listening. (A SIGTERM is no clean cut: the API
// server drains for up to a minute while clients hold watches.)
// StartAPIServer starts it again.
func (c *Cluster) KillAPIServer() error {
	api := c.Env.ControlPlane.APIServer
	pid, err := childProcess(api.Path)
	if err != nil {
		return fmt.Errorf("cluster: finding kube-apiserver: %w", err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("cluster: killing kube-apiserver: %w", err)
	}
	// envtest sees the exit and has nothing left to stop.
	if err := api.Stop(); err != nil {
		return fmt.Errorf("cluster: after killing kube-apiserver: %w", err)
	}
	return nil
}

// childProcess is the pid of this process's child running the executable.
func childProcess(exe string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	if real, err := filepath.EvalSymlinks(exe); err == nil {
		exe = real
	}
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at the last ")".
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) < 2 || fields[1] != strconv.Itoa(self) {
			continue
		}
		if target, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && target == exe {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no child process runs %s", exe)
}

// StartAPIServer starts kube-apiserver again after KillAPIServer, on the
// same address and port, with the same serving certificate, client CA and
// service account keys (so every kubeconfig and client keeps working) and
// the same etcd, and returns once it is healthy.
func (c *Cluster) StartAPIServer() error {
	if err := c.Env.ControlPlane.APIServer.Start(); err != nil {
		return fmt.Errorf("cluster: starting kube-apiserver again: %w", err)
	}
	return nil
}

// startServiceProxy starts the loopback Service proxy (see serviceProxy),
// with the API server's address as the backend of default/kubernetes.
func (c *Cluster) startServiceProxy(out io.Writer) error {
	u, err := url.Parse(c.Config.Host)
	if err != nil {
		return fmt.Errorf("cluster: the API server's address: %w", err)
	}
	if u.Host == "" {
		return fmt.Errorf("cluster: the API server's address %q has no host", c.Config.Host)
	}
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	p, err := startServiceProxy(cs, c.serviceCIDR, u.Host, out)
	if err != nil {
		return err
	}
	c.proxy = p
	return nil
}

// ServiceConnections is how many connections the Service proxy of a
// cluster with nodes has forwarded to a backend of the Service
// namespace/name (0 without nodes): a test's proof that a client, the API
// server calling a webhook among them, went through the Service.
func (c *Cluster) ServiceConnections(namespace, name string) int {
	return c.proxy.connections(types.NamespacedName{Namespace: namespace, Name: name})
}

// WriteAdminKubeconfig writes a kubeconfig for an admin (system:masters) user
// to path, creating its directory.
func (c *Cluster) WriteAdminKubeconfig(path string) error {
	return c.writeKubeconfig(path, envtest.User{Name: "agentmesh-admin", Groups: []string{"system:masters"}})
}

// writeKubeconfig writes a kubeconfig for a user with a client certificate.
func (c *Cluster) writeKubeconfig(path string, u envtest.User) error {
	user, err := c.Env.AddUser(u, nil)
	if err != nil {
		return fmt.Errorf("cluster: adding the user %s: %w", u.Name, err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return fmt.Errorf("cluster: rendering the kubeconfig: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, kc, 0o600)
}

// EnsureNamespace creates the namespace unless it exists.
func EnsureNamespace(ctx context.Context, cs kubernetes.Interface, name string) error {
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return nil
}
