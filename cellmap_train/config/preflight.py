"""Checks that need the composed config but no data: run before anything is read or written,
so a contradictory config or a run folder holding another run's checkpoints fails in one line."""

from __future__ import annotations

import inspect
import logging
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from cellmap_train.config.location import run_path

from cellmap_train.config.resolvers import jobs_side_by_side
from cellmap_train.data.array_info import ArrayInfo
from cellmap_train.engine.checkpointer import Checkpointer
from cellmap_train.errors import ConfigError, UserError, first_line
from cellmap_train.files import check_writable
from cellmap_train.host.torchrun import is_rank_zero

log = logging.getLogger(__name__)
# what a training step's activations take over its layers' outputs, measured on the CPU beside the
# weights, gradients and optimizer state (benchmarks/memory.py: 1.30-3.84 where those outputs reach 50 MiB)
STEP_OVERHEAD = (1.3, 3.9)


def sample_infos(cfg: DictConfig) -> tuple[ArrayInfo, ArrayInfo]:
    """(input, labels) as the checks use them: the one place the config's array infos are parsed
    (shape and scale well-formed, or one line naming the key); the labels default to the input."""
    inputs = ArrayInfo.parse(cfg.input_array_info, "input_array_info")
    target = cfg.get("target_array_info")
    return inputs, (ArrayInfo.parse(target, "target_array_info") if target is not None else inputs)


def check_model_shape(cfg: DictConfig) -> None:
    """Sample shapes and scales are well-formed; a 2D model trains on [1,H,W] (or [H,W]) samples,
    a 3D model on [D,H,W] with D > 1."""
    sample_infos(cfg)
    dims = cfg.model.get("spatial_dims") if "model" in cfg else None
    shape = list(cfg.input_array_info.shape)
    if dims not in (2, 3):  # null: the model follows the shape (ViT-V-Net), or a custom model
        return
    is_2d = len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)
    if dims == 2 and not is_2d:
        raise ConfigError(f"model={cfg.model_name} is 2D but input_array_info.shape={shape} is 3D: "
                          f"use shape [1,H,W] or a 3D model (model=3d_unet)")
    if dims == 3 and is_2d:
        raise ConfigError(f"model={cfg.model_name} is 3D but input_array_info.shape={shape} is 2D: "
                          f"use shape [D,H,W] with D > 1 or a 2D model (model=2d_unet)")


def check_run_folder(cfg: DictConfig) -> None:
    """load_model=null in a folder that already holds checkpoints of this model would replace
    them epoch by epoch: refuse, unless the user says so (overwrite_checkpoints=true)."""
    if cfg.get("load_model") or cfg.get("overwrite_checkpoints"):
        return
    Checkpointer(Path(cfg.paths.output_dir) / str(cfg.model_save_path), str(cfg.model_name)).refuse_overwrite()


def check_outputs_writable(cfg: DictConfig) -> None:
    """The checkpoints' and TensorBoard's folders take files (rank 0 writes them)."""
    if not is_rank_zero():
        return
    check_writable(run_path(cfg, str(Path(str(cfg.model_save_path)).parent)), "checkpoints")  # its name holds {epoch}
    check_writable(run_path(cfg, cfg.logs_save_path), "TensorBoard events")


def check_init_from(cfg: DictConfig) -> None:
    """init_from (where a new run's weights come from) and model_to_load=<another model> (the
    same, from this run folder) would load one over the other: take one. init_from_classes says
    what an init_from file holds, so alone it is a mistake."""
    if cfg.get("init_from") and cfg.get("load_model") and cfg.get("model_to_load") != cfg.get("model_name"):
        raise ConfigError(f"init_from={cfg.init_from} and model_to_load={cfg.model_to_load} both say where the "
                          f"weights come from: set one of them")
    if cfg.get("init_from_classes") is not None and not cfg.get("init_from"):
        raise ConfigError(f"init_from_classes={list(cfg.init_from_classes)!r} names the classes of an init_from file, "
                          f"and init_from is not set")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fits_default(value, default) -> bool:
    """A number where the default is a number; as many numbers where it is a tuple of them (Adam's betas)."""
    if _is_number(default):
        return _is_number(value)
    if isinstance(default, tuple) and default and all(_is_number(d) for d in default):
        return isinstance(value, (ListConfig, list, tuple)) and len(value) == len(default) and all(map(_is_number, value))
    return True


