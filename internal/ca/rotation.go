package ca

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

// Annotations of the CA Secret.
const (
	// AnnotationRotation holds the rotation state as JSON; the operator
	// writes it.
	AnnotationRotation = "mtls.agentmesh.dev/ca-rotation"
	// AnnotationRotate is the operator-facing trigger: "now" starts a
	// rotation, "compromised" starts an emergency rotation away from a CA
	// that must stop being trusted as soon as every identity is reissued.
	// The operator removes it when it starts the rotation.
	AnnotationRotate = "mtls.agentmesh.dev/rotate-ca"
	// AnnotationManaged marks a CA the operator created, which it also
	// rotates on schedule; a user's CA is only rotated when the user
	// supplies the next one (next.crt, next.key) or asks.
	AnnotationManaged = "mtls.agentmesh.dev/ca-managed"
)

// Values of AnnotationRotate.
const (
	RotateNow         = "now"
	RotateCompromised = "compromised"
)

// Phase of a CA rotation.
type Phase string

const (
	// PhaseStable means one CA signs and no other is trusted.
	PhaseStable Phase = "Stable"
	// PhasePropagating means the next CA is in every trust bundle being written;
	// the active CA still signs.
	PhasePropagating Phase = "Propagating"
	// PhaseReissuing means the next CA signs; leaves of the previous one are
	// reissued at a bounded rate, and it stays trusted until none is left.
	PhaseReissuing Phase = "Reissuing"
)

// Reasons a rotation started.
const (
	RotationScheduled   = "Scheduled"
	RotationManual      = "Manual"
	RotationCompromised = "Compromised"
	RotationMigration   = "Migration"
)

// Rotation is the state of a CA rotation, kept in AnnotationRotation.
type Rotation struct {
	Phase Phase `json:"phase"`
	// Reason the rotation started.
	Reason string `json:"reason,omitempty"`
	// Compromised: the previous CA must stop being trusted as soon as
	// every identity is reissued, and reissuing is not rate-limited.
	Compromised bool `json:"compromised,omitempty"`
	// ActivateBy and DeadlineAt bound a Compromised rotation: by
	// ActivateBy (half-way) the next CA signs even if some bundles do not
	// hold it, and at DeadlineAt the previous one leaves the bundles
	// whatever is left on it. Both are set when the rotation becomes
	// Compromised, from the policy's EmergencyDeadline, so a restarted
	// operator keeps them.
	ActivateBy *time.Time `json:"activateBy,omitempty"`
	DeadlineAt *time.Time `json:"deadlineAt,omitempty"`
	// NextManaged: the next CA was created by the operator.
	NextManaged bool `json:"nextManaged,omitempty"`
	// PreparedAt: the next CA was published.
	PreparedAt *time.Time `json:"preparedAt,omitempty"`
	// PropagatedAt: every trust bundle was first seen holding the next CA.
	PropagatedAt *time.Time `json:"propagatedAt,omitempty"`
	// ActivatedAt: the next CA started signing.
	ActivatedAt *time.Time `json:"activatedAt,omitempty"`
	// ReissuedAt: every identity was first seen on the active CA; the
	// previous CA leaves the bundles Grace later (at once when Compromised).
	ReissuedAt *time.Time `json:"reissuedAt,omitempty"`
	// Previous is the serial of the CA the rotation moves away from.
	Previous string `json:"previous,omitempty"`
	// Active is the serial of the signing CA when the operator last wrote
	// this state; a different one means tls.crt was replaced in place.
	Active string `json:"active,omitempty"`
}

// ParseRotation reads the rotation state; no annotation means Stable.
func ParseRotation(annotations map[string]string) (Rotation, error) {
	r := Rotation{Phase: PhaseStable}
	raw := annotations[AnnotationRotation]
	if raw == "" {
		return r, nil
	}
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		return Rotation{}, err
	}
	switch r.Phase {
	case PhaseStable, PhasePropagating, PhaseReissuing:
	default:
		return Rotation{}, fmt.Errorf("unknown phase %q", r.Phase)
	}
	return r, nil
}

