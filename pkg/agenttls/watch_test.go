package agenttls_test

import (
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

// events records what a Source reports.
type events struct {
	mu      sync.Mutex
	errs    []error
	updates []*agenttls.Snapshot
}

func (e *events) options() []agenttls.Option {
	return []agenttls.Option{
		agenttls.WithErrorHandler(func(err error) { e.mu.Lock(); e.errs = append(e.errs, err); e.mu.Unlock() }),
		agenttls.WithUpdateHandler(func(s *agenttls.Snapshot) { e.mu.Lock(); e.updates = append(e.updates, s); e.mu.Unlock() }),
	}
}

func (e *events) counts() (errs, updates int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.errs), len(e.updates)
}

func (e *events) lastErr() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.errs) == 0 {
		return nil
	}
	return e.errs[len(e.errs)-1]
}

func leafSerial(s *agenttls.Source) string { return s.Snapshot().Leaf().SerialNumber.Text(16) }

func TestRotationKeepsConnectionsAndPresentsNewCertificate(t *testing.T) {
	ca := newCA(t, tdLocal)
	worker := newIdentity(t, ca, workerID, nil, nil)
	// No polling: the fsnotify watch alone must see the ..data swap.
	src := worker.source(t, agenttls.WithPollInterval(0))
	srv := serve(t, src.ServerTLSConfig())
	planner := newIdentity(t, ca, plannerID, nil, nil).source(t)

	old, err := dial(t, srv.addr, planner.ClientTLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	_ = srv.next(t)
	oldSerial := serial(worker.leaf)
	if serialOf(old) != oldSerial {
		t.Fatalf("server presented %s, want %s", serialOf(old), oldSerial)
	}

	worker.leaf = issue(t, ca, workerID)
	worker.write(t)
	newSerial := serial(worker.leaf)
	waitFor(t, "the new certificate", func() bool { return leafSerial(src) == newSerial })

	// The established connection still works.
	for range 3 {
		if err := roundTrip(old); err != nil {
			t.Fatalf("the established connection broke after the rotation: %v", err)
		}
	}
	// A new handshake presents the new certificate.
	c, err := dial(t, srv.addr, planner.ClientTLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	_ = srv.next(t)
	if got := serialOf(c); got != newSerial || got == oldSerial {
		t.Errorf("new handshake saw serial %s, want %s (old %s)", got, newSerial, oldSerial)
	}
	if err := src.Err(); err != nil {
		t.Errorf("Err() = %v after a good update", err)
	}
}

func TestCorruptUpdateKeepsLastGoodThenRecovers(t *testing.T) {
	ca := newCA(t, tdLocal)
	worker := newIdentity(t, ca, workerID, nil, nil)
	var ev events
	var logs logBuffer
	src := worker.source(t, append(ev.options(), agenttls.WithLogger(logs.logger()), agenttls.WithPollInterval(0))...)
	srv := serve(t, src.ServerTLSConfig())
	planner := newIdentity(t, ca, plannerID, nil, nil).source(t)
	goodSerial := serial(worker.leaf)

	// A new certificate with the old key: the key does not match.
	good := worker.payload(t)
	worker.leaf = issue(t, ca, workerID)
	bad := worker.payload(t)
	bad[agenttls.KeyFileName] = good[agenttls.KeyFileName]
	worker.writePayload(t, bad)
	waitFor(t, "the error to be reported", func() bool { return src.Err() != nil })
	mustContain(t, src.Err().Error(), "tls.key does not match the certificate of "+workerID.String())
	if got := leafSerial(src); got != goodSerial {
		t.Fatalf("the Source took the bad update: serial %s, want %s", got, goodSerial)
	}
	c, err := dial(t, srv.addr, planner.ClientTLSConfig())
	if err != nil {
		t.Fatalf("handshake after a bad update: %v", err)
	}
	_ = srv.next(t)
	if serialOf(c) != goodSerial {
		t.Errorf("handshake after a bad update presented %s, want the last good %s", serialOf(c), goodSerial)
	}

	// Garbage policy: a second, different error.
	garbage := worker.payload(t)
	garbage[agenttls.PolicyFileName] = []byte(`{"version": "agentmesh.dev/policy/v1", "spiffeID": 42`)
	worker.writePayload(t, garbage)
	waitFor(t, "the policy error", func() bool { e := src.Err(); return e != nil && strings.Contains(e.Error(), "policy.json") })
	if got := leafSerial(src); got != goodSerial {
		t.Fatalf("the Source took the garbage policy: serial %s", got)
	}

	// A good update recovers.
	worker.write(t)
	newSerial := serial(worker.leaf)
	waitFor(t, "recovery", func() bool { return leafSerial(src) == newSerial })
	if err := src.Err(); err != nil {
		t.Errorf("Err() = %v after recovery", err)
	}
	waitFor(t, "the update handler", func() bool { _, u := ev.counts(); return u > 0 })
	errs, updates := ev.counts()
	if errs != 2 || updates != 1 {
		t.Errorf("handlers saw %d errors and %d updates, want 2 and 1", errs, updates)
	}
	if !strings.Contains(ev.lastErr().Error(), "policy.json") {
		t.Errorf("last reported error %v, want the policy error", ev.lastErr())
	}
	mustContain(t, logs.String(), "keeping the last good ones", "does not match", "identity files loaded")
	for _, secret := range []string{"PRIVATE KEY", keyLine(t, good[agenttls.KeyFileName])} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the log holds key material %q", secret)
		}
	}
}

