"""Each model option trains two steps through `python -m cellmap_train` (run in this process:
tests/inprocess.py), user models train through `model._target_`, `model_to_load` picks the
checkpoint, and bad model settings fail in one line."""

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
def test_each_model_trains_two_steps(run_main, tmp_path, option):
    # CPU-sized widths (and a 3D sample shape for 3D models) come from conf/experiment_model/demo_<option>.yaml
    run_main(f"model={option}", "experiment=demo", "trainer=smoke", "hydra.run.dir=run", check=True)
    assert (tmp_path / "run" / "checkpoints" / f"{option}_1.pth").is_file()


def test_model_to_load_picks_the_checkpoint_name(run_main, tmp_path):
    common = ["experiment=demo", "trainer=smoke", "hydra.run.dir=run", "+model_kwargs.base_features=6"]
    run_main(*common, "model_name=first", check=True)
    assert checkpoint_weights(tmp_path / "run" / "checkpoints" / "first_1.pth")["head.weight"].shape[1] == 6
    proc = run_main(*common, "model_name=second", "model_to_load=first", "load_model=latest", check=True)
    assert "Initialised model weights from" in proc.stdout and "first_1.pth" in proc.stdout
    assert (tmp_path / "run" / "checkpoints" / "second_1.pth").is_file()


def test_user_model_trains_from_its_target(run_main, tmp_path):
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
    run_main("experiment=demo", "trainer=smoke", "hydra.run.dir=run", "model._target_=my_nets.TinyNet", "+model.foo=5",
            "model_name=tiny", env={"PYTHONPATH": str(package)}, check=True)
    weights = checkpoint_weights(tmp_path / "run" / "checkpoints" / "tiny_1.pth")
    assert weights["0.weight"].shape == (5, 1, 3, 3) and weights["2.weight"].shape == (3, 5, 1, 1)


@pytest.mark.parametrize("overrides,message", [
    (["model=vitnet", "input_array_info.shape=[1,100,96]"],
     "cellmap_train: error: vitnet: input shape [1, 100, 96] must be divisible by the patch grid (patch_size=8"),
    (["+model_kwargs.widht=4"], "cellmap_train: error: model: cellmap_train.models.UNet has no argument 'widht'"),
    (["model=custom"], "cellmap_train: error: model._target_ is not set"),
])
def test_bad_model_settings_fail_in_one_line(run_main, tmp_path, overrides, message):
    proc = run_main("experiment=demo", "trainer=smoke", "hydra.run.dir=run", *overrides)
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("experiment,model,classes", [("train_2D", "2d_unet", 2), ("train_3D", "vitnet", 48)])
def test_challenge_examples_compose(compose_cfg, experiment, model, classes):
    from cellmap_train.config.build import build_model
    from cellmap_train.config.preflight import check_output_fits_labels, meta_forward

    cfg = compose_cfg(f"experiment={experiment}")
    assert cfg.hydra.runtime.choices.model == model and len(cfg.classes) == classes
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.iterations_per_epoch) == (1e-4, 8, 1000, 1000)
    assert cfg.validation_time_limit == 60 and cfg.load_model == "latest"
    assert build_model(cfg.model).head.out_channels == classes
    meta = meta_forward(cfg)
    assert meta is not None and meta.kept_per_sample > 0
    check_output_fits_labels(cfg, meta)  # the model's output (found on the meta device) has the labels' shape


USER_NETS = """
import torch


class HalfNet(torch.nn.Module):
    # predicts at half the input's resolution: labels at twice the voxel size, over the same field
    def __init__(self, in_channels, out_channels, **unused):
        super().__init__()
        self.conv, self.pool = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1), torch.nn.AvgPool2d(2)

    def forward(self, x):
        return self.pool(self.conv(x))


class OpaqueNet(HalfNet):
    # reads a value in forward, so the meta device cannot tell its output shape before training
    def forward(self, x):
        return self.pool(self.conv(x)) if float(x.abs().sum()) >= 0 else x


class GreedyNet(torch.nn.Conv2d):
    # runs out of memory at its training forward number `fail_at`, as a GPU would
    def __init__(self, in_channels, out_channels, fail_at, **unused):
        super().__init__(in_channels, out_channels, 3, padding=1)
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x):
        if torch.is_grad_enabled() and x.device.type != "meta":
            self.calls += 1
            if self.calls == self.fail_at:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has 1.2 GiB free")
        return super().forward(x)
"""


