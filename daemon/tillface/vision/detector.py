"""BlazeFace face detection (MediaPipe short-range 128×128 and full-range 192×192 TFLite models).

Pre-processing follows MediaPipe's face detection graph: the image is scaled to fit the model input
keeping its aspect ratio, centred and padded with black, and normalised to [-1, 1]. The model returns
one 16-value regression (box centre/size + 6 keypoints, in input pixels relative to an anchor) and one
raw score per SSD anchor. Scores are clipped to ±100 and passed through a sigmoid; overlapping boxes
are merged with MediaPipe's weighted NMS (score-weighted mean of every box that overlaps the best one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from tillface.vision.runtime import RuntimeReport, TfliteModel

Variant = Literal["short", "full"]

# Keypoint indices, BlazeFace order. "Right"/"left" are the *subject's*: in an ordinary (unmirrored)
# photo of a frontal face the subject's right eye is on the image's left (smaller x).
RIGHT_EYE = 0
LEFT_EYE = 1
NOSE_TIP = 2
MOUTH_CENTRE = 3
RIGHT_EAR_TRAGION = 4
LEFT_EAR_TRAGION = 5
KEYPOINT_NAMES = (
    "right_eye",
    "left_eye",
    "nose_tip",
    "mouth_centre",
    "right_ear_tragion",
    "left_ear_tragion",
)


@dataclass(frozen=True)
class Detection:
    """One face in source-image pixels (pixel-centre convention: pixel (i, j)'s centre is at x=i, y=j).

    box: (4,) float32 x0, y0, x1, y1.
    keypoints: (6, 2) float32 x, y in BlazeFace order: 0 subject's right eye (image left in an
        unmirrored photo), 1 subject's left eye, 2 nose tip, 3 mouth centre, 4 subject's right ear
        tragion, 5 subject's left ear tragion.
    score: sigmoid confidence in [0, 1].
    """

    box: np.ndarray
    keypoints: np.ndarray
    score: float

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])


@dataclass(frozen=True)
class _SsdOptions:
    """The subset of MediaPipe's SsdAnchorsCalculatorOptions that BlazeFace uses."""

    input_size: int
    strides: tuple[int, ...]
    # MediaPipe adds one extra anchor per location when interpolated_scale_aspect_ratio > 0.
    interpolated_anchor: bool
    # All BlazeFace anchors are fixed size (w = h = 1), so only their centres matter.
    anchor_offset: float = 0.5


_SSD = {
    "short": _SsdOptions(input_size=128, strides=(8, 16, 16, 16), interpolated_anchor=True),
    "full": _SsdOptions(input_size=192, strides=(4,), interpolated_anchor=False),
}

_NUM_COORDS = 16
# With pad_if_none, a face whose box exceeds this fraction of the image's width or height is
# searched again on the padded image (its keypoints are poor without context around the face).
LARGE_FACE_FRACTION = 0.6
_NUM_KEYPOINTS = 6
_SCORE_CLIP = 100.0


