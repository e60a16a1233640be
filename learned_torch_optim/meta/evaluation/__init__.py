"""Evaluating optimizers: the learned optimizer and tuned hand-designed baselines, side by side.

:func:`evaluate` (the ``learned-torch-optim evaluate`` command) runs every optimizer on the same ``K`` problems of
a task for ``T`` steps and scores it by the paper's meta-loss (Andrychowicz et al. 2016, eq. 3, all ``w_t = 1``),

    metric = mean over problems k of  sum_{t=0}^{T-1} f_k(theta_t);

the baselines get their learning rate tuned on half-decades by that metric, the learned optimizer runs at ``lr=1``,
the update it was meta-trained to make.  It returns an :class:`EvaluationResult`, whose ``save`` writes
``results.json``, ``results.md`` and ``curves.png``.

Modules, each with one job:

- :mod:`.protocol`: the problems, the runner, the scores and what counts as divergence, shared by ``evaluate``,
  ``benchmarks/generalist_suite.py`` and the trainer's validation;
- :mod:`.baselines`: the hand-designed optimizers (Adam, RMSprop, SGD, NAG) and the learned optimizer's name;
- :mod:`.results`: a run, an optimizer over its grid, an evaluation; the schema of ``results.json``;
- :mod:`.cache`: baseline runs cached as small JSON files, so that new weights recompute only the learned optimizer;
- :mod:`.driver`: :func:`evaluate`;
- :mod:`.report`: the printed table, ``results.md`` and ``curves.png``.
"""

from .baselines import BASELINES, DEFAULT_BASELINES, LEARNED, Baseline
from .cache import BaselineCache, default_baseline_cache_dir
from .driver import evaluate
from .protocol import (
    FINAL_FRACTION,
    HALF_DECADES,
    best_lr,
    descended,
    diverged,
    final_loss,
    horizon_mean,
    horizon_sum,
    problem_seeds,
    run_learned,
    run_optimizer,
    tail_mean,
)
from .report import format_results_markdown, format_results_table, plot_curves
from .results import EvaluationResult, OptimizerResult, RunResult

__all__ = [
    "BASELINES",
    "DEFAULT_BASELINES",
    "FINAL_FRACTION",
    "HALF_DECADES",
    "LEARNED",
    "Baseline",
    "BaselineCache",
    "EvaluationResult",
    "OptimizerResult",
    "RunResult",
    "best_lr",
    "default_baseline_cache_dir",
    "descended",
    "diverged",
    "evaluate",
    "final_loss",
    "format_results_markdown",
    "format_results_table",
    "horizon_mean",
    "horizon_sum",
    "plot_curves",
    "problem_seeds",
    "run_learned",
    "run_optimizer",
    "tail_mean",
]
