/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package telemetryctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
)

// Summary is one policy's line of `status`, and its JSON/YAML form.
type Summary struct {
	Namespace     string           `json:"namespace"`
	Name          string           `json:"name"`
	Instance      string           `json:"instance"`
	Basis         v1.ContractBasis `json:"basis,omitempty"`
	DeclaredTier  v1.ConsentTier   `json:"declaredTier"`
	EffectiveTier v1.ConsentTier   `json:"effectiveTier,omitempty"`
	// Why says why the enforced tier is what it is: the ConsentEligible reason when the contract
	// lowers the declared tier, the Ready reason while a change is not in force, else AsDeclared.
	Why       string `json:"why"`
	Ready     string `json:"ready"`
	Reason    string `json:"reason,omitempty"`
	Message   string `json:"message,omitempty"`
	Suspended bool   `json:"suspended,omitempty"`

	CredentialsNotAfter *metav1.Time `json:"credentialsNotAfter,omitempty"`
	CredentialsRenewal  *metav1.Time `json:"credentialsRenewal,omitempty"`
	LastExport          *metav1.Time `json:"lastExport,omitempty"`
	LagSeconds          *int64       `json:"lagSeconds,omitempty"`
	EventsExported      int64        `json:"eventsExported,omitempty"`
	EventsDropped       int64        `json:"eventsDropped,omitempty"`
	LastError           string       `json:"lastError,omitempty"`
	Erasure             string       `json:"erasure,omitempty"`

	// Problems lists what is wrong and what to do (only with --problems, or in a single-policy view).
	Problems []Problem `json:"problems,omitempty"`
}

// Problem is one thing that keeps a policy from being Ready or exporting.
type Problem struct {
	Condition string  `json:"condition"`
	Status    string  `json:"status"`
	Reason    string  `json:"reason"`
	Message   string  `json:"message,omitempty"`
	Advice    *Advice `json:"advice,omitempty"`
}

// Summarize condenses a policy into its status line.
func Summarize(p *v1.TelemetryPolicy) Summary {
	s := Summary{
		Namespace: p.Namespace, Name: p.Name, Instance: p.Spec.InstanceID,
		DeclaredTier: p.Spec.Consent.Tier, EffectiveTier: p.Status.EffectiveTier,
		Suspended: p.Spec.Suspend, Ready: "Unknown",
	}
	if p.Spec.Contract != nil {
		s.Basis = p.Spec.Contract.Basis
	}
	if c := meta.FindStatusCondition(p.Status.Conditions, v1.ConditionReady); c != nil {
		s.Ready, s.Reason, s.Message = string(c.Status), c.Reason, c.Message
	}
	eligible := meta.FindStatusCondition(p.Status.Conditions, v1.ConditionConsentEligible)
	switch {
	case eligible != nil && eligible.Status == metav1.ConditionFalse:
		s.Why = eligible.Reason
	case s.EffectiveTier != s.DeclaredTier && s.Ready != string(metav1.ConditionTrue) && s.Reason != "":
		s.Why = s.Reason
	case s.EffectiveTier == "":
		s.Why = "NotEnforcedYet"
	default:
		s.Why = "AsDeclared"
	}
	if c := p.Status.Credentials; c != nil {
		s.CredentialsNotAfter, s.CredentialsRenewal = c.NotAfter, c.RenewalTime
	}
	if e := p.Status.Export; e != nil {
		s.LastExport = e.LastSuccessTime
		s.EventsExported, s.EventsDropped, s.LastError = e.EventsExported, e.EventsDropped, e.LastError
		if e.LastSuccessTime != nil || e.LagSeconds != 0 {
			lag := e.LagSeconds
			s.LagSeconds = &lag
		}
	}
	if e := p.Status.Erasure; e != nil {
		s.Erasure = e.RequestID + " " + string(e.Phase)
	} else if p.Spec.Erasure != nil {
		s.Erasure = p.Spec.Erasure.RequestID + " " + string(v1.ErasurePending)
	}
	return s
}

