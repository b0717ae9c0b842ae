"""The arbitrary style transfer model: style predictor + CIN transfer network (Flax NNX).

:class:`ArbitraryStyleModel` combines

* :class:`~arbitrary_nst.models.predictor.StylePredictor`: style image -> embedding
  (``embedding_dim``: 100 by default, 164 in the built-in model) ->
  (gamma, beta) for each of the transfer network's 13 CIN layers;
* :class:`~arbitrary_nst.models.transfer.TransferNetwork`: content + (gamma, beta) -> stylized.

**Palette.** ``palette`` (0..1, a model option stored in exports; 0 = off) moves the output's
colours that far toward the style image's colour mean and covariance with one affine map per
image (:func:`arbitrary_nst.color.align_to_moments`). The network alone under-commits to each
style's palette (its outputs share a muted "average painting" colouring); the map is exact,
cheap, and training can run through it (``model.palette`` in the training config), so
the network need not spend capacity on global colour. :meth:`transfer` is the raw network;
:meth:`__call__` and :class:`arbitrary_nst.Stylizer` apply the palette.

``embed`` and ``transfer`` are separate so that interpolation between styles and the strength
knob work on embeddings (Magenta: ``a * v(style) + (1 - a) * v(content)``).

The VGG16 inside the predictor is shared and frozen (``FrozenWeight`` variables): it is neither
trained (optimizers see ``nnx.Param`` only) nor exported (only its pooling, ``vgg_pooling`` in
the config, which the predictor's statistics depend on). :meth:`ArbitraryStyleModel.config`
is the small dict that, with the trainable parameters, rebuilds the model
(see :mod:`arbitrary_nst.export`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import nnx

from .. import color
from ..errors import ConfigError, check_count, not_a_number
from ..vgg import VGG16, check_pooling, tap_depth
from .predictor import (DEFAULT_STYLE_TAPS, StylePredictor, check_feature_norm,
                        pooled_statistics)
from .transfer import CIN_LAYER_NAMES, TransferNetwork, check_width, cin_layer_channels

__all__ = ["ArbitraryStyleModel", "StylePredictor", "TransferNetwork", "cin_layer_channels",
           "CIN_LAYER_NAMES", "DEFAULT_STYLE_TAPS", "pooled_statistics", "MODEL_CONFIG_KEYS",
           "param_count", "with_pooling", "check_palette", "check_model_config"]

#: Keys of :meth:`ArbitraryStyleModel.config` (what an export stores besides the weights).
MODEL_CONFIG_KEYS = ("width", "embedding_dim", "hidden_dim", "style_taps", "feature_norm",
                     "vgg_pooling", "palette")


def check_palette(value: Any) -> float:
    """A palette amount: a number in [0, 1] (ConfigError otherwise: a string such as ``"0.2"``
    and ``True`` are not numbers, as for :func:`arbitrary_nst.errors.check_weight`)."""
    if not_a_number(value):
        raise ConfigError(f"palette must be a number in [0, 1], got {value!r}")
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"palette must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"palette must be in [0, 1], got {value!r}")
    return p


def check_model_config(config: Mapping[str, Any]) -> None:
    """ConfigError (one line) for a model option that is unknown or of the wrong type or range,
    before anything is built: ``--set model.width=None`` was a TypeError from the transfer
    network's constructor, ``model.style_taps=None`` one from ``tuple(None)``."""
    unknown = set(config) - set(MODEL_CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"unknown model options: {sorted(unknown)}")
    if "width" in config:
        check_width(config["width"])
    for key, low in (("embedding_dim", 1), ("hidden_dim", 0)):
        if key in config:
            check_count(config[key], key, low, optional=False)
    if "style_taps" in config:
        taps = config["style_taps"]
        if isinstance(taps, (str, bytes)) or not isinstance(taps, Sequence) or not taps:
            raise ConfigError(f"style_taps must be a list of one or more VGG16 taps (e.g. "
                              f"{list(DEFAULT_STYLE_TAPS[:2])}), got {taps!r}")
        for t in taps:
            try:
                tap_depth(t)
            except ConfigError as e:  # (the field named)
                raise ConfigError(f"style_taps: {e}") from None
    if "feature_norm" in config:
        check_feature_norm(config["feature_norm"])
    if "vgg_pooling" in config:
        check_pooling(config["vgg_pooling"], "vgg_pooling")
    if "palette" in config:
        check_palette(config["palette"])


