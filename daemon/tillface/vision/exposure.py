"""Exposure normalisation for dark, side-lit or washed-out faces (CLAHE on the lightness channel).

Used on the aligned chip before embedding, and on a whole still image when the detector found nothing
(a dark photo): contrast-limited equalisation brings a face in shadow back into the range the models
were trained on without amplifying noise in flat areas.
"""

from __future__ import annotations

import cv2
import numpy as np


def equalise(rgb: np.ndarray, clip_limit: float = 2.0, tiles: int = 4) -> np.ndarray:
    """CLAHE on L of CIE-Lab; colours keep their hue. uint8 RGB in, uint8 RGB out."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles))
    lab[:, :, 0] = clahe.apply(np.ascontiguousarray(lab[:, :, 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
