"""`trainer.compile=true`: the loop trains through `torch.compile` (inductor, a C compiler on
CPU) and saves the plain model's weights, so a compiled run's checkpoint loads into an eager one."""

from __future__ import annotations

import shutil

import pytest
import torch

from cellmap_train.engine.checkpoint import read_checkpoint
from engine_helpers import fit_tiny

pytestmark = [pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                 reason="torch.compile on CPU needs a C compiler"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]  # inductor's own


def train(settings, model, data) -> dict:
    fit_tiny(settings, model, data)
    return read_checkpoint(f"{settings.run_dir}/checkpoints/tiny_1.pth")


def test_compiled_training_matches_eager_and_saves_plain_weights(tiny_data, conv_model, make_settings, tmp_path):
    eager = train(make_settings(epochs=1, run_dir=str(tmp_path / "eager")), conv_model(), tiny_data)
    compiled_model = conv_model()
    torch._dynamo.reset()
    compiled = train(make_settings(epochs=1, compile=True, run_dir=str(tmp_path / "compiled")), compiled_model, tiny_data)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile, not fall back to eager
    assert compiled["model"].keys() == eager["model"].keys()  # no "_orig_mod." prefixes
    for name, value in eager["model"].items():
        torch.testing.assert_close(compiled["model"][name], value, rtol=1e-3, atol=1e-4, msg=name)
    fresh = conv_model()
    fresh.load_state_dict(compiled["model"])  # an eager model takes the compiled run's weights
