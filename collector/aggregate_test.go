/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collector_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/collector/aggregate"
	"github.com/sourcegraph/telemetry-operator/collector/aggregate/aggregatetest"
	"github.com/sourcegraph/telemetry-operator/collector/source"
)

// aggregateKey names one published cell.
type aggregateKey struct{ day, metric, dim string }

// publishedCells reads what the receiver stored for an instance.
func publishedCells(t *testing.T, in *instance) map[aggregateKey][2]int64 {
	t.Helper()
	got := map[aggregateKey][2]int64{}
	rows, err := rcv.DB.Query(context.Background(), "SELECT day::text, metric, dimension, value, users FROM aggregates WHERE instance_id = $1", in.id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var k aggregateKey
		var v, u int64
		if err := rows.Scan(&k.day, &k.metric, &k.dim, &v, &u); err != nil {
			t.Fatal(err)
		}
		got[k] = [2]int64{v, u}
	}
	return got
}

// TestAggregatesOnCraftedData checks every published number against values worked out by hand:
// small cells and the cells they could be recovered from are withheld, only closed days leave,
// and each day leaves once, so rows committed after it was published change nothing.
func TestAggregatesOnCraftedData(t *testing.T) {
	in := newInstance(t, v1.TierCriticalOnly, 100)
	today := time.Now().UTC().Truncate(24 * time.Hour)
	d3, d2 := today.AddDate(0, 0, -3), today.AddDate(0, 0, -2) // always closed (AggregateGrace is 2h)
	add := func(name string, user int, at time.Time, pattern string) {
		in.exec(`INSERT INTO event_logs (name, user_id, source, version, timestamp, public_argument) VALUES ($1, $2, 'WEB', '5.3.0', $3, $4::jsonb)`,
			name, user, at, fmt.Sprintf(`{"patternType":%q}`, pattern))
	}
	for u := 1; u <= 10; u++ { // d3: 10 users search literally
		add("SearchSubmitted", u, d3.Add(10*time.Hour), "literal")
	}
	for u := 11; u <= 12; u++ { // d3: 2 users search with regexps: too few to publish
		add("SearchSubmitted", u, d3.Add(11*time.Hour), "regexp")
	}
	for u := 101; u <= 107; u++ { // d2: 7 users hover
		add("hover", u, d2.Add(9*time.Hour), "")
	}
	add("UserSignedUp", 500, d2.Add(23*time.Hour), "") // not listed: counts as activity, never as a name
	for u := 201; u <= 220; u++ {                      // today: 20 users search; today is not closed
		add("SearchSubmitted", u, today.Add(time.Second), "literal")
	}

	p := in.pipeline()
	if _, err := p.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := publishedCells(t, in)
	y, d := d3.Format(time.DateOnly), d2.Format(time.DateOnly)
	want := map[aggregateKey][2]int64{
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
	for k, v := range got {
		if _, ok := want[k]; ok {
			continue
		}
		switch {
		case k.day == y || k.day == d:
			// searches_by_type regexp has 2 users; literal = event_count - regexp would give it away.
			t.Errorf("unexpected cell %v = %v", k, v)
		case k.day >= today.Format(time.DateOnly):
			t.Errorf("a day that has not ended was published: %v = %v", k, v)
		case k.day < y || (k.metric != "active_users_7d" && k.metric != "active_users_28d"):
			t.Errorf("a day without events published %v = %v", k, v)
		}
	}
	through := p.Progress().AggregatesThrough
	if through < d || through >= today.Format(time.DateOnly) {
		t.Errorf("AggregatesThrough = %q, want a closed day from %s on", through, d)
	}

	// Rows committed after a day was published change nothing: the day left once.
	for u := 301; u <= 320; u++ {
		add("SearchSubmitted", u, d2.Add(12*time.Hour), "literal")
	}
	if _, err := p.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A collector that lost its progress sends the days again; the receiver keeps the first.
	if err := os.Remove(in.stateFile); err != nil {
		t.Fatal(err)
	}
	if _, err := in.pipeline().RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	again := publishedCells(t, in)
	for k, v := range got {
		if again[k] != v {
			t.Errorf("after a resend %v = %v, first published as %v", k, again[k], v)
		}
	}
	for k, v := range again {
		if _, ok := got[k]; !ok && k.day <= d {
			t.Errorf("a published day gained the cell %v = %v", k, v)
		}
	}
}

// TestNoPublishedCellNarrowsASuppressedOne is the attacker test run the way an analyst with
// the receiver's database would: randomized instance-days (few users, skewed names, many
// versions, earlier users in the 7- and 28-day windows) go through event_logs, the collector
// and the receiver; every cell stored for the day must be the cell's true value (from the
// definitions, not from the collector's code), and from everything stored for the day no cell
// left out may be narrowed below 5 users. Publishing every cell of 5 users or more would let
// the attacker narrow some of these days, so the test has teeth.
func TestNoPublishedCellNarrowsASuppressedOne(t *testing.T) {
	instances := 24
	if testing.Short() {
		instances = 4
	}
	rng := rand.New(rand.NewPCG(2026, 13))
	day := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -2)
	date := day.Format(time.DateOnly)
	exposedByPrimaryOnly := 0
	for i := range instances {
		d := aggregatetest.Random(rng, date)
		in := newInstance(t, v1.TierCriticalOnly, 100)
		var names, versions, patterns []*string
		var users []int64
		var at []time.Time
		str := func(s string) *string {
			if s == "" {
				return nil
			}
			return &s
		}
		for j, e := range d.Events {
			names, versions, patterns = append(names, str(e.Name)), append(versions, str(e.Version)), append(patterns, str(e.PatternType))
			users, at = append(users, int64(e.User)), append(at, day.Add(time.Duration(j%1400)*time.Minute))
		}
		// Users active earlier in the windows and not on the day.
		for u := range d.EarlierIn7 {
			names, versions, patterns = append(names, str("hover")), append(versions, str("5.3.0")), append(patterns, nil)
			users, at = append(users, int64(1000+u)), append(at, day.AddDate(0, 0, -3))
		}
		for u := range d.EarlierIn28 {
			names, versions, patterns = append(names, str("hover")), append(versions, str("5.3.0")), append(patterns, nil)
			users, at = append(users, int64(2000+u)), append(at, day.AddDate(0, 0, -20))
		}
		in.exec(`INSERT INTO event_logs (name, user_id, version, timestamp, public_argument)
			SELECT n, u, v, ts, CASE WHEN p IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('patternType', p) END
			FROM unnest($1::text[], $2::bigint[], $3::text[], $4::timestamptz[], $5::text[]) AS r(n, u, v, ts, p)`,
			names, users, versions, at, patterns)
		if _, err := in.pipeline().RunOnce(context.Background()); err != nil {
			t.Fatal(err)
		}
		truth := aggregatetest.Cells(d)
		byCell := map[aggregateKey][2]int64{}
		for _, c := range truth {
			byCell[aggregateKey{c.Day, c.Metric, c.Dimension}] = [2]int64{c.Value, c.Users}
		}
		var stored []batchv1.Aggregate
		for k, v := range publishedCells(t, in) {
			if k.day != date {
				continue
			}
			if byCell[k] != v {
				t.Fatalf("instance %d: stored %v = %v, its definition gives %v", i, k, v, byCell[k])
			}
			stored = append(stored, batchv1.Aggregate{Day: k.day, Metric: k.metric, Dimension: k.dim, Value: v[0], Users: v[1], Final: true})
		}
		isolated, err := aggregatetest.Isolated(truth, stored)
		if err != nil {
			t.Fatalf("instance %d: %v", i, err)
		}
		if len(isolated) > 0 {
			t.Fatalf("instance %d: from the receiver's database, cells narrow below %d users: %v\ntruth %v\nstored %v", i, batchv1.MinCellUsers, isolated, truth, stored)
		}
		var primaryOnly []batchv1.Aggregate
		for _, c := range truth {
			if c.Users >= batchv1.MinCellUsers {
				primaryOnly = append(primaryOnly, c)
			}
		}
		if naive, err := aggregatetest.Isolated(truth, primaryOnly); err == nil && len(naive) > 0 {
			exposedByPrimaryOnly++
		}
	}
	t.Logf("%d instance-days through the receiver; publishing every cell of 5 users or more would have exposed %d", instances, exposedByPrimaryOnly)
	if exposedByPrimaryOnly == 0 {
		t.Fatal("no day here needs more than primary suppression: the test proves nothing")
	}
}

