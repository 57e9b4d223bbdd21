package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/identity"
	"github.com/agentmesh/agentmesh/internal/operator"
)

// floorResult is a bare-write floor: what a plain client needs for the
// minimum writes of N identities. It is measured twice in a run: with the
// manager's rate limits (the throttled floor: our own client-side limit)
// and with no client-side rate limit (the unthrottled floor: what the API
// server on this machine takes).
type floorResult struct {
	N int
	// Unthrottled says the client had no client-side rate limit; QPS and
	// Burst are the limits otherwise.
	Unthrottled bool
	QPS         float64
	Burst       int
	Elapsed     time.Duration
	// SecretBytes is the data size of each Secret; PatchBytes the size of
	// each status merge patch.
	SecretBytes int
	PatchBytes  int
	CPU         cpuSnapshot
}

func (f floorResult) writesPerSecond() float64 { return float64(2*f.N) / f.Elapsed.Seconds() }
func (f floorResult) perSecond() float64       { return float64(f.N) / f.Elapsed.Seconds() }

// limits describes the floor client's rate limits.
func (f floorResult) limits() string {
	if f.Unthrottled {
		return "no client-side rate limit (QPS -1)"
	}
	return fmt.Sprintf("QPS %v/burst %d (the manager's)", f.QPS, f.Burst)
}

// identitySecretData is the data of an identity Secret as the operator
// writes it (tls.crt, tls.key, ca.crt), issued by the operator's own CA and
// issuance code for ns/name with the API's defaults, so that the floor
// writes Secrets of exactly the issued size.
func identitySecretData(ns, name string) (map[string][]byte, error) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	now := time.Now()
	root, err := ca.Generate(ca.GenerateOptions{TrustDomain: td, Now: now})
	if err != nil {
		return nil, err
	}
	caData, err := ca.Encode(root)
	if err != nil {
		return nil, err
	}
	st, err := ca.Load(caData, nil, td, now)
	if err != nil {
		return nil, err
	}
	req, err := identity.NewRequest(td, &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})
	if err != nil {
		return nil, err
	}
	key, err := identity.GenerateKey(req.KeyAlgorithm, req.KeySize, rand.Reader)
	if err != nil {
		return nil, err
	}
	issued, err := identity.Issue(st, req, key, now, rand.Reader)
	if err != nil {
		return nil, err
	}
	return issued.SecretData(st.BundlePEM())
}

// statusPatch is a merge patch of the size and shape of the first status
// the manager writes for an identity.
func statusPatch(ns, name string, now time.Time) ([]byte, error) {
	serial := "5f2c8e0d9a7b41c3b6e2f0a18d4c7e95"
	notAfter := now.Add(24 * time.Hour)
	renewal := now.Add(12 * time.Hour)
	t := func(x time.Time) *metav1.Time { m := metav1.NewTime(x.Truncate(time.Second)); return &m }
	cond := func(typ string, st metav1.ConditionStatus, reason, msg string) metav1.Condition {
		return metav1.Condition{Type: typ, Status: st, Reason: reason, Message: msg, ObservedGeneration: 1, LastTransitionTime: *t(now)}
	}
	st := mtlsv1alpha1.AgentIdentityStatus{
		Conditions: []metav1.Condition{
			cond(mtlsv1alpha1.ConditionReady, metav1.ConditionTrue, mtlsv1alpha1.ReasonIssued,
				fmt.Sprintf("certificate %s is valid until %s", serial, notAfter.UTC().Format(time.RFC3339))),
			cond(mtlsv1alpha1.ConditionIssuing, metav1.ConditionFalse, mtlsv1alpha1.ReasonIssued,
				"renewal is due at "+renewal.UTC().Format(time.RFC3339)),
			cond(mtlsv1alpha1.ConditionPolicyResolved, metav1.ConditionTrue, mtlsv1alpha1.ReasonCompiled,
				"no AgentTrustPolicy selects this identity: the default posture (allow-authenticated) applies"),
		},
		SPIFFEID:           "spiffe://cluster.local/ns/" + ns + "/agent/" + name,
		SecretName:         name + mtlsv1alpha1.DefaultSecretNameSuffix,
		SerialNumber:       serial,
		NotBefore:          t(now.Add(-2 * time.Minute)),
		NotAfter:           t(notAfter),
		RenewalTime:        t(renewal),
		CASerial:           "3a9d0c4b7e1f28a65c0d9e3b4f7a1c28",
		ObservedGeneration: 1,
		TrustConfigMap:     name + mtlsv1alpha1.TrustConfigMapSuffix,
	}
	return json.Marshal(map[string]any{"status": st})
}

func floorName(i int) string { return fmt.Sprintf("floor-%05d", i) }

