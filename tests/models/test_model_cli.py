"""Each model option trains two steps through `python -m cellmap_train`, user models train through
`model._target_`, `model_to_load` picks the checkpoint, and bad model settings fail in one line."""

from __future__ import annotations

import textwrap

import pytest
import torch

OPTIONS = ["2d_unet", "2d_resnet", "3d_unet", "3d_resnet", "vitnet"]


def checkpoint_weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("option", OPTIONS)
def test_each_model_trains_two_steps(run_cli, tmp_path, option):
    # CPU-sized widths (and a 3D sample shape for 3D models) come from conf/experiment_model/demo_<option>.yaml
    run_cli(f"model={option}", "experiment=demo", "trainer=smoke", "hydra.run.dir=run", check=True)
    assert (tmp_path / "run" / "checkpoints" / f"{option}_1.pth").is_file()


def test_model_to_load_picks_the_checkpoint_name(run_cli, tmp_path):
    common = ["experiment=demo", "trainer=smoke", "hydra.run.dir=run", "+model_kwargs.base_features=6"]
    run_cli(*common, "model_name=first", check=True)
    assert checkpoint_weights(tmp_path / "run" / "checkpoints" / "first_1.pth")["head.weight"].shape[1] == 6
    proc = run_cli(*common, "model_name=second", "model_to_load=first", "load_model=latest", check=True)
    assert "Initialised model weights from" in proc.stdout and "first_1.pth" in proc.stdout
    assert (tmp_path / "run" / "checkpoints" / "second_1.pth").is_file()


def test_user_model_trains_from_its_target(run_cli, tmp_path):
    package = tmp_path / "user_code"
    package.mkdir()
    (package / "my_nets.py").write_text(textwrap.dedent("""
        import torch

        class TinyNet(torch.nn.Sequential):
            # the chosen model option's other arguments (spatial_dims, depth, ...) arrive in **unused
            def __init__(self, in_channels, out_channels, foo, **unused):
                super().__init__(torch.nn.Conv2d(in_channels, foo, 3, padding=1), torch.nn.ReLU(),
                                 torch.nn.Conv2d(foo, out_channels, 1))
    """))
    run_cli("experiment=demo", "trainer=smoke", "hydra.run.dir=run", "model._target_=my_nets.TinyNet", "+model.foo=5",
            "model_name=tiny", env={"PYTHONPATH": str(package)}, check=True)
    weights = checkpoint_weights(tmp_path / "run" / "checkpoints" / "tiny_1.pth")
    assert weights["0.weight"].shape == (5, 1, 3, 3) and weights["2.weight"].shape == (3, 5, 1, 1)


@pytest.mark.parametrize("overrides,message", [
    (["model=vitnet", "input_array_info.shape=[1,100,96]"],
     "cellmap_train: error: vitnet: input shape [1, 100, 96] must be divisible by the patch grid (patch_size=8"),
    (["+model_kwargs.widht=4"], "cellmap_train: error: model: cellmap_train.models.UNet has no argument 'widht'"),
    (["model=custom"], "cellmap_train: error: model._target_ is not set"),
])
def test_bad_model_settings_fail_in_one_line(run_cli, tmp_path, overrides, message):
    proc = run_cli("experiment=demo", "trainer=smoke", "hydra.run.dir=run", *overrides)
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("experiment,model,classes", [("train_2D", "2d_unet", 2), ("train_3D", "vitnet", 48)])
def test_challenge_examples_compose(compose_cfg, experiment, model, classes):
    from cellmap_train.models.build import build_model

    cfg = compose_cfg(f"experiment={experiment}")
    assert cfg.hydra.runtime.choices.model == model and len(cfg.classes) == classes
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.iterations_per_epoch) == (1e-4, 8, 1000, 1000)
    assert cfg.validation_time_limit == 60 and cfg.load_model == "latest"
    assert build_model(cfg.model).head.out_channels == classes
