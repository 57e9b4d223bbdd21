package controller_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/controller"
	"github.com/agentmesh/agentmesh/internal/identity"
	"github.com/agentmesh/agentmesh/test/cluster"
)

// parsed is an identity Secret taken apart.
type parsed struct {
	leaf  *x509.Certificate
	chain []*x509.Certificate
	key   any
	roots *x509.CertPool
}

func parseSecret(t *testing.T, s *corev1.Secret) parsed {
	t.Helper()
	certs, err := ca.ParseCertificatesPEM(s.Data["tls.crt"])
	if err != nil {
		t.Fatalf("tls.crt: %v", err)
	}
	key, err := ca.ParsePrivateKeyPEM(s.Data["tls.key"])
	if err != nil {
		t.Fatalf("tls.key: %v", err)
	}
	if !ca.KeyMatchesCertificate(key, certs[0]) {
		t.Fatal("tls.key does not match the certificate in tls.crt")
	}
	roots, err := ca.ParseCertificatesPEM(s.Data["ca.crt"])
	if err != nil {
		t.Fatalf("ca.crt: %v", err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	return parsed{leaf: certs[0], chain: certs[1:], key: key, roots: pool}
}

func serialOf(p parsed) string { return ca.SerialHex(p.leaf.SerialNumber) }

func TestIssuance(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	id := cluster.NewIdentity(ns, "worker", func(a *mtlsv1alpha1.AgentIdentity) {
		a.Spec.DNSNames = []string{"worker." + ns + ".svc"}
		a.Labels = map[string]string{"role": "worker"}
	})
	cluster.Create(t, k8s, id)
	nn := client.ObjectKeyFromObject(id)
	got := waitReady(t, nn)

	sec := getSecret(t, ns, "worker-tls")
	if sec.Type != corev1.SecretTypeTLS {
		t.Errorf("Secret type %s, want kubernetes.io/tls", sec.Type)
	}
	if keys := slices.Sorted(mapKeys(sec.Data)); strings.Join(keys, ",") != "ca.crt,tls.crt,tls.key" {
		t.Errorf("Secret keys %v", keys)
	}
	if !strings.HasPrefix(string(sec.Data["tls.key"]), "-----BEGIN PRIVATE KEY-----\n") {
		t.Error("tls.key is not a PKCS#8 PEM key")
	}
	p := parseSecret(t, sec)
	wantID := "spiffe://cluster.local/ns/" + ns + "/agent/worker"
	if len(p.leaf.URIs) != 1 || p.leaf.URIs[0].String() != wantID {
		t.Errorf("URI SANs %v, want exactly [%s]", p.leaf.URIs, wantID)
	}
	if !slices.Equal(p.leaf.DNSNames, []string{"worker." + ns + ".svc"}) {
		t.Errorf("DNS SANs %v", p.leaf.DNSNames)
	}
	if p.leaf.IsCA || p.leaf.KeyUsage != x509.KeyUsageDigitalSignature ||
		!slices.Equal(p.leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("leaf usage: isCA=%v ku=%v eku=%v", p.leaf.IsCA, p.leaf.KeyUsage, p.leaf.ExtKeyUsage)
	}
	if d := p.leaf.NotAfter.Sub(p.leaf.NotBefore); d != 24*time.Hour+identity.MaxBackdate {
		t.Errorf("validity %s, want 24h plus the 2m backdate", d)
	}
	if _, err := p.leaf.Verify(x509.VerifyOptions{Roots: p.roots, CurrentTime: clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not verify to ca.crt: %v", err)
	}
	caSec := getSecret(t, operatorNamespace, "agentmesh-ca")
	if !bytes.Equal(sec.Data["ca.crt"], caSec.Data["ca.crt"]) {
		t.Error("the Secret's ca.crt is not the CA's trust bundle")
	}

	// Owner reference, labels, annotations.
	ref := metav1.GetControllerOf(sec)
	if ref == nil || ref.UID != got.UID || ref.Kind != "AgentIdentity" || ref.BlockOwnerDeletion == nil || !*ref.BlockOwnerDeletion {
		t.Errorf("controller reference %+v, want the AgentIdentity %s", ref, got.UID)
	}
	if sec.Labels[mtlsv1alpha1.LabelManagedBy] != "agentmesh" || sec.Labels[mtlsv1alpha1.LabelIdentity] != "worker" {
		t.Errorf("labels %v", sec.Labels)
	}
	if sec.Annotations[mtlsv1alpha1.AnnotationSPIFFEID] != wantID {
		t.Errorf("annotations %v", sec.Annotations)
	}

	// Status tells the truth about the Secret.
	st := got.Status
	caState, _ := running.CA.Get()
	if st.SPIFFEID != wantID || st.SecretName != "worker-tls" || st.SerialNumber != serialOf(p) ||
		!st.NotBefore.Time.Equal(p.leaf.NotBefore) || !st.NotAfter.Time.Equal(p.leaf.NotAfter) ||
		st.CASerial != caState.Active.SerialHex() || st.ObservedGeneration != got.Generation || st.FailedIssuanceAttempts != 0 {
		t.Errorf("status %+v does not match the certificate %s", st, serialOf(p))
	}
	if want := identity.RenewalFor(mustRequest(t, got), string(got.UID), p.leaf); !st.RenewalTime.Time.Equal(want) {
		t.Errorf("renewalTime %s, want %s", st.RenewalTime, want)
	}
	if r := st.RenewalTime.Time; r.Before(p.leaf.NotBefore.Add(9*time.Hour)) || r.After(p.leaf.NotBefore.Add(13*time.Hour)) {
		t.Errorf("renewalTime %s is not 40-50%% into the lifetime", r)
	}
	for _, c := range st.Conditions {
		if c.ObservedGeneration != got.Generation {
			t.Errorf("condition %s has observedGeneration %d, want %d", c.Type, c.ObservedGeneration, got.Generation)
		}
	}
	if c := meta.FindStatusCondition(st.Conditions, mtlsv1alpha1.ConditionIssuing); c == nil || c.Status != metav1.ConditionFalse {
		t.Errorf("Issuing condition %+v, want False", c)
	}

	// Metrics.
	if v := gauge(t, "agentmesh_identity_ready", ns, "worker"); v != 1 {
		t.Errorf("agentmesh_identity_ready = %v, want 1", v)
	}
	if v := gauge(t, "agentmesh_identity_expiration_timestamp_seconds", ns, "worker"); v != float64(p.leaf.NotAfter.Unix()) {
		t.Errorf("expiration gauge %v, want %d", v, p.leaf.NotAfter.Unix())
	}
	if v := gauge(t, "agentmesh_ca_expiration_timestamp_seconds", "", ""); v != float64(caState.Active.Cert.NotAfter.Unix()) {
		t.Errorf("CA expiration gauge %v", v)
	}
}

func TestKeyAlgorithms(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	for _, tc := range []struct {
		name string
		key  mtlsv1alpha1.PrivateKey
		want string
	}{
		{"ecdsa-384", mtlsv1alpha1.PrivateKey{Algorithm: mtlsv1alpha1.ECDSAKeyAlgorithm, Size: 384}, "*ecdsa.PrivateKey/384"},
		{"ed25519", mtlsv1alpha1.PrivateKey{Algorithm: mtlsv1alpha1.Ed25519KeyAlgorithm}, "ed25519.PrivateKey/0"},
		// RSA keys are generated off the reconcile path and still arrive.
		{"rsa-2048", mtlsv1alpha1.PrivateKey{Algorithm: mtlsv1alpha1.RSAKeyAlgorithm, Size: 2048}, "*rsa.PrivateKey/2048"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := cluster.NewIdentity(ns, tc.name, func(a *mtlsv1alpha1.AgentIdentity) { a.Spec.PrivateKey = &tc.key })
			cluster.Create(t, k8s, id)
			waitReady(t, client.ObjectKeyFromObject(id))
			p := parseSecret(t, getSecret(t, ns, tc.name+"-tls"))
			if got := keyKind(p.key); got != tc.want {
				t.Errorf("key %s, want %s", got, tc.want)
			}
		})
	}
}

func TestRenewalByClock(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	id := cluster.NewIdentity(ns, "renewer", func(a *mtlsv1alpha1.AgentIdentity) {
		a.Spec.Duration = &metav1.Duration{Duration: time.Hour}
	})
	cluster.Create(t, k8s, id)
	nn := client.ObjectKeyFromObject(id)
	before := waitReady(t, nn)
	first := parseSecret(t, getSecret(t, ns, "renewer-tls"))

	// One second short of the renewal time nothing happens...
	t.Cleanup(clk.Reset)
	r := reconciler()
	clk.SetTime(before.Status.RenewalTime.Add(-time.Second))
	if res, err := r.Reconcile(context.Background(), req(nn)); err != nil || res.RequeueAfter <= 0 || res.RequeueAfter > time.Second {
		t.Fatalf("before renewal: result %+v, err %v; want a requeue within 1s", res, err)
	}
	if s := serialOf(parseSecret(t, getSecret(t, ns, "renewer-tls"))); s != serialOf(first) {
		t.Fatalf("renewed early: serial %s", s)
	}
	// ...and at the renewal time the certificate and the key are new.
	// The running operator shares the clock, so it may renew at the same
	// moment; the loser of that race gets a conflict and, like the
	// controller's own queue, tries again on fresh objects.
	clk.SetTime(before.Status.RenewalTime.Time)
	var res reconcile.Result
	cluster.Eventually(t, 5*time.Second, "reconcile at the renewal time", func() error {
		var err error
		res, err = r.Reconcile(context.Background(), req(nn))
		if err != nil && !apierrors.IsConflict(err) {
			t.Fatal(err)
		}
		return err
	})
	second := parseSecret(t, getSecret(t, ns, "renewer-tls"))
	if serialOf(second) == serialOf(first) {
		t.Fatal("serial unchanged after the renewal time")
	}
	if ca.KeyMatchesCertificate(first.key.(crypto.Signer), second.leaf) {
		t.Error("the renewed certificate reuses the old key")
	}
	after := waitCondition(t, nn, mtlsv1alpha1.ConditionReady, metav1.ConditionTrue, mtlsv1alpha1.ReasonIssued)
	cluster.Eventually(t, 5*time.Second, "status follows the renewal", func() error {
		if err := k8s.Get(context.Background(), nn, after); err != nil {
			return err
		}
		if after.Status.SerialNumber != serialOf(second) {
			return fmt.Errorf("status serial %s", after.Status.SerialNumber)
		}
		return nil
	})
	if !after.Status.RenewalTime.After(before.Status.RenewalTime.Time) {
		t.Errorf("renewal time did not move: %s", after.Status.RenewalTime)
	}
	if want := after.Status.RenewalTime.Sub(clk.Now()); res.RequeueAfter < want || res.RequeueAfter > want+5*time.Second {
		t.Errorf("requeue after %s, want about %s (the next renewal)", res.RequeueAfter, want)
	}
	note := cluster.WaitEvent(t, k8s, after, "AgentIdentity", "Renewed", 10*time.Second)
	if !strings.Contains(note, serialOf(second)) || !strings.Contains(note, after.Status.SPIFFEID) {
		t.Errorf("Renewed event %q does not name the new serial and the SPIFFE ID", note)
	}
	// The first issuance, which went through at once, made no Event (the
	// recorder sends in order, so it would be there before Renewed).
	assertNoEvent(t, after, "AgentIdentity", "Issued")
}

func TestRepair(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	for _, name := range []string{"victim", "other"} {
		cluster.Create(t, k8s, cluster.NewIdentity(ns, name))
		waitReady(t, types.NamespacedName{Namespace: ns, Name: name})
	}
	victim := types.NamespacedName{Namespace: ns, Name: "victim"}
	wantID := "spiffe://cluster.local/ns/" + ns + "/agent/victim"
	serial := serialOf(parseSecret(t, getSecret(t, ns, "victim-tls")))

	// repaired waits for a new, valid certificate for the victim.
	repaired := func(what string) {
		t.Helper()
		cluster.Eventually(t, 10*time.Second, "repair after "+what, func() error {
			s := &corev1.Secret{}
			if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "victim-tls"}, s); err != nil {
				return err
			}
			p, err := tryParse(s)
			if err != nil {
				return err
			}
			if serialOf(p) == serial {
				return errors.New("serial unchanged")
			}
			if p.leaf.URIs[0].String() != wantID {
				return fmt.Errorf("certificate for %s", p.leaf.URIs[0])
			}
			serial = serialOf(p)
			return nil
		})
		got := waitReady(t, victim)
		cluster.Eventually(t, 5*time.Second, "status serial after "+what, func() error {
			if err := k8s.Get(context.Background(), victim, got); err != nil {
				return err
			}
			if got.Status.SerialNumber != serial {
				return fmt.Errorf("status serial %s, Secret %s", got.Status.SerialNumber, serial)
			}
			return nil
		})
	}

	if err := k8s.Delete(context.Background(), getSecret(t, ns, "victim-tls")); err != nil {
		t.Fatal(err)
	}
	repaired("deleting the Secret")
	cluster.WaitEvent(t, k8s, cluster.NewIdentity(ns, "victim"), "AgentIdentity", "SecretRepaired", 10*time.Second)

	s := getSecret(t, ns, "victim-tls")
	s.Data["tls.key"] = []byte("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
	if err := k8s.Update(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	repaired("corrupting tls.key")

	// A key that parses but is not the certificate's, the annotations left
	// as agentmesh wrote them: the cache keeps no tls.key, and its hash of
	// the data no longer matches the one recorded at the write.
	s = getSecret(t, ns, "victim-tls")
	s.Data["tls.key"] = getSecret(t, ns, "other-tls").Data["tls.key"]
	if err := k8s.Update(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	repaired("swapping in another identity's key")

	other := getSecret(t, ns, "other-tls")
	s = getSecret(t, ns, "victim-tls")
	s.Data["tls.crt"], s.Data["tls.key"] = other.Data["tls.crt"], other.Data["tls.key"]
	if err := k8s.Update(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	repaired("swapping in another identity's certificate and key")
}

func TestForeignSecretIsNeverOverwritten(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	foreign := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "taken-tls"},
		Data:       map[string][]byte{"password": []byte("hunter2")},
	}
	cluster.Create(t, k8s, foreign)
	id := cluster.NewIdentity(ns, "taken")
	cluster.Create(t, k8s, id)
	nn := client.ObjectKeyFromObject(id)
	got := waitCondition(t, nn, mtlsv1alpha1.ConditionReady, metav1.ConditionFalse, mtlsv1alpha1.ReasonSecretConflict)
	if c := meta.FindStatusCondition(got.Status.Conditions, mtlsv1alpha1.ConditionReady); !strings.Contains(c.Message, "Secret taken-tls exists and was not created by agentmesh") {
		t.Errorf("message %q", c.Message)
	}
	cluster.WaitEvent(t, k8s, got, "AgentIdentity", "SecretConflict", 10*time.Second)
	s := getSecret(t, ns, "taken-tls")
	if string(s.Data["password"]) != "hunter2" || len(s.Data) != 1 || len(s.OwnerReferences) != 0 || len(s.Labels) != 0 {
		t.Errorf("the foreign Secret was touched: %+v", s)
	}

	// A Secret of ours that another identity owns is a conflict too.
	cluster.Create(t, k8s, cluster.NewIdentity(ns, "owner"))
	waitReady(t, types.NamespacedName{Namespace: ns, Name: "owner"})
	thief := cluster.NewIdentity(ns, "thief", func(a *mtlsv1alpha1.AgentIdentity) { a.Spec.SecretName = "owner-tls" })
	cluster.Create(t, k8s, thief)
	waitCondition(t, client.ObjectKeyFromObject(thief), mtlsv1alpha1.ConditionReady, metav1.ConditionFalse, mtlsv1alpha1.ReasonSecretConflict)
	if ref := metav1.GetControllerOf(getSecret(t, ns, "owner-tls")); ref == nil || ref.Name != "owner" {
		t.Errorf("owner-tls changed hands: %+v", ref)
	}

	// Once the foreign Secret is gone, the identity gets its own when it
	// next looks (the back-off between looks is capped at 30s).
	if err := k8s.Delete(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	waitConditionWithin(t, 40*time.Second, nn, mtlsv1alpha1.ConditionReady, metav1.ConditionTrue, mtlsv1alpha1.ReasonIssued)
	parseSecret(t, getSecret(t, ns, "taken-tls"))
}

func TestSpecChanges(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	id := cluster.NewIdentity(ns, "changer")
	cluster.Create(t, k8s, id)
	nn := client.ObjectKeyFromObject(id)
	waitReady(t, nn)
	first := serialOf(parseSecret(t, getSecret(t, ns, "changer-tls")))

	update(t, nn, func(a *mtlsv1alpha1.AgentIdentity) { a.Spec.DNSNames = []string{"changer.example"} })
	cluster.Eventually(t, 10*time.Second, "reissue for new DNS names", func() error {
		p, err := tryParse(getSecret(t, ns, "changer-tls"))
		if err != nil {
			return err
		}
		if !slices.Equal(p.leaf.DNSNames, []string{"changer.example"}) || serialOf(p) == first {
			return fmt.Errorf("DNS names %v", p.leaf.DNSNames)
		}
		return nil
	})

	update(t, nn, func(a *mtlsv1alpha1.AgentIdentity) { a.Spec.SecretName = "changer-cert" })
	cluster.Eventually(t, 10*time.Second, "the new Secret is written and the old one removed", func() error {
		got := &mtlsv1alpha1.AgentIdentity{}
		if err := k8s.Get(context.Background(), nn, got); err != nil {
			return err
		}
		if got.Status.SecretName != "changer-cert" || got.Status.ObservedGeneration != got.Generation {
			return fmt.Errorf("status secretName %q", got.Status.SecretName)
		}
		err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "changer-tls"}, &corev1.Secret{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("old Secret still there: %w", err)
		}
		return nil
	})
	parseSecret(t, getSecret(t, ns, "changer-cert"))
}

// A Secret written under a name the status never recorded (the operator
// was killed between the Secret write and the status write, or the name
// changed while the first status waited for the trust ConfigMap) is deleted
// once the identity's Secret is under its new name, like a Secret of a
// name the status recorded.
func TestSecretOfUnrecordedNameIsRemoved(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	stopOperator()
	started := false
	defer func() {
		if !started {
			if err := startOperator(); err != nil {
				t.Fatal(err)
			}
		}
	}()
	id := cluster.NewIdentity(ns, "mover", func(a *mtlsv1alpha1.AgentIdentity) { a.Spec.SecretName = "mover-a" })
	cluster.Create(t, k8s, id)
	nn := client.ObjectKeyFromObject(id)
	// What a run killed after writing the Secret of mover-a leaves: the
	// Secret, labelled and owned as the operator writes it, and no status.
	lost := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "mover-a", Labels: map[string]string{
			mtlsv1alpha1.LabelManagedBy: mtlsv1alpha1.ManagedByValue, mtlsv1alpha1.LabelIdentity: id.Name,
		}},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: nil, corev1.TLSPrivateKeyKey: nil},
	}
	if err := controllerutil.SetControllerReference(id, lost, k8s.Scheme()); err != nil {
		t.Fatal(err)
	}
	cluster.Create(t, k8s, lost)
	update(t, nn, func(a *mtlsv1alpha1.AgentIdentity) { a.Spec.SecretName = "mover-b" })
	if err := startOperator(); err != nil {
		t.Fatal(err)
	}
	started = true
	cluster.Eventually(t, 10*time.Second, "mover-b written, mover-a deleted", func() error {
		got := &mtlsv1alpha1.AgentIdentity{}
		if err := k8s.Get(context.Background(), nn, got); err != nil {
			return err
		}
		if got.Status.SecretName != "mover-b" || !meta.IsStatusConditionTrue(got.Status.Conditions, mtlsv1alpha1.ConditionReady) {
			return fmt.Errorf("status secretName %q, conditions %v", got.Status.SecretName, got.Status.Conditions)
		}
		switch err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "mover-a"}, &corev1.Secret{}); {
		case err == nil:
			return errors.New("the Secret of the unrecorded name is still there")
		case !apierrors.IsNotFound(err):
			return err
		}
		return nil
	})
	parseSecret(t, getSecret(t, ns, "mover-b"))
}

