/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import (
	"bufio"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/localstack"
	"github.com/sourcegraph/telemetry-operator/internal/seed"
	"github.com/sourcegraph/telemetry-operator/test/fleetcheck"
)

// liveInterval is the export interval of the live run's policies.
const liveInterval = 15 * time.Second

// operatorLive measures the API writes a fleet costs with its collectors running (local
// runner: real collector processes, real receiver): idle (no new events) and with a steady
// trickle (one event per second per instance), per policy and export interval, counted by the
// API server itself (every client: the manager's status updates, the collectors' progress).
func operatorLive(ctx context.Context, bins localstack.Binaries, n int, window time.Duration) {
	fmt.Printf("\n== API writes with collectors running (%d policies, export interval %s, %s windows) ==\n", n, liveInterval, window)
	st, err := localstack.Start(ctx, localstack.Options{NoLeaderElection: true, Bins: bins})
	must(err)
	defer st.Close()
	accepted := time.Now().Add(-24 * time.Hour).UTC().Truncate(time.Second)
	var instances []*localstack.Instance
	for i := range n {
		name := fmt.Sprintf("live-%d", i)
		in, err := st.AddInstance(ctx, name, seed.Options{Users: 5, Days: 2, EventsPerUserDay: 4, Seed: uint64(i + 1)})
		must(err)
		instances = append(instances, in)
		p := livePolicy(name, st.ReceiverURL, accepted)
		if i%2 == 1 {
			p.Spec.Consent.Tier, p.Spec.Contract = v1.TierCriticalOnly, &v1.ContractSpec{Basis: v1.BasisLegacyTerms, AcceptedAt: &metav1.Time{Time: accepted}}
		}
		must(st.Client.Create(ctx, p))
	}
	// Settled: every policy Ready and exporting, the backlogs delivered.
	deadline := time.Now().Add(5 * time.Minute)
	for {
		list := &v1.TelemetryPolicyList{}
		must(st.Client.List(ctx, list))
		exporting := 0
		for _, p := range list.Items {
			if p.Status.Export != nil && p.Status.Export.LastSuccessTime != nil && p.Status.Export.LagSeconds == 0 &&
				condTrue(p.Status.Conditions, v1.ConditionReady) {
				exporting++
			}
		}
		if exporting == n {
			break
		}
		if time.Now().After(deadline) {
			// Stuck collectors write nothing: counting them would flatter the figure.
			must(fmt.Errorf("only %d of %d policies exporting after 5 minutes", exporting, n))
		}
		time.Sleep(time.Second)
	}
	time.Sleep(2 * liveInterval) // past the backlog's last progress writes

	perPolicyInterval := func(writes int) float64 {
		return float64(writes) / float64(n) / (window.Seconds() / liveInterval.Seconds())
	}
	before := apiWrites(ctx, st.Clientset)
	time.Sleep(window)
	idle := apiWrites(ctx, st.Clientset).minus(before)
	stillExporting(ctx, st, n, "idle")
	record("idle: API writes per policy per export interval", fmt.Sprintf("%.2f (%s)", perPolicyInterval(idle.total()), idle), "<= 1", b(perPolicyInterval(idle.total()) <= 1))
	record("idle: API writes per policy per hour", fmt.Sprintf("%.0f", perPolicyInterval(idle.total())*3600/liveInterval.Seconds()), "", nil)

	stop := make(chan struct{})
	done := make(chan struct{})
	var trickleErr error // written by the trickle goroutine only, read after it is done
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
				for _, in := range instances {
					if _, _, err := fleetcheck.Record(ctx, in.Pool, 1); err != nil {
						trickleErr = err // a failed trickle would be measured as idle
					}
				}
			}
		}
	}()
	time.Sleep(liveInterval) // the trickle is flowing
	before = apiWrites(ctx, st.Clientset)
	time.Sleep(window)
	trickle := apiWrites(ctx, st.Clientset).minus(before)
	close(stop)
	<-done
	stillExporting(ctx, st, n, "trickle")
	must(trickleErr)
	record("trickle (1 event/s per instance): API writes per policy per export interval", fmt.Sprintf("%.2f (%s)", perPolicyInterval(trickle.total()), trickle), "", nil)
	record("trickle: API writes per policy per hour", fmt.Sprintf("%.0f", perPolicyInterval(trickle.total())*3600/liveInterval.Seconds()), "", nil)
}

