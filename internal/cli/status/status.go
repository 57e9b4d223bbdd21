// Package status aggregates what kubectl-agentmesh status reads (CRDs, the
// operator's Deployment and Lease, the webhook configurations, the CA status
// ConfigMap, every identity) into one report with the problems found. It is
// pure: the command reads the objects, this package judges them.
package status

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/agentmesh/agentmesh/internal/cli/output"
)

// Input is what the command read from the cluster.
type Input struct {
	Now time.Time
	// ServerVersion is the API server's gitVersion.
	ServerVersion string
	CRDs          []CRD
	Operator      Operator
	Webhooks      []WebhookConfiguration
	CA            CA
	Identities    []Identity
}

// CRD is one of agentmesh's CustomResourceDefinitions.
type CRD struct {
	Name        string   `json:"name"`
	Found       bool     `json:"found"`
	Established bool     `json:"established"`
	Served      []string `json:"served,omitempty"`
	Storage     string   `json:"storage,omitempty"`
}

// Operator is the operator's Deployment and leader Lease.
type Operator struct {
	Namespace  string `json:"namespace"`
	Deployment string `json:"deployment"`
	// Found says the Deployment exists (the operator may run outside the
	// cluster, e.g. make dev).
	Found     bool  `json:"found"`
	Replicas  int32 `json:"replicas"`
	Ready     int32 `json:"ready"`
	Available int32 `json:"available"`
	// Leader is the Lease's holder; empty without leader election.
	Leader string `json:"leader,omitempty"`
	// LeaseRenewed is when the leader last renewed the Lease.
	LeaseRenewed *time.Time `json:"leaseRenewed,omitempty"`
	// LeaseDuration is the Lease's duration.
	LeaseDuration time.Duration `json:"-"`
}

// WebhookConfiguration is a mutating or validating configuration.
type WebhookConfiguration struct {
	Kind  string `json:"kind"`
	Name  string `json:"name"`
	Found bool   `json:"found"`
	// Webhooks and whether each one's caBundle is the webhook CA bundle.
	Webhooks []Webhook `json:"webhooks,omitempty"`
}

// Webhook is one webhook of a configuration.
type Webhook struct {
	Name string `json:"name"`
	// CABundle is "match", "mismatch", "empty" or "unknown" (the webhook CA
	// bundle could not be read).
	CABundle string `json:"caBundle"`
}

// CA is the agent CA as agentmesh-ca-status shows it, and whether the
// operator created it (the CA Secret's ca-managed annotation).
type CA struct {
	// StatusFound says agentmesh-ca-status exists.
	StatusFound bool `json:"statusFound"`
	// Managed is "managed", "supplied" or "" when unknown.
	Managed  string     `json:"managed,omitempty"`
	Phase    string     `json:"phase,omitempty"`
	Reason   string     `json:"reason,omitempty"`
	Serial   string     `json:"serial,omitempty"`
	Subject  string     `json:"subject,omitempty"`
	NotAfter *time.Time `json:"notAfter,omitempty"`
	Next     string     `json:"next,omitempty"`
	Retired  []string   `json:"retired,omitempty"`
	// Progress of the rotation.
	BundlesCurrent     int      `json:"bundlesCurrent"`
	Bundles            int      `json:"bundles"`
	IdentitiesOnActive int      `json:"identitiesOnActive"`
	IdentitiesTotal    int      `json:"identities"`
	Stranded           int      `json:"stranded,omitempty"`
	StrandedIdentities []string `json:"strandedIdentities,omitempty"`
	NextRotation       string   `json:"nextRotation,omitempty"`
	Compromised        bool     `json:"compromised,omitempty"`
	Error              string   `json:"error,omitempty"`
}

// Identity is one AgentIdentity's Ready condition.
type Identity struct {
	Namespace string
	Name      string
	Ready     bool
	// Reason is the Ready condition's reason; "NoStatus" without one.
	Reason string
}

// Report is the aggregated status.
type Report struct {
	ServerVersion string                 `json:"serverVersion,omitempty"`
	CRDs          []CRD                  `json:"crds"`
	Operator      Operator               `json:"operator"`
	Webhooks      []WebhookConfiguration `json:"webhooks"`
	CA            CA                     `json:"ca"`
	Identities    IdentitySummary        `json:"identities"`
	// Problems says what is wrong; empty when all is well.
	Problems []string `json:"problems"`
	// Notes are facts worth knowing that are not problems.
	Notes []string `json:"notes,omitempty"`
}

// IdentitySummary counts identities by readiness and reason.
type IdentitySummary struct {
	Total    int            `json:"total"`
	Ready    int            `json:"ready"`
	NotReady int            `json:"notReady"`
	ByReason map[string]int `json:"notReadyByReason,omitempty"`
	// Examples names up to three not-Ready identities per reason.
	Examples map[string][]string `json:"examples,omitempty"`
}

