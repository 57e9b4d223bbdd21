// Package helm tests the Helm chart (charts/agentmesh) and the kubectl path
// (config/default, dist/install.yaml): helm lint, helm template with default
// and other values, the values schema, that the chart and dist/install.yaml
// match what controller-gen generates and each other, and an install into a
// real kube-apiserver where the operator runs with exactly the chart's RBAC.
package helm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/agentmesh/agentmesh/test/cluster"
)

var (
	root     string // the repository
	chartDir string
	helmBin  string
	kubectl  string
	// helmHome isolates helm's cache, config and data from the user's.
	helmHome string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	root, err = cluster.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	chartDir = filepath.Join(root, "charts", "agentmesh")
	assets := cluster.AssetsDir(root)
	helmBin, kubectl = filepath.Join(assets, "helm"), filepath.Join(assets, "kubectl")
	for _, b := range []string{helmBin, kubectl} {
		if _, err := os.Stat(b); err != nil {
			fmt.Fprintf(os.Stderr, "%s not found: run `make tools` first\n", b)
			return 1
		}
	}
	helmHome, err = os.MkdirTemp("", "agentmesh-helm-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(helmHome) }()
	return m.Run()
}

// runTool runs a helm or kubectl command and returns its stdout and
// stderr; the error carries stderr too.
func runTool(ctx context.Context, bin string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(helmHome, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(helmHome, "config"),
		"HELM_DATA_HOME="+filepath.Join(helmHome, "data"),
	)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), errOut.String(), fmt.Errorf("%s %s: %w\n%s", filepath.Base(bin), strings.Join(args, " "), err, errOut.String())
	}
	return out.String(), errOut.String(), nil
}

// helm runs helm and returns its stdout. Like kubectlRun, it fails the test
// when the API server warns that a Pod template would violate the
// PodSecurity level of its namespace.
func helm(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := runTool(t.Context(), helmBin, args...)
	if err != nil {
		t.Fatal(err)
	}
	checkNoPodSecurityWarning(t, errOut)
	return out
}

func checkNoPodSecurityWarning(t *testing.T, stderr string) {
	t.Helper()
	if strings.Contains(stderr, "would violate PodSecurity") {
		t.Errorf("PodSecurity warning:\n%s", stderr)
	}
}

// valuesFile writes values (YAML) to a file for -f.
func valuesFile(t *testing.T, values string) string {
	t.Helper()
	// Not t.TempDir: helm splits -f at commas, which test names may hold.
	dir, err := os.MkdirTemp("", "agentmesh-values-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	f := filepath.Join(dir, "values.yaml")
	if err := os.WriteFile(f, []byte(values), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// render runs helm template for release in namespace with values.
func render(t *testing.T, release, namespace, values string) objects {
	t.Helper()
	out := helm(t, "template", release, chartDir, "--namespace", namespace, "-f", valuesFile(t, values))
	objs, err := decodeObjects([]byte(out))
	if err != nil {
		t.Fatalf("decoding helm template's output: %v", err)
	}
	return objs
}

// object is one rendered manifest.
type object struct {
	Kind, Namespace, Name string
	Raw                   []byte
	Map                   map[string]any
}

func (o object) key() string { return o.Kind + " " + o.Namespace + "/" + o.Name }

type objects []object

func decodeObjects(b []byte) (objects, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var objs objects
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		m := map[string]any{}
		if err := yaml.Unmarshal(doc, &m); err != nil {
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		meta, _ := m["metadata"].(map[string]any)
		kind, _ := m["kind"].(string)
		name, _ := meta["name"].(string)
		ns, _ := meta["namespace"].(string)
		objs = append(objs, object{Kind: kind, Namespace: ns, Name: name, Raw: doc, Map: m})
	}
}

// keys lists "<kind> <namespace>/<name>" of every object, sorted.
func (objs objects) keys() []string {
	var ks []string
	for _, o := range objs {
		ks = append(ks, o.key())
	}
	sort.Strings(ks)
	return ks
}

func (objs objects) find(kind, name string) (object, bool) {
	for _, o := range objs {
		if o.Kind == kind && o.Name == name {
			return o, true
		}
	}
	return object{}, false
}

func (objs objects) ofKind(kind string) objects {
	var out objects
	for _, o := range objs {
		if o.Kind == kind {
			out = append(out, o)
		}
	}
	return out
}

// get decodes the object of kind and name into a typed value, failing the
// test when it is missing.
func (objs objects) get(t *testing.T, kind, name string, into any) {
	t.Helper()
	o, ok := objs.find(kind, name)
	if !ok {
		t.Fatalf("no %s %s among %v", kind, name, objs.keys())
	}
	if err := yaml.UnmarshalStrict(o.Raw, into); err != nil {
		t.Fatalf("decoding %s %s: %v", kind, name, err)
	}
}
