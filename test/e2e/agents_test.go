package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/cli/explain"
	"github.com/agentmesh/agentmesh/internal/cli/inspect"
	"github.com/agentmesh/agentmesh/internal/controller"
	"github.com/agentmesh/agentmesh/test/cluster"
)

func id(name string) string { return "spiffe://cluster.local/ns/agents/agent/" + name }

func identity(name string) *mtlsv1alpha1.AgentIdentity {
	return &mtlsv1alpha1.AgentIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: agentsNamespace, Name: name, Labels: map[string]string{"agentmesh.dev/role": name}},
		Spec: mtlsv1alpha1.AgentIdentitySpec{
			ServiceAccountName: name,
			// Short-lived on purpose: the test lives through leaf rotations.
			Duration: &metav1.Duration{Duration: time.Minute},
		},
	}
}

// appLabel names an agent's Deployment on its Pods.
const appLabel = "app.kubernetes.io/name"

// agentDeployment runs the example agent image with args as replicas Pods
// of a Deployment that opt in to the identity name (and run as its service
// account). hostNetwork: the node has no Pod network.
func agentDeployment(name string, replicas int32, args ...string) *appsv1.Deployment {
	labels := map[string]string{appLabel: name}
	podLabels := map[string]string{appLabel: name, mtlsv1alpha1.LabelIdentity: name}
	no, yes, uid := false, true, int64(65532)
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: agentsNamespace, Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels},
				Spec: corev1.PodSpec{
					ServiceAccountName: name,
					HostNetwork:        true,
					// Stop at once: the agents hold no state.
					TerminationGracePeriodSeconds: ptr(int64(1)),
					Containers: []corev1.Container{{
						Name: "agent", Image: agentImage, ImagePullPolicy: corev1.PullIfNotPresent, Args: args,
						SecurityContext: &corev1.SecurityContext{
							RunAsNonRoot: &yes, RunAsUser: &uid, AllowPrivilegeEscalation: &no, ReadOnlyRootFilesystem: &yes,
							Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
							SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
						},
					}},
				},
			},
		},
	}
}

func ptr[T any](v T) *T { return &v }

func workerPolicy(allowed ...string) *mtlsv1alpha1.AgentTrustPolicy {
	return &mtlsv1alpha1.AgentTrustPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: agentsNamespace, Name: "worker-ingress"},
		Spec: mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"agentmesh.dev/role": "worker"}},
			Ingress: []mtlsv1alpha1.IngressRule{{From: []mtlsv1alpha1.AgentPeer{{IdentitySelector: &mtlsv1alpha1.LabelSelector{
				MatchExpressions: []mtlsv1alpha1.LabelSelectorRequirement{{Key: "agentmesh.dev/role", Operator: "In", Values: allowed}},
			}}}}},
		},
	}
}

