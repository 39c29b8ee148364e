"""`picamera2`: the Raspberry Pi CSI camera through libcamera. Imported only when configured."""

from __future__ import annotations

import time
from typing import Any

from .base import Frame, SourceError


class Picamera2Source:
    def __init__(self, width: int, height: int, fps: int, timeout_s: float = 2.0) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.timeout_s = timeout_s
        self.description = f"picamera2 {width}x{height}@{fps}"
        self._cam: Any = None
        self._seq = 0

    def open(self) -> None:
        try:
            from picamera2 import Picamera2  # Raspberry Pi OS: apt install python3-picamera2
        except ImportError as exc:
            raise SourceError(
                "picamera2 is not installed (Raspberry Pi OS: apt install python3-picamera2, "
                "and a venv with --system-site-packages)"
            ) from exc
        try:
            cam = Picamera2()
            # libcamera's "BGR888" is laid out R, G, B in memory: the RGB array the pipeline wants.
            config = cam.create_video_configuration(
                main={"size": (self.width, self.height), "format": "BGR888"},
                controls={"FrameRate": float(self.fps)},
                buffer_count=2,  # few buffers: we always want the newest frame
            )
            cam.configure(config)
            cam.start()
        except Exception as exc:  # libcamera raises many types; all mean "no camera now"
            raise SourceError(f"picamera2 cannot start the camera: {exc}") from exc
        self._cam = cam

    def read(self) -> Frame:
        if self._cam is None:
            raise SourceError("picamera2 is not open")
        try:
            # wait= turns a loose ribbon cable into a timeout instead of a hang.
            image = self._cam.capture_array("main", wait=self.timeout_s)
        except Exception as exc:
            raise SourceError(f"picamera2 gave no frame within {self.timeout_s:g} s: {exc}") from exc
        seq = self._seq
        self._seq += 1
        return Frame(image=image[:, :, :3], seq=seq, ts=time.monotonic())

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            finally:
                self._cam = None
