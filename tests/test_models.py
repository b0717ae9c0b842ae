"""Transfer network, style predictor, the combined model and the export file format.

Tiny shapes (width 0.25, <= 64x64) so everything runs eagerly in a few seconds.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from arbitrary_nst.errors import ConfigError, ModelError
from arbitrary_nst.export import (convert_export, export_model, load_exported, model_tensors,
                                  read_export)
from arbitrary_nst.models import (CIN_LAYER_NAMES, ArbitraryStyleModel, TransferNetwork,
                                  cin_layer_channels, param_count)
from arbitrary_nst.models.predictor import pooled_statistics
from arbitrary_nst.models.transfer import (conditional_instance_norm, instance_norm,
                                           upsample_nearest, valid_region_limits,
                                           valid_region_mask)
from arbitrary_nst.vgg import FrozenWeight


@pytest.fixture(scope="module")
def model(vgg):
    return ArbitraryStyleModel(vgg, width=0.25, hidden_dim=32, rngs=nnx.Rngs(0))


def images(rng, *shape):
    return jnp.asarray(rng.random(shape, dtype=np.float32))


# Jitted forwards: one compilation per shape instead of one per primitive (eager mode).
run_net = nnx.jit(lambda net, x, gb: net(x, gb))
embed = nnx.jit(lambda m, s: m.embed(s))
transfer = nnx.jit(lambda m, c, e: m.transfer(c, e))


# ------------------------------------------------------------------------------------------------
# Transfer network


def test_cin_layer_channels_match_magenta():
    assert len(CIN_LAYER_NAMES) == 13 and len(cin_layer_channels()) == 13
    assert sum(cin_layer_channels(1.0)) == 1379  # 10 x 128 + 64 + 32 + 3 (Magenta)
    assert cin_layer_channels(1.0)[-3:] == (64, 32, 3)
    assert sum(cin_layer_channels(0.5)) == 691 and sum(cin_layer_channels(0.25)) == 347
    with pytest.raises(ConfigError):
        cin_layer_channels(0.0)
    with pytest.raises(ConfigError):
        cin_layer_channels(0.01)


def test_transfer_network_shapes_and_range(rng):
    net = TransferNetwork(0.25, rngs=nnx.Rngs(0))
    for h, w in ((30, 45), (8, 12)):
        x = images(rng, 2, h, w, 3)
        y = run_net(net, x, net.identity_gammas_betas(2))
        assert y.shape == (2, h, w, 3) and y.dtype == jnp.float32
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    with pytest.raises(ConfigError, match="at least"):
        net(images(rng, 1, 6, 32, 3), net.identity_gammas_betas(1))
    with pytest.raises(ConfigError, match="13"):
        net(images(rng, 1, 16, 16, 3), net.identity_gammas_betas(1)[:12])
    wrong = net.identity_gammas_betas(1)
    wrong[0] = (jnp.ones((1, 5)), jnp.zeros((1, 5)))
    with pytest.raises(ConfigError, match="residual1_conv1"):
        net(images(rng, 1, 16, 16, 3), wrong)
    # Magenta's parameter count at width 1 (convs without bias; contract IN scale/offset).
    full = TransferNetwork(1.0, rngs=nnx.Rngs(0))
    convs = (9 * 9 * 3 * 32 + 3 * 3 * 32 * 64 + 3 * 3 * 64 * 128 + 10 * 3 * 3 * 128 * 128
             + 3 * 3 * 128 * 64 + 3 * 3 * 64 * 32 + 9 * 9 * 32 * 3)
    assert param_count(full) == convs + 2 * (32 + 64 + 128)


def test_padded_stride1_convs_are_bit_identical_to_valid_convs(rng, monkeypatch):
    # The speed path (zero-padded conv + crop, see ReflectConv) must not change a single value,
    # forward or backward, at odd sizes too.
    from arbitrary_nst.models import transfer as transfer_mod

    net = TransferNetwork(0.25, rngs=nnx.Rngs(1))
    gd, state = nnx.split(net)
    x = images(rng, 2, 37, 52, 3)
    gb = [(1.0 + 0.3 * images(rng, 2, c), 0.2 * images(rng, 2, c))
          for c in cin_layer_channels(0.25)]

    def loss(state, x):
        return jnp.sum(nnx.merge(gd, state)(x, gb) ** 2)

    outs = {}
    for flag in (False, True):
        monkeypatch.setattr(transfer_mod, "PADDED_STRIDE1_CONV", flag)
        y = jax.jit(lambda s, x: nnx.merge(gd, s)(x, gb))(state, x)
        g = jax.jit(jax.grad(loss, argnums=(0, 1)))(state, x)
        outs[flag] = (np.asarray(y), [np.asarray(v) for v in jax.tree.leaves(g)])
    assert np.array_equal(outs[False][0], outs[True][0])
    for a, b in zip(outs[False][1], outs[True][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(a).max())


def test_reflect_conv_computes_in_its_dtype(rng):
    """A ``dtype=bfloat16`` conv (the GPU compute dtype) takes float32 input (the content, the
    float32 residual stream) in bf16 and returns bf16: the float32 conv of the bf16-rounded
    input and kernel, to bf16 rounding (it ran the convs in float32, at twice the memory
    traffic, while claiming bf16)."""
    from arbitrary_nst.models.transfer import ReflectConv

    for stride in (1, 2):
        conv = ReflectConv(3, 4, 3, stride, dtype=jnp.bfloat16, rngs=nnx.Rngs(11))
        x = rng.random((1, 8, 10, 3)).astype(np.float32)
        y = conv(jnp.asarray(x))
        assert y.dtype == jnp.bfloat16, stride
        k = np.asarray(jnp.asarray(conv.kernel[...], jnp.bfloat16).astype(jnp.float32), np.float64)
        xr = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)
        np.testing.assert_allclose(np.asarray(y.astype(jnp.float32)),
                                   _np_reflect_conv(xr, k, stride), rtol=2e-2, atol=1e-3)


def test_conditional_instance_norm_matches_numpy(rng):
    x = rng.normal(3.0, 2.0, (2, 5, 7, 4)).astype(np.float32)
    g = rng.normal(1.0, 0.5, (2, 4)).astype(np.float32)
    b = rng.normal(0.0, 0.5, (2, 4)).astype(np.float32)
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)
    want = (x - mean) / np.sqrt(var + 1e-5) * g[:, None, None] + b[:, None, None]
    got = conditional_instance_norm(jnp.asarray(x), jnp.asarray(g), jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    xh = np.asarray(instance_norm(jnp.asarray(x)))
    np.testing.assert_allclose(xh.mean(axis=(1, 2)), 0, atol=1e-5)
    # bf16 input: statistics still in float32, output float32.
    assert conditional_instance_norm(jnp.asarray(x, jnp.bfloat16), g, b).dtype == jnp.float32


def test_masked_instance_norm_takes_statistics_over_the_region_only(rng):
    """With a mask, each example is normalized with its region's mean and variance (numpy on
    the cropped region is the reference); the padding is normalized with the same numbers."""
    x = rng.normal(3.0, 2.0, (2, 12, 16, 4)).astype(np.float32)
    x[0, 8:] += 50.0  # padding with other statistics: must not count
    x[0, :, 12:] -= 30.0
    mask = np.zeros((2, 12, 16), np.float32)
    mask[0, :8, :12] = 1
    mask[1] = 1
    got = np.asarray(instance_norm(jnp.asarray(x), mask=jnp.asarray(mask)))
    for i, (h, w) in enumerate(((8, 12), (12, 16))):
        r = x[i, :h, :w]
        want = (x[i] - r.mean((0, 1))) / np.sqrt(r.var((0, 1)) + 1e-5)
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1], np.asarray(instance_norm(jnp.asarray(x[1:])))[0],
                               atol=1e-5)  # a full mask is the plain norm
    # the mask of a feature map at stride s: the region rounded up to a multiple of 4, / s
    hw = jnp.asarray([[37, 45], [40, 48]])
    for s, (rows, cols) in ((1, (40, 48)), (2, (20, 24)), (4, (10, 12))):
        m = np.asarray(valid_region_mask(hw, jnp.zeros((2, 64 // s, 80 // s, 1)), s))
        assert m.shape == (2, 64 // s, 80 // s)
        assert m[0].sum() == m[1].sum() == rows * cols and m[0, rows - 1, cols - 1] == 1
    assert valid_region_mask(None, jnp.zeros((1, 8, 8, 1)), 1) is None


def test_padded_content_with_valid_hw_is_the_unpadded_result(rng):
    """Content padded to a larger shape (a Stylizer bucket) with ``valid_hw``: the statistics
    skip the padding and the convs read the region's own reflection beyond its edge, so the
    result is the run on the image padded to a multiple of 4 only (for sizes off and on
    multiples of 4, two examples of different sizes in one batch). Without ``valid_hw``
    every pixel depends on the padding."""
    from arbitrary_nst.inference import pad_to

    net = TransferNetwork(width=0.25, rngs=nnx.Rngs(3))
    for _, var in nnx.to_flat_state(nnx.state(net, nnx.Param)):  # weights that mix pixels
        v = var.get_value()
        if v.ndim == 4:
            var.set_value(jnp.asarray(rng.normal(0, 1 / np.sqrt(np.prod(v.shape[:3])), v.shape),
                                      jnp.float32))
    gb = [(jnp.asarray(rng.normal(1, 0.3, (2, c)), jnp.float32),
           jnp.asarray(rng.normal(0, 0.3, (2, c)), jnp.float32)) for c in net.cin_channels]
    sizes = ((101, 118), (64, 80))
    xs = [np.asarray(images(rng, h, w, 3)).cumsum(0).cumsum(1) / 200.0 % 1.0 for h, w in sizes]
    padded = jnp.asarray(np.stack([pad_to(x, (128, 160)) for x in xs]))
    masked = np.asarray(nnx.jit(lambda n, c, g, v: n(c, g, v))(
        net, padded, gb, jnp.asarray(sizes)))
    unmasked = np.asarray(run_net(net, padded, gb))
    for i, (x, (h, w)) in enumerate(zip(xs, sizes)):
        x4 = pad_to(x, ((h + 3) // 4 * 4, (w + 3) // 4 * 4))[None]
        exact = np.asarray(run_net(net, jnp.asarray(x4), [(g[i:i + 1], b[i:i + 1])
                                                          for g, b in gb]))[0, :h, :w]
        np.testing.assert_allclose(masked[i, :h, :w], exact, atol=2e-5)
        assert np.abs(unmasked[i, :h, :w] - exact).mean() > 1e-2
    # unpadded content of any size with its own size as valid_hw: the plain run
    for h, w in ((10, 13), (33, 47)):
        x = jnp.asarray(xs[0][:h, :w][None])
        np.testing.assert_allclose(
            np.asarray(nnx.jit(lambda n, c, g, v: n(c, g, v))(
                net, x, [(g[:1], b[:1]) for g, b in gb], jnp.asarray([[h, w]]))),
            np.asarray(run_net(net, x, [(g[:1], b[:1]) for g, b in gb])), atol=1e-5)


def test_upsample_nearest_is_resize_nearest_neighbor(rng):
    x = images(rng, 2, 3, 5, 4)
    want = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(np.asarray(upsample_nearest(x)), np.asarray(want))


def test_gamma_beta_condition_each_example(model, rng):
    net = model.transfer_net
    x = jnp.broadcast_to(images(rng, 1, 16, 16, 3), (2, 16, 16, 3))
    gb = [(jnp.stack([jnp.ones(c), 2 * jnp.ones(c)]), jnp.stack([jnp.zeros(c), jnp.ones(c)]))
          for c in net.cin_channels]
    y = run_net(net, x, gb)
    assert not np.allclose(np.asarray(y[0]), np.asarray(y[1]))
    one = run_net(net, x[1:], [(g[1:], b[1:]) for g, b in gb])
    np.testing.assert_allclose(np.asarray(y[1]), np.asarray(one[0]), atol=1e-5)


def test_transfer_network_init_draws_each_kernel_from_its_own_key():
    """Every conv gets its own draw from the NNX key stream (a seeding bug gave every conv of
    one shape the same kernel): the ten residual kernels differ pairwise, a seed reproduces
    them, another seed changes them, and they are N(0, 0.01^2) as in Magenta."""
    kernels = lambda net: [np.asarray(net.residual[n].kernel[...])  # noqa: E731
                           for n in CIN_LAYER_NAMES[:10]]
    a = kernels(TransferNetwork(0.25, rngs=nnx.Rngs(0)))
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            assert not np.allclose(a[i], a[j]), (CIN_LAYER_NAMES[i], CIN_LAYER_NAMES[j])
    for x, y in zip(a, kernels(TransferNetwork(0.25, rngs=nnx.Rngs(0)))):
        np.testing.assert_array_equal(x, y)
    assert not any(np.allclose(x, y) for x, y in zip(a, kernels(TransferNetwork(
        0.25, rngs=nnx.Rngs(1)))))
    assert abs(np.concatenate([k.ravel() for k in a]).std() - 0.01) < 5e-4


def _np_reflect_conv(x, k, stride=1):
    """float64 reference: reflect padding by kernel // 2 + VALID conv with ``stride``."""
    p = k.shape[0] // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
    ho = (xp.shape[1] - k.shape[0]) // stride + 1
    wo = (xp.shape[2] - k.shape[1]) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, k.shape[3]))
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            out += xp[:, i:i + stride * (ho - 1) + 1:stride,
                      j:j + stride * (wo - 1) + 1:stride] @ k[i, j]
    return out


