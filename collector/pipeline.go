/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package collector exports one instance's event_logs under its effective consent tier:
// allow-listed, pseudonymized events for EventLevel, suppressed daily aggregates for
// CriticalOnly, nothing for Off. Delivery is at-least-once to an idempotent receiver, and the
// cursor advances only after the receiver acknowledged.
package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/utils/clock"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	catalogv1 "github.com/sourcegraph/telemetry-operator/api/catalog/v1"
	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/collector/aggregate"
	"github.com/sourcegraph/telemetry-operator/collector/deliver"
	"github.com/sourcegraph/telemetry-operator/collector/scrub"
	"github.com/sourcegraph/telemetry-operator/collector/source"
	"github.com/sourcegraph/telemetry-operator/collector/state"
	"github.com/sourcegraph/telemetry-operator/internal/collectorconfig"
)

// AggregateWindowDays is how far back (including today) a collector without saved progress
// starts publishing aggregates.
const AggregateWindowDays = 35

// maxSentRemembered bounds the ids remembered above the cursor (about 40 bytes each).
const maxSentRemembered = 500_000

// Pipeline runs rounds of read, filter, send and acknowledge.
type Pipeline struct {
	ConfigPath string
	Reader     *source.Reader
	Scrubber   *scrub.Scrubber
	Client     *deliver.Client
	State      state.Store
	Clock      clock.Clock
	Log        *slog.Logger
	Metrics    *Metrics
	// ProgressEvery bounds how often progress is written (default 10s).
	ProgressEvery time.Duration

	mu        sync.Mutex
	cfg       *collectorconfig.Config
	tracker   *source.Tracker
	progress  collectorconfig.Progress
	lastSaved time.Time
	// saved is the progress as last written (nil before the first write); heartbeat is how old
	// a write may grow when nothing but the success time changed (two export intervals).
	saved     *collectorconfig.Progress
	heartbeat time.Duration
	// backlog: rows beyond the last acknowledged round were waiting when it was read, or the
	// cursor has not yet reached backlogEnd, the highest id read when the rows ran out (the
	// cursor can trail by a round: transactions in flight at a read hold it back, and a batch
	// sent beside another carries the older cursor). savedBacklog is backlog as of the last
	// write. A backlog's lag can read 0 s (rows written within the second, or dated ahead of
	// this clock), so it is not told by the lag alone.
	backlog, savedBacklog bool
	backlogEnd            int64
	ready                 bool
	// prefetched is the next rounds, read while the last ones were being sent (event rounds only).
	prefetched *prefetch
	// sentCursor is the highest cursor an acknowledged batch carried: the receiver's cursor is at
	// least this. A batch sent alongside another carries an older cursor, so when the backlog
	// ends the receiver's cursor may trail; an otherwise empty round then sends the cursor alone.
	sentCursor int64
}

// DropOutsideConsent counts rows recorded while EventLevel consent was not in force.
const DropOutsideConsent = "outside_consent"

// DropConsentRefused counts events the receiver refused because its consent ledger does not
// allow them.
const DropConsentRefused = "consent_refused"

// ErrOff is returned at start when the configuration's tier is Off.
var ErrOff = errors.New("consent tier is Off: nothing may be collected, so the collector does not start")

// LoadConfig reads and validates the configuration file.
func LoadConfig(path string) (*collectorconfig.Config, error) {
	f, err := os.Open(path) //nolint:gosec // the path is the collector's own flag
	if err != nil {
		return nil, fmt.Errorf("opening the configuration: %w", err)
	}
	defer func() { _ = f.Close() }()
	return collectorconfig.Parse(f)
}

// Ready reports whether the pipeline has started and its last round reached the database.
func (p *Pipeline) Ready() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ready
}

// Progress returns a copy of the current progress.
func (p *Pipeline) Progress() collectorconfig.Progress {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.progress
}

// Cursor returns the acknowledged cursor.
func (p *Pipeline) Cursor() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.tracker.Cursor()
}

// maxSavedSuccessAhead is how far ahead of the collector's clock a saved last success may be
// dated (a clock stepped back since it was saved: the skew the ledger allows) before it is
// ignored.
const maxSavedSuccessAhead = consentv1.MaxClockSkew

