"""Where decisions go: a structured log line always, and a JSON-lines file with `--events-jsonl`.

Each record is the DESIGN §4 payload plus `event`, `event_id` (UUID) and `ts` (RFC 3339 UTC). The MQTT
link will be one more sink of the same records.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .recognition.visits import VisitEvent

log = logging.getLogger("tillface.events")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_record(event: VisitEvent, store: str, till: str) -> dict[str, Any]:
    return {
        "event": event.event,
        "schema": 1,
        "event_id": str(uuid.uuid4()),
        "ts": utc_now(),
        "store": store,
        "till": till,
        **event.payload,
    }


class JsonlSink:
    """Appends one JSON object per line and flushes it, so a crash loses nothing already decided."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def log_decision(record: dict[str, Any], latency_ms: float | None) -> None:
    """One structured line per event; journald gets the fields (no biometrics, ever)."""
    fields = {
        k: record[k] for k in ("visit_id", "member_id", "score", "margin", "visitor_code") if k in record
    }
    extra = {f"TILLFACE_{k.upper()}": v for k, v in fields.items()}
    extra["TILLFACE_EVENT"] = record["event"]
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    if latency_ms is not None and record["event"] in ("match", "visitor"):
        text += f" latency_ms={latency_ms:.0f}"
    log.info("%s %s", record["event"], text, extra={"journal": extra})


def latency_ms(event: VisitEvent) -> float | None:
    """From the visit's first frame to now: what the customer waits for the greeting."""
    if not event.visit_first_captured:
        return None
    return (time.monotonic() - event.visit_first_captured) * 1000.0


def decision_wait_ms(event: VisitEvent) -> float | None:
    """From the first frame at which the presence rule ([recognition] min_presence_ms) allowed a
    decision to now: the pipeline's own part of the latency, which the rule's deliberate wait is not."""
    if not event.visit_decidable_captured:
        return None
    return max(0.0, (time.monotonic() - event.visit_decidable_captured) * 1000.0)
