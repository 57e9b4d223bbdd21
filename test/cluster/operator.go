package cluster

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/agentmesh/agentmesh/internal/operator"
)

// InProcess is the operator running in the test's process, wired exactly
// as cmd/manager wires it (operator.New), for tests that need its clock,
// its CA holder or its logs. Tests of the binary or the chart use
// StartManager or the node instead.
type InProcess struct {
	*operator.Operator
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// RunOperator starts the operator against cfg and returns at once. Unless
// opts say otherwise it serves no metrics and no probes, and it skips
// controller-runtime's check for unique controller names, since tests run
// the operator more than once in one process.
func RunOperator(cfg *rest.Config, oc operator.Config, opts ctrl.Options) (*InProcess, error) {
	if opts.Metrics.BindAddress == "" {
		opts.Metrics.BindAddress = "0"
	}
	if opts.HealthProbeBindAddress == "" {
		opts.HealthProbeBindAddress = "0"
	}
	if opts.Controller.SkipNameValidation == nil {
		opts.Controller.SkipNameValidation = ptr.To(true)
	}
	op, err := operator.New(cfg, oc, opts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &InProcess{Operator: op, cancel: cancel, done: make(chan struct{})}
	go func() {
		p.err = op.Manager.Start(ctx)
		close(p.done)
	}()
	return p, nil
}

// StartOperator is RunOperator for one test: it fails the test when the
// operator cannot start, and stops it when the test ends (an error it ended
// with fails the test).
func StartOperator(t testing.TB, cfg *rest.Config, oc operator.Config, opts ctrl.Options) *InProcess {
	t.Helper()
	p, err := RunOperator(cfg, oc, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("the operator ended with %v", err)
		}
	})
	return p
}

// Done is closed when the operator has stopped.
func (p *InProcess) Done() <-chan struct{} { return p.done }

// Stop stops the operator and returns the error it ended with.
func (p *InProcess) Stop() error {
	p.cancel()
	<-p.done
	return p.err
}

// AwaitCA waits until the operator has loaded (or created) its CA.
func (p *InProcess) AwaitCA(timeout time.Duration) error {
	return p.await(timeout, "the operator did not load the CA", func() error {
		_, err := p.CA.Get()
		return err
	})
}

// AwaitWebhookCertificate waits until the webhook server has a certificate
// that the webhook configurations trust.
func (p *InProcess) AwaitWebhookCertificate(timeout time.Duration) error {
	if p.Certs == nil {
		return errors.New("the operator serves no webhooks")
	}
	return p.await(timeout, "the webhook certificate was not ready", func() error { return p.Certs.Ready(nil) })
}

func (p *InProcess) await(timeout time.Duration, what string, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s: the operator stopped: %w", what, p.err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s within %s: %w", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
