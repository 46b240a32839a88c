/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package v1 is version 1 of the consent ledger: the record, kept by the receiver, of which
// consent tier was in force for an instance at every moment, who owns that record, and the
// erasures carried out for it. It is one of the project's public contracts. The operator writes
// the ledger over mutual TLS with its own identity; the receiver enforces it on every batch; the
// collector filters by the same timeline, which the operator copies into its configuration.
//
// Consent is a window in time, not a switch: an event may leave as event-level data only if its
// timestamp falls in a period where the ledger says EventLevel, and an aggregate may cover only
// periods that were exactly CriticalOnly. Before the first transition an instance is Off.
package v1

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Paths of the operator-only API on the receiver's mutual-TLS listener.
const (
	// PathConsent records a transition (POST) or returns an instance's state (GET ?instance=).
	PathConsent = "/v1/admin/consent"
	// PathRelease gives up ownership of an instance's record (POST), for example when its
	// policy is deleted, so that another policy may claim it.
	PathRelease = "/v1/admin/consent/release"
	// PathErasures requests an erasure (POST); the answer is its verified result.
	PathErasures = "/v1/admin/erasures"
)

// Tier is a consent tier, as in the TelemetryPolicy API.
type Tier string

// Tiers.
const (
	TierEventLevel   Tier = "EventLevel"
	TierCriticalOnly Tier = "CriticalOnly"
	TierOff          Tier = "Off"
)

// Rank orders tiers by how much may leave: Off < CriticalOnly < EventLevel. Unknown tiers rank
// lowest, so comparisons fail closed.
func (t Tier) Rank() int {
	switch t {
	case TierEventLevel:
		return 2
	case TierCriticalOnly:
		return 1
	default:
		return 0
	}
}

// Valid reports whether t is one of the three tiers.
func (t Tier) Valid() bool {
	return t == TierEventLevel || t == TierCriticalOnly || t == TierOff
}

// Limits of the format.
const (
	// MaxClockSkew is how far in the future a transition that raises consent may be dated.
	MaxClockSkew = 5 * time.Minute
	// MaxReasonLen bounds reasons and bases (CamelCase words).
	MaxReasonLen = 64
	// MaxNameLen bounds owner names, request ids and requesters.
	MaxNameLen = 253
)

// Transition is one change of the tier in force: from At on, Tier applies.
type Transition struct {
	// At is when the change took effect: when consent was granted, or the moment it was
	// withdrawn (the write that lowered it, or a trial's expiry), not when anyone noticed.
	At time.Time `json:"at"`
	// Tier in force from At.
	Tier Tier `json:"tier"`
	// Reason is a CamelCase reason (Declared, TrialExpired, TermsOutdated, PolicyDeleted, ...).
	Reason string `json:"reason,omitempty"`
	// Basis is the contract basis at the time of the change.
	Basis string `json:"basis,omitempty"`
	// Until, on an EventLevel transition only, is when that consent ends by itself: a trial's or
	// a contract's expiry. From Until on, CriticalOnly is in force (reason TrialExpired) unless a
	// later transition came first, whether or not anyone records the expiry: the receiver ends
	// the window itself, with the operator down and its memory of the expiry lost.
	Until *time.Time `json:"until,omitempty"`
	// RecordedAt is when the receiver recorded the transition (set by the receiver).
	RecordedAt *time.Time `json:"recordedAt,omitempty"`
}

// ReasonTrialExpired is the reason of the CriticalOnly period that follows an EventLevel
// transition's Until.
const ReasonTrialExpired = "TrialExpired"

// lapsedBy reports whether tr is EventLevel ending at its Until at or before ts.
func (tr Transition) lapsedBy(ts time.Time) bool {
	return tr.Until != nil && tr.Tier == TierEventLevel && !ts.Before(*tr.Until)
}

// Expired is the CriticalOnly period that follows the EventLevel transition tr at its Until.
func (tr Transition) Expired() Transition {
	return Transition{At: tr.Until.UTC(), Tier: TierCriticalOnly, Reason: ReasonTrialExpired, Basis: tr.Basis, RecordedAt: tr.RecordedAt}
}

