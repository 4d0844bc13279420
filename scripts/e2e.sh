#!/usr/bin/env bash
# The end-to-end test: Kilowatt installed as users install it, on a real single-node cluster
# (scripts/cluster.sh: kubelet, scheduler, controller-manager, kube-proxy, CoreDNS, containerd, CNI),
# from the image scripts/image.sh builds, with the chart's RBAC unmodified and the agent's simulated
# GPUs advertised to the kubelet by its device plugin. Steps: helm install until every pod is Ready;
# budgets and GPU pods placed by the real scheduler, planned on the GPUs the kubelet gave them; a cap
# cut enforced within 2 s while a sampler reads every GPU's limit; the leader pod and the agent pod
# deleted; Prometheus discovering the pods; a helm upgrade; helm uninstall. Ends with
# `e2e: N passed, M failed`. Needs root.
#
# Usage: scripts/e2e.sh [--binaries DIR]   (default: $CARGO_TARGET_DIR/debug, the test profile's
#                                           binaries that `cargo test --workspace` builds)
# Logs and the sampler's samples stay in $E2E_DIR (default: a fresh /tmp/kilowatt-e2e.* directory).
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
binaries="${CARGO_TARGET_DIR:-target}/debug"
while (($#)); do
  case "$1" in
    --binaries) binaries="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "e2e: unknown argument $1" >&2; exit 2 ;;
  esac
done
dir="${E2E_DIR:-$(mktemp -d /tmp/kilowatt-e2e.XXXXXX)}"
mkdir -p "$dir/images"
helm_bin="${KILOWATT_HELM:-$HOME/.cache/kilowatt/helm-v3.22.0}"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
node=kw-node
passed=0
failed=0

say() { echo "e2e: $*"; }
check() {
  local name="$1"; shift
  if "$@"; then
    say "ok   $name"; passed=$((passed + 1))
  else
    say "FAIL $name"; failed=$((failed + 1))
  fi
}
finish() {
  stop_sampler
  if [ -d "$dir/cluster" ]; then
    cp -r "$dir/cluster/logs" "$dir/cluster-logs" 2>/dev/null
    cp -r /var/log/pods "$dir/pod-logs" 2>/dev/null
    scripts/cluster.sh down "$dir/cluster"
  fi
  rm -rf /var/lib/kilowatt-simulated
  say "logs in $dir"
  say "$passed passed, $failed failed"
  if [ "$failed" -gt 0 ] || [ "$passed" -eq 0 ]; then exit 1; fi
}
trap finish EXIT

# Waits up to $1 seconds for the command after it to succeed.
within() {
  local seconds="$1"; shift
  local deadline
  deadline=$(date +%s.%N | awk -v s="$seconds" '{ printf "%.3f", $1 + s }')
  until "$@" >/dev/null 2>&1; do
    if awk -v d="$deadline" -v n="$(date +%s.%N)" 'BEGIN { exit !(n > d) }'; then return 1; fi
    sleep 0.2
  done
}
in_cluster() { scripts/cluster.sh exec "$@"; }
k() { in_cluster "$dir/cluster/bin/kubectl" --kubeconfig "$dir/cluster/admin.kubeconfig" "$@"; }
helm() { in_cluster "$helm_bin" --kubeconfig "$dir/cluster/admin.kubeconfig" "$@"; }
ns=(-n kilowatt-system)

operator_ip() { k "${ns[@]}" get pod -l app.kubernetes.io/name=kilowatt-operator -o jsonpath='{.items[0].status.podIP}'; }
plan() { in_cluster curl -sf --max-time 2 "http://$(operator_ip):8080/api/v1/plan"; }
lease_holder() { k "${ns[@]}" get lease kilowatt-operator -o jsonpath='{.spec.holderIdentity}'; }

# The simulated GPUs keep their limits in a file on the node (agent.simulated.settingsDir), as real
# GPUs keep theirs in the device: it outlives the agent's pod, and it is what they enforce.
gpu_settings=/var/lib/kilowatt-simulated/gpus.json
gpu_limits() { jq -r '.gpus[] | "\(.index) \(.powerLimitWatts)"' "$gpu_settings" | sort -n; }
# The sampler: every 50 ms, the sum of the GPUs' limits plus the node's overhead, with the time.
overhead=500
sampler_pid=""
start_sampler() {
  (while true; do
    total=$(gpu_limits 2>/dev/null | awk -v o="$overhead" 'NF == 2 { s += $2; n++ } END { if (n == 8) print s + o }')
    [ -n "$total" ] && echo "$(date +%s.%N) $total" >>"$dir/samples"
    sleep 0.05
  done) &
  sampler_pid=$!
}
stop_sampler() { [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null; sampler_pid=""; }
# Cap changes, "time cap" per line; a cut gives the rollout 2 s, the time the issue allows.
record_cap() { echo "$(date +%s.%N) $1" >>"$dir/caps"; }
samples_within_caps() {
  awk 'NR == FNR { t[NR] = $1; c[NR] = $2; n = NR; next }
       { allowed = 0
         for (i = 1; i <= n; i++) if (t[i] <= $1) { allowed = c[i]; if (i > 1 && c[i-1] > c[i] && $1 < t[i] + 2) allowed = c[i-1] }
         checked++
         if (allowed > 0 && $2 > allowed + 1e-6) { over++; printf "e2e: sample %s: %s W over the cap %s W\n", $1, $2, allowed } }
       END { printf "e2e: sampler: %d samples checked, %d over a cap\n", checked, over; exit !(checked > 0 && over == 0) }' \
    "$dir/caps" "$dir/samples"
}

say "building images and the cluster's binaries"
command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"
scripts/cluster.sh build || exit 1
# helm, as the chart tests build it (tests/helm), when they have not run first.
if [ ! -x "$helm_bin" ]; then
  say "building helm with go into $helm_bin (once)"
  (cd tests/helm && go build -o "$helm_bin.partial" helm.sh/helm/v3/cmd/helm) &&
    mv "$helm_bin.partial" "$helm_bin" || exit 1
fi
# Prometheus from Go modules: Debian's package is built without Kubernetes service discovery.
prometheus_version=v0.316.0
prometheus_bin="${KILOWATT_PROMETHEUS:-$HOME/.cache/kilowatt/prometheus-$prometheus_version}"
if [ ! -x "$prometheus_bin" ]; then
  say "building Prometheus $prometheus_version with go into $prometheus_bin (once; 5-15 minutes)"
  (cd tests/prometheus && go build -o "$prometheus_bin.partial" github.com/prometheus/prometheus/cmd/prometheus) &&
    mv "$prometheus_bin.partial" "$prometheus_bin" || exit 1
fi
scripts/image.sh --binaries "$binaries" --out "$dir/images/kilowatt.tar" --name "localhost/kilowatt:$version" || exit 1
etcd_image=$(tests/e2e/images.sh "$dir/images") || exit 1
scripts/cluster.sh up "$dir/cluster" || exit 1
for image in kilowatt pause etcd; do
  ctr --address "$dir/cluster/containerd/containerd.sock" -n k8s.io images import "$dir/images/$image.tar" >/dev/null || exit 1
done
# What NVIDIA's GPU feature discovery would label a node of 8 H100-SXM with (the chart's agent selects
# gpu.present; the operator picks default profiles by gpu.product), and the worked example's rack.
k label node "$node" nvidia.com/gpu.present=true nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3 rack=a1 >/dev/null
# etcd's volume: a local PersistentVolume, owned by etcd's user (a local volume ignores fsGroup).
mkdir -p "$dir/volumes/etcd" && chown 65532:65532 "$dir/volumes/etcd"
rm -rf /var/lib/kilowatt-simulated
sed "s|VOLUME_PATH|$dir/volumes/etcd|; s|NODE|$node|" tests/e2e/storage.yaml | k apply -f - >/dev/null

# 1. helm install, every pod Running and Ready.
install() {
  local started=$SECONDS
  helm install kilowatt helm/kilowatt --namespace kilowatt-system --create-namespace \
    -f tests/e2e/values.yaml --set image.tag="$version" --set etcd.internal.image="$etcd_image" >/dev/null &&
    k wait --for condition=established --timeout=60s crd/powerbudgets.kilowatt.dev crd/workloadprofiles.kilowatt.dev >/dev/null &&
    k "${ns[@]}" rollout status sts/kilowatt-etcd --timeout=180s >/dev/null &&
    k "${ns[@]}" rollout status deploy/kilowatt-operator --timeout=180s >/dev/null &&
    k "${ns[@]}" rollout status ds/kilowatt-agent --timeout=180s >/dev/null || return 1
  say "install: every pod Ready $((SECONDS - started)) s after helm install"
  k "${ns[@]}" get pods -o wide
  local holder
  holder=$(lease_holder)
  k "${ns[@]}" get pod "$holder" >/dev/null 2>&1 || { say "lease holder $holder is no operator pod"; return 1; }
  say "install: leader $holder"
}
check "helm install: CRDs, operator (2 replicas, one leader), agent, etcd Ready" install

# 2. Budgets and GPU pods.
gpu_capacity() { [ "$(k get node "$node" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')" = 8 ]; }
pods_running() {
  [ "$(k -n ml get pods -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c Running)" = 2 ]
}
budget_ready() {
  [ "$(k get powerbudget "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
# Each GPU's pod in the plan is the pod the kubelet allocated its device to (its checkpoint).
plan_names_kubelet_pods() {
  local checkpoint=/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint
  local by_uid planned allocated
  by_uid=$(k -n ml get pods -o jsonpath='{range .items[*]}{.metadata.uid} ml/{.metadata.name}{"\n"}{end}')
  allocated=$(jq -r '.Data.PodDeviceEntries[] | select(.ResourceName == "nvidia.com/gpu")
      | .PodUID as $uid | .DeviceIDs[][] | "\($uid) \(.)"' "$checkpoint" |
    while read -r uid device; do
      echo "${device##*-} $(awk -v u="$uid" '$1 == u { print $2 }' <<<"$by_uid")"
    done | sort -n)
  planned=$(plan | jq -r --arg n "$node" '.nodes[$n].gpus[] | "\(.index) \(.pod // "-")"' | sort -n)
  echo "$allocated" >"$dir/allocated"; echo "$planned" >"$dir/planned"
  [ -n "$allocated" ] && [ "$allocated" = "$planned" ]
}
planned_limits() { plan | jq -r --arg n "$node" '.nodes[$n].gpus[] | "\(.index) \(.powerLimitWatts)"' | sort -n; }
limits_enforced() {
  local planned enforced
  planned=$(planned_limits | awk '{ printf "%s %g\n", $1, $2 }')
  enforced=$(gpu_limits | awk '{ printf "%s %g\n", $1, $2 }')
  [ -n "$planned" ] && [ "$planned" = "$enforced" ]
}
workload() {
  within 60 gpu_capacity || { say "the node never advertised 8 nvidia.com/gpu"; return 1; }
  k apply -f tests/e2e/workload.yaml >/dev/null || return 1
  within 90 pods_running || { k -n ml get pods; return 1; }
  within 60 budget_ready rack-a1 || { k get powerbudgets; return 1; }
  local table
  table=$(k get powerbudgets)
  echo "$table"
  for column in CAP EFFECTIVE ALLOCATED HEADROOM READY; do
    head -n1 <<<"$table" | grep -qw "$column" || { say "kubectl get powerbudgets has no $column column"; return 1; }
  done
  within 30 plan_names_kubelet_pods || { say "kubelet gave $(cat "$dir/allocated"), the plan says $(cat "$dir/planned")"; return 1; }
  within 30 limits_enforced || { say "planned $(planned_limits | tr '\n' ' '), enforced $(gpu_limits | tr '\n' ' ')"; return 1; }
  say "workload: the plan names each pod on the GPUs the kubelet gave it; limits $(planned_limits | awk '{ print $2 }' | tr '\n' ' ')"
}
check "budgets Ready, GPU pods scheduled, planned on their GPUs and enforced" workload

# 3. A cap cut, enforced within 2 s, sampled throughout.
total_at_most() { gpu_limits | awk -v o="$overhead" -v cap="$1" '{ s += $2 } END { exit !(NR == 8 && s + o <= cap) }'; }
cap_cut() {
  record_cap 4800
  start_sampler
  sleep 2
  local started
  started=$(date +%s.%N)
  record_cap 3000
  k patch powerbudget rack-a1 --type merge -p '{"spec": {"capWatts": 3000}}' >/dev/null || return 1
  within 10 total_at_most 3000 || return 1
  local took
  took=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  say "cap cut: 4800 W -> 3000 W enforced on the GPUs $took s after kubectl patch"
  awk -v t="$took" 'BEGIN { exit !(t <= 2) }'
}
check "a cap cut with kubectl patch is enforced within 2 s" cap_cut

# 4. The leader pod deleted: the other replica takes over, revisions continue, nothing over the cap.
leader_takeover() {
  local before holder revision_before
  holder=$(lease_holder)
  revision_before=$(plan | jq .revision)
  k "${ns[@]}" delete pod "$holder" --wait=false >/dev/null || return 1
  new_leader() { local h; h=$(lease_holder); [ -n "$h" ] && [ "$h" != "$holder" ]; }
  within 60 new_leader || return 1
  record_cap 3500
  k patch powerbudget rack-a1 --type merge -p '{"spec": {"capWatts": 3500}}' >/dev/null
  raised() { [ "$(plan | jq .revision)" -gt "$revision_before" ] && limits_enforced; }
  within 30 raised || return 1
  say "leader: $holder deleted, $(lease_holder) leads; plan revision $revision_before -> $(plan | jq .revision)"
}
check "deleting the leader pod: the other replica takes over, the plan continues" leader_takeover

# A stopping agent lowers every GPU to the lower of its limit and its floor (SIGTERM); the GPUs keep
# that until the new agent applies the plan again.
agent_restart() {
  local pod before
  pod=$(k "${ns[@]}" get pod -l app.kubernetes.io/name=kilowatt-agent -o jsonpath='{.items[0].metadata.name}')
  before=$(gpu_limits | awk '{ print $2 }' | tr '\n' ' ')
  local started=$SECONDS
  k "${ns[@]}" delete pod "$pod" >/dev/null || return 1
  say "agent: $pod deleted; the GPUs held $(gpu_limits | awk '{ print $2 }' | tr '\n' ' ') (before: $before)"
  k "${ns[@]}" rollout status ds/kilowatt-agent --timeout=120s >/dev/null || return 1
  # The new agent starts at the floors it finds, and the plan raises it back once it acknowledges.
  restored() { limits_enforced && [ "$(gpu_limits | awk '{ print $2 }' | tr '\n' ' ')" = "$before" ]; }
  within 60 restored || { say "the GPUs hold $(gpu_limits | awk '{ print $2 }' | tr '\n' ' ')"; return 1; }
  say "agent: its replacement enforces the plan again $((SECONDS - started)) s after the deletion: $(gpu_limits | awk '{ print $2 }' | tr '\n' ' ')"
}
check "deleting the agent pod: the DaemonSet restarts it and it enforces the plan" agent_restart

# 5. Prometheus finds the pods through kubernetes_sd_configs, with the documented scrape job
# (dashboards/prometheus-scrape.yml; every 2 s here, and a kubeconfig, since it runs on the node outside
# any pod); then every dashboard query returns data.
prometheus_query() {
  in_cluster curl -sf --max-time 5 "http://127.0.0.1:9090/api/v1/query" --data-urlencode "query=$1" |
    jq -e '.data.result | length > 0' >/dev/null
}
prometheus_targets_up() { prometheus_query 'sum(up{job="kilowatt"}) == 3'; }
dashboards() {
  sed -e 's/scrape_interval: 10s/scrape_interval: 2s/' \
    -e "s|      - role: pod|      - role: pod\n        kubeconfig_file: $dir/cluster/admin.kubeconfig|" \
    dashboards/prometheus-scrape.yml >"$dir/prometheus.yml"
  in_cluster "$prometheus_bin" --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/prometheus" \
    --web.listen-address=127.0.0.1:9090 >"$dir/prometheus.log" 2>&1 &
  prometheus_pid=$!
  within 60 prometheus_targets_up || { say "not every target up: $(in_cluster curl -s http://127.0.0.1:9090/api/v1/targets | jq -c '[.data.activeTargets[] | {scrapeUrl, health, lastError}]')"; return 1; }
  # Two scrapes at least for rate() and increase().
  sleep 8
  local queries empty total=0
  queries=$(jq -r '(.templating.list[]? | select(.type == "query") | .query.query
                     | capture("^label_values\\((?<s>.*),(?<l>[^,]*)\\)$") | "count by (\(.l)) (\(.s))"),
                   (.panels[]?.targets[]?.expr)' dashboards/*.json |
    sed -e 's/\$budget/.*/g; s/\$node/.*/g; s/\$gpu/.*/g; s/\$namespace/.*/g')
  total=$(grep -c . <<<"$queries")
  # Measured budget power needs the agents' power reports and the operator's next resync: up to a
  # minute for every query to have data.
  local deadline=$((SECONDS + 60))
  while true; do
    empty=()
    while IFS= read -r query; do
      [ -n "$query" ] || continue
      prometheus_query "$query" || empty+=("$query")
    done <<<"$queries"
    if [ "${#empty[@]}" -eq 0 ] || [ "$SECONDS" -ge "$deadline" ]; then break; fi
    sleep 5
  done
  for query in "${empty[@]}"; do say "no data: $query"; done
  say "dashboards: $total queries, $((total - ${#empty[@]})) with data"
  [ "$total" -gt 0 ] && [ "${#empty[@]}" -eq 0 ]
}
check "Prometheus discovers the pods and every dashboard query returns data" dashboards
kill "${prometheus_pid:-0}" 2>/dev/null

# 6. helm upgrade with a changed value rolls the pods.
upgrade() {
  helm upgrade kilowatt helm/kilowatt --namespace kilowatt-system --reuse-values \
    --set agent.reportSeconds=5 >/dev/null || return 1
  k "${ns[@]}" rollout status ds/kilowatt-agent --timeout=180s >/dev/null &&
    k "${ns[@]}" rollout status deploy/kilowatt-operator --timeout=180s >/dev/null || return 1
  within 60 limits_enforced
}
check "helm upgrade rolls the pods" upgrade

# 7. helm uninstall: the agents stop on SIGTERM and leave every GPU at its floor, the one limit that
# holds any cap without a manager (README, "Uninstalling"); the CRDs stay, as helm leaves crds/.
uninstall() {
  helm uninstall kilowatt --namespace kilowatt-system --wait --timeout 120s >/dev/null || return 1
  no_pods() { [ -z "$(k "${ns[@]}" get pods -o name)" ]; }
  within 120 no_pods || return 1
  local limits
  limits=$(gpu_limits | awk '{ print $2 }' | sort -u | tr '\n' ' ')
  say "uninstall: every pod gone; the GPUs hold $limits"
  [ "$limits" = "200 " ] && k get crd powerbudgets.kilowatt.dev >/dev/null
}
check "helm uninstall leaves every GPU at its floor" uninstall
stop_sampler
check "no sample over a cap (a cut gets 2 s)" samples_within_caps