class ArbitraryStyleModel(nnx.Module):
    """Style predictor + transfer network.

    Args:
      vgg: frozen VGG16 (e.g. ``arbitrary_nst.vgg.load_vgg16()``), shared with the loss.
      width: transfer-network width multiplier (1.0; 0.5 / 0.25 for fast variants).
      embedding_dim: style embedding size (Magenta: 100).
      hidden_dim: hidden width of the predictor's MLP (0: one linear layer, as Magenta).
      style_taps: VGG taps whose mean/std describe the style.
      feature_norm: ``"layer"`` or ``"none"``: standardization of the pooled statistics.
      palette: how far outputs are moved to the style's colour mean and covariance (0..1,
        module docstring).
      dtype: compute dtype (``None`` = float32; ``jnp.bfloat16`` on GPU). Parameters stay f32.
      rngs: ``nnx.Rngs`` for initialization.
    """

    def __init__(self, vgg: VGG16, *, width: float = 1.0, embedding_dim: int = 100,
                 hidden_dim: int = 512, style_taps: Sequence[str] = DEFAULT_STYLE_TAPS,
                 feature_norm: str = "layer", palette: float = 0.0, dtype=None,
                 rngs: nnx.Rngs):
        self.palette = check_palette(palette)
        self.transfer_net = TransferNetwork(width, dtype=dtype, rngs=rngs)
        self.predictor = StylePredictor(vgg, cin_channels=self.transfer_net.cin_channels,
                                        embedding_dim=embedding_dim, hidden_dim=hidden_dim,
                                        taps=style_taps, feature_norm=feature_norm,
                                        dtype=dtype, rngs=rngs)

    @classmethod
    def from_config(cls, vgg: VGG16, config: Mapping[str, Any], *, dtype=None,
                    rngs: nnx.Rngs | None = None) -> "ArbitraryStyleModel":
        """Build from :meth:`config` output (or the ``model`` part of a training config).
        ``vgg`` is re-wrapped (same weight arrays, no copy) if its pooling differs from the
        config's ``vgg_pooling``."""
        check_model_config(config)
        kw = dict(config)
        if "style_taps" in kw:
            kw["style_taps"] = tuple(kw["style_taps"])
        vgg = with_pooling(vgg, kw.pop("vgg_pooling", vgg.pooling))
        return cls(vgg, dtype=dtype, rngs=rngs if rngs is not None else nnx.Rngs(0), **kw)

    # -- properties -----------------------------------------------------------------------------
    @property
    def vgg(self) -> VGG16:
        return self.predictor.vgg

    @property
    def width(self) -> float:
        return self.transfer_net.width

    @property
    def embedding_dim(self) -> int:
        return self.predictor.embedding_dim

    @property
    def cin_channels(self) -> tuple[int, ...]:
        return self.transfer_net.cin_channels

    def config(self) -> dict[str, Any]:
        """What rebuilds this model besides its weights (JSON-serializable)."""
        return {"width": self.width, "embedding_dim": self.predictor.embedding_dim,
                "hidden_dim": self.predictor.hidden_dim,
                "style_taps": list(self.predictor.taps),
                "feature_norm": self.predictor.feature_norm,
                "vgg_pooling": self.vgg.pooling, "palette": self.palette}

    # -- forward --------------------------------------------------------------------------------
    def embed(self, style: jax.Array) -> jax.Array:
        """``[B, H, W, 3]`` style images in [0, 1] (any H, W >= 32) -> ``[B, embedding_dim]``."""
        return self.predictor.embed(style)

    def transfer(self, content: jax.Array, embedding: jax.Array,
                 valid_hw: jax.Array | None = None) -> jax.Array:
        """Stylize ``[B, H, W, 3]`` content with ``[B, D]`` (or ``[1, D]``/``[D]``, shared)
        embeddings; ``valid_hw`` ``[B, 2]``: unpadded sizes of padded content (see
        :class:`~arbitrary_nst.models.transfer.TransferNetwork`). Returns float32
        ``[B, H, W, 3]`` in [0, 1]."""
        return self.transfer_net(content, self.predictor.gamma_beta(embedding), valid_hw)

    def palette_moments(self, style: jax.Array) -> jax.Array:
        """``[B, H, W, 3]`` style images -> ``[B, 12]`` colour moments (the palette target;
        :func:`arbitrary_nst.color.color_moments`). They mix linearly, like embeddings."""
        return color.color_moments(style)

    def align_palette(self, stylized: jax.Array, moments: jax.Array,
                      amount: jax.Array | float | None = None, mask=None, *,
                      exact_gradient: bool = False) -> jax.Array:
        """``stylized`` moved ``amount`` (default: the model's ``palette``) toward the colour
        ``moments`` ``[B, 12]``; ``mask`` ``[B, H, W]``: the pixels whose colours count (e.g.
        not the padding). ``exact_gradient``: see :func:`arbitrary_nst.color.align_to_moments`."""
        amount = self.palette if amount is None else amount
        return color.align_to_moments(stylized, moments, amount, mask=mask,
                                      exact_gradient=exact_gradient)

    def __call__(self, content: jax.Array, style: jax.Array) -> jax.Array:
        y = self.transfer(content, self.embed(style))
        if self.palette:
            y = self.align_palette(y, self.palette_moments(style))
        return y


def with_pooling(vgg: VGG16, pooling: str) -> VGG16:
    """``vgg`` itself if it already pools with ``pooling`` (``"max"``/``"avg"``), else a VGG16
    over the same weight arrays with that pooling. Magenta's loss network uses average pooling
    (``image_stylization/vgg.py``: ``pooling='avg'``)."""
    if vgg.pooling == pooling:
        return vgg
    return VGG16(vgg.params(), pooling=pooling, dtype=vgg.dtype)


def param_count(module: nnx.Module) -> int:
    """Number of trainable (``nnx.Param``) scalars."""
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param))))


def identity_embedding_output(model: ArbitraryStyleModel, content: jax.Array) -> jax.Array:
    """Transfer with gamma = 1, beta = 0 everywhere (no style), for diagnostics."""
    return model.transfer_net(content, model.transfer_net.identity_gammas_betas(content.shape[0]))