// Timeline is an instance's transitions in order of At (ties keep the order recorded: the later
// one wins from that instant).
type Timeline []Transition

// Current is the tier of the last transition (Off for an empty timeline), not minding its Until:
// what was last recorded. The tier in force at a moment is CurrentAt's.
func (t Timeline) Current() Tier {
	if len(t) == 0 {
		return TierOff
	}
	return t[len(t)-1].Tier
}

// CurrentAt is the tier in force at now after the last transition: CriticalOnly once an
// EventLevel transition's Until has come.
func (t Timeline) CurrentAt(now time.Time) Tier {
	if len(t) == 0 {
		return TierOff
	}
	if last := t[len(t)-1]; last.lapsedBy(now) {
		return TierCriticalOnly
	}
	return t[len(t)-1].Tier
}

// Effective is the timeline with every Until carried out: each EventLevel transition whose
// Until comes before the next transition is followed by its CriticalOnly period, and no
// transition carries an Until. Every tier it gives is the one the timeline gives, at every
// moment; a reader that knows nothing of Until (an older collector) reads it right too.
func (t Timeline) Effective() Timeline {
	if !t.hasUntil() {
		return t
	}
	out := make(Timeline, 0, len(t)+1)
	for i, tr := range t {
		plain := tr
		plain.Until = nil
		out = append(out, plain)
		if tr.Until != nil && tr.Tier == TierEventLevel && (i+1 == len(t) || t[i+1].At.After(*tr.Until)) {
			out = append(out, tr.Expired())
		}
	}
	return out
}

func (t Timeline) hasUntil() bool {
	for _, tr := range t {
		if tr.Until != nil {
			return true
		}
	}
	return false
}

// TierAt is the tier in force at ts: that of the last transition at or before ts, Off before the
// first.
func (t Timeline) TierAt(ts time.Time) Tier {
	// The last index whose At <= ts.
	i, _ := slices.BinarySearchFunc(t, ts, func(tr Transition, ts time.Time) int {
		if tr.At.After(ts) {
			return 1
		}
		return -1
	})
	if i == 0 {
		return TierOff
	}
	if t[i-1].lapsedBy(ts) {
		return TierCriticalOnly
	}
	return t[i-1].Tier
}

// Window is a half-open interval [Start, End); a nil End is still open.
type Window struct {
	Start time.Time  `json:"start"`
	End   *time.Time `json:"end,omitempty"`
}

// Contains reports whether ts lies in the window.
func (w Window) Contains(ts time.Time) bool {
	return !ts.Before(w.Start) && (w.End == nil || ts.Before(*w.End))
}

// Overlaps reports whether the window intersects [from, to).
func (w Window) Overlaps(from, to time.Time) bool {
	return w.Start.Before(to) && (w.End == nil || w.End.After(from))
}

// Covers reports whether the window holds all of [from, to).
func (w Window) Covers(from, to time.Time) bool {
	return !w.Start.After(from) && (w.End == nil || !w.End.Before(to))
}

// Windows returns the maximal intervals in which the tier in force ranks at least min:
// Windows(TierEventLevel) are the periods whose events may leave one by one.
func (t Timeline) Windows(minTier Tier) []Window {
	return t.windows(func(tier Tier) bool { return tier.Rank() >= minTier.Rank() })
}

// AggregateWindows returns the maximal intervals in which the tier in force is exactly
// CriticalOnly: the only periods aggregates count. An EventLevel period is not counted even
// though it allows more: its events are stored one by one at the receiver, and a day's cells
// that counted them could be differenced against them to reveal the CriticalOnly part of the day.
func (t Timeline) AggregateWindows() []Window {
	return t.windows(func(tier Tier) bool { return tier == TierCriticalOnly })
}

