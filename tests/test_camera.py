"""Camera sources on real files: a replay folder, a video through cv2.VideoCapture, and losing them."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tillface.camera import CameraWorker, EndOfStream, SourceError
from tillface.camera.opencv_source import OpenCVSource
from tillface.camera.replay import ReplaySource


def numbered_frames(n: int, w: int = 160, h: int = 120) -> list[np.ndarray]:
    """Frames whose mean grey level encodes their index, so order can be checked after JPEG."""
    return [np.full((h, w, 3), 10 + 6 * i, dtype=np.uint8) for i in range(n)]


def write_folder(folder: Path, frames: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:06d}.png"), f)


def write_video(path: Path, frames: list[np.ndarray], fps: int = 15) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write MJPG video here"
    for f in frames:
        writer.write(f)
    writer.release()


def level(frame) -> int:
    return round((float(frame.image.mean()) - 10) / 6)


def drain(worker: CameraWorker, limit_s: float = 20.0) -> list:
    got = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and not worker.finished:
        f = worker.newest(timeout=0.2)
        if f is not None:
            got.append(f)
    return got


def test_replay_folder_plays_in_order_with_nominal_timestamps(tmp_path):
    write_folder(tmp_path / "r", numbered_frames(20))
    worker = CameraWorker(ReplaySource(tmp_path / "r", fps=10, realtime=False), lockstep=True)
    worker.start()
    frames = drain(worker)
    worker.stop()
    assert [level(f) for f in frames] == list(range(20))
    assert [f.ts for f in frames] == pytest.approx([i / 10 for i in range(20)])
    assert worker.status.state == "finished" and worker.status.dropped == 0


def test_realtime_replay_drops_stale_frames_for_a_slow_consumer(tmp_path):
    write_folder(tmp_path / "r", numbered_frames(30))
    worker = CameraWorker(ReplaySource(tmp_path / "r", fps=60, realtime=True))
    worker.start()
    got = []
    while not worker.finished:
        f = worker.newest(timeout=0.5)
        if f is not None:
            got.append(level(f))
            time.sleep(0.05)  # slower than 60 fps
    worker.stop()
    assert got == sorted(got) and got[-1] == 29, "newest frames, in order, up to the last"
    assert len(got) < 30 and worker.status.dropped == 30 - len(got)


def test_replay_folder_pulled_and_returned_resumes(tmp_path):
    folder = tmp_path / "r"
    write_folder(folder, numbered_frames(40))
    states = []
    worker = CameraWorker(
        ReplaySource(folder, fps=100, realtime=False),
        backoff_s=(0.05, 0.2),
        on_state=lambda s: states.append(s.state),
        lockstep=True,
    )
    worker.start()
    first = [worker.newest(timeout=2) for _ in range(10)]
    folder.rename(tmp_path / "away")  # the camera is pulled
    deadline = time.monotonic() + 5
    while worker.status.state != "reconnecting" and time.monotonic() < deadline:
        worker.newest(timeout=0.1)
    assert worker.status.state == "reconnecting"
    assert "does not exist" in (worker.status.last_error or "") or "cannot be read" in (
        worker.status.last_error or ""
    )
    time.sleep(0.3)
    (tmp_path / "away").rename(folder)  # and comes back
    rest = drain(worker)
    worker.stop()
    seen = [level(f) for f in first if f is not None] + [level(f) for f in rest]
    assert seen[-1] == 39 and seen == sorted(seen)
    assert "reconnecting" in states and states[-1] == "finished"
    assert worker.status.reopen_attempts >= 1


def test_opencv_source_reads_a_real_video_file(tmp_path):
    video = tmp_path / "till.avi"
    write_video(video, numbered_frames(25))
    source = OpenCVSource(str(video), 640, 480, 15)
    source.open()
    levels = []
    with pytest.raises(EndOfStream):
        while True:
            frame = source.read()
            assert frame.image.shape == (120, 160, 3)
            levels.append(level(frame))
    source.close()
    assert levels == list(range(25))


def test_opencv_file_absent_then_present_is_picked_up(tmp_path):
    video = tmp_path / "later.avi"
    source = OpenCVSource(str(video), 640, 480, 15)
    with pytest.raises(SourceError, match="cannot be opened"):
        source.open()
    worker = CameraWorker(source, backoff_s=(0.05, 0.1), lockstep=True)
    worker.start()
    time.sleep(0.3)
    assert worker.status.state == "reconnecting"
    write_video(tmp_path / "tmp.avi", numbered_frames(10))
    (tmp_path / "tmp.avi").rename(video)
    frames = drain(worker)
    worker.stop()
    assert [level(f) for f in frames] == list(range(10))
    assert worker.status.state == "finished"