// Init loads the configuration and the starting point: saved progress, else the receiver's
// acknowledged cursor, else the start of event_logs. The start point only saves reading: what
// may leave is decided by the consent timeline in the configuration, whatever the cursor says.
func (p *Pipeline) Init(ctx context.Context) error {
	cfg, err := LoadConfig(p.ConfigPath)
	if err != nil {
		return err
	}
	if cfg.Tier == v1.TierOff {
		return ErrOff
	}
	p.cfg = cfg
	p.setHeartbeat(cfg)
	if p.ProgressEvery == 0 {
		p.ProgressEvery = 10 * time.Second
	}
	saved, err := p.State.Load(ctx)
	if err != nil {
		p.Log.Warn("ignoring unreadable saved progress", "err", err)
	}
	var cursor int64
	switch {
	case saved != nil:
		p.progress = *saved
		cursor = saved.Cursor
		p.Log.Info("resuming from saved progress", "cursor", cursor)
		// A restarted collector reports its last success as it was, not as never: an alert on
		// the time since must not fire sooner because the process restarted.
		// A success dated ahead of this clock was not this collector's (the state lives where a
		// namespace editor may write it): believed, it would keep the alert quiet for as long.
		if t := saved.LastSuccessTime; t != nil && t.After(p.Clock.Now().Add(maxSavedSuccessAhead)) {
			p.Log.Warn("ignoring a saved last success dated ahead of this clock", "lastSuccess", t.UTC().Format(time.RFC3339))
			p.progress.LastSuccessTime = nil
		}
		if t := p.progress.LastSuccessTime; t != nil {
			p.Metrics.LastSuccess.Set(float64(t.Unix()))
		}
		p.Metrics.Lag.Set(float64(saved.LagSeconds))
	default:
		c, known, err := p.Client.Cursor(ctx, cfg.InstanceID)
		if err != nil {
			return fmt.Errorf("asking the receiver for the acknowledged cursor: %w", err)
		}
		if known {
			cursor = c
			p.Log.Info("resuming from the receiver's acknowledged cursor", "cursor", cursor)
		} else {
			p.Log.Info("starting from the beginning of event_logs; only events inside consent windows are read")
		}
		p.progress.Cursor = cursor
	}
	p.tracker = source.NewTracker(cursor, maxSentRemembered)
	p.sentCursor = cursor
	p.Client.OnRetry = p.retrying
	p.Client.OnEncode = func(d time.Duration) { p.Metrics.StageSeconds.WithLabelValues("encode").Observe(d.Seconds()) }
	p.Metrics.Cursor.Set(float64(cursor))
	return nil
}

// Run repeats rounds until ctx ends. A full round (a backlog) is followed at once by the next;
// otherwise the pipeline waits for the interval.
func (p *Pipeline) Run(ctx context.Context) error {
	defer p.saveProgress(true)
	for {
		more, err := p.RunOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait := p.cfg.IntervalDuration()
		if err != nil {
			p.Log.Warn("round failed", "err", err)
		} else if more {
			wait = 0
		}
		if wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-p.Clock.After(wait):
			}
		}
	}
}

// RunOnce performs one round under the tier in the configuration file as it is now. It reports
// whether more data is waiting.
func (p *Pipeline) RunOnce(ctx context.Context) (bool, error) {
	cfg, err := LoadConfig(p.ConfigPath)
	if err != nil {
		// A broken file never widens what is sent: keep the last valid configuration's tier or lower.
		p.fail(fmt.Errorf("reloading the configuration: %w", err))
		return false, err
	}
	p.cfg = cfg
	p.setHeartbeat(cfg)
	p.progress.Tier = cfg.Tier
	if cfg.Tier != v1.TierEventLevel {
		p.prefetched = nil // events read ahead under EventLevel are never used under another tier
	}
	var more bool
	switch cfg.Tier {
	case v1.TierEventLevel:
		more, err = p.eventRound(ctx)
	case v1.TierCriticalOnly:
		err = p.aggregateRound(ctx)
	default:
		p.Log.Info("consent tier is Off: not collecting")
		p.saveProgress(false)
		return false, nil
	}
	if err != nil {
		p.fail(err)
		return false, err
	}
	p.saveProgress(false)
	return more, nil
}

