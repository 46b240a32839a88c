/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sourcegraph/telemetry-operator/internal/localstack"
)

func poolFor(ctx context.Context, s *localstack.Stack) (*pgxpool.Pool, error) {
	return pgxpool.New(ctx, s.ReceiverPG.DSN("receiver"))
}
