#!/usr/bin/env bash
# The aarch64 check: the unit's detector and embedder (the lock's LiteRT, numpy and OpenCV wheels for
# aarch64, this checkout's code) run on an arm64 Debian root under qemu-user, pinned to the Raspberry Pi 4's
# Cortex-A72 and the Pi 5's Cortex-A76, and are compared with the same code on this x86 machine
# (scripts/aarch64_compare.py says what is compared and the bounds).
#
#   scripts/check_aarch64.sh [--cpu cortex-a72|cortex-a76|both] [--no-xnnpack] [--vision-tests]
#                            [--chips N] [--random N]
#
#   --no-xnnpack    build the arm64 interpreters without the XNNPACK delegate (the check must then fail)
#   --vision-tests  also run test_models, test_vision_detector, test_vision_align and test_matcher under
#                   qemu (first CPU given; about 25 minutes, mostly dlib's reference ResNet; 35 s on x86)
#   --chips N       faces-dev photos with a face (default 24); --random N random inputs per model (8)
#
# Needs qemu-user-static and debootstrap (scripts/setup.sh --dev installs them), root (debootstrap), the
# dev venv, faces-dev ($TILLFACE_FACES) and the network for a cold cache. No binfmt_misc or chroot:
# `qemu-aarch64-static -L ROOT` runs the root's python3.11 with the root as its library prefix.
# Cache (outside the repo): ${TILLFACE_CACHE:-~/.cache/tillface}/aarch64/, the root keyed by its Debian
# package list, the aarch64 site-packages by the lock's hash; a stale key is removed when a new one is built.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

cpus=(cortex-a72 cortex-a76)
no_xnnpack=()
vision=0
chips=24
random=8
while (($#)); do
  case "$1" in
    --cpu)
      case "${2:-}" in
        cortex-a72 | cortex-a76) cpus=("$2") ;;
        both) cpus=(cortex-a72 cortex-a76) ;;
        *) echo "--cpu takes cortex-a72, cortex-a76 or both" >&2; exit 2 ;;
      esac
      shift 2 ;;
    --no-xnnpack) no_xnnpack=(--no-xnnpack); shift ;;
    --vision-tests) vision=1; shift ;;
    --chips) chips=$2; shift 2 ;;
    --random) random=$2; shift 2 ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

for tool in qemu-aarch64-static debootstrap dpkg-deb flock; do
  command -v "$tool" >/dev/null || {
    echo "the aarch64 check needs $tool: apt-get install qemu-user-static debootstrap" >&2; exit 2; }
done
[[ $(id -u) -eq 0 ]] || { echo "the aarch64 check needs root (debootstrap)" >&2; exit 2; }
host_python=.venv/bin/python
[[ -x $host_python ]] || { echo "no dev venv: run scripts/setup.sh --dev" >&2; exit 2; }

cache="${TILLFACE_CACHE:-$HOME/.cache/tillface}/aarch64"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # one check at a time: the root's /proc/cpuinfo is per run
t_start=$SECONDS

