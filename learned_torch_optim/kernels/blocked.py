"""The update rule on a block of coordinates with preallocated buffers: the blocked (fused) path of the optimizer.

:meth:`learned_torch_optim.CoordinatewiseLSTM.forward` is the reference definition of the rule; this module
re-implements it for ``m <= block_size`` coordinates at a time, with every temporary in a :class:`Workspace`
allocated once per step, so the memory the step needs beyond parameters, gradients and state is fixed by the block
size and the network, whatever the model's size.  It is tested equal to ``forward`` (``tests/test_kernels.py``).

Per layer ``l`` the two products of an LSTM cell become one: the inputs ``[x, h_l]`` sit side by side in the
buffer ``X`` and the weights ``[W_ih, W_hh]`` side by side in ``W_l`` (rows reordered to the gate order
``i, f, o, g`` so the three sigmoid gates are adjacent)::

    G   = b_ih + b_hh + [x, h_l] @ [W_ih, W_hh]^T        one addmm into the buffer G, shape (m, 4H)
    i, f, o = sigmoid(G[:, :3H]);  g = tanh(G[:, 3H:])   in place
    c_l = f * c_l + i * g                                 in place, in the state
    h_l = o * tanh(c_l)                                   into the state and into X as the next layer's input

and the read-out ``o = W_r [h_top, x if readout_skip] + b_r`` gives ``u = output_scale * o_0`` (times
``exp(magnitude_scale * o_1)`` for ``"direction_magnitude"``, clipped to ``update_clip`` if set).  The inputs ``x``
of a network with gradient accumulators (momenta, second moment, step count) are made by
``CoordinatewiseLSTM.features`` itself, on the block, and the new accumulators written into the block's state.
That is :func:`lstm_block`, with torch operations; a :class:`BlockKernel` (:mod:`.native` on the CPU,
:mod:`.triton_lstm` on CUDA for the paper's form) computes the same for a block in one pass, and
:func:`blocked_step` runs either over all the coordinates of a step.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from ..network import LR_INPUT_NAMES, CoordinatewiseLSTM, NetworkConfig


@dataclass(frozen=True)
class PackedNetwork:
    """The weights of a :class:`CoordinatewiseLSTM` laid out for :func:`lstm_block`, fp32, on one device, beside
    the network itself (for its options and ``features``).

    ``weights[l]`` is ``[W_ih, W_hh]`` of layer ``l``, shape ``(4H, in_l + H)``, with gate rows in the order
    ``i, f, o, g``; ``biases[l] = b_ih + b_hh`` in the same order; ``readout_weight`` (outputs, read-out inputs)
    and ``readout_bias`` (outputs,) are the read-out's.
    """

    network: CoordinatewiseLSTM
    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]
    readout_weight: Tensor
    readout_bias: Tensor

    @property
    def num_layers(self) -> int:
        return len(self.weights)

    @property
    def hidden_size(self) -> int:
        return self.network.hidden_size

    @property
    def num_inputs(self) -> int:
        return self.network.num_inputs

    @property
    def num_outputs(self) -> int:
        return self.readout_bias.shape[0]

    @property
    def state_size(self) -> int:
        return self.network.state_size


def pack_network(network: CoordinatewiseLSTM, device: torch.device, lr_state: Tensor | None = None) -> PackedNetwork:
    """Lay out ``network``'s weights for the blocked kernels (a few kilobytes; done at every step, so a network
    changed in place is always seen as it is).

    The lr inputs of a network with any (``lr_state``, as ``CoordinatewiseLSTM.forward`` takes it) are the same for
    every coordinate of a step, so they are folded into the biases (``b + W[:, columns] @ values``, their columns
    dropped): the packed network computes the rule of a network without them, which every kernel implements."""
    hidden = network.hidden_size
    order = torch.cat([torch.arange(k * hidden, (k + 1) * hidden) for k in (0, 1, 3, 2)])  # i, f, g, o -> i, f, o, g

    def as_fp32(tensor: Tensor) -> Tensor:
        return tensor.detach().to(device=device, dtype=torch.float32)

    input_weights = [cell.weight_ih for cell in network.cells]
    hidden_weights = [cell.weight_hh for cell in network.cells]
    biases = [cell.bias_ih + cell.bias_hh for cell in network.cells]
    readout_weight, readout_bias = network.readout_parameters()
    if used := network.lr_input_columns:
        values = torch.zeros(len(LR_INPUT_NAMES)) if lr_state is None else lr_state.detach().float().cpu()
        values = values[used].to(readout_bias)
        first = network.num_inputs - len(used)
        if network.num_layers:
            biases[0] = biases[0] + input_weights[0][:, first:] @ values
            input_weights[0] = input_weights[0][:, :first]
        first += hidden if network.num_layers else 0
        if readout_weight.shape[1] > first:
            readout_bias = readout_bias + readout_weight[:, first:] @ values
            readout_weight = readout_weight[:, :first]
        network = _without_lr_inputs(network.options)
    weights = tuple(
        as_fp32(torch.cat((weight_ih, weight_hh), dim=1)[order]).contiguous()
        for weight_ih, weight_hh in zip(input_weights, hidden_weights)
    )
    return PackedNetwork(
        network=network,
        weights=weights,
        biases=tuple(as_fp32(bias[order]).contiguous() for bias in biases),
        readout_weight=as_fp32(readout_weight).contiguous(),
        readout_bias=as_fp32(readout_bias).contiguous(),
    )


@functools.cache
def _without_lr_inputs(options: NetworkConfig) -> CoordinatewiseLSTM:
    """A network of ``options`` but the lr inputs, on the meta device: the options and features of a packed network
    whose lr inputs are folded into its biases (its own weights, never allocated, are not used)."""
    with torch.device("meta"):
        return CoordinatewiseLSTM(**replace(options, lr_decay_input=False, lr_warmup_input=False).as_dict())


class BlockKernel(Protocol):
    """A compiled implementation of :func:`lstm_block` (:class:`.native.NativeKernel`,
    :class:`.triton_lstm.TritonKernel`)."""

    def pack(self, packed: PackedNetwork) -> Any:
        """The weights in the kernel's layout (done once per step)."""

    def __call__(self, packed: PackedNetwork, weights: Any, grad: Tensor, state: Tensor, update: Tensor) -> None:
        """Write ``u`` into ``update`` (m,) and update ``state`` (m, state_size) in place, all fp32, for finite
        gradients ``grad`` (m,) (``grad`` and ``update`` contiguous, ``state`` with contiguous rows)."""