// TestEndToEnd runs three agents (planner, worker, outsider) as Pods and
// walks through the whole story in order: mTLS under a policy, a policy
// change, leaf rotations, other languages, a CA rotation and an emergency
// rotation. Each phase asserts on what the agents themselves saw.
func TestEndToEnd(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{"planner", "worker", "outsider"} {
		if err := k8s.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: agentsNamespace, Name: name}}); err != nil {
			t.Fatal(err)
		}
		if err := k8s.Create(ctx, identity(name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := k8s.Create(ctx, workerPolicy("planner")); err != nil {
		t.Fatal(err)
	}
	port, err := cluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("https://127.0.0.1:%d/", port)
	for _, d := range []*appsv1.Deployment{
		agentDeployment("worker", 1, "--listen", fmt.Sprintf("127.0.0.1:%d", port)),
		agentDeployment("planner", 1, "--call", url, "--interval", "200ms"),
		agentDeployment("outsider", 1, "--call", url, "--interval", "500ms"),
	} {
		if err := k8s.Create(ctx, d); err != nil {
			t.Fatalf("creating Deployment %s: %v", d.Name, err)
		}
	}
	// start is the planner's first successful call. The three Pods start in
	// whatever order their Secrets become ready, so the planner may call
	// before the worker listens; those refused connections are start-up, not
	// rotation, and every later phase counts failures from start on.
	var start time.Time

	t.Run("planner reaches worker, outsider is refused", func(t *testing.T) {
		cluster.EventuallyEvery(t, e2ePoll, 90*time.Second, "the planner's first successful calls", func() error {
			ok := 0
			for _, r := range results(t, "planner") {
				if r.OK && r.Reply.Server == id("worker") && r.Reply.Client == id("planner") {
					if ok == 0 {
						start = r.Time
					}
					ok++
				}
			}
			if ok < 10 {
				return fmt.Errorf("%d successful calls", ok)
			}
			return nil
		})
		early := 0
		for _, r := range results(t, "planner") {
			if !r.OK && r.Time.Before(start) {
				if early == 0 {
					t.Logf("planner: first call before the worker served, at %s: %s", r.Time.Format(time.TimeOnly), r.Error)
				}
				early++
			}
		}
		t.Logf("planner: %d calls before the worker served; counting failures from %s", early, start.Format(time.StampMilli))
		cluster.EventuallyEvery(t, e2ePoll, 20*time.Second, "the outsider is refused", func() error {
			rs := results(t, "outsider")
			if len(rs) < 5 {
				return fmt.Errorf("%d calls", len(rs))
			}
			for _, r := range rs {
				if r.OK {
					return fmt.Errorf("the outsider got through: %+v", r.Reply)
				}
			}
			return nil
		})
		// The worker says why, naming both identities and the policy.
		want := "agentmesh: ingress policy of " + id("worker") + " does not allow " + id("outsider") + " (policies: worker-ingress)"
		if log := logOf(t, podOf(t, "worker")); !strings.Contains(log, want) {
			t.Errorf("the worker's log does not contain %q:\n%s", want, tail(log, 2000))
		}
	})

	t.Run("kubectl agentmesh explains what the Pods saw", func(t *testing.T) {
		// The verdicts agree with the handshakes the agents' Pods made on
		// the node: the planner gets through, the outsider is refused.
		for _, tc := range []struct {
			from    string
			allowed bool
			code    int
		}{{"planner", true, 0}, {"outsider", false, 1}} {
			var v explain.Verdict
			code, out := plugin(t, &v, "explain", tc.from, "worker", "-n", agentsNamespace, "-o", "json")
			if code != tc.code || v.Allowed != tc.allowed || !v.Egress.Passes || v.Ingress.Passes != tc.allowed {
				t.Errorf("explain %s worker: exit %d, allowed %v (egress %v, ingress %v), want exit %d and allowed %v\n%s",
					tc.from, code, v.Allowed, v.Egress.Passes, v.Ingress.Passes, tc.code, tc.allowed, out)
			}
		}
		var s inspect.Summary
		code, out := plugin(t, &s, "inspect", "identity", "worker", "-n", agentsNamespace, "-o", "json")
		pod := podOf(t, "worker")
		if code != 0 || len(s.Pods) != 1 || s.Pods[0].Name != pod.Name || s.Pods[0].Phase != string(corev1.PodRunning) ||
			s.Pods[0].Node != cluster.NodeName || s.Pods[0].Injected != id("worker") || s.KeyMatches == nil || !*s.KeyMatches {
			t.Errorf("inspect identity worker: exit %d, pods %+v, key matches %v, want the running, injected Pod %s on %s\n%s",
				code, s.Pods, s.KeyMatches, pod.Name, cluster.NodeName, out)
		}
	})

	t.Run("the kubelet projected the files", func(t *testing.T) {
		pod := podOf(t, "planner")
		if pod.Spec.NodeName != cluster.NodeName {
			t.Errorf("the planner runs on %q", pod.Spec.NodeName)
		}
		dir := volumeDir(t, "planner")
		data, err := os.Readlink(filepath.Join(dir, "..data"))
		if err != nil || !strings.HasPrefix(data, "..20") {
			t.Errorf("%s/..data: %q, %v (the kubelet's atomic writer links it to a timestamped directory)", dir, data, err)
		}
		for _, f := range []string{"tls.crt", "tls.key", "bundle.pem", "policy.json"} {
			if target, err := os.Readlink(filepath.Join(dir, f)); err != nil || target != "..data/"+f {
				t.Errorf("%s: %q, %v", f, target, err)
			}
		}
		// The certificate the kubelet projected is the one in the Secret.
		sec := &corev1.Secret{}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: agentsNamespace, Name: "planner-tls"}, sec); err != nil {
			t.Fatal(err)
		}
		cluster.EventuallyEvery(t, e2ePoll, 2*kubeletSync, "the projected tls.crt matches the Secret", func() error {
			b, err := os.ReadFile(filepath.Join(dir, "tls.crt"))
			if err != nil {
				return err
			}
			if err := k8s.Get(ctx, types.NamespacedName{Namespace: agentsNamespace, Name: "planner-tls"}, sec); err != nil {
				return err
			}
			if !bytes.Equal(b, sec.Data["tls.crt"]) {
				return errors.New("differs")
			}
			return nil
		})
	})

	t.Run("a policy change lets the outsider in without restarts", func(t *testing.T) {
		uids := map[string]types.UID{}
		for _, name := range []string{"worker", "outsider"} {
			uids[name] = podOf(t, name).UID
		}
		p := &mtlsv1alpha1.AgentTrustPolicy{}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: agentsNamespace, Name: "worker-ingress"}, p); err != nil {
			t.Fatal(err)
		}
		p.Spec = workerPolicy("planner", "outsider").Spec
		if err := k8s.Update(ctx, p); err != nil {
			t.Fatal(err)
		}
		changed := time.Now()
		var admitted time.Time
		// The kubelet brings the new policy.json within a sync period.
		cluster.EventuallyEvery(t, e2ePoll, 3*kubeletSync, "the outsider gets through", func() error {
			for _, r := range results(t, "outsider") {
				if r.OK && r.Time.After(changed) {
					admitted = r.Time
					return nil
				}
			}
			return fmt.Errorf("no success since the change")
		})
		t.Logf("the outsider got through %s after the policy change", admitted.Sub(changed).Round(time.Millisecond))
		for name, uid := range uids {
			pod := podOf(t, name)
			if pod.UID != uid || len(pod.Status.ContainerStatuses) != 1 || pod.Status.ContainerStatuses[0].RestartCount != 0 {
				t.Errorf("%s was restarted: %+v", name, pod.Status.ContainerStatuses)
			}
		}
	})

	t.Run("leaf rotations fail no request", func(t *testing.T) {
		// Certificates of one minute are renewed about every 30s: wait for two
		// renewals of both the worker and the planner.
		serials := func() (server, client map[string]bool) {
			server, client = map[string]bool{}, map[string]bool{}
			for _, r := range results(t, "planner") {
				if r.OK {
					server[r.Reply.ServerSerial] = true
					client[r.Reply.ClientSerial] = true
				}
			}
			return server, client
		}
		cluster.EventuallyEvery(t, e2ePoll, 150*time.Second, "two rotations of each side", func() error {
			s, c := serials()
			if len(s) < 3 || len(c) < 3 {
				return fmt.Errorf("worker serials seen %d, planner serials seen %d", len(s), len(c))
			}
			return nil
		})
		s, c := serials()
		t.Logf("the planner saw %d worker certificates; the worker saw %d planner certificates", len(s), len(c))
		assertNoFailures(t, "planner", start)
	})

	t.Run("python and openssl read the files the kubelet wrote", func(t *testing.T) {
		dir := volumeDir(t, "planner")
		out := run(t, "python3", filepath.Join(repoRoot(t), "test", "e2e", "testdata", "client.py"), url,
			filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "bundle.pem"))
		if !strings.Contains(out, "server spiffe ID: "+id("worker")) || !strings.Contains(out, `"client": "`+id("planner")+`"`) {
			t.Errorf("python client output:\n%s", out)
		}
		sclient := exec.Command("openssl", "s_client", "-connect", fmt.Sprintf("127.0.0.1:%d", port), "-tls1_3", "-quiet",
			"-cert", filepath.Join(dir, "tls.crt"), "-key", filepath.Join(dir, "tls.key"),
			"-CAfile", filepath.Join(dir, "bundle.pem"), "-verify_return_error")
		sclient.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
		b, err := sclient.CombinedOutput()
		if err != nil || !strings.Contains(string(b), `"server":"`+id("worker")+`"`) {
			t.Errorf("openssl s_client: %v\n%s", err, b)
		}

		// openssl s_server with the worker's files, called by a Go agent
		// with the planner's files.
		wdir := volumeDir(t, "worker")
		sport, err := cluster.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		server := exec.Command("openssl", "s_server", "-accept", fmt.Sprintf("127.0.0.1:%d", sport), "-www", "-tls1_3",
			"-cert", filepath.Join(wdir, "tls.crt"), "-key", filepath.Join(wdir, "tls.key"),
			"-CAfile", filepath.Join(wdir, "bundle.pem"), "-Verify", "1", "-verify_return_error")
		var serverOut bytes.Buffer
		server.Stdout, server.Stderr = &serverOut, &serverOut
		if err := server.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = server.Process.Kill(); _ = server.Wait() }()
		time.Sleep(300 * time.Millisecond)
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		call := exec.CommandContext(callCtx, agentBin, "--call", fmt.Sprintf("https://127.0.0.1:%d/", sport), "--interval", "100ms")
		call.Env = append(os.Environ(),
			"AGENTMESH_SPIFFE_ID="+id("planner"),
			"AGENTMESH_CERT_FILE="+filepath.Join(dir, "tls.crt"), "AGENTMESH_KEY_FILE="+filepath.Join(dir, "tls.key"),
			"AGENTMESH_BUNDLE_FILE="+filepath.Join(dir, "bundle.pem"), "AGENTMESH_POLICY_FILE="+filepath.Join(dir, "policy.json"))
		stdout, err := call.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := call.Start(); err != nil {
			t.Fatal(err)
		}
		var first Result
		if err := json.NewDecoder(stdout).Decode(&first); err != nil || !first.OK {
			t.Errorf("the Go agent calling openssl s_server: %+v (%v)\n%s", first, err, serverOut.String())
		}
		cancel()
		_ = call.Wait()
	})

	// An MCP pair (the official MCP Go SDK on both sides, pkg/agenttls's
	// MCPHandler in the server): the toolbox grants the assistant search,
	// then lookup until grantExpiry; delete_records never. The pair then
	// lives through the CA rotation and the grant's expiry.
	var mcpStart, lookupStart, grantExpiry time.Time
	mcpPort, err := cluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	t.Run("MCP tools are granted per peer, in the agent", func(t *testing.T) {
		for _, name := range []string{"toolbox", "assistant"} {
			if err := k8s.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: agentsNamespace, Name: name}}); err != nil {
				t.Fatal(err)
			}
			if err := k8s.Create(ctx, identity(name)); err != nil {
				t.Fatal(err)
			}
		}
		pol := toolboxPolicy(mcpRule("search"))
		if err := k8s.Create(ctx, pol); err != nil {
			t.Fatal(err)
		}
		for _, d := range []*appsv1.Deployment{
			agentDeployment("toolbox", 1, "--mcp-listen", fmt.Sprintf("127.0.0.1:%d", mcpPort)),
			agentDeployment("assistant", 1, "--mcp-call", fmt.Sprintf("https://127.0.0.1:%d/mcp", mcpPort),
				"--tools", "search,lookup,delete_records", "--interval", "300ms"),
		} {
			if err := k8s.Create(ctx, d); err != nil {
				t.Fatalf("creating Deployment %s: %v", d.Name, err)
			}
		}
		cluster.EventuallyEvery(t, e2ePoll, 90*time.Second, "the assistant's first tool calls", func() error {
			mcpStart = time.Time{}
			ok := 0
			for _, r := range results(t, "assistant") {
				if r.Tool == "search" && r.OK && r.Reply.Server == id("toolbox") && r.Reply.Client == id("assistant") {
					if ok == 0 {
						mcpStart = r.Time
					}
					ok++
				}
			}
			if ok < 5 {
				return fmt.Errorf("%d successful search calls", ok)
			}
			return nil
		})
		rs := results(t, "assistant")
		for _, r := range rs {
			if r.Tool == "" && r.OK && !slices.Equal(r.Listed, []string{"search"}) {
				t.Errorf("tools/list showed the assistant %v, want [search]", r.Listed)
			}
		}
		for _, tool := range []string{"lookup", "delete_records"} {
			refused := 0
			for _, r := range rs {
				if r.Tool != tool || r.Time.Before(mcpStart) {
					continue
				}
				want := `MCP tool "` + tool + `"`
				if r.OK || !strings.Contains(r.Error, want) || !strings.Contains(r.Error, "toolbox-tools") {
					t.Errorf("%s: ok %v, error %q; want a refusal naming %s and the policy", tool, r.OK, r.Error, want)
				}
				refused++
			}
			if refused == 0 {
				t.Errorf("no %s call since %s", tool, mcpStart.Format(time.StampMilli))
			}
		}
		// The toolbox's decision log has the refusal, naming both IDs.
		log := logOf(t, podOf(t, "toolbox"))
		for _, want := range []string{"request refused by policy", "peer=" + id("assistant"), "tool=delete_records", "spiffeID=" + id("toolbox")} {
			if !strings.Contains(log, want) {
				t.Errorf("the toolbox's log does not contain %q:\n%s", want, tail(log, 2000))
			}
		}

		// A time-boxed grant: lookup, until grantExpiry. The kubelet brings
		// it within a sync period; its end needs nobody.
		cluster.EventuallyEvery(t, e2ePoll, 10*time.Second, "grant lookup", func() error {
			if err := k8s.Get(ctx, client.ObjectKeyFromObject(pol), pol); err != nil {
				return err
			}
			granted := time.Now()
			grantExpiry = granted.Add(3*kubeletSync + 20*time.Second).Truncate(time.Second)
			lookup := mcpRule("lookup")
			lookup.ExpiresAt = &metav1.Time{Time: grantExpiry}
			pol.Spec.Ingress = append(pol.Spec.Ingress[:1], lookup)
			return k8s.Update(ctx, pol)
		})
		granted := time.Now()
		cluster.EventuallyEvery(t, e2ePoll, 3*kubeletSync, "the assistant may call lookup", func() error {
			for _, r := range results(t, "assistant") {
				if r.Tool == "lookup" && r.OK {
					lookupStart = r.Time
					return nil
				}
			}
			return errors.New("no successful lookup call")
		})
		t.Logf("the assistant could call lookup %s after the grant; it expires at %s",
			lookupStart.Sub(granted).Round(time.Millisecond), grantExpiry.Format(time.TimeOnly))
	})

	t.Run("the CA rotates under traffic without a failed request", func(t *testing.T) {
		before := caStatus(t).Active.Serial
		annotateCA(t, ca.RotateNow)
		rotated := waitRotation(t, before)
		t.Logf("rotated from CA %s to %s", before, rotated)
		// Let the last bundles settle, then check every call since the start.
		time.Sleep(3 * time.Second)
		assertNoFailures(t, "planner", start)
		assertNoFailures(t, "outsider", time.Now().Add(-20*time.Second))
		// Every allowed tool call of the MCP pair succeeded: search since
		// the first, lookup from the first until its grant expired.
		assertNoToolFailures(t, "search", mcpStart, time.Now())
		assertNoToolFailures(t, "lookup", lookupStart, grantExpiry.Add(-time.Second))
	})

	t.Run("an MCP grant ends at its expiresAt", func(t *testing.T) {
		time.Sleep(time.Until(grantExpiry.Add(3 * time.Second)))
		var firstRefused time.Time
		for _, r := range results(t, "assistant") {
			if r.Tool != "lookup" || r.Time.Before(grantExpiry) {
				continue
			}
			// A call that started at or after grantExpiry was decided after it.
			if r.OK {
				t.Errorf("lookup at %s, after the grant expired at %s, succeeded", r.Time.Format(time.StampMilli), grantExpiry.Format(time.StampMilli))
			} else if firstRefused.IsZero() && strings.Contains(r.Error, `MCP tool "lookup"`) {
				firstRefused = r.Time
			}
		}
		if firstRefused.IsZero() || firstRefused.Sub(grantExpiry) > 2*time.Second {
			t.Errorf("the first refused lookup came at %s, the grant expired at %s", firstRefused.Format(time.StampMilli), grantExpiry.Format(time.StampMilli))
		}
		t.Logf("the first lookup refused %s after the grant expired", firstRefused.Sub(grantExpiry).Round(time.Millisecond))
		// The operator recompiled the toolbox's policy.json without it.
		cluster.EventuallyEvery(t, e2ePoll, 10*time.Second, "the expired grant leaves policy.json", func() error {
			cm := &corev1.ConfigMap{}
			ti := identity("toolbox")
			if err := k8s.Get(ctx, types.NamespacedName{Namespace: agentsNamespace, Name: ti.TrustConfigMapName()}, cm); err != nil {
				return err
			}
			if p := cm.Data["policy.json"]; strings.Contains(p, `"lookup"`) || !strings.Contains(p, `"search"`) {
				return fmt.Errorf("policy.json: %s", p)
			}
			return nil
		})
		assertNoToolFailures(t, "search", mcpStart, time.Now())
		sessions := 0
		for _, r := range results(t, "assistant") {
			if r.Tool == "" && r.OK {
				sessions++
			}
		}
		t.Logf("the assistant opened %d MCP session(s)", sessions)
	})

	t.Run("an emergency rotation stops trusting the compromised CA", func(t *testing.T) {
		dir := volumeDir(t, "planner")
		oldCert, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
		if err != nil {
			t.Fatal(err)
		}
		// The old leaf is accepted before the rotation.
		if err := handshake(port, oldCert); err != nil {
			t.Fatalf("the current leaf is refused before the rotation: %v", err)
		}
		compromised := caStatus(t).Active.Serial
		emergencyStart := time.Now()
		annotateCA(t, ca.RotateCompromised)
		rotated := waitRotation(t, compromised)
		t.Logf("emergency rotation from CA %s to %s took %s", compromised, rotated, time.Since(emergencyStart).Round(time.Second))
		st := caStatus(t)
		if st.Reason != "" || len(st.Retired) != 0 {
			t.Errorf("after the emergency rotation: %+v", st)
		}
		cluster.EventuallyEvery(t, e2ePoll, 3*kubeletSync, "the worker refuses a leaf of the compromised CA", func() error {
			if err := handshake(port, oldCert); err == nil {
				return fmt.Errorf("the worker still accepts a leaf of the compromised CA")
			}
			return nil
		})
		failed := failures(t, "planner", emergencyStart)
		t.Logf("failed planner requests during the emergency rotation: %d", len(failed))
	})

	t.Run("per-pod keys in PodCertificate mode", func(t *testing.T) {
		// After the CA rotations: a rotation waits for Pod certificates to be
		// refreshed by the kubelet (or to expire), at least an hour here.
		for _, name := range []string{"edge-server", "edge-client"} {
			if err := k8s.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: agentsNamespace, Name: name}}); err != nil {
				t.Fatal(err)
			}
			pc := identity(name)
			pc.Spec.KeyDelivery = mtlsv1alpha1.KeyDeliveryPodCertificate
			pc.Spec.Duration = &metav1.Duration{Duration: time.Hour}
			if err := k8s.Create(ctx, pc); err != nil {
				t.Fatal(err)
			}
		}
		pol := workerPolicy("edge-client")
		pol.Name = "edge-server-ingress"
		pol.Spec.AgentSelector.MatchLabels = map[string]string{"agentmesh.dev/role": "edge-server"}
		if err := k8s.Create(ctx, pol); err != nil {
			t.Fatal(err)
		}
		eport, err := cluster.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		eurl := fmt.Sprintf("https://127.0.0.1:%d/", eport)
		server := agentDeployment("edge-server", 1, "--listen", fmt.Sprintf("127.0.0.1:%d", eport))
		clients := agentDeployment("edge-client", 2, "--call", eurl, "--interval", "300ms")
		for _, d := range []*appsv1.Deployment{server, clients} {
			if err := k8s.Create(ctx, d); err != nil {
				t.Fatalf("creating Deployment %s: %v", d.Name, err)
			}
		}
		var pods []corev1.Pod
		cluster.EventuallyEvery(t, e2ePoll, 60*time.Second, "two edge-client Pods", func() error {
			if pods = podsOf(t, "edge-client"); len(pods) != 2 {
				return fmt.Errorf("%d Pods", len(pods))
			}
			return nil
		})
		var src *corev1.PodCertificateProjection
		for _, v := range pods[0].Spec.Volumes {
			if v.Name == mtlsv1alpha1.VolumeName && v.Projected != nil {
				src = v.Projected.Sources[0].PodCertificate
			}
		}
		if src == nil || src.SignerName != mtlsv1alpha1.PodCertificateSignerName || src.KeyType != "ECDSAP256" {
			t.Fatalf("the Pod was not injected with a podCertificate projection: %+v", pods[0].Spec.Volumes)
		}
		serials := map[string]string{}
		keys := map[string][]byte{}
		for _, p := range pods {
			cluster.EventuallyEvery(t, e2ePoll, 90*time.Second, p.Name+" reaches edge-server", func() error {
				for _, r := range parseResults(logOf(t, &p)) {
					if r.OK && r.Reply.Server == id("edge-server") && r.Reply.Client == id("edge-client") {
						serials[p.Name] = r.Reply.ClientSerial
						return nil
					}
				}
				return fmt.Errorf("no successful call")
			})
			// The kubelet generated the key and wrote it with the chain
			// agentmesh signed.
			key, err := os.ReadFile(filepath.Join(env.ProjectedVolumeDir(&p, mtlsv1alpha1.VolumeName), "tls.key"))
			if err != nil || !bytes.Contains(key, []byte("PRIVATE KEY")) {
				t.Errorf("%s: the kubelet's key file: %v", p.Name, err)
			}
			keys[p.Name] = key
		}
		if serials[pods[0].Name] == serials[pods[1].Name] {
			t.Error("the two replicas presented the same certificate")
		}
		if bytes.Equal(keys[pods[0].Name], keys[pods[1].Name]) {
			t.Error("the two replicas have the same key")
		}
		reqs := &certificatesv1.PodCertificateRequestList{}
		if err := k8s.List(ctx, reqs, client.InNamespace(agentsNamespace)); err != nil {
			t.Fatal(err)
		}
		byPod := map[string]bool{}
		for _, r := range reqs.Items {
			if r.Spec.SignerName == mtlsv1alpha1.PodCertificateSignerName && r.Spec.NodeName == cluster.NodeName {
				byPod[r.Spec.PodName] = true
			}
		}
		if !byPod[pods[0].Name] || !byPod[pods[1].Name] {
			t.Errorf("the kubelet's PodCertificateRequests name the Pods %v, want %s and %s", byPod, pods[0].Name, pods[1].Name)
		}
		for _, name := range []string{"edge-client-tls", "edge-server-tls"} {
			if err := k8s.Get(ctx, types.NamespacedName{Namespace: agentsNamespace, Name: name}, &corev1.Secret{}); err == nil {
				t.Errorf("Secret %s exists in PodCertificate mode", name)
			}
		}
		cluster.EventuallyEvery(t, e2ePoll, 20*time.Second, "edge-client counts its Pod certificates", func() error {
			i := &mtlsv1alpha1.AgentIdentity{}
			if err := k8s.Get(ctx, types.NamespacedName{Namespace: agentsNamespace, Name: "edge-client"}, i); err != nil {
				return err
			}
			if i.Status.PodCertificates != 2 || !meta.IsStatusConditionTrue(i.Status.Conditions, mtlsv1alpha1.ConditionReady) {
				return fmt.Errorf("podCertificates %d", i.Status.PodCertificates)
			}
			return nil
		})
	})

	t.Run("no private key in the manager's log", func(t *testing.T) {
		// Every manager container of the chart that ran, from the Pods'
		// logs as the kubelet kept them.
		log := []byte(managerLogs(ctx))
		if !bytes.Contains(log, []byte("Starting workers")) {
			t.Fatalf("the manager's log does not look whole:\n%s", tail(string(log), 2000))
		}
		secrets := &corev1.SecretList{}
		if err := k8s.List(ctx, secrets); err != nil {
			t.Fatal(err)
		}
		checked := 0
		for _, s := range secrets.Items {
			key := s.Data["tls.key"]
			if len(key) == 0 {
				continue
			}
			checked++
			for _, line := range strings.Split(string(key), "\n") {
				if len(line) >= 40 && !strings.HasPrefix(line, "-----") && bytes.Contains(log, []byte(line[:40])) {
					t.Errorf("key material of Secret %s/%s is in the manager's log", s.Namespace, s.Name)
				}
			}
			if bytes.Contains(log, []byte(base64.StdEncoding.EncodeToString(key)[:60])) {
				t.Errorf("the base64 of Secret %s/%s's key is in the manager's log", s.Namespace, s.Name)
			}
		}
		if checked < 4 || bytes.Contains(log, []byte("PRIVATE KEY")) {
			t.Errorf("checked %d keys; PRIVATE KEY in log: %v", checked, bytes.Contains(log, []byte("PRIVATE KEY")))
		}
	})
}

