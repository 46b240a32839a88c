/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package store

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
)

// ErrNotOwner: the policy an instance certificate was issued for does not own the instance's
// consent record (it was handed over, released, or never claimed by that policy). Nothing is
// stored or read for it (403): a certificate minted before a handover stops working at the
// handover, not when it expires.
var ErrNotOwner = errors.New("the certificate's policy does not own the instance's consent record")

type senderKey struct{}

// WithSender returns ctx carrying the policy an instance's client certificate names. Batches,
// cursor reads and delivery listings made with it are served only while that policy owns the
// instance's consent record, judged under the same row lock as consent (a handover waits for
// the batches in flight and refuses the next). The server always sets it; the receiver's own
// tools, which act for its operators, call the store without it.
func WithSender(ctx context.Context, policy consentv1.Owner) context.Context {
	return context.WithValue(ctx, senderKey{}, policy)
}

// SenderOf returns the policy WithSender put in ctx.
func SenderOf(ctx context.Context) (consentv1.Owner, bool) {
	sender, ok := ctx.Value(senderKey{}).(consentv1.Owner)
	return sender, ok
}

// checkSender reports ErrNotOwner when ctx carries a sender and the record's owner (nil:
// released) is not that policy.
func checkSender(ctx context.Context, owner *consentv1.Owner) error {
	sender, ok := SenderOf(ctx)
	if !ok {
		return nil
	}
	// A record claimed by an operator that did not send UIDs matches by name until the
	// owner's next write adds it.
	if owner == nil || !owner.Same(sender) {
		return ErrNotOwner
	}
	return nil
}

// ownerOf scans the owner columns of consent_instances (all NULL while released).
func ownerOf(cluster, namespace, name, uid *string) *consentv1.Owner {
	if cluster == nil {
		return nil
	}
	return &consentv1.Owner{Cluster: *cluster, Namespace: deref(namespace), Name: deref(name), UID: deref(uid)}
}

// checkSenderNow reads the instance's owner and checks ctx's sender against it (no sender: nil).
// Used by reads, which take no lock: a listing racing a handover shows what the old owner
// could read a moment before.
func (s *Store) checkSenderNow(ctx context.Context, instance string) error {
	if _, ok := SenderOf(ctx); !ok {
		return nil
	}
	var cluster, namespace, name, uid *string
	err := s.pool.QueryRow(ctx, `SELECT owner_cluster, owner_namespace, owner_name, owner_uid FROM consent_instances WHERE instance_id = $1`,
		instance).Scan(&cluster, &namespace, &name, &uid)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return ErrNotOwner
	case err != nil:
		return unavailable(err)
	}
	return checkSender(ctx, ownerOf(cluster, namespace, name, uid))
}
