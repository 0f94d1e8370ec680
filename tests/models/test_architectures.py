"""The five model options, built from their YAML: default parameter counts, forward + backward at
the default shape (full width, on the meta device) and at another sample shape (real values), and
the errors a wrong shape or argument gives."""

from __future__ import annotations

import pytest
import torch

from cellmap_train.errors import ConfigError
from cellmap_train.config.build import build_model

OPTIONS = ["2d_unet", "2d_resnet", "3d_unet", "3d_resnet", "vitnet"]
# the sample shape each option is meant for: the default 2D shape, or the challenge's train_3D shape
DEFAULT_SHAPES = {"2d_unet": [1, 128, 128], "2d_resnet": [1, 128, 128], "3d_unet": [128, 128, 128],
                  "3d_resnet": [128, 128, 128], "vitnet": [128, 128, 128]}
# with the default widths and 2 classes; a change here changes every user's network
DEFAULT_PARAMETERS = {"2d_unet": 31_036_546, "2d_resnet": 7_828_290, "3d_unet": 22_578_306, "3d_resnet": 23_515_074,
                      "vitnet": 24_521_110}
# full widths are too slow for CPU tests at 128^3: the same code paths at a few features
SMALL = {
    "2d_unet": ["model.base_features=4"],
    "2d_resnet": ["model.ngf=4", "model.n_blocks=1"],
    "3d_unet": ["model.base_features=1"],
    "3d_resnet": ["model.ngf=1", "model.n_blocks=1"],
    "vitnet": ["model.base_features=1", "model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.mlp_dim=32"],
}
# sizes that are not multiples of the models' down-sampling (padded and cropped back), vitnet's divisible by 8
OTHER_SHAPES = {"2d_unet": [1, 100, 76], "2d_resnet": [1, 90, 70], "3d_unet": [20, 36, 44], "3d_resnet": [12, 30, 42],
                "vitnet": [16, 32, 48]}


def shape_override(shape) -> str:
    return f"input_array_info.shape=[{','.join(map(str, shape))}]"


@pytest.fixture
def build(compose_cfg):
    def build_option(option: str, shape, *overrides: str, model_kwargs: dict | None = None) -> torch.nn.Module:
        cfg = compose_cfg(f"model={option}", shape_override(shape), *overrides)
        return build_model(cfg.model, model_kwargs)

    return build_option


def batch_for(shape, batch_size: int) -> torch.Tensor:
    spatial = shape[1:] if shape[0] == 1 else shape  # the data layer squeezes z for [1,H,W] samples
    return torch.rand(batch_size, 1, *spatial)


def forward_backward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    out.float().square().mean().backward()
    return out


def assert_trains(model: torch.nn.Module, x: torch.Tensor, classes: int = 2) -> None:
    out = forward_backward(model, x)
    assert out.shape == (x.shape[0], classes, *x.shape[2:])
    assert out.dtype == torch.float32
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing}"


@pytest.mark.parametrize("option", OPTIONS)
def test_default_parameter_count_is_stable(build, option):
    with torch.device("meta"):  # counting needs no initial values
        model = build(option, DEFAULT_SHAPES[option])
    count = sum(p.numel() for p in model.parameters())
    print(f"{option}: {count:,} parameters")
    assert count == DEFAULT_PARAMETERS[option]


@pytest.mark.parametrize("option", OPTIONS)
def test_forward_backward_at_default_shape(build, option):
    """The full-width network every user gets, on the meta device: shapes and the graph are real,
    values are not computed (a real 3D pass at 128^3 takes tens of seconds on a CPU). Finite
    gradients are checked with real values at the other shape below."""
    shape = DEFAULT_SHAPES[option]
    with torch.device("meta"):
        model = build(option, shape)
        x = batch_for(shape, 2 if shape[0] == 1 else 1)
    out = forward_backward(model, x)
    assert out.shape == (x.shape[0], 2, *x.shape[2:])
    assert out.dtype == torch.float32
    assert not [name for name, p in model.named_parameters() if p.grad is None]