// guard refuses a batch whose tier is above the tier in the configuration file right now, or
// one holding an event recorded outside the configuration's EventLevel windows as they are now,
// even if the batch was built under an earlier, wider configuration. The round then fails and
// is read again under the configuration in force.
func (p *Pipeline) guard(b *batchv1.Batch) error {
	cfg, err := LoadConfig(p.ConfigPath)
	if err != nil {
		return fmt.Errorf("cannot confirm consent: %w", err)
	}
	if v1.ConsentTier(b.Tier).Rank() > cfg.Tier.Rank() {
		p.Metrics.ConsentRefusals.Inc()
		return fmt.Errorf("batch of tier %s exceeds the configured tier %s", b.Tier, cfg.Tier)
	}
	for i := range b.Events {
		if cfg.Consent.TierAt(b.Events[i].Timestamp) != consentv1.TierEventLevel {
			p.Metrics.ConsentRefusals.Inc()
			return fmt.Errorf("batch holds an event recorded outside the configured consent windows (event %s)", b.Events[i].ID)
		}
	}
	return nil
}

// filtered is one round read and filtered, ready to send.
type filtered struct {
	round   *source.Round
	events  []batchv1.Event
	ids     []int64 // every row's id, ascending
	dropped map[string]int64
	// valuesDropped counts the values the scrubber removed from the events, by field; they are
	// counted in the metrics when the round is acknowledged (a round read ahead and then read
	// again is counted once).
	valuesDropped map[string]int64
	// limit is the row limit the round was read with (the batch size may change between rounds).
	limit int
	// from is the tracker position the round was read against (cursor, high).
	from [2]int64
}

// readAndFilter reads one round against the delivery state t and filters it.
func (p *Pipeline) readAndFilter(ctx context.Context, t source.View, limit int) (*filtered, error) {
	start := p.Clock.Now()
	round, err := p.Reader.Read(ctx, t, limit, p.cfg.Consent.Windows(consentv1.TierEventLevel))
	if err != nil {
		return nil, err
	}
	p.Metrics.StageSeconds.WithLabelValues("read").Observe(p.Clock.Since(start).Seconds())
	start = p.Clock.Now()
	f := &filtered{round: round, ids: make([]int64, 0, len(round.Rows)), dropped: map[string]int64{}, limit: limit, from: [2]int64{t.Cursor(), t.High()}}
	f.events = make([]batchv1.Event, 0, len(round.Rows))
	for i := range round.Rows {
		r := &round.Rows[i]
		f.ids = append(f.ids, r.ID)
		if p.cfg.Consent.TierAt(r.Timestamp) != consentv1.TierEventLevel {
			// The query already keeps to the windows; this is the second line.
			f.dropped[DropOutsideConsent]++
			continue
		}
		e, reason := p.Scrubber.Event(r)
		if reason != "" {
			f.dropped[reason]++
			continue
		}
		f.events = append(f.events, e)
	}
	p.Metrics.StageSeconds.WithLabelValues("filter").Observe(p.Clock.Since(start).Seconds())
	f.valuesDropped = p.takeValuesDropped()
	return f, nil
}

// takeValuesDropped takes the scrubber's counts of values the catalog does not list. A round
// read ahead filters on another goroutine, never at the same time as this one.
func (p *Pipeline) takeValuesDropped() map[string]int64 {
	out := make(map[string]int64, len(p.Scrubber.ValuesDropped)+1)
	for field, n := range p.Scrubber.ValuesDropped {
		out[field] = n
		delete(p.Scrubber.ValuesDropped, field)
	}
	if n := p.Scrubber.PropertiesDropped; n > 0 {
		out[catalogv1.NotListedProperty] = n
		p.Scrubber.PropertiesDropped = 0
	}
	return out
}

// prefetch is the next rounds (one, or two in a backlog), read and filtered while the current
// ones are being sent.
type prefetch struct {
	done chan struct{}
	fs   []*filtered
	err  error
}

