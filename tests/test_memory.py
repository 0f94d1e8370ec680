"""Memory: the room a process has (machine and cgroup limits, read from files laid out as Linux
lays them out) and the preflight check that turns a sample shape or batch too large for it into
one line before any data, instead of the kernel's silent OOM kill. Also the CPU cores a process
may use, read from the same cgroup files, which parallel sweep jobs share out as torch threads."""

from __future__ import annotations

import logging
import os

import pytest

from cellmap_train.host.cores import usable_cores
from cellmap_train.errors import ConfigError
from cellmap_train.host.memory import available_bytes
from cellmap_train.config.preflight import (batch_bytes, batches_in_flight, check_memory, check_optimizer_and_scheduler,
                                    chunk_caches, meta_forward)

GIB = 2**30


def fake_linux(root, cgroup_line: str, meminfo_kb: int, files: dict[str, str]):
    proc, cgroup = root / "proc", root / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal:  99999999 kB\nMemFree:  1 kB\nMemAvailable:  {meminfo_kb} kB\n")
    (proc / "self" / "cgroup").write_text(cgroup_line + "\n")
    for name, text in files.items():
        (cgroup / name).parent.mkdir(parents=True, exist_ok=True)
        (cgroup / name).write_text(text)
    return proc, cgroup


def test_machine_memory_when_no_cgroup_limit(tmp_path):
    proc, cgroup = fake_linux(tmp_path, "0::/", 16 * 2**20, {"memory.max": "max\n", "memory.current": "123\n"})
    assert available_bytes(proc, cgroup) == 16 * GIB


def test_cgroup_v2_limit_counts_page_cache_as_room(tmp_path):
    # a Slurm job with --mem=8G that has read 3 GiB of chunks into the page cache: 8 - (5 - 3) = 6 GiB of room
    proc, cgroup = fake_linux(tmp_path, "0::/slurm/job_7", 64 * 2**20, {
        "slurm/job_7/memory.max": f"{8 * GIB}\n", "slurm/job_7/memory.current": f"{5 * GIB}\n",
        "slurm/job_7/memory.stat": f"anon {2 * GIB}\nfile {3 * GIB}\n"})
    assert available_bytes(proc, cgroup) == 6 * GIB


def test_cgroup_v1_limit_and_its_no_limit_value(tmp_path):
    lines = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc"
    limited = {"memory/docker/abc/memory.limit_in_bytes": f"{4 * GIB}", "memory/docker/abc/memory.usage_in_bytes": f"{GIB}",
               "memory/docker/abc/memory.stat": "cache 0\ntotal_cache 0\n"}
    proc, cgroup = fake_linux(tmp_path / "a", lines, 64 * 2**20, limited)
    assert available_bytes(proc, cgroup) == 3 * GIB
    unlimited = {**limited, "memory/docker/abc/memory.limit_in_bytes": "9223372036854771712"}
    proc, cgroup = fake_linux(tmp_path / "b", lines, 64 * 2**20, unlimited)
    assert available_bytes(proc, cgroup) == 64 * GIB


def test_nothing_readable_is_no_answer(tmp_path):
    assert available_bytes(tmp_path / "no_proc", tmp_path / "no_cgroup") is None


def test_this_machine_has_an_answer():
    assert available_bytes() > 0


@pytest.fixture
def demo_cfg(compose_cfg):
    return compose_cfg("experiment=demo", "device=cpu", "batch_size=4")


def floor(cfg, meta, processes: int = 1, halved: bool = False) -> int:
    """What the check must refuse below: layer outputs of the batch, weights, gradients and the
    optimizer's two copies (the demo's AdamW, train_2D's RAdam), the loader's batches in flight,
    on every process."""
    outputs = meta.kept_per_sample * int(cfg.batch_size) // (2 if halved else 1)
    loading = batches_in_flight(cfg) * batch_bytes(cfg)
    return (outputs + meta.parameter_bytes + meta.trainable_bytes * 3 + loading) * processes