// AggregateDays says which UTC days' aggregate cells may leave an instance and be stored: a
// day during all of which CriticalOnly was in force. Cells of a day that mixed it with another
// tier, even counting only its CriticalOnly part, are not published, because the receiver cannot
// tell what a cell counted: cells that counted an EventLevel part too (a stale or hostile
// collector) could be differenced against the events stored one by one, and cells that counted
// an Off part, or the hours before consent was first recorded, would publish what was never
// consented (the day of a withdrawal to Off, whose cells the receiver deletes when it records
// it, stays unpublishable after a later grant).
type AggregateDays struct {
	criticalOnly []Window
}

// Recorded is the part of the timeline the receiver has recorded: up to its last transition that
// carries RecordedAt (a collector's configuration also holds the lowerings the operator enforced
// and has yet to record, which carry none; there it marks a recorded transition with its own
// time, not when it was recorded). A timeline none of whose transitions carries one is
// taken as recorded whole.
func (t Timeline) Recorded() Timeline {
	for i := len(t) - 1; i >= 0; i-- {
		if t[i].RecordedAt != nil {
			return t[: i+1 : i+1]
		}
	}
	return t
}

// AggregateDays returns the rule for the timeline.
func (t Timeline) AggregateDays() AggregateDays {
	return AggregateDays{criticalOnly: t.AggregateWindows()}
}

// Allow reports whether cells of the UTC day that begins at day may be published: one
// CriticalOnly window (they are maximal) covers the whole day.
func (a AggregateDays) Allow(day time.Time) bool {
	end := day.AddDate(0, 0, 1)
	for _, w := range a.criticalOnly {
		if w.Covers(day, end) {
			return true
		}
	}
	return false
}

// windows returns the maximal intervals in which in(tier in force) holds.
func (t Timeline) windows(inside func(Tier) bool) []Window {
	var out []Window
	var open *Window
	for _, tr := range t.Effective() {
		in := inside(tr.Tier)
		switch {
		case in && open == nil:
			open = &Window{Start: tr.At}
			if n := len(out); n > 0 && out[n-1].End.Equal(tr.At) {
				// Left and entered again at the same instant: one window.
				open = &Window{Start: out[n-1].Start}
				out = out[:n-1]
			}
		case !in && open != nil:
			end := tr.At
			if end.After(open.Start) {
				open.End = &end
				out = append(out, *open)
			}
			open = nil
		}
	}
	if open != nil {
		out = append(out, *open)
	}
	return out
}

// Validate checks a timeline read from outside (a configuration file, a response): known tiers,
// times in order, bounded reasons.
func (t Timeline) Validate() error {
	var prev time.Time
	for i, tr := range t {
		if !tr.Tier.Valid() {
			return fmt.Errorf("transition %d: tier %q is not one of EventLevel, CriticalOnly, Off", i, tr.Tier)
		}
		if tr.At.IsZero() {
			return fmt.Errorf("transition %d: at is required", i)
		}
		if i > 0 && tr.At.Before(prev) {
			return fmt.Errorf("transition %d: at %s is before the previous transition", i, tr.At.UTC().Format(time.RFC3339Nano))
		}
		prev = tr.At
		if len(tr.Reason) > MaxReasonLen || len(tr.Basis) > MaxReasonLen {
			return fmt.Errorf("transition %d: reason and basis are at most %d characters", i, MaxReasonLen)
		}
		if err := validUntil(tr); err != nil {
			return fmt.Errorf("transition %d: %w", i, err)
		}
	}
	return nil
}

// validUntil checks that an Until is on EventLevel and after the transition's own time.
func validUntil(tr Transition) error {
	switch {
	case tr.Until == nil:
		return nil
	case tr.Tier != TierEventLevel:
		return errors.New("until is for EventLevel only")
	case !tr.Until.After(tr.At):
		return errors.New("until must be after at")
	}
	return nil
}

// Tail returns the last n transitions. Dropping older ones only shortens consent: before the
// first transition kept, the instance counts as Off.
func (t Timeline) Tail(n int) Timeline {
	if len(t) <= n {
		return t
	}
	return t[len(t)-n:]
}