// startPrefetch reads the round after ahead and, when that one is full (the backlog goes on),
// the round after it, so the next eventRound can send two batches at once without first waiting
// for a read.
func (p *Pipeline) startPrefetch(ctx context.Context, ahead *source.Ahead, limit int) *prefetch {
	pf := &prefetch{done: make(chan struct{})}
	go func() {
		defer close(pf.done)
		f, err := p.readAndFilter(ctx, ahead, limit)
		if err != nil {
			pf.err = err
			return
		}
		pf.fs = []*filtered{f}
		if !f.full() {
			return
		}
		r := f.round
		if f2, err := p.readAndFilter(ctx, ahead.Ahead(r.Snapshot, f.ids, r.NewHigh, r.Complete), limit); err == nil {
			pf.fs = append(pf.fs, f2)
		}
	}()
	return pf
}

// takePrefetched returns the rounds read ahead, if there are any and the first was read against
// the tracker's present position; otherwise nil.
func (p *Pipeline) takePrefetched() []*filtered {
	pf := p.prefetched
	p.prefetched = nil
	if pf == nil {
		return nil
	}
	<-pf.done
	if pf.err != nil || len(pf.fs) == 0 || pf.fs[0].from != [2]int64{p.tracker.Cursor(), p.tracker.High()} {
		return nil
	}
	return pf.fs
}

// eventRound sends one round of events, or two during a backlog. In a backlog the next rounds
// are read (against the state this round's acknowledgements will leave) while this one is sent,
// and when the second is full too it is sent alongside, with the cursor from before both (it may
// be stored first, so it must not claim this round's ids), while the two rounds after are read.
// Rounds are acknowledged in order, the tracker changes only after every read ahead has
// finished, and nothing read ahead is used unless what it was read against was acknowledged.
func (p *Pipeline) eventRound(ctx context.Context) (bool, error) {
	limit := p.cfg.BatchSize
	var f *filtered
	fs := p.takePrefetched()
	if len(fs) > 0 {
		f = fs[0]
	} else {
		var err error
		if f, err = p.readAndFilter(ctx, p.tracker, limit); err != nil {
			p.setReady(false)
			return false, err
		}
	}
	p.setReady(true)
	round := f.round
	newCursor := p.tracker.Plan(round.Snapshot, round.NewHigh, round.Complete)
	if len(f.events) == 0 && newCursor == p.tracker.Cursor() && p.sentCursor >= newCursor {
		// A full round of rows passed over, its cursor held back (a transaction in flight): the
		// next round follows at once, and is no success yet. Otherwise the instance is idle.
		if !f.full() {
			if err := p.confirmReceiver(ctx); err != nil {
				return false, err
			}
		}
		p.acknowledge(f, nil, deliver.Outcome{})
		return f.full(), nil
	}
	b := p.batch(f, newCursor)
	if !f.full() {
		out, err := p.send(ctx, b)
		if err != nil {
			return false, err
		}
		p.acknowledge(f, b, out)
		return false, nil
	}

	ahead := p.tracker.Ahead(round.Snapshot, f.ids, round.NewHigh, round.Complete)
	first := p.sendAsync(ctx, b)
	var f2 *filtered
	var readErr error
	if len(fs) > 1 && fs[1].from == [2]int64{ahead.Cursor(), ahead.High()} {
		f2 = fs[1]
	} else {
		f2, readErr = p.readAndFilter(ctx, ahead, limit)
	}
	var second *inflight
	var b2 *batchv1.Batch
	var next *prefetch
	if readErr == nil && f2.full() {
		if len(f2.events) > 0 {
			b2 = p.batch(f2, p.tracker.Cursor())
			second = p.sendAsync(ctx, b2)
		}
		r2 := f2.round
		next = p.startPrefetch(ctx, ahead.Ahead(r2.Snapshot, f2.ids, r2.NewHigh, r2.Complete), limit)
	}
	<-first.done
	if second != nil {
		<-second.done
	}
	if next != nil {
		<-next.done // reads ahead use the tracker: let them finish before anything changes it
	}
	if first.err != nil {
		return false, first.err
	}
	p.acknowledge(f, b, first.out)
	switch {
	case readErr != nil:
		p.setReady(false)
		return false, readErr
	case !f2.full():
		// The end of the backlog: send it on its own next round, with its own cursor.
		p.prefetched = &prefetch{done: closed, fs: []*filtered{f2}}
		return true, nil
	case second != nil && second.err != nil:
		return false, second.err
	}
	if second != nil {
		p.acknowledge(f2, b2, second.out)
	} else {
		p.acknowledge(f2, nil, deliver.Outcome{})
	}
	p.prefetched = next
	return true, nil
}