@pytest.mark.parametrize("option", OPTIONS)
def test_forward_backward_at_another_shape(build, option):
    shape = OTHER_SHAPES[option]
    model = build(option, shape, *SMALL[option])
    assert_trains(model, batch_for(shape, 2))


def test_vitnet_takes_2d_from_a_slice_shape(build):
    model = build("vitnet", [1, 64, 96], *SMALL["vitnet"])
    assert model.spatial_dims == 2
    assert_trains(model, batch_for([1, 64, 96], 2))


def test_vitnet_runs_other_divisible_shapes_by_interpolating_positions(build):
    model = build("vitnet", [16, 32, 32], *SMALL["vitnet"])
    assert_trains(model, batch_for([16, 48, 32], 1))


@pytest.mark.parametrize("option,shape,overrides,message", [
    ("vitnet", [1, 100, 96], [], "input shape [1, 100, 96] must be divisible by the patch grid"),
    ("vitnet", [128, 128, 120], ["model.patch_size=16"], "must be divisible by the patch grid (patch_size=16"),
    ("vitnet", [1, 96, 96], ["model.spatial_dims=3"], "is a 2D slice but spatial_dims=3"),
    ("vitnet", [64, 64, 64], ["model.patch_size=6"], "patch_size must be a power of two"),
    ("vitnet", [64, 64, 64], ["model.embed_dim=250"], "embed_dim=250 must be divisible by num_heads=12"),
    ("2d_resnet", [1, 64, 64], ["model.norm=group"], "norm must be batch, instance or none"),
    ("3d_resnet", [32, 32, 32], ["model.padding_mode=circular"], "padding_mode must be one of"),
    ("2d_unet", [1, 64, 64], ["model.upsample=cubic"], "upsample must be transpose"),
    ("3d_unet", [32, 32, 32], ["model.depth=0"], "depth=0"),
])
def test_bad_model_settings_fail_at_config_time(build, option, shape, overrides, message):
    with pytest.raises(ConfigError) as err:
        build(option, shape, *overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("option", ["3d_unet", "3d_resnet"])
def test_3d_model_given_2d_batches_says_which_shape_to_use(build, option):
    model = build(option, [16, 32, 32], *SMALL[option])
    with pytest.raises(ConfigError, match=r"got a batch of shape \[2, 1, 32, 32\]: set input_array_info.shape=\[D,H,W\]"):
        model(torch.rand(2, 1, 32, 32))


def test_model_kwargs_override_constructor_arguments(build):
    model = build("2d_unet", [1, 64, 64], model_kwargs={"base_features": 3, "depth": 2})
    assert model.head.in_channels == 3 and model.depth == 2


def test_unknown_argument_is_named(build):
    with pytest.raises(ConfigError, match=r"UNet has no argument 'widht' \(from model.<name> or model_kwargs\); "
                                          r"it takes spatial_dims, in_channels"):
        build("2d_unet", [1, 64, 64], model_kwargs={"widht": 3})


def test_custom_model_needs_a_target(build):
    with pytest.raises(ConfigError, match=r"model._target_ is not set"):
        build("custom", [1, 64, 64])


def test_custom_model_gets_only_its_own_arguments(build, tmp_path, monkeypatch):
    (tmp_path / "strict_net.py").write_text(
        "import torch\n"
        "class StrictNet(torch.nn.Conv2d):\n"
        "    def __init__(self, in_channels, out_channels, kernel):\n"
        "        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build("custom", [1, 64, 64], "model._target_=strict_net.StrictNet", "+model.kernel=3")
    assert model.kernel_size == (3, 3) and model.out_channels == 2
    with pytest.raises(ConfigError, match=r"cannot import it \(No module named 'missing_pkg'\)"):
        build("custom", [1, 64, 64], "model._target_=missing_pkg.Net")
