// Package command is kubectl-agentmesh's command line: cobra commands with
// kubectl's connection flags (cli-runtime), each reading the objects it
// needs and handing them to the pure packages of internal/cli. It never
// prints key material.
package command

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/cli/output"
)

// ExitError ends the program with Code; Err, when set, is printed first.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// errProblems ends a command that printed problems with exit code 1.
var errProblems = &ExitError{Code: 1}

// Options are the flags every command shares.
type Options struct {
	Flags   *genericclioptions.ConfigFlags
	Streams genericiooptions.IOStreams
	// Output is -o: json, yaml, or empty for a table.
	Output string
	// Installation names.
	OperatorNamespace string
	CASecret          string
	WebhookCASecret   string
	WebhookConfig     string
	Deployment        string
	// Now is the clock (tests fix it).
	Now func() time.Time
	// Interval is how often wait loops poll.
	Interval time.Duration

	cfg *rest.Config
	cl  client.Client
	cs  kubernetes.Interface
}

// NewRootCommand returns kubectl-agentmesh's root command.
func NewRootCommand(streams genericiooptions.IOStreams) *cobra.Command {
	o := &Options{
		Flags: genericclioptions.NewConfigFlags(true), Streams: streams,
		Now: time.Now, Interval: time.Second,
	}
	root := &cobra.Command{
		Use:   "kubectl-agentmesh",
		Short: "Inspect and operate agentmesh: identities, policies, the CA",
		Long: "kubectl agentmesh inspects and operates an agentmesh installation: the status of the installation,\n" +
			"one identity's certificate, why one agent may or may not call another, renewals, CA rotations and\n" +
			"preflight checks. It uses kubectl's kubeconfig, context and namespace flags.",
		Annotations: map[string]string{
			cobra.CommandDisplayNameAnnotation: "kubectl agentmesh",
		},
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return output.ValidFormat(o.Output)
		},
	}
	o.Flags.AddFlags(root.PersistentFlags())
	pf := root.PersistentFlags()
	pf.StringVarP(&o.Output, "output", "o", "", "output format: json or yaml (a table when empty)")
	pf.StringVar(&o.OperatorNamespace, "operator-namespace", "agentmesh-system", "namespace of the operator, its CA Secret and agentmesh-ca-status")
	pf.StringVar(&o.CASecret, "ca-secret", "agentmesh-ca", "the CA Secret (operator flag --ca-secret)")
	pf.StringVar(&o.WebhookCASecret, "webhook-ca-secret", "agentmesh-webhook-ca", "the webhook CA Secret (operator flag --webhook-ca-secret)")
	pf.StringVar(&o.WebhookConfig, "webhook-config-name", "agentmesh", "the webhook configurations (operator flag --webhook-config-name)")
	pf.StringVar(&o.Deployment, "operator-deployment", "agentmesh", "the operator's Deployment (the Helm release's name)")
	root.AddCommand(newStatusCommand(o), newInspectCommand(o), newExplainCommand(o), newRenewCommand(o),
		newRotateCACommand(o), newCheckCommand(o))
	return root
}

// Execute runs the root command with args and returns the exit code.
func Execute(ctx context.Context, streams genericiooptions.IOStreams, args []string) int {
	root := NewRootCommand(streams)
	root.SetArgs(args)
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var exit *ExitError
	if errors.As(err, &exit) {
		if exit.Err != nil {
			fmt.Fprintln(streams.ErrOut, "error:", exit.Err)
		}
		return exit.Code
	}
	fmt.Fprintln(streams.ErrOut, "error:", err)
	return 1
}

func (o *Options) connect() error {
	if o.cl != nil {
		return nil
	}
	cfg, err := o.Flags.ToRESTConfig()
	if err != nil {
		return err
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "kubectl-agentmesh"
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(mtlsv1alpha1.AddToScheme(scheme))
	utilruntime.Must(apiextensionsv1.AddToScheme(scheme))
	cl, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	o.cfg, o.cl, o.cs = cfg, cl, cs
	return nil
}

func (o *Options) discovery() discovery.DiscoveryInterface { return o.cs.Discovery() }

// namespace is the namespace of -n, the context's, or default.
func (o *Options) namespace() (string, error) {
	ns, _, err := o.Flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return "", err
	}
	return ns, nil
}

func (o *Options) print(v output.Human) error {
	return output.Write(o.Streams.Out, o.Output, v)
}

// report prints v and ends the command with errProblems (exit code 1) unless
// ok: the tail of the commands whose output is a verdict.
func (o *Options) report(v output.Human, ok bool) error {
	if err := o.print(v); err != nil {
		return err
	}
	if !ok {
		return errProblems
	}
	return nil
}

// progress prints a line to stderr while waiting (never in the JSON or YAML
// output, which stays one document).
func (o *Options) progress(format string, args ...any) {
	fmt.Fprintf(o.Streams.ErrOut, format+"\n", args...)
}
