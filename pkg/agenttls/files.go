package agenttls

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
)

// DefaultDir is where the operator's webhook mounts the identity volume.
const DefaultDir = "/var/run/agentmesh"

// Names of the files in the identity volume.
const (
	// CertFileName holds the leaf certificate and its chain.
	CertFileName = "tls.crt"
	// KeyFileName holds the leaf's private key.
	KeyFileName = "tls.key"
	// BundleFileName holds the CAs of every trusted trust domain.
	BundleFileName = "bundle.pem"
	// PolicyFileName holds the effective policy.
	PolicyFileName = "policy.json"
)

// Environment variables that the operator's webhook sets in every container.
const (
	// EnvSPIFFEID is the agent's SPIFFE ID.
	EnvSPIFFEID = "AGENTMESH_SPIFFE_ID"
	// EnvCertFile is the path of tls.crt.
	EnvCertFile = "AGENTMESH_CERT_FILE"
	// EnvKeyFile is the path of tls.key.
	EnvKeyFile = "AGENTMESH_KEY_FILE"
	// EnvBundleFile is the path of bundle.pem.
	EnvBundleFile = "AGENTMESH_BUNDLE_FILE"
	// EnvPolicyFile is the path of policy.json.
	EnvPolicyFile = "AGENTMESH_POLICY_FILE"
)

// dataLink is the symlink that the kubelet swaps atomically on an update of
// a projected volume.
const dataLink = "..data"

// Caps of the files, checked while reading, before anything is decoded.
// They are the operator's own: what it writes, the SDK reads.
const (
	// MaxCertFileSize and MaxCertFileCertificates cap tls.crt.
	MaxCertFileSize         = 64 << 10
	MaxCertFileCertificates = 32
	// MaxBundleFileSize and MaxBundleFileCertificates cap bundle.pem.
	MaxBundleFileSize         = 512 << 10
	MaxBundleFileCertificates = 1024

	maxKeySize = 16 << 10
)

// Files are the paths of the four identity files.
type Files struct {
	// Cert is tls.crt: the leaf certificate and its chain, PEM.
	Cert string
	// Key is tls.key: the leaf's private key, PKCS#8 PEM.
	Key string
	// Bundle is bundle.pem: the CA certificates of every trusted trust
	// domain, PEM.
	Bundle string
	// Policy is policy.json: the effective policy.
	Policy string
}

// FilesInDir returns the paths of the identity files in dir.
func FilesInDir(dir string) Files {
	return Files{
		Cert:   filepath.Join(dir, CertFileName),
		Key:    filepath.Join(dir, KeyFileName),
		Bundle: filepath.Join(dir, BundleFileName),
		Policy: filepath.Join(dir, PolicyFileName),
	}
}

// FilesFromEnv returns the paths named by the AGENTMESH_*_FILE variables;
// a variable that is unset or empty falls back to the file in DefaultDir.
func FilesFromEnv() Files {
	f := FilesInDir(DefaultDir)
	for _, e := range []struct {
		name string
		path *string
	}{{EnvCertFile, &f.Cert}, {EnvKeyFile, &f.Key}, {EnvBundleFile, &f.Bundle}, {EnvPolicyFile, &f.Policy}} {
		if v := os.Getenv(e.name); v != "" {
			*e.path = v
		}
	}
	return f
}

// dirs lists the distinct directories that hold the files.
func (f Files) dirs() []string {
	d := []string{filepath.Dir(f.Cert), filepath.Dir(f.Key), filepath.Dir(f.Bundle), filepath.Dir(f.Policy)}
	slices.Sort(d)
	return slices.Compact(d)
}

func (f Files) validate() error {
	if f.Cert == "" || f.Key == "" || f.Bundle == "" || f.Policy == "" {
		return errors.New("agentmesh: every one of the certificate, key, bundle and policy paths is required")
	}
	return nil
}

// raw is the content of the four files as read, before parsing.
type raw struct {
	cert, key, bundle, policy []byte
}

// hash identifies the content, to skip a reload when nothing changed.
func (r *raw) hash() [32]byte {
	h := sha256.New()
	for _, b := range [][]byte{r.cert, r.key, r.bundle, r.policy} {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// readAttempts bounds the retries of readConsistent.
const readAttempts = 5

// readConsistent reads the four files so that they come from one version of
// the volume: it notes where each directory's ..data link points before and
// after reading, and reads again when a swap happened in between (the files
// may then mix two versions, or the old version may have been deleted under
// the reader). Directories without a ..data link (plain files) are read as
// they are.
func readConsistent(f Files) (*raw, error) {
	dirs := f.dirs()
	for range readAttempts {
		before := dataTargets(dirs)
		r, err := readFiles(f)
		if slices.Equal(before, dataTargets(dirs)) {
			return r, err
		}
	}
	return nil, errors.New("agentmesh: the files kept changing while being read")
}

func dataTargets(dirs []string) []string {
	out := make([]string, len(dirs))
	for i, d := range dirs {
		out[i], _ = os.Readlink(filepath.Join(d, dataLink))
	}
	return out
}

func readFiles(f Files) (*raw, error) {
	var r raw
	var err error
	if r.cert, err = readCapped(f.Cert, MaxCertFileSize); err != nil {
		return nil, err
	}
	if r.key, err = readCapped(f.Key, maxKeySize); err != nil {
		return nil, err
	}
	if r.bundle, err = readCapped(f.Bundle, MaxBundleFileSize); err != nil {
		return nil, err
	}
	if r.policy, err = readCapped(f.Policy, maxPolicySize); err != nil {
		return nil, err
	}
	return &r, nil
}

// readCapped reads at most limit bytes of a file, and fails if there are
// more, without reading them.
func readCapped(path string, limit int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("agentmesh: %w", err)
	}
	defer fh.Close()
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(fh, limit+1))
	if err != nil {
		return nil, fmt.Errorf("agentmesh: read %s: %w", path, err)
	}
	if n > limit {
		return nil, fmt.Errorf("agentmesh: %s is over the limit of %d bytes", path, limit)
	}
	return buf.Bytes(), nil
}
