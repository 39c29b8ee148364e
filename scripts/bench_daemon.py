#!/usr/bin/env python3
"""Runtime benchmark of the daemon on a real-time 15 fps replay (issue: the daemon).

Prints, and writes as JSON with --json:
- decision latency (first frame showing the face → decision written), p50/p95, over scripted visits
  rendered from faces-dev photos (or the bundled demo portrait when faces-dev is absent), and the same
  from the frame at which [recognition] min_presence_ms allowed a decision (the rule's own wait is a
  deliberate delay: a face seen for less gets no decision at all);
- CPU use with no face in view (share of one core) and peak RSS, on a replay of empty shop frames.

With --display the visits are replayed a second time with an ESC/POS customer display attached: a
pseudo-terminal whose far end takes bytes no faster than a 9600-baud line (960 bytes/s), and both
latency figures are printed (the display is written from its own thread; they should agree within noise).

    .venv/bin/python scripts/bench_daemon.py [--visits 12] [--idle-s 20] [--display] [--json out.json]

With --scenarios it replays the busy-till scenarios instead (queues, looking away, couples, staff at
the edge, an empty shop and glimpses, real video clips; tillface.evaluation.till_scenarios), each in
real time at 15 fps, and prints per scenario: customers, decisions, members right, false matches,
double and missed decisions, decision latency p50/p95 and CPU per frame. --baseline DIR replays the
same frames through another checkout's daemon (e.g. `git worktree add /tmp/base <commit>`) and prints
its CPU per frame beside ours.

    .venv/bin/python scripts/bench_daemon.py --scenarios [--held-back] [--baseline DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path

import numpy as np

from tillface.app import Daemon, open_gallery
from tillface.config import parse_config
from tillface.imageio import read_rgb
from tillface.recognition.gallery import create_key_file
from tillface.scenario import ScriptedVisit, render_visits


def config_for(state: Path, source: str, fps: int) -> str:
    return f"""
[unit]
store_id = "bench"
till_id = "t1"
state_dir = "{state}"
log_level = "WARNING"
[camera]
source = "{source}"
fps = {fps}
"""


class SlowDisplay:
    """A pty whose far end reads like a display on a serial line at `baud` (8N1: 10 bits a byte)."""

    def __init__(self, baud: int = 9600) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.bytes_per_s = baud / 10.0
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            if select.select([self.master], [], [], 0.05)[0]:
                data = os.read(self.master, 16)
                self.received += len(data)
                time.sleep(len(data) / self.bytes_per_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)
        os.close(self.master)
        os.close(self.slave)

    def config(self) -> str:
        return f'[display]\ndriver = "escpos"\nport = "{self.path}"\nbaud = 9600\n'


def latencies(events: Path) -> list[float]:
    records = [json.loads(line) for line in events.read_text().splitlines()]
    return [r["latency_ms"] for r in records if r["event"] in ("match", "visitor") and "latency_ms" in r]


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def photos(faces: Path, count: int) -> list[ScriptedVisit]:
    labels = faces / "labels.csv"
    if labels.is_file():
        import csv

        with open(labels, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["tags"] == "lfw_250_full"]
        rows = rows[:: max(1, len(rows) // count)][:count]
        return [ScriptedVisit(read_rgb(faces / r["path"]), r["identity"]) for r in rows]
    from tillface.demo_data import astronaut_photo

    return [ScriptedVisit(read_rgb(astronaut_photo()), "astronaut")] * count


def run(config_text: str, events: Path | None) -> tuple[Daemon, float, float]:
    config = parse_config(config_text)
    config.unit.state_dir.mkdir(parents=True, exist_ok=True)
    if not config.gallery.key_file.exists():
        create_key_file(config.gallery.key_file)
    open_gallery(config, None)
    daemon = Daemon(config, None, events)
    cpu0, wall0 = time.process_time(), time.monotonic()
    daemon.run()
    return daemon, time.process_time() - cpu0, time.monotonic() - wall0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--visits", type=int, default=12)
    ap.add_argument("--idle-s", type=float, default=20.0)
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument(
        "--faces", type=Path, default=Path(os.environ.get("TILLFACE_FACES", "../shared/faces-dev"))
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--display",
        action="store_true",
        help="replay the visits again with a pty-backed 9600-baud ESC/POS display and print both latencies",
    )
    ap.add_argument("--scenarios", action="store_true", help="replay the busy-till scenarios (see above)")
    ap.add_argument("--held-back", action="store_true", help="with --scenarios: the held-back set")
    ap.add_argument("--empty-s", type=float, default=20.0, help="with --scenarios: seconds of empty shop")
    ap.add_argument("--baseline", type=Path, help="with --scenarios: another checkout to compare CPU with")
    args = ap.parse_args()
    if args.scenarios:
        return scenarios(args)

    with tempfile.TemporaryDirectory(prefix="tillface-bench-") as tmp:
        work = Path(tmp)
        render_visits(photos(args.faces, args.visits), work / "visits", fps=args.fps)
        events = work / "events.jsonl"
        visits_config = config_for(work / "state", f"replay:{work / 'visits'}", args.fps)
        timed, _, _ = run(visits_config, events)
        latency = latencies(events)
        waits = list(timed.decision_waits_ms)
        with_display: list[float] = []
        display_bytes = screens = 0
        if args.display:
            display = SlowDisplay(9600)
            try:
                shown, _, _ = run(visits_config + display.config(), work / "events-display.jsonl")
                with_display = latencies(work / "events-display.jsonl")
                display_bytes = display.received
                screens = int(shown.display.health()["writes"])
            finally:
                display.close()

        render_visits([], work / "idle", fps=args.fps, gap_s=args.idle_s)
        idle, cpu_s, wall_s = run(config_for(work / "state", f"replay:{work / 'idle'}", args.fps), None)

    result = {
        "fps": args.fps,
        "visits": args.visits,
        "decisions": len(latency),
        "decision_latency_ms_p50": pct(latency, 50),
        "decision_latency_ms_p95": pct(latency, 95),
        "decision_wait_after_presence_ms_p50": pct(waits, 50),
        "decision_wait_after_presence_ms_p95": pct(waits, 95),
        "idle_frames": idle.stats.frames,
        "idle_cpu_share_of_one_core": round(cpu_s / wall_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }
    if args.display:
        result.update(
            {
                "display_decisions": len(with_display),
                "display_decision_latency_ms_p50": pct(with_display, 50),
                "display_decision_latency_ms_p95": pct(with_display, 95),
                "display_bytes_received": display_bytes,
                "display_screens_written": screens,
            }
        )
    print(
        f"decision latency at {args.fps} fps replay: p50 {result['decision_latency_ms_p50']} ms, "
        f"p95 {result['decision_latency_ms_p95']} ms over {len(latency)} decisions ({args.visits} visits)\n"
        f"  after the presence rule allowed a decision: p50 {result['decision_wait_after_presence_ms_p50']} "
        f"ms, p95 {result['decision_wait_after_presence_ms_p95']} ms\n"
        f"no face in view: {result['idle_cpu_share_of_one_core'] * 100:.1f}% of one core over "
        f"{idle.stats.frames} frames; peak RSS {result['peak_rss_mb']} MB"
    )
    if args.display:
        print(
            f"with a 9600-baud ESC/POS display on a pty: p50 {result['display_decision_latency_ms_p50']} ms, "
            f"p95 {result['display_decision_latency_ms_p95']} ms over {len(with_display)} decisions; "
            f"{screens} screens written, {display_bytes} bytes received by the display"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def baseline_run(checkout: Path, config: Path, events: Path) -> tuple[float, int]:
    """CPU seconds and decisions of another checkout's daemon on the same prepared replay."""
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": str(checkout / "daemon")}
    cmd = [sys.executable, "-m", "tillface", "run", "--config", str(config), "--events-jsonl", str(events)]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, len(latencies(events))


