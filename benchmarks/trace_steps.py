"""Trace a learned optimizer's steps on one problem of the generalist suite, to see why a run jumps.

    python benchmarks/trace_steps.py --task mnist-mlp --steps 10000 --weights l2l-general --out trace.jsonl
                                     [--seed-index 0] [--data-dir DIR] [--cosine-lr]

Runs ``LearnedOptimizer(weights=W)`` at its default lr on the suite's problem ``--seed-index`` of ``--task`` (test
split, the same problem and minibatches as ``benchmarks/generalist_suite.py``) and writes one JSON line per step:
the loss before the step, the gradient's norm and largest entry, the update's norm and largest entry, how many
coordinates moved by more than 0.01, how many hit the network's ``update_clip`` (if it has one), and the parameters'
norm before the step; then prints the mean loss and the mean loss per tenth of the run. ``--cosine-lr`` decays
``lr`` from its default to 0 over the run (``torch.optim.lr_scheduler.CosineAnnealingLR``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from generalist_suite import suite_problem, tenths

from learned_torch_optim import LearnedOptimizer, load_weights
from learned_torch_optim.meta.files import atomic_write_text


def trace(
    task: str, steps: int, weights: str, seed_index: int, data_dir: str | None, cosine_lr: bool = False
) -> list[dict[str, float]]:
    problem = suite_problem(task, seed_index, data_dir)
    network = load_weights(weights)
    params = torch.nn.Parameter(problem.init_params())
    optimizer = LearnedOptimizer([params], weights=network)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps) if cosine_lr else None
    clip = network.update_clip
    rows = []
    for step in range(steps):
        optimizer.zero_grad()
        loss = problem.loss(params, problem.sample_batch())
        loss.backward()
        before = params.detach().clone()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        update, grad = params.detach() - before, params.grad
        rows.append(
            {
                "step": step,
                "loss": loss.item() / problem.num_problems,
                "grad_norm": grad.norm().item(),
                "grad_max": grad.abs().max().item(),
                "update_norm": update.norm().item(),
                "update_max": update.abs().max().item(),
                "moved_over_0.01": int((update.abs() > 0.01).sum()),
                "at_update_clip": int((update.abs() >= clip * (1 - 1e-6)).sum()) if clip else 0,
                "param_norm": before.norm().item(),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--weights", default="default")
    parser.add_argument("--seed-index", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cosine-lr", action="store_true", help="decay lr from its default to 0 over the run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = trace(args.task, args.steps, args.weights, args.seed_index, args.data_dir, args.cosine_lr)
    atomic_write_text(args.out, "".join(json.dumps(row) + "\n" for row in rows))
    losses = [row["loss"] for row in rows]
    per_tenth = [statistics.fmean(part) for part in tenths(losses)]
    print(f"mean loss {statistics.fmean(losses):.4g}; per tenth: " + ", ".join(f"{v:.3g}" for v in per_tenth))


if __name__ == "__main__":
    main()
