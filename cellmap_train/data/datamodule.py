"""`CellMapData`: everything the engine needs from the data, built from one config group.

It makes the demo data and the datasplit CSV when they are missing, opens every crop once to
check it (so bad data fails before training starts) and hands out DataLoaders.
"""

from __future__ import annotations

import atexit
import difflib
import functools
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from cellmap_train.data.chunks import ChunkCache
from cellmap_train.data.class_relations import exclusive_partners
from cellmap_train.data.array_info import ArrayInfo
from cellmap_train.data.dataset import (CountingSampler, Crop, RandomCropDataset, ShardedBatches, ValidationTileDataset,
                                         positive_weights)
from cellmap_train.data.datasplit import label_names_on_disk, make_datasplit_csv, read_datasplit
from cellmap_train.data.demo import ensure_demo_data
from cellmap_train.data.ngff import map_concurrently
from cellmap_train.data.raw_values import unit_normalized, warn_of_raw_values
from cellmap_train.data.transforms import SampleTransforms
from cellmap_train.errors import ConfigError, DataError, UserError, first_line

log = logging.getLogger(__name__)


class _UserErrorsFromWorkers:
    """Iterator wrapper: a DataError raised in a worker arrives as 'Caught DataError in
    DataLoader worker ...' plus the worker's traceback; re-raise it as its own one line."""

    def __init__(self, iterator):
        self.iterator = iterator

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self.iterator)
        except UserError as err:
            text = str(err)
            if not text.startswith("Caught "):
                raise
            marker = f"{type(err).__name__}: "
            last = next((line for line in reversed(text.splitlines()) if marker in line), text.splitlines()[0])
            raise type(err)(last.split(marker, 1)[1]) from None

    def __len__(self):
        return len(self.iterator)


class CellMapLoader(DataLoader):
    """A DataLoader whose worker errors keep the one-line message of the user error."""

    def __iter__(self):
        return _UserErrorsFromWorkers(super().__iter__())


STANDARD_START_METHODS = (None, "fork", "spawn", "forkserver")
LOADER_ARGUMENTS_SET_HERE = {"dataset", "batch_size", "shuffle", "sampler", "batch_sampler"}


class LeaveSignalsToMain:
    """worker_init_fn: a terminal's Ctrl-C signals the whole process group, and so do Slurm (at its
    time limit) and torchrun (when it is stopped) with SIGTERM, workers included. Workers ignore
    both and leave them to the main process, which finishes the step, writes its checkpoint and
    then stops them through their queues (a worker whose main process is gone exits on its own
    within seconds; SIGKILL still works). Runs `then` (the configured worker_init_fn) afterwards;
    picklable for spawn."""

    def __init__(self, then=None):
        self.then = then

    def __call__(self, worker_id: int) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if self.then is not None:
            self.then(worker_id)


def _kill_workers_left() -> None:
    workers = [child for child in multiprocessing.active_children() if child.daemon]  # DataLoader workers
    if not workers:
        return
    if hasattr(signal, "SIGCHLD") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report each as a failed worker
    for worker in workers:
        worker.kill()
    for worker in workers:
        worker.join(timeout=5)


@functools.cache
def kill_workers_left_at_exit() -> None:
    """Workers ignore SIGTERM (LeaveSignalsToMain), and multiprocessing ends the daemonic children
    still running at exit with SIGTERM and then waits for them: a run ending on an error raised
    while its loader was open (a worker's read failing for good) would wait for good. Registered
    after multiprocessing's own exit handler, this one runs first and kills them."""
    atexit.register(_kill_workers_left)


SOCKET_PATH_MAX = 107 if sys.platform.startswith("linux") else 103  # a socket address holds 108 (macOS: 104) bytes
WORKER_SOCKET = len("/pymp-12345678/listener-12345678")  # where multiprocessing puts it, under the temp dir


def check_worker_socket_path() -> None:
    """DataLoader workers hand each batch's shared memory over as a file descriptor, through a
    Unix socket that multiprocessing makes under TMPDIR. When that path is too long for a socket
    address, every worker drops its batches (an `AF_UNIX path too long` traceback each) and the
    run waits for them for good: say so before training instead."""
    if torch.multiprocessing.get_sharing_strategy() != "file_descriptor":
        return
    length = len(tempfile.gettempdir()) + WORKER_SOCKET
    if length > SOCKET_PATH_MAX:
        raise ConfigError(f"TMPDIR={tempfile.gettempdir()}: too long for the sockets DataLoader workers pass batches "
                          f"through ({length} characters, at most {SOCKET_PATH_MAX}); use a shorter TMPDIR "
                          f"(e.g. TMPDIR=/tmp) or data.dataloader_kwargs.num_workers=0")


