"""The analysis figures of the style-transfer literature, for any content/style pair.

:func:`make_figures` writes six PNGs (matplotlib, no display needed):

a. ``a_content_reconstruction.png``: white noise optimized to match the content image's features
   at a single VGG layer (relu1_2 ... relu5_2): pixel detail fades with depth, layout stays
   (Gatys et al. 2016, Fig. 1).
b. ``b_style_reconstruction.png``: texture synthesis from noise with no content, matching the
   style's Gram matrices of a single layer (top row) and of layers 1..k (bottom row): deeper and
   more layers give larger-scale structure (Gatys et al. 2015/2016).
c. ``c_gram_matrices.png``: the style image's Gram matrix of every style layer, and the feature
   maps of the most correlated pair of filters of that layer (Pearson correlation from the
   centered Gram, among filters active on >= 10% of the image) - what the style statistic
   "sees".
d. ``d_weight_sweep.png``: content/style weight ratios alpha/beta from 1 to 1e-4 side by side, and
   the (unweighted) content and style losses over the iterations of each.
e. ``e_style_statistics.png``: Gram vs centered Gram vs both, for style transfer (top) and texture
   synthesis (bottom) with the same style image.
f. ``f_layer_magnitudes.png``: per-layer loss magnitudes and gradient norms with the standard and
   the normalized VGG16 (each filter's mean activation rescaled to 1): normalization evens out
   the layers' contributions.

Every optimization uses the batched L-BFGS of :mod:`arbitrary_nst.gatys` with per-example loss
weights and inits, so all 25 optimizations of figures a, b, d and e (five reconstruction layers,
nine texture syntheses, five weight ratios, three statistics x transfer/texture) run as ONE batch:
one compiled program. At the default 128 px / 150 iterations the whole set takes a few minutes on
a laptop CPU; ``--quick`` (64 px, 5 iterations) is a smoke test.
"""
from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import gatys
from . import images as images_lib
from . import losses as losses_lib
from . import vgg as vgg_lib
from .files import check_output_file, lexists, link_no_clobber, set_new_file_mode, temp_prefix
from .errors import ConfigError, ImageError, check_named

FIGURES = ("a", "b", "c", "d", "e", "f")
FILENAMES = {
    "a": "a_content_reconstruction.png",
    "b": "b_style_reconstruction.png",
    "c": "c_gram_matrices.png",
    "d": "d_weight_sweep.png",
    "e": "e_style_statistics.png",
    "f": "f_layer_magnitudes.png",
}
#: The figures each input shows (a: the content alone; c: the style's Gram matrices alone; b
#: synthesizes the style's texture at the content's shape).
USES_CONTENT = ("a", "b", "d", "e", "f")
USES_STYLE = ("b", "c", "d", "e", "f")
DEFAULT_SIZE = 128
DEFAULT_ITERS = 150
QUICK_SIZE = 64
QUICK_ITERS = 5

CONTENT_RECON_LAYERS = ("relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2")
STYLE_LAYERS = gatys.GATYS_STYLE_LAYERS
RATIOS = (1.0, 1e-1, 1e-2, 1e-3, 1e-4)  # alpha / beta with alpha = 1
#: per-example weights of the Gram and centered-Gram parts of the "both" statistic: the main
#: batch uses style_statistic="both", so (e) compares the three statistics inside it
STATISTIC_PARTS = {"gram": {"gram_weight": 1.0, "centered_weight": 0.0},
                   "centered_gram": {"gram_weight": 0.0, "centered_weight": 1.0},
                   "both": {"gram_weight": 1.0, "centered_weight": 1.0}}
GRAM = STATISTIC_PARTS["gram"]