@pytest.fixture
def user_nets(tmp_path) -> dict:
    package = tmp_path / "user_code"
    package.mkdir()
    (package / "user_nets.py").write_text(USER_NETS)
    return {"PYTHONPATH": str(package)}


def test_a_model_predicting_at_half_resolution_trains_on_labels_of_twice_the_voxel_size(run_main, tmp_path, user_nets):
    proc = run_main("experiment=demo", "trainer=smoke", "hydra.run.dir=run", "model=custom", "model._target_=user_nets.HalfNet",
                   "target_array_info.scale=[16,16,16]", "target_array_info.shape=[1,48,48]", env=user_nets, check=True)
    assert "Validation Dice" in proc.stdout and (tmp_path / "run" / "checkpoints" / "custom_1.pth").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images = []
    for events in (tmp_path / "run" / "tensorboard" / "custom").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        images += accumulator.Images("samples/nuc") if "samples/nuc" in accumulator.Tags()["images"] else []
    # rows raw / labels / prediction of 4 samples, raw drawn at the labels' 48 x 48 (not its 96 x 96),
    # after a column naming the rows (as wide as the font draws "prediction")
    assert len(images) == 1 and images[0].height == 3 * 48 + 2 * 2
    assert 0 < images[0].width - (4 * 48 + 3 * 2) <= 80


@pytest.mark.parametrize("overrides,message", [
    # every shipped model predicts at the input's voxel size: a label scale of its own would misalign them silently
    (["target_array_info.scale=[16,16,16]"], "model=2d_unet outputs at the input's voxel size (8x8 nm), but "
                                             "target_array_info.scale=[16, 16, 16]: its output would be compared"),
    (["target_array_info.shape=[1,48,48]"], "model=2d_unet outputs 96x96 voxels for input_array_info.shape=[1, 96, 96], "
                                            "but target_array_info.shape=[1, 48, 48]: the output and the labels must"),
    (["model=custom", "model._target_=user_nets.HalfNet", "target_array_info.shape=[1,96,96]"],
     "model=custom outputs 48x48 voxels for input_array_info.shape=[1, 96, 96], but target_array_info.shape=[1, 96, 96]"),
    (["model=custom", "model._target_=user_nets.HalfNet", "target_array_info={shape:[1,48,48],scale:[32,32,32]}"],
     "target_array_info covers 1536x1536 nm, more than input_array_info's 768x768 nm: the labels would reach past"),
    # no meta-device answer: the loss says it at the first step, before any checkpoint
    (["model=custom", "model._target_=user_nets.OpaqueNet"],
     "the model's output [8, 3, 48, 48] and the labels [8, 3, 96, 96] differ in shape: target_array_info.shape must be"),
])
def test_labels_that_do_not_fit_the_models_output_fail_in_one_line(run_main, tmp_path, user_nets, overrides, message):
    proc = run_main("experiment=demo", "trainer=smoke", "hydra.run.dir=run", *overrides, env=user_nets)
    assert proc.returncode == 1
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(f"cellmap_train: error: {message}"), proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_out_of_memory_at_a_step_is_one_line_and_keeps_earlier_checkpoints(run_main, tmp_path, user_nets):
    # two steps per epoch: the third training forward is epoch 2's first, after epoch 1's checkpoint
    proc = run_main("experiment=demo", "epochs=2", "iterations_per_epoch=2", "validation_batch_limit=1", "hydra.run.dir=run",
                   "model=custom", "model._target_=user_nets.GreedyNet", "+model.fail_at=3", env=user_nets)
    assert proc.returncode == 1
    lines = error_lines(proc)
    assert lines[-1].startswith("cellmap_train: error: out of memory (CUDA out of memory. Tried to allocate 20.00 GiB. "
                                "GPU 0 has 1.2 GiB free): lower batch_size or input_array_info.shape"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["custom_1.pth"]
