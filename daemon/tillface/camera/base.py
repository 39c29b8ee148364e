"""What every camera source delivers, and the interface they share.

Sources are plain blocking readers; `worker.CameraWorker` runs one on its own thread, keeps only the
newest frame, and reopens a lost source with back-off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One camera frame: RGB uint8 H×W×3, held in memory only (privacy rule 1)."""

    image: np.ndarray
    seq: int  # 0, 1, 2, ... per source instance
    ts: float  # capture time, seconds: monotonic clock for live cameras, seq/fps for replays
    captured: float = 0.0  # time.monotonic() when the frame was delivered (for latency figures)


class SourceError(RuntimeError):
    """The source cannot deliver frames now (unplugged, file gone, pipeline failed)."""


class EndOfStream(Exception):
    """A finite source (replay, video file) has delivered its last frame."""


class FrameSource(Protocol):
    """A camera. `read` blocks until the next frame, raises SourceError when the camera is lost and
    EndOfStream when a finite source is done."""

    description: str

    def open(self) -> None: ...

    def read(self) -> Frame: ...

    def close(self) -> None: ...
