/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package telemetryctl

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"time"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/collectorconfig"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
)

// LastAppliedAnnotation is kubectl's copy of the last applied object: on a Secret it holds the
// Secret's data, so a bundle drops it from every object.
const LastAppliedAnnotation = "kubectl.kubernetes.io/last-applied-configuration"

// maxLogBytes bounds each log a bundle holds.
const maxLogBytes = 4 << 20

type bundleOptions struct {
	*Options
	out              string
	managerNamespace string
	logLines         int64
}

func newBundleCommand(o *Options) *cobra.Command {
	bo := &bundleOptions{Options: o}
	cmd := &cobra.Command{
		Use:   "bundle NAME",
		Short: "Write a support bundle for a policy (no Secret data, no event contents)",
		Long: `bundle writes a gzipped tar for support: the policy, its owned objects, its collector's
Deployment, ReplicaSets and pods, the Events about them, the status view, the collector's
logs (current and previous container) and the manager's logs. Secrets are read as metadata
only, so no Secret data is ever fetched; the last-applied-configuration annotation (which
holds a Secret's data) and managedFields are dropped from every object. The collector and
the manager never log event contents; the collector's configuration holds file paths, not
credentials. What could not be read is listed in errors.txt inside the bundle.`,
		Example:           "  kubectl telemetry bundle -n acme acme -f acme-bundle.tar.gz",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completePolicyNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return bo.run(cmd.Context(), args[0])
		},
	}
	cmd.Flags().StringVarP(&bo.out, "file", "f", "", "Write the bundle here (default: telemetry-bundle-NAMESPACE-NAME-TIME.tar.gz; - for standard output).")
	cmd.Flags().StringVar(&bo.managerNamespace, "manager-namespace", DefaultManagerNamespace, "Namespace of the manager, whose logs the bundle includes.")
	cmd.Flags().Int64Var(&bo.logLines, "log-lines", 2000, "How many of the newest lines of each log to include.")
	return cmd
}

// bundleWriter collects the files of a bundle.
type bundleWriter struct {
	files  map[string][]byte
	errors []string
}

func (b *bundleWriter) add(name string, data []byte) { b.files[name] = data }

func (b *bundleWriter) fail(format string, args ...any) {
	b.errors = append(b.errors, fmt.Sprintf(format, args...))
}

func (b *bundleWriter) addObject(name string, obj client.Object) {
	scrubObject(obj)
	b.addYAML(name, obj)
}

// addYAML adds v as YAML, its strings cleaned (a YAML encoder refuses some control characters,
// and one hostile string must not cost the rest of the file).
func (b *bundleWriter) addYAML(name string, v any) {
	clean, err := sanitized(v)
	if err == nil {
		var data []byte
		if data, err = yaml.Marshal(clean); err == nil {
			b.add(name, data)
			return
		}
	}
	b.fail("%s: %v", name, err)
}

// redacted stands in for a value a bundle does not carry.
const redacted = "REDACTED"

// scrubObject drops what a bundle must not carry and what only makes it longer: managedFields,
// kubectl's last-applied copy (on a Secret it holds the data), literal environment values of
// pods and pod templates (a DSN or token set inline), and anything but the known progress fields
// in the collector's state (written by the collector, which is not trusted).
func scrubObject(obj client.Object) {
	obj.SetManagedFields(nil)
	if a := obj.GetAnnotations(); a != nil {
		delete(a, LastAppliedAnnotation)
		obj.SetAnnotations(a)
	}
	switch o := obj.(type) {
	case *corev1.Pod:
		redactEnv(&o.Spec)
	case *appsv1.ReplicaSet:
		redactEnv(&o.Spec.Template.Spec)
	case *appsv1.Deployment:
		redactEnv(&o.Spec.Template.Spec)
	case *corev1.ConfigMap:
		if raw, ok := o.Data[resources.StateKey]; ok {
			var pr collectorconfig.Progress
			state := redacted + ": not the collector's progress format"
			if json.Unmarshal([]byte(raw), &pr) == nil {
				b, _ := json.Marshal(pr)
				state = string(b)
			}
			o.Data = map[string]string{resources.StateKey: state}
			o.BinaryData = nil
		}
	}
}

