"""Atomic file writes: a temporary file in the destination's folder, flushed, fsynced, then
renamed over the destination, so readers (and a crash) see the old file or the new one, never a
half-written one. Images have their own richer writer (:func:`arbitrary_nst.images.save_image`:
no-clobber links, file modes, one-line errors)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file next to ``path``, then rename it to
    ``path`` (replacing it). Creates the parent folder; removes the temporary file on error."""
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dst