// TestAggregateDaysAreUTCWhateverTheSessionTimeZone: a day is a UTC day however the instance
// database's sessions are configured; events just outside it count for their own days.
func TestAggregateDaysAreUTCWhateverTheSessionTimeZone(t *testing.T) {
	day := time.Date(2026, 10, 14, 0, 0, 0, 0, time.UTC)
	for _, zone := range []string{"Pacific/Kiritimati", "Etc/GMT+12"} { // UTC+14 and UTC-12
		t.Run(zone, func(t *testing.T) {
			in := newInstance(t, v1.TierCriticalOnly, 100)
			add := func(first, last int, at time.Time) {
				for u := first; u <= last; u++ {
					in.exec(`INSERT INTO event_logs (name, user_id, version, timestamp) VALUES ('hover', $1, '5.3.0', $2)`, u, at)
				}
			}
			add(1, 6, day.Add(-30*time.Minute))               // the day before
			add(11, 16, day.Add(30*time.Minute))              // the day, early
			add(21, 26, day.Add(23*time.Hour+30*time.Minute)) // the day, late
			add(31, 36, day.Add(24*time.Hour+30*time.Minute)) // the day after: never computed
			reader, err := source.Open(context.Background(), in.dsn+"&timezone="+zone)
			if err != nil {
				t.Fatal(err)
			}
			defer reader.Close()
			var tz string
			if err := reader.Pool().QueryRow(context.Background(), "SHOW TimeZone").Scan(&tz); err != nil || tz != zone {
				t.Fatalf("session time zone %q (%v), want %q", tz, err, zone)
			}
			periods := []consentv1.Window{{Start: day.AddDate(0, 0, -30)}}
			cells, err := aggregate.Compute(context.Background(), reader.Pool(), day.AddDate(0, 0, -1), day, periods)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]int64{}
			for _, c := range cells {
				if c.Metric == batchv1.MetricActiveUsers1d {
					got[c.Day] = c.Users
				}
				if c.Day > day.Format(time.DateOnly) {
					t.Errorf("a cell of a day after the range: %+v", c)
				}
			}
			want := map[string]int64{day.AddDate(0, 0, -1).Format(time.DateOnly): 6, day.Format(time.DateOnly): 12}
			for d, n := range want {
				if got[d] != n {
					t.Errorf("active users on %s = %d, want %d (all: %v)", d, got[d], n, got)
				}
			}
		})
	}
}

