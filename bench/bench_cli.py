"""What the bench scripts share: options checked before the measurements, the output file
refused up front if it exists (``--overwrite`` replaces it), the JSON written atomically, and
the ``meta`` record (command, commit, date, versions, device) every result file carries. (Bad
counts and outputs were tracebacks, or negative rates written into the committed results, an
unwritable --json found only after the whole measurement, and a one-row trial run silently
replaced the committed file behind a README table.)"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable, NoReturn

if __name__ == "__main__":  # (a module, not a command: run as one it was an ImportError)
    raise SystemExit("bench/bench_cli.py is what the bench scripts share, not a command; run one "
                     "of them, e.g. `python bench/infer.py --help`")

from arbitrary_nst.errors import ConfigError, NSTError
from arbitrary_nst.files import check_output_file, write_atomically

ROOT = Path(__file__).resolve().parents[1]

#: what the ``*_mb`` fields of the result files count (they were labelled "MB")
UNITS_NOTE = "every *_mb field is in MiB (2^20 bytes)"

OVERWRITE_HELP = "replace an existing --json file (without it an existing one is refused " \
                 "before anything is measured)"


def add_overwrite(parser, option: str = "--json") -> None:
    """The ``--overwrite`` flag every bench script has."""
    parser.add_argument("--overwrite", action="store_true",
                        help=OVERWRITE_HELP.replace("--json", option))


def check_options(args, minimums: dict[str, float], out, option: str = "--json") -> Path | None:
    """Each ``args.<name>`` (a number or a list of them; ``None`` = its default) is at least
    ``minimums[name]``, and ``out`` can be written as a ``.json`` file (``None``: no output):
    not a folder, and not an existing file unless ``args.overwrite``. One ConfigError each."""
    for name, low in minimums.items():
        values = getattr(args, name)
        for v in values if isinstance(values, list) else [values]:
            if v is not None and not v >= low:  # (not >=: NaN is refused too)
                raise ConfigError(f"--{name.replace('_', '-')} must be >= {low:g}, got {v}")
    if out is None:
        return None
    try:
        return check_output_file(out, overwrite=bool(getattr(args, "overwrite", False)),
                                 suffixes={".json"})
    except NSTError as e:
        raise ConfigError(f"{option} {e}") from None


def write_json(path: Path, obj, indent: int = 2) -> None:
    text = json.dumps(obj, indent=indent) + "\n"
    write_atomically(path, lambda f: f.write(text.encode()))


def _git(*args: str) -> str | None:
    try:
        p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    return p.stdout if p.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def meta(script: str | os.PathLike, argv: list[str] | None = None) -> dict:
    """Which code, machine and command produced a result file: ``command`` (``python
    bench/x.py ARGS`` as a shell line; ``argv`` defaults to ``sys.argv[1:]``), ``git_commit``
    (None outside a git checkout) and ``git_dirty`` (tracked files changed), ``date_utc``,
    ``versions``, ``device`` (JAX's first device, only when the script has imported JAX:
    this never imports it) and ``cpu_count``."""
    script = Path(script).resolve()
    try:
        shown = script.relative_to(ROOT).as_posix()
    except ValueError:
        shown = str(script)
    args = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    top = _git("rev-parse", "--show-toplevel")  # (this checkout's, not an enclosing repo's)
    ours = top is not None and os.path.realpath(top.strip()) == os.path.realpath(ROOT)
    head = _git("rev-parse", "HEAD") if ours else None
    status = _git("status", "--porcelain", "--untracked-files=no") if head else None
    versions = {"python": platform.python_version()}
    for dist in ("jax", "jaxlib", "flax", "numpy", "onnxruntime"):
        v = _version(dist)
        if v is not None or dist != "onnxruntime":  # (onnxruntime: only where installed)
            versions[dist] = v
    device = None
    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            d = jax.devices()[0]
            device = {"kind": d.device_kind, "platform": d.platform, "count": jax.device_count()}
        except Exception as e:  # noqa: BLE001 - a backend that cannot start: say so
            device = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"}
    return {"command": shlex.join(["python", shown, *args]),
            "git_commit": head.strip() if head else None,
            "git_dirty": None if status is None else bool(status.strip()),
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions, "device": device, "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "os": platform.platform()}


def run_main(main: Callable[[], int]) -> NoReturn:
    """A bench script's ``__main__``: ``sys.exit(main())``, a bad option or input (NSTError)
    as one ``error: ...`` line and exit status 1, as the other commands."""
    try:
        sys.exit(main())
    except NSTError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)
