/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collector_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

// preview runs "collector preview" for the instance and returns its request bodies, one per
// line, and its summary.
func preview(t *testing.T, in *instance) ([]string, string) {
	t.Helper()
	var out, summary bytes.Buffer
	cmd := exec.Command(collectorBin, "preview", "--config", in.config, "--state-file", in.stateFile) //nolint:gosec // our binary
	cmd.Stdout, cmd.Stderr = &out, &summary
	if err := cmd.Run(); err != nil {
		t.Fatalf("collector preview: %v\n%s", err, summary.String())
	}
	var bodies []string
	for line := range strings.Lines(out.String()) {
		bodies = append(bodies, strings.TrimSuffix(line, "\n"))
	}
	return bodies, summary.String()
}

// bodiesOf returns the request bodies the receiver got for the instance since skip bodies.
func bodiesOf(in *instance, skip int) []string {
	var out []string
	for _, b := range rcv.Bodies()[skip:] {
		if strings.Contains(string(b), `"instanceID":"`+in.id+`"`) {
			out = append(out, string(b))
		}
	}
	return out
}

// TestPreviewShowsExactlyWhatTheNextRoundSends: for each tier, what "collector preview" prints
// is byte for byte what the next round then sends, and previewing sends and saves nothing.
func TestPreviewShowsExactlyWhatTheNextRoundSends(t *testing.T) {
	for _, tier := range []v1.ConsentTier{v1.TierEventLevel, v1.TierCriticalOnly} {
		t.Run(string(tier), func(t *testing.T) {
			in := newInstance(t, tier, 40)
			in.exec(`INSERT INTO event_logs (name, user_id, source, public_argument, version, timestamp)
				SELECT 'SearchSubmitted', (g % 12) + 1, 'WEB', '{"patternType":"regexp","query":"secret"}', '5.3.0', now() - interval '50 hours' - g * interval '1 minute'
				FROM generate_series(1, 100) g`)
			p := in.pipeline()
			if tier == v1.TierEventLevel {
				if _, err := p.RunOnce(context.Background()); err != nil { // a saved cursor to preview from
					t.Fatal(err)
				}
			}
			state, _ := os.ReadFile(in.stateFile)
			before := len(rcv.Bodies())
			shown, summary := preview(t, in)
			if len(shown) == 0 {
				t.Fatalf("the preview shows nothing: %s", summary)
			}
			if n := len(bodiesOf(in, before)); n != 0 {
				t.Fatalf("previewing sent %d requests", n)
			}
			if after, _ := os.ReadFile(in.stateFile); !bytes.Equal(after, state) {
				t.Fatal("previewing changed the saved progress")
			}
			if strings.Contains(strings.Join(shown, ""), "secret") {
				t.Fatal("the preview shows a value the collector never sends")
			}

			p = in.pipeline()
			if _, err := p.RunOnce(context.Background()); err != nil {
				t.Fatal(err)
			}
			sent := bodiesOf(in, before)
			if len(sent) < len(shown) {
				t.Fatalf("the round sent %d batches, the preview showed %d", len(sent), len(shown))
			}
			// Batches of a backlog are sent two at a time: compare as sets.
			for i, body := range shown {
				if !slices.Contains(sent, body) {
					t.Fatalf("previewed batch %d was not sent as shown:\npreview: %.400s\nsent:    %.400s", i, body, sent)
				}
			}
			if tier == v1.TierCriticalOnly {
				if again, summary := preview(t, in); len(again) != 0 {
					t.Fatalf("published days are shown again: %s", summary)
				}
			}
		})
	}
}

// TestPreviewUnderOffShowsNothing: an Off instance has nothing to preview, and says so.
func TestPreviewUnderOffShowsNothing(t *testing.T) {
	in := newInstance(t, v1.TierCriticalOnly, 40)
	in.insert("hover", 30, 10, `{}`)
	in.setTier(v1.TierOff)
	shown, summary := preview(t, in)
	if len(shown) != 0 || !strings.Contains(summary, "Off") {
		t.Fatalf("preview under Off: %d batches, summary %q", len(shown), summary)
	}
}
