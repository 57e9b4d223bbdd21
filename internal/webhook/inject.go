package webhook

import (
	"fmt"
	"path"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/utils/ptr"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

// Target is what a Pod is injected with: one AgentIdentity's names.
type Target struct {
	// IdentityName is the AgentIdentity named by the Pod's label.
	IdentityName string
	// SPIFFEID is the identity's SPIFFE ID.
	SPIFFEID string
	// SecretName holds tls.crt and tls.key.
	SecretName string
	// TrustConfigMapName holds bundle.pem and policy.json.
	TrustConfigMapName string
	// ServiceAccountName is the service account the Pod must run as. The
	// injector always sets it (it refuses Pods whose identity does not
	// exist); empty skips the check.
	ServiceAccountName string
	// PodCertificate, when set, delivers the key and certificate per Pod
	// (keyDelivery PodCertificate): the kubelet generates the key and asks
	// agentmesh's signer for the certificate, and no Secret is mounted.
	PodCertificate *PodCertificateTarget
}

// PodCertificateTarget is the podCertificate projection of an identity.
type PodCertificateTarget struct {
	// KeyType is the kubelet key type (ECDSAP256, ED25519, RSA3072, ...).
	KeyType string
	// MaxExpirationSeconds is the identity's certificate lifetime.
	MaxExpirationSeconds int32
}

// Volume is the projected volume that carries the identity's files.
func (t Target) Volume() corev1.Volume {
	creds := corev1.VolumeProjection{Secret: &corev1.SecretProjection{
		LocalObjectReference: corev1.LocalObjectReference{Name: t.SecretName},
		Items: []corev1.KeyToPath{
			{Key: mtlsv1alpha1.SecretCertKey, Path: mtlsv1alpha1.FileCert},
			{Key: mtlsv1alpha1.SecretKeyKey, Path: mtlsv1alpha1.FileKey},
		},
	}}
	if pc := t.PodCertificate; pc != nil {
		// The same file names as the Secret: agents read one layout.
		creds = corev1.VolumeProjection{PodCertificate: &corev1.PodCertificateProjection{
			SignerName:           mtlsv1alpha1.PodCertificateSignerName,
			KeyType:              pc.KeyType,
			MaxExpirationSeconds: ptr.To(pc.MaxExpirationSeconds),
			KeyPath:              mtlsv1alpha1.FileKey,
			CertificateChainPath: mtlsv1alpha1.FileCert,
		}}
	}
	return corev1.Volume{
		Name: mtlsv1alpha1.VolumeName,
		VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			// The API server's default, written out so that the Pod it
			// stores compares equal on a second invocation.
			DefaultMode: ptr.To[int32](0o644),
			Sources: []corev1.VolumeProjection{
				creds,
				{ConfigMap: &corev1.ConfigMapProjection{
					LocalObjectReference: corev1.LocalObjectReference{Name: t.TrustConfigMapName},
					Items: []corev1.KeyToPath{
						{Key: mtlsv1alpha1.TrustBundleKey, Path: mtlsv1alpha1.FileBundle},
						{Key: mtlsv1alpha1.TrustPolicyKey, Path: mtlsv1alpha1.FilePolicy},
					},
				}},
			},
		}},
	}
}

// Mount is the read-only mount of the volume in each container.
func (t Target) Mount() corev1.VolumeMount {
	return corev1.VolumeMount{Name: mtlsv1alpha1.VolumeName, MountPath: mtlsv1alpha1.MountPath, ReadOnly: true}
}

// Env is the environment every container gets.
func (t Target) Env() []corev1.EnvVar {
	file := func(name string) string { return path.Join(mtlsv1alpha1.MountPath, name) }
	return []corev1.EnvVar{
		{Name: mtlsv1alpha1.EnvSPIFFEID, Value: t.SPIFFEID},
		{Name: mtlsv1alpha1.EnvCertFile, Value: file(mtlsv1alpha1.FileCert)},
		{Name: mtlsv1alpha1.EnvKeyFile, Value: file(mtlsv1alpha1.FileKey)},
		{Name: mtlsv1alpha1.EnvBundleFile, Value: file(mtlsv1alpha1.FileBundle)},
		{Name: mtlsv1alpha1.EnvPolicyFile, Value: file(mtlsv1alpha1.FilePolicy)},
	}
}

