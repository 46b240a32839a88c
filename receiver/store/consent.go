/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
)

// Errors of the consent ledger. The server maps each to a status and a consentv1 reason.
var (
	// ErrConsentRefused: the instance's ledger does not allow what a batch carries (403).
	ErrConsentRefused = errors.New("consent refused")
	// ErrOwnedElsewhere: the instance's record belongs to another policy or cluster, or to none
	// (409).
	ErrOwnedElsewhere = errors.New("the instance's consent record is owned elsewhere")
	// ErrUnknownInstance: the ledger has no record of the instance (404).
	ErrUnknownInstance = errors.New("unknown instance")
	// ErrInvalid: the request is malformed, or dated where the ledger cannot accept it (400).
	ErrInvalid = errors.New("invalid request")
	// ErrStale: a transition was computed from an outdated copy of the record (409 Stale).
	ErrStale = errors.New("the record has moved on since the request's expected head")
	// ErrRequestConflict: an erasure request id was reused with another scope or range (409).
	ErrRequestConflict = errors.New("erasure request id reused with a different scope or range")
	// ErrUnverified: an erasure was carried out but a re-query still found data in scope; the
	// caller retries, and the retry deletes and verifies again (503).
	ErrUnverified = errors.New("erasure not verified")
	// ErrAdministratorsOnly: reserving, handing over or opening a record, or changing a
	// receiver-wide setting, asked of a store that does not work as RoleConsentAdmin (the
	// database refused it).
	ErrAdministratorsOnly = errors.New("only the receiver's administrators (database role " + RoleConsentAdmin + ") reserve and hand over consent records and change the receiver's settings")
)

// administratorsOnly marks the database's refusal of an administrator's change (insufficient
// privilege: the role's grants or migration 0016's trigger) as ErrAdministratorsOnly.
func administratorsOnly(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" {
		return fmt.Errorf("%w: %s", ErrAdministratorsOnly, pgErr.Message)
	}
	return err
}

// RefusedError says why the ledger refused a batch. It names the instance's consent state and
// never anything the batch carried.
type RefusedError struct {
	Instance string
	// Known is false when the ledger has no record of the instance.
	Known bool
	// Tier is the tier in force now, and Since when it took effect.
	Tier  consentv1.Tier
	Since time.Time
	// Kind is the kind of batch refused.
	Kind string
}

// Error names the instance's consent state, which the server returns to the collector.
func (e *RefusedError) Error() string {
	switch {
	case !e.Known:
		return fmt.Sprintf("the receiver has no consent record for instance %q: nothing is accepted until its operator records consent", e.Instance)
	case e.Tier == consentv1.TierOff:
		return fmt.Sprintf("consent for instance %q is Off since %s: nothing is accepted", e.Instance, e.Since.UTC().Format(time.RFC3339))
	default:
		return fmt.Sprintf("consent for instance %q is %s since %s: %s batches are refused", e.Instance, e.Tier, e.Since.UTC().Format(time.RFC3339), e.Kind)
	}
}

// Is makes errors.Is(err, ErrConsentRefused) true.
func (e *RefusedError) Is(target error) bool { return target == ErrConsentRefused }

// OwnedElsewhereError says an instance's record belongs to someone else. It keeps the owner for
// the receiver's own logs and tools; its message does not name it, so one tenant's operator
// learns nothing of another's namespaces.
type OwnedElsewhereError struct {
	Instance string
	// Owner is empty when the record was released and nobody owns it.
	Owner consentv1.Owner
	// Released is set when nobody owns the record but the policy that released it lived in
	// another namespace or cluster (or the receiver's operators reserved it for one): it is not
	// this policy's to claim.
	Released bool
	// Unreserved is set when the receiver requires each instance to be reserved for a namespace
	// before a claim (SetReservationsRequired) and the instance has no record, or one nobody owns
	// that is open to any namespace and was last owned by another namespace.
	Unreserved bool
}

// Error is what the server returns to the operator: that the record is someone else's, not whose.
func (e *OwnedElsewhereError) Error() string {
	if e.Unreserved {
		return fmt.Sprintf("instance %q is not reserved for this namespace: the receiver's operators reserve it "+
			"(receiver consent reserve --instance ID --to CLUSTER/NAMESPACE)", e.Instance)
	}
	if e.Released {
		return fmt.Sprintf("the consent record of instance %q was released by, or reserved for, a policy of another namespace or cluster: only a policy "+
			"there may claim it (again), until the receiver's operators hand it over (receiver consent release --instance %s --to CLUSTER/NAMESPACE)", e.Instance, e.Instance)
	}
	if e.Owner.Cluster == "" {
		return fmt.Sprintf("the consent record of instance %q has no owner: record a transition to claim it first", e.Instance)
	}
	return fmt.Sprintf("the consent record of instance %q is owned by another policy or cluster (the receiver's operators can tell which: receiver consent show)", e.Instance)
}

// Is makes errors.Is(err, ErrOwnedElsewhere) true.
func (e *OwnedElsewhereError) Is(target error) bool { return target == ErrOwnedElsewhere }

