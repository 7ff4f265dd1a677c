# Pier — the two commands a person runs are `make demo` and `make test`.
GO ?= go

.PHONY: build demo test fuzz deps bench bench-kube clean

# Static binaries (no cgo): the plugins start ~0.6 ms faster without the
# dynamic loader, and they are exec'd once per container.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/ ./cmd/...

deps:
	./scripts/deps.sh test
	./scripts/tools.sh

demo: build
	./scripts/deps.sh demo
	bin/pierctl demo

# Unit tests everywhere; as root, also the namespace and end-to-end tests;
# then each fuzzer briefly (its seed corpus always runs with the unit tests).
test: deps
	$(GO) vet ./...
	PIER_CRICTL=$(CURDIR)/bin/tools/crictl \
	PIER_KUBE_APISERVER=$(CURDIR)/bin/tools/kube-apiserver PIER_KUBELET=$(CURDIR)/bin/tools/kubelet \
		$(GO) test -count=1 -timeout 30m ./...
	$(MAKE) fuzz

FUZZTIME ?= 15s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzLoadNetConf$$' -fuzztime $(FUZZTIME) ./internal/config/
	$(GO) test -run '^$$' -fuzz '^FuzzParseRecord$$' -fuzztime $(FUZZTIME) ./internal/ipam/store/
	$(GO) test -run '^$$' -fuzz '^FuzzParseIndex$$' -fuzztime $(FUZZTIME) ./internal/ipam/store/
	$(GO) test -run '^$$' -fuzz '^FuzzNodeRoutes$$' -fuzztime $(FUZZTIME) ./internal/kube/

# Pier against the reference bridge + host-local, side by side (root).
bench: deps build
	$(GO) run ./bench

# Kubernetes mode against flannel (the anchor), side by side in one run,
# against a real kube-apiserver (root; builds flanneld once into bin/tools).
bench-kube: deps
	PIER_MEASURE=1 PIER_BENCH_OUT=$(CURDIR)/docs/benchmarks.md \
	PIER_KUBE_APISERVER=$(CURDIR)/bin/tools/kube-apiserver \
		$(GO) test -count=1 -run TestKubeVsFlannel -v -timeout 30m ./bench/kube/

# Regenerates the Go code of pierd's gRPC API (internal/ipamrpc/ipamv1);
# the generated files are committed, so builds and CI need no protoc. Needs
# protoc (Debian: protobuf-compiler) and, in $(GO) env GOPATH's bin:
#   go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
#   go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
.PHONY: proto
PROTOS = internal/ipamrpc/ipamv1/ipam.proto internal/ipamrpc/ipamv1/ipamv1grpc/ipam_service.proto
proto:
	PATH="$$($(GO) env GOPATH)/bin:$$PATH" protoc -I . \
		--go_out=. --go_opt=module=github.com/pier-cni/pier \
		--go-grpc_out=. --go-grpc_opt=module=github.com/pier-cni/pier $(PROTOS)

clean:
	rm -rf bin/
