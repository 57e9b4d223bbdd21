package policy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// world is a fixed cluster for the tests.
type world struct {
	identities []Identity
	namespaces []Namespace
}

func (w world) Identities(ns string) []Identity {
	var out []Identity
	for _, i := range w.identities {
		if i.Namespace == ns {
			out = append(out, i)
		}
	}
	return out
}

func (w world) Namespaces() []Namespace { return w.namespaces }

var testWorld = world{
	identities: []Identity{
		{Namespace: "agents", Name: "planner", Labels: map[string]string{"role": "planner"}},
		{Namespace: "agents", Name: "worker", Labels: map[string]string{"role": "worker"}},
		{Namespace: "agents", Name: "outsider", Labels: map[string]string{"role": "outsider"}},
		{Namespace: "research", Name: "analyst", Labels: map[string]string{"role": "planner"}},
		{Namespace: "research", Name: "crawler", Labels: map[string]string{"role": "crawler"}},
		{Namespace: "ops", Name: "auditor", Labels: map[string]string{"role": "auditor"}},
	},
	namespaces: []Namespace{
		{Name: "agents", Labels: map[string]string{"team": "core"}},
		{Name: "research", Labels: map[string]string{"team": "research"}},
		{Name: "ops", Labels: map[string]string{"team": "ops"}},
	},
}

func sel(kv ...string) *mtlsv1alpha1.LabelSelector {
	s := &mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func pol(name string, spec mtlsv1alpha1.AgentTrustPolicySpec) *mtlsv1alpha1.AgentTrustPolicy {
	return &mtlsv1alpha1.AgentTrustPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: name, Generation: 1}, Spec: spec}
}

func from(peers ...mtlsv1alpha1.AgentPeer) []mtlsv1alpha1.IngressRule {
	return []mtlsv1alpha1.IngressRule{{From: peers}}
}

func to(peers ...mtlsv1alpha1.AgentPeer) []mtlsv1alpha1.EgressRule {
	return []mtlsv1alpha1.EgressRule{{To: peers}}
}

const (
	tdPrefix     = "spiffe://cluster.local/"
	plannerID    = "spiffe://cluster.local/ns/agents/agent/planner"
	analystID    = "spiffe://cluster.local/ns/research/agent/analyst"
	partnerAgent = "spiffe://partner.example/ns/ops/agent/auditor"
)

func resolve(t *testing.T, who string, def Posture, policies ...*mtlsv1alpha1.AgentTrustPolicy) (*Effective, []*Compiled) {
	t.Helper()
	var compiled []*Compiled
	for _, p := range policies {
		compiled = append(compiled, Compile(p))
	}
	var id Identity
	for _, i := range testWorld.identities {
		if i.Namespace+"/"+i.Name == who {
			id = i
		}
	}
	return Resolve(Input{TrustDomain: td, Default: def, Identity: id, Policies: compiled, World: testWorld})
}

