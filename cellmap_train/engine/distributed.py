"""Multi-process training under `torchrun`: PyTorch's own DistributedDataParallel, nccl on
GPUs and gloo on CPUs. Outside torchrun every helper here is a no-op, so the loop reads the
same either way. Only rank 0 writes files, TensorBoard and the console."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from cellmap_train.host.torchrun import launched_by_torchrun


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init() -> DistInfo:
    """Join the process group torchrun describes in the environment (once per process)."""
    if not launched_by_torchrun():
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def share_env(name: str, make_value) -> None:
    """Under torchrun, set environment variable `name` on every rank to rank 0's `make_value()`
    (e.g. the run folder's timestamp, so all ranks write into one folder)."""
    if not launched_by_torchrun() or name in os.environ:
        return
    init()
    value = [make_value()]
    dist.broadcast_object_list(value, src=0)
    os.environ[name] = value[0]


def device_for(info: DistInfo, requested: torch.device) -> torch.device:
    """One GPU per process (its local rank) when the run is distributed on CUDA."""
    if info.enabled and requested.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return requested


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def no_sync(model: torch.nn.Module, last_micro_batch: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) and not last_micro_batch:
        return model.no_sync()
    return contextlib.nullcontext()


def mean_across_ranks(value: float, info: DistInfo, device: torch.device) -> float:
    """Every rank sees the same number (so a NaN stops all of them together)."""
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / info.world_size


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when it is true on any: a signal that reached only some ranks stops all
    of them at the same step (the others would otherwise wait in the next all-reduce for good)."""
    if not info.enabled:
        return flag
    tensor = torch.tensor([float(flag)], device=device)
    dist.all_reduce(tensor)
    return bool(tensor.item() > 0)


def rank_share(count: int | None, info: DistInfo) -> int | None:
    """This rank's part of `count` batches dealt round-robin over the ranks (None stays None)."""
    return count if count is None or not info.enabled else len(range(info.rank, count, info.world_size))


def sum_across_ranks(info: DistInfo, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A function giving a tensor's sum over the ranks (None outside DDP)."""
    if not info.enabled:
        return None

    def total(tensor: torch.Tensor) -> torch.Tensor:
        summed = tensor.to(device)  # nccl reduces tensors on the GPU
        dist.all_reduce(summed)
        return summed.to(tensor.device)

    return total


def sync_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics) so validation agrees everywhere."""
    if info.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_identical_weights(model: torch.nn.Module, info: DistInfo) -> str | None:
    """Rank 0 gets a one-line confirmation that all ranks ended with the same weights."""
    if not info.enabled:
        return None
    digests = [None] * info.world_size
    dist.all_gather_object(digests, weights_digest(model))
    if len(set(digests)) != 1:
        raise RuntimeError(f"DDP ranks ended with different weights: {digests}")
    return f"DDP: weights identical on all {info.world_size} ranks (sha256 {digests[0][:12]})"


@contextlib.contextmanager
def main_first(info: DistInfo):
    """Rank 0 runs the block first (e.g. writes the datasplit), then the others read its result."""
    if info.enabled and not info.is_main:
        dist.barrier()
    try:
        yield
    finally:  # even when rank 0 fails, release the others (they then fail on their own)
        if info.enabled and info.is_main:
            dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
