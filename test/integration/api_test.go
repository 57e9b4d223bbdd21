package integration

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/test/cluster"
)

// fromYAML decodes one object and puts it in namespace ns.
func fromYAML(t *testing.T, ns, doc string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatalf("bad test YAML: %v\n%s", err, doc)
	}
	u.SetNamespace(ns)
	return u
}

func TestDefaultsAreApplied(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "api-")
	ctx := context.Background()
	id := fromYAML(t, ns, `
apiVersion: mtls.agentmesh.dev/v1alpha1
kind: AgentIdentity
metadata: {name: minimal}
spec: {}
`)
	if err := k8s.Create(ctx, id); err != nil {
		t.Fatalf("minimal AgentIdentity rejected: %v", err)
	}
	got := &mtlsv1alpha1.AgentIdentity{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "minimal"}, got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.Duration == nil || got.Spec.Duration.Duration != 24*time.Hour {
		t.Errorf("spec.duration = %v, want 24h", got.Spec.Duration)
	}
	if got.Spec.KeyDelivery != mtlsv1alpha1.KeyDeliverySecret {
		t.Errorf("spec.keyDelivery = %q, want Secret", got.Spec.KeyDelivery)
	}
	if got.Spec.ServiceAccountName != "default" {
		t.Errorf("spec.serviceAccountName = %q, want default", got.Spec.ServiceAccountName)
	}
	if got.EffectiveSecretName() != "minimal-tls" {
		t.Errorf("effective secret name = %q, want minimal-tls", got.EffectiveSecretName())
	}

	withKey := fromYAML(t, ns, `
apiVersion: mtls.agentmesh.dev/v1alpha1
kind: AgentIdentity
metadata: {name: with-key}
spec: {privateKey: {}}
`)
	if err := k8s.Create(ctx, withKey); err != nil {
		t.Fatalf("AgentIdentity with empty privateKey rejected: %v", err)
	}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "with-key"}, got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.PrivateKey == nil || got.Spec.PrivateKey.Algorithm != mtlsv1alpha1.ECDSAKeyAlgorithm {
		t.Errorf("spec.privateKey = %+v, want algorithm ECDSA", got.Spec.PrivateKey)
	}

	pol := fromYAML(t, ns, `
apiVersion: mtls.agentmesh.dev/v1alpha1
kind: AgentTrustPolicy
metadata: {name: minimal}
spec:
  trustBundles:
  - trustDomain: partner.example
    configMap: {name: partner-bundle}
`)
	if err := k8s.Create(ctx, pol); err != nil {
		t.Fatalf("minimal AgentTrustPolicy rejected: %v", err)
	}
	gotPol := &mtlsv1alpha1.AgentTrustPolicy{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "minimal"}, gotPol); err != nil {
		t.Fatal(err)
	}
	if gotPol.Spec.Mode != mtlsv1alpha1.PolicyModeEnforce {
		t.Errorf("spec.mode = %q, want Enforce", gotPol.Spec.Mode)
	}
	if k := gotPol.Spec.TrustBundles[0].ConfigMap.Key; k != "ca.crt" {
		t.Errorf("spec.trustBundles[0].configMap.key = %q, want ca.crt", k)
	}
}

