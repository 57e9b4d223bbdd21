package main

import (
	"context"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

const (
	webhookNamespace = "bench-web"
	webhookIdentity  = "web"
	// webhookName is the Pod webhook's name in the
	// MutatingWebhookConfiguration (the API server's metrics use it).
	webhookName = "pods.mtls.agentmesh.dev"
)

// webhookResult is the admission latency of labelled Pod creates.
type webhookResult struct {
	Pods     int
	Rate     float64 // achieved creates per second
	Errors   int
	Injected int
	// Client is the POST latency the client saw.
	ClientP50, ClientP99 time.Duration
	// Handler is the manager's agentmesh_webhook_request_duration_seconds
	// for the Pod webhook; APIServer the API server's
	// apiserver_admission_webhook_admission_duration_seconds for it (the
	// call as the API server sees it: connection, TLS, handler).
	HandlerP50, HandlerP99     quantileEstimate // seconds
	APIServerP50, APIServerP99 quantileEstimate
	Wall                       time.Duration
	CPU                        cpuSnapshot
	Stats                      phaseStats
}

// runWebhook creates one identity, then labelled Pods naming it at a steady
// rate, each create on its own goroutine so a slow answer does not hold up
// the schedule.
func (e *env) runWebhook(ctx context.Context) (webhookResult, error) {
	res := webhookResult{Pods: e.cfg.WebhookPods}
	if err := e.ensureNamespace(ctx, webhookNamespace); err != nil {
		return res, err
	}
	id := &mtlsv1alpha1.AgentIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: webhookNamespace, Name: webhookIdentity}}
	if err := e.cl.Create(ctx, id); err != nil {
		return res, err
	}
	for {
		got := &mtlsv1alpha1.AgentIdentity{}
		if err := e.cl.Get(ctx, client.ObjectKeyFromObject(id), got); err != nil {
			return res, err
		}
		if meta.IsStatusConditionTrue(got.Status.Conditions, mtlsv1alpha1.ConditionReady) {
			break
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if _, err := e.settle(ctx, false); err != nil {
		return res, err
	}
	// The operator's own histogram: buckets fine enough below 10 ms to
	// read a p99 from (controller-runtime's has one per decade).
	histo := "agentmesh_webhook_request_duration_seconds"
	mBefore, err := e.managerMetrics(ctx, histo)
	if err != nil {
		return res, err
	}
	aBefore, err := e.apiserverMetrics(ctx)
	if err != nil {
		return res, err
	}
	say("webhook: %d labelled Pods at %.0f/s", e.cfg.WebhookPods, e.cfg.WebhookRate)
	var (
		mu  sync.Mutex
		lat = make([]time.Duration, 0, e.cfg.WebhookPods)
		wg  sync.WaitGroup
	)
	probe, err := e.probe(ctx)
	if err != nil {
		return res, err
	}
	waitProfile := e.cpuProfile(ctx, "webhook-cpu.pprof")
	interval := time.Duration(float64(time.Second) / e.cfg.WebhookRate)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	cpu0, start := e.cpuSnapshot(), time.Now()
	for i := 0; i < e.cfg.WebhookPods; i++ {
		select {
		case <-ctx.Done():
			wg.Wait()
			return res, ctx.Err()
		case <-tick.C:
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: webhookNamespace, Name: fmt.Sprintf("web-%05d", i),
				Labels: map[string]string{mtlsv1alpha1.LabelIdentity: webhookIdentity, "app": "agent"},
			},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "registry.example/agent:1"}}},
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			err := e.cl.Create(ctx, pod)
			d := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Errors++
				return
			}
			lat = append(lat, d)
			if pod.Annotations[mtlsv1alpha1.AnnotationInjected] != "" {
				res.Injected++
			}
		}()
	}
	wg.Wait()
	res.Wall, res.CPU = time.Since(start), e.cpuSnapshot().sub(cpu0)
	if res.Stats, err = e.since(ctx, probe); err != nil {
		return res, err
	}
	res.Rate = float64(e.cfg.WebhookPods) / res.Wall.Seconds()
	mAfter, err := e.managerMetrics(ctx, histo)
	if err != nil {
		return res, err
	}
	aAfter, err := e.apiserverMetrics(ctx)
	if err != nil {
		return res, err
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	res.ClientP50, res.ClientP99 = quantile(lat, 0.5), quantile(lat, 0.99)
	hw := map[string]string{"webhook": "pods"}
	res.HandlerP50 = histogramQuantile(mBefore, mAfter, histo, hw, 0.5)
	res.HandlerP99 = histogramQuantile(mBefore, mAfter, histo, hw, 0.99)
	aw := map[string]string{"name": webhookName, "type": "admit", "operation": "CREATE"}
	ah := "apiserver_admission_webhook_admission_duration_seconds"
	res.APIServerP50 = histogramQuantile(aBefore, aAfter, ah, aw, 0.5)
	res.APIServerP99 = histogramQuantile(aBefore, aAfter, ah, aw, 0.99)
	say("webhook: client p50 %s p99 %s; handler p50 %s p99 %s; %d errors, %d injected",
		res.ClientP50, res.ClientP99, secs(res.HandlerP50.Value), secs(res.HandlerP99.Value), res.Errors, res.Injected)
	waitProfile()
	// Unscheduled Pods go at once; the restarts below should not count them.
	if err := e.cl.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace(webhookNamespace)); err != nil {
		return res, fmt.Errorf("webhook: deleting the Pods: %w", err)
	}
	return res, nil
}

// secs renders seconds (NaN: no data) as a duration.
func secs(s float64) string {
	if math.IsNaN(s) {
		return "n/a"
	}
	return time.Duration(s * float64(time.Second)).Round(time.Microsecond).String()
}
