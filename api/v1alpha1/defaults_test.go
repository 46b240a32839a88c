/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1alpha1

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestRotationPeriodIsBounded: a policy stored before the CRD bounded rotationPeriod (or by an
// API server that did not check it) is rotated at most every 2160h all the same.
func TestRotationPeriodIsBounded(t *testing.T) {
	for _, c := range []struct {
		set  *metav1.Duration
		want time.Duration
	}{
		{nil, DefaultRotationPeriod},
		{&metav1.Duration{Duration: 2 * time.Hour}, 2 * time.Hour},
		{&metav1.Duration{Duration: 100000 * time.Hour}, MaxRotationPeriod},
	} {
		if got := (CredentialsSpec{RotationPeriod: c.set}).RotationPeriodOrDefault(); got != c.want {
			t.Errorf("rotationPeriod %v: %s, want %s", c.set, got, c.want)
		}
	}
}
