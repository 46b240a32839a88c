/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"testing"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

// TestRequesterNeverSendsFreeText: a role the CRD admits is sent as it is; anything else (free
// text the API server kept from before requesters were a closed set) never leaves the cluster,
// and the request names no role instead, which the receiver accepts.
func TestRequesterNeverSendsFreeText(t *testing.T) {
	for in, want := range map[v1.ErasureRequester]string{
		v1.ErasureRequesterCustomerAdmin:   consentv1.RequesterCustomerAdmin,
		v1.ErasureRequesterDataSubject:     consentv1.RequesterDataSubject,
		v1.ErasureRequesterSupport:         consentv1.RequesterSupport,
		v1.ErasureRequesterLegal:           consentv1.RequesterLegal,
		v1.ErasureRequesterContractEnd:     consentv1.RequesterContractEnd,
		"acme admin, support ticket 4711":  consentv1.RequesterUnspecified,
		"Jane Doe <jane.doe@acme.example>": consentv1.RequesterUnspecified,
		"support":                          consentv1.RequesterUnspecified,
		"":                                 consentv1.RequesterUnspecified,
	} {
		got := requester(in)
		if got != want {
			t.Errorf("requester(%q) = %q, want %q", in, got, want)
		}
		req := consentv1.ErasureRequest{RequestID: "DSR-1", Scope: consentv1.ScopeEvents, RequestedBy: got}
		if err := req.Validate(); err != nil {
			t.Errorf("requester(%q): the receiver refuses what is sent: %v", in, err)
		}
	}
	// Every role the CRD admits is one the receiver knows.
	for _, role := range []v1.ErasureRequester{v1.ErasureRequesterCustomerAdmin, v1.ErasureRequesterDataSubject,
		v1.ErasureRequesterSupport, v1.ErasureRequesterLegal, v1.ErasureRequesterContractEnd} {
		if !consentv1.ValidRequester(string(role)) || role == consentv1.RequesterUnspecified {
			t.Errorf("role %s is not one the receiver knows", role)
		}
	}
}
