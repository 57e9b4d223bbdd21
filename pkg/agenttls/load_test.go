package agenttls_test

import (
	"crypto/x509"
	"errors"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
	"github.com/agentmesh/agentmesh/pkg/agenttls/agenttlstest"
)

func TestNewSourceFromEnv(t *testing.T) {
	ca := newCA(t, tdLocal)
	worker := newIdentity(t, ca, workerID, nil, nil)
	f := agenttls.FilesInDir(worker.w.Dir())
	t.Setenv(agenttls.EnvCertFile, f.Cert)
	t.Setenv(agenttls.EnvKeyFile, f.Key)
	t.Setenv(agenttls.EnvBundleFile, f.Bundle)
	t.Setenv(agenttls.EnvPolicyFile, f.Policy)
	t.Setenv(agenttls.EnvSPIFFEID, workerID.String())

	if got := agenttls.FilesFromEnv(); got != f {
		t.Fatalf("FilesFromEnv() = %+v, want %+v", got, f)
	}
	src, err := agenttls.NewSource(agenttls.WithLogger(discard()))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if src.ID() != workerID || src.Files() != f {
		t.Errorf("source of %s on %+v", src.ID(), src.Files())
	}
	if got := src.Snapshot().TrustDomains(); len(got) != 1 || got[0] != tdLocal {
		t.Errorf("trust domains %v, want [cluster.local]", got)
	}

	t.Setenv(agenttls.EnvSPIFFEID, plannerID.String())
	if _, err := agenttls.NewSource(agenttls.WithLogger(discard())); err == nil ||
		!strings.Contains(err.Error(), "the certificate is of "+workerID.String()+", want "+plannerID.String()) {
		t.Errorf("NewSource with another AGENTMESH_SPIFFE_ID: %v", err)
	}
}

func TestFilesFromEnvDefaults(t *testing.T) {
	for _, e := range []string{agenttls.EnvCertFile, agenttls.EnvKeyFile, agenttls.EnvBundleFile, agenttls.EnvPolicyFile} {
		t.Setenv(e, "")
	}
	t.Setenv(agenttls.EnvKeyFile, "/keys/k.pem")
	want := agenttls.Files{
		Cert: "/var/run/agentmesh/tls.crt", Key: "/keys/k.pem",
		Bundle: "/var/run/agentmesh/bundle.pem", Policy: "/var/run/agentmesh/policy.json",
	}
	if got := agenttls.FilesFromEnv(); got != want {
		t.Errorf("FilesFromEnv() = %+v, want %+v", got, want)
	}
}

