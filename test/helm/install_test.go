package helm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/test/cluster"
)

const (
	// releaseNamespace is not the default, agentmesh-system, so that every
	// object and flag that names the operator's namespace is exercised.
	releaseNamespace = "mesh-system"
	release          = "agentmesh"
	trustDomain      = "agents.example"
	// leaseName is the manager's LeaderElectionID (cmd/manager/main.go).
	leaseName = "agentmesh-manager.mtls.agentmesh.dev"
)

// installValues are the values of the install; the upgrade changes some.
const installValues = "trustDomain: " + trustDomain + "\n"

// TestInstall installs the chart into a local kube-apiserver, checks its
// RBAC with SubjectAccessReviews, runs the manager binary with the chart's
// flags and a token of the chart's ServiceAccount (exactly the chart's RBAC)
// until it has created its CA, issued the sample identities and compiled the
// sample policy, then upgrades and uninstalls the release, and installs
// dist/install.yaml with kubectl.
func TestInstall(t *testing.T) {
	managerBin := managerBinary(t)
	start := time.Now()
	c, err := cluster.Start(cluster.Options{WithoutCRDs: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stopping the control plane: %v", err)
		}
	})
	t.Logf("control plane up in %s", time.Since(start).Round(time.Millisecond))
	dir := t.TempDir()
	admin := filepath.Join(dir, "admin.kubeconfig")
	if err := c.WriteAdminKubeconfig(admin); err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(c.Config)
	k8s := newClient(t, c.Config)
	ctx := t.Context()

	t.Run("values with a wrong type are refused", func(t *testing.T) {
		_, _, err := runTool(ctx, helmBin, "install", release, chartDir, "--kubeconfig", admin, "-n", releaseNamespace,
			"--create-namespace", "-f", valuesFile(t, "replicas: \"2\"\nwebhook: {failurePolicy: Sometimes}\n"))
		if err == nil || !strings.Contains(err.Error(), "at '/replicas': got string, want integer") ||
			!strings.Contains(err.Error(), "at '/webhook/failurePolicy'") {
			t.Fatalf("helm install with a wrong type: %v", err)
		}
		if out, _, err := runTool(ctx, helmBin, "status", release, "--kubeconfig", admin, "-n", releaseNamespace); err == nil {
			t.Fatalf("a release exists after the refused install:\n%s", out)
		}
	})

	// The release namespace enforces PodSecurity "restricted"; helm and
	// kubectl fail the test when the API server warns that the Deployment's
	// Pods would violate it.
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name:   releaseNamespace,
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": "restricted"},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	out := helm(t, "install", release, chartDir, "--kubeconfig", admin, "-n", releaseNamespace, "--create-namespace",
		"-f", valuesFile(t, installValues))
	for _, want := range []string{
		"STATUS: deployed",
		"kubectl apply -f config/samples/",
		"kubectl wait --for=condition=Ready agentidentity --all -n agents",
		"kubectl get agentidentities -A",
		"kubectl rollout status deployment/agentmesh -n " + releaseNamespace,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("helm install output lacks %q:\n%s", want, out)
		}
	}
	kubectlRun(t, admin, "wait", "--for=condition=Established", "--timeout=30s",
		"crd/agentidentities.mtls.agentmesh.dev", "crd/agenttrustpolicies.mtls.agentmesh.dev")
	t.Logf("chart installed after %s", time.Since(start).Round(time.Millisecond))

	t.Run("RBAC of the chart's ServiceAccount", func(t *testing.T) {
		checkRBAC(t, cs, releaseNamespace, release, "agentmesh", trustDomain)
	})

	dep := &appsv1.Deployment{}
	if err := k8s.Get(ctx, types.NamespacedName{Namespace: releaseNamespace, Name: release}, dep); err != nil {
		t.Fatal(err)
	}
	if *dep.Spec.Replicas != 2 {
		t.Errorf("installed Deployment has %d replicas, want 2", *dep.Spec.Replicas)
	}
	if sa := dep.Spec.Template.Spec.ServiceAccountName; sa != "agentmesh" {
		t.Fatalf("the Deployment runs as %s", sa)
	}

	// The manager runs as a process with the installed Deployment's flags,
	// except the listen addresses (loopback, free ports, set by
	// StartManager), and the chart ServiceAccount's token.
	managerKubeconfig := filepath.Join(dir, "manager.kubeconfig")
	writeTokenKubeconfig(t, cs, c.Config, releaseNamespace, "agentmesh", managerKubeconfig)
	var args []string
	for _, a := range dep.Spec.Template.Spec.Containers[0].Args {
		switch name, _, _ := strings.Cut(a, "="); name {
		case "--metrics-bind-address", "--health-probe-bind-address", "--webhook-port", "--webhook-host":
		default:
			args = append(args, a)
		}
	}
	for _, want := range []string{"--leader-elect", "--metrics-secure=true", "--ca-secret=" + releaseNamespace + "/agentmesh-ca", "--trust-domain=" + trustDomain} {
		if !slices.Contains(args, want) {
			t.Fatalf("the Deployment's args %q lack %s", args, want)
		}
	}
	logPath := filepath.Join(dir, "manager.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = logFile.Close() })
	m, err := cluster.StartManager(cluster.ManagerOptions{Binary: managerBin, Kubeconfig: managerKubeconfig, Args: args, Output: logFile})
	if err != nil {
		t.Fatal(err)
	}
	managerStopped := false
	t.Cleanup(func() {
		if !managerStopped {
			_ = m.Stop(10 * time.Second)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("manager log (last 6000 bytes):\n%s", tail(b, 6000))
		}
	})
	readyCtx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := m.WaitReady(readyCtx); err != nil {
		t.Fatal(err)
	}
	t.Logf("manager ready after %s", time.Since(start).Round(time.Millisecond))

	// The chart runs two replicas: the one that does not lead must become
	// ready too (it serves the webhooks), with the same flags and token.
	t.Run("a second replica becomes ready without leading", func(t *testing.T) {
		standbyLog, err := os.Create(filepath.Join(dir, "standby.log"))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = standbyLog.Close() }()
		standby, err := cluster.StartManager(cluster.ManagerOptions{Binary: managerBin, Kubeconfig: managerKubeconfig, Args: args, Output: standbyLog})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = standby.Stop(10 * time.Second) }()
		readyCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		if err := standby.WaitReady(readyCtx); err != nil {
			b, _ := os.ReadFile(standbyLog.Name())
			t.Fatalf("%v\n%s", err, tail(b, 3000))
		}
		b, _ := os.ReadFile(standbyLog.Name())
		if !strings.Contains(string(b), "Attempting to acquire leader lease") || strings.Contains(string(b), "Successfully acquired lease") {
			t.Errorf("the second replica should wait for the Lease, not hold it:\n%s", tail(b, 2000))
		}
	})

	t.Run("manager elected, CA created, caBundle written", func(t *testing.T) {
		lease := &coordinationv1.Lease{}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: releaseNamespace, Name: leaseName}, lease); err != nil {
			t.Fatalf("leader election Lease: %v", err)
		}
		if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
			t.Errorf("Lease %s has no holder", leaseName)
		}
		caSecret := &corev1.Secret{}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: releaseNamespace, Name: "agentmesh-ca"}, caSecret); err != nil {
			t.Fatalf("CA Secret: %v", err)
		}
		caCert := parseCert(t, caSecret.Data[corev1.TLSCertKey])
		if !caCert.IsCA || len(caCert.URIs) != 1 || caCert.URIs[0].String() != "spiffe://"+trustDomain {
			t.Errorf("CA: IsCA %v, URIs %v; want a CA for spiffe://%s", caCert.IsCA, caCert.URIs, trustDomain)
		}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: releaseNamespace, Name: "agentmesh-webhook-ca"}, &corev1.Secret{}); err != nil {
			t.Errorf("webhook CA Secret: %v", err)
		}
		mut := &admissionregistrationv1.MutatingWebhookConfiguration{}
		if err := k8s.Get(ctx, types.NamespacedName{Name: "agentmesh"}, mut); err != nil {
			t.Fatal(err)
		}
		parseCert(t, mut.Webhooks[0].ClientConfig.CABundle)
		val := &admissionregistrationv1.ValidatingWebhookConfiguration{}
		if err := k8s.Get(ctx, types.NamespacedName{Name: "agentmesh"}, val); err != nil {
			t.Fatal(err)
		}
		parseCert(t, val.Webhooks[0].ClientConfig.CABundle)
	})

	// The README's journey, with the admin's kubeconfig.
	kubectlRun(t, admin, "apply", "-f", filepath.Join(root, "config", "samples"))
	kubectlRun(t, admin, "wait", "--for=condition=Ready", "agentidentity", "--all", "-n", "agents", "--timeout=90s")
	t.Logf("sample identities Ready after %s", time.Since(start).Round(time.Millisecond))
	workerID := "spiffe://" + trustDomain + "/ns/agents/agent/worker"
	plannerID := "spiffe://" + trustDomain + "/ns/agents/agent/planner"
	if out := kubectlRun(t, admin, "get", "agentidentities", "-A"); !strings.Contains(out, workerID) || !strings.Contains(out, plannerID) {
		t.Errorf("kubectl get agentidentities -A:\n%s", out)
	}

	t.Run("identity issued", func(t *testing.T) {
		aid := &mtlsv1alpha1.AgentIdentity{}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: "agents", Name: "worker"}, aid); err != nil {
			t.Fatal(err)
		}
		if aid.Status.SPIFFEID != workerID {
			t.Errorf("status.spiffeID = %q, want %q", aid.Status.SPIFFEID, workerID)
		}
		if err := (cluster.Condition{Type: mtlsv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: mtlsv1alpha1.ReasonIssued}).Matches(aid); err != nil {
			t.Error(err)
		}
		sec := &corev1.Secret{}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: "agents", Name: "worker-tls"}, sec); err != nil {
			t.Fatal(err)
		}
		leaf := parseCert(t, sec.Data[corev1.TLSCertKey])
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != workerID {
			t.Errorf("certificate URIs %v, want [%s]", leaf.URIs, workerID)
		}
		if len(sec.Data[corev1.TLSPrivateKeyKey]) == 0 {
			t.Error("the Secret has no tls.key")
		}
	})

	t.Run("policy compiled", func(t *testing.T) {
		atp := &mtlsv1alpha1.AgentTrustPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: "worker-ingress"}}
		cluster.WaitCondition(t, k8s, atp, 30*time.Second, cluster.Condition{
			Type: mtlsv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: mtlsv1alpha1.ReasonCompiled, Current: true})
		if atp.Status.SelectedIdentities != 1 {
			t.Fatalf("policy selects %d identities, want 1", atp.Status.SelectedIdentities)
		}
		cm := &corev1.ConfigMap{}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: "agents", Name: "worker-trust"}, cm); err != nil {
			t.Fatal(err)
		}
		var policy struct {
			SPIFFEID string `json:"spiffeID"`
			Ingress  struct {
				AllowAll  bool     `json:"allowAll"`
				SPIFFEIDs []string `json:"spiffeIDs"`
				Policies  []string `json:"policies"`
			} `json:"ingress"`
		}
		if err := json.Unmarshal([]byte(cm.Data["policy.json"]), &policy); err != nil {
			t.Fatalf("policy.json: %v\n%s", err, cm.Data["policy.json"])
		}
		if policy.SPIFFEID != workerID || policy.Ingress.AllowAll ||
			!slices.Equal(policy.Ingress.SPIFFEIDs, []string{plannerID}) || !slices.Equal(policy.Ingress.Policies, []string{"worker-ingress"}) {
			t.Errorf("worker's policy.json = %s", cm.Data["policy.json"])
		}
	})

	t.Run("metrics need an authorized token", func(t *testing.T) {
		checkSecureMetrics(t, cs, m.MetricsAddr)
	})

	managerStopped = true
	if err := m.Stop(15 * time.Second); err != nil {
		t.Errorf("manager did not exit cleanly: %v", err)
	}

	t.Run("upgrade", func(t *testing.T) {
		before := &admissionregistrationv1.MutatingWebhookConfiguration{}
		if err := k8s.Get(ctx, types.NamespacedName{Name: "agentmesh"}, before); err != nil {
			t.Fatal(err)
		}
		helm(t, "upgrade", release, chartDir, "--kubeconfig", admin, "-n", releaseNamespace, "-f", valuesFile(t,
			installValues+"replicas: 3\nlogLevel: debug\ndefaultPolicy: deny\nwebhook: {failurePolicy: Ignore}\n"))
		after := &appsv1.Deployment{}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: releaseNamespace, Name: release}, after); err != nil {
			t.Fatal(err)
		}
		if *after.Spec.Replicas != 3 || after.Generation <= dep.Generation {
			t.Errorf("after the upgrade: replicas %d, generation %d (was %d)", *after.Spec.Replicas, after.Generation, dep.Generation)
		}
		a := after.Spec.Template.Spec.Containers[0].Args
		if !slices.Contains(a, "--zap-log-level=debug") || !slices.Contains(a, "--default-policy=deny") || slices.Contains(a, "--zap-log-level=info") {
			t.Errorf("args after the upgrade: %q", a)
		}
		mut := &admissionregistrationv1.MutatingWebhookConfiguration{}
		if err := k8s.Get(ctx, types.NamespacedName{Name: "agentmesh"}, mut); err != nil {
			t.Fatal(err)
		}
		if fp := mut.Webhooks[0].FailurePolicy; *fp != admissionregistrationv1.Ignore {
			t.Errorf("failurePolicy after the upgrade = %s, want Ignore", *fp)
		}
		// The upgrade leaves the caBundle the operator wrote alone.
		if got, want := mut.Webhooks[0].ClientConfig.CABundle, before.Webhooks[0].ClientConfig.CABundle; len(want) == 0 || string(got) != string(want) {
			t.Errorf("caBundle changed by the upgrade: %d bytes, was %d", len(got), len(want))
		}
		var status struct {
			Version int `json:"version"`
		}
		if err := json.Unmarshal([]byte(helm(t, "status", release, "--kubeconfig", admin, "-n", releaseNamespace, "-o", "json")), &status); err != nil || status.Version != 2 {
			t.Errorf("release revision %d (%v), want 2", status.Version, err)
		}
	})

	t.Run("uninstall keeps the CRDs and the identities", func(t *testing.T) {
		helm(t, "uninstall", release, "--kubeconfig", admin, "-n", releaseNamespace)
		for _, name := range []string{"agentidentities.mtls.agentmesh.dev", "agenttrustpolicies.mtls.agentmesh.dev"} {
			if err := k8s.Get(ctx, types.NamespacedName{Name: name}, &apiextensionsv1.CustomResourceDefinition{}); err != nil {
				t.Errorf("CRD %s after uninstall: %v", name, err)
			}
		}
		ids := &mtlsv1alpha1.AgentIdentityList{}
		if err := k8s.List(ctx, ids, client.InNamespace("agents")); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, id := range ids.Items {
			names = append(names, id.Name)
		}
		if !slices.Equal(names, []string{"planner", "worker"}) {
			t.Errorf("AgentIdentities after uninstall: %q, want [planner worker]", names)
		}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: "agents", Name: "worker-tls"}, &corev1.Secret{}); err != nil {
			t.Errorf("identity Secret after uninstall: %v", err)
		}
		for _, obj := range []client.Object{
			&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: releaseNamespace, Name: release}},
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: releaseNamespace, Name: "agentmesh"}},
			&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "agentmesh-manager"}},
			&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "agentmesh"}},
			&admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "agentmesh"}},
		} {
			if err := k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj); !apierrors.IsNotFound(err) {
				t.Errorf("%T %s after uninstall: %v, want NotFound", obj, obj.GetName(), err)
			}
		}
	})

	t.Run("kubectl apply dist/install.yaml", func(t *testing.T) {
		kubectlRun(t, admin, "apply", "--server-side", "--force-conflicts", "-f", filepath.Join(root, "dist", "install.yaml"))
		d := &appsv1.Deployment{}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: "agentmesh-system", Name: "agentmesh"}, d); err != nil {
			t.Fatal(err)
		}
		if *d.Spec.Replicas != 2 || !slices.Contains(d.Spec.Template.Spec.Containers[0].Args, "--ca-secret=agentmesh-system/agentmesh-ca") {
			t.Errorf("Deployment: replicas %d, args %q", *d.Spec.Replicas, d.Spec.Template.Spec.Containers[0].Args)
		}
		checkRBAC(t, cs, "agentmesh-system", "agentmesh", "agentmesh", "cluster.local")
	})
	t.Logf("done after %s", time.Since(start).Round(time.Millisecond))
}

