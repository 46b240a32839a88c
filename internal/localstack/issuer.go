/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package localstack

import (
	"context"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/pki/pkitest"
)

// BeginIssuerRotation starts moving the fleet to next, as the README tells an admin to: the
// receiver's client CA file trusts both roots, then the issuer Secret holds next with both roots
// in its bundle. Neither the operator nor the receiver is restarted.
func (s *Stack) BeginIssuerRotation(ctx context.Context, next *pkitest.CA) error {
	both := append(append([]byte{}, next.CertPEM...), s.CA.CertPEM...)
	if err := writeFileAtomic(filepath.Join(s.Dir, "issuer.crt"), both); err != nil {
		return err
	}
	data := next.Secret()
	data[pki.KeyCA] = both
	return s.setIssuerSecret(ctx, data)
}

// FinishIssuerRotation ends the overlap: the receiver's server certificate is re-issued from
// next, and the old root leaves the receiver's client CA file and the issuer's bundle.
func (s *Stack) FinishIssuerRotation(ctx context.Context, next *pkitest.CA) error {
	server, err := next.ServerCert("telemetry-receiver", []string{"localhost", "127.0.0.1"}, time.Time{})
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(s.Dir, "receiver.key"), server.KeyPEM); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(s.Dir, "receiver.crt"), server.CertPEM); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(s.Dir, "issuer.crt"), next.CertPEM); err != nil {
		return err
	}
	if err := s.setIssuerSecret(ctx, next.Secret()); err != nil {
		return err
	}
	s.CA = next
	return nil
}

func (s *Stack) setIssuerSecret(ctx context.Context, data map[string][]byte) error {
	sec := &corev1.Secret{}
	if err := s.Client.Get(ctx, client.ObjectKey{Namespace: IssuerNamespace, Name: IssuerName}, sec); err != nil {
		return err
	}
	sec.Data = data
	return s.Client.Update(ctx, sec)
}

// writeFileAtomic replaces a file by renaming, as a kubelet updates a mounted Secret: a reader
// sees the old content or the new, never half of it.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ReceiverPID returns the receiver's process id (0 when not running).
func (s *Stack) ReceiverPID() int {
	if s.receiver == nil {
		return 0
	}
	return s.receiver.Process.Pid
}
