#!/usr/bin/env bash
# Sets up the machine, builds Kilowatt and runs `kilowatt simulate` on its built-in scenario (2 rows,
# 4 racks, 32 nodes x 8 simulated GPUs, a demand-response dip), 60x real time: the live page is at the
# address it prints (http://127.0.0.1:8090/) and stays up after the 2-minute run until Ctrl-C.
# Extra arguments go to `kilowatt simulate` (e.g. --speed max --json, --plot run.svg).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
exec cargo run --release --quiet -p kilowatt-cli --bin kilowatt -- simulate --hold "$@"
