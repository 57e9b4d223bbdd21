package webhook

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// requestDuration is the time the operator spends on one admission request,
// from the first byte of the body read to the answer written. Its buckets
// are finer than controller-runtime's webhook histogram (one per decade)
// because the answer is expected in well under a millisecond: the 99th
// percentile must be readable, not only bounded by the next power of ten.
var (
	requestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "agentmesh_webhook_request_duration_seconds",
		Help: "Time spent answering an admission request (reading, deciding, writing), by webhook.",
		Buckets: []float64{
			0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075,
			0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
		},
	}, []string{"webhook"})
	registerOnce sync.Once
)

// Timed records the duration of every request h answers under the given
// webhook name (pods, agenttrustpolicies) in
// agentmesh_webhook_request_duration_seconds, registered with the
// controller-runtime metrics registry the first time.
func Timed(name string, h http.Handler) http.Handler {
	registerOnce.Do(func() { metrics.Registry.MustRegister(requestDuration) })
	obs := requestDuration.WithLabelValues(name)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h.ServeHTTP(w, r)
		obs.Observe(time.Since(start).Seconds())
	})
}