func TestResolve(t *testing.T) {
	workerSel := mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"role": "worker"}}
	// A selector only the operator can check (the CRD schema cannot).
	badSel := mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"not a label key!": "x"}}
	ingressFromPlanner := pol("from-planner", mtlsv1alpha1.AgentTrustPolicySpec{
		AgentSelector: workerSel, Ingress: from(mtlsv1alpha1.AgentPeer{IdentitySelector: sel("role", "planner")}),
	})
	type want struct {
		ingress, egress Allowed
		selecting       []string
	}
	def := func() Allowed {
		return Allowed{Mode: ModeEnforce, SPIFFEIDs: []string{}, Prefixes: []string{tdPrefix}, Policies: []string{}, Default: AllowAuthenticated}
	}
	allowed := func(mode string, ids, prefixes, policies []string) Allowed {
		if ids == nil {
			ids = []string{}
		}
		if prefixes == nil {
			prefixes = []string{}
		}
		return Allowed{Mode: mode, SPIFFEIDs: ids, Prefixes: prefixes, Policies: policies}
	}
	cases := []struct {
		name     string
		who      string
		posture  Posture
		policies []*mtlsv1alpha1.AgentTrustPolicy
		want     want
	}{
		{"no policy: authenticated peers of the trust domain", "agents/worker", AllowAuthenticated, nil,
			want{def(), def(), nil}},
		{"no policy, deny posture", "agents/worker", Deny, nil,
			want{Allowed{Mode: ModeEnforce, SPIFFEIDs: []string{}, Prefixes: []string{}, Policies: []string{}, Default: Deny},
				Allowed{Mode: ModeEnforce, SPIFFEIDs: []string{}, Prefixes: []string{}, Policies: []string{}, Default: Deny}, nil}},
		{"ingress only: one caller", "agents/worker", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{ingressFromPlanner},
			want{allowed(ModeEnforce, []string{plannerID}, nil, []string{"from-planner"}), def(), []string{"from-planner"}}},
		{"the policy does not select others", "agents/planner", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{ingressFromPlanner},
			want{def(), def(), nil}},
		{"egress only", "agents/planner", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{pol("planner-out", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: *sel("role", "planner"), PolicyTypes: []mtlsv1alpha1.PolicyType{"Egress"},
			Egress: to(mtlsv1alpha1.AgentPeer{IdentitySelector: sel("role", "worker")}),
		})}, want{def(), allowed(ModeEnforce, []string{"spiffe://cluster.local/ns/agents/agent/worker"}, nil, []string{"planner-out"}), []string{"planner-out"}}},
		{"governed with no rules denies everything", "agents/worker", Deny, []*mtlsv1alpha1.AgentTrustPolicy{pol("lockdown", mtlsv1alpha1.AgentTrustPolicySpec{
			PolicyTypes: []mtlsv1alpha1.PolicyType{"Ingress", "Egress"},
		})}, want{allowed(ModeEnforce, nil, nil, []string{"lockdown"}), allowed(ModeEnforce, nil, nil, []string{"lockdown"}), []string{"lockdown"}}},
		{"two policies are unioned", "agents/worker", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{ingressFromPlanner, pol("from-auditor", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: workerSel, Ingress: from(mtlsv1alpha1.AgentPeer{SPIFFEIDs: []string{partnerAgent}}),
		})}, want{allowed(ModeEnforce, []string{plannerID, partnerAgent}, nil, []string{"from-auditor", "from-planner"}), def(), []string{"from-auditor", "from-planner"}}},
		{"namespace selector alone is a namespace prefix", "agents/worker", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{pol("from-research", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: workerSel, Ingress: from(mtlsv1alpha1.AgentPeer{NamespaceSelector: sel("team", "research")}),
		})}, want{allowed(ModeEnforce, nil, []string{"spiffe://cluster.local/ns/research/"}, []string{"from-research"}), def(), []string{"from-research"}}},
		{"namespace and identity selectors list identities", "agents/worker", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{pol("planners-anywhere", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: workerSel, Ingress: from(mtlsv1alpha1.AgentPeer{NamespaceSelector: sel(), IdentitySelector: sel("role", "planner")}),
		})}, want{allowed(ModeEnforce, []string{plannerID, analystID}, nil, []string{"planners-anywhere"}), def(), []string{"planners-anywhere"}}},
		{"empty identity selector is the own namespace", "agents/worker", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{pol("same-ns", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: workerSel, Ingress: from(mtlsv1alpha1.AgentPeer{IdentitySelector: sel()}),
		})}, want{allowed(ModeEnforce, nil, []string{"spiffe://cluster.local/ns/agents/"}, []string{"same-ns"}), def(), []string{"same-ns"}}},
		{"every namespace and identity is the trust domain", "agents/worker", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{pol("all", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: workerSel, Ingress: from(mtlsv1alpha1.AgentPeer{IdentitySelector: sel(), NamespaceSelector: sel()}),
		})}, want{allowed(ModeEnforce, nil, []string{tdPrefix}, []string{"all"}), def(), []string{"all"}}},
		{"exact external SPIFFE IDs and a federated trust domain", "agents/worker", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{pol("partners", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: workerSel, Ingress: from(
				mtlsv1alpha1.AgentPeer{SPIFFEIDs: []string{partnerAgent, "spiffe://other.example/x"}},
				mtlsv1alpha1.AgentPeer{TrustDomains: []string{"other.example"}},
			),
		})}, want{allowed(ModeEnforce, []string{partnerAgent}, []string{"spiffe://other.example/"}, []string{"partners"}), def(), []string{"partners"}}},
		{"a rule without peers allows every authenticated peer", "agents/worker", Deny, []*mtlsv1alpha1.AgentTrustPolicy{pol("open", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: workerSel, Ingress: []mtlsv1alpha1.IngressRule{{}, {From: []mtlsv1alpha1.AgentPeer{{SPIFFEIDs: []string{partnerAgent}}}}},
		})}, want{Allowed{Mode: ModeEnforce, AllowAll: true, SPIFFEIDs: []string{}, Prefixes: []string{}, Policies: []string{"open"}},
			Allowed{Mode: ModeEnforce, SPIFFEIDs: []string{}, Prefixes: []string{}, Policies: []string{}, Default: Deny}, []string{"open"}}},
		{"audit mode", "agents/worker", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{pol("audit", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: workerSel, Mode: mtlsv1alpha1.PolicyModeAudit, Ingress: from(mtlsv1alpha1.AgentPeer{IdentitySelector: sel("role", "planner")}),
		})}, want{allowed(ModeAudit, []string{plannerID}, nil, []string{"audit"}), def(), []string{"audit"}}},
		{"audit and enforce together enforce", "agents/worker", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{ingressFromPlanner, pol("audit", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: workerSel, Mode: mtlsv1alpha1.PolicyModeAudit, Ingress: from(mtlsv1alpha1.AgentPeer{SPIFFEIDs: []string{partnerAgent}}),
		})}, want{allowed(ModeEnforce, []string{plannerID, partnerAgent}, nil, []string{"audit", "from-planner"}), def(), []string{"audit", "from-planner"}}},
		{"selector that matches nothing", "agents/worker", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{pol("nobody", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: workerSel, Ingress: from(mtlsv1alpha1.AgentPeer{IdentitySelector: sel("role", "ghost")}),
		})}, want{allowed(ModeEnforce, nil, nil, []string{"nobody"}), def(), []string{"nobody"}}},
		{"agent selector that matches nothing governs nothing", "agents/worker", Deny, []*mtlsv1alpha1.AgentTrustPolicy{pol("ghosts", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: *sel("role", "ghost"), Ingress: []mtlsv1alpha1.IngressRule{{}},
		})}, want{Allowed{Mode: ModeEnforce, SPIFFEIDs: []string{}, Prefixes: []string{}, Policies: []string{}, Default: Deny},
			Allowed{Mode: ModeEnforce, SPIFFEIDs: []string{}, Prefixes: []string{}, Policies: []string{}, Default: Deny}, nil}},
		{"an unparseable agent selector governs with no rules", "agents/planner", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{pol("broken", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: badSel, Ingress: []mtlsv1alpha1.IngressRule{{}},
		})}, want{allowed(ModeEnforce, nil, nil, []string{"broken"}), def(), []string{"broken"}}},
		{"an unparseable agent selector adds nothing to a policy that selects", "agents/worker", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{ingressFromPlanner, pol("broken", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: badSel, Ingress: from(mtlsv1alpha1.AgentPeer{SPIFFEIDs: []string{partnerAgent}}),
		})}, want{allowed(ModeEnforce, []string{plannerID}, nil, []string{"broken", "from-planner"}), def(), []string{"broken", "from-planner"}}},
		{"an unparseable agent selector in audit mode audits", "agents/planner", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{pol("broken", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: badSel, Mode: mtlsv1alpha1.PolicyModeAudit, PolicyTypes: []mtlsv1alpha1.PolicyType{"Egress"},
		})}, want{def(), allowed(ModeAudit, nil, nil, []string{"broken"}), []string{"broken"}}},
		{"an unparseable agent selector of another namespace does nothing", "research/analyst", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{pol("broken", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: badSel, Ingress: []mtlsv1alpha1.IngressRule{{}},
		})}, want{def(), def(), nil}},
		{"prefixes cover identities and narrower prefixes", "agents/worker", AllowAuthenticated, []*mtlsv1alpha1.AgentTrustPolicy{pol("wide", mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: workerSel, Ingress: from(
				mtlsv1alpha1.AgentPeer{IdentitySelector: sel("role", "planner")},
				mtlsv1alpha1.AgentPeer{IdentitySelector: sel()},
				mtlsv1alpha1.AgentPeer{NamespaceSelector: sel("team", "research")},
				mtlsv1alpha1.AgentPeer{NamespaceSelector: sel("team", "research"), IdentitySelector: sel("role", "planner")},
			),
		})}, want{allowed(ModeEnforce, nil, []string{"spiffe://cluster.local/ns/agents/", "spiffe://cluster.local/ns/research/"}, []string{"wide"}), def(), []string{"wide"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			eff, selecting := resolve(t, tc.who, tc.posture, tc.policies...)
			ns, name, _ := strings.Cut(tc.who, "/")
			if eff.Version != SchemaVersion || eff.TrustDomain != "cluster.local" || eff.SPIFFEID != "spiffe://cluster.local/ns/"+ns+"/agent/"+name {
				t.Errorf("header %s %s %s", eff.Version, eff.TrustDomain, eff.SPIFFEID)
			}
			assertAllowed(t, "ingress", eff.Ingress, tc.want.ingress)
			assertAllowed(t, "egress", eff.Egress, tc.want.egress)
			var names []string
			for _, p := range selecting {
				names = append(names, p.Name)
			}
			if strings.Join(names, ",") != strings.Join(tc.want.selecting, ",") {
				t.Errorf("selecting policies %v, want %v", names, tc.want.selecting)
			}
		})
	}
}

