package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
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

// CAStatusConfigMapName is the ConfigMap, in the operator's namespace, that
// shows the CA and its rotation to anyone who may read ConfigMaps there
// (reading the CA Secret itself would expose the CA's key).
const CAStatusConfigMapName = "agentmesh-ca-status"

// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;update
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update

// CARotationReconciler runs the CA rotation on the leader: it measures how
// far the trust bundles and certificates have moved, advances the rotation
// state in the CA Secret one step at a time (ca.PlanRotation), reports it
// in Events, metrics and the agentmesh-ca-status ConfigMap, and adopts a CA
// that was replaced in place without losing the previous one.
type CARotationReconciler struct {
	Client      client.Client
	Reader      client.Reader
	Cache       cache.Cache
	Recorder    recorder.EventRecorder
	Clock       clock.PassiveClock
	Secret      types.NamespacedName
	Policy      ca.RotationPolicy
	Metrics     *Metrics
	TrustDomain spiffeid.TrustDomain

	mu       sync.Mutex
	lastSeen *ca.State
	// strandedReported is the stranded identities last reported in an
	// Event, so that a rotation reports each change once.
	strandedReported string
}

// RotationStatus is what agentmesh-ca-status shows.
type RotationStatus struct {
	Phase       ca.Phase `json:"phase"`
	Reason      string   `json:"reason,omitempty"`
	Compromised bool     `json:"compromised,omitempty"`
	// Deadline of an emergency rotation: by then the compromised CA has
	// left the bundles, whatever is still on it.
	Deadline     string      `json:"deadline,omitempty"`
	Active       CAInfo      `json:"active"`
	Next         *CAInfo     `json:"next,omitempty"`
	Retired      []CAInfo    `json:"retired,omitempty"`
	Progress     ca.Progress `json:"progress"`
	NextRotation string      `json:"nextRotation,omitempty"`
}

// CAInfo names a CA.
type CAInfo struct {
	Serial   string `json:"serial"`
	Subject  string `json:"subject"`
	NotAfter string `json:"notAfter"`
}

