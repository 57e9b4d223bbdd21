package controller

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
)

// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// CAReconciler loads the agent CA from its Secret into a ca.Holder, creating
// a self-signed root when the Secret does not exist. It runs on every
// replica (not only the leader), so that every replica has the CA.
type CAReconciler struct {
	// Client writes the CA Secret when it bootstraps one.
	Client client.Client
	// Reader reads the CA Secret: a cache that holds that Secret only.
	Reader      client.Reader
	Cache       cache.Cache
	Recorder    recorder.EventRecorder
	Clock       clock.PassiveClock
	Holder      *ca.Holder
	Secret      types.NamespacedName
	TrustDomain spiffeid.TrustDomain
	// Lifetime of a bootstrapped root.
	Lifetime time.Duration
	// Metrics, when set, records the CA's expiry.
	Metrics *Metrics
}

// Reconcile loads, validates or bootstraps the CA.
func (r *CAReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (ctrl.Result, error) {
	log := logf.FromContext(ctx).WithValues("caSecret", r.Secret.String())
	ctx = logf.IntoContext(ctx, log)
	now := r.Clock.Now()

	secret := &corev1.Secret{}
	err := r.Reader.Get(ctx, r.Secret, secret)
	if apierrors.IsNotFound(err) {
		return r.bootstrap(ctx, now)
	}
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("reading the CA Secret: %w", err)
	}

	st, err := ca.Load(secret.Data, secret.Annotations, r.TrustDomain, now)
	if err != nil {
		if !ca.IsInvalid(err) {
			return ctrl.Result{}, err
		}
		if r.Holder.Set(nil, fmt.Errorf("CA Secret %s: %w", r.Secret, err)) {
			log.Info("the CA Secret is not usable; no certificate is issued until it is fixed", "reason", err.Error())
			r.Recorder.Eventf(secret, nil, corev1.EventTypeWarning, mtlsv1alpha1.EventCAInvalid, "Load",
				"The CA cannot be used, no certificate is issued until it is fixed: %s", err.Error())
		}
		// Nothing to retry until the Secret changes, which the watch reports.
		return ctrl.Result{}, nil
	}
	// The first load of a process is logged only: a restart must not write
	// (one Event per restart adds up, and says nothing new). A CA that
	// changes while the operator runs, or that was unusable before, is
	// also recorded as an Event on the Secret.
	_, prev := r.Holder.Get()
	if r.Holder.Set(st, nil) {
		log.Info("loaded the agent CA", "serial", st.Active.SerialHex(), "notAfter", st.Active.Cert.NotAfter, "anchors", len(st.Anchors),
			"rotation", st.Rotation.Phase)
		if !errors.Is(prev, ca.ErrNotLoaded) {
			r.Recorder.Eventf(secret, nil, corev1.EventTypeNormal, mtlsv1alpha1.EventCALoaded, "Load",
				"Loaded CA %s (subject %q, valid until %s) with %d trust anchor(s)",
				st.Active.SerialHex(), st.Active.Cert.Subject.String(), st.Active.Cert.NotAfter.UTC().Format(time.RFC3339), len(st.Anchors))
		}
	}
	if r.Metrics != nil {
		r.Metrics.SetCA(st)
	}
	// Look again when a CA expires, so that expiry is noticed.
	next := st.Active.Cert.NotAfter
	if st.Next != nil && st.Next.Cert.NotAfter.Before(next) {
		next = st.Next.Cert.NotAfter
	}
	return ctrl.Result{RequeueAfter: max(next.Sub(now), time.Second)}, nil
}

func (r *CAReconciler) bootstrap(ctx context.Context, now time.Time) (ctrl.Result, error) {
	log := logf.FromContext(ctx)
	a, err := ca.Generate(ca.GenerateOptions{TrustDomain: r.TrustDomain, Lifetime: r.Lifetime, Now: now, Rand: rand.Reader})
	if err != nil {
		return ctrl.Result{}, err
	}
	data, err := ca.Encode(a)
	if err != nil {
		return ctrl.Result{}, err
	}
	rotation, err := json.Marshal(ca.Rotation{Phase: ca.PhaseStable, Active: a.SerialHex()})
	if err != nil {
		return ctrl.Result{}, err
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: r.Secret.Namespace,
			Name:      r.Secret.Name,
			Labels:    map[string]string{mtlsv1alpha1.LabelManagedBy: mtlsv1alpha1.ManagedByValue},
			// The operator created this CA, so it rotates it on schedule.
			Annotations: map[string]string{ca.AnnotationManaged: "true", ca.AnnotationRotation: string(rotation)},
		},
		Type: corev1.SecretTypeTLS,
		Data: data,
	}
	if err := r.Client.Create(ctx, secret, client.FieldOwner(mtlsv1alpha1.FieldManager)); err != nil {
		if apierrors.IsAlreadyExists(err) {
			// Another replica was first; its Secret arrives through the watch.
			return ctrl.Result{RequeueAfter: time.Second}, nil
		}
		return ctrl.Result{}, fmt.Errorf("creating the CA Secret: %w", err)
	}
	log.Info("created a self-signed agent CA", "serial", a.SerialHex(), "notAfter", a.Cert.NotAfter)
	r.Recorder.Eventf(secret, nil, corev1.EventTypeNormal, mtlsv1alpha1.EventCACreated, "Create",
		"Created self-signed CA %s for trust domain %s, valid until %s",
		a.SerialHex(), r.TrustDomain.Name(), a.Cert.NotAfter.UTC().Format(time.RFC3339))
	// Load what was written, as any other CA.
	return r.Reconcile(ctx, reconcile.Request{NamespacedName: r.Secret})
}

// SetupWithManager watches the CA Secret through the CA cache, and queues
// one pass at start, so that a missing Secret is created.
func (r *CAReconciler) SetupWithManager(mgr ctrl.Manager) error {
	key := reconcile.Request{NamespacedName: r.Secret}
	return ctrl.NewControllerManagedBy(mgr).
		Named("ca").
		WithOptions(controller.Options{NeedLeaderElection: ptr.To(false), MaxConcurrentReconciles: 1}).
		WatchesRawSource(source.Kind(r.Cache, &corev1.Secret{},
			handler.TypedEnqueueRequestsFromMapFunc(func(context.Context, *corev1.Secret) []reconcile.Request {
				return []reconcile.Request{key}
			}))).
		WatchesRawSource(source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
			q.Add(key)
			return nil
		})).
		Complete(r)
}
