/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collector_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	dto "github.com/prometheus/client_model/go"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/collector"
	"github.com/sourcegraph/telemetry-operator/collector/scrub"
	"github.com/sourcegraph/telemetry-operator/collector/source"
)

func benchRows(n int) []scrub.Row {
	rows := make([]scrub.Row, n)
	for i := range rows {
		rows[i] = scrub.Row{ID: int64(i + 1), Name: "SearchSubmitted", UserID: int64(i%500 + 1), Source: "WEB", Version: "5.3.0",
			PublicArgument: []byte(`{"patternType":"literal","query":"repo:acme/secret foo","source":"nav"}`),
			FeatureFlags:   []byte(`{"search-ranking":true}`), Timestamp: time.Unix(1_790_000_000+int64(i), 0), Client: "WEB"}
	}
	return rows
}

// BenchmarkFilterPseudonymize measures the scrub stage per event.
func BenchmarkFilterPseudonymize(b *testing.B) {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	s, _ := scrub.New(key)
	rows := benchRows(1000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, drop := s.Event(&rows[i%len(rows)]); drop != "" {
			b.Fatal(drop)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkEncodeCompress measures JSON encoding plus zstd for a 5000-event batch.
func BenchmarkEncodeCompress(b *testing.B) {
	key := make([]byte, 32)
	s, _ := scrub.New(key)
	batch := &batchv1.Batch{InstanceID: "bench", BatchID: "b", Kind: batchv1.KindEvents, Tier: "EventLevel"}
	for _, r := range benchRows(5000) {
		e, _ := s.Event(&r)
		batch.Events = append(batch.Events, e)
	}
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	b.ResetTimer()
	var size int
	for i := 0; i < b.N; i++ {
		data, err := json.Marshal(batch)
		if err != nil {
			b.Fatal(err)
		}
		size = len(enc.EncodeAll(data, nil))
	}
	b.ReportMetric(float64(b.N*5000)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(size)/5000, "compressed-bytes/event")
}

// BenchmarkEndToEnd measures event_logs to stored-at-the-receiver throughput, and the read,
// filter and send stages, over 50,000 rows (a fresh instance identity per iteration, so every
// event is new to the receiver).
func BenchmarkEndToEnd(b *testing.B) {
	const rows = 50_000
	in := newInstance(b, v1.TierEventLevel, 5000)
	in.insert("SearchSubmitted", rows, 500, `{"patternType":"literal","query":"secret"}`)
	b.ResetTimer()
	var read, filter, send float64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		run := newInstance(b, v1.TierEventLevel, 5000)
		cfg, _ := collector.LoadConfig(run.config)
		run.dsn = in.dsn
		cfg.DatabaseDSNFile = writeFile(b, run.dir, "dsn", in.dsn)
		run.writeConfig(*cfg)
		p := run.pipeline()
		b.StartTimer()
		for {
			more, err := p.RunOnce(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			if !more {
				break
			}
		}
		b.StopTimer()
		if got := run.stored(); got != rows {
			b.Fatalf("stored %d, want %d", got, rows)
		}
		read += histogramSum(p.Metrics, "read")
		filter += histogramSum(p.Metrics, "filter")
		send += histogramSum(p.Metrics, "send")
		b.StartTimer()
	}
	n := float64(b.N * rows)
	b.ReportMetric(n/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(n/read, "read-events/s")
	b.ReportMetric(n/filter, "filter-events/s")
	b.ReportMetric(n/send, "send-events/s")
}

func histogramSum(m *collector.Metrics, stage string) float64 {
	var out dto.Metric
	h, err := m.StageSeconds.GetMetricWithLabelValues(stage)
	if err != nil {
		return 0
	}
	_ = h.(interface{ Write(*dto.Metric) error }).Write(&out)
	return out.GetHistogram().GetSampleSum()
}

func writeFile(b *testing.B, dir, name, content string) string {
	path := fmt.Sprintf("%s/%s", dir, name)
	if err := writeFileErr(path, content); err != nil {
		b.Fatal(err)
	}
	return path
}

// BenchmarkReadLargeDocuments reads rows whose documents are stored out of line (about 400 KB
// of public_argument and 400 flags each) through the collector's query, next to a baseline that
// reads the same documents whole. The query looks up every listed key, so it must fetch each
// document from storage once per row, not once per key: the ratio is about 0.1 when it does
// (it was 7 when every lookup fetched the document again).
func BenchmarkReadLargeDocuments(b *testing.B) {
	const rows = 100
	in := newInstance(b, v1.TierEventLevel, rows)
	in.exec(`INSERT INTO event_logs (name, user_id, source, version, public_argument, feature_flags, timestamp)
		SELECT 'hover', r, 'WEB', '5.3.0',
		  (SELECT jsonb_object_agg('k' || g || '-' || r, md5((g * r)::text) || md5((g + r)::text)) FROM generate_series(1, 5000) g) || '{"languageId":"go"}',
		  (SELECT jsonb_object_agg('flag-' || g || '-' || r, g % 2 = 0) FROM generate_series(1, 400) g) || '{"cody":true}', now()
		FROM generate_series(1, $1) r`, rows)
	ctx := context.Background()
	r, err := source.Open(ctx, in.dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	windows := []consentv1.Window{{Start: time.Now().Add(-time.Hour)}}
	var query, whole time.Duration
	for b.Loop() {
		start := time.Now()
		round, err := r.Read(ctx, source.NewTracker(0, rows), rows, windows)
		if err != nil || len(round.Rows) != rows {
			b.Fatalf("read %v rows: %v", round, err)
		}
		query += time.Since(start)
		start = time.Now()
		var n, size int64
		if err := r.Pool().QueryRow(ctx, `SELECT count(*), sum(octet_length(public_argument::text) + octet_length(feature_flags::text)) FROM event_logs`).Scan(&n, &size); err != nil || n != rows {
			b.Fatalf("baseline read %d rows: %v", n, err)
		}
		whole += time.Since(start)
	}
	b.ReportMetric(float64(query.Microseconds())/float64(b.N*rows), "query-µs/row")
	b.ReportMetric(float64(whole.Microseconds())/float64(b.N*rows), "whole-documents-µs/row")
	b.ReportMetric(query.Seconds()/whole.Seconds(), "ratio")
}
