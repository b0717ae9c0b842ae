"""arbitrary_nst: arbitrary neural style transfer in JAX.

Public API (everything else is internal):

* VGG16 perceptual network: :func:`load_vgg16`, :class:`VGG16`, :data:`TAPS`.
* Losses: :class:`LossConfig`, :class:`StyleTargets`, :func:`perceptual_loss`.
* The arbitrary-style model: :class:`ArbitraryStyleModel`, :func:`export_model`,
  :func:`load_exported`; inference: :class:`Stylizer`; a style's gamma/beta fitted on photos:
  :class:`FittedStyle` (:meth:`Stylizer.fit_style`).
* Errors users can cause: :class:`NSTError` and its subclasses.
"""
from .errors import ConfigError, ImageError, ModelError, NSTError, WeightsError
from .losses import LossConfig, StyleTargets, perceptual_loss
from .vgg import TAPS, VGG16, load_vgg16
from .models import ArbitraryStyleModel
from .export import export_model, load_exported
from .inference import Stylizer
from .fit_style import FittedStyle

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "ImageError", "ModelError", "NSTError", "WeightsError",
    "LossConfig", "StyleTargets", "perceptual_loss",
    "TAPS", "VGG16", "load_vgg16",
    "ArbitraryStyleModel", "export_model", "load_exported", "Stylizer",
    "FittedStyle",
]
