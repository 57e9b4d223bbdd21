package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/watch"
	watchtools "k8s.io/client-go/tools/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// watcherFunc adapts a function to client-go's WatcherWithContext.
type watcherFunc func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error)

func (f watcherFunc) WatchWithContext(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	return f(ctx, o)
}

// listed is the event type observe gives the objects of its initial list.
const listed watch.EventType = "LISTED"

// observe lists the objects of a kind in a namespace (all namespaces for
// ""), optionally by label, hands each to handle as a listed event, then watches from that list's
// resourceVersion and hands every further event to handle, from one
// goroutine, until ctx ends or stop is called. A watch the API server ends
// is resumed where it left off.
func (e *env) observe(ctx context.Context, newList func() client.ObjectList, ns string, sel labels.Selector,
	handle func(watch.EventType, client.Object)) (stop func(), err error) {
	opts := []client.ListOption{client.InNamespace(ns)}
	if sel != nil {
		opts = append(opts, client.MatchingLabelsSelector{Selector: sel})
	}
	list := newList()
	if err := e.cl.List(ctx, list, opts...); err != nil {
		return nil, err
	}
	items, err := metaItems(list)
	if err != nil {
		return nil, err
	}
	for _, o := range items {
		handle(listed, o)
	}
	wctx, cancel := context.WithCancel(ctx)
	rw, err := watchtools.NewRetryWatcherWithContext(wctx, list.GetResourceVersion(), watcherFunc(func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
		lo := &client.ListOptions{Namespace: ns, Raw: &o}
		if sel != nil {
			lo.LabelSelector = sel
		}
		return e.cl.Watch(ctx, newList(), lo)
	}))
	if err != nil {
		cancel()
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range rw.ResultChan() {
			switch ev.Type {
			case watch.Added, watch.Modified, watch.Deleted:
				if o, ok := ev.Object.(client.Object); ok {
					handle(ev.Type, o)
				}
			case watch.Error:
				fmt.Printf("bench: watch error: %v\n", ev.Object)
			}
		}
	}()
	return func() {
		cancel()
		rw.Stop()
		<-done
	}, nil
}

// metaItems returns the items of a typed list as client.Objects.
func metaItems(list client.ObjectList) ([]client.Object, error) {
	objs, err := meta.ExtractList(list)
	if err != nil {
		return nil, err
	}
	out := make([]client.Object, 0, len(objs))
	for _, o := range objs {
		co, ok := o.(client.Object)
		if !ok {
			return nil, fmt.Errorf("list item %T is not an object", o)
		}
		out = append(out, co)
	}
	return out, nil
}

// parallel runs fn(i) for i in [0, n) on workers goroutines and returns
// the first error; it stops handing out work after an error or when ctx
// ends.
func parallel(ctx context.Context, n, workers int, fn func(ctx context.Context, i int) error) error {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(ctx, i); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}
