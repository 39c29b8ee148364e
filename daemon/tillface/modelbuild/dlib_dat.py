"""Reader for dlib's serialised ResNet face embedder (`dlib_face_recognition_resnet_model_v1.dat`).

numpy only: it turns the file into a list of layer records in forward order, each with its
hyper-parameters and its weights as numpy arrays. `dlib_resnet.py` builds the network from them.

The byte format (see the project notes, "dlib ResNet weight file"):

* integers: a control byte (low nibble = payload length, bit 0x80 = negative) and a little-endian
  magnitude;
* scalar floats: two integers, mantissa and exponent, value = mantissa * 2**exponent;
* strings: an integer length, then the bytes;
* tensors: version 2, four integers (n, k, nr, nc), then n*k*nr*nc IEEE float32 little-endian;
* the network is nested wrappers: every wrapper writes its version and its subnet first, so the file
  holds the loss header, a run of version integers (outermost first), the input record, then the layer
  records innermost (= first in forward order) first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Exponents that dlib uses for the special float values.
_EXP_INF, _EXP_NINF, _EXP_NAN = 32000, 32001, 32002


class DatFormatError(ValueError):
    """The file does not follow the expected dlib serialisation."""


@dataclass
class LayerRecord:
    """One layer in forward order.

    kind is the dlib record name ("con_4", "affine_", "relu_", "max_pool_2", "avg_pool_2", "add_prev_",
    "fc_2"); params holds the hyper-parameters; arrays the weights (numpy float32).
    """

    index: int
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_parameters(self) -> int:
        return int(sum(a.size for a in self.arrays.values()))


@dataclass
class DlibNet:
    """The parsed file."""

    loss: dict[str, Any]
    input: dict[str, Any]
    layers: list[LayerRecord]
    wrapper_versions: list[int]  # outermost first, as stored
    file_size: int

    @property
    def n_parameters(self) -> int:
        return sum(layer.n_parameters for layer in self.layers)

    @property
    def input_means(self) -> tuple[float, float, float]:
        """(R, G, B) means subtracted before dividing by 256."""
        return (self.input["avg_red"], self.input["avg_green"], self.input["avg_blue"])


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DatFormatError(f"unexpected end of file at byte {self.pos} (wanted {n} bytes)")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def peek_byte(self) -> int:
        if self.pos >= len(self.data):
            raise DatFormatError("unexpected end of file")
        return self.data[self.pos]

    def integer(self) -> int:
        ctrl = self._take(1)[0]
        size = ctrl & 0x0F
        if size > 8:
            raise DatFormatError(f"bad integer control byte 0x{ctrl:02x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little", signed=False) if size else 0
        return -value if ctrl & 0x80 else value

    def boolean(self) -> bool:
        ch = self._take(1)
        if ch == b"1":
            return True
        if ch == b"0":
            return False
        raise DatFormatError(f"bad bool byte {ch!r} at byte {self.pos - 1}")

    def string(self) -> str:
        n = self.integer()
        if n < 0 or n > 1 << 20:
            raise DatFormatError(f"bad string length {n} at byte {self.pos}")
        return self._take(n).decode("ascii")

    def real(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        if exponent == _EXP_INF:
            return math.inf
        if exponent == _EXP_NINF:
            return -math.inf
        if exponent == _EXP_NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent) if mantissa else 0.0

    def expect_version(self, expected: int, what: str) -> None:
        got = self.integer()
        if got != expected:
            raise DatFormatError(f"{what}: version {got}, expected {expected} (byte {self.pos})")

    def tensor(self) -> np.ndarray:
        self.expect_version(2, "tensor")
        shape = tuple(self.integer() for _ in range(4))
        if any(d < 0 for d in shape):
            raise DatFormatError(f"bad tensor shape {shape}")
        count = int(np.prod(shape, dtype=np.int64))
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        self.expect_version(1, "alias_tensor")
        n, k, nr, nc = (self.integer() for _ in range(4))
        return (n, k, nr, nc)


def _read_layer(r: _Reader, index: int) -> LayerRecord:
    kind = r.string()
    rec = LayerRecord(index=index, kind=kind)
    p = rec.params
    if kind == "con_4":
        params = r.tensor()
        p["num_filters"] = r.integer()
        p["nr"], p["nc"] = r.integer(), r.integer()
        p["stride_y"], p["stride_x"] = r.integer(), r.integer()
        p["padding_y"], p["padding_x"] = r.integer(), r.integer()
        w_shape = r.alias_tensor()
        b_shape = r.alias_tensor()
        p["multipliers"] = [r.real() for _ in range(4)]
        flat = params.reshape(-1)
        n_w = int(np.prod(w_shape))
        n_b = int(np.prod(b_shape))
        if flat.size != n_w + n_b:
            raise DatFormatError(f"layer {index} con: {flat.size} params, aliases need {n_w}+{n_b}")
        if w_shape[0] != p["num_filters"] or w_shape[2:] != (p["nr"], p["nc"]):
            raise DatFormatError(f"layer {index} con: filter alias {w_shape} does not match {p}")
        rec.arrays["weight"] = flat[:n_w].reshape(w_shape).copy()  # OIHW
        rec.arrays["bias"] = flat[n_w:].reshape(-1).copy()
    elif kind == "affine_":
        params = r.tensor().reshape(-1)
        g_shape = r.alias_tensor()
        b_shape = r.alias_tensor()
        p["mode"] = r.integer()
        n_g, n_b = int(np.prod(g_shape)), int(np.prod(b_shape))
        if params.size != n_g + n_b:
            raise DatFormatError(f"layer {index} affine: {params.size} params, aliases need {n_g}+{n_b}")
        rec.arrays["gamma"] = params[:n_g].copy()
        rec.arrays["beta"] = params[n_g:].copy()
    elif kind in ("max_pool_2", "avg_pool_2"):
        p["nr"], p["nc"] = r.integer(), r.integer()
        p["stride_y"], p["stride_x"] = r.integer(), r.integer()
        p["padding_y"], p["padding_x"] = r.integer(), r.integer()
    elif kind in ("relu_", "add_prev_"):
        pass
    elif kind == "fc_2":
        p["num_outputs"] = r.integer()
        p["num_inputs"] = r.integer()
        params = r.tensor()
        w_shape = r.alias_tensor()
        b_shape = r.alias_tensor()
        p["bias_mode"] = r.integer()
        p["multipliers"] = [r.real() for _ in range(4)]
        flat = params.reshape(-1)
        n_w = int(np.prod(w_shape))
        rec.arrays["weight"] = flat[:n_w].reshape(p["num_inputs"], p["num_outputs"]).copy()  # [in][out]
        if p["bias_mode"] != 1:  # 1 = FC_NO_BIAS
            rec.arrays["bias"] = flat[n_w : n_w + int(np.prod(b_shape))].copy()
        elif flat.size != n_w:
            raise DatFormatError(f"layer {index} fc: {flat.size} params for a no-bias fc of {w_shape}")
    else:
        raise DatFormatError(f"layer {index}: unsupported record {kind!r} at byte {r.pos}")
    return rec


def _read_add_layer_tail(r: _Reader) -> None:
    """The state an add_layer stores after its layer record: 3 bools and 3 (gradient/cache) tensors."""
    for _ in range(3):
        r.boolean()
    for _ in range(3):
        r.tensor()


def parse_bytes(data: bytes) -> DlibNet:
    r = _Reader(data)
    # Loss wrapper: version 1, the loss record, then the subnet.
    r.expect_version(1, "loss wrapper")
    loss_name = r.string()
    if loss_name != "loss_metric_2":
        raise DatFormatError(f"unsupported loss {loss_name!r}")
    loss = {"kind": loss_name, "margin": r.real(), "dist_thresh": r.real()}

    # Nested wrapper versions, outermost first, until the add_layer over the input (version 3).
    versions: list[int] = []
    while True:
        v = r.integer()
        versions.append(v)
        if v == 3:
            break
        if v not in (1, 2):
            raise DatFormatError(f"unexpected wrapper version {v} at byte {r.pos}")

    # Input record.
    input_name = r.string()
    if input_name != "input_rgb_image_sized":
        raise DatFormatError(f"unsupported input {input_name!r}")
    inp = {
        "kind": input_name,
        "avg_red": r.real(),
        "avg_green": r.real(),
        "avg_blue": r.real(),
        "nr": r.integer(),
        "nc": r.integer(),
    }

    # Innermost layer (add_layer over the input): layer record, bools, tensors, sample expansion.
    layers = [_read_layer(r, 0)]
    _read_add_layer_tail(r)
    inp["sample_expansion_factor"] = r.integer()

    # The remaining wrappers, innermost to outermost. Tags and skips (version 1) store nothing more.
    for v in reversed(versions[:-1]):
        if v == 2:
            layers.append(_read_layer(r, len(layers)))
            _read_add_layer_tail(r)

    if r.pos != len(data):
        raise DatFormatError(f"parse stopped at byte {r.pos} of {len(data)}")
    return DlibNet(loss=loss, input=inp, layers=layers, wrapper_versions=versions, file_size=len(data))


def parse_file(path: str | Path) -> DlibNet:
    data = Path(path).read_bytes()
    net = parse_bytes(data)
    assert net.file_size == len(data)
    return net


def default_dat_path() -> Path:
    """The .dat file of the installed `face_recognition_models` package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face_recognition_models is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / "models" / "dlib_face_recognition_resnet_model_v1.dat"
