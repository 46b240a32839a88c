/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package collectorconfig

import (
	"bytes"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

var opened = time.Date(2026, 11, 1, 9, 30, 0, 0, time.UTC)

func valid() Config {
	return Config{
		InstanceID: "acme", Tier: v1.TierEventLevel, Endpoint: "https://receiver.example.com:8443",
		Interval: "5m", BatchSize: 5000,
		Consent:          consentv1.Timeline{{At: opened, Tier: consentv1.TierEventLevel, Reason: "Declared", Basis: "SelfServeTrial"}},
		TLS:              TLSFiles{CertFile: "/etc/telemetry/tls/tls.crt", KeyFile: "/etc/telemetry/tls/tls.key", CAFile: "/etc/telemetry/tls/ca.crt"},
		PseudonymKeyFile: "/etc/telemetry/pseudonym/key", DatabaseDSNFile: "/etc/telemetry/database/dsn",
		State: StateRef{Namespace: "acme", ConfigMap: "acme-collector-state"},
	}
}

func TestRenderParseRoundTrip(t *testing.T) {
	out, err := Render(valid())
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Render(valid())
	if !bytes.Equal(out, again) {
		t.Fatal("rendering is not deterministic")
	}
	got, err := Parse(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	want := valid()
	want.Version = Version
	if !reflect.DeepEqual(*got, want) {
		t.Fatalf("round trip changed the configuration:\n got %+v\nwant %+v", *got, want)
	}
}

func TestParseRejectsBadInputNamingTheField(t *testing.T) {
	render := func(mut func(*Config)) string {
		c := valid()
		c.Version = Version
		mut(&c)
		// Bypass Render's validation to produce the bad file a hand edit could.
		var b strings.Builder
		b.WriteString(`{"version":` + strconv.Itoa(c.Version) + `,"instanceID":"` + c.InstanceID + `","tier":"` + string(c.Tier) +
			`","endpoint":"` + c.Endpoint + `","interval":"` + c.Interval + `","batchSize":` + strconv.Itoa(c.BatchSize) +
			`,"consent":` + consentJSON(c.Consent) + `,"tls":{"certFile":"` + c.TLS.CertFile + `","keyFile":"` + c.TLS.KeyFile +
			`","caFile":"` + c.TLS.CAFile + `"},"pseudonymKeyFile":"` + c.PseudonymKeyFile + `","databaseDSNFile":"` + c.DatabaseDSNFile +
			`","state":{"namespace":"` + c.State.Namespace + `","configMap":"` + c.State.ConfigMap + `"}}`)
		return b.String()
	}
	cases := []struct {
		name, input, want string
	}{
		{"empty", "", "not valid JSON"},
		{"not JSON", "tier: EventLevel", "not valid JSON"},
		{"array", "[]", "not valid JSON"},
		{"unknown field", strings.Replace(render(func(*Config) {}), `"version"`, `"tierr":"Off","version"`, 1), `unknown field "tierr"`},
		{"trailing data", render(func(*Config) {}) + "{}", "trailing data"},
		{"oversized", `{"instanceID":"` + strings.Repeat("a", MaxFileSize) + `"}`, "larger than"},
		{"future version", render(func(c *Config) { c.Version = 2 }), "version: unsupported version 2"},
		{"bad instance", render(func(c *Config) { c.InstanceID = "Acme Corp" }), "instanceID:"},
		{"bad tier", render(func(c *Config) { c.Tier = "All" }), "tier:"},
		{"http endpoint", render(func(c *Config) { c.Endpoint = "http://x" }), "endpoint:"},
		{"bad interval", render(func(c *Config) { c.Interval = "soon" }), "interval:"},
		{"huge batch", render(func(c *Config) { c.BatchSize = 1 << 30 }), "batchSize:"},
		{"consent tier unknown", render(func(c *Config) { c.Consent[0].Tier = "Everything" }), "consent:"},
		{"consent out of order", render(func(c *Config) {
			c.Consent = consentv1.Timeline{{At: opened, Tier: consentv1.TierEventLevel}, {At: opened.Add(-time.Hour), Tier: consentv1.TierOff}}
		}), "consent:"},
		{"consent without time", render(func(c *Config) { c.Consent[0].At = time.Time{} }), "consent:"},
		{"consent too long", render(func(c *Config) {
			c.Consent = nil
			for i := range MaxConsentTransitions + 1 {
				c.Consent = append(c.Consent, consentv1.Transition{At: opened.Add(time.Duration(i) * time.Minute), Tier: consentv1.TierOff})
			}
		}), "consent:"},
		{"relative path", render(func(c *Config) { c.DatabaseDSNFile = "dsn" }), "databaseDSNFile:"},
		{"no state", render(func(c *Config) { c.State.ConfigMap = "" }), "state:"},
		{"NUL byte", render(func(c *Config) { c.InstanceID = "acme\\u0000" }), "instanceID:"},
		{"invalid UTF-8", "{\"instanceID\":\"\xff\xfe\"}", "instanceID:"},
		{"deep nesting", strings.Repeat(`{"a":`, 10000) + strings.Repeat("}", 10000), "not valid JSON"},
		{"huge number", strings.Replace(render(func(*Config) {}), `"batchSize":5000`, `"batchSize":1e400`, 1), "not valid JSON"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tc.input))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func consentJSON(t consentv1.Timeline) string {
	var b strings.Builder
	b.WriteString("[")
	for i, tr := range t {
		if i > 0 {
			b.WriteString(",")
		}
		at := ""
		if !tr.At.IsZero() {
			at = tr.At.Format(time.RFC3339Nano)
		} else {
			at = "0001-01-01T00:00:00Z"
		}
		b.WriteString(`{"at":"` + at + `","tier":"` + string(tr.Tier) + `"}`)
	}
	b.WriteString("]")
	return b.String()
}

func TestOffNeedsNoDelivery(t *testing.T) {
	c := Config{InstanceID: "acme", Tier: v1.TierOff, State: StateRef{Namespace: "acme", ConfigMap: "s"}}
	if _, err := Render(c); err != nil {
		t.Fatalf("an Off configuration must render without delivery settings: %v", err)
	}
}

// FuzzParse: any input is either rejected with an error naming a field or the JSON problem, or
// accepted as a configuration that validates and re-renders identically.
func FuzzParse(f *testing.F) {
	good, _ := Render(valid())
	f.Add(good)
	f.Add([]byte(`{"version":1,"tier":"Off","instanceID":"a","state":{"namespace":"n","configMap":"c"}}`))
	f.Add([]byte(`{"version":1,"tier":"EventLevel","endpoint":"http://x"}`))
	f.Add([]byte("\x00\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(bytes.NewReader(data))
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted an invalid configuration: %v", err)
		}
		out, err := Render(*c)
		if err != nil {
			t.Fatalf("an accepted configuration does not render: %v", err)
		}
		again, err := Parse(bytes.NewReader(out))
		if err != nil || !reflect.DeepEqual(*again, *c) {
			t.Fatalf("round trip changed the configuration: %v", err)
		}
	})
}
