/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package pki issues, checks and schedules the collectors' mutual-TLS client certificates, loads
// the fleet issuer, and maps certificates to instance identities for the receiver.
package pki

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// IdentityScheme and IdentityHost form the URI SAN that names an instance in a client certificate:
// spiffe://telemetry.sourcegraph.com/instance/<instanceID>.
const (
	IdentityScheme = "spiffe"
	IdentityHost   = "telemetry.sourcegraph.com"
	identityPrefix = "/instance/"
	operatorPrefix = "/operator/"
	policyPrefix   = "/policy/"
)

var (
	instanceIDPattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	subdomainPattern  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	uidPattern        = regexp.MustCompile(`^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$`)
)

// ValidInstanceID reports whether id has the form the API admits (a DNS label).
func ValidInstanceID(id string) bool {
	return len(id) <= 63 && instanceIDPattern.MatchString(id)
}

// IdentityURI returns the URI SAN that names instanceID.
func IdentityURI(instanceID string) *url.URL {
	return &url.URL{Scheme: IdentityScheme, Host: IdentityHost, Path: identityPrefix + instanceID}
}

// InstanceID returns the instance a client certificate names. It insists on exactly one identity
// URI SAN, so a certificate cannot claim two instances.
func InstanceID(cert *x509.Certificate) (string, error) {
	var found []string
	for _, u := range cert.URIs {
		if u.Scheme != IdentityScheme || u.Host != IdentityHost || !strings.HasPrefix(u.Path, identityPrefix) {
			continue
		}
		found = append(found, strings.TrimPrefix(u.Path, identityPrefix))
	}
	switch {
	case len(found) == 0:
		return "", fmt.Errorf("certificate %q has no %s://%s%s<id> URI SAN", cert.Subject.CommonName, IdentityScheme, IdentityHost, identityPrefix)
	case len(found) > 1:
		return "", fmt.Errorf("certificate %q names %d instances; exactly one is allowed", cert.Subject.CommonName, len(found))
	case !ValidInstanceID(found[0]):
		return "", fmt.Errorf("certificate %q names an invalid instance id", cert.Subject.CommonName)
	}
	return found[0], nil
}

// OperatorURI returns the URI SAN that names the operator of cluster: the identity that may write
// the consent ledger at the receiver, spiffe://telemetry.sourcegraph.com/operator/<cluster>.
func OperatorURI(cluster string) *url.URL {
	return &url.URL{Scheme: IdentityScheme, Host: IdentityHost, Path: operatorPrefix + cluster}
}

// ValidClusterName reports whether name may name a cluster (a DNS label, like an instance id).
func ValidClusterName(name string) bool { return ValidInstanceID(name) }

// OperatorCluster returns the cluster whose operator a client certificate names. A certificate
// naming an instance as well is refused: one identity per certificate.
func OperatorCluster(cert *x509.Certificate) (string, error) {
	var found []string
	for _, u := range cert.URIs {
		if u.Scheme != IdentityScheme || u.Host != IdentityHost {
			continue
		}
		if strings.HasPrefix(u.Path, identityPrefix) {
			return "", fmt.Errorf("certificate %q names an instance, not an operator", cert.Subject.CommonName)
		}
		if strings.HasPrefix(u.Path, operatorPrefix) {
			found = append(found, strings.TrimPrefix(u.Path, operatorPrefix))
		}
	}
	switch {
	case len(found) == 0:
		return "", fmt.Errorf("certificate %q has no %s://%s%s<cluster> URI SAN", cert.Subject.CommonName, IdentityScheme, IdentityHost, operatorPrefix)
	case len(found) > 1:
		return "", fmt.Errorf("certificate %q names %d operators; exactly one is allowed", cert.Subject.CommonName, len(found))
	case !ValidClusterName(found[0]):
		return "", fmt.Errorf("certificate %q names an invalid cluster", cert.Subject.CommonName)
	}
	return found[0], nil
}

// PolicyRef names the TelemetryPolicy a collector certificate was issued for: the operator's
// cluster, the policy's namespace and name, and its UID (a policy deleted and created again is
// another policy). The receiver accepts an instance certificate only while the policy it names
// owns the instance's consent record, so a certificate minted before a handover stops working
// at the handover, not when it expires.
type PolicyRef struct {
	Cluster, Namespace, Name, UID string
}

// Validate reports what makes ref unusable in a certificate.
func (ref PolicyRef) Validate() error {
	switch {
	case !ValidClusterName(ref.Cluster):
		return fmt.Errorf("invalid cluster name %q", ref.Cluster)
	case !ValidInstanceID(ref.Namespace):
		return fmt.Errorf("invalid namespace %q", ref.Namespace)
	case len(ref.Name) > 253 || !subdomainPattern.MatchString(ref.Name):
		return fmt.Errorf("invalid policy name %q", ref.Name)
	case len(ref.UID) > 128 || !uidPattern.MatchString(ref.UID):
		return fmt.Errorf("invalid policy UID %q", ref.UID)
	}
	return nil
}

// PolicyURI returns the URI SAN that names the policy ref in an instance certificate:
// spiffe://telemetry.sourcegraph.com/policy/<cluster>/<namespace>/<name>/<uid>.
func PolicyURI(ref PolicyRef) *url.URL {
	return &url.URL{Scheme: IdentityScheme, Host: IdentityHost, Path: policyPrefix + strings.Join([]string{ref.Cluster, ref.Namespace, ref.Name, ref.UID}, "/")}
}

// PolicyOf returns the policy an instance certificate was issued for. It insists on exactly one
// well-formed policy URI SAN: a certificate issued before certificates named their policy names
// none, and is refused (its operator issues a new one).
func PolicyOf(cert *x509.Certificate) (PolicyRef, error) {
	var found []string
	for _, u := range cert.URIs {
		if u.Scheme == IdentityScheme && u.Host == IdentityHost && strings.HasPrefix(u.Path, policyPrefix) {
			found = append(found, strings.TrimPrefix(u.Path, policyPrefix))
		}
	}
	switch {
	case len(found) == 0:
		return PolicyRef{}, fmt.Errorf("certificate %q names no policy (no %s://%s%s<cluster>/<namespace>/<name>/<uid> URI SAN)", cert.Subject.CommonName, IdentityScheme, IdentityHost, policyPrefix)
	case len(found) > 1:
		return PolicyRef{}, fmt.Errorf("certificate %q names %d policies; exactly one is allowed", cert.Subject.CommonName, len(found))
	}
	parts := strings.Split(found[0], "/")
	if len(parts) != 4 {
		return PolicyRef{}, fmt.Errorf("certificate %q names a malformed policy", cert.Subject.CommonName)
	}
	ref := PolicyRef{Cluster: parts[0], Namespace: parts[1], Name: parts[2], UID: parts[3]}
	if err := ref.Validate(); err != nil {
		return PolicyRef{}, fmt.Errorf("certificate %q names a malformed policy: %w", cert.Subject.CommonName, err)
	}
	return ref, nil
}
