package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

const fanoutPolicy = "bench-all"

// fanoutResult is the policy fan-out phase.
type fanoutResult struct {
	N int
	// Elapsed is from the policy's create to the last trust ConfigMap that
	// names it; PolicyReady to the policy's Ready=True condition.
	Elapsed     time.Duration
	PolicyReady time.Duration
	// PolicyJSONBytes and BundleBytes are the sizes of one trust
	// ConfigMap's policy.json and bundle.pem.
	PolicyJSONBytes int
	BundleBytes     int
	Stats           phaseStats
	// Drained is from the policy's create until the manager's work queues
	// were empty again (the reconciles its own writes trigger).
	Drained time.Duration
}

// namesPolicy reports whether the policies annotation of a trust ConfigMap
// ("name=generation,...") names the policy.
func namesPolicy(annotation, policy string) bool {
	for _, kv := range strings.Split(annotation, ",") {
		if name, _, _ := strings.Cut(kv, "="); name == policy {
			return true
		}
	}
	return false
}

// runFanout creates one AgentTrustPolicy that selects every identity of
// the bulk namespace and allows ingress from all of them, and waits until
// every trust ConfigMap names it.
func (e *env) runFanout(ctx context.Context) (fanoutResult, error) {
	res := fanoutResult{N: e.cfg.N}
	var mu sync.Mutex
	compiled := map[string]bool{}
	done := make(chan struct{})
	var last time.Time
	stop, err := e.observe(ctx, func() client.ObjectList { return &corev1.ConfigMapList{} }, bulkNamespace, managedSelector,
		func(ev watch.EventType, o client.Object) {
			if ev == watch.Deleted {
				return
			}
			has := namesPolicy(o.GetAnnotations()[mtlsv1alpha1.AnnotationPolicies], fanoutPolicy)
			now := time.Now()
			mu.Lock()
			defer mu.Unlock()
			if has && !compiled[o.GetName()] {
				compiled[o.GetName()] = true
				if len(compiled) == e.cfg.N {
					last = now
					close(done)
				}
			}
		})
	if err != nil {
		return res, err
	}
	defer stop()
	p, err := e.probe(ctx)
	if err != nil {
		return res, err
	}
	waitProfile := e.cpuProfile(ctx, "fanout-cpu.pprof")
	e.goroutinesAfter(ctx, 5*time.Second, "fanout-goroutines.txt")
	policy := &mtlsv1alpha1.AgentTrustPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: bulkNamespace, Name: fanoutPolicy},
		Spec: mtlsv1alpha1.AgentTrustPolicySpec{
			AgentSelector: mtlsv1alpha1.LabelSelector{},
			Ingress:       []mtlsv1alpha1.IngressRule{{From: []mtlsv1alpha1.AgentPeer{{IdentitySelector: &mtlsv1alpha1.LabelSelector{}}}}},
		},
	}
	say("fan-out: AgentTrustPolicy %s over %d identities", fanoutPolicy, e.cfg.N)
	start := time.Now()
	if err := e.cl.Create(ctx, policy); err != nil {
		return res, fmt.Errorf("fan-out: creating the policy: %w", err)
	}
	timeout := 10*time.Minute + time.Duration(e.cfg.N)*50*time.Millisecond
	deadline := time.After(timeout)
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
wait:
	for {
		select {
		case <-done:
			break wait
		case <-ctx.Done():
			return res, ctx.Err()
		case <-deadline:
			return res, fmt.Errorf("fan-out: not every trust ConfigMap names the policy after %s", timeout)
		case <-tick.C:
			mu.Lock()
			say("fan-out: %d of %d trust ConfigMaps name the policy", len(compiled), e.cfg.N)
			mu.Unlock()
		}
	}
	mu.Lock()
	res.Elapsed = last.Sub(start)
	mu.Unlock()
	say("fan-out: every trust ConfigMap names the policy after %s; waiting for the policy's Ready", res.Elapsed.Round(time.Millisecond))
	for {
		got := &mtlsv1alpha1.AgentTrustPolicy{}
		if err := e.cl.Get(ctx, client.ObjectKeyFromObject(policy), got); err != nil {
			return res, err
		}
		if c := meta.FindStatusCondition(got.Status.Conditions, mtlsv1alpha1.ConditionReady); c != nil &&
			c.Status == metav1.ConditionTrue && c.ObservedGeneration == got.Generation {
			res.PolicyReady = time.Since(start)
			break
		}
		if time.Since(start) > timeout {
			say("fan-out: the policy is not Ready after %s", timeout)
			break
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if _, err := e.settle(ctx, false); err != nil {
		return res, err
	}
	res.Drained = time.Since(start)
	if res.Stats, err = e.since(ctx, p); err != nil {
		return res, err
	}
	waitProfile()
	cm := &corev1.ConfigMap{}
	if err := e.cl.Get(ctx, types.NamespacedName{Namespace: bulkNamespace, Name: bulkName(0) + mtlsv1alpha1.TrustConfigMapSuffix}, cm); err != nil {
		return res, err
	}
	res.PolicyJSONBytes = len(cm.Data["policy.json"])
	res.BundleBytes = len(cm.Data["bundle.pem"])
	return res, nil
}
