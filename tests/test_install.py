"""scripts/install.sh, run for real into a temporary root (`--root`): files, modes, owners, the service
user, the enabled unit; a second run changes nothing; an edited config is kept; uninstall and purge.

The root is a plain folder, not a chroot: apt is skipped there and systemd is not running, so the unit
is enabled with `systemctl --root`. scripts/test_install_debootstrap.sh runs the installer in a
debootstrapped Debian instead (minutes, network: not part of this suite).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the installer reads from a checkout.
CHECKOUT = ("pyproject.toml", "README.md", "daemon", "models", "config", "systemd", "scripts", "requirements")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the installer creates a user and chowns: needs root"
)


def snapshot_checkout(dest: Path) -> Path:
    """A copy of the checkout to install from: the runs compare like with like even while the working
    tree is being edited."""
    dest.mkdir()
    for name in CHECKOUT:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def env_without_tillface() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TILLFACE_")}


def install(
    root: Path, *args: str, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**env_without_tillface(), **(env_extra or {})}
    script = root.parent / "checkout" / "scripts" / "install.sh"
    out = subprocess.run(
        ["bash", str(script), "--root", str(root), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def tree(root: Path) -> dict[str, tuple]:
    """Every path under root with its type, mode, owner, mtime and content hash (or link target)."""
    entries: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                what: str = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = "dir"
            entries[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, what)
    return entries


def ids(root: Path, user: str = "tillface") -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"no user {user} in {root}/etc/passwd")


def group_members(root: Path, group: str) -> list[str]:
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return [m for m in fields[3].split(",") if m]
    return []


def mode_owner(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@pytest.fixture(scope="module")
def installed():
    # Not under pytest's 0700 temp folder: the service user must be able to reach its files.
    work = Path(tempfile.mkdtemp(prefix="tillface-install-", dir="/tmp"))
    work.chmod(0o755)
    try:
        snapshot_checkout(work / "checkout")
        root = work / "root"
        root.mkdir(mode=0o755)
        started = time.monotonic()
        first = install(root)
        first_s = time.monotonic() - started
        print(f"first install {first_s:.1f} s")
        before = tree(root)
        started = time.monotonic()
        second = install(root)
        print(f"second install {time.monotonic() - started:.1f} s")
        yield root, first, second, before
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_first_run_installs_every_part(installed):
    root, first, _second, _before = installed
    assert "tillface: installed (" in first.stdout
    uid, gid = ids(root)
    assert 0 < uid < 1000, "a system user"
    assert "tillface" in group_members(root, "video") and "tillface" in group_members(root, "dialout")
    passwd = next(
        line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("tillface:")
    )
    assert passwd.endswith(":/var/lib/tillface:/usr/sbin/nologin")

    key = root / "etc/tillface/credentials/gallery.key"
    assert mode_owner(key) == (0o600, uid, gid)
    assert len(key.read_bytes()) == 32
    assert mode_owner(key.parent) == (0o700, uid, gid)
    assert mode_owner(root / "var/lib/tillface") == (0o700, uid, gid)

    config = root / "etc/tillface/tillface.toml"
    assert mode_owner(config) == (0o644, 0, 0)
    parsed = tomllib.loads(config.read_text())
    assert parsed["gallery"]["key_file"] == "/etc/tillface/credentials/gallery.key"
    assert parsed["unit"]["state_dir"] == "/var/lib/tillface"

    unit = root / "etc/systemd/system/tillface.service"
    assert unit.read_bytes() == (root.parent / "checkout/systemd/tillface.service").read_bytes()
    journald = root / "etc/systemd/journald@tillface.conf"
    assert journald.read_bytes() == (root.parent / "checkout/systemd/journald@tillface.conf").read_bytes()
    assert mode_owner(journald) == (0o644, 0, 0)
    assert "tillface's journal kept 7day" in first.stdout
    wants = root / "etc/systemd/system/multi-user.target.wants/tillface.service"
    assert os.readlink(wants) == "/etc/systemd/system/tillface.service"
    assert "LoadCredential=gallery.key:/etc/tillface/credentials/gallery.key" in unit.read_text()

    wrapper = root / "usr/local/bin/tillface"
    assert mode_owner(wrapper) == (0o755, 0, 0)
    assert "runuser -u tillface -- /opt/tillface/.venv/bin/tillface" in wrapper.read_text()
    assert 'TILLFACE_MODELS="${TILLFACE_MODELS:-/opt/tillface/models}"' in wrapper.read_text()
    assert (root / "opt/tillface/README.md").is_file()


def test_models_and_package_are_installed_not_linked(installed):
    root, _first, _second, _before = installed
    from tillface.models import load_manifest

    manifest = load_manifest(root / "opt/tillface/models")
    for entry in manifest.models:
        manifest.verify(entry.id)
    venv = root / "opt/tillface/.venv"
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import tillface; print(tillface.__file__)"],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert where.stdout.strip().startswith(str(venv / "lib")), where.stdout + where.stderr
    # pip built from a copy: the checkout has no build/ or egg-info left by the installer.
    checkout = root.parent / "checkout"
    assert not (checkout / "build").exists() and not list((checkout / "daemon").glob("*.egg-info"))


def test_the_service_user_can_use_its_key_and_config(installed):
    root, _first, _second, _before = installed
    uid, gid = ids(root)
    venv_python = root / "opt/tillface/.venv/bin/python"
    key = root / "etc/tillface/credentials/gallery.key"
    code = (
        "import sys; from tillface.recognition.gallery import read_key_file; "
        "print(len(read_key_file(sys.argv[1])))"
    )
    as_service = subprocess.run(
        [str(venv_python), "-c", code, str(key)], capture_output=True, text=True, user=uid, group=gid, cwd="/"
    )
    assert as_service.returncode == 0 and as_service.stdout.strip() == "32", as_service.stderr
    # Anyone else (root included) is refused by the key's owner check.
    as_root = subprocess.run(
        [str(venv_python), "-c", code, str(key)], capture_output=True, text=True, cwd="/"
    )
    assert as_root.returncode != 0 and "not by this user" in as_root.stderr
    check = subprocess.run(
        [
            str(root / "opt/tillface/.venv/bin/tillface"),
            "check-config",
            str(root / "etc/tillface/tillface.toml"),
        ],
        capture_output=True,
        text=True,
        user=uid,
        group=gid,
        cwd="/",
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_second_run_changes_nothing_and_says_so(installed):
    root, _first, second, before = installed
    assert "tillface: already installed, nothing changed" in second.stdout, second.stdout
    assert "changed" not in second.stdout.replace("nothing changed", "")
    after = tree(root)
    diff = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not diff, sorted(diff)[:20]


def test_an_edited_config_is_kept_and_a_new_default_goes_beside_it(installed):
    root, _first, _second, _before = installed
    config = root / "etc/tillface/tillface.toml"
    default_copy = root / "opt/tillface/share/tillface.toml.default"
    shipped = config.read_text()
    edited = shipped.replace('store_id = "store-001"', 'store_id = "store-042"')
    assert edited != shipped
    config.write_text(edited)
    out = install(root)
    assert "edited: kept as it is" in out.stdout and "nothing changed" in out.stdout
    assert config.read_text() == edited and not (root / "etc/tillface/tillface.toml.new").exists()

    # A newer default arrives (simulated: the one installed last time was different): still kept,
    # and the new default is put beside it.
    default_copy.write_text(shipped + "# an older default\n")
    out = install(root)
    assert config.read_text() == edited
    assert (root / "etc/tillface/tillface.toml.new").read_text() == shipped
    assert "tillface.toml.new (a new default" in out.stdout

    # An unedited older default is simply updated.
    (root / "etc/tillface/tillface.toml.new").unlink()
    config.write_text(shipped + "# an older default\n")
    default_copy.write_text(shipped + "# an older default\n")
    out = install(root)
    assert "unedited older default: updated" in out.stdout
    assert config.read_text() == shipped
    assert "nothing changed" in install(root).stdout


def test_a_broker_password_reaches_the_service_as_a_credential(installed):
    root, _first, _second, _before = installed
    password = root / "etc/tillface/credentials/mqtt.password"
    dropin = root / "etc/systemd/system/tillface.service.d/credentials.conf"
    assert not dropin.exists()
    password.write_text("till-secret\n")
    out = install(root)
    assert "credentials.conf (credentials: mqtt.password)" in out.stdout
    assert "LoadCredential=mqtt.password:/etc/tillface/credentials/mqtt.password" in dropin.read_text()
    assert "till-secret" not in out.stdout + out.stderr
    assert mode_owner(password) == (0o600, 0, 0), "systemd reads it as root; the service gets a copy"
    assert "nothing changed" in install(root).stdout
    password.unlink()
    out = install(root)
    assert not dropin.exists() and "credentials.conf removed" in out.stdout


def test_a_tills_credentials_bundle_is_installed(installed):
    root, _first, _second, _before = installed
    from tillface.security import layout
    from tillface.security.provisioning import Provisioner

    work = root.parent
    ca = work / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot checked here\n-----END CERTIFICATE-----\n")
    bundle = work / "bundle-t7"
    Provisioner(work / "store-keys", "s9").provision_till(
        "t7", bundle, broker_host="store.local", broker_port=8883, tls=True, ca_file=ca
    )
    bundle.chmod(0o755)  # the installer runs as root; a copied bundle may have any mode
    config = root / "etc/tillface/tillface.toml"
    before = config.read_text()
    out = install(root, "--credentials", str(bundle))
    creds = root / "etc/tillface/credentials"
    names = (
        layout.MQTT_PASSWORD,
        layout.TILL_SIGNING_KEY,
        layout.STORE_SIGNING_PUB,
        layout.STORE_GALLERY_KEY,
    )
    for name in names:
        assert mode_owner(creds / name) == (0o600, 0, 0), name
        assert (creds / name).read_bytes() == (bundle / name).read_bytes(), name
    assert (bundle / layout.MQTT_PASSWORD).read_text() not in out.stdout + out.stderr
    assert mode_owner(root / "etc/tillface/mqtt-ca.pem") == (0o644, 0, 0)
    dropin = (root / "etc/systemd/system/tillface.service.d/credentials.conf").read_text()
    for name in names:
        assert f"LoadCredential={name}:/etc/tillface/credentials/{name}" in dropin, name
    # The settings went into the config; every other line is as it was.
    parsed = tomllib.loads(config.read_text())
    assert parsed["unit"]["store_id"] == "s9" and parsed["unit"]["till_id"] == "t7"
    assert {k: parsed["mqtt"][k] for k in ("host", "port", "username", "tls", "ca_file")} == {
        "host": "store.local",
        "port": 8883,
        "username": layout.broker_account("s9", "t7"),
        "tls": True,
        "ca_file": "/etc/tillface/mqtt-ca.pem",
    }
    changed = [
        (a, b) for a, b in zip(before.splitlines(), config.read_text().splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 7 and all(
        b.split(" = ")[0] in ("store_id", "till_id", "host", "port", "username", "tls", "ca_file")
        for _a, b in changed
    ), changed
    assert parsed["gallery"]["key_file"] == "/etc/tillface/credentials/gallery.key"
    again = install(root, "--credentials", str(bundle))
    assert "nothing changed" in again.stdout, again.stdout

    # Run by root, the command (doctor, monitor) gets the root-only broker password in its environment.
    stub = work / "stub-tillface"
    stub.write_text('#!/bin/sh\nprintf "%s" "$TILLFACE_MQTT_PASSWORD"\n')
    stub.chmod(0o755)
    wrapper = (root / "usr/local/bin/tillface").read_text()
    assert "runuser -u tillface -- /opt/tillface/.venv/bin/tillface" in wrapper
    probe = work / "wrapper-probe"
    probe.write_text(
        wrapper.replace("/etc/tillface/credentials", str(creds)).replace(
            "runuser -u tillface -- /opt/tillface/.venv/bin/tillface", str(stub)
        )
    )
    handed = subprocess.run(
        ["sh", str(probe), "doctor"], capture_output=True, text=True, env=env_without_tillface()
    )
    assert handed.stdout == (bundle / layout.MQTT_PASSWORD).read_text(), handed

    # Not a bundle: refused before anything is installed, saying how to make one.
    env = env_without_tillface()
    empty = work / "not-a-bundle"
    empty.mkdir()
    bad = subprocess.run(
        ["bash", str(work / "checkout/scripts/install.sh"), "--root", str(root), "--credentials", str(empty)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode != 0 and "has no till.toml" in bad.stderr and "provision-till" in bad.stderr
    # Back to no credentials for the tests after this one.
    for name in names:
        (creds / name).unlink()
    config.write_text(before)
    install(root)


def test_a_jetson_whose_python3_is_3_10_gets_a_python_3_11_venv(tmp_path_factory):
    """JetPack 6 is Ubuntu 22.04, whose python3 is 3.10: the installer takes python3.11 (and its venv and
    dev packages from apt), builds systemd-python from the lock for it, and says so. The distribution's
    python3 is played by a stub that answers the installer's version probe as a 3.10 does; the 3.11 is
    this machine's real /usr/bin/python3.11."""
    work = Path(tempfile.mkdtemp(prefix="tillface-install-jetson-", dir="/tmp"))
    work.chmod(0o755)
    try:
        snapshot_checkout(work / "checkout")
        distro = work / "ubuntu-22.04-python3"
        distro.write_text("#!/bin/sh\n# sys.version_info < (3, 11) is true on 3.10: exit 1\nexit 1\n")
        distro.chmod(0o755)
        root = work / "root"
        root.mkdir(mode=0o755)
        out = install(root, env_extra={"TILLFACE_DISTRO_PYTHON": str(distro)})
        assert (
            f"{distro} is older than 3.11" in out.stdout and "the venv uses /usr/bin/python3.11" in out.stdout
        )
        wanted = next(line for line in out.stdout.splitlines() if "apt packages" in line)
        for package in ("python3.11", "python3.11-venv", "python3.11-dev", "libsystemd-dev"):
            assert package in wanted.replace("(", " ").replace(")", " ").split(), wanted
        assert "python3-systemd" not in wanted, "apt's bindings are for the distribution's 3.10"
        venv_python = root / "opt/tillface/.venv/bin/python"
        probe = subprocess.run(
            [str(venv_python), "-c", "import sys, systemd.journal; print(sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        assert probe.returncode == 0 and probe.stdout.strip() == "(3, 11)", probe.stderr
        assert "include-system-site-packages = false" in (root / "opt/tillface/.venv/pyvenv.cfg").read_text()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_uninstall_keeps_the_gallery_and_purge_removes_everything(installed):
    root, _first, _second, _before = installed
    uid, _gid = ids(root)
    key = root / "etc/tillface/credentials/gallery.key"
    key_bytes = key.read_bytes()
    gallery = root / "var/lib/tillface/gallery.tfg"
    gallery.write_bytes(b"pretend gallery")
    os.chown(gallery, uid, uid)

    out = install(root, "--uninstall")
    for gone in (
        "opt/tillface",
        "usr/local/bin/tillface",
        "etc/systemd/system/tillface.service",
        "etc/systemd/system/multi-user.target.wants/tillface.service",
    ):
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone
    assert key.read_bytes() == key_bytes and gallery.read_bytes() == b"pretend gallery"
    assert (root / "etc/tillface/tillface.toml").is_file()
    assert ids(root)[0] == uid
    assert "kept /etc/tillface/credentials/gallery.key" in out.stdout
    assert "tillface: nothing to remove" in install(root, "--uninstall").stdout

    out = install(root, "--purge")
    assert not (root / "etc/tillface").exists() and not (root / "var/lib/tillface").exists()
    assert not (root / "etc/systemd/journald@tillface.conf").exists()
    assert not (root / "etc/sysusers.d/tillface.conf").exists()
    assert "tillface:" not in (root / "etc/passwd").read_text()
    assert not any(line.startswith("tillface:") for line in (root / "etc/group").read_text().splitlines())
    assert "tillface" not in group_members(root, "video")
    assert "tillface: nothing to remove" in install(root, "--purge").stdout
