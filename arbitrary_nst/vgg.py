"""VGG16 (ImageNet, Keras/caffe weights) as a feature extractor with named taps.

Inputs are NHWC RGB in [0, 1] (uint8 0..255 and uint16 0..65535 are scaled, as everywhere in
the package), any size >= 32. The Keras "caffe" preprocessing (RGB -> BGR, x255,
minus the ImageNet BGR mean) happens inside, so callers never see it.

Taps, for block ``b`` and layer ``i``: ``conv{b}_{i}`` (pre-activation), ``relu{b}_{i}`` and
``pool{b}``. Only the layers up to the deepest requested tap are computed.

Two ways to use it:

* :class:`VGG16` (Flax NNX module): ``vgg(x, taps=("relu3_3",))`` -> ``{"relu3_3": array}``. The
  weights are :class:`FrozenWeight` variables, not ``nnx.Param``, so an ``nnx.Optimizer`` over
  ``nnx.Param`` never trains them even when the VGG sits inside a trainable model.
* :func:`features` (pure function of a weights pytree): what jitted loops call, passing the weights
  as an argument so they are not baked into the compiled program as constants.

"Normalized VGG" (Gatys et al. 2016): :func:`normalization_scales` measures each filter's mean
ReLU activation over a set of images; :func:`normalize_weights` rescales kernels and biases so
every filter's mean activation is 1 while each layer computes the original function divided by a
positive per-channel constant (pooling and ReLU commute with that), i.e. the same network up to
scale. ``load_vgg16(normalized=True)`` applies it.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import weights as weights_lib
from .errors import ConfigError, ImageError
from .files import write_atomically
from .weights import CAFFE_MEAN_BGR, CONV_LAYERS

log = logging.getLogger(__name__)

Pooling = Literal["max", "avg"]
Params = dict[str, dict[str, jax.Array]]

#: Blocks of VGG16: conv layers of each block, followed by a 2x2/2 pool.
BLOCKS: tuple[tuple[str, ...], ...] = (
    ("conv1_1", "conv1_2"), ("conv2_1", "conv2_2"), ("conv3_1", "conv3_2", "conv3_3"),
    ("conv4_1", "conv4_2", "conv4_3"), ("conv5_1", "conv5_2", "conv5_3"))


def _tap_sequence() -> tuple[str, ...]:
    seq = []
    for b, layers in enumerate(BLOCKS, start=1):
        for layer in layers:
            seq += [layer, "relu" + layer[4:]]
        seq.append(f"pool{b}")
    return tuple(seq)


#: Every tap in forward order.
TAPS: tuple[str, ...] = _tap_sequence()
RELU_TAPS: tuple[str, ...] = tuple(t for t in TAPS if t.startswith("relu"))
MIN_SIZE = 32


def check_pooling(pooling: Any, what: str = "pooling") -> None:
    """ConfigError unless ``pooling`` is ``"max"`` or ``"avg"``."""
    if pooling not in ("max", "avg"):
        raise ConfigError(f"{what} must be 'max' or 'avg', got {pooling!r}")


def tap_depth(tap: str) -> int:
    """Position of a tap in the forward order; raises ConfigError for unknown names."""
    try:
        return TAPS.index(tap)
    except ValueError:
        raise ConfigError(f"unknown VGG16 tap {tap!r}; valid taps: {', '.join(TAPS)}") from None


def tap_channels(tap: str) -> int:
    """Number of channels a tap has (64, 128, 256 or 512)."""
    depth = tap_depth(tap)
    conv = [t for t in TAPS[: depth + 1] if t.startswith("conv")][-1]
    return weights_lib.CONV_CHANNELS[conv][1]


def as_float_images(images) -> jax.Array:
    """An RGB image (batch) as a float jax array on the [0, 1] scale, as the rest of the package
    reads arrays (:func:`arbitrary_nst.images.to_float`, :mod:`arbitrary_nst.color`): ``uint8``
    is 0..255 (/255), ``uint16`` 0..65535 (/65535), ``bool`` 0/1; floats are kept as they are
    (a numpy float64 becomes float32 unless x64 is enabled, without a truncation warning);
    other integer types are refused (ConfigError). The dtype test is static, so this traces
    under ``jit`` (a uint8 was read as floats up to 255: features ~255x too large)."""
    x = jnp.asarray(images)
    if x.dtype in (jnp.uint8, jnp.uint16):
        return x.astype(jnp.float32) / float(jnp.iinfo(x.dtype).max)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.float32)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ConfigError(f"VGG16 and the losses take RGB images as floats in [0, 1], uint8, "
                          f"uint16 or bool; got {getattr(images, 'dtype', x.dtype)}")
    return x


def preprocess(images: jax.Array) -> jax.Array:
    """RGB [0, 1] (or uint8/uint16/bool: :func:`as_float_images`) -> Keras "caffe" input: BGR,
    0..255, ImageNet mean subtracted."""
    bgr = as_float_images(images)[..., ::-1] * 255.0
    return bgr - jnp.asarray(CAFFE_MEAN_BGR, dtype=bgr.dtype)


def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(x.dtype)


def _pool(x: jax.Array, pooling: Pooling) -> jax.Array:
    # VALID 2x2/2 pooling, as Keras/caffe (odd sizes drop the last row/column).
    if pooling == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    summed = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return summed / 4.0


def features(params: Params, images: jax.Array, taps: Sequence[str], *,
             pooling: Pooling = "max", dtype: jnp.dtype | None = None,
             preprocessed: bool = False, conv_fn=None, pool_fn=None) -> dict[str, jax.Array]:
    """Pure VGG16 forward: ``{tap: activation}`` for the requested taps, NHWC.

    Args:
      params: ``{"conv1_1": {"kernel": HWIO, "bias": (C,)}, ...}`` (numpy or jax arrays).
      images: ``[B, H, W, 3]`` RGB in [0, 1] (uint8 0..255, uint16 0..65535 and bool are
        scaled: :func:`as_float_images`), or float caffe input if ``preprocessed``; H, W >= 32.
      taps: names from :data:`TAPS` (one name as a string is one tap); computation stops at
        the deepest one.
      pooling: ``"max"`` (the trained network) or ``"avg"`` (Gatys' choice for synthesis).
      dtype: compute dtype (e.g. ``jnp.bfloat16`` on GPU); outputs are in that dtype.
      conv_fn, pool_fn: replacements for ``conv(x, kernel, bias)`` and ``pool(x, pooling)`` with
        the same values (the Gatys loop uses ones whose gradients compile faster on XLA:CPU).
    """
    check_pooling(pooling)
    if isinstance(taps, str):  # one tap (it was iterated: "unknown VGG16 tap 'r'")
        taps = (taps,)
    if not taps:
        return {}
    if preprocessed:
        images = jnp.asarray(images)
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ConfigError(f"preprocessed VGG16 input is caffe-normalized floats (BGR, "
                              f"0..255 minus the ImageNet mean), got {images.dtype}")
    else:
        images = as_float_images(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ConfigError(f"VGG16 expects NHWC RGB images, got shape {images.shape}")
    if min(images.shape[1:3]) < MIN_SIZE:
        raise ConfigError(f"VGG16 needs images of at least {MIN_SIZE}x{MIN_SIZE}, "
                          f"got {images.shape[1]}x{images.shape[2]}")
    conv_fn = conv_fn or _conv
    pool_fn = pool_fn or _pool
    wanted = set(taps)
    last = max(tap_depth(t) for t in taps)
    x = images if preprocessed else preprocess(images)  # (already float: scaled once)
    if dtype is not None:
        x = x.astype(dtype)
    out: dict[str, jax.Array] = {}
    for tap in TAPS[: last + 1]:
        if tap.startswith("conv"):
            x = conv_fn(x, params[tap]["kernel"], params[tap]["bias"])
        elif tap.startswith("relu"):
            x = jax.nn.relu(x)
        else:
            x = pool_fn(x, pooling)
        if tap in wanted:
            out[tap] = x
    return out


class FrozenWeight(nnx.Variable):
    """A fixed, pretrained weight: not an ``nnx.Param``, so optimizers leave it alone."""


def _on_device(w) -> jax.Array:
    """A weight as a device array, float64 as float32 (as ``jnp.asarray`` gives it): by
    ``jax.device_put`` of the host array (``jnp.asarray`` compiled a small program per distinct
    weight shape, ~12-30 per process start)."""
    if isinstance(w, jax.Array):
        return w
    w = np.asarray(w)
    return jax.device_put(w.astype(np.float32) if w.dtype == np.float64 else w)


class VGG16(nnx.Module):
    """VGG16 conv base with named feature taps (see module docstring)."""

    def __init__(self, params: weights_lib.Weights, *, pooling: Pooling = "max",
                 dtype: jnp.dtype | None = None):
        check_pooling(pooling)
        self.pooling = pooling
        self.dtype = dtype
        self.layers = nnx.Dict({
            name: nnx.Dict(kernel=FrozenWeight(_on_device(params[name]["kernel"])),
                           bias=FrozenWeight(_on_device(params[name]["bias"])))
            for name in CONV_LAYERS})

    def params(self) -> Params:
        """The weights as a plain pytree, for :func:`features` inside jitted code."""
        return {name: {"kernel": layer["kernel"][...], "bias": layer["bias"][...]}
                for name, layer in self.layers.items()}

    def __call__(self, images: jax.Array, taps: Sequence[str] = ("relu3_3",)) -> dict[str, jax.Array]:
        return features(self.params(), images, taps, pooling=self.pooling, dtype=self.dtype)


# ----------------------------------------------------------------------------------------------
# Normalized VGG


def normalization_scales(params: weights_lib.Weights | Params, images: Iterable[np.ndarray], *,
                         pooling: Pooling = "max") -> dict[str, np.ndarray]:
    """Per-filter mean ReLU activation of every conv layer over ``images`` (each HWC or NHWC in
    [0, 1] or uint8/uint16, any sizes), averaged over images and positions. Dead filters
    (mean 0) get 1."""
    sums = {name: 0.0 for name in CONV_LAYERS}
    count = 0
    taps = ["relu" + name[4:] for name in CONV_LAYERS]
    fwd = jax.jit(lambda p, x: {t: jnp.mean(a, axis=(0, 1, 2)) for t, a in
                                features(p, x, taps, pooling=pooling).items()})
    for img in images:
        x = as_float_images(img).astype(jnp.float32)  # (a uint8 image was taken as 0..255)
        x = x[None] if x.ndim == 3 else x
        means = fwd(params, x)
        for name, tap in zip(CONV_LAYERS, taps):
            sums[name] = sums[name] + np.asarray(means[tap], np.float64) * x.shape[0]
        count += x.shape[0]
    if count == 0:
        raise ConfigError("normalization_scales needs at least one image")
    out = {}
    for name in CONV_LAYERS:
        mean = sums[name] / count
        out[name] = np.where(mean > 1e-8, mean, 1.0).astype(np.float32)
    return out


def normalize_weights(params: weights_lib.Weights, means: dict[str, np.ndarray]) -> weights_lib.Weights:
    """Rescale so each filter's mean activation becomes 1 (``means`` from
    :func:`normalization_scales` on the *original* weights).

    With ``s_l = 1 / mean_l`` the normalized layer ``l`` outputs the original activation times
    ``s_l`` (per output channel). Its input arrives already multiplied by ``s_{l-1}``, so the
    kernel is divided by ``s_{l-1}`` along its input axis and multiplied by ``s_l`` along its
    output axis, and the bias multiplied by ``s_l``. ReLU and pooling commute with positive
    per-channel scales, so every tap is the original divided by the channel mean.
    """
    out: weights_lib.Weights = {}
    prev = np.ones(3, np.float32)  # the image itself is not rescaled
    for name in CONV_LAYERS:
        s = 1.0 / np.asarray(means[name], np.float32)
        k = np.asarray(params[name]["kernel"], np.float32)
        out[name] = {"kernel": k / prev[None, None, :, None] * s[None, None, None, :],
                     "bias": np.asarray(params[name]["bias"], np.float32) * s}
        prev = s
    return out


def default_normalization_images(size: int = 224) -> list[np.ndarray]:
    """Images used for the normalization when none are given: the built-in samples."""
    from . import samples  # local import: samples needs the scikit-image data files
    imgs = [samples.content_image(n, max_side=size) for n in samples.CONTENT_NAMES]
    imgs += [samples.style_image(n, size=size) for n in samples.STYLE_NAMES]
    return imgs


def load_vgg16(path: str | os.PathLike | None = None, *, pooling: Pooling = "max",
               normalized: bool = False, normalization_images: Iterable[np.ndarray] | None = None,
               dtype: jnp.dtype | None = None, allow_download: bool = False,
               training_copy_ok: bool = False) -> VGG16:
    """Build the VGG16 feature extractor with ImageNet weights (see :mod:`arbitrary_nst.weights`
    for where they come from). ``normalized=True`` rescales filters to mean activation 1 over
    ``normalization_images`` (default: the built-in sample images; cached per cache folder).
    ``training_copy_ok``: accept a training-only copy (conv5 zero; :func:`weights.load`)."""
    params = weights_lib.load(path, allow_download=allow_download,
                              training_copy_ok=training_copy_ok)
    if normalized:
        params = normalize_weights(params, _cached_means(params, normalization_images, pooling))
    return VGG16(params, pooling=pooling, dtype=dtype)


def _cached_means(params, images, pooling) -> dict[str, np.ndarray]:
    if images is not None:
        return normalization_scales(params, images, pooling=pooling)
    cache = weights_lib.cache_dir() / f"vgg16_norm_means_{pooling}.npz"
    if cache.is_file():
        means = _read_means(cache, params)
        if means is not None:
            return means
    means = normalization_scales(params, default_normalization_images(), pooling=pooling)
    try:  # a cache, like the weights' own: one writer's file is never seen half-written
        write_atomically(cache, lambda f: np.savez(f, **means))
    except ImageError as e:  # a read-only cache folder: the means are still right
        log.warning("%s (the normalization is computed again next time)", e)
    return means


def _read_means(cache, params) -> dict[str, np.ndarray] | None:
    """The cached per-filter means, or ``None`` (computed again) when the file is damaged or
    does not fit ``params`` (it was a ``BadZipFile`` or ``KeyError`` traceback)."""
    try:
        with np.load(cache) as z:
            means = {name: np.asarray(z[name], np.float32) for name in CONV_LAYERS}
        for name, m in means.items():
            want = (np.shape(params[name]["kernel"])[-1],)
            if m.shape != want or not np.all(np.isfinite(m)) or not np.all(m > 0):
                raise ValueError(f"{name} has shape {m.shape} (want {want}) or bad values")
        return means
    except Exception as e:  # noqa: BLE001 - BadZipFile, KeyError, ValueError, OSError, ...
        log.warning("%s: unreadable (%s); computing it again", cache,
                    str(e).splitlines()[0][:120] if str(e) else type(e).__name__)
        return None
