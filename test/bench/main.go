// Command bench is `make bench`: it measures the agentmesh manager, run as a
// separate process (bin/manager), against a local control plane (etcd and
// kube-apiserver from bin/, started by test/cluster), and prints a table of
// figures that it also writes to bin/bench/results.md. It is a benchmark,
// not a test: it never fails on timing, and `go test ./...` never runs it.
//
// The phases, in order, each reported with its goal and, for throughput,
// as a ratio to the floor measured in the same run:
//
//  1. floors: a plain client creates N identity-sized Secrets and N
//     status-sized merge patches, once with the manager's QPS and burst
//     (the throttled floor: our own rate limit) and once with no
//     client-side rate limit (the unthrottled floor: the API server);
//  2. bulk issuance: N AgentIdentities in one namespace until all are Ready
//     with their Secret;
//  3. policy fan-out: one namespace-wide AgentTrustPolicy until every trust
//     ConfigMap names it;
//  4. memory at N identities (VmHWM of the manager process, the live heap
//     of its heap profile, and the bytes per object of its caches);
//  5. latency: create -> Ready at a steady rate;
//  6. webhook: admission latency of labelled Pod creates;
//  7. cold restart over every identity, then again after adding unrelated
//     Secrets (300 of 1 MiB, 30,000 small ones): time to synced and drained,
//     writes made, and peak RSS.
//
// Settings come from the environment (see envConfig). CPU and heap profiles
// of the manager (pprof) and the raw metric deltas are written next to the
// results, in bin/bench/.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

func main() {
	// The benchmark's clients and caches log nothing; without a logger
	// controller-runtime prints a warning and a stack.
	log.SetLogger(logr.Discard())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "bench: interrupted; the manager and the control plane were stopped")
		} else {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		}
		os.Exit(1)
	}
}
