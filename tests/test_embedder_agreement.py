"""The converted int8 embedder agrees with dlib's own ResNet on real faces (dlib-bin as the reference)."""

from __future__ import annotations

import csv

import dlib
import numpy as np

from tillface.evaluation.reference import _model_file
from tillface.imageio import read_rgb
from tillface.vision.embedder import Embedder


def test_int8_embedder_matches_dlib_on_faces_dev(faces_dir, manifest):
    detector = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(str(_model_file("shape_predictor_5_face_landmarks.dat")))
    net = dlib.face_recognition_model_v1(str(_model_file("dlib_face_recognition_resnet_model_v1.dat")))
    embedder = Embedder(manifest.path("dlib-resnet-v1-int8"), num_threads=2)
    with open(faces_dir / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # A spread over every source: every 97th photo.
    cosines = []
    for row in rows[::97]:
        rgb = read_rgb(faces_dir / row["path"])
        rects = detector(rgb, 1)
        if not rects:
            continue
        chip = dlib.get_face_chip(rgb, shapes(rgb, rects[0]), size=150, padding=0.25)
        reference = np.asarray(net.compute_face_descriptor(chip), dtype=np.float32)
        ours = embedder.embed(np.asarray(chip))
        cosines.append(float(ours @ (reference / np.linalg.norm(reference))))
    assert len(cosines) >= 30, f"only {len(cosines)} faces found by dlib"
    print(f"cosine to dlib over {len(cosines)} faces: min {min(cosines):.5f}, mean {np.mean(cosines):.5f}")
    assert min(cosines) >= 0.99
    assert float(np.mean(cosines)) >= 0.999
