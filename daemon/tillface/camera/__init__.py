"""Camera sources behind one interface, chosen by `[camera] source`; hardware libraries load lazily."""

from __future__ import annotations

from ..config import CameraConfig
from .base import EndOfStream, Frame, FrameSource, SourceError
from .worker import CameraStatus, CameraWorker

__all__ = [
    "CameraStatus",
    "CameraWorker",
    "EndOfStream",
    "Frame",
    "FrameSource",
    "SourceError",
    "make_source",
]


def make_source(config: CameraConfig, realtime_replay: bool = True) -> FrameSource:
    kind, target = config.source_kind, config.source_target
    if kind == "replay":
        from .replay import ReplaySource

        return ReplaySource(target, fps=config.fps, realtime=realtime_replay)
    if kind == "opencv":
        from .opencv_source import OpenCVSource

        return OpenCVSource(target, config.width, config.height, config.fps)
    if kind == "picamera2":
        from .picamera2_source import Picamera2Source

        return Picamera2Source(config.width, config.height, config.fps)
    raise ValueError(f"unknown camera source kind {kind!r}")