func failures(t *testing.T, pod string, since time.Time) []Result {
	var out []Result
	for _, r := range results(t, pod) {
		if !r.OK && r.Time.After(since) {
			out = append(out, r)
		}
	}
	return out
}

func assertNoFailures(t *testing.T, pod string, since time.Time) {
	t.Helper()
	rs := results(t, pod)
	failed := failures(t, pod, since)
	kept, fresh := 0, 0
	for _, r := range rs {
		if r.OK && r.Conn == "kept" {
			kept++
		} else if r.OK {
			fresh++
		}
	}
	t.Logf("%s: %d requests on a kept connection and %d on new connections succeeded, %d failed since %s",
		pod, kept, fresh, len(failed), since.Format(time.TimeOnly))
	for i, f := range failed {
		if i == 5 {
			break
		}
		t.Errorf("%s: failed request at %s on a %s connection: %s", pod, f.Time.Format(time.TimeOnly), f.Conn, f.Error)
	}
}

// toolboxPolicy is the toolbox's AgentTrustPolicy with rules.
func toolboxPolicy(rules ...mtlsv1alpha1.IngressRule) *mtlsv1alpha1.AgentTrustPolicy {
	return &mtlsv1alpha1.AgentTrustPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: agentsNamespace, Name: "toolbox-tools"},
		Spec: mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"agentmesh.dev/role": "toolbox"}},
			Ingress:       rules,
		},
	}
}

