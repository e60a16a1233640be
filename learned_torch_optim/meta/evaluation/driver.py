"""The driver: :func:`evaluate` runs the learned optimizer and the tuned baselines on the same problems of a task
(the protocol of :mod:`.protocol`), reading and writing baseline runs in the :class:`~.cache.BaselineCache`."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from ...network import CoordinatewiseLSTM
from ...weight_set import WeightSet
from ...weights import resolve_weights
from ..tasks import Problem, Task, get_task, task_data_files
from .baselines import BASELINES, DEFAULT_BASELINES, LEARNED, Baseline
from .cache import BaselineCache, builtin_task_id
from .protocol import HALF_DECADES, MAX_PROBLEMS, problem_seeds, run_learned, run_optimizer
from .results import EvaluationResult, OptimizerResult, RunResult

__all__ = ["evaluate"]


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
    task: Task, seeds: Sequence[int], run: Callable[[Problem], Tensor], lr: float, bar: tqdm
) -> RunResult:
    """One optimizer at one lr on every problem (``run``: its loss curve on one); each problem is drawn afresh, so
    its minibatches replay."""
    curves = []
    for seed in seeds:
        curves.append(run(task.problem(seed)))
        bar.update(1)
    return RunResult.from_curves(lr, curves)


def _check_named(weight_set: WeightSet, task: Task, task_name: str, seeds: Sequence[int]) -> None:
    """Refuse a task whose problems do not name their parameters: a set's rule picks each one's network by name."""
    unnamed = [seed for seed in seeds if task.problem(seed).segments() is None]
    if unnamed:
        identity = weight_set.weights_identity
        raise ValueError(
            f"weights {identity.source!r} are a weight set of networks {', '.join(weight_set.networks)}, chosen for "
            f"each parameter by its name (paper section 3.3), but the problems of task {task_name!r} (seeds "
            f"{unnamed[:3]}{', ...' if len(unnamed) > 3 else ''}) do not name their parameters (Problem.segments): "
            "evaluate the set on a task of named parameters (a model's, such as paper-cifar10 or a ModuleTask), or "
            "one network on this task"
        )


def evaluate(
    weights: str | os.PathLike | CoordinatewiseLSTM | WeightSet | None,
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
        weights: anything :func:`learned_torch_optim.resolve_weights` accepts (one network, or a weight set, which
            needs a task whose problems name their parameters, ``Problem.segments``), or ``None`` for the baselines
            only.
        task: a built-in task name (see ``learned-torch-optim list``) or a :class:`Task`.
        problems: ``K``, the number of problems; problem ``i`` is ``task.problem(seed_i)``, see
            :func:`~.protocol.problem_seeds`, drawn afresh for every run so that every optimizer sees the same
            minibatches.
        steps: ``T``, optimizer steps per problem.
        lr_grid: learning rates tried for each baseline (half-decades from 1e-4 to 1 by default).
        learned_lr_grid: learning rates tried for the learned optimizer, as factors on its weights' ``nominal_lr``
            (each network's own, for a set; ``(1.0,)``: untuned, as meta-trained).
        optimizers: baseline names, a subset of :data:`~.baselines.BASELINES`.
        seed: selects the evaluation problems.
        split: the data split of built-in dataset tasks (``"test"``: held out from meta-training).
        data_dir: the data directory of built-in dataset tasks.
        revision: the hub revision when ``weights`` is a repo id.
        cache: read and write baseline runs in the cache.
        cache_dir: the cache folder (default :func:`~.cache.default_baseline_cache_dir`).
        task_cache_key: opt-in caching for a :class:`Task` object: a string that identifies its problems exactly
            (change it whenever the task changes).  Without it, runs on a user task are never cached.
        progress: show a progress bar over the runs.

    Returns:
        The per-optimizer results; the metric is the mean over problems of the summed loss over the horizon
        (:func:`~.protocol.horizon_sum`), and each baseline's lr is tuned by it (:func:`~.protocol.best_lr`).
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
        task_id = builtin_task_id(task, split, data_dir) if cache else None
    else:
        raise TypeError(f"task must be a built-in task name or a Task, got {type(task).__name__}")
    baseline_cache = BaselineCache(cache_dir) if cache and task_id is not None else None

    network = None if weights is None else resolve_weights(weights, revision=revision)
    identity: dict[str, Any] | None = None if network is None else network.weights_identity.as_dict()
    seeds = problem_seeds(seed, problems)
    if isinstance(network, WeightSet):
        _check_named(network, task_obj, task_name, seeds)
        identity = {
            **identity,
            "networks": {name: net.weights_identity.sha256 for name, net in network.networks.items()},
        }
    results: dict[str, OptimizerResult] = {}
    total = (len(baselines) * len(lr_grid) + (len(learned_lr_grid) if network is not None else 0)) * problems
    with tqdm(total=total, desc=f"evaluate {task_name}", unit="run", disable=not progress) as bar:
        if network is not None:
            runs = []
            for lr in learned_lr_grid:
                bar.set_postfix_str(f"{LEARNED} lr={lr:.2g}")

                def learned(problem: Problem, lr: float = lr) -> Tensor:
                    return run_learned(network, problem, steps, lr)

                runs.append(_run_problems(task_obj, seeds, learned, lr, bar))
            kind = f"weight set of {', '.join(network.networks)}" if isinstance(network, WeightSet) else "weights"
            description = f"LearnedOptimizer, {kind} {identity['source']} (sha256 {identity['sha256'][:12]})"
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

                def hand_designed(problem: Problem, lr: float = lr, baseline: Baseline = baseline) -> Tensor:
                    return run_optimizer(problem, lambda params: baseline.factory(params, lr), steps)

                run = _run_problems(task_obj, seeds, hand_designed, lr, bar)
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
