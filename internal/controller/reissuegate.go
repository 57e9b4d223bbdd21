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
	slots map[types.UID]time.Time
}

// NewReissueGate admits perSecond reissues a second (burst: a tenth of a
// second's worth, at least one).
func NewReissueGate(perSecond float64) *ReissueGate {
	burst := max(1, int(perSecond/10))
	return &ReissueGate{
		limiter: rate.NewLimiter(rate.Limit(perSecond), burst),
		strict:  rate.NewLimiter(rate.Limit(perSecond), burst),
		every:   time.Duration(float64(time.Second) / perSecond),
		slots:   map[types.UID]time.Time{},
	}
}

// Admit returns zero when the identity may be reissued now, or how long to
// wait for its slot.
func (g *ReissueGate) Admit(uid types.UID, now time.Time) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	if at, ok := g.slots[uid]; ok {
		if now.Before(at) {
			return at.Sub(now)
		}
	} else if d := g.limiter.ReserveN(now, 1).DelayFrom(now); d > 0 {
		g.slots[uid] = now.Add(d)
		return d
	}
	if !g.strict.AllowN(now, 1) {
		// Late slots bunched up: come back after one interval.
		g.slots[uid] = now.Add(g.every)
		return g.every
	}
	delete(g.slots, uid)
	return 0
}

// Forget drops the slot of an identity that is gone.
func (g *ReissueGate) Forget(uid types.UID) {
	g.mu.Lock()
	delete(g.slots, uid)
	g.mu.Unlock()
}
