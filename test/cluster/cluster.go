/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package cluster runs a real single-node Kubernetes cluster on this machine for the
// end-to-end tests: kube-apiserver and etcd (started by envtest), kube-controller-manager,
// kube-scheduler and a kubelet, all built from k8s.io/kubernetes at one version, and containerd
// with runc from Debian's packages, each started by hand with its own root, state and socket
// under one temporary directory. Pods run with host networking and every endpoint is on
// loopback: the cluster has no pod network, kube-proxy or DNS, and nothing is sent to a
// private-range address. Close stops every process by its own id, removes the pods' containers
// and mounts, and deletes the directory.
//
// What it took, found from the components' own errors: the kubelet refuses a loopback
// --node-ip ("nodeIP can't be loopback address"), so the node is named "localhost" and the API
// server reaches it by that Hostname address; kube-apiserver refuses a loopback
// --advertise-address with an endpoint reconciler ("may not be in the loopback range"), so the
// reconciler is off; containerd reports the network not ready until it has loaded a CNI
// configuration ("cni plugin not initialized"), so it gets one that is never called; envtest turns
// the ServiceAccount admission plugin off, which would leave pods without API tokens.
//
// This is test harness, not shipped code.
package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
)

// NodeName is the one node's name. It is also the node's Hostname address, which the API server
// dials for logs and exec: "localhost" keeps that on loopback. (The kubelet refuses a loopback
// --node-ip, so the node's InternalIP, and host-network pods' IP, is the machine's address;
// nothing is sent to it: probes name 127.0.0.1 as their host.)
const NodeName = "localhost"

// PauseImage is the sandbox image the cluster builds and imports (no registry is reachable).
const PauseImage = "docker.io/library/telemetry-test-pause:1"

// Options configure the cluster.
type Options struct {
	// Bin holds kube-apiserver, etcd, kubectl, kube-controller-manager, kube-scheduler and kubelet.
	Bin string
	// Images are OCI archives to import into the node's containerd (the project's images).
	Images []string
	// PauseArchive is the pause image's OCI archive (named PauseImage).
	PauseArchive string
	// Log receives progress lines.
	Log io.Writer
}

// Cluster is the running cluster.
type Cluster struct {
	Dir        string
	Env        *envtest.Environment
	RestConfig *rest.Config
	Client     client.Client
	Clientset  kubernetes.Interface
	// Kubeconfig authenticates as a cluster administrator.
	Kubeconfig string
	// APIHost and APIPort are the API server's loopback address, for in-cluster clients
	// (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT).
	APIHost, APIPort string
	// Socket is containerd's CRI socket.
	Socket string
	// KubeletPort is the kubelet API's port on 127.0.0.1.
	KubeletPort string

	opts  Options
	procs []*proc
	// sysctls are the kernel parameters the kubelet may change, as they were before it started.
	sysctls map[string]string
}

// proc is a process the cluster started.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

func (c *Cluster) logf(format string, args ...any) {
	if c.opts.Log != nil {
		fmt.Fprintf(c.opts.Log, format+"\n", args...)
	}
}

// Start brings the cluster up and waits for the node to be Ready.
func Start(ctx context.Context, o Options) (_ *Cluster, err error) {
	c := &Cluster{opts: o}
	begin := time.Now()
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if os.Geteuid() != 0 {
		return nil, errors.New("cluster: the kubelet and containerd need root")
	}
	for _, b := range []string{"kube-controller-manager", "kube-scheduler", "kubelet"} {
		if _, err := os.Stat(filepath.Join(o.Bin, b)); err != nil {
			return nil, fmt.Errorf("cluster: %s not built (make cluster-tools): %w", b, err)
		}
	}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr"} {
		if _, err := exec.LookPath(b); err != nil {
			return nil, fmt.Errorf("cluster: %s not installed (make cluster-tools installs containerd and runc): %w", b, err)
		}
	}
	// Short: containerd's socket path must fit a unix socket address.
	if c.Dir, err = os.MkdirTemp("", "tcl-"); err != nil {
		return nil, err
	}
	c.logf("==> starting the control plane (kube-apiserver + etcd)")
	if err := c.startAPIServer(); err != nil {
		return nil, err
	}
	c.logf("==> starting containerd and importing images")
	if err := c.startContainerd(ctx); err != nil {
		return nil, err
	}
	for _, img := range append([]string{o.PauseArchive}, o.Images...) {
		if err := c.Import(ctx, img); err != nil {
			return nil, err
		}
	}
	c.logf("==> starting kube-controller-manager, kube-scheduler and the kubelet")
	if err := c.startControllers(); err != nil {
		return nil, err
	}
	if err := c.startKubelet(); err != nil {
		return nil, err
	}
	if err := c.waitNodeReady(ctx, 2*time.Minute); err != nil {
		return nil, err
	}
	c.logf("==> node %s is Ready, %.0f s after the start", NodeName, time.Since(begin).Seconds())
	return c, nil
}

