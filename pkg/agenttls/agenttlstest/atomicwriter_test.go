package agenttlstest_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/agentmesh/agentmesh/pkg/agenttls/agenttlstest"
)

var tsDirName = regexp.MustCompile(`^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d+$`)

// layout checks the directory as the kubelet leaves it and returns the
// timestamped directory's name.
func layout(t *testing.T, dir string, want map[string][]byte) string {
	t.Helper()
	ts, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil {
		t.Fatalf("..data: %v", err)
	}
	if !tsDirName.MatchString(ts) {
		t.Errorf("..data -> %q, not a timestamped directory", ts)
	}
	if fi, err := os.Stat(filepath.Join(dir, ts)); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o755 {
		t.Errorf("timestamped directory %s: %v, %v", ts, fi, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	wantNames := []string{"..data", ts}
	for name, content := range want {
		wantNames = append(wantNames, name)
		target, err := os.Readlink(filepath.Join(dir, name))
		if err != nil || target != filepath.Join("..data", name) {
			t.Errorf("%s -> %q (%v), want ..data/%s", name, target, err, name)
		}
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(got, content) {
			t.Errorf("%s holds %q (%v), want %q", name, got, err, content)
		}
		fi, err := os.Stat(filepath.Join(dir, ts, name))
		if err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("%s/%s: mode %v (%v), want 0644", ts, name, fi.Mode(), err)
		}
	}
	slices.Sort(names)
	slices.Sort(wantNames)
	if !slices.Equal(names, wantNames) {
		t.Errorf("directory holds %v, want %v", names, wantNames)
	}
	return ts
}

func TestAtomicWriterLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	w, err := agenttlstest.NewAtomicWriter(dir)
	if err != nil {
		t.Fatal(err)
	}
	v1 := map[string][]byte{"tls.crt": []byte("cert 1"), "tls.key": []byte("key 1"), "extra": []byte("x")}
	if err := w.Write(v1); err != nil {
		t.Fatal(err)
	}
	ts1 := layout(t, dir, v1)

	// The same payload changes nothing.
	if err := w.Write(v1); err != nil {
		t.Fatal(err)
	}
	if ts := layout(t, dir, v1); ts != ts1 {
		t.Errorf("an unchanged payload swapped %s for %s", ts1, ts)
	}

	// An update: new directory, old one gone, a dropped file's link gone.
	v2 := map[string][]byte{"tls.crt": []byte("cert 2"), "tls.key": []byte("key 2")}
	if err := w.Write(v2); err != nil {
		t.Fatal(err)
	}
	ts2 := layout(t, dir, v2)
	if ts2 == ts1 {
		t.Fatal("the update reused the timestamped directory")
	}
	if _, err := os.Stat(filepath.Join(dir, ts1)); !os.IsNotExist(err) {
		t.Errorf("old directory %s: %v, want removed", ts1, err)
	}

	// A visible link deleted by someone is restored even without a change.
	if err := os.Remove(filepath.Join(dir, "tls.key")); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(v2); err != nil {
		t.Fatal(err)
	}
	layout(t, dir, v2)

	for _, bad := range []string{"", "..data", "a/b", "..x"} {
		if err := w.Write(map[string][]byte{bad: nil}); err == nil {
			t.Errorf("file name %q accepted", bad)
		}
	}
	layout(t, dir, v2)
}

// TestAtomicWriterConcurrentReaders reads while writers update: a reader
// that opens a file sees a whole version, never a partial or empty one.
func TestAtomicWriterConcurrentReaders(t *testing.T) {
	w, err := agenttlstest.NewAtomicWriter(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	version := func(i int) map[string][]byte {
		return map[string][]byte{"f": bytes.Repeat([]byte(fmt.Sprintf("v%08d;", i)), 2000)}
	}
	if err := w.Write(version(0)); err != nil {
		t.Fatal(err)
	}
	stop := time.Now().Add(300 * time.Millisecond)
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Go(func() {
			for i := 1; time.Now().Before(stop); i++ {
				if err := w.Write(version(g*100000 + i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	reads := 0
	for time.Now().Before(stop) {
		b, err := os.ReadFile(filepath.Join(w.Dir(), "f"))
		if os.IsNotExist(err) {
			continue // resolved the old version just before it was removed
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != 20000 || !bytes.Equal(b, bytes.Repeat(b[:10], 2000)) {
			t.Fatalf("read a partial or mixed file of %d bytes", len(b))
		}
		reads++
	}
	wg.Wait()
	if reads < 10 {
		t.Errorf("only %d reads", reads)
	}
	entries, err := os.ReadDir(w.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 {
		t.Errorf("after the writers: %d entries, want ..data, one timestamped directory and f", len(entries))
	}
}