def test_batches_in_flight_are_the_workers_prefetch_and_the_step(compose_cfg):
    cfg = compose_cfg("experiment=demo", "batch_size=4")  # 1 worker, prefetch_factor 4; [1, 96, 96], 3 classes
    assert batches_in_flight(cfg) == 5 and batch_bytes(cfg) == 4 * (96 * 96 * 4 + 3 * 96 * 96 * 1)
    cfg = compose_cfg("experiment=demo", "batch_size=4", "transforms.train.target.dtype=float32",
                      "data.dataloader_kwargs.num_workers=3", "data.dataloader_kwargs.prefetch_factor=null")  # torch's default: 2
    assert batches_in_flight(cfg) == 7 and batch_bytes(cfg) == 4 * (96 * 96 * 4 + 3 * 96 * 96 * 4)
    cfg = compose_cfg("experiment=demo", "data.dataloader_kwargs={num_workers:0}")
    assert batches_in_flight(cfg) == 1


def test_batches_a_loader_keeps_in_flight_count(compose_cfg):
    """train_3D's batch is 0.8 GiB (48 classes of 128^3 uint8 labels); 2 workers x prefetch 4 keep
    eight of them in shared memory beside the one the step uses: 7.3 GiB nothing else counted."""
    cfg = compose_cfg("experiment=demo", "device=cpu", "batch_size=4", "data.dataloader_kwargs.num_workers=8",
                      "data.dataloader_kwargs.prefetch_factor=64")
    meta = meta_forward(cfg)
    assert batches_in_flight(cfg) * batch_bytes(cfg) > 5 * meta.kept_per_sample * 4  # here the batches outweigh all
    with pytest.raises(ConfigError, match=r"and 513 batches in flight \(0.1 GiB\) in a training step, .* or keep fewer "
                                          r"batches in flight \(data.dataloader_kwargs: num_workers x prefetch_factor\)"):
        check_memory(cfg, meta, floor(cfg, meta) - 1, 2)
    check_memory(cfg, meta, floor(cfg, meta), 2)


def test_a_batch_whose_activations_exceed_the_memory_is_refused(demo_cfg):
    meta = meta_forward(demo_cfg)
    with pytest.raises(ConfigError, match=r"input_array_info.shape=\[1, 96, 96\] with batch_size=4 needs at least "
                                          r".* GiB of memory for model=2d_unet's activations .* lower batch_size"):
        check_memory(demo_cfg, meta, floor(demo_cfg, meta) - 1, 2)
    check_memory(demo_cfg, meta, floor(demo_cfg, meta) * 3, 2)


def test_a_batch_that_may_not_fit_is_a_warning(demo_cfg, caplog):
    meta = meta_forward(demo_cfg)
    need = floor(demo_cfg, meta)
    with caplog.at_level(logging.WARNING, logger="cellmap_train.config.preflight"):
        check_memory(demo_cfg, meta, need + 1, 2)  # more than the floor, less than a step has ever taken
    assert "it may run out" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cellmap_train.config.preflight"):
        check_memory(demo_cfg, meta, need * 4 + chunk_caches(demo_cfg)[1], 2)
    assert caplog.text == ""


def test_chunk_caches_of_every_loading_process_count_in_the_warning(compose_cfg, caplog):
    """data.chunk_cache_mb is per process: the default 2 workers of the training loader and 2 of
    the validation loader hold up to 4 x 256 MiB of decoded chunks once the data is large enough."""
    cfg = compose_cfg("experiment=demo", "device=cpu", "batch_size=2", "data.chunk_cache_mb=256",
                      "data.dataloader_kwargs.num_workers=2")
    assert chunk_caches(cfg) == (4, 4 * 256 * 2**20)
    assert chunk_caches(compose_cfg("data=demo", "data.dataloader_kwargs={num_workers:0}")) == (1, 256 * 2**20)
    assert chunk_caches(compose_cfg("data=demo", "data.chunk_cache_mb=0"))[1] == 0
    assert chunk_caches(compose_cfg("data=demo", "data.chunk_cache_mb=lots"))[1] == 0  # the data's own check says it
    meta = meta_forward(cfg)
    step = floor(cfg, meta) * 4  # above a step's most; the small model's step is far below 1 GiB
    assert step < GIB / 4
    with caplog.at_level(logging.WARNING, logger="cellmap_train.config.preflight"):
        check_memory(cfg, meta, step, 2)
    assert "and up to 1.0 GiB of decoded chunks (data.chunk_cache_mb=256 in each of 4 loading processes), and " \
           in caplog.text and caplog.text.rstrip().endswith("or a smaller data.chunk_cache_mb")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cellmap_train.config.preflight"):
        check_memory(cfg, meta, step + GIB, 2)
    assert caplog.text == ""


