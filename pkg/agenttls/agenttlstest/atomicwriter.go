package agenttlstest

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Names the kubelet uses in a projected volume's directory.
const (
	dataDirName    = "..data"
	newDataDirName = "..data_tmp"
	// tsFormat names the timestamped directory of one version; os.MkdirTemp
	// appends a random number, e.g. ..2026_11_26_10_00_00.123456789.
	tsFormat = "..2006_01_02_15_04_05."
)

// DefaultFileMode is the mode of the files, the default of a projected
// volume.
const DefaultFileMode fs.FileMode = 0o644

// AtomicWriter lays out and updates a directory exactly as the kubelet
// updates a projected volume (k8s.io/kubernetes pkg/volume/util
// atomic_writer.go): each version of the files lives in a new timestamped
// directory; the symlink ..data points at the current one; each visible file
// is a symlink name -> ..data/name; an update writes the new directory,
// creates the symlink ..data_tmp to it and renames it over ..data (atomic),
// then removes the visible files that are gone and the old directory.
//
// Readers that open a visible file see either the old or the new version,
// never a partial file. Like with the kubelet, a reader that resolved the
// old version just before the swap may find it deleted; and files read one
// after the other may come from two versions (agenttls reads the four files
// consistently). Write may be called from several goroutines.
type AtomicWriter struct {
	dir string
	// Mode is the mode of the files; DefaultFileMode when zero.
	Mode fs.FileMode

	mu sync.Mutex
}

// NewAtomicWriter returns a writer for dir, which it creates if needed.
func NewAtomicWriter(dir string) (*AtomicWriter, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("atomic writer: %w", err)
	}
	return &AtomicWriter{dir: dir}, nil
}

// Dir is the directory the writer manages.
func (w *AtomicWriter) Dir() string { return w.dir }

// Write makes payload (file name to content) the content of the directory.
// Names are plain file names (no "/", not starting with ".."). A payload
// equal to the current one changes nothing, as with the kubelet.
func (w *AtomicWriter) Write(payload map[string][]byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for name := range payload {
		if err := validateName(name); err != nil {
			return err
		}
	}
	dataDir := filepath.Join(w.dir, dataDirName)
	oldTsName, err := os.Readlink(dataDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("atomic writer: read %s: %w", dataDir, err)
	}
	oldTsDir := ""
	var toRemove []string
	if oldTsName != "" {
		oldTsDir = filepath.Join(w.dir, oldTsName)
		same, gone, err := compare(oldTsDir, payload)
		if err != nil {
			return err
		}
		if same {
			// Up to date; make sure the visible files exist, as the kubelet
			// does (kubernetes#121472).
			return w.createVisibleFiles(payload)
		}
		toRemove = gone
	}
	tsDir, err := w.writeTimestampDir(payload)
	if err != nil {
		return err
	}
	tmpLink := filepath.Join(w.dir, newDataDirName)
	_ = os.Remove(tmpLink) // left over by an interrupted write, if any
	if err := os.Symlink(filepath.Base(tsDir), tmpLink); err != nil {
		_ = os.RemoveAll(tsDir)
		return fmt.Errorf("atomic writer: %w", err)
	}
	if err := os.Rename(tmpLink, dataDir); err != nil {
		_ = os.Remove(tmpLink)
		_ = os.RemoveAll(tsDir)
		return fmt.Errorf("atomic writer: %w", err)
	}
	if err := w.createVisibleFiles(payload); err != nil {
		return err
	}
	for _, name := range toRemove {
		if err := os.Remove(filepath.Join(w.dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("atomic writer: %w", err)
		}
	}
	if oldTsDir != "" {
		if err := os.RemoveAll(oldTsDir); err != nil {
			return fmt.Errorf("atomic writer: %w", err)
		}
	}
	return nil
}

func validateName(name string) error {
	if name == "" || name == "." || strings.HasPrefix(name, "..") || strings.ContainsRune(name, '/') {
		return fmt.Errorf("atomic writer: invalid file name %q", name)
	}
	return nil
}

// compare reports whether the version in oldTsDir holds exactly payload, and
// which of its files payload no longer has.
func compare(oldTsDir string, payload map[string][]byte) (bool, []string, error) {
	entries, err := os.ReadDir(oldTsDir)
	if err != nil {
		return false, nil, fmt.Errorf("atomic writer: %w", err)
	}
	same := len(entries) == len(payload)
	var gone []string
	for _, e := range entries {
		want, ok := payload[e.Name()]
		if !ok {
			gone = append(gone, e.Name())
			same = false
			continue
		}
		if same {
			have, err := os.ReadFile(filepath.Join(oldTsDir, e.Name()))
			if err != nil {
				return false, nil, fmt.Errorf("atomic writer: %w", err)
			}
			same = bytes.Equal(have, want)
		}
	}
	return same, gone, nil
}

// writeTimestampDir writes payload into a new timestamped directory.
func (w *AtomicWriter) writeTimestampDir(payload map[string][]byte) (string, error) {
	tsDir, err := os.MkdirTemp(w.dir, time.Now().UTC().Format(tsFormat))
	if err != nil {
		return "", fmt.Errorf("atomic writer: %w", err)
	}
	// 0755 whatever the umask, so that other users can traverse it.
	if err := os.Chmod(tsDir, 0o755); err != nil {
		_ = os.RemoveAll(tsDir)
		return "", fmt.Errorf("atomic writer: %w", err)
	}
	mode := w.Mode
	if mode == 0 {
		mode = DefaultFileMode
	}
	for name, content := range payload {
		p := filepath.Join(tsDir, name)
		if err := os.WriteFile(p, content, mode); err != nil {
			_ = os.RemoveAll(tsDir)
			return "", fmt.Errorf("atomic writer: %w", err)
		}
		if err := os.Chmod(p, mode); err != nil {
			_ = os.RemoveAll(tsDir)
			return "", fmt.Errorf("atomic writer: %w", err)
		}
	}
	return tsDir, nil
}

// createVisibleFiles creates the symlink name -> ..data/name of every file
// that does not have one yet.
func (w *AtomicWriter) createVisibleFiles(payload map[string][]byte) error {
	for name := range payload {
		p := filepath.Join(w.dir, name)
		_, err := os.Lstat(p)
		if err == nil {
			continue
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("atomic writer: %w", err)
		}
		if err := os.Symlink(filepath.Join(dataDirName, name), p); err != nil {
			return fmt.Errorf("atomic writer: %w", err)
		}
	}
	return nil
}
