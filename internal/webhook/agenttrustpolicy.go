package webhook

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/policy"
)

// AgentTrustPolicyValidatorPath is where the AgentTrustPolicy validator is served.
const AgentTrustPolicyValidatorPath = "/validate-mtls-agentmesh-dev-v1alpha1-agenttrustpolicy"

// AgentTrustPolicyValidator rejects, at admission, what the CRD's CEL rules
// cannot check: label selector keys and values, SPIFFE IDs and trust domain
// names that go-spiffe does not accept. It runs the same compile function
// as the controller, so an object it admits compiles without errors. The
// controller does not rely on it: with the webhook down (its failure policy
// is Ignore) an invalid policy is still reported and never widens access.
type AgentTrustPolicyValidator struct{}

var _ admission.Validator[*mtlsv1alpha1.AgentTrustPolicy] = AgentTrustPolicyValidator{}

// ValidateCreate checks a new policy.
func (AgentTrustPolicyValidator) ValidateCreate(_ context.Context, p *mtlsv1alpha1.AgentTrustPolicy) (admission.Warnings, error) {
	return nil, validatePolicy(p)
}

// ValidateUpdate checks a changed policy.
func (AgentTrustPolicyValidator) ValidateUpdate(_ context.Context, _, p *mtlsv1alpha1.AgentTrustPolicy) (admission.Warnings, error) {
	return nil, validatePolicy(p)
}

// ValidateDelete allows every deletion.
func (AgentTrustPolicyValidator) ValidateDelete(context.Context, *mtlsv1alpha1.AgentTrustPolicy) (admission.Warnings, error) {
	return nil, nil
}

func validatePolicy(p *mtlsv1alpha1.AgentTrustPolicy) error {
	c := policy.Compile(p)
	if len(c.Errors) == 0 {
		return nil
	}
	return apierrors.NewInvalid(mtlsv1alpha1.GroupVersion.WithKind("AgentTrustPolicy").GroupKind(), p.Name, c.Errors)
}
