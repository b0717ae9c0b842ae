"""Perceptual losses: pure, jittable, batched. Every loss returns one value per example (``[B]``).

Statistics of a feature map ``F`` (``[B, H, W, C]``, flattened to ``[B, N=H*W, C]``):

* Gram: ``G = F^T F / norm`` with ``norm`` = ``H*W`` (``"hw"``, Magenta/Ghiasi et al.; the
  default), ``C*H*W`` (``"chw"``, Johnson et al.) or 1 (``"none"``, Gatys et al. with their
  ``1/(4 N^2 M^2)`` folded into the weight).
* Centered Gram: the Gram of ``F - mean_hw(F)`` (a covariance): invariant to per-channel offsets,
  so it ignores the mean colour/intensity of each filter and keeps only the co-variation.
* ``"both"``: the Gram term plus the centered-Gram term.
* ``"mean_std"``: per-channel mean and standard deviation over H, W (AdaIN; Huang & Belongie).

Distances are mean squared errors over the statistic's entries (``reduce_mean`` as in Magenta),
so a layer weight means the same thing at every image size.

Total variation (``"magenta"``): ``0.5 * (mean(dy^2) + mean(dx^2))`` per example, which is
Magenta's ``l2_loss(dy)/size(dy) + l2_loss(dx)/size(dx)``; ``"l1"`` uses absolute differences.

:class:`LossConfig` holds layers and weights; :class:`StyleTargets` precomputes the style
statistics of a style batch once and is reused at every step/iteration; :func:`perceptual_loss`
combines everything against a VGG feature function.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from .errors import ConfigError, check_weight

GramNorm = Literal["hw", "chw", "none"]
StyleStatistic = Literal["gram", "centered_gram", "both", "mean_std"]
TVKind = Literal["magenta", "l1"]
STYLE_STATISTICS = ("gram", "centered_gram", "both", "mean_std")
GRAM_NORMS = ("hw", "chw", "none")
PALETTE_GRADIENTS = ("fixed", "exact")
TV_KINDS = ("magenta", "l1")

FeatureFn = Callable[[jax.Array, Sequence[str]], dict[str, jax.Array]]


def _images(x) -> jax.Array:
    """RGB images as floats on the [0, 1] scale: uint8/uint16/bool are scaled as everywhere in
    the package (:func:`arbitrary_nst.vgg.as_float_images`; a uint8 batch was read as floats up
    to 255); a static dtype test, so it traces under jit."""
    from .vgg import as_float_images  # (lazy, as in LossConfig: vgg pulls in flax)

    return as_float_images(x)


def _mapping_like(v) -> bool:
    """A Mapping, or an ml_collections ConfigDict (no Mapping, but it has ``items()``)."""
    return isinstance(v, Mapping) or callable(getattr(v, "items", None))


def _at_least_f32(x: jax.Array) -> jax.Array:
    """bf16/f16 -> float32 (sums over H*W lose too much precision); float64 stays float64."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _flatten(f: jax.Array) -> jax.Array:
    b, h, w, c = f.shape
    return f.reshape(b, h * w, c)


def _gram_denominator(shape: tuple[int, ...], norm: GramNorm) -> float:
    _, h, w, c = shape
    if norm == "hw":
        return float(h * w)
    if norm == "chw":
        return float(c * h * w)
    if norm == "none":
        return 1.0
    raise ConfigError(f"gram normalization must be one of {GRAM_NORMS}, got {norm!r}")


def gram_matrix(f: jax.Array, norm: GramNorm = "hw") -> jax.Array:
    """``[B, H, W, C] -> [B, C, C]`` Gram matrix, normalized as documented above.
    Accumulated in at least float32, also for bf16 features."""
    x = _at_least_f32(_flatten(f))
    return jnp.einsum("bnc,bnd->bcd", x, x) / _gram_denominator(f.shape, norm)


def centered_gram_matrix(f: jax.Array, norm: GramNorm = "hw") -> jax.Array:
    """Gram matrix of the per-channel mean-subtracted features (a feature covariance)."""
    x = _at_least_f32(f)
    return gram_matrix(x - jnp.mean(x, axis=(1, 2), keepdims=True), norm)