# --- The arm64 root: bookworm's python3.11 and the libraries it loads, unpacked (debootstrap's first
# stage fetches them; dpkg-deb -x lays every .deb out, so no second stage under emulation is needed).
root_debs=(python3.11 libpython3.11-stdlib)
root_key=$(printf '%s\n' v1 bookworm "${root_debs[@]}" | sha256sum | cut -c1-16)
root="$cache/root-$root_key"
if [[ ! -x $root/usr/bin/python3.11 ]]; then
  t0=$SECONDS
  rm -rf "$cache"/root-*
  debootstrap --foreign --variant=minbase --arch=arm64 --include="$(IFS=,; echo "${root_debs[*]}")" \
    bookworm "$root.tmp" ${TILLFACE_DEBIAN_MIRROR:+"$TILLFACE_DEBIAN_MIRROR"} >"$cache/debootstrap.log" 2>&1 || {
    tail -n 20 "$cache/debootstrap.log" >&2; echo "debootstrap of the arm64 root failed" >&2; exit 1; }
  for deb in "$root.tmp"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$root.tmp"; done
  # qemu -L looks a path up in the root first: with no /tmp there, the check's temp files are the host's.
  rm -rf "$root.tmp"/var/cache/apt/archives/*.deb "$root.tmp/tmp"
  mkdir -p "$root.tmp/proc" "$root.tmp/sys/devices/system/cpu"
  mv "$root.tmp" "$root"
  echo "arm64 root built in $((SECONDS - t0)) s: $root"
fi

# --- The lock's aarch64 wheels, unpacked by this machine's pip (no emulation needed to install).
platform=(--python-version 3.11 --implementation cp --only-binary=:all:
  --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64
  --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64)
pip=("$host_python" -m pip --disable-pip-version-check)
# site_for LOCK NAME: prints the folder holding LOCK's packages for aarch64, building it if need be.
site_for() {
  local lock=$1 name=$2 key dir
  key=$(sha256sum <"$lock" | cut -c1-16)
  dir="$cache/$name-$key"
  if [[ ! -f $dir/.complete ]]; then
    local t0=$SECONDS
    rm -rf "$cache/$name"-*
    "${pip[@]}" download -qq --require-hashes --no-deps -r "$lock" -d "$cache/wheels" "${platform[@]}" >&2
    "${pip[@]}" install -qq --no-index --find-links "$cache/wheels" --require-hashes --no-deps -r "$lock" \
      --target "$dir" "${platform[@]}" >&2
    touch "$dir/.complete"
    echo "aarch64 $name from $lock in $((SECONDS - t0)) s" >&2
  fi
  echo "$dir"
}
site=$(site_for requirements/unit-aarch64.txt site)
pythonpath="$site:$repo/daemon"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ((vision)); then
  # pytest and the reference pipeline the vision tests compare with, from the dev lock; face_recognition_models
  # (dlib's model files, data only and sdist-only on PyPI) is taken from the dev venv.
  "$host_python" scripts/aarch64_compare.py lock-subset requirements/dev-aarch64.txt \
    pytest iniconfig pluggy packaging dlib-bin >"$work/tests-lock.txt"
  tests_site=$(site_for "$work/tests-lock.txt" site-tests)
  frm=$("$host_python" -c 'import importlib.util, os
print(os.path.dirname(importlib.util.find_spec("face_recognition_models").origin))')
  mkdir -p "$work/data"
  ln -s "$frm" "$work/data/face_recognition_models"
  pythonpath="$site:$tests_site:$work/data:$repo/daemon"
fi
echo "aarch64 root and packages ready after $((SECONDS - t_start)) s"

# A plausible /proc/cpuinfo for each board: XNNPACK (through cpuinfo) reads the root's copy, and without an
# ARM one it cannot make out the CPU and LiteRT silently runs without it.
write_cpuinfo() {
  local features part variant revision model
  case "$1" in
    cortex-a72) features="fp asimd evtstrm crc32 cpuid"; part=0xd08; variant=0x0; revision=3
      model="Raspberry Pi 4 Model B Rev 1.5" ;;
    cortex-a76) features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
      part=0xd0b; variant=0x4; revision=1; model="Raspberry Pi 5 Model B Rev 1.0" ;;
  esac
  {
    for i in 0 1 2 3; do
      printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' "$i" "$features"
      printf 'CPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' "$variant" "$part" "$revision"
    done
    printf 'Model\t\t: %s\n' "$model"
  } >"$root/proc/cpuinfo"
  echo 0-3 >"$root/sys/devices/system/cpu/possible"
  echo 0-3 >"$root/sys/devices/system/cpu/present"
}

# arm_python CPU ARGS...: the root's python3.11 under qemu for that CPU model (QEMU's `max` CPU advertises
# SME, with which XNNPACK's int8 kernels give garbage under QEMU 7.2: always pin the board's core).
arm_python() {
  local cpu=$1
  shift
  env -u PYTHONHOME -u VIRTUAL_ENV QEMU_CPU="$cpu" PYTHONPATH="$pythonpath" PYTHONDONTWRITEBYTECODE=1 \
    PYTHONNOUSERSITE=1 qemu-aarch64-static -L "$root" "$root/usr/bin/python3.11" "$@"
}

t0=$SECONDS
"$host_python" scripts/aarch64_compare.py reference --out "$work/x86.npz" --chips "$chips" --random "$random" \
  2> >(grep -v '^INFO: Created TensorFlow Lite XNNPACK' >&2)
echo "x86 reference in $((SECONDS - t0)) s"

status=0
for cpu in "${cpus[@]}"; do
  write_cpuinfo "$cpu"
  t0=$SECONDS
  if ! arm_python "$cpu" scripts/aarch64_compare.py run --ref "$work/x86.npz" --out "$work/$cpu.npz" \
    "${no_xnnpack[@]}" 2> >(grep -v '^INFO: Created TensorFlow Lite XNNPACK' >&2); then
    echo "FAIL $cpu: the arm64 run failed (see above)"
    status=1
    continue
  fi
  "$host_python" scripts/aarch64_compare.py compare --ref "$work/x86.npz" --got "$work/$cpu.npz" --cpu "$cpu" \
    --seconds $((SECONDS - t0)) 2> >(grep -v '^INFO: Created TensorFlow Lite XNNPACK' >&2) || status=1
done

if ((vision)); then
  cpu=${cpus[0]}
  write_cpuinfo "$cpu"
  t0=$SECONDS
  set +e
  arm_python "$cpu" -m pytest -p no:cacheprovider -q --durations=5 tests/test_models.py tests/test_vision_detector.py \
    tests/test_vision_align.py tests/test_matcher.py >"$work/vision.log" 2>&1
  rc=$?
  set -e
  tail -n 12 "$work/vision.log"
  summary=$(grep -E '[0-9]+ (passed|failed|error)' "$work/vision.log" | tail -n 1 | tr -d '=' | sed 's/^ *//')
  echo "vision tests under qemu ($cpu): ${summary:-no summary} (exit $rc, $((SECONDS - t0)) s)"
  ((rc == 0)) || status=1
fi

echo "aarch64 check: $( ((status == 0)) && echo passed || echo FAILED ) for ${cpus[*]}${no_xnnpack:+ (XNNPACK forced off)} in $((SECONDS - t_start)) s"
exit "$status"
