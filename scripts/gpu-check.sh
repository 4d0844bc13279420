#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one go, on a GPU machine: the NVML smoke test (inventory,
# energy, a power-limit round trip and a clock lock, each restored), then kilowatt-agent with the nvml
# backend against a local etcd: it registers the GPUs, enforces a plan written to etcd (limit read back
# with nvidia-smi), acknowledges it, serves /metrics, and on SIGTERM leaves the GPUs at their floors.
# The GPU's original power limit is restored at the end.
#
#   scripts/gpu-check.sh BIN_DIR [OUT_DIR]
#
# BIN_DIR holds `gpu_smoke` (the test executable of node-agent/tests/gpu_smoke.rs), `kilowatt-agent` and
# `etcd`; OUT_DIR (default: a temporary directory) receives the logs.
set -uo pipefail
bin=$(realpath "${1:?usage: scripts/gpu-check.sh BIN_DIR [OUT_DIR]}")
out=${2:-$(mktemp -d)}
mkdir -p "$out"
work=$(mktemp -d)
node=gpu-check
prefix=/kilowatt-gpu-check
etcd_url=http://127.0.0.1:23791

say() { printf '\n== %s\n' "$*"; }
etcd_get() { # key -> value (JSON text) or nothing
  curl -sf "$etcd_url/v3/kv/range" -d "{\"key\":\"$(printf %s "$1" | base64 -w0)\"}" |
    python3 -c 'import sys, json, base64; kvs = json.load(sys.stdin).get("kvs", []); print(base64.b64decode(kvs[0]["value"]).decode() if kvs else "")'
}
etcd_put() { # key value
  curl -sf "$etcd_url/v3/kv/put" -d "{\"key\":\"$(printf %s "$1" | base64 -w0)\",\"value\":\"$(printf %s "$2" | base64 -w0)\"}" >/dev/null
}
limit_watts() { nvidia-smi -i 0 --query-gpu=power.limit --format=csv,noheader,nounits | tr -d ' '; }

say "GPU"
nvidia-smi --query-gpu=name,driver_version,power.limit,power.min_limit,power.max_limit,power.default_limit,clocks.sm --format=csv | tee "$out/nvidia-smi.txt"
original=$(limit_watts)

say "NVML smoke test"
"$bin/gpu_smoke" --ignored --nocapture 2>&1 | tee "$out/smoke.log"
smoke=${PIPESTATUS[0]}

say "agent on NVML with a local etcd"
"$bin/etcd" --data-dir "$work/etcd" --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
  --listen-peer-urls http://127.0.0.1:23801 --initial-advertise-peer-urls http://127.0.0.1:23801 \
  --initial-cluster default=http://127.0.0.1:23801 >"$out/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 50); do curl -sf "$etcd_url/health" >/dev/null && break; sleep 0.2; done
RUST_LOG=info "$bin/kilowatt-agent" --node "$node" --gpu-backend nvml --etcd-endpoints "$etcd_url" \
  --etcd-prefix "$prefix" --lease-ttl-seconds 4 --drift-check-seconds 2 --listen 127.0.0.1:9400 \
  >"$out/agent.log" 2>&1 &
agent_pid=$!
inventory=""
for _ in $(seq 50); do inventory=$(etcd_get "$prefix/v1/nodes/$node/inventory"); [ -n "$inventory" ] && break; sleep 0.2; done
echo "inventory: $inventory"
agent=1
if [ -z "$inventory" ]; then
  echo "the agent registered no inventory; its log:"; cat "$out/agent.log"; agent=0
else
  read -r floor target < <(python3 -c 'import json, sys; g = json.loads(sys.argv[1])["gpus"][0]; lo, hi = g["minLimitWatts"], g["maxLimitWatts"]; print(lo, round((lo + hi) / 2))' "$inventory")
  plan=$(python3 -c 'import json, sys; inv = json.loads(sys.argv[1]); print(json.dumps({"revision": 1, "budget": "gpu-check", "overheadWatts": 0, "gpus": [{"id": "%s/gpu%d" % (sys.argv[2], g["index"]), "index": g["index"], "powerLimitWatts": float(sys.argv[3]), "floorWatts": g["minLimitWatts"]} for g in inv["gpus"]]}))' "$inventory" "$node" "$target")
  echo "plan: $plan"
  put_at=$(date +%s%N)
  etcd_put "$prefix/v1/nodes/$node/plan" "$plan"
  ack=""
  for _ in $(seq 500); do ack=$(etcd_get "$prefix/v1/nodes/$node/ack"); [ -n "$ack" ] && break; sleep 0.02; done
  echo "acknowledgement: $ack ($(( ($(date +%s%N) - put_at) / 1000000 )) ms after the plan was written, polled every 20 ms)"
  echo "nvidia-smi power limit while the plan is enforced: $(limit_watts) W (plan: $target W)"
  curl -sf http://127.0.0.1:9400/metrics | grep -E '^kilowatt_(gpu|agent)_' | tee "$out/metrics.txt" | head -40
  [ -n "$ack" ] || agent=0
  kill -TERM "$agent_pid"; wait "$agent_pid"
  echo "agent exit status: $?; power limit after SIGTERM: $(limit_watts) W (floor: $floor W)"
  grep -iE 'termination|floor|adopted|acknowledged|error' "$out/agent.log" | tail -8
fi
kill "$etcd_pid" 2>/dev/null; wait "$etcd_pid" 2>/dev/null

say "restore"
nvidia-smi -i 0 -pl "$original" >/dev/null 2>&1 || echo "could not restore the power limit with nvidia-smi"
nvidia-smi -i 0 -rgc >/dev/null 2>&1 || true
echo "power limit now: $(limit_watts) W (was $original W)"
echo "smoke test exit: $smoke; agent check: $([ "$agent" = 1 ] && echo ok || echo failed)"
[ "$smoke" = 0 ] && [ "$agent" = 1 ]
