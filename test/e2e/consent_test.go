/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/localstack"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
)

// writeEvents inserts n allow-listed events recorded now (the instance database's clock) and
// returns the moments just before and after.
func writeEvents(t *testing.T, in *localstack.Instance, n int) (from, to time.Time) {
	t.Helper()
	from = time.Now()
	for i := range n {
		if _, err := in.Pool.Exec(context.Background(),
			`INSERT INTO event_logs (name, user_id, source, version, public_argument) VALUES ('hover', $1, 'WEB', '5.3.0', '{"languageId":"go"}')`, i%7+1); err != nil {
			t.Fatal(err)
		}
	}
	return from, time.Now()
}

// storedBetween counts the instance's stored events recorded in [from, to).
func storedBetween(t *testing.T, instance string, from, to time.Time) int {
	t.Helper()
	return count(t, "SELECT count(*) FROM events WHERE instance_id = $1 AND ts >= $2 AND ts < $3", instance, from, to)
}

// waitEnforced waits until the policy reports tier in force and Ready for its generation.
func waitEnforced(t *testing.T, name string, tier v1.ConsentTier) {
	t.Helper()
	eventually(t, 120*time.Second, fmt.Sprintf("%s to be enforced for %s", tier, name), func() bool {
		p := policy(t, name)
		for _, c := range p.Status.Conditions {
			if c.Type == v1.ConditionReady && c.Status == "True" && c.ObservedGeneration == p.Generation {
				return p.Status.EffectiveTier == tier
			}
		}
		return false
	})
}

// lastChange is the newest consent history entry: when the tier in force last changed.
func lastChange(t *testing.T, name string) v1.ConsentChange {
	t.Helper()
	h := policy(t, name).Status.ConsentHistory
	if len(h) == 0 {
		t.Fatalf("%s has no consent history", name)
	}
	return h[len(h)-1]
}

// drained waits until every allow-listed event recorded in an EventLevel window of the policy
// (as the receiver's ledger, mirrored in status, says) is stored.
func drained(t *testing.T, in *localstack.Instance) {
	t.Helper()
	eventually(t, 90*time.Second, in.Name+" to deliver every event recorded under EventLevel consent", func() bool {
		h := policy(t, in.Name).Status.ConsentHistory
		want := 0
		for i, c := range h {
			if c.To != v1.TierEventLevel {
				continue
			}
			end := time.Now().Add(time.Hour)
			if i+1 < len(h) {
				end = h[i+1].Time.Time
			}
			var n int
			_ = in.Pool.QueryRow(context.Background(), "SELECT count(*) FROM event_logs WHERE name = ANY($1) AND timestamp >= $2 AND timestamp < $3",
				catalogv1.Current().Names(), c.Time.Time, end).Scan(&n)
			want += n
		}
		return count(t, "SELECT count(*) FROM events WHERE instance_id = $1", in.Name) == want
	})
}

