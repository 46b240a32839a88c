/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package pgtest

import (
	"context"
	"testing"
)

func TestStartStopRestart(t *testing.T) {
	ctx := context.Background()
	s, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CreateDatabase(ctx, "probe"); err != nil {
		t.Fatal(err)
	}
	if err := s.Exec(ctx, "probe", "CREATE TABLE t (x int); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if err := s.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Exec(ctx, "probe", "SELECT 1"); err == nil {
		t.Fatal("a stopped server still answers")
	}
	if err := s.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Exec(ctx, "probe", "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatalf("data does not survive a restart: %v", err)
	}
}
