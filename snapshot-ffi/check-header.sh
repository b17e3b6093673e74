#!/usr/bin/env bash
# Fails when include/seamless.h differs from what the pinned cbindgen
# generates from snapshot-ffi/ now. To update the header after changing the
# crate: snapshot-ffi/check-header.sh --write
set -euo pipefail

want=0.29.4
cd "$(dirname "${BASH_SOURCE[0]}")"
header=../include/seamless.h

cbindgen=${CBINDGEN:-cbindgen}
if ! command -v "$cbindgen" >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cbindgen ]]; then
  cbindgen=${CARGO_HOME:-$HOME/.cargo}/bin/cbindgen
fi
have=$("$cbindgen" --version 2>/dev/null | awk '{print $2}') || true
if [[ $have != "$want" ]]; then
  echo "check-header.sh: need cbindgen $want (found: ${have:-none}):" \
    "cargo install cbindgen --version $want --locked" >&2
  exit 1
fi

fresh=$(mktemp)
trap 'rm -f "$fresh"' EXIT
"$cbindgen" --quiet --config cbindgen.toml --crate seamless-snapshot-ffi --output "$fresh" .

if [[ ${1:-} == --write ]]; then
  cp "$fresh" "$header"
  echo "check-header.sh: wrote include/seamless.h"
elif ! diff -u "$header" "$fresh"; then
  echo "check-header.sh: include/seamless.h is stale; regenerate it with snapshot-ffi/check-header.sh --write" >&2
  exit 1
else
  echo "check-header.sh: include/seamless.h is up to date"
fi