// closed is a closed channel, for a prefetch that is already complete.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// full reports whether the round filled its limit: more rows are probably waiting.
func (f *filtered) full() bool { return len(f.round.Rows) >= f.limit }

// batch builds the events batch for f carrying cursor.
func (p *Pipeline) batch(f *filtered, cursor int64) *batchv1.Batch {
	b := &batchv1.Batch{InstanceID: p.cfg.InstanceID, Kind: batchv1.KindEvents, Tier: string(v1.TierEventLevel),
		AllowListVersion: catalogv1.CurrentVersion, Cursor: cursor}
	if len(f.events) > 0 {
		b.Events = f.events
		b.BatchID = fmt.Sprintf("%s-e-%s-%s-%d", p.cfg.InstanceID, b.Events[0].ID, b.Events[len(b.Events)-1].ID, len(b.Events))
	} else {
		b.BatchID = fmt.Sprintf("%s-c-%d", p.cfg.InstanceID, cursor)
	}
	return b
}

// acknowledge records f as delivered (the outcome of its batch, if one was sent) and advances
// the tracker.
func (p *Pipeline) acknowledge(f *filtered, b *batchv1.Batch, out deliver.Outcome) {
	sent := b != nil
	round := f.round
	p.Metrics.EventsRead.Add(float64(len(round.Rows)))
	for field, n := range f.valuesDropped {
		p.Metrics.ValuesDropped.WithLabelValues(field).Add(float64(n))
	}
	var dropped int64
	for reason, n := range f.dropped {
		p.Metrics.EventsDropped.WithLabelValues(reason).Add(float64(n))
		dropped += n
	}
	if sent {
		p.Metrics.Batches.WithLabelValues("acknowledged").Inc()
		p.Metrics.Quarantined.Add(float64(len(out.Quarantined)))
		p.sentCursor = max(p.sentCursor, b.Cursor)
		if out.Refused > 0 {
			p.Metrics.EventsDropped.WithLabelValues(DropConsentRefused).Add(float64(out.Refused))
			dropped += int64(out.Refused)
		}
	}
	p.tracker.Acknowledge(round.Snapshot, f.ids, round.NewHigh, round.Complete)
	p.recordSuccess(int64(out.Accepted+out.Duplicates), dropped+int64(len(out.Quarantined)), round, sent)
}

// inflight is a batch being sent.
type inflight struct {
	done chan struct{}
	out  deliver.Outcome
	err  error
}

func (p *Pipeline) sendAsync(ctx context.Context, b *batchv1.Batch) *inflight {
	s := &inflight{done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.out, s.err = p.send(ctx, b)
	}()
	return s
}

// send delivers b and, when b was split around quarantined events, records its cursor with a
// batch of its own once every half is acknowledged (halves of a split carry no cursor).
func (p *Pipeline) send(ctx context.Context, b *batchv1.Batch) (deliver.Outcome, error) {
	start := p.Clock.Now()
	out, err := p.Client.Send(ctx, b, p.guard)
	p.Metrics.StageSeconds.WithLabelValues("send").Observe(p.Clock.Since(start).Seconds())
	if err == nil && len(out.Quarantined) > 0 && len(b.Events) > 0 {
		cursorOnly := &batchv1.Batch{InstanceID: p.cfg.InstanceID, Kind: batchv1.KindEvents, Tier: b.Tier,
			AllowListVersion: catalogv1.CurrentVersion, BatchID: fmt.Sprintf("%s-c-%d", p.cfg.InstanceID, b.Cursor), Cursor: b.Cursor}
		_, err = p.Client.Send(ctx, cursorOnly, p.guard)
	}
	if err != nil {
		p.Metrics.Batches.WithLabelValues("failed").Inc()
	}
	return out, err
}

