"""Running optimizers on problems: the learned optimizer and tuned hand-designed baselines, side by side."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..network import CoordinatewiseLSTM
from ..optimizer import LearnedOptimizer
from .tasks import Problem

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


def run_optimizer(problem: Problem, make_optimizer: OptimizerFactory, steps: int) -> Tensor:
    """Optimise ``problem`` for ``steps`` steps; the loss before each step, shape ``(steps,)``, per problem."""
    params = torch.nn.Parameter(problem.init_params())
    optimizer = make_optimizer([params])
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = problem.loss(params, problem.sample_batch())
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses) / problem.num_problems


def run_learned(network: CoordinatewiseLSTM, problem: Problem, steps: int, lr: float = 1.0) -> Tensor:
    return run_optimizer(problem, lambda params: LearnedOptimizer(params, weights=network, lr=lr), steps)
