"""The store key for templates on the wire: the bundle's credential `store-gallery.key` first (a root-owned
file that systemd hands over), else `[mqtt] gallery_key_file`, else a lone till's own gallery key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from replay_fixtures import write_config
from tillface.app import wire_key
from tillface.config import ConfigError, load_config
from tillface.recognition.gallery import create_key_file
from tillface.security import layout


def _unit(tmp_path: Path, extra: str = "") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = write_config(tmp_path / "till.toml", tmp_path / "state", "replay:/nonexistent", extra=extra)
    create_key_file(tmp_path / "state" / "gallery.key")
    return config


def test_the_credential_wins_then_the_file_then_the_gallery_key(tmp_path, monkeypatch):
    store_file = tmp_path / "store-gallery.key"
    create_key_file(store_file)
    path = _unit(tmp_path, f'[mqtt]\ngallery_key_file = "{store_file}"\n')
    config = load_config(path)
    gallery_key = (tmp_path / "state" / "gallery.key").read_bytes()
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert wire_key(config, path) == store_file.read_bytes() != gallery_key

    bundle = tmp_path / "credentials"
    bundle.mkdir()
    credential = os.urandom(32)
    (bundle / layout.STORE_GALLERY_KEY).write_bytes(credential)  # mode and owner are systemd's business
    (bundle / layout.STORE_GALLERY_KEY).chmod(0o644)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(bundle))
    assert wire_key(config, path) == credential

    alone = load_config(_unit(tmp_path / "alone"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert wire_key(alone, None) == (tmp_path / "alone" / "state" / "gallery.key").read_bytes()


def test_a_short_credential_names_itself(tmp_path, monkeypatch):
    path = _unit(tmp_path)
    bundle = tmp_path / "credentials"
    bundle.mkdir()
    (bundle / layout.STORE_GALLERY_KEY).write_bytes(b"short")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(bundle))
    with pytest.raises(ConfigError, match=r"store-gallery\.key"):
        wire_key(load_config(path), path)
