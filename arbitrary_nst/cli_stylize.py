"""``stylize``: the inference CLI (``python infer.py ...``, ``python -m arbitrary_nst ...``).

Single image::

    python infer.py --content photo.jpg --style painting.jpg --out out.png
    python infer.py --content photo.jpg --style a.jpg b.jpg --style-weights 0.3 0.7 \\
        --strength 0.8 --preserve-color --max-size 768 --out mix.png

Batch (a folder or a glob; outputs ``{content}__{style}.png``, plus the settings that are not at
their defaults, e.g. ``photo__a+b@1-3__strength0.5.png`` (:func:`_batch_tag`); a progress bar in
images/s and a summary at the end; existing outputs are skipped unless ``--overwrite``; an input
is never written over; the exit status is 1 if anything was skipped)::

    python infer.py --content photos/ --style painting.jpg --out-dir out/ --batch-size 8
    python infer.py --content 'photos/**/*.jpg' --style a.jpg b.jpg --out-dir out/

Figures::

    python infer.py --content photo.jpg --interpolate a.jpg b.jpg --steps 5 --out strip.png
    python infer.py --content photo.jpg --interpolate a.jpg b.jpg c.jpg --steps 4 --out tri.png
    python infer.py --content photo.jpg --style a.jpg --strength-sweep 5 --out sweep.png

``--refine N`` first refines the style embedding for each photo with N Adam steps on the VGG
loss (:mod:`arbitrary_nst.refine`): closer to the style, ~0.45 s per step with the built-in
model on a 2-core CPU (20 steps: 8.8 s, plus ~9 s of compilation once)::

    python infer.py --content photo.jpg --style painting.jpg --refine 20 --out out.png

``--style`` also takes fitted styles: a painting's gamma/beta fitted once on your photos
(``infer.py fit-style``, :mod:`arbitrary_nst.fit_style`; closer to the painting at the same
speed), alone or mixed with images::

    python infer.py fit-style --style painting.jpg --photos photos/ --out painting.npz
    python infer.py --content photos/ --style painting.npz --out-dir out/

``--palette A`` (0..1) sets how far each output's colours are moved to the painting's colour
mean and covariance (default: the model's own setting, 0.5 for the built-in model; 0 = the raw
network output)::

    python infer.py --content photo.jpg --style painting.jpg --palette 0 --out raw.png

``--method gatys`` runs the Gatys pixel optimization (:mod:`arbitrary_nst.gatys`) with the same
I/O options (``--strength`` scales the style weight; ``--iterations``).

Every user error (missing/unreadable/corrupt/huge input, bad option values, unwritable output, a
corrupt model file) is one line on stderr (``error: ...``) and a non-zero exit status.

The lead's ``cli.py`` registers this module as the ``stylize`` subcommand through
:func:`add_arguments` and :func:`run`; :func:`main` runs it standalone.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from . import files, images
from .files import output_name as _output_name
from .errors import (ConfigError, ImageError, ModelError, NSTError, UsageParser, check_named,
                     one_line, options_named, printable_stdout)
from .progress import bar as progress_bar

DEFAULT_MAX_SIZE = 1024
DEFAULT_TILE_SIZE = 256
DEFAULT_STEPS = 5
#: The smallest side the network's outputs are made at (--tile-size, and --max-size): 8 px go
#: through its two stride-2 convolutions; below, a "result" is a few flat pixels.
MIN_TILE_SIZE = 8
#: --preserve-color's values, in stylize and in the gatys command alike ("histogram" is
#: "match"; "none" is off, as not giving it: gatys took none and refused histogram, stylize
#: the other way round).
PRESERVE_CHOICES = ("none", "luminance", "match", "histogram")
#: two contents with one output name (photo.jpg and photo.png; IMG_1.JPG from two folders named
#: one by one): the same advice on both methods' paths (the network's gave the API's, about an
#: "output function" a CLI user does not have)
COLLISION_HINT = "rename one of the inputs (or run them into separate --out-dir folders)"


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``stylize`` options to ``parser``."""
    from .inference import DEFAULT_BATCH_SIZE, DEFAULT_STYLE_SIZE

    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--content", nargs="+", action="extend", metavar="PATH",
                    help="content image(s), or (batch) folders or quoted globs like "
                         "'dir/*.jpg'; several are one batch")
    io.add_argument("--style", nargs="+", action="extend", metavar="S",
                    help="style image(s) or fitted styles (.npz, `infer.py fit-style`); several "
                         "are mixed by --style-weights")
    io.add_argument("--out", metavar="FILE", help="output image (single content image)")
    io.add_argument("--out-dir", metavar="DIR",
                    help="output folder: files are named {content}__{style}.png ({style}: "
                         "a+b for a mix, painting-fitted for painting.npz; {style}__gatys "
                         "with --method gatys), plus the settings not at their defaults "
                         "(a+b@1-3 for --style-weights 1 3, __strength0.5, __palette0, "
                         "__preserve-luminance, __refine20, __stylesize512, __iterations300); "
                         "subfolders of a --recursive folder or of a glob are mirrored in it")
    io.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    io.add_argument("--recursive", action="store_true",
                    help="with --content folders, also take images in their subfolders")

    st = parser.add_argument_group("style")
    st.add_argument("--style-weights", nargs="+", action="extend", type=float, metavar="W",
                    help="one weight per --style (>= 0, normalized to sum 1; default: equal)")
    st.add_argument("--strength", type=float, default=1.0,
                    help="0 = the photo as its own style (its colours and layout in the "
                         "network's brush texture, not the photo itself) .. 1 = full style")
    st.add_argument("--preserve-color", nargs="?", const="luminance", default=None,
                    choices=PRESERVE_CHOICES,
                    help="keep the content's colours: 'luminance' (default when given without a "
                         "value; stylized luminance + content chroma) or 'match' (colour-match "
                         "the style to the content first; 'histogram' is the same); 'none': off")
    st.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE, metavar="N",
                    help="downscale content so its longer side is <= N (0 = keep the original "
                         "size)")
    st.add_argument("--style-size", type=int, default=None, metavar="N",
                    help=f"style working size: shorter side resized to N, centre square "
                         f"(default {DEFAULT_STYLE_SIZE})")

    st.add_argument("--palette", type=float, default=None, metavar="A",
                    help="move the output's colours this far (0..1) to the style's colour mean "
                         "and covariance (default: the model's own setting; 0 = off)")
    st.add_argument("--refine", type=int, default=0, metavar="STEPS",
                    help="refine the style embedding for each content with this many Adam steps "
                         "on the VGG loss first (slower, lower style loss; 0 = off)")
    fig = parser.add_argument_group("figures")
    fig.add_argument("--interpolate", nargs="+", action="extend", metavar="S",
                     help="styles to interpolate: a strip (2), a triangle (3), a grid (4) or a "
                          "path (5+) of mixtures")
    fig.add_argument("--steps", type=int, default=None, metavar="K",
                     help=f"mixtures per side for --interpolate (default {DEFAULT_STEPS})")
    fig.add_argument("--strength-sweep", type=int, metavar="K",
                     help="a strip of K strengths from 0 to 1")
    fig.add_argument("--tile-size", type=int, default=None, metavar="N",
                     help=f"longer side of each figure tile (default {DEFAULT_TILE_SIZE}; at "
                          "most --max-size)")

    run_g = parser.add_argument_group("running")
    run_g.add_argument("--method", choices=("network", "gatys"), default="network",
                       help="'network' (the trained model) or 'gatys' (pixel optimization)")
    run_g.add_argument("--model", metavar="PATH",
                       help="model export (.safetensors) or training workdir (default: the "
                            "built-in model)")
    run_g.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                       help="compute dtype (bfloat16 is for GPUs)")
    run_g.add_argument("--backend", choices=("auto", "jax", "onnxruntime"), default="auto",
                       help="'jax' (XLA, any device), 'onnxruntime' (CPU: the exported "
                            "transfer graph, 1.3-1.9x faster there, ~4x on a folder of mixed "
                            "sizes; same outputs to ~1e-6) or 'auto' (default: onnxruntime on "
                            "a CPU in float32, jax otherwise)")
    run_g.add_argument("--batch-size", type=int, default=None, metavar="N",
                       help=f"content images per device call, sharded over all devices (default: "
                            f"{DEFAULT_BATCH_SIZE} per GPU/TPU, 1 on CPU; onnxruntime runs a "
                            f"batch as one call per image size)")
    run_g.add_argument("--workers", type=int, default=None, metavar="N",
                       help="threads decoding and encoding images (default: min(4, CPUs))")
    run_g.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS, metavar="N",
                       help="refuse images with more pixels (decompression-bomb guard)")
    run_g.add_argument("--iterations", type=int, default=None, metavar="N",
                       help="--method gatys: optimizer iterations (default: as infer.py "
                            "gatys, 500)")
    run_g.add_argument("--no-progress", "--quiet", action="store_true",  # (gatys' name too)
                       help="no progress bar")


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


