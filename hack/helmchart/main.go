/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Command helmchart writes the Helm chart charts/telemetry-operator from what kustomize renders,
// so the two install paths cannot drift: the operator's objects come from config/default and the
// optional monitoring objects from config/monitoring, verbatim but for the values a chart user
// sets (the manager's image, arguments, resources and replicas; the namespace; whether to install
// the CRD, the RBAC and the monitoring objects). The CRD is under templates/crd, so helm upgrade
// applies it. Its test (chart_test.go) renders the chart with helm and compares it with kustomize.
//
//	helmchart --operator OPERATOR.yaml --monitoring MONITORING.yaml --out DIR [--version V]
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

// Namespace is the namespace kustomize renders into; the chart installs into the release's.
const Namespace = "telemetry-system"

func main() {
	operator := flag.String("operator", "", "kustomize build config/default")
	monitoring := flag.String("monitoring", "", "kustomize build config/monitoring")
	out := flag.String("out", "charts/telemetry-operator", "chart directory to write (replaced)")
	version := flag.String("version", "0.1.0", "chart version")
	flag.Parse()
	if err := run(*operator, *monitoring, *out, *version); err != nil {
		fmt.Fprintln(os.Stderr, "helmchart:", err)
		os.Exit(1)
	}
}

func run(operatorPath, monitoringPath, out, version string) error {
	if operatorPath == "" || monitoringPath == "" {
		return errors.New("--operator and --monitoring are required")
	}
	op, err := readDocs(operatorPath)
	if err != nil {
		return err
	}
	mon, err := readDocs(monitoringPath)
	if err != nil {
		return err
	}
	files, err := Generate(op, mon, version)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	for name, data := range files {
		path := filepath.Join(out, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil { //nolint:gosec // a chart is public
			return err
		}
		if err := os.WriteFile(path, data, 0o644); err != nil { //nolint:gosec // a chart is public
			return err
		}
	}
	return nil
}

// Object is one rendered Kubernetes object.
type Object map[string]any

func (o Object) kind() string { s, _ := o["kind"].(string); return s }

func (o Object) meta() map[string]any {
	m, _ := o["metadata"].(map[string]any)
	return m
}

func (o Object) name() string { s, _ := o.meta()["name"].(string); return s }

// Key names an object across both renderings.
func (o Object) Key() string {
	ns, _ := o.meta()["namespace"].(string)
	return o.kind() + "/" + ns + "/" + o.name()
}

func readDocs(path string) ([]Object, error) {
	var raw []byte
	var err error
	if path == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	return ParseDocs(raw)
}

// ParseDocs splits a multi-document YAML stream into objects.
func ParseDocs(raw []byte) ([]Object, error) {
	var out []Object
	for _, doc := range bytes.Split(raw, []byte("\n---")) {
		doc = bytes.TrimPrefix(bytes.TrimSpace(doc), []byte("---"))
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var o Object
		if err := yaml.Unmarshal(doc, &o); err != nil {
			return nil, err
		}
		if o == nil {
			continue
		}
		out = append(out, o)
	}
	return out, nil
}

// Placeholders stand for template code while an object is marshalled as YAML.
const (
	phNamespace = "__CHART_NAMESPACE__"
	phManagedBy = "__CHART_MANAGED_BY__"
	phChart     = "__CHART_LABEL__"
	phImage     = "__CHART_IMAGE__"
	phArgs      = "__CHART_ARGS__"
	phResources = "__CHART_RESOURCES__"
	phReplicas  = "__CHART_REPLICAS__"
	phKeep      = "__CHART_KEEP__"
	phMonLabels = "__CHART_MONITORING_LABELS__"
)

// Generate returns the chart's files by name.
func Generate(operator, monitoring []Object, version string) (map[string][]byte, error) {
	files := map[string][]byte{}
	inOperator := map[string]bool{}
	var manager Object
	for _, o := range operator {
		inOperator[o.Key()] = true
		switch {
		case o.kind() == "Namespace":
			// helm install --namespace NS --create-namespace; the README says how to label it.
			continue
		case o.kind() == "Deployment":
			manager = o
		}
		name, data, err := template(o, "")
		if err != nil {
			return nil, err
		}
		files[name] = data
	}
	if manager == nil {
		return nil, errors.New("the operator rendering has no Deployment")
	}
	added := 0
	for _, o := range monitoring {
		if inOperator[o.Key()] || o.kind() == "Namespace" {
			continue
		}
		name, data, err := template(o, "monitoring")
		if err != nil {
			return nil, err
		}
		files[name] = data
		added++
	}
	if added == 0 {
		return nil, errors.New("the monitoring rendering adds nothing to the operator's")
	}
	values, err := valuesFor(manager)
	if err != nil {
		return nil, err
	}
	files["values.yaml"] = values
	files["Chart.yaml"] = []byte(fmt.Sprintf(`apiVersion: v2
name: telemetry-operator
description: Manages usage-telemetry collection for a fleet of managed instances (generated from config/default by hack/helmchart; do not edit).
type: application
version: %s
appVersion: %q
`, version, imageTag(manager)))
	files[".helmignore"] = []byte("*.go\n.git/\n")
	files["templates/_helpers.tpl"] = []byte(`{{/* The chart label every object carries. */}}
{{- define "telemetry-operator.chart" -}}
{{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end }}
`)
	files["templates/NOTES.txt"] = []byte(`The telemetry operator is installed in namespace {{ .Release.Namespace }}.

1. Label the namespace for Pod Security "restricted" if you created it with --create-namespace:
     kubectl label namespace {{ .Release.Namespace }} pod-security.kubernetes.io/enforce=restricted
2. Create the fleet issuer Secret the manager waits for (--issuer-secret):
     kubectl -n {{ .Release.Namespace }} create secret tls telemetry-fleet-issuer --cert=ca.crt --key=ca.key
3. Onboard each instance namespace (README: The operator) and apply its TelemetryPolicy.
4. Check the install:
     kubectl telemetry check --manager-namespace {{ .Release.Namespace }}
`)
	return files, nil
}

// template turns one object into a chart template file.
func template(o Object, group string) (string, []byte, error) {
	o = deepCopy(o)
	kind := o.kind()
	meta := o.meta()
	if meta == nil {
		return "", nil, fmt.Errorf("%s without metadata", kind)
	}
	if ns, _ := meta["namespace"].(string); ns == Namespace {
		meta["namespace"] = phNamespace
	}
	labels, _ := meta["labels"].(map[string]any)
	if labels == nil {
		labels = map[string]any{}
	}
	labels["app.kubernetes.io/managed-by"] = phManagedBy
	labels["helm.sh/chart"] = phChart
	meta["labels"] = labels
	if subjects, ok := o["subjects"].([]any); ok {
		for _, s := range subjects {
			if sm, ok := s.(map[string]any); ok && sm["namespace"] == Namespace {
				sm["namespace"] = phNamespace
			}
		}
	}
	dir, cond := "", ""
	switch {
	case group == "monitoring":
		dir, cond = "monitoring", ".Values.monitoring.enable"
		if strings.HasPrefix(apiVersion(o), "monitoring.coreos.com/") {
			// A Prometheus selects its monitors and rules by label (kube-prometheus-stack: release).
			labels[phMonLabels] = "x"
		}
	case kind == "CustomResourceDefinition":
		dir, cond = "crd", ".Values.crd.enable"
		ann, _ := meta["annotations"].(map[string]any)
		if ann == nil {
			ann = map[string]any{}
		}
		ann[phKeep] = "x"
		meta["annotations"] = ann
	case kind == "Deployment":
		dir = "manager"
		if err := templateManager(o); err != nil {
			return "", nil, err
		}
	case strings.HasPrefix(apiVersion(o), "rbac.authorization.k8s.io/") || kind == "ServiceAccount":
		dir, cond = "rbac", ".Values.rbac.enable"
	default:
		dir = "manager"
	}
	body, err := yaml.Marshal(map[string]any(o))
	if err != nil {
		return "", nil, err
	}
	text := escapeBraces(string(body))
	text = substitute(text)
	if cond != "" {
		text = "{{- if " + cond + " }}\n" + text + "{{- end }}\n"
	}
	name := fmt.Sprintf("templates/%s/%s-%s.yaml", dir, strings.ToLower(kind), o.name())
	return name, []byte(text), nil
}

func apiVersion(o Object) string { s, _ := o["apiVersion"].(string); return s }

// templateManager puts the values a chart user sets into the manager's Deployment.
func templateManager(o Object) error {
	spec, _ := o["spec"].(map[string]any)
	spec["replicas"] = phReplicas
	pod, _ := spec["template"].(map[string]any)
	podSpec, _ := pod["spec"].(map[string]any)
	containers, _ := podSpec["containers"].([]any)
	for _, c := range containers {
		cm, _ := c.(map[string]any)
		if cm["name"] != "manager" {
			continue
		}
		cm["image"] = phImage
		cm["args"] = phArgs
		cm["resources"] = phResources
		return nil
	}
	return errors.New("the Deployment has no container named manager")
}

// escapeBraces keeps template delimiters in the rendered objects (alert annotations, dashboard
// legends) literal.
func escapeBraces(s string) string {
	s = strings.ReplaceAll(s, "{{", "\x00L")
	s = strings.ReplaceAll(s, "}}", "\x00R")
	s = strings.ReplaceAll(s, "\x00L", `{{ "{{" }}`)
	return strings.ReplaceAll(s, "\x00R", `{{ "}}" }}`)
}

// substitute replaces each placeholder line with its template code, at the line's indentation.
func substitute(text string) string {
	lines := strings.Split(text, "\n")
	for i, line := range lines {
		indent := len(line) - len(strings.TrimLeft(line, " "))
		pad := strings.Repeat(" ", indent)
		item := strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(item, "- "); ok {
			// The first key of a list item: its siblings are two columns in.
			item, indent = rest, indent+2
		}
		switch item {
		case "args: " + phArgs:
			lines[i] = fmt.Sprintf("%s{{- toYaml .Values.manager.args | nindent %d }}", strings.TrimSuffix(line, " "+phArgs)+"\n"+pad, indent)
		case "resources: " + phResources:
			lines[i] = fmt.Sprintf("%sresources:\n%s{{- toYaml .Values.manager.resources | nindent %d }}", pad, pad, indent+2)
		case phMonLabels + ": x":
			lines[i] = fmt.Sprintf("%s{{- with .Values.monitoring.labels }}\n%s{{- toYaml . | nindent %d }}\n%s{{- end }}", pad, pad, indent, pad)
		case phKeep + ": x":
			lines[i] = fmt.Sprintf("%s{{- if .Values.crd.keep }}\n%shelm.sh/resource-policy: keep\n%s{{- end }}", pad, pad, pad)
		}
	}
	text = strings.Join(lines, "\n")
	return strings.NewReplacer(
		phNamespace, "{{ .Release.Namespace }}",
		phManagedBy, "{{ .Release.Service }}",
		phChart, `{{ include "telemetry-operator.chart" . }}`,
		phImage, `"{{ .Values.manager.image.repository }}:{{ .Values.manager.image.tag }}"`,
		phReplicas, "{{ .Values.manager.replicas }}",
	).Replace(text)
}

// valuesFor writes values.yaml with the rendered manager's settings as defaults.
func valuesFor(manager Object) ([]byte, error) {
	c := managerContainer(manager)
	repo, tag := splitImage(fmt.Sprint(c["image"]))
	replicas := any(1)
	if spec, ok := manager["spec"].(map[string]any); ok && spec["replicas"] != nil {
		replicas = spec["replicas"]
	}
	section := func(comment string, v any) (string, error) {
		b, err := yaml.Marshal(v)
		if err != nil {
			return "", err
		}
		return comment + string(b), nil
	}
	var b strings.Builder
	b.WriteString("# Values of the telemetry-operator chart, generated from config/default by hack/helmchart.\n")
	b.WriteString("# The defaults render exactly what `kustomize build config/default` does (without the Namespace).\n\n")
	parts := []struct {
		comment string
		v       any
	}{
		{"# The manager: image, replicas (with --leader-elect), arguments (see `manager --help` and the README)\n# and container resources.\n",
			map[string]any{"manager": map[string]any{"image": map[string]any{"repository": repo, "tag": tag}, "replicas": replicas,
				"args": c["args"], "resources": c["resources"]}}},
		{"\n# The TelemetryPolicy CRD, under templates/crd so upgrades apply it; keep: helm uninstall leaves it\n# (and every policy) in place.\n",
			map[string]any{"crd": map[string]any{"enable": true, "keep": true}}},
		{"\n# The manager's ServiceAccount, roles and bindings, and the roles for consent admins, viewers,\n# metrics readers and onboarded namespaces. Disable only where RBAC is managed elsewhere: the\n# Deployment still runs as the ServiceAccount telemetry-operator-controller-manager, create it first.\n",
			map[string]any{"rbac": map[string]any{"enable": true}}},
		{"\n# Prometheus Operator objects (ServiceMonitor, PodMonitors, PrometheusRule with the alerts) and the\n# Grafana dashboard ConfigMap, as config/prometheus; needs the monitoring.coreos.com CRDs. labels are\n# added to the monitors and the rule, for your Prometheus's selectors (kube-prometheus-stack: release).\n",
			map[string]any{"monitoring": map[string]any{"enable": false, "labels": map[string]any{}}}},
	}
	for _, p := range parts {
		s, err := section(p.comment, p.v)
		if err != nil {
			return nil, err
		}
		b.WriteString(s)
	}
	return []byte(b.String()), nil
}

func managerContainer(o Object) map[string]any {
	spec, _ := o["spec"].(map[string]any)
	pod, _ := spec["template"].(map[string]any)
	podSpec, _ := pod["spec"].(map[string]any)
	containers, _ := podSpec["containers"].([]any)
	for _, c := range containers {
		if cm, ok := c.(map[string]any); ok && cm["name"] == "manager" {
			return cm
		}
	}
	return map[string]any{}
}

func imageTag(manager Object) string {
	_, tag := splitImage(fmt.Sprint(managerContainer(manager)["image"]))
	return tag
}

// splitImage splits an image reference into repository and tag (default "latest").
func splitImage(ref string) (string, string) {
	slash := strings.LastIndex(ref, "/")
	if colon := strings.LastIndex(ref, ":"); colon > slash {
		return ref[:colon], ref[colon+1:]
	}
	return ref, "latest"
}

func deepCopy(o Object) Object {
	b, _ := yaml.Marshal(map[string]any(o))
	var out Object
	_ = yaml.Unmarshal(b, &out)
	return out
}
