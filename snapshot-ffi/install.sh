#!/usr/bin/env bash
# Builds libseamless and installs it under PREFIX (default /usr/local):
#   PREFIX/lib/libseamless.so.VERSION, libseamless.so.0 -> it (the SONAME),
#   libseamless.so -> libseamless.so.0 (for -lseamless), libseamless.a,
#   PREFIX/lib/pkgconfig/seamless.pc, PREFIX/include/seamless.h
#
#   snapshot-ffi/install.sh [PREFIX]
#
# Environment: PROFILE (cargo profile, default release; dev for a debug
# build), DESTDIR (staged install: files go to DESTDIR/PREFIX, the .pc file
# still says PREFIX), CARGO, CARGO_TARGET_DIR.
set -euo pipefail

prefix=${1:-${PREFIX:-/usr/local}}
profile=${PROFILE:-release}
dest=${DESTDIR:-}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cargo=${CARGO:-cargo}
manifest=$root/Cargo.toml

"$cargo" build --quiet --manifest-path "$manifest" -p seamless-snapshot-ffi --profile "$profile"

# Where cargo put it (honours CARGO_TARGET_DIR and cargo config).
target=$("$cargo" metadata --format-version 1 --no-deps --manifest-path "$manifest" |
  grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
case $profile in
  dev | test) out=$target/debug ;;
  bench) out=$target/release ;;
  *) out=$target/$profile ;;
esac
# `...#seamless-snapshot-ffi@0.1.0` or `...#0.1.0`
version=$("$cargo" pkgid --manifest-path "$manifest" -p seamless-snapshot-ffi)
version=${version##*[@#]}

libdir=$prefix/lib
includedir=$prefix/include
install -d "$dest$libdir/pkgconfig" "$dest$includedir"
install -m 0755 "$out/libseamless.so" "$dest$libdir/libseamless.so.$version"
ln -sfn "libseamless.so.$version" "$dest$libdir/libseamless.so.0"
ln -sfn libseamless.so.0 "$dest$libdir/libseamless.so"
install -m 0644 "$out/libseamless.a" "$dest$libdir/libseamless.a"
install -m 0644 "$root/include/seamless.h" "$dest$includedir/seamless.h"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" \
  "$root/snapshot-ffi/seamless.pc.in" >"$dest$libdir/pkgconfig/seamless.pc"
chmod 0644 "$dest$libdir/pkgconfig/seamless.pc"

# Refresh the loader's cache when installing for real as root (a no-op for
# a prefix outside its search path).
if [[ -z $dest && $(id -u) -eq 0 ]] && command -v ldconfig >/dev/null 2>&1; then
  ldconfig
fi
echo "install.sh: installed libseamless $version ($profile) under $dest$prefix"