func TestValidObjectsAreAccepted(t *testing.T) {
	for name, doc := range map[string]string{
		"every identity field": `
apiVersion: mtls.agentmesh.dev/v1alpha1
kind: AgentIdentity
metadata: {name: full}
spec:
  secretName: full-cert
  serviceAccountName: full-sa
  dnsNames: [full.agents.svc, "*.full.example"]
  keyDelivery: PodCertificate
  duration: 90m
  renewBefore: 30m
  privateKey: {algorithm: RSA, size: 4096}
`,
		"renewBeforePercentage and Ed25519": `
apiVersion: mtls.agentmesh.dev/v1alpha1
kind: AgentIdentity
metadata: {name: ed}
spec:
  duration: 1m
  renewBeforePercentage: 30
  privateKey: {algorithm: Ed25519}
`,
		"ECDSA P-384 at the longest duration": `
apiVersion: mtls.agentmesh.dev/v1alpha1
kind: AgentIdentity
metadata: {name: p384-0123456789-0123456789-0123456789-0123456789-01234567890}
spec:
  duration: 720h
  privateKey: {algorithm: ECDSA, size: 384}
`,
		"policy with every peer form": `
apiVersion: mtls.agentmesh.dev/v1alpha1
kind: AgentTrustPolicy
metadata: {name: full}
spec:
  agentSelector:
    matchExpressions:
    - {key: role, operator: In, values: [worker]}
    - {key: legacy, operator: DoesNotExist}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - identitySelector: {matchLabels: {role: planner}}
    - namespaceSelector: {matchLabels: {team: research}}
      identitySelector: {}
    - spiffeIDs: [spiffe://partner.example/ns/ops/agent/auditor]
  - {}
  egress:
  - to:
    - trustDomains: [partner.example]
  trustBundles:
  - trustDomain: partner.example
    configMap: {name: partner-bundle, key: bundle.pem}
  mode: Audit
`,
		"policy with protocol restrictions and an expiry": `
apiVersion: mtls.agentmesh.dev/v1alpha1
kind: AgentTrustPolicy
metadata: {name: tools}
spec:
  ingress:
  - from:
    - identitySelector: {matchLabels: {role: planner}}
    protocols:
      mcp: {tools: [search, "read_*", "github/create_issue"]}
      a2a: {skills: [summarize, "translate.*", "urn:skill:x"]}
  - from:
    - identitySelector: {matchLabels: {role: planner}}
    protocols:
      mcp: {tools: ["*"]}
    expiresAt: "2030-01-01T00:00:00Z"
  - expiresAt: "2030-01-01T12:30:00+02:00"
`,
	} {
		t.Run(name, func(t *testing.T) {
			ns := cluster.NewNamespace(t, k8s, "api-")
			if err := k8s.Create(context.Background(), fromYAML(t, ns, doc)); err != nil {
				t.Fatalf("rejected: %v", err)
			}
		})
	}
}

func TestSamplesAreAccepted(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(testRoot, "config", "samples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples found: %v", err)
	}
	ctx := context.Background()
	kinds := map[string]int{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
		for {
			u := &unstructured.Unstructured{}
			if err := dec.Decode(&u.Object); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				t.Fatalf("%s: %v", f, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			if err := k8s.Create(ctx, u); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Errorf("%s: %s %s rejected: %v", filepath.Base(f), u.GetKind(), u.GetName(), err)
			}
			kinds[u.GetKind()]++
		}
	}
	if kinds["AgentIdentity"] < 2 || kinds["AgentTrustPolicy"] < 1 {
		t.Errorf("samples hold %v, want at least two AgentIdentities and one AgentTrustPolicy", kinds)
	}
}

