package controller

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/agentmesh/agentmesh/internal/ca"
)

// Metrics are the operator's Prometheus metrics, served with
// controller-runtime's on the metrics endpoint.
type Metrics struct {
	identities    *identityGauges
	issuances     *prometheus.CounterVec
	failures      *prometheus.CounterVec
	caExpiry      *prometheus.GaugeVec
	rotationPhase *prometheus.GaugeVec
	rotationIDs   *prometheus.GaugeVec

	mu sync.Mutex
}

var (
	metricsOnce   sync.Once
	sharedMetrics *Metrics
)

// NewMetrics returns the operator's metrics, registered once with the
// controller-runtime registry (repeated calls, as in tests that start
// several managers in one process, share them).
func NewMetrics() *Metrics {
	metricsOnce.Do(func() {
		m := &Metrics{
			identities: newIdentityGauges(),
			issuances: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "agentmesh_identity_issuances_total",
				Help: "Certificates issued for AgentIdentities, by reason (Pending for a first issuance, Renewing, SecretRepaired, SpecChanged, CAChanged).",
			}, []string{"reason"}),
			failures: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "agentmesh_identity_issuance_failures_total",
				Help: "Failed issuances for AgentIdentities, by reason.",
			}, []string{"reason"}),
			caExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
				Name: "agentmesh_ca_expiration_timestamp_seconds",
				Help: "Expiry of each trusted agent CA, in Unix seconds, by serial and role (active, next, retired).",
			}, []string{"serial", "role"}),
			rotationPhase: prometheus.NewGaugeVec(prometheus.GaugeOpts{
				Name: "agentmesh_ca_rotation_phase",
				Help: "1 for the current phase of the CA rotation (Stable, Propagating, Reissuing), 0 for the others.",
			}, []string{"phase"}),
			rotationIDs: prometheus.NewGaugeVec(prometheus.GaugeOpts{
				Name: "agentmesh_ca_rotation_identities",
				Help: "Identities with a certificate (state=total), those whose certificate the active CA signed (state=on_active), and those a rotation cannot bring along (state=stranded: invalid spec or a Secret name held by another Secret).",
			}, []string{"state"}),
		}
		metrics.Registry.MustRegister(m.identities, m.issuances, m.failures, m.caExpiry, m.rotationPhase, m.rotationIDs)
		sharedMetrics = m
	})
	return sharedMetrics
}

// SetIdentity records the state of one identity. A notAfter of 0 (no
// certificate in the status) keeps the expiry and renewal times last
// recorded.
func (m *Metrics) SetIdentity(nn types.NamespacedName, ready bool, notAfter, renewal float64) {
	m.identities.set(nn, ready, notAfter, renewal)
}

// ForgetIdentity drops the series of a deleted identity.
func (m *Metrics) ForgetIdentity(nn types.NamespacedName) { m.identities.forget(nn) }

// Issued counts an issuance.
func (m *Metrics) Issued(reason string) { m.issuances.WithLabelValues(reason).Inc() }

// Failed counts a failed issuance.
func (m *Metrics) Failed(reason string) { m.failures.WithLabelValues(reason).Inc() }

// SetCA records the expiry of every trusted CA, replacing the previous
// series.
func (m *Metrics) SetCA(st *ca.State) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.caExpiry.Reset()
	m.caExpiry.WithLabelValues(st.Active.SerialHex(), "active").Set(float64(st.Active.Cert.NotAfter.Unix()))
	if st.Next != nil {
		m.caExpiry.WithLabelValues(st.Next.SerialHex(), "next").Set(float64(st.Next.Cert.NotAfter.Unix()))
	}
	for _, c := range st.Retired {
		m.caExpiry.WithLabelValues(ca.SerialHex(c.SerialNumber), "retired").Set(float64(c.NotAfter.Unix()))
	}
}

// SetRotation records the rotation's phase and progress.
func (m *Metrics) SetRotation(st *ca.State, p ca.Progress) {
	for _, ph := range []ca.Phase{ca.PhaseStable, ca.PhasePropagating, ca.PhaseReissuing} {
		m.rotationPhase.WithLabelValues(string(ph)).Set(boolFloat(st.Rotation.Phase == ph))
	}
	m.rotationIDs.WithLabelValues("total").Set(float64(p.Identities))
	m.rotationIDs.WithLabelValues("on_active").Set(float64(p.IdentitiesOnActive))
	m.rotationIDs.WithLabelValues("stranded").Set(float64(p.Stranded))
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// identityGauges are the per-identity series (agentmesh_identity_ready,
// agentmesh_identity_expiration_timestamp_seconds and
// agentmesh_identity_renewal_timestamp_seconds), kept as one small record
// per identity and turned into metrics when they are scraped. Three
// GaugeVecs hold a labelled child per series, 1.25 KiB of heap per identity
// (12 MiB at 10,000 identities); a record takes 72 bytes besides the name
// strings, which the cached object shares.
type identityGauges struct {
	ready, expiry, renewal *prometheus.Desc

	mu      sync.RWMutex
	records map[types.NamespacedName]identityRecord
}

type identityRecord struct {
	ready             bool
	notAfter, renewal float64
}

func newIdentityGauges() *identityGauges {
	labels := []string{"namespace", "name"}
	return &identityGauges{
		ready: prometheus.NewDesc("agentmesh_identity_ready",
			"1 when the AgentIdentity's Ready condition is True, else 0.", labels, nil),
		expiry: prometheus.NewDesc("agentmesh_identity_expiration_timestamp_seconds",
			"Expiry of the certificate in place for an AgentIdentity, in Unix seconds.", labels, nil),
		renewal: prometheus.NewDesc("agentmesh_identity_renewal_timestamp_seconds",
			"When the certificate of an AgentIdentity will be renewed, in Unix seconds.", labels, nil),
		records: map[types.NamespacedName]identityRecord{},
	}
}

func (g *identityGauges) set(nn types.NamespacedName, ready bool, notAfter, renewal float64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	r := g.records[nn]
	r.ready = ready
	if notAfter > 0 {
		r.notAfter, r.renewal = notAfter, renewal
	}
	g.records[nn] = r
}

func (g *identityGauges) forget(nn types.NamespacedName) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.records, nn)
}

// Describe implements prometheus.Collector.
func (g *identityGauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- g.ready
	ch <- g.expiry
	ch <- g.renewal
}

// Collect implements prometheus.Collector. An identity without a
// certificate yet has only the ready series. The records are copied out
// first: the scrape encodes the series slowly, and the reconcilers must
// not wait for it to record an identity.
func (g *identityGauges) Collect(ch chan<- prometheus.Metric) {
	type sample struct {
		nn types.NamespacedName
		identityRecord
	}
	g.mu.RLock()
	samples := make([]sample, 0, len(g.records))
	for nn, r := range g.records {
		samples = append(samples, sample{nn, r})
	}
	g.mu.RUnlock()
	for _, s := range samples {
		ch <- prometheus.MustNewConstMetric(g.ready, prometheus.GaugeValue, boolFloat(s.ready), s.nn.Namespace, s.nn.Name)
		if s.notAfter > 0 {
			ch <- prometheus.MustNewConstMetric(g.expiry, prometheus.GaugeValue, s.notAfter, s.nn.Namespace, s.nn.Name)
			ch <- prometheus.MustNewConstMetric(g.renewal, prometheus.GaugeValue, s.renewal, s.nn.Namespace, s.nn.Name)
		}
	}
}
