"""Learning-rate schedules: the factor on the learning rate at each step ``t = 0..T-1`` of a run of ``T`` steps.

- ``"constant"``: ``1``.
- ``"warmup-cosine"``: a linear warm-up over the first ``W = max(1, round(WARMUP_FRACTION * T))`` steps, then a cosine
  decay towards 0 over the rest (how models are trained today)::

      factor_t = (t + 1) / W                                  for t < W
      factor_t = (1 + cos(pi * (t - W) / (T - W))) / 2        otherwise

The evaluation protocol runs every optimizer under one through ``torch.optim.lr_scheduler.LambdaLR``
(:func:`scheduler`); the trainer multiplies the network's update at step ``t`` by ``factor_t``
(``TrainConfig.lr_schedules``), so the network meets during meta-training the schedules it is run under.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch.optim.lr_scheduler import LambdaLR

Schedule = Literal["constant", "warmup-cosine"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
WARMUP_FRACTION = 0.05


def lr_factor(schedule: Schedule, step: int, total: int) -> float:
    """The factor on the learning rate at (0-based) ``step`` of a run of ``total`` steps."""
    if schedule == "constant":
        return 1.0
    if schedule != "warmup-cosine":
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    warmup = max(1, round(WARMUP_FRACTION * total))
    if step < warmup:
        return (step + 1) / warmup
    return (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) / 2


def lr_factors(schedule: Schedule, total: int) -> torch.Tensor:
    """``lr_factor(schedule, t, total)`` for ``t = 0..total-1``, float32."""
    return torch.tensor([lr_factor(schedule, step, total) for step in range(total)], dtype=torch.float32)


def scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule, total: int) -> LambdaLR:
    """A ``LambdaLR`` that gives ``optimizer`` the lr of :func:`lr_factor` at each step (call its ``step()`` after
    each ``optimizer.step()``)."""
    return LambdaLR(optimizer, lambda step: lr_factor(schedule, step, total))
