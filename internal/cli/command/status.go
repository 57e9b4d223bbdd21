package command

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/cli/status"
	"github.com/agentmesh/agentmesh/internal/controller"
	"github.com/agentmesh/agentmesh/internal/webhookcert"
)

// LeaderElectionID is the operator's leader election Lease (cmd/manager).
const LeaderElectionID = "agentmesh-manager.mtls.agentmesh.dev"

// CRDNames are agentmesh's CustomResourceDefinitions.
var CRDNames = []string{"agentidentities.mtls.agentmesh.dev", "agenttrustpolicies.mtls.agentmesh.dev"}

func newStatusCommand(o *Options) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "The installation at a glance; exits 1 when something is wrong",
		Long: "status shows agentmesh's CRDs, the operator's replicas and leader, the webhook configurations and\n" +
			"whether their caBundle is the webhook CA's, the CA (serial, expiry, managed or supplied), the\n" +
			"rotation phase and progress, and identities Ready or not by reason. It exits 1 when it finds a problem.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.connect(); err != nil {
				return err
			}
			r, err := o.status(cmd.Context())
			if err != nil {
				return err
			}
			return o.report(r, r.OK())
		},
	}
}

// status reads the installation and aggregates it.
func (o *Options) status(ctx context.Context) (*status.Report, error) {
	in := status.Input{Now: o.Now()}
	if v, err := o.discovery().ServerVersion(); err == nil {
		in.ServerVersion = v.GitVersion
	} else {
		return nil, fmt.Errorf("reading the API server's version: %w", err)
	}
	in.CRDs = o.readCRDs(ctx)
	in.Operator = o.readOperator(ctx)
	in.Webhooks = o.readWebhooks(ctx)
	in.CA = o.readCA(ctx)
	ids, err := o.readIdentities(ctx)
	if err != nil {
		return nil, err
	}
	in.Identities = ids
	return status.Aggregate(in), nil
}

func (o *Options) readCRDs(ctx context.Context) []status.CRD {
	var out []status.CRD
	for _, name := range CRDNames {
		c := status.CRD{Name: name}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		err := o.cl.Get(ctx, types.NamespacedName{Name: name}, crd)
		switch {
		case err == nil:
			c.Found = true
			for _, cond := range crd.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					c.Established = true
				}
			}
			for _, v := range crd.Spec.Versions {
				if v.Served {
					c.Served = append(c.Served, v.Name)
				}
				if v.Storage {
					c.Storage = v.Name
				}
			}
		case apierrors.IsForbidden(err):
			// Reading CRDs is for cluster admins; discovery says what is served.
			c.Found, c.Established, c.Served = o.servedByDiscovery(name)
		}
		out = append(out, c)
	}
	return out
}

func (o *Options) servedByDiscovery(crd string) (found, established bool, served []string) {
	res, err := o.discovery().ServerResourcesForGroupVersion(mtlsv1alpha1.GroupVersion.String())
	if err != nil {
		return false, false, nil
	}
	for _, r := range res.APIResources {
		if r.Name+"."+mtlsv1alpha1.GroupVersion.Group == crd {
			return true, true, []string{mtlsv1alpha1.GroupVersion.Version}
		}
	}
	return false, false, nil
}

func (o *Options) readOperator(ctx context.Context) status.Operator {
	op := status.Operator{Namespace: o.OperatorNamespace, Deployment: o.Deployment}
	d := &appsv1.Deployment{}
	if err := o.cl.Get(ctx, types.NamespacedName{Namespace: o.OperatorNamespace, Name: o.Deployment}, d); err == nil {
		op.Found = true
		op.Replicas = 1
		if d.Spec.Replicas != nil {
			op.Replicas = *d.Spec.Replicas
		}
		op.Ready, op.Available = d.Status.ReadyReplicas, d.Status.AvailableReplicas
	}
	l := &coordinationv1.Lease{}
	if err := o.cl.Get(ctx, types.NamespacedName{Namespace: o.OperatorNamespace, Name: LeaderElectionID}, l); err == nil {
		if l.Spec.HolderIdentity != nil {
			op.Leader = *l.Spec.HolderIdentity
		}
		if l.Spec.RenewTime != nil {
			t := l.Spec.RenewTime.Time
			op.LeaseRenewed = &t
		}
		if l.Spec.LeaseDurationSeconds != nil {
			op.LeaseDuration = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
		}
	}
	return op
}

