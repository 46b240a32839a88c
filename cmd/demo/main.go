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
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/jackc/pgx/v5/pgxpool"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/internal/localstack"
	"github.com/sourcegraph/telemetry-operator/internal/seed"
	"github.com/sourcegraph/telemetry-operator/test/fleetcheck"
)

func main() {
	bin := flag.String("bin", "bin", "Directory with manager, collector and receiver binaries.")
	kubectl := flag.String("kubectl", "", "kubectl binary (default: the one next to the control plane).")
	installer := flag.String("installer", "dist/install.yaml", "The rendered installer (make build-installer): the operator runs with its RBAC.")
	flag.Parse()
	// The runner prints its own lines; controller-runtime's internal logging is not wanted here.
	logf.SetLogger(logr.Discard())
	once := os.Getenv("DEMO_ONCE") == "1"
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *kubectl == "" {
		*kubectl = filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
	}
	abs := func(p string) string { a, _ := filepath.Abs(p); return a }
	stack, err := localstack.Start(ctx, localstack.Options{
		Bins: localstack.Binaries{Manager: abs(filepath.Join(*bin, "manager")), Collector: abs(filepath.Join(*bin, "collector")),
			Receiver: abs(filepath.Join(*bin, "receiver")), Kubectl: abs(*kubectl), Installer: abs(*installer)},
		Log: os.Stdout,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo: starting the local stack:", err)
		os.Exit(1)
	}
	plugin := abs(filepath.Join(*bin, "kubectl-telemetry"))
	ok := walkthrough(ctx, stack, plugin)
	if once {
		stack.Close()
		if !ok {
			fmt.Println("\nDEMO FAILED: a check did not hold (see above)")
			os.Exit(1)
		}
		fmt.Println("\nDEMO OK: every check held")
		return
	}
	fmt.Printf("\nThe stack stays up. Explore it with:\n\n  export KUBECONFIG=%s\n  %s get tp -A\n  %s describe tp -n acme acme\n  %s status -n acme acme\n\n"+
		"Logs: %s/{manager,receiver}.log, %s/pods/*/*/collector.log\nPress Ctrl-C to stop everything.\n",
		stack.Kubeconfig, stack.Opts.Bins.Kubectl, stack.Opts.Bins.Kubectl, plugin, stack.Dir, stack.Dir)
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

// acmeAccepted is when acme accepted the trial's terms in the demo: thirty days ago, inside the
// six weeks of seeded history, so the first twelve days must never leave.
var acmeAccepted = time.Now().Add(-30 * 24 * time.Hour).UTC().Truncate(time.Second)

func walkthrough(ctx context.Context, s *localstack.Stack, pluginPath string) bool {
	c := &checker{}
	pool, err := pgxpool.New(ctx, s.ReceiverPG.DSN("receiver"))
	if err != nil {
		fmt.Println("receiver database:", err)
		return false
	}
	defer pool.Close()
	db := fleetcheck.Receiver{Pool: pool}
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
	manifest, err := fleetcheck.SamplePolicies(s.ReceiverURL, "15s", acmeAccepted)
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

	fmt.Println("==> waiting for the collectors to deliver the backlog (acme: what was recorded since its terms were accepted)")
	wantEvents := fleetcheck.AllowListed(ctx, instances["acme"].Pool, acmeAccepted, time.Now().Add(time.Hour))
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if db.Stored(ctx, "events", "acme") >= wantEvents && db.Stored(ctx, "aggregates", "globex") > 0 {
			break
		}
		time.Sleep(time.Second)
	}
	// Let one more status update land so the table shows the last export.
	time.Sleep(3 * time.Second)

	fmt.Println("==> kubectl get tp -A")
	out, _ = s.Kubectl(ctx, "get", "tp", "-A")
	fmt.Print(indent(out))

	// The kubectl plugin cloud ops use (bin/kubectl-telemetry; on PATH it is `kubectl telemetry`).
	plugin := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, pluginPath, append([]string{"--kubeconfig", s.Kubeconfig}, args...)...) //nolint:gosec // our binary
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	fmt.Println("==> kubectl telemetry check   (CRD, manager, fleet issuer, receiver, consent ledger)")
	out, err = plugin("check")
	fmt.Print(indent(out))
	c.check(err == nil, "kubectl telemetry check passes")
	fmt.Println("==> kubectl telemetry status -A")
	out, err = plugin("status", "-A")
	fmt.Print(indent(out))
	c.check(err == nil && strings.Contains(out, "AsDeclared"), "kubectl telemetry status -A shows the fleet")

	fmt.Println("==> what the receiver stored")
	for _, name := range []string{"acme", "globex", "initech"} {
		fmt.Printf("    %-8s %6d events, %4d aggregate cells\n", name, db.Stored(ctx, "events", name), db.Stored(ctx, "aggregates", name))
	}

	fmt.Println("==> receiver report (fleet-wide)")
	out, err = s.Report(ctx, "--limit", "8")
	fmt.Print(indent(out))
	c.check(err == nil, "the report ran")

	fmt.Println("==> receiver exported --instance globex --limit 1   (what globex's admin is shown of its latest delivery)")
	exported, exportedErr := s.Receiver(ctx, "exported", "--instance", "globex", "--limit", "1")
	fmt.Print(indent(firstLines(exported, 10)))

	fmt.Println("==> checks")
	for name, want := range map[string]string{"acme": "EventLevel", "globex": "CriticalOnly", "initech": "Off"} {
		got, _ := s.Kubectl(ctx, "get", "tp", "-n", name, name, "-o", "jsonpath={.status.effectiveTier}")
		c.check(got == want, "%s runs at effective tier %s (got %q)", name, want, got)
	}
	c.check(db.Stored(ctx, "events", "acme") == wantEvents, "acme: every allow-listed event recorded since the terms were accepted arrived exactly once (%d of %d)", db.Stored(ctx, "events", "acme"), wantEvents)
	c.check(db.StoredBetween(ctx, "acme", time.Time{}, acmeAccepted) == 0 && fleetcheck.AllowListed(ctx, instances["acme"].Pool, time.Time{}, acmeAccepted) > 0,
		"acme: none of the %d events recorded before the terms were accepted (%s) left the instance", fleetcheck.AllowListed(ctx, instances["acme"].Pool, time.Time{}, acmeAccepted), acmeAccepted.Format(time.RFC3339))
	c.check(db.Stored(ctx, "events", "globex") == 0, "globex (CriticalOnly): no per-user events left the instance")
	c.check(db.Stored(ctx, "aggregates", "globex") > 0, "globex: anonymous aggregates arrived")
	open := db.OpenDayCells(ctx, "globex")
	c.check(open == 0, "globex: only days that have ended were published (%d cells of today)", open)
	small := db.SmallCells(ctx)
	c.check(small == 0, "no aggregate cell under 5 users was stored (%d)", small)
	c.check(exportedErr == nil && strings.Contains(exported, "== delivery"), "the receiver lists what it stored for an instance, delivery by delivery")
	c.check(db.Stored(ctx, "events", "initech")+db.Stored(ctx, "aggregates", "initech") == 0, "initech (Off): nothing left the instance")
	out, _ = s.Kubectl(ctx, "get", "deployments", "-n", "initech", "-o", "name")
	c.check(strings.TrimSpace(out) == "", "initech: no collector workload exists")
	leak := db.PersonalData(ctx)
	c.check(leak == "", "no personal data reached the receiver%s", leak)
	c.check(db.NotPseudonymous(ctx) == 0, "every stored user id is a pseudonym")
	unlisted := db.Unlisted(ctx)
	c.check(unlisted == 0, "no event the catalog does not list was exported")

	if problem := db.ServesConfined(ctx, localstack.ReceiverLogin); problem != "" {
		c.check(false, "the receiver serves with a login of its own that may not hand consent records over: %s", problem)
	} else {
		c.check(true, "the receiver serves with a login of its own that may not hand consent records over")
	}
	consentWalk(ctx, s, db, c, instances["acme"])
	erasureWalk(ctx, s, db, c)
	return !c.failed
}

