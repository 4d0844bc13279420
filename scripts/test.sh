#!/usr/bin/env bash
# Sets up the machine and runs every check: formatting, clippy (warnings are errors), the solver's
# purity, and every test of the workspace (one profile: dev, with optimised dependencies).
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

echo "== solver purity"
scripts/check-solver-purity.sh

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
# One closing line for the whole workspace (cargo prints one per test binary, the last being doc tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "workspace: %d passed, %d failed\n", p, f }' "$log"