// mcpRule lets the assistant call tools.
func mcpRule(tools ...string) mtlsv1alpha1.IngressRule {
	return mtlsv1alpha1.IngressRule{
		From:      []mtlsv1alpha1.AgentPeer{{IdentitySelector: &mtlsv1alpha1.LabelSelector{MatchLabels: map[string]string{"agentmesh.dev/role": "assistant"}}}},
		Protocols: &mtlsv1alpha1.ProtocolRules{MCP: &mtlsv1alpha1.MCPRule{Tools: tools}},
	}
}

// assertNoToolFailures checks the assistant's calls of tool that started
// in [from, until]: all of them succeeded.
func assertNoToolFailures(t *testing.T, tool string, from, until time.Time) {
	t.Helper()
	ok, failed := 0, 0
	for _, r := range results(t, "assistant") {
		if r.Tool != tool || r.Time.Before(from) || r.Time.After(until) {
			continue
		}
		if r.OK {
			ok++
			continue
		}
		if failed++; failed <= 5 {
			t.Errorf("assistant: %s at %s failed: %s", tool, r.Time.Format(time.StampMilli), r.Error)
		}
	}
	t.Logf("assistant: %d %s calls succeeded, %d failed from %s to %s", ok, tool, failed, from.Format(time.TimeOnly), until.Format(time.TimeOnly))
	if ok == 0 {
		t.Errorf("assistant: no %s call from %s to %s", tool, from.Format(time.TimeOnly), until.Format(time.TimeOnly))
	}
}

