// Package operator assembles the agentmesh manager: the scheme, the
// label-scoped caches, the CA cache, every controller, and the health and
// readiness checks. cmd/manager and the tests build the manager through it,
// so that the tests run exactly the wiring that ships.
package operator

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/controller"
	"github.com/agentmesh/agentmesh/internal/identity"
	"github.com/agentmesh/agentmesh/internal/policy"
	"github.com/agentmesh/agentmesh/internal/webhook"
	"github.com/agentmesh/agentmesh/internal/webhookcert"
)

// Config is what the operator needs beyond the manager's own options.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// CASecret is the CA Secret; its namespace is the operator's namespace.
	CASecret types.NamespacedName
	// CALifetime is the lifetime of a bootstrapped root (ca.DefaultLifetime
	// when zero).
	CALifetime time.Duration
	// MaxConcurrentReconciles per controller.
	MaxConcurrentReconciles int
	// KeyWorkers bounds the parallel generation of slow (RSA) keys.
	KeyWorkers int
	// Clock drives every time-based decision; the real clock when nil.
	Clock clock.PassiveClock
	// DefaultPosture applies to a direction no AgentTrustPolicy governs;
	// allow-authenticated when empty.
	DefaultPosture policy.Posture
	// Webhook configures the admission webhooks; a zero Port disables them.
	Webhook WebhookConfig
	// Rotation is the CA rotation schedule; ca.DefaultRotationPolicy when
	// zero.
	Rotation ca.RotationPolicy
	// DNS decides which spec.dnsNames an identity may have (its own
	// namespace's Service names by default).
	DNS identity.DNSScope
	// ReissueRate bounds the reissues per second a CA rotation causes; 20
	// when zero.
	ReissueRate float64
}

// WebhookConfig configures the webhook server and its certificate.
type WebhookConfig struct {
	Host string
	Port int
	// CASecret is the webhook CA Secret.
	CASecret types.NamespacedName
	// Hosts are the serving certificate's DNS names and IPs.
	Hosts []string
	// ConfigName names the webhook configurations whose caBundle is kept.
	ConfigName string
	// CertPolicy is the webhook PKI's timing; the default when zero.
	CertPolicy webhookcert.Policy
	// CertInterval is the time between two checks of the certificate; one
	// minute when zero.
	CertInterval time.Duration
}

// Operator is a configured manager and the shared state of its controllers.
type Operator struct {
	Manager manager.Manager
	CA      *ca.Holder
	// Certs is the webhook certificate manager, nil without webhooks.
	Certs *webhookcert.Manager
}

// NewScheme returns the scheme of every kind the operator reads or writes.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(mtlsv1alpha1.AddToScheme(s))
	return s
}

// ManagedSelector selects the Secrets and ConfigMaps that agentmesh writes.
// The operator's caches hold only those, so its memory grows with its own
// objects and not with every Secret in the cluster.
func ManagedSelector() labels.Selector {
	return labels.SelectorFromSet(labels.Set{mtlsv1alpha1.LabelManagedBy: mtlsv1alpha1.ManagedByValue})
}

// New builds the manager. opts carries the server settings (metrics,
// probes, webhook server, leader election); New sets the scheme and caches.
func New(restConfig *rest.Config, cfg Config, opts ctrl.Options) (*Operator, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("operator: no trust domain")
	}
	cfg = cfg.withDefaults()
	opts.Scheme = NewScheme()
	opts.Cache = cacheOptions(cfg.CASecret.Namespace)
	certs := webhookCertificates(cfg, &opts)
	mgr, err := ctrl.NewManager(restConfig, opts)
	if err != nil {
		return nil, fmt.Errorf("creating manager: %w", err)
	}
	caches, err := addSideCaches(restConfig, mgr, cfg.CASecret)
	if err != nil {
		return nil, err
	}
	holder := &ca.Holder{}
	if err := setupControllers(mgr, cfg, caches, holder); err != nil {
		return nil, err
	}
	if certs != nil {
		if err := setupWebhooks(restConfig, mgr, cfg, certs); err != nil {
			return nil, err
		}
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("ca", func(*http.Request) error {
		_, err := holder.Get()
		return err
	}); err != nil {
		return nil, err
	}
	return &Operator{Manager: mgr, CA: holder, Certs: certs}, nil
}

