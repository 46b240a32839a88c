/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package collectorconfig defines the collector's configuration file: the operator renders it
// from a TelemetryPolicy and its effective tier, the collector parses and validates it.
package collectorconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"time"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	telemetryv1alpha1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
)

// Version is the configuration format version this code reads and writes.
const Version = 1

// MaxFileSize bounds the configuration file; anything larger is rejected unread.
const MaxFileSize = 64 << 10

// MaxConsentTransitions bounds the consent timeline in the file. Older transitions are left out
// by the operator, which only shortens consent (before the first one listed counts as Off).
const MaxConsentTransitions = 64

// Paths inside the collector container where the operator mounts its inputs.
const (
	ConfigDir       = "/etc/telemetry/config"
	ConfigFileName  = "config.json"
	TLSDir          = "/etc/telemetry/tls"
	PseudonymDir    = "/etc/telemetry/pseudonym"
	PseudonymKey    = "key"
	DatabaseDir     = "/etc/telemetry/database"
	DatabaseDSNFile = "dsn"
	ReceiverCADir   = "/etc/telemetry/receiver-ca"
	ReceiverCAFile  = "ca.crt"
)

// Config is the collector's configuration.
type Config struct {
	// Version of the format; must equal Version.
	Version int `json:"version"`
	// InstanceID names the instance whose events are collected.
	InstanceID string `json:"instanceID"`
	// Tier is the effective consent tier: the most the collector may send.
	Tier telemetryv1alpha1.ConsentTier `json:"tier"`
	// Endpoint is the receiver's https:// base URL.
	Endpoint string `json:"endpoint"`
	// Interval between collection rounds, as a Go duration.
	Interval string `json:"interval"`
	// BatchSize is the most events per batch.
	BatchSize int `json:"batchSize"`
	// Consent is the instance's consent timeline, the most recent transitions of the receiver's
	// consent ledger. An event leaves only if the tier in force when it was recorded was
	// EventLevel; aggregates count only events recorded while it was exactly CriticalOnly.
	// Before the first transition listed the instance counts as Off.
	Consent consentv1.Timeline `json:"consent"`
	// TLS names the client certificate, key and the CA bundle trusted for the receiver.
	TLS TLSFiles `json:"tls"`
	// PseudonymKeyFile holds the per-instance HMAC key.
	PseudonymKeyFile string `json:"pseudonymKeyFile"`
	// DatabaseDSNFile holds the instance database's connection string.
	DatabaseDSNFile string `json:"databaseDSNFile"`
	// State names the object the collector writes its progress to.
	State StateRef `json:"state"`
}

// TLSFiles are the mounted mutual-TLS files; they are re-read on every handshake.
type TLSFiles struct {
	CertFile string `json:"certFile"`
	KeyFile  string `json:"keyFile"`
	CAFile   string `json:"caFile"`
}

// StateRef names the ConfigMap the collector reports progress to.
type StateRef struct {
	Namespace string `json:"namespace"`
	ConfigMap string `json:"configMap"`
}

// Render returns the configuration file's bytes. Output is deterministic, so its hash changes
// exactly when the configuration does.
func Render(c Config) ([]byte, error) {
	c.Version = Version
	if err := c.Validate(); err != nil {
		return nil, err
	}
	out, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// Parse reads and validates a configuration file. Unknown fields are errors, so a typo never
// silently falls back to a default.
func Parse(r io.Reader) (*Config, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("configuration is larger than %d bytes", MaxFileSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("configuration is not valid JSON for this format: %w", err)
	}
	if dec.More() {
		return nil, errors.New("configuration has trailing data after the JSON object")
	}
	for i := range c.Consent {
		// One representation per instant, whatever zone the file used.
		c.Consent[i].At = c.Consent[i].At.UTC()
		if r := c.Consent[i].RecordedAt; r != nil {
			u := r.UTC()
			c.Consent[i].RecordedAt = &u
		}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks every field and names the first offending one. Tier Off is valid here (the
// operator renders it so a still-running collector stops sending); the collector refuses to start
// with it.
func (c *Config) Validate() error {
	var errs []string
	bad := func(field, format string, args ...any) {
		errs = append(errs, field+": "+fmt.Sprintf(format, args...))
	}
	if c.Version != Version {
		bad("version", "unsupported version %d (this collector reads version %d)", c.Version, Version)
	}
	if !pki.ValidInstanceID(c.InstanceID) {
		bad("instanceID", "%q is not a DNS label", c.InstanceID)
	}
	switch c.Tier {
	case telemetryv1alpha1.TierEventLevel, telemetryv1alpha1.TierCriticalOnly, telemetryv1alpha1.TierOff:
	default:
		bad("tier", "%q is not one of EventLevel, CriticalOnly, Off", c.Tier)
	}
	if c.Tier != telemetryv1alpha1.TierOff {
		if u, err := url.Parse(c.Endpoint); err != nil || u.Scheme != "https" || u.Host == "" {
			bad("endpoint", "%q is not an https:// URL", c.Endpoint)
		}
		if d, err := time.ParseDuration(c.Interval); err != nil || d < time.Second || d > 24*time.Hour {
			bad("interval", "%q is not a duration between 1s and 24h", c.Interval)
		}
		if c.BatchSize < 1 || c.BatchSize > 10000 {
			bad("batchSize", "%d is not between 1 and 10000", c.BatchSize)
		}
		for field, path := range map[string]string{
			"tls.certFile": c.TLS.CertFile, "tls.keyFile": c.TLS.KeyFile, "tls.caFile": c.TLS.CAFile,
			"pseudonymKeyFile": c.PseudonymKeyFile, "databaseDSNFile": c.DatabaseDSNFile,
		} {
			if !strings.HasPrefix(path, "/") {
				bad(field, "%q is not an absolute path", path)
			}
		}
	}
	if len(c.Consent) > MaxConsentTransitions {
		bad("consent", "%d transitions; at most %d", len(c.Consent), MaxConsentTransitions)
	} else if err := c.Consent.Validate(); err != nil {
		bad("consent", "%v", err)
	}
	if c.State.Namespace == "" || c.State.ConfigMap == "" {
		bad("state", "namespace and configMap are required")
	}
	if len(errs) > 0 {
		slices.Sort(errs)
		return fmt.Errorf("invalid collector configuration: %s", strings.Join(errs, "; "))
	}
	return nil
}

// IntervalDuration returns Interval parsed; call only on a validated Config.
func (c *Config) IntervalDuration() time.Duration {
	d, _ := time.ParseDuration(c.Interval)
	return d
}
