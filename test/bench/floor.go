package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
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

// identityMaterial is a certificate, key and CA of the size an identity
// Secret holds: a P-256 leaf with a SPIFFE URI SAN, its PKCS#8 key, and a
// P-256 CA.
type identityMaterial struct {
	certPEM, keyPEM, caPEM []byte
}

func newIdentityMaterial(ns, name string) (identityMaterial, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return identityMaterial{}, err
	}
	now := time.Now()
	serial := func() *big.Int {
		n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
		return n
	}
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{Organization: []string{"agentmesh"}, CommonName: "agentmesh agent CA"},
		NotBefore: now, NotAfter: now.Add(365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:     []*url.URL{{Scheme: "spiffe", Host: "cluster.local"}},
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return identityMaterial{}, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return identityMaterial{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return identityMaterial{}, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: serial(), NotBefore: now.Add(-2 * time.Minute), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/" + ns + "/agent/" + name}},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return identityMaterial{}, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return identityMaterial{}, err
	}
	return identityMaterial{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
		caPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
	}, nil
}

func (m identityMaterial) size() int { return len(m.certPEM) + len(m.keyPEM) + len(m.caPEM) }

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
	mat, err := newIdentityMaterial(floorNamespace, floorName(0))
	if err != nil {
		return res, err
	}
	res.SecretBytes = mat.size()
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
			Data: map[string][]byte{corev1.TLSCertKey: mat.certPEM, corev1.TLSPrivateKeyKey: mat.keyPEM, "ca.crt": mat.caPEM},
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
