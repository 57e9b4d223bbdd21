package identity

import (
	"strings"
	"testing"
)

func TestDNSScope(t *testing.T) {
	scoped := DNSScope{}
	custom := DNSScope{ClusterDomain: "corp.internal", Allowed: []string{"api.example.com", "*.partner.example"}}
	cases := []struct {
		scope DNSScope
		name  string
		ok    bool
	}{
		{scoped, "worker.agents.svc", true},
		{scoped, "worker.agents.svc.cluster.local", true},
		{scoped, "a.worker.agents.svc", true},
		{scoped, "*.agents.svc", true},
		{scoped, "*.worker.agents.svc.cluster.local", true},
		{scoped, "agents.svc", false},
		{scoped, "worker.other.svc", false},
		{scoped, "kubernetes.default.svc", false},
		{scoped, "worker.agents.svc.evil.example", false},
		{scoped, "worker.xagents.svc", false},
		{scoped, "*.svc", false},
		{scoped, "*.example.com", false},
		{scoped, "api.example.com", false},
		{scoped, "a.*.agents.svc", false},
		{custom, "worker.agents.svc.corp.internal", true},
		{custom, "worker.agents.svc.cluster.local", false},
		{custom, "api.example.com", true},
		{custom, "*.api.example.com", false},
		{custom, "www.example.com", false},
		{custom, "a.partner.example", true},
		{custom, "a.b.partner.example", true},
		{custom, "*.partner.example", true},
		{custom, "partner.example", false},
	}
	for _, tc := range cases {
		errs := tc.scope.Check("agents", []string{"worker.agents.svc", tc.name})
		if ok := len(errs) == 0; ok != tc.ok {
			t.Errorf("%+v: %q allowed=%v, want %v (%v)", tc.scope, tc.name, ok, tc.ok, errs)
			continue
		}
		if !tc.ok {
			msg := errs.ToAggregate().Error()
			if !strings.HasPrefix(msg, `spec.dnsNames[1]: Forbidden: "`+tc.name+`" is outside the identity's namespace`) {
				t.Errorf("%q: message %q", tc.name, msg)
			}
		}
	}
}

func TestParseAllowedDNSNames(t *testing.T) {
	got, err := ParseAllowedDNSNames([]string{" api.example.com", "*.partner.example", ""})
	if err != nil || strings.Join(got, ",") != "api.example.com,*.partner.example" {
		t.Fatalf("got %v, %v", got, err)
	}
	for _, bad := range []string{"Not_A_Host", "*.*.example", "a.*.example"} {
		if _, err := ParseAllowedDNSNames([]string{bad}); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("%q accepted (%v)", bad, err)
		}
	}
}
