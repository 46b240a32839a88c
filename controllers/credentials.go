/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/pki"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
)

// rotationDecision is the pure part of the credentials step: given what is stored, is a new
// certificate needed, and why?
type rotationDecision struct {
	reason  string // empty: keep the current certificate
	request string // the rotate-request annotation value being answered, if any
}

// decideRotation returns why the stored certificate must be replaced, if it must. problem is the
// result of Issuer.CheckClient; handledRequest is the last rotate request already answered.
func decideRotation(problem string, exists, issuedBefore bool, renewal time.Time, now time.Time, requested, handledRequest string) rotationDecision {
	switch {
	case !exists && !issuedBefore:
		return rotationDecision{reason: pki.IssueInitial}
	case !exists:
		return rotationDecision{reason: pki.IssueSecretMissing}
	case problem != "":
		return rotationDecision{reason: problem}
	case requested != "" && requested != handledRequest:
		return rotationDecision{reason: pki.IssueRequested, request: requested}
	case !now.Before(renewal):
		return rotationDecision{reason: pki.IssueScheduled}
	}
	return rotationDecision{}
}

// reconcileCredentials makes sure the collector has a valid client certificate from the fleet
// issuer, rotating it when due or requested. It returns the renewal time to requeue for.
// DefaultIssuerMinRemaining is the default of Options.IssuerMinRemaining.
const DefaultIssuerMinRemaining = 24 * time.Hour

