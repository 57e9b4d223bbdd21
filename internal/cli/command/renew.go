package command

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/cli/progress"
)

// waitFlags are the flags of the commands that wait for the operator.
type waitFlags struct {
	noWait  bool
	timeout time.Duration
}

func (w *waitFlags) add(cmd *cobra.Command, timeout time.Duration) {
	cmd.Flags().BoolVar(&w.noWait, "no-wait", false, "make the request and return, without waiting for the operator")
	cmd.Flags().DurationVar(&w.timeout, "timeout", timeout, "how long to wait for the operator")
}

func newRenewCommand(o *Options) *cobra.Command {
	cmd := &cobra.Command{Use: "renew", Short: "Ask the operator to reissue now"}
	var w waitFlags
	id := &cobra.Command{
		Use:   "identity NAME",
		Short: "Reissue an identity's key and certificate now, ahead of its renewal time",
		Long: "renew identity sets the annotation " + mtlsv1alpha1.AnnotationRenew + "=<time of the request> on the\n" +
			"AgentIdentity; the operator issues a new key and certificate (a Reissued Event with reason " + mtlsv1alpha1.ReasonRenewRequested + ";\n" +
			"the identity stays Ready) and removes the annotation. The command waits until the new certificate is in\n" +
			"the status and Ready, printing progress on stderr, unless --no-wait.",
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
			return o.renew(cmd.Context(), ns, args[0], w)
		},
	}
	w.add(id, 5*time.Minute)
	cmd.AddCommand(id)
	return cmd
}

func (o *Options) renew(ctx context.Context, ns, name string, w waitFlags) error {
	id, err := o.getIdentity(ctx, ns, name)
	if err != nil {
		return err
	}
	ref := ns + "/" + name
	if id.Spec.KeyDelivery == mtlsv1alpha1.KeyDeliveryPodCertificate {
		return fmt.Errorf("AgentIdentity %s uses PodCertificate delivery: the kubelet refreshes each Pod's certificate, "+
			"so there is nothing to renew; delete a Pod to give its replacement a new key", ref)
	}
	request := o.Now().UTC().Format(time.RFC3339Nano)
	previous := id.Status.SerialNumber
	if err := o.annotate(ctx, id, mtlsv1alpha1.AnnotationRenew, request); err != nil {
		return fmt.Errorf("annotating AgentIdentity %s: %w", ref, err)
	}
	r := progress.Renewal{Identity: ref, Request: request, State: progress.StateRequested, PreviousSerial: previous, Serial: previous,
		Message: "requested with " + mtlsv1alpha1.AnnotationRenew + "=" + request}
	if w.noWait {
		return o.print(r)
	}
	o.progress("%s: renewal requested (%s=%s)", ref, mtlsv1alpha1.AnnotationRenew, request)
	err = o.poll(ctx, w.timeout, func() (bool, error) {
		cur, err := o.getIdentity(ctx, ns, name)
		if err != nil {
			return false, err
		}
		next := progress.RenewalOf(cur, request, previous)
		if next.Message != r.Message {
			o.progress("%s: %s", ref, next.Message)
		}
		r = next
		return r.State == progress.StateDone || r.State == progress.StateFailed, nil
	})
	if perr := o.print(r); perr != nil {
		return perr
	}
	switch {
	case err != nil:
		return fmt.Errorf("AgentIdentity %s: %w (the request stays; the operator serves it when it can)", ref, err)
	case r.State == progress.StateFailed:
		return &ExitError{Code: 1, Err: fmt.Errorf("AgentIdentity %s: %s", ref, r.Message)}
	}
	return nil
}

// annotate sets one annotation with a merge patch of the metadata only.
func (o *Options) annotate(ctx context.Context, obj client.Object, key, value string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{key: value}}})
	if err != nil {
		return err
	}
	return o.cl.Patch(ctx, obj, client.RawPatch(types.MergePatchType, patch))
}

var errTimeout = errors.New("timed out")

// poll calls f every Interval until it says done, fails, or timeout passes.
func (o *Options) poll(ctx context.Context, timeout time.Duration, f func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		done, err := f()
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w after %s", errTimeout, timeout)
		case <-time.After(o.Interval):
		}
	}
}

func newRotateCACommand(o *Options) *cobra.Command {
	var w waitFlags
	var emergency bool
	cmd := &cobra.Command{
		Use:   "rotate-ca",
		Short: "Rotate the agent CA now (--emergency: the CA is compromised)",
		Long: "rotate-ca annotates the CA Secret with " + ca.AnnotationRotate + "=" + ca.RotateNow + " (or " + ca.RotateCompromised + " with\n" +
			"--emergency), as the README's CA rotation describes: the next CA is propagated to every trust bundle,\n" +
			"then signs, every identity is reissued, and the previous CA leaves the bundles (at once in an\n" +
			"emergency). It follows agentmesh-ca-status and prints each phase on stderr, unless --no-wait. A CA you\n" +
			"supplied is rotated only with --emergency (which replaces it with a self-signed CA), or by supplying\n" +
			"next.crt and next.key.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.connect(); err != nil {
				return err
			}
			return o.rotateCA(cmd.Context(), emergency, w)
		},
	}
	cmd.Flags().BoolVar(&emergency, "emergency", false, "the CA is compromised: reissue without rate limit and drop it from the bundles as soon as every identity is reissued")
	w.add(cmd, 30*time.Minute)
	return cmd
}

