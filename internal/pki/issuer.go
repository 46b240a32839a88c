/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package pki

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"
)

// Secret keys of the issuer Secret and of each collector's credentials Secret (kubernetes.io/tls).
const (
	KeyCert = "tls.crt"
	KeyKey  = "tls.key"
	KeyCA   = "ca.crt"
)

// Issuer is the fleet CA that signs collector client certificates.
type Issuer struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// CertPEM is the issuer certificate, PEM encoded.
	CertPEM []byte
	// BundlePEM is what clients and the receiver trust: ca.crt when the Secret has one (it may
	// hold a chain or several roots), otherwise the issuer certificate.
	BundlePEM []byte
}

// ErrIssuer marks an unusable issuer; the message says what is wrong and how to fix it.
var ErrIssuer = errors.New("unusable fleet issuer")

// LoadIssuer parses an issuer from a Secret's data and checks that it can sign client
// certificates at now: both keys present and PEM, key matching certificate, a CA allowed to sign
// certificates, and currently valid.
func LoadIssuer(data map[string][]byte, now time.Time) (*Issuer, error) {
	fail := func(format string, args ...any) (*Issuer, error) {
		return nil, fmt.Errorf("%w: %s", ErrIssuer, fmt.Sprintf(format, args...))
	}
	certPEM, keyPEM := data[KeyCert], data[KeyKey]
	if len(certPEM) == 0 || len(keyPEM) == 0 {
		return fail("the Secret must hold a PEM certificate in %q and its private key in %q", KeyCert, KeyKey)
	}
	cert, err := ParseCertificatePEM(certPEM)
	if err != nil {
		return fail("%s: %v", KeyCert, err)
	}
	key, err := ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return fail("%s: %v", KeyKey, err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return fail("the private key in %s does not belong to the certificate in %s", KeyKey, KeyCert)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return fail("certificate %q is not a CA (basicConstraints CA:TRUE is required)", cert.Subject.CommonName)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fail("certificate %q may not sign certificates (keyUsage keyCertSign is required)", cert.Subject.CommonName)
	}
	if now.Before(cert.NotBefore) {
		return fail("certificate %q is not valid before %s", cert.Subject.CommonName, cert.NotBefore.UTC().Format(time.RFC3339))
	}
	if !now.Before(cert.NotAfter) {
		return fail("certificate %q expired at %s", cert.Subject.CommonName, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	bundle := data[KeyCA]
	if len(bundle) == 0 {
		bundle = certPEM
	} else {
		roots, err := ParseCertificatesPEM(bundle)
		if err != nil {
			return fail("%s: %v", KeyCA, err)
		}
		// The bundle is what collectors and the receiver trust: without the issuer's own
		// certificate, nothing it signs would be trusted (a rotation that replaced the bundle
		// instead of adding to it would cut the fleet off).
		if !slices.ContainsFunc(roots, cert.Equal) {
			return fail("%s does not hold the issuer certificate in %s: it must list every root to trust, this one included (during a rotation, the new and the old)", KeyCA, KeyCert)
		}
	}
	return &Issuer{Cert: cert, Key: key, CertPEM: certPEM, BundlePEM: bundle}, nil
}

// ExpiresWithin reports whether the issuer's certificate expires within d of now.
func (i *Issuer) ExpiresWithin(now time.Time, d time.Duration) bool {
	return !now.Add(d).Before(i.Cert.NotAfter)
}

// ParseCertificatePEM parses the first certificate of a PEM block sequence.
func ParseCertificatePEM(data []byte) (*x509.Certificate, error) {
	certs, err := ParseCertificatesPEM(data)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// ParseCertificatesPEM parses every CERTIFICATE block; other block types are an error.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q where a CERTIFICATE was expected", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("malformed certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return certs, nil
}

// ParsePrivateKeyPEM parses a PKCS#8, EC or PKCS#1 private key.
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM private key block found")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unexpected PEM block %q where a private key was expected", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("malformed private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", key)
	}
	return signer, nil
}

type equalKey interface{ Equal(crypto.PublicKey) bool }

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(equalKey)
	return ok && ak.Equal(b)
}

// Holder holds the fleet issuer in use. The manager replaces it when the issuer Secret changes;
// everything that signs reads the current one, so a rotation needs no restart.
type Holder struct{ p atomic.Pointer[Issuer] }

// NewHolder returns a Holder holding i.
func NewHolder(i *Issuer) *Holder {
	h := &Holder{}
	h.p.Store(i)
	return h
}

// Current returns the issuer in use.
func (h *Holder) Current() *Issuer { return h.p.Load() }

// Set makes i the issuer in use.
func (h *Holder) Set(i *Issuer) { h.p.Store(i) }

// Same reports whether i and o are the same issuer: the same certificate (LoadIssuer checked
// each key belongs to its certificate) and bundle.
func (i *Issuer) Same(o *Issuer) bool {
	return o != nil && string(i.CertPEM) == string(o.CertPEM) && string(i.BundlePEM) == string(o.BundlePEM)
}

// BundleHolds reports whether the issuer's CA bundle holds certificate c (during a rotation's
// overlap, the previous issuer's).
func (i *Issuer) BundleHolds(c *x509.Certificate) bool {
	bundle, err := ParseCertificatesPEM(i.BundlePEM)
	if err != nil {
		return false
	}
	for _, b := range bundle {
		if b.Equal(c) {
			return true
		}
	}
	return false
}
