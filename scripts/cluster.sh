#!/usr/bin/env bash
# A single-node Kubernetes cluster on this machine, for the end-to-end test: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet and kube-proxy at the pinned v1.37.2 (built from Go
# modules in tests/apiserver, one cached `go build`), CoreDNS (tests/coredns) as cluster DNS,
# containerd + runc, and the standard CNI plugins (bridge, host-local, portmap). Everything runs in a
# network namespace of its own (kw-e2e: node address 10.77.0.1, pods 10.78.0.0/24, services
# 10.96.0.0/24), so nothing listens beyond it; the kubelet uses /var/lib/kubelet, where the chart's
# hostPath mounts expect it. Needs root.
#
# Usage: scripts/cluster.sh build        build (once, cached in ~/.cache/kilowatt) the Go binaries
#        scripts/cluster.sh up DIR       start the cluster; DIR gets the PKI, kubeconfigs and logs
#        scripts/cluster.sh down DIR     stop everything `up` started and remove its state
#        scripts/cluster.sh exec CMD...  run CMD inside the cluster's network namespace
# After `up`, DIR/admin.kubeconfig is a system:masters kubeconfig and DIR/bin holds kubectl.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

kubernetes_version=v1.37.2
coredns_version=v1.15.0
cache="$HOME/.cache/kilowatt"
k8s_bin="${KILOWATT_KUBERNETES_BIN:-$cache/kubernetes-$kubernetes_version}"
coredns_bin="${KILOWATT_COREDNS:-$cache/coredns-$coredns_version}"
netns=kw-e2e
node_ip=10.77.0.1
pod_cidr=10.78.0.0/24
service_cidr=10.96.0.0/24
node_name=kw-node
in_netns=(nsenter "--net=/var/run/netns/$netns")

build() {
  command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"
  if [ ! -x "$k8s_bin/kubelet" ]; then
    echo "cluster: building Kubernetes $kubernetes_version with go into $k8s_bin (once; 10-30 minutes on 2 cores)" >&2
    # The version the binaries report: helm checks the chart's kubeVersion against it.
    local ldflags="-X k8s.io/component-base/version.gitVersion=$kubernetes_version
      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37
      -X k8s.io/component-base/version.gitTreeState=clean
      -X k8s.io/client-go/pkg/version.gitVersion=$kubernetes_version"
    rm -rf "$k8s_bin.partial" && mkdir -p "$k8s_bin.partial"
    (cd "$repo/tests/apiserver" && go build -ldflags "$ldflags" -o "$k8s_bin.partial/" . \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-proxy \
      k8s.io/kubernetes/cmd/kubectl)
    mv "$k8s_bin.partial/apiserver" "$k8s_bin.partial/kube-apiserver"
    rm -rf "$k8s_bin" && mv "$k8s_bin.partial" "$k8s_bin"
  fi
  if [ ! -x "$coredns_bin" ]; then
    echo "cluster: building CoreDNS $coredns_version with go into $coredns_bin (once; 5-10 minutes)" >&2
    (cd "$repo/tests/coredns" && go build -o "$coredns_bin.partial" github.com/coredns/coredns)
    mv "$coredns_bin.partial" "$coredns_bin"
  fi
}

# Starts a process inside the namespace, logging to DIR/logs/NAME.log; its pid goes to DIR/pids.
start() {
  local name="$1"; shift
  "${in_netns[@]}" "$@" >"$dir/logs/$name.log" 2>&1 &
  echo "$! $name" >>"$dir/pids"
}

# Waits up to $2 seconds for the command after it to succeed.
wait_for() {
  local what="$1" seconds="$2"; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "cluster: $what not ready within ${seconds}s; logs in $dir/logs" >&2
      return 1
    fi
    sleep 0.5
  done
}

