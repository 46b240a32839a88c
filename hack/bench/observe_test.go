/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import "testing"

// TestStoringWrites: the idle check counts creates, updates, patches and deletes of objects,
// not reviews (POSTs that store nothing), the API server's own lease renewals, or reads.
func TestStoringWrites(t *testing.T) {
	before := map[string]float64{"PATCH telemetrypolicies/status 200": 10, "POST selfsubjectrulesreviews 201": 5}
	after := map[string]float64{
		"PATCH telemetrypolicies/status 200": 12, // +2
		"POST selfsubjectrulesreviews 201":   9,  // a review stores nothing
		"POST subjectaccessreviews 201":      3,
		"PUT leases 200":                     4,
		"GET secrets 200":                    100,
		"POST events 201":                    1, // +1
		"DELETE secrets 200":                 1, // +1
		"PUT deployments/status 409":         1, // +1: refused, but attempted
	}
	if got := storingWrites(before, after); got != 5 {
		t.Fatalf("storingWrites = %d, want 5", got)
	}
	if got := storingWrites(after, after); got != 0 {
		t.Fatalf("no change: %d", got)
	}
}
