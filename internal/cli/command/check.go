package command

import (
	"context"
	"crypto/rand"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/cli/check"
	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

type checkFlags struct {
	pre          bool
	skipProbe    bool
	probeTimeout time.Duration
}

func newCheckCommand(o *Options) *cobra.Command {
	var f checkFlags
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Preflight a cluster for agentmesh and, once installed, check it end to end",
		Long: "check runs a preflight: the API server's version, whether PodCertificateRequest and\n" +
			"ClusterTrustBundle are served (PodCertificate delivery needs them), and whether you may create what\n" +
			"the install creates (SelfSubjectAccessReview). When agentmesh's CRDs are installed (and unless --pre)\n" +
			"it also runs status, then creates a probe AgentIdentity in -n's namespace, waits until it is Ready,\n" +
			"loads its files with the SDK (key matches certificate, certificate verifies against bundle.pem,\n" +
			"policy.json is valid) and deletes it. It exits 1 when a check fails; warnings do not fail it.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.connect(); err != nil {
				return err
			}
			r, err := o.check(cmd.Context(), f)
			if err != nil {
				return err
			}
			return o.report(r, r.OK())
		},
	}
	cmd.Flags().BoolVar(&f.pre, "pre", false, "run the preflight only, even when agentmesh is installed")
	cmd.Flags().BoolVar(&f.skipProbe, "skip-probe", false, "do not create a probe identity")
	cmd.Flags().DurationVar(&f.probeTimeout, "probe-timeout", time.Minute, "how long the probe identity may take to be Ready")
	return cmd
}

// installAccess is what installing agentmesh (the chart or dist/install.yaml)
// and using kubectl agentmesh needs.
func (o *Options) installAccess(ns string) []check.Access {
	return []check.Access{
		{Verb: "create", Group: "apiextensions.k8s.io", Resource: "customresourcedefinitions", Why: "install the CRDs"},
		{Verb: "create", Resource: "namespaces", Why: "create the operator's namespace"},
		{Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "clusterroles", Why: "install the operator's ClusterRole"},
		{Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "clusterrolebindings", Why: "bind it to the operator"},
		{Verb: "create", Group: "admissionregistration.k8s.io", Resource: "mutatingwebhookconfigurations", Why: "install the Pod webhook"},
		{Verb: "create", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations", Why: "install the validating webhook"},
		{Verb: "create", Group: "apps", Resource: "deployments", Namespace: o.OperatorNamespace, Why: "run the operator"},
		{Verb: "create", Resource: "services", Namespace: o.OperatorNamespace, Why: "the webhook and metrics Services"},
		{Verb: "create", Group: mtlsv1alpha1.GroupVersion.Group, Resource: "agentidentities", Namespace: ns, Why: "the probe identity and your agents'"},
		{Verb: "patch", Resource: "secrets", Namespace: o.OperatorNamespace, Why: "kubectl agentmesh rotate-ca annotates the CA Secret"},
	}
}

func (o *Options) check(ctx context.Context, f checkFlags) (*check.Result, error) {
	r := &check.Result{}
	v, err := o.discovery().ServerVersion()
	if err != nil {
		return nil, fmt.Errorf("reading the API server's version: %w", err)
	}
	r.Checks = append(r.Checks, check.Version(v.GitVersion))
	r.Checks = append(r.Checks,
		check.Served("PodCertificateRequest", "certificates.k8s.io/v1", o.serves("certificates.k8s.io/v1", "podcertificaterequests")),
		check.Served("ClusterTrustBundle", "certificates.k8s.io/v1", o.serves("certificates.k8s.io/v1", "clustertrustbundles")))
	ns, err := o.namespace()
	if err != nil {
		return nil, err
	}
	reviews := o.installAccess(ns)
	for i := range reviews {
		a := &reviews[i]
		ssar := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
			ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: a.Verb, Group: a.Group, Resource: a.Resource, Namespace: a.Namespace},
		}}
		if err := o.cl.Create(ctx, ssar); err != nil {
			a.Err = err.Error()
			continue
		}
		a.Allowed = ssar.Status.Allowed
	}
	r.Checks = append(r.Checks, check.RBAC(reviews)...)
	if f.pre {
		return r, nil
	}
	if !o.serves(mtlsv1alpha1.GroupVersion.String(), "agentidentities") {
		r.Add("installed", "agentmesh", check.Skip, "not installed (no %s API): the preflight is all there is to check", mtlsv1alpha1.GroupVersion)
		return r, nil
	}
	rep, err := o.status(ctx)
	if err != nil {
		return nil, err
	}
	r.Checks = append(r.Checks, check.FromStatus(rep)...)
	if f.skipProbe {
		r.Add("installed", "probe identity", check.Skip, "--skip-probe")
		return r, nil
	}
	r.Checks = append(r.Checks, o.probe(ctx, ns, f.probeTimeout))
	return r, nil
}

