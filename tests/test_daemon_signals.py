"""The daemon as a process: SIGHUP re-reads thresholds without dropping the camera; SIGTERM stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from replay_fixtures import write_config
from tillface.scenario import render_visits


def wait_for(proc_log, text, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proc_log.read_text():
            return True
        time.sleep(0.1)
    return False


def test_sighup_reloads_and_sigterm_stops(tmp_path):
    render_visits([], tmp_path / "replay", fps=15, gap_s=60.0)  # a minute of an empty till, real time
    cfg = write_config(tmp_path / "till.toml", tmp_path / "state", f"replay:{tmp_path / 'replay'}")
    subprocess.run([sys.executable, "-m", "tillface", "init", "--config", str(cfg)], check=True)
    log = tmp_path / "daemon.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tillface", "run", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_for(log, "camera replay:"), log.read_text()
        cfg.write_text(cfg.read_text() + "\n[recognition]\nmatch_threshold = 0.97\nmargin = 0.03\n")
        reload = subprocess.run(
            [sys.executable, "-m", "tillface", "reload", "--config", str(cfg)], capture_output=True, text=True
        )
        assert reload.returncode == 0, reload.stderr
        assert wait_for(log, "match_threshold 0.970, margin 0.030"), log.read_text()
        # The running daemon owns the gallery: a local change would be overwritten, so it is refused.
        erase = subprocess.run(
            [sys.executable, "-m", "tillface", "gallery", "erase", "someone", "--config", str(cfg)],
            capture_output=True,
            text=True,
        )
        assert erase.returncode == 75 and f"the daemon is running (pid {proc.pid})" in erase.stderr
        listing = subprocess.run(
            [sys.executable, "-m", "tillface", "gallery", "list", "--config", str(cfg)], capture_output=True
        )
        assert listing.returncode == 0  # reading is fine
        # A broken config on reload is refused and the daemon keeps running.
        cfg.write_text(cfg.read_text().replace("margin = 0.03", "margin = 5"))
        os.kill(proc.pid, signal.SIGHUP)
        assert wait_for(log, "reload refused, keeping the running config"), log.read_text()
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "tillface stopped" in text
    assert text.count("camera replay:") >= 1 and "lost" not in text, "the camera was not dropped"
    assert not (tmp_path / "state" / "tillface.pid").exists()