func (r *TelemetryPolicyReconciler) reconcileCredentials(ctx context.Context, st *reconcileState) (*time.Time, error) {
	p := st.policy
	iss := r.issuer()
	if iss == nil {
		setCondition(p, v1.ConditionCredentialsReady, metav1.ConditionFalse, ReasonIssuerUnavailable, "the fleet issuer is not loaded")
		st.stall(ReasonIssuerUnavailable, "the fleet issuer is not loaded; see the manager's logs")
		return nil, nil
	}
	names := resources.NamesFor(p.Name)
	period := p.Spec.Credentials.RotationPeriodOrDefault()
	now := r.Clock.Now()
	key := client.ObjectKey{Namespace: p.Namespace, Name: names.Credentials}

	secret := &corev1.Secret{}
	exists := true
	if err := r.Get(ctx, key, secret); apierrors.IsNotFound(err) {
		exists = false
	} else if err != nil {
		return nil, err
	}
	staleBundle := false
	decide := func() (rotationDecision, *time.Time) {
		var data map[string][]byte
		if exists {
			data = secret.Data
		}
		cert, problem := iss.CheckClient(data, p.Spec.InstanceID, r.policyRef(p), now)
		if staleBundle = problem == pki.IssueStaleBundle; staleBundle {
			problem = "" // the certificate stays; its CA bundle is replaced below
		}
		var renewal time.Time
		if cert != nil {
			renewal = pki.RenewalTime(cert.NotBefore, cert.NotAfter, period)
		}
		handled := p.Status.LastHandledRotateRequest
		if exists && secret.Annotations[resources.AnnotationRotateRequest] != "" {
			handled = secret.Annotations[resources.AnnotationRotateRequest]
		}
		return decideRotation(problem, exists, p.Status.Credentials != nil, renewal, now, p.Annotations[v1.AnnotationRotateRequestedAt], handled), &renewal
	}
	// readLive replaces what the cache showed with what the API server holds.
	readLive := func() error {
		live := &corev1.Secret{}
		switch err := r.APIReader.Get(ctx, key, live); {
		case apierrors.IsNotFound(err):
			exists = false
		case err != nil:
			return err
		default:
			exists, secret = true, live
		}
		return nil
	}
	// keep stores nothing new: the CA bundle is refreshed if stale, labels and owner restored,
	// all only in a Secret this policy may take over.
	keep := func() error {
		if err := mayTakeOver(secret, p); err != nil {
			return err
		}
		if staleBundle {
			refreshed, err := r.refreshBundle(ctx, p, iss, secret)
			if err != nil {
				return err
			}
			secret = refreshed
		}
		return r.ensureSecretMeta(ctx, p, secret, "credentials")
	}
	floor := r.issuerFloor()
	dec, _ := decide()
	// A policy never given a certificate creates one first: a create cannot replace a Secret
	// the cache has not seen, and a new policy's reconcile is spared a read that answers 404.
	// Everywhere else the API server is asked first, before replacing (the cache may not yet
	// show a certificate this operator wrote moments ago, and issuing twice would be a spurious
	// rotation) or stalling.
	createFirst := !exists && p.Status.Credentials == nil && !iss.ExpiresWithin(now, floor)
	if dec.reason != "" && !createFirst {
		if err := readLive(); err != nil {
			return nil, err
		}
		dec, _ = decide()
	}
	if dec.reason != "" {
		if iss.ExpiresWithin(now, floor) {
			msg := fmt.Sprintf("the fleet issuer expires at %s, within %s: no certificate is issued from it (one would expire with it and be due again at once); rotate the issuer Secret",
				iss.Cert.NotAfter.UTC().Format(time.RFC3339), floor)
			setCondition(p, v1.ConditionCredentialsReady, metav1.ConditionFalse, ReasonIssuerExpiring, msg)
			st.stall(ReasonIssuerExpiring, msg)
			return nil, nil
		}
		issued, err := r.issue(ctx, st, iss, secret, exists, dec, period, now)
		if createFirst && err != nil {
			// The create was refused: by a Secret the cache has not seen (written moments ago,
			// its labels edited), or before the API server looked for one (a quota, a webhook).
			// Judge the one it holds, as if the cache had shown it; if there is none, the
			// refusal stands.
			createErr := err
			if err := readLive(); err != nil {
				return nil, err
			}
			if !exists {
				err = createErr
			} else if dec, _ = decide(); dec.reason == "" {
				if err := keep(); err != nil {
					return nil, err
				}
				issued, err = secret, nil
			} else {
				issued, err = r.issue(ctx, st, iss, secret, exists, dec, period, now)
			}
		}
		if isNameTaken(err) {
			return nil, err // a name conflict, not a failed rotation: the policy stalls (NameTaken)
		}
		if err != nil {
			r.Metrics.RotationFailures.Inc()
			setCondition(p, v1.ConditionCredentialsReady, metav1.ConditionFalse, ReasonIssueFailed, err.Error())
			r.event(p, corev1.EventTypeWarning, "CredentialsIssueFailed", "IssueCredentials", "issuing the collector's client certificate failed: %v", err)
			return nil, err
		}
		secret = issued
	} else if err := keep(); err != nil {
		return nil, err
	}

	cert, problem := iss.CheckClient(secret.Data, p.Spec.InstanceID, r.policyRef(p), now)
	if problem != "" {
		setCondition(p, v1.ConditionCredentialsReady, metav1.ConditionFalse, ReasonIssueFailed, "the stored certificate is not usable: "+problem)
		return nil, fmt.Errorf("stored certificate is not usable after issuing: %s", problem)
	}
	return r.reportCredentials(p, secret, cert, period), nil
}

