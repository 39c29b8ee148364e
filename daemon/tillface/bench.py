"""`tillface bench`: how fast the unit's pipeline is, against the face_recognition/dlib pipeline.

Everything runs in one process on the same frames: 640×480 till-like frames with one face, made from
a photo (the registry-shipped demo portrait by default). Figures are printed, and written as JSON.
"""

from __future__ import annotations

import gc
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .demo_data import astronaut_photo
from .imageio import read_rgb
from .recognition.matcher import Matcher
from .vision import budget
from .vision.pipeline import FacePipeline, face_size
from .vision.runtime import describe_use, runtime_facts

FRAME_W, FRAME_H = 640, 480
DISTINCT_FRAMES = 20


@dataclass(frozen=True)
class BenchOptions:
    frames: int = 200
    dlib_frames: int = 30
    threads: int = 2
    detector: str = "short"
    gallery_sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    searches: int = 200
    image: Path | None = None
    with_dlib: bool = True


def make_frames(
    photo: np.ndarray, count: int, face_box: np.ndarray, face_px: int = 130, seed: int = 0
) -> list[np.ndarray]:
    """Till-like frames: the photo scaled so that the face is `face_px` wide (a customer about 1 m from
    a 640×480 camera), the face near the centre of a plain wall, drifting a little between frames."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = face_box
    scale = face_px / max(1.0, float(x1 - x0))
    base = cv2.resize(
        photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    )
    h, w = base.shape[:2]
    fcx, fcy = (x0 + x1) / 2 * scale, (y0 + y1) / 2 * scale
    frames = []
    for _ in range(count):
        frame = np.full((FRAME_H, FRAME_W, 3), 96, dtype=np.uint8)
        x = int(FRAME_W / 2 - fcx + rng.integers(-40, 41))
        y = int(FRAME_H * 0.45 - fcy + rng.integers(-20, 21))
        fx0, fy0 = max(x, 0), max(y, 0)
        fx1, fy1 = min(x + w, FRAME_W), min(y + h, FRAME_H)
        frame[fy0:fy1, fx0:fx1] = base[fy0 - y : fy1 - y, fx0 - x : fx1 - x]
        frames.append(frame)
    return frames


def locate_face(pipeline: FacePipeline, photo: np.ndarray) -> np.ndarray:
    """Where the face is in the source photo."""
    faces = pipeline.detect(photo, pad_if_none=True)
    if not faces:
        raise SystemExit("tillface bench: no face found in the photo given with --image")
    return max(faces, key=face_size).box


def _stats(ms: list[float]) -> tuple[float, float]:
    arr = np.asarray(ms)
    return round(float(np.percentile(arr, 50)), 3), round(float(np.percentile(arr, 95)), 3)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_pipeline(pipeline: FacePipeline, distinct: list[np.ndarray], count: int) -> dict[str, Any]:
    # A few distinct frames cycled: the benchmark's own frame store must not dominate peak RSS.
    frames = [distinct[i % len(distinct)] for i in range(count)]
    for frame in frames[:10]:  # warm-up: first invokes allocate and pack weights
        faces = pipeline.detect(frame)
        if faces:
            pipeline.describe(frame, max(faces, key=face_size))
    total, detect, embed, found = [], [], [], 0
    for frame in frames:
        t0 = time.perf_counter()
        faces = pipeline.detect(frame)
        if faces:
            pipeline.describe(frame, max(faces, key=face_size))
            found += 1
        total.append((time.perf_counter() - t0) * 1000.0)
        detect.append(pipeline.last_times.detect_ms)
        if faces:
            embed.append(pipeline.last_times.embed_ms)
    p50, p95 = _stats(total)
    return {
        "pipeline_ms_p50": p50,
        "pipeline_ms_p95": p95,
        "detect_ms_p50": _stats(detect)[0],
        "embed_ms_p50": _stats(embed)[0] if embed else None,
        "frames": len(frames),
        "frames_with_face": found,
    }


def bench_search(sizes: tuple[int, ...], searches: int, dim: int = 128, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for n in sizes:
        templates = rng.standard_normal((n, dim), dtype=np.float32)
        members = [f"m{i // 3:06d}" for i in range(n)]  # three templates per member
        matcher = Matcher(templates, members)
        queries = rng.standard_normal((searches, dim), dtype=np.float32)
        for q in queries[:5]:
            matcher.decide(q, 0.5, 0.05)
        times = []
        for q in queries:
            t0 = time.perf_counter()
            matcher.decide(q, 0.5, 0.05)
            times.append((time.perf_counter() - t0) * 1000.0)
        p50, p95 = _stats(times)
        label = f"{n // 1000}k"
        out[f"search_ms_p50_{label}"] = p50
        out[f"search_ms_p95_{label}"] = p95
        del matcher, templates
        gc.collect()
    return out


def bench_dlib(frames: list[np.ndarray]) -> dict[str, Any]:
    from .evaluation.reference import DlibReferencePipeline

    ref = DlibReferencePipeline()
    ref.embed_still(frames[0])
    times, found = [], 0
    for frame in frames:
        t0 = time.perf_counter()
        found += ref.embed_still(frame) is not None
        times.append((time.perf_counter() - t0) * 1000.0)
    p50, p95 = _stats(times)
    return {"dlib_pipeline_ms_p50": p50, "dlib_pipeline_ms_p95": p95, "dlib_frames_with_face": found}


def run_bench(options: BenchOptions) -> dict[str, Any]:
    import cv2 as _cv2

    _cv2.setNumThreads(options.threads)
    photo_path = options.image or astronaut_photo()
    pipeline = FacePipeline.from_manifest(detector=options.detector, num_threads=options.threads)
    photo = read_rgb(photo_path)
    frames = make_frames(photo, DISTINCT_FRAMES, locate_face(pipeline, photo))
    result: dict[str, Any] = {
        "photo": str(photo_path),
        "frame": f"{FRAME_W}x{FRAME_H}",
        "threads": options.threads,
        "models": pipeline.model_ids,
        # What the figures were measured on: runtime, XNNPACK use per model, CPU features.
        **runtime_facts(pipeline.runtime_reports()),
    }
    result.update(bench_pipeline(pipeline, frames, options.frames))
    result["expected"] = expected_on_boards(result["models"], options.threads)
    result.update(bench_search(options.gallery_sizes, options.searches))
    # Peak RSS of the unit's own work (pipeline + largest gallery), before dlib is loaded.
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if options.with_dlib:
        result.update(bench_dlib([frames[i % len(frames)] for i in range(options.dlib_frames)]))
        result["speedup_vs_dlib"] = round(result["dlib_pipeline_ms_p50"] / result["pipeline_ms_p50"], 1)
    return result


def expected_on_boards(models: dict[str, str], threads: int) -> dict[str, Any]:
    """The budget's expected invoke times (vision.budget) for these models on each board, at `threads` and at
    the board's own thread count: what a technician compares the measured figures with."""
    out: dict[str, Any] = {}
    for b in budget.BOARDS:
        here = budget.budget(b, models["detector"], models["embedder"], threads)
        own = budget.budget(b, models["detector"], models["embedder"])
        out[b.id] = {
            "board": b.name,
            "threads": here.threads,
            "detect_ms": [round(v, 2) for v in here.detect_ms],
            "embed_ms": [round(v, 2) for v in here.embed_ms],
            "own_threads": own.threads,
            "own_detect_ms": [round(v, 2) for v in own.detect_ms],
            "own_embed_ms": [round(v, 2) for v in own.embed_ms],
        }
    return out


