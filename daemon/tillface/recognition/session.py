"""Who the customer is, and whether it is still the same person (DESIGN §1 step 4): the one owner of
that rule.

The daemon hands over each frame's faces (inside the region of interest) and a way to look closely at
one of them (align, quality gate, embed: the costly part). The session picks the customer, keeps the
visit with that person and only that person, and tells the visit layer (`visits.py`: decisions and
events) what to do. The tracker only follows boxes from frame to frame; identity decides the rest:

- **The customer** is the largest, most central face. A face that was in view while someone else was
  the customer (the next one in the queue, a companion, a staff member) is a *bystander*: it becomes
  the customer only once it steps up (its face grows to `step_up_ratio` times its smallest size, or
  to `near_ratio` of the customer's, as the customer was last seen), and
  it takes the till from a customer still in view only when it is `takeover_ratio` times larger for
  `takeover_s`. When the customer is out of sight, a bystander who stepped up is a newcomer like any
  other (below), but one that covers where the customer's face was (a companion leaning in front may
  be hiding them) only after `takeover_s`.
- **The same person.** The visit keeps an *anchor*: the last few *telling* frames of its person (one
  that passed the quality gate, that the detector is sure of and that the frame's edge does not cut)
  on a track that moved smoothly. Its face is *in doubt* when the track comes back after a miss, is
  new, grows suddenly or jumps, and, after the decision, every `recheck_interval_s`. Frames in doubt
  stay out of the visit until `judge_frames` telling ones, fused, are compared with the anchor: at or
  above `same_person_threshold` it is the visit's person (the frames join the visit); below
  `other_person_threshold` it is someone else (the visit ends and theirs begins with those frames);
  in between, more frames are taken, and on the customer's own track a face that still cannot be
  told after `anchor_frames` telling frames is trusted. A face that appears while the visit's person
  is out of sight (looked down, hidden by a hand) is that person only if its frames say so; until
  then the visit waits and nothing is decided for either.
- **The end of a visit** is whichever comes first: the person is unseen for `leave_after_s`, or
  someone else is at the till.
- **No decision for a glimpse**: a face seen for less than `min_presence_s` gets none.

Only embeddings of frames judged to be the visit's own person reach the visit, so an upgrade
(visitor → match) and an enrolment template only ever use that person's frames.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..vision.detector import Detection
from ..vision.quality import Quality
from .tracker import FaceTracker, Track
from .visits import Visit, VisitManager

log = logging.getLogger("tillface.session")


@dataclass(frozen=True)
class SessionRules:
    same_person_threshold: float  # cosine to the visit's fused embedding at or above which it is its person
    other_person_threshold: float  # ... below which it is someone else (in between: cannot tell yet)
    leave_after_s: float  # the visit ends after its person is unseen this long
    recheck_interval_s: float  # after a decision, how often the customer's identity is re-checked
    min_presence_s: float  # a face seen for less than this gets no decision
    judge_frames: int = 2  # telling frames fused before a face in doubt is judged
    step_up_ratio: float = 1.4  # a bystander's growth (face area) that makes it a possible customer
    near_ratio: float = 0.6  # ... or its face area against the customer's, as the customer was last seen
    takeover_ratio: float = 2.0  # how much larger than the customer in view a face must be to take over
    takeover_s: float = 1.0  # ... and for how long
    growth_ratio: float = 1.5  # the customer's face area growing this much in one frame: re-check
    jump: float = 0.5  # the customer's face centre moving this many face widths in one frame: re-check
    track_memory_s: float = 0.4  # the tracker's memory: a box unseen longer starts a new track
    telling_score: float = 0.8  # the detector's confidence a frame needs to tell who it is
    anchor_frames: int = 5  # how many recent telling frames make the visit's identity reference


@dataclass(frozen=True)
class Look:
    """A close look at one face: the quality gate's verdict and, when it was worth it, an embedding."""

    quality: Quality
    reason: str | None  # why the quality gate refused the face; None: it passed
    embedding: np.ndarray | None


# look(detection, fallback) -> Look. `fallback`: embed even a face that failed the gate (but for
# being too small), for a customer who never gives a good frame.
Looker = Callable[[Detection, bool], Look]


@dataclass
class SessionReport:
    """What the session made of one frame (for `tillface monitor` and the daemon's counters)."""

    customer: Track | None = None
    visit: Visit | None = None
    look: Look | None = None


@dataclass
class _Sample:
    embedding: np.ndarray
    weight: float
    good: bool  # passed the quality gate
    telling: bool = False  # could tell who it is (see _telling)


