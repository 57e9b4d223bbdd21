package webhook

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

var target = Target{
	IdentityName:       "worker",
	SPIFFEID:           "spiffe://cluster.local/ns/agents/agent/worker",
	SecretName:         "worker-tls",
	TrustConfigMapName: "worker-trust",
	ServiceAccountName: "worker",
}

func podWith(mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "w", Namespace: "agents", Labels: map[string]string{mtlsv1alpha1.LabelIdentity: "worker"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: "worker",
			Containers:         []corev1.Container{{Name: "agent", Image: "agent"}},
		},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

// assertInjected checks the volume, and the mount and variables in every
// container.
func assertInjected(t *testing.T, p *corev1.Pod) {
	t.Helper()
	var vols int
	for _, v := range p.Spec.Volumes {
		if v.Name == mtlsv1alpha1.VolumeName {
			vols++
			src := v.Projected.Sources
			if len(src) != 2 || src[0].Secret.Name != "worker-tls" || src[1].ConfigMap.Name != "worker-trust" ||
				src[0].Secret.Items[0].Path != "tls.crt" || src[0].Secret.Items[1].Path != "tls.key" ||
				src[1].ConfigMap.Items[0].Path != "bundle.pem" || src[1].ConfigMap.Items[1].Path != "policy.json" {
				t.Errorf("volume sources %+v", src)
			}
		}
	}
	if vols != 1 {
		t.Errorf("%d agentmesh volumes, want 1", vols)
	}
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		mounts := 0
		for _, m := range c.VolumeMounts {
			if m.Name == mtlsv1alpha1.VolumeName {
				mounts++
				if m.MountPath != "/var/run/agentmesh" || !m.ReadOnly {
					t.Errorf("container %s mount %+v", c.Name, m)
				}
			}
		}
		if mounts != 1 {
			t.Errorf("container %s has %d agentmesh mounts", c.Name, mounts)
		}
		want := map[string]string{
			"AGENTMESH_SPIFFE_ID":   target.SPIFFEID,
			"AGENTMESH_CERT_FILE":   "/var/run/agentmesh/tls.crt",
			"AGENTMESH_KEY_FILE":    "/var/run/agentmesh/tls.key",
			"AGENTMESH_BUNDLE_FILE": "/var/run/agentmesh/bundle.pem",
			"AGENTMESH_POLICY_FILE": "/var/run/agentmesh/policy.json",
		}
		for _, e := range c.Env {
			if w, ok := want[e.Name]; ok {
				if e.Value != w {
					t.Errorf("container %s %s=%q, want %q", c.Name, e.Name, e.Value, w)
				}
				delete(want, e.Name)
			}
		}
		if len(want) != 0 {
			t.Errorf("container %s lacks %v", c.Name, want)
		}
	}
	if p.Annotations[mtlsv1alpha1.AnnotationInjected] != target.SPIFFEID {
		t.Errorf("annotation %v", p.Annotations)
	}
}

