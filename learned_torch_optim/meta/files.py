"""Where the meta-trainer caches things, and the atomic writes of the core (:mod:`learned_torch_optim.files`) that
all of meta/ uses."""

from __future__ import annotations

import os
from pathlib import Path

from ..files import atomic_write, atomic_write_text, file_mode

__all__ = ["atomic_write", "atomic_write_text", "cache_root", "file_mode", "temporaries"]


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/learned_torch_optim``, by default ``~/.cache/learned_torch_optim``."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "learned_torch_optim"


def temporaries(path: Path) -> list[Path]:
    """The temporary files of :func:`atomic_write` for ``path``: a process killed while writing leaves them."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))
