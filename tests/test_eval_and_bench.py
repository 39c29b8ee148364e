"""`tillface eval` and `tillface bench` run end to end on real photos and report sane figures."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from tillface.vision import budget


def small_set(faces_dir, out):
    """ORL (20 people × 10) plus 60 single-photo LFW people (the non-mated probes)."""
    with open(faces_dir / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    orl = [r for r in rows if r["source"] == "orl_att_faces"]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["identity"]] = counts.get(r["identity"], 0) + 1
    singles = [r for r in rows if r["tags"] == "lfw_250_full" and counts[r["identity"]] == 1][:60]
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(orl + singles)
    return len(orl) + len(singles)


def test_eval_reports_the_protocol_figures(faces_dir, tmp_path):
    labels = tmp_path / "labels.csv"
    n = small_set(faces_dir, labels)
    out = tmp_path / "eval.json"
    plot = tmp_path / "det.png"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tillface",
            "eval",
            "--images",
            str(faces_dir),
            "--labels",
            str(labels),
            "--json",
            str(out),
            "--plot",
            str(plot),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "match_threshold =" in run.stdout
    r = json.loads(out.read_text())
    assert r["images"] == n
    assert r["identification"]["failures_to_acquire"] == 0
    assert r["verification"]["accuracy"] >= 0.95
    assert r["identification"]["rank1"] >= 0.95
    assert 0.0 <= r["identification"]["fnir_at_fpir_0.01"] <= 1.0
    for key in ("detect_p50", "embed_p50", "total_p50", "total_p95"):
        assert r["speed_ms"][key] > 0
    assert "source=orl_att_faces" in r["breakdown"]
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_bench_reports_its_figures(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "tillface", "bench", "--frames", "30", "--json", str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    r = json.loads(out.read_text())
    assert r["frames_with_face"] == r["frames"] == 30
    for key in (
        "pipeline_ms_p50",
        "pipeline_ms_p95",
        "dlib_pipeline_ms_p50",
        "speedup_vs_dlib",
        "search_ms_p50_100k",
        "peak_rss_mb",
    ):
        assert r[key] > 0, key
    assert r["dlib_frames_with_face"] > 0
    # What it was measured on, printed at the top and in the JSON.
    assert r["xnnpack"] is True and r["runtime"].startswith("ai-edge-litert ")
    assert set(r["xnnpack_models"]) == set(r["models"].values())
    assert r["cpu_features"] and r["machine"]
    top = run.stdout.splitlines()[1:4]
    assert top[0] == f"  runtime {r['runtime']} on {r['machine']}"
    assert top[1].startswith("  XNNPACK: blazeface-short 164 of 164 nodes in 1 partition; ")
    assert top[2].startswith("  CPU features ") and " ".join(r["cpu_features"]) in top[2]
    # Next to the measured figures: what each board should give, from the one table (vision.budget).
    assert set(r["expected"]) == {b.id for b in budget.BOARDS}
    for b in budget.BOARDS:
        e = r["expected"][b.id]
        want = budget.budget(b, r["models"]["detector"], r["models"]["embedder"], r["threads"])
        assert e["threads"] == r["threads"] == 2
        assert e["detect_ms"] == [round(v, 2) for v in want.detect_ms]
        assert e["embed_ms"] == [round(v, 2) for v in want.embed_ms]
        assert 0 < e["detect_ms"][0] < e["detect_ms"][1] < e["embed_ms"][0] < e["embed_ms"][1]
    lines = run.stdout.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("  expected on a board")))
    for b, line in zip(budget.BOARDS, lines[at + 1 : at + 1 + len(budget.BOARDS)], strict=True):
        assert line.split()[: len(b.name.split())] == b.name.split(), line
        want = budget.budget(b, r["models"]["detector"], r["models"]["embedder"], 2)
        assert (
            f"2 thr: detect {budget.fmt_range(want.detect_ms)} ms, embed {budget.fmt_range(want.embed_ms)} ms"
            in line
        )
