"""Results of an evaluation: one run (an optimizer at one learning rate on every problem), one optimizer over its
grid, the whole evaluation; :meth:`EvaluationResult.to_dict` is the schema of ``results.json``."""

from __future__ import annotations

import json
import math
import os
import statistics
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ... import __version__
from ..files import atomic_write_text
from .baselines import LEARNED
from .protocol import best_lr, final_loss, horizon_sum
from .report import format_results_markdown, plot_curves

__all__ = ["RESULTS_FORMAT", "EvaluationResult", "OptimizerResult", "RunResult", "json_floats"]

RESULTS_FORMAT = "learned_torch_optim.evaluation/1"


def _json_float(value: float) -> float | None:
    """Non-finite floats as ``null``: results files are strict JSON."""
    return value if math.isfinite(value) else None


def json_floats(values: Iterable[float]) -> list[float | None]:
    """``values`` for strict JSON: non-finite ones as ``null``."""
    return [_json_float(v) for v in values]


@dataclass(frozen=True)
class RunResult:
    """One optimizer at one learning rate on the ``K`` evaluation problems."""

    lr: float
    metrics: tuple[float, ...]
    """Per problem: the sum of the loss over the horizon (:func:`~.protocol.horizon_sum`)."""
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
            metrics=tuple(horizon_sum(stacked).tolist()),
            final_losses=tuple(final_loss(stacked).tolist()),
            mean_curve=tuple(stacked.mean(dim=0).tolist()),
        )

    @property
    def diverged(self) -> bool:
        """Whether the loss became NaN or infinite on some problem."""
        return not all(math.isfinite(v) for v in self.metrics)

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
        """The run at the tuned lr (:func:`~.protocol.best_lr` by the metric); ``None`` when every lr diverged."""
        lr = best_lr({run.lr: run.metric for run in self.runs})
        return next((run for run in self.runs if run.lr == lr), None)

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


@dataclass
class EvaluationResult:
    """The outcome of :func:`~learned_torch_optim.meta.evaluation.evaluate`; :meth:`to_dict` is the schema of
    ``results.json``."""

    task: str
    split: str | None
    steps: int
    problems: int
    seed: int
    problem_seeds: list[int]
    optimizers: dict[str, OptimizerResult]
    weights: dict[str, Any] | None = None
    """The learned optimizer's weights identity (``source``, ``revision``, ``sha256``); a weight set's also has
    ``networks``, the sha256 of each network by name."""

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
                        "metric_per_problem": json_floats(run.metrics),
                    }
                    for run in result.runs
                ],
                "mean_curve": [] if best is None else json_floats(best.mean_curve),
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
            "weights_networks": None if self.weights is None else self.weights.get("networks"),
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
