"""1:N search of a face descriptor against the member gallery, and the match/visitor decision.

The gallery is one float32 matrix (templates × dim) of unit vectors, rows grouped by member, so a
search is one matrix-vector product plus a per-member max: ~100k templates in a few milliseconds
with numpy alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Candidate:
    member_id: str
    score: float  # cosine similarity of the member's best template


@dataclass(frozen=True)
class Decision:
    """DESIGN §1 step 6: `match` needs top-1 ≥ threshold and a margin over the next member."""

    kind: str  # "match" | "visitor"
    member_id: str | None
    score: float  # top-1 cosine (-1 when the gallery is empty)
    margin: float  # top-1 minus max(0, best score of another member)
    candidates: tuple[Candidate, ...]


class Matcher:
    def __init__(self, templates: np.ndarray, member_ids: Sequence[str]) -> None:
        templates = np.asarray(templates, dtype=np.float32)
        if templates.ndim != 2:
            raise ValueError(f"templates must be a 2-D matrix, got shape {templates.shape}")
        if len(member_ids) != templates.shape[0]:
            raise ValueError(f"{templates.shape[0]} templates but {len(member_ids)} member ids")
        ids = list(member_ids)
        order = sorted(range(len(ids)), key=ids.__getitem__)  # group rows by member for the per-member max
        # One copy of the matrix (the sorted one), normalised in place: ~1× the gallery in extra memory.
        self._templates = templates[order] if ids else templates.copy()
        norms = np.linalg.norm(self._templates, axis=1, keepdims=True)
        if len(ids) and not np.all(norms > 0):
            raise ValueError("a template has zero length")
        self._templates /= np.where(norms > 0, norms, 1)
        sorted_ids = np.asarray([ids[i] for i in order], dtype=object)
        if len(sorted_ids):
            starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        else:
            starts = np.zeros(0, dtype=np.int64)
        self._starts = starts
        self._members: list[str] = [str(m) for m in sorted_ids[starts]]
        self.dim = templates.shape[1]

    @property
    def size(self) -> int:
        """Number of templates."""
        return int(self._templates.shape[0])

    @property
    def members(self) -> list[str]:
        return list(self._members)

    def member_scores(self, query: np.ndarray) -> np.ndarray:
        """Best cosine per member (in `members` order) for one descriptor."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query has {q.shape[0]} dimensions, gallery has {self.dim}")
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        if not self._members:
            return np.zeros(0, dtype=np.float32)
        scores = self._templates @ q
        return np.maximum.reduceat(scores, self._starts)

    def search(self, query: np.ndarray, k: int = 2) -> list[Candidate]:
        """The k best members, best first."""
        per_member = self.member_scores(query)
        n = per_member.shape[0]
        if n == 0:
            return []
        k = min(k, n)
        top = np.argpartition(-per_member, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-per_member[top], kind="stable")]
        return [Candidate(self._members[i], float(per_member[i])) for i in top]

    def decide(self, query: np.ndarray, match_threshold: float, margin: float) -> Decision:
        candidates = tuple(self.search(query, k=2))
        if not candidates:
            return Decision("visitor", None, -1.0, 0.0, candidates)
        best = candidates[0]
        # A runner-up below 0 (or none at all) carries no information: count it as 0.
        second = max(candidates[1].score, 0.0) if len(candidates) > 1 else 0.0
        gap = best.score - second
        if best.score >= match_threshold and gap >= margin:
            return Decision("match", best.member_id, best.score, gap, candidates)
        return Decision("visitor", None, best.score, gap, candidates)
