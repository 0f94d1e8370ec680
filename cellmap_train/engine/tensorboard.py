"""TensorBoard logging: scalars, per-class image grids with labelled rows, and hyper-parameters
for the HParams tab alone (no `hparam/*` scalars in the time series)."""

from __future__ import annotations

import functools
import math
import os
import threading
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch.utils.tensorboard import SummaryWriter

from cellmap_train.files import RunWriteError, write_error


def _one_line_writes(method):
    """A write that fails (full disk, no permission), here or in the writer's thread (which
    keeps the error for the next call), ends the run in one line naming the event file."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as err:
            if isinstance(err, RunWriteError):
                raise
            writer = getattr(self, "writer", None)
            where = writer.file_writer.get_logdir() if writer is not None and writer.file_writer else self.log_dir
            files = sorted(Path(where).glob("events.out.tfevents.*")) if os.access(where, os.R_OK) else []
            raise RunWriteError(write_error(files[-1] if files else where, err)) from None
    return call


@functools.cache
def quiet_writer_thread_errors() -> None:
    """The event writer's thread keeps a failed write's OSError for the next call in the main
    thread (reported there in one line) and also lets it reach threading's hook, which prints a
    traceback: leave that one out."""
    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    previous = threading.excepthook

    def hook(args) -> None:
        if not (isinstance(args.thread, _AsyncWriterThread) and issubclass(args.exc_type, OSError)):
            previous(args)

    threading.excepthook = hook


class TensorBoardLogger:
    @_one_line_writes
    def __init__(self, log_dir: str | os.PathLike, flush_secs: int = 30, images_per_class: int = 4):
        quiet_writer_thread_errors()
        self.log_dir = str(log_dir)
        self.images_per_class = images_per_class
        self.writer = None
        self.writer = SummaryWriter(self.log_dir, flush_secs=flush_secs)
        self.series: set[str] = set()  # scalar tags written: the metrics the HParams tab can show

    @_one_line_writes
    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.writer.add_scalar(tag, float(value), step)
                self.series.add(tag)

    @_one_line_writes
    def images(self, raw: torch.Tensor, target: torch.Tensor, prob: torch.Tensor, classes: Sequence[str], step: int) -> None:
        """One grid per class: rows raw / target / prediction for a few samples (middle z for 3D),
        each row named in a column on its left. Unknown target voxels are drawn at 0.5 grey. Raw
        is drawn at the labels' size when they differ (a model that predicts at a coarser voxel size)."""
        if raw.ndim == 5:  # N, C, Z, Y, X -> middle slice of each
            raw, target, prob = (volume[:, :, volume.shape[2] // 2] for volume in (raw, target, prob))
        n = min(self.images_per_class, raw.shape[0])
        raw = raw[:n].float()
        if raw.shape[2:] != target.shape[2:]:
            raw = torch.nn.functional.interpolate(raw, size=tuple(target.shape[2:]), mode="area")
        lo, hi = raw.amin(dim=(1, 2, 3), keepdim=True), raw.amax(dim=(1, 2, 3), keepdim=True)
        shown_raw = (raw - lo) / (hi - lo).clamp_min(1e-8)
        for c, cls in enumerate(classes):
            truth = torch.nan_to_num(target[:n, c : c + 1], nan=0.5)
            rows = torch.cat([shown_raw, truth, prob[:n, c : c + 1].float()], dim=0)  # 3n x 1 x H x W
            grid = _labelled(_grid(rows, columns=n), ROW_NAMES)
            self.writer.add_image(f"samples/{cls}", grid, step, dataformats="CHW")

    @_one_line_writes
    def hparams(self, params: Mapping[str, object], metrics: Mapping[str, float]) -> None:
        """The run's hyper-parameters for the HParams tab, with `metrics` among the scalar tags
        this run logs: the tab shows each one's last value from its own time series. A metric
        that is not a series here (`best/...`) is left out: written as a scalar it would be one
        more single-point card in the time series (SummaryWriter.add_hparams writes such cards,
        `hparam/*`, one per metric). The three summaries go to the run's own event file."""
        from torch.utils.tensorboard.summary import hparams

        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
        shown = {tag: float(value) for tag, value in metrics.items() if tag in self.series and value is not None}
        for summary in hparams(clean, shown):  # experiment, session start, session end
            self.writer.file_writer.add_summary(summary)

    @_one_line_writes
    def flush(self) -> None:
        self.writer.flush()

    @_one_line_writes
    def close(self) -> None:
        self.writer.close()


ROW_NAMES = ("raw", "target", "prediction")


def _grid(images: torch.Tensor, columns: int, pad: int = 2) -> torch.Tensor:
    """Tile N x 1 x H x W images into a 1 x H' x W' grid, `columns` per row (no torchvision needed)."""
    count, _, height, width = images.shape
    rows = math.ceil(count / columns)
    grid = torch.ones(1, rows * (height + pad) - pad, columns * (width + pad) - pad)
    for i in range(count):
        r, c = divmod(i, columns)
        grid[:, r * (height + pad) : r * (height + pad) + height, c * (width + pad) : c * (width + pad) + width] = images[i].clamp(0, 1)
    return grid


def _labelled(grid: torch.Tensor, names: Sequence[str], pad: int = 2) -> torch.Tensor:
    """`grid` (1 x H x W, len(names) rows of tiles) with a white column on its left naming each
    row, the name centred on its row, drawn with Pillow's built-in font (Pillow is what
    SummaryWriter.add_image encodes with)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    _, height, _ = grid.shape
    row_height = (height + pad) / len(names)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    width = int(max(probe.textlength(name, font=font) for name in names)) + 2 * pad + 2
    column = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(column)
    for i, name in enumerate(names):
        _, top, _, bottom = draw.textbbox((0, 0), name, font=font)
        draw.text((pad, (i + 0.5) * row_height - (top + bottom) / 2), name, fill=0, font=font)
    drawn = torch.frombuffer(bytearray(column.tobytes()), dtype=torch.uint8).reshape(1, height, width) / 255.0
    return torch.cat([drawn, torch.ones(1, height, pad), grid], dim=2)
