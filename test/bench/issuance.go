package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/operator"
)

const (
	bulkNamespace    = "bench"
	latencyNamespace = "bench-lat"
)

func bulkName(i int) string { return fmt.Sprintf("agent-%05d", i) }

// phaseStats are what a phase cost: API requests by verb and resource (the
// API server's apiserver_request_total), the manager's requests by method
// (its rest_client_requests_total) and CPU time by process.
type phaseStats struct {
	APIRequests     map[string]float64 // "VERB resource[/subresource]"
	ManagerRequests map[string]float64 // method
	CPU             cpuSnapshot
	// Manager are the manager's full metrics before and after, for the
	// histograms that say where its time went (see managerTimings).
	ManagerBefore, ManagerAfter samples
	// API are the API server's metrics before and after.
	APIBefore, APIAfter samples
}

// statsProbe takes the "before" readings of a phase.
type statsProbe struct {
	api samples
	mgr samples
	cpu cpuSnapshot
}

func (e *env) probe(ctx context.Context) (statsProbe, error) {
	var p statsProbe
	var err error
	if p.api, err = e.apiserverMetrics(ctx); err != nil {
		return p, err
	}
	if e.mgr != nil {
		if p.mgr, err = e.managerMetrics(ctx); err != nil {
			return p, err
		}
	}
	p.cpu = e.cpuSnapshot()
	return p, nil
}

// since is what happened since the probe.
func (e *env) since(ctx context.Context, p statsProbe) (phaseStats, error) {
	st := phaseStats{CPU: e.cpuSnapshot().sub(p.cpu), APIRequests: map[string]float64{}, ManagerRequests: map[string]float64{}}
	api, err := e.apiserverMetrics(ctx)
	if err != nil {
		return st, err
	}
	st.APIBefore, st.APIAfter = p.api, api
	st.APIRequests = apiRequests(p.api, api)
	if e.mgr != nil {
		m, err := e.managerMetrics(ctx)
		if err != nil {
			return st, err
		}
		st.ManagerBefore, st.ManagerAfter = p.mgr, m
		after := m.sumBy("rest_client_requests_total", "method", nil)
		before := p.mgr.sumBy("rest_client_requests_total", "method", nil)
		for k, v := range after {
			if d := v - before[k]; d != 0 {
				st.ManagerRequests[k] = d
			}
		}
	}
	return st, nil
}

// apiRequests are the requests the API server served between two scrapes
// (apiserver_request_total), by "VERB resource[/subresource]".
func apiRequests(before, after samples) map[string]float64 {
	out := map[string]float64{}
	key := func(s sample) string {
		k := s.labels["verb"] + " " + s.labels["resource"]
		if sub := s.labels["subresource"]; sub != "" {
			k += "/" + sub
		}
		return k
	}
	for _, s := range after {
		if s.name == "apiserver_request_total" {
			out[key(s)] += s.value
		}
	}
	for _, s := range before {
		if s.name == "apiserver_request_total" {
			out[key(s)] -= s.value
		}
	}
	for k, v := range out {
		if v == 0 {
			delete(out, k)
		}
	}
	return out
}

// isWriteVerb reports whether a key "VERB ..." or a method names a write.
func isWriteVerb(k string) bool {
	verb, _, _ := strings.Cut(k, " ")
	switch verb {
	case "POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION":
		return true
	}
	return false
}

// writes counts the write requests of a map keyed by "VERB ..." or by
// method.
func writes(byVerb map[string]float64) float64 {
	var n float64
	for k, v := range byVerb {
		if isWriteVerb(k) {
			n += v
		}
	}
	return n
}

// bulkResult is the bulk issuance phase.
type bulkResult struct {
	N           int
	Elapsed     time.Duration // first create to the last identity Ready with its Secret
	CreatesDone time.Duration // first create to the last create answered
	SecretBytes int           // data size of an issued Secret
	Stats       phaseStats
	// Drained is from the first create until the manager's work queues
	// were empty again.
	Drained time.Duration
}