def scenarios(args: argparse.Namespace) -> int:
    from tillface.evaluation import till_scenarios as ts
    from tillface.vision.pipeline import FacePipeline

    pipeline = FacePipeline.from_manifest()

    def measure(rgb: np.ndarray) -> float | None:
        faces = pipeline.detect(rgb, pad_if_none=True)
        return max(f.width for f in faces) if faces else None

    rows = []
    all_latencies: list[float] = []
    all_waits: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tillface-bench-") as tmp:
        for i, scenario in enumerate(
            ts.busy_till(args.faces, ts.Cast(measure), args.held_back, args.empty_s)
        ):
            config = ts.prepare(scenario, Path(tmp) / str(i))
            run = ts.run(scenario, config, lockstep=False)
            run.recognisable = ts.recognisable(scenario, config)
            row = run.figures()
            all_latencies += run.latencies_ms
            all_waits += run.waits_ms
            if args.baseline:
                cpu, decided = baseline_run(args.baseline.resolve(), config, Path(tmp) / f"base-{i}.jsonl")
                row["baseline_cpu_ms_per_frame"] = round(1000.0 * cpu / max(run.frames, 1), 2)
                row["baseline_decisions"] = decided
            rows.append(row)
            base = (
                f"  baseline {row['baseline_cpu_ms_per_frame']} ms/frame, "
                f"{row['baseline_decisions']} decisions"
                if args.baseline
                else ""
            )
            print(
                f"{row['scenario']:28} customers {row['customers']:2}  decisions {row['decisions']:2}  "
                f"members right {row['members_right']}/{row['members']}  false {row['false_matches']}  "
                f"double {row['double_decisions']}  missed {row['missed']}  stray {row['stray_decisions']}  "
                f"latency p50 {row['latency_ms_p50']} p95 {row['latency_ms_p95']} ms "
                f"(after the presence rule p50 {row['wait_ms_p50']} p95 {row['wait_ms_p95']})  "
                f"CPU {row['cpu_ms_per_frame']} ms/frame{base}",
                flush=True,
            )
    frames_total = sum(r["cpu_ms_per_frame"] for r in rows)
    if args.baseline:
        base_total = sum(r["baseline_cpu_ms_per_frame"] for r in rows)
        print(
            f"CPU per frame, summed over scenarios: {frames_total:.1f} ms "
            f"against the baseline's {base_total:.1f}"
        )
    right = sum(r["members_right"] for r in rows), sum(r["members"] for r in rows)
    recognised = sum(r["recognisable_right"] for r in rows), sum(r["members_recognisable"] for r in rows)
    print(
        f"members right {right[0]}/{right[1]}; of the recognisable {recognised[0]}/{recognised[1]}\n"
        f"decision latency over all {len(all_latencies)} decisions: from the first frame p50 "
        f"{pct(all_latencies, 50)} p95 {pct(all_latencies, 95)} ms; after the presence rule allowed a "
        f"decision p50 {pct(all_waits, 50)} p95 {pct(all_waits, 95)} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