// sameVolume compares what the injector sets, ignoring what the API server
// defaults.
func sameVolume(a, b corev1.Volume) bool {
	pa, pb := a.Projected, b.Projected
	if a.Name != b.Name || pa == nil || pb == nil || len(pa.Sources) != len(pb.Sources) {
		return false
	}
	for i := range pa.Sources {
		sa, sb := pa.Sources[i], pb.Sources[i]
		switch {
		case sa.Secret != nil && sb.Secret != nil:
			if sa.Secret.Name != sb.Secret.Name || !equality.Semantic.DeepEqual(sa.Secret.Items, sb.Secret.Items) {
				return false
			}
		case sa.ConfigMap != nil && sb.ConfigMap != nil:
			if sa.ConfigMap.Name != sb.ConfigMap.Name || !equality.Semantic.DeepEqual(sa.ConfigMap.Items, sb.ConfigMap.Items) {
				return false
			}
		case sa.PodCertificate != nil && sb.PodCertificate != nil:
			if !equality.Semantic.DeepEqual(sa.PodCertificate, sb.PodCertificate) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

func sameMount(a, b corev1.VolumeMount) bool {
	return a.Name == b.Name && cleanPath(a.MountPath) == cleanPath(b.MountPath) && a.ReadOnly == b.ReadOnly && a.SubPath == "" && a.SubPathExpr == ""
}

// cleanPath is p as the container sees it: rooted, without "." or ".."
// elements, doubled or trailing slashes, so that "/var/run/agentmesh/",
// "/var//run/agentmesh" and "/var/run/x/../agentmesh" compare equal.
func cleanPath(p string) string {
	return path.Clean("/" + p)
}

// within reports whether p is dir or a path under it.
func within(p, dir string) bool {
	p, dir = cleanPath(p), cleanPath(dir)
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// sameValue compares an AGENTMESH_* value: the file variables as cleaned
// paths, the SPIFFE ID as a string.
func sameValue(name, a, b string) bool {
	if name == mtlsv1alpha1.EnvSPIFFEID {
		return a == b
	}
	return a != "" && cleanPath(a) == cleanPath(b)
}

// EffectiveServiceAccount is the service account a Pod runs as.
func EffectiveServiceAccount(pod *corev1.Pod) string {
	switch {
	case pod.Spec.ServiceAccountName != "":
		return pod.Spec.ServiceAccountName
	case pod.Spec.DeprecatedServiceAccount != "":
		return pod.Spec.DeprecatedServiceAccount
	}
	return mtlsv1alpha1.DefaultServiceAccountName
}

// Inject wires t into pod: one read-only projected volume, mounted at
// /var/run/agentmesh in every container and init container, the AGENTMESH_*
// variables in each, and the injected annotation. It is idempotent: what is
// already there exactly as it would be written is left alone, so a second
// invocation changes nothing. Anything of the same name that differs (a
// volume, a variable) or any other mount at or under the path is a
// conflict, reported in one error that names each; the Pod is then not
// changed. Paths are compared cleaned, never as strings.
func Inject(pod *corev1.Pod, t Target) (changed bool, err error) {
	if t.ServiceAccountName != "" {
		if sa := EffectiveServiceAccount(pod); sa != t.ServiceAccountName {
			return false, fmt.Errorf("the Pod runs as service account %q but AgentIdentity %q requires %q (spec.serviceAccountName)",
				sa, t.IdentityName, t.ServiceAccountName)
		}
	}
	var conflicts []string
	vol := t.Volume()
	hasVolume := false
	for _, v := range pod.Spec.Volumes {
		if v.Name != vol.Name {
			continue
		}
		if !sameVolume(v, vol) {
			conflicts = append(conflicts, fmt.Sprintf("volume %q already exists and is not the one agentmesh injects", v.Name))
		}
		hasVolume = true
	}
	mount, env := t.Mount(), t.Env()
	type plan struct {
		c         *corev1.Container
		needMount bool
		needEnv   []corev1.EnvVar
	}
	var plans []plan
	all := make([]*corev1.Container, 0, len(pod.Spec.InitContainers)+len(pod.Spec.Containers))
	for i := range pod.Spec.InitContainers {
		all = append(all, &pod.Spec.InitContainers[i])
	}
	for i := range pod.Spec.Containers {
		all = append(all, &pod.Spec.Containers[i])
	}
	for _, c := range all {
		p := plan{c: c, needMount: true}
		for _, m := range c.VolumeMounts {
			switch {
			case sameMount(m, mount):
				p.needMount = false
			case m.Name == mount.Name:
				conflicts = append(conflicts, fmt.Sprintf("container %q mounts volume %q at %q, not read-only at %q", c.Name, m.Name, m.MountPath, mount.MountPath))
			case within(m.MountPath, mount.MountPath):
				// At the path, or under it where it would shadow the
				// identity's files.
				conflicts = append(conflicts, fmt.Sprintf("container %q already mounts volume %q at %q", c.Name, m.Name, m.MountPath))
			}
		}
		for _, want := range env {
			// Every entry of the name counts: of duplicates, the kubelet
			// uses the last one.
			found, differs := false, false
			for _, e := range c.Env {
				if e.Name == want.Name {
					found = true
					differs = differs || !sameValue(want.Name, e.Value, want.Value) || e.ValueFrom != nil
				}
			}
			switch {
			case !found:
				p.needEnv = append(p.needEnv, want)
			case differs:
				conflicts = append(conflicts, fmt.Sprintf("container %q already sets %s", c.Name, want.Name))
			}
		}
		plans = append(plans, p)
	}
	if len(conflicts) > 0 {
		return false, fmt.Errorf("cannot inject AgentIdentity %q: %s", t.IdentityName, strings.Join(conflicts, "; "))
	}

	if !hasVolume {
		pod.Spec.Volumes = append(pod.Spec.Volumes, vol)
		changed = true
	}
	for _, p := range plans {
		if p.needMount {
			p.c.VolumeMounts = append(p.c.VolumeMounts, mount)
			changed = true
		}
		if len(p.needEnv) > 0 {
			p.c.Env = append(p.c.Env, p.needEnv...)
			changed = true
		}
	}
	if pod.Annotations[mtlsv1alpha1.AnnotationInjected] != t.SPIFFEID {
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		pod.Annotations[mtlsv1alpha1.AnnotationInjected] = t.SPIFFEID
		changed = true
	}
	return changed, nil
}
