"""The optimiser and the learning-rate schedule of a run (docs/method.md#training-loop, #o2cap).

Adam (the reference's, L2 weight decay added to the gradient) or SGD with momentum, on every
trainable parameter; the learning rate steps once per epoch: a linear warm-up (CAP and O2CAP:
from 0.01 of the rate over 10 epochs), then multiplied by ``gamma`` at each milestone (or every
``step_size`` epochs). The schedule is one pure function of the epoch, :func:`lr_factor`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import torch

from spcl.config import OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def build_optimizer(params: Iterable[torch.nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    """The run's optimiser over ``params``."""
    if optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.sgd_momentum, weight_decay=optim.weight_decay)
    return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)


def lr_factor(epoch: int, optim: OptimConfig) -> float:
    """The learning rate of epoch ``epoch`` (counted from 0) as a fraction of ``optim.lr``:
    ``w(e) * gamma ** (steps taken by e)``, with ``w(e) = f (1 - e/W) + e/W`` for e < W (O2CAP's
    WarmupMultiStepLR) and 1 after."""
    warm = 1.0
    if epoch < optim.warmup_epochs:
        progress = epoch / optim.warmup_epochs
        warm = optim.warmup_factor * (1.0 - progress) + progress
    steps = bisect.bisect_right(optim.milestones, epoch) if optim.milestones else epoch // optim.step_size
    return warm * optim.gamma**steps


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch schedule: ``StepLR`` when there is neither warm-up nor milestones (the
    reference's, and what earlier checkpoints hold), else :func:`lr_factor` through ``LambdaLR``."""
    if not optim.warmup_epochs and not optim.milestones:
        return torch.optim.lr_scheduler.StepLR(optimizer, optim.step_size, optim.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, optim))
