"""Face alignment: BlazeFace keypoints -> the face chip an embedder expects.

Each embedder was trained on chips of one geometry (`ChipGeometry`, named in the model manifest):
- `dlib-150`: dlib's `get_face_chip(img, shape_5pt, size=150, padding=0.25)`, for dlib's ResNet;
- `arcface-112`: the 112×112 chip of the ArcFace 5-point template (OpenCV's
  `FaceRecognizerSF.alignCrop`), for SFace.
BlazeFace does not detect those 5 points, so each chip is reproduced from a BlazeFace template: where
each BlazeFace keypoint lands, on average, inside that chip. A least-squares similarity transform
(rotation, uniform scale, translation) maps the chosen keypoints onto that template, and the image is
warped bilinearly.
Large faces are first shrunk with a Gaussian pyramid, as dlib does, to avoid aliasing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

CHIP_SIZE = 150  # dlib's chip

# Where BlazeFace's keypoints land in dlib's 150×150 chip (padding 0.25), in chip pixels (pixel-centre
# convention), BlazeFace order: subject's right eye, left eye, nose tip, mouth centre, right ear
# tragion, left ear tragion. Derived by scripts/calibrate_alignment.py (seed 0): on 490 faces-dev faces
# (LFW 250×250, ORL, Yale, Extended Yale B, press photos, LFW tight crops) dlib's HOG + 5-point
# predictor gave dlib.get_face_chip_details(shape, 150, 0.25); BlazeFace's keypoints (padding
# fallback on) were mapped into that chip, and each value is the median over the 218 faces of the
# calibration half. Median deviations (chip px): eyes 2-3, nose 4-6.5, mouth 3.5, ears 8-11.
TEMPLATE_SHORT = np.array(
    [
        [45.56, 45.69],
        [101.31, 46.08],
        [73.21, 78.39],
        [73.22, 106.38],
        [15.72, 58.06],
        [130.13, 59.61],
    ],
    dtype=np.float64,
)
TEMPLATE_FULL = np.array(
    [
        [45.77, 45.54],
        [100.90, 46.06],
        [73.11, 79.05],
        [73.09, 105.65],
        [18.44, 58.53],
        [129.90, 58.59],
    ],
    dtype=np.float64,
)
# The two variants agree within 0.7 px on the fitted points; the default is their mean.
TEMPLATE = (TEMPLATE_SHORT + TEMPLATE_FULL) / 2

# Keypoints used for the fit: both eyes and the mouth centre, unweighted. On 272 held-out faces this
# gave the best dlib-descriptor cosine to dlib's own chip; adding the nose tip (noisy under pose) or
# the ear tragions (very noisy) lowered it, and weighting the eyes or mouth changed it by < 0.0003.
DEFAULT_KEYPOINTS: tuple[int, ...] = (0, 1, 3)
DEFAULT_WEIGHTS: tuple[float, ...] = (1.0, 1.0, 1.0)


# Where BlazeFace's keypoints land in the ArcFace 112×112 chip (same order as above). Derived by
# scripts/calibrate_alignment.py --target arcface-112 (seed 0): YuNet's 5 landmarks (OpenCV Zoo
# face_detection_yunet_2023mar) fitted to the ArcFace template [38.29, 51.70], [73.53, 51.50],
# [56.03, 71.74], [41.55, 92.37], [70.73, 92.20] give the chip (this reproduces OpenCV's
# FaceRecognizerSF.alignCrop exactly); BlazeFace short-range keypoints (padding fallback on) are mapped
# into it. 481 faces-dev faces with exactly one YuNet face; each value is the median over the 260 of the
# calibration half. Median deviations (chip px): eyes 2.9-3.2, nose 5.2, mouth 3.6, ears 7.5-8. On the
# 221 held-out faces, SFace's descriptor of the eyes+mouth chip has cosine 0.93 (mean) to that of
# OpenCV's own chip; adding the nose or the ears lowers it.
TEMPLATE_ARCFACE = np.array(
    [
        [36.68, 52.83],
        [74.65, 52.59],
        [55.46, 74.24],
        [55.44, 93.52],
        [16.97, 62.23],
        [95.93, 61.92],
    ],
    dtype=np.float64,
)


@dataclass(frozen=True)
class ChipGeometry:
    """An embedder's chip: its size and where BlazeFace's keypoints belong in it."""

    name: str
    size: int
    template: np.ndarray  # 6×2, chip pixels, BlazeFace keypoint order
    keypoints: tuple[int, ...] = DEFAULT_KEYPOINTS  # the keypoints fitted: eyes and mouth centre


GEOMETRIES: dict[str, ChipGeometry] = {
    "dlib-150": ChipGeometry("dlib-150", CHIP_SIZE, TEMPLATE),
    "arcface-112": ChipGeometry("arcface-112", 112, TEMPLATE_ARCFACE),
}


def geometry(name: str) -> ChipGeometry:
    try:
        return GEOMETRIES[name]
    except KeyError:
        raise ValueError(f"unknown chip geometry {name!r} (known: {', '.join(sorted(GEOMETRIES))})") from None


def template_for(variant: str) -> np.ndarray:
    """The chip template calibrated for a BlazeFace variant ("short" or "full")."""
    if variant == "short":
        return TEMPLATE_SHORT
    if variant == "full":
        return TEMPLATE_FULL
    raise ValueError(f"unknown BlazeFace variant {variant!r}")


def fit_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares similarity (no reflection) with dst ≈ M·[src; 1]. Returns M, 2×3.

    Closed form: with points as complex numbers z (src) and d (dst), minimise Σ wᵢ|a·zᵢ + b − dᵢ|²;
    a = s·e^{iθ} holds scale and rotation, b the translation.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need >= 2 matching points, got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(src),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be non-negative, one per point, not all zero")
    z = src[:, 0] + 1j * src[:, 1]
    d = dst[:, 0] + 1j * dst[:, 1]
    wz = (w * z).sum() / w.sum()
    wd = (w * d).sum() / w.sum()
    zc, dc = z - wz, d - wd
    denom = float((w * (zc.real**2 + zc.imag**2)).sum())
    if denom <= 1e-12:
        raise ValueError("source points coincide; cannot fit a similarity")
    a = (w * np.conj(zc) * dc).sum() / denom
    b = wd - a * wz
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], dtype=np.float64)


def chip_transform(
    keypoints6: np.ndarray,
    template: np.ndarray | None = None,
    use: Sequence[int] = DEFAULT_KEYPOINTS,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """The 2×3 image->chip similarity that puts the chosen keypoints on the template.

    `weights` (one per used keypoint) default to DEFAULT_WEIGHTS for DEFAULT_KEYPOINTS, else uniform.
    """
    kps = np.asarray(keypoints6, dtype=np.float64).reshape(-1, 2)
    if kps.shape[0] != 6:
        raise ValueError(f"expected 6 BlazeFace keypoints, got {kps.shape[0]}")
    tpl = TEMPLATE if template is None else np.asarray(template, dtype=np.float64)
    idx = list(use)
    if weights is None and tuple(idx) == DEFAULT_KEYPOINTS:
        weights = DEFAULT_WEIGHTS
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    if w is not None and w.shape != (len(idx),):
        raise ValueError(f"{len(idx)} keypoints but {w.size} weights")
    return fit_similarity(kps[idx], tpl[idx], w)


def warp_to_chip(rgb: np.ndarray, m: np.ndarray, size: int = CHIP_SIZE) -> np.ndarray:
    """Warp with the image->chip similarity `m` (2×3), pre-shrinking large faces by a pyramid."""
    m = np.array(m, dtype=np.float64)
    image = rgb
    # |a| = chip pixels per image pixel. While one chip pixel spans more than 2 image pixels,
    # halve the face region first (Gaussian pyrDown; point p maps to p/2), as dlib's chip does.
    while np.hypot(m[0, 0], m[1, 0]) < 0.5:
        inv = cv2.invertAffineTransform(m)
        corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], float)
        pts = corners @ inv.T
        h, w = image.shape[:2]
        margin = 6.0  # source pixels, so that the blur kernel sees real pixels at the chip's edge
        x0 = int(max(0, np.floor(pts[:, 0].min() - margin)))
        y0 = int(max(0, np.floor(pts[:, 1].min() - margin)))
        x1 = int(min(w, np.ceil(pts[:, 0].max() + margin) + 1))
        y1 = int(min(h, np.ceil(pts[:, 1].max() + margin) + 1))
        if x1 - x0 < 2 or y1 - y0 < 2:
            break  # face entirely outside the image: nothing to shrink
        image = cv2.pyrDown(image[y0:y1, x0:x1])
        # chip = A·p + t with p = (x0, y0) + 2·q for a point q of the shrunk crop.
        m[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
        m[:, :2] *= 2.0
    return cv2.warpAffine(
        image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )


def align_to_chip(
    rgb: np.ndarray,
    keypoints6: np.ndarray,
    template: np.ndarray | None = None,
    use: Sequence[int] = DEFAULT_KEYPOINTS,
    weights: Sequence[float] | None = None,
    size: int = CHIP_SIZE,
) -> np.ndarray:
    """A uint8 size×size×3 RGB chip from BlazeFace's 6 keypoints (default: dlib's 150×150 chip)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 H×W×3 image, got {rgb.dtype} {rgb.shape}")
    m = chip_transform(keypoints6, template, use, weights)
    return warp_to_chip(rgb, m, size)


def align_for(rgb: np.ndarray, keypoints6: np.ndarray, chip: ChipGeometry) -> np.ndarray:
    """The chip of geometry `chip` for one face."""
    return align_to_chip(rgb, keypoints6, chip.template, chip.keypoints, size=chip.size)
