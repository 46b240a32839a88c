/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1alpha1_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// corpusCase is the expected outcome of posting one file of testdata/hostile.
type corpusCase struct {
	// Status is the HTTP status the API server answers (201 when the policy is created).
	Status int `json:"status"`
	// Contains is a piece of the message a user would read (empty for 201).
	Contains string `json:"contains"`
}

// The CRD's hostile-input corpus: each file in testdata/hostile is posted as a raw request body
// (so odd encodings reach the API server as they are) and must get the outcome listed in
// testdata/hostile/expected.json. Every file must be listed and every listing must exist.
var _ = Describe("TelemetryPolicy hostile-input corpus", Ordered, func() {
	ctx := context.Background()
	dir := filepath.Join("testdata", "hostile")
	expected := map[string]corpusCase{}
	var httpClient *http.Client

	BeforeAll(func() {
		raw, err := os.ReadFile(filepath.Join(dir, "expected.json"))
		Expect(err).NotTo(HaveOccurred())
		Expect(json.Unmarshal(raw, &expected)).To(Succeed())
		cs, err := kubernetes.NewForConfig(cfg)
		Expect(err).NotTo(HaveOccurred())
		_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "corpus"}}, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		httpClient, err = rest.HTTPClientFor(cfg)
		Expect(err).NotTo(HaveOccurred())
	})

	It("lists an outcome for every file and a file for every outcome", func() {
		files, err := filepath.Glob(filepath.Join(dir, "*.json"))
		Expect(err).NotTo(HaveOccurred())
		names := map[string]bool{}
		for _, f := range files {
			if filepath.Base(f) != "expected.json" {
				names[filepath.Base(f)] = true
			}
		}
		listed := map[string]bool{}
		for name := range expected {
			listed[name] = true
		}
		Expect(listed).To(Equal(names))
	})

	It("gives every file its expected outcome", func() {
		url := strings.TrimSuffix(cfg.Host, "/") + "/apis/telemetry.sourcegraph.com/v1alpha1/namespaces/corpus/telemetrypolicies"
		for name, want := range expected {
			body, err := os.ReadFile(filepath.Join(dir, name))
			Expect(err).NotTo(HaveOccurred())
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
			Expect(err).NotTo(HaveOccurred())
			req.Header.Set("Content-Type", "application/json")
			resp, err := httpClient.Do(req)
			Expect(err).NotTo(HaveOccurred())
			reply, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			var status metav1.Status
			_ = json.Unmarshal(reply, &status)
			if os.Getenv("CORPUS_PRINT") != "" {
				fmt.Fprintf(GinkgoWriter, "%s\t%d\t%s\n", name, resp.StatusCode, status.Message)
				continue
			}
			Expect(resp.StatusCode).To(Equal(want.Status), "%s: %s", name, status.Message)
			Expect(status.Message).To(ContainSubstring(want.Contains), name)
		}
	})
})
