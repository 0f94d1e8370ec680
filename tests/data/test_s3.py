"""Streaming from S3 against a real moto server holding a public-read copy of the demo data."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from cellmap_train.data.datasplit import label_names_on_disk, make_s3_datasplit_csv
from cellmap_train.data.ngff import open_level


def test_datasplit_and_reads_through_a_configured_endpoint(s3_endpoint, s3_demo_bucket, demo_root, tmp_path):
    options = {"anon": True, "client_kwargs": {"endpoint_url": s3_endpoint}}
    entries = make_s3_datasplit_csv(["nuc", "er"], validation_prob=0.3, csv_path=tmp_path / "s3.csv",
                                    base_path=s3_demo_bucket, storage_options=options)
    assert len(entries) == 10 and all(e.raw_zarr.startswith("s3://cellmap-demo/jrc_demo-") for e in entries)
    assert (tmp_path / "s3.csv").read_text().startswith('"')
    remote = open_level(entries[0].label_url("nuc"), [16, 16, 16], options)
    local = open_level(str(demo_root / entries[0].gt_zarr.removeprefix("s3://cellmap-demo/") / entries[0].gt_path / "nuc"), [16] * 3)
    assert remote.translation == local.translation
    np.testing.assert_array_equal(remote.read_labels([0, 0, 0], (8, 8, 8)), local.read_labels([0, 0, 0], (8, 8, 8)))
    # what a misspelt class's error lists: every label group in the bucket's crops, not only the requested ones
    assert label_names_on_disk(entries, options) == {"nuc", "er", "mito"}


@pytest.mark.slow
def test_demo_experiment_trains_from_s3(run_main, s3_endpoint, s3_demo_bucket, tmp_path):
    proc = run_main("experiment=demo", "data=cellmap_s3", f"paths.s3_dir={s3_demo_bucket}", "trainer=smoke",
                   "hydra.run.dir=run", env={"AWS_ENDPOINT_URL": s3_endpoint})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Validation Dice" in proc.stdout
    rows = (tmp_path / "run" / "datasplit.csv").read_text().splitlines()
    assert rows and all(row.startswith('"train","s3://cellmap-demo/') or row.startswith('"validate","s3://cellmap-demo/') for row in rows)


def test_a_level_opens_in_five_requests_and_a_chunk_is_one_get(compose_cfg, s3_endpoint, s3_demo_bucket, s3_requests):
    """With the shipped storage options: no HEAD before each GET (s3fs asks a file's size first when
    max_concurrency > 1) and no probing for zarr v3 or consolidated metadata. Every request is
    one round trip, hundreds of them before a run's first step: on a real bucket they are its
    start-up time."""
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(compose_cfg("data=cellmap_s3").data.storage_options, resolve=True)
    options["client_kwargs"] = {"endpoint_url": s3_endpoint}
    crop = f"{s3_demo_bucket}/jrc_demo-1/jrc_demo-1.zarr/recon-1/labels/groundtruth/crop1/nuc"
    s3_requests()
    level = open_level(crop, [8, 8, 8], options)  # s0: its array carries the annotation attributes
    opened = s3_requests()
    assert [method for method, _ in opened] == ["GET"] * len(opened) and len(opened) == 5, opened
    labels = level.read_labels(level.world_bounds()[0], (8, 8, 8))  # the crop's first corner: one chunk
    assert not np.isnan(labels).all()
    assert [(method, key.rsplit("/", 1)[-1]) for method, key in s3_requests()] == [("GET", "0.0.0")]


def test_loader_workers_read_chunks_without_reopening_any_metadata(compose_cfg, s3_endpoint, s3_demo_bucket, s3_requests,
                                                                   monkeypatch, tmp_path):
    """The main process opens every crop's levels (their bounds and class weights); its workers,
    forked (training loader) or spawned (validation loader), read chunks at once with what it
    found. Reopened in each worker, as they were, every level cost five more requests per
    worker, one after the other, before its first sample: thousands of round trips for a run
    over the challenge's crops."""
    from hydra.utils import instantiate

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    cfg = compose_cfg("experiment=demo", "data=cellmap_s3", f"paths.s3_dir={s3_demo_bucket}",
                      f"data.datasplit_path={tmp_path / 'datasplit.csv'}", "data.dataloader_kwargs.num_workers=2")
    data = instantiate(cfg.data)
    s3_requests()
    for start_method, loader in (("fork", data.train_loader), ("spawn", data.val_loader)):
        data.dataloader_kwargs["multiprocessing_context"] = start_method
        batches = iter(loader())
        raw = next(batches)[0]
        next(batches)  # the second worker's first batch
        del batches
        assert raw.shape[0] == cfg.batch_size and not torch.isnan(raw).any()
        keys = [key.rsplit("/", 1)[-1] for _, key in s3_requests()]
        assert keys and not [key for key in keys if key.startswith(".z") or key == "zarr.json"], (start_method, keys)


