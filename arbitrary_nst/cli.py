"""Command-line front end: ``python infer.py <command> ...`` (or ``python -m arbitrary_nst``).

Commands live in a registry: each is one function that adds its arguments to an argparse
sub-parser and one that runs it (``@command(name, help, add_arguments)``), so new commands are
added without touching :func:`main`. :func:`main` turns every user error
(:class:`~arbitrary_nst.errors.NSTError`) into one line ``error: ...`` on stderr and a non-zero
exit code, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .cli_stylize import _number  # (a setting's value in an output name, as stylize's)
from .errors import (MAX_SEED, ConfigError, ImageError, NSTError, OutOfMemory, UsageParser,
                     check_jax_backend, check_named, count_arg, one_line, options_named, out_of_memory,
                     positive_float_arg, printable_stdout)

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``run(args) -> exit code`` as sub-command ``name``."""
    def deco(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = Command(name, help, add_arguments, run)
        return run
    return deco


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default (not for required options, flags and unset optionals,
    whose help says what happens) and keeps the description's line breaks."""

    def _get_help_string(self, action):
        # (`in (None, False)` hid every default equal to 0 too: 0 == False)
        if (action.required or action.default is None or action.default is False
                or action.default == [] or "default" in (action.help or "")):
            return action.help
        return super()._get_help_string(action)


def build_parser(prog: str = "infer.py") -> argparse.ArgumentParser:
    parser = UsageParser(
        prog=prog, formatter_class=_Formatter,
        description=f"Arbitrary neural style transfer (JAX). Run `{prog} COMMAND --help`.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=UsageParser)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, formatter_class=_Formatter)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "infer.py") -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return the exit code.
    ``prog``: the command's name in usage lines and error hints."""
    printable_stdout()
    try:  # (building the parser imports JAX: a Ctrl-C then is an interruption too)
        parser = build_parser(prog)
        argv = list(sys.argv[1:] if argv is None else argv)
        if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
            argv.insert(0, "stylize")  # `infer.py --content C --style S --out O` is stylize
        if argv and argv[0] in COMMANDS:  # unknown options are reported by the top parser
            parser.help_hint = f"{parser.prog} {argv[0]}"
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, its one line already printed)
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        with warnings.catch_warnings():  # (restores showwarning for callers of main())
            warnings.showwarning = _show_warning
            check_jax_backend()
            return run_removing_new_empty_dirs(args._run, args)
    except OutOfMemory as e:  # (the library's hint names its arguments: max_size=)
        print(f"error: {e.what}: {_memory_hint(args)}", file=sys.stderr)
        return EXIT_ERROR
    except NSTError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:  # a filesystem limit no check foresaw: still one line, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - only out-of-memory is a user error; else re-raised
        if (oom := out_of_memory(e)) is None:
            raise
        print(f"error: {oom}: {_memory_hint(args)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one ``warning: ...`` line (Python's are two: file:line and source)."""
    print(f"warning: {one_line(message)}", file=sys.stderr if file is None else file)


def run_removing_new_empty_dirs(run, args: argparse.Namespace) -> int:
    """``run(args)``, removing the output folders it created and left empty if it raises
    (:func:`~arbitrary_nst.files.removing_new_empty_dirs`)."""
    from .files import removing_new_empty_dirs

    with removing_new_empty_dirs():
        return int(run(args) or 0)


def _memory_hint(args: argparse.Namespace) -> str:
    """What to lower after an out-of-memory error, in this command's own options (stylize has
    no --size, gatys no --max-size: the hint named both)."""
    opts = [opt for dest, opt in (("max_size", "--max-size"), ("size", "--size"),
                                  ("batch_size", "--batch-size")) if hasattr(args, dest)]
    return f"use smaller values of {', '.join(opts)}" if opts else "use smaller images"


# ----------------------------------------------------------------------------------------------
# Shared argument helpers


def parse_layers(spec: str, *, what: str) -> dict[str, float]:
    """``"relu4_2"`` or ``"relu1_1:0.5,relu2_1:1"`` -> ``{tap: weight}``. Layers given without a
    weight share equally a total of 1 with each other (so ``relu1_1,relu2_1`` is 0.5 each)."""
    from .vgg import tap_depth

    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise ConfigError(f"--{what}-layers is empty")
    out: dict[str, float] = {}
    plain = []
    for item in items:
        name, sep, w = item.partition(":")
        name = name.strip()
        tap_depth(name)  # ConfigError naming the valid taps
        if name in out or name in plain:
            raise ConfigError(f"--{what}-layers: {name} given twice")
        if sep:
            try:
                out[name] = float(w)
            except ValueError:
                raise ConfigError(f"--{what}-layers: bad weight {w!r} for {name}") from None
        else:
            plain.append(name)
    for name in plain:
        out[name] = 1.0 / len(plain)
    return {name: out[name] for name in sorted(out, key=tap_depth)}


def _int_list(spec: str, *, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in spec.replace(" ", "").split(",") if s)
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated integers, got {spec!r}") from None


#: Upper bounds of working sizes: a typo (--size 100000) is an error, not minutes of silence
#: and the kernel's out-of-memory kill. 4096 px is ~64x the usual working image.
MAX_GATYS_SIZE = 4096
_GATYS_DEFAULT_SIZE = 512  # the gatys command's --size
MAX_STYLE_SIZE = 2048  # = inference.MAX_STYLE_SIZE (not imported here: keeps --help fast)


def _nonneg_float(s: str) -> float:
    try:  # (argparse named this function: "invalid _nonneg_float value: 'abc'")
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not (math.isfinite(v) and v >= 0):  # (inf passed here and was refused after parsing)
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {s}")
    return v


def output_paths(out: str, contents: Sequence[str], *, tag: str, keep: str = "",
                 overwrite: bool, inputs: Sequence[str] = (), skip_existing: bool = False,
                 unusable: dict[int, NSTError] | None = None) -> list[Path]:
    """Where each content's result goes. One content: ``out`` is the file (or an existing folder);
    several: ``out`` is a folder (created) or a pattern containing ``{name}`` (content file stem).
    In a folder the name is ``{content}__{tag}{keep}.png`` (:func:`files.output_name`: ``tag``
    cut with a hash when too long).
    Refuses to overwrite an input (the contents and ``inputs``, e.g. the styles) even with
    ``overwrite``, two contents with one output file, existing files unless ``overwrite``, and
    unwritable places, before any work. ``skip_existing``: an existing output file is not an
    error (the caller skips its content; see :func:`existing_outputs`); everything else still is.
    ``unusable``: a dict that takes ``{index: error}`` of the outputs that cannot be written
    (a folder in the way, a name too long) instead of raising, unless none can be (a batch
    skips those contents: one such name stopped the whole job before any work)."""
    from .files import check_output_file
    from .images import SAVE_FORMATS

    check_named(out, "--out", "an output file, folder or {name} pattern")
    ext = Path(out).suffix.lower()
    many = len(contents) > 1
    if "{name}" in out:
        paths = [Path(out.replace("{name}", Path(c).stem)) for c in contents]
    elif many or Path(out).is_dir() or out.endswith(("/", os.sep)):
        if many and ext and not Path(out).is_dir():
            raise ConfigError(f"--out {out}: several content images need a folder or a "
                              "pattern with {name}, not one file")
        from .files import output_name

        paths = [Path(out) / output_name(Path(c).stem, tag, keep=keep) for c in contents]
    else:
        paths = [Path(out)]
    first: dict[str, int] = {}
    for i, p in enumerate(paths):
        if (j := first.setdefault(os.path.realpath(p), i)) != i:
            # (the names come from the file stems, as {name} does: a pattern cannot help)
            if os.path.realpath(contents[i]) == os.path.realpath(contents[j]):
                raise ConfigError(f"--content: {contents[i]} is given twice")
            raise ConfigError(f"--out: two content images would be written to the same file "
                              f"{p} ({contents[j]} and {contents[i]}: the file names clash); "
                              "rename one of them or give them separate runs")
    errors: dict[int, NSTError] = {}
    for i, p in enumerate(paths):
        try:
            check_output_file(p, overwrite=overwrite or skip_existing,
                              inputs=[*contents, *inputs], suffixes=SAVE_FORMATS)
        except NSTError as e:
            if unusable is None:
                raise
            errors[i] = e
    if errors and len(errors) == len(paths):  # (the folder itself, not one name: the job's)
        raise next(iter(errors.values()))
    if unusable is not None:
        unusable.update(errors)
    return paths


def existing_outputs(paths: Sequence[Path], *, overwrite: bool) -> set[int]:
    """Indices of ``paths`` that exist and are not to be replaced (``overwrite`` false)."""
    return set() if overwrite else {i for i, p in enumerate(paths) if os.path.lexists(p)}


# ----------------------------------------------------------------------------------------------
# gatys


def _add_gatys_arguments(p: argparse.ArgumentParser) -> None:
    from . import gatys

    d = gatys.GatysConfig()
    io = p.add_argument_group("images")
    io.add_argument("--content", nargs="+", action="extend", required=True, metavar="C",
                    help="content image(s); several run as one batch per working size")
    io.add_argument("--style", nargs="+", action="extend", required=True, metavar="S",
                    help="style image(s); several are blended (see --style-weights)")
    io.add_argument("--style-weights", nargs="+", action="extend", type=_nonneg_float,
                    default=None, metavar="W",
                    help="blend weight of each style (one per --style; normalized to sum 1); "
                         "default: equal")
    io.add_argument("--out", required=True,
                    help="output file (one content) or folder / pattern with {name} (several); "
                         "in a folder: {content}__{styles}__gatys.png, with the settings off "
                         "their defaults after __gatys (__size384__iterations300__adam)")
    io.add_argument("--size", type=count_arg(32, MAX_GATYS_SIZE), default=_GATYS_DEFAULT_SIZE,
                    help="longer side of the result in pixels (aspect ratio kept)")
    io.add_argument("--style-scale", type=positive_float_arg, default=d.style_scale,
                    help="style image's longer side relative to the result's")
    io.add_argument("--overwrite", action="store_true",
                    help="replace existing output files (without it, an existing output is an "
                         "error for one content and skipped for several: rerunning a batch "
                         "does the rest)")
    io.add_argument("--max-pixels", type=count_arg(), default=None,
                    help="refuse input images with more pixels (default: the I/O module's "
                         "limit, 64 megapixels)")
    io.add_argument("--batch-size", type=count_arg(), default=None, metavar="N",
                    help="optimize at most N same-size contents at once (default: all of "
                         "them: memory grows with N, and a batch is written when it ends)")

    opt = p.add_argument_group("optimization")
    # (--iters, --lr, --seed and --color-match default to None, their value said in the help:
    # given where they do not apply they are refused, not ignored)
    opt.add_argument("--iters", "--iterations", type=int, default=None,  # (stylize's name too)
                     help=f"iterations per stage (default {d.iterations}); or --stage-iters")
    opt.add_argument("--optimizer", choices=gatys.OPTIMIZERS, default=d.optimizer,
                     help="lbfgs: per-example L-BFGS (optax direction, batched Wolfe line search); "
                          "lbfgs_optax: optax.lbfgs on the batch sum; adam")
    opt.add_argument("--lr", type=positive_float_arg, default=None,
                     help=f"Adam learning rate (default {d.learning_rate:g}; --optimizer adam)")
    opt.add_argument("--lbfgs-memory", type=count_arg(1, gatys.MAX_LBFGS_MEMORY),
                     default=d.lbfgs_memory,
                     help="L-BFGS history size")
    opt.add_argument("--param", choices=gatys.PARAMETERIZATIONS, default=d.parameterization,
                     help="pixel parameterization keeping the image in [0, 1]")
    opt.add_argument("--init", choices=gatys.INITS, default=d.init, help="initial image")
    opt.add_argument("--seed", type=count_arg(0, MAX_SEED), default=None,
                     help=f"seed of --init noise (default {d.seed})")
    opt.add_argument("--stages", default="none",
                     help="coarse-to-fine: longer sides of coarser stages run first, e.g. 256,512 "
                          "(each stage starts from the previous result)")
    opt.add_argument("--stage-iters", default=None,
                     help="iterations per stage, coarse ones first then the final, e.g. "
                          "300,200,100 (default: --iters for every stage)")
    opt.add_argument("--chunk", type=count_arg(1, gatys.MAX_CHUNK_SIZE), default=d.chunk_size,
                     help="iterations per compiled chunk (progress updates between chunks)")

    loss = p.add_argument_group("loss")
    loss.add_argument("--content-weight", type=_nonneg_float, default=d.content_weight,
                      help="content loss weight (alpha)")
    loss.add_argument("--style-weight", type=_nonneg_float, default=d.style_weight,
                      help="style loss weight (beta)")
    loss.add_argument("--tv-weight", type=_nonneg_float, default=d.tv_weight,
                      help="total-variation weight")
    loss.add_argument("--content-layers", default=_layers_str(d.content_layers),
                      help="content taps, optionally TAP:WEIGHT, comma-separated")
    loss.add_argument("--style-layers", default=_layers_str(d.style_layers, plain=True),
                      help="style taps, optionally TAP:WEIGHT (plain taps share a total of 1)")
    loss.add_argument("--depth-growth", type=positive_float_arg, default=None,
                      help="improved NST: style layer weights grow by this factor per layer "
                           "(e.g. 2), same total (default: off, the given weights)")
    loss.add_argument("--style-statistic", choices=("gram", "centered_gram", "both", "mean_std"),
                      default=d.style_statistic, help="statistic the style loss matches")
    loss.add_argument("--gram-norm", choices=("chw", "hw", "none"), default=d.gram_norm,
                      help="Gram matrix normalization")
    loss.add_argument("--tv-kind", choices=("magenta", "l1"), default=d.tv_kind,
                      help="total-variation flavour")
    loss.add_argument("--pooling", choices=("max", "avg"), default=d.pooling,
                      help="VGG pooling (Gatys et al. use avg)")
    loss.add_argument("--normalized-vgg", action="store_true",
                      help="use the mean-activation-normalized VGG16")

    col = p.add_argument_group("colour")
    from .cli_stylize import PRESERVE_CHOICES

    col.add_argument("--preserve-color", nargs="?", const="luminance", default=d.preserve_color,
                     choices=PRESERVE_CHOICES,  # (as stylize's)
                     help="luminance (when given without a value): transfer luminance only, "
                          "keep the content's chroma; match (or histogram): match the style's "
                          "colour mean/covariance to the content; none: off")
    col.add_argument("--color-space", choices=("yiq", "yuv"), default=d.color_space,
                     help="colour space of --preserve-color luminance (the result is the "
                          "same in both: they share the luminance row, and swapping it adds "
                          "the luminance change to R, G and B alike; kept for scripts)")
    col.add_argument("--color-match", choices=("eig", "chol"), default=None,
                     help="matrix square root of --preserve-color match (default "
                          f"{d.color_match_method})")
    p.add_argument("--quiet", "--no-progress", action="store_true",  # (the others' name)
                   help="no progress bar and no per-image lines")


def _layers_str(layers, plain: bool = False) -> str:
    if plain:
        return ",".join(layers)
    return ",".join(f"{k}:{v:g}" for k, v in layers.items())


def _preserve(args: argparse.Namespace) -> str:
    """--preserve-color as GatysConfig takes it ("histogram" is "match")."""
    from .inference import preserve_color_mode

    return preserve_color_mode(args.preserve_color) or "none"


def _refuse_inapplicable(args: argparse.Namespace) -> None:
    """Options given where they change nothing are refused (`--lr 1e9` with L-BFGS, `--seed`
    without noise, `--color-match` without match, `--iters` with `--stage-iters`, and one
    style's `--style-weights`, a letter away from the loss's `--style-weight`, all ran as if
    not given)."""
    for given, applies, why in (
            (args.lr, args.optimizer == "adam", "--lr applies to --optimizer adam (L-BFGS "
                                                "finds its own step sizes)"),
            (args.seed, args.init == "noise", f"--seed applies to --init noise (--init "
                                              f"{args.init} has no randomness)"),
            (args.color_match, _preserve(args) == "match",
             "--color-match applies to --preserve-color match"),
            (args.iters if args.stage_iters else None, False,
             "give --iters (every stage) or --stage-iters (one count per stage), not both")):
        if given is not None and not applies:
            raise ConfigError(why)
    if args.style_weights is not None and len(args.style) == 1:
        raise ConfigError("--style-weights blends two or more --style images (one style has "
                          "nothing to blend); the style loss's weight is --style-weight")


#: GatysConfig's field names in its messages -> the gatys command's options (`--iters -1` said
#: "iterations must be an integer >= 0": an option the command does not have).
_GATYS_OPTION_OF = {
    "iterations": "--iters", "learning_rate": "--lr", "style_scale": "--style-scale",
    "stage sizes": "--stages", "stage iterations": "--stage-iters",
    "content_weight": "--content-weight", "style_weight": "--style-weight",
    "tv_weight": "--tv-weight", "depth_growth": "--depth-growth",
    "lbfgs_memory": "--lbfgs-memory", "chunk_size": "--chunk", "seed": "--seed"}


def gatys_config_from_args(args: argparse.Namespace):
    with options_named(_GATYS_OPTION_OF):
        return _gatys_config_from_args(args)


def _gatys_config_from_args(args: argparse.Namespace):
    from . import gatys

    d = gatys.GatysConfig()
    _refuse_inapplicable(args)
    stages = (_int_list(args.stages, what="--stages")
              if args.stages and args.stages != "none" else ())
    stage_iters = (_int_list(args.stage_iters, what="--stage-iters")
                   if args.stage_iters else None)
    if stage_iters is not None and len(stage_iters) != len(stages) + 1:
        raise ConfigError(f"--stage-iters needs {len(stages) + 1} values (one per --stages entry "
                          f"and one for the final size), got {len(stage_iters)}")
    if any(s >= args.size for s in stages):
        raise ConfigError(f"--stages must be smaller than --size {args.size}, got {list(stages)}")
    if any(b <= a for a, b in zip(stages, stages[1:])):  # (64,48 ran in the order given)
        raise ConfigError(f"--stages must be increasing (coarse to fine), got {list(stages)}")
    return gatys.GatysConfig(
        content_layers=parse_layers(args.content_layers, what="content"),
        style_layers=parse_layers(args.style_layers, what="style"),
        content_weight=args.content_weight, style_weight=args.style_weight,
        tv_weight=args.tv_weight, depth_growth=args.depth_growth,
        style_statistic=args.style_statistic, gram_norm=args.gram_norm, tv_kind=args.tv_kind,
        pooling=args.pooling, normalized_vgg=args.normalized_vgg, optimizer=args.optimizer,
        iterations=d.iterations if args.iters is None else args.iters,
        learning_rate=d.learning_rate if args.lr is None else args.lr,
        lbfgs_memory=args.lbfgs_memory, parameterization=args.param, chunk_size=args.chunk,
        init=args.init, seed=d.seed if args.seed is None else args.seed,
        style_scale=args.style_scale, preserve_color=_preserve(args),
        color_space=args.color_space,
        color_match_method=(d.color_match_method if args.color_match is None
                            else args.color_match),
        stage_sizes=stages,
        stage_iterations=stage_iters)


#: The gatys command's result-changing settings in a batch output name, in the order of its
#: --help: GatysConfig field -> the name's part for a value off the default. Not named:
#: chunk_size and color_space (the same pixels), --batch-size, --max-pixels.
_GATYS_NAME_PARTS: dict[str, Callable[[Any], str]] = {
    "style_scale": lambda v: f"scale{_number(v)}",
    "iterations": lambda v: f"iterations{v}",  # (as stylize --method gatys names it)
    "optimizer": lambda v: v,
    "learning_rate": lambda v: f"lr{_number(v)}",
    "lbfgs_memory": lambda v: f"memory{v}",
    "parameterization": lambda v: f"param-{v}",
    "init": lambda v: f"init-{v}",
    "seed": lambda v: f"seed{v}",
    "stage_sizes": lambda v: "stages" + "-".join(map(str, v)),
    "stage_iterations": lambda v: "stageiters" + "-".join(map(str, v)),
    "content_weight": lambda v: f"cw{_number(v)}",
    "style_weight": lambda v: f"sw{_number(v)}",
    "tv_weight": lambda v: f"tv{_number(v)}",
    "content_layers": lambda v: "content-" + "+".join(f"{k}={_number(w)}" for k, w in v.items()),
    "style_layers": lambda v: "style-" + "+".join(f"{k}={_number(w)}" for k, w in v.items()),
    "depth_growth": lambda v: f"growth{_number(v)}",
    "style_statistic": lambda v: v,
    "gram_norm": lambda v: f"gramnorm-{v}",
    "tv_kind": lambda v: f"tv-{v}",
    "pooling": lambda v: f"{v}pool",
    "normalized_vgg": lambda v: "normalized-vgg",
    "preserve_color": lambda v: f"preserve-{v}",
    "color_match_method": lambda v: f"match-{v}",
}
#: Bytes of settings a gatys output name spells out; the rest is one ``opts{hash}`` part (a
#: name holds 255 bytes, and the content's and styles' parts come first).
_GATYS_NAME_ROOM = 120


def _gatys_settings(cfg, size: int) -> str:
    """``__size{N}__iterations{N}__adam...``: the settings of ``cfg`` (and --size) off their
    defaults, for a batch output name (``{content}__{styles}__gatys{settings}.png``); "" at the
    defaults, the names of earlier versions. Two runs with another --iters, --seed, --optimizer, ...
    into one folder got one name: the second skipped every photo as "exists"."""
    import hashlib

    from . import gatys

    d = gatys.GatysConfig()
    parts = [f"size{size}"] if size != _GATYS_DEFAULT_SIZE else []
    parts += [part(getattr(cfg, f)) for f, part in _GATYS_NAME_PARTS.items()
              if getattr(cfg, f) != getattr(d, f)]
    shown, used = [], 0
    for i, p in enumerate(parts):
        if used + len(os.fsencode(p)) + 2 > _GATYS_NAME_ROOM:
            rest = "__".join(parts[i:])
            shown.append("opts" + hashlib.sha1(os.fsencode(rest)).hexdigest()[:8])
            break
        shown.append(p)
        used += len(os.fsencode(p)) + 2
    return "".join(f"__{p}" for p in shown)


def _load(path: str, max_pixels, work_side: int):
    """``path`` decoded for a working size of ``work_side``: at most twice that (a reduced-scale
    JPEG decode, then Lanczos; the caller resizes to the working size). A 9000x6000 photo at
    --size 64 took 3.1 GB and 56 s decoded and resized at full size."""
    from . import images

    kw = {} if max_pixels is None else {"max_pixels": max_pixels}
    return images.load_image(path, max_side=2 * work_side, **kw)


def _run_gatys(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from . import gatys, images
    from .cli_stylize import _summary
    from .inference import skipped_by_error

    if args.style_weights is not None and len(args.style_weights) != len(args.style):
        raise ConfigError(f"--style-weights: got {len(args.style_weights)} weights for "
                          f"{len(args.style)} style images")
    if args.style_weights is not None and sum(args.style_weights) <= 0:
        raise ConfigError("--style-weights must have a positive sum")
    cfg = gatys_config_from_args(args)
    # a path named twice is one job, as in stylize (by path, order kept; it was refused as
    # "is given twice"): `--content a.jpg photos/*.jpg` when the glob matches a.jpg too
    first: dict[str, str] = {}
    for c in args.content:
        first.setdefault(os.path.abspath(c), c)
    args.content = list(first.values())
    many = len(args.content) > 1
    # one content's own error first: output_paths blamed --out (`--content photos/ --out outs`
    # was "outs: unsupported output format (no extension)")
    if not many and os.path.isdir(args.content[0]):
        raise ImageError(args.content[0], "is a directory, expected an image file (a folder: "
                         "`infer.py --content DIR --style S --method gatys --out-dir OUT`)")
    if not many and not os.path.lexists(args.content[0]):  # ("photo.jpg/": not a directory)
        from .files import regular_file_problem

        raise ImageError(args.content[0], regular_file_problem(args.content[0]) or "no such file")
    # several contents: an existing output is skipped (and reported), not the job's error, so
    # the same command finishes an interrupted batch; one content: the job's error, as before
    unusable: dict[int, NSTError] = {}
    # named by the styles too, as stylize's batches are (`{content}_gatys.png`: a second
    # style's batch into the same folder skipped every photo as "exists"), and by unequal
    # --style-weights as given (`a+b@0.7-0.3`)
    tag = "+".join(Path(s).stem for s in args.style)
    if args.style_weights is not None and len(set(args.style_weights)) > 1:
        tag += "@" + "-".join(_number(w) for w in args.style_weights)
    settings = _gatys_settings(cfg, args.size)
    outs = output_paths(args.out, args.content, tag=tag, keep="__gatys" + settings,
                        overwrite=args.overwrite,
                        inputs=args.style, skip_existing=many,
                        unusable=unusable if many else None)
    existing = existing_outputs(outs, overwrite=args.overwrite)
    from .vgg import MIN_SIZE

    # (gatys.run brings each style to style_scale x the content's side, the content's is --size)
    style_side = max(MIN_SIZE, round(args.style_scale * args.size))
    styles = [_load(s, args.max_pixels, style_side) for s in args.style]  # a bad one stops it
    t0 = time.perf_counter()
    # Contents: a bad one is skipped and reported, the rest go on (as in stylize's batches).
    # Each is resized to the working size; same-shape contents form one batch each.
    work: dict[int, np.ndarray] = {}
    skipped: list = []
    done = 0

    def skip(i: int, e: NSTError) -> None:
        skipped.append(skipped_by_error(Path(args.content[i]), outs[i], e))
        print(f"skipped: {one_line(e)}", file=sys.stderr)

    running: list[int] = []  # the contents of the batch being optimized
    try:
        for i, c in enumerate(args.content):
            if i in unusable:
                skip(i, unusable[i])
                continue
            if i in existing:
                skip(i, ImageError(outs[i], "exists; pass --overwrite to replace it"))
                continue
            try:
                x = images.resize_max_side(_load(c, args.max_pixels, args.size), args.size,
                                           upscale=True)
                if min(x.shape[:2]) < 32:
                    raise ImageError(c, f"is too thin: {x.shape[1]}x{x.shape[0]} at --size "
                                        f"{args.size}; VGG needs >= 32 px per side")
            except NSTError as e:
                if not many:  # nothing else to go on with: the job's error
                    raise
                skip(i, e)
                continue
            work[i] = x
        groups: dict[tuple[int, int], list[int]] = {}
        for i, x in work.items():
            groups.setdefault(x.shape[:2], []).append(i)
        # (--batch-size: all of a size in one batch needed memory for all of them, 40 photos
        # at 512 px ran out of it, and Ctrl-C lost the whole batch)
        step = args.batch_size or max(map(len, groups.values()), default=1)
        batches = [(shape, idx[k:k + step]) for shape, idx in groups.items()
                   for k in range(0, len(idx), step)]
        params = gatys.load_params(cfg) if groups else None
        for shape, idx in batches:
            if len(batches) > 1 and not args.quiet:
                print(f"batch of {len(idx)} at {shape[1]}x{shape[0]}", file=sys.stderr)
            running = idx
            # (several contents: one that makes no progress or diverges is skipped by its
            # file name; it stopped the whole job as "example [0]" of a size group)
            result = gatys.run(np.stack([work[i] for i in idx]), styles,
                               style_weights=args.style_weights, config=cfg,
                               progress=not args.quiet, vgg_params=params,
                               style_names=[str(s) for s in args.style],
                               failures="report" if many else "raise")
            running = []
            final = result.final_terms()
            for j, i in enumerate(idx):
                if j in result.failures:
                    skip(i, ImageError(args.content[i], result.failures[j]))
                    continue
                try:
                    images.save_image(outs[i], result.images[j], overwrite=args.overwrite)
                except NSTError as e:
                    skip(i, e)
                    continue
                done += 1
                if j in result.worse_than_start:  # (written: it is a result, a poor one)
                    why = result.worse_than_start[j]
                    print(f"warning: {outs[i]}: {why} ("
                          f"{'--optimizer lbfgs' if gatys.AT_MINIMUM in why else '--lr'})",
                          file=sys.stderr)
                if not args.quiet:
                    terms = {k: float(final[k][j]) for k in ("total", "content", "style", "tv")
                             if k in final}
                    print(f"wrote {outs[i]}" + "".join(f"  {k}={v:.4g}" for k, v in terms.items())
                          + ("" if terms else " (0 iterations: the initial image)"),
                          file=sys.stderr)
    except KeyboardInterrupt:
        if many:  # what is on disk and how to finish (main says "error: interrupted", 130)
            # a batch's results are written when its optimization ends: none of the batch
            # being optimized is kept
            lost = (f" (the {len(running)} images of the batch being optimized are lost: a "
                    "batch is written when it ends)" if len(running) > 1 else "")
            print(f"{_summary(done, skipped, time.perf_counter() - t0, len(args.content))}; "
                  "interrupted: the images written stay; run the same command again to do the "
                  "rest (the outputs written are skipped as 'output exists', so that run ends "
                  f"with status 1){lost}", flush=True)
        raise
    if many or skipped:
        print(_summary(done, skipped, time.perf_counter() - t0, len(args.content)))
    return EXIT_ERROR if skipped else 0


command("gatys", "Gatys et al. style transfer by optimizing the pixels (L-BFGS or Adam).",
        _add_gatys_arguments)(_run_gatys)


# ----------------------------------------------------------------------------------------------
# analyze


def _add_analyze_arguments(p: argparse.ArgumentParser) -> None:
    from . import analysis

    p.add_argument("--content", default=None,
                   help="content image (default: the built-in 'chelsea' sample)")
    p.add_argument("--style", default=None,
                   help="style image (default: the built-in 'strokes' sample)")
    p.add_argument("--out-dir", required=True, help="folder for the PNG figures")
    p.add_argument("--size", type=count_arg(32, MAX_GATYS_SIZE), default=None,
                   help="longer side of the images optimized for the figures "
                        f"(default {analysis.DEFAULT_SIZE})")
    p.add_argument("--iters", "--iterations", type=count_arg(), default=None,
                   help="L-BFGS iterations per reconstruction / transfer "
                        f"(default {analysis.DEFAULT_ITERS})")
    p.add_argument("--figures", default=",".join(analysis.FIGURES),
                   help="which figures, comma-separated letters: " + ", ".join(
                       f"{k} {v[2:-4].replace('_', ' ')}" for k, v in analysis.FILENAMES.items()))
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {analysis.QUICK_SIZE} px and {analysis.QUICK_ITERS} "
                        "iterations")
    p.add_argument("--max-pixels", type=count_arg(), default=None, metavar="N",
                   help="refuse input images with more pixels (default: the I/O module's "
                        "limit, 64 megapixels)")
    p.add_argument("--overwrite", action="store_true", help="replace existing figure files")
    p.add_argument("--quiet", "--no-progress", action="store_true", help="no progress output")


def _run_analyze(args: argparse.Namespace) -> int:
    from . import analysis, images

    check_named(args.out_dir, "--out-dir", "the folder for the figures")
    figs = list(dict.fromkeys(f.strip() for f in args.figures.split(",") if f.strip()))
    bad = [f for f in figs if f not in analysis.FIGURES]
    if bad or not figs:
        raise ConfigError(f"--figures: unknown {bad or figs}; choose from "
                          f"{','.join(analysis.FIGURES)}")
    for option, given, uses in (("--content", args.content, analysis.USES_CONTENT),
                                ("--style", args.style, analysis.USES_STYLE)):
        if given and not set(figs) & set(uses):  # (it was read and ignored)
            raise ConfigError(f"{option} applies to figures {','.join(uses)}; --figures "
                              f"{','.join(figs)} does not show it")
    if args.quick and (args.size is not None or args.iters is not None):  # (ignored silently)
        raise ConfigError(f"--quick sets --size {analysis.QUICK_SIZE} and --iters "
                          f"{analysis.QUICK_ITERS}; give either --quick or --size / --iters")
    size, iters = (analysis.QUICK_SIZE, analysis.QUICK_ITERS) if args.quick else (
        args.size or analysis.DEFAULT_SIZE, args.iters or analysis.DEFAULT_ITERS)
    # (the figures take the content at --size and the style at twice it)
    # (--max-pixels: the limit's message names it; analyze did not have it)
    content = _load(args.content, args.max_pixels, size) if args.content else None
    style = _load(args.style, args.max_pixels, 2 * size) if args.style else None
    for path, x in ((args.content, content), (args.style, style)):
        if x is not None:  # both are optimized at --size (the style at the content's scale)
            w, h = images.shown_size(path)  # (x may be read smaller)
            short = round(min(h, w) * size / max(h, w))
            if short < 32:  # (it was "style image 1 is ..." from deep inside, unnamed)
                raise ImageError(path, f"is {w}x{h}: {short} px on its short side at --size "
                                       f"{size}; the VGG needs >= 32 px per side: a larger "
                                       "--size or a less elongated image")
    written = analysis.make_figures(args.out_dir, content=content, style=style, size=size,
                                    iters=iters, figures=figs, overwrite=args.overwrite,
                                    verbose=not args.quiet,
                                    inputs=[p for p in (args.content, args.style) if p])
    if args.quiet:  # (otherwise each "figure X: path" line named it already)
        for path in written:
            print(path)
    return 0


command("analyze", "Write the analysis figures of Gatys-style transfer (reconstructions, Gram "
        "matrices, weight sweep, style statistics, per-layer loss magnitudes).",
        _add_analyze_arguments)(_run_analyze)


# ----------------------------------------------------------------------------------------------
# export-onnx


def _add_export_onnx_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PATH",
                   help="model export (.safetensors) or training workdir (default: the built-in "
                        "model)")
    p.add_argument("--out", required=True, metavar="FILE.onnx",
                   help="where to write the ONNX graph (content + style embedding -> stylized)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing onnxruntime's output with the JAX forward")


def _run_export_onnx(args: argparse.Namespace) -> int:
    import numpy as np

    from .inference import Stylizer, bucket_shape, pad_to
    from .onnx_export import OnnxTransfer, save_transfer_onnx

    from .files import check_output_file

    check_named(args.out, "--out", "the ONNX file to write")
    out = check_output_file(args.out, overwrite=args.overwrite, suffixes={".onnx"})
    if args.model and str(args.model).lower().endswith(".onnx") and os.path.isfile(args.model):
        # (the loader's message suggested --backend onnxruntime, which export-onnx has not)
        raise ConfigError(f"{args.model}: already an ONNX export; --model takes the model "
                          "export (.safetensors) or training workdir to convert (run the .onnx "
                          "with OnnxTransfer or onnxruntime; stylize --backend onnxruntime "
                          "takes the .safetensors)")
    st = Stylizer.load(args.model)
    checked: list[float] = []

    def check(data: bytes) -> None:
        """The file's bytes on their own, as a deployment runs them (OnnxTransfer pads before
        the graph), against JAX; run before the file is written, so that a graph that fails
        leaves nothing behind (and, with --overwrite, the earlier file in place)."""
        rng = np.random.default_rng(0)
        x = rng.random((1, 61, 70, 3)).astype(np.float32)  # (padded inside the graph)
        e = rng.normal(size=(1, st.embedding_dim)).astype(np.float32)
        raw = OnnxTransfer(data).session.run(["stylized"], {"content": x, "embedding": e})[0]
        padded = pad_to(x[0], bucket_shape(61, 70, None))[None]
        diff = float(np.abs(raw - np.asarray(st.model.transfer(padded, e))[:, :61, :70]).max())
        if not diff < 1e-4:
            raise ConfigError(f"{out}: onnxruntime differs from JAX by {diff:.2g} (> 1e-4); "
                              "not written")
        checked.append(diff)

    path = save_transfer_onnx(st.model, out, check=None if args.no_check else check)
    msg = f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB; width {st.model.width})"
    if checked:
        msg += f"; onnxruntime vs JAX max abs difference {checked[0]:.1e}"
    if st.model.palette:  # (a deployment that runs the graph alone gets muted colours)
        msg += (f"\nnote: the model's palette ({st.model.palette:g}) is not in the graph; apply "
                "it after the graph (README, \"onnxruntime\"), as backend='onnxruntime' does")
    print(msg)
    return 0