// reportCredentials puts the stored certificate in status, the CredentialsReady condition and
// the certificate metrics, and returns its renewal time.
func (r *TelemetryPolicyReconciler) reportCredentials(p *v1.TelemetryPolicy, secret *corev1.Secret, cert *x509.Certificate, period time.Duration) *time.Time {
	renewal := pki.RenewalTime(cert.NotBefore, cert.NotAfter, period)
	revision, _ := strconv.ParseInt(secret.Annotations[resources.AnnotationRevision], 10, 64)
	p.Status.Credentials = &v1.CredentialsStatus{
		Revision:        revision,
		SerialNumber:    pki.SerialHex(cert),
		NotBefore:       &metav1.Time{Time: cert.NotBefore},
		NotAfter:        &metav1.Time{Time: cert.NotAfter},
		RenewalTime:     &metav1.Time{Time: renewal},
		LastIssueReason: secret.Annotations[resources.AnnotationIssueReason],
	}
	if req := secret.Annotations[resources.AnnotationRotateRequest]; req != "" {
		p.Status.LastHandledRotateRequest = req
	}
	r.Metrics.CertExpiry.WithLabelValues(p.Namespace, p.Name).Set(float64(cert.NotAfter.Unix()))
	r.Metrics.CertRenewal.WithLabelValues(p.Namespace, p.Name).Set(float64(renewal.Unix()))
	setCondition(p, v1.ConditionCredentialsReady, metav1.ConditionTrue, ReasonCredentialsValid,
		fmt.Sprintf("certificate %s (revision %d) is valid until %s; next rotation at %s",
			shortHash(pki.SerialHex(cert)), revision, cert.NotAfter.UTC().Format(time.RFC3339), renewal.UTC().Format(time.RFC3339)))
	return &renewal
}

// issuerFloor is how long the issuer must still be valid for a certificate to be issued from it.
func (r *TelemetryPolicyReconciler) issuerFloor() time.Duration {
	if r.Options.IssuerMinRemaining > 0 {
		return r.Options.IssuerMinRemaining
	}
	return DefaultIssuerMinRemaining
}

// policyRef names p in its collector's certificate as the receiver's record names its owner: the
// receiver accepts the certificate only while p owns the instance's record.
func (r *TelemetryPolicyReconciler) policyRef(p *v1.TelemetryPolicy) pki.PolicyRef {
	return pki.PolicyRef{Cluster: r.Ledger.Cluster(), Namespace: p.Namespace, Name: p.Name, UID: string(p.UID)}
}

// repairIdentity re-issues the certificate of a policy that is suspended or stalled (which leave
// its credentials alone otherwise) when it names another policy, or none (issued before
// certificates named their policy): the receiver refuses such a certificate, so a collector still
// running would deliver nothing until the policy resumed. Nothing else of the credentials changes.
func (r *TelemetryPolicyReconciler) repairIdentity(ctx context.Context, st *reconcileState) error {
	p := st.policy
	iss := r.issuer()
	if iss == nil || st.ownedElsewhere || st.outside != nil || p.DeletionTimestamp != nil {
		return nil
	}
	secret := &corev1.Secret{}
	if err := r.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: resources.NamesFor(p.Name).Credentials}, secret); err != nil {
		return client.IgnoreNotFound(err)
	}
	now := r.Clock.Now()
	period := p.Spec.Credentials.RotationPeriodOrDefault()
	cert, problem := iss.CheckClient(secret.Data, p.Spec.InstanceID, r.policyRef(p), now)
	// (An expiring issuer issues nothing: IssuerExpiring says so.)
	if problem == pki.IssueWrongIdentity && !iss.ExpiresWithin(now, r.issuerFloor()) {
		issued, err := r.issue(ctx, st, iss, secret, true, rotationDecision{reason: pki.IssueWrongIdentity}, period, now)
		if isNameTaken(err) {
			return nil // not this policy's Secret: it configures no collector of this policy
		}
		if err != nil {
			return err
		}
		secret = issued
		cert, problem = iss.CheckClient(secret.Data, p.Spec.InstanceID, r.policyRef(p), now)
	}
	// Status describes the certificate in use, also when the write of the reconcile that
	// re-issued it lost a race.
	if problem == "" && (p.Status.Credentials == nil || p.Status.Credentials.SerialNumber != pki.SerialHex(cert)) {
		r.reportCredentials(p, secret, cert, period)
	}
	return nil
}

