"""Alignment of BlazeFace keypoints to dlib's 150×150 face chip, checked against dlib itself."""

from __future__ import annotations

import csv
import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tillface.vision.align import (
    CHIP_SIZE,
    DEFAULT_KEYPOINTS,
    TEMPLATE_FULL,
    TEMPLATE_SHORT,
    align_to_chip,
    chip_transform,
    fit_similarity,
    template_for,
    warp_to_chip,
)
from tillface.vision.detector import BlazeFaceDetector

FILES = {"short": "face_detection_short_range.tflite", "full": "face_detection_full_range.tflite"}


def model_path(manifest, variant: str) -> Path:
    entry = next(m for m in manifest.models if m.file == FILES[variant])
    return manifest.path(entry.id)


def dlib_models() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "models"


@pytest.fixture(scope="module")
def dlib_ref():
    import dlib

    m = dlib_models()
    return (
        dlib,
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(str(m / "shape_predictor_5_face_landmarks.dat")),
        dlib.face_recognition_model_v1(str(m / "dlib_face_recognition_resnet_model_v1.dat")),
    )


def rows_for(faces_dir: Path, n_per: dict[str, int], seed: int = 5) -> list[dict[str, str]]:
    with open(faces_dir / "labels.csv", encoding="utf-8") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["path"])
    rng = random.Random(seed)
    out = []
    for key, n in n_per.items():
        pool = [r for r in rows if r["source"] == key or key in r["tags"].split(";")]
        rng.shuffle(pool)
        out.extend(pool[:n])
    return out


def dlib_chip_to_image(details) -> np.ndarray:
    """dlib's extract_image_chip geometry: chip corners -> corners of `rect` rotated about its centre."""
    r = details.rect
    cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
    c, s = np.cos(details.angle), np.sin(details.angle)
    corners = [(r.left(), r.top()), (r.right(), r.top()), (r.left(), r.bottom())]
    dst = np.array([(cx + c * (x - cx) - s * (y - cy), cy + s * (x - cx) + c * (y - cy)) for x, y in corners])
    n = details.cols - 1
    src = np.array([[0, 0, 1], [n, 0, 1], [0, n, 1]], dtype=float)
    return np.linalg.solve(src, dst).T


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# ---------------------------------------------------------------- geometry


def test_fit_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    theta, scale, t = 0.3, 0.7, np.array([12.0, -4.0])
    rot = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    dst = src @ rot.T + t
    m = fit_similarity(src, dst)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)
    # Weights pull the fit towards the heavily weighted points.
    noisy = dst.copy()
    noisy[4] += [10, 0]
    light = fit_similarity(src, noisy, np.array([1, 1, 1, 1, 0.01]))
    heavy = fit_similarity(src, noisy, np.array([1, 1, 1, 1, 100.0]))
    err = lambda m: np.linalg.norm(src[4] @ m[:, :2].T + m[:, 2] - noisy[4])  # noqa: E731
    assert err(heavy) < 0.5 < err(light)
    with pytest.raises(ValueError):
        fit_similarity(src[:1], dst[:1])


def test_template_is_a_plausible_frontal_face():
    for tpl in (TEMPLATE_SHORT, TEMPLATE_FULL):
        assert tpl.shape == (6, 2)
        right_eye, left_eye, nose, mouth = tpl[0], tpl[1], tpl[2], tpl[3]
        assert right_eye[0] < 74.5 < left_eye[0]
        assert abs((right_eye[0] + left_eye[0]) / 2 - 74.5) < 3
        assert abs(right_eye[1] - left_eye[1]) < 2
        assert 45 < left_eye[0] - right_eye[0] < 65
        assert right_eye[1] < nose[1] < mouth[1] < 120
    np.testing.assert_array_equal(template_for("short"), TEMPLATE_SHORT)
    with pytest.raises(ValueError):
        template_for("huge")


def test_keypoints_on_the_template_give_an_identity_warp():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
    m = chip_transform(TEMPLATE_SHORT, TEMPLATE_SHORT)
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    chip = align_to_chip(img, TEMPLATE_SHORT, TEMPLATE_SHORT)
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    np.testing.assert_array_equal(chip, img)


def test_pyramid_preshrink_matches_direct_warp_on_smooth_images():
    # A smooth image (no aliasing either way): pre-shrinking must not move the chip.
    y, x = np.mgrid[0:1200, 0:1200].astype(np.float32)
    img = np.stack(
        [128 + 100 * np.sin(x / 90), 128 + 100 * np.cos(y / 70), 128 + 60 * np.sin((x + y) / 120)], -1
    )
    img = img.astype(np.uint8)
    m = np.array([[0.15, -0.02, -10.0], [0.02, 0.15, -20.0]])  # scale ~6.6 image px per chip px
    shrunk = warp_to_chip(img, m)
    import cv2

    direct = cv2.warpAffine(img, m, (150, 150), flags=cv2.INTER_LINEAR)
    assert np.abs(shrunk.astype(int) - direct.astype(int)).mean() < 2.0