// startAPIServer starts kube-apiserver and etcd with the ServiceAccount admission plugin on (it
// gives pods their API tokens; envtest turns it off) and writes an admin kubeconfig.
func (c *Cluster) startAPIServer() error {
	certDir := filepath.Join(c.Dir, "apiserver")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return err
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(testenv.RepoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: c.opts.Bin,
	}
	apiLog, err := os.Create(filepath.Join(c.Dir, "kube-apiserver.log"))
	if err != nil {
		return err
	}
	defer func() { _ = apiLog.Close() }() // the process has its own descriptor
	env.ControlPlane.APIServer = &envtest.APIServer{CertDir: certDir, Out: apiLog, Err: apiLog}
	// The kubelet's API (logs, exec) takes only a client certificate of its own CA, which the
	// API server presents: no one else on the machine may use it.
	kubeletCA, err := pkitest.NewCA("test cluster kubelet client CA", pkitest.Options{})
	if err != nil {
		return err
	}
	apiClient, err := kubeletCA.ClientCert("kube-apiserver")
	if err != nil {
		return err
	}
	for name, data := range map[string][]byte{"kubelet-client-ca.crt": kubeletCA.CertPEM, "apiserver-kubelet-client.crt": apiClient.CertPEM, "apiserver-kubelet-client.key": apiClient.KeyPEM} {
		if err := os.WriteFile(filepath.Join(c.Dir, name), data, 0o600); err != nil {
			return err
		}
	}
	args := env.ControlPlane.GetAPIServer().Configure()
	args.Set("kubelet-client-certificate", filepath.Join(c.Dir, "apiserver-kubelet-client.crt"))
	args.Set("kubelet-client-key", filepath.Join(c.Dir, "apiserver-kubelet-client.key"))
	args.Disable("disable-admission-plugins")
	// The default service's endpoints would name the machine's first address; nothing here
	// may send to it, so there are none (in-cluster clients are pointed at loopback instead).
	args.Set("advertise-address", "127.0.0.1")
	args.Set("endpoint-reconciler-type", "none")
	// Logs and exec go to the node's Hostname address, "localhost" (see NodeName).
	args.Set("kubelet-preferred-address-types", "Hostname")
	cfg, err := env.Start()
	if err != nil {
		// envtest can fail after its processes are up (installing the CRDs) without stopping them.
		_ = env.Stop()
		return fmt.Errorf("starting the control plane from %s: %w\n%s", c.opts.Bin, err, c.tail("kube-apiserver", 20))
	}
	c.Env, c.RestConfig = env, cfg
	host, port, err := net.SplitHostPort(strings.TrimPrefix(cfg.Host, "https://"))
	if err != nil {
		return err
	}
	c.APIHost, c.APIPort = host, port
	if c.Client, err = client.New(cfg, client.Options{}); err != nil {
		return err
	}
	if c.Clientset, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	if c.Kubeconfig, err = c.kubeconfig("admin", "cluster-admin", "system:masters"); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.Dir, "ca.crt"), cfg.CAData, 0o600)
}

// kubeconfig writes a kubeconfig for a client-certificate user.
func (c *Cluster) kubeconfig(file, user string, groups ...string) (string, error) {
	u, err := c.Env.AddUser(envtest.User{Name: user, Groups: groups}, nil)
	if err != nil {
		return "", err
	}
	kc, err := u.KubeConfig()
	if err != nil {
		return "", err
	}
	path := filepath.Join(c.Dir, file+".kubeconfig")
	return path, os.WriteFile(path, kc, 0o600)
}

// containerdConfig: everything under the cluster's directory. restrict_oom_score_adj because
// root here lacks CAP_SYS_RESOURCE and cannot lower oom_score_adj (runc fails with "can't get
// final child's PID from pipe" otherwise); no AppArmor on this machine; no pod network: only
// host-network pods run.
const containerdConfig = `version = 2
root = "{{dir}}/root"
state = "{{dir}}/state"
[grpc]
  address = "{{dir}}/c.sock"
[ttrpc]
  address = "{{dir}}/c.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{{dir}}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{{pause}}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{{dir}}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{{dir}}/cni/bin"
    conf_dir = "{{dir}}/cni/net.d"
`

