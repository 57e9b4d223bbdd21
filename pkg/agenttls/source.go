package agenttls

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source holds the current Snapshot of the identity files and follows their
// updates: it watches the directories (the kubelet's atomic ..data swap) and
// polls as a fallback, reloads all four files on a change, and keeps the
// last good Snapshot when an update is corrupt or inconsistent. It
// implements go-spiffe's x509svid.Source and x509bundle.Source. It is safe
// for concurrent use; Close stops it.
type Source struct {
	cfg     sourceConfig
	current atomic.Pointer[Snapshot]

	mu       sync.Mutex // serializes reloads; guards the fields below
	lastHash [32]byte   // content last parsed, good or bad
	goodHash [32]byte   // content of the current Snapshot
	err      error      // why the files on disk are not the current Snapshot

	conns connSet // established connections re-checked on a change

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// NewSource loads the identity files, from the AGENTMESH_* environment
// variables unless WithDir or WithFiles says otherwise, and starts following
// their updates. A failed first load is an error: an agent should not start
// without its identity.
func NewSource(opts ...Option) (*Source, error) {
	cfg := sourceConfig{log: slog.Default(), poll: DefaultPollInterval, now: time.Now}
	for _, o := range opts {
		o(&cfg)
	}
	if !cfg.filesSet {
		cfg.files = FilesFromEnv()
		if v := os.Getenv(EnvSPIFFEID); v != "" && cfg.expected.IsZero() {
			id, err := spiffeid.FromString(v)
			if err != nil {
				return nil, fmt.Errorf("agentmesh: %s: %w", EnvSPIFFEID, err)
			}
			cfg.expected = id
		}
	}
	if err := cfg.files.validate(); err != nil {
		return nil, err
	}
	r, err := readConsistent(cfg.files)
	if err != nil {
		return nil, err
	}
	snap, err := parse(r)
	if err != nil {
		return nil, err
	}
	if cfg.expected.IsZero() {
		cfg.expected = snap.id
	}
	if err := checkExpected(snap, cfg.expected); err != nil {
		return nil, err
	}
	s := &Source{cfg: cfg}
	s.current.Store(snap)
	s.lastHash, s.goodHash = r.hash(), r.hash()
	s.logLoaded(snap)
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.start(ctx)
	return s, nil
}

func checkExpected(snap *Snapshot, want spiffeid.ID) error {
	if snap.id != want {
		return fmt.Errorf("agentmesh: the certificate is of %s, want %s", snap.id, want)
	}
	return nil
}

// Snapshot returns the current, last good Snapshot.
func (s *Source) Snapshot() *Snapshot { return s.current.Load() }

// ID is the agent's SPIFFE ID; it never changes during the Source's life.
func (s *Source) ID() spiffeid.ID { return s.cfg.expected }

// Files are the paths the Source reads.
func (s *Source) Files() Files { return s.cfg.files }

// Err returns why the files on disk are not in use (a corrupt or
// inconsistent update, a missing file), or nil when the current Snapshot is
// what the files hold.
func (s *Source) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Reload re-reads the files now, as a file system event would, and returns
// Err afterwards.
func (s *Source) Reload() error {
	s.reload()
	return s.Err()
}

// Close stops watching the files and waits for the Source's goroutines to
// end. The last Snapshot stays usable. Close is idempotent.
func (s *Source) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.wg.Wait()
	})
	return nil
}

// GetX509SVID returns the current X.509-SVID. It implements go-spiffe's
// x509svid.Source, so tlsconfig.MTLSServerConfig(src, src, ...) presents
// the current certificate on every handshake.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	return s.Snapshot().GetX509SVID()
}

// GetX509BundleForTrustDomain returns the current CAs of td. It implements
// go-spiffe's x509bundle.Source.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.Snapshot().GetX509BundleForTrustDomain(td)
}

// reload reads and, when they changed, parses the files; it swaps the
// Snapshot in on success and records and reports the error otherwise.
// Handlers run after the lock is released.
func (s *Source) reload() {
	s.mu.Lock()
	snap, failed := s.reloadLocked()
	s.mu.Unlock()
	switch {
	case failed != nil:
		s.cfg.log.Error("agentmesh: identity files not loaded, keeping the last good ones",
			"spiffeID", s.cfg.expected.String(), "error", failed.Error())
		if s.cfg.onError != nil {
			s.cfg.onError(failed)
		}
	case snap != nil:
		s.logLoaded(snap)
		s.recheck()
		if s.cfg.onUpdate != nil {
			s.cfg.onUpdate(snap)
		}
	}
}

// reloadLocked returns the new Snapshot, or the error to report (each
// distinct error is reported once), or neither when nothing changed.
func (s *Source) reloadLocked() (*Snapshot, error) {
	r, err := readConsistent(s.cfg.files)
	if err != nil {
		s.lastHash = [32]byte{}
		return nil, s.setErr(err)
	}
	h := r.hash()
	switch h {
	case s.goodHash:
		s.lastHash = h
		if s.err != nil {
			s.err = nil
			s.cfg.log.Info("agentmesh: identity files back to the loaded version", "spiffeID", s.cfg.expected.String())
		}
		return nil, nil
	case s.lastHash:
		return nil, nil
	}
	s.lastHash = h
	snap, err := parse(r)
	if err == nil {
		err = checkExpected(snap, s.cfg.expected)
	}
	if err != nil {
		return nil, s.setErr(err)
	}
	s.current.Store(snap)
	s.goodHash, s.err = h, nil
	return snap, nil
}

// setErr records err and returns it if it is news.
func (s *Source) setErr(err error) error {
	if s.err != nil && s.err.Error() == err.Error() {
		return nil
	}
	s.err = err
	return err
}

func (s *Source) logLoaded(snap *Snapshot) {
	leaf := snap.Leaf()
	tds := make([]string, 0, len(snap.bundles))
	for _, td := range snap.TrustDomains() {
		tds = append(tds, td.Name())
	}
	s.cfg.log.Info("agentmesh: identity files loaded",
		"spiffeID", snap.id.String(), "serial", leaf.SerialNumber.Text(16),
		"notAfter", leaf.NotAfter.UTC().Format(time.RFC3339), "trustDomains", tds)
	if now := time.Now(); now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		s.cfg.log.Warn("agentmesh: the certificate is not valid now; peers will refuse it",
			"spiffeID", snap.id.String(), "serial", leaf.SerialNumber.Text(16),
			"notBefore", leaf.NotBefore.UTC().Format(time.RFC3339), "notAfter", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if snap.untrusted > 0 {
		s.cfg.log.Warn("agentmesh: bundle.pem holds CAs that policy.json assigns to no trust domain; they are trusted for nothing",
			"spiffeID", snap.id.String(), "count", snap.untrusted)
	}
}
