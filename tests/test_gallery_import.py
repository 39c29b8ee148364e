"""`tillface gallery import` refuses a labels file it cannot import safely, and imports nothing then:
identities that cannot be member ids, rows without consent, paths outside --images; a decompression
bomb is skipped with a line that names it. Real CLI, real photos, real models."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from replay_fixtures import write_config
from tillface.imageio import ImageReadError, read_rgb


def _photos(faces_dir: Path, count: int) -> list[tuple[str, str]]:
    """(path, identity) of `count` photos of distinct people from faces-dev's LFW rows."""
    with open(faces_dir / "labels.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["source"].startswith("lfw")]
    chosen: dict[str, str] = {}
    for row in rows:
        chosen.setdefault(row["identity"], row["path"])
        if len(chosen) == count:
            break
    return [(path, identity) for identity, path in chosen.items()]


def _tillface(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tillface", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    config = write_config(tmp_path / "till.toml", tmp_path / "state", "replay:/nonexistent")
    assert _tillface("init", "--config", str(config)).returncode == 0
    return config


def _labels(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _members(config: Path) -> str:
    out = _tillface("gallery", "list", "--config", str(config))
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_bad_rows_import_nothing_and_each_is_named(unit: Path, faces_dir: Path, tmp_path: Path) -> None:
    (good_path, good_id), (p2, _), (p3, _), (p4, _) = _photos(faces_dir, 4)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((faces_dir / p4).read_bytes())
    labels = _labels(
        tmp_path / "labels.csv",
        [
            {"path": good_path, "identity": good_id, "consent_ref": "form-1"},
            {"path": p2, "identity": "Jane Doe", "consent_ref": "form-2"},  # a space
            {"path": p3, "identity": "shop/ann", "consent_ref": "form-3"},  # a topic separator
            {"path": p4, "identity": "no-consent", "consent_ref": ""},
            {"path": "../outside.jpg", "identity": "dotdot", "consent_ref": "form-5"},
            {"path": str(outside), "identity": "absolute", "consent_ref": "form-6"},
        ],
    )
    out = _tillface(
        "gallery", "import", "--config", str(unit), "--images", str(faces_dir), "--labels", str(labels)
    )
    assert out.returncode == 65, out.stdout + out.stderr
    assert "nothing imported" in out.stdout and "tillface gallery import" in out.stdout
    for line, what in [(3, "identity"), (4, "identity"), (5, "consent"), (6, "outside"), (7, "outside")]:
        assert any(f"line {line}:" in x and what in x for x in out.stdout.splitlines()), (line, out.stdout)
    assert "line 2:" not in out.stdout
    assert _members(unit).strip().endswith("0 members, 0 templates, version 0")


def test_consent_reference_from_the_command_line(unit: Path, faces_dir: Path, tmp_path: Path) -> None:
    (path, identity), *_ = _photos(faces_dir, 1)
    labels = _labels(tmp_path / "labels.csv", [{"path": path, "identity": identity}])
    args = ["gallery", "import", "--config", str(unit), "--images", str(faces_dir), "--labels", str(labels)]
    refused = _tillface(*args, "--quiet")
    assert refused.returncode == 65 and "no consent reference" in refused.stdout
    done = _tillface(*args, "--quiet", "--consent-ref", "signed-forms-2026-12")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{identity}\t1 templates" in _members(unit)


def test_decompression_bomb_is_refused_by_name(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    # 12000 x 8000 = 96 M pixels: over Pillow's 89 M limit, under twice it (where Pillow only warns).
    Image.fromarray(np.zeros((8000, 12000), np.uint8)).save(bomb, optimize=False)
    with pytest.raises(ImageReadError, match=r"bomb\.png is refused"):
        read_rgb(bomb)


def test_rekey_then_install_the_new_key(unit: Path, faces_dir: Path, tmp_path: Path) -> None:
    """`tillface gallery rekey`: the gallery is re-encrypted with a new key file (created 0600); until
    the new key is installed, the old one is refused by its key id; after, the members are all there."""
    (path, identity), *_ = _photos(faces_dir, 1)
    labels = _labels(tmp_path / "labels.csv", [{"path": path, "identity": identity, "consent_ref": "f-1"}])
    imported = _tillface(
        "gallery",
        "import",
        "--config",
        str(unit),
        "--images",
        str(faces_dir),
        "--labels",
        str(labels),
        "--quiet",
    )
    assert imported.returncode == 0, imported.stdout + imported.stderr
    new_key = tmp_path / "new.key"
    out = _tillface("gallery", "rekey", "--config", str(unit), "--new-key", str(new_key))
    assert out.returncode == 0, out.stdout + out.stderr
    assert (new_key.stat().st_mode & 0o777) == 0o600 and "re-encrypted: key " in out.stdout
    refused = _tillface("gallery", "list", "--config", str(unit))
    assert refused.returncode != 0 and "written with key id" in refused.stderr, refused.stderr
    (tmp_path / "state" / "gallery.key").write_bytes(new_key.read_bytes())
    assert f"{identity}\t1 templates" in _members(unit)
