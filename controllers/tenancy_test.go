/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers_test

import (
	"context"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
	v1 "github.com/sourcegraph/telemetry-operator/api/v1alpha1"
	"github.com/sourcegraph/telemetry-operator/controllers"
	"github.com/sourcegraph/telemetry-operator/internal/operator"
	"github.com/sourcegraph/telemetry-operator/internal/resources"
	"github.com/sourcegraph/telemetry-operator/internal/tenants"
)

// managedIn counts the objects the operator made in ns, read straight from the API server.
func managedIn(ctx context.Context, ns string) int {
	GinkgoHelper()
	sel := client.MatchingLabels{resources.LabelManagedBy: resources.ManagedByValue}
	n := 0
	for _, l := range []client.ObjectList{&corev1.SecretList{}, &corev1.ConfigMapList{}, &appsv1.DeploymentList{}, &corev1.ServiceAccountList{}} {
		Expect(k8s.List(ctx, l, client.InNamespace(ns), sel)).To(Succeed())
		switch l := l.(type) {
		case *corev1.SecretList:
			n += len(l.Items)
		case *corev1.ConfigMapList:
			n += len(l.Items)
		case *appsv1.DeploymentList:
			n += len(l.Items)
		case *corev1.ServiceAccountList:
			n += len(l.Items)
		}
	}
	return n
}

func setOnboarded(ctx context.Context, ns string, on bool) {
	GinkgoHelper()
	n := &corev1.Namespace{}
	Expect(k8s.Get(ctx, client.ObjectKey{Name: ns}, n)).To(Succeed())
	patch := client.MergeFrom(n.DeepCopy())
	if on {
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		n.Labels[v1.LabelOnboarded] = "true"
	} else {
		delete(n.Labels, v1.LabelOnboarded)
	}
	Expect(k8s.Patch(ctx, n, patch)).To(Succeed())
}

