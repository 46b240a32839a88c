/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package memorylimit sets the Go runtime's soft memory limit a tenth below the container's
// memory limit, read from its cgroup. At the container's limit itself (what a GOMEMLIMIT taken
// from the pod's limits.memory gives) the runtime would collect hard only as the kernel
// OOM-kills the process: the binary's pages, and memory the runtime does not manage, need the
// rest. GOMEMLIMIT, or AUTOMEMLIMIT (a ratio, or "off"), in the environment overrides it.
package memorylimit

import (
	"log/slog"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// Ratio is the share of the container's memory limit the Go runtime aims to stay under.
const Ratio = 0.9

// Apply sets the runtime's soft limit from the container's cgroup (no limit: none is set).
func Apply(log *slog.Logger) {
	_, _ = set(memlimit.FromCgroup, log)
}

func set(limit memlimit.Provider, log *slog.Logger) (int64, error) {
	return memlimit.Set(memlimit.WithProvider(limit), memlimit.WithRatio(Ratio), memlimit.WithLogger(log))
}
