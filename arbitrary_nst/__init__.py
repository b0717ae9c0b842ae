"""arbitrary_nst: arbitrary neural style transfer in JAX.

Public API (everything else is internal):

* VGG16 perceptual network: :func:`load_vgg16`, :class:`VGG16`, :data:`TAPS`.
* Losses: :class:`LossConfig`, :class:`StyleTargets`, :func:`perceptual_loss`.
* The arbitrary-style model: :class:`ArbitraryStyleModel`, :func:`export_model`,
  :func:`load_exported`; inference: :class:`Stylizer`; a style's gamma/beta fitted on photos:
  :class:`FittedStyle` (:meth:`Stylizer.fit_style`).
* Errors users can cause: :class:`NSTError` and its subclasses.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import ConfigError, ImageError, ModelError, NSTError, WeightsError

__version__ = "0.1.0"

# The rest is imported on first use (PEP 562): `import arbitrary_nst` stays cheap, and
# `python -m arbitrary_nst.weights` (run by every `make`) does not find its own module imported
# already by the package (runpy's "found in sys.modules" warning).
_LAZY = {
    "LossConfig": ".losses", "StyleTargets": ".losses", "perceptual_loss": ".losses",
    "TAPS": ".vgg", "VGG16": ".vgg", "load_vgg16": ".vgg",
    "ArbitraryStyleModel": ".models",
    "export_model": ".export", "load_exported": ".export",
    "Stylizer": ".inference",
    "FittedStyle": ".fit_style",
}

__all__ = [
    "ConfigError", "ImageError", "ModelError", "NSTError", "WeightsError",
    "LossConfig", "StyleTargets", "perceptual_loss",
    "TAPS", "VGG16", "load_vgg16",
    "ArbitraryStyleModel", "export_model", "load_exported", "Stylizer",
    "FittedStyle",
]

if TYPE_CHECKING:
    from .export import export_model, load_exported
    from .fit_style import FittedStyle
    from .inference import Stylizer
    from .losses import LossConfig, StyleTargets, perceptual_loss
    from .models import ArbitraryStyleModel
    from .vgg import TAPS, VGG16, load_vgg16


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
