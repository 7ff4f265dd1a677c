#!/usr/bin/env bash
# Builds the test tools that come from the Go module proxy rather than
# Debian, into bin/tools/: crictl, which drives containerd's CRI plugin in
# e2e/runtime_containerd_test.go (a tool, not a dependency of the module).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin/tools
if [ ! -x bin/tools/crictl ]; then
  GOBIN="$PWD/bin/tools" go install sigs.k8s.io/cri-tools/cmd/crictl@v1.34.0
fi
