"""The device end of the data pipeline (uint8 batches, colour jitter in the jitted step) gives
the same images as the host path."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from arbitrary_nst import data
from arbitrary_nst.device_augment import color_jitter, finish_batch


def _pixels(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 3)).astype(np.float32)
    # Edge cases of the HSV round trip: greys (chroma 0), each channel the max, ties, 0 and 1.
    edge = np.array([[0.5, 0.5, 0.5], [0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1],
                     [1, 1, 0], [0.2, 0.7, 0.7], [0.9, 0.1, 0.9], [1, 0.5, 0]], np.float32)
    return np.concatenate([x, edge])


@pytest.mark.parametrize("jitter", [(0.0, 1.0, 0.0), (0.3, 1.4, 0.15), (-0.6, 0.5, -0.2),
                                    (0.05, 3.0, 0.49), (0.0, 0.0, -0.5), (0.8, 1.5, 0.2)])
def test_color_jitter_matches_the_host_numpy_one(jitter):
    px = _pixels(400, 1).reshape(1, 41, 10, 3)
    want = data.color_jitter(px[0], *jitter)
    got = np.asarray(jax.jit(color_jitter)(px, np.asarray([jitter], np.float32)))[0]
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert got.min() >= 0 and got.max() <= 1 + 1e-6


def test_color_jitter_is_per_image():
    px = _pixels(90, 2).reshape(1, 10, 10, 3)
    jit = np.asarray([[0.1, 1.2, 0.1], [-0.2, 0.7, -0.3]], np.float32)
    got = np.asarray(color_jitter(np.concatenate([px, px]), jit))
    for i in range(2):
        np.testing.assert_allclose(got[i], data.color_jitter(px[0], *jit[i]), atol=2e-6)


@pytest.mark.parametrize("strength", [1.0, 0.0])
def test_device_batches_equal_host_batches(strength):
    cfg = {"source": "synthetic", "synthetic_count": 9, "image_size": 64, "style_size": 48,
           "augment_strength": strength}
    srcs = data.prepare(cfg)
    host = data.make_loader(dict(cfg, device_augment=False), batch_size=4, seed=5,
                            num_workers=0, sources=srcs)
    dev = data.make_loader(cfg, batch_size=4, seed=5, num_workers=2, sources=srcs)
    for step in (0, 3):
        h, d = host.batch(step), dev.batch(step)
        assert d["content"].dtype == d["style"].dtype == np.uint8
        assert ("style_jitter" in d) == (strength > 0)
        fin = jax.jit(finish_batch)(d)
        assert set(fin) == {"content", "style"}
        np.testing.assert_allclose(np.asarray(fin["content"]), h["content"], atol=1e-6)
        np.testing.assert_allclose(np.asarray(fin["style"]), h["style"], atol=3e-6)
        if strength > 0:  # the jitter really changed the styles
            assert np.abs(d["style"] / 255.0 - h["style"]).max() > 0.05
    host.close()
    dev.close()


def test_float_batches_pass_through_unchanged():
    rng = np.random.default_rng(0)
    b = {"content": rng.random((2, 8, 8, 3), dtype=np.float32),
         "style": rng.random((2, 8, 8, 3), dtype=np.float32)}
    out = finish_batch(b)
    assert all(np.array_equal(np.asarray(out[k]), b[k]) for k in b)


def test_device_augment_must_be_a_bool():
    with pytest.raises(data.ConfigError, match="device_augment"):
        data.make_loader({"source": "synthetic", "device_augment": "yes"}, batch_size=1, seed=0)