func caStatus(t *testing.T) controller.RotationStatus {
	t.Helper()
	cm := &corev1.ConfigMap{}
	var s controller.RotationStatus
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: operatorNamespace, Name: controller.CAStatusConfigMapName}, cm); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(cm.Data["status.json"]), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func annotateCA(t *testing.T, value string) {
	t.Helper()
	cluster.EventuallyEvery(t, e2ePoll, 10*time.Second, "annotate the CA Secret", func() error {
		s := &corev1.Secret{}
		if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: operatorNamespace, Name: "agentmesh-ca"}, s); err != nil {
			return err
		}
		s.Annotations[ca.AnnotationRotate] = value
		return k8s.Update(context.Background(), s)
	})
}

// waitRotation waits for a rotation away from CA from to complete, and
// checks that every identity is Ready on the new CA.
func waitRotation(t *testing.T, from string) string {
	t.Helper()
	var to string
	cluster.EventuallyEvery(t, e2ePoll, 180*time.Second, "the rotation completes", func() error {
		s := caStatus(t)
		if s.Phase != ca.PhaseStable || s.Active.Serial == from || s.Progress.IdentitiesOnActive != s.Progress.Identities ||
			s.Progress.BundlesCurrent != s.Progress.Bundles || len(s.Retired) != 0 {
			return fmt.Errorf("%s: %+v", s.Phase, s.Progress)
		}
		to = s.Active.Serial
		return nil
	})
	ids := &mtlsv1alpha1.AgentIdentityList{}
	if err := k8s.List(context.Background(), ids, client.InNamespace(agentsNamespace)); err != nil {
		t.Fatal(err)
	}
	for _, i := range ids.Items {
		if !meta.IsStatusConditionTrue(i.Status.Conditions, mtlsv1alpha1.ConditionReady) || i.Status.CASerial != to {
			t.Errorf("%s: Ready=%v on CA %s, want %s", i.Name, meta.IsStatusConditionTrue(i.Status.Conditions, mtlsv1alpha1.ConditionReady), i.Status.CASerial, to)
		}
	}
	return to
}

// handshake connects to the worker with a certificate, as any TLS client
// would, and reports whether the worker accepted it.
func handshake(port int, cert tls.Certificate) error {
	conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{
		Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, //nolint:gosec // the test checks the server's verdict on the client
	})
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	// In TLS 1.3 the server's verdict on the client certificate arrives
	// with the first read.
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	_, err = conn.Read(buf)
	return err
}

// plugin runs kubectl-agentmesh against the cluster and decodes its JSON
// output into v; it returns the exit code and the output.
func plugin(t *testing.T, v any, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code, stdout, stderr := cluster.RunPlugin(ctx, kubeconfig, args...)
	if err := json.Unmarshal([]byte(stdout), v); err != nil {
		t.Fatalf("kubectl agentmesh %v: exit %d, output not JSON: %v\n%s%s", args, code, err, stdout, stderr)
	}
	return code, stdout + stderr
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func repoRoot(t *testing.T) string {
	t.Helper()
	r, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