// ProblemsOf lists what keeps the policy from being Ready and exporting, each with the
// troubleshooting table's advice where it has some. A Ready, exporting policy has none.
func ProblemsOf(p *v1.TelemetryPolicy) []Problem {
	var out []Problem
	add := func(c *metav1.Condition) {
		pr := Problem{Condition: c.Type, Status: string(c.Status), Reason: c.Reason, Message: c.Message}
		if a, ok := adviceFor(c.Type, c.Reason); ok {
			pr.Advice = &a
		}
		out = append(out, pr)
	}
	ready := meta.FindStatusCondition(p.Status.Conditions, v1.ConditionReady)
	switch {
	case ready == nil:
		out = append(out, Problem{Condition: v1.ConditionReady, Status: "Unknown", Reason: "NotReconciled",
			Message: "the operator has not reported on this policy", Advice: &Advice{
				Means: "no manager has reconciled the policy yet, or none is running",
				Do:    "kubectl telemetry check; is the namespace onboarded?"}})
	case ready.Status != metav1.ConditionTrue:
		add(ready)
	}
	// The concern behind Ready, when it is a different condition that says more.
	for _, t := range []string{v1.ConditionStalled, v1.ConditionConsentRecorded, v1.ConditionSynced, v1.ConditionCredentialsReady, v1.ConditionErasureCompleted} {
		c := meta.FindStatusCondition(p.Status.Conditions, t)
		bad := c != nil && ((t == v1.ConditionStalled && c.Status == metav1.ConditionTrue) || (t != v1.ConditionStalled && c.Status == metav1.ConditionFalse))
		if bad && (ready == nil || c.Reason != ready.Reason) {
			add(c)
		}
	}
	// Export is not part of Ready, but a collector that stopped delivering is a problem.
	if c := meta.FindStatusCondition(p.Status.Conditions, v1.ConditionExporting); c != nil && c.Status == metav1.ConditionFalse &&
		p.Status.EffectiveTier != v1.TierOff && p.Status.EffectiveTier != "" {
		add(c)
	}
	if a, ok := adviceForExport(p.Status.Export); ok {
		out = append(out, Problem{Condition: "Export", Status: "Error", Reason: "LastError", Message: p.Status.Export.LastError, Advice: &a})
	}
	return out
}

type statusOptions struct {
	*Options
	allNamespaces bool
	output        string
	problems      bool
	events        int
}

func newStatusCommand(o *Options) *cobra.Command {
	so := &statusOptions{Options: o}
	cmd := &cobra.Command{
		Use:   "status [NAME | -A]",
		Short: "Show each instance's telemetry: tier declared and enforced, credentials, export, erasure",
		Long: `status prints one line per TelemetryPolicy: the tier declared and the tier enforced and
why, whether it is Ready, when its credentials expire, its last export and lag, and its
erasure. With NAME it shows the policy as a tree: its owned objects and their state, the
collector pod, the conditions and recent Events. --problems lists only the policies that
are not Ready or not exporting, with the reason and what to do.`,
		Example: `  kubectl telemetry status -A
  kubectl telemetry status -A --problems
  kubectl telemetry status -n acme acme
  kubectl telemetry status -A -o json`,
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: o.completePolicyNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch so.output {
			case "", "wide", "json", "yaml":
			default:
				return fmt.Errorf("--output %q: use wide, json or yaml", so.output)
			}
			if len(args) == 1 {
				if so.allNamespaces {
					return fmt.Errorf("NAME and --all-namespaces exclude each other: name the namespace with -n")
				}
				return so.runOne(cmd.Context(), args[0])
			}
			return so.runList(cmd.Context())
		},
	}
	cmd.Flags().BoolVarP(&so.allNamespaces, "all-namespaces", "A", false, "List the policies of every namespace.")
	cmd.Flags().StringVarP(&so.output, "output", "o", "", "Output format: wide, json or yaml.")
	cmd.Flags().BoolVar(&so.problems, "problems", false, "Only the policies that are not Ready or not exporting, with the reason and what to do.")
	cmd.Flags().IntVar(&so.events, "events", 10, "How many recent Events the single-policy view shows.")
	return cmd
}

func (so *statusOptions) runList(ctx context.Context) error {
	c, err := so.Client()
	if err != nil {
		return err
	}
	var opts []client.ListOption
	if !so.allNamespaces {
		ns, err := so.Namespace()
		if err != nil {
			return err
		}
		opts = append(opts, client.InNamespace(ns))
	}
	var list v1.TelemetryPolicyList
	if err := c.List(ctx, &list, opts...); err != nil {
		return fmt.Errorf("listing TelemetryPolicies: %w", err)
	}
	sort.Slice(list.Items, func(i, j int) bool {
		a, b := list.Items[i], list.Items[j]
		return a.Namespace < b.Namespace || (a.Namespace == b.Namespace && a.Name < b.Name)
	})
	items := make([]Summary, 0, len(list.Items))
	for i := range list.Items {
		s := Summarize(&list.Items[i])
		if so.problems {
			s.Problems = ProblemsOf(&list.Items[i])
			if len(s.Problems) == 0 {
				continue
			}
		}
		items = append(items, s)
	}
	out := so.Streams.Out
	switch so.output {
	case "json", "yaml":
		return encode(out, so.output, map[string]any{"items": items})
	}
	if len(items) == 0 {
		if so.problems {
			fprintf(out, "No problems: every policy is Ready and exporting.\n")
		} else {
			fprintf(out, "No TelemetryPolicies found.\n")
		}
		return nil
	}
	if so.problems {
		so.printProblems(out, items)
		return nil
	}
	so.printTable(out, items)
	return nil
}

