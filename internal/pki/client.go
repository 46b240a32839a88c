/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/url"
	"time"
)

// Reasons a client certificate was (re)issued, recorded in status.credentials.lastIssueReason.
const (
	IssueInitial       = "Initial"
	IssueScheduled     = "Scheduled"
	IssueRequested     = "Requested"
	IssueSecretMissing = "SecretMissing"
	IssueMalformed     = "Malformed"
	IssueKeyMismatch   = "KeyMismatch"
	IssueWrongIdentity = "WrongIdentity"
	IssueWrongIssuer   = "WrongIssuer"
	IssueExpired       = "Expired"
	// IssueStaleBundle is not a reason to issue: the certificate is good, but the CA bundle
	// stored with it is not the issuer's current one (the issuer was rotated); the bundle alone
	// is replaced, so the collector trusts the new roots before anything is signed by them.
	IssueStaleBundle = "StaleBundle"
)

// backdate tolerates clocks that run slightly behind the operator's.
const backdate = 5 * time.Minute

// Lifetime is how long a certificate rotated every period stays valid: 1.5 periods, so the
// scheduled renewal always happens with a third of the lifetime left.
func Lifetime(period time.Duration) time.Duration { return period * 3 / 2 }

// ClientCert is an issued client certificate and its key, PEM encoded.
type ClientCert struct {
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte
}

// IssueClient creates a fresh ECDSA P-256 key and a client-auth-only certificate naming
// instanceID and the policy it is issued for, valid from now for Lifetime(period) (capped at
// the issuer's own expiry).
func (i *Issuer) IssueClient(instanceID string, policy PolicyRef, period time.Duration, now time.Time, random io.Reader) (*ClientCert, error) {
	if !ValidInstanceID(instanceID) {
		return nil, fmt.Errorf("invalid instance id %q", instanceID)
	}
	if err := policy.Validate(); err != nil {
		return nil, err
	}
	return i.issue(pkix.Name{CommonName: instanceID, Organization: []string{"telemetry-collector"}}, []*url.URL{IdentityURI(instanceID), PolicyURI(policy)}, Lifetime(period), now, random)
}

// IssueOperator creates the operator's own client certificate: client-auth only, naming the
// operator of cluster (see OperatorURI), valid from now for lifetime (capped at the issuer's
// expiry). It lets the operator write the consent ledger at the receiver and nothing else: it
// names no instance, so it cannot send data.
func (i *Issuer) IssueOperator(cluster string, lifetime time.Duration, now time.Time, random io.Reader) (*ClientCert, error) {
	if !ValidClusterName(cluster) {
		return nil, fmt.Errorf("invalid cluster name %q", cluster)
	}
	return i.issue(pkix.Name{CommonName: "operator." + cluster, Organization: []string{"telemetry-operator"}}, []*url.URL{OperatorURI(cluster)}, lifetime, now, random)
}

func (i *Issuer) issue(subject pkix.Name, identity []*url.URL, lifetime time.Duration, now time.Time, random io.Reader) (*ClientCert, error) {
	if random == nil {
		random = rand.Reader
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), random)
	if err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	serial, err := rand.Int(random, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	serial.Add(serial, big.NewInt(1)) // never zero
	notBefore := now.Add(-backdate).Truncate(time.Second)
	notAfter := now.Add(lifetime).Truncate(time.Second)
	if notAfter.After(i.Cert.NotAfter) {
		notAfter = i.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  identity,
	}
	der, err := x509.CreateCertificate(random, tmpl, i.Cert, key.Public(), i.Key)
	if err != nil {
		return nil, fmt.Errorf("signing certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &ClientCert{
		Cert:    cert,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// CheckClient inspects a stored client certificate and key. It returns the parsed certificate and
// an empty reason when they are usable for instanceID and policy at now, or the Issue* reason to
// reissue (a certificate naming another policy, or none, is of the wrong identity).
func (i *Issuer) CheckClient(data map[string][]byte, instanceID string, policy PolicyRef, now time.Time) (*x509.Certificate, string) {
	if data == nil {
		return nil, IssueSecretMissing
	}
	cert, err := ParseCertificatePEM(data[KeyCert])
	if err != nil {
		return nil, IssueMalformed
	}
	key, err := ParsePrivateKeyPEM(data[KeyKey])
	if err != nil {
		return cert, IssueMalformed
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return cert, IssueKeyMismatch
	}
	if id, err := InstanceID(cert); err != nil || id != instanceID {
		return cert, IssueWrongIdentity
	}
	if ref, err := PolicyOf(cert); err != nil || ref != policy {
		return cert, IssueWrongIdentity
	}
	if !i.trusts(cert) {
		return cert, IssueWrongIssuer
	}
	if !now.Before(cert.NotAfter) {
		return cert, IssueExpired
	}
	if string(data[KeyCA]) != string(i.BundlePEM) {
		return cert, IssueStaleBundle
	}
	return cert, ""
}

// trusts reports whether cert chains to this issuer or to a root in its bundle: during an issuer
// rotation the bundle holds the previous root too, and certificates it signed stay in use until
// their renewal. Removing a root from the bundle makes every certificate it signed due at once.
// The chain is verified at a moment both certificates were valid: expiry is judged separately.
func (i *Issuer) trusts(cert *x509.Certificate) bool {
	roots := x509.NewCertPool()
	bundle, err := ParseCertificatesPEM(i.BundlePEM)
	if err != nil {
		return false
	}
	for _, c := range bundle {
		roots.AddCert(c) // LoadIssuer checked the issuer's own certificate is among them
	}
	for _, at := range []time.Time{cert.NotBefore, i.Cert.NotBefore} {
		if at.Before(cert.NotBefore) {
			at = cert.NotBefore
		}
		if _, err := cert.Verify(x509.VerifyOptions{
			Roots: roots, CurrentTime: at.Add(time.Second), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}); err == nil {
			return true
		}
	}
	return false
}

// RenewalTime is when a certificate valid from notBefore to notAfter and rotated every period is
// due: after one period, and in any case while a third of its lifetime remains.
func RenewalTime(notBefore, notAfter time.Time, period time.Duration) time.Time {
	byPeriod := notBefore.Add(period)
	byLifetime := notBefore.Add(notAfter.Sub(notBefore) * 2 / 3)
	if byLifetime.Before(byPeriod) {
		return byLifetime
	}
	return byPeriod
}

// SerialHex formats a certificate serial number as colon-free lowercase hexadecimal.
func SerialHex(cert *x509.Certificate) string { return fmt.Sprintf("%x", cert.SerialNumber) }
