/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package telemetryctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/collectorconfig"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
)

// Node is one object of a policy's tree: the policy, what it owns, the collector pods.
type Node struct {
	Kind     string `json:"kind"`
	Name     string `json:"name"`
	Present  bool   `json:"present"`
	State    string `json:"state"`
	Problem  string `json:"problem,omitempty"`
	Children []Node `json:"children,omitempty"`
}

// EventLine is one Event about the policy or an object of its tree.
type EventLine struct {
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Reason  string    `json:"reason"`
	Object  string    `json:"object"`
	Message string    `json:"message"`
	Count   int32     `json:"count,omitempty"`
}

// Detail is the single-policy view of `status NAME`.
type Detail struct {
	Summary    Summary            `json:"summary"`
	Conditions []metav1.Condition `json:"conditions"`
	Tree       Node               `json:"tree"`
	Events     []EventLine        `json:"events"`
}

func (so *statusOptions) runOne(ctx context.Context, name string) error {
	p, err := so.getPolicy(ctx, name)
	if err != nil {
		return err
	}
	c, err := so.Client()
	if err != nil {
		return err
	}
	d, err := Describe(ctx, c, p, so.Now(), so.events)
	if err != nil {
		return err
	}
	switch {
	case so.output == "json" || so.output == "yaml":
		if so.problems {
			return encode(so.Streams.Out, so.output, map[string]any{"items": []Summary{d.Summary}})
		}
		return encode(so.Streams.Out, so.output, d)
	case so.problems && len(d.Summary.Problems) == 0:
		fprintf(so.Streams.Out, "No problems: %s/%s is Ready and exporting.\n", p.Namespace, p.Name)
	case so.problems:
		so.printProblems(so.Streams.Out, []Summary{d.Summary})
	default:
		printDetail(so.Streams.Out, d, so.Now())
	}
	return nil
}

// Describe reads the policy's owned objects, collector pods and recent Events. Secrets are read
// as metadata only: their data never reaches the plugin.
func Describe(ctx context.Context, c client.Client, p *v1.TelemetryPolicy, now time.Time, maxEvents int) (*Detail, error) {
	d := &Detail{Summary: Summarize(p), Conditions: p.Status.Conditions}
	d.Summary.Problems = ProblemsOf(p)
	n := resources.NamesFor(p.Name)
	off := p.Spec.Consent.Tier == v1.TierOff && (p.Status.EffectiveTier == v1.TierOff || p.Status.EffectiveTier == "")
	key := func(name string) client.ObjectKey { return client.ObjectKey{Namespace: p.Namespace, Name: name} }
	names := map[string]bool{"TelemetryPolicy/" + p.Name: true}
	root := Node{Kind: "TelemetryPolicy", Name: p.Name, Present: true,
		State: fmt.Sprintf("Ready=%s %s, declared %s, enforced %s (%s)", d.Summary.Ready, d.Summary.Reason,
			d.Summary.DeclaredTier, orDash(string(d.Summary.EffectiveTier)), d.Summary.Why)}

	// get reads one object; a missing one is a node that says so.
	get := func(kind, name string, obj client.Object, describe func() string) (Node, error) {
		names[kind+"/"+name] = true
		node := Node{Kind: kind, Name: name}
		err := c.Get(ctx, key(name), obj)
		switch {
		case apierrors.IsNotFound(err):
			node.State = "absent"
			if !off {
				node.Problem = "missing: the operator creates it; see the Synced condition and the manager's logs"
			}
			return node, nil
		case err != nil:
			return node, fmt.Errorf("reading %s %s/%s: %w", kind, p.Namespace, name, err)
		}
		node.Present, node.State = true, describe()
		return node, nil
	}

	var configHash string
	cfg := &corev1.ConfigMap{}
	node, err := get("ConfigMap", n.Config, cfg, func() string {
		configHash = resources.ConfigHash([]byte(cfg.Data[resources.ConfigKey]))
		return "collector configuration " + short(configHash)
	})
	if err != nil {
		return nil, err
	}
	root.Children = append(root.Children, node)

	state := &corev1.ConfigMap{}
	node, err = get("ConfigMap", n.State, state, func() string { return describeProgress(state.Data[resources.StateKey], now) })
	if err != nil {
		return nil, err
	}
	root.Children = append(root.Children, node)

	tls := secretMeta()
	node, err = get("Secret", n.Credentials, tls, func() string {
		s := fmt.Sprintf("client certificate revision %s (%s)", orDash(tls.Annotations[resources.AnnotationRevision]), orDash(tls.Annotations[resources.AnnotationIssueReason]))
		if cr := p.Status.Credentials; cr != nil {
			s += ", " + expiry(now, cr.NotAfter)
			if cr.RenewalTime != nil {
				s += ", rotates " + until(now, cr.RenewalTime.Time)
			}
		}
		return s
	})
	if err != nil {
		return nil, err
	}
	if p.Status.Credentials != nil && p.Status.Credentials.NotAfter != nil && !p.Status.Credentials.NotAfter.After(now) {
		node.Problem = "the client certificate has expired: see CredentialsReady and the fleet issuer (kubectl telemetry check)"
	}
	root.Children = append(root.Children, node)

	key2 := secretMeta()
	node, err = get("Secret", n.PseudonymKey, key2, func() string { return "pseudonym key" })
	if err != nil {
		return nil, err
	}
	root.Children = append(root.Children, node)

	for _, o := range []struct {
		kind string
		name string
		obj  client.Object
	}{{"ServiceAccount", n.ServiceAccount, &corev1.ServiceAccount{}}, {"Role", n.Role, &rbacv1.Role{}}, {"RoleBinding", n.RoleBinding, &rbacv1.RoleBinding{}}} {
		node, err = get(o.kind, o.name, o.obj, func() string { return "present" })
		if err != nil {
			return nil, err
		}
		root.Children = append(root.Children, node)
	}

	work, err := findCollector(ctx, c, p)
	if err != nil {
		return nil, err
	}
	node = Node{Kind: "Deployment", Name: n.Deployment}
	names["Deployment/"+n.Deployment] = true
	switch dep := work.Deployment; {
	case dep == nil && off:
		node.State = "absent (consent Off: no collector runs)"
	case dep == nil:
		node.State = "absent"
		node.Problem = "missing: the operator creates it; see the Synced condition and the manager's logs"
	default:
		node.Present, node.State = true, describeDeployment(dep, configHash)
		for _, rs := range work.ReplicaSets {
			names["ReplicaSet/"+rs.Name] = true
		}
		for i := range work.Pods {
			names["Pod/"+work.Pods[i].Name] = true
			node.Children = append(node.Children, describePod(&work.Pods[i], configHash, now))
		}
		switch {
		case off:
			node.Problem = "consent is Off but the collector Deployment still exists: see Synced"
		case len(work.Pods) == 0 && dep.Status.ReadyReplicas < 1:
			node.Problem = "no collector pod: see the Deployment's and its ReplicaSet's Events"
		}
	}
	if work.Foreign > 0 {
		node.Problem = strings.TrimPrefix(node.Problem+fmt.Sprintf("; %d pod(s) carry the collector's labels but are not its Deployment's: someone made them by hand", work.Foreign), "; ")
	}
	root.Children = append(root.Children, node)
	d.Tree = root

	events, err := recentEvents(ctx, c, p.Namespace, names, maxEvents)
	if err != nil {
		return nil, err
	}
	d.Events = events
	return d, nil
}

