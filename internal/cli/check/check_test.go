package check

import (
	"bytes"
	"testing"

	"github.com/agentmesh/agentmesh/internal/cli/golden"
	"github.com/agentmesh/agentmesh/internal/cli/status"
)

func TestVersion(t *testing.T) {
	for v, want := range map[string]string{
		"v1.37.2": Pass, "v1.38.0-alpha.1": Pass, "v1.36.4": Warn, "v1.28.0": Fail, "v1.30.1+k3s1": Warn, "garbage": Warn, "v2.0.0": Warn,
	} {
		if got := Version(v).Status; got != want {
			t.Errorf("Version(%q) = %s, want %s", v, got, want)
		}
	}
}

func TestRBAC(t *testing.T) {
	got := RBAC([]Access{
		{Verb: "create", Group: "apiextensions.k8s.io", Resource: "customresourcedefinitions", Why: "install the CRDs", Allowed: true},
		{Verb: "patch", Resource: "secrets", Namespace: "agentmesh-system", Why: "rotate-ca", Allowed: false},
		{Verb: "get", Resource: "secrets", Err: "boom"},
	})
	if got[0].Status != Pass || got[1].Status != Fail || got[1].Message != "not allowed in agentmesh-system: rotate-ca" || got[2].Status != Warn {
		t.Errorf("RBAC = %+v", got)
	}
	if got[0].Name != "can create customresourcedefinitions.apiextensions.k8s.io" || got[1].Name != "can patch secrets" {
		t.Errorf("names %q %q", got[0].Name, got[1].Name)
	}
}

func TestOKAndStatus(t *testing.T) {
	r := &Result{}
	r.Checks = append(r.Checks, Version("v1.37.2"), Served("PodCertificateRequest", "certificates.k8s.io/v1", false))
	if !r.OK() {
		t.Error("warnings fail the check")
	}
	r.Checks = append(r.Checks, FromStatus(&status.Report{Problems: []string{"CRD x is not installed"}})...)
	if r.OK() {
		t.Error("a status problem passes the check")
	}
}

func TestGolden(t *testing.T) {
	r := &Result{}
	r.Checks = append(r.Checks, Version("v1.36.1"), Served("PodCertificateRequest", "certificates.k8s.io/v1", false),
		Served("ClusterTrustBundle", "certificates.k8s.io/v1", true))
	r.Checks = append(r.Checks, RBAC([]Access{{Verb: "create", Group: "apiextensions.k8s.io", Resource: "customresourcedefinitions", Why: "install the CRDs", Allowed: true},
		{Verb: "create", Group: "admissionregistration.k8s.io", Resource: "mutatingwebhookconfigurations", Why: "install the Pod webhook"}})...)
	r.Checks = append(r.Checks, FromStatus(&status.Report{Identities: status.IdentitySummary{Total: 3, Ready: 3}})...)
	r.Add("installed", "probe identity", Pass, "agentmesh-check-x issued in 1.2s: serial ab, verified against bundle.pem; removed")
	var b bytes.Buffer
	if err := r.WriteHuman(&b); err != nil {
		t.Fatal(err)
	}
	golden.Assert(t, "check", b.Bytes())
}
