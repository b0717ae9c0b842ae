"""Inference with a trained arbitrary-style model: :class:`Stylizer`.

.. code-block:: python

    from arbitrary_nst import Stylizer

    s = Stylizer.load()                       # built-in model (or Stylizer.load("model.safetensors"))
    out = s.stylize("photo.jpg", style="painting.jpg", strength=0.8)   # float32 HWC in [0, 1]
    out = s.stylize(photo, style=["a.jpg", "b.jpg"], weights=[0.3, 0.7], preserve_color=True)
    e = s.embed(["a.jpg", "b.jpg"])           # [2, D] style embeddings (cached per file)
    strip = s.transfer(photo, e)              # one content, K embeddings -> [K, H, W, 3]

Inputs are paths, PIL images or arrays (HWC, or NHWC for a batch), uint8 or float in [0, 1].
Outputs are float32 in [0, 1] at the content's own size (after the optional ``max_size``
downscale, which never upscales).

**Styles.** Each style image is brought to its *working size* ``style_size`` (256 by default, as
Magenta): the shorter side is resized to ``style_size`` (Lanczos) and the centre square is kept.
The predictor only sees pooled VGG statistics, so the size mostly sets the scale of the style's
strokes: a larger working size gives finer texture relative to the output. Embeddings of style
*files* are cached in memory, keyed by ``(resolved path, mtime, ctime, inode, size, style_size)``.

**Mixing and strength.** ``N`` styles are mixed by a convex combination of their embeddings,
``e = sum_k w_k e_k`` (weights >= 0, normalized to sum 1; equal weights by default).
``strength`` in [0, 1] is Magenta's identity trick: ``e = s * e + (1 - s) * e_content`` where
``e_content`` is the content image's own embedding (the content brought to the style working
size the same way); the network run with the content's own embedding paints the photo in its
own style (its colours and layout, the network's brush texture: not the photo itself; for the
built-in model about half as far from the photo as the full style, mean absolute difference),
so ``strength`` moves from that toward the full style.

**Palette.** ``palette`` in [0, 1] moves each output's colours that fraction of the way along
the affine map that gives them the style's colour mean and covariance (one map per image,
:func:`arbitrary_nst.color.align_to_moments`: the mean moves exactly that fraction, the
covariance about that much, e.g. 0.66 of the way at 0.5; exactly all of it at 1;
the model's own ``palette`` is the default, 0 for models exported without one). The target is
the style images' colour moments (:meth:`Stylizer.palettes`, cached with the embeddings), mixed
with the same weights as the embeddings, and with ``strength`` < 1 mixed with the content's own
moments likewise (of the whole photo, not of its working square), so at ``strength`` 0 it
moves the colours toward the photo's own. With ``preserve_color`` "match" the target is the
content's colours (the whole photo's, to which the styles were recoloured too); with
"luminance" the palette is not applied (the chroma is the content's anyway). With
``embedding=`` the palette needs ``palette_moments=`` (else it is not applied).

**Refinement.** ``refine_steps=N`` (:meth:`Stylizer.refine_embedding`,
:mod:`arbitrary_nst.refine`) optimizes the style embedding for each content with N Adam steps
on the model's training loss before the transfer: the predicted embedding is a one-pass guess,
and for the built-in model the best one for a photo has about half its style loss.

**Fitted styles.** :meth:`Stylizer.fit_style` fits one painting's gamma/beta (the 13
conditional instance norms' parameters, ~1.4k numbers for the built-in model) on a sample of
photos once (:mod:`arbitrary_nst.fit_style`) and returns a :class:`~arbitrary_nst.fit_style.FittedStyle`
(``.save("x.npz")``). It goes wherever a style image goes (``style=`` the object or the ``.npz``
path, mixed with images by ``weights``, with ``strength``): its offset from the predicted gamma/
beta mixes with the embeddings' weights, and ``strength`` scales it (the content's own offset is
0). The offsets ride along into the same jitted call (the onnxruntime backend's graph takes
them as a third input); ``transfer`` takes them as ``offsets=`` (:meth:`Stylizer.style_parts`).
Not with ``refine_steps`` or ``preserve_color="match"`` (ConfigError).

**Colour preservation.** ``preserve_color=True`` or ``"luminance"``: the stylized luminance
(YIQ ``Y``) with the content's chroma (:func:`arbitrary_nst.color.transfer_luminance`).
``"match"`` (alias ``"histogram"``): each style image's colours are first mapped to the
content's colour mean and covariance (:func:`arbitrary_nst.color.match_color`), then embedded;
the embedding then depends on the content, so it is computed per content image (not cached).

**Shapes: bucketing.** The transfer network needs H, W multiples of 4; a jitted function
compiles once per input shape. Content is therefore reflect-padded (bottom/right) up to a
*bucket* and the output is cropped back to the exact input size. The default ladder
(:data:`DEFAULT_BUCKETS`) has 4 rungs per octave, ``{1, 1.25, 1.5, 1.75} x 2^k`` from 32 to 3584
(32, 40, 48, 56, 64, 80, ..., 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, ...), then
multiples of 512; H and W are bucketed independently. The common sizes 256, 384, 512, 768, 1024
are rungs (no padding). Padding per side is < 25 % just above a power of two and < 14 % just
below one; over sizes uniform in [256, 1024]^2 the padded area is on average ~18 % more pixels
(worst case ~56 % for e.g. 257 x 257 -> 320 x 320). A folder of photos downscaled with
``max_size`` has its long side on one bucket, so it compiles once per short-side rung it
meets: a handful of times. Partial batches are padded to the next power of two (then to a
multiple of the device count), so the batch axis adds at most ``log2(batch_size)`` shapes.
``buckets=None`` pads to a multiple of 4 only (one compile per distinct size). The padding
does not change the result: the network gets each image's unpadded size (``valid_hw``), takes
its instance-norm statistics inside it and reads the image's own reflection beyond its edge
(:class:`~arbitrary_nst.models.transfer.TransferNetwork`), so a bucketed output equals the
``buckets=None`` one to float rounding (``bench/bucketing.py``: max 1.3e-6 on the 0..1 scale in
float32; in bfloat16 the different padding shows through its rounding, up to ~1e-2), and it
never depends on what else is in the batch. A custom ladder pads sides beyond its top
rung to a multiple of 512 (or of the top rung if smaller).

**Devices.** The model state is replicated over a 1-D mesh of all local devices (axis
``"data"``) and each batch is sharded along it (``NamedSharding(mesh, P("data"))``), padded to a
multiple of the device count: a multi-GPU host runs data-parallel. Everything that depends on
the content (its own embedding, colour matching, the transfer, luminance transfer and the
uint8 conversion for files) runs inside one jitted function; the model state is an argument
(``nnx.split``), not a baked-in constant, and the compiled code is shared by every
:class:`Stylizer` with the same architecture.

**Backends.** ``backend="jax"`` (default) runs everything above with XLA on any device.
``backend="onnxruntime"`` (CPU deployment) runs the transfer network, the part that scales with
the image, as the exported ONNX graph (:mod:`arbitrary_nst.onnx_export`) on onnxruntime, whose
CPU convolution kernels are 1.3-1.9x as fast as XLA:CPU's on this network's small channel
counts (``bench/infer.py``); the style embeddings (and the content's own embedding for
``strength`` < 1, colour matching) still come from the jitted JAX predictor, and the outputs
equal the JAX backend's to ~1e-6. It runs each image at its own multiple-of-4 size (buckets save
onnxruntime no compilation), which is the result the bucketed JAX path gives too.
``backend="auto"`` (the CLI's default) is onnxruntime on CPU devices in float32 and JAX
otherwise (:func:`resolve_backend`).

**Files.** :meth:`Stylizer.stylize_files` is the batch pipeline used by the CLI: a thread pool
decodes and pads images ahead of the device (a bounded prefetch window), batches are grouped by
bucket and dispatched asynchronously (one batch in flight while the previous one is fetched),
and another thread pool crops, PNG-encodes and writes. Bad files are reported and skipped.
"""
from __future__ import annotations

import collections
import collections.abc
import concurrent.futures as cf
import functools
import hashlib
import numbers
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import color, files, fit_style, images
from .errors import (ConfigError, ImageError, ModelError, NSTError, OutOfMemory, check_count,
                     not_a_number, one_line, out_of_memory)
from .models import ArbitraryStyleModel, check_palette
from .padding import pad_to, round_side

__all__ = [
    "Stylizer", "FileResult", "DEFAULT_STYLE_SIZE", "DEFAULT_BATCH_SIZE", "DEFAULT_BUCKETS",
    "BUILTIN_MODEL", "bucket_side", "bucket_shape", "pad_to", "preserve_color_mode",
    "check_strength", "check_count", "normalize_weights", "style_working_image", "mixture_grid",
    "trace_counts", "default_batch_size", "BACKENDS", "check_backend", "resolve_backend",
]

#: Inference backends of the transfer network (see the module docstring).
BACKENDS = ("jax", "onnxruntime", "auto")

#: Default working size of style images (shorter side, then centre square), as Magenta.
DEFAULT_STYLE_SIZE = 256
#: Default number of content images per device call on accelerators; on CPU the default is 1
#: (bench/results/infer_cpu.json: per-image time on CPU grows with the batch, e.g. 87 -> 101 ms
#: at 512^2, width 0.25, batch 1 -> 8).
DEFAULT_BATCH_SIZE = 8


#: Where the built-in model lives.
BUILTIN_MODEL = Path(__file__).resolve().parent / "assets" / "model.safetensors"
#: Largest embedding value taken: 1e20 x a painting's embedding overflowed the instance norms
#: to an all-NaN image (1e10 x did not); real paintings' values are below 100.
EMBEDDING_LIMIT = 1e6


#: Largest style (and refinement / fit) working size: 8x the default. A typo such as 100000
#: would otherwise upscale a style to 100000^2 floats and end in the kernel's OOM kill.
MAX_STYLE_SIZE = 2048


def default_batch_size() -> int:
    """:data:`DEFAULT_BATCH_SIZE` per GPU/TPU, 1 per CPU device (times the device count)."""
    per = 1 if jax.default_backend() == "cpu" else DEFAULT_BATCH_SIZE
    return per * jax.local_device_count()


