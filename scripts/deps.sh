#!/usr/bin/env bash
# Installs the Debian packages Pier needs, when missing. Needs root.
#   scripts/deps.sh demo   what `make demo` needs: iproute2 (ip), nftables
#                          (nft, to show the rules) and iputils-ping
#   scripts/deps.sh test   the demo's, plus iptables, iperf3 and
#                          containernetworking-plugins (the reference plugins
#                          the tests and benchmarks compare against), and the
#                          real runtimes of e2e/runtime_*_test.go: podman,
#                          containerd, runc and busybox-static (their image),
#                          and etcd-server (the cluster-mode tests' etcd)
set -euo pipefail
pkgs=(iproute2 nftables iputils-ping)
if [ "${1:-test}" = test ]; then
  pkgs+=(iptables iperf3 containernetworking-plugins podman containerd runc busybox-static etcd-server)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y "${missing[@]}"
fi
