"""Training data: TFDS image-folder datasets (no TensorFlow), Magenta augmentation, a threaded loader.

Pipeline::

    folders of images --(ImageFolder builder, once)--> array_record files under ``data_dir``
        --(builder.as_data_source)--> random access --(augment_*, thread pool)--> batches

* **Preparation.** :class:`ImageFolder` is a ``tfds.core.GeneratorBasedBuilder`` whose
  :class:`ImageFolderConfig` names one or more directories. Every file with an image extension
  under them (recursively) is fully decoded with :func:`arbitrary_nst.images.load_pil`; files
  that cannot be decoded (corrupt, truncated, empty, too small, blank, ...) are **skipped and counted**:
  the count and every ``path: reason`` are logged and stored in the dataset's
  ``tfds.core.MetadataDict`` (``metadata.json`` next to the records). Images are stored as JPEG
  with the short side at most ``max_source_side`` (already-small sRGB JPEGs are stored
  byte-for-byte, everything else is re-encoded). Preparation runs offline and needs no
  TensorFlow (``file_format='array_record'``; images are encoded by Pillow, not by TFDS).
  The config name is ``<folder>-<fingerprint>``, the fingerprint being a hash of the sorted
  relative paths, sizes and contents of the files (plus the storage settings): a changed folder
  gets a new dataset instead of silently reusing a stale one, while a folder touched, copied
  elsewhere or restored from a backup is the same dataset (its contents are; file times are
  not looked at). The contents' digests are cached by file identity in
  ``<data_dir>/file_digests.json``, so a re-scan reads only files that changed.
* **Reading.** ``builder.as_data_source('train')`` gives random access to the records; the
  image bytes are fetched undecoded (``tfds.decode.SkipDecoding``) and decoded by Pillow in
  the loader's worker threads, with JPEG DCT-domain downscaling (``Image.draft``) when the
  augmentation shrinks the image at least 2x.
* **Other sources.** ``tfds:<name>`` (any TFDS catalog dataset with an image feature, e.g.
  ``tfds:coco/2017``, ``tfds:dtd``; downloaded and prepared with ``array_record`` when online),
  ``synthetic`` (procedural images, no files: smoke tests) and ``npz:<path>`` (a compact
  subset written by :func:`export_arrays`, readable with NumPy + Pillow only, for machines
  without TFDS).

Augmentation (pure NumPy/Pillow, deterministic given a ``np.random.Generator``)
------------------------------------------------------------------------------
Magenta's ``arbitrary_image_stylization`` (``image_utils.arbitrary_style_image_inputs`` with
``augment_style_images=True``, as set by ``arbitrary_image_stylization_train.py``) does, on the
uint8 style image::

    tf.image.random_brightness(image, max_delta=0.8)      # on [0,1] scale, clipped
    tf.image.random_saturation(image, lower=0.5, upper=1.5)
    tf.image.random_hue(image, max_delta=0.2)
    tf.image.random_flip_left_right(image); tf.image.random_flip_up_down(image)
    size = random_uniform([], image_size + 2, image_size + 200, int32)   # [258, 456) for 256
    image = _aspect_preserving_resize(image, size)      # smaller side -> size, bilinear
    image = tf.random_crop(image, [image_size, image_size, 3])

:func:`augment_style` draws the same parameters with the same distributions (the colour ranges
multiplied by ``strength``) but applies the geometry first and the colour jitter on the
``size x size`` crop: colour ops are per-pixel, so this equals Magenta's order up to the
interpolation of clipped values, at a fraction of the cost. Brightness adds a delta and clips
to [0, 1]; saturation multiplies HSV saturation (clipped to 1); hue shifts HSV hue (mod 1) --
the semantics of ``tf.image.adjust_*``. Resizing uses Pillow's (antialiased) bilinear filter.
With ``device_augment`` (the default for training) the loader stops before the float
conversion and the colour jitter and hands over the parameters it drew;
:mod:`arbitrary_nst.device_augment` applies them in the jitted step (same images up to float
rounding). Magenta additionally resizes each *batch* of styles to a random size in [128, 300)
(``random_style_image_size``); that is a model-side choice and is not done here.
For content, Magenta resizes ImageNet photos to a smaller side of ``image_size + 2`` and takes
the central crop; :func:`augment_content` resizes the smaller side to ``size * u`` with ``u``
uniform in ``content_scale_range`` (default ``[1, 1.15)``) and takes a random crop.

Determinism (exact resume)
--------------------------
Batch ``step`` is a pure function of ``(seed, step)`` (and the batch size and data): example
``i`` of batch ``step`` is position ``p = step * batch_size + i`` of an endless stream whose
epoch ``e = p // N`` is the permutation ``np.random.default_rng([seed, e, stream])`` of the
``N`` images (``stream`` 0 = content, 1 = style; with per-directory weights the epoch is a
weighted draw, see :class:`EpochSampler`). Its augmentation uses
``np.random.default_rng([seed, step, i, stream])``. Worker count and timing never change a
batch; resuming at step ``k`` continues the stream instead of repeating it.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import numbers
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Container, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from arbitrary_nst import images as _images
from arbitrary_nst import weights as _weights
from arbitrary_nst.errors import (ConfigError, ImageError, NSTError, UsageParser, check_count,
                                  check_named, count_arg, one_line, positive_float_arg,
                                  printable_stdout)
from arbitrary_nst.files import is_inside, write_atomically
from arbitrary_nst.progress import bar as progress_bar

__all__ = [
    "DEFAULT_DATA_DIR",
    "DataSource",
    "TFDSSource",
    "SyntheticSource",
    "NpzSource",
    "MixtureSource",
    "EpochSampler",
    "Loader",
    "ImageFolder",
    "ImageFolderConfig",
    "default_data_config",
    "folder_builder",
    "prepare_folder",
    "prepare",
    "source_from_catalog",
    "augment_content",
    "augment_style",
    "color_jitter",
    "synthetic_image",
    "make_loader",
    "export_arrays",
    "magenta_style_resize_range",
]

log = logging.getLogger(__name__)


def _in_user_cache(default: str) -> str:
    """``default`` (a path under ``~/.cache/arbitrary_nst``) moved under ``$ARBITRARY_NST_CACHE``
    where that is set and not empty (the folder the weights use, :func:`weights.cache_dir`)."""
    if os.environ.get(_weights.CACHE_ENV):
        return os.path.join(_weights.cache_dir(), os.path.basename(default))
    return os.path.expanduser(default)


def data_dir_path(data_dir: Any = None) -> str:
    """The folder of prepared data: ``data_dir`` with ``~`` expanded, or where it is unset or
    :data:`DEFAULT_DATA_DIR`, that default under the user cache (:func:`_in_user_cache`)."""
    value = os.fspath(data_dir) if data_dir else ""
    if not value or value == DEFAULT_DATA_DIR:
        return _in_user_cache(DEFAULT_DATA_DIR)
    return os.path.expanduser(value)

#: Where prepared TFDS datasets go unless ``data_cfg.data_dir`` says otherwise (under
#: ``$ARBITRARY_NST_CACHE`` instead of ``~/.cache/arbitrary_nst`` where that is set, as the
#: weights: :func:`data_dir_path`).
DEFAULT_DATA_DIR = "~/.cache/arbitrary_nst/tfds"
#: TFDS dataset name of :class:`ImageFolder` (``<data_dir>/<name>/<config>/<version>``).
BUILDER_NAME = "arbitrary_nst_images"
BUILDER_VERSION = "1.0.0"
#: Bumped when the preparation logic changes in a way that changes the stored records.
_PREP_FORMAT = 2  # 2: blank images are skipped

CONTENT, STYLE = 0, 1  # rng stream ids


# ============================================================================================
# Config
# ============================================================================================


def default_data_config() -> Any:
    """The data config with its defaults (an ``ml_collections.ConfigDict`` when available).

    Fields:
        source: ``'folder'`` (``content_dirs``/``style_dirs``), ``'synthetic'`` (procedural
            images, no files), ``'tfds:<name>[#split]'`` (content from a TFDS catalog dataset,
            styles from ``style_dirs``) or ``'npz:<path>'`` (a file from :func:`export_arrays`).
        content_dirs / style_dirs: lists of directories (searched recursively). An entry may
            also be ``'tfds:<name>[#split]'`` to mix in a catalog dataset.
        content_dir_weights / style_dir_weights: optional sampling weight per entry (default:
            proportional to the number of images, i.e. uniform over images).
        data_dir: where prepared TFDS datasets live (default ``~/.cache/arbitrary_nst/tfds``, or
            ``tfds`` under ``$ARBITRARY_NST_CACHE`` where that is set).
        image_size: side of the square content crops (256).
        style_size: side of the square style crops (256).
        style_resize_range: ``[lo, hi)`` for the random smaller side of style images before the
            crop; ``None`` = Magenta's ``[style_size + 2, style_size + 200)`` = ``(258, 456)``
            for 256, scaled by ``style_size / 256`` otherwise.
        content_scale_range: ``[lo, hi)`` factor on ``image_size`` for the content's smaller
            side before the random crop (``(1.0, 1.15)``).
        augment_strength: multiplies the style colour-jitter ranges (1.0 = Magenta:
            brightness +-0.8, saturation x[0.5, 1.5], hue +-0.2); 0 disables jitter and flips.
        style_unsharp: ``(radius px, percent)`` of an unsharp mask (PIL's, threshold 0) on every
            style crop, or ``None`` (none; Magenta has none). For paintings stored small or as
            lossy JPEGs and upscaled for training, whose blur the network learns: on the eval's
            paintings degraded like ``../shared/data``'s (224 px, JPEG 78, upscaled 1.14x),
            ``(0.75, 50)`` undid 55% of the Gram style loss the degradation adds, stronger
            masks overshoot (``bench/degraded_targets.py``; RESULTS.md, session 35).
        max_source_side: stored images have their smaller side at most this (512) and their
            longer side at most 3x this.
        min_source_side: images whose smaller side is below this (64) are skipped.
        jpeg_quality: quality of re-encoded stored images (90).
        prepare_workers: decode threads during preparation (2).
        max_pixels: image files with more pixels are skipped (64e6; a decompression-bomb guard:
            raise it for large museum scans, which are downscaled to ``max_source_side``).
        synthetic_count: number of distinct images per role of the ``synthetic`` source (512).
        allow_eval_dirs: refuse directories with a path component named ``eval`` unless True
            (evaluation images must never be trained on).
        num_workers: loader threads (``None`` = ``min(8, os.cpu_count())``; 0 = in the caller).
        prefetch: batches prepared ahead by the loader (4).
        device_augment: the loader gives uint8 crops and the style jitter parameters; the
            float conversion and colour jitter run in the jitted step (True; see
            :class:`Loader`). Same images up to float rounding; ~45% less host work per pair (bench/data.py).
    """
    d = _default_fields()
    try:
        import ml_collections
    except ImportError:  # pragma: no cover - e.g. a bare GPU machine
        return d
    return ml_collections.ConfigDict(d)


#: ``data.max_pixels``: image files with more pixels are skipped (a decompression-bomb guard;
#: preparation downscales the rest to ``max_source_side`` anyway).
DEFAULT_MAX_PIXELS_FIELD = _images.DEFAULT_MAX_PIXELS


def _default_fields() -> dict[str, Any]:
    return dict(
        source="folder",
        content_dirs=[],
        style_dirs=[],
        content_dir_weights=None,
        style_dir_weights=None,
        data_dir=DEFAULT_DATA_DIR,
        image_size=256,
        style_size=256,
        style_resize_range=None,
        content_scale_range=(1.0, 1.15),
        augment_strength=1.0,
        style_unsharp=None,
        max_source_side=512,
        min_source_side=64,
        jpeg_quality=90,
        prepare_workers=2,
        max_pixels=DEFAULT_MAX_PIXELS_FIELD,
        synthetic_count=512,
        allow_eval_dirs=False,
        num_workers=None,
        prefetch=4,
        device_augment=True,
    )


_DEFAULTS = _default_fields()


def _cfg(data_cfg: Any) -> dict[str, Any]:
    """``data_cfg`` (ConfigDict, dict or None) merged over the defaults, as a plain dict."""
    if data_cfg is None:
        raw: Mapping[str, Any] = {}
    elif hasattr(data_cfg, "to_dict"):
        raw = data_cfg.to_dict()
    elif isinstance(data_cfg, Mapping):
        raw = data_cfg
    else:
        raise ConfigError(f"data config must be a dict or ConfigDict, got {type(data_cfg).__name__}")
    unknown = sorted(set(raw) - set(_DEFAULTS))
    if unknown:
        raise ConfigError(f"data config: unknown field(s) {', '.join(unknown)}")
    c = dict(_DEFAULTS)
    c.update({k: v for k, v in raw.items()})
    for k in ("content_dirs", "style_dirs"):
        v = c[k]
        if v is None:
            c[k] = []
        elif isinstance(v, (str, os.PathLike)):
            c[k] = [os.fspath(v)]
        else:
            try:
                c[k] = [os.fspath(x) for x in v]
            except TypeError:  # (`[2024]`: a folder named by a number, unquoted)
                bad = next(x for x in v if not isinstance(x, (str, os.PathLike)))
                raise ConfigError(f"data config: {k}: {bad!r} is not a folder name (quote it: "
                                  f"['{bad}'])") from None
    for key in ("content_dir_weights", "style_dir_weights"):
        w = c[key]
        try:  # (2 was a TypeError traceback, "[1 2]" or "abc" "5 weights for 1 sources")
            if w is not None:
                if isinstance(w, (str, bytes)) or np.ndim(w) != 1:
                    raise TypeError
                c[key] = [float(x) for x in w]
        except (TypeError, ValueError):
            raise ConfigError(f"data config: {key} must be a list of numbers, one per entry of "
                              f"{key.replace('_weights', 's')}, got {w!r}") from None
    for key in ("image_size", "style_size"):  # (VGG16's smallest input, vgg.MIN_SIZE: 4 was
        # refused only after every folder was prepared)
        c[key] = check_count(c[key], f"data config: {key}", 32, optional=False)
    for key in ("max_source_side", "min_source_side"):
        c[key] = check_count(c[key], f"data config: {key}", optional=False)
    c["jpeg_quality"] = check_count(c["jpeg_quality"], "data config: jpeg_quality", 1, 100,
                                    optional=False)
    # (num_workers -1 and prefetch -3 were accepted without a word)
    c["num_workers"] = check_count(c["num_workers"], "data config: num_workers", 0)
    c["prefetch"] = check_count(c["prefetch"], "data config: prefetch", 1, optional=False)
    c["prepare_workers"] = check_count(c["prepare_workers"], "data config: prepare_workers",
                                       optional=False)
    c["max_pixels"] = check_count(c["max_pixels"], "data config: max_pixels", optional=False)
    c["synthetic_count"] = check_count(c["synthetic_count"], "data config: synthetic_count",
                                       optional=False)
    if c["min_source_side"] > c["max_source_side"]:
        raise ConfigError(f"data config: max_source_side ({c['max_source_side']}) must be >= "
                          f"min_source_side ({c['min_source_side']}): nothing could be kept")
    key = "augment_strength"
    try:  # a value of the wrong type (a string, a 1-tuple) names its field, one line
        if not 0 <= float(c[key]) <= 2.5:
            raise ConfigError(f"data config: augment_strength must be in [0, 2.5], got {c[key]}")
        if not isinstance(c["device_augment"], (bool, np.bool_)):
            raise ConfigError(f"data config: device_augment must be true or false, got "
                              f"{c['device_augment']!r}")
        c["device_augment"] = bool(c["device_augment"])
        key = "style_resize_range"
        c[key] = _resize_range(c[key], c["style_size"])
        key = "style_unsharp"
        c[key] = _check_unsharp(c[key])
        key = "content_scale_range"
        lo, hi = (float(x) for x in c[key])
        if not 1.0 <= lo <= hi:
            raise ConfigError(f"data config: content_scale_range must satisfy 1 <= lo <= hi, got "
                              f"{(lo, hi)}")
        c[key] = (lo, hi)
        key = "data_dir"
        c[key] = data_dir_path(c[key])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"data config: {key} has a bad value {c.get(key)!r} "
                          f"({' '.join(str(e).split())})") from None
    if os.path.exists(c["data_dir"]) and not os.path.isdir(c["data_dir"]):
        raise ConfigError(f"data config: data_dir {c['data_dir']} is a file, not a folder")
    return c


#: Bounds of ``data.style_unsharp``: radius (px) in (0, MAX_UNSHARP_RADIUS], percent in
#: [1, MAX_UNSHARP_PERCENT] (beyond them the mask only draws halos)
MAX_UNSHARP_RADIUS = 10.0
MAX_UNSHARP_PERCENT = 500


def _check_unsharp(u: Any) -> tuple[float, int] | None:
    """``data.style_unsharp`` as ``(radius, percent)`` or ``None``; ConfigError if out of range."""
    if u is None:
        return None
    how = ("must be None or (radius px, percent), radius in (0, "
           f"{MAX_UNSHARP_RADIUS:g}] and percent an integer in [1, {MAX_UNSHARP_PERCENT}]")
    try:
        if isinstance(u, (str, bytes)):
            raise TypeError
        r, pct = u
        r, pct_f = float(r), float(pct)
    except (TypeError, ValueError):
        raise ConfigError(f"data config: style_unsharp {how}, got {u!r}") from None
    # (the range first: int() of an infinite or NaN percent raises)
    if not (0 < r <= MAX_UNSHARP_RADIUS and 1 <= pct_f <= MAX_UNSHARP_PERCENT
            and pct_f == int(pct_f)):
        raise ConfigError(f"data config: style_unsharp {how}, got {u!r}")
    return r, int(pct_f)


def magenta_style_resize_range(style_size: int = 256) -> tuple[int, int]:
    """Magenta's ``[image_size + 2, image_size + 200)``, scaled by ``style_size / 256``."""
    return round(258 * style_size / 256), round(456 * style_size / 256)


def _resize_range(r: Any, size: int) -> tuple[int, int]:
    if r is None:
        return magenta_style_resize_range(size)
    lo, hi = r  # (ValueError for another length: reported with the field by _cfg)
    if int(lo) != lo or int(hi) != hi:
        raise ConfigError(f"data config: style_resize_range must be two integers, got {r!r}")
    lo, hi = int(lo), int(hi)
    if not size <= lo < hi:
        raise ConfigError(
            f"data config: style_resize_range must satisfy style_size ({size}) <= lo < hi, got {(lo, hi)}"
        )
    return lo, hi


# ============================================================================================
# Sources: random access to images
# ============================================================================================


class DataSource:
    """Random access to RGB images: ``len(src)``, ``src.open(i) -> PIL.Image`` (lazy).

    ``open`` returns a Pillow image that may not be decoded yet (so the augmentation can use
    JPEG draft mode); :meth:`get` returns the decoded ``uint8`` ``H x W x 3`` array.
    Implementations must be safe to call from several threads.
    """

    name: str = "source"

    def __len__(self) -> int:
        raise NotImplementedError

    def open(self, index: int) -> Image.Image:
        raise NotImplementedError

    def get(self, index: int) -> np.ndarray:
        return np.asarray(_to_rgb(self.open(index)))

    def path(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def raw_bytes(self, index: int) -> bytes | None:
        """The stored encoded image, when the source holds one (else ``None``)."""
        return None

    @property
    def part_sizes(self) -> list[int]:
        """Sizes of the sub-sources (one for a plain source): what weights refer to."""
        return [len(self)]

    def _check(self, index: int) -> int:
        i = int(index)
        if not 0 <= i < len(self):
            raise IndexError(f"{self.name}: index {index} out of range [0, {len(self)})")
        return i

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, n={len(self)})"


def _open_bytes(data: bytes, where: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise ImageError(where, f"cannot decode stored image: {e}") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """Decode and convert to 8-bit RGB (alpha over white)."""
    if im.mode == "RGB":
        im.load()
        return im
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float32) / 65535.0
        return Image.fromarray(np.clip(a * 255 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


class TFDSSource(DataSource):
    """A TFDS ``as_data_source`` split; the image feature is fetched undecoded (Pillow decodes).

    ``report`` holds the preparation summary for :class:`ImageFolder` datasets,
    ``short_sides`` the shorter side of each stored image (None: not recorded).
    """

    def __init__(self, ds: Any, name: str, image_key: str = "image", path_key: str | None = "path",
                 report: dict[str, Any] | None = None, short_sides: Sequence[int] | None = None):
        self.short_sides = None if short_sides is None else list(short_sides)
        self._ds = ds
        self._n = len(ds)
        self.name = name
        self.image_key = image_key
        self.path_key = path_key
        self.report = report or {}

    def __len__(self) -> int:
        return self._n

    def _record(self, index: int) -> Mapping[str, Any]:
        i = self._check(index)
        try:
            return self._ds[i]
        except RuntimeError as e:  # array_record: a shard truncated, damaged or gone since
            where = self.report.get("data_dir")
            raise ConfigError(f"{where or self.name}: cannot read the prepared data "
                              f"({_one_line(e)[:200]})" + ("; delete this folder to prepare "
                                                           "it again" if where else "")) from None

    def open(self, index: int) -> Image.Image:
        rec = self._record(index)
        data = rec[self.image_key]
        if isinstance(data, np.ndarray):  # decoded by TFDS after all (e.g. nested features)
            if data.dtype == object:
                data = data.item()
            else:
                return Image.fromarray(np.squeeze(data).astype(np.uint8))
        return _open_bytes(bytes(data), self.path(index))

    def raw_bytes(self, index: int) -> bytes | None:
        data = self._record(index)[self.image_key]
        if isinstance(data, np.ndarray):
            return data.item() if data.dtype == object else None
        return bytes(data)

    def path(self, index: int) -> str:
        if self.path_key:
            try:
                p = self._record(index)[self.path_key]
                return p.decode() if isinstance(p, bytes) else str(p)
            except Exception:  # noqa: BLE001
                pass
        return f"{self.name}[{index}]"


class MixtureSource(DataSource):
    """Several sources seen as one index space (concatenation); ``weights`` per part.

    The weights are used by :class:`EpochSampler` (through :func:`make_loader`); plain
    indexing is the concatenation.
    """

    def __init__(self, parts: Sequence[DataSource], weights: Sequence[float] | None = None, name: str = "mixture"):
        if not parts:
            raise ConfigError(f"{name}: no sources")
        self.parts = list(parts)
        self.name = name
        if weights is not None:
            if len(weights) != len(parts):
                raise ConfigError(f"{name}: {len(weights)} weights for {len(parts)} sources")
            w = [float(x) for x in weights]
            if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
                raise ConfigError(f"{name}: weights must be finite, >= 0 and not all 0, got {w}")
            weights = w
        self.weights = weights
        self._offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def part_sizes(self) -> list[int]:
        return [len(p) for p in self.parts]

    def locate(self, index: int) -> tuple[DataSource, int]:
        i = self._check(index)
        k = int(np.searchsorted(self._offsets, i, side="right")) - 1
        return self.parts[k], i - int(self._offsets[k])

    def open(self, index: int) -> Image.Image:
        part, j = self.locate(index)
        return part.open(j)

    def path(self, index: int) -> str:
        part, j = self.locate(index)
        return part.path(j)

    def raw_bytes(self, index: int) -> bytes | None:
        part, j = self.locate(index)
        return part.raw_bytes(j)


# --------------------------------------------------------------------------------------------
# Synthetic images (no files)
# --------------------------------------------------------------------------------------------

_SYNTH_SEED = 0x5EED


def synthetic_image(kind: str, index: int, *, seed: int = 0) -> np.ndarray:
    """A procedural ``uint8`` RGB image, the same for the same ``(kind, index, seed)``.

    ``kind='content'``: a colour gradient with random ellipses, rectangles and polygons
    (photo-like layout, 224..352 x 224..416). ``kind='style'``: stripes, checks, rings or
    smooth blobs in a random 3-colour palette (painting/texture-like).
    """
    if kind not in ("content", "style"):
        raise ValueError(f"kind must be 'content' or 'style', got {kind!r}")
    rng = np.random.default_rng([_SYNTH_SEED, int(seed), 0 if kind == "content" else 1, int(index)])
    h = int(rng.integers(224, 353))
    w = int(rng.integers(224, 417))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "content":
        c0, c1 = rng.integers(0, 256, (2, 3)).astype(np.float32)
        ang = rng.uniform(0, 2 * np.pi)
        t = (xx * np.cos(ang) + yy * np.sin(ang))
        t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
        img = (c0 + (c1 - c0) * t[..., None]).astype(np.uint8)
        pil = Image.fromarray(img)
        draw = ImageDraw.Draw(pil)
        for _ in range(int(rng.integers(3, 9))):
            col = tuple(int(v) for v in rng.integers(0, 256, 3))
            x0, y0 = rng.uniform(-0.2, 0.9) * w, rng.uniform(-0.2, 0.9) * h
            x1, y1 = x0 + rng.uniform(0.1, 0.6) * w, y0 + rng.uniform(0.1, 0.6) * h
            shape = int(rng.integers(0, 3))
            if shape == 0:
                draw.ellipse((x0, y0, x1, y1), fill=col)
            elif shape == 1:
                draw.rectangle((x0, y0, x1, y1), fill=col)
            else:
                pts = [(float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))) for _ in range(int(rng.integers(3, 7)))]
                draw.polygon(pts, fill=col)
        return np.asarray(pil)
    palette = rng.integers(0, 256, (3, 3)).astype(np.float32)
    pattern = int(rng.integers(0, 4))
    freq = rng.uniform(0.02, 0.12)
    ang = rng.uniform(0, np.pi)
    u = xx * np.cos(ang) + yy * np.sin(ang)
    v = -xx * np.sin(ang) + yy * np.cos(ang)
    if pattern == 0:  # stripes
        t = 0.5 + 0.5 * np.sin(u * freq * 2 * np.pi)
    elif pattern == 1:  # checks
        t = ((np.floor(u * freq) + np.floor(v * freq)) % 2).astype(np.float32)
    elif pattern == 2:  # rings
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = 0.5 + 0.5 * np.sin(np.hypot(xx - cx, yy - cy) * freq * 2 * np.pi)
    else:  # blobs: a few Gaussians
        t = np.zeros((h, w), np.float32)
        for _ in range(6):
            cx, cy, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(15, 80)
            t += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
        t = t / max(float(t.max()), 1e-6)
    t = t[..., None]
    img = np.where(t < 0.5, palette[0] + (palette[1] - palette[0]) * (2 * t),
                   palette[1] + (palette[2] - palette[1]) * (2 * t - 1))
    img += rng.normal(0, 6, img.shape).astype(np.float32)  # brush-like grain
    return np.clip(img, 0, 255).astype(np.uint8)


class SyntheticSource(DataSource):
    """``count`` procedural images of one kind (see :func:`synthetic_image`); no files."""

    def __init__(self, kind: str, count: int = 512, seed: int = 0):
        if kind not in ("content", "style"):
            raise ConfigError(f"synthetic source: kind must be 'content' or 'style', got {kind!r}")
        if int(count) < 1:
            raise ConfigError(f"synthetic source: count must be >= 1, got {count}")
        self.kind, self.count, self.seed = kind, int(count), int(seed)
        self.name = f"synthetic-{kind}"

    def __len__(self) -> int:
        return self.count

    def open(self, index: int) -> Image.Image:
        return Image.fromarray(synthetic_image(self.kind, self._check(index), seed=self.seed))


# --------------------------------------------------------------------------------------------
# NPZ subset (for machines without TFDS)
# --------------------------------------------------------------------------------------------


class NpzSource(DataSource):
    """One role (``'content'`` or ``'style'``) of a file written by :func:`export_arrays`.

    The file holds ``<role>_jpeg`` (all JPEG files concatenated, ``uint8``), ``<role>_offsets``
    (``int64``, ``n + 1``) and ``<role>_paths`` (``str``); it is read without pickle.
    """

    def __init__(self, path: str | os.PathLike[str], role: str):
        p = os.path.expanduser(os.fspath(path))
        if role not in ("content", "style"):
            raise ValueError(f"role must be 'content' or 'style', got {role!r}")
        try:
            with np.load(p, allow_pickle=False) as z:
                self._buf = np.ascontiguousarray(z[f"{role}_jpeg"])
                off = z[f"{role}_offsets"]
                paths = z[f"{role}_paths"] if f"{role}_paths" in z else None
        except FileNotFoundError:
            raise ConfigError(f"{p}: no such file (npz data source)") from None
        except KeyError as e:
            raise ConfigError(f"{p}: not an arbitrary_nst data export (missing {e})") from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"{p}: cannot read npz data source: {e}") from None
        if self._buf.dtype != np.uint8 or self._buf.ndim != 1 or off.ndim != 1 or len(off) < 2:
            raise ConfigError(f"{p}: malformed {role} arrays; export it again")
        # Checked here, not when an image is read: bad offsets (float ones cast with a warning,
        # decreasing, not ending at the buffer's end) read as 'cannot decode stored image' of
        # some image deep in training, and paths of the wrong shape failed as a TypeError here
        # or an IndexError in a loader thread while naming an image.
        if (off.dtype.kind not in "iu" or off[0] != 0 or np.any(np.diff(off) < 0)
                or off[-1] != len(self._buf)):
            raise ConfigError(f"{p}: malformed {role}_offsets (want integers from 0, non-decreasing, "
                              f"to the {len(self._buf)} stored bytes); export it again")
        if paths is not None and (paths.ndim != 1 or len(paths) != len(off) - 1):
            raise ConfigError(f"{p}: malformed {role}_paths ({paths.shape} for {len(off) - 1} "
                              "images); export it again")
        self._off = off.astype(np.int64)
        self._paths = None if paths is None else [str(s) for s in paths]
        # named by its images (as a prepared folder is): a resume on another export written to
        # the same path is said, as one on changed folders is (the digest distillation's
        # oracles have named it by since before)
        import hashlib

        digest = hashlib.blake2b(digest_size=8)
        digest.update(memoryview(self._buf))
        digest.update(np.ascontiguousarray(self._off).tobytes())
        self.name = f"npz-{role}-{digest.hexdigest()}"
        self.file = p

    def __len__(self) -> int:
        return len(self._off) - 1

    def open(self, index: int) -> Image.Image:
        i = self._check(index)
        return _open_bytes(self.raw_bytes(i), self.path(i))

    def raw_bytes(self, index: int) -> bytes:
        i = self._check(index)
        return self._buf[self._off[i]:self._off[i + 1]].tobytes()

    def path(self, index: int) -> str:
        return self._paths[index] if self._paths else f"{self.file}[{index}]"