// RotationPolicy is the schedule of CA rotations.
type RotationPolicy struct {
	// RotateAt is the share of a managed CA's lifetime after which the next
	// CA is prepared (0.5: half-way); 0 turns scheduled rotation off.
	RotateAt float64
	// Grace is how long the kubelet is given to update the files in running
	// Pods, twice per rotation: after every trust bundle holds the next CA,
	// before the next CA signs; and after every identity is reissued under
	// it, before the previous CA leaves the bundles (so a Pod whose bundle
	// is refreshed first still accepts a peer whose new certificate the
	// kubelet has not delivered yet). An emergency rotation skips the second.
	Grace time.Duration
	// Lifetime of a CA the operator creates.
	Lifetime time.Duration
	// EmergencyDeadline bounds an emergency (compromised) rotation, from the
	// moment it is asked for: half-way, the next CA signs even if some
	// bundles do not hold it yet; at the end, the compromised CA leaves the
	// bundles even if some leaves are still on it (those are refused until
	// they are reissued, or refreshed by the kubelet). 0 means
	// DefaultEmergencyDeadline.
	EmergencyDeadline time.Duration
}

// DefaultEmergencyDeadline is the bound of an emergency rotation when the
// policy names none: long enough for the kubelet to deliver the next CA to
// every Pod and the operator to reissue every Secret (two graces and a few
// minutes of issuing at 10,000 identities), short enough that a
// compromised CA is trusted for minutes, not for the lifetime of its
// longest-lived leaf.
const DefaultEmergencyDeadline = 15 * time.Minute

func (p RotationPolicy) emergencyDeadline() time.Duration {
	if p.EmergencyDeadline > 0 {
		return p.EmergencyDeadline
	}
	return DefaultEmergencyDeadline
}

// DefaultRotationPolicy prepares the next CA half-way through the active
// one's life and gives the kubelet two minutes (its default sync period is
// one) to update mounted bundles.
var DefaultRotationPolicy = RotationPolicy{RotateAt: 0.5, Grace: 2 * time.Minute, Lifetime: DefaultLifetime, EmergencyDeadline: DefaultEmergencyDeadline}

// Progress is what the cluster says about a rotation; the CA status
// ConfigMap shows it as is.
type Progress struct {
	// Bundles counts the trust bundles written for identities (the ca.crt
	// of identity Secrets and the bundle of trust ConfigMaps);
	// BundlesCurrent, those that hold exactly the current anchors.
	BundlesCurrent int `json:"bundlesCurrent"`
	Bundles        int `json:"bundles"`
	// Identities counts identities with a certificate in place;
	// IdentitiesOnActive, those whose certificate the active CA signed.
	IdentitiesOnActive int `json:"identitiesOnActive"`
	Identities         int `json:"identities"`
	// OthersExpireAt is the latest expiry among certificates the active CA
	// did not sign.
	OthersExpireAt time.Time `json:"-"`
	// Stranded counts identities that a rotation cannot bring along (their
	// spec is invalid, or their Secret name is held by a Secret agentmesh
	// did not write): they count neither as identities nor as bundles, so
	// they never hold a rotation open. StrandedIdentities names the first
	// MaxStrandedNames of them as "namespace/name (reason)".
	Stranded           int      `json:"stranded,omitempty"`
	StrandedIdentities []string `json:"strandedIdentities,omitempty"`
}

// MaxStrandedNames is how many stranded identities Progress names.
const MaxStrandedNames = 20

// Event is something a rotation step did, for an Event on the CA Secret.
type Event struct {
	Reason  string
	Message string
	// Warning: something was left behind (an Event of type Warning).
	Warning bool
}

// Step is the outcome of one rotation step: the new Secret data and
// annotations when Changed.
type Step struct {
	Changed     bool
	Data        map[string][]byte
	Annotations map[string]string
	Events      []Event
}

