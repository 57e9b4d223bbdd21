package helm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/diff"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// otherValues changes every value the chart has, for a release whose
// objects are not named agentmesh.
const otherValues = `
replicas: 3
image:
  repository: registry.example/agentmesh
  tag: v9.9.9
  pullPolicy: Always
imagePullSecrets: [{name: regcred}]
trustDomain: prod.example
caSecret: corp-ca
caLifetime: 2160h
caRotation:
  rotateAt: 0.8
  propagationGrace: 5m
  emergencyDeadline: 30m
  reissueRate: 5
defaultPolicy: deny
dnsNames:
  clusterDomain: k8s.internal
  allowed: [api.example.com, "*.agents.example.com"]
kubeAPIQPS: 50
kubeAPIBurst: 100
maxConcurrentReconciles: 16
keyWorkers: 2
logLevel: debug
extraArgs: ["--zap-encoder=console"]
webhook:
  failurePolicy: Ignore
  timeoutSeconds: 10
  excludedNamespaces: [infra]
metrics:
  serviceMonitor:
    enabled: true
    interval: 15s
    labels: {release: prometheus}
crds:
  keep: false
podDisruptionBudget:
  maxUnavailable: 50%
resources:
  requests: {cpu: 200m, memory: 128Mi}
  limits: {cpu: "1", memory: 512Mi}
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: platform, effect: NoSchedule}]
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
      - matchExpressions: [{key: node-role.example/platform, operator: Exists}]
podAnnotations: {example.com/team: platform}
podLabels: {example.com/tier: control}
priorityClassName: system-cluster-critical
`

func TestLint(t *testing.T) {
	for name, values := range map[string]string{"default values": "", "other values": otherValues} {
		t.Run(name, func(t *testing.T) {
			out := helm(t, "lint", "--strict", chartDir, "-f", valuesFile(t, values))
			if !strings.Contains(out, "1 chart(s) linted, 0 chart(s) failed") {
				t.Errorf("helm lint: %s", out)
			}
		})
	}
}

