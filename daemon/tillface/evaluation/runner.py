"""`tillface eval`: run a pipeline over a labelled image folder and score it by DESIGN §7."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from ..imageio import ImageReadError, read_rgb
from ..vision.pipeline import FacePipeline, StageTimes
from .protocol import (
    Sample,
    breakdown,
    identification_metrics,
    open_set_split,
    read_labels,
    sample_pairs,
    verification_metrics,
)


class StillPipeline(Protocol):
    name: str
    score_kind: str

    @property
    def last_times(self) -> StageTimes: ...

    def embed_still(self, rgb: np.ndarray) -> np.ndarray | None: ...

    def enrol_still(self, rgb: np.ndarray) -> np.ndarray | None: ...

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


class TillfaceStillPipeline:
    """tillface's own pipeline seen as a still-image embedder."""

    name = "tillface"
    score_kind = "cosine similarity"

    def __init__(self, pipeline: FacePipeline) -> None:
        self.pipeline = pipeline
        self.model_ids = pipeline.model_ids

    @property
    def last_times(self) -> StageTimes:
        return self.pipeline.last_times

    def embed_still(self, rgb: np.ndarray) -> np.ndarray | None:
        face = self.pipeline.process_still(rgb)
        return None if face is None else face.embedding

    def enrol_still(self, rgb: np.ndarray) -> np.ndarray | None:
        """A gallery template, made as `tillface gallery import` makes it."""
        face = self.pipeline.process_still(rgb, template=True)
        return None if face is None else face.embedding

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.asarray(a @ b.T, dtype=np.float64)


@dataclass
class Embedded:
    """What the pipeline made of each image of the set."""

    samples: list[Sample]
    embeddings: np.ndarray  # (n, d) as a probe at the till; rows of failed images are zero
    templates: np.ndarray  # (n, d) as enrolled, for the open-set gallery images only (others zero)
    failed: np.ndarray  # bool (n,): no face found (failure to acquire) or unreadable
    detect_ms: np.ndarray
    embed_ms: np.ndarray
    unreadable: list[str]


def embed_all(
    pipeline: StillPipeline, images_dir: Path, samples: Sequence[Sample], progress: bool = True
) -> Embedded:
    vectors: list[np.ndarray | None] = []
    templates: dict[int, np.ndarray] = {}
    gallery = set(open_set_split(samples).gallery)
    detect_ms = np.zeros(len(samples))
    embed_ms = np.zeros(len(samples))
    unreadable: list[str] = []
    for i, sample in enumerate(tqdm(samples, desc=f"eval {pipeline.name}", unit="img", disable=not progress)):
        try:
            rgb = read_rgb(images_dir / sample.path)
        except ImageReadError as exc:
            unreadable.append(str(exc))
            vectors.append(None)
            continue
        vectors.append(pipeline.embed_still(rgb))
        detect_ms[i] = pipeline.last_times.detect_ms
        embed_ms[i] = pipeline.last_times.embed_ms
        if i in gallery and vectors[-1] is not None:
            template = pipeline.enrol_still(rgb)
            if template is not None:
                templates[i] = template
    dim = next((v.shape[0] for v in vectors if v is not None), 128)
    matrix = np.zeros((len(samples), dim), dtype=np.float32)
    failed = np.ones(len(samples), dtype=bool)
    for i, v in enumerate(vectors):
        if v is not None:
            matrix[i] = v
            failed[i] = False
    enrolled = np.zeros_like(matrix)
    for i, t in templates.items():
        enrolled[i] = t
    return Embedded(list(samples), matrix, enrolled, failed, detect_ms, embed_ms, unreadable)


def _pair_scores(pipeline: StillPipeline, emb: Embedded, pairs: np.ndarray) -> np.ndarray:
    if len(pairs) == 0:
        return np.zeros(0)
    a, b = emb.embeddings[pairs[:, 0]], emb.embeddings[pairs[:, 1]]
    scores = np.array([pipeline.similarity(a[i : i + 1], b[i : i + 1])[0, 0] for i in range(len(pairs))])
    bad = emb.failed[pairs[:, 0]] | emb.failed[pairs[:, 1]]
    scores[bad] = -np.inf
    return scores


