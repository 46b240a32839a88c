/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package localrunner is a development stand-in for a kubelet, for collector Deployments only.
// It materializes a Deployment's ConfigMap and Secret volumes into a private directory (updating
// them atomically, as the kubelet does, when the objects change), runs the collector binary with
// them, replaces the process when the pod template changes (Recreate: the old process is gone
// before the new one starts), stops it when the Deployment goes away (and then plays the garbage
// collector for foreground deletion), and writes the Deployment's status as the cluster would.
// It is not a kubelet: no images, no isolation, no resource limits.
package localrunner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/sourcegraph/telemetry-operator/internal/resources"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
)

// Runner runs collector Deployments as local processes.
type Runner struct {
	Client client.Client
	// Clientset issues ServiceAccount tokens, so collectors run with their own RBAC.
	Clientset kubernetes.Interface
	// RestConfig is the API server the collectors talk to.
	RestConfig *rest.Config
	// CollectorBin is the collector binary.
	CollectorBin string
	// Dir holds each pod's materialized volumes and logs.
	Dir string
	// Log receives the runner's own lines.
	Log io.Writer

	mu    sync.Mutex
	procs map[types.NamespacedName]*proc
}

type proc struct {
	cmd          *exec.Cmd
	done         chan struct{}
	templateHash string
	generation   int64
	root         string
	metricsAddr  string
	exited       bool
	restarts     int
}

// SetupWithManager registers the runner for Deployments, and the Secrets and ConfigMaps they
// mount, labelled as managed by the operator.
func (r *Runner) SetupWithManager(mgr ctrl.Manager) error {
	r.procs = map[types.NamespacedName]*proc{}
	toDeployments := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, obj client.Object) []reconcile.Request {
		list := &appsv1.DeploymentList{}
		if err := r.Client.List(ctx, list, client.InNamespace(obj.GetNamespace())); err != nil {
			return nil
		}
		var out []reconcile.Request
		for _, d := range list.Items {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: d.Namespace, Name: d.Name}})
		}
		return out
	})
	return ctrl.NewControllerManagedBy(mgr).Named("local-workload-runner").
		For(&appsv1.Deployment{}).
		Watches(&corev1.Secret{}, toDeployments).
		Watches(&corev1.ConfigMap{}, toDeployments).
		Complete(r)
}

func (r *Runner) logf(format string, args ...any) {
	if r.Log != nil {
		fmt.Fprintf(r.Log, "[runner] "+format+"\n", args...)
	}
}

// Reconcile makes the local process match the Deployment.
func (r *Runner) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	dep := &appsv1.Deployment{}
	err := r.Client.Get(ctx, req.NamespacedName, dep)
	if apierrors.IsNotFound(err) {
		r.stop(req.NamespacedName, "deployment gone")
		return ctrl.Result{}, nil
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	if dep.Labels[resources.LabelManagedBy] != resources.ManagedByValue {
		return ctrl.Result{}, nil
	}
	if !dep.DeletionTimestamp.IsZero() {
		r.stop(req.NamespacedName, "deployment deleted")
		// Play the garbage collector: with the pods gone, foreground deletion can finish.
		if len(dep.Finalizers) > 0 {
			dep.Finalizers = nil
			if err := r.Client.Update(ctx, dep); err != nil && !apierrors.IsNotFound(err) {
				return ctrl.Result{}, err
			}
		}
		return ctrl.Result{}, nil
	}
	hash := templateHash(dep.Spec.Template)
	r.mu.Lock()
	p := r.procs[req.NamespacedName]
	r.mu.Unlock()
	replicas := int32(1)
	if dep.Spec.Replicas != nil {
		replicas = *dep.Spec.Replicas
	}
	if p != nil && (p.templateHash != hash || replicas == 0) {
		// Recreate: the old process is gone before the new one starts.
		r.stop(req.NamespacedName, "pod template changed")
		if err := r.setStatus(ctx, dep, 0, 0, 0); err != nil {
			return ctrl.Result{}, err
		}
		p = nil
	}
	if replicas == 0 {
		return ctrl.Result{}, r.setStatus(ctx, dep, 0, 0, 0)
	}
	if p == nil {
		if p, err = r.start(ctx, dep, hash); err != nil {
			r.logf("cannot start %s: %v", req.NamespacedName, err)
			_ = r.setStatus(ctx, dep, 0, 0, 0)
			return ctrl.Result{RequeueAfter: 2 * time.Second}, nil
		}
	} else if err := r.materialize(ctx, dep, p.root); err != nil {
		return ctrl.Result{}, err
	}
	if p.exited {
		// Like a kubelet restarting a crashed container, with a growing delay.
		r.stop(req.NamespacedName, "process exited")
		delay := time.Duration(min(p.restarts+1, 10)) * time.Second
		_ = r.setStatus(ctx, dep, 1, 1, 0)
		time.Sleep(delay)
		np, err := r.start(ctx, dep, hash)
		if err != nil {
			return ctrl.Result{RequeueAfter: delay}, nil
		}
		np.restarts = p.restarts + 1
		p = np
	}
	ready := int32(0)
	if r.ready(p) {
		ready = 1
	}
	if err := r.setStatus(ctx, dep, 1, 1, ready); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: time.Second}, nil
}

