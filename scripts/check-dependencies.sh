#!/usr/bin/env bash
# The workspace's dependency rules, checked from `cargo metadata` (offline, a second or two):
#  - the solver and the agent core depend on no IO crate (async runtime, Kubernetes client, etcd, NVML,
#    gRPC, HTTP); the solver not on Kubernetes types or metrics either;
#  - NVML and the agent stay out of the operator library's and simulate's trees, and gRPC comes in
#    only as etcd's client (NB: tonic and prost are there, as etcd-client's transport and generated
#    code: the plan store speaks etcd's gRPC API);
#  - no crate has a normal or build dependency on a binary crate (kilowatt-node-agent, kilowatt-cli),
#    except the tests crate, which runs the agent's IO in-process to test it;
#  - crds depends on no glue (runtime, client, etcd, HTTP, metrics);
# and the solver's code does no file, network, process, environment, thread or clock access.
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')

# A crate's tree as building it alone resolves it (its own features, normal and build edges), without
# the crate itself.
tree() {
  cargo tree -p "$1" -e normal,build --target "$host" --prefix none --format '{p}' | awk '{print $1}' |
    grep -vx "$1" | sort -u
}

# The crates that depend on $2 directly in $1's tree.
dependents() {
  cargo tree -p "$1" -i "$2" -e normal,build --target "$host" --depth 1 --prefix none --format '{p}' |
    awk -v crate="$2" 'NF && $1 != crate {print $1}' | sort -u
}

IO='tokio|kube-client|kube-runtime|etcd-client|nvml-wrapper|nvml-wrapper-sys|tonic|axum|hyper|reqwest|tower'
NVML_AGENT='nvml-wrapper|nvml-wrapper-sys|kilowatt-node-agent'
failures=()
check() { # crate, forbidden (an extended regex of whole names), why
  local crates found
  crates=$(tree "$1")
  found=$(grep -xE "$2" <<<"$crates" | tr '\n' ' ' || true)
  if [ -n "$found" ]; then
    failures+=("$1: $3, but its tree has $found")
  else
    echo "ok: $1: $3 ($(wc -l <<<"$crates") crates in its tree)"
  fi
}
check kilowatt-solver "$IO|kube|kube-[a-z-]+|k8s-openapi|prometheus|futures|async-std" "the solver is pure"
check kilowatt-agent-core "$IO" "the agent core does no IO"
check kilowatt-operator "$NVML_AGENT" "no NVML and no agent in the operator library"
check kilowatt-simulate "$NVML_AGENT" "no NVML and no agent binary crate in simulate"
# gRPC comes in only as etcd's client: tonic through etcd-client (and the operator, which reads the
# status code of etcd-client's errors).
grpc_ok=true
for crate in kilowatt-operator kilowatt-simulate; do
  others=$(dependents "$crate" tonic | grep -vxE 'etcd-client|tonic-prost|kilowatt-operator' | tr '\n' ' ' || true)
  if [ -n "$others" ]; then
    failures+=("$crate: tonic may come in only through etcd-client, but $others depend on it")
    grpc_ok=false
  fi
done
$grpc_ok && echo "ok: gRPC in the operator library and simulate only as etcd's client"
check kilowatt-crds "$IO|prometheus|kilowatt-[a-z-]+" "crds depends on no glue"

# Direct dependencies on the binary crates, from the manifests (dev-dependencies are not shipped).
on_binaries=$(cargo metadata --format-version 1 --no-deps | jq -r '
  .packages[] | .name as $crate | .dependencies[]
  | select($crate != "kilowatt-tests")
  | select((.name == "kilowatt-node-agent" or .name == "kilowatt-cli") and .kind != "dev")
  | "\($crate) depends on the binary crate \(.name)"')
if [ -n "$on_binaries" ]; then
  failures+=("$on_binaries")
else
  echo "ok: no crate depends on a binary crate (only the tests crate, which tests them)"
fi

if ((${#failures[@]})); then
  printf 'dependency rules violated:\n' >&2
  printf '  %s\n' "${failures[@]}" >&2
  exit 1
fi

forbidden_code='std::(fs|net|process|env|thread)\b|std::time::(Instant|SystemTime)|\bInstant::now|SystemTime::now|\b(e?print(ln)?|dbg)!'
bad_code=$(grep -rnE "$forbidden_code" solver/src || true)
if [ -n "$bad_code" ]; then
  echo "solver purity violated (IO or clock in solver/src):" >&2
  echo "$bad_code" | sed 's/^/  /' >&2
  exit 1
fi
echo "ok: no IO or clock in solver/src"
