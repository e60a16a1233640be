"""The README's main job: train one model with LearnedOptimizer beside Adam and show the result.

    python examples/quickstart.py [--data-dir DIR] [--steps 300] [--weights default] [--out quickstart.png]

It trains the paper's MNIST MLP (one hidden layer of 20 sigmoid units, minibatches of 128) from the same
initialisation, on the same minibatches, with ``LearnedOptimizer`` (the packaged default weights, untuned, lr=1.0)
and with ``torch.optim.Adam`` at its default lr=1e-3 and at the best learning rate of a half-decade grid for this
task (10^-1.5).  It prints a table (training loss, test loss and
accuracy, time per step) and saves a plot of the loss curves.  MNIST is read from DIR/mnist (DIR: --data-dir,
$LEARNED_TORCH_OPTIM_DATA, or ../shared/data when present); with no MNIST files and no network, it falls back to a
synthetic 10-class problem of the same shape, and says so.  Runs offline, on a CPU, in well under a minute.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch import nn

from learned_torch_optim import LearnedOptimizer


def load_data(data_dir: str | None) -> tuple[str, tuple[torch.Tensor, ...]]:
    from learned_torch_optim.meta.data import DataNotFoundError, load_image_classification

    candidates = [data_dir, os.environ.get("LEARNED_TORCH_OPTIM_DATA"), str(Path(__file__).parents[2] / "shared/data")]
    for candidate in [c for c in candidates if c]:
        if (Path(candidate) / "mnist").is_dir():
            train_x, train_y = load_image_classification("mnist", "train", candidate)
            test_x, test_y = load_image_classification("mnist", "test", candidate)
            return f"MNIST from {candidate}", (train_x.flatten(1), train_y, test_x.flatten(1), test_y)
    try:
        train_x, train_y = load_image_classification("mnist", "train", data_dir)
        test_x, test_y = load_image_classification("mnist", "test", data_dir)
        return "MNIST (download cache)", (train_x.flatten(1), train_y, test_x.flatten(1), test_y)
    except DataNotFoundError:
        generator = torch.Generator().manual_seed(0)
        centers = torch.rand(10, 784, generator=generator)
        labels = torch.randint(10, (12000,), generator=generator)
        images = (centers[labels] + 0.3 * torch.randn(12000, 784, generator=generator)).clamp(0, 1)
        split = (images[:10000], labels[:10000], images[10000:], labels[10000:])
        return "synthetic 10-class data (no MNIST files found)", split


def make_model(seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 20), nn.Sigmoid(), nn.Linear(20, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.01 * torch.randn(p.shape, generator=generator))
    return model


def train(model, optimizer, data, steps: int, seed: int) -> dict:
    train_x, train_y, test_x, test_y = data
    generator = torch.Generator().manual_seed(seed)
    losses, started = [], time.perf_counter()
    for _ in range(steps):
        index = torch.randint(len(train_x), (128,), generator=generator)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(train_x[index]), train_y[index])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - started
    with torch.no_grad():
        logits = model(test_x)
        test_loss = nn.functional.cross_entropy(logits, test_y).item()
        accuracy = (logits.argmax(1) == test_y).float().mean().item()
    return {"losses": losses, "test_loss": test_loss, "accuracy": accuracy, "ms_per_step": 1000 * seconds / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--weights", default="default", help="LearnedOptimizer weights (name, folder or repo id)")
    parser.add_argument(
        "--adam-lr",
        type=float,
        nargs="+",
        default=[1e-3, 10**-1.5],
        help="Adam learning rates: the default 1e-3, and 10^-1.5, the best of the half-decade grid for this "
        "MNIST MLP (docs/results.md)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="quickstart.png", help="where to save the plot")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    source, data = load_data(args.data_dir)
    print(f"data: {source}; model: MLP 784-20(sigmoid)-10; {args.steps} steps of minibatch 128\n")

    runs = {}
    learned_model = make_model(args.seed)
    runs[f"LearnedOptimizer ({args.weights}, lr=1)"] = train(
        learned_model, LearnedOptimizer(learned_model.parameters(), weights=args.weights), data, args.steps, args.seed
    )
    for lr in args.adam_lr:
        adam_model = make_model(args.seed)
        runs[f"Adam (lr={lr:.2g})"] = train(
            adam_model, torch.optim.Adam(adam_model.parameters(), lr=lr), data, args.steps, args.seed
        )

    tail = max(1, args.steps // 10)
    header = f"{'optimizer':<40} {'train loss (last 10%)':>22} {'test loss':>10} {'test acc':>9} {'ms/step':>8}"
    print(header)
    print("-" * len(header))
    for name, run in runs.items():
        final = sum(run["losses"][-tail:]) / tail
        print(f"{name:<40} {final:>22.4f} {run['test_loss']:>10.4f} {run['accuracy']:>9.2%} {run['ms_per_step']:>8.2f}")

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
    axes.set_title(f"{source.split(' (')[0].split(' from ')[0]} MLP: LearnedOptimizer vs Adam")
    axes.legend()
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"\nplot saved to {args.out}")


if __name__ == "__main__":
    main()
