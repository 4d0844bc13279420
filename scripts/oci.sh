# OCI image archives without a daemon, for scripts/image.sh and the end-to-end test's images: blobs,
# layers, manifest, index and docker load's manifest.json, with every timestamp $epoch, every owner
# root and every listing sorted, so the same inputs give the same digest. Sourced, not run; needs GNU
# tar, gzip, sha256sum and jq. File IO under the layout directory only.

# oci_init LAYOUT EPOCH: starts an image layout in LAYOUT (a fresh directory).
oci_init() {
  oci_layout="$1"
  oci_epoch="$2"
  mkdir -p "$oci_layout/blobs/sha256"
}

# Stores stdin as a blob; prints its digest (hex).
oci_blob() {
  local tmp="$oci_layout/blob.partial" digest
  cat >"$tmp"
  digest=$(sha256sum "$tmp" | cut -d' ' -f1)
  mv "$tmp" "$oci_layout/blobs/sha256/$digest"
  echo "$digest"
}

oci_tar() {
  LC_ALL=C tar --sort=name --mtime="@$oci_epoch" --owner=0 --group=0 --numeric-owner \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime "$@"
}

# oci_layer DIR: a gzip layer of DIR's contents; prints "<blob digest> <uncompressed digest>".
oci_layer() {
  local tar="$oci_layout/layer.tar" diff_id digest
  # shellcheck disable=SC2046 # the top-level entries, one argument each (no spaces in them)
  (cd "$1" && oci_tar -cf "$tar" $(LC_ALL=C ls -A))
  diff_id=$(sha256sum "$tar" | cut -d' ' -f1)
  digest=$(gzip -n -9 -c "$tar" | oci_blob)
  rm -f "$tar"
  echo "$digest $diff_id"
}

oci_size() { stat -c %s "$oci_layout/blobs/sha256/$1"; }

# oci_finish OUT NAME CONFIG LAYER...: stores CONFIG (JSON), writes the manifest for the layers (blob
# digests, bottom first), the index naming the image NAME, docker's manifest.json, and the archive
# OUT. Prints the manifest digest (sha256:...).
oci_finish() {
  local out="$1" name="$2" config="$3"; shift 3
  local config_digest layers manifest manifest_digest layer
  config_digest=$(printf '%s' "$config" | oci_blob)
  layers="[]"
  for layer in "$@"; do
    layers=$(jq -c --arg d "sha256:$layer" --argjson s "$(oci_size "$layer")" \
      '. + [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $d, size: $s}]' <<<"$layers")
  done
  manifest=$(jq -cnS --arg c "sha256:$config_digest" --argjson cs "$(oci_size "$config_digest")" \
    --argjson layers "$layers" '{
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
      layers: $layers
    }')
  manifest_digest=$(printf '%s' "$manifest" | oci_blob)
  printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$oci_layout/oci-layout"
  jq -cnS --arg d "sha256:$manifest_digest" --argjson s "$(oci_size "$manifest_digest")" \
    --arg name "$name" --arg tag "${name##*:}" '{
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [{
        mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s,
        annotations: {"io.containerd.image.name": $name, "org.opencontainers.image.ref.name": $tag}
      }]
    }' | tr -d '\n' >"$oci_layout/index.json"
  # docker load reads manifest.json; its layer paths are the OCI blobs themselves.
  jq -cn --arg config "blobs/sha256/$config_digest" --arg name "$name" \
    --argjson layers "$(printf '%s\n' "$@" | jq -R '"blobs/sha256/" + .' | jq -cs .)" \
    '[{Config: $config, RepoTags: [$name], Layers: $layers}]' | tr -d '\n' >"$oci_layout/manifest.json"
  mkdir -p "$(dirname "$out")"
  (cd "$oci_layout" && oci_tar -cf - oci-layout index.json manifest.json blobs) >"$out.partial"
  mv "$out.partial" "$out"
  echo "sha256:$manifest_digest"
}

# oci_debian_rootfs DIR PACKAGE...: a root filesystem in DIR unpacked from the candidate version of each
# Debian package (downloaded once into ~/.cache/kilowatt/image-debs), with what their maintainer scripts
# would have made and an image needs besides: the CA bundle (when ca-certificates is among them), the
# users root and nonroot (65532, as in distroless), a world-writable /tmp. Documentation goes, its
# copyright files stay. Sets oci_packages to the PACKAGE=VERSION list.
oci_debian_rootfs() {
  local root="$1" debs="$HOME/.cache/kilowatt/image-debs" package candidate file
  shift
  mkdir -p "$debs" "$root"
  oci_packages=()
  for package in "$@"; do
    candidate=$(apt-cache policy "$package" | sed -n 's/^  Candidate: //p')
    if { [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; } && [ "$(id -u)" -eq 0 ]; then
      # A fresh machine may have no package lists yet.
      apt-get update -qq
      candidate=$(apt-cache policy "$package" | sed -n 's/^  Candidate: //p')
    fi
    if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
      echo "oci: apt knows no version of $package (run apt-get update)" >&2
      return 1
    fi
    file=$(find "$debs" -maxdepth 1 -name "${package}_${candidate//:/%3a}_*.deb" | head -n1)
    if [ -z "$file" ]; then
      # As root apt drops to its _apt user, which cannot write the cache; it would warn and go on.
      local sandbox=()
      [ "$(id -u)" -ne 0 ] || sandbox=(-o APT::Sandbox::User=root)
      (cd "$debs" && apt-get download -qq "${sandbox[@]}" "$package=$candidate")
      file=$(find "$debs" -maxdepth 1 -name "${package}_${candidate//:/%3a}_*.deb" | head -n1)
    fi
    [ -n "$file" ] || { echo "oci: could not download $package=$candidate" >&2; return 1; }
    oci_packages+=("$package=$candidate")
    dpkg-deb -x "$file" "$root"
  done
  if [ -d "$root/usr/share/doc" ]; then
    find "$root/usr/share/doc" -type f ! -name copyright -delete
  fi
  rm -rf "$root/usr/share/man" "$root/usr/share/lintian" "$root/usr/share/info"
  mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
  if [ -d "$root/usr/share/ca-certificates" ]; then
    find "$root/usr/share/ca-certificates" -name '*.crt' -print0 | LC_ALL=C sort -z |
      xargs -0 cat >"$root/etc/ssl/certs/ca-certificates.crt"
  fi
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  chmod 1777 "$root/tmp"
}