def _np_cin(x, g, b):
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * g[:, None, None] + b[:, None, None]


def test_transfer_network_matches_numpy_reference(rng):
    """The whole network (width 0.125, 16 px) against a float64 numpy forward written from
    Magenta's description, with random kernels and distinct gamma/beta for every CIN layer and
    example: guards each residual block's skip connection and that each CIN layer gets its own
    (gamma, beta) (e.g. conv1 of a block given conv2's)."""
    net = TransferNetwork(0.125, rngs=nnx.Rngs(4))
    k = {}
    for name, mod in [*net.contract.items(), *net.residual.items(), *net.expand.items()]:
        if name.startswith("norm"):
            mod.scale[...] = jnp.asarray(rng.normal(1, 0.3, mod.scale[...].shape), jnp.float32)
            mod.offset[...] = jnp.asarray(rng.normal(0, 0.3, mod.offset[...].shape), jnp.float32)
            k[name] = (np.asarray(mod.scale[...], np.float64),
                       np.asarray(mod.offset[...], np.float64))
        else:
            shape = mod.kernel[...].shape
            mod.kernel[...] = jnp.asarray(rng.normal(0, 1 / np.sqrt(np.prod(shape[:3])), shape),
                                          jnp.float32)
            k[name] = np.asarray(mod.kernel[...], np.float64)
    gb = [(rng.normal(1, 0.3, (2, c)).astype(np.float32),
           rng.normal(0, 0.3, (2, c)).astype(np.float32)) for c in net.cin_channels]
    g = {n: (a.astype(np.float64), b.astype(np.float64)) for n, (a, b) in zip(CIN_LAYER_NAMES, gb)}
    x = rng.random((2, 16, 16, 3))
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    up = lambda v: np.repeat(np.repeat(v, 2, axis=1), 2, axis=2)  # noqa: E731
    one = lambda v: (np.ones((1, v.shape[-1])), np.zeros((1, v.shape[-1])))  # noqa: E731
    h = x
    for conv, norm, stride in (("conv1", "norm1", 1), ("conv2", "norm2", 2),
                               ("conv3", "norm3", 2)):
        h = _np_reflect_conv(h, k[conv], stride)
        scale, offset = k[norm]
        h = relu(_np_cin(h, *one(h)) * scale + offset)
    for i in range(1, 6):
        n1, n2 = f"residual{i}_conv1", f"residual{i}_conv2"
        r = relu(_np_cin(_np_reflect_conv(h, k[n1]), *g[n1]))
        h = h + _np_cin(_np_reflect_conv(r, k[n2]), *g[n2])
    for name in ("expand_conv1", "expand_conv2"):
        h = relu(_np_cin(_np_reflect_conv(up(h), k[name]), *g[name]))
    want = 1 / (1 + np.exp(-_np_cin(_np_reflect_conv(h, k["expand_conv3"]),
                                    *g["expand_conv3"])))
    got = np.asarray(run_net(net, jnp.asarray(x, jnp.float32),
                             [(jnp.asarray(a), jnp.asarray(b)) for a, b in gb]))
    assert got.shape == want.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(got, want, atol=1e-4)


