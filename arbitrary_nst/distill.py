"""Distil test-time refinement into the style predictor ("amortize the refinement").

Measured (RESULTS.md, session 5): for a fixed transfer network and gamma/beta heads, a few Adam
steps on the 100-d embedding alone (:mod:`arbitrary_nst.refine`) lower a style's Gram loss by
~40-45 %, and an embedding refined on one set of photos lowers it as much on *other* photos
(5.46e5 -> 3.15e5 on 4 held-out photos x 3 eval paintings). So the better embedding is a
property of the style, which the predictor could output, but joint training does not get there
(training only the predictor's MLP with the training loss for 600 steps made the style loss
15 % worse on the eval paintings). This module gives the MLP a direct target instead:

1. **Oracle** (:func:`oracle_batch`): for training paintings (never the eval set), the style's
   working image (shorter side 256, centre square: what the predictor sees at inference) gives
   the predictor's input statistics ``x`` and the Gram targets; the predicted embedding ``e0``
   is refined for ``steps`` Adam steps on a random training-photo crop (or several, averaged),
   giving ``e*``. Batched over styles, one compiled :func:`refine.refine_embeddings` call.
2. **Fit** (:func:`fit_embedding_mlp`): the style -> embedding MLP (``hidden``, ``bottleneck``)
   is fitted to ``e*`` by mean squared error from its current weights, with a held-out part of
   the styles for early stopping; the heads and the transfer network are untouched, so the
   refined embeddings keep their meaning.

``python -m arbitrary_nst.distill --out workdirs/distill1 --num-styles 1000`` runs both (the
oracle in resumable chunks under ``<out>/oracle/``) and writes ``<out>/model.safetensors`` and
``<out>/distill.json``. ``--content-seeds 0 1 2`` refines the same styles on three sets of photo
crops (``<out>/oracle``, ``oracle_c1``, ``oracle_c2``) and fits their mean: the part of a refined
embedding that is specific to its one crop is noise for a style-only predictor. Measured
(RESULTS.md, session 6): that part is small (13% of the correction's energy; two crops of the
same style give corrections with cosine 0.85), and fitting two crops' mean instead of one crop
left the eval unchanged, so one crop per style is the cost-effective default.

``--target conditioning`` distils fitted styles (:mod:`arbitrary_nst.fit_style`) instead: the
oracle fits each training style's whole gamma/beta (``--steps`` Adam steps, each on
``--contents-per-style`` fresh photo crops), and a reduced-rank ridge map from the predictor's
statistics to the fitted-minus-predicted gamma/beta (:func:`fit_conditioning_correction`,
``--ridge`` and ``--rank`` chosen on held-out styles) is folded into the predictor as extra
embedding dimensions (:func:`fold_correction`; the old ones are unchanged). The reason: the
fits leave the 100-d subspace the heads can reach (section below).
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from . import fit_style, refine
from .data import FLAT_CROP_STD, FLAT_CROP_TRIES
from .errors import (MAX_SEED, ConfigError, NSTError, UsageParser, check_jax_backend,
                     check_named, one_line, printable_stdout)
from .files import make_dir, removing_new_empty_dirs, write_atomically
from .images import channel_std
from .models.predictor import pooled_statistics
from .progress import bar as progress_bar

#: Working size of style images (the Stylizer's default, Magenta's 256).
STYLE_SIZE = 256
#: Content crops: side, and the range of the photo's shorter side before cropping. At eval
#: (256 px longer side) a photo's shorter side is ~170-256; 128 crops keep the oracle 4x cheaper
#: than whole 256 px photos.
CONTENT_CROP = 128
CONTENT_SHORT_RANGE = (176, 256)
#: What the oracle optimizes and the predictor is fitted to: the embedding (refined, session 5)
#: or the whole gamma/beta conditioning (fitted, then folded in as extra dimensions).
TARGETS = ("embedding", "conditioning")
#: ``--target conditioning``: the correction's ranks and ridge penalties chosen from on
#: held-out styles.
DEFAULT_RANKS = (16, 32, 64)
DEFAULT_RIDGES = (10.0, 100.0, 1000.0)


def _resize_short(im: Image.Image, short: int) -> Image.Image:
    w, h = im.size
    s = short / min(w, h)
    return im.resize((max(short, round(w * s)), max(short, round(h * s))),
                     Image.Resampling.BICUBIC)


def style_images(src, indices, size: int = STYLE_SIZE) -> np.ndarray:
    """``[N, size, size, 3]`` float in [0, 1]: shorter side -> ``size``, centre square."""
    out = np.empty((len(indices), size, size, 3), np.float32)
    for k, i in enumerate(indices):
        im = _resize_short(Image.fromarray(src.get(int(i))), size)
        w, h = im.size
        l, t = (w - size) // 2, (h - size) // 2
        out[k] = np.asarray(im.crop((l, t, l + size, t + size)), np.float32) / 255.0
    return out


def content_crops(src, rng: np.random.Generator, n: int, crop: int = CONTENT_CROP,
                  short_range: tuple[int, int] = CONTENT_SHORT_RANGE) -> np.ndarray:
    """``[n, crop, crop, 3]`` random crops of random photos resized to a random shorter side
    in ``short_range``; near-flat crops are re-drawn (they carry no content signal)."""
    out = np.empty((n, crop, crop, 3), np.float32)
    for k in range(n):
        for _ in range(FLAT_CROP_TRIES):
            im = _resize_short(Image.fromarray(src.get(int(rng.integers(len(src))))),
                               int(rng.integers(short_range[0], short_range[1] + 1)))
            w, h = im.size
            l, t = int(rng.integers(w - crop + 1)), int(rng.integers(h - crop + 1))
            x = np.asarray(im.crop((l, t, l + crop, t + crop)), np.float32) / 255.0
            if channel_std(x) >= FLAT_CROP_STD:
                break
        out[k] = x
    return out


def style_statistics(model, styles: np.ndarray) -> np.ndarray:
    """The predictor's MLP input for ``styles``: ``[N, F]`` pooled VGG statistics."""
    p = model.predictor
    feats = p.style_features(jnp.asarray(styles, jnp.float32))
    return np.asarray(pooled_statistics(feats, p.taps, norm=p.feature_norm), np.float32)