// NextRotation is when a Stable, managed CA is due to rotate.
func NextRotation(st *State, managed bool, p RotationPolicy) (time.Time, bool) {
	if !managed || st.Rotation.Phase != PhaseStable || p.RotateAt <= 0 || p.RotateAt >= 1 {
		return time.Time{}, false
	}
	c := st.Active.Cert
	return c.NotBefore.Add(time.Duration(float64(c.NotAfter.Sub(c.NotBefore)) * p.RotateAt)), true
}

// PlanRotation moves a CA rotation one step, from the loaded state st (and
// the raw Secret it came from), what the cluster shows, and the time:
//
//	Stable      --trigger, schedule or a user's next CA--> Propagating (next CA published)
//	Propagating --every bundle current, then Grace-->      Reissuing   (next CA signs)
//	Reissuing   --every leaf on the active CA, then Grace,
//	              or every other leaf expired-->          Stable      (old anchors dropped)
//
// An emergency rotation skips the second grace and is bounded
// (RotationPolicy.EmergencyDeadline): half-way the next CA signs, at the
// end the compromised one is dropped, whatever is left behind.
//
// Every step is one write of the CA Secret and depends only on the Secret
// and the cluster, so an operator restarted in any phase continues where it
// was, neither losing nor repeating a step.
func PlanRotation(st *State, data map[string][]byte, annotations map[string]string, p Progress, now time.Time, pol RotationPolicy) (Step, error) {
	r := &rotationPlan{
		st: st, trigger: annotations[AnnotationRotate], managed: annotations[AnnotationManaged] == "true",
		progress: p, now: now, pol: pol, rot: st.Rotation,
		out: Step{Data: maps.Clone(data), Annotations: maps.Clone(annotations)},
	}
	if r.out.Annotations == nil {
		r.out.Annotations = map[string]string{}
	}
	var (
		o   outcome
		err error
	)
	switch r.rot.Phase {
	case PhaseStable:
		o, err = r.start()
	case PhasePropagating:
		o = r.propagate()
	case PhaseReissuing:
		o = r.retire()
	}
	switch {
	case err != nil:
		return Step{}, err
	case o == wait:
		return Step{}, nil
	case o == final:
		r.out.Changed = true
		return r.out, nil
	}
	if certs, err := ParseCertificatesPEM(r.out.Data[SecretCertKey]); err == nil {
		r.rot.Active = SerialHex(certs[0].SerialNumber)
	}
	raw, err := json.Marshal(r.rot)
	if err != nil {
		return Step{}, err
	}
	r.out.Annotations[AnnotationRotation] = string(raw)
	r.out.Changed = true
	return r.out, nil
}

// rotationPlan is one PlanRotation: its inputs, the Secret it writes (out)
// and the rotation record it moves (rot).
type rotationPlan struct {
	st       *State
	trigger  string
	managed  bool
	progress Progress
	now      time.Time
	pol      RotationPolicy
	out      Step
	rot      Rotation
}

// outcome is what a phase's step decided.
type outcome int

const (
	// advance writes the Secret with the moved rotation record.
	advance outcome = iota
	// wait writes nothing: the phase's condition does not hold yet.
	wait
	// final writes the Secret as the step left it, the record unchanged.
	final
)

func (r *rotationPlan) event(reason, message string) {
	r.out.Events = append(r.out.Events, Event{Reason: reason, Message: message})
}

func (r *rotationPlan) warn(reason, message string) {
	r.out.Events = append(r.out.Events, Event{Reason: reason, Message: message, Warning: true})
}

// startedBy is why a Stable CA starts rotating, or "".
func (r *rotationPlan) startedBy() string {
	switch {
	case r.trigger == RotateCompromised:
		return RotationCompromised
	case r.trigger != "":
		return RotationManual
	case r.st.Next != nil:
		return RotationMigration
	}
	if due, ok := NextRotation(r.st, r.managed, r.pol); ok && !r.now.Before(due) {
		return RotationScheduled
	}
	return ""
}

