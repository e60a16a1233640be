"""The learned update rule: a coordinatewise LSTM (Andrychowicz et al., 2016).

One small LSTM is shared by every coordinate of the optimizee; each coordinate carries its own hidden and cell
state.  For a coordinate with gradient ``g_t`` and state ``s_t`` the rule is (paper, eq. 3 and section 2.1)::

    x_t            = preprocess(g_t)                       # Appendix A, or the identity
    (o_t, s_{t+1}) = LSTM(x_t, s_t; phi)                  # num_layers stacked LSTM cells
    u_t            = output_scale * (w . o_t + b)         # linear read-out of the top layer
    theta_{t+1}    = theta_t + u_t                        # eq. 1 (done by the optimizer)

With ``num_layers == 0`` there is no LSTM and the rule is the linear map ``u_t = output_scale * (w . x_t + b)``.

Beyond the paper (all off by default, each a config option saved in ``config.json``; ``docs/paper.md`` lists them)
the inputs can carry more per-coordinate history, kept in the same per-coordinate state, and the read-out can take
a magnitude-direction form.  With ``t`` the coordinate's step count and ``beta2 = second_moment_decay``::

    m_beta,t  = beta m_beta,t-1 + (1 - beta) g_t,   mhat = m_beta,t / (1 - beta^t)    # momentum_decays
    v_t       = beta2 v_t-1 + (1 - beta2) g_t^2,    vhat = v_t / (1 - beta2^t)        # "adam_normalized"
    x_t       = [pre(g_t), pre(mhat_beta) for each beta, tanh(t / tau) for each tau in step_timescales, delta_t, rho_t]

where ``pre`` is the log/sign preprocessing, the identity, or ``z / (sqrt(vhat) + 1e-8)`` (``"adam_normalized"``,
Adam's normalisation, which makes the inputs invariant to the gradient's scale).  The lr inputs come last: with
``lr_decay_input`` ``delta_t = 1 - lr_t / max_{k <= t} lr_k``, how far a schedule has decayed the lr, the same for every
coordinate: 0 at a constant or rising lr (so the input changes nothing there), towards 1 as a schedule decays it,
whatever the lr's scale (so the network can tell where a schedule is; VeLO and Celo2 give theirs the fraction of
training done, which a ``torch.optim`` optimizer does not know); with ``lr_warmup_input`` (after ``delta_t``)
``rho_t = 1 - lr_1 / max_{k <= t} lr_k``, how far a warm-up has raised the lr above the run's first one: 0 at a
constant or decaying lr, near 1 once a warm-up is under way (a warm-up announces a decay to come, under which a larger
step pays; :func:`lr_inputs` computes both).  With ``readout_skip`` the read-out sees
``[o_t, x_t]``; with ``output="direction_magnitude"`` it gives two numbers ``d, r`` and
``u_t = output_scale * d * exp(magnitude_scale * r)`` (Wichrowska et al. 2017; Metz et al. 2020); with
``linear_direction`` ``d`` is a linear map of the gradient inputs alone (``pre(g_t)`` and ``pre(mhat_beta)``, no
bias), so the step vanishes with them as Adam's does, and the LSTM sets only the magnitude ``r``.  With
``update_clip = c`` every coordinate's update is clipped to ``[-c, c]`` (a bounded output).  With
``gradient_rms_clip = k`` (``"adam_normalized"`` only) each gradient is first clipped to its running root mean
square, ``g_t <- clip(g_t, -k sqrt(vhat_t-1), k sqrt(vhat_t-1))``, before it enters the inputs and the averages (a
coordinate that has seen no gradient yet is left alone): a lone outlier gradient then moves the inputs by at most
``k``, as Adam's own averaging would.

This module is the reference definition of the rule: :class:`learned_torch_optim.LearnedOptimizer` runs it under
``torch.no_grad()`` and the meta-trainer differentiates through it; ``kernels/`` writes it again for speed, tested
equal to it.
"""

