// Command manager is the agentmesh operator: it issues and rotates the
// certificates of AgentIdentities, compiles AgentTrustPolicies and serves the
// Pod injection webhook.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/debug"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/logging"
	"github.com/agentmesh/agentmesh/internal/operator"
)

func main() {
	opts, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "manager: %v\n", err)
		os.Exit(2)
	}
	if err := run(opts); err != nil {
		fmt.Fprintf(os.Stderr, "manager: %v\n", err)
		os.Exit(1)
	}
}

func run(opts *options) error {
	// Capped: client-go logs Secret bodies at V(8) (see internal/logging).
	ctrl.SetLogger(logging.Cap(zap.New(zap.UseFlagOptions(&opts.zap))))
	log := ctrl.Log.WithName("setup")
	if limit, why := memoryLimit(opts.memoryLimit, os.Getenv("GOMEMLIMIT"), os.ReadFile); limit > 0 {
		debug.SetMemoryLimit(limit)
		log.Info("soft memory limit set", "bytes", limit, "from", why)
	} else {
		log.Info("no soft memory limit set", "why", why)
	}

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	cfg.QPS = float32(opts.kubeAPIQPS)
	cfg.Burst = opts.kubeAPIBurst
	cfg.UserAgent = "agentmesh-manager"

	metricsOpts := metricsserver.Options{BindAddress: opts.metricsAddr, SecureServing: opts.metricsSecure}
	if opts.metricsSecure {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	op, err := operator.New(cfg, operator.Config{
		TrustDomain:             opts.trustDomain,
		CASecret:                opts.caSecret,
		CALifetime:              opts.caLifetime,
		MaxConcurrentReconciles: opts.maxConcurrentReconciles,
		KeyWorkers:              opts.keyWorkers,
		DefaultPosture:          opts.defaultPolicy,
		Rotation:                ca.RotationPolicy{RotateAt: opts.caRotateAt, Grace: opts.caGrace, Lifetime: opts.caLifetime, EmergencyDeadline: opts.caEmergencyDeadline},
		ReissueRate:             opts.caReissueRate,
		DNS:                     opts.dns,
		Webhook: operator.WebhookConfig{
			Host:       opts.webhookHost,
			Port:       opts.webhookPort,
			CASecret:   opts.webhookCASecret,
			Hosts:      opts.webhookHosts,
			ConfigName: opts.webhookConfigName,
		},
	}, ctrl.Options{
		Metrics:                 metricsOpts,
		HealthProbeBindAddress:  opts.probeAddr,
		PprofBindAddress:        opts.pprofAddr,
		LeaderElection:          opts.leaderElect,
		LeaderElectionID:        "agentmesh-manager.mtls.agentmesh.dev",
		LeaderElectionNamespace: opts.leaderElectionNamespace,
		// The next leader starts at once when this one exits cleanly.
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return err
	}

	log.Info("starting manager", "trustDomain", opts.trustDomain.String(), "caSecret", opts.caSecret.String(),
		"qps", opts.kubeAPIQPS, "burst", opts.kubeAPIBurst, "maxConcurrentReconciles", opts.maxConcurrentReconciles)
	if err := op.Manager.Start(ctrl.SetupSignalHandler()); err != nil {
		return fmt.Errorf("running manager: %w", err)
	}
	return nil
}
