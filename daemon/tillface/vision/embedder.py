"""Face embedding: a 150×150 RGB chip in, an L2-normalised descriptor out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .runtime import TfliteModel


class Embedder:
    """Runs the quantized embedder (dlib ResNet-128 by default) on aligned chips."""

    def __init__(self, model_path: Path, num_threads: int = 2, chip_size: int = 150) -> None:
        self._model = TfliteModel(model_path, num_threads=num_threads)
        self.chip_size = chip_size
        self.dim = int(self._model.output_shapes[0][-1])
        # One input buffer reused for every call: no allocation per face.
        self._input = np.zeros((1, chip_size, chip_size, 3), dtype=np.float32)

    def embed(self, chip: np.ndarray) -> np.ndarray:
        """Return the unit-length float32 descriptor of one uint8 RGB chip."""
        if chip.shape != (self.chip_size, self.chip_size, 3):
            raise ValueError(f"embedder expects a {self.chip_size}x{self.chip_size}x3 chip, got {chip.shape}")
        self._input[0] = chip
        raw = self._model.run(self._input)[0].reshape(-1).astype(np.float32)
        return l2_normalise(raw)


def l2_normalise(vector: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / max(norm, eps)
