package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"maps"
	"net/url"
	"strings"
	"testing"
	"time"
)

// secretStore is the CA Secret as the API server would keep it: the
// rotation only ever reads it back, so "restarting" is loading it again.
type secretStore struct {
	t    *testing.T
	data map[string][]byte
	ann  map[string]string
	pol  RotationPolicy
}

func newManagedCA(t *testing.T, at time.Time, lifetime time.Duration) *secretStore {
	t.Helper()
	a, err := Generate(GenerateOptions{TrustDomain: td, Now: at, Lifetime: lifetime})
	if err != nil {
		t.Fatal(err)
	}
	data, err := Encode(a)
	if err != nil {
		t.Fatal(err)
	}
	return &secretStore{t: t, data: data, ann: map[string]string{AnnotationManaged: "true"},
		pol: RotationPolicy{RotateAt: 0.5, Grace: 2 * time.Minute, Lifetime: lifetime}}
}

func (s *secretStore) load(at time.Time) *State {
	s.t.Helper()
	st, err := Load(s.data, s.ann, td, at)
	if err != nil {
		s.t.Fatalf("loading the CA Secret at %s: %v", at, err)
	}
	return st
}

// step runs one rotation step from a freshly loaded state (as a restarted
// operator would), persists it, and checks that running the same step
// again changes nothing: no step is ever repeated.
func (s *secretStore) step(at time.Time, p Progress) (*State, []Event) {
	s.t.Helper()
	st := s.load(at)
	out, err := PlanRotation(st, s.data, s.ann, p, at, s.pol)
	if err != nil {
		s.t.Fatal(err)
	}
	if !out.Changed {
		return st, nil
	}
	s.data, s.ann = out.Data, out.Annotations
	again, err := PlanRotation(s.load(at), s.data, s.ann, p, at, s.pol)
	if err != nil {
		s.t.Fatal(err)
	}
	if again.Changed && eventReasons(again.Events)[0] == eventReasons(out.Events)[0] {
		s.t.Fatalf("at %s the same step ran twice: %v", at, again.Events)
	}
	return s.load(at), out.Events
}

func leafOf(t *testing.T, st *State, at time.Time) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := NewSerial(rand.Reader)
	leaf, err := st.Active.Sign(&x509.Certificate{
		SerialNumber: serial, NotBefore: at, NotAfter: at.Add(time.Hour),
		URIs: []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/a/agent/b"}},
	}, key.Public(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

func eventReasons(evs []Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Reason)
	}
	return out
}

