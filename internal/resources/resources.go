/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package resources builds the desired Kubernetes objects the operator owns for one
// TelemetryPolicy. It is pure: no API calls, no clock.
package resources

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	telemetryv1alpha1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/internal/collectorconfig"
)

// Label keys and values on every owned object. The manager's cache selects Secrets and
// ConfigMaps by LabelManagedBy, so it never sees objects it does not manage.
const (
	LabelName      = "app.kubernetes.io/name"
	LabelInstance  = "app.kubernetes.io/instance"
	LabelComponent = "app.kubernetes.io/component"
	LabelPartOf    = "app.kubernetes.io/part-of"
	LabelManagedBy = "app.kubernetes.io/managed-by"
	LabelPolicy    = "telemetry.sourcegraph.com/policy"

	ManagedByValue = "telemetry-operator"
	NameValue      = "telemetry-collector"
)

// Annotations the operator sets on owned objects.
const (
	// AnnotationConfigHash on the pod template rolls the collector whenever its configuration changes.
	AnnotationConfigHash = "telemetry.sourcegraph.com/config-hash"
	// AnnotationTier on the pod template records the tier the pod's configuration allows.
	AnnotationTier = "telemetry.sourcegraph.com/tier"
	// AnnotationRevision on the credentials Secret counts issued certificates.
	AnnotationRevision = "telemetry.sourcegraph.com/revision"
	// AnnotationRotateRequest on the credentials Secret records the rotate request it answered.
	AnnotationRotateRequest = "telemetry.sourcegraph.com/rotate-request"
	// AnnotationIssueReason on the credentials Secret says why it was issued.
	AnnotationIssueReason = "telemetry.sourcegraph.com/issue-reason"
)

// Keys within owned objects.
const (
	ConfigKey       = collectorconfig.ConfigFileName
	StateKey        = collectorconfig.ProgressKey
	PseudonymKeyKey = collectorconfig.PseudonymKey
	PseudonymKeyLen = 32
	MetricsPort     = 9090
	ContainerName   = "collector"
	collectorUID    = 65532
)

// Names returns the names of the objects owned by the policy called policyName.
type Names struct {
	Config, State, ServiceAccount, Role, RoleBinding, Deployment, Credentials, PseudonymKey string
}

// NamesFor derives owned object names from the policy's name.
func NamesFor(policyName string) Names {
	c := policyName + "-collector"
	return Names{
		Config:         c + "-config",
		State:          c + "-state",
		ServiceAccount: c,
		Role:           c,
		RoleBinding:    c,
		Deployment:     c,
		Credentials:    c + "-tls",
		PseudonymKey:   policyName + "-pseudonym-key",
	}
}

// Labels returns the labels of an owned object of the given component.
func Labels(p *telemetryv1alpha1.TelemetryPolicy, component string) map[string]string {
	return map[string]string{
		LabelName:      NameValue,
		LabelInstance:  p.Spec.InstanceID,
		LabelComponent: component,
		LabelPartOf:    "telemetry-operator",
		LabelManagedBy: ManagedByValue,
		LabelPolicy:    p.Name,
	}
}

func meta(p *telemetryv1alpha1.TelemetryPolicy, name, component string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: p.Namespace, Labels: Labels(p, component)}
}

// CollectorConfig returns the configuration for the collector at the given tier, filtering by
// the consent timeline (of which the newest collectorconfig.MaxConsentTransitions are kept).
func CollectorConfig(p *telemetryv1alpha1.TelemetryPolicy, tier telemetryv1alpha1.ConsentTier, timeline consentv1.Timeline) collectorconfig.Config {
	n := NamesFor(p.Name)
	c := collectorconfig.Config{
		InstanceID: p.Spec.InstanceID,
		Tier:       tier,
		Consent:    collectorTimeline(timeline),
		State:      collectorconfig.StateRef{Namespace: p.Namespace, ConfigMap: n.State},
	}
	if tier == telemetryv1alpha1.TierOff {
		return c
	}
	exp := p.Spec.Export
	if exp == nil {
		exp = &telemetryv1alpha1.ExportSpec{}
	}
	c.Endpoint = exp.Endpoint
	c.Interval = exp.IntervalOrDefault().String()
	c.BatchSize = int(exp.BatchSize)
	if c.BatchSize == 0 {
		c.BatchSize = 5000
	}
	c.TLS = collectorconfig.TLSFiles{
		CertFile: collectorconfig.TLSDir + "/tls.crt",
		KeyFile:  collectorconfig.TLSDir + "/tls.key",
		CAFile:   collectorconfig.TLSDir + "/ca.crt",
	}
	if exp.CASecretRef != nil {
		c.TLS.CAFile = collectorconfig.ReceiverCADir + "/" + collectorconfig.ReceiverCAFile
	}
	c.PseudonymKeyFile = collectorconfig.PseudonymDir + "/" + collectorconfig.PseudonymKey
	c.DatabaseDSNFile = collectorconfig.DatabaseDir + "/" + collectorconfig.DatabaseDSNFile
	return c
}