func redactEnv(spec *corev1.PodSpec) {
	for _, list := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for i := range list {
			for j := range list[i].Env {
				if list[i].Env[j].Value != "" {
					list[i].Env[j].Value = redacted
				}
			}
		}
	}
	for i := range spec.EphemeralContainers {
		for j := range spec.EphemeralContainers[i].Env {
			if spec.EphemeralContainers[i].Env[j].Value != "" {
				spec.EphemeralContainers[i].Env[j].Value = redacted
			}
		}
	}
}

func (bo *bundleOptions) run(ctx context.Context, name string) error {
	p, err := bo.getPolicy(ctx, name)
	if err != nil {
		return err
	}
	b, err := gatherBundle(ctx, bo.Options, p, bo.managerNamespace, bo.logLines)
	if err != nil {
		return err
	}
	target := bo.out
	if target == "" {
		target = fmt.Sprintf("telemetry-bundle-%s-%s-%s.tar.gz", p.Namespace, p.Name, bo.Now().UTC().Format("20060102T150405Z"))
	}
	data, err := b.archive(bo.Now())
	if err != nil {
		return err
	}
	if target == "-" {
		if f, ok := bo.rawOut.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				return errors.New("not writing a gzipped archive to a terminal: redirect standard output or use -f FILE")
			}
		}
		_, err = bo.rawOut.Write(data)
		return err
	}
	// A bundle is for support, not for everyone on the machine: created 0600, and an existing
	// file of that name is replaced rather than rewritten with its old mode.
	_ = os.Remove(target)
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fprintf(bo.Streams.ErrOut, "wrote %s (%d files, %d bytes; %d items could not be read, see errors.txt)\n", target, len(b.files), len(data), len(b.errors))
	return nil
}

// gatherBundle gathers a policy's support bundle.
func gatherBundle(ctx context.Context, o *Options, p *v1.TelemetryPolicy, managerNamespace string, logLines int64) (*bundleWriter, error) {
	c, err := o.Client()
	if err != nil {
		return nil, err
	}
	b := &bundleWriter{files: map[string][]byte{}}
	ns := p.Namespace
	b.addObject("policy.yaml", p.DeepCopy())

	d, err := Describe(ctx, c, p, o.Now(), 200)
	if err != nil {
		b.fail("status: %v", err)
	} else {
		var buf bytes.Buffer
		printDetail(safeWriter{&buf}, d, o.Now())
		b.add("status.txt", buf.Bytes())
	}

	n := resources.NamesFor(p.Name)
	get := func(file, name string, obj client.Object) {
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, obj); err != nil {
			if !apierrors.IsNotFound(err) {
				b.fail("%s %s: %v", file, name, err)
			}
			return
		}
		b.addObject(file, obj)
	}
	get("objects/configmap-"+n.Config+".yaml", n.Config, &corev1.ConfigMap{})
	get("objects/configmap-"+n.State+".yaml", n.State, &corev1.ConfigMap{})
	// Secrets as metadata only: their data is never fetched.
	get("objects/secret-"+n.Credentials+".yaml", n.Credentials, secretMeta())
	get("objects/secret-"+n.PseudonymKey+".yaml", n.PseudonymKey, secretMeta())
	get("objects/serviceaccount-"+n.ServiceAccount+".yaml", n.ServiceAccount, &corev1.ServiceAccount{})
	get("objects/role-"+n.Role+".yaml", n.Role, &rbacv1.Role{})
	get("objects/rolebinding-"+n.RoleBinding+".yaml", n.RoleBinding, &rbacv1.RoleBinding{})
	get("objects/deployment-"+n.Deployment+".yaml", n.Deployment, &appsv1.Deployment{})

	work, err := findCollector(ctx, c, p)
	if err != nil {
		b.fail("collector workload: %v", err)
		work = &collectorWorkload{}
	}
	for i := range work.ReplicaSets {
		b.addObject("objects/replicaset-"+work.ReplicaSets[i].Name+".yaml", &work.ReplicaSets[i])
	}
	for i := range work.Pods {
		pod := &work.Pods[i]
		(&logSource{o: o, lines: logLines}).add(ctx, b, pod, "collector")
		b.addObject("objects/pod-"+pod.Name+".yaml", pod)
	}
	if work.Foreign > 0 {
		b.fail("%d pod(s) carry the collector's labels but are not its Deployment's; not included", work.Foreign)
	}

	events := &corev1.EventList{}
	if err := c.List(ctx, events, client.InNamespace(ns)); err != nil {
		b.fail("events: %v", err)
	} else {
		names := map[string]bool{"TelemetryPolicy/" + p.Name: true, "ConfigMap/" + n.Config: true, "ConfigMap/" + n.State: true,
			"Secret/" + n.Credentials: true, "Secret/" + n.PseudonymKey: true, "ServiceAccount/" + n.ServiceAccount: true,
			"Role/" + n.Role: true, "RoleBinding/" + n.RoleBinding: true, "Deployment/" + n.Deployment: true}
		for _, rs := range work.ReplicaSets {
			names["ReplicaSet/"+rs.Name] = true
		}
		for _, pod := range work.Pods {
			names["Pod/"+pod.Name] = true
		}
		var kept []corev1.Event
		for _, e := range events.Items {
			if names[e.InvolvedObject.Kind+"/"+e.InvolvedObject.Name] {
				e.ManagedFields = nil
				kept = append(kept, e)
			}
		}
		sort.SliceStable(kept, func(i, j int) bool { return eventTime(&kept[i]).Before(eventTime(&kept[j])) })
		b.addYAML("events.yaml", map[string]any{"items": kept})
	}

	mpods := &corev1.PodList{}
	if err := c.List(ctx, mpods, client.InNamespace(managerNamespace), client.MatchingLabels{"app.kubernetes.io/name": "telemetry-operator"}); err != nil {
		b.fail("manager pods in %s: %v", managerNamespace, err)
	} else if len(mpods.Items) == 0 {
		b.fail("manager pods in %s: none (a manager run outside the cluster logs elsewhere)", managerNamespace)
	}
	for i := range mpods.Items {
		pod := &mpods.Items[i]
		b.addObject("manager/pod-"+pod.Name+".yaml", pod)
		(&logSource{o: o, lines: logLines}).add(ctx, b, pod, "manager")
	}
	return b, nil
}

