"""The README's main job: its command runs end to end in a few steps, offline, on the MNIST subset shipped with the
package; with --data-dir it reads MNIST-format files from there instead."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_sha256sums

from learned_torch_optim.meta.data import DataChecksumError, load_image_classification, load_mnist_subset

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.py"
SUBSET = ROOT / "learned_torch_optim" / "meta" / "bundled" / "mnist-subset"


def test_the_shipped_mnist_subset_is_checked_and_carries_its_license(tmp_path):
    for split, count in (("train", 5000), ("test", 1000)):
        images, labels = load_mnist_subset(split)
        assert images.shape == (count, 28, 28) and labels.shape == (count,)
        assert set(labels.tolist()) == set(range(10))
    assert "CC BY-SA 3.0" in (SUBSET / "NOTICE").read_text()
    shutil.copytree(SUBSET, tmp_path / "mnist-subset")
    damaged = tmp_path / "mnist-subset" / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:-1])
    with pytest.raises(DataChecksumError, match="t10k-labels-idx1-ubyte.gz"):
        load_image_classification("mnist-subset", "test", str(tmp_path))


def test_quickstart_tunes_adam_on_the_shipped_data_and_prints_a_table_and_a_plot(tmp_path):
    result = subprocess.run(
        [sys.executable, str(QUICKSTART), "--steps", "5", "--out", str(tmp_path / "plot.png")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "LEARNED_TORCH_OPTIM_DATA": str(tmp_path / "no-data")},
    )
    assert result.returncode == 0, result.stderr
    expected = "data: the MNIST subset shipped with the package (4,000 train, 1,000 held-out, 1,000 test images)"
    assert expected in result.stdout
    grid = "    0.0001   0.00032     0.001    0.0032      0.01     0.032       0.1"
    assert grid in result.stdout and "7 runs" in result.stdout
    for row in ("LearnedOptimizer (default), lr 0.001", "Adam, default lr 0.001", "Adam, tuned lr"):
        assert row in result.stdout
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_quickstart_reads_mnist_from_the_data_dir(tmp_path):
    folder = tmp_path / "mnist"
    shutil.copytree(SUBSET, folder)
    (folder / "NOTICE").unlink()
    write_sha256sums(folder)
    spec = importlib.util.spec_from_file_location("quickstart", QUICKSTART)
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    source, splits = quickstart.load_data(str(tmp_path))
    assert source == f"MNIST from {tmp_path}"
    images, labels = load_mnist_subset("train")
    torch.testing.assert_close(splits["train"][0], images[:-1000].flatten(1))
    torch.testing.assert_close(splits["held-out"][1], labels[-1000:])
    assert splits["test"][0].shape == (1000, 784)
