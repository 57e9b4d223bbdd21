package explain

import (
	"bytes"
	"crypto/x509"
	"io"
	"log/slog"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentmesh/agentmesh/internal/cli/golden"
	"github.com/agentmesh/agentmesh/pkg/agenttls"
	"github.com/agentmesh/agentmesh/pkg/agenttls/agenttlstest"
)

var (
	td      = spiffeid.RequireTrustDomainFromString("cluster.local")
	partner = spiffeid.RequireTrustDomainFromString("partner.example")
	planner = spiffeid.RequireFromString("spiffe://cluster.local/ns/agents/agent/planner")
	worker  = spiffeid.RequireFromString("spiffe://cluster.local/ns/agents/agent/worker")
	auditor = spiffeid.RequireFromString("spiffe://partner.example/ns/ops/agent/auditor")
)

// policies sets up both sides' policy.json for a case.
type policies func(from, to *agenttls.Policy)

func restrict(r *agenttls.Rules, ids []string, prefixes []string, pol string) {
	r.Default, r.Policies = "", []string{pol}
	r.SPIFFEIDs, r.Prefixes = ids, prefixes
}

var cases = map[string]struct {
	from, to spiffeid.ID
	// fromFed / toFed: the side also trusts partner.example.
	fromFed, toFed bool
	set            policies
	allowed        bool
	audited        bool
}{
	"default posture": {from: planner, to: worker, set: func(*agenttls.Policy, *agenttls.Policy) {}, allowed: true},
	"ingress allows the caller": {from: planner, to: worker, allowed: true, set: func(_, to *agenttls.Policy) {
		restrict(&to.Ingress, []string{planner.String()}, nil, "worker-ingress")
	}},
	"ingress refuses the caller": {from: planner, to: worker, set: func(_, to *agenttls.Policy) {
		restrict(&to.Ingress, []string{"spiffe://cluster.local/ns/agents/agent/other"}, nil, "worker-ingress")
	}},
	"ingress audit lets it through": {from: planner, to: worker, allowed: true, audited: true, set: func(_, to *agenttls.Policy) {
		restrict(&to.Ingress, []string{}, nil, "worker-ingress")
		to.Ingress.Mode = agenttls.ModeAudit
	}},
	"egress refuses the server": {from: planner, to: worker, set: func(from, _ *agenttls.Policy) {
		restrict(&from.Egress, nil, []string{"spiffe://cluster.local/ns/research/"}, "planner-egress")
	}},
	"egress prefix allows": {from: planner, to: worker, allowed: true, set: func(from, _ *agenttls.Policy) {
		restrict(&from.Egress, nil, []string{"spiffe://cluster.local/ns/agents/"}, "planner-egress")
	}},
	"default deny": {from: planner, to: worker, set: func(_, to *agenttls.Policy) {
		to.Ingress.Prefixes, to.Ingress.Default = []string{}, "deny"
	}},
	"federated caller allowed": {from: auditor, to: worker, toFed: true, allowed: true, set: func(from, to *agenttls.Policy) {
		restrict(&to.Ingress, []string{auditor.String()}, nil, "worker-partner")
		from.Egress.AllowAll = true
	}},
	"federated caller not trusted": {from: auditor, to: worker, allowed: false, set: func(from, to *agenttls.Policy) {
		restrict(&to.Ingress, []string{auditor.String()}, nil, "worker-partner")
		to.Ingress.Mode = agenttls.ModeAudit // verification fails in Audit mode too
		from.Egress.AllowAll = true
	}},
}

// pki is one CA per trust domain.
type pki struct {
	cas map[spiffeid.TrustDomain]*agenttlstest.CA
}

func newPKI(t *testing.T) *pki {
	p := &pki{cas: map[spiffeid.TrustDomain]*agenttlstest.CA{}}
	for _, d := range []spiffeid.TrustDomain{td, partner} {
		c, err := agenttlstest.NewCA(d)
		if err != nil {
			t.Fatal(err)
		}
		p.cas[d] = c
	}
	return p
}

