package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/agentmesh/agentmesh/internal/operator"
	"github.com/agentmesh/agentmesh/test/cluster"
)

// operatorNamespace is the namespace of the manager's CA Secret (its
// default --ca-secret).
const operatorNamespace = "agentmesh-system"

// env is the running control plane, the benchmark's clients and the
// manager process.
type env struct {
	cfg        config
	cluster    *cluster.Cluster
	kubeconfig string
	// k8s and cl are the "user" side: admin clients without a practical
	// rate limit, so that what they do is not the bottleneck.
	k8s kubernetes.Interface
	cl  client.WithWatch
	// webhookPort is where the manager serves the webhooks.
	webhookPort int
	mgr         *managerProc
	mgrRuns     int
}

// managerProc is one run of the manager binary.
type managerProc struct {
	*cluster.Manager
	pprofAddr string
	log       *os.File
	started   time.Time
}

// fastConfig is a copy of the admin config with the given rate limits.
func fastConfig(base *rest.Config, qps float32, burst int) *rest.Config {
	c := rest.CopyConfig(base)
	c.QPS, c.Burst = qps, burst
	c.UserAgent = "agentmesh-bench"
	return c
}

// startEnv starts the control plane, creates the operator's namespace and
// installs the webhook configurations.
func startEnv(ctx context.Context, cfg config) (*env, error) {
	cpLog, err := os.Create(cfg.ControlPlaneLog)
	if err != nil {
		return nil, err
	}
	c, err := cluster.Start(cluster.Options{Output: cpLog})
	if err != nil {
		_ = cpLog.Close()
		return nil, err
	}
	e := &env{cfg: cfg, cluster: c}
	e.kubeconfig = filepath.Join(cfg.OutDir, "kubeconfig")
	if err := c.WriteAdminKubeconfig(e.kubeconfig); err != nil {
		return e, err
	}
	user := fastConfig(c.Config, 5000, 10000)
	if e.k8s, err = kubernetes.NewForConfig(user); err != nil {
		return e, err
	}
	if e.cl, err = client.NewWithWatch(user, client.Options{Scheme: operator.NewScheme()}); err != nil {
		return e, err
	}
	if err := e.ensureNamespace(ctx, operatorNamespace); err != nil {
		return e, err
	}
	if e.webhookPort, err = cluster.FreePort(); err != nil {
		return e, err
	}
	if err := c.InstallWebhooks(ctx, e.webhookPort); err != nil {
		return e, err
	}
	return e, nil
}

// stop stops the manager and the control plane; it runs on every exit.
func (e *env) stop() {
	if e.mgr != nil {
		e.stopManager()
	}
	if e.cluster != nil {
		if err := e.cluster.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: stopping the control plane: %v\n", err)
		}
	}
}

func (e *env) ensureNamespace(ctx context.Context, name string) error {
	return cluster.EnsureNamespace(ctx, e.k8s, name)
}

// startManager runs the manager binary with the benchmark's flags and
// waits for /readyz.
func (e *env) startManager() error {
	e.mgrRuns++
	logf, err := os.Create(filepath.Join(e.cfg.OutDir, fmt.Sprintf("manager-%d.log", e.mgrRuns)))
	if err != nil {
		return err
	}
	pprofPort, err := cluster.FreePort()
	if err != nil {
		return err
	}
	pprofAddr := "127.0.0.1:" + strconv.Itoa(pprofPort)
	started := time.Now()
	m, err := cluster.StartManager(cluster.ManagerOptions{
		Binary:      e.cfg.Manager,
		Kubeconfig:  e.kubeconfig,
		Args:        e.cfg.managerFlags(pprofAddr),
		Output:      logf,
		WebhookPort: e.webhookPort,
	})
	if err != nil {
		_ = logf.Close()
		return err
	}
	e.mgr = &managerProc{Manager: m, pprofAddr: pprofAddr, log: logf, started: started}
	return nil
}

func (e *env) waitManagerReady(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return e.mgr.WaitReady(rctx)
}

func (e *env) stopManager() {
	if err := e.mgr.Stop(30 * time.Second); err != nil {
		fmt.Fprintf(os.Stderr, "bench: manager run %d: %v (log: %s)\n", e.mgrRuns, err, e.mgr.log.Name())
	}
	_ = e.mgr.log.Close()
	e.mgr = nil
}

// managerMetrics scrapes the manager's metrics endpoint.
func (e *env) managerMetrics(ctx context.Context, names ...string) (samples, error) {
	return scrapeHTTP(ctx, e.mgr.MetricsAddr, names...)
}

// apiserverMetrics scrapes kube-apiserver's /metrics with the admin client.
func (e *env) apiserverMetrics(ctx context.Context) (samples, error) {
	b, err := e.k8s.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("scraping kube-apiserver: %w", err)
	}
	return parseProm(b), nil
}

