/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package localstack runs the whole system on one machine with no cluster: a real control plane
// (kube-apiserver and etcd), PostgreSQL for the instances and for the receiver, the receiver and
// the operator as real processes, and the local workload runner in place of a kubelet. The demo
// and the end-to-end tests both use it.
package localstack

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/sourcegraph/telemetry-operator/internal/localrunner"
	"github.com/sourcegraph/telemetry-operator/internal/operator"
	"github.com/sourcegraph/telemetry-operator/internal/pgtest"
	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
	"github.com/sourcegraph/telemetry-operator/internal/seed"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
)

// Binaries are the programs the stack runs, and the installer whose RBAC it applies.
type Binaries struct {
	Manager, Collector, Receiver, Kubectl string
	// Installer is the rendered dist/install.yaml: the manager runs as its ServiceAccount, with
	// exactly the RBAC it ships.
	Installer string
}

// Options configure the stack.
type Options struct {
	Bins Binaries
	// Dir holds everything the stack writes (default: a new temporary directory).
	Dir string
	// Log receives progress lines and the processes' output.
	Log io.Writer
	// ManagerArgs are extra flags for the operator.
	ManagerArgs []string
	// NoRunner skips the local workload runner (benchmarks drive Deployment status themselves).
	NoRunner bool
	// NoLeaderElection runs the operator without leader election, whose lease renewals would
	// otherwise be the only API writes of an idle operator.
	NoLeaderElection bool
}

// Stack is the running system.
type Stack struct {
	Opts       Options
	Dir        string
	Env        *envtest.Environment
	RestConfig *rest.Config
	// ManagerRestConfig authenticates as the manager's ServiceAccount (with its permissions,
	// where it is onboarded), for measuring what the same requests cost under them.
	ManagerRestConfig *rest.Config
	Client            client.Client
	Clientset         kubernetes.Interface
	Kubeconfig        string
	InstancePG        *pgtest.Server
	ReceiverPG        *pgtest.Server
	ReceiverURL       string
	ReceiverOps       string
	Runner            *localrunner.Runner
	CA                *pkitest.CA
	// ManagerMetrics is the operator's Prometheus endpoint.
	ManagerMetrics string

	// managerKubeconfig authenticates as the manager's ServiceAccount; tenantRole is the
	// ClusterRole bound in each onboarded namespace.
	managerKubeconfig, managerSA, tenantRole string
	// tenantWatchRole is bound beside tenantRole when ManagerArgs turn watching on.
	tenantWatchRole string

	receiver *exec.Cmd
	// receiverAPI and receiverOpsAddr are kept so a restarted receiver listens where it did.
	receiverAPI, receiverOpsAddr string
	manager                      *exec.Cmd
	managerEnd                   chan struct{}
	runnerStop                   context.CancelFunc
	runnerDone                   chan struct{}
}

func (s *Stack) logf(format string, args ...any) {
	if s.Opts.Log != nil {
		fmt.Fprintf(s.Opts.Log, format+"\n", args...)
	}
}

// ClusterName is the name the local operator records consent under at the receiver.
const ClusterName = "local"

// IssuerNamespace and IssuerName locate the fleet issuer Secret.
const (
	IssuerNamespace = "telemetry-system"
	IssuerName      = "telemetry-fleet-issuer"
)

