/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1

import (
	"fmt"
	"slices"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
)

// CheckEvent reports, for the receiver, what of e the catalog does not list: "" when
// everything is listed, otherwise the field at fault (never its value, which may be what must not
// leave). Missing optional fields are fine; present ones must be listed.
func (c *Catalog) CheckEvent(e *batchv1.Event) string {
	entry, ok := c.Events[e.Name]
	switch {
	case !ok:
		return "event name"
	case e.Source != "" && !c.Source(e.Source):
		return "source"
	case e.Client != "" && !c.Client(e.Client):
		return "client"
	case e.ProductVersion != "" && !c.ProductVersion(e.ProductVersion):
		return "version"
	}
	for k := range e.FeatureFlags {
		if !c.Flag(k) {
			return "feature flag"
		}
	}
	for k, v := range e.Properties {
		p, ok := entry.Properties[k]
		if !ok {
			return fmt.Sprintf("property %q", k)
		}
		if !p.Admits(v) {
			return fmt.Sprintf("value of property %q", k)
		}
	}
	return ""
}

// CheckAggregate reports what of a cell the catalog does not list ("" when all is): each
// metric's dimension comes from a closed set or the release-version format.
func (c *Catalog) CheckAggregate(a *batchv1.Aggregate) string {
	ok := false
	switch a.Metric {
	case batchv1.MetricEventCount:
		_, ok = c.Events[a.Dimension]
	case batchv1.MetricSearchesByType:
		ok = a.Dimension == OtherPatternType || slices.Contains(PatternTypes, a.Dimension)
	case batchv1.MetricFeatureUsers:
		ok = slices.Contains(c.Features(), a.Dimension)
	case batchv1.MetricInstanceVersion:
		ok = c.ProductVersion(a.Dimension)
	case batchv1.MetricActiveUsers1d, batchv1.MetricActiveUsers7d, batchv1.MetricActiveUsers28d:
		ok = a.Dimension == ""
	}
	if !ok {
		return "dimension of metric " + a.Metric
	}
	return ""
}
