package helm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/test/cluster"
)

// TestChartOnNodes installs the chart with the locally built operator image
// on two real nodes (kubelets on 127.0.0.1 and 127.0.0.2; hostNetwork, as
// they have no Pod network): its Pods meet PodSecurity "restricted" but for
// what hostNetwork brings, both replicas become Ready, one on each node, one
// holds the Lease, both serve the webhook for its Service name with a
// certificate the caBundle trusts, the API server calls the webhook through
// its Service (the cluster's loopback Service proxy) to inject a
// Deployment's Pod, which then runs, and SIGKILL of the leader's container
// loses no issuance: the other replica takes over within the lease time.
func TestChartOnNodes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the nodes need root")
	}
	if err := cluster.BuildImages(root, cluster.ImagesDir(root)); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(t.TempDir(), "cluster.log"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c, err := cluster.Start(cluster.Options{WithoutCRDs: true, Output: logFile, Node: &cluster.NodeOptions{Nodes: 2}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
	})
	t.Logf("cluster with two nodes up in %s", time.Since(start).Round(time.Millisecond))
	admin := filepath.Join(t.TempDir(), "admin.kubeconfig")
	if err := c.WriteAdminKubeconfig(admin); err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(c.Config)
	k8s := newClient(t, c.Config)
	ctx := t.Context()

	if err := cluster.EnsureNamespace(ctx, cs, releaseNamespace); err != nil {
		t.Fatal(err)
	}
	api, err := url.Parse(c.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	values := installValues + fmt.Sprintf(`hostNetwork: true
image: {pullPolicy: Never}
# The kubernetes Service's ClusterIP reaches the API server through the
# cluster's Service proxy, but the API server's serving certificate names
# only localhost and 127.0.0.1: the operator calls it at its address.
extraEnv:
- {name: KUBERNETES_SERVICE_HOST, value: %q}
- {name: KUBERNETES_SERVICE_PORT, value: %q}
`, api.Hostname(), api.Port())
	if _, _, err := runTool(ctx, helmBin, "install", release, chartDir, "--kubeconfig", admin, "-n", releaseNamespace,
		"-f", valuesFile(t, values)); err != nil {
		t.Fatal(err)
	}
	t.Run("PodSecurity restricted: only what hostNetwork brings", func(t *testing.T) {
		checkRestrictedButHostNetwork(t, cs, k8s)
	})

	var pods []corev1.Pod
	if err := waitReplicasReady(ctx, k8s, 3*time.Minute); err != nil {
		dumpManagers(t, cs)
		t.Fatal(err)
	}
	pods = managerPods(t, cs)
	ready := time.Since(start)
	nodes := []string{pods[0].Spec.NodeName, pods[1].Spec.NodeName}
	sort.Strings(nodes)
	if nodes[0] != "node1" || nodes[1] != "node2" {
		t.Errorf("the replicas run on %v, want one on each node", nodes)
	}
	t.Logf("both replicas Ready %s after the start, on %v", ready.Round(time.Second), nodes)

	leader := leaderPod(t, cs, pods)
	t.Logf("the leader is %s on %s", leader.Name, leader.Spec.NodeName)

	t.Run("both replicas serve the webhook for its Service name", func(t *testing.T) {
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
		if err := k8s.Get(ctx, types.NamespacedName{Name: release}, mwc); err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		if len(mwc.Webhooks) == 0 || !roots.AppendCertsFromPEM(mwc.Webhooks[0].ClientConfig.CABundle) {
			t.Fatalf("no caBundle in %s", mwc.Name)
		}
		svc := mwc.Webhooks[0].ClientConfig.Service
		if svc == nil {
			t.Fatalf("the webhook is not called through a Service: %+v", mwc.Webhooks[0].ClientConfig)
		}
		name := svc.Name + "." + svc.Namespace + ".svc"
		// What the API server does for a Service reference, at each
		// replica's address: a TLS handshake for the Service's name,
		// verified against the caBundle.
		for _, p := range managerPods(t, cs) {
			conn, err := tls.Dial("tcp", net.JoinHostPort(p.Status.PodIP, "9443"), &tls.Config{ServerName: name, RootCAs: roots, MinVersion: tls.VersionTLS12})
			if err != nil {
				t.Errorf("the webhook of %s at %s: %v", p.Name, p.Status.PodIP, err)
				continue
			}
			_ = conn.Close()
		}
	})

	t.Run("the webhook injects a Deployment's Pods through the Service", func(t *testing.T) {
		checkInjectionThroughService(t, c, cs, k8s)
	})

	t.Run("killing the leader loses no issuance", func(t *testing.T) {
		if err := cluster.EnsureNamespace(ctx, cs, "agents"); err != nil {
			t.Fatal(err)
		}
		lease := &coordinationv1.Lease{}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: releaseNamespace, Name: leaseName}, lease); err != nil {
			t.Fatal(err)
		}
		before := *lease.Spec.HolderIdentity
		killed := time.Now()
		if err := c.KillContainer(ctx, leader, "manager"); err != nil {
			t.Fatal(err)
		}
		// Identities created while no replica leads.
		const n = 10
		for i := range n {
			createIdentity(t, k8s, fmt.Sprintf("failover-%d", i))
		}
		var takeover time.Duration
		if err := cluster.Poll(ctx, 90*time.Second, "the other replica takes the Lease", func() error {
			l := &coordinationv1.Lease{}
			if err := k8s.Get(ctx, types.NamespacedName{Namespace: releaseNamespace, Name: leaseName}, l); err != nil {
				return err
			}
			if h := l.Spec.HolderIdentity; h == nil || *h == before {
				return fmt.Errorf("still held by %s", before)
			}
			takeover = time.Since(killed)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := cluster.Poll(ctx, 60*time.Second, "the identities created without a leader are Ready", func() error {
			for i := range n {
				id := &mtlsv1alpha1.AgentIdentity{}
				if err := k8s.Get(ctx, types.NamespacedName{Namespace: "agents", Name: fmt.Sprintf("failover-%d", i)}, id); err != nil {
					return err
				}
				if !meta.IsStatusConditionTrue(id.Status.Conditions, mtlsv1alpha1.ConditionReady) {
					return fmt.Errorf("%s not Ready", id.Name)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		issued := time.Since(killed)
		// controller-runtime's lease: 15 s from the last renewal, which is
		// retried every 2 s; allow two retries and some scheduling.
		if takeover > 25*time.Second {
			t.Errorf("the other replica took over after %s, more than the lease time", takeover)
		}
		t.Logf("SIGKILL of the leader: the other replica held the Lease after %s; the %d identities created meanwhile were Ready after %s",
			takeover.Round(100*time.Millisecond), n, issued.Round(100*time.Millisecond))
		// The killed container restarts and both replicas serve again.
		if err := waitReplicasReady(ctx, k8s, 90*time.Second); err != nil {
			t.Error(err)
		}
	})
}

// checkInjectionThroughService creates an AgentIdentity and a Deployment
// of the example agent whose Pods opt in to it (the identity label), and
// checks what the webhook injected into the Pod the ReplicaSet controller
// created, that the Pod runs and serves the identity's certificate, and
// that the API server's call went through the webhook's Service: the
// cluster's Service proxy forwarded connections for it.
func checkInjectionThroughService(t *testing.T, c *cluster.Cluster, cs kubernetes.Interface, k8s client.Client) {
	t.Helper()
	ctx := t.Context()
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := k8s.Get(ctx, types.NamespacedName{Name: release}, mwc); err != nil {
		t.Fatal(err)
	}
	ref := mwc.Webhooks[0].ClientConfig.Service
	if ref == nil {
		t.Fatalf("the webhook is not called through a Service: %+v", mwc.Webhooks[0].ClientConfig)
	}
	svc, err := cs.CoreV1().Services(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(svc.Spec.ClusterIP, strings.TrimSuffix(c.ServiceCIDR(), "0/24")) {
		t.Errorf("the webhook Service's ClusterIP %s is not in the loopback Service CIDR %s", svc.Spec.ClusterIP, c.ServiceCIDR())
	}

	const ns, name = "injected", "echo"
	spiffeID := "spiffe://" + trustDomain + "/ns/" + ns + "/agent/" + name
	if err := cluster.EnsureNamespace(ctx, cs, ns); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, &mtlsv1alpha1.AgentIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       mtlsv1alpha1.AgentIdentitySpec{ServiceAccountName: name},
	}); err != nil {
		t.Fatal(err)
	}
	tag, err := cluster.ImageTag(root)
	if err != nil {
		t.Fatal(err)
	}
	port, err := cluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app.kubernetes.io/name": name}
	replicas, grace := int32(1), int64(1)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app.kubernetes.io/name": name, mtlsv1alpha1.LabelIdentity: name}},
				Spec: corev1.PodSpec{
					ServiceAccountName:            name,
					HostNetwork:                   true,
					TerminationGracePeriodSeconds: &grace,
					Containers: []corev1.Container{{Name: "agent", Image: cluster.AgentImage.Ref(tag), ImagePullPolicy: corev1.PullNever,
						Args: []string{"--listen", fmt.Sprintf("127.0.0.1:%d", port)}}},
				},
			},
		},
	}
	before := c.ServiceConnections(svc.Namespace, svc.Name)
	if err := k8s.Create(ctx, dep); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), dep) })
	var pod *corev1.Pod
	if err := cluster.Poll(ctx, 2*time.Minute, "the Deployment's Pod runs", func() error {
		list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + name})
		if err != nil {
			return err
		}
		if len(list.Items) == 0 {
			return replicaSetFailure(ctx, cs, ns)
		}
		p := &list.Items[0]
		for _, st := range p.Status.ContainerStatuses {
			if p.Status.Phase == corev1.PodRunning && st.Ready {
				pod = p
				return nil
			}
		}
		return fmt.Errorf("Pod %s: phase %s, containers %+v", p.Name, p.Status.Phase, p.Status.ContainerStatuses)
	}); err != nil {
		t.Fatal(err)
	}
	calls := c.ServiceConnections(svc.Namespace, svc.Name) - before
	if calls < 1 {
		t.Errorf("the Service proxy forwarded %d connections for %s/%s: the webhook was not called through its Service", calls, svc.Namespace, svc.Name)
	}
	t.Logf("Pod %s injected through %s/%s (%s:443; %d connections forwarded by the Service proxy) and running on %s",
		pod.Name, svc.Namespace, svc.Name, svc.Spec.ClusterIP, calls, pod.Spec.NodeName)
	if pod.Spec.NodeName != "node1" && pod.Spec.NodeName != "node2" {
		t.Errorf("the Pod is bound to %q", pod.Spec.NodeName)
	}
	if got := pod.Annotations[mtlsv1alpha1.AnnotationInjected]; got != spiffeID {
		t.Errorf("annotation %s: %q, want %q", mtlsv1alpha1.AnnotationInjected, got, spiffeID)
	}
	checkInjectedPod(t, pod, spiffeID)

	// The agent serves the certificate the kubelet projected from the
	// identity's Secret.
	var served []*x509.Certificate
	conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{
		InsecureSkipVerify: true, //nolint:gosec // only the served certificate is read
		MinVersion:         tls.VersionTLS12,
		VerifyConnection: func(cs tls.ConnectionState) error {
			served = cs.PeerCertificates
			return nil
		},
	})
	if err == nil {
		_ = conn.Close()
	}
	if len(served) == 0 || len(served[0].URIs) != 1 || served[0].URIs[0].String() != spiffeID {
		t.Errorf("the agent's certificate (dial: %v): %v", err, served)
	}
}

