"""Style prediction network: style image -> embedding -> per-layer CIN gammas and betas.

(The embedding has ``embedding_dim`` numbers: 100 by default, as Magenta's bottleneck; the
built-in model's is 164. "100" below is that default.)

Magenta (Ghiasi et al. 2017) runs a pretrained Inception-v3 up to ``Mixed_6e``, averages it over
H and W, projects to a 100-d "bottleneck" with a 1x1 conv and predicts every CIN layer's gamma and
beta from it with one 1x1 conv (a dense layer) per layer. No Inception weights exist offline, so
this version builds the same structure on the frozen ImageNet VGG16 that the loss network uses:

1. **Pooled statistics** of VGG ``relu1_2, relu2_2, relu3_3, relu4_3`` (the style-loss taps):
   the per-channel mean and standard deviation over H and W, ``2 x (64 + 128 + 256 + 512) =
   1920`` numbers, passed through ``log1p`` (ReLU activations are >= 0 and span several orders
   of magnitude between layers and images; the log puts them on a common scale). Means and
   standard deviations are size-agnostic, so any style size >= 32 works (Magenta: 256).
   These statistics are the AdaIN description of a style (Huang & Belongie 2017), i.e. what the
   Gram loss largely depends on, which is why they are a good input here. Each example's
   vector is then standardized over its 1920 entries (parameter-free layer norm,
   ``feature_norm="layer"``), see :func:`pooled_statistics`.
2. **Embedding MLP** (trainable): ``Dense(1920 -> hidden) -> ReLU -> Dense(hidden -> 100)``;
   the 100-d output (linear, like Magenta's bottleneck) is the style embedding on which
   interpolation and strength work. ``hidden_dim=0`` gives Magenta's single linear projection.
3. **Heads**: one ``Dense(100 -> 2 C)`` per CIN layer, weights zero-initialized and bias
   ``[1] * C + [0] * C`` so that at initialization gamma = 1 and beta = 0 for every style (the
   transformer starts as an unconditional instance-norm network). Magenta uses two default-
   initialized 1x1 convs (beta, gamma) per layer instead.

The VGG is shared and frozen (its weights are ``FrozenWeight`` variables, not ``nnx.Param``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..errors import ConfigError
from ..vgg import VGG16, features, tap_channels, tap_depth
from .transfer import CIN_LAYER_NAMES, GammaBeta, normal_param

#: VGG taps whose statistics describe a style (the style-loss taps).
DEFAULT_STYLE_TAPS: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
#: Smallest style image accepted (VGG16's own minimum).
MIN_STYLE_SIZE = 32


FEATURE_NORMS = ("layer", "none")


def check_feature_norm(norm: Any) -> None:
    """ConfigError unless ``norm`` is one of :data:`FEATURE_NORMS`."""
    if norm not in FEATURE_NORMS:
        raise ConfigError(f"feature_norm must be one of {FEATURE_NORMS}, got {norm!r}")


def pooled_statistics(feats: Mapping[str, jax.Array], taps: Sequence[str],
                      eps: float = 1e-5, norm: str = "layer") -> jax.Array:
    """``log1p`` of per-channel mean and std over H, W of each tap, concatenated: ``[B, F]``
    with ``F = 2 * sum(channels)``; computed in float32.

    ``norm="layer"`` then standardizes each example's vector over its ``F`` entries (a
    parameter-free layer norm): this removes the large offset all the log-statistics share
    (they are positive, ~3.5 on average) so the style-specific pattern reaches the MLP; at a
    short CPU training budget it made the outputs ~1.5x more style-dependent.
    """
    check_feature_norm(norm)
    parts = []
    for tap in taps:
        x = feats[tap].astype(jnp.float32)
        mean = jnp.mean(x, axis=(1, 2))
        var = jnp.mean(jnp.square(x - mean[:, None, None, :]), axis=(1, 2))
        parts += [mean, jnp.sqrt(var + eps)]
    x = jnp.log1p(jnp.concatenate(parts, axis=-1))
    if norm == "layer":
        mu = jnp.mean(x, axis=-1, keepdims=True)
        x = (x - mu) * jax.lax.rsqrt(jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True) + eps)
    return x


class Dense(nnx.Module):
    """``x @ kernel + bias`` with LeCun-normal kernel (std ``1/sqrt(fan_in)``) and zero bias."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        self.kernel = normal_param(rngs, (in_features, out_features), 1.0 / np.sqrt(in_features))
        self.bias = nnx.Param(jnp.asarray(np.zeros((out_features,), np.float32)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel[...] + self.bias[...]


class _Head(nnx.Module):
    """``Dense(embedding -> 2C)``: zero weights, bias gamma = 1, beta = 0."""

    def __init__(self, embedding_dim: int, channels: int):
        self.kernel = nnx.Param(jnp.asarray(np.zeros((embedding_dim, 2 * channels), np.float32)))
        self.bias = nnx.Param(jnp.asarray(np.concatenate([np.ones((channels,), np.float32),
                                                          np.zeros((channels,), np.float32)])))
        self.channels = channels

    def __call__(self, e: jax.Array) -> GammaBeta:
        out = e @ self.kernel[...] + self.bias[...]
        return out[..., : self.channels], out[..., self.channels:]


class StylePredictor(nnx.Module):
    """Frozen-VGG statistics -> MLP -> embedding -> per-CIN-layer (gamma, beta).

    Args:
      vgg: the shared, frozen :class:`~arbitrary_nst.vgg.VGG16`.
      cin_channels: channel count of each CIN layer (see ``transfer.cin_layer_channels``).
      embedding_dim: style embedding size (Magenta: 100).
      hidden_dim: hidden width of the embedding MLP; 0 = one linear projection (Magenta).
      taps: VGG taps to pool.
      feature_norm: ``"layer"`` (standardize the pooled vector per example) or ``"none"``.
      dtype: compute dtype of the VGG forward (``None``: the VGG module's own).
    """

    def __init__(self, vgg: VGG16, *, cin_channels: Sequence[int], embedding_dim: int = 100,
                 hidden_dim: int = 512, taps: Sequence[str] = DEFAULT_STYLE_TAPS,
                 feature_norm: str = "layer", dtype=None, rngs: nnx.Rngs):
        if len(cin_channels) != len(CIN_LAYER_NAMES):
            raise ConfigError(f"expected {len(CIN_LAYER_NAMES)} CIN layers, "
                              f"got {len(cin_channels)}")
        if int(embedding_dim) < 1 or int(hidden_dim) < 0:
            raise ConfigError(f"embedding_dim must be >= 1 and hidden_dim >= 0, "
                              f"got {embedding_dim}, {hidden_dim}")
        if not taps:
            raise ConfigError("the style predictor needs at least one VGG tap")
        check_feature_norm(feature_norm)
        self.feature_norm = feature_norm
        self.taps = tuple(taps)
        for t in self.taps:
            tap_depth(t)  # validates
        self.vgg = vgg
        self.dtype = dtype
        self.embedding_dim = int(embedding_dim)
        self.hidden_dim = int(hidden_dim)
        self.cin_channels = tuple(int(c) for c in cin_channels)
        in_dim = 2 * sum(tap_channels(t) for t in self.taps)
        if self.hidden_dim:
            self.hidden = Dense(in_dim, self.hidden_dim, rngs=rngs)
            self.bottleneck = Dense(self.hidden_dim, self.embedding_dim, rngs=rngs)
        else:
            self.hidden = None
            self.bottleneck = Dense(in_dim, self.embedding_dim, rngs=rngs)
        self.heads = nnx.Dict({name: _Head(self.embedding_dim, c)
                               for name, c in zip(CIN_LAYER_NAMES, self.cin_channels)})

    @property
    def feature_dim(self) -> int:
        return 2 * sum(tap_channels(t) for t in self.taps)

    def style_features(self, style: jax.Array) -> dict[str, jax.Array]:
        """VGG activations of the predictor's taps for ``[B, H, W, 3]`` style images."""
        if style.ndim != 4 or style.shape[-1] != 3:
            raise ConfigError(f"style images must be NHWC RGB, got shape {style.shape}")
        if min(style.shape[1:3]) < MIN_STYLE_SIZE:
            raise ConfigError(f"style images must be at least {MIN_STYLE_SIZE}x{MIN_STYLE_SIZE}, "
                              f"got {style.shape[1]}x{style.shape[2]}")
        dtype = self.dtype if self.dtype is not None else self.vgg.dtype
        return features(self.vgg.params(), style, self.taps, pooling=self.vgg.pooling, dtype=dtype)

    def embed_features(self, feats: Mapping[str, jax.Array]) -> jax.Array:
        """Embedding from precomputed VGG features (the training step shares the style
        forward between the style loss targets and the predictor): ``[B, embedding_dim]``."""
        x = pooled_statistics(feats, self.taps, norm=self.feature_norm)
        x = jax.lax.stop_gradient(x)  # the VGG is frozen; nothing upstream to train
        if self.hidden is not None:
            x = jax.nn.relu(self.hidden(x))
        return self.bottleneck(x)

    def embed(self, style: jax.Array) -> jax.Array:
        """``[B, H, W, 3]`` style images in [0, 1] (H, W >= 32) -> ``[B, embedding_dim]``."""
        return self.embed_features(self.style_features(style))

    def gamma_beta(self, embedding: jax.Array) -> list[GammaBeta]:
        """``[B, embedding_dim]`` -> 13 ``(gamma [B, C], beta [B, C])`` pairs (float32)."""
        e = jnp.asarray(embedding, jnp.float32)
        if e.shape[-1] != self.embedding_dim:
            raise ConfigError(f"embedding must have {self.embedding_dim} dims, got {e.shape}")
        if e.ndim == 1:
            e = e[None]
        return [self.heads[name](e) for name in CIN_LAYER_NAMES]

    def __call__(self, style: jax.Array) -> list[GammaBeta]:
        return self.gamma_beta(self.embed(style))
