"""TFLite runtime: LiteRT (`ai-edge-litert`) first, `tflite-runtime` as the fallback.

Both packages expose the same `Interpreter` API. LiteRT applies its XNNPACK CPU delegate by default;
`num_threads` is passed to the interpreter so that XNNPACK uses that many threads.

The runtime does not say when it could not apply XNNPACK (for instance when its CPU detection fails on
an unusual /proc/cpuinfo, on some ARM boards or under qemu): it silently runs the built-in kernels, which
are slower and give different embeddings (cosine 0.974-0.995 to XNNPACK's for SFace), enough to move
match decisions. So every model, once loaded, gets a `RuntimeReport` that says whether XNNPACK took its
nodes; `tillface doctor` fails, `bench` says so and the daemon logs a warning (`log_runtime`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# (module holding Interpreter, distribution name for the version string)
_BACKENDS: tuple[tuple[str, str], ...] = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
)

_chosen: tuple[Any, str] | None = None


class RuntimeUnavailableError(ImportError):
    """Neither ai-edge-litert nor tflite-runtime can be imported."""


def _backend() -> tuple[Any, str]:
    """Return (Interpreter class, distribution name) of the first runtime that imports."""
    global _chosen
    if _chosen is not None:
        return _chosen
    errors = []
    for module_name, dist in _BACKENDS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            errors.append(f"{dist} ({module_name}): {exc}")
            continue
        _chosen = (module.Interpreter, dist)
        return _chosen
    raise RuntimeUnavailableError(
        "no TFLite runtime: install ai-edge-litert (preferred) or tflite-runtime (fallback, needs numpy<2). "
        "Import errors: " + "; ".join(errors)
    )


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def runtime_name() -> str:
    """The runtime in use, e.g. "ai-edge-litert 2.3.0"."""
    _, dist = _backend()
    return f"{dist} {_version(dist)}"


def load_interpreter(model_path: Path, num_threads: int) -> Any:
    """Create an interpreter for `model_path` with `num_threads` CPU threads (tensors not yet allocated)."""
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    interpreter_cls, _ = _backend()
    return interpreter_cls(model_path=str(path), num_threads=int(num_threads))


class TfliteModel:
    """One loaded model: tensors allocated once, `run` feeds the inputs and returns copies of the outputs."""

    def __init__(self, model_path: Path, num_threads: int = 2) -> None:
        self.path = Path(model_path)
        self.num_threads = num_threads
        self._interpreter = load_interpreter(self.path, num_threads)
        self._interpreter.allocate_tensors()
        # Once per model: the default delegate is applied by the first allocate_tensors.
        self.runtime_report = interpreter_report(self._interpreter, self.path.name)
        self.input_details: list[dict[str, Any]] = list(self._interpreter.get_input_details())
        self.output_details: list[dict[str, Any]] = list(self._interpreter.get_output_details())
        self._input_indices = [d["index"] for d in self.input_details]
        self._input_dtypes = [np.dtype(d["dtype"]) for d in self.input_details]
        self._output_indices = [d["index"] for d in self.output_details]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of the first input, e.g. (1, 128, 128, 3)."""
        return tuple(int(v) for v in self.input_details[0]["shape"])

    @property
    def input_dtype(self) -> np.dtype:
        return self._input_dtypes[0]

    @property
    def output_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(int(v) for v in d["shape"]) for d in self.output_details]

    def run(self, x: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run one inference. `x` is the single input array, or one array per input in model order."""
        inputs = [x] if isinstance(x, np.ndarray) else list(x)
        if len(inputs) != len(self._input_indices):
            raise ValueError(f"{self.path.name} takes {len(self._input_indices)} inputs, got {len(inputs)}")
        for index, dtype, value in zip(self._input_indices, self._input_dtypes, inputs, strict=True):
            if value.dtype != dtype:
                raise TypeError(f"{self.path.name}: input {index} must be {dtype}, got {value.dtype}")
            self._interpreter.set_tensor(index, value)
        self._interpreter.invoke()
        # get_tensor already returns a copy; outputs stay valid after the next run.
        return [self._interpreter.get_tensor(i) for i in self._output_indices]


# ------------------------------------------------------------------ what the runtime runs on

# The SIMD features XNNPACK chooses its kernels by, in numpy's names, in the order they are reported.
# ARM: NEON* (32-bit ARM; implied by ASIMD on AArch64), ASIMD, FP16 arithmetic (FPHP, ASIMDHP), dot
# product (ASIMDDP), FP16 multiply-add (ASIMDFHM), SVE. x86: SSSE3 up to the AVX-512 VNNI/BF16/FP16 sets.
CPU_FEATURES = (
    "NEON",
    "NEON_FP16",
    "NEON_VFPV4",
    "ASIMD",
    "FPHP",
    "ASIMDHP",
    "ASIMDDP",
    "ASIMDFHM",
    "SVE",
    "SSSE3",
    "SSE41",
    "AVX",
    "F16C",
    "FMA3",
    "AVX2",
    "AVX512F",
    "AVX512BW",
    "AVX512VNNI",
    "AVX512BF16",
    "AVX512FP16",
)
_IMPLIED_BY_ASIMD = ("NEON", "NEON_FP16", "NEON_VFPV4")

# /proc/cpuinfo names (x86 `flags`, ARM `Features`) of the same features.
_CPUINFO_NAMES = {
    "neon": "NEON",
    "half": "NEON_FP16",
    "vfpv4": "NEON_VFPV4",
    "asimd": "ASIMD",
    "fphp": "FPHP",
    "asimdhp": "ASIMDHP",
    "asimddp": "ASIMDDP",
    "asimdfhm": "ASIMDFHM",
    "sve": "SVE",
    "ssse3": "SSSE3",
    "sse4_1": "SSE41",
    "avx": "AVX",
    "f16c": "F16C",
    "fma": "FMA3",
    "avx2": "AVX2",
    "avx512f": "AVX512F",
    "avx512bw": "AVX512BW",
    "avx512_vnni": "AVX512VNNI",
    "avx512_bf16": "AVX512BF16",
    "avx512_fp16": "AVX512FP16",
}

CPUINFO = Path("/proc/cpuinfo")


def _reported(present: Iterable[str]) -> tuple[str, ...]:
    have = set(present)
    if "ASIMD" in have:  # AArch64: NEON and its FP16/VFPv4 extensions are part of ASIMD
        have.difference_update(_IMPLIED_BY_ASIMD)
    return tuple(name for name in CPU_FEATURES if name in have)


def cpu_features_from_cpuinfo(text: str) -> tuple[str, ...]:
    """The CPU_FEATURES named by the first `flags` (x86) or `Features` (ARM) line of /proc/cpuinfo."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return _reported(_CPUINFO_NAMES[f] for f in value.split() if f in _CPUINFO_NAMES)
    return ()


def _numpy_cpu_features() -> Mapping[str, bool] | None:
    """numpy's runtime CPU detection (numpy 2: `numpy._core`, numpy 1 with tflite-runtime: `numpy.core`)."""
    for module_name in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            table = importlib.import_module(module_name).__cpu_features__
        except (ImportError, AttributeError):
            continue
        if isinstance(table, Mapping):
            return table
    return None


@functools.cache
def detect_cpu_features() -> tuple[tuple[str, ...], str]:
    """(CPU_FEATURES this CPU has, where that came from).

    numpy's own detection first: CPUID on x86 (checked against what the OS enables, XCR0) and the
    kernel's HWCAP auxiliary vector on ARM Linux, so no text format is parsed on either; numpy also
    needs it to pick its own kernels, so it is there on every install. Else the /proc/cpuinfo line.
    """
    table = _numpy_cpu_features()
    if table is not None:
        return _reported(name for name, on in table.items() if on), "numpy"
    try:
        return cpu_features_from_cpuinfo(CPUINFO.read_text(encoding="utf-8", errors="replace")), str(CPUINFO)
    except OSError:
        return (), "none"


@dataclass(frozen=True)
class RuntimeReport:
    """What one loaded model runs on: the runtime, how much of it XNNPACK runs, the CPU."""

    runtime: str  # distribution, e.g. "ai-edge-litert"
    version: str  # e.g. "2.3.0"
    model: str  # model file name
    nodes: int  # operators in the model
    xnnpack_nodes: int  # of those, how many XNNPACK runs
    xnnpack_partitions: int  # delegate partitions they form (1 = the whole graph in one piece)
    xnnpack: bool  # XNNPACK took at least one node
    cpu_features: tuple[str, ...]  # CPU_FEATURES present, see detect_cpu_features
    cpu_features_source: str  # "numpy", "/proc/cpuinfo" or "none"
    machine: str  # platform.machine(), e.g. "aarch64"

    @property
    def runtime_name(self) -> str:
        return f"{self.runtime} {self.version}"

    def xnnpack_use(self) -> str:
        """E.g. "164 of 164 nodes in 1 partition"."""
        return describe_use(self.nodes, self.xnnpack_nodes, self.xnnpack_partitions)


def describe_use(nodes: int, xnnpack_nodes: int, partitions: int) -> str:
    return f"{xnnpack_nodes} of {nodes} nodes in {partitions} partition{'' if partitions == 1 else 's'}"


def _dist_of(interpreter: Any) -> str:
    root = type(interpreter).__module__.split(".")[0]
    for module_name, dist in _BACKENDS:
        if module_name.split(".")[0] == root:
            return dist
    return root


def delegate_use(ops: Sequence[Mapping[str, Any]]) -> tuple[int, int, int]:
    """(model nodes, nodes inside delegate partitions, partitions) from an interpreter's ops details.

    A delegate replaces each partition it takes by one node named DELEGATE, appended after the model's
    own nodes (which stay listed); when applying it fails, the runtime reverts the graph and removes
    those nodes. A partition's node lists its boundary: every tensor flowing in (inputs, weights
    included) and out. The model nodes it replaced are exactly those reached by walking back from its
    outputs through the tensors' producers without crossing its inputs.
    """
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    own = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer = {int(t): op["index"] for op in own for t in op["outputs"] if t >= 0}
    by_index = {op["index"]: op for op in own}
    taken: set[int] = set()
    for partition in delegates:
        boundary = {int(t) for t in partition["inputs"] if t >= 0}
        seen: set[int] = set()
        stack = [int(t) for t in partition["outputs"] if t >= 0]
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor in seen:
                continue
            seen.add(tensor)
            node = producer.get(tensor)
            if node is None or node in taken:
                continue
            taken.add(node)
            stack.extend(int(t) for t in by_index[node]["inputs"] if t >= 0)
    return len(own), len(taken), len(delegates)


def interpreter_report(interpreter: Any, model: str) -> RuntimeReport:
    """The RuntimeReport of an interpreter whose tensors are allocated (the default delegate, XNNPACK,
    is applied by the first allocate_tensors). Reads the graph once: a few ms, at load only.

    Our interpreters get no `experimental_delegates`, so a DELEGATE node can only be the default
    delegate, XNNPACK.
    """
    nodes, delegated, partitions = delegate_use(interpreter._get_ops_details())
    dist = _dist_of(interpreter)
    features, source = detect_cpu_features()
    return RuntimeReport(
        runtime=dist,
        version=_version(dist),
        model=model,
        nodes=nodes,
        xnnpack_nodes=delegated,
        xnnpack_partitions=partitions,
        xnnpack=delegated > 0,
        cpu_features=features,
        cpu_features_source=source,
        machine=platform.machine(),
    )


# ------------------------------------------------------------------ for doctor, bench, health, the journal


class HasRuntimeReports(Protocol):
    def runtime_reports(self) -> Mapping[str, RuntimeReport]: ...


def xnnpack_summary(reports: Mapping[str, RuntimeReport]) -> str:
    """E.g. "blazeface-short 164 of 164 nodes in 1 partition; sface-2021dec-int8 89 of 117 ..."."""
    return "; ".join(f"{model_id} {r.xnnpack_use()}" for model_id, r in reports.items())


def cpu_summary(reports: Mapping[str, RuntimeReport] | None = None) -> str:
    """E.g. "x86_64: SSSE3 SSE41 AVX F16C FMA3 AVX2 (numpy)"."""
    if reports:
        first = next(iter(reports.values()))
        features, source, machine = first.cpu_features, first.cpu_features_source, first.machine
    else:
        (features, source), machine = detect_cpu_features(), platform.machine()
    return f"{machine}: {' '.join(features) or 'no SIMD features detected'} ({source})"


def xnnpack_problem(reports: Mapping[str, RuntimeReport]) -> str | None:
    """None when every model runs on XNNPACK, else what it means and what to do (for a technician)."""
    missing = [model_id for model_id, r in reports.items() if not r.xnnpack]
    if not missing:
        return None
    first = next(iter(reports.values()))
    return (
        f"{', '.join(missing)} {'runs' if len(missing) == 1 else 'run'} WITHOUT XNNPACK "
        f"({first.runtime_name} on {first.machine}): the built-in "
        "CPU kernels are slower and give different embeddings (cosine 0.97-0.995 to XNNPACK's), enough "
        "to change who is recognised. The runtime usually drops XNNPACK when it cannot read this CPU's "
        "features: check that /proc/cpuinfo has a 'Features' (ARM) or 'flags' (x86) line, that the unit "
        "runs natively (not under qemu/emulation) on a supported 64-bit OS, and that ai-edge-litert is "
        "the wheel for this machine; then run `tillface doctor` again"
    )


def runtime_facts(reports: Mapping[str, RuntimeReport]) -> dict[str, Any]:
    """The runtime, XNNPACK use per model and the CPU, as JSON-able fields (for `tillface bench`)."""
    first = next(iter(reports.values()))
    return {
        "runtime": first.runtime_name,
        "machine": first.machine,
        "xnnpack": all(r.xnnpack for r in reports.values()),
        "xnnpack_models": {
            model_id: {"nodes": r.nodes, "xnnpack_nodes": r.xnnpack_nodes, "partitions": r.xnnpack_partitions}
            for model_id, r in reports.items()
        },
        "cpu_features": list(first.cpu_features),
        "cpu_features_source": first.cpu_features_source,
    }


def runtime_health(pipeline: HasRuntimeReports) -> dict[str, Any]:
    """The `health` payload's runtime fields: `runtime`, `xnnpack` (every model on it), `cpu_features`."""
    facts = runtime_facts(pipeline.runtime_reports())
    return {key: facts[key] for key in ("runtime", "xnnpack", "cpu_features")}


def log_runtime(pipeline: HasRuntimeReports, logger: logging.Logger) -> bool:
    """One INFO line at start (runtime, XNNPACK use per model, CPU), and a WARNING when a model runs
    without XNNPACK. Returns whether every model runs on XNNPACK."""
    reports = pipeline.runtime_reports()
    facts = runtime_facts(reports)
    journal = {
        "TILLFACE_RUNTIME": facts["runtime"],
        "TILLFACE_XNNPACK": facts["xnnpack"],
        "TILLFACE_CPU_FEATURES": " ".join(facts["cpu_features"]),
    }
    logger.info(
        "runtime %s; XNNPACK: %s; CPU %s",
        facts["runtime"],
        xnnpack_summary(reports),
        cpu_summary(reports),
        extra={"journal": journal},
    )
    problem = xnnpack_problem(reports)
    if problem is not None:
        logger.warning("XNNPACK MISSING: %s", problem, extra={"journal": journal})
    return problem is None
