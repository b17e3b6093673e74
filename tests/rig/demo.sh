#!/usr/bin/env bash
# Demo: commit a running container that keeps writing, show the pause, then
# run the pushed snapshot and show the data it captured.
#
#   tests/rig/demo.sh            (as root; starts the rig if needed)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
rig=${SEAMLESS_RIG_DIR:-/tmp/seamless-rig}
ns=demo
ctn=demo-writer
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "install packages and start the rig (private containerd + registry)"
tests/rig/install.sh
started=0
if [[ ! -f $rig/env ]] || ! ctr --address "$rig/containerd.sock" version >/dev/null 2>&1; then
  started=1
fi
tests/rig/start.sh "$rig"
# shellcheck disable=SC1091
. "$rig/env"
sock=$SEAMLESS_TEST_CONTAINERD
reg=$SEAMLESS_TEST_REGISTRY
c=(ctr --address "$sock" -n "$ns")
state_dir=$rig/demo-state
target=$reg/demo/snap:1

clean_ns() {
  "${c[@]}" task kill -s SIGKILL "$ctn" >/dev/null 2>&1 || true
  sleep 0.3
  "${c[@]}" task delete -f "$ctn" >/dev/null 2>&1 || true
  "${c[@]}" containers rm "$ctn" demo-check >/dev/null 2>&1 || true
  for img in $("${c[@]}" images ls -q 2>/dev/null); do "${c[@]}" images rm --sync "$img" >/dev/null 2>&1 || true; done
  "${c[@]}" content ls -q 2>/dev/null | xargs -r "${c[@]}" content rm >/dev/null 2>&1 || true
  ctr --address "$sock" namespaces rm "$ns" >/dev/null 2>&1 || true
  # runc leaves the namespace's (empty) parent cgroups behind.
  rmdir /sys/fs/cgroup/*/"$ns" 2>/dev/null || true
  rm -rf "$state_dir"
}
cleanup() {
  clean_ns
  if [[ $started == 1 && ${KEEP_RIG:-0} != 1 ]]; then tests/rig/stop.sh "$rig"; fi
}
clean_ns # leftovers of an earlier run
trap cleanup EXIT

say "build the CLI"
cargo build -q -p seamless-snapshot-cli
cli=${CARGO_TARGET_DIR:-target}/debug/seamless-snapshot

say "import the base image and start a container that appends to /data/log every 0.1 s"
"${c[@]}" images import --base-name seamless.test/base "$SEAMLESS_TEST_BASE_TAR" >/dev/null
"${c[@]}" run -d seamless.test/base:latest "$ctn" \
  sh -c 'i=0; while true; do echo $i >> /data/log; i=$((i+1)); sleep 0.1; done'
sleep 3
echo "lines written so far: $(wc -l <"$SEAMLESS_TEST_CONTAINERD_STATE/io.containerd.runtime.v2.task/$ns/$ctn/rootfs/data/log")"

say "seamless-snapshot commit (the container keeps running)"
set -x
"$cli" --address "$sock" --namespace "$ns" --state-dir "$state_dir" \
  commit --container "$ctn" --target "$target" --wait --json | tee "$rig/demo-result.json"
{ set +x; } 2>/dev/null
python3 - "$rig/demo-result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"\npause felt by the container: {r['pause_time'] * 1000:.3f} ms")
print(f"whole commit incl. push:     {r['total_time']:.3f} s")
print(f"files captured: {r['files_captured']}, bytes: {r['bytes_captured']}")
print(f"manifest: {r.get('manifest_digest')}")
PY
"${c[@]}" task ls
echo "lines written now: $(wc -l <"$SEAMLESS_TEST_CONTAINERD_STATE/io.containerd.runtime.v2.task/$ns/$ctn/rootfs/data/log")"

say "pull the snapshot and run it: its /data/log stops at the instant of the commit"
"${c[@]}" images pull --plain-http "$target" >/dev/null
"${c[@]}" run --rm "$target" demo-check sh -c 'echo "lines: $(wc -l < /data/log)"; tail -n 3 /data/log'
