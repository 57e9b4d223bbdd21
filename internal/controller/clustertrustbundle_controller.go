package controller

import (
	"context"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	certv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
)

// +kubebuilder:rbac:groups=certificates.k8s.io,resources=clustertrustbundles,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=certificates.k8s.io,resources=clustertrustbundles,verbs=update,resourceNames=agentmesh.dev:agent-identity:cluster.local

// ClusterTrustBundleName is the ClusterTrustBundle that publishes a trust
// domain's CAs for the signer: its name must start with the signer name,
// slashes turned into colons.
func ClusterTrustBundleName(td spiffeid.TrustDomain) string {
	return strings.ReplaceAll(mtlsv1alpha1.PodCertificateSignerName, "/", ":") + ":" + td.Name()
}

// ClusterTrustBundleReconciler publishes the trust domain's CAs (every CA
// that may currently have signed a valid leaf, so the next and the retired
// ones during a rotation) as a ClusterTrustBundle linked to the signer
// agentmesh.dev/agent-identity, for workloads that mount it with a
// clusterTrustBundle projection.
type ClusterTrustBundleReconciler struct {
	Client      client.Client
	CA          *ca.Holder
	TrustDomain spiffeid.TrustDomain
}

// Reconcile writes the ClusterTrustBundle when its content differs.
func (r *ClusterTrustBundleReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (ctrl.Result, error) {
	st, err := r.CA.Get()
	if err != nil {
		return ctrl.Result{}, nil
	}
	name := ClusterTrustBundleName(r.TrustDomain)
	want := string(st.BundlePEM())
	ctb := &certv1.ClusterTrustBundle{}
	err = r.Client.Get(ctx, types.NamespacedName{Name: name}, ctb)
	switch {
	case apierrors.IsNotFound(err):
		ctb = &certv1.ClusterTrustBundle{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
				mtlsv1alpha1.LabelManagedBy:   mtlsv1alpha1.ManagedByValue,
				mtlsv1alpha1.LabelTrustDomain: r.TrustDomain.Name(),
			}},
			Spec: certv1.ClusterTrustBundleSpec{SignerName: mtlsv1alpha1.PodCertificateSignerName, TrustBundle: want},
		}
		if err := r.Client.Create(ctx, ctb, client.FieldOwner(mtlsv1alpha1.FieldManager)); err != nil {
			return ctrl.Result{}, fmt.Errorf("creating ClusterTrustBundle %s: %w", name, err)
		}
	case err != nil:
		return ctrl.Result{}, err
	case ctb.Spec.TrustBundle == want:
		return ctrl.Result{}, nil
	default:
		ctb.Spec.TrustBundle = want
		if err := r.Client.Update(ctx, ctb, client.FieldOwner(mtlsv1alpha1.FieldManager)); err != nil {
			return ctrl.Result{}, fmt.Errorf("updating ClusterTrustBundle %s: %w", name, err)
		}
	}
	logf.FromContext(ctx).Info("published the trust bundle", "clusterTrustBundle", name, "anchors", len(st.Anchors))
	return ctrl.Result{}, nil
}

// SetupWithManager runs on every CA change and on changes of the bundle.
func (r *ClusterTrustBundleReconciler) SetupWithManager(mgr ctrl.Manager) error {
	key := reconcile.Request{NamespacedName: types.NamespacedName{Name: ClusterTrustBundleName(r.TrustDomain)}}
	changed := r.CA.Subscribe()
	return ctrl.NewControllerManagedBy(mgr).
		Named("clustertrustbundle").
		For(&certv1.ClusterTrustBundle{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: 1}).
		WatchesRawSource(onSignal(changed, func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			q.Add(key)
		})).
		Complete(r)
}
