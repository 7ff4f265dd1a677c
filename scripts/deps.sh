#!/usr/bin/env bash
# Installs the Debian packages Pier needs, when missing. Needs root.
#   scripts/deps.sh demo   what `make demo` needs: iproute2 (ip), nftables
#                          (nft, to show the rules) and iputils-ping
#   scripts/deps.sh test   the demo's, plus iptables, iperf3 and
#                          containernetworking-plugins (the reference plugins
#                          the tests and benchmarks compare against), and the
#                          real runtimes of e2e/runtime_*_test.go: podman,
#                          containerd, runc and busybox-static (their image),
#                          etcd-server (the cluster-mode tests' etcd), and
#                          docker.io, firewalld and dbus-daemon: the hosts
#                          whose own firewalls drop forwarded traffic, run
#                          by e2e/hostfw_test.go inside sandbox namespaces
set -euo pipefail
pkgs=(iproute2 nftables iputils-ping)
if [ "${1:-test}" = test ]; then
  pkgs+=(iptables iperf3 containernetworking-plugins podman containerd runc busybox-static etcd-server
    docker.io firewalld dbus-daemon)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  # docker.io and firewalld come with services that would take over the
  # machine's own firewall if started: the tests start them in sandbox
  # namespaces themselves, so the install must not. A policy-rc.d that
  # refuses every start is put in place for the install if there is none.
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$guard"
    chmod 755 "$guard"
    trap 'rm -f "$guard"' EXIT
  fi
  apt-get install -y "${missing[@]}"
fi
