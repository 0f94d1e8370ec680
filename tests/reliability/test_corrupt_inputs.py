"""Corrupt inputs: one line naming the file and the problem, exit 1, existing files untouched."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import zarr

from faults import fails_with

@pytest.mark.parametrize("content,says", [
    (b"not a checkpoint at all", "not a PyTorch checkpoint (torch.save writes a zip archive or a pickle; this file starts with b'not '"),
    ("truncated", "not a readable checkpoint, truncated or corrupt?"),
])
def test_bad_checkpoint(run_inprocess, tmp_path, demo_cache, content, says):
    path = tmp_path / "run" / "checkpoints" / "2d_unet_1.pth"
    path.parent.mkdir(parents=True)
    if content == "truncated":
        import torch
        torch.save({"model": {"w": torch.zeros(1000)}, "optimizer": {}, "epoch": 1, "step": 3}, path)
        content = path.read_bytes()[:300]
    path.write_bytes(content)
    line = fails_with(run_inprocess, tmp_path, "load_model=latest")
    assert f"2d_unet_1.pth: {says}" in line


def test_malicious_pickle_checkpoint_is_refused_and_not_run(run_inprocess, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "run" / "checkpoints" / "2d_unet_1.pth"
    path.parent.mkdir(parents=True)
    # protocol 2: what torch.load's own pickles use, so the refusal is the only thing it reports
    path.write_bytes(pickle.dumps({"model": Exploit(), "optimizer": {}, "epoch": 1, "step": 3}, protocol=2))
    line = fails_with(run_inprocess, tmp_path, "load_model=latest")
    assert "2d_unet_1.pth: not a readable checkpoint" in line
    assert not marker.exists(), "unpickling ran code from the checkpoint"


def crop_group(demo_copy, crop: str = "crop1"):
    return next(demo_copy.rglob(f"groundtruth/{crop}"))


def test_corrupt_zarr_chunk(run_inprocess, tmp_path, demo_copy):
    raw_s0 = [p for p in demo_copy.rglob("fibsem-uint8/s0") if p.is_dir()]
    for level in raw_s0:  # every chunk of every raw s0: the first batch hits one
        for chunk in level.iterdir():
            if not chunk.name.startswith("."):
                chunk.write_bytes(b"\x00garbage")
    line = fails_with(run_inprocess, tmp_path, f"paths.demo_dir={demo_copy}")
    assert "fibsem-uint8/s0/" in line and "corrupt or unreadable chunk" in line


def test_crop_without_zattrs(run_inprocess, tmp_path, demo_copy):
    nuc = crop_group(demo_copy) / "nuc"
    (nuc / ".zattrs").unlink()
    line = fails_with(run_inprocess, tmp_path, f"paths.demo_dir={demo_copy}")
    assert "crop1/nuc" in line and "no OME-NGFF 'multiscales' metadata in .zattrs" in line


def test_label_of_the_wrong_shape(run_inprocess, tmp_path, demo_copy):
    """A 2D array where a 3D label level belongs."""
    nuc = crop_group(demo_copy) / "nuc"
    level = zarr.open_array(str(nuc / "s0"), mode="r")
    zarr.create_array(str(nuc / "s0"), shape=level.shape[1:], dtype=level.dtype, chunks=level.shape[1:],
                      zarr_format=2, overwrite=True)[...] = np.zeros(level.shape[1:], level.dtype)
    line = fails_with(run_inprocess, tmp_path, f"paths.demo_dir={demo_copy}")
    assert "crop1/nuc" in line


def write_csv(tmp_path, text: str) -> None:
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run" / "datasplit.csv").write_text(text)


def test_datasplit_bad_row(run_inprocess, tmp_path):
    write_csv(tmp_path, '"train","a.zarr","recon-1/em/fibsem-uint8"\n')
    line = fails_with(run_inprocess, tmp_path)
    assert "datasplit.csv:1: expected 5 columns" in line


def test_datasplit_path_that_does_not_exist(run_inprocess, tmp_path):
    write_csv(tmp_path, '"train","/nowhere/x.zarr","recon-1/em/fibsem-uint8","/nowhere/x.zarr",'
                        '"recon-1/labels/groundtruth/crop1/[nuc]"\n')
    line = fails_with(run_inprocess, tmp_path)
    assert "/nowhere/x.zarr" in line and "no zarr group there" in line