def _np_transfer_forward(net, x, gb):
    """float64 numpy forward of ``net`` (its own kernels, norms and the given gamma/beta),
    written as test_transfer_network_matches_numpy_reference's: reflect-padded convs, CIN,
    nearest upsampling, then the output cropped to the input's top-left ``H x W``."""
    k = {}
    for name, mod in [*net.contract.items(), *net.residual.items(), *net.expand.items()]:
        if name.startswith("norm"):
            k[name] = (np.asarray(mod.scale[...], np.float64),
                       np.asarray(mod.offset[...], np.float64))
        else:
            k[name] = np.asarray(mod.kernel[...], np.float64)
    g = {n: (np.asarray(a, np.float64), np.asarray(b, np.float64))
         for n, (a, b) in zip(CIN_LAYER_NAMES, gb)}
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    up = lambda v: np.repeat(np.repeat(v, 2, axis=1), 2, axis=2)  # noqa: E731
    h = np.asarray(x, np.float64)
    for conv, norm, stride in (("conv1", "norm1", 1), ("conv2", "norm2", 2),
                               ("conv3", "norm3", 2)):
        h = _np_reflect_conv(h, k[conv], stride)
        scale, offset = k[norm]
        h = relu(_np_cin(h, np.ones((1, h.shape[-1])), np.zeros((1, h.shape[-1]))) * scale
                 + offset)
    for i in range(1, 6):
        n1, n2 = f"residual{i}_conv1", f"residual{i}_conv2"
        h = h + _np_cin(_np_reflect_conv(relu(_np_cin(_np_reflect_conv(h, k[n1]), *g[n1])),
                                         k[n2]), *g[n2])
    for name in ("expand_conv1", "expand_conv2"):
        h = relu(_np_cin(_np_reflect_conv(up(h), k[name]), *g[name]))
    y = 1 / (1 + np.exp(-_np_cin(_np_reflect_conv(h, k["expand_conv3"]), *g["expand_conv3"])))
    return y[:, :x.shape[1], :x.shape[2]]