// domain reports whether err is an answer of the ledger rather than a storage failure, so inTx
// passes it on instead of marking it unavailable.
func domain(err error) bool {
	for _, e := range []error{ErrConsentRefused, ErrOwnedElsewhere, ErrUnknownInstance, ErrInvalid, ErrRequestConflict, ErrStale, ErrNotOwner} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Observer learns what the ledger's writes changed, after they commit, for metrics and logs.
// Requests that change nothing (a tier already in force, a replayed erasure) report nothing.
type Observer interface {
	// TransitionRecorded: tr was appended to instance's timeline by owner; eventsRemoved events
	// and aggregatesRemoved cells recorded after it were deleted.
	TransitionRecorded(instance string, owner consentv1.Owner, tr consentv1.Transition, eventsRemoved, aggregatesRemoved int64)
	// Erased: an erasure attempt deleted events and aggregates rows.
	Erased(instance string, owner consentv1.Owner, requestID, scope string, events, aggregates int64)
	// Released: owner gave up instance's record (by the API, or forced by an administrator).
	Released(instance string, owner consentv1.Owner)
}

// observerBox lets the observer be swapped atomically (an interface cannot be stored in an
// atomic.Pointer directly).
type observerBox struct{ o Observer }

// SetObserver installs o (nil: none). The server installs itself when it is created.
func (s *Store) SetObserver(o Observer) { s.observer.Store(&observerBox{o}) }

func (s *Store) observe() Observer {
	if b := s.observer.Load(); b != nil && b.o != nil {
		return b.o
	}
	return nopObserver{}
}

type nopObserver struct{}

func (nopObserver) TransitionRecorded(string, consentv1.Owner, consentv1.Transition, int64, int64) {}
func (nopObserver) Erased(string, consentv1.Owner, string, string, int64, int64)                   {}
func (nopObserver) Released(string, consentv1.Owner)                                               {}

// now is the receiver's time, in UTC at PostgreSQL's precision (microseconds) so that what is
// stored and what is compared in memory are the same instants.
func (s *Store) now() time.Time { return s.clock.Now().UTC().Truncate(time.Microsecond) }

// floorMicro and ceilMicro bring a time to PostgreSQL's precision, rounding in the direction that
// grants less: withdrawals and erasure starts earlier, grants and erasure ends later.
func floorMicro(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

func ceilMicro(t time.Time) time.Time {
	f := floorMicro(t)
	if f.Before(t) {
		f = f.Add(time.Microsecond)
	}
	return f
}

// checkOwner validates the coordinates of a requester: the cluster (from the certificate) and
// the policy.
func checkOwner(instance string, o consentv1.Owner) error {
	if !pki.ValidInstanceID(instance) {
		return invalid("instanceID must be a DNS label")
	}
	if !pki.ValidClusterName(o.Cluster) {
		return invalid("the owner's cluster must be a DNS label")
	}
	if err := o.Validate(); err != nil {
		return invalid("%v", err)
	}
	return nil
}

// instanceRow is consent_instances' row, locked.
type instanceRow struct {
	owner *consentv1.Owner
	// released is where the policy that last released the record lived (Cluster and Namespace
	// only), nil when nobody did or the receiver's operators handed it over since.
	released *consentv1.Owner
	// lastOwner is where the policy that last claimed the record lived (Cluster and Namespace
	// only), nil when nobody has (migration 0013).
	lastOwner *consentv1.Owner
	version   int64
}

// advisoryClass is the first key of the per-instance advisory locks (the second is a hash of
// the instance id). Two-key advisory locks never collide with the one-key migration lock.
const advisoryClass = 0x7e1e_c0

// lockExclusive takes the instance's advisory lock in exclusive mode for the rest of tx: it
// waits for the batches being stored, and batches arriving meanwhile wait behind it (see
// loadPolicy). Writers take it before touching the instance's rows.
func lockExclusive(ctx context.Context, tx pgx.Tx, instance string) error {
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, advisoryClass, instance)
	return err
}

// lockInstance locks the instance's row FOR UPDATE, after its advisory lock: ingestion (FOR
// SHARE) and other writers wait until this transaction ends. It returns ErrUnknownInstance when
// there is no row.
func lockInstance(ctx context.Context, tx pgx.Tx, instance string) (instanceRow, error) {
	if err := lockExclusive(ctx, tx, instance); err != nil {
		return instanceRow{}, err
	}
	var cluster, namespace, name, uid, relCluster, relNamespace, lastCluster, lastNamespace *string
	var row instanceRow
	err := tx.QueryRow(ctx, `
SELECT owner_cluster, owner_namespace, owner_name, owner_uid, version, released_cluster, released_namespace, last_owner_cluster, last_owner_namespace
FROM consent_instances WHERE instance_id = $1 FOR UPDATE`, instance).Scan(&cluster, &namespace, &name, &uid, &row.version, &relCluster, &relNamespace,
		&lastCluster, &lastNamespace)
	if errors.Is(err, pgx.ErrNoRows) {
		return row, fmt.Errorf("%w: %q", ErrUnknownInstance, instance)
	}
	if err != nil {
		return row, err
	}
	row.owner = ownerOf(cluster, namespace, name, uid)
	if relCluster != nil {
		row.released = &consentv1.Owner{Cluster: *relCluster, Namespace: deref(relNamespace)}
	}
	if lastCluster != nil {
		row.lastOwner = &consentv1.Owner{Cluster: *lastCluster, Namespace: deref(lastNamespace)}
	}
	return row, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// bumpVersion invalidates every cached copy of the instance's timeline and tombstones. A
// database restored to an earlier point (a failover to a replica that lagged, a point-in-time
// recovery) rewinds the version with the timeline, and a plain counter would then hand a
// running receiver a version it has cached for what the restore undid. So the new version is
// the database clock in microseconds plus a random step of up to 2^40, or, when the version is
// ahead of that (a clock that ran fast or was stepped back), the version plus a random step of
// up to 2^24: no clock skew repeats a version but by chance, and the version still only grows
// (a cache keeps the newest it has seen), by at most 2^24 a write while it runs ahead of the
// clock, so bigint holds it for 10^11 writes and more.
func bumpVersion(ctx context.Context, tx pgx.Tx, instance string) error {
	_, err := tx.Exec(ctx, `UPDATE consent_instances
SET version = greatest(version + 1 + floor(random() * 16777216)::bigint,
                       (extract(epoch FROM clock_timestamp()) * 1000000)::bigint + floor(random() * 1099511627776)::bigint)
WHERE instance_id = $1`, instance)
	return err
}

// RecordTransition records, on behalf of the policy req.Owner of cluster (taken from the
// caller's certificate, never from the body), a move of req.InstanceID to req.Transition.Tier.
// The first writer of a record, or the first after a release, claims it; anyone else gets
// ErrOwnedElsewhere. The transition is computed by consentv1.Next at the receiver's clock (the
// past is never rewritten) and nothing is appended when the tier is already in force.
// Withdrawing EventLevel deletes the events stored with timestamps from the transition on;
// moving to Off deletes the aggregate cells of the days after it. It returns the record.
func (s *Store) RecordTransition(ctx context.Context, cluster string, req consentv1.RecordRequest) (consentv1.State, error) {
	owner := req.Owner
	owner.Cluster = cluster
	instance := req.InstanceID
	if err := checkOwner(instance, owner); err != nil {
		return consentv1.State{}, err
	}
	now := s.now()
	var (
		state                 consentv1.State
		appended              *consentv1.Transition
		closedBy              *closed
		eventsRemoved, aggDel int64
	)
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		closedBy = nil // (a retried transaction starts afresh)
		if err := lockExclusive(ctx, tx, instance); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO consent_instances (instance_id, created_at) VALUES ($1, $2) ON CONFLICT (instance_id) DO NOTHING`, instance, now); err != nil {
			return err
		}
		row, err := lockInstance(ctx, tx, instance)
		if err != nil {
			return err
		}
		if row.owner == nil && row.released == nil {
			// Open to the next policy anywhere: new, or released so before reservations were
			// required. With reservations required, a record with history stays the namespace's
			// that last owned it, as a record its policy released does (0009): that namespace's
			// policy may claim it again (to record a withdrawal, to close it at deletion, or any
			// tier); anyone else needs a reservation. The database refuses the same (0013).
			required, err := reservationsRequired(ctx, tx)
			if err != nil {
				return err
			}
			if last := row.lastOwner; required && (last == nil || last.Cluster != owner.Cluster || last.Namespace != owner.Namespace) {
				return &OwnedElsewhereError{Instance: instance, Unreserved: true} // (a new row rolls back)
			}
		}
		var claimedFrom *releasedBy
		switch {
		case row.owner == nil && row.released != nil && (row.released.Cluster != owner.Cluster || row.released.Namespace != owner.Namespace):
			return &OwnedElsewhereError{Instance: instance, Released: true}
		case row.owner == nil:
			if claimedFrom, err = lastRelease(ctx, tx, instance); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `
UPDATE consent_instances SET owner_cluster = $2, owner_namespace = $3, owner_name = $4, owner_uid = $5, claimed_at = $6,
  released_cluster = NULL, released_namespace = NULL, last_owner_cluster = $2, last_owner_namespace = $3
WHERE instance_id = $1`, instance, owner.Cluster, owner.Namespace, owner.Name, owner.UID, now); err != nil {
				if reservationRefused(err) { // the setting was turned on since it was read above
					return &OwnedElsewhereError{Instance: instance, Unreserved: true}
				}
				if releasedElsewhere(err) { // (checked above, under the row lock: never expected)
					return &OwnedElsewhereError{Instance: instance, Released: true}
				}
				return err
			}
		case row.owner.Same(owner):
			if row.owner.UID == "" && owner.UID != "" {
				if _, err := tx.Exec(ctx, `UPDATE consent_instances SET owner_uid = $2 WHERE instance_id = $1`, instance, owner.UID); err != nil {
					return err
				}
			}
		default:
			return &OwnedElsewhereError{Instance: instance, Owner: *row.owner}
		}
		timeline, err := loadTimeline(ctx, tx, instance)
		if err != nil {
			return err
		}
		if h := req.ExpectedHead; h != nil {
			// (An Until is compared when the requester sends one: a requester older than
			// Until knows nothing of it.)
			if n := len(timeline); n == 0 || !timeline[n-1].At.Equal(h.At) || timeline[n-1].Tier != h.Tier ||
				h.Until != nil && !consentv1.SameTime(timeline[n-1].Until, h.Until) {
				return ErrStale
			}
		}
		if c := claimedFrom; c != nil && !c.owner.Same(owner) {
			// Released back to its namespace and claimed there by another policy (its owner
			// deleted without closing its record, say): the consent in force was the released
			// owner's and ended with the release. (Written in the claimant's name: only the
			// record's owner appends to it.)
			if closedBy, err = closeRecord(ctx, tx, instance, timeline, c.at, now, owner, c.owner); err != nil {
				return err
			}
			if closedBy != nil {
				timeline = append(timeline, closedBy.tr)
			}
		}
		tr, ok, err := consentv1.Next(timeline, keepUntil(timeline, req), now)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		eventsRemoved, aggDel = 0, 0
		if closedBy != nil {
			eventsRemoved = closedBy.eventsRemoved
		}
		if ok {
			var removed int64
			if tr, removed, aggDel, err = appendTransition(ctx, tx, instance, timeline, tr, owner, now); err != nil {
				return err
			}
			eventsRemoved += removed
			appended = &tr
		}
		state, err = loadState(ctx, tx, instance)
		// What this request removed (nothing when it appended nothing), not the last transition's.
		state.EventsRemoved = eventsRemoved
		return err
	})
	if err != nil {
		return consentv1.State{}, err
	}
	s.observeClosed(instance, closedBy)
	if appended != nil {
		s.observe().TransitionRecorded(instance, owner, *appended, eventsRemoved-closedEvents(closedBy), aggDel)
	}
	return state, nil
}

// closedEvents is what a close deleted (0 without one).
func closedEvents(c *closed) int64 {
	if c == nil {
		return 0
	}
	return c.eventsRemoved
}

// appendTransition appends tr (as consentv1.Next returned it) to the instance's timeline in
// owner's name, under the instance's lock, and deletes what the lower tier no longer allows:
// withdrawing EventLevel deletes the events stored with timestamps from the transition on (they
// may have been stored before the withdrawal was recorded), an EventLevel transition's Until
// those from the Until on (a trial shortened), and moving to Off the aggregate cells of its day
// and the days after. It returns tr as stored and what it deleted.
func appendTransition(ctx context.Context, tx pgx.Tx, instance string, timeline consentv1.Timeline, tr consentv1.Transition,
	owner consentv1.Owner, now time.Time) (consentv1.Transition, int64, int64, error) {
	previous := timeline.Current()
	if tr.Tier.Rank() > previous.Rank() {
		tr.At = ceilMicro(tr.At)
	} else {
		tr.At = floorMicro(tr.At)
	}
	var eventsRemoved, aggDel int64
	// (previous is the last transition's tier, lapsed or not: a withdrawal dated before the
	// Until of the EventLevel it ends deletes from its own time.)
	var cut *time.Time
	switch {
	case tr.Tier != consentv1.TierEventLevel && previous == consentv1.TierEventLevel:
		cut = &tr.At
	case tr.Tier == consentv1.TierEventLevel && tr.Until != nil:
		cut = tr.Until
	}
	if cut != nil {
		tag, err := tx.Exec(ctx, `DELETE FROM events WHERE instance_id = $1 AND ts >= $2`, instance, *cut)
		if err != nil {
			return tr, 0, 0, err
		}
		eventsRemoved = tag.RowsAffected()
		if _, err := tx.Exec(ctx, `SELECT forget_report_rollups($1, $2, NULL)`, instance, *cut); err != nil {
			return tr, 0, 0, err
		}
	}
	if n := len(timeline); n > 0 {
		// The lapse of a trial before tr: nothing dated in it was consented (a receiver older
		// than until, serving the same database, may have stored some).
		if last := timeline[n-1]; last.Tier == consentv1.TierEventLevel && last.Until != nil && last.Until.Before(tr.At) {
			tag, err := tx.Exec(ctx, `DELETE FROM events WHERE instance_id = $1 AND ts >= $2 AND ts < $3`, instance, *last.Until, tr.At)
			if err != nil {
				return tr, 0, 0, err
			}
			eventsRemoved += tag.RowsAffected()
			if _, err := tx.Exec(ctx, `SELECT forget_report_rollups($1, $2, $3)`, instance, *last.Until, tr.At); err != nil {
				return tr, 0, 0, err
			}
		}
	}
	if tr.Tier == consentv1.TierOff {
		// The days after the withdrawal were not consented; the day of it was only partly,
		// and its cell may have been sent after the withdrawal (covering the rest of the
		// day): it goes too, failing closed, as nothing can tell what a cell counted.
		tag, err := tx.Exec(ctx, `DELETE FROM aggregates WHERE instance_id = $1 AND day >= $2::date`, instance, tr.At.Format(time.DateOnly))
		if err != nil {
			return tr, 0, 0, err
		}
		aggDel = tag.RowsAffected()
	}
	if _, err := tx.Exec(ctx, `
INSERT INTO consent_transitions (instance_id, seq, at, tier, reason, basis, owner_cluster, owner_namespace, owner_name, recorded_at, events_removed, until)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
		instance, len(timeline)+1, tr.At, string(tr.Tier), tr.Reason, tr.Basis, owner.Cluster, owner.Namespace, owner.Name, now, eventsRemoved, tr.Until); err != nil {
		return tr, 0, 0, err
	}
	return tr, eventsRemoved, aggDel, bumpVersion(ctx, tx, instance)
}

// closeOnRelease ends the consent in force when a record is handed over to another namespace
// or opened to anyone: the consent was its owner's, and until a policy there claims the record
// and records its own, no one's holds (else the next owner would inherit a window its own basis
// never granted, and its collector would send what was recorded in between). Off is appended
// at now in by's name (the record's owner, or where it was released from), with what a
// withdrawal deletes. A record released back to its own namespace stays as it is: the policy
// there claims it again and records what it withdrew meanwhile at its own time. It returns the
// transition appended, if any.
func closeOnRelease(ctx context.Context, tx pgx.Tx, instance string, by consentv1.Owner, now time.Time) (*closed, error) {
	timeline, err := loadTimeline(ctx, tx, instance)
	if err != nil {
		return nil, err
	}
	return closeRecord(ctx, tx, instance, timeline, now, now, by, by)
}

// closeRecord appends Off from at (as consentv1.Next dates it: never before the last
// transition, never after now) to timeline, written in writer's name, unless Off is in force:
// the consent of the released owner (of) ended. It returns the close, nil when nothing was appended.
func closeRecord(ctx context.Context, tx pgx.Tx, instance string, timeline consentv1.Timeline, at, now time.Time,
	writer, of consentv1.Owner) (*closed, error) {
	if timeline.Current() == consentv1.TierOff {
		return nil, nil
	}
	tr, ok, err := consentv1.Next(timeline, consentv1.Transition{At: at, Tier: consentv1.TierOff, Reason: consentv1.ReasonRecordReleased}, now)
	if err != nil || !ok {
		return nil, err
	}
	c := &closed{owner: of}
	c.tr, c.eventsRemoved, c.aggregatesRemoved, err = appendTransition(ctx, tx, instance, timeline, tr, writer, now)
	return c, err
}

// releasedBy is a record's last release as the ownership trail keeps it (0014).
type releasedBy struct {
	owner consentv1.Owner
	at    time.Time
}

// lastRelease is the record's last release, nil when it was never released.
func lastRelease(ctx context.Context, tx pgx.Tx, instance string) (*releasedBy, error) {
	var r releasedBy
	var cluster, namespace, name, uid *string
	err := tx.QueryRow(ctx, `SELECT owner_cluster, owner_namespace, owner_name, owner_uid, at FROM consent_ownership_changes
WHERE instance_id = $1 AND change = 'release' ORDER BY seq DESC LIMIT 1`, instance).Scan(&cluster, &namespace, &name, &uid, &r.at)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	r.owner = consentv1.Owner{Cluster: deref(cluster), Namespace: deref(namespace), Name: deref(name), UID: deref(uid)}
	r.at = r.at.UTC()
	return &r, nil
}

// closed is a transition closeOnRelease appended, for the observer once committed.
type closed struct {
	owner                            consentv1.Owner
	tr                               consentv1.Transition
	eventsRemoved, aggregatesRemoved int64
}

// ConsentState returns an instance's record, or ErrUnknownInstance.
func (s *Store) ConsentState(ctx context.Context, instance string) (consentv1.State, error) {
	var state consentv1.State
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		var err error
		state, err = loadState(ctx, tx, instance)
		return err
	})
	return state, err
}

