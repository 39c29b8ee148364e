"""The dlib ResNet .dat reader against the real file from face-recognition-models (numpy only)."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tillface.modelbuild import dlib_dat


def _dat_path() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face-recognition-models is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / "models" / "dlib_face_recognition_resnet_model_v1.dat"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def net() -> dlib_dat.DlibNet:
    return dlib_dat.parse_file(_dat_path())


def test_consumes_whole_file(net: dlib_dat.DlibNet) -> None:
    assert net.file_size == _dat_path().stat().st_size == 22_466_066


def test_trailing_or_missing_bytes_are_rejected() -> None:
    data = _dat_path().read_bytes()
    with pytest.raises(dlib_dat.DatFormatError):
        dlib_dat.parse_bytes(data + b"\x00")
    with pytest.raises(dlib_dat.DatFormatError):
        dlib_dat.parse_bytes(data[:-1])


def test_structure(net: dlib_dat.DlibNet) -> None:
    assert len(net.layers) == 108
    assert [layer.index for layer in net.layers] == list(range(108))
    assert Counter(net.wrapper_versions) == {2: 107, 1: 22, 3: 1}
    kinds = Counter(layer.kind for layer in net.layers)
    assert kinds == {
        "con_4": 29,
        "affine_": 29,
        "relu_": 29,
        "add_prev_": 14,
        "avg_pool_2": 5,
        "max_pool_2": 1,
        "fc_2": 1,
    }
    assert [layer.kind for layer in net.layers[:4]] == ["con_4", "affine_", "relu_", "max_pool_2"]
    first = net.layers[0]
    assert first.arrays["weight"].shape == (32, 3, 7, 7)
    assert (first.params["stride_y"], first.params["padding_y"]) == (2, 0)


def test_parameter_count(net: dlib_dat.DlibNet) -> None:
    assert net.n_parameters == 5_614_592
    for layer in net.layers:
        for arr in layer.arrays.values():
            assert arr.dtype == np.float32
            assert np.all(np.isfinite(arr))


def test_input_and_loss(net: dlib_dat.DlibNet) -> None:
    assert net.input["nr"] == net.input["nc"] == 150
    np.testing.assert_allclose(net.input_means, (122.782, 117.001, 104.298), atol=1e-4)
    assert net.loss["kind"] == "loss_metric_2"
    assert net.loss["margin"] == pytest.approx(0.04)
    assert net.loss["dist_thresh"] == pytest.approx(0.6)


def test_fc(net: dlib_dat.DlibNet) -> None:
    fc = net.layers[-1]
    assert fc.kind == "fc_2"
    assert fc.params["num_inputs"] == 256 and fc.params["num_outputs"] == 128
    assert fc.params["bias_mode"] == 1  # no bias
    assert fc.arrays["weight"].shape == (256, 128)  # stored [in][out]
    assert "bias" not in fc.arrays
    pool = net.layers[-2]
    assert pool.kind == "avg_pool_2" and pool.params["nr"] == pool.params["nc"] == 0


def test_integer_and_float_encoding() -> None:
    r = dlib_dat._Reader(bytes([0x01, 0x02, 0x01, 0x96, 0x02, 0x80, 0x12, 0x81, 0x1C, 0x01, 0x00]))
    assert [r.integer() for _ in range(5)] == [2, 150, 4736, -28, 0]
    r = dlib_dat._Reader(bytes([0x01, 0x10, 0x81, 0x04]))
    assert r.real() == 1.0
