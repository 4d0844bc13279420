#!/usr/bin/env bash
# Measures kilowatt-agent's CPU and memory: starts a local etcd and the agent with the given arguments,
# waits 5 s, then reads utime+stime from /proc/PID/stat over SECONDS and VmRSS/VmHWM at the end.
#
#   scripts/agent-overhead.sh BIN_DIR SECONDS [AGENT ARGS...]
#
# BIN_DIR holds `kilowatt-agent` and `etcd`. Example (simulated, 8 GPUs, 1 Hz):
#   scripts/agent-overhead.sh target/debug 60 --gpu-backend simulated --simulated-gpus 8 --sample-ms 1000
set -euo pipefail
bin=$(realpath "${1:?usage: scripts/agent-overhead.sh BIN_DIR SECONDS [AGENT ARGS...]}")
seconds=${2:?usage: scripts/agent-overhead.sh BIN_DIR SECONDS [AGENT ARGS...]}
shift 2
work=$(mktemp -d)
etcd_url=http://127.0.0.1:23792
"$bin/etcd" --data-dir "$work/etcd" --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
  --listen-peer-urls http://127.0.0.1:23802 --initial-advertise-peer-urls http://127.0.0.1:23802 \
  --initial-cluster default=http://127.0.0.1:23802 >"$work/etcd.log" 2>&1 &
etcd_pid=$!
trap 'kill "$etcd_pid" 2>/dev/null; kill "${agent_pid:-}" 2>/dev/null; rm -rf "$work"' EXIT
sleep 2
"$bin/kilowatt-agent" --node overhead-1 --etcd-endpoints "$etcd_url" --listen 127.0.0.1:19401 "$@" \
  >"$work/agent.log" 2>&1 &
agent_pid=$!
sleep 5
kill -0 "$agent_pid" || { cat "$work/agent.log"; exit 1; }
ticks() { awk '{ print $14 + $15 }' "/proc/$agent_pid/stat"; }
hz=$(getconf CLK_TCK)
before=$(ticks)
sleep "$seconds"
after=$(ticks)
used=$((after - before))
echo "agent args: $*"
echo "CPU over ${seconds} s: ${used} ticks of 1/${hz} s = $(awk -v t="$used" -v hz="$hz" -v s="$seconds" 'BEGIN { printf "%.3f", 100 * t / hz / s }') % of one core"
grep -E '^(VmRSS|VmHWM)' "/proc/$agent_pid/status"