// Release gives up the record's ownership on behalf of the policy req.Owner of cluster, so that
// another policy may claim it. Only the owner may release; releasing a record nobody owns does
// nothing (a retried release succeeds). The timeline and the erasure audit stay.
func (s *Store) Release(ctx context.Context, cluster string, req consentv1.ReleaseRequest) error {
	owner := req.Owner
	owner.Cluster = cluster
	if err := checkOwner(req.InstanceID, owner); err != nil {
		return err
	}
	var released *consentv1.Owner
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		row, err := lockInstance(ctx, tx, req.InstanceID)
		if err != nil {
			return err
		}
		switch {
		case row.owner == nil:
			return nil
		case !row.owner.Same(owner):
			return &OwnedElsewhereError{Instance: req.InstanceID, Owner: *row.owner}
		}
		released = row.owner
		if _, err := tx.Exec(ctx, `UPDATE consent_instances SET released_cluster = $2, released_namespace = $3 WHERE instance_id = $1`,
			req.InstanceID, row.owner.Cluster, row.owner.Namespace); err != nil {
			return err
		}
		return clearOwner(ctx, tx, req.InstanceID)
	})
	if err == nil && released != nil {
		s.observe().Released(req.InstanceID, *released)
	}
	return err
}

// observeClosed tells the observer of a transition closeOnRelease appended (once committed).
func (s *Store) observeClosed(instance string, c *closed) {
	if c != nil {
		s.observe().TransitionRecorded(instance, c.owner, c.tr, c.eventsRemoved, c.aggregatesRemoved)
	}
}