func TestInject(t *testing.T) {
	cases := []struct {
		name     string
		pod      *corev1.Pod
		target   Target
		wantErr  string
		check    func(t *testing.T, p *corev1.Pod)
		noChange bool
		// asWritten: the Pod keeps an equivalent, uncleaned path the
		// injector would have written cleaned; check says what holds.
		asWritten bool
	}{
		{name: "one container", pod: podWith(), target: target},
		{name: "init and several containers", target: target, pod: podWith(func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "init"}}
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "sidecar"})
		})},
		{name: "existing volumes, mounts and env are kept", target: target, pod: podWith(func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "MODEL", Value: "large"}}
		}), check: func(t *testing.T, p *corev1.Pod) {
			c := p.Spec.Containers[0]
			if p.Spec.Volumes[0].Name != "data" || c.VolumeMounts[0].Name != "data" || c.Env[0].Name != "MODEL" || len(c.Env) != 6 {
				t.Errorf("existing entries disturbed: %+v", c)
			}
		}},
		{name: "default service account", target: Target{IdentityName: "worker", SPIFFEID: target.SPIFFEID, SecretName: "worker-tls", TrustConfigMapName: "worker-trust", ServiceAccountName: "default"},
			pod: podWith(func(p *corev1.Pod) { p.Spec.ServiceAccountName = "" })},
		{name: "no required service account given", target: Target{IdentityName: "worker", SPIFFEID: target.SPIFFEID, SecretName: "worker-tls", TrustConfigMapName: "worker-trust"},
			pod: podWith(func(p *corev1.Pod) { p.Spec.ServiceAccountName = "anything" })},
		{name: "wrong service account", target: target, pod: podWith(func(p *corev1.Pod) { p.Spec.ServiceAccountName = "planner" }),
			wantErr: `the Pod runs as service account "planner" but AgentIdentity "worker" requires "worker" (spec.serviceAccountName)`},
		{name: "a volume of the same name", target: target, pod: podWith(func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "agentmesh-identity", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
		}), wantErr: `volume "agentmesh-identity" already exists and is not the one agentmesh injects`},
		{name: "something else mounted at the path", target: target, pod: podWith(func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "mine", MountPath: "/var/run/agentmesh/"}}
		}), wantErr: `container "agent" already mounts volume "mine" at "/var/run/agentmesh/"`},
		{name: "something else mounted at the path, uncleaned", target: target, pod: podWith(func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "mine", MountPath: "/var//run/x/../agentmesh/."}}
		}), wantErr: `container "agent" already mounts volume "mine" at "/var//run/x/../agentmesh/."`},
		{name: "something mounted under the path, shadowing a file", target: target, pod: podWith(func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "mine", MountPath: "/var/run/agentmesh/tls.key", SubPath: "key"}}
		}), wantErr: `container "agent" already mounts volume "mine" at "/var/run/agentmesh/tls.key"`},
		{name: "a relative mount path is the rooted one", target: target, pod: podWith(func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "mine", MountPath: "var/run/agentmesh"}}
		}), wantErr: `container "agent" already mounts volume "mine" at "var/run/agentmesh"`},
		{name: "a sibling path is no conflict", target: target, pod: podWith(func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "mine", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "mine", MountPath: "/var/run/agentmesh-cache"}, {Name: "mine", MountPath: "/var/run"}}
		})},
		{name: "our volume mounted at the uncleaned path is kept", target: target, asWritten: true, pod: podWith(func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "agentmesh-identity", MountPath: "/var/run/agentmesh/", ReadOnly: true}}
		}), check: func(t *testing.T, p *corev1.Pod) {
			if n := len(p.Spec.Containers[0].VolumeMounts); n != 1 {
				t.Errorf("%d mounts, want the existing one only", n)
			}
		}},
		{name: "a file variable set to the same file, uncleaned", target: target, asWritten: true, pod: podWith(func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "AGENTMESH_CERT_FILE", Value: "/var/run/agentmesh//tls.crt"}}
		}), check: func(t *testing.T, p *corev1.Pod) {
			if c := p.Spec.Containers[0]; len(c.Env) != 5 || c.Env[0].Value != "/var/run/agentmesh//tls.crt" {
				t.Errorf("env %+v, want the existing value kept and four added", c.Env)
			}
		}},
		{name: "an env var of the same name", target: target, pod: podWith(func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "init", Env: []corev1.EnvVar{{Name: "AGENTMESH_CERT_FILE", Value: "/elsewhere"}}}}
		}), wantErr: `container "init" already sets AGENTMESH_CERT_FILE`},
		{name: "a duplicate env var after one of the same value", target: target, pod: podWith(func(p *corev1.Pod) {
			// The kubelet uses the last of duplicates: the first must not
			// hide it.
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "AGENTMESH_CERT_FILE", Value: "/var/run/agentmesh/tls.crt"}, {Name: "AGENTMESH_CERT_FILE", Value: "/elsewhere"}}
		}), wantErr: `container "agent" already sets AGENTMESH_CERT_FILE`},
		{name: "several conflicts in one message", target: target, pod: podWith(func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "AGENTMESH_SPIFFE_ID", ValueFrom: &corev1.EnvVarSource{}}, {Name: "AGENTMESH_KEY_FILE", Value: "/k"}}
		}), wantErr: `container "agent" already sets AGENTMESH_SPIFFE_ID; container "agent" already sets AGENTMESH_KEY_FILE`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.pod.DeepCopy()
			changed, err := Inject(tc.pod, tc.target)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				if changed || !podsEqual(before, tc.pod) {
					t.Error("the Pod was changed despite the error")
				}
				return
			}
			if err != nil || !changed {
				t.Fatalf("changed=%v err=%v", changed, err)
			}
			if !tc.asWritten {
				assertInjected(t, tc.pod)
			}
			if tc.check != nil {
				tc.check(t, tc.pod)
			}
		})
	}
}

