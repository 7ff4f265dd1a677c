#!/usr/bin/env bash
# Builds the test tools that come from the Go module proxy rather than
# Debian, into bin/tools/ (tools, never dependencies of Pier's module):
#   crictl          drives containerd's CRI plugin (e2e/runtime_containerd_test.go)
#   kube-apiserver  the Kubernetes API the kubernetes-mode tests run against
#   kubelet         the node agent of the whole-chain test (kubelet → CRI → pier)
#
# kube-apiserver and kubelet come from k8s.io/kubernetes at KUBE_VERSION. That
# module's go.mod points its staging modules (k8s.io/api, client-go, …) at
# directories of its own repository with version v0.0.0, which only works
# inside that repository; a throwaway module under bin/ requires it and
# replaces each staging module with its published release (v0.X.Y for
# v1.X.Y). Built with -trimpath, without cgo or the race detector; only
# what the tests run.
#   scripts/tools.sh          all tools
#   scripts/tools.sh kube     kube-apiserver and kubelet only
set -euo pipefail
cd "$(dirname "$0")/.."
KUBE_VERSION=v1.37.2
CRICTL_VERSION=v1.34.0
tools="$PWD/bin/tools"
mkdir -p "$tools"

build_crictl() {
  if [ ! -x "$tools/crictl" ]; then
    GOBIN="$tools" go install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  fi
}

# kube_built says whether bin/tools holds kube-apiserver and kubelet of
# KUBE_VERSION (a stamp file, since the binaries' --version needs flags
# parsed and costs a start).
kube_built() {
  [ -x "$tools/kube-apiserver" ] && [ -x "$tools/kubelet" ] &&
    [ "$(cat "$tools/.kube-version" 2>/dev/null)" = "$KUBE_VERSION" ]
}

build_kube() {
  kube_built && return 0
  local mod staging
  mod="$PWD/bin/kube-build"
  rm -rf "$mod"
  mkdir -p "$mod"
  staging="v0.${KUBE_VERSION#v1.}"
  # The kubernetes go.mod names its staging modules at v0.0.0: those are
  # the ones to replace.
  local gomod
  gomod="$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  {
    echo "module pier.invalid/kube-build"
    echo
    echo "go 1.26"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    awk '$2 == "v0.0.0" && $1 ~ /^k8s\.io\// { print "\t" $1 " => " $1 " '"$staging"'" }' "$gomod"
    echo ")"
  } >"$mod/go.mod"
  # The main packages only: go get resolves their imports and nothing else
  # of the kubernetes repository.
  (cd "$mod" &&
    go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" "k8s.io/kubernetes/cmd/kubelet@$KUBE_VERSION" &&
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$tools/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubelet)
  echo "$KUBE_VERSION" >"$tools/.kube-version"
  rm -rf "$mod"
}

case "${1:-all}" in
all)
  build_crictl
  build_kube
  ;;
kube) build_kube ;;
*)
  echo "usage: $0 [all|kube]" >&2
  exit 2
  ;;
esac
