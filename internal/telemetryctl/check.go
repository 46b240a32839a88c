/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package telemetryctl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
)

// CheckResult is the outcome of one install check.
type CheckResult struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

type checkOptions struct {
	*Options
	wait              time.Duration
	interval          time.Duration
	managerNamespace  string
	managerDeployment string
	issuerSecret      string
	issuerWarning     time.Duration
	issuerWarningSet  bool
	receiverURL       string
	receiverCAFile    string
	dialTimeout       time.Duration
	output            string
}

func newCheckCommand(o *Options) *cobra.Command {
	co := &checkOptions{Options: o, interval: 2 * time.Second}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that the install works: CRD, manager, fleet issuer, receiver",
		Long: `check verifies, in order: the TelemetryPolicy CRD is established and serves v1alpha1;
the manager's Deployment is available (or, for a manager run outside the cluster, its
leader-election Lease is renewed); the fleet issuer Secret holds a CA certificate with its
key that is valid and not near expiry; the receiver answers TLS with a certificate the fleet
issuer's bundle trusts; and no policy reports the receiver's consent ledger unavailable.
It exits non-zero naming each failed check. With --wait it retries until all pass or the
time is up, as an install pipeline's startup check.`,
		Example: `  kubectl telemetry check
  kubectl telemetry check --wait 2m
  kubectl telemetry check --receiver-url https://telemetry.example.com:8443`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			co.issuerWarningSet = cmd.Flags().Changed("issuer-warning")
			if co.output != "" && co.output != "json" && co.output != "yaml" {
				return fmt.Errorf("--output %q: use json or yaml", co.output)
			}
			return co.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.DurationVar(&co.wait, "wait", 0, "Retry until every check passes or this long has passed (e.g. 2m).")
	f.StringVar(&co.managerNamespace, "manager-namespace", DefaultManagerNamespace, "Namespace of the manager, its leader-election Lease and (by default) the fleet issuer Secret.")
	f.StringVar(&co.managerDeployment, "manager-deployment", DefaultManagerDeployment, "Name of the manager's Deployment.")
	f.StringVar(&co.issuerSecret, "issuer-secret", "", "namespace/name of the fleet issuer Secret (default: the manager's --issuer-secret, else MANAGER-NAMESPACE/"+DefaultIssuerSecret+").")
	f.DurationVar(&co.issuerWarning, "issuer-warning", 30*24*time.Hour, "Fail when the fleet issuer expires within this long (default: the manager's --issuer-expiry-warning, else 30 days).")
	f.StringVar(&co.receiverURL, "receiver-url", "", "The receiver's https:// URL as reachable from here (default: the manager's --receiver-url, else the endpoints the policies name).")
	f.StringVar(&co.receiverCAFile, "receiver-ca-file", "", "PEM bundle that signs the receiver's certificate (default: the fleet issuer's bundle).")
	f.DurationVar(&co.dialTimeout, "dial-timeout", 5*time.Second, "How long to wait for the receiver to answer.")
	f.StringVarP(&co.output, "output", "o", "", "Output format: json or yaml (default: one line per check).")
	return cmd
}

func (co *checkOptions) run(ctx context.Context) error {
	deadline := co.Now().Add(co.wait)
	var results []CheckResult
	for {
		results = co.checkAll(ctx)
		if failed(results) == 0 || !co.Now().Before(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(co.interval):
		}
	}
	if co.output != "" {
		if err := encode(co.Streams.Out, co.output, map[string]any{"checks": results}); err != nil {
			return err
		}
	} else {
		for _, r := range results {
			mark := "ok  "
			if !r.OK {
				mark = "FAIL"
			}
			fprintf(co.Streams.Out, "[%s] %s: %s\n", mark, r.Name, oneLine(r.Detail, 400))
		}
	}
	if n := failed(results); n > 0 {
		var names []string
		for _, r := range results {
			if !r.OK {
				names = append(names, r.Name)
			}
		}
		return fmt.Errorf("%d of %d checks failed: %s", n, len(results), strings.Join(names, ", "))
	}
	return nil
}

func failed(rs []CheckResult) int {
	n := 0
	for _, r := range rs {
		if !r.OK {
			n++
		}
	}
	return n
}