// write lays out an identity's four files, as the kubelet would, and
// returns the directory and the policy.json it wrote.
func (p *pki) write(t *testing.T, id spiffeid.ID, pol *agenttls.Policy, federated bool) (string, []byte) {
	t.Helper()
	leaf, err := p.cas[id.TrustDomain()].Issue(id)
	if err != nil {
		t.Fatal(err)
	}
	bundles := map[spiffeid.TrustDomain][]*x509.Certificate{id.TrustDomain(): {p.cas[id.TrustDomain()].Cert}}
	if federated {
		for d, c := range p.cas {
			bundles[d] = []*x509.Certificate{c.Cert}
		}
	}
	trust, err := agenttlstest.RenderTrust(pol, bundles)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := agenttlstest.Payload(leaf, trust)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	w, err := agenttlstest.NewAtomicWriter(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(payload); err != nil {
		t.Fatal(err)
	}
	return dir, trust.PolicyJSON
}

// handshake runs one mTLS handshake between the SDK's client and server
// configurations and reports whether the connection was made.
func handshake(t *testing.T, clientDir, serverDir string) bool {
	t.Helper()
	quiet := agenttls.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	cs, err := agenttls.NewSource(agenttls.WithDir(clientDir), agenttls.WithoutFSNotify(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	ss, err := agenttls.NewSource(agenttls.WithDir(serverDir), agenttls.WithoutFSNotify(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	return Handshake(cs, ss)
}

// sideFor reads the policy back from the file, as explain reads it from the
// trust ConfigMap.
func sideFor(t *testing.T, id spiffeid.ID, policyJSON []byte) Side {
	p, err := agenttls.ParsePolicy(policyJSON)
	if err != nil {
		t.Fatal(err)
	}
	return Side{Identity: id.Path(), ID: id, Policy: p}
}

// TestAgreesWithHandshake checks, for every case, that explain's verdict
// is what a real handshake between two SDK agents does with the same files.
func TestAgreesWithHandshake(t *testing.T) {
	p := newPKI(t)
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			fromPol, toPol := agenttlstest.DefaultPolicy(tc.from), agenttlstest.DefaultPolicy(tc.to)
			tc.set(fromPol, toPol)
			fromDir, fromJSON := p.write(t, tc.from, fromPol, tc.fromFed || tc.from.TrustDomain() != td)
			toDir, toJSON := p.write(t, tc.to, toPol, tc.toFed)
			v := Evaluate(sideFor(t, tc.from, fromJSON), sideFor(t, tc.to, toJSON))
			got := handshake(t, fromDir, toDir)
			if v.Allowed != got {
				t.Errorf("explain says allowed=%v, the SDK's handshake says %v; verdict %+v", v.Allowed, got, v)
			}
			if v.Allowed != tc.allowed || v.Audited != tc.audited {
				t.Errorf("verdict allowed=%v audited=%v, want %v %v: egress %q, ingress %q", v.Allowed, v.Audited, tc.allowed, tc.audited, v.Egress.Summary, v.Ingress.Summary)
			}
		})
	}
}

func TestEvaluate(t *testing.T) {
	to := agenttlstest.DefaultPolicy(worker)
	restrict(&to.Ingress, []string{planner.String()}, nil, "worker-ingress")
	to.TrustDomains = map[string][]string{"cluster.local": {"00"}}
	from := agenttlstest.DefaultPolicy(planner)
	from.TrustDomains = map[string][]string{"cluster.local": {"00"}}
	v := Evaluate(Side{Identity: "agents/planner", ID: planner, Policy: from}, Side{Identity: "agents/worker", ID: worker, Policy: to})
	if !v.Allowed || v.Ingress.Decision.Match.Kind != agenttls.MatchSPIFFEID || v.Ingress.Decision.Policies[0] != "worker-ingress" ||
		v.Egress.Decision.Match.Value != "spiffe://cluster.local/" || v.Egress.Decision.Default != "allow-authenticated" {
		t.Errorf("verdict %+v", v)
	}
	// A bare SPIFFE ID: only the known side is evaluated.
	v = Evaluate(Side{ID: auditor}, Side{Identity: "agents/worker", ID: worker, Policy: to})
	if v.Allowed || v.Egress.Evaluated || !v.Ingress.Evaluated || v.Ingress.Trusted || len(v.Notes) != 1 {
		t.Errorf("verdict %+v", v)
	}
}

func TestGolden(t *testing.T) {
	fp := map[string][]string{"cluster.local": {"00"}, "partner.example": {"11"}}
	for name, tc := range map[string]string{"allowed": "ingress allows the caller", "refused": "ingress refuses the caller",
		"audited": "ingress audit lets it through", "untrusted": "federated caller not trusted"} {
		t.Run(name, func(t *testing.T) {
			c := cases[tc]
			fromPol, toPol := agenttlstest.DefaultPolicy(c.from), agenttlstest.DefaultPolicy(c.to)
			c.set(fromPol, toPol)
			fromPol.TrustDomains, toPol.TrustDomains = fp, map[string][]string{"cluster.local": {"00"}}
			from := Side{ID: c.from, Policy: fromPol}
			if c.from.TrustDomain() == td {
				from.Identity = "agents/planner"
			}
			var b bytes.Buffer
			if err := Evaluate(from, Side{Identity: "agents/worker", ID: c.to, Policy: toPol}).WriteHuman(&b); err != nil {
				t.Fatal(err)
			}
			golden.Assert(t, "explain-"+name, b.Bytes())
		})
	}
}