// ForceRelease clears the record's owner whoever it is: the administrator's way out when the
// owning cluster is gone, and the handover of an instance to a policy of another namespace or
// cluster. to, when set (Cluster and Namespace), is the only place a policy may claim it from
// next, so nobody else races the intended claimant; nil opens it to the next policy anywhere.
// It returns the previous owner (empty when there was none; without a name when the record
// was released already and only where it may be claimed from changed). Only a store working as
// RoleConsentAdmin may (else ErrAdministratorsOnly), save a release of an owned record to its
// owner's own namespace, which the owner's Release makes too.
func (s *Store) ForceRelease(ctx context.Context, instance string, to *consentv1.Owner) (consentv1.Owner, error) {
	var (
		previous consentv1.Owner
		closedBy *closed
	)
	if to != nil && (to.Cluster == "" || to.Namespace == "") {
		return previous, invalid("a handover names the cluster and the namespace of the policy that may claim the record")
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		row, err := lockInstance(ctx, tx, instance)
		if err != nil {
			return err
		}
		if to == nil {
			required, err := reservationsRequired(ctx, tx)
			if err != nil {
				return err
			}
			if required {
				return invalid("reservations are required on this receiver: a record is handed over to one namespace (--to CLUSTER/NAMESPACE), never to the next policy anywhere")
			}
		}
		// Where the record is now: its owner's namespace, or the one it was released to.
		var from *consentv1.Owner
		switch {
		case row.owner != nil:
			from = row.owner
		case row.released != nil:
			from = &consentv1.Owner{Cluster: row.released.Cluster, Namespace: row.released.Namespace}
		}
		closedBy = nil // (a retried transaction starts afresh)
		if backHome := from != nil && to != nil && from.Cluster == to.Cluster && from.Namespace == to.Namespace; !backHome {
			// A policy elsewhere that claims the record next records its own consent: none
			// holds until then.
			by := consentv1.Owner{}
			switch {
			case from != nil:
				by = *from
			case row.lastOwner != nil:
				by = consentv1.Owner{Cluster: row.lastOwner.Cluster, Namespace: row.lastOwner.Namespace}
			}
			if closedBy, err = closeOnRelease(ctx, tx, instance, by, s.now()); err != nil {
				return err
			}
		}
		var cluster, namespace *string
		if to != nil {
			cluster, namespace = &to.Cluster, &to.Namespace
		}
		if _, err := tx.Exec(ctx, `UPDATE consent_instances SET released_cluster = $2, released_namespace = $3 WHERE instance_id = $1`,
			instance, cluster, namespace); err != nil {
			if reservationRefused(err) { // turned on since it was read above
				return invalid("reservations are required on this receiver: a record is handed over to one namespace (--to CLUSTER/NAMESPACE)")
			}
			return err
		}
		if row.owner == nil {
			if row.released != nil {
				previous = *row.released // where the policy that released it lived (no name)
			}
			return nil
		}
		previous = *row.owner
		if err := clearOwner(ctx, tx, instance); reservationRefused(err) {
			return invalid("reservations are required on this receiver: a record is handed over to one namespace (--to CLUSTER/NAMESPACE)")
		} else if err != nil {
			return err
		}
		return nil
	})
	if err == nil {
		s.observeClosed(instance, closedBy)
	}
	if err == nil && previous.Name != "" {
		s.observe().Released(instance, previous)
	}
	return previous, administratorsOnly(err)
}

