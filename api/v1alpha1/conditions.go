package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// GetConditions returns the identity's status conditions, so that code
// reading conditions (tests, the kubectl plugin) treats both kinds alike.
func (a *AgentIdentity) GetConditions() []metav1.Condition { return a.Status.Conditions }

// GetConditions returns the policy's status conditions.
func (p *AgentTrustPolicy) GetConditions() []metav1.Condition { return p.Status.Conditions }