def test_transfer_network_at_sizes_off_multiples_of_4_matches_numpy(rng):
    """Sides that are not multiples of 4 (18 x 22: the stride-2 convs give 9 x 11, then 5 x 6,
    and the upsampling 20 x 24): the output is the top-left 18 x 22 of the network's result,
    aligned with the input (taking the bottom-right crop shifted the image by 2 pixels)."""
    net = TransferNetwork(0.125, rngs=nnx.Rngs(7))
    for name, mod in [*net.contract.items(), *net.residual.items(), *net.expand.items()]:
        if not name.startswith("norm"):
            shape = mod.kernel[...].shape
            mod.kernel[...] = jnp.asarray(rng.normal(0, 1 / np.sqrt(np.prod(shape[:3])), shape),
                                          jnp.float32)
    gb = [(rng.normal(1, 0.3, (1, c)).astype(np.float32),
           rng.normal(0, 0.3, (1, c)).astype(np.float32)) for c in net.cin_channels]
    x = rng.random((1, 18, 22, 3))
    got = np.asarray(run_net(net, jnp.asarray(x, jnp.float32),
                             [(jnp.asarray(a), jnp.asarray(b)) for a, b in gb]))
    want = _np_transfer_forward(net, x, gb)
    assert got.shape == want.shape == (1, 18, 22, 3)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_valid_region_limits_are_the_unbucketed_shape():
    """A padded example's region is the shape it would run at without a bucket
    (``inference.bucket_shape(h, w, None)``: up to a multiple of 4, at least 8) divided by the
    stride, also for images under 8 pixels (4 x 4 and smaller were taken as 4 x 4 regions,
    where the unbucketed run pads them to 8)."""
    from arbitrary_nst.inference import bucket_shape

    hw = [(h, w) for h in (1, 3, 4, 5, 8, 9, 13) for w in (2, 7, 12, 17)]
    for s in (1, 2, 4):
        got = np.asarray(valid_region_limits(jnp.asarray(hw), s))
        want = [[-(-a // s) for a in bucket_shape(h, w, None)] for h, w in hw]
        np.testing.assert_array_equal(got, want, err_msg=f"stride {s}")
    assert valid_region_limits(None, 1) is None


def test_identity_gammas_betas_are_the_untrained_predictor_output(model):
    """``identity_gammas_betas`` (the style-free transform of diagnostics and demos) is gamma 1
    and beta 0 per CIN layer and example, which is what a fresh predictor gives."""
    gb = model.transfer_net.identity_gammas_betas(2)
    assert len(gb) == 13
    fresh = model.predictor.gamma_beta(jnp.zeros((2, model.embedding_dim)))
    for (g, b), (fg, fb), c in zip(gb, fresh, model.cin_channels):
        assert g.shape == b.shape == (2, c)
        np.testing.assert_array_equal(np.asarray(g), 1.0)
        np.testing.assert_array_equal(np.asarray(b), 0.0)
        np.testing.assert_array_equal(np.asarray(g), np.asarray(fg))
        np.testing.assert_array_equal(np.asarray(b), np.asarray(fb))


# ------------------------------------------------------------------------------------------------
# Predictor and combined model


def test_predictor_starts_at_identity_and_accepts_any_size(model, rng):
    for shape in ((2, 32, 32, 3), (1, 40, 72, 3), (1, 100, 64, 3)):
        e = embed(model, images(rng, *shape))
        assert e.shape == (shape[0], 100) and np.isfinite(np.asarray(e)).all()
        for (g, b), c in zip(model.predictor.gamma_beta(e), model.cin_channels):
            assert g.shape == b.shape == (shape[0], c)
            np.testing.assert_array_equal(np.asarray(g), 1.0)
            np.testing.assert_array_equal(np.asarray(b), 0.0)
    with pytest.raises(ConfigError, match="at least 32"):
        model.embed(images(rng, 1, 31, 64, 3))
    with pytest.raises(ConfigError):
        model.predictor.gamma_beta(jnp.zeros((1, 7)))
    feats = model.predictor.style_features(images(rng, 2, 32, 32, 3))
    stats = pooled_statistics(feats, model.predictor.taps)
    assert stats.shape == (2, 1920)
    np.testing.assert_allclose(np.asarray(stats.mean(-1)), 0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(stats.std(-1)), 1, atol=1e-3)
    raw = pooled_statistics(feats, model.predictor.taps, norm="none")
    assert float(raw.min()) >= 0.0
    assert model.predictor.feature_dim == 1920


def _np_pooled_statistics(feats, taps, norm, eps=1e-5):
    """float64 reference of the predictor's input: log1p of per-channel mean and std."""
    parts = []
    for t in taps:
        f = np.asarray(feats[t], np.float64)
        parts += [f.mean(axis=(1, 2)), np.sqrt(f.var(axis=(1, 2)) + eps)]
    x = np.log1p(np.concatenate(parts, axis=-1))
    if norm == "layer":
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return x


def test_pooled_statistics_match_numpy(rng):
    """The predictor's input is log1p(mean, std) per channel (the std, not the variance) of
    each tap, concatenated tap by tap, then standardized per example."""
    taps = ("relu1_2", "relu3_3")
    feats = {"relu1_2": rng.gamma(0.5, 3.0, (2, 6, 5, 4)).astype(np.float32),
             "relu3_3": rng.gamma(0.5, 40.0, (2, 3, 2, 7)).astype(np.float32)}
    for norm in ("none", "layer"):
        got = np.asarray(pooled_statistics({t: jnp.asarray(v) for t, v in feats.items()}, taps,
                                           norm=norm))
        assert got.shape == (2, 2 * (4 + 7)) and got.dtype == np.float32
        np.testing.assert_allclose(got, _np_pooled_statistics(feats, taps, norm),
                                   rtol=1e-5, atol=1e-5, err_msg=norm)


def test_pooled_statistics_of_a_flat_style_match_numpy():
    """A black (or flat) style image: every std is 0 and the log-statistics are nearly equal,
    so the layer norm's eps decides the scale of the predictor input (without it the tiny
    spread was blown up to unit variance)."""
    taps = ("relu1_2", "relu2_2")
    feats = {"relu1_2": np.zeros((1, 4, 4, 5), np.float32),
             "relu2_2": np.full((1, 2, 2, 6), 0.01, np.float32)}
    for norm in ("none", "layer"):
        got = np.asarray(pooled_statistics({t: jnp.asarray(v) for t, v in feats.items()}, taps,
                                           norm=norm))
        np.testing.assert_allclose(got, _np_pooled_statistics(feats, taps, norm), rtol=1e-4,
                                   atol=1e-5, err_msg=norm)


def test_pooled_statistics_of_bfloat16_features_are_float32(rng):
    """bf16 VGG features (the bf16 predictor and training step): the means, stds and their
    log1p are computed in float32 (numpy float64 on the bf16-rounded values), not rounded to
    bf16's 8 mantissa bits, which moved every embedding with the compute dtype."""
    taps = ("relu1_2", "relu3_3")
    feats = {"relu1_2": jnp.asarray(rng.gamma(0.5, 3.0, (2, 8, 8, 4)), jnp.bfloat16),
             "relu3_3": jnp.asarray(rng.gamma(0.5, 40.0, (2, 4, 4, 7)), jnp.bfloat16)}
    rounded = {t: np.asarray(v.astype(jnp.float32)) for t, v in feats.items()}
    for norm in ("none", "layer"):
        got = pooled_statistics(feats, taps, norm=norm)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), _np_pooled_statistics(rounded, taps, norm),
                                   rtol=1e-5, atol=1e-5, err_msg=norm)


def test_linear_predictor_without_feature_norm_matches_numpy(vgg, rng):
    """``feature_norm="none"`` with ``hidden_dim=0`` (Magenta's single linear bottleneck): the
    embedding is ``log1p(mean, std) @ W + b`` without the per-example standardization (the
    option was ignored and the layer norm applied anyway)."""
    from arbitrary_nst.models.predictor import StylePredictor

    taps = ("relu1_1",)
    pred = StylePredictor(vgg, cin_channels=cin_layer_channels(0.25), embedding_dim=6,
                          hidden_dim=0, taps=taps, feature_norm="none", rngs=nnx.Rngs(10))
    assert pred.hidden is None
    pred.bottleneck.bias[...] = jnp.asarray(rng.normal(0, 0.5, (6,)), jnp.float32)
    w, b = (np.asarray(v[...], np.float64) for v in (pred.bottleneck.kernel,
                                                     pred.bottleneck.bias))
    feats = {"relu1_1": rng.gamma(0.5, 3.0, (2, 4, 4, 64)).astype(np.float32)}
    want = _np_pooled_statistics(feats, taps, "none") @ w + b
    got = np.asarray(pred.embed_features({t: jnp.asarray(v) for t, v in feats.items()}))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_dense_layers_start_lecun_normal():
    """The predictor's Dense kernels start as N(0, 1/fan_in) (LeCun normal) with zero bias, so
    the MLP's activations keep unit scale at the start of training (a 1/fan_in std shrank the
    embedding ~40x for the 1920-wide input)."""
    from arbitrary_nst.models.predictor import Dense

    for fan_in, fan_out in ((1920, 64), (256, 200)):
        d = Dense(fan_in, fan_out, rngs=nnx.Rngs(9))
        k = np.asarray(d.kernel[...])
        assert k.shape == (fan_in, fan_out)
        assert abs(k.std() * np.sqrt(fan_in) - 1.0) < 0.03 and abs(k.mean()) < 0.01
        np.testing.assert_array_equal(np.asarray(d.bias[...]), 0.0)


def test_embedding_mlp_matches_numpy(vgg, rng):
    """embed_features is Dense -> ReLU -> Dense on the pooled statistics, with the module's
    own weights (read out as numpy; random biases so that every term counts)."""
    from arbitrary_nst.models.predictor import StylePredictor

    taps = ("relu1_1", "relu2_1")
    pred = StylePredictor(vgg, cin_channels=cin_layer_channels(0.25), embedding_dim=8,
                          hidden_dim=16, taps=taps, rngs=nnx.Rngs(5))
    for dense in (pred.hidden, pred.bottleneck):
        dense.bias[...] = jnp.asarray(rng.normal(0, 0.5, dense.bias[...].shape), jnp.float32)
    w1, b1, w2, b2 = (np.asarray(v[...], np.float64) for v in (
        pred.hidden.kernel, pred.hidden.bias, pred.bottleneck.kernel, pred.bottleneck.bias))
    assert w1.shape == (2 * (64 + 128), 16) and w2.shape == (16, 8)
    feats = {"relu1_1": rng.gamma(0.5, 3.0, (3, 4, 4, 64)).astype(np.float32),
             "relu2_1": rng.gamma(0.5, 9.0, (3, 2, 2, 128)).astype(np.float32)}
    x = _np_pooled_statistics(feats, taps, "layer")
    h = x @ w1 + b1
    assert (h < 0).any() and (h > 0).any()  # the ReLU matters
    want = np.maximum(h, 0.0) @ w2 + b2
    got = np.asarray(pred.embed_features({t: jnp.asarray(v) for t, v in feats.items()}))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_palette_gives_the_output_the_style_colours(vgg, rng):
    """With ``palette=1`` the output's colour mean and covariance are the style's (numpy on
    the images; it was the content's when the palette target was taken from the content)."""
    m = ArbitraryStyleModel(vgg, width=0.25, hidden_dim=16, style_taps=("relu1_2",),
                            palette=1.0, rngs=nnx.Rngs(6))
    content = rng.random((2, 16, 16, 3)).astype(np.float32)
    style = (np.array([0.3, 0.55, 0.6]) + 0.15 * rng.uniform(-1, 1, (2, 32, 32, 1))
             * np.array([1.0, 0.6, -0.4]) + 0.05 * rng.uniform(-1, 1, (2, 32, 32, 3)))
    style = style.astype(np.float32)
    assert 0 < style.min() and style.max() < 1
    out = np.asarray(nnx.jit(lambda m, c, s: m(c, s))(m, jnp.asarray(content),
                                                      jnp.asarray(style)), np.float64)
    for i in range(2):
        px, ps, pc = (a[i].reshape(-1, 3).astype(np.float64) for a in (out, style, content))
        np.testing.assert_allclose(px.mean(0), ps.mean(0), atol=1e-4)
        np.testing.assert_allclose(np.cov(px.T, bias=True), np.cov(ps.T, bias=True), atol=2e-5)
        assert np.abs(pc.mean(0) - ps.mean(0)).max() > 0.1  # content's colours are other


def test_palette_amount_defaults_to_the_models_palette(vgg, rng):
    """``align_palette`` without an amount (the training step's and ``model(c, s)``'s call)
    moves the output the model's own ``palette`` of the way, as the Stylizer does: a
    palette-0.5 model was trained and previewed at the full palette."""
    from arbitrary_nst import color

    m = ArbitraryStyleModel(vgg, width=0.25, hidden_dim=16, palette=0.5, rngs=nnx.Rngs(8))
    y = rng.random((2, 12, 12, 3)).astype(np.float32) * 0.6 + 0.2
    moments = np.asarray(color.color_moments(rng.random((2, 16, 16, 3)).astype(np.float32) ** 2))
    got = np.asarray(m.align_palette(jnp.asarray(y), jnp.asarray(moments)))
    half = np.asarray(color.align_to_moments(y, moments, 0.5))
    full = np.asarray(color.align_to_moments(y, moments, 1.0))
    np.testing.assert_allclose(got, half, atol=1e-6)
    assert np.abs(half - full).mean() > 1e-2


def test_palette_must_be_a_number_not_a_string_or_a_bool(vgg):
    """``check_palette('0.2')`` and ``check_palette(True)`` were taken (float() of them), while
    counts and loss weights refuse strings and bools; numpy scalars and ints are numbers."""
    from arbitrary_nst.models import check_palette

    for bad in ("0.2", b"0.2", True, np.bool_(False), np.array("0.2")):
        with pytest.raises(ConfigError, match="^palette must be a number in \\[0, 1\\], got "):
            check_palette(bad)
    with pytest.raises(ConfigError, match="^palette must be a number"):
        ArbitraryStyleModel(vgg, width=0.25, hidden_dim=16, palette="0.5", rngs=nnx.Rngs(0))
    for ok, want in ((np.float32(0.5), 0.5), (np.float64(0.25), 0.25), (1, 1.0), (0, 0.0),
                     (np.array(0.75), 0.75)):
        assert check_palette(ok) == want
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="^palette must be in \\[0, 1\\]"):
            check_palette(bad)