def _ladder(lo: int = 32, hi: int = 4096) -> tuple[int, ...]:
    out, k = [], lo
    while k < hi:
        out += [k * f // 4 for f in (4, 5, 6, 7)]
        k *= 2
    return tuple(out)


#: Padded side lengths: ``{1, 1.25, 1.5, 1.75} x 2^k`` for 32 <= size < 4096 (all multiples
#: of 4); larger sides are rounded up to a multiple of :data:`BEYOND_LADDER` (of a custom
#: ladder's top rung if that is smaller).
DEFAULT_BUCKETS: tuple[int, ...] = _ladder()
BEYOND_LADDER = 512

ImageInput = Union[str, "os.PathLike[str]", np.ndarray, Any]  # Any: PIL images, jax arrays

_TRACES: collections.Counter = collections.Counter()


def trace_counts() -> dict[str, int]:
    """How many times the jitted functions were traced (= compiled) in this process:
    ``{"stylize": n, "embed": m}``. Tests use it to check the bucketing."""
    return dict(_TRACES)


# --------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------


def _describe(x: Any) -> str:
    """Shape (arrays) or a short repr, for messages."""
    shape = getattr(x, "shape", None)
    if shape is not None:
        return f"shape {tuple(shape)}"
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def bucket_side(n: int, buckets: Sequence[int] | None = DEFAULT_BUCKETS) -> int:
    """The padded length for a side of ``n`` pixels: the smallest rung >= ``n`` (beyond the
    ladder: the next multiple of 512, or of the top rung if that is smaller, so ``[64]`` pads
    100 to 128, not 512); ``buckets=None``: the next multiple of 4 (at least 8)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"side must be >= 1, got {n}")
    if buckets is None:
        return round_side(n)
    if not buckets:  # (max() of an empty list was a raw ValueError)
        raise ConfigError("buckets must hold at least one side length, or be None")
    for b in buckets:
        if b >= n:
            return int(b)
    step = min(BEYOND_LADDER, int(max(buckets)))
    return n + (-n) % step


def bucket_shape(h: int, w: int, buckets: Sequence[int] | None = DEFAULT_BUCKETS) -> tuple[int, int]:
    """``(H, W)`` padded shape of an ``h x w`` image (see the module docstring)."""
    return bucket_side(h, buckets), bucket_side(w, buckets)


def preserve_color_mode(value: Any) -> str | None:
    """Normalize ``preserve_color``: False/None -> None; True/"luminance"/"yiq" ->
    ``"luminance"``; "match"/"histogram"/"color" -> ``"match"``."""
    if value is None or value is False:
        return None
    if value is True:
        return "luminance"
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("luminance", "yiq", "luma"):
            return "luminance"
        if v in ("match", "histogram", "color", "colour"):
            return "match"
        if v in ("none", "off", "false", "no", ""):
            return None
    raise ConfigError(f"preserve_color must be False, True, 'luminance' or 'match', got {value!r}")


def check_strength(strength: Any) -> float:
    """``strength`` as a float in [0, 1]; ConfigError otherwise (a string such as ``"0.5"``
    and ``True`` are not numbers, as for :func:`arbitrary_nst.errors.check_weight`)."""
    if not_a_number(strength):
        raise ConfigError(f"strength must be a number in [0, 1], got {strength!r}")
    try:
        s = float(strength)
    except (TypeError, ValueError):
        raise ConfigError(f"strength must be a number in [0, 1], got {strength!r}") from None
    if not 0.0 <= s <= 1.0:  # also rejects NaN
        raise ConfigError(f"strength must be in [0, 1], got {strength!r}")
    return s


def normalize_weights(weights: Any, n: int) -> np.ndarray:
    """Mixing weights for ``n`` styles: ``None`` -> equal; else validated (count, finite,
    non-negative, not all zero) and normalized to sum 1. Returns float32 ``[n]``."""
    if n < 1:
        raise ConfigError("no style given")
    if weights is None:
        return np.full((n,), 1.0 / n, np.float32)
    if not_a_number(weights) or (isinstance(weights, (list, tuple))
                                  and any(not_a_number(v) for v in weights)):
        raise ConfigError(f"style weights must be numbers, got {weights!r}")
    try:
        w = np.asarray(weights, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(f"style weights must be numbers, got {weights!r}") from None
    if w.size != n:
        raise ConfigError(f"got {w.size} style weight{'s' if w.size != 1 else ''} for {n} "
                          f"style{'s' if n != 1 else ''}; give one weight per style")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ConfigError(f"style weights must be finite and >= 0, got {w.tolist()}")
    if w.max() <= 0:
        raise ConfigError("style weights must not all be zero")
    w = w / w.max()  # first, so that huge weights cannot overflow the sum
    return (w / w.sum()).astype(np.float32)


def style_working_image(x: np.ndarray, size: int) -> np.ndarray:
    """Float HWC image -> ``size x size``: shorter side resized to ``size``, centre square
    (only the square is resampled: bounded cost for any aspect ratio)."""
    return np.ascontiguousarray(images.short_side_center_square(x, int(size)), np.float32)


def mixture_grid(n_styles: int, steps: int) -> list[tuple[int, int, np.ndarray]]:
    """Weight vectors for an interpolation figure, as ``(row, col, weights[n_styles])``:

    * 2 styles: one row of ``steps`` mixtures from style 1 to style 2;
    * 3 styles: a triangle (barycentric grid): row ``r`` (0..steps-1) has ``r + 1`` cells, top
      = style 1, bottom-left = style 2, bottom-right = style 3;
    * 4 styles: a ``steps x steps`` grid with styles 1..4 at the corners (bilinear weights:
      top-left, top-right, bottom-left, bottom-right);
    * 5+ styles: one row going through the styles in order, ``steps`` cells per segment.
    """
    n_styles = check_count(n_styles, "number of styles", optional=False)
    if n_styles < 2:
        raise ConfigError(f"interpolation needs at least 2 styles, got {n_styles}")
    # (None was a raw TypeError, NaN a ValueError; the CLI's --steps, the API's steps)
    steps = check_count(steps, "steps (--steps)", 2, optional=False)
    out = []
    if n_styles == 2:
        for j, t in enumerate(np.linspace(0.0, 1.0, steps)):
            out.append((0, j, np.array([1 - t, t], np.float32)))
    elif n_styles == 3:
        m = steps - 1
        for r in range(steps):
            for c in range(r + 1):
                w = np.array([m - r, r - c, c], np.float32) / m
                out.append((r, c, w))
    elif n_styles == 4:
        for r, v in enumerate(np.linspace(0.0, 1.0, steps)):
            for c, u in enumerate(np.linspace(0.0, 1.0, steps)):
                out.append((r, c, np.array([(1 - u) * (1 - v), u * (1 - v), (1 - u) * v, u * v],
                                           np.float32)))
    else:
        col = 0
        for k in range(n_styles - 1):
            for j, t in enumerate(np.linspace(0.0, 1.0, steps)):
                if k > 0 and j == 0:
                    continue  # shared with the previous segment's end
                w = np.zeros(n_styles, np.float32)
                w[k], w[k + 1] = 1 - t, t
                out.append((0, col, w))
                col += 1
    return out


def check_backend(backend: Any) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else ConfigError."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_backend(backend: str, devices: Sequence[Any], model: Any = None) -> str:
    """The backend ``"auto"`` stands for: ``"onnxruntime"`` when every device is a CPU, the
    model computes in float32 and onnxruntime (with onnx, to export the graph) is installed,
    ``"jax"`` otherwise. On a CPU the exported graph runs 1.3-1.9x as fast as XLA:CPU
    (``bench/infer.py``), and a folder of mixed sizes ~4x (no compilation per shape,
    ``bench/backends.py``); on a GPU JAX is the fast path. An onnxruntime that is installed
    but does not import is JAX with a warning. Other names are returned as they are."""
    if backend != "auto":
        return backend
    if any(getattr(d, "platform", None) != "cpu" for d in devices):
        return "jax"
    net = getattr(model, "transfer_net", None)
    if getattr(net, "dtype", None) not in (None, jnp.float32):
        return "jax"  # (a bfloat16 model: the ONNX graph is float32)
    try:  # (installed but broken, e.g. built for another numpy: JAX, not a failed command)
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "not usable here"
        if not isinstance(e, ModuleNotFoundError):  # (not installed: nothing to say)
            warnings.warn(f"onnxruntime does not import ({one_line(e)[:160]}); "
                          "running on JAX", stacklevel=2)
        return "jax"
    return "onnxruntime"


def check_devices(devices: Any) -> list:
    """``devices`` as a list of distinct jax devices, or a one-line ConfigError: an empty list
    (was a ZeroDivisionError in training), names or numbers (an AttributeError) and a device
    given twice (a bare AssertionError from jax.device_put)."""
    try:
        devs = list(devices)
    except TypeError:
        raise ConfigError(f"devices must be a list of jax devices, got "
                          f"{type(devices).__name__}") from None
    if not devs:
        raise ConfigError("no devices to run on")
    if not all(isinstance(d, jax.Device) for d in devs):
        raise ConfigError(f"devices must be jax devices (e.g. jax.local_devices()), got "
                          f"{devs!r:.80}")
    if len(set(devs)) != len(devs):
        raise ConfigError(f"devices must be distinct, got {devs!r:.80}")
    return devs


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _is_fitted(x: Any) -> bool:
    """A fitted style (:mod:`arbitrary_nst.fit_style`): the object or its ``.npz`` file."""
    return isinstance(x, fit_style.FittedStyle) or fit_style.is_fitted_style_path(x)


def _as_image_list(x: Any, what: str) -> tuple[list[Any], bool]:
    """Split an input into single images; returns ``(items, was_batched)``."""
    if x is None:
        raise ConfigError(f"no {what} given")
    if _is_path(x) or isinstance(x, fit_style.FittedStyle):
        return [x], False
    _refuse_file_object(x, f"{what} image")
    noun = "photo" if what == "photos" else what
    if (nested := _nested_number_array(x)) is not None:  # an array-like: one image (HWC) or
        # a batch (NHWC), as its array is (an image's .tolist() was a batch of its rows)
        x = nested
    if isinstance(x, (list, tuple)) or _is_other_iterable(x):
        x = list(x)
        if not x:
            raise ConfigError(f"empty list of {noun} images")
        return x, True
    try:
        from PIL import Image

        if isinstance(x, Image.Image):
            return [x], False
    except ImportError:  # pragma: no cover
        pass
    _refuse_non_image(x, f"{noun} image")
    a = np.asarray(x)
    if a.ndim == 4:
        if a.shape[0] == 0:
            raise ConfigError(f"empty batch of {noun} images")
        return list(a), True
    if a.ndim in (2, 3):
        return [a], False
    raise ConfigError(f"{what} must be a path, a PIL image, or an HWC/NHWC array; "
                      f"got an array of shape {a.shape}")


def _nested_number_array(x: Any) -> np.ndarray | None:
    """The numeric array a list (or tuple) of lists of ... of numbers makes, such as an
    image's ``.tolist()``; None for anything else: a list of separate images (arrays, PIL
    images or paths, or nested lists of different sizes, which make no array)."""
    if not isinstance(x, (list, tuple)) or not x or not all(isinstance(i, (list, tuple))
                                                            for i in x):
        return None
    leaf = x
    while isinstance(leaf, (list, tuple)) and leaf:
        leaf = leaf[0]
    if isinstance(leaf, bool) or not isinstance(leaf, numbers.Real):
        return None
    try:
        a = np.asarray(x)
    except (ValueError, TypeError):  # (ragged: separate images of different sizes)
        return None
    return a if a.dtype.kind in "biuf" else None


def _refuse_file_object(x: Any, name: str | None) -> None:
    """An open file or BytesIO iterates by line: it was read as a batch of byte strings
    ("unsupported image array dtype |S39"); a memoryview was a raw NotImplementedError."""
    if hasattr(x, "read") or isinstance(x, memoryview):
        raise ImageError(name, f"a {type(x).__name__} is not an image input; pass its path, "
                               "PIL.Image.open(f), or an array")


def _refuse_non_image(x: Any, name: str | None) -> None:
    """Bytes, a dict, a number, None, ...: no image input (it was read as a 0-d array: "got
    an array of shape ()" or "unsupported image array dtype |S39"); ImageError naming the
    type. Arrays (and array-likes, nested lists) are left to the array checks."""
    if _is_path(x) or _is_pil(x) or isinstance(x, fit_style.FittedStyle):
        return
    if (isinstance(x, (bytes, bytearray, dict, numbers.Number)) or x is None
            or (not hasattr(x, "__array__") and not isinstance(x, (list, tuple))
                and np.ndim(x) == 0)):
        raise ImageError(name, f"expected a path, a PIL image or an array, got "
                               f"{type(x).__name__}")


def _moments_array(x: Any) -> np.ndarray:
    """User colour moments as float32; anything that is not real numbers (a string, complex
    values, whose imaginary part was dropped with a warning) as an empty array, which the
    callers' shape check refuses in one line."""
    try:
        if np.iscomplexobj(x):
            raise TypeError("complex")
        return np.asarray(x, np.float32)
    except (TypeError, ValueError):
        return np.zeros((0,), np.float32)


def _check_moment_values(m: np.ndarray) -> np.ndarray:
    """``m`` (``[12]``, finite) if it is the colour moments of some image in [0, 1]: means in
    [0, 1] and ``E[x x^T] - mean mean^T`` symmetric positive semi-definite (others gave black
    or muddy images without a word); ConfigError otherwise."""
    mean = m[:3].astype(np.float64)
    cov = m[3:].astype(np.float64).reshape(3, 3) - np.outer(mean, mean)
    tol = 1e-3
    if (mean.min() < -tol or mean.max() > 1 + tol or np.abs(cov - cov.T).max() > tol
            or np.linalg.eigvalsh(0.5 * (cov + cov.T)).min() < -tol):
        raise ConfigError("palette_moments are not the colour moments of an image in [0, 1] "
                          "(means in [0, 1], E[x x^T] - mean mean^T positive semi-definite): "
                          "take them from Stylizer.palettes / color.color_moments")
    return m


def _check_weights_have_an_order(styles: Any, weights: Any) -> None:
    """Weights go with the styles by position; a set has no fixed order (it changes with
    PYTHONHASHSEED), so the weights would land on other styles from run to run."""
    if weights is not None and isinstance(styles, collections.abc.Set):
        raise ConfigError("weights go with the styles in order, and a set has none: pass the "
                          "styles as a list or tuple")


def _is_other_iterable(x: Any) -> bool:
    """A generator, set, dict view, ... of inputs (not an array, a path or a PIL image)."""
    return (isinstance(x, collections.abc.Iterable) and not hasattr(x, "__array__")
            and not _is_path(x) and not _is_pil(x) and not isinstance(x, (bytes, dict)))


def _path_list(x: Any) -> list[Path]:
    """One path or an iterable of paths (a single ``str`` is one path, not its characters)."""
    if _is_path(x):
        return [Path(os.fspath(x))]
    try:
        items = list(x)
    except TypeError:
        raise ConfigError(f"expected a path or a list of paths, got {type(x).__name__}") from None
    for i, p in enumerate(items):
        if not _is_path(p):  # (it named the list, not the BytesIO in it)
            raise ConfigError(f"expected a path or a list of paths, got a "
                              f"{type(p).__name__} at position {i}")
    return [Path(os.fspath(p)) for p in items]


def _style_name(i: int, items: Sequence[Any]) -> str:
    """How errors name the ``i``-th of several style arrays (as contents: ``content image i``)."""
    return f"style image {i}" if len(items) > 1 else "style image"


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


#: What jax raises when a traced value meets the Stylizer's host-side work (padding, buckets,
#: its own jit): the Stylizer called inside ``jax.jit``/``vmap``/``grad``.
_TRACER_ERRORS = (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError,
                  jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError)
TRACED_CALL = ("Stylizer runs its own jit; call it outside jax.jit (with concrete arrays, not "
               "traced values)")


def _jax_errors_typed(method: Callable) -> Callable:
    """XLA's RESOURCE_EXHAUSTED (an array too large for the device: a 20000 x 20000 photo
    with the API's default max_size=None) as a ConfigError saying what to lower, not a raw
    JaxRuntimeError; a call inside ``jax.jit`` (whichever value first meets a host-side step:
    a style not embedded yet was a raw TracerArrayConversionError) as one ConfigError; other
    errors unchanged."""
    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised unless typed below
            if (typed := _typed_jax_error(e)) is None:
                raise
            raise typed from None
    return wrapped


def _typed_jax_error(e: Exception) -> NSTError | None:
    """:func:`_jax_errors_typed`'s ConfigError for ``e``, or None (re-raise it as it is)."""
    if isinstance(e, NSTError):
        return None
    if isinstance(e, _TRACER_ERRORS):
        return ConfigError(TRACED_CALL)
    if (oom := out_of_memory(e)) is None:
        return None
    return OutOfMemory(oom, "pass max_size= (e.g. 1024) or a smaller batch_size")


def _jax_errors_typed_iter(results: Iterator[Any]) -> Iterator[Any]:
    """``results`` with :func:`_jax_errors_typed`'s errors as it is iterated (a generator's
    out of memory, at its ``next()``, was a raw one); ``close()`` reaches it."""
    try:
        yield from results
    except Exception as e:  # noqa: BLE001 - re-raised unless typed
        if (typed := _typed_jax_error(e)) is None:
            raise
        raise typed from None


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# --------------------------------------------------------------------------------------------
# Jitted functions (module level: shared by every Stylizer with the same graphdef)
# --------------------------------------------------------------------------------------------


def _to_float01(x: jax.Array) -> jax.Array:
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / jnp.float32(255.0)
    return x.astype(jnp.float32)


def _embed_impl(graphdef, state, x):
    _TRACES["embed"] += 1
    model = nnx.merge(graphdef, state)
    xf = _to_float01(x)
    return model.embed(xf), model.palette_moments(xf)


_embed_jit = jax.jit(_embed_impl, static_argnums=(0,))


def _heads_impl(graphdef, state, e):
    return fit_style.predicted_conditioning(nnx.merge(graphdef, state), e)


_heads_jit = jax.jit(_heads_impl, static_argnums=(0,))


def _target_embedding(model, e, small, cm, styles, w, strength, *, use_content: bool):
    """The per-example embeddings to transfer with: ``e`` as given, or (styles colour-matched
    to each content's colour moments ``cm`` [B,12], of the whole photo) each content's own
    mixture; then moved toward the content's embedding (of ``small``, its working image) when
    ``use_content`` (strength < 1)."""
    if styles is not None:
        matched = jax.vmap(lambda m: color.match_color_to_moments(styles, m))(cm)  # [B,N,S,S,3]
        b, n = matched.shape[:2]
        es = model.embed(matched.reshape((b * n,) + matched.shape[2:])).reshape(b, n, -1)
        e = jnp.einsum("bnd,n->bd", es, w)
    if use_content:
        ec = model.embed(small)
        e = strength * e + (1.0 - strength) * ec
    return e


def _embedding_impl(graphdef, state, e, small, cm, styles, w, strength, *, use_content: bool):
    _TRACES["embedding"] += 1
    return _target_embedding(nnx.merge(graphdef, state), e, small, cm, styles, w, strength,
                             use_content=use_content)


_embedding_jit = jax.jit(_embedding_impl, static_argnums=(0,), static_argnames=("use_content",))


def _palette_target(moments, cm, strength, *, use_content: bool, match: bool):
    """The colour moments ``[B, 12]`` outputs are aligned to: the styles' (``moments``), mixed
    with the content's own (``cm``, of the whole photo) like the embedding when
    ``use_content``; the content's in match mode (its styles were recoloured to them)."""
    if match:
        return cm
    if use_content:
        return strength * moments + (1.0 - strength) * cm
    return moments


def _valid_mask(hw, shape) -> jax.Array:
    """``[B, H, W]`` 1 inside each item's unpadded ``hw`` (``[B, 2]``), 0 in the padding."""
    rows = jnp.arange(shape[1])[None, :, None] < hw[:, 0, None, None]
    cols = jnp.arange(shape[2])[None, None, :] < hw[:, 1, None, None]
    return (rows & cols).astype(jnp.float32)


def _apply_palette(model, y, moments, cm, strength, palette, hw, *, use_content: bool,
                   match: bool):
    """``y`` (padded batch) aligned to its palette target, measured inside each ``hw``."""
    target = _palette_target(moments, cm, strength, use_content=use_content, match=match)
    return model.align_palette(y, target, palette, mask=_valid_mask(hw, y.shape))


@jax.jit
def _palette_affine(ms, cs, target):
    """``(A [B, 3, 3], b [B, 3])`` of :func:`~arbitrary_nst.color.align_to_moments` from the
    outputs' colour statistics: the one step of the host palette that is not numpy (eigh), on
    fixed shapes (compiled once per batch size, not per image size)."""
    return color._eig_affine(ms, cs, *color.stats_from_moments(target), color.ALIGN_EPS)


def _align_on_host(y: np.ndarray, moments, cm, strength: float, palette: float, hw, *,
                   use_content: bool, match: bool) -> np.ndarray:
    """:func:`_apply_palette` in numpy, for the onnxruntime backend's outputs ``y`` ``[B, H, W,
    3]`` (jitted, it compiled once per image size: 16 programs and 12 s for a folder of 18
    photos, 6x the job without the palette, which the built-in model has on)."""
    target = np.asarray(_palette_target(moments, cm, np.float32(strength),
                                        use_content=use_content, match=match), np.float32)
    stats = [color.color_stats_np(y[i, :h, :w]) for i, (h, w) in enumerate(hw)]
    a, b = _palette_affine(np.stack([m for m, _ in stats]), np.stack([c for _, c in stats]),
                           target)
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    moved = y @ np.swapaxes(a, -1, -2)[:, None] + b[:, None, None, :]
    return np.clip(y + np.float32(palette) * (moved - y), 0.0, 1.0)


def _at_strength(offset, strength, use_content: bool):
    """Fitted styles' gamma/beta offsets at ``strength`` (below 1 the content's own embedding
    mixes in, and its offset is 0); None stays None. Both backends apply it."""
    if offset is None or not use_content:
        return offset
    return strength * offset


def _stylize_impl(graphdef, state, x, e, offset, small, cm, styles, w, strength, moments,
                  palette, hw, *, use_content: bool, luminance: bool, align: bool,
                  out_uint8: bool, masked: bool):
    """x: [B,H,W,3] content (uint8 or float); e: [B,D] target embeddings (None when styles are
    colour-matched per content: styles [N,S,S,3] + w [N]); offset: [B,G] the fitted styles'
    (mixed) gamma/beta offsets, or None; small: [B,S,S,3] content at the style
    working size (the content's embedding); cm: [B,12] the contents' colour moments (whole
    photo: colour matching, the palette's content part); strength, palette: scalars;
    moments: [B,12] the styles' colour moments (None in match mode); hw: [B,2] unpadded sizes
    (the palette measures the output's colours there); align: apply the palette; masked: the
    transfer network's statistics skip the bucket padding (hw)."""
    _TRACES["stylize"] += 1
    model = nnx.merge(graphdef, state)
    xf = _to_float01(x)
    e = _target_embedding(model, e, small, cm, styles, w, strength, use_content=use_content)
    offset = _at_strength(offset, strength, use_content)
    y = fit_style.transfer_with(model, xf, e, offset, hw if masked else None)
    if align:
        y = _apply_palette(model, y, moments, cm, strength, palette, hw,
                           use_content=use_content, match=styles is not None)
    if luminance:
        y = color.transfer_luminance(y, xf)
    if out_uint8:
        y = jnp.round(jnp.clip(y, 0.0, 1.0) * 255.0).astype(jnp.uint8)
    return y


_stylize_jit = jax.jit(_stylize_impl, static_argnums=(0,),
                       static_argnames=("use_content", "luminance", "align", "out_uint8",
                                        "masked"))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _load_model(path: str, vgg, dtype) -> ArbitraryStyleModel:
    """:func:`arbitrary_nst.export.load_exported` (ModelError, one line, for a bad file)."""
    from . import export

    return export.load_exported(path, vgg=vgg, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Internal records
# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """Resolved style options of one stylize call."""

    e_target: np.ndarray | None  # [D] mixed style embedding (None in match mode)
    styles_small: np.ndarray | None  # [N,S,S,3] style working images (match mode only)
    weights: np.ndarray  # [N]
    strength: float
    luminance: bool
    match: bool
    style_size: int
    style_paths: tuple[str, ...] = ()
    refine: "_Refine | None" = None
    moments: np.ndarray | None = None  # [12] mixed colour moments of the styles (palette target)
    palette: float = 0.0  # how far outputs move to the target's colours (0: not at all)
    offset: np.ndarray | None = None  # [G] mixed gamma/beta offsets of fitted styles (or None)

    @property
    def use_content(self) -> bool:
        return self.strength < 1.0

    @property
    def align(self) -> bool:
        """Whether the palette is applied (module docstring: Palette)."""
        return (self.palette > 0.0 and not self.luminance
                and (self.match or self.moments is not None))

    @property
    def need_small(self) -> bool:
        """The content's working image is used (its embedding)."""
        return self.use_content

    @property
    def need_content_moments(self) -> bool:
        """The content's colour moments are used (colour matching, the palette)."""
        return self.use_content or self.match


#: Below the refinement's working size, contents are refined on squares of a multiple of this
#: (their shorter side rounded down): each side is three compiled programs (20 s here), and
#: a folder of photos with every shorter side from 96 to 168 px compiled 18 of them.
REFINE_SIDE_STEP = 32


def _refine_side(shape: tuple[int, ...], size: int) -> int:
    """Side of the square working copy a content is refined on: ``size`` (a multiple of 4), or
    where the content's shorter side is smaller (no upscaling), that side rounded down to a
    multiple of :data:`REFINE_SIDE_STEP` (>= 32)."""
    shorter = min(shape[:2])
    if shorter >= size:
        return int(size) // 4 * 4
    return max(32, shorter // REFINE_SIDE_STEP * REFINE_SIDE_STEP)


@dataclass
class _Refine:
    """Test-time refinement of a plan's embedding (:mod:`arbitrary_nst.refine`)."""

    steps: int
    learning_rate: float
    style_weight: float
    size: int
    styles_small: np.ndarray  # [N,S,S,3] style working images: the loss targets
    palette: float = 0.0  # the loss sees the output with this palette (as the user will)


@dataclass
class _Item:
    key: Any
    x: np.ndarray  # padded HWC, uint8 or float32
    hw: tuple[int, int]
    small: np.ndarray | None = None  # [S,S,3] float32
    e: np.ndarray | None = None  # [D] per-item target embedding
    meta: Any = None
    m: np.ndarray | None = None  # [12] per-item palette moments (transfer() with several)
    d: np.ndarray | None = None  # [G] per-item gamma/beta offset (transfer() with fitted styles)
    cm: np.ndarray | None = None  # [12] the content's colour moments (whole photo)

    @property
    def group(self) -> tuple:
        return (self.x.shape, self.x.dtype.str)


@dataclass
class FileResult:
    """One content file of :meth:`Stylizer.stylize_files`.

    ``ok``: stylized (and written, when an output was asked for). Otherwise ``reason`` is a
    one-line ``path: why`` and ``kind`` a short category for summaries (``"output exists"``,
    ``"unreadable input"``, ``"cannot write"``, ...). ``image``: the float32 HWC result when
    no output file was requested. ``shape``: ``(h, w)`` of the processed content."""

    content: Path
    output: Path | None
    ok: bool
    reason: str | None = None
    kind: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    shape: tuple[int, int] | None = None


def _kind_of(reason: str) -> str:
    """The summary's kind of a skip, from its reason *without* the file name (a path may
    contain any of the words looked for: a folder named 'empty file' is not a reason)."""
    r = reason.lower()
    for needle, kind in (("exists", "output exists"), ("would overwrite", "output is an input"),
                         ("collides", "duplicate output name"), ("no such file", "missing"),
                         ("empty file", "empty file"), ("not an image", "not an image"),
                         ("truncated", "truncated or corrupt"), ("corrupt", "truncated or corrupt"),
                         ("too large", "too large"), ("permission", "permission denied"),
                         ("px on each side", "too small"),  # (Gatys' VGG minimum, 32 px)
                         ("not readable here", "unsupported format"),
                         ("not read here", "unsupported format"),
                         ("symbolic links", "symlink loop"),
                         # ("a parent path is not a directory" was counted as "is a directory")
                         ("is a directory", "is a directory"), ("cannot write", "cannot write"),
                         ("cannot list", "unreadable folder")):
        if needle in r:
            return kind
    return "error"


def skipped_file(content: Path, dest: Path | None, where: Any, reason: str) -> FileResult:
    """A skipped file whose message is ``where: reason`` and whose kind comes from ``reason``."""
    return FileResult(content, dest, False, f"{where}: {reason}", _kind_of(reason))


def skipped_by_error(content: Path, dest: Path | None, e: NSTError) -> FileResult:
    """A skipped file from a user error (an ImageError's kind comes from its reason alone).
    Other errors (e.g. a refinement that diverged) are about this content too: the message
    names it (unless it already does), as an ImageError's does."""
    if isinstance(e, ImageError):
        return FileResult(content, dest, False, str(e), _kind_of(e.reason))
    why = str(e) if str(content) in str(e) else f"{content}: {e}"
    return FileResult(content, dest, False, why, _kind_of(str(e)))


def earlier_outputs(paths: Sequence[Path], output: Callable[[Path], Any]) -> dict[Path, Path]:
    """Contents that are this job's own outputs, ``{output: the content it is made from}``.

    With the output folder = the content folder, a rerun finds the first run's results among
    the contents; they are skipped (not stylized again into ``x__s__s.png``). They stay inputs
    to protect all the same (a name match cannot tell an earlier result from a photo that
    happens to have that name): the contents they were made from report them as existing
    outputs that even ``overwrite`` does not replace (:func:`output_problem`)."""
    made_by = {}
    for p in paths:
        made_by.setdefault(files.same_file_key(output(p)), p)
    found = {}
    for p in paths:
        src = made_by.get(files.same_file_key(p))
        if src is not None and files.same_file_key(src) != files.same_file_key(p):
            found[p] = src
    return found


def earlier_other_style_outputs(paths: Sequence[Path], output: Callable[[Path], Any]
                                ) -> dict[Path, Path]:
    """Contents that look like results of an earlier run *with another style*: named
    ``{content stem}__{anything}`` with the outputs' suffix, in the folder where that content's
    outputs go (a rerun with a new style stylized them again into x__candy__mond.png). A guess
    (a photo can be named so): ``{guess: the content}``, every ``__`` boundary tried."""
    # (folders by identity: the outputs' folder reached by another path is the same folder)
    where: dict[tuple[tuple, str, str], Path] = {}
    for p in paths:
        dest = Path(os.path.realpath(output(p)))
        where.setdefault((files.same_file_key(dest.parent), dest.suffix.lower(), p.stem), p)
    found = {}
    for p in paths:
        real = Path(os.path.realpath(p))
        folder = files.same_file_key(real.parent)
        parts = p.stem.split("__")
        for k in range(len(parts) - 1, 0, -1):  # longest content stem first
            src = where.get((folder, real.suffix.lower(), "__".join(parts[:k])))
            if src is not None and files.same_file_key(src) != files.same_file_key(real):
                found[p] = src
                break
    return found


def _named(what: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)``, with an ImageError about an in-memory image (no file name)
    saying which argument it is about (``style image: image array contains NaN ...``)."""
    try:
        return fn(*args, **kwargs)
    except ImageError as e:
        if e.path is not None:
            raise
        raise ImageError(what, e.reason) from None


def output_path(output: Callable[[Path], Any], content: Path) -> Path:
    """``output(content)`` as a Path; ConfigError if the callback returns something else."""
    dest = output(content)
    if not isinstance(dest, (str, os.PathLike)):
        raise ConfigError(f"output({content}) must return a path, got {type(dest).__name__}")
    return Path(os.fspath(dest))


def plan_outputs(paths: Sequence[Path], output: Callable[[Path], Any],
                 inputs: Iterable[str | os.PathLike], overwrite: bool, *,
                 collision_hint: str = "rename one of the inputs"
                 ) -> tuple[list[FileResult], list[tuple[int, Path, Path]]]:
    """Where each content's result goes, decided before any work: ``(skips, jobs)`` with
    ``jobs`` the ``(index, content, output path)`` to run. Skipped: contents that are this
    job's own earlier outputs (:func:`earlier_outputs`), outputs that are an input (the
    contents and ``inputs``; never replaced, even with ``overwrite``; nor is an earlier output,
    which a name match cannot tell from a photo of that name), existing files unless
    ``overwrite``, and a second content with the same output name (``collision_hint``: what
    to do about it). ``output`` is called once per content."""
    dests = {p: output_path(output, p) for p in paths}
    earlier = earlier_outputs(paths, dests.__getitem__)
    guessed = {p: src for p, src in earlier_other_style_outputs(paths, dests.__getitem__).items()
               if p not in earlier}
    earlier.update(guessed)
    # (by file identity: an output folder that is the content folder reached by another path,
    # a bind mount, replaced the inputs with --overwrite)
    earlier_real = {files.same_file_key(p) for p in earlier}
    guarded = {files.same_file_key(p) for p in [*paths, *inputs]}
    skips: list[FileResult] = []
    jobs: list[tuple[int, Path, Path]] = []
    claimed: dict[tuple, Path] = {}
    for i, p in enumerate(paths):
        if unreadable := images.unreadable_reason(p):  # (IMG_1.CR2 claimed IMG_1.JPG's name)
            skips.append(skipped_file(p, None, p, unreadable))
            continue
        if p in guessed:
            skips.append(FileResult(
                p, None, False, f"{p}: looks like an earlier run's result for {guessed[p]} with "
                "another style, so it is not stylized again (rename it to stylize it)",
                "earlier output"))
            continue
        if p in earlier:
            skips.append(earlier_output_result(p, earlier[p]))
            continue
        dest = dests[p]
        real = files.same_file_key(dest)
        if real in earlier_real:
            why = ("exists and is one of this job's contents (an earlier run's result?), so it "
                   "is not replaced even with --overwrite; write to another folder to redo it")
        elif real in guarded:
            why = "would overwrite an input file; choose another output"
        elif real in claimed:  # the kind is set here: the reason names another path
            # (before "exists": on a rerun both of a.jpg and a.png said "out/a__s.png: exists"
            # and the clash showed only after --overwrite, as told)
            skips.append(FileResult(p, dest, False, f"{p}: its output {dest} collides with the "
                                    f"output of {claimed[real]}; {collision_hint}",
                                    "duplicate output name"))
            continue
        else:
            claimed[real] = p
            if os.path.isdir(dest):  # (it said "pass --overwrite", which then failed otherwise)
                why = "is a directory, expected an output file name"
            elif not overwrite and os.path.lexists(dest):
                why = "exists; pass --overwrite (overwrite=True) to replace it"
            else:
                jobs.append((i, p, dest))
                continue
        skips.append(skipped_file(p, dest, dest, why))
    return skips, jobs


def earlier_output_result(content: Path, source: Path) -> FileResult:
    """The skip of a content that is this job's output for ``source`` (:func:`earlier_outputs`)."""
    return FileResult(content, None, False,
                      f"{content}: this job's output for {source} (an earlier run's result); "
                      "not stylized again", "earlier output")


# --------------------------------------------------------------------------------------------
# The Stylizer
# --------------------------------------------------------------------------------------------


class Stylizer:
    """Jitted, bucketed, data-parallel inference with an :class:`ArbitraryStyleModel`.

    Args:
      model: the model (e.g. from :func:`arbitrary_nst.export.load_exported`).
      style_size: working size of style images (see the module docstring).
      buckets: padded side lengths (default :data:`DEFAULT_BUCKETS`; ``None``: exact sizes
        rounded up to a multiple of 4).
      batch_size: content images per device call of the whole mesh (default
        :func:`default_batch_size`: 8 per accelerator, 1 on CPU).
      devices: devices of the data-parallel mesh (default: all local devices).
      max_pixels: refuse image files with more pixels than this (decompression-bomb guard).
      source: where the model came from (for messages).
      backend: ``"jax"``, ``"onnxruntime"`` (CPU: the exported transfer graph; see the
        module docstring) or ``"auto"`` (:func:`resolve_backend`: onnxruntime on CPU devices
        in float32, JAX otherwise). ``self.backend`` is the one chosen.
      threads: onnxruntime's intra-op threads (default: the CPUs this process may use,
        ``onnx_export.default_threads``); ignored by ``"jax"``.
    """

    def __init__(self, model: ArbitraryStyleModel, *, style_size: int = DEFAULT_STYLE_SIZE,
                 buckets: Sequence[int] | None = DEFAULT_BUCKETS,
                 batch_size: int | None = None, devices: Sequence[Any] | None = None,
                 max_pixels: int | None = images.DEFAULT_MAX_PIXELS, source: str | None = None,
                 backend: str = "jax", threads: int | None = None):
        self.model = model
        check_backend(backend)
        devs = check_devices(jax.local_devices() if devices is None else devices)
        threads = check_count(threads, "threads")
        self.backend = resolve_backend(backend, devs, model)  # ("auto": the faster one here)
        self._onnx = None
        if self.backend == "onnxruntime":
            from .onnx_export import OnnxTransfer

            try:  # (with the offset input: fitted styles run on onnxruntime too)
                self._onnx = OnnxTransfer(model, threads=threads, offset_input=True)
            except ModelError as e:
                if backend != "auto":
                    raise
                # "auto" only picks the faster backend: where onnxruntime cannot take the
                # graph, JAX runs it (said once; the results are the same to ~1e-6)
                warnings.warn(f"onnxruntime cannot run this model ({e}); running on JAX",
                              stacklevel=2)
                self.backend = "jax"
        self.style_size = self._check_style_size(style_size)
        if buckets is not None and (not isinstance(buckets, collections.abc.Iterable)
                                    or isinstance(buckets, (str, bytes))):  # (not its chars)
            raise ConfigError(f"buckets must be a list of side lengths (or None), got "
                              f"{buckets!r}")
        self.buckets = None if buckets is None else tuple(
            sorted(check_count(b, "each bucket", 8, optional=False) for b in buckets))
        if self.buckets is not None and (not self.buckets or any(b % 4 for b in self.buckets)):
            raise ConfigError(f"buckets must be multiples of 4 and >= 8 (at least one; None: no "
                              f"buckets), got {buckets!r}")
        self.batch_size = check_count(default_batch_size() if batch_size is None else batch_size,
                                      "batch size")
        self.max_pixels = check_count(max_pixels, "max_pixels")
        self.source = source
        self.mesh = Mesh(np.asarray(devs, dtype=object), ("data",))
        self._repl = NamedSharding(self.mesh, P())
        self._data = NamedSharding(self.mesh, P("data"))
        self._graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, self._repl)
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self._refine_lock = threading.Lock()
        self._fingerprint: str | None = None  # of the model, for fitted styles (lazy)
        self.cache_size = 1024

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, vgg=None, dtype=None,
             **kwargs) -> "Stylizer":
        """Load the built-in model (``path=None``) or an export (``.safetensors`` file, or a
        training workdir holding ``model.safetensors``). VGG16 weights are resolved as
        :func:`arbitrary_nst.vgg.load_vgg16` does (or pass ``vgg``). ``dtype``: compute dtype
        (``"float32"`` default, ``"bfloat16"`` on GPU). Other keyword arguments go to
        :class:`Stylizer`. Raises ModelError (one line) for a missing or corrupt model file."""
        if path is None:
            if not BUILTIN_MODEL.is_file():
                raise ModelError(f"no built-in model ({BUILTIN_MODEL} is missing): pass a model "
                                 "export (Stylizer.load(path) / --model PATH), or train one with "
                                 "train.py")
            name = str(BUILTIN_MODEL)
        else:
            from . import export

            if not isinstance(path, (str, os.PathLike)):
                raise ConfigError(f"model path must be a path, got {type(path).__name__}")
            if fit_style.is_fitted_style_path(path):
                raise ConfigError(f"{os.fspath(path)}: a fitted style (.npz) is a style, not a "
                                  "model: pass it as a style (--style); the model is a "
                                  ".safetensors export or a training workdir")
            name = export.model_file(path)
            # (the rest, a FIFO or a symlink loop, is said by export.read_export's check)
            if files.regular_file_problem(name) == "no such file":
                raise ModelError(f"{name}: no such model file")
        dtypes = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
        if dtype is not None:
            try:  # strings and dtype objects (jnp.int8 ran, giving flat grey images)
                key = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
            except TypeError:
                key = None
            if key not in dtypes:
                raise ConfigError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
            dtype = dtypes[key]
        if dtype is not None and kwargs.get("backend") == "onnxruntime":
            raise ConfigError("the onnxruntime backend computes in float32: leave dtype out "
                              "(bfloat16 is for the JAX backend on GPUs)")
        # ("auto" with a bfloat16 model: resolve_backend picks JAX from the model's dtype)
        if vgg is None:
            from .vgg import load_vgg16

            vgg = load_vgg16()
        model = _load_model(name, vgg, dtype)
        return cls(model, source=name, **kwargs)

    @staticmethod
    def _check_style_size(size: Any) -> int:
        return check_count(size, "style size", 32, MAX_STYLE_SIZE)

    # -- properties -------------------------------------------------------------------------
    @property
    def devices(self) -> list:
        return list(self.mesh.devices.reshape(-1))

    @property
    def num_devices(self) -> int:
        return int(self.mesh.devices.size)

    @property
    def embedding_dim(self) -> int:
        return self.model.embedding_dim

    def padded_shape(self, h: int, w: int) -> tuple[int, int]:
        """The bucket an ``h x w`` content image runs at."""
        return bucket_shape(h, w, self.buckets)

    def padded_batch(self, n: int, cap: int | None = None) -> int:
        """Batch size ``n`` images run at: next power of two (at most ``cap``, default
        ``batch_size``, but >= n), rounded up to a multiple of the device count."""
        cap = self.batch_size if cap is None else cap
        b = min(_pow2_at_least(n), max(int(cap), n))
        nd = self.num_devices
        return -(-b // nd) * nd

    # -- images -----------------------------------------------------------------------------
    @_jax_errors_typed
    def read(self, x: ImageInput, max_side: int | None = None) -> np.ndarray:
        """Any single image input -> HWC RGB: ``uint8`` for 8-bit files, PIL images and uint8
        arrays (sent to the device as bytes, a quarter of float32), else float32 in [0, 1]
        (16-bit grey files too: they keep their depth, as the same data as an array does)."""
        if _is_path(x):
            return images.load_pixels(x, max_pixels=self.max_pixels, max_side=max_side)
        if isinstance(x, jax.Array):
            x = np.asarray(x)
        _refuse_file_object(x, None)  # (one of a list: named by the caller)
        _refuse_non_image(x, None)
        if _is_pil(x):
            u8 = images.to_uint8(x)  # 8-bit RGB, converted as load_image does
        elif (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 3
              and x.shape[2] == 3):
            u8 = x
        else:
            u8 = None
        if u8 is not None:
            if min(u8.shape[:2]) < 1:  # (the float path checks this in check_array_image)
                raise ImageError(None, f"empty image (shape {u8.shape})")
            if max_side is not None and max(u8.shape[:2]) > max_side:
                from PIL import Image

                return np.asarray(images.downscale_pil(Image.fromarray(u8), max_side), np.uint8)
            return np.ascontiguousarray(u8)
        f = images.array_to_float(x)
        if max_side is not None:
            f = images.resize_max_side(f, max_side)
        return f

    def _style_small(self, x: ImageInput, size: int, what: str = "style image") -> np.ndarray:
        """``x``'s working image; ``what`` names an array in errors (``style image 2``: the
        third of a list)."""
        if _is_fitted(x):  # (it was "not an image (cannot identify format)")
            raise ConfigError(f"{x if _is_path(x) else x.name}: a fitted style is not an "
                              "image: it has no embedding or palette of its own to compute; "
                              "use it as a style of stylize()/stylize_files() (style_parts() "
                              "gives its embedding and offset)")
        if _is_path(x):
            img = images.load_image(x, max_pixels=self.max_pixels, max_side=8 * size)
        else:
            img = images.to_float(_named(what, self.read, x))
        return style_working_image(img, size)

    def _cache_key(self, x: Any, size: int) -> tuple | None:
        if not _is_path(x):
            return None
        try:
            return (*files.file_identity(os.fspath(x)), size)
        except OSError:
            return None  # load_image reports the problem

    # -- embeddings -------------------------------------------------------------------------
    def _embed_small(self, small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[N,S,S,3]`` float32 working images -> embeddings ``[N, D]`` and colour moments
        ``[N, 12]`` (batched, sharded)."""
        n = small.shape[0]
        es, ms = [], []
        for i in range(0, n, self.batch_size):
            chunk = small[i: i + self.batch_size]
            b = self.padded_batch(len(chunk))
            if b > len(chunk):
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - len(chunk), 0)])
            x = jax.device_put(chunk, self._data)
            e, m = _embed_jit(self._graphdef, self._state, x)
            k = min(self.batch_size, n - i)
            es.append(np.asarray(e)[:k])
            ms.append(np.asarray(m)[:k])
        return np.concatenate(es).astype(np.float32), np.concatenate(ms).astype(np.float32)

    @_jax_errors_typed
    def embed(self, styles: ImageInput | Sequence[ImageInput], *,
              style_size: int | None = None) -> np.ndarray:
        """Style embeddings ``[N, D]`` of one or several style images (paths, PIL images,
        arrays; an NHWC array is N styles). Each is brought to the working size first; file
        embeddings are cached. Raises ImageError for an unreadable file."""
        return self.embed_with_palettes(styles, style_size=style_size)[0]

    @_jax_errors_typed
    def palettes(self, styles: ImageInput | Sequence[ImageInput], *,
                 style_size: int | None = None) -> np.ndarray:
        """Colour moments ``[N, 12]`` of style images at their working size (the palette
        targets, :func:`arbitrary_nst.color.color_moments`; cached with the embeddings). Mix
        them with :meth:`mix` like embeddings and pass them as ``palette_moments=``."""
        return self.embed_with_palettes(styles, style_size=style_size)[1]

    @_jax_errors_typed
    def embed_with_palettes(self, styles: ImageInput | Sequence[ImageInput], *,
                            style_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`embed` and :meth:`palettes` from one predictor pass (arrays are not cached,
        so asking for both separately would embed them twice)."""
        size = self.style_size if style_size is None else self._check_style_size(style_size)
        items, _ = _as_image_list(styles, "style")
        return self._embed(items, size)

    def _embed(self, items: Sequence[ImageInput], size: int,
               small: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`embed` and :meth:`palettes` of a list; ``small``: the items' working images
        when the caller has them already (refinement needs them as loss targets), so no file
        is decoded twice."""
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(items)
        todo: list[tuple[int, tuple | None, np.ndarray]] = []
        for i, s in enumerate(items):
            key = self._cache_key(s, size)
            if key is not None:
                with self._cache_lock:
                    hit = self._cache.get(key)
                    if hit is not None:
                        self._cache.move_to_end(key)
                if hit is not None:
                    out[i] = hit
                    continue
            todo.append((i, key, self._style_small(s, size, _style_name(i, items))
                         if small is None else small[i]))
        if todo:
            emb, mom = self._embed_small(np.stack([t[2] for t in todo]))
            for (i, key, _), e, m in zip(todo, emb, mom):
                out[i] = (e, m)
                if key is not None:
                    with self._cache_lock:
                        self._cache[key] = (e, m)
                        while len(self._cache) > self.cache_size:
                            self._cache.popitem(last=False)
        return (np.stack([o[0] for o in out]).astype(np.float32),
                np.stack([o[1] for o in out]).astype(np.float32))

    def _model_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fit_style.model_fingerprint(self.model)
        return self._fingerprint

    def _fitted(self, x: Any) -> fit_style.FittedStyle:
        fs = x if isinstance(x, fit_style.FittedStyle) else fit_style.FittedStyle.load(x)
        if fs.fingerprint != self._model_fingerprint():
            raise ConfigError(f"{x if _is_path(x) else fs.name}: fitted for another model "
                              f"(fingerprint {fs.fingerprint}, this model {self._fingerprint});"
                              " fit it again for this one")
        return fs

    def _style_parts(self, items: Sequence[Any], size: int, small: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Embeddings ``[N, D]``, colour moments ``[N, 12]`` and gamma/beta offsets ``[N, G]``
        (None when no item is a fitted style; 0 for style images) of a list of style images
        and fitted styles."""
        fitted = {i: self._fitted(x) for i, x in enumerate(items) if _is_fitted(x)}
        plain = [i for i in range(len(items)) if i not in fitted]
        e = np.zeros((len(items), self.embedding_dim), np.float32)
        m = np.zeros((len(items), color.MOMENTS_DIM), np.float32)
        if plain:
            e[plain], m[plain] = self._embed([items[i] for i in plain], size,
                                             None if small is None else small[plain])
        if not fitted:
            return e, m, None
        d = np.zeros((len(items), self._conditioning_size), np.float32)
        for i, fs in fitted.items():
            # (named by its file where it has one, not the painting; one built in memory is
            # checked as a loaded one is: NaN gave a NaN image, a list a raw AttributeError)
            label = os.fspath(items[i]) if _is_path(items[i]) else fs.name
            try:
                emb, cond, mom = (np.asarray(getattr(fs, k), np.float32)
                                  for k in ("embedding", "conditioning", "moments"))
            except (TypeError, ValueError):
                raise ConfigError(f"{label}: fitted style arrays are not numbers") from None
            if emb.shape != (self.embedding_dim,) or cond.shape != (self._conditioning_size,):
                raise ConfigError(f"{label}: fitted style has the wrong size for this model")
            if mom.shape != (color.MOMENTS_DIM,) or not all(np.all(np.isfinite(a))
                                                             for a in (emb, cond, mom)):
                raise ConfigError(f"{label}: fitted style arrays have wrong shapes or "
                                  "non-finite values")
            e[i], m[i] = emb, mom
            d[i] = cond - self._heads(emb)
        return e, m, d

    def _heads(self, e: np.ndarray) -> np.ndarray:
        return np.asarray(_heads_jit(self._graphdef, self._state,
                                     jnp.asarray(e, jnp.float32)[None]))[0]

    @property
    def _conditioning_size(self) -> int:
        return fit_style.conditioning_size(self.model.cin_channels)

    @_jax_errors_typed
    def style_parts(self, styles: Any, *, style_size: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`embed_with_palettes` for style images *and* fitted styles (objects or
        ``.npz`` files): ``(embeddings [N, D], moments [N, 12], offsets [N, G] or None)``.
        The offsets (fitted minus predicted gamma/beta; 0 for images) go to :meth:`transfer`
        with the embeddings; mix all three with the same weights."""
        size = self.style_size if style_size is None else self._check_style_size(style_size)
        items, _ = _as_image_list(styles, "style")
        return self._style_parts(items, size)

    @_jax_errors_typed
    def fit_style(self, style: Any, photos: Sequence[Any], *,
                  steps: int = fit_style.DEFAULT_STEPS,
                  learning_rate: float = fit_style.DEFAULT_LEARNING_RATE,
                  batch_size: int = fit_style.DEFAULT_BATCH_SIZE,
                  size: int = fit_style.DEFAULT_SIZE, style_size: int | None = None,
                  style_weight: float | None = None, palette: float | None = None,
                  seed: int = 0, progress: bool = False) -> fit_style.FittedStyle:
        """Fit one style's gamma/beta on photos (:mod:`arbitrary_nst.fit_style`).

        ``style``: one style image; ``photos``: images (paths, arrays, PIL) that are a sample of
        what the style will be applied to; each becomes a ``size`` x ``size`` working copy
        (shorter side resized, centre square). Unreadable photo files are skipped and listed in
        the result's ``info["skipped"]``; ConfigError if none is left. Of more than
        ``fit_style.MAX_PHOTOS`` photos a seeded random sample is used. The result goes to
        :meth:`stylize` as ``style=`` (also mixed with images) and saves with ``.save(path)``.
        """
        sw = fit_style.DEFAULT_STYLE_WEIGHT if style_weight is None else style_weight
        fit_style.check_options(steps, learning_rate, batch_size, sw)
        wsize = self._check_style_size(size)
        ssize = self.style_size if style_size is None else self._check_style_size(style_size)
        items, _ = _as_image_list(style, "style")
        if len(items) != 1 or _is_fitted(items[0]):
            raise ConfigError("fit_style takes one style image")
        small = self._style_small(items[0], ssize)[None]
        e0 = self._embed(items, ssize, small)[0][0]
        photos, _ = _as_image_list(photos, "photos")
        given = len(photos)
        if given > fit_style.MAX_PHOTOS:  # a seeded sample bounds memory (~0.8 MB per photo)
            pick = np.random.default_rng(seed).choice(given, fit_style.MAX_PHOTOS, replace=False)
            photos = [photos[i] for i in sorted(pick)]
        work, skipped = [], []
        for i, p in enumerate(photos):
            name = str(p) if _is_path(p) else f"photo {i}"
            try:
                f = images.to_float(_named(name, self.read, p, 8 * wsize))
            except NSTError as err:
                skipped.append(str(err))
                continue
            if min(f.shape[:2]) < 32:  # (a 4000x50 panorama is 2048x25 as read: say so)
                skipped.append(f"{name}: smaller than 32 px on its shorter side ({f.shape[1]}x"
                               f"{f.shape[0]} px as read, the longer side at most {8 * wsize})")
                continue
            w = style_working_image(f, wsize)  # one shape: smaller photos upscaled
            # (of the centre square the fit sees: a photo blank there but not at its sides
            # made the whole fit's loss NaN, "fit_style diverged")
            if (why := images.blank_reason(w)) is not None:  # its gradient would be NaN
                skipped.append(f"{name}: {why}" + ("" if images.blank_reason(f) else
                                                   " in its centre square"))
                continue
            work.append(w)
        if not work:
            first = f": {skipped[0]}" + (", ..." if len(skipped) > 1 else "") if skipped else ""
            raise ConfigError(f"fit_style: no usable photos ({len(skipped)} skipped{first})")
        work = np.stack(work)
        pal = check_palette(self.model.palette if palette is None else palette)
        with self._refine_lock:
            cond, moments, hist = fit_style.fit_conditioning(
                (self._graphdef, self._state), small[0], work, e0, steps=steps,
                learning_rate=learning_rate, batch_size=batch_size, style_weight=sw,
                palette=pal, seed=seed, progress=progress)
        if not np.all(np.isfinite(cond)):
            raise ModelError("fit_style diverged (the loss became NaN or infinite); try a lower "
                             "learning rate")
        name = Path(os.fspath(items[0])).stem if _is_path(items[0]) else "style"
        info = {"name": name, "steps": int(steps), "learning_rate": float(learning_rate),
                "batch_size": int(batch_size), "size": int(wsize), "style_size": int(ssize),
                "style_weight": float(sw), "palette": float(pal), "seed": int(seed),
                "photos": int(len(work)), "photos_given": int(given), "skipped": skipped,
                # (which photos, in which order: the counts alone could not tell two fits apart)
                "photos_digest": hashlib.sha256(np.ascontiguousarray(work).tobytes())
                .hexdigest()[:16]}
        return fit_style.FittedStyle(cond, e0, moments, hist, self._model_fingerprint(), info)

    def mix(self, embeddings: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
        """Convex mix ``sum_k w_k e_k`` of ``[N, D]`` embeddings (weights normalized); the
        same for ``[N, 12]`` colour moments (:meth:`palettes`)."""
        e = self._finite_array(embeddings, "embeddings")
        if e.ndim == 1:
            e = e[None]
        if e.ndim != 2:
            raise ConfigError(f"mix takes [N, D] embeddings (or [N, 12] colour moments), got "
                              f"shape {e.shape}")
        w = normalize_weights(weights, e.shape[0])
        return (w[:, None] * e).sum(0).astype(np.float32)

    def clear_cache(self, *, compiled: bool = False) -> None:
        """Forget the cached style embeddings (of style files; at most ``cache_size``, least
        recently used first out). ``compiled``: also drop JAX's compiled programs
        (``jax.clear_caches()``, for every model of the process: the next calls compile
        again). Each padded content shape (bucket) and option set (strength < 1, palette,
        colour preservation, output dtype, ``style_size``) has its own program, ~10-25 MB of
        host memory on CPU, so a long-running service that meets many photo sizes grows by
        that much per new one; ``max_size`` bounds how many there can be."""
        with self._cache_lock:
            self._cache.clear()
        if compiled:
            jax.clear_caches()

    # -- planning ---------------------------------------------------------------------------
    def _plan(self, style, weights, strength, preserve_color, embedding, style_size,
              refine_steps: int = 0, palette: float | None = None,
              palette_moments: np.ndarray | None = None) -> _Plan:
        if refine_steps and style is not None and any(
                _is_fitted(x) for x in _as_image_list(style, "style")[0]):
            raise ConfigError("refine_steps does not apply to fitted styles (they are "
                              "optimized already); give the style image to refine")
        plan, small = self._plan_styles(style, weights, strength, preserve_color, embedding,
                                        style_size, keep_small=bool(refine_steps))
        plan.palette = check_palette(self.model.palette if palette is None else palette)
        if palette_moments is not None:
            if embedding is None:
                raise ConfigError("palette_moments goes with embedding=; with style images the "
                                  "palette comes from them")
            # one palette per embedding row, mixed alike (one embedding with two palettes took
            # one style's texture and half of each colour palette without a word)
            n_emb = 1 if np.ndim(embedding) == 1 else int(np.shape(embedding)[0])
            m = _moments_array(palette_moments)
            n_m = -1 if m.size == 0 or m.ndim > 2 else 1 if m.ndim == 1 else int(m.shape[0])
            if n_m not in (-1, n_emb):
                raise ConfigError(f"palette_moments has {n_m} row{'s' * (n_m != 1)} for "
                                  f"{n_emb} embedding row{'s' * (n_emb != 1)}: one per style, "
                                  "in the embeddings' order (Stylizer.palettes)")
            plan.moments = self._check_moments(palette_moments, weights)
        if not refine_steps:
            return plan
        from . import refine

        refine.check_options(refine_steps, refine.DEFAULT_LEARNING_RATE,
                             refine.DEFAULT_STYLE_WEIGHT)
        if plan.match:
            raise ConfigError("refine_steps does not combine with preserve_color='match'; use "
                              "preserve_color='luminance'")
        if style is None:
            raise ConfigError("refine_steps needs style images (the loss targets), not an "
                              "embedding")

        plan.refine = _Refine(int(refine_steps), refine.DEFAULT_LEARNING_RATE,
                              refine.DEFAULT_STYLE_WEIGHT, refine.DEFAULT_SIZE, small,
                              plan.palette if plan.align else 0.0)
        return plan

    def _plan_styles(self, style, weights, strength, preserve_color, embedding, style_size,
                     keep_small: bool = False) -> tuple[_Plan, np.ndarray | None]:
        """The plan, and the style working images when ``keep_small`` (else ``None``)."""
        s = check_strength(strength)
        mode = preserve_color_mode(preserve_color)
        size = self.style_size if style_size is None else self._check_style_size(style_size)
        if embedding is not None:
            if style is not None:
                raise ConfigError("give either style images or an embedding, not both")
            if mode == "match":
                raise ConfigError("preserve_color='match' needs style images, not an embedding")
            e = self._finite_array(embedding, "embedding")
            if e.ndim == 2:
                e = self.mix(e, weights)
            elif weights is not None:
                raise ConfigError("weights mix several embeddings ([N, D]); one embedding "
                                  "takes none")
            if e.shape != (self.embedding_dim,):
                raise ConfigError(f"embedding must have shape ({self.embedding_dim},) or "
                                  f"(N, {self.embedding_dim}), got {np.shape(embedding)}")
            return _Plan(e, None, np.ones(1, np.float32), s, mode == "luminance", False,
                         size), None
        items, _ = _as_image_list(style, "style")
        w = normalize_weights(weights, len(items))
        _check_weights_have_an_order(style, weights)
        paths = tuple(os.path.realpath(os.fspath(p)) for p in items if _is_path(p))
        fitted = [_is_fitted(x) for x in items]
        if any(fitted) and mode == "match":
            raise ConfigError("preserve_color='match' recolours style images; fitted styles "
                              "are not images: use preserve_color='luminance'")
        if mode == "match":
            small = np.stack([self._style_small(x, size, _style_name(i, items))
                              for i, x in enumerate(items)])
            return _Plan(None, small, w, s, False, True, size, paths), small
        small = (np.stack([self._style_small(x, size, _style_name(i, items))
                           for i, x in enumerate(items)]) if keep_small else None)
        es, ms, ds = self._style_parts(items, size, small)
        e = (w[:, None] * es).sum(0).astype(np.float32)
        m = (w[:, None] * ms).sum(0).astype(np.float32)
        d = None if ds is None else (w[:, None] * ds).sum(0).astype(np.float32)
        return _Plan(e, None, w, s, mode == "luminance", False, size, paths, moments=m,
                     offset=d), small

    @staticmethod
    def _finite_array(x: Any, what: str) -> np.ndarray:
        """``x`` as float32, finite (ConfigError naming ``what`` otherwise): a NaN or infinite
        embedding would make every output pixel NaN."""
        try:
            a = np.asarray(x, np.float32)
        except _TRACER_ERRORS:  # (TypeErrors: for the entry point's one line, not this one)
            raise
        except (TypeError, ValueError):
            raise ConfigError(f"{what} must be an array of numbers, got "
                              f"{type(x).__name__}") from None
        if not np.all(np.isfinite(a)):
            raise ConfigError(f"{what} has NaN or infinite values")
        if a.size and np.abs(a).max() > EMBEDDING_LIMIT:  # (1e20 x an embedding: a NaN image)
            raise ConfigError(f"{what} has values up to {np.abs(a).max():.3g}: beyond "
                              f"{EMBEDDING_LIMIT:g} the conditioning overflows float32 (the "
                              "styles' own are below 100)")
        return a

    def _check_moments(self, moments: Any, weights=None) -> np.ndarray:
        """``[12]`` or ``[N, 12]`` (mixed with ``weights``) colour moments -> ``[12]``: the
        moments of some image's pixels in [0, 1] (means in [0, 1], a positive semi-definite
        covariance); others gave black or muddy images without a word."""
        m = _moments_array(moments)
        # (mixed only when finite: mix's own check called NaN moments "embeddings")
        if m.ndim == 2 and m.shape[-1] == color.MOMENTS_DIM and np.all(np.isfinite(m)):
            m = self.mix(m, weights)
        if m.shape != (color.MOMENTS_DIM,) or not np.all(np.isfinite(m)):
            raise ConfigError(f"palette_moments must be finite numbers with shape "
                              f"({color.MOMENTS_DIM},) or (N, {color.MOMENTS_DIM}) "
                              f"(Stylizer.palettes), got {_describe(moments)}")
        return _check_moment_values(m)

    # -- the device call --------------------------------------------------------------------
    def _dispatch(self, items: list[_Item], plan: _Plan, out_uint8: bool, cap: int):
        """Stack, pad and shard a batch of same-shape items; start the jitted call (async)."""
        if self._onnx is not None:
            return self._run_onnx(items, plan, out_uint8)
        n = len(items)
        b = self.padded_batch(n, cap)
        fill = items + [items[-1]] * (b - n)
        put = lambda a: jax.device_put(a, self._data)  # noqa: E731
        x = put(np.stack([it.x for it in fill]))
        small = put(np.stack([it.small for it in fill])) if plan.need_small else None
        cm = (put(np.stack([it.cm for it in fill])) if plan.need_content_moments else None)
        if plan.match:
            e = None
            styles = jax.device_put(plan.styles_small, self._repl)
            w = jax.device_put(plan.weights, self._repl)
        else:
            e = put(np.stack([it.e if it.e is not None else plan.e_target for it in fill])
                    .astype(np.float32))
            styles = w = None
        offset = self._item_offsets(fill, plan)
        if offset is not None:
            offset = put(offset)
        moments = self._item_moments(fill, plan)
        if moments is not None:
            moments = put(moments)
        # Bucketed: the network's statistics skip the padding. Exact sizes (buckets=None) run
        # unmasked: the network's own result on the image padded to a multiple of 4 (to float
        # rounding, ~1e-6: the same math compiled in another program).
        masked = self.buckets is not None
        hw = (put(np.asarray([it.hw for it in fill], np.int32)) if plan.align or masked
              else None)
        strength = jax.device_put(np.float32(plan.strength), self._repl)
        palette = jax.device_put(np.float32(plan.palette), self._repl)
        return _stylize_jit(self._graphdef, self._state, x, e, offset, small, cm, styles, w,
                            strength, moments, palette, hw, use_content=plan.use_content,
                            luminance=plan.luminance, align=plan.align, out_uint8=out_uint8,
                            masked=masked)

    def _item_offsets(self, items: list[_Item], plan: _Plan) -> np.ndarray | None:
        """``[B, G]`` gamma/beta offsets of a batch (None when no fitted style takes part)."""
        if plan.offset is None and all(it.d is None for it in items):
            return None
        zero = np.zeros((self._conditioning_size,), np.float32)
        return np.stack([it.d if it.d is not None else
                         (plan.offset if plan.offset is not None else zero)
                         for it in items]).astype(np.float32)

    @staticmethod
    def _item_moments(items: list[_Item], plan: _Plan) -> np.ndarray | None:
        """``[B, 12]`` palette targets of a batch (None when the palette is off or comes from
        the content, in match mode)."""
        if not plan.align or plan.match:
            return None
        return np.stack([it.m if it.m is not None else plan.moments for it in items]
                        ).astype(np.float32)

    def _run_onnx(self, items: list[_Item], plan: _Plan, out_uint8: bool) -> np.ndarray:
        """The ``onnxruntime`` backend's batch: embeddings from JAX, the transfer on
        onnxruntime (synchronous; decode/encode threads keep running meanwhile)."""
        x = np.stack([it.x for it in items])
        xf = x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x
        e = (None if plan.match else
             np.stack([it.e if it.e is not None else plan.e_target for it in items])
             .astype(np.float32))
        small = np.stack([it.small for it in items]) if plan.need_small else None
        cm = np.stack([it.cm for it in items]) if plan.need_content_moments else None
        if plan.match or plan.use_content:
            styles, w = (plan.styles_small, plan.weights) if plan.match else (None, None)
            e = np.asarray(_embedding_jit(self._graphdef, self._state, e, small, cm, styles, w,
                                          np.float32(plan.strength),
                                          use_content=plan.use_content))
        offset = _at_strength(self._item_offsets(items, plan), np.float32(plan.strength),
                              plan.use_content)
        hw = np.asarray([it.hw for it in items], np.int32)
        # Each image at its own multiple-of-4 size (the first rows/columns of a bucket's
        # reflection are that padding): the exact result, as the JAX path's masked network
        # gives (onnxruntime compiles nothing per shape, so buckets save it nothing).
        xf = np.asarray(xf, np.float32)
        y = np.zeros(xf.shape, np.float32)
        exact = [bucket_shape(h, w, None) for h, w in hw]
        for shape in dict.fromkeys(exact):
            i = [k for k, s in enumerate(exact) if s == shape]
            try:
                y[i, : shape[0], : shape[1]] = self._onnx.run_padded(  # (padded, checked)
                    np.ascontiguousarray(xf[i, : shape[0], : shape[1]]), e[i],
                    None if offset is None else offset[i])
            except ModelError as ex:  # (not out of memory: _jax_errors_typed maps that)
                raise ModelError(f"{ex}; backend='jax' (--backend jax) does not use "
                                 "onnxruntime") from None
        # (on the host: jitted, these compiled once per image size, which onnxruntime avoids)
        if plan.align:
            y = _align_on_host(y, self._item_moments(items, plan), cm, plan.strength,
                               plan.palette, hw, use_content=plan.use_content, match=plan.match)
        if plan.luminance:
            y = color.transfer_luminance_np(y, xf)
        return images.to_uint8(y) if out_uint8 else y

    def _prepare_array(self, key, img: np.ndarray, plan: _Plan, e=None, meta=None,
                       stop: threading.Event | None = None) -> _Item:
        if plan.refine is not None and e is None:
            e = self._refined(img, plan, stop)
        h, w = img.shape[:2]
        x = pad_to(img, self.padded_shape(h, w))
        small = cm = None
        if plan.need_small or plan.need_content_moments:
            f = img if img.dtype == np.float32 else img.astype(np.float32) / np.float32(255.0)
            if plan.need_small:
                small = style_working_image(f, plan.style_size)
            if plan.need_content_moments:  # of the whole photo, not of its working square
                cm = color.color_moments_np(f)
        return _Item(key, x, (h, w), small, e, meta, cm=cm)

    def _refined(self, img: np.ndarray, plan: _Plan,
                 stop: threading.Event | None = None) -> np.ndarray:
        """The plan's embedding refined for this content (see :meth:`refine_embedding`)."""
        f = img if img.dtype == np.float32 else img.astype(np.float32) / np.float32(255.0)
        # (no loss after the last step: nobody reads the history here, and it was one more
        # compiled program per size and one more network + VGG pass per photo)
        e, _ = self._refine_one(f, plan.e_target, plan.weights, plan.refine, stop,
                                final_loss=False)
        return e

    def _refine_one(self, content: np.ndarray, e0: np.ndarray, weights: np.ndarray,
                    r: _Refine, stop: threading.Event | None = None, *,
                    final_loss: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``r.steps`` Adam steps from ``e0`` on the square working copy of float ``content``:
        ``(embedding [D], loss history [steps + 1])`` (``[steps]`` without ``final_loss``).
        ``stop`` set: abandoned between two steps (:class:`~arbitrary_nst.refine.Abandoned`)."""
        from . import refine

        work = style_working_image(content, _refine_side(content.shape, r.size))[None]
        # (of the centre square refined on: a photo blank there only "diverged")
        if r.steps and (why := images.blank_reason(work[0])) is not None:
            where = "" if images.blank_reason(content) else " in its centre square"
            raise ImageError(None, f"{why}{where}: refinement needs some texture in the "
                                   "content; stylize it without refine_steps (--refine)")
        with self._refine_lock:  # decode threads call this; one optimization at a time
            e, hist = refine.refine_embeddings(
                (self._graphdef, self._state), work, r.styles_small, weights,
                np.asarray(e0, np.float32)[None], steps=r.steps, learning_rate=r.learning_rate,
                style_weight=r.style_weight, palette=r.palette,
                should_stop=None if stop is None else stop.is_set, final_loss=final_loss)
        if not np.all(np.isfinite(e)):
            raise ModelError("refinement diverged (the loss became NaN or infinite); try fewer "
                             "steps or a lower learning rate")
        return e[0], hist[:, 0]

    @_jax_errors_typed
    def refine_embedding(self, content: ImageInput, style: Any, *,
                         weights: Sequence[float] | None = None,
                         embedding: np.ndarray | None = None, steps: int | None = None,
                         learning_rate: float | None = None, style_weight: float | None = None,
                         size: int | None = None, style_size: int | None = None,
                         palette: float | None = None, return_history: bool = False):
        """The style embedding optimized for this content (:mod:`arbitrary_nst.refine`).

        Starts from the predicted (mixed) embedding of ``style`` (or from ``embedding``) and
        takes ``steps`` Adam steps on the embedding alone to lower the content + style loss of
        the network's output, computed on a ``size`` x ``size`` working copy of the content
        (shorter side resized, centre square; a smaller content at its shorter side). The
        result ``[D]`` goes to :meth:`stylize` (``embedding=``) or :meth:`transfer` at any
        resolution, and mixes with others. ``palette`` (default: the model's): the loss is taken
        on the output with that palette, as :meth:`stylize` will show it (0: the raw output).
        ``return_history``: also return the loss before each step and after the last.
        :meth:`stylize` and :meth:`stylize_files` do this per content with ``refine_steps``.
        """
        from . import refine

        steps = refine.DEFAULT_STEPS if steps is None else steps
        lr = refine.DEFAULT_LEARNING_RATE if learning_rate is None else learning_rate
        sw = refine.DEFAULT_STYLE_WEIGHT if style_weight is None else style_weight
        refine.check_options(steps, lr, sw)
        wsize = refine.DEFAULT_SIZE if size is None else self._check_style_size(size)
        ssize = self.style_size if style_size is None else self._check_style_size(style_size)
        items, _ = _as_image_list(style, "style")
        w = normalize_weights(weights, len(items))
        _check_weights_have_an_order(style, weights)
        small = np.stack([self._style_small(x, ssize, _style_name(i, items))
                          for i, x in enumerate(items)])
        if embedding is None:
            e0 = (w[:, None] * self._embed(items, ssize, small)[0]).sum(0)
        else:
            e0 = self._finite_array(embedding, "embedding")
            if e0.shape != (self.embedding_dim,):
                raise ConfigError(f"embedding must have shape ({self.embedding_dim},), got "
                                  f"{e0.shape}")
        contents, batched = _as_image_list(content, "content")
        if batched:
            raise ConfigError("refine_embedding takes one content image")
        f = images.to_float(_named("content image", self.read, contents[0], 8 * wsize))
        pal = check_palette(self.model.palette if palette is None else palette)
        e, hist = _named("content image", self._refine_one, f, e0, w,
                         _Refine(int(steps), float(lr), float(sw), wsize, small, pal))
        return (e, hist) if return_history else e

    def _run(self, items: Iterable[_Item], plan: _Plan, *, out_uint8: bool = False,
             batch_size: int | None = None, hold: int | None = None
             ) -> Iterator[tuple[_Item, np.ndarray]]:
        """Group items by padded shape into batches, dispatch with one batch in flight, and
        yield ``(item, cropped output)`` as batches complete. ``hold``: the most items kept
        waiting for a full batch of their shape; beyond it the largest partial batch goes
        (a folder of mixed sizes was otherwise decoded whole before its first batch)."""
        bs = self.batch_size if batch_size is None else int(batch_size)
        pending: dict[tuple, list[_Item]] = {}
        held = 0
        inflight: collections.deque = collections.deque()

        def collect():
            its, dev = inflight.popleft()
            out = np.asarray(dev)
            for i, it in enumerate(its):
                yield it, out[i, : it.hw[0], : it.hw[1]]

        for it in items:
            group = pending.setdefault(it.group, [])
            group.append(it)
            held += 1
            full = len(group) >= bs
            if full or (hold is not None and held > hold):
                group = pending.pop(it.group if full else
                                    max(pending, key=lambda k: len(pending[k])))
                held -= len(group)
                inflight.append((group, self._dispatch(group, plan, out_uint8, bs)))
                while len(inflight) > 1:
                    yield from collect()
        for group in pending.values():
            inflight.append((group, self._dispatch(group, plan, out_uint8, bs)))
            while len(inflight) > 1:
                yield from collect()
        while inflight:
            yield from collect()

    # -- public stylization -----------------------------------------------------------------
    @_jax_errors_typed
    def stylize(self, content: ImageInput | Sequence[ImageInput], style: Any = None, *,
                weights: Sequence[float] | None = None, strength: float = 1.0,
                preserve_color: bool | str = False, max_size: int | None = None,
                embedding: np.ndarray | None = None, style_size: int | None = None,
                batch_size: int | None = None, refine_steps: int = 0,
                palette: float | None = None,
                palette_moments: np.ndarray | None = None) -> np.ndarray | list[np.ndarray]:
        """Stylize one or several content images with one style or a mix of styles.

        Args:
          content: a path, PIL image or HWC array; or a list of them / an NHWC array (batch).
          style: one style image, or a list of them to mix (or an NHWC array).
          weights: mixing weights, one per style (>= 0, normalized; default equal).
          strength: 0 = the content's own embedding (the photo painted in its own style, not
            the photo itself), 1 = the full style.
          preserve_color: False, True/"luminance" or "match" (see the module docstring).
          max_size: downscale content so its longer side is at most this (never upscales).
          embedding: a precomputed ``[D]`` embedding (or ``[N, D]`` to mix) instead of styles.
          style_size: style working size for this call (default: the Stylizer's).
          batch_size: images per device call (default: the Stylizer's).
          refine_steps: > 0 refines the style embedding for each content first (that many
            Adam steps on the embedding, see :meth:`refine_embedding`): lower style loss for
            ~0.45 s per step and image at 256 px with the built-in model on a 2-core CPU
            (20 steps: 8.8 s, and ~9 s more to compile on the first call).
          palette: 0..1, how far the output's colours move to the style's (default: the
            model's ``palette``; see the module docstring).
          palette_moments: with ``embedding``, the colour moments ``[12]`` (or ``[N, 12]`` to
            mix) of its style (:meth:`palettes`); without them the palette is not applied.

        Returns float32 HWC in [0, 1] for one content, a list for a list (or a tuple, a
        generator, ...), NHWC for an NHWC array. Raises NSTError subclasses (one line) for
        bad inputs.
        """
        max_size = check_count(max_size, "max_size")
        check_count(batch_size, "batch size")
        plan = self._plan(style, weights, strength, preserve_color, embedding, style_size,
                          refine_steps, palette, palette_moments)
        contents, batched = _as_image_list(content, "content")
        def prepare(i: int, c: Any) -> _Item:
            return self._prepare_array(i, self.read(c, max_size), plan)

        prepared = (_named(f"content image {i}" if batched else "content image", prepare, i, c)
                    for i, c in enumerate(contents))
        outs: list[np.ndarray | None] = [None] * len(contents)
        for it, y in self._run(prepared, plan, batch_size=batch_size):
            outs[it.key] = np.array(y, np.float32)
        if not batched:
            return outs[0]
        if isinstance(content, (list, tuple)) or _is_other_iterable(content):
            return outs  # (any sizes: a generator's outputs could not be stacked either)
        return np.stack(outs)

    @_jax_errors_typed
    def transfer(self, content: ImageInput, embeddings: np.ndarray, *,
                 preserve_color: bool | str = False, max_size: int | None = None,
                 batch_size: int | None = None, palette_moments: np.ndarray | None = None,
                 palette: float | None = None, offsets: np.ndarray | None = None) -> np.ndarray:
        """Run one content image with ``K`` embeddings (``[K, D]``; ``[D]`` for one): returns
        ``[K, H, W, 3]`` (``[H, W, 3]`` for a ``[D]`` embedding). Strips, sweeps, grids.
        ``palette_moments`` (``[K, 12]``, or ``[12]`` for all): the colour moments to apply
        the palette with, one per embedding (:meth:`palettes`); without them it is not
        applied. ``palette``: as in :meth:`stylize`. ``offsets`` (``[K, G]``; ``[G]`` with a
        ``[D]`` embedding): the gamma/beta offsets of fitted styles, mixed like the embeddings
        (:meth:`style_parts`)."""
        max_size = check_count(max_size, "max_size")
        check_count(batch_size, "batch size")
        _refuse_file_object(content, "content image")
        if isinstance(content, (list, tuple)) or _is_other_iterable(content):  # (as stylize()
            # reads a list: several images; here that was a "dtype <U13" error)
            raise ConfigError("transfer() takes one content image (K embeddings give K "
                              "results), got a list: call it per image, or use stylize()")
        mode = preserve_color_mode(preserve_color)
        if mode == "match":
            raise ConfigError("transfer() takes embeddings: use preserve_color='luminance', or "
                              "colour-match the style images before embed()")
        e = self._finite_array(embeddings, "embeddings")
        single = e.ndim == 1
        e = e[None] if single else e
        if e.ndim != 2 or e.shape[1] != self.embedding_dim or e.shape[0] < 1:
            raise ConfigError(f"embeddings must be [K, {self.embedding_dim}] with K >= 1, got "
                              f"{np.shape(embeddings)}")
        plan = _Plan(None, None, np.ones(1, np.float32), 1.0, mode == "luminance", False,
                     self.style_size)
        plan.palette = check_palette(self.model.palette if palette is None else palette)
        ms: list[np.ndarray | None] = [None] * e.shape[0]
        if palette_moments is not None:
            m = _moments_array(palette_moments)
            m = np.broadcast_to(m, (e.shape[0],) + m.shape) if m.ndim == 1 else m
            if m.shape != (e.shape[0], color.MOMENTS_DIM) or not np.all(np.isfinite(m)):
                raise ConfigError(f"palette_moments must be finite, [K, {color.MOMENTS_DIM}] with "
                                  f"K = {e.shape[0]} (or [{color.MOMENTS_DIM}]), got "
                                  f"{_describe(palette_moments)}")
            ms = [_check_moment_values(mi) for mi in m]
            plan.moments = m[0]
        ds: list[np.ndarray | None] = [None] * e.shape[0]
        if offsets is not None:
            d = self._finite_array(offsets, "offsets")
            d = d[None] if single and d.ndim == 1 else d  # a [G] offset with a [D] embedding
            if d.shape != (e.shape[0], self._conditioning_size):
                one = f" (or [{self._conditioning_size}] with a [D] embedding)" if single else ""
                raise ConfigError(f"offsets must be [K, {self._conditioning_size}] with "
                                  f"K = {e.shape[0]}{one}, got {np.shape(offsets)}")
            ds = list(d)
        img = _named("content image", self.read, content, max_size)
        base = self._prepare_array(0, img, plan)
        items = (_Item(k, base.x, base.hw, None, e[k], m=ms[k], d=ds[k])
                 for k in range(e.shape[0]))
        outs: list[np.ndarray | None] = [None] * e.shape[0]
        for it, y in self._run(items, plan, batch_size=batch_size):
            outs[it.key] = np.array(y, np.float32)
        return outs[0] if single else np.stack(outs)

    # -- files ------------------------------------------------------------------------------
    @_jax_errors_typed
    def stylize_files(self, contents: Sequence[str | os.PathLike], style: Any = None, *,
                      weights: Sequence[float] | None = None, strength: float = 1.0,
                      preserve_color: bool | str = False, max_size: int | None = None,
                      embedding: np.ndarray | None = None, style_size: int | None = None,
                      output: Callable[[Path], str | os.PathLike] | None = None,
                      overwrite: bool = False, batch_size: int | None = None,
                      workers: int | None = None, prefetch: int | None = None,
                      protected: Iterable[str | os.PathLike] = (),
                      refine_steps: int = 0, palette: float | None = None,
                      palette_moments: np.ndarray | None = None,
                      collision_hint: str | None = None) -> Iterator[FileResult]:
        """Stylize many content files; yields one :class:`FileResult` per file (as soon as it
        is written, so the order may differ from ``contents``).

        ``output(content_path) -> output path``: write each result there (PNG/JPEG/... by
        extension, atomically); existing files are skipped unless ``overwrite``; an output
        that is one of the inputs (contents, style files, ``protected``) is always refused.
        Contents that are this job's own outputs (an earlier run's results, when the output
        folder is the content folder: :func:`earlier_outputs`) are skipped, kind "earlier output".
        Without ``output`` the results carry the float32 image. Style problems raise at once
        (NSTError); content problems are reported per file and the batch goes on.
        ``workers``: decode/encode threads (default ``min(4, cpu count)``); ``prefetch``:
        images decoded ahead (default ``2 * batch_size + workers``); as many again at most
        (at least a batch) wait for a full batch of their padded shape (beyond that a partial
        batch is run), so memory stays bounded however mixed the sizes. ``refine_steps``: as in
        :meth:`stylize` (done in the decode threads, one content at a time). ``palette``,
        ``palette_moments``: as in :meth:`stylize`. ``collision_hint``: the advice given when
        ``output`` maps two contents to one path (default: to change ``output``; the CLI's
        output names come from the inputs' names, so it says to rename one).
        """
        max_size = check_count(max_size, "max_size")
        plan = self._plan(style, weights, strength, preserve_color, embedding, style_size,
                          refine_steps, palette, palette_moments)
        bs = check_count(self.batch_size if batch_size is None else batch_size, "batch size")
        nw = check_count(workers, "workers") or min(4, os.cpu_count() or 1)
        ahead = check_count(prefetch, "prefetch") or 2 * bs + nw
        paths = _path_list(contents)
        if output is not None and not callable(output):  # (a path: "'str' is not callable")
            raise ConfigError(f"output must be a function content path -> output path (e.g. "
                              f"lambda p: f'out/{{p.stem}}.png'), got {output!r}")
        if output is None:
            early, jobs = [], [(i, p, None) for i, p in enumerate(paths)]
        else:
            # (the caller's function maps both contents to one path: renaming an input, the
            # CLI's advice, may not change what it returns)
            hint = collision_hint or ("the output function returns the same path for both; "
                                      "make it give each content its own")
            early, jobs = plan_outputs(paths, output,
                                       [*plan.style_paths, *_path_list(protected)], overwrite,
                                       collision_hint=hint)
        # Everything above runs at the call (bad options raise here, not at the first next());
        # the files are read and written as the results are iterated.
        return _jax_errors_typed_iter(self._files(early, jobs, plan, output is not None,
                                                  overwrite, max_size, bs, nw, ahead))

    def _files(self, early, jobs, plan, writing, overwrite, max_size, bs, nw, ahead
               ) -> Iterator[FileResult]:
        """The generator behind :meth:`stylize_files` (``writing``: an ``output`` was given)."""
        yield from early
        if not jobs:
            return

        def prepare(job):
            i, p, dest = job
            try:
                arr = images.load_pixels(p, max_pixels=self.max_pixels, max_side=max_size)
                return self._prepare_array(i, arr, plan, meta=job, stop=stop)
            except ImageError as e:  # an array-level error (e.g. blank) gets the file's name
                return e if e.path is not None else ImageError(p, e.reason)
            except NSTError as e:
                return e
            except Exception as e:  # noqa: BLE001 - report and go on with the batch
                return ImageError(p, f"cannot read: {type(e).__name__}: {' '.join(str(e).split())}")

        def write(item: _Item, y: np.ndarray) -> FileResult:
            _, p, dest = item.meta
            try:
                images.save_image(dest, y, overwrite=overwrite)
            except NSTError as e:  # e.g. another job wrote it meanwhile: "output exists"
                kind = _kind_of(e.reason if isinstance(e, ImageError) else str(e))
                return FileResult(p, dest, False, str(e),
                                  "cannot write" if kind == "error" else kind, shape=item.hw)
            except Exception as e:  # noqa: BLE001
                why = f"{dest}: cannot write: {type(e).__name__}: {' '.join(str(e).split())}"
                return FileResult(p, dest, False, why, "cannot write", shape=item.hw)
            return FileResult(p, dest, True, shape=item.hw)

        # set when the iteration ends early (Ctrl-C, SIGTERM, close()): a decode thread's
        # refinement stops at its next step instead of holding the shutdown below until all
        # of its steps ran (minutes for a long --refine)
        stop = threading.Event()
        decode = cf.ThreadPoolExecutor(nw, thread_name_prefix="nst-decode")
        encode = cf.ThreadPoolExecutor(nw, thread_name_prefix="nst-encode") if writing else None
        skipped: collections.deque = collections.deque()
        writes: collections.deque = collections.deque()
        try:
            def decoded() -> Iterator[_Item]:
                window: collections.deque = collections.deque()
                it = iter(jobs)
                for job in it:
                    window.append((job, decode.submit(prepare, job)))
                    if len(window) >= ahead:
                        break
                while window:
                    job, fut = window.popleft()
                    nxt = next(it, None)
                    if nxt is not None:
                        window.append((nxt, decode.submit(prepare, nxt)))
                    res = fut.result()
                    if isinstance(res, NSTError):
                        skipped.append(skipped_by_error(job[1], job[2], res))
                        continue
                    yield res

            for item, y in self._run(decoded(), plan, out_uint8=writing,
                                     batch_size=bs, hold=max(ahead, bs)):
                while skipped:
                    yield skipped.popleft()
                if encode is None:
                    _, p, _ = item.meta
                    yield FileResult(p, None, True, image=np.array(y, np.float32),
                                     shape=item.hw)
                    continue
                writes.append(encode.submit(write, item, np.ascontiguousarray(y)))
                while writes and (writes[0].done() or len(writes) > 2 * bs + nw):
                    yield writes.popleft().result()
            while skipped:
                yield skipped.popleft()
            while writes:
                yield writes.popleft().result()
        finally:
            stop.set()
            decode.shutdown(wait=True, cancel_futures=True)
            if encode is not None:
                encode.shutdown(wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        return (f"Stylizer(source={self.source!r}, width={self.model.width}, "
                f"style_size={self.style_size}, palette={self.model.palette}, "
                f"devices={self.num_devices}, "
                f"batch_size={self.batch_size}, backend={self.backend!r})")