// collectorTimeline keeps what the collector filters by (when, which tier) of the newest
// transitions, and whether the receiver has recorded each (the collector holds back aggregates
// of days only an unrecorded lowering lets publish): the audit fields would only change the
// configuration's hash, and so restart the collector, without changing what it may send. A
// recorded transition is marked with its own time, the same whether it was written from the
// receiver's record or from the copy in status (which keeps when it was recorded in seconds).
// A trial's until is written out as the CriticalOnly transition it means (Effective): the
// collector ends the window there with no one recording the expiry, and one that knows nothing
// of until reads it right too.
func collectorTimeline(t consentv1.Timeline) consentv1.Timeline {
	t = t.Effective().Tail(collectorconfig.MaxConsentTransitions)
	out := make(consentv1.Timeline, len(t))
	for i, tr := range t {
		out[i] = consentv1.Transition{At: tr.At.UTC(), Tier: tr.Tier}
		if tr.RecordedAt != nil {
			out[i].RecordedAt = &out[i].At
		}
	}
	return out
}

// ConfigMap returns the collector's configuration ConfigMap holding rendered.
func ConfigMap(p *telemetryv1alpha1.TelemetryPolicy, rendered []byte) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		ObjectMeta: meta(p, NamesFor(p.Name).Config, "config"),
		Data:       map[string]string{ConfigKey: string(rendered)},
	}
}

// StateConfigMap returns the (initially empty) object the collector reports progress to.
func StateConfigMap(p *telemetryv1alpha1.TelemetryPolicy) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		ObjectMeta: meta(p, NamesFor(p.Name).State, "state"),
		Data:       map[string]string{StateKey: "{}"},
	}
}

// Hash returns the hex SHA-256 of data.
func Hash(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// ConfigHash is the hash of a rendered collector configuration that its pods carry
// (AnnotationConfigHash): of everything but the marks of which transitions the receiver has
// recorded. Those change when a lowering already enforced is recorded, and need no new pod: the
// collector re-reads the file before every batch, and a mark it has yet to see only holds its
// aggregates back a little longer. Data that does not parse is hashed whole.
func ConfigHash(data []byte) string {
	c, err := collectorconfig.Parse(bytes.NewReader(data))
	if err != nil {
		return Hash(data)
	}
	for i := range c.Consent {
		c.Consent[i].RecordedAt = nil
	}
	out, err := collectorconfig.Render(*c)
	if err != nil {
		return Hash(data)
	}
	return Hash(out)
}

// ServiceAccount returns the collector's ServiceAccount.
func ServiceAccount(p *telemetryv1alpha1.TelemetryPolicy) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: meta(p, NamesFor(p.Name).ServiceAccount, "collector")}
}

// Role lets the collector read and update its own state ConfigMap and nothing else.
func Role(p *telemetryv1alpha1.TelemetryPolicy) *rbacv1.Role {
	return &rbacv1.Role{
		ObjectMeta: meta(p, NamesFor(p.Name).Role, "collector"),
		Rules: []rbacv1.PolicyRule{{
			APIGroups:     []string{""},
			Resources:     []string{"configmaps"},
			ResourceNames: []string{NamesFor(p.Name).State},
			Verbs:         []string{"get", "update"},
		}},
	}
}

// RoleBinding binds Role to the collector's ServiceAccount.
func RoleBinding(p *telemetryv1alpha1.TelemetryPolicy) *rbacv1.RoleBinding {
	n := NamesFor(p.Name)
	return &rbacv1.RoleBinding{
		ObjectMeta: meta(p, n.RoleBinding, "collector"),
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: n.Role},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: n.ServiceAccount, Namespace: p.Namespace}},
	}
}

// DefaultResources are the collector's requests and limits unless the policy overrides them.
func DefaultResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("128Mi")},
	}
}

// CollectorResources returns the collector container's resources: the defaults, with each
// request and limit the policy names in place of the default one. What it leaves out keeps its
// default, so the memory limit cannot be dropped (an empty override used to remove every limit);
// a request above a default limit it did not name raises that limit to the request, and a limit
// below a default request it did not name lowers that request to the limit (as the API server
// does for a limit named without a request), so no override leaves a request above its limit,
// which the API server would refuse for every pod.
func CollectorResources(override *corev1.ResourceRequirements) corev1.ResourceRequirements {
	res := DefaultResources()
	if override == nil {
		return res
	}
	for name, q := range override.Requests {
		res.Requests[name] = q.DeepCopy()
	}
	for name, q := range override.Limits {
		res.Limits[name] = q.DeepCopy()
	}
	for name, q := range res.Requests {
		l, limited := res.Limits[name]
		if !limited || q.Cmp(l) <= 0 {
			continue
		}
		_, limitNamed := override.Limits[name]
		_, requestNamed := override.Requests[name]
		switch {
		case !limitNamed:
			res.Limits[name] = q.DeepCopy()
		case !requestNamed:
			res.Requests[name] = l.DeepCopy()
		}
	}
	return res
}

