/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package server

import (
	"fmt"
	"testing"
	"time"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
)

// The remembered refusals expire, are forgotten per instance, are not remembered from a read
// that a forget may have overtaken, and stay within maxRefused: beyond it a new caller is not
// remembered until expired ones make room.
func TestRefusedSendersExpireAndStayBounded(t *testing.T) {
	var r refusedSenders
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	c := func(instance string, i int) caller {
		return caller{instance: instance, policy: consentv1.Owner{Cluster: "c", Namespace: "ns", Name: "p", UID: fmt.Sprint(i)}}
	}

	r.remember(c("a", 0), r.forgets("a"), now)
	if !r.refused(c("a", 0), now.Add(refusedFor-time.Nanosecond)) {
		t.Fatal("not remembered within refusedFor")
	}
	if r.refused(c("a", 1), now) || r.refused(c("b", 0), now) {
		t.Fatal("another policy, or another instance, is refused by a caller it is not")
	}
	if r.refused(c("a", 0), now.Add(refusedFor)) || r.n != 0 {
		t.Fatalf("still refused after refusedFor (%d remembered)", r.n)
	}

	seen := r.forgets("a")
	r.remember(c("a", 0), seen, now)
	r.remember(c("a", 1), seen, now)
	r.remember(c("a", 1), seen, now) // again: counted once
	r.forgetInstance("a")
	if r.refused(c("a", 1), now) || r.n != 0 {
		t.Fatalf("forgotten instance still refused (%d remembered)", r.n)
	}
	r.remember(c("a", 1), seen, now) // read before the forget, answered after it
	if r.refused(c("a", 1), now) {
		t.Fatal("a refusal read before a consent write that forgot refusals was remembered after it")
	}

	seenB := r.forgets("b")
	r.forgetInstance("a")
	r.remember(c("b", 1), seenB, now)
	if shardOf("a") != shardOf("b") && !r.refused(c("b", 1), now) {
		t.Fatal("a forget of another instance kept a refusal from being remembered")
	}
	r.forgetInstance("b")

	for i := range maxRefused {
		r.remember(c(fmt.Sprint(i), i), r.forgets(fmt.Sprint(i)), now)
	}
	seen = r.forgets("over")
	r.remember(c("over", 0), seen, now.Add(time.Second))
	if r.refused(c("over", 0), now.Add(time.Second)) || r.n != maxRefused {
		t.Fatalf("remembered beyond maxRefused (%d)", r.n)
	}
	r.remember(c("over", 0), seen, now.Add(refusedFor))
	if !r.refused(c("over", 0), now.Add(refusedFor)) || r.n != 1 {
		t.Fatalf("expired callers made no room: %d remembered", r.n)
	}
}