from __future__ import annotations

import inspect
import math
import numbers
import types
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

Preprocessing = Literal["log_sign", "identity", "adam_normalized"]
Output = Literal["additive", "direction_magnitude"]
ADAM_EPSILON = 1e-8
MAX_HIDDEN_SIZE = 16384
MAX_NUM_LAYERS = 256
"""Bounds on a loaded ``config.json``'s sizes, far beyond any learned optimizer (the paper's: 20 and 2); above them
a config is refused before anything is built from it."""

_MODEL_CARD = """
---
{{ card_data }}
---

# Learned optimizer: coordinatewise LSTM

Weights for `learned_torch_optim.LearnedOptimizer`, the coordinatewise LSTM optimizer of *Learning to learn
by gradient descent by gradient descent* (Andrychowicz et al., 2016).

```python
from learned_torch_optim import LearnedOptimizer

optimizer = LearnedOptimizer(model.parameters(), weights="{{ weights_ref | default('PATH_OR_REPO', true) }}")
```

{{ recipe | default("", true) }}
"""


def preprocess_log_sign(grad: Tensor, p: float) -> Tensor:
    """Gradient preprocessing of the paper's Appendix A, two features per coordinate.

    ``(log|g| / p, sign(g))`` if ``|g| >= e^-p``, else ``(-1, e^p * g)``.
    """
    magnitude = grad.abs()
    large = magnitude >= math.exp(-p)
    log_part = torch.where(large, torch.log(magnitude.clamp_min(math.exp(-p))) / p, -1.0)
    sign_part = torch.where(large, torch.sign(grad), math.exp(p) * grad)
    return torch.stack((log_part, sign_part), dim=-1)


LR_INPUT_NAMES = ("lr_decay", "lr_warmup")
"""The inputs the lr's history gives (``lr_decay_input``, ``lr_warmup_input``), in the order of :func:`lr_inputs`."""


def lr_inputs(lr: float | Tensor, first_lr: float | Tensor, peak_lr: float | Tensor) -> Tensor:
    """``(delta_t, rho_t) = (1 - lr / peak_lr, 1 - first_lr / peak_lr)``, float32, shape ``(..., 2)`` for
    broadcastable ``lr`` (the lr of this step), ``first_lr`` (of the run's first step) and ``peak_lr`` (the largest
    so far, this step's included); zeros where ``peak_lr`` is 0.  The one definition of the lr inputs, used by the
    optimizer (from the lrs its param group has had) and the meta-trainer (from a schedule's factors)."""
    lr, first_lr, peak_lr = (torch.as_tensor(value, dtype=torch.float32) for value in (lr, first_lr, peak_lr))
    positive = peak_lr > 0
    peak = torch.where(positive, peak_lr, 1.0)
    values = torch.stack(torch.broadcast_tensors(1 - lr / peak, 1 - first_lr / peak), dim=-1)
    return torch.where(positive.unsqueeze(-1), values, 0.0)


