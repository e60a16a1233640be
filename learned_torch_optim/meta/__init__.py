"""Meta-training learned optimizers: tasks, the truncated unroll, the trainer, evaluation and the CLI.

This package depends on the core (``learned_torch_optim``); the core never imports it.
"""

from .evaluate import EvaluationResult, evaluate, format_results_markdown
from .tasks import ModuleTask, Problem, QuadraticTask, Task, get_task, mnist_mlp_task
from .trainer import MetaTrainer, TrainConfig
from .unroll import UnrollResult, unroll

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