pki() {
  local p="$dir/pki"
  mkdir -p "$p"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$p/ca.key" -out "$p/ca.crt" -days 7 \
    -subj "/CN=kilowatt-e2e-ca" 2>/dev/null
  # cert NAME CN [O] [SANS]: a key and a certificate signed by the CA, for servers and clients.
  cert() {
    openssl req -newkey rsa:2048 -nodes -keyout "$p/$1.key" -out "$p/$1.csr" \
      -subj "/CN=$2${3:+/O=$3}" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n%s\n' \
      "${4:+subjectAltName=$4}" >"$p/$1.ext"
    openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
      -out "$p/$1.crt" -days 7 -extfile "$p/$1.ext" 2>/dev/null
  }
  cert apiserver kube-apiserver "" \
    "IP:$node_ip,IP:127.0.0.1,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet kube-apiserver-kubelet-client system:masters
  cert admin admin system:masters
  cert kubelet "system:node:$node_name" system:nodes
  cert controller-manager system:kube-controller-manager
  cert scheduler system:kube-scheduler
  cert proxy system:kube-proxy
  openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
  openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
  for user in admin kubelet controller-manager scheduler proxy; do
    cat >"$dir/$user.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://$node_ip:6443", certificate-authority: $p/ca.crt}
users:
- name: $user
  user: {client-certificate: $p/$user.crt, client-key: $p/$user.key}
contexts:
- name: e2e
  context: {cluster: e2e, user: $user}
current-context: e2e
EOF
  done
}

