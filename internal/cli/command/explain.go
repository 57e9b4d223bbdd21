package command

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/cli/explain"
	"github.com/agentmesh/agentmesh/internal/policy"
	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

func newExplainCommand(o *Options) *cobra.Command {
	return &cobra.Command{
		Use:   "explain FROM TO",
		Short: "Why FROM may or may not call TO: both policies, as the SDK evaluates them on a handshake",
		Long: "explain evaluates FROM's egress and TO's ingress from their policy.json (in their trust ConfigMaps)\n" +
			"with the SDK's own evaluation (agenttls.Policy.Decide), and says whether the call is allowed, in which\n" +
			"direction it is refused, by which policy and rule, and in which mode. FROM and TO are AgentIdentity\n" +
			"names (of -n's namespace, or NAMESPACE/NAME) or SPIFFE IDs; a SPIFFE ID that is not an identity of\n" +
			"this cluster (another trust domain) has no known policy, and only the other side is evaluated.\n" +
			"It exits 0 when the call is allowed and 1 when it is refused.",
		Example: "  kubectl agentmesh explain planner worker -n agents\n" +
			"  kubectl agentmesh explain spiffe://partner.example/ns/ops/agent/auditor agents/worker",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.connect(); err != nil {
				return err
			}
			from, err := o.side(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			to, err := o.side(cmd.Context(), args[1])
			if err != nil {
				return err
			}
			if from.Policy == nil && to.Policy == nil {
				return fmt.Errorf("neither %s nor %s is an AgentIdentity of this cluster: there is no policy to evaluate", args[0], args[1])
			}
			v := explain.Evaluate(from, to)
			return o.report(v, v.Allowed)
		},
	}
}

// side resolves FROM or TO: an identity (NAME or NAMESPACE/NAME) with its
// policy.json, or a SPIFFE ID, which is an identity when it names one of
// this cluster.
func (o *Options) side(ctx context.Context, arg string) (explain.Side, error) {
	if strings.HasPrefix(arg, "spiffe://") {
		id, err := spiffeid.FromString(arg)
		if err != nil {
			return explain.Side{}, fmt.Errorf("%q is not a SPIFFE ID: %w", arg, err)
		}
		segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
		if len(segs) == 4 && segs[0] == "ns" && segs[2] == "agent" {
			aid := &mtlsv1alpha1.AgentIdentity{}
			err := o.cl.Get(ctx, types.NamespacedName{Namespace: segs[1], Name: segs[3]}, aid)
			if err == nil && aid.Status.SPIFFEID == id.String() {
				return o.identitySide(ctx, aid)
			}
		}
		return explain.Side{ID: id}, nil
	}
	ns, name := "", arg
	if i := strings.IndexByte(arg, '/'); i >= 0 {
		ns, name = arg[:i], arg[i+1:]
	} else {
		var err error
		if ns, err = o.namespace(); err != nil {
			return explain.Side{}, err
		}
	}
	aid, err := o.getIdentity(ctx, ns, name)
	if err != nil {
		return explain.Side{}, err
	}
	return o.identitySide(ctx, aid)
}

func (o *Options) identitySide(ctx context.Context, aid *mtlsv1alpha1.AgentIdentity) (explain.Side, error) {
	ref := aid.Namespace + "/" + aid.Name
	cm := &corev1.ConfigMap{}
	key := types.NamespacedName{Namespace: aid.Namespace, Name: aid.TrustConfigMapName()}
	if err := o.cl.Get(ctx, key, cm); err != nil {
		if apierrors.IsNotFound(err) {
			return explain.Side{}, fmt.Errorf("ConfigMap %s, the trust ConfigMap of AgentIdentity %s, not found: the operator has not published its policy yet", key, ref)
		}
		return explain.Side{}, fmt.Errorf("reading ConfigMap %s (trust ConfigMap of AgentIdentity %s): %w", key, ref, err)
	}
	p, err := agenttls.ParsePolicy([]byte(cm.Data[mtlsv1alpha1.TrustPolicyKey]))
	if err != nil {
		return explain.Side{}, fmt.Errorf("ConfigMap %s: %w", key, err)
	}
	id, err := spiffeid.FromString(p.SPIFFEID)
	if err != nil {
		return explain.Side{}, fmt.Errorf("ConfigMap %s: %w", key, err)
	}
	return explain.Side{Identity: ref, ID: id, Policy: p, Source: o.policySource(ctx, aid, id)}, nil
}

// policySource reads the AgentTrustPolicies of the identity's namespace and
// the identities and namespaces their peers select, for explain to name the
// rules behind an allowed entry. Without them (no permission to read them,
// say) nothing is attributed: nil.
func (o *Options) policySource(ctx context.Context, aid *mtlsv1alpha1.AgentIdentity, id spiffeid.ID) *policy.Input {
	list := &mtlsv1alpha1.AgentTrustPolicyList{}
	if err := o.cl.List(ctx, list, client.InNamespace(aid.Namespace)); err != nil {
		return nil
	}
	w := &clusterWorld{ctx: ctx, cl: o.cl}
	in := &policy.Input{
		TrustDomain: id.TrustDomain(), Default: policy.Deny,
		Identity: policy.Identity{Namespace: aid.Namespace, Name: aid.Name, Labels: aid.Labels},
		World:    w, Now: time.Now(),
	}
	for i := range list.Items {
		in.Policies = append(in.Policies, policy.Compile(&list.Items[i]))
	}
	// Resolve every policy once now, so that a peer list that cannot be
	// read leaves the attribution out rather than attributing wrongly.
	for _, c := range in.Policies {
		single := *in
		single.Policies = []*policy.Compiled{c}
		policy.Resolve(single)
	}
	if w.err != nil {
		return nil
	}
	return in
}

// clusterWorld is policy.World read from the API server; the first error
// is kept.
type clusterWorld struct {
	ctx context.Context
	cl  client.Client
	err error
}

func (w *clusterWorld) Identities(ns string) []policy.Identity {
	list := &mtlsv1alpha1.AgentIdentityList{}
	if err := w.cl.List(w.ctx, list, client.InNamespace(ns)); err != nil {
		w.err = cmp.Or(w.err, err)
		return nil
	}
	out := make([]policy.Identity, 0, len(list.Items))
	for _, i := range list.Items {
		out = append(out, policy.Identity{Namespace: i.Namespace, Name: i.Name, Labels: i.Labels})
	}
	return out
}

func (w *clusterWorld) Namespaces() []policy.Namespace {
	list := &corev1.NamespaceList{}
	if err := w.cl.List(w.ctx, list); err != nil {
		w.err = cmp.Or(w.err, err)
		return nil
	}
	out := make([]policy.Namespace, 0, len(list.Items))
	for _, n := range list.Items {
		out = append(out, policy.Namespace{Name: n.Name, Labels: n.Labels})
	}
	return out
}
