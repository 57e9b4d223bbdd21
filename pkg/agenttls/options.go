package agenttls

import (
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultPollInterval is how often a Source re-reads the files in case a
// file system event was missed.
const DefaultPollInterval = 5 * time.Second

// debounceDelay batches the several file system events of one kubelet
// update into one reload.
const debounceDelay = 50 * time.Millisecond

// Option configures NewSource.
type Option func(*sourceConfig)

type sourceConfig struct {
	files      Files
	filesSet   bool
	expected   spiffeid.ID
	log        *slog.Logger
	poll       time.Duration
	noFSNotify bool
	onError    func(error)
	onUpdate   func(*Snapshot)
	now        func() time.Time
}

// WithDir reads the four files from dir (tls.crt, tls.key, bundle.pem,
// policy.json) instead of the AGENTMESH_* variables.
func WithDir(dir string) Option {
	return func(c *sourceConfig) { c.files, c.filesSet = FilesInDir(dir), true }
}

// WithFiles reads the files at the given paths instead of the AGENTMESH_*
// variables.
func WithFiles(f Files) Option {
	return func(c *sourceConfig) { c.files, c.filesSet = f, true }
}

// WithExpectedID requires the certificate to carry this SPIFFE ID. Without
// it, the ID is AGENTMESH_SPIFFE_ID when the files come from the environment
// and that variable is set; otherwise the ID of the first load is pinned.
// Either way, an update to another ID is refused.
func WithExpectedID(id spiffeid.ID) Option {
	return func(c *sourceConfig) { c.expected = id }
}

// WithLogger sets the logger for reloads, reload errors and audit-mode
// reports (slog.Default() otherwise). Nothing about private keys is logged.
func WithLogger(l *slog.Logger) Option {
	return func(c *sourceConfig) {
		if l != nil {
			c.log = l
		}
	}
}

// WithPollInterval sets how often the files are re-read besides file system
// events (DefaultPollInterval otherwise); zero or negative disables polling.
func WithPollInterval(d time.Duration) Option {
	return func(c *sourceConfig) { c.poll = d }
}

// WithoutFSNotify disables the file system watch and relies on polling
// alone, for file systems that do not deliver inotify events.
func WithoutFSNotify() Option {
	return func(c *sourceConfig) { c.noFSNotify = true }
}

// WithErrorHandler is called once for each update that is refused (a corrupt
// or inconsistent set of files); the Source keeps its last good Snapshot.
// It is called from the Source's goroutine and must not block for long.
func WithErrorHandler(f func(error)) Option {
	return func(c *sourceConfig) { c.onError = f }
}

// WithUpdateHandler is called with each new Snapshot after a successful
// reload. It is called from the Source's goroutine and must not block for
// long.
func WithUpdateHandler(f func(*Snapshot)) Option {
	return func(c *sourceConfig) { c.onUpdate = f }
}

// WithClock sets the clock of policy decisions: when a grant of policy.json
// has expired (time.Now otherwise). Certificates are verified against the
// real time whatever it says. For tests.
func WithClock(now func() time.Time) Option {
	return func(c *sourceConfig) {
		if now != nil {
			c.now = now
		}
	}
}