command("export-onnx", "Export the transfer network (+ the style heads) to ONNX for CPU "
        "deployment with onnxruntime; style embeddings come from Stylizer.embed.",
        _add_export_onnx_arguments)(_run_export_onnx)


# ----------------------------------------------------------------------------------------------
# fit-style


def _add_fit_style_arguments(p: argparse.ArgumentParser) -> None:
    from . import fit_style

    p.add_argument("--style", required=True, metavar="S", help="the style image to fit")
    p.add_argument("--photos", required=True, nargs="+", action="extend", metavar="P",
                   help="photos to fit on (files, folders or quoted globs): a sample of what the "
                        "style will be applied to; not stored in the result")
    p.add_argument("--out", required=True, metavar="FILE.npz",
                   help="where to write the fitted style (use it as --style of stylize)")
    p.add_argument("--steps", type=int, default=fit_style.DEFAULT_STEPS, metavar="N",
                   help="Adam steps (1.8-3.6 s each at batch 4 and 256 px on a 2-core CPU)")
    p.add_argument("--lr", type=positive_float_arg, default=fit_style.DEFAULT_LEARNING_RATE,
                   help="Adam learning rate on the gamma/beta")
    p.add_argument("--batch-size", type=count_arg(), default=fit_style.DEFAULT_BATCH_SIZE,
                   metavar="N",
                   help="photos per step")
    p.add_argument("--style-weight", type=_nonneg_float, default=fit_style.DEFAULT_STYLE_WEIGHT,
                   metavar="W", help="weight of the style term against content (the built-in "
                                     "model's training balance; lower keeps more of the photos)")
    p.add_argument("--size", type=count_arg(32, MAX_STYLE_SIZE), default=fit_style.DEFAULT_SIZE,
                   metavar="N", help="photo working size: shorter side resized to N, centre square")
    p.add_argument("--seed", type=count_arg(0, MAX_SEED), default=0, help="photo order")
    p.add_argument("--model", metavar="PATH",
                   help="model export (.safetensors) or training workdir (default: the built-in "
                        "model); the fitted style works with this model only")
    p.add_argument("--recursive", action="store_true", help="also take photos in subfolders")
    p.add_argument("--max-pixels", type=count_arg(), default=None, metavar="N",
                   help="refuse image files with more pixels (default: the I/O module's "
                        "limit, 64 megapixels)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--no-progress", "--quiet", action="store_true", help="no progress bar")


