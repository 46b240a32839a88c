/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package operator

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

// TestNamespaceSelectorMustRequireALabel: onboarding is a decision an admin makes per namespace
// by labelling it; a selector that would match namespaces nobody labelled is refused.
func TestNamespaceSelectorMustRequireALabel(t *testing.T) {
	for sel, ok := range map[string]bool{
		"": true, // the default: the onboarding label
		"telemetry.sourcegraph.com/onboarded=true": true,
		"fleet in (cloud,dedicated)":               true,
		"fleet":                                    true,
		"fleet=cloud,!legacy":                      true,
		"!legacy":                                  false,
		"fleet!=legacy":                            false,
		"kubernetes.io/metadata.name":              false, // every namespace has it
		"kubernetes.io/metadata.name in (a)":       false,
		"(":                                        false,
	} {
		c := Config{NamespaceSelector: sel}
		if _, err := c.Selector(); (err == nil) != ok {
			t.Errorf("--namespace-selector %q: err = %v, want accepted=%v", sel, err, ok)
		}
	}
}

// TestMaxConcurrentReconcilesIsBounded: 0 takes the default; a negative or absurd worker count
// is refused by name.
func TestMaxConcurrentReconcilesIsBounded(t *testing.T) {
	for n, ok := range map[int]bool{0: true, 1: true, 4: true, 64: true, -1: false, 65: false} {
		c := Config{IssuerSecret: "ns/issuer", ReceiverURL: "https://receiver.example.com", CollectorImage: "telemetry-collector:dev", MaxConcurrentReconciles: n}
		err := c.Validate()
		if (err == nil) != ok || (err != nil && !strings.Contains(err.Error(), "--max-concurrent-reconciles")) {
			t.Errorf("--max-concurrent-reconciles %d: %v, want accepted=%v", n, err, ok)
		}
	}
}

// TestCollectorRBACResyncIsBounded: 0 takes the default; a resync that would read the collector's
// RBAC on nearly every reconcile, or leave an edit in place for days, is refused by name.
func TestCollectorRBACResyncIsBounded(t *testing.T) {
	for d, ok := range map[time.Duration]bool{0: true, 10 * time.Second: true, 10 * time.Minute: true, 24 * time.Hour: true,
		-time.Second: false, time.Second: false, 25 * time.Hour: false} {
		c := Config{IssuerSecret: "ns/issuer", ReceiverURL: "https://receiver.example.com", CollectorImage: "telemetry-collector:dev", CollectorRBACResync: d}
		err := c.Validate()
		if (err == nil) != ok || (err != nil && !strings.Contains(err.Error(), "--collector-rbac-resync")) {
			t.Errorf("--collector-rbac-resync %s: %v, want accepted=%v", d, err, ok)
		}
	}
}

// TestTenantResyncIsBounded: 0 takes the default; a resync that reads every policy's objects
// many times a second, or leaves an edit by hand (of a collector's configuration) in place for
// longer than five minutes, is refused by name.
func TestTenantResyncIsBounded(t *testing.T) {
	for d, ok := range map[time.Duration]bool{0: true, time.Second: true, time.Minute: true, 5 * time.Minute: true,
		-time.Second: false, time.Millisecond: false, 5*time.Minute + time.Second: false, 24 * time.Hour: false} {
		c := Config{IssuerSecret: "ns/issuer", ReceiverURL: "https://receiver.example.com", CollectorImage: "telemetry-collector:dev", TenantResync: d}
		err := c.Validate()
		if (err == nil) != ok || (err != nil && !strings.Contains(err.Error(), "--tenant-resync")) {
			t.Errorf("--tenant-resync %s: %v, want accepted=%v", d, err, ok)
		}
	}
}

// TestWatchTenantNamespacesFlag: not watching is the default, resyncing every minute.
func TestWatchTenantNamespacesFlag(t *testing.T) {
	for args, want := range map[string]bool{"": false, "--watch-tenant-namespaces": true, "--watch-tenant-namespaces=true": true, "--watch-tenant-namespaces=false": false} {
		var c Config
		fs := flag.NewFlagSet("manager", flag.ContinueOnError)
		c.BindFlags(fs)
		if err := fs.Parse(strings.Fields(args)); err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		if c.WatchTenantNamespaces != want || c.TenantResync != time.Minute {
			t.Errorf("%q: WatchTenantNamespaces %v, TenantResync %s; want %v, 1m0s", args, c.WatchTenantNamespaces, c.TenantResync, want)
		}
	}
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	(&Config{}).BindFlags(fs)
	if err := fs.Parse([]string{"--watch-tenant-namespaces=perhaps"}); err == nil {
		t.Error("--watch-tenant-namespaces=perhaps accepted")
	}
}

// TestPprofListensOnlyOnLoopback: the profiling endpoints have no authentication, so an address
// other than loopback (or off) is refused by name.
func TestPprofListensOnlyOnLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{"": true, "0": true, "127.0.0.1:6060": true, "[::1]:6060": true, "localhost:6060": true,
		":6060": false, "0.0.0.0:6060": false, "10.0.0.5:6060": false, "[::]:6060": false, "example.com:6060": false, "127.0.0.1": false, "6060": false} {
		c := Config{IssuerSecret: "ns/issuer", ReceiverURL: "https://receiver.example.com", CollectorImage: "telemetry-collector:dev", PprofAddr: addr}
		err := c.Validate()
		if (err == nil) != ok || (err != nil && !strings.Contains(err.Error(), "--pprof-bind-address")) {
			t.Errorf("--pprof-bind-address %q: %v, want accepted=%v", addr, err, ok)
		}
	}
}
