"""Reports of an evaluation, from an :class:`~.results.EvaluationResult` or a loaded ``results.json``: the plain-text
table that ``learned-torch-optim evaluate`` prints, the markdown table of ``results.md`` and model cards, and the
loss curves of ``curves.png``."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import atomic_write
from .baselines import LEARNED

if TYPE_CHECKING:
    from .results import EvaluationResult

__all__ = ["format_results_markdown", "format_results_table", "plot_curves"]


def _as_dict(result: EvaluationResult | Mapping[str, Any]) -> Mapping[str, Any]:
    return result if isinstance(result, Mapping) else result.to_dict()


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
    """A markdown table of an evaluation (an :class:`~.results.EvaluationResult` or a loaded ``results.json``), for
    docs and model cards."""
    data = _as_dict(result)
    split = f" ({data['split']} split)" if data.get("split") else ""
    weights = f" Learned optimizer: weights `{data['weights']}`." if data.get("weights") else ""
    if data.get("weights_networks"):
        networks = ", ".join(f"`{name}`" for name in data["weights_networks"])
        weights = f" Learned optimizer: weight set `{data['weights']}` (one network per kind of parameter: {networks})."
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