// Reserve makes an instance claimable only by a policy of to's cluster and namespace: it creates
// the record of an instance that has none, or reserves one nobody owns that is open to the next
// policy anywhere (released so before reservations were required). The receiver's operators
// assign an instance to its customer's namespace before any policy names it, so that no other
// namespace can claim it first (with reservations required, no instance can be claimed
// without). An instance that has an owner, or is released or reserved for a namespace already,
// is refused (ErrInvalid): hand it over with ForceRelease. Only a store working as
// RoleConsentAdmin may (else ErrAdministratorsOnly).
func (s *Store) Reserve(ctx context.Context, instance string, to consentv1.Owner) error {
	if to.Cluster == "" || to.Namespace == "" {
		return invalid("a reservation names the cluster and the namespace of the policy that may claim the record")
	}
	if err := checkOwner(instance, consentv1.Owner{Cluster: to.Cluster, Namespace: to.Namespace, Name: "reservation"}); err != nil {
		return err
	}
	return administratorsOnly(s.inTx(ctx, func(tx pgx.Tx) error {
		if err := lockExclusive(ctx, tx, instance); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `
INSERT INTO consent_instances (instance_id, created_at, released_cluster, released_namespace) VALUES ($1, $2, $3, $4)
ON CONFLICT (instance_id) DO UPDATE SET released_cluster = EXCLUDED.released_cluster, released_namespace = EXCLUDED.released_namespace
WHERE consent_instances.owner_cluster IS NULL AND consent_instances.released_cluster IS NULL`, instance, s.now(), to.Cluster, to.Namespace)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return invalid("instance %q has an owner, or is released or reserved for a namespace, already: hand it over with receiver consent release --instance %s --to CLUSTER/NAMESPACE", instance, instance)
		}
		return bumpVersion(ctx, tx, instance)
	}))
}

// OpenRecord is a record nobody owns that is released to no namespace (released so before
// reservations were required).
type OpenRecord struct {
	Instance string
	// LastOwner is where the policy that last owned it lived (Cluster and Namespace only; nil:
	// nobody has). With reservations required, only a policy there may claim it, any other
	// after Reserve.
	LastOwner *consentv1.Owner
}

