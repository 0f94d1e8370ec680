"""S3 outages, against the real moto server seen through a relay the test cuts (moto itself is
never stopped: a restarted moto would come back with an empty bucket). A read that fails while
the server is gone is retried; one that still fails after the retry budget is an error naming
the chunk, never a chunk of fill values."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from cellmap_train.data.local_s3 import Relay
from cellmap_train.data.ngff import open_group, open_level, open_level_array
from cellmap_train.engine.checkpoint import read_checkpoint
from cellmap_train.engine.pause_hook import ENV, MARKER
from cellmap_train.errors import DataError
from faults import error_line, snapshot, wait_for_marker

# few attempts, so the run gives up soon after the cut; the cut resets connections at once, so
# the timeouts only need to outlast a slow reply before it (CI once saw a 1 s read time out)
SMALL_BUDGET = {"max_attempts": 2, "timeout": 15, "s3fs": 1}
# names what could not be fetched: a chunk, or the metadata of a level's array or of its group
# (a DataLoader worker may open the arrays after the cut)
UNREACHABLE = r"s3://cellmap-demo/\S+: storage unreachable after its retries"


def budget_overrides(max_attempts: int | None = None, timeout: int | None = None, s3fs: int | None = None) -> list[str]:
    """The retry budget as overrides (none: the shipped conf/data/cellmap.yaml budget)."""
    if max_attempts is None:
        return []
    prefix = "data.storage_options"
    return [f"{prefix}.config_kwargs.retries.max_attempts={max_attempts}", f"{prefix}.config_kwargs.connect_timeout={timeout}",
            f"{prefix}.config_kwargs.read_timeout={timeout}", f"{prefix}.retries={s3fs}"]


@pytest.fixture
def relay(s3_endpoint, s3_demo_bucket):
    relay = Relay(s3_endpoint)
    yield relay
    relay.close()


def s3_run(spawn, relay, bucket: str, *args: str, pause: str, budget: dict | None = None):
    """A TINY training run streaming from the bucket through the relay, paused once at `pause`."""
    # no chunk cache: every read after the cut must go to the (absent) server
    overrides = ["data=cellmap_s3", f"paths.s3_dir={bucket}", "hydra.run.dir=run", "data.chunk_cache_mb=0",
                 *budget_overrides(**(budget or {}))]
    return spawn(*overrides, *args, env={"AWS_ENDPOINT_URL": relay.url, ENV: pause})


def test_a_read_during_an_outage_fails_naming_the_chunk_and_works_again_after(relay, s3_demo_bucket):
    options = {"anon": True, "client_kwargs": {"endpoint_url": relay.url},
               "config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 15, "read_timeout": 15},
               "retries": 1}
    level = open_level(f"{s3_demo_bucket}/jrc_demo-1/jrc_demo-1.zarr/recon-1/em/fibsem-uint8", [8, 8, 8], options)
    expected = level.read([0, 0, 0], (16, 16, 16))
    assert expected.any()
    relay.cut()
    with pytest.raises(DataError, match=r"s3://cellmap-demo/jrc_demo-1/\S+/s0/\S+: storage unreachable.*data\.storage_options"):
        level.read([0, 0, 0], (16, 16, 16))
    assert relay.refused >= 2, "the read was not retried"
    relay.restore()
    np.testing.assert_array_equal(level.read([0, 0, 0], (16, 16, 16)), expected)


def test_opening_a_level_during_an_outage_names_the_array(relay, s3_demo_bucket):
    # the group's metadata was fetched before the outage; the level array's is fetched after it
    path = f"{s3_demo_bucket}/jrc_demo-1/jrc_demo-1.zarr/recon-1/em/fibsem-uint8"
    options = {"anon": True, "client_kwargs": {"endpoint_url": relay.url},
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 15, "read_timeout": 15}, "retries": 1}
    group = open_group(path, options)
    relay.cut()
    with pytest.raises(DataError, match=re.escape(f"{path}/s0: storage unreachable")):
        open_level_array(group, path, "s0")


@pytest.mark.slow
def test_training_rides_out_an_outage_mid_epoch(spawn, relay, s3_demo_bucket, tmp_path):
    # no workers: the batch after the pause is read in the main process, while the server is gone
    proc = s3_run(spawn, relay, s3_demo_bucket, "epochs=1", "data.dataloader_kwargs.num_workers=0", pause="step@2:2")
    wait_for_marker(proc, MARKER)
    relay.cut()
    # the outage lasts until the run has come back at least once (however slow a loaded machine
    # makes it), and a second more of retries; then the server returns
    deadline = time.monotonic() + 120
    while relay.refused < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert relay.refused >= 1, f"no read was attempted during the outage (run exit code: {proc.poll()})"
    time.sleep(1)
    relay.restore()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    state = read_checkpoint(tmp_path / "run" / "checkpoints" / "2d_unet_1.pth")
    assert (state["epoch"], state["step"]) == (1, 3)


@pytest.mark.slow
def test_server_gone_for_good_is_one_line_after_the_budget_and_leaves_files_alone(spawn, relay, s3_demo_bucket, tmp_path):
    proc = s3_run(spawn, relay, s3_demo_bucket, "epochs=2", "iterations_per_epoch=2", "validation_batch_limit=1",
                  "data.dataloader_kwargs.num_workers=1", pause="step@3:5", budget=SMALL_BUDGET)  # epoch 2's first step; cut while paused
    wait_for_marker(proc, MARKER)
    checkpoints = tmp_path / "run" / "checkpoints"
    before = snapshot(checkpoints)
    relay.cut()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    line = error_line(err)
    assert re.search(UNREACHABLE, line), line
    assert relay.refused >= 2, "the reads were not retried"
    assert snapshot(checkpoints) == before == {"2d_unet_1.pth": before["2d_unet_1.pth"]}
