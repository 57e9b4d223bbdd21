package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/identity"
	"github.com/agentmesh/agentmesh/internal/policy"
)

// options are the manager's command-line settings.
type options struct {
	trustDomain             spiffeid.TrustDomain
	caSecret                types.NamespacedName
	caLifetime              time.Duration
	keyWorkers              int
	caRotateAt              float64
	caGrace                 time.Duration
	caEmergencyDeadline     time.Duration
	caReissueRate           float64
	defaultPolicy           policy.Posture
	dns                     identity.DNSScope
	metricsAddr             string
	metricsSecure           bool
	probeAddr               string
	pprofAddr               string
	leaderElect             bool
	leaderElectionNamespace string
	kubeAPIQPS              float64
	kubeAPIBurst            int
	maxConcurrentReconciles int
	webhookHost             string
	webhookPort             int
	webhookCASecret         types.NamespacedName
	webhookHosts            []string
	webhookConfigName       string
	memoryLimit             string
	zap                     zap.Options
}

// parseFlags parses args (without the program name). Every error is one line
// that names the flag and says what a valid value looks like.
func parseFlags(args []string, output io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	fs.SetOutput(output)

	var trustDomain, caSecret string
	fs.StringVar(&trustDomain, "trust-domain", mtlsv1alpha1.DefaultTrustDomain,
		"SPIFFE trust domain of every identity the operator issues (spiffe://<trust-domain>/ns/<ns>/agent/<name>).")
	fs.StringVar(&caSecret, "ca-secret", "agentmesh-system/agentmesh-ca",
		"Secret, as namespace/name, that holds the agent CA (tls.crt, tls.key, optional ca.crt); created if absent. "+
			"Its namespace is the operator's namespace.")
	fs.DurationVar(&o.caLifetime, "ca-lifetime", 365*24*time.Hour,
		"Lifetime of the self-signed root CA the operator creates when --ca-secret does not exist.")
	fs.Float64Var(&o.caRotateAt, "ca-rotate-at", 0.5,
		"Share of its lifetime after which a CA the operator created is rotated (the next CA is prepared); 0 turns scheduled rotation off.")
	fs.DurationVar(&o.caGrace, "ca-propagation-grace", 2*time.Minute,
		"During a CA rotation, the time the kubelet is given to update mounted files, twice: after every trust bundle holds the next CA, before it signs; "+
			"and after every identity is reissued, before the previous CA leaves the bundles (not in an emergency rotation).")
	fs.DurationVar(&o.caEmergencyDeadline, "ca-emergency-deadline", ca.DefaultEmergencyDeadline,
		"Bound of an emergency rotation (rotate-ca=compromised), from when it is asked for: half-way the next CA signs even if some trust bundles "+
			"do not hold it yet, and at the deadline the compromised CA leaves the bundles even if some certificates are still on it.")
	fs.Float64Var(&o.caReissueRate, "ca-reissue-rate", 20,
		"Certificates reissued per second under the new CA after a rotation (an emergency rotation is not limited).")
	fs.IntVar(&o.keyWorkers, "key-workers", 1,
		"Number of RSA keys generated in parallel, off the reconcile path (ECDSA and Ed25519 keys are generated inline).")
	var defaultPolicy string
	fs.StringVar(&defaultPolicy, "default-policy", string(policy.AllowAuthenticated),
		"What a direction (ingress or egress) of an identity allows when no AgentTrustPolicy governs it: "+
			"allow-authenticated (every identity of the own trust domain) or deny.")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8443",
		"Address the Prometheus metrics endpoint binds to; \"0\" disables it.")
	fs.BoolVar(&o.metricsSecure, "metrics-secure", true,
		"Serve metrics over HTTPS, authenticated and authorized against the API server; false serves plain HTTP.")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "Address the /healthz and /readyz endpoints bind to.")
	fs.StringVar(&o.pprofAddr, "pprof-bind-address", "",
		"Address the Go pprof endpoints (/debug/pprof/) bind to; empty disables them. Keep it on loopback.")
	fs.BoolVar(&o.leaderElect, "leader-elect", false,
		"Enable leader election, so that only one of several replicas reconciles at a time.")
	fs.StringVar(&o.leaderElectionNamespace, "leader-election-namespace", "",
		"Namespace of the leader election Lease; defaults to the namespace of --ca-secret.")
	fs.Float64Var(&o.kubeAPIQPS, "kube-api-qps", 200, "Queries per second the operator may send to the API server.")
	fs.IntVar(&o.kubeAPIBurst, "kube-api-burst", 400, "Burst of queries the operator may send to the API server.")
	fs.IntVar(&o.maxConcurrentReconciles, "max-concurrent-reconciles", 8,
		"Number of objects of each kind reconciled in parallel.")
	fs.StringVar(&o.webhookHost, "webhook-host", "", "Address the webhook server binds to; empty binds every interface.")
	fs.IntVar(&o.webhookPort, "webhook-port", 9443, "Port the webhook server listens on; 0 disables the webhooks.")
	var allowedDNSNames string
	fs.StringVar(&o.dns.ClusterDomain, "cluster-domain", identity.DefaultClusterDomain,
		"The cluster's DNS domain: identities may have DNS names under <namespace>.svc and <namespace>.svc.<cluster domain>.")
	fs.StringVar(&allowedDNSNames, "allowed-dns-names", "",
		"Comma-separated DNS names (api.example.com) and domains (*.example.com) that identities of every namespace may also have.")
	var webhookCASecret, webhookService, webhookHosts string
	fs.StringVar(&webhookCASecret, "webhook-ca-secret", "",
		"Secret, as namespace/name, of the webhook CA the operator creates and rotates; defaults to <operator namespace>/agentmesh-webhook-ca.")
	fs.StringVar(&webhookService, "webhook-service", "agentmesh-webhook",
		"Service, in the operator's namespace, through which the API server calls the webhooks; it names the serving certificate.")
	fs.StringVar(&webhookHosts, "webhook-cert-hosts", "",
		"Comma-separated extra DNS names and IPs of the serving certificate (e.g. 127.0.0.1 for a URL-based webhook configuration).")
	fs.StringVar(&o.webhookConfigName, "webhook-config-name", "agentmesh",
		"Name of the MutatingWebhookConfiguration and ValidatingWebhookConfiguration whose caBundle the operator keeps; empty leaves them alone.")
	fs.StringVar(&o.memoryLimit, "memory-limit", memoryLimitAuto,
		"Soft limit of the operator's memory, for Go's garbage collector: auto (90% of the container's cgroup limit, if any), "+
			"none, or a quantity such as 200Mi. GOMEMLIMIT, when set, takes precedence.")
	ctrlconfig.RegisterFlags(fs)
	o.zap = zap.Options{Development: false}
	o.zap.BindFlags(fs)
	fs.Usage = func() {
		_, _ = fmt.Fprintln(output, "Usage of manager:")
		fs.PrintDefaults()
	}

	// The standard flag package prints the whole usage after a parse error;
	// keep the error to one line and point at -h instead.
	usage := fs.Usage
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage()
			return nil, err
		}
		return nil, fmt.Errorf("%w (run with -h for the list of flags)", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: the manager takes flags only", fs.Arg(0))
	}

	if err := parseMemoryLimit(o.memoryLimit); err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("invalid value %q for flag -trust-domain: %w", trustDomain, err)
	}
	if td.String() != trustDomain {
		return nil, fmt.Errorf("invalid value %q for flag -trust-domain: give the bare trust domain, e.g. %q", trustDomain, td.String())
	}
	o.trustDomain = td

	switch p := policy.Posture(defaultPolicy); p {
	case policy.AllowAuthenticated, policy.Deny:
		o.defaultPolicy = p
	default:
		return nil, fmt.Errorf("invalid value %q for flag -default-policy: want allow-authenticated or deny", defaultPolicy)
	}

	if msgs := validation.IsDNS1123Subdomain(o.dns.ClusterDomain); len(msgs) > 0 {
		return nil, fmt.Errorf("invalid value %q for flag -cluster-domain: %s", o.dns.ClusterDomain, strings.Join(msgs, "; "))
	}
	if o.dns.Allowed, err = identity.ParseAllowedDNSNames(strings.Split(allowedDNSNames, ",")); err != nil {
		return nil, fmt.Errorf("invalid value %q for flag -allowed-dns-names: %w", allowedDNSNames, err)
	}

	ns, name, ok := strings.Cut(caSecret, "/")
	if !ok || ns == "" || name == "" {
		return nil, fmt.Errorf("invalid value %q for flag -ca-secret: want namespace/name, e.g. agentmesh-system/agentmesh-ca", caSecret)
	}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return nil, fmt.Errorf("invalid value %q for flag -ca-secret: namespace %q: %s", caSecret, ns, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return nil, fmt.Errorf("invalid value %q for flag -ca-secret: name %q: %s", caSecret, name, strings.Join(errs, "; "))
	}
	o.caSecret = types.NamespacedName{Namespace: ns, Name: name}
	if o.leaderElectionNamespace == "" {
		o.leaderElectionNamespace = ns
	}

	switch {
	case o.kubeAPIQPS <= 0:
		return nil, fmt.Errorf("invalid value %v for flag -kube-api-qps: must be greater than 0", o.kubeAPIQPS)
	case o.kubeAPIBurst < 1:
		return nil, fmt.Errorf("invalid value %d for flag -kube-api-burst: must be at least 1", o.kubeAPIBurst)
	case float64(o.kubeAPIBurst) < o.kubeAPIQPS:
		return nil, fmt.Errorf("invalid value %d for flag -kube-api-burst: must be at least -kube-api-qps (%v)", o.kubeAPIBurst, o.kubeAPIQPS)
	case o.maxConcurrentReconciles < 1 || o.maxConcurrentReconciles > 1024:
		return nil, fmt.Errorf("invalid value %d for flag -max-concurrent-reconciles: must be between 1 and 1024", o.maxConcurrentReconciles)
	case o.caLifetime < time.Hour:
		return nil, fmt.Errorf("invalid value %s for flag -ca-lifetime: must be at least 1h", o.caLifetime)
	case o.caRotateAt < 0 || o.caRotateAt >= 1:
		return nil, fmt.Errorf("invalid value %v for flag -ca-rotate-at: must be at least 0 and below 1", o.caRotateAt)
	case o.caGrace < 0:
		return nil, fmt.Errorf("invalid value %s for flag -ca-propagation-grace: must not be negative", o.caGrace)
	case o.caEmergencyDeadline < time.Minute:
		return nil, fmt.Errorf("invalid value %s for flag -ca-emergency-deadline: must be at least 1m", o.caEmergencyDeadline)
	case o.caReissueRate <= 0:
		return nil, fmt.Errorf("invalid value %v for flag -ca-reissue-rate: must be greater than 0", o.caReissueRate)
	case o.keyWorkers < 1 || o.keyWorkers > 64:
		return nil, fmt.Errorf("invalid value %d for flag -key-workers: must be between 1 and 64", o.keyWorkers)
	case o.webhookPort < 0 || o.webhookPort > 65535:
		return nil, fmt.Errorf("invalid value %d for flag -webhook-port: must be between 0 and 65535", o.webhookPort)
	}
	if webhookCASecret == "" {
		o.webhookCASecret = types.NamespacedName{Namespace: ns, Name: "agentmesh-webhook-ca"}
	} else {
		wns, wname, ok := strings.Cut(webhookCASecret, "/")
		if !ok || len(validation.IsDNS1123Label(wns)) > 0 || len(validation.IsDNS1123Subdomain(wname)) > 0 {
			return nil, fmt.Errorf("invalid value %q for flag -webhook-ca-secret: want namespace/name", webhookCASecret)
		}
		o.webhookCASecret = types.NamespacedName{Namespace: wns, Name: wname}
	}
	if msgs := validation.IsDNS1123Label(webhookService); len(msgs) > 0 {
		return nil, fmt.Errorf("invalid value %q for flag -webhook-service: %s", webhookService, strings.Join(msgs, "; "))
	}
	o.webhookHosts = []string{webhookService + "." + ns + ".svc", webhookService + "." + ns + ".svc." + o.dns.ClusterDomain}
	for _, h := range strings.Split(webhookHosts, ",") {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		if net.ParseIP(h) == nil && len(validation.IsDNS1123Subdomain(h)) > 0 {
			return nil, fmt.Errorf("invalid value %q for flag -webhook-cert-hosts: %q is neither a DNS name nor an IP", webhookHosts, h)
		}
		o.webhookHosts = append(o.webhookHosts, h)
	}
	return o, nil
}
