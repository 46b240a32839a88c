/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package telemetryctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/streaming/pkg/httpstream"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
)

// maxPreviewBytes bounds what preview copies from the pod (a batch is at most 10,000 events).
const maxPreviewBytes = 256 << 20

// maxPreviewErrBytes bounds the collector's summary or error message.
const maxPreviewErrBytes = 64 << 10

type previewOptions struct {
	*Options
	binary   string
	limit    int
	next     bool
	exported bool
}

func newPreviewCommand(o *Options) *cobra.Command {
	po := &previewOptions{Options: o}
	cmd := &cobra.Command{
		Use:   "preview NAME",
		Short: "Show what the instance's collector would send next and what the receiver stored last",
		Long: `preview runs, inside the policy's running collector pod, "collector preview" (the batches
the next round would send, built exactly as a round builds them, sent nowhere) and
"collector exported" (what the receiver stored from this instance in its latest deliveries,
asked with the collector's own certificate). Nothing leaves the pod but what the collector
would send anyway; no Secret reaches this machine. It needs permission to exec into pods
in the policy's namespace (pods/exec create).

The batches are printed one request body (JSON) per line, the receiver's answer as JSON,
each after a header line starting with "==>".`,
		Example: `  kubectl telemetry preview -n acme acme
  kubectl telemetry preview -n acme acme --exported=false | tail -n +2 | jq .`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completePolicyNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			if po.limit < 1 || po.limit > 100 {
				return fmt.Errorf("--limit must be between 1 and 100")
			}
			return po.run(cmd.Context(), args[0])
		},
	}
	cmd.Flags().StringVar(&po.binary, "collector-binary", "/collector", "Path of the collector binary in its image.")
	cmd.Flags().IntVar(&po.limit, "limit", 1, "How many of the receiver's latest deliveries to show (1-100).")
	cmd.Flags().BoolVar(&po.next, "next", true, "Show what the collector would send next.")
	cmd.Flags().BoolVar(&po.exported, "exported", true, "Show what the receiver stored last.")
	return cmd
}

func (po *previewOptions) run(ctx context.Context, name string) error {
	p, err := po.getPolicy(ctx, name)
	if err != nil {
		return err
	}
	if p.Status.EffectiveTier == v1.TierOff || (p.Spec.Consent.Tier == v1.TierOff && p.Status.EffectiveTier == "") {
		fprintf(po.Streams.Out, "%s/%s: consent tier Off: no collector runs and nothing leaves the instance\n", p.Namespace, p.Name)
		return nil
	}
	c, err := po.Client()
	if err != nil {
		return err
	}
	pod, container, err := collectorPod(ctx, c, p)
	if err != nil {
		return err
	}
	configArg := ""
	for _, a := range container.Args {
		if strings.HasPrefix(a, "--config=") {
			configArg = a
		}
	}
	if configArg == "" {
		return fmt.Errorf("pod %s/%s: the collector container has no --config argument", pod.Namespace, pod.Name)
	}
	out := po.Streams.Out
	if po.next {
		fprintf(out, "==> what %s's collector would send next (pod %s)\n", p.Spec.InstanceID, pod.Name)
		if err := po.exec(ctx, pod, container.Name, []string{po.binary, "preview", configArg}, out); err != nil {
			return fmt.Errorf("collector preview in pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
	}
	if po.exported {
		fprintf(out, "==> what the receiver stored from %s last (latest %d deliveries)\n", p.Spec.InstanceID, po.limit)
		if err := po.exec(ctx, pod, container.Name, []string{po.binary, "exported", configArg, fmt.Sprintf("--limit=%d", po.limit)}, out); err != nil {
			return fmt.Errorf("collector exported in pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
	}
	return nil
}

// collectorPod returns the running pod of the policy's collector Deployment that runs the
// current configuration, and its collector container.
func collectorPod(ctx context.Context, c client.Client, p *v1.TelemetryPolicy) (*corev1.Pod, *corev1.Container, error) {
	work, err := findCollector(ctx, c, p)
	if err != nil {
		return nil, nil, err
	}
	if work.Deployment == nil {
		return nil, nil, fmt.Errorf("%s/%s has no collector Deployment: see kubectl telemetry status -n %s %s", p.Namespace, p.Name, p.Namespace, p.Name)
	}
	cfg := &corev1.ConfigMap{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: resources.NamesFor(p.Name).Config}, cfg); err != nil {
		return nil, nil, fmt.Errorf("reading the collector configuration: %w", err)
	}
	current := resources.ConfigHash([]byte(cfg.Data[resources.ConfigKey]))
	var found []string
	for i := range work.Pods {
		pod := &work.Pods[i]
		found = append(found, fmt.Sprintf("%s (%s, configuration %s)", pod.Name, pod.Status.Phase, configState(pod.Annotations[resources.AnnotationConfigHash], current)))
		if pod.Status.Phase != corev1.PodRunning || pod.DeletionTimestamp != nil || pod.Annotations[resources.AnnotationConfigHash] != current {
			continue
		}
		for j := range pod.Spec.Containers {
			if pod.Spec.Containers[j].Name == resources.ContainerName {
				return pod, &pod.Spec.Containers[j], nil
			}
		}
	}
	if len(found) == 0 {
		return nil, nil, fmt.Errorf("%s/%s has no collector pod: see kubectl telemetry status -n %s %s", p.Namespace, p.Name, p.Namespace, p.Name)
	}
	return nil, nil, fmt.Errorf("%s/%s has no running collector pod with the current configuration (found %s): see kubectl telemetry status -n %s %s",
		p.Namespace, p.Name, strings.Join(found, ", "), p.Namespace, p.Name)
}

// exec runs command in the pod's container, copying its standard output to out. Its standard
// error (the collector's summary or its error) goes to the plugin's.
func (po *previewOptions) exec(ctx context.Context, pod *corev1.Pod, container string, command []string, out io.Writer) error {
	cs, err := po.Clientset()
	if err != nil {
		return err
	}
	cfg, err := po.RESTConfig()
	if err != nil {
		return err
	}
	req := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: command, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(cfg, "GET", req.URL().String())
	if err != nil {
		return err
	}
	spdy, err := remotecommand.NewSPDYExecutor(cfg, "POST", req.URL())
	if err != nil {
		return err
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return err
	}
	// The pod's output is the collector's: cleaned (out is the plugin's cleaning writer) and
	// bounded, whatever it writes.
	var stderr bytes.Buffer
	stdout, errOut := &limitWriter{w: out, n: maxPreviewBytes}, &limitWriter{w: &stderr, n: maxPreviewErrBytes}
	err = exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: stdout, Stderr: errOut})
	switch {
	case errors.Is(err, errTooMuch) && errOut.n < 0:
		err = fmt.Errorf("the collector's error output exceeds %d bytes; stopped", maxPreviewErrBytes)
	case errors.Is(err, errTooMuch):
		err = fmt.Errorf("the collector's output exceeds %d bytes; stopped", maxPreviewBytes)
	}
	if msg := strings.TrimSpace(stderr.String()); msg != "" {
		fprintf(po.Streams.ErrOut, "%s\n", clean(msg))
	}
	return err
}
