package controller

import (
	"time"

	"golang.org/x/time/rate"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// RetryMax is the longest the certificate controller waits before it
// retries a reconcile that failed with an error (the API server unreachable,
// a write conflict, a status write refused).
//
// controller-runtime's default back-off doubles from 5ms up to 1000s per
// object, so an identity that failed all through an API server outage of
// length T was retried up to T after the API server came back: an outage of
// 0.45 of the certificates' lifetime, starting at their renewal time, let
// them expire in place although the default renewal leaves 0.55 of it
// (test/faults). With the back-off capped, every failed identity is retried
// within RetryMax of the API server's return. The overall retry rate stays
// bounded by the default's token bucket (10 per second, bursts of 100), so a
// long outage or a failure that persists never becomes a storm; failed
// issuances whose status could be written wait identity.Backoff instead.
const RetryMax = 5 * time.Second

// retryLimiter is controller-runtime's default rate limiter with the
// per-object back-off capped at RetryMax.
func retryLimiter() workqueue.TypedRateLimiter[reconcile.Request] {
	return workqueue.NewTypedMaxOfRateLimiter(
		workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](5*time.Millisecond, RetryMax),
		&workqueue.TypedBucketRateLimiter[reconcile.Request]{Limiter: rate.NewLimiter(rate.Limit(10), 100)},
	)
}