func TestTemplateDefaults(t *testing.T) {
	objs := render(t, "agentmesh", "agentmesh-system", "")

	want := []string{
		"ClusterRole /agentmesh-manager",
		"ClusterRole /agentmesh-metrics-auth",
		"ClusterRole /agentmesh-metrics-reader",
		"ClusterRoleBinding /agentmesh-manager",
		"ClusterRoleBinding /agentmesh-metrics-auth",
		"CustomResourceDefinition /agentidentities.mtls.agentmesh.dev",
		"CustomResourceDefinition /agenttrustpolicies.mtls.agentmesh.dev",
		"Deployment agentmesh-system/agentmesh",
		"MutatingWebhookConfiguration /agentmesh",
		"PodDisruptionBudget agentmesh-system/agentmesh",
		"Role agentmesh-system/agentmesh-leader-election",
		"RoleBinding agentmesh-system/agentmesh-leader-election",
		"Service agentmesh-system/agentmesh-metrics",
		"Service agentmesh-system/agentmesh-webhook",
		"ServiceAccount agentmesh-system/agentmesh",
		"ValidatingWebhookConfiguration /agentmesh",
	}
	if got := objs.keys(); !slices.Equal(got, want) {
		t.Errorf("objects:\n got %q\nwant %q", got, want)
	}

	dep := &appsv1.Deployment{}
	objs.get(t, "Deployment", "agentmesh", dep)
	if got := *dep.Spec.Replicas; got != 2 {
		t.Errorf("replicas = %d, want 2", got)
	}
	c := dep.Spec.Template.Spec.Containers[0]
	wantArgs := []string{
		"--trust-domain=cluster.local",
		"--ca-secret=agentmesh-system/agentmesh-ca",
		"--ca-lifetime=8760h",
		"--ca-rotate-at=0.5",
		"--ca-propagation-grace=2m",
		"--ca-emergency-deadline=15m",
		"--ca-reissue-rate=20",
		"--default-policy=allow-authenticated",
		"--cluster-domain=cluster.local",
		"--kube-api-qps=200",
		"--kube-api-burst=400",
		"--max-concurrent-reconciles=8",
		"--key-workers=1",
		"--leader-elect",
		"--health-probe-bind-address=:8081",
		"--metrics-bind-address=:8443",
		"--metrics-secure=true",
		"--webhook-port=9443",
		"--webhook-service=agentmesh-webhook",
		"--webhook-config-name=agentmesh",
		"--webhook-ca-secret=agentmesh-system/agentmesh-webhook-ca",
		"--zap-log-level=info",
	}
	if !slices.Equal(c.Args, wantArgs) {
		t.Errorf("args:\n got %q\nwant %q", c.Args, wantArgs)
	}
	appVersion := chartAppVersion(t)
	if want := "ghcr.io/agentmesh/agentmesh:" + appVersion; c.Image != want {
		t.Errorf("image = %s, want %s (tag = the chart's appVersion)", c.Image, want)
	}
	if c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("imagePullPolicy = %s", c.ImagePullPolicy)
	}
	checkRestricted(t, dep)
	checkProbes(t, c)
	if got := c.Resources.Requests.Cpu().String(); got != "50m" {
		t.Errorf("cpu request = %s, want 50m", got)
	}
	if got := c.Resources.Requests.Memory().String(); got != "64Mi" {
		t.Errorf("memory request = %s, want 64Mi", got)
	}
	aff := dep.Spec.Template.Spec.Affinity
	if aff == nil || aff.PodAntiAffinity == nil || len(aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 {
		t.Fatalf("want one preferred pod anti-affinity term, got %+v", aff)
	}
	term := aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm
	if term.TopologyKey != "kubernetes.io/hostname" ||
		!reflect.DeepEqual(term.LabelSelector.MatchLabels, dep.Spec.Selector.MatchLabels) {
		t.Errorf("anti-affinity term %+v does not spread the Deployment's Pods over hosts", term)
	}
	if dep.Spec.Template.Spec.ServiceAccountName != "agentmesh" {
		t.Errorf("serviceAccountName = %s", dep.Spec.Template.Spec.ServiceAccountName)
	}

	// The webhook Service sends 443 to the container's webhook port, 9443;
	// the metrics Service 8443 to 8443.
	checkServicePort(t, objs, "agentmesh-webhook", c, 443, "webhook", 9443)
	checkServicePort(t, objs, "agentmesh-metrics", c, 8443, "metrics", 8443)

	mut := &admissionregistrationv1.MutatingWebhookConfiguration{}
	objs.get(t, "MutatingWebhookConfiguration", "agentmesh", mut)
	wh := mut.Webhooks[0]
	if *wh.FailurePolicy != admissionregistrationv1.Fail {
		t.Errorf("Pod webhook failurePolicy = %s, want Fail", *wh.FailurePolicy)
	}
	if s := wh.ClientConfig.Service; s.Name != "agentmesh-webhook" || s.Namespace != "agentmesh-system" || *s.Port != 443 {
		t.Errorf("Pod webhook service = %+v", s)
	}
	if got := wh.NamespaceSelector.MatchExpressions[0].Values; !slices.Equal(got, []string{"kube-system", "agentmesh-system"}) {
		t.Errorf("Pod webhook excludes namespaces %q", got)
	}

	pdb := &policyv1.PodDisruptionBudget{}
	objs.get(t, "PodDisruptionBudget", "agentmesh", pdb)
	if pdb.Spec.MaxUnavailable.String() != "1" || !reflect.DeepEqual(pdb.Spec.Selector.MatchLabels, dep.Spec.Selector.MatchLabels) {
		t.Errorf("PodDisruptionBudget spec = %+v", pdb.Spec)
	}

	for _, crd := range objs.ofKind("CustomResourceDefinition") {
		ann := crd.Map["metadata"].(map[string]any)["annotations"].(map[string]any)
		if ann["helm.sh/resource-policy"] != "keep" {
			t.Errorf("CRD %s: annotations %v lack helm.sh/resource-policy: keep", crd.Name, ann)
		}
	}

	rb := &rbacv1.RoleBinding{}
	objs.get(t, "RoleBinding", "agentmesh-leader-election", rb)
	if want := (rbacv1.Subject{Kind: "ServiceAccount", Name: "agentmesh", Namespace: "agentmesh-system"}); !slices.Equal(rb.Subjects, []rbacv1.Subject{want}) {
		t.Errorf("leader election RoleBinding subjects = %+v", rb.Subjects)
	}
}