func TestBackoffGrowsOnRepeatedCAFailure(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	stopOperator()
	defer func() {
		if err := startOperator(); err != nil {
			t.Fatal(err)
		}
	}()
	id := cluster.NewIdentity(ns, "unlucky")
	cluster.Create(t, k8s, id)
	nn := client.ObjectKeyFromObject(id)

	// A CA whose signing key fails every signature (as a broken HSM would).
	t.Cleanup(clk.Reset)
	st := brokenCA(t)
	r := reconciler()
	r.CA = &ca.Holder{}
	r.CA.Set(st, nil)

	var last time.Duration
	for attempt := int32(1); attempt <= 5; attempt++ {
		res, err := r.Reconcile(context.Background(), req(nn))
		if err != nil {
			t.Fatal(err)
		}
		want := time.Second << (attempt - 1)
		if res.RequeueAfter != want || res.RequeueAfter <= last {
			t.Fatalf("attempt %d: requeue after %s, want %s", attempt, res.RequeueAfter, want)
		}
		last = res.RequeueAfter
		got := &mtlsv1alpha1.AgentIdentity{}
		if err := k8s.Get(context.Background(), nn, got); err != nil {
			t.Fatal(err)
		}
		if got.Status.FailedIssuanceAttempts != attempt || got.Status.LastFailureTime == nil {
			t.Fatalf("attempt %d: status says %d failed attempts", attempt, got.Status.FailedIssuanceAttempts)
		}
		c := meta.FindStatusCondition(got.Status.Conditions, mtlsv1alpha1.ConditionIssuing)
		if c == nil || c.Reason != mtlsv1alpha1.ReasonIssuanceFailed || !strings.Contains(c.Message, "signing certificate") {
			t.Fatalf("Issuing condition %+v", c)
		}
		if rc := meta.FindStatusCondition(got.Status.Conditions, mtlsv1alpha1.ConditionReady); rc == nil || rc.Status != metav1.ConditionFalse {
			t.Fatalf("Ready condition %+v, want False", rc)
		}
		// Within the back-off nothing is attempted. (The API server keeps
		// lastFailureTime to the second, so only back-offs of 4s and more
		// leave a margin to look inside.)
		if res.RequeueAfter >= 4*time.Second {
			clk.Step(res.RequeueAfter / 2)
			res2, err := r.Reconcile(context.Background(), req(nn))
			if err != nil || res2.RequeueAfter <= 0 || res2.RequeueAfter > res.RequeueAfter/2 {
				t.Fatalf("inside the back-off: %+v %v", res2, err)
			}
			if err := k8s.Get(context.Background(), nn, got); err != nil || got.Status.FailedIssuanceAttempts != attempt {
				t.Fatalf("an attempt was made inside the back-off: %d attempts", got.Status.FailedIssuanceAttempts)
			}
		}
		clk.Step(res.RequeueAfter)
	}
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "unlucky-tls"}, &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Errorf("a Secret was written despite the failures: %v", err)
	}
	cluster.WaitEvent(t, k8s, id, "AgentIdentity", "IssuanceFailed", 10*time.Second)

	// The CA works again: the first certificate after the failures is an
	// Issued Event (one that goes through at once is not).
	good := brokenCA(t)
	good.Active.Signer = good.Active.Signer.(failingSigner).Signer
	r.CA.Set(good, nil)
	clk.Step(last)
	if _, err := r.Reconcile(context.Background(), req(nn)); err != nil {
		t.Fatal(err)
	}
	got := &mtlsv1alpha1.AgentIdentity{}
	if err := k8s.Get(context.Background(), nn, got); err != nil {
		t.Fatal(err)
	}
	if got.Status.SerialNumber == "" || got.Status.FailedIssuanceAttempts != 0 {
		t.Fatalf("after the CA recovered: serial %q, %d failed attempts", got.Status.SerialNumber, got.Status.FailedIssuanceAttempts)
	}
	if note := cluster.WaitEvent(t, k8s, id, "AgentIdentity", "Issued", 10*time.Second); !strings.Contains(note, got.Status.SerialNumber) {
		t.Errorf("Issued event %q does not name serial %s", note, got.Status.SerialNumber)
	}
}

