/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package memorylimit

import (
	"log/slog"
	"math"
	"os"
	"runtime/debug"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// unsetEnv removes name from the environment for the test.
func unsetEnv(t *testing.T, name string) {
	t.Helper()
	if v, ok := os.LookupEnv(name); ok {
		t.Cleanup(func() { _ = os.Setenv(name, v) })
	}
	_ = os.Unsetenv(name)
}

func TestTheRuntimeLimitLeavesATenthOfTheContainers(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })
	log := slog.New(slog.DiscardHandler)
	const container = 1000 << 20

	unsetEnv(t, "GOMEMLIMIT")
	unsetEnv(t, "AUTOMEMLIMIT")
	if _, err := set(memlimit.Limit(container), log); err != nil {
		t.Fatal(err)
	}
	if got, want := debug.SetMemoryLimit(-1), int64(container*9/10); got != want {
		t.Fatalf("runtime limit %d with a container limit of %d, want %d", got, container, want)
	}

	t.Run("no container limit: none", func(t *testing.T) {
		if _, err := set(func() (uint64, error) { return 0, memlimit.ErrNoLimit }, log); err != nil {
			t.Fatal(err)
		}
		if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
			t.Fatalf("runtime limit %d without a container limit, want none", got)
		}
	})

	t.Run("GOMEMLIMIT in the environment wins", func(t *testing.T) {
		debug.SetMemoryLimit(123 << 20)
		t.Setenv("GOMEMLIMIT", "123MiB")
		if _, err := set(memlimit.Limit(container), log); err != nil {
			t.Fatal(err)
		}
		if got := debug.SetMemoryLimit(-1); got != 123<<20 {
			t.Fatalf("runtime limit %d, want GOMEMLIMIT's", got)
		}
	})

	t.Run("AUTOMEMLIMIT sets another ratio", func(t *testing.T) {
		t.Setenv("AUTOMEMLIMIT", "0.5")
		if _, err := set(memlimit.Limit(container), log); err != nil {
			t.Fatal(err)
		}
		if got := debug.SetMemoryLimit(-1); got != container/2 {
			t.Fatalf("runtime limit %d, want half the container's", got)
		}
	})
}
