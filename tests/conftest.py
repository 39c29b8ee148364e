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