func (r *Runner) setStatus(ctx context.Context, dep *appsv1.Deployment, replicas, updated, ready int32) error {
	want := appsv1.DeploymentStatus{ObservedGeneration: dep.Generation, Replicas: replicas, UpdatedReplicas: updated,
		ReadyReplicas: ready, AvailableReplicas: ready, UnavailableReplicas: replicas - ready}
	if dep.Status.ObservedGeneration == want.ObservedGeneration && dep.Status.Replicas == replicas &&
		dep.Status.UpdatedReplicas == updated && dep.Status.ReadyReplicas == ready && dep.Status.AvailableReplicas == ready {
		return nil
	}
	dep.Status = want
	err := r.Client.Status().Update(ctx, dep)
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		return nil // a newer version is on its way
	}
	return err
}

func templateHash(t corev1.PodTemplateSpec) string {
	raw, _ := json.Marshal(t)
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:8])
}

// start materializes the pod's volumes and starts the collector.
func (r *Runner) start(ctx context.Context, dep *appsv1.Deployment, hash string) (*proc, error) {
	key := types.NamespacedName{Namespace: dep.Namespace, Name: dep.Name}
	root := filepath.Join(r.Dir, dep.Namespace, dep.Name, fmt.Sprintf("gen-%d-%s", dep.Generation, hash))
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	if err := r.materialize(ctx, dep, root); err != nil {
		return nil, err
	}
	kubeconfig, err := r.serviceAccountKubeconfig(ctx, dep, root)
	if err != nil {
		return nil, err
	}
	if len(dep.Spec.Template.Spec.Containers) == 0 {
		return nil, errors.New("no container")
	}
	c := dep.Spec.Template.Spec.Containers[0]
	addr, err := testenv.FreeAddr()
	if err != nil {
		return nil, err
	}
	args := []string{"--mount-root", root, "--kubeconfig", kubeconfig, "--metrics-addr", addr}
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			a = "--config=" + filepath.Join(root, v)
		}
		args = append(args, a)
	}
	logFile, err := os.OpenFile(filepath.Join(filepath.Dir(root), "collector.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600) //nolint:gosec // runner-owned dir
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(r.CollectorBin, args...) //nolint:gosec // the collector binary
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "GOMEMLIMIT=120MiB")
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), templateHash: hash, generation: dep.Generation, root: root, metricsAddr: addr}
	go func() {
		_ = cmd.Wait()
		_ = logFile.Close()
		r.mu.Lock()
		p.exited = true
		r.mu.Unlock()
		close(p.done)
	}()
	r.mu.Lock()
	r.procs[key] = p
	r.mu.Unlock()
	r.logf("started collector for %s (generation %d, tier %s, pid %d)", key, dep.Generation,
		dep.Spec.Template.Annotations[resources.AnnotationTier], cmd.Process.Pid)
	return p, nil
}

// stop sends SIGTERM, waits for the grace period, then kills; it returns once the process is gone.
func (r *Runner) stop(key types.NamespacedName, why string) {
	r.mu.Lock()
	p := r.procs[key]
	delete(r.procs, key)
	r.mu.Unlock()
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	r.logf("stopped collector for %s (%s)", key, why)
}

// StopAll stops every process (on shutdown).
func (r *Runner) StopAll() {
	r.mu.Lock()
	keys := make([]types.NamespacedName, 0, len(r.procs))
	for k := range r.procs {
		keys = append(keys, k)
	}
	r.mu.Unlock()
	for _, k := range keys {
		r.stop(k, "runner stopping")
	}
}

// Kill kills the collector of a Deployment without warning (for crash tests).
func (r *Runner) Kill(key types.NamespacedName) bool {
	r.mu.Lock()
	p := r.procs[key]
	r.mu.Unlock()
	if p == nil {
		return false
	}
	return p.cmd.Process.Kill() == nil
}

