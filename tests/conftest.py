import gzip
import hashlib
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from learned_torch_optim import CoordinatewiseLSTM
from learned_torch_optim.meta import MetaTrainer, TrainConfig


@pytest.fixture
def network() -> CoordinatewiseLSTM:
    """A randomly initialised paper-shaped network (tests never rely on packaged weights)."""
    torch.manual_seed(1234)
    return CoordinatewiseLSTM(hidden_size=20, num_layers=2, preprocessing="log_sign", output_scale=0.1)


def write_sha256sums(folder: Path) -> None:
    """List every file of a dataset folder in its SHA256SUMS (``sha256sum`` output): generated data then passes
    the readers' checksum check as data of one's own."""
    lines = [
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != "SHA256SUMS"
    ]
    (folder / "SHA256SUMS").write_text("".join(lines))


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write ``array`` (uint8 values) as a gzipped IDX file, the format of the MNIST files."""
    header = bytes([0, 0, 0x08, array.dim()]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.to(torch.uint8).numpy().tobytes())


def make_fake_mnist(root: Path, n: int = 64) -> Path:
    """Random MNIST-format files (``n`` images per split) under ``root/mnist``, listed in its SHA256SUMS;
    returns ``root``, a data directory."""
    folder = root / "mnist"
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", torch.randint(0, 256, (n, 28, 28), generator=gen))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", torch.randint(0, 10, (n,), generator=gen))
    write_sha256sums(folder)
    return root


def quick_config(**overrides: Any) -> TrainConfig:
    """A meta-training run of a few seconds on quadratics: a small network, every setting overridable."""
    values = dict(
        task="quadratic",
        iterations=4,
        horizon=20,
        unroll=10,
        meta_batch_size=4,
        validate_every=2,
        validation_problems=2,
        checkpoint_every=1,
        network_config={"preprocessing": "identity", "output_scale": 1.0, "hidden_size": 8},
    )
    values.update(overrides)
    return TrainConfig(**values)


class Killed(Exception):
    """Raised by a test to stand for a kill of the process at that point."""


def train_until_killed(trainer: MetaTrainer, at_iteration: int, error: type[BaseException] = Killed) -> None:
    """Run ``trainer`` until ``error`` is raised as it starts the iteration after ``at_iteration`` (0: the first)."""
    original = MetaTrainer.train_iteration

    def killed(self: MetaTrainer) -> float:
        if self.iteration == at_iteration:
            raise error
        return original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MetaTrainer, "train_iteration", killed)
        with pytest.raises(error):
            trainer.train(progress=False)