func assertAllowed(t *testing.T, dir string, got, want Allowed) {
	t.Helper()
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if string(g) != string(w) {
		t.Errorf("%s:\n got %s\nwant %s", dir, g, w)
	}
}

func TestAllows(t *testing.T) {
	a := Allowed{SPIFFEIDs: []string{plannerID}, Prefixes: []string{"spiffe://cluster.local/ns/research/"}}
	for id, want := range map[string]bool{
		plannerID:            true,
		plannerID + "x":      false,
		plannerID + "/child": false,
		"spiffe://cluster.local/ns/research/agent/a":      true,
		"spiffe://cluster.local/ns/research-evil/agent/a": false,
		"spiffe://cluster.local/ns/agents/agent/worker":   false,
		"spiffe://CLUSTER.local/ns/agents/agent/planner":  false,
	} {
		if got := a.Allows(id); got != want {
			t.Errorf("Allows(%s) = %v, want %v", id, got, want)
		}
	}
}

func TestCompileDropsWhatIsInvalid(t *testing.T) {
	p := pol("bad", mtlsv1alpha1.AgentTrustPolicySpec{
		AgentSelector: mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"role": "worker"}},
		Ingress: from(
			mtlsv1alpha1.AgentPeer{SPIFFEIDs: []string{"spiffe://UPPER.example/x", plannerID}},
			mtlsv1alpha1.AgentPeer{IdentitySelector: &mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"bad key!": "x"}}},
			mtlsv1alpha1.AgentPeer{TrustDomains: []string{"Bad_Domain"}},
		),
	})
	c := Compile(p)
	if len(c.Errors) != 3 {
		t.Fatalf("errors %v, want 3", c.Errors)
	}
	msg := c.ErrorMessage()
	for _, w := range []string{"spec.ingress[0].from[0].spiffeIDs[0]", "spec.ingress[0].from[1].identitySelector", "spec.ingress[0].from[2].trustDomains[0]"} {
		if !strings.Contains(msg, w) {
			t.Errorf("message %q does not name %s", msg, w)
		}
	}
	eff, _ := Resolve(Input{TrustDomain: td, Default: AllowAuthenticated, Identity: testWorld.identities[1], Policies: []*Compiled{c}, World: testWorld})
	// Only the valid part remains: never more than the policy meant.
	if !eff.Ingress.Allows(plannerID) || len(eff.Ingress.SPIFFEIDs) != 1 || len(eff.Ingress.Prefixes) != 0 || eff.Ingress.AllowAll {
		t.Errorf("ingress %+v", eff.Ingress)
	}

	badSelector := pol("bad-selector", mtlsv1alpha1.AgentTrustPolicySpec{
		AgentSelector: mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"-bad": "x"}},
	})
	c = Compile(badSelector)
	if c.AgentSelector != nil || c.Selects(map[string]string{"-bad": "x"}) || !strings.Contains(c.ErrorMessage(), "spec.agentSelector") {
		t.Errorf("invalid agent selector: %v %q", c.AgentSelector, c.ErrorMessage())
	}
}

