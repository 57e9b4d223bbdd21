# agentmesh: run `make help` for the targets.

# Image built by docker-build.
IMG ?= ghcr.io/agentmesh/agentmesh:dev

ROOT := $(shell pwd)
BIN := $(ROOT)/bin
export PATH := $(BIN):$(PATH)
# envtest and the local control plane find kube-apiserver, etcd and kubectl here.
export KUBEBUILDER_ASSETS := $(BIN)

CONTROLLER_GEN := $(BIN)/controller-gen
GOLANGCI_LINT := $(BIN)/golangci-lint
KUBECTL := $(BIN)/kubectl
HELM := $(BIN)/helm

# go test flags; e.g. make test GO_TEST_FLAGS='-run TestAPI -v'.
GO_TEST_FLAGS ?=

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: controller-gen ## Generate CRDs and RBAC from the code's markers into config/.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./..." \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac

.PHONY: generate
generate: controller-gen ## Generate DeepCopy methods (zz_generated.deepcopy.go).
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: fmt
fmt: ## Run gofmt on the code.
	gofmt -s -w $$(git ls-files --cached --others --exclude-standard '*.go')

.PHONY: vet
vet: ## Run go vet.
	go vet ./...

.PHONY: lint
lint: golangci-lint ## Run golangci-lint (config: .golangci.yml).
	$(GOLANGCI_LINT) run ./...

.PHONY: verify
verify: manifests generate ## Fail when generated files are stale or code is not gofmt-clean, then vet and lint.
	@if [ -n "$$(git status --porcelain -- api config)" ]; then \
		echo "generated files are stale; run 'make manifests generate' and commit:"; \
		git status --porcelain -- api config; git --no-pager diff --stat -- api config; exit 1; fi
	@bad=$$(gofmt -s -l $$(git ls-files --cached --others --exclude-standard '*.go')); \
		if [ -n "$$bad" ]; then echo "gofmt -s would change: $$bad"; exit 1; fi
	$(MAKE) vet lint

.PHONY: test
test: tools ## Run unit and integration tests against a real kube-apiserver and etcd built from source.
	go test ./... $(GO_TEST_FLAGS)

##@ Build

.PHONY: build
build: ## Build the manager binary into bin/manager.
	go build -trimpath -o $(BIN)/manager ./cmd/manager

.PHONY: run
run: ## Run the manager against the cluster in $KUBECONFIG.
	go run ./cmd/manager

.PHONY: dev
dev: tools build ## Start a local control plane, install the CRDs, run the operator and apply the samples.
	go build -o $(BIN)/devcluster ./hack/devcluster
	$(BIN)/devcluster --manager=$(BIN)/manager

.PHONY: docker-build
docker-build: ## Build the container image (needs a container runtime).
	docker build -t $(IMG) .

##@ Tools

.PHONY: tools
tools: ## Build kube-apiserver, etcd, kubectl, helm, controller-gen and golangci-lint from the Go module proxy into bin/.
	hack/tools.sh

.PHONY: tools-update
tools-update: ## Re-pin hack/tools/kubernetes to the k8s.io/api version in go.mod.
	hack/tools-update.sh

.PHONY: controller-gen golangci-lint
controller-gen golangci-lint:
	@hack/tools.sh $@