func TestScheduledRotationWalksEveryPhase(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newManagedCA(t, t0, 100*time.Hour)
	first := s.load(t0)
	oldLeaf := leafOf(t, first, t0)
	all := Progress{Bundles: 20, BundlesCurrent: 20, Identities: 10, IdentitiesOnActive: 10}

	// Stable until half the lifetime (the CA is backdated by an hour).
	if st, evs := s.step(t0.Add(48*time.Hour), all); st.Rotation.Phase != PhaseStable || evs != nil {
		t.Fatalf("rotated early: %s %v", st.Rotation.Phase, evs)
	}
	due := t0.Add(49*time.Hour + 30*time.Minute)
	st, evs := s.step(due, all)
	if st.Rotation.Phase != PhasePropagating || st.Next == nil || st.Rotation.Reason != RotationScheduled || len(st.Anchors) != 2 {
		t.Fatalf("at the schedule: phase %s next %v anchors %d", st.Rotation.Phase, st.Next != nil, len(st.Anchors))
	}
	if !st.Active.Cert.Equal(first.Active.Cert) || eventReasons(evs)[0] != "RotationStarted" {
		t.Fatalf("the next CA signs before it propagated, or no event: %v", evs)
	}
	next := st.Next.Cert
	if st.Next.Cert.Subject.String() == first.Active.Cert.Subject.String() {
		t.Error("the next CA has the active CA's subject")
	}

	// Not every bundle holds the next CA: wait, however long it takes.
	behind := all
	behind.BundlesCurrent = 19
	if st, _ := s.step(due.Add(time.Hour), behind); st.Rotation.Phase != PhasePropagating || st.Rotation.PropagatedAt != nil {
		t.Fatalf("moved on with a stale bundle: %+v", st.Rotation)
	}
	// Every bundle: the grace period starts.
	propagated := due.Add(2 * time.Hour)
	st, evs = s.step(propagated, all)
	if st.Rotation.PropagatedAt == nil || eventReasons(evs)[0] != "BundlesPropagated" || !st.Active.Cert.Equal(first.Active.Cert) {
		t.Fatalf("after propagation: %+v %v", st.Rotation, evs)
	}
	if st, _ := s.step(propagated.Add(time.Minute), all); !st.Active.Cert.Equal(first.Active.Cert) {
		t.Fatal("activated inside the grace period")
	}
	// After the grace: the next CA signs, the old one is retired but trusted.
	activated := propagated.Add(2 * time.Minute)
	st, evs = s.step(activated, Progress{Bundles: 20, BundlesCurrent: 20, Identities: 10, IdentitiesOnActive: 0})
	if st.Rotation.Phase != PhaseReissuing || !st.Active.Cert.Equal(next) || st.Next != nil || len(st.Retired) != 1 ||
		!st.Retired[0].Equal(first.Active.Cert) || eventReasons(evs)[0] != "CAActivated" || s.ann[AnnotationManaged] != "true" {
		t.Fatalf("activation: phase %s, retired %d, events %v", st.Rotation.Phase, len(st.Retired), evs)
	}
	if !st.Trusts(oldLeaf, nil) || st.SignedByActive(oldLeaf) {
		t.Error("a leaf of the old CA must stay trusted, and be due for reissue")
	}
	if newLeaf := leafOf(t, st, activated); !st.SignedByActive(newLeaf) || !st.Trusts(newLeaf, nil) {
		t.Error("a new leaf is not signed by the new CA")
	}
	// Some identities are still on the old CA: it stays.
	if st, _ := s.step(activated.Add(time.Minute), Progress{Identities: 10, IdentitiesOnActive: 9, OthersExpireAt: activated.Add(time.Hour)}); len(st.Retired) != 1 {
		t.Fatal("the old CA left the bundle before the last leaf moved")
	}
	// Every identity moved: the old CA leaves the bundles once the kubelet
	// had the grace period to deliver the new certificates.
	reissued := activated.Add(2 * time.Minute)
	st, evs = s.step(reissued, Progress{Identities: 10, IdentitiesOnActive: 10})
	if st.Rotation.Phase != PhaseReissuing || st.Rotation.ReissuedAt == nil || len(st.Retired) != 1 || eventReasons(evs)[0] != "IdentitiesReissued" {
		t.Fatalf("every identity reissued: phase %s, retired %d, events %v", st.Rotation.Phase, len(st.Retired), evs)
	}
	if st, _ := s.step(reissued.Add(2*time.Minute-time.Second), Progress{Identities: 10, IdentitiesOnActive: 10}); len(st.Retired) != 1 {
		t.Fatal("the old CA left the bundles inside the grace period")
	}
	st, evs = s.step(reissued.Add(2*time.Minute), Progress{Identities: 10, IdentitiesOnActive: 10})
	if st.Rotation.Phase != PhaseStable || len(st.Anchors) != 1 || !st.Anchors[0].Equal(next) || len(st.Retired) != 0 || eventReasons(evs)[0] != "CARetired" {
		t.Fatalf("retirement: phase %s anchors %d events %v", st.Rotation.Phase, len(st.Anchors), evs)
	}
	if st.Trusts(oldLeaf, nil) {
		t.Error("a leaf of the retired CA is still trusted")
	}
	// And the next rotation is scheduled half-way through the new CA's life.
	if due, ok := NextRotation(st, true, s.pol); !ok || !due.Equal(next.NotBefore.Add(next.NotAfter.Sub(next.NotBefore)/2)) {
		t.Errorf("next rotation at %s", due)
	}
}

func TestRetiredCALeavesWhenItsLastLeafExpires(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newManagedCA(t, t0, 100*time.Hour)
	s.ann[AnnotationRotate] = RotateNow
	all := Progress{Bundles: 2, BundlesCurrent: 2, Identities: 1, IdentitiesOnActive: 1}
	st, _ := s.step(t0, all)
	if st.Rotation.Reason != RotationManual || s.ann[AnnotationRotate] != "" {
		t.Fatalf("manual trigger: %+v, annotation %q", st.Rotation, s.ann[AnnotationRotate])
	}
	s.step(t0.Add(time.Minute), all)
	s.step(t0.Add(4*time.Minute), all)
	stuck := Progress{Identities: 1, IdentitiesOnActive: 0, OthersExpireAt: t0.Add(5 * time.Hour)}
	if st, _ := s.step(t0.Add(4*time.Hour), stuck); st.Rotation.Phase != PhaseReissuing {
		t.Fatal("retired before the last leaf expired")
	}
	if st, _ := s.step(t0.Add(5*time.Hour), stuck); st.Rotation.Phase != PhaseStable || len(st.Anchors) != 1 {
		t.Fatalf("not retired once the last leaf expired: %s", st.Rotation.Phase)
	}
}