// stillExporting fails the run unless every policy is still Ready and Exporting after a window:
// a collector that stopped writing would otherwise score as a quiet one.
func stillExporting(ctx context.Context, st *localstack.Stack, n int, window string) {
	list := &v1.TelemetryPolicyList{}
	must(st.Client.List(ctx, list))
	ok := 0
	for _, p := range list.Items {
		if condTrue(p.Status.Conditions, v1.ConditionReady) && condTrue(p.Status.Conditions, v1.ConditionExporting) {
			ok++
		}
	}
	if ok != n {
		must(fmt.Errorf("after the %s window only %d of %d policies are Ready and Exporting", window, ok, n))
	}
}

// livePolicy is an EventLevel self-serve trial exporting every liveInterval.
func livePolicy(name, endpoint string, accepted time.Time) *v1.TelemetryPolicy {
	p := policyObject(name, name, endpoint)
	p.Spec.Source.DatabaseSecretRef = v1.SecretKeyRef{Name: name + "-frontend-db", Key: "dsn"}
	p.Spec.Consent.Tier = v1.TierEventLevel
	p.Spec.Contract = &v1.ContractSpec{Basis: v1.BasisSelfServeTrial, Reference: "0065e00000AbCdEf", CloudTermsVersion: "2024-06-01",
		AcceptedAt: &metav1.Time{Time: accepted}, ExpiresAt: &metav1.Time{Time: accepted.Add(30 * 24 * time.Hour)}, UserLevelEventDataApproved: true}
	p.Spec.Export.Interval = &metav1.Duration{Duration: liveInterval}
	p.Spec.Export.StartFrom = v1.StartFromBeginning
	return p
}

func condTrue(conds []metav1.Condition, typ string) bool {
	for _, c := range conds {
		if c.Type == typ {
			return c.Status == metav1.ConditionTrue
		}
	}
	return false
}

// writeCounts are the API server's mutating requests so far, by resource.
type writeCounts map[string]int

func (w writeCounts) minus(o writeCounts) writeCounts {
	out := writeCounts{}
	for k, v := range w {
		if d := v - o[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

func (w writeCounts) total() int {
	t := 0
	for _, v := range w {
		t += v
	}
	return t
}

func (w writeCounts) String() string {
	var parts []string
	for k, v := range w {
		parts = append(parts, fmt.Sprintf("%s %d", k, v))
	}
	if len(parts) == 0 {
		return "none"
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// apiWrites reads apiserver_request_total from the API server's own metrics: every client's
// writes, by resource (and subresource).
func apiWrites(ctx context.Context, cs kubernetes.Interface) writeCounts {
	raw, err := cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	must(err)
	out := writeCounts{}
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		verb, resource, sub := label(line, "verb"), label(line, "resource"), label(line, "subresource")
		switch verb {
		case "POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE":
		default:
			continue
		}
		if resource == "leases" || resource == "events" || resource == "selfsubjectrulesreviews" || resource == "tokenreviews" ||
			resource == "subjectaccessreviews" || resource == "serviceaccounts" && sub == "token" {
			continue // lease renewals (none here), Events, reviews and token requests are not state
		}
		if sub != "" {
			resource += "/" + sub
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		out[resource] += int(v)
	}
	return out
}

func label(line, name string) string {
	i := strings.Index(line, name+`="`)
	if i < 0 {
		return ""
	}
	rest := line[i+len(name)+2:]
	return rest[:strings.IndexByte(rest, '"')]
}
