/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package prometheus holds the tests of the monitoring component: the alerts are checked and
// unit-tested with promtool, and every metric the alerts and the dashboard read is one the
// manager, the collector or the receiver registers.
package prometheus

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"
	"sigs.k8s.io/yaml"

	"github.com/sourcegraph/telemetry-operator/collector"
	"github.com/sourcegraph/telemetry-operator/controllers"
	"github.com/sourcegraph/telemetry-operator/receiver/retention"
	"github.com/sourcegraph/telemetry-operator/receiver/server"
)

// promtool returns the promtool the Makefile built (make test sets TELEMETRY_TEST_PROMTOOL).
func promtool(t *testing.T) string {
	t.Helper()
	p := os.Getenv("TELEMETRY_TEST_PROMTOOL")
	if p == "" {
		t.Fatal("TELEMETRY_TEST_PROMTOOL is not set: run the tests with `make test`, which builds promtool into bin/")
	}
	return p
}

type ruleFile struct {
	Groups []struct {
		Name  string           `json:"name"`
		Rules []map[string]any `json:"rules"`
	} `json:"groups"`
}

// alertRules returns the spec of alerts.yaml, a Prometheus rule file.
func alertRules(t *testing.T) []byte {
	t.Helper()
	raw, err := os.ReadFile("alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		APIVersion string          `json:"apiVersion"`
		Kind       string          `json:"kind"`
		Metadata   json.RawMessage `json:"metadata"`
		Spec       json.RawMessage `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.APIVersion != "monitoring.coreos.com/v1" || doc.Kind != "PrometheusRule" {
		t.Fatalf("alerts.yaml is a %s %s", doc.APIVersion, doc.Kind)
	}
	out, err := yaml.JSONToYAML(doc.Spec)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func runPromtool(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(promtool(t), args...) //nolint:gosec // the promtool make test built
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestAlertsFireAndStayQuietAsTested checks the rules and runs their unit tests with promtool.
// Every alert must have a test that expects it to fire.
func TestAlertsFireAndStayQuietAsTested(t *testing.T) {
	dir := t.TempDir()
	rules := alertRules(t)
	if err := os.WriteFile(filepath.Join(dir, "alerts.rules.yaml"), rules, 0o600); err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(filepath.Join("testdata", "alerts_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "alerts_test.yaml"), tests, 0o600); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, dir, "check", "rules", "alerts.rules.yaml")
	out := runPromtool(t, dir, "test", "rules", "alerts_test.yaml")
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules:\n%s", out)
	}

	var rf ruleFile
	if err := yaml.Unmarshal(rules, &rf); err != nil {
		t.Fatal(err)
	}
	var suite struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `json:"alertname"`
				ExpAlerts []map[string]any `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(tests, &suite); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range suite.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			name, _ := r["alert"].(string)
			if name == "" {
				continue
			}
			if !fires[name] || !quiet[name] {
				t.Errorf("alert %s needs a test where it fires and one where it stays quiet (fires %v, quiet %v)", name, fires[name], quiet[name])
			}
			if sev, _ := r["labels"].(map[string]any)["severity"].(string); !slices.Contains([]string{"critical", "warning", "info"}, sev) {
				t.Errorf("alert %s has severity %q", name, sev)
			}
		}
	}
}

// dashboard is the part of a Grafana dashboard the checks read.
type dashboard struct {
	Title     string `json:"title"`
	UID       string `json:"uid"`
	Templates struct {
		List []struct {
			Name string `json:"name"`
			Type string `json:"type"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID         int    `json:"id"`
		Title      string `json:"title"`
		Type       string `json:"type"`
		Datasource struct {
			Type string `json:"type"`
			UID  string `json:"uid"`
		} `json:"datasource"`
		GridPos struct{ X, Y, W, H int } `json:"gridPos"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	raw, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	return d
}

// TestDashboardIsWellFormedAndItsQueriesParse: every panel has an id, a title, a place and a
// query through the datasource variable; every query is valid PromQL (promtool checks them as
// recording rules).
func TestDashboardIsWellFormedAndItsQueriesParse(t *testing.T) {
	d := loadDashboard(t)
	if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard without title, uid or panels: %+v", d)
	}
	if len(d.Templates.List) != 1 || d.Templates.List[0].Name != "datasource" || d.Templates.List[0].Type != "datasource" {
		t.Errorf("the dashboard needs its datasource variable: %+v", d.Templates.List)
	}
	ids := map[int]bool{}
	var rules []map[string]string
	for _, p := range d.Panels {
		if ids[p.ID] || p.ID == 0 || p.Title == "" || p.Type == "" || p.GridPos.W == 0 || p.GridPos.H == 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %d %q: duplicate or missing id, title, type or place (%+v)", p.ID, p.Title, p.GridPos)
		}
		ids[p.ID] = true
		if p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not query through the datasource variable: %+v", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			rules = append(rules, map[string]string{"record": fmt.Sprintf("dashboard:panel_%d_%s", p.ID, strings.ToLower(q.RefID)), "expr": q.Expr})
		}
	}
	file, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard.rules.yaml"), file, 0o600); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, dir, "check", "rules", "dashboard.rules.yaml")
}

// registered records the names of the metrics registered with it.
type registered map[string]bool

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r registered) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			r[m[1]] = true
		}
	}
	return nil
}

func (r registered) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = r.Register(c)
	}
}

func (r registered) Unregister(prometheus.Collector) bool { return true }

// exported returns the names of every metric the three programs register.
func exported() registered {
	r := registered{}
	controllers.NewMetrics(r)
	collector.NewMetrics(r)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	server.New(nil, server.Limits{}, log, r)
	retention.New(nil, log, r, clock.RealClock{}, time.Hour)
	return r
}

var metricName = regexp.MustCompile(`\b((?:telemetry|collector|receiver)_[a-z0-9_]+)\b`)

// TestQueriesReadMetricsThatExist: a renamed metric must not leave an alert or a panel silently
// empty.
func TestQueriesReadMetricsThatExist(t *testing.T) {
	have := exported()
	if len(have) < 20 {
		t.Fatalf("only %d metrics found: %v", len(have), have)
	}
	var exprs []string
	for _, p := range loadDashboard(t).Panels {
		for _, q := range p.Targets {
			exprs = append(exprs, q.Expr)
		}
	}
	var rf ruleFile
	if err := yaml.Unmarshal(alertRules(t), &rf); err != nil {
		t.Fatal(err)
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, fmt.Sprint(r["expr"]))
		}
	}
	used := 0
	for _, e := range exprs {
		for _, m := range metricName.FindAllStringSubmatch(e, -1) {
			name := m[1]
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
			if !have[name] && !have[base] {
				t.Errorf("%q reads %s, which nothing registers", e, name)
			}
			used++
		}
	}
	if used < 20 {
		t.Errorf("only %d metric references found in the queries: the extraction is broken", used)
	}
}
