package controller_test

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/controller"
	"github.com/agentmesh/agentmesh/internal/operator"
)

var (
	recorderOnce sync.Once
	testRecorder events.EventRecorderLogger
)

// reconciler is a CertificateReconciler for direct calls: it reads the
// API server without a cache, shares the fake clock and the running
// operator's CA, and records real Events.
func reconciler() *controller.CertificateReconciler {
	recorderOnce.Do(func() {
		cs := kubernetes.NewForConfigOrDie(env.Config)
		b := events.NewBroadcaster(&events.EventSinkImpl{Interface: cs.EventsV1()})
		b.StartRecordingToSink(make(chan struct{}))
		testRecorder = b.NewRecorder(operator.NewScheme(), "agentmesh-test")
	})
	holder := &ca.Holder{}
	if running != nil {
		holder = running.CA
	}
	return &controller.CertificateReconciler{
		Client:    k8s,
		APIReader: k8s,
		Recorder: testRecorder.(interface {
			events.EventRecorder
			events.AnnotatedEventRecorder
		}),
		Clock:       clk,
		CA:          holder,
		Keys:        controller.NewKeyPool(1),
		Metrics:     controller.NewMetrics(),
		TrustDomain: td,
	}
}

func req(nn types.NamespacedName) reconcile.Request { return reconcile.Request{NamespacedName: nn} }

// failingSigner is a CA key whose every signature fails.
type failingSigner struct{ crypto.Signer }

func (failingSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("the signing device is unavailable")
}

// brokenCA is a valid CA state whose key cannot sign.
func brokenCA(t *testing.T) *ca.State {
	t.Helper()
	a, err := ca.Generate(ca.GenerateOptions{TrustDomain: td, Now: clk.Now()})
	if err != nil {
		t.Fatal(err)
	}
	data, err := ca.Encode(a)
	if err != nil {
		t.Fatal(err)
	}
	st, err := ca.Load(data, nil, td, clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	st.Active.Signer = failingSigner{st.Active.Signer}
	return st
}

// watchChanges records every change to Secrets and AgentIdentities in ns
// from now on; the returned function lists them.
func watchChanges(t *testing.T, ctx context.Context, ns string) func() []string {
	t.Helper()
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: operator.NewScheme()})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		changes []string
	)
	for _, list := range []client.ObjectList{&corev1.SecretList{}, &mtlsv1alpha1.AgentIdentityList{}} {
		if err := wc.List(ctx, list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		rv := list.GetResourceVersion()
		w, err := wc.Watch(ctx, list, client.InNamespace(ns), &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: rv}})
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for ev := range w.ResultChan() {
				if ev.Type == watch.Bookmark {
					continue
				}
				o, ok := ev.Object.(client.Object)
				name := "?"
				if ok {
					name = fmt.Sprintf("%T %s", o, o.GetName())
				}
				mu.Lock()
				changes = append(changes, string(ev.Type)+" "+name)
				mu.Unlock()
			}
		}()
		t.Cleanup(w.Stop)
	}
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), changes...)
	}
}