// logSource reads container logs, current and previous.
type logSource struct {
	o     *Options
	lines int64
}

func (l *logSource) add(ctx context.Context, b *bundleWriter, pod *corev1.Pod, dir string) {
	cs, err := l.o.Clientset()
	if err != nil {
		b.fail("logs: %v", err)
		return
	}
	for _, ctr := range pod.Spec.Containers {
		for _, previous := range []bool{false, true} {
			name := fmt.Sprintf("%s/logs/%s-%s.log", dir, pod.Name, ctr.Name)
			if previous {
				if !restarted(pod, ctr.Name) {
					continue
				}
				name = fmt.Sprintf("%s/logs/%s-%s.previous.log", dir, pod.Name, ctr.Name)
			}
			limit := int64(maxLogBytes)
			rc, err := cs.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{
				Container: ctr.Name, Previous: previous, TailLines: &l.lines, LimitBytes: &limit, Timestamps: true,
			}).Stream(ctx)
			if err != nil {
				b.fail("%s: %v", name, err)
				continue
			}
			data, err := io.ReadAll(io.LimitReader(rc, maxLogBytes))
			_ = rc.Close()
			if err != nil {
				b.fail("%s: %v", name, err)
			}
			b.add(name, data)
		}
	}
}

func restarted(pod *corev1.Pod, container string) bool {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name == container && cs.RestartCount > 0 {
			return true
		}
	}
	return false
}

// archive returns the bundle as a gzipped tar, files in name order.
func (b *bundleWriter) archive(now time.Time) ([]byte, error) {
	if len(b.errors) > 0 {
		var buf bytes.Buffer
		for _, e := range b.errors {
			buf.WriteString(e + "\n")
		}
		b.add("errors.txt", buf.Bytes())
	}
	names := make([]string, 0, len(b.files))
	for name := range b.files {
		names = append(names, name)
	}
	sort.Strings(names)
	var out bytes.Buffer
	gz := gzip.NewWriter(&out)
	tw := tar.NewWriter(gz)
	for _, name := range names {
		data := b.files[name]
		if err := tw.WriteHeader(&tar.Header{Name: path.Join("bundle", name), Mode: 0o600, Size: int64(len(data)), ModTime: now, Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
