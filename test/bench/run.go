package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/agentmesh/agentmesh/test/cluster"
)

// say prints a progress line.
func say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// run runs every phase in order. Whatever happens (an error, Ctrl-C), the
// manager and the control plane are stopped and the figures measured so
// far are written.
func run(ctx context.Context) error {
	root, err := cluster.RepoRoot()
	if err != nil {
		return err
	}
	cfg, err := envConfig(root)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return err
	}
	if _, err := os.Stat(cfg.Manager); err != nil {
		return fmt.Errorf("%s not found: run `make build` first", cfg.Manager)
	}
	r := &results{cfg: cfg, machine: readMachine(), started: time.Now()}
	say("N=%d, manager %s, machine %s, load average %s", cfg.N, cfg.Manager, r.machine.summary(), r.machine.LoadStart)
	say("starting etcd and kube-apiserver on 127.0.0.1 (log: %s)", cfg.ControlPlaneLog)
	e, err := startEnv(ctx, cfg)
	if e != nil {
		defer e.stop()
	}
	if err == nil {
		err = r.runPhases(ctx, e)
	}
	r.err = err
	r.machine.LoadEnd = loadAverage()
	// A run that stopped early leaves the last complete results alone.
	out := filepath.Join(cfg.OutDir, "results.md")
	if err != nil {
		out = filepath.Join(cfg.OutDir, "results.partial.md")
	}
	report := r.markdown()
	fmt.Println()
	fmt.Print(report)
	if werr := os.WriteFile(out, []byte(report), 0o644); werr != nil {
		return werr
	}
	say("results written to %s; profiles and logs in %s", out, cfg.OutDir)
	return err
}

func (r *results) runPhases(ctx context.Context, e *env) error {
	var err error
	ph := r.cfg.Phases
	if ph["floor"] {
		// Namespaces of the same length: the Secrets and patches (which
		// name the namespace) are of the same size in both.
		if r.floor, err = e.runFloor(ctx, "bench-floor-t", false); err != nil {
			return err
		}
		if r.floorFree, err = e.runFloor(ctx, "bench-floor-u", true); err != nil {
			return err
		}
		r.have.floor = true
	}

	say("starting the manager (pprof and metrics on loopback)")
	if err := e.startManager(); err != nil {
		return err
	}
	if err := e.waitManagerReady(ctx); err != nil {
		return err
	}
	if r.memIdle, err = readProcMem(e.mgr.Pid()); err != nil {
		return err
	}

	identities := 0
	if ph["bulk"] {
		if r.bulk, err = e.runBulk(ctx); err != nil {
			return err
		}
		r.have.bulk = true
		identities += r.cfg.N
	}
	if ph["fanout"] {
		if r.fanout, err = e.runFanout(ctx); err != nil {
			return err
		}
		r.have.fanout = true
	}
	if ph["bulk"] {
		if r.memAtN, err = readProcMem(e.mgr.Pid()); err != nil {
			return err
		}
		r.have.memAtN = true
		r.goMemAtN = e.goMem(ctx)
		e.heapProfile(ctx, "at-n-heap.pprof")
		say("memory at %d identities: VmHWM %s, VmRSS %s", r.cfg.N, mib(r.memAtN.HWM), mib(r.memAtN.RSS))
		if e.cfg.Profile {
			if r.heapInuse, err = profileInuse(filepath.Join(r.cfg.OutDir, "at-n-heap.pprof")); err != nil {
				say("heap profile: %v", err)
			}
		}
		if r.caches, err = e.measureCaches(ctx); err != nil {
			return fmt.Errorf("measuring the caches: %w", err)
		}
	}
	if ph["latency"] {
		if r.latency, err = e.runLatency(ctx); err != nil {
			return err
		}
		r.have.latency = true
		identities += r.latency.Count
	}
	if ph["webhook"] {
		if r.webhook, err = e.runWebhook(ctx); err != nil {
			return err
		}
		r.have.webhook = true
		identities++
	}
	if !ph["restart"] {
		return nil
	}
	r.identities = identities
	rs, err := e.runRestart(ctx, "before-unrelated", identities)
	if err != nil {
		return err
	}
	r.restarts = append(r.restarts, rs)
	if r.unrelated, err = e.addUnrelated(ctx); err != nil {
		return err
	}
	r.have.unrelated = true
	rs, err = e.runRestart(ctx, "after-unrelated", identities)
	if err != nil {
		return err
	}
	r.restarts = append(r.restarts, rs)
	return nil
}
