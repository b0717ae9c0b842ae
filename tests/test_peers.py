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


def test_fp32_variant_folds_qdq_nodes_exactly():
    """_strip_qdq on a small QDQ graph (per-axis weights along the default axis 1 and along an
    explicit axis 0, non-zero zero points, a per-tensor weight without a zero point, Q/DQ
    activations, an aliased graph output) against the float64 dequantized NumPy reference."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1q = rng.integers(-128, 128, (3, 4)).astype(np.int8)
    w1s = np.array([0.02, 0.05, 0.01, 0.03], np.float32)
    w1z = np.array([3, -7, 0, 11], np.int8)
    w2q = rng.integers(-128, 128, (4, 2)).astype(np.int8)
    w2s = np.array([0.04, 0.01, 0.02, 0.03], np.float32)
    w2z = np.array([-5, 2, 9, -1], np.int8)
    bq = rng.integers(-128, 128, (4,)).astype(np.int8)
    bs = np.array(0.01, np.float32)
    xs, xz = np.array(0.05, np.float32), np.array(0, np.int8)
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (w1q, "w1q"), (w1s, "w1s"), (w1z, "w1z"), (w2q, "w2q"), (w2s, "w2s"), (w2z, "w2z"),
        (bq, "bq"), (bs, "bs"), (xs, "xs"), (xz, "xz"))]
    nodes = [
        helper.make_node("DequantizeLinear", ["w1q", "w1s", "w1z"], ["w1"]),  # axis 1: default
        helper.make_node("DequantizeLinear", ["w2q", "w2s", "w2z"], ["w2"], axis=0),
        helper.make_node("DequantizeLinear", ["bq", "bs"], ["b"]),
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("MatMul", ["xd", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["hb"]),
        helper.make_node("MatMul", ["hb", "w2"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "xs", "xz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "xs", "xz"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "qdq",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 2])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    peers._strip_qdq(model)
    onnx.checker.check_model(model)
    assert not {n.op_type for n in model.graph.node} & {"QuantizeLinear", "DequantizeLinear"}
    assert [o.name for o in model.graph.output] == ["out"]
    x = rng.normal(size=(2, 3)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x})[0]
    w1 = (w1q.astype(np.float64) - w1z[None, :]) * w1s[None, :]
    w2 = (w2q.astype(np.float64) - w2z[:, None]) * w2s[:, None]
    ref = (x.astype(np.float64) @ w1 + bq * float(bs)) @ w2
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_style_is_centre_cropped_and_content_padded_to_4(pair):
    """The package's preprocessing: a non-square style is centre-cropped (not squashed) to a
    square; content is reflect-padded at the bottom/right to a multiple of 4 and cropped back
    (reference: the transfer session run directly on the np.pad-ed array)."""
    content, style = pair
    peer = peers.MagentaLite("fp32")
    wide = np.concatenate([samples.noise_image(128, 40, 1), style,
                           samples.noise_image(128, 40, 2)], axis=1)  # 128 x 208
    np.testing.assert_allclose(peer.embed(wide), peer.embed(wide[:, 40:168]), atol=1e-6)
    assert np.abs(peer.embed(wide) - peer.embed(style[:, :100])).max() > 1e-3
    vec = peer.embed(style)
    names = [i.name for i in peer.transform.get_inputs()]
    for h, w in ((36, 44), (42, 50)):
        x = np.ascontiguousarray(content[:h, :w])
        ph, pw = -h % 4, -w % 4
        xp = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="reflect")
        ref = peer.transform.run(None, {names[0]: xp[None], names[1]: vec})[0][0][:h, :w]
        np.testing.assert_allclose(peer.transfer(x, vec), np.clip(ref, 0, 1), atol=1e-6)


def test_inputs_are_read_and_checked_as_the_stylizer_reads_them(pair):
    """strength 2 and NaN acted as 1 and -1 extrapolated; a 0..255 float content gave a garbage
    image; uint8 was a bare TypeError; grey and RGBA arrays were onnxruntime errors."""
    from arbitrary_nst.errors import ConfigError, ImageError

    content, style = pair
    m = peers.MagentaLite("fp32")
    for bad in (2.0, float("nan"), -1.0, "x"):
        with pytest.raises(ConfigError, match="strength"):
            m.stylize(content, style, strength=bad)
    with pytest.raises(ImageError, match="must be in \\[0, 1\\]"):
        m.stylize(content * 255, style)
    with pytest.raises(ImageError, match="must be in \\[0, 1\\]"):
        m.embed(style * 255)
    ref = m.stylize(content, style)
    u8 = (content * 255).round().astype(np.uint8)
    np.testing.assert_allclose(m.stylize(u8, style), m.stylize(u8 / np.float32(255), style),
                               atol=1e-6)
    grey = content.mean(-1)
    np.testing.assert_allclose(m.stylize(grey, style), m.stylize(np.stack([grey] * 3, -1), style),
                               atol=1e-6)
    rgba = np.concatenate([content, np.ones_like(content[..., :1])], -1)
    np.testing.assert_allclose(m.stylize(rgba, style), ref, atol=1e-6)
    with pytest.raises(ConfigError, match="100 finite numbers"):
        m.transfer(content, np.full((1, 1, 1, 100), np.nan, np.float32))
    with pytest.raises(ConfigError, match="100 finite numbers"):
        m.transfer(content, np.zeros(99, np.float32))