func TestEmergencyRotation(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newManagedCA(t, t0, 100*time.Hour)
	compromised := s.load(t0).Active.Cert
	s.ann[AnnotationRotate] = RotateCompromised
	all := Progress{Bundles: 2, BundlesCurrent: 2, Identities: 1, IdentitiesOnActive: 1}
	st, _ := s.step(t0, all)
	if !st.Rotation.Compromised || st.Rotation.Reason != RotationCompromised || st.Rotation.Previous != SerialHex(compromised.SerialNumber) {
		t.Fatalf("emergency: %+v", st.Rotation)
	}
	s.step(t0.Add(time.Second), all)
	st, _ = s.step(t0.Add(3*time.Minute), Progress{Identities: 1})
	if st.Rotation.Phase != PhaseReissuing || !st.Rotation.Compromised {
		t.Fatalf("after activation: %+v", st.Rotation)
	}
	st, _ = s.step(t0.Add(4*time.Minute), Progress{Identities: 1, IdentitiesOnActive: 1})
	if containsCert(st.Anchors, compromised) {
		t.Fatal("the compromised CA is still trusted after every identity was reissued")
	}
}

func TestEscalationDuringARotation(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newManagedCA(t, t0, 100*time.Hour)
	s.ann[AnnotationRotate] = RotateNow
	all := Progress{Bundles: 2, BundlesCurrent: 2, Identities: 1, IdentitiesOnActive: 1}
	s.step(t0, all)
	s.ann[AnnotationRotate] = RotateCompromised
	st, evs := s.step(t0.Add(time.Second), all)
	if !st.Rotation.Compromised || eventReasons(evs)[0] != "RotationEscalated" || s.ann[AnnotationRotate] != "" {
		t.Fatalf("escalation: %+v %v", st.Rotation, evs)
	}
}

// TestMigrationToAUserCA: the user puts an intermediate of their PKI in
// next.crt/next.key with its root in next-ca.crt; the same overlap moves the
// cluster onto it, and the operator stops rotating it on schedule.
func TestMigrationToAUserCA(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newManagedCA(t, t0, 100*time.Hour)
	old := s.load(t0).Active.Cert
	root := newTestCA(t, caOpts{isCA: true, keyUsage: x509.KeyUsageCertSign, notBefore: t0.Add(-time.Hour), notAfter: t0.Add(1000 * time.Hour)})
	mid := newTestCA(t, caOpts{parent: root, isCA: true, keyUsage: x509.KeyUsageCertSign, notBefore: t0.Add(-time.Hour), notAfter: t0.Add(500 * time.Hour)})
	data := maps.Clone(s.data)
	data[NextCertKey] = EncodeCertificatesPEM(mid.cert)
	data[NextKeyKey] = keyPEM(t, mid.key)
	data[NextTrustKey] = EncodeCertificatesPEM(root.cert)
	s.data = data

	all := Progress{Bundles: 2, BundlesCurrent: 2, Identities: 1, IdentitiesOnActive: 1}
	st, _ := s.step(t0, all)
	if st.Rotation.Reason != RotationMigration || st.Rotation.NextManaged || !containsCert(st.Anchors, root.cert) {
		t.Fatalf("migration start: %+v, anchors %d", st.Rotation, len(st.Anchors))
	}
	s.step(t0.Add(time.Second), all)
	st, _ = s.step(t0.Add(3*time.Minute), Progress{Identities: 1})
	if !st.Active.Cert.Equal(mid.cert) || s.ann[AnnotationManaged] != "" || !containsCert(st.Retired, old) {
		t.Fatalf("after activation: active %s, managed %q", st.Active.Cert.Subject, s.ann[AnnotationManaged])
	}
	s.step(t0.Add(4*time.Minute), Progress{Identities: 1, IdentitiesOnActive: 1})
	st, _ = s.step(t0.Add(6*time.Minute), Progress{Identities: 1, IdentitiesOnActive: 1})
	if len(st.Anchors) != 1 || !st.Anchors[0].Equal(root.cert) {
		t.Fatalf("anchors after the migration and the grace period: %d", len(st.Anchors))
	}
	if _, ok := NextRotation(st, s.ann[AnnotationManaged] == "true", s.pol); ok {
		t.Error("a user's CA is rotated on schedule")
	}
}

func TestManualRotationOfAUserCAIsRefused(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newManagedCA(t, t0, 100*time.Hour)
	delete(s.ann, AnnotationManaged)
	s.ann[AnnotationRotate] = RotateNow
	st, evs := s.step(t0, Progress{})
	if st.Rotation.Phase != PhaseStable || st.Next != nil || eventReasons(evs)[0] != "RotationRefused" || s.ann[AnnotationRotate] != "" {
		t.Fatalf("user CA rotated by hand: %+v %v", st.Rotation, evs)
	}
}