def test_weights_gradients_and_optimizer_state_count(compose_cfg):
    """train_2D's U-Net has 118 MiB of weights: with their gradients and RAdam's two moments 0.46
    GiB, beside 70 MiB of layer outputs for one sample. Counting the outputs alone let it start in
    300 MiB, to be killed by the kernel at its first optimizer step."""
    cfg = compose_cfg("experiment=train_2D", "device=cpu", "batch_size=1")
    meta = meta_forward(cfg)
    assert meta.parameter_bytes > 100 * 2**20 and meta.kept_per_sample < 100 * 2**20
    with pytest.raises(ConfigError, match=r"needs at least 0.5 GiB .* activations \(0.1 GiB\), weights, gradients "
                                          r"and optimizer state \(0.5 GiB\) and 9 batches in flight \(0.0 GiB\) in a "
                                          r"training step, more than the 0.3 GiB"):
        check_memory(cfg, meta, 300 * 2**20, check_optimizer_and_scheduler(cfg))
    check_memory(cfg, meta, floor(cfg, meta), 2)
    with pytest.raises(ConfigError, match="needs at least"):
        check_memory(cfg, meta, floor(cfg, meta) - 1, 2)


FROZEN_NET = """
import torch

class FrozenNet(torch.nn.Module):  # a frozen 64 MiB stand-in for a pretrained backbone, a small head that trains
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.backbone = torch.nn.Parameter(torch.zeros(16 * 2**20), requires_grad=False)
        self.head = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x):
        return self.head(x)
"""


