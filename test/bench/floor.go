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

const floorNamespace = "bench-floor"

// floorResult is the bare-write floor: what a plain client with the
// manager's rate limits needs for the minimum writes of N identities.
type floorResult struct {
	N       int
	Elapsed time.Duration
	// SecretBytes is the data size of each Secret; PatchBytes the size of
	// each status merge patch.
	SecretBytes int
	PatchBytes  int
	CPU         cpuSnapshot
}

func (f floorResult) writesPerSecond() float64 { return float64(2*f.N) / f.Elapsed.Seconds() }
func (f floorResult) perSecond() float64       { return float64(f.N) / f.Elapsed.Seconds() }

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

// runFloor measures the floor. Before the timed part it creates the N
// AgentIdentities whose status it patches (the manager is not running, so
// nothing else touches them); afterwards it deletes everything it made.
func (e *env) runFloor(ctx context.Context) (floorResult, error) {
	res := floorResult{N: e.cfg.N}
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
	say("floor: preparing %d AgentIdentities to patch (not timed)", e.cfg.N)
	if err := parallel(ctx, e.cfg.N, 16, func(ctx context.Context, i int) error {
		id := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: floorNamespace, Name: floorName(i)}}
		return e.cl.Create(ctx, id)
	}); err != nil {
		return res, fmt.Errorf("floor: creating AgentIdentities: %w", err)
	}

	// The floor client: the manager's client stack (controller-runtime,
	// JSON) with the manager's rate limits (which controller-runtime
	// applies per resource: one token bucket for Secrets, one for
	// AgentIdentities), and enough parallelism to reach them.
	fc, err := client.New(fastConfig(e.cluster.Config, float32(e.cfg.QPS), e.cfg.Burst), client.Options{Scheme: operator.NewScheme()})
	if err != nil {
		return res, err
	}
	now := time.Now()
	p0, err := statusPatch(floorNamespace, floorName(0), now)
	if err != nil {
		return res, err
	}
	res.PatchBytes = len(p0)
	say("floor: %d Secret creates (%d B of data each) and %d status merge patches (%d B each), QPS %v burst %d, %d workers",
		e.cfg.N, res.SecretBytes, e.cfg.N, res.PatchBytes, e.cfg.QPS, e.cfg.Burst, e.cfg.FloorWorkers)
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
		return res, fmt.Errorf("floor: %w", err)
	}
	say("floor: %s, %.0f writes/s", res.Elapsed.Round(time.Millisecond), res.writesPerSecond())

	say("floor: deleting its objects (not timed)")
	if err := parallel(ctx, e.cfg.N, 16, func(ctx context.Context, i int) error {
		name := floorName(i)
		if err := client.IgnoreNotFound(e.cl.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
			Namespace: floorNamespace, Name: name + mtlsv1alpha1.DefaultSecretNameSuffix}})); err != nil {
			return err
		}
		return client.IgnoreNotFound(e.cl.Delete(ctx, &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: floorNamespace, Name: name}}))
	}); err != nil {
		return res, fmt.Errorf("floor: cleaning up: %w", err)
	}
	return res, nil
}
