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

# shellcheck source=scripts/oci.sh
. scripts/oci.sh
oci_debian_rootfs "$work/base" "${packages[@]}"
package_list=("${oci_packages[@]}")

app="$work/app/usr/local/bin"
mkdir -p "$app"
for bin in kilowatt kilowatt-agent; do
  strip --strip-debug -o "$app/$bin" "$binaries/$bin"
  chmod 0755 "$app/$bin"
done

oci_init "$work/layout" "$epoch"
read -r base_digest base_diff < <(oci_layer "$work/base")
read -r app_digest app_diff < <(oci_layer "$work/app")

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
manifest_digest=$(oci_finish "$out" "$name" "$config" "$base_digest" "$app_digest")

echo "image: $name"
echo "image: digest $manifest_digest"
echo "image: archive $out, $(stat -c %s "$out") bytes (layers: base $(oci_size "$base_digest"), binaries $(oci_size "$app_digest") bytes compressed)"
echo "image: debian packages ${package_list[*]}"
