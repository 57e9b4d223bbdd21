package controller

import (
	"context"
	"crypto"
	"crypto/rand"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/identity"
)

// KeyPool generates slow (RSA) keys off the reconcile path: a reconcile
// asks for a key and returns at once; a bounded set of workers generates it
// and queues the identity again, whose next pass takes the key. The
// reconcile workers therefore never wait seconds for RSA-4096 while other
// identities are due.
type KeyPool struct {
	sem    chan struct{}
	events chan event.GenericEvent

	mu    sync.Mutex
	slots map[types.NamespacedName]*keySlot
}

// keySpec is what a key is generated for: one incarnation of an identity
// (its UID) and the kind of key.
type keySpec struct {
	uid  types.UID
	alg  mtlsv1alpha1.PrivateKeyAlgorithm
	size int
}

type keySlot struct {
	spec keySpec
	key  crypto.Signer
	err  error
	done bool
}

// NewKeyPool returns a pool with the given number of generating workers.
func NewKeyPool(workers int) *KeyPool {
	return &KeyPool{
		sem:    make(chan struct{}, max(workers, 1)),
		events: make(chan event.GenericEvent, 1024),
		slots:  map[types.NamespacedName]*keySlot{},
	}
}

// Take returns the key generated for the identity, if it is ready and of
// the requested kind; otherwise it makes sure one is being generated and
// returns ready=false. A key is handed out once.
func (p *KeyPool) Take(ctx context.Context, uid types.UID, nn types.NamespacedName, alg mtlsv1alpha1.PrivateKeyAlgorithm, size int) (key crypto.Signer, ready bool, err error) {
	spec := keySpec{uid, alg, size}
	p.mu.Lock()
	defer p.mu.Unlock()
	if s, ok := p.slots[nn]; ok && s.spec == spec {
		if !s.done {
			return nil, false, nil
		}
		delete(p.slots, nn)
		return s.key, true, s.err
	}
	s := &keySlot{spec: spec}
	p.slots[nn] = s
	go p.generate(ctx, nn, s)
	return nil, false, nil
}

func (p *KeyPool) generate(ctx context.Context, nn types.NamespacedName, s *keySlot) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		p.forget(nn, s)
		return
	}
	key, err := identity.GenerateKey(s.spec.alg, s.spec.size, rand.Reader)
	<-p.sem
	p.mu.Lock()
	if p.slots[nn] != s {
		// The spec changed meanwhile and another key is on its way.
		p.mu.Unlock()
		return
	}
	s.key, s.err, s.done = key, err, true
	p.mu.Unlock()
	obj := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Namespace: nn.Namespace, Name: nn.Name}}
	select {
	case p.events <- event.GenericEvent{Object: client.Object(obj)}:
	case <-ctx.Done():
	}
}

func (p *KeyPool) forget(nn types.NamespacedName, s *keySlot) {
	p.mu.Lock()
	if p.slots[nn] == s {
		delete(p.slots, nn)
	}
	p.mu.Unlock()
}

// Forget drops any key generated or pending for a deleted identity.
func (p *KeyPool) Forget(nn types.NamespacedName) {
	p.mu.Lock()
	delete(p.slots, nn)
	p.mu.Unlock()
}
