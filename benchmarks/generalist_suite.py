"""The generalist validation suite: held-out tasks at long horizons, learned weights against Adam.

    python benchmarks/generalist_suite.py --out DIR [--weights default l2l-paper-mnist ...] [--seeds 3]
                                          [--jobs N] [--data-dir DIR] [--tasks NAME ...] [--steps-scale F]

Every task of :data:`SUITE` is a built-in task that the generalist recipe (``docs/meta-training.md``) never
meta-trains on, run on its test split.  On each task, ``--seeds`` problems (``problem_seeds(0, seeds)``: the same
initial parameters and minibatches for every optimizer) are optimised for the task's horizon by

- Adam at every learning rate of the half-decade grid ``1e-4 ... 1`` (``HALF_DECADES``): "tuned Adam" is the best
  of them on the task by the metric (the smallest lr on ties), "Adam 1e-3" the grid point 1e-3;
- ``LearnedOptimizer(weights=W)`` at the weights' ``nominal_lr`` (untuned) for each ``--weights W``.

Runs and scores follow the evaluation protocol of ``learned_torch_optim.meta.evaluation.protocol``, the one of
``learned-torch-optim evaluate``.  Metric: the mean training loss over the horizon (``horizon_mean``: the paper's
summed loss divided by the horizon), averaged over the problems; "final" is the mean loss over the last 5% of steps
(``tail_mean``).  A run counts as diverged here if a loss is not finite (the protocol's ``diverged``: the run stops
there) or its final loss is not below its initial loss (not ``descended``); "tuned Adam" is chosen by ``best_lr``.
Each run is stored as one JSON file in ``DIR/runs`` when it finishes, so an
interrupted suite resumes where it stopped (``--jobs`` runs in parallel processes of one thread each); the summary
goes to ``DIR/results.json``, ``DIR/results.md`` and ``DIR/curves.png``.  ``step ms`` is the wall time per step of
a run (optimizee forward and backward included; a diverged run counts the steps it ran), comparable only between
runs of the same invocation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from learned_torch_optim import LearnedOptimizer, load_weights
from learned_torch_optim.meta.evaluation import (
    HALF_DECADES,
    best_lr,
    descended,
    diverged,
    horizon_mean,
    problem_seeds,
    run_optimizer,
    tail_mean,
)
from learned_torch_optim.meta.files import atomic_write_text
from learned_torch_optim.meta.tasks import Problem, get_task

SUITE: dict[str, int] = {
    "mnist-mlp-relu": 2000,
    "cifar-conv": 2000,
    "char-attention": 2000,
    "logistic-regression": 2000,
    "mlp-gelu": 3000,
    "fashion-mnist-mlp": 3000,
    "mnist1d-mlp": 3000,
    "mnist-mlp": 10000,
}
"""Held-out task -> horizon (optimizer steps).  A ReLU MNIST MLP (the paper's failure case), a conv net, an attention
language model, a convex problem, and horizons of 2,000 to 10,000 steps."""

ADAM_DEFAULT_LR = 1e-3
CURVE_POINTS = 200
FINAL_FRACTION = 0.05


def _digest(weights: str) -> str:
    return load_weights(weights).weights_identity.sha256[:12]


def _run_file(out: Path, task: str, steps: int, label: str, lr: float, seed_index: int) -> Path:
    return out / "runs" / f"{task}-{steps}-{label}-lr{lr:.3g}-seed{seed_index}.json"


def _summary(curve: torch.Tensor) -> dict[str, Any]:
    values = curve.double()
    buckets = torch.tensor_split(values, min(CURVE_POINTS, len(values)))
    return {
        "mean_loss": horizon_mean(values).item(),
        "final_loss": tail_mean(values, FINAL_FRACTION).item(),
        "initial_loss": values[0].item(),
        "diverged": not bool(descended(values, FINAL_FRACTION)),
        "curve": [b.mean().item() for b in buckets],
    }


_TASKS: dict[tuple[str, str | None], Any] = {}


def suite_problem(task: str, seed_index: int, data_dir: str | None) -> Problem:
    """Problem ``seed_index`` of ``task`` as the suite runs it: test split, the same for every optimizer."""
    key = (task, data_dir)
    if key not in _TASKS:
        _TASKS[key] = get_task(task, split="test", data_dir=data_dir)
    return _TASKS[key].problem(problem_seeds(0, seed_index + 1)[-1])


def _run(job: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    problem = suite_problem(job["task"], job["seed_index"], job["data_dir"])
    if job["optimizer"] == "adam":

        def make(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
            return torch.optim.Adam(params, lr=job["lr"])
    else:
        network = load_weights(job["weights"])

        def make(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
            return LearnedOptimizer(params, weights=network, lr=job["lr"] * network.nominal_lr)

    started = time.perf_counter()
    curve = run_optimizer(problem, make, job["steps"])
    seconds = time.perf_counter() - started
    steps_run = int(torch.isfinite(curve).sum()) + int(diverged(curve))  # a diverged run stops at its first inf/NaN
    result = {key: job[key] for key in ("task", "steps", "label", "optimizer", "lr", "seed_index")}
    result.update(_summary(curve), step_ms=1000 * seconds / steps_run)
    atomic_write_text(Path(job["file"]), json.dumps(result))
    return result


def _jobs(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    learned = [(f"{w}@{_digest(w)}", w) for w in args.weights]
    jobs = []
    for task in args.tasks:
        steps = max(1, round(SUITE[task] * args.steps_scale))
        specs = [("adam", "adam", lr, None) for lr in HALF_DECADES]
        specs += [(label, "learned", 1.0, w) for label, w in learned]
        for label, optimizer, lr, weights in specs:
            for seed_index in range(args.seeds):
                file = _run_file(out, task, steps, label.replace("/", "_"), lr, seed_index)
                jobs.append(
                    dict(
                        task=task,
                        steps=steps,
                        label=label,
                        optimizer=optimizer,
                        lr=lr,
                        weights=weights,
                        seed_index=seed_index,
                        data_dir=args.data_dir,
                        file=str(file),
                    )
                )
    return jobs


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if all(math.isfinite(v) for v in values) else math.inf


def aggregate(runs: list[dict[str, Any]], weights_labels: Sequence[str]) -> dict[str, Any]:
    """Per task: each configuration's metric, final loss and step time over the seeds; tuned Adam; the verdicts."""
    tasks: dict[str, Any] = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        rows = [r for r in runs if r["task"] == task]
        configs: dict[str, dict[str, Any]] = {}
        for r in rows:
            name = f"adam@{r['lr']:.3g}" if r["optimizer"] == "adam" else r["label"]
            configs.setdefault(name, {"lr": r["lr"], "runs": []})["runs"].append(r)
        for config in configs.values():
            group = config.pop("runs")
            config.update(
                mean_loss=_mean([r["mean_loss"] for r in group]),
                final_loss=_mean([r["final_loss"] for r in group]),
                diverged=any(r["diverged"] for r in group),
                step_ms=statistics.median(r["step_ms"] for r in group),
                seeds=len(group),
                curve=[statistics.fmean(points) for points in zip(*(r["curve"] for r in group))],
            )
        adam_lrs = {c["lr"]: c["mean_loss"] for name, c in configs.items() if name.startswith("adam@")}
        tuned_lr = best_lr(adam_lrs)
        if tuned_lr is None:  # every lr diverged: show the smallest, flagged as diverged
            tuned_lr = min(adam_lrs)
        tasks[task] = {
            "steps": rows[0]["steps"],
            "configs": configs,
            "tuned_adam": f"adam@{tuned_lr:.3g}",
            "adam_1e-3": f"adam@{ADAM_DEFAULT_LR:.3g}",
        }
    verdicts = {}
    for label in weights_labels:
        per_task = {}
        for task, t in tasks.items():
            if label not in t["configs"]:
                continue
            c, tuned, default = t["configs"][label], t["configs"][t["tuned_adam"]], t["configs"][t["adam_1e-3"]]
            per_task[task] = {
                "beats_tuned_adam": not c["diverged"] and c["mean_loss"] < tuned["mean_loss"],
                "beats_adam_1e-3": not c["diverged"] and c["mean_loss"] < default["mean_loss"],
                "final_beats_tuned_adam": not c["diverged"] and c["final_loss"] < tuned["final_loss"],
                "diverged": c["diverged"],
            }
        n = len(per_task)
        verdicts[label] = {
            "tasks": per_task,
            "beats_tuned_adam": sum(v["beats_tuned_adam"] for v in per_task.values()) / n if n else None,
            "beats_adam_1e-3": sum(v["beats_adam_1e-3"] for v in per_task.values()) / n if n else None,
            "final_beats_tuned_adam": sum(v["final_beats_tuned_adam"] for v in per_task.values()) / n if n else None,
            "diverged_tasks": [task for task, v in per_task.items() if v["diverged"]],
        }
    return {"tasks": tasks, "verdicts": verdicts}


def markdown(summary: dict[str, Any], weights_labels: Sequence[str]) -> str:
    lines = [
        "| task | steps | optimizer | mean loss | final loss | step ms |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for task, t in summary["tasks"].items():
        shown = [(f"tuned Adam (lr {t['configs'][t['tuned_adam']]['lr']:.2g})", t["tuned_adam"])]
        shown.append(("Adam 1e-3", t["adam_1e-3"]))
        shown += [(label, label) for label in weights_labels if label in t["configs"]]
        for title, name in shown:
            c = t["configs"][name]
            flag = " (diverged)" if c["diverged"] else ""
            lines.append(
                f"| {task} | {t['steps']} | {title}{flag} | {c['mean_loss']:.4g} | {c['final_loss']:.4g} | "
                f"{c['step_ms']:.2f} |"
            )
    long_tasks = [(task, t) for task, t in summary["tasks"].items() if t["steps"] >= 10000]
    for task, t in long_tasks:
        lines += ["", f"{task}, mean loss per tenth of the {t['steps']} steps (does it keep lowering the loss?):", ""]
        lines += ["| optimizer | " + " | ".join(str(k + 1) for k in range(10)) + " | keeps lowering |"]
        lines += ["| --- |" + " ---: |" * 10 + " --- |"]
        for title, name in [("tuned Adam", t["tuned_adam"]), ("Adam 1e-3", t["adam_1e-3"])] + [
            (label, label) for label in weights_labels if label in t["configs"]
        ]:
            per_tenth = [statistics.fmean(part) for part in tenths(t["configs"][name]["curve"])]
            lowering = all(b < a for a, b in zip(per_tenth, per_tenth[1:]))
            lines.append(
                f"| {title} | " + " | ".join(f"{v:.3g}" for v in per_tenth) + f" | {'yes' if lowering else 'no'} |"
            )
    lines += ["", "| weights | beats tuned Adam | beats Adam 1e-3 | final loss beats tuned Adam | diverged on |"]
    lines += ["| --- | ---: | ---: | ---: | --- |"]
    for label, v in summary["verdicts"].items():
        lines.append(
            f"| {label} | {v['beats_tuned_adam']:.0%} | {v['beats_adam_1e-3']:.0%} | "
            f"{v['final_beats_tuned_adam']:.0%} | {', '.join(v['diverged_tasks']) or 'none'} |"
        )
    return "\n".join(lines) + "\n"


def tenths(curve: Sequence[float]) -> list[Sequence[float]]:
    """``curve`` cut into ten consecutive parts of (nearly) equal length."""
    size = len(curve) / 10
    return [curve[round(k * size) : round((k + 1) * size)] for k in range(10)]


def plot(summary: dict[str, Any], weights_labels: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary["tasks"].items())
    columns = 4
    rows = math.ceil(len(tasks) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for axis, (task, t) in zip(axes.flat, tasks):
        shown = [("tuned Adam", t["tuned_adam"]), ("Adam 1e-3", t["adam_1e-3"])]
        shown += [(label, label) for label in weights_labels if label in t["configs"]]
        for title, name in shown:
            curve = t["configs"][name]["curve"]
            steps = [(i + 0.5) * t["steps"] / len(curve) for i in range(len(curve))]
            axis.plot(steps, curve, label=title.split("@")[0])
        axis.set_title(f"{task} ({t['steps']} steps)")
        axis.set_yscale("log")
        axis.set_xlabel("step")
    for axis in list(axes.flat)[len(tasks) :]:
        axis.axis("off")
    axes.flat[0].set_ylabel("training loss")
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="results folder (runs are kept there and reused)")
    parser.add_argument("--weights", nargs="*", default=["default", "l2l-paper-mnist"], help="none: the Adam runs only")
    parser.add_argument("--tasks", nargs="+", default=list(SUITE), choices=list(SUITE))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes (one thread each)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every horizon (for a quick look)")
    parser.add_argument("--data-dir", default=os.environ.get("LEARNED_TORCH_OPTIM_DATA"))
    args = parser.parse_args()

    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    jobs = _jobs(args, out)
    done = [json.loads(Path(j["file"]).read_text()) for j in jobs if Path(j["file"]).exists()]
    todo = [j for j in jobs if not Path(j["file"]).exists()]
    todo.sort(key=lambda j: -j["steps"])  # the long runs first, so the parallel tail is short
    print(f"{len(jobs)} runs, {len(done)} already done, {len(todo)} to run with {args.jobs} process(es)", flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_run, job) for job in todo]
        for k, future in enumerate(as_completed(futures), start=1):
            r = future.result()
            done.append(r)
            print(
                f"[{k}/{len(todo)} {time.perf_counter() - started:.0f}s] {r['task']} {r['label']} lr={r['lr']:.3g} "
                f"seed={r['seed_index']}: mean {r['mean_loss']:.4g} final {r['final_loss']:.4g}",
                flush=True,
            )
    labels = list(dict.fromkeys(j["label"] for j in jobs if j["optimizer"] == "learned"))
    summary = aggregate(done, labels)
    summary["settings"] = {"seeds": args.seeds, "steps_scale": args.steps_scale, "weights": labels}
    atomic_write_text(out / "results.json", json.dumps(summary, indent=1))
    atomic_write_text(out / "results.md", markdown(summary, labels))
    plot(summary, labels, out / "curves.png")
    print(markdown(summary, labels))


if __name__ == "__main__":
    main()
