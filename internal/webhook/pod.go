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
	Reader client.Reader
	// APIReader reads the API server directly. It is asked only when the
	// cache does not know the identity, so that a Pod created right after
	// its identity is not refused for the cache's lag.
	APIReader         client.Reader
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
	id := &mtlsv1alpha1.AgentIdentity{}
	key := types.NamespacedName{Namespace: ns, Name: name}
	err = h.Reader.Get(ctx, key, id)
	if apierrors.IsNotFound(err) && h.APIReader != nil {
		err = h.APIReader.Get(ctx, key, id)
	}
	switch {
	case apierrors.IsNotFound(err):
		// Refused rather than injected blind: without the identity neither
		// its service account nor its key delivery is known, and a Pod
		// admitted unchecked would mount the identity's Secret once it
		// exists. Controllers (ReplicaSets, Jobs) retry their creates, so
		// applying the identity and its workload together works.
		return admission.Denied(fmt.Sprintf("AgentIdentity %s/%s, named by label %s, does not exist: create it before the Pods that use it "+
			"(a Deployment's or Job's Pods are retried until it does)", ns, name, mtlsv1alpha1.LabelIdentity))
	case err != nil:
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("looking up AgentIdentity %s/%s: %w", ns, name, err))
	}
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

	changed, err := Inject(pod, t)
	if err != nil {
		return admission.Denied(err.Error())
	}
	if !changed {
		return admission.Allowed("already injected")
	}
	marshalled, err := json.Marshal(pod)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	logf.FromContext(ctx).V(1).Info("injected identity", "namespace", ns, "identity", name, "spiffeID", t.SPIFFEID)
	return admission.PatchResponseFromRaw(req.Object.Raw, marshalled)
}
