#!/usr/bin/env bash
# Starts the test rig: a private containerd and a plain-HTTP registry on a free
# loopback port, builds the base image and the stall probe, and writes
# RIG_DIR/env for the tests to source. Re-running while the rig is up reuses it.
#
#   tests/rig/start.sh [RIG_DIR]      (default /tmp/seamless-rig)
#   . RIG_DIR/env
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rig=$(realpath -m "${1:-${SEAMLESS_RIG_DIR:-/tmp/seamless-rig}}")
mkdir -p "$rig"

sock=$rig/containerd.sock
root=$rig/containerd-root
state=$rig/containerd-state
regdir=$rig/registry
base_tar=$rig/base.tar
probe=$rig/probe

log() { echo "start.sh: $*" >&2; }

# shellcheck source=tests/rig/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

registry_up() {
  local port=$1
  curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/v2/" 2>/dev/null
}

wait_for() {
  local what=$1 tries=$2
  shift 2
  for ((i = 0; i < tries; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "$what did not come up; see logs in $rig"
  return 1
}

# --- containerd -------------------------------------------------------------
if pid=$(live_pid "$rig/containerd.pid" "--address $sock") && ctr --address "$sock" version >/dev/null 2>&1; then
  log "containerd already running (pid $pid)"
else
  mkdir -p "$root" "$state"
  cat >"$rig/containerd.toml" <<TOML
version = 2
root = "$root"
state = "$state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$sock"

[debug]
  level = "info"
TOML
  rm -f "$sock" "$sock.ttrpc"
  setsid containerd --config "$rig/containerd.toml" --root "$root" --state "$state" \
    --address "$sock" </dev/null >>"$rig/containerd.log" 2>&1 &
  echo $! >"$rig/containerd.pid"
  wait_for containerd 300 ctr --address "$sock" version
  log "containerd started (pid $(<"$rig/containerd.pid"), socket $sock)"
fi

# --- registry ---------------------------------------------------------------
port=""
if [[ -f $rig/registry.port ]]; then port=$(<"$rig/registry.port"); fi
if [[ -n $port ]] && pid=$(live_pid "$rig/registry.pid" "$rig/registry.yml") && registry_up "$port"; then
  log "registry already running (pid $pid, port $port)"
else
  port=$(free_port)
  mkdir -p "$regdir"
  cat >"$rig/registry.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $regdir
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YML
  setsid docker-registry serve "$rig/registry.yml" </dev/null >>"$rig/registry.log" 2>&1 &
  echo $! >"$rig/registry.pid"
  echo "$port" >"$rig/registry.port"
  wait_for registry 300 registry_up "$port"
  log "registry started (pid $(<"$rig/registry.pid"), 127.0.0.1:$port)"
fi

# --- base image and probe -----------------------------------------------------
if [[ ! -s $base_tar || $here/base-image.sh -nt $base_tar ]]; then
  "$here/base-image.sh" "$base_tar" >/dev/null
  log "built base image $base_tar"
fi
if [[ ! -x $probe || $here/probe.c -nt $probe ]]; then
  gcc -O2 -static -Wall -o "$probe.tmp" "$here/probe.c"
  mv "$probe.tmp" "$probe"
  log "built probe $probe"
fi

cat >"$rig/env.tmp" <<ENV
export SEAMLESS_TEST_CONTAINERD=$sock
export SEAMLESS_TEST_CONTAINERD_ROOT=$root
export SEAMLESS_TEST_CONTAINERD_STATE=$state
export SEAMLESS_TEST_REGISTRY=127.0.0.1:$port
export SEAMLESS_TEST_BASE_TAR=$base_tar
export SEAMLESS_TEST_PROBE=$probe
export SEAMLESS_TEST_RIG=$rig
ENV
mv "$rig/env.tmp" "$rig/env"
log "rig ready: . $rig/env"