// keyLine is a line of base64 from the middle of a PEM key.
func keyLine(t *testing.T, pemKey []byte) string {
	t.Helper()
	lines := strings.Split(string(pemKey), "\n")
	if len(lines) < 3 {
		t.Fatalf("short key PEM")
	}
	return lines[1]
}

func TestPolicyReloadChangesVerdict(t *testing.T) {
	ca := newCA(t, tdLocal)
	worker := newIdentity(t, ca, workerID, ingressOnly(workerID, "worker-ingress", agenttls.ModeEnforce, plannerID), nil)
	src := worker.source(t)
	srv := serve(t, src.ServerTLSConfig())
	outsider := newIdentity(t, ca, outsiderID, nil, nil).source(t)

	if _, err := dial(t, srv.addr, outsider.ClientTLSConfig()); err == nil {
		t.Fatal("the outsider was let in before the policy change")
	}
	if r := srv.next(t); !errors.As(r.err, new(*agenttls.PolicyError)) {
		t.Fatalf("server error %v, want a policy refusal", r.err)
	}

	worker.policy = ingressOnly(workerID, "worker-ingress", agenttls.ModeEnforce, plannerID, outsiderID)
	worker.write(t)
	waitFor(t, "the new policy", func() bool { return len(src.Snapshot().Policy().Ingress.SPIFFEIDs) == 2 })
	if _, err := dial(t, srv.addr, outsider.ClientTLSConfig()); err != nil {
		t.Fatalf("the outsider is still refused after the policy change: %v", err)
	}
	if r := srv.next(t); r.err != nil || r.peer != outsiderID {
		t.Errorf("server saw %v, %v", r.peer, r.err)
	}
}

func TestPollingFallback(t *testing.T) {
	ca := newCA(t, tdLocal)
	worker := newIdentity(t, ca, workerID, nil, nil)
	src := worker.source(t, agenttls.WithoutFSNotify(), agenttls.WithPollInterval(20*time.Millisecond))
	worker.leaf = issue(t, ca, workerID)
	worker.write(t)
	waitFor(t, "the poll to see the update", func() bool { return leafSerial(src) == serial(worker.leaf) })
}

func TestIdentityChangeRefused(t *testing.T) {
	ca := newCA(t, tdLocal)
	worker := newIdentity(t, ca, workerID, nil, nil)
	src := worker.source(t)
	other := newIdentity(t, ca, plannerID, nil, nil)
	worker.writePayload(t, other.payload(t))
	if err := src.Reload(); err == nil || !strings.Contains(err.Error(), "the certificate is of "+plannerID.String()+", want "+workerID.String()) {
		t.Fatalf("Reload() = %v, want an identity change error", err)
	}
	if src.ID() != workerID || src.Snapshot().ID() != workerID {
		t.Errorf("the Source changed identity to %s", src.Snapshot().ID())
	}
}

func TestCloseStopsGoroutines(t *testing.T) {
	ca := newCA(t, tdLocal)
	worker := newIdentity(t, ca, workerID, nil, nil)
	var updates atomic.Int32
	src := worker.source(t, agenttls.WithPollInterval(10*time.Millisecond),
		agenttls.WithUpdateHandler(func(*agenttls.Snapshot) { updates.Add(1) }))
	waitFor(t, "the watching goroutine", func() bool { return goroutineRunning("agenttls.(*Source).run") })
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	_ = src.Close() // idempotent
	if goroutineRunning("agenttls.(*Source).run") {
		t.Error("the watching goroutine survived Close")
	}
	worker.leaf = issue(t, ca, workerID)
	worker.write(t)
	time.Sleep(100 * time.Millisecond)
	if n := updates.Load(); n != 0 {
		t.Errorf("%d updates after Close", n)
	}
	if src.Snapshot() == nil {
		t.Error("no Snapshot after Close")
	}
}

func goroutineRunning(fn string) bool {
	buf := make([]byte, 1<<20)
	return strings.Contains(string(buf[:runtime.Stack(buf, true)]), fn)
}

// TestConsistentReadsDuringUpdates loads the files while the kubelet's
// writer keeps rotating them: every load sees one version, never a
// certificate of one version with the key of another.
func TestConsistentReadsDuringUpdates(t *testing.T) {
	ca := newCA(t, tdLocal)
	worker := newIdentity(t, ca, workerID, nil, nil)
	payloads := make([]map[string][]byte, 4)
	serials := map[string]bool{serial(worker.leaf): true}
	for i := range payloads {
		worker.leaf = issue(t, ca, workerID)
		payloads[i] = worker.payload(t)
		serials[serial(worker.leaf)] = true
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			if err := worker.w.Write(payloads[i%len(payloads)]); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(500 * time.Microsecond)
		}
	})
	defer func() { close(done); wg.Wait() }()
	files := agenttls.FilesInDir(worker.w.Dir())
	deadline := time.Now().Add(300 * time.Millisecond)
	n := 0
	for ; time.Now().Before(deadline); n++ {
		snap, err := agenttls.Load(files)
		if err != nil {
			t.Fatalf("load %d during updates: %v", n, err)
		}
		if s := snap.Leaf().SerialNumber.Text(16); !serials[s] {
			t.Fatalf("load %d saw unknown serial %s", n, s)
		}
	}
	if n < 10 {
		t.Errorf("only %d loads", n)
	}
}