// withDefaults fills what the flags leave unset.
func (cfg Config) withDefaults() Config {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.KeyWorkers <= 0 {
		cfg.KeyWorkers = 1
	}
	if cfg.DefaultPosture == "" {
		cfg.DefaultPosture = policy.AllowAuthenticated
	}
	if cfg.Rotation == (ca.RotationPolicy{}) {
		cfg.Rotation = ca.DefaultRotationPolicy
	}
	if cfg.Rotation.Lifetime == 0 {
		cfg.Rotation.Lifetime = cmp.Or(cfg.CALifetime, ca.DefaultLifetime)
	}
	if cfg.ReissueRate <= 0 {
		cfg.ReissueRate = 20
	}
	return cfg
}

// CacheOptions are the options of the manager's cache (cacheOptions), for
// the benchmark, which builds the same cache to measure what each object
// costs in it.
func CacheOptions(operatorNamespace string) cache.Options { return cacheOptions(operatorNamespace) }

// cacheOptions scope the manager's cache to what agentmesh reads: its own
// Secrets and ConfigMaps (CA and bundle payloads shared between them, and
// only the metadata of look-alikes), AgentIdentities without kubectl's
// last-applied copy (their repeated strings shared), the Pods that opt in,
// slimmed, and the PodCertificateRequests and ClusterTrustBundles of its
// signer.
func cacheOptions(operatorNamespace string) cache.Options {
	shared := newInterner(operatorNamespace)
	return cache.Options{
		DefaultTransform: stripManagedFields,
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}:              {Label: ManagedSelector(), Transform: shared.secretTransform},
			&corev1.ConfigMap{}:           {Label: ManagedSelector(), Transform: shared.configMapTransform},
			&mtlsv1alpha1.AgentIdentity{}: {Transform: shared.identityTransform},
			// Only Pods that opt in, and only the fields the operator reads.
			&corev1.Pod{}: {Label: OptedInSelector(), Transform: slimPod},
			// Only the PodCertificateRequests addressed to agentmesh's signer.
			&certv1.PodCertificateRequest{}: {Field: fields.OneTermEqualSelector("spec.signerName", mtlsv1alpha1.PodCertificateSignerName)},
			// Only the ClusterTrustBundles agentmesh writes.
			&certv1.ClusterTrustBundle{}: {Label: ManagedSelector()},
		},
	}
}

// webhookCertificates sets up the webhook server, serving the certificate
// the returned manager keeps; nil when the operator serves no webhooks.
func webhookCertificates(cfg Config, opts *ctrl.Options) *webhookcert.Manager {
	if cfg.Webhook.Port <= 0 {
		return nil
	}
	certs := &webhookcert.Manager{
		Clock:      cfg.Clock,
		Secret:     cfg.Webhook.CASecret,
		Hosts:      cfg.Webhook.Hosts,
		ConfigName: cfg.Webhook.ConfigName,
		Policy:     cfg.Webhook.CertPolicy,
		Interval:   cfg.Webhook.CertInterval,
	}
	opts.WebhookServer = ctrlwebhook.NewServer(ctrlwebhook.Options{
		Host: cfg.Webhook.Host,
		Port: cfg.Webhook.Port,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) {
			c.GetCertificate = certs.GetCertificate
			c.MinVersion = tls.VersionTLS12
		}},
	})
	return certs
}

// sideCaches are the caches beside the manager's.
type sideCaches struct {
	// ca holds the one CA Secret, which may be a user's, without our label.
	ca cache.Cache
	// bundles holds the federated trust bundles: user ConfigMaps labelled
	// mtls.agentmesh.dev/trust-bundle=true.
	bundles cache.Cache
}

