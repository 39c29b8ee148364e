#!/usr/bin/env bash
# Installs tillface as a service on Raspberry Pi OS, Debian or a Jetson (Ubuntu), from this checkout:
#
#   sudo scripts/install.sh                 install (or update) and start the service
#   sudo scripts/install.sh --uninstall     remove the program; keep config, gallery key and gallery
#   sudo scripts/install.sh --purge         remove everything, the tillface user included
#
# What it puts where:
#   apt packages        python3-venv, python3-systemd (journald), python3-picamera2 on a Raspberry Pi
#   /opt/tillface/      .venv (the package; --system-site-packages with the distribution's Python so
#                       apt's picamera2 and systemd bindings are seen), models/ (checked against the
#                       manifest with `tillface models verify`), README.md
#   /usr/local/bin/tillface   the command, run as the tillface user when called by root
#   /etc/tillface/tillface.toml   the config: installed once, never overwritten once edited (a newer
#                       default goes next to it as tillface.toml.new)
#   /etc/tillface/credentials/gallery.key   32 random bytes, 0600, owned by tillface (LoadCredential=)
#   /etc/tillface/credentials/{mqtt.password,till-signing.key,store-signing.pub,store-gallery.key}
#                       from a till's credentials bundle (--credentials), root:root 0600, handed to the
#                       service by a drop-in, tillface.service.d/credentials.conf (LoadCredential=)
#   /var/lib/tillface/  the state folder (gallery), 0700, owned by tillface
#   user tillface       system user (systemd-sysusers), in groups video (camera) and dialout (display)
#   /etc/systemd/system/tillface.service   the unit, enabled (and started when systemd runs)
#   /etc/systemd/journald@tillface.conf    the retention of tillface's own journal (LogNamespace=):
#                       installed once, kept when edited; removed by --purge
#
# Idempotent: a second run changes nothing and says so. Options:
#   --root DIR     install into DIR as if it were / (also TILLFACE_ROOT=DIR): for tests and staging. No
#                  apt, no running systemd; the unit is enabled with `systemctl --root`. The venv's own
#                  paths point into DIR, so to build an SD-card image run the installer inside the
#                  image's chroot instead (with --no-start).
#   --no-start     do not start or restart the service (image building; systemd not running)
#   --no-enable    do not enable the service at boot
#   --no-apt       do not install apt packages (they are already in the image)
#   --python PATH  the interpreter for the venv (also TILLFACE_PYTHON); default: /usr/bin/python3 if it
#                  is 3.11 or newer, else /usr/bin/python3.11 (Ubuntu 22.04 on a Jetson)
#   --wheels DIR   install Python packages only from the wheels in DIR (offline: pip --no-index); they
#                  must be the lock's (`pip download --require-hashes -r requirements/unit-ARCH.txt`)
#   --credentials DIR   a till's credentials bundle, made on the store server by `tillface store-admin
#                  provision-till --till ID --out DIR`: its secrets go to /etc/tillface/credentials/
#                  (root:root 0600), its till.toml settings (store and till id, broker host, port and
#                  account) into the config, and its broker CA (if any) to /etc/tillface/mqtt-ca.pem
#   --uninstall, --purge   see above
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${TILLFACE_ROOT:-/}"
PYTHON="${TILLFACE_PYTHON:-}"
WHEELS=""
CREDS_IN=""
MODE=install
PURGE=0
DO_START=1
DO_ENABLE=1
DO_APT=1

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "install.sh: $*" >&2; exit 1; }

while (($#)); do
  case "$1" in
    --root) ROOT="${2:?--root needs a folder}"; shift ;;
    --root=*) ROOT="${1#--root=}" ;;
    --python) PYTHON="${2:?--python needs a path}"; shift ;;
    --wheels) WHEELS="${2:?--wheels needs a folder}"; shift ;;
    --credentials) CREDS_IN="${2:?--credentials needs a folder}"; shift ;;
    --credentials=*) CREDS_IN="${1#--credentials=}" ;;
    --no-start) DO_START=0 ;;
    --no-enable) DO_ENABLE=0 ;;
    --no-apt) DO_APT=0 ;;
    --uninstall) MODE=uninstall ;;
    --purge) MODE=uninstall; PURGE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
  shift
