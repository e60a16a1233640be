"""Running optimizers on problems: the learned optimizer and tuned hand-designed baselines, side by side.

The protocol follows the experiments of Andrychowicz et al. (2016), section 3: every optimizer optimises the same
``K`` problems of a task for ``T`` steps from the same initial parameters and on the same minibatches, and is scored
by the paper's meta-loss with all weights ``w_t = 1`` (eq. 3): the sum of the optimizee's loss over the horizon,

    metric = mean over problems k of  sum_{t=0}^{T-1} f_k(theta_t)

(the losses at the iterates where the gradients are taken, as in :mod:`learned_torch_optim.meta.unroll`).  The
hand-designed baselines of the paper's figures (Adam, RMSprop, SGD and Nesterov's accelerated gradient, "NAG") each
get their learning rate tuned on a grid of half-decades, selected by that metric; the learned optimizer runs at
``lr=1``, the update it was meta-trained to make.  A run that produces a NaN or infinite loss on any problem has
diverged: its metric is infinite, so it is never selected, and it is reported as such.

:func:`evaluate` returns an :class:`EvaluationResult`; :meth:`EvaluationResult.save` writes ``results.json`` (the
schema of :meth:`EvaluationResult.to_dict`), ``results.md`` (:func:`format_results_markdown`) and ``curves.png``
(:func:`plot_curves`).  Baseline runs are cached as small JSON files (:class:`BaselineCache`), so that evaluating new
weights recomputes only the learned optimizer.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import __version__
from ..network import CoordinatewiseLSTM
from ..optimizer import LearnedOptimizer
from ..weights import load_weights
from .data import dataset_file
from .files import atomic_write, atomic_write_text, cache_root
from .tasks import Problem, Task, get_task, task_data_files

__all__ = [
    "BASELINES",
    "DEFAULT_BASELINES",
    "HALF_DECADES",
    "Baseline",
    "BaselineCache",
    "EvaluationResult",
    "OptimizerResult",
    "RunResult",
    "default_cache_dir",
    "evaluate",
    "format_results_markdown",
    "format_results_table",
    "plot_curves",
    "problem_seeds",
    "run_learned",
    "run_optimizer",
]

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]

HALF_DECADES: tuple[float, ...] = tuple(10.0 ** (k / 2) for k in range(-8, 1))
"""The learning-rate grid of the baselines: 1e-4, 10**-3.5, 1e-3, ..., 10**-0.5, 1."""

EVALUATION_SEED = 2 * 10**9
"""Base of the evaluation problem seeds, disjoint from the trainer's validation seeds (``10**9 + i``)."""
MAX_PROBLEMS = 10**6
"""Problems per seed: problem ``i`` of seed ``s`` is drawn from ``EVALUATION_SEED + s * MAX_PROBLEMS + i``."""
LEARNED = "learned"
"""The name of the learned optimizer in results."""
RESULTS_FORMAT = "learned_torch_optim.evaluation/1"
CACHE_FORMAT = 1
"""Bump when anything that changes a baseline run changes (problem seeds, the runner, the metric)."""


def _optimize(problem: Problem, make_optimizer: OptimizerFactory, steps: int, *, stop_on_divergence: bool) -> Tensor:
    params = torch.nn.Parameter(problem.init_params())
    optimizer = make_optimizer([params])
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = problem.loss(params, problem.sample_batch())
        if stop_on_divergence and not bool(torch.isfinite(loss)):
            # Diverged: the metric is infinite whatever follows, so the remaining steps are not run.
            losses.append(loss.detach())
            losses += [torch.full_like(losses[-1], math.nan)] * (steps - len(losses))
            break
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses) / problem.num_problems


def run_optimizer(problem: Problem, make_optimizer: OptimizerFactory, steps: int) -> Tensor:
    """Optimise ``problem`` for ``steps`` steps; the loss before each step, shape ``(steps,)``, per problem."""
    return _optimize(problem, make_optimizer, steps, stop_on_divergence=False)


def run_learned(network: CoordinatewiseLSTM, problem: Problem, steps: int, lr: float = 1.0) -> Tensor:
    """:func:`run_optimizer` with ``LearnedOptimizer(params, weights=network, lr=lr)``."""
    return run_optimizer(problem, lambda params: LearnedOptimizer(params, weights=network, lr=lr), steps)


