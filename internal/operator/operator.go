/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package operator wires the manager: flags, its caches (cluster-wide for policies and namespace
// labels, one per onboarded namespace for what it owns), the fleet issuer, the
// TelemetryPolicy controller, health probes and metrics. main.go and the tests both use it, so
// tests exercise the same wiring that runs in a cluster.
package operator

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/source"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/controllers"
	"github.com/sourcegraph/telemetry-operator/internal/allowed"
	"github.com/sourcegraph/telemetry-operator/internal/ledger"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/readonce"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
	"github.com/sourcegraph/telemetry-operator/internal/tenants"
	"github.com/sourcegraph/telemetry-operator/internal/tenantwatch"
)

// Config holds the manager's settings, set from flags.
type Config struct {
	MetricsAddr string
	// MetricsInsecure serves metrics as plain HTTP to anyone (development only); by default they
	// are served over TLS to callers the API server authenticates and authorizes for /metrics.
	MetricsInsecure bool
	// MetricsCertDir holds tls.crt and tls.key for the metrics endpoint (default: a self-signed
	// certificate generated at start).
	MetricsCertDir   string
	ProbeAddr        string
	LeaderElect      bool
	LeaderElectionNS string
	IssuerSecret     string
	CollectorImage   string
	// AllowedImages are the collector image repositories (or registry paths ending in "/") a
	// policy may name; default: the repository of CollectorImage.
	AllowedImages []string
	// AllowedEndpoints are the https:// receivers a policy may export to, by origin; default:
	// the origin of ReceiverURL.
	AllowedEndpoints     []string
	MinCloudTermsVersion string
	IssuerExpiryWarning  time.Duration
	// IssuerMinRemaining is the least life the issuer must have left to issue from it.
	IssuerMinRemaining time.Duration
	// ReceiverURL is the receiver whose consent ledger records every instance's consent.
	ReceiverURL string
	// ReceiverCAFile, when set, holds the CA bundle that signs the receiver's server certificate
	// (default: the fleet issuer's CA bundle).
	ReceiverCAFile string
	// ClusterName names this cluster in the ledger's ownership records; the receiver learns it
	// from the operator's certificate.
	ClusterName string
	// LedgerRetry is how soon a policy waiting on an unreachable receiver is tried again.
	LedgerRetry time.Duration
	// LedgerResync is how often each policy's record is read back from the receiver.
	LedgerResync time.Duration
	// CollectorRBACResync is how often, at least, each collector's ServiceAccount, Role and
	// RoleBinding (not watched) are read back and put in order.
	CollectorRBACResync time.Duration
	// WatchTenantNamespaces watches the objects policies own in every onboarded namespace. Off
	// (the default), nothing is watched there: they are read from the API server when a policy
	// is reconciled, every TenantResync.
	WatchTenantNamespaces bool
	// TenantResync is how often each policy is reconciled when WatchTenantNamespaces is off
	// (0: DefaultTenantResync).
	TenantResync time.Duration
	// NamespaceSelector selects the onboarded namespaces by label.
	NamespaceSelector string
	// MaxConcurrentReconciles is how many policies are reconciled at once (0: the default).
	MaxConcurrentReconciles int
	// PprofAddr serves Go's profiling endpoints (/debug/pprof/) when set; "" or "0" disables them.
	PprofAddr string
}

// DefaultTenantResync is how often each policy is reconciled when the tenant namespaces are not
// watched: each resync reads about five objects per policy from the API server (1,000 policies:
// about 80 GETs a second).
const DefaultTenantResync = time.Minute

// MaxTenantResync bounds --tenant-resync: it is how long an edit by hand of a collector's
// objects (its configuration too) may stay in place when they are not watched.
const MaxTenantResync = 5 * time.Minute

