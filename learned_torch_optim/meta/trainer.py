"""The outer loop: meta-training a :class:`CoordinatewiseLSTM` by truncated BPTT (or evolution strategies), with
validation, best-checkpoint selection, atomic checkpoints, exact resume and a JSON-lines metrics log."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .. import __version__
from ..network import CoordinatewiseLSTM, lr_inputs
from ..weight_set import SET_FILE, NetworkRule, WeightSet
from ..weights import resolve_weights
from .bptt import SetStep, advance, log_loss, unroll
from .es import antithetic_gradient
from .files import atomic_write, atomic_write_text, file_mode, temporaries
from .population import run_population, stack_weights
from .schedules import SCHEDULES, Schedule, lr_factors
from .tasks import NETWORK_RULES, TASK_DESCRIPTIONS, MixtureTask, Problem, RescaledProblem, Task, get_task
from .widen import added_weights, widen

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
WEIGHTS_TMP = ".weights.tmp"
"""The folder ``save_weights`` writes into before moving the files into place."""
CHECKPOINT_KEYS = (
    "config",
    "iteration",
    "network",
    "meta_optimizer",
    "generator",
    "torch_rng",
    "world_size",
    "best_metric",
    "best_network",
    "elapsed",
)
"""The entries of a checkpoint that resuming needs."""
VALIDATION_SEED = 10**9
READOUT_ROW_OPTIONS = {"train_direction_only": 0, "train_magnitude_only": 1}
"""The settings that meta-train one row of a ``direction_magnitude`` read-out, and the row each keeps (0: the
direction ``d``, 1: the magnitude ``r``)."""
WEIGHTLESS_OPTIONS = ("update_clip", "gradient_rms_clip", "nominal_lr", "linear_direction")
"""Network options that fine-tuning can set to any value: step bounds and the lr's unit, which add no weights."""
FINE_TUNING_CHANGES = ("momentum_decays", "step_timescales", "lr_decay_input", "lr_warmup_input", *WEIGHTLESS_OPTIONS)
"""The network options that fine-tuning (``TrainConfig.init_from``) may change in the starting weights' config."""

MetaLrSchedule = Literal["constant", "cosine"]
MetaLoss = Literal["sum", "log"]
MetaGradient = Literal["bptt", "es"]
ValidationMetric = Literal["mean", "final", "final-vs-start"]
Initialisation = Literal["default", "forget_bias", "adam"]
NetworkOptions = dict[str, Any]
"""Keyword arguments of :class:`CoordinatewiseLSTM`, i.e. (part of) the network's config, as in ``config.json``."""
CardRow = Callable[["MetaTrainer"], object]
"""The value a model card shows for a setting, computed from the finished run."""


def setting(
    default: Any,
    help: str,
    *,
    card: str | tuple[str, CardRow] | None,
    may_change_on_resume: bool = False,
    flag: bool | str = True,
    stored_as: str | None = None,
    **argparse_options: Any,
) -> Any:
    """Declare a field of :class:`TrainConfig`, the one place a training setting is written down.

    Args:
        default: its value when not given (a list or dict is copied for each config).
        help: what it means, as the ``train`` command's help shows it.
        card: its row in the model card's recipe table: a label (the value shown as it is, ``None`` and ``[]`` as
            "none"), or ``(label, value of the finished MetaTrainer)``; ``None`` when another row shows it.
        may_change_on_resume: ``--resume`` accepts another value (else it must equal the checkpoint's).
        flag: the ``train`` flag: ``True`` for ``--`` and the name with dashes, or another name, or ``False``.
        stored_as: its key in a checkpoint's config, where that is not its name (an older name, kept in the files).
        argparse_options: passed to ``add_argument`` beyond what the field's type and default imply.
    """
    defaults = {"default_factory": lambda: copy.deepcopy(default)} if isinstance(default, (list, dict)) else {}
    metadata = {
        "help": help,
        "card": card,
        "may_change_on_resume": may_change_on_resume,
        "flag": flag,
        "stored_as": stored_as,
        "argparse": argparse_options,
    }
    return field(**(defaults or {"default": default}), metadata=metadata)


def network_rule(values: list[str]) -> NetworkRule | None:
    """The rule of a ``network_rule`` setting: ``None`` for ``[]`` (one network for every coordinate), the named
    rule of :data:`~.tasks.NETWORK_RULES` for one name, else ``GLOB=NETWORK ... FALLBACK``
    (:meth:`NetworkRule.parse`)."""
    if not values:
        return None
    if len(values) == 1:
        if values[0] not in NETWORK_RULES:
            raise ValueError(
                f"network_rule {values[0]!r} is not a named rule ({', '.join(NETWORK_RULES)}); a rule of your own is "
                "GLOB=NETWORK pairs then the fallback network, e.g. 'conv.*.weight=conv' fc"
            )
        return NETWORK_RULES[values[0]]
    return NetworkRule.parse(values)


def _network_rule_row(trainer: MetaTrainer) -> str:
    rule = network_rule(trainer.config.network_rule)
    if rule is None:
        return "one network for every parameter"
    pairs = ", ".join(f"`{pattern}` -> {network}" for pattern, network in rule.patterns)
    return f"{len(rule.networks)} networks (weight set): {pairs}, others -> {rule.fallback}"


def _meta_loss_row(trainer: MetaTrainer) -> str:
    c = trainer.config
    log = "log " if c.meta_loss == "log" else ""
    if c.meta_gradient == "es":
        shared = (
            f"; the first {c.meta_loss_from:g} of the horizon run once by the network as it is, every perturbed run "
            "going on from there"
            if c.meta_loss_from
            else ""
        )
        return f"the final {log}loss of each run (mean {log}f(theta_t) over its last 10% of steps){shared}"
    skipped = f", in the truncations after the first {c.meta_loss_from:g} of the horizon" if c.meta_loss_from else ""
    return f"{log}f(theta_t) summed over t = 0..{'T' if c.meta_loss_final else 'T-1'}{skipped}"


def _meta_gradient_row(trainer: MetaTrainer) -> str:
    c = trainer.config
    if c.meta_gradient == "es":
        shaping = ", scores as centred ranks" if c.es_ranks else ""
        runs = f"the last {1 - c.meta_loss_from:g} of runs" if c.meta_loss_from else "whole runs"
        return (
            f"evolution strategies on {runs}: {c.es_pairs} antithetic pairs per iteration, sigma {c.es_sigma}" + shaping
        )
    return f"truncated BPTT, unroll {c.unroll}"


