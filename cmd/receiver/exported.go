/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	batchv1 "github.com/sourcegraph/telemetry-operator/api/batch/v1"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
)

// exported lists what the receiver stored from one instance recently: the same listing an
// instance's own certificate reads from GET /v1/exported.
func exported(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("exported", flag.ExitOnError)
	instance := fs.String("instance", "", "The instance (required).")
	limit := fs.Int("limit", batchv1.DefaultExportedDeliveries, fmt.Sprintf("How many recent deliveries (1 to %d).", batchv1.MaxExportedDeliveries))
	format := fs.String("format", "table", "Output format: table or json.")
	dsnFile := dsnFlag(fs)
	_ = fs.Parse(args)
	switch {
	case *instance == "":
		return errors.New("--instance is required")
	case !pki.ValidInstanceID(*instance):
		return fmt.Errorf("--instance %q is not an instance id (a DNS label)", *instance)
	case *limit < 1 || *limit > batchv1.MaxExportedDeliveries:
		return fmt.Errorf("--limit must be from 1 to %d", batchv1.MaxExportedDeliveries)
	case *format != "table" && *format != "json":
		return fmt.Errorf("--format must be table or json, not %q", *format)
	}
	st, err := openStore(ctx, *dsnFile)
	if err != nil {
		return err
	}
	defer st.Close()
	list, err := st.Exported(ctx, *instance, *limit, batchv1.MaxExportedItems)
	if err != nil {
		return err
	}
	if list == nil {
		list = []batchv1.Delivery{}
	}
	if *format == "json" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(batchv1.ExportedResponse{InstanceID: *instance, Deliveries: list})
	}
	return writeDeliveries(os.Stdout, list)
}

// writeDeliveries prints deliveries as tables, newest first.
func writeDeliveries(out io.Writer, list []batchv1.Delivery) error {
	if len(list) == 0 {
		_, err := fmt.Fprintln(out, "(nothing stored)")
		return err
	}
	for _, d := range list {
		fmt.Fprintf(out, "== delivery %d: batch %s (%s), received %s: %d stored, %d duplicates, %d refused\n",
			d.Seq, d.BatchID, d.Kind, rfc3339(d.ReceivedAt), d.Accepted, d.Duplicates, d.Refused)
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		switch {
		case len(d.Events) > 0:
			fmt.Fprintln(tw, "ID\tNAME\tTIMESTAMP\tUSER\tSOURCE\tVERSION\tCLIENT\tFLAGS\tPROPERTIES")
			for _, e := range d.Events {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.Name, rfc3339(e.Timestamp), e.UserID,
					dash(e.Source), dash(e.ProductVersion), dash(e.Client), flags(e.FeatureFlags), properties(e.Properties))
			}
		case len(d.Aggregates) > 0:
			fmt.Fprintln(tw, "DAY\tMETRIC\tDIMENSION\tVALUE\tUSERS")
			for _, a := range d.Aggregates {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", a.Day, a.Metric, dash(a.Dimension), a.Value, a.Users)
			}
		default:
			fmt.Fprintln(tw, "(its items are no longer stored: erased, or removed by a withdrawal of consent)")
		}
		if d.Truncated {
			fmt.Fprintln(tw, "(more items are stored than a listing holds)")
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

func flags(m map[string]bool) string {
	if len(m) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(m))
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s=%t", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func properties(m map[string]any) string {
	if len(m) == 0 {
		return "-"
	}
	data, err := json.Marshal(m) // sorted keys
	if err != nil {
		return "?"
	}
	return string(data)
}