def score(pipeline: StillPipeline, emb: Embedded) -> dict[str, Any]:
    """All DESIGN §7 figures for one embedded set, overall and per source / tag."""
    samples = emb.samples
    genuine, impostor = sample_pairs(samples, seed=0)
    g_scores, i_scores = _pair_scores(pipeline, emb, genuine), _pair_scores(pipeline, emb, impostor)
    verification = verification_metrics(g_scores, i_scores)

    split = open_set_split(samples)
    gallery = np.asarray([i for i in split.gallery if not emb.failed[i]], dtype=np.int64)
    probes = np.concatenate(
        [np.asarray(split.mated, dtype=np.int64), np.asarray(split.non_mated, dtype=np.int64)]
    )
    mated = np.zeros(len(probes), dtype=bool)
    mated[: len(split.mated)] = True
    similarity = (
        pipeline.similarity(emb.embeddings[probes], emb.templates[gallery])
        if len(gallery) and len(probes)
        else np.zeros((len(probes), len(gallery)))
    )
    identification = identification_metrics(
        similarity,
        [samples[i].identity for i in gallery],
        [samples[i].identity for i in probes],
        mated,
        emb.failed[probes],
    )
    ident = identification.to_dict()
    ident["failures_to_acquire"] = int(emb.failed.sum())
    groups = breakdown(
        samples,
        failed=emb.failed,
        genuine=genuine,
        impostor=impostor,
        genuine_scores=g_scores,
        impostor_scores=i_scores,
        probes=probes,
        mated=mated,
        similarity=similarity,
        gallery_ids=[samples[i].identity for i in gallery],
    )
    total = emb.detect_ms + emb.embed_ms
    ok = ~emb.failed
    return {
        "pipeline": pipeline.name,
        "score_kind": pipeline.score_kind,
        "images": len(samples),
        "unreadable": emb.unreadable,
        "verification": verification.to_dict(),
        "identification": ident,
        "breakdown": groups,
        "speed_ms": {
            "detect_p50": _pct(emb.detect_ms, 50),
            "detect_p95": _pct(emb.detect_ms, 95),
            "embed_p50": _pct(emb.embed_ms[ok], 50),
            "embed_p95": _pct(emb.embed_ms[ok], 95),
            "total_p50": _pct(total, 50),
            "total_p95": _pct(total, 95),
        },
        "det_curve": identification.det_curve_dict() if hasattr(identification, "det_curve_dict") else None,
    }


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def run_eval(
    make_pipeline: Callable[[], StillPipeline],
    images_dir: Path,
    labels_csv: Path,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    samples = read_labels(labels_csv)
    if limit is not None:
        samples = samples[:limit]
    pipeline = make_pipeline()
    started = time.perf_counter()
    emb = embed_all(pipeline, images_dir, samples, progress=progress)
    result = score(pipeline, emb)
    result["models"] = dict(getattr(pipeline, "model_ids", {}))
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_report(result: dict[str, Any]) -> str:
    v, ident, speed = result["verification"], result["identification"], result["speed_ms"]
    lines = [
        f"pipeline {result['pipeline']} ({result['score_kind']}) on {result['images']} images",
        f"  verification  accuracy {_fmt(v.get('accuracy'))} ± {_fmt(v.get('accuracy_std'))}"
        f"   TAR@FAR1e-3 {_fmt(v.get('tar_at_far_1e-3'))}",
        f"  1:N open set  rank-1 {_fmt(ident.get('rank1'))}"
        f"   FNIR@FPIR0.01 {_fmt(ident.get('fnir_at_fpir_0.01'))}"
        f"   FNIR@FPIR0.001 {_fmt(ident.get('fnir_at_fpir_0.001'))}",
        f"  failures to acquire {ident.get('failures_to_acquire')} of {result['images']}",
        f"  speed (ms/image)  detect p50 {_fmt(speed['detect_p50'], 2)}"
        f"   embed p50 {_fmt(speed['embed_p50'], 2)}"
        f"   total p50 {_fmt(speed['total_p50'], 2)} p95 {_fmt(speed['total_p95'], 2)}",
    ]
    if result["pipeline"] == "tillface":
        lines.append(
            "  config: [recognition] match_threshold = "
            f"{_fmt(ident.get('threshold_at_fpir_0.001'))} for FPIR 0.001, "
            f"{_fmt(ident.get('threshold_at_fpir_0.01'))} for FPIR 0.01"
        )
    else:
        lines.append(
            f"  thresholds ({result['score_kind']}): "
            f"FPIR 0.001 → {_fmt(ident.get('threshold_at_fpir_0.001'))}, "
            f"FPIR 0.01 → {_fmt(ident.get('threshold_at_fpir_0.01'))}"
        )
    lines.append("  breakdown:")
    lines.append(
        f"    {'group':<44} {'images':>6} {'FTA':>5} {'acc':>7} {'rank1':>7} {'FNIR.01':>8} {'FNIR.001':>8}"
    )
    for name, g in result["breakdown"].items():
        lines.append(
            f"    {name:<44} {g.get('images', 0):>6} {g.get('failures_to_acquire', 0):>5} "
            f"{_fmt(g.get('accuracy'), 3):>7} {_fmt(g.get('rank1'), 3):>7} "
            f"{_fmt(g.get('fnir_at_fpir_0.01'), 3):>8} {_fmt(g.get('fnir_at_fpir_0.001'), 3):>8}"
        )
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
