"""The input-pad rewrite of the SFace graph (modelbuild.tflite_rewrite) gives bit-identical outputs with one
XNNPACK piece fewer, and refuses a graph it does not know."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from tillface.modelbuild import tflite_rewrite
from tillface.vision.runtime import TfliteModel, delegate_use, load_interpreter


def _chips(faces_dir, n=6):
    with open(faces_dir / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["source"] == "orl_att_faces"][:n]
    out = []
    for r in rows:
        with Image.open(faces_dir / r["path"]) as im:
            out.append(np.asarray(im.convert("RGB").resize((112, 112)), dtype=np.float32))
    rng = np.random.default_rng(3)
    out.append(rng.integers(0, 256, (112, 112, 3)).astype(np.float32))
    out.append(np.zeros((112, 112, 3), np.float32))
    out.append(np.full((112, 112, 3), 255.0, np.float32))
    return out


def _partitions(path):
    it = load_interpreter(path, 1)
    it.allocate_tensors()
    return delegate_use(it._get_ops_details())


def test_pad_rewrite_is_bit_identical_and_delegated(faces_dir, manifest, tmp_path):
    src = manifest.path("sface-2021dec-int8")
    dest = tmp_path / "sface_pad.tflite"
    dest.write_bytes(tflite_rewrite.pad_input_in_delegate(src.read_bytes()))
    before, after = TfliteModel(src, 1), TfliteModel(dest, 1)
    for chip in _chips(faces_dir):
        a, b = before.run(chip[None])[0], after.run(chip[None])[0]
        assert np.array_equal(a, b)
    nodes, delegated, parts = _partitions(src)
    nodes2, delegated2, parts2 = _partitions(dest)
    # One node more (the float ADD), two more in XNNPACK (the ADD and the PAD), one piece fewer.
    assert (nodes2, delegated2, parts2) == (nodes + 1, delegated + 2, parts - 1)


def test_pad_rewrite_refuses_another_graph(manifest):
    with pytest.raises(tflite_rewrite.RewriteError, match="QUANTIZE, PADV2, CONV_2D"):
        tflite_rewrite.pad_input_in_delegate(manifest.path("dlib-resnet-v1-int8").read_bytes())
