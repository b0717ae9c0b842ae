"""What the bench scripts share: options checked before the measurements, the JSON written
atomically. (Bad counts and outputs were tracebacks, or negative rates written into the
committed results, or an unwritable --json found only after the whole measurement.)"""
from __future__ import annotations

import json
from pathlib import Path

from arbitrary_nst.errors import ConfigError, NSTError
from arbitrary_nst.files import check_output_file, write_atomically


def check_options(args, minimums: dict[str, float], out, option: str = "--json") -> Path:
    """Each ``args.<name>`` (a number or a list of them; ``None`` = its default) is at least
    ``minimums[name]``, and ``out`` can be written as a ``.json`` file: one ConfigError each."""
    for name, low in minimums.items():
        values = getattr(args, name)
        for v in values if isinstance(values, list) else [values]:
            if v is not None and not v >= low:  # (not >=: NaN is refused too)
                raise ConfigError(f"--{name.replace('_', '-')} must be >= {low:g}, got {v}")
    try:
        return check_output_file(out, overwrite=True, suffixes={".json"})
    except NSTError as e:
        raise ConfigError(f"{option} {e}") from None


def write_json(path: Path, obj, indent: int = 2) -> None:
    text = json.dumps(obj, indent=indent) + "\n"
    write_atomically(path, lambda f: f.write(text.encode()))