// TestEmergencyRotationHasADeadline: a bundle that never takes the next CA
// and a leaf that is never reissued hold an emergency rotation only until
// its deadline; a scheduled rotation has none and keeps waiting.
func TestEmergencyRotationHasADeadline(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newManagedCA(t, t0, 100*time.Hour)
	s.pol.EmergencyDeadline = 10 * time.Minute
	compromised := s.load(t0).Active.Cert
	s.ann[AnnotationRotate] = RotateCompromised
	// One bundle is never updated, one leaf (a PodCertificate the kubelet
	// refreshes late) stays on the compromised CA for 30 days.
	stuck := Progress{Bundles: 2, BundlesCurrent: 1, Identities: 2, IdentitiesOnActive: 0, OthersExpireAt: t0.Add(30 * 24 * time.Hour)}
	st, _ := s.step(t0, stuck)
	if st.Rotation.DeadlineAt == nil || !st.Rotation.DeadlineAt.Equal(t0.Add(10*time.Minute)) ||
		st.Rotation.ActivateBy == nil || !st.Rotation.ActivateBy.Equal(t0.Add(5*time.Minute)) {
		t.Fatalf("activate by %v, deadline %v, want %s and %s", st.Rotation.ActivateBy, st.Rotation.DeadlineAt, t0.Add(5*time.Minute), t0.Add(10*time.Minute))
	}
	if st, _ := s.step(t0.Add(4*time.Minute), stuck); st.Rotation.Phase != PhasePropagating || !st.Active.Cert.Equal(compromised) {
		t.Fatalf("before half-way the next CA must wait for the bundles: %s", st.Rotation.Phase)
	}
	st, evs := s.step(t0.Add(5*time.Minute), stuck)
	if st.Rotation.Phase != PhaseReissuing || st.Active.Cert.Equal(compromised) {
		t.Fatalf("half-way the next CA must sign: %s", st.Rotation.Phase)
	}
	if len(evs) == 0 || evs[0].Reason != "EmergencyDeadlineReached" || !evs[0].Warning || !strings.Contains(evs[0].Message, "1 of 2 trust bundles") {
		t.Fatalf("events at activation: %+v", evs)
	}
	if st, _ := s.step(t0.Add(9*time.Minute), stuck); !containsCert(st.Anchors, compromised) || st.Rotation.Phase != PhaseReissuing {
		t.Fatal("the compromised CA left the bundles before the deadline")
	}
	st, evs = s.step(t0.Add(10*time.Minute), Progress{Bundles: 2, BundlesCurrent: 1, Identities: 2, IdentitiesOnActive: 1, OthersExpireAt: t0.Add(30 * 24 * time.Hour)})
	if st.Rotation.Phase != PhaseStable || containsCert(st.Anchors, compromised) {
		t.Fatalf("past the deadline the compromised CA must leave the bundles: %s, %d anchors", st.Rotation.Phase, len(st.Anchors))
	}
	if len(evs) != 2 || evs[0].Reason != "EmergencyDeadlineReached" || !strings.Contains(evs[0].Message, "1 of 2 identities are still on it") || evs[1].Reason != "CARetired" {
		t.Fatalf("events at retirement: %+v", evs)
	}

	// A scheduled rotation is not bounded: it waits for the last leaf.
	s = newManagedCA(t, t0, 100*time.Hour)
	s.pol.EmergencyDeadline = 10 * time.Minute
	s.ann[AnnotationRotate] = RotateNow
	if st, _ := s.step(t0, stuck); st.Rotation.DeadlineAt != nil {
		t.Fatalf("a manual rotation got a deadline: %v", st.Rotation.DeadlineAt)
	}
	if st, _ := s.step(t0.Add(time.Hour), stuck); st.Rotation.Phase != PhasePropagating {
		t.Fatalf("a manual rotation went on without a bundle: %s", st.Rotation.Phase)
	}
}

// TestEscalationSetsTheDeadline: rotate-ca=compromised during a scheduled
// rotation bounds it from that moment.
func TestEscalationSetsTheDeadline(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newManagedCA(t, t0, 100*time.Hour)
	s.ann[AnnotationRotate] = RotateNow
	s.step(t0, Progress{Bundles: 1})
	s.ann[AnnotationRotate] = RotateCompromised
	st, evs := s.step(t0.Add(time.Hour), Progress{Bundles: 1})
	want := t0.Add(time.Hour + DefaultEmergencyDeadline)
	if st.Rotation.DeadlineAt == nil || !st.Rotation.DeadlineAt.Equal(want) || !strings.Contains(evs[0].Message, want.Format(time.RFC3339)) {
		t.Fatalf("deadline %v (events %+v), want %s", st.Rotation.DeadlineAt, evs, want)
	}
}