// checkInjectedPod checks the volume, mount and variables the webhook
// injects, by their literal names.
func checkInjectedPod(t *testing.T, pod *corev1.Pod, spiffeID string) {
	t.Helper()
	var vol *corev1.Volume
	for i := range pod.Spec.Volumes {
		if pod.Spec.Volumes[i].Name == "agentmesh-identity" {
			vol = &pod.Spec.Volumes[i]
		}
	}
	if vol == nil || vol.Projected == nil || len(vol.Projected.Sources) != 2 {
		t.Fatalf("no projected volume agentmesh-identity of two sources: %+v", pod.Spec.Volumes)
	}
	sec, cm := vol.Projected.Sources[0].Secret, vol.Projected.Sources[1].ConfigMap
	if sec == nil || sec.Name != "echo-tls" || fmt.Sprint(sec.Items) != fmt.Sprint([]corev1.KeyToPath{{Key: "tls.crt", Path: "tls.crt"}, {Key: "tls.key", Path: "tls.key"}}) {
		t.Errorf("the volume's Secret projection: %+v", sec)
	}
	if cm == nil || cm.Name != "echo-trust" || fmt.Sprint(cm.Items) != fmt.Sprint([]corev1.KeyToPath{{Key: "bundle.pem", Path: "bundle.pem"}, {Key: "policy.json", Path: "policy.json"}}) {
		t.Errorf("the volume's ConfigMap projection: %+v", cm)
	}
	ctr := pod.Spec.Containers[0]
	want := corev1.VolumeMount{Name: "agentmesh-identity", MountPath: "/var/run/agentmesh", ReadOnly: true}
	found := false
	for _, m := range ctr.VolumeMounts {
		found = found || (m.Name == want.Name && m.MountPath == want.MountPath && m.ReadOnly && m.SubPath == "")
	}
	if !found {
		t.Errorf("container %s mounts %+v, want %+v among them", ctr.Name, ctr.VolumeMounts, want)
	}
	env := map[string]string{}
	for _, e := range ctr.Env {
		env[e.Name] = e.Value
	}
	for k, v := range map[string]string{
		"AGENTMESH_SPIFFE_ID":   spiffeID,
		"AGENTMESH_CERT_FILE":   "/var/run/agentmesh/tls.crt",
		"AGENTMESH_KEY_FILE":    "/var/run/agentmesh/tls.key",
		"AGENTMESH_BUNDLE_FILE": "/var/run/agentmesh/bundle.pem",
		"AGENTMESH_POLICY_FILE": "/var/run/agentmesh/policy.json",
	} {
		if env[k] != v {
			t.Errorf("container %s: %s=%q, want %q", ctr.Name, k, env[k], v)
		}
	}
}

