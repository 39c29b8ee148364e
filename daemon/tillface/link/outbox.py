"""The outbox: every message the unit publishes is on disk before it is sent (DESIGN §1 step 7).

A SQLite database in WAL mode with `synchronous=FULL`, so a row that `put` returned survives a
`kill -9` and a power cut. Rows leave only when the broker acknowledged them (QoS 1 PUBACK), so a
broker outage or a daemon crash loses nothing; rows are sent in insertion order.

Bounded at `max_rows`. When full, room is made by dropping, oldest first: `health` (only the newest
health matters, and it is retained anyway), then `error`, `left`, `visitor`. `match`, `enrolled` and
`erased` are never dropped: a customer's bonus and a GDPR acknowledgement outrank the bound, so past
it the outbox grows and says so in the log.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DROP_ORDER = ("health", "error", "left", "visitor")
NEVER_DROPPED = ("match", "enrolled", "erased")


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    payload: bytes
    kind: str
    retain: bool


class Outbox:
    def __init__(self, path: Path, max_rows: int = 100_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_rows = max_rows
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,"
                " kind TEXT NOT NULL, retain INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL)"
            )
            self._count = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise OSError(f"outbox {path} cannot be opened: {exc}") from None
        self._over_bound_logged = False

    def put(self, topic: str, payload: bytes, kind: str, retain: bool = False) -> int:
        """Store a message durably; returns its row id (the send order)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if kind == "health":
                    # Only the newest health is worth sending; older unsent ones are replaced.
                    self._count -= self._db.execute("DELETE FROM outbox WHERE kind = 'health'").rowcount
                if self._count >= self.max_rows:
                    self._make_room()
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, kind, retain, created) VALUES (?, ?, ?, ?, ?)",
                    (topic, payload, kind, int(retain), time.time()),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count += 1
            return int(cur.lastrowid or 0)

    def _make_room(self) -> None:
        for kind in DROP_ORDER:
            row = self._db.execute(
                "SELECT id FROM outbox WHERE kind = ? ORDER BY id LIMIT 1", (kind,)
            ).fetchone()
            if row is not None:
                self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
                self._count -= 1
                log.warning("outbox full (%d rows): dropped the oldest unsent %s event", self.max_rows, kind)
                return
        if not self._over_bound_logged:
            log.error(
                "outbox holds %d unsent rows, all of them match/enrolled/erased: keeping them past the "
                "bound of %d (is the broker reachable?)",
                self._count,
                self.max_rows,
            )
            self._over_bound_logged = True

    def pending(self, after_id: int = 0, limit: int = 200) -> list[OutboxRow]:
        """Unacknowledged rows with id > after_id, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, kind, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [OutboxRow(int(i), str(t), bytes(p), str(k), bool(r)) for i, t, p, k, r in rows]

    def ack(self, ids: Iterable[int]) -> int:
        """Forget acknowledged rows (one transaction for the batch); returns how many were removed."""
        batch = [(i,) for i in ids]
        if not batch:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                removed = self._db.executemany("DELETE FROM outbox WHERE id = ?", batch).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count -= removed
            if self._count < self.max_rows:
                self._over_bound_logged = False
            return removed

    def depth(self) -> int:
        with self._lock:
            return self._count

    def kinds(self) -> dict[str, int]:
        with self._lock:
            return {
                str(k): int(n) for k, n in self._db.execute("SELECT kind, count(*) FROM outbox GROUP BY kind")
            }

    def close(self) -> None:
        with self._lock:
            self._db.close()
