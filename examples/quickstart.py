"""The README's main job: train one model with LearnedOptimizer beside Adam, with Adam's lr tuned on the same data.

    python examples/quickstart.py [--data-dir DIR] [--steps 300] [--weights default] [--out quickstart.png]

Data: the MNIST subset shipped with the package (the first 5,000 training and 1,000 test images of MNIST; its
NOTICE gives the source and the license, CC BY-SA 3.0), or with --data-dir DIR the full MNIST from
DIR/mnist/*-ubyte.gz.  The last 1,000 training images are held out: no optimizer trains on them; they choose
Adam's lr.  The model is the paper's MNIST MLP (one hidden layer of 20 sigmoid units), trained with minibatches
of 128 from the same initialisation on the same minibatches by

- LearnedOptimizer with the packaged default weights at their default lr (the weights' ``nominal_lr``), untuned;
- Adam at each lr of the half-decade grid 1e-4, 3.2e-4, ..., 1e-1: its default lr=1e-3, and the tuned Adam, the
  lr whose loss on the held-out images after the last step is lowest.

It prints the held-out loss of each lr of the grid, then a table: the loss on all the training images after the
last step, the held-out loss, the test accuracy and the wall-clock of the run (in all and per step); and saves a
plot of the minibatch losses.  Runs offline, on a CPU: 20-80 s on 2 cores, depending on what else runs there.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from learned_torch_optim import LearnedOptimizer
from learned_torch_optim.meta.data import load_image_classification, load_mnist_subset

ADAM_LR_GRID = [10 ** (k / 2) for k in range(-8, -1)]
"""Adam's learning rates tried: half-decades from 1e-4 to 1e-1."""
ADAM_DEFAULT_LR = 1e-3
"""torch.optim.Adam's default lr, one of the grid's."""
HELD_OUT = 1000
"""How many of the last training images are held out to choose Adam's lr."""
BATCH_SIZE = 128


def load_data(data_dir: str | None) -> tuple[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """A description of the data and its ``train``, ``held-out`` and ``test`` splits as flat images and labels."""
    if data_dir is None:
        source = "the MNIST subset shipped with the package"
        (train_x, train_y), (test_x, test_y) = load_mnist_subset("train"), load_mnist_subset("test")
    else:
        source = f"MNIST from {data_dir}"
        train_x, train_y = load_image_classification("mnist", "train", data_dir)
        test_x, test_y = load_image_classification("mnist", "test", data_dir)
    train_x, test_x = train_x.flatten(1), test_x.flatten(1)
    splits = {
        "train": (train_x[:-HELD_OUT], train_y[:-HELD_OUT]),
        "held-out": (train_x[-HELD_OUT:], train_y[-HELD_OUT:]),
        "test": (test_x, test_y),
    }
    return source, splits


def make_model(seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 20), nn.Sigmoid(), nn.Linear(20, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.01 * torch.randn(p.shape, generator=generator))
    return model


def train(model: nn.Module, optimizer: torch.optim.Optimizer, splits: dict, steps: int, seed: int) -> dict:
    """Train on minibatches of the ``train`` split; the minibatch losses, the wall-clock, and the loss (and accuracy)
    of the trained model on each split."""
    train_x, train_y = splits["train"]
    generator = torch.Generator().manual_seed(seed)
    losses, started = [], time.perf_counter()
    for _ in range(steps):
        index = torch.randint(len(train_x), (BATCH_SIZE,), generator=generator)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(train_x[index]), train_y[index])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    run = {"losses": losses, "seconds": time.perf_counter() - started}
    with torch.no_grad():
        for split, (x, y) in splits.items():
            logits = model(x)
            run[f"{split} loss"] = nn.functional.cross_entropy(logits, y).item()
            run[f"{split} accuracy"] = (logits.argmax(1) == y).float().mean().item()
    return run


def finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="train on the full MNIST from DIR/mnist/*-ubyte.gz")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--weights", default="default", help="LearnedOptimizer weights (name, folder or repo id)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="quickstart.png", help="where to save the plot")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    source, splits = load_data(args.data_dir)
    sizes = ", ".join(f"{len(y):,} {split}" for split, (_, y) in splits.items())
    print(f"data: {source} ({sizes} images)")
    print(f"model: MLP 784-20(sigmoid)-10; {args.steps} steps of minibatch {BATCH_SIZE}\n")

    model = make_model(args.seed)
    learned_optimizer = LearnedOptimizer(model.parameters(), weights=args.weights)
    learned_lr = learned_optimizer.param_groups[0]["lr"]
    learned = train(model, learned_optimizer, splits, args.steps, args.seed)
    adam = {}
    for lr in ADAM_LR_GRID:
        model = make_model(args.seed)
        adam[lr] = train(model, torch.optim.Adam(model.parameters(), lr=lr), splits, args.steps, args.seed)
    best_lr = min(ADAM_LR_GRID, key=lambda lr: finite_or_inf(adam[lr]["held-out loss"]))

    print("Adam's lr, tuned on the held-out images (their loss after the last step):")
    print("  " + "  ".join(f"{lr:>8.2g}" for lr in ADAM_LR_GRID))
    print("  " + "  ".join(f"{adam[lr]['held-out loss']:>8.4f}" for lr in ADAM_LR_GRID))
    tuning_seconds = sum(run["seconds"] for run in adam.values())
    print(f"  {len(ADAM_LR_GRID)} runs, {tuning_seconds:.1f} s in all; best lr {best_lr:.2g}")
    if best_lr in (ADAM_LR_GRID[0], ADAM_LR_GRID[-1]):
        print("  (the best lr is at an end of the grid: a wider grid may find a better one)")

    runs = {
        f"LearnedOptimizer ({args.weights}), lr {learned_lr:.2g}": learned,
        f"Adam, default lr {ADAM_DEFAULT_LR:.2g}": adam[ADAM_DEFAULT_LR],
        f"Adam, tuned lr {best_lr:.2g}": adam[best_lr],
    }
    columns = f"{'train loss':>10} {'held-out loss':>13} {'test acc':>9} {'wall-clock':>10} {'ms/step':>8}"
    header = f"{'optimizer':<36} {columns}"
    print(f"\n{header}\n{'-' * len(header)}")
    for name, run in runs.items():
        print(
            f"{name:<36} {run['train loss']:>10.4f} {run['held-out loss']:>13.4f} {run['test accuracy']:>9.2%} "
            f"{run['seconds']:>9.2f}s {1000 * run['seconds'] / args.steps:>8.2f}"
        )

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\nmatplotlib is not installed (pip install 'learned-torch-optim[plot]'): no plot")
        return
    figure, axes = plt.subplots(figsize=(7, 4))
    for name, run in runs.items():
        axes.plot(run["losses"], label=name, linewidth=1)
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("training loss (minibatch)")
    axes.set_title("MNIST MLP: LearnedOptimizer vs Adam")
    axes.legend()
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"\nplot saved to {args.out}")


if __name__ == "__main__":
    main()