// TestInjectIsIdempotent: a second invocation, also after the API server
// defaulted the Pod, changes nothing; one on a Pod that gained a container
// (another webhook) adds to that container only.
func TestInjectIsIdempotent(t *testing.T) {
	p := podWith()
	if _, err := Inject(p, target); err != nil {
		t.Fatal(err)
	}
	// What the API server defaults between invocations.
	p.Spec.Volumes[0].Projected.DefaultMode = ptr.To[int32](420)
	p.Spec.Containers[0].VolumeMounts[0].MountPropagation = ptr.To(corev1.MountPropagationNone)
	again := p.DeepCopy()
	changed, err := Inject(again, target)
	if err != nil || changed || !podsEqual(p, again) {
		t.Fatalf("second invocation: changed=%v err=%v", changed, err)
	}
	again.Spec.Containers = append(again.Spec.Containers, corev1.Container{Name: "added-by-another-webhook"})
	changed, err = Inject(again, target)
	if err != nil || !changed {
		t.Fatalf("reinvocation after a new container: changed=%v err=%v", changed, err)
	}
	assertInjected(t, again)
}

func podsEqual(a, b *corev1.Pod) bool {
	return a.String() == b.String()
}

func TestInjectPodCertificate(t *testing.T) {
	tg := target
	tg.SecretName = ""
	tg.PodCertificate = &PodCertificateTarget{KeyType: "ECDSAP256", MaxExpirationSeconds: 86400}
	p := podWith()
	changed, err := Inject(p, tg)
	if err != nil || !changed {
		t.Fatalf("changed=%v err=%v", changed, err)
	}
	src := p.Spec.Volumes[0].Projected.Sources
	if len(src) != 2 || src[0].Secret != nil || src[0].PodCertificate == nil || src[1].ConfigMap == nil {
		t.Fatalf("sources %+v", src)
	}
	pc := src[0].PodCertificate
	if pc.SignerName != "agentmesh.dev/agent-identity" || pc.KeyType != "ECDSAP256" || *pc.MaxExpirationSeconds != 86400 ||
		pc.KeyPath != "tls.key" || pc.CertificateChainPath != "tls.crt" || pc.CredentialBundlePath != "" {
		t.Errorf("podCertificate projection %+v", pc)
	}
	// The same files and variables as with a Secret.
	assertEnvAndMounts(t, p)
	if changed, err := Inject(p, tg); err != nil || changed {
		t.Errorf("second invocation: changed=%v err=%v", changed, err)
	}
	// A Secret-mode volume left from before is a conflict, not silently kept.
	secretPod := podWith()
	if _, err := Inject(secretPod, target); err != nil {
		t.Fatal(err)
	}
	if _, err := Inject(secretPod, tg); err == nil || !strings.Contains(err.Error(), `volume "agentmesh-identity" already exists`) {
		t.Errorf("switching delivery on an injected Pod: %v", err)
	}
}

func assertEnvAndMounts(t *testing.T, p *corev1.Pod) {
	t.Helper()
	for _, c := range p.Spec.Containers {
		found := 0
		for _, e := range c.Env {
			if strings.HasPrefix(e.Name, "AGENTMESH_") {
				found++
			}
		}
		if found != 5 || len(c.VolumeMounts) != 1 || c.VolumeMounts[0].MountPath != "/var/run/agentmesh" {
			t.Errorf("container %s: %d variables, mounts %+v", c.Name, found, c.VolumeMounts)
		}
	}
}