func (o *Options) readWebhooks(ctx context.Context) []status.WebhookConfiguration {
	var bundle []byte
	known := false
	sec := &corev1.Secret{}
	if err := o.cl.Get(ctx, types.NamespacedName{Namespace: o.OperatorNamespace, Name: o.WebhookCASecret}, sec); err == nil {
		// Only the public bundle is read; the CA key is never looked at.
		bundle, known = sec.Data[webhookcert.KeyBundle], true
	}
	judge := func(b []byte) string {
		switch {
		case len(b) == 0:
			return "empty"
		case !known:
			return "unknown"
		case bytes.Equal(b, bundle):
			return "match"
		}
		return "mismatch"
	}
	mut := status.WebhookConfiguration{Kind: "MutatingWebhookConfiguration", Name: o.WebhookConfig}
	m := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := o.cl.Get(ctx, types.NamespacedName{Name: o.WebhookConfig}, m); err == nil {
		mut.Found = true
		for _, w := range m.Webhooks {
			mut.Webhooks = append(mut.Webhooks, status.Webhook{Name: w.Name, CABundle: judge(w.ClientConfig.CABundle)})
		}
	}
	val := status.WebhookConfiguration{Kind: "ValidatingWebhookConfiguration", Name: o.WebhookConfig}
	v := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	if err := o.cl.Get(ctx, types.NamespacedName{Name: o.WebhookConfig}, v); err == nil {
		val.Found = true
		for _, w := range v.Webhooks {
			val.Webhooks = append(val.Webhooks, status.Webhook{Name: w.Name, CABundle: judge(w.ClientConfig.CABundle)})
		}
	}
	return []status.WebhookConfiguration{mut, val}
}

func (o *Options) readCA(ctx context.Context) status.CA {
	c := status.CA{}
	// The CA Secret's metadata only: whether the operator created the CA.
	md := &metav1.PartialObjectMetadata{}
	md.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	if err := o.cl.Get(ctx, types.NamespacedName{Namespace: o.OperatorNamespace, Name: o.CASecret}, md); err == nil {
		c.Managed = "supplied"
		if md.Annotations[ca.AnnotationManaged] == "true" {
			c.Managed = "managed"
		}
	}
	rs, found, err := o.readRotationStatus(ctx)
	if err != nil {
		c.Error = err.Error()
		return c
	}
	if !found {
		return c
	}
	c.StatusFound = true
	c.Phase, c.Reason, c.Compromised = string(rs.Phase), rs.Reason, rs.Compromised
	c.Serial, c.Subject = rs.Active.Serial, rs.Active.Subject
	if t, err := time.Parse(time.RFC3339, rs.Active.NotAfter); err == nil {
		c.NotAfter = &t
	}
	if rs.Next != nil {
		c.Next = rs.Next.Serial
	}
	for _, r := range rs.Retired {
		c.Retired = append(c.Retired, r.Serial)
	}
	p := rs.Progress
	c.BundlesCurrent, c.Bundles, c.IdentitiesOnActive, c.IdentitiesTotal = p.BundlesCurrent, p.Bundles, p.IdentitiesOnActive, p.Identities
	c.Stranded, c.StrandedIdentities = p.Stranded, p.StrandedIdentities
	c.NextRotation = rs.NextRotation
	return c
}

// readRotationStatus reads status.json of agentmesh-ca-status.
func (o *Options) readRotationStatus(ctx context.Context) (*controller.RotationStatus, bool, error) {
	cm := &corev1.ConfigMap{}
	key := types.NamespacedName{Namespace: o.OperatorNamespace, Name: controller.CAStatusConfigMapName}
	if err := o.cl.Get(ctx, key, cm); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("reading ConfigMap %s: %w", key, err)
	}
	rs := &controller.RotationStatus{}
	if err := json.Unmarshal([]byte(cm.Data["status.json"]), rs); err != nil {
		return nil, false, fmt.Errorf("ConfigMap %s: status.json: %w", key, err)
	}
	return rs, true, nil
}

func (o *Options) readIdentities(ctx context.Context) ([]status.Identity, error) {
	list := &mtlsv1alpha1.AgentIdentityList{}
	if err := o.cl.List(ctx, list); err != nil {
		if !apierrors.IsForbidden(err) {
			return nil, fmt.Errorf("listing AgentIdentities: %w", err)
		}
		ns, nerr := o.namespace()
		if nerr != nil {
			return nil, nerr
		}
		if err := o.cl.List(ctx, list, client.InNamespace(ns)); err != nil {
			return nil, fmt.Errorf("listing AgentIdentities in namespace %s: %w", ns, err)
		}
	}
	out := make([]status.Identity, 0, len(list.Items))
	for _, id := range list.Items {
		s := status.Identity{Namespace: id.Namespace, Name: id.Name}
		if c := meta.FindStatusCondition(id.Status.Conditions, mtlsv1alpha1.ConditionReady); c != nil {
			s.Ready, s.Reason = c.Status == metav1.ConditionTrue, c.Reason
		}
		out = append(out, s)
	}
	return out, nil
}