def _predicted(model, styles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The predictor's input statistics ``x [N, F]`` and embeddings ``e0 [N, D]`` (= embed())."""
    x = style_statistics(model, styles)
    return x, np.asarray(_mlp_apply(_mlp_params(model), jnp.asarray(x)), np.float32)


def oracle_batch(model, styles: np.ndarray, contents: np.ndarray, *, steps: int = 12,
                 learning_rate: float = refine.DEFAULT_LEARNING_RATE,
                 style_weight: float = refine.DEFAULT_STYLE_WEIGHT) -> dict[str, np.ndarray]:
    """Refined embeddings for ``N`` styles, each on its ``K`` contents.

    Args:
      styles: ``[N, S, S, 3]`` working images; contents: ``[N, K, h, w, 3]``.
    Returns ``x [N, F]`` (MLP input), ``e0 [N, D]`` (predicted), ``e_star [N, D]`` (refined,
    the mean over the K contents) and ``loss [N, 2]`` (mean training loss before / after).
    """
    styles = np.asarray(styles, np.float32)
    contents = np.asarray(contents, np.float32)
    if contents.ndim != 5 or contents.shape[0] != styles.shape[0]:
        raise ConfigError(f"contents must be [N, K, h, w, 3] with N = {styles.shape[0]}, "
                          f"got {contents.shape}")
    n, k = contents.shape[:2]
    x, e0 = _predicted(model, styles)
    which = np.repeat(np.eye(n, dtype=np.float32), k, axis=0)  # content j -> its own style
    e, hist = refine.refine_embeddings(
        model, contents.reshape((n * k,) + contents.shape[2:]), styles, which,
        np.repeat(e0, k, axis=0), steps=steps, learning_rate=learning_rate,
        style_weight=style_weight)
    loss = np.stack([hist[0], hist[-1]], axis=-1).reshape(n, k, 2).mean(axis=1)
    return {"x": x, "e0": e0, "e_star": e.reshape(n, k, -1).mean(axis=1), "loss": loss}


# ------------------------------------------------------------------------------------------------
# Fitting the MLP


def _mlp_params(model) -> dict[str, Any]:
    p = model.predictor
    out = {"bottleneck": {"kernel": p.bottleneck.kernel[...], "bias": p.bottleneck.bias[...]}}
    if p.hidden is not None:
        out["hidden"] = {"kernel": p.hidden.kernel[...], "bias": p.hidden.bias[...]}
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), out)


def _mlp_apply(params, x):
    if "hidden" in params:
        x = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    return x @ params["bottleneck"]["kernel"] + params["bottleneck"]["bias"]


def _set_mlp_params(model, params) -> None:
    p = model.predictor
    for name, layer in params.items():
        mod = getattr(p, name)
        mod.kernel[...] = layer["kernel"]
        mod.bias[...] = layer["bias"]


#: The fewest styles each target's fit takes (it holds some out to choose and check).
MIN_STYLES = {"embedding": 4, "conditioning": 5}


