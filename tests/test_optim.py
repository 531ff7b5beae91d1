"""The optimiser and learning-rate schedule (``spcl.training.optim``) against O2CAP's formula written out."""

from __future__ import annotations

import pytest
import torch

from spcl.config import OptimConfig
from spcl.training.optim import build_optimizer, build_scheduler, lr_factor


def _o2cap_lr(epoch: int) -> float:
    """docs/method.md#o2cap: 3.5e-4 * w(e) * 0.1 ** |{m in [20, 40]: m <= e}|, w(e) = 0.01 (1 - e/10) + e/10 for e < 10."""
    w = 0.01 * (1 - epoch / 10) + epoch / 10 if epoch < 10 else 1.0
    return 3.5e-4 * w * 0.1 ** sum(m <= epoch for m in (20, 40))


def _rates(optim: OptimConfig, epochs: int) -> list[float]:
    model = torch.nn.Linear(2, 1)
    optimizer = build_optimizer(model.parameters(), optim)
    scheduler = build_scheduler(optimizer, optim)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_warm_up_and_milestones_are_o2caps_schedule() -> None:
    optim = OptimConfig(milestones=(20, 40), warmup_epochs=10, warmup_factor=0.01)
    rates = _rates(optim, 50)
    assert rates == pytest.approx([_o2cap_lr(e) for e in range(50)], rel=1e-12)
    assert rates[0] == pytest.approx(3.5e-6) and rates[10] == pytest.approx(3.5e-4) and rates[45] == pytest.approx(3.5e-6)
    assert [lr_factor(e, optim) for e in (0, 5, 19, 20, 39, 40)] == pytest.approx([0.01, 0.505, 1, 0.1, 0.1, 0.01])


def test_without_warm_up_or_milestones_the_reference_step_schedule() -> None:
    optim = OptimConfig(step_size=20, gamma=0.1)
    scheduler = build_scheduler(build_optimizer(torch.nn.Linear(2, 1).parameters(), optim), optim)
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)  # what earlier checkpoints hold
    assert _rates(optim, 45) == pytest.approx([3.5e-4 * 0.1 ** (e // 20) for e in range(45)], rel=1e-12)
    # milestones alone: steps there and nowhere else
    assert _rates(OptimConfig(milestones=(3, 7)), 9) == pytest.approx([3.5e-4] * 3 + [3.5e-5] * 4 + [3.5e-6] * 2)


def test_sgd_is_an_optimiser_choice_with_its_momentum_and_decay() -> None:
    optimizer = build_optimizer(torch.nn.Linear(2, 1).parameters(), OptimConfig(optimizer="sgd", sgd_momentum=0.8))
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (3.5e-4, 0.8, 5e-4)
    assert isinstance(build_optimizer(torch.nn.Linear(2, 1).parameters(), OptimConfig()), torch.optim.Adam)
