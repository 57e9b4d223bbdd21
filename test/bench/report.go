package main

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"
)

// results are the figures of one run.
type results struct {
	cfg     config
	machine machine
	started time.Time
	err     error

	floor     floorResult
	floorFree floorResult
	memIdle   procMem
	bulk      bulkResult
	fanout    fanoutResult
	memAtN    procMem
	goMemAtN  goMem
	// heapInuse is the inuse_space of the manager's heap profile at N.
	heapInuse int64
	caches    []cacheCost
	latency   latencyResult
	webhook   webhookResult
	restarts  []restartResult
	unrelated unrelatedResult
	// identities is how many AgentIdentities the restarts ran over.
	identities int
	have       struct{ floor, bulk, fanout, memAtN, latency, webhook, unrelated bool }
}

// machine describes where the figures come from.
type machine struct {
	CPU       string
	Cores     int
	MemTotal  string
	Kernel    string
	Go        string
	LoadStart string
	LoadEnd   string
}

func readMachine() machine {
	m := machine{CPU: "unknown", Cores: runtime.NumCPU(), Go: runtime.Version(), LoadStart: loadAverage()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && k == "MemTotal" {
				var kb int64
				_, _ = fmt.Sscan(strings.TrimSpace(v), &kb)
				m.MemTotal = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

func (m machine) summary() string {
	return fmt.Sprintf("%s, %d cores, %s RAM, Linux %s, %s", m.CPU, m.Cores, m.MemTotal, m.Kernel, m.Go)
}

// loadAverage is the 1, 5 and 15 minute load average.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// Goals (issue 9).
const (
	goalBulkRatio       = 1.5
	goalBulkFreeRatio   = 3.0          // issue 17
	goalBulkPerSecond   = 10000.0 / 60 // 10k Ready in 60 s
	goalLatencyP99      = 200 * time.Millisecond
	goalMemAt10k        = 100 << 20
	goalUnrelatedMem    = 10 << 20
	goalRestart         = 15 * time.Second
	goalWebhookHandler  = 0.005 // s, p99
	goalWebhookAPIServe = 0.025 // s, p99
)

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func dur(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func ms(s float64) string {
	if math.IsNaN(s) {
		return "n/a"
	}
	if s < 0.001 {
		return fmt.Sprintf("%.0f µs", s*1e6)
	}
	return fmt.Sprintf("%.1f ms", s*1e3)
}

// markdown renders the results: the summary table first, then the detail
// that explains it.
func (r *results) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	n := r.cfg.N
	p("# agentmesh benchmark (`make bench`)\n\n")
	p("- date: %s\n", r.started.Format("2006-01-02 15:04 MST"))
	p("- machine: %s\n", r.machine.summary())
	p("- load average (1/5/15 min): %s at the start, %s at the end\n", r.machine.LoadStart, r.machine.LoadEnd)
	p("- manager: `bin/manager %s` (separate process; other flags at their defaults; metrics and pprof on loopback)\n",
		strings.Join(r.cfg.managerFlags("127.0.0.1:<port>"), " "))
	p("- control plane: etcd and kube-apiserver from bin/ (test/cluster), on the same machine as the manager and this benchmark\n")
	p("- N = %d identities\n", n)
	if r.err != nil {
		p("\n**The run stopped early: %v.** The figures below are those measured before.\n", r.err)
	}

	p("\n| # | measure | figure | goal | ratio to the throttled floor (our own rate limit) / to the unthrottled floor (the API server) | met |\n|---|---|---|---|---|---|\n")
	if r.have.floor {
		for i, f := range []floorResult{r.floor, r.floorFree} {
			what := "throttled floor (our own client-side rate limit, not the API server's)"
			if f.Unthrottled {
				what = "unthrottled floor (the API server on this machine)"
			}
			p("| 1%c | %s: plain client, %d Secret creates (%d B of data) + %d status merge patches (%d B), %s, %d workers | %s, **%.0f writes/s** (%.0f identities/s) | | %s | |\n",
				'a'+i, what, n, f.SecretBytes, n, f.PatchBytes, f.limits(), r.cfg.FloorWorkers, dur(f.Elapsed), f.writesPerSecond(), f.perSecond(), r.ratios(f.Elapsed))
		}
	}
	if r.have.bulk {
		bk := r.bulk
		ratio := r.ratio(bk.Elapsed)
		free := r.ratioFree(bk.Elapsed)
		p("| 2 | bulk issuance: %d AgentIdentities created (the creates took %s) until all Ready with their Secret (manager's queues empty after %s); manager writes per identity **%.2f** | %s, **%.0f identities/s** | <= %.1fx the throttled floor; <= %.0fx the unthrottled floor; 10k in <= 60 s (>= %.0f/s) | %s | %s / %s / %s |\n",
			n, dur(bk.CreatesDone), dur(bk.Drained), writes(bk.Stats.ManagerRequests)/float64(n), dur(bk.Elapsed), bk.perSecond(), goalBulkRatio, goalBulkFreeRatio, goalBulkPerSecond, r.ratios(bk.Elapsed),
			yesNo(ratio <= goalBulkRatio), yesNo(free <= goalBulkFreeRatio), yesNo(bk.perSecond() >= goalBulkPerSecond))
	}
	if r.have.latency {
		l := r.latency
		p("| 3 | latency: create -> Ready (watch), %d creates at %.0f/s | p50 **%s**, p99 **%s**, max %s; %d not Ready within 1 min | p99 <= %s | | %s |\n",
			l.Count, l.Rate, dur(l.P50), dur(l.P99), dur(l.Max), l.Missing, dur(goalLatencyP99), yesNo(l.P99 <= goalLatencyP99 && l.Missing == 0))
	}
	if r.have.memAtN {
		p("| 4a | memory: manager peak RSS (VmHWM) at %d identities, after bulk issuance and fan-out (idle after start: %s) | **%s** (VmRSS now %s) | <= 100 MiB at 10k | | %s |\n",
			n, mib(r.memIdle.HWM), mib(r.memAtN.HWM), mib(r.memAtN.RSS), yesNo(float64(r.memAtN.HWM) <= float64(goalMemAt10k)*math.Max(1, float64(n)/10000)))
	}
	if r.have.memAtN && r.heapInuse > 0 {
		p("| 4c | memory: the manager's live heap at %d identities (inuse_space of its heap profile, taken after a GC: at-n-heap.pprof) | **%s** | | | |\n", n, mib(r.heapInuse))
	}
	for _, c := range r.caches {
		p("| 4d | cache: %d %s in the manager's cache (its cache options rebuilt in the benchmark; live heap after GC, before and after the informer synced, over the objects) | **%.0f B per object** (%s) | | | |\n",
			c.Objects, c.Kind, c.perObject(), mib(c.Bytes))
	}
	if len(r.restarts) == 2 && r.have.unrelated {
		a, c := r.restarts[0], r.restarts[1]
		d := c.Mem.HWM - a.Mem.HWM
		u := r.unrelated
		p("| 4b | memory: + %d unlabelled 1 MiB Secrets and %d small ones; VmHWM of a restarted manager before -> after (running manager's VmRSS: %s -> %s) | %s -> %s: **%+.1f MiB** | <= +10 MiB | | %s |\n",
			u.Large, u.Small, mib(u.Before.RSS), mib(u.After.RSS), mib(a.Mem.HWM), mib(c.Mem.HWM), float64(d)/(1<<20), yesNo(d <= goalUnrelatedMem))
	}
	for i, rs := range r.restarts {
		w := sumValues(rs.Writes)
		p("| 5%c | cold restart over %d identities (%s): /readyz %s, caches synced %s, queue drained | **%s**, **%.0f writes** (%s) | <= 15 s, 0 writes | | %s / %s |\n",
			'a'+i, r.identities, strings.ReplaceAll(rs.Label, "-", " "), dur(rs.Ready), dur(rs.Synced), dur(rs.Drained), w, byKey(rs.Writes),
			yesNo(rs.Drained <= goalRestart), yesNo(w == 0))
	}
	if r.have.fanout {
		f := r.fanout
		p("| 6 | policy fan-out: one namespace-wide AgentTrustPolicy over %d identities until every trust ConfigMap names it (policy Ready after %s; manager's queues empty after %s) | **%s** (%.0f identities/s); policy.json **%d B**, bundle.pem %d B | (none set) | %s | |\n",
			n, dur(f.PolicyReady), dur(f.Drained), dur(f.Elapsed), float64(n)/f.Elapsed.Seconds(), f.PolicyJSONBytes, f.BundleBytes, r.ratios(f.Elapsed))
	}
	if r.have.webhook {
		w := r.webhook
		p("| 7 | webhook: %d labelled Pod creates at %.0f/s (%d errors, %d injected) | client POST p50 **%s** p99 **%s**; handler p50 %s p99 **%s** (<= %s); API server's webhook call p50 %s p99 %s (<= %s) | handler p99 <= 5 ms, API server p99 <= 25 ms | | %s |\n",
			w.Pods, w.Rate, w.Errors, w.Injected, dur(w.ClientP50), dur(w.ClientP99),
			ms(w.HandlerP50.Value), ms(w.HandlerP99.Value), ms(w.HandlerP99.Bound),
			ms(w.APIServerP50.Value), ms(w.APIServerP99.Value), ms(w.APIServerP99.Bound),
			yesNo(w.HandlerP99.Value <= goalWebhookHandler && w.APIServerP99.Value <= goalWebhookAPIServe && w.Errors == 0))
	}

	p("\nHistogram quantiles (handler, API server) are interpolated inside the buckets of the metric (the handler's, agentmesh_webhook_request_duration_seconds, has 10 buckets up to 10 ms; the API server's has edges at 5, 25 and 100 ms); the bound in parentheses is the bucket's upper edge. Client-side figures are exact.\n")

	// Detail: where the work went.
	if r.have.bulk {
		p("\n## Bulk issuance: API requests per identity\n\nFrom kube-apiserver's `apiserver_request_total` (every client: the manager, and this benchmark's creates and watches) and the manager's `rest_client_requests_total`, divided by N.\n\n")
		p("| request | per identity |\n|---|---|\n")
		requestRows(p, r.bulk.Stats, n)
		p("| manager writes (POST+PUT+PATCH+DELETE) | **%.2f** (the floor: 2) |\n", writes(r.bulk.Stats.ManagerRequests)/float64(n))
		p("\nIssued Secret: %d B of data (tls.crt + tls.key + ca.crt); the floor's: %d B.\n", r.bulk.SecretBytes, r.floor.SecretBytes)
	}
	if r.have.fanout {
		p("\n## Policy fan-out: API requests per identity\n\n| request | per identity |\n|---|---|\n")
		requestRows(p, r.fanout.Stats, n)
	}
	for _, ph := range []struct {
		have  bool
		title string
		stats phaseStats
	}{
		{r.have.bulk, "Bulk issuance", r.bulk.Stats},
		{r.have.fanout, "Policy fan-out", r.fanout.Stats},
		{r.have.latency, "Latency phase", r.latency.Stats},
		{r.have.webhook, "Webhook phase", r.webhook.Stats},
	} {
		if ph.have {
			p("\n## %s: where the manager's time went\n\n", ph.title)
			r.managerTimings(&b, ph.stats)
		}
	}
	p("\n## CPU time by process\n\nCPU seconds used during the phase, and as cores (CPU seconds / wall seconds); the machine has %d.\n\n", r.machine.Cores)
	p("| phase | wall | kube-apiserver | etcd | manager | benchmark |\n|---|---|---|---|---|---|\n")
	row := func(name string, wall time.Duration, c cpuSnapshot) {
		cell := func(k string) string {
			v, ok := c[k]
			if !ok {
				return "-"
			}
			return fmt.Sprintf("%.1f s (%.2f)", v.Seconds(), v.Seconds()/wall.Seconds())
		}
		p("| %s | %s | %s | %s | %s | %s |\n", name, dur(wall), cell("kube-apiserver"), cell("etcd"), cell("manager"), cell("bench"))
	}
	if r.have.floor {
		row("floor (throttled)", r.floor.Elapsed, r.floor.CPU)
		row("floor (unthrottled)", r.floorFree.Elapsed, r.floorFree.CPU)
	}
	if r.have.bulk {
		row("bulk issuance", r.bulk.Elapsed, r.bulk.Stats.CPU)
	}
	if r.have.fanout {
		row("policy fan-out (to queues empty)", r.fanout.Drained, r.fanout.Stats.CPU)
	}
	if r.have.latency {
		row("latency (steady creates)", r.latency.Wall, r.latency.CPU)
	}
	if r.have.webhook {
		row("webhook (Pod creates)", r.webhook.Wall, r.webhook.CPU)
	}
	for _, rs := range r.restarts {
		row("restart "+rs.Label+" (to drained + quiet)", rs.Wall, rs.Procs)
	}
	if len(r.restarts) > 0 {
		p("\n## Cold restarts\n\n| restart | /readyz | synced | drained | AgentIdentity reconciles | manager writes | API server writes | manager CPU | VmHWM |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, rs := range r.restarts {
			p("| %s | %s | %s | %s | %.0f | %s | %s | %.1f s | %s |\n", rs.Label, dur(rs.Ready), dur(rs.Synced), dur(rs.Drained), rs.Reconciles,
				byKey(rs.Writes), byKey(rs.APIWrites), rs.CPU.Seconds(), mib(rs.Mem.HWM))
		}
		for _, rs := range r.restarts {
			if len(rs.Changes) > 0 {
				p("\nWrites a watch saw during restart %s:\n\n", rs.Label)
				for i, c := range rs.Changes {
					if i == 20 {
						p("- ... and %d more\n", len(rs.Changes)-i)
						break
					}
					p("- %s\n", c)
				}
			}
		}
		p("\nDrained: every identity reconciled at least once, every work queue empty, and the reconcile counts still for %s (metrics polled every %s for the first 3 s and once 90%% of the identities were reconciled, every second in between; synced and drained are accurate to that).\n", quiet, pollEvery)
	}
	if r.have.memAtN {
		p("\n## Memory\n\nAt %d identities, after bulk issuance and fan-out: VmHWM %s, VmRSS %s (%s); Go runtime: %s.\n", n, mib(r.memAtN.HWM), mib(r.memAtN.RSS), r.memAtN.split(), r.goMemAtN)
		for _, rs := range r.restarts {
			p("After restart %s: VmHWM %s, VmRSS %s (%s); Go runtime: %s.\n", rs.Label, mib(rs.Mem.HWM), mib(rs.Mem.RSS), rs.Mem.split(), rs.GoMem)
		}
	}
	if r.have.unrelated {
		p("\nUnrelated Secrets: %d x %d B and %d x 64 B, created in %s.\n", r.unrelated.Large, largeSecretBytes, r.unrelated.Small, dur(r.unrelated.Elapsed))
	}
	p("\nProfiles (`go tool pprof bin/manager bin/bench/<file>`): bulk-cpu.pprof, fanout-cpu.pprof, webhook-cpu.pprof (first %d s of the phase), at-n-heap.pprof, restart-*-cpu.pprof, restart-*-heap.pprof. Manager logs: manager-*.log.\n", r.cfg.ProfileSeconds)
	return b.String()
}

// ratio is a phase's time over the throttled floor's (NaN without a
// floor).
func (r *results) ratio(d time.Duration) float64 {
	if !r.have.floor {
		return math.NaN()
	}
	return d.Seconds() / r.floor.Elapsed.Seconds()
}

// ratioFree is a phase's time over the unthrottled floor's.
func (r *results) ratioFree(d time.Duration) float64 {
	if !r.have.floor {
		return math.NaN()
	}
	return d.Seconds() / r.floorFree.Elapsed.Seconds()
}

// ratios renders both ratios, throttled first.
func (r *results) ratios(d time.Duration) string {
	if !r.have.floor {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx throttled / %.2fx unthrottled", r.ratio(d), r.ratioFree(d))
}

func sortedKeys(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// byKey renders a map of counts as "K n, K n", or "none".
func byKey(m map[string]float64) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s %.0f", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// managerTimings renders, from the manager's own metrics over a phase: the
// reconciles per identity by controller and result, how long reconciles
// took and waited in the queue, and how long its API requests took and
// waited for the client-side rate limiter.
func (r *results) managerTimings(b *strings.Builder, st phaseStats) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	before, after := st.ManagerBefore, st.ManagerAfter
	if after == nil {
		return
	}
	n := float64(r.cfg.N)
	p("| metric | count (per identity) | mean | p50 | p99 | total |\n|---|---|---|---|---|---|\n")
	row := func(what string, h histStats) {
		if h.Count <= 0 {
			return
		}
		p("| %s | %.0f (%.2f) | %s | %s | %s | %.1f s |\n", what, h.Count, h.Count/n, ms(h.mean()), ms(h.P50.Value), ms(h.P99.Value), h.Sum)
	}
	for _, c := range after.labelValues("controller_runtime_reconcile_total", "controller") {
		for _, res := range after.labelValues("controller_runtime_reconcile_total", "result") {
			want := map[string]string{"controller": c, "result": res}
			if d := after.sum("controller_runtime_reconcile_total", want) - before.sum("controller_runtime_reconcile_total", want); d > 0 {
				p("| reconciles: %s, %s | %.0f (%.2f) | | | | |\n", c, res, d, d/n)
			}
		}
		row("reconcile time: "+c, histogramStats(before, after, "controller_runtime_reconcile_time_seconds", map[string]string{"controller": c}))
		row("time in work queue: "+c, histogramStats(before, after, "workqueue_queue_duration_seconds", map[string]string{"name": c}))
	}
	// The API server's view of the write requests (every client's).
	seen := map[string]bool{}
	for _, s := range st.APIAfter {
		if s.name != "apiserver_request_duration_seconds_count" {
			continue
		}
		switch s.labels["verb"] {
		case "POST", "PUT", "PATCH", "DELETE":
		default:
			continue
		}
		want := map[string]string{"verb": s.labels["verb"], "resource": s.labels["resource"], "subresource": s.labels["subresource"]}
		what := s.labels["verb"] + " " + s.labels["resource"]
		if s.labels["subresource"] != "" {
			what += "/" + s.labels["subresource"]
		}
		if seen[what] {
			continue
		}
		seen[what] = true
		row("API server request latency: "+what, histogramStats(st.APIBefore, st.APIAfter, "apiserver_request_duration_seconds", want))
	}
}

// requestRows writes the table rows of a phase's requests per identity: the
// API server's (those of at least 0.01 per identity) and the manager's.
func requestRows(p func(string, ...any), st phaseStats, n int) {
	for _, k := range sortedKeys(st.APIRequests) {
		if v := st.APIRequests[k]; v/float64(n) >= 0.01 {
			p("| API server: %s | %.2f |\n", k, v/float64(n))
		}
	}
	for _, k := range sortedKeys(st.ManagerRequests) {
		p("| manager: %s | %.2f |\n", k, st.ManagerRequests[k]/float64(n))
	}
}