// TestVersionCellsAreBoundedInTheDatabase: however many distinct versions an instance
// database holds, a day has at most MaxVersionCells version cells, none under 5 users: the
// collector's memory and the batch stay bounded.
func TestVersionCellsAreBoundedInTheDatabase(t *testing.T) {
	in := newInstance(t, v1.TierCriticalOnly, 100)
	day := time.Date(2026, 10, 14, 0, 0, 0, 0, time.UTC)
	in.exec(`INSERT INTO event_logs (name, user_id, version, timestamp)
		SELECT 'hover', v * 10 + u, '5.' || (v / 100) || '.' || (v % 100), $1::timestamptz
		FROM generate_series(1, 120) v, generate_series(1, 5) u`, day.Add(time.Hour))
	in.exec(`INSERT INTO event_logs (name, user_id, version, timestamp)
		SELECT 'hover', 5000 + v, '6.0.' || v, $1::timestamptz FROM generate_series(1, 30) v`, day.Add(time.Hour))
	reader, err := source.Open(context.Background(), in.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	cells, err := aggregate.Compute(context.Background(), reader.Pool(), day, day, []consentv1.Window{{Start: day.AddDate(0, 0, -1)}})
	if err != nil {
		t.Fatal(err)
	}
	versions := 0
	for _, c := range cells {
		if c.Metric == batchv1.MetricInstanceVersion {
			versions++
			if c.Users < batchv1.MinCellUsers {
				t.Errorf("a version cell under %d users was computed: %+v", batchv1.MinCellUsers, c)
			}
		}
	}
	if versions != aggregate.MaxVersionCells {
		t.Fatalf("%d version cells, want %d", versions, aggregate.MaxVersionCells)
	}
}

// TestAggregatesCountPeopleNotIDs: someone who browses before signing in leaves rows under an
// anonymous id and rows under a user id that also carry it. Counted as two users, three people
// would fill a cell of five and be published. A link is taken only from rows the aggregates
// count: one recorded while consent was Off decides nothing.
func TestAggregatesCountPeopleNotIDs(t *testing.T) {
	today := time.Now().UTC().Truncate(24 * time.Hour)
	d3, d2 := today.AddDate(0, 0, -3), today.AddDate(0, 0, -2)
	off, back := d3.Add(4*time.Hour), d3.Add(8*time.Hour) // (d3 is published by no one: partly Off)
	in := newInstanceConsent(t, v1.TierCriticalOnly, 100, consentv1.Timeline{
		{At: consentSince, Tier: consentv1.TierCriticalOnly}, {At: off, Tier: consentv1.TierOff}, {At: back, Tier: consentv1.TierCriticalOnly}})
	hover := func(user int, anonymous string, at time.Time) {
		in.exec(`INSERT INTO event_logs (name, user_id, anonymous_user_id, source, version, timestamp) VALUES ('hover', $1, $2, 'WEB', '5.3.0', $3)`,
			user, anonymous, at)
	}
	person := func(user int, day time.Time) {
		anonymous := fmt.Sprintf("browser-%d", user)
		hover(0, anonymous, day.Add(9*time.Hour))     // before signing in
		hover(user, anonymous, day.Add(10*time.Hour)) // signed in, same browser
	}
	for u := 1; u <= 3; u++ { // d3: three people, six ids
		person(u, d3)
	}
	for u := 11; u <= 15; u++ { // d2: five people
		person(u, d2)
	}
	// A browser linked to user 11 only by a row recorded while consent was Off: its anonymous
	// row counts as someone else.
	hover(11, "browser-off", off.Add(time.Hour))
	hover(0, "browser-off", d2.Add(11*time.Hour))

	if _, err := in.pipeline().RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := publishedCells(t, in)
	for k, v := range got {
		if k.day == d3.Format(time.DateOnly) {
			t.Errorf("three people published as %v = %v", k, v)
		}
	}
	d := d2.Format(time.DateOnly)
	want := map[aggregateKey][2]int64{
		{d, "event_count", "hover"}:             {11, 6},
		{d, "active_users_1d", ""}:              {6, 6},
		{d, "active_users_7d", ""}:              {9, 9},
		{d, "active_users_28d", ""}:             {9, 9},
		{d, "feature_users", "code_navigation"}: {6, 6},
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%v = %v, want %v", k, got[k], w)
		}
	}

	// A day's cells are what its own 28 days say, whichever days are computed with it: browsers
	// anonymous on one day that a user signs in from the next do not make the first day's five
	// ids one person (its cells would then depend on when it was computed), but in the next
	// day's cells they are that user: its 7-day count is six people, not eleven ids.
	later := newInstance(t, v1.TierCriticalOnly, 100)
	for b := 1; b <= 5; b++ {
		later.exec(`INSERT INTO event_logs (name, user_id, anonymous_user_id, source, version, timestamp) VALUES ('hover', 0, $1, 'WEB', '5.3.0', $2)`,
			fmt.Sprintf("browser-%d", b), d3.Add(9*time.Hour))
		later.exec(`INSERT INTO event_logs (name, user_id, anonymous_user_id, source, version, timestamp) VALUES ('hover', 50, $1, 'WEB', '5.3.0', $2)`,
			fmt.Sprintf("browser-%d", b), d2.Add(9*time.Hour))
		later.exec(`INSERT INTO event_logs (name, user_id, source, version, timestamp) VALUES ('hover', $1, 'WEB', '5.3.0', $2)`, 60+b, d2.Add(10*time.Hour))
	}
	if _, err := later.pipeline().RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	cells := publishedCells(t, later)
	if got := cells[aggregateKey{d3.Format(time.DateOnly), "active_users_1d", ""}]; got != [2]int64{5, 5} {
		t.Errorf("active_users_1d on %s = %v, want the day's own 5", d3.Format(time.DateOnly), got)
	}
	if got := cells[aggregateKey{d, "active_users_7d", ""}]; got != [2]int64{6, 6} {
		t.Errorf("active_users_7d on %s = %v, want 6 (user 50, whose 5 browsers the day before are his, and 5 others)", d, got)
	}

	// Someone whose browsers were linked to them on an earlier day is one person on a later
	// day too: four browsers of user 70 signed in on d3, anonymous on d2 next to user 70
	// himself and user 71. Counted by ids, d2 would have six users and its cells would be
	// published; it has two people.
	linked := newInstance(t, v1.TierCriticalOnly, 100)
	for b := 1; b <= 4; b++ {
		browser := fmt.Sprintf("browser-7%d", b)
		linked.exec(`INSERT INTO event_logs (name, user_id, anonymous_user_id, source, version, timestamp) VALUES ('hover', 70, $1, 'WEB', '5.3.0', $2)`, browser, d3.Add(9*time.Hour))
		linked.exec(`INSERT INTO event_logs (name, user_id, anonymous_user_id, source, version, timestamp) VALUES ('hover', 0, $1, 'WEB', '5.3.0', $2)`, browser, d2.Add(9*time.Hour))
	}
	linked.exec(`INSERT INTO event_logs (name, user_id, source, version, timestamp) VALUES ('hover', 70, 'WEB', '5.3.0', $1), ('hover', 71, 'WEB', '5.3.0', $1)`, d2.Add(10*time.Hour))
	if _, err := linked.pipeline().RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	for k, v := range publishedCells(t, linked) {
		if k.day == d || k.day == d3.Format(time.DateOnly) {
			t.Errorf("two people published as %v = %v", k, v)
		}
	}

	// Four people on d2 (users 21-24) and rows under the id Sourcegraph records its own
	// server-side events with ("backend"), which the admin (user 1) signed in under twelve days
	// before: only the 28-day count, which holds the admin too, has five people.
	fourPeople := func(what string, rows ...string) {
		t.Helper()
		in := newInstance(t, v1.TierCriticalOnly, 100)
		for u := 21; u <= 24; u++ {
			in.exec(`INSERT INTO event_logs (name, user_id, source, version, timestamp) VALUES ('hover', $1, 'WEB', '5.3.0', $2)`, u, d2.Add(9*time.Hour))
		}
		in.exec(`INSERT INTO event_logs (name, user_id, anonymous_user_id, source, version, timestamp) VALUES ('hover', 1, 'backend', 'BACKEND', '5.3.0', $1)`, d2.AddDate(0, 0, -12))
		for _, q := range rows {
			in.exec(q, d2.Add(10*time.Hour))
		}
		if _, err := in.pipeline().RunOnce(context.Background()); err != nil {
			t.Fatal(err)
		}
		cells := publishedCells(t, in)
		for k, v := range cells {
			if k.day == d && k.metric != "active_users_28d" {
				t.Errorf("%s: four people published as %v = %v", what, k, v)
			}
		}
		if got := cells[aggregateKey{d, "active_users_28d", ""}]; got != [2]int64{5, 5} {
			t.Errorf("%s: active_users_28d on %s = %v, want the four and the admin", what, d, got)
		}
	}
	// A shared id links to the user of its latest sign-in, active then, not to an older one.
	fourPeople("a server-side row on a day one of them signs in under the id",
		`INSERT INTO event_logs (name, user_id, anonymous_user_id, source, version, timestamp) VALUES ('hover', 22, 'backend', 'BACKEND', '5.3.0', $1)`,
		`INSERT INTO event_logs (name, user_id, anonymous_user_id, source, version, timestamp) VALUES ('hover', 0, 'backend', 'BACKEND', '5.3.0', $1)`)
	// Server-side rows are no person, nor the admin who last signed in under their id.
	fourPeople("a server-side row on a day nobody signs in under the id",
		`INSERT INTO event_logs (name, user_id, anonymous_user_id, source, version, timestamp) VALUES ('hover', 0, 'backend', 'BACKEND', '5.3.0', $1)`)
}
