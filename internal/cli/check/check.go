// Package check judges kubectl-agentmesh check: a preflight of a cluster
// before agentmesh is installed (API server version, the APIs PodCertificate
// delivery needs, the caller's RBAC) and, after, the installation's status
// and an end-to-end probe identity. It is pure: the command gathers the
// facts.
package check

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/agentmesh/agentmesh/internal/cli/output"
	"github.com/agentmesh/agentmesh/internal/cli/status"
)

// Status of one check.
const (
	Pass = "PASS"
	Warn = "WARN"
	Fail = "FAIL"
	Skip = "SKIP"
)

// MinMinor is the oldest Kubernetes minor version agentmesh supports (CRD
// validation rules, which its CRDs use, are GA since 1.29); PodMinor the
// one PodCertificate delivery needs.
const (
	MinMinor = 29
	PodMinor = 37
)

// Item is one check.
type Item struct {
	Phase   string `json:"phase"`
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

// Result is every check.
type Result struct {
	Checks []Item `json:"checks"`
}

// Add appends a check.
func (r *Result) Add(phase, name, st, format string, args ...any) {
	r.Checks = append(r.Checks, Item{Phase: phase, Name: name, Status: st, Message: fmt.Sprintf(format, args...)})
}

// OK reports whether no check failed.
func (r *Result) OK() bool {
	for _, c := range r.Checks {
		if c.Status == Fail {
			return false
		}
	}
	return true
}

// Version judges the API server's gitVersion ("v1.37.2").
func Version(gitVersion string) Item {
	it := Item{Phase: "preflight", Name: "Kubernetes version"}
	minor, ok := minorOf(gitVersion)
	switch {
	case !ok:
		it.Status, it.Message = Warn, fmt.Sprintf("cannot read the version %q", gitVersion)
	case minor < MinMinor:
		it.Status, it.Message = Fail, fmt.Sprintf("%s: agentmesh needs 1.%d or later", gitVersion, MinMinor)
	case minor < PodMinor:
		it.Status, it.Message = Warn, fmt.Sprintf("%s: Secret delivery works; PodCertificate delivery needs 1.%d or later", gitVersion, PodMinor)
	default:
		it.Status, it.Message = Pass, gitVersion
	}
	return it
}

func minorOf(v string) (int, bool) {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 || parts[0] != "1" {
		return 0, false
	}
	digits := strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' })
	n, err := strconv.Atoi(digits)
	return n, err == nil
}

// Served judges whether an API that only PodCertificate delivery needs is
// served (a warning when not: Secret delivery does without).
func Served(name, groupVersion string, served bool) Item {
	it := Item{Phase: "preflight", Name: name + " API"}
	if served {
		it.Status, it.Message = Pass, "served ("+groupVersion+")"
	} else {
		it.Status, it.Message = Warn, "not served ("+groupVersion+"): PodCertificate delivery will not work; Secret delivery does"
	}
	return it
}

// Access is one SelfSubjectAccessReview.
type Access struct {
	Verb, Group, Resource, Namespace string
	// Why the install needs it.
	Why     string
	Allowed bool
	// Err is set when the review itself failed.
	Err string
}

// RBAC judges the caller's permissions.
func RBAC(reviews []Access) []Item {
	var out []Item
	for _, a := range reviews {
		res := a.Resource
		if a.Group != "" {
			res += "." + a.Group
		}
		where := "cluster-wide"
		if a.Namespace != "" {
			where = "in " + a.Namespace
		}
		it := Item{Phase: "preflight", Name: "can " + a.Verb + " " + res}
		switch {
		case a.Err != "":
			it.Status, it.Message = Warn, "cannot ask: "+a.Err
		case a.Allowed:
			it.Status, it.Message = Pass, where+" ("+a.Why+")"
		default:
			it.Status, it.Message = Fail, "not allowed "+where+": "+a.Why
		}
		out = append(out, it)
	}
	return out
}

// FromStatus turns the status report's problems into failed checks.
func FromStatus(r *status.Report) []Item {
	if r.OK() {
		return []Item{{Phase: "installed", Name: "status", Status: Pass, Message: fmt.Sprintf("no problem; %d identities, %d Ready", r.Identities.Total, r.Identities.Ready)}}
	}
	var out []Item
	for _, p := range r.Problems {
		out = append(out, Item{Phase: "installed", Name: "status", Status: Fail, Message: p})
	}
	return out
}

// WriteHuman prints the checks as a table, then a verdict.
func (r *Result) WriteHuman(w io.Writer) error {
	t := &output.Table{Header: []string{"phase", "check", "result", "detail"}}
	for _, c := range r.Checks {
		t.Add(c.Phase, c.Name, c.Status, c.Message)
	}
	if err := t.Write(w); err != nil {
		return err
	}
	verdict := "all checks passed"
	if !r.OK() {
		verdict = "some checks failed"
	}
	_, err := fmt.Fprintln(w, verdict)
	return err
}