@pytest.mark.slow
def test_local_s3_serves_the_demo_data_until_ctrl_c(demo_cache):
    """`python -m cellmap_train.data.local_s3`: what the README offers to try S3 without a bucket."""
    import os
    import queue
    import signal
    import subprocess
    import sys
    import threading
    import urllib.request

    import s3fs

    server = subprocess.Popen([sys.executable, "-m", "cellmap_train.data.local_s3"],
                              env={**os.environ, "CELLMAP_TRAIN_DEMO_DIR": str(demo_cache)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()  # read by a thread: a server that stops writing fails the test, never hangs it
    reader = threading.Thread(target=lambda: [lines.put(line) for line in server.stdout], daemon=True)
    reader.start()
    try:
        first = lines.get(timeout=300)
        match = re.search(r"at (http://127\.0\.0\.1:\d+); train on it with", first)
        assert match, first
        assert "data=cellmap_s3 paths.s3_dir=s3://cellmap-demo" in lines.get(timeout=60)
        fs = s3fs.S3FileSystem(anon=True, client_kwargs={"endpoint_url": match.group(1)}, skip_instance_cache=True)
        assert fs.cat("cellmap-demo/jrc_demo-1/jrc_demo-1.zarr/.zgroup") == b'{\n  "zarr_format": 2\n}'
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
        reader.join(timeout=30)  # the pipe is closed: the rest of the output is in the queue
        assert "server stopped" in "".join(lines.get_nowait() for _ in range(lines.qsize()))
        with pytest.raises(OSError):  # moto is gone with it
            urllib.request.urlopen(match.group(1), timeout=2)
    finally:
        server.kill()


def cat_calls(fs, monkeypatch) -> list[list[str]]:
    """The paths of each `fs.cat` call from now on (the calls still go to the server)."""
    calls: list[list[str]] = []
    real_cat = fs.cat
    monkeypatch.setattr(fs, "cat", lambda paths, **kw: calls.append(list(paths)) or real_cat(paths, **kw))
    return calls


def test_a_samples_arrays_are_fetched_in_one_round_of_requests(s3_endpoint, s3_demo_bucket, s3_requests, monkeypatch):
    """The raw and every class of a sample are fetched in one fsspec call (its requests run
    concurrently), not one call per array after the other: on a bucket each call is a round trip."""
    from cellmap_train.data.dataset import ArrayInfo, Crop
    from cellmap_train.data.datasplit import CropEntry

    options = {"anon": True, "client_kwargs": {"endpoint_url": s3_endpoint}, "max_concurrency": 1}
    zarr_path = f"{s3_demo_bucket}/jrc_demo-1/jrc_demo-1.zarr"
    entry = CropEntry("train", zarr_path, "recon-1/em/fibsem-uint8", zarr_path, "recon-1/labels/groundtruth/crop1",
                      ("nuc", "er", "mito"))
    info = ArrayInfo.parse({"shape": [1, 48, 48], "scale": [8, 8, 8]}, "input_array_info")
    crop = Crop(entry, ["nuc", "er", "mito"], info, info, options).open()
    fs = crop._raw.reader.fs
    calls = cat_calls(fs, monkeypatch)
    s3_requests()
    low, high = crop.bounds()
    raw, labels = crop.read((low + high) / 2)
    assert raw.shape == (1, 48, 48) and labels.shape == (3, 1, 48, 48) and not np.isnan(labels).all()
    assert len(calls) == 1, [len(paths) for paths in calls]
    assert {tuple(path.split("/")[-3:-1]) for path in calls[0]} == {(name, "s0") for name in ("fibsem-uint8", *entry.classes)}
    fetched = sorted(key for _, key in s3_requests())
    assert fetched == sorted(f"/{path}" for path in calls[0])  # each chunk once, nothing else


def test_a_batch_is_fetched_in_one_round_and_equals_its_samples_read_alone(s3_endpoint, s3_demo_bucket, demo_root,
                                                                              monkeypatch, tmp_path):
    """A DataLoader asks the training set for a whole batch (`__getitems__`): the chunks of all
    its samples are fetched in one fsspec call, and each sample is what `dataset[i]` reads."""
    from cellmap_train.data import CellMapData
    from cellmap_train.data.transforms import NormalizeRaw, SampleTransforms, SpatialTransform

    options = {"anon": True, "client_kwargs": {"endpoint_url": s3_endpoint}, "max_concurrency": 1}
    rotate = SampleTransforms(SpatialTransform({"x": 0.5}, ["x", "y"], {"z": [-180, 180]}), NormalizeRaw())
    data = CellMapData(s3_demo_bucket, tmp_path / "split.csv", ["nuc", "er", "mito"], validation_prob=0.3,
                       input_array_info={"shape": [1, 32, 32], "scale": [8, 8, 8]}, storage_options=options,
                       train_transforms=rotate, chunk_cache_mb=0)
    fs = data.train_set.crops[0]._raw.reader.fs
    calls = cat_calls(fs, monkeypatch)
    batch = data.train_set.__getitems__(list(range(100, 108)))
    assert len(calls) == 1 and len(calls[0]) > 8, [len(paths) for paths in calls]
    for i, (raw, labels) in zip(range(100, 108), batch):
        alone_raw, alone_labels = data.train_set[i]
        torch.testing.assert_close(raw, alone_raw)
        torch.testing.assert_close(labels, alone_labels, equal_nan=True)