// runFloor measures the floor, in namespace floorNamespace, with the
// manager's rate limits (unthrottled false) or none. Before the timed part
// it creates the N AgentIdentities whose status it patches (the manager is
// not running, so nothing else touches them); afterwards it deletes
// everything it made.
func (e *env) runFloor(ctx context.Context, floorNamespace string, unthrottled bool) (floorResult, error) {
	res := floorResult{N: e.cfg.N, Unthrottled: unthrottled, QPS: e.cfg.QPS, Burst: e.cfg.Burst}
	what := "floor (throttled)"
	if unthrottled {
		what = "floor (unthrottled)"
	}
	if err := e.ensureNamespace(ctx, floorNamespace); err != nil {
		return res, err
	}
	data, err := identitySecretData(floorNamespace, floorName(0))
	if err != nil {
		return res, err
	}
	for _, v := range data {
		res.SecretBytes += len(v)
	}
	say("%s: preparing %d AgentIdentities to patch (not timed)", what, e.cfg.N)
	if err := parallel(ctx, e.cfg.N, 16, func(ctx context.Context, i int) error {
		id := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: floorNamespace, Name: floorName(i)}}
		return e.cl.Create(ctx, id)
	}); err != nil {
		return res, fmt.Errorf("%s: creating AgentIdentities: %w", what, err)
	}

	// The floor client: the manager's client stack (controller-runtime,
	// JSON) with the manager's rate limits (which controller-runtime
	// applies per resource: one token bucket for Secrets, one for
	// AgentIdentities), and enough parallelism to reach them; or, for the
	// unthrottled floor, with QPS -1, which gives the client no rate
	// limiter at all (client-go makes a token bucket only for QPS > 0).
	qps, burst := float32(e.cfg.QPS), e.cfg.Burst
	if unthrottled {
		qps, burst = -1, 0
	}
	fc, err := client.New(fastConfig(e.cluster.Config, qps, burst), client.Options{Scheme: operator.NewScheme()})
	if err != nil {
		return res, err
	}
	now := time.Now()
	p0, err := statusPatch(floorNamespace, floorName(0), now)
	if err != nil {
		return res, err
	}
	res.PatchBytes = len(p0)
	say("%s: %d Secret creates (%d B of data each) and %d status merge patches (%d B each), %s, %d workers",
		what, e.cfg.N, res.SecretBytes, e.cfg.N, res.PatchBytes, res.limits(), e.cfg.FloorWorkers)
	cpu0 := e.cpuSnapshot()
	start := time.Now()
	err = parallel(ctx, e.cfg.N, e.cfg.FloorWorkers, func(ctx context.Context, i int) error {
		name := floorName(i)
		sec := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: floorNamespace, Name: name + mtlsv1alpha1.DefaultSecretNameSuffix,
				Labels: map[string]string{mtlsv1alpha1.LabelIdentity: name},
				Annotations: map[string]string{
					mtlsv1alpha1.AnnotationSPIFFEID: "spiffe://cluster.local/ns/" + floorNamespace + "/agent/" + name,
					mtlsv1alpha1.AnnotationSpecHash: "9c1f0b6a2d4e8f37",
				},
			},
			Type: corev1.SecretTypeTLS,
			Data: data,
		}
		if err := fc.Create(ctx, sec); err != nil {
			return fmt.Errorf("creating Secret %s: %w", sec.Name, err)
		}
		patch, err := statusPatch(floorNamespace, name, now)
		if err != nil {
			return err
		}
		id := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: floorNamespace, Name: name}}
		if err := fc.Status().Patch(ctx, id, client.RawPatch(types.MergePatchType, patch)); err != nil {
			return fmt.Errorf("patching the status of %s: %w", name, err)
		}
		return nil
	})
	res.Elapsed = time.Since(start)
	res.CPU = e.cpuSnapshot().sub(cpu0)
	if err != nil {
		return res, fmt.Errorf("%s: %w", what, err)
	}
	say("%s: %s, %.0f writes/s", what, res.Elapsed.Round(time.Millisecond), res.writesPerSecond())

	say("%s: deleting its objects (not timed)", what)
	if err := parallel(ctx, e.cfg.N, 16, func(ctx context.Context, i int) error {
		name := floorName(i)
		if err := client.IgnoreNotFound(e.cl.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
			Namespace: floorNamespace, Name: name + mtlsv1alpha1.DefaultSecretNameSuffix}})); err != nil {
			return err
		}
		return client.IgnoreNotFound(e.cl.Delete(ctx, &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: floorNamespace, Name: name}}))
	}); err != nil {
		return res, fmt.Errorf("%s: cleaning up: %w", what, err)
	}
	return res, nil
}
