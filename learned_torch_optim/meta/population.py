"""A population of networks run side by side: :func:`~.evaluation.protocol.run_learned` for ``P`` weight sets of one
network at once, vectorised with ``torch.func.vmap``.

Evolution strategies score ``2N`` perturbed copies of one network on the same problem and minibatches
(:mod:`.es`).  One at a time, a small problem leaves a GPU waiting on kernel launches; side by side, one step of the
population is one batched gradient of the problem's loss (``vmap`` over the parameters, the minibatch shared) and one
batched step of the rule (``vmap`` over ``torch.func.functional_call`` of :meth:`CoordinatewiseLSTM.forward
<learned_torch_optim.network.CoordinatewiseLSTM.forward>` with the stacked weights), the same number of launches for
``P`` runs as for one.  Each member follows :func:`~learned_torch_optim.optimizer.learned_step` exactly, so a member's
curve is the one ``run_learned`` gives for its weights (``tests/test_population.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from ..network import CoordinatewiseLSTM, lr_inputs
from .schedules import Schedule, lr_factors
from .tasks import Problem


def stack_weights(network: CoordinatewiseLSTM, members: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The weights of a population, each of ``network``'s parameters stacked along a new first dimension: member
    ``i``'s value from ``members[i]`` where it has one, else ``network``'s own."""
    return {
        name: torch.stack([member.get(name, value).detach().to(value) for member in members])
        for name, value in network.named_parameters()
    }


def run_population(
    network: CoordinatewiseLSTM,
    weights: dict[str, Tensor],
    problem: Problem,
    steps: int,
    lr_factor: float = 1.0,
    schedule: Schedule = "constant",
) -> Tensor:
    """The loss curves of ``P`` runs of ``network``'s rule with the weights of :func:`stack_weights` (each parameter
    of shape ``(P, ...)``), on ``problem`` from its initial parameters and on its minibatches, shared by the
    members; shape ``(P, steps)``.  As :func:`~.evaluation.protocol.run_learned` at ``lr_factor`` times the
    ``nominal_lr`` under ``schedule``: the loss before each step divided by ``problem.num_problems``, NaN after a
    member's first NaN or infinite loss (the member stops there)."""
    members = next(iter(weights.values())).shape[0]
    theta = problem.init_params().expand(members, -1).clone()
    state = network.initial_state(theta.shape[1], device=theta.device).expand(members, -1, -1).clone()
    factors = lr_factor * lr_factors(schedule, steps).to(theta.device)
    lr_states = lr_inputs(factors, factors[0], torch.cummax(factors, dim=0).values)
    loss_and_grad = vmap(grad_and_value(problem.loss), in_dims=(0, None))
    rule = vmap(lambda w, g, s, lr_state: functional_call(network, w, (g, s, lr_state)), in_dims=(0, 0, 0, None))
    running = torch.ones(members, dtype=torch.bool, device=theta.device)
    losses = []
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=False):  # cuDNN's RNNs cannot run under vmap
        for t in range(steps):
            grad, loss = loss_and_grad(theta, problem.sample_batch())
            losses.append(loss)
            running &= torch.isfinite(loss)
            finite = torch.isfinite(grad)
            update, new_state = rule(weights, torch.where(finite, grad, 0.0), state, lr_states[t])
            keep = finite & running.unsqueeze(1)
            theta = torch.where(keep, theta + factors[t] * update, theta)
            state = torch.where(keep.unsqueeze(2), new_state, state)
    curves = torch.stack(losses, dim=1) / problem.num_problems
    diverged = ~torch.isfinite(curves)
    return curves.masked_fill(diverged.cumsum(dim=1) - diverged.int() > 0, math.nan)
