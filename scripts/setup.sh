#!/usr/bin/env bash
# Sets up tillface in ./.venv on a fresh Debian / Raspberry Pi OS machine.
#   scripts/setup.sh          the unit, the reference pipeline, the store server, the demo data and mosquitto
#                             (for `tillface bench` and `tillface demo`)
#   scripts/setup.sh --dev    the same plus the test and lint tools
# Idempotent: a second run only checks. Installs exactly the lock in requirements/ (scripts/lock.sh). Models are committed in models/ and checked against the manifest.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="reference,demo,store"
[[ "${1:-}" == "--dev" ]] && extras="dev,demo"

need_apt=()
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "tillface needs Python 3.11 or newer (found $(python3 --version 2>&1))" >&2; exit 1; }
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
# The tests check the systemd unit with systemd-analyze.
[[ "${1:-}" == "--dev" ]] && ! command -v systemd-analyze >/dev/null && need_apt+=(systemd)
# The dev extra has systemd-python (journald logging), which builds against libsystemd.
if [[ "${1:-}" == "--dev" ]]; then
  pkg-config --exists libsystemd 2>/dev/null || need_apt+=(libsystemd-dev pkg-config gcc)
  # tests/test_install.py runs scripts/install.sh, which makes its venv with the system's python3.
  /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
  python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' || need_apt+=(python3-dev)
fi
# `tillface demo` and the link tests run a real MQTT broker (their own, on 127.0.0.1; not the service).
[[ -x /usr/sbin/mosquitto ]] || need_apt+=(mosquitto)
# The store server's tests also run against a throw-away PostgreSQL cluster.
[[ "${1:-}" == "--dev" ]] && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && need_apt+=(postgresql)
# The aarch64 check (scripts/check_aarch64.sh) runs the unit under qemu-user on an arm64 root it debootstraps.
[[ "${1:-}" == "--dev" ]] && ! command -v qemu-aarch64-static >/dev/null && need_apt+=(qemu-user-static)
[[ "${1:-}" == "--dev" ]] && ! command -v debootstrap >/dev/null && need_apt+=(debootstrap)
# The cashier page's browser tests: Debian's chromium, and a CJK font for its Chinese texts.
[[ "${1:-}" == "--dev" ]] && ! command -v chromium >/dev/null && need_apt+=(chromium)
[[ "${1:-}" == "--dev" ]] && ! fc-list :lang=zh 2>/dev/null | grep -q . && need_apt+=(fonts-wqy-zenhei)
if ((${#need_apt[@]})); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need_apt[@]}"
fi

# The lock (requirements/, made by scripts/lock.sh): exact versions with their hashes, so that every
# machine gets the same packages whatever day it installs on.
profile=demo
[[ "${1:-}" == "--dev" ]] && profile=dev
lock="requirements/$profile-$(uname -m).txt"
[[ -f "$lock" ]] || {
  echo "tillface has no locked package set for this machine ($(uname -m)): $lock is missing" >&2; exit 1; }
[[ -x .venv/bin/python ]] || python3 -m venv .venv
stamp=".venv/.tillface-$profile-$(cat pyproject.toml requirements/tooling.txt "$lock" | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps)
  "${pip[@]}" -r requirements/tooling.txt
  "${pip[@]}" -r "$lock"
  # The package itself, from this checkout; its dependencies are the lock's, its build backend too.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  rm -f .venv/.tillface-*
  touch "$stamp"
fi
.venv/bin/tillface models verify
