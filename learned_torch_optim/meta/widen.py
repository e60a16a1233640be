"""Widening trained weights with new inputs, for fine-tuning them (``TrainConfig.init_from``)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor

from ..network import CoordinatewiseLSTM


def widen(
    network: CoordinatewiseLSTM,
    *,
    momentum_decays: Sequence[float] = (),
    step_timescales: Sequence[float] = (),
    lr_decay_input: bool = False,
    lr_warmup_input: bool = False,
) -> CoordinatewiseLSTM:
    """A copy of ``network`` with more inputs: the given momentum decays and step timescales added to its own, the
    lr's decay ``delta_t`` with ``lr_decay_input`` and its warm-up ``rho_t`` with ``lr_warmup_input``.  Their weights
    start at zero, so the copy computes the same updates as ``network`` (to fp32 rounding: its matrix products are
    longer) until it is trained; for fine-tuning trained weights with inputs they lack, e.g. step counts on longer
    timescales."""
    momentum_decays = (*network.momentum_decays, *(b for b in momentum_decays if b not in network.momentum_decays))
    step_timescales = (*network.step_timescales, *(t for t in step_timescales if t not in network.step_timescales))
    wide = CoordinatewiseLSTM(
        **{
            **network.config,
            "momentum_decays": momentum_decays,
            "step_timescales": step_timescales,
            "lr_decay_input": network.lr_decay_input or lr_decay_input,
            "lr_warmup_input": network.lr_warmup_input or lr_warmup_input,
        }
    )
    gradient_inputs = network.inputs_per_value * (1 + len(network.momentum_decays))
    first_lr_input = wide.num_inputs - len(wide.lr_input_columns)
    columns = (
        [*range(gradient_inputs)]
        + [network.inputs_per_value * (1 + len(wide.momentum_decays)) + k for k in range(len(network.step_timescales))]
        + [first_lr_input + wide.lr_input_columns.index(k) for k in network.lr_input_columns]
    )
    hidden = network.hidden_size if network.num_layers else 0
    with torch.no_grad():
        for param in wide.parameters():
            param.zero_()
        for layer, (narrow_cell, wide_cell) in enumerate(zip(network.cells, wide.cells)):
            for name in ("weight_hh", "bias_ih", "bias_hh"):
                getattr(wide_cell, name).copy_(getattr(narrow_cell, name))
            if layer:
                wide_cell.weight_ih.copy_(narrow_cell.weight_ih)
            else:
                wide_cell.weight_ih[:, columns] = narrow_cell.weight_ih
        wide.readout.bias.copy_(network.readout.bias)
        wide.readout.weight[:, :hidden] = network.readout.weight[:, :hidden]
        if network.readout.weight.shape[1] > hidden:
            wide.readout.weight[:, [hidden + c for c in columns]] = network.readout.weight[:, hidden:]
    return wide


def added_weights(network: CoordinatewiseLSTM, **added: object) -> dict[str, Tensor]:
    """For each parameter of ``widen(network, **added)`` (by name), a mask: 1 where a weight belongs to an added
    input, 0 where it is one of ``network``'s own."""
    ones = copy.deepcopy(network)
    with torch.no_grad():
        for param in ones.parameters():
            param.fill_(1.0)
    return {name: 1 - param.detach() for name, param in widen(ones, **added).named_parameters()}
