"""Train the feature network of the Neural Art tasks (paper section 3.4) as a CIFAR-10 classifier.

    python tools/train_art_features.py --data-dir DIR [--epochs 12] [--seed 0] [--threads 1]
        [--out learned_torch_optim/meta/bundled/art-features]

The paper takes VGG-19's features; here :class:`ArtFeatureNet` (three blocks of two 3x3 convolutions, average
pooling; ``learned_torch_optim/meta/art.py``) is trained with a classifier head (global average pooling and one
linear layer, dropped afterwards) on CIFAR-10: all 50,000 training images of ``DIR/cifar10-jpeg/cifar10_jpeg.zip``
(``--dataset cifar10-subset`` for the 4,000 exact images), with random horizontal flips and shifts of up to 4
pixels, Adam, cross-entropy, everything seeded by ``--seed``.  Then it reports the accuracy on the test split and
writes into ``--out``: ``model.safetensors`` (the convolutions only), ``config.json`` (the network, with the command,
seed, data and test accuracy under ``training``) and ``SHA256SUMS`` (both files; the loader checks them).  With
``--check-terms`` it also prints the three unweighted terms of the Neural Art loss at the start of a few
``neural-art-64`` problems (needs scikit-learn), to check that ``NEURAL_ART_WEIGHTS`` keeps them of similar size.
``--limit N`` trains on the first N images only, to test this script.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save
from torch import Tensor, nn

from learned_torch_optim.meta.art import ART_FEATURES_DIR, TRAINING_STYLE, ArtFeatureNet
from learned_torch_optim.meta.data import load_cifar10_jpeg, load_cifar10_subset
from learned_torch_optim.meta.files import atomic_write, atomic_write_text

LOADERS = {"cifar10-jpeg": load_cifar10_jpeg, "cifar10-subset": load_cifar10_subset}


class Classifier(nn.Module):
    """The feature network, global average pooling of its last features, one linear layer to the 10 classes."""

    def __init__(self, features: ArtFeatureNet) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Linear(features.out_channels, 10)
        self.last = features.layer_names()[-1]

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images, (self.last,))[self.last].mean(dim=(2, 3)))


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random horizontal flips and shifts of up to 4 pixels (zero padding), drawn from ``generator``."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    padded = nn.functional.pad(images, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (2,), generator=generator).tolist()
    return padded[..., dy : dy + images.shape[-2], dx : dx + images.shape[-1]]


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
            for i in range(0, len(images), batch_size)
        )
    model.train()
    return correct / len(images)


def check_terms(features: ArtFeatureNet, data_dir: str | None, problems: int = 8) -> dict[str, float]:
    """The mean unweighted terms of the Neural Art loss at the start of ``neural-art-64`` problems 0..n-1 (their
    content images from ``data_dir``'s cifar10-subset)."""
    from learned_torch_optim.meta.tasks import NeuralArtTask

    task = NeuralArtTask(64, TRAINING_STYLE, features=features, data_dir=data_dir)
    totals: dict[str, float] = {}
    with torch.no_grad():
        for seed in range(problems):
            problem = task.problem(seed)
            for key, value in problem.terms(problem.init_params()).items():
                totals[key] = totals.get(key, 0.0) + float(value) / problems
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="the folder holding cifar10-jpeg/ (or cifar10-subset/)")
    parser.add_argument("--dataset", choices=sorted(LOADERS), default="cifar10-jpeg")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it slightly)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only (to test)")
    parser.add_argument("--check-terms", action="store_true", help="print the Neural Art terms at the start")
    parser.add_argument("--out", type=Path, default=ART_FEATURES_DIR)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    images, labels = LOADERS[args.dataset]("train", args.data_dir)
    test_images, test_labels = LOADERS[args.dataset]("test", args.data_dir)
    if args.limit is not None:
        keep = torch.randperm(len(images), generator=generator)[: args.limit]
        images, labels = images[keep], labels[keep]
    model = Classifier(ArtFeatureNet())
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * -(-len(images) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for i in range(0, len(images), args.batch_size):
            index = order[i : i + args.batch_size]
            loss = nn.functional.cross_entropy(model(augment(images[index], generator)), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        print(
            f"epoch {epoch + 1}/{args.epochs}: train loss {total / len(images):.4f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    train_seconds = time.perf_counter() - start
    test_accuracy = accuracy(model, test_images, test_labels)
    print(f"test accuracy {test_accuracy:.4f} on {len(test_images)} {args.dataset} test images")

    features = model.features.eval().requires_grad_(False)
    config = features.config()
    config["training"] = {
        "command": shlex.join(["python", "tools/train_art_features.py", *sys.argv[1:]]),
        "dataset": args.dataset,
        "train_images": len(images),
        "epochs": args.epochs,
        "seed": args.seed,
        "threads": args.threads,
        "torch": torch.__version__,
        "train_seconds": round(train_seconds, 1),
        "test_accuracy": round(test_accuracy, 4),
        "test_images": len(test_images),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.contiguous() for name, tensor in features.state_dict().items()}
    payload = save(tensors)
    atomic_write(args.out / "model.safetensors", lambda handle: handle.write(payload), "wb")
    atomic_write_text(args.out / "config.json", json.dumps(config, indent=2) + "\n")
    sums = "".join(
        f"{hashlib.sha256((args.out / name).read_bytes()).hexdigest()}  {name}\n"
        for name in ("config.json", "model.safetensors")
    )
    atomic_write_text(args.out / "SHA256SUMS", sums)
    print(f"wrote {args.out}: {sum(t.numel() for t in tensors.values()):,} parameters, {len(payload):,} bytes")
    if args.check_terms:
        terms = check_terms(features, args.data_dir)
        print(
            "Neural Art terms at the start (mean of 8 neural-art-64 problems): "
            + ", ".join(f"{key} {value:.4g}" for key, value in terms.items())
        )


if __name__ == "__main__":
    main()