def test_transfer_with_shared_or_interpolated_embeddings(model, rng):
    # Non-identity heads so that embeddings matter.
    for head in model.predictor.heads.values():
        head.kernel[...] = jnp.asarray(rng.normal(0, 0.05, head.kernel[...].shape), jnp.float32)
    c = images(rng, 3, 16, 16, 3)
    s = images(rng, 2, 32, 32, 3)
    e = embed(model, s)
    shared = transfer(model, c, e[0])
    np.testing.assert_allclose(np.asarray(shared),
                               np.asarray(transfer(model, c, jnp.tile(e[:1], (3, 1)))), atol=1e-5)
    mix = 0.3 * e[0] + 0.7 * e[1]
    y = transfer(model, c, mix[None])
    assert y.shape == (3, 16, 16, 3) and not np.allclose(np.asarray(y), np.asarray(shared))
    both = nnx.jit(lambda m, c, s: m(c, s))(model, c[:2], s)
    np.testing.assert_allclose(np.asarray(both), np.asarray(transfer(model, c[:2], e)), atol=1e-5)


def test_vgg_is_frozen_and_not_a_param(model, vgg, rng):
    params = nnx.state(model, nnx.Param)
    assert "vgg" not in json.dumps(jax.tree.map(lambda x: 0, nnx.to_pure_dict(params)))
    assert param_count(model) == sum(v.size for v in model_tensors(model).values())
    assert isinstance(model.vgg.layers["conv1_1"]["kernel"], FrozenWeight)
    # An NNX optimizer over nnx.Param trains the model and never touches the shared VGG.
    m = ArbitraryStyleModel(vgg, width=0.25, hidden_dim=32, rngs=nnx.Rngs(1))
    opt = nnx.Optimizer(m, optax.adam(1e-2), wrt=nnx.Param)
    vgg_before = np.asarray(m.vgg.layers["conv1_1"]["kernel"][...]).copy()
    kernel_before = np.asarray(m.transfer_net.contract["conv1"].kernel[...]).copy()

    @nnx.jit
    def step(m, opt, c, e):
        grads = nnx.grad(lambda mod: jnp.mean(mod.transfer(c, e)))(m)  # w.r.t. nnx.Param
        opt.update(m, grads)

    step(m, opt, images(rng, 1, 16, 16, 3), jnp.ones((1, 100)))
    assert not np.array_equal(kernel_before,
                              np.asarray(m.transfer_net.contract["conv1"].kernel[...]))
    np.testing.assert_array_equal(vgg_before, np.asarray(m.vgg.layers["conv1_1"]["kernel"][...]))
    n_opt = sum(x.size for x in jax.tree.leaves(nnx.state(opt, nnx.OptState)))
    # Adam's mu and nu (plus step counters): nothing for the 14.7 M VGG weights.
    assert 2 * param_count(m) <= n_opt <= 2 * param_count(m) + 4


def test_bfloat16_compute_is_close_to_float32(vgg, rng):
    f32 = ArbitraryStyleModel(vgg, width=0.25, hidden_dim=32, rngs=nnx.Rngs(2))
    bf16 = ArbitraryStyleModel(vgg, width=0.25, hidden_dim=32, dtype=jnp.bfloat16,
                               rngs=nnx.Rngs(2))
    c, s = images(rng, 1, 32, 32, 3), images(rng, 1, 32, 32, 3)
    fwd = nnx.jit(lambda m, c, s: m(c, s))
    a, b = fwd(f32, c, s), fwd(bf16, c, s)
    assert b.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(a - b))) < 0.05


def test_config_round_trip(model, vgg):
    cfg = model.config()
    assert cfg == {"width": 0.25, "embedding_dim": 100, "hidden_dim": 32,
                   "style_taps": ["relu1_2", "relu2_2", "relu3_3", "relu4_3"],
                   "feature_norm": "layer", "vgg_pooling": "max", "palette": 0.0}
    again = ArbitraryStyleModel.from_config(vgg, json.loads(json.dumps(cfg)))
    assert again.config() == cfg
    # exports written before the palette existed have no such key: palette off
    old = {k: v for k, v in cfg.items() if k != "palette"}
    assert ArbitraryStyleModel.from_config(vgg, old).palette == 0.0
    assert ArbitraryStyleModel.from_config(vgg, dict(cfg, palette=0.5)).config()["palette"] == 0.5
    for bad in (-0.1, 1.5, "much", None):
        with pytest.raises(ConfigError, match="palette"):
            ArbitraryStyleModel.from_config(vgg, dict(cfg, palette=bad))
    with pytest.raises(ConfigError):
        ArbitraryStyleModel.from_config(vgg, dict(cfg, depth=3))
    with pytest.raises(ConfigError):
        ArbitraryStyleModel.from_config(vgg, dict(cfg, feature_norm="batch"))
    # Magenta's loss VGG pools by averaging: the same weights are re-wrapped, not copied.
    avg = ArbitraryStyleModel.from_config(vgg, dict(cfg, vgg_pooling="avg"))
    assert avg.vgg.pooling == "avg" and avg.config()["vgg_pooling"] == "avg"
    assert avg.vgg.layers["conv1_1"]["kernel"][...] is vgg.layers["conv1_1"]["kernel"][...]


# ------------------------------------------------------------------------------------------------
# Export


def test_export_round_trip(model, vgg, rng, tmp_path):
    path = export_model(model, tmp_path / "m.safetensors", info={"step": 7})
    loaded = load_exported(path, vgg=vgg)
    assert loaded.config() == model.config()
    a, b = model_tensors(model), model_tensors(loaded)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    c, s = images(rng, 1, 16, 16, 3), images(rng, 1, 32, 32, 3)
    fwd = nnx.jit(lambda m, c, s: m(c, s))
    np.testing.assert_array_equal(np.asarray(fwd(model, c, s)), np.asarray(fwd(loaded, c, s)))
    assert read_export(path)[1]["info"] == {"step": 7}
    # float16 halves the file; values are rounded.
    half = export_model(model, tmp_path / "h.safetensors", dtype="float16")
    assert half.stat().st_size < 0.6 * path.stat().st_size
    h = model_tensors(load_exported(half, vgg=vgg))
    assert all(np.allclose(h[k], a[k], rtol=1e-3, atol=1e-4) for k in a)
    with pytest.raises(ConfigError):
        export_model(model, tmp_path / "x.safetensors", dtype="int8")
    # convert_export (what bench/prepare_carry.sh carries): the weights of a float16 export,
    # header and info kept, without building a model.
    conv = convert_export(path, tmp_path / "c.safetensors", dtype="float16")
    assert conv.stat().st_size < 0.6 * path.stat().st_size
    ct, ch = read_export(conv)
    assert ch == read_export(path)[1] and ch["info"] == {"step": 7}
    assert ct.keys() == h.keys() and all(np.array_equal(ct[k], h[k]) for k in h)
    with pytest.raises(ModelError, match="no such file"):
        convert_export(tmp_path / "none.safetensors", tmp_path / "n.safetensors")
    assert not (tmp_path / "n.safetensors").exists()


