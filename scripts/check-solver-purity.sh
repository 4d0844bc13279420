#!/usr/bin/env bash
# The solver crate must stay pure: no async runtime, Kubernetes, NVML, HTTP, etcd or metrics crates in
# its dependency tree, and no file, network, process, environment, thread or clock access in its code.
set -euo pipefail
cd "$(dirname "$0")/.."

forbidden_crates='^(tokio|kube|kube-[a-z-]+|k8s-openapi|nvml-wrapper|axum|hyper|reqwest|etcd-client|prometheus|tonic|async-std|futures)$'
crates=$(cargo tree -p kilowatt-solver -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
bad_crates=$(grep -E "$forbidden_crates" <<<"$crates" || true)

forbidden_code='std::(fs|net|process|env|thread)\b|std::time::(Instant|SystemTime)|\bInstant::now|SystemTime::now|\b(e?print(ln)?|dbg)!'
bad_code=$(grep -rnE "$forbidden_code" solver/src || true)

if [ -n "$bad_crates" ] || [ -n "$bad_code" ]; then
  echo "solver purity violated:" >&2
  [ -n "$bad_crates" ] && echo "  dependencies: $bad_crates" >&2
  [ -n "$bad_code" ] && echo "$bad_code" | sed 's/^/  /' >&2
  exit 1
fi
echo "solver is pure: $(wc -l <<<"$crates") crates in its tree, none forbidden; no IO or clock in solver/src"
