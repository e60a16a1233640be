"""Meta-training learned optimizers: tasks, the truncated unroll, the trainer, evaluation and the CLI.

This package depends on the core (``learned_torch_optim``); the core never imports it.  No function exported here
has the name of a module: ``meta.evaluate`` is the function of the package :mod:`learned_torch_optim.meta.evaluation`,
``meta.unroll`` that of the module :mod:`learned_torch_optim.meta.bptt`.
"""

from .bptt import UnrollResult, unroll
from .evaluation import EvaluationResult, evaluate, format_results_markdown
from .tasks import ModuleTask, Problem, QuadraticTask, Task, get_task, mnist_mlp_task
from .trainer import MetaTrainer, TrainConfig

__all__ = [
    "EvaluationResult",
    "evaluate",
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
