/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
)

// The benchmark instances' event_logs look like a large real instance's, so that no cache in the
// collector hits more often than it would in production. The distributions (seeded, so every
// run reads the same rows):
//
//   - users: 60,000 signed-in users, activity Zipf-distributed (s = 1.07, v = 100: the busiest
//     user has 0.2% of the events, half come from the busiest ~1,600 users, about 44,700 users
//     appear in 300,000 rows); 4% of rows are anonymous, from 15,000 anonymous ids;
//   - names: five rows in six carry one of the catalog's 20 event names (search and code
//     navigation most often), one in six one of 12 names the catalog does not list;
//   - public_argument: the catalog's properties with listed values (3% unlisted values), next to
//     free-text properties that must be dropped (queries, repository names, file paths, result
//     counts, a per-row request id): about 120-250 bytes per row;
//   - feature_flags: 400 flag names (the catalog's 8 and 392 experiments); each user evaluates
//     4-24 of them, and their values change weekly, so a document repeats only within one user's
//     week (tens of thousands of distinct documents);
//   - version: 1,164 distinct values (5.0.0-5.11.95, 8 release candidates, 4 development builds
//     the catalog refuses), newer releases more often;
//   - client: 5 values (WEB 60%, VSCODE_CODY_EXTENSION 20%, JETBRAINS_CODY_EXTENSION 10%, SERVER
//     7%, and an internal tool the catalog does not list, 3%); source: 4 values;
//   - timestamp: increasing with id over the last 90 days; url and argument: personal data the
//     collector never reads.
const (
	realisticUsers      = 60_000
	realisticAnonymous  = 15_000
	realisticFlags      = 400
	realisticDays       = 90
	realisticSeed       = 42
	realisticFlagsMin   = 4
	realisticFlagsRange = 21
)

// realisticUnlisted are event names the catalog does not list.
var realisticUnlisted = []string{"UserSignedUp", "ViewRepository", "CodyChatSubmitted", "PasswordResetRequested",
	"ViewSettings", "ExtensionActivated", "BatchChangeCreated", "InsightsViewed", "OwnershipPanelOpened",
	"ViewHome", "AccessTokenCreated", "RepoSettingsSaved"}

// realisticListed are the catalog's names, each repeated by its weight.
var realisticListed = func() []string {
	weights := map[string]int{"SearchSubmitted": 12, "SearchResultsQueried": 12, "ViewSearchResults": 8, "SearchResultClicked": 6,
		"ViewBlob": 14, "hover": 14, "goToDefinition": 6, "goToDefinition.preloaded": 3, "findReferences": 4, "codeintel.lsifHover": 3,
		"SearchNotebookPageViewed": 1}
	var out []string
	for _, name := range catalogv1.Current().Names() {
		w, ok := weights[name]
		if !ok {
			w = 1 // the latency events
		}
		for range w {
			out = append(out, name)
		}
	}
	return out
}()

// realisticVersions are the 1,164 version strings, newest last.
var realisticVersions = func() []string {
	var out []string
	for minor := range 12 {
		for patch := range 96 {
			out = append(out, fmt.Sprintf("5.%d.%d", minor, patch))
		}
		if minor >= 4 {
			out = append(out, fmt.Sprintf("5.%d.0-rc.1", minor))
		}
	}
	return append(out, "0.0.0+dev", "5.11.0-dev-acme-build", "main-2026-11-01", "insiders")
}()

var realisticFlagNames = func() []string {
	out := append([]string(nil), catalogv1.Current().FeatureFlags...)
	for i := len(out); i < realisticFlags; i++ {
		out = append(out, fmt.Sprintf("exp-%03d-rollout", i))
	}
	return out
}()

// realisticGenerator produces the rows; one per instance database, seeded.
type realisticGenerator struct {
	r     *rand.Rand
	users *rand.Zipf
	start time.Time
	step  time.Duration
}

func newRealisticGenerator(n int, now time.Time) *realisticGenerator {
	r := rand.New(rand.NewPCG(realisticSeed, realisticSeed*7)) //nolint:gosec // synthetic data
	span := realisticDays * 24 * time.Hour
	return &realisticGenerator{r: r, users: rand.NewZipf(r, 1.07, 100, realisticUsers-1), start: now.Add(-span),
		step: span / time.Duration(max(n, 1))}
}

// flagsDoc is user's feature_flags document in week: the flags it evaluates and their values.
func flagsDoc(user int64, week int64) []byte {
	ur := rand.New(rand.NewPCG(uint64(user), 0xf1a6))       //nolint:gosec // synthetic data
	wr := rand.New(rand.NewPCG(uint64(user), uint64(week))) //nolint:gosec // synthetic data
	n := realisticFlagsMin + ur.IntN(realisticFlagsRange)
	doc := make(map[string]bool, n)
	for range n {
		doc[realisticFlagNames[ur.IntN(realisticFlags)]] = wr.IntN(2) == 0
	}
	out, _ := json.Marshal(doc)
	return out
}

