"""Visit logic on synthetic embeddings: one decision per visit, upgrade once, left, enrolment window."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tillface.recognition.enrolment import EnrolmentCache, EnrolmentError
from tillface.recognition.matcher import Matcher
from tillface.recognition.visitor_codes import VisitorCodes
from tillface.recognition.visits import DecisionRules, VisitEvent, VisitManager

RULES = DecisionRules(
    match_threshold=0.8,
    margin=0.05,
    min_frames=3,
    decision_timeout_ms=1500,
    fuse_best_n=5,
    allow_upgrade=True,
)


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def setup():
    rng = np.random.default_rng(3)
    anna = unit(rng.standard_normal(16))
    bob = unit(rng.standard_normal(16))
    matcher = Matcher(np.stack([anna, bob]), ["anna", "bob"])
    events: list[VisitEvent] = []
    clock = Clock()
    enrol = EnrolmentCache(ttl_s=120, clock=clock)
    manager = VisitManager(RULES, lambda: matcher, lambda: 7, VisitorCodes(), enrol, "m1", events.append)
    return manager, events, anna, bob, rng, enrol, clock


class Frames:
    """Feeds a VisitManager one person's frames the way the customer session does."""

    def __init__(self, manager, track=1):
        self.manager, self.track = manager, track

    def visit(self, ts):
        visit = self.manager.active or self.manager.open(self.track, ts)
        self.manager.seen(visit, ts, ts - visit.seen_since + 1 / 15)
        return visit


def near(v, rng, noise=0.1):
    return unit(v + noise * rng.standard_normal(v.shape) / np.sqrt(v.shape[0]))


def test_member_matched_once_then_left(setup):
    manager, events, anna, _bob, rng, _enrol, _clock = setup
    for i in range(10):
        visit = Frames(manager, 1).visit(i / 15)
        if manager.wants_embedding(visit):
            manager.add(visit, near(anna, rng), 0.8)
        manager.step(visit, i / 15)
    manager.end(2.0)
    assert [e.event for e in events] == ["match", "left"]
    match = events[0].payload
    assert match["member_id"] == "anna" and match["frames"] == 3 and match["gallery_version"] == 7
    assert events[1].payload["duration_s"] == pytest.approx(9 / 15, abs=0.01)


def test_stranger_gets_a_visitor_code_and_can_be_enrolled(setup):
    manager, events, anna, bob, rng, enrol, _clock = setup
    stranger = unit(anna - bob + rng.standard_normal(16))
    for i in range(4):
        visit = Frames(manager, 2).visit(i / 15)
        manager.add(visit, near(stranger, rng), 0.7)
        manager.step(visit, i / 15)
    assert [e.event for e in events] == ["visitor"]
    code = events[0].payload["visitor_code"]
    pending = enrol.take(code)
    templates = pending.templates()
    assert templates.shape[1] == 16 and np.allclose(np.linalg.norm(templates, axis=1), 1, atol=1e-5)
    assert float(templates[0] @ stranger) > 0.95
    with pytest.raises(EnrolmentError, match="unknown or its enrolment window"):
        enrol.take(code)


def test_visitor_embeddings_are_dropped_after_the_ttl(setup):
    manager, events, anna, bob, rng, enrol, clock = setup
    stranger = unit(anna - bob)
    for i in range(3):
        visit = Frames(manager, 3).visit(i / 15)
        manager.add(visit, near(stranger, rng), 0.7)
        manager.step(visit, i / 15)
    code = events[0].payload["visitor_code"]
    assert code in enrol
    clock.t += 121
    assert enrol.purge() == 1
    assert code not in enrol


def test_timeout_decides_with_fewer_frames(setup):
    manager, events, anna, _bob, rng, _enrol, _clock = setup
    visit = Frames(manager, 4).visit(0.0)
    manager.add(visit, near(anna, rng), 0.5)
    manager.step(visit, 0.0)
    assert events == []
    for ts in (0.5, 1.0, 1.49):
        manager.step(Frames(manager, 4).visit(ts), ts)
    assert events == []
    manager.step(Frames(manager, 4).visit(1.5), 1.5)
    assert [e.event for e in events] == ["match"] and events[0].payload["frames"] == 1


def test_poor_frames_only_still_give_one_decision_and_weigh_less(setup):
    manager, events, anna, _bob, rng, _enrol, _clock = setup
    visit = Frames(manager, 5).visit(0.0)
    for i in range(5):
        manager.add(visit, near(anna, rng), 0.9, good=False)
        manager.step(Frames(manager, 5).visit(i * 0.1), i * 0.1)
    assert events == [], "poor frames alone must not reach min_frames"
    manager.step(Frames(manager, 5).visit(1.6), 1.6)
    assert [e.event for e in events] == ["match"]
    assert visit.good_frames == 0


def test_visitor_upgraded_once_to_a_match(setup):
    manager, events, anna, _bob, rng, enrol, _clock = setup
    blurred = [near(anna, rng, noise=3.0) for _ in range(3)]  # far from anna: visitor
    visit = Frames(manager, 6).visit(0.0)
    for i, e in enumerate(blurred):
        manager.add(visit, e, 0.1)
        manager.step(visit, i * 0.07)
    assert [e.event for e in events] == ["visitor"]
    code = events[0].payload["visitor_code"]
    for i in range(10):
        v = Frames(manager, 6).visit(0.3 + i * 0.07)
        if manager.wants_embedding(v):
            manager.add(v, near(anna, rng, noise=0.05), 0.95)
        manager.step(v, 0.3 + i * 0.07)
    assert [e.event for e in events] == ["visitor", "match"]
    assert events[1].payload.get("upgrade") is True and events[1].payload["member_id"] == "anna"
    assert code not in enrol, "an upgraded visitor's embeddings are not kept for enrolment"
    manager.end(2.0)
    assert [e.event for e in events] == ["visitor", "match", "left"]


