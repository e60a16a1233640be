"""Fast implementations of the optimizer step, each tested equal to ``CoordinatewiseLSTM.forward``.

- :mod:`.blocked`: the step in blocks of a fixed number of coordinates with preallocated buffers (pure PyTorch, any
  device): memory beyond parameters, gradients and state is bounded by the block size, not the model size.
- :mod:`.native`: a compiled CPU kernel for the math of a block (built at first use, cached; silently absent when no
  compiler is found or its self-check fails), used by the blocked step in place of the torch operations.
- :mod:`.triton_lstm`: the same for CUDA devices as a Triton kernel, where Triton is installed.

:func:`step_in_blocks` runs the blocked step with the compiled kernel :func:`select_kernel` finds, or with torch
operations; :func:`learned_torch_optim.optimizer.choose_implementation` decides which (or the reference).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..network import CoordinatewiseLSTM
from . import native, triton_lstm
from .blocked import BlockKernel, PackedNetwork, Workspace, blocked_step, pack_network

__all__ = ["BLOCK_SIZES", "IMPLEMENTED_OPTIONS", "implements", "select_kernel", "step_in_blocks", "workspace_bytes"]

IMPLEMENTED_OPTIONS = frozenset(
    {
        "hidden_size",
        "num_layers",
        "preprocessing",
        "preprocessing_p",
        "output_scale",
        "momentum_decays",
        "second_moment_decay",
        "step_timescales",
        "readout_skip",
        "output",
        "magnitude_scale",
        "update_clip",
        "gradient_rms_clip",
        "nominal_lr",
        "lr_decay_input",
        "lr_warmup_input",
        "linear_direction",
    }
)
"""The network options the blocked step and the compiled kernels compute (``nominal_lr`` only scales ``lr``, which
the optimizer does before any implementation; the lr inputs are folded into the biases and ``linear_direction``'s
mask into the read-out by :func:`.blocked.pack_network`; ``tests/test_kernels.py`` tests each
against ``CoordinatewiseLSTM.forward``).  An option added to the network is not among them until they learn it."""


def implements(network: CoordinatewiseLSTM) -> bool:
    """Whether the blocked step computes ``network``'s rule: its config (which lists the options beyond the
    paper's only where they are not at their defaults) names no option outside :data:`IMPLEMENTED_OPTIONS`."""
    return set(network.config) <= IMPLEMENTED_OPTIONS


BLOCK_SIZES = {"native": 16384, "triton": 1 << 19, "torch-cpu": 4096, "torch-other": 1 << 18}
"""Coordinates per block, per path: the compiled CPU kernel (which tiles its block in registers and L1 itself, so
the block only bounds the workspace and amortises Python overhead), the Triton kernel, torch operations on the CPU
(buffers near the L2 cache's size) and torch operations on other devices (few kernel launches).  Chosen by
measurement, see ``docs/performance.md``."""


def select_kernel(packed: PackedNetwork, device: torch.device, compiled: bool) -> tuple[str, BlockKernel | None]:
    """The path for ``packed`` on ``device``: a key of :data:`BLOCK_SIZES` and the kernel (``None``: torch
    operations).  Compiled kernels exist for networks with LSTM layers."""
    if compiled and packed.num_layers:
        if device.type == "cpu" and (kernel := native.load(packed)) is not None:
            return "native", kernel
        if device.type == "cuda" and (kernel := triton_lstm.load(packed, device)) is not None:
            return "triton", kernel
    return ("torch-cpu" if device.type == "cpu" else "torch-other"), None


def workspace_bytes(network: CoordinatewiseLSTM, path: str) -> int:
    """The bound on the temporary memory of one :func:`step_in_blocks` call on ``path``, in bytes."""
    packed = pack_network(network, torch.device("cpu"))
    return BLOCK_SIZES[path] * Workspace.bytes_per_row(packed, for_torch_math=path.startswith("torch"))


@torch.compiler.disable
def step_in_blocks(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[Tensor],
    network: CoordinatewiseLSTM,
    *,
    lr: float | Tensor,
    weight_decay: float,
    maximize: bool,
    compiled: bool,
    lr_state: Tensor | None = None,
) -> bool:
    """:func:`.blocked.blocked_step` with the path of :func:`select_kernel`, ``lr_state`` the lr inputs of a network
    with any (``CoordinatewiseLSTM.forward``).  Returns whether every gradient was finite."""
    device = params[0].device
    packed = pack_network(network, device, lr_state)
    path, kernel = select_kernel(packed, device, compiled)
    return blocked_step(
        params,
        grads,
        states,
        packed,
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        block_size=BLOCK_SIZES[path],
        kernel=kernel,
    )