// OpenRecords lists the records nobody owns that are released to no namespace, by instance.
func (s *Store) OpenRecords(ctx context.Context) ([]OpenRecord, error) {
	var open []OpenRecord
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		open = nil
		rows, err := tx.Query(ctx, `SELECT instance_id, last_owner_cluster, last_owner_namespace FROM consent_instances
WHERE owner_cluster IS NULL AND released_cluster IS NULL ORDER BY instance_id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var r OpenRecord
			var cluster, namespace *string
			if err := rows.Scan(&r.Instance, &cluster, &namespace); err != nil {
				return err
			}
			if cluster != nil {
				r.LastOwner = &consentv1.Owner{Cluster: *cluster, Namespace: deref(namespace)}
			}
			open = append(open, r)
		}
		return rows.Err()
	})
	return open, err
}

// OwnershipChange is one change of who owns an instance's record, or of where it may be
// claimed from next (consent_ownership_changes, written by the database at each change).
type OwnershipChange struct {
	At time.Time `json:"at"`
	// Change is claim (Owner claimed it), release (Owner's ownership ended; To is where it may
	// be claimed from next, nil: anywhere), reserve (nobody owned it before or after; To is
	// where it may be claimed from next, nil: anywhere) or delete (the record was deleted).
	Change string           `json:"change"`
	Owner  *consentv1.Owner `json:"owner,omitempty"`
	To     *consentv1.Owner `json:"to,omitempty"`
	// DBUser and Application are who wrote it: the database login, and the client's
	// application_name (the receiver's tools name their command and operating-system user).
	DBUser      string `json:"dbUser"`
	Application string `json:"application"`
}

// OwnershipChanges returns the instance's ownership changes, oldest first (none for an
// instance whose record predates them, or that has none).
func (s *Store) OwnershipChanges(ctx context.Context, instance string) ([]OwnershipChange, error) {
	var changes []OwnershipChange
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		changes = []OwnershipChange{} // (json: [], not null)
		rows, err := tx.Query(ctx, `
SELECT at, change, owner_cluster, owner_namespace, owner_name, owner_uid, to_cluster, to_namespace, db_user, application
FROM consent_ownership_changes WHERE instance_id = $1 ORDER BY seq`, instance)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var c OwnershipChange
			var cluster, namespace, name, uid, toCluster, toNamespace *string
			if err := rows.Scan(&c.At, &c.Change, &cluster, &namespace, &name, &uid, &toCluster, &toNamespace, &c.DBUser, &c.Application); err != nil {
				return err
			}
			c.Owner = ownerOf(cluster, namespace, name, uid)
			if toCluster != nil {
				c.To = &consentv1.Owner{Cluster: *toCluster, Namespace: deref(toNamespace)}
			}
			changes = append(changes, c)
		}
		return rows.Err()
	})
	return changes, err
}

// settingReservations is receiver_settings' row for reservations.
const settingReservations = "reservations_required"

// SetReservationsRequired sets, for every receiver on this database, whether a policy may claim
// an instance nobody has recorded only once it was reserved for the policy's namespace. Only a
// store working as RoleConsentAdmin may (else ErrAdministratorsOnly).
func (s *Store) SetReservationsRequired(ctx context.Context, required bool) error {
	return administratorsOnly(s.inTx(ctx, func(tx pgx.Tx) error {
		// Claims in flight finish first (they read the setting before they wrote): none that
		// read it off can commit after it is on.
		if _, err := tx.Exec(ctx, `LOCK TABLE consent_instances IN SHARE MODE`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `
INSERT INTO receiver_settings (name, value, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at`, settingReservations, required, s.now())
		return err
	}))
}

// ReservationsRequired reports the setting SetReservationsRequired sets (false until set).
func (s *Store) ReservationsRequired(ctx context.Context) (bool, error) {
	var required bool
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		var err error
		required, err = reservationsRequired(ctx, tx)
		return err
	})
	return required, err
}

// reservationRefused reports whether err is the database's refusal of a write reservations
// forbid (migration 0011).
func reservationRefused(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "TL001"
}

// releasedElsewhere reports whether err is the database's refusal of a claim of a record
// released or reserved for another namespace (migration 0013).
func releasedElsewhere(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "TL002"
}

func reservationsRequired(ctx context.Context, tx pgx.Tx) (bool, error) {
	var required bool
	err := tx.QueryRow(ctx, `SELECT value FROM receiver_settings WHERE name = $1`, settingReservations).Scan(&required)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	return required, err
}

func clearOwner(ctx context.Context, tx pgx.Tx, instance string) error {
	if _, err := tx.Exec(ctx, `
UPDATE consent_instances SET owner_cluster = NULL, owner_namespace = NULL, owner_name = NULL, owner_uid = NULL, claimed_at = NULL
WHERE instance_id = $1`, instance); err != nil {
		return err
	}
	return bumpVersion(ctx, tx, instance)
}

// eraseRange is the range an erasure covers, [from, to); a nil from is unbounded. An erasure
// carried out without an end also covers the events an instance whose clock runs fast recorded
// before it but dated after to: those dated in [to, aheadTo) (as far ahead as ingestion
// accepts) with ids up to aheadMaxID, the highest id the receiver had seen of the instance (its
// later events, with higher ids, are not in it).
type eraseRange struct {
	from       *time.Time
	to         time.Time
	aheadTo    *time.Time
	aheadMaxID *int64
}

// Erase carries out an erasure on behalf of the owning policy req.Owner of cluster: it deletes
// the instance's events recorded in [From, To) (To defaults to now, and then the events stored
// that are dated later are deleted too) and, for scope All, the
// aggregate cells whose day overlaps the range; writes the audit record; then re-queries and
// stamps the record verified only when nothing in scope is left (else ErrUnverified: retry).
// The range stays a tombstone: ingestion refuses data in it from then on. A request id is
// idempotent: a verified request returns its stored result and deletes nothing; an unverified
// one is carried out again; the same id with another scope or range is ErrRequestConflict. The
// record keeps the id's key (consentv1.RequestKey), never the id.
func (s *Store) Erase(ctx context.Context, cluster string, req consentv1.ErasureRequest) (consentv1.ErasureResult, error) {
	owner := req.Owner
	owner.Cluster = cluster
	instance := req.InstanceID
	if err := checkOwner(instance, owner); err != nil {
		return consentv1.ErasureResult{}, err
	}
	if err := req.Validate(); err != nil {
		return consentv1.ErasureResult{}, invalid("%v", err)
	}
	// The id is the customer's ticket reference and may hold words: only its key is stored,
	// logged or answered.
	key := consentv1.RequestKey(instance, req.RequestID)
	now := s.now()
	var from *time.Time
	if req.From != nil {
		f := floorMicro(*req.From)
		from = &f
	}
	to, defaulted := now, req.To == nil
	if !defaulted {
		to = ceilMicro(*req.To)
	} else if from != nil && !from.Before(to) {
		return consentv1.ErasureResult{}, invalid("from must be before now when to is not given")
	}
	var (
		res            consentv1.ErasureResult
		rng            eraseRange
		replay         bool
		events, aggDel int64
	)
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		row, err := lockInstance(ctx, tx, instance)
		if err != nil {
			return err
		}
		if row.owner == nil || !row.owner.Same(owner) {
			e := &OwnedElsewhereError{Instance: instance}
			if row.owner != nil {
				e.Owner = *row.owner
			}
			return e
		}
		prior, toDefaulted, found, err := loadErasure(ctx, tx, instance, key)
		if err != nil {
			return err
		}
		if found {
			if prior.Scope != req.Scope || !consentv1.SameTime(prior.From, from) || toDefaulted != defaulted || (!defaulted && !prior.To.Equal(to)) {
				return fmt.Errorf("%w: request %q was for scope %s over another range", ErrRequestConflict, key, prior.Scope)
			}
			if prior.VerifiedAt != nil {
				res, replay = prior, true
				return nil
			}
			rng = eraseRange{from: prior.From, to: prior.To}
			if err := tx.QueryRow(ctx, `SELECT ahead_to, ahead_max_id FROM erasures WHERE instance_id = $1 AND request_id = $2`,
				instance, key).Scan(&rng.aheadTo, &rng.aheadMaxID); err != nil {
				return err
			}
		} else {
			rng = eraseRange{from: from, to: to}
			if defaulted {
				// Everything recorded before it is carried out, also events an instance whose
				// clock runs fast dated later (ingestion, which holds the instance's lock shared,
				// adds none meanwhile). Those are told by their ids (assigned before: at most the
				// highest the receiver has seen, stored or acknowledged as read), not by a range of
				// time reaching ahead, which would refuse the events the instance records next.
				if err := tx.QueryRow(ctx, `SELECT GREATEST((SELECT max(event_id) FROM events WHERE instance_id = $1),
  (SELECT cursor FROM cursors WHERE instance_id = $1))`, instance).Scan(&rng.aheadMaxID); err != nil {
					return err
				}
				if rng.aheadMaxID != nil {
					end := to.Add(MaxFutureSkew)
					rng.aheadTo = &end
				}
			}
		}
		if events, aggDel, err = deleteInScope(ctx, tx, instance, req.Scope, rng); err != nil {
			return err
		}
		if found {
			_, err = tx.Exec(ctx, `
UPDATE erasures SET events_deleted = events_deleted + $3, aggregates_deleted = aggregates_deleted + $4
WHERE instance_id = $1 AND request_id = $2`, instance, key, events, aggDel)
		} else {
			_, err = tx.Exec(ctx, `
INSERT INTO erasures (instance_id, request_id, scope, range_from, range_to, range_to_defaulted, requested_by,
                      owner_cluster, owner_namespace, owner_name, requested_at, events_deleted, aggregates_deleted,
                      ahead_to, ahead_max_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)`,
				instance, key, req.Scope, rng.from, rng.to, defaulted, req.RequestedBy,
				owner.Cluster, owner.Namespace, owner.Name, now, events, aggDel, rng.aheadTo, rng.aheadMaxID)
		}
		if err != nil {
			return err
		}
		// A new tombstone: cached copies must reload.
		return bumpVersion(ctx, tx, instance)
	})
	if err != nil || replay {
		return res, err
	}
	s.observe().Erased(instance, owner, key, req.Scope, events, aggDel)

	// Verify in a new statement, after the commit: what a re-query finds is what is stored.
	left, err := countInScope(ctx, s.pool, instance, req.Scope, rng)
	if err != nil {
		return consentv1.ErasureResult{}, unavailable(err)
	}
	if left > 0 {
		return consentv1.ErasureResult{}, fmt.Errorf("%w: %d rows of instance %q are still in scope of request %q", ErrUnverified, left, instance, key)
	}
	if _, err := s.pool.Exec(ctx, `UPDATE erasures SET verified_at = $3 WHERE instance_id = $1 AND request_id = $2 AND verified_at IS NULL`,
		instance, key, s.now()); err != nil {
		return consentv1.ErasureResult{}, unavailable(err)
	}
	res, _, _, err = loadErasure(ctx, s.pool, instance, key)
	if err != nil {
		return consentv1.ErasureResult{}, unavailable(err)
	}
	return res, nil
}

// The scope predicates, shared by the deletion and the verification so they cannot drift apart.
// An event is in range when its timestamp is; a cell when its UTC day [d, d+1) overlaps the range
// (day + 1 is date arithmetic, independent of the session's time zone).
const (
	eventsInScope = `instance_id = $1 AND (($2::timestamptz IS NULL OR ts >= $2) AND ts < $3
  OR $4::timestamptz IS NOT NULL AND ts >= $3 AND ts < $4 AND event_id <= $5::bigint)`
	aggregatesInScope = `instance_id = $1 AND ($2::timestamptz IS NULL OR ((day + 1)::timestamp AT TIME ZONE 'UTC') > $2) AND (day::timestamp AT TIME ZONE 'UTC') < $3`
)

func deleteInScope(ctx context.Context, tx pgx.Tx, instance, scope string, r eraseRange) (events, aggregates int64, err error) {
	tag, err := tx.Exec(ctx, `DELETE FROM events WHERE `+eventsInScope, instance, r.from, r.to, r.aheadTo, r.aheadMaxID)
	if err != nil {
		return 0, 0, err
	}
	events = tag.RowsAffected()
	if _, err := tx.Exec(ctx, `SELECT forget_report_rollups($1, $2, $3)`, instance, r.from, r.to); err != nil {
		return 0, 0, err
	}
	if r.aheadTo != nil {
		if _, err := tx.Exec(ctx, `SELECT forget_report_rollups($1, $2, $3)`, instance, r.to, *r.aheadTo); err != nil {
			return 0, 0, err
		}
	}
	if scope == consentv1.ScopeAll {
		tag, err := tx.Exec(ctx, `DELETE FROM aggregates WHERE `+aggregatesInScope, instance, r.from, r.to)
		if err != nil {
			return 0, 0, err
		}
		aggregates = tag.RowsAffected()
	}
	return events, aggregates, nil
}

// rowQuerier is what both a transaction and the pool offer for reads.
type rowQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func countInScope(ctx context.Context, q rowQuerier, instance, scope string, r eraseRange) (int64, error) {
	sql := `SELECT (SELECT count(*) FROM events WHERE ` + eventsInScope + `)`
	if scope == consentv1.ScopeAll {
		sql += ` + (SELECT count(*) FROM aggregates WHERE ` + aggregatesInScope + `)`
	}
	var n int64
	err := q.QueryRow(ctx, sql, instance, r.from, r.to, r.aheadTo, r.aheadMaxID).Scan(&n)
	return n, err
}

const erasureColumns = `request_id, scope, range_from, range_to, range_to_defaulted, requested_by, requested_at,
owner_cluster, owner_namespace, owner_name, events_deleted, aggregates_deleted, verified_at`

func scanErasure(row pgx.Row, extra ...any) (consentv1.ErasureResult, bool, error) {
	var e consentv1.ErasureResult
	var defaulted bool
	dest := append(extra, &e.RequestID, &e.Scope, &e.From, &e.To, &defaulted, &e.RequestedBy, &e.RequestedAt,
		&e.Owner.Cluster, &e.Owner.Namespace, &e.Owner.Name, &e.EventsDeleted, &e.AggregatesDeleted, &e.VerifiedAt)
	if err := row.Scan(dest...); err != nil {
		return e, false, err
	}
	utc(e.From)
	e.To = e.To.UTC()
	e.RequestedAt = e.RequestedAt.UTC()
	utc(e.VerifiedAt)
	return e, defaulted, nil
}

func utc(t *time.Time) {
	if t != nil {
		*t = t.UTC()
	}
}

// loadErasure returns the audit record of one request, whether its end was defaulted, and
// whether it exists.
func loadErasure(ctx context.Context, q rowQuerier, instance, requestID string) (consentv1.ErasureResult, bool, bool, error) {
	e, defaulted, err := scanErasure(q.QueryRow(ctx, `SELECT `+erasureColumns+` FROM erasures WHERE instance_id = $1 AND request_id = $2`, instance, requestID))
	if errors.Is(err, pgx.ErrNoRows) {
		return e, false, false, nil
	}
	return e, defaulted, err == nil, err
}

// ErasureRecord is one row of the erasure audit trail, with its instance.
type ErasureRecord struct {
	InstanceID string `json:"instanceID"`
	consentv1.ErasureResult
}

// Erasures returns the erasure audit trail, oldest first: one instance's, or every instance's
// when instance is empty.
func (s *Store) Erasures(ctx context.Context, instance string) ([]ErasureRecord, error) {
	rows, err := s.pool.Query(ctx, `SELECT instance_id, `+erasureColumns+` FROM erasures
WHERE $1 = '' OR instance_id = $1 ORDER BY requested_at, instance_id, request_id`, instance)
	if err != nil {
		return nil, unavailable(err)
	}
	defer rows.Close()
	var out []ErasureRecord
	for rows.Next() {
		var r ErasureRecord
		if r.ErasureResult, _, err = scanErasure(rows, &r.InstanceID); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// keepUntil is req's transition, with the record's until when req asks for EventLevel without
// one over an EventLevel that has one, and does not show it knows it (its expected head carries
// none): a requester older than until (an operator rolled back, a script) renews nothing and
// never removes a trial's expiry; after the expiry its grant is refused (the until has passed),
// never taken as one without expiry. One that knows it removes it by naming it in the expected
// head.
func keepUntil(timeline consentv1.Timeline, req consentv1.RecordRequest) consentv1.Transition {
	tr := req.Transition
	n := len(timeline)
	if n == 0 || tr.Tier != consentv1.TierEventLevel || tr.Until != nil || timeline[n-1].Tier != consentv1.TierEventLevel ||
		timeline[n-1].Until == nil || req.ExpectedHead != nil && req.ExpectedHead.Until != nil {
		return tr
	}
	tr.Until = timeline[n-1].Until
	return tr
}

// loadTimeline returns the instance's transitions, oldest first, with when each was recorded.
func loadTimeline(ctx context.Context, q rowQuerier, instance string) (consentv1.Timeline, error) {
	tl, _, err := loadTimelineRemoved(ctx, q, instance)
	return tl, err
}

// loadTimelineRemoved also returns the events the last transition removed.
func loadTimelineRemoved(ctx context.Context, q rowQuerier, instance string) (consentv1.Timeline, int64, error) {
	rows, err := q.Query(ctx, `SELECT at, tier, reason, basis, recorded_at, events_removed, until FROM consent_transitions WHERE instance_id = $1 ORDER BY seq`, instance)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var tl consentv1.Timeline
	var removed int64
	for rows.Next() {
		var tr consentv1.Transition
		var tier string
		var recorded time.Time
		if err := rows.Scan(&tr.At, &tier, &tr.Reason, &tr.Basis, &recorded, &removed, &tr.Until); err != nil {
			return nil, 0, err
		}
		tr.At, tr.Tier = tr.At.UTC(), consentv1.Tier(tier)
		if tr.Until != nil {
			u := tr.Until.UTC()
			tr.Until = &u
		}
		recorded = recorded.UTC()
		tr.RecordedAt = &recorded
		tl = append(tl, tr)
	}
	return tl, removed, rows.Err()
}

// loadState reads an instance's whole record.
func loadState(ctx context.Context, q rowQuerier, instance string) (consentv1.State, error) {
	st := consentv1.State{InstanceID: instance}
	var cluster, namespace, name, uid, relCluster, relNamespace *string
	err := q.QueryRow(ctx, `SELECT owner_cluster, owner_namespace, owner_name, owner_uid, released_cluster, released_namespace
FROM consent_instances WHERE instance_id = $1`, instance).Scan(&cluster, &namespace, &name, &uid, &relCluster, &relNamespace)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, fmt.Errorf("%w: %q", ErrUnknownInstance, instance)
	}
	if err != nil {
		return st, err
	}
	st.Owner = consentv1.Owner{Cluster: deref(cluster), Namespace: deref(namespace), Name: deref(name), UID: deref(uid)}
	if relCluster != nil {
		st.ReleasedBy = &consentv1.Owner{Cluster: *relCluster, Namespace: deref(relNamespace)}
	}
	if st.Timeline, st.EventsRemoved, err = loadTimelineRemoved(ctx, q, instance); err != nil {
		return st, err
	}
	if st.Timeline == nil {
		st.Timeline = consentv1.Timeline{}
	}
	rows, err := q.Query(ctx, `SELECT `+erasureColumns+` FROM erasures WHERE instance_id = $1 ORDER BY requested_at, request_id`, instance)
	if err != nil {
		return st, err
	}
	defer rows.Close()
	for rows.Next() {
		e, _, err := scanErasure(rows)
		if err != nil {
			return st, err
		}
		st.Erasures = append(st.Erasures, e)
	}
	return st, rows.Err()
}