def _run_fit_style(args: argparse.Namespace) -> int:
    import time

    from . import fit_style, images
    from .inference import Stylizer

    from .files import check_output_file

    check_named(args.out, "--out", "the fitted style file (.npz) to write")
    if Path(args.out).suffix.lower() != fit_style.SUFFIX:  # (.NPZ: a style, as everywhere)
        raise ConfigError(f"{args.out}: --out must end in {fit_style.SUFFIX}")
    if fit_style.is_fitted_style_path(args.style):
        raise ConfigError(f"{args.style}: --style must be a style image (fit-style fits one; "
                          f"this is already a fitted style)")
    if args.steps < 1:  # (the API's 0-step fit is its start, for a baseline; a file of it is
        # the predicted style under another name, taken for a fit by whoever uses it; checked
        # first: -1 was "must be an integer >= 0" from the API's check)
        raise ConfigError(f"--steps must be >= 1, got {args.steps}" + (
            ": a fit of 0 steps is the predicted style itself (use --style with the painting "
            "instead)" if args.steps == 0 else ""))
    with options_named({"fit learning rate": "--lr", "fit batch size": "--batch-size",
                        "fit style weight": "--style-weight", "fit steps": "--steps"}):
        fit_style.check_options(args.steps, args.lr, args.batch_size, args.style_weight)
    if args.recursive and all(os.path.exists(p) and not os.path.isdir(p)  # (ignored, as
                              for p in args.photos):  # stylize's --content refuses it)
        raise ConfigError("--recursive applies to --photos folders; none given")
    # each photo once ("--photos c c 'c/*.jpg'" said 6 photos for 2), and never the painting
    # itself (fitted on as a photo, silently); sorted: the fit draws its batches by index, so
    # the same photos listed in another order gave another fit under the same record
    photos = sorted(set(
        os.path.abspath(p) for spec in args.photos
        for p in images.list_images(spec, recursive=args.recursive)))
    style_real = os.path.realpath(args.style)
    if any(os.path.realpath(p) == style_real for p in photos):
        raise ConfigError(f"--photos holds the painting {args.style} itself; fit on photos of "
                          "what the style will be applied to")
    out = check_output_file(args.out, overwrite=args.overwrite, inputs=[args.style, *photos],
                            suffixes={fit_style.SUFFIX})
    t0 = time.perf_counter()
    st = Stylizer.load(args.model)
    if args.max_pixels is not None:  # (the limit's message names --max-pixels: fit-style did
        st.max_pixels = args.max_pixels  # not have it)
    fs = st.fit_style(args.style, photos, steps=args.steps, learning_rate=args.lr,
                      batch_size=args.batch_size, size=args.size, seed=args.seed,
                      style_weight=args.style_weight,
                      progress=not args.no_progress)
    for why in fs.info.get("skipped", []):
        print(f"skipped: {one_line(why)}", file=sys.stderr)
    fs.save(out, overwrite=args.overwrite)
    h = fs.history
    n_skip = len(fs.info.get("skipped", []))
    skips = f" ({n_skip} skipped: exit status 1, as for batch runs)" if n_skip else ""
    n_photos = fs.info["photos"]
    print(f"wrote {out}: {n_photos} photo{'s' if n_photos != 1 else ''}{skips}, {args.steps} "
          f"step{'s' if args.steps != 1 else ''}, loss "
          f"{h[0]:.4g} -> {h[-1]:.4g} ({time.perf_counter() - t0:.1f} s)")
    return 1 if n_skip else 0


command("fit-style", "Fit a style's conditioning (gamma/beta) on photos once and save it "
        "(.npz): lower style loss than the predicted style, at the same speed when used.",
        _add_fit_style_arguments)(_run_fit_style)


# ----------------------------------------------------------------------------------------------
# stylize (the default command) and demo


def _register_stylize_and_demo() -> None:
    from . import cli_demo, cli_stylize

    command("stylize", "Stylize images with the trained network (the default command: "
            "`infer.py --content C --style S --out O`).",
            cli_stylize.add_arguments)(cli_stylize.run)
    command("demo", "Run the built-in demo (make demo): stylize built-in photos with unseen "
            "generated styles, an interpolation strip and a strength sweep.",
            cli_demo.add_arguments)(cli_demo.run)


_register_stylize_and_demo()
