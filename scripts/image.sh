#!/usr/bin/env bash
# Builds the Kilowatt container image without a daemon or a registry: an OCI image archive (also
# loadable by `docker load`, `podman load` and `ctr images import`) made of two layers, a minimal root
# filesystem unpacked from Debian packages (libc, libgcc, libstdc++, CA certificates, netbase: the way
# distroless images are made) and the two binaries, stripped. The same binaries, packages and commit
# give the same image digest: every timestamp is the commit's, every owner root, every listing sorted.
#
# Usage: scripts/image.sh [--binaries DIR] [--out FILE] [--name NAME:TAG]
#   --binaries DIR  take kilowatt and kilowatt-agent from DIR (default: `cargo build --release` and
#                   $CARGO_TARGET_DIR/release, or target/release)
#   --out FILE      the archive to write (default: target/kilowatt-image.tar)
#   --name REF      the image name recorded for `ctr images import` and `docker load`
#                   (default: localhost/kilowatt:<workspace version>)
# Prints the image digest, the archive's size and the Debian packages it holds. Needs apt-get (to
# download the packages, cached in ~/.cache/kilowatt/image-debs), dpkg-deb, GNU tar, gzip, strip,
# sha256sum and jq. The image carries no NVIDIA library: the agent loads libnvidia-ml.so.1 from the
# host, which the NVIDIA container toolkit mounts into GPU pods.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libc6 libgcc-s1 libstdc++6 ca-certificates netbase)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
binaries=""
out="target/kilowatt-image.tar"
name="localhost/kilowatt:$version"
while (($#)); do
  case "$1" in
    --binaries) binaries="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "image: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for tool in apt-get dpkg-deb tar gzip strip sha256sum jq git; do
  command -v "$tool" >/dev/null || { echo "image: $tool is missing" >&2; exit 1; }
done

if [ -z "$binaries" ]; then
  cargo build --release --locked -p kilowatt-cli -p kilowatt-node-agent --bins
  binaries="${CARGO_TARGET_DIR:-target}/release"
fi
for bin in kilowatt kilowatt-agent; do
  [ -x "$binaries/$bin" ] || { echo "image: $binaries/$bin is missing or not executable" >&2; exit 1; }
done

commit=$(git rev-parse HEAD)
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
source_url=$(git remote get-url origin 2>/dev/null || true)
case "$source_url" in
  http://*|https://*|git@*|ssh://*) ;;
  *) source_url="" ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The packages, downloaded once per version into the cache (apt-get picks the candidate version).
debs="$HOME/.cache/kilowatt/image-debs"
mkdir -p "$debs"
package_list=()
for package in "${packages[@]}"; do
  candidate=$(apt-cache policy "$package" | sed -n 's/^  Candidate: //p')
  if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
    echo "image: apt knows no version of $package (run apt-get update)" >&2
    exit 1
  fi
  file=$(find "$debs" -maxdepth 1 -name "${package}_${candidate//:/%3a}_*.deb" | head -n1)
  if [ -z "$file" ]; then
    # As root apt drops to its _apt user, which cannot write the cache; it would warn and go on.
    sandbox=()
    [ "$(id -u)" -ne 0 ] || sandbox=(-o APT::Sandbox::User=root)
    (cd "$debs" && apt-get download -qq "${sandbox[@]}" "$package=$candidate")
    file=$(find "$debs" -maxdepth 1 -name "${package}_${candidate//:/%3a}_*.deb" | head -n1)
  fi
  [ -n "$file" ] || { echo "image: could not download $package=$candidate" >&2; exit 1; }
  package_list+=("$package=$candidate")
  dpkg-deb -x "$file" "$work/base"
done

# What the packages' maintainer scripts would have made, and what an image needs besides: the CA
# bundle, the users (65532 is distroless's nonroot), a world-writable /tmp. Documentation goes, its
# copyright files stay.
base="$work/base"
find "$base/usr/share/doc" -type f ! -name copyright -delete
rm -rf "$base/usr/share/man" "$base/usr/share/lintian" "$base/usr/share/info"
mkdir -p "$base/etc/ssl/certs" "$base/tmp" "$base/home/nonroot"
find "$base/usr/share/ca-certificates" -name '*.crt' -print0 | LC_ALL=C sort -z |
  xargs -0 cat >"$base/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  >"$base/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$base/etc/group"
chmod 1777 "$base/tmp"