// OK reports whether nothing is wrong.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

// ExpiryWarning is how close to its expiry the CA is reported.
const ExpiryWarning = 30 * 24 * time.Hour

// Aggregate judges the input.
func Aggregate(in Input) *Report {
	r := &Report{ServerVersion: in.ServerVersion, CRDs: in.CRDs, Operator: in.Operator, Webhooks: in.Webhooks, CA: in.CA, Problems: []string{}}
	for _, c := range in.CRDs {
		switch {
		case !c.Found:
			r.problem("CRD %s is not installed", c.Name)
		case !c.Established:
			r.problem("CRD %s is not Established", c.Name)
		case !slices.Contains(c.Served, "v1alpha1"):
			r.problem("CRD %s does not serve v1alpha1 (serves %s)", c.Name, strings.Join(c.Served, ", "))
		}
	}
	r.judgeOperator(in)
	for _, wc := range in.Webhooks {
		if !wc.Found {
			r.problem("%s %s does not exist", wc.Kind, wc.Name)
			continue
		}
		for _, w := range wc.Webhooks {
			switch w.CABundle {
			case "mismatch":
				r.problem("%s %s: webhook %s has a caBundle that is not the webhook CA bundle", wc.Kind, wc.Name, w.Name)
			case "empty":
				r.problem("%s %s: webhook %s has no caBundle (the operator fills it in once it runs)", wc.Kind, wc.Name, w.Name)
			}
		}
	}
	r.judgeCA(in)
	r.judgeIdentities(in.Identities)
	return r
}

func (r *Report) judgeOperator(in Input) {
	o := in.Operator
	switch {
	case o.Found && o.Replicas == 0:
		r.problem("Deployment %s/%s is scaled to 0", o.Namespace, o.Deployment)
	case o.Found && o.Available == 0:
		r.problem("Deployment %s/%s has no available replica (%d of %d ready)", o.Namespace, o.Deployment, o.Ready, o.Replicas)
	case o.Found && o.Ready < o.Replicas:
		r.problem("Deployment %s/%s: %d of %d replicas ready", o.Namespace, o.Deployment, o.Ready, o.Replicas)
	case !o.Found:
		r.note("no Deployment %s/%s: the operator runs outside the cluster, or under another name (--operator-deployment)", o.Namespace, o.Deployment)
	}
	if o.Leader != "" && o.LeaseRenewed != nil && o.LeaseDuration > 0 && in.Now.Sub(*o.LeaseRenewed) > 2*o.LeaseDuration {
		r.problem("the leader Lease of %s was last renewed %s ago by %s: no replica leads", o.Namespace, roundAgo(in.Now.Sub(*o.LeaseRenewed)), o.Leader)
	}
}

func (r *Report) judgeCA(in Input) {
	c := in.CA
	switch {
	case c.Error != "":
		r.problem("CA status: %s", c.Error)
		return
	case !c.StatusFound:
		r.problem("ConfigMap %s/agentmesh-ca-status does not exist: the operator has not loaded a CA", in.Operator.Namespace)
		return
	}
	if c.NotAfter != nil {
		switch left := c.NotAfter.Sub(in.Now); {
		case left <= 0:
			r.problem("the active CA %s expired at %s", c.Serial, c.NotAfter.UTC().Format(time.RFC3339))
		case left < ExpiryWarning && c.Next == "":
			r.problem("the active CA %s expires in %s and no rotation is under way", c.Serial, roundAgo(left))
		}
	}
	if c.Stranded > 0 {
		r.problem("the CA rotation left %d identities behind (InvalidSpec or SecretConflict): %s", c.Stranded, strings.Join(c.StrandedIdentities, ", "))
	}
	if c.Phase != "" && c.Phase != "Stable" {
		r.note("CA rotation in progress: %s (%s), bundles %d/%d current, identities %d/%d on the active CA",
			c.Phase, c.Reason, c.BundlesCurrent, c.Bundles, c.IdentitiesOnActive, c.IdentitiesTotal)
	}
}

