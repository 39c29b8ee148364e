"""Visitor embeddings waiting for consent: RAM only, gone after `enroll_ttl_s` (privacy rule 3)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..vision.embedder import l2_normalise


class EnrolmentError(ValueError):
    """An enrolment request that cannot be served; the message says why, for the cashier."""


@dataclass(frozen=True)
class PendingEnrolment:
    visitor_code: str
    visit_id: str
    embeddings: np.ndarray  # (k, d) best frames of the visit, best first
    weights: np.ndarray  # (k,) their quality scores
    expires_at: float  # clock() seconds

    def templates(self, count: int = 3) -> np.ndarray:
        """Templates for the gallery: the visit's fused embedding plus its best single frames."""
        fused = l2_normalise((self.embeddings * self.weights[:, None]).sum(axis=0))
        extra = self.embeddings[: max(0, count - 1)]
        return np.vstack([fused[None, :], extra]).astype(np.float32)


class EnrolmentCache:
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._pending: dict[str, PendingEnrolment] = {}
        self._lock = threading.Lock()

    def hold(self, visitor_code: str, visit_id: str, embeddings: np.ndarray, weights: np.ndarray) -> float:
        """Keep a visitor's embeddings until consent or expiry; returns the expiry (clock seconds)."""
        expires = self._clock() + self.ttl_s
        with self._lock:
            self._pending[visitor_code] = PendingEnrolment(
                visitor_code, visit_id, np.array(embeddings, dtype=np.float32), np.array(weights), expires
            )
        return expires

    def now(self) -> float:
        return self._clock()

    def update(self, visitor_code: str, embeddings: np.ndarray, weights: np.ndarray) -> None:
        """Replace a held visitor's embeddings (keeping the expiry), if still held."""
        with self._lock:
            held = self._pending.get(visitor_code)
            if held is not None:
                self._pending[visitor_code] = PendingEnrolment(
                    visitor_code,
                    held.visit_id,
                    np.array(embeddings, dtype=np.float32),
                    np.array(weights),
                    held.expires_at,
                )

    def discard(self, visitor_code: str) -> None:
        with self._lock:
            self._pending.pop(visitor_code, None)

    def take(self, visitor_code: str) -> PendingEnrolment:
        """Remove and return the pending enrolment for a code, or raise EnrolmentError saying why not."""
        self.purge()
        with self._lock:
            pending = self._pending.pop(visitor_code, None)
        if pending is None:
            raise EnrolmentError(
                f"visitor code {visitor_code} is unknown or its enrolment window "
                f"({self.ttl_s:g} s) has passed"
            )
        return pending

    def purge(self) -> int:
        """Drop every expired visitor's embeddings; returns how many were dropped."""
        now = self._clock()
        with self._lock:
            expired = [code for code, p in self._pending.items() if p.expires_at <= now]
            for code in expired:
                del self._pending[code]
        return len(expired)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def __contains__(self, code: object) -> bool:
        with self._lock:
            return code in self._pending