def _is_number(value: object) -> bool:
    """Whether ``value`` is a real number (an ``int`` or ``float``, not a ``bool`` or a string)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    """Whether ``value`` is an ``int`` (not a ``bool``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive(value: object) -> bool:
    """Whether ``value`` is a finite number above 0."""
    return _is_number(value) and math.isfinite(value) and value > 0


def _is_decay(beta: object) -> bool:
    """Whether ``beta`` is a usable decay: in [0, 1) also once rounded to fp32 (else ``1 - beta**t`` is 0)."""
    return _is_number(beta) and 0.0 <= beta < 1.0 and float(torch.tensor(beta, dtype=torch.float32, device="cpu")) < 1.0


def _is_list(value: object) -> bool:
    """Whether ``value`` is a list or tuple (a sequence of values; not a string)."""
    return isinstance(value, (list, tuple))


@dataclass(frozen=True)
class Requirement:
    """What a network option's value must be: ``holds(value)``, and ``description`` for the error message."""

    description: str
    holds: Callable[[Any], bool]


def one_of(choices: Any) -> Requirement:
    """One of the names of the ``Literal`` type ``choices``."""
    names = get_args(choices)
    return Requirement(f"one of {names}", lambda value: isinstance(value, str) and value in names)


POSITIVE_INTEGER = Requirement("a positive integer", lambda value: _is_integer(value) and value >= 1)
NON_NEGATIVE_INTEGER = Requirement("a non-negative integer", lambda value: _is_integer(value) and value >= 0)
POSITIVE = Requirement("a finite positive number", _is_positive)
DECAY = Requirement("a number in [0, 1) in fp32", _is_decay)
DECAYS = Requirement(
    "a list of numbers in [0, 1) in fp32", lambda value: _is_list(value) and all(map(_is_decay, value))
)
POSITIVES = Requirement(
    "a list of finite positive numbers", lambda value: _is_list(value) and all(map(_is_positive, value))
)
SWITCH = Requirement("true or false", lambda value: isinstance(value, bool))
CLIP = Requirement("a finite positive number or None (no clip)", lambda value: value is None or _is_positive(value))


def option(default: Any, help: str, requirement: Requirement, *, paper: bool = False) -> Any:
    """Declare a field of :class:`NetworkConfig`, the one place a network option is written down.

    Args:
        default: its value when not given (the paper's rule where the paper has the option).
        help: what it means, as the ``train`` command's ``--help`` shows it.
        requirement: what a value must be; anything else is refused with a ``ValueError`` naming the option.
        paper: an option of the paper, stated in every ``config.json``; the others are written there only when
            they differ from their defaults, so weights of the paper's form keep the config they had.
    """
    return field(default=default, metadata={"help": help, "requirement": requirement, "paper": paper})


@dataclass(frozen=True)
class NetworkConfig:
    """The options of a :class:`CoordinatewiseLSTM`, validated: what its ``config.json`` describes.

    Each option is declared once, with :func:`option`: its type, default, help and requirement; the network's
    keyword arguments and attributes, ``config.json`` and the ``train`` command's network flags are made from these
    declarations.  Numbers declared ``float`` are stored as floats and sequences as tuples.
    """

    hidden_size: int = option(20, "units per LSTM layer (20 in the paper)", POSITIVE_INTEGER, paper=True)
    num_layers: int = option(
        2, "stacked LSTM layers (2 in the paper); 0 gives a linear map of the inputs", NON_NEGATIVE_INTEGER, paper=True
    )
    preprocessing: Preprocessing = option(
        "log_sign",
        '"log_sign" (Appendix A), "identity" (the raw gradient) or "adam_normalized" (divided by the root of '
        "Adam's bias-corrected second moment)",
        one_of(Preprocessing),
        paper=True,
    )
    preprocessing_p: float = option(
        10.0, "the constant p of the log/sign preprocessing (10 in the paper)", POSITIVE, paper=True
    )
    output_scale: float = option(0.1, "factor on the read-out (0.1 in the paper)", POSITIVE, paper=True)
    momentum_decays: tuple[float, ...] = option(
        (), "decays beta of gradient moving averages given as extra inputs (none in the paper)", DECAYS
    )
    second_moment_decay: float = option(0.999, 'beta2 of "adam_normalized"', DECAY)
    step_timescales: tuple[float, ...] = option(
        (), "tau of the step-count inputs tanh(t / tau) (none in the paper)", POSITIVES
    )
    readout_skip: bool = option(False, "the read-out also sees the inputs (not in the paper)", SWITCH)
    output: Output = option("additive", '"additive" (the paper) or "direction_magnitude"', one_of(Output))
    magnitude_scale: float = option(1.0, 'the factor inside the exponential of "direction_magnitude"', POSITIVE)
    linear_direction: bool = option(
        False,
        'the direction of "direction_magnitude" is a linear map of the gradient inputs alone (no bias, no LSTM '
        "output, no step-count or lr inputs), so it vanishes with them as Adam's step does (not in the paper)",
        SWITCH,
    )
    update_clip: float | None = option(None, "bound on each coordinate's update |u_t| (none in the paper: None)", CLIP)
    gradient_rms_clip: float | None = option(
        None,
        'bound on each gradient in units of its running RMS sqrt(vhat_t-1) ("adam_normalized" only; none in the '
        "paper: None)",
        CLIP,
    )
    nominal_lr: float = option(
        1.0,
        "the lr the weights were meta-trained at, LearnedOptimizer's default lr; the step is the network's update "
        "times lr / nominal_lr (1.0: lr is a factor on the trained step; 1e-3: lr in Adam's units)",
        POSITIVE,
    )
    lr_decay_input: bool = option(
        False, "an input 1 - lr / the largest lr of the run so far, the schedule's decay (not in the paper)", SWITCH
    )
    lr_warmup_input: bool = option(
        False,
        "an input 1 - the run's first lr / its largest lr so far, how far a warm-up has raised the lr (not in the "
        "paper)",
        SWITCH,
    )

    def __post_init__(self) -> None:
        for declared in fields(self):
            value, requirement = getattr(self, declared.name), declared.metadata["requirement"]
            if not requirement.holds(value):
                raise ValueError(f"{declared.name} must be {requirement.description}, got {value!r}")
            object.__setattr__(self, declared.name, _as_declared(OPTION_TYPES[declared.name], value))
        if self.gradient_rms_clip is not None and self.preprocessing != "adam_normalized":
            raise ValueError(
                f"gradient_rms_clip needs preprocessing='adam_normalized' (the running RMS), got {self.preprocessing!r}"
            )
        sees_inputs = self.readout_skip or not self.num_layers
        if self.linear_direction and (self.output != "direction_magnitude" or not sees_inputs):
            raise ValueError(
                "linear_direction needs output='direction_magnitude' and a read-out that sees the inputs "
                f"(readout_skip=True or num_layers=0), got output={self.output!r}, readout_skip={self.readout_skip!r}"
            )

    def as_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds: the paper's options always, the others where they differ from their
        defaults (so paper-form weights keep the config, and :func:`weights_identity`, they had); tuples as lists."""
        config = {}
        for declared in fields(self):
            value = getattr(self, declared.name)
            if declared.metadata["paper"] or value != declared.default:
                config[declared.name] = list(value) if isinstance(value, tuple) else value
        return config


OPTION_TYPES = get_type_hints(NetworkConfig)
"""The declared type of each network option."""
REQUIRED_CONFIG = tuple(declared.name for declared in fields(NetworkConfig) if declared.metadata["paper"])
"""The options every ``config.json`` states (the paper's: ``NetworkConfig.as_dict`` always writes them)."""


def _as_declared(hint: Any, value: Any) -> Any:
    """``value`` (valid) stored as the type ``hint`` declares: a number as a float, a sequence as a tuple."""
    if get_origin(hint) is types.UnionType:
        (hint,) = [arg for arg in get_args(hint) if arg is not type(None)]
    if value is not None and hint is float:
        return float(value)
    if value is not None and get_origin(hint) is tuple:
        return tuple(_as_declared(get_args(hint)[0], item) for item in value)
    return value


NetworkClass = TypeVar("NetworkClass", bound=type)


def _with_option_attributes(cls: NetworkClass) -> NetworkClass:
    """``cls`` with each network option as a read-only attribute (read from ``network.options``) and its signature
    showing the options as its arguments."""
    for declared in fields(NetworkConfig):
        read = property(
            lambda network, name=declared.name: getattr(network.options, name), doc=declared.metadata["help"]
        )
        setattr(cls, declared.name, read)
    cls.__init__.__signature__ = inspect.signature(NetworkConfig.__init__)  # type: ignore[attr-defined]
    return cls


@_with_option_attributes
class CoordinatewiseLSTM(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="learned_torch_optim",
    tags=["learned-optimizer", "optimizer", "l2l"],
    license="mit",
    repo_url="https://github.com/learned-torch-optim/learned_torch_optim",
    paper_url="https://arxiv.org/abs/1606.04474",
    model_card_template=_MODEL_CARD,
):
    """The update rule ``m(g; phi)`` applied to ``n`` coordinates at once.

    The keyword arguments are the options of :class:`NetworkConfig` (with their defaults: the paper's network), and
    each is also an attribute (``network.hidden_size``); ``network.options`` holds them all.  An option this version
    does not know is refused with a ``TypeError`` that names it (so a ``config.json`` with options of a newer version
    fails to load instead of loading as another rule); a value that does not meet its option's requirement, with a
    ``ValueError``.

    Per-coordinate state is one flat vector of :attr:`state_size` floats: for each layer ``l`` the hidden state
    ``h_l`` followed by the cell state ``c_l``, then the accumulators of the extra inputs, if any.  The options are
    written to ``config.json`` by :meth:`save_pretrained`, so saved weights carry their own meaning.
    """

    options: NetworkConfig

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__()
        unknown = options.keys() - OPTION_TYPES.keys()
        if unknown:
            # Reached by config.json keys too (the hub mixin passes them on): refuse rather than run another rule.
            raise TypeError(
                f"CoordinatewiseLSTM got unknown option(s) {', '.join(map(repr, sorted(unknown)))}; in a config.json "
                "this means weights written by a newer learned-torch-optim: upgrade it"
            )
        self.options = NetworkConfig(*args, **options)
        gradient_inputs = self.inputs_per_value * (1 + len(self.momentum_decays))
        self.num_inputs = gradient_inputs + len(self.step_timescales) + len(self.lr_input_columns)
        self.cells = nn.ModuleList(
            nn.LSTMCell(self.num_inputs if layer == 0 else self.hidden_size, self.hidden_size)
            for layer in range(self.num_layers)
        )
        top = self.hidden_size if self.num_layers else 0
        skipped = self.num_inputs if self.readout_skip or not self.num_layers else 0
        self.readout = nn.Linear(top + skipped, 2 if self.output == "direction_magnitude" else 1)
        self._hub_mixin_config = self.config  # what save_pretrained writes to config.json

    @property
    def config(self) -> dict[str, Any]:
        """The options as ``config.json`` holds them (:meth:`NetworkConfig.as_dict`)."""
        return self.options.as_dict()

    @property
    def inputs_per_value(self) -> int:
        """Network inputs per gradient-like value: 2 with log/sign preprocessing (a pair), else 1."""
        return 2 if self.preprocessing == "log_sign" else 1

    @property
    def is_paper_rule(self) -> bool:
        """Whether the rule is the paper's form (gradient-only inputs, additive read-out of the top layer), the
        form that the fused kernels implement."""
        return (
            self.preprocessing in ("log_sign", "identity")
            and not self.accumulator_size
            and not self.step_timescales
            and not self.lr_input_columns
            and not self.readout_skip
            and self.output == "additive"
            and self.update_clip is None
        )

    @property
    def lstm_state_size(self) -> int:
        """Floats of LSTM state per coordinate: ``num_layers * 2 * hidden_size`` (80 for the paper's network)."""
        return self.num_layers * 2 * self.hidden_size

    @property
    def accumulator_size(self) -> int:
        """Floats of gradient history per coordinate: the momenta, the second moment and the step count."""
        moments = len(self.momentum_decays) + (self.preprocessing == "adam_normalized")
        counted = moments or self.step_timescales
        return moments + (1 if counted else 0)

    @property
    def state_size(self) -> int:
        """Floats of state per coordinate: the LSTM state (per layer ``h`` then ``c``), then the accumulators
        (the momenta in the order of ``momentum_decays``, the second moment, the step count)."""
        return self.lstm_state_size + self.accumulator_size

    @property
    def lr_input_columns(self) -> list[int]:
        """Which of :func:`lr_inputs`' values (0: ``delta_t``, 1: ``rho_t``) the network takes, in order; they are
        its last inputs."""
        return [k for k, used in enumerate((self.lr_decay_input, self.lr_warmup_input)) if used]

    @property
    def input_names(self) -> list[str]:
        """One name per network input, in order (``g``, ``m0.9``, ``t100``, ``lr_decay``, ``lr_warmup``; log/sign
        pairs get ``.log``/``.sign``)."""
        values = ["g", *(f"m{beta:g}" for beta in self.momentum_decays)]
        if self.preprocessing == "log_sign":
            values = [f"{name}.{part}" for name in values for part in ("log", "sign")]
        timescales = [f"t{tau:g}" for tau in self.step_timescales]
        return values + timescales + [LR_INPUT_NAMES[k] for k in self.lr_input_columns]

    def readout_parameters(self) -> tuple[Tensor, Tensor]:
        """The read-out's weight and bias as the rule uses them: with ``linear_direction``, times
        :meth:`readout_masks`."""
        weight, bias = self.readout.weight, self.readout.bias
        if not self.linear_direction:
            return weight, bias
        weight_mask, bias_mask = self.readout_masks()
        return weight * weight_mask, bias * bias_mask

    def readout_masks(self) -> tuple[Tensor, Tensor]:
        """1 for each read-out weight and bias the rule uses, 0 for the others: with ``linear_direction`` the
        direction's row (row 0) uses only its weights on the gradient inputs (``g`` and the momenta); otherwise all
        ones."""
        weight, bias = self.readout.weight, self.readout.bias
        weight_mask = torch.ones(weight.shape, device=weight.device, dtype=weight.dtype)
        bias_mask = torch.ones(bias.shape, device=bias.device, dtype=bias.dtype)
        if self.linear_direction:
            first = self.hidden_size if self.num_layers else 0
            gradient_inputs = self.inputs_per_value * (1 + len(self.momentum_decays))
            weight_mask[0, :first] = 0
            weight_mask[0, first + gradient_inputs :] = 0
            bias_mask[0] = 0
        return weight_mask, bias_mask

    def initial_state(
        self, n: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """Zero state for ``n`` coordinates, shape ``(n, state_size)``."""
        return torch.zeros(n, self.state_size, device=device, dtype=dtype)

    def _preprocess(self, values: Tensor, second_moment: Tensor | None) -> Tensor:
        """``values`` of shape ``(n, k)`` as network inputs of shape ``(n, k * inputs_per_value)``."""
        if self.preprocessing == "log_sign":
            return preprocess_log_sign(values, self.preprocessing_p).flatten(1)
        if second_moment is not None:
            return values / (second_moment.sqrt() + ADAM_EPSILON)
        return values

    def _clip_to_rms(self, grad: Tensor, previous_second_moment: Tensor, step: Tensor) -> Tensor:
        """``grad`` clipped to ``gradient_rms_clip`` times the root of the bias-corrected second moment before
        this step; coordinates without one (no gradient seen yet) keep theirs."""
        beta2 = self.second_moment_decay
        rms = (previous_second_moment / (1 - beta2 ** (step - 1).clamp_min(1))).sqrt()
        bound = self.gradient_rms_clip * rms
        return torch.where(previous_second_moment > 0, torch.maximum(torch.minimum(grad, bound), -bound), grad)

    def features(
        self, grad: Tensor, accumulators: Tensor | None = None, lr_state: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The network's inputs for gradients ``grad`` of shape ``(n,)`` and the coordinates' accumulators (the
        tail of their state, shape ``(n, accumulator_size)``; ``None``: a first step): ``(inputs of shape
        (n, num_inputs), new accumulators)``.  ``lr_state`` is :func:`lr_inputs`' ``(delta_t, rho_t)``, of which
        the network takes :attr:`lr_input_columns` (``None``: zeros)."""
        if accumulators is None:
            accumulators = grad.new_zeros(grad.shape[0], self.accumulator_size)
        if not self.accumulator_size:
            x = self._preprocess(grad.unsqueeze(-1), None)
        else:
            x, accumulators = self._gradient_features(grad, accumulators)
        if columns := self.lr_input_columns:
            if lr_state is not None and (not isinstance(lr_state, Tensor) or lr_state.shape != (len(LR_INPUT_NAMES),)):
                raise TypeError(
                    f"lr_state must be a tensor of shape ({len(LR_INPUT_NAMES)},), lr_inputs(lr, first_lr, peak_lr), "
                    f"got {lr_state!r}"
                )
            values = x.new_zeros(len(LR_INPUT_NAMES)) if lr_state is None else lr_state.to(x)
            x = torch.cat((x, values[columns].expand(x.shape[0], len(columns))), dim=1)
        return x, accumulators

    def _gradient_features(self, grad: Tensor, accumulators: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`features` of a network with accumulators, but the lr inputs."""
        step = accumulators[:, -1] + 1
        if self.gradient_rms_clip is not None:
            grad = self._clip_to_rms(grad, accumulators[:, len(self.momentum_decays)], step)
        values, new = [grad], []
        for k, beta in enumerate(self.momentum_decays):
            momentum = beta * accumulators[:, k] + (1 - beta) * grad
            new.append(momentum)
            values.append(momentum / (1 - beta**step))
        second_moment = None
        if self.preprocessing == "adam_normalized":
            beta2 = self.second_moment_decay
            v = beta2 * accumulators[:, len(self.momentum_decays)] + (1 - beta2) * grad * grad
            new.append(v)
            second_moment = (v / (1 - beta2**step)).unsqueeze(-1)
        x = self._preprocess(torch.stack(values, dim=-1), second_moment)
        if self.step_timescales:
            timescales = torch.tensor(self.step_timescales, device=grad.device, dtype=grad.dtype)
            x = torch.cat((x, torch.tanh(step.unsqueeze(-1) / timescales)), dim=1)
        return x, torch.stack((*new, step), dim=-1)

    def forward(self, grad: Tensor, state: Tensor, lr_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One step of the rule for ``n`` coordinates.

        Args:
            grad: gradients, shape ``(n,)``.
            state: per-coordinate state, shape ``(n, state_size)``.
            lr_state: :func:`lr_inputs`' ``(delta_t, rho_t)`` at this step, for a network with
                ``lr_decay_input`` or ``lr_warmup_input`` (others ignore it; ``None``: a constant lr).

        Returns:
            ``(update, new_state)``: the additive updates ``u_t``, shape ``(n,)``, and the new state.
        """
        lstm_state, accumulators = state.split((self.lstm_state_size, self.accumulator_size), dim=1)
        inputs, accumulators = self.features(grad, accumulators, lr_state)
        x, new_state = inputs, []
        for layer, cell in enumerate(self.cells):
            h, c = lstm_state[:, 2 * layer * self.hidden_size : (2 * layer + 2) * self.hidden_size].chunk(2, dim=1)
            # LSTM cell (Hochreiter & Schmidhuber 1997), gate order i, f, g, o as torch.nn.LSTMCell.
            gates = torch.addmm(cell.bias_ih + cell.bias_hh, x, cell.weight_ih.t())
            gates = torch.addmm(gates, h, cell.weight_hh.t())
            # One sigmoid over all four gates: on strided column slices it runs several times slower on the CPU.
            i, f, _, o = torch.sigmoid(gates).chunk(4, dim=1)
            g = torch.tanh(gates[:, 2 * self.hidden_size : 3 * self.hidden_size])
            c = f * c + i * g
            x = o * torch.tanh(c)
            new_state += [x, c]
        if self.readout_skip and self.num_layers:
            x = torch.cat((x, inputs), dim=1)
        out = torch.nn.functional.linear(x, *self.readout_parameters())
        if self.output == "direction_magnitude":
            update = self.output_scale * out[:, 0] * torch.exp(self.magnitude_scale * out[:, 1])
        else:
            update = self.output_scale * out.squeeze(-1)
        if self.update_clip is not None:
            update = update.clamp(-self.update_clip, self.update_clip)
        if not new_state and not self.accumulator_size:
            return update, state
        return update, torch.cat((*new_state, accumulators), dim=1)

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={value!r}" for name, value in self.config.items())

    @classmethod
    def _from_pretrained(  # type: ignore[override]
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        **model_kwargs,
    ) -> CoordinatewiseLSTM:
        """Load ``model.safetensors`` only (never a pickle), strictly, checking before allocating anything.

        ``config.json`` must state :data:`REQUIRED_CONFIG`, within :data:`MAX_HIDDEN_SIZE` and :data:`MAX_NUM_LAYERS`;
        the tensor names and shapes it implies (a network built on the ``meta`` device, which allocates nothing) must
        equal those in the safetensors header, so that memory is bounded by the file's size; every tensor must be
        floating point and finite.
        """
        from huggingface_hub import hf_hub_download
        from safetensors import safe_open
        from safetensors.torch import load_file

        for download_option in ("proxies", "resume_download"):  # passed by huggingface_hub < 1.0
            model_kwargs.pop(download_option, None)
        local = Path(model_id).is_dir()
        config_label = str(Path(model_id) / "config.json") if local else f"config.json of {model_id}"
        missing = [name for name in REQUIRED_CONFIG if name not in model_kwargs]
        if missing:
            raise ValueError(
                f"{config_label} does not state {', '.join(missing)}; a config.json must state at least "
                f"{', '.join(REQUIRED_CONFIG)} (CoordinatewiseLSTM.save_pretrained writes them)"
            )
        for name, bound in (("hidden_size", MAX_HIDDEN_SIZE), ("num_layers", MAX_NUM_LAYERS)):
            value = model_kwargs[name]
            if isinstance(value, int) and value > bound:
                raise ValueError(f"{config_label}: {name} {value} is beyond the bound for loaded weights ({bound})")
        with torch.device("meta"):
            expected = {name: tuple(tensor.shape) for name, tensor in cls(**model_kwargs).state_dict().items()}
        if local:
            weights_file = str(Path(model_id) / "model.safetensors")
        else:
            weights_file = hf_hub_download(
                repo_id=model_id,
                filename="model.safetensors",
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        with safe_open(weights_file, framework="pt") as header:
            stored = {name: tuple(header.get_slice(name).get_shape()) for name in header.keys()}
        if stored != expected:
            differences = [
                f"{name}: {stored.get(name, 'absent')} where the config needs {expected.get(name, 'none')}"
                for name in sorted(stored.keys() | expected.keys())
                if stored.get(name) != expected.get(name)
            ]
            raise ValueError(
                f"{weights_file} does not hold the tensors that {config_label} describes ({'; '.join(differences)}); "
                "the two files must come from one save_pretrained"
            )
        tensors = load_file(weights_file)
        for name, tensor in sorted(tensors.items()):
            if not tensor.is_floating_point():
                raise ValueError(f"{weights_file}: tensor {name!r} has dtype {tensor.dtype}, not floating point")
            if not torch.isfinite(tensor).all():
                raise ValueError(
                    f"{weights_file}: tensor {name!r} holds NaN or infinite values; these weights cannot be used "
                    "(saved from a diverged run, or corrupt)"
                )
        model = cls(**model_kwargs)
        model.load_state_dict(tensors, strict=True)
        return model.eval()
