# jetgate: `make run` (embedded NATS + gateway) and `make test` (lint + whole suite).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint proto tools cloudevents-peer goclient node-deps lazyfs bench soak fuzz faults chaos clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: venv
	$(BIN)/jetgate up --config jetgate.toml

proto: venv
	$(BIN)/python proto/generate.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy --strict tools/trace_png.py
	$(BIN)/lint-imports

# The interop tests run real third-party peers, built from the Go module proxy into .tools/bin.
tools: cloudevents-peer goclient
	bash tools/install-go-tool.sh nats github.com/nats-io/natscli/nats v0.5.0
	bash tools/install-go-tool.sh grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl v1.9.3
	bash tools/install-go-tool.sh jaeger github.com/jaegertracing/jaeger/cmd/jaeger v1.76.0

# The CloudEvents Go SDK peer (tests/interop/cloudevents: sdk-go and its NATS JetStream
# binding, pinned by its go.mod and go.sum), rebuilt when its sources change.
GO ?= $(shell command -v go || echo /usr/local/go/bin/go)
TOOLS_BIN ?= .tools/bin
CE_PEER := tests/interop/cloudevents
cloudevents-peer: $(TOOLS_BIN)/cloudevents

$(TOOLS_BIN)/cloudevents: $(CE_PEER)/go.mod $(CE_PEER)/go.sum $(CE_PEER)/main.go
	mkdir -p $(TOOLS_BIN)
	cd $(CE_PEER) && HOME="$${HOME:-$$(getent passwd $$(id -u) | cut -d: -f6)}" \
		GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false" \
		$(GO) build -trimpath -o $(abspath $(TOOLS_BIN))/cloudevents .

# The Go client (tests/interop/goclient, docs/clients.md's recipe): its stubs are generated
# from proto/ at build time, by grpcio-tools' protoc with protoc-gen-go and
# protoc-gen-go-grpc from the Go module proxy (pinned here), into its nested module
# jetgate.dev/genproto (a replace in its go.mod; google.rpc comes from genproto); its
# dependencies are pinned by its go.mod and go.sum. Rebuilt when its sources or the protos change.
GO_CLIENT := tests/interop/goclient
GO_PROTOS := jetgate/v1/event.proto jetgate/v1/gateway.proto jetgate/v1/admin.proto \
	jetgate/examples/orders/v1/orders.proto
PROTOC_GEN_GO := google.golang.org/protobuf/cmd/protoc-gen-go v1.36.10
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc v1.5.1
goclient: $(TOOLS_BIN)/goclient

$(TOOLS_BIN)/goclient: Makefile $(GO_CLIENT)/go.mod $(GO_CLIENT)/go.sum \
		$(GO_CLIENT)/genproto/go.mod $(wildcard $(GO_CLIENT)/*.go) $(addprefix proto/,$(GO_PROTOS)) | $(STAMP)
	TOOLS_BIN=$(abspath $(TOOLS_BIN)) bash tools/install-go-tool.sh protoc-gen-go $(PROTOC_GEN_GO)
	TOOLS_BIN=$(abspath $(TOOLS_BIN)) bash tools/install-go-tool.sh protoc-gen-go-grpc $(PROTOC_GEN_GO_GRPC)
	rm -rf $(GO_CLIENT)/genproto/jetgate
	$(BIN)/python -m grpc_tools.protoc -Iproto \
		--plugin=protoc-gen-go=$(abspath $(TOOLS_BIN))/protoc-gen-go \
		--plugin=protoc-gen-go-grpc=$(abspath $(TOOLS_BIN))/protoc-gen-go-grpc \
		--go_out=$(GO_CLIENT)/genproto --go_opt=module=jetgate.dev/genproto \
		--go-grpc_out=$(GO_CLIENT)/genproto --go-grpc_opt=module=jetgate.dev/genproto \
		$(GO_PROTOS)
	cd $(GO_CLIENT) && HOME="$${HOME:-$$(getent passwd $$(id -u) | cut -d: -f6)}" \
		GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false" \
		$(GO) build -trimpath -o $(abspath $(TOOLS_BIN))/goclient .

# The Node client the interop tests run (docs/clients.md's recipe), from the committed lock.
NODE_CLIENT := tests/interop/node
node-deps: $(NODE_CLIENT)/node_modules/.package-lock.json

$(NODE_CLIENT)/node_modules/.package-lock.json: $(NODE_CLIENT)/package-lock.json
	cd $(NODE_CLIENT) && npm ci --no-audit --no-fund --ignore-scripts

# The simulated power-loss tests (tests/support/lazyfs.py): libfuse3 + fusermount3 from
# Debian's fuse3 (root, as on the dev machines and CI), mfusepy from PyPI. Needs /dev/fuse.
lazyfs: venv
	command -v fusermount3 >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3)
	$(BIN)/python -m pip install --quiet 'mfusepy==3.1.1'

test: venv tools node-deps lazyfs lint
	$(BIN)/python -m pytest -q --durations=15

# The fuzz suite's long profile: 3000 random examples per test against a live gateway (tests/fuzz;
# `make test` runs the bounded, derandomized `ci` profile), with hypothesis' case counts; no
# per-test time limit (pyproject's `timeout` is for `make test`).
fuzz: venv
	JETGATE_FUZZ_PROFILE=long $(BIN)/python -m pytest -q --timeout=0 tests/fuzz --hypothesis-show-statistics

# The fault suite (tests/faults) with ten times the events per scenario of `make test`, no
# per-test time limit.
faults: venv
	JETGATE_FAULTS_EVENTS=3000 $(BIN)/python -m pytest -q --timeout=0 tests/faults

# The cluster chaos tests (tests/faults/test_cluster.py: leader kill -9, restart, step-down
# under load; the demo pipeline through kills of the stream's and the consumer's leader)
# five times in a row, printing their counts; `make test` runs them once.
chaos: venv
	for i in 1 2 3 4 5; do $(BIN)/python -m pytest -q -s tests/faults/test_cluster.py || exit 1; done

# Publish, consume, end-to-end and tracing-cost figures next to their baselines, on its own servers (about 4 min).
bench: venv
	$(BIN)/python -m bench

# Gateway and worker RSS, open fds and threads while PublishStream runs for 10 min (issue 18).
soak: venv
	$(BIN)/python -m bench.soak --seconds 600

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache $(NODE_CLIENT)/node_modules $(GO_CLIENT)/genproto/jetgate
