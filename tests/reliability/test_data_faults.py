"""Data that is wrong must never train silently: a crop in both splits, duplicate rows, raw whose
dtype and values disagree, metadata that is not JSON, non-finite inputs and weights. Each stops
with one line naming what and where, or warns once."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import zarr

from cellmap_train.data.datasplit import make_datasplit_csv, read_datasplit
from cellmap_train.data.raw_values import raw_value_problem
from cellmap_train.engine.nonfinite import all_finite, first_nonfinite
from faults import RUN, error_line, fails_with

def demo_split(demo_root, csv_path) -> list[str]:
    """A real datasplit of the demo data; returns its lines."""
    make_datasplit_csv(["nuc", "er"], validation_prob=0.3, base_path=str(demo_root), csv_path=csv_path, seed=1)
    return csv_path.read_text().splitlines()


def test_a_crop_in_both_splits_is_refused_naming_both_rows_unless_allowed(run_inprocess, tmp_path, demo_root):
    csv_path = tmp_path / "run" / "datasplit.csv"
    csv_path.parent.mkdir()
    lines = demo_split(demo_root, csv_path)
    train = next(i for i, line in enumerate(lines) if line.startswith('"train"'))
    csv_path.write_text("\n".join([*lines, lines[train].replace('"train"', '"validate"', 1)]) + "\n")
    line = fails_with(run_inprocess, tmp_path)
    assert f"datasplit.csv:{train + 1} (train) and " in line and f"datasplit.csv:{len(lines) + 1} (validate)" in line
    assert "list the same crop" in line and "data.allow_split_overlap=true" in line
    # allowed: both rows are kept
    entries = read_datasplit(csv_path, allow_overlap=True)
    assert len(entries) == len(lines) + 1


def test_duplicate_rows_are_dropped_with_one_warning(tmp_path, demo_root, caplog):
    csv_path = tmp_path / "datasplit.csv"
    lines = demo_split(demo_root, csv_path)
    doubled = lines[0].replace("/crop", "//crop")  # the same crop, spelt differently
    csv_path.write_text("\n".join([*lines, lines[0], doubled, lines[1]]) + "\n")
    with caplog.at_level(logging.WARNING):
        entries = read_datasplit(csv_path)
    assert len(entries) == len(lines)
    warnings = [r.getMessage() for r in caplog.records if "duplicate" in r.getMessage()]
    assert len(warnings) == 1, warnings
    n = len(lines)
    assert "3 duplicate rows dropped" in warnings[0] and f"line {n + 1} (as 1), {n + 2} (as 1), {n + 3} (as 2)" in warnings[0]


@pytest.mark.parametrize("dtype, values, says", [
    ("float32", np.linspace(0, 255, 64), "float32 raw holding values up to 255, but unit normalization scales floats by 1"),
    ("uint16", np.linspace(0, 200, 64), "uint16 raw holding 8-bit values (at most 200), scaled by uint16's range 65535"),
    ("float32", np.array([0.1, np.nan, 0.5]), "float32 raw holding NaN or inf"),
    ("uint8", np.linspace(0, 255, 64), ""),
    ("uint16", np.linspace(0, 40000, 64), ""),
    ("float32", np.linspace(0, 1, 64), ""),
])
def test_raw_whose_dtype_and_values_disagree_is_named(dtype, values, says):
    problem = raw_value_problem(np.dtype(dtype), values.astype(dtype))
    assert (says in problem) if says else problem == "", problem


def rewrite_raw(demo_copy, convert) -> list[str]:
    """Every level of every demo raw rewritten as convert(voxels); returns the raw group paths."""
    groups = sorted(p for p in demo_copy.rglob("fibsem-uint8") if p.is_dir())
    for group in groups:
        for level in sorted(p for p in group.iterdir() if p.is_dir()):
            old = zarr.open_array(str(level), mode="r")
            data, chunks = convert(old[...]), old.chunks
            zarr.create_array(str(level), shape=data.shape, dtype=data.dtype, chunks=chunks, zarr_format=2,
                              overwrite=True)[...] = data
    return [str(g) for g in groups]


def test_float_raw_holding_0_to_255_warns_once_per_dataset_with_the_fix(demo_copy, tmp_path, caplog):
    from cellmap_train.data import CellMapData
    from cellmap_train.data.demo import DEMO_VERSION
    from cellmap_train.data.transforms import NormalizeRaw, SampleTransforms

    groups = rewrite_raw(demo_copy, lambda v: v.astype(np.float32))
    with caplog.at_level(logging.WARNING):
        CellMapData(str(demo_copy / f"v{DEMO_VERSION}"), tmp_path / "split.csv", ["nuc", "er"],
                    {"shape": [1, 32, 32], "scale": [8, 8, 8]}, validation_prob=0.3,
                    dataloader_kwargs={"num_workers": 0}, train_transforms=SampleTransforms(None, NormalizeRaw()))
    warned = [r.getMessage() for r in caplog.records if "unit normalization" in r.getMessage()]
    assert len(warned) == len(groups) == 2, warned  # once per dataset, not once per crop
    assert all("transforms.train.raw.mode=meanstd transforms.train.raw.mean=" in w for w in warned)
    assert {w.split(": ")[0].split("recon-1")[0] for w in warned} == {g.split("recon-1")[0] for g in groups}


def test_nan_in_the_raw_names_the_input_batch(run_inprocess, tmp_path, demo_copy):
    rewrite_raw(demo_copy, lambda v: np.full(v.shape, np.nan, np.float32))
    code, output = run_inprocess(*RUN, f"paths.demo_dir={demo_copy}")
    assert code == 1, output[-3000:]
    line = error_line(output)
    assert "loss is nan at epoch 1, step 1: the input batch holds NaN or inf" in line
    assert "float32 raw holding NaN or inf" in output  # said at start-up, naming the dataset


@pytest.mark.parametrize("where, file", [("fibsem-uint8/s0", ".zarray"), ("groundtruth/crop1/nuc", ".zattrs"),
                                         ("groundtruth/crop1/nuc/s0", ".zattrs")])
def test_metadata_that_is_not_json_names_the_file(run_inprocess, tmp_path, demo_copy, where, file):
    target = next(p for p in demo_copy.rglob(where.rsplit("/", 1)[-1]) if str(p).endswith(where)) / file
    target.write_text('{"zarr_format": 2,')  # cut short, as an interrupted copy leaves it
    line = fails_with(run_inprocess, tmp_path, f"paths.demo_dir={demo_copy}")
    assert f"{target}: not valid JSON (Expecting property name enclosed in double quotes at line 1" in line


def test_init_from_weights_holding_nan_is_refused_before_training(run_inprocess, tmp_path):
    path = tmp_path / "nan.pth"
    torch.save({"head.weight": torch.tensor([1.0, math.nan, math.inf])}, path)
    line = fails_with(run_inprocess, tmp_path, f"init_from={path}")
    assert f"init_from: {path}: weight head.weight holds 2 NaN or inf values (of 3)" in line


def test_init_from_a_pickled_module_says_what_it_is_and_how_to_save_a_state_dict(run_inprocess, tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(torch.nn.Conv2d(1, 2, 3), path)
    line = fails_with(run_inprocess, tmp_path, f"init_from={path}")
    assert "\x1b" not in line
    assert line.endswith(f"init_from: {path}: a whole pickled torch.nn.modules.conv.Conv2d (what torch.save(model) "
                         f"writes), not a state_dict; loading it would run code from the file, so only weights are "
                         f"read: save them with torch.save(model.state_dict(), 'weights.pth') and use that file")


def test_a_non_finite_step_names_the_first_non_finite_tensor():
    model = torch.nn.Linear(2, 1)
    finite = all_finite(torch.ones(2), None)
    assert first_nonfinite(all_finite(torch.tensor([1.0, math.nan]), finite), model).startswith("the input batch")
    assert first_nonfinite(finite, model).startswith("input and weights are finite, the model's output or the loss")
    with torch.no_grad():
        model.bias.fill_(math.inf)
    assert first_nonfinite(finite, model).startswith("weight bias holds NaN or inf")
