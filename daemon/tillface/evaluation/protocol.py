"""The statistics of the evaluation protocol (DESIGN §7), free of images and models.

Conventions used throughout:

* Scores are similarities: higher means "same person"; a pair or search is accepted at threshold ``t``
  when its score is ``>= t``.
* A score of ``-inf`` marks a failure to acquire (no face found in one of the images). It is never
  accepted at any threshold: a genuine pair or a mated search with a failure is a miss, an impostor pair
  or a non-mated search with a failure is never a false accept. ``NaN`` and ``+inf`` scores are rejected.
* "The smallest threshold ``t`` with rate(t) <= target" is taken literally on the float grid: if ``k`` is
  the number of negatives the target allows (``floor(target * n)``) and ``s`` the ``(k+1)``-th largest
  negative score, the threshold is the next float above ``s`` (``numpy.nextafter``), so that ``s`` and
  everything below it are rejected. If no more than ``k`` negatives can be accepted at all, it is ``-inf``.
* ``to_dict()`` results are JSON-ready: plain ``int``/``float``/``str``/``list``; any non-finite float
  (NaN for "undefined", ±inf for "accept everything"/"reject everything") becomes ``None``.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "IdentificationResult",
    "LabelsError",
    "OpenSetSplit",
    "Sample",
    "VerificationResult",
    "breakdown",
    "identification_metrics",
    "open_set_split",
    "read_labels",
    "sample_pairs",
    "verification_metrics",
]

FAR_TARGET = 1e-3
MAX_MATED_PER_IDENTITY = 5
# Above this many candidate impostor pairs they are sampled by rejection instead of enumerated.
_ENUMERATE_LIMIT = 1_000_000


# --------------------------------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class Sample:
    """One labelled image; ``path`` is relative to the image folder."""

    path: str
    identity: str
    source: str = ""
    tags: tuple[str, ...] = ()


class LabelsError(ValueError):
    """A labels CSV that cannot be used; the message names the file and the line."""


_COLUMNS = ("path", "identity", "source", "tags")


def read_labels(csv_path: Path) -> list[Sample]:
    """Read a labels CSV with a header row ``path,identity[,source,tags]``.

    ``tags`` are separated by ``;``. Blank lines are skipped. A row with a missing path or identity, a
    wrong number of fields, or a path already listed raises :class:`LabelsError` naming the file and line.
    """
    csv_path = Path(csv_path)
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header: list[str] | None = None
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip().lower() for cell in row]
                missing = [c for c in ("path", "identity") if c not in header]
                unknown = [c for c in header if c not in _COLUMNS]
                if missing or unknown or len(set(header)) != len(header):
                    raise LabelsError(
                        f"{csv_path}:{line}: expected a header row with columns path,identity[,source,tags], "
                        f"got {','.join(row)!r}"
                    )
                continue
            if len(row) != len(header):
                raise LabelsError(
                    f"{csv_path}:{line}: expected {len(header)} fields ({','.join(header)}), got {len(row)}"
                )
            cells = {name: cell.strip() for name, cell in zip(header, row, strict=True)}
            path, identity = cells["path"], cells["identity"]
            if not path:
                raise LabelsError(f"{csv_path}:{line}: empty path")
            if not identity:
                raise LabelsError(f"{csv_path}:{line}: empty identity for {path!r}")
            if path in seen:
                raise LabelsError(f"{csv_path}:{line}: {path!r} is already listed on line {seen[path]}")
            seen[path] = line
            tags = tuple(t.strip() for t in cells.get("tags", "").split(";") if t.strip())
            samples.append(Sample(path=path, identity=identity, source=cells.get("source", ""), tags=tags))
    if header is None:
        raise LabelsError(
            f"{csv_path}:1: empty labels file (expected a header row path,identity[,source,tags])"
        )
    return samples


# ---------------------------------------------------------------------------------------------------- pairs


def _by_identity(samples: Sequence[Sample]) -> dict[str, list[int]]:
    """Sample indices per identity, identities in sorted order, each list sorted by path (then index)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s.identity].append(i)
    return {ident: sorted(groups[ident], key=lambda i: (samples[i].path, i)) for ident in sorted(groups)}