// permission is one request the operator's ServiceAccount makes, or must
// not be able to make.
type permission struct {
	verb, group, resource, subresource, namespace, name string
	allowed                                             bool
}

func (p permission) String() string {
	r := p.resource
	if p.group != "" {
		r += "." + p.group
	}
	if p.subresource != "" {
		r += "/" + p.subresource
	}
	where := "cluster-wide"
	if p.namespace != "" {
		where = "in " + p.namespace
	}
	if p.name != "" {
		r += " " + p.name
	}
	return p.verb + " " + r + " " + where
}

// rbacTable is what the operator in namespace ns, with webhook
// configurations named config and trust domain domain, may and may not do.
// The user namespace is agents.
func rbacTable(ns, config, domain string) []permission {
	other := "cluster.local"
	if domain == other {
		other = "agents.example"
	}
	const (
		core = ""
		mtls = "mtls.agentmesh.dev"
		adm  = "admissionregistration.k8s.io"
		coor = "coordination.k8s.io"
		rbac = "rbac.authorization.k8s.io"
		cert = "certificates.k8s.io"
	)
	signer := mtlsv1alpha1.PodCertificateSignerName
	return []permission{
		// Identity Secrets and trust ConfigMaps in the agents' namespaces,
		// watched cluster-wide through label-scoped informers.
		{"create", core, "secrets", "", "agents", "", true},
		{"update", core, "secrets", "", "agents", "worker-tls", true},
		{"delete", core, "secrets", "", "agents", "old-tls", true},
		{"list", core, "secrets", "", "", "", true},
		{"create", core, "configmaps", "", "agents", "", true},
		{"watch", core, "configmaps", "", "", "", true},
		{"get", core, "namespaces", "", "", "agents", true},
		{"watch", core, "pods", "", "", "", true},
		{"list", mtls, "agentidentities", "", "", "", true},
		{"watch", mtls, "agenttrustpolicies", "", "", "", true},
		{"patch", mtls, "agentidentities", "status", "agents", "worker", true},
		// Only to remove a served mtls.agentmesh.dev/renew annotation.
		{"patch", mtls, "agentidentities", "", "agents", "worker", true},
		{"patch", mtls, "agenttrustpolicies", "status", "agents", "worker-ingress", true},
		{"update", mtls, "agentidentities", "finalizers", "agents", "worker", true},
		{"create", "events.k8s.io", "events", "", "agents", "", true},
		// Its own webhook configurations' caBundle.
		{"get", adm, "mutatingwebhookconfigurations", "", "", config, true},
		{"update", adm, "mutatingwebhookconfigurations", "", "", config, true},
		{"patch", adm, "validatingwebhookconfigurations", "", "", config, true},
		// Leader election in its own namespace.
		{"create", coor, "leases", "", ns, "", true},
		{"get", coor, "leases", "", ns, leaseName, true},
		{"update", coor, "leases", "", ns, leaseName, true},
		{"create", core, "events", "", ns, "", true},
		// The PodCertificateRequest signer: decide requests, check the node
		// and service account they name, publish the trust bundle.
		{"watch", cert, "podcertificaterequests", "", "", "", true},
		{"update", cert, "podcertificaterequests", "status", "agents", "worker-0-abcde", true},
		{"sign", cert, "signers", "", "", signer, true},
		{"attest", cert, "signers", "", "", signer, true},
		{"create", cert, "clustertrustbundles", "", "", "", true},
		{"update", cert, "clustertrustbundles", "", "", "agentmesh.dev:agent-identity:" + domain, true},
		{"get", core, "nodes", "", "", "node-1", true},
		{"get", core, "serviceaccounts", "", "agents", "worker", true},
		// Secure metrics.
		{"create", "authentication.k8s.io", "tokenreviews", "", "", "", true},
		{"create", "authorization.k8s.io", "subjectaccessreviews", "", "", "", true},

		// Other webhook configurations, and creating or deleting any.
		{"update", adm, "mutatingwebhookconfigurations", "", "", "other-webhook", false},
		{"patch", adm, "validatingwebhookconfigurations", "", "", "other-webhook", false},
		{"list", adm, "mutatingwebhookconfigurations", "", "", "", false},
		{"create", adm, "mutatingwebhookconfigurations", "", "", "", false},
		{"delete", adm, "mutatingwebhookconfigurations", "", "", config, false},
		// Workloads and credentials.
		{"create", core, "pods", "", "agents", "", false},
		{"update", core, "pods", "", "agents", "worker", false},
		{"delete", core, "pods", "", "agents", "worker", false},
		{"create", core, "serviceaccounts", "token", "agents", "worker", false},
		{"impersonate", core, "serviceaccounts", "", "agents", "worker", false},
		// Privilege escalation.
		{"create", rbac, "clusterrolebindings", "", "", "", false},
		{"escalate", rbac, "clusterroles", "", "", "agentmesh-manager", false},
		{"bind", rbac, "clusterroles", "", "", "cluster-admin", false},
		{"update", "apiextensions.k8s.io", "customresourcedefinitions", "", "", "agentidentities.mtls.agentmesh.dev", false},
		// The users' objects: read-only, except status.
		{"create", mtls, "agentidentities", "", "agents", "", false},
		{"update", mtls, "agentidentities", "", "agents", "worker", false},
		{"patch", mtls, "agenttrustpolicies", "", "agents", "worker-ingress", false},
		{"delete", mtls, "agentidentities", "", "agents", "worker", false},
		{"update", mtls, "agenttrustpolicies", "", "agents", "worker-ingress", false},
		{"update", core, "namespaces", "", "", "agents", false},
		{"list", core, "nodes", "", "", "", false},
		{"update", core, "nodes", "", "", "node-1", false},
		{"list", core, "serviceaccounts", "", "", "", false},
		// Other signers, and the requests themselves.
		{"sign", cert, "signers", "", "", "kubernetes.io/kube-apiserver-client-pod", false},
		{"attest", cert, "signers", "", "", "example.com/other", false},
		{"create", cert, "podcertificaterequests", "", "agents", "", false},
		{"delete", cert, "clustertrustbundles", "", "", "", false},
		// Only its own trust domain's ClusterTrustBundle is updated.
		{"update", cert, "clustertrustbundles", "", "", "example.com:bundle", false},
		{"update", cert, "clustertrustbundles", "", "", "agentmesh.dev:agent-identity:" + other, false},
		// Nothing it never does: patches of Secrets, ConfigMaps and
		// requests, status updates (it applies status), deleting
		// ConfigMaps (owner references let the garbage collector do it).
		{"patch", core, "secrets", "", "agents", "worker-tls", false},
		{"patch", core, "configmaps", "", "agents", "worker-trust", false},
		{"delete", core, "configmaps", "", "agents", "worker-trust", false},
		{"patch", cert, "podcertificaterequests", "status", "agents", "worker-0-abcde", false},
		{"update", mtls, "agentidentities", "status", "agents", "worker", false},
		{"update", mtls, "agenttrustpolicies", "status", "agents", "worker-ingress", false},
		// Leases and core Events anywhere but its own.
		{"update", coor, "leases", "", "agents", leaseName, false},
		{"update", coor, "leases", "", "kube-system", "kube-controller-manager", false},
		{"create", coor, "leases", "", "agents", "", false},
		{"update", coor, "leases", "", ns, "another-lease", false},
		{"delete", coor, "leases", "", ns, leaseName, false},
		{"create", core, "events", "", "agents", "", false},
	}
}