def random_state(network: CoordinatewiseLSTM, m: int, generator: torch.Generator) -> Tensor:
    """States for ``m`` coordinates that a run could reach: random LSTM state and momenta, second moments above
    the squared momenta (as a run's are, roughly), whole step counts, equal in the first half of the rows and mixed
    in the rest, and every tenth coordinate never stepped (zero accumulators)."""
    state = torch.randn(m, network.state_size, generator=generator)
    if network.accumulator_size:
        accumulators = state[:, network.lstm_state_size :]
        momenta = len(network.momentum_decays)
        if network.preprocessing == "adam_normalized":
            largest = accumulators[:, :momenta].pow(2).amax(dim=1) if momenta else 0.0
            accumulators[:, momenta].pow_(2).add_(largest)
        steps = torch.randint(0, 100, (m,), generator=generator).float()
        steps[: m // 2] = 7.0
        accumulators[:, -1] = steps
        accumulators[::10] = 0.0
    return state


def check_kernel(kernel: BlockKernel, packed: PackedNetwork, device: torch.device) -> None:
    """Raise ``RuntimeError`` unless ``kernel`` agrees with :func:`lstm_block` on random gradients (both
    preprocessing branches, zeros) and states: the check a compiled kernel passes before it is used."""
    generator = torch.Generator().manual_seed(0)
    m = 67
    grad = torch.randn(m, generator=generator) * torch.logspace(-8, 1, m)
    grad[::5] = 0.0
    state = random_state(packed.network, m, generator)
    expected_state = state.clone()
    expected = lstm_block(pack_on_cpu(packed), grad, expected_state, Workspace(packed, m, torch.device("cpu")))
    grad, state, update = grad.to(device), state.to(device), torch.empty(m, device=device)
    kernel(packed, kernel.pack(packed), grad, state, update)
    if not (
        torch.allclose(update.cpu(), expected, rtol=1e-4, atol=1e-5)
        and torch.allclose(state.cpu(), expected_state, rtol=1e-4, atol=1e-5)
    ):
        raise RuntimeError(f"{type(kernel).__name__} disagrees with the reference on its self-check")


def pack_on_cpu(packed: PackedNetwork) -> PackedNetwork:
    """``packed`` with its tensors on the CPU."""
    return replace(
        packed,
        weights=tuple(w.cpu() for w in packed.weights),
        biases=tuple(b.cpu() for b in packed.biases),
        readout_weight=packed.readout_weight.cpu(),
        readout_bias=packed.readout_bias.cpu(),
    )


class Workspace:
    """Every temporary of the blocked step for blocks of up to ``rows`` coordinates, allocated once per step.

    ``X`` (the layer inputs), ``G`` (the gates) and ``out`` (the read-out's outputs, a view of ``update`` when there
    is one) serve :func:`lstm_block` and are left out (``for_torch_math`` false) when the compiled kernel does the
    math; ``state`` holds a block's state in fp32 where it cannot be used where it is stored (another dtype,
    gathered from several tensors, or subject to the non-finite rule); five fp32 vectors and two masks.
    :meth:`bytes_per_row` gives the total per coordinate.
    """

    def __init__(self, packed: PackedNetwork, rows: int, device: torch.device, for_torch_math: bool = True) -> None:
        x_width, g_width = self.matrix_widths(packed) if for_torch_math else (0, 0)

        def empty(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.empty(shape, dtype=dtype, device=device)

        self.X = empty(rows, x_width)
        self.G = empty(rows, g_width)
        self.state = empty(rows, packed.state_size)
        self.grad = empty(rows)
        self.feature = empty(rows)
        self.update = empty(rows)
        self.theta = empty(rows)
        self.saved_theta = empty(rows)
        self.mask = empty(rows, dtype=torch.bool)
        self.finite = empty(rows, dtype=torch.bool)
        extra_outputs = packed.num_outputs > 1 and for_torch_math
        self.out = empty(rows, packed.num_outputs) if extra_outputs else self.update.unsqueeze(1)

    @staticmethod
    def matrix_widths(packed: PackedNetwork) -> tuple[int, int]:
        """Columns of ``X`` (``max(inputs, H) + H``, or the inputs alone without layers) and of ``G`` (``4H``)."""
        if not packed.num_layers:
            return packed.num_inputs, 0
        return max(packed.num_inputs, packed.hidden_size) + packed.hidden_size, 4 * packed.hidden_size

    @classmethod
    def bytes_per_row(cls, packed: PackedNetwork, for_torch_math: bool = True) -> int:
        """Bytes of workspace per coordinate of a block; with torch operations on a network with gradient
        accumulators, plus a bound on what ``CoordinatewiseLSTM.features`` allocates for a row (about eight
        floats per input and accumulator, counted from its operations)."""
        x_width, g_width = cls.matrix_widths(packed) if for_torch_math else (0, 0)
        floats = x_width + g_width + packed.state_size + 5
        if for_torch_math:
            floats += packed.num_outputs if packed.num_outputs > 1 else 0
            if packed.network.accumulator_size:
                floats += 10 + 8 * (packed.num_inputs + packed.network.accumulator_size)
        return 4 * floats + 2


def features_into(packed: PackedNetwork, grad: Tensor, state: Tensor, X: Tensor, work: Workspace) -> None:
    """Write the network's inputs (``CoordinatewiseLSTM.features``) into the first columns of ``X`` and, for a
    network with gradient accumulators, the new accumulators into the tail of ``state``."""
    network = packed.network
    if network.accumulator_size:
        accumulators = state[:, network.lstm_state_size :]
        inputs, new_accumulators = network.features(grad, accumulators)
        accumulators.copy_(new_accumulators)
        X[:, : packed.num_inputs].copy_(inputs)
        return
    if network.preprocessing == "identity":
        X[:, 0].copy_(grad)
        return
    p = network.preprocessing_p
    threshold = math.exp(-p)
    m = grad.shape[0]
    magnitude, feature, small = work.feature[:m], work.update[:m], work.mask[:m]
    # log part: log(max(|g|, e^-p)) / p where |g| >= e^-p, else -1
    torch.abs(grad, out=magnitude)
    torch.lt(magnitude, threshold, out=small)
    magnitude.clamp_min_(threshold).log_().div_(p).masked_fill_(small, -1.0)
    X[:, 0].copy_(magnitude)
    # sign part: sign(g) where |g| >= e^-p, else e^p * g
    torch.mul(grad, math.exp(p), out=feature)
    torch.sign(grad, out=magnitude)
    torch.where(small, feature, magnitude, out=feature)
    X[:, 1].copy_(feature)


def readout_update(packed: PackedNetwork, out: Tensor, work: Workspace) -> Tensor:
    """The update ``u`` from the read-out's outputs ``out`` (m, outputs), into ``work.update``."""
    network = packed.network
    update = torch.mul(out[:, 0], network.output_scale, out=work.update[: out.shape[0]])
    if network.output == "direction_magnitude":
        magnitude = torch.mul(out[:, 1], network.magnitude_scale, out=work.feature[: out.shape[0]])
        update.mul_(magnitude.exp_())
    if network.update_clip is not None:
        update.clamp_(-network.update_clip, network.update_clip)
    return update


def lstm_block(packed: PackedNetwork, grad: Tensor, state: Tensor, work: Workspace) -> Tensor:
    """One step of the rule for ``m`` coordinates with torch operations: ``state`` (m, state_size) fp32 is updated
    in place.

    ``grad`` (m,) fp32 must be finite.  Returns the update ``u`` (m,), a view of ``work.update``.
    """
    m = grad.shape[0]
    hidden, inputs = packed.hidden_size, packed.num_inputs
    X, out = work.X[:m], work.out[:m]
    features_into(packed, grad, state, X, work)
    readout_weight, readout_bias = packed.readout_weight, packed.readout_bias
    if not packed.num_layers:
        torch.addmm(readout_bias, X[:, :inputs], readout_weight.t(), out=out)
        return readout_update(packed, out, work)
    skip = packed.network.readout_skip
    if skip:  # the inputs' part of the read-out, before the layers overwrite X
        torch.addmm(readout_bias, X[:, :inputs], readout_weight[:, hidden:].t(), out=out)
    G = work.G[:m]
    width = inputs
    for layer, (weight, bias) in enumerate(zip(packed.weights, packed.biases)):
        h = state[:, 2 * layer * hidden : (2 * layer + 1) * hidden]
        c = state[:, (2 * layer + 1) * hidden : (2 * layer + 2) * hidden]
        X[:, width : width + hidden].copy_(h)
        torch.addmm(bias, X[:, : width + hidden], weight.t(), out=G)
        G[:, : 3 * hidden].sigmoid_()
        g = G[:, 3 * hidden :].tanh_()
        i, f, o = G[:, :hidden], G[:, hidden : 2 * hidden], G[:, 2 * hidden : 3 * hidden]
        c.mul_(f).addcmul_(i, g)
        torch.tanh(c, out=h).mul_(o)
        if layer + 1 < packed.num_layers:
            X[:, :hidden].copy_(h)
        width = hidden
    if skip:
        out.addmm_(h, readout_weight[:, :hidden].t())
    else:
        torch.addmm(readout_bias, h, readout_weight.t(), out=out)
    return readout_update(packed, out, work)


Segment = tuple[int, int, int]
"""``(tensor index, start, stop)``: a run of coordinates of one tensor."""


def plan_blocks(numels: list[int], block_size: int) -> list[list[Segment]]:
    """Cut the coordinates of tensors with ``numels`` coordinates into blocks of at most ``block_size``.

    A tensor contributes ``numel // block_size`` blocks of its own (used where they are stored); its remainder and
    the small tensors are packed together into shared blocks (gathered into the workspace and scattered back).
    """
    blocks: list[list[Segment]] = []
    shared: list[Segment] = []
    fill = 0
    for index, numel in enumerate(numels):
        start = 0
        while numel - start >= block_size:
            blocks.append([(index, start, start + block_size)])
            start += block_size
        if start < numel:
            if fill + numel - start > block_size:
                blocks.append(shared)
                shared, fill = [], 0
            shared.append((index, start, numel))
            fill += numel - start
    if shared:
        blocks.append(shared)
    return blocks


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    """Whether ``b`` is a view of ``a``'s memory (``reshape`` gave a view) rather than a copy."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _rows_contiguous(state: Tensor) -> bool:
    """Whether each row of ``state`` (m, state_size) is dense, as the compiled kernels read and write it."""
    return state.shape[1] <= 1 or state.stride(1) == 1


def _split(mask: Tensor | None, sizes: list[int]) -> list[Tensor | None]:
    return [None] * len(sizes) if mask is None else list(mask.split(sizes))


def _store_state(new: Tensor, old: Tensor, keep: Tensor | None) -> None:
    """Write the fp32 state ``new`` into the stored state ``old``, only in the rows of ``keep`` if given."""
    if keep is not None:
        torch.where(keep.unsqueeze(1), new, old, out=new)
    old.copy_(new)


def _fp32_block(sources: list[Tensor], buffer: Tensor, direct: bool) -> Tensor:
    """The block made of ``sources`` in fp32: the one source itself if ``direct``, else copied into ``buffer``."""
    if direct:
        return sources[0]
    torch._foreach_copy_(list(buffer.split([s.shape[0] for s in sources])), sources)
    return buffer


def blocked_step(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[Tensor],
    packed: PackedNetwork,
    *,
    lr: float | Tensor,
    weight_decay: float,
    maximize: bool,
    block_size: int,
    kernel: BlockKernel | None = None,
) -> bool:
    """:func:`learned_torch_optim.optimizer.learned_step` block by block, with the temporaries of one
    :class:`Workspace` of ``min(block_size, coordinates)`` rows.

    ``params``, ``grads`` and ``states`` are real tensors of one device; ``states[k]`` has shape
    ``params[k].shape + (state_size,)`` and any floating dtype.  The math is fp32:
    ``theta <- theta * (1 - lr * weight_decay) + lr * u``.  A coordinate whose gradient is not finite keeps its
    parameter and state.  Blocks of one tensor, fp32 and all finite are computed where they are stored; others are
    gathered into the workspace and scattered back (with a compiled kernel, the state of each fp32 tensor of a
    block is used where it is stored).  A kernel with ``step_parameters`` (the CPU kernel) takes each dense fp32
    tensor whole, in one call that also updates the parameters: no workspace, and one start of its threads per
    tensor rather than per block.  Returns whether every gradient was finite.
    """
    numels = [p.numel() for p in params]
    flat_params = [p.reshape(n) for p, n in zip(params, numels)]
    flat_grads = [g.reshape(n).contiguous() for g, n in zip(grads, numels)]  # the kernels read them densely
    flat_states = [s.reshape(n, packed.state_size) for s, n in zip(states, numels)]
    nonempty = [g for g in flat_grads if g.numel()]
    all_finite = not nonempty or bool(torch.stack(torch._foreach_norm(nonempty, math.inf)).isfinite().all())
    work = Workspace(packed, min(block_size, sum(numels)), params[0].device, for_torch_math=kernel is None)
    kernel_weights = kernel.pack(packed) if kernel is not None else None
    in_blocks = list(numels)  # coordinates left to the blocks, per tensor
    if hasattr(kernel, "step_parameters") and all_finite:
        decay = float(1 - lr * weight_decay)
        for k, (theta, grad, state) in enumerate(zip(flat_params, flat_grads, flat_states)):
            dense = theta.is_contiguous() and _rows_contiguous(state)
            if dense and all(tensor.dtype == torch.float32 for tensor in (theta, grad, state)):
                kernel.step_parameters(kernel_weights, grad, state, theta, lr=float(lr), decay=decay, maximize=maximize)
                in_blocks[k] = 0
    for block in plan_blocks(in_blocks, block_size):
        sizes = [stop - start for _, start, stop in block]
        m = sum(sizes)
        theta_src = [flat_params[k][a:b] for k, a, b in block]
        grad_src = [flat_grads[k][a:b] for k, a, b in block]
        state_src = [flat_states[k][a:b] for k, a, b in block]
        alone = len(block) == 1

        grad = _fp32_block(grad_src, work.grad[:m], alone and grad_src[0].dtype == torch.float32 and all_finite)
        if maximize:
            grad = torch.neg(grad, out=work.grad[:m])
        if not all_finite:
            finite = work.finite[:m]
            torch.lt(torch.abs(grad, out=work.theta[:m]), math.inf, out=finite)
            grad = work.grad[:m].copy_(grad).masked_fill_(torch.logical_not(finite, out=work.mask[:m]), 0.0)

        keep = None if all_finite else finite
        if kernel is None:  # torch operations: one call for the block, its state gathered unless stored as is
            state_direct = alone and state_src[0].dtype == torch.float32 and all_finite
            state = _fp32_block(state_src, work.state[:m], state_direct)
            update = lstm_block(packed, grad, state, work)
            if not state_direct:
                for new, old, segment_keep in zip(state.split(sizes), state_src, _split(keep, sizes)):
                    _store_state(new, old, segment_keep)
        else:  # a compiled kernel: one call per tensor of the block, on the stored state where it can be
            update = work.update[:m]
            segments = zip(state_src, grad.split(sizes), work.state[:m].split(sizes), update.split(sizes))
            for (old, grad_part, buffer, update_part), segment_keep in zip(segments, _split(keep, sizes)):
                direct = old.dtype == torch.float32 and all_finite and _rows_contiguous(old)
                state = old if direct else buffer.copy_(old)
                kernel(packed, kernel_weights, grad_part, state, update_part)
                if not direct:
                    _store_state(state, old, segment_keep)

        theta_direct = alone and theta_src[0].dtype == torch.float32 and all_finite
        theta = _fp32_block(theta_src, work.theta[:m], theta_direct)
        if not all_finite:
            work.saved_theta[:m].copy_(theta)
        if weight_decay:
            theta.mul_(1 - lr * weight_decay)
        if isinstance(lr, Tensor):
            theta.add_(update.mul_(lr))
        else:
            theta.add_(update, alpha=lr)
        if not all_finite:
            torch.where(finite, theta, work.saved_theta[:m], out=theta)
        if not theta_direct:
            torch._foreach_copy_(theta_src, list(theta.split(sizes)))
    for original, flat in (*zip(params, flat_params), *zip(states, flat_states)):
        if not _shares_memory(original, flat):
            original.copy_(flat.view_as(original))
    return all_finite
