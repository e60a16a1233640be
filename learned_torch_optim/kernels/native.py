"""The compiled CPU kernel (``lstm_cpu.cpp``): built at first use, cached, and used only if it checks out.

The kernel is plain C++ with GCC/Clang vector extensions and no torch headers, so it builds in about a second with
the system compiler (``$CXX``, else ``c++``/``g++``/``clang++``) and ``-march=native``, specialised to the network's
form (:func:`form`: its shape and which options it uses; the options' values are passed at each call).  The shared
library is cached under ``$LEARNED_TORCH_OPTIM_CACHE`` (default ``~/.cache/learned_torch_optim/kernels``) keyed by
the source, the flags, the compiler and the CPU's feature flags; it is called through :mod:`ctypes`.  Whenever
something is missing or fails (no compiler, a build or load error, a result that differs from
:func:`~learned_torch_optim.kernels.blocked.lstm_block` on :func:`~learned_torch_optim.kernels.blocked.check_kernel`),
:func:`load` returns ``None`` and the blocked torch path is used instead; the reason is kept in :data:`last_failure`.
A cached library whose sha256 differs from the one recorded at its build, or that fails to load or to check, is
built afresh.  The cache folder and the library must belong to this user and be writable by nobody else, or nothing
there is loaded (a warning says why).
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
import warnings
from pathlib import Path

import torch
from torch import Tensor

from .blocked import PackedNetwork, check_kernel

SOURCE = Path(__file__).with_name("lstm_cpu.cpp")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-pthread")
ABI_VERSION = 4
BUILD_TIMEOUT = 300
"""Seconds a build may take before the torch path is used instead."""
PREPROCESSING_CODES = {"identity": 0, "log_sign": 1, "adam_normalized": 2}

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


Form = tuple[int, int, int, int, int, int, int, int, int]
"""What a build is specialised to (the kernel's compile-time constants, in the order of ``lto_config``): hidden
size, layers, preprocessing code, number of momentum decays, number of step timescales, read-out skip, outputs,
update clip, gradient RMS clip."""


def form(packed: PackedNetwork) -> Form:
    """The compile-time form of ``packed``'s network."""
    network = packed.network
    return (
        network.hidden_size,
        network.num_layers,
        PREPROCESSING_CODES[network.preprocessing],
        len(network.momentum_decays),
        len(network.step_timescales),
        int(network.readout_skip),
        packed.num_outputs,
        int(network.update_clip is not None),
        int(network.gradient_rms_clip is not None),
    )


class NativeKernel:
    """The loaded library for one network form: :meth:`__call__` runs the rule on a block of coordinates."""

    def __init__(self, library: ctypes.CDLL, hidden: int, padded_gates: int, config_floats: int) -> None:
        self._rows = library.lto_lstm_rows
        self._rows.restype = None
        self._rows.argtypes = [ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        self._rows.argtypes += [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_float] * 3
        self._rows.argtypes += [ctypes.c_void_p, ctypes.c_void_p]
        self.hidden = hidden
        self.padded_gates = padded_gates
        self.config_floats = config_floats

    def pack(self, packed: PackedNetwork) -> tuple[Tensor, Tensor]:
        """The weights as the kernel reads them: per layer ``[W_ih, W_hh]^T`` (gate order i, f, o, g, the g columns
        doubled so that ``tanh(g) = 2 sigmoid(2g) - 1``, zero columns up to ``padded_gates``) and the bias likewise,
        then the read-out weight (outputs x inputs) and bias; one flat fp32 tensor.  And the options' values in the
        order of ``struct Config`` in ``lstm_cpu.cpp`` (decays and timescales padded to at least one entry)."""
        hidden, width = self.hidden, self.padded_gates
        scale = torch.ones(4 * hidden)
        scale[3 * hidden :] = 2.0
        parts = []
        for weight, bias in zip(packed.weights, packed.biases):
            table = torch.zeros(weight.shape[1] + 1, width)
            table[:-1, : 4 * hidden] = weight.t().cpu() * scale
            table[-1, : 4 * hidden] = bias.cpu() * scale
            parts.append(table.reshape(-1))
        parts += [packed.readout_weight.cpu().reshape(-1), packed.readout_bias.cpu()]
        network = packed.network
        p = network.preprocessing_p
        betas = list(network.momentum_decays) or [0.0]
        config = [p, math.exp(-p), math.exp(p), network.output_scale, network.magnitude_scale]
        config += [network.update_clip or 0.0, network.gradient_rms_clip or 0.0]
        config += [network.second_moment_decay, 1 - network.second_moment_decay]
        config += [*betas, *(1 - beta for beta in betas), *(list(network.step_timescales) or [1.0])]
        if len(config) != self.config_floats:
            raise RuntimeError(f"kernel library expects {self.config_floats} option values, got {len(config)}")
        return torch.cat(parts).contiguous(), torch.tensor(config, dtype=torch.float32)

    def __call__(
        self, packed: PackedNetwork, weights: tuple[Tensor, Tensor], grad: Tensor, state: Tensor, update: Tensor
    ) -> None:
        """``update = u`` and ``state`` updated in place for the ``m`` coordinates of ``grad`` (all fp32, CPU;
        ``grad`` and ``update`` contiguous, ``state`` with contiguous rows)."""
        self._run(weights, grad, state, update, None, lr=1.0, decay=1.0, sign=1.0)

    def step_parameters(
        self,
        weights: tuple[Tensor, Tensor],
        grad: Tensor,
        state: Tensor,
        theta: Tensor,
        *,
        lr: float,
        decay: float,
        maximize: bool,
    ) -> None:
        """The whole step in one pass for fp32 parameters ``theta`` with finite gradients: the rule on
        ``-grad if maximize else grad``, ``state`` updated in place and ``theta <- decay * theta + lr * u``
        (``theta`` and ``grad`` contiguous, ``state`` with contiguous rows).  No buffer of ``u``: one call for a
        tensor of any size."""
        self._run(weights, grad, state, None, theta, lr=lr, decay=decay, sign=-1.0 if maximize else 1.0)

    def _run(
        self,
        weights: tuple[Tensor, Tensor],
        grad: Tensor,
        state: Tensor,
        update: Tensor | None,
        theta: Tensor | None,
        *,
        lr: float,
        decay: float,
        sign: float,
    ) -> None:
        table, config = weights
        self._rows(
            grad.shape[0],
            torch.get_num_threads(),
            grad.data_ptr(),
            state.data_ptr(),
            state.stride(0),
            None if update is None else update.data_ptr(),
            None if theta is None else theta.data_ptr(),
            lr,
            decay,
            sign,
            table.data_ptr(),
            config.data_ptr(),
        )


DEFINES = ("HIDDEN", "LAYERS", "PREPROCESSING", "MOMENTA", "TIMESCALES", "READOUT_SKIP", "OUTPUTS")
DEFINES += ("UPDATE_CLIP", "RMS_CLIP")


class BuildError(RuntimeError):
    """No compiler, or the kernel did not compile."""


def _check_private(path: Path, info: os.stat_result | None = None) -> None:
    """Raise ``PermissionError`` unless ``path`` (whose ``stat``, if given, is ``info``) belongs to this user and no
    one else can write to it."""
    info = info or path.stat()
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise PermissionError(
            f"{path} belongs to user id {info.st_uid}, not to this user ({os.getuid()}): its kernel libraries are "
            "not loaded (set $LEARNED_TORCH_OPTIM_CACHE to a folder of your own)"
        )
    if info.st_mode & 0o022:
        raise PermissionError(
            f"{path} can be written by other users (mode {oct(info.st_mode & 0o777)}): its kernel libraries are not "
            f"loaded (chmod go-w {path}, or set $LEARNED_TORCH_OPTIM_CACHE to a folder of your own)"
        )


def _build(shape: Form) -> Path:
    """The library for ``shape`` in the cache folder, built there unless it is there (:func:`_open` checks it)."""
    compiler = _compiler()
    if compiler is None:
        raise BuildError("no C++ compiler found ($CXX, c++, g++, clang++)")
    source = SOURCE.read_text()
    defines = tuple(f"-DLTO_{name}={value}" for name, value in zip(DEFINES, shape))
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256("\n".join([source, *FLAGS, *defines, compiler, version, _cpu_flags()]).encode()).hexdigest()
    folder = cache_dir()
    target = folder / f"lstm_cpu_{'_'.join(map(str, shape))}_{key[:16]}.so"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(folder)
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        built = Path(tmp) / target.name
        command = [compiler, *FLAGS, *defines, str(SOURCE), "-o", str(built)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired as error:
            raise BuildError(f"building {SOURCE.name} took over {BUILD_TIMEOUT} s") from error
        if result.returncode != 0:
            raise BuildError(f"building {SOURCE.name} failed:\n{result.stderr[-2000:]}")
        digest = Path(tmp) / _digest_file(target).name
        digest.write_text(hashlib.sha256(built.read_bytes()).hexdigest())
        built.chmod(0o700)  # whatever the umask: the load refuses files others can write
        digest.chmod(0o600)
        os.replace(digest, _digest_file(target))
        os.replace(built, target)  # atomic: concurrent builders never see a partial library
    return target


def _digest_file(library_file: Path) -> Path:
    return library_file.with_name(library_file.name + ".sha256")


def _read_private(library_file: Path) -> bytes:
    """The bytes of ``library_file``, read through one descriptor whose owner and mode are checked (not a link)."""
    descriptor = os.open(library_file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(descriptor, "rb") as file:
        _check_private(library_file, os.fstat(file.fileno()))
        return file.read()


def _open(library_file: Path, shape: Form, packed: PackedNetwork) -> NativeKernel:
    """Load the bytes of ``library_file`` that match its recorded sha256, from a copy in a folder of our own under
    a name of its own (so that the bytes checked are the bytes loaded, and a rebuilt file is not answered with the
    handle of the one it replaced), and check the kernel against the torch operations.  A truncated or damaged
    library is never mapped (that can crash the process): its bytes fail the sha256 first."""
    data = _read_private(library_file)
    if hashlib.sha256(data).hexdigest() != _digest_file(library_file).read_text().strip():
        raise RuntimeError(f"{library_file} does not match the sha256 recorded at its build")
    with tempfile.TemporaryDirectory(dir=library_file.parent) as tmp:  # mode 0700
        private_name = Path(tmp) / library_file.name
        private_name.write_bytes(data)
        library = ctypes.CDLL(str(private_name))  # stays mapped once its file is gone
    if library.lto_abi_version() != ABI_VERSION:
        raise RuntimeError("stale kernel library")
    built = (ctypes.c_int * (len(shape) + 1))()
    padded_gates = ctypes.c_int()
    library.lto_config(built, ctypes.byref(padded_gates))
    if tuple(built[: len(shape)]) != shape:
        raise RuntimeError("kernel library built for another network form")
    kernel = NativeKernel(library, shape[0], padded_gates.value, built[len(shape)])
    check_kernel(kernel, packed, torch.device("cpu"))
    return kernel


def _load(shape: Form, packed: PackedNetwork) -> NativeKernel:
    """The checked kernel for ``shape``; a cached library that does not load or check is built afresh once."""
    library_file = _build(shape)
    try:
        return _open(library_file, shape, packed)
    except PermissionError:
        raise
    except (OSError, RuntimeError, AttributeError):  # damaged, without its digest, or stale: build it again
        library_file.unlink(missing_ok=True)
        return _open(_build(shape), shape, packed)


def load(packed: PackedNetwork) -> NativeKernel | None:
    """The compiled kernel for ``packed``'s form, or ``None`` where it cannot be used (reason in
    :data:`last_failure`).  Only networks with at least one LSTM layer have one."""
    global last_failure
    if packed.num_layers == 0:
        return None
    key = form(packed)
    if key in _kernels:
        return _kernels[key]
    if key in _failed:
        return None
    try:
        _kernels[key] = _load(key, packed)
    except Exception as error:  # any failure means: use the torch path
        last_failure = f"{type(error).__name__}: {error}"
        _failed.add(key)
        if isinstance(error, PermissionError):
            warnings.warn(f"learned_torch_optim: compiled CPU kernel not used: {error}", RuntimeWarning, stacklevel=2)
        return None
    return _kernels[key]


_kernels: dict[Form, NativeKernel] = {}
_failed: set[Form] = set()
