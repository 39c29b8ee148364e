"""The reference pipeline of the popular `face_recognition` library, run through dlib directly.

dlib HOG detector (upsampled once) → 5-point shape predictor → dlib ResNet (`num_jitters=1`),
largest face per image, Euclidean distance. It is what tillface must beat, measured on the same
images with the same protocol. Needs the `reference` extra (dlib-bin, face-recognition-models).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..vision.pipeline import StageTimes


def _model_file(name: str) -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the dlib reference pipeline needs face-recognition-models: pip install 'tillface[reference]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models" / name


class DlibReferencePipeline:
    name = "dlib-reference"
    # Scores are negative Euclidean distances: higher = more similar, like cosine.
    score_kind = "negative euclidean distance"

    def __init__(self, upsample: int = 1) -> None:
        try:
            import dlib
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the dlib reference pipeline needs dlib: pip install 'tillface[reference]'"
            ) from exc
        self._dlib: Any = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(_model_file("shape_predictor_5_face_landmarks.dat")))
        self._net = dlib.face_recognition_model_v1(
            str(_model_file("dlib_face_recognition_resnet_model_v1.dat"))
        )
        self._upsample = upsample
        self.last_times = StageTimes()

    def detect(self, rgb: np.ndarray) -> list[Any]:
        return list(self._detector(rgb, self._upsample))

    def embed_still(self, rgb: np.ndarray) -> np.ndarray | None:
        """Descriptor of the largest face, or None (failure to acquire)."""
        self.last_times = StageTimes()
        t0 = time.perf_counter()
        rects = self.detect(rgb)
        t1 = time.perf_counter()
        self.last_times.detect_ms = (t1 - t0) * 1000.0
        if not rects:
            return None
        rect = max(rects, key=lambda r: r.width() * r.height())
        shape = self._shape(rgb, rect)
        descriptor = np.asarray(self._net.compute_face_descriptor(rgb, shape, 1), dtype=np.float32)
        self.last_times.embed_ms = (time.perf_counter() - t1) * 1000.0
        return descriptor

    def enrol_still(self, rgb: np.ndarray) -> np.ndarray | None:
        """face_recognition enrols with the same descriptor it searches with."""
        return self.embed_still(rgb)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
        return -np.sqrt(np.maximum(d2, 0.0))