def mean_std(f: jax.Array, eps: float = 1e-5) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and standard deviation over H, W: two ``[B, C]`` arrays."""
    x = _at_least_f32(f)
    mean = jnp.mean(x, axis=(1, 2))
    var = jnp.var(x, axis=(1, 2))
    return mean, jnp.sqrt(var + eps)


def style_statistic(f: jax.Array, kind: StyleStatistic = "gram", norm: GramNorm = "hw"):
    """The statistic a style loss compares, as a pytree with a leading batch axis."""
    if kind == "gram":
        return {"gram": gram_matrix(f, norm)}
    if kind == "centered_gram":
        return {"centered_gram": centered_gram_matrix(f, norm)}
    if kind == "both":
        return {"gram": gram_matrix(f, norm), "centered_gram": centered_gram_matrix(f, norm)}
    if kind == "mean_std":
        mean, std = mean_std(f)
        return {"mean": mean, "std": std}
    raise ConfigError(f"style statistic must be one of {STYLE_STATISTICS}, got {kind!r}")


def _per_example_mse(a: jax.Array, b: jax.Array) -> jax.Array:
    d = (_at_least_f32(a) - _at_least_f32(b)) ** 2
    return jnp.mean(d.reshape(d.shape[0], -1), axis=1)


def statistic_distance(stat, target) -> jax.Array:
    """Sum over the statistic's parts of the per-example MSE: ``[B]``. ``target`` may have batch
    size 1 (one style for the whole batch) or B."""
    total = 0.0
    for key, value in stat.items():
        t = jnp.broadcast_to(target[key], value.shape)
        total = total + _per_example_mse(value, t)
    return total


def content_loss(f: jax.Array, target: jax.Array) -> jax.Array:
    """Feature MSE per example: ``[B]``."""
    return _per_example_mse(f, jnp.broadcast_to(target, f.shape))


def style_loss(f: jax.Array, target_stat, kind: StyleStatistic = "gram",
               norm: GramNorm = "hw") -> jax.Array:
    """Distance between the style statistic of ``f`` and a precomputed target: ``[B]``."""
    return statistic_distance(style_statistic(f, kind, norm), target_stat)


def total_variation(images: jax.Array, kind: TVKind = "magenta") -> jax.Array:
    """Total variation per example (see module docstring): ``[B]``. ``images`` in [0, 1]
    (uint8/uint16 are scaled to it)."""
    x = _at_least_f32(_images(images))
    dy = x[:, 1:, :, :] - x[:, :-1, :, :]
    dx = x[:, :, 1:, :] - x[:, :, :-1, :]
    b = x.shape[0]
    if kind == "magenta":
        return 0.5 * (jnp.mean((dy ** 2).reshape(b, -1), 1) + jnp.mean((dx ** 2).reshape(b, -1), 1))
    if kind == "l1":
        return jnp.mean(jnp.abs(dy).reshape(b, -1), 1) + jnp.mean(jnp.abs(dx).reshape(b, -1), 1)
    raise ConfigError(f"total variation kind must be 'magenta' or 'l1', got {kind!r}")


# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Layers, per-layer weights and global weights of the perceptual loss.

    Defaults follow Magenta's arbitrary_image_stylization (Ghiasi et al. 2017): content on VGG
    ``conv3`` (= relu3_3 here) with weight 1, style Gram on conv1..conv4 (relu1_2, relu2_2,
    relu3_3, relu4_3) at 0.5e-3 each, TV 1e4 under Magenta's normalization. Magenta's slim VGG16
    takes RGB 0..255 minus the mean, exactly the scale of the caffe input used here, and its loss
    network uses *average* pooling (``image_stylization/vgg.py``): the weights carry over with
    ``load_vgg16(pooling="avg")``. With max pooling the deeper Gram terms are larger (relu3_3
    11x, relu4_3 96x: ``bench/vgg_loss_scales.py``) and these weights let style swamp content
    (measured while training; see configs/default.py).
    """

    content_layers: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"relu3_3": 1.0})
    style_layers: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"relu1_2": 0.5e-3, "relu2_2": 0.5e-3,
                                 "relu3_3": 0.5e-3, "relu4_3": 0.5e-3})
    content_weight: float = 1.0
    style_weight: float = 1.0
    tv_weight: float = 1e4
    style_statistic: StyleStatistic = "gram"
    gram_norm: GramNorm = "hw"
    tv_kind: TVKind = "magenta"
    #: How training differentiates a palette model's loss (the palette's colour map):
    #: ``"fixed"`` holds the map constant (the surrogate v7 was trained with), ``"exact"``
    #: differentiates through it (:func:`arbitrary_nst.color.align_to_moments`).
    palette_gradient: str = "fixed"

    def __post_init__(self):
        from .vgg import tap_depth  # validates tap names

        for name in ("content_layers", "style_layers"):  # (a list: a raw AttributeError)
            if not _mapping_like(getattr(self, name)):
                raise ConfigError(f"{name} must map layer names to weights (e.g. "
                                  f"{{'relu1_1': 1.0}}), got {getattr(self, name)!r}")
        for name in ("content_layers", "style_layers"):  # (the field named: which one held
            for layer in getattr(self, name):  # relu9_9 was not said)
                try:
                    tap_depth(layer)
                except ConfigError as e:
                    raise ConfigError(f"{name}: {e}") from None

        for kind, layers in (("content", self.content_layers), ("style", self.style_layers)):
            for layer, w in layers.items():
                check_weight(w, f"{kind} layer weight {layer}")
        if self.style_statistic not in STYLE_STATISTICS:
            raise ConfigError(f"style_statistic must be one of {STYLE_STATISTICS}, "
                              f"got {self.style_statistic!r}")
        if self.gram_norm not in GRAM_NORMS:
            raise ConfigError(f"gram_norm must be one of {GRAM_NORMS}, got {self.gram_norm!r}")
        if self.palette_gradient not in PALETTE_GRADIENTS:
            raise ConfigError(f"palette_gradient must be one of {PALETTE_GRADIENTS}, "
                              f"got {self.palette_gradient!r}")
        if self.tv_kind not in TV_KINDS:  # (found only when the loss was traced)
            raise ConfigError(f"tv_kind must be one of {TV_KINDS}, got {self.tv_kind!r}")
        for name in ("content_weight", "style_weight", "tv_weight"):
            check_weight(getattr(self, name), name)

    @property
    def taps(self) -> tuple[str, ...]:
        """All VGG taps the loss needs (content and style), without duplicates."""
        return tuple(dict.fromkeys([*self.content_layers, *self.style_layers]))

    def replace(self, **kw) -> "LossConfig":
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_config(cls, cfg: Mapping) -> "LossConfig":
        """From an ``ml_collections.ConfigDict`` (or dict) with the same field names."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(cfg) - fields
        if unknown:
            raise ConfigError(f"unknown loss options: {sorted(unknown)}")
        kw = {k: (dict(v) if _mapping_like(v) else v) for k, v in dict(cfg).items()}
        return cls(**kw)


def check_mix_weights(weights, what: str) -> np.ndarray:
    """``[S]`` or ``[B, S]`` mixing weights as float64 if finite, >= 0 and not all 0 in a row
    (they are normalized per row where used); ConfigError naming ``what`` otherwise (a row of
    zeros gave NaN targets under jit)."""
    w = np.asarray(weights, np.float64)
    if w.ndim not in (1, 2) or not (np.all(np.isfinite(w)) and np.all(w >= 0)
                                    and np.all(w.sum(-1) > 0)):
        raise ConfigError(f"{what} must be [S] or [B, S], finite, >= 0 and not all 0 in a "
                          f"row, got {w.tolist()}")
    return w


def depth_weighted_layers(layers: Sequence[str], total: float = 1.0,
                          growth: float = 2.0) -> dict[str, float]:
    """Per-layer weights that grow with depth (Novak & Nikulin, "Improving the neural algorithm of
    artistic style"): weight_i proportional to ``growth**i``, normalized to sum to ``total``."""
    raw = [growth ** i for i in range(len(layers))]
    s = sum(raw)
    return {layer: total * r / s for layer, r in zip(layers, raw)}


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass
class StyleTargets:
    """Style statistics of a style batch, computed once and reused at every step.

    ``stats[layer]`` is a statistic pytree with leading batch axis ``S`` (S = 1 broadcasts to any
    batch). A pytree, so it can be passed into jitted functions.
    """

    stats: dict

    def tree_flatten(self):
        return (self.stats,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    @classmethod
    def from_features(cls, feats: Mapping[str, jax.Array], cfg: LossConfig) -> "StyleTargets":
        return cls({layer: style_statistic(feats[layer], cfg.style_statistic, cfg.gram_norm)
                    for layer in cfg.style_layers})

    @classmethod
    def from_images(cls, feature_fn: FeatureFn, style_images: jax.Array,
                    cfg: LossConfig) -> "StyleTargets":
        """``feature_fn(images, taps) -> {tap: features}`` (e.g. a
        :class:`~arbitrary_nst.vgg.VGG16`); ``style_images`` in [0, 1] (uint8/uint16 are scaled
        to it)."""
        return cls.from_features(feature_fn(_images(style_images), tuple(cfg.style_layers)), cfg)

    @property
    def num_styles(self) -> int | None:
        """``S``, the leading axis of the statistics (``None``: no style layers, no stats)."""
        leaves = jax.tree_util.tree_leaves(self.stats)
        return int(leaves[0].shape[0]) if leaves else None

    def blend(self, weights: jax.Array) -> "StyleTargets":
        """Mix the S styles into one target per ``weights`` row: ``[S]`` -> batch 1, or
        ``[B, S]`` -> batch B. Each row is normalized to sum to 1 (weights >= 0, as everywhere
        else in the package: ``[3, 7]`` = ``[0.3, 0.7]``). Because the distances are MSEs,
        matching the weighted mean of the statistics equals minimizing the weighted sum of
        per-style losses up to a constant."""
        w = jnp.asarray(weights, jnp.float32)
        n = self.num_styles
        if n is None:  # a content-only loss: nothing to mix
            return self
        if w.ndim not in (1, 2) or w.shape[-1] != n:  # (one weight for 2 styles summed them)
            raise ConfigError(f"blend: weights must be [S] or [B, S] with S = {n} styles, "
                              f"got shape {tuple(w.shape)}")
        try:  # values are known outside jit only
            v = np.asarray(w)
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
            v = None
        if v is not None:
            check_mix_weights(v, "blend: weights")
        w2 = w[None] if w.ndim == 1 else w
        w2 = w2 / jnp.sum(w2, axis=-1, keepdims=True)
        mix = lambda s: jnp.einsum("bs,s...->b...", w2, s)  # noqa: E731
        return StyleTargets(jax.tree_util.tree_map(mix, self.stats))


def perceptual_loss(feature_fn: FeatureFn, images: jax.Array, cfg: LossConfig, *,
                    content_feats: Mapping[str, jax.Array] | None,
                    style_targets: StyleTargets | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted content + style + TV loss of ``images`` (``[B, H, W, 3]`` in [0, 1]; uint8 and
    uint16 are scaled to it, as everywhere in the package).

    ``content_feats``: ``{layer: [B or 1, h, w, C]}`` for every content layer, the features
    ``feature_fn`` gives for the content at this size; ``style_targets`` has every style layer.

    Returns ``(total [B], terms)`` with ``terms`` holding the weighted ``content``, ``style`` and
    ``tv`` parts (``[B]`` each) plus the unweighted per-layer values ``content/<layer>`` and
    ``style/<layer>`` for logging and analysis.
    """
    taps = []
    if content_feats is not None:
        taps += list(cfg.content_layers)
    if style_targets is not None:
        taps += list(cfg.style_layers)
    images = _images(images)
    b = images.shape[0]
    need_b = lambda n: "1" if n == 1 else f"1 or {n}"  # noqa: E731 (it read "need 1 or 1")
    if style_targets is not None and style_targets.num_styles not in (None, 1, b):
        raise ConfigError(f"perceptual_loss: {style_targets.num_styles} style targets for "
                          f"{b} image{'s' if b != 1 else ''} (need {need_b(b)}; "
                          "StyleTargets.blend mixes styles)")
    for what, given, layers in (("content_feats", content_feats, cfg.content_layers),
                                ("style_targets", None if style_targets is None
                                 else style_targets.stats, cfg.style_layers)):
        missing = [layer for layer in layers if given is not None and layer not in given]
        if missing:  # (a raw KeyError)
            raise ConfigError(f"perceptual_loss: {what} has no {', '.join(missing)} (has "
                              f"{', '.join(map(str, given)) or 'nothing'}); compute it for "
                              "the loss config's layers")
    feats = feature_fn(images, tuple(dict.fromkeys(taps))) if taps else {}
    acc = jnp.promote_types(images.dtype, jnp.float32)
    terms: dict[str, jax.Array] = {}
    content = jnp.zeros((b,), acc)
    if content_feats is not None:
        for layer, w in cfg.content_layers.items():
            f, t = feats[layer], content_feats[layer]
            ts = tuple(np.shape(t))  # (static, also under jit)
            if len(ts) != f.ndim or ts[1:] != f.shape[1:] or ts[0] not in (1, f.shape[0]):
                raise ConfigError(  # (a raw broadcast ValueError)
                    f"perceptual_loss: content_feats[{layer!r}] has shape {ts}, the images' "
                    f"features {tuple(f.shape)} (batch {need_b(f.shape[0])}): compute them "
                    "from content of the images' size")
            v = content_loss(f, t)
            terms[f"content/{layer}"] = v
            content = content + w * v
    style = jnp.zeros((b,), acc)
    if style_targets is not None:
        for layer, w in cfg.style_layers.items():
            v = statistic_distance(style_statistic(feats[layer], cfg.style_statistic,
                                                   cfg.gram_norm), style_targets.stats[layer])
            terms[f"style/{layer}"] = v
            style = style + w * v
    tv = total_variation(images, cfg.tv_kind)
    terms["content"] = cfg.content_weight * content
    terms["style"] = cfg.style_weight * style
    terms["tv"] = cfg.tv_weight * tv
    total = terms["content"] + terms["style"] + terms["tv"]
    return total, terms