func newCACert(t *testing.T, isCA bool) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: fmt.Sprintf("ca-%v", isCA)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		BasicConstraintsValid: true, IsCA: isCA, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func TestParseBundle(t *testing.T) {
	good := newCACert(t, true)
	if certs, err := ParseBundle(ca.EncodeCertificatesPEM(good)); err != nil || len(certs) != 1 {
		t.Fatalf("good bundle: %v", err)
	}
	for name, tc := range map[string]struct {
		pem  []byte
		want string
	}{
		"garbage":     {[]byte("hello"), "no PEM certificate found"},
		"not a CA":    {ca.EncodeCertificatesPEM(good, newCACert(t, false)), `certificate 2 (subject "CN=ca-false") is not a CA certificate`},
		"oversized":   {[]byte(strings.Repeat("x", ca.MaxBundlePEMSize+1)), "over the limit"},
		"private key": {[]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), `type "PRIVATE KEY"`},
	} {
		if _, err := ParseBundle(tc.pem); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", name, err, tc.want)
		}
	}
}

func TestRenderAndPreviousBundles(t *testing.T) {
	own, partner := newCACert(t, true), newCACert(t, true)
	eff, _ := resolve(t, "agents/worker", AllowAuthenticated)
	out, err := Render(eff, map[string][]*x509.Certificate{"cluster.local": {own}, "partner.example": {partner, partner}})
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ca.ParseCertificatesPEM(out.BundlePEM)
	if err != nil || len(certs) != 2 || !certs[0].Equal(own) || !certs[1].Equal(partner) {
		t.Fatalf("bundle.pem: %d certs, err %v", len(certs), err)
	}
	if !strings.HasPrefix(string(out.BundlePEM), "# trust domain: cluster.local, subject: CN=ca-true\n-----BEGIN CERTIFICATE-----") {
		t.Errorf("bundle.pem does not start with the own trust domain:\n%s", out.BundlePEM[:80])
	}
	var back Effective
	if err := json.Unmarshal(out.PolicyJSON, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.TrustDomains["cluster.local"]) != 1 || back.TrustDomains["partner.example"][0] != Fingerprint(partner) {
		t.Errorf("trustDomains %v", back.TrustDomains)
	}
	prev := PreviousBundles(out)
	if len(prev["partner.example"]) != 1 || !prev["partner.example"][0].Equal(partner) || !prev["cluster.local"][0].Equal(own) {
		t.Errorf("previous bundles %v", prev)
	}
	if out.ContentHash() == (Output{BundlePEM: out.BundlePEM, PolicyJSON: []byte("{}")}).ContentHash() {
		t.Error("content hash ignores policy.json")
	}
}