# ============================================================================================
# TFDS: the ImageFolder builder (TensorFlow-free), catalog datasets
# ============================================================================================


def _tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ConfigError(
            "tensorflow-datasets is not installed (pip install tensorflow-datasets array_record); "
            "on machines without it use source='npz:<file>' (see export_arrays) or 'synthetic'"
        ) from None
    return tfds


@functools.lru_cache(maxsize=None)
def _builder_classes() -> tuple[type, type]:
    """Define ``ImageFolderConfig`` / ``ImageFolder`` on first use (TFDS imported lazily)."""
    tfds = _tfds()

    @dataclasses.dataclass(eq=False)
    class ImageFolderConfig(tfds.core.BuilderConfig):
        """One dataset made of every image under ``dirs`` (recursively).

        ``fingerprint`` identifies the folder contents and storage settings; it is part of
        the config name (see :func:`folder_builder`), so a changed folder is never served
        from a stale preparation.
        """

        dirs: tuple[str, ...] = ()
        max_source_side: int = 512
        min_source_side: int = 64
        jpeg_quality: int = 90
        max_pixels: int = DEFAULT_MAX_PIXELS_FIELD
        workers: int = 2
        fingerprint: str = ""
        progress: bool = False

    class FolderDatasetInfo(tfds.core.DatasetInfo):
        """TFDS' ``DatasetInfo`` for datasets that only ever exist on local disk."""

        def initialize_from_bucket(self) -> None:
            # TFDS calls this when the builder is made before the dataset is prepared: it makes
            # a tempfile.mkdtemp("tfds") folder, finds no pre-computed info in its GCS bucket
            # (disabled in this TFDS; our folders are never there) and leaves the empty folder
            # in /tmp, one per preparation.
            return None

    class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """TFDS builder for folders of images; use with ``file_format='array_record'``.

        Features: ``image`` (JPEG, ``H x W x 3`` uint8) and ``path``
        (``<folder name>/<relative path>``). Split: ``train``. Skipped files are in
        ``builder.info.metadata['skipped']`` (list of ``{"path", "file", "reason"}``: ``file``
        is the file's path as found, ``path`` its key, whose folder name is made safe).
        """

        name = BUILDER_NAME
        VERSION = tfds.core.Version(BUILDER_VERSION)
        RELEASE_NOTES = {BUILDER_VERSION: "Images re-encoded as JPEG; corrupt files skipped and listed."}

        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls) -> None:
            # No checksums/URLs to look up next to the code. (TFDS 4.9's default needs the
            # ``importlib_resources`` backport even on Python >= 3.9, which is not installed.)
            return None

        # TFDS prints (to stdout, bypassing logging) "Downloading and preparing dataset
        # Unknown size (download: Unknown size, ...)" before and "downloaded and prepared to
        # ..." after: nothing is downloaded here, and our own bar and summary table say the
        # rest, so they go to the debug log instead.
        def _log_download_bytes(self) -> None:
            log.debug("preparing %s under %s", self.builder_config.name, self.data_dir)

        def _log_download_done(self) -> None:
            log.debug("prepared %s under %s", self.builder_config.name, self.data_dir)

        def _info(self) -> Any:
            cfg = self.builder_config
            return FolderDatasetInfo(
                builder=self,
                description=f"Images under {', '.join(cfg.dirs) if cfg else '?'} "
                f"(short side <= {cfg.max_source_side if cfg else '?'} px).",
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "path": tfds.features.Text(),
                }),
                metadata=tfds.core.MetadataDict(),
                disable_shuffling=False,
            )

        def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
            del dl_manager
            cfg = self.builder_config
            files, ignored = _scan_dirs(cfg.dirs, digest_cache=_DigestCache(self.data_dir_root))
            fp = _fingerprint(files, cfg)
            if cfg.fingerprint and fp != cfg.fingerprint:
                raise ConfigError(f"{', '.join(cfg.dirs)}: the folder changed during preparation; run it again")
            return {"train": self._generate_examples(files, ignored)}

        def _generate_examples(self, files: list[tuple[str, str, int, str]], ignored: int) -> Iterator[tuple[str, dict[str, Any]]]:
            cfg = self.builder_config
            skipped: list[dict[str, str]] = []
            # (a key's folder name is made safe: "my photos é" is my_photos, "照片" images; the
            # messages named files under folders that do not exist)
            file_of = {key: _shown_path(full) for full, key, _, _ in files}  # (stored as text)
            n_ok = 0
            short_sides: list[int] = []  # of the stored images: what training resizes from
            bar = None
            if cfg.progress:
                bar = progress_bar(total=len(files), desc=f"prepare {self.builder_config.name}",
                                    unit="img")
            work = functools.partial(
                _prepare_one, max_side=cfg.max_source_side, min_side=cfg.min_source_side, quality=cfg.jpeg_quality,
                max_pixels=cfg.max_pixels,
            )
            try:
                for key, result in _ordered_map(work, files, workers=cfg.workers):
                    if bar is not None:
                        bar.update(1)
                    if isinstance(result, str):
                        skipped.append({"path": key, "file": file_of[key], "reason": result})
                        continue
                    n_ok += 1
                    with Image.open(io.BytesIO(result)) as stored:  # (header only)
                        short_sides.append(min(stored.size))
                    yield key, {"image": result, "path": key}
            finally:
                if bar is not None:
                    bar.close()
            # a file skipped because it changed or vanished since it was listed (a sync tool,
            # a network disk's hiccup) was stored as skipped under the name of the folder as
            # listed: left out of every later run on that folder, also once it was back
            listed = {key: (full, dg) for full, key, _, dg in files}
            changed = [s for s in skipped
                       if not listed[s["path"]][1].startswith(("unreadable", "not read"))
                       and _file_digest(listed[s["path"]][0]) != listed[s["path"]][1]]
            if changed:
                raise ConfigError(
                    f"{', '.join(cfg.dirs)}: {len(changed)} file{'s' if len(changed) > 1 else ''}"
                    f" changed or vanished during preparation (e.g. {changed[0]['file']}: "
                    f"{changed[0]['reason']}); nothing was kept: run it again")
            if n_ok == 0 and skipped:  # else TFDS fails with "No examples were yielded"
                first = skipped[0]
                raise ConfigError(f"{', '.join(cfg.dirs)}: none of the {len(files)} image files "
                                  f"could be read (e.g. {first['file']}: {first['reason']})")
            for s in skipped[:20]:
                log.warning("skipped %s: %s", s["file"], s["reason"])
            if len(skipped) > 20:
                log.warning("... and %d more skipped files", len(skipped) - 20)
            if copies := _exact_copies(files, {s["path"] for s in skipped}):
                first, orig = copies[0]
                log.warning("%d file%s byte-for-byte cop%s of others (e.g. %s = %s): each "
                            "copy is one more image to train on, so that image weighs more; "
                            "remove the copies to weigh every image once", len(copies),
                            " is a" if len(copies) == 1 else "s are",
                            "y" if len(copies) == 1 else "ies", file_of[first], file_of[orig])
            # (phone photos as .heic are not trained on: train.py shows this line, say so)
            log.info("%s: %d images prepared, %d skipped%s", cfg.name, n_ok, len(skipped),
                     _ignored_note(ignored))
            md = self.info.metadata
            md.update({
                "dirs": list(cfg.dirs),
                "fingerprint": cfg.fingerprint,
                "num_files": len(files),
                "num_prepared": n_ok,
                "num_skipped": len(skipped),
                "num_ignored_non_image": ignored,
                "skipped": skipped,
                "max_source_side": cfg.max_source_side,
                "min_source_side": cfg.min_source_side,
                "jpeg_quality": cfg.jpeg_quality,
                "prep_format": _PREP_FORMAT,
                "short_sides": short_sides,
            })

    ImageFolderConfig.__module__ = __name__
    ImageFolder.__module__ = __name__
    return ImageFolderConfig, ImageFolder