MAX_TILES = 100  # tiles of one --interpolate / --strength-sweep figure
MAX_STYLE_SIZE = 2048  # = inference.MAX_STYLE_SIZE (not imported: keeps --help fast)


def _validate(args: argparse.Namespace) -> str:
    """Check option combinations and values; returns the mode."""
    from .inference import DEFAULT_STYLE_SIZE, check_strength, normalize_weights

    check_strength(args.strength)
    if args.interpolate and args.strength_sweep is not None:
        raise ConfigError("--interpolate and --strength-sweep are separate figures; give one")
    if not args.content:
        raise ConfigError("--content is required (an image, a folder or a glob)")
    if args.max_size is not None and args.max_size < 0:
        raise ConfigError(f"--max-size must be >= 0 (0 = keep the size), got {args.max_size}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.method == "gatys":  # the network's options (they were silently ignored)
        given = [name for name, value in (("--model", args.model),
                                          ("--style-size", args.style_size),
                                          ("--batch-size", args.batch_size),
                                          ("--workers", args.workers)) if value is not None]
        if given:
            raise ConfigError(f"{given[0]} applies to --method network only")
    args.style_size = DEFAULT_STYLE_SIZE if args.style_size is None else args.style_size
    if not 32 <= args.style_size <= MAX_STYLE_SIZE:
        raise ConfigError(f"--style-size must be in [32, {MAX_STYLE_SIZE}], got {args.style_size}")
    if args.method == "gatys" and args.dtype != "float32":
        raise ConfigError("--dtype applies to --method network; the Gatys optimizer runs in "
                          "float32")
    if args.method != "gatys" and args.iterations is not None:
        raise ConfigError("--iterations applies to --method gatys")
    if args.method != "gatys" and 0 < args.max_size < MIN_TILE_SIZE:  # (--max-size 1: a 1x1
        # image, exit 0)
        raise ConfigError(f"--max-size must be 0 (keep the size) or >= {MIN_TILE_SIZE} (as "
                          f"--tile-size), got {args.max_size}")
    if args.method == "gatys" and args.max_size and args.max_size < 32:
        raise ConfigError(f"--method gatys needs --max-size >= 32 (VGG's smallest input), got "
                          f"{args.max_size}")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.max_pixels < 1:
        raise ConfigError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    check_named(args.out, "--out", "the output image")
    check_named(args.out_dir, "--out-dir", "the output folder")
    if args.out and args.out_dir:
        raise ConfigError("give either --out (one image) or --out-dir (a folder), not both")
    if not args.out and not args.out_dir:
        raise ConfigError("give --out FILE (one image) or --out-dir DIR")
    if args.steps is not None and not args.interpolate:  # was silently ignored
        raise ConfigError("--steps applies to --interpolate")
    if args.tile_size is not None and not (args.interpolate or args.strength_sweep is not None):
        raise ConfigError("--tile-size applies to the --interpolate / --strength-sweep figures")
    args.steps = DEFAULT_STEPS if args.steps is None else args.steps
    args.tile_size = DEFAULT_TILE_SIZE if args.tile_size is None else args.tile_size
    if args.interpolate:
        if args.style:
            raise ConfigError("--interpolate takes the styles itself; drop --style")
        if args.style_weights:
            raise ConfigError("--style-weights does not apply to --interpolate")
        if len(args.interpolate) < 2:
            raise ConfigError("--interpolate needs at least 2 styles")
        if args.steps < 2:
            raise ConfigError(f"--steps must be >= 2, got {args.steps}")
        from .inference import mixture_grid

        if args.steps > MAX_TILES or len(mixture_grid(len(args.interpolate),
                                                      args.steps)) > MAX_TILES:
            raise ConfigError(f"--interpolate {len(args.interpolate)} styles x --steps "
                              f"{args.steps} is more than {MAX_TILES} tiles; use fewer steps")
        mode = "interpolate"
    else:
        if not args.style:
            raise ConfigError("--style is required (one or more style images)")
        if args.style_weights is not None:
            normalize_weights(args.style_weights, len(args.style))
        mode = "sweep" if args.strength_sweep is not None else "stylize"
        if mode == "sweep" and not 2 <= args.strength_sweep <= MAX_TILES:
            raise ConfigError(f"--strength-sweep must be in [2, {MAX_TILES}], got "
                              f"{args.strength_sweep}")
        if mode == "sweep" and args.strength != 1.0:
            raise ConfigError("--strength-sweep goes from strength 0 to 1 itself; drop "
                              "--strength")
    if mode != "stylize" and args.workers is not None:  # (it was ignored)
        raise ConfigError("--workers applies to stylizing images (its threads read and write "
                          "them); a --interpolate/--strength-sweep figure reads one photo")
    if mode != "stylize" and not MIN_TILE_SIZE <= args.tile_size <= 4096:
        raise ConfigError(f"--tile-size must be in [{MIN_TILE_SIZE}, 4096], got "
                          f"{args.tile_size}")
    if args.method == "gatys" and mode != "stylize":
        raise ConfigError("--method gatys does not support --interpolate/--strength-sweep")
    if args.backend == "onnxruntime" and args.dtype != "float32":
        raise ConfigError("--backend onnxruntime computes in float32; drop --dtype")
    if args.backend == "onnxruntime" and args.method == "gatys":
        raise ConfigError("--backend applies to --method network only")
    if args.refine < 0:
        raise ConfigError(f"--refine must be >= 0, got {args.refine}")
    if args.refine and (mode != "stylize" or args.method == "gatys"):
        raise ConfigError("--refine applies to --method network without --interpolate/"
                          "--strength-sweep")
    if args.refine and args.strength == 0:  # (23 s of Adam steps for the photo's own look)
        raise ConfigError("--refine does nothing at --strength 0 (the photo's own embedding); "
                          "drop one of them")
    if args.recursive and all(os.path.exists(c) and not os.path.isdir(c)  # (a typo: its own
                              for c in args.content):                    # error, later)
        raise ConfigError("--recursive applies to --content folders; none given (a glob takes "
                          "subfolders with '**')")
    if args.refine and args.preserve_color in ("match", "histogram"):
        raise ConfigError("--refine does not combine with --preserve-color match; use luminance")
    fitted = [s for s in (args.interpolate or args.style or [])
              if str(s).lower().endswith(".npz")]
    if fitted:  # say it in the CLI's words, before the model is loaded
        why = ("--method gatys needs style images" if args.method == "gatys" else
               "--refine does not apply to them (they are optimized already)" if args.refine else
               "--preserve-color match recolours style images; use luminance"
               if args.preserve_color in ("match", "histogram") else None)
        if why:
            raise ConfigError(f"{fitted[0]} is a fitted style (.npz): {why}")
        alone = len(fitted) == len(args.interpolate or args.style)
        if (alone and args.style_size != DEFAULT_STYLE_SIZE and args.strength == 1.0
                and mode != "sweep"):  # (the same pixels, under another batch name)
            raise ConfigError("--style-size does nothing with fitted styles (.npz) alone at "
                              "--strength 1 (they carry their own conditioning); drop it")
    if args.iterations is not None and args.iterations < 0:
        raise ConfigError(f"--iterations must be >= 0, got {args.iterations}")
    if args.palette is not None:
        from .models import check_palette

        check_palette(args.palette)
        if args.method == "gatys":
            raise ConfigError("--palette applies to --method network only")
        from .inference import preserve_color_mode

        if preserve_color_mode(args.preserve_color) == "luminance":  # (it was ignored)
            raise ConfigError("--palette does not apply with --preserve-color luminance (the "
                              "output keeps the photo's colours); drop one of them")
    return mode


def _check_out_dir(d: str) -> Path:
    """Create ``d`` if needed and make sure files can be created in it (one-line errors)."""
    return files.check_writable_dir(d)


#: What a folder given as --out should have been (the stylize command has --out-dir).
OUT_DIR_HINT = "a folder of outputs is --out-dir"


def _check_out_file(out: str) -> Path:
    """A single output file's name, format and folder (existing files and inputs: checked
    with the rest of the job)."""
    return files.check_output_file(out, overwrite=True, suffixes=images.SAVE_FORMATS,
                                   folder_hint=OUT_DIR_HINT)


def _stem(paths) -> str:
    """The styles' part of an output name. A fitted style is marked ``-fitted``: the results of
    ``painting.npz`` and of ``painting.jpg`` differ, and with one name the second run skipped
    the painting's as "exists" (or, with --overwrite, replaced the fitted results)."""
    from .fit_style import is_fitted_style_path

    return "+".join(Path(os.fspath(p)).stem + ("-fitted" if is_fitted_style_path(p) else "")
                    for p in paths)


def _number(x: float) -> str:
    """A setting's value in an output name: ``:g`` (``0.5``, ``1e-05``), or the exact ``repr``
    where ``:g``'s six digits would give two different values one name."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


def _batch_tag(args: argparse.Namespace, styles, model_palette: float | None = None
               ) -> tuple[str, str]:
    """A batch output name's styles part and settings part (``tag`` and ``keep`` of
    :func:`_output_name`), after :func:`_validate`.

    The settings that change the result are named when they are not at their defaults, so a
    sweep into one --out-dir (``--strength 0.5`` then ``--strength 1``) writes one file per
    setting instead of skipping the second run as "output exists" (or replacing the first
    with --overwrite): ``@W1-W2`` after the styles for unequal --style-weights, as given (``1 3``
    and ``0.25 0.75`` are one mix under two names: done twice, never skipped wrongly), then
    ``__iterations{N}`` (gatys), ``__strength{S}``, ``__palette{A}`` (when it is not
    ``model_palette``, the model's own: ``--palette 0.5`` for the built-in model is its
    default), ``__preserve-luminance`` / ``__preserve-match``,
    ``__refine{N}``, ``__stylesize{N}``. At the defaults the name is unchanged
    (``{content}__{styles}[__gatys].png``: reruns of earlier commands still skip their
    outputs).

    Not named: --max-size (it changes only images larger than it; the demo's batch passes
    --max-size 512 and documents ``{photo}__{style}.png``), the --model (its file name says
    little: workdirs all hold ``model.safetensors``), --dtype/--backend (rounding), and what
    does not change pixels (--batch-size, --workers, --max-pixels, --recursive). Sweep those
    into separate --out-dir folders."""
    from .inference import DEFAULT_STYLE_SIZE, preserve_color_mode

    gatys = args.method == "gatys"
    stem = _stem(styles)
    weights = ""
    if args.style_weights is not None and len(set(args.style_weights)) > 1:
        weights = "@" + "-".join(_number(w) for w in args.style_weights)
    settings = []
    if gatys and args.iterations is not None:
        from .gatys import GatysConfig

        if args.iterations != GatysConfig().iterations:
            settings.append(f"iterations{args.iterations}")
    if args.strength != 1.0:
        settings.append(f"strength{_number(args.strength)}")
    if args.palette is not None and args.palette != model_palette:
        settings.append(f"palette{_number(args.palette)}")
    if (mode := preserve_color_mode(args.preserve_color)) is not None:
        settings.append(f"preserve-{mode}")
    if args.refine:
        settings.append(f"refine{args.refine}")
    if not gatys and args.style_size != DEFAULT_STYLE_SIZE:
        settings.append(f"stylesize{args.style_size}")
    method = "__gatys" if gatys else ""
    if not weights and not settings:  # (the names of earlier versions, long ones included)
        return stem + method, ""
    return stem + weights, method + "".join(f"__{s}" for s in settings)


def _figure_settings(args: argparse.Namespace, model_palette: float | None) -> str:
    """The settings a figure's title names after its styles when they are off their defaults,
    as its file name does (:func:`_batch_tag`; two figures made with and without
    ``--preserve-color`` had the same title): ``, --palette 0.5, --preserve-color match``."""
    from .inference import DEFAULT_STYLE_SIZE, preserve_color_mode

    said = []
    if args.palette is not None and args.palette != model_palette:
        said.append(f"--palette {args.palette:g}")
    if (mode := preserve_color_mode(args.preserve_color)) is not None:
        said.append(f"--preserve-color {mode}")
    if args.style_size != DEFAULT_STYLE_SIZE:
        said.append(f"--style-size {args.style_size}")
    return "".join(f", {x}" for x in said)


def _figure_name(args: argparse.Namespace, mode: str, content_stem: str, styles,
                 model_palette: float | None = None) -> str:
    """A figure's name in --out-dir: ``{content}__{styles}__interp`` / ``__sweep``, then the
    settings off their defaults as in batches (:func:`_batch_tag`; a sweep's unequal weights
    after the styles) and ``__steps{K}`` for another --interpolate grid, so that figures made
    with other settings do not skip each other as "exists". --tile-size, like --max-size, is
    left out (the resolution)."""
    kind = "interp" if mode == "interpolate" else "sweep"
    tag, keep = _batch_tag(args, styles, model_palette)
    if mode == "interpolate" and args.steps != DEFAULT_STEPS:
        keep += f"__steps{args.steps}"
    if not keep:  # (the names of earlier versions, long ones included)
        return _output_name(content_stem, f"{tag}__{kind}")
    return _output_name(content_stem, tag, keep=f"__{kind}{keep}")


# --------------------------------------------------------------------------------------------
# Model loading (cached within the process: repeated main() calls, notebooks, tests)
# --------------------------------------------------------------------------------------------

_STYLIZERS: dict[tuple, Any] = {}
_VGG: dict[str, Any] = {}


def load_stylizer(model: str | None, dtype: str = "float32", backend: str = "auto"):
    """A :class:`~arbitrary_nst.inference.Stylizer`, cached per (model file's identity, dtype,
    backend): a replaced file is loaded again, even with its size and mtime kept."""
    from .export import model_file
    from .inference import BUILTIN_MODEL, Stylizer

    try:  # (a workdir: its model.safetensors)
        name = model_file(model, warn=False) if model else str(BUILTIN_MODEL)
        key = (*files.file_identity(name), dtype, backend)
    except (OSError, NSTError):
        key = None  # Stylizer.load says what is wrong
    if key is not None and key in _STYLIZERS:
        return _STYLIZERS[key]
    if "vgg" not in _VGG:
        from .vgg import load_vgg16

        _VGG["vgg"] = load_vgg16()
    s = Stylizer.load(model, vgg=_VGG["vgg"], dtype=dtype, backend=backend)
    if key is not None:
        _STYLIZERS.clear()  # keep one model alive at a time
        _STYLIZERS[key] = s
    return s


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default()
    except Exception:  # noqa: BLE001  pragma: no cover
        return None


def compose_figure(tiles: list[tuple[int, int, np.ndarray, str]], *, title: str = "",
                   layout: str = "grid", pad: int = 4, label_h: int = 14) -> np.ndarray:
    """Lay out labelled tiles ``(row, col, HWC float image, label)`` on a white canvas.
    ``layout="triangle"``: row ``r`` is centred (a barycentric triangle). Returns uint8 HWC."""
    from PIL import Image, ImageDraw

    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = lambda s: int(math.ceil(measure.textlength(s, font=font))) if s else 0  # noqa: E731
    th = max(t[2].shape[0] for t in tiles)
    tw = max([t[2].shape[1] for t in tiles] + [text_w(t[3]) + 2 for t in tiles])
    rows = max(t[0] for t in tiles) + 1
    cols = max(t[1] for t in tiles) + 1
    cw, ch = tw + pad, th + label_h + pad
    title_h = label_h + pad if title else 0
    width = max(pad + cols * cw, text_w(title) + 2 * pad)
    canvas = Image.new("RGB", (width, title_h + pad + rows * ch), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill="black", font=font)
    for r, c, img, label in tiles:
        x0 = pad + c * cw
        if layout == "triangle":
            x0 += (cols - 1 - r) * cw // 2
        y0 = title_h + pad + r * ch
        tile = Image.fromarray(images.to_uint8(img))
        canvas.paste(tile, (x0 + (tw - tile.width) // 2, y0 + (th - tile.height) // 2))
        if label:
            draw.text((x0 + (tw - text_w(label)) // 2, y0 + th + 1), label, fill="black",
                      font=font)
    return np.asarray(canvas)


def _weights_label(w: np.ndarray) -> str:
    """Mixing weights in percent, in style order: ``"75/25"``, ``"33/33/33"``."""
    return "/".join(f"{100 * v:.0f}" for v in w)


def _style_embeddings(stylizer, styles, content_moments, args):
    """``[N, D]`` embeddings, ``[N, 12]`` colour moments (palette targets) and ``[N, G]``
    gamma/beta offsets (None without fitted styles) of the style files (colour-matched to the
    content's colour moments ``[12]``, of the whole photo, if asked)."""
    from . import color
    from .fit_style import is_fitted_style_path
    from .inference import preserve_color_mode, style_working_image

    if preserve_color_mode(args.preserve_color) != "match":
        return stylizer.style_parts(styles, style_size=args.style_size)
    if any(is_fitted_style_path(s) for s in styles):
        raise ConfigError("--preserve-color match recolours style images; fitted styles "
                          "(.npz) are not images: use --preserve-color luminance")
    size = args.style_size
    smalls = np.stack([style_working_image(
        images.load_image(s, max_pixels=args.max_pixels, max_side=8 * size), size)
        for s in styles])
    matched = np.asarray(color.match_color_to_moments(smalls, content_moments), np.float32)
    e = stylizer.embed(list(matched), style_size=size)
    # the palette's target is the photo's own colours, as in stylize's match mode (the
    # recoloured styles' moments are those of clipped working squares)
    return e, np.tile(content_moments, (len(styles), 1)), None


def _figure(args, mode: str, stylizer, content_files: list[Path]) -> int:
    from . import color
    from .inference import mixture_grid, preserve_color_mode

    if len(content_files) != 1:
        raise ConfigError(f"{_content_label(args)}: figures take one content image, found "
                          f"{len(content_files)}")
    content = content_files[0]
    styles = list(args.interpolate if mode == "interpolate" else args.style)
    if args.out:
        out = Path(args.out)
    else:
        out = _check_out_dir(args.out_dir) / _figure_name(args, mode, content.stem, styles,
                                                             stylizer.model.palette)
    files.check_output_file(out, overwrite=args.overwrite, inputs=[content, *styles],
                            suffixes=images.SAVE_FORMATS, folder_hint=OUT_DIR_HINT)
    t0 = time.perf_counter()
    stylizer.max_pixels = args.max_pixels
    side = min(args.tile_size, args.max_size) if args.max_size else args.tile_size
    img = stylizer.read(content, max_side=side)  # uint8 HWC, as the batch path
    lum = preserve_color_mode(args.preserve_color) == "luminance"
    # the whole photo's colours, as stylize's (not its working square's): match mode's
    # target, and the palette's content part below strength 1
    m_c = color.color_moments_np(images.to_float(img))
    e_styles, m_styles, d_styles = _style_embeddings(stylizer, styles, m_c, args)
    d = None
    if mode == "sweep" or args.strength < 1.0:  # the content's own embedding
        e_c = stylizer.embed(img, style_size=args.style_size)[0]
    # (named as in output names: a fitted style and its painting were both "candy")
    names = " / ".join(_stem([s]) for s in styles)
    if mode == "interpolate":
        cells = mixture_grid(len(styles), args.steps)
        e = np.stack([w @ e_styles for _, _, w in cells])
        m = np.stack([w @ m_styles for _, _, w in cells])
        if d_styles is not None:
            d = np.stack([w @ d_styles for _, _, w in cells])
        if args.strength < 1.0:
            e = args.strength * e + (1.0 - args.strength) * e_c
            m = args.strength * m + (1.0 - args.strength) * m_c
            d = None if d is None else args.strength * d  # the content's own offset is 0
        labels = [_weights_label(w) for _, _, w in cells]
        pos = [(r, c) for r, c, _ in cells]
        layout = "triangle" if len(styles) == 3 else "grid"
        title = f"% of {names}" + (f", strength {args.strength:g}" if args.strength < 1 else "")
    else:
        w = np.asarray(args.style_weights if args.style_weights else [1.0] * len(styles))
        e_mix, m_mix = stylizer.mix(e_styles, w), stylizer.mix(m_styles, w)
        ts = np.linspace(0.0, 1.0, args.strength_sweep)
        e = np.stack([t * e_mix + (1 - t) * e_c for t in ts])
        m = np.stack([t * m_mix + (1 - t) * m_c for t in ts])
        if d_styles is not None:
            d = np.stack([t * stylizer.mix(d_styles, w) for t in ts])
        labels = [f"{t:.2f}" for t in ts]
        pos = [(0, j) for j in range(len(ts))]
        layout = "grid"
        # (a 90/10 mix was titled as an even one; the file name said @0.9-0.1)
        mix = "" if args.style_weights is None or len(set(w.tolist())) == 1 else \
            " (weights " + ", ".join(f"{x:g}" for x in w / w.sum()) + ")"
        title = f"strength 0 .. 1, style {names}{mix}"
    title += _figure_settings(args, stylizer.model.palette)
    outs = stylizer.transfer(img, e.astype(np.float32), preserve_color=lum,
                             batch_size=args.batch_size, palette_moments=m.astype(np.float32),
                             palette=args.palette, offsets=d)
    fig = compose_figure([(r, c, o, lab) for (r, c), o, lab in zip(pos, outs, labels)],
                         title=title, layout=layout)
    images.save_image(out, fig, overwrite=args.overwrite)
    print(f"wrote {out} ({len(outs)} tiles, {time.perf_counter() - t0:.1f} s)")
    return 0


# --------------------------------------------------------------------------------------------
# Stylize (single and batch)
# --------------------------------------------------------------------------------------------


def _progress(total: int, enabled: bool):
    return progress_bar(total=total, unit="img", desc="stylize",
                        disable=not enabled or total <= 1, dynamic_ncols=True, smoothing=0.1)


def _summary(done: int, skipped: list, seconds: float, n_images: int) -> str:
    rate = f", {done / seconds:.2f} images/s" if done and seconds > 0 else ""
    line = f"done {done}, skipped {len(skipped)}"
    if skipped:
        kinds = Counter(r.kind or "error" for r in skipped)
        line += " (" + ", ".join(f"{n} {k}" for k, n in kinds.most_common()) + ")"
    return f"{line}, {seconds:.1f} s{rate}"


def _identity(path: Path) -> tuple | None:
    """An output file's identity (None: none there): a write replaces the file (atomically),
    so a changed identity is this run's write."""
    try:
        return files.file_identity(path)
    except OSError:
        return None


def _list_contents(args) -> tuple[list[Path], list[tuple[Path, str]], dict[str, str]]:
    """The content files, the subfolders that cannot be read (skipped and reported), and each
    file's subfolder for its output (:func:`_content_files`)."""
    unlisted: list[tuple[Path, str]] = []
    subfolders: dict[str, str] = {}
    return _content_files(args, unlisted, subfolders), unlisted, subfolders


def _content_label(args) -> str:
    """The --content values, for messages."""
    return " ".join(os.fspath(c) for c in args.content)


def _content_files(args, unlisted: list[tuple[Path, str]] | None = None,
                   subfolders: dict[str, str] | None = None) -> list[Path]:
    """The images of every --content value (files, folders, globs), in the order given; a path
    named twice (``a.jpg`` and a folder holding it) is one job. (By path, not by the file it
    leads to: a symlink ``alias.png -> photo.png`` in a folder is a job of its own, as before;
    deduplicated by real path, the alias took the photo's place.) ``subfolders``: filled with
    each image's folder relative to its --content folder, or to the part of its glob before the
    first wildcard (``"."`` at the top), for outputs that mirror the input tree."""
    found: list[Path] = []
    seen: set[str] = set()
    for spec in args.content:
        base = _listing_base(os.fspath(spec))
        for p in images.list_images(spec, recursive=args.recursive, unlisted=unlisted):
            key = os.path.abspath(p)
            if key not in seen:
                seen.add(key)
                found.append(p)
                if subfolders is not None:
                    rel = "." if base is None else os.path.relpath(os.path.dirname(key), base)
                    subfolders[key] = "." if rel.startswith("..") else rel
    return found


def _listing_base(spec: str) -> str | None:
    """The folder that a --content value's images are listed under: the folder itself, or a
    glob's leading path without wildcards (``photos`` for ``photos/**/*.jpg``); None for a
    file."""
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    if os.path.lexists(spec):  # a file named one by one, whatever its path holds: `Photos
        return None            # [2024]/a.jpg` was mirrored as a glob into `out/Photos [2024]/`
    split = images.glob_base(spec)
    return None if split is None else os.path.abspath(split[0] or ".")


def _stylize(args, stylizer, listing: tuple[list[Path], list[tuple[Path, str]], dict[str, str]]
             ) -> int:
    contents, unlisted, subfolders = listing
    styles = list(args.style)
    single = args.out is not None
    if single:
        if len(contents) != 1:
            raise ConfigError(f"{_content_label(args)}: matches {len(contents)} images; use "
                              "--out-dir for a batch")
        out_file = _check_out_file(args.out)
        output = lambda p: out_file  # noqa: E731
    else:
        out_dir = _check_out_dir(args.out_dir)
        tag, keep = _batch_tag(args, styles,
                               None if stylizer is None else stylizer.model.palette)
        # the input tree is mirrored (--recursive, a glob over several folders): a camera's
        # DCIM/100/IMG_0001.JPG and DCIM/101/IMG_0001.JPG were one output name, one skipped
        output = lambda p: (out_dir / subfolders.get(os.path.abspath(p), ".")  # noqa: E731
                            / _output_name(Path(p).stem, tag, keep=keep))
    max_size = args.max_size or None
    t0 = time.perf_counter()
    if args.method == "gatys":
        results = _gatys_results(args, contents, styles, output, max_size)
    else:
        stylizer.max_pixels = args.max_pixels
        results = stylizer.stylize_files(
            contents, styles, weights=args.style_weights, strength=args.strength,
            preserve_color=args.preserve_color, max_size=max_size, style_size=args.style_size,
            output=output, overwrite=args.overwrite, batch_size=args.batch_size,
            workers=args.workers, refine_steps=args.refine, palette=args.palette,
            collision_hint=COLLISION_HINT)
    from .inference import skipped_file

    done = 0
    skipped = [skipped_file(d, None, d, why) for d, why in unlisted]
    for r in skipped:
        print(f"skipped: {one_line(r.reason)}", file=sys.stderr)
    if single and args.refine and not args.no_progress:  # the only sign of life for a while
        print(f"refining the style embedding for {contents[0]} ({args.refine} Adam steps) ...",
              file=sys.stderr, flush=True)
    bar = _progress(len(contents), not args.no_progress and not single)
    # the outputs before the run: after a Ctrl-C the results written but not yet reported
    # (the writer threads and the batch in hand) are counted as done too
    before = {} if single else {str(p): _identity(output(p)) for p in contents}
    try:
        for r in results:
            if r.ok:
                done += 1
            else:
                skipped.append(r)
            before.pop(str(r.content), None)  # (counted: not again from the disk after Ctrl-C)
            if r.ok:
                bar.update(1)
            else:  # (a skip takes no time: counted as done, the skips of a rerun over a
                # half-done folder made its rate and ETA far too good: it leaves the total)
                bar.total = max(bar.n, bar.total - 1)
            if not r.ok:
                if single:
                    raise ImageError(None, r.reason or f"{r.content}: failed")
                bar.write(f"skipped: {one_line(r.reason)}", file=sys.stderr)
    except KeyboardInterrupt:
        if not single:  # say what is on disk and how to finish (written outputs are skipped)
            bar.close()
            if hasattr(results, "close"):  # finish the writes in flight before counting them
                results.close()
            done += sum(_identity(output(Path(p))) not in (None, old)
                        for p, old in before.items())
            print(f"{_summary(done, skipped, time.perf_counter() - t0, len(contents))}; "
                  "interrupted: run the same command again to do the rest (the outputs "
                  "written are skipped as 'output exists', so that run ends with status 1)")
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if single:
        print(f"wrote {out_file} ({seconds:.1f} s)")
        return 0
    print(_summary(done, skipped, seconds, len(contents)))
    return 1 if skipped else 0


def _gatys_results(args, contents, styles, output, max_size):
    """Gatys path with the same I/O semantics as Stylizer.stylize_files (one image at a time)."""
    from . import gatys
    from .inference import (FileResult, normalize_weights, plan_outputs, preserve_color_mode,
                            skipped_by_error, skipped_file)

    mode = preserve_color_mode(args.preserve_color) or "none"
    w = normalize_weights(args.style_weights, len(styles))
    style_imgs = [images.load_image(s, max_pixels=args.max_pixels, max_side=max_size)
                  for s in styles]
    kw: dict[str, Any] = {"preserve_color": mode}
    base = gatys.GatysConfig()
    kw["style_weight"] = base.style_weight * args.strength
    if args.iterations is not None:
        kw["iterations"] = args.iterations
    cfg = base.replace(**kw)
    params = gatys.load_params(cfg)
    skips, jobs = plan_outputs([Path(c) for c in contents], output, styles, args.overwrite,
                               collision_hint=COLLISION_HINT)
    yield from skips
    for _, c, dest in jobs:
        try:
            x = images.load_image(c, max_pixels=args.max_pixels, max_side=max_size)
            res = gatys.run(x, style_imgs, style_weights=w, config=cfg,
                            progress=not args.no_progress, vgg_params=params,
                            style_names=[str(s) for s in styles])
            images.save_image(dest, res.images[0], overwrite=args.overwrite)
        except NSTError as e:  # (a message without the file gets its name)
            yield skipped_by_error(c, dest, e)
            continue
        except OSError as e:  # e.g. a name the filesystem cannot hold: skip it, go on
            yield skipped_file(c, dest, dest, f"cannot write: {e.strerror or e}")
            continue
        yield FileResult(c, dest, True, shape=x.shape[:2])


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run the ``stylize`` subcommand; raises NSTError subclasses for user errors."""
    with options_named({"strength": "--strength", "style weights": "--style-weights",
                        "palette": "--palette"}):  # (the API's names were said)
        mode = _validate(args)
    if mode != "stylize":
        content_files = _content_files(args)  # (first: fail fast before the model)
        return _figure(args, mode, _command_stylizer(args), content_files)
    listing = _list_contents(args)  # (first: fail fast before paying for the model)
    if args.method == "gatys":
        return _stylize(args, None, listing)
    return _stylize(args, _command_stylizer(args), listing)


def _command_stylizer(args: argparse.Namespace):
    """:func:`load_stylizer` of this command's options; an ONNX file given as ``--model`` says
    how this command runs its export on onnxruntime (fit-style, evaluate's and the API's
    messages named a ``--backend`` that fit-style has not)."""
    from .export import OnnxFileGiven

    try:
        return load_stylizer(args.model, args.dtype, args.backend)
    except OnnxFileGiven as e:
        raise ModelError(f"{e} (--backend onnxruntime runs that export on onnxruntime)") \
            from None


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default, and the epilog's line breaks (as arbitrary_nst.cli)."""


def build_parser(prog: str = "infer.py") -> argparse.ArgumentParser:
    parser = UsageParser(
        prog=prog, description="Arbitrary style transfer with the trained network (or Gatys).",
        formatter_class=_Formatter,
        epilog=__doc__.split("\n\n", 1)[1].split("The lead's")[0])
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: one line on stderr and exit status 1 for user errors."""
    printable_stdout()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed by argparse)
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    from .cli import run_removing_new_empty_dirs

    try:
        return run_removing_new_empty_dirs(run, args)
    except NSTError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # `python -m arbitrary_nst.cli_stylize ...`: infer.py's stylize
    # (its own parser printed "usage: infer.py", every default twice and the module's RST)
    from .cli import main as cli_main
    from .errors import run_command  # (a Ctrl-C while JAX loads was lost without it)

    raise SystemExit(run_command(cli_main, ["stylize", *sys.argv[1:]],
                                 prog="python -m arbitrary_nst"))
