#!/usr/bin/env bash
# Builds, from the test base image, an OCI layout tarball with two images the
# base-identity tests need:
#
#   derived  the base plus one more layer (/variant/derived): the same bottom
#            layer as the base, a different stack
#   multi    an index of two platforms: the host's is `derived`, the other
#            (arm64, or amd64 on an arm64 host) has exactly the base's layers
#            under a config naming that platform
#
#   tests/rig/variant-image.sh BASE_TAR OUT_TAR
#
# Import with: ctr -n NS images import --all-platforms --base-name seamless.test/variant OUT_TAR
# which creates seamless.test/variant:derived and seamless.test/variant:multi.
set -euo pipefail

base=$(realpath "${1:?usage: variant-image.sh BASE_TAR OUT_TAR}")
out=$(realpath -m "${2:?usage: variant-image.sh BASE_TAR OUT_TAR}")

case $(uname -m) in
  x86_64) host=amd64 other=arm64 ;;
  aarch64) host=arm64 other=amd64 ;;
  *) echo "variant-image.sh: unsupported host $(uname -m)" >&2; exit 1 ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/seamless-variant.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir oci
tar -C oci -xf "$base"

# derived: one more layer on the base.
umoci unpack --image oci:latest bundle >/dev/null
mkdir -p bundle/rootfs/variant
echo "derived image" >bundle/rootfs/variant/derived
umoci repack --image oci:derived bundle >/dev/null
umoci config --image oci:derived --os linux --architecture "$host" >/dev/null

# other: the base's layers, another platform's config.
umoci config --image oci:latest --tag other --os linux --architecture "$other" >/dev/null

desc() { # the manifest descriptor of tag $1, with platform $2
  jq -c --arg t "$1" --arg a "$2" \
    '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t)
     | {mediaType, digest, size, platform: {os: "linux", architecture: $a}}' oci/index.json
}
jq -nc --argjson h "$(desc derived "$host")" --argjson o "$(desc other "$other")" \
  '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json", manifests: [$h, $o]}' >multi.json
digest=$(sha256sum multi.json | cut -d' ' -f1)
cp multi.json "oci/blobs/sha256/$digest"
size=$(stat -c %s multi.json)

# Only derived and multi are named; umoci gc keeps what they reach.
jq -c --arg d "sha256:$digest" --argjson s "$size" \
  '.manifests |= (map(select(.annotations["org.opencontainers.image.ref.name"] == "derived"))
    + [{mediaType: "application/vnd.oci.image.index.v1+json", digest: $d, size: $s,
        annotations: {"org.opencontainers.image.ref.name": "multi"}}])' \
  oci/index.json >index.json
mv index.json oci/index.json
umoci gc --layout oci >/dev/null

mkdir -p "$(dirname "$out")"
tar -C oci -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "$out"