# -- baselines ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """A hand-designed optimizer whose learning rate is tuned; ``description`` names every other hyperparameter
    (it is part of the cache key)."""

    name: str
    description: str
    factory: Callable[[list[torch.nn.Parameter], float], torch.optim.Optimizer]


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("adam", "torch.optim.Adam, betas (0.9, 0.999), eps 1e-8", lambda p, lr: torch.optim.Adam(p, lr=lr)),
        Baseline(
            "rmsprop",
            "torch.optim.RMSprop, alpha 0.99, eps 1e-8, no momentum",
            lambda p, lr: torch.optim.RMSprop(p, lr=lr),
        ),
        Baseline("sgd", "torch.optim.SGD, no momentum", lambda p, lr: torch.optim.SGD(p, lr=lr)),
        Baseline(
            "nag",
            "torch.optim.SGD, momentum 0.9, nesterov=True (Nesterov's accelerated gradient)",
            lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True),
        ),
    )
}
"""The paper's baselines (figures 2 to 5): Adam, RMSprop, SGD and NAG."""
DEFAULT_BASELINES: tuple[str, ...] = tuple(BASELINES)


# -- results -----------------------------------------------------------------------------------------------------


def _all_finite(values: Iterable[float]) -> bool:
    return all(math.isfinite(v) for v in values)


@dataclass(frozen=True)
class RunResult:
    """One optimizer at one learning rate on the ``K`` evaluation problems."""

    lr: float
    metrics: tuple[float, ...]
    """Per problem: the sum of the loss over the horizon."""
    final_losses: tuple[float, ...]
    """Per problem: the loss at the last step."""
    mean_curve: tuple[float, ...]
    """Per step: the loss averaged over the problems."""
    cached: bool = field(default=False, compare=False)
    """Whether this result was read from the baseline cache."""

    @classmethod
    def from_curves(cls, lr: float, curves: Sequence[Tensor]) -> RunResult:
        stacked = torch.stack(list(curves)).double()
        return cls(
            lr=float(lr),
            metrics=tuple(stacked.sum(dim=1).tolist()),
            final_losses=tuple(stacked[:, -1].tolist()),
            mean_curve=tuple(stacked.mean(dim=0).tolist()),
        )

    @property
    def diverged(self) -> bool:
        """Whether the loss became NaN or infinite on some problem."""
        return not _all_finite(self.metrics)

    @property
    def metric(self) -> float:
        """The mean over problems of the summed loss; ``inf`` for a diverged run."""
        return math.inf if self.diverged else statistics.fmean(self.metrics)

    @property
    def std(self) -> float:
        """Sample standard deviation of the metric over problems (NaN for one problem or a diverged run)."""
        if self.diverged or len(self.metrics) < 2:
            return math.nan
        return statistics.stdev(self.metrics)

    @property
    def stderr(self) -> float:
        """Standard error of the metric's mean, ``std / sqrt(K)``."""
        return self.std / math.sqrt(len(self.metrics))

    @property
    def final_loss(self) -> float:
        """The mean over problems of the loss at the last step; ``inf`` for a diverged run."""
        return math.inf if self.diverged else statistics.fmean(self.final_losses)


@dataclass
class OptimizerResult:
    """One optimizer over its learning-rate grid."""

    name: str
    description: str
    runs: list[RunResult]

    @property
    def best(self) -> RunResult | None:
        """The run of lowest metric (the smallest such lr on ties); ``None`` when every lr diverged."""
        finite = [run for run in self.runs if not run.diverged]
        return min(finite, key=lambda run: (run.metric, run.lr)) if finite else None

    @property
    def best_lr(self) -> float | None:
        return None if self.best is None else self.best.lr

    @property
    def metric(self) -> float:
        return math.inf if self.best is None else self.best.metric

    @property
    def best_lr_at_grid_edge(self) -> bool:
        """Whether the selected lr is the smallest or largest tried (the grid may be too narrow)."""
        lrs = [run.lr for run in self.runs]
        return self.best is not None and len(lrs) > 1 and self.best.lr in (min(lrs), max(lrs))


def _json_float(value: float) -> float | None:
    """Non-finite floats as ``null``: results files are strict JSON."""
    return value if math.isfinite(value) else None


def _json_floats(values: Iterable[float]) -> list[float | None]:
    return [_json_float(v) for v in values]


