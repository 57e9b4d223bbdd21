package controller

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/types"
)

// ReissueGate spreads the reissues a CA rotation causes over time: each
// identity gets a slot from a token bucket of the configured rate, keeps it
// across requeues, and is reissued when its slot comes. Slots spread the
// work; a second bucket, taken at the moment of the reissue, makes the rate
// a hard bound even when busy workers run late and their slots bunch up. A
// rotation of 10,000 identities at 20/s takes about eight minutes and never
// a burst.
type ReissueGate struct {
	limiter *rate.Limiter
	strict  *rate.Limiter
	every   time.Duration

	mu    sync.Mutex
	slots map[types.NamespacedName]time.Time
	// last is the latest time the gate has admitted at. Workers read the
	// clock before they queue for the gate, so their readings arrive out of
	// order; a token bucket fed an earlier time than it last saw re-earns
	// tokens for time it already counted, and would admit more than the
	// rate. The gate never moves back.
	last time.Time
}

// NewReissueGate admits perSecond reissues a second (burst: a tenth of a
// second's worth, at least one).
func NewReissueGate(perSecond float64) *ReissueGate {
	burst := max(1, int(perSecond/10))
	return &ReissueGate{
		limiter: rate.NewLimiter(rate.Limit(perSecond), burst),
		strict:  rate.NewLimiter(rate.Limit(perSecond), burst),
		every:   time.Duration(float64(time.Second) / perSecond),
		slots:   map[types.NamespacedName]time.Time{},
	}
}

// Admit returns how long the identity must wait for its slot, or zero and
// the time it was admitted at: the caller issues with that time, so the
// certificates' NotBefore obeys the rate the gate enforces. The admission
// time is now, or a little later when another worker was admitted at a later
// clock reading.
func (g *ReissueGate) Admit(id types.NamespacedName, now time.Time) (time.Duration, time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now.Before(g.last) {
		now = g.last
	}
	if at, ok := g.slots[id]; ok {
		if now.Before(at) {
			return at.Sub(now), time.Time{}
		}
	} else if d := g.limiter.ReserveN(now, 1).DelayFrom(now); d > 0 {
		g.slots[id] = now.Add(d)
		return d, time.Time{}
	}
	if !g.strict.AllowN(now, 1) {
		// Late slots bunched up: come back after one interval.
		g.slots[id] = now.Add(g.every)
		return g.every, time.Time{}
	}
	delete(g.slots, id)
	g.last = now
	return 0, now
}

// Forget drops the slot of an identity that is gone.
func (g *ReissueGate) Forget(id types.NamespacedName) {
	g.mu.Lock()
	delete(g.slots, id)
	g.mu.Unlock()
}