// PID returns the process id of a Deployment's collector (0 when none).
func (r *Runner) PID(key types.NamespacedName) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p := r.procs[key]; p != nil && !p.exited {
		return p.cmd.Process.Pid
	}
	return 0
}

// Root returns the directory holding a Deployment's running pod's materialized volumes (its
// files sit under it at their mount paths), or "" when none runs.
func (r *Runner) Root(key types.NamespacedName) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p := r.procs[key]; p != nil {
		return p.root
	}
	return ""
}

// MetricsAddr returns the address of a Deployment's collector metrics endpoint.
func (r *Runner) MetricsAddr(key types.NamespacedName) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p := r.procs[key]; p != nil {
		return p.metricsAddr
	}
	return ""
}

func (r *Runner) ready(p *proc) bool {
	c := &http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + p.metricsAddr + "/readyz")
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// materialize writes every ConfigMap and Secret volume under root at its mount path, replacing
// changed content atomically through a ..data symlink, as the kubelet does.
func (r *Runner) materialize(ctx context.Context, dep *appsv1.Deployment, root string) error {
	spec := dep.Spec.Template.Spec
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	for _, m := range spec.Containers[0].VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok {
			continue
		}
		dir := filepath.Join(root, m.MountPath)
		var data map[string][]byte
		var items []corev1.KeyToPath
		switch {
		case v.ConfigMap != nil:
			cm := &corev1.ConfigMap{}
			if err := r.Client.Get(ctx, client.ObjectKey{Namespace: dep.Namespace, Name: v.ConfigMap.Name}, cm); err != nil {
				return fmt.Errorf("volume %s: %w", m.Name, err)
			}
			data = map[string][]byte{}
			for k, val := range cm.Data {
				data[k] = []byte(val)
			}
			items = v.ConfigMap.Items
		case v.Secret != nil:
			s := &corev1.Secret{}
			// The runner reads Secrets directly: the instance database Secret is not labelled.
			if err := r.Client.Get(ctx, client.ObjectKey{Namespace: dep.Namespace, Name: v.Secret.SecretName}, s); err != nil {
				return fmt.Errorf("volume %s: %w", m.Name, err)
			}
			data = s.Data
			items = v.Secret.Items
		case v.EmptyDir != nil:
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			continue
		default:
			continue
		}
		files := map[string][]byte{}
		if len(items) > 0 {
			for _, it := range items {
				if d, ok := data[it.Key]; ok {
					files[it.Path] = d
				}
			}
		} else {
			files = data
		}
		if err := writeAtomic(dir, files); err != nil {
			return fmt.Errorf("volume %s: %w", m.Name, err)
		}
	}
	return nil
}

func writeAtomic(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	names := make([]string, 0, len(files))
	h := sha256.New()
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		h.Write([]byte(n))
		h.Write(files[n])
	}
	version := "..v" + hex.EncodeToString(h.Sum(nil)[:6])
	current, _ := os.Readlink(filepath.Join(dir, "..data"))
	if current == version {
		return nil
	}
	vdir := filepath.Join(dir, version)
	if err := os.MkdirAll(vdir, 0o700); err != nil {
		return err
	}
	for n, d := range files {
		if err := os.WriteFile(filepath.Join(vdir, n), d, 0o600); err != nil {
			return err
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(version, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		return err
	}
	for _, n := range names {
		link := filepath.Join(dir, n)
		if _, err := os.Lstat(link); errors.Is(err, os.ErrNotExist) {
			if err := os.Symlink(filepath.Join("..data", n), link); err != nil {
				return err
			}
		}
	}
	if current != "" {
		_ = os.RemoveAll(filepath.Join(dir, current))
	}
	return nil
}

// serviceAccountKubeconfig issues a token for the pod's ServiceAccount, so the collector talks to
// the API server with exactly the permissions its Role grants.
func (r *Runner) serviceAccountKubeconfig(ctx context.Context, dep *appsv1.Deployment, root string) (string, error) {
	sa := dep.Spec.Template.Spec.ServiceAccountName
	tr, err := r.Clientset.CoreV1().ServiceAccounts(dep.Namespace).CreateToken(ctx, sa,
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: new(int64(24 * 3600))}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for ServiceAccount %s: %w", sa, err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = &clientcmdapi.Cluster{Server: r.RestConfig.Host, CertificateAuthorityData: r.RestConfig.CAData}
	cfg.AuthInfos[sa] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: sa, Namespace: dep.Namespace}
	cfg.CurrentContext = "local"
	path := filepath.Join(root, "kubeconfig")
	return path, clientcmd.WriteToFile(*cfg, path)
}
