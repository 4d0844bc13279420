#!/usr/bin/env bash
# Sets up the machine and solves the example problem: prints the plan (JSON) for examples/problem.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet -p kilowatt-operator
exec target/release/kilowatt solve --problem examples/problem.yaml --pretty "$@"