@dataclass
class EvaluationResult:
    """The outcome of :func:`evaluate`; :meth:`to_dict` is the schema of ``results.json``."""

    task: str
    split: str | None
    steps: int
    problems: int
    seed: int
    problem_seeds: list[int]
    optimizers: dict[str, OptimizerResult]
    weights: dict[str, str | None] | None = None

    @property
    def best_baseline(self) -> str | None:
        """The baseline of lowest metric at its best lr; ``None`` without a baseline that converged."""
        baselines = [r for name, r in self.optimizers.items() if name != LEARNED and r.best is not None]
        return min(baselines, key=lambda r: r.metric).name if baselines else None

    def ratio_to_best_baseline(self, name: str = LEARNED) -> float | None:
        """``metric(name) / metric(best baseline)``: below 1 beats every tuned baseline (``inf`` if ``name``
        diverged, ``None`` without a converged baseline)."""
        best = self.best_baseline
        if best is None:
            return None
        return self.optimizers[name].metric / self.optimizers[best].metric

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: non-finite numbers are ``null``, with ``diverged: true`` where a run diverged."""
        optimizers: dict[str, Any] = {}
        for name, result in self.optimizers.items():
            best = result.best
            ratio = self.ratio_to_best_baseline(name)
            optimizers[name] = {
                "description": result.description,
                "best_lr": result.best_lr,
                "metric": _json_float(result.metric),
                "std": None if best is None else _json_float(best.std),
                "stderr": None if best is None else _json_float(best.stderr),
                "final_loss": None if best is None else _json_float(best.final_loss),
                "diverged": best is None,
                "ratio_to_best_baseline": None if ratio is None else _json_float(ratio),
                "best_lr_at_grid_edge": result.best_lr_at_grid_edge,
                "lrs": [
                    {
                        "lr": run.lr,
                        "metric": _json_float(run.metric),
                        "std": _json_float(run.std),
                        "stderr": _json_float(run.stderr),
                        "final_loss": _json_float(run.final_loss),
                        "diverged": run.diverged,
                        "metric_per_problem": _json_floats(run.metrics),
                    }
                    for run in result.runs
                ],
                "mean_curve": [] if best is None else _json_floats(best.mean_curve),
            }
        return {
            "format": RESULTS_FORMAT,
            "task": self.task,
            "split": self.split,
            "steps": self.steps,
            "problems": self.problems,
            "seed": self.seed,
            "metric": "sum of the loss over the horizon (theta_0 .. theta_{T-1}) per problem, mean over problems",
            "weights": None if self.weights is None else self.weights.get("source"),
            "weights_sha256": None if self.weights is None else self.weights.get("sha256"),
            "weights_revision": None if self.weights is None else self.weights.get("revision"),
            "best_baseline": self.best_baseline,
            "torch_version": torch.__version__,
            "package_version": __version__,
            "problem_seeds": list(self.problem_seeds),
            "optimizers": optimizers,
        }

    def save(self, out_dir: str | os.PathLike, *, plot: bool = True) -> list[Path]:
        """Write ``results.json``, ``results.md`` and (with matplotlib) ``curves.png`` into ``out_dir``, each
        atomically; returns the files written.  Without matplotlib the plot is skipped with a warning."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        written = [out / "results.json", out / "results.md"]
        atomic_write_text(written[0], json.dumps(data, indent=2, allow_nan=False) + "\n")
        atomic_write_text(written[1], format_results_markdown(data) + "\n")
        if plot:
            try:
                plot_curves(data, out / "curves.png")
            except ImportError as error:
                warnings.warn(f"curves.png not written: {error}", UserWarning, stacklevel=2)
            else:
                written.append(out / "curves.png")
        return written


# -- the baseline cache ------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/learned_torch_optim/baselines``, by default ``~/.cache/learned_torch_optim/baselines``."""
    return cache_root() / "baselines"