// BindFlags registers the manager's flags on fs.
func (c *Config) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.MetricsAddr, "metrics-bind-address", ":8443", "Address of the Prometheus metrics endpoint; \"0\" disables it. Served over TLS to callers the API server authenticates and authorizes for GET /metrics (bind the metrics-reader ClusterRole).")
	fs.BoolVar(&c.MetricsInsecure, "metrics-insecure", false, "Serve metrics as plain HTTP without authentication (development only).")
	fs.StringVar(&c.MetricsCertDir, "metrics-cert-dir", "", "Directory with tls.crt and tls.key for the metrics endpoint (default: a self-signed certificate generated at start).")
	fs.StringVar(&c.ProbeAddr, "health-probe-bind-address", ":8081", "Address of the /healthz and /readyz endpoints.")
	fs.BoolVar(&c.LeaderElect, "leader-elect", false, "Elect a leader so only one manager reconciles at a time (enable when running more than one replica).")
	fs.StringVar(&c.LeaderElectionNS, "leader-election-namespace", "", "Namespace of the leader-election Lease (default: the manager's own namespace).")
	fs.StringVar(&c.IssuerSecret, "issuer-secret", "", "Required. namespace/name of the Secret holding the fleet issuer CA (tls.crt, tls.key, optional ca.crt) that signs collector client certificates.")
	fs.StringVar(&c.CollectorImage, "collector-image", "telemetry-collector:dev", "Collector image used unless a policy sets spec.collector.image.")
	fs.Func("allowed-collector-images", "Comma-separated collector image repositories (any tag or digest), or registry paths ending in /, that spec.collector.image may name (default: the repository of --collector-image). A policy naming another image stalls with reason ImageNotAllowed.", func(v string) error {
		c.AllowedImages = append(c.AllowedImages, strings.Split(v, ",")...)
		return nil
	})
	fs.Func("allowed-endpoints", "Comma-separated https:// receiver URLs (by origin: host and port) that spec.export.endpoint may name (default: the origin of --receiver-url). A policy naming another endpoint stalls with reason EndpointNotAllowed.", func(v string) error {
		c.AllowedEndpoints = append(c.AllowedEndpoints, strings.Split(v, ",")...)
		return nil
	})
	fs.StringVar(&c.MinCloudTermsVersion, "min-cloud-terms-version", "", "Oldest Cloud Terms of Service version (YYYY-MM-DD) that allows EventLevel; older contracts run as CriticalOnly (reason TermsOutdated). Empty accepts any.")
	fs.DurationVar(&c.IssuerExpiryWarning, "issuer-expiry-warning", 30*24*time.Hour, "Warn (Event and metric) when the fleet issuer expires within this long.")
	fs.DurationVar(&c.IssuerMinRemaining, "issuer-min-remaining", controllers.DefaultIssuerMinRemaining, "Issue no certificate from an issuer with less life left than this: policies due a certificate stall (IssuerExpiring) until the issuer is rotated, instead of re-issuing short certificates in a loop. 0 or less means the default, 24h.")
	fs.StringVar(&c.ReceiverURL, "receiver-url", "", "Required. https:// base URL of the receiver whose consent ledger records each instance's consent; the receiver refuses data from instances it has no consent record of.")
	fs.StringVar(&c.ReceiverCAFile, "receiver-ca-file", "", "PEM CA bundle that signs the receiver's server certificate (default: the fleet issuer's CA bundle).")
	fs.StringVar(&c.ClusterName, "cluster-name", "", "Name of this cluster in the consent ledger's ownership records (a DNS label, unique per cluster). Default: the UID of the cluster's kube-system namespace, which is unique and stable.")
	fs.DurationVar(&c.LedgerRetry, "ledger-retry", 15*time.Second, "How soon a policy waiting on an unreachable receiver is tried again.")
	fs.StringVar(&c.NamespaceSelector, "namespace-selector", v1.LabelOnboarded+"=true", "Label selector of the onboarded namespaces: the manager works only in these, and only once ClusterRole "+TenantRole+" is bound to it in each (policies elsewhere stall with reason NamespaceNotOnboarded or ManagerNotPermitted).")
	fs.IntVar(&c.MaxConcurrentReconciles, "max-concurrent-reconciles", controllers.DefaultMaxConcurrentReconciles, "How many policies are reconciled at once (one policy is never reconciled twice at once).")
	fs.StringVar(&c.PprofAddr, "pprof-bind-address", "", "Loopback address (127.0.0.1:PORT) of Go's profiling endpoints (/debug/pprof/, plain HTTP, no authentication; other addresses are refused); empty or \"0\" disables them.")
	fs.DurationVar(&c.LedgerResync, "ledger-resync", 10*time.Minute, "How often each policy's consent record is read back from the receiver and compared with the operator's copy.")
	fs.BoolVar(&c.WatchTenantNamespaces, "watch-tenant-namespaces", false, "Watch the objects policies own (collector Deployments, ConfigMaps, Secrets) in every onboarded namespace, so an edit or a rollout is acted on at once, at about 0.6 MiB and 43 goroutines of the manager's memory per namespace (600-650 MiB for 1,000 namespaces); it needs ClusterRole "+TenantWatchRole+" bound beside the tenant role in each. Off, nothing is watched there: they are read from the API server when a policy is reconciled, every --tenant-resync, and from 1s (backing off to 15s) while it is not Ready, which keeps the manager under 100 MiB at 1,000 policies whatever their namespaces; an edit by hand (of the collector's configuration too) is put back at the next resync, not at once. A policy change is always watched, so a withdrawal of consent is recorded and enforced at once either way, and the receiver refuses data above the recorded tier whatever the collector's configuration says.")
	fs.DurationVar(&c.TenantResync, "tenant-resync", DefaultTenantResync, "With --watch-tenant-namespaces=false, how often each policy is reconciled: its objects read, put back if edited or deleted, and its collector's progress folded into status; 1s to 5m (each resync reads about five objects per policy; the longest an edit by hand stays in place).")
	fs.DurationVar(&c.CollectorRBACResync, "collector-rbac-resync", controllers.DefaultCollectorRBACResync, "How often, at least, each collector's ServiceAccount, Role and RoleBinding are read back and put back if edited or deleted, 10s to 24h (they are not watched, to save a watch of each kind in every onboarded namespace; they are also checked whenever the collector is rolled out, when it is not fully available (at most every 30s then), on every spec change, and on kubectl telemetry reconcile).")
}

