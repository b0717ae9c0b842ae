"""Style transfer network with conditional instance normalization (Ghiasi et al. 2017).

A Flax NNX port of Magenta's ``arbitrary_image_stylization/nza_model.transform``:

* every conv is reflect padding by ``kernel // 2`` followed by a VALID convolution (Magenta's
  ``model_util.conv2d``), without bias: a normalization follows each conv;
* **contract**: 9x9/1 -> 32, 3x3/2 -> 64, 3x3/2 -> 128, each followed by instance norm and ReLU.
  Magenta uses batch norm here; we use plain instance norm with a learned scale and offset
  (independent of the style), which behaves the same at inference for any batch size;
* **residual**: five blocks ``x + CIN(conv(ReLU(CIN(conv(x)))))`` with 3x3 128-channel convs;
* **expand**: nearest-neighbour x2 upsampling + 3x3 conv -> 64, again -> 32 (CIN + ReLU each),
  then a 9x9 conv -> 3 with CIN and a sigmoid: the output is RGB in ``[0, 1]``.

Conditional instance norm (CIN): per-instance, per-channel mean and variance over H and W
(eps 1e-5, as Magenta's ``tf.nn.batch_normalization(..., variance_epsilon=1e-5)``), then
``gamma * x_hat + beta`` with ``gamma`` and ``beta`` given per example (``[B, C]``).

The 13 CIN layers (:data:`CIN_LAYER_NAMES`, in Magenta's order) have
``10 x 128 + 64 + 32 + 3 = 1379`` channels at width 1.0 (:func:`cin_layer_channels`), so a style
is ``2 x 1379 = 2758`` numbers (gammas and betas). A width multiplier ``w`` scales every
channel count except the 3 output channels (Magenta's ``alpha``): 0.5 gives 10 x 64 + 32 + 16 + 3
= 691 and 0.25 gives 10 x 32 + 16 + 8 + 3 = 347 CIN channels.

Sizes: the two stride-2 convs and the two x2 upsamplings make the output ``4 * ceil(H / 4)``
high; the output is cropped back to the input size, so multiples of 4 are exact and other sizes
are padded-then-cropped implicitly (callers that care pad with
:func:`arbitrary_nst.images.pad_to_multiple`). Inputs must be at least :data:`MIN_SIZE` pixels.

Precision: parameters are float32; ``dtype`` (e.g. ``jnp.bfloat16`` on GPU) is the compute dtype
of the convolutions. Normalization statistics are always computed in float32 and the output is
float32.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..errors import ConfigError

#: Names of the 13 conditional-instance-norm layers, in Magenta's order
#: (``style_normalization_activations``).
CIN_LAYER_NAMES: tuple[str, ...] = tuple(
    [f"residual{i}_conv{j}" for i in range(1, 6) for j in (1, 2)]
    + ["expand_conv1", "expand_conv2", "expand_conv3"])

#: Smallest content height/width the network accepts (the 9x9 reflect padding needs > 4 pixels).
MIN_SIZE = 8
#: Instance-norm epsilon (Magenta's ``variance_epsilon``).
EPS = 1e-5

GammaBeta = tuple[jax.Array, jax.Array]


def numpy_rng(rngs: nnx.Rngs) -> np.random.Generator:
    """A NumPy generator seeded from the next ``rngs.params()`` key.

    Initial values are drawn with NumPy (deterministically from the NNX key stream) rather
    than ``jax.random``: eager JAX compiles one small program per parameter *shape*, which made
    building a model take seconds on CPU; this takes milliseconds.
    """
    key = rngs.params()
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


def normal_param(rngs: nnx.Rngs, shape: tuple[int, ...], std: float) -> nnx.Param:
    """``nnx.Param`` of float32 N(0, std^2) values (drawn with :func:`numpy_rng`)."""
    return nnx.Param(jnp.asarray(numpy_rng(rngs).normal(0.0, std, shape).astype(np.float32)))


def _channels(width: float, base: int) -> int:
    return int(width * base)


#: The widest transfer network accepted (8x Magenta's: 1024 channels in the residual blocks).
MAX_WIDTH = 8.0


def check_width(width: float) -> float:
    """Validate a width multiplier: every scaled layer must keep at least one channel."""
    try:
        w = float(width)
    except (TypeError, ValueError):
        raise ConfigError(f"width must be a number, got {width!r}") from None
    if not w > 0 or _channels(w, 32) < 1:
        raise ConfigError(f"width must be >= 1/32 (so every layer keeps a channel), got {width!r}")
    if not w <= MAX_WIDTH:  # (1e30 was numpy's "Maximum allowed dimension exceeded")
        raise ConfigError(f"width must be <= {MAX_WIDTH:g} (Magenta's full network is 1.0), "
                          f"got {width!r}")
    return w


def cin_layer_channels(width: float = 1.0) -> tuple[int, ...]:
    """Channel counts of the 13 CIN layers (same order as :data:`CIN_LAYER_NAMES`).

    ``sum(cin_layer_channels(1.0)) == 1379`` (10 x 128 + 64 + 32 + 3); a style is described by a
    gamma and a beta per channel, i.e. ``2 x 1379`` numbers at width 1.0.
    """
    w = check_width(width)
    return tuple([_channels(w, 128)] * 10 + [_channels(w, 64), _channels(w, 32), 3])


def instance_norm(x: jax.Array, eps: float = EPS, mask: jax.Array | None = None) -> jax.Array:
    """Per-example, per-channel normalization over H and W, computed in float32 (returns f32).

    ``mask`` (``[B, H, W]``, 1/0): the statistics are taken over the pixels where it is 1 only
    (every pixel is still normalized); ``None``: over all pixels."""
    xf = x.astype(jnp.float32)
    if mask is None:
        mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=(1, 2), keepdims=True)
    else:
        m = mask.astype(jnp.float32)[..., None]
        n = jnp.maximum(jnp.sum(m, axis=(1, 2), keepdims=True), 1.0)
        mean = jnp.sum(xf * m, axis=(1, 2), keepdims=True) / n
        var = jnp.sum(jnp.square(xf - mean) * m, axis=(1, 2), keepdims=True) / n
    return (xf - mean) * jax.lax.rsqrt(var + eps)


def conditional_instance_norm(x: jax.Array, gamma: jax.Array, beta: jax.Array,
                              eps: float = EPS, mask: jax.Array | None = None) -> jax.Array:
    """``gamma * instance_norm(x) + beta`` with ``gamma``, ``beta`` of shape ``[B, C]`` (or
    ``[1, C]`` / ``[C]``, broadcast); ``mask``: see :func:`instance_norm`. Returns float32."""
    g = jnp.asarray(gamma, jnp.float32)
    b = jnp.asarray(beta, jnp.float32)
    g = g.reshape((-1, 1, 1, g.shape[-1]))
    b = b.reshape((-1, 1, 1, b.shape[-1]))
    return instance_norm(x, eps, mask) * g + b


def valid_region_limits(valid_hw: jax.Array | None, stride: int) -> jax.Array | None:
    """``[B, 2]`` rows and columns of each example's own region in a feature map at ``stride``
    (1, 2 or 4) of the input: its unpadded size ``valid_hw`` rounded up to a multiple of 4 and
    at least :data:`MIN_SIZE` (the image the network runs on without a bucket:
    ``inference.bucket_shape(h, w, None)``), divided by the stride. ``None`` -> ``None``."""
    if valid_hw is None:
        return None
    hw4 = jnp.maximum((jnp.asarray(valid_hw, jnp.int32) + 3) // 4 * 4, MIN_SIZE)
    return (hw4 + stride - 1) // stride


def valid_region_mask(valid_hw: jax.Array | None, x: jax.Array, stride: int) -> jax.Array | None:
    """``[B, H', W']`` 1/0 mask of each example's own region (:func:`valid_region_limits`) in
    the feature map ``x`` at ``stride``. ``None`` -> ``None`` (statistics over the whole map)."""
    if valid_hw is None:
        return None
    lim = valid_region_limits(valid_hw, stride)
    rows = jnp.arange(x.shape[1])[None, :, None] < lim[:, 0, None, None]
    cols = jnp.arange(x.shape[2])[None, None, :] < lim[:, 1, None, None]
    return (rows & cols).astype(jnp.float32)


def reflect_beyond(padded: jax.Array, limits: jax.Array, p: int) -> jax.Array:
    """``padded``: a ``[B, H + 2p, W + 2p, C]`` map reflect-padded by ``p``; ``limits``
    (``[B, 2]`` rows, cols): each example's region in the unpadded map. Returns it with the
    rows and columns after each region replaced by the region's reflection (``numpy.pad``
    'reflect' about its last row/column; what a conv with reflect padding ``p`` reads at the
    edge of a map of the region's size; far out, where no region pixel looks, the clipped edge).
    One gather over the flattened H x W per call: it compiled in about half the time of
    per-example dynamic slice + update and runs as fast (measured on CPU)."""
    b, h, w, c = padded.shape

    def index(n: int, lim: jax.Array) -> jax.Array:
        i = jnp.arange(n)[None, :]
        last = lim[:, None] + p - 1  # the region's last row/column in padded coordinates
        return jnp.clip(jnp.where(i <= last, i, 2 * last - i), 0, n - 1)

    rows, cols = index(h, limits[:, 0]), index(w, limits[:, 1])
    flat = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, h * w, 1)
    return jnp.take_along_axis(padded.reshape(b, h * w, c), flat, axis=1).reshape(b, h, w, c)


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour upsampling of NHWC by an integer factor (``resize_nearest_neighbor``)."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
    return x.reshape(b, h * factor, w * factor, c)


#: Stride-1 reflect convs as a zero-padded conv + crop (see ReflectConv); a switch for the
#: benchmark and the equality test.
PADDED_STRIDE1_CONV = True


class ReflectConv(nnx.Module):
    """Reflect padding by ``kernel // 2`` + VALID conv, no bias (a normalization follows).

    Kernels are initialized from N(0, 0.01) as in Magenta's transformer.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 *, dtype=None, rngs: nnx.Rngs):
        self.kernel = normal_param(rngs, (kernel_size, kernel_size, in_channels, out_channels),
                                   0.01)
        self.kernel_size = kernel_size
        self.stride = stride
        self.dtype = dtype

    def __call__(self, x: jax.Array, limits: jax.Array | None = None) -> jax.Array:
        """``limits`` (``[B, 2]``, stride-1 convs): each example's region in a larger (padded)
        map; the conv then reads the reflection of that region beyond it, as it does at the
        edge of a map of the region's size (stride-2 convs of even-sized regions never read
        beyond it)."""
        if self.dtype is not None:
            x = x.astype(self.dtype)
        p = self.kernel_size // 2
        k = self.kernel[...].astype(x.dtype)
        dn = ("NHWC", "HWIO", "NHWC")
        if not p:
            return jax.lax.conv_general_dilated(x, k, (self.stride,) * 2, "VALID",
                                                dimension_numbers=dn)
        if limits is not None and self.stride == 1:
            # (a region reaching the map's edge, or beyond it in a map whose size is not a
            # multiple of 4, is the whole map: the reflect padding below is already its own)
            limits = jnp.minimum(jnp.asarray(limits, jnp.int32), jnp.asarray(x.shape[1:3]))
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
        if limits is not None and self.stride == 1:
            x = reflect_beyond(x, limits, p)
        if self.stride == 1 and PADDED_STRIDE1_CONV:
            # Same values as the VALID conv (its output is the centre of this one; tested
            # bit-identical), but XLA:CPU runs the zero-padded form through a faster kernel.
            y = jax.lax.conv_general_dilated(x, k, (1, 1), ((p, p), (p, p)),
                                             dimension_numbers=dn)
            return y[:, p:-p, p:-p]
        return jax.lax.conv_general_dilated(x, k, (self.stride,) * 2, "VALID",
                                            dimension_numbers=dn)


