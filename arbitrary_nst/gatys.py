"""Gatys et al. neural style transfer by pixel optimization: jitted, batched, per-example.

:func:`run` optimizes the pixels of a batch of ``B`` images, each with its own content image and
its own (blend of) style images, for ``content_weight * content + style_weight * style +
tv_weight * TV`` (:func:`arbitrary_nst.losses.perceptual_loss`, ImageNet VGG16).

Design
------
**Compiled loop.** One jitted *chunk* function per optimizer runs up to ``chunk_size`` iterations
on the device (a ``lax.while_loop``/``fori_loop``) and returns the per-iteration loss terms; the
host only runs between chunks (progress bar, nothing per iteration). The VGG weights, content
features and style targets are *arguments* of the chunk (not closed-over constants, which would
put 59 MB of weights into the compiled program) and the optimizer state is donated, so its buffers
are updated in place. The iteration count of a chunk is a traced argument, so the last, shorter
chunk reuses the same executable. Content features and style statistics are computed once per
stage, before the loop.

**Pixel parameterization.** The optimizer works on an unconstrained variable ``z`` and the image
is ``x = P(z)``:

* ``"softclip"`` (default): ``P(z) = (softplus(k z) - softplus(k (z - 1))) / k`` with ``k = 30``,
  a smoothed ``clip(z, 0, 1)`` (the clip convolved with a logistic density). It is strictly
  increasing, always inside (0, 1), smooth (so L-BFGS's curvature pairs and line search stay
  valid) and has slope 1 in the middle, >= 0.95 for pixel values in [0.1, 0.9] (0.78 at 0.05 and
  0.95, 0.26 at 0.01 and 0.99). A sigmoid squashes the whole range instead:
  its slope is 1/4 of that in the middle and ~0 near 0 and 1, so dark/bright content pixels
  (sky, shadows) barely move and the problem becomes badly conditioned.
* ``"sigmoid"``: ``P(z) = sigmoid(4 (z - 1/2))`` (slope 1 at mid-grey), for comparison.
* ``"clip"``: ``P(z) = z``. Adam clips ``z`` to [0, 1] after every step (projected gradient);
  L-BFGS optimizes unconstrained and clips at the end (neural-style's behaviour): projecting
  inside L-BFGS would invalidate its curvature pairs and line-search values.

**Batching.** Examples are independent: every example has its own L-BFGS memory, its own line
search and its own iteration counter, so the result for a pair in a batch equals the result of
running that pair alone (up to float rounding of batched convolutions). The batch shares the VGG
forward/backward passes, which is where the time goes.

* ``optimizer="lbfgs"`` (default): the L-BFGS direction is ``optax.scale_by_lbfgs`` (the
  two-loop recursion of ``optax.lbfgs``), ``jax.vmap``-ed over examples (pure arithmetic, free
  under vmap). The line search is a batched weak-Wolfe bracketing search (Armijo + curvature,
  bisection/doubling) written as a per-example state machine in which every loop step does
  exactly **one** batched value-and-gradient evaluation; an example whose line search is done
  starts its next iteration while others are still searching, and stops at its own iteration
  budget. Trial steps start at 1 (L-BFGS' natural step); along a memory-less gradient direction
  (first iteration, or after a reset) at an RMS pixel change of 0.05 and Armijo alone accepts
  it. ``optax.lbfgs``' own zoom line search is not vmapped because its ``lax.cond`` between
  the "search interval" and "zoom" branches (each of which evaluates the objective) turns into
  a ``select`` under vmap, so both branches - two VGG forward/backward passes - would run at
  every line-search step. The weak Wolfe condition guarantees ``s.y > 0``, so the L-BFGS inverse
  Hessian stays positive definite; if a line search fails anyway, that example's memory is reset.
* ``optimizer="lbfgs_optax"``: ``optax.lbfgs()`` with its zoom line search, exactly the optax
  documentation pattern (``optax.value_and_grad_from_state``), applied to the **sum** of the
  per-example losses. The gradient of the sum is still per example, but L-BFGS' inner products
  and the line search step are shared over the batch, so examples interact (a batched result
  differs from the single run). Per-iteration history has the batch objective only; the terms
  are evaluated at the end of every chunk.
* ``optimizer="adam"``: ``optax.adam`` on the summed loss (element-wise, so examples are exactly
  independent); ``learning_rate`` is in pixel units ([0, 1]).

**Options** (:class:`GatysConfig`): content/style/TV weights; content and style layers with
per-layer weights, optionally depth-weighted (Novak & Nikulin); style statistic (Gram, centered
Gram, both, mean/std) and Gram normalization; max or average pooling; normalized VGG; init from
content, noise (seeded) or style; several styles with blend weights (the weighted mean of the
styles' statistics is the target, :meth:`StyleTargets.blend`); style scale (the style image's
longer side relative to the content's); colour preservation (luminance-only transfer in YIQ/YUV,
or colour matching of the style to the content, :mod:`arbitrary_nst.color`); coarse-to-fine
stages (each stage starts from the upsampled previous result).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import color as color_lib
from . import images as images_lib
from . import losses as losses_lib
from . import vgg as vgg_lib
from .errors import MAX_SEED, ConfigError, ImageError, ModelError, check_count, check_weight
from .progress import bar as progress_bar

Optimizer = Literal["lbfgs", "lbfgs_optax", "adam"]
Init = Literal["content", "noise", "style"]
Param = Literal["softclip", "sigmoid", "clip"]
PreserveColor = Literal["none", "luminance", "match"]

OPTIMIZERS = ("lbfgs", "lbfgs_optax", "adam")
INITS = ("content", "noise", "style")
PARAMETERIZATIONS = ("softclip", "sigmoid", "clip")
PRESERVE_COLOR = ("none", "luminance", "match")
GATYS_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
SOFTCLIP_SHARPNESS = 30.0


def _default_style_layers() -> dict[str, float]:
    return {layer: 1.0 / len(GATYS_STYLE_LAYERS) for layer in GATYS_STYLE_LAYERS}


@dataclasses.dataclass(frozen=True)
class GatysConfig:
    """Every option of the Gatys optimizer. Defaults give a good 512 px result in 300-500 L-BFGS
    iterations.

    Loss (see :class:`arbitrary_nst.losses.LossConfig`; Gram normalized by C*H*W and MSE over
    entries as in neural-style, so per-layer weights are size independent):

    * ``content_layers``: ``{tap: weight}``, default ``{"relu4_2": 1}`` (Gatys et al.).
    * ``style_layers``: ``{tap: weight}``, default relu1_1..relu5_1 at 1/5 each.
    * ``content_weight`` (1), ``style_weight`` (100), ``tv_weight`` (100, on the [0, 1] image):
      content/style = 1/100 as neural-style's 5/(5 x 100).
    * ``depth_growth``: if set (e.g. 2.0), replace the style layer weights by Novak & Nikulin's
      depth-growing weights ``growth**i`` (normalized to the same total), "improved NST".
    * ``style_statistic``: ``"gram"`` | ``"centered_gram"`` | ``"both"`` | ``"mean_std"``.
    * ``gram_norm``: ``"chw"`` | ``"hw"`` | ``"none"``; ``tv_kind``: ``"magenta"`` | ``"l1"``.
    * ``pooling``: ``"max"`` (default) or ``"avg"`` (Gatys' choice); ``normalized_vgg``: use the
      mean-activation-normalized VGG (:func:`arbitrary_nst.vgg.load_vgg16`).

    Optimization:

    * ``optimizer``: ``"lbfgs"`` (default) | ``"lbfgs_optax"`` | ``"adam"`` (module docstring).
    * ``iterations`` (500): per stage, unless ``stage_iterations`` is given.
    * ``learning_rate`` (0.02): Adam only, in pixel units.
    * ``lbfgs_memory`` (10), ``max_linesearch_steps`` (20): L-BFGS.
    * ``parameterization``: ``"softclip"`` (default) | ``"sigmoid"`` | ``"clip"``.
    * ``chunk_size`` (25): iterations per compiled chunk (progress is reported between chunks).

    Images:

    * ``init``: ``"content"`` (default) | ``"noise"`` (uniform in [0.2, 0.8], ``seed``) |
      ``"style"`` (the
      example's highest-weighted style resized to the content's size).
    * ``style_scale`` (1.0): the style image's longer side = ``style_scale`` x the content's.
    * ``preserve_color``: ``"none"`` | ``"luminance"`` (stylize the luminance, keep the content's
      chroma in ``color_space`` ``"yiq"``/``"yuv"``: the same result, see
      :func:`~arbitrary_nst.color.transfer_luminance`) | ``"match"`` (match the style's colour
      mean/covariance to the content first, ``color_match_method`` ``"eig"``/``"chol"``).
    * ``stage_sizes``: longer sides of coarser stages run first, increasing, e.g. ``(256, 512)``
      before a 1024 px run; each stage starts from the upsampled result of the previous one.
      Sizes not smaller than the final size are skipped.
    * ``stage_iterations``: iterations of each stage (coarse stages first, then the final);
      default ``iterations`` for every stage.
    """

    content_layers: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"relu4_2": 1.0})
    style_layers: Mapping[str, float] = dataclasses.field(default_factory=_default_style_layers)
    content_weight: float = 1.0
    style_weight: float = 1e2
    tv_weight: float = 1e2
    depth_growth: float | None = None
    style_statistic: losses_lib.StyleStatistic = "gram"
    gram_norm: losses_lib.GramNorm = "chw"
    tv_kind: losses_lib.TVKind = "magenta"
    pooling: vgg_lib.Pooling = "max"
    normalized_vgg: bool = False

    optimizer: Optimizer = "lbfgs"
    iterations: int = 500
    learning_rate: float = 0.02
    lbfgs_memory: int = 10
    max_linesearch_steps: int = 20
    parameterization: Param = "softclip"
    chunk_size: int = 25

    init: Init = "content"
    seed: int = 0
    style_scale: float = 1.0
    preserve_color: PreserveColor = "none"
    color_space: color_lib.ColorSpace = "yiq"
    color_match_method: color_lib.MatchMethod = "eig"
    stage_sizes: tuple[int, ...] = ()
    stage_iterations: tuple[int, ...] | None = None

    def __post_init__(self):
        # Freeze mappings into plain dicts (callers may pass any Mapping) and validate (a
        # list of layers, a string of sizes or a weight "1" gave raw Type/ValueErrors).
        for name in ("content_layers", "style_layers"):
            if not isinstance(getattr(self, name), Mapping):
                raise ConfigError(f"{name} must map layer names to weights (e.g. "
                                  f"{{'relu1_1': 1.0}}), got {getattr(self, name)!r}")
            object.__setattr__(self, name, dict(getattr(self, name)))
        for name in ("stage_sizes", "stage_iterations"):
            v = getattr(self, name)
            if v is None and name == "stage_iterations":
                continue
            if isinstance(v, (str, bytes)) or not all(
                    isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in v):
                raise ConfigError(f"{name} must be a sequence of whole numbers, got {v!r}")
            object.__setattr__(self, name, tuple(int(n) for n in v))
        for name in ("content_weight", "style_weight", "tv_weight"):
            check_weight(getattr(self, name), name)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("init", self.init, INITS)
        _choice("parameterization", self.parameterization, PARAMETERIZATIONS)
        _choice("preserve_color", self.preserve_color, PRESERVE_COLOR)
        _choice("color_space", self.color_space, color_lib.COLOR_SPACES)
        _choice("color_match_method", self.color_match_method, color_lib.MATCH_METHODS)
        _choice("pooling", self.pooling, ("max", "avg"))
        if not self.content_layers and not self.style_layers:
            raise ConfigError("at least one content or style layer is needed")
        for name, layers in (("content", self.content_layers), ("style", self.style_layers)):
            for layer, w in layers.items():
                vgg_lib.tap_depth(layer)
                check_weight(w, f"{name} layer weight {layer}")  # (a string: a TypeError)
        for name, lo, hi in (("iterations", 0, None), ("lbfgs_memory", 1, MAX_LBFGS_MEMORY),
                             ("max_linesearch_steps", 1, MAX_LINESEARCH_STEPS),
                             ("chunk_size", 1, MAX_CHUNK_SIZE), ("seed", 0, MAX_SEED)):
            check_count(getattr(self, name), name, lo, hi, optional=False)
        # finite and > 0: an infinite rate or growth makes every pixel NaN (a black image)
        for name in ("learning_rate", "style_scale", "depth_growth"):
            v = getattr(self, name)
            if not (v is None and name == "depth_growth") and not (
                    isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v < math.inf):
                raise ConfigError(f"{name} must be a finite number > 0, got {v}")
        if self.depth_growth is not None and self.style_layers:
            try:  # (1e100 ** 4 overflowed deep in the loss setup: a traceback)
                if not math.isfinite(sum(self.depth_growth ** i
                                         for i in range(len(self.style_layers)))):
                    raise OverflowError
            except OverflowError:
                raise ConfigError(f"depth_growth {self.depth_growth:g} is too large for "
                                  f"{len(self.style_layers)} style layers (its powers "
                                  "overflow)") from None
        if self.style_scale > MAX_STYLE_SCALE:  # the style image is resized to scale x the side
            raise ConfigError(f"style_scale must be <= {MAX_STYLE_SCALE}, got {self.style_scale}")
        if any(s < vgg_lib.MIN_SIZE for s in self.stage_sizes):
            raise ConfigError(f"stage sizes must be >= {vgg_lib.MIN_SIZE}, got {self.stage_sizes}")
        if any(b <= a for a, b in zip(self.stage_sizes, self.stage_sizes[1:])):  # (as the CLI:
            # (512, 256) ran at 512, then 256, then the final size; (48, 48) twice)
            raise ConfigError(f"stage sizes must be increasing (coarse to fine), got "
                              f"{tuple(self.stage_sizes)}")
        if self.stage_iterations is not None and any(n < 0 for n in self.stage_iterations):
            raise ConfigError(f"stage iterations must be >= 0, got {self.stage_iterations}")
        self.loss_config()  # validates weights, statistic and normalization

    def replace(self, **kw) -> "GatysConfig":
        return dataclasses.replace(self, **kw)

    def effective_style_layers(self) -> dict[str, float]:
        """The style layer weights actually used (depth-growing if ``depth_growth`` is set)."""
        if self.depth_growth is None or not self.style_layers:
            return dict(self.style_layers)
        ordered = sorted(self.style_layers, key=vgg_lib.tap_depth)
        return losses_lib.depth_weighted_layers(ordered, total=sum(self.style_layers.values()),
                                                growth=self.depth_growth)

    def loss_config(self) -> losses_lib.LossConfig:
        return losses_lib.LossConfig(
            content_layers=dict(self.content_layers), style_layers=self.effective_style_layers(),
            content_weight=self.content_weight, style_weight=self.style_weight,
            tv_weight=self.tv_weight, style_statistic=self.style_statistic,
            gram_norm=self.gram_norm, tv_kind=self.tv_kind)


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


@dataclasses.dataclass
class GatysResult:
    """Output of :func:`run`.

    * ``images``: ``[B, H, W, 3]`` float32 in [0, 1], at the content's size.
    * ``history``: one dict per stage ``{term: [n_iterations, B]}`` with the loss after every
      iteration (``total``, weighted ``content``/``style``/``tv``, unweighted per-layer
      ``content/<tap>``, ``style/<tap>``): the last row is the loss of ``images``, except with
      ``preserve_color="luminance"`` (the loss of the luminance image optimized, before the
      content's chroma is put back) and ``"clip"`` under L-BFGS (before the final clip). For
      ``lbfgs_optax`` only ``objective`` (the batch sum,
      ``[n, 1]``) is per iteration and the terms are per chunk (``chunk_end`` holds the indices).
    * ``stages``: ``(height, width)`` of every stage; ``evaluations``: batched VGG
      value-and-gradient evaluations per stage (L-BFGS line searches may use more than one per
      iteration; in a batch, examples whose line search is done go on with their next iteration,
      so this is the largest per-example count, not the sum). ``lbfgs_optax``: -1 (not tracked).
    * ``seconds``: wall time of the optimization loops per stage (compilation included).
    * ``failures``: ``{example index: why}`` of the examples that made no progress or diverged
      (their images are not results), with ``run(..., failures="report")``; the default
      ``"raise"`` raises a ModelError instead, so it is empty then.
    * ``worse_than_start``: ``{example index: why}`` of the examples (not failed) whose Adam
      stage ended with a loss above the one it started from (a learning rate too large: the
      result is worse than its start), with ``failures="report"``; with ``"raise"`` a
      warning says it instead, so it is empty then.
    """

    images: np.ndarray
    history: list[dict[str, np.ndarray]]
    stages: list[tuple[int, int]]
    evaluations: list[int]
    seconds: list[float]
    config: GatysConfig
    failures: dict[int, str] = dataclasses.field(default_factory=dict)
    worse_than_start: dict[int, str] = dataclasses.field(default_factory=dict)

    def final_terms(self) -> dict[str, np.ndarray]:
        """Loss terms ``[B]`` after the last iteration of the last stage."""
        h = self.history[-1]
        return {k: v[-1] for k, v in h.items() if k not in ("chunk_end",) and len(v)}


# ----------------------------------------------------------------------------------------------
# Parameterization


def to_image(z: jax.Array, kind: Param) -> jax.Array:
    """The image ``P(z)`` of the optimization variable (see module docstring)."""
    if kind == "softclip":
        k = SOFTCLIP_SHARPNESS
        return (jax.nn.softplus(k * z) - jax.nn.softplus(k * (z - 1.0))) / k
    if kind == "sigmoid":
        return jax.nn.sigmoid(4.0 * (z - 0.5))
    return z


def from_image(x, kind: Param) -> jax.Array:
    """A ``z`` with ``P(z) = x`` (``x`` clipped to [1e-3, 1 - 1e-3] for the bounded maps)."""
    return _from_image(jnp.asarray(x, jnp.float32), kind)


@functools.partial(jax.jit, static_argnums=(1,))
def _from_image(x: jax.Array, kind: Param) -> jax.Array:
    if kind == "clip":
        return jnp.clip(x, 0.0, 1.0)
    x = jnp.clip(x, 1e-3, 1.0 - 1e-3)
    if kind == "sigmoid":
        return 0.5 + (jnp.log(x) - jnp.log1p(-x)) / 4.0
    # softclip: monotone, so bisection on [-1, 2] (P(-1) ~ 1e-14, P(2) ~ 1 - 1e-14) is exact to
    # float32 after 40 halvings.
    lo, hi = jnp.full_like(x, -1.0), jnp.full_like(x, 2.0)

    def body(_, lh):
        lo, hi = lh
        mid = 0.5 * (lo + hi)
        below = to_image(mid, "softclip") < x
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 40, body, (lo, hi))
    return 0.5 * (lo + hi)


@functools.partial(jax.jit, static_argnums=(1,))
def _final_image(z: jax.Array, kind: Param) -> jax.Array:
    return jnp.clip(to_image(z, kind), 0.0, 1.0)


def _param_image(z: jax.Array, code: jax.Array) -> jax.Array:
    """``P(z)`` with the parameterization chosen by a traced index (all three are cheap
    element-wise maps next to the VGG passes; only the selected one gets gradient)."""
    return jax.lax.switch(code, [functools.partial(to_image, kind=k) for k in PARAMETERIZATIONS],
                          z)


# ----------------------------------------------------------------------------------------------
# VGG forward with a loop-friendly backward pass


def _conv(x: jax.Array, k: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, k.astype(x.dtype), (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def conv_bias(x: jax.Array, k: jax.Array, b: jax.Array) -> jax.Array:
    """3x3 stride-1 SAME convolution plus bias (VGG's layer) whose input gradient is written as
    a plain convolution with the flipped, in/out-transposed kernel.

    Why: JAX's own transpose rule emits the input-gradient convolution with an ``01oi`` kernel
    layout. At the top level of a program XLA:CPU inserts a kernel transpose and runs it with
    its fast convolution kernels, but inside a ``while`` loop body (our compiled iteration
    loop) it does not, and falls back to a generic convolution emitter that is ~4-5x slower
    (measured on jax 0.10 / XLA:CPU: a VGG value-and-gradient costs 4-5x more inside
    ``fori_loop`` than as its own jitted call). The math is identical."""
    return _conv(x, k) + b.astype(x.dtype)


def _conv_bias_fwd(x, k, b):
    return conv_bias(x, k, b), (x, k)


def _conv_bias_bwd(res, g):
    x, k = res
    k_t = jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2).astype(g.dtype)
    dx = _conv(g, k_t)
    _, vjp_k = jax.vjp(lambda kk: _conv(x, kk), k)  # dead code unless weights get gradients
    (dk,) = vjp_k(g)
    db = jnp.sum(g, axis=(0, 1, 2)).astype(k.dtype)
    return dx, dk.astype(k.dtype), db


conv_bias.defvjp(_conv_bias_fwd, _conv_bias_bwd)


def _pool2x2(x: jax.Array, pooling: str) -> jax.Array:
    """2x2/2 VALID pooling as a reshape + reduction. Same values as ``reduce_window``; the
    gradient of the max is a cheap element-wise mask instead of XLA:CPU's slow
    ``select_and_scatter`` (~20% of a VGG value-and-gradient). Where a window has tied maxima,
    the reduction splits the gradient between them (``select_and_scatter`` gives it to one):
    both are subgradients of the max. Ties at zero (after a ReLU) change nothing, the ReLU
    discards their gradient; ties at a positive value, in flat regions of an image (a sky, a
    border, a synthetic image), give another pixel gradient than :func:`vgg.features`' (46%
    relative L2 on a half-flat image), equal elsewhere (values equal everywhere)."""
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    blocks = x[:, : 2 * h2, : 2 * w2].reshape(b, h2, 2, w2, 2, c)
    return blocks.max(axis=(2, 4)) if pooling == "max" else blocks.mean(axis=(2, 4))


def vgg_features(params, images: jax.Array, taps: Sequence[str], *,
                 pooling: str = "max") -> dict[str, jax.Array]:
    """:func:`arbitrary_nst.vgg.features` (same taps, preprocessing and pooling: values checked
    equal in the tests) with :func:`conv_bias` and :func:`_pool2x2`, for value-and-gradient
    inside compiled loops. Gradients are equal except at tied maxima of the pooling windows (flat
    image regions), where each routes them another valid way (:func:`_pool2x2`)."""
    return vgg_lib.features(params, images, taps, pooling=pooling, conv_fn=conv_bias,
                            pool_fn=_pool2x2)


# ----------------------------------------------------------------------------------------------
# The objective


def _objective(params, z, content_feats, style_targets, w, *, struct: tuple, pooling: str):
    """Per-example loss ``[B]`` and terms of the images ``P(z)``.

    The layer sets are static (``struct``); every weight is data (``w``, one value per example),
    so configurations that differ only in weights share one compiled program, and a batch may
    mix weightings (the analysis figures run a whole weight sweep as one batch). The pixel
    parameterization is data too (``w["param"]``, an index into :data:`PARAMETERIZATIONS`).

    The terms are those of :func:`arbitrary_nst.losses.perceptual_loss` (same primitives: feature
    MSE, :func:`~arbitrary_nst.losses.style_statistic` distances, total variation), except that
    with ``style_statistic="both"`` the Gram and centered-Gram parts have per-example weights
    ``w["gram_part"]``, ``w["centered_part"]`` (1 and 1 = "both"; 1, 0 = Gram; 0, 1 = centered),
    so the analysis figures compare the three in one batch."""
    x = _param_image(z, w["param"])
    content_layers, style_layers, statistic, gram_norm, tv_kind = struct
    taps = []
    if content_feats is not None:
        taps += list(content_layers)
    if style_targets is not None:
        taps += list(style_layers)
    feats = vgg_features(params, x, tuple(dict.fromkeys(taps)), pooling=pooling)
    b = z.shape[0]
    content = jnp.zeros((b,), jnp.float32)
    style = jnp.zeros((b,), jnp.float32)
    terms = {}
    if content_feats is not None:
        for layer in content_layers:
            v = losses_lib.content_loss(feats[layer], content_feats[layer])
            terms[f"content/{layer}"] = v
            content = content + w["content_layers"][layer] * v
    if style_targets is not None:
        for layer in style_layers:
            stat = losses_lib.style_statistic(feats[layer], statistic, gram_norm)
            target = style_targets.stats[layer]
            if statistic == "both":
                v = sum(w[f"{part}_part"] * losses_lib.statistic_distance(
                    {key: stat[key]}, {key: target[key]})
                    for part, key in (("gram", "gram"), ("centered", "centered_gram")))
            else:
                v = losses_lib.statistic_distance(stat, target)
            terms[f"style/{layer}"] = v
            style = style + w["style_layers"][layer] * v
    terms["content"] = w["content"] * content
    terms["style"] = w["style"] * style
    terms["tv"] = w["tv"] * losses_lib.total_variation(x, tv_kind)
    total = terms["content"] + terms["style"] + terms["tv"]
    terms["total"] = total
    return total, terms


def _value_and_grad(params, z, cf, st, w, **kw):
    """``((total [B], terms), grad [B, H, W, 3])``: the gradient of the batch sum, which is the
    per-example gradient since examples do not interact."""
    def f(z):
        total, terms = _objective(params, z, cf, st, w, **kw)
        return jnp.sum(total), (total, terms)

    (_, aux), g = jax.value_and_grad(f, has_aux=True)(z)
    return aux, g


def _bdot(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-example inner product of ``[B, ...]`` arrays: ``[B]``."""
    return jnp.sum((a * b).reshape(a.shape[0], -1), axis=1)


def _bcast(v: jax.Array, like: jax.Array) -> jax.Array:
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def _where_b(mask: jax.Array, a, b):
    """Per-example select over pytrees whose leaves have a leading batch axis."""
    return jax.tree.map(lambda x, y: jnp.where(_bcast(mask, x), x, y), a, b)


def _write_hist(hist: dict, idx: jax.Array, mask: jax.Array, values: dict) -> dict:
    """``hist[k][idx[b], b] = values[k][b]`` where ``mask[b]``."""
    cols = jnp.arange(mask.shape[0])
    out = {}
    for k, h in hist.items():
        cur = h[idx, cols]
        out[k] = h.at[idx, cols].set(jnp.where(mask, values[k].astype(h.dtype), cur))
    return out


# ----------------------------------------------------------------------------------------------
# Compiled chunks


@functools.lru_cache(maxsize=64)
def _chunk_fn(kind: str, struct: tuple, pooling: str, chunk: int, memory: int,
              max_ls: int):
    """The jitted chunk function for one static configuration (cached; jit re-traces per shape).
    Arguments: ``(vgg params, state, content feats, style targets, weights, n_iterations)``;
    the state is donated."""
    kw = dict(struct=struct, pooling=pooling)
    if kind == "lbfgs":
        fn = functools.partial(_lbfgs_chunk, kw=kw, chunk=chunk, memory=memory, max_ls=max_ls)
    elif kind == "lbfgs_optax":
        fn = functools.partial(_optax_lbfgs_chunk, kw=kw, chunk=chunk, memory=memory,
                               max_ls=max_ls)
    else:
        fn = functools.partial(_adam_chunk, kw=kw, chunk=chunk)
    return jax.jit(fn, donate_argnums=(1,))


def _struct_key(lcfg: losses_lib.LossConfig) -> tuple:
    return (tuple(lcfg.content_layers), tuple(lcfg.style_layers), lcfg.style_statistic,
            lcfg.gram_norm, lcfg.tv_kind)


def _term_names(struct: tuple, has_content: bool, has_style: bool) -> list[str]:
    names = ["total", "content", "style", "tv"]
    if has_content:
        names += [f"content/{layer}" for layer in struct[0]]
    if has_style:
        names += [f"style/{layer}" for layer in struct[1]]
    return names


def _empty_hist(names, chunk: int, b: int) -> dict:
    return {k: jnp.full((chunk, b), jnp.nan, jnp.float32) for k in names}


def _lbfgs_opt(memory: int) -> optax.GradientTransformation:
    return optax.scale_by_lbfgs(memory_size=memory)


def _lbfgs_init_state(z: jax.Array, memory: int, names: Sequence[str]) -> dict:
    """Per-example L-BFGS + line-search state for ``z`` ``[B, H, W, 3]`` (not yet evaluated).
    Every leaf is its own buffer (the state is donated to the chunk function)."""
    b = z.shape[0]
    zeros = lambda: jnp.zeros_like(z)  # noqa: E731
    vec = lambda v=0.0, dtype=jnp.float32: jnp.full((b,), v, dtype)  # noqa: E731
    terms = lambda: {k: vec() for k in names}  # noqa: E731
    return dict(z=jnp.array(z, copy=True), f=vec(jnp.inf), g=zeros(), d=zeros(), slope=vec(),
                t=vec(), lo=vec(), hi=vec(jnp.inf), ls=vec(0, jnp.int32),
                cand_t=vec(), cand_f=vec(jnp.inf), cand_g=zeros(), cand_terms=terms(),
                started=vec(False, bool), it=vec(0, jnp.int32), evals=vec(0, jnp.int32),
                steps=jnp.zeros((), jnp.int32),
                steep=vec(True, bool), stalled=vec(False, bool),
                opt=jax.vmap(_lbfgs_opt(memory).init)(z), terms=terms())


C1, C2 = 1e-4, 0.9  # Armijo and (weak) curvature constants of the line search
FIRST_STEP_RMS = 0.05  # RMS pixel change of the first trial step along a gradient direction


def _lbfgs_chunk(params, state, cf, st, w, n, *, kw, chunk, memory, max_ls):
    """Run every example's L-BFGS until it has done ``n`` more iterations (one batched
    value-and-gradient evaluation per loop step; see module docstring)."""
    opt = _lbfgs_opt(memory)
    z0 = state["z"]
    b = z0.shape[0]
    names = _term_names(kw["struct"], cf is not None, st is not None)
    hist = _empty_hist(names, chunk, b)
    it0 = state["it"]
    target = it0 + n
    init_opt = jax.vmap(opt.init)(z0)

    def cond(carry):
        s, _, steps = carry
        return jnp.any(s["it"] < target) & (steps < chunk * (max_ls + 1) + 1)

    def body(carry):
        s, hist, steps = carry
        active = s["it"] < target
        z, d = s["z"], s["d"]
        t = jnp.where(s["started"], s["t"], 0.0)
        x_try = z + _bcast(t, z) * d
        (f_try, terms_try), g_try = _value_and_grad(params, x_try, cf, st, w, **kw)
        terms_try = {k: terms_try[k] for k in names}
        # a stalled example (below) does its iterations without a search: one loop step each,
        # no evaluation of its own (it no longer holds the batch for max_ls evaluations each)
        stalled = active & s["stalled"]
        evals = s["evals"] + (active & ~stalled).astype(jnp.int32)

        # --- the initial evaluation of an example (not an iteration) ---
        first = active & ~s["started"]

        # --- line-search bookkeeping for started examples ---
        searching = active & s["started"] & ~stalled
        finite = jnp.isfinite(f_try) & jnp.all(jnp.isfinite(g_try).reshape(b, -1), axis=1)
        slope_try = _bdot(g_try, d)
        armijo = finite & (f_try <= s["f"] + C1 * t * s["slope"] + 1e-6 * jnp.abs(s["f"]))
        curv = slope_try >= C2 * s["slope"]
        # a step along a memory-less direction (first iteration, after a reset) is a gradient
        # step of a heuristic length (t_first below): Armijo is enough there (the L-BFGS scaling
        # of the next iteration sets the step length; s.y > 0 is checked below anyway), which
        # saves the doublings the curvature condition could need.
        wolfe = armijo & (curv | s["steep"])
        better = searching & armijo & (f_try < s["cand_f"])
        cand_t = jnp.where(better, t, s["cand_t"])
        cand_f = jnp.where(better, f_try, s["cand_f"])
        cand_g = _where_b(better, g_try, s["cand_g"])
        cand_terms = _where_b(better, terms_try, s["cand_terms"])
        ls = s["ls"] + searching.astype(jnp.int32)
        finish = (searching & (wolfe | (ls >= max_ls))) | stalled
        # the point an example moves to when its search finishes: the Wolfe point, else the best
        # Armijo point seen, else no move (t = 0: then the memory is reset below)
        use_try = finish & wolfe & ~stalled
        use_cand = finish & ~wolfe & (cand_t > 0) & ~stalled
        # no Armijo point along a memory-less (gradient) direction, down to 2^-max_ls of a step
        # of FIRST_STEP_RMS: the example is at a minimum for float32 (a photo stylized with
        # itself). The next iteration would retry the identical step and fail again, max_ls + 1
        # evaluations each that every example of the batch waited for (12-25x slower): it stays
        # where it is for the rest of the stage.
        stalled_new = s["stalled"] | (finish & ~use_try & ~use_cand & s["steep"])
        t_new = jnp.where(use_try, t, jnp.where(use_cand, cand_t, 0.0))
        f_acc = jnp.where(use_try, f_try, jnp.where(use_cand, cand_f, s["f"]))
        g_acc = _where_b(use_try, g_try, _where_b(use_cand, cand_g, s["g"]))
        terms_acc = _where_b(use_try, terms_try, _where_b(use_cand, cand_terms, s["terms"]))
        z_acc = z + _bcast(t_new, z) * d

        # --- bracketing for examples still searching ---
        cont = searching & ~finish
        hi = jnp.where(cont & ~armijo, t, s["hi"])
        lo = jnp.where(cont & armijo & ~curv, t, s["lo"])
        t_next = jnp.where(jnp.isfinite(hi), 0.5 * (lo + hi), 2.0 * t)

        # --- new iterate (first evaluation or finished search): next L-BFGS direction ---
        accept = first | finish
        z_new = _where_b(finish, z_acc, z)
        f_new = jnp.where(first, f_try, jnp.where(finish, f_acc, s["f"]))
        g_new = _where_b(first, g_try, _where_b(finish, g_acc, s["g"]))
        terms_new = _where_b(first, terms_try, _where_b(finish, terms_acc, s["terms"]))
        sy = _bdot(z_new - z, g_new - s["g"])
        reset = finish & ~(sy > 1e-10)
        opt_in = _where_b(reset, init_opt, s["opt"])
        upd, opt_out = jax.vmap(opt.update)(g_new, opt_in, z_new)
        d_new = -upd
        slope_new = _bdot(g_new, d_new)
        # not a descent direction (numerically): restart from a capped gradient step
        steep = opt_in.count == 0  # the direction below is memory-less
        bad = accept & ~(slope_new < 0)
        gnorm = jnp.sqrt(_bdot(g_new, g_new))
        d_new = _where_b(bad, -g_new * _bcast(jnp.minimum(1.0, 1.0 / (gnorm + 1e-30)), g_new),
                         d_new)
        opt_out = _where_b(bad, init_opt, opt_out)
        # first trial step: 1 (L-BFGS' natural step) after a memory-ful direction; along a
        # memory-less (capped gradient) direction, a step with an RMS pixel change of
        # FIRST_STEP_RMS: optax's cap (norm <= 1) is tiny for large images
        n_pix = math.prod(z.shape[1:])
        dnorm = jnp.sqrt(_bdot(d_new, d_new))
        t_first = jnp.where(steep | bad,
                            jnp.maximum(1.0, FIRST_STEP_RMS * math.sqrt(n_pix) / (dnorm + 1e-30)),
                            1.0)
        slope_new = jnp.where(bad, -gnorm * jnp.minimum(1.0, 1.0 / (gnorm + 1e-30)), slope_new)

        it = s["it"] + finish.astype(jnp.int32)
        hist = _write_hist(hist, jnp.clip(s["it"] - it0, 0, chunk - 1), finish, terms_new)
        zero = jnp.zeros_like(t)
        new = dict(
            z=z_new, f=f_new, g=g_new, terms=terms_new,
            d=_where_b(accept, d_new, d), slope=jnp.where(accept, slope_new, s["slope"]),
            t=jnp.where(accept, t_first, jnp.where(cont, t_next, s["t"])),
            lo=jnp.where(accept, zero, lo), hi=jnp.where(accept, jnp.inf, hi),
            ls=jnp.where(accept, 0, ls),
            cand_t=jnp.where(accept, zero, cand_t),
            cand_f=jnp.where(accept, jnp.inf, cand_f), cand_g=cand_g, cand_terms=cand_terms,
            started=s["started"] | first, it=it, evals=evals, steps=s["steps"],
            steep=jnp.where(accept, steep | bad, s["steep"]), stalled=stalled_new,
            opt=_where_b(accept, opt_out, s["opt"]))
        return new, hist, steps + 1

    state, hist, steps = jax.lax.while_loop(cond, body, (state, hist, jnp.asarray(0)))
    state = dict(state, steps=state["steps"] + steps)
    return state, hist


def _optax_lbfgs_tx(memory: int, max_ls: int) -> optax.GradientTransformationExtraArgs:
    return optax.lbfgs(memory_size=memory,
                       linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=max_ls))


def _optax_lbfgs_chunk(params, state, cf, st, w, n, *, kw, chunk, memory, max_ls):
    """``optax.lbfgs`` (zoom line search) on the batch-sum objective: the optax docs pattern."""
    tx = _optax_lbfgs_tx(memory, max_ls)
    fsum = lambda z: jnp.sum(_objective(params, z, cf, st, w, **kw)[0])  # noqa: E731
    value_and_grad = optax.value_and_grad_from_state(fsum)

    def body(i, carry):
        z, opt_state, hist = carry
        value, grad = value_and_grad(z, state=opt_state)
        updates, opt_state = tx.update(grad, opt_state, z, value=value, grad=grad, value_fn=fsum)
        z = optax.apply_updates(z, updates)
        new_value = optax.tree_utils.tree_get(opt_state, "value")
        return z, opt_state, hist.at[i].set(new_value)

    hist = jnp.full((chunk, 1), jnp.nan, jnp.float32)
    z, opt_state, hist = jax.lax.fori_loop(0, n, lambda i, c: body(i, c),
                                           (state["z"], state["opt"], hist))
    _, terms = _objective(params, z, cf, st, w, **kw)
    return dict(z=z, opt=opt_state), {"objective": hist, "terms": terms}


def _adam_chunk(params, state, cf, st, w, n, *, kw, chunk):
    """``n`` Adam steps. History row ``i`` holds the loss after step ``i + 1``: a step's
    gradient evaluation gives the loss of the iterate *before* it (that of the previous step's
    result), so the buffer has one more row, row 0 (the chunk's start, already reported) is
    dropped (kept as the state's ``start``: the first chunk's is the loss the stage started
    from), and the final iterate is evaluated once more (one forward pass per chunk)."""
    tx = optax.adam(w["lr"])
    z0 = state["z"]
    names = _term_names(kw["struct"], cf is not None, st is not None)
    hist = _empty_hist(names, chunk + 1, z0.shape[0])
    clip = w["param"] == PARAMETERIZATIONS.index("clip")

    def body(i, carry):
        z, opt_state, hist = carry
        (_, terms), g = _value_and_grad(params, z, cf, st, w, **kw)
        updates, opt_state = tx.update(g, opt_state, z)
        z = optax.apply_updates(z, updates)
        z = jnp.where(clip, jnp.clip(z, 0.0, 1.0), z)  # projected step for "clip"
        hist = {k: h.at[i].set(terms[k]) for k, h in hist.items()}  # (the loss before step i)
        return z, opt_state, hist

    z, opt_state, hist = jax.lax.fori_loop(0, n, body, (z0, state["opt"], hist))
    _, terms = _objective(params, z, cf, st, w, **kw)  # the loss of the returned iterate
    start = hist["total"][0]
    hist = {k: h.at[n].set(terms[k])[1:] for k, h in hist.items()}
    return dict(z=z, opt=opt_state, start=start), hist


# ----------------------------------------------------------------------------------------------
# Inputs


def _pil_or_array(x, what: str):
    """A PIL image -> float32 RGB (any mode: a palette image's raw indices were optimized as
    pixels; one that cannot be decoded is an ImageError named ``what``); a file name -> a clear
    error (it was taken as a list of characters); arrays as they are."""
    from PIL import Image

    if isinstance(x, Image.Image):
        return _array_to_float(x, what)
    if isinstance(x, (str, bytes, os.PathLike)):
        raise ConfigError(f"gatys.run takes images, not file names ({x!r}): load them with "
                          "arbitrary_nst.images.load_image")
    return x


def _array_to_float(x, what: str) -> np.ndarray:
    """:func:`images.array_to_float` (:func:`images.to_float` for a PIL image) with an
    ImageError about the array saying which input it is (``style image 2: float image values
    must be in [0, 1] ...``; it named none), as the Stylizer's errors do."""
    from PIL import Image

    try:
        if isinstance(x, Image.Image):
            return images_lib.to_float(x)
        return images_lib.array_to_float(x)
    except ImageError as e:
        if e.path is not None:
            raise
        raise ImageError(what, e.reason) from None


def _style_label(style_names, j: int) -> str:
    """How messages call the ``j``-th style image (of a list; per example: within its list)."""
    if style_names is not None and j < len(style_names):
        return str(style_names[j])
    return f"style image {j + 1}"


def _as_batch(content, what: str = "content image") -> np.ndarray:
    content = _pil_or_array(content, what)
    if isinstance(content, (list, tuple)):
        content = [_pil_or_array(c, f"{what} {i + 1}") for i, c in enumerate(content)]
        if not content:
            raise ConfigError("no content images given")
        arrs = [_array_to_float(c, f"{what} {i + 1}") for i, c in enumerate(content)]
        shapes = {a.shape for a in arrs}
        if len(shapes) != 1:
            raise ConfigError(f"content images of one batch must have the same size, got "
                              f"{sorted(shapes)}; resize them first (the CLI groups by size)")
        x = np.stack(arrs)
    else:
        x = np.asarray(content)
        if x.ndim == 4 and x.shape[0] > 0:
            x = np.stack([_array_to_float(c, f"{what} {i + 1}" if len(x) > 1 else what)
                          for i, c in enumerate(x)])
        elif x.ndim in (2, 3):
            x = _array_to_float(x, what)[None]
        else:
            raise ConfigError(f"{what} must be [B, H, W, 3] or a list of [H, W, 3], got "
                              f"{x.shape}")
    if min(x.shape[1:3]) < vgg_lib.MIN_SIZE:  # (an init image's was said to be the content's)
        raise ConfigError(f"{what}s must be at least {vgg_lib.MIN_SIZE} px on each side, "
                          f"got {x.shape[2]}x{x.shape[1]}")  # (width x height, as elsewhere)
    return x


def _is_image(a) -> bool:
    return hasattr(a, "shape") and len(a.shape) in (2, 3)  # (H x W: grey, not a list of rows)


def _weights_array(w) -> np.ndarray:
    try:
        return np.atleast_1d(np.asarray(w, np.float64))
    except (TypeError, ValueError):
        raise ConfigError(f"style weights must be numbers, got {w!r}") from None


def _per_example_styles(styles, style_weights, b: int, style_names=None
                        ) -> list[tuple[list[np.ndarray], np.ndarray]]:
    """Normalize ``styles``/``style_weights`` to ``[(style images, weights summing to 1)] * B``;
    an unusable style array is named by ``style_names`` (:func:`_style_label`)."""
    styles = _pil_or_array(styles, _style_label(style_names, 0))
    if _is_image(styles):
        styles = [styles]
    styles = list(styles) if styles is not None else []
    styles = [_pil_or_array(s, _style_label(style_names, j)) if not isinstance(s, (list, tuple))
              else [_pil_or_array(x, _style_label(style_names, k)) for k, x in enumerate(s)]
              for j, s in enumerate(styles)]
    if not styles:
        raise ConfigError("at least one style image is needed")
    if all(_is_image(s) for s in styles):
        per = [list(styles)] * b
        w = style_weights
        if w is None:
            ws = [np.ones(len(styles))] * b
        else:
            w = _weights_array(w)
            if w.ndim == 1:
                ws = [w] * b
            elif w.ndim == 2 and w.shape[0] == b:
                ws = list(w)
            else:
                raise ConfigError(f"style weights must be [S] or [B, S], got shape {w.shape}")
    else:
        if len(styles) != b:
            raise ConfigError(f"per-example styles: got {len(styles)} style lists for {b} "
                              "content images")
        per = [[s] if _is_image(s) else list(s) for s in styles]
        if style_weights is None:
            ws = [np.ones(len(p)) for p in per]
        else:
            if not isinstance(style_weights, Sequence) and not (  # (1.0: a raw TypeError)
                    isinstance(style_weights, np.ndarray) and style_weights.ndim >= 1):
                raise ConfigError(f"per-example style weights must be one list per content "
                                  f"image, got {type(style_weights).__name__}")
            if len(style_weights) != b:
                raise ConfigError(f"per-example style weights: got {len(style_weights)} lists "
                                  f"for {b} content images")
            ws = [_weights_array(w) for w in style_weights]
    out = []
    for imgs, w in zip(per, ws):
        if len(w) != len(imgs):
            raise ConfigError(f"got {len(w)} style weights for {len(imgs)} style images")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.max() <= 0:
            raise ConfigError(f"style weights must be >= 0 with a positive sum, got "
                              f"{w.tolist()}")
        w = w / w.max()  # first: the sum of two weights of 1e308 overflowed (all weights 0)
        arrs = [_array_to_float(s, _style_label(style_names, j)) for j, s in enumerate(imgs)]
        out.append((arrs, (w / w.sum()).astype(np.float32)))
    return out


def _stage_shape(hw: tuple[int, int], side: int) -> tuple[int, int]:
    h, w = hw
    s = side / max(h, w)
    return max(vgg_lib.MIN_SIZE, round(h * s)), max(vgg_lib.MIN_SIZE, round(w * s))


def stage_plan(config: GatysConfig, hw: tuple[int, int]) -> list[tuple[tuple[int, int], int]]:
    """``[((h, w), iterations)]`` of every stage for a final size ``hw``."""
    coarse = [s for s in config.stage_sizes if s < max(hw)]
    shapes = [_stage_shape(hw, s) for s in coarse] + [tuple(hw)]
    if config.stage_iterations is None:
        iters = [config.iterations] * len(shapes)
    else:
        its = list(config.stage_iterations)
        if len(its) == len(config.stage_sizes) + 1 and len(coarse) < len(config.stage_sizes):
            # coarse stages skipped because they are not smaller than the final size
            keep = [i for i, s in enumerate(config.stage_sizes) if s < max(hw)]
            its = [its[i] for i in keep] + [its[-1]]
        if len(its) != len(shapes):
            raise ConfigError(f"stage_iterations needs {len(config.stage_sizes) + 1} values "
                              f"(coarse stages, then the final), got {len(config.stage_iterations)}")
        iters = its
    return list(zip(shapes, iters))


def _resize_batch(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if x.shape[1:3] == tuple(hw):
        return x
    return images_lib.resize(x, hw)


_features_jit = jax.jit(vgg_lib.features, static_argnames=("taps", "pooling", "dtype",
                                                           "preprocessed"))


def _style_stats(params, img: np.ndarray, lcfg, pooling) -> dict:
    feats = _features_jit(params, jnp.asarray(img)[None], tuple(lcfg.style_layers),
                          pooling=pooling)
    return losses_lib.StyleTargets.from_features(feats, lcfg).stats


def _stage_targets(params, content_s: np.ndarray, per_styles, cfg: GatysConfig, lcfg,
                   want_content: bool, want_style: bool, style_names=None):
    """Content features ``{tap: [B, ...]}`` and blended per-example :class:`StyleTargets`."""
    cf = None
    if want_content:
        cf = _features_jit(params, jnp.asarray(content_s), tuple(lcfg.content_layers),
                           pooling=cfg.pooling)
    if not want_style:
        return cf, None
    side = max(content_s.shape[1:3])
    target_side = max(vgg_lib.MIN_SIZE, round(cfg.style_scale * side))
    if target_side > MAX_STYLE_SIDE:
        raise ConfigError(f"style scale {cfg.style_scale} x the content's {side} px = "
                          f"{target_side} px for the style image, above {MAX_STYLE_SIDE}: "
                          "lower the style scale or the size")
    cache: dict[Any, dict] = {}
    per_example = []
    for b, (imgs, w) in enumerate(per_styles):
        mixed = None
        for j, (s, wj) in enumerate(zip(imgs, w)):
            if wj == 0:
                continue
            dependent = cfg.preserve_color != "none"
            key = (id(s), b if dependent else None)
            if key not in cache:
                x = images_lib.resize_max_side(s, target_side, upscale=True)
                if min(x.shape[:2]) < vgg_lib.MIN_SIZE:
                    name = _style_label(style_names, j)
                    raise ConfigError(
                        f"{name} is {x.shape[1]}x{x.shape[0]} when scaled to the content's "
                        f"{side} px x style scale {cfg.style_scale:g}; VGG needs >= "
                        f"{vgg_lib.MIN_SIZE} px per side: a larger content size or style "
                        "scale, or a less elongated style image")
                if cfg.preserve_color == "luminance":
                    x = np.asarray(color_lib.match_luminance(x, content_s[b]))
                elif cfg.preserve_color == "match":
                    x = np.asarray(color_lib.match_color(x, content_s[b],
                                                         cfg.color_match_method))
                cache[key] = _style_stats(params, x, lcfg, cfg.pooling)
            part = jax.tree.map(lambda a: float(wj) * a, cache[key])
            mixed = part if mixed is None else jax.tree.map(jnp.add, mixed, part)
        per_example.append(mixed)
    stats = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *per_example)
    return cf, losses_lib.StyleTargets(stats)


NOISE_RANGE = (0.2, 0.8)

#: Upper bounds of the optimizer's sizes: each is a buffer or a loop bound (L-BFGS keeps
#: ``memory`` copies of the image twice; the history buffer holds a chunk; the line search's
#: step counter is int32), far above any useful value, so a typo is an error, not an OOM kill.
MAX_LBFGS_MEMORY = 100
MAX_LINESEARCH_STEPS = 1000
MAX_CHUNK_SIZE = 10_000
#: ``style_scale`` bound: the style image is resized to ``style_scale`` x the content's side.
MAX_STYLE_SCALE = 8.0
#: The longest side a style image is resized to (``style_scale`` x the content's longer side).
MAX_STYLE_SIDE = 4096


def noise_image(shape, seed: int = 0) -> np.ndarray:
    """White noise, uniform in :data:`NOISE_RANGE`: away from 0 and 1, where the bounded pixel
    maps are flat (a pixel started at 0.001 would hardly move), so every pixel starts free."""
    rng = np.random.default_rng(seed)
    return rng.uniform(*NOISE_RANGE, size=shape).astype(np.float32)


def _init_images(cfg: GatysConfig, content_s: np.ndarray, per_styles) -> np.ndarray:
    b, h, w, _ = content_s.shape
    if cfg.init == "content":
        return content_s
    if cfg.init == "noise":  # the same noise for every example: as if each ran alone
        return np.repeat(noise_image((1, h, w, 3), cfg.seed), b, axis=0)
    out = []
    for imgs, wts in per_styles:
        s = imgs[int(np.argmax(wts))]
        out.append(images_lib.resize(s, (h, w)))
    x = np.stack(out)
    if cfg.preserve_color == "luminance":
        x = np.asarray(color_lib.gray_rgb(x))
    return x


# ----------------------------------------------------------------------------------------------
# Driver


ProgressFn = Callable[[dict], None]


def load_params(config: GatysConfig) -> dict:
    """The VGG16 weights for ``config`` (normalized if asked) as a jax pytree."""
    return vgg_lib.load_vgg16(pooling=config.pooling, normalized=config.normalized_vgg).params()


def loss_weights(config: GatysConfig, b: int, overrides: Sequence[Mapping] | None = None) -> dict:
    """Per-example weights ``{"content", "style", "tv": [B], "content_layers", "style_layers":
    {tap: [B]}, "lr": scalar}`` from ``config``, with optional per-example ``overrides`` (each a
    mapping with any of ``content_weight``, ``style_weight``, ``tv_weight``, ``content_layers``,
    ``style_layers``; override layers must be among the config's, the others get weight 0; with
    ``style_statistic="both"`` also ``gram_weight`` and ``centered_weight``, default 1 each)."""
    if overrides is not None and len(overrides) != b:
        raise ConfigError(f"got {len(overrides)} per-example overrides for {b} examples")
    known = {"content_weight", "style_weight", "tv_weight", "content_layers", "style_layers",
             "gram_weight", "centered_weight"}
    base_c = dict(config.content_layers)
    base_s = config.effective_style_layers()
    rows = []
    for i in range(b):
        # (checked as the config's own weights are: a negative layer weight ran, pushing the
        # image away from the style; NaN ended as "diverged"; a string, None or a non-mapping
        # override were raw Value/TypeErrors)
        if overrides is not None and not isinstance(overrides[i], Mapping):
            raise ConfigError(f"per-example override {i} must be a mapping (e.g. "
                              f"{{'style_weight': 1e4}}), got {type(overrides[i]).__name__}")
        o = dict(overrides[i]) if overrides is not None else {}
        unknown = set(o) - known
        if unknown:
            raise ConfigError(f"unknown per-example override(s): {sorted(unknown)}")
        what = f"per-example override {i}: " if overrides is not None else ""
        row = {k: check_weight(o.get(f"{k}_weight", default), f"{what}{k}_weight")
               for k, default in (("content", config.content_weight),
                                  ("style", config.style_weight), ("tv", config.tv_weight),
                                  ("gram", 1.0), ("centered", 1.0))}
        if ({"gram_weight", "centered_weight"} & set(o)) and config.style_statistic != "both":
            raise ConfigError("gram_weight/centered_weight overrides need style_statistic='both'")
        for key, base, name in (("content_layers", base_c, "content"),
                                ("style_layers", base_s, "style")):
            if not isinstance(o.get(key, base), Mapping):
                raise ConfigError(f"{what}{key} must map layer names to weights, got "
                                  f"{type(o[key]).__name__}")
            layers = dict(o.get(key, base))
            extra = set(layers) - set(base)
            if extra:
                raise ConfigError(f"per-example {name} layers {sorted(extra)} are not among the "
                                  f"config's {name} layers {list(base)}")
            row[key] = {layer: check_weight(layers.get(layer, 0.0),
                                            f"{what}{name} layer weight {layer}")
                        for layer in base}
        rows.append(row)
    vec = lambda f: jnp.asarray([f(r) for r in rows], jnp.float32)  # noqa: E731
    return {"content": vec(lambda r: r["content"]), "style": vec(lambda r: r["style"]),
            "tv": vec(lambda r: r["tv"]), "gram_part": vec(lambda r: r["gram"]),
            "centered_part": vec(lambda r: r["centered"]),
            "content_layers": {k: vec(lambda r, k=k: r["content_layers"][k]) for k in base_c},
            "style_layers": {k: vec(lambda r, k=k: r["style_layers"][k]) for k in base_s},
            "lr": jnp.asarray(config.learning_rate, jnp.float32),
            "param": jnp.asarray(PARAMETERIZATIONS.index(config.parameterization), jnp.int32)}


def run(content, styles, *, style_weights=None, config: GatysConfig | None = None,
        progress: bool | ProgressFn = True, vgg_params=None,
        overrides: Sequence[Mapping] | None = None, init_image=None,
        style_names: Sequence[str] | None = None, failures: str = "raise") -> GatysResult:
    """Stylize a batch by pixel optimization.

    Args:
      content: ``[B, H, W, 3]`` or ``[H, W, 3]`` array, or a list of same-size ``[H, W, 3]``
        images: uint8, or float RGB in [0, 1] (read by :func:`images.array_to_float`: 0..255
        floats are refused, not clipped). The result has this size (coarser stages are resized
        from it).
      styles: style images ``[h, w, 3]`` (any sizes): one image or a list shared by every example,
        or a list of ``B`` lists (per-example styles).
      style_weights: blend weights, ``[S]`` or ``[B, S]`` for shared styles or ``B`` lists for
        per-example styles; normalized to sum 1; default equal.
      config: :class:`GatysConfig` (default options if ``None``).
      progress: ``True`` for a tqdm bar (iteration and loss terms), ``False`` for none, or a
        callable receiving ``{"stage", "iteration", "total_iterations", "terms"}`` after every
        chunk.
      vgg_params: VGG16 weights pytree (default :func:`load_params`), e.g. to share them.
      overrides: optional per-example loss weights (see :func:`loss_weights`), e.g. a weight sweep
        or one reconstruction layer per example, all in one batch and one compiled program.
      init_image: optional ``[B, H, W, 3]`` (or ``[H, W, 3]``) start images overriding
        ``config.init`` (resized to the first stage; e.g. different inits within one batch).
      style_names: what messages call the style images (e.g. their files), in ``styles``'
        order (per example: the order within each list); default "style image 1", ...
      failures: ``"raise"`` (default): an example that made no progress or diverged is a
        ModelError for the whole batch; ``"report"``: they are in ``result.failures`` (index:
        why) and the others' results are returned (a batch of files skips those files).
    """
    cfg = GatysConfig() if config is None else config
    if failures not in ("raise", "report"):
        raise ConfigError(f"failures must be 'raise' or 'report', got {failures!r}")
    if not isinstance(cfg, GatysConfig):  # (a dict: an AttributeError deep inside)
        raise ConfigError(f"config must be a gatys.GatysConfig (e.g. GatysConfig(iterations=3)), "
                          f"got {type(cfg).__name__}")
    x_content = _as_batch(content)
    b, h, w, _ = x_content.shape
    per_styles = _per_example_styles(styles, style_weights, b, style_names)
    lcfg = cfg.loss_config()
    weights = loss_weights(cfg, b, overrides)
    want_content = bool(lcfg.content_layers) and bool(jnp.any(weights["content"] > 0))
    want_style = bool(lcfg.style_layers) and bool(jnp.any(weights["style"] > 0))
    if not (want_content or want_style):
        raise ConfigError("both the content and the style weight are 0: nothing to optimize")
    params = load_params(cfg) if vgg_params is None else vgg_params
    params = jax.tree.map(jnp.asarray, params)
    if init_image is not None:
        init_image = _as_batch(init_image, "init image")
        if init_image.shape[0] != b:
            raise ConfigError(f"init_image has {init_image.shape[0]} images for {b} examples")
    plan = stage_plan(cfg, (h, w))
    total_iters = sum(n for _, n in plan)

    bar = None
    if progress is True:
        bar = progress_bar(total=total_iters, desc="gatys", unit="it", dynamic_ncols=True)
    report = progress if callable(progress) else None

    lum = cfg.preserve_color == "luminance"
    history, stages, evaluations, seconds = [], [], [], []
    x_prev = None
    done_iters = 0
    stuck: list[int] = []
    rose: dict[int, float] = {}  # example -> its largest end / start loss ratio of a stage > 1
    try:
        for si, (hw, n_iter) in enumerate(plan):
            content_s = _resize_batch(x_content, hw)
            work_content = np.asarray(color_lib.gray_rgb(content_s)) if lum else content_s
            cf, st = _stage_targets(params, work_content, per_styles, cfg, lcfg,
                                    want_content, want_style, style_names)
            if x_prev is not None:
                x0 = _resize_batch(x_prev, hw)
            elif init_image is not None:
                x0 = _resize_batch(init_image, hw)
            else:
                x0 = _init_images(cfg, work_content, per_styles)
            t0 = time.perf_counter()
            z, hist, n_eval, slope_ok, start_total = _optimize(
                params, x0, cf, st, weights, cfg, lcfg, n_iter, stage=si, n_stages=len(plan),
                bar=bar, report=report, done_before=done_iters, total=total_iters)
            x_prev = np.asarray(_final_image(z, cfg.parameterization))
            # (against the start as the optimizer sees it: softclip/sigmoid clamp it first)
            start = np.asarray(_final_image(from_image(x0, cfg.parameterization),
                                            cfg.parameterization))
            stuck = _made_no_progress(start, x_prev, hist, n_iter, slope_ok)
            for i, ratio in _ended_above_start(start_total, hist).items():
                rose[i] = max(rose.get(i, 0.0), ratio)
            seconds.append(time.perf_counter() - t0)
            history.append(hist)
            stages.append(tuple(hw))
            evaluations.append(n_eval)
            done_iters += n_iter
    finally:
        if bar is not None:
            bar.close()
    out = x_prev
    no_progress = ("the image did not change in the last stage although its loss is not 0 "
                   "(loss weights so large that float32 gradients overflow, or a learning rate "
                   "too small to move a pixel): lower the loss weights or raise the learning "
                   "rate")
    diverged = ("(the image became NaN or infinite): lower the learning rate or the loss "
                "weights")
    failed = {i: f"the optimization made no progress: {no_progress}" for i in stuck}
    bad = [i for i in range(out.shape[0]) if not np.all(np.isfinite(out[i]))]
    for i in bad:
        failed.setdefault(i, f"the optimization diverged {diverged}")
    if stuck and failures == "raise":  # (the photo came back unchanged with exit 0:
        # --style-weight 1e30)
        which = ("" if out.shape[0] == 1 else
                 f" for example{'s' if len(stuck) > 1 else ''} {stuck}")
        raise ModelError(f"the optimization made no progress{which}: {no_progress}")
    if bad and failures == "raise":  # (weights or a learning rate so large that the
        # optimization overflowed)
        which = "" if out.shape[0] == 1 else f" for example{'s' if len(bad) > 1 else ''} {bad}"
        raise ModelError(f"the optimization diverged{which} {diverged}")
    # (Adam with a learning rate too large ended 200x above its start with exit 0: the result
    # is worse than the image it started from)
    # (a start already at the minimum, e.g. a photo stylized with itself from the photo: Adam's
    # first steps, of about the learning rate whatever the gradient's size, only add noise,
    # and "lower the learning rate" did not say that)
    worse = {i: (f"the loss ended {r:.3g}x above its start: the Adam learning rate "
                 f"({cfg.learning_rate:g}) is too large; lower it" if r < AT_MINIMUM_RATIO else
                 f"the loss ended above its start, which was {AT_MINIMUM} (Adam's steps "
                 "only moved away from it); the L-BFGS optimizer keeps such a start")
             for i, r in sorted(rose.items()) if i not in failed}
    if worse and failures == "raise":
        which = ("" if out.shape[0] == 1 else
                 f" (example{'s' if len(worse) > 1 else ''} {sorted(worse)})")
        warnings.warn(next(iter(worse.values())) + which, stacklevel=2)
    if lum:
        out = np.asarray(color_lib.transfer_luminance(out, x_content, cfg.color_space))
    return GatysResult(images=out.astype(np.float32), history=history, stages=stages,
                       evaluations=evaluations, seconds=seconds, config=cfg, failures=failed,
                       worse_than_start=worse if failures == "report" else {})


#: An Adam stage that ended this many times above its start loss started at the minimum (a
#: learning rate far too large ended ~100-200x above).
AT_MINIMUM_RATIO = 1e4
AT_MINIMUM = "at the loss's minimum already"  # (the CLI's hint names another option then)


def _ended_above_start(start_total: np.ndarray | None, hist: dict) -> dict[int, float]:
    """``{example: end / start loss}`` of the examples whose stage ended above the loss it
    started from (by more than float32 noise); only where the start is known (Adam)."""
    total = hist.get("total") if isinstance(hist, dict) else None
    if start_total is None or total is None or not len(total):
        return {}
    last = np.asarray(total)[-1].reshape(-1)
    start = np.asarray(start_total).reshape(-1)
    # (a start at loss 0, a photo stylized with itself from the photo, is infinitely below)
    return {i: float(last[i] / start[i]) if start[i] > 0 else math.inf
            for i in range(min(last.size, start.size))
            if np.isfinite(last[i]) and np.isfinite(start[i]) and start[i] >= 0
            and last[i] > start[i] * (1 + 1e-4)}


def _made_no_progress(x0: np.ndarray, x: np.ndarray, hist: dict, n_iter: int,
                      slope_ok: np.ndarray | None = None) -> list[int]:
    """Examples whose image did not move in a stage of ``n_iter`` > 0 iterations although their
    final loss is finite and > 0 (an overflowing gradient makes L-BFGS and Adam stop dead).
    ``x0``: the start as the optimizer sees it (after its parameterization's clamp).
    ``slope_ok``: per example, whether our L-BFGS's directional derivative is finite: then
    not moving is a start at a minimum where no line-search step lowers the loss (a smooth
    ramp stylized with itself was refused), not an overflow (its slope is NaN). Without a
    per-example ``total`` in the history: not checked."""
    total = hist.get("total") if isinstance(hist, dict) else None
    if n_iter <= 0 or total is None or x0.shape != x.shape:
        return []
    last = np.asarray(total)[-1].reshape(-1)
    return [i for i in range(x.shape[0]) if i < last.size and np.isfinite(last[i])
            and last[i] > 0 and np.abs(x[i] - x0[i]).max() < 1e-6
            and not (slope_ok is not None and slope_ok[i])]


def _optimize(params, x0, cf, st, weights, cfg: GatysConfig, lcfg, n_iter: int, *, stage,
              n_stages, bar, report, done_before, total):
    """One stage: returns ``(z, history, evaluations, slope_ok, start_total)``; ``slope_ok``:
    per example, whether our L-BFGS's last directional derivative is finite (None for other
    optimizers); ``start_total``: Adam's loss ``[B]`` at the stage's start (None for the
    others, whose line searches only ever lower it, and for 0 iterations)."""
    kind = cfg.optimizer
    struct = _struct_key(lcfg)
    fn = _chunk_fn(kind, struct, cfg.pooling, cfg.chunk_size,
                   cfg.lbfgs_memory, cfg.max_linesearch_steps)
    z = from_image(x0, cfg.parameterization)
    if kind == "lbfgs":
        names = _term_names(struct, cf is not None, st is not None)
        state = _lbfgs_init_state(z, cfg.lbfgs_memory, names)
    elif kind == "lbfgs_optax":
        state = dict(z=z, opt=_optax_lbfgs_tx(cfg.lbfgs_memory, cfg.max_linesearch_steps).init(z))
    else:
        state = dict(z=z, opt=optax.adam(cfg.learning_rate).init(z),
                     start=jnp.zeros((z.shape[0],), jnp.float32))
    # fresh buffers: optimizer inits may alias leaves, and the state is donated
    state = jax.tree.map(lambda a: jnp.array(a, copy=True), state)
    parts: list[dict] = []
    done = 0
    start_total = None
    while done < n_iter:
        n = min(cfg.chunk_size, n_iter - done)
        state, hist = fn(params, state, cf, st, weights, jnp.asarray(n, jnp.int32))
        hist = jax.device_get(hist)
        if kind == "adam" and done == 0:
            start_total = np.asarray(jax.device_get(state["start"]))
        if kind == "lbfgs_optax":
            part = {"objective": hist["objective"][:n],
                    **{k: np.asarray(v)[None] for k, v in hist["terms"].items()}}
            last = {k: np.asarray(v) for k, v in hist["terms"].items()}
        else:
            part = {k: np.asarray(v)[:n] for k, v in hist.items()}
            last = {k: v[-1] for k, v in part.items()}
        parts.append(part)
        done += n
        info = {"stage": stage, "n_stages": n_stages, "iteration": done_before + done,
                "total_iterations": total, "terms": {k: float(np.mean(v)) for k, v in last.items()}}
        if bar is not None:
            bar.update(n)
            pf = {k: f"{info['terms'][k]:.4g}" for k in ("total", "content", "style", "tv")}
            if n_stages > 1:
                pf = {"stage": f"{stage + 1}/{n_stages}", **pf}
            bar.set_postfix(pf, refresh=False)
        if report is not None:
            report(info)
    if kind == "lbfgs_optax":
        history = {"objective": _cat([p["objective"] for p in parts], (0, 1))}
        for k in (parts[0] if parts else {}):
            if k != "objective":
                history[k] = np.concatenate([p[k] for p in parts])
        history["chunk_end"] = np.cumsum([len(p["objective"]) for p in parts]) - 1
        n_eval = -1
    else:
        keys = parts[0].keys() if parts else ["total"]
        history = {k: _cat([p[k] for p in parts], (0, x0.shape[0])) for k in keys}
        n_eval = int(jax.device_get(state["steps"])) if kind == "lbfgs" else n_iter
    slope_ok = np.isfinite(np.asarray(jax.device_get(state["slope"]))) if kind == "lbfgs" \
        else None
    return state["z"], history, n_eval, slope_ok, start_total


def _cat(parts, empty_shape) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty_shape, np.float32)
