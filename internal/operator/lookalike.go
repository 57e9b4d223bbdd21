package operator

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

// Anyone who may create a Secret or ConfigMap can put agentmesh's labels on
// it, and the operator's caches select by those labels. A look-alike is
// such an object outside the operator's namespace that no AgentIdentity
// controls: agentmesh did not write it. Its metadata is cached (the
// certificate reconciler must see that a Secret name is taken, and by
// whom) but its data and annotations are not, so look-alikes cost the
// operator a few hundred bytes each, not what a tenant put in them, and
// nothing reads their content. (Which objects a CA rotation waits for is
// decided separately, against the live identities; see the rotation
// controller.)

// isLookAlike reports whether obj is a look-alike.
func isLookAlike(obj metav1.Object, operatorNamespace string) bool {
	if obj.GetNamespace() == operatorNamespace {
		return false
	}
	ref := metav1.GetControllerOfNoCopy(obj)
	return ref == nil || ref.Kind != "AgentIdentity" || ref.APIVersion != mtlsv1alpha1.GroupVersion.String()
}

// lookAlikeMeta is the metadata kept of a look-alike.
func lookAlikeMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		Generation: m.Generation, CreationTimestamp: m.CreationTimestamp, DeletionTimestamp: m.DeletionTimestamp,
		Labels: m.Labels, OwnerReferences: m.OwnerReferences,
	}
}

// shrinkLookAlike returns what the cache keeps of obj: obj itself, or of a
// look-alike Secret or ConfigMap its type, metadata and, for a Secret, its
// type.
func shrinkLookAlike(obj any, operatorNamespace string) any {
	switch o := obj.(type) {
	case *corev1.Secret:
		if isLookAlike(o, operatorNamespace) {
			return &corev1.Secret{TypeMeta: o.TypeMeta, ObjectMeta: lookAlikeMeta(o.ObjectMeta), Type: o.Type}
		}
	case *corev1.ConfigMap:
		if isLookAlike(o, operatorNamespace) {
			return &corev1.ConfigMap{TypeMeta: o.TypeMeta, ObjectMeta: lookAlikeMeta(o.ObjectMeta)}
		}
	}
	return obj
}
