package identity

import (
	"crypto/x509"
	"maps"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
)

func TestDecide(t *testing.T) {
	st := newCA(t, now.Add(-48*time.Hour), 0)
	oldCA := newCA(t, now.Add(-48*time.Hour), 0)
	worker := identityObj("worker")
	req := request(t, worker)
	planner := request(t, identityObj("planner"))

	render := func(st *ca.State, r Request, at time.Time) map[string][]byte {
		data, err := issue(t, st, r, at).SecretData(st.BundlePEM())
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	good := render(st, req, now)
	swap := func(data map[string][]byte, key string, v []byte) map[string][]byte {
		d := maps.Clone(data)
		d[key] = v
		return d
	}
	plannerData := render(st, planner, now)
	withDNS := request(t, identityObj("worker", func(s *mtlsv1alpha1.AgentIdentitySpec) { s.DNSNames = []string{"worker.agents.svc"} }))
	shorter := request(t, identityObj("worker", func(s *mtlsv1alpha1.AgentIdentitySpec) { s.Duration = &metav1.Duration{Duration: time.Hour} }))
	renewal := RenewalFor(req, "uid-worker", mustLeaf(t, good))

	cases := []struct {
		name    string
		req     Request
		obs     Observed
		at      time.Time
		reason  string
		message string
		stale   bool
	}{
		{name: "first issuance", req: req, obs: Observed{}, at: now,
			reason: mtlsv1alpha1.ReasonPending, message: "issuing the first certificate"},
		{name: "Secret deleted", req: req, obs: Observed{EverIssued: true}, at: now,
			reason: mtlsv1alpha1.ReasonSecretRepaired, message: "the Secret was missing"},
		{name: "tls.key removed", req: req, obs: Observed{Data: swap(good, SecretKeyKey, nil), SpecHash: req.Hash()}, at: now,
			reason: mtlsv1alpha1.ReasonSecretRepaired, message: "the Secret has no tls.key"},
		{name: "tls.key corrupted", req: req, obs: Observed{Data: swap(good, SecretKeyKey, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")), SpecHash: req.Hash()}, at: now,
			reason: mtlsv1alpha1.ReasonSecretRepaired, message: "tls.key cannot be parsed"},
		{name: "tls.crt corrupted", req: req, obs: Observed{Data: swap(good, SecretCertKey, []byte("garbage")), SpecHash: req.Hash()}, at: now,
			reason: mtlsv1alpha1.ReasonSecretRepaired, message: "tls.crt cannot be parsed"},
		{name: "key of another identity", req: req, obs: Observed{Data: swap(good, SecretKeyKey, plannerData[SecretKeyKey]), SpecHash: req.Hash()}, at: now,
			reason: mtlsv1alpha1.ReasonSecretRepaired, message: "tls.key does not match the certificate in tls.crt"},
		{name: "another identity's certificate and key", req: req, obs: Observed{Data: plannerData, SpecHash: req.Hash()}, at: now,
			reason: mtlsv1alpha1.ReasonSecretRepaired, message: "holds a certificate for [spiffe://cluster.local/ns/agents/agent/planner], not spiffe://cluster.local/ns/agents/agent/worker"},
		{name: "junk appended to the chain", req: req, obs: Observed{Data: swap(good, SecretCertKey, append(append([]byte{}, good[SecretCertKey]...), ca.EncodeCertificatesPEM(oldCA.Active.Cert)...)), SpecHash: req.Hash()}, at: now,
			reason: mtlsv1alpha1.ReasonSecretRepaired, message: "is not the CA's chain"},
		{name: "signed by a CA no longer trusted", req: req, obs: Observed{Data: render(oldCA, req, now), SpecHash: req.Hash()}, at: now,
			reason: mtlsv1alpha1.ReasonCAChanged},
		{name: "DNS names added", req: withDNS, obs: Observed{Data: good, SpecHash: req.Hash()}, at: now,
			reason: mtlsv1alpha1.ReasonSpecChanged},
		{name: "duration changed", req: shorter, obs: Observed{Data: good, SpecHash: req.Hash()}, at: now,
			reason: mtlsv1alpha1.ReasonSpecChanged},
		{name: "annotation right but certificate edited", req: withDNS, obs: Observed{Data: good, SpecHash: withDNS.Hash()}, at: now,
			reason: mtlsv1alpha1.ReasonSpecChanged, message: "DNS names or key type differ"},
		{name: "a second before renewal", req: req, obs: Observed{Data: good, SpecHash: req.Hash(), UID: "uid-worker"}, at: renewal.Add(-time.Second)},
		{name: "renewal time reached", req: req, obs: Observed{Data: good, SpecHash: req.Hash(), UID: "uid-worker"}, at: renewal,
			reason: mtlsv1alpha1.ReasonRenewing, message: "renewal time"},
		{name: "expired", req: req, obs: Observed{Data: good, SpecHash: req.Hash(), UID: "uid-worker"}, at: now.Add(25 * time.Hour),
			reason: mtlsv1alpha1.ReasonRenewing, message: "the certificate expired at"},
		{name: "healthy", req: req, obs: Observed{Data: good, SpecHash: req.Hash()}, at: now.Add(time.Hour)},
		// The cache keeps no tls.key; the data as written needs none.
		{name: "unchanged since written, without tls.key", req: req, obs: Observed{Data: swap(good, SecretKeyKey, nil), SpecHash: req.Hash(), Unchanged: true}, at: now.Add(time.Hour)},
		{name: "unchanged since written, renewal due", req: req, obs: Observed{Data: swap(good, SecretKeyKey, nil), SpecHash: req.Hash(), UID: "uid-worker", Unchanged: true}, at: renewal,
			reason: mtlsv1alpha1.ReasonRenewing, message: "renewal time"},
		{name: "unchanged since written, spec changed", req: withDNS, obs: Observed{Data: swap(good, SecretKeyKey, nil), SpecHash: req.Hash(), Unchanged: true}, at: now,
			reason: mtlsv1alpha1.ReasonSpecChanged},
		{name: "unchanged since written, another identity's certificate", req: req, obs: Observed{Data: swap(plannerData, SecretKeyKey, nil), SpecHash: req.Hash(), Unchanged: true}, at: now,
			reason: mtlsv1alpha1.ReasonSecretRepaired, message: "holds a certificate for"},
		{name: "only the bundle is stale", req: req, obs: Observed{Data: swap(good, SecretTrustKey, oldCA.BundlePEM()), SpecHash: req.Hash()}, at: now,
			stale: true},
		{name: "renew requested", req: req, obs: Observed{Data: good, SpecHash: req.Hash(), RenewRequest: "2026-12-04T18:00:00Z"}, at: now.Add(time.Hour),
			reason: mtlsv1alpha1.ReasonRenewRequested, message: "a renewal was requested (mtls.agentmesh.dev/renew=2026-12-04T18:00:00Z)"},
		{name: "renew request already served", req: req, obs: Observed{Data: good, SpecHash: req.Hash(), RenewRequest: "r1", RenewedFor: "r1"}, at: now.Add(time.Hour)},
		{name: "a new renew request after one was served", req: req, obs: Observed{Data: good, SpecHash: req.Hash(), RenewRequest: "r2", RenewedFor: "r1"}, at: now.Add(time.Hour),
			reason: mtlsv1alpha1.ReasonRenewRequested},
		{name: "renew requested and spec changed: the spec names the reason", req: withDNS, obs: Observed{Data: good, SpecHash: req.Hash(), RenewRequest: "r1"}, at: now,
			reason: mtlsv1alpha1.ReasonSpecChanged},
		{name: "renew requested and the Secret missing", req: req, obs: Observed{EverIssued: true, RenewRequest: "r1"}, at: now,
			reason: mtlsv1alpha1.ReasonSecretRepaired},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(tc.req, st, tc.obs, tc.at)
			if d.Reissue != (tc.reason != "") || d.Reason != tc.reason {
				t.Fatalf("decision: reissue=%v reason=%q (%s), want reason %q", d.Reissue, d.Reason, d.Message, tc.reason)
			}
			if !strings.Contains(d.Message, tc.message) {
				t.Errorf("message %q does not contain %q", d.Message, tc.message)
			}
			if strings.Contains(d.Message, "PRIVATE KEY") {
				t.Errorf("message quotes a key: %q", d.Message)
			}
			if !d.Reissue {
				if d.Current == nil || d.Current.Leaf == nil {
					t.Fatal("no current certificate for a healthy Secret")
				}
				if d.BundleStale != tc.stale {
					t.Errorf("bundle stale = %v, want %v", d.BundleStale, tc.stale)
				}
			}
		})
	}
}

func mustLeaf(t *testing.T, data map[string][]byte) *x509.Certificate {
	t.Helper()
	certs, err := ca.ParseCertificatesPEM(data[SecretCertKey])
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// TestDecideBackoffAndReadiness covers the rest of a plan: a failure's
// back-off holds every attempt off until it ends (a taken Secret name is
// looked at again within ConflictPollMax), and a reissue keeps the identity
// Ready only when the certificate in place is still fit for use.
func TestDecideBackoffAndReadiness(t *testing.T) {
	st := newCA(t, now.Add(-48*time.Hour), 0)
	req := request(t, identityObj("worker"))
	issued, err := issue(t, st, req, now).SecretData(st.BundlePEM())
	if err != nil {
		t.Fatal(err)
	}
	leaf := mustLeaf(t, issued)
	renewal := RenewalFor(req, "uid-worker", leaf)
	healthy := Observed{Data: issued, SpecHash: req.Hash(), UID: "uid-worker"}
	failed := func(attempts int32, reason string, at time.Time) Observed {
		o := healthy
		o.Failure = &Failure{Attempts: attempts, At: at, Reason: reason}
		return o
	}
	cases := []struct {
		name      string
		obs       Observed
		at        time.Time
		wait      time.Duration
		reissue   bool
		keepReady bool
		conflict  bool
	}{
		{name: "third failed renewal, 1s ago: 3s of the 4s back-off left",
			obs: failed(3, mtlsv1alpha1.ReasonIssuanceFailed, renewal.Add(-time.Second)), at: renewal, wait: 3 * time.Second, reissue: true, keepReady: true},
		{name: "back-off over: the renewal is tried",
			obs: failed(3, mtlsv1alpha1.ReasonIssuanceFailed, renewal.Add(-4*time.Second)), at: renewal, reissue: true, keepReady: true},
		{name: "tenth conflict: looked at again within 30s, not 512s",
			obs: func() Observed {
				o := failed(10, mtlsv1alpha1.ReasonSecretConflict, now.Add(-10*time.Second))
				o.Conflict = true
				return o
			}(),
			at: now, wait: 20 * time.Second, conflict: true},
		{name: "a failure, then the Secret is fine: no wait",
			obs: failed(3, mtlsv1alpha1.ReasonIssuanceFailed, now.Add(time.Hour-time.Second)), at: now.Add(time.Hour)},
		{name: "renewal due: Ready stays", obs: healthy, at: renewal, reissue: true, keepReady: true},
		{name: "expired: not Ready", obs: healthy, at: leaf.NotAfter, reissue: true},
		{name: "first issuance: not Ready", obs: Observed{}, at: now, reissue: true},
		{name: "renew requested: Ready stays", obs: func() Observed { o := healthy; o.RenewRequest = "r1"; return o }(), at: now, reissue: true, keepReady: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Decide(req, st, tc.obs, tc.at)
			if p.Wait != tc.wait || p.Reissue != tc.reissue || p.KeepReady != tc.keepReady || p.Conflict != tc.conflict {
				t.Fatalf("plan: wait %s reissue %v keepReady %v conflict %v (%s), want wait %s reissue %v keepReady %v conflict %v",
					p.Wait, p.Reissue, p.KeepReady, p.Conflict, p.Reason, tc.wait, tc.reissue, tc.keepReady, tc.conflict)
			}
			if (p.KeepReady || (!p.Reissue && !p.Conflict)) && p.Current.CASerial != st.Active.SerialHex() {
				t.Errorf("signer serial %q, want the active CA's %s", p.Current.CASerial, st.Active.SerialHex())
			}
		})
	}
}
