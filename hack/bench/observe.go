/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/operator"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
)

// scaleNamespacePrefix names the namespaces of the operator's part of the scale run.
const scaleNamespacePrefix = "scale-"

// scaleObserver plays the Deployment controller and kubelet for the operator's collectors and
// counts Synced policies, from watches as the real controllers do. An earlier version listed
// every Deployment and every policy twice a second: at 5,000 policies those lists were a large
// share of the API server's work, charged to the operator's figure.
type scaleObserver struct {
	c      client.Client
	want   int
	mu     sync.Mutex
	synced map[types.NamespacedName]bool
	done   chan struct{}
	last   time.Time
	work   chan types.NamespacedName
}

// observeScale starts the watches and returns once they are synced. Done closes when want
// policies are Synced at their generation; Last is when the last one became so.
func observeScale(ctx context.Context, cfg *rest.Config, c client.Client, want int) (*scaleObserver, error) {
	o := &scaleObserver{c: c, want: want, synced: map[types.NamespacedName]bool{}, done: make(chan struct{}), work: make(chan types.NamespacedName, 1<<16)}
	managed := labels.SelectorFromSet(labels.Set{resources.LabelManagedBy: resources.ManagedByValue})
	ca, err := cache.New(cfg, cache.Options{Scheme: operator.NewScheme(), DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{&appsv1.Deployment{}: {Label: managed}}})
	if err != nil {
		return nil, err
	}
	deps, err := ca.GetInformer(ctx, &appsv1.Deployment{})
	if err != nil {
		return nil, err
	}
	onDeployment := func(obj any) {
		// Only the operator's: the baselines' Deployments are objects, not collectors.
		if d, ok := obj.(*appsv1.Deployment); ok && strings.HasPrefix(d.Namespace, scaleNamespacePrefix) && !rolledOut(d) {
			o.work <- types.NamespacedName{Namespace: d.Namespace, Name: d.Name}
		}
	}
	if _, err := deps.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: onDeployment, UpdateFunc: func(_, n any) { onDeployment(n) }}); err != nil {
		return nil, err
	}
	policies, err := ca.GetInformer(ctx, &v1.TelemetryPolicy{})
	if err != nil {
		return nil, err
	}
	if _, err := policies.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: o.onPolicy, UpdateFunc: func(_, n any) { o.onPolicy(n) }}); err != nil {
		return nil, err
	}
	go func() { _ = ca.Start(ctx) }()
	if !ca.WaitForCacheSync(ctx) {
		return nil, fmt.Errorf("the bench's watches did not sync")
	}
	// The Deployment controller's default number of workers.
	for range 5 {
		go o.rollOut(ctx, ca)
	}
	return o, nil
}

// rollOut reports each queued Deployment's current template running (a conflict is followed by
// the update event that caused it, which queues the Deployment again).
func (o *scaleObserver) rollOut(ctx context.Context, r client.Reader) {
	for {
		select {
		case <-ctx.Done():
			return
		case key := <-o.work:
			d := &appsv1.Deployment{}
			if err := r.Get(ctx, key, d); err != nil || rolledOut(d) {
				continue
			}
			d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
			_ = o.c.Status().Update(ctx, d)
		}
	}
}

func rolledOut(d *appsv1.Deployment) bool {
	return d.Status.ObservedGeneration == d.Generation && d.Status.AvailableReplicas == 1
}

func (o *scaleObserver) onPolicy(obj any) {
	p, ok := obj.(*v1.TelemetryPolicy)
	if !ok {
		return
	}
	synced := false
	for _, cond := range p.Status.Conditions {
		if cond.Type == v1.ConditionSynced && cond.Status == metav1.ConditionTrue && cond.ObservedGeneration == p.Generation {
			synced = true
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	key := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
	if synced == o.synced[key] {
		return
	}
	if synced {
		o.synced[key] = true
	} else {
		delete(o.synced, key)
	}
	if len(o.synced) == o.want {
		o.last = time.Now()
		select {
		case <-o.done:
		default:
			close(o.done)
		}
	}
}

// Synced is how many policies are Synced now.
func (o *scaleObserver) Synced() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.synced)
}

// Last is when the last policy became Synced.
func (o *scaleObserver) Last() time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.last
}

// apiserverRequests reads the API server's request counters (apiserver_request_total) by verb,
// resource and code, from every client.
func apiserverRequests(cfg *rest.Config) (map[string]float64, error) {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Get(strings.TrimSuffix(cfg.Host, "/") + "/metrics")
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the API server's metrics: %s", resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	counts := map[string]float64{}
	label := func(series, name string) string {
		_, rest, ok := strings.Cut(series, name+`="`)
		if !ok {
			return ""
		}
		v, _, _ := strings.Cut(rest, `"`)
		return v
	}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		series, value, ok := strings.Cut(line, "} ")
		if !ok {
			continue
		}
		n, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		res := label(series, "resource")
		if sub := label(series, "subresource"); sub != "" {
			res += "/" + sub
		}
		counts[fmt.Sprintf("%s %s %s", label(series, "verb"), res, label(series, "code"))] += n
	}
	return counts, nil
}

// printRequests prints the API server's requests between two snapshots, by count.
func printRequests(title string, before, after map[string]float64, per int) {
	type row struct {
		key string
		n   float64
	}
	var rows []row
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			rows = append(rows, row{k, d})
		}
	}
	slices.SortFunc(rows, func(a, b row) int { return int(b.n - a.n) })
	fmt.Println("    " + title)
	for _, r := range rows {
		fmt.Printf("      %-55s %7.0f %6.2f\n", r.key, r.n, r.n/float64(per))
	}
}

// storingWrites counts the write requests between two snapshots: creates, updates, patches
// and deletes (an update that changes nothing stores nothing but is counted all the same), but
// not reviews (access, rules and token reviews are POSTs that
// store nothing) and not leases (the API server renews its own identity's lease; the bench's
// manager runs without leader election).
func storingWrites(before, after map[string]float64) int {
	n := 0.0
	for k, v := range after {
		f := strings.Fields(k) // verb resource code
		if len(f) != 3 || !slices.Contains([]string{"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"}, f[0]) {
			continue
		}
		res, _, _ := strings.Cut(f[1], "/")
		if strings.HasSuffix(res, "reviews") || res == "leases" {
			continue
		}
		n += v - before[k]
	}
	return int(n)
}
