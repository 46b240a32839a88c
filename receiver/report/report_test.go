/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package report_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/jackc/pgx/v5/pgxpool"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/receiver/receivertest"
	"github.com/sourcegraph/telemetry-operator/receiver/report"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
	"github.com/sourcegraph/telemetry-operator/receiver/store"
)

// now is a Wednesday; its ISO week starts Monday 2026-11-23.
var now = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

var rcv *receivertest.Receiver

// reporting reads as the reporting tools do: the reporting role, the report views only.
var reporting *pgxpool.Pool

func TestMain(m *testing.M) {
	var err error
	rcv, err = receivertest.Start(context.Background(), server.DefaultLimits())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if reporting, err = store.OpenPool(context.Background(), rcv.PG.DSN("receiver"), store.RoleReporting); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Consent from before every seeded timestamp: the report is judged on what it computes.
	since := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for instance, tier := range map[string]consentv1.Tier{
		"srch": consentv1.TierEventLevel, "power": consentv1.TierEventLevel, "sess": consentv1.TierEventLevel,
		"drop": consentv1.TierEventLevel, "stick": consentv1.TierEventLevel, "crit": consentv1.TierCriticalOnly,
	} {
		if err := rcv.Grant(context.Background(), instance, tier, since); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	// The receiver records the catalog's feature map in its maintenance; here, once.
	if _, err := report.RefreshRollups(context.Background(), rcv.Store.Pool()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	rcv.Close()
	os.Exit(code)
}

func user(name string) string { return fmt.Sprintf("f%031x", []byte(name)) }

type seeder struct {
	t  *testing.T
	id int
}

func (s *seeder) event(instance, u, name string, ts time.Time, props map[string]any) {
	s.t.Helper()
	s.id++
	b := &batchv1.Batch{InstanceID: instance, BatchID: fmt.Sprintf("b%d", s.id), Kind: batchv1.KindEvents, Tier: "EventLevel",
		Events: []batchv1.Event{{ID: fmt.Sprint(s.id), Name: name, Timestamp: ts, UserID: user(u), Properties: props}}}
	if _, err := rcv.Store.InsertEvents(context.Background(), instance, b); err != nil {
		s.t.Fatal(err)
	}
}

// cells publishes one day's cells together: the receiver keeps a day's first publication only.
func (s *seeder) cells(instance, day string, cells ...batchv1.Aggregate) {
	s.t.Helper()
	s.id++
	for i := range cells {
		cells[i].Day, cells[i].Final = day, true
	}
	b := &batchv1.Batch{InstanceID: instance, BatchID: fmt.Sprintf("a%d", s.id), Kind: batchv1.KindAggregates, Tier: "CriticalOnly",
		Aggregates: cells}
	if _, err := rcv.Store.PublishAggregates(context.Background(), instance, b); err != nil {
		s.t.Fatal(err)
	}
}

func cell(metric, dim string, value, users int64) batchv1.Aggregate {
	return batchv1.Aggregate{Metric: metric, Dimension: dim, Value: value, Users: users}
}

func daysAgo(d int) time.Time { return now.AddDate(0, 0, -d) }

func seed(t *testing.T) {
	s := &seeder{t: t}
	pt := func(p string) map[string]any { return map[string]any{"patternType": p} }
	// Searches: A searched 3 regexp + 2 literal in October and 1 structural in November; B 4 literal in November.
	oct, nov := time.Date(2026, 10, 15, 9, 0, 0, 0, time.UTC), time.Date(2026, 11, 10, 9, 0, 0, 0, time.UTC)
	for i := range 3 {
		s.event("srch", "A", "SearchSubmitted", oct.Add(time.Duration(i)*time.Minute), pt("regexp"))
	}
	for i := range 2 {
		s.event("srch", "A", "SearchSubmitted", oct.Add(time.Hour+time.Duration(i)*time.Minute), pt("literal"))
	}
	s.event("srch", "A", "SearchSubmitted", nov, pt("structural"))
	for i := range 4 {
		s.event("srch", "B", "SearchSubmitted", nov.Add(time.Duration(i)*time.Minute), pt("literal"))
	}
	s.event("srch", "A", "SearchResultsQueried", nov, pt("regexp")) // not a search by definition

	// Power users: P on 12 of the last 28 days (plus once long ago), R on 10, Q on 9.
	for d := 1; d <= 12; d++ {
		s.event("power", "P", "ViewBlob", daysAgo(d), nil)
	}
	s.event("power", "P", "ViewBlob", daysAgo(40), nil)
	for d := 1; d <= 10; d++ {
		s.event("power", "R", "ViewBlob", daysAgo(d), nil)
		s.event("power", "R", "hover", daysAgo(d).Add(time.Minute), nil) // same day: still one day
	}
	for d := 1; d <= 9; d++ {
		s.event("power", "Q", "ViewBlob", daysAgo(d), nil)
	}

	// Sessions: S has [file_view, code_navigation], then 2h later [search, search], then 31 min
	// later [code_navigation]; T has [search, notebooks] 29 minutes apart. 4 sessions, 2 multi.
	t0 := daysAgo(2)
	s.event("sess", "S", "ViewBlob", t0, nil)
	s.event("sess", "S", "hover", t0.Add(10*time.Minute), nil)
	s.event("sess", "S", "SearchSubmitted", t0.Add(130*time.Minute), nil)
	s.event("sess", "S", "SearchResultsQueried", t0.Add(140*time.Minute), nil)
	s.event("sess", "S", "hover", t0.Add(171*time.Minute), nil)
	s.event("sess", "T", "SearchSubmitted", t0, nil)
	s.event("sess", "T", "SearchNotebookPageViewed", t0.Add(29*time.Minute), nil)

	// Intervene: D averaged 8 a week over the 4 weeks before and did 3 in the last 7 days;
	// E averaged 4 and did 4. The instance as a whole: 7 against 12, not flagged.
	for w := range 4 {
		for i := range 8 {
			s.event("drop", "D", "ViewBlob", daysAgo(8+7*w).Add(time.Duration(i)*time.Minute), nil)
		}
		for i := range 4 {
			s.event("drop", "E", "ViewBlob", daysAgo(9+7*w).Add(time.Duration(i)*time.Minute), nil)
		}
	}
	for i := range 3 {
		s.event("drop", "D", "ViewBlob", daysAgo(1).Add(time.Duration(i)*time.Minute), nil)
	}
	for i := range 4 {
		s.event("drop", "E", "ViewBlob", daysAgo(2).Add(time.Duration(i)*time.Minute), nil)
	}

	// Stickiness over complete weeks: search U1+U2 in week of Nov 2, U1 again Nov 9 (then not
	// Nov 16): 3 user-weeks, 1 retained. notebooks U3 in weeks Nov 2, 9 and 16: 2 of 2 retained.
	wk := func(month, day int) time.Time { return time.Date(2026, time.Month(month), day, 10, 0, 0, 0, time.UTC) }
	s.event("stick", "U1", "SearchSubmitted", wk(11, 3), nil)
	s.event("stick", "U2", "SearchSubmitted", wk(11, 4), nil)
	s.event("stick", "U1", "SearchResultsQueried", wk(11, 10), nil)
	for _, d := range []int{3, 10, 17} {
		s.event("stick", "U3", "SearchNotebookPageViewed", wk(11, d), nil)
	}

	// A CriticalOnly instance: only aggregates.
	for _, d := range []int{10, 15, 20, 25} {
		day := []batchv1.Aggregate{cell("event_count", "ViewBlob", 100, 9)}
		if daysAgo(d).Format(time.DateOnly) == "2026-11-10" {
			day = append(day, cell("searches_by_type", "literal", 20, 8), cell("searches_by_type", "regexp", 6, 5))
		}
		s.cells("crit", daysAgo(d).Format(time.DateOnly), day...)
	}
	s.cells("crit", daysAgo(2).Format(time.DateOnly), cell("event_count", "ViewBlob", 30, 6))
}

func rowsFor(s report.Section, instance string) [][]string {
	var out [][]string
	for _, r := range s.Rows {
		if r[0] == instance {
			out = append(out, r)
		}
	}
	return out
}

func section(t *testing.T, r *report.Report, title string) report.Section {
	t.Helper()
	for _, s := range r.Sections {
		if s.Title == title {
			if s.Definition == "" {
				t.Fatalf("%s has no definition", title)
			}
			return s
		}
	}
	t.Fatalf("no section %q", title)
	return report.Section{}
}

func TestReportAnswersComputedByHand(t *testing.T) {
	seed(t)
	r, err := report.Build(context.Background(), reporting, report.Options{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	check := func(title, instance string, want [][]string) {
		t.Helper()
		if got := rowsFor(section(t, r, title), instance); !reflect.DeepEqual(got, want) {
			t.Errorf("%s for %s:\n got %v\nwant %v", title, instance, got, want)
		}
	}
	u := user
	check("Searches per user per month by pattern type", "srch", [][]string{
		{"srch", u("A"), "2026-10", "3", "2", "0", "5"},
		{"srch", u("B"), "2026-11", "0", "4", "0", "4"},
		{"srch", u("A"), "2026-11", "0", "0", "1", "1"},
	})
	check("Searches per user per month by pattern type", "crit", [][]string{
		{"crit", "(all users, aggregate)", "2026-11", "6", "20", "0", "26"},
	})
	check("Power users", "power", [][]string{{"power", u("P"), "12"}, {"power", u("R"), "10"}})
	check("Sessions using more than one feature", "sess", [][]string{{"sess", "4", "2", "0.50", "2"}})
	check("Where to intervene", "drop", [][]string{{"drop", u("D"), "3", "8.00", "-62.5%"}})
	check("Where to intervene", "crit", [][]string{{"crit", "(whole instance)", "30", "100.00", "-70%"}})

	stickyInstance := report.Options{Now: now, Instance: "stick"}
	rs, err := report.Build(context.Background(), reporting, stickyInstance)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := section(t, rs, "Stickiest features").Rows, [][]string{{"notebooks", "2", "2", "1.00"}, {"search", "3", "1", "0.33"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("stickiness got %v, want %v", got, want)
	}

	if !reflect.DeepEqual(r.CriticalOnly, []string{"crit"}) {
		t.Errorf("CriticalOnly instances %v", r.CriticalOnly)
	}
	if got := section(t, r, "Power users").NeedsEventLevel; !reflect.DeepEqual(got, []string{"crit"}) {
		t.Errorf("power users must say crit needs EventLevel, got %v", got)
	}

	var text, js bytes.Buffer
	if err := r.WriteText(&text, 5); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"== Power users ==", "at least 10 distinct UTC days", "Needs EventLevel", "more rows"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q", want)
		}
	}
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back report.Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Sections) != 5 {
		t.Fatalf("JSON report: %v, %d sections", err, len(back.Sections))
	}
}