// TestConsentIsAWindowInTime judges consent by event timestamps in the receiver's database,
// across EventLevel -> Off -> EventLevel and CriticalOnly -> EventLevel, with startFrom
// Beginning and an acceptedAt inside the seeded history.
func TestConsentIsAWindowInTime(t *testing.T) {
	accepted := time.Now().Add(-3 * 24 * time.Hour).UTC().Truncate(time.Second)
	in := apply(t, "windows", v1.TierEventLevel, 6, func(spec map[string]any) {
		spec["contract"].(map[string]any)["acceptedAt"] = accepted.Format(time.RFC3339)
	})
	waitEnforced(t, "windows", v1.TierEventLevel)
	drained(t, in)

	t.Run("startFrom Beginning reaches back to acceptedAt, never before", func(t *testing.T) {
		if before := storedBetween(t, "windows", time.Time{}, accepted); before != 0 {
			t.Fatalf("%d stored events were recorded before the contract was accepted", before)
		}
		var since int
		_ = in.Pool.QueryRow(context.Background(), "SELECT count(*) FROM event_logs WHERE name = ANY($1) AND timestamp >= $2", catalogv1.Current().Names(), accepted).Scan(&since)
		if got := storedBetween(t, "windows", accepted, time.Now().Add(time.Hour)); got != since || since == 0 {
			t.Fatalf("stored %d events recorded since acceptance, want all %d", got, since)
		}
	})

	for _, lower := range []v1.ConsentTier{v1.TierOff, v1.TierCriticalOnly} {
		t.Run("EventLevel -> "+string(lower)+" -> EventLevel", func(t *testing.T) {
			patch(t, "windows", fmt.Sprintf(`{"spec":{"consent":{"tier":%q}}}`, lower))
			waitEnforced(t, "windows", lower)
			closed := lastChange(t, "windows").Time.Time
			from, to := writeEvents(t, in, 30)
			time.Sleep(12 * time.Second) // more than an interval: a collector that could send would have
			patch(t, "windows", `{"spec":{"consent":{"tier":"EventLevel"}}}`)
			waitEnforced(t, "windows", v1.TierEventLevel)
			reopened := lastChange(t, "windows").Time.Time
			time.Sleep(time.Until(reopened) + 100*time.Millisecond) // a grant takes effect at the next whole second
			after, _ := writeEvents(t, in, 10)
			drained(t, in)
			if n := storedBetween(t, "windows", from, to); n != 0 {
				t.Fatalf("%d of the 30 events written while %s were stored", n, lower)
			}
			if n := storedBetween(t, "windows", closed, reopened); n != 0 {
				t.Fatalf("%d stored events were recorded between the withdrawal (%s) and the new grant (%s)", n, closed, reopened)
			}
			if n := storedBetween(t, "windows", after, time.Now().Add(time.Hour)); n != 10 {
				h, _ := json.Marshal(policy(t, "windows").Status)
				var maxTS time.Time
				_ = receiver.QueryRow(context.Background(), "SELECT max(ts) FROM events WHERE instance_id='windows'").Scan(&maxTS)
				t.Fatalf("%d of the 10 events written after EventLevel resumed (at %s) were stored; newest stored %s; status %s", n, after, maxTS, h)
			}
		})
	}
}

// instanceCert is the client certificate the operator issued to a policy's collector.
func instanceCert(t *testing.T, name string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	s := &corev1.Secret{}
	if err := stack.Client.Get(context.Background(), types.NamespacedName{Namespace: name, Name: name + "-collector-tls"}, s); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(s.Data["tls.crt"], s.Data["tls.key"])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.Data["ca.crt"])
	return cert, roots
}

// postEvents sends a batch of events with cert, declaring tier, and returns the status code and
// body.
func postEvents(t *testing.T, cert tls.Certificate, roots *x509.CertPool, instance, tier string, firstID, n int, ts time.Time) (int, string) {
	t.Helper()
	b := &batchv1.Batch{Version: 1, InstanceID: instance, BatchID: fmt.Sprintf("%s-e-%d-%d", instance, firstID, n), Kind: batchv1.KindEvents,
		Tier: tier, AllowListVersion: catalogv1.CurrentVersion, Cursor: int64(firstID + n)}
	for i := range n {
		b.Events = append(b.Events, batchv1.Event{ID: fmt.Sprint(firstID + i), Name: "hover", Timestamp: ts.Add(time.Duration(i) * time.Millisecond).UTC(),
			Source: "WEB", UserID: "00112233445566778899aabbccddeeff"})
	}
	body, err := batchv1.Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: roots, Certificates: []tls.Certificate{cert}}}}
	req, _ := http.NewRequest(http.MethodPost, stack.ReceiverURL+batchv1.PathBatches, bytes.NewReader(body))
	req.Header.Set("Content-Type", batchv1.ContentType)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

// TestReceiverIgnoresTheTierABatchDeclares: a CriticalOnly instance's own certificate, a batch
// that says EventLevel: refused, nothing stored.
func TestReceiverIgnoresTheTierABatchDeclares(t *testing.T) {
	apply(t, "declares", v1.TierCriticalOnly, 3, nil)
	waitEnforced(t, "declares", v1.TierCriticalOnly)
	cert, roots := instanceCert(t, "declares")
	code, body := postEvents(t, cert, roots, "declares", string(v1.TierEventLevel), 1_000_000, 25, time.Now())
	if code != http.StatusForbidden || !strings.Contains(body, "ConsentRefused") {
		t.Fatalf("answered %d %s, want 403 ConsentRefused", code, body)
	}
	if n := count(t, "SELECT count(*) FROM events WHERE instance_id = 'declares'"); n != 0 {
		t.Fatalf("%d events stored for a CriticalOnly instance", n)
	}
}