func TestLoadRefusesBadFiles(t *testing.T) {
	ca := newCA(t, tdLocal)
	otherCA := newCA(t, tdLocal)
	partner := newCA(t, tdPartner)
	base := newIdentity(t, ca, workerID, nil, nil)
	good := base.payload(t)
	other := issue(t, ca, workerID)
	otherKey, err := other.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	leafPEM := func(opts ...agenttlstest.LeafOption) (cert, key []byte) {
		l := issue(t, ca, workerID, opts...)
		k, err := l.KeyPEM()
		if err != nil {
			t.Fatal(err)
		}
		return l.CertPEM(), k
	}
	policyWith := func(edit func(p *agenttls.Policy)) []byte {
		p := agenttlstest.DefaultPolicy(workerID)
		edit(p)
		trust, err := agenttlstest.RenderTrust(p, map[spiffeid.TrustDomain][]*x509.Certificate{tdLocal: {ca.Root}})
		if err != nil {
			t.Fatal(err)
		}
		return trust.PolicyJSON
	}

	tests := map[string]struct {
		edit func(p map[string][]byte)
		want string
	}{
		"garbage certificate": {
			edit: func(p map[string][]byte) { p[agenttls.CertFileName] = []byte("not PEM") },
			want: "tls.crt: no PEM certificate found",
		},
		"key of another certificate": {
			edit: func(p map[string][]byte) { p[agenttls.KeyFileName] = otherKey },
			want: "tls.key does not match the certificate of " + workerID.String(),
		},
		"garbage key": {
			edit: func(p map[string][]byte) {
				p[agenttls.KeyFileName] = []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
			},
			want: `tls.key: the PRIVATE KEY block cannot be decoded`,
		},
		"two URI SANs": {
			edit: func(p map[string][]byte) {
				p[agenttls.CertFileName], p[agenttls.KeyFileName] = leafPEM(func(c *x509.Certificate) {
					c.URIs = append(c.URIs, &url.URL{Scheme: "spiffe", Host: "cluster.local", Path: "/x"})
				})
			},
			want: "certificate contains more than one URI SAN",
		},
		"no SPIFFE ID": {
			edit: func(p map[string][]byte) {
				p[agenttls.CertFileName], p[agenttls.KeyFileName] = leafPEM(func(c *x509.Certificate) { c.URIs = nil })
			},
			want: "certificate contains no URI SAN",
		},
		"CA as leaf": {
			edit: func(p map[string][]byte) {
				p[agenttls.CertFileName], p[agenttls.KeyFileName] = leafPEM(func(c *x509.Certificate) { c.IsCA = true })
			},
			want: "is a CA certificate",
		},
		"unknown policy version": {
			edit: func(p map[string][]byte) {
				p[agenttls.PolicyFileName] = policyWith(func(p *agenttls.Policy) { p.Version = "agentmesh.dev/policy/v3" })
			},
			want: `version "agentmesh.dev/policy/v3" is not supported`,
		},
		"policy of another identity": {
			edit: func(p map[string][]byte) {
				p[agenttls.PolicyFileName] = policyWith(func(p *agenttls.Policy) { p.SPIFFEID = plannerID.String() })
			},
			want: "policy.json is about " + plannerID.String() + " but the certificate is of " + workerID.String(),
		},
		"prefix without slash": {
			edit: func(p map[string][]byte) {
				p[agenttls.PolicyFileName] = policyWith(func(p *agenttls.Policy) {
					p.Ingress.Prefixes = []string{"spiffe://cluster.local/ns/agents"}
				})
			},
			want: `ingress: prefixes: "spiffe://cluster.local/ns/agents" does not end in "/"`,
		},
		"fingerprint missing from bundle": {
			edit: func(p map[string][]byte) {
				trust, err := agenttlstest.RenderTrust(agenttlstest.DefaultPolicy(workerID),
					map[spiffeid.TrustDomain][]*x509.Certificate{tdLocal: {ca.Root}, tdPartner: {partner.Root}})
				if err != nil {
					t.Fatal(err)
				}
				p[agenttls.PolicyFileName] = trust.PolicyJSON
			},
			want: "trust domain partner.example, which bundle.pem does not hold",
		},
		"certificate of a CA the bundle lacks": {
			edit: func(p map[string][]byte) {
				trust, err := agenttlstest.RenderTrust(agenttlstest.DefaultPolicy(workerID),
					map[spiffeid.TrustDomain][]*x509.Certificate{tdLocal: {otherCA.Root}})
				if err != nil {
					t.Fatal(err)
				}
				p[agenttls.BundleFileName], p[agenttls.PolicyFileName] = trust.BundlePEM, trust.PolicyJSON
			},
			want: "does not verify against the CAs of its own trust domain",
		},
		"private key in the bundle": {
			edit: func(p map[string][]byte) {
				p[agenttls.BundleFileName] = append(p[agenttls.BundleFileName], otherKey...)
			},
			want: `bundle.pem: PEM block 2 is of type "PRIVATE KEY"`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := map[string][]byte{}
			for k, v := range good {
				p[k] = v
			}
			tc.edit(p)
			dir := t.TempDir()
			for k, v := range p {
				if err := os.WriteFile(filepath.Join(dir, k), v, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := agenttls.Load(agenttls.FilesInDir(dir))
			if err == nil {
				t.Fatalf("Load succeeded, want an error containing %q", tc.want)
			}
			mustContain(t, err.Error(), tc.want)
			for _, key := range [][]byte{good[agenttls.KeyFileName], otherKey} {
				if strings.Contains(err.Error(), keyLine(t, key)) || strings.Contains(err.Error(), "BEGIN") {
					t.Errorf("the error quotes key material: %v", err)
				}
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	dir := t.TempDir()
	_, err := agenttls.Load(agenttls.FilesInDir(dir))
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of an empty directory: %v, want a not-exist error", err)
	}
	mustContain(t, err.Error(), filepath.Join(dir, "tls.crt"))
	if _, err := agenttls.Load(agenttls.Files{Cert: "x"}); err == nil {
		t.Error("Load with missing paths succeeded")
	}
}

func TestExpiredOwnCertificateLoadsWithWarning(t *testing.T) {
	ca := newCA(t, tdLocal)
	past := ca.Cert.NotBefore.Add(10 * time.Minute)
	worker := newIdentity(t, ca, workerID, nil, nil, agenttlstest.WithValidity(ca.Cert.NotBefore, past))
	var logs logBuffer
	src := worker.source(t, agenttls.WithLogger(logs.logger()))
	if src.ID() != workerID {
		t.Fatalf("ID %s", src.ID())
	}
	mustContain(t, logs.String(), "the certificate is not valid now", "serial="+serial(worker.leaf))
}

func TestSnapshotSources(t *testing.T) {
	ca := newCA(t, tdLocal)
	worker := newIdentity(t, ca, workerID, nil, nil)
	snap, err := agenttls.Load(agenttls.FilesInDir(worker.w.Dir()))
	if err != nil {
		t.Fatal(err)
	}
	svid, err := snap.GetX509SVID()
	if err != nil || svid.ID != workerID || !svid.Certificates[0].Equal(worker.leaf.Cert) {
		t.Fatalf("GetX509SVID() = %v, %v", svid, err)
	}
	b, err := snap.GetX509BundleForTrustDomain(tdLocal)
	if err != nil || len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(ca.Root) {
		t.Fatalf("bundle of cluster.local: %v, %v", b, err)
	}
	// A copy: changing it changes nothing.
	b.RemoveX509Authority(ca.Root)
	if b2, _ := snap.GetX509BundleForTrustDomain(tdLocal); len(b2.X509Authorities()) != 1 {
		t.Error("the Snapshot's bundle was modified through a returned copy")
	}
	if _, err := snap.GetX509BundleForTrustDomain(tdPartner); err == nil {
		t.Error("a bundle for an untrusted trust domain")
	}
	p := snap.Policy()
	p.Ingress.Prefixes[0] = "spiffe://evil/"
	if snap.Policy().Ingress.Prefixes[0] != "spiffe://cluster.local/" {
		t.Error("the Snapshot's policy was modified through a returned copy")
	}
}
