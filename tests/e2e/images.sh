#!/usr/bin/env bash
# The end-to-end test's other images, built like scripts/image.sh (scripts/oci.sh) into DIR:
#   DIR/pause.tar  localhost/kilowatt-pause:1, a static sleeper (pause.c): the pod sandbox image and
#                  the workload pods' image
#   DIR/etcd.tar   localhost/kilowatt-etcd:<version>, Debian's etcd-server binary on libc6, for the
#                  chart's internal etcd (etcd.internal.image); prints its name
# Usage: tests/e2e/images.sh DIR
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="$(mkdir -p "$1" && cd "$1" && pwd)"
cd "$repo"
# shellcheck source=scripts/oci.sh
. scripts/oci.sh
epoch=$(git log -1 --format=%ct)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/pause/usr/local/bin"
gcc -static -O2 -s -o "$work/pause/usr/local/bin/pause" tests/e2e/pause.c
oci_init "$work/pause-layout" "$epoch"
read -r layer diff < <(oci_layer "$work/pause")
config=$(jq -cnS --arg diff "sha256:$diff" '{architecture: "amd64", os: "linux",
  config: {Entrypoint: ["/usr/local/bin/pause"], User: "65532:65532"},
  rootfs: {type: "layers", diff_ids: [$diff]}}')
oci_finish "$out/pause.tar" localhost/kilowatt-pause:1 "$config" "$layer" >/dev/null

oci_debian_rootfs "$work/etcd-base" libc6
oci_debian_rootfs "$work/etcd-package" etcd-server
etcd_version="${oci_packages[0]#etcd-server=}"
mkdir -p "$work/etcd/usr/bin"
cp "$work/etcd-package/usr/bin/etcd" "$work/etcd/usr/bin/etcd"
oci_init "$work/etcd-layout" "$epoch"
read -r base base_diff < <(oci_layer "$work/etcd-base")
read -r binary binary_diff < <(oci_layer "$work/etcd")
config=$(jq -cnS --arg base "sha256:$base_diff" --arg binary "sha256:$binary_diff" '{
  architecture: "amd64", os: "linux",
  config: {Entrypoint: ["/usr/bin/etcd"], User: "65532:65532", Env: ["PATH=/usr/bin:/bin"]},
  rootfs: {type: "layers", diff_ids: [$base, $binary]}}')
name="localhost/kilowatt-etcd:${etcd_version//[^A-Za-z0-9_.-]/-}"
oci_finish "$out/etcd.tar" "$name" "$config" "$base" "$binary" >/dev/null
echo "$name"
