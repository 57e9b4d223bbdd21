package ca

import (
	"errors"
	"sync"
)

// ErrNotLoaded is returned by Holder.Get before the CA was loaded once.
var ErrNotLoaded = errors.New("the agent CA has not been loaded yet")

// Holder keeps the current CA state for the controllers that issue and
// publish certificates, and tells subscribers when it changes.
type Holder struct {
	mu     sync.RWMutex
	state  *State
	err    error
	loaded bool
	subs   []chan struct{}
}

// Get returns the current state, or the reason there is none: ErrNotLoaded
// before the first load, an *InvalidError when the CA Secret is unusable.
func (h *Holder) Get() (*State, error) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if !h.loaded {
		return nil, ErrNotLoaded
	}
	return h.state, h.err
}

// Set records the outcome of loading the CA, and notifies the subscribers
// when the signing CA, the anchors or the error changed.
func (h *Holder) Set(st *State, err error) (changed bool) {
	h.mu.Lock()
	changed = !h.loaded || !sameState(h.state, st) || errString(h.err) != errString(err)
	h.state, h.err, h.loaded = st, err, true
	subs := h.subs
	h.mu.Unlock()
	if changed {
		for _, s := range subs {
			select {
			case s <- struct{}{}:
			default: // a notification is already pending
			}
		}
	}
	return changed
}

// Subscribe returns a channel that receives a value after every change. A
// slow subscriber sees one pending notification for several changes.
func (h *Holder) Subscribe() <-chan struct{} {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	h.subs = append(h.subs, ch)
	h.mu.Unlock()
	return ch
}

func sameState(a, b *State) bool {
	if a == nil || b == nil {
		return a == b
	}
	if !a.Active.Cert.Equal(b.Active.Cert) || len(a.Anchors) != len(b.Anchors) || len(a.Active.Chain) != len(b.Active.Chain) ||
		a.Rotation.Phase != b.Rotation.Phase || a.Rotation.Compromised != b.Rotation.Compromised || (a.Next == nil) != (b.Next == nil) {
		return false
	}
	for i := range a.Anchors {
		if !a.Anchors[i].Equal(b.Anchors[i]) {
			return false
		}
	}
	for i := range a.Active.Chain {
		if !a.Active.Chain[i].Equal(b.Active.Chain[i]) {
			return false
		}
	}
	return true
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
