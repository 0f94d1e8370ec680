"""Formats seen in the real bucket and in current OME-Zarr, and bad or odd input, each written to
disk here and read for real: compressors and chunk keys, uint16 raw, zarr v3 with OME-NGFF 0.5,
label groups that are not classes, the `cellmap.annotation` encodings (instance ids included);
requests finer than every level, a missing raw group, contradicting metadata, a crop outside its
raw volume."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from cellmap_train.data import CellMapData
from cellmap_train.data.dataset import ArrayInfo, Crop
from cellmap_train.data.datasplit import CropEntry, read_datasplit, write_datasplit
from cellmap_train.data.demo import multiscales_attrs
from cellmap_train.data.transforms import BinarizeLabels, NormalizeRaw, SampleTransforms
from cellmap_train.errors import ConfigError, DataError
from cellmap_train.data.label_transfer import UNKNOWN

RAW = "recon-1/em/fibsem-uint8"
GT = "recon-1/labels/groundtruth"
CENTRE = np.array([64.0, 64.0, 64.0])  # a 4-voxel box at 8 nm: world [48, 80), raw voxels 6..9, label voxels 2..5
RAW_BOX, LABEL_BOX = (slice(6, 10),) * 3, (slice(2, 6),) * 3
LABEL_T = 36.0  # 8 nm label voxels with edges from 32 nm: label voxel i is raw voxel i + 4


def codec(name: str, zarr_format: int):
    if zarr_format == 3:
        return {"zstd": ZstdCodec(level=3), "gzip": GzipCodec(level=5),
                "blosc": BloscCodec(cname="zstd", shuffle="shuffle")}[name]
    return {"zstd": numcodecs.Zstd(level=3), "gzip": numcodecs.GZip(level=5),
            "blosc": numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE)}[name]


def write_levels(path: Path, levels, zarr_format=2, compressor="zstd", separator=".", s0_attrs=None, group_attrs=None,
                 shards=None) -> Path:
    """A multiscale group of levels s0, s1, ... = (data, scale nm, translation nm); zarr v3 groups
    carry OME-NGFF 0.5 metadata (under `ome`), v2 groups 0.4."""
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    meta = multiscales_attrs(path.name, [[float(s)] * 3 for _, s, _ in levels], [[float(t)] * 3 for _, _, t in levels])
    if zarr_format == 3:  # 0.5: the version once, under `ome`
        multiscale = {key: value for key, value in meta["multiscales"][0].items() if key != "version"}
        meta = {"ome": {"version": "0.5", "multiscales": [multiscale]}}
    group.attrs.update({**meta, **(group_attrs or {})})
    keys = {"chunk_key_encoding": {"name": "v2", "separator": separator}} if zarr_format == 2 else {}
    for i, (data, _, _) in enumerate(levels):
        array = group.create_array(f"s{i}", shape=data.shape, dtype=data.dtype, chunks=tuple(min(4, n) for n in data.shape),
                                   shards=shards, compressors=[codec(compressor, zarr_format)], **keys)
        array[...] = data
        if i == 0 and s0_attrs:
            array.attrs.update(s0_attrs)
    return path


def write_dataset(root: Path, name: str, raw: np.ndarray, crops: dict, raw_levels=None, **fmt) -> Path:
    """<root>/<name>/<name>.zarr with raw at 8 nm (or `raw_levels`) and `crops` = {crop: {class:
    labels at 8 nm from LABEL_T, or (levels, s0 attrs, group attrs)}}."""
    zarr_root = root / name / f"{name}.zarr"
    write_levels(zarr_root / RAW, raw_levels or [(raw, 8, 4.0)], **fmt)
    for crop, classes in crops.items():
        for cls, spec in classes.items():
            levels, s0_attrs, group_attrs = spec if isinstance(spec, tuple) else ([(spec, 8, LABEL_T)], None, None)
            write_levels(zarr_root / GT / crop / cls, levels, s0_attrs=s0_attrs, group_attrs=group_attrs, **fmt)
    return zarr_root


def entry(zarr_root: Path, crop="crop1", classes=("nuc",), usage="train") -> CropEntry:
    return CropEntry(usage, str(zarr_root), RAW, str(zarr_root), f"{GT}/{crop}", tuple(classes))


def make_crop(e: CropEntry, classes=("nuc",), scale=8.0, shape=(4, 4, 4)) -> Crop:
    info = ArrayInfo(tuple(shape), (scale,) * 3)
    return Crop(e, list(classes), info, info, None)


def volumes(seed=0, dtype=np.uint8, high=256):
    rng = np.random.default_rng(seed)
    return rng.integers(0, high, (16, 16, 16)).astype(dtype), rng.integers(0, 2, (8, 8, 8)).astype(np.uint8)


def annotation(kind: str, **encoding) -> dict:
    return {"cellmap": {"annotation": {"annotation_type": {"type": kind, "encoding": encoding}}}}


# ---- formats


@pytest.mark.parametrize("separator", [".", "/"])
@pytest.mark.parametrize("compressor", ["zstd", "gzip", "blosc"])
def test_compressed_v2_arrays_read_exactly_through_the_chunk_reader(tmp_path, compressor, separator):
    raw, labels = volumes()
    root = write_dataset(tmp_path, "ds", raw, {"crop1": {"nuc": labels}}, compressor=compressor, separator=separator)
    assert json.loads((root / RAW / "s0/.zarray").read_text())["compressor"]["id"] == compressor
    assert (root / RAW / "s0/1/1/1").is_file() == (separator == "/")  # `/` keys nest folders
    crop = make_crop(entry(root))
    got_raw, got_labels = crop.read(CENTRE)
    np.testing.assert_array_equal(got_raw, raw[RAW_BOX])
    np.testing.assert_array_equal(got_labels[0], labels[LABEL_BOX])
    assert all(level.reader is not None for level in [crop.raw_level, *crop.known])  # the fast path, not zarr's


def test_uint16_raw_is_normalised_by_its_dtypes_range_unless_told_otherwise(tmp_path):
    raw, labels = volumes(dtype=np.uint16, high=65536)
    raw[6, 6, 6], raw[9, 9, 9] = 65535, 0
    root = write_dataset(tmp_path, "ds", raw, {"crop1": {"nuc": labels}})
    crop, rng = make_crop(entry(root)), np.random.default_rng(0)
    assert crop.read(CENTRE)[0].dtype == np.uint16
    unit, _ = crop.sample(CENTRE, SampleTransforms(None, NormalizeRaw("unit")), rng)
    np.testing.assert_allclose(unit, raw[RAW_BOX] / 65535, rtol=1e-6)
    assert unit.min() == 0 and unit.max() == 1  # by 65535, not by uint8's 255
    told, _ = crop.sample(CENTRE, SampleTransforms(None, NormalizeRaw("meanstd", mean=32768, std=16384)), rng)
    np.testing.assert_allclose(told, (raw[RAW_BOX].astype(np.float64) - 32768) / 16384, rtol=1e-5)
    fine = make_crop(entry(root), scale=4.0, shape=(8, 8, 8))  # upsampled: interpolated, then back to uint16
    assert fine.read(CENTRE)[0].dtype == np.uint16
    upsampled, _ = fine.sample(CENTRE, SampleTransforms(None, NormalizeRaw()), rng)
    assert 0 <= upsampled.min() and 0.5 < upsampled.max() <= 1


@pytest.mark.parametrize("compressor", ["zstd", "gzip", "blosc"])
def test_zarr_v3_with_ome_ngff_05_metadata_reads_raw_and_labels_through_the_chunk_reader(tmp_path, compressor):
    raw, labels = volumes(seed=1)
    root = write_dataset(tmp_path, "ds", raw, {"crop1": {"nuc": labels}}, zarr_format=3, compressor=compressor)
    attrs = json.loads((root / RAW / "zarr.json").read_text())["attributes"]
    assert attrs["ome"]["version"] == "0.5" and "multiscales" not in attrs
    assert (root / RAW / "s0/c/1/1/1").is_file()  # the default chunk key encoding
    (root / RAW / "s0/c/2/2/2").unlink()  # a chunk never written: the fill value, as zarr reads it
    crop = make_crop(entry(root))
    got_raw, got_labels = crop.read(CENTRE)
    expected = raw.copy()
    expected[8:12, 8:12, 8:12] = 0
    np.testing.assert_array_equal(got_raw, expected[RAW_BOX])
    np.testing.assert_array_equal(got_raw, zarr.open_array(str(root / RAW / "s0"), mode="r")[RAW_BOX])
    np.testing.assert_array_equal(got_labels[0], labels[LABEL_BOX])
    assert all(level.reader is not None for level in [crop.raw_level, *crop.known])
    in_a_worker = pickle.loads(pickle.dumps(crop))  # what a spawned DataLoader worker gets: the open levels
    assert in_a_worker._raw is not None
    np.testing.assert_array_equal(in_a_worker.read(CENTRE)[0], got_raw)


def test_a_zarr_v3_chunk_of_the_wrong_size_is_refused_naming_it(tmp_path):
    raw, labels = volumes()
    root = write_dataset(tmp_path, "ds", raw, {"crop1": {"nuc": labels}}, zarr_format=3)
    (root / RAW / "s0/c/1/1/1").write_bytes(numcodecs.Zstd().encode(bytes(32)))  # a well-formed frame, half a chunk
    with pytest.raises(DataError) as caught:
        make_crop(entry(root)).read(CENTRE)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{root / RAW}/s0/c/1/1/1: corrupt or unreadable chunk")
    assert "decodes to 32 bytes, expected 64 bytes (uint8 4x4x4)" in message


def test_zarr_v3_arrays_outside_the_common_case_read_through_zarr(tmp_path):
    raw, labels = volumes(seed=2)
    root = write_dataset(tmp_path, "ds", raw, {"crop1": {"nuc": labels}}, zarr_format=3, shards=(8, 8, 8))
    crop = make_crop(entry(root))
    got_raw, got_labels = crop.read(CENTRE)
    np.testing.assert_array_equal(got_raw, raw[RAW_BOX])
    np.testing.assert_array_equal(got_labels[0], labels[LABEL_BOX])
    assert crop.raw_level.reader is None  # sharded: zarr's own path


# ---- label groups and encodings


def make_data(datasplit: Path, search_path: Path | None = None, classes=("nuc",), scale=8, **kwargs) -> CellMapData:
    return CellMapData(search_path=str(search_path or datasplit.parent), datasplit_path=datasplit, classes=list(classes),
                       input_array_info={"shape": [1, 4, 4], "scale": [scale] * 3}, batch_size=2,
                       dataloader_kwargs={"num_workers": 0}, open_threads=2, **kwargs)


def test_label_groups_that_are_not_classes_are_never_taken_for_one(tmp_path, caplog):
    raw, labels = volumes()
    id_map = (labels * 3 + np.roll(labels, 1, axis=0) * 4).astype(np.uint8)  # class ids, as `all` holds them
    crops = {f"crop{i}": {"nuc": labels, "er": 1 - labels, "all": id_map} for i in (1, 2, 3)}
    write_dataset(tmp_path / "data", "ds", raw, crops)
    split = tmp_path / "split.csv"
    with caplog.at_level("WARNING"):
        data = make_data(split, tmp_path / "data", classes=("nuc", "er", "mito"), validation_prob=0.5)
    assert {cls for e in read_datasplit(split) for cls in e.classes} == {"nuc", "er"}
    assert [r.getMessage() for r in caplog.records] == [
        f"class mito: annotated in no training crop of {split}, so nothing is learnt for it; "
        f"label groups in its crops: er, nuc"]  # never `all`, nor a suggestion of it
    assert len(data.train_set.crops) + len(data.val_set.crops) == 3
    with pytest.raises(ConfigError) as caught:
        make_data(tmp_path / "asked.csv", tmp_path / "data", classes=("nuc", "all"))
    assert str(caught.value) == ("classes: all is a crop's class-id map (every class of the crop in one array, keyed by "
                                 "id), not a class; name the classes themselves")
    split.write_text(split.read_text().replace("[nuc,er]", "[nuc,all]", 1))
    with pytest.raises(DataError, match=rf"^{split}:1: all is a crop's class-id map"):
        make_data(split, classes=("nuc", "all"))


def test_instance_ids_and_unknown_codes_read_as_their_attrs_say(tmp_path):
    """Instance arrays: every id is the object (1), 0 absent, and the unknown code their encoding
    names is unknown (an id equal to it too: data/label_encoding.py says why). Semantic arrays: the
    codes their encoding names, wherever the attributes sit (s0 or the group)."""
    raw, _ = volumes()
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 400, (8, 8, 8)).astype(np.uint16)
    ids[rng.random(ids.shape) < 0.3] = 0
    ids[2, 2, 2:6] = [255, 0, 300, 1]
    ids[3, 3, 3] = 255
    odd = rng.choice(np.array([0, 1, 2], np.uint8), (8, 8, 8))  # absent 2, present 1, unknown 0
    instance = annotation("instance_segmentation", absent=0, unknown=255)
    classes = {"nuc": ([(ids, 8, LABEL_T)], instance, None),
               "mito": ([(ids, 8, LABEL_T)], annotation("instance_segmentation", absent=0), None),
               "er": ([(odd, 8, LABEL_T)], None, annotation("semantic_segmentation", absent=2, present=1, unknown=0))}
    root = write_dataset(tmp_path, "ds", raw, {"crop1": classes})
    crop = make_crop(entry(root, classes=("nuc", "mito", "er")), classes=("nuc", "mito", "er"))
    _, labels = crop.read(CENTRE)
    box = ids[LABEL_BOX]
    np.testing.assert_array_equal(labels[0], np.where(box == 255, np.nan, box > 0))
    np.testing.assert_array_equal(labels[1], (box > 0).astype(np.float32))  # no unknown code named: 255 is an id
    np.testing.assert_array_equal(labels[2], np.select([odd[LABEL_BOX] == 0, odd[LABEL_BOX] == 2], [np.nan, 0], 1))
    _, target = crop.sample(CENTRE, SampleTransforms(None, None, BinarizeLabels()), np.random.default_rng(0))
    np.testing.assert_array_equal(target[0], np.where(box == 255, UNKNOWN, box > 0).astype(np.uint8))
    foreground, known = crop.class_volumes()  # what pos_weight and the rare-class draw count
    assert known[0] == np.sum(ids != 255) * 512 and foreground[0] == np.sum((ids > 0) & (ids != 255)) * 512
    assert known[1] == ids.size * 512 and foreground[1] == np.sum(ids > 0) * 512


def test_the_encoding_on_s0_holds_for_a_coarser_level_read(tmp_path):
    raw, _ = volumes()
    fine = np.random.default_rng(4).choice(np.array([0, 1, 255], np.uint8), (8, 8, 8))
    coarse = fine[::2, ::2, ::2]
    levels = [(fine, 8, LABEL_T), (coarse, 16, LABEL_T + 4)]
    root = write_dataset(tmp_path, "ds", raw, {"crop1": {"nuc": (levels, annotation("semantic_segmentation", absent=0,
                                                                                      present=1, unknown=255), None)}})
    crop = make_crop(entry(root), scale=16.0, shape=(2, 2, 2))
    assert crop.known[0].path.endswith("nuc/s1")
    _, labels = crop.read(CENTRE)  # world [48, 80): coarse voxels 1..2
    part = coarse[1:3, 1:3, 1:3]
    np.testing.assert_array_equal(labels[0], np.where(part == 255, np.nan, part))


# ---- bad or odd input, through CellMapData


def two_datasets(root: Path, second_raw_levels=None) -> tuple[Path, Path, Path]:
    """ds-a (crops 1 and 2) and ds-b (crop 3), with a datasplit CSV listing them."""
    raw, labels = volumes()
    a = write_dataset(root, "ds-a", raw, {"crop1": {"nuc": labels}, "crop2": {"nuc": 1 - labels}})
    b = write_dataset(root, "ds-b", raw, {"crop3": {"nuc": labels}}, raw_levels=second_raw_levels)
    split = root / "split.csv"
    write_datasplit([entry(a, "crop1"), entry(a, "crop2", usage="validate"), entry(b, "crop3")], split)
    return a, b, split


def test_a_request_finer_than_every_level_is_upsampled_with_one_warning_per_dataset(tmp_path, caplog):
    a, b, split = two_datasets(tmp_path, second_raw_levels=[(volumes()[0][::2, ::2, ::2], 16, 8.0)])
    with caplog.at_level("WARNING"):
        data = make_data(split, scale=4)
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"{a / RAW}/s0: no level as fine as the requested 4x4x4 nm; samples are upsampled from it (x2x2x2)",
        f"{b / RAW}/s0: no level as fine as the requested 4x4x4 nm; samples are upsampled from it (x4x4x4)"]
    raw, labels = next(iter(data.train_loader()))
    assert tuple(raw.shape) == (2, 1, 4, 4) and tuple(labels.shape) == (2, 1, 4, 4)


def one_line(caught) -> str:
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message
    return message


@pytest.mark.parametrize("damage", ["no raw folder", "no group metadata"])
def test_a_dataset_without_its_raw_group_stops_the_run_in_one_line_naming_it(tmp_path, damage):
    _, b, split = two_datasets(tmp_path)
    if damage == "no raw folder":
        shutil.rmtree(b / RAW)
    else:  # its chunks are there (a partial copy), its group metadata is not
        (b / RAW / ".zgroup").unlink()
        (b / RAW / ".zattrs").unlink()
    with pytest.raises(DataError) as caught:
        make_data(split)
    assert one_line(caught) == f"{b / RAW}: no zarr group there"


def test_making_a_datasplit_skips_a_dataset_without_raw_with_one_warning_naming_it(tmp_path, caplog):
    # as the challenge's own make_datasplit_csv does ("No raw data found ... skipping")
    a, b, split = two_datasets(tmp_path / "data")
    split.unlink()
    shutil.rmtree(b / "recon-1/em")
    with caplog.at_level("WARNING"):
        make_data(tmp_path / "new.csv", tmp_path / "data", validation_prob=0.5)
    assert [r.getMessage() for r in caplog.records] == [f"skipping the crops of {b / RAW}: no raw data there"]
    assert {e.gt_zarr for e in read_datasplit(tmp_path / "new.csv")} == {str(a)}


@pytest.mark.parametrize("array", ["raw", "label"])
def test_a_level_whose_metadata_contradicts_its_shape_stops_the_run_naming_it(tmp_path, array):
    raw, labels = volumes()
    right_raw, wrong_raw = (raw[::2, ::2, ::2], 16, 8.0), (raw, 16, 8.0)  # s1 written at s0's shape
    right_labels, wrong_labels = (labels[::2, ::2, ::2], 16, LABEL_T + 4), (labels, 16, LABEL_T + 4)
    nuc = [(labels, 8, LABEL_T), right_labels if array == "raw" else wrong_labels]
    root = write_dataset(tmp_path, "ds", raw, {"crop1": {"nuc": (nuc, None, None)}, "crop2": {"nuc": labels}},
                         raw_levels=[(raw, 8, 4.0), wrong_raw if array == "raw" else right_raw])
    write_datasplit([entry(root, "crop1"), entry(root, "crop2", usage="validate")], tmp_path / "split.csv")
    with pytest.raises(DataError) as caught:
        make_data(tmp_path / "split.csv", scale=16)
    level, side, extent, finest = ((f"{root / RAW}/s1", 16, 256.0, 128.0) if array == "raw"
                                   else (f"{root / GT}/crop1/nuc/s1", 8, 128.0, 64.0))
    assert one_line(caught) == (f"{level}: its multiscales scale [16.0, 16.0, 16.0] nm times its shape {[side] * 3} covers "
                                f"{[extent] * 3} nm, but the finest level covers {[finest] * 3} nm: the metadata "
                                f"contradicts the array")


def crop_outside_raw(root: Path) -> tuple[Path, Path]:
    """A dataset whose crop3 sits 1 um past the raw volume's end in x; returns (zarr root, CSV)."""
    raw, labels = volumes()
    zarr_root = write_dataset(root, "ds", raw, {"crop1": {"nuc": labels}, "crop2": {"nuc": labels},
                                                "crop3": {"nuc": ([(labels, 8, LABEL_T + 1000)], None, None)}})
    split = root / "split.csv"
    write_datasplit([entry(zarr_root, "crop1"), entry(zarr_root, "crop2", usage="validate"), entry(zarr_root, "crop3")],
                    split)
    return zarr_root, split


