"""The capture thread: owns the source, keeps only the newest frame, reopens a lost camera.

The consumer (the inference loop) always gets the newest frame; frames it had no time for are
dropped and counted, never queued, so recognition never lags behind the customer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .base import EndOfStream, Frame, FrameSource, SourceError
from .transform import rotate

log = logging.getLogger("tillface.camera")


@dataclass(frozen=True)
class CameraStatus:
    state: str  # "starting" | "ok" | "reconnecting" | "finished" | "stopped"
    description: str
    frames: int
    dropped: int
    reopen_attempts: int
    last_error: str | None


class CameraWorker:
    def __init__(
        self,
        source: FrameSource,
        rotation: int = 0,
        backoff_s: tuple[float, float] = (1.0, 30.0),
        on_state: Callable[[CameraStatus], None] | None = None,
        lockstep: bool = False,
    ) -> None:
        """`lockstep=True` makes the capture wait until the consumer took each frame (replays only:
        a reproducible experiment that drops nothing)."""
        self._source = source
        self._rotation = rotation
        self._backoff = backoff_s
        self._on_state = on_state
        self._lockstep = lockstep
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._taken = True
        self._state = "starting"
        self._frames = 0
        self._dropped = 0
        self._attempts = 0
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)
        self.heartbeat = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)

    @property
    def status(self) -> CameraStatus:
        with self._cond:
            return CameraStatus(
                self._state,
                self._source.description,
                self._frames,
                self._dropped,
                self._attempts,
                self._last_error,
            )

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._state == "finished" and self._taken

    def newest(self, timeout: float) -> Frame | None:
        """The newest frame not yet handed out, waiting up to `timeout` s; None if there is none."""
        with self._cond:
            if self._taken:
                self._cond.wait_for(
                    lambda: not self._taken or self._state in ("finished", "stopped"), timeout
                )
            if self._taken or self._latest is None:
                return None
            self._taken = True
            self._cond.notify_all()
            return self._latest

    def _set_state(self, state: str, error: str | None = None) -> None:
        with self._cond:
            changed = state != self._state
            self._state = state
            if error is not None:
                self._last_error = error
            self._cond.notify_all()
        if changed:
            if state == "reconnecting":
                log.warning("camera %s lost: %s", self._source.description, error)
            else:
                log.info("camera %s: %s", self._source.description, state)
            if self._on_state:
                self._on_state(self.status)

    def _run(self) -> None:
        delay = self._backoff[0]
        opened = False
        while not self._stop.is_set():
            if not opened:
                try:
                    self._source.open()
                    opened = True
                    delay = self._backoff[0]
                    self._set_state("ok")
                except SourceError as exc:
                    self._attempts += 1
                    self._set_state("reconnecting", str(exc))
                    self._stop.wait(delay)
                    delay = min(delay * 2, self._backoff[1])
                    continue
            try:
                frame = self._source.read()
            except EndOfStream:
                self._source.close()
                self._set_state("finished")
                return
            except SourceError as exc:
                self._source.close()
                opened = False
                self._attempts += 1
                self._set_state("reconnecting", str(exc))
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            self.heartbeat = time.monotonic()
            image = rotate(frame.image, self._rotation) if self._rotation else frame.image
            self._publish(Frame(image, frame.seq, frame.ts, captured=self.heartbeat))
        self._source.close()
        self._set_state("stopped")

    def _publish(self, frame: Frame) -> None:
        with self._cond:
            if self._lockstep:
                self._cond.wait_for(lambda: self._taken or self._stop.is_set())
            elif not self._taken:
                self._dropped += 1
            self._latest = frame
            self._taken = False
            self._frames += 1
            self._cond.notify_all()