class BaselineCache:
    """Baseline runs as small JSON files, one per (task, split, data, steps, problems, seed, optimizer, lr).

    The key also holds the optimizer's hyperparameters, the torch and package versions and :data:`CACHE_FORMAT`;
    a file is used only if its stored key equals the requested one, and an unreadable file is a miss.
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self._warned = False

    @staticmethod
    def key(task_id: str, *, steps: int, problems: int, seed: int, baseline: Baseline, lr: float) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "task": task_id,
            "steps": steps,
            "problems": problems,
            "seed": seed,
            "optimizer": baseline.name,
            "optimizer_description": baseline.description,
            "lr": float(lr),
            "torch_version": torch.__version__,
            "package_version": __version__,
        }

    def path(self, key: Mapping[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.directory / f"{key['optimizer']}-{digest}.json"

    def get(self, key: Mapping[str, Any]) -> RunResult | None:
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
            if entry["key"] != key:
                return None

            def floats(values: list[float | None]) -> tuple[float, ...]:
                return tuple(math.nan if v is None else float(v) for v in values)

            return RunResult(
                lr=float(key["lr"]),
                metrics=floats(entry["metrics"]),
                final_losses=floats(entry["final_losses"]),
                mean_curve=floats(entry["mean_curve"]),
                cached=True,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: Mapping[str, Any], run: RunResult) -> None:
        entry = {
            "key": dict(key),
            "metrics": _json_floats(run.metrics),
            "final_losses": _json_floats(run.final_losses),
            "mean_curve": _json_floats(run.mean_curve),
        }
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path(key), json.dumps(entry, allow_nan=False))
        except OSError as error:
            if not self._warned:
                self._warned = True
                warnings.warn(f"baseline cache {self.directory} not writable: {error}", UserWarning, stacklevel=3)


def _builtin_task_id(name: str, split: str, data_dir: str | None) -> str:
    """The cache identity of a built-in task: its name and, for datasets, the split and the sha256 of its files."""
    files = task_data_files(name, split)
    if not files:
        return name
    digest = hashlib.sha256()
    for dataset, file_name in files:
        digest.update(dataset_file(dataset, file_name, data_dir).read_bytes())
    return f"{name}|split={split}|{'+'.join(sorted({d for d, _ in files}))}-sha256={digest.hexdigest()}"


# -- evaluation --------------------------------------------------------------------------------------------------


def problem_seeds(seed: int, problems: int) -> list[int]:
    """The seeds of the ``problems`` evaluation problems of ``seed``; those of fewer problems are a prefix."""
    return [EVALUATION_SEED + seed * MAX_PROBLEMS + i for i in range(problems)]


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value!r}")


def _check_grid(name: str, grid: Sequence[float]) -> list[float]:
    values = [float(lr) for lr in grid]
    if not values or not all(math.isfinite(lr) and lr > 0 for lr in values):
        raise ValueError(f"{name} must be a non-empty sequence of positive finite learning rates, got {list(grid)!r}")
    return values


def _run_problems(
    task: Task,
    seeds: Sequence[int],
    make_optimizer: OptimizerFactory,
    steps: int,
    lr: float,
    bar: tqdm,
) -> RunResult:
    """One optimizer at one lr on every problem; each problem is drawn afresh, so its minibatches replay."""
    curves = []
    for seed in seeds:
        curves.append(_optimize(task.problem(seed), make_optimizer, steps, stop_on_divergence=True))
        bar.update(1)
    return RunResult.from_curves(lr, curves)


def evaluate(
    weights: str | os.PathLike | CoordinatewiseLSTM | None,
    task: str | Task,
    *,
    problems: int = 10,
    steps: int = 100,
    lr_grid: Sequence[float] = HALF_DECADES,
    learned_lr_grid: Sequence[float] = (1.0,),
    optimizers: Sequence[str] = DEFAULT_BASELINES,
    seed: int = 0,
    split: str = "test",
    data_dir: str | None = None,
    revision: str | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    task_cache_key: str | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate learned weights against tuned baselines on the same problems and minibatches (paper section 3).

    Args:
        weights: anything :func:`learned_torch_optim.load_weights` accepts, or ``None`` for the baselines only.
        task: a built-in task name (see ``learned-torch-optim list``) or a :class:`Task`.
        problems: ``K``, the number of problems; problem ``i`` is ``task.problem(seed_i)``, see
            :func:`problem_seeds`, drawn afresh for every run so that every optimizer sees the same minibatches.
        steps: ``T``, optimizer steps per problem.
        lr_grid: learning rates tried for each baseline (half-decades from 1e-4 to 1 by default).
        learned_lr_grid: learning rates tried for the learned optimizer (``(1.0,)``: untuned, as meta-trained).
        optimizers: baseline names, a subset of :data:`BASELINES`.
        seed: selects the evaluation problems.
        split: the data split of built-in dataset tasks (``"test"``: held out from meta-training).
        data_dir: the data directory of built-in dataset tasks.
        revision: the hub revision when ``weights`` is a repo id.
        cache: read and write baseline runs in the cache.
        cache_dir: the cache folder (default :func:`default_cache_dir`).
        task_cache_key: opt-in caching for a :class:`Task` object: a string that identifies its problems exactly
            (change it whenever the task changes).  Without it, runs on a user task are never cached.
        progress: show a progress bar over the runs.

    Returns:
        The per-optimizer results; the metric is the mean over problems of the summed loss over the horizon.
    """
    _check_int("problems", problems, 1, MAX_PROBLEMS)
    _check_int("steps", steps, 1)
    _check_int("seed", seed, 0)
    lr_grid = _check_grid("lr_grid", lr_grid)
    learned_lr_grid = _check_grid("learned_lr_grid", learned_lr_grid)
    unknown = [name for name in optimizers if name not in BASELINES]
    if unknown:
        raise ValueError(f"unknown optimizer(s) {', '.join(map(repr, unknown))}; baselines: {', '.join(BASELINES)}")
    baselines = [BASELINES[name] for name in dict.fromkeys(optimizers)]
    if weights is None and not baselines:
        raise ValueError("nothing to evaluate: no weights and no baseline optimizers")

    task_id: str | None
    if isinstance(task, Task):
        task_obj, task_name, task_split = task, task.name, None
        task_id = None if task_cache_key is None else f"user:{task_cache_key}"
    elif isinstance(task, str):
        if task_cache_key is not None:
            raise ValueError("task_cache_key is for Task objects; built-in tasks are cached by name")
        task_obj, task_name = get_task(task, split=split, data_dir=data_dir), task
        task_split = split if task_data_files(task, split) else None  # synthetic tasks have no data, no split
        task_id = _builtin_task_id(task, split, data_dir) if cache else None
    else:
        raise TypeError(f"task must be a built-in task name or a Task, got {type(task).__name__}")
    baseline_cache = BaselineCache(cache_dir) if cache and task_id is not None else None

    network = None if weights is None else load_weights(weights, revision=revision)
    identity = None if network is None else network.weights_identity.as_dict()
    seeds = problem_seeds(seed, problems)
    results: dict[str, OptimizerResult] = {}
    total = (len(baselines) * len(lr_grid) + (len(learned_lr_grid) if network is not None else 0)) * problems
    with tqdm(total=total, desc=f"evaluate {task_name}", unit="run", disable=not progress) as bar:
        if network is not None:
            runs = []
            for lr in learned_lr_grid:
                bar.set_postfix_str(f"{LEARNED} lr={lr:.2g}")

                def make_learned(params: list[torch.nn.Parameter], lr: float = lr) -> torch.optim.Optimizer:
                    return LearnedOptimizer(params, weights=network, lr=lr)

                runs.append(_run_problems(task_obj, seeds, make_learned, steps, lr, bar))
            description = f"LearnedOptimizer, weights {identity['source']} (sha256 {identity['sha256'][:12]})"
            results[LEARNED] = OptimizerResult(LEARNED, description, runs)
        for baseline in baselines:
            runs = []
            for lr in lr_grid:
                bar.set_postfix_str(f"{baseline.name} lr={lr:.2g}")
                key = None
                if baseline_cache is not None:
                    key = BaselineCache.key(
                        task_id, steps=steps, problems=problems, seed=seed, baseline=baseline, lr=lr
                    )
                    run = baseline_cache.get(key)
                    if run is not None:
                        bar.update(problems)
                        runs.append(run)
                        continue

                def make_baseline(
                    params: list[torch.nn.Parameter], lr: float = lr, baseline: Baseline = baseline
                ) -> torch.optim.Optimizer:
                    return baseline.factory(params, lr)

                run = _run_problems(task_obj, seeds, make_baseline, steps, lr, bar)
                if baseline_cache is not None and key is not None:
                    baseline_cache.put(key, run)
                runs.append(run)
            results[baseline.name] = OptimizerResult(baseline.name, baseline.description, runs)
    return EvaluationResult(
        task=task_name,
        split=task_split,
        steps=steps,
        problems=problems,
        seed=seed,
        problem_seeds=seeds,
        optimizers=results,
        weights=identity,
    )


