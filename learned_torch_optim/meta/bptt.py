"""Truncated backpropagation through time: the differentiable unroll of one truncation (paper section 2,
figure 2).

Within one truncation of ``T`` steps, starting from ``theta_0`` and LSTM state ``s_0``::

    f_t              = f(theta_t; batch_t)
    g_t              = grad f_t w.r.t. theta_t          # a constant: no second derivatives (paper 2, "we
                                                        # assume the gradients do not depend on phi")
    (u_t, s_{t+1})   = m(g_t, s_t; phi)
    theta_{t+1}      = theta_t + a_t u_t                # a_t: the lr schedule's factor (1 in the paper)
                                                        # (a network with lr inputs also sees
                                                        # network.lr_inputs(a_t, a_0, max_{k<=t} a_k))
    L(phi)           = sum_{t=0}^{T-1} f_t              # all weights w_t = 1 (paper eq. 3)
                     (+ f(theta_T) with include_final)

With ``second_derivatives`` ``g_t`` is not a constant: the meta-gradient also flows through it (Hessian-vector
products of ``f``), the exact gradient of ``L`` that the paper's assumption drops (the original implementation's
``second_derivatives`` flag).

With ``log_losses`` each ``f_t`` in ``L`` is replaced by ``log f_t`` (Wichrowska et al. 2017), which weighs every
task and every stage of training alike whatever the loss's scale (the losses must be positive).

``g_t`` is taken with ``torch.autograd.grad`` w.r.t. ``theta_t`` alone, which walks only the graph of ``f_t``:
the cost of the whole unroll, and of the single backward through ``L`` at its end, is linear in ``T``.

:func:`advance` runs the steps of a horizon that no truncation meta-trains on (the trainer's ``meta_loss_from``)
with ``LearnedOptimizer``'s fast step and no graph, and hands the truncations that follow their start; evolution
strategies on the end of a run go on from such a start with it too (``MetaTrainer``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..network import CoordinatewiseLSTM
from ..optimizer import STATE_KEY, LearnedOptimizer
from ..weight_set import WeightSet
from .tasks import Problem


@dataclass
class UnrollResult:
    meta_loss: Tensor
    """``sum_t f_t`` over the truncation, differentiable w.r.t. the network's parameters."""
    params: Tensor
    """``theta_T``, still attached to the graph."""
    state: Tensor
    """``s_T``, still attached to the graph."""
    losses: Tensor
    """``f_t`` per step, detached (summed over the independent problems)."""


