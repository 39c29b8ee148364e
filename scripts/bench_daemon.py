#!/usr/bin/env python3
"""Runtime benchmark of the daemon on a real-time 15 fps replay (issue: the daemon).

Prints, and writes as JSON with --json:
- decision latency (first frame showing the face → decision written), p50/p95, over scripted visits
  rendered from faces-dev photos (or the bundled demo portrait when faces-dev is absent);
- CPU use with no face in view (share of one core) and peak RSS, on a replay of empty shop frames.

    .venv/bin/python scripts/bench_daemon.py [--visits 12] [--idle-s 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
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
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="tillface-bench-") as tmp:
        work = Path(tmp)
        render_visits(photos(args.faces, args.visits), work / "visits", fps=args.fps)
        events = work / "events.jsonl"
        _, _, _ = run(config_for(work / "state", f"replay:{work / 'visits'}", args.fps), events)
        records = [json.loads(line) for line in events.read_text().splitlines()]
        latency = [
            r["latency_ms"] for r in records if r["event"] in ("match", "visitor") and "latency_ms" in r
        ]

        render_visits([], work / "idle", fps=args.fps, gap_s=args.idle_s)
        idle, cpu_s, wall_s = run(config_for(work / "state", f"replay:{work / 'idle'}", args.fps), None)

    result = {
        "fps": args.fps,
        "visits": args.visits,
        "decisions": len(latency),
        "decision_latency_ms_p50": round(float(np.percentile(latency, 50)), 1) if latency else None,
        "decision_latency_ms_p95": round(float(np.percentile(latency, 95)), 1) if latency else None,
        "idle_frames": idle.stats.frames,
        "idle_cpu_share_of_one_core": round(cpu_s / wall_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }
    print(
        f"decision latency at {args.fps} fps replay: p50 {result['decision_latency_ms_p50']} ms, "
        f"p95 {result['decision_latency_ms_p95']} ms over {len(latency)} decisions ({args.visits} visits)\n"
        f"no face in view: {result['idle_cpu_share_of_one_core'] * 100:.1f}% of one core over "
        f"{idle.stats.frames} frames; peak RSS {result['peak_rss_mb']} MB"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
