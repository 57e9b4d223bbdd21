package webhookcert

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations;validatingwebhookconfigurations,verbs=get;update;patch,resourceNames=agentmesh
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;create;update

// Manager keeps the webhook server's certificate current on one replica:
// it reads (or creates, or rolls over) the shared webhook CA Secret, mints
// this replica's serving certificate in memory and hands it to the server
// through GetCertificate, and keeps the caBundle of the webhook
// configurations equal to the CA bundle. Every replica runs it; they agree
// because the Secret is the only shared state and every write is
// conditional on its resourceVersion.
type Manager struct {
	// Client talks to the API server directly (the Secret is read once a
	// minute; no cache is worth it).
	Client client.Client
	Clock  clock.PassiveClock
	// Secret is the webhook CA Secret.
	Secret types.NamespacedName
	// Hosts are the serving certificate's DNS names and IPs.
	Hosts []string
	// ConfigName names the MutatingWebhookConfiguration and
	// ValidatingWebhookConfiguration whose caBundle is kept; empty leaves
	// them alone.
	ConfigName string
	// Interval between two syncs; one minute when zero.
	Interval time.Duration
	// Policy of the webhook PKI; DefaultPolicy when zero.
	Policy Policy

	mu          sync.RWMutex
	serving     *Serving
	bundleReady bool
}

// NeedLeaderElection is false: every replica serves the webhook.
func (m *Manager) NeedLeaderElection() bool { return false }

// GetCertificate hands the current serving certificate to the TLS server.
func (m *Manager) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.serving == nil {
		return nil, errors.New("no webhook serving certificate yet")
	}
	return m.serving.TLS, nil
}

// Ready fails until a serving certificate exists and the webhook
// configurations trust its CA.
func (m *Manager) Ready(*http.Request) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	switch {
	case m.serving == nil:
		return errors.New("no webhook serving certificate yet")
	case !m.bundleReady:
		return errors.New("the webhook configurations do not hold the CA bundle yet")
	}
	return nil
}

