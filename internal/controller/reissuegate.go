package controller

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/types"
)

// ReissueGate spreads the reissues a CA rotation causes over time: each
// identity gets a slot from a token bucket of the configured rate, keeps it
// across requeues, and is reissued when its slot comes. A rotation of
// 10,000 identities at 20/s takes about eight minutes and never a burst.
type ReissueGate struct {
	limiter *rate.Limiter

	mu    sync.Mutex
	slots map[types.UID]time.Time
}

// NewReissueGate admits perSecond reissues a second (burst: a tenth of a
// second's worth, at least one).
func NewReissueGate(perSecond float64) *ReissueGate {
	return &ReissueGate{
		limiter: rate.NewLimiter(rate.Limit(perSecond), max(1, int(perSecond/10))),
		slots:   map[types.UID]time.Time{},
	}
}

// Admit returns zero when the identity may be reissued now, or how long to
// wait for its slot.
func (g *ReissueGate) Admit(uid types.UID, now time.Time) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	if at, ok := g.slots[uid]; ok {
		if !now.Before(at) {
			delete(g.slots, uid)
			return 0
		}
		return at.Sub(now)
	}
	d := g.limiter.ReserveN(now, 1).DelayFrom(now)
	if d <= 0 {
		return 0
	}
	g.slots[uid] = now.Add(d)
	return d
}

// Forget drops the slot of an identity that is gone.
func (g *ReissueGate) Forget(uid types.UID) {
	g.mu.Lock()
	delete(g.slots, uid)
	g.mu.Unlock()
}
