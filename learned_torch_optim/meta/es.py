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
    score: Callable[[], float] | None = None,
    *,
    pairs: int,
    sigma: float,
    generator: torch.Generator,
    masks: Sequence[Tensor | None] | None = None,
    ranks: bool = False,
    score_all: Callable[[list[list[Tensor]]], Sequence[float]] | None = None,
) -> tuple[list[Tensor], list[float]]:
    """The estimate ``g`` above for ``params`` (one tensor per parameter, on ``params``'s devices) and the scores of
    the ``2 * pairs`` runs, in order ``+eps_1, -eps_1, +eps_2, ...``.

    Either ``score()`` runs the network whose weights ``params`` are and returns ``L``, one run at a time (``params``
    are set to each perturbation in place and given back their values exactly at the end), or ``score_all`` takes
    the ``2 * pairs`` perturbed values of ``params``, in that order, and returns their scores (a population run,
    :mod:`.population`).  ``masks[k]`` (1 where a weight trains) restricts the perturbations of ``params[k]``;
    ``eps`` is drawn on the CPU from ``generator``.  ``ranks``: shape the scores into centred ranks."""
    if (score is None) == (score_all is None):
        raise TypeError("antithetic_gradient takes score or score_all, not both or neither")
    masks = list(masks) if masks is not None else [None] * len(params)
    noise = []
    for _ in range(pairs):
        eps = [torch.randn(p.shape, generator=generator).to(p.device) for p in params]
        noise.append([e if mask is None else e * mask for e, mask in zip(eps, masks, strict=True)])
    originals = [p.detach().clone() for p in params]
    perturbed = [
        [original + sign * sigma * e for original, e in zip(originals, eps, strict=True)]
        for eps in noise
        for sign in (1.0, -1.0)
    ]
    if score_all is not None:
        scores = list(score_all(perturbed))
    else:
        scores = _one_at_a_time(params, score, perturbed, originals)
    counted = [  # the noise and the scores of each pair left in
        (eps, scores[2 * i : 2 * i + 2])
        for i, eps in enumerate(noise)
        if all(math.isfinite(s) for s in scores[2 * i : 2 * i + 2])
    ]
    if ranks and counted:
        shaped = centred_ranks([s for _, pair in counted for s in pair])
        counted = [(eps, shaped[2 * i : 2 * i + 2]) for i, (eps, _) in enumerate(counted)]
    estimate = [torch.zeros_like(p) for p in params]
    for eps, (plus, minus) in counted:
        for total, e in zip(estimate, eps, strict=True):
            total.add_(e, alpha=(plus - minus) / (2 * sigma))
    return [total / max(len(counted), 1) for total in estimate], scores


def _one_at_a_time(
    params: Sequence[Tensor], score: Callable[[], float], perturbed: list[list[Tensor]], originals: list[Tensor]
) -> list[float]:
    """``score()`` with ``params`` set to each of ``perturbed`` in turn, then given back ``originals``."""
    scores = []
    try:
        for values in perturbed:
            with torch.no_grad():
                for p, value in zip(params, values, strict=True):
                    p.copy_(value)
            scores.append(score())
    finally:
        with torch.no_grad():
            for p, original in zip(params, originals, strict=True):
                p.copy_(original)
    return scores


def centred_ranks(scores: Sequence[float]) -> list[float]:
    """Each score's rank among ``scores``, scaled to [-1/2, 1/2] (0 for a single score); equal scores share the mean
    of their ranks."""
    n = len(scores)
    if n < 2:
        return [0.0] * n
    ranks = [sum(t < s for t in scores) + (sum(t == s for t in scores) - 1) / 2 for s in scores]
    return [rank / (n - 1) - 0.5 for rank in ranks]
