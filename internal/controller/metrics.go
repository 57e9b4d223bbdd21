package controller

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/agentmesh/agentmesh/internal/ca"
)

// FieldOwner is the field manager of every write the operator makes.
const FieldOwner = "agentmesh"

// Metrics are the operator's Prometheus metrics, served with
// controller-runtime's on the metrics endpoint.
type Metrics struct {
	identityExpiry  *prometheus.GaugeVec
	identityRenewal *prometheus.GaugeVec
	identityReady   *prometheus.GaugeVec
	issuances       *prometheus.CounterVec
	failures        *prometheus.CounterVec
	caExpiry        *prometheus.GaugeVec
	rotationPhase   *prometheus.GaugeVec
	rotationIDs     *prometheus.GaugeVec

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
			identityExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
				Name: "agentmesh_identity_expiration_timestamp_seconds",
				Help: "Expiry of the certificate in place for an AgentIdentity, in Unix seconds.",
			}, []string{"namespace", "name"}),
			identityRenewal: prometheus.NewGaugeVec(prometheus.GaugeOpts{
				Name: "agentmesh_identity_renewal_timestamp_seconds",
				Help: "When the certificate of an AgentIdentity will be renewed, in Unix seconds.",
			}, []string{"namespace", "name"}),
			identityReady: prometheus.NewGaugeVec(prometheus.GaugeOpts{
				Name: "agentmesh_identity_ready",
				Help: "1 when the AgentIdentity's Ready condition is True, else 0.",
			}, []string{"namespace", "name"}),
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
				Help: "Identities with a certificate (state=total) and those whose certificate the active CA signed (state=on_active).",
			}, []string{"state"}),
		}
		metrics.Registry.MustRegister(m.identityExpiry, m.identityRenewal, m.identityReady, m.issuances, m.failures, m.caExpiry,
			m.rotationPhase, m.rotationIDs)
		sharedMetrics = m
	})
	return sharedMetrics
}

// SetIdentity records the state of one identity.
func (m *Metrics) SetIdentity(nn types.NamespacedName, ready bool, notAfter, renewal float64) {
	m.identityReady.WithLabelValues(nn.Namespace, nn.Name).Set(boolFloat(ready))
	if notAfter > 0 {
		m.identityExpiry.WithLabelValues(nn.Namespace, nn.Name).Set(notAfter)
		m.identityRenewal.WithLabelValues(nn.Namespace, nn.Name).Set(renewal)
	}
}

// ForgetIdentity drops the series of a deleted identity.
func (m *Metrics) ForgetIdentity(nn types.NamespacedName) {
	m.identityReady.DeleteLabelValues(nn.Namespace, nn.Name)
	m.identityExpiry.DeleteLabelValues(nn.Namespace, nn.Name)
	m.identityRenewal.DeleteLabelValues(nn.Namespace, nn.Name)
}

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
func (m *Metrics) SetRotation(st *ca.State, total, onActive int) {
	for _, p := range []ca.Phase{ca.PhaseStable, ca.PhasePropagating, ca.PhaseReissuing} {
		m.rotationPhase.WithLabelValues(string(p)).Set(boolFloat(st.Rotation.Phase == p))
	}
	m.rotationIDs.WithLabelValues("total").Set(float64(total))
	m.rotationIDs.WithLabelValues("on_active").Set(float64(onActive))
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