// ErrFuture is returned for a transition raising consent at a time that has not come yet.
var ErrFuture = errors.New("a transition that raises consent may not be dated in the future")

// Next returns the transition to append to t for a request to move to tr.Tier at tr.At, seen at
// now, and false when the tier is already in force. The ledger is append-only and never rewrites
// the past:
//   - only an instance's first transition may be dated in the past (consent accepted before the
//     instance was first enforced, startFrom Beginning); once there is a record, raising consent
//     takes effect when it is recorded (now), so it can never re-open a period already recorded
//     as lower, nor the gap between a withdrawal and a new grant;
//   - a transition is never dated before the last one, so lowering can never be undone by
//     dating it earlier, and lowering is never dated after now (withdrawal takes effect at once
//     at the latest);
//   - raising is refused when dated more than MaxClockSkew ahead of now;
//   - times are whole seconds: a withdrawal rounded down, a grant rounded up, an Until down.
//
// The tier in force is judged at now: an EventLevel transition whose Until has come is
// CriticalOnly in force, so EventLevel again is a new grant, dated now. CriticalOnly then is
// recorded at the Until (reason TrialExpired), or earlier when dated before it (a withdrawal
// recorded late): the record shows the expiry, though it never depended on anyone recording
// it. EventLevel while EventLevel is in force with another Until (a trial extended, shortened,
// or made a contract without expiry) is appended as a renewal, dated at the transition it
// renews (EventLevel was in force from then to now either way).
func Next(t Timeline, tr Transition, now time.Time) (Transition, bool, error) {
	if !tr.Tier.Valid() {
		return Transition{}, false, fmt.Errorf("tier %q is not one of EventLevel, CriticalOnly, Off", tr.Tier)
	}
	if tr.At.IsZero() {
		return Transition{}, false, errors.New("at is required")
	}
	if len(tr.Reason) > MaxReasonLen || len(tr.Basis) > MaxReasonLen {
		return Transition{}, false, fmt.Errorf("reason and basis are at most %d characters", MaxReasonLen)
	}
	if tr.Until != nil && tr.Tier != TierEventLevel {
		return Transition{}, false, errors.New("until is for EventLevel only")
	}
	if tr.Until != nil {
		u := tr.Until.Truncate(time.Second).UTC()
		tr.Until = &u
	}
	current := t.CurrentAt(now)
	renewal := false
	if len(t) > 0 && current == tr.Tier {
		last := t[len(t)-1]
		switch {
		case tr.Tier == TierEventLevel:
			if SameTime(last.Until, tr.Until) {
				return Transition{}, false, nil
			}
			renewal = true
		case tr.Tier == TierCriticalOnly && last.Tier == TierEventLevel && last.Until != nil:
			// CriticalOnly since an Until that passed: recorded all the same, at the Until
			// (the expiry, for the record's readers) or earlier when withdrawn before it.
			if tr.At.After(*last.Until) {
				tr.At, tr.Reason = *last.Until, ReasonTrialExpired
			}
			current = TierEventLevel
		default:
			return Transition{}, false, nil
		}
	}
	if renewal {
		// Dated at the transition it renews: EventLevel is in force from then to now either
		// way (its until has not come), so an extension widens only what is to come and a
		// shortening only narrows. Dated any later, it would push a withdrawal written
		// before it was recorded (by a reconcile that planned it from an older spec) to its
		// time, keeping the window open until then. (The later of two at one instant wins.)
		tr.At = t[len(t)-1].At.UTC()
		tr.RecordedAt = nil
		// (A shortening to a time already past would rewrite the past: refused; the expiry is
		// recorded as such.)
		if tr.Until != nil && !tr.Until.After(now) {
			return Transition{}, false, fmt.Errorf("until %s has passed: a renewal never ends the window in the past", tr.Until.Format(time.RFC3339))
		}
		// (A grant may be dated a little ahead of now, and its renewal with it.)
		if tr.Until != nil && !tr.Until.After(tr.At) {
			return Transition{}, false, fmt.Errorf("until %s is not after the grant it renews, dated %s", tr.Until.Format(time.RFC3339), tr.At.Format(time.RFC3339Nano))
		}
		return tr, true, nil
	}
	raising := tr.Tier.Rank() > current.Rank()
	if raising && tr.At.After(now.Add(MaxClockSkew)) {
		return Transition{}, false, ErrFuture
	}
	if !raising && tr.At.After(now) {
		tr.At = now
	}
	if len(t) > 0 {
		if raising && tr.At.Before(now) {
			tr.At = now
		}
		// Never before the last transition, even one rounded up past now a moment ago.
		if last := t[len(t)-1].At; tr.At.Before(last) {
			tr.At = last
		}
	}
	// Whole seconds, as Kubernetes status and the collector's configuration keep them, rounded
	// the safe way: a withdrawal earlier, a grant later (the last transition is whole seconds
	// already, so rounding never goes before it).
	if raising && !tr.At.Equal(tr.At.Truncate(time.Second)) {
		tr.At = tr.At.Truncate(time.Second).Add(time.Second)
	} else {
		tr.At = tr.At.Truncate(time.Second)
	}
	tr.At = tr.At.UTC()
	tr.RecordedAt = nil
	if tr.Until != nil && !tr.Until.After(tr.At) {
		return Transition{}, false, fmt.Errorf("until %s is not after the transition's time %s", tr.Until.Format(time.RFC3339), tr.At.Format(time.RFC3339))
	}
	return tr, true, nil
}

