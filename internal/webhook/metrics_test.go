package webhook

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// observed returns the count and sum of the request histogram for one
// webhook, as the metrics endpoint would serve them.
func observed(t *testing.T, name string) (count uint64, sum float64) {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "agentmesh_webhook_request_duration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "webhook" && l.GetValue() == name {
					return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
				}
			}
		}
	}
	return 0, 0
}

func TestTimedRecordsEveryRequest(t *testing.T) {
	h := Timed("timed-test", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(2 * time.Millisecond)
		w.WriteHeader(http.StatusTeapot)
	}))
	for range 3 {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/x", http.NoBody))
		if rec.Code != http.StatusTeapot {
			t.Fatalf("status %d: the wrapped handler's answer was not passed on", rec.Code)
		}
	}
	count, sum := observed(t, "timed-test")
	if count != 3 {
		t.Fatalf("%d observations, want 3", count)
	}
	if sum < 0.006 || sum > 1 {
		t.Errorf("sum %.4fs, want about 3 x 2ms", sum)
	}
}
