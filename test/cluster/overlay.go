/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Overlay is what the test cluster changes in the shipped manifests, and nothing else: the
// cluster has no pod network, so the project's pods use the node's (loopback) network, each on
// ports of its own, and reach the API server at its loopback address.
type Overlay struct {
	// APIHost and APIPort are the API server's loopback address.
	APIHost, APIPort string
	// Ports maps a Deployment's name to its named ports' new numbers ("health" → "38081").
	Ports map[string]map[string]string
	// Args maps a Deployment's name to flags to set (an existing --flag=... is replaced).
	Args map[string][]string
	// Replicas maps a Deployment's name to its replica count (host ports allow one per node).
	Replicas map[string]int32
}

// LabelPodSecurityEnforce is the Pod Security admission level label of a namespace.
const LabelPodSecurityEnforce = "pod-security.kubernetes.io/enforce"

// Decode splits a YAML stream into objects.
func Decode(raw []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	var objs []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return objs, nil
		} else if err != nil {
			return nil, err
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}

// Encode joins objects into a YAML stream.
func Encode(objs []*unstructured.Unstructured) ([]byte, error) {
	var b bytes.Buffer
	for _, u := range objs {
		raw, err := yaml.Marshal(u.Object)
		if err != nil {
			return nil, err
		}
		b.WriteString("---\n")
		b.Write(raw)
	}
	return b.Bytes(), nil
}

// Apply returns the manifests with the overlay applied: every Deployment's pods on the host
// network with the API server's loopback address in their environment, its named ports and
// flags moved, its probes sent to 127.0.0.1, and every namespace the manifests create admitting host-network pods (Pod
// Security "privileged": host networking is what the restricted level forbids).
func (o Overlay) Apply(objs []*unstructured.Unstructured) ([]*unstructured.Unstructured, error) {
	out := make([]*unstructured.Unstructured, 0, len(objs))
	for _, u := range objs {
		u = u.DeepCopy()
		switch u.GetKind() {
		case "Namespace":
			labels := u.GetLabels()
			if labels == nil {
				labels = map[string]string{}
			}
			labels[LabelPodSecurityEnforce] = "privileged"
			u.SetLabels(labels)
		case "Deployment":
			dep := &appsv1.Deployment{}
			// Strict: a field the typed object does not know would otherwise vanish here, and the
			// test would apply something other than what ships.
			if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, dep, true); err != nil {
				return nil, fmt.Errorf("deployment %s: %w", u.GetName(), err)
			}
			if err := o.deployment(dep); err != nil {
				return nil, err
			}
			m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(dep)
			if err != nil {
				return nil, err
			}
			// status and creationTimestamp come back from the typed object empty; drop them.
			delete(m, "status")
			if md, ok := m["metadata"].(map[string]any); ok {
				delete(md, "creationTimestamp")
			}
			if t, ok := m["spec"].(map[string]any)["template"].(map[string]any); ok {
				if md, ok := t["metadata"].(map[string]any); ok {
					delete(md, "creationTimestamp")
				}
			}
			u = &unstructured.Unstructured{Object: m}
		}
		out = append(out, u)
	}
	return out, nil
}

func (o Overlay) deployment(dep *appsv1.Deployment) error {
	spec := &dep.Spec.Template.Spec
	spec.HostNetwork = true
	spec.DNSPolicy = corev1.DNSClusterFirstWithHostNet
	if n, ok := o.Replicas[dep.Name]; ok {
		dep.Spec.Replicas = &n
	}
	for i := range spec.Containers {
		c := &spec.Containers[i]
		c.Env = append(c.Env, corev1.EnvVar{Name: "KUBERNETES_SERVICE_HOST", Value: o.APIHost}, corev1.EnvVar{Name: "KUBERNETES_SERVICE_PORT", Value: o.APIPort})
		for j := range c.Ports {
			if p, ok := o.Ports[dep.Name][c.Ports[j].Name]; ok {
				var n int32
				if _, err := fmt.Sscan(p, &n); err != nil {
					return fmt.Errorf("port %s of %s: %w", c.Ports[j].Name, dep.Name, err)
				}
				c.Ports[j].ContainerPort, c.Ports[j].HostPort = n, n
			}
		}
		for _, pr := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
			if pr != nil && pr.HTTPGet != nil {
				pr.HTTPGet.Host = "127.0.0.1"
			}
		}
		for _, flag := range o.Args[dep.Name] {
			name, _, _ := strings.Cut(flag, "=")
			replaced := false
			for k, a := range c.Args {
				if a == name || strings.HasPrefix(a, name+"=") {
					c.Args[k], replaced = flag, true
				}
			}
			if !replaced {
				c.Args = append(c.Args, flag)
			}
		}
	}
	return nil
}