func (b bulkResult) perSecond() float64 { return float64(b.N) / b.Elapsed.Seconds() }

// readyTracker counts identities that became Ready, remembering when each
// did. The manager writes Ready only after the Secret (checked at the end
// with one List), so the benchmark does not add a Secret watch to the API
// server's work.
type readyTracker struct {
	mu    sync.Mutex
	ready map[string]time.Time
	want  int
	done  chan struct{}
	last  time.Time
}

func newReadyTracker(want int) *readyTracker {
	return &readyTracker{ready: map[string]time.Time{}, want: want, done: make(chan struct{})}
}

func (t *readyTracker) identity(_ watch.EventType, o client.Object) {
	id, ok := o.(*mtlsv1alpha1.AgentIdentity)
	if !ok || !meta.IsStatusConditionTrue(id.Status.Conditions, mtlsv1alpha1.ConditionReady) {
		return
	}
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, seen := t.ready[id.Name]; !seen {
		t.ready[id.Name] = now
		t.check(now)
	}
}

// check closes done once want identities are Ready (called with mu held).
func (t *readyTracker) check(now time.Time) {
	if t.want < 0 || len(t.ready) < t.want {
		return
	}
	t.last = now
	t.want = -1
	close(t.done)
}

func (t *readyTracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.ready)
}

// wait waits for every identity, reporting progress every 10 seconds.
func (t *readyTracker) wait(ctx context.Context, what string, timeout time.Duration) error {
	deadline := time.After(timeout)
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-t.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return fmt.Errorf("%s: only %d identities Ready after %s", what, t.count(), timeout)
		case <-tick.C:
			say("%s: %d Ready", what, t.count())
		}
	}
}

var managedSelector = operator.ManagedSelector()

// runBulk creates N AgentIdentities in one namespace and waits until every
// one is Ready and its Secret exists.
func (e *env) runBulk(ctx context.Context) (bulkResult, error) {
	res := bulkResult{N: e.cfg.N}
	if err := e.ensureNamespace(ctx, bulkNamespace); err != nil {
		return res, err
	}
	tr := newReadyTracker(e.cfg.N)
	stopIDs, err := e.observe(ctx, func() client.ObjectList { return &mtlsv1alpha1.AgentIdentityList{} }, bulkNamespace, nil, tr.identity)
	if err != nil {
		return res, err
	}
	defer stopIDs()
	p, err := e.probe(ctx)
	if err != nil {
		return res, err
	}
	waitProfile := e.cpuProfile(ctx, "bulk-cpu.pprof")
	e.goroutinesAfter(ctx, 5*time.Second, "bulk-goroutines.txt")
	say("bulk: creating %d AgentIdentities in namespace %s", e.cfg.N, bulkNamespace)
	start := time.Now()
	if err := parallel(ctx, e.cfg.N, 16, func(ctx context.Context, i int) error {
		return e.cl.Create(ctx, &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: bulkNamespace, Name: bulkName(i)}})
	}); err != nil {
		return res, fmt.Errorf("bulk: creating AgentIdentities: %w", err)
	}
	res.CreatesDone = time.Since(start)
	say("bulk: created in %s; waiting for Ready", res.CreatesDone.Round(time.Millisecond))
	if err := tr.wait(ctx, "bulk", 10*time.Minute+time.Duration(e.cfg.N)*50*time.Millisecond); err != nil {
		return res, err
	}
	res.Elapsed = tr.last.Sub(start)
	if res.Stats, err = e.since(ctx, p); err != nil {
		return res, err
	}
	// Ready is written after the Secret; check that every one exists.
	secrets := &corev1.SecretList{}
	if err := e.cl.List(ctx, secrets, client.InNamespace(bulkNamespace), client.MatchingLabelsSelector{Selector: managedSelector}); err != nil {
		return res, err
	}
	if len(secrets.Items) != e.cfg.N {
		return res, fmt.Errorf("bulk: %d identities Ready but %d Secrets", e.cfg.N, len(secrets.Items))
	}
	if res.Drained, err = e.settle(ctx, false); err != nil {
		return res, err
	}
	res.Drained += res.Elapsed
	say("bulk: %d Ready in %s (%.0f identities/s); waiting for the CPU profile", e.cfg.N, res.Elapsed.Round(time.Millisecond), res.perSecond())
	waitProfile()
	sec := &corev1.Secret{}
	if err := e.cl.Get(ctx, types.NamespacedName{Namespace: bulkNamespace, Name: bulkName(0) + mtlsv1alpha1.DefaultSecretNameSuffix}, sec); err != nil {
		return res, err
	}
	for _, v := range sec.Data {
		res.SecretBytes += len(v)
	}
	return res, nil
}

