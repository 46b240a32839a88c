/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Command demo runs the whole system locally (see `make demo`): a real control plane, the
// operator, the receiver, PostgreSQL and a local workload runner in place of a kubelet. It
// applies three policies (EventLevel, CriticalOnly, Off), waits for them, shows what arrived and
// the report, and checks that nothing more than consented left any instance. With DEMO_ONCE=1 it
// exits after the walkthrough, 0 only if every check held; otherwise it stays up until Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/sourcegraph/telemetry-operator/collector/allowlist"
	"github.com/sourcegraph/telemetry-operator/internal/localstack"
	"github.com/sourcegraph/telemetry-operator/internal/seed"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
)

func main() {
	bin := flag.String("bin", "bin", "Directory with manager, collector and receiver binaries.")
	kubectl := flag.String("kubectl", "", "kubectl binary (default: the one next to the control plane).")
	flag.Parse()
	once := os.Getenv("DEMO_ONCE") == "1"
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *kubectl == "" {
		*kubectl = filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
	}
	abs := func(p string) string { a, _ := filepath.Abs(p); return a }
	stack, err := localstack.Start(ctx, localstack.Options{
		Bins: localstack.Binaries{Manager: abs(filepath.Join(*bin, "manager")), Collector: abs(filepath.Join(*bin, "collector")),
			Receiver: abs(filepath.Join(*bin, "receiver")), Kubectl: abs(*kubectl)},
		Log: os.Stdout,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo: starting the local stack:", err)
		os.Exit(1)
	}
	ok := walkthrough(ctx, stack)
	if once {
		stack.Close()
		if !ok {
			fmt.Println("\nDEMO FAILED: a check did not hold (see above)")
			os.Exit(1)
		}
		fmt.Println("\nDEMO OK: every check held")
		return
	}
	fmt.Printf("\nThe stack stays up. Explore it with:\n\n  export KUBECONFIG=%s\n  %s get tp -A\n  %s describe tp -n acme acme\n\n"+
		"Logs: %s/{manager,receiver}.log, %s/pods/*/*/collector.log\nPress Ctrl-C to stop everything.\n",
		stack.Kubeconfig, stack.Opts.Bins.Kubectl, stack.Opts.Bins.Kubectl, stack.Dir, stack.Dir)
	<-ctx.Done()
	fmt.Println("\nstopping…")
	stack.Close()
}

type checker struct{ failed bool }

func (c *checker) check(ok bool, format string, args ...any) {
	mark := "ok  "
	if !ok {
		mark = "FAIL"
		c.failed = true
	}
	fmt.Printf("  [%s] %s\n", mark, fmt.Sprintf(format, args...))
}

// policies are the samples, pointed at the local receiver, with the trial running from now.
func policies(endpoint string) (string, error) {
	var docs []string
	for _, f := range []string{"eventlevel", "criticalonly", "off"} {
		raw, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "samples", "telemetry_v1alpha1_telemetrypolicy_"+f+".yaml"))
		if err != nil {
			return "", err
		}
		obj := map[string]any{}
		if err := yaml.Unmarshal(raw, &obj); err != nil {
			return "", err
		}
		spec := obj["spec"].(map[string]any)
		if exp, ok := spec["export"].(map[string]any); ok {
			exp["endpoint"] = endpoint
			exp["interval"] = "15s"
			exp["startFrom"] = "Beginning"
		}
		if c, ok := spec["contract"].(map[string]any); ok && c["expiresAt"] != nil {
			c["acceptedAt"] = time.Now().Add(-24 * time.Hour).UTC().Format(time.RFC3339)
			c["expiresAt"] = time.Now().Add(30 * 24 * time.Hour).UTC().Format(time.RFC3339)
		}
		out, err := yaml.Marshal(obj)
		if err != nil {
			return "", err
		}
		docs = append(docs, string(out))
	}
	return strings.Join(docs, "---\n"), nil
}

