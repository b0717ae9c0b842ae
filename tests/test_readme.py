"""The README's Python is checked against the code: every call it shows (in ```python blocks and
in inline `code`) of something this package defines must name a function, class, method or
attribute that exists and pass arguments its signature accepts. (A walkthrough found
`Stylizer(buckets=None)` for `Stylizer.load(buckets=None)`, a block using `np` without importing
it, and `OnnxTransfer` said to be importable from where it is not.)"""
from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import arbitrary_nst

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MODULES = ("analysis", "color", "data", "distill", "evaluate", "export", "files", "fit_style",
           "gatys", "images", "inference", "losses", "onnx_export", "peers", "refine",
           "samples", "training", "vgg", "weights")


class Instance:
    """A value known to be an instance of ``cls`` (``s = Stylizer.load()``)."""

    def __init__(self, cls):
        self.cls = cls


def _namespace() -> dict:
    ns = {name: getattr(arbitrary_nst, name) for name in arbitrary_nst.__all__}
    ns.update({m: importlib.import_module(f"arbitrary_nst.{m}") for m in MODULES})
    ns.update(arbitrary_nst=arbitrary_nst, np=np)
    # the names the README gives its example objects
    ns.update(s=Instance(arbitrary_nst.Stylizer), fast=Instance(arbitrary_nst.Stylizer),
              stylizer=Instance(arbitrary_nst.Stylizer),
              fs=Instance(importlib.import_module("arbitrary_nst.fit_style").FittedStyle))
    return ns


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def _inline_snippets() -> list[str]:
    """Inline `code` that parses as Python and calls something (CLI lines do not parse)."""
    out = []
    for span in re.findall(r"`([^`\n]+)`", README):
        if "(" not in span or span.startswith(("python ", "make ", ".venv")):
            continue
        try:
            ast.parse(span)
        except SyntaxError:
            continue
        out.append(span)
    return out


class _Unknown(Exception):
    """An expression the check cannot follow (a placeholder like ``photo``): not checked."""


def _resolve(node, ns):
    if isinstance(node, ast.Name):
        if node.id not in ns:
            raise _Unknown(node.id)
        return ns[node.id]
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, ns)
        if isinstance(base, Instance):
            if not hasattr(base.cls, node.attr) and node.attr not in _instance_attrs(base.cls):
                raise AssertionError(f"{base.cls.__name__} has no attribute {node.attr!r}")
            member = inspect.getattr_static(base.cls, node.attr, None)
            if isinstance(member, (staticmethod, classmethod)):
                return getattr(base.cls, node.attr)
            if member is None:  # (set on the instance)
                raise _Unknown(node.attr)
            if inspect.isfunction(member):
                return ("method", member)
            raise _Unknown(node.attr)  # (a property or a data attribute)
        if inspect.ismodule(base) or inspect.isclass(base):
            if not hasattr(base, node.attr):
                raise AssertionError(f"{base.__name__} has no attribute {node.attr!r}")
            if inspect.isclass(base) and inspect.isfunction(
                    inspect.getattr_static(base, node.attr)):
                return ("method", getattr(base, node.attr))  # (`Stylizer.embed(...)`: a method)
            return getattr(base, node.attr)
        raise _Unknown(node.attr)
    if isinstance(node, ast.Call):
        f = _resolve(node.func, ns)
        _check_call(node, f)
        if f == arbitrary_nst.Stylizer.load:  # (bound methods are made anew: not `is`)
            return Instance(arbitrary_nst.Stylizer)
        if inspect.isclass(f):
            return Instance(f)
        raise _Unknown("a call's result")
    raise _Unknown(type(node).__name__)


def _instance_attrs(cls) -> set[str]:
    """Attributes set on instances in ``__init__`` (``self.x = ...``) or declared as fields."""
    names = set(getattr(cls, "__dataclass_fields__", {}))
    names |= set(getattr(cls, "__annotations__", {}))
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return names
    return names | set(re.findall(r"self\.([A-Za-z_]\w*)\s*(?::[^=\n]+)?=", src))


CHECKED: list[str] = []  # the calls whose arguments were bound to a signature


