/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package localstack

import "testing"

// TestWatchesTenants: every form the flag package accepts for --watch-tenant-namespaces turns
// the stack's tenant watch role binding on, and the last one given wins.
func TestWatchesTenants(t *testing.T) {
	for name, args := range map[string][]string{
		"on":         {"--watch-tenant-namespaces"},
		"one dash":   {"-watch-tenant-namespaces"},
		"=true":      {"--watch-tenant-namespaces=true"},
		"=1":         {"--watch-tenant-namespaces=1"},
		"=True":      {"--watch-tenant-namespaces=True"},
		"last wins":  {"--watch-tenant-namespaces", "--watch-tenant-namespaces=false"},
		"=false":     {"--watch-tenant-namespaces=false"},
		"none":       {"--leader-elect"},
		"other flag": {"--watch-tenant-namespaces-not"},
		"as a value": {"--namespace-selector", "watch-tenant-namespaces"},
	} {
		on := name == "on" || name == "one dash" || name == "=true" || name == "=1" || name == "=True"
		if got := watchesTenants(args); got != on {
			t.Errorf("%s %v: %v, want %v", name, args, got, on)
		}
	}
}
