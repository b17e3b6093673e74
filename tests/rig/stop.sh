#!/usr/bin/env bash
# Stops the test rig started by start.sh: thaws and kills every task in every
# namespace of that containerd, removes containers, stops containerd, its
# shims and the registry, and unmounts leftovers under RIG_DIR. Leaves no
# frozen cgroup behind. Safe to run when the rig is (partly) down.
#
#   tests/rig/stop.sh [RIG_DIR]      (default /tmp/seamless-rig)
#   PURGE=1 tests/rig/stop.sh        also deletes RIG_DIR
set -uo pipefail

rig=$(realpath -m "${1:-${SEAMLESS_RIG_DIR:-/tmp/seamless-rig}}")
sock=$rig/containerd.sock
log() { echo "stop.sh: $*" >&2; }

# shellcheck source=tests/rig/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Thaws every frozen cgroup below /<ns> in the v1 freezer and the v2 tree.
thaw_ns() {
  local ns=$1 f
  for f in /sys/fs/cgroup/freezer/"$ns"/freezer.state /sys/fs/cgroup/freezer/"$ns"/*/freezer.state; do
    [[ -f $f ]] || continue
    if [[ $(<"$f") != THAWED ]]; then echo THAWED >"$f" 2>/dev/null && log "thawed ${f%/*}"; fi
  done
  for f in /sys/fs/cgroup/unified/"$ns"/cgroup.freeze /sys/fs/cgroup/unified/"$ns"/*/cgroup.freeze \
    /sys/fs/cgroup/"$ns"/cgroup.freeze /sys/fs/cgroup/"$ns"/*/cgroup.freeze; do
    [[ -f $f ]] || continue
    if [[ $(<"$f") != 0 ]]; then echo 0 >"$f" 2>/dev/null && log "thawed ${f%/*}"; fi
  done
}

# Removes the (empty) cgroup directories of a namespace.
rm_ns_cgroups() {
  local ns=$1 d
  for d in /sys/fs/cgroup/*/"$ns" /sys/fs/cgroup/"$ns"; do
    [[ -d $d ]] || continue
    find "$d" -depth -mindepth 1 -type d -exec rmdir {} \; 2>/dev/null
    rmdir "$d" 2>/dev/null
  done
  true
}

namespaces=()
if cpid=$(live_pid "$rig/containerd.pid" "--address $sock"); then
  c=(ctr --address "$sock")
  mapfile -t namespaces < <("${c[@]}" namespaces ls -q 2>/dev/null)
  for ns in "${namespaces[@]}"; do
    thaw_ns "$ns"
    while read -r task _ status; do
      [[ -n $task ]] || continue
      if [[ $status == PAUSED ]]; then "${c[@]}" -n "$ns" task resume "$task" >/dev/null 2>&1; fi
      "${c[@]}" -n "$ns" task kill -a -s SIGKILL "$task" >/dev/null 2>&1
    done < <("${c[@]}" -n "$ns" task ls 2>/dev/null | tail -n +2)
    for task in $("${c[@]}" -n "$ns" task ls -q 2>/dev/null); do
      for _ in $(seq 50); do
        st=$("${c[@]}" -n "$ns" task ls 2>/dev/null | awk -v t="$task" '$1==t{print $3}')
        [[ $st == RUNNING || $st == PAUSING ]] || break
        sleep 0.1
      done
      "${c[@]}" -n "$ns" task delete -f "$task" >/dev/null 2>&1
    done
    for ctn in $("${c[@]}" -n "$ns" containers ls -q 2>/dev/null); do
      "${c[@]}" -n "$ns" containers rm "$ctn" >/dev/null 2>&1
    done
  done
  kill -TERM "$cpid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$cpid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$cpid" 2>/dev/null
  log "containerd stopped"
fi
rm -f "$rig/containerd.pid" "$sock" "$sock.ttrpc"

# Shims of this containerd outlive it; they carry its socket on their command line.
for p in /proc/[0-9]*; do
  cmd=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
  if [[ $cmd == *containerd-shim* && $cmd == *"-address $sock "* ]]; then
    kill -KILL "${p#/proc/}" 2>/dev/null && log "killed shim ${p#/proc/}"
  fi
done

if rpid=$(live_pid "$rig/registry.pid" "$rig/registry.yml"); then
  kill -TERM "$rpid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$rpid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$rpid" 2>/dev/null
  log "registry stopped"
fi
rm -f "$rig/registry.pid"

# Unmount anything left under the rig (deepest first).
if command -v findmnt >/dev/null; then
  findmnt -rn -o TARGET | awk -v r="$rig/" 'index($0, r) == 1' | sort -r | while read -r m; do
    umount -l "$(printf '%b' "$m")" 2>/dev/null && log "unmounted $m"
  done
fi

# Tasks of namespaces unknown to us (containerd already gone) may still be frozen.
for f in /sys/fs/cgroup/freezer/*/*/freezer.state /sys/fs/cgroup/unified/*/*/cgroup.freeze; do
  [[ -f $f ]] || continue
  ns=$(basename "$(dirname "$(dirname "$f")")")
  case " ${namespaces[*]-} " in *" $ns "*) ;; *) continue ;; esac
  thaw_ns "$ns"
done
for ns in "${namespaces[@]}"; do rm_ns_cgroups "$ns"; done

rm -f "$rig/env"
if [[ ${PURGE:-0} == 1 ]]; then
  rm -rf "$rig"
  log "removed $rig"
fi
exit 0
