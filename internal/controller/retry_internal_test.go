package controller

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// An object that failed all through an outage is retried within RetryMax
// of the last failure, however long the outage was, while the first retry
// stays quick.
func TestRetryLimiterCapsTheBackOff(t *testing.T) {
	l := retryLimiter()
	req := reconcile.Request{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "a"}}
	var waited time.Duration
	var last time.Duration
	for i := 0; waited < 10*time.Minute; i++ {
		d := l.When(req)
		if i == 0 && d > 10*time.Millisecond {
			t.Fatalf("first retry after %s", d)
		}
		if d > RetryMax {
			t.Fatalf("retry %d after %s (%s into the outage), want at most %s", i+1, d, waited, RetryMax)
		}
		waited += d
		last = d
	}
	if last != RetryMax {
		t.Errorf("after a long outage the back-off is %s, want %s", last, RetryMax)
	}
}
