"""The README's main job runs end to end (a few steps, on generated MNIST-format files)."""

import subprocess
import sys
from pathlib import Path

from test_meta import make_fake_mnist

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_prints_a_table_and_saves_a_plot(tmp_path):
    data = make_fake_mnist(tmp_path / "data")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "quickstart.py"),
            "--steps",
            "4",
            "--data-dir",
            str(data),
            "--out",
            str(tmp_path / "plot.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "LearnedOptimizer (default, lr=1)" in result.stdout and "Adam (lr=0.001)" in result.stdout
    assert (tmp_path / "plot.png").stat().st_size > 0