// Reconcile advances the rotation by at most one step.
func (r *CARotationReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (ctrl.Result, error) {
	log := logf.FromContext(ctx).WithValues("caSecret", r.Secret.String())
	now := r.Clock.Now()
	sec := &corev1.Secret{}
	if err := r.Reader.Get(ctx, r.Secret, sec); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	st, err := ca.Load(sec.Data, sec.Annotations, r.TrustDomain, now)
	if err != nil {
		// The CAReconciler reports an unusable CA; nothing to rotate.
		return ctrl.Result{}, nil
	}
	progress, err := r.measure(ctx, st, now)
	if err != nil {
		return ctrl.Result{}, err
	}

	var step ca.Step
	r.mu.Lock()
	previous := r.lastSeen
	r.mu.Unlock()
	if previous != nil && st.Rotation.Phase == ca.PhaseStable && !previous.Active.Cert.Equal(st.Active.Cert) &&
		st.Rotation.Active != "" && st.Rotation.Active != st.Active.SerialHex() {
		step, err = ca.AdoptReplacement(st, previous, sec.Data, sec.Annotations, now)
	} else {
		step, err = ca.PlanRotation(st, sec.Data, sec.Annotations, progress, now, r.Policy)
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	if step.Changed {
		upd := sec.DeepCopy()
		upd.Data, upd.Annotations = step.Data, step.Annotations
		if err := r.Client.Update(ctx, upd, client.FieldOwner(mtlsv1alpha1.FieldManager)); err != nil {
			return ctrl.Result{}, fmt.Errorf("writing the CA rotation: %w", err)
		}
		for _, e := range step.Events {
			log.Info("CA rotation", "step", e.Reason, "detail", e.Message)
			kind := corev1.EventTypeNormal
			if e.Warning {
				kind = corev1.EventTypeWarning
			}
			r.Recorder.Eventf(upd, nil, kind, e.Reason, "Rotate", "%s", e.Message)
		}
		if st, err = ca.Load(upd.Data, upd.Annotations, r.TrustDomain, now); err != nil {
			return ctrl.Result{}, err
		}
		if progress, err = r.measure(ctx, st, now); err != nil {
			return ctrl.Result{}, err
		}
	}
	r.mu.Lock()
	r.lastSeen = st
	r.mu.Unlock()

	status := r.status(st, progress, sec.Annotations[ca.AnnotationManaged] == "true")
	if r.Metrics != nil {
		r.Metrics.SetRotation(st, progress)
	}
	r.reportStranded(sec, st, progress)
	if err := r.writeStatus(ctx, status); err != nil {
		return ctrl.Result{}, err
	}

	if st.Rotation.Phase != ca.PhaseStable {
		return ctrl.Result{RequeueAfter: 2 * time.Second}, nil
	}
	// Between rotations the status is refreshed every 15s (a scan of the
	// caches); a due rotation starts on time.
	if due, ok := ca.NextRotation(st, sec.Annotations[ca.AnnotationManaged] == "true", r.Policy); ok {
		return ctrl.Result{RequeueAfter: min(max(due.Sub(now), time.Second), stableInterval)}, nil
	}
	return ctrl.Result{RequeueAfter: stableInterval}, nil
}

// reportStranded records an Event on the CA Secret when, during a rotation,
// the identities it cannot bring along change: those stay on the old CA and
// stop working when it leaves the bundles.
func (r *CARotationReconciler) reportStranded(sec *corev1.Secret, st *ca.State, p ca.Progress) {
	summary := ""
	if st.Rotation.Phase != ca.PhaseStable && p.Stranded > 0 {
		summary = strandedSummary(p)
	}
	r.mu.Lock()
	changed := summary != r.strandedReported
	r.strandedReported = summary
	r.mu.Unlock()
	if changed && summary != "" {
		r.Recorder.Eventf(sec, nil, corev1.EventTypeWarning, mtlsv1alpha1.EventRotationStranded, "Rotate",
			"the rotation goes on without %s, which stay on the previous CA and are refused once it leaves the bundles; fix them to bring them along", summary)
	}
}

// strandedSummary names the stranded identities, "3 identities: a/x
// (SecretConflict), ...", with a count of those not named.
func strandedSummary(p ca.Progress) string {
	noun := "identities"
	if p.Stranded == 1 {
		noun = "identity"
	}
	s := fmt.Sprintf("%d %s: %s", p.Stranded, noun, strings.Join(p.StrandedIdentities, ", "))
	if more := p.Stranded - len(p.StrandedIdentities); more > 0 {
		s += fmt.Sprintf(" and %d more", more)
	}
	return s
}

// stableInterval is how often the CA status is refreshed between rotations.
const stableInterval = 15 * time.Second

// measure counts, from the caches, the trust bundles that hold the current
// anchors and the identities whose certificate the active CA signed. Only
// what agentmesh wrote for a live identity counts (rotationWorld), so no
// object a tenant creates, and no identity that cannot be brought along,
// holds a rotation open.
func (r *CARotationReconciler) measure(ctx context.Context, st *ca.State, now time.Time) (ca.Progress, error) {
	var m ca.Progress
	ids := &mtlsv1alpha1.AgentIdentityList{}
	if err := r.Client.List(ctx, ids, client.UnsafeDisableDeepCopy); err != nil {
		return m, err
	}
	world := newRotationWorld(ids.Items)
	bundle, hash := st.BundlePEM(), st.BundleHash()
	secrets := &corev1.SecretList{}
	if err := r.Client.List(ctx, secrets, client.HasLabels{mtlsv1alpha1.LabelIdentity}, client.UnsafeDisableDeepCopy); err != nil {
		return m, err
	}
	for i := range secrets.Items {
		sec := &secrets.Items[i]
		if _, ok := sec.Data[mtlsv1alpha1.SecretTrustKey]; !ok || !world.counts(sec, (*mtlsv1alpha1.AgentIdentity).EffectiveSecretName) {
			continue
		}
		m.Bundles++
		if bytes.Equal(sec.Data[mtlsv1alpha1.SecretTrustKey], bundle) {
			m.BundlesCurrent++
		}
	}
	cms := &corev1.ConfigMapList{}
	if err := r.Client.List(ctx, cms, client.HasLabels{mtlsv1alpha1.LabelIdentity}, client.UnsafeDisableDeepCopy); err != nil {
		return m, err
	}
	for i := range cms.Items {
		if !world.counts(&cms.Items[i], (*mtlsv1alpha1.AgentIdentity).TrustConfigMapName) {
			continue
		}
		m.Bundles++
		if cms.Items[i].Annotations[mtlsv1alpha1.AnnotationAnchorsHash] == hash {
			m.BundlesCurrent++
		}
	}
	ctb := &certv1.ClusterTrustBundle{}
	switch err := r.Client.Get(ctx, types.NamespacedName{Name: ClusterTrustBundleName(r.TrustDomain)}, ctb); {
	case err == nil:
		m.Bundles++
		if ctb.Spec.TrustBundle == string(bundle) {
			m.BundlesCurrent++
		}
	case !apierrors.IsNotFound(err):
		return m, err
	}
	// Certificates of PodCertificate delivery cannot be reissued on demand:
	// they count until the kubelet refreshes them or they expire.
	pcs, err := CurrentPodCertificates(ctx, r.Client, "", now)
	if err != nil {
		return m, err
	}
	for _, pc := range pcs {
		leaf, err := leafOf(pc.Request)
		if err != nil {
			continue
		}
		m.Identities++
		if st.SignedByActive(leaf) {
			m.IdentitiesOnActive++
		} else if leaf.NotAfter.After(m.OthersExpireAt) {
			m.OthersExpireAt = leaf.NotAfter
		}
	}
	active := st.Active.SerialHex()
	for i := range ids.Items {
		id := &ids.Items[i]
		s := &id.Status
		if s.SerialNumber == "" || s.NotAfter == nil || !now.Before(s.NotAfter.Time) || world.stranded(id) != "" {
			continue
		}
		m.Identities++
		if s.CASerial == active {
			m.IdentitiesOnActive++
		} else if s.NotAfter.After(m.OthersExpireAt) {
			m.OthersExpireAt = s.NotAfter.Time
		}
	}
	m.Stranded, m.StrandedIdentities = world.strandedCount, world.strandedNames
	return m, nil
}

// rotationWorld is what decides which objects a rotation waits for.
type rotationWorld struct {
	byKey         map[types.NamespacedName]*mtlsv1alpha1.AgentIdentity
	strandedCount int
	strandedNames []string
}

func newRotationWorld(ids []mtlsv1alpha1.AgentIdentity) *rotationWorld {
	w := &rotationWorld{byKey: make(map[types.NamespacedName]*mtlsv1alpha1.AgentIdentity, len(ids))}
	for i := range ids {
		id := &ids[i]
		w.byKey[types.NamespacedName{Namespace: id.Namespace, Name: id.Name}] = id
		if reason := w.stranded(id); reason != "" {
			w.strandedCount++
			if len(w.strandedNames) < ca.MaxStrandedNames {
				w.strandedNames = append(w.strandedNames, id.Namespace+"/"+id.Name+" ("+reason+")")
			}
		}
	}
	return w
}

// stranded returns why a rotation cannot bring the identity along, or "":
// its spec is invalid (nothing is issued or published for it) or its
// Secret name is held by a Secret agentmesh did not write. Both wait for a
// person, and neither may hold a rotation, least of all an emergency one.
func (w *rotationWorld) stranded(id *mtlsv1alpha1.AgentIdentity) string {
	c := meta.FindStatusCondition(id.Status.Conditions, mtlsv1alpha1.ConditionReady)
	if c == nil || c.Status != metav1.ConditionFalse {
		return ""
	}
	switch c.Reason {
	case mtlsv1alpha1.ReasonInvalidSpec, mtlsv1alpha1.ReasonSecretConflict:
		return c.Reason
	}
	return ""
}

// counts says whether obj is a bundle the rotation waits for: controlled by
// a live identity of its namespace (the same UID), under the name that
// identity uses now, and that identity not stranded. Anything else that
// carries agentmesh's labels (a tenant's look-alike, the Secret an identity
// used before a rename, an object of a deleted identity awaiting garbage
// collection) is not waited for.
func (w *rotationWorld) counts(obj metav1.Object, name func(*mtlsv1alpha1.AgentIdentity) string) bool {
	ref := metav1.GetControllerOfNoCopy(obj)
	if ref == nil || ref.Kind != "AgentIdentity" || ref.APIVersion != mtlsv1alpha1.GroupVersion.String() {
		return false
	}
	id, ok := w.byKey[types.NamespacedName{Namespace: obj.GetNamespace(), Name: ref.Name}]
	return ok && id.UID == ref.UID && id.DeletionTimestamp.IsZero() && name(id) == obj.GetName() && w.stranded(id) == ""
}

func (r *CARotationReconciler) status(st *ca.State, m ca.Progress, managed bool) RotationStatus {
	info := func(c *ca.Authority) CAInfo {
		return CAInfo{Serial: c.SerialHex(), Subject: c.Cert.Subject.String(), NotAfter: c.Cert.NotAfter.UTC().Format(time.RFC3339)}
	}
	s := RotationStatus{
		Phase: st.Rotation.Phase, Reason: st.Rotation.Reason, Compromised: st.Rotation.Compromised,
		Active:   info(st.Active),
		Progress: m,
	}
	if d := st.Rotation.DeadlineAt; d != nil && st.Rotation.Compromised {
		s.Deadline = d.UTC().Format(time.RFC3339)
	}
	if st.Next != nil {
		n := info(st.Next)
		s.Next = &n
	}
	for _, c := range st.Retired {
		s.Retired = append(s.Retired, CAInfo{Serial: ca.SerialHex(c.SerialNumber), Subject: c.Subject.String(), NotAfter: c.NotAfter.UTC().Format(time.RFC3339)})
	}
	if due, ok := ca.NextRotation(st, managed, r.Policy); ok {
		s.NextRotation = due.UTC().Format(time.RFC3339)
	}
	return s
}

// writeStatus writes agentmesh-ca-status when it changed.
func (r *CARotationReconciler) writeStatus(ctx context.Context, s RotationStatus) error {
	raw, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	data := map[string]string{
		"phase":       string(s.Phase),
		"active":      fmt.Sprintf("%s (valid until %s)", s.Active.Serial, s.Active.NotAfter),
		"identities":  fmt.Sprintf("%d of %d on the active CA", s.Progress.IdentitiesOnActive, s.Progress.Identities),
		"bundles":     fmt.Sprintf("%d of %d current", s.Progress.BundlesCurrent, s.Progress.Bundles),
		"status.json": string(raw) + "\n",
	}
	if s.Next != nil {
		data["next"] = fmt.Sprintf("%s (valid until %s)", s.Next.Serial, s.Next.NotAfter)
	}
	if len(s.Retired) > 0 {
		var parts []string
		for _, c := range s.Retired {
			parts = append(parts, c.Serial)
		}
		data["retired"] = strings.Join(parts, ", ")
	}
	if s.NextRotation != "" {
		data["nextRotation"] = s.NextRotation
	}
	if s.Progress.Stranded > 0 {
		data["stranded"] = strandedSummary(s.Progress)
	}
	cm := &corev1.ConfigMap{}
	key := types.NamespacedName{Namespace: r.Secret.Namespace, Name: CAStatusConfigMapName}
	err = r.Client.Get(ctx, key, cm)
	switch {
	case apierrors.IsNotFound(err):
		cm = &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name,
				Labels: map[string]string{mtlsv1alpha1.LabelManagedBy: mtlsv1alpha1.ManagedByValue}},
			Data: data,
		}
		return client.IgnoreAlreadyExists(r.Client.Create(ctx, cm, client.FieldOwner(mtlsv1alpha1.FieldManager)))
	case err != nil:
		return err
	case maps.Equal(cm.Data, data):
		return nil
	}
	cm = cm.DeepCopy()
	cm.Data = data
	return r.Client.Update(ctx, cm, client.FieldOwner(mtlsv1alpha1.FieldManager))
}

// SetupWithManager runs the rotation on the leader: on every change of the
// CA Secret, and on a timer (every 2s during a rotation, 15s otherwise).
func (r *CARotationReconciler) SetupWithManager(mgr ctrl.Manager) error {
	key := reconcile.Request{NamespacedName: r.Secret}
	return ctrl.NewControllerManagedBy(mgr).
		Named("carotation").
		WithOptions(controller.Options{MaxConcurrentReconciles: 1}).
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
