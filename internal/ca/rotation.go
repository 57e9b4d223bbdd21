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
}

// DefaultRotationPolicy prepares the next CA half-way through the active
// one's life and gives the kubelet two minutes (its default sync period is
// one) to update mounted bundles.
var DefaultRotationPolicy = RotationPolicy{RotateAt: 0.5, Grace: 2 * time.Minute, Lifetime: DefaultLifetime}

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
}

// Event is something a rotation step did, for an Event on the CA Secret.
type Event struct {
	Reason  string
	Message string
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
// Every step is one write of the CA Secret and depends only on the Secret
// and the cluster, so an operator restarted in any phase continues where it
// was, neither losing nor repeating a step.
func PlanRotation(st *State, data map[string][]byte, annotations map[string]string, p Progress, now time.Time, pol RotationPolicy) (Step, error) {
	rot := st.Rotation
	trigger := annotations[AnnotationRotate]
	managed := annotations[AnnotationManaged] == "true"
	out := Step{Data: maps.Clone(data), Annotations: map[string]string{}}
	for k, v := range annotations {
		out.Annotations[k] = v
	}
	startedBy := func() string {
		switch {
		case trigger == RotateCompromised:
			return RotationCompromised
		case trigger != "":
			return RotationManual
		case st.Next != nil:
			return RotationMigration
		}
		if due, ok := NextRotation(st, managed, pol); ok && !now.Before(due) {
			return RotationScheduled
		}
		return ""
	}

	switch rot.Phase {
	case PhaseStable:
		reason := startedBy()
		if reason == "" {
			return Step{}, nil
		}
		if reason == RotationManual && !managed && st.Next == nil {
			// Replacing a user's CA (an enterprise intermediate) with a
			// self-signed one is not what "rotate" should mean.
			delete(out.Annotations, AnnotationRotate)
			out.Events = append(out.Events, Event{Reason: mtlsv1alpha1.EventRotationRefused, Message: "the CA was supplied by a user: " +
				"put the CA to rotate to in next.crt and next.key (and its root in next-ca.crt) instead; " +
				"rotate-ca=compromised replaces it with a self-signed CA"})
			out.Changed = true
			return out, nil
		}
		next := st.Next
		rot = Rotation{Phase: PhasePropagating, Reason: reason, Compromised: reason == RotationCompromised,
			PreparedAt: ptrTime(now), Previous: st.Active.SerialHex()}
		if next == nil {
			a, err := Generate(GenerateOptions{TrustDomain: st.TrustDomain, Lifetime: pol.Lifetime, Now: now, Rand: rand.Reader})
			if err != nil {
				return Step{}, err
			}
			key, err := EncodePrivateKeyPEM(a.Signer)
			if err != nil {
				return Step{}, err
			}
			out.Data[NextCertKey], out.Data[NextKeyKey] = EncodeCertificatesPEM(a.Cert), key
			next = a
			rot.NextManaged = true
		}
		out.Data[SecretTrustKey] = EncodeCertificatesPEM(union(st.Anchors, anchorsOf(out.Data, next))...)
		delete(out.Annotations, AnnotationRotate)
		out.Events = append(out.Events, Event{Reason: mtlsv1alpha1.EventRotationStarted, Message: fmt.Sprintf(
			"CA rotation started (%s): the next CA %s, valid until %s, is added to every trust bundle; CA %s signs until every bundle holds it",
			reason, next.SerialHex(), next.Cert.NotAfter.UTC().Format(time.RFC3339), st.Active.SerialHex())})

	case PhasePropagating:
		if trigger == RotateCompromised && !rot.Compromised {
			rot.Compromised, rot.Reason = true, RotationCompromised
			delete(out.Annotations, AnnotationRotate)
			out.Events = append(out.Events, Event{Reason: mtlsv1alpha1.EventRotationEscalated, Message: "the rotation in progress now retires a compromised CA"})
			break
		}
		if st.Next == nil {
			// The next CA was removed by hand: abandon the rotation.
			rot = Rotation{Phase: PhaseStable}
			out.Events = append(out.Events, Event{Reason: mtlsv1alpha1.EventRotationAbandoned, Message: "next.crt was removed: the rotation is abandoned"})
			break
		}
		if p.BundlesCurrent < p.Bundles {
			return Step{}, nil
		}
		if rot.PropagatedAt == nil {
			rot.PropagatedAt = ptrTime(now)
			out.Events = append(out.Events, Event{Reason: mtlsv1alpha1.EventBundlesPropagated, Message: fmt.Sprintf(
				"all %d trust bundles hold the next CA %s; it signs after %s for the kubelet to update mounted files", p.Bundles, st.Next.SerialHex(), pol.Grace)})
			break
		}
		if now.Before(rot.PropagatedAt.Add(pol.Grace)) {
			return Step{}, nil
		}
		nextAnchors := anchorsOf(out.Data, st.Next)
		out.Data[SecretCertKey], out.Data[SecretKeyKey] = out.Data[NextCertKey], out.Data[NextKeyKey]
		out.Data[SecretTrustKey] = EncodeCertificatesPEM(union(st.Anchors, nextAnchors)...)
		delete(out.Data, NextCertKey)
		delete(out.Data, NextKeyKey)
		delete(out.Data, NextTrustKey)
		if rot.NextManaged {
			out.Annotations[AnnotationManaged] = "true"
		} else {
			delete(out.Annotations, AnnotationManaged)
		}
		rot.Phase, rot.ActivatedAt = PhaseReissuing, ptrTime(now)
		out.Events = append(out.Events, Event{Reason: mtlsv1alpha1.EventCAActivated, Message: fmt.Sprintf(
			"CA %s now signs; the %d identities on CA %s are reissued, which stays trusted until none is left", st.Next.SerialHex(), p.Identities, st.Active.SerialHex())})

	case PhaseReissuing:
		if trigger == RotateCompromised && !rot.Compromised {
			rot.Compromised, rot.Reason = true, RotationCompromised
			delete(out.Annotations, AnnotationRotate)
			out.Events = append(out.Events, Event{Reason: mtlsv1alpha1.EventRotationEscalated, Message: "the rotation in progress now retires a compromised CA: reissuing is no longer rate-limited"})
			break
		}
		expired := !p.OthersExpireAt.IsZero() && !now.Before(p.OthersExpireAt)
		if !expired && p.IdentitiesOnActive < p.Identities {
			return Step{}, nil
		}
		if !expired && !rot.Compromised {
			if rot.ReissuedAt == nil {
				rot.ReissuedAt = ptrTime(now)
				out.Events = append(out.Events, Event{Reason: mtlsv1alpha1.EventIdentitiesReissued, Message: fmt.Sprintf(
					"every identity is on CA %s; the %s leaves the trust bundles after %s, for the kubelet to deliver the new certificates",
					st.Active.SerialHex(), plural(retiredSerials(st), "retired anchor"), pol.Grace)})
				break
			}
			if now.Before(rot.ReissuedAt.Add(pol.Grace)) {
				return Step{}, nil
			}
		}
		keep := slices.DeleteFunc(slices.Clone(st.Anchors), func(c *x509.Certificate) bool { return containsCert(st.Retired, c) })
		out.Data[SecretTrustKey] = EncodeCertificatesPEM(keep...)
		out.Events = append(out.Events, Event{Reason: mtlsv1alpha1.EventCARetired, Message: fmt.Sprintf(
			"CA rotation done: every identity is on CA %s; %s removed from the trust bundles",
			st.Active.SerialHex(), plural(retiredSerials(st), "retired anchor"))})
		rot = Rotation{Phase: PhaseStable}
	}

	if certs, err := ParseCertificatesPEM(out.Data[SecretCertKey]); err == nil {
		rot.Active = SerialHex(certs[0].SerialNumber)
	}
	raw, err := json.Marshal(rot)
	if err != nil {
		return Step{}, err
	}
	out.Annotations[AnnotationRotation] = string(raw)
	out.Changed = true
	return out, nil
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
		if certs, err := ParseCertificatesPEM(b); err == nil {
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
