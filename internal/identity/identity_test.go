package identity

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
)

var (
	td  = spiffeid.RequireTrustDomainFromString("cluster.local")
	now = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
)

func newCA(t *testing.T, at time.Time, lifetime time.Duration) *ca.State {
	t.Helper()
	a, err := ca.Generate(ca.GenerateOptions{TrustDomain: td, Now: at, Lifetime: lifetime})
	if err != nil {
		t.Fatal(err)
	}
	data, err := ca.Encode(a)
	if err != nil {
		t.Fatal(err)
	}
	st, err := ca.Load(data, nil, td, at)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// identityObj builds an AgentIdentity for tests.
func identityObj(name string, mutate ...func(*mtlsv1alpha1.AgentIdentitySpec)) *mtlsv1alpha1.AgentIdentity {
	id := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "agents", UID: types.UID("uid-" + name)}}
	for _, m := range mutate {
		m(&id.Spec)
	}
	return id
}

func request(t *testing.T, id *mtlsv1alpha1.AgentIdentity) Request {
	t.Helper()
	r, err := NewRequest(td, id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func issue(t *testing.T, st *ca.State, r Request, at time.Time) *Issued {
	t.Helper()
	key, err := GenerateKey(r.KeyAlgorithm, r.KeySize, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	is, err := Issue(st, r, key, at, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return is
}

func TestNewRequestDefaults(t *testing.T) {
	r := request(t, identityObj("worker", func(s *mtlsv1alpha1.AgentIdentitySpec) {
		s.DNSNames = []string{"b.example", "a.example"}
	}))
	if r.SPIFFEID.String() != "spiffe://cluster.local/ns/agents/agent/worker" {
		t.Errorf("SPIFFE ID = %s", r.SPIFFEID)
	}
	if r.Duration != 24*time.Hour || r.KeyAlgorithm != mtlsv1alpha1.ECDSAKeyAlgorithm || r.KeySize != 256 {
		t.Errorf("defaults: duration %s, key %s/%d", r.Duration, r.KeyAlgorithm, r.KeySize)
	}
	if strings.Join(r.DNSNames, ",") != "a.example,b.example" {
		t.Errorf("DNS names not sorted: %v", r.DNSNames)
	}
	rsaReq := request(t, identityObj("w", func(s *mtlsv1alpha1.AgentIdentitySpec) {
		s.PrivateKey = &mtlsv1alpha1.PrivateKey{Algorithm: mtlsv1alpha1.RSAKeyAlgorithm}
	}))
	if rsaReq.KeySize != 2048 {
		t.Errorf("RSA default size = %d, want 2048", rsaReq.KeySize)
	}
}

func TestRequestHash(t *testing.T) {
	base := request(t, identityObj("w"))
	for name, m := range map[string]func(*mtlsv1alpha1.AgentIdentitySpec){
		"duration":  func(s *mtlsv1alpha1.AgentIdentitySpec) { s.Duration = &metav1.Duration{Duration: time.Hour} },
		"dns names": func(s *mtlsv1alpha1.AgentIdentitySpec) { s.DNSNames = []string{"w.example"} },
		"algorithm": func(s *mtlsv1alpha1.AgentIdentitySpec) {
			s.PrivateKey = &mtlsv1alpha1.PrivateKey{Algorithm: mtlsv1alpha1.Ed25519KeyAlgorithm}
		},
		"key size": func(s *mtlsv1alpha1.AgentIdentitySpec) {
			s.PrivateKey = &mtlsv1alpha1.PrivateKey{Algorithm: mtlsv1alpha1.ECDSAKeyAlgorithm, Size: 384}
		},
	} {
		if request(t, identityObj("w", m)).Hash() == base.Hash() {
			t.Errorf("changing %s does not change the hash", name)
		}
	}
	for name, m := range map[string]func(*mtlsv1alpha1.AgentIdentitySpec){
		"renewBefore": func(s *mtlsv1alpha1.AgentIdentitySpec) { s.RenewBefore = &metav1.Duration{Duration: time.Hour} },
		"explicit defaults": func(s *mtlsv1alpha1.AgentIdentitySpec) {
			s.PrivateKey = &mtlsv1alpha1.PrivateKey{Algorithm: "ECDSA", Size: 256}
		},
	} {
		if request(t, identityObj("w", m)).Hash() != base.Hash() {
			t.Errorf("changing %s changes the hash (and would reissue)", name)
		}
	}
}

func TestValidate(t *testing.T) {
	cases := map[string]struct {
		id   *mtlsv1alpha1.AgentIdentity
		want string
	}{
		"long name":       {identityObj(strings.Repeat("a", 64)), "metadata.name"},
		"bad secret name": {identityObj("a", func(s *mtlsv1alpha1.AgentIdentitySpec) { s.SecretName = "Bad_Name" }), "spec.secretName"},
		"duration short": {identityObj("a", func(s *mtlsv1alpha1.AgentIdentitySpec) { s.Duration = &metav1.Duration{Duration: time.Second} }),
			"spec.duration: Invalid value: \"1s\": must be between 1m and 720h"},
		"renewBefore too long": {identityObj("a", func(s *mtlsv1alpha1.AgentIdentitySpec) { s.RenewBefore = &metav1.Duration{Duration: 25 * time.Hour} }),
			"spec.renewBefore: Invalid value: \"25h0m0s\": must be shorter than duration"},
		"both renewals": {identityObj("a", func(s *mtlsv1alpha1.AgentIdentitySpec) {
			s.RenewBefore = &metav1.Duration{Duration: time.Hour}
			s.RenewBeforePercentage = ptr.To[int32](10)
		}), "set at most one of renewBefore and renewBeforePercentage"},
		"percentage": {identityObj("a", func(s *mtlsv1alpha1.AgentIdentitySpec) { s.RenewBeforePercentage = ptr.To[int32](0) }), "spec.renewBeforePercentage"},
		"RSA 1024": {identityObj("a", func(s *mtlsv1alpha1.AgentIdentitySpec) {
			s.PrivateKey = &mtlsv1alpha1.PrivateKey{Algorithm: "RSA", Size: 1024}
		}), "spec.privateKey.size"},
		"DSA":         {identityObj("a", func(s *mtlsv1alpha1.AgentIdentitySpec) { s.PrivateKey = &mtlsv1alpha1.PrivateKey{Algorithm: "DSA"} }), "spec.privateKey.algorithm: Unsupported value: \"DSA\""},
		"bad dns":     {identityObj("a", func(s *mtlsv1alpha1.AgentIdentitySpec) { s.DNSNames = []string{"under_score"} }), "spec.dnsNames[0]"},
		"dup dns":     {identityObj("a", func(s *mtlsv1alpha1.AgentIdentitySpec) { s.DNSNames = []string{"a.b", "a.b"} }), "spec.dnsNames[1]: Duplicate value"},
		"keyDelivery": {identityObj("a", func(s *mtlsv1alpha1.AgentIdentitySpec) { s.KeyDelivery = "File" }), "spec.keyDelivery"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := NewRequest(td, tc.id)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	if errs := Validate(identityObj("ok", func(s *mtlsv1alpha1.AgentIdentitySpec) {
		s.DNSNames = []string{"*.ok.example", "ok.example"}
		s.Duration = &metav1.Duration{Duration: time.Minute}
		s.RenewBefore = &metav1.Duration{Duration: 30 * time.Second}
	})); len(errs) != 0 {
		t.Errorf("valid identity rejected: %v", errs)
	}
}

func TestIssueIsAConformantSVID(t *testing.T) {
	st := newCA(t, now.Add(-24*time.Hour), 0)
	r := request(t, identityObj("worker", func(s *mtlsv1alpha1.AgentIdentitySpec) { s.DNSNames = []string{"worker.agents.svc"} }))
	is := issue(t, st, r, now)
	leaf := is.Leaf
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://cluster.local/ns/agents/agent/worker" {
		t.Errorf("URIs = %v", leaf.URIs)
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "worker.agents.svc" || len(leaf.IPAddresses) != 0 || len(leaf.EmailAddresses) != 0 {
		t.Errorf("SANs: dns %v ip %v email %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Error("leaf is a CA or lacks basic constraints")
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("key usage = %v, want digitalSignature only", leaf.KeyUsage)
	}
	if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("ext key usage = %v", leaf.ExtKeyUsage)
	}
	if !leaf.NotBefore.Equal(now.Add(-MaxBackdate)) || !leaf.NotAfter.Equal(now.Add(24*time.Hour)) {
		t.Errorf("validity %s..%s", leaf.NotBefore, leaf.NotAfter)
	}
	if leaf.Subject.String() != "" {
		t.Errorf("subject %q, want empty (the identity is the URI SAN)", leaf.Subject)
	}
	if !ca.KeyMatchesCertificate(is.Key, leaf) {
		t.Error("key does not match the certificate")
	}
	if len(is.Chain) != 0 {
		t.Errorf("chain of a self-signed root's leaf = %d certs, want none", len(is.Chain))
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: st.Pool(), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not verify to the bundle as a client: %v", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: st.Pool(), CurrentTime: now, DNSName: "worker.agents.svc"}); err != nil {
		t.Errorf("leaf does not verify to the bundle as a server: %v", err)
	}
	again := issue(t, st, r, now)
	if again.Leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0 || ca.KeyMatchesCertificate(is.Key, again.Leaf) {
		t.Error("a second issuance reused the serial or the key")
	}
}

func TestIssueValidityClamps(t *testing.T) {
	// A CA created 30s ago (and not backdated by more): the leaf never starts before it.
	young := newCA(t, now, 0)
	young.Active.Cert.NotBefore = now.Add(-30 * time.Second)
	r := request(t, identityObj("a"))
	if got := issue(t, young, r, now.Add(-30*time.Second).Add(10*time.Second)).Leaf.NotBefore; got.Before(now.Add(-30 * time.Second)) {
		t.Errorf("NotBefore %s is before the CA's", got)
	}
	// A short duration backdates by a tenth only.
	short := request(t, identityObj("a", func(s *mtlsv1alpha1.AgentIdentitySpec) { s.Duration = &metav1.Duration{Duration: time.Minute} }))
	st := newCA(t, now.Add(-time.Hour), 0)
	if got := issue(t, st, short, now).Leaf; !got.NotBefore.Equal(now.Add(-6*time.Second)) || !got.NotAfter.Equal(now.Add(time.Minute)) {
		t.Errorf("1m leaf valid %s..%s, want 6s backdate", got.NotBefore, got.NotAfter)
	}
	// A CA that expires before the requested lifetime cuts it short.
	ending := newCA(t, now.Add(-time.Hour), 3*time.Hour)
	if got := issue(t, ending, r, now).Leaf; !got.NotAfter.Equal(ending.Active.Cert.NotAfter) {
		t.Errorf("NotAfter %s, want the CA's %s", got.NotAfter, ending.Active.Cert.NotAfter)
	}
}

func TestKeyAlgorithms(t *testing.T) {
	st := newCA(t, now.Add(-time.Hour), 0)
	for _, tc := range []struct {
		alg  mtlsv1alpha1.PrivateKeyAlgorithm
		size int32
		ok   func(any) bool
	}{
		{"ECDSA", 0, func(k any) bool { p, ok := k.(*ecdsa.PublicKey); return ok && p.Curve == elliptic.P256() }},
		{"ECDSA", 384, func(k any) bool { p, ok := k.(*ecdsa.PublicKey); return ok && p.Curve == elliptic.P384() }},
		{"Ed25519", 0, func(k any) bool { _, ok := k.(ed25519.PublicKey); return ok }},
		{"RSA", 2048, func(k any) bool { p, ok := k.(*rsa.PublicKey); return ok && p.N.BitLen() == 2048 }},
	} {
		r := request(t, identityObj("a", func(s *mtlsv1alpha1.AgentIdentitySpec) {
			s.PrivateKey = &mtlsv1alpha1.PrivateKey{Algorithm: tc.alg, Size: tc.size}
		}))
		is := issue(t, st, r, now)
		if !tc.ok(is.Leaf.PublicKey) || !KeyMatchesRequest(is.Leaf.PublicKey, r) {
			t.Errorf("%s/%d: got public key %T", tc.alg, tc.size, is.Leaf.PublicKey)
		}
		data, err := is.SecretData(st.BundlePEM())
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(data[SecretKeyKey]), "-----BEGIN PRIVATE KEY-----") {
			t.Errorf("%s: tls.key is not PKCS#8 PEM", tc.alg)
		}
	}
}

func TestRenewalTime(t *testing.T) {
	nb := now
	na := now.Add(24 * time.Hour)
	d := func(x time.Duration) *time.Duration { return &x }
	cases := map[string]struct {
		renewBefore *time.Duration
		pct         *int32
		jitter      float64
		want        time.Time
	}{
		"default is half-way":           {nil, nil, 0, now.Add(12 * time.Hour)},
		"renewBefore 8h":                {d(8 * time.Hour), nil, 0, now.Add(16 * time.Hour)},
		"percentage 25":                 {nil, ptr.To[int32](25), 0, now.Add(18 * time.Hour)},
		"jitter brings it forward":      {nil, nil, 0.5, now.Add(12*time.Hour - 72*time.Minute)},
		"largest jitter is 10%":         {nil, nil, 0.999999, now.Add(12*time.Hour - 144*time.Minute)},
		"renewBefore beyond lifetime":   {d(30 * time.Hour), nil, 0, now.Add(12 * time.Hour)},
		"percentage 99 is clamped":      {nil, ptr.To[int32](99), 0, now.Add(24 * time.Hour / 5)},
		"never sooner than 1/5 in":      {d(23*time.Hour + 59*time.Minute), nil, 0.9, now.Add(24 * time.Hour / 5)},
		"renewBefore small plus jitter": {d(time.Hour), nil, 0.25, now.Add(23*time.Hour - 36*time.Minute)},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got := RenewalTime(nb, na, tc.renewBefore, tc.pct, tc.jitter)
			if !got.Equal(tc.want) {
				t.Errorf("renewal %s, want %s", got, tc.want)
			}
		})
	}
}

// TestJitterSpreadsRenewals: 1,000 identities created in the same second
// must not renew in lockstep.
func TestJitterSpreadsRenewals(t *testing.T) {
	const n = 1000
	lifetime := 24 * time.Hour
	var earliest, latest time.Time
	buckets := map[int64]int{}
	for i := range n {
		serial := strings.Repeat("0", i%7) + string(rune('a'+i%26))
		j := Jitter("uid-" + strings.Repeat("x", i%5) + "-" + string(rune(i)) + "/" + serial)
		r := RenewalTime(now, now.Add(lifetime), nil, nil, j)
		if i == 0 || r.Before(earliest) {
			earliest = r
		}
		if i == 0 || r.After(latest) {
			latest = r
		}
		buckets[r.Unix()/60]++
	}
	if spread := latest.Sub(earliest); spread < 2*time.Hour {
		t.Errorf("1,000 renewals spread over %s, want over 2h of the 2h24m jitter window", spread)
	}
	for minute, c := range buckets {
		if c > n/50 {
			t.Errorf("%d of %d renewals fall in the same minute (%d)", c, n, minute)
		}
	}
	if latest.After(now.Add(lifetime/2)) || earliest.Before(now.Add(lifetime/2-lifetime/10)) {
		t.Errorf("renewals %s..%s outside 40%%..50%% of the lifetime", earliest, latest)
	}
	if Jitter("same") != Jitter("same") {
		t.Error("jitter is not deterministic")
	}
}

func TestBackoff(t *testing.T) {
	want := []time.Duration{0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second}
	for n, w := range want {
		if got := Backoff(int32(n)); got != w {
			t.Errorf("Backoff(%d) = %s, want %s", n, got, w)
		}
	}
	if Backoff(9) != 256*time.Second || Backoff(10) != BackoffMax || Backoff(1000) != BackoffMax {
		t.Errorf("cap: Backoff(9)=%s Backoff(10)=%s Backoff(1000)=%s", Backoff(9), Backoff(10), Backoff(1000))
	}
}

func TestSecretDataHash(t *testing.T) {
	base := map[string][]byte{"tls.crt": []byte("C"), "tls.key": []byte("K"), "ca.crt": []byte("B")}
	h := SecretDataHash(base)
	if len(h) != 32 {
		t.Fatalf("hash %q: want 32 hex digits", h)
	}
	differ := map[string]map[string][]byte{
		"key changed":             {"tls.crt": []byte("C"), "tls.key": []byte("L"), "ca.crt": []byte("B")},
		"key removed":             {"tls.crt": []byte("C"), "ca.crt": []byte("B")},
		"key empty":               {"tls.crt": []byte("C"), "tls.key": {}, "ca.crt": []byte("B")},
		"a key added":             {"tls.crt": []byte("C"), "tls.key": []byte("K"), "ca.crt": []byte("B"), "x": {}},
		"bytes moved across keys": {"tls.crt": []byte("CK"), "tls.key": {}, "ca.crt": []byte("B")},
	}
	for name, d := range differ {
		if SecretDataHash(d) == h {
			t.Errorf("%s: same hash as the data written", name)
		}
	}
	if SecretDataHash(map[string][]byte{"a": []byte("bc")}) == SecretDataHash(map[string][]byte{"ab": []byte("c")}) {
		t.Error("a key/value boundary moved gives the same hash")
	}
	for range 20 { // map order must not matter
		if SecretDataHash(maps.Clone(base)) != h {
			t.Fatal("the hash depends on map order")
		}
	}
}