// Validate checks the settings and names the offending flag.
func (c *Config) Validate() error {
	var errs []error
	if _, err := c.IssuerRef(); err != nil {
		errs = append(errs, err)
	}
	if v := c.MinCloudTermsVersion; v != "" {
		if _, err := time.Parse("2006-01-02", v); err != nil {
			errs = append(errs, fmt.Errorf("--min-cloud-terms-version %q is not a YYYY-MM-DD date", v))
		}
	}
	if c.CollectorImage == "" {
		errs = append(errs, errors.New("--collector-image must not be empty"))
	}
	if u, err := url.Parse(c.ReceiverURL); c.ReceiverURL == "" || err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
		errs = append(errs, fmt.Errorf("--receiver-url %q must be the receiver's https:// base URL, without credentials", c.ReceiverURL))
	}
	if _, err := c.Images(); err != nil {
		errs = append(errs, fmt.Errorf("--allowed-collector-images: %w", err))
	}
	if c.MaxConcurrentReconciles < 0 || c.MaxConcurrentReconciles > 64 {
		errs = append(errs, fmt.Errorf("--max-concurrent-reconciles %d must be between 1 and 64 (0: the default, %d)", c.MaxConcurrentReconciles, controllers.DefaultMaxConcurrentReconciles))
	}
	if d := c.TenantResync; d != 0 && (d < time.Second || d > MaxTenantResync) {
		errs = append(errs, fmt.Errorf("--tenant-resync %s must be between 1s and %s", d, MaxTenantResync))
	}
	if d := c.CollectorRBACResync; d != 0 && (d < 10*time.Second || d > 24*time.Hour) {
		errs = append(errs, fmt.Errorf("--collector-rbac-resync %s must be between 10s and 24h", d))
	}
	if _, err := c.Endpoints(); err != nil {
		errs = append(errs, fmt.Errorf("--allowed-endpoints: %w", err))
	}
	if _, err := c.Selector(); err != nil {
		errs = append(errs, err)
	}
	if err := loopbackOrOff(c.PprofAddr); err != nil {
		errs = append(errs, fmt.Errorf("--pprof-bind-address: %w", err))
	}
	if c.ClusterName != "" && !pki.ValidClusterName(c.ClusterName) {
		errs = append(errs, fmt.Errorf("--cluster-name %q must be a DNS label (lowercase letters, digits and '-', at most 63 characters)", c.ClusterName))
	}
	return errors.Join(errs...)
}