// Deployment returns the collector Deployment: one replica, Recreate, hardened, with configHash on
// the pod template so any configuration change replaces the pod. image is the default collector
// image, used unless the policy names one.
func Deployment(p *telemetryv1alpha1.TelemetryPolicy, image, configHash string, tier telemetryv1alpha1.ConsentTier) *appsv1.Deployment {
	n := NamesFor(p.Name)
	if p.Spec.Collector.Image != "" {
		image = p.Spec.Collector.Image
	}
	res := CollectorResources(p.Spec.Collector.Resources)
	selector := map[string]string{LabelName: NameValue, LabelInstance: p.Spec.InstanceID, LabelPolicy: p.Name}
	podLabels := Labels(p, "collector")

	volumes := []corev1.Volume{
		{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: n.Config}, DefaultMode: ptr.To[int32](0o444)}}},
		{Name: "tls", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: n.Credentials, DefaultMode: ptr.To[int32](0o440)}}},
		{Name: "pseudonym-key", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: n.PseudonymKey, DefaultMode: ptr.To[int32](0o440)}}},
		{Name: "database", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: p.Spec.Source.DatabaseSecretRef.Name, DefaultMode: ptr.To[int32](0o440),
			Items: []corev1.KeyToPath{{Key: p.Spec.Source.DatabaseSecretRef.Key, Path: collectorconfig.DatabaseDSNFile}}}}},
		{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: ptr.To(resource.MustParse("16Mi"))}}},
	}
	mounts := []corev1.VolumeMount{
		{Name: "config", MountPath: collectorconfig.ConfigDir, ReadOnly: true},
		{Name: "tls", MountPath: collectorconfig.TLSDir, ReadOnly: true},
		{Name: "pseudonym-key", MountPath: collectorconfig.PseudonymDir, ReadOnly: true},
		{Name: "database", MountPath: collectorconfig.DatabaseDir, ReadOnly: true},
		{Name: "tmp", MountPath: "/tmp"},
	}
	if p.Spec.Export != nil && p.Spec.Export.CASecretRef != nil {
		ca := p.Spec.Export.CASecretRef
		volumes = append(volumes, corev1.Volume{Name: "receiver-ca", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: ca.Name, DefaultMode: ptr.To[int32](0o444),
			Items: []corev1.KeyToPath{{Key: ca.Key, Path: collectorconfig.ReceiverCAFile}}}}})
		mounts = append(mounts, corev1.VolumeMount{Name: "receiver-ca", MountPath: collectorconfig.ReceiverCADir, ReadOnly: true})
	}
	probe := func(path string, period int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString("metrics")}},
			PeriodSeconds:    period,
			TimeoutSeconds:   2,
			FailureThreshold: 3,
			SuccessThreshold: 1,
		}
	}
	return &appsv1.Deployment{
		ObjectMeta: meta(p, n.Deployment, "collector"),
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: selector},
			// Recreate: the old pod is gone before the new one starts, so two collectors never
			// run side by side and an old, higher-tier configuration never outlives a downgrade.
			Strategy:             appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			RevisionHistoryLimit: ptr.To[int32](3),
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      podLabels,
					Annotations: map[string]string{AnnotationConfigHash: configHash, AnnotationTier: string(tier)},
				},
				Spec: corev1.PodSpec{
					ServiceAccountName:            n.ServiceAccount,
					AutomountServiceAccountToken:  ptr.To(true),
					TerminationGracePeriodSeconds: ptr.To[int64](30),
					EnableServiceLinks:            ptr.To(false),
					Volumes:                       volumes,
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot:   ptr.To(true),
						RunAsUser:      ptr.To[int64](collectorUID),
						RunAsGroup:     ptr.To[int64](collectorUID),
						FSGroup:        ptr.To[int64](collectorUID),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					Containers: []corev1.Container{{
						Name:            ContainerName,
						Image:           image,
						ImagePullPolicy: corev1.PullIfNotPresent,
						Args:            []string{"--config=" + collectorconfig.ConfigDir + "/" + collectorconfig.ConfigFileName},
						Ports:           []corev1.ContainerPort{{Name: "metrics", ContainerPort: MetricsPort, Protocol: corev1.ProtocolTCP}},
						Resources:       res,
						LivenessProbe:   probe("/healthz", 20),
						ReadinessProbe:  probe("/readyz", 10),
						VolumeMounts:    mounts,
						SecurityContext: &corev1.SecurityContext{
							RunAsNonRoot:             ptr.To(true),
							Privileged:               ptr.To(false),
							AllowPrivilegeEscalation: ptr.To(false),
							ReadOnlyRootFilesystem:   ptr.To(true),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
							SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
						},
						TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
					}},
				},
			},
		},
	}
}
