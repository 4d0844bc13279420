#!/usr/bin/env bash
# Installs the system packages the build and tests need, if they are missing (Debian/Ubuntu, as root or
# with sudo): cmake, a C++ compiler and libclang for HiGHS (built from source by good_lp's `highs`
# feature); protoc for etcd-client and the kubelet API; etcd, openssl, kill (procps) and ip (iproute2,
# for the fault suite's network namespace), Prometheus (the dashboards test) and Chromium with
# chromedriver (the web page test) for the tests; jq for the dependency rules (scripts/check-dependencies.sh)
# and the image scripts; containerd, runc, the CNI plugins, iptables, conntrack and curl for the
# end-to-end test's single-node cluster (scripts/cluster.sh).
# Go (1.26+) must already be installed: the tests build kube-apiserver from Go modules (once, cached).
set -euo pipefail

packages=(cmake g++ libclang-dev protobuf-compiler etcd-server openssl procps iproute2 prometheus chromium chromium-driver jq
  containerd runc containernetworking-plugins iptables conntrack curl)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust 1.95+ (rustup)" >&2; exit 1; }
command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || { echo "setup: go not found; install Go 1.26+" >&2; exit 1; }
# The checks need rustfmt and clippy; a minimal rustup profile lacks them.
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
