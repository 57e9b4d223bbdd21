package controller_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/operator"
	"github.com/agentmesh/agentmesh/test/cluster"
)

// TestBadCA runs an operator against a CA Secret that holds garbage: it
// must not crash, must report not ready, say why in an Event, hold every
// identity at Ready=False/CANotReady, and recover once the Secret is fixed.
func TestBadCA(t *testing.T) {
	// A control plane of its own: fixing the CA reissues every identity a
	// cluster holds, and this test needs only its own.
	c, err := cluster.Start(cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Stop() }()
	cl, err := client.New(c.Config, client.Options{Scheme: operator.NewScheme()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, ns := range []string{operatorNamespace, "agents"} {
		if err := cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	bad := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: operatorNamespace, Name: "bad-ca"},
		Data: map[string][]byte{
			"tls.crt": []byte("-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n"),
			"tls.key": []byte("garbage"),
		},
	}
	if err := cl.Create(ctx, bad); err != nil {
		t.Fatal(err)
	}

	port, err := cluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	probe := fmt.Sprintf("127.0.0.1:%d", port)
	op, err := operator.New(c.Config, operator.Config{
		TrustDomain: td, CASecret: types.NamespacedName{Namespace: operatorNamespace, Name: "bad-ca"}, Clock: clk,
	}, ctrl.Options{
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: probe,
		Controller:             ctrlconfig.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	opCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- op.Manager.Start(opCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the operator ended with %v", err)
		}
	}()

	readyz := func() (int, string) {
		resp, err := http.Get("http://" + probe + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	eventually(t, 15*time.Second, "readiness reports the CA", func() error {
		if code, body := readyz(); code != http.StatusInternalServerError || !strings.Contains(body, "[-]ca failed") {
			return fmt.Errorf("readyz %d %q", code, body)
		}
		return nil
	})
	note := waitEventIn(t, cl, bad, "Secret", "CAInvalid")
	if !strings.Contains(note, "tls.crt: certificate 1") {
		t.Errorf("CAInvalid event %q does not say what is wrong", note)
	}
	if _, err := op.CA.Get(); err == nil || !ca.IsInvalid(err) {
		t.Errorf("CA error %v", err)
	}

	id := newIdentity("agents", "waiting")
	if err := cl.Create(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitMessageIn(t, cl, client.ObjectKeyFromObject(id), mtlsv1alpha1.ConditionReady, mtlsv1alpha1.ReasonCANotReady, "CA Secret agentmesh-system/bad-ca")

	// Fix the Secret: the operator picks it up without a restart.
	a, err := ca.Generate(ca.GenerateOptions{TrustDomain: td, Now: clk.Now()})
	if err != nil {
		t.Fatal(err)
	}
	bad.Data, err = ca.Encode(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Update(ctx, bad); err != nil {
		t.Fatal(err)
	}
	waitMessageIn(t, cl, client.ObjectKeyFromObject(id), mtlsv1alpha1.ConditionReady, mtlsv1alpha1.ReasonIssued, "is valid until")
	eventually(t, 10*time.Second, "ready again", func() error {
		if code, body := readyz(); code != http.StatusOK {
			return fmt.Errorf("readyz %d %q", code, body)
		}
		return nil
	})
	select {
	case err := <-done:
		t.Fatalf("the operator exited: %v", err)
	default:
	}
}

// waitEventIn waits for an Event about obj in the cluster cl.
func waitEventIn(t *testing.T, cl client.Client, obj client.Object, kind, reason string) string {
	t.Helper()
	var note string
	eventually(t, 10*time.Second, "event "+reason+" on "+obj.GetName(), func() error {
		list := &eventsv1.EventList{}
		if err := cl.List(context.Background(), list, client.InNamespace(obj.GetNamespace())); err != nil {
			return err
		}
		for _, e := range list.Items {
			if e.Regarding.Name == obj.GetName() && e.Regarding.Kind == kind && e.Reason == reason {
				note = e.Note
				return nil
			}
		}
		return fmt.Errorf("no %s event among %d", reason, len(list.Items))
	})
	return note
}

// waitMessageIn waits for an identity's condition in the cluster cl.
func waitMessageIn(t *testing.T, cl client.Client, nn types.NamespacedName, typ, reason, want string) {
	t.Helper()
	eventually(t, 20*time.Second, fmt.Sprintf("%s %s=%s", nn, typ, reason), func() error {
		id := &mtlsv1alpha1.AgentIdentity{}
		if err := cl.Get(context.Background(), nn, id); err != nil {
			return err
		}
		c := meta.FindStatusCondition(id.Status.Conditions, typ)
		if c == nil || c.Reason != reason || !strings.Contains(c.Message, want) {
			return fmt.Errorf("condition %+v", c)
		}
		return nil
	})
}

// TestInvalidSpecPassingTheSchema installs the CRDs without their
// validation (as an old or hand-edited CRD would be), so that invalid
// identities reach the operator. They must end Ready=False/InvalidSpec with
// a message naming the field, without a Secret and without a hot loop.
func TestInvalidSpecPassingTheSchema(t *testing.T) {
	c, err := cluster.Start(cluster.Options{TransformCRD: stripValidation})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Stop() }()
	cl, err := client.New(c.Config, client.Options{Scheme: operator.NewScheme()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, ns := range []string{operatorNamespace, "agents"} {
		if err := cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	op, err := operator.New(c.Config, operator.Config{TrustDomain: td, CASecret: caSecret, Clock: clk}, ctrl.Options{
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             ctrlconfig.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	opCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- op.Manager.Start(opCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the operator ended with %v", err)
		}
	}()

	cases := map[string]struct {
		spec mtlsv1alpha1.AgentIdentitySpec
		want string
	}{
		"rsa-1024":    {mtlsv1alpha1.AgentIdentitySpec{PrivateKey: &mtlsv1alpha1.PrivateKey{Algorithm: "RSA", Size: 1024}}, "spec.privateKey.size: Invalid value: 1024: size must be 2048, 3072 or 4096 for RSA"},
		"renew-late":  {mtlsv1alpha1.AgentIdentitySpec{Duration: &metav1.Duration{Duration: time.Hour}, RenewBefore: &metav1.Duration{Duration: 2 * time.Hour}}, "spec.renewBefore: Invalid value: \"2h0m0s\": must be shorter than duration"},
		"short":       {mtlsv1alpha1.AgentIdentitySpec{Duration: &metav1.Duration{Duration: time.Second}}, "spec.duration: Invalid value: \"1s\": must be between 1m and 720h"},
		"bad-dns":     {mtlsv1alpha1.AgentIdentitySpec{DNSNames: []string{"Not_A_Host"}}, "spec.dnsNames[0]: Invalid value: \"Not_A_Host\""},
		"bad-secret":  {mtlsv1alpha1.AgentIdentitySpec{SecretName: "UPPER"}, "spec.secretName: Invalid value: \"UPPER\""},
		"unknown-alg": {mtlsv1alpha1.AgentIdentitySpec{PrivateKey: &mtlsv1alpha1.PrivateKey{Algorithm: "DSA"}}, "spec.privateKey.algorithm: Unsupported value: \"DSA\""},
	}
	for name, tc := range cases {
		if err := cl.Create(ctx, &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "agents", Name: name}, Spec: tc.spec}); err != nil {
			t.Fatalf("%s: the stripped CRD rejected it: %v", name, err)
		}
	}
	for name, tc := range cases {
		var got *mtlsv1alpha1.AgentIdentity
		eventually(t, 15*time.Second, name+" InvalidSpec", func() error {
			got = &mtlsv1alpha1.AgentIdentity{}
			if err := cl.Get(ctx, types.NamespacedName{Namespace: "agents", Name: name}, got); err != nil {
				return err
			}
			c := meta.FindStatusCondition(got.Status.Conditions, mtlsv1alpha1.ConditionReady)
			if c == nil || c.Reason != mtlsv1alpha1.ReasonInvalidSpec {
				return fmt.Errorf("Ready %+v", c)
			}
			if !strings.Contains(c.Message, tc.want) {
				return fmt.Errorf("message %q does not contain %q", c.Message, tc.want)
			}
			return nil
		})
		// No hot loop: the status stays as it is.
		rv := got.ResourceVersion
		time.Sleep(300 * time.Millisecond)
		if err := cl.Get(ctx, client.ObjectKeyFromObject(got), got); err != nil || got.ResourceVersion != rv {
			t.Errorf("%s: status keeps changing (resourceVersion %s -> %s)", name, rv, got.ResourceVersion)
		}
	}
	secrets := &corev1.SecretList{}
	if err := cl.List(ctx, secrets, client.InNamespace("agents")); err != nil || len(secrets.Items) != 0 {
		t.Errorf("Secrets written for invalid identities: %d (%v)", len(secrets.Items), err)
	}
}

// stripValidation removes every validation of a CRD's schema but the types.
func stripValidation(c *apiextensionsv1.CustomResourceDefinition) {
	for i := range c.Spec.Versions {
		if s := c.Spec.Versions[i].Schema; s != nil && s.OpenAPIV3Schema != nil {
			strip(s.OpenAPIV3Schema)
		}
	}
}

func strip(s *apiextensionsv1.JSONSchemaProps) {
	s.XValidations = nil
	s.Pattern = ""
	s.Enum = nil
	s.Minimum, s.Maximum, s.MinLength, s.MaxLength, s.MaxItems, s.MinItems = nil, nil, nil, nil, nil, nil
	s.Default = nil
	for k, p := range s.Properties {
		strip(&p)
		s.Properties[k] = p
	}
	if s.Items != nil && s.Items.Schema != nil {
		strip(s.Items.Schema)
	}
}