// replicaSetFailure is why a namespace's ReplicaSets made no Pod yet (a
// refused webhook call shows as ReplicaFailure), or a plain "no Pod yet".
func replicaSetFailure(ctx context.Context, cs kubernetes.Interface, ns string) error {
	rss, err := cs.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, rs := range rss.Items {
		for _, cond := range rs.Status.Conditions {
			if cond.Type == appsv1.ReplicaSetReplicaFailure && cond.Status == corev1.ConditionTrue {
				return fmt.Errorf("no Pod yet: ReplicaSet %s: %s", rs.Name, cond.Message)
			}
		}
	}
	return errors.New("no Pod yet")
}

// violation is one item of a PodSecurity message: `name (detail)`.
var violation = regexp.MustCompile(`(?:^|, )([a-zA-Z ]+?) \(`)

// checkRestrictedButHostNetwork creates, as a server-side dry run, a Pod
// of the chart's template in a namespace that enforces PodSecurity
// "restricted": the nodes have no Pod network, so the operator runs with
// hostNetwork, which "baseline" and "restricted" forbid; the refusal must
// name nothing but what hostNetwork brings (host namespaces, and the host
// ports it implies).
func checkRestrictedButHostNetwork(t *testing.T, cs kubernetes.Interface, k8s client.Client) {
	t.Helper()
	ctx := t.Context()
	dep := &appsv1.Deployment{}
	if err := k8s.Get(ctx, types.NamespacedName{Namespace: releaseNamespace, Name: release}, dep); err != nil {
		t.Fatal(err)
	}
	const ns = "restricted-check"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: ns, Labels: map[string]string{"pod-security.kubernetes.io/enforce": "restricted"},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sa := dep.Spec.Template.Spec.ServiceAccountName
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "manager", Namespace: ns}, Spec: dep.Spec.Template.Spec}
	_, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	_, list, ok := strings.Cut(fmt.Sprint(err), `violates PodSecurity "restricted:latest": `)
	if !ok {
		t.Fatalf("a hostNetwork Pod of the chart under PodSecurity restricted: %v", err)
	}
	names := violation.FindAllStringSubmatch(list, -1)
	for _, m := range names {
		if m[1] != "host namespaces" && m[1] != "hostPort" {
			t.Errorf("the chart's Pods violate %q beyond hostNetwork: %s", m[1], list)
		}
	}
	if len(names) == 0 {
		t.Errorf("no violation parsed from %q", list)
	}
	t.Logf("PodSecurity restricted refuses the hostNetwork Pod for: %s", list)
}

