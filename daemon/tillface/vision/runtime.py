"""TFLite runtime: LiteRT (`ai-edge-litert`) first, `tflite-runtime` as the fallback.

Both packages expose the same `Interpreter` API. LiteRT applies its XNNPACK CPU delegate by default;
`num_threads` is passed to the interpreter so that XNNPACK uses that many threads.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def runtime_name() -> str:
    """The runtime in use, e.g. "ai-edge-litert 2.3.0"."""
    _, dist = _backend()
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"{dist} {version}"


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