func TestTemplateOtherValues(t *testing.T) {
	objs := render(t, "edge", "mesh", otherValues)

	dep := &appsv1.Deployment{}
	objs.get(t, "Deployment", "edge-agentmesh", dep)
	if got := *dep.Spec.Replicas; got != 3 {
		t.Errorf("replicas = %d, want 3", got)
	}
	c := dep.Spec.Template.Spec.Containers[0]
	wantArgs := []string{
		"--trust-domain=prod.example",
		"--ca-secret=mesh/corp-ca",
		"--ca-lifetime=2160h",
		"--ca-rotate-at=0.8",
		"--ca-propagation-grace=5m",
		"--ca-emergency-deadline=30m",
		"--ca-reissue-rate=5",
		"--default-policy=deny",
		"--cluster-domain=k8s.internal",
		"--allowed-dns-names=api.example.com,*.agents.example.com",
		"--kube-api-qps=50",
		"--kube-api-burst=100",
		"--max-concurrent-reconciles=16",
		"--key-workers=2",
		"--leader-elect",
		"--health-probe-bind-address=:8081",
		"--metrics-bind-address=:8443",
		"--metrics-secure=true",
		"--webhook-port=9443",
		"--webhook-service=edge-agentmesh-webhook",
		"--webhook-config-name=edge-agentmesh",
		"--webhook-ca-secret=mesh/edge-agentmesh-webhook-ca",
		"--zap-log-level=debug",
		"--zap-encoder=console",
	}
	if !slices.Equal(c.Args, wantArgs) {
		t.Errorf("args:\n got %q\nwant %q", c.Args, wantArgs)
	}
	checkManagerAcceptsArgs(t, c.Args)
	if c.Image != "registry.example/agentmesh:v9.9.9" || c.ImagePullPolicy != corev1.PullAlways {
		t.Errorf("image = %s (%s)", c.Image, c.ImagePullPolicy)
	}
	if got := dep.Spec.Template.Spec.ImagePullSecrets; !slices.Equal(got, []corev1.LocalObjectReference{{Name: "regcred"}}) {
		t.Errorf("imagePullSecrets = %v", got)
	}
	if got, want := c.Resources.Limits[corev1.ResourceCPU], resource.MustParse("1"); got.Cmp(want) != 0 {
		t.Errorf("cpu limit = %s", got.String())
	}
	if got := c.Resources.Requests.Memory().String(); got != "128Mi" {
		t.Errorf("memory request = %s", got)
	}
	spec := dep.Spec.Template.Spec
	if spec.NodeSelector["kubernetes.io/os"] != "linux" || len(spec.Tolerations) != 1 || spec.Tolerations[0].Key != "dedicated" {
		t.Errorf("nodeSelector %v, tolerations %+v", spec.NodeSelector, spec.Tolerations)
	}
	if spec.Affinity.PodAntiAffinity != nil || spec.Affinity.NodeAffinity == nil {
		t.Errorf("affinity = %+v, want the values' node affinity instead of the default anti-affinity", spec.Affinity)
	}
	if spec.PriorityClassName != "system-cluster-critical" {
		t.Errorf("priorityClassName = %q", spec.PriorityClassName)
	}
	if dep.Spec.Template.Annotations["example.com/team"] != "platform" || dep.Spec.Template.Labels["example.com/tier"] != "control" {
		t.Errorf("pod metadata = %+v", dep.Spec.Template.ObjectMeta)
	}
	checkRestricted(t, dep)

	mut := &admissionregistrationv1.MutatingWebhookConfiguration{}
	objs.get(t, "MutatingWebhookConfiguration", "edge-agentmesh", mut)
	wh := mut.Webhooks[0]
	if *wh.FailurePolicy != admissionregistrationv1.Ignore || *wh.TimeoutSeconds != 10 {
		t.Errorf("Pod webhook failurePolicy %s, timeout %d; want Ignore, 10", *wh.FailurePolicy, *wh.TimeoutSeconds)
	}
	if got := wh.NamespaceSelector.MatchExpressions[0].Values; !slices.Equal(got, []string{"kube-system", "mesh", "infra"}) {
		t.Errorf("Pod webhook excludes namespaces %q", got)
	}
	if s := wh.ClientConfig.Service; s.Name != "edge-agentmesh-webhook" || s.Namespace != "mesh" {
		t.Errorf("Pod webhook service = %+v", s)
	}
	val := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	objs.get(t, "ValidatingWebhookConfiguration", "edge-agentmesh", val)
	if s := val.Webhooks[0].ClientConfig.Service; s.Name != "edge-agentmesh-webhook" || s.Namespace != "mesh" {
		t.Errorf("policy webhook service = %+v", s)
	}
	svc := &corev1.Service{}
	objs.get(t, "Service", "edge-agentmesh-webhook", svc)

	// The ClusterRole may update the webhook configurations of this release,
	// and only those.
	role := &rbacv1.ClusterRole{}
	objs.get(t, "ClusterRole", "edge-agentmesh-manager", role)
	for _, r := range role.Rules {
		if slices.Contains(r.APIGroups, "admissionregistration.k8s.io") && !slices.Equal(r.ResourceNames, []string{"edge-agentmesh"}) {
			t.Errorf("webhook configuration rule names %q, want [edge-agentmesh]", r.ResourceNames)
		}
	}
	for _, kind := range []string{"Role", "RoleBinding"} {
		if o, ok := objs.find(kind, "edge-agentmesh-leader-election"); !ok || o.Namespace != "mesh" {
			t.Errorf("%s edge-agentmesh-leader-election not in namespace mesh", kind)
		}
	}

	for _, crd := range objs.ofKind("CustomResourceDefinition") {
		ann := crd.Map["metadata"].(map[string]any)["annotations"].(map[string]any)
		if _, ok := ann["helm.sh/resource-policy"]; ok {
			t.Errorf("CRD %s is kept on uninstall although crds.keep is false", crd.Name)
		}
	}
	if n := len(objs.ofKind("CustomResourceDefinition")); n != 2 {
		t.Errorf("%d CRDs, want 2", n)
	}

	pdb := &policyv1.PodDisruptionBudget{}
	objs.get(t, "PodDisruptionBudget", "edge-agentmesh", pdb)
	if *pdb.Spec.MaxUnavailable != intstr.FromString("50%") {
		t.Errorf("maxUnavailable = %s", pdb.Spec.MaxUnavailable.String())
	}

	sm, ok := objs.find("ServiceMonitor", "edge-agentmesh")
	if !ok {
		t.Fatal("no ServiceMonitor although metrics.serviceMonitor.enabled")
	}
	ep := sm.Map["spec"].(map[string]any)["endpoints"].([]any)[0].(map[string]any)
	if ep["port"] != "https" || ep["scheme"] != "https" || ep["interval"] != "15s" {
		t.Errorf("ServiceMonitor endpoint = %v", ep)
	}
	if sm.Map["metadata"].(map[string]any)["labels"].(map[string]any)["release"] != "prometheus" {
		t.Errorf("ServiceMonitor labels lack release: prometheus")
	}
}

