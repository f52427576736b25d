# Orient Secrets — the front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

BUF        := go tool -modfile=tools/go.mod buf
GOOGLEAPIS := .build/googleapis/google/api/field_behavior.proto
# The google/api and google/rpc protos come from this Go module's
# third_party folder (no Buf Schema Registry on these machines), and
# google/api/field_behavior.proto from gnostic's (the OpenAPI generator's
# module, pinned in tools/go.mod).
GOOGLEAPIS_MODULE := github.com/grpc-ecosystem/grpc-gateway@v1.16.0
GNOSTIC_MODULE := github.com/google/gnostic@v0.7.1
GO_TEST_FLAGS ?=

.PHONY: help run build test lint generate proto-check postgres local-kms ui-tools azurite bench reliability fuzz image image-test clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## Build secretsd and secretctl into bin/
	go build -o bin/ ./cmd/...

run: postgres build ## Run secretsd on the embedded default (private PostgreSQL in ./.secrets-data)
	./bin/secretsd

test: postgres local-kms ui-tools azurite ## Run every test against a private throwaway PostgreSQL
	go test $(GO_TEST_FLAGS) -race -parallel 8 -timeout 20m ./...
	cd deploy/kubernetes && go test $(GO_TEST_FLAGS) ./...

lint: $(GOOGLEAPIS) ## buf lint, go vet and staticcheck
	$(BUF) lint
	go vet ./...
	go tool staticcheck ./...

generate: $(GOOGLEAPIS) ## Regenerate gen/ from proto/ (pinned plugins, no network registry)
	$(BUF) generate
	$(BUF) build --as-file-descriptor-set -o gen/descriptors.binpb
	go run ./internal/openapigen -in .build/openapi/openapi.yaml -out gen/openapi/openapi.json

proto-check: generate ## Fail if gen/ is stale or the API broke compatibility with main (buf breaking, FILE rules)
	git diff --exit-code -- gen/
	./scripts/proto-breaking.sh

bench: postgres ## Load figures (servers on loopback, durable PostgreSQL); BENCH_QUICK=1 for a short run, BENCH_PROFILE=dir for a server CPU profile
	@./scripts/ensure-bench-tools.sh
	go build -o bin/secrets-bench ./cmd/secrets-bench
	./bin/secrets-bench

reliability: postgres ## Break things on purpose: kill -9, database restart, abuse, plaintext hunt, SIGTERM (RELIABILITY_SHORT=1: CI's small counts)
	RELIABILITY=1 go test $(GO_TEST_FLAGS) -count=1 -timeout 20m -v ./reliability/

IMAGE ?= localhost/orient-secrets:dev

image: ## Build the container image IMAGE with podman (static binaries, FROM scratch; VERSION=… to label it)
	@./scripts/ensure-podman.sh
	IMAGE=$(IMAGE) ./scripts/build-image.sh

image-test: postgres image ## Build the image, then run secretsd from its exported filesystem (chroot, as root) against PostgreSQL
	IMAGE_TEST=1 IMAGE=$(IMAGE) go test $(GO_TEST_FLAGS) -count=1 -timeout 10m -v ./deploy/

# Fuzz targets: every Fuzz* function of these packages, FUZZTIME each.
FUZZTIME ?= 30s
FUZZ_PACKAGES := ./server/catalog ./server/app ./server/seal
# Go 1.26's fuzz coordinator can fail a target with a bare "context deadline
# exceeded" when -fuzztime runs out (a race between the deadline and its
# child context, go.dev/issue/75804; no input is at fault and none is
# written). Go 1.27 fixed it, so fuzzing runs on that toolchain, which the go
# command takes from the module proxy; the rest of the build stays on go.mod's
# Go. FUZZ_GOTOOLCHAIN=local fuzzes with the machine's own Go.
FUZZ_GOTOOLCHAIN ?= go1.27.3

fuzz: ## Run every fuzz target for FUZZTIME each (default 30s; CI: make fuzz FUZZTIME=3s)
	@set -eo pipefail; export GOTOOLCHAIN=$(FUZZ_GOTOOLCHAIN); go version; \
	for pkg in $(FUZZ_PACKAGES); do \
		targets=$$(go test -list '^Fuzz' $$pkg | grep '^Fuzz'); \
		for target in $$targets; do \
			echo "== $$pkg $$target ($(FUZZTIME))"; \
			go test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

local-kms: ## Build local-kms (pinned) into .build/bin: the AWS KMS stand-in of the awskms:// KEK driver's tests
	@./scripts/ensure-local-kms.sh

# Without npm the azblob:// driver's tests skip (CI sets REQUIRE_API_TOOLS=1,
# which turns that skip into a failure).
azurite: ## Install Azurite (pinned in tools/azurite): the Azure Blob Storage emulator of the azblob:// driver's tests
	@./scripts/ensure-azurite.sh || echo "Azurite not installed: the azblob:// driver's tests will skip" >&2

# Without npm the dashboard's accessibility checks skip (CI sets
# REQUIRE_BROWSER_TESTS=1, which turns that skip into a failure).
ui-tools: ## Install axe-core (pinned in tools/axe) for the dashboard's accessibility tests
	@./scripts/ensure-axe.sh || echo "axe-core not installed: the dashboard's accessibility checks will skip" >&2

postgres: ## Make sure the PostgreSQL server binaries are installed (tests and `make run` start their own cluster)
	@./scripts/ensure-postgres.sh

$(GOOGLEAPIS):
	@rm -rf .build/googleapis; \
	dir=$$(go mod download -json $(GOOGLEAPIS_MODULE) | sed -n 's/.*"Dir": "\(.*\)",*/\1/p'); \
	test -n "$$dir" || { echo "cannot download $(GOOGLEAPIS_MODULE)"; exit 1; }; \
	gdir=$$(go mod download -json $(GNOSTIC_MODULE) | sed -n 's/.*"Dir": "\(.*\)",*/\1/p'); \
	test -n "$$gdir" || { echo "cannot download $(GNOSTIC_MODULE)"; exit 1; }; \
	mkdir -p .build/googleapis/google && cp -r $$dir/third_party/googleapis/google/api $$dir/third_party/googleapis/google/rpc .build/googleapis/google/ && \
	chmod -R u+w .build/googleapis && \
	cp $$gdir/cmd/protoc-gen-openapi/examples/google/api/field_behavior.proto .build/googleapis/google/api/ && \
	chmod u+w $@

clean: ## Remove build outputs (not the data directory)
	rm -rf bin .build
