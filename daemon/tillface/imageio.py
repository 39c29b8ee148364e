"""Reading still images (enrolment photos, evaluation sets) as RGB arrays.

Pillow reads every format found in real photo folders (JPEG, PNG, GIF, PGM, WEBP with a wrong
extension), which OpenCV's imread does not; frames from cameras never pass through here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file."""


def read_rgb(path: Path | str) -> np.ndarray:
    """Return the image as a contiguous uint8 H×W×3 RGB array (grey images are expanded)."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse both (a photo of a
            # customer never has 89 million pixels, a decompression bomb does).
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.seek(0)  # first frame of an animated GIF
                rgb = img.convert("RGB")
                return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"image {path} is refused: {exc}") from exc
    except FileNotFoundError as exc:
        raise ImageReadError(f"image {path} does not exist") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageReadError(f"image {path} cannot be read: {exc}") from exc