// TestTemplateToggles covers the values that add or remove objects.
func TestTemplateToggles(t *testing.T) {
	tests := map[string]struct {
		values string
		check  func(t *testing.T, objs objects)
	}{
		"crds disabled": {
			values: "crds: {enabled: false}",
			check: func(t *testing.T, objs objects) {
				if n := len(objs.ofKind("CustomResourceDefinition")); n != 0 {
					t.Errorf("%d CRDs rendered", n)
				}
			},
		},
		"hostNetwork": {
			values: "hostNetwork: true\nextraEnv: [{name: KUBERNETES_SERVICE_HOST, value: 10.1.2.3}]",
			check: func(t *testing.T, objs objects) {
				dep := &appsv1.Deployment{}
				objs.get(t, "Deployment", "agentmesh", dep)
				spec := dep.Spec.Template.Spec
				if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
					t.Errorf("hostNetwork %v, dnsPolicy %q", spec.HostNetwork, spec.DNSPolicy)
				}
				c := spec.Containers[0]
				for _, want := range []string{"--webhook-host=$(POD_IP)", "--health-probe-bind-address=$(POD_IP):8081", "--metrics-bind-address=$(POD_IP):8443"} {
					if !slices.Contains(c.Args, want) {
						t.Errorf("args lack %s: %v", want, c.Args)
					}
				}
				if len(c.Env) != 2 || c.Env[0].Name != "POD_IP" || c.Env[0].ValueFrom == nil || c.Env[0].ValueFrom.FieldRef.FieldPath != "status.podIP" ||
					c.Env[1].Name != "KUBERNETES_SERVICE_HOST" || c.Env[1].Value != "10.1.2.3" {
					t.Errorf("env: %+v", c.Env)
				}
				// $(POD_IP) is expanded by the kubelet; the flags themselves parse.
				args := slices.Clone(c.Args)
				for i, a := range args {
					args[i] = strings.ReplaceAll(a, "$(POD_IP)", "127.0.0.1")
				}
				checkManagerAcceptsArgs(t, args)
			},
		},
		"metrics disabled": {
			values: "metrics: {enabled: false}",
			check: func(t *testing.T, objs objects) {
				for _, k := range []string{"Service agentmesh-metrics", "ClusterRole agentmesh-metrics-auth", "ClusterRoleBinding agentmesh-metrics-auth"} {
					kind, name, _ := strings.Cut(k, " ")
					if _, ok := objs.find(kind, name); ok {
						t.Errorf("%s rendered", k)
					}
				}
				dep := &appsv1.Deployment{}
				objs.get(t, "Deployment", "agentmesh", dep)
				c := dep.Spec.Template.Spec.Containers[0]
				if !slices.Contains(c.Args, "--metrics-bind-address=0") || slices.Contains(c.Args, "--metrics-secure=true") {
					t.Errorf("args %q do not disable metrics", c.Args)
				}
				if slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "metrics" }) {
					t.Errorf("metrics port still declared")
				}
			},
		},
		"existing service account": {
			values: "serviceAccount: {create: false, name: platform-operator}",
			check: func(t *testing.T, objs objects) {
				if n := len(objs.ofKind("ServiceAccount")); n != 0 {
					t.Errorf("%d ServiceAccounts rendered", n)
				}
				dep := &appsv1.Deployment{}
				objs.get(t, "Deployment", "agentmesh", dep)
				if got := dep.Spec.Template.Spec.ServiceAccountName; got != "platform-operator" {
					t.Errorf("serviceAccountName = %s", got)
				}
				for _, kind := range []string{"ClusterRoleBinding", "RoleBinding"} {
					for _, o := range objs.ofKind(kind) {
						b := &rbacv1.RoleBinding{}
						if err := yaml.Unmarshal(o.Raw, b); err != nil {
							t.Fatal(err)
						}
						if b.Subjects[0].Name != "platform-operator" {
							t.Errorf("%s %s binds %s", kind, o.Name, b.Subjects[0].Name)
						}
					}
				}
			},
		},
		"one replica, no PodDisruptionBudget": {
			values: "{replicas: 1, podDisruptionBudget: {enabled: false}}",
			check: func(t *testing.T, objs objects) {
				if _, ok := objs.find("PodDisruptionBudget", "agentmesh"); ok {
					t.Error("PodDisruptionBudget rendered")
				}
				dep := &appsv1.Deployment{}
				objs.get(t, "Deployment", "agentmesh", dep)
				if *dep.Spec.Replicas != 1 || !slices.Contains(dep.Spec.Template.Spec.Containers[0].Args, "--leader-elect") {
					t.Errorf("replicas %d, args %q", *dep.Spec.Replicas, dep.Spec.Template.Spec.Containers[0].Args)
				}
			},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			tt.check(t, render(t, "agentmesh", "agentmesh-system", tt.values))
		})
	}
}

