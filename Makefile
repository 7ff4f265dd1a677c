# Pier — the two commands a person runs are `make demo` and `make test`.
GO ?= go

.PHONY: build demo test fuzz deps bench clean

# Static binaries (no cgo): the plugins start ~0.6 ms faster without the
# dynamic loader, and they are exec'd once per container.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/ ./cmd/...

deps:
	./scripts/deps.sh

demo: deps build
	bin/pierctl demo

# Unit tests everywhere; as root, also the namespace and end-to-end tests;
# then each fuzzer briefly (its seed corpus always runs with the unit tests).
test: deps
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 30m ./...
	$(MAKE) fuzz

FUZZTIME ?= 15s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzLoadNetConf$$' -fuzztime $(FUZZTIME) ./internal/config/
	$(GO) test -run '^$$' -fuzz '^FuzzParseRecord$$' -fuzztime $(FUZZTIME) ./internal/ipam/store/
	$(GO) test -run '^$$' -fuzz '^FuzzParseIndex$$' -fuzztime $(FUZZTIME) ./internal/ipam/store/

# Pier against the reference bridge + host-local, side by side (root).
bench: deps build
	$(GO) run ./bench

clean:
	rm -rf bin/