// latencyResult is create -> Ready at a steady rate.
type latencyResult struct {
	Count         int
	Rate          float64
	P50, P99, Max time.Duration
	Missing       int
	Wall          time.Duration
	CPU           cpuSnapshot
	Stats         phaseStats
}

// runLatency creates identities at a steady rate in their own namespace
// and measures, per identity, the time from the create call to the watch
// event that shows it Ready.
func (e *env) runLatency(ctx context.Context) (latencyResult, error) {
	n := int(e.cfg.LatencyRate * e.cfg.LatencyDuration.Seconds())
	res := latencyResult{Count: n, Rate: e.cfg.LatencyRate}
	if err := e.ensureNamespace(ctx, latencyNamespace); err != nil {
		return res, err
	}
	var mu sync.Mutex
	started := map[string]time.Time{}
	ready := map[string]time.Time{}
	stop, err := e.observe(ctx, func() client.ObjectList { return &mtlsv1alpha1.AgentIdentityList{} }, latencyNamespace, nil,
		func(_ watch.EventType, o client.Object) {
			id, ok := o.(*mtlsv1alpha1.AgentIdentity)
			if !ok || !meta.IsStatusConditionTrue(id.Status.Conditions, mtlsv1alpha1.ConditionReady) {
				return
			}
			now := time.Now()
			mu.Lock()
			if _, seen := ready[id.Name]; !seen {
				ready[id.Name] = now
			}
			mu.Unlock()
		})
	if err != nil {
		return res, err
	}
	defer stop()
	// Steady state: the manager has finished what the earlier phases gave it.
	if _, err := e.settle(ctx, false); err != nil {
		return res, err
	}
	say("latency: %d creates at %.0f/s", n, e.cfg.LatencyRate)
	p, err := e.probe(ctx)
	if err != nil {
		return res, err
	}
	cpu0, start := e.cpuSnapshot(), time.Now()
	interval := time.Duration(float64(time.Second) / e.cfg.LatencyRate)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		select {
		case <-ctx.Done():
			wg.Wait()
			return res, ctx.Err()
		case <-tick.C:
		}
		name := fmt.Sprintf("lat-%05d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			mu.Lock()
			started[name] = time.Now()
			mu.Unlock()
			if err := e.cl.Create(ctx, &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: latencyNamespace, Name: name}}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return res, fmt.Errorf("latency: creating an AgentIdentity: %w", err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		got := len(ready)
		mu.Unlock()
		if got >= n || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	res.Wall, res.CPU = time.Since(start), e.cpuSnapshot().sub(cpu0)
	if res.Stats, err = e.since(ctx, p); err != nil {
		return res, err
	}
	mu.Lock()
	defer mu.Unlock()
	lat := make([]time.Duration, 0, n)
	for name, t0 := range started {
		if t1, ok := ready[name]; ok {
			lat = append(lat, t1.Sub(t0))
		} else {
			res.Missing++
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	res.P50, res.P99, res.Max = quantile(lat, 0.5), quantile(lat, 0.99), quantile(lat, 1)
	say("latency: p50 %s, p99 %s, max %s, %d not Ready", res.P50, res.P99, res.Max, res.Missing)
	return res, nil
}

// quantile is the nearest-rank q-quantile of sorted durations.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}
