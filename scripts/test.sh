#!/usr/bin/env bash
# Sets up the machine and runs every check: formatting, clippy (warnings are errors), the dependency
# rules, and every test of every tier (one profile: dev, with optimised dependencies): the default
# members' tests, the tests crate's control-plane, fault, browser and chart tests, and the tests
# ignored by default for what they need (../shared/data); then the end-to-end install on a real
# single-node cluster (scripts/e2e.sh, as root). The GPU smoke test still needs a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
# rustup's and Go's usual install directories, for shells (such as CI's) that lack them on PATH; the
# control-plane tests build kube-apiserver with go.
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"
scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== dependency rules"
scripts/check-dependencies.sh

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Every tier: --workspace adds the tests crate to the default members, --include-ignored the tests that
# need ../shared/data; the NVML smoke test needs a GPU and runs on a GPU machine (scripts/gpu-check.sh).
cargo test --workspace -- --include-ignored --skip nvml_reads_sets_and_restores_gpu_0 2>&1 | tee "$log"
# One closing line for the whole workspace (cargo prints one per test binary, the last being doc tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "workspace: %d passed, %d failed\n", p, f }' "$log"

echo "== end-to-end: scripts/e2e.sh"
# The installed product on a real single-node cluster (needs root, as CI has), from the binaries the
# tests above built; it ends with `e2e: N passed, M failed` and fails the run if any step failed.
scripts/e2e.sh --binaries "${CARGO_TARGET_DIR:-target}/debug"
