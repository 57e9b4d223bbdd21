package webhook_test

import (
	"context"
	"encoding/json"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/agentid"
	"github.com/agentmesh/agentmesh/internal/identity"
	"github.com/agentmesh/agentmesh/internal/operator"
	"github.com/agentmesh/agentmesh/internal/webhook"
)

// FuzzPodInjector sends random Pods labelled for the identity agents/worker
// (Secret or PodCertificate key delivery) through the injector's handler,
// as the API server would (the Pod serialized as JSON), without a cluster:
// `make fuzz` runs it for long, `make test` for a few seconds, and both
// skip the suite's API server (TestMain, with -run '^$'). Invariants:
//   - no panic;
//   - a denial carries no patch;
//   - the JSON patch applies (with the JSON patch library the API server
//     uses) and yields exactly the Pod that Inject makes, with the volume,
//     the mount and the AGENTMESH_* variables in every container;
//   - a second injection of the patched Pod changes nothing (allowed, no
//     patch), and neither does Inject on it.
func FuzzPodInjector(f *testing.F) {
	add := func(mode uint8, mutate ...func(*corev1.Pod)) {
		p := labelledPod("agents", "worker-0", "worker", "worker")
		for _, m := range mutate {
			m(p)
		}
		b, err := json.Marshal(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, mode)
	}
	add(0)
	add(1)
	add(0, func(p *corev1.Pod) {
		p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "busybox", Env: []corev1.EnvVar{{Name: "X", Value: "y"}}}}
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "sidecar", Image: "proxy",
			VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}})
		p.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
		p.Annotations = map[string]string{"a/b~c": "d", mtlsv1alpha1.AnnotationInjected: "spiffe://evil/x"}
	})
	add(0, func(p *corev1.Pod) { // already injected, with paths spelled otherwise
		for i := range p.Spec.Containers {
			p.Spec.Containers[i].VolumeMounts = []corev1.VolumeMount{{Name: mtlsv1alpha1.VolumeName, MountPath: "/var/run//agentmesh/", ReadOnly: true}}
			p.Spec.Containers[i].Env = []corev1.EnvVar{{Name: mtlsv1alpha1.EnvCertFile, Value: "/var/run/agentmesh/./tls.crt"}}
		}
	})
	add(1, func(p *corev1.Pod) { // a conflicting mount under the path
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "x", MountPath: "/var/run/agentmesh/tls.key"}}
	})
	add(0, func(p *corev1.Pod) { p.Spec.ServiceAccountName = "planner" })

	scheme := operator.NewScheme()
	identities := []*mtlsv1alpha1.AgentIdentity{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: "worker"}, Spec: mtlsv1alpha1.AgentIdentitySpec{ServiceAccountName: "worker"}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: "worker"}, Spec: mtlsv1alpha1.AgentIdentitySpec{ServiceAccountName: "worker",
			KeyDelivery: mtlsv1alpha1.KeyDeliveryPodCertificate}},
	}
	ctx := context.Background()

	f.Fuzz(func(t *testing.T, podJSON []byte, mode uint8) {
		pod := &corev1.Pod{}
		if json.Unmarshal(podJSON, pod) != nil {
			return
		}
		// What the API server sends: the Pod as it serializes it, in the
		// namespace of the request, labelled for the identity.
		pod.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}
		pod.Namespace = "agents"
		if pod.Labels == nil {
			pod.Labels = map[string]string{}
		}
		pod.Labels[mtlsv1alpha1.LabelIdentity] = "worker"
		raw, err := json.Marshal(pod)
		if err != nil {
			return
		}
		id := identities[int(mode)%len(identities)]
		h := &webhook.PodInjector{Reader: oneIdentity{id}, Decoder: admission.NewDecoder(scheme), TrustDomain: td, OperatorNamespace: operatorNamespace}
		resp := h.Handle(ctx, podRequest(raw))
		if !resp.Allowed {
			if len(resp.Patches) > 0 {
				t.Fatalf("denied (%v) with a patch", resp.Result)
			}
			return
		}

		// What Inject makes of the Pod as the handler decodes it.
		want := &corev1.Pod{}
		if err := json.Unmarshal(raw, want); err != nil {
			t.Fatal(err)
		}
		target := targetOf(t, id)
		if _, err := webhook.Inject(want, target); err != nil {
			t.Fatalf("the handler allowed a Pod that Inject refuses: %v", err)
		}

		patched := raw
		if len(resp.Patches) > 0 {
			ops, err := json.Marshal(resp.Patches)
			if err != nil {
				t.Fatal(err)
			}
			patch, err := jsonpatch.DecodePatch(ops)
			if err != nil {
				t.Fatalf("the patch does not decode: %v\n%s", err, ops)
			}
			if patched, err = patch.Apply(raw); err != nil {
				t.Fatalf("the patch does not apply: %v\n%s", err, ops)
			}
		}
		got := &corev1.Pod{}
		if err := json.Unmarshal(patched, got); err != nil {
			t.Fatalf("the patched Pod does not decode: %v", err)
		}
		if !equality.Semantic.DeepEqual(got, want) {
			t.Fatalf("the patched Pod is not what Inject makes:\ngot  %s\nwant %s", patched, mustJSON(t, want))
		}
		checkInjected(t, got, target)

		// A second invocation (the API server reinvokes webhooks) changes
		// nothing.
		again := h.Handle(ctx, podRequest(mustJSON(t, got)))
		if !again.Allowed || len(again.Patches) > 0 {
			t.Fatalf("a second injection is not a no-op: allowed %v, %d patch operations (%v)", again.Allowed, len(again.Patches), again.Result)
		}
		if changed, err := webhook.Inject(got.DeepCopy(), target); changed || err != nil {
			t.Fatalf("Inject on the injected Pod: changed %v, error %v", changed, err)
		}
	})
}

