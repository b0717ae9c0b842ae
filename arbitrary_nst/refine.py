"""Test-time refinement of a style embedding: a few Adam steps on the embedding alone.

The style predictor maps a style image to an embedding in one forward pass (amortized
inference). For a given content and style, the embedding that minimizes the training loss is
usually elsewhere: measured on the eval paintings (RESULTS.md), optimizing only the
embedding (100-d then; 164-d in the built-in model), with the transfer network and the
gamma/beta heads unchanged, lowers the Gram style loss by ~45 % in 10 Adam steps, on training
paintings as much as on unseen ones. This module
runs that optimization as compiled ``optax.adam`` steps (one executable per shape):

    e_0 = predicted (or given) embedding
    e_{t+1} = adam_step(e_t, d/de [content_loss(T(c, e)) + w_s * style_loss(T(c, e), style)])

with ``T`` the transfer network, the model's own loss VGG, Magenta's layers and the built-in
model's training balance (``style_weight`` 0.5). It works on a square working copy of the content
(shorter side resized to ``size``, centre square kept, as the style working image), so every
content shares one compiled executable; the refined embedding is then used at any resolution.
It trades time for quality between the feed-forward model (one pass) and Gatys (hundreds of
L-BFGS iterations on the pixels): each step is a transfer forward and backward plus a VGG
forward and backward at ``size``.

With a **palette** (the model's ``palette``, or ``palette=``; :mod:`arbitrary_nst.models`) the
loss is taken on what users get, the output after the colour alignment to the styles' (mixed)
colour moments, so the embedding is refined for texture and not spent on global colour.

Every example in a batch is refined independently (the loss is summed over the batch, so each
embedding receives only its own gradient, and Adam's statistics are per element).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from . import color, losses
from .errors import ConfigError, check_count
from .models import check_palette
from .vgg import features

#: Defaults: the built-in model's training balance; 20 steps at Adam 0.05 (the measured curve
#: flattens after ~20-40 steps at 256 px).
DEFAULT_STEPS = 20
DEFAULT_LEARNING_RATE = 0.05
DEFAULT_STYLE_WEIGHT = 0.5
DEFAULT_SIZE = 256


def loss_config(style_weight: float = DEFAULT_STYLE_WEIGHT) -> losses.LossConfig:
    """Magenta's layers (content relu3_3, Gram on relu1_2..relu4_3) at ``style_weight``."""
    return losses.LossConfig(style_weight=float(style_weight))


def check_options(steps: int, learning_rate: float, style_weight: float,
                  what: str = "refine") -> None:
    check_count(steps, f"{what} steps", 0)
    for name, value, ok in (("learning rate", learning_rate, lambda v: v > 0),
                            ("style weight", style_weight, lambda v: v >= 0)):
        try:
            good = ok(float(value)) and math.isfinite(float(value))
        except (TypeError, ValueError):
            good = False
        if not good:
            raise ConfigError(f"{what} {name} must be a finite number "
                              f"{'> 0' if name == 'learning rate' else '>= 0'}, got {value!r}")


def placed_like_outputs(tree, state):
    """``tree`` (a jitted step's loop-carried inputs: the start and the Adam state) placed as
    the step returns them, so that step 2 reuses step 1's executable.

    A jitted call's outputs are committed to the devices of its committed inputs: with the
    model ``state`` replicated over a mesh (the Stylizer's), the step returns ``NamedSharding
    (mesh, P())`` arrays, while a start made outside jit (``jnp.asarray``, ``optax.adam(...)
    .init``, its ``count`` included) is uncommitted on one device: another signature, compiled
    again. An uncommitted ``state`` (a plain model) leaves ``tree`` as it is (outputs stay
    uncommitted too). Placement only: the values are unchanged."""
    ref = next((x for x in jax.tree.leaves(state)
                if isinstance(x, jax.Array) and x.committed), None)
    if ref is None:
        return tree
    sharding = ref.sharding
    if not sharding.is_fully_replicated:
        if not isinstance(sharding, NamedSharding):
            return tree
        sharding = NamedSharding(sharding.mesh, PartitionSpec())
    return jax.device_put(tree, sharding)


def feature_fn(model):
    """``(x, taps) -> {tap: features}`` of the model's own (frozen) loss VGG."""
    vgg = model.vgg
    params = vgg.params()

    def feat(x, taps):
        return features(params, x, taps, pooling=vgg.pooling)

    return feat


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("style_weight",))
def _refine_targets(graphdef, state, content, style, style_w, *, style_weight: float):
    """The content's VGG features, the (blended) style targets and the blended colour moments
    ``[B or 1, 12]`` (the palette target): computed once per call."""
    cfg = loss_config(style_weight)
    feat = feature_fn(nnx.merge(graphdef, state))
    # (normalized here for both targets: blend normalizes the style's, and the palette's were
    # [3, 7]-weighted colour means of ~5 on [0, 1] images)
    style_w = style_w / jnp.sum(style_w, axis=-1, keepdims=True)
    moments = jnp.atleast_2d(style_w @ color.color_moments(style))
    return (feat(content, tuple(cfg.content_layers)),
            losses.StyleTargets.from_images(feat, style, cfg).blend(style_w), moments)


def _loss_fn(model, content, content_feats, targets, style_weight, moments, palette):
    """``e -> (summed loss, per-example loss)``; ``palette`` None: the raw output is scored."""
    cfg = loss_config(style_weight)
    feat = feature_fn(model)

    def loss_fn(e):
        y = model.transfer(content, e)
        if palette is not None:
            y = model.align_palette(y, moments, palette, exact_gradient=True)
        total, _ = losses.perceptual_loss(feat, y, cfg, content_feats=content_feats,
                                          style_targets=targets)
        return jnp.sum(total), total

    return loss_fn