def check_numeric_options(cfg: DictConfig, groups: tuple[str, ...] = ("optimizer", "scheduler", "loss")) -> None:
    """An option whose default in the group's class is a number must be a number (a tuple of numbers:
    as many numbers): `optimizer.weight_decay=abc` fails here in one line instead of deep in torch's
    constructor, after the model is built."""
    for group in groups:
        node = cfg.get(group)
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        try:
            parameters = inspect.signature(get_object(target)).parameters if target else {}
        except (ImportError, AttributeError, ValueError, TypeError):  # a class we cannot inspect: its own errors apply
            continue
        for name, parameter in parameters.items():
            if group == "optimizer" and name in node and _is_number(node[name]) and not np.isfinite(node[name]):
                raise ConfigError(f"optimizer.{name}={node[name]!r}: must be a finite number (the first step "
                                  f"would make every weight NaN)")
            if name in node and not _fits_default(node[name], parameter.default):
                default = parameter.default
                wanted = "a number" if _is_number(default) else f"{len(default)} numbers"
                shown = OmegaConf.to_container(node[name]) if isinstance(node[name], ListConfig) else node[name]
                raise ConfigError(f"{group}.{name}={shown!r}: must be {wanted} "
                                  f"({target.rsplit('.', 1)[-1]}'s default: {default})")
    check_pos_weight(cfg)


def check_pos_weight(cfg: DictConfig) -> None:
    """loss.pos_weight: one positive number, one per class, or auto (from the data: the
    challenge's weight_loss)."""
    weight = cfg.loss.get("pos_weight") if isinstance(cfg.get("loss"), DictConfig) else None
    if weight is None or weight == "auto":
        return
    values = list(weight) if isinstance(weight, ListConfig) else [weight]
    classes = list(cfg.classes)
    if not (all(_is_number(v) and v > 0 for v in values) and len(values) in (1, len(classes))):
        shown = OmegaConf.to_container(weight) if isinstance(weight, ListConfig) else weight
        raise ConfigError(f"loss.pos_weight={shown!r}: must be a positive number, one per class "
                          f"({len(classes)}: {', '.join(classes)}), or auto (from the training crops)")


def check_optimizer_and_scheduler(cfg: DictConfig) -> int:
    """Build the configured optimizer on a stand-in parameter, its scheduler on that, and take a
    step: torch checks some values only when they are used (`scheduler=step scheduler.step_size=0`
    divides by zero at the end of the first epoch), so a bad one fails here in one line, before
    the model is built or any data read. Returns how many copies of the weights the optimizer's
    state holds after that step (Adam's two moments: 2; SGD with momentum: 1; without: 0)."""
    import torch
    from hydra.utils import instantiate

    from cellmap_train.engine.epoch_end import step_epoch_scheduler

    group = "optimizer"
    try:
        # on the CPU: a fused (device) kernel is the real parameters' device's business
        device_kernels = {"fused": None} if "fused" in cfg.optimizer else {}
        stand_in = torch.nn.Parameter(torch.zeros(2, 3))
        optimizer = instantiate(cfg.optimizer, **device_kernels)([stand_in])
        group = "scheduler"
        scheduler = instantiate(cfg.scheduler)(optimizer)
        stand_in.grad = torch.zeros_like(stand_in)  # a step with a gradient makes the optimizer's state
        optimizer.step()  # and the scheduler expects one first
        if scheduler is not None:  # one step: a run of one step takes one (OneCycleLR counts them)
            step_epoch_scheduler(scheduler, val_loss=1.0)
    except (ArithmeticError, LookupError, TypeError, ValueError) as err:
        message = first_line(err)
        raise ConfigError(f"{group} ({cfg[group].get('_target_')}): {type(err).__name__}: {message}") from err
    # state of the parameter's own shape only (a step counter is not a copy; factored state is less)
    state = optimizer.state.get(stand_in, {})
    return sum(isinstance(value, torch.Tensor) and value.shape == stand_in.shape for value in state.values())


def check_output_fits_labels(cfg: DictConfig, meta: MetaRun | None) -> None:
    """The loss compares the model's output with the labels voxel for voxel, both centred on one
    point: the labels must have the output's shape and, for a model whose output is the input's
    size (every shipped one), its voxel size too (else `target_array_info.scale` alone would train
    on misaligned labels), and must not reach past the input (the model cannot see there). The
    output shape comes from `meta_forward` (None: a model that cannot run on the meta device)."""
    inputs, labels = sample_infos(cfg)
    if inputs.is_2d and not labels.is_2d:
        raise ConfigError(f"target_array_info.shape={list(labels.shape)} is 3D but input_array_info.shape="
                          f"{list(inputs.shape)} is 2D: use [1,H,W] for both")
    axes = slice(1, None) if inputs.is_2d else slice(None)  # 2D: one slice, whatever its thickness
    output = meta.output_shape if meta else None
    if output == inputs.shape[axes] and tuple(labels.scale[axes]) != tuple(inputs.scale[axes]):
        raise ConfigError(f"model={cfg.model_name} outputs at the input's voxel size ({_nm(inputs.scale[axes])} nm), but "
                          f"target_array_info.scale={_listed(labels.scale)}: its output would be compared with labels "
                          f"of another size and place; leave target_array_info.scale as input_array_info.scale")
    if output is not None and output != labels.shape[axes]:
        raise ConfigError(f"model={cfg.model_name} outputs {_nm(output)} voxels for input_array_info.shape="
                          f"{list(inputs.shape)}, but target_array_info.shape={list(labels.shape)}: the output and "
                          f"the labels must have one shape")
    seen, wanted = inputs.extent[axes], labels.extent[axes]
    if (wanted > seen + 1e-6).any():  # whatever the model: it cannot predict where it does not see
        raise ConfigError(f"target_array_info covers {_nm(wanted)} nm, more than input_array_info's {_nm(seen)} nm: "
                          f"the labels would reach past what the model sees")


