#!/usr/bin/env bash
# Installs the Debian packages Pier's demo and tests use, when missing:
# iproute2 (ip), nftables (nft, to show and check rules), iputils-ping,
# iperf3, and containernetworking-plugins (the reference plugins the tests
# and benchmarks compare against). Needs root.
set -euo pipefail
pkgs=(iproute2 nftables iptables iputils-ping iperf3 containernetworking-plugins)
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
