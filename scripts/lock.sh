#!/usr/bin/env bash
# Regenerates the lock, requirements/*.txt, from pyproject.toml (and requirements/tooling.in) with uv.
# Needs PyPI and a venv with the dev tools (scripts/setup.sh --dev). Commit the result; tests/test_lock.py
# fails while pyproject.toml asks for something the lock does not pin.
#
# One file per install profile and machine, exact versions with their hashes:
#   tooling            pip, setuptools and wheel, installed first into every venv
#   dev-ARCH           scripts/setup.sh --dev, scripts/test.sh, CI: the superset every test runs on
#   demo-ARCH          scripts/setup.sh, scripts/demo.sh
#   unit-ARCH          scripts/install.sh on a unit (x86_64, or aarch64 such as a Jetson)
#   unit-aarch64-picamera2   scripts/install.sh on Raspberry Pi OS: apt's picamera2 is built against
#                      Debian's numpy 1.x, so numpy < 2 (and the OpenCV that goes with it)
#   store-ARCH         the reference store server alone
#   journald           systemd-python for a unit whose Python has no apt python3-systemd (Jetson)
#   build-x86_64       scripts/build_models.py (torch 2.13.0's CPU build, from PyTorch's CPU wheels)
# Every profile but the picamera2 and build ones takes its shared versions from dev-x86_64, so what a unit runs is
# what the tests ran.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-.venv/bin/uv}
[[ -x $uv ]] || { echo "lock.sh needs uv: run scripts/setup.sh --dev first" >&2; exit 1; }
out=requirements
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

compile() { # compile FILE PLATFORM ARGS...
  local file=$1 platform=$2
  shift 2
  "$uv" pip compile --quiet --generate-hashes --python-version 3.11 --python-platform "$platform" \
    --custom-compile-command "scripts/lock.sh" --no-strip-extras -c requirements/constraints.in -o "$out/$file.txt" "$@"
  echo "$out/$file.txt: $(grep -c '^[A-Za-z0-9]' "$out/$file.txt") packages"
}
pins() { grep -E '^[A-Za-z0-9][^ ]*==' "$1" | sed 's/ .*//' >"$2"; }

compile tooling x86_64-manylinux_2_28 requirements/tooling.in
compile dev-x86_64 x86_64-manylinux_2_28 pyproject.toml --extra dev --extra demo
pins "$out/dev-x86_64.txt" "$tmp/dev.txt"
for arch in x86_64 aarch64; do
  platform=$arch-manylinux_2_28
  [[ $arch == aarch64 ]] && compile dev-aarch64 "$platform" pyproject.toml --extra dev --extra demo -c "$tmp/dev.txt"
  compile "demo-$arch" "$platform" pyproject.toml --extra reference --extra demo --extra store -c "$tmp/dev.txt"
  compile "unit-$arch" "$platform" pyproject.toml -c "$tmp/dev.txt"
  compile "store-$arch" "$platform" pyproject.toml --extra store -c "$tmp/dev.txt"
done
echo "numpy<2" >"$tmp/numpy1.txt"
compile unit-aarch64-picamera2 aarch64-manylinux_2_28 pyproject.toml -c "$tmp/numpy1.txt"
printf 'systemd-python\n' >"$tmp/journald.in"
compile journald x86_64-manylinux_2_28 "$tmp/journald.in" -c "$tmp/dev.txt"
# torch's CPU build (PyPI's torch pulls the CUDA libraries): PyTorch publishes it as 2.13.0+cpu; pip's
# find-links folder holds it here (/opt/wheels). Without it the build lock is left as it is.
if compgen -G "/opt/wheels/torch-2.13.0+cpu-*.whl" >/dev/null; then
  compile build-x86_64 x86_64-manylinux_2_28 pyproject.toml --extra build \
    --find-links /opt/wheels --index-strategy unsafe-best-match
else
  echo "$out/build-x86_64.txt: left as it is (no torch 2.13.0+cpu wheel in /opt/wheels)"
fi
