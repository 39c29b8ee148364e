"""`replay:<folder of images | video file>`: recorded visits played back at a fixed frame rate.

Frames are stamped `seq / fps`, so a replay is a reproducible experiment. With `realtime=True` frames
are also released on the wall clock at that rate, as a camera would, and a slow consumer misses the
frames it could not keep up with; with `realtime=False` the replay runs as fast as it is read.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from ..imageio import ImageReadError, read_rgb
from .base import EndOfStream, Frame, SourceError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp", ".gif"}


class ReplaySource:
    def __init__(self, target: str | Path, fps: float, realtime: bool = True) -> None:
        self.path = Path(target)
        self.fps = float(fps)
        self.realtime = realtime
        self.description = f"replay:{self.path} at {fps:g} fps"
        self._files: list[Path] = []
        self._video: cv2.VideoCapture | None = None
        self._seq = 0
        self._t0 = 0.0

    def open(self) -> None:
        self.close()
        if self.path.is_dir():
            self._files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._files:
                raise SourceError(f"replay folder {self.path} holds no images")
        elif self.path.is_file():
            self._video = cv2.VideoCapture(str(self.path))
            if not self._video.isOpened():
                raise SourceError(f"replay video {self.path} cannot be opened")
        else:
            raise SourceError(f"replay source {self.path} does not exist")
        # A reopened replay carries on where it stopped (a camera that comes back does not rewind).
        self._t0 = time.monotonic() - self._seq / self.fps
        if self._video is not None and self._seq:
            self._video.set(cv2.CAP_PROP_POS_FRAMES, self._seq)

    def read(self) -> Frame:
        seq = self._seq
        if self.realtime:
            due = self._t0 + seq / self.fps
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        image = self._next_image(seq)
        self._seq += 1
        return Frame(image=image, seq=seq, ts=seq / self.fps)

    def _next_image(self, seq: int) -> np.ndarray:
        if self._video is not None:
            ok, bgr = self._video.read()
            if not ok:
                raise EndOfStream(self.description)
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if seq >= len(self._files):
            raise EndOfStream(self.description)
        try:
            return read_rgb(self._files[seq])
        except ImageReadError as exc:
            raise SourceError(str(exc)) from exc

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None
