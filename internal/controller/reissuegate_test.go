package controller

import (
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// TestReissueGateIsAHardBound admits 1,000 identities at 100/s whatever the
// timing of their requeues, including slots that come back late and bunched.
func TestReissueGateIsAHardBound(t *testing.T) {
	g := NewReissueGate(100)
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := start
	pending := map[types.UID]time.Time{}
	for i := range 1000 {
		pending[types.UID(fmt.Sprint(i))] = now
	}
	var admitted []time.Time
	// Workers run every 50ms (late) and try everything that is due.
	for len(pending) > 0 && now.Sub(start) < time.Minute {
		for uid, at := range pending {
			if now.Before(at) {
				continue
			}
			if d := g.Admit(uid, now); d > 0 {
				pending[uid] = now.Add(d)
				continue
			}
			admitted = append(admitted, now)
			delete(pending, uid)
		}
		now = now.Add(50 * time.Millisecond)
	}
	if len(admitted) != 1000 {
		t.Fatalf("admitted %d of 1000 within a minute", len(admitted))
	}
	perSecond := map[int64]int{}
	worst := 0
	for _, a := range admitted {
		perSecond[a.Unix()]++
		worst = max(worst, perSecond[a.Unix()])
	}
	if worst > 110 {
		t.Errorf("%d admitted within one second, over 100/s plus a burst of 10", worst)
	}
	if spread := admitted[len(admitted)-1].Sub(start); spread < 9*time.Second {
		t.Errorf("1,000 admitted in %s, faster than 100/s", spread)
	}
}
