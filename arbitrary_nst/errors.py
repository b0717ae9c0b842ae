"""Typed errors that users can cause.

Every error a user can trigger with bad input (a file, a config value, a weights file) is one of
these. Their ``str()`` is a single line naming the offending thing and the reason, so the CLIs
can print it as-is and exit non-zero instead of showing a traceback. :func:`check_count` is the
one check of user-given sizes and counts.
"""
from __future__ import annotations

import math
import numbers
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


def check_count(value, what: str, minimum: int = 1) -> int | None:
    """``value`` as an int >= ``minimum`` (None stays None); ConfigError naming ``what`` for
    anything else (NaN, 3.7, "100", True, 0): sizes and counts are never silently rounded."""
    if value is None:
        return None
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if isinstance(value, numbers.Real) and not integral:
        integral = math.isfinite(value) and float(value).is_integer()  # 512.0 is fine
    if not integral or int(value) < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)
