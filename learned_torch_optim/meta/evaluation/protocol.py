"""The evaluation protocol: which problems, how an optimizer runs on one, and how a run is scored.

Every evaluation of the package runs optimizers this way: ``learned-torch-optim evaluate``
(:func:`~learned_torch_optim.meta.evaluation.evaluate`), ``benchmarks/generalist_suite.py`` and the trainer's
validation.  Following the experiments of Andrychowicz et al. (2016), section 3, every optimizer optimises the same
problems (:func:`problem_seeds`) for ``T`` steps from the same initial parameters and on the same minibatches
(:func:`run_optimizer`), which gives a loss curve ``f(theta_0), ..., f(theta_{T-1})``: the losses at the iterates
where the gradients are taken, as in :mod:`learned_torch_optim.meta.bptt`; a run may follow a learning-rate schedule
(:mod:`~learned_torch_optim.meta.schedules`).

A run has *diverged* (:func:`diverged`) when a loss is NaN or infinite; it stops there, and every score of it is
infinite, so it is never selected as the best.  The scores of a curve:

- :func:`horizon_sum`: the paper's meta-loss with all weights ``w_t = 1`` (eq. 3), ``sum_t f(theta_t)``; what
  ``evaluate`` ranks optimizers and learning rates by;
- :func:`horizon_mean`: the same divided by ``T``, the mean loss over the horizon (the suite's "mean loss");
- :func:`final_loss`: the loss at the last step;
- :func:`tail_mean`: the mean loss over the last fraction of the steps (the suite's "final loss": the last
  :data:`FINAL_FRACTION`);
- :func:`descended`: whether the tail mean is below the initial loss.

Hand-designed optimizers get their learning rate tuned on :data:`HALF_DECADES` by :func:`best_lr`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ...network import CoordinatewiseLSTM
from ...optimizer import LearnedOptimizer
from ...weight_set import WeightSet
from ..schedules import Schedule, scheduler
from ..tasks import Problem

__all__ = [
    "EVALUATION_SEED",
    "FINAL_FRACTION",
    "HALF_DECADES",
    "MAX_PROBLEMS",
    "OptimizerFactory",
    "best_lr",
    "descended",
    "diverged",
    "final_loss",
    "horizon_mean",
    "horizon_sum",
    "problem_seeds",
    "run_learned",
    "run_optimizer",
    "tail_mean",
]

OptimizerFactory = Callable[[list[torch.nn.Parameter] | list[tuple[str, torch.nn.Parameter]]], torch.optim.Optimizer]

HALF_DECADES: tuple[float, ...] = tuple(10.0 ** (k / 2) for k in range(-8, 1))
"""The learning-rate grid of the hand-designed optimizers: 1e-4, 10**-3.5, 1e-3, ..., 10**-0.5, 1."""

EVALUATION_SEED = 2 * 10**9
"""Base of the evaluation problem seeds, disjoint from the trainer's validation seeds (``10**9 + i``)."""
MAX_PROBLEMS = 10**6
"""Problems per seed: problem ``i`` of seed ``s`` is drawn from ``EVALUATION_SEED + s * MAX_PROBLEMS + i``."""
FINAL_FRACTION = 0.1
"""The fraction of the steps at the end of a run whose mean loss is its *final loss* (:func:`tail_mean`)."""


def problem_seeds(seed: int, problems: int) -> list[int]:
    """The seeds of the ``problems`` evaluation problems of ``seed``; those of fewer problems are a prefix."""
    return [EVALUATION_SEED + seed * MAX_PROBLEMS + i for i in range(problems)]


