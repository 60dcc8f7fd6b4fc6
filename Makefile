# kubelambda — `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
export KUBECONFIG ?= $(CURDIR)/.cluster/kubeconfig

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: up
up: ## Everything from a clean machine: cluster (if none), images, platform, a hello function and route
	hack/up.sh

.PHONY: deps
deps: ## Install Debian packages and the Python virtualenv (.venv)
	hack/install-deps.sh

.PHONY: cluster-up
cluster-up: ## Start a single-node cluster (CLUSTER_PROVIDER=local|kind), kubeconfig in .cluster/
	hack/cluster-up.sh

.PHONY: cluster-down
cluster-down: ## Remove the cluster and everything it left on the machine
	hack/cluster-down.sh

.PHONY: images
images: ## Build every project image (platform + runtimes) with the local Docker engine
	hack/images.sh

.PHONY: load-images
load-images: ## Put the project images into the cluster
	hack/load-images.sh

.PHONY: crds
crds: ## Regenerate crds/ (and the chart's copy) from the pydantic models
	$(PY) -m kubelambda.api.crdgen --out crds/
	$(PY) hack/chart_crds.py

.PHONY: lint
lint: ## ruff, mypy --strict and the import-layer contract
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/ruff format --check operator tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: test-unit
test-unit: ## Unit tests (no cluster; a local nats-server for the invoker's)
	hack/nats.sh
	hack/pytest.sh tests/unit

.PHONY: test-e2e
test-e2e: ## End-to-end tests on the real cluster (brings it up if needed)
	hack/cluster-up.sh
	hack/images.sh
	hack/test-images.sh
	hack/load-images.sh
	hack/pytest.sh -m e2e tests/e2e

.PHONY: test
test: deps lint test-unit test-e2e ## Everything CI runs: lint, unit and e2e tests on the real cluster

.PHONY: bundle
bundle: ## Render the kubectl-apply bundle deploy/kubelambda.yaml from the Helm chart
	hack/render-bundle.sh

.PHONY: install
install: images load-images ## Build and load the images, then helm upgrade --install the platform
	hack/install.sh