def open_crops(crops: Sequence[Crop], threads: int, input_info: ArrayInfo, target_info: ArrayInfo) -> None:
    """Open the crops, `threads` at a time (each array at the level its voxel size is read from),
    and say how they meet the requested voxel sizes: a raw with no level as fine as the request
    warns once per dataset (its samples are upsampled), labels annotated only coarser are used,
    upsampled, with one line in all."""
    map_concurrently(Crop.open, crops, threads)
    coarse_raw = {crop.raw_level.path: crop.raw_level for crop in crops if _coarser(crop.raw_level.scale, input_info.scale)}
    for path, level in coarse_raw.items():
        log.warning("%s: no level as fine as the requested %s nm; samples are upsampled from it (x%s)", path,
                    _nm(input_info.scale), _nm(np.asarray(level.scale) / np.asarray(input_info.scale)))
    coarse = [level for crop in crops for level in crop.known if _coarser(level.scale, target_info.scale)]
    resampled = [level for crop in crops for level in [crop.raw_level, *crop.known]
                 if not np.allclose(level.scale, input_info.scale if level is crop.raw_level else target_info.scale)]
    if resampled:
        log.info("%d of %d arrays have no level at the requested voxel size and are resampled from the level chosen "
                 "for them%s", len(resampled), sum(1 + len(crop.known) for crop in crops),
                 f"; {len(coarse)} class arrays annotated only coarser than {_nm(target_info.scale)} nm are upsampled "
                 f"(data.filter_by_scale leaves such classes out)" if coarse else "")


def scale_filter(filter_by_scale, target_scale: Sequence[float]) -> Sequence[float] | None:
    """The challenge's `filter_by_scale` as the voxel size a class's finest level must reach to be
    listed in a new datasplit: true = the target's, a number or [z,y,x] = that, false = no filter."""
    if filter_by_scale is None or filter_by_scale is False:
        return None
    if filter_by_scale is True:
        return tuple(target_scale)
    values = list(filter_by_scale) if isinstance(filter_by_scale, Sequence) and not isinstance(filter_by_scale, str) \
        else [filter_by_scale]
    if len(values) not in (1, 3) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
        raise ConfigError(f"data.filter_by_scale={filter_by_scale!r}: must be true, false, a voxel size in nm or [z,y,x]")
    return tuple(float(v) for v in (values * 3 if len(values) == 1 else values))


def _coarser(scale: Sequence[float], wanted: Sequence[float]) -> bool:
    return bool(np.any(np.asarray(scale) > np.asarray(wanted) * (1 + 1e-6)))


def _nm(values: Sequence[float]) -> str:
    return "x".join(f"{v:g}" for v in values)


def warn_of_unannotated_classes(classes: Sequence[str], crops: Mapping[str, Sequence[Crop]], datasplit_path: Path,
                                storage_options: Mapping | None = None,
                                exclusive: Sequence[tuple[int, ...]] | None = None) -> None:
    """A class that no training crop annotates gets no training signal: a misspelt name, a datasplit
    written for other classes, or the challenge's full class list trained on a few datasets (which
    its tool allows, so this warns rather than stops). The warning names what the crops do hold.
    With `exclusive` (data.mutual_exclusion), such a class still learns the negatives inferred
    from an annotated class it excludes: said apart. A class that no validation crop annotates
    gets a Dice of n/a every epoch."""
    def annotating(usage: str) -> set[str]:
        return {cls for crop in crops[usage] for cls in crop.entry.classes}

    untrained = unannotated = [cls for cls in classes if cls not in annotating("train")]
    if exclusive:
        trained = annotating("train")
        negatives_only = [cls for c, cls in enumerate(classes)
                          if cls in untrained and any(classes[o] in trained for o in exclusive[c])]
        if negatives_only:
            log.warning("%s: annotated in no training crop of %s; only the negatives inferred from the classes they "
                        "exclude (data.mutual_exclusion) are learnt", _classes(negatives_only), datasplit_path)
        untrained = [cls for cls in untrained if cls not in negatives_only]
    if untrained and crops["train"]:  # no training crop at all: the training set says so
        on_disk = label_names_on_disk([crop.entry for crop in crops["train"]], dict(storage_options or {}))
        stale = [cls for cls in untrained if cls in on_disk]
        hint = (f"; its crops do hold {_names(stale)}: {datasplit_path.name} was written for other classes, remove it "
                f"to list the crops again" if stale else f"; label groups in its crops: {_names(sorted(on_disk))}"
                f"{_did_you_mean(untrained, on_disk)}")
        log.warning("%s: annotated in no training crop of %s, so nothing is learnt for %s%s",
                    _classes(untrained), datasplit_path, "it" if len(untrained) == 1 else "them", hint)
    unvalidated = [cls for cls in classes if cls not in annotating("validate") and cls not in unannotated]
    if unvalidated and crops["validate"]:  # no validation crop at all: the validation set says so
        log.warning("%s: annotated in no validation crop of %s; Dice n/a every epoch",
                    _classes(unvalidated), datasplit_path)


