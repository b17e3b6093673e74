#!/usr/bin/env bash
# Runs every test of the workspace: unit tests and the integration tests
# against the rig (private containerd + registry, see tests/rig/start.sh).
# Uses a running rig (RIG_DIR/env), or starts one and stops it afterwards
# (set KEEP_RIG=1 to leave it running). Extra arguments go to cargo test.
#
#   tests/run.sh [cargo test args...]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
rig=${SEAMLESS_RIG_DIR:-/tmp/seamless-rig}
started=0

if [[ -z ${SEAMLESS_TEST_CONTAINERD:-} ]]; then
  if [[ -f $rig/env ]] && ctr --address "$rig/containerd.sock" version >/dev/null 2>&1; then
    # shellcheck disable=SC1091
    . "$rig/env"
  elif [[ $(id -u) -eq 0 ]]; then
    tests/rig/install.sh
    tests/rig/start.sh "$rig"
    # shellcheck disable=SC1091
    . "$rig/env"
    started=1
  else
    echo "run.sh: not root: the root-only and integration tests will fail (they need root and the rig)" >&2
  fi
fi
if [[ $started == 1 && ${KEEP_RIG:-0} != 1 ]]; then
  trap 'tests/rig/stop.sh "$rig"' EXIT
fi

# One test at a time: the integration tests freeze containers and measure
# pauses, and the machine may have only 2 cores. Tests that need root or the
# rig are #[ignore]d by default and included here; benchmarks (bench_*) and
# helper processes re-executed by other tests (helper_*) are not tests.
cargo test --workspace "$@" -- --include-ignored --skip bench_ --skip helper_ --test-threads=1

# The Python module: wheel, fresh venv, stub check, pytest against the same
# rig (SEAMLESS_PY_TESTS=0 skips it).
if [[ ${SEAMLESS_PY_TESTS:-1} != 0 ]]; then
  snapshot-py/run-tests.sh
fi