// Start brings everything up. Call Close to stop it all.
func Start(ctx context.Context, o Options) (s *Stack, err error) {
	s = &Stack{Opts: o, Dir: o.Dir}
	// The error returns below set s to nil: close what was started through this copy, or the
	// start's own error would be lost to a nil dereference.
	started := s
	defer func() {
		if err != nil {
			started.Close()
		}
	}()
	if s.Dir == "" {
		if s.Dir, err = os.MkdirTemp("", "telemetry-local-"); err != nil {
			return nil, err
		}
	}
	s.logf("==> starting the local control plane (kube-apiserver + etcd)")
	if s.Env, s.RestConfig, err = testenv.Start(); err != nil {
		return nil, err
	}
	user, err := s.Env.AddUser(envtest.User{Name: "demo-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return nil, err
	}
	s.Kubeconfig = filepath.Join(s.Dir, "kubeconfig")
	if err := os.WriteFile(s.Kubeconfig, kc, 0o600); err != nil {
		return nil, err
	}
	s.RestConfig = user.Config()
	// No client-side rate limit (controller-runtime's default for a kubeconfig, which the
	// manager uses too): client-go's default of 5 requests a second per kind would make every
	// figure measured through this client that limit's, not the API server's or the operator's.
	s.RestConfig.QPS = -1
	if s.Client, err = client.New(s.RestConfig, client.Options{Scheme: operator.NewScheme()}); err != nil {
		return nil, err
	}
	if s.Clientset, err = kubernetes.NewForConfig(s.RestConfig); err != nil {
		return nil, err
	}

	s.logf("==> applying the installer's RBAC; the operator will run as its ServiceAccount")
	if err := s.applyRBAC(ctx); err != nil {
		return nil, err
	}

	s.logf("==> starting PostgreSQL for the instance databases and for the receiver")
	if s.InstancePG, err = pgtest.Start(ctx); err != nil {
		return nil, err
	}
	if s.ReceiverPG, err = pgtest.Start(ctx); err != nil {
		return nil, err
	}
	if err := s.ReceiverPG.CreateDatabase(ctx, "receiver"); err != nil {
		return nil, err
	}
	// The receiver's own plain login, as a database administrator creates it for the shipped
	// Deployment: receiver migrate grants it the receiver's roles and nothing more.
	if err := s.ReceiverPG.Exec(ctx, "receiver", `CREATE ROLE `+ReceiverLogin+` LOGIN`); err != nil {
		return nil, err
	}

	s.logf("==> creating a development fleet issuer and the receiver's certificate")
	if err := s.pki(ctx); err != nil {
		return nil, err
	}
	s.logf("==> starting the receiver")
	if err := s.startReceiver(ctx); err != nil {
		return nil, err
	}
	s.logf("==> starting the operator")
	if err := s.StartManager(ctx); err != nil {
		return nil, err
	}
	if o.NoRunner {
		return s, nil
	}
	s.logf("==> starting the local workload runner (a development stand-in for a kubelet)")
	if err := s.startRunner(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Stack) pki(ctx context.Context) error {
	ca, err := pkitest.NewCA("telemetry local fleet issuer", pkitest.Options{NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour)})
	if err != nil {
		return err
	}
	s.CA = ca
	server, err := ca.ServerCert("telemetry-receiver", []string{"localhost", "127.0.0.1"}, time.Time{})
	if err != nil {
		return err
	}
	for name, data := range map[string][]byte{"issuer.crt": ca.CertPEM, "receiver.crt": server.CertPEM, "receiver.key": server.KeyPEM} {
		if err := os.WriteFile(filepath.Join(s.Dir, name), data, 0o600); err != nil {
			return err
		}
	}
	if err := s.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: IssuerNamespace}}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return s.Client.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: IssuerName, Namespace: IssuerNamespace},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{"tls.crt": ca.CertPEM, "tls.key": ca.KeyPEM, "ca.crt": ca.CertPEM},
	})
}

