#!/usr/bin/env python3
"""Load on the reference store server (issue 7): many simulated tills against one store server.

Starts a mosquitto on a free port of 127.0.0.1 and the store server (`tillface store`, its own process,
SQLite in a temporary folder), then:
- seeds members the way a store does: each till publishes a visitor event, `POST /members` enrols it
  with consent, the store sends `cmd/enroll` and the simulated till answers `event/enrolled` (the
  approach of tests/test_store_api.py's fake till); optionally `--receipts` receipts through
  `POST /receipts` as purchase history (the display's last purchase and suggestions read it);
- runs `--tills` simulated tills (one MQTT client each, QoS 1, payloads built and validated with
  `tillface.link.schemas`), each publishing `--rate` decisions per second for `--duration` seconds:
  a `match` of a seeded member (share `--match-share`) or a `visitor`, each visit closed by `left`;
- measures, for every `match`, the time from its publish until that till receives the store's
  `cmd/display` for the visit, and checks in the store's database that every event was handled
  (its `event_id` recorded, every visit stored and closed).

It prints the figures and exits 1 if an event was not handled, a match got no `cmd/display` (lost),
or the display answers' p95 is above `--p95-ms` (default 250).

    .venv/bin/python scripts/load_store.py [--tills 20] [--rate 5] [--duration 30] [--json out.json]

Needs mosquitto and the `store` extra (scripts/setup.sh installs both).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tillface.demo import demo_keys, http
from tillface.events import utc_now
from tillface.link.broker import Mosquitto, free_port
from tillface.link.schemas import (
    DisplayCommand,
    EnrollCommand,
    EnrolledEvent,
    LeftEvent,
    MatchEvent,
    Payload,
    VisitorEvent,
)

STORE = "load"
CONSENT = {"text_version": "2026-01", "channel": "till-screen"}
MODEL = "dlib-resnet-v1-int8"
ITEMS = [
    ("C1", "Espresso beans", "12.99"),
    ("M1", "Oat milk", "1.80"),
    ("B1", "Sourdough loaf", "3.40"),
    ("T1", "Green tea", "4.20"),
    ("A1", "Apples 1kg", "2.10"),
    ("S1", "Sea salt crisps", "1.50"),
    ("Y1", "Greek yoghurt", "2.75"),
    ("O1", "Olive oil", "7.90"),
]


def wire(model: Payload) -> bytes:
    return model.model_dump_json(by_alias=True, exclude_none=True).encode()


def envelope(till: str) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "ts": utc_now(), "store": STORE, "till": till}


def in_seconds(s: float) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=s)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class SimTill:
    """One simulated till: its own MQTT connection; answers cmd/enroll, times cmd/display."""

    def __init__(self, till: str, port: int) -> None:
        self.till = till
        self.sent_at: dict[str, float] = {}  # visit_id of a match -> when it was published
        self.display_at: dict[str, float] = {}  # visit_id -> when its cmd/display arrived
        self.bad_commands: list[str] = []
        self.lock = threading.Lock()
        self._connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{till}", protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.will_set(self.topic("status"), b"offline", qos=1, retain=True)
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError(f"simulated till {till} could not connect")
        self.client.publish(self.topic("status"), b"online", qos=1, retain=True).wait_for_publish(5)

    def topic(self, suffix: str) -> str:
        return f"tillface/{STORE}/{self.till}/{suffix}"

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self.topic("cmd/#"), 1)
        self._connected.set()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        at = time.monotonic()
        try:
            if message.topic.endswith("/cmd/display"):
                display = DisplayCommand.model_validate_json(message.payload)
                with self.lock:
                    self.display_at.setdefault(display.visit_id or "", at)
            elif message.topic.endswith("/cmd/enroll"):
                cmd = EnrollCommand.model_validate_json(message.payload)
                enrolled = EnrolledEvent(
                    **envelope(self.till),
                    request_id=cmd.request_id,
                    member_id=cmd.member_id,
                    template_id=uuid.uuid4().hex,
                    templates=1,
                    gallery_version=1,
                    visit_id=f"seed-{cmd.visitor_code}",
                )
                self.client.publish(self.topic("event/enrolled"), wire(enrolled), qos=1)
        except ValueError as exc:  # a command that breaks the contract
            self.bad_commands.append(f"{message.topic}: {exc}")

    def publish(self, kind: str, event: Payload) -> mqtt.MQTTMessageInfo:
        return self.client.publish(self.topic(f"event/{kind}"), wire(event), qos=1)

    def close(self) -> None:
        self.client.publish(self.topic("status"), b"offline", qos=1, retain=True).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()


def seed(
    base: str, keys: dict[str, str], tills: list[SimTill], per_till: int, receipts: int, rng: random.Random
) -> list[str]:
    """Members enrolled through the store's API (a cashier's key), each answered by its till; optional
    receipts (a till-pos key)."""
    codes: dict[str, tuple[SimTill, str]] = {}
    for t in tills:
        for _ in range(per_till):
            while (
                code := "".join(rng.choices(string.ascii_uppercase, k=3)) + f"-{rng.randrange(100):02d}"
            ) in codes:
                pass
            codes[code] = (t, code)
            visitor = VisitorEvent(
                **envelope(t.till),
                visit_id=f"seed-{code}",
                visitor_code=code,
                quality=0.8,
                enroll_until=in_seconds(600),
            )
            t.publish("visitor", visitor).wait_for_publish(5)
    deadline = time.monotonic() + 30

    def listed() -> set[str]:
        return {v["visitor_code"] for v in http(base, "GET", "/visitors", key=keys["cashier"])[1]}

    while len(listed() & set(codes)) < len(codes):
        if time.monotonic() > deadline:
            raise RuntimeError("the store did not list every seeded visitor code")
        time.sleep(0.1)

    def enrol(n: int, code: str, till: str) -> str:
        body = {"phone": f"+44 7911 1{n:05d}", "name": f"Member {n:04d}", "visitor_code": code, "till": till}
        status, member = http(base, "POST", "/members", {**body, "consent": CONSENT}, key=keys["cashier"])
        if status != 201:
            raise RuntimeError(f"POST /members answered {status}: {member}")
        return str(member["id"])

    with ThreadPoolExecutor(8) as pool:  # a store's cashiers enrol at the same time
        jobs = [pool.submit(enrol, n, code, t.till) for n, (code, (t, _)) in enumerate(sorted(codes.items()))]
        members = [job.result() for job in jobs]
    for _ in range(receipts):
        picked = rng.sample(ITEMS, rng.randrange(1, 4))
        items = [{"sku": s, "name": name, "qty": 1, "price": price} for s, name, price in picked]
        total = f"{sum(float(p) for _, _, p in picked):.2f}"
        receipt = {"member_id": rng.choice(members), "items": items, "total": total}
        status, answer = http(base, "POST", "/receipts", receipt, key=keys["till-pos"])
        if status != 201:
            raise RuntimeError(f"POST /receipts answered {status}: {answer}")
    return members


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def handled(db: Path, ids: dict[str, set[str]], visits: set[str]) -> dict[str, int]:
    """Of the events and visits sent: how many the store recorded (event ids per kind, visits closed by
    their `left`)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        seen = {row[0] for row in conn.execute("SELECT event_id FROM seen_events")}
        closed = {
            row[0] for row in conn.execute("SELECT visit_id FROM visits WHERE left_after_s IS NOT NULL")
        }
    out = {kind: len(sent & seen) for kind, sent in ids.items()}
    out["visits_closed"] = len(visits & closed)
    return out


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="tillface-load-"))
    broker = Mosquitto(work / "broker").start()
    db = work / "store.db"
    http_port = free_port()
    base = f"http://127.0.0.1:{http_port}"
    log = open(work / "store.log", "wb")  # noqa: SIM115
    keys = demo_keys(f"sqlite:///{db}")
    # The seeding posts its receipts as fast as it can with one key: allow them all in one minute.
    config = work / "store.toml"
    config.write_text(f"[http]\nreceipts_per_minute = {max(60, args.receipts + 1)}\n", encoding="utf-8")
    store = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tillface",
            "store",
            "--config",
            str(config),
            "--store-id",
            STORE,
            "--database-url",
            f"sqlite:///{db}",
            "--mqtt-port",
            str(broker.port),
            "--http-port",
            str(http_port),
        ],
        stdout=log,
        stderr=log,
    )
    tills: list[SimTill] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if http(base, "GET", "/tills", key=keys["manager"])[0] == 200:
                    break
            except OSError:
                pass
            if store.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the store server did not come up; see {work / 'store.log'}")
            time.sleep(0.1)
        tills = [SimTill(f"till-{i + 1:02d}", broker.port) for i in range(args.tills)]
        print(
            f"load_store: {args.tills} simulated tills × {args.rate:g} decisions/s for {args.duration:g} s "
            f"against one store server (tillface store, SQLite {db}); mosquitto on 127.0.0.1:{broker.port}"
        )
        started = time.monotonic()
        members = seed(base, keys, tills, args.members_per_till, args.receipts, rng)
        print(
            f"seeded {len(members)} members through POST /members (each answered by its till's "
            f"event/enrolled) and {args.receipts} receipts in {time.monotonic() - started:.1f} s"
        )

        # The schedule: every till decides every 1/rate s (its own phase); each visit is closed by
        # `left` just before the till's next decision.
        period = 1.0 / args.rate
        count = int(args.duration * args.rate)
        phases = [rng.uniform(0, period) for _ in tills]
        ids: dict[str, set[str]] = {"match": set(), "visitor": set(), "left": set()}
        visits: set[str] = set()

        def send(t: SimTill, kind: str, event: MatchEvent | VisitorEvent | LeftEvent) -> None:
            unacked.append(t.publish(kind, event))
            ids[kind].add(event.event_id)

        open_visits: dict[str, tuple[str, float]] = {}
        unacked: list[mqtt.MQTTMessageInfo] = []
        behind_max = 0.0
        cpu0, t0 = cpu_seconds(store.pid), time.monotonic() + 0.5
        schedule = sorted((t0 + phases[i] + k * period, i) for k in range(count) for i in range(len(tills)))
        for due, i in schedule:
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                behind_max = max(behind_max, -delay)
            t = tills[i]
            previous = open_visits.pop(t.till, None)
            if previous is not None:
                left = LeftEvent(
                    **envelope(t.till), visit_id=previous[0], duration_s=round(due - previous[1], 3)
                )
                send(t, "left", left)
            visit_id = uuid.uuid4().hex
            if rng.random() < args.match_share:
                event: MatchEvent | VisitorEvent = MatchEvent(
                    **envelope(t.till),
                    visit_id=visit_id,
                    member_id=rng.choice(members),
                    score=round(rng.uniform(0.96, 0.995), 4),
                    margin=round(rng.uniform(0.02, 0.1), 4),
                    frames=rng.randrange(3, 12),
                    quality=round(rng.uniform(0.5, 0.95), 3),
                    gallery_version=1,
                    model=MODEL,
                    latency_ms=round(rng.uniform(150, 400), 1),
                )
                kind = "match"
                with t.lock:
                    t.sent_at[visit_id] = time.monotonic()
            else:
                event = VisitorEvent(
                    **envelope(t.till),
                    visit_id=visit_id,
                    visitor_code="".join(rng.choices(string.ascii_uppercase, k=3))
                    + f"-{rng.randrange(100):02d}",
                    quality=round(rng.uniform(0.5, 0.95), 3),
                    enroll_until=in_seconds(120),
                    latency_ms=round(rng.uniform(150, 400), 1),
                )
                kind = "visitor"
            send(t, kind, event)
            visits.add(visit_id)
            open_visits[t.till] = (visit_id, due)
        for t in tills:
            previous = open_visits.pop(t.till, None)
            if previous is not None:
                left = LeftEvent(**envelope(t.till), visit_id=previous[0], duration_s=period)
                send(t, "left", left)
        sending_s = time.monotonic() - t0

        # Every match's answer, and every event in the store's database (bounded wait).
        sent = {kind: len(v) for kind, v in ids.items()}
        expected = {**sent, "visits_closed": len(visits)}
        deadline = time.monotonic() + args.settle_s
        while True:
            got = handled(db, ids, visits)
            answered = sum(len(t.display_at.keys() & t.sent_at.keys()) for t in tills)
            if (all(got.get(k, 0) >= v for k, v in expected.items()) and answered >= sent["match"]) or (
                time.monotonic() > deadline
            ):
                break
            time.sleep(0.2)
        cpu = cpu_seconds(store.pid) - cpu0
        wall = time.monotonic() - t0
        acked = sum(1 for info in unacked if info.is_published())
        latencies = [
            1000 * (t.display_at[v] - at) for t in tills for v, at in t.sent_at.items() if v in t.display_at
        ]
        lost = sent["match"] - len(latencies)
        events = sent["match"] + sent["visitor"] + sent["left"]
        done = got.get("match", 0) + got.get("visitor", 0) + got.get("left", 0)
        bad = [b for t in tills for b in t.bad_commands]
        figures: dict[str, Any] = {
            "tills": args.tills,
            "rate_per_till": args.rate,
            "duration_s": args.duration,
            "members": len(members),
            "receipts": args.receipts,
            "sent": sent,
            "events_sent": events,
            "events_per_s": round(events / sending_s, 1),
            "decisions_per_s": round((sent["match"] + sent["visitor"]) / sending_s, 1),
            "acked_by_broker": acked,
            "handled": got,
            "events_handled": done,
            "display_answers": len(latencies),
            "lost": lost,
            "display_ms_p50": round(percentile(latencies, 50), 1) if latencies else None,
            "display_ms_p95": round(percentile(latencies, 95), 1) if latencies else None,
            "display_ms_p99": round(percentile(latencies, 99), 1) if latencies else None,
            "display_ms_max": round(max(latencies), 1) if latencies else None,
            "store_cpu_percent_of_one_core": round(100 * cpu / wall, 1),
            "sender_behind_max_ms": round(1000 * behind_max, 1),
            "bad_commands": len(bad),
            "loadavg_1min": os.getloadavg()[0],
        }
        print(
            f"sent: {events} events in {sending_s:.1f} s ({figures['events_per_s']} events/s, "
            f"{figures['decisions_per_s']} decisions/s): {sent['match']} match, {sent['visitor']} visitor, "
            f"{sent['left']} left; acknowledged by the broker: {acked}"
        )
        print(
            f"handled by the store: {done} of {events} events (event ids recorded: "
            f"{got.get('match', 0)} match, {got.get('visitor', 0)} visitor, {got.get('left', 0)} left); "
            f"visits stored and closed: {got['visits_closed']} of {expected['visits_closed']}"
        )
        if latencies:
            print(
                f"display answers: {len(latencies)} of {sent['match']} matches, lost {lost}; latency match → "
                f"cmd/display p50 {figures['display_ms_p50']} ms, p95 {figures['display_ms_p95']} ms, "
                f"p99 {figures['display_ms_p99']} ms, max {figures['display_ms_max']} ms"
            )
        print(
            f"store server CPU: {figures['store_cpu_percent_of_one_core']}% of one core; sender at most "
            f"{figures['sender_behind_max_ms']} ms behind its schedule; "
            f"load average {figures['loadavg_1min']:.2f}"
        )
        failures = []
        if done < events or got.get("visits_closed", 0) < expected["visits_closed"]:
            failures.append(f"{events - done} events not handled")
        if lost:
            failures.append(f"{lost} matches without cmd/display")
        if bad:
            failures.append(f"{len(bad)} commands broke the contract, e.g. {bad[0]}")
        p95 = figures["display_ms_p95"]
        if p95 is None or p95 > args.p95_ms:
            failures.append(f"display p95 {p95} ms > {args.p95_ms:g} ms")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.json}")
        print(
            "FAIL: " + "; ".join(failures)
            if failures
            else f"PASS: nothing lost, display p95 ≤ {args.p95_ms:g} ms"
        )
        return 1 if failures else 0
    finally:
        for t in tills:
            t.close()
        if store.poll() is None:
            store.send_signal(signal.SIGTERM)
            try:
                store.wait(timeout=15)
            except subprocess.TimeoutExpired:
                store.kill()
                store.wait()
        log.close()
        broker.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tills", type=int, default=20)
    parser.add_argument("--rate", type=float, default=5.0, help="decisions per second per till")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--match-share", type=float, default=0.7, help="share of decisions that are matches")
    parser.add_argument("--members-per-till", type=int, default=5, help="members enrolled at each till")
    parser.add_argument("--receipts", type=int, default=0, help="receipts seeded as purchase history")
    parser.add_argument("--p95-ms", type=float, default=250.0, help="bound on the display answers' p95")
    parser.add_argument("--settle-s", type=float, default=30.0, help="wait this long at most for stragglers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (database, logs)")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
