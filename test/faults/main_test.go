// Package faults runs the manager binary as a process against a local
// control plane and breaks things under it: SIGKILLs at random moments
// during a thousand issuances and a CA rotation (crash_test.go), and the
// API server gone for 0.45 of the certificates' lifetime (outage_test.go).
// Each test asserts on the state the cluster ends in: keys, chains,
// bundles, owners, the rotation's status and the writes made.
package faults

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/controller"
	"github.com/agentmesh/agentmesh/test/cluster"
)

const (
	operatorNamespace = "agentmesh-system"
	caSecretName      = "agentmesh-ca"
	trustDomain       = mtlsv1alpha1.DefaultTrustDomain
)

// managerBin is the manager built from this tree by TestMain.
var managerBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// envtest logs through controller-runtime; the tests log what matters.
	ctrllog.SetLogger(logr.Discard())
	dir, err := os.MkdirTemp("", "agentmesh-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	root, err := cluster.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	// The operator as it is in this tree, not a bin/manager built earlier.
	managerBin = filepath.Join(dir, "manager")
	cmd := exec.Command("go", "build", "-o", managerBin, "./cmd/manager")
	cmd.Dir, cmd.Stdout, cmd.Stderr = root, os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "faults: building the manager:", err)
		return 1
	}
	return m.Run()
}

// env is one control plane with the manager run as a process against it.
type env struct {
	c          *cluster.Cluster
	k8s        client.Client
	kubeconfig string
	dir        string
	args       []string
	log        *lockedFile
	// runs counts the manager processes started.
	runs int
}

// lockedFile is the manager's log, written by every run of the manager.
type lockedFile struct {
	mu sync.Mutex
	f  *os.File
}

func (l *lockedFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}

func newEnv(t *testing.T, opts cluster.Options, managerArgs ...string) *env {
	t.Helper()
	dir := t.TempDir()
	if os.Getenv("AGENTMESH_FAULTS_KEEP") != "" {
		// The logs outlive the test, for a post-mortem.
		var err error
		if dir, err = os.MkdirTemp("", "agentmesh-faults-"+t.Name()+"-"); err != nil {
			t.Fatal(err)
		}
		t.Logf("logs kept in %s", dir)
	}
	cpLog, err := os.Create(filepath.Join(dir, "controlplane.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cpLog.Close() })
	opts.Output = cpLog
	start := time.Now()
	c := cluster.ForTest(t, opts)
	t.Logf("control plane up in %s", time.Since(start).Round(time.Millisecond))
	// The webhooks are not what these tests are about: with them off the
	// manager is ready once it has its CA.
	args := append([]string{"--webhook-port=0"}, managerArgs...)
	e := &env{c: c, k8s: c.NewClient(t), dir: dir, args: args, kubeconfig: filepath.Join(dir, "kubeconfig")}
	if err := c.WriteAdminKubeconfig(e.kubeconfig); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "manager.log"))
	if err != nil {
		t.Fatal(err)
	}
	e.log = &lockedFile{f: f}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(f.Name())
			t.Logf("manager log (last 8000 bytes):\n%s", tail(b, 8000))
		}
		_ = f.Close()
	})
	cluster.CreateNamespaces(t, e.k8s, operatorNamespace)
	return e
}

// startManager starts one run of the manager. The caller stops or kills it.
func (e *env) startManager(t *testing.T) *cluster.Manager {
	t.Helper()
	e.runs++
	fmt.Fprintf(e.log, "=== faults: manager run %d starts\n", e.runs)
	m, err := cluster.StartManager(cluster.ManagerOptions{Binary: managerBin, Kubeconfig: e.kubeconfig, Args: e.args, Output: e.log})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// waitReady waits for the manager's /readyz.
func waitReady(t *testing.T, m *cluster.Manager, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// identity is an AgentIdentity with the given spec.
func identity(namespace, name string, spec mtlsv1alpha1.AgentIdentitySpec) *mtlsv1alpha1.AgentIdentity {
	return &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}, Spec: spec}
}