// TestValuesSchema: a typo or a wrong type in the values is refused, with
// the key's path in the message.
func TestValuesSchema(t *testing.T) {
	tests := map[string]struct {
		values string
		want   []string
	}{
		"string for an integer":   {"replicas: two", []string{"at '/replicas'", "want integer"}},
		"number for a string":     {"image: {tag: 1.5}", []string{"at '/image/tag'", "want string"}},
		"fraction for an integer": {"kubeAPIBurst: 1.5", []string{"at '/kubeAPIBurst'", "want integer"}},
		"unknown failure policy":  {"webhook: {failurePolicy: Sometimes}", []string{"at '/webhook/failurePolicy'", "'Fail', 'Ignore'"}},
		"unknown default policy":  {"defaultPolicy: allow-all", []string{"at '/defaultPolicy'", "'allow-authenticated', 'deny'"}},
		"typo at the top":         {"replica: 3", []string{"additional properties 'replica' not allowed"}},
		"typo in crds":            {"crds: {enable: false}", []string{"at '/crds'", "additional properties 'enable' not allowed"}},
		"typo in resources":       {"resources: {request: {cpu: 1}}", []string{"at '/resources'", "'request' not allowed"}},
		"invalid trust domain":    {"trustDomain: Cluster.Local", []string{"at '/trustDomain'", "does not match pattern"}},
		"invalid duration":        {"caLifetime: 1y", []string{"at '/caLifetime'"}},
		"rotation share of 1":     {"caRotation: {rotateAt: 1}", []string{"at '/caRotation/rotateAt'"}},
		"zero QPS":                {"kubeAPIQPS: 0", []string{"at '/kubeAPIQPS'"}},
		"boolean as string":       {"crds: {keep: \"no\"}", []string{"at '/crds/keep'", "want boolean"}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			out, _, err := runTool(t.Context(), helmBin, "template", "agentmesh", chartDir, "-f", valuesFile(t, tt.values))
			if err == nil {
				t.Fatalf("helm template accepted %q:\n%.300s", tt.values, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestChartMatchesGeneratedRBAC fails when the chart's ClusterRole drifts from
// the one controller-gen generates from the markers (run `make manifests`).
func TestChartMatchesGeneratedRBAC(t *testing.T) {
	generated := &rbacv1.ClusterRole{}
	readYAML(t, filepath.Join(root, "config", "rbac", "role.yaml"), generated)
	for _, release := range []struct{ name, namespace, fullname string }{
		{"agentmesh", "agentmesh-system", "agentmesh"},
		{"edge", "mesh", "edge-agentmesh"},
	} {
		t.Run(release.name, func(t *testing.T) {
			objs := render(t, release.name, release.namespace, "")
			got := &rbacv1.ClusterRole{}
			objs.get(t, "ClusterRole", release.fullname+"-manager", got)
			// The marker names the default webhook configurations,
			// agentmesh; the chart names them after the release.
			want := generated.DeepCopy().Rules
			renamed := 0
			for i := range want {
				for j, n := range want[i].ResourceNames {
					if slices.Equal(want[i].APIGroups, []string{"admissionregistration.k8s.io"}) && n == "agentmesh" {
						want[i].ResourceNames[j] = release.fullname
						renamed++
					}
				}
			}
			if renamed == 0 {
				t.Fatal("config/rbac/role.yaml grants no webhook configuration named agentmesh")
			}
			if !reflect.DeepEqual(got.Rules, want) {
				t.Errorf("the chart's ClusterRole differs from config/rbac/role.yaml; run `make manifests` (-chart +generated):\n%s",
					diff.Diff(got.Rules, want))
			}
			if _, ok := objs.find("MutatingWebhookConfiguration", release.fullname); !ok {
				t.Errorf("no MutatingWebhookConfiguration %s, the name the ClusterRole grants", release.fullname)
			}
		})
	}
}

// TestChartMatchesGeneratedCRDs fails when the chart's CRDs drift from
// config/crd/bases.
func TestChartMatchesGeneratedCRDs(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(root, "config", "crd", "bases", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no CRDs in config/crd/bases: %v", err)
	}
	objs := render(t, "agentmesh", "agentmesh-system", "")
	if got := len(objs.ofKind("CustomResourceDefinition")); got != len(files) {
		t.Errorf("the chart has %d CRDs, config/crd/bases %d", got, len(files))
	}
	for _, f := range files {
		base := map[string]any{}
		readYAML(t, f, &base)
		name := base["metadata"].(map[string]any)["name"].(string)
		got, ok := objs.find("CustomResourceDefinition", name)
		if !ok {
			t.Errorf("the chart lacks CRD %s; run `make manifests`", name)
			continue
		}
		if !reflect.DeepEqual(got.Map["spec"], base["spec"]) {
			t.Errorf("CRD %s differs from %s; run `make manifests`:\n%s", name, f, diff.Diff(got.Map["spec"], base["spec"]))
		}
		wantAnn := map[string]any{"helm.sh/resource-policy": "keep"}
		for k, v := range base["metadata"].(map[string]any)["annotations"].(map[string]any) {
			wantAnn[k] = v
		}
		if gotAnn := got.Map["metadata"].(map[string]any)["annotations"]; !reflect.DeepEqual(gotAnn, wantAnn) {
			t.Errorf("CRD %s annotations = %v, want %v", name, gotAnn, wantAnn)
		}
	}
}

// TestChartMatchesWebhookConfig keeps the chart's webhook configurations
// equal to config/webhook/manifests.yaml (for the default release).
func TestChartMatchesWebhookConfig(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, "config", "webhook", "manifests.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	config, err := decodeObjects(b)
	if err != nil {
		t.Fatal(err)
	}
	objs := render(t, "agentmesh", "agentmesh-system", "")
	if len(config) != 2 {
		t.Fatalf("config/webhook/manifests.yaml has %d objects, want 2", len(config))
	}
	for _, want := range config {
		got, ok := objs.find(want.Kind, want.Name)
		if !ok {
			t.Errorf("the chart lacks %s", want.key())
			continue
		}
		if !reflect.DeepEqual(got.Map["webhooks"], want.Map["webhooks"]) {
			t.Errorf("%s differs from config/webhook/manifests.yaml (-chart +config):\n%s", want.key(), diff.Diff(got.Map["webhooks"], want.Map["webhooks"]))
		}
	}
}

// TestInstallYAML checks that dist/install.yaml is what config/default
// renders, and that it installs the same objects as the chart with its
// default values: the kubectl path and the Helm path give the same operator
// with the same RBAC.
func TestInstallYAML(t *testing.T) {
	dist, err := os.ReadFile(filepath.Join(root, "dist", "install.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	fresh, _, err := runTool(t.Context(), kubectl, "kustomize", filepath.Join(root, "config", "default"))
	if err != nil {
		t.Fatal(err)
	}
	_, body, _ := strings.Cut(string(dist), "\n")
	if body != fresh {
		t.Errorf("dist/install.yaml is not what config/default renders: run `make manifests`\n%s", firstDifference(body, fresh))
	}

	distObjs, err := decodeObjects(dist)
	if err != nil {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{}
	distObjs.get(t, "Namespace", "agentmesh-system", ns)
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("namespace labels %v: want PodSecurity restricted enforced", ns.Labels)
	}
	chartObjs := render(t, "agentmesh", "agentmesh-system", "")
	wantKeys := append(chartObjs.keys(), "Namespace /agentmesh-system")
	slices.Sort(wantKeys)
	if got := distObjs.keys(); !slices.Equal(got, wantKeys) {
		t.Errorf("dist/install.yaml objects:\n got %q\nwant %q (the chart's, and the namespace)", got, wantKeys)
	}
	for _, c := range chartObjs {
		d, ok := distObjs.find(c.Kind, c.Name)
		if !ok {
			continue
		}
		if got, want := withoutMetadata(d.Map), withoutMetadata(c.Map); !reflect.DeepEqual(got, want) {
			t.Errorf("%s differs between dist/install.yaml and the chart (-dist +chart):\n%s", c.key(), diff.Diff(got, want))
		}
	}
}

// withoutMetadata drops what legitimately differs between the kubectl path
// and the chart: labels and annotations.
func withoutMetadata(m map[string]any) map[string]any {
	out := map[string]any{}
	b, _ := yaml.Marshal(m)
	_ = yaml.Unmarshal(b, &out)
	meta := out["metadata"].(map[string]any)
	delete(meta, "labels")
	delete(meta, "annotations")
	if spec, ok := out["spec"].(map[string]any); ok {
		if tmpl, ok := spec["template"].(map[string]any); ok {
			delete(tmpl, "metadata")
		}
	}
	return out
}

// firstDifference shows the first line where got and want differ.
func firstDifference(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range max(len(g), len(w)) {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("line %d:\n got %q\nwant %q", i+1, gl, wl)
		}
	}
	return "no difference"
}

func readYAML(t *testing.T, path string, into any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func chartAppVersion(t *testing.T) string {
	t.Helper()
	var chart struct {
		AppVersion string `json:"appVersion"`
	}
	readYAML(t, filepath.Join(chartDir, "Chart.yaml"), &chart)
	if chart.AppVersion == "" {
		t.Fatal("Chart.yaml has no appVersion")
	}
	return chart.AppVersion
}

// checkRestricted asserts the PodSecurity "restricted" settings.
func checkRestricted(t *testing.T, dep *appsv1.Deployment) {
	t.Helper()
	pod := dep.Spec.Template.Spec.SecurityContext
	if pod == nil || pod.RunAsNonRoot == nil || !*pod.RunAsNonRoot || pod.SeccompProfile == nil ||
		pod.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext = %+v, want runAsNonRoot and seccomp RuntimeDefault", pod)
	}
	for _, c := range dep.Spec.Template.Spec.Containers {
		sc := c.SecurityContext
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
			t.Errorf("container %s securityContext = %+v, want no privilege escalation, read-only root, drop ALL", c.Name, sc)
		}
	}
}

func checkProbes(t *testing.T, c corev1.Container) {
	t.Helper()
	probesPort := containerPort(t, c, "probes")
	if probesPort != 8081 {
		t.Errorf("probes port = %d, want 8081", probesPort)
	}
	for name, p := range map[string]*corev1.Probe{"/healthz": c.LivenessProbe, "/readyz": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != name || p.HTTPGet.Port != intstr.FromString("probes") {
			t.Errorf("probe %s = %+v", name, p)
		}
	}
}

func checkServicePort(t *testing.T, objs objects, name string, c corev1.Container, port int32, target string, containerPortNumber int32) {
	t.Helper()
	svc := &corev1.Service{}
	objs.get(t, "Service", name, svc)
	if len(svc.Spec.Ports) != 1 {
		t.Fatalf("Service %s has ports %+v", name, svc.Spec.Ports)
	}
	p := svc.Spec.Ports[0]
	if p.Port != port || p.TargetPort != intstr.FromString(target) {
		t.Errorf("Service %s port %d -> %s, want %d -> %s", name, p.Port, p.TargetPort.String(), port, target)
	}
	if got := containerPort(t, c, target); got != containerPortNumber {
		t.Errorf("container port %s = %d, want %d", target, got, containerPortNumber)
	}
}

func containerPort(t *testing.T, c corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Errorf("container %s has no port %s", c.Name, name)
	return 0
}

// checkManagerAcceptsArgs runs bin/manager with the chart's flags and a
// kubeconfig that does not exist: it must get past flag parsing (exit 2 is
// a refused flag) and stop at loading the kubeconfig.
func checkManagerAcceptsArgs(t *testing.T, args []string) {
	t.Helper()
	bin := managerBinary(t)
	cmd := exec.CommandContext(t.Context(), bin, append(slices.Clone(args), "--kubeconfig="+filepath.Join(t.TempDir(), "none"))...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "loading kubeconfig") {
		t.Errorf("manager %q: %v\n%s", args, err, out)
	}
}

func managerBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(root, "bin", "manager")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s not found: run `make build` (make test does)", bin)
	}
	return bin
}