// SameTime reports whether a and b are both absent or the same instant (an Until, an erasure's
// range).
func SameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}

// Owner identifies who may write an instance's record: one policy of one cluster's operator.
// The cluster comes from the operator's client certificate, never from a request body.
type Owner struct {
	Cluster   string `json:"cluster"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid,omitempty"`
}

// Same reports whether o and other name the same policy: the same cluster, namespace and name,
// and the same UID when both carry one. A policy deleted and created again gets a new UID: its
// deletion released the record, so it claims it again; one whose release never happened (its
// finalizer removed by hand) needs the receiver's operators to release it.
func (o Owner) Same(other Owner) bool {
	if o.UID != "" && other.UID != "" && o.UID != other.UID {
		return false
	}
	return o.Cluster == other.Cluster && o.Namespace == other.Namespace && o.Name == other.Name
}

func (o Owner) String() string { return o.Cluster + "/" + o.Namespace + "/" + o.Name }

// RecordRequest asks the receiver to record a transition for an instance on behalf of Owner.
type RecordRequest struct {
	InstanceID string     `json:"instanceID"`
	Owner      Owner      `json:"owner"`
	Transition Transition `json:"transition"`
	// ExpectedHead, when set, is the last transition the requester knows of (its at and tier,
	// and its until when it has one): the receiver refuses the request (409 Stale) when its
	// record has moved on, so a request computed from an outdated copy is never applied. An
	// EventLevel transition without until over a trial ends the trial's expiry only when the
	// expected head names that until; otherwise the receiver keeps the expiry, and refuses the
	// request once the expiry has passed.
	ExpectedHead *Transition `json:"expectedHead,omitempty"`
}

// ReleaseRequest gives up ownership of an instance's record. The timeline and the erasure audit
// stay.
type ReleaseRequest struct {
	InstanceID string `json:"instanceID"`
	Owner      Owner  `json:"owner"`
}

// State is an instance's record.
type State struct {
	InstanceID string `json:"instanceID"`
	// Owner is who may write the record; empty when released.
	Owner Owner `json:"owner"`
	// ReleasedBy is where the policy that released the record lived (cluster and namespace
	// only): only a policy there may claim it again, until the receiver's operators hand it over.
	ReleasedBy *Owner `json:"releasedBy,omitempty"`
	// Timeline is every transition, oldest first.
	Timeline Timeline `json:"timeline"`
	// EventsRemoved is how many stored events the last transition removed because they were
	// recorded after consent was withdrawn.
	EventsRemoved int64 `json:"eventsRemoved,omitempty"`
	// Erasures are the erasures carried out, oldest first.
	Erasures []ErasureResult `json:"erasures,omitempty"`
}

