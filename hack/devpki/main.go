/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Command devpki creates a development fleet issuer CA and a receiver server certificate signed
// by it, plus a Secret manifest for the issuer. For local use only: production issuers come from
// the company's PKI.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
)

func main() {
	out := flag.String("out", "tmp/dev-pki", "Directory to write the files to.")
	hosts := flag.String("receiver-hosts", "localhost,127.0.0.1,telemetry-receiver.telemetry.svc", "Comma-separated DNS names and IPs for the receiver's server certificate.")
	namespace := flag.String("namespace", "telemetry-system", "Namespace of the issuer Secret manifest.")
	name := flag.String("name", "telemetry-fleet-issuer", "Name of the issuer Secret manifest.")
	validity := flag.Duration("validity", 365*24*time.Hour, "Validity of the issuer CA.")
	flag.Parse()
	if err := run(*out, strings.Split(*hosts, ","), *namespace, *name, *validity); err != nil {
		fmt.Fprintln(os.Stderr, "devpki:", err)
		os.Exit(1)
	}
}

func run(out string, hosts []string, namespace, name string, validity time.Duration) error {
	if err := os.MkdirAll(out, 0o700); err != nil {
		return err
	}
	ca, err := pkitest.NewCA("telemetry development fleet issuer", pkitest.Options{
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(validity),
	})
	if err != nil {
		return err
	}
	server, err := ca.ServerCert("telemetry-receiver", hosts, time.Now().Add(validity))
	if err != nil {
		return err
	}
	secret := &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{"tls.crt": ca.CertPEM, "tls.key": ca.KeyPEM, "ca.crt": ca.CertPEM},
	}
	manifest, err := yaml.Marshal(secret)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"issuer.crt": ca.CertPEM, "issuer.key": ca.KeyPEM,
		"receiver.crt": server.CertPEM, "receiver.key": server.KeyPEM,
		"issuer-secret.yaml": manifest,
	}
	for f, data := range files {
		if err := os.WriteFile(filepath.Join(out, f), data, 0o600); err != nil {
			return err
		}
	}
	fmt.Printf("wrote a development issuer and receiver certificate to %s:\n", out)
	fmt.Println("  issuer.crt, issuer.key        fleet issuer CA (the receiver trusts it for client certificates)")
	fmt.Println("  receiver.crt, receiver.key    receiver server certificate for", strings.Join(hosts, ", "))
	fmt.Println("  issuer-secret.yaml            the issuer as a Secret: kubectl apply -f", filepath.Join(out, "issuer-secret.yaml"))
	return nil
}