func (g *realisticGenerator) pick(list []string, unlisted string, unlistedPercent int) string {
	if g.r.IntN(100) < unlistedPercent {
		return unlisted
	}
	return list[g.r.IntN(len(list))]
}

// row returns the columns of row i (see realisticColumns).
func (g *realisticGenerator) row(i int) []any {
	r := g.r
	ts := g.start.Add(time.Duration(i) * g.step)
	user := int64(g.users.Uint64()) + 1
	anon, flagsKey := "", user
	if r.IntN(100) < 4 {
		a := r.IntN(realisticAnonymous)
		user, anon, flagsKey = 0, fmt.Sprintf("anon-%08x", a*2654435761%(1<<32)), int64(realisticUsers+a)
	}
	name := realisticListed[r.IntN(len(realisticListed))]
	if r.IntN(6) == 0 {
		name = realisticUnlisted[r.IntN(len(realisticUnlisted))]
	}
	repo := fmt.Sprintf("github.com/acme-%d/service-%d", r.IntN(300), r.IntN(5000))
	props := map[string]any{"requestId": fmt.Sprintf("%016x", r.Uint64())}
	switch {
	case name == "SearchSubmitted" || name == "SearchResultsQueried" || name == "SearchResultClicked":
		props["patternType"] = g.pick(catalogv1.PatternTypes, "fuzzy-experimental", 3)
		props["source"] = g.pick([]string{"nav", "home", "repo", "tree", "filter", "type", "scopePage", "codeMonitoring", "notebook"}, "acme-portal", 3)
		props["query"] = fmt.Sprintf("repo:%s lang:go func handle%s count:%d", repo, []string{"Payment", "Login", "Invoice", "Token"}[r.IntN(4)], r.IntN(500))
		props["resultCount"] = r.IntN(10_000)
		if name == "SearchResultClicked" {
			props["resultType"] = g.pick([]string{"file", "repo", "symbol", "commit", "diff", "path", "content"}, "snippet", 3)
			props["rank"] = r.IntN(50)
		}
	case len(name) > 17 && name[:17] == "search.latencies.":
		props["durationMs"] = math.Round(math.Exp(4 + 2*r.NormFloat64()))
		props["query"] = "type:symbol " + repo
	case name == "ViewBlob" || name == "hover" || name == "findReferences" || name == "goToDefinition" ||
		name == "goToDefinition.preloaded" || name == "codeintel.lsifHover":
		props["languageId"] = g.pick(catalogv1.LanguageIDs, "acme-dsl", 3)
		props["repo"] = repo
		props["path"] = fmt.Sprintf("internal/%s/handler_%d.go", []string{"auth", "billing", "search", "api"}[r.IntN(4)], r.IntN(200))
	default:
		props["page"] = "/" + repo
	}
	public, _ := json.Marshal(props)
	// Newer releases more often: the square of a uniform variate, from the end of the list.
	v := realisticVersions[len(realisticVersions)-1-int(float64(len(realisticVersions))*math.Pow(r.Float64(), 2))]
	client := "WEB"
	switch c := r.IntN(100); {
	case c < 20:
		client = "VSCODE_CODY_EXTENSION"
	case c < 30:
		client = "JETBRAINS_CODY_EXTENSION"
	case c < 37:
		client = "SERVER"
	case c < 40:
		client = "acme-internal-dashboard"
	}
	source := []string{"WEB", "WEB", "CODY", "IDEEXTENSION", "BACKEND"}[r.IntN(5)]
	return []any{name, "https://sourcegraph.acme-corp.com/" + repo, user, anon, source,
		`{"query":"` + repo + ` password"}`, string(public), v, ts, string(flagsDoc(flagsKey, ts.Unix()/(7*24*3600))), client}
}

var realisticColumns = []string{"name", "url", "user_id", "anonymous_user_id", "source", "argument", "public_argument",
	"version", "timestamp", "feature_flags", "client"}

// fillRealistic inserts n realistic rows into event_logs (ids 1..n, timestamps increasing).
func fillRealistic(ctx context.Context, pool *pgxpool.Pool, n int) error {
	g := newRealisticGenerator(n, time.Now())
	i := 0
	_, err := pool.CopyFrom(ctx, pgx.Identifier{"event_logs"}, realisticColumns, pgx.CopyFromFunc(func() ([]any, error) {
		if i == n {
			return nil, nil
		}
		i++
		return g.row(i - 1), nil
	}))
	if err != nil {
		return err
	}
	_, err = pool.Exec(ctx, "VACUUM ANALYZE event_logs")
	return err
}