// aggregateRound publishes the aggregates of each closed UTC day once: a day is sent when it
// ended at least AggregateGrace ago (so rows committed late still count), whole in one batch, and
// never again once acknowledged (two publications of a day could be differenced). Only events
// recorded while the tier in force was exactly CriticalOnly are counted (an Off period never
// is), and only days during all of which it was are sent (consentv1.AggregateDays). A collector
// without saved progress starts AggregateWindowDays back; the receiver keeps the first
// publication of a day and absorbs the rest.
func (p *Pipeline) aggregateRound(ctx context.Context) error {
	pending, err := p.pendingAggregates(ctx)
	if err != nil {
		p.setReady(false)
		return err
	}
	p.setReady(true)
	if len(pending.batches) == 0 {
		if err := p.confirmReceiver(ctx); err != nil {
			return err
		}
	}
	if pending.last.IsZero() {
		p.aggregatesSent(0, 0, "")
		return nil
	}
	p.Metrics.EventsDropped.WithLabelValues("suppressed").Add(float64(pending.withheld))
	var acked int64
	withheld := pending.withheld
	for _, b := range pending.batches {
		out, err := p.Client.Send(ctx, b, p.guard)
		if err != nil {
			p.Metrics.Batches.WithLabelValues("failed").Inc()
			return err
		}
		p.Metrics.Batches.WithLabelValues("acknowledged").Inc()
		acked += int64(out.Accepted + out.Duplicates)
		withheld += out.Refused
		p.aggregatesSent(0, 0, b.Aggregates[len(b.Aggregates)-1].Day)
	}
	p.aggregatesSent(acked, int64(withheld), pending.last.Format(time.DateOnly))
	return nil
}

// pendingAggregateDays is what the next aggregate round publishes.
type pendingAggregateDays struct {
	batches  []*batchv1.Batch
	withheld int       // cells suppressed
	last     time.Time // the last closed day covered; zero when no day is due
}

// pendingAggregates computes the closed days not yet published, suppressed and packed into
// batches. It sends nothing and changes no progress.
func (p *Pipeline) pendingAggregates(ctx context.Context) (pendingAggregateDays, error) {
	now := p.Clock.Now().UTC()
	last := now.Add(-AggregateGrace).Truncate(24*time.Hour).AddDate(0, 0, -1)
	from := now.Truncate(24*time.Hour).AddDate(0, 0, -(AggregateWindowDays - 1))
	if through, err := time.Parse(time.DateOnly, p.Progress().AggregatesThrough); err == nil && !through.Before(from) {
		from = through.AddDate(0, 0, 1)
	}
	periods := p.cfg.Consent.AggregateWindows()
	if len(periods) > 0 {
		if first := periods[0].Start.UTC().Truncate(24 * time.Hour); first.After(from) {
			from = first
		}
	}
	// A day this configuration lets publish that the receiver's record (what it has recorded
	// of the timeline) does not yet: a lowering from EventLevel enforced here first. Its cells
	// would be refused, and the day never sent again; it waits until the lowering is recorded.
	days, recorded := p.cfg.Consent.AggregateDays(), p.cfg.Consent.Recorded().AggregateDays()
	for d := from; !d.After(last); d = d.AddDate(0, 0, 1) {
		if days.Allow(d) && !recorded.Allow(d) {
			last = d.AddDate(0, 0, -1)
			break
		}
	}
	if len(periods) == 0 || from.After(last) {
		return pendingAggregateDays{}, nil
	}
	cells, err := aggregate.Compute(ctx, p.Reader.Pool(), from, last, periods)
	if err != nil {
		return pendingAggregateDays{}, err
	}
	// A day that was CriticalOnly only in part is not published (the receiver refuses it too).
	cells = slices.DeleteFunc(cells, func(c batchv1.Aggregate) bool {
		d, err := time.Parse(time.DateOnly, c.Day)
		return err != nil || !days.Allow(d)
	})
	kept, suppressed := aggregate.Suppress(cells)
	return pendingAggregateDays{batches: p.aggregateBatches(kept), withheld: suppressed, last: last}, nil
}

// AggregateGrace is how long after a UTC day ends its aggregates are published.
const AggregateGrace = 2 * time.Hour