class SetStep:
    """The networks of a weight set applied to one problem's coordinates, each network to the coordinates of the
    parameters its rule gives it (paper section 3.3: one LSTM for convolutional parameters, one for the rest),
    with :meth:`CoordinatewiseLSTM.forward` as the rule of each.  It is called as a network is, ``(grad, state) ->
    (update, state)``; its state is one flat vector, every network's ``(n_k, state_size_k)`` state in turn."""

    def __init__(self, weight_set: WeightSet, problem: Problem) -> None:
        segments = problem.segments()
        if segments is None:
            raise ValueError(
                f"a weight set's rule picks each parameter's network by its name, but {type(problem).__name__} does "
                "not name its parameters (Problem.segments); use a task of named parameters, such as a ModuleTask"
            )
        coordinates: dict[str, list[Tensor]] = {name: [] for name in weight_set.networks}
        offset = 0
        for name, size in segments:
            coordinates[weight_set.rule.network_for(name)].append(torch.arange(offset, offset + size))
            offset += size
        self.parts = [(weight_set.networks[name], torch.cat(ranges)) for name, ranges in coordinates.items() if ranges]
        self.order = torch.cat([index for _, index in self.parts])
        self.inverse = torch.argsort(self.order)
        self.counts = [len(index) for _, index in self.parts]
        self.state_sizes = [len(index) * network.state_size for network, index in self.parts]

    def initial_state(self, n: int, *, device: torch.device | str | None = None) -> Tensor:
        """Zero state of every network for its coordinates of the ``n`` (the problem's size), one flat vector."""
        if n != len(self.order):
            raise ValueError(f"the problem names {len(self.order)} coordinates, its parameters have {n}")
        self.order, self.inverse = self.order.to(device), self.inverse.to(device)
        return torch.zeros(sum(self.state_sizes), device=device)

    def __call__(self, grad: Tensor, state: Tensor, lr_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        updates, states = [], []
        for (network, _), part_grad, part_state in zip(
            self.parts, grad[self.order].split(self.counts), state.split(self.state_sizes), strict=True
        ):
            update, new_state = network(part_grad, part_state.view(-1, network.state_size), lr_state)
            updates.append(update)
            states.append(new_state.reshape(-1))
        return torch.cat(updates)[self.inverse], torch.cat(states)


def log_loss(loss: Tensor) -> Tensor:
    """``log f`` of the log meta-loss, with ``f`` clamped to the smallest positive normal number."""
    return torch.log(loss.clamp_min(torch.finfo(loss.dtype).tiny))


def unroll(
    network: CoordinatewiseLSTM | SetStep,
    problem: Problem,
    params: Tensor,
    state: Tensor,
    steps: int,
    *,
    include_final: bool = False,
    log_losses: bool = False,
    second_derivatives: bool = False,
    lr_factors: Tensor | None = None,
    lr_states: Tensor | None = None,
) -> UnrollResult:
    """Run ``steps`` optimizer steps of ``network`` (a weight set's: :class:`SetStep`) on ``problem`` keeping the
    graph for the meta-gradient.

    ``params`` and ``state`` are detached here: a truncation never backpropagates into the previous one.  With
    ``include_final`` the meta-loss also has ``f(theta_T)``, the loss after the last update (on a fresh minibatch),
    as in the original implementation, so that the last update of the truncation is judged too.  With
    ``second_derivatives`` the meta-gradient also flows through the gradients ``g_t``.  With ``lr_factors`` (one per
    step) the update of step ``t`` is ``lr_factors[t] * u_t``, as the optimizer's ``lr / nominal_lr`` makes it, and
    ``lr_states[t]`` the lr inputs of step ``t`` (``CoordinatewiseLSTM.forward``'s ``lr_state``; ``None``: a constant
    lr).
    """
    params = params.detach().requires_grad_(True)
    state = state.detach()
    meta_loss = params.new_zeros(())
    losses = []

    def term(loss: Tensor) -> Tensor:
        return log_loss(loss) if log_losses else loss

    for t in range(steps):
        loss = problem.loss(params, problem.sample_batch())
        (grad,) = torch.autograd.grad(loss, params, retain_graph=True, create_graph=second_derivatives)
        meta_loss = meta_loss + term(loss)
        losses.append(loss.detach())
        update, state = network(grad, state, None if lr_states is None else lr_states[t])
        params = params + (update if lr_factors is None else lr_factors[t] * update)
    if include_final:
        meta_loss = meta_loss + term(problem.loss(params, problem.sample_batch()))
    return UnrollResult(meta_loss, params, state, torch.stack(losses))


def advance(
    network: CoordinatewiseLSTM,
    problem: Problem,
    params: Tensor,
    steps: int,
    lr_factors: Tensor | None = None,
    *,
    start: int = 0,
    state: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Steps ``start .. start + steps - 1`` (at least one) of a run of ``network``'s rule on ``problem`` from
    ``params`` and LSTM ``state`` (a zero state at ``start = 0``; the step count ``start`` goes with it), as
    :func:`unroll` takes them but with :class:`~learned_torch_optim.LearnedOptimizer`'s step and no graph:
    ``(params, state, losses)`` after them, the losses as ``unroll``'s.  ``lr_factors`` (one per step of the run, from
    step 0) set the optimizer's lr at step ``t`` to ``lr_factors[t] * nominal_lr``, which gives the update
    ``lr_factors[t] * u_t`` and the lr inputs ``unroll`` gets from its ``lr_states`` (the first lr and the largest
    so far count the steps before ``start``).  A coordinate whose gradient is not finite is left as it is, as the
    optimizer does (``unroll`` would carry the NaN on)."""
    if (state is None) != (start == 0):
        raise ValueError(f"advance: a run resumed at step {start} needs the LSTM state it had there, and only then")
    param = torch.nn.Parameter(params.detach().clone())
    optimizer = LearnedOptimizer([param], weights=network)
    if state is not None:
        resumed = state.detach().to(param.device, optimizer.state_dtype, copy=True)
        optimizer.state[param].update({"step": torch.tensor(float(start), dtype=torch.float32), STATE_KEY: resumed})
        if lr_factors is not None:
            group = optimizer.param_groups[0]
            group["first_lr"] = network.nominal_lr * float(lr_factors[0])
            group["peak_lr"] = network.nominal_lr * float(lr_factors[:start].max())
    losses = []
    for t in range(start, start + steps):
        if lr_factors is not None:
            optimizer.param_groups[0]["lr"] = network.nominal_lr * float(lr_factors[t])
        optimizer.zero_grad()
        loss = problem.loss(param, problem.sample_batch())
        loss.backward()
        losses.append(loss.detach())
        optimizer.step()
    return param.detach(), optimizer.state[param][STATE_KEY].detach(), torch.stack(losses)
