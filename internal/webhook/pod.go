package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/agentid"
	"github.com/agentmesh/agentmesh/internal/identity"
)

// PodInjectorPath is where the Pod injector is served.
const PodInjectorPath = "/mutate-v1-pod"

// PodInjector is the mutating webhook for Pods: it decodes the Pod, looks
// the AgentIdentity up in the operator's cache (no API call on the request
// path), and answers with the JSON patch of Inject.
type PodInjector struct {
	// Reader is a cached client: the webhook answers in well under a
	// millisecond and never waits on the API server.
	Reader            client.Reader
	Decoder           admission.Decoder
	TrustDomain       spiffeid.TrustDomain
	OperatorNamespace string
}

var _ admission.Handler = &PodInjector{}

// Handle injects the identity a Pod asks for with its label.
func (h *PodInjector) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create {
		return admission.Allowed("agentmesh injects identities at creation only")
	}
	pod := &corev1.Pod{}
	if err := h.Decoder.Decode(req, pod); err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	name, ok := pod.Labels[mtlsv1alpha1.LabelIdentity]
	if !ok {
		return admission.Allowed("no " + mtlsv1alpha1.LabelIdentity + " label")
	}
	ns := req.Namespace
	if ns == "kube-system" || ns == h.OperatorNamespace {
		return admission.Allowed("agentmesh never injects Pods of namespace " + ns)
	}
	if msgs := validation.IsDNS1123Label(name); len(msgs) > 0 {
		return admission.Denied(fmt.Sprintf("label %s=%q does not name an AgentIdentity: %s", mtlsv1alpha1.LabelIdentity, name, strings.Join(msgs, "; ")))
	}
	sid, err := agentid.ID(h.TrustDomain, ns, name)
	if err != nil {
		return admission.Denied(fmt.Sprintf("label %s=%q: %v", mtlsv1alpha1.LabelIdentity, name, err))
	}

	t := Target{
		IdentityName:       name,
		SPIFFEID:           sid.String(),
		SecretName:         name + mtlsv1alpha1.DefaultSecretNameSuffix,
		TrustConfigMapName: name + mtlsv1alpha1.TrustConfigMapSuffix,
	}
	var warnings []string
	id := &mtlsv1alpha1.AgentIdentity{}
	switch err := h.Reader.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, id); {
	case apierrors.IsNotFound(err):
		warnings = append(warnings, fmt.Sprintf("AgentIdentity %s/%s does not exist (yet): the Pod is injected with its default "+
			"Secret %s and will not start until the identity is created and issued", ns, name, t.SecretName))
	case err != nil:
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("looking up AgentIdentity %s/%s: %w", ns, name, err))
	default:
		t.SecretName = id.EffectiveSecretName()
		t.ServiceAccountName = id.EffectiveServiceAccountName()
		if id.Spec.KeyDelivery == mtlsv1alpha1.KeyDeliveryPodCertificate {
			req, err := identity.NewRequest(h.TrustDomain, id)
			if err != nil {
				return admission.Denied(fmt.Sprintf("AgentIdentity %s/%s cannot be used: %v", ns, name, err))
			}
			t.SecretName = ""
			t.PodCertificate = &PodCertificateTarget{
				KeyType:              identity.PodCertificateKeyType(req),
				MaxExpirationSeconds: identity.PodCertificateMaxExpirationSeconds(req),
			}
		}
	}

	changed, err := Inject(pod, t)
	if err != nil {
		return admission.Denied(err.Error())
	}
	if !changed {
		return withWarnings(admission.Allowed("already injected"), warnings)
	}
	marshalled, err := json.Marshal(pod)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	logf.FromContext(ctx).V(1).Info("injected identity", "namespace", ns, "identity", name, "spiffeID", t.SPIFFEID)
	return withWarnings(admission.PatchResponseFromRaw(req.Object.Raw, marshalled), warnings)
}

func withWarnings(r admission.Response, warnings []string) admission.Response {
	r.Warnings = append(r.Warnings, warnings...)
	return r
}
