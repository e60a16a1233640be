"""Does storing the LSTM state in bf16 change what the learned optimizer achieves?

    python benchmarks/state_dtype_quality.py --weights WEIGHTS [--tasks quadratic mnist-mlp] [--problems 20]
                                             [--steps 100] [--data-dir DIR]

For each task, the same evaluation problems (``learned_torch_optim.meta.evaluation.problem_seeds``) are optimised by
``LearnedOptimizer(weights=WEIGHTS, state_dtype=...)`` with fp32 and with bf16 state, through
``learned_torch_optim.meta.evaluation.run_optimizer``; the table gives the mean final loss and the mean loss summed
over the horizon (the evaluation metric) of each, and their relative difference.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from learned_torch_optim import LearnedOptimizer, load_weights
from learned_torch_optim.meta.evaluation import problem_seeds, run_optimizer
from learned_torch_optim.meta.tasks import get_task

STATE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="packaged name, folder or hub repo id")
    parser.add_argument("--tasks", nargs="+", default=["quadratic", "mnist-mlp"])
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test", help="data split of the MNIST tasks")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    network = load_weights(args.weights)
    print(f"weights {network.weights_identity.as_dict()}")
    print(f"{'task':>12} {'state':>6} {'final loss':>12} {'sum of losses':>14} {'rel. diff (final, sum)':>24}")
    for task_name in args.tasks:
        task = get_task(task_name, split=args.split, data_dir=args.data_dir)
        scores = {}
        for label, dtype in STATE_DTYPES.items():

            def make(params, dtype=dtype):
                return LearnedOptimizer(params, weights=network, state_dtype=dtype)

            curves = [run_optimizer(task.problem(s), make, args.steps) for s in problem_seeds(args.seed, args.problems)]
            final = statistics.fmean(float(curve[-1]) for curve in curves)
            total = statistics.fmean(float(curve.sum()) for curve in curves)
            scores[label] = (final, total)
        for label, (final, total) in scores.items():
            reference_final, reference_total = scores["fp32"]
            diff = f"{final / reference_final - 1:+.2%}, {total / reference_total - 1:+.2%}"
            print(f"{task_name:>12} {label:>6} {final:>12.5g} {total:>14.5g} {diff:>24}")


if __name__ == "__main__":
    main()