def fit_embedding_mlp(model, x: np.ndarray, target: np.ndarray, *, val_fraction: float = 0.1,
                      steps: int = 3000, learning_rate: float = 3e-4, weight_decay: float = 0.0,
                      batch_size: int = 128, eval_every: int = 50, seed: int = 0
                      ) -> dict[str, Any]:
    """Fit the predictor's MLP (in place) to ``target`` embeddings by mean squared error.

    Starts from the current weights; AdamW; keeps the weights with the lowest held-out error
    (``val_fraction`` of the styles, chosen with ``seed``). Returns a report: the held-out
    error of the starting MLP and of the fitted one, and ``explained`` = 1 - fitted / start
    on the held-out styles (1: reproduces the oracle; 0: no better than before).
    """
    x = np.asarray(x, np.float32)
    target = np.asarray(target, np.float32)
    if (x.ndim != 2 or target.ndim != 2 or len(x) != len(target)
            or len(x) < MIN_STYLES["embedding"]):
        raise ConfigError(f"fit: x [N, F] and target [N, D] with N >= 4 needed, got "
                          f"{x.shape}, {target.shape}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    n_val = max(1, int(round(val_fraction * len(x))))
    val, tr = perm[:n_val], perm[n_val:]
    params = _mlp_params(model)
    opt = optax.adamw(learning_rate, weight_decay=weight_decay)
    state = opt.init(params)

    def mse(p, xb, tb):
        return jnp.mean(jnp.sum(jnp.square(_mlp_apply(p, xb) - tb), axis=-1))

    @jax.jit
    def step(p, s, xb, tb):
        l, g = jax.value_and_grad(mse)(p, xb, tb)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, l

    mse_jit = jax.jit(mse)
    xv, tv = jnp.asarray(x[val]), jnp.asarray(target[val])
    start_val = float(mse_jit(params, xv, tv))
    start_train = float(mse_jit(params, jnp.asarray(x[tr]), jnp.asarray(target[tr])))
    best, best_val, best_step, curve = params, start_val, 0, []
    bs = min(int(batch_size), len(tr))
    for i in range(1, int(steps) + 1):
        b = tr[rng.integers(len(tr), size=bs)]
        params, state, _ = step(params, state, jnp.asarray(x[b]), jnp.asarray(target[b]))
        if i % eval_every == 0 or i == steps:
            v = float(mse_jit(params, xv, tv))
            curve.append((i, v))
            if v < best_val:
                best, best_val, best_step = params, v, i
    _set_mlp_params(model, best)
    return {"n_train": int(len(tr)), "n_val": int(n_val), "start_val_mse": start_val,
            "start_train_mse": start_train, "val_mse": best_val, "best_step": best_step,
            "train_mse": float(mse_jit(best, jnp.asarray(x[tr]), jnp.asarray(target[tr]))),
            "explained": 1.0 - best_val / start_val if start_val > 0 else 0.0,
            "curve": curve}


# ------------------------------------------------------------------------------------------------
# Fitted conditionings as targets (gamma/beta, not the embedding)
#
# An embedding can only reach the 100-d affine subspace of gamma/beta that the heads span. The
# fitted conditionings of fit_style leave it: on v7's fits of 12 eval paintings only 13% of the
# offset from the prediction lies in the heads' span (a random direction: 7%), and the in-span
# part alone gives 5% of the fits' 60% lower style loss (RESULTS.md, session 11). So this target
# adds dimensions: a linear, reduced-rank map from the predictor's statistics to a gamma/beta
# correction, folded into the predictor as ``rank`` extra embedding dimensions.


def fit_oracle_batch(model, styles: np.ndarray, draw_photos, *, steps: int = 40,
                     learning_rate: float = 0.02,
                     style_weight: float = refine.DEFAULT_STYLE_WEIGHT) -> dict[str, np.ndarray]:
    """Fitted conditionings for ``N`` styles (:func:`fit_style.fit_conditionings`).

    ``draw_photos() -> [N, K, h, w, 3]`` gives each style its photos for a step. Returns ``x
    [N, F]``, ``e0 [N, D]``, ``c0 [N, G]`` (predicted conditioning), ``c [N, G]`` (fitted) and
    ``loss [N, 2]`` (the fit's loss on the first and on the last step's photos)."""
    styles = np.asarray(styles, np.float32)
    x, e0 = _predicted(model, styles)
    c0 = np.asarray(fit_style.predicted_conditioning(model, jnp.asarray(e0)), np.float32)
    c, _, hist = fit_style.fit_conditionings(model, styles, e0, draw_photos, steps=steps,
                                             learning_rate=learning_rate,
                                             style_weight=style_weight)
    return {"x": x, "e0": e0, "c0": c0, "c": c, "loss": np.stack([hist[0], hist[-1]], -1)}


class ConditioningCorrection:
    """``delta(x) = (x @ kernel + bias) @ basis + offset``: a rank-``r`` linear map from the
    predictor's statistics ``x [.., F]`` to a gamma/beta correction ``[.., G]``."""

    def __init__(self, kernel, bias, basis, offset):
        self.kernel = np.asarray(kernel, np.float32)   # [F, r]
        self.bias = np.asarray(bias, np.float32)       # [r]
        self.basis = np.asarray(basis, np.float32)     # [r, G]
        self.offset = np.asarray(offset, np.float32)   # [G]

    @property
    def rank(self) -> int:
        return int(self.basis.shape[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        return ((x @ self.kernel + self.bias) @ self.basis + self.offset).astype(np.float32)


def _ridge_reduced_rank(z: np.ndarray, d: np.ndarray, ridge: float, rank: int):
    """Ridge ``W [F, G]`` of ``d`` on ``z`` (no intercept), cut to the ``rank`` directions of
    gamma/beta that carry most of the fitted values (reduced-rank regression):
    ``(W V [F, r], V^T [r, G])``."""
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    w = vt.T @ ((s / (s * s + ridge))[:, None] * (u.T @ d))
    _, _, v_out = np.linalg.svd(z @ w, full_matrices=False)
    basis = v_out[:rank]
    return w @ basis.T, basis


def fit_conditioning_correction(x: np.ndarray, delta: np.ndarray, *, ridges=DEFAULT_RIDGES,
                                ranks=DEFAULT_RANKS, intercept: bool = True,
                                val_fraction: float = 0.2, seed: int = 0
                                ) -> tuple[ConditioningCorrection, dict[str, Any]]:
    """Fit ``delta [N, G]`` (fitted minus predicted conditioning) from ``x [N, F]``.

    Ridge on the standardized statistics, reduced to ``rank`` output directions; ``ridge`` and
    ``rank`` are chosen on a held-out ``val_fraction`` of the styles by the share of the
    held-out correction's squared error they remove (``explained``: 1 = the fits themselves,
    0 = the predictor as it is), then refitted on all styles. ``intercept``: also learn the
    mean correction (a shift shared by all styles)."""
    x = np.asarray(x, np.float64)
    delta = np.asarray(delta, np.float64)
    if (x.ndim != 2 or delta.ndim != 2 or len(x) != len(delta)
            or len(x) < MIN_STYLES["conditioning"]):
        raise ConfigError(f"fit: x [N, F] and delta [N, G] with N >= 5 needed, got "
                          f"{x.shape}, {delta.shape}")
    ridges = [float(r) for r in ridges]
    ranks = [int(r) for r in ranks]
    if min(ridges) <= 0 or min(ranks) < 1:
        raise ConfigError(f"ridge must be > 0 and rank >= 1, got {ridges}, {ranks}")

    def solve(idx, ridge, rank):
        mu = x[idx].mean(0)
        sd = np.maximum(x[idx].std(0), 1e-3)
        off = delta[idx].mean(0) if intercept else np.zeros(delta.shape[1])
        a, basis = _ridge_reduced_rank((x[idx] - mu) / sd, delta[idx] - off, ridge, rank)
        kernel = a / sd[:, None]
        return ConditioningCorrection(kernel, -(mu @ kernel), basis, off)

    perm = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(round(val_fraction * len(x))))
    val, tr = perm[:n_val], perm[n_val:]
    base = float(np.sum(delta[val] ** 2))
    grid = []
    # A rank above the training styles' count (or G) is that count: the grid says so, and the
    # final fit on all styles uses the rank that was checked on held-out ones, not more.
    used_ranks = list(dict.fromkeys(min(r, len(tr), delta.shape[1]) for r in ranks))
    for ridge in ridges:
        for rank in used_ranks:
            err = float(np.sum((delta[val] - solve(tr, ridge, rank)(x[val])) ** 2))
            grid.append({"ridge": ridge, "rank": rank, "explained": 1.0 - err / base})
    best = max(grid, key=lambda g: g["explained"])
    corr = solve(np.arange(len(x)), best["ridge"], best["rank"])
    return corr, {"n_train": int(len(tr)), "n_val": int(n_val), "grid": grid,
                  "ridge": best["ridge"], "rank": corr.rank, "explained": best["explained"],
                  "intercept": bool(intercept),
                  "train_explained": 1.0 - float(np.sum((delta - corr(x)) ** 2)
                                                 / np.sum(delta ** 2))}


def fold_correction(model, corr: ConditioningCorrection, *, scale: float = 1.0):
    """A new model whose predicted conditioning is ``model``'s plus ``scale * corr(x)``.

    The correction becomes ``r = corr.rank`` extra embedding dimensions: ``2 r`` hidden units
    ``relu(u), relu(-u)`` with ``u = x @ kernel + bias``, the bottleneck passes ``relu(u) -
    relu(-u) = u`` (exactly) to the new dimensions, and each head gets ``r`` new rows (its
    slice of ``scale * basis``) and ``scale * offset`` on its bias. The old dimensions and the
    transfer network are unchanged, so mixing styles and ``strength`` mix the corrections with
    the same weights as the rest of the embedding."""
    from .export import assign_tensors, model_tensors
    from .models import ArbitraryStyleModel
    from .models.transfer import CIN_LAYER_NAMES

    p = model.predictor
    if p.hidden is None:
        raise ConfigError("fold_correction needs a predictor with a hidden layer (hidden_dim > 0)")
    r, f, g = corr.rank, p.feature_dim, 2 * sum(model.cin_channels)
    if corr.kernel.shape != (f, r) or corr.basis.shape != (r, g) or corr.offset.shape != (g,):
        raise ConfigError(f"correction shapes {corr.kernel.shape}, {corr.basis.shape} do not fit "
                          f"the model (F = {f}, G = {g})")
    cfg = model.config()
    h, d = cfg["hidden_dim"], cfg["embedding_dim"]
    cfg.update(hidden_dim=h + 2 * r, embedding_dim=d + r)
    new = ArbitraryStyleModel.from_config(model.vgg, cfg)
    t = model_tensors(model)
    pre = "predictor/"
    t[pre + "hidden/kernel"] = np.concatenate(
        [t[pre + "hidden/kernel"], corr.kernel, -corr.kernel], 1)
    t[pre + "hidden/bias"] = np.concatenate([t[pre + "hidden/bias"], corr.bias, -corr.bias])
    k = np.zeros((h + 2 * r, d + r), np.float32)
    k[:h, :d] = t[pre + "bottleneck/kernel"]
    k[h:h + r, d:] = np.eye(r)
    k[h + r:, d:] = -np.eye(r)
    t[pre + "bottleneck/kernel"] = k
    t[pre + "bottleneck/bias"] = np.concatenate([t[pre + "bottleneck/bias"], np.zeros(r)])
    i = 0
    for name, c in zip(CIN_LAYER_NAMES, model.cin_channels):
        key = f"{pre}heads/{name}/"
        sl = slice(i, i + 2 * c)
        t[key + "kernel"] = np.concatenate([t[key + "kernel"], scale * corr.basis[:, sl]], 0)
        t[key + "bias"] = t[key + "bias"] + scale * corr.offset[sl]
        i += 2 * c
    assign_tensors(new, {kk: np.asarray(v, np.float32) for kk, v in t.items()}, "fold")
    return new


# ------------------------------------------------------------------------------------------------
# Command line


def _save_npz(path: Path, **arrays) -> None:
    write_atomically(path, lambda f: np.savez(f, **arrays))


def model_fingerprint(model) -> str:
    """A short hash of a model's weights (sorted by name): which model an oracle refines."""
    import hashlib

    from .export import model_tensors

    h = hashlib.sha256()
    for name, a in sorted(model_tensors(model).items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(a, np.float32).tobytes())
    return h.hexdigest()[:16]


def data_identity(sources) -> dict:
    """What an oracle is made from, per role: the datasets by name (a prepared folder's name ends
    in a digest of its files' contents, an npz export's in a digest of its bytes) and the
    number of images."""
    out = {}
    for role in ("style", "content"):
        src = sources[role]
        names = [str(getattr(part, "name", "?")) for part in getattr(src, "parts", [src])]
        out[role] = {"datasets": names, "images": len(src)}
    return out


def collect_oracle(model, sources, out_dir: Path, *, num_styles: int, batch: int = 8,
                   contents_per_style: int = 1, steps: int = 12, learning_rate: float = 0.05,
                   style_weight: float = 0.5, seed: int = 0, style_size: int = STYLE_SIZE,
                   content_crop: int = CONTENT_CROP,
                   content_short_range: tuple[int, int] = CONTENT_SHORT_RANGE,
                   content_seed: int | None = None, target: str = "embedding",
                   progress: bool = True) -> dict[str, np.ndarray]:
    """Run :func:`oracle_batch` (``target="embedding"``) or :func:`fit_oracle_batch`
    (``"conditioning"``: ``steps`` fit steps, each on ``contents_per_style`` fresh crops per
    style) over ``num_styles`` training styles (a seeded sample), saving each batch as
    ``out_dir/chunk_XXXXX.npz`` (skipped when present: resumable).

    ``seed`` picks the styles (and, unless ``content_seed`` is given, the photo crops): the same
    ``seed`` with another ``content_seed`` refines the same styles on other photos, so several
    oracles can be averaged (:func:`combine_oracles`) into cleaner targets."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"batch": int(batch), "contents_per_style": int(contents_per_style),
            "steps": int(steps), "learning_rate": float(learning_rate),
            "style_weight": float(style_weight), "seed": int(seed), "style_size": int(style_size),
            "content_crop": int(content_crop),
            "content_short_range": [int(v) for v in content_short_range]}
    if content_seed is not None and content_seed != seed:  # absent = seed (older oracles)
        meta["content_seed"] = int(content_seed)
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {TARGETS}, got {target!r}")
    if target != "embedding":  # absent = embedding (older oracles)
        meta["target"] = target
    # the start model's weights (an oracle of another model was reused as if it were this one's)
    meta["model_sha256"] = model_fingerprint(model)
    # and the training images (another style folder of the same size reused the old chunks:
    # a model fitted to paintings that were no longer the ones asked for)
    meta["data"] = data_identity(sources)
    meta_path = out_dir / "oracle.json"
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
            if not isinstance(old, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:  # (JSONDecodeError, UnicodeDecodeError: ValueErrors)
            raise ConfigError(f"{meta_path}: unreadable ({str(e).splitlines()[0][:100]}); "
                              "delete the folder or use another --out") from None
        for key in ("model_sha256", "data"):  # (older oracles did not record them)
            old.setdefault(key, meta[key])
        if old != meta:
            changed = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise ConfigError(f"{out_dir}: holds an oracle made with other "
                              f"{', '.join(changed)} ({ {k: old.get(k) for k in changed} }, now "
                              f"{ {k: meta.get(k) for k in changed} }); use another --out")
    else:
        write_atomically(meta_path, lambda f: f.write(json.dumps(meta).encode()))
    style_src, content_src = sources["style"], sources["content"]
    n = min(int(num_styles), len(style_src))
    order = np.random.default_rng(seed).permutation(len(style_src))[:n]
    chunks = []
    for c, start in enumerate(progress_bar(iterable=range(0, n, batch), desc="oracle",
                                            unit="batch", disable=not progress,
                                            dynamic_ncols=True)):
        path = out_dir / f"chunk_{c:05d}.npz"
        idx = order[start:start + batch]
        chunk = _load_chunk(path, idx)
        if chunk is None:
            rng = np.random.default_rng([seed if content_seed is None else content_seed, c])
            styles = style_images(style_src, idx, style_size)

            def draw(rng=rng, k=len(idx)):
                x = content_crops(content_src, rng, k * contents_per_style, content_crop,
                                  content_short_range)
                return x.reshape((k, contents_per_style) + x.shape[1:])

            if target == "conditioning":
                r = fit_oracle_batch(model, styles, draw, steps=steps,
                                     learning_rate=learning_rate, style_weight=style_weight)
            else:
                r = oracle_batch(model, styles, draw(), steps=steps,
                                 learning_rate=learning_rate, style_weight=style_weight)
            chunk = dict(index=np.asarray(idx), **r)
            _save_npz(path, **chunk)
        chunks.append(chunk)
    return {k: np.concatenate([ch[k] for ch in chunks]) for k in chunks[0]}


def _load_chunk(path: Path, idx: np.ndarray) -> dict[str, np.ndarray] | None:
    """An earlier run's oracle chunk if it holds exactly the styles ``idx``; ``None`` (it is
    made again) when it is absent, damaged, or holds other styles: another ``--num-styles``
    ends the last chunk elsewhere (it was reused as it was, with the old count of styles)."""
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            chunk = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - BadZipFile, OSError, ValueError, EOFError, ...
        print(f"{path}: unreadable ({type(e).__name__}): making it again", file=sys.stderr)
        return None
    if "index" not in chunk or not np.array_equal(chunk["index"], idx):
        print(f"{path}: holds other styles (another --num-styles): making it again",
              file=sys.stderr)
        return None
    return chunk


def combine_oracles(oracles: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Average oracles of the *same* styles and start model made on different photo crops.

    The refined embedding of one crop is the style's better embedding plus a part specific to
    that crop; averaging K crops keeps the first and shrinks the second ~K times."""
    first = oracles[0]
    for o in oracles[1:]:
        if not (np.array_equal(o["index"], first["index"])
                and np.allclose(o["e0"], first["e0"], atol=1e-4)):
            raise ConfigError("oracles to combine must come from the same styles and start model "
                              "(same --seed, --num-styles, --model)")
    out = dict(first)
    for k in ("e_star", "c", "loss"):  # refined embeddings or fitted conditionings
        if k in first:
            out[k] = np.mean([o[k] for o in oracles], axis=0)
    return out


def check_out_folder(out: Path, model_path: str) -> None:
    """Refuse an ``--out`` whose ``model.safetensors`` is not this command's to replace: the
    start model, the built-in model, a training workdir's export, or a file that is not a
    distilled export (a rerun in the same ``--out`` replaces its own model)."""
    from . import export
    from .inference import BUILTIN_MODEL
    from .training import CHECKPOINT_DIR, RUN_ID_FILE

    dest = out / "model.safetensors"
    real = os.path.realpath(dest)
    if real == os.path.realpath(model_path):
        raise ConfigError(f"{model_path}: the distilled model would replace --model (its "
                          "start); use another --out")
    if real == os.path.realpath(BUILTIN_MODEL):
        raise ConfigError(f"{out}: holds the built-in model, which the distilled model would "
                          "replace; use another --out")
    if (out / RUN_ID_FILE).is_file() or (out / CHECKPOINT_DIR).is_dir():
        raise ConfigError(f"{out}: is a training workdir (its export would be replaced); use "
                          "another --out")
    if dest.exists() or dest.is_symlink():
        try:
            info = export.read_export(dest)[1]["info"]
        except NSTError:
            info = None
        if not isinstance(info, dict) or "distill" not in info:
            raise ConfigError(f"{dest}: exists and is not a distilled model; refusing to "
                              "replace it (use another --out)")


def main(argv: list[str] | None = None) -> int:
    printable_stdout()
    from .cli import _Formatter  # every default shown once

    p = UsageParser(prog="python -m arbitrary_nst.distill", description=__doc__.split("\n")[0],
                    formatter_class=_Formatter)
    p.add_argument("--out", required=True, help="work folder (oracle chunks, model, report)")
    p.add_argument("--model", default=None,
                   help="model to start from: an export or a training workdir (default: built-in)")
    p.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "cpu_small.py"),
                   help="training config whose data section names the training images "
                        "(the default reads ../shared/data or $ARBITRARY_NST_DATA; --set "
                        "data.style_dirs=... for your own)")
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    p.add_argument("--num-styles", type=int, default=1000,
                   help="training styles in the oracle (10%% of them, 20%% for "
                        "conditioning, drawn with --seed, held out to judge the fit)")
    p.add_argument("--batch", type=int, default=8, help="styles refined together")
    p.add_argument("--contents-per-style", type=int, default=1,
                   help="photo crops each style's oracle is fitted on together")
    p.add_argument("--style-size", type=int, default=STYLE_SIZE,
                   help="style working size (shorter side, centre square)")
    p.add_argument("--content-crop", type=int, default=CONTENT_CROP,
                   help="photo crop side of the oracle")
    p.add_argument("--content-short", type=int, nargs=2, default=list(CONTENT_SHORT_RANGE),
                   metavar=("LO", "HI"), help="photo shorter side before cropping")
    p.add_argument("--target", choices=TARGETS, default="embedding",
                   help="embedding: refine the embedding, fit the MLP to it (session 5); "
                        "conditioning: fit each style's gamma/beta, fold a reduced-rank ridge "
                        "map to them into the predictor as extra embedding dimensions")
    p.add_argument("--steps", type=int, default=None,
                   help="Adam steps of the oracle (default: 12 embedding, 40 conditioning)")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="oracle step size (default: 0.05 embedding, 0.02 conditioning)")
    # (repeats add up: "extend"; a list default would be extended too, so it is filled in
    # after parsing)
    p.add_argument("--rank", type=int, nargs="+", action="extend", default=None,
                   help="conditioning: ranks to choose from on held-out styles "
                        f"(default: {' '.join(map(str, DEFAULT_RANKS))})")
    p.add_argument("--ridge", type=float, nargs="+", action="extend", default=None,
                   help="conditioning: ridge penalties to choose from on held-out styles "
                        f"(default: {' '.join(f'{r:g}' for r in DEFAULT_RIDGES)})")
    p.add_argument("--scale", type=float, default=1.0,
                   help="conditioning: fold scale x the fitted correction")
    p.add_argument("--style-weight", type=float, default=0.5,
                   help="style weight of the oracle's loss (training's loss.style_weight)")
    p.add_argument("--fit-steps", type=int, default=3000,
                   help="embedding: Adam steps fitting the MLP to the oracle")
    p.add_argument("--fit-learning-rate", type=float, default=3e-4,
                   help="embedding: learning rate of that fit")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="embedding: AdamW weight decay of that fit")
    p.add_argument("--target-scale", type=float, default=1.0,
                   help="embedding: fit e0 + s (e* - e0) (1: the oracle itself)")
    p.add_argument("--seed", type=int, default=0,
                   help="which training styles and photo crops (and the held-out split)")
    p.add_argument("--content-seeds", type=int, nargs="+", action="extend", default=None,
                   metavar="S",
                   help="refine every style on the photo crops of each of these seeds and fit "
                        "the mean (default: --seed alone); oracle of seed S != --seed in "
                        "<out>/oracle_cS")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    conditioning = a.target == "conditioning"
    if a.steps is None:
        a.steps = 40 if conditioning else 12
    if a.learning_rate is None:
        a.learning_rate = 0.02 if conditioning else 0.05
    given_rank, given_ridge = a.rank is not None, a.ridge is not None
    a.rank = a.rank or list(DEFAULT_RANKS)
    a.ridge = a.ridge or list(DEFAULT_RIDGES)
    try:
        check_jax_backend()
        # (the folders this command creates, e.g. --out, are removed if it fails early)
        with removing_new_empty_dirs():
            for name in ("num_styles", "batch", "contents_per_style", "steps", "fit_steps",
                         "style_size", "content_crop"):
                if getattr(a, name) < 1:
                    raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got "
                                      f"{getattr(a, name)}")
            finite = lambda *v: all(math.isfinite(x) for x in v)  # noqa: E731 (NaN passed < / <=)
            if (min(a.rank) < 1 or not finite(*a.ridge, a.scale) or min(a.ridge) <= 0
                    or a.scale < 0):
                raise ConfigError("--rank must be >= 1, --ridge > 0 and --scale >= 0 (finite), "
                                  "got "
                                  f"{a.rank}, {a.ridge}, {a.scale}")
            if not finite(a.fit_learning_rate) or a.fit_learning_rate <= 0:  # (nan ran, rc 0)
                raise ConfigError(f"--fit-learning-rate must be finite and > 0, got "
                                  f"{a.fit_learning_rate}")
            if not finite(a.target_scale, a.weight_decay) or a.weight_decay < 0:
                raise ConfigError(f"--target-scale must be finite and --weight-decay finite and "
                                  f">= 0, got {a.target_scale}, {a.weight_decay}")
            # (a seed numpy refuses was a traceback after the oracle's folder was made, and
            # that folder's oracle.json then refused the corrected command: "other seed")
            if not 0 <= a.seed <= MAX_SEED:
                raise ConfigError(f"--seed must be in [0, {MAX_SEED}], got {a.seed}")
            if a.content_seeds is not None and not all(0 <= c <= MAX_SEED
                                                        for c in a.content_seeds):
                raise ConfigError(f"--content-seeds must be >= 0 and <= {MAX_SEED}, got "
                                  f"{a.content_seeds}")
            if min(a.style_size, a.content_crop) < 32:
                raise ConfigError("--style-size and --content-crop must be >= 32 (VGG's minimum)")
            lo, hi = a.content_short
            if not a.content_crop <= lo <= hi:
                raise ConfigError(f"--content-short must satisfy crop <= LO <= HI, got {lo} {hi}")
            refine.check_options(a.steps, a.learning_rate, a.style_weight)
            # (each --target's own options were accepted by the other and changed nothing)
            other = "embedding" if conditioning else "conditioning"
            own = {"embedding": [(f"--{d.replace('_', '-')}", p.given(d)) for d in (
                       "fit_steps", "fit_learning_rate", "weight_decay", "target_scale")],
                   "conditioning": [("--rank", given_rank), ("--ridge", given_ridge),
                                    ("--scale", p.given("scale"))]}
            for option, given in own[other]:
                if given:
                    raise ConfigError(f"{option} applies to --target {other}")
            # the fits need this many styles (a held-out split): said after the whole oracle
            need = MIN_STYLES[a.target]
            if a.num_styles < need:
                raise ConfigError(f"--num-styles must be >= {need} for --target {a.target} (its "
                                  f"fit holds some styles out), got {a.num_styles}")
            from . import data, export, training
            from .inference import BUILTIN_MODEL

            cfg = training.load_config(a.config, a.set)
            training.refuse_unread_folders(cfg, a.set, a.config)
            # (a.model: an export or a workdir)
            model_path = export.model_file(a.model) if a.model else str(BUILTIN_MODEL)
            check_named(a.out, "--out", "the work folder")
            out = Path(a.out)
            check_out_folder(out, model_path)
            model = export.load_exported(model_path)
            start_info = export.read_export(model_path)[1]["info"]  # (the lineage of that file)
            if conditioning and model.predictor.hidden is None:  # (said after the whole oracle)
                raise ConfigError(f"{model_path}: --target conditioning needs a style predictor "
                                  "with a hidden layer (hidden_dim > 0)")
            make_dir(out, "the --out folder")  # (before the data: a bad --out was a traceback)
            sources = data.prepare(cfg.data, progress=not a.no_progress)
            if len(sources["style"]) < need:
                raise ConfigError(f"the training styles hold {len(sources['style'])} images; "
                                  f"--target {a.target} needs >= {need}")
            content_seeds = list(dict.fromkeys(a.content_seeds or [a.seed]))
            r = combine_oracles([
                collect_oracle(model, sources, out / ("oracle" if s == a.seed else f"oracle_c{s}"),
                               num_styles=a.num_styles,
                               batch=a.batch, contents_per_style=a.contents_per_style,
                               steps=a.steps, learning_rate=a.learning_rate,
                               style_weight=a.style_weight, seed=a.seed,
                               style_size=a.style_size, content_crop=a.content_crop,
                               content_short_range=tuple(a.content_short), content_seed=s,
                               target=a.target, progress=not a.no_progress)
                for s in content_seeds])
            if conditioning:
                corr, rep = fit_conditioning_correction(r["x"], r["c"] - r["c0"], ridges=a.ridge,
                                                        ranks=a.rank, seed=a.seed)
                print("held-out correction explained: " + ", ".join(
                    f"ridge {g['ridge']:g} rank {g['rank']}: {g['explained']:.1%}"
                    for g in rep["grid"]))
                if rep["explained"] <= 0:  # (it was folded in all the same, at full --scale)
                    raise ConfigError(
                        f"no correction helps held-out styles (best: {rep['explained']:.1%} "
                        f"explained, ridge {rep['ridge']:g}, rank {rep['rank']}): no model "
                        "written; "
                        f"the oracle in {out} is kept: rerun with larger --ridge, smaller --rank "
                        "or more --num-styles")
                model = fold_correction(model, corr, scale=a.scale)
                rep["scale"] = a.scale
                moved = r["c"] - r["c0"]
            else:
                target = r["e0"] + a.target_scale * (r["e_star"] - r["e0"])
                rep = fit_embedding_mlp(model, r["x"], target, steps=a.fit_steps,
                                        learning_rate=a.fit_learning_rate,
                                        weight_decay=a.weight_decay, seed=a.seed)
                moved = r["e_star"] - r["e0"]
            rep.update(oracle_styles=int(len(r["x"])), content_seeds=content_seeds,
                       target=a.target,
                       oracle_loss_before=float(r["loss"][:, 0].mean()),
                       oracle_loss_after=float(r["loss"][:, 1].mean()),
                       oracle_distance=float(np.linalg.norm(moved, axis=-1).mean()),
                       start_model=model_path, args=vars(a))
            # the lineage train.py records too: a run started from this export adds its steps
            export.export_model(model, out / "model.safetensors", info={
                "distill": {k: v for k, v in rep.items() if k != "curve"},
                "init_from": export.lineage_name(model_path),
                "total_steps": export.recorded_steps(start_info)},
                overwrite=True)  # (check_out_folder allowed it)
            report = json.dumps(rep, indent=1, default=str)
            write_atomically(out / "distill.json", lambda f: f.write(report.encode()))
            print(f"oracle: {rep['oracle_styles']} styles, loss {rep['oracle_loss_before']:.4g} -> "
                  f"{rep['oracle_loss_after']:.4g}, distance moved {rep['oracle_distance']:.2f}")
            if conditioning:
                print(f"fit: ridge {rep['ridge']:g}, rank {rep['rank']} (held-out explained "
                      f"{rep['explained']:.1%}); embedding {model.embedding_dim}-d; "
                      f"wrote {out / 'model.safetensors'}")
            else:
                print(f"fit: held-out mse {rep['start_val_mse']:.3f} -> {rep['val_mse']:.3f} "
                      f"(explained {rep['explained']:.1%}, best step {rep['best_step']}); "
                      f"wrote {out / 'model.safetensors'}")
                if rep["best_step"] == 0:  # (it said only "explained 0.0%")
                    print(f"warning: no fit step lowered the held-out error, so "
                          f"{out / 'model.safetensors'} has the start model's weights; the "
                          "oracle is kept: rerun with more --num-styles, more --fit-steps or "
                          "another --fit-learning-rate", file=sys.stderr)
            return 0
    except NSTError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # (a traceback through the refinement)
        kept = os.path.isdir(out_dir := os.path.join(a.out, "oracle")) and any(
            n.startswith("chunk_") for n in os.listdir(out_dir))
        print("error: interrupted" + (f"; the oracle chunks in {out_dir} are kept: the same "
                                      "command goes on from them" if kept else ""),
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    from .errors import run_command  # (a Ctrl-C while JAX loads was lost without it)

    sys.exit(run_command(main))
