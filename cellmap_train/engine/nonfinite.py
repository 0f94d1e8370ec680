"""Which tensor made a step non-finite: a NaN in the raw data, an inf learning rate and NaN
weights all used to end as the same `loss is nan`; the first non-finite one of input batch,
weights and loss is named instead, with what to do about it."""

from __future__ import annotations

import torch


def all_finite(tensor: torch.Tensor, so_far: torch.Tensor | None) -> torch.Tensor:
    """`so_far` and whether `tensor` is finite, kept on the device: read only when a step fails."""
    finite = torch.isfinite(tensor).all()
    return finite if so_far is None else so_far & finite


def first_nonfinite(inputs_finite: torch.Tensor | None, model: torch.nn.Module) -> str:
    """Words for the first non-finite tensor of this step: input batch, weights, else the loss."""
    if inputs_finite is not None and not bool(inputs_finite):
        return ("the input batch holds NaN or inf (the raw data does: the run's start-up warnings name the dataset; "
                "replace those voxels or leave it out of the datasplit)")
    for name, parameter in model.named_parameters():
        if not bool(torch.isfinite(parameter).all()):
            return (f"weight {name} holds NaN or inf (an earlier step diverged: lower lr, or set "
                    f"trainer.max_grad_norm)")
    return ("input and weights are finite, the model's output or the loss is not (lower lr, set trainer.max_grad_norm, "
            "or train without trainer.amp=fp16)")
