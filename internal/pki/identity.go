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
)

var instanceIDPattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

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
