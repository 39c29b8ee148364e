"""Scripted till visits rendered as a replay: a face photo pasted onto a shop background, approaching
the camera, lingering and leaving, with empty frames between customers.

Used by the tests (with real faces-dev photos, rendered into a temporary folder) and by the demo (with
the registry-shipped portrait). The frames are test input, never frames captured by a unit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class ScriptedVisit:
    photo: np.ndarray  # RGB uint8
    identity: str  # who it is (ground truth); "" for a stranger we do not know the name of


@dataclass(frozen=True)
class VisitTruth:
    index: int
    identity: str
    first_frame: int  # first frame showing the face
    last_frame: int  # last frame showing the face


def shop_background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A plain, deterministic shop-like backdrop: wall gradient, shelves, a little sensor noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None, None]
    wall = (np.array([150, 140, 125]) * (1 - 0.3 * y)).astype(np.float32)
    img = np.broadcast_to(wall, (height, width, 3)).copy()
    for i in range(4):
        top = int(height * (0.15 + 0.22 * i))
        img[top : top + 8, :, :] = (90, 70, 50)
        for x in range(0, width, 37):
            colour = rng.integers(40, 220, size=3)
            h = int(rng.integers(20, 45))
            img[max(0, top - h) : top, x + 4 : x + 30] = colour
    img += rng.normal(0, 3, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _paste(frame: np.ndarray, photo: np.ndarray, cx: float, cy: float, scale: float) -> None:
    h, w = photo.shape[:2]
    nw, nh = max(1, int(w * scale)), max(1, int(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    paste_at(frame, cv2.resize(photo, (nw, nh), interpolation=interp), cx, cy)


def paste_at(frame: np.ndarray, img: np.ndarray, cx: float, cy: float) -> None:
    """Paste `img` into `frame` centred at (cx, cy), clipped at the frame's edges."""
    h, w = img.shape[:2]
    x, y = int(cx - w / 2), int(cy - h / 2)
    fh, fw = frame.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, fw), min(y + h, fh)
    if x0 < x1 and y0 < y1:
        frame[y0:y1, x0:x1] = img[y0 - y : y1 - y, x0 - x : x1 - x]


def render_visits(
    visits: Sequence[ScriptedVisit],
    out_dir: Path,
    fps: int = 15,
    size: tuple[int, int] = (640, 480),
    approach_s: float = 1.5,
    linger_s: float = 1.0,
    leave_s: float = 0.5,
    gap_s: float = 2.0,
    final_scale: float = 1.3,
    seed: int = 0,
    lead_s: float | None = None,
    tail_s: float | None = None,
) -> list[VisitTruth]:
    """Write frames `000000.jpg`, ... and `truth.json`; return the ground truth per visit.

    Empty shop for `gap_s` between visits, `lead_s` before the first and `tail_s` after the last
    (both default to `gap_s`).

    `final_scale` is relative to a photo whose face is ~110 px wide (LFW 250×250): at 1.3 the face
    ends ~140 px wide in a 640×480 frame, a customer about 1 m from the camera.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    width, height = size
    background = shop_background(width, height, seed)
    rng = np.random.default_rng(seed)
    n = 0
    truth: list[VisitTruth] = []

    def write(frame: np.ndarray) -> None:
        nonlocal n
        cv2.imwrite(
            str(out_dir / f"{n:06d}.jpg"),
            cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, 92],
        )
        n += 1

    for _ in range(int((gap_s if lead_s is None else lead_s) * fps)):
        write(background)
    for index, visit in enumerate(visits):
        photo = visit.photo
        # Normalise photo size so that faces of every source come out at comparable sizes.
        base = 250.0 / max(photo.shape[:2])
        drift = rng.uniform(-40, 40)
        first = n
        steps_in, steps_stay, steps_out = int(approach_s * fps), int(linger_s * fps), int(leave_s * fps)
        for i in range(steps_in):
            t = (i + 1) / steps_in
            scale = base * (0.45 + (final_scale - 0.45) * t)
            frame = background.copy()
            _paste(frame, photo, width / 2 + drift * (1 - t), height * 0.45, scale)
            write(frame)
        for i in range(steps_stay):
            frame = background.copy()
            _paste(frame, photo, width / 2 + 3 * np.sin(i / 3), height * 0.45, base * final_scale)
            write(frame)
        for i in range(steps_out):
            t = (i + 1) / steps_out
            frame = background.copy()
            _paste(frame, photo, width / 2 + t * width * 0.9, height * 0.45, base * final_scale)
            write(frame)
        truth.append(VisitTruth(index, visit.identity, first, n - 1))
        last = index == len(visits) - 1
        for _ in range(int((tail_s if last and tail_s is not None else gap_s) * fps)):
            write(background)
    (out_dir / "truth.json").write_text(json.dumps([asdict(t) for t in truth], indent=1), encoding="utf-8")
    return truth