def _did_you_mean(names: Sequence[str], on_disk: set[str]) -> str:
    """A hint such as ' (err: did you mean er?)' for each name close to a label group the crops
    hold (a typo, or a longer or shorter spelling: mitochondria for mito); '' when none is."""
    def close(name: str) -> list[str]:
        near = difflib.get_close_matches(name, sorted(on_disk), n=2, cutoff=0.6)
        return near or sorted(group for group in on_disk if min(len(group), len(name)) >= 3
                              and (group.startswith(name) or name.startswith(group)))[:2]

    guesses = [f"{name}: did you mean {' or '.join(near)}?" for name in names if (near := close(name))]
    return f" ({'; '.join(guesses)})" if guesses else ""


def _classes(names: Sequence[str]) -> str:
    return f"{'class' if len(names) == 1 else 'classes'} {_names(names)}"


def exclusive_classes(classes: Sequence[str], mutual_exclusion: bool) -> list[tuple[int, ...]] | None:
    """Per class, the classes it never shares a voxel with, when `data.mutual_exclusion` asks for
    true negatives inferred from them; None when it does not or when no two classes exclude each other."""
    if not isinstance(mutual_exclusion, bool):
        raise ConfigError(f"data.mutual_exclusion={mutual_exclusion!r}: must be true or false")
    if not mutual_exclusion:
        return None
    partners, unknown = exclusive_partners(classes)
    if unknown:
        log.warning("data.mutual_exclusion: %s not among CellMap's classes: their unknown voxels stay unknown, and "
                    "they tell nothing about the others", _names(unknown))
    if not any(partners):
        log.warning("data.mutual_exclusion: no two of %s exclude each other (their structures can share a voxel): "
                    "nothing is inferred", _names(list(classes)))
        return None
    return partners


def _names(names: Sequence[str], most: int = 8) -> str:
    shown = ", ".join(names[:most]) or "none"
    return f"{shown} and {len(names) - most} more" if len(names) > most else shown


