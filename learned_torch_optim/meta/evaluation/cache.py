"""The baseline cache: runs of the hand-designed optimizers as small JSON files, so that evaluating new weights
recomputes only the learned optimizer."""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ... import __version__
from ..data import dataset_file
from ..files import atomic_write_text, cache_root
from ..tasks import task_data_files, task_package_files
from .baselines import Baseline
from .results import RunResult, json_floats

__all__ = ["CACHE_FORMAT", "BaselineCache", "builtin_task_id", "default_baseline_cache_dir"]

CACHE_FORMAT = 1
"""Bump when anything that changes a baseline run changes (problem seeds, the runner, the metric)."""


def default_baseline_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/learned_torch_optim/baselines``, by default ``~/.cache/learned_torch_optim/baselines``."""
    return cache_root() / "baselines"


def builtin_task_id(name: str, split: str, data_dir: str | None) -> str:
    """The cache identity of a built-in task: its name and, for datasets, the split and the sha256 of its files;
    for a task that reads files of the package (the Neural Art feature network), their sha256 too."""
    files = task_data_files(name, split)
    if not files:
        return name
    digest = hashlib.sha256()
    for dataset, file_name in files:
        digest.update(dataset_file(dataset, file_name, data_dir).read_bytes())
    task_id = f"{name}|split={split}|{'+'.join(sorted({d for d, _ in files}))}-sha256={digest.hexdigest()}"
    package_files = task_package_files(name)
    if package_files:
        package_digest = hashlib.sha256()
        for path in package_files:
            package_digest.update(path.read_bytes() if path.is_file() else b"missing")
        task_id += f"|package-sha256={package_digest.hexdigest()}"
    return task_id


class BaselineCache:
    """Baseline runs as small JSON files, one per (task, split, data, steps, problems, seed, optimizer, lr).

    The key also holds the optimizer's hyperparameters, the torch and package versions and :data:`CACHE_FORMAT`;
    a file is used only if its stored key equals the requested one, and an unreadable file is a miss.
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_baseline_cache_dir()
        self._warned = False

    @staticmethod
    def key(task_id: str, *, steps: int, problems: int, seed: int, baseline: Baseline, lr: float) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "task": task_id,
            "steps": steps,
            "problems": problems,
            "seed": seed,
            "optimizer": baseline.name,
            "optimizer_description": baseline.description,
            "lr": float(lr),
            "torch_version": torch.__version__,
            "package_version": __version__,
        }

    def path(self, key: Mapping[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.directory / f"{key['optimizer']}-{digest}.json"

    def get(self, key: Mapping[str, Any]) -> RunResult | None:
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
            if entry["key"] != key:
                return None

            def floats(values: list[float | None]) -> tuple[float, ...]:
                return tuple(math.nan if v is None else float(v) for v in values)

            return RunResult(
                lr=float(key["lr"]),
                metrics=floats(entry["metrics"]),
                final_losses=floats(entry["final_losses"]),
                mean_curve=floats(entry["mean_curve"]),
                cached=True,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: Mapping[str, Any], run: RunResult) -> None:
        entry = {
            "key": dict(key),
            "metrics": json_floats(run.metrics),
            "final_losses": json_floats(run.final_losses),
            "mean_curve": json_floats(run.mean_curve),
        }
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path(key), json.dumps(entry, allow_nan=False))
        except OSError as error:
            if not self._warned:
                self._warned = True
                warnings.warn(f"baseline cache {self.directory} not writable: {error}", UserWarning, stacklevel=3)