// secretMeta is a Secret read as metadata only.
func secretMeta() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	return m
}

func describeProgress(raw string, now time.Time) string {
	var pr collectorconfig.Progress
	if raw == "" || json.Unmarshal([]byte(raw), &pr) != nil {
		return "no progress saved"
	}
	if pr.Tier == "" && pr.Cursor == 0 && pr.LastSuccessTime == nil {
		return "no progress saved yet"
	}
	s := fmt.Sprintf("collector progress: tier %s, cursor %d, %d exported, %d dropped", orDash(string(pr.Tier)), pr.Cursor, pr.EventsExported, pr.EventsDropped)
	if pr.LastSuccessTime != nil {
		s += ", last success " + ago(now, &metav1.Time{Time: *pr.LastSuccessTime})
	}
	return s
}

func describeDeployment(dep *appsv1.Deployment, configHash string) string {
	want := int32(1)
	if dep.Spec.Replicas != nil {
		want = *dep.Spec.Replicas
	}
	s := fmt.Sprintf("%d/%d ready, tier %s, configuration %s", dep.Status.ReadyReplicas, want,
		orDash(dep.Spec.Template.Annotations[resources.AnnotationTier]), configState(dep.Spec.Template.Annotations[resources.AnnotationConfigHash], configHash))
	for _, c := range dep.Status.Conditions {
		if c.Type == appsv1.DeploymentProgressing && c.Reason == "ProgressDeadlineExceeded" {
			s += ", rollout stuck (ProgressDeadlineExceeded)"
		}
	}
	return s
}

func describePod(pod *corev1.Pod, configHash string, now time.Time) Node {
	node := Node{Kind: "Pod", Name: pod.Name, Present: true}
	ready := false
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			ready = true
		}
	}
	var restarts int32
	var last string
	for _, cs := range pod.Status.ContainerStatuses {
		restarts += cs.RestartCount
		if t := cs.LastTerminationState.Terminated; t != nil {
			last = fmt.Sprintf(", last exit %d (%s) %s", t.ExitCode, t.Reason, ago(now, &t.FinishedAt))
		}
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			node.Problem = "waiting: " + w.Reason + " " + oneLine(w.Message, 200)
		}
	}
	readiness := "not ready"
	if ready {
		readiness = "ready"
	}
	node.State = fmt.Sprintf("%s, %s, %d restarts%s, tier %s, configuration %s", orDash(string(pod.Status.Phase)), readiness, restarts, last,
		orDash(pod.Annotations[resources.AnnotationTier]), configState(pod.Annotations[resources.AnnotationConfigHash], configHash))
	if pod.DeletionTimestamp != nil {
		node.State += ", terminating"
	}
	return node
}

