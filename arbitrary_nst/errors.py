"""Typed errors that users can cause.

Every error a user can trigger with bad input (a file, a config value, a weights file) is one of
these. Their ``str()`` is a single line naming the offending thing and the reason, so the CLIs
can print it as-is and exit non-zero instead of showing a traceback.
"""
from __future__ import annotations

import os


class NSTError(Exception):
    """Base class of all user-facing errors of arbitrary_nst."""


class ImageError(NSTError):
    """An image file (or output destination) that cannot be used: ``path: reason``."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path is not None else reason)


class WeightsError(NSTError):
    """VGG16 or model weights that cannot be found, read or trusted."""


class ConfigError(NSTError):
    """An option or config value that is out of range or inconsistent."""


class ModelError(NSTError):
    """A model/export/checkpoint file that cannot be loaded."""