func (s *Stack) startReceiver(ctx context.Context) error {
	var err error
	if s.receiverAPI == "" {
		if s.receiverAPI, err = testenv.FreeAddr(); err != nil {
			return err
		}
		if s.receiverOpsAddr, err = testenv.FreeAddr(); err != nil {
			return err
		}
	}
	api, ops := s.receiverAPI, s.receiverOpsAddr
	// As the shipped Deployment: migrate as the schema owner (whose DSN the receiver's
	// administrators' commands use too), then serve with the receiver's own login.
	ownerDSN := s.ReceiverPG.DSN("receiver")
	serveDSN := strings.Replace(ownerDSN, "postgres@", ReceiverLogin+"@", 1)
	ownerFile, serveFile := filepath.Join(s.Dir, "receiver-dsn"), filepath.Join(s.Dir, "receiver-serve-dsn")
	for file, dsn := range map[string]string{ownerFile: ownerDSN, serveFile: serveDSN} {
		if err := os.WriteFile(file, []byte(dsn), 0o600); err != nil {
			return err
		}
	}
	log, err := os.OpenFile(filepath.Join(s.Dir, "receiver.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer func() { _ = log.Close() }()                                                                                                    // the process has its own descriptor
	migrate := exec.CommandContext(ctx, s.Opts.Bins.Receiver, "migrate", "--database-dsn-file", ownerFile, "--serve-dsn-file", serveFile) //nolint:gosec // our binary
	migrate.Stdout, migrate.Stderr = log, log
	if err := migrate.Run(); err != nil {
		return fmt.Errorf("receiver migrate (see %s): %w", filepath.Join(s.Dir, "receiver.log"), err)
	}
	cmd := exec.Command(s.Opts.Bins.Receiver, "serve", "--migrate=false", "--listen", api, "--ops-listen", ops, //nolint:gosec // our binary
		"--tls-cert", filepath.Join(s.Dir, "receiver.crt"), "--tls-key", filepath.Join(s.Dir, "receiver.key"),
		"--client-ca", filepath.Join(s.Dir, "issuer.crt"), "--database-dsn-file", serveFile)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return err
	}
	s.receiver = cmd
	_, port, _ := net.SplitHostPort(api)
	s.ReceiverURL = "https://localhost:" + port
	s.ReceiverOps = "http://" + ops
	return waitHTTP(ctx, s.ReceiverOps+"/readyz", 60*time.Second)
}

// RestartReceiver stops the receiver process (SIGTERM) and starts a new one on the same
// addresses and database, as a rollout would: nothing it held in memory survives.
func (s *Stack) RestartReceiver(ctx context.Context) error {
	if s.receiver != nil {
		_ = s.receiver.Process.Signal(syscall.SIGTERM)
		_ = s.receiver.Wait()
		s.receiver = nil
	}
	return s.startReceiver(ctx)
}

// StartManager starts the operator process.
func (s *Stack) StartManager(ctx context.Context) error {
	probe, err := testenv.FreeAddr()
	if err != nil {
		return err
	}
	metrics, err := testenv.FreeAddr()
	if err != nil {
		return err
	}
	s.ManagerMetrics = "http://" + metrics + "/metrics"
	log, err := os.OpenFile(filepath.Join(s.Dir, "manager.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	args := []string{"--kubeconfig", s.managerKubeconfig, "--issuer-secret", IssuerNamespace + "/" + IssuerName,
		// Plain-HTTP metrics on loopback: the benchmark counts the manager's API writes from them.
		// A real deployment keeps the default (TLS, authenticated and authorized scrapes).
		"--collector-image", "telemetry-collector:local", "--health-probe-bind-address", probe, "--metrics-bind-address", metrics, "--metrics-insecure",
		"--receiver-url", s.ReceiverURL, "--cluster-name", ClusterName, "--ledger-retry", "2s"}
	if !s.Opts.NoLeaderElection {
		args = append(args, "--leader-elect", "--leader-election-namespace", IssuerNamespace)
	}
	args = append(args, s.Opts.ManagerArgs...)
	cmd := exec.Command(s.Opts.Bins.Manager, args...) //nolint:gosec // our binary
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return err
	}
	s.manager = cmd
	s.managerEnd = make(chan struct{})
	go func() { _ = cmd.Wait(); _ = log.Close(); close(s.managerEnd) }()
	return waitHTTP(ctx, "http://"+probe+"/readyz", 60*time.Second)
}

// ManagerPID returns the operator's process id (0 when not running).
func (s *Stack) ManagerPID() int {
	if s.manager == nil {
		return 0
	}
	return s.manager.Process.Pid
}

// ManagerExited reports whether the operator process has exited on its own (for example after
// losing its leader lease), which a kubelet would answer with a restart.
func (s *Stack) ManagerExited() bool {
	if s.managerEnd == nil {
		return false
	}
	select {
	case <-s.managerEnd:
		return true
	default:
		return false
	}
}

// StopManager stops the operator (SIGTERM, as a rollout or node drain would).
func (s *Stack) StopManager() {
	if s.manager == nil {
		return
	}
	_ = s.manager.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.managerEnd:
	case <-time.After(30 * time.Second):
		_ = s.manager.Process.Kill()
		<-s.managerEnd
	}
	s.manager = nil
}

