#!/usr/bin/env bash
# Runs every cargo-fuzz target for N seconds each (default 60), one process
# at a time, and prints a summary: executions, seconds, corpus size and the
# result of each. Exits non-zero when a target crashed; the crashing input
# is in fuzz/artifacts/<target>/ (reproduce: cargo +nightly fuzz run
# <target> <file>). Needs root (the layer target makes device nodes and
# trusted.* xattrs) and a nightly toolchain with cargo-fuzz.
#
#   fuzz/run.sh [seconds-per-target] [target...]
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
secs=${1:-60}
shift || true
targets=("$@")
if [[ ${#targets[@]} == 0 ]]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Seeds from this machine's own /proc files, for the parsers.
seed() {
  local t=$1 src=$2 name=$3
  mkdir -p "corpus/$t"
  [[ -r $src ]] && cp "$src" "corpus/$t/$name" 2>/dev/null
}
seed mountinfo /proc/self/mountinfo self-mountinfo
seed proc_maps /proc/self/maps self-maps
mkdir -p corpus/proc_stat && { printf '\x16'; cat /proc/self/stat; } >corpus/proc_stat/self-stat
mkdir -p corpus/overlay_options && printf 'index=off\0upperdir=/u\0lowerdir=/l1:/l2\0workdir=/w\xff' >corpus/overlay_options/basic
mkdir -p corpus/reference && printf '127.0.0.1:5000/a/b:v1' >corpus/reference/loopback

cargo +nightly fuzz build -a || exit 2
mkdir -p logs
declare -A execs result wall
failed=0
for t in "${targets[@]}"; do
  log=logs/$t.log
  start=$(date +%s)
  # -jobs unset: one fuzzing process (the machine is shared).
  cargo +nightly fuzz run -a "$t" -- -max_total_time="$secs" -timeout=20 \
    -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  wall[$t]=$(($(date +%s) - start))
  execs[$t]=$(grep -oP 'stat::number_of_executed_units: \K[0-9]+' "$log" | tail -1)
  if [[ $rc == 0 ]]; then
    result[$t]=ok
  else
    result[$t]="CRASH (rc $rc, see fuzz/$log and fuzz/artifacts/$t/)"
    failed=1
  fi
  echo "$t: ${execs[$t]:-?} executions in ${wall[$t]} s: ${result[$t]}" >&2
done

echo
echo "fuzz/run.sh $(date -u +%F) $(git rev-parse --short HEAD 2>/dev/null): ${secs} s per target"
printf '%-16s %12s %8s %8s  %s\n' target executions seconds corpus result
for t in "${targets[@]}"; do
  n=$(find "corpus/$t" -type f 2>/dev/null | wc -l)
  printf '%-16s %12s %8s %8s  %s\n' "$t" "${execs[$t]:-?}" "${wall[$t]}" "$n" "${result[$t]}"
done
exit $failed
