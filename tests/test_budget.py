"""The board budget (vision.budget): its MAC counts are the models', its rates follow from the cited figures,
and the README's table is the module's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tillface.models import load_manifest
from tillface.vision import budget

REPO = Path(__file__).resolve().parents[1]


def test_mac_counts_are_the_models_own():
    manifest = load_manifest()
    for model_id, macs in budget.MODEL_MACS.items():
        assert budget.graph_macs(manifest.path(model_id)) == macs, model_id
    # The README's 0.58 G for SFace, and SFace is the costly part of a frame.
    assert round(budget.MODEL_MACS["sface-2021dec-int8"] / 1e9, 2) == 0.57
    assert budget.MODEL_MACS["sface-2021dec-int8"] > 15 * budget.MODEL_MACS["blazeface-short"]


def test_rates_follow_from_the_published_figures():
    pi4, pi5, orin = (budget.board(i) for i in ("pi4", "pi5", "orin-nano"))
    # XNNPACK README, Pi 4 ARM64, 4 threads: INT8 MobileNet v2 17 ms, v1 24 ms; FP32 v2 46 ms, v1 77 ms.
    assert pi4.int8_gmacs == (4.4, 5.9)
    assert pi4.fp32_gmacs == (1.6, 1.8)
    # OpenCV Zoo's SFace fp32 on a Pi 4 (69.06 ms, 4 cores) falls near the fp32 range.
    sface_fp32_pi4 = budget.MODEL_MACS["sface-2021dec-int8"] / 69.06e-3 / 4 / 1e9
    assert pi4.fp32_gmacs[0] < sface_fp32_pi4 < 1.2 * pi4.fp32_gmacs[1]
    # Orin Nano per core = Pi 4 per core x 1.86-2.29 (OpenCV Zoo's SFace medians and means).
    assert orin.int8_gmacs == (round(4.41 * 1.859, 1), round(5.93 * 2.288, 1))
    for b in budget.BOARDS:
        for s in b.sources:
            assert s in budget.SOURCES
        for lo, hi in (b.int8_gmacs, b.fp32_gmacs):
            assert 0 < lo < hi
        assert b.int8_gmacs[0] > b.fp32_gmacs[1], "int8 kernels are faster than float ones on every board"
        assert 1 <= b.threads < b.cores, "leave a core for the camera, the session and MQTT"
    assert pi5.int8_gmacs[0] > pi4.int8_gmacs[1] and orin.int8_gmacs[0] > pi4.int8_gmacs[1]


def test_expected_times_scale_with_threads_and_stop_at_the_cores():
    pi4 = budget.board("pi4")
    one = budget.expected_ms("sface-2021dec-int8", pi4, 1)
    two = budget.expected_ms("sface-2021dec-int8", pi4, 2)
    assert one[0] == pytest.approx(2 * two[0]) and one[1] == pytest.approx(2 * two[1])
    assert budget.expected_ms("sface-2021dec-int8", pi4, 8) == budget.expected_ms(
        "sface-2021dec-int8", pi4, 4
    )
    # 574 M MACs at 5.9 G/s per thread on 1 thread: 97 ms at best.
    assert one[0] == pytest.approx(574.13888 / 5.9, rel=1e-6)
    assert one[1] == pytest.approx(574.13888 / 4.4 * budget.OVERHEAD, rel=1e-6)
    g = budget.budget(pi4, "blazeface-short", "sface-2021dec-int8")
    assert g.decision_ms == pytest.approx(tuple(budget.DECISION_EMBEDDINGS * v for v in g.frame_ms))
    with pytest.raises(KeyError):
        budget.board("pi3")


def test_readme_quotes_the_table():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## What a board should give", 1)[1].split("\n## ", 1)[0]
    assert budget.readme_table() in section
    for key in budget.SOURCES:
        assert f"[{key}]" in section, f"source {key} is not cited in the README section"
