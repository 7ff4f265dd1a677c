# Pier — the two commands a person runs are `make demo` and `make test`.
GO ?= go

.PHONY: build demo test deps fuzz clean

build:
	$(GO) build -o bin/ ./cmd/...

deps:
	./scripts/deps.sh

demo: deps build
	bin/pierctl demo

# Unit tests everywhere; as root, also the namespace and end-to-end tests.
test: deps
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 30m ./...

clean:
	rm -rf bin/
