package webhookcert

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/agentmesh/agentmesh/internal/ca"
)

// TestPlanRollsTheCAOver walks a webhook CA through its life with a fake
// clock: created, next CA published at two thirds, promoted after the
// propagation time, old CA dropped once expired. The bundle always holds
// the CA that signs, and a new CA is in the bundle before it signs.
func TestPlanRollsTheCAOver(t *testing.T) {
	p := Policy{CALifetime: 300 * time.Hour, ServingLifetime: 30 * time.Hour, Propagation: 10 * time.Minute}
	t0 := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	var data map[string][]byte
	var ann map[string]string
	step := func(at time.Time, wantChanged bool) *State {
		t.Helper()
		st, changed, err := Plan(data, ann, at, p)
		if err != nil {
			t.Fatal(err)
		}
		if changed != wantChanged {
			t.Fatalf("at %s: changed=%v, want %v", at.Sub(t0), changed, wantChanged)
		}
		if !containsCert(st.Bundle, st.Current.Cert) {
			t.Fatalf("at %s: the signing CA is not in the bundle", at.Sub(t0))
		}
		if changed {
			data, ann, err = Encode(st)
			if err != nil {
				t.Fatal(err)
			}
		}
		return st
	}
	first := step(t0, true)
	if !first.Current.Cert.IsCA || len(first.Bundle) != 1 || first.Next != nil {
		t.Fatalf("new state %+v", first)
	}
	step(t0.Add(time.Hour), false)
	// A third of the lifetime left: the next CA joins the bundle, not signing.
	at := first.Current.Cert.NotAfter.Add(-100 * time.Hour)
	st := step(at, true)
	if st.Next == nil || len(st.Bundle) != 2 || !st.Current.Cert.Equal(first.Current.Cert) || !containsCert(st.Bundle, st.Next.Cert) {
		t.Fatalf("next CA not published: %+v", st)
	}
	next := st.Next.Cert
	step(at.Add(9*time.Minute), false)
	// Propagated: the next CA signs, the old one stays in the bundle.
	st = step(at.Add(10*time.Minute), true)
	if !st.Current.Cert.Equal(next) || st.Next != nil || len(st.Bundle) != 2 {
		t.Fatalf("not promoted: %+v", st)
	}
	// The old CA expires: it leaves the bundle.
	st = step(first.Current.Cert.NotAfter, true)
	if len(st.Bundle) != 1 || !st.Bundle[0].Equal(next) {
		t.Fatalf("bundle after the old CA expired: %d certificates", len(st.Bundle))
	}
}

func TestServingRenewal(t *testing.T) {
	now := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	st, _, err := Plan(nil, nil, now, DefaultPolicy)
	if err != nil {
		t.Fatal(err)
	}
	hosts := []string{"agentmesh-webhook.agentmesh-system.svc", "127.0.0.1"}
	s, err := IssueServing(st.Current, hosts, now, DefaultPolicy.ServingLifetime)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(st.Current.Cert)
	for _, h := range hosts {
		opts := x509.VerifyOptions{Roots: pool, CurrentTime: now}
		if h == "127.0.0.1" {
			if len(s.Leaf.IPAddresses) != 1 || s.Leaf.IPAddresses[0].String() != h {
				t.Errorf("IP SANs %v", s.Leaf.IPAddresses)
			}
			continue
		}
		opts.DNSName = h
		if _, err := s.Leaf.Verify(opts); err != nil {
			t.Errorf("serving certificate does not verify for %s: %v", h, err)
		}
	}
	lt := DefaultPolicy.ServingLifetime
	for name, tc := range map[string]struct {
		at    time.Time
		hosts []string
		by    *ca.Authority
		want  bool
	}{
		"fresh":                    {now.Add(time.Hour), hosts, st.Current, false},
		"just before a third left": {now.Add(lt*2/3 - time.Minute), hosts, st.Current, false},
		"a third left":             {now.Add(lt * 2 / 3), hosts, st.Current, true},
		"hosts changed":            {now.Add(time.Hour), hosts[:1], st.Current, true},
	} {
		if got := s.NeedsRenewal(tc.by, tc.hosts, tc.at, lt); got != tc.want {
			t.Errorf("%s: NeedsRenewal=%v, want %v", name, got, tc.want)
		}
	}
	other, _, _ := Plan(nil, nil, now, DefaultPolicy)
	if !s.NeedsRenewal(other.Current, hosts, now, lt) {
		t.Error("a certificate of another CA does not need renewal")
	}
	var nilServing *Serving
	if !nilServing.NeedsRenewal(st.Current, hosts, now, lt) {
		t.Error("no certificate does not need one")
	}
}

func containsCert(list []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range list {
		if x.Equal(c) {
			return true
		}
	}
	return false
}
