"""Meta-training learned optimizers: tasks, the truncated unroll, the trainer, evaluation and the CLI.

This package depends on the core (``learned_torch_optim``); the core never imports it.  Its modules keep their
names: ``meta.evaluate`` is the evaluation module (run one with ``meta.evaluate.evaluate``), and ``meta.unroll`` is
the function of :mod:`learned_torch_optim.meta.bptt`.
"""

from .bptt import UnrollResult, unroll
from .evaluate import EvaluationResult, format_results_markdown
from .tasks import ModuleTask, Problem, QuadraticTask, Task, get_task, mnist_mlp_task
from .trainer import MetaTrainer, TrainConfig

__all__ = [
    "EvaluationResult",
    "format_results_markdown",
    "MetaTrainer",
    "ModuleTask",
    "Problem",
    "QuadraticTask",
    "Task",
    "TrainConfig",
    "UnrollResult",
    "get_task",
    "mnist_mlp_task",
    "unroll",
]
