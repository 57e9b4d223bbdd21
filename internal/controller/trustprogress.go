package controller

import (
	"sync/atomic"
	"time"
)

// TrustProgress is what the certificate reconciler knows of the trust
// reconciler's work: when its last pass that wrote (or confirmed) an
// identity's trust status ended. Both reconcilers run in the same process
// (on the leader); the trust reconciler records, the certificate reconciler
// reads.
//
// It lets a new identity's first status tell a trust reconciler that is
// busy from one that is not working: after a bulk create the trust
// reconciler's queue may hold thousands of identities for a minute or
// more, and writing TrustPending for each of them, then Ready, would add a
// status write per identity to the very backlog that delays them. A trust
// reconciler that has ended no pass for firstStatusWait is stuck or not
// running, and TrustPending is then written as before.
type TrustProgress struct {
	last atomic.Int64 // Unix nanoseconds of the last pass; 0 before the first
}

// Passed records a pass of the trust reconciler that ended at t.
func (p *TrustProgress) Passed(t time.Time) {
	if p != nil {
		p.last.Store(t.UnixNano())
	}
}

// Working says a pass ended within firstStatusWait before now.
func (p *TrustProgress) Working(now time.Time) bool {
	if p == nil {
		return false
	}
	last := p.last.Load()
	return last != 0 && now.Sub(time.Unix(0, last)) < firstStatusWait
}
