"""Start a new run from another run's weights (`init_from`): fine-tuning, or a model trained on
many classes taken on to a few. The output layer is matched by class name, so a checkpoint of
[nuc, er, mito] starts a [mito, cell] model with mito's channel trained and cell's fresh.
Everything else must match exactly: another architecture is an error naming the tensor."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from cellmap_train.engine.checkpoint import is_full, read_checkpoint
from cellmap_train.errors import CheckpointError


def _shape(tensor: torch.Tensor) -> list[int]:
    return list(tensor.shape)


def checkpoint_classes(state: dict) -> list[str] | None:
    """The classes a full checkpoint was trained on (from the config saved in it); None for a
    weights-only file (the challenge's format), which does not say."""
    config = state.get("config") if is_full(state) else None
    classes = config.get("classes") if isinstance(config, dict) else None
    return [str(c) for c in classes] if isinstance(classes, (list, tuple)) else None


def output_tensors(model: torch.nn.Module, output_layer: str | None, classes: Sequence[str]) -> set[str]:
    """State-dict names of the output layer's tensors with one row per class (weight and bias of
    the last layer the forward pass runs; `output_layer` is its module name)."""
    if output_layer is None:
        return set()
    prefix = f"{output_layer}." if output_layer else ""
    layer = model.get_submodule(output_layer)
    own = {**dict(layer.named_parameters(recurse=False)), **dict(layer.named_buffers(recurse=False))}
    return {prefix + name for name, tensor in own.items() if tensor.dim() >= 1 and tensor.shape[0] == len(classes)}


def init_weights(model: torch.nn.Module, path: str | os.PathLike, classes: Sequence[str],
                 output_layer: str | None, file_classes: Sequence[str] | None = None) -> str:
    """Load the weights of checkpoint `path` into `model`, whose output channels are `classes`;
    the output layer's rows are taken by class name where the checkpoint names its classes, or
    `file_classes` (init_from_classes) names them for a weights-only file.
    Returns the line that says what was taken."""
    state = read_checkpoint(path)
    weights = state["model"] if is_full(state) else state
    if not all(isinstance(value, torch.Tensor) for value in weights.values()):
        raise CheckpointError(f"{path}: not a model's weights (a state_dict of tensors)")
    bad = next((name for name, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:  # it would train on NaN from the first step, and say only "loss is nan"
        tensor = weights[bad]
        count = int((~torch.isfinite(tensor)).sum())
        raise CheckpointError(f"{path}: weight {bad} holds {count} NaN or inf value{'s' * (count > 1)} "
                              f"(of {tensor.numel()}): a model started from it trains on NaN")
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - weights.keys()), sorted(weights.keys() - own.keys())
    if missing or unexpected:
        what = "; ".join(f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                         for label, names in (("missing", missing), ("unexpected", unexpected)) if names)
        raise CheckpointError(f"{path}: weights of another architecture ({what})")
    source = checkpoint_classes(state)
    if file_classes is not None:
        named = [str(c) for c in file_classes]
        if source is not None and source != named:
            raise CheckpointError(f"{path}: trained on classes {source} (saved in it), not init_from_classes={named}: "
                                  f"leave init_from_classes out for a checkpoint that names its classes")
        source = named
    head = output_tensors(model, output_layer, classes)
    if source is not None and source != list(classes) and not head:
        raise CheckpointError(f"{path}: trained on classes {source}, this run has {list(classes)}, and the model's "
                              f"output layer could not be found to match them (it does not run on the meta device)")
    loaded, fresh_head = {}, None
    for name, tensor in weights.items():
        mine = own[name]
        if name in head and source is None and tensor.shape != mine.shape and tensor.shape[1:] == mine.shape[1:]:
            loaded[name], fresh_head = mine, tensor.shape[0]  # no names to match rows by: this layer starts fresh
        elif name in head and source is not None:
            if tensor.shape[1:] != mine.shape[1:] or tensor.shape[0] != len(source):
                raise CheckpointError(f"{path}: output layer {name} is {_shape(tensor)} there, {_shape(mine)} here "
                                      f"(for {len(source)} classes{' as init_from_classes names them' if file_classes else ''}"
                                      f" and {len(classes)} classes)")
            rows = mine.clone()  # a class the checkpoint lacks keeps its fresh initialisation
            for row, cls in enumerate(classes):
                if cls in source:
                    rows[row] = tensor[source.index(cls)]
            loaded[name] = rows
        elif tensor.shape != mine.shape:
            raise CheckpointError(f"{path}: {name} is {_shape(tensor)} there and {_shape(mine)} in this model")
        else:
            loaded[name] = tensor
    model.load_state_dict(loaded, strict=True)
    if fresh_head is not None:
        kept = len(loaded) - len(head)
        return (f"Initialised model weights from {path} ({kept} of {len(loaded)} tensors; a weights-only file, "
                f"which does not name its classes, with {fresh_head} output channels for this run's {len(classes)}): "
                f"the output layer starts fresh, everything else is taken from it.")
    return describe(path, source, classes, len(loaded), named_here=file_classes is not None)


def describe(path: str | os.PathLike, source: list[str] | None, classes: Sequence[str], tensors: int,
             named_here: bool = False) -> str:
    if source is None:
        return (f"Initialised model weights from {path} ({tensors} tensors; a weights-only file: its output "
                f"channels are taken as this run's classes, in order: {', '.join(classes)}).")
    kept = [c for c in classes if c in source]
    new = [c for c in classes if c not in source]
    if not new and kept == source:
        return f"Initialised model weights from {path} ({tensors} tensors, the same classes)."
    parts = [f"output channels of {', '.join(kept)} taken from it" if kept else "no class in common"]
    if new:
        parts.append(f"{', '.join(new)} new (fresh weights)")
    trained = f"trained on {', '.join(source)}{', as init_from_classes says' if named_here else ''}"
    return f"Initialised model weights from {path} ({tensors} tensors; {trained}): {'; '.join(parts)}."
