"""pyproject.toml lists every package of the library and ships the built-in model, so that
`pip install .` gives a working `Stylizer.load()` outside the checkout."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_and_the_builtin_model():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    lib = ROOT / "arbitrary_nst"
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in lib.rglob("__init__.py")}
    found |= {".".join(d.relative_to(ROOT).parts) for d in lib.rglob("*")
              if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.safetensors"))}
    assert set(cfg["packages"]) == found
    from arbitrary_nst.inference import BUILTIN_MODEL
    pkg = ".".join(Path(BUILTIN_MODEL).parent.relative_to(ROOT).parts)
    assert any(Path(BUILTIN_MODEL).match(pattern)
               for pattern in cfg["package-data"][pkg])