// TestPreviousBundlesKeepsManyFederatedCAs: a trust ConfigMap federating 40
// CAs (more than a tls.crt may hold) is read back whole, so that "the last
// good bundle is kept" keeps all of them; a bundle of as many CAs as fit in
// MaxTrustDataSize parses too.
func TestPreviousBundlesKeepsManyFederatedCAs(t *testing.T) {
	own := newCACert(t, true)
	var partners []*x509.Certificate
	for range 40 {
		partners = append(partners, newCACert(t, true))
	}
	eff, _ := resolve(t, "agents/worker", AllowAuthenticated)
	out, err := Render(eff, map[string][]*x509.Certificate{"cluster.local": {own}, "partner.example": partners})
	if err != nil {
		t.Fatal(err)
	}
	prev := PreviousBundles(out)
	if len(prev["partner.example"]) != 40 || len(prev["cluster.local"]) != 1 {
		t.Fatalf("read back %d of 40 federated CAs and %d own", len(prev["partner.example"]), len(prev["cluster.local"]))
	}
	if certs, err := ParseBundle(out.BundlePEM); err != nil || len(certs) != 41 {
		t.Fatalf("ParseBundle: %d certificates, %v", len(certs), err)
	}
	for len(out.BundlePEM)+len(out.PolicyJSON) < MaxTrustDataSize-4096 {
		partners = append(partners, partners[len(partners)%40])
		out.BundlePEM = append(out.BundlePEM, ca.EncodeCertificatesPEM(partners[0])...)
	}
	if _, err := ca.ParseBundlePEM(out.BundlePEM); err != nil {
		t.Errorf("a bundle of %d bytes (%d certificates) does not parse: %v", len(out.BundlePEM), len(partners), err)
	}
}