// TestRestartMakesNoWrites restarts the operator over 100 Ready identities
// and watches the API server: not one Secret or AgentIdentity may change.
func TestRestartMakesNoWrites(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	const n = 100
	for i := range n {
		cluster.Create(t, k8s, cluster.NewIdentity(ns, fmt.Sprintf("agent-%03d", i)))
	}
	cluster.Eventually(t, 60*time.Second, "100 identities Ready", func() error {
		list := &mtlsv1alpha1.AgentIdentityList{}
		if err := k8s.List(context.Background(), list, client.InNamespace(ns)); err != nil {
			return err
		}
		ready := 0
		for _, a := range list.Items {
			if meta.IsStatusConditionTrue(a.Status.Conditions, mtlsv1alpha1.ConditionReady) {
				ready++
			}
		}
		if ready != n {
			return fmt.Errorf("%d of %d Ready", ready, n)
		}
		return nil
	})
	// Let the passes that follow the issuances settle: the claim is about a
	// restart over identities the operator had finished with.
	waitIdle(t)
	settled := map[string]mtlsv1alpha1.AgentIdentityStatus{}
	list := &mtlsv1alpha1.AgentIdentityList{}
	if err := k8s.List(context.Background(), list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, a := range list.Items {
		settled[a.Name] = a.Status
	}
	caEvents := countEvents(t, "CALoaded")
	stopOperator()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes := watchChanges(t, ctx, ns)
	before := reconcileTotal(t)
	// Write requests, those that change nothing included (a watch does
	// not see them), counted by client-go in this process, where nothing
	// else writes meanwhile. The operator's own objects in its namespace
	// (the CA status) may change at a start; each change is one write.
	writesBefore := restWrites(t)
	operatorObjects := func() map[string]string {
		rv := map[string]string{}
		for _, l := range []client.ObjectList{&corev1.ConfigMapList{}, &corev1.SecretList{}} {
			if err := k8s.List(context.Background(), l, client.InNamespace(operatorNamespace)); err != nil {
				t.Fatal(err)
			}
			items, err := meta.ExtractList(l)
			if err != nil {
				t.Fatal(err)
			}
			for _, it := range items {
				o := it.(client.Object)
				rv[fmt.Sprintf("%T %s", o, o.GetName())] = o.GetResourceVersion()
			}
		}
		return rv
	}
	operatorBefore := operatorObjects()
	if err := startOperator(); err != nil {
		t.Fatal(err)
	}
	cluster.Eventually(t, 30*time.Second, "the restarted operator reconciled every identity", func() error {
		// Each identity is reconciled by the certificate and the trust
		// controller.
		if done := reconcileTotal(t) - before; done < 2*n {
			return fmt.Errorf("%v reconciles", done)
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	// Loading the same CA at start is logged, not an Event.
	if n := countEvents(t, "CALoaded"); n != caEvents {
		t.Errorf("the restart recorded %d CALoaded Events", n-caEvents)
	}
	changedHere := 0
	for k, v := range operatorObjects() {
		if operatorBefore[k] != v {
			changedHere++
		}
	}
	if w := restWrites(t) - writesBefore; w != float64(changedHere) {
		t.Errorf("the restarted operator sent %v write requests; %d objects of its namespace changed", w, changedHere)
	}
	if c := changes(); len(c) != 0 {
		t.Errorf("the restart wrote %d times: %v", len(c), c)
		// Say what changed, for the next reader of a failure.
		if err := k8s.List(context.Background(), list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		for _, a := range list.Items {
			if before := settled[a.Name]; !equality.Semantic.DeepEqual(before, a.Status) {
				t.Logf("%s status before the restart: %+v\nafter: %+v", a.Name, before, a.Status)
			}
		}
	}
}

// countEvents counts the Events of a reason in every namespace.
func countEvents(t *testing.T, reason string) int {
	t.Helper()
	list := &eventsv1.EventList{}
	if err := k8s.List(context.Background(), list); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range list.Items {
		if e.Reason == reason {
			n++
		}
	}
	return n
}

// waitIdle waits until the operator has made no AgentIdentity reconcile
// for a second.
func waitIdle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	last := reconcileTotal(t)
	for time.Now().Before(deadline) {
		time.Sleep(time.Second)
		now := reconcileTotal(t)
		if now == last {
			return
		}
		last = now
	}
	t.Fatal("the operator was still reconciling after 30s")
}

// TestNoPrivateKeyInLogs searches everything the operator logged at the
// highest verbosity, every Event and every status for every private key it
// issued in this run.
func TestNoPrivateKeyInLogs(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	cluster.Create(t, k8s, cluster.NewIdentity(ns, "secretive"))
	waitReady(t, types.NamespacedName{Namespace: ns, Name: "secretive"})
	log := logs.String()
	if !strings.Contains(log, "issued certificate") {
		t.Fatal("the captured log does not hold the operator's log")
	}
	secrets := &corev1.SecretList{}
	if err := k8s.List(context.Background(), secrets); err != nil {
		t.Fatal(err)
	}
	events := eventsText(t)
	ids := &mtlsv1alpha1.AgentIdentityList{}
	if err := k8s.List(context.Background(), ids); err != nil {
		t.Fatal(err)
	}
	statuses := fmt.Sprintf("%+v", ids.Items)
	checked := 0
	for _, s := range secrets.Items {
		keyPEM := s.Data["tls.key"]
		if len(keyPEM) == 0 {
			continue
		}
		checked++
		for _, needle := range secretNeedles(keyPEM) {
			for where, hay := range map[string]string{"logs": log, "events": events, "statuses": statuses} {
				if strings.Contains(hay, needle) {
					t.Errorf("key material of Secret %s/%s found in %s", s.Namespace, s.Name, where)
				}
			}
		}
	}
	if checked < 2 {
		t.Fatalf("only %d keys checked", checked)
	}
	if strings.Contains(log, "PRIVATE KEY") {
		t.Error(`the log contains "PRIVATE KEY"`)
	}
}

// --- helpers ---

func mapKeys(m map[string][]byte) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func keyKind(k any) string {
	switch key := k.(type) {
	case *ecdsa.PrivateKey:
		return fmt.Sprintf("%T/%d", k, key.Curve.Params().BitSize)
	case *rsa.PrivateKey:
		return fmt.Sprintf("%T/%d", k, key.N.BitLen())
	}
	return fmt.Sprintf("%T/0", k)
}

func tryParse(s *corev1.Secret) (p parsed, err error) {
	certs, err := ca.ParseCertificatesPEM(s.Data["tls.crt"])
	if err != nil {
		return p, err
	}
	key, err := ca.ParsePrivateKeyPEM(s.Data["tls.key"])
	if err != nil {
		return p, err
	}
	if !ca.KeyMatchesCertificate(key, certs[0]) {
		return p, errors.New("key does not match")
	}
	return parsed{leaf: certs[0], chain: certs[1:], key: key}, nil
}

func mustRequest(t *testing.T, id *mtlsv1alpha1.AgentIdentity) identity.Request {
	t.Helper()
	r, err := identity.NewRequest(td, id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func update(t *testing.T, nn types.NamespacedName, mutate func(*mtlsv1alpha1.AgentIdentity)) {
	t.Helper()
	cluster.Eventually(t, 5*time.Second, "update "+nn.String(), func() error {
		got := &mtlsv1alpha1.AgentIdentity{}
		if err := k8s.Get(context.Background(), nn, got); err != nil {
			return err
		}
		mutate(got)
		return k8s.Update(context.Background(), got)
	})
}

func gauge(t *testing.T, name, ns, idName string) float64 {
	t.Helper()
	v, ok := findGauge(t, name, ns, idName)
	if !ok {
		t.Fatalf("no metric %s{%s/%s}", name, ns, idName)
	}
	return v
}

// findGauge returns the value of a gauge of the operator's registry, for
// one identity or (ns empty) the first series.
func findGauge(t *testing.T, name, ns, idName string) (float64, bool) {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if ns == "" || (label(m, "namespace") == ns && label(m, "name") == idName) {
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// restWrites counts the write requests (POST, PUT, PATCH, DELETE) of every
// client in this process, from client-go's rest_client_requests_total.
func restWrites(t *testing.T) float64 {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != "rest_client_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			switch label(m, "method") {
			case "POST", "PUT", "PATCH", "DELETE":
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func reconcileTotal(t *testing.T) float64 {
	t.Helper()
	return reconcileCount(t, controller.CertificateControllerName) + reconcileCount(t, controller.TrustControllerName)
}

func eventsText(t *testing.T) string {
	t.Helper()
	list := &eventsv1.EventList{}
	if err := k8s.List(context.Background(), list); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range list.Items {
		b.WriteString(e.Note)
		b.WriteString("\n")
	}
	return b.String()
}

// secretNeedles are strings that would only appear where the key leaked:
// lines of its PEM body and the base64 of its DER (as in a Secret's JSON).
func secretNeedles(keyPEM []byte) []string {
	var needles []string
	for _, line := range strings.Split(string(keyPEM), "\n") {
		if len(line) >= 40 && !strings.HasPrefix(line, "-----") {
			needles = append(needles, line[:40])
		}
	}
	needles = append(needles, base64.StdEncoding.EncodeToString(keyPEM)[:60])
	return needles
}

// TestDeletingIdentityDeletesSecret relies on the owner reference: the
// garbage collector of kube-controller-manager removes the Secret.
func TestDeletingIdentityDeletesSecret(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	id := cluster.NewIdentity(ns, "ephemeral")
	cluster.Create(t, k8s, id)
	waitReady(t, client.ObjectKeyFromObject(id))
	getSecret(t, ns, "ephemeral-tls")
	cluster.Eventually(t, 5*time.Second, "the identity's metrics", func() error {
		if v, ok := findGauge(t, "agentmesh_identity_ready", ns, "ephemeral"); !ok || v != 1 {
			return fmt.Errorf("agentmesh_identity_ready %v (present: %t), want 1", v, ok)
		}
		return nil
	})
	if err := k8s.Delete(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	// The deleted identity's series go with it.
	cluster.Eventually(t, 10*time.Second, "the deleted identity's series are dropped", func() error {
		for _, name := range []string{"agentmesh_identity_ready", "agentmesh_identity_expiration_timestamp_seconds",
			"agentmesh_identity_renewal_timestamp_seconds"} {
			if _, ok := findGauge(t, name, ns, "ephemeral"); ok {
				return fmt.Errorf("%s still has a series", name)
			}
		}
		return nil
	})
	cluster.Eventually(t, 30*time.Second, "the garbage collector removes the Secret", func() error {
		err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "ephemeral-tls"}, &corev1.Secret{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("Secret still there: %w", err)
	})
}

// TestOneWriteOfEachPerIssuance watches the API server while an identity
// is issued: one Secret write and one status write by each of the two
// writers of the status (certificate and trust), nothing more.
func TestOneWriteOfEachPerIssuance(t *testing.T) {
	ns := cluster.NewNamespace(t, k8s, "agents-")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes := watchChanges(t, ctx, ns)
	id := cluster.NewIdentity(ns, "frugal")
	cluster.Create(t, k8s, id)
	waitReady(t, client.ObjectKeyFromObject(id))
	time.Sleep(2 * time.Second)
	got := changes()
	slices.Sort(got)
	want := []string{
		"ADDED *v1.Secret frugal-tls",
		"ADDED *v1alpha1.AgentIdentity frugal",
		"MODIFIED *v1alpha1.AgentIdentity frugal",
		"MODIFIED *v1alpha1.AgentIdentity frugal",
	}
	if !slices.Equal(got, want) {
		t.Errorf("writes seen by the API server:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
