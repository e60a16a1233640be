"""Show the images of a Neural Art evaluation (paper section 3.4, figure 8): for a few of its held-out problems, the
content image, the style image, and the image each optimizer reaches after ``--steps`` steps.

    python tools/neural_art_figure.py --results DIR [--weights WEIGHTS] [--images 3] [--data-dir DATA] --out FILE.png

``DIR`` is the ``--out`` folder of a ``learned-torch-optim evaluate`` run on a ``neural-art-*`` task: its
``results.json`` gives the task, split, steps and problem seeds, and the tuned learning rate of every baseline.  The
figure reruns the learned optimizer (``--weights``, as evaluated at lr 1; default: the weights recorded in
``results.json``) and the best tuned baseline on the first ``--images`` of those problems, from the same white-noise
start, and shows their images beside the loss each reached (clamped to [0, 1], as ``art.save_png`` shows them).
Needs matplotlib and scikit-learn.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from learned_torch_optim import LearnedOptimizer, load_weights
from learned_torch_optim.files import atomic_write
from learned_torch_optim.meta.evaluation import BASELINES, LEARNED
from learned_torch_optim.meta.evaluation.protocol import run_optimizer
from learned_torch_optim.meta.tasks import get_task


def final_image(problem, make_optimizer, steps: int) -> tuple[torch.Tensor, float]:
    """The image after ``steps`` steps of ``make_optimizer`` on ``problem``, and its loss there."""
    kept: list[torch.nn.Parameter] = []

    def make(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        kept.extend(params)
        return make_optimizer(params)

    run_optimizer(problem, make, steps)
    with torch.no_grad():
        loss = float(problem.loss(kept[0], None))
    return problem.image(kept[0]), loss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", required=True, help="folder of an evaluate run on a neural-art-* task")
    parser.add_argument("--weights", default=None, help="learned weights (default: those in results.json)")
    parser.add_argument("--images", type=int, default=3, help="how many of the evaluated problems to show")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", required=True, help="PNG file to write")
    args = parser.parse_args(argv)

    results = json.loads((Path(args.results) / "results.json").read_text(encoding="utf-8"))
    if not str(results["task"]).startswith("neural-art"):
        raise SystemExit(f"--results {args.results}: task {results['task']!r} is not a Neural Art task")
    weights = args.weights or results["weights"]
    if weights is None:
        raise SystemExit(f"--results {args.results} has no learned optimizer; pass --weights")
    network = load_weights(weights)
    baseline = results["best_baseline"]
    baseline_lr = results["optimizers"][baseline]["best_lr"]
    task = get_task(results["task"], split=results["split"], data_dir=args.data_dir)
    steps = results["steps"]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["content", "style", "start", f"{LEARNED} (lr 1)", f"{baseline} (lr {baseline_lr:.3g}, tuned)"]
    seeds = results["problem_seeds"][: args.images]
    figure, axes = plt.subplots(len(seeds), len(columns), figsize=(2.2 * len(columns), 2.4 * len(seeds)), squeeze=False)
    for row, seed in enumerate(seeds):
        problem = task.problem(seed)
        learned, learned_loss = final_image(problem, lambda p: LearnedOptimizer(p, weights=network), steps)
        tuned, tuned_loss = final_image(
            task.problem(seed), lambda p: BASELINES[baseline].factory(p, baseline_lr), steps
        )
        panels = [
            (problem.content, ""),
            (task.style, ""),
            (problem.image(problem.init_params()), ""),
            (learned, f"f = {learned_loss:.3f}"),
            (tuned, f"f = {tuned_loss:.3f}"),
        ]
        for column, (image, label) in enumerate(panels):
            axis = axes[row][column]
            axis.imshow(image.detach().clamp(0, 1).permute(1, 2, 0).numpy())
            axis.set_xticks([]), axis.set_yticks([])
            if row == 0:
                axis.set_title(columns[column], fontsize=9)
            axis.set_xlabel(label, fontsize=9)
    figure.suptitle(f"{results['task']} ({results['split']} split), {steps} steps", fontsize=10)
    figure.tight_layout()
    atomic_write(Path(args.out), lambda handle: figure.savefig(handle, format="png", dpi=100), mode="wb")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