func (r *Report) judgeIdentities(ids []Identity) {
	s := IdentitySummary{Total: len(ids), ByReason: map[string]int{}, Examples: map[string][]string{}}
	sorted := slices.Clone(ids)
	slices.SortFunc(sorted, func(a, b Identity) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	for _, id := range sorted {
		if id.Ready {
			s.Ready++
			continue
		}
		s.NotReady++
		reason := id.Reason
		if reason == "" {
			reason = "NoStatus"
		}
		s.ByReason[reason]++
		if len(s.Examples[reason]) < 3 {
			s.Examples[reason] = append(s.Examples[reason], id.Namespace+"/"+id.Name)
		}
	}
	for _, reason := range slices.Sorted(maps.Keys(s.ByReason)) {
		r.problem("%d identities not Ready (%s): %s%s", s.ByReason[reason], reason, strings.Join(s.Examples[reason], ", "),
			more(s.ByReason[reason], len(s.Examples[reason])))
	}
	if len(s.ByReason) == 0 {
		s.ByReason, s.Examples = nil, nil
	}
	r.Identities = s
}

func more(total, shown int) string {
	if total > shown {
		return fmt.Sprintf(" and %d more", total-shown)
	}
	return ""
}

func (r *Report) problem(format string, args ...any) {
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

func (r *Report) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// roundAgo prints a duration to the second, or to the minute beyond an hour.
func roundAgo(d time.Duration) string {
	if d >= time.Hour {
		d = d.Round(time.Minute)
	} else {
		d = d.Round(time.Second)
	}
	if d >= 48*time.Hour {
		return strconv.Itoa(int(d/(24*time.Hour))) + "d"
	}
	return d.String()
}

// WriteHuman prints the report as sections of aligned tables.
func (r *Report) WriteHuman(w io.Writer) error {
	if r.ServerVersion != "" {
		if _, err := fmt.Fprintf(w, "Kubernetes %s\n\n", r.ServerVersion); err != nil {
			return err
		}
	}
	crds := &output.Table{Header: []string{"crd", "established", "served", "storage"}}
	for _, c := range r.CRDs {
		if !c.Found {
			crds.Add(c.Name, "not installed", "", "")
			continue
		}
		crds.Add(c.Name, strconv.FormatBool(c.Established), strings.Join(c.Served, ","), c.Storage)
	}
	if err := output.Section(w, "CRDs", crds); err != nil {
		return err
	}
	o := r.Operator
	op := &output.Table{Header: []string{"deployment", "ready", "available", "leader"}}
	ready, avail := "not found", ""
	if o.Found {
		ready, avail = fmt.Sprintf("%d/%d", o.Ready, o.Replicas), strconv.Itoa(int(o.Available))
	}
	op.Add(o.Namespace+"/"+o.Deployment, ready, avail, o.Leader)
	if err := output.Section(w, "Operator", op); err != nil {
		return err
	}
	wh := &output.Table{Header: []string{"kind", "name", "webhook", "cabundle"}}
	for _, c := range r.Webhooks {
		if !c.Found {
			wh.Add(c.Kind, c.Name, "", "not found")
			continue
		}
		for _, h := range c.Webhooks {
			wh.Add(c.Kind, c.Name, h.Name, h.CABundle)
		}
	}
	if err := output.Section(w, "Webhooks", wh); err != nil {
		return err
	}
	ca := &output.Table{Header: []string{"serial", "expires", "origin", "phase", "bundles", "identities", "next rotation"}}
	if r.CA.StatusFound {
		exp := ""
		if r.CA.NotAfter != nil {
			exp = r.CA.NotAfter.UTC().Format(time.RFC3339)
		}
		phase := r.CA.Phase
		if r.CA.Reason != "" {
			phase += " (" + r.CA.Reason + ")"
		}
		ca.Add(r.CA.Serial, exp, r.CA.Managed, phase, fmt.Sprintf("%d/%d", r.CA.BundlesCurrent, r.CA.Bundles),
			fmt.Sprintf("%d/%d", r.CA.IdentitiesOnActive, r.CA.IdentitiesTotal), r.CA.NextRotation)
	} else {
		ca.Add("not found", "", r.CA.Managed, "", "", "", "")
	}
	if err := output.Section(w, "CA", ca); err != nil {
		return err
	}
	ids := &output.Table{Header: []string{"identities", "ready", "not ready", "reasons"}}
	var reasons []string
	for _, k := range slices.Sorted(maps.Keys(r.Identities.ByReason)) {
		reasons = append(reasons, fmt.Sprintf("%s=%d", k, r.Identities.ByReason[k]))
	}
	ids.Add(strconv.Itoa(r.Identities.Total), strconv.Itoa(r.Identities.Ready), strconv.Itoa(r.Identities.NotReady), strings.Join(reasons, " "))
	if err := output.Section(w, "Identities", ids); err != nil {
		return err
	}
	for _, n := range r.Notes {
		if _, err := fmt.Fprintf(w, "note: %s\n", n); err != nil {
			return err
		}
	}
	if r.OK() {
		_, err := fmt.Fprintln(w, "OK: no problem found")
		return err
	}
	for _, p := range r.Problems {
		if _, err := fmt.Fprintf(w, "problem: %s\n", p); err != nil {
			return err
		}
	}
	return nil
}
