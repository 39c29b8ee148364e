"""Reader for OpenCV Zoo's SFace embedder (`face_recognition_sface_2021dec_int8bq.onnx`) and its
rebuild as a PyTorch module.

Build time only. The reader needs the `onnx` package and numpy; `build_model` needs torch. Both are
imported inside the functions that use them, so importing this module costs numpy only.

The ONNX graph (opset 21) is a plain chain, and the reader checks that it is::

    data -> Sub(scalar_op1) -> Mul(scalar_op2)
         -> 27 x [Conv -> BatchNormalization -> PRelu]      (some depthwise, some stride 2)
         -> BatchNormalization bn1 -> Dropout -> Flatten -> Gemm pre_fc1 -> BatchNormalization fc1

Its conv and Gemm weights (and the Gemm bias) are int8, block-quantised: `DequantizeLinear(q, scale,
zero_point)` with `axis` and `block_size` (element i along `axis` uses scale/zero-point i // block_size,
y = (q - zp) * s), followed for the conv weights by a `Reshape` to the kernel shape. The reader
dequantises them in float64 and folds, also in float64:

* every BatchNormalization into the Conv before it: k = gamma / sqrt(var + eps), W*k, (b - mean)*k + beta;
* bn1 (per channel on the C x H x W map before Flatten) into the Gemm: its scale multiplies the Gemm
  columns of that channel, its shift goes into the Gemm bias through the weights;
* fc1 (per output) into the Gemm rows and bias;
* the input normalisation (x - 127.5) * 0.0078125 into the first conv. That conv is zero-padded in the
  normalised space, so the padding becomes an explicit constant pad with the mean value (127.5) in raw
  pixel space and the conv itself is unpadded: exact, not an approximation at the border.

The torch model therefore takes raw RGB 0..255 (NCHW, 1x3x112x112, OpenCV's `blobFromImage(crop, 1.0,
(112, 112), (0, 0, 0), swapRB=True)`) and returns the raw 128-d feature, as OpenCV's DNN module does on
the ONNX file. The Gemm is written as a 7x7 valid convolution over the last feature map (the same
arithmetic), so the exported channels-last graph needs no transpose before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn

INPUT_SIZE = 112


class SFaceFormatError(ValueError):
    """The ONNX graph is not the chain this reader expects."""


@dataclass
class ConvLayer:
    """One Conv + BatchNormalization + PRelu, folded. weight is (out, in/groups, kh, kw), float64."""

    name: str
    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    prelu: np.ndarray  # per-channel negative slope, (out,)


@dataclass
class SFaceNet:
    """The folded network. `convs[0]` takes raw pixels padded with `input_pad_value` and has no padding."""

    convs: list[ConvLayer]
    fc_weight: np.ndarray  # (128, C*H*W) in ONNX Flatten order (c, h, w)
    fc_bias: np.ndarray  # (128,)
    feature_shape: tuple[int, int, int]  # (C, H, W) before Flatten
    input_mean: float
    input_scale: float
    input_pad: tuple[int, int]
    input_name: str
    output_name: str
    opset: int
    info: dict[str, Any] = field(default_factory=dict)
    # "prelu": y>0 ? y : a*y (as in the ONNX file); "max": max(y, a*y) with every a <= 1 (see `max_form`).
    activation: str = "prelu"

    @property
    def input_pad_value(self) -> float:
        return self.input_mean

    @property
    def n_parameters(self) -> int:
        n = sum(c.weight.size + c.bias.size + c.prelu.size for c in self.convs)
        return n + self.fc_weight.size + self.fc_bias.size


def dequantize_blocked(
    q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int, block_size: int
) -> np.ndarray:
    """ONNX DequantizeLinear (opset 21) in float64: per-tensor, per-axis or blocked along `axis`."""
    x = q.astype(np.float64)
    s = np.asarray(scale, dtype=np.float64)
    zp = np.zeros_like(s) if zero_point is None else np.asarray(zero_point, dtype=np.float64)
    if s.ndim == 0 or (s.size == 1 and block_size == 0):
        return (x - zp.reshape(())) * s.reshape(())
    axis = axis % q.ndim
    if block_size == 0:  # per-axis: 1-D scale along `axis`
        shape = [1] * q.ndim
        shape[axis] = q.shape[axis]
        return (x - zp.reshape(shape)) * s.reshape(shape)
    if s.ndim != q.ndim or s.shape[axis] != -(-q.shape[axis] // block_size):
        raise SFaceFormatError(f"blocked scale shape {s.shape} does not fit {q.shape} / {block_size}")
    s = np.repeat(s, block_size, axis=axis).take(range(q.shape[axis]), axis=axis)
    zp = np.repeat(zp, block_size, axis=axis).take(range(q.shape[axis]), axis=axis)
    return (x - zp) * s


class _Graph:
    def __init__(self, model: Any) -> None:
        from onnx import helper, numpy_helper

        self._helper = helper
        g = model.graph
        self.inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        # The file also declares the original float weights as graph inputs that no node reads.
        declared = [i.name for i in g.input if i.name not in self.inits]
        self.inputs = [n for n in declared if n in self.consumers]
        self.unused_inputs = [n for n in declared if n not in self.consumers]
        self.outputs = [o.name for o in g.output]

    def attrs(self, node: Any) -> dict[str, Any]:
        return {a.name: self._helper.get_attribute_value(a) for a in node.attribute}

    def const(self, name: str) -> np.ndarray:
        """An initializer, or a constant expression of Constant / DequantizeLinear / Reshape."""
        if name in self.inits:
            return self.inits[name]
        node = self.producer.get(name)
        if node is None:
            raise SFaceFormatError(f"{name!r} is neither an initializer nor produced by a node")
        a = self.attrs(node)
        if node.op_type == "Constant":
            from onnx import numpy_helper

            return numpy_helper.to_array(a["value"]) if "value" in a else np.asarray(a["value_float"])
        if node.op_type == "DequantizeLinear":
            zp = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            return dequantize_blocked(
                self.const(node.input[0]),
                self.const(node.input[1]),
                zp,
                int(a.get("axis", 1)),
                int(a.get("block_size", 0)),
            )
        if node.op_type == "Reshape":
            return self.const(node.input[0]).reshape([int(v) for v in self.const(node.input[1])])
        raise SFaceFormatError(f"{name!r} comes from a {node.op_type}, not a constant expression")

    def next(self, tensor: str, op_type: str) -> Any:
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type != op_type:
            got = [u.op_type for u in users]
            raise SFaceFormatError(f"{tensor!r} should feed exactly one {op_type}, feeds {got}")
        node = users[0]
        if node.input[0] != tensor:
            raise SFaceFormatError(f"{node.name}: {tensor!r} is not its first input")
        return node

    def bn(self, node: Any) -> tuple[np.ndarray, np.ndarray]:
        """BatchNormalization (inference) as y = k*x + t, float64."""
        gamma, beta, mean, var = (self.const(i).astype(np.float64) for i in node.input[1:5])
        eps = float(self.attrs(node).get("epsilon", 1e-5))
        k = gamma / np.sqrt(var + eps)
        return k, beta - mean * k


def _scalar(g: _Graph, node: Any, data: str) -> float:
    other = [i for i in node.input if i != data]
    if len(other) != 1:
        raise SFaceFormatError(f"{node.name}: expected one constant operand")
    v = np.asarray(g.const(other[0]), dtype=np.float64)
    if v.size != 1:
        raise SFaceFormatError(f"{node.name}: operand is not a scalar {v.shape}")
    return float(v.reshape(()))


def _out_size(size: int, k: int, s: int, p: int) -> int:
    return 1 + (size + 2 * p - k) // s


def parse_model(model: Any) -> SFaceNet:
    """Walk the ONNX chain of a loaded `onnx.ModelProto` and fold it (see the module docstring)."""
    g = _Graph(model)
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise SFaceFormatError(f"expected one input and one output, got {g.inputs} -> {g.outputs}")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    cur = g.inputs[0]
    sub = g.next(cur, "Sub")
    mean = _scalar(g, sub, cur)
    mul = g.next(sub.output[0], "Mul")
    scale = _scalar(g, mul, sub.output[0])
    cur = mul.output[0]

    size = (INPUT_SIZE, INPUT_SIZE)
    channels = 3
    convs: list[ConvLayer] = []
    while (users := g.consumers.get(cur, [])) and users[0].op_type == "Conv":
        conv = g.next(cur, "Conv")
        a = g.attrs(conv)
        w = g.const(conv.input[1]).astype(np.float64)
        b = (
            g.const(conv.input[2]).astype(np.float64)
            if len(conv.input) > 2 and conv.input[2]
            else np.zeros(w.shape[0])
        )
        groups = int(a.get("group", 1))
        pads = [int(v) for v in a.get("pads", [0, 0, 0, 0])]
        strides = [int(v) for v in a.get("strides", [1, 1])]
        if any(int(d) != 1 for d in a.get("dilations", [1, 1])) or pads[:2] != pads[2:]:
            raise SFaceFormatError(f"{conv.name}: dilated or asymmetric padding not supported")
        if w.shape[1] * groups != channels or w.shape[2:] != tuple(a.get("kernel_shape", w.shape[2:])):
            raise SFaceFormatError(f"{conv.name}: weight {w.shape} does not fit {channels} channels")
        bn = g.next(conv.output[0], "BatchNormalization")
        k, t = g.bn(bn)
        prelu = g.next(bn.output[0], "PRelu")
        slope = g.const(prelu.input[1]).astype(np.float64).reshape(-1)
        if slope.size != w.shape[0]:
            raise SFaceFormatError(f"{prelu.name}: slope size {slope.size} for {w.shape[0]} channels")
        convs.append(
            ConvLayer(
                name=conv.name,
                weight=w * k[:, None, None, None],
                bias=b * k + t,
                stride=(strides[0], strides[1]),
                padding=(pads[0], pads[1]),
                groups=groups,
                prelu=slope,
            )
        )
        channels = w.shape[0]
        size = (
            _out_size(size[0], w.shape[2], strides[0], pads[0]),
            _out_size(size[1], w.shape[3], strides[1], pads[1]),
        )
        cur = prelu.output[0]
    if not convs:
        raise SFaceFormatError("no Conv after the input normalisation")

    bn1 = g.next(cur, "BatchNormalization")
    k1, t1 = g.bn(bn1)
    cur = bn1.output[0]
    drop = g.next(cur, "Dropout")
    training = len(drop.input) > 2 and drop.input[2] and np.asarray(g.const(drop.input[2])).reshape(())
    if training:
        raise SFaceFormatError("Dropout in training mode")
    cur = drop.output[0]
    flat = g.next(cur, "Flatten")
    if int(g.attrs(flat).get("axis", 1)) != 1:
        raise SFaceFormatError("Flatten axis is not 1")
    gemm = g.next(flat.output[0], "Gemm")
    a = g.attrs(gemm)
    if int(a.get("transA", 0)) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
        raise SFaceFormatError(f"{gemm.name}: unsupported Gemm attributes {a}")
    wf = g.const(gemm.input[1]).astype(np.float64)
    if not int(a.get("transB", 0)):
        wf = wf.T
    bf = g.const(gemm.input[2]).astype(np.float64).reshape(-1) if len(gemm.input) > 2 else 0.0
    hw = size[0] * size[1]
    if wf.shape[1] != channels * hw:
        raise SFaceFormatError(f"Gemm expects {wf.shape[1]} inputs, the conv chain gives {channels}x{size}")
    # bn1 is per channel on the (C, H, W) map; Flatten keeps (c, h, w) order.
    k1r, t1r = np.repeat(k1, hw), np.repeat(t1, hw)
    bf = bf + wf @ t1r
    wf = wf * k1r[None, :]
    fc1 = g.next(gemm.output[0], "BatchNormalization")
    k2, t2 = g.bn(fc1)
    wf = wf * k2[:, None]
    bf = bf * k2 + t2
    if fc1.output[0] != g.outputs[0]:
        raise SFaceFormatError(f"the chain ends at {fc1.output[0]!r}, the graph output is {g.outputs[0]!r}")

    # Input normalisation into the first conv: pad with the mean in raw space, then an unpadded conv.
    first = convs[0]
    first.bias = first.bias + (first.weight * (-mean * scale)).sum(axis=(1, 2, 3))
    first.weight = first.weight * scale
    pad = first.padding
    first.padding = (0, 0)

    return SFaceNet(
        convs=convs,
        fc_weight=wf,
        fc_bias=np.asarray(bf, dtype=np.float64),
        feature_shape=(channels, size[0], size[1]),
        input_mean=mean,
        input_scale=scale,
        input_pad=pad,
        input_name=g.inputs[0],
        output_name=g.outputs[0],
        opset=opset,
        info={
            "nodes": len(model.graph.node),
            "ir_version": int(model.ir_version),
            "unused_graph_inputs": len(g.unused_inputs),
        },
    )


def max_form(net: SFaceNet) -> SFaceNet:
    """The same function with every PReLU written as max(y, a*y).

    For a slope a <= 1 (also a negative one), PReLU_a(y) == max(y, a*y). For a > 1 the channel's conv
    is negated (u = -y) and PReLU_a(y) == -a * max(u, u/a); the factor -a goes into the input channel of
    the next layer (depthwise or pointwise conv, or the final Gemm), which is linear. Exact in real
    arithmetic. TFLite then gets MUL + MAXIMUM, both of which ai-edge-quantizer quantizes, where a
    PReLU would be lowered to RELU, MUL, MUL and SUB.
    """
    convs = [
        ConvLayer(c.name, c.weight.copy(), c.bias.copy(), c.stride, c.padding, c.groups, c.prelu.copy())
        for c in net.convs
    ]
    fc_weight = net.fc_weight.copy()
    hw = net.feature_shape[1] * net.feature_shape[2]
    for i, c in enumerate(convs):
        steep = c.prelu > 1.0
        if not steep.any():
            continue
        factor = np.where(steep, -c.prelu, 1.0)
        c.weight[steep] *= -1.0
        c.bias[steep] *= -1.0
        c.prelu[steep] = 1.0 / c.prelu[steep]
        if i + 1 < len(convs):
            nxt = convs[i + 1]
            if nxt.groups == 1:
                nxt.weight *= factor[None, :, None, None]
            elif nxt.groups == nxt.weight.shape[0] == len(factor) and nxt.weight.shape[1] == 1:
                nxt.weight *= factor[:, None, None, None]
            else:
                raise SFaceFormatError(f"{nxt.name}: cannot absorb a channel factor (groups {nxt.groups})")
        else:
            fc_weight = fc_weight * np.repeat(factor, hw)[None, :]
    return replace(
        net,
        convs=convs,
        fc_weight=fc_weight,
        fc_bias=net.fc_bias.copy(),
        info=dict(net.info),
        activation="max",
    )


def equalize(net: SFaceNet, ranges: list[np.ndarray], alpha: float = 0.5) -> SFaceNet:
    """Rescale the channels between layers so that int8 activations with one scale per tensor fit better.

    `net` must be in max form (max(s*y, a*s*y) == s*max(y, a*y) for s > 0, like ReLU). `ranges[i]` is the
    largest |value| per output channel of conv i (before the activation) over calibration chips. Output
    channel c of conv i is multiplied by s_c (weights and bias) and input channel c of the next layer by
    1/s_c, which leaves the function unchanged. Into a depthwise conv (weights quantized per channel
    anyway) s_c = 1/range_c, so every channel spans about [-1, 1]. Into a pointwise conv or the Gemm
    s_c = range_c**-alpha * w_c**(1 - alpha), w_c the largest |weight| that layer applies to channel c:
    alpha 1 equalises the activations only, 0.5 is cross-layer equalisation of activation and weight
    ranges (both become sqrt(range_c * w_c)).
    """
    if net.activation != "max":
        raise ValueError("equalize needs the max form (see max_form)")
    if len(ranges) != len(net.convs) or not 0.0 <= alpha <= 1.0:
        raise ValueError("one range vector per conv, 0 <= alpha <= 1")
    convs = [
        ConvLayer(c.name, c.weight.copy(), c.bias.copy(), c.stride, c.padding, c.groups, c.prelu.copy())
        for c in net.convs
    ]
    ch, h, w = net.feature_shape
    fc = net.fc_weight.reshape(-1, ch, h, w).copy()
    for i, c in enumerate(convs):
        r = np.asarray(ranges[i], dtype=np.float64)
        r = np.maximum(r, 1e-3 * max(float(r.max()), 1e-12))  # dead channels: do not blow them up
        nxt = convs[i + 1] if i + 1 < len(convs) else None
        depthwise = nxt is not None and nxt.groups > 1
        if depthwise:
            s = 1.0 / r
        else:
            wn = np.abs(nxt.weight).max(axis=(0, 2, 3)) if nxt is not None else np.abs(fc).max(axis=(0, 2, 3))
            s = r**-alpha * np.maximum(wn, 1e-12) ** (1.0 - alpha)
        s = s / np.exp(np.mean(np.log(s)))  # geometric mean 1: the overall magnitude stays
        c.weight *= s[:, None, None, None]
        c.bias *= s
        if nxt is None:
            fc /= s[None, :, None, None]
        elif depthwise:
            nxt.weight /= s[:, None, None, None]
        else:
            nxt.weight /= s[None, :, None, None]
    return replace(
        net,
        convs=convs,
        fc_weight=fc.reshape(net.fc_weight.shape),
        fc_bias=net.fc_bias.copy(),
        info={**net.info, "equalize_alpha": alpha},
        activation="max",
    )


def conv_ranges(model: nn.Module, chips: np.ndarray, batch: int = 32) -> list[np.ndarray]:
    """Largest |value| per channel of every conv output but the last (the Gemm), over NCHW `chips`."""
    import torch
    from torch import nn

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)][:-1]
    acc: list[np.ndarray | None] = [None] * len(convs)

    def hook(i: int) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def f(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
            r = out.detach().abs().amax(dim=(0, 2, 3)).double().numpy()
            prev = acc[i]
            acc[i] = r if prev is None else np.maximum(prev, r)

        return f

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(convs)]
    try:
        with torch.no_grad():
            for k in range(0, len(chips), batch):
                model(torch.from_numpy(np.ascontiguousarray(chips[k : k + batch], dtype=np.float32)))
    finally:
        for hd in handles:
            hd.remove()
    return [a if a is not None else np.zeros(0) for a in acc]


def parse_file(path: str | Path) -> SFaceNet:
    import onnx

    return parse_model(onnx.load(str(path)))


PRELU_FORMS = ("max", "add", "sum")


def build_model(net: SFaceNet, prelu_form: str = "max") -> nn.Module:
    """The folded network as an `nn.Sequential`: NCHW float32 (N, 3, 112, 112) raw RGB 0..255 in,
    (N, 128) raw feature out.

    A net in max form (every slope a <= 1) writes each PReLU as `prelu_form`:

    * "max": max(y, a*y), which TFLite gets as MUL + MAXIMUM. XNNPACK has no int8 MAXIMUM, so each one
      runs on the builtin kernels and splits the int8 graph (29 delegated pieces for 27 PReLUs);
    * "add": y + relu((a - 1)*y), the same function for a <= 1 (y < 0: y + (a - 1)*y = a*y; y >= 0:
      (a - 1)*y <= 0, so y + 0). TFLite gets MUL (+ RELU) + ADD, which XNNPACK runs in int8, so the
      whole graph stays in the delegate. For a slope near 0 a negative y comes out as the difference of two
      large int8 values, which loses precision;
    * "sum": a*y + relu((1 - a)*y), also the same function for a <= 1 (y < 0: a*y + 0; y >= 0:
      a*y + (1 - a)*y), as MUL, MUL (+ RELU) and ADD, all in XNNPACK, and without that cancellation:
      for y >= 0 both terms are >= 0 and for y < 0 the second is 0.
    """
    import torch
    from torch import nn

    def f32(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    class MaxSlope(nn.Module):
        """max(y, a*y) per channel: PReLU for slopes a <= 1."""

        def __init__(self, slope: np.ndarray) -> None:
            super().__init__()
            self.register_buffer("slope", f32(slope).reshape(1, -1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.maximum(x, x * self.slope)

    class AddSlope(nn.Module):
        """y + relu((a - 1)*y) per channel: PReLU for slopes a <= 1, without a MAXIMUM."""

        def __init__(self, slope: np.ndarray) -> None:
            super().__init__()
            self.register_buffer("slope_minus_one", f32(slope - 1.0).reshape(1, -1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.relu(x * self.slope_minus_one)

    class SumSlope(nn.Module):
        """a*y + relu((1 - a)*y) per channel: PReLU for slopes a <= 1, without a MAXIMUM or a cancellation."""

        def __init__(self, slope: np.ndarray) -> None:
            super().__init__()
            self.register_buffer("slope", f32(slope).reshape(1, -1, 1, 1))
            self.register_buffer("one_minus_slope", f32(1.0 - slope).reshape(1, -1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.slope + torch.relu(x * self.one_minus_slope)

    if net.activation not in ("prelu", "max"):
        raise ValueError(f"unknown activation {net.activation!r}")
    if prelu_form not in PRELU_FORMS:
        raise ValueError(f"unknown PReLU form {prelu_form!r} (one of {PRELU_FORMS})")
    layers: list[nn.Module] = []
    py, px = net.input_pad
    if py or px:
        layers.append(nn.ConstantPad2d((px, px, py, py), net.input_pad_value))
    for c in net.convs:
        out_c, in_g, kh, kw = c.weight.shape
        conv = nn.Conv2d(in_g * c.groups, out_c, (kh, kw), c.stride, c.padding, groups=c.groups, bias=True)
        act: nn.Module
        if net.activation == "max":
            if np.any(c.prelu > 1.0):
                raise ValueError(f"{c.name}: slope > 1 cannot be written as max(y, a*y); use max_form()")
            act = {"max": MaxSlope, "add": AddSlope, "sum": SumSlope}[prelu_form](c.prelu)
        else:
            act = nn.PReLU(out_c)
            with torch.no_grad():
                act.weight.copy_(f32(c.prelu))
        with torch.no_grad():
            conv.weight.copy_(f32(c.weight))
            conv.bias.copy_(f32(c.bias))
        layers += [conv, act]
    ch, h, w = net.feature_shape
    out = net.fc_weight.shape[0]
    fc = nn.Conv2d(ch, out, (h, w), bias=True)
    with torch.no_grad():
        fc.weight.copy_(f32(net.fc_weight.reshape(out, ch, h, w)))
        fc.bias.copy_(f32(net.fc_bias))
    layers += [fc, nn.Flatten(1)]
    model = nn.Sequential(*layers)
    model.requires_grad_(False)
    return model.eval()