func (o *Options) rotateCA(ctx context.Context, emergency bool, w waitFlags) error {
	key := types.NamespacedName{Namespace: o.OperatorNamespace, Name: o.CASecret}
	md := &metav1.PartialObjectMetadata{}
	md.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	if err := o.cl.Get(ctx, key, md); err != nil {
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("CA Secret %s not found (--operator-namespace, --ca-secret)", key)
		}
		return fmt.Errorf("reading CA Secret %s: %w", key, err)
	}
	trigger := ca.RotateNow
	if emergency {
		trigger = ca.RotateCompromised
	}
	if !emergency && md.Annotations[ca.AnnotationManaged] != "true" {
		return fmt.Errorf("the CA in Secret %s was supplied, not created by the operator: only you can provide its successor "+
			"(next.crt and next.key in the Secret); --emergency replaces it with a self-signed CA", key)
	}
	rs, found, err := o.readRotationStatus(ctx)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("ConfigMap %s/agentmesh-ca-status not found: the operator has not loaded a CA yet", o.OperatorNamespace)
	}
	if rs.Phase != ca.PhaseStable && !emergency {
		return fmt.Errorf("a CA rotation is already under way (%s, %s): follow it with kubectl agentmesh status, or escalate it with --emergency", rs.Phase, rs.Reason)
	}
	previous := rs.Active.Serial
	start := o.Now()
	if err := o.annotate(ctx, md, ca.AnnotationRotate, trigger); err != nil {
		return fmt.Errorf("annotating CA Secret %s: %w", key, err)
	}
	r := progress.Rotation{Trigger: trigger, State: progress.StateRequested, Previous: previous, Active: previous, Phase: string(rs.Phase),
		Message: "requested with " + ca.AnnotationRotate + "=" + trigger}
	if w.noWait {
		return o.print(r)
	}
	o.progress("CA rotation requested (%s=%s) of CA %s", ca.AnnotationRotate, trigger, previous)
	err = o.poll(ctx, w.timeout, func() (bool, error) {
		cur := &metav1.PartialObjectMetadata{}
		cur.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
		if err := o.cl.Get(ctx, key, cur); err != nil {
			return false, fmt.Errorf("reading CA Secret %s: %w", key, err)
		}
		rs, _, err := o.readRotationStatus(ctx)
		if err != nil || rs == nil {
			return false, err
		}
		c := progress.CA{Phase: string(rs.Phase), Reason: rs.Reason, Active: rs.Active.Serial, Retired: len(rs.Retired),
			BundlesCurrent: rs.Progress.BundlesCurrent, Bundles: rs.Progress.Bundles, IdentitiesOnActive: rs.Progress.IdentitiesOnActive,
			Identities: rs.Progress.Identities, Stranded: rs.Progress.Stranded}
		if rs.Next != nil {
			c.Next = rs.Next.Serial
		}
		refused := o.rotationRefused(ctx, start)
		next := progress.RotationOf(trigger, previous, c, cur.Annotations[ca.AnnotationRotate] != "", refused)
		if next.Message != r.Message {
			o.progress("%s", next.Message)
		}
		r = next
		return r.State == progress.StateDone || r.State == progress.StateFailed, nil
	})
	if perr := o.print(r); perr != nil {
		return perr
	}
	switch {
	case err != nil:
		return fmt.Errorf("CA rotation: %w (it goes on; follow it with kubectl agentmesh status)", err)
	case r.State == progress.StateFailed:
		return &ExitError{Code: 1, Err: errors.New(r.Message)}
	}
	return nil
}

// rotationRefused is the note of a RotationRefused Event on the CA Secret
// since start, or "".
func (o *Options) rotationRefused(ctx context.Context, start time.Time) string {
	list := &eventsv1.EventList{}
	if err := o.cl.List(ctx, list, client.InNamespace(o.OperatorNamespace)); err != nil {
		return ""
	}
	for _, e := range list.Items {
		at := e.EventTime.Time
		if at.IsZero() {
			at = e.CreationTimestamp.Time
		}
		if e.Regarding.Name == o.CASecret && e.Reason == mtlsv1alpha1.EventRotationRefused && !at.Before(start.Add(-time.Second)) {
			return e.Note
		}
	}
	return ""
}
