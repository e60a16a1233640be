"""The generalist validation suite: held-out tasks scored by the loss at the end of training, learned weights against
per-task-tuned Adam and AdamW, at constant lr and under warm-up + cosine.

    python benchmarks/generalist_suite.py --out DIR [--weights default l2l-paper-mnist ...] [--seeds 3]
                                          [--protocols constant warmup-cosine] [--jobs N] [--data-dir DIR]
                                          [--tasks NAME ...] [--steps-scale F] [--no-long]

Every task of :data:`SUITE` is a built-in task that no shipped weights were meta-trained on (the recipes in
``docs/meta-training.md`` list their mixtures), run on its test split.  On each task, ``--seeds`` problems
(``problem_seeds(0, seeds)``: the same initial parameters and minibatches for every optimizer) are optimised for
the task's horizon under each protocol (:mod:`learned_torch_optim.meta.schedules`: ``constant``, or a 5% linear
warm-up then cosine decay to 0, applied to every optimizer alike) by

- Adam at every learning rate of the task's grid (half-decades, ``SuiteTask.lr_grid``): "tuned Adam" is the best
  of them by the metric, per task and protocol (the smallest lr on ties), "Adam 1e-3" the grid point 1e-3;
- under warm-up + cosine also AdamW, at tuned Adam's lr and its two half-decade neighbours, with weight decay
  ``WEIGHT_DECAYS``: "tuned AdamW" is the best of these six;
- ``LearnedOptimizer(weights=W)`` at its weights' ``nominal_lr`` (untuned) for each ``--weights W``.

Runs and scores follow the evaluation protocol of ``learned_torch_optim.meta.evaluation.protocol``, the one of
``learned-torch-optim evaluate``.  Metric: the final loss, the mean training loss over the last
``FINAL_FRACTION`` (10%) of the steps (``tail_mean``), averaged over the problems; the mean over the whole horizon is
shown too.  A run has diverged if a loss is not finite (the run stops there) or its final loss is not below its
initial loss.  ``LONG_TASKS`` are also run by each learned optimizer for 10 times their horizon at constant lr (is it
still stable?).

Each run is stored as one JSON file in ``DIR/runs`` when it finishes, so an interrupted suite resumes where it
stopped (``--jobs`` runs in parallel processes of one thread each); AdamW's runs start once tuned Adam under the
cosine protocol is known.  The summary goes to ``DIR/results.json``, ``DIR/results.md`` and ``DIR/curves.png``.
``step ms`` is the wall time per step of a run (optimizee forward and backward included), comparable only between
runs of the same invocation; ``state B/param`` is the optimizer's state in bytes per parameter after the run.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from learned_torch_optim import LearnedOptimizer, load_weights
from learned_torch_optim.meta.evaluation import (
    FINAL_FRACTION,
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
from learned_torch_optim.meta.schedules import SCHEDULES
from learned_torch_optim.meta.tasks import Problem, get_task


@dataclass(frozen=True)
class SuiteTask:
    steps: int
    """The horizon, optimizer steps."""
    lr_grid: tuple[float, ...] = HALF_DECADES
    """Adam's learning rates (half-decades)."""


SUITE: dict[str, SuiteTask] = {
    "mnist-mlp-relu": SuiteTask(2000),
    "cifar-conv": SuiteTask(2000),
    "char-attention": SuiteTask(2000),
    "char-transformer": SuiteTask(1000, HALF_DECADES[:5]),
    "logistic-regression": SuiteTask(2000),
    "mlp-gelu": SuiteTask(3000),
    "fashion-mnist-mlp": SuiteTask(3000),
    "mnist1d-mlp": SuiteTask(3000),
    "mnist1d-conv": SuiteTask(3000),
    "mnist-autoencoder": SuiteTask(2000),
    "teacher-student": SuiteTask(3000),
    "rosenbrock": SuiteTask(3000),
    "mnist-mlp": SuiteTask(10000),
}
"""Held-out task -> horizon and Adam's lr grid.  A ReLU MNIST MLP (the paper's failure case), conv nets on images
and 1-D signals, two attention language models (one of 1.08M parameters, whose grid stops at 1e-2 to bound its
cost on a CPU), a convex problem, an autoencoder, a regression, Rosenbrock's valley, and horizons of 1,000 to
10,000 steps."""

