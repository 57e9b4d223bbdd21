package main

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
)

// writeRecorder watches, cluster-wide, the objects the manager writes
// (its Secrets and ConfigMaps, AgentIdentities, AgentTrustPolicies, Events)
// and describes every change it sees: which object, and which fields. It
// names the writes the manager's request counters only count.
type writeRecorder struct {
	mu      sync.Mutex
	last    map[string]client.Object
	changes []string
	stops   []func()
}

func (e *env) recordWrites(ctx context.Context) (*writeRecorder, error) {
	w := &writeRecorder{last: map[string]client.Object{}}
	kinds := []struct {
		list func() client.ObjectList
		kind string
		own  bool // only agentmesh's (label-selected)
	}{
		{func() client.ObjectList { return &corev1.SecretList{} }, "Secret", true},
		{func() client.ObjectList { return &corev1.ConfigMapList{} }, "ConfigMap", true},
		{func() client.ObjectList { return &mtlsv1alpha1.AgentIdentityList{} }, "AgentIdentity", false},
		{func() client.ObjectList { return &mtlsv1alpha1.AgentTrustPolicyList{} }, "AgentTrustPolicy", false},
		{func() client.ObjectList { return &eventsv1.EventList{} }, "Event", false},
	}
	for _, k := range kinds {
		sel := managedSelector
		if !k.own {
			sel = nil
		}
		stop, err := e.observe(ctx, k.list, "", sel, func(ev watch.EventType, o client.Object) {
			w.handle(k.kind, ev, o)
		})
		if err != nil {
			w.stop()
			return nil, err
		}
		w.stops = append(w.stops, stop)
	}
	return w, nil
}

func (w *writeRecorder) stop() {
	for _, s := range w.stops {
		s()
	}
	w.stops = nil
}

// seen returns the changes recorded so far.
func (w *writeRecorder) seen() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.changes...)
}

func (w *writeRecorder) handle(kind string, ev watch.EventType, o client.Object) {
	key := kind + " " + o.GetNamespace() + "/" + o.GetName()
	w.mu.Lock()
	defer w.mu.Unlock()
	prev := w.last[key]
	w.last[key] = o
	if ev == listed {
		return
	}
	switch {
	case ev == watch.Deleted:
		w.changes = append(w.changes, "deleted "+key)
	case prev == nil:
		desc := "created " + key
		if e, ok := o.(*eventsv1.Event); ok {
			desc += fmt.Sprintf(" (%s %s on %s %s/%s: %q)", e.Type, e.Reason, e.Regarding.Kind, e.Regarding.Namespace, e.Regarding.Name, e.Note)
		}
		w.changes = append(w.changes, desc)
	default:
		w.changes = append(w.changes, "updated "+key+": "+diff(prev, o))
	}
}

// diff names what changed between two versions of an object: labels,
// annotations, data keys, spec and status fields.
func diff(a, b client.Object) string {
	var out []string
	mapDiff := func(what string, x, y map[string]string) {
		for _, k := range changedKeys(x, y) {
			out = append(out, fmt.Sprintf("%s %s %q -> %q", what, k, x[k], y[k]))
		}
	}
	mapDiff("label", a.GetLabels(), b.GetLabels())
	mapDiff("annotation", a.GetAnnotations(), b.GetAnnotations())
	if !reflect.DeepEqual(a.GetOwnerReferences(), b.GetOwnerReferences()) {
		out = append(out, "ownerReferences")
	}
	switch x := a.(type) {
	case *corev1.ConfigMap:
		y := b.(*corev1.ConfigMap)
		for _, k := range changedKeys(x.Data, y.Data) {
			if len(x.Data[k]) <= 80 && len(y.Data[k]) <= 80 {
				out = append(out, fmt.Sprintf("data %s %q -> %q", k, x.Data[k], y.Data[k]))
			} else {
				out = append(out, "data "+k)
			}
		}
	case *corev1.Secret:
		y := b.(*corev1.Secret)
		keys := map[string]bool{}
		for k := range x.Data {
			keys[k] = true
		}
		for k := range y.Data {
			keys[k] = true
		}
		for k := range keys {
			if string(x.Data[k]) != string(y.Data[k]) {
				out = append(out, "data "+k)
			}
		}
	default:
		out = append(out, jsonDiff(a, b)...)
	}
	if len(out) == 0 {
		return "no visible change (resourceVersion only)"
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

func changedKeys(x, y map[string]string) []string {
	var out []string
	for k, v := range x {
		if w, ok := y[k]; !ok || w != v {
			out = append(out, k)
		}
	}
	for k := range y {
		if _, ok := x[k]; !ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// jsonDiff compares spec and status field by field (conditions by type).
func jsonDiff(a, b client.Object) []string {
	toMap := func(o client.Object) map[string]any {
		raw, _ := json.Marshal(o)
		m := map[string]any{}
		_ = json.Unmarshal(raw, &m)
		return m
	}
	ma, mb := toMap(a), toMap(b)
	var out []string
	for _, part := range []string{"spec", "status"} {
		pa, _ := ma[part].(map[string]any)
		pb, _ := mb[part].(map[string]any)
		keys := map[string]bool{}
		for k := range pa {
			keys[k] = true
		}
		for k := range pb {
			keys[k] = true
		}
		for k := range keys {
			if reflect.DeepEqual(pa[k], pb[k]) {
				continue
			}
			if k == "conditions" {
				out = append(out, conditionDiff(a, b)...)
				continue
			}
			out = append(out, fmt.Sprintf("%s.%s %v -> %v", part, k, pa[k], pb[k]))
		}
	}
	return out
}

func conditionDiff(a, b client.Object) []string {
	conds := func(o client.Object) []metav1.Condition {
		switch x := o.(type) {
		case *mtlsv1alpha1.AgentIdentity:
			return x.Status.Conditions
		case *mtlsv1alpha1.AgentTrustPolicy:
			return x.Status.Conditions
		}
		return nil
	}
	byType := map[string]metav1.Condition{}
	for _, c := range conds(a) {
		byType[c.Type] = c
	}
	var out []string
	for _, c := range conds(b) {
		p, ok := byType[c.Type]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("condition %s added (%s %s)", c.Type, c.Status, c.Reason))
		case p.Status != c.Status || p.Reason != c.Reason || p.Message != c.Message:
			out = append(out, fmt.Sprintf("condition %s %s/%s %q -> %s/%s %q", c.Type, p.Status, p.Reason, p.Message, c.Status, c.Reason, c.Message))
		case !p.LastTransitionTime.Equal(&c.LastTransitionTime) || p.ObservedGeneration != c.ObservedGeneration:
			out = append(out, fmt.Sprintf("condition %s lastTransitionTime/observedGeneration", c.Type))
		}
	}
	return out
}
