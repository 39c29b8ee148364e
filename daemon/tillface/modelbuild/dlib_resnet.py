"""dlib's ResNet-128 face embedder as a PyTorch module, built from the records of `dlib_dat.py`.

Build time only (torch is a build extra). The module takes raw RGB chips, NCHW float32 1x3x150x150 in
0..255, and returns the raw 128-d descriptor (not L2-normalised), like dlib's `compute_face_descriptor`.

Folding, so that the exported graph has nothing but convs, relus, pools, pads, adds and one matmul:

* input normalisation x' = (x - mean_c)/256 goes into the first conv (it has no padding, so this is exact);
* every conv bias and the following per-channel affine go into the conv: W*gamma, b*gamma + beta;
* the fc weights are stored [in][out] and are transposed for `nn.Linear`.

Topology is read off the record sequence: a stem (conv, affine, relu, max pool), then residual blocks
(conv, affine, relu, conv, affine, [avg pool], add_prev, relu), then a global average pool and the fc.
A block with an avg pool is a down block: its shortcut is a 2x2/2 average pool of the block input, and the
residual add zero-pads both operands to the larger shape, aligned top-left and low channels first.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .dlib_dat import DlibNet, LayerRecord

INPUT_SIZE = 150


def _out_size(size: int, k: int, s: int, p: int) -> int:
    return 1 + (size + 2 * p - k) // s


def _fold_conv(con: LayerRecord, aff: LayerRecord) -> tuple[np.ndarray, np.ndarray]:
    if con.kind != "con_4" or aff.kind != "affine_" or aff.params.get("mode") != 0:
        raise ValueError(f"expected conv + per-channel affine at records {con.index}, {aff.index}")
    w = con.arrays["weight"].astype(np.float64)
    b = con.arrays["bias"].astype(np.float64)
    g = aff.arrays["gamma"].astype(np.float64)
    beta = aff.arrays["beta"].astype(np.float64)
    return w * g[:, None, None, None], b * g + beta


def _make_conv(w: np.ndarray, b: np.ndarray, rec: LayerRecord) -> nn.Conv2d:
    p = rec.params
    out_c, in_c, kh, kw = w.shape
    conv = nn.Conv2d(
        in_c,
        out_c,
        (kh, kw),
        stride=(p["stride_y"], p["stride_x"]),
        padding=(p["padding_y"], p["padding_x"]),
        bias=True,
    )
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w.astype(np.float32)))
        conv.bias.copy_(torch.from_numpy(b.astype(np.float32)))
    conv.requires_grad_(False)
    return conv


class _Block(nn.Module):
    """One residual block; `down` blocks have a pooled, zero-padded shortcut."""

    def __init__(
        self,
        conv1: nn.Conv2d,
        conv2: nn.Conv2d,
        in_shape: tuple[int, int, int],
        pool: LayerRecord | None,
        shortcut_as_conv: bool,
    ) -> None:
        super().__init__()
        self.conv1 = conv1
        self.conv2 = conv2
        c, h, w = in_shape
        bh = _out_size(h, conv1.kernel_size[0], conv1.stride[0], conv1.padding[0])
        bw = _out_size(w, conv1.kernel_size[1], conv1.stride[1], conv1.padding[1])
        bh = _out_size(bh, conv2.kernel_size[0], conv2.stride[0], conv2.padding[0])
        bw = _out_size(bw, conv2.kernel_size[1], conv2.stride[1], conv2.padding[1])
        branch = (conv2.out_channels, bh, bw)
        self.down = pool is not None
        if pool is None:
            if branch != in_shape:
                raise ValueError(f"identity block changes shape {in_shape} -> {branch}")
            self.out_shape = in_shape
            self.shortcut_conv = None
            return
        pp = pool.params
        kh, kw = pp["nr"], pp["nc"]
        sy, sx = pp["stride_y"], pp["stride_x"]
        py, px = pp["padding_y"], pp["padding_x"]
        if py or px:
            raise ValueError("padded shortcut pools are not supported")
        self.pool_args = ((kh, kw), (sy, sx))
        short = (c, _out_size(h, kh, sy, 0), _out_size(w, kw, sx, 0))
        out = tuple(max(a, b) for a, b in zip(branch, short, strict=True))
        self.out_shape = out
        # Right/bottom zero padding (F.pad order: W left, W right, H top, H bottom, C front, C back).
        self.branch_pad = (0, out[2] - branch[2], 0, out[1] - branch[1], 0, out[0] - branch[0])
        self.short_pad: tuple[int, ...] = (0, out[2] - short[2], 0, out[1] - short[1], 0, out[0] - short[0])
        self.shortcut_conv = None
        if shortcut_as_conv:
            # avg pool kh x kw / s + zero channel pad == a fixed conv with 1/(kh*kw) on the diagonal.
            conv = nn.Conv2d(c, out[0], (kh, kw), stride=(sy, sx), padding=0, bias=False)
            k = torch.zeros(out[0], c, kh, kw)
            for i in range(c):
                k[i, i] = 1.0 / (kh * kw)
            with torch.no_grad():
                conv.weight.copy_(k)
            conv.requires_grad_(False)
            self.shortcut_conv = conv
            self.short_pad = (0, out[2] - short[2], 0, out[1] - short[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        if not self.down:
            return F.relu(y + x)
        if self.shortcut_conv is not None:
            s = self.shortcut_conv(x)
        else:
            s = F.avg_pool2d(x, self.pool_args[0], self.pool_args[1])
        if any(self.short_pad):
            s = F.pad(s, self.short_pad)
        if any(self.branch_pad):
            y = F.pad(y, self.branch_pad)
        return F.relu(y + s)


class DlibResNet(nn.Module):
    """Input NCHW float32 (N, 3, 150, 150), raw RGB 0..255; output (N, 128) raw descriptor."""

    def __init__(self, net: DlibNet, shortcut_as_conv: bool = True) -> None:
        super().__init__()
        recs = net.layers
        kinds = [r.kind for r in recs]
        if kinds[:4] != ["con_4", "affine_", "relu_", "max_pool_2"]:
            raise ValueError(f"unexpected stem {kinds[:4]}")
        if kinds[-2:] != ["avg_pool_2", "fc_2"]:
            raise ValueError(f"unexpected head {kinds[-2:]}")

        # Stem conv with the input normalisation folded in.
        w, b = _fold_conv(recs[0], recs[1])
        if recs[0].params["padding_y"] or recs[0].params["padding_x"]:
            raise ValueError("the first conv is padded; the mean cannot be folded exactly")
        mean = np.asarray(net.input_means, dtype=np.float64)
        b = b - (w * mean[None, :, None, None]).sum(axis=(1, 2, 3)) / 256.0
        w = w / 256.0
        self.stem = _make_conv(w, b, recs[0])
        mp = recs[3].params
        self.pool_args = (
            (mp["nr"], mp["nc"]),
            (mp["stride_y"], mp["stride_x"]),
            (mp["padding_y"], mp["padding_x"]),
        )

        size = int(net.input["nr"]), int(net.input["nc"])
        h = _out_size(size[0], *(self.stem.kernel_size[0], self.stem.stride[0], self.stem.padding[0]))
        wd = _out_size(size[1], *(self.stem.kernel_size[1], self.stem.stride[1], self.stem.padding[1]))
        h = _out_size(h, mp["nr"], mp["stride_y"], mp["padding_y"])
        wd = _out_size(wd, mp["nc"], mp["stride_x"], mp["padding_x"])
        shape = (self.stem.out_channels, h, wd)

        blocks = []
        i = 4
        end = len(recs) - 2
        while i < end:
            seq = kinds[i : i + 8]
            if seq[:5] != ["con_4", "affine_", "relu_", "con_4", "affine_"]:
                raise ValueError(f"unexpected block at record {i}: {seq}")
            pool = None
            j = i + 5
            if kinds[j] == "avg_pool_2":
                pool = recs[j]
                j += 1
            if kinds[j : j + 2] != ["add_prev_", "relu_"]:
                raise ValueError(f"unexpected block end at record {j}: {kinds[j : j + 2]}")
            c1 = _make_conv(*_fold_conv(recs[i], recs[i + 1]), recs[i])
            c2 = _make_conv(*_fold_conv(recs[i + 3], recs[i + 4]), recs[i + 3])
            block = _Block(c1, c2, shape, pool, shortcut_as_conv)
            shape = block.out_shape
            blocks.append(block)
            i = j + 2
        self.blocks = nn.ModuleList(blocks)
        self.out_shape_before_pool = shape

        gp = recs[-2].params
        if gp["nr"] != 0 or gp["nc"] != 0:
            raise ValueError("expected a global average pool before the fc")
        fc = recs[-1]
        wt = fc.arrays["weight"]  # [in][out]
        if wt.shape[0] != shape[0]:
            raise ValueError(f"fc expects {wt.shape[0]} inputs, net gives {shape[0]}")
        self.fc = nn.Linear(wt.shape[0], wt.shape[1], bias="bias" in fc.arrays)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(wt.T)))
            if "bias" in fc.arrays:
                self.fc.bias.copy_(torch.from_numpy(fc.arrays["bias"]))
        self.fc.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.max_pool2d(x, *self.pool_args)
        for block in self.blocks:
            x = block(x)
        x = x.mean(dim=(2, 3))
        return self.fc(x)


class ChannelsLast(nn.Module):
    """Wraps a NCHW model so that it takes NHWC input (a permute at the start of the graph)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))


def build_model(net: DlibNet, shortcut_as_conv: bool = True) -> DlibResNet:
    return DlibResNet(net, shortcut_as_conv=shortcut_as_conv)