// start leaves Stable: it publishes the next CA (the user's, or one it
// generates) beside the active one in every trust bundle.
func (r *rotationPlan) start() (outcome, error) {
	st := r.st
	reason := r.startedBy()
	if reason == "" {
		return wait, nil
	}
	if reason == RotationManual && !r.managed && st.Next == nil {
		// Replacing a user's CA (an enterprise intermediate) with a
		// self-signed one is not what "rotate" should mean.
		delete(r.out.Annotations, AnnotationRotate)
		r.event(mtlsv1alpha1.EventRotationRefused, "the CA was supplied by a user: "+
			"put the CA to rotate to in next.crt and next.key (and its root in next-ca.crt) instead; "+
			"rotate-ca=compromised replaces it with a self-signed CA")
		return final, nil
	}
	next := st.Next
	r.rot = Rotation{Phase: PhasePropagating, Reason: reason, Compromised: reason == RotationCompromised,
		PreparedAt: ptrTime(r.now), Previous: st.Active.SerialHex()}
	if r.rot.Compromised {
		r.bound(r.now)
	}
	if next == nil {
		a, err := Generate(GenerateOptions{TrustDomain: st.TrustDomain, Lifetime: r.pol.Lifetime, Now: r.now, Rand: rand.Reader})
		if err != nil {
			return wait, err
		}
		key, err := EncodePrivateKeyPEM(a.Signer)
		if err != nil {
			return wait, err
		}
		r.out.Data[NextCertKey], r.out.Data[NextKeyKey] = EncodeCertificatesPEM(a.Cert), key
		next = a
		r.rot.NextManaged = true
	}
	r.out.Data[SecretTrustKey] = EncodeCertificatesPEM(union(st.Anchors, anchorsOf(r.out.Data, next))...)
	delete(r.out.Annotations, AnnotationRotate)
	r.event(mtlsv1alpha1.EventRotationStarted, fmt.Sprintf(
		"CA rotation started (%s): the next CA %s, valid until %s, is added to every trust bundle; CA %s signs until every bundle holds it",
		reason, next.SerialHex(), next.Cert.NotAfter.UTC().Format(time.RFC3339), st.Active.SerialHex()))
	return advance, nil
}

// escalate turns the rotation in progress into the retirement of a
// compromised CA when rotate-ca=compromised arrives during it.
func (r *rotationPlan) escalate(message string) bool {
	if r.trigger != RotateCompromised || r.rot.Compromised {
		return false
	}
	r.rot.Compromised, r.rot.Reason = true, RotationCompromised
	r.bound(r.now)
	delete(r.out.Annotations, AnnotationRotate)
	r.event(mtlsv1alpha1.EventRotationEscalated, message+", by "+r.rot.DeadlineAt.Format(time.RFC3339)+" at the latest")
	return true
}

// bound sets the deadlines of a compromised rotation asked for at t.
func (r *rotationPlan) bound(t time.Time) {
	d := r.pol.emergencyDeadline()
	r.rot.ActivateBy, r.rot.DeadlineAt = ptrTime(t.Add(d/2)), ptrTime(t.Add(d))
}

// overdue says whether a compromised rotation has passed the deadline
// (ActivateBy when activating, else DeadlineAt). A rotation recorded
// before deadlines existed is bounded from when it was prepared.
func (r *rotationPlan) overdue(activating bool) bool {
	if !r.rot.Compromised {
		return false
	}
	if r.rot.DeadlineAt == nil || r.rot.ActivateBy == nil {
		from := r.now
		if r.rot.PreparedAt != nil {
			from = *r.rot.PreparedAt
		}
		r.bound(from)
	}
	at := r.rot.DeadlineAt
	if activating {
		at = r.rot.ActivateBy
	}
	return !r.now.Before(*at)
}