// TestNamespaceWideRuleStaysSmall: 1,000 identities under a namespace-wide
// rule compile to one prefix, not to a list.
func TestNamespaceWideRuleStaysSmall(t *testing.T) {
	w := world{namespaces: testWorld.namespaces}
	for i := range 1000 {
		w.identities = append(w.identities, Identity{Namespace: "agents", Name: fmt.Sprintf("agent-%04d", i), Labels: map[string]string{"tier": "a"}})
	}
	c := Compile(pol("ns-wide", mtlsv1alpha1.AgentTrustPolicySpec{
		Ingress: from(mtlsv1alpha1.AgentPeer{IdentitySelector: sel()}),
		Egress:  to(mtlsv1alpha1.AgentPeer{NamespaceSelector: sel("team", "core")}),
	}))
	eff, _ := Resolve(Input{TrustDomain: td, Default: Deny, Identity: w.identities[500], Policies: []*Compiled{c}, World: w})
	out, err := Render(eff, map[string][]*x509.Certificate{"cluster.local": {newCACert(t, true)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.PolicyJSON) > 1024 {
		t.Errorf("policy.json is %d bytes for 1,000 identities under a namespace-wide rule:\n%s", len(out.PolicyJSON), out.PolicyJSON)
	}
	if eff.Ingress.Prefixes[0] != "spiffe://cluster.local/ns/agents/" || len(eff.Ingress.SPIFFEIDs) != 0 {
		t.Errorf("ingress %+v", eff.Ingress)
	}
}

func TestRenderRefusesTooLarge(t *testing.T) {
	eff, _ := resolve(t, "agents/worker", AllowAuthenticated)
	for i := range 20000 {
		eff.Ingress.SPIFFEIDs = append(eff.Ingress.SPIFFEIDs, fmt.Sprintf("spiffe://cluster.local/ns/agents/agent/a-%05d", i))
	}
	_, err := Render(eff, nil)
	var tl *TooLargeError
	if err == nil || !errorsAs(err, &tl) || tl.Size <= MaxTrustDataSize {
		t.Fatalf("error %v, want TooLargeError", err)
	}
}