// checkRBAC asks the API server's authorizer, through SubjectAccessReviews,
// whether the ServiceAccount ns/sa (with the groups its token carries) may
// make each request of rbacTable.
func checkRBAC(t *testing.T, cs kubernetes.Interface, ns, sa, config, domain string) {
	t.Helper()
	user := "system:serviceaccount:" + ns + ":" + sa
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
	for _, p := range rbacTable(ns, config, domain) {
		want := "denied"
		if p.allowed {
			want = "allowed"
		}
		t.Run(want+" "+p.String(), func(t *testing.T) {
			sar, err := cs.AuthorizationV1().SubjectAccessReviews().Create(t.Context(), &authorizationv1.SubjectAccessReview{
				Spec: authorizationv1.SubjectAccessReviewSpec{
					User: user, Groups: groups,
					ResourceAttributes: &authorizationv1.ResourceAttributes{
						Verb: p.verb, Group: p.group, Resource: p.resource, Subresource: p.subresource,
						Namespace: p.namespace, Name: p.name,
					},
				},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if sar.Status.Allowed != p.allowed {
				t.Errorf("%s: allowed = %v, want %v (%s)", user, sar.Status.Allowed, p.allowed, sar.Status.Reason)
			}
		})
	}
}

// checkSecureMetrics scrapes the manager's HTTPS metrics endpoint: with the
// token of a ServiceAccount bound to the chart's metrics-reader ClusterRole
// it gets the metrics, which needs the manager to create TokenReviews and
// SubjectAccessReviews; without a token or with an unbound one it is refused.
func checkSecureMetrics(t *testing.T, cs kubernetes.Interface, addr string) {
	ctx := t.Context()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "monitoring"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"prometheus", "intruder"} {
		if _, err := cs.CoreV1().ServiceAccounts("monitoring").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "prometheus-agentmesh-metrics"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "agentmesh-metrics-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "prometheus", Namespace: "monitoring"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	httpClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		// The metrics endpoint's certificate is self-signed by the manager.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // see above
	}}
	scrape := func(token string) (int, string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/metrics", nil)
		if err != nil {
			return 0, "", err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := httpClient.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer func() { _ = resp.Body.Close() }()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	prometheus := createToken(t, cs, "monitoring", "prometheus")
	var code int
	var body string
	// RBAC reaches the authorizer's cache within moments.
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 15*time.Second, true, func(context.Context) (bool, error) {
		var err error
		code, body, err = scrape(prometheus)
		return err == nil && code == http.StatusOK, nil
	})
	if err != nil {
		t.Fatalf("scrape with the prometheus token: HTTP %d: %.300s", code, body)
	}
	if want := `agentmesh_identity_ready{name="worker",namespace="agents"} 1`; !strings.Contains(body, want) {
		t.Errorf("metrics lack %q", want)
	}
	for name, token := range map[string]string{"no token": "", "unbound token": createToken(t, cs, "monitoring", "intruder")} {
		code, body, err := scrape(token)
		want := http.StatusForbidden
		if token == "" {
			want = http.StatusUnauthorized
		}
		if err != nil || code != want {
			t.Errorf("scrape with %s: HTTP %d (%v), want %d: %.200s", name, code, err, want, body)
		}
	}
}

func createToken(t *testing.T, cs kubernetes.Interface, ns, sa string) string {
	t.Helper()
	expiry := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(t.Context(), sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s/%s: %v", ns, sa, err)
	}
	return tr.Status.Token
}

// writeTokenKubeconfig writes a kubeconfig that authenticates as the
// ServiceAccount ns/sa with a token from the TokenRequest API.
func writeTokenKubeconfig(t *testing.T, cs kubernetes.Interface, cfg *rest.Config, ns, sa, path string) {
	t.Helper()
	if len(cfg.CAData) == 0 {
		t.Fatal("the admin config has no CA data")
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["local"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos[sa] = &clientcmdapi.AuthInfo{Token: createToken(t, cs, ns, sa)}
	kc.Contexts[sa] = &clientcmdapi.Context{Cluster: "local", AuthInfo: sa, Namespace: ns}
	kc.CurrentContext = sa
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
}

func newClient(t *testing.T, cfg *rest.Config) client.Client {
	t.Helper()
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(apiextensionsv1.AddToScheme(scheme))
	utilruntime.Must(mtlsv1alpha1.AddToScheme(scheme))
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func kubectlRun(t *testing.T, kubeconfig string, args ...string) string {
	t.Helper()
	out, errOut, err := runTool(t.Context(), kubectl, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	checkNoPodSecurityWarning(t, errOut)
	return out
}

func parseCert(t *testing.T, pemBytes []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(pemBytes)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("no PEM certificate in %d bytes", len(pemBytes))
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