def _as_pairs(rows: Iterable[tuple[int, int]] | np.ndarray) -> np.ndarray:
    arr = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows, dtype=np.int64).reshape(-1, 2)
    if len(arr) == 0:
        return arr
    arr = np.sort(arr, axis=1)
    return arr[np.lexsort((arr[:, 1], arr[:, 0]))]


def sample_pairs(
    samples: Sequence[Sample], seed: int = 0, max_pairs: int = 3000, max_per_identity: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded genuine and impostor pairs for verification (DESIGN §7).

    Returns ``(genuine, impostor)``: int64 arrays of shape ``(n, 2)`` of indices into ``samples``, each row
    ``(i, j)`` with ``i < j``, rows sorted, no duplicates. One ``numpy.random.default_rng(seed)`` drives, in
    order: the cap of each identity (identities in sorted order, images sorted by path, then
    ``max_per_identity`` of them chosen without replacement), the genuine pairs (all of them if there are no
    more than ``max_pairs``, otherwise ``max_pairs`` chosen uniformly without replacement) and the impostor
    pairs (likewise). The result depends on the samples' paths and identities, not on their order.
    """
    if max_pairs < 0 or max_per_identity < 1:
        raise ValueError("max_pairs must be >= 0 and max_per_identity >= 1")
    rng = np.random.default_rng(seed)
    kept: list[int] = []  # canonical order: identity, then path
    owner: list[int] = []  # identity number of each kept image
    for n, indices in enumerate(_by_identity(samples).values()):
        if len(indices) > max_per_identity:
            chosen = np.sort(rng.choice(len(indices), size=max_per_identity, replace=False))
            indices = [indices[int(c)] for c in chosen]
        kept.extend(indices)
        owner.extend([n] * len(indices))
    kept_arr = np.asarray(kept, dtype=np.int64)
    owner_arr = np.asarray(owner, dtype=np.int64)
    m = len(kept)

    # Genuine: enumerate within each identity (positions in the canonical order).
    starts = np.flatnonzero(np.r_[True, owner_arr[1:] != owner_arr[:-1]]) if m else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], m] if m else np.zeros(0, np.int64)
    gen_blocks = []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        if b - a >= 2:
            ii, jj = np.triu_indices(b - a, 1)
            gen_blocks.append(np.stack([ii + a, jj + a], axis=1))
    gen_pos = np.concatenate(gen_blocks) if gen_blocks else np.zeros((0, 2), np.int64)
    if len(gen_pos) > max_pairs:
        gen_pos = gen_pos[rng.choice(len(gen_pos), size=max_pairs, replace=False)]

    # Impostor: enumerate when there are few candidates, otherwise rejection-sample distinct pairs.
    sizes = (ends - starts).astype(np.int64)
    n_impostor = (m * m - int(np.sum(sizes * sizes))) // 2
    if n_impostor <= max(_ENUMERATE_LIMIT, 2 * max_pairs):
        imp_blocks = []
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            if b < m:
                left, right = np.meshgrid(np.arange(a, b), np.arange(b, m), indexing="ij")
                imp_blocks.append(np.stack([left.ravel(), right.ravel()], axis=1))
        imp_pos = np.concatenate(imp_blocks) if imp_blocks else np.zeros((0, 2), np.int64)
        if len(imp_pos) > max_pairs:
            imp_pos = imp_pos[rng.choice(len(imp_pos), size=max_pairs, replace=False)]
    else:
        chosen_pairs: dict[tuple[int, int], None] = {}
        while len(chosen_pairs) < max_pairs:
            need = max_pairs - len(chosen_pairs)
            draw = rng.integers(0, m, size=(2 * need + 16, 2))
            for x, y in draw.tolist():
                if owner[x] != owner[y]:
                    chosen_pairs.setdefault((min(x, y), max(x, y)), None)
                    if len(chosen_pairs) == max_pairs:
                        break
        imp_pos = np.asarray(list(chosen_pairs), dtype=np.int64).reshape(-1, 2)

    return _as_pairs(kept_arr[gen_pos]), _as_pairs(kept_arr[imp_pos])


# ------------------------------------------------------------------------------------------- shared helpers


def _json_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_json_value(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    return value


def _fmt_target(target: float) -> str:
    """FPIR targets in keys: 0.01 -> "0.01", 0.001 -> "0.001"."""
    return f"{target:g}"


def _fmt_sci(target: float) -> str:
    """FAR targets in keys: 1e-3 -> "1e-3"."""
    mantissa, exponent = f"{target:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _check_scores(name: str, scores: np.ndarray) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if np.isnan(arr).any() or np.isposinf(arr).any():
        raise ValueError(f"{name}: scores must be finite or -inf (failure to acquire), got NaN or +inf")
    return arr


def _allowed(target: float, n: int) -> int:
    """How many of ``n`` negatives a target rate allows (floor, robust to 3000 * 1e-3 rounding)."""
    return math.floor(target * n + 1e-9)


def _threshold_at_rate(accepted_scores: np.ndarray, n_total: int, target: float) -> float:
    """Smallest ``t`` with ``count(accepted_scores >= t) / n_total <= target``.

    ``accepted_scores`` are the scores of the negatives that can be accepted at all (failures removed).
    NaN if ``n_total`` is 0.
    """
    if n_total == 0:
        return math.nan
    k = _allowed(target, n_total)
    if accepted_scores.size <= k:
        return -math.inf
    kth = np.sort(accepted_scores)[::-1][k]
    return float(np.nextafter(kth, np.inf))


def _rate_at(scores: np.ndarray, n_total: int, threshold: float) -> float:
    """Fraction of ``n_total`` whose (finite) score is ``>= threshold``; -inf scores never count."""
    if n_total == 0 or math.isnan(threshold):
        return math.nan
    return float(np.count_nonzero(np.isfinite(scores) & (scores >= threshold)) / n_total)


# ------------------------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class VerificationResult:
    """1:1 verification figures. ``accuracy`` and ``threshold`` come from the cross-validation."""

    accuracy: float  # mean held-out accuracy over the folds
    accuracy_std: float  # population std (ddof=0) of the fold accuracies
    threshold: float  # mean of the per-fold thresholds
    fold_accuracies: tuple[float, ...]
    folds: int  # folds actually used (fewer than asked if a kind has fewer pairs than folds)
    tar: float  # TAR at FAR = far_target
    tar_threshold: float
    far_target: float
    far_achieved: float  # fraction of impostors accepted at tar_threshold
    n_genuine: int
    n_impostor: int
    n_genuine_failed: int  # genuine pairs with a failure (-inf)
    n_impostor_failed: int

    def to_dict(self) -> dict[str, Any]:
        t = _fmt_sci(self.far_target)
        return _json_value(
            {
                "accuracy": self.accuracy,
                "accuracy_std": self.accuracy_std,
                "accuracy_threshold": self.threshold,
                "fold_accuracies": self.fold_accuracies,
                "folds": self.folds,
                f"tar_at_far_{t}": self.tar,
                f"threshold_at_far_{t}": self.tar_threshold,
                "far_target": self.far_target,
                "far_achieved": self.far_achieved,
                "genuine_pairs": self.n_genuine,
                "impostor_pairs": self.n_impostor,
                "genuine_pairs_failed": self.n_genuine_failed,
                "impostor_pairs_failed": self.n_impostor_failed,
            }
        )


def best_threshold(genuine_scores: np.ndarray, impostor_scores: np.ndarray) -> float:
    """The threshold maximising accuracy (``score >= t`` means "same") on the given pairs.

    Candidates: the lowest finite score (accept every finite score), the midpoints between consecutive
    distinct finite scores, and the next float above the highest (reject everything). Ties go to the
    lowest candidate. ``+inf`` if there is no finite score.
    """
    gen = np.sort(np.asarray(genuine_scores, dtype=np.float64))
    imp = np.sort(np.asarray(impostor_scores, dtype=np.float64))
    both = np.concatenate([gen, imp])
    values = np.unique(both[np.isfinite(both)])
    if values.size == 0:
        return math.inf
    candidates = np.concatenate(
        [values[:1], (values[:-1] + values[1:]) / 2.0, [np.nextafter(values[-1], np.inf)]]
    )
    true_accepts = gen.size - np.searchsorted(gen, candidates, side="left")
    true_rejects = np.searchsorted(imp, candidates, side="left")
    return float(candidates[int(np.argmax(true_accepts + true_rejects))])


def _accuracy(gen: np.ndarray, imp: np.ndarray, threshold: float) -> float:
    correct = np.count_nonzero(gen >= threshold) + np.count_nonzero(imp < threshold)
    return correct / (gen.size + imp.size)


def verification_metrics(
    genuine_scores: np.ndarray,
    impostor_scores: np.ndarray,
    folds: int = 10,
    seed: int = 0,
    far_target: float = FAR_TARGET,
) -> VerificationResult:
    """Accuracy by stratified k-fold cross-validation and TAR at FAR = ``far_target`` (DESIGN §7).

    Folds: genuine and impostor pairs are each permuted with ``default_rng(seed)`` (genuine first) and dealt
    round-robin into ``min(folds, n_genuine, n_impostor)`` folds, so every fold holds both kinds. For each
    fold the threshold is :func:`best_threshold` on the other folds and the accuracy is measured on the
    held-out fold. Fewer than 2 usable folds gives NaN accuracy. TAR: over all pairs, with the threshold
    described in the module docstring (3 of 3000 impostors may be accepted at 1e-3).
    """
    gen = _check_scores("genuine_scores", genuine_scores)
    imp = _check_scores("impostor_scores", impostor_scores)
    if folds < 2:
        raise ValueError("folds must be >= 2")

    k = min(folds, gen.size, imp.size)
    fold_acc: list[float] = []
    fold_thr: list[float] = []
    if k >= 2:
        rng = np.random.default_rng(seed)
        gen_fold = np.empty(gen.size, dtype=np.int64)
        gen_fold[rng.permutation(gen.size)] = np.arange(gen.size) % k
        imp_fold = np.empty(imp.size, dtype=np.int64)
        imp_fold[rng.permutation(imp.size)] = np.arange(imp.size) % k
        for f in range(k):
            t = best_threshold(gen[gen_fold != f], imp[imp_fold != f])
            fold_thr.append(t)
            fold_acc.append(_accuracy(gen[gen_fold == f], imp[imp_fold == f], t))
    accuracy = float(np.mean(fold_acc)) if fold_acc else math.nan
    accuracy_std = float(np.std(fold_acc)) if fold_acc else math.nan
    threshold = float(np.mean(fold_thr)) if fold_thr else math.nan

    tar_threshold = _threshold_at_rate(imp[np.isfinite(imp)], imp.size, far_target)
    tar = _rate_at(gen, gen.size, tar_threshold)
    return VerificationResult(
        accuracy=accuracy,
        accuracy_std=accuracy_std,
        threshold=threshold,
        fold_accuracies=tuple(fold_acc),
        folds=k if k >= 2 else 0,
        tar=tar,
        tar_threshold=tar_threshold,
        far_target=far_target,
        far_achieved=_rate_at(imp, imp.size, tar_threshold),
        n_genuine=int(gen.size),
        n_impostor=int(imp.size),
        n_genuine_failed=int(np.count_nonzero(np.isneginf(gen))),
        n_impostor_failed=int(np.count_nonzero(np.isneginf(imp))),
    )


# --------------------------------------------------------------------------------------------- open set


@dataclass(frozen=True)
class OpenSetSplit:
    """Indices into the samples: gallery, mated probes and non-mated probes (DESIGN §7)."""

    gallery: tuple[int, ...]
    mated: tuple[int, ...]
    non_mated: tuple[int, ...]

    @property
    def probes(self) -> tuple[int, ...]:
        """Mated probes first, then non-mated ones (the row order :attr:`probe_mated` describes)."""
        return self.mated + self.non_mated

    @property
    def probe_mated(self) -> np.ndarray:
        return np.r_[np.ones(len(self.mated), dtype=bool), np.zeros(len(self.non_mated), dtype=bool)]


def open_set_split(samples: Sequence[Sample], max_mated: int = MAX_MATED_PER_IDENTITY) -> OpenSetSplit:
    """Gallery = the first image by path of every identity with >= 2 images; mated probes = the next up to
    ``max_mated`` images of it in path order; non-mated probes = every image of a single-image identity.
    Identities are taken in sorted order; path ties are broken by sample index."""
    gallery: list[int] = []
    mated: list[int] = []
    non_mated: list[int] = []
    for indices in _by_identity(samples).values():
        if len(indices) >= 2:
            gallery.append(indices[0])
            mated.extend(indices[1 : 1 + max_mated])
        else:
            non_mated.extend(indices)
    return OpenSetSplit(tuple(gallery), tuple(mated), tuple(non_mated))


@dataclass(frozen=True)
class IdentificationResult:
    """1:N open-set figures, NISTIR 8271 definitions (see :func:`identification_metrics`)."""

    fpir_targets: tuple[float, ...]
    thresholds: tuple[float, ...]  # per target: smallest t with FPIR(t) <= target
    fnir: tuple[float, ...]  # per target: FNIR at that threshold
    fpir_achieved: tuple[float, ...]  # per target: FPIR at that threshold
    rank1: float
    n_mated: int
    n_non_mated: int
    n_gallery: int
    n_mated_failed: int
    n_non_mated_failed: int
    det_thresholds: np.ndarray = field(repr=False)  # descending
    det_fpir: np.ndarray = field(repr=False)  # FPIR at each DET threshold (ascending)
    det_fnir: np.ndarray = field(repr=False)  # FNIR at each DET threshold (descending)

    def fnir_at(self, target: float) -> float:
        return self.fnir[self.fpir_targets.index(target)]

    def threshold_at(self, target: float) -> float:
        return self.thresholds[self.fpir_targets.index(target)]

    def to_dict(self) -> dict[str, Any]:
        """The summary figures; the DET curve is in :meth:`det_curve_dict`."""
        out: dict[str, Any] = {"rank1": self.rank1}
        for target, fnir, thr, fpir in zip(
            self.fpir_targets, self.fnir, self.thresholds, self.fpir_achieved, strict=True
        ):
            t = _fmt_target(target)
            out[f"fnir_at_fpir_{t}"] = fnir
            out[f"threshold_at_fpir_{t}"] = thr
            out[f"fpir_achieved_at_fpir_{t}"] = fpir
        out.update(
            mated_searches=self.n_mated,
            non_mated_searches=self.n_non_mated,
            gallery=self.n_gallery,
            mated_failed=self.n_mated_failed,
            non_mated_failed=self.n_non_mated_failed,
        )
        return _json_value(out)

    def det_curve_dict(self) -> dict[str, list[Any]]:
        """DET points ordered by increasing FPIR, for a log-axes plot (FPIR 0 points included)."""
        return _json_value({"threshold": self.det_thresholds, "fpir": self.det_fpir, "fnir": self.det_fnir})


def identification_metrics(
    similarity: np.ndarray,
    gallery_ids: Sequence[str],
    probe_ids: Sequence[str],
    mated: np.ndarray,
    probe_failed: np.ndarray,
    fpir_targets: Sequence[float] = (0.01, 0.001),
) -> IdentificationResult:
    """FNIR at target FPIRs, the thresholds giving them, rank-1 and a DET curve (NISTIR 8271).

    ``similarity`` is ``(n_probes, n_gallery)``, gallery failures already removed. Each search returns its
    top-1 candidate (highest similarity; ties go to the lower gallery index). A failed probe returns no
    candidate (its row is ignored). FPIR(t) = non-mated searches whose top-1 score is ``>= t`` over all
    non-mated searches; FNIR(t) = mated searches that do *not* have the probe's identity at rank 1 with
    score ``>= t``, over all mated searches. Rank-1 = mated searches whose top-1 is the right identity.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    mated_arr = np.asarray(mated, dtype=bool).reshape(-1)
    failed = np.asarray(probe_failed, dtype=bool).reshape(-1)
    n_probes = mated_arr.size
    if sim.ndim != 2 or sim.shape != (n_probes, len(gallery_ids)):
        raise ValueError(f"similarity has shape {sim.shape}, expected ({n_probes}, {len(gallery_ids)})")
    if len(probe_ids) != n_probes or failed.size != n_probes:
        raise ValueError("probe_ids, mated and probe_failed must have one entry per probe")
    if np.isnan(sim[~failed]).any():
        raise ValueError("similarity has NaN for a probe not marked as failed")

    # Top-1 candidate of each search; -inf score (= no candidate) for failures or an empty gallery.
    top_score = np.full(n_probes, -np.inf)
    correct = np.zeros(n_probes, dtype=bool)
    if sim.shape[1] > 0:
        ok = np.flatnonzero(~failed)
        best = np.argmax(sim[ok], axis=1)
        top_score[ok] = sim[ok, best]
        gallery_arr = np.asarray(list(gallery_ids), dtype=object)
        probe_arr = np.asarray(list(probe_ids), dtype=object)
        correct[ok] = gallery_arr[best] == probe_arr[ok]
    hit_score = np.where(mated_arr & correct, top_score, -np.inf)  # score at which a mated search is a hit
    nm_score = top_score[~mated_arr]  # -inf for failed non-mated searches
    n_mated = int(np.count_nonzero(mated_arr))
    n_non_mated = n_probes - n_mated
    nm_accepted = nm_score[np.isfinite(nm_score)]

    def fnir_at(t: float) -> float:
        if n_mated == 0 or math.isnan(t):
            return math.nan
        return 1.0 - _rate_at(hit_score[mated_arr], n_mated, t)

    targets = tuple(float(x) for x in fpir_targets)
    thresholds = tuple(_threshold_at_rate(nm_accepted, n_non_mated, x) for x in targets)

    # DET: every distinct finite top-1 score is a threshold where FPIR or FNIR can change.
    det_t = np.unique(top_score[np.isfinite(top_score)])[::-1]
    nm_sorted = np.sort(nm_accepted)
    hits_sorted = np.sort(hit_score[mated_arr & np.isfinite(hit_score)])
    nm_count = nm_sorted.size - np.searchsorted(nm_sorted, det_t, side="left")
    hit_count = hits_sorted.size - np.searchsorted(hits_sorted, det_t, side="left")
    det_fpir = nm_count / n_non_mated if n_non_mated else np.full(det_t.size, np.nan)
    det_fnir = 1.0 - hit_count / n_mated if n_mated else np.full(det_t.size, np.nan)

    return IdentificationResult(
        fpir_targets=targets,
        thresholds=thresholds,
        fnir=tuple(fnir_at(t) for t in thresholds),
        fpir_achieved=tuple(_rate_at(nm_score, n_non_mated, t) for t in thresholds),
        rank1=float(np.count_nonzero(mated_arr & correct) / n_mated) if n_mated else math.nan,
        n_mated=n_mated,
        n_non_mated=n_non_mated,
        n_gallery=int(sim.shape[1]),
        n_mated_failed=int(np.count_nonzero(mated_arr & failed)),
        n_non_mated_failed=int(np.count_nonzero(~mated_arr & failed)),
        det_thresholds=det_t.astype(np.float64),
        det_fpir=np.asarray(det_fpir, dtype=np.float64),
        det_fnir=np.asarray(det_fnir, dtype=np.float64),
    )


# ---------------------------------------------------------------------------------------------- breakdown


def groups_of(samples: Sequence[Sample]) -> dict[str, np.ndarray]:
    """Subsets to break results down by: ``source=<source>`` (``(none)`` if empty) for every source and
    ``tag=<tag>`` for every tag, as bool masks over ``samples``, in sorted order."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        members[f"source={s.source or '(none)'}"].append(i)
        for tag in dict.fromkeys(s.tags):
            members[f"tag={tag}"].append(i)
    out: dict[str, np.ndarray] = {}
    for name in sorted(members, key=lambda n: (not n.startswith("source="), n)):
        mask = np.zeros(len(samples), dtype=bool)
        mask[members[name]] = True
        out[name] = mask
    return out


def breakdown(
    samples: Sequence[Sample],
    *,
    failed: np.ndarray,
    genuine: np.ndarray,
    impostor: np.ndarray,
    genuine_scores: np.ndarray,
    impostor_scores: np.ndarray,
    probes: np.ndarray | Sequence[int],
    mated: np.ndarray,
    similarity: np.ndarray,
    gallery_ids: Sequence[str],
    fpir_targets: Sequence[float] = (0.01, 0.001),
    folds: int = 10,
    seed: int = 0,
    min_pairs: int = 20,
    min_probes: int = 20,
) -> dict[str, dict[str, Any]]:
    """The figures restricted to each group of :func:`groups_of`, as JSON-ready dicts keyed by group name.

    ``failed`` is per sample; ``genuine``/``impostor`` are the pairs of :func:`sample_pairs` with their
    scores; ``probes`` are the sample indices of the rows of ``similarity`` with ``mated`` per row. A group's
    verification uses the pairs whose two images are both in the group, and is computed only with at least
    ``min_pairs`` genuine and ``min_pairs`` impostor pairs. Its identification uses the probes in the group
    against the whole gallery, and is computed only with at least ``min_probes`` probes. Counts are always
    reported; skipped figures are ``None`` and listed under ``"skipped"``.
    """
    failed_arr = np.asarray(failed, dtype=bool).reshape(-1)
    gen_pairs = np.asarray(genuine, dtype=np.int64).reshape(-1, 2)
    imp_pairs = np.asarray(impostor, dtype=np.int64).reshape(-1, 2)
    g_scores = np.asarray(genuine_scores, dtype=np.float64).reshape(-1)
    i_scores = np.asarray(impostor_scores, dtype=np.float64).reshape(-1)
    probe_idx = np.asarray(probes, dtype=np.int64).reshape(-1)
    mated_arr = np.asarray(mated, dtype=bool).reshape(-1)
    sim = np.asarray(similarity, dtype=np.float64).reshape(probe_idx.size, len(gallery_ids))
    if failed_arr.size != len(samples) or g_scores.size != len(gen_pairs) or i_scores.size != len(imp_pairs):
        raise ValueError("failed, genuine_scores and impostor_scores must match samples and pairs")
    if mated_arr.size != probe_idx.size:
        raise ValueError("mated must have one entry per probe")
    targets = tuple(float(x) for x in fpir_targets)

    out: dict[str, dict[str, Any]] = {}
    for name, mask in groups_of(samples).items():
        g_in = mask[gen_pairs[:, 0]] & mask[gen_pairs[:, 1]] if len(gen_pairs) else np.zeros(0, bool)
        i_in = mask[imp_pairs[:, 0]] & mask[imp_pairs[:, 1]] if len(imp_pairs) else np.zeros(0, bool)
        p_in = mask[probe_idx] if probe_idx.size else np.zeros(0, bool)
        row: dict[str, Any] = {
            "images": int(np.count_nonzero(mask)),
            "failures_to_acquire": int(np.count_nonzero(mask & failed_arr)),
            "genuine_pairs": int(np.count_nonzero(g_in)),
            "impostor_pairs": int(np.count_nonzero(i_in)),
            "mated_searches": int(np.count_nonzero(p_in & mated_arr)),
            "non_mated_searches": int(np.count_nonzero(p_in & ~mated_arr)),
        }
        skipped: list[str] = []
        if row["genuine_pairs"] >= min_pairs and row["impostor_pairs"] >= min_pairs:
            ver = verification_metrics(g_scores[g_in], i_scores[i_in], folds=folds, seed=seed)
            vd = ver.to_dict()
            row.update({k: vd[k] for k in ("accuracy", "accuracy_std", "accuracy_threshold")})
            row.update({k: v for k, v in vd.items() if k.startswith(("tar_at_far_", "threshold_at_far_"))})
        else:
            row.update(accuracy=None, accuracy_std=None, accuracy_threshold=None)
            skipped.append("verification")
        if int(np.count_nonzero(p_in)) >= min_probes:
            sel = np.flatnonzero(p_in)
            ident = identification_metrics(
                sim[sel],
                gallery_ids,
                [samples[int(i)].identity for i in probe_idx[sel]],
                mated_arr[sel],
                failed_arr[probe_idx[sel]],
                fpir_targets=targets,
            )
            idd = ident.to_dict()
            row["rank1"] = idd["rank1"]
            row.update(
                {k: v for k, v in idd.items() if k.startswith(("fnir_at_fpir_", "threshold_at_fpir_"))}
            )
        else:
            row["rank1"] = None
            row.update({f"fnir_at_fpir_{_fmt_target(t)}": None for t in targets})
            skipped.append("identification")
        row["skipped"] = skipped
        out[name] = row
    return out