// firstLines returns the first n lines of s, and an ellipsis when there were more.
func firstLines(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) <= n {
		return s
	}
	return strings.Join(lines[:n], "") + "...\n"
}

// consentWalk turns acme Off and back on, writing events while it is Off, and checks by event
// timestamps that none of them left.
func consentWalk(ctx context.Context, s *localstack.Stack, db fleetcheck.Receiver, c *checker, acme *localstack.Instance) {
	fmt.Println("==> kubectl patch tp -n acme acme --type=merge -p '{\"spec\":{\"consent\":{\"tier\":\"Off\"}}}'")
	_, err := s.Kubectl(ctx, "patch", "tp", "-n", "acme", "acme", "--type=merge", "-p", `{"spec":{"consent":{"tier":"Off"}}}`)
	c.check(err == nil, "the patch was accepted")
	c.check(waitTier(ctx, s, "acme", "Off"), "acme reports Off in force once its collector is gone and the receiver refuses its data")
	fmt.Println("==> 25 events are recorded in acme while it is Off")
	offFrom, offTo, err := fleetcheck.Record(ctx, acme.Pool, 25)
	c.check(err == nil, "the events were recorded (%v)", err)
	fmt.Println("==> kubectl patch tp -n acme acme --type=merge -p '{\"spec\":{\"consent\":{\"tier\":\"EventLevel\"}}}'")
	_, err = s.Kubectl(ctx, "patch", "tp", "-n", "acme", "acme", "--type=merge", "-p", `{"spec":{"consent":{"tier":"EventLevel"}}}`)
	c.check(err == nil, "the patch was accepted")
	c.check(waitTier(ctx, s, "acme", "EventLevel"), "acme reports EventLevel in force again")
	time.Sleep(20 * time.Second) // more than an export interval of the new collector
	out, _ := s.Kubectl(ctx, "get", "tp", "-n", "acme", "acme", "-o", "jsonpath={range .status.consentHistory[*]}{.time}  {.from} -> {.to}  ({.reason}){\"\\n\"}{end}")
	fmt.Println("==> acme's consent history (kubectl get tp -n acme acme -o jsonpath='{.status.consentHistory}')")
	fmt.Print(indent(out))
	out, _ = s.Receiver(ctx, "consent", "show", "--instance", "acme")
	fmt.Println("==> receiver consent show --instance acme   (the authoritative record, kept by the receiver)")
	fmt.Print(indent(out))
	c.check(db.StoredBetween(ctx, "acme", offFrom, offTo) == 0, "none of the 25 events recorded while acme was Off reached the receiver")
}