class CellMapData:
    def __init__(self, search_path: str, datasplit_path: str | os.PathLike, classes: Sequence[str],
                 input_array_info: Mapping, target_array_info: Mapping | None = None, batch_size: int = 8,
                 validation_prob: float = 0.15, seed: int = 42, weighted_sampler: bool = True,
                 force_all_classes: bool | str = False, storage_options: Mapping | None = None,
                 dataloader_kwargs: Mapping | None = None, make_demo: bool = False, train_on_validation: bool = False,
                 train_transforms: SampleTransforms | None = None, val_transforms: SampleTransforms | None = None,
                 rare_class_weight: float = 0.0, filter_by_scale: bool = False, chunk_cache_mb: float = 256,
                 open_threads: int = 16, mutual_exclusion: bool = False, allow_split_overlap: bool = False,
                 split_seed: int | None = None):
        self.classes = list(classes)
        self.batch_size = int(batch_size)
        self.seed = int(seed)  # the training draws
        self.split_seed = self.seed if split_seed is None else int(split_seed)  # the datasplit, when one is written
        self.input_info = ArrayInfo.parse(input_array_info, "input_array_info")
        self.target_info = ArrayInfo.parse(target_array_info or input_array_info, "target_array_info")
        self.storage_options = dict(storage_options or {})
        self.dataloader_kwargs = dict(dataloader_kwargs or {})
        if isinstance(open_threads, bool) or not isinstance(open_threads, int) or open_threads < 1:
            raise ConfigError(f"data.open_threads={open_threads!r}: must be an integer >= 1 (crops opened at once)")
        self.open_threads = open_threads
        self._loader_kwargs()  # a bad loader option fails here, before any data is made or read
        exclusive = exclusive_classes(self.classes, mutual_exclusion)
        if make_demo:
            search_path = str(ensure_demo_data(search_path))
        self.search_path = str(search_path)
        self.datasplit_path = Path(datasplit_path)
        if self.datasplit_path.exists():
            if not isinstance(allow_split_overlap, bool):
                raise ConfigError(f"data.allow_split_overlap={allow_split_overlap!r}: must be true or false")
            entries = read_datasplit(self.datasplit_path, allow_overlap=allow_split_overlap)
        else:
            entries = make_datasplit_csv(self.classes, force_all_classes, validation_prob, base_path=self.search_path,
                                         csv_path=self.datasplit_path, storage_options=self.storage_options, seed=self.split_seed,
                                         scale=scale_filter(filter_by_scale, self.target_info.scale), threads=open_threads)
        # one cache per process shared by every crop (a worker gets its own, empty, of the same size)
        cache = ChunkCache(chunk_cache_mb)
        crops = {usage: [Crop(e, self.classes, self.input_info, self.target_info, self.storage_options, cache, exclusive)
                         for e in entries if e.usage == usage and set(e.classes) & set(self.classes)]
                 for usage in ("train", "validate")}
        usages = ["validate"] if train_on_validation else ["validate", "train"]
        # all at once: on S3 a crop is many round trips
        open_crops([crop for usage in usages for crop in crops[usage]], open_threads, self.input_info, self.target_info)
        if train_on_validation:
            crops["train"] = crops["validate"]
        warn_of_unannotated_classes(self.classes, crops, self.datasplit_path, self.storage_options, exclusive)
        warn_of_raw_values([crop.entry.raw_url for usage in usages for crop in crops[usage]], self.storage_options,
                           unit=unit_normalized(train_transforms), threads=open_threads)
        self.train_set = RandomCropDataset(crops["train"], train_transforms, self.seed, weighted=weighted_sampler,
                                           rare_class_weight=rare_class_weight, threads=open_threads)
        self.val_set = ValidationTileDataset(crops["validate"], val_transforms)
        if len(self.val_set) == 0:
            why = "; validation_prob=0 leaves none (validation judges the best epoch)" if validation_prob == 0 else ""
            raise DataError(f"{self.datasplit_path}: no validation crops with any of {self.classes}{why}")

    def positive_weights(self) -> list[float]:
        """`loss.pos_weight=auto` (the challenge's weight_loss): per class, background over
        foreground volume in the training crops, read from their coarsest levels."""
        weights = positive_weights(self.train_set.crops, self.open_threads)
        log.info("loss.pos_weight=auto (background / foreground in the training crops): %s",
                 ", ".join(f"{cls} {weight:.3g}" for cls, weight in zip(self.classes, weights)))
        return [float(weight) for weight in weights]

    @property
    def spatial_dims(self) -> int:
        return 2 if self.input_info.is_2d else 3

    def _loader_kwargs(self) -> dict:
        """The DataLoader options, checked: torch validates most of them when a loader is built
        (workers start only when it is iterated), so one built on a stand-in dataset says what is
        wrong before any data is read."""
        options = self.dataloader_kwargs
        taken = sorted(set(options) & LOADER_ARGUMENTS_SET_HERE)
        if taken:
            raise ConfigError(f"dataloader_kwargs.{taken[0]}: set by cellmap_train, not a loader option "
                              f"(batch_size=N sets the batch size; the sampler follows the datasplit)")
        for key, least in (("num_workers", 0), ("prefetch_factor", 1)):  # torch checks these late or cryptically
            value = options.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ConfigError(f"dataloader_kwargs.{key}={value!r}: must be an integer >= {least}")
        kwargs = {"pin_memory": torch.cuda.is_available(), **options}
        if not kwargs.get("num_workers"):  # these options are errors without workers
            kwargs.pop("persistent_workers", None)
            kwargs.pop("prefetch_factor", None)
        elif "multiprocessing_context" not in kwargs and multiprocessing.get_start_method(allow_none=True) not in STANDARD_START_METHODS:
            # inside a joblib/loky job the default context is loky's, which DataLoader workers cannot use
            kwargs["multiprocessing_context"] = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        if kwargs.get("num_workers"):
            kwargs["worker_init_fn"] = LeaveSignalsToMain(kwargs.get("worker_init_fn"))
            kill_workers_left_at_exit()
            check_worker_socket_path()
        try:
            DataLoader([0], **kwargs)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"dataloader_kwargs: {first_line(err)}") from None
        return kwargs

    def train_loader(self, start_sample: int = 0, rank: int = 0, world_size: int = 1) -> DataLoader:
        """An endless loader starting at this rank's sample number `start_sample` (resume
        continues the stream; each DDP rank gets its own disjoint stream)."""
        sampler = CountingSampler(start_sample, self.batch_size, rank, world_size)
        return CellMapLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, **self._loader_kwargs())

    def val_loader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """The validation tiles in a fixed order; with several ranks each takes every
        world_size-th batch, and the engine adds up what they measured."""
        batches = ShardedBatches(len(self.val_set), self.batch_size, rank, world_size)
        return CellMapLoader(self.val_set, batch_sampler=batches, **self._loader_kwargs())
