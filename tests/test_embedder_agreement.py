"""The converted int8 embedder agrees with dlib's own ResNet on real faces (dlib-bin as the reference)."""

from __future__ import annotations

import csv

import dlib
import numpy as np

from tillface.evaluation.reference import _model_file
from tillface.imageio import read_rgb
from tillface.vision.align import GEOMETRIES
from tillface.vision.embedder import Embedder


def test_int8_embedder_matches_dlib_on_faces_dev(faces_dir, manifest):
    detector = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(str(_model_file("shape_predictor_5_face_landmarks.dat")))
    net = dlib.face_recognition_model_v1(str(_model_file("dlib_face_recognition_resnet_model_v1.dat")))
    embedder = Embedder(manifest.path("dlib-resnet-v1-int8"), GEOMETRIES["dlib-150"], num_threads=2)
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


def test_int8_sface_matches_opencv_on_faces_dev(faces_dir, manifest):
    """Our int8 SFace against OpenCV running the published ONNX file, on OpenCV's own aligned chips.

    The build measured cosine min 0.956 / mean 0.991 on 200 faces (models/manifest.json): the int8
    activations cost that much; the float conversion is exact."""
    import cv2

    from tillface.modelbuild import opencv_zoo

    files = opencv_zoo.fetch()
    net = opencv_zoo.reference_net(files[opencv_zoo.SFACE_ONNX])
    detector = cv2.FaceDetectorYN.create(str(files[opencv_zoo.YUNET_ONNX]), "", (320, 320), 0.6, 0.3, 5000)
    recognizer = cv2.FaceRecognizerSF.create(str(files[opencv_zoo.SFACE_ONNX]), "")
    embedder = Embedder(manifest.path("sface-2021dec-int8"), GEOMETRIES["arcface-112"], num_threads=2)
    with open(faces_dir / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cosines = []
    for row in rows[::97]:
        bgr = cv2.cvtColor(read_rgb(faces_dir / row["path"]), cv2.COLOR_RGB2BGR)
        detector.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = detector.detect(bgr)
        if faces is None or len(faces) == 0:
            continue
        crop = recognizer.alignCrop(bgr, max(faces, key=lambda r: r[2] * r[3]))
        net.setInput(cv2.dnn.blobFromImage(crop, 1.0, (112, 112), (0, 0, 0), swapRB=True, crop=False))
        reference = net.forward().reshape(-1)
        ours = embedder.embed(np.ascontiguousarray(crop[:, :, ::-1]))
        cosines.append(float(ours @ (reference / np.linalg.norm(reference))))
    assert len(cosines) >= 30, f"only {len(cosines)} faces found by YuNet"
    print(f"cosine to OpenCV over {len(cosines)} faces: min {min(cosines):.5f}, mean {np.mean(cosines):.5f}")
    assert min(cosines) >= 0.95
    assert float(np.mean(cosines)) >= 0.985
