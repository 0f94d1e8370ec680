"""A loss for tests/reliability: binary cross-entropy that returns NaN at training call `at_step`
(calls under torch.no_grad, i.e. validation, do not count)."""

import torch

from cellmap_train.engine.losses import MaskedBCELoss


class NanAtStep(MaskedBCELoss):
    def __init__(self, at_step: int = 5, **kwargs):
        super().__init__(**kwargs)
        self.at_step, self.calls = at_step, 0

    def forward(self, logits, target):
        loss = super().forward(logits, target)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at_step:
                return loss * float("nan")
        return loss
