"""`cellmap-train translate` and `csc train` end to end: malformed files exit 2 with one line,
the file is never run unless --allow-exec, outputs compose in `python -m cellmap_train` (run in
this process, tests/inprocess.py; a real process where the shell is the point)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cellmap_train.legacy import overrides
from inprocess import run_module
from cellmap_train.legacy.tested_classes import TESTED_CLASSES

HERE = Path(__file__).parent
CONFIGS, MALFORMED = HERE / "configs", HERE / "malformed"
EXAMPLES = HERE.parents[1] / "examples"


def translate(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m cellmap_train.cli translate ARGS`, in this process (tests/inprocess.py)."""
    return run_module("cellmap_train.cli", "translate", *args, env={**os.environ, **(env or {})}, cwd=cwd)


BAD_FILES = [
    ("syntax_error.py", 2, "syntax"),
    ("string_lr.py", 1, "learning_rate: must be a number, got a string '0.001'"),
    ("string_batch.py", 1, "batch_size: must be an integer"),
    ("shape_4d.py", 1, "input_array_info: shape must be 2 or 3"),
    ("os_system.py", 2, "os.system: runs code"),
    ("subprocess_run.py", 2, "subprocess.run: runs code"),
    ("eval_call.py", 1, "eval: runs code"),
    ("aliased_system.py", 2, "os.system: runs code"),
    ("model_defined_here.py", 18, "TinyNet is defined in the config file; needs execution"),
    ("localmod/uses_local_module.py", 2, "imported from a local module"),
    ("normalize_std_zero.py", 2, "train_raw_value_transforms: torchvision.transforms.v2.Normalize: std 0 divides by zero"),
    ("two_named_arrays.py", 2, "input_array_info: 2 named arrays (raw, raw_4nm): the models here take one input array"),
    ("machine_condition.py", 2, "batch_size: not known without running the file: assigned under a condition not known "
                                "statically (torch.cuda.is_available() asks the machine that trains; not known before it "
                                "runs); needs execution (--allow-exec imports the file)"),
]