def test_exports_never_replace_an_input_or_an_existing_file_unasked(model, tmp_path):
    """export_model / convert_export wrote over anything: a photo (now a safetensors blob),
    the built-in model converted onto itself as float16, another run's export."""
    photo = tmp_path / "pic.jpg"
    photo.write_bytes(b"\xff\xd8 a photo")
    with pytest.raises(ConfigError, match="unsupported output format"):
        export_model(model, photo, overwrite=True)
    assert photo.read_bytes() == b"\xff\xd8 a photo"
    path = export_model(model, tmp_path / "m.safetensors")
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="exists; pass overwrite=True"):
        export_model(model, path)
    with pytest.raises(ConfigError, match="would overwrite an input"):
        convert_export(path, path, overwrite=True)
    with pytest.raises(ConfigError, match="exists; pass overwrite=True"):
        convert_export(path, export_model(model, tmp_path / "other.safetensors"))
    assert path.read_bytes() == before
    assert export_model(model, path, overwrite=True, dtype="float16").stat().st_size < len(before)


def test_corrupt_exports_are_refused_in_one_line(model, vgg, tmp_path):
    from safetensors.numpy import save_file

    good = export_model(model, tmp_path / "good.safetensors")
    raw = good.read_bytes()
    tensors, header = read_export(good)
    meta = {"format": "arbitrary_nst.arbitrary_style_model", "format_version": "1",
            "model_config": json.dumps(header["model_config"])}
    cases = {}
    cases["missing.safetensors"] = None
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01not a safetensors file" * 10)
    (tmp_path / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "empty.safetensors").write_bytes(b"")
    save_file({"a": np.zeros(3, np.float32)}, tmp_path / "other.safetensors",
              metadata={"format": "something else"})
    dropped = dict(tensors)
    dropped.pop(sorted(dropped)[0])
    save_file(dropped, tmp_path / "dropped.safetensors", metadata=meta)
    wide = dict(meta, model_config=json.dumps(dict(header["model_config"], width=0.5)))
    save_file(tensors, tmp_path / "wide.safetensors", metadata=wide)
    huge = dict(meta, model_config=json.dumps(dict(header["model_config"], width=1000)))
    save_file(tensors, tmp_path / "huge.safetensors", metadata=huge)  # (a MemoryError, 137 GiB)
    nan = {k: v.copy() for k, v in tensors.items()}
    nan[sorted(nan)[0]].flat[0] = np.nan
    save_file(nan, tmp_path / "nan.safetensors", metadata=meta)
    save_file(tensors, tmp_path / "badjson.safetensors", metadata=dict(meta, model_config="{"))
    (tmp_path / "adir.safetensors").mkdir()
    names = ["missing", "garbage", "truncated", "empty", "other", "dropped", "wide", "huge",
             "nan", "badjson", "adir"]
    for name in names:
        with pytest.raises(ModelError) as err:
            load_exported(tmp_path / f"{name}.safetensors", vgg=vgg)
        msg = str(err.value)
        assert "\n" not in msg and f"{name}.safetensors" in msg, (name, msg)


def test_export_bytes_are_a_sorted_8_byte_aligned_safetensors_layout(model, tmp_path):
    """The file parsed by hand (not by safetensors): an 8-byte little-endian header length that
    is a multiple of 8 (the format's alignment: safetensors itself reads an unaligned header,
    stricter readers and mmap'd float32 views do not), a compact JSON header with sorted keys
    padded with spaces, the metadata as documented and every tensor's float32 bytes at its
    offsets, tiling the rest of the file."""
    info = {"step": 3, "b": [1, 2], "a": "x"}
    raw = export_model(model, tmp_path / "m.safetensors", info=info).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0 and 8 + n <= len(raw)
    text = raw[8:8 + n]
    body = text.rstrip(b" ")
    assert len(text) - len(body) < 8
    header = json.loads(body)
    assert body == json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    assert header.pop("__metadata__") == {
        "format": "arbitrary_nst.arbitrary_style_model", "format_version": "1",
        "model_config": json.dumps(model.config(), sort_keys=True),
        "info": '{"a": "x", "b": [1, 2], "step": 3}'}
    want = model_tensors(model)
    assert set(header) == set(want)
    data = raw[8 + n:]
    spans = []
    for name, entry in header.items():
        assert entry["dtype"] == "F32" and entry["shape"] == list(want[name].shape), name
        a, b = entry["data_offsets"]
        spans.append((a, b))
        got = np.frombuffer(data[a:b], "<f4").reshape(entry["shape"])
        np.testing.assert_array_equal(got, want[name])
    spans.sort()
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    assert all(p[1] == q[0] for p, q in zip(spans, spans[1:]))
    # without info: no "info" key in the file, and read_export's info is {} (not None)
    plain = export_model(model, tmp_path / "plain.safetensors").read_bytes()
    n = int.from_bytes(plain[:8], "little")
    assert "info" not in json.loads(plain[8:8 + n])["__metadata__"]
    assert read_export(tmp_path / "plain.safetensors")[1] == {"model_config": model.config(),
                                                              "info": {}}


def test_read_export_names_each_problem(model, vgg, tmp_path):
    """Each refusal gives its own reason (the checks were reachable only through a generic
    'corrupt header' or a later failure, or not at all: another format version, foreign
    config keys, integer tensors, extra or mis-shaped tensors were all accepted or misnamed)."""
    from safetensors.numpy import save_file

    tensors = model_tensors(model)
    meta = {"format": "arbitrary_nst.arbitrary_style_model", "format_version": "1",
            "model_config": json.dumps(model.config())}
    first = sorted(tensors)[0]

    def write(name, t=tensors, **changes):
        path = tmp_path / f"{name}.safetensors"
        save_file(t, path, metadata={**meta, **changes})
        return path

    (tmp_path / "adir.safetensors").mkdir()
    with pytest.raises(ModelError, match=r"adir\.safetensors: is a directory, not a model file$"):
        read_export(tmp_path / "adir.safetensors")
    with pytest.raises(ModelError, match=r"other\.safetensors: not an arbitrary_nst model export "
                                         r"\(format 'something else', expected "):
        read_export(write("other", format="something else"))
    with pytest.raises(ModelError, match=r"v2\.safetensors: unsupported export version '2' "
                                         r"\(this version reads '1'\)$"):
        read_export(write("v2", format_version="2"))
    foreign = json.dumps(dict(model.config(), colour="red"))
    with pytest.raises(ModelError, match=r"foreign\.safetensors: corrupt export header "
                                         r"\(model_config .*'colour': 'red'"):
        read_export(write("foreign", model_config=foreign))
    ints = dict(tensors, **{first: tensors[first].astype(np.int32)})
    with pytest.raises(ModelError, match=rf"ints\.safetensors: tensor {first} has dtype int32, "
                                         r"expected float32/float16$"):
        read_export(write("ints", ints))
    extra = dict(tensors, zzz=np.zeros(3, np.float32))
    with pytest.raises(ModelError, match=r"extra\.safetensors: weights do not match its "
                                         r"model_config \(missing: \[\], unexpected: \['zzz'\]\)$"):
        load_exported(write("extra", extra), vgg=vgg)
    k = next(k for k in sorted(tensors)
             if tensors[k].ndim == 2 and tensors[k].shape[0] != tensors[k].shape[1])
    wrong = dict(tensors, **{k: np.ascontiguousarray(tensors[k].T)})
    with pytest.raises(ModelError, match=rf"shape\.safetensors: tensor {k} has shape "
                                         rf"\({tensors[k].shape[1]}, {tensors[k].shape[0]}\), "
                                         rf"expected \({tensors[k].shape[0]}, "):
        load_exported(write("shape", wrong), vgg=vgg)