// Start syncs at once and then every Interval until ctx ends; a failed sync
// is retried sooner.
func (m *Manager) Start(ctx context.Context) error {
	log := logf.FromContext(ctx).WithName("webhookcert")
	interval := m.Interval
	if interval <= 0 {
		interval = time.Minute
	}
	retry := time.Second
	for {
		wait := interval
		if err := m.Sync(ctx); err != nil {
			log.Error(err, "syncing the webhook certificate", "retryIn", retry)
			wait, retry = retry, min(retry*2, interval)
		} else {
			retry = time.Second
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// Sync brings the CA Secret, the serving certificate and the caBundle up to
// date. A new CA is published in the bundle (as the next CA) a Propagation
// time before it signs, so the serving certificate can be renewed before
// the bundle is written without ever being untrusted.
func (m *Manager) Sync(ctx context.Context) error {
	now := m.Clock.Now()
	policy := m.Policy
	if policy.CALifetime == 0 {
		policy = DefaultPolicy
	}
	st, err := m.syncSecret(ctx, now, policy)
	if err != nil {
		return err
	}
	m.mu.RLock()
	current := m.serving
	m.mu.RUnlock()
	if current.NeedsRenewal(st.Current, m.Hosts, now, policy.ServingLifetime) {
		s, err := IssueServing(st.Current, m.Hosts, now, policy.ServingLifetime)
		if err != nil {
			return fmt.Errorf("minting the webhook serving certificate: %w", err)
		}
		m.mu.Lock()
		m.serving = s
		m.mu.Unlock()
		logf.FromContext(ctx).Info("webhook serving certificate minted", "serial", fmt.Sprintf("%x", s.Leaf.SerialNumber),
			"notAfter", s.Leaf.NotAfter, "hosts", m.Hosts)
	}
	return m.syncBundle(ctx, st.BundlePEM())
}

func (m *Manager) syncSecret(ctx context.Context, now time.Time, policy Policy) (*State, error) {
	sec := &corev1.Secret{}
	err := m.Client.Get(ctx, m.Secret, sec)
	if apierrors.IsNotFound(err) {
		sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
			Namespace: m.Secret.Namespace, Name: m.Secret.Name,
			Labels: map[string]string{mtlsv1alpha1.LabelManagedBy: mtlsv1alpha1.ManagedByValue},
		}}
	} else if err != nil {
		return nil, fmt.Errorf("reading the webhook CA Secret: %w", err)
	}
	st, changed, err := Plan(sec.Data, sec.Annotations, now, policy)
	if err != nil {
		return nil, err
	}
	if !changed {
		return st, nil
	}
	data, annotations, err := Encode(st)
	if err != nil {
		return nil, err
	}
	sec.Data = data
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	delete(sec.Annotations, AnnotationNextPublished)
	for k, v := range annotations {
		sec.Annotations[k] = v
	}
	if sec.ResourceVersion == "" {
		err = m.Client.Create(ctx, sec, client.FieldOwner(mtlsv1alpha1.FieldManager))
	} else {
		err = m.Client.Update(ctx, sec, client.FieldOwner(mtlsv1alpha1.FieldManager))
	}
	if err != nil {
		// Another replica wrote first (AlreadyExists, Conflict): the next
		// sync, soon, reads its result.
		return nil, fmt.Errorf("writing the webhook CA Secret: %w", err)
	}
	logf.FromContext(ctx).Info("webhook CA Secret updated", "signingCA", fmt.Sprintf("%x", st.Current.Cert.SerialNumber),
		"nextCA", st.Next != nil, "bundle", len(st.Bundle))
	return st, nil
}

// syncBundle writes the CA bundle into every webhook of the configurations.
func (m *Manager) syncBundle(ctx context.Context, bundle []byte) error {
	if m.ConfigName == "" {
		m.setBundleReady()
		return nil
	}
	found := false
	mut := &admissionregistrationv1.MutatingWebhookConfiguration{}
	switch err := m.Client.Get(ctx, types.NamespacedName{Name: m.ConfigName}, mut); {
	case apierrors.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("reading MutatingWebhookConfiguration %s: %w", m.ConfigName, err)
	default:
		found = true
		changed := false
		for i := range mut.Webhooks {
			if !bytes.Equal(mut.Webhooks[i].ClientConfig.CABundle, bundle) {
				mut.Webhooks[i].ClientConfig.CABundle = slices.Clone(bundle)
				changed = true
			}
		}
		if changed {
			if err := m.Client.Update(ctx, mut, client.FieldOwner(mtlsv1alpha1.FieldManager)); err != nil {
				return fmt.Errorf("updating the caBundle of MutatingWebhookConfiguration %s: %w", m.ConfigName, err)
			}
			logf.FromContext(ctx).Info("caBundle updated", "mutatingWebhookConfiguration", m.ConfigName)
		}
	}
	val := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	switch err := m.Client.Get(ctx, types.NamespacedName{Name: m.ConfigName}, val); {
	case apierrors.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("reading ValidatingWebhookConfiguration %s: %w", m.ConfigName, err)
	default:
		found = true
		changed := false
		for i := range val.Webhooks {
			if !bytes.Equal(val.Webhooks[i].ClientConfig.CABundle, bundle) {
				val.Webhooks[i].ClientConfig.CABundle = slices.Clone(bundle)
				changed = true
			}
		}
		if changed {
			if err := m.Client.Update(ctx, val, client.FieldOwner(mtlsv1alpha1.FieldManager)); err != nil {
				return fmt.Errorf("updating the caBundle of ValidatingWebhookConfiguration %s: %w", m.ConfigName, err)
			}
			logf.FromContext(ctx).Info("caBundle updated", "validatingWebhookConfiguration", m.ConfigName)
		}
	}
	if !found {
		return fmt.Errorf("no webhook configuration named %s: install it (the chart and config/webhook do) or run with --webhook-config-name=\"\"", m.ConfigName)
	}
	m.setBundleReady()
	return nil
}

func (m *Manager) setBundleReady() {
	m.mu.Lock()
	m.bundleReady = true
	m.mu.Unlock()
}