// TestStaleCollectorCannotOutliveADowngrade keeps a copy of an EventLevel collector running with
// its old configuration and certificate, and lowers consent while the operator is away: the
// withdrawal is dated at the write, events the collectors delivered after it are removed once the
// receiver learns of it, and from the moment the downgrade is reported in effect nothing
// above CriticalOnly is stored.
func TestStaleCollectorCannotOutliveADowngrade(t *testing.T) {
	in := apply(t, "stale", v1.TierEventLevel, 4, nil)
	waitEnforced(t, "stale", v1.TierEventLevel)
	drained(t, in)
	key := types.NamespacedName{Namespace: "stale", Name: "stale-collector"}

	step := func(s string) { t.Log(s) }
	step("starting a second collector from a frozen copy of the pod's files")
	root := stack.Runner.Root(key)
	if root == "" {
		t.Fatal("no running collector to copy")
	}
	frozen := filepath.Join(t.TempDir(), "pod")
	if out, err := exec.Command("cp", "-a", root, frozen).CombinedOutput(); err != nil {
		t.Fatalf("copying the pod's files: %v %s", err, out)
	}
	metricsAddr, _ := testenv.FreeAddr()
	logFile, _ := os.Create(filepath.Join(frozen, "stale.log"))
	stale := exec.Command(stack.Opts.Bins.Collector, "--mount-root", frozen, //nolint:gosec // our binary
		"--config="+filepath.Join(frozen, "etc/telemetry/config/config.json"), "--state-file", filepath.Join(frozen, "state.json"), "--metrics-addr", metricsAddr)
	stale.Stdout, stale.Stderr = logFile, logFile
	if err := stale.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stale.Process.Kill(); _ = stale.Wait(); _ = logFile.Close() }()
	stop := trickle(in, 40*time.Millisecond)
	defer stop()

	step("an edit to the contract by another writer, acted on while the operator runs, is not the withdrawal")
	kubectl(t, "patch", "tp", "-n", "stale", "stale", "--type=merge", "--field-manager=crm-sync", "-p", `{"spec":{"contract":{"reference":"0065e00000ZzYyXx"}}}`)
	eventually(t, 30*time.Second, "the operator to act on the edit", func() bool {
		p := policy(t, "stale")
		return p.Status.ObservedGeneration == p.Generation
	})
	time.Sleep(2 * time.Second)

	step("lowering consent while the operator is down, then another edit by the same writer: both collectors keep sending EventLevel data")
	stopped := time.Now()
	stack.StopManager()
	before := time.Now()
	patch(t, "stale", `{"spec":{"consent":{"tier":"CriticalOnly"}}}`)
	written := time.Now()
	time.Sleep(2500 * time.Millisecond)
	// managedFields now holds this later write's time for the writer: it must not date the
	// withdrawal (it would keep what was recorded in between).
	patch(t, "stale", `{"spec":{"export":{"interval":"11s"}}}`)
	eventually(t, 30*time.Second, "EventLevel data recorded after the withdrawal to reach the receiver", func() bool {
		return storedBetween(t, "stale", written, time.Now().Add(time.Hour)) > 20
	})

	step("starting the operator")
	if err := stack.StartManager(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitEnforced(t, "stale", v1.TierCriticalOnly)
	reported := time.Now()
	closed := lastChange(t, "stale")
	// No operator watched the write, so it cannot be dated exactly: the withdrawal is dated when
	// the stopped operator was last alive, never after the write.
	if at := closed.Time.Time; closed.To != v1.TierCriticalOnly || at.After(written) || at.Before(stopped.Add(-2*time.Second)) {
		t.Fatalf("consent closed at %s (%s), want between the operator's stop (%s) and the write (%s, before %s)", at, closed.To, stopped, written, before)
	}
	if n := storedBetween(t, "stale", closed.Time.Time, time.Now().Add(time.Hour)); n != 0 {
		t.Fatalf("%d events recorded after the withdrawal are still stored", n)
	}
	time.Sleep(15 * time.Second) // the stale collector keeps trying; events keep being written
	if n := count(t, "SELECT count(*) FROM events WHERE instance_id = 'stale' AND received_at >= $1", reported); n != 0 {
		t.Fatalf("%d events were stored after the downgrade was reported in effect", n)
	}
	if n := storedBetween(t, "stale", closed.Time.Time, time.Now().Add(time.Hour)); n != 0 {
		t.Fatalf("%d events recorded after the withdrawal were stored", n)
	}
	if refused := testenv.ScrapeMetric("http://"+metricsAddr+"/metrics", `collector_batches_total{outcome="failed"}`); refused <= 0 {
		t.Fatalf("the stale collector recorded no failed batch (%v): it did not try, and the check above proves nothing", refused)
	}
}

