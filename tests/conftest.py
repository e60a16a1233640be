import hashlib
from pathlib import Path

import pytest
import torch

from learned_torch_optim import CoordinatewiseLSTM


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
