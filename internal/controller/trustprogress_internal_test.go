package controller

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

func TestFirstStatusWaitsForABusyTrustReconciler(t *testing.T) {
	created := time.Date(2026, 12, 8, 10, 0, 0, 0, time.UTC)
	pending := metav1.Condition{Type: mtlsv1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: mtlsv1alpha1.ReasonTrustPending}
	resolved := metav1.Condition{Type: mtlsv1alpha1.ConditionPolicyResolved, Status: metav1.ConditionTrue, Reason: mtlsv1alpha1.ReasonCompiled}
	cases := map[string]struct {
		age time.Duration
		// trustPassAgo is how long ago the trust reconciler ended a pass;
		// negative: never.
		trustPassAgo time.Duration
		nilProgress  bool
		hadReady     bool
		reported     bool
		want         time.Duration
	}{
		"new, trust reconciler idle":          {age: 3 * time.Second, trustPassAgo: -1, want: 7 * time.Second},
		"new, no progress tracker":            {age: 3 * time.Second, nilProgress: true, want: 7 * time.Second},
		"created ahead of this clock":         {age: -time.Hour, trustPassAgo: -1, want: 10 * time.Second},
		"after 10s, trust reconciler idle":    {age: 12 * time.Second, trustPassAgo: -1, want: 0},
		"after 10s, trust reconciler stuck":   {age: 40 * time.Second, trustPassAgo: 15 * time.Second, want: 0},
		"after 10s, no progress tracker":      {age: 12 * time.Second, nilProgress: true, want: 0},
		"after 10s, trust reconciler busy":    {age: 12 * time.Second, trustPassAgo: 2 * time.Second, want: 10 * time.Second},
		"near the bound, busy":                {age: 5*time.Minute - 4*time.Second, trustPassAgo: time.Second, want: 4 * time.Second},
		"past the bound, busy":                {age: 5*time.Minute + time.Second, trustPassAgo: time.Second, want: 0},
		"not the first status":                {age: 3 * time.Second, trustPassAgo: time.Second, hadReady: true, want: 0},
		"the trust reconciler reported":       {age: 3 * time.Second, trustPassAgo: time.Second, reported: true, want: 0},
		"busy, but this one already reported": {age: 30 * time.Second, trustPassAgo: time.Second, reported: true, want: 0},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			now := created.Add(tc.age)
			id := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Name: "a", CreationTimestamp: metav1.NewTime(created)}}
			original := id.DeepCopy()
			if tc.hadReady {
				original.Status.Conditions = []metav1.Condition{pending}
			}
			id.Status.Conditions = []metav1.Condition{pending}
			if tc.reported {
				id.Status.Conditions = append(id.Status.Conditions, resolved)
			}
			var progress *TrustProgress
			if !tc.nilProgress {
				progress = &TrustProgress{}
				if tc.trustPassAgo >= 0 {
					progress.Passed(now.Add(-tc.trustPassAgo))
				}
			}
			s := &certScope{id: id, original: original, now: now}
			if got := s.awaitTrust(progress); got != tc.want {
				t.Errorf("wait %v, want %v", got, tc.want)
			}
		})
	}
}
