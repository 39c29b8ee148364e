"""Frame rotation (camera mounted sideways or upside down)."""

from __future__ import annotations

import cv2
import numpy as np

_ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def rotate(image: np.ndarray, degrees: int) -> np.ndarray:
    if degrees == 0:
        return image
    return cv2.rotate(image, _ROTATIONS[degrees])
