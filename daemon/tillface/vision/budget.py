"""What a board should give: expected invoke times of the unit's models on a Raspberry Pi 4, a Raspberry Pi 5
and a Jetson Orin Nano (CPU only; the runtime has no GPU path).

The one owner of these figures: `tillface bench` prints them next to its measurements, and the README section
"What a board should give" is checked against `readme_table()` by a test.

How the figures are made (all of them are estimates; none was measured on the boards here):

* the work of each model is its multiply-accumulate count, counted from the graph (`graph_macs`; a test checks
  `MODEL_MACS` against the model files);
* the speed of each board is a sustained rate in G multiply-accumulates per second per thread, for XNNPACK's
  int8 kernels (the embedders) and its float32 kernels (BlazeFace runs float32 compute), derived from the
  published figures in `SOURCES` (the derivation is in `Board.derivation`);
* expected ms = MACs / (threads x rate), the fast end at the high rate and the slow end at the low rate, and
  the slow end is widened by `OVERHEAD`, a margin (not a measured figure) for what the MAC count leaves out:
  elementwise ops, padding, the quantize/dequantize at the ends, thread scheduling, a busier board;
* more threads than the board's cores give nothing, and the rates assume a board that is not throttling
  (a Pi 4 without a heatsink drops to 1.0-1.2 GHz under load; a Pi 5 needs its active cooler).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Multiply-accumulates per invoke (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED), counted by `graph_macs`.
MODEL_MACS: Mapping[str, int] = {
    "blazeface-short": 30_760_960,
    "blazeface-full": 105_671_232,
    "sface-2021dec-int8": 574_138_880,
    "dlib-resnet-v1-int8": 278_464_512,
}
# Which of XNNPACK's kernels do the work: BlazeFace has float16 weights and float32 compute.
MODEL_PRECISION: Mapping[str, str] = {
    "blazeface-short": "fp32",
    "blazeface-full": "fp32",
    "sface-2021dec-int8": "int8",
    "dlib-resnet-v1-int8": "int8",
}
# The slow end of a range is multiplied by this (see the module docstring).
OVERHEAD = 1.35
# Embeddings before the first decision of a visit: [recognition] min_frames good frames (default 3).
DECISION_EMBEDDINGS = 3

SOURCES: Mapping[str, str] = {
    "xnnpack": (
        "XNNPACK README, Raspberry Pi table (github.com/google/XNNPACK, README.md, benchmarked Feb 8, 2022 "
        "with end2end-bench, multi-threaded): RPi 4 (BCM2711, ARM64) INT8 MobileNet v1 24 ms, v2 17 ms; "
        "FP32 MobileNet v1 77 ms, v2 46 ms"
    ),
    "allan-pi5": (
        "Alasdair Allan, benchmarking-ml-on-the-edge (github.com/aallan/benchmarking-ml-on-the-edge, "
        "README.md; article: hackster.io 'Benchmarking TensorFlow and TensorFlow Lite on Raspberry Pi 5'): "
        "Raspberry Pi 5, TensorFlow Lite, 4 threads, quantized SSD MobileNet v1 (0.75 depth, 300x300) "
        "16.9 ms, SSD MobileNet v2 23.5 ms"
    ),
    "raspberrypi-pi5": (
        "Raspberry Pi 5 launch figures (Sep 28, 2023), as reported by ZDNet ('The Raspberry Pi 5 is here', "
        "zdnet.com) and CircuitDigest ('The new Raspberry Pi 5 is here', circuitdigest.com/news): 2-3x "
        "the CPU performance of Raspberry Pi 4"
    ),
    "opencv-zoo": (
        "OpenCV Zoo benchmark README (github.com/opencv/opencv_zoo, benchmark/README.md, opencv-python "
        "4.10.0, OpenCV DNN on the CPU): SFace fp32 (this embedder's network) median 69.06 ms on Raspberry "
        "Pi 4B (4x Cortex-A72 1.5 GHz), mean 20.05 / median 24.76 ms on Jetson Orin Nano (6x Cortex-A78AE)"
    ),
}

MOBILENET_V1_MACS = 569e6  # Howard et al. 2017, MobileNet v1 1.0 224: 569 M mult-adds
MOBILENET_V2_MACS = 300e6  # Sandler et al. 2018, MobileNetV2 1.0 224: 300 M mult-adds


@dataclass(frozen=True)
class Board:
    id: str
    name: str
    cpu: str
    cores: int
    threads: int  # the [vision] num_threads to use
    int8_gmacs: tuple[float, float]  # G multiply-accumulates per second per thread, (low, high)
    fp32_gmacs: tuple[float, float]
    sources: tuple[str, ...]
    derivation: str

    def rate(self, precision: str) -> tuple[float, float]:
        return self.int8_gmacs if precision == "int8" else self.fp32_gmacs


# Pi 4, per thread from XNNPACK's 4-thread figures: int8 300 M / 17 ms / 4 = 4.4 and 569 M / 24 ms / 4 = 5.9;
# fp32 300 M / 46 ms / 4 = 1.6 and 569 M / 77 ms / 4 = 1.8 (OpenCV DNN's SFace fp32, 574 M / 69 ms / 4 = 2.1,
# agrees). The other boards are scaled from the Pi 4, by the published ratios in their derivations.
_PI4_INT8 = (MOBILENET_V2_MACS / 17e-3 / 4 / 1e9, MOBILENET_V1_MACS / 24e-3 / 4 / 1e9)
_PI4_FP32 = (MOBILENET_V2_MACS / 46e-3 / 4 / 1e9, MOBILENET_V1_MACS / 77e-3 / 4 / 1e9)
# Orin Nano per core against Pi 4 per core, from OpenCV Zoo's SFace fp32 (same network, same runtime):
# 69.06 ms x 4 cores / (24.76 ms x 6 cores) = 1.86 (medians) and 68.82 x 4 / (20.05 x 6) = 2.29 (means).
_ORIN_PER_CORE = (69.06 * 4 / (24.76 * 6), 68.82 * 4 / (20.05 * 6))
# Pi 5: Allan's SSD MobileNet v1 0.75 at 300x300 is at least 325 M x (300/224)^2 = 583 M MACs (the backbone;
# the SSD head adds more), 583 M / 16.9 ms / 4 = 8.6 G per thread, the low end; the high end is Raspberry Pi's
# 3x of the Pi 4 high end. fp32 has no published Pi 5 figure here: Raspberry Pi's 2-3x of the Pi 4.
_PI5_INT8 = (325e6 * (300 / 224) ** 2 / 16.9e-3 / 4 / 1e9, 3 * _PI4_INT8[1])
_PI5_FP32 = (2 * _PI4_FP32[0], 3 * _PI4_FP32[1])


def _round(pair: tuple[float, float]) -> tuple[float, float]:
    return (round(pair[0], 1), round(pair[1], 1))


BOARDS: tuple[Board, ...] = (
    Board(
        id="pi4",
        name="Raspberry Pi 4",
        cpu="4x Cortex-A72 1.5 GHz (1.8 GHz on later boards)",
        cores=4,
        threads=3,
        int8_gmacs=_round(_PI4_INT8),
        fp32_gmacs=_round(_PI4_FP32),
        sources=("xnnpack", "opencv-zoo"),
        derivation="XNNPACK's 4-thread MobileNet v1/v2 times on a Pi 4 (ARM64) / 4 threads",
    ),
    Board(
        id="pi5",
        name="Raspberry Pi 5",
        cpu="4x Cortex-A76 2.4 GHz (int8 dot product)",
        cores=4,
        threads=3,
        int8_gmacs=_round(_PI5_INT8),
        fp32_gmacs=_round(_PI5_FP32),
        sources=("allan-pi5", "raspberrypi-pi5", "xnnpack"),
        derivation=(
            "int8: Allan's TFLite SSD MobileNet v1 0.75 on a Pi 5 (backbone MACs only, so a low end) up to "
            "3x the Pi 4; fp32: 2-3x the Pi 4 (Raspberry Pi's figure)"
        ),
    ),
    Board(
        id="orin-nano",
        name="Jetson Orin Nano",
        cpu="6x Cortex-A78AE 1.5 GHz (1.7 GHz in the Super modes; int8 dot product)",
        cores=6,
        threads=4,
        int8_gmacs=_round((_PI4_INT8[0] * _ORIN_PER_CORE[0], _PI4_INT8[1] * _ORIN_PER_CORE[1])),
        fp32_gmacs=_round((_PI4_FP32[0] * _ORIN_PER_CORE[0], _PI4_FP32[1] * _ORIN_PER_CORE[1])),
        sources=("opencv-zoo", "xnnpack"),
        derivation=(
            "the Pi 4 rates x 1.86-2.29, OpenCV Zoo's per-core SFace ratio Orin Nano / Pi 4 (fp32 there; "
            "int8 with dot products should gain more, so the int8 range is on the safe side)"
        ),
    ),
)


def board(board_id: str) -> Board:
    for b in BOARDS:
        if b.id == board_id:
            return b
    raise KeyError(f"unknown board {board_id!r} (one of {', '.join(b.id for b in BOARDS)})")


def expected_ms(model_id: str, b: Board, threads: int | None = None) -> tuple[float, float]:
    """(fast, slow) invoke time in ms of `model_id` on board `b` with `threads` (default: the board's)."""
    t = min(threads or b.threads, b.cores)
    if t < 1:
        raise ValueError("threads must be at least 1")
    low, high = b.rate(MODEL_PRECISION[model_id])
    macs = MODEL_MACS[model_id]
    return (macs / (t * high * 1e6), macs / (t * low * 1e6) * OVERHEAD)


@dataclass(frozen=True)
class Budget:
    board: Board
    threads: int
    detect_ms: tuple[float, float]  # one detector invoke: every frame
    embed_ms: tuple[float, float]  # one embedder invoke: every frame the session embeds
    frame_ms: tuple[float, float]  # a frame with a face: detect + embed
    decision_ms: tuple[float, float]  # compute for a first decision: DECISION_EMBEDDINGS such frames


def budget(b: Board, detector: str, embedder: str, threads: int | None = None) -> Budget:
    t = min(threads or b.threads, b.cores)
    det = expected_ms(detector, b, t)
    emb = expected_ms(embedder, b, t)
    frame = (det[0] + emb[0], det[1] + emb[1])
    n = DECISION_EMBEDDINGS
    return Budget(b, t, det, emb, frame, (n * frame[0], n * frame[1]))


def fmt_range(pair: tuple[float, float]) -> str:
    lo, hi = pair
    digits = 1 if hi < 10 else 0
    return f"{lo:.{digits}f}–{hi:.{digits}f}"


def bench_lines(detector: str, embedder: str, threads: int) -> list[str]:
    """What `tillface bench` prints under its figures: the expected range on each board at `threads`, and
    at the board's own thread count."""
    lines = [
        f"  expected on a board (estimates from published figures, README 'What a board should give'; "
        f"{threads} threads, and the board's own):"
    ]
    for b in BOARDS:
        here = budget(b, detector, embedder, threads)
        own = budget(b, detector, embedder)
        lines.append(
            f"    {b.name:16s} {here.threads} thr: detect {fmt_range(here.detect_ms)} ms, "
            f"embed {fmt_range(here.embed_ms)} ms  | {own.threads} thr: "
            f"detect {fmt_range(own.detect_ms)} ms, embed {fmt_range(own.embed_ms)} ms"
        )
    return lines


def readme_table(detector: str = "blazeface-short", embedder: str = "sface-2021dec-int8") -> str:
    """The table of the README section "What a board should give" (a test checks that the README has it)."""
    rows = [
        "| board | CPU | `num_threads` | int8 / fp32 G MAC/s per thread | detector per frame, ms | "
        "embedder per face, ms | frame with a face, ms | first decision (3 embeddings), ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in BOARDS:
        g = budget(b, detector, embedder)
        rows.append(
            f"| {b.name} | {b.cpu} | {g.threads} | {b.int8_gmacs[0]}–{b.int8_gmacs[1]} / "
            f"{b.fp32_gmacs[0]}–{b.fp32_gmacs[1]} | {fmt_range(g.detect_ms)} | {fmt_range(g.embed_ms)} | "
            f"{fmt_range(g.frame_ms)} | {fmt_range(g.decision_ms)} |"
        )
    return "\n".join(rows)


def graph_macs(model_path: Path) -> int:
    """Multiply-accumulates of one invoke: CONV_2D (output elements x kernel volume), DEPTHWISE_CONV_2D
    (output elements x kernel area) and FULLY_CONNECTED (outputs x inputs), from the graph's tensor shapes."""
    from .runtime import load_interpreter

    it: Any = load_interpreter(model_path, 1)
    it.allocate_tensors()
    shapes = {t["index"]: [int(v) for v in t["shape"]] for t in it.get_tensor_details()}
    total = 0
    for op in it._get_ops_details():
        name = op["op_name"]
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        w, out = shapes[int(op["inputs"][1])], shapes[int(op["outputs"][0])]
        n_out = 1
        for v in out:
            n_out *= v
        if name == "CONV_2D":  # weights OHWI
            total += n_out * w[1] * w[2] * w[3]
        elif name == "DEPTHWISE_CONV_2D":  # weights 1HWC
            total += n_out * w[1] * w[2]
        else:  # weights (out, in)
            total += n_out * w[1]
    return total