// loopbackOrOff accepts an address of the profiling endpoints only on a loopback interface (or
// none): they answer anyone who reaches them, without authentication, and a CPU profile or trace
// request keeps the manager busy for as long as it asks.
func loopbackOrOff(addr string) error {
	if addr == "" || addr == "0" {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%q is not a loopback address (127.0.0.1:PORT, [::1]:PORT or localhost:PORT): the endpoints have no authentication; reach them with kubectl port-forward", addr)
	}
	return nil
}

// Selector parses --namespace-selector (unset: the onboarding label). A selector matching every
// namespace is refused: onboarding is a decision per namespace.
func (c *Config) Selector() (labels.Selector, error) {
	if c.NamespaceSelector == "" {
		return labels.SelectorFromSet(labels.Set{v1.LabelOnboarded: "true"}), nil
	}
	sel, err := labels.Parse(c.NamespaceSelector)
	if err == nil && !requiresALabel(sel) {
		err = errors.New("it must require a label to be present (=, ==, in or exists), or it would onboard namespaces nobody labelled")
	}
	if err != nil {
		return nil, fmt.Errorf("--namespace-selector %q must be a label selector naming the onboarded namespaces' label (default %s=true): %w", c.NamespaceSelector, v1.LabelOnboarded, err)
	}
	return sel, nil
}

// requiresALabel reports whether sel matches only namespaces carrying some label.
func requiresALabel(sel labels.Selector) bool {
	reqs, _ := sel.Requirements()
	for _, r := range reqs {
		if strings.HasPrefix(r.Key(), "kubernetes.io/") {
			continue // set by Kubernetes on every namespace (kubernetes.io/metadata.name), not by an admin
		}
		switch r.Operator() {
		case selection.Equals, selection.DoubleEquals, selection.In, selection.Exists:
			return true
		}
	}
	return false
}

// TenantRole is the shipped name of the ClusterRole an admin binds in each onboarded namespace.
const TenantRole = "telemetry-operator-tenant-role"

// TenantWatchRole is the ClusterRole bound beside TenantRole in each onboarded namespace when the
// manager watches there (--watch-tenant-namespaces): list and watch on what it caches.
const TenantWatchRole = "telemetry-operator-tenant-watch-role"

// Images is the list of collector images policies may name.
func (c *Config) Images() (allowed.Images, error) {
	if len(c.AllowedImages) == 0 {
		return allowed.ParseImages([]string{allowed.Repository(c.CollectorImage)})
	}
	return allowed.ParseImages(c.AllowedImages)
}

// Endpoints is the list of receivers policies may export to.
func (c *Config) Endpoints() (allowed.Endpoints, error) {
	if len(c.AllowedEndpoints) == 0 {
		return allowed.ParseEndpoints([]string{c.ReceiverURL})
	}
	return allowed.ParseEndpoints(c.AllowedEndpoints)
}

// MetricsServerOptions configures the metrics endpoint: TLS, and every request authenticated
// (TokenReview) and authorized (SubjectAccessReview for GET /metrics) by the API server, unless
// MetricsInsecure.
func (c *Config) MetricsServerOptions() metricsserver.Options {
	if c.MetricsInsecure {
		return metricsserver.Options{BindAddress: c.MetricsAddr}
	}
	return metricsserver.Options{BindAddress: c.MetricsAddr, SecureServing: true, CertDir: c.MetricsCertDir,
		FilterProvider: filters.WithAuthenticationAndAuthorization}
}

// IssuerRef parses --issuer-secret.
func (c *Config) IssuerRef() (types.NamespacedName, error) {
	ns, name, ok := strings.Cut(c.IssuerSecret, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return types.NamespacedName{}, fmt.Errorf("--issuer-secret %q must be namespace/name of the fleet issuer Secret", c.IssuerSecret)
	}
	return types.NamespacedName{Namespace: ns, Name: name}, nil
}

// leaderElectionID names the leader-election Lease.
const leaderElectionID = "telemetry-operator.telemetry.sourcegraph.com"