LONG_TASKS = ("logistic-regression", "rosenbrock")
"""Tasks also run by the learned optimizers for ``LONG_FACTOR`` times their horizon, at constant lr."""
LONG_FACTOR = 10
PROTOCOLS: tuple[str, ...] = SCHEDULES
WEIGHT_DECAYS = (1e-2, 1e-1)
ADAM_DEFAULT_LR = 1e-3
CURVE_POINTS = 100


def _digest(weights: str) -> str:
    return load_weights(weights).weights_identity.sha256[:12]


_TASKS: dict[tuple[str, str | None], Any] = {}


def suite_problem(task: str, seed_index: int, data_dir: str | None) -> Problem:
    """Problem ``seed_index`` of ``task`` as the suite runs it: test split, the same for every optimizer."""
    key = (task, data_dir)
    if key not in _TASKS:
        _TASKS[key] = get_task(task, split="test", data_dir=data_dir)
    return _TASKS[key].problem(problem_seeds(0, seed_index + 1)[-1])


def _summary(curve: torch.Tensor) -> dict[str, Any]:
    values = curve.double()
    buckets = torch.tensor_split(values, min(CURVE_POINTS, len(values)))
    return {
        "mean_loss": horizon_mean(values).item(),
        "final_loss": tail_mean(values, FINAL_FRACTION).item(),
        "initial_loss": values[0].item(),
        "diverged": not bool(descended(values, FINAL_FRACTION)),
        "curve": [float(f"{b.mean().item():.5g}") for b in buckets],
    }


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        value.nbytes
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def _run(job: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    problem = suite_problem(job["task"], job["seed_index"], job["data_dir"])
    made: list[torch.optim.Optimizer] = []

    def make(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        if job["optimizer"] == "adam":
            optimizer = torch.optim.Adam(params, lr=job["lr"])
        elif job["optimizer"] == "adamw":
            optimizer = torch.optim.AdamW(params, lr=job["lr"], weight_decay=job["weight_decay"])
        else:
            optimizer = LearnedOptimizer(params, weights=load_weights(job["weights"]))
        made.append(optimizer)
        return optimizer

    started = time.perf_counter()
    curve = run_optimizer(problem, make, job["steps"], schedule=job["protocol"])
    seconds = time.perf_counter() - started
    steps_run = int(torch.isfinite(curve).sum()) + int(diverged(curve))  # a diverged run stops at its first inf/NaN
    result = {key: job[key] for key in ("task", "steps", "protocol", "label", "optimizer", "lr", "seed_index")}
    result["weight_decay"] = job.get("weight_decay", 0.0)
    result.update(
        _summary(curve),
        step_ms=1000 * seconds / steps_run,
        state_bytes_per_param=_state_bytes(made[0]) / problem.init_params().numel(),
    )
    atomic_write_text(Path(job["file"]), json.dumps(result))
    return result


def _job(out: Path, args: argparse.Namespace, task: str, steps: int, protocol: str, label: str, **spec: Any) -> list:
    jobs = []
    for seed_index in range(args.seeds):
        name = f"{task}-{steps}-{protocol}-{label.replace('/', '_')}-lr{spec.get('lr') or 0:.3g}"
        if spec.get("weight_decay"):
            name += f"-wd{spec['weight_decay']:.3g}"
        jobs.append(
            dict(
                task=task,
                steps=steps,
                protocol=protocol,
                label=label,
                seed_index=seed_index,
                data_dir=args.data_dir,
                file=str(out / "runs" / f"{name}-seed{seed_index}.json"),
                **{"lr": None, "weights": None, **spec},
            )
        )
    return jobs


def _steps(task: str, args: argparse.Namespace) -> int:
    return max(1, round(SUITE[task].steps * args.steps_scale))


def first_jobs(args: argparse.Namespace, out: Path, learned: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Adam on each task's grid and the learned optimizers, under every protocol; the long runs."""
    jobs = []
    for task in args.tasks:
        steps = _steps(task, args)
        for protocol in args.protocols:
            for lr in SUITE[task].lr_grid:
                jobs += _job(out, args, task, steps, protocol, "adam", optimizer="adam", lr=lr)
            for label, weights in learned:
                jobs += _job(out, args, task, steps, protocol, label, optimizer="learned", weights=weights)
        if task in LONG_TASKS and args.long:
            for label, weights in learned:
                long_steps = steps * LONG_FACTOR
                jobs += _job(out, args, task, long_steps, "constant", label, optimizer="learned", weights=weights)
    return jobs


def adamw_jobs(args: argparse.Namespace, out: Path, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """AdamW under warm-up + cosine around tuned Adam's lr there: the lr and its half-decade neighbours, each
    weight decay of ``WEIGHT_DECAYS``."""
    if "warmup-cosine" not in args.protocols:
        return []
    jobs = []
    for task in args.tasks:
        steps = _steps(task, args)
        adam = [r for r in runs if r["task"] == task and r["steps"] == steps and r["optimizer"] == "adam"]
        tuned = best_lr(_scores([r for r in adam if r["protocol"] == "warmup-cosine"]))
        if tuned is None:
            continue
        for lr in (tuned / math.sqrt(10), tuned, tuned * math.sqrt(10)):
            for weight_decay in WEIGHT_DECAYS:
                spec = dict(optimizer="adamw", lr=lr, weight_decay=weight_decay)
                jobs += _job(out, args, task, steps, "warmup-cosine", "adamw", **spec)
    return jobs


def _scores(runs: list[dict[str, Any]]) -> dict[float, float]:
    """``{lr: final loss averaged over the seeds}`` of one optimizer's runs (``inf`` if any diverged)."""
    by_lr: dict[float, list[float]] = {}
    for r in runs:
        by_lr.setdefault(r["lr"], []).append(math.inf if r["diverged"] else r["final_loss"])
    return {lr: _mean(values) for lr, values in by_lr.items()}


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if all(math.isfinite(v) for v in values) else math.inf


def _config(group: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "lr": group[0]["lr"],
        "weight_decay": group[0]["weight_decay"],
        "mean_loss": _mean([r["mean_loss"] for r in group]),
        "final_loss": _mean([r["final_loss"] for r in group]),
        "diverged": any(r["diverged"] for r in group),
        "step_ms": statistics.median(r["step_ms"] for r in group),
        "state_bytes_per_param": group[0]["state_bytes_per_param"],
        "seeds": len(group),
        "curve": [statistics.fmean(points) for points in zip(*(r["curve"] for r in group))],
    }


def _best(configs: dict[str, dict[str, Any]], prefix: str) -> str | None:
    """The name of the configuration starting with ``prefix`` of lowest final loss among those that did not
    diverge (else of lowest lr)."""
    names = [name for name in configs if name.startswith(prefix)]
    if not names:
        return None
    finite = [n for n in names if not configs[n]["diverged"] and math.isfinite(configs[n]["final_loss"])]
    pool = finite or names
    return min(pool, key=lambda n: (configs[n]["final_loss"] if finite else configs[n]["lr"], configs[n]["lr"]))


def aggregate(runs: list[dict[str, Any]], weights_labels: Sequence[str]) -> dict[str, Any]:
    """Per task and protocol: each configuration over the seeds, tuned Adam (and AdamW), the verdicts; the long
    runs."""
    tables: dict[str, dict[str, Any]] = {}
    long_runs: dict[str, dict[str, Any]] = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        horizon = min(r["steps"] for r in runs if r["task"] == task)
        for protocol in dict.fromkeys(r["protocol"] for r in runs if r["task"] == task):
            rows = [r for r in runs if r["task"] == task and r["protocol"] == protocol and r["steps"] == horizon]
            groups: dict[str, list[dict[str, Any]]] = {}
            for r in rows:
                if r["optimizer"] == "learned":
                    name = r["label"]
                else:
                    name = f"{r['optimizer']}@{r['lr']:.3g}" + (
                        f",wd{r['weight_decay']:.3g}" if r["weight_decay"] else ""
                    )
                groups.setdefault(name, []).append(r)
            configs = {name: _config(group) for name, group in groups.items()}
            tables.setdefault(task, {})[protocol] = {
                "steps": horizon,
                "configs": configs,
                "tuned_adam": _best(configs, "adam@"),
                "tuned_adamw": _best(configs, "adamw@"),
                "adam_1e-3": f"adam@{ADAM_DEFAULT_LR:.3g}" if f"adam@{ADAM_DEFAULT_LR:.3g}" in configs else None,
            }
        for r in runs:
            if r["task"] == task and r["steps"] > horizon:
                long_runs.setdefault(f"{task}:{r['steps']}", {}).setdefault(r["label"], []).append(r)
    verdicts: dict[str, Any] = {}
    for label in weights_labels:
        for protocol in PROTOCOLS:
            per_task = {}
            for task, by_protocol in tables.items():
                t = by_protocol.get(protocol)
                if t is None or label not in t["configs"]:
                    continue
                c = t["configs"][label]

                def beats(name: str | None, c: dict[str, Any] = c, t: dict[str, Any] = t) -> bool | None:
                    if name is None:
                        return None
                    return not c["diverged"] and c["final_loss"] < t["configs"][name]["final_loss"]

                per_task[task] = {
                    "beats_tuned_adam": beats(t["tuned_adam"]),
                    "beats_tuned_adamw": beats(t["tuned_adamw"]),
                    "beats_adam_1e-3": beats(t["adam_1e-3"]),
                    "diverged": c["diverged"],
                }
            if per_task:
                verdicts.setdefault(label, {})[protocol] = _fractions(per_task)
        long = {key: any(r["diverged"] for r in rs[label]) for key, rs in long_runs.items() if label in rs}
        if long:
            verdicts.setdefault(label, {})["long_runs_diverged"] = long
    return {"tasks": tables, "verdicts": verdicts}


def _fractions(per_task: dict[str, dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"tasks": per_task}
    for key in ("beats_tuned_adam", "beats_tuned_adamw", "beats_adam_1e-3"):
        known = [v[key] for v in per_task.values() if v[key] is not None]
        summary[key] = [sum(known), len(known)]
    summary["diverged_tasks"] = [task for task, v in per_task.items() if v["diverged"]]
    return summary


def markdown(summary: dict[str, Any], weights_labels: Sequence[str]) -> str:
    lines = []
    for protocol in PROTOCOLS:
        shown_tasks = [(task, p[protocol]) for task, p in summary["tasks"].items() if protocol in p]
        if not shown_tasks:
            continue
        lines += [f"### {protocol}", ""]
        lines += ["| task | steps | optimizer | final loss | mean loss | step ms | state B/param |"]
        lines += ["| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
        for task, t in shown_tasks:
            shown = []
            if t["tuned_adam"]:
                shown.append((f"tuned Adam (lr {t['configs'][t['tuned_adam']]['lr']:.2g})", t["tuned_adam"]))
            if t["tuned_adamw"]:
                c = t["configs"][t["tuned_adamw"]]
                shown.append((f"tuned AdamW (lr {c['lr']:.2g}, wd {c['weight_decay']:.2g})", t["tuned_adamw"]))
            if t["adam_1e-3"]:
                shown.append(("Adam 1e-3", t["adam_1e-3"]))
            shown += [(label, label) for label in weights_labels if label in t["configs"]]
            for title, name in shown:
                c = t["configs"][name]
                flag = " (diverged)" if c["diverged"] else ""
                lines.append(
                    f"| {task} | {t['steps']} | {title}{flag} | {c['final_loss']:.4g} | {c['mean_loss']:.4g} | "
                    f"{c['step_ms']:.2f} | {c['state_bytes_per_param']:.0f} |"
                )
        lines.append("")
    lines += ["| weights | protocol | beats tuned Adam | beats tuned AdamW | beats Adam 1e-3 | diverged on |"]
    lines += ["| --- | --- | ---: | ---: | ---: | --- |"]
    for label, by_protocol in summary["verdicts"].items():
        for protocol in PROTOCOLS:
            v = by_protocol.get(protocol)
            if v is None:
                continue
            cells = [f"{a}/{n}" if n else "–" for a, n in (v[k] for k in ("beats_tuned_adam", "beats_tuned_adamw"))]
            a, n = v["beats_adam_1e-3"]
            diverged_on = ", ".join(v["diverged_tasks"]) or "none"
            lines.append(f"| {label} | {protocol} | {cells[0]} | {cells[1]} | {a}/{n} | {diverged_on} |")
    for label, by_protocol in summary["verdicts"].items():
        for key, bad in by_protocol.get("long_runs_diverged", {}).items():
            task, steps = key.split(":")
            lines.append(
                f"\n{label} on {task} for {steps} steps (10x), constant lr: {'diverged' if bad else 'stable'}."
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

    panels = [(task, protocol, t) for task, p in summary["tasks"].items() for protocol, t in p.items()]
    columns = 4
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for axis, (task, protocol, t) in zip(axes.flat, panels):
        shown = [("tuned Adam", t["tuned_adam"]), ("tuned AdamW", t["tuned_adamw"]), ("Adam 1e-3", t["adam_1e-3"])]
        shown += [(label, label) for label in weights_labels if label in t["configs"]]
        for title, name in shown:
            if name is None:
                continue
            curve = t["configs"][name]["curve"]
            steps = [(i + 0.5) * t["steps"] / len(curve) for i in range(len(curve))]
            axis.plot(steps, curve, label=title.split("@")[0])
        axis.set_title(f"{task}, {protocol} ({t['steps']} steps)", fontsize=9)
        axis.set_yscale("log")
        axis.set_xlabel("step")
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    axes.flat[0].set_ylabel("training loss")
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _run_all(jobs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """Every job's result: read from its file, or run now (the long ones first)."""
    done = [json.loads(Path(j["file"]).read_text()) for j in jobs if Path(j["file"]).exists()]
    todo = sorted((j for j in jobs if not Path(j["file"]).exists()), key=lambda j: -j["steps"])
    print(f"{len(jobs)} runs, {len(done)} already done, {len(todo)} to run with {workers} process(es)", flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_run, job) for job in todo]
        for k, future in enumerate(as_completed(futures), start=1):
            r = future.result()
            done.append(r)
            print(
                f"[{k}/{len(todo)} {time.perf_counter() - started:.0f}s] {r['task']} {r['protocol']} {r['label']} "
                f"lr={r['lr']} seed={r['seed_index']}: final {r['final_loss']:.4g} mean {r['mean_loss']:.4g}",
                flush=True,
            )
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="results folder (runs are kept there and reused)")
    parser.add_argument("--weights", nargs="*", default=["default", "l2l-paper-mnist"], help="none: the baselines only")
    parser.add_argument("--tasks", nargs="+", default=list(SUITE), choices=list(SUITE))
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes (one thread each)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every horizon (for a quick look)")
    parser.add_argument("--no-long", dest="long", action="store_false", help="skip the runs at 10x the horizon")
    parser.add_argument("--data-dir", default=os.environ.get("LEARNED_TORCH_OPTIM_DATA"))
    args = parser.parse_args()

    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    learned = [(f"{w}@{_digest(w)}", w) for w in args.weights]
    runs = _run_all(first_jobs(args, out, learned), args.jobs)
    runs += _run_all(adamw_jobs(args, out, runs), args.jobs)
    labels = [label for label, _ in learned]
    summary = aggregate(runs, labels)
    summary["settings"] = {"seeds": args.seeds, "steps_scale": args.steps_scale, "weights": labels}
    atomic_write_text(out / "results.json", json.dumps(summary, indent=1))
    atomic_write_text(out / "results.md", markdown(summary, labels))
    plot(summary, labels, out / "curves.png")
    print(markdown(summary, labels))


if __name__ == "__main__":
    main()
