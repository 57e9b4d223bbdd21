package identity

import (
	"hash/fnv"
	"time"
)

// JitterFraction is the largest share of a certificate's lifetime by which
// its renewal is brought forward, so that certificates issued together are
// not renewed together.
const JitterFraction = 0.1

// Jitter maps seed to a fraction in [0, 1), the same for the same seed on
// every run, so that a restarted operator computes the same renewal times.
// Seed it with something unique to one certificate (the identity's UID and
// the certificate's serial): every certificate then gets its own offset.
func Jitter(seed string) float64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(seed))
	return float64(h.Sum64()>>11) / float64(1<<53)
}

// RenewalTime is when a certificate valid from notBefore to notAfter is
// renewed: renewBefore ahead of notAfter (or renewBeforePercentage of the
// lifetime, 50% by default), brought forward by jitter×10% of the lifetime.
// A renewBefore that does not fit in the lifetime (the CA's expiry cut the
// certificate short) falls back to half the lifetime. The result is never
// earlier than a fifth into the lifetime, which is after the issuance itself
// (NotBefore is backdated by at most a tenth), so an issuance never
// schedules its own immediate renewal.
func RenewalTime(notBefore, notAfter time.Time, renewBefore *time.Duration, renewBeforePercentage *int32, jitter float64) time.Time {
	lifetime := notAfter.Sub(notBefore)
	if lifetime <= 0 {
		return notAfter
	}
	var before time.Duration
	switch {
	case renewBefore != nil:
		before = *renewBefore
	case renewBeforePercentage != nil:
		before = time.Duration(int64(lifetime) / 100 * int64(*renewBeforePercentage))
	default:
		before = lifetime / 100 * DefaultRenewBeforePercentage
	}
	if before >= lifetime || before <= 0 {
		before = lifetime / 2
	}
	t := notAfter.Add(-before).Add(-time.Duration(jitter * JitterFraction * float64(lifetime)))
	if earliest := notBefore.Add(lifetime / 5); t.Before(earliest) {
		t = earliest
	}
	return t.Truncate(time.Second)
}

// Backoff policy after failed issuances.
const (
	BackoffBase = time.Second
	BackoffMax  = 5 * time.Minute
)

// Backoff is how long to wait after the given number of consecutive failed
// issuances: 1s, 2s, 4s, ... doubling up to 5 minutes.
func Backoff(failedAttempts int32) time.Duration {
	if failedAttempts <= 0 {
		return 0
	}
	d := BackoffBase
	for i := int32(1); i < failedAttempts; i++ {
		d *= 2
		if d >= BackoffMax {
			return BackoffMax
		}
	}
	return d
}