// issue creates a new key pair and certificate and stores it, replacing what was there.
func (r *TelemetryPolicyReconciler) issue(ctx context.Context, st *reconcileState, iss *pki.Issuer, secret *corev1.Secret, exists bool, dec rotationDecision, period time.Duration, now time.Time) (*corev1.Secret, error) {
	p := st.policy
	if exists {
		if err := mayTakeOver(secret, p); err != nil {
			return nil, err // a Secret of that name the operator did not make is not overwritten
		}
	}
	cc, err := iss.IssueClient(p.Spec.InstanceID, r.policyRef(p), period, now, r.Random)
	if err != nil {
		return nil, err
	}
	var revision int64
	if exists {
		revision, _ = strconv.ParseInt(secret.Annotations[resources.AnnotationRevision], 10, 64)
	}
	if p.Status.Credentials != nil && p.Status.Credentials.Revision > revision {
		revision = p.Status.Credentials.Revision
	}
	revision++

	names := resources.NamesFor(p.Name)
	if !exists {
		secret = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: names.Credentials, Namespace: p.Namespace}}
	}
	wrongType := exists && secret.Type != corev1.SecretTypeTLS
	secret.Type = corev1.SecretTypeTLS
	labels := resources.Labels(p, "credentials")
	if secret.Labels == nil {
		secret.Labels = map[string]string{}
	}
	for k, v := range labels {
		secret.Labels[k] = v
	}
	if secret.Annotations == nil {
		secret.Annotations = map[string]string{}
	}
	secret.Annotations[resources.AnnotationRevision] = strconv.FormatInt(revision, 10)
	secret.Annotations[resources.AnnotationIssueReason] = dec.reason
	if dec.request != "" {
		secret.Annotations[resources.AnnotationRotateRequest] = dec.request
	}
	secret.Data = map[string][]byte{pki.KeyCert: cc.CertPEM, pki.KeyKey: cc.KeyPEM, pki.KeyCA: iss.BundlePEM}
	if err := controllerutil.SetControllerReference(p, secret, r.Scheme); err != nil {
		return nil, err
	}
	if wrongType {
		// The type of a Secret is immutable; replace a tampered one.
		if err := r.Delete(ctx, secret, client.Preconditions{UID: ptr.To(secret.UID)}); err != nil && !apierrors.IsNotFound(err) {
			return nil, err
		}
		exists = false
	}
	if exists {
		err = r.Update(ctx, secret)
	} else {
		secret.ResourceVersion = ""
		err = r.Create(ctx, secret)
	}
	if err != nil {
		return nil, fmt.Errorf("storing the client certificate: %w", err)
	}
	r.Metrics.Rotations.WithLabelValues(dec.reason).Inc()
	log.FromContext(ctx).Info("issued collector client certificate", "reason", dec.reason, "revision", revision,
		"serial", pki.SerialHex(cc.Cert), "notAfter", cc.Cert.NotAfter.UTC())
	action := "CredentialsRotated"
	if dec.reason == pki.IssueInitial {
		action = "CredentialsIssued"
	}
	r.event(p, corev1.EventTypeNormal, action, "IssueCredentials", "issued client certificate %s (revision %d, reason %s), valid until %s",
		shortHash(pki.SerialHex(cc.Cert)), revision, dec.reason, cc.Cert.NotAfter.UTC().Format(time.RFC3339))
	return secret, nil
}

// refreshBundle replaces the CA bundle stored with a certificate that is still good after an
// issuer rotation: the collector (which re-reads it on every connection) trusts the new roots at
// once, and moves to a certificate from the new issuer at its next renewal.
func (r *TelemetryPolicyReconciler) refreshBundle(ctx context.Context, p *v1.TelemetryPolicy, iss *pki.Issuer, secret *corev1.Secret) (*corev1.Secret, error) {
	updated := secret.DeepCopy()
	updated.Data[pki.KeyCA] = iss.BundlePEM
	if err := r.Update(ctx, updated); err != nil {
		return nil, fmt.Errorf("replacing the CA bundle of the collector's credentials: %w", err)
	}
	log.FromContext(ctx).Info("replaced the CA bundle of the collector's credentials after an issuer rotation; the certificate is kept until its renewal")
	r.event(p, corev1.EventTypeNormal, "CABundleUpdated", "IssueCredentials", "the fleet issuer's CA bundle changed: the collector's bundle was replaced, its certificate is kept until renewal")
	return updated, nil
}

