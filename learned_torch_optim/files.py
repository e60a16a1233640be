"""Writing files so that nothing is lost: whole files only, with the mode the process's umask gives."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process's umask."""
    umask = os.umask(0o077)  # reading the umask means setting it; a restrictive one meanwhile
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write: Callable[[Any], object], mode: str = "w") -> None:
    """Write ``path`` through a temporary file in its folder, then ``os.replace``: readers never see a partial file,
    and a failed write leaves the old file (and no temporary) behind.  The file gets :func:`file_mode`."""
    encoding = "utf-8" if "b" not in mode else None
    handle = tempfile.NamedTemporaryFile(
        mode, dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False, encoding=encoding
    )
    try:
        with handle:
            write(handle)
        os.chmod(handle.name, file_mode())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text))