// aggregateBatches packs whole days into batches (a day's cells are never split: the receiver
// keeps a day's first publication whole).
func (p *Pipeline) aggregateBatches(cells []batchv1.Aggregate) []*batchv1.Batch {
	var out []*batchv1.Batch
	for start := 0; start < len(cells); {
		end, days := start, 0
		for end < len(cells) {
			dayEnd := end
			for dayEnd < len(cells) && cells[dayEnd].Day == cells[end].Day {
				dayEnd++
			}
			if (dayEnd-start > batchv1.MaxAggregatesPerBatch || days == batchv1.MaxAggregateDaysPerBatch) && end > start {
				break
			}
			end, days = dayEnd, days+1
		}
		first, lastDay := cells[start].Day, cells[end-1].Day
		out = append(out, &batchv1.Batch{InstanceID: p.cfg.InstanceID, Kind: batchv1.KindAggregates, Tier: string(v1.TierCriticalOnly),
			AllowListVersion: catalogv1.CurrentVersion, Aggregates: cells[start:end],
			BatchID: fmt.Sprintf("%s-a-%s-%s", p.cfg.InstanceID, strings.ReplaceAll(first, "-", ""), strings.ReplaceAll(lastDay, "-", ""))})
		start = end
	}
	return out
}

// aggregatesSent records acknowledged aggregates: the cells, the cells withheld, and the last
// day published (when through is set).
func (p *Pipeline) aggregatesSent(acked, withheld int64, through string) {
	p.mu.Lock()
	if through != "" && through > p.progress.AggregatesThrough {
		p.progress.AggregatesThrough = through
	}
	p.succeededLocked()
	p.progress.EventsExported += acked
	p.progress.EventsDropped += withheld
	p.progress.LagSeconds = 0
	p.backlog, p.backlogEnd = false, 0
	p.mu.Unlock()
	p.Metrics.EventsExported.Add(float64(acked))
}

// succeededLocked stamps a success: the receiver acknowledged a batch, or answered for this
// instance (confirmReceiver). Only these clear lastError: a round that has not heard from the
// receiver leaves its last error standing. p.mu must be held.
func (p *Pipeline) succeededLocked() {
	now := p.Clock.Now().UTC()
	p.progress.LastSuccessTime = &now
	p.progress.LastError = ""
	p.Metrics.LastSuccess.Set(float64(now.Unix()))
}

func (p *Pipeline) recordSuccess(exported, dropped int64, round *source.Round, sent bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.Clock.Now().UTC()
	if sent {
		// A round that sends nothing is a success once the receiver answers (confirmReceiver).
		p.succeededLocked()
	}
	p.progress.Cursor = p.tracker.Cursor()
	p.progress.EventsExported += exported
	p.progress.EventsDropped += dropped
	lag := int64(0)
	more := round.MaxID > p.tracker.High()
	switch {
	case more:
		p.backlog, p.backlogEnd = true, 0
	case p.backlog:
		if p.backlogEnd == 0 {
			p.backlogEnd = p.tracker.High()
		}
		if p.tracker.Cursor() >= p.backlogEnd {
			p.backlog, p.backlogEnd = false, 0
		}
	}
	if more && !round.NewestTimestamp.IsZero() {
		lag = int64(now.Sub(round.NewestTimestamp).Seconds())
		if n := len(round.Rows); n > 0 {
			lag = int64(now.Sub(round.Rows[n-1].Timestamp).Seconds())
		}
	}
	p.progress.LagSeconds = max(lag, 0)
	p.Metrics.EventsExported.Add(float64(exported))
	p.Metrics.Cursor.Set(float64(p.progress.Cursor))
	p.Metrics.Lag.Set(float64(p.progress.LagSeconds))
}

