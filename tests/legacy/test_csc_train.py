"""`csc train` behaves like the challenge's command: it trains in a stable folder (the config's
own, or its base_experiment_path), so running it again resumes; a model nothing here builds stops
it in one line before any data is read; the shipped examples run as the README says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
EXAMPLES = HERE.parents[1] / "examples"
SMALL = ["data=demo", "device=cpu", "model.base_features=4", "model.depth=2", "validation_batch_limit=1",
         "data.dataloader_kwargs={num_workers:0,persistent_workers:false,prefetch_factor:null}"]
CONFIG = """\
batch_size = 2
iterations_per_epoch = 2
classes = ["nuc", "er"]
input_array_info = {"shape": (1, 32, 32), "scale": (8, 8, 8)}
model_name = "2d_unet"
"""


def csc(run_main, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m cellmap_train.legacy.cli train ARGS`: translated in this process (tests/inprocess.py),
    trained in the real `python -m cellmap_train` process that `csc train` starts."""
    return run_main("train", *args, module="cellmap_train.legacy.cli", cwd=cwd)


@pytest.mark.slow
def test_running_csc_train_again_resumes_in_the_config_folder(run_main, tmp_path):
    folder = tmp_path / "experiment"
    folder.mkdir()
    (folder / "config.py").write_text(CONFIG)
    elsewhere = tmp_path / "cwd"  # run from another folder: the run folder is the config's all the same
    elsewhere.mkdir()
    first = csc(run_main, str(folder / "config.py"), *SMALL, "epochs=1", cwd=elsewhere)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"csc train: run folder {folder} (the config file's folder)" in first.stderr
    assert (folder / "checkpoints" / "2d_unet_1.pth").is_file() and (folder / "datasplit.csv").is_file()
    assert (folder / "tensorboard" / "2d_unet").is_dir()
    second = csc(run_main, str(folder / "config.py"), *SMALL, "epochs=2", cwd=elsewhere)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Resumed from {folder / 'checkpoints' / '2d_unet_1.pth'} (epoch 1, step 2)" in second.stdout
    assert "epoch 2/2" in second.stdout + second.stderr and "epoch 1/2" not in second.stdout + second.stderr
    assert (folder / "checkpoints" / "2d_unet_2.pth").is_file()
    assert not list(elsewhere.iterdir())  # no dated folder under outputs/ of the working folder


@pytest.mark.slow
def test_base_experiment_path_is_the_run_folder(run_main, tmp_path):
    folder = tmp_path / "experiment"
    folder.mkdir()
    (folder / "config.py").write_text(CONFIG + 'base_experiment_path = "runs/first"\n')
    proc = csc(run_main, str(folder / "config.py"), *SMALL, "epochs=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = folder / "runs" / "first"
    assert f"csc train: run folder {run} (base_experiment_path)" in proc.stderr
    assert (run / "checkpoints" / "2d_unet_1.pth").is_file() and (run / "datasplit.csv").is_file()


def test_a_model_nothing_here_builds_stops_before_any_data_is_read(run_main, tmp_path):
    config = tmp_path / "config.py"
    config.write_text('model_name = "mednext"\nmodel_kwargs = {"kernel_size": 3}\n')
    proc = csc(run_main, str(config), "data=demo", cwd=tmp_path)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"csc train: error: {config}:1: model_name: 'mednext' is no model the challenge builds")
    assert "add model=custom model._target_=<package.Class>" in last and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.py"]  # nothing read, nothing written


def test_an_unmapped_model_trains_once_its_class_is_named(run_main, tmp_path):
    config = tmp_path / "config.py"
    config.write_text(CONFIG.replace('"2d_unet"', '"mednext"') + 'model_kwargs = {"kernel_size": 3, "padding": 1}\n')
    proc = csc(run_main, str(config), "model._target_=torch.nn.Conv2d", *SMALL[:2], *SMALL[4:], "epochs=1",
               f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "mednext_1.pth").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("example", ["train_2D.py", "train_3D.py"])
def test_each_example_runs_its_main_block_on_demo_data(demo_cache, tmp_path, example):
    """`python examples/<file> [overrides]` after the quick-start install: the file's imports are
    this project's, its __main__ block trains (here on the demo data, sized down)."""
    shape = "[16,32,32]" if example == "train_3D.py" else "[1,32,32]"
    small = ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.mlp_dim=16", "model.patch_size=8"] \
        if example == "train_3D.py" else ["model.base_features=4", "model.depth=2"]
    env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / example), "data=demo", "device=cpu", "classes=[nuc,er]",
                           "batch_size=2", "epochs=1", "iterations_per_epoch=1", "validation_batch_limit=1",
                           f"input_array_info={{shape:{shape},scale:[8,8,8]}}",
                           f"target_array_info={{shape:{shape},scale:[8,8,8]}}", *small, *SMALL[-1:],
                           f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_name = "2d_unet" if example == "train_2D.py" else "3d_vnet"
    assert (tmp_path / "run" / "checkpoints" / f"{model_name}_1.pth").is_file()
    assert "upath" not in proc.stderr and "cellmap_segmentation_challenge" not in proc.stderr


def test_example_names_build_the_models_the_translation_picks():
    from cellmap_train.legacy.challenge import ResNet, UNet_2D, ViTVNet, get_tested_classes

    assert len(get_tested_classes()) == 48
    unet = UNet_2D(1, 3)
    assert unet.spatial_dims == 2 and sum(p.numel() for p in unet.parameters()) > 30e6  # the challenge's 31 M width
    assert ResNet(ndims=3, output_nc=2, ngf=4, n_blocks=1).forward  # builds with the challenge's argument names
    with pytest.raises(ValueError, match="only the ViT-V-Net sizes"):
        ViTVNet(2, config="R50-ViT-B_16")
