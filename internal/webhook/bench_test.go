package webhook_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/operator"
	"github.com/agentmesh/agentmesh/internal/webhook"
)

// oneIdentity is a Reader that knows one AgentIdentity, as the operator's
// cache would: the benchmark measures the handler, not an API server.
type oneIdentity struct{ id *mtlsv1alpha1.AgentIdentity }

func (o oneIdentity) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	if key.Name != o.id.Name || key.Namespace != o.id.Namespace {
		return apierrors.NewNotFound(mtlsv1alpha1.GroupVersion.WithResource("agentidentities").GroupResource(), key.Name)
	}
	o.id.DeepCopyInto(obj.(*mtlsv1alpha1.AgentIdentity))
	return nil
}

func (oneIdentity) List(context.Context, client.ObjectList, ...client.ListOption) error { return nil }

// BenchmarkPodInjector measures the Pod injector's handler on a typical
// agent Pod (two containers, an init container), from the decoded
// AdmissionRequest to the JSON patch, and reports p50 and p99.
func BenchmarkPodInjector(b *testing.B) {
	scheme := operator.NewScheme()
	h := &webhook.PodInjector{
		Reader: oneIdentity{&mtlsv1alpha1.AgentIdentity{
			ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: "worker"},
			Spec:       mtlsv1alpha1.AgentIdentitySpec{ServiceAccountName: "worker"},
		}},
		Decoder:           admission.NewDecoder(scheme),
		TrustDomain:       td,
		OperatorNamespace: operatorNamespace,
	}
	pod := labelledPod("agents", "worker-0", "worker", "worker")
	pod.Spec.Containers[0].Resources = corev1.ResourceRequirements{}
	raw, err := json.Marshal(pod)
	if err != nil {
		b.Fatal(err)
	}
	req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID: "1", Operation: admissionv1.Create, Namespace: "agents",
		Kind:   metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Object: runtime.RawExtension{Raw: raw},
	}}
	ctx := context.Background()
	durations := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		resp := h.Handle(ctx, req)
		durations = append(durations, time.Since(start))
		if !resp.Allowed || len(resp.Patches) == 0 {
			b.Fatalf("response %+v", resp.Result)
		}
	}
	b.StopTimer()
	slices.Sort(durations)
	b.ReportMetric(float64(durations[len(durations)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(durations[len(durations)*99/100].Microseconds()), "p99-µs")
}
