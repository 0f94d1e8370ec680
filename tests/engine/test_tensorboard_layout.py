"""What TensorBoard shows, read back from the event files the logger writes: hyper-parameters in
the HParams tab only (no single-point `hparam/*` scalar cards in the time series, no sub-run), its
metrics the run's own series; sample grids whose rows are named (raw / target / prediction)."""

from __future__ import annotations

import io

import numpy as np
import torch

from cellmap_train.engine.tensorboard import ROW_NAMES, TensorBoardLogger, _grid

CLASSES = ["nuc", "er"]


def accumulators(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = []
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
        acc.Reload()
        found.append((events, acc))
    return found


def logged_run(log_dir, n=3, size=24):
    logger = TensorBoardLogger(log_dir)
    for epoch in (1, 2):
        logger.scalars({"loss/train": 0.5 / epoch}, epoch * 10)
        logger.scalars({"loss/val": 0.6 / epoch, "dice/mean": 0.3 * epoch, "dice/nuc": 0.4,
                        "dice/er": float("nan")}, epoch)
    raw = torch.rand(n, 1, size, size) * 255
    target = (torch.rand(n, len(CLASSES), size, size) > 0.5).float()
    prob = torch.rand(n, len(CLASSES), size, size)
    logger.images(raw, target, prob, CLASSES, 2)
    logger.hparams({"lr": 3e-3, "batch_size": 8, "model": "2d_unet", "freeze": "", "classes": ["nuc", "er"]},
                   {"best/dice/mean": 0.6, "dice/mean": 0.6, "dice/nuc": 0.4, "dice/er": None, "loss/val": 0.3})
    logger.close()
    return raw, target, prob


def test_hyper_parameters_are_in_the_hparams_tab_only(tmp_path):
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    logged_run(tmp_path)
    [(events, acc)] = accumulators(tmp_path)  # one event file, in the run's own folder: no sub-run
    assert events.parent == tmp_path
    assert set(acc.Tags()["scalars"]) == {"loss/train", "loss/val", "dice/mean", "dice/nuc"}  # no hparam/* card
    content = acc.PluginTagToContent("hparams")
    assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["lr"].number_value == 3e-3 and start.hparams["batch_size"].number_value == 8
    assert start.hparams["model"].string_value == "2d_unet" and start.hparams["classes"].string_value == "['nuc', 'er']"
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    # the metrics are series the run logs (the tab shows their last value); best/... is not one
    assert [info.name.tag for info in experiment.metric_infos] == ["dice/mean", "dice/nuc", "loss/val"]
    assert all(info.name.group == "" for info in experiment.metric_infos)


def test_each_sample_grid_names_its_rows(tmp_path):
    from PIL import Image

    raw, target, prob = logged_run(tmp_path, n=3, size=24)
    [(_, acc)] = accumulators(tmp_path)
    assert set(acc.Tags()["images"]) == {"samples/nuc", "samples/er"}
    [event] = acc.Images("samples/nuc")
    assert event.step == 2
    shown = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("L"), dtype=np.float32) / 255
    grid = _grid(torch.cat([raw / 255, target[:, :1], prob[:, :1]]), columns=3)[0].numpy()
    height, width = grid.shape
    assert shown.shape[0] == height and shown.shape[1] > width + 20  # a column of names on the left
    # the grid is drawn as before, raw rescaled to 0..1 per sample (PNG: 8 bits)
    assert np.abs(shown[:, -width:][:24, :24] - _rescaled(raw[0, 0])).max() <= 1 / 255 + 1e-6
    assert np.abs(shown[:, -width:][26:50, :24] - target[0, 0].numpy()).max() <= 1 / 255 + 1e-6
    column = shown[:, : shown.shape[1] - width]
    bands = np.array_split(np.arange(height), len(ROW_NAMES))
    inked = [int((column[band] < 0.5).sum()) for band in bands]
    assert all(ink > 10 for ink in inked), inked  # a name on each row
    words = [column[band][:20] < 0.5 for band in bands]  # the same height of each band
    assert not np.array_equal(words[0], words[1]) and not np.array_equal(words[1], words[2])
    # "prediction" is the longest name: it reaches furthest right
    reach = [np.nonzero((column[band] < 0.5).any(axis=0))[0].max() for band in bands]
    assert reach[2] > reach[0] and reach[2] > reach[1]


def _rescaled(image: torch.Tensor) -> np.ndarray:
    values = image.numpy()
    return (values - values.min()) / (values.max() - values.min())
