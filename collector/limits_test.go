/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collector_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/testenv"
)

// TestA400ThatNamesNoItemDropsNothing: a proxy in the way that answers 400 to everything (as
// nginx does for a missing client certificate) must not make the collector split the batch down
// to single events, quarantine each and move on: the round fails, nothing advances, and once the
// proxy is gone everything arrives.
func TestA400ThatNamesNoItemDropsNothing(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 50)
	in.insert("hover", 120, 6, `{"languageId":"go"}`)
	rcv.SetIntercept(func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		if r.URL.Path != batchv1.PathBatches {
			return false
		}
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte("<html>400 No required SSL certificate was sent</html>"))
		return true
	})
	p := in.pipeline()
	for range 3 {
		if _, err := p.RunOnce(context.Background()); err == nil {
			rcv.SetIntercept(nil)
			t.Fatal("a round that the proxy refused succeeded")
		}
	}
	rcv.SetIntercept(nil)
	if pr := p.Progress(); pr.EventsDropped != 0 || pr.Cursor != 0 || !strings.Contains(pr.LastError, "400") {
		t.Fatalf("progress %+v: nothing may be dropped or passed over, and the error must show", pr)
	}
	drain(t, p)
	if n := in.stored(); n != 120 {
		t.Fatalf("stored %d of 120 once the proxy was gone", n)
	}
}

// TestAHugePublicArgumentNeverReachesTheCollector: two 50 MiB public_argument documents, one
// around a listed property and one inside it. The database selects only the listed members
// within their size bound, so the collector process stays far below its memory limit, exports
// both events (the second without the property) and counts both documents.
func TestAHugePublicArgumentNeverReachesTheCollector(t *testing.T) {
	in := newInstance(t, v1.TierEventLevel, 100)
	blob := make([]byte, 25<<20)
	_, _ = rand.Read(blob)
	huge := hex.EncodeToString(blob) // 50 MiB, incompressible
	in.exec(`INSERT INTO event_logs (name, user_id, source, version, public_argument) VALUES ('SearchSubmitted', 1, 'WEB', '5.3.0', jsonb_build_object('patternType', 'literal', 'query', $1::text))`, huge)
	in.exec(`INSERT INTO event_logs (name, user_id, source, version, public_argument) VALUES ('SearchSubmitted', 2, 'WEB', '5.3.0', jsonb_build_object('patternType', $1::text))`, huge)

	metrics, err := testenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(collectorBin, "--config", in.config, "--state-file", in.stateFile, "--metrics-addr", metrics) //nolint:gosec // our binary
	cmd.Env = append(os.Environ(), "GOMEMLIMIT=100MiB")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for in.stored() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("stored %d of 2 events", in.stored())
		}
		time.Sleep(200 * time.Millisecond)
	}
	var withProperty int
	_ = rcv.DB.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE instance_id = $1 AND properties->>'patternType' = 'literal'`, in.id).Scan(&withProperty)
	if withProperty != 1 {
		t.Fatalf("%d events kept their listed property, want 1", withProperty)
	}
	if counted := testenv.ScrapeMetric("http://"+metrics+"/metrics", `collector_values_dropped_total{field="oversized_document"}`); counted != 2 {
		t.Fatalf("oversized documents counted: %v, want 2", counted)
	}
	if peak := peakRSS(t, cmd.Process.Pid); peak > 64<<20 {
		t.Fatalf("the collector's peak RSS was %d MiB with 50 MiB rows in its table", peak>>20)
	}
}

// peakRSS reads a process's peak resident set size (VmHWM) from /proc.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}
