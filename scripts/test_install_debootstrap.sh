#!/usr/bin/env bash
# Runs scripts/install.sh in a clean Debian 12 (bookworm) root made with debootstrap, as root in a
# chroot (no systemd running there: the unit is enabled offline, not started), twice: the second run
# must change nothing. Then --uninstall and --purge.
#
#   sudo scripts/test_install_debootstrap.sh [TARGET]     (default /var/tmp/tillface-debootstrap)
#
# Needs root, the network (Debian's mirror, PyPI) and ~1.5 GB of disk; takes minutes, so it is not part
# of the test suite (tests/test_install.py runs the installer into a temporary root instead). The
# debootstrapped root is kept and reused by the next run; delete TARGET to start from scratch.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${1:-/var/tmp/tillface-debootstrap}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
[[ $(id -u) -eq 0 ]] || { echo "needs root" >&2; exit 1; }

started=$SECONDS
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
if [[ ! -x "$TARGET/usr/bin/python3" ]]; then
  echo "== debootstrap bookworm into $TARGET"
  debootstrap --variant=minbase --include=python3,systemd,ca-certificates bookworm "$TARGET" "$MIRROR" >/dev/null
fi
echo "== root ready after $((SECONDS - started)) s"

mounts=()
cleanup() {
  local m
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
for m in proc sys dev dev/pts; do
  mountpoint -q "$TARGET/$m" || { mount --bind "/$m" "$TARGET/$m"; mounts+=("$TARGET/$m"); }
done
cp /etc/resolv.conf "$TARGET/etc/resolv.conf"

# The checkout, as a plain copy (no venv, no git).
rm -rf "$TARGET/root/tillface"
mkdir -p "$TARGET/root/tillface"
(cd "$REPO" && tar --exclude=./.venv --exclude=./.git --exclude=__pycache__ --exclude='*.egg-info' -cf - .) |
  tar -C "$TARGET/root/tillface" -xf -

# This host's pip settings that the clean root lacks: the CA of a TLS-inspecting proxy, another index.
pip_env=()
cert="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
if [[ -n "$cert" && -f "$cert" ]]; then
  cp "$cert" "$TARGET/root/pip-ca.crt"
  pip_env+=(PIP_CERT=/root/pip-ca.crt)
fi
for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
  [[ -n "${!v:-}" ]] && pip_env+=("$v=${!v}")
done

in_root() {
  chroot "$TARGET" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "${pip_env[@]}" "$@"
}

echo "== first run"
t=$SECONDS
in_root /root/tillface/scripts/install.sh --no-start | tee "$TARGET/root/install-1.log"
echo "== first run took $((SECONDS - t)) s"
t=$SECONDS
echo "== second run"
in_root /root/tillface/scripts/install.sh --no-start | tee "$TARGET/root/install-2.log"
echo "== second run took $((SECONDS - t)) s"
grep -q "nothing changed" "$TARGET/root/install-2.log" || { echo "FAIL: the second run changed something" >&2; exit 1; }

in_root systemctl is-enabled tillface.service
in_root tillface --version
in_root tillface check-config /etc/tillface/tillface.toml
in_root tillface models list
in_root python3 -c 'import systemd.journal' && echo "python3-systemd importable"
in_root /opt/tillface/.venv/bin/python -c 'from tillface.system.journal import journal_handler_class as j; assert j()'
in_root stat -c '%a %U:%G %n' /etc/tillface/credentials/gallery.key /var/lib/tillface /etc/tillface/credentials

echo "== uninstall, then purge"
in_root /root/tillface/scripts/install.sh --uninstall
test -f "$TARGET/etc/tillface/credentials/gallery.key"
in_root /root/tillface/scripts/install.sh --purge
if in_root id tillface >/dev/null 2>&1; then echo "FAIL: user tillface still there" >&2; exit 1; fi
echo "PASS: install, idempotent second run, uninstall and purge in a debootstrapped bookworm ($((SECONDS - started)) s)"