@dataclass
class TrainConfig:
    """Everything that determines a meta-training run (recorded in checkpoints and the model card).

    Each field is declared once, with :func:`setting`: its default, its help, its row in the model card and whether
    ``--resume`` may change it; the ``train`` command's flags are made from these declarations (and the network's
    flags from :class:`CoordinatewiseLSTM`'s arguments).
    """

    task: str = setting(
        "quadratic",
        "built-in task family, or several separated by commas (a mixture); one of " + ", ".join(TASK_DESCRIPTIONS),
        card=("task", lambda t: f"`{t.config.task}` ({t.task.name})"),
        required=True,
    )
    horizon: int = setting(100, "optimizee steps per problem", card="horizon (optimizee steps per problem)")
    horizon_curriculum: list[int] = setting(
        [],
        "training horizons for equal consecutive stages of the run (Chen et al. 2020), replacing --horizon",
        card="horizon curriculum (equal stages)",
        nargs="+",
        metavar="H",
    )
    init: Initialisation = setting(
        "default",
        "'default': PyTorch's; 'forget_bias': +1 on the forget gates' biases (as the original code's LSTM); 'adam': "
        "start as Adam (lr = --output-scale; needs adam_normalized inputs, momentum 0.9, --readout-skip)",
        card=("network initialisation", lambda t: t.init_description()),
    )
    init_from: str | None = setting(
        None,
        "start from these weights (packaged name, directory or hub repo id) and their network config, to which "
        "--momentum-decays, --step-timescales and --lr-decay-input can add inputs (zero weights at first), "
        "--update-clip and --gradient-rms-clip can set step bounds and --nominal-lr the lr's unit; leave the other "
        "network flags at their defaults. With --network-rule, one network starts every network of the rule, and a "
        "weight set (whose networks the rule must name) starts each from its network of the same name",
        card=None,
        stored_as="init_weights",
        metavar="WEIGHTS",
    )
    """Fine-tuning: ``network_config`` then holds changes to the weights' config, which may only add
    ``momentum_decays``, ``step_timescales``, ``lr_decay_input`` or ``lr_warmup_input`` (:func:`~.widen.widen`) or set
    the weightless options (:data:`WEIGHTLESS_OPTIONS`).  The weights are validated before the first
    iteration and stay the result unless a later validation beats them; resuming checks that the weights are still
    those the run started from.  With a ``network_rule``, one network starts every network of the run; a weight set
    starts each from its network of the same name (the rule must name the set's networks, which must share one
    config; fine-tuning the paper's two CIFAR-10 LSTMs, section 3.3)."""
    train_added_inputs_only: bool = setting(
        False,
        "with --init-from: meta-train only the weights of the inputs the network flags add; the starting weights' "
        "own stay as they are",
        card="meta-trained: only the added inputs' weights",
    )
    train_readout_only: bool = setting(
        False,
        "meta-train only the read-out (with --train-added-inputs-only: its weights on the added inputs, with "
        "--readout-skip), so the LSTM runs as before",
        card="meta-trained: only the read-out",
    )
    train_magnitude_only: bool = setting(
        False,
        "with --train-readout-only: only the magnitude's read-out weights (--output direction_magnitude), so the "
        "update's direction stays as it was",
        card="meta-trained: only the magnitude's read-out",
    )
    train_direction_only: bool = setting(
        False,
        "with --train-readout-only: only the direction's read-out weights (--output direction_magnitude), so the "
        "update's magnitude stays as it was",
        card="meta-trained: only the direction's read-out",
    )
    train_readout_inputs: list[str] = setting(
        [],
        "with --train-readout-only: only the read-out's weights on these inputs (the network's input names, e.g. "
        "t100; the read-out must see its inputs) and, with 'bias', its bias; none: all of the read-out",
        card="meta-trained: only the read-out's weights on",
        nargs="+",
    )
    init_magnitude_shift: list[str] = setting(
        [],
        "with --init-from: NAME=VALUE pairs added, before meta-training, to the magnitude's read-out weights on the "
        "named inputs (input names, e.g. t10) or, for 'bias', to its bias; e.g. t10=2.5 t100=2 bias=-4.5 starts the "
        "step at 1/60 of its size, reaching it over about 300 steps (a warm-up)",
        card="start: the magnitude's read-out shifted by",
        nargs="+",
        metavar="NAME=VALUE",
    )
    """Hand-set changes to the starting weights that meta-training then tunes (``docs/experiments.md``, session 31:
    a warm-up of the step size through the step-count inputs)."""
    init_hidden_gain: float | None = setting(
        None,
        "with --init-from: a factor on the magnitude's read-out weights on the LSTM's hidden units, before "
        "meta-training; 0.5 halves how far the LSTM moves each coordinate's step away from the others'",
        card="start: the magnitude's read-out weights on the LSTM times",
        metavar="G",
    )
    """A hand-set change to the starting weights (``docs/experiments.md``, session 32: the LSTM's spread of step
    sizes across coordinates costs at the end of training)."""
    network_rule: list[str] = setting(
        [],
        "meta-train one network per kind of parameter (paper 3.3) into a weight set: GLOB=NETWORK pairs (a shell "
        "glob matching whole parameter names, '*' dots included, first match wins) then the fallback network's name, "
        "or a named rule (" + ", ".join(NETWORK_RULES) + "); none: one network for every parameter",
        card=("networks", _network_rule_row),
        nargs="+",
        metavar="RULE",
    )
    """See :func:`network_rule`; each network has ``network_config``, and all are meta-trained together by one
    meta-optimizer (:class:`~.bptt.SetStep`)."""
    param_scale: float | None = setting(
        None,
        "rescale each training problem's coordinates by factors log-uniform in [1/S, S] (Lv et al. 2017)",
        card="random parameter scaling (Lv et al. 2017)",
        metavar="S",
    )
    """See :class:`RescaledProblem`."""
    lr_schedules: list[str] = setting(
        [],
        "learning-rate schedules (" + ", ".join(SCHEDULES) + "), one drawn per iteration, that multiply the network's "
        "update at each step of the horizon, as the optimizer's lr does (none: the update as it is)",
        card="lr schedules (one per problem)",
        nargs="+",
        choices=SCHEDULES,
        metavar="SCHEDULE",
    )
    """See :mod:`.schedules`; validation problem ``i`` runs under ``lr_schedules[i % len(lr_schedules)]``."""
    lr_factor_range: float | None = setting(
        None,
        "multiply each iteration's updates by a factor log-uniform in [1/R, R] too: the lr a user picks",
        card="random lr factor",
        metavar="R",
    )
    meta_gradient: MetaGradient = setting(
        "bptt",
        "'bptt': truncated backpropagation through time, a meta-update per --unroll steps (the paper); 'es': one "
        "meta-update per iteration by antithetic evolution strategies on the final loss of whole runs of the horizon "
        "(--es-pairs, --es-sigma)",
        card=("meta-gradient", _meta_gradient_row),
    )
    """See :mod:`.bptt` and :mod:`.es`."""
    unroll: int = setting(20, "truncation length of BPTT", card=None)
    """``horizon / unroll`` meta-updates per problem."""
    es_pairs: int = setting(8, "with --meta-gradient es: antithetic pairs of runs per iteration", card=None)
    es_sigma: float = setting(
        0.01, "with --meta-gradient es: the standard deviation of the perturbations of the weights", card=None
    )
    es_ranks: bool = setting(
        False,
        "with --meta-gradient es: replace each iteration's scores by their centred ranks (Salimans et al. 2017), so "
        "every problem weighs the same whatever the scale of its loss",
        card=None,
    )
    es_vectorize: bool = setting(
        False,
        "with --meta-gradient es: run the 2 x --es-pairs perturbed networks of an iteration side by side, vectorised "
        "with torch.func.vmap (meta.population), rather than one after another: the same scores up to float "
        "rounding, far fewer kernel launches (for a GPU)",
        card=None,
        may_change_on_resume=True,
    )
    meta_lr: float = setting(
        1e-3,
        "Adam learning rate of the meta-optimizer",
        card=(
            "meta-optimizer",
            lambda t: (
                f"Adam, lr {t.config.meta_lr}{' (cosine decay)' if t.config.meta_lr_schedule == 'cosine' else ''}"
            ),
        ),
    )
    meta_lr_schedule: MetaLrSchedule = setting(
        "constant",
        "of the meta learning rate; cosine: meta_lr * (1 + cos(pi * i / iterations)) / 2 at iteration i",
        card=None,
    )
    clip_grad_norm: float | None = setting(None, "clip the meta-gradient to this norm", card="meta-gradient clipping")
    meta_loss: MetaLoss = setting(
        "sum",
        "sum of the losses over a truncation (the paper) or of their logarithms (Wichrowska et al. 2017)",
        card=("meta-loss", _meta_loss_row),
    )
    """With ``"log"`` each step's loss is that of the iteration's problems together (their sum when
    ``meta_batch_size > 1``); validation reports the mean log loss of single problems instead of the mean loss."""
    meta_loss_from: float = setting(
        0.0,
        "the fraction of the horizon run first with the fast optimizer and no graph, so that meta-training sees the "
        "end of training alone, which the suite scores: with BPTT no truncation before it meta-trains; with ES the "
        "network as it is runs it once per iteration and every perturbed run goes on from there (F at most 0.9)",
        card=None,
        metavar="F",
    )
    """The first :meth:`TrainConfig.meta_loss_start` steps of each problem only advance it."""
    meta_loss_final: bool = setting(
        False,
        "add f(theta_T), the loss after a truncation's last update, to its meta-loss (as the original code)",
        card=None,
    )
    second_derivatives: bool = setting(
        False,
        "differentiate through the optimizee's gradients too (the exact meta-gradient; the paper drops it)",
        card=(
            "optimizee gradients in the meta-gradient",
            lambda t: (
                "not differentiated (evolution strategies)"
                if t.config.meta_gradient == "es"
                else "differentiated (second derivatives)"
                if t.config.second_derivatives
                else "constants (paper)"
            ),
        ),
    )
    """Hessian-vector products of the loss; the original implementation's ``second_derivatives`` flag."""
    meta_batch_size: int | None = setting(
        None,
        "problems optimised side by side per iteration (None: the task's default)",
        card=("problems per iteration", lambda t: t.meta_batch_size),
    )
    iterations: int = setting(
        1000,
        "iterations: each optimises --meta-batch-size fresh problems over the full horizon (0 with --init-from: "
        "validate the start, checkpoint and stop, to --resume elsewhere)",
        card=("iterations", lambda t: t.iteration),
        may_change_on_resume=True,
    )
    seed: int = setting(0, "seeds the network's initialisation and the training problems", card="seed")
    device: str = setting(
        "cpu",
        "torch device for the network and the problems, e.g. cuda (random numbers are drawn on the CPU)",
        card=("device", lambda t: f"{_device_name(t.device)} x {t.world_size} process(es)"),
        may_change_on_resume=True,
    )
    validation_problems: int = setting(
        10,
        "fixed held-out problems of the training distribution at each validation",
        card=(
            "validation problems",
            lambda t: (
                f"{t.config.validation_problems}, {t.validation_horizon} steps each"
                + (", families in turn" if t.config.validation_per_family else "")
            ),
        ),
    )
    validation_per_family: bool = setting(
        False,
        "with a mixture, validation problem i comes from family i mod F (one per family with --validation-problems "
        "F) instead of the family its seed picks",
        card=None,
    )
    validation_horizon: int | None = setting(
        None, "optimizee steps per validation problem (None: --horizon)", card=None
    )
    validation_metric: ValidationMetric = setting(
        "mean",
        "what validation scores (and the best network is kept by): the mean over the horizon, or the final loss, "
        "the mean over its last 10% (the suite's final loss); of the log loss with --meta-loss log. final-vs-start "
        "(with --init-from): the share of problems whose final loss is above the starting weights' minus the share "
        "below it, from -1 (lower on every problem) to 1, as the suite counts wins",
        card=None,
    )
    validate_every: int = setting(50, "iterations between validations", card=None)
    checkpoint_every: int = setting(10, "iterations between checkpoints", card=None, may_change_on_resume=True)
    data_dir: str | None = setting(
        None,
        "folder with one sub-folder per dataset (DIR/mnist/...); the data are checked by sha256",
        card=None,
        may_change_on_resume=True,
    )
    network_config: NetworkOptions = setting(
        {},
        "CoordinatewiseLSTM arguments (with init_from: changes to the weights' config)",
        card=None,
        flag=False,
        stored_as="network",
    )
    command: str = setting(
        "",
        "the command that started the run, then each that resumed it with other arguments",
        card=None,
        flag=False,
        may_change_on_resume=True,
    )

    def __post_init__(self) -> None:
        if self.iterations < 0 or (self.iterations == 0 and self.init_from is None):
            raise ValueError(
                f"iterations must be at least 1 (0 with init_from: validate the start and stop), got {self.iterations}"
            )
        for name in (
            "horizon",
            "unroll",
            "validate_every",
            "validation_problems",
            "checkpoint_every",
            "es_pairs",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name, hint in get_type_hints(TrainConfig).items():
            if get_origin(hint) is Literal and getattr(self, name) not in get_args(hint):
                raise ValueError(f"{name} must be one of {get_args(hint)}, got {getattr(self, name)!r}")
        if self.horizon % self.unroll:
            raise ValueError(f"horizon ({self.horizon}) must be a multiple of unroll ({self.unroll})")
        if self.unroll < 2 and not self.meta_loss_final:
            raise ValueError(
                f"unroll must be at least 2, got {self.unroll}: a truncation's meta-loss sums the losses at the "
                "iterates where its gradients are taken, so with one step it does not depend on the network "
                "(unless meta_loss_final adds the loss after the last update)"
            )
        if not self.meta_lr > 0:
            raise ValueError(f"meta_lr must be positive, got {self.meta_lr}")
        if not self.es_sigma > 0:
            raise ValueError(f"es_sigma must be positive, got {self.es_sigma}")
        if not 0 <= self.meta_loss_from < 1:
            raise ValueError(f"meta_loss_from must be in [0, 1), got {self.meta_loss_from}")
        if self.meta_loss_from and (self.es_vectorize or self.network_rule):
            raise ValueError(
                "meta_loss_from runs the first part of each horizon with one network's fast step: it needs one "
                "network (no network_rule) and no es_vectorize"
            )
        from .evaluation.protocol import FINAL_FRACTION

        if self.meta_gradient == "es" and self.meta_loss_from > 1 - FINAL_FRACTION:
            raise ValueError(
                f"meta_loss_from {self.meta_loss_from} leaves evolution strategies less of each run than the final "
                f"{FINAL_FRACTION:g} they score: it must be at most {1 - FINAL_FRACTION:g}"
            )
        if self.meta_gradient == "es" and (self.second_derivatives or self.meta_loss_final):
            raise ValueError(
                "second_derivatives and meta_loss_final are options of the BPTT meta-gradient; meta_gradient='es' "
                "differentiates nothing and scores the final loss of each run"
            )
        if self.es_vectorize and (self.meta_gradient != "es" or self.network_rule):
            raise ValueError(
                "es_vectorize runs the perturbed networks of evolution strategies side by side: it needs "
                "meta_gradient='es' and one network (no network_rule)"
            )
        if self.meta_batch_size is not None and self.meta_batch_size < 1:
            raise ValueError(f"meta_batch_size must be at least 1, got {self.meta_batch_size}")
        for horizon in self.horizon_curriculum:
            if horizon < 1 or horizon % self.unroll:
                raise ValueError(f"horizon_curriculum: {horizon} is not a positive multiple of unroll ({self.unroll})")
        _magnitude_shifts(self.init_magnitude_shift)
        if self.init_hidden_gain is not None and not (
            math.isfinite(self.init_hidden_gain) and self.init_hidden_gain >= 0
        ):
            raise ValueError(f"init_hidden_gain must be a finite number >= 0, got {self.init_hidden_gain}")
        if self.init_from is not None and self.init != "default":
            raise ValueError(f"init={self.init!r} and init_from={self.init_from!r}: choose one way to start")
        if self.validation_horizon is not None and self.validation_horizon < 1:
            raise ValueError(f"validation_horizon must be at least 1, got {self.validation_horizon}")
        if self.param_scale is not None and not self.param_scale >= 1:
            raise ValueError(f"param_scale must be at least 1, got {self.param_scale}")
        for schedule in self.lr_schedules:
            if schedule not in SCHEDULES:
                raise ValueError(f"lr_schedules: {schedule!r} is not one of {SCHEDULES}")
        if self.lr_factor_range is not None and not self.lr_factor_range >= 1:
            raise ValueError(f"lr_factor_range must be at least 1, got {self.lr_factor_range}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be positive, got {self.clip_grad_norm}")
        network_rule(self.network_rule)  # a malformed rule is an error now, not at the start of the run
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r}: CUDA is not available in this torch installation")

    def meta_loss_start(self, horizon: int) -> int:
        """The steps of a ``horizon`` run before the part that meta-trains: ``meta_loss_from`` of it, with BPTT
        rounded down to whole truncations."""
        steps = math.floor(self.meta_loss_from * horizon + 1e-9)
        return steps if self.meta_gradient == "es" else steps // self.unroll * self.unroll

    def to_dict(self) -> dict[str, Any]:
        """The settings by the names a checkpoint stores them under."""
        return {f.metadata["stored_as"] or f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The settings of :meth:`to_dict`; keys it does not know are left out."""
        names = {f.metadata["stored_as"] or f.name: f.name for f in fields(cls)}
        return cls(**{names[key]: value for key, value in values.items() if key in names})


def changed_settings(saved: TrainConfig, config: TrainConfig) -> list[str]:
    """The settings in which ``config`` differs from ``saved`` that a resumed run must keep: all but those declared
    ``may_change_on_resume``; the network is compared by its normalised config (defaults spelled out or not)."""
    changed = []
    for setting_field in fields(TrainConfig):
        name = setting_field.name
        if setting_field.metadata["may_change_on_resume"]:
            continue
        if name == "network_config":
            differs = (
                CoordinatewiseLSTM(**saved.network_config).config != CoordinatewiseLSTM(**config.network_config).config
            )
        else:
            differs = getattr(saved, name) != getattr(config, name)
        if differs:
            changed.append(name)
    return changed


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``; a line that is not a row is an error naming the file and the line."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("iteration"), int):
            raise ValueError(
                f"{path}, line {number}: {line[:60]!r} is not a metrics row (a JSON object with an integer "
                '"iteration"): repair or delete that line, or delete the file to resume without the log so far'
            )
        rows.append(row)
    return rows


def _magnitude_shifts(values: list[str]) -> dict[str, float]:
    """``init_magnitude_shift``'s ``NAME=VALUE`` pairs as a dict (each name once, each value a finite number)."""
    shifts: dict[str, float] = {}
    for value in values:
        name, _, number = value.partition("=")
        try:
            shift = float(number)
        except ValueError:
            shift = math.nan
        if not name or not math.isfinite(shift) or name in shifts:
            raise ValueError(
                f"init_magnitude_shift: {value!r} is not NAME=VALUE with a finite VALUE and a NAME not given before "
                "(e.g. t100=2 or bias=-4.5)"
            )
        shifts[name] = shift
    return shifts


def _readout_input_masks(
    network: CoordinatewiseLSTM, names: list[str], option: str = "train_readout_inputs"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of the read-out's weight and bias: 1 on the columns of the inputs ``names`` (``input_names``) and, if
    ``names`` has ``"bias"``, on the bias; 0 elsewhere."""
    weight, bias = network.readout.weight, network.readout.bias
    first = network.hidden_size if network.num_layers else 0
    if weight.shape[1] == first:
        raise ValueError(f"{option}: the read-out does not see the inputs (it needs readout_skip)")
    unknown = [name for name in names if name != "bias" and name not in network.input_names]
    if unknown:
        raise ValueError(
            f"{option}: no input {', '.join(map(repr, unknown))}; the network's inputs are "
            f"{network.input_names} (and 'bias')"
        )
    weight_mask, bias_mask = torch.zeros_like(weight), torch.full_like(bias, float("bias" in names))
    for name in names:
        if name != "bias":
            weight_mask[:, first + network.input_names.index(name)] = 1
    return weight_mask, bias_mask


def _shift_magnitude_(network: CoordinatewiseLSTM, shifts: dict[str, float]) -> None:
    """Add ``shifts`` (by input name, or ``"bias"``) to the magnitude's read-out weights, in place."""
    if network.output != "direction_magnitude":
        raise ValueError(f"init_magnitude_shift: the weights' output is {network.output!r}, which has no magnitude")
    with torch.no_grad():
        for name, shift in shifts.items():
            weight_mask, bias_mask = _readout_input_masks(network, [name], option="init_magnitude_shift")
            network.readout.weight[1] += shift * weight_mask[1]
            network.readout.bias[1] += shift * bias_mask[1]


def _scale_hidden_magnitude_(network: CoordinatewiseLSTM, gain: float) -> None:
    """Multiply the magnitude's read-out weights on the LSTM's hidden units by ``gain``, in place."""
    if network.output != "direction_magnitude" or not network.num_layers:
        raise ValueError(
            f"init_hidden_gain: the weights need output='direction_magnitude' and an LSTM, got "
            f"output={network.output!r}, num_layers={network.num_layers}"
        )
    with torch.no_grad():
        network.readout.weight[1, : network.hidden_size] *= gain


def _train_only_(network: CoordinatewiseLSTM, masks: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Let meta-gradients reach only the weights where ``masks`` (by parameter name) is 1: the other entries' are
    zeroed by a hook, and parameters with none to train are frozen (Adam then leaves them exactly as they are).
    Returns the masks of the parameters left to train, by ``id`` of the parameter (for evolution strategies, which
    perturb only what trains)."""
    trainable, kept = 0, {}
    for name, param in network.named_parameters():
        mask = masks[name].to(param.device)
        if mask.any():
            param.register_hook(lambda grad, mask=mask: grad * mask)
            trainable += int(mask.sum())
            kept[id(param)] = mask
        else:
            param.requires_grad_(False)
    if not trainable:
        raise ValueError(
            "train_added_inputs_only: the network flags add no input to the starting weights (give --lr-decay-input, "
            "--lr-warmup-input, --momentum-decays or --step-timescales with new values)"
        )
    return kept


def meta_iteration(
    network: CoordinatewiseLSTM | WeightSet,
    meta_optimizer: torch.optim.Optimizer,
    problem: Problem,
    *,
    horizon: int,
    unroll_length: int,
    clip_grad_norm: float | None = None,
    include_final: bool = False,
    log_losses: bool = False,
    second_derivatives: bool = False,
    average_across_processes: bool = False,
    lr_factors: torch.Tensor | None = None,
    meta_loss_start: int = 0,
) -> float:
    """Optimise ``problem`` for ``horizon`` steps from its initial parameters and a zero LSTM state, with one
    meta-update of ``network`` per truncation of ``unroll_length`` steps; returns the mean loss per problem.
    The first ``meta_loss_start`` steps (a multiple of ``unroll_length``) run without a graph or meta-updates
    (:func:`~.bptt.advance`; a single network only).

    With ``average_across_processes`` (``torch.distributed`` initialised) the meta-gradients and the returned loss
    are averaged over the processes, each of which brings its own problems.  A meta-gradient that is not finite is
    skipped rather than applied.  ``lr_factors`` (one per step of the horizon) scale the updates, and give networks
    with lr inputs their values as the optimizer computes them (see ``unroll``).
    The networks of a weight set each run the coordinates its rule gives them (:class:`~.bptt.SetStep`); one that
    runs none of the problem's gets no meta-gradient (zero, where averaged across processes).
    """
    params = problem.init_params()
    step = SetStep(network, problem) if isinstance(network, WeightSet) else network
    state = step.initial_state(params.numel(), device=params.device)
    losses = []
    if meta_loss_start:
        if isinstance(network, WeightSet) or meta_loss_start % unroll_length:
            raise ValueError(
                f"meta_loss_start ({meta_loss_start}) needs a single network (not a weight set) and a multiple of "
                f"unroll_length ({unroll_length})"
            )
        params, state, early_losses = advance(network, problem, params, meta_loss_start, lr_factors)
        losses.append(early_losses / problem.num_problems)
    lr_states = None if lr_factors is None else lr_inputs(lr_factors, lr_factors[0], lr_factors.cummax(dim=0).values)
    for truncation in range(meta_loss_start // unroll_length, horizon // unroll_length):
        factors = states = None
        if lr_factors is not None:
            steps = slice(truncation * unroll_length, (truncation + 1) * unroll_length)
            factors, states = lr_factors[steps].to(params.device), lr_states[steps].to(params.device)
        result = unroll(
            step,
            problem,
            params,
            state,
            unroll_length,
            include_final=include_final,
            log_losses=log_losses,
            second_derivatives=second_derivatives,
            lr_factors=factors,
            lr_states=states,
        )
        meta_optimizer.zero_grad()
        (result.meta_loss / problem.num_problems).backward()
        apply_meta_gradient(
            list(network.parameters()),
            meta_optimizer,
            clip_grad_norm=clip_grad_norm,
            average_across_processes=average_across_processes,
        )
        params, state = result.params, result.state
        losses.append(result.losses / problem.num_problems)
    mean_loss = torch.cat(losses).mean().reshape(1)
    if average_across_processes:
        _all_reduce_mean([mean_loss])
    return mean_loss.item()


def apply_meta_gradient(
    params: list[torch.nn.Parameter],
    meta_optimizer: torch.optim.Optimizer,
    *,
    clip_grad_norm: float | None,
    average_across_processes: bool,
) -> None:
    """Step ``meta_optimizer`` on the ``.grad`` of ``params``: averaged over the processes (a missing one counts as
    zero) with ``average_across_processes``, clipped to ``clip_grad_norm``, and skipped if not finite."""
    if average_across_processes:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        _all_reduce_mean([p.grad for p in params])
    if clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
    if all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
        meta_optimizer.step()


def initialise_as_adam_(network: CoordinatewiseLSTM) -> CoordinatewiseLSTM:
    """Set the read-out so that ``network`` starts as Adam with learning rate ``output_scale`` (``beta1 = 0.9``,
    ``beta2 = second_moment_decay``, ``eps = 1e-8``): ``u_t = -output_scale * mhat_0.9 / (sqrt(vhat) + eps)``.

    The read-out weight on the skip input ``m0.9`` becomes -1 and every other read-out weight and bias 0, so the
    LSTM starts with no say and meta-training learns what to add to Adam.  Needs ``"adam_normalized"`` inputs with
    momentum decay 0.9 and ``readout_skip``."""
    if network.preprocessing != "adam_normalized" or 0.9 not in network.momentum_decays or not network.readout_skip:
        raise ValueError(
            "init='adam' needs a network with preprocessing='adam_normalized', 0.9 in momentum_decays and "
            f"readout_skip=True; got config {network.config}"
        )
    offset = network.hidden_size if network.num_layers else 0
    with torch.no_grad():
        network.readout.weight.zero_()
        network.readout.bias.zero_()
        network.readout.weight[0, offset + network.input_names.index("m0.9")] = -1.0
    return network


def _all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    torch._foreach_copy_(
        tensors, [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors)]
    )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


class MetaTrainer:
    """Meta-trains one network on one task into ``out_dir``.

    Under ``torchrun`` (``torch.distributed`` initialised) every process meta-trains on its own
    ``meta_batch_size`` problems per iteration, the meta-gradients are averaged, and only rank 0 writes
    checkpoints, logs and weights; all processes start from and resume the same checkpoint.

    ``task`` may be a :class:`Task` of the user's; otherwise ``config.task`` names a built-in one (training split).
    """

    def __init__(self, config: TrainConfig, out_dir: str | os.PathLike, task: Task | None = None) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.task = task if task is not None else get_task(config.task, split="train", data_dir=config.data_dir)
        self.meta_batch_size = config.meta_batch_size or self.task.default_meta_batch_size
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if distributed else 0
        self.world_size = dist.get_world_size() if distributed else 1
        torch.manual_seed(config.seed)
        self.device = torch.device(config.device)
        self.rule = network_rule(config.network_rule)
        self.gradient_masks: dict[int, torch.Tensor] = {}
        """With ``train_added_inputs_only``: the mask of each parameter that trains, by its ``id``."""
        start = self._start()
        self.init_identity = None if start is None else start.weights_identity
        if self.rule is None:
            self.network: CoordinatewiseLSTM | WeightSet = self._initial_network(start)
            networks = {"network": self.network}
        else:  # each network drawn (or taken from init_from) in turn, as the one network of a run without a rule
            starts = start.networks if isinstance(start, WeightSet) else dict.fromkeys(self.rule.networks, start)
            networks = {name: self._initial_network(starts[name]) for name in self.rule.networks}
            self.network = WeightSet(networks, self.rule)
        if start is not None:  # the config the start gives, which every network of a run shares
            configs = {name: network.config for name, network in networks.items()}
            first = next(iter(configs.values()))
            if any(other != first for other in configs.values()):
                raise ValueError(
                    f"init_from={config.init_from!r}: the networks of the weight set have different configs "
                    f"({configs!r}); a run meta-trains networks of one config"
                )
            self.config = replace(config, network_config=first)
        self.meta_optimizer = torch.optim.Adam(self.network.parameters(), lr=self.config.meta_lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.iteration = 0
        self.best_metric = math.inf
        self.start_scores: list[float] = []
        """With ``validation_metric="final-vs-start"``: each validation problem's final loss under the starting
        weights."""
        self.best_state = copy.deepcopy(self.network.state_dict())
        self.elapsed = 0.0
        self.rows: list[dict[str, Any]] = []

    def _start(self) -> CoordinatewiseLSTM | WeightSet | None:
        """The weights ``init_from`` names (``None`` without it): one network, the start of every network of the run,
        or a weight set, whose networks start the run's networks of the same names (the run's ``network_rule`` must
        name the same networks; its patterns may differ)."""
        config = self.config
        if config.init_from is None:
            return None
        start = resolve_weights(config.init_from)
        if isinstance(start, WeightSet):
            wanted = None if self.rule is None else set(self.rule.networks)
            if wanted != set(start.networks):
                given = "no network_rule" if self.rule is None else f"network_rule naming {list(self.rule.networks)}"
                raise ValueError(
                    f"init_from={config.init_from!r} is a weight set of networks {list(start.networks)}, but the run "
                    f"has {given}: fine-tuning a set needs a network_rule (--network-rule) naming the same networks, "
                    "each started from the set's network of its name"
                )
        return start

    def _initial_network(self, start: CoordinatewiseLSTM | None) -> CoordinatewiseLSTM:
        """A network as the run starts it: from ``start`` (a network of ``init_from``, widened to
        ``network_config``) or freshly drawn, then initialised as ``init`` says."""
        config = self.config
        masks: dict[str, torch.Tensor] | None = None  # by parameter name, 1 for each weight that meta-trains
        if start is not None:
            start_config = start.config
            wanted = CoordinatewiseLSTM(**{**start_config, **config.network_config}).config
            added = dict(
                momentum_decays=wanted.get("momentum_decays", ()),
                step_timescales=wanted.get("step_timescales", ()),
                lr_decay_input=wanted.get("lr_decay_input", False),
                lr_warmup_input=wanted.get("lr_warmup_input", False),
            )
            widened = widen(start, **added)
            unbounded = dict.fromkeys(WEIGHTLESS_OPTIONS)
            if {**widened.config, **unbounded} != {**wanted, **unbounded}:
                raise ValueError(
                    f"network_config={config.network_config!r} changes the config of init_from={config.init_from!r} "
                    f"({start_config!r}) beyond {', '.join(FINE_TUNING_CHANGES)} (new inputs: give the full lists, "
                    "the weights' own values, then the new ones)"
                )
            network = CoordinatewiseLSTM(**wanted)
            network.load_state_dict(widened.state_dict())
            network = network.to(self.device)
            if config.train_added_inputs_only:
                masks = added_weights(start, **added)
            if config.init_magnitude_shift:
                _shift_magnitude_(network, _magnitude_shifts(config.init_magnitude_shift))
            if config.init_hidden_gain is not None:
                _scale_hidden_magnitude_(network, config.init_hidden_gain)
        elif config.train_added_inputs_only or config.init_magnitude_shift or config.init_hidden_gain is not None:
            option = next(
                name
                for name in ("train_added_inputs_only", "init_magnitude_shift", "init_hidden_gain")
                if getattr(config, name) not in (False, [], None)
            )
            raise ValueError(f"{option} needs init_from: the weights it changes")
        else:
            network = CoordinatewiseLSTM(**config.network_config).to(self.device)
        if config.train_readout_inputs and not config.train_readout_only:
            raise ValueError("train_readout_inputs restricts train_readout_only: give both")
        rows = [name for name in READOUT_ROW_OPTIONS if getattr(config, name)]
        if len(rows) > 1:
            raise ValueError(f"{' and '.join(rows)} leave nothing to meta-train: give one")
        if config.train_readout_only or rows or network.linear_direction:
            masks = masks or {name: torch.ones_like(p) for name, p in network.named_parameters()}
            if config.train_readout_only:
                masks = {name: m if name.startswith("readout.") else torch.zeros_like(m) for name, m in masks.items()}
            for option in rows:
                if not config.train_readout_only:
                    raise ValueError(f"{option} restricts train_readout_only: give both")
                if network.output != "direction_magnitude":
                    raise ValueError(
                        f"{option}: the weights' output is {network.output!r}, which has no direction and magnitude"
                    )
                frozen = 1 - READOUT_ROW_OPTIONS[option]
                masks["readout.weight"][frozen] = 0
                masks["readout.bias"][frozen] = 0
            if config.train_readout_inputs:
                weight_mask, bias_mask = _readout_input_masks(network, config.train_readout_inputs)
                masks["readout.weight"] = masks["readout.weight"] * weight_mask
                masks["readout.bias"] = masks["readout.bias"] * bias_mask
            weight_mask, bias_mask = network.readout_masks()  # the weights linear_direction leaves unused stay 0
            masks["readout.weight"] = masks["readout.weight"] * weight_mask
            masks["readout.bias"] = masks["readout.bias"] * bias_mask
        if masks is not None:
            self.gradient_masks |= _train_only_(network, masks)
        if config.validation_metric == "final-vs-start" and config.init_from is None:
            raise ValueError("validation_metric='final-vs-start' compares with the starting weights: give init_from")
        if config.init == "adam":
            initialise_as_adam_(network)
        elif config.init == "forget_bias":
            with torch.no_grad():
                for cell in network.cells:
                    cell.bias_ih[cell.hidden_size : 2 * cell.hidden_size] += 1.0
        if network.linear_direction:
            weight_mask, bias_mask = network.readout_masks()
            with torch.no_grad():
                network.readout.weight.mul_(weight_mask)
                network.readout.bias.mul_(bias_mask)
        return network

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _checkpoint(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "iteration": self.iteration,
            "network": self.network.state_dict(),
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "world_size": self.world_size,
            "best_metric": self.best_metric,
            "best_network": self.best_state,
            "elapsed": self.elapsed,
            "init_sha256": self.init_sha256,
            "start_scores": self.start_scores,
        }

    def save_checkpoint(self) -> None:
        """Write ``metrics.jsonl``, then ``checkpoint.pt``, each atomically (rank 0; the others wait for it).  In this
        order a kill at any point leaves the log at or past the checkpoint, and resuming drops the rows past it."""
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _write_jsonl(self.out_dir / METRICS, self.rows)
            atomic_write(self.out_dir / CHECKPOINT, lambda handle: torch.save(self._checkpoint(), handle), "wb")
        if self.world_size > 1:
            dist.barrier()

    def _read_checkpoint(self) -> dict[str, Any]:
        """``checkpoint.pt`` of ``out_dir``; one that cannot be read or lacks an entry is an error naming it."""
        path = self.out_dir / CHECKPOINT
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a damaged file fails in the zip reader, the unpickler or the storage reader
            problem = f"cannot be read ({type(error).__name__})"
        else:
            missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint] if isinstance(checkpoint, dict) else []
            if isinstance(checkpoint, dict) and not missing and isinstance(checkpoint["config"], dict):
                return checkpoint
            problem = f"lacks {', '.join(missing)}" if missing else "is not a meta-training checkpoint"
        raise ValueError(
            f"{path} {problem}: it is damaged or not a checkpoint of learned_torch_optim, so the run cannot be "
            "resumed; start it over with --overwrite instead of --resume, or choose another --out"
        )

    def load_checkpoint(self) -> None:
        """Continue the run in ``out_dir``.  Every setting must equal the checkpoint's (:func:`changed_settings`)
        except those declared ``may_change_on_resume``; of these, ``iterations`` may not go below the iteration
        reached, nor change under a schedule or curriculum, and a changed ``command`` is recorded after the saved
        one, for the model card."""
        checkpoint = self._read_checkpoint()
        # the device may change (a run from a GPU machine goes on here): the saved one need not exist on this one
        saved = TrainConfig.from_dict({**checkpoint["config"], "device": self.config.device})
        changed = changed_settings(saved, self.config)
        if changed:
            differences = "; ".join(
                f"{name}={getattr(self.config, name)!r} differs from the checkpoint's {getattr(saved, name)!r}"
                for name in changed
            )
            raise ValueError(f"--resume: {differences} in {self.out_dir / CHECKPOINT}")
        trained = checkpoint["iteration"] > 0  # a checkpoint of iteration 0 holds the validation of the start alone
        if (
            trained
            and saved.iterations != self.config.iterations
            and (self.config.meta_lr_schedule != "constant" or self.config.horizon_curriculum)
        ):
            raise ValueError(
                f"--resume: iterations={self.config.iterations} differs from the checkpoint's {saved.iterations} in "
                f"{self.out_dir / CHECKPOINT}; the cosine schedule and the curriculum are laid out over the run's "
                "iterations, so they cannot change"
            )
        if checkpoint.get("init_sha256") != self.init_sha256:
            raise ValueError(
                f"--resume: init_from={self.config.init_from!r} now has sha256 {self.init_sha256}, but the run "
                f"in {self.out_dir / CHECKPOINT} started from {checkpoint.get('init_sha256')}"
            )
        if trained and checkpoint["world_size"] != self.world_size:
            raise ValueError(
                f"--resume: {self.world_size} process(es), but {self.out_dir / CHECKPOINT} was written by a run of "
                f"{checkpoint['world_size']}; the problems each process draws depend on it"
            )
        if checkpoint["iteration"] > self.config.iterations:
            raise ValueError(
                f"--resume: iterations={self.config.iterations}, but the run in {self.out_dir / CHECKPOINT} is at "
                f"iteration {checkpoint['iteration']} already; pass --iterations {checkpoint['iteration']} or more"
            )
        if saved.command and self.config.command:  # the commands so far, and this one if it differs from the last
            command = saved.command
            if self.config.command != saved.command.rsplit("\n", 1)[-1]:
                command += f"\n# resumed at iteration {checkpoint['iteration']} with\n{self.config.command}"
            self.config = replace(self.config, command=command)
        self.iteration = checkpoint["iteration"]
        self.network.load_state_dict(checkpoint["network"])
        self.meta_optimizer.load_state_dict(checkpoint["meta_optimizer"])
        self.generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        self.best_metric = checkpoint["best_metric"]
        self.best_state = checkpoint["best_network"]
        self.start_scores = checkpoint.get("start_scores", [])
        self.elapsed = checkpoint["elapsed"]
        metrics = self.out_dir / METRICS
        rows = _read_metrics(metrics) if metrics.exists() else []
        self.rows = [row for row in rows if row["iteration"] <= self.iteration]

    # -- one iteration -----------------------------------------------------------------------------------------
    def horizon(self, iteration: int) -> int:
        """The training horizon of (0-based) ``iteration``: the curriculum's stage, else ``config.horizon``."""
        stages = self.config.horizon_curriculum
        if not stages:
            return self.config.horizon
        return stages[min(iteration * len(stages) // self.config.iterations, len(stages) - 1)]

    @property
    def init_sha256(self) -> str | None:
        """The hash of the weights the run started from (``init_from``), if any."""
        return self.init_identity.sha256 if self.init_identity is not None else None

    @property
    def validation_horizon(self) -> int:
        return self.config.validation_horizon or self.config.horizon

    def train_iteration(self) -> float:
        """Sample fresh problems and meta-train on them over one horizon: their mean loss (with
        ``meta_gradient="es"``: the mean score of the runs that did not diverge)."""
        k = self.meta_batch_size
        every_seed = torch.randint(2**62, (self.world_size * k,), generator=self.generator).tolist()
        seeds = every_seed[self.rank * k : (self.rank + 1) * k]
        if self.config.meta_lr_schedule == "cosine":
            progress = self.iteration / self.config.iterations
            for group in self.meta_optimizer.param_groups:
                group["lr"] = self.config.meta_lr * (1 + math.cos(math.pi * progress)) / 2
        drawn = self.task.problems(seeds)
        scales = None if self.config.param_scale is None else self._draw_scales(every_seed, drawn)

        def problem(drawn: Problem) -> Problem:
            return (drawn if scales is None else RescaledProblem(drawn, scales)).to(self.device)

        horizon = self.horizon(self.iteration)
        schedule, factor = self._draw_lr()
        if self.config.meta_gradient == "es":  # each run on the same problems and minibatch streams, drawn afresh
            return self._es_step(lambda: problem(self.task.problems(seeds)), horizon, schedule, factor)
        return meta_iteration(
            self.network,
            self.meta_optimizer,
            problem(drawn),
            horizon=horizon,
            unroll_length=self.config.unroll,
            clip_grad_norm=self.config.clip_grad_norm,
            include_final=self.config.meta_loss_final,
            log_losses=self.config.meta_loss == "log",
            second_derivatives=self.config.second_derivatives,
            average_across_processes=self.world_size > 1,
            lr_factors=None if schedule is None else factor * lr_factors(schedule, horizon),
            meta_loss_start=self.config.meta_loss_start(horizon),
        )

    def _draw_scales(self, every_seed: list[int], drawn: Problem) -> torch.Tensor:
        """The scales of :class:`RescaledProblem` for this process's problems ``drawn``, log-uniform in
        ``[1 / param_scale, param_scale]``.  Every process draws those of every process's problems (``every_seed``,
        ``meta_batch_size`` a process) from the shared generator, in rank order, and keeps its own, so that all stay
        in step for the draws that follow (the lr, the perturbations of evolution strategies); it builds the other
        processes' problems to count their parameters."""
        k, log_range = self.meta_batch_size, math.log(self.config.param_scale)
        scales = []
        for rank in range(self.world_size):
            problems = drawn if rank == self.rank else self.task.problems(every_seed[rank * k : (rank + 1) * k])
            n = problems.init_params().numel()
            scales.append(torch.exp((2 * torch.rand(n, generator=self.generator) - 1) * log_range))
        return scales[self.rank]

    def _draw_lr(self) -> tuple[Schedule | None, float]:
        """This iteration's lr: a schedule of ``lr_schedules`` (``"constant"`` without them) and a factor of
        ``lr_factor_range`` (1 without it), drawn from the run's generator; ``(None, 1.0)``, drawing nothing, when
        neither is set (the update as it is)."""
        c = self.config
        if not c.lr_schedules and c.lr_factor_range is None:
            return None, 1.0
        schedule: Schedule = "constant"
        if c.lr_schedules:
            schedule = c.lr_schedules[int(torch.randint(len(c.lr_schedules), (), generator=self.generator))]
        factor = 1.0
        if c.lr_factor_range is not None:
            log_range = math.log(c.lr_factor_range)
            factor = math.exp((2 * torch.rand((), generator=self.generator).item() - 1) * log_range)
        return schedule, factor

    def _es_step(self, problem: Callable[[], Problem], horizon: int, schedule: Schedule | None, factor: float) -> float:
        """One meta-update from :func:`~.es.antithetic_gradient`: each run is ``LearnedOptimizer`` at ``factor``
        times the ``nominal_lr`` under ``schedule`` over the horizon on ``problem()``, scored by its final (log)
        loss, as validation and the suite score runs; with ``es_vectorize`` the runs go side by side
        (:func:`~.population.run_population`).  With ``meta_loss_from`` the network as it is runs the first
        :meth:`TrainConfig.meta_loss_start` steps once (:func:`~.bptt.advance`), and each perturbed run goes on from
        there (the same parameters, LSTM state and minibatch stream) to the end of the horizon.  Under
        ``torch.distributed`` each process runs its own problems with the same perturbations, and the estimates are
        averaged."""
        from .evaluation import protocol

        def final(curves: torch.Tensor) -> torch.Tensor:
            """The score of each run (of which ``curves`` is the end): its final (log) loss."""
            return protocol.tail_mean(
                log_loss(curves) if self.config.meta_loss == "log" else curves, protocol.FINAL_FRACTION, horizon
            )

        start = self.config.meta_loss_start(horizon)
        if start:
            factors = factor * lr_factors(schedule or "constant", horizon)
            first = problem()
            middle, state, early = advance(self.network, first, first.init_params(), start, factors)
            diverged_early = bool(protocol.diverged(early))  # before the perturbations: as a whole run, every score

            def score() -> float:
                if diverged_early:
                    return math.inf
                window = problem()
                for _ in range(start):
                    window.sample_batch()
                _, _, losses = advance(self.network, window, middle, horizon - start, factors, start=start, state=state)
                return final(losses / window.num_problems).item()

        else:

            def score() -> float:
                curves = protocol.run_learned(self.network, problem(), horizon, factor, schedule or "constant")
                return final(curves).item()

        named = [(name, p) for name, p in self.network.named_parameters() if p.requires_grad]
        params = [p for _, p in named]

        def score_all(perturbed: list[list[torch.Tensor]]) -> list[float]:
            members = [{name: value for (name, _), value in zip(named, values, strict=True)} for values in perturbed]
            weights = stack_weights(self.network, members)
            curves = run_population(self.network, weights, problem(), horizon, factor, schedule or "constant")
            return final(curves.cpu()).tolist()

        grads, scores = antithetic_gradient(
            params,
            None if self.config.es_vectorize else score,
            score_all=score_all if self.config.es_vectorize else None,
            pairs=self.config.es_pairs,
            sigma=self.config.es_sigma,
            generator=self.generator,
            masks=[self.gradient_masks.get(id(p)) for p in params],
            ranks=self.config.es_ranks,
        )
        self.meta_optimizer.zero_grad()
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad
        apply_meta_gradient(
            params,
            self.meta_optimizer,
            clip_grad_norm=self.config.clip_grad_norm,
            average_across_processes=self.world_size > 1,
        )
        finite = [s for s in scores if math.isfinite(s)]
        mean = torch.tensor([sum(finite) / len(finite) if finite else math.inf], device=self.device)
        if self.world_size > 1:
            _all_reduce_mean([mean])
        return mean.item()

    def validation_problem(self, index: int) -> Problem:
        """Validation problem ``index``: seed ``VALIDATION_SEED + index``, from the family of a mixture that
        the seed picks, or with ``validation_per_family`` from family ``index`` mod the number of families."""
        seed = VALIDATION_SEED + index
        if self.config.validation_per_family and isinstance(self.task, MixtureTask):
            return self.task.tasks[index % len(self.task.tasks)].problem(seed)
        return self.task.problem(seed)

    def validate(self) -> float:
        """Mean loss (log loss with ``meta_loss="log"``) over the horizon, or over its last
        :data:`~.evaluation.protocol.FINAL_FRACTION` with ``validation_metric="final"``, on fixed held-out problems
        of the training distribution, at the network's ``nominal_lr`` under the run's schedules in turn.  With
        ``"final-vs-start"``: the share of these problems whose final loss is above the starting weights' minus the
        share below (a diverged run is above), 0 for the starting weights, whose final losses the first call
        records.  Under ``torch.distributed`` the processes share the problems out."""
        from .evaluation import protocol

        horizon = self.validation_horizon
        schedules = self.config.lr_schedules or ["constant"]
        scores = torch.zeros(self.config.validation_problems, dtype=torch.float64)  # summed across processes below
        for i in range(self.rank, self.config.validation_problems, self.world_size):
            problem = self.validation_problem(i).to(self.device)
            curve = protocol.run_learned(self.network, problem, horizon, schedule=schedules[i % len(schedules)]).cpu()
            if self.config.meta_loss == "log":
                curve = log_loss(curve)
            scores[i] = (
                curve.mean()
                if self.config.validation_metric == "mean"
                else protocol.tail_mean(curve, protocol.FINAL_FRACTION)
            )
        if self.world_size > 1:  # every process ran every world_size-th problem
            on_device = scores.to(self.device)  # NCCL reduces CUDA tensors only
            dist.all_reduce(on_device)
            scores = on_device.cpu()
        if self.config.validation_metric == "final-vs-start":
            finals = scores.nan_to_num(math.inf, math.inf).tolist()
            if not self.start_scores:
                self.start_scores = finals
            return sum((f > s) - (f < s) for f, s in zip(finals, self.start_scores, strict=True)) / len(finals)
        metric = scores.mean().item()
        return metric if math.isfinite(metric) else math.inf

    # -- the run -----------------------------------------------------------------------------------------------
    def train(self, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
        """Run to ``config.iterations``; returns the weights directory (``out_dir``).

        ``resume`` continues the run in ``out_dir`` from its checkpoint; resumed with ``iterations`` at the iteration
        it reached (a stopped run finished where it stopped), it validates that iteration before writing the
        weights.  A folder that holds another run, or files but no run, is refused unless ``overwrite``: the run then
        starts there and replaces the files it writes."""
        if resume and overwrite:
            raise ValueError("--resume continues the run in --out, --overwrite starts a new one there: choose one")
        resuming = (self.out_dir / CHECKPOINT).exists() and not overwrite
        if resuming and not resume:
            raise FileExistsError(
                f"{self.out_dir / CHECKPOINT} exists: pass --resume to continue that run, --overwrite to start a new "
                "one in its place, or choose another --out"
            )
        if self.rank == 0:
            self._prepare_out_dir(resuming=resuming, overwrite=overwrite)
        if resuming:
            self.load_checkpoint()
        bar = tqdm(
            total=self.config.iterations,
            initial=self.iteration,
            disable=not progress or self.rank != 0,
            desc="meta-train",
        )
        started = time.perf_counter() - self.elapsed
        if self.iteration == 0 and self.config.init_from is not None and not resuming:
            self.best_metric = self.validate()
            self.elapsed = time.perf_counter() - started
            self.rows.append({"iteration": 0, "validation_loss": self.best_metric, "elapsed_s": round(self.elapsed, 3)})
            self.save_checkpoint()  # the start's validation is not lost to a kill, and a resumed run skips it
        while self.iteration < self.config.iterations:
            meta_loss = self.train_iteration()
            self.iteration += 1
            row: dict[str, Any] = {"iteration": self.iteration, "meta_loss": meta_loss}
            if self.iteration % self.config.validate_every == 0 or self.iteration == self.config.iterations:
                self._validate_into(row)
            self.elapsed = time.perf_counter() - started
            row["elapsed_s"] = round(self.elapsed, 3)
            self.rows.append(row)
            bar.update(1)
            bar.set_postfix(meta_loss=f"{meta_loss:.4g}", best_val=f"{self.best_metric:.4g}")
            if self.iteration % self.config.checkpoint_every == 0 or self.iteration == self.config.iterations:
                self.save_checkpoint()
        bar.close()
        last = self.rows[-1] if self.rows and self.rows[-1]["iteration"] == self.iteration else None
        if self.iteration and (last is None or "validation_loss" not in last):  # resumed where it stopped
            if last is None:  # its log was lost
                last = {"iteration": self.iteration}
                self.rows.append(last)
            self._validate_into(last)
            self.elapsed = time.perf_counter() - started
            last["elapsed_s"] = round(self.elapsed, 3)
            self.save_checkpoint()
        if self.rank == 0:
            self.save_weights()
        return self.out_dir

    def _validate_into(self, row: dict[str, Any]) -> None:
        """Validate the network now, keep it if it is the best so far, and record both in ``row``."""
        row["validation_loss"] = self.validate()
        if row["validation_loss"] < self.best_metric:
            self.best_metric = row["validation_loss"]
            self.best_state = copy.deepcopy(self.network.state_dict())
        row["best_validation_loss"] = self.best_metric

    def _prepare_out_dir(self, *, resuming: bool, overwrite: bool) -> None:
        """Before any training: refuse an ``out_dir`` with files of others unless ``overwrite``, remove what a killed
        run left (and, unless resuming, its checkpoint and log), and check that the folder can be written."""
        out = self.out_dir
        run_files = [out / CHECKPOINT, out / METRICS]
        leftovers = [*temporaries(out / CHECKPOINT), *temporaries(out / METRICS)]
        if out.is_dir():
            if not resuming and not overwrite:
                ours = {path.name for path in run_files + leftovers} | {WEIGHTS_TMP}
                others = sorted(path.name for path in out.iterdir() if path.name not in ours)
                if others:
                    raise FileExistsError(
                        f"--out {out} is not empty ({', '.join(others[:4])}{', ...' if len(others) > 4 else ''}) "
                        "and holds no run to resume: choose a new or empty folder, or pass --overwrite to train into "
                        "it anyway (config.json, model.safetensors, README.md, checkpoint.pt and metrics.jsonl there "
                        "are replaced)"
                    )
            for path in leftovers if resuming else run_files + leftovers:
                path.unlink(missing_ok=True)
        try:
            out.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=out):
                pass
        except OSError as error:
            raise ValueError(
                f"--out {out} cannot be written ({error.strerror or error}): choose a folder you can write to"
            ) from error

    def save_weights(self) -> None:
        """Write the best network with ``save_pretrained`` (config, safetensors, model card) into ``out_dir``, the
        files with :func:`file_mode` (``save_pretrained`` writes the safetensors file private).  A run with a
        ``network_rule`` writes a weight set: a folder per network and ``weight_set.json``, moved into place last
        (after the old one is removed), so the folder holds a whole set or none."""
        if self.rule is None:
            best: CoordinatewiseLSTM | WeightSet = CoordinatewiseLSTM(**self.config.network_config)
        else:
            best = WeightSet(
                {name: CoordinatewiseLSTM(**self.config.network_config) for name in self.rule.networks}, self.rule
            )
        best.load_state_dict(self.best_state)
        tmp = self.out_dir / WEIGHTS_TMP
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        best.save_pretrained(tmp, model_card_kwargs={"recipe": self.recipe_markdown()})
        mode = file_mode()
        for produced in tmp.rglob("*"):
            if produced.is_file():
                os.chmod(produced, mode)
        (self.out_dir / SET_FILE).unlink(missing_ok=True)
        for produced in sorted(tmp.iterdir(), key=lambda path: path.name == SET_FILE):
            target = self.out_dir / produced.name
            if produced.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            os.replace(produced, target)
        tmp.rmdir()

    def init_description(self) -> str:
        """How the network started, for the model card: ``config.init``, or the weights it was fine-tuned from."""
        if self.init_identity is None:
            return self.config.init
        return f"from weights `{self.init_identity.source}` (sha256 {self.init_identity.sha256[:12]})"

    def recipe_markdown(self) -> str:
        """The model card's recipe: a row per setting that declares one (:func:`setting`), the run's wall time and
        best validation loss, the command and the validation history."""
        validation = [r for r in self.rows if "validation_loss" in r]
        log = "log " if self.config.meta_loss == "log" else ""
        best, column = {
            "mean": (f"best validation {log}loss (mean over the horizon)", "validation loss"),
            "final": (f"best validation {log}loss (mean over its last 10%)", "validation loss"),
            "final-vs-start": (
                "best validation: problems worse than the starting weights' minus better, as a share",
                "worse minus better",
            ),
        }[self.config.validation_metric]
        lines = [
            "## Meta-training recipe",
            "",
            f"Trained with `learned_torch_optim.meta` (package version {__version__}).",
            "",
            "| setting | value |",
            "| --- | --- |",
        ]
        for setting_field in fields(TrainConfig):
            card = setting_field.metadata["card"]
            if isinstance(card, str):
                value = getattr(self.config, setting_field.name)
                lines.append(f"| {card} | {'none' if value is None or value == [] else value} |")
            elif card is not None:
                label, row = card
                lines.append(f"| {label} | {row(self)} |")
        lines += [
            f"| wall time | {self.elapsed / 60:.1f} min |",
            f"| {best} | {self.best_metric:.5g} |",
            "",
        ]
        if self.config.command:
            lines += ["Command:", "", "```bash", self.config.command, "```", ""]
        if validation:
            lines += ["Validation during training:", "", f"| iteration | {column} |", "| ---: | ---: |"]
            lines += [f"| {r['iteration']} | {r['validation_loss']:.5g} |" for r in validation]
        return "\n".join(lines)