@dataclass
class _Doubt:
    """Frames of a face that may be someone other than the visit's person, held until it is known."""

    track_id: int
    first_ts: float
    first_captured: float
    seen_since: float
    samples: list[_Sample] = field(default_factory=list)

    @property
    def telling(self) -> list[_Sample]:
        return [s for s in self.samples if s.telling]


def _fused(samples: list[_Sample]) -> np.ndarray:
    """The quality-weighted mean direction of some frames' embeddings."""
    weights = np.asarray([max(s.weight, 1e-6) for s in samples])
    fused = (np.stack([s.embedding for s in samples]) * weights[:, None]).sum(axis=0)
    return fused / max(float(np.linalg.norm(fused)), 1e-9)


def face_area(track: Track) -> float:
    x0, y0, x1, y1 = track.detection.box
    return float(max(0.0, x1 - x0) * max(0.0, y1 - y0))


def nearest(tracks: list[Track], frame_w: int, frame_h: int) -> Track | None:
    """The face nearest the till: large and central (area discounted by distance from the centre)."""
    best, best_score = None, -1.0
    cx, cy = frame_w / 2.0, frame_h / 2.0
    diag = float(np.hypot(frame_w, frame_h)) / 2.0
    for track in tracks:
        x0, y0, x1, y1 = track.detection.box
        off = float(np.hypot((x0 + x1) / 2 - cx, (y0 + y1) / 2 - cy)) / diag
        score = face_area(track) * (1.0 - 0.5 * off)
        if score > best_score:
            best, best_score = track, score
    return best