// saveProfile fetches a pprof profile (path relative to /debug/pprof/)
// from the manager into the output directory.
func (e *env) saveProfile(ctx context.Context, path, file string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+e.mgr.pprofAddr+"/debug/pprof/"+path, http.NoBody)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("pprof %s: %s", path, resp.Status)
	}
	f, err := os.Create(filepath.Join(e.cfg.OutDir, file))
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// cpuProfile records a CPU profile of the manager in the background; wait
// blocks until it is written (or failed, which is only reported).
func (e *env) cpuProfile(ctx context.Context, file string) (wait func()) {
	if !e.cfg.Profile {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := e.saveProfile(ctx, "profile?seconds="+strconv.Itoa(e.cfg.ProfileSeconds), file); err != nil && ctx.Err() == nil {
			fmt.Fprintf(os.Stderr, "bench: CPU profile %s: %v\n", file, err)
		}
	}()
	return func() { <-done }
}

// goroutinesAfter saves the manager's goroutine stacks (aggregated, as
// text) after a delay, in the background: where its workers wait.
func (e *env) goroutinesAfter(ctx context.Context, delay time.Duration, file string) {
	if !e.cfg.Profile {
		return
	}
	go func() {
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		if err := e.saveProfile(ctx, "goroutine?debug=1", file); err != nil && ctx.Err() == nil {
			fmt.Fprintf(os.Stderr, "bench: goroutine profile %s: %v\n", file, err)
		}
	}()
}

// heapProfile saves the manager's heap profile (after a GC).
func (e *env) heapProfile(ctx context.Context, file string) {
	if !e.cfg.Profile {
		return
	}
	if err := e.saveProfile(ctx, "heap?gc=1", file); err != nil && ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "bench: heap profile %s: %v\n", file, err)
	}
}

// goMem is the manager's Go runtime memory (its go_memstats_* metrics).
type goMem struct {
	HeapInuse, HeapIdle, HeapReleased, NextGC, Sys float64
}

func (e *env) goMem(ctx context.Context) goMem {
	m, err := e.managerMetrics(ctx, "go_memstats_heap_inuse_bytes", "go_memstats_heap_idle_bytes",
		"go_memstats_heap_released_bytes", "go_memstats_next_gc_bytes", "go_memstats_sys_bytes")
	if err != nil {
		return goMem{}
	}
	return goMem{
		HeapInuse: m.sum("go_memstats_heap_inuse_bytes", nil), HeapIdle: m.sum("go_memstats_heap_idle_bytes", nil),
		HeapReleased: m.sum("go_memstats_heap_released_bytes", nil), NextGC: m.sum("go_memstats_next_gc_bytes", nil),
		Sys: m.sum("go_memstats_sys_bytes", nil),
	}
}

func (g goMem) String() string {
	if g.Sys == 0 {
		return "n/a"
	}
	return fmt.Sprintf("heap in use %s, heap idle %s (released %s), next GC at %s, total from the OS %s",
		mib(int64(g.HeapInuse)), mib(int64(g.HeapIdle)), mib(int64(g.HeapReleased)), mib(int64(g.NextGC)), mib(int64(g.Sys)))
}

// --- processes ---

// procMem is a process's resident memory, from /proc/<pid>/status: the
// peak (VmHWM) and current (VmRSS) resident set, and the current one split
// into anonymous memory (the Go heap, stacks) and file pages (the mapped
// binary).
type procMem struct {
	HWM, RSS, Anon, File int64 // bytes
}

// split renders the current resident set's parts.
func (m procMem) split() string {
	return fmt.Sprintf("anonymous %s + file-backed %s", mib(m.Anon), mib(m.File))
}

func readProcMem(pid int) (procMem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procMem{}, err
	}
	var m procMem
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "VmHWM":
			m.HWM = n * 1024
		case "VmRSS":
			m.RSS = n * 1024
		case "RssAnon":
			m.Anon = n * 1024
		case "RssFile":
			m.File = n * 1024
		}
	}
	return m, nil
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat;
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// readProcCPU is the CPU time (user and system) a process has used.
func readProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command may hold spaces; the fields after it follow the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, errors.New("malformed stat")
	}
	// f[0] is field 3 (state): utime is field 14, stime field 15.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// children finds the control plane's processes: children of this process
// named etcd and kube-apiserver.
func children() map[string]int {
	out := map[string]int{}
	self := os.Getpid()
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		j := strings.IndexByte(s, '(')
		if i < 0 || j < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid != self {
			continue
		}
		switch name := s[j+1 : i]; name {
		case "etcd", "kube-apiserver":
			out[name] = pid
		}
	}
	return out
}

// cpuSnapshot is the CPU time used so far by each process of the benchmark.
type cpuSnapshot map[string]time.Duration

func (e *env) cpuSnapshot() cpuSnapshot {
	snap := cpuSnapshot{}
	for name, pid := range children() {
		if d, err := readProcCPU(pid); err == nil {
			snap[name] = d
		}
	}
	if e.mgr != nil {
		if d, err := readProcCPU(e.mgr.Pid()); err == nil {
			snap["manager"] = d
		}
	}
	if d, err := readProcCPU(os.Getpid()); err == nil {
		snap["bench"] = d
	}
	return snap
}

// sub is the CPU time used between two snapshots.
func (s cpuSnapshot) sub(before cpuSnapshot) cpuSnapshot {
	out := cpuSnapshot{}
	for k, v := range s {
		out[k] = v - before[k]
	}
	return out
}
