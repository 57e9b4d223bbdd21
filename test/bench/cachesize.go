package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/google/pprof/profile"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/operator"
)

// cacheCost is what one kind of object costs in the manager's cache.
type cacheCost struct {
	Kind    string
	Objects int
	// Bytes is the live heap the informer of the kind holds, with its
	// store and indexes.
	Bytes int64
}

func (c cacheCost) perObject() float64 {
	if c.Objects == 0 {
		return 0
	}
	return float64(c.Bytes) / float64(c.Objects)
}

// liveHeap is the live heap after two collections.
func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// measureCaches measures the per-object bytes of the manager's caches of
// Secrets, ConfigMaps and AgentIdentities: it builds, in this process, a
// cache with the manager's own options (operator.CacheOptions: the same
// label selectors and transforms) and starts the informer of one kind at a
// time, taking the live heap (after GC) before it starts and once it has
// synced. The difference over the objects it holds is what one object
// costs the manager, store and indexes included (the manager's extra field
// indexes are not). The informers stay up until all three are measured, so
// a later one does not count an earlier one's garbage.
func (e *env) measureCaches(ctx context.Context) ([]cacheCost, error) {
	opts := operator.CacheOptions(operatorNamespace)
	opts.Scheme = operator.NewScheme()
	c, err := cache.New(fastConfig(e.cluster.Config, -1, 0), opts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = c.Start(ctx) }()
	kinds := []struct {
		kind string // plural
		obj  client.Object
		list client.ObjectList
	}{
		{"Secrets", &corev1.Secret{}, &corev1.SecretList{}},
		{"ConfigMaps", &corev1.ConfigMap{}, &corev1.ConfigMapList{}},
		{"AgentIdentities", &mtlsv1alpha1.AgentIdentity{}, &mtlsv1alpha1.AgentIdentityList{}},
	}
	var out []cacheCost
	for _, k := range kinds {
		before := liveHeap()
		inf, err := c.GetInformer(ctx, k.obj)
		if err != nil {
			return out, err
		}
		syncCtx, done := context.WithTimeout(ctx, 5*time.Minute)
		ok := toolsWaitSynced(syncCtx, inf)
		done()
		if !ok {
			return out, fmt.Errorf("the %s cache did not sync", k.kind)
		}
		after := liveHeap()
		if err := c.List(ctx, k.list, client.UnsafeDisableDeepCopy); err != nil {
			return out, err
		}
		items, err := metaItems(k.list)
		if err != nil {
			return out, err
		}
		out = append(out, cacheCost{Kind: k.kind, Objects: len(items), Bytes: after - before})
		say("cache cost: %d %s hold %s (%.0f B each)", len(items), k.kind, mib(after-before), out[len(out)-1].perObject())
	}
	runtime.KeepAlive(c)
	return out, nil
}

func toolsWaitSynced(ctx context.Context, inf cache.Informer) bool {
	for !inf.HasSynced() {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
	return true
}

// profileInuse is the live heap (inuse_space) a heap profile of the
// manager records: the sum over its samples. The profile is taken after a
// GC, so it is what the manager holds, without the garbage the Go runtime
// lets the heap grow by before it collects.
func profileInuse(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer func() { _ = f.Close() }()
	p, err := profile.Parse(f)
	if err != nil {
		return 0, err
	}
	idx := -1
	for i, st := range p.SampleType {
		if st.Type == "inuse_space" {
			idx = i
		}
	}
	if idx < 0 {
		return 0, fmt.Errorf("%s has no inuse_space", path)
	}
	var sum int64
	for _, s := range p.Sample {
		sum += s.Value[idx]
	}
	return sum, nil
}
