"""Exact rewrites of a quantized TFLite graph, so that XNNPACK takes ops it would otherwise leave out.

Build time only (numpy, flatbuffers and the TFLite schema that ships with ai-edge-litert).

`pad_input_in_delegate`: the SFace graph starts with QUANTIZE (float 0..255 to int8, scale 1, zero point
-128) and a PADV2 whose constant is the raw mean (127.5, stored as q = 0, i.e. 128). XNNPACK has no
PADV2, so the first QUANTIZE became a delegate piece of its own and the PADV2 ran on the builtin kernel.
The rewrite computes the same integers with ops XNNPACK has:

    float x -> ADD(-128) -> QUANTIZE(scale 1, zero point 0) -> PAD (pads with q = 0) -> CONV_2D

The quantized values are the same (round(x - 128) == round(x) - 128 for whole pixel values, and the
pad is q = 0 in both), only their zero point moves from -128 to 0; the conv's int32 bias takes the
difference, b' = b + 128 * sum(w_q) per output channel, so its accumulators are the same integers.
The output is bit-identical for integer pixel inputs (the build checks it on its chips).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class RewriteError(ValueError):
    """The graph does not have the shape the rewrite expects."""


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated as fb

    return fb


def load(buf: bytes) -> Any:
    """The model as the schema's object tree, with every buffer held inline (the quantizer stores large
    buffers after the flatbuffer, by offset)."""
    fb = _schema()
    model = fb.ModelT.InitFromPackedBuf(bytearray(buf), 0)
    for b in model.buffers:
        if b.offset > 1:
            b.data = np.frombuffer(buf[b.offset : b.offset + b.size], dtype=np.uint8).copy()
            b.offset = 0
            b.size = 0
    return model


def dump(model: Any) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def builtin(model: Any, op: Any) -> int:
    c = model.operatorCodes[op.opcodeIndex]
    return int(max(c.builtinCode, c.deprecatedBuiltinCode))


def _opcode(model: Any, code: int) -> int:
    fb = _schema()
    for i, c in enumerate(model.operatorCodes):
        if max(c.builtinCode, c.deprecatedBuiltinCode) == code:
            return i
    c = fb.OperatorCodeT()
    c.builtinCode = code
    c.deprecatedBuiltinCode = min(code, 127)
    c.version = 1
    model.operatorCodes.append(c)
    return len(model.operatorCodes) - 1


def _quant(t: Any) -> tuple[list[float], list[int]]:
    q = t.quantization
    if q is None or q.scale is None:
        return [], []
    return [float(v) for v in q.scale], [int(v) for v in q.zeroPoint]


def _array(model: Any, t: Any, dtype: type) -> np.ndarray:
    data = model.buffers[t.buffer].data
    if data is None:
        raise RewriteError(f"tensor {t.name!r} has no constant data")
    return np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype=dtype).reshape(t.shape)


def pad_input_in_delegate(buf: bytes) -> bytes:
    """QUANTIZE(zp -128) + PADV2(q 0) + CONV_2D at the input rewritten as ADD(-128) + QUANTIZE(zp 0) +
    PAD + CONV_2D with its bias corrected (see the module docstring). Raises RewriteError if the graph
    does not start that way."""
    fb = _schema()
    op_ = fb.BuiltinOperator
    model = load(buf)
    g = model.subgraphs[0]
    ops = g.operators
    if len(g.inputs) != 1 or len(ops) < 3:
        raise RewriteError("expected one input and at least three ops")
    quant, padv2, conv = ops[0], ops[1], ops[2]
    kinds = [builtin(model, o) for o in (quant, padv2, conv)]
    if kinds != [op_.QUANTIZE, op_.PADV2, op_.CONV_2D]:
        raise RewriteError(f"the graph starts with builtin ops {kinds}, not QUANTIZE, PADV2, CONV_2D")
    x = int(g.inputs[0])
    q_t, pad_out = g.tensors[int(quant.outputs[0])], g.tensors[int(padv2.outputs[0])]
    if int(quant.inputs[0]) != x or int(padv2.inputs[0]) != int(quant.outputs[0]):
        raise RewriteError("QUANTIZE does not read the input or PADV2 does not read the QUANTIZE")
    if int(conv.inputs[0]) != int(padv2.outputs[0]):
        raise RewriteError("the conv does not read the PADV2")
    users = [o for o in ops if int(padv2.outputs[0]) in [int(i) for i in o.inputs]]
    users += [o for o in ops if int(quant.outputs[0]) in [int(i) for i in o.inputs]]
    if len(users) != 2:
        raise RewriteError("the quantized input or the padded tensor has more than one reader")
    if g.tensors[x].type != fb.TensorType.FLOAT32:
        raise RewriteError("the model input is not float32")
    for t in (q_t, pad_out):
        scales, zps = _quant(t)
        if scales != [1.0] or zps != [-128] or t.type != fb.TensorType.INT8:
            raise RewriteError(f"{t.name!r}: expected int8 scale 1, zero point -128, got {scales} {zps}")
    value = _array(model, g.tensors[int(padv2.inputs[2])], np.int8).reshape(-1)
    if value.size != 1 or int(value[0]) != 0:
        raise RewriteError(f"PADV2 constant is {value.tolist()}, expected q = 0 (the value 128)")
    w_t, b_t = g.tensors[int(conv.inputs[1])], g.tensors[int(conv.inputs[2])]
    if w_t.type != fb.TensorType.INT8 or b_t.type != fb.TensorType.INT32:
        raise RewriteError("the conv's weights are not int8 or its bias is not int32")
    w_scales, w_zps = _quant(w_t)
    if any(w_zps):
        raise RewriteError("the conv's weights have a nonzero zero point")
    w = _array(model, w_t, np.int8).astype(np.int64)  # OHWI
    b = _array(model, b_t, np.int32).astype(np.int64)
    new_b = b + 128 * w.reshape(w.shape[0], -1).sum(axis=1)
    if np.abs(new_b).max() >= 2**31:
        raise RewriteError("the corrected bias does not fit int32")
    b_scales, _ = _quant(b_t)
    if len(b_scales) != len(w_scales) or not np.allclose(b_scales, w_scales, rtol=1e-6, atol=0):
        raise RewriteError("the bias scale is not input scale (1) times weight scale")

    # The corrected bias gets its own buffer (a shared buffer would change other tensors too).
    bias_buf = fb.BufferT()
    bias_buf.data = np.frombuffer(new_b.astype("<i4").tobytes(), dtype=np.uint8).copy()
    model.buffers.append(bias_buf)
    b_t.buffer = len(model.buffers) - 1

    # float -128, a new constant tensor, and the float ADD that applies it.
    shift_buf = fb.BufferT()
    shift_buf.data = np.frombuffer(np.array([-128.0], dtype="<f4").tobytes(), dtype=np.uint8).copy()
    model.buffers.append(shift_buf)
    shift = fb.TensorT()
    shift.shape = np.array([1], dtype=np.int32)
    shift.type = fb.TensorType.FLOAT32
    shift.buffer = len(model.buffers) - 1
    shift.name = "tillface_input_minus_128_constant"
    g.tensors.append(shift)
    shifted = fb.TensorT()
    shifted.shape = np.array(g.tensors[x].shape, dtype=np.int32)
    shifted.type = fb.TensorType.FLOAT32
    empty = fb.BufferT()
    model.buffers.append(empty)
    shifted.buffer = len(model.buffers) - 1
    shifted.name = "tillface_input_minus_128"
    g.tensors.append(shifted)
    add = fb.OperatorT()
    add.opcodeIndex = _opcode(model, op_.ADD)
    add.inputs = np.array([x, len(g.tensors) - 2], dtype=np.int32)
    add.outputs = np.array([len(g.tensors) - 1], dtype=np.int32)
    add.builtinOptionsType = fb.BuiltinOptions.AddOptions
    add.builtinOptions = fb.AddOptionsT()

    quant.inputs = np.array([len(g.tensors) - 1], dtype=np.int32)
    for t in (q_t, pad_out):
        t.quantization.zeroPoint = np.array([0], dtype=np.int64)
    padv2.opcodeIndex = _opcode(model, op_.PAD)
    padv2.inputs = np.array([int(padv2.inputs[0]), int(padv2.inputs[1])], dtype=np.int32)
    padv2.builtinOptionsType = fb.BuiltinOptions.PadOptions
    padv2.builtinOptions = fb.PadOptionsT()
    g.operators = [add, *ops]
    return dump(model)
