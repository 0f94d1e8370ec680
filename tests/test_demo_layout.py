"""The demo data follows the CellMap layout and OME-NGFF 0.4 contract of DESIGN.md."""

from __future__ import annotations

import json

import numpy as np
import zarr

from cellmap_train.data.demo import CLASSES, DemoSpec


def ngff_levels(group_path):
    attrs = json.loads((group_path / ".zattrs").read_text())
    multiscale = attrs["multiscales"][0]
    assert multiscale["version"] == "0.4"
    assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    assert all(a["unit"] == "nanometer" for a in multiscale["axes"])
    levels = {}
    for entry in multiscale["datasets"]:
        transforms = {t["type"]: t[t["type"]] for t in entry["coordinateTransformations"]}
        levels[entry["path"]] = (transforms["scale"], transforms["translation"])
    return levels


def test_layout_and_metadata(demo_root):
    datasets = sorted(p.name for p in demo_root.iterdir() if p.is_dir())
    assert len(datasets) >= 2
    crops, missing = 0, 0
    for ds in datasets:
        container = demo_root / ds / f"{ds}.zarr"
        assert json.loads((container / ".zgroup").read_text())["zarr_format"] == 2
        raw = container / "recon-1/em/fibsem-uint8"
        levels = ngff_levels(raw)
        assert set(levels) == {"s0", "s1"}
        (s0_scale, s0_t), (s1_scale, s1_t) = levels["s0"], levels["s1"]
        assert s1_scale == [2 * s for s in s0_scale]
        # a coarser voxel's centre is half a fine voxel further in
        assert np.allclose(np.array(s1_t) - s0_t, np.array(s0_scale) / 2)
        assert zarr.open_array(str(raw / "s0"), mode="r").dtype == np.uint8
        for crop in sorted((container / "recon-1/labels/groundtruth").glob("crop*")):
            crops += 1
            present = {p.name for p in crop.iterdir() if p.is_dir()}
            assert present <= set(CLASSES)
            missing += len(set(CLASSES) - present)
            for cls in present:
                assert set(ngff_levels(crop / cls)) == {"s0", "s1"}
                values = np.unique(zarr.open_array(str(crop / cls / "s0"), mode="r")[:])
                assert set(values.tolist()) <= {0, 1}
    assert crops >= 4 and missing >= 1  # some crop leaves a class unannotated (unknown)


def test_raw_carries_the_label_shapes(demo_root):
    """Each class has its own intensity in the raw, so a network can learn it."""
    ds = "jrc_demo-1"
    container = zarr.open_group(str(demo_root / ds / f"{ds}.zarr"), mode="r")
    raw = container["recon-1/em/fibsem-uint8/s0"][:]
    crop = container["recon-1/labels/groundtruth/crop1"]
    attrs = crop["nuc"].attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    raw_t = container["recon-1/em/fibsem-uint8"].attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][1]["translation"]
    offset = ((np.array(attrs[1]["translation"]) - raw_t) / attrs[0]["scale"]).astype(int)
    nuc = crop["nuc/s0"][:].astype(bool)
    window = raw[tuple(slice(o, o + n) for o, n in zip(offset, nuc.shape))]
    assert window[nuc].mean() < window[~nuc].mean() - 20


def test_generation_is_deterministic(tmp_path):
    from cellmap_train.data.demo import make_demo_data

    spec = DemoSpec(n_datasets=1, raw_shape=(16, 48, 48), crop_shape=(8, 24, 24), crops_per_dataset=2)
    a, b = make_demo_data(tmp_path / "a", spec), make_demo_data(tmp_path / "b", spec)
    path = "jrc_demo-1/jrc_demo-1.zarr/recon-1/em/fibsem-uint8/s0"
    assert np.array_equal(zarr.open_array(str(a / path), mode="r")[:], zarr.open_array(str(b / path), mode="r")[:])