def run_optimizer(
    problem: Problem,
    make_optimizer: OptimizerFactory,
    steps: int,
    schedule: Schedule = "constant",
    *,
    named: bool = False,
) -> Tensor:
    """Optimise ``problem`` for ``steps`` steps from its initial parameters, the optimizer's lr following
    ``schedule`` over the ``steps`` (:mod:`~learned_torch_optim.meta.schedules`); the loss before each step, per
    problem of ``problem`` (``num_problems``), shape ``(steps,)``.  At the first NaN or infinite loss the run has
    diverged and stops: the remaining entries are NaN.  The optimizer gets one flat parameter, or with ``named``
    one per parameter of the problem with its name (``Problem.segments``), as ``named_parameters()`` gives them."""
    if named:
        segments = problem.segments()
        if segments is None:
            raise ValueError(
                f"{type(problem).__name__} does not name its parameters (Problem.segments), so they cannot be handed "
                "to the optimizer as named parameters"
            )
        names, sizes = zip(*segments, strict=True)
        parts = [torch.nn.Parameter(part) for part in problem.init_params().split(sizes)]
        optimizer = make_optimizer(list(zip(names, parts, strict=True)))
    else:
        parts = [torch.nn.Parameter(problem.init_params())]
        optimizer = make_optimizer(parts)
    lr_scheduler = scheduler(optimizer, schedule, steps) if schedule != "constant" else None
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = problem.loss(torch.cat(parts) if named else parts[0], problem.sample_batch())
        losses.append(loss.detach())
        if not bool(torch.isfinite(loss)):
            losses += [torch.full_like(losses[-1], math.nan)] * (steps - len(losses))
            break
        loss.backward()
        optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
    return torch.stack(losses) / problem.num_problems


def run_learned(
    network: CoordinatewiseLSTM | WeightSet,
    problem: Problem,
    steps: int,
    lr_factor: float = 1.0,
    schedule: Schedule = "constant",
) -> Tensor:
    """:func:`run_optimizer` with ``LearnedOptimizer(params, weights=network)`` at ``lr_factor`` times the
    ``nominal_lr`` of each group's network (1: the update as meta-trained); a weight set gets the problem's named
    parameters, one group per network (paper section 3.3), each at its own network's ``nominal_lr``."""

    def make(params: list[torch.nn.Parameter] | list[tuple[str, torch.nn.Parameter]]) -> torch.optim.Optimizer:
        optimizer = LearnedOptimizer(params, weights=network)
        for group in optimizer.param_groups:
            group["lr"] *= lr_factor
        return optimizer

    return run_optimizer(problem, make, steps, schedule, named=isinstance(network, WeightSet))


def diverged(losses: Tensor) -> Tensor:
    """Whether each run of ``losses`` (shape ``(..., T)``, one curve per leading index) has a NaN or infinite
    loss; shape ``losses.shape[:-1]``."""
    return ~torch.isfinite(losses).all(dim=-1)


def _inf_where_diverged(scores: Tensor, losses: Tensor) -> Tensor:
    return scores.masked_fill(diverged(losses), math.inf)


def horizon_sum(losses: Tensor) -> Tensor:
    """``sum_t f(theta_t)`` over the last dimension in float64 (eq. 3 with ``w_t = 1``); ``inf`` where diverged."""
    return _inf_where_diverged(losses.double().sum(dim=-1), losses)


def horizon_mean(losses: Tensor) -> Tensor:
    """:func:`horizon_sum` divided by the horizon ``T``: the mean loss over the horizon; ``inf`` where diverged."""
    return _inf_where_diverged(losses.double().mean(dim=-1), losses)


def final_loss(losses: Tensor) -> Tensor:
    """The loss at the last step, in float64; ``inf`` where diverged."""
    return _inf_where_diverged(losses.double()[..., -1], losses)


def tail_mean(losses: Tensor, fraction: float, steps: int | None = None) -> Tensor:
    """The mean loss over the last ``fraction`` of the steps (at least one) of a run of ``steps`` steps (by default
    the curve's length; a longer run's curve ``losses`` is its end), in float64; ``inf`` where diverged."""
    tail = max(1, int((losses.shape[-1] if steps is None else steps) * fraction))
    if tail > losses.shape[-1]:
        raise ValueError(f"tail_mean: the last {tail} steps of a run of {steps}, from a curve of {losses.shape[-1]}")
    return _inf_where_diverged(losses.double()[..., -tail:].mean(dim=-1), losses)


def descended(losses: Tensor, fraction: float) -> Tensor:
    """Whether each run ended lower than it started: it did not diverge and its :func:`tail_mean` over ``fraction``
    is below its initial loss."""
    return tail_mean(losses, fraction) < losses.double()[..., 0]


def best_lr(scores: Mapping[float, float]) -> float | None:
    """The tuned learning rate of ``{lr: score}``: the one of lowest score among the runs that did not diverge
    (finite score), the smallest on ties; ``None`` when every run diverged."""
    finite = [(score, lr) for lr, score in scores.items() if math.isfinite(score)]
    return min(finite)[1] if finite else None