func TestInvalidObjectsAreRejected(t *testing.T) {
	identity := func(name, spec string) string {
		return "apiVersion: mtls.agentmesh.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: " + name + "}\nspec:\n" + spec
	}
	policy := func(spec string) string {
		return "apiVersion: mtls.agentmesh.dev/v1alpha1\nkind: AgentTrustPolicy\nmetadata: {name: p}\nspec:\n" + spec
	}
	cases := []struct {
		name string
		doc  string
		// want are substrings of the error: the field path and the reason.
		want []string
	}{
		{"duration not a duration", identity("a", "  duration: ten minutes\n"),
			[]string{"spec.duration", "should match"}},
		{"duration too short", identity("a", "  duration: 30s\n"),
			[]string{"spec.duration", "duration must be between 1m and 720h"}},
		{"duration too long", identity("a", "  duration: 721h\n"),
			[]string{"spec.duration", "duration must be between 1m and 720h"}},
		{"renewBefore not shorter than duration", identity("a", "  duration: 1h\n  renewBefore: 1h\n"),
			[]string{"spec.renewBefore", "renewBefore must be shorter than duration"}},
		{"renewBefore longer than the default duration", identity("a", "  renewBefore: 25h\n"),
			[]string{"spec.renewBefore", "renewBefore must be shorter than duration"}},
		{"both renewBefore and renewBeforePercentage", identity("a", "  renewBefore: 1h\n  renewBeforePercentage: 20\n"),
			[]string{"spec.renewBefore", "set at most one of renewBefore and renewBeforePercentage"}},
		{"renewBeforePercentage 100", identity("a", "  renewBeforePercentage: 100\n"),
			[]string{"spec.renewBeforePercentage", "less than or equal to 99"}},
		{"unknown algorithm", identity("a", "  privateKey: {algorithm: DSA}\n"),
			[]string{"spec.privateKey.algorithm", `Unsupported value: "DSA"`}},
		{"RSA 1024", identity("a", "  privateKey: {algorithm: RSA, size: 1024}\n"),
			[]string{"spec.privateKey.size", "size must be 2048, 3072 or 4096 for RSA"}},
		{"ECDSA 521", identity("a", "  privateKey: {algorithm: ECDSA, size: 521}\n"),
			[]string{"spec.privateKey.size", "size must be 256 or 384 for ECDSA"}},
		{"Ed25519 with a size", identity("a", "  privateKey: {algorithm: Ed25519, size: 256}\n"),
			[]string{"spec.privateKey.size", "size must not be set for Ed25519"}},
		{"name too long", identity(strings.Repeat("n", 64), "  {}\n"),
			[]string{"metadata.name", "DNS label of at most 63 characters"}},
		{"name with a dot", identity("a.b", "  {}\n"),
			[]string{"metadata.name", "DNS label"}},
		{"unknown keyDelivery", identity("a", "  keyDelivery: File\n"),
			[]string{"spec.keyDelivery", `Unsupported value: "File"`}},
		{"bad DNS name", identity("a", "  dnsNames: [Not_A_Host]\n"),
			[]string{"spec.dnsNames[0]", "should match"}},
		{"duplicate DNS name", identity("a", "  dnsNames: [a.example, a.example]\n"),
			[]string{"spec.dnsNames[1]", "Duplicate value"}},
		{"bad secretName", identity("a", "  secretName: Bad_Name\n"),
			[]string{"spec.secretName", "should match"}},
		{"bad serviceAccountName", identity("a", "  serviceAccountName: ''\n"),
			[]string{"spec.serviceAccountName", "at least 1 chars long"}},
		{"selector with an unknown operator", policy("  agentSelector:\n    matchExpressions: [{key: role, operator: Equals, values: [a]}]\n"),
			[]string{"spec.agentSelector.matchExpressions[0].operator", `Unsupported value: "Equals"`}},
		{"selector In without values", policy("  ingress:\n  - from:\n    - identitySelector:\n        matchExpressions: [{key: role, operator: In}]\n"),
			[]string{"spec.ingress[0].from[0].identitySelector.matchExpressions[0].values", "In and NotIn need values"}},
		{"selector with a bad label key", policy("  agentSelector:\n    matchExpressions: [{key: 'bad key', operator: Exists}]\n"),
			[]string{"spec.agentSelector.matchExpressions[0].key", "should match"}},
		{"peer with a selector and spiffeIDs", policy("  ingress:\n  - from:\n    - identitySelector: {}\n      spiffeIDs: [spiffe://x.example/a]\n"),
			[]string{"spec.ingress[0].from[0]", "set exactly one of"}},
		{"empty peer", policy("  egress:\n  - to:\n    - {}\n"),
			[]string{"spec.egress[0].to[0]", "set exactly one of"}},
		{"spiffeID without scheme", policy("  ingress:\n  - from:\n    - spiffeIDs: [x.example/a]\n"),
			[]string{"spec.ingress[0].from[0].spiffeIDs[0]", "should match"}},
		{"unknown mode", policy("  mode: Block\n"),
			[]string{"spec.mode", `Unsupported value: "Block"`}},
		{"unknown policy type", policy("  policyTypes: [Both]\n"),
			[]string{"spec.policyTypes[0]", `Unsupported value: "Both"`}},
		{"trust bundle without a trust domain", policy("  trustBundles:\n  - configMap: {name: b}\n"),
			[]string{"spec.trustBundles[0].trustDomain", "Required value"}},
		{"trust domain with upper case", policy("  trustBundles:\n  - trustDomain: Partner.Example\n    configMap: {name: b}\n"),
			[]string{"spec.trustBundles[0].trustDomain", "should match"}},
		{"protocols that restrict nothing", policy("  ingress:\n  - protocols: {}\n"),
			[]string{"spec.ingress[0].protocols", "protocols must restrict mcp, a2a or both"}},
		{"a tool pattern with a star inside", policy("  ingress:\n  - protocols: {mcp: {tools: ['read_*_all']}}\n"),
			[]string{"spec.ingress[0].protocols.mcp.tools[0]", "should match"}},
		{"a tool name with a space", policy("  ingress:\n  - protocols: {mcp: {tools: ['delete records']}}\n"),
			[]string{"spec.ingress[0].protocols.mcp.tools[0]", "should match"}},
		{"no tools", policy("  ingress:\n  - protocols: {mcp: {tools: []}}\n"),
			[]string{"spec.ingress[0].protocols.mcp.tools", "at least 1 items"}},
		{"a tool twice", policy("  ingress:\n  - protocols: {mcp: {tools: [search, search]}}\n"),
			[]string{"spec.ingress[0].protocols.mcp.tools[1]", "Duplicate value"}},
		{"a skill with a star inside", policy("  ingress:\n  - protocols: {a2a: {skills: ['*x']}}\n"),
			[]string{"spec.ingress[0].protocols.a2a.skills[0]", "should match"}},
		{"a tool name too long", policy("  ingress:\n  - protocols: {mcp: {tools: ['" + strings.Repeat("t", 129) + "']}}\n"),
			[]string{"spec.ingress[0].protocols.mcp.tools[0]", "128"}},
		{"expiresAt not a time", policy("  ingress:\n  - expiresAt: tomorrow\n"),
			[]string{"spec.ingress[0].expiresAt", "date-time"}},
	}
	ns := cluster.NewNamespace(t, k8s, "api-")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := k8s.Create(context.Background(), fromYAML(t, ns, tc.doc))
			if err == nil {
				t.Fatalf("accepted, want a rejection naming %q", tc.want[0])
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("error %v is not an Invalid error", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestPrinterColumns(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "api-")
	ctx := context.Background()
	id := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "cols"}}
	if err := k8s.Create(ctx, id); err != nil {
		t.Fatal(err)
	}
	notAfter := metav1.NewTime(time.Now().Add(24 * time.Hour).Truncate(time.Second))
	renewal := metav1.NewTime(notAfter.Add(-12 * time.Hour))
	id.Status = mtlsv1alpha1.AgentIdentityStatus{
		SPIFFEID:    "spiffe://cluster.local/ns/" + ns + "/agent/cols",
		SecretName:  "cols-tls",
		NotAfter:    &notAfter,
		RenewalTime: &renewal,
		Policies:    []string{"worker-ingress"},
		Pods:        3,
	}
	meta.SetStatusCondition(&id.Status.Conditions, metav1.Condition{
		Type: mtlsv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: mtlsv1alpha1.ReasonIssued, Message: "ok",
	})
	if err := k8s.Status().Update(ctx, id); err != nil {
		t.Fatal(err)
	}
	out := kubectl(t, "get", "agentidentities", "-n", ns, "-o", "wide")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("kubectl get printed %d lines, want 2:\n%s", len(lines), out)
	}
	header := strings.Fields(lines[0])
	wantHeader := []string{"NAME", "READY", "SPIFFE", "ID", "EXPIRES", "SECRET", "RENEWAL", "PODS", "POLICIES", "REASON", "AGE"}
	if strings.Join(header, " ") != strings.Join(wantHeader, " ") {
		t.Errorf("header = %q, want %q", header, wantHeader)
	}
	row := strings.Fields(lines[1])
	want := []string{"cols", "True", id.Status.SPIFFEID, notAfter.UTC().Format(time.RFC3339), "cols-tls", renewal.UTC().Format(time.RFC3339), "3", `["worker-ingress"]`, "Issued"}
	if len(row) != len(want)+1 || strings.Join(row[:len(want)], " ") != strings.Join(want, " ") {
		t.Errorf("row = %q, want %q and the age", row, want)
	}
	// The short name and the category work too.
	if out := kubectl(t, "get", "aid", "-n", ns, "-o", "name"); strings.TrimSpace(out) != "agentidentity.mtls.agentmesh.dev/cols" {
		t.Errorf("kubectl get aid = %q", out)
	}
	pol := &mtlsv1alpha1.AgentTrustPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "cols"}}
	if err := k8s.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	out = kubectl(t, "get", "agentmesh", "-n", ns)
	for _, w := range []string{"agentidentity.mtls.agentmesh.dev/cols", "agenttrustpolicy.mtls.agentmesh.dev/cols", "SELECTED"} {
		if !strings.Contains(out, w) {
			t.Errorf("kubectl get agentmesh does not show %q:\n%s", w, out)
		}
	}
	out = kubectl(t, "get", "atp", "-n", ns)
	if h := strings.Fields(strings.SplitN(out, "\n", 2)[0]); strings.Join(h, " ") != "NAME READY SELECTED AGE" {
		t.Errorf("kubectl get atp header = %q", h)
	}
}

