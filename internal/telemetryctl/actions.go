/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package telemetryctl

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

// requestOptions are the flags of the commands that ask the operator for something.
type requestOptions struct {
	*Options
	wait time.Duration
}

func newRotateCommand(o *Options) *cobra.Command {
	ro := &requestOptions{Options: o}
	cmd := &cobra.Command{
		Use:   "rotate NAME",
		Short: "Rotate the collector's client certificate now",
		Long: `rotate asks the operator for exactly one new client certificate for the policy's
collector, by setting the ` + v1.AnnotationRotateRequestedAt + ` annotation
to a new value. With --wait it waits until the operator reports the rotation
(status.lastHandledRotateRequest) and prints the new certificate's serial and expiry.
A suspended policy is not rotated until it is resumed.`,
		Example:           "  kubectl telemetry rotate -n acme acme --wait 1m",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completePolicyNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return ro.request(cmd.Context(), args[0], v1.AnnotationRotateRequestedAt, "rotation",
				func(p *v1.TelemetryPolicy) string { return p.Status.LastHandledRotateRequest },
				func(p *v1.TelemetryPolicy) string {
					if c := p.Status.Credentials; c != nil {
						return fmt.Sprintf("certificate revision %d, serial %s, %s", c.Revision, c.SerialNumber, expiry(ro.Now(), c.NotAfter))
					}
					return ""
				})
		},
	}
	cmd.Flags().DurationVar(&ro.wait, "wait", 0, "Wait this long for the operator to carry the request out (0: do not wait).")
	return cmd
}

func newReconcileCommand(o *Options) *cobra.Command {
	ro := &requestOptions{Options: o}
	cmd := &cobra.Command{
		Use:   "reconcile NAME",
		Short: "Ask the operator to reconcile a policy now",
		Long: `reconcile asks the operator to reconcile the policy at once (for example after fixing
a RoleBinding it lacked), by setting the ` + v1.AnnotationReconcileRequestedAt + `
annotation to a new value. With --wait it waits until the operator echoes it in
status.lastHandledReconcileAt and prints the policy's Ready condition.`,
		Example:           "  kubectl telemetry reconcile -n acme acme --wait 30s",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completePolicyNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return ro.request(cmd.Context(), args[0], v1.AnnotationReconcileRequestedAt, "reconcile",
				func(p *v1.TelemetryPolicy) string { return p.Status.LastHandledReconcileAt },
				func(p *v1.TelemetryPolicy) string {
					s := Summarize(p)
					return fmt.Sprintf("Ready=%s %s", s.Ready, s.Reason)
				})
		},
	}
	cmd.Flags().DurationVar(&ro.wait, "wait", 0, "Wait this long for the operator to carry the request out (0: do not wait).")
	return cmd
}

// request sets annotation to a new value and, with --wait, waits until handled(policy) echoes it.
// For a rotation, done also requires a new certificate: the echo alone comes from an annotation
// of the credentials Secret, which others may write.
func (ro *requestOptions) request(ctx context.Context, name, annotation, what string,
	handled func(*v1.TelemetryPolicy) string, describe func(*v1.TelemetryPolicy) string) error {
	p, err := ro.getPolicy(ctx, name)
	if err != nil {
		return err
	}
	c, err := ro.Client()
	if err != nil {
		return err
	}
	value := ro.Now().UTC().Format(time.RFC3339Nano)
	if p.Annotations[annotation] == value {
		value += "-1" // two requests within one clock tick still differ
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{annotation: value}}})
	if err := c.Patch(ctx, p, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("requesting a %s of %s/%s: %w", what, p.Namespace, p.Name, err)
	}
	fprintf(ro.Streams.Out, "%s of %s/%s requested (%s=%s)\n", what, p.Namespace, p.Name, annotation, value)
	if p.Spec.Suspend {
		fprintf(ro.Streams.Out, "the policy is suspended: the operator carries the request out once it is resumed\n")
	}
	if ro.wait <= 0 {
		return nil
	}
	deadline := time.Now().Add(ro.wait)
	for {
		cur := &v1.TelemetryPolicy{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(p), cur); err != nil {
			return err
		}
		if handled(cur) == value {
			if annotation == v1.AnnotationRotateRequestedAt && revision(cur) <= revision(p) {
				return fmt.Errorf("the operator echoed the rotation request but issued no new certificate (revision %d): "+
					"was the credentials Secret's %s annotation set by hand?", revision(cur), "telemetry.sourcegraph.com/rotate-request")
			}
			fprintf(ro.Streams.Out, "%s handled: %s\n", what, describe(cur))
			return nil
		}
		if time.Now().After(deadline) {
			s := Summarize(cur)
			return fmt.Errorf("the operator has not handled the %s within %s; the policy is Ready=%s %s: %s (kubectl telemetry status -n %s %s; is the manager running? kubectl telemetry check)",
				what, ro.wait, s.Ready, s.Reason, oneLine(s.Message, 200), cur.Namespace, cur.Name)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func newSuspendCommand(o *Options, suspend bool) *cobra.Command {
	use, short, long := "resume NAME", "Resume reconciling a suspended policy",
		`resume unsets spec.suspend: the operator applies the policy's configuration and
rotates its credentials again.`
	if suspend {
		use, short, long = "suspend NAME", "Pause reconciling a policy (downgrades are still enforced)",
			`suspend sets spec.suspend: the operator writes no new configuration and rotates no
credentials for the policy until it is resumed. Consent downgrades (a lower tier, an expired
trial) are still enforced while suspended.`
	}
	return &cobra.Command{
		Use: use, Short: short, Long: long,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completePolicyNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			p, err := o.getPolicy(ctx, args[0])
			if err != nil {
				return err
			}
			c, err := o.Client()
			if err != nil {
				return err
			}
			var value any // null removes the field: suspend is omitempty
			if suspend {
				value = true
			}
			patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"suspend": value}})
			if err := c.Patch(ctx, p, client.RawPatch(types.MergePatchType, patch)); err != nil {
				return fmt.Errorf("patching %s/%s: %w", p.Namespace, p.Name, err)
			}
			if suspend {
				fprintf(o.Streams.Out, "%s/%s suspended: no new configuration or rotation until resumed; consent downgrades are still enforced\n", p.Namespace, p.Name)
			} else {
				fprintf(o.Streams.Out, "%s/%s resumed\n", p.Namespace, p.Name)
			}
			return nil
		},
	}
}

func revision(p *v1.TelemetryPolicy) int64 {
	if p.Status.Credentials == nil {
		return 0
	}
	return p.Status.Credentials.Revision
}
