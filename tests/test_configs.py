"""Layer 1: every config group option composes and instantiates; the CLI surface of Hydra works."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cellmap_train.config.location import config_dir

CONF = Path(config_dir())
GROUPS = ["model", "data", "transforms", "optimizer", "scheduler", "loss", "trainer", "logger", "experiment", "debug"]
# groups whose options do not instantiate one object by themselves
NOT_OBJECTS = {"experiment", "debug", "transforms"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(compose_cfg, group, option):
    cfg = compose_cfg(f"{group}={option}")
    assert cfg.hydra.runtime.choices[group] == option
    for key in cfg:  # every interpolation resolves (the hydra node itself needs a running job)
        if key != "hydra":
            OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]


@pytest.mark.parametrize("option", options("optimizer"))
def test_optimizers_are_partials_with_top_level_lr(compose_cfg, option):
    import torch

    cfg = compose_cfg(f"optimizer={option}", "lr=0.123")
    optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.123)


@pytest.mark.parametrize("option", options("scheduler"))
def test_schedulers_wrap_an_optimizer(compose_cfg, option):
    import torch

    cfg = compose_cfg(f"scheduler={option}")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    scheduler = instantiate(cfg.scheduler)(optimizer)
    assert hasattr(scheduler, "step")


@pytest.mark.parametrize("optimizer,scheduler,loss", [(o, s, l) for o in options("optimizer") for s in options("scheduler")
                                                      for l in options("loss")])
def test_preflight_passes_every_shipped_combination(compose_cfg, optimizer, scheduler, loss):
    """The checks that build the optimizer and scheduler on a stand-in and read the loss options
    raise for bad values only (tests/reliability/test_bad_config.py), never for a shipped option,
    even at one step (OneCycleLR counts its steps)."""
    from cellmap_train.config.preflight import check_numeric_options, check_optimizer_and_scheduler

    cfg = compose_cfg("experiment=demo", f"optimizer={optimizer}", f"scheduler={scheduler}", f"loss={loss}",
                      "epochs=1", "iterations_per_epoch=1", "loss.pos_weight=[1,2,3]" if loss != "dice" else "lr=0.1")
    check_numeric_options(cfg)
    check_optimizer_and_scheduler(cfg)


@pytest.mark.parametrize("group", ["model", "loss", "trainer"])
def test_objects_instantiate(compose_cfg, group):
    for option in options(group):
        cfg = compose_cfg(f"{group}={option}")
        if OmegaConf.is_missing(cfg[group], "_target_"):  # model=custom: the user names the class (tests/models/)
            continue
        assert instantiate(cfg[group]) is not None


def test_transforms_instantiate(compose_cfg):
    for option in options("transforms"):
        cfg = compose_cfg(f"transforms={option}")
        assert callable(instantiate(cfg.transforms.train)) and callable(instantiate(cfg.transforms.val))


def test_logger_instantiates(compose_cfg, tmp_path):
    logger = instantiate(compose_cfg().logger, log_dir=str(tmp_path / "tb"))
    logger.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_seed_defaults(compose_cfg):
    cfg = compose_cfg()
    assert (cfg.lr, cfg.batch_size, cfg.seed, cfg.epochs, cfg.iterations_per_epoch) == (1e-4, 8, 42, 1000, 1000)
    assert list(cfg.classes) == ["nuc", "er"]
    assert OmegaConf.to_container(cfg.data.input_array_info) == {"shape": [1, 128, 128], "scale": [8, 8, 8]}
    assert cfg.data.target_array_info == cfg.data.input_array_info
    assert cfg.model_save_path == "checkpoints/{model_name}_{epoch}.pth"
    assert cfg.logs_save_path == "tensorboard/{model_name}"
    assert cfg.model_name == "2d_unet" and cfg.load_model == "latest"


def test_cfg_job_resolve_prints_composed_config(run_main):
    proc = run_main("lr=3e-4", "--cfg", "job", "--resolve", check=True)
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.lr == 3e-4 and cfg.optimizer.lr == 3e-4  # interpolated from the shorthand
    for key in ("batch_size", "seed", "epochs", "iterations_per_epoch", "classes", "model", "optimizer"):
        assert key in cfg
    assert list(cfg.data.input_array_info.shape) == [1, 128, 128]


def test_3d_model_shorthand_composes(run_main):
    proc = run_main("model=3d_unet", "lr=1e-4", "--cfg", "job", check=True)
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.model.spatial_dims == 3 and cfg.lr == 1e-4


def test_help_lists_groups_shorthands_and_examples(run_main):
    out = run_main("--help", check=True).stdout
    assert "model: " in out and "2d_unet" in out and "optimizer: " in out
    for shorthand in ("lr ", "batch_size", "iterations_per_epoch", "load_model", "input_array_info"):
        assert shorthand in out
    assert out.count("python -m cellmap_train") >= 3


@pytest.mark.parametrize("override,expected", [("lr=abc", "lr='abc'"), ("batch_size=-1", "batch_size=-1"), ("epochs=0", "epochs=0")])
def test_bad_shorthand_is_one_line(run_main, tmp_path, override, expected):
    proc = run_main("experiment=demo", override, "hydra.run.dir=run")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_group_option_fails_clearly(run_cli):
    """A real process (the one-line contract as a shell sees it: Hydra's own error, translated)."""
    proc = run_cli("model=nope")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "model/nope" in proc.stderr.splitlines()[0]


def test_label_shape_and_scale_each_follow_the_input_unless_set(compose_cfg):
    cfg = compose_cfg("input_array_info.shape=[1,64,64]", "target_array_info.scale=[16,16,16]")
    assert OmegaConf.to_container(cfg.data.target_array_info, resolve=True) == {"shape": [1, 64, 64], "scale": [16, 16, 16]}
    cfg = compose_cfg("input_array_info={shape:[8,32,32],scale:[4,4,4]}")
    assert OmegaConf.to_container(cfg.data.target_array_info, resolve=True) == {"shape": [8, 32, 32], "scale": [4, 4, 4]}
