"""The model manifest: which model files the unit has, where they came from, and their checksums.

`models/manifest.json` is written by `scripts/build_models.py`; nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"

# The embedder a unit runs unless `[vision] embedder` says otherwise.
DEFAULT_EMBEDDER = "sface-2021dec-int8"
# The only embedder before galleries recorded theirs: a gallery file without `embedder` holds its templates.
LEGACY_EMBEDDER = "dlib-resnet-v1-int8"


class ModelError(RuntimeError):
    """A model file is missing, unknown or does not match the manifest."""


def default_models_dir() -> Path:
    """`TILLFACE_MODELS`, else the repository's `models/` (editable install), else /usr/share."""
    env = os.environ.get("TILLFACE_MODELS")
    if env:
        return Path(env)
    repo_models = Path(__file__).resolve().parents[2] / "models"
    if (repo_models / MANIFEST_NAME).is_file():
        return repo_models
    return Path("/usr/share/tillface/models")


@dataclass(frozen=True)
class ModelEntry:
    id: str
    kind: str  # "detector" | "embedder"
    file: str
    sha256: str
    licence: str
    quantization: str
    input: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    directory: Path
    models: tuple[ModelEntry, ...]

    def get(self, model_id: str) -> ModelEntry:
        for entry in self.models:
            if entry.id == model_id:
                return entry
        known = ", ".join(m.id for m in self.models)
        raise ModelError(f"model {model_id!r} is not in {self.directory / MANIFEST_NAME} (known: {known})")

    def path(self, model_id: str) -> Path:
        entry = self.get(model_id)
        path = self.directory / entry.file
        if not path.is_file():
            raise ModelError(f"model file {path} for {model_id!r} is missing; run scripts/build_models.py")
        return path

    def verify(self, model_id: str) -> None:
        """Raise ModelError unless the file's sha256 matches the manifest."""
        entry = self.get(model_id)
        digest = sha256_file(self.path(model_id))
        if digest != entry.sha256:
            raise ModelError(
                f"model file {self.directory / entry.file} has sha256 {digest}, manifest says {entry.sha256}"
            )


_KNOWN_KEYS = {"id", "kind", "file", "sha256", "licence", "quantization", "input", "output", "source"}


def load_manifest(directory: Path | None = None) -> Manifest:
    directory = Path(directory) if directory is not None else default_models_dir()
    path = directory / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"no model manifest at {path}; run scripts/build_models.py") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"model manifest {path} is not valid JSON: {exc}") from exc
    entries = []
    for i, item in enumerate(raw.get("models", [])):
        missing = {"id", "kind", "file", "sha256"} - item.keys()
        if missing:
            raise ModelError(f"{path}: models[{i}] lacks {', '.join(sorted(missing))}")
        entries.append(
            ModelEntry(
                id=item["id"],
                kind=item["kind"],
                file=item["file"],
                sha256=item["sha256"],
                licence=item.get("licence", "unknown"),
                quantization=item.get("quantization", "none"),
                input=item.get("input", {}),
                output=item.get("output", {}),
                source=item.get("source", {}),
                extra={k: v for k, v in item.items() if k not in _KNOWN_KEYS},
            )
        )
    return Manifest(directory=directory, models=tuple(entries))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
