package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/agentmesh/agentmesh/internal/controller"
)

// restartResult is one cold restart of the manager over every identity.
type restartResult struct {
	Label string
	// Ready is when /readyz first answered 200; Synced when the
	// AgentIdentity certificate controller's first reconcile was counted (its workers
	// start once the caches have synced); Drained when every identity had
	// been reconciled, every work queue was empty and the reconcile counts
	// stayed still for quiet; all from the process's start.
	Ready, Synced, Drained time.Duration
	// Reconciles counts the certificate controller's reconciles until
	// Drained (the trust controller makes as many).
	Reconciles float64
	// Writes are the manager's POST, PUT, PATCH and DELETE requests over
	// its whole run (rest_client_requests_total), and APIWrites the write
	// requests the API server served meanwhile (nothing else writes).
	Writes    map[string]float64
	APIWrites map[string]float64
	// Changes are the writes a watch saw, described (see writeRecorder).
	Changes []string
	Mem     procMem
	GoMem   goMem
	CPU     time.Duration // manager CPU time until Drained plus quiet
	// Procs is every process's CPU time from the start to Drained plus quiet.
	Procs cpuSnapshot
	Wall  time.Duration
}

// quiet is how long the reconcile counts must stay still to call the
// manager drained; pollEvery is how often its metrics are read in the
// first 3 seconds and once 90% of the identities have been reconciled
// (every second in between).
const (
	quiet     = 2 * time.Second
	pollEvery = 250 * time.Millisecond
)

// runRestart stops the manager and starts it again over identities
// AgentIdentities, and follows its metrics until it is drained.
func (e *env) runRestart(ctx context.Context, label string, identities int) (restartResult, error) {
	res := restartResult{Label: label, Writes: map[string]float64{}}
	if _, err := e.settle(ctx, true); err != nil {
		return res, err
	}
	e.stopManager()
	rec, err := e.recordWrites(ctx)
	if err != nil {
		return res, err
	}
	defer rec.stop()
	apiBefore, err := e.apiserverMetrics(ctx)
	if err != nil {
		return res, err
	}
	cpu0 := e.cpuSnapshot()
	if err := e.startManager(); err != nil {
		return res, err
	}
	start := e.mgr.started
	var waitProfile func()
	if e.cfg.Profile {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		for pctx.Err() == nil {
			if resp, err := http.Get("http://" + e.mgr.pprofAddr + "/debug/pprof/"); err == nil {
				_ = resp.Body.Close()
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
		waitProfile = e.cpuProfile(ctx, fmt.Sprintf("restart-%s-cpu.pprof", label))
	}
	probe := &http.Client{Timeout: time.Second}
	var (
		lastTotal   = -1.0
		stillSince  time.Time
		candidateAt time.Duration
	)
	deadline := time.Now().Add(5*time.Minute + time.Duration(identities)*10*time.Millisecond)
	// Each scrape makes the manager gather every metric (three series per
	// identity): poll slowly until the end is near.
	interval := pollEvery
	for {
		if time.Now().After(deadline) {
			return res, fmt.Errorf("restart %s: not drained after %s", label, time.Since(start).Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-e.mgr.Exited():
			return res, errors.New("restart: the manager exited; see " + e.mgr.log.Name())
		case <-time.After(interval):
		}
		now := time.Since(start)
		if res.Ready == 0 {
			if resp, err := probe.Get("http://" + e.mgr.ProbeAddr + "/readyz"); err == nil {
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					res.Ready = now
				}
			}
		}
		m, err := e.managerMetrics(ctx, "controller_runtime_reconcile_total", "workqueue_depth")
		if err != nil {
			continue // not serving yet
		}
		total := m.sum("controller_runtime_reconcile_total", map[string]string{"controller": controller.CertificateControllerName})
		all := m.sum("controller_runtime_reconcile_total", nil)
		depth := m.sum("workqueue_depth", nil)
		if res.Synced == 0 && total > 0 {
			res.Synced = now
		}
		if total >= 0.9*float64(identities) || time.Since(start) < 3*time.Second {
			interval = pollEvery
		} else {
			interval = time.Second
		}
		if total < float64(identities) || depth > 0 || res.Ready == 0 {
			stillSince, lastTotal = time.Time{}, all
			continue
		}
		if all != lastTotal || stillSince.IsZero() {
			stillSince, lastTotal, candidateAt = time.Now(), all, now
			res.Reconciles = total
			continue
		}
		if time.Since(stillSince) >= quiet {
			res.Drained = candidateAt
			break
		}
	}
	m, err := e.managerMetrics(ctx, "rest_client_requests_total")
	if err != nil {
		return res, err
	}
	for method, v := range m.sumBy("rest_client_requests_total", "method", nil) {
		if isWriteVerb(method) {
			res.Writes[method] = v
		}
	}
	apiAfter, err := e.apiserverMetrics(ctx)
	if err != nil {
		return res, err
	}
	res.APIWrites = apiWrites(apiBefore, apiAfter)
	res.Changes = rec.seen()
	for i, c := range res.Changes {
		if i == 20 {
			say("restart %s: ... and %d more", label, len(res.Changes)-i)
			break
		}
		say("restart %s: saw %s", label, c)
	}
	if res.Mem, err = readProcMem(e.mgr.Pid()); err != nil {
		return res, err
	}
	res.GoMem = e.goMem(ctx)
	if res.CPU, err = readProcCPU(e.mgr.Pid()); err != nil {
		return res, err
	}
	res.Wall, res.Procs = time.Since(start), e.cpuSnapshot().sub(cpu0)
	say("restart %s: ready %s, synced %s, drained %s, %d writes; VmHWM %s",
		label, res.Ready.Round(time.Millisecond), res.Synced.Round(time.Millisecond), res.Drained.Round(time.Millisecond),
		int(sumValues(res.Writes)), mib(res.Mem.HWM))
	if waitProfile != nil {
		waitProfile()
	}
	e.heapProfile(ctx, fmt.Sprintf("restart-%s-heap.pprof", label))
	return res, nil
}

// apiWrites are the write requests the API server served between two
// scrapes, by "VERB resource[/subresource]".
func apiWrites(before, after samples) map[string]float64 {
	out := map[string]float64{}
	for k, v := range apiRequests(before, after) {
		if isWriteVerb(k) {
			out[k] = v
		}
	}
	return out
}

func sumValues(m map[string]float64) float64 {
	var t float64
	for _, v := range m {
		t += v
	}
	return t
}

// mib renders bytes as MiB.
func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// settle waits until the running manager has nothing left to do: its work
// queues are empty and, with rotation, the CA status controller (which
// refreshes agentmesh-ca-status from the caches every 15 s) has run once
// more since, so that a restart is not charged with a refresh the running
// manager was about to make. It returns how long that took.
func (e *env) settle(ctx context.Context, rotation bool) (time.Duration, error) {
	start := time.Now()
	count := func() (float64, float64, error) {
		m, err := e.managerMetrics(ctx, "controller_runtime_reconcile_total", "workqueue_depth")
		if err != nil {
			return 0, 0, err
		}
		return m.sum("controller_runtime_reconcile_total", map[string]string{"controller": "carotation"}), m.sum("workqueue_depth", nil), nil
	}
	var since float64 = -1
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		rotations, depth, err := count()
		if err != nil {
			return 0, err
		}
		switch {
		case depth > 0:
			since = -1
		case !rotation:
			return time.Since(start), nil
		case since < 0:
			since = rotations
		case rotations > since:
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(pollEvery):
		}
	}
	say("settle: the manager still had work queued after 5 minutes; going on")
	return time.Since(start), nil
}
