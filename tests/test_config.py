"""The config schema, the shipped config files and the one-line error messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from tillface.config import (
    Config,
    ConfigError,
    load_config,
    parse_config,
    sections,
)

REPO = Path(__file__).resolve().parents[1]
PRODUCTION = REPO / "config" / "tillface.toml"
DEMO = REPO / "config" / "demo.toml"

MINIMAL = '[unit]\nstore_id = "s1"\ntill_id = "t1"\n'


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(str(path)), message
    return message


def _blocks(text: str) -> dict[str, list[str]]:
    """Lines of each [section] of a TOML file."""
    out: dict[str, list[str]] = {}
    current: list[str] = out.setdefault("", [])
    for line in text.splitlines():
        header = re.match(r"^\[([a-z_]+)\]\s*$", line)
        if header:
            current = out.setdefault(header.group(1), [])
        else:
            current.append(line)
    return out


# ---------------------------------------------------------------- shipped files


def test_shipped_configs_load() -> None:
    prod = load_config(PRODUCTION)
    assert prod.unit.state_dir == Path("/var/lib/tillface")
    demo = load_config(DEMO)
    assert demo.camera.source_kind == "replay"
    assert demo.camera.fps == 15
    assert demo.unit.state_dir == Path(".tillface-state")
    assert demo.gallery.file == Path(".tillface-state/gallery.tfg")


def test_production_config_documents_every_key() -> None:
    """Every schema key is in config/tillface.toml (set, or commented out when its default depends on
    state_dir or is "none"), with comment lines right above it that state its default."""
    blocks = _blocks(PRODUCTION.read_text())
    key_line = re.compile(r"^(?:# )?([a-z_0-9]+) = ")
    for name, model in sections().items():
        assert name in blocks, f"[{name}] is missing from {PRODUCTION.name}"
        lines = blocks[name]
        keys = {m.group(1): i for i, line in enumerate(lines) if (m := key_line.match(line))}
        assert set(keys) == set(model.model_fields), f"[{name}] keys differ from the schema"
        for field, index in keys.items():
            comment: list[str] = []
            for line in reversed(lines[:index]):
                if not line.startswith("#") or key_line.match(line):
                    break
                comment.insert(0, line)
            assert comment, f"{name}.{field} has no comment above it in {PRODUCTION.name}"
            assert "default" in " ".join(comment).lower(), f"{name}.{field}: the comment names no default"
    assert set(blocks) - {""} == set(sections())


def test_production_values_are_the_defaults() -> None:
    prod = load_config(PRODUCTION)
    defaults = Config.model_validate({"unit": {"store_id": prod.unit.store_id, "till_id": prod.unit.till_id}})
    assert prod == defaults


def test_state_dir_moves_all_state() -> None:
    text = DEMO.read_text().replace('state_dir = ".tillface-state"', 'state_dir = "/srv/elsewhere"')
    cfg = parse_config(text)
    assert cfg.gallery.key_file == Path("/srv/elsewhere/gallery.key")
    assert cfg.gallery.file == Path("/srv/elsewhere/gallery.tfg")
    assert cfg.debug.capture_dir == Path("/srv/elsewhere/captures")
    # An explicit path wins over the state_dir default.
    cfg = parse_config(MINIMAL + '[gallery]\nfile = "/data/g.tfg"\n')
    assert cfg.gallery.file == Path("/data/g.tfg")
    assert cfg.gallery.key_file == Path("/var/lib/tillface/gallery.key")


def test_minimal_config_has_documented_defaults() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.camera.fps == 15 and (cfg.camera.width, cfg.camera.height) == (640, 480)
    assert cfg.camera.roi == (0.0, 0.0, 1.0, 1.0)
    assert cfg.vision.detector == "short" and cfg.vision.embedder == "sface-2021dec-int8"
    assert cfg.recognition.match_threshold == 0.5 and cfg.recognition.enroll_ttl_s == 120
    assert cfg.gallery.key_credential == "gallery.key"
    assert cfg.display.driver == "none"
    assert cfg.debug.capture_frames is False and cfg.warnings() == []


def test_config_is_frozen_and_integers_widen_to_floats() -> None:
    cfg = parse_config(MINIMAL + "[recognition]\nmatch_threshold = 1\n")
    assert cfg.recognition.match_threshold == 1.0
    with pytest.raises(ValidationError):
        cfg.recognition.match_threshold = 0.3


def test_camera_sources() -> None:
    for source in ("picamera2", "opencv:0", "opencv:rtsp://cam/stream", "replay:demo/visits"):
        assert parse_config(MINIMAL + f'[camera]\nsource = "{source}"\n').camera.source == source
    cfg = parse_config(MINIMAL + '[camera]\nsource = "opencv:v4l2src ! videoconvert ! appsink"\n')
    assert cfg.camera.source_kind == "opencv"
    assert cfg.camera.source_target == "v4l2src ! videoconvert ! appsink"


def test_log_level_any_case() -> None:
    assert parse_config(MINIMAL.replace('"t1"\n', '"t1"\nlog_level = "debug"\n')).unit.log_level == "DEBUG"


def test_warnings_and_redacted() -> None:
    cfg = parse_config(MINIMAL + "[debug]\ncapture_frames = true\n")
    assert len(cfg.warnings()) == 1 and "capture_frames" in cfg.warnings()[0]
    dump = cfg.redacted()
    assert json.loads(json.dumps(dump)) == dump
    assert dump["recognition"]["match_threshold"] == 0.5
    assert dump["gallery"]["key_credential"] == "gallery.key"  # a name, not a secret


def test_redaction_masks_secret_looking_keys() -> None:
    from tillface.config import _redact

    assert _redact({"mqtt": {"password": "hunter2", "user": "u", "token": None}}) == {
        "mqtt": {"password": "***", "user": "u", "token": None}
    }


# ---------------------------------------------------------------- invalid files


def test_wrong_type(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL + '[recognition]\nmatch_threshold = "high"\n')
    assert "recognition.match_threshold" in message and "expected a number" in message
    message = _error(tmp_path, MINIMAL + "[recognition]\nmin_frames = 2.5\n")
    assert "recognition.min_frames" in message and "expected an integer" in message
    message = _error(tmp_path, MINIMAL + '[recognition]\nallow_upgrade = "yes"\n')
    assert "recognition.allow_upgrade" in message and "true or false" in message
    message = _error(tmp_path, MINIMAL + "[camera]\nfps = 15.0\n")
    assert "camera.fps" in message


def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL + "[recognition]\nmatch_treshold = 0.6\n")
    assert "recognition.match_treshold: unknown key" in message
    assert "did you mean 'recognition.match_threshold'?" in message
    message = _error(tmp_path, MINIMAL + "[recogniton]\nmatch_threshold = 0.6\n")
    assert "recogniton: unknown section" in message and "did you mean 'recognition'?" in message
    message = _error(tmp_path, MINIMAL + "[camera]\nzzz = 1\n")
    assert "camera.zzz: unknown key" in message and "did you mean" not in message


def test_threshold_out_of_range(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL + "[recognition]\nmatch_threshold = 1.5\n")
    assert "recognition.match_threshold" in message and "1.5" in message
    message = _error(tmp_path, MINIMAL + "[recognition]\nenroll_ttl_s = 5\n")
    assert "recognition.enroll_ttl_s" in message
    message = _error(tmp_path, MINIMAL + "[camera]\nfps = 61\n")
    assert "camera.fps" in message


def test_missing_required_key(tmp_path: Path) -> None:
    message = _error(tmp_path, '[unit]\nstore_id = "s1"\n')
    assert "unit.till_id: required key is missing" in message
    message = _error(tmp_path, "[camera]\nfps = 10\n")
    assert "unit: required section [unit] is missing (needs store_id, till_id)" in message


def test_bad_toml_names_line_and_key(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL + "[recognition]\nmatch_threshold = 0.5.5\n")
    assert "bad.toml:5:" in message and "recognition.match_threshold" in message
    assert "TOML syntax error" in message


def test_bad_ids(tmp_path: Path) -> None:
    message = _error(tmp_path, '[unit]\nstore_id = "store/1"\ntill_id = "t1"\n')
    assert "unit.store_id" in message and "MQTT" in message
    message = _error(tmp_path, '[unit]\nstore_id = "s"\ntill_id = ""\n')
    assert "unit.till_id" in message


def test_cross_field_errors_name_the_key(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL + "[quality]\nmin_brightness = 200\nmax_brightness = 100\n")
    assert "quality.max_brightness" in message
    message = _error(tmp_path, MINIMAL + "[camera]\nroi = [0.6, 0.0, 0.4, 1.0]\n")
    assert "camera.roi" in message
    message = _error(tmp_path, MINIMAL + "[camera]\nroi = [0.0, 0.0, 1.0]\n")
    assert "camera.roi" in message and "too few" in message
    message = _error(tmp_path, MINIMAL + "[camera]\nreopen_backoff_s = [10.0, 1.0]\n")
    assert "camera.reopen_backoff_s" in message
    message = _error(tmp_path, MINIMAL + '[display]\ndriver = "escpos"\n')
    assert "display.port" in message


def test_bad_camera_source(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL + '[camera]\nsource = "picamera"\n')
    assert "camera.source" in message and "did you mean 'picamera2'" in message
    message = _error(tmp_path, MINIMAL + '[camera]\nsource = "replay:"\n')
    assert "camera.source" in message


def test_several_problems_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(MINIMAL + "[recognition]\nmargin = 2\nmin_frames = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "(and 1 more problem)" in str(info.value)
    assert len(info.value.problems) == 2
    assert all("\n" not in p for p in info.value.problems)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read"):
        load_config(tmp_path / "missing.toml")


def test_every_field_has_a_description() -> None:
    models: list[type[BaseModel]] = list(sections().values())
    for model in models:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name}"