def format_runtime(r: dict[str, Any]) -> list[str]:
    """The runtime, XNNPACK and CPU lines (and a warning when a model runs without XNNPACK)."""
    models = r["xnnpack_models"]
    lines = [
        f"  runtime {r['runtime']} on {r['machine']}",
        "  XNNPACK: "
        + "; ".join(
            f"{model_id} {describe_use(m['nodes'], m['xnnpack_nodes'], m['partitions'])}"
            for model_id, m in models.items()
        ),
        f"  CPU features {' '.join(r['cpu_features']) or 'none detected'} ({r['cpu_features_source']})",
    ]
    missing = [model_id for model_id, m in models.items() if m["xnnpack_nodes"] == 0]
    if missing:
        lines.append(
            f"  WARNING: {', '.join(missing)} without XNNPACK: slower, and not the embeddings the till's "
            "thresholds were set with; these figures are not the till's (see `tillface doctor`)"
        )
    return lines


def format_bench(r: dict[str, Any]) -> str:
    lines = [
        f"tillface bench: {r['frames']} frames {r['frame']} ({r['frames_with_face']} with a face found), "
        f"{r['threads']} threads, models {r['models']}",
        *format_runtime(r),
        f"  pipeline  p50 {r['pipeline_ms_p50']:.2f} ms  p95 {r['pipeline_ms_p95']:.2f} ms"
        f"  (detect p50 {r['detect_ms_p50']:.2f}, align+embed p50 {r['embed_ms_p50']} ms)",
    ]
    if "expected" in r:
        lines += budget.bench_lines(r["models"]["detector"], r["models"]["embedder"], r["threads"])
        lines.append(
            "    (model invokes only: the align+embed figure above also holds the alignment warp, a few ms)"
        )
    for key in sorted(k for k in r if k.startswith("search_ms_p50_")):
        size = key.rsplit("_", 1)[1]
        lines.append(
            f"  gallery search {size:>5} templates  p50 {r[key]:.3f} ms"
            f"  p95 {r[f'search_ms_p95_{size}']:.3f} ms"
        )
    lines.append(f"  peak RSS {r['peak_rss_mb']:.0f} MB")
    if "dlib_pipeline_ms_p50" in r:
        lines.append(
            f"  dlib face_recognition pipeline  p50 {r['dlib_pipeline_ms_p50']:.1f} ms"
            f"  p95 {r['dlib_pipeline_ms_p95']:.1f} ms  → tillface is {r['speedup_vs_dlib']:.1f}× faster"
        )
    return "\n".join(lines)