done

[[ $(id -u) -eq 0 ]] || die "run it as root: sudo $0"
mkdir -p "$ROOT"
ROOT="$(cd "$ROOT" && pwd -P)"
R="${ROOT%/}"  # prefix for every path below: "" when installing into /

SERVICE_USER=tillface
OPT=/opt/tillface
VENV=$OPT/.venv
MODELS=$OPT/models
ETC=/etc/tillface
CONFIG=$ETC/tillface.toml
CRED_DIR=$ETC/credentials
KEY=$CRED_DIR/gallery.key
STATE=/var/lib/tillface
UNIT=/etc/systemd/system/tillface.service
JOURNALD=/etc/systemd/journald@tillface.conf
WRAPPER=/usr/local/bin/tillface
SYSUSERS=/etc/sysusers.d/tillface.conf
# A till's credentials bundle (tillface.security.layout): the files the service gets as credentials.
BUNDLE_CREDENTIALS=(mqtt.password till-signing.key store-signing.pub store-gallery.key)
MQTT_CA=$ETC/mqtt-ca.pem
CRED_DROPIN=$UNIT.d/credentials.conf

systemd_running=0
[[ "$ROOT" == / && -d /run/systemd/system ]] && systemd_running=1

changes=0
restart_needed=0
say() { printf '  %-8s %s\n' "$1" "$2"; }
changed() { changes=$((changes + 1)); say changed "$1"; }
ok() { say ok "$1"; }
note() { say note "$1"; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# install_file SRC DEST MODE OWNER(uid:gid): copy when content, mode or owner differ; 0 if it did.
install_file() {
  local src=$1 dest=$2 mode=$3 owner=$4
  if [[ -f "$dest" && ! -L "$dest" ]] && cmp -s "$src" "$dest" &&
    [[ "$(stat -c '%a %u:%g' "$dest")" == "$mode $owner" ]]; then
    return 1
  fi
  mkdir -p "$(dirname "$dest")"
  install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$src" "$dest"
}

# ensure_dir DIR MODE OWNER: create it or fix its mode and owner; 0 if anything changed.
ensure_dir() {
  local dir=$1 mode=$2 owner=$3
  if [[ -d "$dir" && "$(stat -c '%a %u:%g' "$dir")" == "$mode $owner" ]]; then
    return 1
  fi
  mkdir -p "$dir"
  chmod "$mode" "$dir"
  chown "$owner" "$dir"
}

# remove_tree DIR: rm -rf, but never of "/" or of a path outside the install root.
remove_tree() {
  [[ "$1" == /?*/?* && "$1" == "$R"/* ]] || die "refusing to remove '$1'"
  rm -rf -- "$1"
}

pkg_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

service_ids() { awk -F: -v u="$SERVICE_USER" '$1 == u { print $3 ":" $4 }' "$R/etc/passwd" 2>/dev/null; }

# ---------------------------------------------------------------------------------------------------
uninstall() {
  echo "tillface: uninstalling from $ROOT$([[ $PURGE == 1 ]] && echo ' (purge)')"
  local wants="$R/etc/systemd/system/multi-user.target.wants/tillface.service"
  if ((systemd_running)); then
    if systemctl is-active --quiet tillface.service 2>/dev/null; then
      systemctl stop tillface.service
      changed "service stopped"
    fi
    if systemctl is-enabled --quiet tillface.service 2>/dev/null; then
      systemctl disable --quiet tillface.service
      changed "service disabled"
    fi
  elif [[ -L "$wants" ]]; then
    systemctl --root="$ROOT" disable --quiet tillface.service 2>/dev/null || rm -f "$wants"
    rm -f "$wants"
    changed "service disabled in $ROOT"
  fi
  local path
  for path in "$UNIT" "$UNIT.d/mqtt-password.conf" "$CRED_DROPIN" "$WRAPPER"; do
    if [[ -e "$R$path" ]]; then
      rm -f "$R$path"
      changed "removed $path"
    fi
  done
  ((systemd_running)) && systemctl daemon-reload
  if [[ -e "$R$OPT" ]]; then
    remove_tree "$R$OPT"
    changed "removed $OPT (venv, models)"
  fi
  if ((PURGE)); then
    for path in "$ETC" "$STATE"; do
      if [[ -e "$R$path" ]]; then
        remove_tree "$R$path"
        changed "removed $path"
      fi
    done
    for path in "$SYSUSERS" "$JOURNALD"; do
      if [[ -e "$R$path" ]]; then
        rm -f "$R$path"
        changed "removed $path"
      fi
    done
    local prefix=()
    [[ "$ROOT" != / ]] && prefix=(--prefix "$ROOT")
    if [[ -n "$(service_ids)" ]]; then
      userdel "${prefix[@]}" "$SERVICE_USER"
      changed "removed user $SERVICE_USER"
    fi
    if grep -q "^$SERVICE_USER:" "$R/etc/group" 2>/dev/null; then
      groupdel "${prefix[@]}" "$SERVICE_USER"
      changed "removed group $SERVICE_USER"
    fi
  else
    for path in "$CONFIG" "$KEY" "$STATE"; do
      [[ -e "$R$path" ]] && note "kept $path"
    done
    [[ -n "$(service_ids)" ]] && note "kept user $SERVICE_USER (--purge removes it with the files above)"
  fi
  if ((changes == 0)); then
    echo "tillface: nothing to remove"
  else
    echo "tillface: uninstalled ($changes changes)"
  fi
}

if [[ $MODE == uninstall ]]; then
  uninstall
  exit 0
fi

# ---------------------------------------------------------------------------------------------------
# The credentials bundle is checked before anything is installed.
if [[ -n "$CREDS_IN" ]]; then
  fix="make one on the store server: tillface store-admin provision-till --till ID --out DIR"
  [[ -d "$CREDS_IN" ]] || die "--credentials $CREDS_IN is not a folder ($fix)"
  CREDS_IN="$(cd "$CREDS_IN" && pwd -P)"
  for f in till.toml mqtt.password; do
    [[ -f "$CREDS_IN/$f" ]] || die "--credentials $CREDS_IN has no $f: not a till's credentials bundle ($fix)"
  done
fi

echo "tillface: installing into $ROOT from $REPO"
[[ "$ROOT" != / ]] && DO_APT=0
((systemd_running)) || note "systemd is not running here: the service is enabled, not started"

# The Python: the distribution's own when new enough (apt's python3-systemd and python3-picamera2
# then work in the venv), else python3.11 (Ubuntu 22.04 ships 3.10).
# TILLFACE_DISTRO_PYTHON names the distribution's python3 when it is not /usr/bin/python3 (the tests
# use it to play a JetPack 6 / Ubuntu 22.04 machine, whose python3 is 3.10).
DISTRO_PYTHON="${TILLFACE_DISTRO_PYTHON:-/usr/bin/python3}"
system_python=0
if [[ -z "$PYTHON" ]]; then
  if "$DISTRO_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PYTHON=$DISTRO_PYTHON
  else
    PYTHON=/usr/bin/python3.11
    note "$DISTRO_PYTHON is older than 3.11 (Ubuntu 22.04 / JetPack 6): the venv uses $PYTHON"
  fi
fi
[[ "$(readlink -f "$PYTHON")" == "$(readlink -f "$DISTRO_PYTHON" 2>/dev/null)" ]] && system_python=1

# A Raspberry Pi: picamera2 comes from Raspberry Pi OS's apt package, never from pip.
picamera2=0
if pkg_installed python3-picamera2 ||
  { [[ "$ROOT" == / ]] && apt-cache policy python3-picamera2 2>/dev/null | grep -q 'Candidate: [0-9]'; } ||
  grep -qs 'Raspberry Pi' /proc/device-tree/model; then
  picamera2=1
fi

apt_wanted=(python3-venv ca-certificates util-linux systemd)
if ((system_python)); then
  apt_wanted+=(python3-systemd)
else
  # systemd-python is built by pip (the journald extra) for this interpreter.
  name="$(basename "$PYTHON")"
  apt_wanted+=("$name" "$name-venv" "$name-dev" libsystemd-dev pkg-config gcc)
fi
((picamera2)) && apt_wanted+=(python3-picamera2)
missing=()
for pkg in "${apt_wanted[@]}"; do
  pkg_installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
  ok "apt packages: ${apt_wanted[*]}"
elif ((DO_APT)); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  changed "apt packages installed: ${missing[*]}"
  restart_needed=1
else
  note "apt packages not installed here (--root or --no-apt): ${missing[*]} (of ${apt_wanted[*]})"
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
  die "$PYTHON is missing or older than 3.11: install python3.11, python3.11-venv and python3.11-dev (apt; on Ubuntu 22.04 they are in universe) or give --python PATH"
py_version="$("$PYTHON" -c 'import platform; print(platform.python_version())')"

# --- the service user ---
command -v systemd-sysusers >/dev/null || die "systemd-sysusers not found (is this a systemd system?)"
printf '%s\n' \
  '# tillface: the service user (scripts/install.sh); video for the camera, dialout for the display' \
  "u $SERVICE_USER - \"tillface face recognition\" $STATE /usr/sbin/nologin" \
  "m $SERVICE_USER video" \
  "m $SERVICE_USER dialout" >"$tmp/sysusers.conf"
install_file "$tmp/sysusers.conf" "$R$SYSUSERS" 644 0:0 && changed "$SYSUSERS"
in_group() { awk -F: -v g="$1" -v u="$SERVICE_USER" '$1 == g { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) f = 1 } END { exit !f }' "$R/etc/group" 2>/dev/null; }
if [[ -n "$(service_ids)" ]] && in_group video && in_group dialout; then
  ok "user $SERVICE_USER ($(service_ids)), groups video and dialout"
else
  sysusers_root=()
  [[ "$ROOT" != / ]] && sysusers_root=(--root="$ROOT")
  systemd-sysusers "${sysusers_root[@]}" tillface.conf >"$tmp/sysusers.txt" 2>&1 ||
    die "systemd-sysusers failed: $(cat "$tmp/sysusers.txt")"
  [[ -n "$(service_ids)" ]] || die "systemd-sysusers did not create the user $SERVICE_USER"
  changed "user $SERVICE_USER ($(service_ids)), groups video and dialout"
fi
IDS="$(service_ids)"

# --- folders ---
ensure_dir "$R$OPT" 755 0:0 && changed "$OPT"
ensure_dir "$R$ETC" 755 0:0 && changed "$ETC"
ensure_dir "$R$CRED_DIR" 700 "$IDS" && changed "$CRED_DIR (0700, $SERVICE_USER)"
ensure_dir "$R$STATE" 700 "$IDS" && changed "$STATE (0700, $SERVICE_USER)"

# --- a till's credentials bundle: secrets root:root 0600 (systemd reads them; the service gets copies) ---
if [[ -n "$CREDS_IN" ]]; then
  for f in "${BUNDLE_CREDENTIALS[@]}"; do
    if [[ -f "$CREDS_IN/$f" ]] && install_file "$CREDS_IN/$f" "$R$CRED_DIR/$f" 600 0:0; then
      changed "$CRED_DIR/$f (from the bundle, 0600 root)"
      restart_needed=1
    fi
  done
  if [[ -f "$CREDS_IN/mqtt-ca.pem" ]] && install_file "$CREDS_IN/mqtt-ca.pem" "$R$MQTT_CA" 644 0:0; then
    changed "$MQTT_CA (the broker's CA, from the bundle)"
    restart_needed=1
  fi
fi

# --- models: the manifest and the files it lists ---
ensure_dir "$R$MODELS" 755 0:0 && changed "$MODELS"
model_changes=0
mapfile -t model_files < <("$PYTHON" -c '
import json, sys
print("manifest.json"); print("README.md")
for m in json.load(open(sys.argv[1]))["models"]:
    print(m["file"])' "$REPO/models/manifest.json")
for f in "${model_files[@]}"; do
  if install_file "$REPO/models/$f" "$R$MODELS/$f" 644 0:0; then
    model_changes=$((model_changes + 1))
  fi
done
if ((model_changes)); then
  changed "$MODELS: $model_changes of ${#model_files[@]} files"
  restart_needed=1
fi

# --- the venv and the package ---
want_ssp=false
((system_python)) && want_ssp=true
if [[ -x "$R$VENV/bin/python" ]] &&
  grep -qx "include-system-site-packages = $want_ssp" "$R$VENV/pyvenv.cfg" 2>/dev/null &&
  [[ "$("$R$VENV/bin/python" -c 'import platform; print(platform.python_version())' 2>/dev/null)" == "$py_version" ]]; then
  ok "venv $VENV (python $py_version, system site packages: $want_ssp)"
else
  remove_tree "$R$VENV"
  venv_args=()
  [[ $want_ssp == true ]] && venv_args+=(--system-site-packages)
  "$PYTHON" -m venv "${venv_args[@]}" "$R$VENV"
  changed "venv $VENV (python $py_version, system site packages: $want_ssp)"
fi
# The lock (requirements/, scripts/lock.sh): exact versions with their hashes, the ones the tests ran.
locks=(requirements/tooling.txt)
if ((picamera2)); then
  # apt's picamera2 (and its simplejpeg) are built against Debian's numpy 1.x.
  locks+=(requirements/unit-aarch64-picamera2.txt)
else
  locks+=("requirements/unit-$(uname -m).txt")
fi
# systemd-python is built by pip for an interpreter that has no apt python3-systemd.
((system_python)) || locks+=(requirements/journald.txt)
for lock in "${locks[@]}"; do
  [[ -f "$REPO/$lock" ]] || die "no locked package set for this machine ($(uname -m)): $lock is missing"
done
pip_args=(--quiet --disable-pip-version-check)
[[ -n "$WHEELS" ]] && pip_args+=(--no-index --find-links "$WHEELS")
# The stamp: everything that decides what pip installs.
stamp="$( {
  echo "$py_version ${locks[*]} picamera2=$picamera2 ${WHEELS:+wheels}"
  cd "$REPO"
  cat "${locks[@]}"
  find pyproject.toml README.md daemon -type f \( -name '*.py' -o -name '*.toml' -o -name '*.md' -o -name '*.json' \) \
    -not -path '*/__pycache__/*' -not -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-32)"
if [[ -f "$R$VENV/.tillface-stamp" && "$(cat "$R$VENV/.tillface-stamp")" == "$stamp" ]] &&
  "$R$VENV/bin/tillface" --version >/dev/null 2>&1; then
  ok "package $("$R$VENV/bin/tillface" --version) in $VENV"
else
  # pip builds in the source folder: build from a copy, so the checkout stays clean.
  mkdir -p "$tmp/src"
  cp "$REPO/pyproject.toml" "$REPO/README.md" "$tmp/src/"
  (cd "$REPO" && tar --exclude=__pycache__ --exclude='*.egg-info' -cf - daemon) | tar -C "$tmp/src" -xf -
  for lock in "${locks[@]}"; do
    "$R$VENV/bin/python" -m pip install "${pip_args[@]}" --require-hashes --no-deps -r "$REPO/$lock" \
      >"$tmp/pip.txt" 2>&1 ||
      die "pip could not install $lock into $VENV: $(grep -v 'is ignored' "$tmp/pip.txt" | tail -20)"
  done
  "$R$VENV/bin/python" -m pip install "${pip_args[@]}" --no-deps --no-build-isolation "$tmp/src" \
    >"$tmp/pip.txt" 2>&1 ||
    die "pip could not install the package into $VENV: $(grep -v 'is ignored' "$tmp/pip.txt" | tail -20)"
  echo "$stamp" >"$R$VENV/.tillface-stamp"
  changed "package $("$R$VENV/bin/tillface" --version) in $VENV"
  restart_needed=1
fi
"$R$VENV/bin/tillface" models verify --dir "$R$MODELS" >"$tmp/verify.txt" 2>&1 ||
  die "models in $MODELS do not match the manifest: $(cat "$tmp/verify.txt")"
ok "models verified against the manifest ($(grep -c '^ok' "$tmp/verify.txt") files)"
install_file "$REPO/README.md" "$R$OPT/README.md" 644 0:0 && changed "$OPT/README.md"

# --- the command on PATH ---
cat >"$tmp/wrapper" <<EOF
#!/bin/sh
# tillface, installed by scripts/install.sh. Called by root, it runs as the service user, so that the
# gallery key and the state folder (theirs, 0600/0700) can be used and nothing is left owned by root.
export TILLFACE_MODELS="\${TILLFACE_MODELS:-$MODELS}"
if [ "\$(id -u)" = 0 ]; then
  # The broker password is root's (the service gets it as a credential): root hands it to this one
  # command (tillface doctor, monitor) in the environment, as TILLFACE_MQTT_PASSWORD.
  if [ -z "\${TILLFACE_MQTT_PASSWORD:-}" ] && [ -f $CRED_DIR/mqtt.password ]; then
    TILLFACE_MQTT_PASSWORD="\$(cat $CRED_DIR/mqtt.password)" && export TILLFACE_MQTT_PASSWORD
  fi
  exec runuser -u $SERVICE_USER -- $VENV/bin/tillface "\$@"
fi
exec $VENV/bin/tillface "\$@"
EOF
install_file "$tmp/wrapper" "$R$WRAPPER" 755 0:0 && changed "$WRAPPER"

# --- the config: installed once; an edited one is never overwritten ---
sed 's|^# key_file = "/var/lib/tillface/gallery.key"$|key_file = "/etc/tillface/credentials/gallery.key"|' \
  "$REPO/config/tillface.toml" >"$tmp/tillface.toml"
grep -q '^key_file = "/etc/tillface/credentials/gallery.key"$' "$tmp/tillface.toml" ||
  die "config/tillface.toml has no '# key_file = \"/var/lib/tillface/gallery.key\"' line to point at the key"
default_copy="$R$OPT/share/tillface.toml.default"  # the default this installer put in place last
if [[ ! -e "$R$CONFIG" ]]; then
  install_file "$tmp/tillface.toml" "$R$CONFIG" 644 0:0
  changed "$CONFIG (new: set store_id and till_id)"
  restart_needed=1
elif cmp -s "$tmp/tillface.toml" "$R$CONFIG"; then
  ok "$CONFIG (the default)"
elif [[ -f "$default_copy" ]] && cmp -s "$default_copy" "$R$CONFIG"; then
  install_file "$tmp/tillface.toml" "$R$CONFIG" 644 0:0
  changed "$CONFIG (an unedited older default: updated)"
  restart_needed=1
else
  # Edited here: kept. If the default changed since (or was never installed by us), the new one goes
  # next to it for comparison, like dpkg's .dpkg-dist.
  ok "$CONFIG (edited: kept as it is)"
  if ! cmp -s "$tmp/tillface.toml" "$default_copy" && ! cmp -s "$tmp/tillface.toml" "$R$CONFIG.new"; then
    install_file "$tmp/tillface.toml" "$R$CONFIG.new" 644 0:0
    changed "$CONFIG.new (a new default: compare it with your config)"
  fi
fi
install_file "$tmp/tillface.toml" "$default_copy" 644 0:0 || true
# The bundle's settings (till.toml: [unit] store_id, till_id; [mqtt] host, port, root, username, tls,
# ca_file) replace those keys in the config, commented-out defaults included; nothing else changes.
if [[ -n "$CREDS_IN" ]]; then
  "$PYTHON" - "$R$CONFIG" "$CREDS_IN/till.toml" "$tmp/with-bundle.toml" >"$tmp/merge.txt" 2>&1 <<'PY' ||
import re
import sys
import tomllib

config, bundle, out = sys.argv[1:4]
allowed = {
    "unit": ("store_id", "till_id"),
    "mqtt": ("host", "port", "root", "username", "tls", "ca_file"),
}
required = {"unit": ("store_id", "till_id"), "mqtt": ("host", "port", "username")}
try:
    with open(bundle, "rb") as f:
        settings = tomllib.load(f)
except (OSError, tomllib.TOMLDecodeError) as exc:
    sys.exit(f"{bundle}: {exc}")
for section, keys in required.items():
    for key in keys:
        if key not in settings.get(section, {}):
            sys.exit(f"{bundle}: [{section}] {key} is missing")
for section, values in settings.items():
    for key in values if isinstance(values, dict) else [None]:
        if section not in allowed or key not in allowed[section]:
            sys.exit(f"{bundle}: unexpected key [{section}] {key}")


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"[^\"\\\x00-\x1f]*", value):
        return f'"{value}"'
    sys.exit(f"{bundle}: {value!r} is not a plain string, number or boolean")


lines = open(config, encoding="utf-8").read().splitlines()
for section, values in settings.items():
    if f"[{section}]" not in lines:
        lines += ["", f"[{section}]"]
    start = lines.index(f"[{section}]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    for key, value in values.items():
        line = f"{key} = {toml_value(value)}"
        pattern = re.compile(rf"^(# ?)?{re.escape(key)} *=")
        found = [i for i in range(start + 1, end) if pattern.match(lines[i])]
        live = [i for i in found if not lines[i].startswith("#")]
        if live or found:
            lines[(live or found)[0]] = line
        else:
            while end > start + 1 and not lines[end - 1].strip():
                end -= 1
            lines.insert(end, line)
            end += 1
text = "\n".join(lines) + "\n"
merged = tomllib.loads(text)
for section, values in settings.items():
    for key, value in values.items():
        assert merged[section][key] == value, (section, key)
open(out, "w", encoding="utf-8").write(text)
PY
    die "--credentials: $(cat "$tmp/merge.txt") (make the bundle again: tillface store-admin provision-till)"
  if install_file "$tmp/with-bundle.toml" "$R$CONFIG" 644 0:0; then
    changed "$CONFIG: store and till id, broker host, port and account from the bundle"
    restart_needed=1
  else
    ok "$CONFIG has the bundle's settings"
  fi
fi
"$R$VENV/bin/tillface" check-config "$R$CONFIG" >"$tmp/check.txt" 2>&1 ||
  die "$CONFIG is not valid: $(cat "$tmp/check.txt")"
ok "$CONFIG is valid"

# --- the gallery key: created once, 0600, owned by the service user ---
if [[ -e "$R$KEY" ]]; then
  if [[ "$(stat -c '%a %u:%g' "$R$KEY")" == "600 $IDS" ]]; then
    ok "$KEY (0600, $SERVICE_USER)"
  else
    chmod 600 "$R$KEY"
    chown "$IDS" "$R$KEY"
    changed "$KEY: mode 0600, owner $SERVICE_USER"
  fi
else
  # `tillface init` writes the key (random, 0600, never over an existing one) where this config says.
  printf '[unit]\nstore_id = "install"\ntill_id = "install"\nstate_dir = "%s"\n[gallery]\nkey_file = "%s"\n' \
    "$R$STATE" "$R$KEY" >"$tmp/init.toml"
  "$R$VENV/bin/tillface" init --config "$tmp/init.toml" >/dev/null
  chown "$IDS" "$R$KEY"
  changed "$KEY (new random key, 0600, $SERVICE_USER)"
  restart_needed=1
fi

# --- the systemd unit ---
unit_changed=0
if install_file "$REPO/systemd/tillface.service" "$R$UNIT" 644 0:0; then
  changed "$UNIT"
  unit_changed=1
  restart_needed=1
fi
# The journal's retention bounds how long member ids in decision lines are kept: the installer's edits win.
if [[ -f "$R$JOURNALD" ]]; then
  ok "$JOURNALD (kept as it is)"
else
  install_file "$REPO/systemd/journald@tillface.conf" "$R$JOURNALD" 644 0:0
  changed "$JOURNALD (tillface's journal kept $(sed -n 's/^MaxRetentionSec=//p' "$R$JOURNALD"))"
fi
# The bundle's files in the credentials folder (the broker password may also be put there by hand)
# reach the service as credentials of the same names, through a drop-in: systemd refuses to start a
# unit whose credential file is missing, so the shipped unit cannot name them. root:root 0600: only
# systemd reads them, and the service gets its own copies under $CREDENTIALS_DIRECTORY.
if [[ -f "$R$UNIT.d/mqtt-password.conf" ]]; then  # the drop-in's name before credentials.conf
  rm -f "$R$UNIT.d/mqtt-password.conf"
  changed "$UNIT.d/mqtt-password.conf removed (now $CRED_DROPIN)"
  unit_changed=1
fi
cred_lines=()
cred_names=()
for f in "${BUNDLE_CREDENTIALS[@]}"; do
  [[ -f "$R$CRED_DIR/$f" ]] || continue
  if [[ "$(stat -c '%a %u:%g' "$R$CRED_DIR/$f")" != "600 0:0" ]]; then
    chmod 600 "$R$CRED_DIR/$f"
    chown 0:0 "$R$CRED_DIR/$f"
    changed "$CRED_DIR/$f: mode 0600, owner root"
  fi
  cred_lines+=("LoadCredential=$f:$CRED_DIR/$f")
  cred_names+=("$f")
done
if ((${#cred_lines[@]})); then
  printf '%s\n' "# Written by scripts/install.sh: the credentials in $CRED_DIR." "[Service]" "${cred_lines[@]}" \
    >"$tmp/credentials.conf"
  if install_file "$tmp/credentials.conf" "$R$CRED_DROPIN" 644 0:0; then
    changed "$CRED_DROPIN (credentials: ${cred_names[*]})"
    unit_changed=1
    restart_needed=1
  fi
elif [[ -f "$R$CRED_DROPIN" ]]; then
  rm -f "$R$CRED_DROPIN"
  changed "$CRED_DROPIN removed (no credentials in $CRED_DIR)"
  unit_changed=1
  restart_needed=1
fi
if ((systemd_running)); then
  ((unit_changed)) && systemctl daemon-reload
  if ((DO_ENABLE)); then
    if systemctl is-enabled --quiet tillface.service; then
      ok "tillface.service enabled"
    else
      systemctl enable --quiet tillface.service
      changed "tillface.service enabled"
    fi
  fi
  if ((DO_START)); then
    if systemctl is-active --quiet tillface.service; then
      if ((restart_needed)); then
        systemctl restart tillface.service
        changed "tillface.service restarted"
      else
        ok "tillface.service running"
      fi
    else
      systemctl start tillface.service ||
        die "tillface.service did not start: see systemctl status tillface; journalctl --namespace=tillface -u tillface"
      changed "tillface.service started"
    fi
  fi
elif ((DO_ENABLE)); then
  wants="$R/etc/systemd/system/multi-user.target.wants/tillface.service"
  if [[ -L "$wants" ]]; then
    ok "tillface.service enabled in $ROOT"
  else
    # Offline enable (a chroot, an image, a staging root): systemctl --root needs no running systemd.
    if ! systemctl --root="$ROOT" enable --quiet tillface.service >/dev/null 2>&1 || [[ ! -L "$wants" ]]; then
      mkdir -p "$(dirname "$wants")"
      ln -sfn "$UNIT" "$wants"
    fi
    changed "tillface.service enabled in $ROOT (starts at boot)"
  fi
fi

if ((changes == 0)); then
  echo "tillface: already installed, nothing changed"
else
  echo "tillface: installed ($changes changes)"
fi
cat <<EOF
Next: set [unit] store_id and till_id in $CONFIG, then
  sudo systemctl stop tillface            # the doctor and the monitor need the camera
  sudo tillface doctor --config $CONFIG
  sudo tillface monitor --config $CONFIG
  sudo systemctl start tillface; journalctl --namespace=tillface -u tillface -f
EOF