def test_frozen_weights_count_once(compose_cfg, tmp_path, monkeypatch):
    (tmp_path / "frozen_nets.py").write_text(FROZEN_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_cfg("experiment=demo", "device=cpu", "model=custom", "model._target_=frozen_nets.FrozenNet")
    meta = meta_forward(cfg)
    assert meta.parameter_bytes >= 64 * 2**20 > 2**20 > meta.trainable_bytes
    need = floor(cfg, meta)
    loading = batches_in_flight(cfg) * batch_bytes(cfg)
    assert need < meta.kept_per_sample * int(cfg.batch_size) + loading + 65 * 2**20  # no gradient nor Adam moments for it
    check_memory(cfg, meta, need, 2)
    with pytest.raises(ConfigError, match="needs at least"):
        check_memory(cfg, meta, need - 1, 2)


@pytest.mark.parametrize("overrides,copies", [
    ([], 2),  # AdamW: exp_avg, exp_avg_sq
    (["optimizer=radam"], 2), (["optimizer=adam"], 2),
    (["optimizer=sgd"], 1),  # the momentum buffer
    (["optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=false"], 0),
])
def test_the_optimizer_state_is_counted_as_the_optimizer_keeps_it(compose_cfg, overrides, copies):
    cfg = compose_cfg("experiment=demo", *overrides)
    assert check_optimizer_and_scheduler(cfg) == copies


def test_every_rank_of_torchrun_on_the_machine_counts(demo_cfg, monkeypatch):
    meta = meta_forward(demo_cfg)
    check_memory(demo_cfg, meta, floor(demo_cfg, meta) * 3, 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="with batch_size=4 on 4 ranks needs at least"):
        check_memory(demo_cfg, meta, floor(demo_cfg, meta) * 3, 2)
    check_memory(demo_cfg, meta, floor(demo_cfg, meta, processes=4), 2)


@pytest.mark.parametrize("model", ["2d_unet", "2d_resnet", "3d_unet", "vitnet"])
def test_the_estimate_is_at_most_what_backward_keeps(compose_cfg, model):
    """The check may refuse only what cannot fit: every tensor autograd saves for backward is alive
    at the end of the forward pass, so their storages are a floor of the step's peak memory; the
    estimate must not exceed it."""
    import torch

    from cellmap_train.config.build import build_model

    cfg = compose_cfg("experiment=demo", f"model={model}")
    meta = meta_forward(cfg)
    storages = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    torch.manual_seed(0)
    net = build_model(cfg.model, cfg.get("model_kwargs"))
    shape = list(cfg.input_array_info.shape)
    x = torch.rand(2, 1, *(shape[1:] if shape[0] == 1 else shape))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        net(x).sum().backward()
    saved = sum(storages.values())
    print(f"{model}: estimate {2 * meta.kept_per_sample / saved:.2f} of what backward keeps")
    assert 0.5 * saved <= 2 * meta.kept_per_sample <= saved


def test_every_job_of_a_parallel_sweep_counts(compose_cfg, monkeypatch):
    monkeypatch.setattr("cellmap_train.config.resolvers.usable_cores", lambda: 8)
    cfg = compose_cfg("experiment=demo", "device=cpu", "batch_size=4", "hydra/launcher=parallel", "hydra.launcher.n_jobs=3")
    meta = meta_forward(cfg)
    with pytest.raises(ConfigError, match=r"with batch_size=4 on 3 parallel jobs needs at least .* run fewer jobs at "
                                          r"once \(hydra.launcher.n_jobs\)"):
        check_memory(cfg, meta, floor(cfg, meta) * 2, 2)
    check_memory(cfg, meta, floor(cfg, meta, processes=3), 2)


def test_a_limit_on_a_cgroup_above_the_process_counts(tmp_path):
    # Slurm (cgroup v2) puts the job's --mem on the job's cgroup; the process sits in a task's cgroup below it
    proc, cgroup = fake_linux(tmp_path, "0::/system.slice/slurmstepd.scope/job_9/step_0/user/task_0", 64 * 2**20, {
        "system.slice/slurmstepd.scope/job_9/memory.max": f"{8 * GIB}\n",
        "system.slice/slurmstepd.scope/job_9/memory.current": f"{GIB}\n",
        "system.slice/slurmstepd.scope/job_9/step_0/user/task_0/memory.max": "max\n",
        "system.slice/slurmstepd.scope/job_9/step_0/user/task_0/memory.current": f"{GIB // 2}\n"})
    assert available_bytes(proc, cgroup) == 7 * GIB


def test_cores_are_the_affinity_without_a_cpu_quota(tmp_path):
    proc, cgroup = fake_linux(tmp_path, "0::/user.slice", 2**20, {"user.slice/cpu.max": "max 100000\n"})
    assert usable_cores(proc, cgroup) == len(os.sched_getaffinity(0))


def test_a_cpu_quota_above_the_process_caps_the_cores(tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))  # a 64-core node
    # cgroup v2: a Slurm job with 8 CPUs' worth of quota on the job's cgroup, none on the task's
    proc, cgroup = fake_linux(tmp_path / "v2", "0::/slurm/job_3/task_0", 2**20, {
        "slurm/job_3/cpu.max": "800000 100000\n", "slurm/job_3/task_0/cpu.max": "max 100000\n"})
    assert usable_cores(proc, cgroup) == 8
    # cgroup v1 (docker --cpus=2.5): whole cores only; -1 is no quota
    lines = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc"
    proc, cgroup = fake_linux(tmp_path / "v1", lines, 2**20, {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/docker/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/docker/cpu.cfs_period_us": "100000\n"})
    assert usable_cores(proc, cgroup) == 2
    proc, cgroup = fake_linux(tmp_path / "tiny", "0::/", 2**20, {"cpu.max": "50000 100000\n"})  # half a core
    assert usable_cores(proc, cgroup) == 1


def test_parallel_jobs_share_the_cores_the_affinity_allows(compose_cfg, monkeypatch):
    from cellmap_train.config.resolvers import threads_per_job

    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))  # taskset / a Slurm task's binding
    compose_cfg("experiment=demo", "hydra/launcher=parallel", "hydra.launcher.n_jobs=4")
    assert threads_per_job() == 2


def test_mixed_precision_halves_the_layer_outputs_not_the_weights(compose_cfg):
    cfg = compose_cfg("experiment=demo", "device=cpu", "batch_size=4", "trainer.amp=bf16")
    meta = meta_forward(cfg)
    check_memory(cfg, meta, floor(cfg, meta, halved=True), 2)  # less than with fp32 layer outputs
    assert floor(cfg, meta, halved=True) < floor(cfg, meta)
    with pytest.raises(ConfigError, match="needs at least"):
        check_memory(cfg, meta, floor(cfg, meta, halved=True) - 1, 2)
