"""The customer session on synthetic faces: who the customer is and whether it is still the same person.

Faces are boxes with an identity; a face's embedding is its identity's direction plus a little noise,
so each rule can be tried alone, exactly. The replays (test_till_scenarios.py) try them on real faces.
"""

from __future__ import annotations

import numpy as np
import pytest

from tillface.recognition.enrolment import EnrolmentCache
from tillface.recognition.matcher import Matcher
from tillface.recognition.session import CustomerSession, Look, SessionRules
from tillface.recognition.visitor_codes import VisitorCodes
from tillface.recognition.visits import DecisionRules, VisitEvent, VisitManager
from tillface.vision.detector import Detection
from tillface.vision.quality import Quality

FPS = 15
DIM = 32
RULES = SessionRules(
    same_person_threshold=0.4,
    other_person_threshold=0.25,
    leave_after_s=4.0,
    recheck_interval_s=0.7,
    min_presence_s=0.3,
)


def unit(v):
    return v / np.linalg.norm(v)


class Till:
    """A session fed frame by frame; people are drawn as boxes, embedded as their identity."""

    def __init__(self, members=("anna", "bob")):
        rng = np.random.default_rng(7)
        self.rng = rng
        self.identity = {name: unit(rng.standard_normal(DIM)) for name in (*members, "carl", "dora", "eve")}
        matcher = Matcher(np.stack([self.identity[m] for m in members]), list(members))
        self.events: list[VisitEvent] = []
        rules = DecisionRules(0.8, 0.05, 3, 1500, 5, True, min_presence_s=RULES.min_presence_s)
        visits = VisitManager(
            rules, lambda: matcher, lambda: 1, VisitorCodes(), EnrolmentCache(120), "m", self.events.append
        )
        self.session = CustomerSession(RULES, visits)
        self.k = 0
        self.looks = 0

    def frame(self, *faces: tuple[str, float, float, float]):
        """One frame with faces (identity, centre x, centre y, width) in a 640×480 image."""
        detections, who = [], {}
        for name, cx, cy, w in faces:
            box = np.array([cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2], dtype=np.float32)
            kp = np.array([[cx - w / 5, cy - w / 8]] * 6, dtype=np.float32)
            det = Detection(box, kp, 0.95)
            detections.append(det)
            who[id(det)] = name

        def look(detection, fallback):
            self.looks += 1
            quality = Quality(w_eye(detection), 0, 0, 0, 200, 120, 0, float(detection.score))
            noise = 0.15 * self.rng.standard_normal(DIM) / np.sqrt(DIM)
            return Look(quality, None, unit(self.identity[who[id(detection)]] + noise))

        ts = self.k / FPS
        self.k += 1
        return self.session.on_frame(detections, ts, ts, (640, 480), look)

    def frames(self, n, *faces):
        for _ in range(n):
            self.frame(*faces)

    def decisions(self):
        return [
            (e.event, e.payload.get("member_id") or e.payload.get("visitor_code"))
            for e in self.events
            if e.event in ("match", "visitor")
        ]

    def kinds(self):
        return [e.event for e in self.events]


def w_eye(detection):
    return float(detection.box[2] - detection.box[0]) * 0.4


AT_TILL = (320.0, 220.0, 140.0)


def test_a_member_gets_one_match_then_left():
    till = Till()
    till.frames(30, ("anna", *AT_TILL))
    till.frames(int(4.2 * FPS))  # gone longer than leave_after
    assert till.kinds() == ["match", "left"]


def test_the_next_customer_at_the_same_spot_is_a_new_visit_even_on_the_same_track():
    """Bob steps into Anna's place within a frame: the tracker keeps one track, identity splits it."""
    till = Till()
    till.frames(30, ("anna", *AT_TILL))
    till.frames(30, ("bob", *AT_TILL))
    assert till.decisions() == [("match", "anna"), ("match", "bob")]
    assert till.kinds() == ["match", "left", "match"]


def test_a_queue_with_a_third_of_a_second_between_customers():
    till = Till()
    for name in ("anna", "carl", "bob", "dora"):
        till.frames(40, (name, *AT_TILL))
        till.frames(5)  # 0.33 s of nobody
    decided = till.decisions()
    assert [d[0] for d in decided] == ["match", "visitor", "match", "visitor"]
    assert decided[0][1] == "anna" and decided[2][1] == "bob"


def test_hidden_for_three_seconds_then_back_is_the_same_visit():
    till = Till()
    till.frames(20, ("anna", *AT_TILL))
    till.frames(3 * FPS)  # a raised hand: no face
    till.frames(20, ("anna", *AT_TILL))
    assert till.kinds() == ["match"], "no second decision, no left while the customer is there"


def test_someone_else_after_a_gap_ends_the_visit_at_once():
    till = Till()
    till.frames(20, ("anna", *AT_TILL))
    till.frames(FPS)
    till.frames(10, ("carl", *AT_TILL))
    assert till.kinds()[:3] == ["match", "left", "visitor"]


def test_the_nearer_of_two_stays_the_customer_and_a_companion_leaning_in_does_not_flip_it():
    till = Till()
    companion = ("carl", 500.0, 230.0, 80.0)
    till.frames(20, ("anna", *AT_TILL), companion)
    till.frames(int(0.6 * FPS), ("anna", *AT_TILL), ("carl", 470.0, 220.0, 200.0))  # leans in, bigger
    till.frames(20, ("anna", *AT_TILL), companion)
    assert till.kinds() == ["match"] and till.decisions() == [("match", "anna")]


def test_someone_who_stays_bigger_for_long_takes_the_till():
    till = Till()
    till.frames(20, ("anna", 320.0, 220.0, 90.0), ("carl", 520.0, 230.0, 70.0))
    till.frames(int(1.5 * FPS), ("anna", 320.0, 220.0, 90.0), ("carl", 480.0, 220.0, 190.0))
    assert till.decisions()[0] == ("match", "anna") and till.kinds()[1:3] == ["left", "visitor"]


def test_a_bystander_at_the_edge_never_takes_a_visit_until_they_step_up():
    till = Till()
    staff = ("dora", 600.0, 200.0, 60.0)
    till.frames(20, ("anna", *AT_TILL), staff)
    till.frames(int(4.5 * FPS), staff)  # Anna gone; only the staff member
    till.frames(20, ("bob", *AT_TILL), staff)
    assert till.decisions() == [("match", "anna"), ("match", "bob")]


def test_a_glimpse_gets_nothing():
    till = Till()
    till.frames(4, ("anna", *AT_TILL))  # 0.27 s
    till.frames(int(4.5 * FPS))
    assert till.events == []


def test_after_the_decision_identity_is_checked_at_a_low_rate_not_every_frame():
    till = Till()
    till.frames(10, ("anna", *AT_TILL))
    before = till.looks
    till.frames(3 * FPS, ("anna", *AT_TILL))
    # 3 s of a decided member: a check (of judge_frames frames) every 0.7 s, not 45 looks
    assert till.session.checks == pytest.approx(3 / RULES.recheck_interval_s, abs=1)
    assert till.looks - before <= 2 * till.session.checks + 2
