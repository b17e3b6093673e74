#!/usr/bin/env bash
# Builds the Python wheel with maturin, installs it into a fresh virtual
# environment, checks that the type stub matches the compiled module, and
# runs the pytest suite there against the rig (tests/rig/start.sh; its env is
# taken from the environment or from $SEAMLESS_RIG_DIR/env).
#
#   snapshot-py/run-tests.sh [pytest args...]
#
# The wheel is a debug build: the busy test needs the fault hook
# SEAMLESS_FAULT_HOLD_FROZEN_MS, which only debug builds read, and it reuses
# the artifacts of `cargo test` instead of building the core again in release.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
python=${PYTHON:-python3}
maturin_version=1.16.0
pytest_version=9.2.0

log() { echo "run-tests.sh: $*" >&2; }

# maturin in a venv of its own, kept across runs in the target dir.
tools=$target/py-tools
if [[ $("$tools/bin/maturin" --version 2>/dev/null) != "maturin $maturin_version" ]]; then
  rm -rf "$tools"
  "$python" -m venv "$tools"
  "$tools/bin/pip" install -q --disable-pip-version-check "maturin==$maturin_version"
fi

wheels=$target/py-wheels
rm -rf "$wheels"
(cd "$here" && "$tools/bin/maturin" build --strip --interpreter "$python" -o "$wheels")
wheel=$(echo "$wheels"/seamless_snapshot-*.whl)
[[ -f $wheel ]] || { log "no wheel built in $wheels"; exit 1; }
case $wheel in *-abi3-*) ;; *) log "not an abi3 wheel: $wheel"; exit 1 ;; esac
for f in seamless_snapshot/__init__.pyi seamless_snapshot/py.typed; do
  "$python" -c 'import sys, zipfile; sys.exit(sys.argv[2] not in zipfile.ZipFile(sys.argv[1]).namelist())' "$wheel" "$f" ||
    { log "$f missing from $wheel"; exit 1; }
done

venv=$(mktemp -d /tmp/seamless-py-venv.XXXXXX)
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$wheel" "pytest==$pytest_version"

# From outside the source tree, so that nothing but the installed wheel is found.
(cd / && "$venv/bin/python" -c 'import seamless_snapshot')
"$venv/bin/python" "$here/check_stub.py" "$here/seamless_snapshot.pyi"

if [[ -z ${SEAMLESS_TEST_CONTAINERD:-} && -f ${SEAMLESS_RIG_DIR:-/tmp/seamless-rig}/env ]]; then
  # shellcheck disable=SC1091
  . "${SEAMLESS_RIG_DIR:-/tmp/seamless-rig}/env"
fi

status=0
(cd "$here" && "$venv/bin/python" -m pytest -p no:cacheprovider tests "$@") || status=$?
if ((status == 5)); then
  log "pytest collected no tests"
  exit 1
fi
exit "$status"