func managerPods(t *testing.T, cs kubernetes.Interface) []corev1.Pod {
	t.Helper()
	list, err := cs.CoreV1().Pods(releaseNamespace).List(t.Context(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=manager"})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// leaderPod is the replica whose log says it acquired the Lease (with
// hostNetwork both replicas have the node's host name, so the Lease's
// holder does not say which Pod it is).
func leaderPod(t *testing.T, cs kubernetes.Interface, pods []corev1.Pod) *corev1.Pod {
	t.Helper()
	var leader *corev1.Pod
	if err := cluster.Poll(t.Context(), 60*time.Second, "a replica acquires the Lease", func() error {
		for i := range pods {
			b, err := cs.CoreV1().Pods(releaseNamespace).GetLogs(pods[i].Name, &corev1.PodLogOptions{Container: "manager"}).DoRaw(t.Context())
			if err != nil {
				return err
			}
			if strings.Contains(string(b), "Successfully acquired lease") {
				leader = &pods[i]
				return nil
			}
		}
		return fmt.Errorf("no replica acquired the lease yet")
	}); err != nil {
		t.Fatal(err)
	}
	return leader
}

func createIdentity(t *testing.T, k8s client.Client, name string) {
	t.Helper()
	id := &mtlsv1alpha1.AgentIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: name},
		Spec:       mtlsv1alpha1.AgentIdentitySpec{ServiceAccountName: name},
	}
	if err := k8s.Create(t.Context(), id); err != nil {
		t.Fatal(err)
	}
}

// waitReplicasReady waits until both replicas of the chart's Deployment
// are ready.
func waitReplicasReady(ctx context.Context, k8s client.Client, timeout time.Duration) error {
	return cluster.Poll(ctx, timeout, "both replicas of the chart ready", func() error {
		dep := &appsv1.Deployment{}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: releaseNamespace, Name: release}, dep); err != nil {
			return err
		}
		if dep.Status.ReadyReplicas != 2 {
			return fmt.Errorf("%d of 2 replicas ready", dep.Status.ReadyReplicas)
		}
		return nil
	})
}

// dumpManagers logs the manager Pods' state and the end of their logs.
func dumpManagers(t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	for _, p := range managerPods(t, cs) {
		for _, st := range p.Status.ContainerStatuses {
			t.Logf("Pod %s on %s (IP %s): %s ready=%v restarts=%d state=%+v last=%+v", p.Name, p.Spec.NodeName, p.Status.PodIP, st.Name, st.Ready, st.RestartCount, st.State, st.LastTerminationState)
		}
		previous := len(p.Status.ContainerStatuses) > 0 && p.Status.ContainerStatuses[0].RestartCount > 0
		b, err := cs.CoreV1().Pods(releaseNamespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: "manager", Previous: previous}).DoRaw(context.Background())
		t.Logf("its log (previous container: %v; %v):\n%s", previous, err, tail(b, 3000))
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "orbidden") || strings.Contains(line, "Failed to watch") || strings.Contains(line, "failed to list") {
				t.Logf("%s", line)
				break
			}
		}
	}
}
