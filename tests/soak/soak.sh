#!/usr/bin/env bash
# Soak (not in CI's budget): COUNT consecutive commits (default 500) of one
# container whose writer keeps a checkable invariant; every pushed image is
# pulled back (skopeo + umoci) and checked. Prints the counts and the
# pause_time distribution; exits non-zero on any failed commit or violation.
# See tests/soak/README.md for the invariant and the latest result.
#
#   tests/soak/soak.sh [COUNT] [soak args: --writer-sleep-us N, --json]
#
# Uses a running rig (SEAMLESS_TEST_* from RIG_DIR/env, or RIG_DIR=
# $SEAMLESS_RIG_DIR, default /tmp/seamless-rig), or starts one and stops it
# afterwards. PROFILE=release builds and uses the release CLI (default debug).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
count=${1:-500}
shift || true
rig=${SEAMLESS_RIG_DIR:-/tmp/seamless-rig}
profile=${PROFILE:-debug}
started=0

if [[ -z ${SEAMLESS_TEST_CONTAINERD:-} ]]; then
  if [[ -f $rig/env ]] && ctr --address "$rig/containerd.sock" version >/dev/null 2>&1; then
    # shellcheck disable=SC1091
    . "$rig/env"
  else
    tests/rig/start.sh "$rig"
    # shellcheck disable=SC1091
    . "$rig/env"
    started=1
  fi
fi
if [[ $started == 1 && ${KEEP_RIG:-0} != 1 ]]; then
  trap 'tests/rig/stop.sh "$rig"' EXIT
fi

flags=()
[[ $profile == release ]] && flags=(--release)
cargo build -q "${flags[@]}" -p seamless-snapshot-cli -p seamless-snapshot-tests --bin seamless-snapshot --bin soak
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
echo "soak.sh: $count commits, code at $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo '+dirty'), $profile build, $(date -u +%FT%TZ)" >&2
SEAMLESS_CLI=$target/$profile/seamless-snapshot "$target/$profile/soak" --commits "$count" "$@"
