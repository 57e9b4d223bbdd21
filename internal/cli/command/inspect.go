package command

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/cli/inspect"
)

func newInspectCommand(o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "inspect",
		Short: "Show one object in detail",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "identity NAME",
		Short: "An identity's SPIFFE ID, certificate, renewal, policies and Pods (never its key)",
		Long: "inspect identity shows the SPIFFE ID, the certificate in place (serial, validity, key type, SANs,\n" +
			"issuing CA), whether the Secret matches the status and the key matches the certificate (the key is\n" +
			"never printed), the renewal time, the effective policy and the policies that select the identity,\n" +
			"and the Pods that use it. It exits 1 when it finds a problem.",
		Aliases: []string{"aid", "agentidentity"},
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.connect(); err != nil {
				return err
			}
			ns, err := o.namespace()
			if err != nil {
				return err
			}
			in, err := o.readIdentity(cmd.Context(), ns, args[0])
			if err != nil {
				return err
			}
			s := inspect.Summarize(*in)
			return o.report(s, len(s.Problems) == 0)
		},
	})
	return cmd
}

// getIdentity reads an AgentIdentity, with an error that names it.
func (o *Options) getIdentity(ctx context.Context, ns, name string) (*mtlsv1alpha1.AgentIdentity, error) {
	id := &mtlsv1alpha1.AgentIdentity{}
	if err := o.cl.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, id); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("AgentIdentity %s/%s not found", ns, name)
		}
		return nil, fmt.Errorf("reading AgentIdentity %s/%s: %w", ns, name, err)
	}
	return id, nil
}

func (o *Options) readIdentity(ctx context.Context, ns, name string) (*inspect.Input, error) {
	id, err := o.getIdentity(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	in := &inspect.Input{Now: o.Now(), Identity: id, ReadErrors: map[string]string{}}
	if id.Spec.KeyDelivery != mtlsv1alpha1.KeyDeliveryPodCertificate {
		sec := &corev1.Secret{}
		switch err := o.cl.Get(ctx, types.NamespacedName{Namespace: ns, Name: id.EffectiveSecretName()}, sec); {
		case err == nil:
			in.Secret = sec
		case !apierrors.IsNotFound(err):
			in.ReadErrors["Secret "+id.EffectiveSecretName()] = err.Error()
		}
	}
	cm := &corev1.ConfigMap{}
	switch err := o.cl.Get(ctx, types.NamespacedName{Namespace: ns, Name: id.TrustConfigMapName()}, cm); {
	case err == nil:
		in.TrustConfigMap = cm
	case !apierrors.IsNotFound(err):
		in.ReadErrors["ConfigMap "+id.TrustConfigMapName()] = err.Error()
	}
	pods := &corev1.PodList{}
	if err := o.cl.List(ctx, pods, client.InNamespace(ns), client.MatchingLabels{mtlsv1alpha1.LabelIdentity: name}); err != nil {
		in.ReadErrors["Pods"] = err.Error()
	} else {
		in.Pods = pods.Items
	}
	return in, nil
}
