"""The engine tests' usual `fit` call (a module with its own name: pytest puts every test folder
on sys.path, and several folders have a conftest.py)."""

from __future__ import annotations

import torch

from cellmap_train.engine import fit
from cellmap_train.engine.losses import MaskedBCELoss


def fit_tiny(settings, model, data, *, lr=1e-2, optimizer=None, scheduler=None, criterion=None, logger=None):
    """`fit` with AdamW at `lr` (or the given optimizer), an optional scheduler made from the
    optimizer, and the masked BCE loss unless another is given."""
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=lr)
    return fit(settings, model, optimizer, scheduler(optimizer) if scheduler else None, criterion or MaskedBCELoss(), data,
               logger)
