"""Follows face boxes from frame to frame; who the customer is, and whether a track is still the same
person, is decided by `session.py` from embeddings.

Association is greedy by IoU (falling back to centre distance, for a face that moves fast while
coming closer) against where the track's box should be by now (moving on at its last velocity),
preferring a box of the track's own size; a track survives `max_age_s` without detections, so one
missed frame is not a new track. Each track says how many frames it missed before its latest
detection and where it was before, so that the session can re-check a face that comes back, grows
suddenly or jumps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..vision.detector import Detection


@dataclass
class Track:
    id: int
    detection: Detection
    first_ts: float
    last_ts: float
    hits: int = 1
    last_frame: int = 0  # the tracker's frame number of the latest detection
    missed: int = 0  # frames without a detection just before the latest one
    previous: Detection | None = None  # the detection before the latest one


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _centre_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Centre distance in units of the larger box width."""
    ca = np.array([(a[0] + a[2]) / 2, (a[1] + a[3]) / 2])
    cb = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
    width = max(a[2] - a[0], b[2] - b[0], 1e-6)
    return float(np.hypot(*(ca - cb)) / width)


class FaceTracker:
    def __init__(self, max_age_s: float, min_iou: float = 0.2, max_centre_shift: float = 1.0) -> None:
        self.max_age_s = max_age_s
        self.min_iou = min_iou
        self.max_centre_shift = max_centre_shift
        self.tracks: dict[int, Track] = {}
        self._next_id = 1
        self._frame = 0

    def update(self, detections: list[Detection], ts: float) -> list[Track]:
        """Associate this frame's detections; return the tracks seen in this frame."""
        self._frame += 1
        pairs = []
        for tid, track in self.tracks.items():
            expected = self._predicted(track)
            for di, det in enumerate(detections):
                overlap = iou(expected, det.box)
                shift = _centre_distance(expected, det.box)
                if overlap >= self.min_iou or shift <= self.max_centre_shift:
                    # A face keeps its size from one frame to the next: a box of another size nearby is
                    # more likely another face (or a false detection in the background).
                    resize = abs(float(np.log(max(det.width, 1e-6) / max(track.detection.width, 1e-6))))
                    pairs.append((overlap - 0.1 * shift - 0.5 * resize, tid, di))
        pairs.sort(reverse=True)
        used_tracks: set[int] = set()
        used_dets: set[int] = set()
        seen: list[Track] = []
        for _, tid, di in pairs:
            if tid in used_tracks or di in used_dets:
                continue
            track = self.tracks[tid]
            track.previous, track.detection = track.detection, detections[di]
            track.missed = self._frame - track.last_frame - 1
            track.last_frame = self._frame
            track.last_ts = ts
            track.hits += 1
            used_tracks.add(tid)
            used_dets.add(di)
            seen.append(track)
        for di, det in enumerate(detections):
            if di not in used_dets:
                track = Track(self._next_id, det, ts, ts, last_frame=self._frame)
                self._next_id += 1
                self.tracks[track.id] = track
                seen.append(track)
        return seen

    def _predicted(self, track: Track) -> np.ndarray:
        """Where the track's box should be in this frame, moving on as it did between its last two
        detections (two people walking out side by side keep their own tracks)."""
        box = track.detection.box
        if track.previous is None:
            return box
        step = (box - track.previous.box) / (track.missed + 1)
        shift = np.array([(step[0] + step[2]) / 2, (step[1] + step[3]) / 2] * 2, dtype=box.dtype)
        return box + shift * (self._frame - track.last_frame)

    def expire(self, ts: float) -> list[Track]:
        """Remove and return tracks unseen for longer than max_age_s."""
        gone = [t for t in self.tracks.values() if ts - t.last_ts > self.max_age_s]
        for track in gone:
            del self.tracks[track.id]
        return gone
