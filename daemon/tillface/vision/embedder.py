"""Face embedding: an aligned RGB chip in, an L2-normalised descriptor out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..models import ModelEntry
from .align import GEOMETRIES, ChipGeometry, geometry
from .runtime import RuntimeReport, TfliteModel


class Embedder:
    """Runs a quantized embedder (SFace or dlib's ResNet) on chips of its own geometry."""

    def __init__(self, model_path: Path, chip: ChipGeometry, num_threads: int = 2) -> None:
        self._model = TfliteModel(model_path, num_threads=num_threads)
        self.chip = chip
        expected = (1, chip.size, chip.size, 3)
        if self._model.input_shape != expected:
            raise ValueError(
                f"{model_path.name} takes {self._model.input_shape}, but its chip geometry {chip.name!r} "
                f"is {chip.size}x{chip.size}"
            )
        self.dim = int(self._model.output_shapes[0][-1])
        # One input buffer reused for every call: no allocation per face.
        self._input = np.zeros(expected, dtype=np.float32)

    @property
    def chip_size(self) -> int:
        return self.chip.size

    @property
    def runtime_report(self) -> RuntimeReport:
        """What the model runs on (measured once, at load)."""
        return self._model.runtime_report

    def embed(self, chip: np.ndarray) -> np.ndarray:
        """Return the unit-length float32 descriptor of one uint8 RGB chip."""
        if chip.shape != (self.chip.size, self.chip.size, 3):
            raise ValueError(f"embedder expects a {self.chip.size}x{self.chip.size}x3 chip, got {chip.shape}")
        self._input[0] = chip
        raw = self._model.run(self._input)[0].reshape(-1).astype(np.float32)
        return l2_normalise(raw)


def chip_geometry_of(entry: ModelEntry) -> ChipGeometry:
    """The chip geometry an embedder's manifest entry names (`input.geometry`)."""
    name = entry.input.get("geometry")
    if name is None:
        raise ValueError(
            f"embedder {entry.id!r} names no input.geometry in the manifest (known: {', '.join(GEOMETRIES)})"
        )
    return geometry(str(name))


def l2_normalise(vector: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / max(norm, eps)
