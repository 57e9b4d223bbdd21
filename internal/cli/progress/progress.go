// Package progress says how far a renewal or a CA rotation that
// kubectl-agentmesh asked for has come, from what the operator reports: the
// identity's annotations and status, and agentmesh-ca-status. It is pure;
// the commands poll and print its messages.
package progress

import (
	"fmt"
	"io"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/cli/output"
)

// State of a request.
const (
	StateRequested = "Requested"
	StateWaiting   = "Waiting"
	StateDone      = "Done"
	StateFailed    = "Failed"
)

// Renewal is the state of one renew request.
type Renewal struct {
	Identity string `json:"identity"`
	Request  string `json:"request"`
	State    string `json:"state"`
	Message  string `json:"message"`
	// PreviousSerial is the serial before the request; Serial the one now.
	PreviousSerial string     `json:"previousSerial,omitempty"`
	Serial         string     `json:"serial,omitempty"`
	NotAfter       *time.Time `json:"notAfter,omitempty"`
}

// terminal reasons: a renewal cannot happen until the user acts.
var terminal = map[string]bool{
	mtlsv1alpha1.ReasonInvalidSpec:    true,
	mtlsv1alpha1.ReasonSecretConflict: true,
}

// RenewalOf judges a renew request from the identity as it is now.
func RenewalOf(id *mtlsv1alpha1.AgentIdentity, request, previousSerial string) Renewal {
	r := Renewal{Identity: id.Namespace + "/" + id.Name, Request: request, PreviousSerial: previousSerial, Serial: id.Status.SerialNumber}
	if t := id.Status.NotAfter; t != nil {
		na := t.UTC()
		r.NotAfter = &na
	}
	ready := meta.FindStatusCondition(id.Status.Conditions, mtlsv1alpha1.ConditionReady)
	issuing := meta.FindStatusCondition(id.Status.Conditions, mtlsv1alpha1.ConditionIssuing)
	pending := id.Annotations[mtlsv1alpha1.AnnotationRenew]
	switch {
	case pending != "" && pending != request:
		r.State, r.Message = StateFailed, fmt.Sprintf("another renew request (%s) replaced this one", pending)
	case ready != nil && terminal[ready.Reason]:
		r.State, r.Message = StateFailed, fmt.Sprintf("not Ready (%s): %s", ready.Reason, ready.Message)
	case pending != "":
		r.State, r.Message = StateWaiting, "waiting for the operator to reissue"
		if issuing != nil && issuing.Status == metav1.ConditionTrue {
			r.Message = fmt.Sprintf("issuing (%s): %s", issuing.Reason, issuing.Message)
		}
	case id.Status.SerialNumber == previousSerial:
		r.State, r.Message = StateWaiting, "the request was removed; waiting for the new serial in the status"
	case ready == nil || ready.Status != metav1.ConditionTrue:
		r.State, r.Message = StateWaiting, fmt.Sprintf("reissued as %s; waiting for Ready", id.Status.SerialNumber)
	default:
		r.State = StateDone
		r.Message = fmt.Sprintf("reissued: serial %s replaces %s", id.Status.SerialNumber, previousSerial)
		if r.NotAfter != nil {
			r.Message += ", valid until " + r.NotAfter.Format(time.RFC3339)
		}
	}
	return r
}

// WriteHuman prints the renewal.
func (r Renewal) WriteHuman(w io.Writer) error {
	t := &output.Table{Header: []string{"identity", "state", "previous serial", "serial", "message"}}
	t.Add(r.Identity, r.State, r.PreviousSerial, r.Serial, r.Message)
	return t.Write(w)
}

// CA is what agentmesh-ca-status says, reduced to what a rotation's
// progress needs.
type CA struct {
	Phase              string `json:"phase"`
	Reason             string `json:"reason,omitempty"`
	Active             string `json:"active"`
	Next               string `json:"next,omitempty"`
	Retired            int    `json:"retired"`
	BundlesCurrent     int    `json:"bundlesCurrent"`
	Bundles            int    `json:"bundles"`
	IdentitiesOnActive int    `json:"identitiesOnActive"`
	Identities         int    `json:"identities"`
	Stranded           int    `json:"stranded,omitempty"`
}

// Rotation is the state of a requested CA rotation.
type Rotation struct {
	Trigger  string `json:"trigger"`
	State    string `json:"state"`
	Message  string `json:"message"`
	Previous string `json:"previousCA"`
	Active   string `json:"activeCA"`
	Phase    string `json:"phase"`
}

// RotationOf judges a rotation requested with trigger (now or
// compromised) while previous was the active CA. pending says the
// annotation is still on the CA Secret (the operator has not taken it);
// refused is the message of a RotationRefused Event since the request.
func RotationOf(trigger, previous string, c CA, pending bool, refused string) Rotation {
	r := Rotation{Trigger: trigger, Previous: previous, Active: c.Active, Phase: c.Phase}
	switch {
	case refused != "":
		r.State, r.Message = StateFailed, "the operator refused the rotation: "+refused
	case pending:
		r.State, r.Message = StateWaiting, "waiting for the operator to start the rotation"
	case c.Phase == "Propagating":
		r.State, r.Message = StateWaiting, fmt.Sprintf("Propagating: the next CA %s is in %d of %d trust bundles", c.Next, c.BundlesCurrent, c.Bundles)
	case c.Phase == "Reissuing":
		r.State, r.Message = StateWaiting, fmt.Sprintf("Reissuing: %d of %d identities on the new CA %s", c.IdentitiesOnActive, c.Identities, c.Active)
		if c.IdentitiesOnActive+c.Stranded >= c.Identities {
			r.Message += "; waiting for the previous CA to leave the bundles"
		}
		if c.Stranded > 0 {
			r.Message += fmt.Sprintf(" (%d stranded: see agentmesh-ca-status)", c.Stranded)
		}
	case c.Active == previous:
		r.State, r.Message = StateWaiting, "the rotation has not started yet"
	case c.Retired > 0:
		r.State, r.Message = StateWaiting, "Stable: the previous CA is leaving the bundles"
	default:
		r.State, r.Message = StateDone, fmt.Sprintf("rotated: CA %s replaces %s; %d of %d identities on it", c.Active, previous, c.IdentitiesOnActive, c.Identities)
	}
	return r
}

// WriteHuman prints the rotation.
func (r Rotation) WriteHuman(w io.Writer) error {
	t := &output.Table{Header: []string{"trigger", "state", "phase", "previous ca", "active ca", "message"}}
	t.Add(r.Trigger, r.State, r.Phase, r.Previous, r.Active, r.Message)
	return t.Write(w)
}
