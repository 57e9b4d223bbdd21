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
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

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
	c := cluster.ForTest(t, cluster.Options{})
	cl := c.NewClient(t)
	ctx := context.Background()
	cluster.CreateNamespaces(t, cl, operatorNamespace, "agents")
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
	op := cluster.StartOperator(t, c.Config, operator.Config{
		TrustDomain: td, CASecret: types.NamespacedName{Namespace: operatorNamespace, Name: "bad-ca"}, Clock: clk,
	}, ctrl.Options{HealthProbeBindAddress: probe})

	readyz := func() (int, string) {
		resp, err := http.Get("http://" + probe + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	cluster.Eventually(t, 15*time.Second, "readiness reports the CA", func() error {
		if code, body := readyz(); code != http.StatusInternalServerError || !strings.Contains(body, "[-]ca failed") {
			return fmt.Errorf("readyz %d %q", code, body)
		}
		return nil
	})
	note := cluster.WaitEvent(t, cl, bad, "Secret", "CAInvalid", 10*time.Second)
	if !strings.Contains(note, "tls.crt: certificate 1") {
		t.Errorf("CAInvalid event %q does not say what is wrong", note)
	}
	if _, err := op.CA.Get(); err == nil || !ca.IsInvalid(err) {
		t.Errorf("CA error %v", err)
	}

	id := cluster.NewIdentity("agents", "waiting")
	if err := cl.Create(ctx, id); err != nil {
		t.Fatal(err)
	}
	cluster.WaitCondition(t, cl, id, 20*time.Second, cluster.Condition{
		Type: mtlsv1alpha1.ConditionReady, Reason: mtlsv1alpha1.ReasonCANotReady, Message: "CA Secret agentmesh-system/bad-ca"})

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
	cluster.WaitCondition(t, cl, id, 20*time.Second, cluster.Condition{
		Type: mtlsv1alpha1.ConditionReady, Reason: mtlsv1alpha1.ReasonIssued, Message: "is valid until"})
	cluster.Eventually(t, 10*time.Second, "ready again", func() error {
		if code, body := readyz(); code != http.StatusOK {
			return fmt.Errorf("readyz %d %q", code, body)
		}
		return nil
	})
	select {
	case <-op.Done():
		t.Fatal("the operator exited")
	default:
	}
}

// TestInvalidSpecPassingTheSchema installs the CRDs without their
// validation (as an old or hand-edited CRD would be), so that invalid
// identities reach the operator. They must end Ready=False/InvalidSpec with
// a message naming the field, without a Secret and without a hot loop.
func TestInvalidSpecPassingTheSchema(t *testing.T) {
	c := cluster.ForTest(t, cluster.Options{TransformCRD: stripValidation})
	cl := c.NewClient(t)
	ctx := context.Background()
	cluster.CreateNamespaces(t, cl, operatorNamespace, "agents")
	cluster.StartOperator(t, c.Config, operator.Config{TrustDomain: td, CASecret: caSecret, Clock: clk}, ctrl.Options{})

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
		cluster.Eventually(t, 15*time.Second, name+" InvalidSpec", func() error {
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