// propagate waits for every bundle to hold the next CA and then for the
// grace, and makes the next CA the signer.
func (r *rotationPlan) propagate() outcome {
	st, p := r.st, r.progress
	if r.escalate("the rotation in progress now retires a compromised CA") {
		return advance
	}
	if st.Next == nil {
		// The next CA was removed by hand: abandon the rotation.
		r.rot = Rotation{Phase: PhaseStable}
		r.event(mtlsv1alpha1.EventRotationAbandoned, "next.crt was removed: the rotation is abandoned")
		return advance
	}
	if r.overdue(true) {
		if p.BundlesCurrent < p.Bundles {
			r.warn(mtlsv1alpha1.EventEmergencyDeadlineReached, fmt.Sprintf(
				"the emergency rotation could not wait past %s: CA %s signs now although %d of %d trust bundles do not hold it yet; "+
					"peers reading those refuse the new certificates until their bundle is updated; CA %s leaves the bundles at %s",
				r.rot.ActivateBy.Format(time.RFC3339), st.Next.SerialHex(), p.Bundles-p.BundlesCurrent, p.Bundles,
				st.Active.SerialHex(), r.rot.DeadlineAt.Format(time.RFC3339)))
		}
		return r.activate()
	}
	if p.BundlesCurrent < p.Bundles {
		return wait
	}
	if r.rot.PropagatedAt == nil {
		r.rot.PropagatedAt = ptrTime(r.now)
		r.event(mtlsv1alpha1.EventBundlesPropagated, fmt.Sprintf(
			"all %d trust bundles hold the next CA %s; it signs after %s for the kubelet to update mounted files", p.Bundles, st.Next.SerialHex(), r.pol.Grace))
		return advance
	}
	if r.now.Before(r.rot.PropagatedAt.Add(r.pol.Grace)) {
		return wait
	}
	return r.activate()
}

// activate makes the next CA the signer; the previous one stays trusted.
func (r *rotationPlan) activate() outcome {
	st, p := r.st, r.progress
	data := r.out.Data
	nextAnchors := anchorsOf(data, st.Next)
	data[SecretCertKey], data[SecretKeyKey] = data[NextCertKey], data[NextKeyKey]
	data[SecretTrustKey] = EncodeCertificatesPEM(union(st.Anchors, nextAnchors)...)
	delete(data, NextCertKey)
	delete(data, NextKeyKey)
	delete(data, NextTrustKey)
	if r.rot.NextManaged {
		r.out.Annotations[AnnotationManaged] = "true"
	} else {
		delete(r.out.Annotations, AnnotationManaged)
	}
	r.rot.Phase, r.rot.ActivatedAt = PhaseReissuing, ptrTime(r.now)
	r.event(mtlsv1alpha1.EventCAActivated, fmt.Sprintf(
		"CA %s now signs; the %d identities on CA %s are reissued, which stays trusted until none is left", st.Next.SerialHex(), p.Identities, st.Active.SerialHex()))
	return advance
}

// retire waits for every identity to be on the active CA (then the grace),
// or for every other leaf to expire, and drops the retired anchors. A
// compromised CA skips the grace.
func (r *rotationPlan) retire() outcome {
	st, p := r.st, r.progress
	if r.escalate("the rotation in progress now retires a compromised CA: reissuing is no longer rate-limited") {
		return advance
	}
	expired := !p.OthersExpireAt.IsZero() && !r.now.Before(p.OthersExpireAt)
	if r.overdue(false) && !expired && p.IdentitiesOnActive < p.Identities {
		r.warn(mtlsv1alpha1.EventEmergencyDeadlineReached, fmt.Sprintf(
			"the emergency rotation's deadline %s has passed: %s leaves the trust bundles although %d of %d identities are still on it; "+
				"their certificates are refused until they are reissued (Secret delivery: now) or refreshed by the kubelet (PodCertificate delivery: at their beginRefreshAt)",
			r.rot.DeadlineAt.Format(time.RFC3339), plural(retiredSerials(st), "retired anchor"), p.Identities-p.IdentitiesOnActive, p.Identities))
		expired = true
	}
	if !expired && p.IdentitiesOnActive < p.Identities {
		return wait
	}
	if !expired && !r.rot.Compromised {
		if r.rot.ReissuedAt == nil {
			r.rot.ReissuedAt = ptrTime(r.now)
			r.event(mtlsv1alpha1.EventIdentitiesReissued, fmt.Sprintf(
				"every identity is on CA %s; the %s leaves the trust bundles after %s, for the kubelet to deliver the new certificates",
				st.Active.SerialHex(), plural(retiredSerials(st), "retired anchor"), r.pol.Grace))
			return advance
		}
		if r.now.Before(r.rot.ReissuedAt.Add(r.pol.Grace)) {
			return wait
		}
	}
	keep := slices.DeleteFunc(slices.Clone(st.Anchors), func(c *x509.Certificate) bool { return containsCert(st.Retired, c) })
	r.out.Data[SecretTrustKey] = EncodeCertificatesPEM(keep...)
	r.event(mtlsv1alpha1.EventCARetired, fmt.Sprintf(
		"CA rotation done: every identity is on CA %s; %s removed from the trust bundles",
		st.Active.SerialHex(), plural(retiredSerials(st), "retired anchor")))
	r.rot = Rotation{Phase: PhaseStable}
	return advance
}