def test_track_fragment_does_not_decide_at_leave(setup):
    manager, events, anna, _bob, rng, _enrol, _clock = setup
    visit = Frames(manager, 7).visit(0.0)
    manager.add(visit, near(anna, rng), 0.9)
    manager.end(0.2)
    assert events == []


def test_a_glimpse_gets_no_decision(setup):
    """Under `min_presence_s` in view, even good frames decide nothing; from then on they do."""
    manager, events, anna, _bob, rng, _enrol, _clock = setup
    manager.rules = dataclasses.replace(RULES, min_presence_s=0.3)
    for i in range(4):  # 4 frames at 15 fps: in view 0.27 s
        visit = Frames(manager, 8).visit(i / 15)
        manager.add(visit, near(anna, rng), 0.9)
        manager.step(visit, i / 15)
    assert events == []
    visit = Frames(manager, 8).visit(4 / 15)  # the fifth frame: 0.33 s
    manager.step(visit, 4 / 15)
    assert [e.event for e in events] == ["match"]


def test_a_glimpse_ending_decides_nothing_either(setup):
    manager, events, anna, _bob, rng, _enrol, _clock = setup
    manager.rules = dataclasses.replace(RULES, min_presence_s=0.3)
    for i in range(4):
        visit = Frames(manager, 9).visit(i / 15)
        manager.add(visit, near(anna, rng), 0.9)
    manager.end(0.3)
    assert events == []


def test_a_decision_carries_when_the_presence_rule_allowed_it(setup):
    """The decision wait is measured from the first frame at which min_presence_s was met, not from
    the first frame: the rule's wait is deliberate (a glimpse gets no decision)."""
    _manager, events, anna, _bob, rng, enrol, _clock = setup
    rules = dataclasses.replace(RULES, min_presence_s=0.3)
    manager = VisitManager(
        rules, lambda: Matcher(anna[None, :], ["anna"]), lambda: 7, VisitorCodes(), enrol, "m1", events.append
    )
    captured = {}
    for i in range(12):
        ts = i / 15
        visit = manager.active or manager.open(1, ts, captured=500.0 + ts)
        manager.seen(visit, ts, ts - visit.seen_since + 1 / 15, captured=500.0 + ts)
        captured[i] = 500.0 + ts
        manager.add(visit, near(anna, rng), 0.8)
        manager.step(visit, ts)
    (match,) = [e for e in events if e.event == "match"]
    # Frame 4 is the first with 0.3 s in view (5 frames at 15 fps, first and last included).
    assert match.visit_first_captured == pytest.approx(captured[0])
    assert match.visit_decidable_captured == pytest.approx(captured[4])
    assert match.frame_ts == pytest.approx(4 / 15)


def test_a_visit_with_no_good_frame_fuses_all_its_frames_equally(setup):
    """When no frame passed the quality gate, their near-zero gate scores do not pick the few frames
    that show the person best: every kept frame counts the same."""
    manager, _events, anna, _bob, rng, _enrol, _clock = setup
    visit = manager.open(1, 0.0)
    frames = [near(anna, rng, noise=0.6) for _ in range(8)]
    for i, emb in enumerate(frames):
        manager.add(visit, emb, weight=0.01 * i, good=False)
    fused, _quality = visit.fused(RULES.fuse_best_n)
    mean = np.mean(frames, axis=0)
    assert np.allclose(fused, mean / np.linalg.norm(mean), atol=1e-6)
    manager.add(visit, near(anna, rng), weight=0.9, good=True)  # one good frame: weights count again
    fused, _quality = visit.fused(RULES.fuse_best_n)
    assert not np.allclose(fused, mean / np.linalg.norm(mean), atol=1e-3)


def test_no_match_is_published_while_the_gallery_is_unconfirmed(setup):
    """A till that cannot confirm its gallery is current (offline, catching up) may still hold a member
    erased meanwhile: her visit waits undecided (no visitor code either), and is matched as soon as the
    gallery is confirmed again; a visit that ends first ends with no decision at all."""
    _manager, events, anna, _bob, rng, enrol, _clock = setup
    confirmed = [False]
    manager = VisitManager(
        RULES,
        lambda: Matcher(anna[None, :], ["anna"]),
        lambda: 7,
        VisitorCodes(),
        enrol,
        "m1",
        events.append,
        matches_confirmed=lambda: confirmed[0],
    )
    frames = Frames(manager, 1)
    for i in range(6):
        visit = frames.visit(i / 15)
        manager.add(visit, near(anna, rng), 0.8)
        manager.step(visit, i / 15)
    assert events == [] and manager.matches_withheld == 1
    confirmed[0] = True
    manager.step(visit, 6 / 15)
    assert [e.event for e in events] == ["match"] and events[0].payload["member_id"] == "anna"
    manager.end(1.0)
    events.clear()
    confirmed[0] = False
    frames = Frames(manager, 2)
    for i in range(4):
        visit = frames.visit(2 + i / 15)
        manager.add(visit, near(anna, rng), 0.8)
        manager.step(visit, 2 + i / 15)
    manager.end(3.0)
    assert events == [] and manager.matches_withheld == 2
