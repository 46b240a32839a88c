/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collector_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

// TestAggregatesOnCraftedData checks every published number against values worked out by hand,
// and that small cells (and their complements) are not published.
func TestAggregatesOnCraftedData(t *testing.T) {
	in := newInstance(t, v1.TierCriticalOnly, 100)
	now := time.Now().UTC()
	today := now.Truncate(24 * time.Hour)
	yesterday := today.AddDate(0, 0, -1)
	at := func(day time.Time) time.Time { return day.Add(10 * time.Hour) }
	if now.Before(today.Add(10 * time.Hour)) {
		at = func(day time.Time) time.Time { return day.Add(time.Minute) }
	}
	add := func(name string, user int, day time.Time, pattern string) {
		in.exec(`INSERT INTO event_logs (name, user_id, source, version, timestamp, public_argument) VALUES ($1, $2, 'WEB', '5.3.0', $3, $4::jsonb)`,
			name, user, at(day), fmt.Sprintf(`{"patternType":%q}`, pattern))
	}
	for u := 1; u <= 10; u++ { // yesterday: 10 users search literally
		add("SearchSubmitted", u, yesterday, "literal")
	}
	for u := 11; u <= 12; u++ { // yesterday: 2 users search with regexps: too few to publish
		add("SearchSubmitted", u, yesterday, "regexp")
	}
	for u := 101; u <= 107; u++ { // today: 7 users hover
		add("hover", u, today, "")
	}
	add("UserSignedUp", 500, today, "") // not allow-listed: counts as activity, never as a name

	p := in.pipeline()
	if _, err := p.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	type key struct{ day, metric, dim string }
	got := map[key][2]int64{}
	final := map[string]bool{}
	rows, err := rcv.Store.Pool().Query(context.Background(), "SELECT day::text, metric, dimension, value, users, final FROM aggregates WHERE instance_id = $1", in.id)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var k key
		var v, u int64
		var f bool
		if err := rows.Scan(&k.day, &k.metric, &k.dim, &v, &u, &f); err != nil {
			t.Fatal(err)
		}
		got[k] = [2]int64{v, u}
		final[k.day] = f
	}
	rows.Close()
	y, d := yesterday.Format(time.DateOnly), today.Format(time.DateOnly)
	want := map[key][2]int64{
		{y, "event_count", "SearchSubmitted"}:   {12, 12},
		{y, "instance_version", "5.3.0"}:        {12, 12},
		{y, "feature_users", "search"}:          {12, 12},
		{y, "active_users_1d", ""}:              {12, 12},
		{y, "active_users_7d", ""}:              {12, 12},
		{y, "active_users_28d", ""}:             {12, 12},
		{d, "event_count", "hover"}:             {7, 7},
		{d, "instance_version", "5.3.0"}:        {7, 7},
		{d, "feature_users", "code_navigation"}: {7, 7},
		{d, "active_users_1d", ""}:              {8, 8}, // 7 hovering users and the one who signed up
		{d, "active_users_7d", ""}:              {20, 20},
		{d, "active_users_28d", ""}:             {20, 20},
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%v = %v, want %v", k, got[k], w)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected cell %v = %v (searches by type must be suppressed: regexp has 2 users, so literal goes too)", k, got[k])
		}
	}
	if !final[y] || final[d] {
		t.Errorf("yesterday must be final and today partial: %v", final)
	}

	// A resend replaces: running again adds nothing.
	if _, err := p.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	var total int64
	_ = rcv.Store.Pool().QueryRow(context.Background(), "SELECT sum(value) FROM aggregates WHERE instance_id = $1 AND metric = 'event_count'", in.id).Scan(&total)
	if total != 19 {
		t.Fatalf("event counts add up to %d after a resend, want 19", total)
	}
}