def _check_call(node: ast.Call, f) -> None:
    if any(isinstance(a, ast.Starred) for a in node.args) or any(
            k.arg is None for k in node.keywords):
        return
    args = [object()] * len(node.args)
    if isinstance(f, tuple):  # an instance's method: self first
        f, args = f[1], [object(), *args]
    if not callable(f):
        raise AssertionError(f"{ast.unparse(node.func)} is not callable")
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):  # (builtins without a signature)
        return
    try:
        sig.bind(*args, **{k.arg: object() for k in node.keywords})
    except TypeError as e:
        raise AssertionError(f"{ast.unparse(node)}: {e}") from None
    CHECKED.append(ast.unparse(node))


def _check_source(src: str, ns: dict) -> list[str]:
    problems = []
    tree = ast.parse(src)
    for stmt in tree.body:  # imports first, so the names they bind are known (and real)
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            try:
                exec(compile(ast.Module([stmt], []), "<README>", "exec"), ns)
            except ImportError as e:
                problems.append(f"{ast.unparse(stmt)}: {e}")
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call):
            try:  # `s = Stylizer.load()` makes `s` an instance for the lines after it
                v = _resolve(stmt.value, ns)
                for t in stmt.targets:
                    if isinstance(t, ast.Name):
                        ns[t.id] = v
            except _Unknown:  # (the name now holds something the check cannot follow)
                for t in stmt.targets:
                    if isinstance(t, ast.Name):
                        ns.pop(t.id, None)
            except AssertionError as e:
                problems.append(str(e))
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call):
                try:
                    _resolve(node, ns)
                except _Unknown:
                    pass
                except AssertionError as e:
                    problems.append(str(e))
    return problems


def test_the_readme_has_python_to_check():
    assert len(_python_blocks()) >= 2 and len(_inline_snippets()) >= 10


@pytest.mark.parametrize("i", range(len(_python_blocks())))
def test_python_blocks_call_what_exists(i):
    src = _python_blocks()[i]
    tree = ast.parse(src)
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
             and isinstance(n.ctx, ast.Store)}
    bound |= {a.asname or a.name.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    # what the block uses of numpy/JAX or this package it must import or make itself (`np`
    # was not imported); other names are the reader's placeholders (`photo`, `paths`)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    known = set(_namespace()) | {"np", "jnp", "jax"}
    assert sorted((used & known) - bound) == [], f"block {i}"
    CHECKED.clear()
    assert _check_source(src, {}) == []  # (only what the block imports and binds)
    assert len(CHECKED) >= 4, CHECKED


def test_inline_code_calls_what_exists():
    problems = []
    CHECKED.clear()
    for span in _inline_snippets():
        problems += [f"`{span}`: {p}" for p in _check_source(span, _namespace())]
    assert problems == []
    assert len(CHECKED) >= 12, CHECKED  # (the check follows most of them, not none)


def test_the_check_catches_what_it_is_for():
    """The three mistakes a walkthrough found are caught."""
    ns = _namespace()
    assert _check_source("Stylizer(buckets=None)", dict(ns))  # (model is required)
    assert _check_source("from arbitrary_nst import OnnxTransfer", dict(ns))
    assert _check_source("s.stylize('p.jpg', nonsense=1)", dict(ns))
    assert _check_source("s.no_such_method()", dict(ns))
    assert _check_source("gatys.run(1, 2, config=3)", dict(ns)) == []
    assert _check_source("Stylizer.load(buckets=None)", dict(ns)) == []
    tree = ast.parse("out = s.stylize(gatys.run(x))")  # (names a block must bind: found)
    assert {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} & set(ns) == {"s", "gatys"}



def test_local_links_images_and_docs_paths_exist():
    """Every relative link and image of the README, and every `docs/...` path it names, is a file
    of the repo (the docs sheets were renamed from .png to .jpg to keep the GPU transfer under
    64 MiB; a link left behind shows a broken image)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", README)
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    docs = re.findall(r"`(docs/[^`*\s]+)`", README)
    assert "RESULTS.md" in local and docs, "no relative links or docs paths found (the pattern is wrong)"
    missing = [t for t in local + docs if t and not (ROOT / t).exists()]
    assert not missing, f"README.md names missing files: {missing}"
