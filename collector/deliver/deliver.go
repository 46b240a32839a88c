/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package deliver sends batches to the receiver over mutual TLS with at-least-once semantics:
// compressed bodies, an idempotency key per batch, exponential backoff with full jitter on
// network errors and 429/502/503/504 (honouring Retry-After), and on a 400 naming an item, or a
// 413, a binary split that isolates and quarantines the offending event so the rest goes
// through. A 400 that names no item fails the attempt without dropping anything.
package deliver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
)

// ErrConsent is returned when the consent guard refuses a batch: it is never sent.
var ErrConsent = errors.New("consent guard refused the batch")

// Outcome is what the receiver acknowledged for one Send.
type Outcome struct {
	Accepted, Duplicates int
	// Refused counts items the receiver would not store because its consent ledger does not
	// allow them; they may never leave, so they are passed over like delivered ones.
	Refused int
	// Quarantined lists the ids of events the receiver refused individually.
	Quarantined []string
	// Retries counts retried attempts.
	Retries int
}

// Client talks to one receiver.
type Client struct {
	base string
	http *http.Client
	log  *slog.Logger
	enc  *zstd.Encoder
	// Sleep waits between retries; tests replace it to run in milliseconds.
	Sleep func(ctx context.Context, d time.Duration) error
	// BaseBackoff and MaxBackoff bound the exponential backoff.
	BaseBackoff, MaxBackoff time.Duration
	// OnRetry observes each retried attempt as it happens, with the reason (network or a status
	// code) and the error, so a long outage is visible before the batch finally goes through.
	OnRetry func(reason string, err error)
	// OnEncode observes the time spent encoding and compressing each request body.
	OnEncode func(d time.Duration)
	// MaxBodyBytes bounds one request body as sent; a larger batch is split before sending.
	MaxBodyBytes int
}

