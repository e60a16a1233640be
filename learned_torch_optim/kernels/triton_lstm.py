"""The rule for a block of coordinates as one Triton kernel, for CUDA devices (used where Triton is installed).

Each program takes ``BLOCK`` coordinates: it loads their gradients and state rows once, computes the
preprocessing, every layer and the read-out in registers, and writes the new state and the update ``u``: per
coordinate the memory traffic is the state read and written once, against some 5 KB for the same math with torch
operations.  Per layer and gate ``q`` (order i, f, o, g as in :func:`.blocked.pack_network`)::

    G_q = b_q + x @ Wx_q + h @ Wh_q        x: the features (layer 0) or the layer below's new h
    c = s(G_f) c + s(G_i) tanh(G_g);  h = s(G_o) tanh(c)        s = sigmoid, tanh(z) = 2 s(2z) - 1

with the hidden size padded to a power of two ``HP >= 16`` (zero weights, masked loads and stores: padded lanes
stay zero) and products in full fp32 (``input_precision="ieee"``, no TF32).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .blocked import PackedNetwork, check_kernel

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton: the blocked torch path is used on CUDA
    triton = None

BLOCK = 64
"""Coordinates per program."""


last_failure: str | None = None
"""Why :func:`load` last returned ``None`` for a CUDA device (``None`` when it succeeded or was not tried)."""
_checked: set[tuple[int, int, int, torch.device]] = set()
_failed: set[tuple[int, int, int, torch.device]] = set()


def load(packed: PackedNetwork, device: torch.device) -> TritonKernel | None:
    """The kernel for ``packed`` on ``device`` (CUDA, Triton installed, a network of the paper's form with at least
    one LSTM layer), checked once per network shape and device by :func:`.blocked.check_kernel`; else ``None``
    (reason in :data:`last_failure`)."""
    global last_failure
    if triton is None or device.type != "cuda" or not packed.num_layers or not packed.network.is_paper_rule:
        return None
    key = (packed.hidden_size, packed.num_layers, packed.num_inputs, device)
    if key in _failed:
        return None
    kernel = TritonKernel()
    if key not in _checked:
        try:
            check_kernel(kernel, packed, device)
        except Exception as error:  # any failure means: use the torch path
            last_failure = f"{type(error).__name__}: {error}"
            _failed.add(key)
            return None
        _checked.add(key)
    return kernel


if triton is not None:

    @triton.jit
    def _tanh(z):
        return 2.0 * tl.sigmoid(2.0 * z) - 1.0

    @triton.jit
    def _gate(
        layer: tl.constexpr,
        q: tl.constexpr,
        x0,
        x1,
        below,
        h,
        wx_ptr,
        wh_ptr,
        bias_ptr,
        HP: tl.constexpr,
        NI: tl.constexpr,
    ):
        """Pre-activation of gate ``q`` of ``layer``, shape (BLOCK, HP)."""
        k = tl.arange(0, HP)
        base = (layer * 4 + q) * HP * HP
        matrix = base + k[:, None] * HP + k[None, :]
        acc = tl.dot(h, tl.load(wh_ptr + matrix), input_precision="ieee")
        acc += tl.load(bias_ptr + (layer * 4 + q) * HP + k)[None, :]
        if layer == 0:
            acc += x0[:, None] * tl.load(wx_ptr + base + k)[None, :]
            if NI == 2:
                acc += x1[:, None] * tl.load(wx_ptr + base + HP + k)[None, :]
        else:
            acc += tl.dot(below, tl.load(wx_ptr + matrix), input_precision="ieee")
        return acc

    @triton.jit
    def _lstm_rows(
        grad_ptr,
        state_ptr,
        update_ptr,
        wx_ptr,
        wh_ptr,
        bias_ptr,
        readout_ptr,
        m,
        ld,
        p,
        threshold,
        inverse,
        output_scale,
        readout_bias,
        H: tl.constexpr,
        HP: tl.constexpr,
        L: tl.constexpr,
        NI: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        row_mask = rows < m
        cols = tl.arange(0, HP)
        mask = row_mask[:, None] & (cols < H)[None, :]
        g = tl.load(grad_ptr + rows, mask=row_mask, other=0.0)
        if NI == 2:  # log/sign preprocessing
            magnitude = tl.abs(g)
            large = magnitude >= threshold
            x0 = tl.where(large, tl.log(tl.maximum(magnitude, threshold)) / p, -1.0)
            sign = tl.where(g > 0.0, 1.0, tl.where(g < 0.0, -1.0, 0.0))
            x1 = tl.where(large, sign, g * inverse)
        else:
            x0 = g
            x1 = g
        offsets = rows.to(tl.int64)[:, None] * ld + cols[None, :]
        below = tl.zeros((BLOCK, HP), dtype=tl.float32)
        for layer in tl.static_range(L):
            h = tl.load(state_ptr + offsets + 2 * layer * H, mask=mask, other=0.0)
            c = tl.load(state_ptr + offsets + (2 * layer + 1) * H, mask=mask, other=0.0)
            i = tl.sigmoid(_gate(layer, 0, x0, x1, below, h, wx_ptr, wh_ptr, bias_ptr, HP, NI))
            f = tl.sigmoid(_gate(layer, 1, x0, x1, below, h, wx_ptr, wh_ptr, bias_ptr, HP, NI))
            o = tl.sigmoid(_gate(layer, 2, x0, x1, below, h, wx_ptr, wh_ptr, bias_ptr, HP, NI))
            z = _tanh(_gate(layer, 3, x0, x1, below, h, wx_ptr, wh_ptr, bias_ptr, HP, NI))
            c = f * c + i * z
            below = o * _tanh(c)
            tl.store(state_ptr + offsets + 2 * layer * H, below, mask=mask)
            tl.store(state_ptr + offsets + (2 * layer + 1) * H, c, mask=mask)
        w = tl.load(readout_ptr + cols)
        update = output_scale * (tl.sum(below * w[None, :], axis=1) + readout_bias)
        tl.store(update_ptr + rows, update, mask=row_mask)


class TritonKernel:
    """:mod:`.native`'s kernel interface (``pack`` and ``__call__``) for CUDA tensors."""

    def pack(self, packed: PackedNetwork) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
        """Per layer and gate, zero-padded to ``HP``: ``Wx`` (input rows, HP), ``Wh`` (HP, HP), the bias; then the
        read-out weight (HP,) and bias."""
        hidden, layers, inputs = packed.hidden_size, packed.num_layers, packed.num_inputs
        width = padded_hidden(hidden)
        device = packed.readout_weight.device
        wx = torch.zeros(layers, 4, width, width, device=device)
        wh = torch.zeros(layers, 4, width, width, device=device)
        bias = torch.zeros(layers, 4, width, device=device)
        for layer, (weight, b) in enumerate(zip(packed.weights, packed.biases)):
            fan_in = inputs if layer == 0 else hidden
            gates = weight.view(4, hidden, fan_in + hidden)
            wx[layer, :, :fan_in, :hidden] = gates[:, :, :fan_in].transpose(1, 2)
            wh[layer, :, :hidden, :hidden] = gates[:, :, fan_in:].transpose(1, 2)
            bias[layer, :, :hidden] = b.view(4, hidden)
        readout = torch.zeros(width, device=device)
        readout[:hidden] = packed.readout_weight[0]
        return wx, wh, bias, readout, float(packed.readout_bias[0])

    def __call__(self, packed: PackedNetwork, weights: tuple, grad: Tensor, state: Tensor, update: Tensor) -> None:
        """``update = u`` and ``state`` updated in place for the ``m`` coordinates of ``grad`` (fp32)."""
        wx, wh, bias, readout, readout_bias = weights
        m = grad.shape[0]
        p = packed.network.preprocessing_p
        _lstm_rows[(triton.cdiv(m, BLOCK),)](
            grad, state, update, wx, wh, bias, readout, m, state.stride(0), p, math.exp(-p), math.exp(p),
            packed.network.output_scale, readout_bias, H=packed.hidden_size, HP=padded_hidden(packed.hidden_size),
            L=packed.num_layers, NI=packed.num_inputs, BLOCK=BLOCK,
        )  # fmt: skip


def padded_hidden(hidden: int) -> int:
    """The hidden size padded to a power of two of at least 16 (the smallest ``tl.dot`` operand)."""
    return max(16, 1 << (hidden - 1).bit_length())