// issuer is the fleet issuer to sign with now.
func (r *TelemetryPolicyReconciler) issuer() *pki.Issuer {
	if r.Issuers != nil {
		return r.Issuers.Current()
	}
	return r.Issuer
}

// reconcilePseudonymKey creates the per-instance pseudonym key once. It is never rotated and
// survives tier changes, including Off, so pseudonyms stay stable; it goes with the policy.
func (r *TelemetryPolicyReconciler) reconcilePseudonymKey(ctx context.Context, st *reconcileState) error {
	p := st.policy
	name := resources.NamesFor(p.Name).PseudonymKey
	key := client.ObjectKey{Namespace: p.Namespace, Name: name}
	secret := &corev1.Secret{}
	err := r.Get(ctx, key, secret)
	if apierrors.IsNotFound(err) && p.Status.Credentials != nil {
		// The policy ran before: ask the API server, which may hold a key the label-filtered
		// cache does not show (labels edited, or the cache lags).
		err = r.APIReader.Get(ctx, key, secret)
	}
	if apierrors.IsNotFound(err) {
		// Create; a create cannot replace a key it has not seen, which is read and kept below.
		buf := make([]byte, resources.PseudonymKeyLen)
		if _, err := rand.Read(buf); err != nil {
			return err
		}
		created := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: p.Namespace, Labels: resources.Labels(p, "pseudonym-key")},
			Type:       corev1.SecretTypeOpaque,
			Immutable:  ptr.To(true),
			Data:       map[string][]byte{resources.PseudonymKeyKey: buf},
		}
		if err := controllerutil.SetControllerReference(p, created, r.Scheme); err != nil {
			return err
		}
		createErr := r.Create(ctx, created)
		if createErr == nil {
			r.event(p, corev1.EventTypeNormal, "PseudonymKeyCreated", "CreatePseudonymKey", "created the instance's pseudonym key %s", name)
			return nil
		}
		// Refused by a key the cache has not seen, or before the API server looked for one (a
		// quota, a webhook): judge the one it holds; if there is none, the refusal stands.
		if err = r.APIReader.Get(ctx, key, secret); apierrors.IsNotFound(err) {
			return fmt.Errorf("creating the pseudonym key: %w", createErr)
		}
	}
	if err != nil {
		return err
	}
	if err := mayTakeOver(secret, p); err != nil {
		return err // someone else's Secret: not ours to judge, nor to tell them to delete
	}
	if len(secret.Data[resources.PseudonymKeyKey]) != resources.PseudonymKeyLen {
		// Never replace a key silently: pseudonyms would change. Ask a human.
		st.stall("PseudonymKeyInvalid", fmt.Sprintf("Secret %s must hold %d bytes in key %q; delete it to have a new key generated (pseudonyms will change)",
			name, resources.PseudonymKeyLen, resources.PseudonymKeyKey))
		return nil
	}
	return r.ensureSecretMeta(ctx, p, secret, "pseudonym-key")
}

// ensureSecretMeta restores the labels and owner reference of an owned Secret without touching
// its data.
func (r *TelemetryPolicyReconciler) ensureSecretMeta(ctx context.Context, p *v1.TelemetryPolicy, secret *corev1.Secret, component string) error {
	desired := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secret.Name, Namespace: secret.Namespace, Labels: resources.Labels(p, component)}}
	if err := controllerutil.SetControllerReference(p, desired, r.Scheme); err != nil {
		return err
	}
	if metaInSync(desired, secret) {
		return nil
	}
	if err := mayTakeOver(secret, p); err != nil {
		return err
	}
	mergeMeta(desired, secret)
	return r.Update(ctx, secret)
}
