# kvnode build, test and demo entry points. `make help` lists them.

SHELL := /usr/bin/env bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/kvnode/kvnode/pkg/version.Version=$(VERSION)
BIN := bin
# Test timeout for the whole suite; the control plane binaries are built
# before the tests start, not inside this budget.
TEST_TIMEOUT ?= 30m
# Benchmarks `make bench` runs (a go test -bench pattern), and packages.
BENCH ?= .
BENCH_PKGS ?= ./...
# Time per fuzz target in `make fuzz`.
FUZZTIME ?= 30s

.PHONY: help
help: ## List the targets.
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## Install the Debian packages the tests need (root).
	@hack/install-deps.sh

.PHONY: node-bins
node-bins: ## Build (once, cached) kubelet, kube-controller-manager and kube-scheduler for the test node.
	@hack/node-bins.sh >/dev/null

.PHONY: images
images: ## Build (cached by content) the test cluster's image tarballs: kvdriver, nmi, the CSI sidecars, pause, the test app; prints their directory.
	@hack/images.sh

.PHONY: controlplane
controlplane: ## Build (once, cached) etcd, kube-apiserver and helm for the tests.
	@hack/controlplane-bins.sh >/dev/null
	@hack/helm-bin.sh >/dev/null

# The test binaries the control plane and chart tests use, built and cached
# outside the repository by the hack/ scripts.
TEST_ENV = KUBEBUILDER_ASSETS=$$(hack/controlplane-bins.sh) KVNODE_HELM=$$(hack/helm-bin.sh)
# ... and the test cluster's node binaries and images.
CLUSTER_ENV = KVNODE_NODE_BINS=$$(hack/node-bins.sh) KVNODE_IMAGES=$$(hack/images.sh)

.PHONY: build
build: ## Build the binaries into bin/.
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/kvdriver ./cmd/nmi ./test/emulator/cmd/azure-emulator

.PHONY: test
test: deps controlplane images node-bins ## Run every test: unit, emulator SDK tests, images, control-plane e2e, the chart on a real cluster (root).
	$(TEST_ENV) $(CLUSTER_ENV) $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...
	cd tools/images && $(GO) test -race -count=1 ./...

.PHONY: e2e
e2e: deps controlplane ## Run only the end-to-end tests.
	$(TEST_ENV) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./test/e2e/...

.PHONY: cluster
cluster: deps controlplane images node-bins ## Run only the real-cluster tests: the chart installed with helm on a single-node cluster, workloads, report (root).
	$(TEST_ENV) $(CLUSTER_ENV) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./test/cluster/...

.PHONY: bench
bench: deps controlplane ## Run the benchmarks with allocation counts, and the load tests (root); BENCH=pattern BENCH_PKGS=packages for a subset.
	$(TEST_ENV) $(GO) test -run '^$$' -bench '$(BENCH)' -benchmem -count 1 -timeout 60m $(BENCH_PKGS)

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME each (default 30s); prints executions and new corpus entries.
	@FUZZTIME=$(FUZZTIME) hack/fuzz.sh

.PHONY: generate
generate: ## Regenerate pkg/providerapi's Go code from its .proto (needs protoc: apt-get install protobuf-compiler).
	@hack/generate.sh

.PHONY: lint
lint: ## gofmt, go vet and staticcheck (pinned in tools/lint), on kvnode and tools/images.
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [[ -n "$$unformatted" ]]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	cd tools/lint && $(GO) build -o ../../$(BIN)/staticcheck honnef.co/go/tools/cmd/staticcheck
	$(BIN)/staticcheck ./...
	cd tools/images && $(GO) vet ./... && ../../$(BIN)/staticcheck ./...

# The demo needs root; without it, make says so in one line before it
# installs or builds anything.
demo_needs_root := make demo needs root (tmpfs mounts, network namespaces, iptables): run it as root

.PHONY: demo-root
demo-root:
	$(if $(filter 0,$(shell id -u)),,$(error $(demo_needs_root)))

.PHONY: demo
demo: demo-root deps controlplane ## Show both jobs offline: kvdriver mounting Key Vault objects, nmi giving pods tokens (root).
	@hack/with-progress.sh "the demo program" $(GO) build -o $(BIN)/demo ./test/demo
	@$(TEST_ENV) $(BIN)/demo

.PHONY: clean
clean: ## Remove build output.
	rm -rf $(BIN)
