"""trainer.channels_last: weights and batches in NHWC/NDHWC, the same numbers as the default layout."""

from __future__ import annotations

import pytest
import torch

from cellmap_train.engine.checkpoint import read_checkpoint
from cellmap_train.engine.channels_last import FORMATS, model_to_channels_last, to_channels_last, wants_channels_last
from cellmap_train.models import UNet
from engine_helpers import fit_tiny


def is_channels_last(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous(memory_format=FORMATS[tensor.dim()]) and not tensor.is_contiguous()


def test_null_means_on_for_cpu_only_and_a_bool_forces_it():
    assert wants_channels_last(None, torch.device("cpu"))
    assert not wants_channels_last(None, torch.device("cuda"))
    assert not wants_channels_last(None, torch.device("mps"))
    assert wants_channels_last(True, torch.device("cuda"))
    assert not wants_channels_last(False, torch.device("cpu"))


def test_a_model_with_2d_and_3d_weights_keeps_its_parameter_objects():
    model = torch.nn.ModuleDict({"flat": torch.nn.Conv2d(3, 4, 3), "deep": torch.nn.Conv3d(3, 4, 3)})
    params = list(model.parameters())
    model_to_channels_last(model)
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]  # the optimizer still holds these
    assert is_channels_last(model.flat.weight) and is_channels_last(model.deep.weight)
    assert model.flat.bias.is_contiguous()
    batch = torch.randn(2, 3, 5, 6)
    assert is_channels_last(to_channels_last(batch))
    assert to_channels_last(torch.randn(4, 5)).is_contiguous()


@pytest.mark.parametrize("spatial_dims, shape", [(2, (2, 1, 24, 20)), (3, (1, 1, 8, 12, 12))])
def test_channels_last_computes_the_same_forward_and_gradients(spatial_dims, shape):
    torch.manual_seed(0)
    plain = UNet(spatial_dims=spatial_dims, in_channels=1, out_channels=3, base_features=4, depth=2)
    last = UNet(spatial_dims=spatial_dims, in_channels=1, out_channels=3, base_features=4, depth=2)
    last.load_state_dict(plain.state_dict())
    model_to_channels_last(last)
    x = torch.randn(shape)
    out_plain, out_last = plain(x), last(to_channels_last(x))
    torch.testing.assert_close(out_last, out_plain, rtol=1e-4, atol=1e-5)
    out_plain.square().mean().backward()
    out_last.square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), last.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("setting", [None, False])
def test_fit_trains_in_the_layout_asked_and_its_checkpoint_loads_anywhere(setting, tiny_data, unet_model,
                                                                          make_settings, tmp_path):
    model = unet_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    fit_tiny(make_settings(epochs=1, channels_last=setting), model, tiny_data, optimizer=optimizer)
    conv = next(p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1)  # 1 channel: either layout
    assert is_channels_last(conv) == (setting is None)  # null: on, since the device is the CPU
    # the optimizer's moments follow the weights' layout, so its update is not a strided slow path
    assert optimizer.state[conv]["exp_avg"].stride() == conv.stride()
    # a fresh model in the default layout takes the checkpoint's weights and predicts the same
    fresh = unet_model()
    fresh.load_state_dict(read_checkpoint(tmp_path / "checkpoints" / "tiny_1.pth")["model"])
    raw, _ = next(iter(tiny_data.val_loader()))
    model.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(raw), model(to_channels_last(raw)), rtol=1e-4, atol=1e-5)