var _ = Describe("Onboarded namespaces", func() {
	ctx := context.Background()

	inManagerCache := func(ns string) func() error {
		return func() error { return mgr.GetCache().Get(ctx, client.ObjectKey{Name: ns}, &corev1.Namespace{}) }
	}
	// newGatedSet starts a namespace Set like the manager's, whose permission reviews can be
	// held, once the manager's cache shows each of nss; it stops when the spec ends. With live,
	// it starts no caches and reads through live (Options.Live).
	newGatedSet := func(live client.Reader, nss ...string) (context.Context, *tenants.Set, *gatedReviewer) {
		GinkgoHelper()
		for _, ns := range nss {
			Eventually(inManagerCache(ns)).Should(Succeed())
		}
		setCtx, stop := context.WithCancel(ctx)
		DeferCleanup(stop)
		direct, err := client.NewWithWatch(cfg, client.Options{Scheme: mgr.GetScheme()})
		Expect(err).NotTo(HaveOccurred())
		g := &gatedReviewer{gates: map[string]gate{}, count: map[string]int{}}
		cacheOpts, err := operator.TenantCacheOptions(mgr, cfg)
		Expect(err).NotTo(HaveOccurred())
		set := tenants.New(tenants.Options{
			Config: cfg, Cache: cacheOpts, Kinds: controllers.CachedKinds(), Uncached: controllers.UncachedKinds(),
			Namespaces: mgr.GetCache(), Selector: labels.SelectorFromSet(labels.Set{v1.LabelOnboarded: "true"}),
			Reviewer: interceptor.NewClient(direct, interceptor.Funcs{Create: g.create}), Rules: tenants.Rules,
			RoleName: "telemetry-operator-tenant", Subject: "test/manager", Clock: fakeClock, Live: live,
		})
		go func() { _ = set.Start(setCtx) }()
		return setCtx, set, g
	}
	ensure := func(set *tenants.Set, ctx context.Context, ns string) <-chan tenants.Status {
		done := make(chan tenants.Status, 1)
		go func() {
			defer GinkgoRecover()
			st, err := set.Ensure(ctx, ns)
			Expect(err).NotTo(HaveOccurred())
			done <- st
		}()
		return done
	}

	It("without watches, reads what a namespace cache would show, from the API server", func() {
		ns := newNamespace(ctx)
		setCtx, set, _ := newGatedSet(k8s, ns)
		Eventually(ensure(set, setCtx, ns)).Should(Receive(HaveField("Onboarded", BeTrue())))
		managed := map[string]string{resources.LabelManagedBy: resources.ManagedByValue}
		for name, labels := range map[string]map[string]string{"ours": managed, "ours-too": managed, "theirs": nil} {
			Expect(k8s.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}, Data: map[string]string{"k": name}})).To(Succeed())
		}
		c := set.Client(k8s)

		By("an object of ours is read at once: there is no cache to wait for")
		cm := &corev1.ConfigMap{}
		Expect(c.Get(setCtx, client.ObjectKey{Namespace: ns, Name: "ours"}, cm)).To(Succeed())
		Expect(cm.Data).To(HaveKeyWithValue("k", "ours"))

		By("a customer's object of any name is not found, and nothing of it is handed over")
		secret := &corev1.Secret{}
		err := c.Get(setCtx, client.ObjectKey{Namespace: ns, Name: "frontend-db"}, secret)
		Expect(apierrors.IsNotFound(err)).To(BeTrue(), "got %v", err)
		Expect(err).To(MatchError(`secrets "frontend-db" not found`))
		Expect(secret.Data).To(BeEmpty())
		Expect(secret.StringData).To(BeEmpty())
		Expect(secret.Name).To(BeEmpty())
		Expect(apierrors.IsNotFound(c.Get(setCtx, client.ObjectKey{Namespace: ns, Name: "theirs"}, &corev1.ConfigMap{}))).To(BeTrue())

		By("a list holds only ours, and a caller's own selector narrows it further")
		names := func(opts ...client.ListOption) []string {
			GinkgoHelper()
			l := &corev1.ConfigMapList{}
			Expect(c.List(setCtx, l, append(opts, client.InNamespace(ns))...)).To(Succeed())
			var out []string
			for _, i := range l.Items {
				out = append(out, i.Name)
			}
			return out
		}
		Expect(names()).To(ConsistOf("ours", "ours-too"))
		Expect(names(client.MatchingFields{"metadata.name": "ours"})).To(ConsistOf("ours"))
		Expect(names(client.MatchingLabels{"unrelated": "x"})).To(BeEmpty())
		Expect(names(client.MatchingLabelsSelector{Selector: labels.Nothing()})).To(BeEmpty(), "a selector of nothing is not a list of everything")
		Expect(c.List(setCtx, &corev1.SecretList{})).To(MatchError(ContainSubstring("must name its namespace")), "never a cluster-wide read")

		By("a namespace not onboarded is read from nowhere")
		other := newNamespaceLabelled(ctx, nil)
		Expect(c.Get(setCtx, client.ObjectKey{Namespace: other, Name: "frontend-db"}, &corev1.Secret{})).To(MatchError(tenants.ErrNotOnboarded))
	})

	It("onboards namespaces side by side: one whose review is slow holds up no other", func() {
		slow, quick := newNamespace(ctx), newNamespace(ctx)
		setCtx, set, g := newGatedSet(nil, slow, quick)
		reviewing, release := g.hold(slow)
		defer release()

		slowDone := ensure(set, setCtx, slow)
		Eventually(reviewing).Should(BeClosed())
		Eventually(ensure(set, setCtx, quick)).Should(Receive(HaveField("Onboarded", BeTrue())), "the quick namespace waited for the slow one's review")
		Expect(set.Onboarded(quick)).To(BeTrue())
		Expect(set.Onboarded(slow)).To(BeFalse())

		By("the slow one is onboarded once its review answers")
		release()
		Eventually(slowDone).Should(Receive(HaveField("Onboarded", BeTrue())))
		Expect(set.Onboarded(slow)).To(BeTrue())
	})

	It("starts no cache in a namespace whose label goes while two callers wait on its review", func() {
		ns := newNamespace(ctx)
		setCtx, set, g := newGatedSet(nil, ns)
		reviewing, release := g.hold(ns)
		defer release()
		first := ensure(set, setCtx, ns)
		Eventually(reviewing).Should(BeClosed())
		second := ensure(set, setCtx, ns)
		setOnboarded(ctx, ns, false)
		Eventually(inManagerCache(ns)).ShouldNot(Succeed())
		release()
		Eventually(first).Should(Receive(HaveField("Reason", tenants.ReasonNotOnboarded)))
		Eventually(second).Should(Receive(HaveField("Reason", tenants.ReasonNotOnboarded)))
		Expect(set.Onboarded(ns)).To(BeFalse())
	})

	It("reviews again after an invalidation that came while a review was under way", func() {
		ns := newNamespace(ctx)
		setCtx, set, g := newGatedSet(nil, ns)
		Eventually(ensure(set, setCtx, ns)).Should(Receive(HaveField("Onboarded", BeTrue())))
		Expect(g.reviews(ns)).To(Equal(1))

		fakeClock.Step(6 * time.Minute) // the review is due again
		reviewing, release := g.hold(ns)
		defer release()
		done := ensure(set, setCtx, ns)
		Eventually(reviewing).Should(BeClosed())
		set.Invalidate(ns) // a request in ns was refused meanwhile
		release()
		Eventually(done).Should(Receive(HaveField("Onboarded", BeTrue())))
		Expect(g.reviews(ns)).To(Equal(2))

		Eventually(ensure(set, setCtx, ns)).Should(Receive(HaveField("Onboarded", BeTrue())))
		Expect(g.reviews(ns)).To(Equal(3), "the invalidation was lost: the namespace counted as freshly reviewed")
	})

	It("creates nothing, claims nothing and says why in a namespace that is not onboarded, and starts once it is", func() {
		ns := newNamespaceLabelled(ctx, nil)
		Expect(k8s.Create(ctx, eventLevelPolicy(ns, "outside"))).To(Succeed())
		Eventually(conditionStatus(ctx, ns, "outside", v1.ConditionStalled)).Should(Equal("Stalled=True/NamespaceNotOnboarded"))
		p := getPolicy(ctx, ns, "outside")
		Expect(condition(p, v1.ConditionStalled).Message).To(And(ContainSubstring(v1.LabelOnboarded), ContainSubstring("tenant-role")))
		Consistently(func() int { return managedIn(ctx, ns) }, "2s").Should(BeZero(), "no key, certificate, configuration or workload")
		_, err := rcv.Store.ConsentState(ctx, instanceOf(ns, "outside"))
		Expect(err).To(MatchError(ContainSubstring("unknown instance")), "the instance is not claimed at the receiver")
		Expect(eventReasons(ctx, ns, "outside")).To(BeEmpty(), "no Events are written where the manager was not let in")

		By("labelling the namespace onboards it: the policy goes ahead without being touched")
		setOnboarded(ctx, ns, true)
		Eventually(func() error { _, err := deployment(ctx, ns, "outside"); return err }).Should(Succeed())
		rollOutUntilReady(ctx, ns, "outside")
		Expect(ledgerOf(ctx, instanceOf(ns, "outside")).Timeline).NotTo(BeEmpty())
	})

	It("stops working in a namespace that is offboarded, and still records a withdrawal at the receiver", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "leaving")
		setOnboarded(ctx, ns, false)
		Eventually(conditionStatus(ctx, ns, "leaving", v1.ConditionStalled)).Should(Equal("Stalled=True/NamespaceNotOnboarded"))

		By("consent withdrawn while the manager may not touch the collector")
		updatePolicy(ctx, ns, "leaving", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })
		Eventually(func() v1.ConsentTier {
			tl := ledgerOf(ctx, instanceOf(ns, "leaving")).Timeline
			return v1.ConsentTier(tl[len(tl)-1].Tier)
		}).Should(Equal(v1.TierOff), "the receiver records the withdrawal and refuses what the collector still sends")
		d, err := deployment(ctx, ns, "leaving")
		Expect(err).NotTo(HaveOccurred())
		Expect(d.DeletionTimestamp.IsZero()).To(BeTrue(), "the collector is left as it was: the manager may not change it")
		Eventually(conditionStatus(ctx, ns, "leaving", v1.ConditionStalled)).Should(Equal("Stalled=True/NamespaceNotOnboarded"), "the status catches up with the ledger")

		By("a raise waits for onboarding: only withdrawals are recorded from outside")
		updatePolicy(ctx, ns, "leaving", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierEventLevel })
		Consistently(func() consentv1.Tier {
			tl := ledgerOf(ctx, instanceOf(ns, "leaving")).Timeline
			return tl[len(tl)-1].Tier
		}, "2s").Should(Equal(consentv1.Tier(v1.TierOff)))

		By("onboarded again, the raise is recorded")
		setOnboarded(ctx, ns, true)
		Eventually(func() consentv1.Tier {
			tl := ledgerOf(ctx, instanceOf(ns, "leaving")).Timeline
			return tl[len(tl)-1].Tier
		}).Should(Equal(consentv1.Tier(v1.TierEventLevel)))
	})

	It("records a withdrawal made outside while the receiver was down, and not the raise after it", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "queued")
		setOnboarded(ctx, ns, false)
		Eventually(conditionStatus(ctx, ns, "queued", v1.ConditionStalled)).Should(Equal("Stalled=True/NamespaceNotOnboarded"))
		rcv.Stop()
		DeferCleanup(func() { _ = rcv.Listen() })
		updatePolicy(ctx, ns, "queued", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })
		Eventually(func() int { return len(getPolicy(ctx, ns, "queued").Status.PendingConsentChanges) }).Should(BeNumerically(">", 0))
		updatePolicy(ctx, ns, "queued", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierCriticalOnly })
		Expect(rcv.Listen()).To(Succeed())
		current := func() consentv1.Tier { return ledgerOf(ctx, instanceOf(ns, "queued")).Timeline.Current() }
		Eventually(current, 20*time.Second).Should(Equal(consentv1.Tier(v1.TierOff)))
		Consistently(current, "2s").Should(Equal(consentv1.Tier(v1.TierOff)), "the raise to CriticalOnly waits for onboarding")
	})

	It("lets a policy go when its namespace was offboarded, recording the deletion as Off", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "gone")
		setOnboarded(ctx, ns, false)
		Eventually(conditionStatus(ctx, ns, "gone", v1.ConditionStalled)).Should(Equal("Stalled=True/NamespaceNotOnboarded"))
		Expect(k8s.Delete(ctx, getPolicy(ctx, ns, "gone"))).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "gone"}, &v1.TelemetryPolicy{}))
		}).Should(BeTrue(), "the finalizer does not wait on a collector the manager may not touch")
		state := ledgerOf(ctx, instanceOf(ns, "gone"))
		Expect(state.Timeline[len(state.Timeline)-1].Tier).To(Equal(consentv1.Tier(v1.TierOff)))
		Expect(state.Owner.Cluster).To(BeEmpty(), "released")
	})

	It("never claims a released instance from a namespace that is not onboarded", func() {
		const instance = "released-instance"
		owner := consentv1.Owner{Namespace: "elsewhere", Name: "old"}
		_, err := rcv.Store.RecordTransition(ctx, testCluster, consentv1.RecordRequest{InstanceID: instance, Owner: owner,
			Transition: consentv1.Transition{At: fakeClock.Now().Add(-time.Hour), Tier: consentv1.Tier(v1.TierEventLevel), Reason: "Declared"}})
		Expect(err).NotTo(HaveOccurred())
		Expect(rcv.Store.Release(ctx, testCluster, consentv1.ReleaseRequest{InstanceID: instance, Owner: owner})).To(Succeed())
		before := ledgerOf(ctx, instance)
		Expect(before.Owner.Cluster).To(BeEmpty())

		ns := newNamespaceLabelled(ctx, nil)
		p := eventLevelPolicy(ns, "squatter")
		p.Spec.InstanceID = instance
		p.Spec.Erasure = &v1.ErasureSpec{RequestID: "wipe-1", Scope: v1.ErasureScopeAll, RequestedBy: v1.ErasureRequesterCustomerAdmin}
		Expect(k8s.Create(ctx, p)).To(Succeed())
		Eventually(conditionStatus(ctx, ns, "squatter", v1.ConditionStalled)).Should(Equal("Stalled=True/NamespaceNotOnboarded"))
		Consistently(func() consentv1.State { return ledgerOf(ctx, instance) }, "2s").Should(Equal(before), "not claimed, nothing recorded, nothing erased")
		Expect(getPolicy(ctx, ns, "squatter").Finalizers).To(BeEmpty())
		Expect(getPolicy(ctx, ns, "squatter").Status.ConsentHistory).To(BeEmpty(), "the receiver's record was not even read")
	})
})

