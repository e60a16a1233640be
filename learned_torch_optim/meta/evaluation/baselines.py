"""The optimizers an evaluation compares: the learned optimizer (named :data:`LEARNED` in results) and the
hand-designed baselines of the paper's figures 2 to 5 (Adam, RMSprop, SGD and Nesterov's accelerated gradient,
"NAG"), whose learning rate is tuned."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["BASELINES", "DEFAULT_BASELINES", "LEARNED", "Baseline"]

LEARNED = "learned"
"""The name of the learned optimizer in results."""


@dataclass(frozen=True)
class Baseline:
    """A hand-designed optimizer whose learning rate is tuned; ``description`` names every other hyperparameter
    (it is part of the cache key)."""

    name: str
    description: str
    factory: Callable[[list[torch.nn.Parameter], float], torch.optim.Optimizer]


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("adam", "torch.optim.Adam, betas (0.9, 0.999), eps 1e-8", lambda p, lr: torch.optim.Adam(p, lr=lr)),
        Baseline(
            "rmsprop",
            "torch.optim.RMSprop, alpha 0.99, eps 1e-8, no momentum",
            lambda p, lr: torch.optim.RMSprop(p, lr=lr),
        ),
        Baseline("sgd", "torch.optim.SGD, no momentum", lambda p, lr: torch.optim.SGD(p, lr=lr)),
        Baseline(
            "nag",
            "torch.optim.SGD, momentum 0.9, nesterov=True (Nesterov's accelerated gradient)",
            lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True),
        ),
    )
}
"""The paper's baselines (figures 2 to 5): Adam, RMSprop, SGD and NAG."""
DEFAULT_BASELINES: tuple[str, ...] = tuple(BASELINES)
