package webhook

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/identity"
)

// AgentIdentityValidatorPath is where the AgentIdentity validator is served.
const AgentIdentityValidatorPath = "/validate-mtls-agentmesh-dev-v1alpha1-agentidentity"

// AgentIdentityValidator rejects, at admission, DNS names that the CRD's
// CEL rules cannot judge because they depend on the identity's namespace
// and on the operator's cluster-wide allow-list (identity.DNSScope). The
// certificate reconciler applies the same check (an identity it refuses is
// Ready=False/InvalidSpec and gets no certificate), so the webhook's
// failure policy is Ignore: with the webhook down, nothing out of scope is
// issued either.
type AgentIdentityValidator struct {
	DNS identity.DNSScope
}

var _ admission.Validator[*mtlsv1alpha1.AgentIdentity] = AgentIdentityValidator{}

// ValidateCreate checks a new identity.
func (v AgentIdentityValidator) ValidateCreate(_ context.Context, id *mtlsv1alpha1.AgentIdentity) (admission.Warnings, error) {
	return nil, v.validate(id)
}

// ValidateUpdate checks a changed identity.
func (v AgentIdentityValidator) ValidateUpdate(_ context.Context, _, id *mtlsv1alpha1.AgentIdentity) (admission.Warnings, error) {
	return nil, v.validate(id)
}

// ValidateDelete allows every deletion.
func (AgentIdentityValidator) ValidateDelete(context.Context, *mtlsv1alpha1.AgentIdentity) (admission.Warnings, error) {
	return nil, nil
}

func (v AgentIdentityValidator) validate(id *mtlsv1alpha1.AgentIdentity) error {
	errs := v.DNS.Check(id.Namespace, id.Spec.DNSNames)
	if len(errs) == 0 {
		return nil
	}
	return apierrors.NewInvalid(mtlsv1alpha1.GroupVersion.WithKind("AgentIdentity").GroupKind(), id.Name, errs)
}
