"""A checkpoint as cellmap_train writes it (full state, composed config inside) for a small
untrained 2D U-Net on the demo data, without training one: the geometry, store, pack and kill
tests need a model, not a good one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

CLASSES = ["nuc", "er", "mito"]


def config_for(demo_root: Path, run_dir: Path, shape=(1, 32, 32), scale=(8.0, 8.0, 8.0)) -> dict:
    return {
        "classes": CLASSES, "batch_size": 4, "datasplit_path": "datasplit.csv",
        "input_array_info": {"shape": list(shape), "scale": list(scale)},
        "target_array_info": {"shape": list(shape), "scale": list(scale)},
        "model": {"_target_": "cellmap_train.models.UNet", "spatial_dims": 2, "in_channels": 1,
                  "out_channels": len(CLASSES), "base_features": 4, "depth": 2},
        "model_kwargs": {},
        "transforms": {"val": {"_target_": "cellmap_train.data.transforms.SampleTransforms", "spatial": None,
                               "raw": {"_target_": "cellmap_train.data.transforms.NormalizeRaw", "mode": "unit"}}},
        "data": {"search_path": str(demo_root), "make_demo": False, "storage_options": {}},
        "paths": {"output_dir": str(run_dir)},
    }


@pytest.fixture
def fake_run(demo_root, tmp_path) -> Path:
    """A run folder: checkpoints/tiny_1.pth (full checkpoint, seeded weights) and a datasplit whose
    validation crops are crop5 (8 nm) and crop9 ([5.24, 4, 4] nm)."""
    from cellmap_train.models import UNet

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    torch.manual_seed(0)
    model = UNet(spatial_dims=2, in_channels=1, out_channels=len(CLASSES), base_features=4, depth=2)
    state = {"model": model.state_dict(), "optimizer": {}, "epoch": 1, "step": 1,
             "config": config_for(demo_root, run_dir)}
    torch.save(state, run_dir / "checkpoints" / "tiny_1.pth")
    (run_dir / "result.json").write_text(json.dumps({"status": "ok", "best_checkpoint": "checkpoints/tiny_1.pth",
                                                     "best_epoch": 1, "best_metric_name": "dice/mean"}))
    with open(run_dir / "datasplit.csv", "w", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_ALL)
        for usage, ds, crop, classes in (("train", 1, 1, "nuc,er,mito"), ("validate", 1, 5, "nuc,er,mito"),
                                         ("validate", 2, 9, "nuc,er,mito")):
            zarr_path = str(demo_root / f"jrc_demo-{ds}" / f"jrc_demo-{ds}.zarr")
            writer.writerow([usage, zarr_path, "recon-1/em/fibsem-uint8", zarr_path,
                             f"recon-1/labels/groundtruth/crop{crop}/[{classes}]"])
    return run_dir