// serviceAccountNamespaceFile holds the namespace of a pod's service account.
const serviceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// clusterID is the cluster's default name in the consent ledger: the UID of its kube-system
// namespace, unique per cluster and stable for its lifetime, so two clusters installed from the
// same manifests never pass as one owner.
func clusterID(ctx context.Context, c client.Reader) (string, error) {
	ns := &corev1.Namespace{}
	if err := c.Get(ctx, client.ObjectKey{Name: metav1.NamespaceSystem}, ns); err != nil {
		return "", fmt.Errorf("--cluster-name is not set and the cluster's identity (the kube-system namespace's UID) cannot be read: %w", err)
	}
	id := strings.ToLower(string(ns.UID))
	if !pki.ValidClusterName(id) {
		return "", fmt.Errorf("--cluster-name is not set and the kube-system namespace's UID %q is not a usable name: set --cluster-name", id)
	}
	return id, nil
}

// observeLease reads the leader-election Lease before this manager competes for it: who held
// it and when it was last renewed tell when an operator last watched policies. nil when it
// cannot be read (a first start: no operator ever watched).
func observeLease(ctx context.Context, c client.Reader, namespace string, now time.Time) *controllers.LeaseObservation {
	if namespace == "" {
		raw, err := os.ReadFile(serviceAccountNamespaceFile)
		if err != nil {
			return nil
		}
		namespace = strings.TrimSpace(string(raw))
	}
	lease := &coordinationv1.Lease{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: leaderElectionID}, lease); err != nil || lease.Spec.RenewTime == nil {
		return nil
	}
	o := &controllers.LeaseObservation{RenewTime: lease.Spec.RenewTime.UTC(), Duration: 15 * time.Second, ObservedAt: now}
	if lease.Spec.HolderIdentity != nil {
		o.Holder = *lease.Spec.HolderIdentity
	}
	if lease.Spec.LeaseDurationSeconds != nil {
		o.Duration = time.Duration(*lease.Spec.LeaseDurationSeconds) * time.Second
	}
	return o
}

// NewScheme returns a scheme with the Kubernetes built-ins and this API.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(v1.AddToScheme(s))
	return s
}

// CacheOptions is the manager's cluster-wide cache: its policies, and the onboarded namespaces
// (by label). Everything else it reads lives in the onboarded namespaces' caches.
func CacheOptions(onboarded labels.Selector) cache.Options {
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Namespace{}: {Label: onboarded},
	}}
}

// TenantCacheOptions is the template of each onboarded namespace's cache: only objects labelled
// as managed by this operator, so it never caches (or reads) customer Secrets and ConfigMaps,
// and its memory does not grow with unrelated workloads. The caches hold three watches per
// namespace (controllers.CachedKinds), so what each costs counts: they share one HTTP client
// that does not ask for gzip (an API server's gzipped watch costs its reader a 32 KiB
// decompression window for as long as it is open), and objects are cached without their
// managedFields, which the operator never reads.
func TenantCacheOptions(mgr ctrl.Manager, restCfg *rest.Config) (cache.Options, error) {
	managed := labels.SelectorFromSet(labels.Set{resources.LabelManagedBy: resources.ManagedByValue})
	byObject := map[client.Object]cache.ByObject{}
	for _, k := range controllers.CachedKinds() {
		byObject[k] = cache.ByObject{Label: managed}
	}
	uncompressed := rest.CopyConfig(restCfg)
	uncompressed.DisableCompression = true
	httpClient, err := rest.HTTPClientFor(uncompressed)
	if err != nil {
		return cache.Options{}, fmt.Errorf("creating the namespace caches' HTTP client: %w", err)
	}
	return cache.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper(), HTTPClient: httpClient, ByObject: byObject,
		DefaultTransform: cache.TransformStripManagedFields()}, nil
}