// Erasure scopes.
const (
	// ScopeEvents erases event-level data.
	ScopeEvents = "Events"
	// ScopeAll erases event-level data and aggregates.
	ScopeAll = "All"
)

// Requesters: who asked for an erasure, by role. The audit record is kept centrally for years
// and outlives the data it describes, so it names a role from this closed set, never a person
// (a ticket reference goes in the request's id).
const (
	// RequesterCustomerAdmin: the customer's administrator.
	RequesterCustomerAdmin = "CustomerAdmin"
	// RequesterDataSubject: a user of the instance, about their own data.
	RequesterDataSubject = "DataSubject"
	// RequesterSupport: support staff, on the customer's behalf.
	RequesterSupport = "Support"
	// RequesterLegal: a legal obligation (a regulator, a court, counsel).
	RequesterLegal = "Legal"
	// RequesterContractEnd: the contract ended and its data must go.
	RequesterContractEnd = "ContractEnd"
	// RequesterUnspecified: the request named no role from this set. Records made before
	// requesters were a closed set carry it, and an operator sends it for a policy that still
	// holds free text there (kept by the API server from before the change).
	RequesterUnspecified = "Unspecified"
)

// Requesters lists the values RequestedBy may take.
var Requesters = []string{RequesterCustomerAdmin, RequesterDataSubject, RequesterSupport, RequesterLegal,
	RequesterContractEnd, RequesterUnspecified}

// ValidRequester reports whether s may be an erasure's RequestedBy.
func ValidRequester(s string) bool { return slices.Contains(Requesters, s) }

// ErasureRequest asks the receiver to delete an instance's stored data in scope. From and To
// restrict it to data recorded in [From, To); without To it covers everything stored when the
// receiver carries it out: data recorded up to that moment, and the events an instance whose
// clock runs fast recorded before it but dated later (told by their ids: the instance's next
// events are not in it).
// Data in scope that arrives later is refused, so nothing re-sent brings it back.
type ErasureRequest struct {
	InstanceID string     `json:"instanceID"`
	Owner      Owner      `json:"owner"`
	RequestID  string     `json:"requestID"`
	Scope      string     `json:"scope"`
	From       *time.Time `json:"from,omitempty"`
	To         *time.Time `json:"to,omitempty"`
	// RequestedBy says who asked, by role (one of Requesters), for the audit record.
	RequestedBy string `json:"requestedBy"`
}

// ErasureResult is the audit record of an erasure: who asked, when, the scope, how many rows were
// deleted and when a re-query found nothing left. It never holds any of the data.
type ErasureResult struct {
	// RequestID is the request's key (RequestKey), not the id it was asked with.
	RequestID         string     `json:"requestID"`
	Scope             string     `json:"scope"`
	From              *time.Time `json:"from,omitempty"`
	To                time.Time  `json:"to"`
	RequestedBy       string     `json:"requestedBy"`
	RequestedAt       time.Time  `json:"requestedAt"`
	Owner             Owner      `json:"owner"`
	EventsDeleted     int64      `json:"eventsDeleted"`
	AggregatesDeleted int64      `json:"aggregatesDeleted"`
	VerifiedAt        *time.Time `json:"verifiedAt,omitempty"`
}

// transitionReasons are the reasons a transition may carry: the operator's (the TelemetryPolicy
// API's consent reasons) and the receiver's own. A closed set, as the bases are: the ledger is
// kept for years and read centrally, and a reason is never free text.
var transitionReasons = []string{"", "Declared", "TrialExpired", "TermsOutdated", "ApprovalMissing", "BasisNotEligible",
	"NotYetAccepted", "PolicyDeleted", ReasonRecordReleased}