func walkthrough(ctx context.Context, s *localstack.Stack) bool {
	c := &checker{}
	fmt.Println("==> seeding three instance databases with six weeks of synthetic activity (personal data included, to prove it stays home)")
	seeds := map[string]int{"acme": 1, "globex": 2, "initech": 3}
	instances := map[string]*localstack.Instance{}
	for _, name := range []string{"acme", "globex", "initech"} {
		in, err := s.AddInstance(ctx, name, seed.Options{Users: 14, Days: 42, EventsPerUserDay: 6, Seed: uint64(seeds[name])})
		if err != nil {
			fmt.Println("seeding:", err)
			return false
		}
		instances[name] = in
		fmt.Printf("    %-8s %6d events in event_logs\n", name, in.Rows)
	}
	manifest, err := policies(s.ReceiverURL)
	if err != nil {
		fmt.Println(err)
		return false
	}
	path := filepath.Join(s.Dir, "policies.yaml")
	_ = os.WriteFile(path, []byte(manifest), 0o600)
	fmt.Println("==> kubectl apply -f policies.yaml   (acme: EventLevel trial, globex: CriticalOnly legacy terms, initech: Off)")
	out, err := s.Kubectl(ctx, "apply", "-f", path)
	fmt.Print(indent(out))
	c.check(err == nil, "the API server accepted the three policies")

	fmt.Println("==> kubectl wait --for=condition=Ready tp --all -A")
	out, err = s.Kubectl(ctx, "wait", "--for=condition=Ready", "tp", "--all", "-A", "--timeout=180s")
	fmt.Print(indent(out))
	c.check(err == nil, "every policy reports Ready")

	fmt.Println("==> waiting for the collectors to deliver the backlog")
	wantEvents := countAllowListed(ctx, instances["acme"])
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if stored(ctx, s, "events", "acme") >= wantEvents && stored(ctx, s, "aggregates", "globex") > 0 {
			break
		}
		time.Sleep(time.Second)
	}
	// Let one more status update land so the table shows the last export.
	time.Sleep(3 * time.Second)

	fmt.Println("==> kubectl get tp -A")
	out, _ = s.Kubectl(ctx, "get", "tp", "-A")
	fmt.Print(indent(out))

	fmt.Println("==> what the receiver stored")
	for _, name := range []string{"acme", "globex", "initech"} {
		fmt.Printf("    %-8s %6d events, %4d aggregate cells\n", name, stored(ctx, s, "events", name), stored(ctx, s, "aggregates", name))
	}

	fmt.Println("==> receiver report (fleet-wide)")
	out, err = s.Report(ctx, "--limit", "8")
	fmt.Print(indent(out))
	c.check(err == nil, "the report ran")

	fmt.Println("==> checks")
	for name, want := range map[string]string{"acme": "EventLevel", "globex": "CriticalOnly", "initech": "Off"} {
		got, _ := s.Kubectl(ctx, "get", "tp", "-n", name, name, "-o", "jsonpath={.status.effectiveTier}")
		c.check(got == want, "%s runs at effective tier %s (got %q)", name, want, got)
	}
	c.check(stored(ctx, s, "events", "acme") == wantEvents, "acme: every allow-listed event arrived exactly once (%d of %d)", stored(ctx, s, "events", "acme"), wantEvents)
	c.check(stored(ctx, s, "events", "globex") == 0, "globex (CriticalOnly): no per-user events left the instance")
	c.check(stored(ctx, s, "aggregates", "globex") > 0, "globex: anonymous aggregates arrived")
	c.check(stored(ctx, s, "events", "initech")+stored(ctx, s, "aggregates", "initech") == 0, "initech (Off): nothing left the instance")
	out, _ = s.Kubectl(ctx, "get", "deployments", "-n", "initech", "-o", "name")
	c.check(strings.TrimSpace(out) == "", "initech: no collector workload exists")
	leak := personalDataAtReceiver(ctx, s)
	c.check(leak == "", "no personal data reached the receiver%s", leak)
	var unlisted int
	_ = receiverQuery(ctx, s, "SELECT count(*) FROM events WHERE name = ANY($1)", &unlisted, seed.Unlisted)
	c.check(unlisted == 0, "no event the allow-list does not know was exported")
	return !c.failed
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ") + "\n"
}

func countAllowListed(ctx context.Context, in *localstack.Instance) int {
	var n int
	_ = in.Pool.QueryRow(ctx, "SELECT count(*) FROM event_logs WHERE name = ANY($1)", allowlist.Names()).Scan(&n)
	return n
}

func receiverQuery(ctx context.Context, s *localstack.Stack, sql string, dest any, args ...any) error {
	pool, err := poolFor(ctx, s)
	if err != nil {
		return err
	}
	defer pool.Close()
	return pool.QueryRow(ctx, sql, args...).Scan(dest)
}

func stored(ctx context.Context, s *localstack.Stack, table, instance string) int {
	var n int
	_ = receiverQuery(ctx, s, "SELECT count(*) FROM "+table+" WHERE instance_id = $1", &n, instance)
	return n
}

func personalDataAtReceiver(ctx context.Context, s *localstack.Stack) string {
	var dump string
	_ = receiverQuery(ctx, s, "SELECT coalesce((SELECT string_agg(to_jsonb(e)::text, ' ') FROM events e), '') || coalesce((SELECT string_agg(to_jsonb(a)::text, ' ') FROM aggregates a), '')", &dump)
	for _, pii := range seed.PersonalData {
		if strings.Contains(dump, pii) {
			return ": found " + pii
		}
	}
	return ""
}