// checkAll runs every check once. A check that cannot run because an earlier one failed says so.
func (co *checkOptions) checkAll(ctx context.Context) []CheckResult {
	c, err := co.Client()
	if err != nil {
		return []CheckResult{{Name: "api", Detail: "no client: " + err.Error()}}
	}
	results := []CheckResult{co.checkCRD(ctx, c)}
	dep, mgr := co.checkManager(ctx, c)
	results = append(results, mgr)
	issuer, bundle := co.checkIssuer(ctx, c, dep)
	results = append(results, issuer)
	results = append(results, co.checkReceiver(ctx, c, dep, bundle))
	if results[0].OK {
		results = append(results, checkLedger(ctx, c))
	}
	return results
}

func (co *checkOptions) checkCRD(ctx context.Context, c client.Client) CheckResult {
	r := CheckResult{Name: "api"}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := c.Get(ctx, client.ObjectKey{Name: CRDName}, crd); err != nil {
		if apierrors.IsNotFound(err) {
			r.Detail = "the CRD " + CRDName + " is not installed (make install, or apply dist/install.yaml)"
		} else {
			r.Detail = "reading the CRD " + CRDName + ": " + err.Error()
		}
		return r
	}
	established := false
	for _, cond := range crd.Status.Conditions {
		if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
			established = true
		}
	}
	if !established {
		r.Detail = "the CRD " + CRDName + " is not established yet"
		return r
	}
	for _, v := range crd.Spec.Versions {
		if v.Name == v1.GroupVersion.Version && v.Served {
			r.OK, r.Detail = true, fmt.Sprintf("CRD %s established, serving %s", CRDName, v.Name)
			return r
		}
	}
	r.Detail = "the CRD " + CRDName + " does not serve " + v1.GroupVersion.Version + ": this plugin is of another release"
	return r
}

// checkManager finds the manager: its Deployment available, or its leader Lease renewed.
func (co *checkOptions) checkManager(ctx context.Context, c client.Client) (*appsv1.Deployment, CheckResult) {
	r := CheckResult{Name: "manager"}
	lease := co.leaseState(ctx, c)
	dep := &appsv1.Deployment{}
	err := c.Get(ctx, client.ObjectKey{Namespace: co.managerNamespace, Name: co.managerDeployment}, dep)
	switch {
	case apierrors.IsNotFound(err):
		dep = nil
		if lease.renewed {
			r.OK, r.Detail = true, fmt.Sprintf("no Deployment %s/%s, but %s (a manager running outside the cluster)", co.managerNamespace, co.managerDeployment, lease.detail)
		} else {
			r.Detail = fmt.Sprintf("no Deployment %s/%s and %s: no manager is running (set --manager-namespace/--manager-deployment if it is elsewhere)", co.managerNamespace, co.managerDeployment, lease.detail)
		}
		return nil, r
	case err != nil:
		r.Detail = fmt.Sprintf("reading Deployment %s/%s: %v", co.managerNamespace, co.managerDeployment, err)
		return nil, r
	}
	want := int32(1)
	if dep.Spec.Replicas != nil {
		want = *dep.Spec.Replicas
	}
	available := false
	for _, cond := range dep.Status.Conditions {
		if cond.Type == appsv1.DeploymentAvailable && cond.Status == corev1.ConditionTrue {
			available = true
		}
	}
	if !available || dep.Status.ReadyReplicas < 1 {
		r.Detail = fmt.Sprintf("Deployment %s/%s not available: %d/%d ready%s", dep.Namespace, dep.Name, dep.Status.ReadyReplicas, want, co.podTrouble(ctx, c, dep))
		return dep, r
	}
	// An available Deployment can still be an old pod in front of a rollout that fails.
	for _, cond := range dep.Status.Conditions {
		if cond.Type == appsv1.DeploymentProgressing && cond.Reason == "ProgressDeadlineExceeded" {
			r.Detail = fmt.Sprintf("Deployment %s/%s: its rollout is stuck (ProgressDeadlineExceeded)%s", dep.Namespace, dep.Name, co.podTrouble(ctx, c, dep))
			return dep, r
		}
	}
	if dep.Status.ObservedGeneration < dep.Generation || dep.Status.UpdatedReplicas < want || dep.Status.Replicas > dep.Status.UpdatedReplicas {
		r.Detail = fmt.Sprintf("Deployment %s/%s is rolling out: %d of %d replicas updated, %d ready%s", dep.Namespace, dep.Name,
			dep.Status.UpdatedReplicas, want, dep.Status.ReadyReplicas, co.podTrouble(ctx, c, dep))
		return dep, r
	}
	// With leader election, only the holder of a renewed Lease reconciles.
	if hasFlag(dep, "leader-elect") && !lease.renewed {
		r.Detail = fmt.Sprintf("Deployment %s/%s is available but no replica leads: %s", dep.Namespace, dep.Name, lease.detail)
		return dep, r
	}
	r.OK, r.Detail = true, fmt.Sprintf("Deployment %s/%s available, %d/%d ready; %s", dep.Namespace, dep.Name, dep.Status.ReadyReplicas, want, lease.detail)
	return dep, r
}

