// Package v1alpha1 holds the agentmesh API: AgentIdentity (an agent's SPIFFE
// identity and the Secret that carries its certificate) and AgentTrustPolicy
// (which identities may talk to which). It also owns every condition type,
// reason, label and annotation key that the controllers and webhooks use.
//
// +kubebuilder:object:generate=true
// +groupName=mtls.agentmesh.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of every agentmesh kind.
	GroupVersion = schema.GroupVersion{Group: "mtls.agentmesh.dev", Version: "v1alpha1"}

	schemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the agentmesh kinds to a runtime.Scheme.
	AddToScheme = schemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&AgentIdentity{}, &AgentIdentityList{},
		&AgentTrustPolicy{}, &AgentTrustPolicyList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
