/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package argocd holds the Argo CD health check for TelemetryPolicy; this test runs the Lua the
// way Argo CD does (gopher-lua, obj as a global table) against representative objects.
package argocd

import (
	"os"
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

func health(t *testing.T, script string, obj map[string]any) (string, string) {
	t.Helper()
	L := lua.NewState()
	defer L.Close()
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		t.Fatal(err)
	}
	ret, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatal("the health script returned no table")
	}
	return ret.RawGetString("status").String(), ret.RawGetString("message").String()
}

func toLua(L *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case map[string]any:
		t := L.NewTable()
		for k, val := range x {
			t.RawSetString(k, toLua(L, val))
		}
		return t
	case []any:
		t := L.NewTable()
		for _, val := range x {
			t.Append(toLua(L, val))
		}
		return t
	case string:
		return lua.LString(x)
	case bool:
		return lua.LBool(x)
	case float64:
		return lua.LNumber(x)
	case int64:
		return lua.LNumber(x)
	case nil:
		return lua.LNil
	}
	return lua.LNil
}

func policy(t *testing.T, doc string) map[string]any {
	t.Helper()
	obj := map[string]any{}
	if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
		t.Fatal(err)
	}
	return obj
}

func TestHealthCheck(t *testing.T) {
	raw, err := os.ReadFile("telemetrypolicy-health.lua")
	if err != nil {
		t.Fatal(err)
	}
	script := string(raw)
	cases := []struct {
		name, doc, want string
	}{
		{"no status yet", "metadata: {generation: 1}\nspec: {}", "Progressing"},
		{"old generation", "metadata: {generation: 2}\nstatus: {observedGeneration: 1, conditions: [{type: Ready, status: 'True'}]}", "Progressing"},
		{"ready", "metadata: {generation: 2}\nstatus: {observedGeneration: 2, conditions: [{type: Ready, status: 'True', reason: Enforced, message: ok}]}", "Healthy"},
		{"rolling out", "metadata: {generation: 2}\nstatus: {observedGeneration: 2, conditions: [{type: Reconciling, status: 'True'}, {type: Ready, status: 'False', reason: RollingOut}]}", "Progressing"},
		{"stalled", "metadata: {generation: 2}\nstatus: {observedGeneration: 2, conditions: [{type: Stalled, status: 'True', reason: IssuerUnavailable, message: x}, {type: Ready, status: 'False'}]}", "Degraded"},
		{"suspended", "metadata: {generation: 2}\nspec: {suspend: true}\nstatus: {observedGeneration: 2, conditions: []}", "Suspended"},
		{"suspended and stalled", "metadata: {generation: 2}\nspec: {suspend: true}\nstatus: {observedGeneration: 2, conditions: [{type: Stalled, status: 'True', reason: InstanceOwnedElsewhere, message: x}, {type: Ready, status: 'False'}]}", "Degraded"},
		{"suspended, stalled at an older generation", "metadata: {generation: 3}\nspec: {suspend: true}\nstatus: {observedGeneration: 2, conditions: [{type: Stalled, status: 'True', reason: InstanceOwnedElsewhere}]}", "Suspended"},
		{"stalled at an older generation", "metadata: {generation: 3}\nstatus: {observedGeneration: 2, conditions: [{type: Stalled, status: 'True', reason: InstanceOwnedElsewhere}]}", "Progressing"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got, msg := health(t, script, policy(t, tc.doc)); got != tc.want {
				t.Fatalf("status %s (%s), want %s", got, msg, tc.want)
			}
		})
	}
	// The argocd-cm patch embeds the same script.
	patch, err := os.ReadFile("argocd-cm-patch.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cm := map[string]any{}
	if err := yaml.Unmarshal(patch, &cm); err != nil {
		t.Fatal(err)
	}
	embedded := cm["data"].(map[string]any)["resource.customizations.health.telemetry.sourcegraph.com_TelemetryPolicy"].(string)
	if strings.TrimSpace(embedded) != strings.TrimSpace(script) {
		t.Fatal("argocd-cm-patch.yaml and telemetrypolicy-health.lua differ")
	}
}
