/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package telemetryctl

import (
	"strings"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

// Advice is what a condition reason means and what to do about it: the README's troubleshooting
// table, in the tool.
type Advice struct {
	Means string `json:"means"`
	Do    string `json:"do"`
}

// adviceByReason holds the troubleshooting table, by condition reason (the reasons are unique
// across the condition types that use them, except where a key names the type).
var adviceByReason = map[string]Advice{
	"BasisNotEligible":         {"EventLevel is declared on a basis without the updated terms; running CriticalOnly", "renew under the updated Cloud ToS, or declare CriticalOnly"},
	"ApprovalMissing":          {"the CRM approval flag or the CRM reference is missing; running CriticalOnly", "set spec.contract.userLevelEventDataApproved and spec.contract.reference from the CRM"},
	"TermsOutdated":            {"contract.cloudTermsVersion is older than the manager's --min-cloud-terms-version; running CriticalOnly", "record the newer terms version once signed"},
	"TrialExpired":             {"the trial's contract.expiresAt passed; running CriticalOnly", "extend contract.expiresAt or move the basis to a contract"},
	"NotYetAccepted":           {"contract.acceptedAt lies in the future", "nothing to do: EventLevel starts at that moment"},
	"RollingOut":               {"the new configuration is not running yet (a downgrade is not yet in effect)", "wait; check the collector pod's events and logs (kubectl telemetry status NAME)"},
	"OldCollectorRunning":      {"a collector with an older configuration is still running", "wait; check the collector pod's events and logs (kubectl telemetry status NAME)"},
	"CollectorStarting":        {"the collector pod is starting", "wait; check the collector pod's events and logs"},
	"CollectorMissing":         {"no collector pod runs the current configuration", "check the collector Deployment's events (kubectl telemetry status NAME)"},
	"CollectorStopping":        {"consent is Off: waiting for the collector pods to be gone", "wait; check for stuck pods or finalizers"},
	"CollectorPodsRefused":     {"the collector's pod cannot be created (quota, LimitRange, Pod Security admission, contradictory resources); the rollout stalls at its progress deadline", "kubectl describe deploy -n NS NAME-collector; fix spec.collector.resources or the namespace's quota"},
	"ProgressDeadlineExceeded": {"the collector rollout is stuck (image, crash loop)", "kubectl describe deploy -n NS NAME-collector; the collector's logs"},
	"IssuerUnavailable":        {"the manager has no usable fleet issuer", "fix the issuer Secret (kubectl telemetry check); a refused change shows as an IssuerRefused Event on the Secret"},
	"IssuerExpiring":           {"the fleet issuer has less than --issuer-min-remaining left; no certificate is issued from it, the collector keeps the one it has", "rotate the issuer Secret (no restart needed)"},
	"IssueFailed":              {"issuing or storing the collector's certificate failed", "the manager's logs; telemetry_credentials_rotation_failures_total"},
	"InvalidSpec":              {"the policy lacks source or endpoint for its tier", "fix the spec"},
	"PseudonymKeyInvalid":      {"the pseudonym key Secret was altered", "delete it to get a new key (pseudonyms change)"},
	"NoProgressYet":            {"the receiver has not acknowledged a batch, or answered an idle collector, yet", "status.export.lastError; the receiver's reachability and /readyz; the collector's /metrics"},
	"NoRecentSuccess":          {"the receiver has not acknowledged a batch, or answered an idle collector, recently", "status.export.lastError; the receiver's reachability and /readyz; the collector's /metrics"},
	"Suspended":                {"spec.suspend is set: no new configuration, no rotation (downgrades are still enforced)", "kubectl telemetry resume NAME"},
	"ReceiverUnavailable":      {"the operator cannot reach the receiver's consent ledger; a downgrade is already enforced on the collector, an upgrade waits, a new policy runs nothing", "kubectl telemetry check; the manager's --receiver-url, the receiver's /readyz, network policy; the operator retries every --ledger-retry"},
	"InstanceOwnedElsewhere":   {"another policy (maybe in another cluster) owns this instanceID at the receiver, or it is released or reserved for another namespace, or the receiver requires a reservation first", "fix the instanceID, delete the other policy, or receiver consent release --instance ID --to CLUSTER/NAMESPACE (a new instance: receiver consent reserve --instance ID --to CLUSTER/NAMESPACE)"},
	"LedgerRefused":            {"the receiver refused the consent change", "the condition message says why"},
	"ConsentChangePending":     {"a consent change is decided but not in force yet", "wait for the rollout; see Synced and ConsentRecorded"},
	"ErasureCompleted/Pending": {"the receiver has not verified the erasure yet", "wait; status.erasure.message"},
	"ErasureCompleted/Refused": {"the receiver refused the erasure (e.g. a reused requestID)", "use a new spec.erasure.requestID; status.erasure.message"},
	"NameTaken":                {"an object with a name the operator derives for the policy exists and was not made by it for this policy", "rename or delete that object, or rename the policy"},
	"NamespaceNotOnboarded":    {"the namespace lacks the onboarding label; nothing was created", "bind telemetry-operator-tenant-role in the namespace, then label it telemetry.sourcegraph.com/onboarded=true"},
	"ManagerNotPermitted":      {"the namespace is labelled but the manager lacks the permissions the message lists", "create the RoleBinding the message names; then kubectl telemetry reconcile NAME"},
	"ImageNotAllowed":          {"spec.collector.image is not on the manager's --allowed-collector-images; nothing was created", "remove the override, or have the fleet operator allow it"},
	"EndpointNotAllowed":       {"spec.export.endpoint is not on the manager's --allowed-endpoints; nothing was created", "remove the override, or have the fleet operator allow it"},
	"ReconcileError":           {"a reconcile step failed", "the condition message and the manager's logs; kubectl telemetry reconcile NAME to retry at once"},
	"Progressing":              {"the operator is converging the policy", "wait"},
}

// adviceByError covers what shows in status.export.lastError rather than in a condition.
var adviceByError = []struct {
	contains string
	advice   Advice
}{
	{"ConsentRefused", Advice{"the receiver has no consent for what this collector sends (a stale collector, or the ledger lost)", "receiver consent show --instance ID; kubectl telemetry reconcile NAME"}},
	{"RateLimited", Advice{"the receiver is slowing this instance down", "nothing: the collector retries after Retry-After; if it persists, the receiver's receiver_rejections_total{reason}"}},
	{"ReceiverBusy", Advice{"the receiver holds as many bodies as its budget allows", "nothing: the collector retries after Retry-After; if it persists, the receiver's receiver_rejections_total{reason}"}},
}

// adviceFor returns the advice for a condition of the given type and reason, if the table has it.
func adviceFor(condType, reason string) (Advice, bool) {
	if a, ok := adviceByReason[condType+"/"+reason]; ok {
		return a, true
	}
	a, ok := adviceByReason[reason]
	return a, ok
}

// adviceForExport returns advice for a collector's last error, if the table has it.
func adviceForExport(e *v1.ExportStatus) (Advice, bool) {
	if e == nil || e.LastError == "" {
		return Advice{}, false
	}
	for _, a := range adviceByError {
		if strings.Contains(e.LastError, a.contains) {
			return a.advice, true
		}
	}
	return Advice{}, false
}