func configState(running, current string) string {
	switch {
	case running == "":
		return "unknown"
	case current == "":
		return short(running)
	case running == current:
		return short(running) + " (current)"
	default:
		return short(running) + " (STALE: current is " + short(current) + ")"
	}
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

func until(now, t time.Time) string {
	if d := t.Sub(now); d > 0 {
		return "in " + humanDuration(d)
	}
	return "now (due " + humanDuration(now.Sub(t)) + " ago)"
}

// recentEvents returns the newest Events about the objects named by kind/name, oldest first.
func recentEvents(ctx context.Context, c client.Client, namespace string, names map[string]bool, limit int) ([]EventLine, error) {
	list := &corev1.EventList{}
	if err := c.List(ctx, list, client.InNamespace(namespace)); err != nil {
		return nil, fmt.Errorf("listing Events in %s: %w", namespace, err)
	}
	var out []EventLine
	for _, e := range list.Items {
		if !names[e.InvolvedObject.Kind+"/"+e.InvolvedObject.Name] {
			continue
		}
		out = append(out, EventLine{Time: eventTime(&e), Type: e.Type, Reason: e.Reason,
			Object: e.InvolvedObject.Kind + "/" + e.InvolvedObject.Name, Message: e.Message, Count: e.Count})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	if limit >= 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, nil
}

func eventTime(e *corev1.Event) time.Time {
	switch {
	case e.Series != nil && !e.Series.LastObservedTime.IsZero():
		return e.Series.LastObservedTime.Time
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	default:
		return e.CreationTimestamp.Time
	}
}

func printDetail(out io.Writer, d *Detail, now time.Time) {
	s := d.Summary
	fprintf(out, "%s %s/%s (instance %s)\n", d.Tree.Kind, s.Namespace, s.Name, s.Instance)
	fprintf(out, "  %s\n", d.Tree.State)
	printChildren(out, d.Tree.Children, "")

	fprintf(out, "\nConditions:\n")
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fprintf(w, "  TYPE\tSTATUS\tREASON\tSINCE\tMESSAGE\n")
	for _, c := range d.Conditions {
		fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", c.Type, c.Status, c.Reason, ago(now, &c.LastTransitionTime), oneLine(c.Message, 120))
	}
	_ = w.Flush()

	fprintf(out, "\nExport: last success %s, lag %s, %d exported, %d dropped", ago(now, s.LastExport), lag(s.LagSeconds), s.EventsExported, s.EventsDropped)
	if s.LastError != "" {
		fprintf(out, ", last error: %s", oneLine(s.LastError, 200))
	}
	fprintf(out, "\nCredentials: %s\n", expiry(now, s.CredentialsNotAfter))
	if s.Erasure != "" {
		fprintf(out, "Erasure: %s\n", s.Erasure)
	}

	fprintf(out, "\nProblems:\n")
	if len(s.Problems) == 0 {
		fprintf(out, "  none\n")
	}
	for _, p := range s.Problems {
		fprintf(out, "  %s=%s %s: %s\n", p.Condition, p.Status, p.Reason, oneLine(p.Message, 300))
		if p.Advice != nil {
			fprintf(out, "    means: %s\n    do:    %s\n", p.Advice.Means, p.Advice.Do)
		}
	}

	fprintf(out, "\nEvents (newest last):\n")
	if len(d.Events) == 0 {
		fprintf(out, "  none\n")
		return
	}
	w = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fprintf(w, "  AGE\tTYPE\tREASON\tOBJECT\tMESSAGE\n")
	for _, e := range d.Events {
		fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", humanDuration(now.Sub(e.Time)), e.Type, e.Reason, e.Object, oneLine(e.Message, 160))
	}
	_ = w.Flush()
}

func printChildren(out io.Writer, nodes []Node, indent string) {
	for i, n := range nodes {
		branch, next := "├── ", "│   "
		if i == len(nodes)-1 {
			branch, next = "└── ", "    "
		}
		line := fmt.Sprintf("%s%s%s %s: %s", indent, branch, n.Kind, n.Name, n.State)
		if n.Problem != "" {
			line += "  ⚠ " + n.Problem
		}
		fprintf(out, "%s\n", strings.TrimRight(line, " "))
		printChildren(out, n.Children, indent+next)
	}
}