@dataclass(frozen=True)
class MetaRun:
    output_shape: tuple[int, ...]  # spatial, for one sample
    kept_per_sample: int  # bytes of the layers' outputs: a lower bound of what backward keeps
    parameter_bytes: int  # the weights'
    trainable_bytes: int  # those that train: their gradients and each copy in the optimizer's state take as much
    output_layer: str | None = None  # the last layer with weights that the forward pass runs (init_from matches its rows by class)


def meta_forward(cfg: DictConfig) -> MetaRun | None:
    """One sample through a copy of the model on the meta device (no memory, no compute): its
    output shape, the bytes its layers' outputs take and its output layer; None when a (custom)
    model cannot run there."""
    import torch

    from cellmap_train.config.build import build_model, freeze_parameters

    inputs, _ = sample_infos(cfg)
    spatial = inputs.shape[1:] if inputs.is_2d else inputs.shape
    kept, last_with_weights = 0, None

    def count(module, args, output) -> None:
        nonlocal kept, last_with_weights
        if module in has_weights:
            last_with_weights = has_weights[module]
        for tensor in output if isinstance(output, (tuple, list)) else [output]:
            # an in-place layer (ReLU(inplace=True)) hands back its input: no new memory
            if isinstance(tensor, torch.Tensor) and not any(tensor is arg for arg in args):
                kept += tensor.numel() * tensor.element_size()

    try:
        with torch.device("meta"):
            model = build_model(cfg.model, cfg.get("model_kwargs")).eval()
            freeze_parameters(model, cfg.get("freeze"))  # frozen weights get no gradient or optimizer state
            has_weights = {layer: name for name, layer in model.named_modules()  # leaves, as hooked below
                           if next(layer.children(), None) is None and next(layer.parameters(), None) is not None}
            for layer in model.modules():
                if next(layer.children(), None) is None:
                    layer.register_forward_hook(count)
            output = model(torch.empty(1, int(cfg.model.get("in_channels", 1)), *spatial))
        sizes = [(parameter.numel() * parameter.element_size(), parameter.requires_grad) for parameter in model.parameters()]
        return MetaRun(tuple(output.shape[2:]), kept, sum(size for size, _ in sizes),
                       sum(size for size, trains in sizes if trains), last_with_weights)
    except UserError:  # a wrong argument or freeze path: the real build would say the same, say it now
        raise
    except Exception:  # noqa: BLE001 - whatever stops it, the real build or the loss reports it plainly
        return None


