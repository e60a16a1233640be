"""The compiled CPU kernel (``lstm_cpu.cpp``): built at first use, cached, and used only if it checks out.

The kernel is plain C++ with GCC/Clang vector extensions and no torch headers, so it builds in about a second with
the system compiler (``$CXX``, else ``c++``/``g++``/``clang++``) and ``-march=native``, specialised to the network's
shape.  The shared library is cached under ``$LEARNED_TORCH_OPTIM_CACHE`` (default
``~/.cache/learned_torch_optim/kernels``) keyed by the source, the flags, the compiler and the CPU's feature flags;
it is called through :mod:`ctypes`.  Whenever something is missing or fails (no compiler, a build or load error, a
result that differs from :func:`~learned_torch_optim.kernels.blocked.lstm_block` on
:func:`~learned_torch_optim.kernels.blocked.check_kernel`), :func:`load`
returns ``None`` and the blocked torch path is used instead; the reason is kept in :data:`last_failure`.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from .blocked import PackedNetwork, check_kernel

SOURCE = Path(__file__).with_name("lstm_cpu.cpp")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-pthread")
ABI_VERSION = 2

last_failure: str | None = None
"""Why the last :func:`load` returned ``None`` (``None`` when it succeeded or was not tried)."""


def cache_dir() -> Path:
    """``$LEARNED_TORCH_OPTIM_CACHE/kernels``, else ``$XDG_CACHE_HOME/learned_torch_optim/kernels`` (default
    ``~/.cache/...``).  The libraries there are loaded and run: keep it a folder only you can write to."""
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("LEARNED_TORCH_OPTIM_CACHE") or cache_home / "learned_torch_optim") / "kernels"


def _compiler() -> str | None:
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    return next((path for path in map(shutil.which, candidates) if path), None)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


class NativeKernel:
    """The loaded library for one network shape: :meth:`__call__` runs the rule on a block of coordinates."""

    def __init__(self, library: ctypes.CDLL, hidden: int, padded_gates: int) -> None:
        self._rows = library.lto_lstm_rows
        self._rows.restype = None
        self._rows.argtypes = [ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        self._rows.argtypes += [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_float] * 4
        self.hidden = hidden
        self.padded_gates = padded_gates

    def pack(self, packed: PackedNetwork) -> Tensor:
        """The weights as the kernel reads them: per layer ``[W_ih, W_hh]^T`` (gate order i, f, o, g, the g columns
        doubled so that ``tanh(g) = 2 sigmoid(2g) - 1``, zero columns up to ``padded_gates``) and the bias likewise,
        then the read-out weight and bias; one flat fp32 tensor."""
        hidden, width = self.hidden, self.padded_gates
        scale = torch.ones(4 * hidden)
        scale[3 * hidden :] = 2.0
        parts = []
        for weight, bias in zip(packed.weights, packed.biases):
            table = torch.zeros(weight.shape[1] + 1, width)
            table[:-1, : 4 * hidden] = weight.t().cpu() * scale
            table[-1, : 4 * hidden] = bias.cpu() * scale
            parts.append(table.reshape(-1))
        parts += [packed.readout_weight.cpu(), packed.readout_bias.cpu()]
        return torch.cat(parts).contiguous()

    def __call__(self, packed: PackedNetwork, weights: Tensor, grad: Tensor, state: Tensor, update: Tensor) -> None:
        """``update = u`` and ``state`` updated in place for the ``m`` coordinates of ``grad`` (all fp32, CPU;
        ``grad`` and ``update`` contiguous, ``state`` with contiguous rows)."""
        self._rows(
            grad.shape[0],
            torch.get_num_threads(),
            grad.data_ptr(),
            state.data_ptr(),
            state.stride(0),
            update.data_ptr(),
            weights.data_ptr(),
            packed.preprocessing_p,
            math.exp(-packed.preprocessing_p),
            math.exp(packed.preprocessing_p),
            packed.output_scale,
        )


def _build(hidden: int, layers: int, inputs: int) -> Path:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++, clang++)")
    source = SOURCE.read_text()
    defines = (f"-DLTO_HIDDEN={hidden}", f"-DLTO_LAYERS={layers}", f"-DLTO_INPUTS={inputs}")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256("\n".join([source, *FLAGS, *defines, compiler, version, _cpu_flags()]).encode()).hexdigest()
    target = cache_dir() / f"lstm_cpu_h{hidden}_l{layers}_i{inputs}_{key[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run(
            [compiler, *FLAGS, *defines, str(SOURCE), "-o", str(built)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"building {SOURCE.name} failed:\n{result.stderr[-2000:]}")
        os.replace(built, target)  # atomic: concurrent builders never see a partial library
    return target


@cache
def _load(hidden: int, layers: int, inputs: int) -> NativeKernel:
    library = ctypes.CDLL(str(_build(hidden, layers, inputs)))
    if library.lto_abi_version() != ABI_VERSION:
        raise RuntimeError("stale kernel library")
    h, n, i, g = (ctypes.c_int() for _ in range(4))
    library.lto_config(ctypes.byref(h), ctypes.byref(n), ctypes.byref(i), ctypes.byref(g))
    if (h.value, n.value, i.value) != (hidden, layers, inputs):
        raise RuntimeError("kernel library built for another network shape")
    return NativeKernel(library, hidden, g.value)


def load(packed: PackedNetwork) -> NativeKernel | None:
    """The compiled kernel for ``packed``'s shape, or ``None`` where it cannot be used (reason in
    :data:`last_failure`).  Only networks with at least one LSTM layer have one."""
    global last_failure
    if packed.num_layers == 0:
        return None
    key = (packed.hidden_size, packed.num_layers, packed.num_inputs)
    if key in _failed:
        return None
    try:
        kernel = _load(*key)
        if key not in _checked:
            check_kernel(kernel, packed, torch.device("cpu"))
            _checked.add(key)
    except Exception as error:  # any failure means: use the torch path
        last_failure = f"{type(error).__name__}: {error}"
        _failed.add(key)
        return None
    return kernel


_failed: set[tuple[int, int, int]] = set()
_checked: set[tuple[int, int, int]] = set()
