/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package server_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// corpusCase is the expected outcome of one file in testdata/hostile.
type corpusCase struct {
	Status int    `json:"status"`
	Reason string `json:"reason"`
	// Stored is how many events the file adds when accepted.
	Stored int `json:"stored"`
}

// TestHostileCorpus posts every file in testdata/hostile as a batch body from instance
// "corpus" and checks the outcome listed for it in testdata/hostile/expected.json: status,
// reason, and how many events were stored (none for a rejection). Every file must be listed
// and every listed file must exist, so the corpus and its expectations stay together. Inputs
// too large to commit (compression bombs, bodies over the limits) are built in
// TestHostileBodiesGetTheRightStatusAndStoreNothing instead.
func TestHostileCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "hostile")
	raw, err := os.ReadFile(filepath.Join(dir, "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	expected := map[string]corpusCase{}
	if err := json.Unmarshal(raw, &expected); err != nil {
		t.Fatal(err)
	}
	files, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	// The corpus tests decoding and validation: the instance has consent, so that what is
	// refused is refused for what the file holds.
	grant(t, "corpus")
	c := client(t, "corpus")
	for _, f := range files {
		if f.Name() == "expected.json" {
			continue
		}
		seen[f.Name()] = true
		want, ok := expected[f.Name()]
		if !ok {
			t.Errorf("%s has no expected outcome in expected.json", f.Name())
			continue
		}
		t.Run(f.Name(), func(t *testing.T) {
			body, err := os.ReadFile(filepath.Join(dir, f.Name()))
			if err != nil {
				t.Fatal(err)
			}
			before := count(t, "events", "corpus")
			r, err := post(t, c, body, nil)
			if err != nil {
				t.Fatal(err)
			}
			if r.status != want.Status {
				t.Fatalf("status %d (%s), want %d %s", r.status, r.body, want.Status, want.Reason)
			}
			if want.Status >= 300 {
				if got := r.errorResponse(t); got.Reason != want.Reason || got.Error == "" {
					t.Fatalf("error %+v, want reason %s with a message", got, want.Reason)
				}
			}
			if got := count(t, "events", "corpus") - before; got != want.Stored {
				t.Fatalf("stored %d events, want %d", got, want.Stored)
			}
		})
	}
	for name := range expected {
		if !seen[name] {
			t.Errorf("expected.json lists %s, which is not in the corpus", name)
		}
	}
	// After all of it the receiver is healthy and stores a good batch.
	r, err := post(t, c, mustEncode(t, events("corpus", 1000, 5)), nil)
	if err != nil || r.status != 200 {
		t.Fatalf("a valid batch after the corpus: %v %d %s", err, r.status, r.body)
	}
}