app="$work/app/usr/local/bin"
mkdir -p "$app"
for bin in kilowatt kilowatt-agent; do
  strip --strip-debug -o "$app/$bin" "$binaries/$bin"
  chmod 0755 "$app/$bin"
done

blobs="$work/layout/blobs/sha256"
mkdir -p "$blobs"
# Stores stdin as a blob; prints its digest.
store_blob() {
  local tmp="$work/blob.tmp" digest
  cat >"$tmp"
  digest=$(sha256sum "$tmp" | cut -d' ' -f1)
  mv "$tmp" "$blobs/$digest"
  echo "$digest"
}
# One layer from a directory: prints "<compressed digest> <uncompressed digest>".
layer() {
  local dir="$1" tar="$work/layer.tar" diff_id digest
  (cd "$dir" && LC_ALL=C tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -cf "$tar" $(LC_ALL=C ls -A))
  diff_id=$(sha256sum "$tar" | cut -d' ' -f1)
  digest=$(gzip -n -9 -c "$tar" | store_blob)
  rm -f "$tar"
  echo "$digest $diff_id"
}
read -r base_digest base_diff < <(layer "$work/base")
read -r app_digest app_diff < <(layer "$work/app")

packages_label=$(IFS=' '; echo "${package_list[*]}")
config=$(jq -cnS \
  --arg created "$created" --arg version "$version" --arg commit "$commit" \
  --arg source "$source_url" --arg packages "$packages_label" \
  --arg base "sha256:$base_diff" --arg app "sha256:$app_diff" '{
    architecture: "amd64", os: "linux", created: $created,
    config: {
      User: "65532:65532",
      Entrypoint: ["/usr/local/bin/kilowatt"],
      Env: ["PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
      WorkingDir: "/",
      Labels: ({
        "org.opencontainers.image.title": "kilowatt",
        "org.opencontainers.image.description": "Kilowatt operator and node agent: GPU power budgets for Kubernetes",
        "org.opencontainers.image.version": $version,
        "org.opencontainers.image.revision": $commit,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.created": $created,
        "dev.kilowatt.image.debian-packages": $packages
      } + (if $source == "" then {} else {"org.opencontainers.image.source": $source} end))
    },
    rootfs: {type: "layers", diff_ids: [$base, $app]},
    history: [
      {created: $created, created_by: "scripts/image.sh: Debian packages \($packages)"},
      {created: $created, created_by: "scripts/image.sh: kilowatt and kilowatt-agent"}
    ]
  }')
config_digest=$(printf '%s' "$config" | store_blob)
size() { stat -c %s "$blobs/$1"; }
manifest=$(jq -cnS \
  --arg config "sha256:$config_digest" --argjson config_size "$(size "$config_digest")" \
  --arg base "sha256:$base_digest" --argjson base_size "$(size "$base_digest")" \
  --arg app "sha256:$app_digest" --argjson app_size "$(size "$app_digest")" '{
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $config, size: $config_size},
    layers: [
      {mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $base, size: $base_size},
      {mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $app, size: $app_size}
    ]
  }')
manifest_digest=$(printf '%s' "$manifest" | store_blob)
tag="${name##*:}"
layout="$work/layout"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
jq -cnS --arg digest "sha256:$manifest_digest" --argjson size "$(size "$manifest_digest")" \
  --arg name "$name" --arg tag "$tag" '{
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.index.v1+json",
    manifests: [{
      mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $digest, size: $size,
      annotations: {"io.containerd.image.name": $name, "org.opencontainers.image.ref.name": $tag}
    }]
  }' | tr -d '\n' >"$layout/index.json"
# docker load reads manifest.json; the layer paths are the OCI blobs themselves.
jq -cn --arg config "blobs/sha256/$config_digest" --arg name "$name" \
  --arg base "blobs/sha256/$base_digest" --arg app "blobs/sha256/$app_digest" \
  '[{Config: $config, RepoTags: [$name], Layers: [$base, $app]}]' | tr -d '\n' >"$layout/manifest.json"

mkdir -p "$(dirname "$out")"
(cd "$layout" && LC_ALL=C tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
  --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -cf - oci-layout index.json manifest.json blobs) >"$out.partial"
mv "$out.partial" "$out"

echo "image: $name"
echo "image: digest sha256:$manifest_digest"
echo "image: archive $out, $(stat -c %s "$out") bytes (layers: base $(size "$base_digest"), binaries $(size "$app_digest") bytes compressed)"
echo "image: debian packages ${package_list[*]}"
