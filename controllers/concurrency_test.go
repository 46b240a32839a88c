/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers_test

import (
	"bytes"
	"context"
	"net/http"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	consentv1 "github.com/sourcegraph/telemetry-operator/api/consent/v1"
)

var _ = Describe("Concurrent reconciles", func() {
	It("converges other policies while one waits on the receiver", func() {
		ctx := context.Background()
		slowNS, fastNS := newNamespace(ctx), newNamespace(ctx)
		slow := instanceOf(slowNS, "slow")
		held, release := make(chan struct{}), make(chan struct{})
		var once, releaseOnce sync.Once
		rcv.SetIntercept(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
			if r.Method != http.MethodPost || r.URL.Path != consentv1.PathConsent || !bytes.Contains(body, []byte(`"`+slow+`"`)) {
				return false
			}
			once.Do(func() { close(held) })
			select { // the receiver is slow to answer for this instance only
			case <-release:
			case <-time.After(25 * time.Second):
			}
			return false
		})
		stop := func() { releaseOnce.Do(func() { close(release) }); rcv.SetIntercept(nil) }
		DeferCleanup(stop)

		Expect(k8s.Create(ctx, eventLevelPolicy(slowNS, "slow"))).To(Succeed())
		Eventually(held, 20*time.Second).Should(BeClosed(), "the slow policy's reconcile reached the receiver")
		Expect(k8s.Create(ctx, eventLevelPolicy(fastNS, "fast"))).To(Succeed())
		Eventually(func() error { _, err := deployment(ctx, fastNS, "fast"); return err }, 10*time.Second).Should(Succeed(),
			"another policy is reconciled while the first waits")
		_, err := deployment(ctx, slowNS, "slow")
		Expect(err).To(HaveOccurred(), "the slow policy is still waiting on the receiver")

		stop()
		Eventually(func() error { _, err := deployment(ctx, slowNS, "slow"); return err }, 20*time.Second).Should(Succeed())
	})
})
