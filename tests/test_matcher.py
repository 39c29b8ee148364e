import numpy as np
import pytest

from tillface.recognition.matcher import Matcher


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_best_template_per_member_and_order():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((3, 16)).astype(np.float32)
    templates = np.stack([base[0], base[1], base[1] + 0.01, base[2]])
    matcher = Matcher(templates, ["b", "a", "a", "c"])
    assert matcher.size == 4
    assert sorted(matcher.members) == ["a", "b", "c"]
    top = matcher.search(base[1], k=3)
    assert top[0].member_id == "a"
    assert top[0].score == pytest.approx(1.0, abs=1e-4)
    assert [c.score for c in top] == sorted((c.score for c in top), reverse=True)
    assert len({c.member_id for c in top}) == 3


def test_decision_needs_threshold_and_margin():
    a, b = unit([1, 0, 0]), unit([0.9, 0.1, 0])  # two members that look alike
    c = unit([0, 0, 1])
    matcher = Matcher(np.stack([a, b, c]), ["anna", "bea", "carl"])
    # Close to anna but bea is nearly as close: no match, because the margin is too small.
    d = matcher.decide(unit([1, 0.02, 0]), match_threshold=0.5, margin=0.05)
    assert d.kind == "visitor" and d.member_id is None
    assert d.margin < 0.05
    # Clearly carl.
    d = matcher.decide(unit([0, 0.1, 1]), match_threshold=0.5, margin=0.05)
    assert d.kind == "match" and d.member_id == "carl"
    assert d.score >= 0.5 and d.margin >= 0.05
    # Below the threshold: visitor, with the score still reported.
    d = matcher.decide(unit([0, 1, 0.3]), match_threshold=0.5, margin=0.05)
    assert d.kind == "visitor" and d.score < 0.5


def test_empty_gallery_is_a_visitor():
    matcher = Matcher(np.zeros((0, 8), dtype=np.float32), [])
    d = matcher.decide(unit(np.ones(8)), 0.5, 0.05)
    assert d.kind == "visitor" and d.candidates == ()


def test_bad_shapes_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="2 templates but 1 member ids"):
        Matcher(np.ones((2, 4), dtype=np.float32), ["x"])
    matcher = Matcher(np.ones((2, 4), dtype=np.float32), ["x", "y"])
    with pytest.raises(ValueError, match="query has 3 dimensions, gallery has 4"):
        matcher.search(np.ones(3))


def test_matches_brute_force_on_a_large_gallery():
    rng = np.random.default_rng(7)
    templates = rng.standard_normal((20_000, 128)).astype(np.float32)
    members = [f"m{i % 5000}" for i in range(20_000)]  # members' rows are scattered, not grouped
    matcher = Matcher(templates, members)
    normed = templates / np.linalg.norm(templates, axis=1, keepdims=True)
    for q in rng.standard_normal((5, 128)).astype(np.float32):
        scores = normed @ (q / np.linalg.norm(q))
        best: dict[str, float] = {}
        for m, s in zip(members, scores, strict=True):
            best[m] = max(best.get(m, -2.0), float(s))
        expected = sorted(best.items(), key=lambda kv: -kv[1])[:3]
        got = matcher.search(q, k=3)
        assert [c.member_id for c in got] == [m for m, _ in expected]
        assert [c.score for c in got] == pytest.approx([s for _, s in expected], abs=1e-5)
