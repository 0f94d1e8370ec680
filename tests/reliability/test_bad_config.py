"""Bad configuration: one line each, exit 1, no traceback (unless HYDRA_FULL_ERROR=1), and
nothing read: the demo data is not even generated when the config is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from faults import error_line

CASES = {
    "unknown_key": (["nope=1"], "Could not override 'nope'"),
    "unknown_nested_key": (["trainer.fo=1"], "Could not override 'trainer.fo'"),
    "lr_not_a_number": (["lr=abc"], "lr='abc': must be a positive number"),
    "lr_inf": (["lr=inf"], "lr=inf: must be a positive number"),  # like lr=nan: NaN weights after one step
    "optimizer_lr_inf": (["optimizer.lr=inf"], "optimizer.lr=inf: must be a finite number"),
    "negative_batch": (["batch_size=-1"], "batch_size=-1: must be an integer >= 1"),
    "zero_epochs": (["epochs=0"], "epochs=0: must be an integer >= 1"),
    "missing_group_option": (["model=nope"], "Could not find 'model/nope' (available: 2d_resnet"),
    "override_syntax": (["lr=["], "lr=[: no viable alternative"),
    "bad_interpolation": (["lr=${nothere}"], "Interpolation key 'nothere' not found"),
    "2d_model_3d_shape": (["input_array_info.shape=[8,64,64]"], "model=2d_unet is 2D but input_array_info.shape=[8, 64, 64] is 3D"),
    "3d_model_2d_shape": (["model=3d_unet", "input_array_info.shape=[1,64,64]"], "model=3d_unet is 3D but"),
    "3d_labels_2d_input": (["target_array_info.shape=[4,96,96]"], "target_array_info.shape=[4, 96, 96] is 3D but "
                                                                  "input_array_info.shape=[1, 96, 96] is 2D"),
    "label_scale_alone": (["target_array_info.scale=[16,16,16]"], "model=2d_unet outputs at the input's voxel size"),
    "bad_amp": (["trainer.amp=fp8"], "trainer.amp must be null, bf16 or fp16"),
    "autotuner_not_a_bool": (["trainer.cudnn_benchmark=often"], "trainer.cudnn_benchmark must be null, true or false, got 'often'"),
    "autotuner_when_deterministic": (["trainer.cudnn_benchmark=true", "trainer.deterministic=true"],
                                     "trainer.cudnn_benchmark=true contradicts trainer.deterministic=true"),
    # found by the fuzz test: a number where a list belongs, a device that is neither name nor index
    "shape_not_a_list": (["input_array_info.shape=134"], "input_array_info.shape=134: must be 2 or 3 voxel counts"),
    "shape_with_zero": (["input_array_info.shape=[1,0,64]"], "input_array_info.shape=[1, 0, 64]: must be 2 or 3"),
    "scale_not_numbers": (["input_array_info.scale=[a,b,c]"], "input_array_info.scale=['a', 'b', 'c']: must be positive"),
    "array_info_not_a_dict": (["input_array_info=5"], "input_array_info=5: must be {shape: [D,H,W], scale: [z,y,x]}"),
    "device_a_float": (["device=1.5"], "device=1.5: not a device; use null, cpu, cuda, cuda:N or mps"),
    "classes_a_number": (["classes=4"], "classes=4: must be a non-empty list of class names"),
    "classes_empty": (["classes=[]"], "classes=[]: must be a non-empty list of class names"),
    "classes_twice": (["classes=[nuc,er,nuc]"], "classes=['nuc', 'er', 'nuc']: 'nuc' is listed twice"),
    "labels_dtype": (["transforms.train.target.dtype=int8"],
                     "transforms.train.target: ValueError: BinarizeLabels dtype must be one of uint8, float32, got 'int8'"),
    "loader_workers_negative": (["data.dataloader_kwargs.num_workers=-1"],
                                "data: dataloader_kwargs.num_workers=-1: must be an integer >= 0"),
    "loader_workers_not_a_number": (["data.dataloader_kwargs.num_workers=abc"],
                                    "data: dataloader_kwargs.num_workers='abc': must be an integer >= 0"),
    "loader_prefetch_not_a_number": (["data.dataloader_kwargs.prefetch_factor=abc"],
                                     "data: dataloader_kwargs.prefetch_factor='abc': must be an integer >= 1"),
    "loader_prefetch_zero": (["data.dataloader_kwargs.prefetch_factor=0"],
                             "data: dataloader_kwargs.prefetch_factor=0: must be an integer >= 1"),
    "loader_unknown_option": (["+data.dataloader_kwargs.foo=1"], "data: dataloader_kwargs: DataLoader.__init__() got an "
                                                                  "unexpected keyword argument 'foo'"),
    "loader_batch_size": (["+data.dataloader_kwargs.batch_size=3"], "data: dataloader_kwargs.batch_size: set by cellmap_train"),
    "optimizer_value_not_a_number": (["optimizer.weight_decay=abc"], "optimizer.weight_decay='abc': must be a number "
                                                                     "(AdamW's default: 0.01)"),
    "optimizer_betas_too_short": (["+optimizer.betas=[0.9]"], "optimizer.betas=[0.9]: must be 2 numbers"),
    "optimizer_value_rejected": (["optimizer.weight_decay=-1"], "optimizer (torch.optim.AdamW): ValueError: Invalid weight_decay"),
    "scheduler_value_not_a_number": (["scheduler=step", "scheduler.gamma=abc"], "scheduler.gamma='abc': must be a number"),
    # torch accepts it and divides by zero at the end of the first epoch
    "scheduler_step_size_zero": (["scheduler=step", "scheduler.step_size=0"],
                                 "scheduler (torch.optim.lr_scheduler.StepLR): ZeroDivisionError: integer modulo by zero"),
    "loss_weight_per_class": (["loss.pos_weight=[1,2]"], "loss.pos_weight=[1, 2]: must be a positive number, one per "
                                                          "class (3: nuc, er, mito), or auto (from the training crops)"),
    "loss_weight_text": (["loss.pos_weight=abc"], "loss.pos_weight='abc': must be a positive number"),
    "negative_clipping": (["trainer.max_grad_norm=-1"], "trainer.max_grad_norm must be null or > 0, got -1"),
    "smoothing_window_zero": (["trainer.smoothing_window=0"], "trainer.smoothing_window must be an integer >= 1, got 0"),
    "model_kwargs_a_number": (["model_kwargs=10"], "model_kwargs=10: must be a mapping of model arguments"),
    "freeze_unknown_part": (["freeze=[encoder]"], "freeze: 'encoder' names no parameters of UNet; its parts with "
                                                  "parameters are down, up, merge, head"),
    "freeze_not_a_list": (["freeze=down"], "freeze='down': must be a list of module paths, e.g. freeze=[down]"),
    # a group removed with ~group: the user most likely meant "none of these", which only the scheduler has
    "scheduler_removed": (["~scheduler"], "scheduler: removed from the config, but every run needs one: choose one with "
                                          "scheduler=<name> (cosine, none, onecycle, poly, step, warmup_cosine); scheduler=none keeps"),
    "optimizer_removed": (["~optimizer"], "optimizer: removed from the config, but every run needs one: choose one "
                                          "with optimizer=<name> (adam, adamw, radam, sgd)"),
    "trainer_removed": (["~trainer"], "trainer: removed from the config, but every run needs one"),
    # the kernel would kill it minutes later without a word (a lower bound of the need: 520 GiB and more)
    "sample_too_large_for_memory": (["input_array_info.shape=[1,4000,4000]", "batch_size=64", "device=cpu"],
                                    "input_array_info.shape=[1, 4000, 4000] with batch_size=64 needs at least"),
    # Hydra's own answer is the YAML syntax of a defaults list ('override scheduler: step')
    "group_added_with_plus": (["+model=3d_unet"], "+model=3d_unet: model already has an option (2d_unet): set it "
                                                  "with model=3d_unet, without the +"),
    "scheduler_null": (["scheduler=null"], "scheduler=null: Config group override must be a string or a list"),
    "model_removed": (["~model"], "model: removed from the config, but every run needs one: choose one with model=<name> ("),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_override_is_one_line_before_any_data(run_inprocess, tmp_path, monkeypatch, name):
    empty_cache = tmp_path / "no_demo_yet"
    monkeypatch.setenv("CELLMAP_TRAIN_DEMO_DIR", str(empty_cache))
    overrides, expected = CASES[name]
    code, stderr = run_inprocess("experiment=demo", "hydra.run.dir=run", *overrides)
    assert code == 1
    assert expected in error_line(stderr)
    assert not empty_cache.exists(), "the demo data was generated although the config is wrong"
    assert not (tmp_path / "run" / "datasplit.csv").exists()


def test_a_removed_group_in_a_sweep_fails_each_job_in_the_summary(run_inprocess, tmp_path):
    """Each job's record is written without the removed group's settings (trainer.best_metric)."""
    import pandas as pd

    code, output = run_inprocess("-m", "experiment=demo", "hydra.sweep.dir=sweep", "~trainer", "seed=1,2")
    assert code == 1, output
    table = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert list(table.status) == ["failed", "failed"]
    assert table.error.str.startswith("trainer: removed from the config").all()


def test_folder_with_another_runs_checkpoints_is_refused(run_inprocess, tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "2d_unet_3.pth").write_bytes(b"an earlier run")
    code, stderr = run_inprocess("experiment=demo", "hydra.run.dir=run")  # the demo sets load_model=null
    assert code == 1
    line = error_line(stderr)
    assert "already holds checkpoints of an earlier run (epochs 3..3)" in line and "load_model=latest" in line
    assert (checkpoints / "2d_unet_3.pth").read_bytes() == b"an earlier run"
    assert not (tmp_path / "run" / "datasplit.csv").exists()


def test_a_temp_dir_too_long_for_the_workers_sockets_is_one_line_before_any_data(run_inprocess, tmp_path, monkeypatch):
    """Under such a TMPDIR every DataLoader worker dropped its batches and the run waited for good."""
    long_dir = tmp_path / ("t" * max(1, 100 - len(str(tmp_path))))
    long_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_dir))  # what TMPDIR sets, read once per process
    monkeypatch.setenv("CELLMAP_TRAIN_DEMO_DIR", str(tmp_path / "no_demo_yet"))
    code, stderr = run_inprocess("experiment=demo", "hydra.run.dir=run")
    assert code == 1
    assert f"TMPDIR={long_dir}: too long for the sockets DataLoader workers pass batches through" in error_line(stderr)
    assert not (tmp_path / "no_demo_yet").exists()
    code, stderr = run_inprocess("experiment=demo", "hydra.run.dir=run", "data.dataloader_kwargs.num_workers=0",
                                 "epochs=1", "iterations_per_epoch=1")
    assert code == 0, stderr[-2000:]  # no workers, no sockets


@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_a_run_folder_that_cannot_be_made_is_one_line(run_inprocess, tmp_path, mode):
    (tmp_path / "a_file").write_text("not a folder")
    if mode == "run":
        code, stderr = run_inprocess("experiment=demo", "hydra.run.dir=a_file/run")
    else:
        code, stderr = run_inprocess("-m", "experiment=demo", "seed=1,2", "hydra.sweep.dir=a_file/sweep")
    assert code == 1
    assert error_line(stderr) == f"cellmap_train: error: a_file/{mode}: Not a directory"
    assert "Warning" not in stderr
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_hydra_full_error_shows_the_traceback(demo_cache, tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache)}
    proc = subprocess.run([sys.executable, "-m", "cellmap_train", "model=nope"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "MissingConfigException" in proc.stderr


def test_installed_command_reports_one_line(demo_cache, tmp_path):
    """The `cellmap-train` console script goes through the same entry."""
    env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "cellmap_train.cli", "trainer.fo=1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Could not override 'trainer.fo'" in error_line(proc.stderr)
    assert proc.stderr.strip().count("\n") == 0, proc.stderr


def test_bad_override_is_answered_without_importing_torch(demo_cache, tmp_path):
    """torch (~2 s) loads when a run starts: a mistyped shorthand is reported before that."""
    probe = ("import sys\nsys.argv = ['cellmap_train', 'lr=abc']\nfrom cellmap_train.train import main\n"
             "try:\n    main()\nexcept SystemExit as stop:\n    print('exit', stop.code, 'torch' in sys.modules)\n")
    env = {**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert "lr='abc': must be a positive number" in error_line(proc.stderr)
    assert proc.stdout.strip() == "exit 1 False", proc.stdout + proc.stderr