def test_a_crop_outside_its_raw_volume_stops_the_run_naming_it(tmp_path):
    zarr_root, split = crop_outside_raw(tmp_path)
    with pytest.raises(DataError) as caught:
        make_data(split)
    assert one_line(caught) == (
        f"{zarr_root / GT}/crop3/nuc/s0: crop at [1032.0, 1032.0, 1032.0]-[1096.0, 1096.0, 1096.0] nm lies outside its raw "
        f"volume {zarr_root / RAW}/s0 at [0.0, 0.0, 0.0]-[128.0, 128.0, 128.0] nm; check the translations in their .zattrs")


def test_the_cli_stops_on_a_crop_outside_its_raw_volume_in_one_line(tmp_path, run_cli):
    zarr_root, split = crop_outside_raw(tmp_path / "data")
    proc = run_cli("experiment=demo", "data.make_demo=false", f"data.search_path={tmp_path / 'data'}",
                   f"datasplit_path={split}", "classes=[nuc]", "input_array_info={shape:[1,32,32],scale:[8,8,8]}",
                   "epochs=1", "iterations_per_epoch=1", "batch_size=2", "model.base_features=4",
                   "data.dataloader_kwargs.num_workers=0", "hydra.run.dir=run", cold=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cellmap_train: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert f"{zarr_root / GT}/crop3/nuc/s0: crop at [1032.0, 1032.0, 1032.0]-" in errors[0]
    assert errors[0].endswith(f"lies outside its raw volume {zarr_root / RAW}/s0 at [0.0, 0.0, 0.0]-[128.0, 128.0, 128.0] "
                              f"nm; check the translations in their .zattrs")
    assert not list((tmp_path / "run").rglob("*.pth"))  # stopped before training