func (so *statusOptions) printTable(out io.Writer, items []Summary) {
	now := so.Now()
	w := tabwriter.NewWriter(out, 0, 0, 3, ' ', 0)
	header := []string{"NAME", "INSTANCE", "DECLARED", "ENFORCED", "WHY", "READY", "CREDENTIALS", "LAST EXPORT", "LAG", "ERASURE"}
	if so.allNamespaces {
		header = append([]string{"NAMESPACE"}, header...)
	}
	if so.output == "wide" {
		header = append(header, "BASIS", "SUSPENDED", "EXPORTED", "DROPPED", "LAST ERROR")
	}
	fprintf(w, "%s\n", strings.Join(header, "\t"))
	for _, s := range items {
		ready := s.Ready
		if s.Ready != string(metav1.ConditionTrue) && s.Reason != "" {
			ready += " (" + s.Reason + ")"
		}
		row := []string{s.Name, s.Instance, string(s.DeclaredTier), orDash(string(s.EffectiveTier)), s.Why, ready,
			expiry(now, s.CredentialsNotAfter), ago(now, s.LastExport), lag(s.LagSeconds), orDash(s.Erasure)}
		if so.allNamespaces {
			row = append([]string{s.Namespace}, row...)
		}
		if so.output == "wide" {
			row = append(row, orDash(string(s.Basis)), fmt.Sprint(s.Suspended), fmt.Sprint(s.EventsExported),
				fmt.Sprint(s.EventsDropped), orDash(oneLine(s.LastError, 60)))
		}
		fprintf(w, "%s\n", strings.Join(row, "\t"))
	}
	_ = w.Flush()
}

func (so *statusOptions) printProblems(out io.Writer, items []Summary) {
	for _, s := range items {
		fprintf(out, "%s/%s (instance %s, declared %s, enforced %s)\n", s.Namespace, s.Name, s.Instance, s.DeclaredTier, orDash(string(s.EffectiveTier)))
		for _, p := range s.Problems {
			fprintf(out, "  %s=%s %s: %s\n", p.Condition, p.Status, p.Reason, oneLine(p.Message, 300))
			if p.Advice != nil {
				fprintf(out, "    means: %s\n    do:    %s\n", p.Advice.Means, p.Advice.Do)
			}
		}
	}
}

// encode writes v as JSON or YAML, its strings cleaned: one hostile string must neither reach
// the terminal nor make the encoder fail for every other item.
func encode(out io.Writer, format string, v any) error {
	v, err := sanitized(v)
	if err != nil {
		return err
	}
	var b []byte
	if format == "json" {
		b, err = json.MarshalIndent(v, "", "  ")
		b = append(b, '\n')
	} else {
		b, err = yaml.Marshal(v)
	}
	if err != nil {
		return err
	}
	_, err = out.Write(b)
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps a message on one line and at most n runes, with control and bidirectional
// formatting characters replaced: messages come from the cluster (some from a collector, which is
// not trusted) and must not steer the terminal they are printed on.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(clean(s)), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func ago(now time.Time, t *metav1.Time) string {
	if t == nil {
		return "never"
	}
	return humanDuration(now.Sub(t.Time)) + " ago"
}

func expiry(now time.Time, t *metav1.Time) string {
	if t == nil {
		return "-"
	}
	d := t.Sub(now)
	if d <= 0 {
		return "EXPIRED " + humanDuration(-d) + " ago"
	}
	return "expires in " + humanDuration(d)
}

func lag(s *int64) string {
	if s == nil {
		return "-"
	}
	return humanDuration(time.Duration(*s) * time.Second)
}

// humanDuration prints a duration the way kubectl prints ages: 45s, 12m, 5h3m, 29d.
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		h := int(d.Hours())
		if m := int(d.Minutes()) - 60*h; m > 0 && h < 10 {
			return fmt.Sprintf("%dh%dm", h, m)
		}
		return fmt.Sprintf("%dh", h)
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}