// erasureWalk asks for acme's first week of event-level data to be erased and checks it is gone,
// verified and audited.
func erasureWalk(ctx context.Context, s *localstack.Stack, db fleetcheck.Receiver, c *checker) {
	from, to := acmeAccepted, acmeAccepted.Add(7*24*time.Hour)
	inRange := db.StoredBetween(ctx, "acme", from, to)
	patch := fmt.Sprintf(`{"spec":{"erasure":{"requestID":"DSR-2026-0001","scope":"Events","from":%q,"to":%q,"requestedBy":"CustomerAdmin"}}}`,
		from.Format(time.RFC3339), to.Format(time.RFC3339))
	fmt.Printf("==> kubectl patch tp -n acme acme --type=merge -p '%s'\n", patch)
	_, err := s.Kubectl(ctx, "patch", "tp", "-n", "acme", "acme", "--type=merge", "-p", patch)
	c.check(err == nil, "the erasure request was accepted")
	_, err = s.Kubectl(ctx, "wait", "--for=condition=ErasureCompleted", "tp/acme", "-n", "acme", "--timeout=60s")
	c.check(err == nil, "kubectl wait --for=condition=ErasureCompleted returned")
	out, _ := s.Kubectl(ctx, "get", "tp", "-n", "acme", "acme", "-o", "jsonpath={.status.erasure}")
	fmt.Println("==> kubectl get tp -n acme acme -o jsonpath='{.status.erasure}'")
	fmt.Print(indent(out + "\n"))
	out, _ = s.Receiver(ctx, "erasures", "--instance", "acme", "--request", "DSR-2026-0001")
	fmt.Println("==> receiver erasures --instance acme --request DSR-2026-0001   (the audit trail: who, when, scope, counts; never the data, nor the ticket's words: REQUEST is a key computed from it)")
	fmt.Print(indent(out))
	c.check(strings.Contains(out, consentv1.RequestKey("acme", "DSR-2026-0001")) && !strings.Contains(out, "DSR-2026-0001"),
		"the receiver's audit record is found by the ticket and keeps only its key")
	c.check(inRange > 0 && db.StoredBetween(ctx, "acme", from, to) == 0, "acme's first week is erased at the receiver (%d events before, 0 after)", inRange)
	c.check(db.StoredBetween(ctx, "acme", to, time.Now().Add(time.Hour)) > 0, "the rest of acme's data is kept")
}

// waitTier waits until a policy reports tier in force and Ready.
func waitTier(ctx context.Context, s *localstack.Stack, name, tier string) bool {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		got, _ := s.Kubectl(ctx, "get", "tp", "-n", name, name, "-o", `jsonpath={.status.effectiveTier}/{.status.conditions[?(@.type=="Ready")].status}`)
		if got == tier+"/True" {
			return true
		}
		time.Sleep(time.Second)
	}
	return false
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ") + "\n"
}
