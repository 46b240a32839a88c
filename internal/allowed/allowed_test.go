/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package allowed

import "testing"

func TestImages(t *testing.T) {
	im, err := ParseImages([]string{"ghcr.io/acme/telemetry-collector", "registry.internal:5000/fleet/", ""})
	if err != nil {
		t.Fatal(err)
	}
	for image, want := range map[string]bool{
		"ghcr.io/acme/telemetry-collector":                    true,
		"ghcr.io/acme/telemetry-collector:v1.2.3":             true,
		"ghcr.io/acme/telemetry-collector@sha256:0123abcd":    true,
		"ghcr.io/acme/telemetry-collector:v1@sha256:0123abcd": true,
		"registry.internal:5000/fleet/collector:dev":          true,
		"ghcr.io/acme/telemetry-collector-evil:v1":            false,
		"ghcr.io/acme/telemetry-collector/evil:v1":            false,
		"ghcr.io/acme":                             false,
		"evil.example/telemetry-collector:v1":      false,
		"registry.internal:5000/fleet/../evil/x:1": false,
		"registry.internal:5001/fleet/collector":   false,
		"":                                         false,
	} {
		if got := im.Allows(image); got != want {
			t.Errorf("Allows(%q) = %v, want %v", image, got, want)
		}
	}
	for _, bad := range []string{"ghcr.io/acme/x@sha256:00", "https://ghcr.io/acme/x", "a b"} {
		if _, err := ParseImages([]string{bad}); err == nil {
			t.Errorf("ParseImages(%q) accepted", bad)
		}
	}
}

func TestEndpoints(t *testing.T) {
	ep, err := ParseEndpoints([]string{"https://Receiver.example.com/v1", "https://127.0.0.1:8443"})
	if err != nil {
		t.Fatal(err)
	}
	for endpoint, want := range map[string]bool{
		"https://receiver.example.com":                  true,
		"https://receiver.example.com:443/other":        true,
		"https://127.0.0.1:8443":                        true,
		"http://receiver.example.com":                   false,
		"https://receiver.example.com:8443":             false,
		"https://receiver.example.com.evil.io":          false,
		"https://evil.io/?https://receiver.example.com": false,
		"https://user:pw@receiver.example.com":          false,
		"https://127.0.0.1:8444":                        false,
		"":                                              false,
	} {
		if got := ep.Allows(endpoint); got != want {
			t.Errorf("Allows(%q) = %v, want %v", endpoint, got, want)
		}
	}
	if _, err := ParseEndpoints([]string{"http://receiver.example.com"}); err == nil {
		t.Error("an http:// endpoint was accepted on the list")
	}
}
