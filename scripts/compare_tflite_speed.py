#!/usr/bin/env python3
"""Compare TFLite models of one input shape: XNNPACK use, invoke times, and (with valgrind) instructions.

    python scripts/compare_tflite_speed.py MODEL.tflite [MODEL.tflite ...] [--threads 1 2] [--rounds 8]
        [--runs 25] [--callgrind]

Invoke times: the models are interleaved round by round (each round `--runs` invokes of each), so that
a machine busy with other work slows them alike; printed: best, median, and the lowest round median.
`--callgrind` also counts the instructions of one invoke (1 thread): valgrind's callgrind on a process
that invokes the model 3 times, minus one that invokes it once, halved; not disturbed by other work.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

from tillface.vision.runtime import delegate_use, describe_use, load_interpreter

_INVOKE = """
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1], num_threads=1)
it.allocate_tensors()
d = it.get_input_details()[0]
it.set_tensor(d["index"], np.random.default_rng(0).uniform(0, 255, d["shape"]).round().astype(np.float32))
for _ in range(int(sys.argv[2])):
    it.invoke()
"""


def _interpreter(path: Path, threads: int):
    it = load_interpreter(path, threads)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    x = np.random.default_rng(0).uniform(0, 255, d["shape"]).round().astype(np.float32)
    it.set_tensor(d["index"], x)
    for _ in range(5):
        it.invoke()
    return it


def instructions(path: Path) -> int:
    counts = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "invoke.py"
        script.write_text(_INVOKE)
        for n in (1, 3):
            run = subprocess.run(
                [
                    "valgrind",
                    "--tool=callgrind",
                    f"--callgrind-out-file={tmp}/cg.{n}",
                    sys.executable,
                    str(script),
                    str(path),
                    str(n),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            m = re.search(r"I\s+refs:\s+([\d,]+)", run.stderr)
            if m is None:
                raise SystemExit(f"no instruction count from valgrind for {path}")
            counts.append(int(m.group(1).replace(",", "")))
    return (counts[1] - counts[0]) // 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--callgrind", action="store_true", help="also count instructions per invoke (slow)")
    args = ap.parse_args(argv)

    for path in args.models:
        it = load_interpreter(path, 1)
        it.allocate_tensors()
        print(f"{path}: XNNPACK {describe_use(*delegate_use(it._get_ops_details()))}")
    for threads in args.threads:
        its = [_interpreter(p, threads) for p in args.models]
        times: list[list[float]] = [[] for _ in args.models]
        medians: list[list[float]] = [[] for _ in args.models]
        for _ in range(args.rounds):
            for i, it in enumerate(its):
                t = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    it.invoke()
                    t.append((time.perf_counter() - t0) * 1000.0)
                times[i] += t
                medians[i].append(statistics.median(t))
        for path, t, m in zip(args.models, times, medians, strict=True):
            print(
                f"{path}: {threads} thread{'s' if threads > 1 else ''}: best {min(t):.2f} ms, "
                f"median {statistics.median(t):.2f} ms, lowest round median {min(m):.2f} ms"
            )
    if args.callgrind:
        for path in args.models:
            print(f"{path}: {instructions(path) / 1e6:.1f} M instructions per invoke (1 thread, callgrind)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
