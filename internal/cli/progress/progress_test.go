package progress

import (
	"bytes"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/cli/golden"
)

func identity(serial string, annotation string, ready metav1.ConditionStatus, reason string) *mtlsv1alpha1.AgentIdentity {
	id := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: "worker"}}
	if annotation != "" {
		id.Annotations = map[string]string{mtlsv1alpha1.AnnotationRenew: annotation}
	}
	na := metav1.NewTime(time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC))
	id.Status.SerialNumber, id.Status.NotAfter = serial, &na
	id.Status.Conditions = []metav1.Condition{{Type: "Ready", Status: ready, Reason: reason, Message: "m"}}
	return id
}

func TestRenewalOf(t *testing.T) {
	tests := map[string]struct {
		id    *mtlsv1alpha1.AgentIdentity
		state string
		msg   string
	}{
		"pending":                {id: identity("aa", "r1", "True", "Issued"), state: StateWaiting, msg: "waiting for the operator"},
		"removed, status behind": {id: identity("aa", "", "True", "Issued"), state: StateWaiting, msg: "waiting for the new serial"},
		"reissued":               {id: identity("bb", "", "True", "Issued"), state: StateDone, msg: "serial bb replaces aa, valid until 2026-12-05T12:00:00Z"},
		"reissued, not Ready":    {id: identity("bb", "", "False", "TrustPending"), state: StateWaiting, msg: "waiting for Ready"},
		"conflict":               {id: identity("aa", "r1", "False", "SecretConflict"), state: StateFailed, msg: "not Ready (SecretConflict)"},
		"invalid spec":           {id: identity("aa", "r1", "False", "InvalidSpec"), state: StateFailed},
		"replaced":               {id: identity("aa", "r2", "True", "Issued"), state: StateFailed, msg: "another renew request (r2)"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := RenewalOf(tc.id, "r1", "aa")
			if r.State != tc.state || !strings.Contains(r.Message, tc.msg) {
				t.Errorf("renewal %+v, want state %s and a message with %q", r, tc.state, tc.msg)
			}
		})
	}
}

func TestRotationOf(t *testing.T) {
	stable := CA{Phase: "Stable", Active: "old", Bundles: 4, BundlesCurrent: 4, Identities: 2, IdentitiesOnActive: 2}
	tests := map[string]struct {
		c       CA
		pending bool
		refused string
		state   string
		msg     string
	}{
		"pending":     {c: stable, pending: true, state: StateWaiting, msg: "waiting for the operator to start"},
		"refused":     {c: stable, refused: "CA supplied", state: StateFailed, msg: "refused the rotation: CA supplied"},
		"not started": {c: stable, state: StateWaiting, msg: "not started"},
		"propagating": {c: CA{Phase: "Propagating", Active: "old", Next: "new", Bundles: 4, BundlesCurrent: 1}, state: StateWaiting, msg: "in 1 of 4 trust bundles"},
		"reissuing":   {c: CA{Phase: "Reissuing", Active: "new", Retired: 1, Identities: 10, IdentitiesOnActive: 3}, state: StateWaiting, msg: "3 of 10 identities on the new CA new"},
		"reissued":    {c: CA{Phase: "Reissuing", Active: "new", Retired: 1, Identities: 10, IdentitiesOnActive: 9, Stranded: 1}, state: StateWaiting, msg: "leave the bundles (1 stranded"},
		"done":        {c: CA{Phase: "Stable", Active: "new", Identities: 2, IdentitiesOnActive: 2}, state: StateDone, msg: "CA new replaces old"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := RotationOf("now", "old", tc.c, tc.pending, tc.refused)
			if r.State != tc.state || !strings.Contains(r.Message, tc.msg) {
				t.Errorf("rotation %+v, want state %s and a message with %q", r, tc.state, tc.msg)
			}
		})
	}
}

func TestGolden(t *testing.T) {
	var b bytes.Buffer
	if err := RenewalOf(identity("bb", "", "True", "Issued"), "r1", "aa").WriteHuman(&b); err != nil {
		t.Fatal(err)
	}
	if err := RotationOf("compromised", "old", CA{Phase: "Reissuing", Active: "new", Identities: 10, IdentitiesOnActive: 3}, false, "").WriteHuman(&b); err != nil {
		t.Fatal(err)
	}
	golden.Assert(t, "progress", b.Bytes())
}
