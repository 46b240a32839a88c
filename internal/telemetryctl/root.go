/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package telemetryctl is kubectl-telemetry, the kubectl plugin cloud ops use to see and operate
// the fleet's TelemetryPolicies: status and problems, an install check, rotate, reconcile,
// suspend and resume, a preview of what an instance's collector sends next, and a support bundle
// without Secret data or event contents. It talks only to the API server (and, for check, to the
// receiver's TLS port), with the caller's kubeconfig and permissions.
package telemetryctl

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

// Defaults of the install this plugin inspects; the flags of the same names override them.
const (
	DefaultManagerNamespace  = "telemetry-system"
	DefaultManagerDeployment = "telemetry-operator-controller-manager"
	DefaultIssuerSecret      = "telemetry-fleet-issuer"
	// LeaseName is the manager's leader-election Lease.
	LeaseName = "telemetry-operator.telemetry.sourcegraph.com"
	// CRDName is the TelemetryPolicy CustomResourceDefinition.
	CRDName = "telemetrypolicies.telemetry.sourcegraph.com"
)

// Options hold what every subcommand shares: the kubeconfig flags, the streams and the clock.
type Options struct {
	Flags   *genericclioptions.ConfigFlags
	Streams genericiooptions.IOStreams
	// Now is the clock; tests set it.
	Now func() time.Time

	// rawOut is standard output as given; Streams.Out cleans what passes (see clean).
	rawOut io.Writer

	restConfig *rest.Config
	client     client.Client
	clientset  kubernetes.Interface
}

// Scheme knows every kind the plugin reads.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, v1.AddToScheme, apiextensionsv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}

// Run runs the plugin with args and returns its exit code. Errors are printed as "error: ...",
// cleaned like all output: they may quote what the cluster said.
func Run(ctx context.Context, args []string, streams genericiooptions.IOStreams) int {
	cmd := NewCommand(streams)
	cmd.SetArgs(args)
	if err := cmd.ExecuteContext(ctx); err != nil {
		fprintf(safeWriter{streams.ErrOut}, "error: %v\n", err)
		return 1
	}
	return 0
}

// NewCommand returns the kubectl-telemetry command tree.
func NewCommand(streams genericiooptions.IOStreams) *cobra.Command {
	return newCommand(&Options{Flags: genericclioptions.NewConfigFlags(true), Streams: streams, Now: time.Now})
}

func newCommand(o *Options) *cobra.Command {
	o.rawOut = o.Streams.Out
	o.Streams.Out, o.Streams.ErrOut = safeWriter{o.Streams.Out}, safeWriter{o.Streams.ErrOut}
	streams := o.Streams
	cmd := &cobra.Command{
		Use:   "kubectl-telemetry",
		Short: "See and operate TelemetryPolicies and the telemetry operator",
		Long: `kubectl telemetry shows the state of each instance's telemetry (declared and enforced
consent tier, credentials, export progress, erasure), checks the install, and operates
policies through the fields and annotations the operator reads.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.SetOut(streams.Out)
	cmd.SetErr(streams.ErrOut)
	cmd.SetIn(streams.In)
	o.Flags.AddFlags(cmd.PersistentFlags())
	cmd.AddCommand(
		newStatusCommand(o),
		newCheckCommand(o),
		newRotateCommand(o),
		newReconcileCommand(o),
		newSuspendCommand(o, true),
		newSuspendCommand(o, false),
		newPreviewCommand(o),
		newBundleCommand(o),
	)
	return cmd
}

// RESTConfig returns the REST configuration from the kubeconfig flags.
func (o *Options) RESTConfig() (*rest.Config, error) {
	if o.restConfig != nil {
		return o.restConfig, nil
	}
	cfg, err := o.Flags.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "kubectl-telemetry"
	o.restConfig = cfg
	return cfg, nil
}

// Client returns a client that reads straight from the API server (no cache).
func (o *Options) Client() (client.Client, error) {
	if o.client != nil {
		return o.client, nil
	}
	cfg, err := o.RESTConfig()
	if err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: Scheme()})
	if err != nil {
		return nil, err
	}
	o.client = c
	return c, nil
}

// Clientset returns the typed clientset, for logs and exec.
func (o *Options) Clientset() (kubernetes.Interface, error) {
	if o.clientset != nil {
		return o.clientset, nil
	}
	cfg, err := o.RESTConfig()
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	o.clientset = cs
	return cs, nil
}

// Namespace returns the namespace from --namespace or the kubeconfig's context.
func (o *Options) Namespace() (string, error) {
	ns, _, err := o.Flags.ToRawKubeConfigLoader().Namespace()
	return ns, err
}

// getPolicy reads one policy in the current namespace, with an error that says where it looked.
func (o *Options) getPolicy(ctx context.Context, name string) (*v1.TelemetryPolicy, error) {
	c, err := o.Client()
	if err != nil {
		return nil, err
	}
	ns, err := o.Namespace()
	if err != nil {
		return nil, err
	}
	p := &v1.TelemetryPolicy{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, p); err != nil {
		return nil, fmt.Errorf("reading TelemetryPolicy %s/%s: %w", ns, name, err)
	}
	return p, nil
}

// completePolicyNames completes the names of the policies in the current namespace.
func (o *Options) completePolicyNames(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	c, err := o.Client()
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	ns, err := o.Namespace()
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	var list v1.TelemetryPolicyList
	if err := c.List(cmd.Context(), &list, client.InNamespace(ns)); err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	names := make([]string, 0, len(list.Items))
	for _, p := range list.Items {
		names = append(names, p.Name)
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

func fprintf(w io.Writer, format string, args ...any) {
	_, _ = fmt.Fprintf(w, format, args...)
}