// anyConditionSays reports whether some condition of the policy carries text in its message.
func anyConditionSays(ctx context.Context, ns, name, text string) func() bool {
	return func() bool {
		for _, c := range getPolicy(ctx, ns, name).Status.Conditions {
			if strings.Contains(c.Message, text) {
				return true
			}
		}
		return false
	}
}

var _ = Describe("Objects the operator did not make", func() {
	ctx := context.Background()

	It("does not take over a RoleBinding that has the collector's name", func() {
		ns := newNamespace(ctx)
		names := resources.NamesFor("hijack")
		theirs := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: names.RoleBinding, Namespace: ns},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "edit"},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "alice"}}}
		Expect(k8s.Create(ctx, theirs.DeepCopy())).To(Succeed())
		Expect(k8s.Create(ctx, eventLevelPolicy(ns, "hijack"))).To(Succeed())
		DeferCleanup(func() { _ = k8s.Delete(ctx, getPolicy(ctx, ns, "hijack")) })
		Eventually(conditionStatus(ctx, ns, "hijack", v1.ConditionStalled)).Should(Equal("Stalled=True/NameTaken"))
		Expect(anyConditionSays(ctx, ns, "hijack", "refusing to take it over")()).To(BeTrue())
		live := &rbacv1.RoleBinding{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.RoleBinding}, live)).To(Succeed())
		Expect(live.Subjects).To(Equal(theirs.Subjects), "the collector's ServiceAccount was not given their role")
		Expect(live.OwnerReferences).To(BeEmpty())
	})

	It("does not overwrite a Secret that has the credentials' name", func() {
		ns := newNamespace(ctx)
		names := resources.NamesFor("squat")
		Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: names.Credentials, Namespace: ns},
			StringData: map[string]string{"password": "theirs"}})).To(Succeed())
		Expect(k8s.Create(ctx, eventLevelPolicy(ns, "squat"))).To(Succeed())
		DeferCleanup(func() { _ = k8s.Delete(ctx, getPolicy(ctx, ns, "squat")) })
		Eventually(conditionStatus(ctx, ns, "squat", v1.ConditionStalled)).Should(Equal("Stalled=True/NameTaken"))
		Expect(anyConditionSays(ctx, ns, "squat", "refusing to take it over")()).To(BeTrue())
		live := &corev1.Secret{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.Credentials}, live)).To(Succeed())
		Expect(live.Data).To(Equal(map[string][]byte{"password": []byte("theirs")}))
		Expect(live.OwnerReferences).To(BeEmpty())
	})

	It("still stops the collector and lets the policy go when its configuration's name is taken", func() {
		ns := newNamespace(ctx)
		readyPolicy(ctx, ns, "clash")
		names := resources.NamesFor("clash")
		// The configuration ConfigMap turned into one that is not the policy's (a restore, a hand
		// edit), in one write: deleting and re-creating it races the operator, which re-creates
		// its own at once.
		Eventually(func() error {
			cm := &corev1.ConfigMap{}
			if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.Config}, cm); err != nil {
				return err
			}
			cm.OwnerReferences, cm.Labels, cm.Data = nil, nil, map[string]string{"theirs": "yes"}
			return k8s.Update(ctx, cm)
		}).Should(Succeed())

		By("consent withdrawn: the Deployment is stopped though the configuration cannot be written")
		updatePolicy(ctx, ns, "clash", func(p *v1.TelemetryPolicy) { p.Spec.Consent.Tier = v1.TierOff })
		collectGarbage(ctx, ns, "clash")
		Eventually(func() bool { _, err := deployment(ctx, ns, "clash"); return apierrors.IsNotFound(err) }).Should(BeTrue())

		By("deleting the policy does not hang on the foreign ConfigMap, which is left as it was")
		Expect(k8s.Delete(ctx, getPolicy(ctx, ns, "clash"))).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "clash"}, &v1.TelemetryPolicy{}))
		}).Should(BeTrue())
		cm := &corev1.ConfigMap{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.Config}, cm)).To(Succeed())
		Expect(cm.Data).To(Equal(map[string]string{"theirs": "yes"}))
	})
})

