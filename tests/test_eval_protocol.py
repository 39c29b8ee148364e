"""DESIGN §7 statistics on small synthetic cases whose answers are worked out by hand."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tillface.evaluation.protocol import (
    LabelsError,
    Sample,
    best_threshold,
    breakdown,
    identification_metrics,
    open_set_split,
    read_labels,
    sample_pairs,
    verification_metrics,
)

NEG_INF = -np.inf


def _samples(counts: dict[str, int], source: str = "") -> list[Sample]:
    return [
        Sample(path=f"{ident}/{k:03d}.jpg", identity=ident, source=source)
        for ident, n in counts.items()
        for k in range(n)
    ]


# ------------------------------------------------------------------------------------------- read_labels


def test_read_labels_all_columns(tmp_path: Path) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "\ufeffpath,identity,source,tags\na/1.jpg,alice,till1,glasses; dark\n\nb/1.jpg, bob ,till2,\n",
        encoding="utf-8",
    )
    assert read_labels(csv_path) == [
        Sample("a/1.jpg", "alice", "till1", ("glasses", "dark")),
        Sample("b/1.jpg", "bob", "till2", ()),
    ]


def test_read_labels_optional_columns_absent(tmp_path: Path) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,identity\nx.jpg,carol\n", encoding="utf-8")
    assert read_labels(csv_path) == [Sample("x.jpg", "carol", "", ())]


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ("path,identity,source\na.jpg,alice,s\nb.jpg,bob\n", 3, "expected 3 fields"),
        ("path,identity\na.jpg,alice\nb.jpg,\n", 3, "empty identity"),
        ("path,identity\na.jpg,alice\n\n,bob\n", 4, "empty path"),
        ("path,identity\na.jpg,alice\na.jpg,bob\n", 3, "already listed on line 2"),
        ("file,name\na.jpg,alice\n", 1, "header"),
    ],
)
def test_read_labels_error_names_file_and_line(tmp_path: Path, body: str, line: int, words: str) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(body, encoding="utf-8")
    with pytest.raises(LabelsError) as exc:
        read_labels(csv_path)
    assert f"{csv_path}:{line}:" in str(exc.value)
    assert words in str(exc.value)


# ------------------------------------------------------------------------------------------ sample_pairs


def _check_pairs(samples: list[Sample], genuine: np.ndarray, impostor: np.ndarray) -> None:
    for pairs, same in ((genuine, True), (impostor, False)):
        assert pairs.dtype == np.int64 and pairs.ndim == 2 and pairs.shape[1] == 2
        assert np.all(pairs[:, 0] < pairs[:, 1])  # no self pairs, unordered pairs stored once
        assert len({tuple(p) for p in pairs.tolist()}) == len(pairs)  # no duplicates
        for i, j in pairs.tolist():
            assert (samples[i].identity == samples[j].identity) is same


def test_sample_pairs_caps_identities_and_takes_all_genuine_pairs() -> None:
    samples = _samples({"a": 15, "b": 12, "c": 4, "d": 1, "e": 1})
    genuine, impostor = sample_pairs(samples, seed=0, max_pairs=3000, max_per_identity=10)
    _check_pairs(samples, genuine, impostor)
    used = set(genuine.ravel().tolist()) | set(impostor.ravel().tolist())
    per_identity = Counter(samples[i].identity for i in used)
    assert per_identity == {"a": 10, "b": 10, "c": 4, "d": 1, "e": 1}
    # Fewer genuine pairs than max_pairs: all of them among the kept images (45 + 45 + 6).
    assert len(genuine) == 96
    # All impostor pairs among the 26 kept images: (26^2 - (100 + 100 + 16 + 1 + 1)) / 2.
    assert len(impostor) == 229


def test_sample_pairs_cap_is_a_seeded_random_choice() -> None:
    samples = _samples({"a": 15, "b": 1})
    chosen = []
    for seed in range(8):
        genuine, _ = sample_pairs(samples, seed=seed, max_per_identity=10)
        chosen.append(frozenset(genuine.ravel().tolist()))
        assert len(chosen[-1]) == 10
    assert len(set(chosen)) > 1  # the seed decides which 10 images are kept
    assert frozenset().union(*chosen) != frozenset(range(10))  # not simply the first 10 by path


def test_sample_pairs_deterministic_and_seeded() -> None:
    samples = _samples({f"id{k}": 3 + k % 9 for k in range(40)})
    g1, i1 = sample_pairs(samples, seed=0, max_pairs=50, max_per_identity=5)
    g2, i2 = sample_pairs(samples, seed=0, max_pairs=50, max_per_identity=5)
    g3, i3 = sample_pairs(samples, seed=1, max_pairs=50, max_per_identity=5)
    _check_pairs(samples, g1, i1)
    assert len(g1) == 50 and len(i1) == 50
    assert np.array_equal(g1, g2) and np.array_equal(i1, i2)
    assert not np.array_equal(g1, g3)
    assert not np.array_equal(i1, i3)


def test_sample_pairs_does_not_depend_on_input_order() -> None:
    samples = _samples({f"id{k}": 2 + k % 13 for k in range(30)})
    shuffled = [samples[i] for i in np.random.default_rng(7).permutation(len(samples))]

    def by_path(s: list[Sample], pairs: np.ndarray) -> set[frozenset[str]]:
        return {frozenset((s[i].path, s[j].path)) for i, j in pairs.tolist()}

    g1, i1 = sample_pairs(samples, seed=3, max_pairs=40)
    g2, i2 = sample_pairs(shuffled, seed=3, max_pairs=40)
    assert by_path(samples, g1) == by_path(shuffled, g2)
    assert by_path(samples, i1) == by_path(shuffled, i2)


def test_sample_pairs_is_uniform_over_genuine_pairs() -> None:
    samples = _samples({"a": 10})  # 45 genuine pairs, 10 drawn per seed
    counts: Counter[tuple[int, int]] = Counter()
    for seed in range(450):
        genuine, impostor = sample_pairs(samples, seed=seed, max_pairs=10)
        assert len(impostor) == 0
        counts.update(map(tuple, genuine.tolist()))
    assert len(counts) == 45
    assert min(counts.values()) > 50 and max(counts.values()) < 150  # expected 100 each


def test_sample_pairs_rejection_sampling_for_many_impostors() -> None:
    samples = _samples({f"p{k:03d}": 10 for k in range(150)})  # 1.12M impostor pairs: sampled, not listed
    genuine, impostor = sample_pairs(samples, seed=0, max_pairs=3000)
    assert len(genuine) == 3000 and len(impostor) == 3000
    _check_pairs(samples, genuine, impostor)
    again = sample_pairs(samples, seed=0, max_pairs=3000)[1]
    assert np.array_equal(impostor, again)


# -------------------------------------------------------------------------------------------- verification


def test_perfect_separation() -> None:
    genuine = np.linspace(0.6, 0.9, 30)
    impostor = np.linspace(-0.2, 0.3, 3000)
    res = verification_metrics(genuine, impostor)
    assert res.accuracy == 1.0 and res.accuracy_std == 0.0
    assert res.folds == 10 and len(res.fold_accuracies) == 10
    assert 0.3 < res.threshold <= 0.6
    assert res.tar == 1.0
    assert res.tar_threshold == pytest.approx(np.sort(impostor)[-4])  # 3 of 3000 may be accepted
    assert res.tar_threshold > np.sort(impostor)[-4]


def test_known_overlap_accuracy() -> None:
    # 20 genuine at 0.9; 18 impostors at 0.1 and 2 at 0.95. On any 9 training folds the best threshold is
    # the midpoint 0.5 (errs only on the 0.95 impostors), so the held-out folds (2 genuine + 2 impostors
    # each) misclassify exactly the two 0.95 impostors: mean accuracy = 1 - 2/40 = 0.95. The std is 0.1
    # if they fall in different folds (0.75, 0.75, 1 x 8) and 0.15 if in the same one (0.5, 1 x 9).
    genuine = np.full(20, 0.9)
    impostor = np.r_[np.full(18, 0.1), 0.95, 0.95]
    stds = set()
    fold_orders = set()
    for seed in range(12):
        res = verification_metrics(genuine, impostor, folds=10, seed=seed)
        assert res.accuracy == pytest.approx(0.95)
        assert res.threshold == pytest.approx(0.5)
        assert sorted(res.fold_accuracies) in ([0.75, 0.75] + [1.0] * 8, [0.5] + [1.0] * 9)
        stds.add(round(res.accuracy_std, 9))
        fold_orders.add(res.fold_accuracies)
        # FAR 1e-3 of 20 impostors allows none: t just above 0.95, no genuine accepted.
        assert res.tar == 0.0 and res.far_achieved == 0.0
        assert res.tar_threshold > 0.95
    assert stds <= {0.1, 0.15}
    assert len(fold_orders) > 1  # the folds are a seeded shuffle


def test_tar_at_far_counts_three_of_3000() -> None:
    impostor = np.r_[0.9, 0.8, 0.7, 0.6, np.zeros(2996)]
    genuine = np.array([0.55, 0.65, 0.75, 0.75])
    res = verification_metrics(genuine, impostor)
    assert res.tar_threshold == float(np.nextafter(0.6, 1.0))  # smallest t with <= 3 impostors >= t
    assert res.far_achieved == pytest.approx(0.001)
    assert res.tar == 0.75
    assert res.to_dict()["tar_at_far_1e-3"] == 0.75


def test_tar_at_far_with_tied_impostors() -> None:
    # 3rd and 4th largest impostors tie at 0.6: accepting 0.6 would make 4 > 3, so t is just above it
    # and only 2 impostors are accepted; a genuine at exactly 0.6 is rejected.
    impostor = np.r_[0.9, 0.8, 0.6, 0.6, np.zeros(2996)]
    res = verification_metrics(np.array([0.6, 0.61]), impostor, folds=2)
    assert res.far_achieved == pytest.approx(2 / 3000)
    assert res.tar == 0.5


def test_failed_pairs_are_different() -> None:
    # 10 genuine at 0.9, 10 genuine with a failed image, 20 impostors at 0.1: the -inf genuine pairs are
    # misses whatever the threshold, so every fold threshold is 0.5 and accuracy is 30/40.
    genuine = np.r_[np.full(10, 0.9), np.full(10, NEG_INF)]
    impostor = np.full(20, 0.1)
    res = verification_metrics(genuine, impostor)
    assert res.accuracy == pytest.approx(0.75)
    assert res.threshold == pytest.approx(0.5)
    assert res.tar == 0.5  # t just above 0.1
    assert res.n_genuine_failed == 10 and res.n_impostor_failed == 0
    # A failed impostor pair is never accepted, even at the lowest threshold.
    all_failed = verification_metrics(np.full(5, 0.2), np.full(5, NEG_INF), folds=5)
    assert all_failed.accuracy == 1.0
    assert all_failed.tar_threshold == -math.inf and all_failed.tar == 1.0 and all_failed.far_achieved == 0.0
    d = all_failed.to_dict()
    assert d["threshold_at_far_1e-3"] is None
    json.dumps(d, allow_nan=False)


def test_verification_folds_shrink_and_degenerate_cases() -> None:
    res = verification_metrics(np.array([0.9, 0.8, 0.7]), np.array([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert res.folds == 3 and len(res.fold_accuracies) == 3 and res.accuracy == 1.0
    empty = verification_metrics(np.array([0.9]), np.zeros(0))
    assert math.isnan(empty.accuracy) and math.isnan(empty.tar) and empty.folds == 0
    d = empty.to_dict()
    assert d["accuracy"] is None and d["tar_at_far_1e-3"] is None
    json.dumps(d, allow_nan=False)
    with pytest.raises(ValueError, match="NaN"):
        verification_metrics(np.array([np.nan, 0.5]), np.array([0.1, 0.2]))


def test_best_threshold_midpoint_and_ties() -> None:
    assert best_threshold(np.array([0.8, 0.9]), np.array([0.2, 0.4])) == pytest.approx(0.6)
    # Genuine below all impostors: rejecting everything (2 right) beats accepting everything (2 right,
    # tie -> the lowest candidate, accept all at the lowest score).
    assert best_threshold(np.array([0.1, 0.2]), np.array([0.8, 0.9])) == pytest.approx(0.1)
    assert best_threshold(np.array([0.1]), np.array([0.8, 0.9])) > 0.9


# ---------------------------------------------------------------------------------------------- open set


def test_open_set_split() -> None:
    order = [3, 0, 7, 5, 1, 6, 2, 4]  # scrambled paths for identity "a"
    samples = [Sample(f"a/{k:02d}.jpg", "a") for k in order]
    samples += [Sample("b/2.jpg", "b"), Sample("b/1.jpg", "b"), Sample("z.jpg", "c"), Sample("y.jpg", "d")]
    split = open_set_split(samples)
    paths = lambda idx: [samples[i].path for i in idx]  # noqa: E731
    assert paths(split.gallery) == ["a/00.jpg", "b/1.jpg"]  # first by path, not by list order
    assert paths(split.mated) == ["a/01.jpg", "a/02.jpg", "a/03.jpg", "a/04.jpg", "a/05.jpg", "b/2.jpg"]
    assert paths(split.non_mated) == ["z.jpg", "y.jpg"]  # identities c, d
    assert split.probes == split.mated + split.non_mated
    assert split.probe_mated.tolist() == [True] * 6 + [False] * 2


# -------------------------------------------------------------------------------------------- identification

GALLERY = ["A", "B", "C"]
# Rows: mated A (hit at 0.8); mated B whose top-1 is C at 0.9 (a miss at every threshold); mated A that
# failed (no face: a miss even though its row would match); mated C (hit at 0.6); non-mated X (top 0.7);
# non-mated Y (top 0.4); non-mated Z that failed (never a false positive, whatever its row says).
SIM = np.array(
    [
        [0.8, 0.3, 0.1],
        [0.1, 0.5, 0.9],
        [0.99, 0.0, 0.0],
        [0.1, 0.2, 0.6],
        [0.4, 0.7, 0.2],
        [0.4, 0.1, 0.3],
        [np.nan, np.nan, np.nan],
    ]
)
PROBE_IDS = ["A", "B", "A", "C", "X", "Y", "Z"]
MATED = np.array([True, True, True, True, False, False, False])
FAILED = np.array([False, False, True, False, False, False, True])


def test_identification_by_hand() -> None:
    res = identification_metrics(SIM, GALLERY, PROBE_IDS, MATED, FAILED, fpir_targets=(0.01, 0.5, 0.7))
    assert res.rank1 == 0.5  # A and C of 4 mated searches
    assert (res.n_mated, res.n_non_mated, res.n_gallery) == (4, 3, 3)
    assert (res.n_mated_failed, res.n_non_mated_failed) == (1, 1)
    # FPIR 0.01 of 3 allows 0 false positives: t just above 0.7; only the 0.8 hit survives -> FNIR 3/4.
    assert res.thresholds[0] == float(np.nextafter(0.7, 1.0))
    assert res.fpir_achieved[0] == 0.0 and res.fnir[0] == 0.75
    # FPIR 0.5 allows 1: t just above 0.4 (X at 0.7 is a false positive); hits A 0.8 and C 0.6 -> 1/2.
    assert res.thresholds[1] == float(np.nextafter(0.4, 1.0))
    assert res.fpir_achieved[1] == pytest.approx(1 / 3) and res.fnir[1] == 0.5
    # FPIR 0.7 allows 2 and only 2 non-mated searches can ever be positive: t = -inf, FNIR still 1/2.
    assert res.thresholds[2] == -math.inf
    assert res.fpir_achieved[2] == pytest.approx(2 / 3) and res.fnir[2] == 0.5
    d = res.to_dict()
    assert d["threshold_at_fpir_0.7"] is None and d["fnir_at_fpir_0.01"] == 0.75 and d["rank1"] == 0.5
    json.dumps(d, allow_nan=False)


def test_identification_det_curve_by_hand() -> None:
    res = identification_metrics(SIM, GALLERY, PROBE_IDS, MATED, FAILED)
    det = res.det_curve_dict()
    assert det["threshold"] == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.4])
    assert det["fpir"] == pytest.approx([0, 0, 1 / 3, 1 / 3, 2 / 3])
    assert det["fnir"] == pytest.approx([1, 0.75, 0.75, 0.5, 0.5])
    json.dumps(det, allow_nan=False)
    assert "fnir_at_fpir_0.001" in res.to_dict()


def test_identification_mated_without_gallery_template_is_never_a_hit() -> None:
    # Identity B's gallery template failed and was removed: its probe can only match someone else.
    sim = np.array([[0.3, 0.2], [0.9, 0.1], [0.5, 0.4]])
    mated = np.array([True, True, False])
    res = identification_metrics(sim, ["A", "C"], ["B", "A", "X"], mated, np.zeros(3, bool))
    assert res.rank1 == 0.5 and res.fnir == (0.5, 0.5)
    # Without non-mated searches FPIR, and so its thresholds, are undefined.
    no_nm = identification_metrics(sim[:2], ["A", "C"], ["B", "A"], mated[:2], np.zeros(2, bool))
    assert no_nm.rank1 == 0.5 and math.isnan(no_nm.thresholds[0]) and math.isnan(no_nm.fnir[0])
    assert no_nm.to_dict()["fnir_at_fpir_0.01"] is None
    empty = identification_metrics(
        np.zeros((2, 0)), [], ["B", "X"], np.array([True, False]), np.zeros(2, bool)
    )
    assert empty.rank1 == 0.0 and empty.fnir == (1.0, 1.0) and empty.fpir_achieved == (0.0, 0.0)


# ----------------------------------------------------------------------------------------------- breakdown


def test_breakdown_restricts_to_the_group() -> None:
    rng = np.random.default_rng(0)
    samples: list[Sample] = []
    for k in range(60):
        n = 1 if k % 3 == 0 else 4
        for j in range(n):
            tags = ("dark",) if j == n - 1 else ()
            samples.append(Sample(f"id{k:02d}/{j}.jpg", f"id{k:02d}", "s1" if k % 2 else "s2", tags))
    samples.append(Sample("lonely.jpg", "lonely", "rare"))
    centres = {s.identity: rng.normal(size=16) for s in samples}
    emb = np.array([centres[s.identity] + rng.normal(scale=0.8, size=16) for s in samples])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    failed = np.zeros(len(samples), bool)
    failed[[5, 17]] = True

    genuine, impostor = sample_pairs(samples, max_pairs=400)
    scores = np.sum(emb[genuine[:, 0]] * emb[genuine[:, 1]], axis=1)
    scores[failed[genuine].any(axis=1)] = NEG_INF
    i_scores = np.sum(emb[impostor[:, 0]] * emb[impostor[:, 1]], axis=1)
    i_scores[failed[impostor].any(axis=1)] = NEG_INF
    split = open_set_split(samples)
    gallery = [i for i in split.gallery if not failed[i]]
    probes = np.asarray(split.probes)
    sim = emb[probes] @ emb[gallery].T
    gallery_ids = [samples[i].identity for i in gallery]

    groups = breakdown(
        samples,
        failed=failed,
        genuine=genuine,
        impostor=impostor,
        genuine_scores=scores,
        impostor_scores=i_scores,
        probes=probes,
        mated=split.probe_mated,
        similarity=sim,
        gallery_ids=gallery_ids,
    )
    json.dumps(groups, allow_nan=False)
    assert list(groups) == ["source=rare", "source=s1", "source=s2", "tag=dark"]

    in_s1 = np.array([s.source == "s1" for s in samples])
    g_sel = in_s1[genuine].all(axis=1)
    i_sel = in_s1[impostor].all(axis=1)
    expected_v = verification_metrics(scores[g_sel], i_scores[i_sel])
    p_sel = in_s1[probes]
    expected_i = identification_metrics(
        sim[p_sel],
        gallery_ids,
        [samples[i].identity for i in probes[p_sel]],
        split.probe_mated[p_sel],
        failed[probes[p_sel]],
    )
    s1 = groups["source=s1"]
    assert s1["images"] == int(in_s1.sum()) and s1["failures_to_acquire"] == int(failed[in_s1].sum())
    assert s1["genuine_pairs"] == int(g_sel.sum()) and s1["impostor_pairs"] == int(i_sel.sum())
    assert s1["accuracy"] == pytest.approx(expected_v.accuracy)
    assert s1["tar_at_far_1e-3"] == pytest.approx(expected_v.tar)
    assert s1["rank1"] == pytest.approx(expected_i.rank1)
    assert s1["fnir_at_fpir_0.01"] == pytest.approx(expected_i.fnir_at(0.01))
    assert s1["skipped"] == []

    rare = groups["source=rare"]  # one image: counts reported, figures skipped
    assert rare["images"] == 1 and rare["non_mated_searches"] == 1
    assert rare["accuracy"] is None and rare["rank1"] is None
    assert rare["skipped"] == ["verification", "identification"]

    dark = groups["tag=dark"]  # the last image of each identity: no genuine pair inside the group
    assert dark["genuine_pairs"] == 0 and dark["accuracy"] is None and "verification" in dark["skipped"]
    assert dark["rank1"] is not None and dark["mated_searches"] == 40
