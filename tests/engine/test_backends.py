"""trainer.cudnn_benchmark and trainer.num_threads: the process-wide torch switches a run sets."""

from __future__ import annotations

import pytest
import torch

from cellmap_train.engine import TrainSettings
from cellmap_train.engine.settings import set_backends
from cellmap_train.errors import ConfigError
from engine_helpers import fit_tiny


@pytest.fixture
def restore_backends():
    saved = torch.backends.cudnn.benchmark, torch.get_num_threads()
    yield
    torch.backends.cudnn.benchmark = saved[0]
    torch.set_num_threads(saved[1])


@pytest.mark.parametrize("setting, deterministic, device, expected", [
    (None, False, "cuda", True),   # the default on a GPU: shapes are fixed, autotuning pays
    (None, True, "cuda", False),   # a deterministic run must not let the timings choose
    (None, False, "cpu", False),
    (None, False, "mps", False),
    (False, False, "cuda", False),
    (True, False, "cpu", True),    # asked for: set as asked (cuDNN is simply unused on CPU)
])
def test_cudnn_autotuner_follows_the_device_unless_set(restore_backends, setting, deterministic, device, expected):
    torch.backends.cudnn.benchmark = not expected
    settings = TrainSettings(device="cpu", cudnn_benchmark=setting, deterministic=deterministic)
    set_backends(settings, torch.device(device))
    assert torch.backends.cudnn.benchmark is expected


def test_autotuner_and_deterministic_together_are_refused():
    with pytest.raises(ConfigError, match="cudnn_benchmark=true contradicts trainer.deterministic=true"):
        TrainSettings(device="cpu", cudnn_benchmark=True, deterministic=True)


def test_fit_sets_the_switches(restore_backends, tiny_data, conv_model, make_settings):
    torch.backends.cudnn.benchmark = False
    torch.set_num_threads(2)
    fit_tiny(make_settings(cudnn_benchmark=True, num_threads=1, epochs=1), conv_model(), tiny_data)
    assert torch.backends.cudnn.benchmark is True and torch.get_num_threads() == 1