type gate struct{ reviewing, release chan struct{} }

// gatedReviewer counts the manager's permission reviews by namespace and holds the next one of
// a namespace until released.
type gatedReviewer struct {
	mu    sync.Mutex
	gates map[string]gate
	count map[string]int
}

// hold makes the next review of ns wait; reviewing is closed when it starts. release may be
// called more than once.
func (g *gatedReviewer) hold(ns string) (reviewing <-chan struct{}, release func()) {
	gt := gate{reviewing: make(chan struct{}), release: make(chan struct{})}
	g.mu.Lock()
	g.gates[ns] = gt
	g.mu.Unlock()
	var once sync.Once
	return gt.reviewing, func() { once.Do(func() { close(gt.release) }) }
}

func (g *gatedReviewer) reviews(ns string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.count[ns]
}

func (g *gatedReviewer) create(ctx context.Context, cl client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
	if r, ok := obj.(*authorizationv1.SelfSubjectRulesReview); ok {
		g.mu.Lock()
		g.count[r.Spec.Namespace]++
		gt, held := g.gates[r.Spec.Namespace]
		delete(g.gates, r.Spec.Namespace)
		g.mu.Unlock()
		if held {
			close(gt.reviewing)
			select {
			case <-gt.release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return cl.Create(ctx, obj, opts...)
}
