"""The cost of one run of evolution strategies: ``LearnedOptimizer`` over ``--steps`` steps on one problem of each
family of ``--task``, on ``--device``, as ``meta.trainer`` runs it (``protocol.run_learned``, warm-up + cosine).

    python benchmarks/es_run_time.py --task quadratic,mnist-conv,char-rnn --device cuda [--steps 300] [--data-dir DIR]
    python benchmarks/es_run_time.py ... --population 256   # 256 runs side by side (meta.population, --es-vectorize)

Prints each family's seconds and the total; with ``--population P`` those of ``P`` runs side by side, as
``--es-vectorize`` scores ``2 x --es-pairs`` perturbed networks, and the seconds per run.  It says where evolution
strategies should run on a machine: the problems of meta-training are small, so a step on a GPU is bound by kernel
launches, and on the lent H200 machine a
300-step run of each of the 11 families of ``l2l-general-v6``'s mixture took 13.9 s on the GPU against 17.6 s on one
of its 16 CPU cores (``docs/meta-training.md``, "On the lent GPU machine"; measured without the warm-up run this
script now makes).  Side by side the launches are shared: 64 runs took 1.2-4 times one run there on 8 of the families
(``docs/performance.md``, "Evolution strategies on a GPU").  Run it with ``OMP_NUM_THREADS=1`` to time one core.
"""

from __future__ import annotations

import argparse
import time

import torch

from learned_torch_optim.meta.evaluation import protocol
from learned_torch_optim.meta.population import run_population, stack_weights
from learned_torch_optim.meta.tasks import MixtureTask, Problem, get_task
from learned_torch_optim.weights import load_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help="a task or a comma-separated mixture of tasks")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--weights", default="l2l-general-v6")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--population", type=int, default=None, help="time P runs side by side instead of one")
    args = parser.parse_args()
    device = torch.device(args.device)
    task = get_task(args.task, split="train", data_dir=args.data_dir)
    families = task.tasks if isinstance(task, MixtureTask) else [task]
    network = load_weights(args.weights).to(device)
    runs = args.population or 1
    weights = stack_weights(network, [{}] * runs)

    def run(problem: Problem, steps: int) -> torch.Tensor:
        if args.population is None:
            return protocol.run_learned(network, problem, steps, schedule="warmup-cosine")
        return run_population(network, weights, problem, steps, schedule="warmup-cosine")[0]

    run(families[0].problem(0).to(device), 10)  # untimed: the device's and kernels' start-up
    total = 0.0
    for index, family in enumerate(families):
        problem = family.problem(1000 + index).to(device)
        started = time.perf_counter()
        curve = run(problem, args.steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        total += seconds
        print(f"{family.name:>22} {seconds:7.2f} s   {seconds / runs:8.4f} s a run   final loss {curve[-1].item():.4g}",
              flush=True)  # fmt: skip
    memory = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else ""
    print(f"{'total':>22} {total:7.2f} s   {total / runs:8.4f} s a run   ({len(families)} problems x {args.steps} "
          f"steps x {runs} run(s) side by side on {device}, {torch.get_num_threads()} threads{memory})")  # fmt: skip


if __name__ == "__main__":
    main()