func addSideCaches(restConfig *rest.Config, mgr manager.Manager, caSecret types.NamespacedName) (sideCaches, error) {
	caCache, err := cache.New(restConfig, cache.Options{
		Scheme:            mgr.GetScheme(),
		Mapper:            mgr.GetRESTMapper(),
		HTTPClient:        mgr.GetHTTPClient(),
		DefaultNamespaces: map[string]cache.Config{caSecret.Namespace: {}},
		DefaultTransform:  cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {Field: fields.OneTermEqualSelector("metadata.name", caSecret.Name)},
		},
	})
	if err != nil {
		return sideCaches{}, fmt.Errorf("creating the CA cache: %w", err)
	}
	// Every replica runs it, leader or not: the CA controller loads the CA
	// for the webhooks everywhere. (A cache of one namespace is not the
	// informer cache, does not say it needs no leader, and would otherwise
	// run on the leader only: a second replica would never become ready.)
	if err := mgr.Add(everyReplica{caCache}); err != nil {
		return sideCaches{}, err
	}
	bundleCache, err := cache.New(restConfig, cache.Options{
		Scheme:           mgr.GetScheme(),
		Mapper:           mgr.GetRESTMapper(),
		HTTPClient:       mgr.GetHTTPClient(),
		DefaultTransform: stripManagedFields,
		ByObject: map[client.Object]cache.ByObject{
			&corev1.ConfigMap{}: {Label: labels.SelectorFromSet(labels.Set{mtlsv1alpha1.LabelTrustBundle: "true"})},
		},
	})
	if err != nil {
		return sideCaches{}, fmt.Errorf("creating the trust bundle cache: %w", err)
	}
	if err := mgr.Add(bundleCache); err != nil {
		return sideCaches{}, err
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &mtlsv1alpha1.AgentTrustPolicy{},
		controller.IndexPolicyBundleConfigMap, controller.PolicyBundleConfigMaps); err != nil {
		return sideCaches{}, fmt.Errorf("indexing AgentTrustPolicies: %w", err)
	}
	return sideCaches{ca: caCache, bundles: bundleCache}, nil
}

// setupControllers registers every controller, sharing one CA holder, one
// metrics set and one event recorder.
func setupControllers(mgr manager.Manager, cfg Config, caches sideCaches, holder *ca.Holder) error {
	metrics := controller.NewMetrics()
	rec := mgr.GetEventRecorder("agentmesh")
	trustProgress := &controller.TrustProgress{}
	setups := []struct {
		what  string
		setup func(manager.Manager) error
	}{
		{"the CA controller", (&controller.CAReconciler{
			Client:      mgr.GetClient(),
			Reader:      caches.ca,
			Cache:       caches.ca,
			Recorder:    rec,
			Clock:       cfg.Clock,
			Holder:      holder,
			Secret:      cfg.CASecret,
			TrustDomain: cfg.TrustDomain,
			Lifetime:    cfg.CALifetime,
			Metrics:     metrics,
		}).SetupWithManager},
		{"the CA rotation controller", (&controller.CARotationReconciler{
			Client:      mgr.GetClient(),
			Reader:      caches.ca,
			Cache:       caches.ca,
			Recorder:    rec,
			Clock:       cfg.Clock,
			Secret:      cfg.CASecret,
			Policy:      cfg.Rotation,
			Metrics:     metrics,
			TrustDomain: cfg.TrustDomain,
		}).SetupWithManager},
		{"the AgentIdentity certificate controller", (&controller.CertificateReconciler{
			Client:                  mgr.GetClient(),
			APIReader:               mgr.GetAPIReader(),
			Recorder:                rec,
			Clock:                   cfg.Clock,
			CA:                      holder,
			Keys:                    controller.NewKeyPool(cfg.KeyWorkers),
			Reissue:                 controller.NewReissueGate(cfg.ReissueRate),
			TrustProgress:           trustProgress,
			Metrics:                 metrics,
			TrustDomain:             cfg.TrustDomain,
			DNS:                     cfg.DNS,
			MaxConcurrentReconciles: cfg.MaxConcurrentReconciles,
		}).SetupWithManager},
		{"the AgentIdentity trust controller", (&controller.TrustReconciler{
			Client:                  mgr.GetClient(),
			APIReader:               mgr.GetAPIReader(),
			Clock:                   cfg.Clock,
			CA:                      holder,
			TrustDomain:             cfg.TrustDomain,
			DefaultPosture:          cfg.DefaultPosture,
			BundleReader:            caches.bundles,
			BundleCache:             caches.bundles,
			Progress:                trustProgress,
			MaxConcurrentReconciles: cfg.MaxConcurrentReconciles,
		}).SetupWithManager},
		{"the AgentTrustPolicy controller", (&controller.AgentTrustPolicyReconciler{
			Client:                  mgr.GetClient(),
			APIReader:               mgr.GetAPIReader(),
			BundleReader:            caches.bundles,
			BundleCache:             caches.bundles,
			Recorder:                rec,
			Clock:                   cfg.Clock,
			TrustDomain:             cfg.TrustDomain,
			MaxConcurrentReconciles: cfg.MaxConcurrentReconciles,
		}).SetupWithManager},
		{"the PodCertificateRequest signer", (&controller.PodCertificateSigner{
			Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: rec, Clock: cfg.Clock, CA: holder,
			TrustDomain: cfg.TrustDomain, DNS: cfg.DNS, Metrics: metrics, MaxConcurrentReconciles: cfg.MaxConcurrentReconciles,
		}).SetupWithManager},
		{"the ClusterTrustBundle controller", (&controller.ClusterTrustBundleReconciler{
			Client: mgr.GetClient(), CA: holder, TrustDomain: cfg.TrustDomain,
		}).SetupWithManager},
		{"the Pod controller", (&controller.PodReconciler{
			Client: mgr.GetClient(), Recorder: rec, OperatorNamespace: cfg.CASecret.Namespace,
		}).SetupWithManager},
	}
	for _, s := range setups {
		if err := s.setup(mgr); err != nil {
			return fmt.Errorf("setting up %s: %w", s.what, err)
		}
	}
	return nil
}

