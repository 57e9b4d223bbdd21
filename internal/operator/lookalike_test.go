package operator

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

func TestLookAlikesKeepOnlyTheirMetadata(t *testing.T) {
	identityRef := metav1.OwnerReference{APIVersion: mtlsv1alpha1.GroupVersion.String(), Kind: "AgentIdentity", Name: "worker", UID: "u1", Controller: ptr.To(true)}
	labels := map[string]string{mtlsv1alpha1.LabelManagedBy: mtlsv1alpha1.ManagedByValue, mtlsv1alpha1.LabelIdentity: "worker"}
	cases := []struct {
		name      string
		namespace string
		refs      []metav1.OwnerReference
		lookAlike bool
	}{
		{"written for an identity", "agents", []metav1.OwnerReference{identityRef}, false},
		{"no owner", "agents", nil, true},
		{"owned, not controlled, by an identity", "agents", []metav1.OwnerReference{func() metav1.OwnerReference { r := identityRef; r.Controller = nil; return r }()}, true},
		{"controlled by another kind", "agents", []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "x", UID: "u2", Controller: ptr.To(true)}}, true},
		{"another group's AgentIdentity", "agents", []metav1.OwnerReference{func() metav1.OwnerReference { r := identityRef; r.APIVersion = "evil.example/v1"; return r }()}, true},
		{"the operator's own namespace", "agentmesh-system", nil, false},
	}
	in := newInterner("agentmesh-system")
	for _, tc := range cases {
		meta := metav1.ObjectMeta{Namespace: tc.namespace, Name: "x", Labels: labels, OwnerReferences: tc.refs,
			Annotations: map[string]string{mtlsv1alpha1.AnnotationAnchorsHash: "h"}}
		o, err := in.configMapTransform(&corev1.ConfigMap{ObjectMeta: meta, Data: map[string]string{"bundle.pem": "B"}, BinaryData: map[string][]byte{"b": {1}}})
		if err != nil {
			t.Fatal(err)
		}
		cm := o.(*corev1.ConfigMap)
		o, err = in.secretTransform(&corev1.Secret{ObjectMeta: *meta.DeepCopy(), Type: corev1.SecretTypeTLS, Data: map[string][]byte{"ca.crt": []byte("B")}})
		if err != nil {
			t.Fatal(err)
		}
		sec := o.(*corev1.Secret)
		kept := len(cm.Data) == 1 && len(cm.BinaryData) == 1 && len(cm.Annotations) == 1 && len(sec.Data) == 1 && len(sec.Annotations) == 1
		if tc.refs != nil && !tc.lookAlike {
			// An identity's own: the trust ConfigMap's content and the
			// Secret's tls.key (none here) give way to their hash.
			kept = len(cm.Data) == 0 && len(cm.BinaryData) == 0 && len(cm.Annotations) == 2 &&
				cm.Annotations[mtlsv1alpha1.AnnotationCachedHash] == mtlsv1alpha1.CachedHashOther &&
				len(sec.Data) == 1 && len(sec.Annotations) == 2 && sec.Annotations[mtlsv1alpha1.AnnotationCachedHash] != ""
		}
		shrunk := len(cm.Data) == 0 && len(cm.BinaryData) == 0 && cm.Annotations == nil && len(sec.Data) == 0 && sec.Annotations == nil
		if tc.lookAlike && !shrunk || !tc.lookAlike && !kept {
			t.Errorf("%s: look-alike %v, but the cache keeps ConfigMap data %v, annotations %v and Secret data %v", tc.name, tc.lookAlike, cm.Data, cm.Annotations, sec.Data)
		}
		if cm.Name != "x" || cm.Labels[mtlsv1alpha1.LabelIdentity] != "worker" || len(cm.OwnerReferences) != len(tc.refs) || sec.Type != corev1.SecretTypeTLS {
			t.Errorf("%s: metadata lost: %+v, Secret type %q", tc.name, cm.ObjectMeta, sec.Type)
		}
	}
}