def __getattr__(name: str) -> Any:  # lazy TFDS classes: importing this module needs no TFDS
    if name == "ImageFolderConfig":
        return _builder_classes()[0]
    if name == "ImageFolder":
        return _builder_classes()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _ordered_map(fn: Any, items: Sequence[tuple], workers: int) -> Iterator[tuple[str, Any]]:
    """``(key, fn(item))`` in input order, computed by ``workers`` threads, bounded look-ahead."""
    if workers <= 1:
        for it in items:
            yield it[1], fn(it)
        return
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="nst-prepare") as pool:
        pending: collections.deque = collections.deque()
        it = iter(items)
        for item in it:
            pending.append((item[1], pool.submit(fn, item)))
            if len(pending) >= 4 * workers:
                break
        while pending:
            key, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt[1], pool.submit(fn, nxt)))
            yield key, fut.result()


def _scan_dirs(dirs: Sequence[str], *, digest_cache: _DigestCache | None = None,
               progress: bool = False) -> tuple[list[tuple[str, str, int, str]], int]:
    """Image files under ``dirs``: ``(abs path, key, size, digest)`` sorted by key; #non-images.

    ``key`` is ``<folder name>/<relative path>`` (folder names made unique). Hidden files and
    folders are skipped; symlinked folders are followed once (no loops). ``digest`` is a hash
    of the file's bytes (``"unreadable: ..."`` for a file that cannot be read; preparation
    then skips it), looked up in ``digest_cache`` by the file's identity when one is given.
    """
    found: list[tuple[str, str, os.stat_result | None]] = []
    ignored = 0
    for d in dirs:
        if not Path(d).is_dir():
            raise ConfigError(f"{d}: not a directory")
    for d, prefix in zip(dirs, _key_prefixes(dirs)):
        root = Path(d)
        for dirpath, _, filenames in _walk_once(root):
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                if not _images.is_image_file(fn):
                    ignored += 1
                    continue
                try:
                    st: os.stat_result | None = os.stat(full)
                except OSError:
                    st = None
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                # a name that is not valid UTF-8 (bytes kept by surrogateescape) cannot be
                # stored or hashed as text: its key spells those bytes as \xNN
                rel = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                found.append((full, f"{prefix}/{rel}", st))
    found.sort(key=lambda f: f[1])
    cache = digest_cache if digest_cache is not None else _DigestCache(None)
    # files that are images but not read here (HEIC, camera raws: listed so that preparation
    # reports them as skipped) are not read for a digest either: tens of MB each, for nothing
    readable = [i for i, (full, _, _) in enumerate(found)
                if Path(full).suffix.lower() not in _images.UNREADABLE_EXTENSIONS]
    digests = ["not read"] * len(found)
    to_read = [(found[i][0], found[i][2]) for i in readable]  # (path, stat)
    for i, dg in zip(readable, cache.digests(to_read, progress=progress)):
        digests[i] = dg
    cache.save(dirs)
    files = [(full, key, st.st_size if st is not None else -1, dg)
             for (full, key, st), dg in zip(found, digests)]
    return files, ignored


def _exact_copies(files: Sequence[tuple[str, str, int, str]],
                  left_out: Container[str] = ()) -> list[tuple[str, str]]:
    """``(key, key of the first file with the same bytes)`` for each file of ``files``
    (:func:`_scan_dirs`' tuples, in order) that repeats an earlier one's digest; files whose key
    is in ``left_out`` (skipped) and those without a digest are not counted."""
    first: dict[str, str] = {}
    copies = []
    for _, key, _, digest in files:
        if key in left_out or digest.startswith(("unreadable", "not read")):
            continue
        if digest in first:
            copies.append((key, first[digest]))
        else:
            first[digest] = key
    return copies


def _key_prefixes(dirs: Sequence[str]) -> list[str]:
    """The folder part of the keys of each of ``dirs``' files (:func:`_scan_dirs`): its name
    made safe, and made unique (two folders with the same name)."""
    used: set[str] = set()
    out = []
    for d in dirs:
        base = _slug(Path(d).resolve().name) or "images"
        prefix, k = base, 1
        while prefix in used:  # two folders with the same name
            k += 1
            prefix = f"{base}_{k}"
        used.add(prefix)
        out.append(prefix)
    return out