func (c *Cluster) startContainerd(ctx context.Context) error {
	dir := filepath.Join(c.Dir, "containerd")
	for _, d := range []string{"root", "state", "opt", "runc", "cni/bin", "cni/net.d"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return err
		}
	}
	cfg := strings.NewReplacer("{{dir}}", dir, "{{pause}}", PauseImage).Replace(containerdConfig)
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return err
	}
	// The runtime reports its network ready once it has loaded a CNI configuration. This one
	// gives a pod nothing but an isolated loopback; the cluster's pods use the host network and
	// never call it.
	if err := os.WriteFile(filepath.Join(dir, "cni", "net.d", "10-isolated.conflist"),
		[]byte(`{"cniVersion": "0.4.0", "name": "isolated", "plugins": [{"type": "loopback"}]}`), 0o600); err != nil {
		return err
	}
	c.Socket = filepath.Join(dir, "c.sock")
	if _, err := c.start("containerd", "containerd", "--config", path); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := c.ctr(ctx, "version"); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd did not answer on %s: %s", c.Socket, c.tail("containerd", 20))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ctr runs containerd's client in the kubelet's namespace (k8s.io).
func (c *Cluster) ctr(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", c.Socket, "--namespace", "k8s.io"}, args...)...).CombinedOutput() //nolint:gosec // test harness
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Import loads an OCI archive into the node's image store, under the name its
// io.containerd.image.name annotation gives.
func (c *Cluster) Import(ctx context.Context, archive string) error {
	_, err := c.ctr(ctx, "images", "import", "--no-unpack=false", archive)
	return err
}

// Images lists the image names the node holds.
func (c *Cluster) Images(ctx context.Context) ([]string, error) {
	out, err := c.ctr(ctx, "images", "list", "-q")
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

// Process is a container's main process on the node.
type Process struct {
	PID  int
	UID  int
	Args string
}

// ContainerProcesses lists the running containers' main processes (the pause containers
// included), with the user each runs as, read from /proc.
func (c *Cluster) ContainerProcesses(ctx context.Context) ([]Process, error) {
	out, err := c.ctr(ctx, "tasks", "list")
	if err != nil {
		return nil, err
	}
	var procs []Process
	for _, line := range strings.Split(out, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 3 || f[2] != "RUNNING" {
			continue
		}
		pid, err := strconv.Atoi(f[1])
		if err != nil {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc", f[1], "status"))
		if err != nil {
			continue // exited meanwhile
		}
		p := Process{PID: pid, UID: -1}
		for _, l := range strings.Split(string(status), "\n") {
			if ids, ok := strings.CutPrefix(l, "Uid:"); ok {
				if fs := strings.Fields(ids); len(fs) > 0 {
					p.UID, _ = strconv.Atoi(fs[0])
				}
			}
		}
		args, _ := os.ReadFile(filepath.Join("/proc", f[1], "cmdline"))
		p.Args = strings.TrimSpace(strings.ReplaceAll(string(args), "\x00", " "))
		procs = append(procs, p)
	}
	return procs, nil
}

func (c *Cluster) startControllers() error {
	kc, err := c.kubeconfig("controllers", "system:kube-controller-manager", "system:masters")
	if err != nil {
		return err
	}
	// The legacy token controller is off: pods get bound tokens through the TokenRequest API.
	// Secure serving is off (port 0): nothing here scrapes them.
	if _, err := c.start("kube-controller-manager", filepath.Join(c.opts.Bin, "kube-controller-manager"),
		"--kubeconfig", kc, "--controllers=*,-serviceaccount-token", "--leader-elect=false",
		"--root-ca-file", filepath.Join(c.Dir, "ca.crt"), "--secure-port=0",
		"--node-monitor-grace-period=40s", "--concurrent-gc-syncs=5", "--v=1"); err != nil {
		return err
	}
	_, err = c.start("kube-scheduler", filepath.Join(c.opts.Bin, "kube-scheduler"),
		"--kubeconfig", kc, "--leader-elect=false", "--secure-port=0", "--v=1")
	return err
}

// kubeletConfig: its API only for the API server's client certificate; cgroupfs and no QoS hierarchy (this machine mounts cgroup v1), nothing reserved
// or evicted for, secret volumes re-synced every 10 s, everything on loopback: pods resolve
// names at 127.0.0.1 (nothing answers; nothing here looks a name up), and no iptables chains.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
address: 127.0.0.1
port: {{port}}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {{healthz}}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: {{clientca}}
authorization:
  mode: AlwaysAllow
syncFrequency: 10s
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: {{logs}}
resolvConf: {{resolv}}
serializeImagePulls: false
localStorageCapacityIsolation: false
makeIPTablesUtilChains: false
`

func (c *Cluster) startKubelet() error {
	kc, err := c.kubeconfig("kubelet", "system:node:"+NodeName, "system:nodes", "system:masters")
	if err != nil {
		return err
	}
	dir := filepath.Join(c.Dir, "kubelet")
	for _, d := range []string{"root", "logs", "pki"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return err
		}
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	c.KubeletPort = port
	healthz, err := freePort()
	if err != nil {
		return err
	}
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\n"), 0o644); err != nil { //nolint:gosec // read by pods
		return err
	}
	cfg := strings.NewReplacer("{{port}}", port, "{{healthz}}", healthz, "{{logs}}", filepath.Join(dir, "logs"), "{{resolv}}", resolv,
		"{{clientca}}", filepath.Join(c.Dir, "kubelet-client-ca.crt")).Replace(kubeletConfig)
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return err
	}
	// The kubelet sets kernel parameters it wants; they are put back on Close.
	c.sysctls = readSysctls()
	_, err = c.start("kubelet", filepath.Join(c.opts.Bin, "kubelet"),
		"--config", path, "--kubeconfig", kc, "--container-runtime-endpoint", "unix://"+c.Socket,
		"--root-dir", filepath.Join(dir, "root"), "--cert-dir", filepath.Join(dir, "pki"),
		"--hostname-override", NodeName, "--v=1")
	return err
}

func (c *Cluster) waitNodeReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		node := &corev1.Node{}
		if err := c.Client.Get(ctx, client.ObjectKey{Name: NodeName}, node); err == nil {
			for _, cond := range node.Status.Conditions {
				if cond.Type == corev1.NodeReady {
					if cond.Status == corev1.ConditionTrue {
						return nil
					}
					last = cond.Reason + ": " + cond.Message
				}
			}
		} else {
			last = err.Error()
		}
		for _, p := range c.procs {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited: %s", p.name, c.tail(p.name, 30))
			default:
			}
		}
		time.Sleep(time.Second)
	}
	return fmt.Errorf("node %s not Ready after %s (%s); kubelet log:\n%s", NodeName, timeout, last, c.tail("kubelet", 40))
}

// start runs a process with its output in <dir>/<name>.log, in its own process group.
func (c *Cluster) start(name, bin string, args ...string) (*proc, error) {
	log, err := os.Create(filepath.Join(c.Dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...) //nolint:gosec // test harness
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group, and killed if the test process dies without Close (interrupted,
	// timed out): the kubelet and containerd must not outlive it. The parent-death signal is
	// tied to the starting thread, so the thread is kept for the start.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: log}
	go func() { _ = cmd.Wait(); close(p.done) }()
	c.procs = append(c.procs, p)
	return p, nil
}

// Log returns a process's output so far.
func (c *Cluster) Log(name string) string {
	raw, _ := os.ReadFile(filepath.Join(c.Dir, name+".log")) //nolint:gosec // our own file
	return string(raw)
}

// tail returns the last n lines of a process's output.
func (c *Cluster) tail(name string, n int) string {
	lines := strings.Split(strings.TrimRight(c.Log(name), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Close deletes every workload and pod (so the kubelet stops their containers and unmounts
// their volumes), stops the processes it started by their ids, newest first, removes whatever
// containers are left (and, should one outlive containerd, its shim and processes), unmounts
// what is mounted under the cluster's directory and deletes it.
func (c *Cluster) Close() {
	if c.Clientset != nil && c.running("kubelet") {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		c.drain(ctx)
		cancel()
	}
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		if p.name == "containerd" {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			c.removeContainers(ctx)
			cancel()
		}
		stop(p)
		if p.name == "containerd" {
			c.killShims()
		}
	}
	restoreSysctls(c.sysctls)
	if c.Env != nil {
		_ = c.Env.Stop()
	}
	if c.Dir != "" {
		unmountUnder(c.Dir)
		removeLogLinks(c.Dir)
		_ = os.RemoveAll(c.Dir)
	}
}

func (c *Cluster) running(name string) bool {
	for _, p := range c.procs {
		if p.name == name {
			select {
			case <-p.done:
				return false
			default:
				return true
			}
		}
	}
	return false
}

// drain deletes every Deployment, ReplicaSet and pod until no pod is left: a controller
// running in the cluster (the operator) may recreate what it owns until its own pod is gone.
func (c *Cluster) drain(ctx context.Context) {
	for ctx.Err() == nil {
		nss, err := c.Clientset.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err != nil {
			return
		}
		for _, ns := range nss.Items {
			_ = c.Clientset.AppsV1().Deployments(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
			_ = c.Clientset.AppsV1().ReplicaSets(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
			_ = c.Clientset.CoreV1().Pods(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptrTo[int64](1)}, metav1.ListOptions{})
		}
		pods, err := c.Clientset.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err != nil || len(pods.Items) == 0 {
			return
		}
		time.Sleep(time.Second)
	}
}

// removeContainers stops and removes whatever containers, tasks and sandboxes the kubelet left.
func (c *Cluster) removeContainers(ctx context.Context) {
	out, err := c.ctr(ctx, "containers", "list", "-q")
	if err != nil {
		return
	}
	for _, id := range strings.Fields(out) {
		_, _ = c.ctr(ctx, "tasks", "delete", "--force", id)
		_, _ = c.ctr(ctx, "containers", "delete", id)
	}
}

// killShims kills any runc shim of this cluster's containerd still running once containerd is
// stopped, and the container processes under it (a shim outlives containerd by design).
func (c *Cluster) killShims() {
	if c.Socket == "" {
		return
	}
	procs, _ := os.ReadDir("/proc")
	parent := map[int]int{}
	var shims []int
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			// pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
			if f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:])); len(f) > 1 {
				parent[pid], _ = strconv.Atoi(f[1])
			}
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.Contains(string(cmdline), "containerd-shim") && strings.Contains(string(cmdline), c.Socket) {
			shims = append(shims, pid)
		}
	}
	for _, shim := range shims {
		for pid, pp := range parent {
			if pp == shim {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		_ = syscall.Kill(shim, syscall.SIGKILL)
	}
}

// stop stops a process and its process group (SIGTERM, SIGKILL after 15 s). Shims and their
// containers run in sessions of their own, outside it.
func stop(p *proc) {
	select {
	case <-p.done:
	default:
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
	_ = p.log.Close()
}

// unmountUnder unmounts every mount point under dir, deepest first.
func unmountUnder(dir string) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return
	}
	defer func() { _ = f.Close() }()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 1 {
			p := unescapeMount(fields[1])
			if p == dir || strings.HasPrefix(p, dir+"/") {
				points = append(points, p)
			}
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	for _, p := range points {
		if err := syscall.Unmount(p, 0); err != nil {
			_ = syscall.Unmount(p, syscall.MNT_DETACH)
		}
	}
}

// unescapeMount undoes /proc/mounts' octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeLogLinks removes the symbolic links the kubelet made in /var/log/containers to logs
// under dir (its path for them is fixed).
func removeLogLinks(dir string) {
	entries, err := os.ReadDir("/var/log/containers")
	if err != nil {
		return
	}
	for _, e := range entries {
		p := filepath.Join("/var/log/containers", e.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, dir+"/") {
			_ = os.Remove(p)
		}
	}
}

// kubeletSysctls are the kernel parameters the kubelet sets at start (unless
// protectKernelDefaults, which instead refuses to start where they differ).
var kubeletSysctls = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

func readSysctls() map[string]string {
	m := map[string]string{}
	for _, k := range kubeletSysctls {
		if v, err := os.ReadFile(filepath.Join("/proc/sys", k)); err == nil {
			m[k] = strings.TrimSpace(string(v))
		}
	}
	return m
}

func restoreSysctls(m map[string]string) {
	for k, v := range m {
		_ = os.WriteFile(filepath.Join("/proc/sys", k), []byte(v+"\n"), 0o644) //nolint:gosec // /proc/sys
	}
}

func freePort() (string, error) {
	addr, err := testenv.FreeAddr()
	if err != nil {
		return "", err
	}
	_, port, err := net.SplitHostPort(addr)
	return port, err
}

func ptrTo[T any](v T) *T { return &v }
