/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1alpha1_test

import (
	"testing"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/sourcegraph/telemetry-operator/internal/testenv"
)

// These specs install the generated CRD into a real kube-apiserver and check what it admits.

var (
	env *envtest.Environment
	cfg *rest.Config
	dyn dynamic.Interface
)

func TestAPIAdmission(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "TelemetryPolicy admission")
}

var _ = BeforeSuite(func() {
	var err error
	env, cfg, err = testenv.Start()
	Expect(err).NotTo(HaveOccurred())
	dyn, err = dynamic.NewForConfig(cfg)
	Expect(err).NotTo(HaveOccurred())
})

var _ = AfterSuite(func() {
	if env != nil {
		Expect(testenv.Stop(env)).To(Succeed())
	}
})