# -- reports -----------------------------------------------------------------------------------------------------


def _as_dict(result: EvaluationResult | Mapping[str, Any]) -> Mapping[str, Any]:
    return result.to_dict() if isinstance(result, EvaluationResult) else result


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "n/a" if value is None else format(value, spec)


def _rows(data: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(optimizer, best lr, metric ± stderr, final loss, ratio) per optimizer, as text."""
    rows = []
    for name, entry in data["optimizers"].items():
        if entry["diverged"]:
            rows.append((name, "-", "diverged at every lr", "-", "inf" if name == LEARNED else "-"))
            continue
        lr = _fmt(entry["best_lr"], ".2g") + (" *" if entry.get("best_lr_at_grid_edge") else "")
        metric = _fmt(entry["metric"]) + ("" if entry["stderr"] is None else f" ± {_fmt(entry['stderr'], '.2g')}")
        rows.append((name, lr, metric, _fmt(entry["final_loss"]), _fmt(entry["ratio_to_best_baseline"], ".3f")))
    return rows


def _describe(data: Mapping[str, Any]) -> str:
    split = f" ({data['split']} split)" if data.get("split") else ""
    return (
        f"task {data['task']}{split}, {data['problems']} problem(s) x {data['steps']} steps, seed {data['seed']}; "
        "metric: sum of the loss over the horizon, mean ± standard error over problems"
    )


def format_results_table(result: EvaluationResult | Mapping[str, Any]) -> str:
    """A compact plain-text table (what ``learned-torch-optim evaluate`` prints)."""
    data = _as_dict(result)
    header = ("optimizer", "best lr", "metric", "final loss", "ratio")
    rows = [header, *_rows(data)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [_describe(data)]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    notes = []
    if any(entry.get("best_lr_at_grid_edge") for entry in data["optimizers"].values()):
        notes.append("* best lr at the edge of the grid")
    if data.get("best_baseline"):
        notes.append(f"ratio: metric / metric of the best baseline ({data['best_baseline']})")
    return "\n".join(lines + notes)


def format_results_markdown(result: EvaluationResult | Mapping[str, Any]) -> str:
    """A markdown table of an evaluation (an :class:`EvaluationResult` or a loaded ``results.json``), for docs
    and model cards."""
    data = _as_dict(result)
    split = f" ({data['split']} split)" if data.get("split") else ""
    weights = f" Learned optimizer: weights `{data['weights']}`." if data.get("weights") else ""
    baseline_lrs = sorted(
        {e["lr"] for name, entry in data["optimizers"].items() if name != LEARNED for e in entry["lrs"]}
    )
    grid = ", ".join(format(lr, ".2g") for lr in baseline_lrs)
    lines = [
        f"Task `{data['task']}`{split}: {data['problems']} problems, {data['steps']} optimizer steps each, evaluation "
        f"seed {data['seed']}; every optimizer sees the same problems and minibatches.{weights}",
        "",
        "| optimizer | best lr | sum of loss over the horizon (mean ± s.e.) | final loss | ratio to best baseline |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(data)]
    lines += [
        "",
        "Metric: the loss summed over the horizon per problem (the meta-training objective of Andrychowicz et al. "
        "2016, eq. 3, all w_t = 1), averaged over problems, with its standard error. Final loss: mean loss at the "
        "last step.",
    ]
    if grid:
        lines[-1] += f" Baseline learning rates tuned on {{{grid}}} by the metric."
    if any(entry.get("best_lr_at_grid_edge") for entry in data["optimizers"].values()):
        lines[-1] += " \\* best lr at the edge of the grid."
    return "\n".join(lines)


def plot_curves(result: EvaluationResult | Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Plot the mean loss curves (log scale, one line per optimizer at its best lr) as in the paper's figures.

    Uses matplotlib's Agg canvas without pyplot (the caller's backend is left alone).  Raises ``ImportError`` with
    an installation hint when matplotlib is missing.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "matplotlib is not installed; install it (pip install 'learned-torch-optim[plot]') to plot curves"
        ) from error
    data = _as_dict(result)
    figure = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positive = True
    for name, entry in data["optimizers"].items():
        curve = [math.nan if v is None else v for v in entry["mean_curve"]]
        if not curve:
            continue
        positive &= all(v > 0 for v in curve if math.isfinite(v))
        learned = name == LEARNED
        axes.plot(
            range(len(curve)),
            curve,
            label=f"{name} (lr={entry['best_lr']:.2g})",
            linewidth=2.2 if learned else 1.3,
            color="black" if learned else None,
            zorder=3 if learned else 2,
        )
    if positive:
        axes.set_yscale("log")
    split = f", {data['split']} split" if data.get("split") else ""
    axes.set_title(f"{data['task']}{split}: mean over {data['problems']} problems")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(True, which="both", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend()
    figure.tight_layout()
    path = Path(path)
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=120), mode="wb")
    return path
