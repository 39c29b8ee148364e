"""systemd/tillface.service is a valid unit and scores "OK" or better in systemd's exposure check."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "tillface.service"


def installed_copy(tmp_path: Path) -> Path:
    """The unit with the install prefix pointed at this checkout's venv, as install would place it."""
    venv_bin = Path(sys.executable).parent
    text = UNIT.read_text().replace("/opt/tillface/.venv/bin", str(venv_bin))
    unit = tmp_path / "tillface.service"
    unit.write_text(text)
    return unit


def test_unit_verifies(tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: scripts/setup.sh --dev installs it"
    out = subprocess.run(
        ["systemd-analyze", "verify", str(installed_copy(tmp_path))], capture_output=True, text=True
    )
    problems = [line for line in (out.stdout + out.stderr).splitlines() if "tillface.service" in line]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr


def test_unit_exposure_is_ok_or_better(tmp_path):
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(installed_copy(tmp_path))],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for tillface\.service: ([0-9.]+)", out.stdout)
    assert match, out.stdout + out.stderr
    assert float(match.group(1)) <= 2.5


def test_unit_has_the_service_contract():
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "RestartPreventExitStatus=78",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LoadCredential=gallery.key:",
        "DevicePolicy=closed",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ):
        assert line in text, line


def test_unit_allows_no_core_dumps():
    """A core dump would hold the gallery key and decrypted templates: the unit forbids them (the last
    LimitCORE= line is the one systemd applies)."""
    limits = [line.strip() for line in UNIT.read_text().splitlines() if line.startswith("LimitCORE=")]
    assert limits and limits[-1] == "LimitCORE=0"


def test_member_ids_in_the_journal_are_kept_no_longer_than_the_retention():
    """The daemon logs into its own journal namespace, whose shipped journald config bounds how long
    decision lines (member ids) are kept and forwards them nowhere else."""
    import configparser

    settings = [line.strip() for line in UNIT.read_text().splitlines()]
    assert "LogNamespace=tillface" in settings
    journald = configparser.ConfigParser()
    journald.optionxform = str  # type: ignore[assignment,method-assign]
    journald.read(REPO / "systemd" / "journald@tillface.conf")
    j = journald["Journal"]
    match = re.fullmatch(r"(\d+)day", j["MaxRetentionSec"])
    assert match and 1 <= int(match.group(1)) <= 31, j["MaxRetentionSec"]
    for forward in ("ForwardToSyslog", "ForwardToKMsg", "ForwardToConsole", "ForwardToWall"):
        assert j[forward] == "no", forward