// podTrouble names why the manager's pods are not ready, from their container states.
func (co *checkOptions) podTrouble(ctx context.Context, c client.Client, dep *appsv1.Deployment) string {
	if dep.Spec.Selector == nil {
		return ""
	}
	pods := &corev1.PodList{}
	if err := c.List(ctx, pods, client.InNamespace(dep.Namespace), client.MatchingLabels(dep.Spec.Selector.MatchLabels)); err != nil {
		return ""
	}
	var why []string
	for _, p := range pods.Items {
		for _, cs := range p.Status.ContainerStatuses {
			if w := cs.State.Waiting; w != nil {
				why = append(why, fmt.Sprintf("pod %s: %s %s", p.Name, w.Reason, oneLine(w.Message, 160)))
			} else if t := cs.LastTerminationState.Terminated; t != nil && !cs.Ready {
				why = append(why, fmt.Sprintf("pod %s: last exit %d (%s) %s", p.Name, t.ExitCode, t.Reason, oneLine(t.Message, 160)))
			}
		}
	}
	if len(why) == 0 {
		return ""
	}
	return " (" + strings.Join(why, "; ") + ")"
}

type leaseInfo struct {
	renewed bool
	detail  string
}

func (co *checkOptions) leaseState(ctx context.Context, c client.Client) leaseInfo {
	lease := &coordinationv1.Lease{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: co.managerNamespace, Name: LeaseName}, lease); err != nil {
		if apierrors.IsNotFound(err) {
			return leaseInfo{detail: "no leader-election Lease " + co.managerNamespace + "/" + LeaseName}
		}
		return leaseInfo{detail: "the leader-election Lease could not be read: " + err.Error()}
	}
	holder := "nobody"
	if lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "" {
		holder = *lease.Spec.HolderIdentity
	}
	if lease.Spec.RenewTime == nil {
		return leaseInfo{detail: "the leader-election Lease was never renewed"}
	}
	dur := 15 * time.Second
	if lease.Spec.LeaseDurationSeconds != nil {
		dur = time.Duration(*lease.Spec.LeaseDurationSeconds) * time.Second
	}
	age := co.Now().Sub(lease.Spec.RenewTime.Time)
	if age < -dur {
		return leaseInfo{detail: fmt.Sprintf("the leader-election Lease was renewed %s in the future by %s: a clock is wrong", humanDuration(-age), holder)}
	}
	if holder == "nobody" || age > dur {
		return leaseInfo{detail: fmt.Sprintf("the leader-election Lease was last renewed %s ago by %s (it lapses after %s)", humanDuration(age), holder, dur)}
	}
	return leaseInfo{renewed: true, detail: fmt.Sprintf("leader %s renewed its Lease %s ago", holder, humanDuration(age))}
}

// hasFlag reports whether the manager's Deployment passes the boolean flag --name (not =false).
func hasFlag(dep *appsv1.Deployment, name string) bool {
	if dep == nil {
		return false
	}
	for _, ctr := range dep.Spec.Template.Spec.Containers {
		for _, a := range append(append([]string{}, ctr.Command...), ctr.Args...) {
			if a == "--"+name || a == "--"+name+"=true" {
				return true
			}
		}
	}
	return false
}

// managerArg returns the value of a manager flag from its Deployment ("" when unset), with
// $(POD_NAMESPACE) resolved to the Deployment's namespace as the kubelet does.
func managerArg(dep *appsv1.Deployment, name string) string {
	if dep == nil {
		return ""
	}
	for _, ctr := range dep.Spec.Template.Spec.Containers {
		args := append(append([]string{}, ctr.Command...), ctr.Args...)
		for i, a := range args {
			v, ok := "", false
			switch {
			case strings.HasPrefix(a, "--"+name+"="):
				v, ok = strings.TrimPrefix(a, "--"+name+"="), true
			case a == "--"+name && i+1 < len(args):
				v, ok = args[i+1], true
			}
			if ok {
				return strings.ReplaceAll(v, "$(POD_NAMESPACE)", dep.Namespace)
			}
		}
	}
	return ""
}

