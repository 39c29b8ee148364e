"""`opencv:<device index | device path | GStreamer pipeline | RTSP URL | video file>` via cv2.VideoCapture."""

from __future__ import annotations

import time

import cv2

from .base import EndOfStream, Frame, SourceError


class OpenCVSource:
    def __init__(self, target: str, width: int, height: int, fps: int) -> None:
        self.target = target
        self.width, self.height, self.fps = width, height, fps
        self.description = f"opencv:{target}"
        self._cap: cv2.VideoCapture | None = None
        self._seq = 0
        self._is_file = False

    def _open_capture(self) -> cv2.VideoCapture:
        if self.target.isdigit():
            return cv2.VideoCapture(int(self.target), cv2.CAP_V4L2)
        if "!" in self.target:  # a GStreamer pipeline ending in appsink
            return cv2.VideoCapture(self.target, cv2.CAP_GSTREAMER)
        return cv2.VideoCapture(self.target)

    def open(self) -> None:
        cap = self._open_capture()
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.description} cannot be opened")
        self._is_file = not self.target.isdigit() and "://" not in self.target and "!" not in self.target
        if not self._is_file:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            cap.set(cv2.CAP_PROP_FPS, self.fps)
            # Keep the driver's queue short so that a read returns a fresh frame, not an old one.
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._cap = cap

    def read(self) -> Frame:
        if self._cap is None:
            raise SourceError(f"{self.description} is not open")
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            if self._is_file:
                raise EndOfStream(self.description)
            raise SourceError(f"{self.description} returned no frame")
        seq = self._seq
        self._seq += 1
        ts = seq / self.fps if self._is_file else time.monotonic()
        return Frame(image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), seq=seq, ts=ts)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
