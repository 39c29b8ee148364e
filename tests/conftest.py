"""Shared fixtures: the faces-dev photo set and the installed models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def faces_root() -> Path:
    return Path(os.environ.get("TILLFACE_FACES", REPO.parent / "shared" / "faces-dev"))


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    root = faces_root()
    if not (root / "labels.csv").is_file():
        # Not a skip: the suite is meant to run on real photos, and CI always has them.
        pytest.fail(f"faces-dev not found at {root}; set TILLFACE_FACES to the photo folder")
    return root


@pytest.fixture(scope="session")
def manifest():
    from tillface.models import load_manifest

    return load_manifest()


@pytest.fixture
def broker(tmp_path: Path):
    """A real mosquitto on 127.0.0.1 (a free port), stopped after the test."""
    from mosquitto import Mosquitto

    server = Mosquitto(tmp_path / "broker").start()
    yield server
    server.stop()