# ------------------------------------------------- mutation-testing pass (export details)


def _raw_header(path) -> dict:
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n])


def test_convert_export_stores_float16_by_default(model, tmp_path):
    """``convert_export(src, dst)`` without a dtype halves the file (its documented default,
    what bench/prepare_carry.sh relies on): every tensor is stored as F16 (the raw header, read
    by hand), holding numpy's float16 rounding of the float32 weights."""
    src = export_model(model, tmp_path / "m.safetensors", info={"step": 2})
    dst = convert_export(src, tmp_path / "half.safetensors")
    header = _raw_header(dst)
    header.pop("__metadata__")
    want = model_tensors(model)
    assert set(header) == set(want)
    assert {entry["dtype"] for entry in header.values()} == {"F16"}
    tensors, _ = read_export(dst)
    for k, v in want.items():
        np.testing.assert_array_equal(tensors[k], v.astype(np.float16).astype(np.float64))


def test_workdir_export_warning_edge_cases(model, tmp_path, caplog):
    """``model_file(workdir)`` warns only for an export whose recorded ``step`` is behind the
    workdir's latest numbered checkpoint: a step-0 export (``num_steps=0``) behind a checkpoint
    warns; an export without a step (no ``info``) does not; orbax's temporary folders of a
    killed save ("8.orbax-checkpoint-tmp-1") are not checkpoints (and are no crash); the step
    is the run's own ``step``, not the chain's ``total_steps``."""
    import logging

    from arbitrary_nst.export import model_file

    def warnings_for(info, checkpoints):
        w = tmp_path / f"w{len(list(tmp_path.iterdir()))}"
        for c in checkpoints:
            (w / "checkpoints" / c).mkdir(parents=True)
        w.mkdir(exist_ok=True)
        export_model(model, w / "model.safetensors", info=info)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="arbitrary_nst.export"):
            assert model_file(w) == str(w / "model.safetensors")
        return [r.getMessage() for r in caplog.records]

    (msg,) = warnings_for({"step": 0}, ["3"])
    assert "is the export of step 0, but the workdir's latest checkpoint is step 3" in msg
    assert warnings_for(None, ["3"]) == []  # (no step recorded: nothing to compare)
    assert warnings_for({"step": 4}, ["4", "8.orbax-checkpoint-tmp-1", "tmp"]) == []
    (msg,) = warnings_for({"step": 4}, ["4", "8.orbax-checkpoint-tmp-1", "6"])
    assert "step 4, but the workdir's latest checkpoint is step 6" in msg
    (msg,) = warnings_for({"step": 2, "total_steps": 12}, ["5"])
    assert "is the export of step 2, but the workdir's latest checkpoint is step 5" in msg
    assert warnings_for({"step": 1}, []) == []  # (an empty checkpoints folder)


def test_read_export_refuses_a_file_without_format_or_with_a_non_dict_config(model, tmp_path):
    """Only a file that says it is an arbitrary_nst export is one (the version alone is not
    enough), and a model_config that is not a JSON object is a corrupt header (``5`` was a
    TypeError traceback, ``[]`` an accepted empty config)."""
    from safetensors.numpy import save_file

    tensors = model_tensors(model)
    meta = {"format": "arbitrary_nst.arbitrary_style_model", "format_version": "1",
            "model_config": json.dumps(model.config())}
    path = tmp_path / "m.safetensors"
    save_file(tensors, path, metadata={k: v for k, v in meta.items() if k != "format"})
    with pytest.raises(ModelError, match=r"m\.safetensors: not an arbitrary_nst model export "
                                         r"\(format None, expected "):
        read_export(path)
    for config in ("5", "[]", '"width"'):
        save_file(tensors, path, metadata=dict(meta, model_config=config))
        with pytest.raises(ModelError, match=r"m\.safetensors: corrupt export header "
                                             r"\(model_config "):
            read_export(path)


def test_read_export_refuses_a_damaged_info(model, tmp_path):
    """An ``info`` that is not a JSON object, or a step that is not a whole number, was an
    AttributeError / ValueError traceback in train.py's init_from and --export checks and
    after a whole distillation (stylizing ignored it): a corrupt header everywhere."""
    from safetensors.numpy import save_file

    from arbitrary_nst import export

    tensors = model_tensors(model)
    meta = {"format": "arbitrary_nst.arbitrary_style_model", "format_version": "1",
            "model_config": json.dumps(model.config())}
    path = tmp_path / "m.safetensors"
    for info, what in (("[1, 2]", r"info \[1, 2\]"), ('"x"', "info 'x'"),
                       ('{"total_steps": "12.5"}', "info.total_steps '12.5'"),
                       ('{"step": -3}', "info.step -3"), ('{"num_steps": 2.5}', "info.num_steps 2.5"),
                       ('{"step": true}', "info.step True")):
        save_file(tensors, path, metadata=dict(meta, info=info))
        with pytest.raises(ModelError, match=rf"m\.safetensors: corrupt export header \({what}"):
            read_export(path)
    save_file(tensors, path, metadata=dict(meta, info='{"step": 8, "total_steps": 20}'))
    assert export.recorded_steps(read_export(path)[1]["info"]) == 20


def test_model_paths_that_name_nothing_usable_say_what_they_are(model, tmp_path):
    """``--model ""`` said ": no such model file"; a workdir whose model.safetensors is a
    folder said "a directory without model.safetensors"."""
    from arbitrary_nst import export

    with pytest.raises(ModelError, match="^the model path is empty"):
        export.model_file("")
    (tmp_path / "w" / "model.safetensors").mkdir(parents=True)
    with pytest.raises(ModelError, match=r"w/model\.safetensors: is a directory, not a model "
                                         "file"):
        export.model_file(tmp_path / "w")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\x08\x07" + b"x" * 100)
    with pytest.raises(ModelError) as e:  # (no --backend hint: only stylizing has one)
        read_export(onnx)
    assert str(e.value) == f"{onnx}: an ONNX file, not a model export; pass the .safetensors " \
                           "export it was made from"


def test_load_exported_computes_in_the_dtype_asked(model, vgg, rng, tmp_path):
    """``load_exported(dtype=jnp.bfloat16)`` computes in bfloat16: its images differ from the
    float32 model's by rounding only, and come out as float32."""
    path = export_model(model, tmp_path / "m.safetensors")
    c, s = images(rng, 1, 32, 32, 3), images(rng, 1, 32, 32, 3)
    fwd = nnx.jit(lambda m, c, s: m(c, s))
    a = np.asarray(fwd(load_exported(path, vgg=vgg), c, s))
    b = fwd(load_exported(path, vgg=vgg, dtype=jnp.bfloat16), c, s)
    assert b.dtype == jnp.float32
    err = float(np.abs(a - np.asarray(b)).max())
    assert 0 < err < 0.05, err