// setupWebhooks registers the Pod injector and the policy validator behind
// the request guard, and the webhook certificate manager with its own
// uncached client (it runs on every replica, before the caches sync).
func setupWebhooks(restConfig *rest.Config, mgr manager.Manager, cfg Config, certs *webhookcert.Manager) error {
	direct, err := client.New(restConfig, client.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper(), HTTPClient: mgr.GetHTTPClient()})
	if err != nil {
		return err
	}
	certs.Client = direct
	if err := mgr.Add(certs); err != nil {
		return err
	}
	srv := mgr.GetWebhookServer()
	srv.Register(webhook.PodInjectorPath, webhook.Timed("pods", webhook.Guard(&ctrlwebhook.Admission{Handler: &webhook.PodInjector{
		Reader:            mgr.GetClient(),
		APIReader:         mgr.GetAPIReader(),
		Decoder:           admission.NewDecoder(mgr.GetScheme()),
		TrustDomain:       cfg.TrustDomain,
		OperatorNamespace: cfg.CASecret.Namespace,
	}}, webhook.MaxRequestBody, webhook.ReadTimeout)))
	srv.Register(webhook.AgentTrustPolicyValidatorPath, webhook.Timed("agenttrustpolicies", webhook.Guard(
		admission.WithValidator[*mtlsv1alpha1.AgentTrustPolicy](mgr.GetScheme(), webhook.AgentTrustPolicyValidator{}),
		webhook.MaxRequestBody, webhook.ReadTimeout)))
	srv.Register(webhook.AgentIdentityValidatorPath, webhook.Timed("agentidentities", webhook.Guard(
		admission.WithValidator[*mtlsv1alpha1.AgentIdentity](mgr.GetScheme(), webhook.AgentIdentityValidator{DNS: cfg.DNS}),
		webhook.MaxRequestBody, webhook.ReadTimeout)))
	if err := mgr.AddReadyzCheck("webhook", srv.StartedChecker()); err != nil {
		return err
	}
	return mgr.AddReadyzCheck("webhook-certificate", certs.Ready)
}

// OptedInSelector selects Pods that carry the opt-in label.
func OptedInSelector() labels.Selector {
	req, _ := labels.NewRequirement(mtlsv1alpha1.LabelIdentity, selection.Exists, nil)
	return labels.NewSelector().Add(*req)
}

// slimPod keeps what the operator reads of a Pod (identity, service
// account, node, phase, injection annotation) and drops the rest before it
// is cached.
func slimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	slim := &corev1.Pod{
		TypeMeta: pod.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
			Generation: pod.Generation, Labels: pod.Labels, DeletionTimestamp: pod.DeletionTimestamp,
			CreationTimestamp: pod.CreationTimestamp,
		},
		Spec:   corev1.PodSpec{ServiceAccountName: pod.Spec.ServiceAccountName, NodeName: pod.Spec.NodeName},
		Status: corev1.PodStatus{Phase: pod.Status.Phase},
	}
	if v, ok := pod.Annotations[mtlsv1alpha1.AnnotationInjected]; ok {
		slim.Annotations = map[string]string{mtlsv1alpha1.AnnotationInjected: v}
	}
	return slim, nil
}

// everyReplica runs a cache on every replica, not only on the leader.
type everyReplica struct{ cache.Cache }

// NeedLeaderElection implements manager.LeaderElectionRunnable.
func (everyReplica) NeedLeaderElection() bool { return false }
