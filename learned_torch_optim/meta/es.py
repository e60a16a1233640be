"""Evolution strategies: a meta-gradient from the final loss of whole runs, where truncated BPTT
(:mod:`.bptt`) sees only the next ``unroll`` steps.

With ``L(phi)`` the score of one run of the network with weights ``phi`` on fixed problems, minibatches and lr
schedule (the suite's final loss: the mean (log) loss over the last 10% of the steps), antithetic evolution strategies
(Salimans et al. 2017; VeLO and Celo2 meta-train with their truncated form, PES) estimate the gradient of the
Gaussian-smoothed ``E_eps L(phi + sigma eps)`` from ``N`` pairs of runs::

    eps_i ~ N(0, I) (zero where a mask freezes a weight),   i = 1..N
    g     = 1 / (2 sigma N) * sum_i (L(phi + sigma eps_i) - L(phi - sigma eps_i)) eps_i

Both runs of a pair see the same problems and minibatches, so their difference is the network's doing. A pair with a
diverged run (a score that is not finite) is left out of the sum (and of ``N``).  With ``ranks`` each score ``L`` is
replaced by its centred rank among the ``2N`` scores, from -1/2 (the lowest) to 1/2 (the highest) (the fitness
shaping of Salimans et al. 2017): the estimate no longer depends on the scale of the problems' losses, so an iteration
on a problem whose log loss moves by 2 weighs as much as one on a problem whose log loss moves by 0.01.

Nothing is differentiated: a run costs a forward pass of the optimizer, whatever its length, in the memory of one run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def antithetic_gradient(
    params: Sequence[Tensor],
    score: Callable[[], float],
    *,
    pairs: int,
    sigma: float,
    generator: torch.Generator,
    masks: Sequence[Tensor | None] | None = None,
    ranks: bool = False,
) -> tuple[list[Tensor], list[float]]:
    """The estimate ``g`` above for ``params`` (one tensor per parameter, on ``params``'s devices) and the scores of
    the ``2 * pairs`` runs, in order ``+eps_1, -eps_1, +eps_2, ...``.

    ``score()`` runs the network whose weights ``params`` are and returns ``L``; ``params`` are set to each
    perturbation in place and given back their values exactly at the end.  ``masks[k]`` (1 where a weight trains)
    restricts the perturbations of ``params[k]``; ``eps`` is drawn on the CPU from ``generator``.  ``ranks``: shape
    the scores into centred ranks."""
    masks = list(masks) if masks is not None else [None] * len(params)
    originals = [p.detach().clone() for p in params]
    scores: list[float] = []
    counted: list[tuple[list[Tensor], list[float]]] = []  # the noise and the scores of each pair left in
    try:
        for _ in range(pairs):
            noise = [torch.randn(p.shape, generator=generator).to(p.device) for p in params]
            noise = [eps if mask is None else eps * mask for eps, mask in zip(noise, masks, strict=True)]
            pair = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for p, original, eps in zip(params, originals, noise, strict=True):
                        p.copy_(original + sign * sigma * eps)
                pair.append(score())
            scores += pair
            if all(math.isfinite(s) for s in pair):
                counted.append((noise, pair))
    finally:
        with torch.no_grad():
            for p, original in zip(params, originals, strict=True):
                p.copy_(original)
    if ranks and counted:
        shaped = centred_ranks([s for _, pair in counted for s in pair])
        counted = [(noise, shaped[2 * i : 2 * i + 2]) for i, (noise, _) in enumerate(counted)]
    estimate = [torch.zeros_like(p) for p in params]
    for noise, (plus, minus) in counted:
        for total, eps in zip(estimate, noise, strict=True):
            total.add_(eps, alpha=(plus - minus) / (2 * sigma))
    return [total / max(len(counted), 1) for total in estimate], scores


def centred_ranks(scores: Sequence[float]) -> list[float]:
    """Each score's rank among ``scores``, scaled to [-1/2, 1/2] (0 for a single score); equal scores share the mean
    of their ranks."""
    n = len(scores)
    if n < 2:
        return [0.0] * n
    ranks = [sum(t < s for t in scores) + (sum(t == s for t in scores) - 1) / 2 for s in scores]
    return [rank / (n - 1) - 0.5 for rank in ranks]