def check_memory(cfg: DictConfig, meta: MetaRun | None, available: int | None, state_copies: int) -> None:
    """On the CPU, a training step needs at least the layers' outputs of a whole batch, plus the
    weights, the trained ones' gradients and `state_copies` copies in the optimizer's state
    (measured: the activations take STEP_OVERHEAD times the layers' outputs), plus the batches the
    DataLoader keeps in flight, for each torchrun rank and each parallel sweep job on the machine;
    more than the memory available to the process would end in the kernel's OOM killer, which says
    nothing: say it here. (A GPU raises its own out-of-memory error at the first step, which the
    engine reports in one line.)"""
    from cellmap_train.engine.settings import pick_device

    if meta is None or available is None or pick_device(cfg.get("device")).type != "cpu":
        return
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # torchrun: every rank on this machine needs as much
    jobs = jobs_side_by_side()  # and so does every job a parallel sweep runs beside this one
    processes = ranks * jobs
    outputs, weights = model_bytes(cfg, meta, state_copies)
    batches = batches_in_flight(cfg)
    loading = batches * batch_bytes(cfg)
    need = (outputs + weights + loading) * processes
    sharing = " x ".join(f"{count} {name}" for count, name in ((ranks, "ranks"), (jobs, "parallel jobs")) if count > 1)
    what = (f"input_array_info.shape={list(cfg.input_array_info.shape)} with batch_size={cfg.batch_size}"
            f"{f' on {sharing}' if sharing else ''} needs")
    fix = "lower batch_size or the shape (trainer.gradient_accumulation_steps=N trains on N batches per step)"
    fix += ", or run fewer jobs at once (hydra.launcher.n_jobs)" if jobs > 1 else ""
    fix += ", or keep fewer batches in flight (data.dataloader_kwargs: num_workers x prefetch_factor)" if batches > 1 else ""
    if need > available:
        raise ConfigError(f"{what} at least {_gib(need)} of memory for model={cfg.model_name}'s activations "
                          f"({_gib(outputs * processes)}), weights, gradients and optimizer state "
                          f"({_gib(weights * processes)}) and {batches} batches in flight ({_gib(loading * processes)}) "
                          f"in a training step, more than the {_gib(available)} available: {fix}")
    readers, caches = chunk_caches(cfg)  # a cap, not a need: they fill as chunks are read, so they only warn
    least, most = ((outputs * factor + weights + loading + caches) * processes for factor in STEP_OVERHEAD)
    if most > available:
        cached = (f" and up to {_gib(caches * processes)} of decoded chunks (data.chunk_cache_mb="
                  f"{cfg.data.chunk_cache_mb} in each of {readers * processes} loading processes)" if caches else "")
        fix += ", or a smaller data.chunk_cache_mb" if caches else ""
        log.warning("%s about %s-%s of memory for a training step of model=%s%s, and %s is available: it may run out; "
                    "%s", what, f"{least / 2**30:.1f}", _gib(most), cfg.model_name, cached, _gib(available), fix)


def model_bytes(cfg: DictConfig, meta: MetaRun, state_copies: int) -> tuple[int, int]:
    """The model's part of a training step's floor: (layer outputs of a batch, weights with the
    trained ones' gradients and `state_copies` copies in the optimizer's state)."""
    outputs = meta.kept_per_sample * int(cfg.batch_size)
    if OmegaConf.select(cfg, "trainer.amp"):  # bf16/fp16 autocast: layer outputs of 2 bytes, not the meta run's 4
        outputs //= 2
    # autocast keeps fp32 weights: all of them count in full; a frozen one has no gradient nor state
    return outputs, meta.parameter_bytes + meta.trainable_bytes * (1 + state_copies)


def _loader_count(cfg: DictConfig, key: str, default: int) -> int:
    """A count in data.dataloader_kwargs for the estimates; `default` where it is unset, below 1
    or not a number (the data's own check names a bad value in one line, after these estimates)."""
    value = (OmegaConf.select(cfg, "data.dataloader_kwargs") or {}).get(key)
    return int(value) if _is_number(value) and value >= 1 else default


def batches_in_flight(cfg: DictConfig) -> int:
    """Training batches held at once: each DataLoader worker prepares `prefetch_factor` (torch's
    default 2) and the step holds one more."""
    workers = _loader_count(cfg, "num_workers", 0)
    return workers * _loader_count(cfg, "prefetch_factor", 2) + 1 if workers else 1


def chunk_caches(cfg: DictConfig) -> tuple[int, int]:
    """(processes that read chunks, bytes their chunk caches may hold at most): every DataLoader
    worker of the training and of the validation loader keeps its own cache of up to
    data.chunk_cache_mb, the main process one when there are no workers. (A value that is not a
    number counts as none here: the data's own check names it.)"""
    workers = _loader_count(cfg, "num_workers", 0)
    readers = 2 * workers if workers else 1
    mib = OmegaConf.select(cfg, "data.chunk_cache_mb", default=0)
    return readers, int(readers * mib * 2**20) if _is_number(mib) and mib > 0 else 0


def batch_bytes(cfg: DictConfig) -> int:
    """One training batch as the DataLoader hands it over: float32 raw; labels of one byte a voxel
    and class (BinarizeLabels' uint8), or four (float32: its dtype=float32 or no target transform)."""
    inputs, labels = sample_infos(cfg)
    target = OmegaConf.select(cfg, "transforms.train.target")
    label_size = 1 if target is not None and target.get("dtype", "uint8") == "uint8" else 4
    raw = int(cfg.model.get("in_channels", 1)) * int(np.prod(inputs.shape)) * 4
    return int(cfg.batch_size) * (raw + len(cfg.classes) * int(np.prod(labels.shape)) * label_size)


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB"


def _nm(values) -> str:
    return "x".join(f"{float(v):g}" for v in values)


def _listed(values) -> str:
    return f"[{', '.join(f'{float(v):g}' for v in values)}]"
