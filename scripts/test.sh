#!/usr/bin/env bash
# Sets up the machine and runs every check: formatting, clippy (warnings are errors), the solver's
# purity, and every test of the workspace (one profile: dev, with optimised dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== solver purity"
scripts/check-solver-purity.sh

echo "== cargo test"
cargo test --workspace