// watchIssuer runs reloader on every change of the fleet issuer Secret, through a cache that
// watches that one Secret (the manager may read no other: its Role names it).
func watchIssuer(mgr ctrl.Manager, restCfg *rest.Config, ref types.NamespacedName, reloader *controllers.IssuerReloader) error {
	c, err := cache.New(restCfg, cache.Options{
		Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper(), HTTPClient: mgr.GetHTTPClient(),
		DefaultNamespaces: map[string]cache.Config{ref.Namespace: {}},
		ByObject:          map[client.Object]cache.ByObject{&corev1.Secret{}: {Field: fields.OneTermEqualSelector("metadata.name", ref.Name)}},
	})
	if err != nil {
		return fmt.Errorf("creating the issuer Secret's cache: %w", err)
	}
	// Added as it is, a cache with per-object settings would be started on the leader only, and
	// a standby's watch would never sync: it goes with the manager's own caches instead.
	if err := mgr.Add(everyReplica{c}); err != nil {
		return err
	}
	reloader.Reader = c
	// Every replica follows the issuer, so a standby that takes over signs with the current one.
	return ctrl.NewControllerManagedBy(mgr).Named("fleet-issuer").
		WithOptions(controller.Options{NeedLeaderElection: ptr.To(false)}).
		WatchesRawSource(source.Kind(c, &corev1.Secret{}, &handler.TypedEnqueueRequestForObject[*corev1.Secret]{})).
		Complete(reloader)
}

// everyReplica is started with the manager's caches, on every replica, leader or not.
type everyReplica struct{ cache.Cache }

// GetCache places it among the manager's caches.
func (c everyReplica) GetCache() cache.Cache { return c.Cache }

// whoAmI names the identity the manager runs as, for the messages that tell an admin whom to
// grant the tenant role.
func whoAmI(ctx context.Context, c client.Client) string {
	review := &authenticationv1.SelfSubjectReview{}
	if err := c.Create(ctx, review); err != nil || review.Status.UserInfo.Username == "" {
		return "the manager's ServiceAccount"
	}
	return review.Status.UserInfo.Username
}

// Deps lets tests replace the clock and entropy; zero values mean the real ones.
type Deps struct {
	Clock  clock.WithTicker
	Random io.Reader
	// Metrics, if nil, are created and registered with controller-runtime's registry.
	Metrics *controllers.Metrics
	// Tenants, if set, is called with the manager's set of onboarded namespaces (tests read
	// through its caches).
	Tenants func(*tenants.Set)
	// Restartable lets a process build the manager more than once (tests that stop and start
	// the operator); controller-runtime otherwise refuses a second controller of the same name.
	Restartable bool
}

