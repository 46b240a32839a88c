/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package operator

import "testing"

// TestNamespaceSelectorMustRequireALabel: onboarding is a decision an admin makes per namespace
// by labelling it; a selector that would match namespaces nobody labelled is refused.
func TestNamespaceSelectorMustRequireALabel(t *testing.T) {
	for sel, ok := range map[string]bool{
		"": true, // the default: the onboarding label
		"telemetry.sourcegraph.com/onboarded=true": true,
		"fleet in (cloud,dedicated)":               true,
		"fleet":                                    true,
		"fleet=cloud,!legacy":                      true,
		"!legacy":                                  false,
		"fleet!=legacy":                            false,
		"kubernetes.io/metadata.name":              false, // every namespace has it
		"kubernetes.io/metadata.name in (a)":       false,
		"(":                                        false,
	} {
		c := Config{NamespaceSelector: sel}
		if _, err := c.Selector(); (err == nil) != ok {
			t.Errorf("--namespace-selector %q: err = %v, want accepted=%v", sel, err, ok)
		}
	}
}