// retiredSerials are the serials of the anchors a rotation retires.
func retiredSerials(st *State) []string {
	serials := make([]string, 0, len(st.Retired))
	for _, c := range st.Retired {
		serials = append(serials, SerialHex(c.SerialNumber))
	}
	return serials
}

// AdoptReplacement handles a signing CA replaced in place (tls.crt and
// tls.key overwritten) instead of through next.crt: the previous anchors,
// which the operator still knows from before, are kept trusted and the
// rotation continues in Reissuing, so the identities move to the new CA at
// the bounded rate and the previous CA leaves the bundles only once none
// is left on it.
func AdoptReplacement(st, previous *State, data map[string][]byte, annotations map[string]string, now time.Time) (Step, error) {
	out := Step{Data: maps.Clone(data), Annotations: maps.Clone(annotations)}
	if out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	out.Data[SecretTrustKey] = EncodeCertificatesPEM(union(st.Anchors, previous.Anchors)...)
	rot := Rotation{Phase: PhaseReissuing, Reason: "Replaced", ActivatedAt: ptrTime(now),
		Previous: previous.Active.SerialHex(), Active: st.Active.SerialHex()}
	raw, err := json.Marshal(rot)
	if err != nil {
		return Step{}, err
	}
	out.Annotations[AnnotationRotation] = string(raw)
	out.Changed = true
	out.Events = []Event{{Reason: mtlsv1alpha1.EventCAReplaced, Message: fmt.Sprintf(
		"tls.crt was replaced in place (CA %s by %s): CA %s stays trusted until every identity is reissued. "+
			"Put the next CA in next.crt and next.key to rotate without a gap", previous.Active.SerialHex(), st.Active.SerialHex(), previous.Active.SerialHex())}}
	return out, nil
}

// anchorsOf are the anchors the next CA chains to: next-ca.crt when given,
// else the last certificate of next.crt (as Load reads them).
func anchorsOf(data map[string][]byte, a *Authority) []*x509.Certificate {
	if b := data[NextTrustKey]; len(b) > 0 {
		if certs, err := ParseBundlePEM(b); err == nil {
			return certs
		}
	}
	if certs, err := ParseCertificatesPEM(data[NextCertKey]); err == nil {
		return certs[len(certs)-1:]
	}
	return []*x509.Certificate{a.Cert}
}

func union(a, b []*x509.Certificate) []*x509.Certificate {
	out := slices.Clone(a)
	for _, c := range b {
		if !containsCert(out, c) {
			out = append(out, c)
		}
	}
	return out
}

func plural(serials []string, noun string) string {
	if len(serials) == 0 {
		return "no " + noun
	}
	if len(serials) == 1 {
		return noun + " " + serials[0]
	}
	return noun + "s " + strings.Join(serials, ", ")
}

func ptrTime(t time.Time) *time.Time {
	t = t.UTC().Truncate(time.Second)
	return &t
}