// TestReceiverRestartKeepsConsent: the ledger lives in PostgreSQL; a restarted receiver still
// knows who may send what, and still refuses an instance it has no record of.
func TestReceiverRestartKeepsConsent(t *testing.T) {
	in := apply(t, "durable", v1.TierEventLevel, 3, nil)
	waitEnforced(t, "durable", v1.TierEventLevel)
	drained(t, in)
	if err := stack.RestartReceiver(context.Background()); err != nil {
		t.Fatal(err)
	}
	writeEvents(t, in, 15)
	drained(t, in)

	issuer, err := pki.LoadIssuer(stack.CA.Secret(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cc, err := issuer.IssueClient("nobody-knows-me", pki.PolicyRef{Cluster: "nowhere", Namespace: "nobody", Name: "nobody", UID: "nobody"}, time.Hour, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := tls.X509KeyPair(cc.CertPEM, cc.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(stack.CA.Cert)
	code, body := postEvents(t, stranger, roots, "nobody-knows-me", string(v1.TierEventLevel), 1, 5, time.Now())
	if code != http.StatusForbidden || !strings.Contains(body, "ConsentRefused") {
		t.Fatalf("an instance with no consent record: %d %s, want 403 ConsentRefused", code, body)
	}
}

// TestErasureOnRequest: spec.erasure deletes the instance's stored events, verified, audited
// without payload, reported in status and an Event; a re-sent batch stores nothing.
func TestErasureOnRequest(t *testing.T) {
	in := apply(t, "erased", v1.TierEventLevel, 4, nil)
	waitEnforced(t, "erased", v1.TierEventLevel)
	drained(t, in)
	stored := count(t, "SELECT count(*) FROM events WHERE instance_id = 'erased'")
	if stored == 0 {
		t.Fatal("nothing stored to erase")
	}
	patch(t, "erased", `{"spec":{"erasure":{"requestID":"DSR-7","requestedBy":"Support","scope":"Events"}}}`)
	kubectl(t, "wait", "--for=condition=ErasureCompleted", "tp/erased", "-n", "erased", "--timeout=60s")
	p := policy(t, "erased")
	e := p.Status.Erasure
	if e == nil || e.Phase != v1.ErasureVerified || e.EventsDeleted != int64(stored) || e.VerifiedAt == nil || e.To == nil {
		t.Fatalf("status.erasure = %+v, want Verified with %d events deleted", e, stored)
	}
	if n := storedBetween(t, "erased", time.Time{}, e.To.Time); n != 0 {
		t.Fatalf("%d events in scope are left", n)
	}
	var requestedBy string
	var deleted int64
	if err := receiver.QueryRow(context.Background(), "SELECT requested_by, events_deleted FROM erasures WHERE instance_id = 'erased' AND request_id = $1 AND verified_at IS NOT NULL",
		consentv1.RequestKey("erased", "DSR-7")).Scan(&requestedBy, &deleted); err != nil {
		t.Fatalf("no verified audit record: %v", err)
	}
	if requestedBy != "Support" || deleted != int64(stored) {
		t.Fatalf("audit record: %q, %d", requestedBy, deleted)
	}
	if events := kubectl(t, "get", "events", "-n", "erased", "--field-selector", "reason=ErasureVerified", "-o", "name"); strings.TrimSpace(events) == "" {
		t.Fatal("no ErasureVerified Event")
	}
	if m := testenv.ScrapeMetric(stack.ManagerMetrics, `telemetry_erasures_total{outcome="verified"}`); m < 1 {
		t.Fatalf("telemetry_erasures_total{outcome=\"verified\"} = %v", m)
	}

	cert, roots := instanceCert(t, "erased")
	code, body := postEvents(t, cert, roots, "erased", string(v1.TierEventLevel), 1, 30, e.To.Add(-time.Minute))
	var resp batchv1.Response
	_ = json.Unmarshal([]byte(body), &resp)
	if code != http.StatusOK || resp.Accepted != 0 || resp.Refused != 30 {
		t.Fatalf("a re-sent batch in the erased range: %d %s, want 200 with 30 refused", code, body)
	}
	if n := storedBetween(t, "erased", time.Time{}, e.To.Time); n != 0 {
		t.Fatalf("a re-sent batch brought back %d erased events", n)
	}
	waitEnforced(t, "erased", v1.TierEventLevel)
}
