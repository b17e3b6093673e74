#!/usr/bin/env bash
# Installs the system packages the test rig needs (Debian 12). Idempotent: does
# nothing when everything is already installed.
set -euo pipefail

PKGS=(
  containerd runc docker-registry protobuf-compiler umoci skopeo
  busybox-static xfsprogs btrfs-progs attr curl gcc libc6-dev python3
  pkg-config valgrind golang-go openssl zstd gzip pigz
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg -s "$p" >/dev/null 2>&1; then
    missing+=("$p")
  fi
done
# python3 may come from elsewhere (pyenv); accept any python3 on PATH.
if command -v python3 >/dev/null 2>&1; then
  m2=()
  for p in "${missing[@]}"; do [[ $p == python3 ]] || m2+=("$p"); done
  missing=("${m2[@]+"${m2[@]}"}")
fi

# The Python module's tests (snapshot-py/run-tests.sh) need `python3 -m venv`:
# Debian's own python3 has it only with python3-venv.
py=$(command -v python3 || true)
if [[ -z $py ]] || { [[ $py == /usr/bin/python3 ]] && ! python3 -c 'import ensurepip' 2>/dev/null; }; then
  missing+=(python3-venv)
fi

if ((${#missing[@]} == 0)); then
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi
echo "install.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