class CustomerSession:
    def __init__(self, rules: SessionRules, visits: VisitManager) -> None:
        self.rules = rules
        self.visits = visits
        self.tracker = FaceTracker(max_age_s=rules.track_memory_s)
        self._bystanders: dict[int, float] = {}  # track id -> its smallest face area as a bystander
        self._dominant_since: dict[int, float] = {}  # track id -> since when it outsizes the customer
        self._doubt: _Doubt | None = None
        # The visit's person in its last telling frames (RAM only): what a face in doubt is compared
        # with. Kept apart from the visit's embeddings, which may hold poor fallback frames.
        self._anchor: deque[_Sample] = deque(maxlen=rules.anchor_frames)
        self._suspect = False  # the customer's face is in doubt until its frames are judged
        self._next_check = 0.0
        self._frame_s = 0.0  # the camera's frame interval, estimated
        self._last_ts: float | None = None
        self._customer_box: np.ndarray | None = None  # where the customer's face was last seen
        self._customer_area = float("inf")  # ... and how big it was
        self._frame_size = (0, 0)
        # Identity checks after a decision (for the CPU budget): counted, never stored.
        self.checks = 0

    # ---- the frame ----
    def on_frame(
        self,
        faces: list[Detection],
        ts: float,
        captured: float,
        frame_size: tuple[int, int],
        look: Looker,
        decide: bool = True,
    ) -> SessionReport:
        if self._last_ts is not None and ts > self._last_ts:
            step = ts - self._last_ts
            self._frame_s = step if not self._frame_s else 0.9 * self._frame_s + 0.1 * step
        self._last_ts = ts
        self._frame_size = frame_size
        seen = self.tracker.update(faces, ts)
        self.tracker.expire(ts)
        for gone in set(self._bystanders) - set(self.tracker.tracks):
            del self._bystanders[gone]
        visit = self.visits.active
        if visit is not None and ts - visit.last_ts > self.rules.leave_after_s:
            self.end(ts)  # the person left and nobody took their place
            visit = None
        report = SessionReport()
        own = next((t for t in seen if visit is not None and t.id == visit.track_id), None)
        if own is not None:
            person = own
            rival = self._rival(seen, own, ts)
            if rival is not None:
                self.end(ts)  # someone else stepped up to the till
                person, visit = rival, None
            self._note_bystanders(seen, person)
        else:
            eligible = [t for t in seen if self._eligible(t)]
            found = nearest(eligible, *frame_size)
            if found is None:
                return report
            person = found
            if visit is not None:
                if (
                    person.id in self._bystanders
                    and self._may_hide_customer(person)
                    and not self._dominated(person, ts)
                ):
                    # A bystander stepped up in front of where the customer was: a companion leaning
                    # in may be hiding them, so the till is not theirs before `takeover_s`.
                    return report
                if not self._anchor:
                    self.end(ts)  # nothing to compare a new face with: a new visit
                    visit = None
                else:
                    report.customer = person
                    return self._newcomer_frame(visit, person, ts, captured, look, decide, report)
        report.customer = person
        self._bystanders.pop(person.id, None)
        self._customer_box = person.detection.box
        self._customer_area = face_area(person)
        if visit is None:
            visit = self.visits.open(person.id, ts, captured, seen_since=person.first_ts)
            self._next_check = ts + self.rules.recheck_interval_s
        return self._customer_frame(visit, person, ts, captured, look, decide, report)

    def end(self, ts: float) -> None:
        """Close the open visit (the visit layer decides first if it never did, then `left`)."""
        self.visits.end(ts)
        self._doubt, self._suspect = None, False
        self._anchor.clear()
        self._dominant_since.clear()

    # ---- who may be the customer ----
    def _eligible(self, track: Track) -> bool:
        """Whether a face may be the customer: anyone but a bystander who has not stepped up (grown
        `step_up_ratio` times, or come as near as the customer was: `near_ratio` of their face area)."""
        smallest = self._bystanders.get(track.id)
        if smallest is None:
            return True
        area = face_area(track)
        return (
            area >= self.rules.step_up_ratio * smallest or area >= self.rules.near_ratio * self._customer_area
        )

    def _note_bystanders(self, seen: list[Track], person: Track) -> None:
        for track in seen:
            if track.id != person.id:
                area = face_area(track)
                self._bystanders[track.id] = min(self._bystanders.get(track.id, area), area)

    def _may_hide_customer(self, track: Track) -> bool:
        """Whether this face covers where the customer's face was last seen."""
        if self._customer_box is None:
            return False
        x0, y0, x1, y1 = track.detection.box
        c = self._customer_box
        cx, cy = (c[0] + c[2]) / 2, (c[1] + c[3]) / 2
        return bool(x0 <= cx <= x1 and y0 <= cy <= y1)

    def _dominated(self, track: Track, ts: float) -> bool:
        """Whether this face has been the one in front for `takeover_s` (the clock starts now if not)."""
        since = self._dominant_since.setdefault(track.id, ts)
        return ts - since >= self.rules.takeover_s

    def _rival(self, seen: list[Track], own: Track, ts: float) -> Track | None:
        """A face that has outsized the customer in view for long enough to take the till."""
        outsizing = {
            t.id
            for t in seen
            if t.id != own.id
            and self._eligible(t)
            and face_area(t) >= self.rules.takeover_ratio * face_area(own)
        }
        for tid in set(self._dominant_since) - outsizing:
            del self._dominant_since[tid]
        ready = [t for t in seen if t.id in outsizing and self._dominated(t, ts)]
        if not ready:
            return None
        self._dominant_since.clear()
        return max(ready, key=face_area)

    # ---- is it still the same person ----
    def _telling(self, track: Track, look: Look) -> bool:
        """Whether this frame can tell who it is: it passed the quality gate, the detector is sure of
        it, and the face lies inside the frame (one cut by its edge, someone walking out of view,
        embeds as nobody in particular)."""
        x0, y0, x1, y1 = track.detection.box
        width, height = self._frame_size
        return (
            look.embedding is not None
            and look.reason is None
            and look.quality.detector_score >= self.rules.telling_score
            and bool(x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height)
        )

    def _judge(self, doubt: _Doubt) -> bool | None:
        """True: the visit's person; False: someone else; None: cannot tell yet (too few telling
        frames, or a cosine between the two thresholds)."""
        telling = doubt.telling[-self.rules.anchor_frames :]
        if len(telling) < self.rules.judge_frames or not self._anchor:
            return None
        cosine = float(_fused(telling) @ _fused(list(self._anchor)))
        if cosine >= self.rules.same_person_threshold:
            return True
        if cosine < self.rules.other_person_threshold:
            log.debug("a face at cosine %.3f to the visit's person is someone else", cosine)
            return False
        log.debug("a face at cosine %.3f to the visit's person: cannot tell yet", cosine)
        return None

    def _check_due(self, visit: Visit, track: Track, ts: float) -> bool:
        """Whether this frame of the visit's track must be checked to be its person: always when the
        track came back after a miss, is new, grew suddenly or jumped; after the decision also every
        `recheck_interval_s`. A track that moves smoothly is trusted in between."""
        previous = track.previous
        if track.missed or track.hits == 1:
            self._suspect = True
        elif previous is not None:
            p0, p1 = previous.box, track.detection.box
            before = max(1e-6, float((p0[2] - p0[0]) * (p0[3] - p0[1])))
            shift = float(np.hypot((p1[0] + p1[2] - p0[0] - p0[2]) / 2, (p1[1] + p1[3] - p0[1] - p0[3]) / 2))
            if face_area(track) >= self.rules.growth_ratio * before or shift > self.rules.jump * (
                p0[2] - p0[0]
            ):
                self._suspect = True
        if visit.decision is not None and ts >= self._next_check:
            self._suspect = True
        return self._suspect

    def _customer_frame(
        self,
        visit: Visit,
        person: Track,
        ts: float,
        captured: float,
        look: Looker,
        decide: bool,
        report: SessionReport,
    ) -> SessionReport:
        visits = self.visits
        visits.seen(visit, ts, self._presence(visit, ts), captured)
        report.visit = visit
        doubtful = self._check_due(visit, person, ts)
        if not self._anchor:
            doubtful = self._suspect = False  # nothing to compare with: these frames make the anchor
        if doubtful or visits.wants_embedding(visit) or len(self._anchor) < self.rules.anchor_frames:
            seen_look = look(person.detection, visit.decision is None and not visit.good_frames)
            report.look = seen_look
            sample = self._sample(person, seen_look)
            if doubtful:
                if self._doubt is None or self._doubt.track_id != person.id:
                    self._doubt = _Doubt(person.id, ts, captured, ts)
                    self.checks += visit.decision is not None
                if sample is not None:
                    self._doubt.samples.append(sample)
                verdict = self._judge(self._doubt)
                if verdict is False:
                    return self._split(self._doubt, ts, captured, decide, report)
                if verdict is None and len(self._doubt.telling) < self.rules.anchor_frames:
                    if decide:
                        visits.step(visit, ts)  # decide on the frames the visit already has
                    return report
                self._resolve(visit)  # the same person (or, on its own track, never told apart)
            elif sample is not None:
                if sample.telling:
                    self._anchor.append(sample)
                if visits.wants_embedding(visit):
                    visits.add(visit, sample.embedding, sample.weight, good=sample.good)
                    visits.refresh_enrolment(visit)
        if decide:
            visits.step(visit, ts)
        return report

    def _newcomer_frame(
        self,
        visit: Visit,
        person: Track,
        ts: float,
        captured: float,
        look: Looker,
        decide: bool,
        report: SessionReport,
    ) -> SessionReport:
        """A face that appeared while the visit's person was out of sight: them again, or the next one?"""
        if self._doubt is None or self._doubt.track_id != person.id:
            self._doubt = _Doubt(person.id, ts, captured, person.first_ts)
        seen_look = look(person.detection, False)
        report.look = seen_look
        sample = self._sample(person, seen_look)
        if sample is not None:
            self._doubt.samples.append(sample)
        verdict = self._judge(self._doubt)
        if verdict is None:
            return report  # the visit waits; nothing is decided for either
        if verdict is False:
            return self._split(self._doubt, ts, captured, decide, report)
        # The customer looked away and back: the same visit goes on with this track.
        log.debug("visit %s: its person is back (track %d)", visit.id, person.id)
        visit.track_id = person.id
        self._customer_box = person.detection.box
        self.visits.seen(visit, ts, self._presence(visit, ts), captured)
        report.visit = visit
        self._resolve(visit)
        if decide:
            self.visits.step(visit, ts)
        return report

    def _sample(self, track: Track, seen: Look) -> _Sample | None:
        if seen.embedding is None:
            return None
        return _Sample(seen.embedding, seen.quality.score, seen.reason is None, self._telling(track, seen))

    def _resolve(self, visit: Visit) -> None:
        """The face in doubt is the visit's person: its frames join the visit and its anchor."""
        doubt, self._doubt = self._doubt, None
        self._suspect = False
        self._next_check = (self._last_ts or 0.0) + self.rules.recheck_interval_s
        if doubt is None:
            return
        for s in doubt.samples:
            if s.telling:
                self._anchor.append(s)
            if self.visits.wants_embedding(visit):
                self.visits.add(visit, s.embedding, s.weight, good=s.good)
        self.visits.refresh_enrolment(visit)

    def _split(
        self, doubt: _Doubt, ts: float, captured: float, decide: bool, report: SessionReport
    ) -> SessionReport:
        """Someone else is at the till: the visit ends, theirs begins with the frames that told."""
        log.debug("someone else at the till (track %d)", doubt.track_id)
        self.end(doubt.first_ts)
        visit = self.visits.open(doubt.track_id, doubt.first_ts, doubt.first_captured, doubt.seen_since)
        self.visits.seen(visit, ts, self._presence(visit, ts), captured)
        self._next_check = ts + self.rules.recheck_interval_s
        for s in doubt.samples:
            self.visits.add(visit, s.embedding, s.weight, good=s.good)
            if s.telling:
                self._anchor.append(s)  # the new person's anchor
        report.visit = visit
        if decide:
            self.visits.step(visit, ts)
        return report

    def _presence(self, visit: Visit, ts: float) -> float:
        """How long the visit's person has been in view: from the first frame to this one, inclusive."""
        return ts - visit.seen_since + self._frame_s