// contractBases are the contract bases a transition may name (the TelemetryPolicy API's), or none.
var contractBases = []string{"", "SelfServeTrial", "ZeroDollarOrderForm", "NewContract", "Renewal", "CELedTrial", "LegacyTerms"}

// KnownReason reports whether r is a reason a transition may carry.
func KnownReason(r string) bool { return slices.Contains(transitionReasons, r) }

// KnownBasis reports whether b is a contract basis a transition may name (or none).
func KnownBasis(b string) bool { return slices.Contains(contractBases, b) }

// ReasonRecordReleased is the reason of the Off transition the receiver appends itself when a
// record is released or handed over while consent is in force: consent was its owner's, and no
// one's holds until the next owner records its own.
const ReasonRecordReleased = "RecordReleased"

// Reasons in error responses (the body has the batch API's ErrorResponse shape).
const (
	// ReasonOwnedElsewhere: the instance's record belongs to another policy or cluster (409).
	ReasonOwnedElsewhere = "OwnedElsewhere"
	// ReasonNotReserved: the instance has no record, and the receiver requires it to be
	// reserved for the policy's namespace before a policy claims it (409).
	ReasonNotReserved = "NotReserved"
	// ReasonConsentRefused: the instance's consent does not allow what was sent (403).
	ReasonConsentRefused = "ConsentRefused"
	// ReasonUnknownInstance: the receiver has no record of the instance (404 on the admin API).
	ReasonUnknownInstance = "UnknownInstance"
	// ReasonNotOperator: the client certificate is not an operator's (403).
	ReasonNotOperator = "NotAnOperator"
	// ReasonInvalid: the request is malformed (400).
	ReasonInvalid = "Invalid"
	// ReasonStale: the request was computed from an outdated copy of the record (409).
	ReasonStale = "Stale"
)

var (
	namePattern      = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)
	requestIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)
	// uidPattern is a Kubernetes UID as certificates carry it (internal/pki), or none: the
	// record keeps it for years, so no text of anyone's choosing.
	uidPattern = regexp.MustCompile(`^([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)?$`)
)

// ValidName reports whether s is a Kubernetes object or namespace name (a DNS subdomain).
func ValidName(s string) bool { return len(s) <= MaxNameLen && namePattern.MatchString(s) }

// RequestKey is how the receiver keeps an erasure request's id: the first 32 hex digits of the
// SHA-256 of the instance and the id, never the id itself. The id is a ticket reference the
// customer chose and may hold words; the audit record is kept centrally for years. The same
// request finds its record again, and whoever knows the ticket can compute its key.
func RequestKey(instanceID, requestID string) string {
	sum := sha256.Sum256([]byte(instanceID + "/" + requestID))
	return hex.EncodeToString(sum[:16])
}

// ValidRequestID reports whether s may identify an erasure request.
func ValidRequestID(s string) bool { return requestIDPattern.MatchString(s) }

// Validate checks the owner's policy coordinates (the cluster is checked by whoever set it).
func (o Owner) Validate() error {
	if !ValidName(o.Namespace) || !ValidName(o.Name) {
		return errors.New("owner.namespace and owner.name must be Kubernetes names")
	}
	if len(o.UID) > 64 || !uidPattern.MatchString(o.UID) {
		return errors.New("owner.uid is at most 64 letters, digits and inner '-' (a Kubernetes UID)")
	}
	return nil
}

// Validate checks an erasure request's fields (the instance and owner are checked separately).
func (r ErasureRequest) Validate() error {
	switch {
	case !ValidRequestID(r.RequestID):
		return errors.New("requestID must be 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit")
	case r.Scope != ScopeEvents && r.Scope != ScopeAll:
		return fmt.Errorf("scope must be %s or %s", ScopeEvents, ScopeAll)
	case !ValidRequester(r.RequestedBy):
		return fmt.Errorf("requestedBy must be one of %s: a role, never a name (the audit record is kept centrally)", strings.Join(Requesters, ", "))
	case r.From != nil && r.To != nil && !r.To.After(*r.From):
		return errors.New("to must be after from")
	}
	return nil
}
