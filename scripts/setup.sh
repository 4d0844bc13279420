#!/usr/bin/env bash
# Installs the system packages the build and tests need, if they are missing (Debian/Ubuntu, as root or
# with sudo): cmake, a C++ compiler and libclang for HiGHS (built from source by good_lp's `highs`
# feature); protoc for etcd-client and the kubelet API; etcd, openssl, kill (procps) and ip (iproute2,
# for the fault suite's network namespace), Prometheus (the dashboards test) and Chromium with
# chromedriver (the web page test) for the tests; jq for the dependency rules (scripts/check-dependencies.sh)
# and the image scripts; containerd, runc, the CNI plugins, iptables, conntrack and curl for the
# end-to-end test's single-node cluster (scripts/cluster.sh); PostgreSQL 15 for the OpenADR VTN the
# OpenADR test runs, and libssl-dev and pkg-config to build that VTN (openleadr-vtn, installed below).
# Go (1.26+) must already be installed: the tests build kube-apiserver from Go modules (once, cached).
set -euo pipefail

packages=(cmake g++ libclang-dev protobuf-compiler etcd-server openssl procps iproute2 prometheus chromium chromium-driver jq
  containerd runc containernetworking-plugins iptables conntrack curl postgresql libssl-dev pkg-config)
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
# A real OpenADR 3.1 VTN for the OpenADR test (tests/src/vtn.rs), built once into ~/.cache/kilowatt: a
# binary, not a workspace dependency (it builds the paho MQTT C library). Its own target directory keeps
# it off the workspace's. `--locked` pins the crate's published Cargo.lock; a registry mirror that lacks
# one of those pinned versions gets a fresh resolution instead.
vtn_root="$HOME/.cache/kilowatt/openleadr-vtn-0.2.8"
if [ ! -x "$vtn_root/bin/openleadr-vtn" ]; then
  echo "setup: building openleadr-vtn 0.2.8 into $vtn_root (several minutes, once)" >&2
  vtn_install=(env CARGO_TARGET_DIR="$HOME/.cache/kilowatt/openleadr-vtn-build" SQLX_OFFLINE=true
    cargo install --quiet openleadr-vtn --version 0.2.8 --features internal-oauth --root "$vtn_root")
  "${vtn_install[@]}" --locked || "${vtn_install[@]}"
fi
# Its migrations, which the harness applies itself (the VTN wants PostgreSQL 16+; Debian 12's 15 refuses
# one statement of them as the VTN runs them; see tests/src/vtn.rs), from the crate's source that
# `cargo install` unpacked.
if [ ! -d "$vtn_root/migrations" ]; then
  vtn_source=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/openleadr-vtn-0.2.8 2>/dev/null | head -n 1 || true)
  [ -d "$vtn_source/migrations" ] || {
    echo "setup: openleadr-vtn 0.2.8's source is gone from cargo's registry; remove $vtn_root and rerun" >&2
    exit 1
  }
  cp -r "$vtn_source/migrations" "$vtn_root/migrations.tmp" && mv "$vtn_root/migrations.tmp" "$vtn_root/migrations"
fi
