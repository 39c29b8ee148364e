"""`tillface doctor` names each problem of a misconfigured unit on its own line."""

from __future__ import annotations

import subprocess
import sys

from mosquitto import free_port
from replay_fixtures import write_config
from tillface.scenario import render_visits


def doctor(cfg):
    return subprocess.run(
        [sys.executable, "-m", "tillface", "doctor", "--config", str(cfg)], capture_output=True, text=True
    )


def test_good_unit_passes_every_check(tmp_path):
    render_visits([], tmp_path / "replay", fps=15, gap_s=1.0)
    cfg = write_config(tmp_path / "till.toml", tmp_path / "state", f"replay:{tmp_path / 'replay'}")
    subprocess.run([sys.executable, "-m", "tillface", "init", "--config", str(cfg)], check=True)
    out = doctor(cfg)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[1] for line in lines] == [
        "config",
        "clock",
        "state",
        "models",
        "runtime",
        "xnnpack",
        "cpu",
        "gallery",
        "camera",
        "display",
        "broker",
    ]
    assert all(line.startswith("ok") for line in lines)


def test_misconfigured_unit_names_each_problem(tmp_path):
    cfg = write_config(
        tmp_path / "till.toml",
        tmp_path / "state",
        f"replay:{tmp_path / 'no-camera-here'}",
        extra='[display]\ndriver = "escpos"\nport = "/dev/ttyUSB-not-plugged"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\n',
    )
    out = doctor(cfg)
    assert out.returncode == 1
    failed = {line.split()[1]: line for line in out.stdout.splitlines() if line.startswith("FAIL")}
    assert set(failed) == {"gallery", "camera", "display", "broker"}, out.stdout
    assert "mqtt.host/mqtt.port" in failed["broker"] and "nothing accepts connections" in failed["broker"]
    assert "gallery.key_file" in failed["gallery"] and "does not exist" in failed["gallery"]
    assert "camera.source" in failed["camera"] and "no-camera-here" in failed["camera"]
    assert "display.port" in failed["display"]


def test_invalid_config_is_one_failed_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[unit]\nstore_id = "s"\ntill_id = "t"\n[camera]\nfsp = 15\n')
    out = doctor(cfg)
    assert out.returncode == 1
    assert out.stdout.splitlines() == [out.stdout.strip()] and "camera.fsp" in out.stdout
