#!/usr/bin/env python3
"""Outbox throughput to a local broker (issue: the MQTT link; target ≥ 500 events/s drained).

Starts a mosquitto on a free port of 127.0.0.1, queues N realistic `match` events with the real
`Link.publish_event` before the link is started (contract check, then a durable outbox `put`: SQLite
WAL, synchronous=FULL), then starts the link and a subscriber, and measures:
- put: events/s queued durably (what the frame loop pays per event);
- drain: events/s until the outbox is empty (every event sent and acknowledged by the broker, rows
  deleted), from `Link.start()`;
- end-to-end: events/s until a subscriber has received all N, from `Link.start()`.

    .venv/bin/python scripts/bench_outbox.py [--events 5000] [--json out.json]

Needs mosquitto (scripts/setup.sh --dev installs it).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tillface import __version__
from tillface.config import load_config
from tillface.events import utc_now
from tillface.link.mqtt import Link
from tillface.link.schemas import DisplayCommand, MatchEvent
from tillface.recognition.enrolment import EnrolmentCache
from tillface.recognition.gallery import GalleryStore, create_key_file, read_key_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from mosquitto import Mosquitto  # noqa: E402  (the test suite's broker, started the same way)

STORE, TILL = "bench", "t1"
TARGET = 500.0


def write_config(path: Path, state: Path, port: int, events: int) -> Path:
    path.write_text(
        f"""
[unit]
store_id = "{STORE}"
till_id = "{TILL}"
state_dir = "{state}"
log_level = "WARNING"

[camera]
source = "replay:{state}/none"

[mqtt]
host = "127.0.0.1"
port = {port}
health_interval_s = 3600.0
outbox_max_rows = {max(100_000, events)}
""",
        encoding="utf-8",
    )
    return path


def match_event(rng: random.Random, gallery_version: int) -> dict[str, Any]:
    """A `match` record as the daemon makes it (DESIGN §4 fields), valid per MatchEvent."""
    record = {
        "event": "match",
        "schema": 1,
        "event_id": str(uuid.uuid4()),
        "ts": utc_now(),
        "store": STORE,
        "till": TILL,
        "visit_id": uuid.uuid4().hex,
        "member_id": f"member-{rng.randrange(1, 20_000):05d}",
        "score": round(rng.uniform(0.96, 0.995), 4),
        "margin": round(rng.uniform(0.02, 0.1), 4),
        "frames": rng.randrange(3, 12),
        "quality": round(rng.uniform(0.5, 0.95), 3),
        "gallery_version": gallery_version,
        "model": "dlib-resnet-v1-int8",
        "latency_ms": round(rng.uniform(150, 400), 1),
    }
    MatchEvent.model_validate({k: v for k, v in record.items() if k != "event"})
    return record


class Services:
    """The daemon's side of the link, idle: no display, no reload, a fixed health."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def show_crm(self, command: DisplayCommand) -> None:
        pass

    def request_reload(self) -> None:
        pass

    def health(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "fps": 0.0,
            "latency_ms_p50": None,
            "latency_ms_p95": None,
            "camera": "bench",
            "display": "off",
            "gallery_version": 0,
            "gallery_members": 0,
            "gallery_templates": 0,
            "models": [],
            "cpu_temp_c": None,
        }


class Subscriber:
    def __init__(self, port: int, topic: str) -> None:
        self.ids: set[str] = set()
        self.done = threading.Event()
        self.expected = 0
        self.finished_at = 0.0
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-crm", protocol=mqtt.MQTTv5)
        self._topic = topic
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("the subscriber could not connect")
        time.sleep(0.2)  # the SUBACK

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self._topic, qos=1)
        self._connected.set()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        event_id = json.loads(message.payload)["event_id"]
        with self._lock:
            self.ids.add(event_id)
            if self.expected and len(self.ids) >= self.expected and not self.done.is_set():
                self.finished_at = time.perf_counter()
                self.done.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def bench(events: int, work: Path) -> dict[str, Any]:
    broker = Mosquitto(work / "broker").start()
    try:
        state = work / "state"
        state.mkdir()
        config = load_config(write_config(work / "bench.toml", state, broker.port, events))
        create_key_file(config.gallery.key_file)
        key = read_key_file(config.gallery.key_file)
        gallery = GalleryStore(config.gallery.file, key, embedder=config.vision.embedder)
        gallery.load()

        rng = random.Random(1)
        records = [match_event(rng, gallery_version=42) for _ in range(events)]
        link = Link(config, gallery, EnrolmentCache(120), Services(), key)  # opens the outbox
        t0 = time.perf_counter()
        for record in records:
            link.publish_event(record)  # what the frame loop pays: contract check + durable put
        put_s = time.perf_counter() - t0
        assert link.outbox.depth() == events

        subscriber = Subscriber(broker.port, f"{config.mqtt.root}/{STORE}/{TILL}/event/match")
        subscriber.expected = events
        t0 = time.perf_counter()
        link.start()
        try:
            deadline = time.monotonic() + 300
            while link.outbox.depth() > 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the outbox did not drain: {link.outbox.depth()} rows left")
                time.sleep(0.002)
            drain_s = time.perf_counter() - t0
            if not subscriber.done.wait(60):
                raise RuntimeError(f"the subscriber got {len(subscriber.ids)} of {events} events")
            e2e_s = subscriber.finished_at - t0
        finally:
            link.stop()
            subscriber.close()
        stats = link.stats
        return {
            "events": events,
            "put_s": round(put_s, 3),
            "put_per_s": round(events / put_s, 1),
            "drain_s": round(drain_s, 3),
            "drain_per_s": round(events / drain_s, 1),
            "end_to_end_s": round(e2e_s, 3),
            "end_to_end_per_s": round(events / e2e_s, 1),
            "published": stats.published,
            "acked": stats.acked,
            "received": len(subscriber.ids),
        }
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="tillface-bench-outbox-") as tmp:
        result = bench(args.events, Path(tmp))
    n = result["events"]
    print(
        f"put (publish_event: contract check + durable outbox row): {n} events in {result['put_s']:.2f} s = "
        f"{result['put_per_s']:.0f} events/s"
    )
    print(
        f"drain to the broker (all acknowledged, outbox empty): {result['drain_s']:.2f} s = "
        f"{result['drain_per_s']:.0f} events/s (target >= {TARGET:.0f}: "
        f"{'met' if result['drain_per_s'] >= TARGET else 'NOT met'})"
    )
    print(
        f"end to end (a subscriber received all {n}): {result['end_to_end_s']:.2f} s = "
        f"{result['end_to_end_per_s']:.0f} events/s"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    # exit 1 when the target is missed, so the script can gate a check
    return 0 if result["drain_per_s"] >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