def test_warp_reproduces_dlib_chip_with_dlib_transform(dlib_ref, faces_dir):
    dlib, hog, sp5, _ = dlib_ref
    diffs = []
    for row in rows_for(faces_dir, {"lfw_250_full": 10, "orl_att_faces": 5}):
        rgb = np.asarray(Image.open(faces_dir / row["path"]).convert("RGB"))
        rects = hog(rgb, 1)
        if len(rects) != 1:
            continue
        shape = sp5(rgb, rects[0])
        details = dlib.get_face_chip_details(shape, 150, 0.25)
        i2c = np.linalg.inv(np.vstack([dlib_chip_to_image(details), [0, 0, 1]]))[:2]
        ours = warp_to_chip(rgb, i2c)
        theirs = np.asarray(dlib.get_face_chip(rgb, shape, size=150, padding=0.25))
        diffs.append(np.abs(ours.astype(int) - theirs.astype(int)).mean())
    assert len(diffs) >= 10
    # ~0.5: dlib truncates where OpenCV rounds. Up to ~1.5 where the chip runs past the image edge
    # (dlib zeroes a pixel unless all four neighbours are inside). A wrong geometry gives > 10.
    assert np.median(diffs) < 0.6
    assert max(diffs) < 2.5


# ---------------------------------------------------------------- descriptors


@pytest.mark.parametrize("variant", ["short", "full"])
def test_chip_from_blazeface_matches_dlib_descriptor(variant, dlib_ref, manifest, faces_dir):
    dlib, hog, sp5, facerec = dlib_ref
    det = BlazeFaceDetector(model_path(manifest, variant), variant, num_threads=2)
    rows = rows_for(
        faces_dir, {"lfw_250_full": 24, "orl_att_faces": 4, "yale_faces": 4, "deepface_tests": 4}, seed=11
    )
    # Three LFW photos again at 3× size: their faces take the pyramid pre-shrink path (scale > 2).
    cases = [(row, 1) for row in rows] + [(row, 3) for row in rows[:3]]
    cos = []
    big_faces = 0
    for row, factor in cases:
        img = Image.open(faces_dir / row["path"]).convert("RGB")
        if factor != 1:
            img = img.resize((img.width * factor, img.height * factor), Image.BICUBIC)
        rgb = np.asarray(img)
        rects = hog(rgb, 1)
        if len(rects) != 1:
            continue
        shape = sp5(rgb, rects[0])
        ref = facerec.compute_face_descriptor(
            np.asarray(dlib.get_face_chip(rgb, shape, size=150, padding=0.25))
        )
        faces = det.detect(rgb, pad_if_none=True)
        assert faces, row["path"]
        centre = np.array([rects[0].center().x, rects[0].center().y])
        face = min(faces, key=lambda f: np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre))
        big_faces += np.linalg.norm(face.keypoints[1] - face.keypoints[0]) > 110  # pre-shrink path
        chip = align_to_chip(rgb, face.keypoints, template_for(variant))
        assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
        cos.append(cosine(ref, facerec.compute_face_descriptor(chip)))
    assert len(cos) >= 28
    assert big_faces >= 3
    assert np.mean(cos) >= 0.985
    assert min(cos) >= 0.97


def test_misaligned_chip_is_detectably_worse(dlib_ref, manifest, faces_dir):
    """The descriptor test above can fail: a chip shifted by a few pixels scores clearly lower."""
    dlib, hog, sp5, facerec = dlib_ref
    det = BlazeFaceDetector(model_path(manifest, "full"), "full", num_threads=2)
    good, bad = [], []
    for row in rows_for(faces_dir, {"lfw_250_full": 8}, seed=12):
        rgb = np.asarray(Image.open(faces_dir / row["path"]).convert("RGB"))
        rects = hog(rgb, 1)
        if len(rects) != 1:
            continue
        ref = facerec.compute_face_descriptor(
            dlib.get_face_chip(rgb, sp5(rgb, rects[0]), size=150, padding=0.25)
        )
        kp = det.detect(rgb)[0].keypoints
        good.append(cosine(ref, facerec.compute_face_descriptor(align_to_chip(rgb, kp, TEMPLATE_FULL))))
        shifted = TEMPLATE_FULL + np.array([0.0, 12.0])
        bad.append(cosine(ref, facerec.compute_face_descriptor(align_to_chip(rgb, kp, shifted))))
    assert len(good) >= 6
    assert np.mean(good) > np.mean(bad) + 0.01
    assert tuple(DEFAULT_KEYPOINTS) != (0, 1, 2, 3, 4, 5)  # ears are not used by default