// createAll creates the identities with workers parallel clients.
func createAll(t *testing.T, k8s client.Client, ids []*mtlsv1alpha1.AgentIdentity, workers int) {
	t.Helper()
	ch := make(chan *mtlsv1alpha1.AgentIdentity)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ch {
				if err := k8s.Create(context.Background(), id); err != nil {
					errs <- fmt.Errorf("creating %s/%s: %w", id.Namespace, id.Name, err)
					return
				}
			}
		}()
	}
	for _, id := range ids {
		select {
		case ch <- id:
		case err := <-errs:
			close(ch)
			wg.Wait()
			t.Fatal(err)
		}
	}
	close(ch)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
}

// spiffeID is the SPIFFE ID of an identity.
func spiffeID(namespace, name string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/agent/" + name
}

// leafOf parses an identity Secret: the leaf, and an error when tls.crt,
// tls.key or ca.crt is missing or the key does not match the certificate.
// Nothing of the key is ever printed.
func leafOf(s *corev1.Secret) (*x509.Certificate, error) {
	crt, key := s.Data[mtlsv1alpha1.SecretCertKey], s.Data[mtlsv1alpha1.SecretKeyKey]
	if len(crt) == 0 || len(key) == 0 || len(s.Data[mtlsv1alpha1.SecretTrustKey]) == 0 {
		return nil, fmt.Errorf("Secret %s/%s lacks tls.crt, tls.key or ca.crt", s.Namespace, s.Name)
	}
	pair, err := tls.X509KeyPair(crt, key)
	if err != nil {
		// X509KeyPair's errors name no key material.
		return nil, fmt.Errorf("Secret %s/%s: the key does not go with the certificate: %w", s.Namespace, s.Name, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("Secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return leaf, nil
}

// certsOf parses every certificate of a PEM bundle.
func certsOf(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

// rotationStatus reads agentmesh-ca-status's status.json.
func rotationStatus(ctx context.Context, k8s client.Client) (*controller.RotationStatus, error) {
	cm := &corev1.ConfigMap{}
	if err := k8s.Get(ctx, types.NamespacedName{Namespace: operatorNamespace, Name: controller.CAStatusConfigMapName}, cm); err != nil {
		return nil, err
	}
	st := &controller.RotationStatus{}
	if err := json.Unmarshal([]byte(cm.Data["status.json"]), st); err != nil {
		return nil, fmt.Errorf("status.json: %w", err)
	}
	return st, nil
}

// scrape reads the manager's metrics: the sum of every sample of each
// metric named, by its label set as written ("" for none).
func scrape(m *cluster.Manager, names ...string) (map[string]map[string]float64, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + m.MetricsAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]float64{}
	for _, n := range names {
		out[n] = map[string]float64{}
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, _ := strings.Cut(line, " ")
		labels := ""
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name, labels = name[:i], name[i:]
		}
		series, ok := out[name]
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metric %s: %w", line, err)
		}
		series[labels] += v
	}
	return out, sc.Err()
}

// logLine is one JSON line of the manager's log (zap's production encoder).
type logLine struct {
	Level string `json:"level"`
	TS    string `json:"ts"`
	Msg   string `json:"msg"`
	Error string `json:"error"`
	// Identity is the reconciled object, when the line is about one.
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
}

// time is when the line was written, to the second (zero when unknown).
func (l logLine) time() time.Time {
	t, _ := time.Parse(time.RFC3339Nano, l.TS)
	return t
}

// logLines parses the manager's log, skipping what is not JSON.
func (e *env) logLines(t *testing.T) []logLine {
	t.Helper()
	e.log.mu.Lock()
	b, err := os.ReadFile(e.log.f.Name())
	e.log.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	var out []logLine
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var l logLine
		if json.Unmarshal(line, &l) == nil {
			out = append(out, l)
		}
	}
	return out
}

// noKeyInLog fails the test when the manager's log holds a private key.
func (e *env) noKeyInLog(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(e.log.f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("PRIVATE KEY")) {
		t.Error("the manager's log holds a private key")
	}
}