// confirmReceiver makes a round that sends nothing a success, but only once the receiver
// answers for this instance: it is reachable, accepts the client certificate and finds the
// instance's record. Counted a success without asking, an idle instance (and a CriticalOnly one
// between two days' publications) reported success through a receiver outage, or with
// credentials the receiver refuses: Exporting=True and a fresh last-success gauge, which is
// what the export-stopped alert reads. The instance's cursor is the cheapest such answer (two
// reads by primary key); the request is retried like a batch, its errors shown as lastError.
func (p *Pipeline) confirmReceiver(ctx context.Context) error {
	if _, _, err := p.Client.Cursor(ctx, p.cfg.InstanceID); err != nil {
		return fmt.Errorf("confirming that the receiver answers for this instance: %w", err)
	}
	p.mu.Lock()
	p.succeededLocked()
	p.mu.Unlock()
	return nil
}

// retrying records a retried delivery attempt while it happens: the metric, and the error in
// the progress report (at the usual bounded rate), so status.export.lastError shows an outage.
func (p *Pipeline) retrying(reason string, err error) {
	p.Metrics.Retries.Inc()
	p.mu.Lock()
	p.progress.LastError = truncateError(fmt.Sprintf("delivery retrying (%s): %v", reason, err))
	p.mu.Unlock()
	p.saveProgress(false)
}

func truncateError(msg string) string {
	if len(msg) > 512 {
		return msg[:512]
	}
	return msg
}

func (p *Pipeline) fail(err error) {
	p.mu.Lock()
	p.progress.LastError = truncateError(err.Error())
	p.mu.Unlock()
	p.saveProgress(false)
}

func (p *Pipeline) setReady(ok bool) {
	p.mu.Lock()
	p.ready = ok
	p.mu.Unlock()
}

// saveProgress writes progress when it is due (see progressDue), or now when force is set.
func (p *Pipeline) saveProgress(force bool) {
	p.mu.Lock()
	now := p.Clock.Now()
	snapshot := p.progress
	if !force && !p.progressDue(snapshot, now) {
		p.mu.Unlock()
		return
	}
	p.lastSaved = now
	p.saved = &snapshot
	p.savedBacklog = p.backlog
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.State.Save(ctx, &snapshot); err != nil {
		p.Log.Warn("saving progress failed", "err", err)
		// Not written: due again at the next round (after ProgressEvery), not a heartbeat later;
		// a lost heartbeat would let Exporting lapse on a healthy collector.
		p.mu.Lock()
		if p.saved == &snapshot {
			p.saved = nil
		}
		p.mu.Unlock()
	}
}

// progressDue says whether progress is worth writing (p.mu held). Every write to the state
// object is also a status update by the operator, so a collector that is idle, or keeping up
// with a steady trickle, must not write every round: the per-round figures (cursor, counts,
// success time) are in its metrics every round and go to the state object once the last write
// is a heartbeat old (two export intervals, well inside the three intervals and a minute after
// which the Exporting condition turns False). What a user must see soon is written at the round
// it changes in (at most every ProgressEvery: a change inside that waits for the next round): an
// error or its end, the tier, aggregates published, the first success, and a backlog's progress
// (rows waiting beyond the round, or lag above zero) and its end. A write that fails is due
// again at the next round. A restart resumes from the saved cursor; what it re-reads is re-sent
// and the receiver de-duplicates it.
func (p *Pipeline) progressDue(cur collectorconfig.Progress, now time.Time) bool {
	if now.Sub(p.lastSaved) < p.ProgressEvery {
		return false
	}
	if p.saved == nil || (cur.LastSuccessTime == nil) != (p.saved.LastSuccessTime == nil) || cur.LagSeconds != 0 || p.backlog || p.savedBacklog {
		return true
	}
	a, b := cur, *p.saved
	a.LastSuccessTime, b.LastSuccessTime = nil, nil
	a.Cursor, b.Cursor = 0, 0
	a.EventsExported, b.EventsExported = 0, 0
	a.EventsDropped, b.EventsDropped = 0, 0
	return a != b || now.Sub(p.lastSaved) >= p.heartbeat
}

func (p *Pipeline) setHeartbeat(cfg *collectorconfig.Config) {
	p.mu.Lock()
	p.heartbeat = 2 * cfg.IntervalDuration()
	p.mu.Unlock()
	p.Metrics.Interval.Set(cfg.IntervalDuration().Seconds())
}

// FormatID is the instance-scoped event id for an event_logs id.
func FormatID(id int64) string { return strconv.FormatInt(id, 10) }