up() {
  [ "$(id -u)" -eq 0 ] || { echo "cluster: needs root (network namespace, containerd, kubelet)" >&2; exit 1; }
  for tool in containerd runc ctr iptables nsenter ip openssl; do
    command -v "$tool" >/dev/null || { echo "cluster: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
  done
  [ -x /usr/lib/cni/bridge ] || { echo "cluster: CNI plugins missing (containernetworking-plugins)" >&2; exit 1; }
  if pgrep -x kubelet >/dev/null; then
    echo "cluster: a kubelet already runs on this machine; /var/lib/kubelet is taken" >&2
    exit 1
  fi
  if [ -n "$(ls -A "$dir")" ] && [ ! -f "$dir/pids" ]; then
    echo "cluster: $dir is not empty and no earlier cluster's; give a new or empty directory" >&2
    exit 1
  fi
  if [ -f "$dir/pids" ]; then down; fi
  build
  rm -rf "$dir" && mkdir -p "$dir/logs" "$dir/bin"
  ln -s "$k8s_bin/kubectl" "$dir/bin/kubectl"
  : >"$dir/pids"

  ip netns del "$netns" 2>/dev/null || true
  ip netns add "$netns"
  # A veth pair with both ends inside: the node address, and a default route for service IPs.
  ip netns exec "$netns" sh -e -c "
    ip link set lo up
    ip link add kw0 type veth peer name kw1
    ip link set kw1 up
    ip addr add $node_ip/24 dev kw0
    ip link set kw0 up
    ip route add default dev kw0
    sysctl -qw net.ipv4.ip_forward=1"

  pki
  local p="$dir/pki"
  start etcd etcd --data-dir "$dir/etcd" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380
  start kube-apiserver "$k8s_bin/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --advertise-address="$node_ip" --secure-port=6443 \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --service-cluster-ip-range="$service_cidr" \
    --kubelet-client-certificate="$p/apiserver-kubelet.crt" \
    --kubelet-client-key="$p/apiserver-kubelet.key" --kubelet-preferred-address-types=InternalIP
  local kubectl=("${in_netns[@]}" "$k8s_bin/kubectl" --kubeconfig "$dir/admin.kubeconfig")
  wait_for kube-apiserver 90 "${kubectl[@]}" get --raw /readyz
  start kube-controller-manager "$k8s_bin/kube-controller-manager" \
    --kubeconfig="$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$dir/controller-manager.kubeconfig" \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
    --use-service-account-credentials=true --cluster-signing-cert-file="$p/ca.crt" \
    --cluster-signing-key-file="$p/ca.key" --leader-elect=false --bind-address=127.0.0.1
  start kube-scheduler "$k8s_bin/kube-scheduler" --kubeconfig="$dir/scheduler.kubeconfig" \
    --authentication-kubeconfig="$dir/scheduler.kubeconfig" \
    --authorization-kubeconfig="$dir/scheduler.kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1

  # containerd: its own root, state and socket. runc cannot set the negative OOM score adjustment
  # the kubelet gives pod sandboxes in this machine's sandbox, hence restrict_oom_score_adj.
  mkdir -p "$dir/containerd" "$dir/cni"
  cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$dir/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/kilowatt-pause:1"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
EOF
  cat >"$dir/cni/10-kilowatt-e2e.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "kilowatt-e2e", "plugins": [
  {"type": "bridge", "bridge": "kwbr0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$dir/cni-ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
  # nsenter, not `ip netns exec`: the latter remounts /sys, hiding the cgroup mounts the kubelet needs,
  # and gives containerd a mount namespace the kubelet's volume mounts would not reach.
  start containerd containerd --config "$dir/containerd/config.toml"
  wait_for containerd 30 ctr --address "$dir/containerd/containerd.sock" version

  mkdir -p "$dir/kubelet"
  echo "nameserver $node_ip" >"$dir/kubelet/resolv.conf"
  cat >"$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroups are v1 on these machines (KEP-5573), without systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $p/ca.crt}
authorization: {mode: Webhook}
address: $node_ip
readOnlyPort: 0
clusterDNS: [$node_ip]
clusterDomain: cluster.local
resolvConf: $dir/kubelet/resolv.conf
containerRuntimeEndpoint: unix://$dir/containerd/containerd.sock
# A shared test machine's disk is often fuller than the defaults allow.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
  start kubelet "$k8s_bin/kubelet" --config="$dir/kubelet/config.yaml" \
    --kubeconfig="$dir/kubelet.kubeconfig" --hostname-override="$node_name" \
    --node-ip="$node_ip" --cert-dir="$dir/kubelet/pki"
  cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $dir/proxy.kubeconfig}
hostnameOverride: $node_name
clusterCIDR: $pod_cidr
nodePortAddresses: [primary]
conntrack: {maxPerCore: 0}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
EOF
  start kube-proxy "$k8s_bin/kube-proxy" --config="$dir/kube-proxy.yaml"
  cat >"$dir/Corefile" <<EOF
.:53 {
  bind $node_ip
  errors
  kubernetes cluster.local in-addr.arpa {
    kubeconfig $dir/admin.kubeconfig e2e
    pods insecure
  }
}
EOF
  start coredns "$coredns_bin" -conf "$dir/Corefile"
  wait_for "node $node_name Ready" 60 sh -c \
    "$(printf '%q ' "${kubectl[@]}") get node $node_name -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  echo "cluster: up; kubeconfig $dir/admin.kubeconfig (use it inside the namespace: scripts/cluster.sh exec ...)"
}

down() {
  # Only what `up` started in DIR: without its pid list, DIR is not this script's, and neither is
  # whatever kubelet owns /var/lib/kubelet.
  if [ ! -f "$dir/pids" ]; then
    echo "cluster: $dir holds no cluster started by scripts/cluster.sh up; nothing stopped" >&2
    return 1
  fi
  # The kubelet first, so that it restarts nothing; containers go with containerd's shims.
  while read -r pid name; do
    [ "$name" = kubelet ] && kill "$pid" 2>/dev/null || true
  done <"$dir/pids"
  # Every container killed through containerd, then the shims that outlive it.
  local ctr=(ctr --address "$dir/containerd/containerd.sock" -n k8s.io)
  for task in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
    "${ctr[@]}" tasks kill -s SIGKILL "$task" 2>/dev/null || true
  done
  sleep 1
  pkill -9 -f "containerd-shim-runc-v2 .*-address $dir/containerd/containerd.sock" || true
  tac "$dir/pids" | while read -r pid _; do kill "$pid" 2>/dev/null || true; done
  sleep 1
  tac "$dir/pids" | while read -r pid _; do kill -9 "$pid" 2>/dev/null || true; done
  # Mounts left by containers and volumes, deepest first.
  awk -v a="$dir" -v b=/var/lib/kubelet 'index($5, a) == 1 || index($5, b) == 1 { print $5 }' \
    /proc/self/mountinfo | sort -r | while read -r mount; do umount -l "$mount" 2>/dev/null || true; done
  ip netns del "$netns" 2>/dev/null || true
  rm -rf /var/lib/kubelet "$dir"
}

command="${1:-}"
case "$command" in
  build) build ;;
  up|down)
    [ -n "${2:-}" ] || { echo "usage: scripts/cluster.sh $command DIR" >&2; exit 2; }
    dir="$(mkdir -p "$2" && cd "$2" && pwd)"
    "$command" ;;
  exec) shift; exec "${in_netns[@]}" "$@" ;;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
