"""Targets from a manifest predicted into a real zarr store: each array has exactly the row's
shape, voxel size and translation (4 nm, anisotropic), OME-NGFF 0.4 metadata, and values that are
the model's resampled onto the row's grid; `pack` checks it against the manifest and zips it."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import zarr

from cellmap_train.errors import DataError
from cellmap_train.predict import pack
from cellmap_train.predict.predictor import ModelSpec, PredictOptions, Predictor
from cellmap_train.predict.run import predict_targets
from cellmap_train.predict.targets import read_manifest

from predict_helpers import write_manifest

ROWS = [  # 4 nm on an 8 nm raw, every other voxel on a raw voxel's centre
    ("901", "jrc_demo-1", "nuc", [4.0, 4.0, 4.0], [200.0, 400.0, 504.0], [20, 40, 36]),
    ("901", "jrc_demo-1", "mito", [4.0, 4.0, 4.0], [200.0, 400.0, 504.0], [20, 40, 36]),
    # anisotropic grids, one on the isotropic raw and one on the anisotropic one
    ("902", "jrc_demo-1", "er", [5.24, 4.0, 4.0], [100.3, 300.1, 700.7], [17, 30, 26]),
    ("903", "jrc_demo-2", "nuc", [13.92, 16.0, 16.0], [120.0, 200.0, 300.0], [8, 20, 21]),
    ("903", "jrc_demo-2", "cell", [13.92, 16.0, 16.0], [120.0, 200.0, 300.0], [8, 20, 21]),  # not a model class
]


def raw_as_probability(raw: np.ndarray) -> np.ndarray:
    """A stand-in model whose every class's probability is the raw's intensity: its output on
    any grid is the raw resampled there, which a test can compute."""
    return np.repeat(raw[:, None].astype(np.float32) / 255, 3, axis=1)


@pytest.fixture
def predicted(demo_root, tmp_path):
    manifest = write_manifest(tmp_path / "test_crop_manifest.csv", ROWS)
    targets = read_manifest(manifest, str(demo_root), ["nuc", "er", "mito"])
    spec = ModelSpec(["nuc", "er", "mito"], (8.0, 8.0, 8.0), (1, 32, 32), (1, 32, 32))
    predictor = Predictor(spec, raw_as_probability, PredictOptions(batch_size=5, chunks=(8, 16, 16)))
    out = tmp_path / "predictions.zarr"
    summary = predict_targets(targets, predictor, out, {"checkpoint": "test"}, probabilities=tmp_path / "soft.zarr",
                              progress_bar=False)
    return manifest, out, tmp_path / "soft.zarr", summary


def test_arrays_have_the_manifests_grid(predicted):
    manifest, out, _, summary = predicted
    assert summary.written == 4  # `cell` is not a class of the model: not predicted
    root = zarr.open_group(str(out), mode="r", zarr_format=2)
    for crop, _, label, size, translation, shape in ROWS[:4]:
        array = root[f"crop{crop}"][label]
        assert array.shape == tuple(shape) and array.dtype == np.uint8
        assert array.attrs["voxel_size"] == size and array.attrs["translation"] == translation
        assert array.attrs["shape"] == shape
        entries = {e["name"]: e for e in json.loads((out / f"crop{crop}" / ".zattrs").read_text())["multiscales"]}
        entry = entries[label]
        assert entry["version"] == "0.4" and [a["name"] for a in entry["axes"]] == ["z", "y", "x"]
        assert entry["datasets"] == [{"path": label, "coordinateTransformations": [
            {"type": "scale", "scale": size}, {"type": "translation", "translation": translation}]}]
    assert not (out.parent / "predictions.zarr.partial").exists()


def test_values_are_the_model_resampled_onto_the_grid(predicted, demo_root):
    _, out, soft, _ = predicted
    raw = zarr.open_array(str(demo_root / "jrc_demo-1/jrc_demo-1.zarr/recon-1/em/fibsem-uint8/s0"), mode="r")[:]
    probabilities = zarr.open_group(str(soft), mode="r")["crop901"]["nuc"][:].astype(np.float32)
    # output voxel 2k sits on raw voxel (translation - raw origin) / 8 + k
    first = (np.array([200.0, 400.0, 504.0]) - np.array([40.0, 80.0, 120.0])) / 8
    z, y, x = (int(v) for v in first)
    on_raw = raw[z:z + 10, y:y + 20, x:x + 18].astype(np.float32) / 255
    np.testing.assert_allclose(probabilities[::2, ::2, ::2], on_raw, atol=1e-3)
    between = (on_raw[:, :, :-1] + on_raw[:, :, 1:]) / 2  # halfway between two raw voxels along x: their mean
    np.testing.assert_allclose(probabilities[::2, ::2, 1:-1:2], between, atol=1e-3)
    labels = zarr.open_group(str(out), mode="r")["crop901"]["nuc"][:]
    clear = np.abs(probabilities - 0.5) > 1e-3  # away from the threshold, float16 rounding cannot flip a voxel
    np.testing.assert_array_equal(labels[clear], (probabilities[clear] > 0.5).astype(np.uint8))
    assert clear.mean() > 0.9


def test_pack_zips_a_store_that_opens_as_zarr(predicted, tmp_path, capsys):
    manifest, out, _, _ = predicted
    assert pack.main([str(out), "--manifest", str(manifest)]) == 0
    said = capsys.readouterr().out
    assert "1 manifest labels have no prediction" in said and "crop903/cell" in said
    archive = tmp_path / "predictions.zip"
    with zipfile.ZipFile(archive) as handle:
        assert handle.testzip() is None
    root = zarr.open_group(zarr.storage.ZipStore(str(archive), mode="r"), mode="r", path="predictions.zarr")
    listed = {(crop, label) for crop, group in root.groups() for label, _ in group.arrays()}
    assert listed == {(f"crop{r[0]}", r[2]) for r in ROWS[:4]}
    assert root["crop902"]["er"].shape == (17, 30, 26)


def test_pack_refuses_a_store_that_does_not_match_the_manifest(predicted, tmp_path, capsys):
    manifest, out, _, _ = predicted
    other = write_manifest(tmp_path / "other.csv", [(*r[:5], [20, 40, 35]) if r[0] == "901" else r for r in ROWS])
    assert pack.main([str(out), "--manifest", str(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "crop901" in err and "shape [20, 40, 36]" in err
    assert not (tmp_path / "predictions.zip").exists()


def test_a_crop_outside_the_raw_is_one_error(demo_root, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [("950", "jrc_demo-1", "nuc", [8, 8, 8], [40.0, 80.0, 5000.0], [8, 8, 8])])
    targets = read_manifest(manifest, str(demo_root), ["nuc"])
    predictor = Predictor(ModelSpec(["nuc"], (8.0, 8.0, 8.0), (1, 32, 32), (1, 32, 32)), raw_as_probability, PredictOptions())
    with pytest.raises(DataError, match=r"m.csv:2: crop crop950 at .* lies outside the raw volume"):
        predict_targets(targets, predictor, tmp_path / "p.zarr", {"checkpoint": "x"}, progress_bar=False)
