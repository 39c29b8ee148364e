"""A busy till (issue 13): the daemon on replays of queues, customers who look away, couples, staff
at the edge of the frame, an empty shop and glimpses, with real faces-dev photos and real video clips
from registry packages (rendered at test time into a temporary folder, never committed).

Each scenario set runs once per module; the tests then check what a store cares about, scenario by
scenario. The held-back set has other people, other clip segments and other motion.
"""

from __future__ import annotations

import pytest

from tillface.evaluation import till_scenarios as ts
from tillface.vision.pipeline import FacePipeline

SETS = ("main", "held-back")


@pytest.fixture(scope="module")
def cast() -> ts.Cast:
    pipeline = FacePipeline.from_manifest()

    def measure(rgb):
        faces = pipeline.detect(rgb, pad_if_none=True)
        return max(f.width for f in faces) if faces else None

    return ts.Cast(measure)


@pytest.fixture(scope="module", params=SETS)
def runs(request, faces_dir, cast, tmp_path_factory):
    held_back = request.param == "held-back"
    results = []
    for i, scenario in enumerate(ts.busy_till(faces_dir, cast, held_back)):
        work = tmp_path_factory.mktemp(f"scenario-{request.param}-{i}")
        config = ts.prepare(scenario, work)
        run = ts.run(scenario, config)
        run.recognisable = ts.recognisable(scenario, config)
        results.append(run.figures())
    print(f"\n{request.param}:")
    for f in results:
        print(
            f"  {f['scenario']:28} customers {f['customers']:2}  decisions {f['decisions']:2}  "
            f"members right {f['members_right']}/{f['members']} "
            f"(of those recognition alone matches {f['recognisable_right']}/{f['members_recognisable']})  "
            f"false matches {f['false_matches']}  "
            f"confused {f['confusions']}  double {f['double_decisions']}  missed {f['missed']}  "
            f"stray {f['stray_decisions']}"
        )
    return request.param, results


def test_one_decision_per_customer_and_none_for_anyone_else(runs):
    label, results = runs
    for f in results:
        assert f["double_decisions"] == 0, f"{label}: {f}"
        assert f["missed"] == 0, f"{label}: {f}"
        assert f["upgrades_for_someone_else"] == 0, f"{label}: {f}"
        # A member of staff inside the region of interest may get one decision while nobody else is
        # at the till; nobody else who is not a customer (companion, glimpse) ever does.
        allowed = 1 if f["scenario"] == "staff inside the ROI" else 0
        assert f["stray_decisions"] <= allowed, f"{label}: {f}"


def test_no_stranger_matched_and_no_member_confused(runs):
    label, results = runs
    for f in results:
        assert f["false_matches"] == 0, f"{label}: {f}"
        assert f["confusions"] == 0, f"{label}: {f}"


def test_members_recognised(runs):
    """Members matched in the busy scenarios, out of those recognition alone matches (a calm frontal
    view of the same footage): what a queue, a couple or a look away costs beyond recognition itself.
    The floor is the one the 60-visit replays hold (90%); issue 13 aims at 95%, which recognition of
    these LFW stills under the scenarios' exposure changes and head turns does not reach yet (the
    scenarios print both shares)."""
    label, results = runs
    right = sum(f["recognisable_right"] for f in results)
    recognisable = sum(f["members_recognisable"] for f in results)
    raw = sum(f["members_right"] for f in results), sum(f["members"] for f in results)
    print(f"{label}: members recognised {right}/{recognisable} of the recognisable, {raw[0]}/{raw[1]} of all")
    assert recognisable >= 0.75 * raw[1], f"{label}: only {recognisable}/{raw[1]} members recognisable"
    assert right >= 0.9 * recognisable, f"{label}: {right}/{recognisable} recognisable members recognised"


def test_an_empty_shop_and_glimpses_give_no_event_at_all(runs):
    label, results = runs
    (empty,) = [f for f in results if f["scenario"].startswith("empty shop")]
    assert empty["decisions"] == 0 and empty["customers"] == 0, f"{label}: {empty}"