// TestExplainDescribesEveryField checks that `kubectl explain` shows a
// description for every spec field of both kinds, as served by the API
// server.
func TestExplainDescribesEveryField(t *testing.T) {
	for _, kind := range []string{"agentidentities", "agenttrustpolicies"} {
		crd := loadCRDSchema(t, kind)
		spec := crd["properties"].(map[string]any)["spec"].(map[string]any)
		var paths []fieldPath
		collectFields(spec, kind+".spec", &paths, 0)
		if len(paths) < 8 {
			t.Fatalf("%s: found only %d spec fields: %v", kind, len(paths), paths)
		}
		for _, p := range paths {
			out := kubectl(t, "explain", p.path)
			if !strings.Contains(out, "DESCRIPTION:") || !strings.Contains(squash(out), squash(p.first)) {
				t.Errorf("kubectl explain %s does not show %q:\n%s", p.path, p.first, out)
			}
		}
	}
}

type fieldPath struct{ path, first string }

// collectFields lists the fields below schema that are ours (label selectors
// come with the upstream descriptions and are not walked) with the first
// words of their description.
func collectFields(schema map[string]any, prefix string, out *[]fieldPath, depth int) {
	props, _ := schema["properties"].(map[string]any)
	if props == nil {
		if items, ok := schema["items"].(map[string]any); ok {
			props, _ = items["properties"].(map[string]any)
		}
	}
	for name, raw := range props {
		s := raw.(map[string]any)
		desc, _ := s["description"].(string)
		path := prefix + "." + name
		first := strings.Fields(desc)
		if len(first) > 4 {
			first = first[:4]
		}
		*out = append(*out, fieldPath{path: path, first: strings.Join(first, " ")})
		if isLabelSelector(s) || depth > 4 {
			continue
		}
		collectFields(s, path, out, depth+1)
	}
}

func isLabelSelector(s map[string]any) bool {
	props, _ := s["properties"].(map[string]any)
	_, a := props["matchLabels"]
	_, b := props["matchExpressions"]
	return a && b
}

func squash(s string) string { return strings.Join(strings.Fields(s), " ") }

func loadCRDSchema(t *testing.T, plural string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testRoot, "config", "crd", "bases", "mtls.agentmesh.dev_"+plural+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var crd map[string]any
	if err := yaml.Unmarshal(b, &crd); err != nil {
		t.Fatal(err)
	}
	versions := crd["spec"].(map[string]any)["versions"].([]any)
	return versions[0].(map[string]any)["schema"].(map[string]any)["openAPIV3Schema"].(map[string]any)
}

func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(cluster.AssetsDir(testRoot), "kubectl"), append([]string{"--kubeconfig", kubeconfig}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}
