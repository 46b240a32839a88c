/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package pkitest creates throw-away CAs and certificates for tests and development.
package pkitest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"time"
)

// CA is a certificate authority with its PEM encodings.
type CA struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
	KeyPEM  []byte
}

// Options tune a generated certificate.
type Options struct {
	NotBefore, NotAfter time.Time
	// NotCA makes a leaf certificate instead of a CA (for "issuer is not a CA" tests).
	NotCA bool
	// Parent signs the CA (an intermediate) instead of its own key (self-signed).
	Parent *CA
}

// NewCA returns an ECDSA P-256 CA named cn, self-signed unless o.Parent is set.
func NewCA(cn string, o Options) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if o.NotBefore.IsZero() {
		o.NotBefore = time.Now().Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = o.NotBefore.Add(10 * 365 * 24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"telemetry-operator"}},
		NotBefore:             o.NotBefore,
		NotAfter:              o.NotAfter,
		BasicConstraintsValid: true,
		IsCA:                  !o.NotCA,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	if o.NotCA {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	parent, signer := tmpl, any(key)
	if o.Parent != nil {
		parent, signer = o.Parent.Cert, o.Parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, err
	}
	return finish(der, key)
}

// Secret returns the CA as the data of a kubernetes.io/tls issuer Secret.
func (c *CA) Secret() map[string][]byte {
	return map[string][]byte{"tls.crt": c.CertPEM, "tls.key": c.KeyPEM}
}

// ServerCert issues a TLS server certificate for hosts (DNS names or IPs) signed by c.
func (c *CA) ServerCert(cn string, hosts []string, notAfter time.Time) (*CA, error) {
	return c.leaf(cn, x509.ExtKeyUsageServerAuth, hosts, notAfter)
}

// ClientCert issues a TLS client certificate named cn, signed by c, valid for a year.
func (c *CA) ClientCert(cn string) (*CA, error) {
	return c.leaf(cn, x509.ExtKeyUsageClientAuth, nil, time.Time{})
}

// ClientCertWithURIs issues a TLS client certificate named cn carrying exactly the URI SANs
// given, signed by c, valid for a year: a certificate as some other issuer, or an older release,
// would make it.
func (c *CA) ClientCertWithURIs(cn string, uris ...*url.URL) (*CA, error) {
	return c.leaf(cn, x509.ExtKeyUsageClientAuth, nil, time.Time{}, uris...)
}

func (c *CA) leaf(cn string, usage x509.ExtKeyUsage, hosts []string, notAfter time.Time, uris ...*url.URL) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if notAfter.IsZero() {
		notAfter = time.Now().Add(365 * 24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		URIs:         uris,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.Cert, key.Public(), c.Key)
	if err != nil {
		return nil, err
	}
	return finish(der, key)
}

func finish(der []byte, key *ecdsa.PrivateKey) (*CA, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &CA{
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return n.Add(n, big.NewInt(1))
}
