"""The old import path of :mod:`learned_torch_optim.meta.evaluation`, kept only until its importers (``meta/__init__``,
``cli``, ``trainer``, ``publish``, two tests and a benchmark) import from there; then this file goes."""

from .evaluation import (
    BASELINES,
    DEFAULT_BASELINES,
    HALF_DECADES,
    EvaluationResult,
    evaluate,
    format_results_markdown,
    format_results_table,
    problem_seeds,
    run_learned,
    run_optimizer,
)

__all__ = [
    "BASELINES",
    "DEFAULT_BASELINES",
    "HALF_DECADES",
    "EvaluationResult",
    "evaluate",
    "format_results_markdown",
    "format_results_table",
    "problem_seeds",
    "run_learned",
    "run_optimizer",
]