def test_load_exported_turns_config_and_memory_failures_into_one_model_error(
        model, vgg, tmp_path, monkeypatch):
    """A model_config that from_config rejects with a ValueError or TypeError (``hidden_dim``
    "x", ``style_taps`` 5), or a model too large for the device (XLA's RESOURCE_EXHAUSTED, not
    a MemoryError), is a one-line ModelError naming the file; any other error is not hidden."""
    import re

    from safetensors.numpy import save_file

    tensors = model_tensors(model)
    meta = {"format": "arbitrary_nst.arbitrary_style_model", "format_version": "1"}
    for i, change in enumerate(({"hidden_dim": "x"}, {"style_taps": 5})):
        path = tmp_path / f"bad{i}.safetensors"
        save_file(tensors, path, metadata=dict(meta, model_config=json.dumps(
            dict(model.config(), **change))))
        with pytest.raises(ModelError, match=rf"^{re.escape(str(path))}: invalid model_config "
                                             r"in export \("):
            load_exported(path, vgg=vgg)
    good = export_model(model, tmp_path / "good.safetensors")

    def fail(error):
        def from_config(*a, **k):
            raise error
        monkeypatch.setattr(ArbitraryStyleModel, "from_config", from_config)

    fail(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 137 GiB"))
    with pytest.raises(ModelError, match=rf"^{re.escape(str(good))}: its model_config "
                                         r"\(width 0.25, embedding_dim 100, hidden_dim 32\) "
                                         r"describes a model too large to build here"):
        load_exported(good, vgg=vgg)
    fail(RuntimeError("something else"))
    with pytest.raises(RuntimeError, match="something else"):
        load_exported(good, vgg=vgg)


def _recording_safe_open(monkeypatch):
    """Patch safetensors.safe_open (read_export imports it at each call) to record the tensors
    whose data is read; reading one named ``zzz*`` fails the test (it was read in full)."""
    import safetensors

    real, read = safetensors.safe_open, []

    class Recording:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

        def __getattr__(self, attr):
            return getattr(self.f, attr)

        def get_tensor(self, k):
            read.append(k)
            if k.startswith("zzz"):
                raise AssertionError(f"{k}'s data was read")
            return self.f.get_tensor(k)

    monkeypatch.setattr(safetensors, "safe_open", Recording)
    return read


def test_an_export_header_nested_too_deeply_is_a_corrupt_header(model, vgg, tmp_path):
    """JSON nested 100000 deep in info or model_config was a RecursionError traceback from
    infer.py --model, train.py's init_from and export-onnx."""
    import re

    from safetensors.numpy import save_file

    meta = {"format": "arbitrary_nst.arbitrary_style_model", "format_version": "1",
            "model_config": json.dumps(model.config())}
    deep = "[" * 100000 + "]" * 100000
    for key in ("info", "model_config"):
        path = tmp_path / f"{key}.safetensors"
        save_file(model_tensors(model), path, metadata=dict(meta, **{key: deep}))
        for read in (read_export, lambda p: load_exported(p, vgg=vgg)):
            with pytest.raises(ModelError, match=rf"^{re.escape(str(path))}: corrupt export header "
                                                 r"\(RecursionError: [^\n]*\)$"):
                read(path)


def test_expected_export_shapes_are_those_of_the_built_model(vgg):
    """read_export's names and shapes, worked out from a model_config without building the
    model, are the built model's (its defaults included)."""
    from arbitrary_nst import export

    for cfg in ({"width": 0.25, "hidden_dim": 32}, {"width": 0.5, "embedding_dim": 7,
                                                    "hidden_dim": 0, "style_taps": ["relu3_3"]},
                {}, {"width": 1 / 32, "hidden_dim": 3, "style_taps": ["relu1_1", "relu5_3"]}):
        built = ArbitraryStyleModel.from_config(vgg, cfg)
        want = {k: v.shape for k, v in model_tensors(built).items()}
        assert export._expected_shapes("m", cfg) == want, cfg


def test_a_model_config_that_does_not_fit_the_weights_is_refused_before_building(
        model, vgg, tmp_path, monkeypatch):
    """A damaged model_config (hidden_dim 50000, embedding_dim 10000) beside 6 MB of weights
    built a 7 GB model for a minute before the shapes were compared: they are now compared
    with the config's from the file's header, before a model is built or a tensor read."""
    import re

    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    save_file(model_tensors(model), path, metadata={
        "format": "arbitrary_nst.arbitrary_style_model", "format_version": "1",
        "model_config": json.dumps(dict(model.config(), hidden_dim=50000, embedding_dim=10000))})

    def from_config(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(ArbitraryStyleModel, "from_config", from_config)
    read = _recording_safe_open(monkeypatch)
    with pytest.raises(ModelError, match=rf"^{re.escape(str(path))}: tensor predictor/bottleneck/bias has shape "
                                         r"\(100,\), expected \(10000,\)$"):
        load_exported(path, vgg=vgg)
    assert read == []


def test_an_extra_tensor_is_refused_without_reading_it(model, tmp_path, monkeypatch):
    """An unexpected tensor declared 1 GiB (a sparse file) was read in full, converted and
    checked for NaNs before it was refused: the header's names are checked first."""
    import re

    from safetensors.numpy import save

    blob = save(model_tensors(model), metadata={
        "format": "arbitrary_nst.arbitrary_style_model", "format_version": "1",
        "model_config": json.dumps(model.config())})
    n = int.from_bytes(blob[:8], "little")
    header, data = json.loads(blob[8:8 + n]), blob[8 + n:]
    header["zzz_junk"] = {"dtype": "F32", "shape": [1 << 28],
                          "data_offsets": [len(data), len(data) + (4 << 28)]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = tmp_path / "junk.safetensors"
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + data)
        f.truncate(8 + len(text) + len(data) + (4 << 28))  # (sparse: no 1 GiB written)
    read = _recording_safe_open(monkeypatch)
    with pytest.raises(ModelError, match=rf"^{re.escape(str(path))}: weights do not match its model_config "
                                         r"\(missing: \[\], unexpected: \['zzz_junk'\]\)$"):
        read_export(path)
    assert read == []


def test_model_file_of_a_folder_without_an_export_is_a_model_error(tmp_path):
    import re

    from arbitrary_nst.export import model_file

    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    for warn in (True, False):
        # (it has a checkpoint: a training workdir, named as one since 9d53a89)
        with pytest.raises(ModelError, match=rf"^{re.escape(str(tmp_path))}: a training workdir "
                                             r"without model.safetensors"):
            model_file(tmp_path, warn=warn)
    assert model_file(tmp_path / "x.safetensors") == str(tmp_path / "x.safetensors")


def test_a_workdir_without_its_export_says_what_it_is_and_how_to_export_it(tmp_path):
    """``--model W`` for a run that exported elsewhere (``--export``) said only "a directory
    without model.safetensors"; a training workdir's latest checkpoint is named with the fix."""
    from arbitrary_nst.export import model_file

    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ModelError, match=r"a directory without model.safetensors \(pass"):
        model_file(plain)
    (tmp_path / "w" / "checkpoints" / "4").mkdir(parents=True)
    (tmp_path / "w" / "checkpoints" / "12").mkdir()
    with pytest.raises(ModelError) as e:
        model_file(tmp_path / "w")
    assert "a training workdir without model.safetensors (its latest checkpoint is step 12)" \
        in str(e.value) and "resume the run with train.py (same config" in str(e.value)


def test_a_model_or_fitted_style_that_is_a_pipe_or_a_symlink_loop_is_refused(tmp_path):
    """A FIFO given as --model blocked in safe_open's open(2) for good, holding the GIL
    (Ctrl-C and SIGTERM ignored; only SIGKILL ended it), a FIFO as a fitted style until a
    signal; a symlink loop as --model said "no such model file". One line each now, before
    anything is opened. (In a child process with a timeout: a regression must not hang the
    suite, and a thread cannot watch a call that holds the GIL.)"""
    import os
    import subprocess
    import sys

    fifo_model, fifo_style = tmp_path / "m.safetensors", tmp_path / "s.npz"
    os.mkfifo(fifo_model)
    os.mkfifo(fifo_style)
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop.name)
    script = (
        "import sys\n"
        "from arbitrary_nst import export, fit_style\n"
        "from arbitrary_nst.inference import Stylizer\n"
        "m, s, loop = sys.argv[1:]\n"
        "for call, arg in ((export.load_exported, m), (Stylizer.load, m),\n"
        "                  (fit_style.FittedStyle.load, s), (Stylizer.load, loop)):\n"
        "    try:\n"
        "        call(arg)\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__, e)\n")
    r = subprocess.run([sys.executable, "-c", script, str(fifo_model), str(fifo_style),
                        str(loop)], capture_output=True, text=True, timeout=120)
    pipe = "not a regular file (a pipe, socket or device)"
    assert r.stdout.splitlines() == [
        f"ModelError {fifo_model}: {pipe}", f"ModelError {fifo_model}: {pipe}",
        f"ModelError {fifo_style}: {pipe}",
        f"ModelError {loop}: too many levels of symbolic links (a symlink loop)"], r
