/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import (
	"testing"
	"time"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
)

// TestTheBenchmarksBatchesAreOnesTheReceiverTakes: the receiver step posts these over HTTP and
// stops the run on any refusal, so they must pass the receiver's own decoding and checks.
func TestTheBenchmarksBatchesAreOnesTheReceiverTakes(t *testing.T) {
	for name, b := range map[string]*batchv1.Batch{
		"ingest":  ingestBatch("bench-x-0", 5000),
		"history": historyBatch("bench-h", 0, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)),
	} {
		body, err := batchv1.Encode(b)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := batchv1.Decode(body); err != nil {
			t.Errorf("%s: the receiver refuses it: %v", name, err)
		}
	}
}