func (o *Options) serves(groupVersion, resource string) bool {
	res, err := o.discovery().ServerResourcesForGroupVersion(groupVersion)
	if err != nil {
		return false
	}
	for _, r := range res.APIResources {
		if r.Name == resource {
			return true
		}
	}
	return false
}

// probe creates an identity, waits until it is Ready, loads its files as an
// agent would (the SDK's Load: the key matches the certificate, which
// verifies against bundle.pem; policy.json is valid and about it), and
// deletes it.
func (o *Options) probe(ctx context.Context, ns string, timeout time.Duration) check.Item {
	it := check.Item{Phase: "installed", Name: "probe identity"}
	fail := func(format string, args ...any) check.Item {
		it.Status, it.Message = check.Fail, fmt.Sprintf(format, args...)
		return it
	}
	suffix, err := rand.Int(rand.Reader, big.NewInt(1<<30))
	if err != nil {
		return fail("%v", err)
	}
	name := fmt.Sprintf("agentmesh-check-%x", suffix)
	ref := ns + "/" + name
	id := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
		Labels: map[string]string{"app.kubernetes.io/created-by": "kubectl-agentmesh-check"}}}
	start := o.Now()
	if err := o.cl.Create(ctx, id); err != nil {
		return fail("creating AgentIdentity %s: %v", ref, err)
	}
	defer func() {
		// The Secret and trust ConfigMap go with it (owner references).
		if err := o.cl.Delete(context.WithoutCancel(ctx), id); err != nil && !apierrors.IsNotFound(err) {
			o.progress("could not delete the probe AgentIdentity %s: %v", ref, err)
		}
	}()
	o.progress("probe: created AgentIdentity %s, waiting until it is Ready", ref)
	cur := &mtlsv1alpha1.AgentIdentity{}
	err = o.poll(ctx, timeout, func() (bool, error) {
		if err := o.cl.Get(ctx, client.ObjectKeyFromObject(id), cur); err != nil {
			return false, err
		}
		return meta.IsStatusConditionTrue(cur.Status.Conditions, mtlsv1alpha1.ConditionReady), nil
	})
	if err != nil {
		msg := ""
		if c := meta.FindStatusCondition(cur.Status.Conditions, mtlsv1alpha1.ConditionReady); c != nil {
			msg = fmt.Sprintf(" (Ready=%s, %s: %s)", c.Status, c.Reason, c.Message)
		}
		return fail("AgentIdentity %s not Ready: %v%s", ref, err, msg)
	}
	took := o.Now().Sub(start).Round(100 * time.Millisecond)
	sec := &corev1.Secret{}
	if err := o.cl.Get(ctx, types.NamespacedName{Namespace: ns, Name: cur.EffectiveSecretName()}, sec); err != nil {
		return fail("reading Secret %s/%s: %v", ns, cur.EffectiveSecretName(), err)
	}
	cm := &corev1.ConfigMap{}
	if err := o.cl.Get(ctx, types.NamespacedName{Namespace: ns, Name: cur.TrustConfigMapName()}, cm); err != nil {
		return fail("reading ConfigMap %s/%s: %v", ns, cur.TrustConfigMapName(), err)
	}
	snap, err := loadFiles(map[string][]byte{
		agenttls.CertFileName: sec.Data[mtlsv1alpha1.SecretCertKey], agenttls.KeyFileName: sec.Data[mtlsv1alpha1.SecretKeyKey],
		agenttls.BundleFileName: []byte(cm.Data[mtlsv1alpha1.TrustBundleKey]), agenttls.PolicyFileName: []byte(cm.Data[mtlsv1alpha1.TrustPolicyKey]),
	})
	if err != nil {
		return fail("the files of AgentIdentity %s do not load as an agent loads them: %v", ref, err)
	}
	if snap.ID().String() != cur.Status.SPIFFEID {
		return fail("the certificate of AgentIdentity %s is for %s, its status says %s", ref, snap.ID(), cur.Status.SPIFFEID)
	}
	it.Status = check.Pass
	it.Message = fmt.Sprintf("%s Ready in %s: %s, serial %s, verified against bundle.pem by the SDK; deleted",
		ref, took, snap.ID(), ca.SerialHex(snap.Leaf().SerialNumber))
	return it
}

// loadFiles writes the four files into a private temporary directory (the
// key only for as long as the SDK reads it) and loads them with the SDK.
func loadFiles(files map[string][]byte) (*agenttls.Snapshot, error) {
	dir, err := os.MkdirTemp("", "agentmesh-check-")
	if err != nil {
		return nil, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	return agenttls.Load(agenttls.FilesInDir(dir))
}