class InstanceNorm(nnx.Module):
    """Plain (unconditional) instance norm with a learned per-channel scale and offset."""

    def __init__(self, channels: int):
        self.scale = nnx.Param(jnp.asarray(np.ones((channels,), np.float32)))
        self.offset = nnx.Param(jnp.asarray(np.zeros((channels,), np.float32)))

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        return instance_norm(x, mask=mask) * self.scale[...] + self.offset[...]


class TransferNetwork(nnx.Module):
    """Magenta's CIN transformer (see the module docstring).

    ``net(content, gammas_betas, valid_hw=None)``: ``content`` is ``[B, H, W, 3]`` RGB in
    [0, 1]; ``gammas_betas`` is a sequence of 13 ``(gamma, beta)`` pairs, one per CIN layer in
    :data:`CIN_LAYER_NAMES` order, each ``[B, C]`` (or ``[1, C]`` to share a style across the
    batch). ``valid_hw`` (``[B, 2]``, optional): each example's size before it was padded to
    ``H x W`` (a shape bucket); every normalization then takes its statistics over that region
    (rounded up to a multiple of 4, :func:`valid_region_limits`) and every stride-1 conv reads
    the region's own reflection beyond its edge (:func:`reflect_beyond`), so inside the region
    the output is the network's result on the image padded to a multiple of 4 only (equal to
    float rounding, ~1e-6 in float32), whatever the padding, when H and W are multiples of 4
    (the Stylizer's buckets; a region reaching the edge of a map of another size is the whole
    map). Returns ``[B, H, W, 3]`` float32 in [0, 1].
    """

    def __init__(self, width: float = 1.0, *, dtype=None, rngs: nnx.Rngs):
        self.width = check_width(width)
        self.dtype = dtype
        c1, c2, c3 = (_channels(self.width, c) for c in (32, 64, 128))
        self.cin_channels = cin_layer_channels(self.width)
        conv = lambda i, o, k, s=1: ReflectConv(i, o, k, s, dtype=dtype, rngs=rngs)  # noqa: E731
        self.contract = nnx.Dict(
            conv1=conv(3, c1, 9), norm1=InstanceNorm(c1),
            conv2=conv(c1, c2, 3, 2), norm2=InstanceNorm(c2),
            conv3=conv(c2, c3, 3, 2), norm3=InstanceNorm(c3))
        self.residual = nnx.Dict({f"residual{i}_conv{j}": conv(c3, c3, 3)
                                  for i in range(1, 6) for j in (1, 2)})
        self.expand = nnx.Dict(expand_conv1=conv(c3, c2, 3), expand_conv2=conv(c2, c1, 3),
                               expand_conv3=conv(c1, 3, 9))

    def _act(self, x: jax.Array) -> jax.Array:
        """ReLU, back in the compute dtype (norms return float32)."""
        x = jax.nn.relu(x)
        return x if self.dtype is None else x.astype(self.dtype)

    def __call__(self, content: jax.Array, gammas_betas: Sequence[GammaBeta],
                 valid_hw: jax.Array | None = None) -> jax.Array:
        if content.ndim != 4 or content.shape[-1] != 3:
            raise ConfigError(f"content must be NHWC RGB, got shape {content.shape}")
        h, w = content.shape[1:3]
        if min(h, w) < MIN_SIZE:
            raise ConfigError(f"content must be at least {MIN_SIZE}x{MIN_SIZE}, got {h}x{w}")
        if len(gammas_betas) != len(CIN_LAYER_NAMES):
            raise ConfigError(f"expected {len(CIN_LAYER_NAMES)} (gamma, beta) pairs, "
                              f"got {len(gammas_betas)}")
        for (g, b), c, name in zip(gammas_betas, self.cin_channels, CIN_LAYER_NAMES):
            if g.shape[-1] != c or b.shape[-1] != c:
                raise ConfigError(f"CIN layer {name} has {c} channels; got gamma {g.shape}, "
                                  f"beta {b.shape}")
        gb = dict(zip(CIN_LAYER_NAMES, gammas_betas))
        ct = self.contract
        # Padded input (a shape bucket): statistics over each example's own region at every
        # scale, so the padding changes only pixels within the receptive field of its edge.
        # and the stride-1 convs read the reflection of that region beyond it: in the region,
        # the result is the unpadded run's (to float rounding), whatever the bucket.
        mask = lambda x, s: valid_region_mask(valid_hw, x, s)  # noqa: E731
        lim1, lim2, lim4 = (valid_region_limits(valid_hw, s) for s in (1, 2, 4))
        x = content.astype(jnp.float32)
        x = ct["conv1"](x, lim1)
        x = self._act(ct["norm1"](x, mask(x, 1)))
        x = ct["conv2"](x)
        x = self._act(ct["norm2"](x, mask(x, 2)))
        x = ct["conv3"](x)
        m4 = mask(x, 4)
        x = jax.nn.relu(ct["norm3"](x, m4))  # float32 residual stream
        for i in range(1, 6):
            n1, n2 = f"residual{i}_conv1", f"residual{i}_conv2"
            r = self._act(conditional_instance_norm(self.residual[n1](x, lim4), *gb[n1],
                                                    mask=m4))
            x = x + conditional_instance_norm(self.residual[n2](r, lim4), *gb[n2], mask=m4)
        for name, stride, lim in (("expand_conv1", 2, lim2), ("expand_conv2", 1, lim1)):
            x = upsample_nearest(x if self.dtype is None else x.astype(self.dtype))
            x = self.expand[name](x, lim)
            x = self._act(conditional_instance_norm(x, *gb[name], mask=mask(x, stride)))
        y = self.expand["expand_conv3"](x, lim1)
        y = conditional_instance_norm(y, *gb["expand_conv3"], mask=mask(y, 1))
        y = jax.nn.sigmoid(y)
        return y[:, :h, :w, :]

    def identity_gammas_betas(self, batch: int = 1) -> list[GammaBeta]:
        """gamma = 1, beta = 0 for every CIN layer (a style-free transform, for tests/demos)."""
        return [(jnp.ones((batch, c), jnp.float32), jnp.zeros((batch, c), jnp.float32))
                for c in self.cin_channels]