def default_images(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The built-in content ('chelsea') and style ('strokes') samples."""
    from . import samples

    return samples.content_image("chelsea", max_side=size), samples.style_image("strokes", size)


def make_figures(out_dir: str | os.PathLike, *, content: np.ndarray | None = None,
                 style: np.ndarray | None = None, size: int = DEFAULT_SIZE,
                 iters: int = DEFAULT_ITERS, figures: Sequence[str] = FIGURES,
                 overwrite: bool = False, verbose: bool = True, vgg_params=None,
                 normalized_params=None,
                 inputs: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Write the requested figures (letters of :data:`FIGURES`) into ``out_dir``; returns paths.
    Before any work: existing files are refused unless ``overwrite``, a figure path that is one
    of the ``inputs`` (the image files given) always, and so is an unwritable folder.
    ``normalized_params`` (figure f) defaults to :func:`arbitrary_nst.vgg.load_vgg16`
    ``(normalized=True)``."""
    if isinstance(figures, str):  # "abc" or "a,b,c": letters, not one unknown name
        figures = [f for f in figures.replace(",", "") if f.strip()]
    figures = list(dict.fromkeys(figures))  # each once (a repeat found its own file "exists")
    unknown = [f for f in figures if f not in FIGURES]
    if unknown:
        raise ConfigError(f"unknown figures {unknown}; choose from {', '.join(FIGURES)}")
    if size < vgg_lib.MIN_SIZE:
        raise ConfigError(f"analysis size must be >= {vgg_lib.MIN_SIZE}, got {size}")
    check_named(os.fspath(out_dir), "out_dir", "the folder for the figures")
    out = Path(out_dir)
    if lexists(out) and not out.is_dir():
        raise ImageError(out, "exists and is not a folder")
    paths = {f: out / FILENAMES[f] for f in figures}
    for p in paths.values():
        check_output_file(p, overwrite=overwrite, inputs=inputs)  # also creates `out`
    dc, ds = (None, None) if content is not None and style is not None else default_images()
    content = dc if content is None else content
    style = ds if style is None else style
    # arrays as the Stylizer reads them (uint8 is 0..255; 0..255 floats are refused, not clipped)
    content = images_lib.resize_max_side(images_lib.array_to_float(content), size, upscale=True)
    style = images_lib.resize_max_side(images_lib.array_to_float(style), 2 * size, upscale=True)
    if min(content.shape[:2]) < vgg_lib.MIN_SIZE:
        raise ConfigError(f"content is too thin at {size} px for VGG (needs >= 32 px per side)")
    params = gatys.load_params(gatys.GatysConfig()) if vgg_params is None else vgg_params
    t0 = time.perf_counter()
    # (a), (b), (d) and (e) run as ONE batch: one compiled program
    batch = main_batch(params, content, style, iters, figures, progress=verbose)
    if verbose and batch:
        print(f"optimized {len(batch)} images as one batch ({time.perf_counter() - t0:.1f} s)",
              flush=True)
    makers = {"a": fig_content_reconstruction, "b": fig_style_reconstruction,
              "c": fig_gram_matrices, "d": fig_weight_sweep, "e": fig_style_statistics,
              "f": fig_layer_magnitudes}
    written = []
    for f in figures:
        t0 = time.perf_counter()
        kw = {"normalized_params": normalized_params} if f == "f" else {}
        fig = makers[f](params, content, style, batch=batch, iters=iters, **kw)
        _save(fig, paths[f], overwrite)
        written.append(paths[f])
        if verbose:
            print(f"figure {f}: {paths[f]} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return written


def _jobs(content: np.ndarray, figures: Sequence[str]) -> list[dict]:
    """The optimizations of figures a, b, d and e (Gram) as per-example jobs of one batch."""
    d = gatys.GatysConfig()
    noise = _noise(content.shape)
    recon = {"tv_weight": 0.0, **GRAM}
    jobs = []
    if "a" in figures:
        for layer in CONTENT_RECON_LAYERS:
            jobs.append(dict(fig="a", name=layer, init=noise, over=dict(
                recon, content_weight=1.0, style_weight=0.0, content_layers={layer: 1.0})))
    if "b" in figures:
        variants = [(layer, {layer: 1.0}) for layer in STYLE_LAYERS]
        variants += [(f"{STYLE_LAYERS[0]}..{STYLE_LAYERS[k - 1]}",
                      {layer: 1.0 for layer in STYLE_LAYERS[:k]})
                     for k in range(2, len(STYLE_LAYERS) + 1)]
        for name, layers in variants:
            jobs.append(dict(fig="b", name=name, init=_noise(content.shape, 1), over=dict(
                recon, content_weight=0.0, style_weight=1.0, style_layers=layers)))
    default = dict(content_weight=d.content_weight, style_weight=d.style_weight,
                   tv_weight=d.tv_weight, content_layers=dict(d.content_layers),
                   style_layers=dict(d.style_layers), **GRAM)
    if "d" in figures:
        for r in RATIOS:
            jobs.append(dict(fig="d", name=r, init=content,
                             over=dict(default, style_weight=d.content_weight / r)))
    if "e" in figures:
        for stat, parts in STATISTIC_PARTS.items():
            jobs.append(dict(fig="e", name=(stat, "transfer"), init=content,
                             over=dict(default, **parts)))
            jobs.append(dict(fig="e", name=(stat, "texture"), init=noise,
                             over=dict(default, content_weight=0.0, **parts)))
    return jobs


def main_batch(params, content, style, iters: int, figures: Sequence[str], *,
               progress: bool = False) -> list[dict]:
    """Run every job of :func:`_jobs` as one batch; returns the jobs with ``image`` and
    ``history`` (``{term: [iterations]}``) filled in. ``progress``: the optimizer's bar (the
    default figures take minutes on a CPU: `analyze` was silent for six)."""
    jobs = _jobs(content, figures)
    if not jobs:
        return []
    cfg = gatys.GatysConfig(
        iterations=iters, chunk_size=max(1, min(iters, 50)), style_statistic="both",
        content_layers={k: 1.0 for k in CONTENT_RECON_LAYERS},
        style_layers={k: 1.0 for k in STYLE_LAYERS})
    b = len(jobs)
    res = gatys.run(np.stack([content] * b), style, config=cfg, progress=progress,
                    vgg_params=params, overrides=[j["over"] for j in jobs],
                    init_image=np.stack([j["init"] for j in jobs]))
    hist = res.history[-1]
    for i, j in enumerate(jobs):
        j["image"] = res.images[i]
        j["history"] = {k: v[:, i] for k, v in hist.items()}
    return jobs


def _pick(batch: list[dict], fig: str) -> list[dict]:
    return [j for j in batch if j["fig"] == fig]


def Figure(*args, **kwargs):  # noqa: N802 - matplotlib's Figure, imported on first use
    """``matplotlib.figure.Figure``: matplotlib is imported only when a figure is made (the CLI
    builds its ``analyze`` options from this module: every ``infer.py`` stylization imported
    matplotlib, which with a read-only home made a /tmp/matplotlib-* folder and warned)."""
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(*args, **kwargs)


def _save(fig: Any, path: Path, overwrite: bool) -> None:
    """Atomic PNG write (temporary file + rename); never replaces a file unless ``overwrite``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp",
                               dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
        set_new_file_mode(tmp, str(path) if overwrite else None)  # not 0600
        if overwrite:
            os.replace(tmp, path)
        else:  # (also where there are no hard links: a FAT stick failed after all the work)
            link_no_clobber(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _show(ax, img, title: str | None = None) -> None:
    ax.imshow(np.clip(np.asarray(img), 0, 1), interpolation="lanczos")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _row_height(img, panel_width: float) -> float:
    """Inches a row of ``panel_width``-inch panels of ``img``'s aspect takes (its title aside)."""
    h, w = np.shape(img)[:2]
    return panel_width * h / w + 0.35


def _noise(shape, seed: int = 0) -> np.ndarray:
    return gatys.noise_image(shape, seed)


# ----------------------------------------------------------------------------------------------
# (a) content reconstruction


def fig_content_reconstruction(params, content, style, *, batch, iters) -> Any:
    jobs = _pick(batch, "a")
    n = len(jobs)
    # (sized to the photo, laid out by matplotlib: a portrait photo's panels were taller than
    # the fixed 2.6 in, and the title was drawn over their titles)
    fig = Figure(figsize=(2.2 * (n + 1), _row_height(content, 2.2) + 0.9), layout="constrained")
    axes = fig.subplots(1, n + 1)
    _show(axes[0], content, "content")
    for i, j in enumerate(jobs):
        loss = j["history"][f"content/{j['name']}"][-1]
        _show(axes[i + 1], j["image"], f"from {j['name']}\nloss {loss:.3g}")
    fig.suptitle(f"(a) Content reconstruction from white noise, one VGG16 layer each "
                 f"({iters} L-BFGS iterations)", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------
# (b) style reconstruction / texture synthesis


def fig_style_reconstruction(params, content, style, *, batch, iters) -> Any:
    jobs = _pick(batch, "b")
    n = len(STYLE_LAYERS)
    # (the textures are synthesized at the photo's shape; the style, of its own shape, spans
    # both rows: in a row of its own a square style left a band under the wide textures and an
    # empty panel under itself)
    fig = Figure(figsize=(2.2 * (n + 1), 2 * _row_height(jobs[0]["image"], 2.2) + 1.0),
                 layout="constrained")
    axes = fig.subplot_mosaic([["style"] + [f"only{i}" for i in range(n)],
                               ["style"] + [f"upto{i}" for i in range(n)]])
    _show(axes["style"], style, "style")
    for i in range(n):
        _show(axes[f"only{i}"], jobs[i]["image"], f"only {jobs[i]['name']}")
    _show(axes["upto0"], jobs[0]["image"], jobs[0]["name"])
    for k in range(1, n):
        _show(axes[f"upto{k}"], jobs[n + k - 1]["image"], jobs[n + k - 1]["name"])
    fig.suptitle(f"(b) Style reconstruction (texture synthesis from noise, no content): single "
                 f"layers (top), cumulative layers (bottom), {iters} iterations", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------
# (c) Gram matrices


def gram_analysis(params, style: np.ndarray, layers: Sequence[str] = STYLE_LAYERS):
    """Per layer: the (C*H*W-normalized) Gram matrix, the most correlated filter pair ``(i, j)``
    with its Pearson correlation, and the two feature maps."""
    feats = vgg_lib.features(params, jnp.asarray(style)[None], tuple(layers))
    out = {}
    for layer in layers:
        f = feats[layer]
        g = np.asarray(losses_lib.gram_matrix(f, "chw")[0])
        cg = np.asarray(losses_lib.centered_gram_matrix(f, "hw")[0])
        var = np.diag(cg)
        # Only filters that respond over a real part of the image (>= 10% of the positions,
        # away from the border): otherwise the "most correlated" pair is two filters that fire
        # at the same one or two pixels or along the padding edge (r = 1, nothing to see).
        fmap = np.asarray(f[0])
        h, w = fmap.shape[:2]
        bh, bw = max(1, h // 8), max(1, w // 8)
        inner = fmap[bh:h - bh, bw:w - bw] if h > 2 * bh and w > 2 * bw else fmap
        coverage = np.mean(inner > 0, axis=(0, 1))
        # ... and not mostly a response to the padding edge (mean energy inside >= half of it
        # over the whole map).
        interior = np.mean(inner ** 2, axis=(0, 1)) >= 0.5 * np.mean(fmap ** 2, axis=(0, 1))
        active = (var > 1e-6 * max(var.max(), 1e-12)) & (coverage >= 0.1) & interior
        if active.sum() < 2:  # degenerate image: fall back to every responding filter
            active = var > 1e-6 * max(var.max(), 1e-12)
        denom = np.sqrt(np.outer(var, var)) + 1e-12
        corr = np.where(np.outer(active, active), cg / denom, 0.0)
        np.fill_diagonal(corr, -np.inf)
        i, j = np.unravel_index(np.argmax(corr), corr.shape)
        out[layer] = {"gram": g, "pair": (int(i), int(j)), "corr": float(corr[i, j]),
                      "maps": (fmap[..., i], fmap[..., j])}
    return out


def fig_gram_matrices(params, content, style, *, batch, iters) -> Any:
    info = gram_analysis(params, style)
    n = len(info)
    # (rows sized to the style's shape, at most 3.2 in, and laid out by matplotlib: a fixed
    # 2.6 in per row left a band under the title, and more for a wide style)
    fig = Figure(figsize=(8.5, n * min(_row_height(style, 2.5), 3.2) + 0.5),
                 layout="constrained")
    axes = fig.subplots(n, 3)
    for r, (layer, d) in enumerate(info.items()):
        ax = axes[r, 0]
        g = d["gram"]
        im = ax.imshow(np.sign(g) * np.sqrt(np.abs(g)), cmap="magma")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(f"{layer} Gram ({g.shape[0]}x{g.shape[0]}, sqrt scale)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        i, j = d["pair"]
        for c, (m, k) in enumerate(zip(d["maps"], (i, j))):
            a = axes[r, c + 1]
            a.imshow(m, cmap="viridis")
            a.set_xticks([])
            a.set_yticks([])
            a.set_title(f"{layer} filter {k}" + (f" (r = {d['corr']:.2f} with {i})" if c else ""),
                        fontsize=8)
    fig.suptitle("(c) Style Gram matrices and the most correlated filter pair per layer",
                 fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------
# (d) content/style weight sweep


def fig_weight_sweep(params, content, style, *, batch, iters) -> Any:
    jobs = _pick(batch, "d")
    d = gatys.GatysConfig()
    n = len(jobs)
    fig = Figure(figsize=(2.4 * n, 6.2))
    gs = fig.add_gridspec(2, n, height_ratios=[1.0, 1.1])
    for i, j in enumerate(jobs):
        _show(fig.add_subplot(gs[0, i]), j["image"], f"alpha/beta = {j['name']:g}")
    split = max(1, n // 2)
    ax1 = fig.add_subplot(gs[1, :split])
    ax2 = fig.add_subplot(gs[1, split:])
    for j in jobs:
        h = j["history"]
        raw_style = sum(w * h[f"style/{k}"] for k, w in d.style_layers.items())
        raw_content = sum(w * h[f"content/{k}"] for k, w in d.content_layers.items())
        it = np.arange(1, len(raw_style) + 1)
        ax1.plot(it, raw_content, label=f"{j['name']:g}")
        ax2.plot(it, raw_style, label=f"{j['name']:g}")
    for ax, name in ((ax1, "content loss (unweighted)"), (ax2, "style loss (unweighted)")):
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    ax2.legend(title="alpha/beta", fontsize=7, title_fontsize=7)
    fig.suptitle(f"(d) Content/style trade-off, alpha = {d.content_weight:g} "
                 f"(init: content, {iters} L-BFGS iterations)", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------
# (e) Gram vs centered Gram vs both


def fig_style_statistics(params, content, style, *, batch, iters) -> Any:
    imgs = {j["name"]: j["image"] for j in _pick(batch, "e")}
    res = {stat: (imgs[(stat, "transfer")], imgs[(stat, "texture")]) for stat in STATISTIC_PARTS}
    n = len(res)
    fig = Figure(figsize=(2.6 * (n + 1), _row_height(content, 2.6) + _row_height(style, 2.6)
                          + 1.0), layout="constrained")
    axes = fig.subplots(2, n + 1)
    _show(axes[0, 0], content, "content")
    _show(axes[1, 0], style, "style")
    for c, (stat, (transfer, texture)) in enumerate(res.items()):
        _show(axes[0, c + 1], transfer, f"{stat}: transfer")
        _show(axes[1, c + 1], texture, f"{stat}: texture")
    fig.suptitle(f"(e) Style statistic: Gram vs centered Gram (covariance) vs both "
                 f"({iters} iterations)", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------
# (f) per-layer magnitudes, standard vs normalized VGG


def layer_magnitudes(params, content, style, content_layers=CONTENT_RECON_LAYERS,
                     style_layers=STYLE_LAYERS) -> dict[str, dict[str, np.ndarray]]:
    """Unweighted per-layer losses and the norms of their pixel gradients at a noise image
    (content loss against the content's features, style loss against the style's Grams)."""
    x = _noise(content.shape, 2)
    vals, norms = _magnitudes_jit(params, jnp.asarray(x), jnp.asarray(content),
                                  jnp.asarray(style), tuple(content_layers), tuple(style_layers))
    vals, norms = np.asarray(vals), np.asarray(norms)
    nc = len(content_layers)
    return {"content": {"layers": np.array(content_layers), "loss": vals[:nc],
                        "grad_norm": norms[:nc]},
            "style": {"layers": np.array(style_layers), "loss": vals[nc:],
                      "grad_norm": norms[nc:]}}


@functools.partial(jax.jit, static_argnums=(4, 5))
def _magnitudes_jit(params, x, content, style, content_layers, style_layers):
    """All per-layer losses and their gradient norms in one compiled program (one forward, one
    vmapped backward per term); the weights are an argument, so the standard and the normalized
    VGG share it."""
    lcfg = losses_lib.LossConfig(content_layers={k: 1.0 for k in content_layers},
                                 style_layers={k: 1.0 for k in style_layers},
                                 gram_norm="chw", tv_weight=0.0)
    ff = lambda imgs, taps: vgg_lib.features(params, imgs, taps)  # noqa: E731
    cf = ff(content[None], tuple(lcfg.content_layers))
    st = losses_lib.StyleTargets.from_images(ff, style[None], lcfg)
    names = [f"content/{k}" for k in content_layers] + [f"style/{k}" for k in style_layers]

    def terms(x):
        _, t = losses_lib.perceptual_loss(ff, x[None], lcfg, content_feats=cf, style_targets=st)
        return jnp.stack([t[n][0] for n in names])

    vals, vjp = jax.vjp(terms, x)
    (grads,) = jax.vmap(vjp)(jnp.eye(len(names), dtype=vals.dtype))
    return vals, jnp.sqrt(jnp.sum(grads.reshape(len(names), -1) ** 2, axis=1))


def fig_layer_magnitudes(params, content, style, *, batch, iters,
                         normalized_params=None) -> Any:
    std = layer_magnitudes(params, content, style)
    if normalized_params is None:
        normalized_params = vgg_lib.load_vgg16(normalized=True).params()
    nrm = layer_magnitudes(normalized_params, content, style)
    fig = Figure(figsize=(11, 6.5))
    axes = fig.subplots(2, 2)
    for r, kind in enumerate(("content", "style")):
        for c, key in enumerate(("loss", "grad_norm")):
            ax = axes[r, c]
            layers = std[kind]["layers"]
            xs = np.arange(len(layers))
            ax.bar(xs - 0.2, std[kind][key], 0.4, label="VGG16")
            ax.bar(xs + 0.2, nrm[kind][key], 0.4, label="normalized VGG16")
            ax.set_xticks(xs, layers, fontsize=8)
            ax.set_yscale("log")
            ax.grid(alpha=0.3, axis="y")
            spread = [d[kind][key].max() / max(d[kind][key].min(), 1e-30) for d in (std, nrm)]
            what = "loss" if key == "loss" else "|d loss / d pixels|"
            ax.set_title(f"{kind} {what} per layer (max/min: {spread[0]:.2g} vs "
                         f"{spread[1]:.2g})", fontsize=9)
            if r == 0 and c == 0:
                ax.legend(fontsize=8)
    fig.suptitle("(f) Per-layer loss magnitudes at a noise image: standard vs normalized VGG16 "
                 "(Gram / C*H*W, MSE)", fontsize=10)
    return fig
