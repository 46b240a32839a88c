/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// notReservedHold is since when (the reconciler's clock) a policy's claims have been answered
// that its instance is not reserved for its namespace.
type notReservedHold struct {
	uid   types.UID
	since time.Time
}

// notReservedSince returns since when the policy has waited for a reservation, starting the
// wait now if it was not waiting. The ConsentRecorded condition cannot tell: its
// lastTransitionTime moves only when its status does, so it may date from an earlier stall of
// another kind (an unreachable receiver, a real owner elsewhere). After a restart the wait
// starts again, asking every --ledger-retry for a while: a restart is rare.
func (r *TelemetryPolicyReconciler) notReservedSince(key client.ObjectKey, uid types.UID, now time.Time) time.Time {
	r.notReservedMu.Lock()
	defer r.notReservedMu.Unlock()
	if h, ok := r.notReserved[key]; ok && h.uid == uid {
		return h.since
	}
	if r.notReserved == nil {
		r.notReserved = map[client.ObjectKey]notReservedHold{}
	}
	r.notReserved[key] = notReservedHold{uid: uid, since: now}
	return now
}

// waitingForReservation reports whether the policy's last answer from the receiver was that
// its instance is not reserved for its namespace (kept while the receiver cannot be read).
func (r *TelemetryPolicyReconciler) waitingForReservation(key client.ObjectKey, uid types.UID) bool {
	r.notReservedMu.Lock()
	defer r.notReservedMu.Unlock()
	h, ok := r.notReserved[key]
	return ok && h.uid == uid
}

// forgetNotReserved ends the policy's wait for a reservation (answered otherwise, or deleted).
func (r *TelemetryPolicyReconciler) forgetNotReserved(key client.ObjectKey) {
	r.notReservedMu.Lock()
	defer r.notReservedMu.Unlock()
	delete(r.notReserved, key)
}

// reservationBackoff is how long a policy waiting for a reservation since since waits before
// asking again: --ledger-retry at first, then a quarter of the time it has waited, at most
// --ledger-resync. A reservation is usually made soon after the policy; one forgotten must not
// have every such policy of a fleet ask every few seconds.
func (r *TelemetryPolicyReconciler) reservationBackoff(since, now time.Time) time.Duration {
	wait := r.ledgerRetry()
	return min(max(wait, now.Sub(since)/4), max(wait, r.ledgerResync()))
}
