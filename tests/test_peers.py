"""The Magenta-lite peer wrapper: both variants run, agree with each other, and match the shipped
fixed-size graph at 384."""
from __future__ import annotations

import numpy as np
import pytest

from arbitrary_nst import peers, samples


@pytest.fixture(scope="module")
def pair():
    content = samples.content_image("chelsea", max_side=96)
    style = samples.style_image("mosaic", size=128)
    return content, style


def test_int8_and_fp32_agree_and_stylize(pair):
    content, style = pair
    a = peers.MagentaLite("int8").stylize(content, style)
    b = peers.MagentaLite("fp32").stylize(content, style)
    assert a.shape == content.shape and b.shape == content.shape
    assert 0.0 <= a.min() and a.max() <= 1.0
    # Same network, quantized vs float: close but not identical.
    assert np.abs(a - b).mean() < 0.05
    assert np.abs(a - content).mean() > 0.05  # it did stylize


def test_strength_zero_keeps_more_content(pair):
    content, style = pair
    peer = peers.MagentaLite("fp32")
    full = peer.stylize(content, style, strength=1.0)
    none = peer.stylize(content, style, strength=0.0)
    assert np.abs(none - content).mean() < np.abs(full - content).mean()


def test_dynamic_graph_matches_shipped_fixed_graph():
    """Our symbolic-H/W session equals the package's fixed 384x384 graph on a 384 input."""
    rng = np.random.default_rng(0)
    content = rng.random((384, 384, 3), dtype=np.float32)
    peer = peers.MagentaLite("int8")
    vec = peer.embed(samples.style_image("waves", size=256))
    ours = peer.transfer(content, vec)
    fixed = peers._session(peers.model_dir() / "arbitrary_transform.onnx", fp32=False,
                           dynamic_hw=False, threads=2)
    names = [i.name for i in fixed.get_inputs()]
    ref = fixed.run(None, {names[0]: content[None], names[1]: vec})[0][0]
    np.testing.assert_allclose(ours, np.clip(ref, 0, 1), atol=1e-5)


def test_bad_variant():
    with pytest.raises(peers.ModelError, match="variant"):
        peers.MagentaLite("int4")


def test_too_small_content_is_one_config_error():
    """Under 5 px a side, onnxruntime's reflect padding failed with its own error (and a
    coloured log line); 5 px is padded to 8 and works."""
    from arbitrary_nst.errors import ConfigError

    m = peers.MagentaLite("int8")
    v = m.embed(samples.style_image("mosaic", size=64))
    rng = np.random.default_rng(0)
    for shape in ((4, 40, 3), (40, 4, 3)):
        with pytest.raises(ConfigError, match="at least 5 px"):
            m.transfer(rng.random(shape, np.float32), v)
    for shape in ((5, 40, 3), (40, 5, 3)):
        assert m.transfer(rng.random(shape, np.float32), v).shape == shape
