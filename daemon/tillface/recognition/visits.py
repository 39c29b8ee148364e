"""Visits: one decision per customer at the till (DESIGN §1 steps 5-10).

A visit is one person at the till; which frames are that person's is decided by `session.py`, which
opens, feeds and ends visits. Good frames' embeddings are collected (RAM only); the decision is taken
after `min_frames` good frames or `decision_timeout_ms` after the visit opened, whichever comes first,
from the quality-weighted mean of the best `fuse_best_n`, and never before the face has been in view
for `min_presence_s`. A `visitor` decision may be upgraded once to a `match` when later, better frames
match. `left` closes a decided visit.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ..vision.embedder import l2_normalise
from .enrolment import EnrolmentCache
from .matcher import Decision, Matcher
from .visitor_codes import VisitorCodes

log = logging.getLogger("tillface.visits")


@dataclass(frozen=True)
class DecisionRules:
    match_threshold: float
    margin: float
    min_frames: int
    decision_timeout_ms: int
    fuse_best_n: int
    allow_upgrade: bool
    # A face in view for less than this (seconds) gets no decision: a glimpse is not a customer.
    min_presence_s: float = 0.0


@dataclass(frozen=True)
class VisitEvent:
    """What the visit layer tells the rest of the daemon (link, display, logs)."""

    event: str  # "match" | "visitor" | "left"
    visit_id: str
    frame_ts: float  # timestamp of the frame that caused it (camera clock)
    payload: dict[str, Any]  # DESIGN §4 fields for this event
    visit_first_captured: float = 0.0  # time.monotonic() of the visit's first frame
    # time.monotonic() of the first frame at which the presence rule let the visit be decided
    visit_decidable_captured: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, "visit_id": self.visit_id, **self.payload}


@dataclass
class Visit:
    id: str
    track_id: int  # the track of the person's face (it changes when they come back after a gap)
    first_ts: float
    last_ts: float
    started_wall: float
    first_captured: float  # time.monotonic() of the first frame (decision latency is measured from it)
    seen_since: float  # camera time the person's face was first seen (at the till or waiting)
    present_s: float = 0.0  # how long the face has been in view, as the session measured it
    decidable_captured: float = 0.0  # time.monotonic() of the first frame with present_s >= min_presence_s
    embeddings: list[np.ndarray] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    frames_seen: int = 0
    good_frames: int = 0  # frames that passed the quality gate
    decision: Decision | None = None
    decided_kind: str | None = None
    upgraded: bool = False
    fused_quality_at_decision: float = 0.0
    visitor_code: str | None = None
    withheld: bool = False  # a match was withheld because the gallery was not confirmed current

    def best(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.weights)[::-1][:n]
        return np.stack([self.embeddings[i] for i in order]), np.asarray([self.weights[i] for i in order])

    def fused(self, n: int) -> tuple[np.ndarray, float]:
        if not self.good_frames and self.embeddings:
            # No frame passed the quality gate: how badly each failed says little about which shows
            # the person best, so every kept frame counts the same (averaging more frames of a turned or
            # dim face is steadier than picking a few of them by a near-zero score).
            embs, w = np.stack(self.embeddings), np.asarray(self.weights)
            return l2_normalise(embs.mean(axis=0)), float(w.mean())
        embs, w = self.best(n)
        w = np.maximum(w, 1e-6)
        return l2_normalise((embs * w[:, None]).sum(axis=0)), float(w.mean())


def _utc(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class VisitManager:
    # How many embeddings a visit keeps at most (the best ones): enough to fuse and to enrol.
    KEEP = 20

    def __init__(
        self,
        rules: DecisionRules,
        matcher: Callable[[], Matcher],
        gallery_version: Callable[[], int],
        codes: VisitorCodes,
        enrolments: EnrolmentCache,
        model_id: str,
        emit: Callable[[VisitEvent], None],
        wall_clock: Callable[[], float] = time.time,
        matches_confirmed: Callable[[], bool] = lambda: True,
    ) -> None:
        self.rules = rules
        self._matcher = matcher
        self._gallery_version = gallery_version
        self._codes = codes
        self._enrolments = enrolments
        self._model_id = model_id
        self._emit = emit
        self._wall = wall_clock
        # Whether the gallery is confirmed current (the link: caught up with the store, or a till on
        # its own). A member may have been erased while it was not: no match is published then.
        self._matches_confirmed = matches_confirmed
        self.matches_withheld = 0
        # One customer at the till at a time: the open visit, if any.
        self.active: Visit | None = None

    def open(self, track_id: int, ts: float, captured: float = 0.0, seen_since: float | None = None) -> Visit:
        """Open the visit of a new customer (the open one, if any, must have been ended)."""
        assert self.active is None, "end the open visit first"
        first_seen = ts if seen_since is None else min(seen_since, ts)
        visit = Visit(uuid.uuid4().hex, track_id, ts, ts, self._wall(), captured, first_seen)
        self.active = visit
        return visit

    def seen(self, visit: Visit, ts: float, present_s: float, captured: float = 0.0) -> None:
        """The visit's person is in this frame (captured at time.monotonic() `captured`)."""
        visit.last_ts = ts
        visit.frames_seen += 1
        visit.present_s = present_s
        if not visit.decidable_captured and present_s >= self.rules.min_presence_s:
            visit.decidable_captured = captured

    def wants_embedding(self, visit: Visit) -> bool:
        """Embedding costs time: skip it once nothing more can come of it."""
        if visit.decision is None:
            return True
        if visit.decided_kind == "visitor":
            # Upgrade still possible, or more frames for a better enrolment template.
            return len(visit.embeddings) < self.KEEP or (self.rules.allow_upgrade and not visit.upgraded)
        return False

    def add(self, visit: Visit, embedding: np.ndarray, weight: float, good: bool = True) -> None:
        """Collect a frame's embedding (the session has judged it to be the visit's person). Frames that
        failed the quality gate (`good=False`) are only a fallback for a customer who never gives a good
        frame; they weigh a tenth of a good frame."""
        visit.embeddings.append(embedding)
        visit.weights.append(weight if good else 0.1 * weight + 1e-4)
        visit.good_frames += good
        if len(visit.embeddings) > self.KEEP:
            worst = int(np.argmin(visit.weights))
            del visit.embeddings[worst]
            del visit.weights[worst]

    def step(self, visit: Visit, ts: float) -> None:
        """Decide (or upgrade) if it is time to."""
        good = visit.good_frames
        if visit.decision is None:
            if visit.present_s < self.rules.min_presence_s:
                return  # a glimpse: wait
            timed_out = (ts - visit.first_ts) * 1000.0 >= self.rules.decision_timeout_ms
            if good >= self.rules.min_frames or (timed_out and visit.embeddings):
                self._decide(visit, ts)
            return
        if (
            visit.decided_kind == "visitor"
            and self.rules.allow_upgrade
            and not visit.upgraded
            and good >= min(self.rules.fuse_best_n, self.rules.min_frames * 2)
        ):
            fused, quality = visit.fused(self.rules.fuse_best_n)
            if quality <= visit.fused_quality_at_decision:
                return
            decision = self._matcher().decide(fused, self.rules.match_threshold, self.rules.margin)
            visit.fused_quality_at_decision = quality
            if decision.kind == "match" and self._matches_confirmed():
                visit.upgraded = True
                self._publish_match(visit, decision, ts, quality, upgrade=True)
                visit.decision, visit.decided_kind = decision, "match"

    def _decide(self, visit: Visit, ts: float) -> None:
        fused, quality = visit.fused(self.rules.fuse_best_n)
        decision = self._matcher().decide(fused, self.rules.match_threshold, self.rules.margin)
        if decision.kind == "match" and not self._matches_confirmed():
            # The visit stays undecided: it is decided when the gallery is confirmed again, or ends
            # without a decision (never a visitor code for a face that matched a member).
            if not visit.withheld:
                visit.withheld = True
                self.matches_withheld += 1
                log.warning(
                    "visit %s: match withheld, the gallery is not confirmed current with the store "
                    "(link offline or catching up; see health gallery_confirmed)",
                    visit.id,
                )
            return
        visit.decision, visit.decided_kind = decision, decision.kind
        visit.fused_quality_at_decision = quality
        if decision.kind == "match":
            self._publish_match(visit, decision, ts, quality, upgrade=False)
        else:
            self._publish_visitor(visit, decision, ts, quality)

    def _publish_match(
        self, visit: Visit, decision: Decision, ts: float, quality: float, upgrade: bool
    ) -> None:
        payload = {
            "visit_id": visit.id,
            "member_id": decision.member_id,
            "score": round(decision.score, 4),
            "margin": round(decision.margin, 4),
            "frames": len(visit.embeddings),
            "quality": round(quality, 3),
            "gallery_version": self._gallery_version(),
            "model": self._model_id,
        }
        if upgrade:
            payload["upgrade"] = True
            # The visitor's embeddings are no longer needed for enrolment: drop them now.
            if visit.visitor_code:
                self._enrolments.discard(visit.visitor_code)
        self._emit(VisitEvent("match", visit.id, ts, payload, visit.first_captured, visit.decidable_captured))

    def _publish_visitor(self, visit: Visit, decision: Decision, ts: float, quality: float) -> None:
        code = self._codes.issue()
        visit.visitor_code = code
        embs, weights = visit.best(self.KEEP)
        expires = self._enrolments.hold(code, visit.id, embs, weights)
        enroll_until = self._wall() + (expires - self._enrolments.now())
        payload = {
            "visit_id": visit.id,
            "visitor_code": code,
            "quality": round(quality, 3),
            "enroll_until": _utc(enroll_until),
            "score": round(decision.score, 4),
            "margin": round(decision.margin, 4),
        }
        self._emit(
            VisitEvent("visitor", visit.id, ts, payload, visit.first_captured, visit.decidable_captured)
        )

    def refresh_enrolment(self, visit: Visit) -> None:
        """Later frames of a visitor make a better enrolment template: keep the held copy current."""
        if visit.visitor_code and visit.decided_kind == "visitor" and visit.visitor_code in self._enrolments:
            embs, weights = visit.best(self.KEEP)
            self._enrolments.update(visit.visitor_code, embs, weights)

    def end(self, ts: float) -> None:
        """Close the open visit (decide first if it never did, then `left`)."""
        visit, self.active = self.active, None
        if visit is None:
            return
        if (
            visit.decision is None
            and visit.embeddings
            and visit.frames_seen >= 2 * self.rules.min_frames
            and visit.present_s >= self.rules.min_presence_s
        ):
            self._decide(visit, ts)  # a quick customer: decide on what we have (not on a track fragment)
        if visit.decision is None:
            log.info("visit %s ended without a usable face (%d frames)", visit.id, visit.frames_seen)
            return
        duration = max(0.0, visit.last_ts - visit.first_ts)
        payload = {"visit_id": visit.id, "duration_s": round(duration, 2)}
        self._emit(VisitEvent("left", visit.id, ts, payload, visit.first_captured, visit.decidable_captured))
