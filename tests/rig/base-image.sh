#!/usr/bin/env bash
# Builds the test base image as an OCI layout tarball: busybox (static) with its
# applet links in /bin, /etc/passwd and /etc/group, and a /base tree that the
# tests modify or delete to produce changed files, whiteouts and opaque dirs.
#
#   tests/rig/base-image.sh OUT_TAR
#
# Import it with: ctr -n NS images import --base-name seamless.test/base OUT_TAR
# which creates the image seamless.test/base:latest.
set -euo pipefail

out=${1:?usage: base-image.sh OUT_TAR}
out=$(realpath -m "$out")
busybox=${BUSYBOX:-/bin/busybox}
if [[ $(ldd "$busybox" 2>&1 || true) != *"not a dynamic"* ]]; then
  echo "base-image.sh: $busybox is not a static binary (install busybox-static)" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/seamless-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

umoci init --layout oci >/dev/null
umoci new --image oci:latest >/dev/null
umoci unpack --image oci:latest bundle >/dev/null
r=bundle/rootfs

mkdir -p "$r"/{bin,etc,dev,proc,sys,tmp,root,data,var/tmp}
chmod 1777 "$r/tmp" "$r/var/tmp"
chmod 0700 "$r/root"
cp "$busybox" "$r/bin/busybox"
chmod 0755 "$r/bin/busybox"
for applet in $("$busybox" --list); do
  [[ $applet == busybox ]] && continue
  ln -sf busybox "$r/bin/$applet"
done

cat >"$r/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
cat >"$r/etc/group" <<'GR'
root:x:0:
nogroup:x:65534:
GR
echo seamless-test >"$r/etc/hostname"

# The tree the tests change.
b=$r/base
mkdir -p "$b/keep/sub" "$b/dir-to-delete/sub" "$b/dir-to-replace/old-sub"
echo "kept file" >"$b/keep/file"
echo "kept nested" >"$b/keep/sub/nested"
echo "doomed a" >"$b/dir-to-delete/a"
echo "doomed b" >"$b/dir-to-delete/sub/b"
echo "old content 1" >"$b/dir-to-replace/old1"
echo "old content 2" >"$b/dir-to-replace/old-sub/old2"
echo "original content" >"$b/file-to-modify"
echo "to be deleted" >"$b/file-to-delete"
head -c 65536 /dev/zero | tr '\0' 'b' >"$b/big-base-file"

umoci repack --image oci:latest bundle >/dev/null
umoci config --image oci:latest \
  --config.cmd /bin/sh \
  --config.env PATH=/bin \
  --config.workingdir / \
  --os linux --architecture amd64 \
  --history.comment "seamless-snapshot test base" >/dev/null
umoci gc --layout oci >/dev/null

mkdir -p "$(dirname "$out")"
tar -C oci -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "$out"