// checkIssuer reads the fleet issuer Secret and checks its CA certificate and key. It returns
// the bundle that verifies certificates the fleet trusts. The key is parsed to match it to the
// certificate and is never printed.
func (co *checkOptions) checkIssuer(ctx context.Context, c client.Client, dep *appsv1.Deployment) (CheckResult, *x509.CertPool) {
	r := CheckResult{Name: "issuer"}
	ref := co.issuerSecret
	if ref == "" {
		ref = managerArg(dep, "issuer-secret")
	}
	if ref == "" {
		ref = co.managerNamespace + "/" + DefaultIssuerSecret
	}
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" {
		r.Detail = fmt.Sprintf("issuer Secret %q is not namespace/name", ref)
		return r, nil
	}
	sec := &corev1.Secret{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, sec); err != nil {
		switch {
		case apierrors.IsNotFound(err):
			r.Detail = fmt.Sprintf("Secret %s/%s not found: create it from your PKI (tls.crt, tls.key of a CA; optional ca.crt)", ns, name)
		case apierrors.IsForbidden(err):
			r.Detail = fmt.Sprintf("not allowed to read Secret %s/%s: run check as someone who may (the check reads the CA certificate and matches its key)", ns, name)
		default:
			r.Detail = fmt.Sprintf("reading Secret %s/%s: %v", ns, name, err)
		}
		return r, nil
	}
	where := fmt.Sprintf("Secret %s/%s", ns, name)
	// The manager's own parser and checks: the check passes exactly the issuers it accepts.
	now := co.Now()
	issuer, err := pki.LoadIssuer(sec.Data, now)
	if err != nil {
		r.Detail = where + ": " + err.Error()
		return r, nil
	}
	ca := issuer.Cert
	bundle := x509.NewCertPool()
	if !bundle.AppendCertsFromPEM(issuer.BundlePEM) {
		r.Detail = where + ": no certificate in its bundle"
		return r, nil
	}
	warning := co.issuerWarning
	if !co.issuerWarningSet {
		if v, err := time.ParseDuration(managerArg(dep, "issuer-expiry-warning")); err == nil && v > 0 {
			warning = v
		}
	}
	minimum := 24 * time.Hour
	if v, err := time.ParseDuration(managerArg(dep, "issuer-min-remaining")); err == nil && v > 0 {
		minimum = v
	}
	switch left := ca.NotAfter.Sub(now); {
	case left < minimum:
		r.Detail = fmt.Sprintf("%s: the CA %q expires in %s, less than the manager's --issuer-min-remaining (%s): it issues no certificate from it; rotate it (see the README's Credentials)",
			where, ca.Subject.CommonName, humanDuration(left), humanDuration(minimum))
	case left < warning:
		r.Detail = fmt.Sprintf("%s: the CA %q expires in %s (%s), within %s: rotate it (see the README's Credentials)", where, ca.Subject.CommonName,
			humanDuration(left), ca.NotAfter.UTC().Format(time.RFC3339), humanDuration(warning))
	default:
		r.OK, r.Detail = true, fmt.Sprintf("%s: CA %q valid until %s (%s left)", where, ca.Subject.CommonName, ca.NotAfter.UTC().Format(time.RFC3339), humanDuration(left))
	}
	return r, bundle
}

// checkReceiver dials the receiver's TLS port and verifies its certificate. The receiver asks for
// a client certificate; the check presents none, so it proves the receiver answers and is
// trusted, not that it accepts a particular collector.
func (co *checkOptions) checkReceiver(ctx context.Context, c client.Client, dep *appsv1.Deployment, bundle *x509.CertPool) CheckResult {
	r := CheckResult{Name: "receiver"}
	targets, from := co.receiverTargets(ctx, c, dep)
	if len(targets) == 0 {
		r.Detail = "no receiver URL: the manager's Deployment names none and no policy names an endpoint; pass --receiver-url"
		return r
	}
	verify := bundle
	switch {
	case co.receiverCAFile != "":
		pemBytes, err := os.ReadFile(co.receiverCAFile)
		if err != nil {
			r.Detail = "--receiver-ca-file: " + err.Error()
			return r
		}
		verify = x509.NewCertPool()
		if !verify.AppendCertsFromPEM(pemBytes) {
			r.Detail = "--receiver-ca-file holds no PEM certificate"
			return r
		}
	case managerArg(dep, "receiver-ca-file") != "":
		r.Detail = fmt.Sprintf("cannot verify the receiver's certificate: the manager trusts its own --receiver-ca-file (%s); pass the same bundle with --receiver-ca-file",
			managerArg(dep, "receiver-ca-file"))
		return r
	case bundle == nil:
		r.Detail = "cannot verify the receiver's certificate: the fleet issuer's bundle could not be read (see the issuer check), and no --receiver-ca-file was given"
		return r
	}
	var details []string
	ok := true
	for _, target := range targets {
		d, err := co.dialReceiver(ctx, target, verify)
		if err != nil {
			ok = false
			hint := ""
			var dnsErr *net.DNSError
			if errors.As(err, &dnsErr) && from == "the manager's --receiver-url" {
				hint = "; an in-cluster name does not resolve outside the cluster: pass --receiver-url with an address reachable from here"
			}
			details = append(details, fmt.Sprintf("%s (%s): %v%s", target, from, err, hint))
			continue
		}
		details = append(details, fmt.Sprintf("%s (%s) answers TLS: %s", target, from, d))
	}
	r.OK, r.Detail = ok, strings.Join(details, "; ")
	return r
}

