# telemetry-operator — every entry point of the project is a target here.
# Tools are built from the Go module proxy into bin/ (ignored by git), pinned and cached.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

IMG ?= telemetry-operator:dev
RECEIVER_IMG ?= telemetry-receiver:dev
TAG ?= dev

## Pinned tool versions.
CONTROLLER_TOOLS_VERSION ?= v0.23.0
GOLANGCI_LINT_VERSION ?= v2.15.0
KUSTOMIZE_VERSION ?= v5.8.1
# promtool checks and unit-tests the alerts (the Go module version of Prometheus 3.16.0).
PROMETHEUS_VERSION ?= v0.316.0
HELM_VERSION ?= v3.22.0
# The Prometheus Operator API whose ServiceMonitor, PodMonitor and PrometheusRule CRDs the tests install.
MONITORING_API_VERSION ?= v0.95.2
ETCD_VERSION ?= v3.6.16
# The control plane matches the minor version of k8s.io/api in go.mod (v0.37.x -> v1.37.x).
K8S_API_VERSION := $(shell go list -m -f '{{.Version}}' k8s.io/api 2>/dev/null)
K8S_VERSION ?= $(patsubst v0.%,v1.%,$(K8S_API_VERSION))

LOCALBIN ?= $(CURDIR)/bin
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
GOLANGCI_LINT ?= $(LOCALBIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
KUSTOMIZE ?= $(LOCALBIN)/kustomize-$(KUSTOMIZE_VERSION)
PROMTOOL ?= $(LOCALBIN)/promtool-$(PROMETHEUS_VERSION)
HELM ?= $(LOCALBIN)/helm-$(HELM_VERSION)
MONITORING_CRDS ?= $(LOCALBIN)/monitoring-crds-$(MONITORING_API_VERSION)
ENVTEST_DIR ?= $(LOCALBIN)/k8s/$(K8S_VERSION)-etcd-$(ETCD_VERSION)
# The control plane's own kubectl (tests, demo, bench); deployment targets use the kubectl on PATH
# (override with KUBECTL=...), or this one once `make envtest` has built it.
TEST_KUBECTL := $(ENVTEST_DIR)/kubectl
KUBECTL ?= $(shell command -v kubectl 2>/dev/null || echo $(TEST_KUBECTL))

# Test flags; override e.g. `make test TEST_FLAGS=-v`.
TEST_FLAGS ?=
TEST_TIMEOUT ?= 30m

##@ General

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: generate
generate: controller-gen ## Generate deepcopy code from the API markers.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: manifests
manifests: controller-gen ## Generate the CRD and RBAC manifests from markers.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./api/..." paths="./controllers/..." output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	$(CONTROLLER_GEN) rbac:roleName=tenant-role paths="./internal/tenants/..." output:rbac:artifacts:config=config/rbac/tenant
	$(CONTROLLER_GEN) rbac:roleName=tenant-watch-role paths="./internal/tenantwatch/..." output:rbac:artifacts:config=config/rbac/tenant-watch

.PHONY: helm-chart
helm-chart: manifests kustomize ## Generate charts/telemetry-operator from what kustomize renders (config/default, config/monitoring).
	@mkdir -p tmp
	$(KUSTOMIZE) build config/default > tmp/chart-operator.yaml
	$(KUSTOMIZE) build config/monitoring > tmp/chart-monitoring.yaml
	go run ./hack/helmchart --operator tmp/chart-operator.yaml --monitoring tmp/chart-monitoring.yaml --out charts/telemetry-operator

.PHONY: fmt
fmt: ## Run gofmt over the tree.
	gofmt -l -w $$(git ls-files '*.go' | grep -v '^bin/')

.PHONY: vet
vet: ## Run go vet.
	go vet ./...

.PHONY: lint
lint: golangci-lint ## Run golangci-lint.
	$(GOLANGCI_LINT) run ./...

.PHONY: check-generated
check-generated: generate manifests helm-chart ## Fail if generated files are not current.
	@if [ -n "$$(git status --porcelain -- api config charts)" ]; then git status --short -- api config charts; echo "generated files are stale: run 'make generate manifests helm-chart' and commit"; exit 1; fi

.PHONY: test
test: envtest test-deps check-generated lint build-installer promtool helm monitoring-crds ## Build what the tests need, fail on stale generated files or lint errors, run every test (the real-cluster one last).
	@gofmt_out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$gofmt_out" ]; then echo "gofmt needed on:"; echo "$$gofmt_out"; exit 1; fi
	go vet ./...
	KUBEBUILDER_ASSETS="$(ENVTEST_DIR)" TELEMETRY_TEST_KUBECTL="$(TEST_KUBECTL)" TELEMETRY_TEST_PROMTOOL="$(PROMTOOL)" \
	  TELEMETRY_TEST_HELM="$(HELM)" TELEMETRY_TEST_KUSTOMIZE="$(KUSTOMIZE)" TELEMETRY_TEST_MONITORING_CRDS="$(MONITORING_CRDS)" go test -timeout $(TEST_TIMEOUT) -count=1 $(TEST_FLAGS) ./...
	@# The collector sends and reads concurrently, the receiver serves requests in parallel and the manager reconciles policies in parallel: run them under the race detector too.
	KUBEBUILDER_ASSETS="$(ENVTEST_DIR)" go test -race -timeout $(TEST_TIMEOUT) -count=1 ./collector/... ./receiver/server/ ./controllers/
	@# The controller's specs once more with the manager watching nothing in the tenant namespaces (--watch-tenant-namespaces=false, resyncing every 2s).
	KUBEBUILDER_ASSETS="$(ENVTEST_DIR)" TELEMETRY_TEST_TENANT_RESYNC=2s go test -timeout $(TEST_TIMEOUT) -count=1 ./controllers/
	$(MAKE) --no-print-directory fuzz FUZZTIME=$(TEST_FUZZTIME)
	@# Last, the images and shipped manifests on a real single-node cluster (about 3 minutes once its tools are built).
	$(MAKE) --no-print-directory e2e-cluster

# make test fuzzes each target for a number of executions, not seconds: with a duration, Go 1.26's
# fuzz coordinator can report "context deadline exceeded" as a failure at the deadline
# (golang/go#75804, fixed in Go 1.27) though no input failed.
TEST_FUZZTIME ?= 50000x
FUZZTIME ?= 60s
FUZZ_TARGETS := ./collector/scrub:FuzzScrub ./collector/scrub:FuzzProperties ./api/batch/v1:FuzzDecode ./internal/collectorconfig:FuzzParse

.PHONY: bench
bench: envtest test-deps build build-installer ## Measure throughput, memory and operator scale against the targets (BENCH_FULL=1 for full sizes).
	@go build -o $(LOCALBIN)/bench ./hack/bench
	KUBEBUILDER_ASSETS="$(ENVTEST_DIR)" $(LOCALBIN)/bench --bin $(LOCALBIN) --kubectl $(TEST_KUBECTL) $(BENCH_ARGS)

.PHONY: faults
faults: envtest test-deps build-installer ## Run the fault suite in its full form (50 collector kills, receiver, PostgreSQL and API server restarts, a faulty network).
	FAULTS_FULL=1 go test -count=1 -timeout 30m -v -run 'Faulty|RestartedMid|KilledAtRandom|CrashMidBatch|Outage' ./collector/
	KUBEBUILDER_ASSETS="$(ENVTEST_DIR)" TELEMETRY_TEST_KUBECTL="$(TEST_KUBECTL)" go test -count=1 -timeout 10m -v -run 'APIServerRestart|OperatorRestart' ./test/e2e/

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME each (seed corpora live under testdata/fuzz; minimizing a new input is capped so it cannot eat the time).
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; name=$${t##*:}; \
	  echo "fuzz $$name ($$pkg) for $(FUZZTIME)"; \
	  go test -run='^$$' -fuzz="^$$name$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=200x $$pkg || exit 1; done

##@ Build

.PHONY: build
build: ## Build the manager, collector and receiver binaries and the kubectl plugin into bin/.
	CGO_ENABLED=0 go build -trimpath -o $(LOCALBIN)/manager .
	CGO_ENABLED=0 go build -trimpath -o $(LOCALBIN)/collector ./cmd/collector
	CGO_ENABLED=0 go build -trimpath -o $(LOCALBIN)/receiver ./cmd/receiver
	CGO_ENABLED=0 go build -trimpath -o $(LOCALBIN)/kubectl-telemetry ./cmd/kubectl-telemetry
	@# kubectl (1.26+) completes "kubectl telemetry ..." by running kubectl_complete-telemetry from PATH.
	@printf '#!/bin/sh\nexec kubectl-telemetry __complete "$$@"\n' > $(LOCALBIN)/kubectl_complete-telemetry
	@chmod +x $(LOCALBIN)/kubectl_complete-telemetry

.PHONY: demo
demo: envtest test-deps build build-installer ## Run the whole system locally (no cluster needed); DEMO_ONCE=1 to run the walkthrough and exit.
	@echo "==> building the demo"
	@go build -o $(LOCALBIN)/demo ./cmd/demo
	KUBEBUILDER_ASSETS="$(ENVTEST_DIR)" $(LOCALBIN)/demo --bin $(LOCALBIN) --kubectl $(TEST_KUBECTL)

.PHONY: run
run: manifests ## Run the manager against the current kubeconfig.
	go run . $(RUN_ARGS)

##@ Deployment

.PHONY: install
install: manifests kustomize ## Install the CRDs into the cluster of the current kubeconfig.
	$(KUSTOMIZE) build config/crd | $(KUBECTL) apply --server-side -f -

.PHONY: uninstall
uninstall: manifests kustomize ## Remove the CRDs from the cluster of the current kubeconfig.
	$(KUSTOMIZE) build config/crd | $(KUBECTL) delete --ignore-not-found -f -

.PHONY: deploy
deploy: manifests kustomize ## Deploy the manager to the cluster of the current kubeconfig (IMG=...).
	cd config/manager && $(KUSTOMIZE) edit set image controller=$(IMG)
	$(KUSTOMIZE) build config/default | $(KUBECTL) apply --server-side -f -

.PHONY: build-installer
build-installer: manifests kustomize ## Render a single-file installer into dist/install.yaml (IMG=...).
	mkdir -p dist
	cd config/manager && $(KUSTOMIZE) edit set image controller=$(IMG)
	$(KUSTOMIZE) build config/default > dist/install.yaml
	cd config/receiver && $(KUSTOMIZE) edit set image receiver=$(RECEIVER_IMG)
	$(KUSTOMIZE) build config/receiver > dist/receiver.yaml
	@echo "wrote dist/install.yaml (the operator) and dist/receiver.yaml (the receiver)"

.PHONY: images
images: test-deps build ## Build the three images as OCI archives in bin/images (no container engine needed) and check them; TAG=dev.
	go run ./hack/images build --bin $(LOCALBIN) --out $(LOCALBIN)/images --tag $(TAG)
	go run ./hack/images check $(LOCALBIN)/images/manager.oci.tar $(LOCALBIN)/images/collector.oci.tar $(LOCALBIN)/images/receiver.oci.tar

.PHONY: deploy-receiver
deploy-receiver: kustomize ## Deploy the receiver to the cluster of the current kubeconfig (RECEIVER_IMG=...; create its Secrets first, see the README).
	cd config/receiver && $(KUSTOMIZE) edit set image receiver=$(RECEIVER_IMG)
	$(KUSTOMIZE) build config/receiver | $(KUBECTL) apply --server-side -f -

.PHONY: e2e-cluster
e2e-cluster: envtest cluster-tools test-deps images build-installer ## Deploy the images and shipped manifests onto a real single-node cluster started here (kubelet, containerd) and check them; needs root.
	CGO_ENABLED=0 go build -trimpath -o $(LOCALBIN)/pause ./test/cluster/pause
	go run ./hack/images one --binary $(LOCALBIN)/pause --ref telemetry-test-pause:1 --out $(LOCALBIN)/images/pause.oci.tar
	TELEMETRY_E2E_CLUSTER=1 KUBEBUILDER_ASSETS="$(ENVTEST_DIR)" TELEMETRY_TEST_KUBECTL="$(TEST_KUBECTL)" go test -count=1 -timeout 30m -v $(TEST_FLAGS) ./test/e2ecluster/

.PHONY: undeploy
undeploy: kustomize ## Remove the manager from the cluster of the current kubeconfig (keeps the CRD, so every policy, and the namespace with the issuer's CA).
	$(KUSTOMIZE) build config/undeploy | $(KUBECTL) delete --ignore-not-found -f -

##@ Tools (built from the Go module proxy into bin/)

.PHONY: envtest
envtest: $(ENVTEST_DIR)/.kube-apiserver.ok ## Build kube-apiserver, etcd and kubectl for tests (cached under bin/k8s).
$(ENVTEST_DIR)/.kube-apiserver.ok:
	hack/build-control-plane.sh $(K8S_VERSION) $(ETCD_VERSION) $(ENVTEST_DIR)

.PHONY: cluster-tools
cluster-tools: ## Build kube-controller-manager, kube-scheduler and the kubelet (cached under bin/k8s) and install containerd and runc from Debian's packages: a real single-node cluster for make e2e-cluster.
	hack/build-control-plane.sh $(K8S_VERSION) $(ETCD_VERSION) $(ENVTEST_DIR) --node
	hack/ensure-test-deps.sh --cluster

.PHONY: test-deps
test-deps: ## Install PostgreSQL, openssl and gcc (for -race) from Debian packages if missing (tests start their own clusters).
	hack/ensure-test-deps.sh

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN)
$(CONTROLLER_GEN):
	hack/go-install-tool.sh $@ sigs.k8s.io/controller-tools/cmd/controller-gen $(CONTROLLER_TOOLS_VERSION)

.PHONY: golangci-lint
golangci-lint: $(GOLANGCI_LINT)
$(GOLANGCI_LINT):
	hack/go-install-tool.sh $@ github.com/golangci/golangci-lint/v2/cmd/golangci-lint $(GOLANGCI_LINT_VERSION)

.PHONY: kustomize
kustomize: $(KUSTOMIZE)
$(KUSTOMIZE):
	hack/go-install-tool.sh $@ sigs.k8s.io/kustomize/kustomize/v5 $(KUSTOMIZE_VERSION)

.PHONY: promtool
promtool: $(PROMTOOL) ## Build promtool (checks and unit-tests the alerts) into bin/.
$(PROMTOOL):
	hack/go-install-tool.sh $@ github.com/prometheus/prometheus/cmd/promtool $(PROMETHEUS_VERSION)

.PHONY: helm
helm: $(HELM) ## Build helm (lints and renders the chart in the tests) into bin/.
$(HELM):
	hack/go-install-tool.sh $@ helm.sh/helm/v3/cmd/helm $(HELM_VERSION)

.PHONY: monitoring-crds
monitoring-crds: controller-gen ## Generate the Prometheus Operator CRDs the monitoring tests install into bin/.
	hack/monitoring-crds.sh $(MONITORING_CRDS) $(CONTROLLER_GEN) $(MONITORING_API_VERSION)