def ssd_anchor_centres(options: _SsdOptions) -> np.ndarray:
    """Anchor centres (N, 2) as x, y in [0, 1], in the order the model's outputs use.

    Consecutive layers with the same stride share one feature map; each location of that map gets
    one anchor per layer (aspect ratio 1.0), plus one interpolated-scale anchor per layer if enabled.
    """
    centres = []
    strides = options.strides
    layer = 0
    while layer < len(strides):
        per_location = 0
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            per_location += 2 if options.interpolated_anchor else 1
            last += 1
        size = math.ceil(options.input_size / strides[layer])
        grid = (np.arange(size, dtype=np.float32) + options.anchor_offset) / size
        ys, xs = np.meshgrid(grid, grid, indexing="ij")
        xy = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(xy, per_location, axis=0))
        layer = last
    return np.concatenate(centres, axis=0).astype(np.float32)


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(
    boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's WEIGHTED non-maximum suppression.

    Take the best remaining box; every remaining box whose IoU with it exceeds `iou_threshold`
    (the best one included) is removed and merged into one detection whose box and keypoints are
    the score-weighted mean of the group and whose score is the best one's.
    """
    order = np.argsort(-scores, kind="stable")
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    remaining = np.arange(len(scores))
    out = []
    while remaining.size:
        best = remaining[0]
        iou = _iou_one_to_many(boxes[best], boxes[remaining])
        group_mask = iou > iou_threshold
        group_mask[0] = True
        group = remaining[group_mask]
        w = scores[group]
        total = float(w.sum())
        box = (boxes[group] * w[:, None]).sum(axis=0) / total
        kps = (keypoints[group] * w[:, None, None]).sum(axis=0) / total
        out.append((box.astype(np.float32), kps.astype(np.float32), float(scores[best])))
        remaining = remaining[~group_mask]
    return out


class BlazeFaceDetector:
    """BlazeFace on a TFLite interpreter. Not thread-safe: use one instance per thread."""

    def __init__(
        self,
        model_path: Path,
        variant: Variant,
        num_threads: int = 2,
        score_threshold: float = 0.5,
        iou_threshold: float = 0.3,
    ) -> None:
        if variant not in _SSD:
            raise ValueError(f"variant must be 'short' or 'full', got {variant!r}")
        self.variant: Variant = variant
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self._raw_threshold = _logit(self.score_threshold)
        self._model = TfliteModel(Path(model_path), num_threads=num_threads)

        shape = self._model.input_shape
        options = _SSD[variant]
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or shape[1] != shape[2]:
            raise ValueError(f"{model_path}: unexpected input shape {shape} for BlazeFace")
        if shape[1] != options.input_size:
            raise ValueError(
                f"{model_path}: input is {shape[1]}×{shape[2]}, but the {variant!r} variant expects "
                f"{options.input_size}×{options.input_size}; wrong model for this variant?"
            )
        if self._model.input_dtype != np.float32:
            raise ValueError(f"{model_path}: expected a float32 input, got {self._model.input_dtype}")
        self.input_size = options.input_size

        # The regressor output is (1, N, 16), the classifier (1, N, 1); their order varies by model.
        out_shapes = self._model.output_shapes
        reg = [i for i, s in enumerate(out_shapes) if s[-1] == _NUM_COORDS]
        cls = [i for i, s in enumerate(out_shapes) if s[-1] == 1]
        if len(reg) != 1 or len(cls) != 1:
            raise ValueError(f"{model_path}: outputs {out_shapes} are not BlazeFace's (N×16, N×1)")
        self._reg_index, self._cls_index = reg[0], cls[0]
        self._anchors = ssd_anchor_centres(options) * np.float32(self.input_size)  # in input pixels
        n = out_shapes[reg[0]][-2]
        if n != len(self._anchors) or out_shapes[cls[0]][-2] != n:
            raise ValueError(
                f"{model_path}: model has {n} anchors but the {variant!r} layout gives {len(self._anchors)}"
            )

        s = self.input_size
        self._canvas = np.zeros((s, s, 3), dtype=np.uint8)
        self._tensor = np.zeros((1, s, s, 3), dtype=np.float32)

    @property
    def num_anchors(self) -> int:
        return len(self._anchors)

    @property
    def runtime_report(self) -> RuntimeReport:
        """What the model runs on (measured once, at load)."""
        return self._model.runtime_report

    def detect(self, rgb: np.ndarray, pad_if_none: bool = False) -> list[Detection]:
        """Faces in an RGB uint8 H×W×3 image, best score first.

        With `pad_if_none`, when nothing is found, or when the best face fills most of the image
        (box wider or taller than LARGE_FACE_FRACTION of the image), the image is zero-padded by half
        its size on each side and searched once more. BlazeFace needs context around a face: it misses
        tight crops, and on faces that fill the frame its keypoints are poor. A large-face retry
        replaces the first result only if it finds a face with at least the same score.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 H×W×3 image, got {rgb.dtype} {rgb.shape}")
        found = self._detect_once(rgb)
        if not pad_if_none:
            return found
        h, w = rgb.shape[:2]
        if found:
            top = found[0]
            if top.width < LARGE_FACE_FRACTION * w and top.height < LARGE_FACE_FRACTION * h:
                return found
        py, px = h // 2, w // 2
        padded = cv2.copyMakeBorder(rgb, py, py, px, px, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        retry = self._detect_once(padded)
        if not retry or (found and retry[0].score < found[0].score):
            return found
        shift = np.array([px, py], dtype=np.float32)
        box_shift = np.tile(shift, 2)
        return [Detection(box=d.box - box_shift, keypoints=d.keypoints - shift, score=d.score) for d in retry]

    def _detect_once(self, rgb: np.ndarray) -> list[Detection]:
        h, w = rgb.shape[:2]
        s = self.input_size
        scale = min(s / w, s / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        x_off, y_off = (s - nw) // 2, (s - nh) // 2
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(rgb, (nw, nh), interpolation=interp)
        canvas = self._canvas
        if nw != s or nh != s:
            canvas.fill(0)
        canvas[y_off : y_off + nh, x_off : x_off + nw] = resized
        np.multiply(canvas, np.float32(1 / 127.5), out=self._tensor[0], casting="unsafe")
        np.subtract(self._tensor, np.float32(1.0), out=self._tensor)

        outputs = self._model.run(self._tensor)
        raw = outputs[self._cls_index].reshape(-1)
        cand = np.flatnonzero(raw > self._raw_threshold)
        if cand.size == 0:
            return []
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw[cand], -_SCORE_CLIP, _SCORE_CLIP)))
        reg = outputs[self._reg_index].reshape(-1, _NUM_COORDS)[cand]
        anchors = self._anchors[cand]

        # Decode into model-input pixels (fixed-size anchors: offsets are in input pixels).
        cx = reg[:, 0] + anchors[:, 0]
        cy = reg[:, 1] + anchors[:, 1]
        half_w, half_h = reg[:, 2] * 0.5, reg[:, 3] * 0.5
        boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
        kps = reg[:, 4:].reshape(-1, _NUM_KEYPOINTS, 2) + anchors[:, None, :]

        # Undo the letterbox. The model's coordinates are continuous (pixel i spans [i, i+1]); the
        # results use the pixel-centre convention of OpenCV and dlib (pixel i's centre is at i).
        inv = np.array([w / nw, h / nh], dtype=np.float32)
        offset = np.array([x_off, y_off], dtype=np.float32)
        boxes = (boxes - np.tile(offset, 2)) * np.tile(inv, 2) - np.float32(0.5)
        kps = (kps - offset) * inv - np.float32(0.5)

        merged = weighted_nms(boxes, kps, scores.astype(np.float32), self.iou_threshold)
        return [Detection(box=b, keypoints=k, score=sc) for b, k, sc in merged]
