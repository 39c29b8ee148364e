"""Registry-shipped photos for demos and benchmarks on a machine with no camera and no photo folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def astronaut_photo() -> Path:
    """scikit-image's bundled public-domain NASA portrait (Eileen Collins), read without importing skimage."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the demo photo needs scikit-image: pip install 'tillface[demo]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "astronaut.png"
    if not path.is_file():
        raise RuntimeError(f"scikit-image is installed but {path} is missing")
    return path
