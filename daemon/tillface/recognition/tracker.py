"""Follows faces across frames and picks the customer: the largest, most central face in the ROI.

Association is greedy by IoU (falling back to centre distance, for a face that moves fast while
coming closer); a track survives `max_age_s` without detections, so one missed frame is not a new
person.
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

    def update(self, detections: list[Detection], ts: float) -> list[Track]:
        """Associate this frame's detections; return the tracks seen in this frame."""
        pairs = []
        for tid, track in self.tracks.items():
            for di, det in enumerate(detections):
                overlap = iou(track.detection.box, det.box)
                shift = _centre_distance(track.detection.box, det.box)
                if overlap >= self.min_iou or shift <= self.max_centre_shift:
                    pairs.append((overlap - 0.1 * shift, tid, di))
        pairs.sort(reverse=True)
        used_tracks: set[int] = set()
        used_dets: set[int] = set()
        seen: list[Track] = []
        for _, tid, di in pairs:
            if tid in used_tracks or di in used_dets:
                continue
            track = self.tracks[tid]
            track.detection = detections[di]
            track.last_ts = ts
            track.hits += 1
            used_tracks.add(tid)
            used_dets.add(di)
            seen.append(track)
        for di, det in enumerate(detections):
            if di not in used_dets:
                track = Track(self._next_id, det, ts, ts)
                self._next_id += 1
                self.tracks[track.id] = track
                seen.append(track)
        return seen

    def expire(self, ts: float) -> list[Track]:
        """Remove and return tracks unseen for longer than max_age_s."""
        gone = [t for t in self.tracks.values() if ts - t.last_ts > self.max_age_s]
        for track in gone:
            del self.tracks[track.id]
        return gone


def customer(tracks: list[Track], frame_w: int, frame_h: int) -> Track | None:
    """The face nearest the till: large and central (area discounted by distance from the centre)."""
    best, best_score = None, -1.0
    cx, cy = frame_w / 2.0, frame_h / 2.0
    diag = float(np.hypot(frame_w, frame_h)) / 2.0
    for track in tracks:
        x0, y0, x1, y1 = track.detection.box
        area = max(0.0, x1 - x0) * max(0.0, y1 - y0)
        off = float(np.hypot((x0 + x1) / 2 - cx, (y0 + y1) / 2 - cy)) / diag
        score = area * (1.0 - 0.5 * off)
        if score > best_score:
            best, best_score = track, score
    return best