@pytest.mark.parametrize("name,line,words", BAD_FILES)
def test_bad_files_exit_2_with_one_line(tmp_path, monkeypatch, capsys, name, line, words):
    from cellmap_train.legacy.translate import main

    marker = tmp_path / "marker.txt"
    monkeypatch.setenv("LEGACY_TEST_MARKER", str(marker))
    assert main([str(MALFORMED / name)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert f"{name}:{line}: " in err and words in err
    assert not marker.exists()  # nothing of the file ran


def test_bad_file_through_the_installed_command_has_no_traceback():
    """A real process: the one-line contract as the shell sees it."""
    proc = subprocess.run([sys.executable, "-m", "cellmap_train.cli", "translate", str(MALFORMED / "syntax_error.py")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"cellmap-train translate: error: {MALFORMED / 'syntax_error.py'}:2: syntax: '(' was never closed"]


def test_default_path_never_runs_the_file(tmp_path):
    marker = tmp_path / "marker.txt"
    proc = translate(str(CONFIGS / "c29_side_effects.py"), env={"LEGACY_TEST_MARKER": str(marker)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "lr=0.002" in proc.stdout.splitlines()
    assert "c29_side_effects.py:5: Path(MARKER).write_text('executed'): top-level expression not run" in proc.stderr
    assert not marker.exists() and not list(tmp_path.iterdir())


def test_allow_exec_imports_the_file_but_not_its_main_block(tmp_path):
    marker = tmp_path / "marker.txt"
    proc = translate("--allow-exec", str(MALFORMED / "model_defined_here.py"), env={"LEGACY_TEST_MARKER": str(marker)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for token in ("model=custom", "model._target_=model_defined_here.TinyNet", "+model._args_=[1,2]", "+model.width=8"):
        assert token in lines
    assert "PYTHONPATH" in proc.stderr
    assert marker.read_text() == "imported" and not Path(f"{marker}.main").exists()


def test_allow_exec_never_takes_this_machines_device_or_gpu_count():
    lines = translate("--allow-exec", str(MALFORMED / "exec_device_idiom.py"))
    assert lines.returncode == 0, lines.stderr
    assert {"device=null", "batch_size=2", "model._target_=exec_device_idiom.Net"} <= set(lines.stdout.splitlines())
    assert "exec_device_idiom.py:10: device: depends on torch.cuda.is_available()" in lines.stderr


def test_csc_train_allow_exec_trains_a_model_defined_in_the_file(run_main, tmp_path):
    marker = tmp_path / "marker.txt"
    proc = run_main("train", "--allow-exec", str(MALFORMED / "model_defined_here.py"), "data=demo", "trainer=smoke",
                   "device=cpu", "load_model=null", "batch_size=2", "input_array_info={shape:[1,32,32],scale:[8,8,8]}",
                   "data.dataloader_kwargs={num_workers:0,persistent_workers:false,prefetch_factor:null}",
                   f"hydra.run.dir={tmp_path / 'run'}", module="cellmap_train.legacy.cli",
                   env={"LEGACY_TEST_MARKER": str(marker)}, check=True)
    assert "epoch 1/1" in proc.stdout + proc.stderr
    assert (tmp_path / "run" / "checkpoints" / "2d_unet_1.pth").exists() or list((tmp_path / "run" / "checkpoints").glob("*_1.pth"))


def composed_job(run_main, *args: str) -> dict:
    proc = run_main(*args, "--cfg", "job", "--resolve", check=True)
    return yaml.safe_load(proc.stdout)


def test_shell_substitution_and_cfg_job(run_cli, tmp_path):
    """`python -m cellmap_train $(cellmap-train translate CONFIG.py)`: quoted and braced tokens survive."""
    script = (f'{sys.executable} -m cellmap_train $({sys.executable} -m cellmap_train.cli translate '
              f'"{CONFIGS / "c03_paths.py"}") --cfg job --resolve')
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    job = yaml.safe_load(proc.stdout)
    assert job["model_save_path"] == "checkpoints/exp2/{model_name}_{epoch}.pth"
    assert job["model_name"] == "my_unet" and job["datasplit_path"] == "splits/exp2_3.csv"


@pytest.mark.parametrize("name", ["c16_custom_optimizer"])
def test_cfg_job_through_the_entry(run_main, name):
    job = composed_job(run_main, *overrides(CONFIGS / f"{name}.py"))
    expected = {
        "c13_adamw_instance": lambda j: j["optimizer"]["_target_"] == "torch.optim.AdamW" and j["optimizer"]["lr"] == 1e-3
        and j["optimizer"]["weight_decay"] == 0.05,
        "c16_custom_optimizer": lambda j: j["optimizer"] == {"_target_": "torch.optim.Adagrad", "_partial_": True,
                                                             "lr": 0.01, "lr_decay": 0.001},
        "c20_spatial_3d": lambda j: j["model"]["spatial_dims"] == 3 and j["model"]["base_features"] == 64
        and j["transforms"]["train"]["spatial"]["rotate"] == {a: [-180, 180] for a in "zyx"},
    }[name]
    assert expected(job), job


def test_yaml_format_is_an_experiment_that_composes_the_same(compose_cfg, tmp_path, capsys):
    from omegaconf import OmegaConf

    from cellmap_train.legacy.translate import main

    config = CONFIGS / "c20_spatial_3d.py"
    assert main(["--format", "yaml", str(config)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# @package _global_")
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "legacy_c20.yaml").write_text(text)
    from_yaml = compose_cfg(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=legacy_c20")
    from_overrides = compose_cfg(*overrides(config))
    for key in ("model", "optimizer", "scheduler", "loss", "transforms", "input_array_info", "classes", "data"):
        assert OmegaConf.to_container(from_yaml[key]) == OmegaConf.to_container(from_overrides[key]), key


def test_csc_train_later_overrides_win_and_help(capsys):
    from cellmap_train.legacy.cli import main

    assert main(["train", "--dry-run", str(CONFIGS / "c01_literals.py"), "epochs=1", "lr=0.5"]) == 0
    words = capsys.readouterr().out.split()
    assert words.index("epochs=3") < words.index("epochs=1") and words[-1] == "lr=0.5"
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    usage = " ".join(capsys.readouterr().out.split())
    assert "csc train" in usage and "--allow-exec" in usage and "later overrides win" in usage


def test_csc_train_bad_file_exits_2(capsys):
    from cellmap_train.legacy.cli import main

    assert main(["train", str(MALFORMED / "shape_4d.py")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("what", ["missing", "folder", "not_utf8"])
def test_a_file_that_cannot_be_read_is_one_line_without_a_line_number(tmp_path, capsys, what):
    from cellmap_train.legacy.cli import main

    path = tmp_path / "config.py"
    if what == "folder":
        path.mkdir()
    elif what == "not_utf8":
        path.write_bytes(b"\xff\xfe")
    reason = {"missing": "No such file or directory", "folder": "Is a directory", "not_utf8": "'utf-8' codec can't decode"}
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"csc train: error: {path}: cannot read: {reason[what]}") and len(err.strip().splitlines()) == 1


def test_example_train_2d_translates_to_the_challenge_setup(compose_cfg):
    cfg = compose_cfg(*overrides(EXAMPLES / "train_2D.py"))
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.iterations_per_epoch, cfg.seed) == (1e-4, 8, 1000, 1000, 42)
    assert list(cfg.classes) == ["nuc", "er"] and cfg.model_name == "2d_unet" and cfg.load_model == "latest"
    assert cfg.model._target_ == "cellmap_train.models.UNet" and cfg.model.spatial_dims == 2
    assert (cfg.model.base_features, cfg.model.depth, cfg.model.out_channels) == (64, 4, 2)
    assert dict(cfg.input_array_info) == {"shape": [1, 128, 128], "scale": [8, 8, 8]} == dict(cfg.target_array_info)
    assert cfg.optimizer._target_ == "torch.optim.RAdam" and cfg.optimizer.decoupled_weight_decay is True
    assert cfg.validation_time_limit == 60 and cfg.data.filter_by_scale is True and cfg.data.make_demo is False
    assert dict(cfg.transforms.train.spatial.rotate)["z"] == [-180, 180]
    assert cfg.loss.pos_weight == "auto"  # weight_loss, on by default


def test_example_train_3d_translates_to_the_challenge_setup(compose_cfg):
    cfg = compose_cfg(*overrides(EXAMPLES / "train_3D.py"))
    assert list(cfg.classes) == list(TESTED_CLASSES) and cfg.model.out_channels == 48
    assert cfg.model._target_ == "cellmap_train.models.ViTVNet" and list(cfg.model.img_size) == [128, 128, 128]
    assert cfg.model_name == "3d_vnet" and cfg.model_to_load == "3d_vnet"
    assert dict(cfg.target_array_info) == {"shape": [128, 128, 128], "scale": [8, 8, 8]}
    assert dict(cfg.transforms.train.spatial.mirror) == {"z": 0.1, "y": 0.5, "x": 0.5}
    assert list(cfg.transforms.train.spatial.transpose) == ["x", "y", "z"]