func podRequest(raw []byte) admission.Request {
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID: "1", Operation: admissionv1.Create, Namespace: "agents",
		Kind:   metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Object: runtime.RawExtension{Raw: raw},
	}}
}

// targetOf is the Target the handler builds for the identity.
func targetOf(t *testing.T, id *mtlsv1alpha1.AgentIdentity) webhook.Target {
	t.Helper()
	sid, err := agentid.ID(td, id.Namespace, id.Name)
	if err != nil {
		t.Fatal(err)
	}
	target := webhook.Target{
		IdentityName:       id.Name,
		SPIFFEID:           sid.String(),
		SecretName:         id.EffectiveSecretName(),
		TrustConfigMapName: id.Name + mtlsv1alpha1.TrustConfigMapSuffix,
		ServiceAccountName: id.EffectiveServiceAccountName(),
	}
	if id.Spec.KeyDelivery == mtlsv1alpha1.KeyDeliveryPodCertificate {
		req, err := identity.NewRequest(td, id)
		if err != nil {
			t.Fatal(err)
		}
		target.SecretName = ""
		target.PodCertificate = &webhook.PodCertificateTarget{
			KeyType:              identity.PodCertificateKeyType(req),
			MaxExpirationSeconds: identity.PodCertificateMaxExpirationSeconds(req),
		}
	}
	return target
}

// checkInjected: one agentmesh volume; in every container the read-only
// mount and every AGENTMESH_* variable.
func checkInjected(t *testing.T, p *corev1.Pod, target webhook.Target) {
	t.Helper()
	vols := 0
	for _, v := range p.Spec.Volumes {
		if v.Name == mtlsv1alpha1.VolumeName {
			vols++
		}
	}
	if vols == 0 {
		t.Fatal("no agentmesh volume")
	}
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		mounted := false
		for _, m := range c.VolumeMounts {
			mounted = mounted || (m.Name == mtlsv1alpha1.VolumeName && m.ReadOnly)
		}
		if !mounted {
			t.Fatalf("container %q does not mount the identity volume read-only", c.Name)
		}
		for _, want := range target.Env() {
			found := false
			for _, e := range c.Env {
				found = found || e.Name == want.Name
			}
			if !found {
				t.Fatalf("container %q lacks %s", c.Name, want.Name)
			}
		}
	}
	if p.Annotations[mtlsv1alpha1.AnnotationInjected] != target.SPIFFEID {
		t.Fatalf("annotation %q", p.Annotations[mtlsv1alpha1.AnnotationInjected])
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