// New returns a client for the receiver at base, using transport for mutual TLS.
func New(base string, transport http.RoundTripper, log *slog.Logger) *Client {
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	return &Client{
		base: strings.TrimRight(base, "/"), http: &http.Client{Transport: transport, Timeout: 60 * time.Second},
		log: log, enc: enc, Sleep: sleepCtx, BaseBackoff: 500 * time.Millisecond, MaxBackoff: time.Minute,
		MaxBodyBytes: 4 << 20, // half the receiver's default limit
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Cursor asks the receiver for instance's acknowledged cursor (retrying transient failures).
// The receiver answers for the instance its client certificate names; an answer for another
// instance (credentials issued for another) is an error, never a cursor to start from.
func (c *Client) Cursor(ctx context.Context, instance string) (int64, bool, error) {
	var out batchv1.CursorResponse
	err := c.retry(ctx, nil, func() (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+batchv1.PathCursor, nil)
		if err != nil {
			return 0, err
		}
		resp, err := c.http.Do(req)
		if err != nil {
			return 0, err
		}
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if resp.StatusCode != http.StatusOK {
			return resp.StatusCode, statusError(resp, body)
		}
		if err := json.Unmarshal(body, &out); err != nil {
			return resp.StatusCode, err // a body cut short: retried
		}
		if out.InstanceID != instance {
			return resp.StatusCode, &permanentError{fmt.Sprintf("receiver answered for instance %q, not %q: the client certificate was issued for another instance",
				truncate(out.InstanceID, 64), instance)}
		}
		return resp.StatusCode, nil
	}, new(int))
	return out.Cursor, out.Known, err
}

// Send delivers b. guard is called before every attempt; if it fails the batch is not sent.
// Events the receiver rejects one by one (400/413) are quarantined; everything else is retried
// until the receiver acknowledges it or ctx ends.
func (c *Client) Send(ctx context.Context, b *batchv1.Batch, guard func(*batchv1.Batch) error) (Outcome, error) {
	var out Outcome
	err := c.send(ctx, b, guard, &out)
	return out, err
}

func (c *Client) send(ctx context.Context, b *batchv1.Batch, guard func(*batchv1.Batch) error, out *Outcome) error {
	var resp batchv1.Response
	var rejection *rejectedError
	err := c.retry(ctx, func() error { return guard(b) }, func() (int, error) {
		return c.post(ctx, b, &resp)
	}, &out.Retries)
	if err == nil {
		out.Accepted += resp.Accepted
		out.Duplicates += resp.Duplicates
		out.Refused += resp.Refused
		return nil
	}
	if !errors.As(err, &rejection) {
		return err
	}
	items := len(b.Events)
	days := aggregateDays(b.Aggregates)
	if len(b.Events) == 0 {
		items = len(days) // a day is published once and whole: the smallest part to isolate
	}
	if items <= 1 {
		if items == 1 {
			var id string
			if len(b.Events) == 1 {
				id = b.Events[0].ID
			} else {
				id = "aggregates of " + days[0]
			}
			// Log the id and the reason, never the content.
			c.log.Warn("receiver refused an item; quarantined", "event", id, "status", rejection.status, "reason", rejection.reason)
			out.Quarantined = append(out.Quarantined, id)
			return nil
		}
		return fmt.Errorf("the receiver refused an empty batch: %w", err)
	}
	// Split to isolate the offending item. Halves carry no cursor: the caller records the cursor
	// only once every half is acknowledged.
	left, right := split(b)
	if err := c.send(ctx, left, guard, out); err != nil {
		return err
	}
	return c.send(ctx, right, guard, out)
}

func split(b *batchv1.Batch) (*batchv1.Batch, *batchv1.Batch) {
	l, r := *b, *b
	l.Cursor, r.Cursor = 0, 0
	if n := len(b.Events); n > 0 {
		l.Events, r.Events = b.Events[:n/2], b.Events[n/2:]
	} else {
		// Never through a day: the receiver keeps the first publication of a day, so the
		// cells of a day sent in two halves would be cut to the first.
		days := aggregateDays(b.Aggregates)
		left := make(map[string]bool, len(days)/2)
		for _, d := range days[:len(days)/2] {
			left[d] = true
		}
		l.Aggregates, r.Aggregates = nil, nil
		for _, a := range b.Aggregates {
			if left[a.Day] {
				l.Aggregates = append(l.Aggregates, a)
			} else {
				r.Aggregates = append(r.Aggregates, a)
			}
		}
	}
	l.BatchID = truncateID(b.BatchID + ".l")
	r.BatchID = truncateID(b.BatchID + ".r")
	return &l, &r
}

// aggregateDays returns the distinct days of cells, in the order they first appear.
func aggregateDays(cells []batchv1.Aggregate) []string {
	var days []string
	seen := map[string]bool{}
	for _, a := range cells {
		if !seen[a.Day] {
			seen[a.Day] = true
			days = append(days, a.Day)
		}
	}
	return days
}

func truncateID(id string) string {
	if len(id) > 128 {
		return id[len(id)-128:]
	}
	return id
}

type rejectedError struct {
	status int
	reason string
}

func (e *rejectedError) Error() string {
	return fmt.Sprintf("receiver rejected the batch: %d %s", e.status, e.reason)
}

type retryableError struct {
	status     int
	retryAfter time.Duration
	msg        string
}

func (e *retryableError) Error() string { return e.msg }

func statusError(resp *http.Response, body []byte) error {
	var er batchv1.ErrorResponse
	_ = json.Unmarshal(body, &er)
	switch resp.StatusCode {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout, http.StatusInternalServerError:
		return &retryableError{status: resp.StatusCode, retryAfter: retryAfter(resp.Header.Get("Retry-After")),
			msg: fmt.Sprintf("receiver answered %d %s", resp.StatusCode, er.Reason)}
	case http.StatusRequestEntityTooLarge:
		return &rejectedError{status: resp.StatusCode, reason: er.Reason}
	case http.StatusBadRequest:
		if er.EventIndex != nil {
			// One item is to blame: split to isolate and quarantine it.
			return &rejectedError{status: resp.StatusCode, reason: er.Reason}
		}
		// A 400 that names no item (a proxy in the way, a version mismatch) is no reason to drop
		// data: the round fails, nothing advances, and it is tried again.
		return &permanentError{fmt.Sprintf("receiver answered 400 %s without naming an item: %s; nothing is dropped, the round is retried",
			er.Reason, truncate(er.Error, 200))}
	default:
		return &permanentError{fmt.Sprintf("receiver answered %d %s: %s", resp.StatusCode, er.Reason, truncate(er.Error, 200))}
	}
}

// permanentError is an answer that retrying cannot fix (401, 403 for another instance, 404, 415).
type permanentError struct{ msg string }

func (e *permanentError) Error() string { return e.msg }

func (c *Client) post(ctx context.Context, b *batchv1.Batch, out *batchv1.Response) (int, error) {
	start := time.Now()
	body, err := batchv1.Encode(b)
	if err != nil {
		return 0, err
	}
	compressed := c.enc.EncodeAll(body, nil) // safe for concurrent use
	if c.OnEncode != nil {
		c.OnEncode(time.Since(start))
	}
	if c.MaxBodyBytes > 0 && len(compressed) > c.MaxBodyBytes {
		// Bounded by bytes as well as by count: split without bothering the receiver.
		return 0, &rejectedError{status: http.StatusRequestEntityTooLarge, reason: "BatchTooLargeToSend"}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+batchv1.PathBatches, bytes.NewReader(compressed))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", batchv1.ContentType)
	req.Header.Set("Content-Encoding", batchv1.EncodingZstd)
	req.Header.Set(batchv1.HeaderIdempotencyKey, b.BatchID)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusOK {
		return resp.StatusCode, json.Unmarshal(data, out)
	}
	return resp.StatusCode, statusError(resp, data)
}

// retry runs attempt until it succeeds, fails permanently, or ctx ends. Network errors and
// retryable statuses back off exponentially with full jitter, at least Retry-After.
func (c *Client) retry(ctx context.Context, guard func() error, attempt func() (int, error), retries *int) error {
	backoff := c.BaseBackoff
	for {
		if guard != nil {
			if err := guard(); err != nil {
				return fmt.Errorf("%w: %w", ErrConsent, err)
			}
		}
		_, err := attempt()
		if err == nil {
			return nil
		}
		var rej *rejectedError
		if errors.As(err, &rej) {
			return err
		}
		var rt *retryableError
		wait := time.Duration(rand.Int64N(int64(backoff) + 1)) //nolint:gosec // jitter, not security
		reason := "network"
		switch {
		case errors.As(err, &rt):
			reason = strconv.Itoa(rt.status)
			if rt.retryAfter > wait {
				wait = rt.retryAfter
			}
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.As(err, new(*permanentError)):
			return err
		}
		*retries++
		if c.OnRetry != nil {
			c.OnRetry(reason, err)
		}
		c.log.Info("retrying delivery", "reason", reason, "wait", wait.String(), "err", truncate(err.Error(), 200))
		if err := c.Sleep(ctx, wait); err != nil {
			return err
		}
		backoff *= 2
		if backoff > c.MaxBackoff {
			backoff = c.MaxBackoff
		}
	}
}

func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return min(time.Duration(s)*time.Second, 10*time.Minute)
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(time.Until(t), 0), 10*time.Minute)
	}
	return 0
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// MaxExportedBytes bounds the body of an exported listing the client accepts.
const MaxExportedBytes = 64 << 20

// Exported asks the receiver what it stored from this instance recently, at most limit
// deliveries, and returns the JSON answer as the receiver wrote it. It is not retried: it serves
// a person looking, who can run it again.
func (c *Client) Exported(ctx context.Context, limit int) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s%s?limit=%d", c.base, batchv1.PathExported, limit), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxExportedBytes+1))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, statusError(resp, body)
	}
	if len(body) > MaxExportedBytes {
		return nil, fmt.Errorf("the receiver's answer exceeds %d bytes", MaxExportedBytes)
	}
	if !json.Valid(body) {
		return nil, errors.New("the receiver's answer is not JSON")
	}
	return body, nil
}