# One compiled Adam step, called ``steps`` times from Python. Not a ``lax.scan``: on XLA:CPU the
# convolutions inside a while loop ran 4.6x slower than the same step as its own executable
# (8 styles x 128^2, 12 steps: 35.4 s vs 7.7 s), and unrolling compiles ``steps`` copies.
@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("style_weight",))
def _refine_step(graphdef, state, content, content_feats, targets, moments, palette, e,
                 opt_state, learning_rate, *, style_weight: float):
    loss_fn = _loss_fn(nnx.merge(graphdef, state), content, content_feats, targets, style_weight,
                       moments, palette)
    (_, per_example), g = jax.value_and_grad(loss_fn, has_aux=True)(e)
    updates, opt_state = optax.adam(learning_rate).update(g, opt_state, e)
    return optax.apply_updates(e, updates), opt_state, per_example


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("style_weight",))
def _refine_loss(graphdef, state, content, content_feats, targets, moments, palette, e, *,
                 style_weight: float):
    return _loss_fn(nnx.merge(graphdef, state), content, content_feats, targets,
                    style_weight, moments, palette)(e)[1]


class Abandoned(Exception):
    """The caller's ``should_stop`` said so between two steps (a batch that was interrupted)."""


def _run_refine(graphdef, state, content, style, style_w, e0, learning_rate, palette, *,
                steps: int, style_weight: float, should_stop=None, final_loss: bool = True):
    content_feats, targets, moments = _refine_targets(graphdef, state, content, style, style_w,
                                                      style_weight=style_weight)
    # (placed as the step returns them: one executable for every step, see placed_like_outputs)
    e, opt_state = placed_like_outputs((e0, optax.adam(learning_rate).init(e0)), state)
    history = []
    for _ in range(steps):
        if should_stop is not None and should_stop():
            raise Abandoned("refinement abandoned")
        e, opt_state, per_example = _refine_step(graphdef, state, content, content_feats,
                                                 targets, moments, palette, e, opt_state,
                                                 learning_rate, style_weight=style_weight)
        history.append(per_example)
        # wait for each step: the loop enqueued every step at once and then waited in C, where
        # a Ctrl-C / SIGTERM (or should_stop) waited for all of them; now for one step (the
        # next step's dispatch is microseconds beside a step's compute)
        per_example.block_until_ready()
    if final_loss:
        history.append(_refine_loss(graphdef, state, content, content_feats, targets, moments,
                                    palette, e, style_weight=style_weight))
    if not history:
        return e, jnp.zeros((0, content.shape[0]), jnp.float32)
    return e, jnp.stack(history, axis=0)


def refine_embeddings(model, content: np.ndarray, style: np.ndarray, style_weights: np.ndarray,
                      e0: np.ndarray, *, steps: int = DEFAULT_STEPS,
                      learning_rate: float = DEFAULT_LEARNING_RATE,
                      style_weight: float = DEFAULT_STYLE_WEIGHT,
                      palette: float | None = None,
                      should_stop: Callable[[], bool] | None = None,
                      final_loss: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Refine ``e0`` for each content.

    Args:
      model: an :class:`~arbitrary_nst.models.ArbitraryStyleModel` (its VGG is the loss net),
        or its ``nnx.split`` ``(graphdef, state)``.
      content: ``[B, H, W, 3]`` float in [0, 1] (working copies; H, W multiples of 4).
      style: ``[N, S, S, 3]`` float in [0, 1]: the style images whose statistics are the target.
      style_weights: ``[N]`` mixing weights (a convex mix of the N styles' statistics, shared
        by every content) or ``[B, N]`` (one mix per content).
      e0: ``[B, D]`` starting embeddings (e.g. the predicted, mixed embedding per content).
      palette: the palette the loss sees the output with (default: the model's; 0: the raw
        network output).
      should_stop: asked before each step; True raises :class:`Abandoned` (a batch's decode
        thread refines: its shutdown waited for every step).
      final_loss: also score the last step's result (False: the history has ``steps`` rows;
        one compiled program and one forward pass less, for callers that only want ``e``).

    Returns ``(embeddings [B, D] float32, loss history [steps + 1, B])``: the weighted
    training loss of each example before every step and after the last.
    """
    check_options(steps, learning_rate, style_weight)
    content = jnp.asarray(content, jnp.float32)
    e0 = jnp.asarray(e0, jnp.float32)
    if content.ndim != 4 or e0.ndim != 2 or e0.shape[0] != content.shape[0]:
        raise ConfigError(f"refine: content [B,H,W,3] and e0 [B,D] must agree, got "
                          f"{content.shape} and {e0.shape}")
    losses.check_mix_weights(style_weights, "refine: style_weights")  # (checked outside jit)
    graphdef, state = model if isinstance(model, tuple) else nnx.split(model)
    if palette is None:
        palette = nnx.merge(graphdef, state).palette
    # None (not 0.0) when off, so the palette-free loss compiles without the alignment.
    amount = jnp.float32(check_palette(palette)) if palette else None
    e, hist = _run_refine(graphdef, state, content, jnp.asarray(style, jnp.float32),
                          jnp.asarray(style_weights, jnp.float32), e0,
                          jnp.float32(learning_rate), amount, steps=int(steps),
                          style_weight=float(style_weight), should_stop=should_stop,
                          final_loss=bool(final_loss))
    return np.asarray(e, np.float32), np.asarray(hist, np.float32)
