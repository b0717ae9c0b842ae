"""``demo``: the main job on built-in defaults (``make demo`` runs it).

Writes the built-in images (photos from the scikit-image wheel; procedurally generated paintings
that no model has seen in training) to ``OUT/inputs``, then with the built-in model:

* ``OUT/stylized/{content}__{style}.png`` for the 3 demo photos (:data:`DEMO_CONTENTS`) x the 4
  generated styles (batch path);
* ``OUT/interpolation.png``: a strip mixing two styles' embeddings;
* ``OUT/strength_sweep.png``: strength 0 -> 1 for one style.

Without a trained model (``--method gatys``, or no built-in model installed) it runs the Gatys
optimizer on one pair instead, so the demo always produces a stylized image. A ``--model`` that
was named but cannot be loaded is an error, not a reason to fall back.

The demo replaces its own earlier results, so it writes only into a new or empty folder or one
it made before (marked by a ``.arbitrary_nst-demo`` file, or holding only the demo's own
entries): never over a user's files.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from . import cli_stylize, files, images, samples
from .errors import ConfigError, ModelError, check_named, count_arg

DEMO_CONTENTS = ("astronaut", "chelsea", "coffee")
DEMO_STYLES = ("strokes", "mosaic", "waves", "cubist")
MARKER = ".arbitrary_nst-demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", default="out/demo", help="where the demo writes its images")
    parser.add_argument("--model", default=None,
                        help="model export or training workdir (default: the built-in model)")
    parser.add_argument("--max-size", type=count_arg(32, 4096), default=512,
                        help="longer side of the stylized photos")
    parser.add_argument("--method", choices=("network", "gatys"), default="network",
                        help="'gatys' skips the network and runs the pixel optimizer")
    parser.add_argument("--iterations", type=count_arg(), default=150,
                        help="Gatys iterations when the Gatys path runs")
    parser.add_argument("--no-progress", "--quiet", action="store_true",
                        help="no progress bars")


def _claim(out: Path) -> None:
    """Make ``out`` the demo's folder: new, empty, or marked by an earlier demo run."""
    files.check_writable_dir(out)
    # Only the marker says a folder is the demo's: names alone do not (a user's own
    # interpolation.png in a folder holding just that was replaced)
    if not (out / MARKER).is_file() and any(out.iterdir()):
        raise ConfigError(f"{out}: not empty and not an earlier demo's folder (the demo "
                          "replaces its own files); choose a new or empty --out-dir, or delete "
                          "it if it is a demo folder of an older version")
    (out / MARKER).write_text("written by `infer.py demo`; its files are replaced on rerun\n")


def _write_inputs(out: Path, max_size: int) -> tuple[Path, Path]:
    content_dir, style_dir = out / "inputs" / "content", out / "inputs" / "style"
    for name in DEMO_CONTENTS:
        images.save_image(content_dir / f"{name}.png", samples.content_image(name, max_side=max_size),
                          overwrite=True)
    for name in DEMO_STYLES:
        images.save_image(style_dir / f"{name}.png", samples.style_image(name, size=512),
                          overwrite=True)
    return content_dir, style_dir


def _stylize(argv: list[str]) -> int:
    """Run the ``stylize`` command in-process; errors are raised, not printed."""
    parser = cli_stylize.build_parser()
    return cli_stylize.run(parser.parse_args(argv))


def _path_arg(path: str | Path) -> str:
    """A path as a value in :func:`_stylize`'s argv: ``./-demo`` for ``-demo``, which argparse
    took for an option (``demo --out-dir=-demo`` failed on "--content: expected at least one
    argument" after writing its inputs)."""
    text = str(path)
    return os.path.join(".", text) if text.startswith("-") else text


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    check_named(args.out_dir, "--out-dir", "the folder for the demo's images")
    out = Path(args.out_dir)
    method = args.method
    if method == "gatys" and args.model:  # (before any file is written)
        raise ConfigError("--model applies to --method network only")
    if method == "network":
        try:
            cli_stylize.load_stylizer(args.model)
        except ModelError as e:
            if args.model:  # the user's own model: an error, not a silent change of method
                raise
            print(f"demo: no trained model ({e}); running the Gatys optimizer instead")
            method = "gatys"
    _claim(out)
    content_dir, style_dir = _write_inputs(out, args.max_size)
    styles = [_path_arg(style_dir / f"{s}.png") for s in DEMO_STYLES]
    common = ["--max-size", str(args.max_size)] + (["--no-progress"] if args.no_progress else [])
    if args.model:
        common += ["--model", _path_arg(args.model)]
    written, rc = [], 0
    if method == "network":
        for style in styles:  # one call per style: several --style values would be mixed
            rc = max(rc, _stylize(["--content", _path_arg(content_dir), "--style", style,
                                   "--out-dir", _path_arg(out / "stylized"), "--overwrite",
                                   *common]))
        written.append(out / "stylized")
        photo = _path_arg(content_dir / "astronaut.png")
        rc = max(rc, _stylize(["--content", photo, "--interpolate", styles[0], styles[2],
                               "--steps", "5", "--out", _path_arg(out / "interpolation.png"),
                               "--overwrite", *common]))
        rc = max(rc, _stylize(["--content", photo, "--style", styles[1], "--strength-sweep", "5",
                               "--out", _path_arg(out / "strength_sweep.png"), "--overwrite",
                               *common]))
        written += [out / "interpolation.png", out / "strength_sweep.png"]
    else:
        target = out / "gatys" / "astronaut__strokes.png"
        rc = _stylize(["--method", "gatys", "--content", _path_arg(content_dir / "astronaut.png"),
                       "--style", styles[0], "--out", _path_arg(target), "--overwrite",
                       "--iterations", str(args.iterations), *common])
        written.append(target)
    print(f"demo: wrote {', '.join(str(p) for p in written)} in {time.perf_counter() - t0:.1f} s"
          + ("" if rc == 0 else " (some images were skipped: see above)"))
    return rc
