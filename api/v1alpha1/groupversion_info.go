/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package v1alpha1 contains the v1alpha1 API of the telemetry.sourcegraph.com group:
// the TelemetryPolicy resource that declares a managed instance's telemetry consent.
// +kubebuilder:object:generate=true
// +groupName=telemetry.sourcegraph.com
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of this API.
	GroupVersion = schema.GroupVersion{Group: "telemetry.sourcegraph.com", Version: "v1alpha1"}

	// SchemeBuilder registers this API's types with a runtime scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds this API's types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &TelemetryPolicy{}, &TelemetryPolicyList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
