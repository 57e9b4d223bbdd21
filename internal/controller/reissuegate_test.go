package controller

import (
	"fmt"
	"math/rand/v2"
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
	pending := map[types.NamespacedName]time.Time{}
	for i := range 1000 {
		pending[types.NamespacedName{Namespace: "fleet", Name: fmt.Sprint(i)}] = now
	}
	var admitted []time.Time
	// Workers run every 50ms (late) and try everything that is due.
	for len(pending) > 0 && now.Sub(start) < time.Minute {
		for uid, at := range pending {
			if now.Before(at) {
				continue
			}
			if d, _ := g.Admit(uid, now); d > 0 {
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

// TestReissueGateWithLateClockReadings admits identities whose workers read
// the clock up to 300ms before they reach the gate, so readings arrive out of
// order: the admission times the gate returns (the certificates' issuance
// times) still hold no more than the rate plus its burst in any second.
func TestReissueGateWithLateClockReadings(t *testing.T) {
	g := NewReissueGate(100)
	rng := rand.New(rand.NewPCG(1, 2))
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := start
	pending := map[types.NamespacedName]time.Time{}
	for i := range 1000 {
		pending[types.NamespacedName{Namespace: "fleet", Name: fmt.Sprint(i)}] = now
	}
	var issued []time.Time
	for len(pending) > 0 && now.Sub(start) < time.Minute {
		for uid, due := range pending {
			if now.Before(due) {
				continue
			}
			read := now.Add(-time.Duration(rng.IntN(300)) * time.Millisecond)
			d, at := g.Admit(uid, read)
			if d > 0 {
				pending[uid] = now.Add(d)
				continue
			}
			if at.Before(read) {
				t.Fatalf("admitted at %s, before the clock reading %s", at, read)
			}
			issued = append(issued, at)
			delete(pending, uid)
		}
		now = now.Add(10 * time.Millisecond)
	}
	if len(issued) != 1000 {
		t.Fatalf("admitted %d of 1000 within a minute", len(issued))
	}
	perSecond := map[int64]int{}
	worst := 0
	for _, a := range issued {
		perSecond[a.Unix()]++
		worst = max(worst, perSecond[a.Unix()])
	}
	if worst > 110 {
		t.Errorf("%d issued within one second, over 100/s plus a burst of 10", worst)
	}
}
