"""The aarch64 check (scripts/check_aarch64.sh): the unit's detector and embedder on an arm64 root under
qemu for the Raspberry Pi 4's Cortex-A72 and the Pi 5's Cortex-A76, against x86.

Marked `aarch64` and left out of the default run (about 4 minutes cold, 3 cached): .ci/run runs it as its
own step with `pytest -m aarch64 tests/test_aarch64.py`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_aarch64.sh"

pytestmark = pytest.mark.aarch64


def check(*args: str) -> subprocess.CompletedProcess[str]:
    for tool in ("qemu-aarch64-static", "debootstrap"):
        if shutil.which(tool) is None:
            # Not a skip: scripts/setup.sh --dev installs both.
            pytest.fail(f"{tool} is missing: apt-get install qemu-user-static debootstrap (setup.sh --dev)")
    proc = subprocess.run(
        [str(SCRIPT), *args],
        cwd=REPO,
        env=os.environ.copy(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    print(proc.stdout)
    print(proc.stderr)
    return proc


def test_both_cpus_agree_with_x86():
    proc = check("--cpu", "both")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout
    for cpu in ("cortex-a72", "cortex-a76"):
        assert f"{cpu}: embedder cosine to x86 min" in proc.stdout
        assert f"{cpu}: detector max relative difference" in proc.stdout
        assert f"{cpu}: XNNPACK nodes:" in proc.stdout
        # The check's 24 faces-dev photos (at least 20 promised) all went through the full path.
        detector_line = next(line for line in proc.stdout.splitlines() if line.startswith(f"{cpu}: detector"))
        assert detector_line.endswith("faces 24/24"), detector_line
    assert "aarch64 check: passed for cortex-a72 cortex-a76" in proc.stdout


def test_check_fails_when_xnnpack_is_forced_off():
    proc = check("--cpu", "cortex-a72", "--no-xnnpack", "--chips", "4", "--random", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL cortex-a72: XNNPACK was not in use: no DELEGATE node in" in proc.stdout
    assert "aarch64 check: FAILED" in proc.stdout
