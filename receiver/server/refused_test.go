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

// The remembered refusals expire, are forgotten per instance, and stay within maxRefused:
// beyond it a new pair is not remembered until expired ones make room.
func TestRefusedSendersExpireAndStayBounded(t *testing.T) {
	var r refusedSenders
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	p := func(i int) consentv1.Owner { return consentv1.Owner{Cluster: "c", Namespace: "ns", Name: "p", UID: fmt.Sprint(i)} }

	r.remember("a", p(0), now)
	if !r.refused("a", p(0), now.Add(refusedFor-time.Nanosecond)) {
		t.Fatal("not remembered within refusedFor")
	}
	if r.refused("a", p(1), now) || r.refused("b", p(0), now) {
		t.Fatal("another policy, or another instance, is refused by a pair it is not")
	}
	if r.refused("a", p(0), now.Add(refusedFor)) || r.n != 0 {
		t.Fatalf("still refused after refusedFor (%d remembered)", r.n)
	}

	r.remember("a", p(0), now)
	r.remember("a", p(1), now)
	r.remember("a", p(1), now) // again: counted once
	r.forgetInstance("a")
	if r.refused("a", p(1), now) || r.n != 0 {
		t.Fatalf("forgotten instance still refused (%d remembered)", r.n)
	}

	for i := range maxRefused {
		r.remember(fmt.Sprint(i), p(i), now)
	}
	r.remember("over", p(0), now.Add(time.Second))
	if r.refused("over", p(0), now.Add(time.Second)) || r.n != maxRefused {
		t.Fatalf("remembered beyond maxRefused (%d)", r.n)
	}
	r.remember("over", p(0), now.Add(refusedFor))
	if !r.refused("over", p(0), now.Add(refusedFor)) || r.n != 1 {
		t.Fatalf("expired pairs made no room: %d remembered", r.n)
	}
}