func (s *Stack) startRunner() error {
	mgr, err := ctrl.NewManager(s.RestConfig, ctrl.Options{Scheme: operator.NewScheme(), Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		return err
	}
	s.Runner = &localrunner.Runner{Client: mgr.GetClient(), Clientset: s.Clientset, RestConfig: s.RestConfig,
		CollectorBin: s.Opts.Bins.Collector, Dir: filepath.Join(s.Dir, "pods"), Log: s.Opts.Log}
	if err := s.Runner.SetupWithManager(mgr); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.runnerStop = cancel
	s.runnerDone = make(chan struct{})
	go func() {
		defer close(s.runnerDone)
		if err := mgr.Start(ctx); err != nil {
			s.logf("runner stopped: %v", err)
		}
	}()
	return nil
}

// Instance is a simulated managed instance.
type Instance struct {
	Name string
	DSN  string
	Pool *pgxpool.Pool
	Rows int
}

// AddInstance creates a namespace and an instance database seeded with o, and the Secret that
// holds the collector's (read-only) DSN.
func (s *Stack) AddInstance(ctx context.Context, name string, o seed.Options) (*Instance, error) {
	return s.AddInstanceOnboardedBy(ctx, name, o, s.Onboard)
}

// AddInstanceOnboardedBy is AddInstance with the namespace made (and onboarded, or not) by
// onboard, which must create it.
func (s *Stack) AddInstanceOnboardedBy(ctx context.Context, name string, o seed.Options, onboard func(context.Context, string) error) (*Instance, error) {
	db := strings.ReplaceAll(name, "-", "_")
	if err := s.InstancePG.CreateDatabase(ctx, db); err != nil {
		return nil, err
	}
	if err := s.InstancePG.Exec(ctx, db, seed.Schema); err != nil {
		return nil, err
	}
	pool, err := pgxpool.New(ctx, s.InstancePG.DSN(db))
	if err != nil {
		return nil, err
	}
	n := 0
	if o.Users > 0 {
		if n, err = seed.Generate(ctx, pool, o); err != nil {
			return nil, err
		}
	}
	readOnly := strings.Replace(s.InstancePG.DSN(db), "postgres@", "telemetry_reader@", 1)
	if err := onboard(ctx, name); err != nil {
		return nil, err
	}
	if err := s.Client.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-frontend-db", Namespace: name},
		StringData: map[string]string{"dsn": readOnly},
	}); err != nil {
		return nil, err
	}
	return &Instance{Name: name, DSN: readOnly, Pool: pool, Rows: n}, nil
}

// Kubectl runs the stack's kubectl with its kubeconfig.
func (s *Stack) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, s.Opts.Bins.Kubectl, append([]string{"--kubeconfig", s.Kubeconfig}, args...)...) //nolint:gosec // our kubectl
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Report runs the receiver's report command.
func (s *Stack) Report(ctx context.Context, args ...string) (string, error) {
	return s.Receiver(ctx, append([]string{"report"}, args...)...)
}

// ReceiverLogin is the receiver's own database login: `receiver serve` works with it, and it
// can neither migrate nor hand consent records over.
const ReceiverLogin = "telemetry_receiver"

// Receiver runs a receiver command (report, consent, erasures) against the stack's database, as
// the receiver's operators do: with the schema owner's DSN (a member of every role).
func (s *Stack) Receiver(ctx context.Context, args ...string) (string, error) {
	if len(args) == 0 {
		return "", fmt.Errorf("no receiver command")
	}
	// The database flag belongs to the (last) subcommand: "consent show --instance x" takes it
	// after "show".
	head := 1
	if args[0] == "consent" && len(args) > 1 {
		head = 2
	}
	full := append(append(append([]string{}, args[:head]...), "--database-dsn-file", filepath.Join(s.Dir, "receiver-dsn")), args[head:]...)
	cmd := exec.CommandContext(ctx, s.Opts.Bins.Receiver, full...) //nolint:gosec // our binary
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Close stops everything the stack started, in reverse order.
func (s *Stack) Close() {
	if s.runnerStop != nil {
		s.runnerStop()
		<-s.runnerDone
		s.Runner.StopAll()
	}
	s.StopManager()
	if s.receiver != nil {
		_ = s.receiver.Process.Signal(syscall.SIGTERM)
		_ = s.receiver.Wait()
	}
	if s.InstancePG != nil {
		s.InstancePG.Close()
	}
	if s.ReceiverPG != nil {
		s.ReceiverPG.Close()
	}
	if s.Env != nil {
		_ = testenv.Stop(s.Env)
	}
	if s.Opts.Dir == "" && s.Dir != "" {
		_ = os.RemoveAll(s.Dir) // a directory of its own making: logs, kubeconfigs, keys
	}
}

func waitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := c.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s", url, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
