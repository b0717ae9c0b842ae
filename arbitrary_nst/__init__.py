"""arbitrary_nst: arbitrary neural style transfer in JAX.

Public API (everything else is internal):

* VGG16 perceptual network: :func:`load_vgg16`, :class:`VGG16`, :data:`TAPS`.
* Losses: :class:`LossConfig`, :class:`StyleTargets`, :func:`perceptual_loss`.
* Errors users can cause: :class:`NSTError` and its subclasses.
"""
from .errors import ConfigError, ImageError, ModelError, NSTError, WeightsError
from .losses import LossConfig, StyleTargets, perceptual_loss
from .vgg import TAPS, VGG16, load_vgg16

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "ImageError", "ModelError", "NSTError", "WeightsError",
    "LossConfig", "StyleTargets", "perceptual_loss",
    "TAPS", "VGG16", "load_vgg16",
]
