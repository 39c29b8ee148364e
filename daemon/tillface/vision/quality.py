"""Face quality measures, from the detector's keypoints and the aligned chip.

Each measure is in a unit a technician can reason about (pixels, degrees, grey levels), so the
quality gate's thresholds in the config read naturally. `score` folds them into 0..1 for ranking the
frames of one visit (the best frames are fused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from .detector import Detection


class QualityLimits(Protocol):
    """The quality gate's thresholds (the config's `[quality]` section)."""

    @property
    def min_eye_distance_px(self) -> float: ...
    @property
    def max_yaw_deg(self) -> float: ...
    @property
    def max_pitch_deg(self) -> float: ...
    @property
    def min_sharpness(self) -> float: ...
    @property
    def min_brightness(self) -> float: ...
    @property
    def max_brightness(self) -> float: ...
    @property
    def max_clipped(self) -> float: ...


@dataclass(frozen=True)
class Quality:
    eye_distance_px: float  # distance between the eye keypoints in the source image
    yaw_deg: float  # left/right head turn estimated from the nose offset between the eyes
    pitch_deg: float  # up/down estimated from nose height between eyes and mouth (0 = frontal)
    roll_deg: float  # in-plane tilt of the eye line
    sharpness: float  # variance of the Laplacian of the chip's centre (grey levels²)
    brightness: float  # mean grey level of the chip's centre, 0..255
    clipped: float  # fraction of centre pixels at 0..5 or 250..255
    detector_score: float

    @property
    def score(self) -> float:
        """0..1: higher is a better frame to recognise from."""
        size = min(1.0, self.eye_distance_px / 40.0)
        pose = max(0.0, 1.0 - (abs(self.yaw_deg) / 45.0) ** 2 - (abs(self.pitch_deg) / 40.0) ** 2)
        sharp = min(1.0, self.sharpness / 100.0)
        exposure = max(0.0, 1.0 - abs(self.brightness - 120.0) / 120.0) * (1.0 - self.clipped)
        return float(self.detector_score * size * pose * (0.5 + 0.5 * sharp) * (0.5 + 0.5 * exposure))

    def to_dict(self) -> dict[str, float]:
        return {
            "eye_distance_px": round(self.eye_distance_px, 1),
            "yaw_deg": round(self.yaw_deg, 1),
            "pitch_deg": round(self.pitch_deg, 1),
            "roll_deg": round(self.roll_deg, 1),
            "sharpness": round(self.sharpness, 1),
            "brightness": round(self.brightness, 1),
            "clipped": round(self.clipped, 3),
            "score": round(self.score, 3),
        }


# Frontal-face proportions from the alignment template (chip pixels): eye distance over the
# eye-to-mouth height, and where the nose tip sits between eye line (0) and mouth (1).
_FRONTAL_EYES_OVER_HEIGHT = 0.92
_FRONTAL_NOSE_HEIGHT = 0.54


def measure_quality(detection: Detection, chip: np.ndarray) -> Quality:
    kp = detection.keypoints.astype(np.float64)
    right_eye, left_eye, nose, mouth = kp[0], kp[1], kp[2], kp[3]
    eye_vec = left_eye - right_eye
    eye_dist = float(np.hypot(*eye_vec))
    eye_mid = (right_eye + left_eye) / 2.0
    roll = math.degrees(math.atan2(float(eye_vec[1]), float(eye_vec[0])))
    # Rotate into the eye-line frame so that roll does not leak into yaw/pitch.
    c, s = math.cos(math.radians(-roll)), math.sin(math.radians(-roll))
    rot = np.array([[c, -s], [s, c]], dtype=np.float64)
    nose_local = rot @ (nose - eye_mid)
    mouth_local = rot @ (mouth - eye_mid)
    height = max(float(mouth_local[1]), 1e-6)
    # Yaw foreshortens the eye distance but not the eye-to-mouth height: cos(yaw) ≈ ratio / frontal
    # ratio. The nose's side of the eye midpoint gives the sign.
    ratio = min(1.0, (eye_dist / height) / _FRONTAL_EYES_OVER_HEIGHT)
    yaw = math.degrees(math.acos(ratio)) * (1.0 if nose_local[0] >= 0 else -1.0)
    # Pitch moves the protruding nose tip up or down between eyes and mouth (~half the height).
    offset = (float(nose_local[1]) / height - _FRONTAL_NOSE_HEIGHT) / 0.5
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, offset))))

    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    centre = grey[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
    sharpness = float(cv2.Laplacian(centre, cv2.CV_32F).var())
    brightness = float(centre.mean())
    clipped = float(np.mean((centre <= 5) | (centre >= 250)))
    return Quality(
        eye_distance_px=eye_dist,
        yaw_deg=yaw,
        pitch_deg=pitch,
        roll_deg=roll,
        sharpness=sharpness,
        brightness=brightness,
        clipped=clipped,
        detector_score=float(detection.score),
    )


def gate(quality: Quality, limits: QualityLimits) -> str | None:
    """None when the face is good enough to recognise, else the first reason it is not."""
    if quality.eye_distance_px < limits.min_eye_distance_px:
        return "too small"
    if abs(quality.yaw_deg) > limits.max_yaw_deg:
        return "turned away"
    if abs(quality.pitch_deg) > limits.max_pitch_deg:
        return "looking up or down"
    if quality.sharpness < limits.min_sharpness:
        return "blurred"
    if quality.brightness < limits.min_brightness:
        return "too dark"
    if quality.brightness > limits.max_brightness:
        return "over-exposed"
    if quality.clipped > limits.max_clipped:
        return "clipped exposure"
    return None
