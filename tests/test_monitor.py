"""`tillface monitor` on a replay of real faces-dev photos: per-frame measures, gate verdicts, scores and
the daemon's decisions; it refuses to run beside a live daemon and writes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from replay_fixtures import build_scenario, write_config
from tillface.app import open_gallery
from tillface.config import RecognitionConfig, load_config
from tillface.enrol import import_photos
from tillface.recognition.gallery import create_key_file


@pytest.fixture(scope="module")
def unit(faces_dir, tmp_path_factory):
    """Two enrolled members and a stranger visit the till; [quality] is strict on face size, so the
    approaching faces fail the gate before they pass it."""
    work = tmp_path_factory.mktemp("monitor")
    scenario = build_scenario(faces_dir, work, members=2, strangers=1)
    cfg = write_config(
        work / "till.toml",
        work / "state",
        f"replay:{scenario.replay_dir}",
        extra="[quality]\nmin_eye_distance_px = 36.0\n",
    )
    config = load_config(cfg)
    (work / "state").mkdir()
    create_key_file(config.gallery.key_file)
    gallery = open_gallery(config, cfg)
    assert (
        import_photos(gallery, config, faces_dir, scenario.enrol_csv, progress=False, consent_ref="test") == 0
    )
    return scenario, cfg, work


def monitor(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tillface", "monitor", "--config", str(cfg), "--lockstep", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


SCORE = re.compile(r"top1=(\S+):(\d\.\d{4})")
# The defaults the unit's config leaves in force.
THRESHOLD = RecognitionConfig().match_threshold
MARGIN = RecognitionConfig().margin


def test_plain_lines_show_measures_verdicts_scores_and_decisions(unit):
    scenario, cfg, work = unit
    before = files(work)
    out = monitor(cfg, "--plain")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    frames = [line for line in lines if line.startswith("frame=")]
    # ~5 lines per second of video (every 3rd frame at 15 fps), paced by the replay's clock.
    n_frames = len(list(scenario.replay_dir.glob("*.jpg")))
    assert n_frames // 4 <= len(frames) <= n_frames // 2, len(frames)
    assert any("faces=0" in line and "gate=" not in line for line in frames), "empty till not shown"
    with_face = [line for line in frames if "faces=1" in line]
    assert with_face
    for line in with_face:
        for key in ("eyes=", "yaw=", "pitch=", "sharp=", "bright=", "gate=", "top1=", "top2=", "margin="):
            assert key in line, (key, line)
    # The strict face size makes some frames fail, naming the limit; others pass.
    failed = [line for line in with_face if "gate=FAIL[too small: eyes" in line]
    assert failed and any("not ≥ 36 px" in line for line in failed), with_face[:5]
    assert any("gate=pass" in line for line in with_face)
    # Scores are the gallery's members, and the frame's own verdict follows match_threshold.
    for line in with_face:
        member, score = SCORE.search(line).groups()  # type: ignore[union-attr]
        assert member in scenario.members
        says = re.search(r"frame_says=(\w+)", line).group(1)  # type: ignore[union-attr]
        margin = float(re.search(r"margin=(\d\.\d+)", line).group(1))  # type: ignore[union-attr]
        if abs(float(score) - THRESHOLD) > 1e-4 and abs(margin - MARGIN) > 1e-4:  # printed rounded
            assert (says == "match") == (float(score) >= THRESHOLD and margin >= MARGIN), line
    # The daemon's decisions as they happen: one first decision per scripted visit, each visit left.
    decisions = [line for line in lines if line.startswith("DECISION ")]
    firsts = {re.search(r"visit=(\w+)", d).group(1) for d in decisions}  # type: ignore[union-attr]
    assert len(firsts) == len(scenario.truth), decisions
    assert all("score=" in d and f"match_threshold={THRESHOLD:.3f}" in d for d in decisions)
    matched = {re.search(r"member=(\S+)", d).group(1) for d in decisions if "DECISION match" in d}  # type: ignore[union-attr]
    assert matched <= scenario.members and matched, decisions
    assert sum(line.startswith("EVENT left") for line in lines) == len(scenario.truth)
    assert re.search(rf"^monitor: {n_frames} frames, \d+ with a customer face", out.stdout, re.M)
    # Nothing was written: no frame, no crop, no event file, no pid file.
    assert files(work) == before


def test_frames_limit_and_live_screen(unit):
    _scenario, cfg, _work = unit
    out = monitor(cfg, "--frames", "50")
    assert out.returncode == 0, out.stderr
    # Off a terminal the live screen is printed once, at the end: the last frame's table.
    for text in (
        "quality gate:",
        "measure",
        "eyes",
        "top-1",
        f"match needs score ≥ {THRESHOLD:.3f}",
        "decisions:",
    ):
        assert text in out.stdout, (text, out.stdout)
    assert "monitor: 50 frames" in out.stdout


def test_refuses_while_the_daemon_runs(unit):
    _scenario, cfg, work = unit
    pid_path = work / "state" / "tillface.pid"
    # Stands in for the daemon: a live process with "tillface" on its command line.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "tillface", "run"])
    try:
        pid_path.write_text(f"{live.pid}\n")
        out = monitor(cfg, "--plain", "--frames", "3")
        assert out.returncode == 75
        assert f"daemon is running (pid {live.pid}" in out.stderr
        assert "systemctl stop tillface" in out.stderr
        assert "frame=" not in out.stdout
    finally:
        live.kill()
        live.wait()
    # The same pid file with the process gone is stale: the monitor runs.
    out = monitor(cfg, "--plain", "--frames", "3")
    pid_path.unlink()
    assert out.returncode == 0, out.stderr
    assert "monitor: 3 frames" in out.stdout
    assert os.path.exists(cfg)
