"""The end of the data pipeline, run on the accelerator inside the jitted training step.

:class:`arbitrary_nst.data.Loader` with ``device_augment`` hands over uint8 crops and, per
style image, the parameters of Magenta's colour jitter (brightness delta, saturation factor,
hue delta; drawn on the host from the same seeded generator as before). :func:`finish_batch`
turns that into the float ``[0, 1]`` batch the loss expects, with the jitter applied: the same
images as the host path (:func:`arbitrary_nst.data.color_jitter`) up to float rounding, tested.

Why on the device: on the host the jitter was ~60% of a style image's cost (3.54 -> 1.41 ms
per 256² style crop without it, ``bench/data.py``), and an H200 training run was held back by
its input pipeline (GPU 55-80% busy). Here it is a few elementwise ops per pixel, next to a
VGG16 forward and backward.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp

__all__ = ["color_jitter", "finish_batch"]


def color_jitter(x: jnp.ndarray, jitter: jnp.ndarray) -> jnp.ndarray:
    """``tf.image.adjust_brightness`` -> ``adjust_saturation`` -> ``adjust_hue`` per image.

    ``x``: float ``[B, H, W, 3]`` RGB in [0, 1]; ``jitter``: ``[B, 3]`` (brightness delta,
    saturation factor, hue delta in turns). Same formulas as the NumPy
    :func:`arbitrary_nst.data.color_jitter`: brightness adds and clips, saturation scales the
    HSV saturation (clipped to 1), hue is added mod 1.
    """
    x = jnp.asarray(x, jnp.float32)
    jitter = jnp.asarray(jitter, jnp.float32)
    bright, sat, hue = (jitter[:, k, None, None] for k in range(3))
    x = jnp.clip(x + bright[..., None], 0.0, 1.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = jnp.maximum(jnp.maximum(r, g), b)
    c = v - jnp.minimum(jnp.minimum(r, g), b)
    inv_c = jnp.where(c > 0, 1.0 / jnp.where(c > 0, c, 1.0), 0.0)
    h6 = jnp.where(v == r, (g - b) * inv_c,
                   jnp.where(v == g, (b - r) * inv_c + 2.0, (r - g) * inv_c + 4.0))
    h6 = jnp.mod(h6 + 6.0 * hue, 6.0)  # hue in sixths of a turn, [0, 6)
    vs = jnp.minimum(c * sat, v)  # = v * min(s * factor, 1)
    out = []
    for n in (5.0, 3.0, 1.0):  # hsv -> rgb: v - v s clip(min(k, 4 - k), 0, 1)
        k = h6 + n
        k = k - 6.0 * (k >= 6.0)
        t = jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
        out.append(v - t * vs)
    return jnp.stack(out, axis=-1)


def _to_unit(x: jnp.ndarray) -> jnp.ndarray:
    if jnp.issubdtype(x.dtype, jnp.integer):
        return x.astype(jnp.float32) * jnp.float32(1.0 / 255.0)
    return x


def finish_batch(batch: Mapping[str, jnp.ndarray]) -> dict[str, jnp.ndarray]:
    """``{"content", "style"[, "style_jitter"]}`` -> float ``{"content", "style"}`` in [0, 1].

    uint8 images are scaled to [0, 1]; ``style_jitter`` (when present) is applied to the styles.
    A batch that is already float without ``style_jitter`` (the host path, or a custom loader)
    passes through unchanged, so the training step accepts both kinds."""
    content = _to_unit(jnp.asarray(batch["content"]))
    style = _to_unit(jnp.asarray(batch["style"]))
    if "style_jitter" in batch:
        style = color_jitter(style, batch["style_jitter"])
    return {"content": content, "style": style}