func (co *checkOptions) receiverTargets(ctx context.Context, c client.Client, dep *appsv1.Deployment) ([]string, string) {
	if co.receiverURL != "" {
		return []string{co.receiverURL}, "--receiver-url"
	}
	if u := managerArg(dep, "receiver-url"); u != "" {
		return []string{u}, "the manager's --receiver-url"
	}
	var list v1.TelemetryPolicyList
	if err := c.List(ctx, &list); err != nil {
		return nil, ""
	}
	seen := map[string]bool{}
	for _, p := range list.Items {
		if p.Spec.Export != nil && p.Spec.Export.Endpoint != "" {
			if u, err := url.Parse(p.Spec.Export.Endpoint); err == nil && u.Host != "" {
				seen["https://"+u.Host] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for u := range seen {
		out = append(out, u)
	}
	sort.Strings(out)
	if len(out) > 5 {
		out = out[:5]
	}
	return out, "named by policies"
}

// dialReceiver completes a TLS handshake with the receiver and describes its certificate.
func (co *checkOptions) dialReceiver(ctx context.Context, raw string, roots *x509.CertPool) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("not an https:// URL")
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "443")
	}
	// The chain, the name and the dates, as the collectors and the manager verify them.
	cfg := &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12, RootCAs: roots, Time: co.Now}
	dctx, cancel := context.WithTimeout(ctx, co.dialTimeout)
	defer cancel()
	conn, err := (&tls.Dialer{Config: cfg}).DialContext(dctx, "tcp", host)
	if err != nil {
		var unknown x509.UnknownAuthorityError
		var name x509.HostnameError
		var invalid x509.CertificateInvalidError
		switch {
		case errors.As(err, &unknown):
			return "", fmt.Errorf("its certificate is not signed by the fleet issuer's bundle (pass --receiver-ca-file if the manager uses another): %w", err)
		case errors.As(err, &name):
			return "", fmt.Errorf("its certificate is not for %s: %w", u.Hostname(), err)
		case errors.As(err, &invalid):
			return "", fmt.Errorf("its certificate is not valid: %w", err)
		}
		return "", err
	}
	defer func() { _ = conn.Close() }()
	state := conn.(*tls.Conn).ConnectionState()
	if len(state.PeerCertificates) == 0 {
		return "", errors.New("no server certificate")
	}
	leaf := state.PeerCertificates[0]
	return fmt.Sprintf("certificate for %s valid until %s", strings.Join(leaf.DNSNames, ","), leaf.NotAfter.UTC().Format(time.RFC3339)), nil
}

// checkLedger fails when the manager reports that it cannot reach the receiver's consent ledger.
func checkLedger(ctx context.Context, c client.Client) CheckResult {
	r := CheckResult{Name: "ledger"}
	var list v1.TelemetryPolicyList
	if err := c.List(ctx, &list); err != nil {
		r.Detail = "listing TelemetryPolicies: " + err.Error()
		return r
	}
	var bad []string
	for _, p := range list.Items {
		if cond := meta.FindStatusCondition(p.Status.Conditions, v1.ConditionConsentRecorded); cond != nil &&
			cond.Status == metav1.ConditionFalse && cond.Reason == "ReceiverUnavailable" {
			bad = append(bad, p.Namespace+"/"+p.Name)
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		more := ""
		if len(bad) > 5 {
			more, bad = fmt.Sprintf(" and %d more", len(bad)-5), bad[:5]
		}
		r.Detail = fmt.Sprintf("the manager cannot reach the receiver's consent ledger for %s%s (ConsentRecorded=False ReceiverUnavailable): check its --receiver-url and the receiver", strings.Join(bad, ", "), more)
		return r
	}
	r.OK, r.Detail = true, fmt.Sprintf("no policy of %d reports the consent ledger unavailable", len(list.Items))
	return r
}