// HostNetworkPolicy is a MutatingAdmissionPolicy that gives collector pods, which the operator
// creates, the same treatment as Overlay gives the shipped Deployments: host network, the
// metrics port (and the probes that use it by name) moved to a port of the namespace's own,
// the probes sent to 127.0.0.1, and the API server's loopback address. It applies in namespaces labelled
// HostNetworkLabel=true, with the port and address from a ConfigMap named HostNetworkParams
// there. The operator's Deployment is left exactly as it made it.
const HostNetworkPolicy = `apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicy
metadata:
  name: test-cluster-host-network
spec:
  paramKind:
    apiVersion: v1
    kind: ConfigMap
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: ["v1"]
      operations: ["CREATE"]
      resources: ["pods"]
  matchConditions:
  - name: collector-pods
    expression: "has(object.metadata.labels) && 'app.kubernetes.io/name' in object.metadata.labels && object.metadata.labels['app.kubernetes.io/name'] == 'telemetry-collector'"
  failurePolicy: Fail
  reinvocationPolicy: Never
  mutations:
  - patchType: JSONPatch
    jsonPatch:
      expression: >
        [
          JSONPatch{op: "add", path: "/spec/hostNetwork", value: true},
          JSONPatch{op: "add", path: "/spec/dnsPolicy", value: "ClusterFirstWithHostNet"},
          JSONPatch{op: "replace", path: "/spec/containers/0/ports/0/containerPort", value: int(params.data.port)},
          JSONPatch{op: "add", path: "/spec/containers/0/ports/0/hostPort", value: int(params.data.port)},
          JSONPatch{op: "add", path: "/spec/containers/0/args/-", value: "--metrics-addr=127.0.0.1:" + params.data.port},
          JSONPatch{op: "add", path: "/spec/containers/0/livenessProbe/httpGet/host", value: "127.0.0.1"},
          JSONPatch{op: "add", path: "/spec/containers/0/readinessProbe/httpGet/host", value: "127.0.0.1"}
        ] + (has(object.spec.containers[0].env) ? [
          JSONPatch{op: "add", path: "/spec/containers/0/env/-", value: Object.spec.containers.env{name: "KUBERNETES_SERVICE_HOST", value: params.data.host}},
          JSONPatch{op: "add", path: "/spec/containers/0/env/-", value: Object.spec.containers.env{name: "KUBERNETES_SERVICE_PORT", value: params.data.apiPort}}
        ] : [
          JSONPatch{op: "add", path: "/spec/containers/0/env", value: [
            Object.spec.containers.env{name: "KUBERNETES_SERVICE_HOST", value: params.data.host},
            Object.spec.containers.env{name: "KUBERNETES_SERVICE_PORT", value: params.data.apiPort}]}
        ])
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicyBinding
metadata:
  name: test-cluster-host-network
spec:
  policyName: test-cluster-host-network
  paramRef:
    name: test-cluster-host-network
    parameterNotFoundAction: Deny
  matchResources:
    namespaceSelector:
      matchLabels:
        telemetry-test/host-network: "true"
`

// HostNetworkLabel marks the namespaces HostNetworkPolicy applies in.
const HostNetworkLabel = "telemetry-test/host-network"

// HostNetworkParams is the name of the ConfigMap HostNetworkPolicy reads in each namespace.
const HostNetworkParams = "test-cluster-host-network"
