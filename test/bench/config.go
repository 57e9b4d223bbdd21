package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// config is the benchmark's settings, read from the environment.
type config struct {
	// N is the number of identities of the bulk, fan-out, memory and
	// restart phases (BENCH_N).
	N int
	// QPS and Burst are the manager's --kube-api-qps and --kube-api-burst,
	// and the floor client's rate limits (BENCH_QPS, BENCH_BURST).
	QPS   float64
	Burst int
	// Workers is the manager's --max-concurrent-reconciles (BENCH_WORKERS).
	Workers int
	// FloorWorkers is the floor client's parallelism
	// (BENCH_FLOOR_WORKERS): enough that only the rate limits and the API
	// server bound the floor, not the latency of one request.
	FloorWorkers int
	// ManagerArgs are extra manager flags (BENCH_MANAGER_ARGS, space
	// separated).
	ManagerArgs []string
	// LatencyRate and LatencyDuration drive the latency phase
	// (BENCH_LATENCY_RATE per second, BENCH_LATENCY_DURATION).
	LatencyRate     float64
	LatencyDuration time.Duration
	// WebhookRate and WebhookPods drive the webhook phase
	// (BENCH_WEBHOOK_RATE per second, BENCH_WEBHOOK_PODS).
	WebhookRate float64
	WebhookPods int
	// UnrelatedLarge (1 MiB each) and UnrelatedSmall are the unlabelled
	// Secrets added before the second restart (BENCH_UNRELATED_LARGE,
	// BENCH_UNRELATED_SMALL).
	UnrelatedLarge int
	UnrelatedSmall int
	// Profile fetches CPU and heap profiles from the manager's pprof
	// endpoint (BENCH_PROFILE, default true).
	Profile bool
	// ProfileSeconds is the length of each CPU profile
	// (BENCH_PROFILE_SECONDS).
	ProfileSeconds int
	// OutDir receives results.md and the profiles (BENCH_OUT).
	OutDir string
	// Manager is the manager binary (BENCH_MANAGER).
	Manager string
	// ControlPlaneLog receives etcd's and kube-apiserver's output.
	ControlPlaneLog string
	// Phases are the phases to run (BENCH_PHASES, comma separated; all by
	// default): floor, bulk, fanout, latency, webhook, restart. fanout
	// needs bulk; restart includes the unrelated Secrets.
	Phases map[string]bool
}

var allPhases = []string{"floor", "bulk", "fanout", "latency", "webhook", "restart"}

// envConfig reads the settings; defaults are the manager's own defaults
// for QPS, burst and workers, and the sizes the issue names.
func envConfig(root string) (config, error) {
	c := config{
		N: 10000, QPS: 200, Burst: 400, Workers: 8, FloorWorkers: 64,
		LatencyRate: 20, LatencyDuration: 30 * time.Second,
		WebhookRate: 200, WebhookPods: 2000,
		UnrelatedLarge: 300, UnrelatedSmall: 30000,
		Profile: true, ProfileSeconds: 20,
		OutDir:  filepath.Join(root, "bin", "bench"),
		Manager: filepath.Join(root, "bin", "manager"),
	}
	var errs []string
	intVar := func(name string, p *int, minimum int) {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < minimum {
				errs = append(errs, fmt.Sprintf("%s=%q: want an integer >= %d", name, v, minimum))
				return
			}
			*p = n
		}
	}
	floatVar := func(name string, p *float64) {
		if v := os.Getenv(name); v != "" {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 {
				errs = append(errs, fmt.Sprintf("%s=%q: want a number > 0", name, v))
				return
			}
			*p = f
		}
	}
	intVar("BENCH_N", &c.N, 1)
	floatVar("BENCH_QPS", &c.QPS)
	intVar("BENCH_BURST", &c.Burst, 1)
	intVar("BENCH_WORKERS", &c.Workers, 1)
	intVar("BENCH_FLOOR_WORKERS", &c.FloorWorkers, 1)
	floatVar("BENCH_LATENCY_RATE", &c.LatencyRate)
	if v := os.Getenv("BENCH_LATENCY_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Sprintf("BENCH_LATENCY_DURATION=%q: want a positive duration, e.g. 30s", v))
		}
		c.LatencyDuration = d
	}
	floatVar("BENCH_WEBHOOK_RATE", &c.WebhookRate)
	intVar("BENCH_WEBHOOK_PODS", &c.WebhookPods, 1)
	intVar("BENCH_UNRELATED_LARGE", &c.UnrelatedLarge, 0)
	intVar("BENCH_UNRELATED_SMALL", &c.UnrelatedSmall, 0)
	intVar("BENCH_PROFILE_SECONDS", &c.ProfileSeconds, 1)
	if v := os.Getenv("BENCH_PROFILE"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Sprintf("BENCH_PROFILE=%q: want true or false", v))
		}
		c.Profile = b
	}
	if v := os.Getenv("BENCH_OUT"); v != "" {
		c.OutDir = v
	}
	if v := os.Getenv("BENCH_MANAGER"); v != "" {
		c.Manager = v
	}
	c.ManagerArgs = strings.Fields(os.Getenv("BENCH_MANAGER_ARGS"))
	c.Phases = map[string]bool{}
	phases := os.Getenv("BENCH_PHASES")
	if phases == "" {
		phases = strings.Join(allPhases, ",")
	}
	for _, ph := range strings.Split(phases, ",") {
		ph = strings.TrimSpace(ph)
		if !slices.Contains(allPhases, ph) {
			errs = append(errs, fmt.Sprintf("BENCH_PHASES: unknown phase %q (want some of %s)", ph, strings.Join(allPhases, ",")))
		}
		c.Phases[ph] = true
	}
	if c.Phases["fanout"] && !c.Phases["bulk"] {
		errs = append(errs, "BENCH_PHASES: fanout needs bulk")
	}
	if float64(c.Burst) < c.QPS {
		errs = append(errs, fmt.Sprintf("BENCH_BURST=%d must be at least BENCH_QPS=%v (the manager refuses it)", c.Burst, c.QPS))
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("bad settings: %s", strings.Join(errs, "; "))
	}
	c.ControlPlaneLog = filepath.Join(c.OutDir, "controlplane.log")
	return c, nil
}

// managerFlags are the flags the benchmark gives the manager, besides the
// loopback endpoints cluster.StartManager sets.
func (c config) managerFlags(pprofAddr string) []string {
	f := []string{
		"--kube-api-qps=" + strconv.FormatFloat(c.QPS, 'f', -1, 64),
		"--kube-api-burst=" + strconv.Itoa(c.Burst),
		"--max-concurrent-reconciles=" + strconv.Itoa(c.Workers),
	}
	if pprofAddr != "" {
		f = append(f, "--pprof-bind-address="+pprofAddr)
	}
	return append(f, c.ManagerArgs...)
}