// New builds a manager with the controller and probes registered. It loads the fleet issuer
// first and fails, with a message saying what to fix, when it is unusable.
func New(ctx context.Context, restCfg *rest.Config, cfg Config, deps Deps) (ctrl.Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Clock == nil {
		deps.Clock = clock.RealClock{}
	}
	if deps.Metrics == nil {
		deps.Metrics = controllers.NewMetrics(crmetrics.Registry)
	}
	scheme := NewScheme()
	issuerRef, _ := cfg.IssuerRef()
	direct, err := client.New(restCfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	issuer, err := controllers.LoadIssuer(ctx, direct, issuerRef, deps.Clock.Now())
	if err != nil {
		return nil, err
	}
	var receiverRoots *x509.CertPool
	if cfg.ReceiverCAFile != "" {
		pem, err := os.ReadFile(cfg.ReceiverCAFile)
		if err != nil {
			return nil, fmt.Errorf("--receiver-ca-file: %w", err)
		}
		receiverRoots = x509.NewCertPool()
		if !receiverRoots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--receiver-ca-file %s holds no PEM certificate", cfg.ReceiverCAFile)
		}
	}
	cluster := cfg.ClusterName
	if cluster == "" {
		if cluster, err = clusterID(ctx, direct); err != nil {
			return nil, err
		}
	}
	issuers := pki.NewHolder(issuer)
	consentLedger, err := ledger.New(cfg.ReceiverURL, cluster, issuers, receiverRoots)
	if err != nil {
		return nil, err
	}
	onboarded, _ := cfg.Selector()
	var startLease *controllers.LeaseObservation
	if cfg.LeaderElect {
		startLease = observeLease(ctx, direct, cfg.LeaderElectionNS, deps.Clock.Now())
	}

	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                  scheme,
		Cache:                   CacheOptions(onboarded),
		Metrics:                 cfg.MetricsServerOptions(),
		HealthProbeBindAddress:  cfg.ProbeAddr,
		PprofBindAddress:        cfg.PprofAddr,
		LeaderElection:          cfg.LeaderElect,
		LeaderElectionID:        leaderElectionID,
		LeaderElectionNamespace: cfg.LeaderElectionNS,
		// Release the lease on shutdown so a restarted or upgraded manager takes over at once.
		LeaderElectionReleaseOnCancel: true,
		Controller:                    ctrlconfig.Controller{SkipNameValidation: ptr.To(deps.Restartable)},
	})
	if err != nil {
		return nil, fmt.Errorf("creating the manager: %w", err)
	}
	rec := mgr.GetEventRecorder("telemetry-operator")
	images, err := cfg.Images()
	if err != nil {
		return nil, err
	}
	endpoints, err := cfg.Endpoints()
	if err != nil {
		return nil, err
	}
	tenantCache, err := TenantCacheOptions(mgr, restCfg)
	if err != nil {
		return nil, err
	}
	var ctl controller.Controller
	// A reconcile reads each object from the API server once until it writes it (readonce):
	// without watches every read is a request.
	apiReader := readonce.Reader(mgr.GetAPIReader())
	tenantOpts := tenants.Options{
		Config: restCfg, Cache: tenantCache, Kinds: controllers.CachedKinds(), Uncached: controllers.UncachedKinds(),
		Namespaces: mgr.GetCache(), Selector: onboarded, Reviewer: direct, Rules: tenants.Rules,
		RoleName: TenantRole, Subject: whoAmI(ctx, direct), Clock: deps.Clock,
		Watch: func(c cache.Cache) error { return controllers.WatchOwned(ctl, c, scheme, mgr.GetRESTMapper()) },
	}
	var tenantResync time.Duration
	if cfg.WatchTenantNamespaces {
		tenantOpts.Rules = append(slices.Clone(tenants.Rules), tenantwatch.Rules...)
		tenantOpts.RoleName = TenantRole + " and ClusterRole " + TenantWatchRole
	} else {
		tenantOpts.Live, tenantOpts.Watch = apiReader, nil
		tenantResync = cmp.Or(cfg.TenantResync, DefaultTenantResync)
	}
	tenantSet := tenants.New(tenantOpts)
	if err := mgr.Add(tenantSet); err != nil {
		return nil, err
	}
	if deps.Tenants != nil {
		deps.Tenants(tenantSet)
	}
	r := &controllers.TelemetryPolicyReconciler{
		Client:    readonce.Client(tenantSet.Client(mgr.GetClient())),
		Tenants:   tenantSet,
		APIReader: apiReader,
		Scheme:    scheme,
		Recorder:  rec,
		Clock:     deps.Clock,
		Issuers:   issuers,
		Metrics:   deps.Metrics,
		Random:    deps.Random,
		Ledger:    consentLedger,
		Options: controllers.Options{
			CollectorImage: cfg.CollectorImage, Images: images, Endpoints: endpoints, MinCloudTermsVersion: cfg.MinCloudTermsVersion,
			IssuerMinRemaining: cfg.IssuerMinRemaining,
			LedgerRetry:        cfg.LedgerRetry, LedgerResync: cfg.LedgerResync, StartLease: startLease,
			CollectorRBACResync:     cfg.CollectorRBACResync,
			TenantResync:            tenantResync,
			MaxConcurrentReconciles: cfg.MaxConcurrentReconciles,
		},
	}
	issuerChanged := make(chan event.GenericEvent)
	r.IssuerChanged = issuerChanged
	if ctl, err = r.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("setting up the controller: %w", err)
	}
	if err := watchIssuer(mgr, restCfg, issuerRef, &controllers.IssuerReloader{
		Issuers: issuers, SecretRef: issuerRef, Recorder: rec, Clock: deps.Clock, Metrics: deps.Metrics,
		MinRemaining: cfg.IssuerMinRemaining, Elected: mgr.Elected(), Policies: mgr.GetClient(), Changed: issuerChanged,
	}); err != nil {
		return nil, err
	}
	if err := mgr.Add(&controllers.IssuerMonitor{
		Issuers: issuers, SecretRef: issuerRef, Reader: mgr.GetAPIReader(), Recorder: rec,
		Clock: deps.Clock, Metrics: deps.Metrics, Warning: cfg.IssuerExpiryWarning,
	}); err != nil {
		return nil, err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("readyz", func(req *http.Request) error {
		if !mgr.GetCache().WaitForCacheSync(req.Context()) {
			return errors.New("informer caches not synced")
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return mgr, nil
}