def _shown_path(path: str) -> str:
    """A path as text (a name that is not UTF-8 spells its bytes as \\xNN; see _scan_dirs)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _skipped_where_now(skipped: Sequence[Mapping[str, str]],
                       dirs: Sequence[str]) -> list[dict[str, str]]:
    """A reused dataset's skipped files named where they are now: its ``file`` was where they
    were when it was prepared (a folder moved or copied since reuses it, under the same name;
    a dataset prepared before ``file`` was recorded has only the key)."""
    where = dict(zip(_key_prefixes(dirs), dirs))
    out = []
    for s in skipped:
        prefix, _, rel = str(s.get("path", "")).partition("/")
        s = dict(s)
        if prefix in where and rel:
            s["file"] = _shown_path(os.path.join(where[prefix], *rel.split("/")))
        out.append(s)
    return out


#: Where file digests are cached when a data_dir cannot be written (a shared, read-only one):
#: without it every start read every byte of the training folders again.
DIGEST_FALLBACK = "~/.cache/arbitrary_nst/file_digests.json"


class _DigestCache:
    """Digests of file contents by real path, valid while the file's ``(size, mtime_ns,
    ctime_ns, inode)`` is unchanged (as ``git`` trusts its index; ctime too, as
    :func:`~arbitrary_nst.files.file_identity`: an in-place rewrite that puts the mtime back,
    ``exiftool -P``, ``cp -p`` over a file, keeps the rest); kept in ``<root>/file_digests.json``,
    or in :data:`DIGEST_FALLBACK` where that cannot be written (``root`` None: in memory only).
    Files changed in the last :attr:`RACY_S` seconds are not cached (git's "racily clean"
    rule: on coarse-timestamp file systems a rewrite within the same tick keeps every field).
    Saving merges with what another process wrote meanwhile, under a lock. Best effort
    throughout: a missing, damaged or unwritable cache only costs reading the files again."""

    FILE = "file_digests.json"
    VERSION = 2  # 2: ctime in the identity
    RACY_S = 2.0

    def __init__(self, root: str | os.PathLike[str] | None):
        self.paths: list[Path] = []
        if root:
            primary = Path(os.path.expanduser(os.fspath(root))) / self.FILE
            fallback = Path(_in_user_cache(DIGEST_FALLBACK))
            self.paths = [primary] + ([fallback] if fallback != primary else [])
        self.entries: dict[str, list] = {}
        for path in reversed(self.paths):  # (the data_dir's own entries win)
            self.entries.update(self._read(path))
        self._new: dict[str, list] = {}
        self._seen: set[str] = set()

    def _read(self, path: Path) -> dict[str, list]:
        try:
            doc = json.loads(path.read_text())
            if doc.get("version") == self.VERSION and isinstance(doc.get("files"), dict):
                return doc["files"]
        except (OSError, ValueError, AttributeError):
            pass
        return {}

    def digests(self, items: Sequence[tuple[str, os.stat_result | None]], *,
                progress: bool = False) -> list[str]:
        """The digest of every ``(path, stat)``, reading (in threads) the files the cache does
        not know as they are now."""
        out: list[str | None] = [None] * len(items)
        todo: list[tuple[int, str, str, os.stat_result]] = []
        for i, (full, st) in enumerate(items):
            if st is None:
                out[i] = "unreadable: cannot stat"
                continue
            if not stat.S_ISREG(st.st_mode):  # (reading a FIFO named x.jpg would block)
                out[i] = "unreadable: not a regular file"
                continue
            real = os.path.realpath(full)
            self._seen.add(real)
            hit = self.entries.get(real)
            if isinstance(hit, list) and len(hit) == 5 and hit[:4] == _identity(st):
                out[i] = hit[4]
            else:
                todo.append((i, full, real, st))
        if not todo:
            return [str(d) for d in out]
        bar = None
        total = sum(t[3].st_size for t in todo)
        if progress and (total > 256 * 2**20 or len(todo) > 5000):  # (re-scans stay silent)
            bar = progress_bar(total=total, desc="read files for their digests", unit="B",
                                unit_scale=True)
        racy = time.time_ns() - int(self.RACY_S * 1e9)
        try:
            # (bounded look-ahead: a future per file cost ~1.7 KB each, 1.7 GB for 1M files)
            for (i, _, real, st), (_, dg) in zip(todo, _ordered_map(
                    lambda t: _file_digest(t[1]), todo, workers=4)):
                out[i] = dg
                if bar is not None:
                    bar.update(st.st_size)
                if not dg.startswith("unreadable") and max(st.st_mtime_ns, st.st_ctime_ns) < racy:
                    self._new[real] = self.entries[real] = [*_identity(st), dg]
        finally:
            if bar is not None:
                bar.close()
        return [str(d) for d in out]

    def save(self, dirs: Sequence[str]) -> None:
        """Write what this scan learnt, dropping entries of files under ``dirs`` that are gone
        (a folder's renamed or deleted images do not pile up), merged under a lock with what
        the file holds now (two jobs preparing other folders at once kept only one's)."""
        roots = [os.path.realpath(d).rstrip(os.sep) + os.sep for d in dirs]
        gone = {p for p in self.entries if p not in self._seen
                and any(p.startswith(r) for r in roots)}
        for p in gone:
            del self.entries[p]
        if not self.paths or not (self._new or gone):
            return
        why = ""
        for path in self.paths:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with _exclusive_lock(path.parent / ".file_digests.lock"):
                    files = self._read(path)
                    files.update(self._new)
                    for p in gone:
                        files.pop(p, None)
                    blob = json.dumps({"version": self.VERSION, "files": files}).encode()
                    write_atomically(path, lambda f: f.write(blob))
                self._new = {}
                return
            except (NSTError, OSError) as e:  # a read-only data_dir: the per-user file
                why = why or str(e)
        log.warning("cannot write the file digest cache (%s; nor %s): the next start reads "
                    "every training image again to fingerprint it", why, self.paths[-1])


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _file_digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    try:
        # non-blocking open: a file replaced by a FIFO since its stat must not hang the scan
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return "unreadable: not a regular file"
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    return h.hexdigest()


def _walk_once(root: str | os.PathLike[str]) -> Iterator[tuple[str, str, list[str]]]:
    """``(folder, its real path, visible file names)`` under ``root``, top-down, following
    links to folders but reading each real folder once (no loops); hidden files and folders
    (``.name``) are left out, subfolders in sorted order."""
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
        yield dirpath, real, [f for f in filenames if not f.startswith(".")]


def _fingerprint(files: Sequence[tuple[str, str, int, str]], cfg: Any) -> str:
    h = hashlib.sha1()
    h.update(json.dumps([_PREP_FORMAT, cfg.max_source_side, cfg.min_source_side, cfg.jpeg_quality]).encode())
    if cfg.max_pixels != DEFAULT_MAX_PIXELS_FIELD:  # (only then: earlier preparations stay valid)
        h.update(f"max_pixels={cfg.max_pixels}".encode())
    # Contents, not times or places: a touched folder, a copy (`cp` without -p, a restore on
    # another machine) is the same dataset, reused and not "different images" on resume.
    # (Fingerprints before 2026-12 hashed mtimes and the folders' real paths: a folder
    # prepared then is prepared once more, under its new name.)
    for _, key, size, digest in files:
        h.update(f"{key}\0{size}\0{digest}\n".encode())
    return h.hexdigest()[:12]


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("._-")[:40]


#: The longest side an image is stored at to keep its short side at ``min_source_side``,
#: in multiples of ``max_source_side`` (a longer panorama is skipped as too elongated: its
#: training crops would need a resize to tens of thousands of pixels; JPEG stops at 65500).
MAX_ELONGATED_SIDE = 12


def _stored_cap(w: int, h: int, max_side: int, min_side: int = 0) -> int | None:
    """The longer side an image is stored at (smaller side <= ``max_side``, longer side <=
    3 x ``max_side``, but the smaller side not cut below ``min_side``: a 5000 x 200 panorama
    was stored at 1535 x 61 and then skipped as too small), or None when it is stored at its
    own size (also for an unknown size 0)."""
    short, long = min(w, h), max(w, h)
    if not (short and short > max_side or long > 3 * max_side):
        return None
    cap = math.floor(long * min(max_side / short, 3 * max_side / long))
    if short >= min_side:  # (rounded up: the short side stays >= min_side)
        cap = max(cap, math.ceil(long * min_side / short))
    return None if cap >= long else max(1, cap)


def _too_elongated(w: int, h: int, cap: int | None, max_side: int,
                   min_side: int) -> str | None:
    """The skip reason of an image whose stored long side (``cap``, from :func:`_stored_cap`;
    None: its own) is too long."""
    if min(w, h) < min_side:  # (too small: said as such)
        return None
    stored = cap or max(w, h)
    limit = min(MAX_ELONGATED_SIDE * max_side, 65500)
    if stored <= limit:
        return None
    return (f"too elongated ({w} x {h}: at a short side of {min_side} px or more the long side "
            f"is {stored} > {limit} px)")


def _prepare_one(item: tuple[str, str, int, str], *, max_side: int, min_side: int, quality: int,
                 max_pixels: int = DEFAULT_MAX_PIXELS_FIELD) -> bytes | str:
    """JPEG bytes to store for one file, or the reason it is skipped (a ``str``)."""
    full = item[0]
    if not os.path.isfile(full):  # a FIFO named x.jpg: opening it would wait forever
        return "not a regular file" if os.path.exists(full) else "no such file"
    try:
        with Image.open(full) as head:  # header only: format, size, orientation, ICC
            fmt, mode, (w, h) = head.format, head.mode, head.size
            orient = head.getexif().get(0x0112, 1) if fmt == "JPEG" else 1
            icc = bool(head.info.get("icc_profile"))
    except Exception:  # noqa: BLE001 - load_pil below gives the precise reason
        fmt, mode, w, h, orient, icc = None, None, 0, 0, 1, False
    if w and h and min(w, h) < min_side:  # (the file's own size: not a downscaled one)
        return f"too small ({w} x {h} < {min_side} px)"
    cap = _stored_cap(w, h, max_side, min_side)
    if (why := _too_elongated(w, h, cap, max_side, min_side)) is not None:
        return why
    try:
        # full decode: corrupt/truncated -> ImageError
        pil = _images.load_pil(full, max_side=cap, max_pixels=max_pixels)
    except ImageError as e:
        # (the hint names the Stylizer's option)
        return e.reason.replace(_images.TOO_LARGE_HINT, "raise data.max_pixels (--max-pixels)")
    except Exception as e:  # noqa: BLE001
        return f"cannot decode: {e}"
    if cap is None and w * h == 0:  # the header probe failed (above Pillow's own pixel
        # limit, which load_pil raises to max_pixels): plan the size after the decode
        cap = _stored_cap(*pil.size, max_side, min_side)
        if (why := _too_elongated(*pil.size, cap, max_side, min_side)) is not None:
            return why
        if cap is not None:  # downscale instead of storing it at full size
            pil = _images.downscale_pil(pil, cap)
    if min(pil.size) < min_side:
        return f"too small ({pil.size[0]} x {pil.size[1]} < {min_side} px)"
    std = _pixel_std(pil if pil.mode == "RGB" else pil.convert("RGB"))
    if std < FLAT_CROP_STD:  # every crop of it would be flat: see FLAT_CROP_STD
        return (f"blank (pixel std {std:.4f} < {FLAT_CROP_STD}): nothing to learn from, and a "
                "flat content crop overflows the gradient")
    if cap is None and fmt == "JPEG" and mode == "RGB" and orient in (None, 1) and not icc:
        try:
            with open(full, "rb") as f:
                return f.read()  # a clean, small RGB JPEG: store as is (no generation loss)
        except OSError as e:
            return f"cannot read: {e}"
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=int(quality), subsampling=0 if quality >= 90 else 2)
    return buf.getvalue()


def folder_builder(dirs: Sequence[str | os.PathLike[str]], *, data_dir: str | os.PathLike[str] | None = None,
                   max_source_side: int = 512, min_source_side: int = 64, jpeg_quality: int = 90,
                   workers: int = 2, name: str | None = None, progress: bool = False,
                   max_pixels: int = DEFAULT_MAX_PIXELS_FIELD) -> Any:
    """An :class:`ImageFolder` builder for ``dirs`` (config name ``<name>-<fingerprint>``).

    Scans the folders to compute the fingerprint (reading the files the digest cache under
    ``data_dir`` does not know as they are); nothing is decoded until ``download_and_prepare``. ``data_dir`` defaults to :data:`DEFAULT_DATA_DIR`.
    """
    cfg_cls, builder_cls = _builder_classes()
    dirs_t = tuple(os.path.abspath(os.path.expanduser(os.fspath(d))) for d in dirs)
    if not dirs_t:
        raise ConfigError("ImageFolder: no directories given")
    for d in dirs_t:
        if not os.path.isdir(d):
            raise ConfigError(f"{d}: no such directory" if not os.path.exists(d) else f"{d}: not a directory")
    probe = cfg_cls(name="probe", dirs=dirs_t, max_source_side=int(max_source_side),
                    min_source_side=int(min_source_side), jpeg_quality=int(jpeg_quality),
                    max_pixels=int(max_pixels))
    root = data_dir_path(data_dir)
    files, _ = _scan_dirs(dirs_t, digest_cache=_DigestCache(root), progress=progress)
    if not files:
        exts = _images.describe_image_extensions()
        raise ConfigError(f"{', '.join(dirs_t)}: no image files ({exts}) found (searched recursively)")
    fp = _fingerprint(files, probe)
    base = _slug(name) if name else "+".join(_slug(Path(d).name) or "images" for d in dirs_t)[:60]
    config = cfg_cls(
        name=f"{base}-{fp}", dirs=dirs_t, max_source_side=int(max_source_side),
        min_source_side=int(min_source_side), jpeg_quality=int(jpeg_quality),
        max_pixels=int(max_pixels),
        workers=max(1, int(workers)), fingerprint=fp, progress=bool(progress),
        description=f"images under {', '.join(dirs_t)}",
    )
    import absl.logging  # TFDS warns "Using custom data configuration" for every such builder

    from google.protobuf import json_format

    level = absl.logging.get_verbosity()
    absl.logging.set_verbosity(absl.logging.ERROR)
    try:
        return builder_cls(config=config, data_dir=root, file_format="array_record")
    except (json_format.ParseError, ValueError, KeyError, TypeError, AssertionError) as e:
        # TFDS reads an earlier preparation's dataset_info.json here: one cut short (a full
        # disk, a copy stopped half way) or edited by hand was a protobuf traceback (and one
        # emptied to {} or [], an AssertionError: its version is not the builder's)
        version_dir = Path(root) / builder_cls.name / config.name / BUILDER_VERSION
        if not (version_dir / "dataset_info.json").is_file():  # (not about that file)
            raise
        raise ConfigError(f"{version_dir}: cannot read the prepared data's description "
                          f"({_one_line(e)[:200]}); delete this folder to prepare it again") \
            from None
    finally:
        absl.logging.set_verbosity(level)


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    """An advisory inter-process lock on ``path`` (``fcntl.flock``; a no-op where there is no
    ``fcntl``, i.e. Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def prepare_folder(dirs: Sequence[str | os.PathLike[str]], *, data_dir: str | os.PathLike[str] | None = None,
                   max_source_side: int = 512, min_source_side: int = 64, jpeg_quality: int = 90,
                   workers: int = 2, name: str | None = None, progress: bool = False,
                   max_pixels: int = DEFAULT_MAX_PIXELS_FIELD) -> TFDSSource:
    """Prepare (or reuse) the :class:`ImageFolder` dataset of ``dirs``; return its source.

    ``source.report`` = ``{"name", "data_dir", "num_prepared", "num_skipped", "skipped",
    "num_ignored_non_image", "reused", "seconds"}``.
    """
    tfds = _tfds()
    t0 = time.perf_counter()
    b = folder_builder(dirs, data_dir=data_dir, max_source_side=max_source_side,
                       min_source_side=min_source_side, jpeg_quality=jpeg_quality,
                       workers=workers, name=name, progress=progress, max_pixels=max_pixels)
    reused = (Path(b.data_dir) / "dataset_info.json").exists()
    if not reused:
        try:
            Path(b.data_dir_root).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{b.data_dir_root}: cannot create the prepared-data folder "
                              f"({e.strerror or _one_line(e)}); set data.data_dir / --data-dir "
                              "to a writable folder") from None
        # Two jobs preparing the same folders at once (e.g. two trainings started together)
        # would race on TFDS' final rename of its incomplete.* directory: serialize them, and
        # let the later one reuse what the first prepared.
        with _exclusive_lock(Path(b.data_dir_root) / f".{b.builder_config.name}.lock"):
            reused = (Path(b.data_dir) / "dataset_info.json").exists()
            if not reused:
                # A preparation killed outright (kill -9, power loss) left TFDS' temporary
                # folder behind; holding this dataset's lock, any such folder is stale.
                version_dir = Path(b.data_dir)
                for stale in version_dir.parent.glob(f"incomplete.*_{version_dir.name}"):
                    log.info("removing %s (an interrupted earlier preparation)", stale)
                    shutil.rmtree(stale, ignore_errors=True)
                # TFDS' own "Generating splits" bars: never (ours, with progress, instead)
                tfds.disable_progress_bar()
                try:
                    b.download_and_prepare(
                        file_format="array_record",
                        download_dir=os.path.join(b.data_dir_root, "downloads"),
                        download_config=tfds.download.DownloadConfig(
                            compute_stats=tfds.download.ComputeStatsMode.SKIP),
                    )
                except (OSError, RuntimeError) as e:  # a read-only or full data_dir: one line
                    # (TFDS wraps write errors in RuntimeError: "No space left ...")
                    if isinstance(e, RuntimeError) and not (
                            "space" in str(e) or "Read-only" in str(e)):
                        raise
                    why = getattr(e, "strerror", None) or _one_line(e)[:200]
                    raise ConfigError(f"{b.data_dir_root}: cannot write the prepared data "
                                      f"({why}); set data.data_dir / --data-dir to a writable "
                                      "folder with space") from None
        if reused:  # prepared by another process while we waited: reload its dataset info
            b = folder_builder(dirs, data_dir=data_dir, max_source_side=max_source_side,
                               min_source_side=min_source_side, jpeg_quality=jpeg_quality,
                               workers=workers, name=name, progress=progress,
                               max_pixels=max_pixels)
    if reused:
        _check_prepared_files(Path(b.data_dir))
    md = dict(b.info.metadata or {})
    n = b.info.splits["train"].num_examples
    if n == 0:
        raise ConfigError(
            f"{', '.join(b.builder_config.dirs)}: none of the {md.get('num_files', '?')} image files could be read"
        )
    if reused:  # (train.py showed a line only when a folder was first prepared)
        log.info("%s: %d images, prepared earlier under %s (reused)%s", b.builder_config.name, n,
                 b.data_dir, f"; {int(md.get('num_skipped', 0))} files were left out then"
                 if md.get("num_skipped") else "")
    ds = b.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
    report = {
        "name": b.builder_config.name,
        "dirs": list(b.builder_config.dirs),
        "data_dir": os.fspath(b.data_dir),
        "num_prepared": int(n),
        "num_skipped": int(md.get("num_skipped", 0)),
        "skipped": (_skipped_where_now(md.get("skipped", []), b.builder_config.dirs)
                    if reused else list(md.get("skipped", []))),
        "num_ignored_non_image": int(md.get("num_ignored_non_image", 0)),
        "reused": reused,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    # (the sizes are not in the report, which is printed and logged: one int per image; None
    # for a dataset prepared before they were recorded)
    return TFDSSource(ds, name=b.builder_config.name, report=report,
                      short_sides=md.get("short_sides"))


def _ignored_note(n: int) -> str:
    """``", N other files ignored (not jpg/jpeg/...)"`` for a summary line ("" for none)."""
    if not n:
        return ""
    exts = _images.describe_image_extensions("/")
    return f", {n} other file{'s' if n != 1 else ''} ignored (not {exts})"


def _records_in(path: Path) -> int:
    """Records an array_record file holds, read from its footer (-1: it cannot be read)."""
    from array_record.python import array_record_module

    try:
        reader = array_record_module.ArrayRecordReader(str(path))
    except Exception:  # noqa: BLE001 - array_record raises RuntimeError and others
        return -1
    try:
        return reader.num_records()
    except Exception:  # noqa: BLE001
        return -1
    finally:
        with contextlib.suppress(Exception):  # (a damaged file's close raises too)
            reader.close()


def _check_prepared_files(version_dir: Path) -> None:
    """A reused preparation has every shard file its ``dataset_info.json`` lists, each holding
    the records it recorded (read from the file's footer; files copied in part, cleaned by hand
    or cut short were found only by the loader, as a traceback in the middle of training).
    (Not by bytes: ``numBytes`` counts the examples before array_record compresses them.)"""
    try:
        info = json.loads((version_dir / "dataset_info.json").read_text())
        for split in info.get("splits", []):
            lengths = [int(n) for n in split.get("shardLengths", [])]
            for i, want in enumerate(lengths):
                f = version_dir / (f"{info['name']}-{split['name']}."
                                   f"{info.get('fileFormat', 'array_record')}-"
                                   f"{i:05d}-of-{len(lengths):05d}")
                got = _records_in(f) if f.is_file() else None
                if got == want:
                    continue
                why = (f"{f.name} is missing" if got is None else
                       f"{f.name} cannot be read" if got < 0 else
                       f"{f.name} holds {got} of its {want} records")
                raise ConfigError(f"{version_dir}: the prepared data is damaged or incomplete "
                                  f"({why}); delete this folder to prepare it again")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # (.get of a
        # description, or a split, that is no JSON object: a traceback)
        raise ConfigError(f"{version_dir}: cannot read the prepared data's description "
                          f"({_one_line(e)[:200]}); delete this folder to prepare it again") \
            from None


def _catalog_builder(name: str, root: str) -> Any:
    """``tfds.builder(name)`` (array_record, under ``root``), without the empty folder TFDS
    leaves in the temp folder for a dataset not prepared yet: ``DatasetInfo.
    initialize_from_bucket`` makes ``tempfile.mkdtemp("tfds")`` before it looks for pre-computed
    info in its GCS bucket, and never removes it (the folder builder overrides that method;
    a catalog builder's info class is TFDS' own, so the new empty ones are removed after)."""
    tfds = _tfds()
    tmp = Path(tempfile.gettempdir())

    def tfds_temps() -> set[Path]:
        try:
            return set(tmp.glob("tmp*tfds"))
        except OSError:
            return set()

    before = tfds_temps()
    try:
        return tfds.builder(name, data_dir=root, file_format="array_record")
    except Exception as e:  # noqa: BLE001 - DatasetNotFoundError, bad config names, ...
        raise ConfigError(f"tfds:{name}: {_one_line(e)}") from None
    finally:
        for made in tfds_temps() - before:
            with contextlib.suppress(OSError):  # (one with files in it stays: not ours to judge)
                made.rmdir()


#: A host that every TFDS download can resolve when online (TFDS' own bucket, which it reads
#: the datasets' metadata from).
TFDS_BUCKET_HOST = "storage.googleapis.com"


def _no_name_lookup(homepage: str | None) -> str | None:
    """Why this machine cannot download (no host name resolves: the dataset's homepage host
    nor TFDS' bucket), or None. Offline, TFDS's downloader retried a failing name lookup ten
    times with backoff: 3.5 minutes before its error. A lookup that fails at once is a quick
    answer; both must fail, so a network that only blocks one of them still downloads."""
    import socket
    from urllib.parse import urlparse

    hosts = [h for h in (urlparse(homepage or "").hostname, TFDS_BUCKET_HOST) if h]
    why = []
    for host in dict.fromkeys(hosts):
        try:
            socket.getaddrinfo(host, 443)
            return None
        except (OSError, UnicodeError) as e:
            why.append(f"{host}: {getattr(e, 'strerror', None) or e}")
    return "name lookup failed: " + "; ".join(why)


def source_from_catalog(name: str, split: str = "train", data_dir: str | os.PathLike[str] | None = None) -> TFDSSource:
    """A TFDS catalog image dataset (e.g. ``'coco/2017'``, ``'dtd'``) by name.

    Reuses a preparation under ``data_dir`` (default :data:`DEFAULT_DATA_DIR`); otherwise
    downloads and prepares it with ``file_format='array_record'`` (needs internet access and,
    for some datasets, their own extra dependencies). The first ``Image`` feature (``image``
    preferred) is used.

    Raises:
        ConfigError: unknown name, no image feature, prepared in another file format, or
            the download/preparation failed (e.g. offline).
    """
    tfds = _tfds()
    root = data_dir_path(data_dir)
    b = _catalog_builder(name, root)
    ready = (Path(b.data_dir) / "dataset_info.json").exists()
    if not ready:
        if (offline := _no_name_lookup(getattr(b.info, "homepage", None))) is not None:
            raise ConfigError(  # (TFDS retried the download for 3.5 minutes first)
                f"tfds:{name}: not prepared under {root}, and this machine is offline "
                f"({offline}). Catalog datasets need internet access the first time; offline, "
                "use image folders (source='folder') instead")
        log.info("tfds:%s: not prepared under %s; downloading and preparing (array_record)", name, root)
        try:
            b.download_and_prepare(file_format="array_record")
        except Exception as e:  # noqa: BLE001 - network errors, missing extra deps, ...
            if isinstance(e, ImportError) and "importlib_resources" in str(e):
                raise ConfigError(  # TFDS 4.9 imports this backport even on Python >= 3.9
                    f"tfds:{name}: TFDS needs the 'importlib_resources' package to download "
                    "catalog datasets: pip install importlib_resources"
                ) from None
            raise ConfigError(
                f"tfds:{name}: not prepared under {root}, and download_and_prepare failed "
                f"({type(e).__name__}: {_one_line(e)}). Catalog datasets need internet access the "
                "first time; offline, use image folders (source='folder') instead"
            ) from None
    fmt = getattr(b.info, "file_format", None)
    if fmt is not None and "array_record" not in str(fmt).lower():
        raise ConfigError(
            f"tfds:{name}: prepared under {b.data_dir} as {fmt}, but random access needs "
            "array_record; prepare it again with file_format='array_record' (another data_dir)"
        )
    feats = b.info.features
    image_keys = [k for k, f in feats.items() if isinstance(f, tfds.features.Image)]
    if not image_keys:
        raise ConfigError(f"tfds:{name}: has no top-level Image feature ({', '.join(feats)})")
    key = "image" if "image" in image_keys else image_keys[0]
    try:
        ds = b.as_data_source(split, decoders={key: tfds.decode.SkipDecoding()})
    except Exception as e:  # noqa: BLE001 - unknown split, ...
        raise ConfigError(f"tfds:{name}: cannot read split {split!r}: {_one_line(e)}") from None
    path_key = next((k for k in ("image/filename", "file_name", "filename") if k in feats), None)
    return TFDSSource(ds, name=f"tfds:{name}#{split}", image_key=key, path_key=path_key,
                      report={"name": f"tfds:{name}#{split}", "num_prepared": len(ds), "num_skipped": 0, "skipped": [],
                              "reused": ready})  # (data prepare's total: prepared now or earlier)


def _one_line(e: object) -> str:
    s = one_line(e)
    return s if len(s) <= 300 else s[:297] + "..."


# ============================================================================================
# prepare(data_cfg)
# ============================================================================================


def _is_eval_path(p: str) -> bool:
    return any(part.lower() == "eval" for part in Path(p).parts)


def _check_not_eval(d: str, c: Mapping[str, Any]) -> None:
    """Refuse a training folder that is, is a link to, contains or links into a folder named
    ``eval`` (any case): evaluation images must never be trained on. The walk follows links
    (as the preparation does), each real folder once."""
    if c["allow_eval_dirs"]:
        return
    hint = ("evaluation images must never be used for training (if this is not one: "
            "train.py --set data.allow_eval_dirs=True, or data prepare/export "
            "--allow-eval-dirs)")
    root = os.path.expanduser(d)
    for p in (os.path.abspath(root), os.path.realpath(root)):
        if _is_eval_path(p):
            raise ConfigError(f"{d}: looks like an evaluation folder (a path component of {p} "
                              f"is 'eval'); {hint}")
    # (from the real folder: a spelling like eval/../style is not in an 'eval' folder)
    for dirpath, real, filenames in _walk_once(os.path.realpath(root)):
        inside = [dirpath] if _is_eval_path(dirpath) or _is_eval_path(real) else [
            os.path.join(dirpath, f) for f in filenames
            if os.path.islink(os.path.join(dirpath, f))
            and _is_eval_path(os.path.realpath(os.path.join(dirpath, f)))]
        if inside:
            raise ConfigError(f"{d}: contains evaluation images ({inside[0]} is in or links into "
                              f"a folder named 'eval'); {hint}")


def _first_link(path: str, root: str) -> str:
    """The first link on the way from folder ``root`` down to ``path`` (``path`` if none)."""
    p = root
    for part in Path(os.path.relpath(path, root)).parts:
        p = os.path.join(p, part)
        if os.path.islink(p):
            return p
    return path


def _check_folders_distinct(c: Mapping[str, Any]) -> None:
    """Refuse a folder listed twice in one role, or one inside another listed folder: folders
    are searched recursively, so its images would be taken twice (twice the weight in a
    mixture) or paintings inside the photo folder trained on as content photos, without a
    word. One folder as both the content and the style folder is allowed (that is plain)."""
    seen: list[tuple[str, str, str]] = []  # (real path, role, as given)
    for role in ("content", "style"):
        for d in c[f"{role}_dirs"] or ():
            if str(d).startswith("tfds:"):
                continue
            real = os.path.realpath(os.path.expanduser(d))
            for other_real, other_role, other in seen:
                if real == other_real:
                    if role != other_role:
                        continue
                    raise ConfigError(f"{d}: listed twice in {role}_dirs (as {other!r} and "
                                      f"{str(d)!r}); list a folder once (to give it more "
                                      f"weight: {role}_dir_weights"
                                      + (", --style-weight of `python -m arbitrary_nst.data`"
                                         if role == "style" else "") + ")")
                common = os.path.commonpath([real, other_real])
                if common in (real, other_real):  # one inside the other
                    inner, outer = (d, other) if common == other_real else (other, d)
                    raise ConfigError(
                        f"{inner}: inside {outer}, which is also listed and searched with its "
                        "subfolders: its images would be taken twice" + (
                            "" if role == other_role else ", as content photos and as paintings")
                        + "; list folders that do not overlap")
            seen.append((real, role, str(d)))
    # The preparation follows links (_walk_once), so a link inside one listed folder to (a part
    # of) another, or to a file in it, takes those images twice, or as both roles, just as a
    # real subfolder would: refused alike, naming the link.
    for real, role, d in seen:
        others = [(r, ro, o) for r, ro, o in seen if r != real]
        if not others:
            continue
        for dirpath, sub_real, filenames in _walk_once(real):
            reached = [(dirpath, sub_real)] if not is_inside(sub_real, real) else []
            reached += [(os.path.join(dirpath, f), os.path.realpath(os.path.join(dirpath, f)))
                        for f in filenames if os.path.islink(os.path.join(dirpath, f))]
            for link, target in reached:
                link = _first_link(link, real)
                for other_real, other_role, other in others:
                    if is_inside(target, other_real):
                        raise ConfigError(
                            f"{link}: links into {other}, which is also listed: its images "
                            "would be taken twice" + ("" if role == other_role else
                                                     ", as content photos and as paintings")
                            + "; remove the link or list folders that do not overlap")


def _parse_catalog(spec: str) -> tuple[str, str]:
    name = spec[len("tfds:"):]
    split = "train"
    if "#" in name:
        name, split = name.split("#", 1)
    if not name:
        raise ConfigError(f"{spec!r}: expected tfds:<name>[#split], e.g. tfds:coco/2017")
    return name, split or "train"


def _role_source(role: str, entries: Sequence[str], weights: Any, c: Mapping[str, Any], progress: bool) -> DataSource:
    if not entries:
        raise ConfigError(f"data config: {role}_dirs is empty (source={c['source']!r})")
    parts: list[DataSource] = []
    for e in entries:
        if e.startswith("tfds:"):
            nm, split = _parse_catalog(e)
            parts.append(source_from_catalog(nm, split, c["data_dir"]))
            continue
        _check_not_eval(e, c)
        parts.append(prepare_folder(
            [e], data_dir=c["data_dir"], max_source_side=c["max_source_side"],
            min_source_side=c["min_source_side"], jpeg_quality=c["jpeg_quality"],
            workers=c["prepare_workers"], progress=progress, max_pixels=c["max_pixels"],
        ))
        # a copy of a listed folder elsewhere (same name, same files) is the same dataset: its
        # images would count twice, as a folder listed twice would (refused by path before)
        same = [(d, p) for d, p in zip(entries, parts[:-1])
                if getattr(p, "report", None) and p.report.get("data_dir")
                == parts[-1].report.get("data_dir")]
        if same:
            raise ConfigError(f"{e}: holds the same images as {same[0][0]} (a copy of it), "
                              f"also listed in {role}_dirs: they would count twice; list one")
    folders = [(e, p) for e, p in zip(entries, parts) if not e.startswith("tfds:")]
    if len(folders) > 1 and (copies := _copies_across(folders, c["data_dir"])):
        copy, orig = copies[0]
        log.warning("%d file%s under one of the listed %s folders %s byte-for-byte cop%s of files "
                    "under another (e.g. %s = %s): each copy is one more image to train on, so "
                    "that image weighs more; remove the copies to weigh every image once",
                    len(copies), "" if len(copies) == 1 else "s", role,
                    "is a" if len(copies) == 1 else "are", "y" if len(copies) == 1 else "ies",
                    copy, orig)
    if len(parts) == 1 and weights is None:
        return parts[0]
    return MixtureSource(parts, weights, name=role)


def _copies_across(folders: Sequence[tuple[str, DataSource]],
                   data_dir: Any) -> list[tuple[str, str]]:
    """``(file, the file with the same bytes under an earlier folder)`` for each file of the
    prepared ``(folder, source)`` pairs that repeats one of an earlier folder (copies inside
    one folder are named when it is prepared, :func:`_exact_copies`); files its preparation
    skipped are not counted. The digests come from the cache the preparation filled."""
    cache = _DigestCache(data_dir_path(data_dir))
    first: dict[str, str] = {}
    copies = []
    for folder, source in folders:
        skipped = {s["file"] for s in getattr(source, "report", {}).get("skipped", [])}
        files, _ = _scan_dirs([os.path.abspath(os.path.expanduser(folder))],
                              digest_cache=cache)
        here: dict[str, str] = {}
        for full, _, _, digest in files:
            shown = _shown_path(full)
            if shown in skipped or digest.startswith(("unreadable", "not read")):
                continue
            if digest in first:
                copies.append((shown, first[digest]))
            else:
                here.setdefault(digest, shown)
        first = {**here, **first}
    return copies


def prepare(data_cfg: Any = None, *, progress: bool = False,
            roles: Sequence[str] = ("content", "style")) -> dict[str, DataSource]:
    """The ``{"content": DataSource, "style": DataSource}`` described by ``data_cfg``.

    Folders are prepared once (TFDS ``ImageFolder``, one dataset per folder so per-folder
    weights can be applied) and reused afterwards; see :func:`default_data_config`.
    Each folder source carries a ``report`` (prepared/skipped counts). With ``source='folder'``,
    ``roles`` picks which of the two to prepare (the CLI's ``prepare --content-dir D`` alone).
    """
    c = _cfg(data_cfg)
    src = str(c["source"])
    if src == "synthetic":
        n = int(c["synthetic_count"])
        return {"content": SyntheticSource("content", n), "style": SyntheticSource("style", n)}
    if src.startswith("npz:"):
        p = src[4:]
        return {"content": NpzSource(p, "content"), "style": NpzSource(p, "style")}
    if src.startswith("tfds:"):
        _check_folders_distinct(c)
        nm, split = _parse_catalog(src)
        content: DataSource = source_from_catalog(nm, split, c["data_dir"])
        if c["content_dirs"]:
            content = MixtureSource([content] + [_role_source("content", [d], None, c, progress) for d in c["content_dirs"]],
                                    c["content_dir_weights"], name="content")
        return {"content": content, "style": _role_source("style", c["style_dirs"], c["style_dir_weights"], c, progress)}
    if src != "folder":
        raise ConfigError(f"data config: unknown source {src!r} (folder, synthetic, tfds:<name>, npz:<path>)")
    for role in roles:  # before preparing anything: an empty role would stop the job after it
        if not c[f"{role}_dirs"]:
            raise ConfigError(f"data config: {role}_dirs is empty (source={src!r})")
        weights = c[f"{role}_dir_weights"]
        if weights is not None and len(weights) != len(c[f"{role}_dirs"]):
            raise ConfigError(f"data config: {len(weights)} {role}_dir_weights for "
                              f"{len(c[f'{role}_dirs'])} {role}_dirs")
    _check_folders_distinct(c)
    return {role: _role_source(role, c[f"{role}_dirs"], c[f"{role}_dir_weights"], c, progress)
            for role in roles}


#: Training upscaling beyond this factor (at the smallest size drawn) blurs what is learnt.
UPSCALE_NOTE_FACTOR = 1.5
#: ... and a role gets a note when at least this share of its images is upscaled that much.
UPSCALE_NOTE_SHARE = 0.1


def upscale_notes(sources: Mapping[str, DataSource], data_cfg: Any = None) -> list[str]:
    """One line per role (content, style) whose prepared images are mostly too small for the
    sizes training resizes them to: a user's 150-px paintings are upscaled ~2-3x (to a shorter
    side of 258-456 px with ``cpu_small.py``) without a word, and the network learns blurred
    strokes. A role gets a line when >= :data:`UPSCALE_NOTE_SHARE` of its images are upscaled
    more than :data:`UPSCALE_NOTE_FACTOR` x even at the smallest size drawn. Datasets
    prepared before the sizes were recorded are left out."""
    c = _cfg(data_cfg)
    lo_style, hi_style = _resize_range(c["style_resize_range"], int(c["style_size"]))
    lo_content = int(c["image_size"]) * float(c["content_scale_range"][0])
    hi_content = int(c["image_size"]) * float(c["content_scale_range"][1])
    cap = int(c["max_source_side"])
    notes = []
    for role, smallest, largest, option, learnt, remedy in (
            ("content", lo_content, hi_content, "data.content_scale_range / data.image_size",
             "from blurred photos", "larger images avoid it"),
            ("style", lo_style, hi_style, "data.style_resize_range", "blurred strokes",
             "larger images avoid it (data.style_unsharp sharpens part of it back)")):
        src = sources.get(role)
        parts = src.parts if isinstance(src, MixtureSource) else [src]
        sides = [x for p in parts for x in (getattr(p, "short_sides", None) or ())]
        if not sides:
            continue
        # images stored at the cap were larger: a cap below the sizes drawn upscales them
        # (image_size 512 with the default cap: paintings of 1600 px stored at 512 and drawn
        # at up to 912, without a word)
        capped = sum(x >= cap for x in sides)
        if largest > cap and capped and capped >= UPSCALE_NOTE_SHARE * len(sides):
            notes.append(
                f"{role}: {capped} of {len(sides)} images were stored at data.max_source_side "
                f"({cap} px on their shorter side) but training resizes them up to "
                f"{largest:.0f} px ({option}), i.e. upscales them up to {largest / cap:.2f}x; "
                f"prepare them with a max_source_side of {math.ceil(largest)} or more "
                "(--max-source-side, or --set data.max_source_side)")
        limit = smallest / UPSCALE_NOTE_FACTOR
        small = sum(x < limit for x in sides)
        if small and small >= UPSCALE_NOTE_SHARE * len(sides):
            notes.append(
                f"{role}: {small} of {len(sides)} images are under {limit:.0f} px on their "
                f"shorter side (the smallest {min(sides)} px): training resizes them to "
                f"{smallest:.0f} px or more ({option}), i.e. upscales them over "
                f"{UPSCALE_NOTE_FACTOR:g}x, and learns {learnt}; {remedy}")
    return notes


def reports(sources: Mapping[str, DataSource]) -> list[dict[str, Any]]:
    """The preparation reports of all (sub)sources, with a ``role`` field."""
    out = []
    for role, s in sources.items():
        for p in (s.parts if isinstance(s, MixtureSource) else [s]):
            r = dict(getattr(p, "report", None) or {"name": p.name, "num_prepared": len(p), "num_skipped": 0})
            r["role"] = role
            out.append(r)
    return out


# ============================================================================================
# Augmentation
# ============================================================================================


def _as_pil(img: Any) -> Image.Image:
    if isinstance(img, Image.Image):
        return img
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an H x W x 3 image, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a[..., :3]))


def _crop_resize(im: Image.Image, scale: float, off: tuple[int, int], size: int,
                 full_size: tuple[int, int] | None = None) -> Image.Image:
    """``resize(im, scale)[oy:oy+size, ox:ox+size]`` as one Pillow op (JPEG draft when >= 2x).

    ``scale`` is relative to the image's size *before* any draft: ``full_size``, which a
    second crop of the same ``im`` must give (the first one's draft shrank ``im`` in place:
    the box was 2-8x outside it, "box can't exceed original image size"), else ``im.size``.
    Returns the RGB crop (uint8).
    """
    w0, h0 = full_size if full_size is not None else im.size
    ox, oy = off
    if getattr(im, "format", None) == "JPEG" and scale <= 0.5:
        # Decode at 1/2, 1/4 or 1/8 scale, still >= the resized size (a no-op once loaded).
        try:
            im.draft("RGB", (max(1, math.ceil(w0 * scale)), max(1, math.ceil(h0 * scale))))
        except Exception:  # noqa: BLE001
            pass
    im = _to_rgb(im)
    fx, fy = im.size[0] / w0, im.size[1] / h0  # draft factor
    box = (ox / scale * fx, oy / scale * fy, (ox + size) / scale * fx, (oy + size) / scale * fy)
    return im.resize((size, size), Image.Resampling.BILINEAR, box=box)


def _pixel_std(im: Image.Image) -> float:
    """The largest per-channel standard deviation of an RGB image on the [0, 1] scale
    (:func:`arbitrary_nst.images.channel_std`: 0 for any one-colour image), from Pillow's
    per-band histograms: the same number as on the float crop (float64 sums), without a float
    copy of the pixels (so the uint8 path needs none at all; ~0.1 ms for 256²)."""
    h = np.asarray(im.histogram(), np.float64).reshape(-1, 256)
    v = np.arange(256, dtype=np.float64)
    n = h.sum(axis=1)
    mean = h @ v / n
    var = np.maximum(h @ (v * v) / n - mean * mean, 0.0)
    return float(np.sqrt(var.max())) / 255.0


def _to_float(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32) * np.float32(1.0 / 255.0)


def _crop_offsets(rng: np.random.Generator, w: int, h: int, size: int) -> tuple[int, int]:
    fx, fy = rng.random(2)
    return min(int(fx * (w - size + 1)), w - size), min(int(fy * (h - size + 1)), h - size)


#: A content crop whose pixel standard deviation is below this ([0, 1] scale, ~2.5/255) is
#: drawn again at another position (at most ``FLAT_CROP_TRIES`` crops in all). Why: a constant
#: crop (a white background, a clear sky) is constant through the transfer network, every
#: instance norm then sees a variance ~0 and scales its backward pass by ``1/sqrt(eps)`` ~ 316,
#: and 13 of them in a row overflow float32: measured, one all-white 96^2 crop made the whole
#: gradient NaN at step 1375 of a batch-8 run (RESULTS.md). A flat crop has no content to learn
#: from anyway.
FLAT_CROP_STD = _images.BLANK_STD  # the one "blank" threshold: refinement and fits use it too
FLAT_CROP_TRIES = 8


def augment_content(img: Any, rng: np.random.Generator, size: int = 256,
                    scale_range: tuple[float, float] = (1.0, 1.15), *,
                    as_uint8: bool = False) -> np.ndarray:
    """Resize the smaller side to ``size * u`` (``u ~ U[scale_range)``), random ``size``² crop.

    ``img``: a PIL image (lazily opened JPEGs are decoded at reduced scale when possible), a
    ``uint8`` or a float ``[0, 1]`` array. Returns ``float32`` ``size x size x 3`` in [0, 1], or
    with ``as_uint8`` the same crop as ``uint8`` 0..255 (the float one is it ``* float32(1/255)``).
    Random draws, in order: ``u``, then the crop position (two uniforms); two more per
    re-drawn crop when a crop is flat (std < :data:`FLAT_CROP_STD`; up to
    :data:`FLAT_CROP_TRIES` crops, the last one kept even if flat, e.g. for a blank image).
    """
    im = _as_pil(img)
    lo, hi = scale_range
    u = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    w, h = im.size
    scale = size * u / min(w, h)
    nw, nh = max(size, int(w * scale)), max(size, int(h * scale))
    off = _crop_offsets(rng, nw, nh, size)
    x = _crop_resize(im, scale, off, size, (w, h))
    for _ in range(FLAT_CROP_TRIES - 1):
        if _pixel_std(x) >= FLAT_CROP_STD:
            break
        x = _crop_resize(im, scale, _crop_offsets(rng, nw, nh, size), size, (w, h))
    return np.asarray(x) if as_uint8 else _to_float(x)


def color_jitter(x: np.ndarray, brightness: float = 0.0, saturation: float = 1.0, hue: float = 0.0) -> np.ndarray:
    """``tf.image.adjust_brightness`` -> ``adjust_saturation`` -> ``adjust_hue`` on [0, 1] RGB.

    Brightness adds ``brightness`` and clips to [0, 1]; saturation multiplies the HSV
    saturation (clipped to 1); hue adds ``hue`` (in turns) to the HSV hue. float32 in/out.
    """
    x = np.asarray(x, dtype=np.float32)
    p = np.moveaxis(x, -1, 0)
    if brightness:
        p = np.clip(p + np.float32(brightness), 0.0, 1.0)
    if saturation == 1.0 and hue == 0.0:
        return np.ascontiguousarray(np.moveaxis(p, 0, -1))
    p = np.ascontiguousarray(p)
    r, g, b = p
    v = np.maximum(np.maximum(r, g), b)
    c = v - np.minimum(np.minimum(r, g), b)
    inv_c = np.divide(np.float32(1.0), c, out=np.zeros_like(c), where=c > 0)
    h6 = np.where(v == r, (g - b) * inv_c, np.where(v == g, (b - r) * inv_c + 2.0, (r - g) * inv_c + 4.0))
    h6 += np.float32(6.0 * hue)
    h6 %= np.float32(6.0)  # hue in sixths of a turn, [0, 6)
    vs = np.minimum(c * np.float32(saturation), v)  # = v * min(s * factor, 1)
    out = np.empty((3,) + v.shape, np.float32)
    for i, n in enumerate((5.0, 3.0, 1.0)):  # hsv -> rgb: v - v s clip(min(k, 4 - k), 0, 1)
        k = h6 + np.float32(n)
        k -= np.float32(6.0) * (k >= 6.0)
        t = np.minimum(k, np.float32(4.0) - k)
        np.clip(t, 0.0, 1.0, out=t)
        t *= vs
        np.subtract(v, t, out=out[i])
    return np.ascontiguousarray(np.moveaxis(out, 0, -1))


#: The colour jitter that changes nothing: (brightness delta, saturation factor, hue delta).
IDENTITY_JITTER = (0.0, 1.0, 0.0)


def augment_style(img: Any, rng: np.random.Generator, size: int = 256,
                  resize_range: tuple[int, int] | None = (258, 456), strength: float = 1.0, *,
                  defer_jitter: bool = False, unsharp: tuple[float, int] | None = None
                  ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Magenta's style augmentation (see the module docstring), ranges scaled by ``strength``.

    Random draws, in order: brightness delta ``U(-0.8s, 0.8s)``, saturation factor
    ``U(1 - 0.5s, 1 + 0.5s)``, hue delta ``U(-0.2s, 0.2s)`` (at most 0.5), left-right and
    up-down flips (``p = 0.5`` each, only when ``s > 0``), smaller side ``L ~ U{lo..hi-1}``,
    crop position. Returns ``float32`` ``size x size x 3`` in [0, 1].

    ``defer_jitter``: return ``(crop, jitter)`` instead: the flipped crop as ``uint8`` and the
    ``float32[3]`` (brightness, saturation, hue) for :func:`color_jitter` or, in the training
    step, :func:`arbitrary_nst.device_augment.color_jitter` (:data:`IDENTITY_JITTER` when
    ``s <= 0``). Why: the jitter is ~60% of the host's work per style image (bench/data.py); on an
    accelerator it is a few elementwise ops next to the VGG16.

    ``unsharp``: ``(radius, percent)`` of an unsharp mask on the crop before the flips and the
    jitter (``data.style_unsharp``); it draws nothing from ``rng``.
    """
    lo, hi = resize_range if resize_range is not None else magenta_style_resize_range(size)
    if not size <= lo < hi:
        raise ValueError(f"resize_range must satisfy size <= lo < hi, got {(lo, hi)} for size {size}")
    s = float(strength)
    im = _as_pil(img)
    bright = float(rng.uniform(-0.8 * s, 0.8 * s))
    sat = float(rng.uniform(max(0.0, 1 - 0.5 * s), 1 + 0.5 * s))
    hue_max = min(0.2 * s, 0.5)
    hue = float(rng.uniform(-hue_max, hue_max))
    flips = rng.random(2) < 0.5
    if s <= 0:
        flips[:] = False
    side = int(rng.integers(lo, hi))
    w, h = im.size
    scale = side / min(w, h)
    nw, nh = max(size, int(w * scale)), max(size, int(h * scale))
    off = _crop_offsets(rng, nw, nh, size)
    crop = _crop_resize(im, scale, off, size)
    if unsharp is not None:
        crop = crop.filter(ImageFilter.UnsharpMask(radius=unsharp[0], percent=unsharp[1],
                                                   threshold=0))
    x = np.asarray(crop)
    if flips[0]:
        x = x[:, ::-1]
    if flips[1]:
        x = x[::-1]
    if defer_jitter:
        jitter = (bright, sat, hue) if s > 0 else IDENTITY_JITTER
        return np.ascontiguousarray(x), np.asarray(jitter, np.float32)
    x = _to_float(x)
    if s > 0:
        x = color_jitter(x, bright, sat, hue)
    return np.ascontiguousarray(x)


# ============================================================================================
# Sampling and the loader
# ============================================================================================


class EpochSampler:
    """Index of stream position ``p``: a pure function of ``(seed, stream, p)``.

    An epoch has ``L = sum(sizes)`` positions. Without weights it is the permutation
    ``np.random.default_rng([seed, epoch, stream]).permutation(L)``. With weights, part ``k``
    gets ``round(L * w_k / sum(w))`` slots (largest remainder), filled by repeating/truncating
    its own permutation (``default_rng([seed, epoch, stream, 1 + k])``), and the slots are
    shuffled with the epoch rng: the mixture follows the weights while every image of a part
    is seen before any is repeated.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float] | None, seed: int, stream: int):
        self.sizes = [int(n) for n in sizes]
        if not self.sizes or any(n < 1 for n in self.sizes):
            raise ConfigError(f"data: every source must have images, got sizes {self.sizes}")
        self.weights = None if weights is None else [float(w) for w in weights]
        if self.weights is not None and len(self.weights) != len(self.sizes):
            raise ConfigError(f"data: {len(self.weights)} weights for {len(self.sizes)} sources")
        if int(seed) < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        self.seed, self.stream = int(seed), int(stream)
        self.epoch_len = sum(self.sizes)
        self._offsets = np.cumsum([0] + self.sizes)
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def epoch(self, e: int) -> np.ndarray:
        with self._lock:
            perm = self._cache.get(e)
            if perm is None:
                perm = self._make(e)
                self._cache[e] = perm
                while len(self._cache) > 3:
                    self._cache.popitem(last=False)
            return perm

    def _make(self, e: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, e, self.stream])
        if self.weights is None:
            return rng.permutation(self.epoch_len)
        w = np.asarray(self.weights, np.float64)
        quota = self.epoch_len * w / w.sum()
        counts = np.floor(quota).astype(np.int64)
        rest = self.epoch_len - int(counts.sum())
        if rest:
            counts[np.argsort(-(quota - counts), kind="stable")[:rest]] += 1
        slots = []
        for k, (n, cnt) in enumerate(zip(self.sizes, counts)):
            if cnt == 0:
                continue
            rk = np.random.default_rng([self.seed, e, self.stream, 1 + k])
            reps = -(-int(cnt) // n)
            idx = np.concatenate([rk.permutation(n) for _ in range(reps)])[:cnt]
            slots.append(idx + self._offsets[k])
        allv = np.concatenate(slots)
        rng.shuffle(allv)
        return allv

    def index(self, position: int) -> int:
        e, r = divmod(int(position), self.epoch_len)
        return int(self.epoch(e)[r])

    def indices(self, start: int, count: int) -> np.ndarray:
        return np.array([self.index(p) for p in range(start, start + count)], dtype=np.int64)


class Loader:
    """Batches ``{"content": f32[B,H,W,3], "style": f32[B,S,S,3]}`` in [0, 1], prefetched.

    With ``device_augment`` the batches are ``{"content": u8[B,H,W,3], "style": u8[B,S,S,3]}``
    plus ``"style_jitter": f32[B,3]`` (absent when ``augment_strength`` is 0): the same crops
    before the conversion to float and the style colour jitter, which
    :func:`arbitrary_nst.device_augment.finish_batch` does inside the jitted training step.
    The host then does only decoding, resizing and flips (Pillow), about half the work per
    pair, and a quarter of the bytes go to the device.

    ``next(loader)`` returns batch ``loader.step`` and advances it. Each batch is a pure
    function of ``(seed, step)`` (see the module docstring); :meth:`batch` computes one
    synchronously. ``num_workers`` threads (0 = in the caller) decode and augment single
    images; up to ``prefetch`` batches are in flight. Pillow releases the GIL while decoding
    and resizing, so threads scale on several cores.
    """

    def __init__(self, content: DataSource, style: DataSource, *, batch_size: int, seed: int,
                 start_step: int = 0, num_workers: int = 2, prefetch: int = 4, image_size: int = 256,
                 style_size: int = 256, style_resize_range: tuple[int, int] | None = None,
                 content_scale_range: tuple[float, float] = (1.0, 1.15), augment_strength: float = 1.0,
                 content_weights: Sequence[float] | None = None, style_weights: Sequence[float] | None = None,
                 device_augment: bool = False, style_unsharp: tuple[float, int] | None = None):
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if int(start_step) < 0:
            raise ConfigError(f"start_step must be >= 0, got {start_step}")
        self.content, self.style = content, style
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.step = int(start_step)
        self.image_size, self.style_size = int(image_size), int(style_size)
        self.style_resize_range = _resize_range(style_resize_range, self.style_size)
        self.content_scale_range = tuple(float(x) for x in content_scale_range)
        self.augment_strength = float(augment_strength)
        self.device_augment = bool(device_augment)
        self.style_unsharp = _check_unsharp(style_unsharp)
        cw = content_weights if content_weights is not None else getattr(content, "weights", None)
        sw = style_weights if style_weights is not None else getattr(style, "weights", None)
        self._samplers = (EpochSampler(content.part_sizes, cw, self.seed, CONTENT),
                          EpochSampler(style.part_sizes, sw, self.seed, STYLE))
        self.num_workers = max(0, int(num_workers))
        self.prefetch = max(1, int(prefetch))
        self._pool = (concurrent.futures.ThreadPoolExecutor(self.num_workers, thread_name_prefix="nst-data")
                      if self.num_workers > 0 else None)
        self._pending: collections.deque = collections.deque()
        self._next_submit = self.step
        self._closed = False
        self._stats_lock = threading.Lock()
        self._busy = 0.0
        self._images = 0
        self._wait = 0.0
        self._batches = 0
        self._t_first: float | None = None

    # --- the pure part ----------------------------------------------------------------------

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Content and style indices of batch ``step``."""
        p = int(step) * self.batch_size
        return self._samplers[0].indices(p, self.batch_size), self._samplers[1].indices(p, self.batch_size)

    def example(self, step: int, i: int, stream: int, index: int) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Example ``i`` of batch ``step`` for ``stream`` (0 content, 1 style), image ``index``
        (with ``device_augment``: uint8, and a style comes as ``(crop, jitter)``)."""
        rng = np.random.default_rng([self.seed, int(step), int(i), int(stream)])
        src = self.content if stream == CONTENT else self.style
        raw = self.device_augment
        try:
            if stream == CONTENT:
                return augment_content(src.open(index), rng, self.image_size, self.content_scale_range,
                                       as_uint8=raw)
            return augment_style(src.open(index), rng, self.style_size, self.style_resize_range,
                                 self.augment_strength, defer_jitter=raw,
                                 unsharp=self.style_unsharp)
        except (OSError, SyntaxError, Image.DecompressionBombError) as e:  # Pillow's decode errors
            raise ImageError(src.path(index), f"cannot decode stored image: {_one_line(e)}") from None

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """Batch ``step``, computed synchronously in the calling thread."""
        ci, si = self.indices(step)
        out = self._alloc()
        for i in range(self.batch_size):
            self._put(out, i, CONTENT, self.example(step, i, CONTENT, ci[i]))
            self._put(out, i, STYLE, self.example(step, i, STYLE, si[i]))
        return out

    def _alloc(self) -> dict[str, np.ndarray]:
        b = self.batch_size
        dt = np.uint8 if self.device_augment else np.float32
        out = {"content": np.empty((b, self.image_size, self.image_size, 3), dt),
               "style": np.empty((b, self.style_size, self.style_size, 3), dt)}
        if self.device_augment and self.augment_strength > 0:
            out["style_jitter"] = np.empty((b, 3), np.float32)
        return out

    @staticmethod
    def _put(out: dict[str, np.ndarray], i: int, stream: int, x: Any) -> None:
        if stream == CONTENT:
            out["content"][i] = x
        elif isinstance(x, tuple):
            out["style"][i] = x[0]
            if "style_jitter" in out:
                out["style_jitter"][i] = x[1]
        else:
            out["style"][i] = x

    # --- the pipelined iterator -------------------------------------------------------------

    def _work(self, out: dict[str, np.ndarray], i: int, step: int, stream: int, index: int) -> None:
        t0 = time.perf_counter()
        self._put(out, i, stream, self.example(step, i, stream, index))
        dt = time.perf_counter() - t0
        with self._stats_lock:
            self._busy += dt

    def _submit(self) -> None:
        assert self._pool is not None
        while len(self._pending) < self.prefetch:
            step = self._next_submit
            ci, si = self.indices(step)
            out = self._alloc()
            futs = []
            for i in range(self.batch_size):
                futs.append(self._pool.submit(self._work, out, i, step, CONTENT, int(ci[i])))
                futs.append(self._pool.submit(self._work, out, i, step, STYLE, int(si[i])))
            self._pending.append((step, out, futs))
            self._next_submit += 1

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._closed:
            raise StopIteration
        if self._t_first is None:
            self._t_first = time.perf_counter()
        t0 = time.perf_counter()
        if self._pool is None:
            out = self.batch(self.step)
            with self._stats_lock:
                self._busy += time.perf_counter() - t0
        else:
            self._submit()
            step, out, futs = self._pending.popleft()
            assert step == self.step
            for f in futs:
                f.result()  # re-raises a worker's exception (e.g. an unreadable record)
            self._submit()
        with self._stats_lock:
            self._wait += time.perf_counter() - t0
            self._batches += 1
            self._images += 2 * self.batch_size
        self.step += 1
        return out

    def stats(self) -> dict[str, float]:
        """Throughput so far.

        ``images`` counts content + style images; ``images_per_second`` is delivered
        images over wall time since the first ``next``; ``wait_s`` is the time ``next``
        blocked (the loader stalling its consumer); ``worker_busy_s`` the summed per-image
        processing time.
        """
        with self._stats_lock:
            wall = (time.perf_counter() - self._t_first) if self._t_first else 0.0
            return {
                "batches": self._batches,
                "images": self._images,
                "wall_s": wall,
                "wait_s": self._wait,
                "worker_busy_s": self._busy,
                "images_per_second": self._images / wall if wall > 0 else 0.0,
                "ms_per_image_per_worker": 1e3 * self._busy / max(1, self._images),
            }

    @property
    def images_per_second(self) -> float:
        return self.stats()["images_per_second"]

    def close(self) -> None:
        """Stop the workers (pending work is cancelled). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for _, _, futs in self._pending:
            for f in futs:
                f.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def make_loader(data_cfg: Any = None, *, batch_size: int, seed: int, start_step: int = 0,
                num_workers: int | None = None, prefetch: int | None = None,
                sources: Mapping[str, DataSource] | None = None) -> Loader:
    """A :class:`Loader` for ``data_cfg`` (sources from :func:`prepare` unless given).

    ``num_workers`` / ``prefetch`` default to the config's (``None`` workers =
    ``min(8, os.cpu_count())``). Resume with ``start_step = <next step to train>``: the order
    continues exactly (batches do not depend on the worker count).
    """
    c = _cfg(data_cfg)
    srcs = sources if sources is not None else prepare(data_cfg)
    if num_workers is None:
        num_workers = c["num_workers"]
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    if prefetch is None:
        prefetch = int(c["prefetch"])
    return Loader(
        srcs["content"], srcs["style"], batch_size=batch_size, seed=seed, start_step=start_step,
        num_workers=num_workers, prefetch=prefetch, image_size=c["image_size"], style_size=c["style_size"],
        style_resize_range=c["style_resize_range"], content_scale_range=c["content_scale_range"],
        augment_strength=c["augment_strength"], device_augment=c["device_augment"],
        style_unsharp=c["style_unsharp"],
    )


# ============================================================================================
# Export a compact subset (NPZ) for machines without TFDS
# ============================================================================================


def _export_target(out_path: str | os.PathLike[str], overwrite: bool,
                   source: str | None = None) -> Path:
    """Check an export destination before any image is read (one-line ConfigErrors), also
    that it is not the ``npz:`` file of ``source`` (the data source it reads)."""
    check_named(os.fspath(out_path), "--out (out_path)", "the .npz file to write")
    p = Path(os.path.expanduser(os.fspath(out_path)))
    if p.suffix != ".npz":
        raise ConfigError(f"{p}: the export file name must end in .npz")
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory; give a file name ending in .npz")
    if p.exists() and not overwrite:
        raise ConfigError(f"{p}: exists; pass --overwrite (overwrite=True) to replace it")
    parent = next((q for q in p.parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{p}: cannot write: {parent} is not a directory")
    if source is not None and str(source).startswith("npz:"):
        _not_the_input(p, str(source)[4:])
    return p


def _not_the_input(out_path: str | os.PathLike[str], npz_path: str) -> None:
    """Refuse an export over the ``npz:`` file it reads (``--overwrite`` replaced it with the
    subset: nothing overwrites an input)."""
    out = os.path.expanduser(os.fspath(out_path))
    src = os.path.expanduser(npz_path)
    same = os.path.realpath(out) == os.path.realpath(src)
    try:
        same = same or os.path.samefile(out, src)
    except OSError:  # (one of them does not exist: not the same file)
        pass
    if same:
        raise ConfigError(f"{out_path}: is the npz: file this export reads; write the subset "
                          "to another file")


def export_arrays(data_cfg: Any, out_path: str | os.PathLike[str], n_content: int, n_style: int,
                  size: int = 288, *, seed: int = 0, quality: int = 90, max_mb: float = 45.0,
                  sources: Mapping[str, DataSource] | None = None,
                  overwrite: bool = True) -> dict[str, Any]:
    """Write ``n_content`` + ``n_style`` images as JPEG bytes in one ``.npz`` (uint8 arrays).

    Images are chosen by the first epoch of the (weighted) samplers, so the subset follows
    ``*_dir_weights``; stored RGB JPEGs already within the size limits are copied as they are,
    others are downscaled so the smaller side is at most ``size`` (longer side at most
    ``2 * size``, centre-cropped) and JPEG-encoded at ``quality``. Read it back with
    ``source='npz:<out_path>'`` (NumPy + Pillow only). The file is written atomically and
    refused (``ConfigError``) if larger than ``max_mb``, or (checked first) if ``out_path``
    exists and not ``overwrite``. It contains training images: never commit or redistribute it.
    Returns a summary dict.
    """
    # (checked before the preparation, which may take long: a count of -5 was found after it,
    # and a NaN max_mb turned the cap off)
    n_content = check_count(n_content, "n_content (--n-content)", 1, optional=False)
    n_style = check_count(n_style, "n_style (--n-style)", 1, optional=False)
    size = check_count(size, "size (--size)", 32, optional=False)
    quality = check_count(quality, "quality", 1, 100, optional=False)
    if (not isinstance(max_mb, numbers.Real) or isinstance(max_mb, bool)
            or not (math.isfinite(max_mb) and max_mb > 0)):
        raise ConfigError(f"max_mb (--max-mb) must be a finite number > 0, got {max_mb!r}")
    c = _cfg(data_cfg)
    p = _export_target(out_path, overwrite, c["source"])
    srcs = sources if sources is not None else prepare(data_cfg)
    out: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {"path": os.fspath(out_path), "size": int(size)}
    for role, n, stream in (("content", n_content, CONTENT), ("style", n_style, STYLE)):
        s = srcs[role]
        n = min(int(n), len(s))
        if n < 1:
            raise ConfigError(f"no {role} images to export")
        weights = s.weights if isinstance(s, MixtureSource) else None
        idx = EpochSampler(s.part_sizes, weights, seed, stream).indices(0, n)
        blobs, paths = [], []
        for i in idx:
            src_im = s.open(int(i))
            w, h = src_im.size
            if (src_im.format == "JPEG" and src_im.mode == "RGB" and min(w, h) <= size
                    and max(w, h) <= 2 * size and (raw := s.raw_bytes(int(i))) is not None):
                blobs.append(np.frombuffer(raw, np.uint8))  # small enough: keep the stored JPEG
                paths.append(s.path(int(i)))
                continue
            im = _to_rgb(src_im)
            k = min(1.0, size / min(w, h))
            if k < 1.0:
                im = im.resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.LANCZOS, reducing_gap=3.0)
            w, h = im.size
            if max(w, h) > 2 * size:
                cw, ch = min(w, 2 * size), min(h, 2 * size)
                im = im.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=int(quality))
            blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
            paths.append(s.path(int(i)))
        out[f"{role}_jpeg"] = np.concatenate(blobs)
        out[f"{role}_offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        out[f"{role}_paths"] = np.array(paths, dtype=str)
        summary[f"n_{role}"] = n
        # (weighted draws repeat images of the heavier folders and leave out some of the
        # others': "27 style images" were 19 distinct ones)
        summary[f"n_{role}_distinct"] = len({int(i) for i in idx})
    out["info"] = np.array(json.dumps({"format": 1, "size": int(size), "quality": int(quality), "seed": int(seed)}))
    buf = io.BytesIO()
    np.savez(buf, **out)
    mb = buf.getbuffer().nbytes / 1e6
    if mb > max_mb:
        raise ConfigError(f"{p}: export would be {mb:.1f} MB > {max_mb} MB; export fewer or smaller images")
    write_atomically(p, lambda f: f.write(buf.getbuffer()))
    summary["megabytes"] = round(mb, 2)
    return summary


# ============================================================================================
# CLI: python -m arbitrary_nst.data prepare|export
# ============================================================================================


def _not_skip_lines(record: logging.LogRecord) -> bool:
    """Logging filter of the CLI: its table lists the skipped files, not also the warnings."""
    return not str(record.msg).startswith(("skipped ", "... and "))


def _cli_cfg(a: argparse.Namespace) -> dict[str, Any]:
    d: dict[str, Any] = {"content_dirs": a.content_dir or [], "style_dirs": a.style_dir or []}
    if a.style_weight:
        d["style_dir_weights"] = a.style_weight
    if a.data_dir:
        d["data_dir"] = a.data_dir
    if a.max_source_side is not None:  # 0 is an error (checked with the config), not "unset"
        d["max_source_side"] = a.max_source_side
    if a.max_pixels is not None:
        d["max_pixels"] = a.max_pixels
    if a.workers is not None:
        if a.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {a.workers}")
        d["prepare_workers"] = a.workers
    if a.source:
        d["source"] = a.source
    if a.allow_eval_dirs:
        d["allow_eval_dirs"] = True
    return d


def _fit_name(name: str, width: int) -> str:
    """``name`` in ``width`` characters, cut in the middle: a dataset's name ends in its
    folders' fingerprint (``paintings-20b60ef5c4b8``), which a cut at the end dropped."""
    if len(name) <= width:
        return name
    tail = width // 2
    return f"{name[:width - tail - 3]}...{name[-tail:]}"


def main(argv: Sequence[str] | None = None) -> int:
    printable_stdout()
    ap = UsageParser(prog="python -m arbitrary_nst.data", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", required=True, parser_class=UsageParser)
    helps = {"prepare": "prepare image folders as TFDS array_record datasets",
             "export": "write a compact .npz subset (for machines without TFDS)"}
    for name in ("prepare", "export"):
        p = sub.add_parser(name, help=helps[name], description=helps[name][0].upper() + helps[name][1:] + ".")
        # one or more values, and repeatable: `--style-dir a b` = `--style-dir a --style-dir b`
        p.add_argument("--content-dir", action="extend", nargs="+", metavar="DIR",
                       help="content image folder(s) (or tfds:<name>)")
        p.add_argument("--style-dir", action="extend", nargs="+", metavar="DIR",
                       help="style image folder(s) (or tfds:<name>)")
        p.add_argument("--style-weight", action="extend", nargs="+", type=float, metavar="W",
                       help="sampling weight per --style-dir")
        p.add_argument("--data-dir", help=f"prepared data location (default {DEFAULT_DATA_DIR}, or tfds under "
                            f"${_weights.CACHE_ENV} where that is set)")
        p.add_argument("--max-source-side", type=int, help="cap on the stored smaller side (512)")
        p.add_argument("--workers", type=int, help="decode threads (2)")
        p.add_argument("--max-pixels", type=int, metavar="N",
                       help="skip image files with more pixels (64000000: a decompression-bomb "
                            "guard; larger scans are downscaled like the rest)")
        p.add_argument("--source", help="folder (default), synthetic, tfds:<name>, npz:<path>")
        p.add_argument("--allow-eval-dirs", action="store_true",
                       help="take a folder with a path component named 'eval' (refused: "
                            "evaluation images must never be trained on)")
        p.add_argument("--no-progress", action="store_true",
                       help="no progress bar while folders are read and prepared")
        if name == "export":
            p.add_argument("--out", required=True, help="output .npz")
            p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
            p.add_argument("--n-content", type=count_arg(1), default=800,
                           help="content images (800)")
            p.add_argument("--n-style", type=count_arg(1), default=1200,
                           help="style images (1200)")
            p.add_argument("--size", type=count_arg(32), default=288,
                           help="max smaller side of exported images (288)")
            p.add_argument("--max-mb", type=positive_float_arg, default=45.0,
                           help="refuse a larger file (45 MB)")
    given = sys.argv[1:] if argv is None else list(argv)
    if given and given[0] in helps:  # errors after the command point to its own --help
        ap.help_hint = f"{ap.prog} {given[0]}"
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    # the table below lists every skipped file: not also the builder's warnings
    if _not_skip_lines not in log.filters:
        log.addFilter(_not_skip_lines)
    try:
        if a.cmd == "export":
            _export_target(a.out, a.overwrite, a.source)  # before the (long) preparation
        cfg = _cli_cfg(a)
        source = a.source or "folder"
        if source == "synthetic" or source.startswith("npz:"):  # (they were ignored; prepare
            # said "1024 prepared now" of images it never prepares)
            given = [f for f, v in (("--content-dir", a.content_dir), ("--style-dir", a.style_dir),
                                    ("--style-weight", a.style_weight)) if v]
            if given:
                raise ConfigError(f"--source {source} reads no folders: leave out "
                                  f"{' and '.join(given)}, or use --source folder")
            if a.cmd == "prepare":
                raise ConfigError(f"--source {source}: nothing to prepare (its images are "
                                  "made or read as they are)")
        if a.style_weight and not a.style_dir:  # (ignored without a word)
            raise ConfigError("--style-weight needs --style-dir: one weight per style folder")
        # `prepare` with only --content-dir (or only --style-dir) prepares that folder alone
        given_roles = [r for r, dirs in (("content", a.content_dir), ("style", a.style_dir))
                       if dirs]
        if (a.source or "folder") == "folder":  # (the config's "content_dirs is empty" said less)
            if a.cmd == "prepare" and not given_roles:
                raise ConfigError("give --content-dir and/or --style-dir: the folders to prepare")
            if a.cmd == "export" and len(given_roles) < 2:
                got = " ".join(f"--{r}-dir" for r in given_roles) or "neither"
                raise ConfigError(f"export needs --content-dir and --style-dir (got {got})")
        t0 = time.perf_counter()
        try:
            import tensorflow_datasets as tfds

            tfds.disable_progress_bar()  # our own per-folder bar instead
        except ImportError:
            pass
        roles = given_roles if a.cmd == "prepare" and given_roles else ("content", "style")
        srcs = prepare(cfg, progress=not a.no_progress, roles=roles)
        rows = reports(srcs)
        print(f"{'role':8} {'dataset':40} {'prepared':>9} {'skipped':>8} {'reused':>7} {'seconds':>8}")
        for r in rows:
            print(f"{r['role']:8} {_fit_name(r['name'], 40):40} {r.get('num_prepared', 0):9d} "
                  f"{r.get('num_skipped', 0):8d} {str(r.get('reused', '-')):>7} "
                  f"{r.get('seconds', 0):8.1f}")
        for r in rows:
            for s in r.get("skipped", []):
                print(one_line(f"skipped {s.get('file', s['path'])}: {s['reason']}"))
        # one folder in both roles is one dataset (prepared by the first row and found by the
        # second): its images are counted once ("10 images" for 5), as prepared now
        now = {r.get("data_dir") or r["name"] for r in rows if r.get("reused") is False}
        distinct: dict[str, Mapping[str, Any]] = {}
        for r in rows:
            distinct.setdefault(r.get("data_dir") or r["name"], r)
        tot_ok = sum(r.get("num_prepared", 0) for r in distinct.values())
        earlier = sum(r.get("num_prepared", 0) for k, r in distinct.items()
                      if r.get("reused") is True and k not in now)
        tot_sk = sum(r.get("num_skipped", 0) for r in distinct.values())
        other = _ignored_note(sum(r.get("num_ignored_non_image", 0)
                                  for r in distinct.values()))
        # (a rerun said "4564 prepared ... in 0.4 s" of datasets it only found on disk)
        print(f"total: {tot_ok} images ({tot_ok - earlier} prepared now, {earlier} prepared "
              f"earlier), {tot_sk} skipped{other} in {time.perf_counter() - t0:.1f} s")
        if a.cmd == "export":
            s = export_arrays(cfg, a.out, a.n_content, a.n_style, a.size, max_mb=a.max_mb, sources=srcs,
                              overwrite=a.overwrite)
            counts = []
            for role in ("content", "style"):
                n, distinct = s[f"n_{role}"], s[f"n_{role}_distinct"]
                counts.append(f"{n} {role}" + (f" ({distinct} distinct: the folder weights "
                                               "repeat some)" if distinct < n else ""))
            print(f"wrote {s['path']}: {' + '.join(counts)} images, {s['megabytes']} MB")
    except NSTError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted (the unfinished preparation is not used; run the command "
              "again to prepare it)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    from .errors import run_command  # (a Ctrl-C while JAX loads was lost without it)

    sys.exit(run_command(main))
