"""Losses against float64 references, finite differences and their invariances."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arbitrary_nst import losses
from arbitrary_nst import vgg as vgg_lib
from arbitrary_nst.errors import ConfigError


def _np_gram(f, norm):
    b, h, w, c = f.shape
    x = f.reshape(b, h * w, c).astype(np.float64)
    g = np.einsum("bnc,bnd->bcd", x, x)
    return g / {"hw": h * w, "chw": c * h * w, "none": 1}[norm]


@pytest.mark.parametrize("norm", ["hw", "chw", "none"])
def test_gram_matches_numpy_float64(norm):
    f = np.random.default_rng(0).standard_normal((2, 5, 7, 4)).astype(np.float32)
    np.testing.assert_allclose(losses.gram_matrix(jnp.asarray(f), norm), _np_gram(f, norm),
                               rtol=1e-5, atol=1e-6)


def test_gram_of_bfloat16_features_accumulates_in_float32():
    """bf16 features (the bf16 training path): the Gram is float32 and accumulated in float32,
    not rounded to bf16 (8 bits of mantissa: ~0.4% off)."""
    f = np.random.default_rng(6).random((2, 16, 16, 8)).astype(np.float32)
    fb = jnp.asarray(f, jnp.bfloat16)
    want = _np_gram(np.asarray(fb.astype(jnp.float32)), "hw")  # of the bf16-rounded values
    for norm in ("hw", "none"):
        g = losses.gram_matrix(fb, norm)
        assert g.dtype == jnp.float32, norm
        scale = 1.0 if norm == "hw" else 16 * 16
        np.testing.assert_allclose(np.asarray(g), want * scale, rtol=2e-5, err_msg=norm)
    np.testing.assert_allclose(np.asarray(losses.gram_matrix(fb)),
                               np.asarray(losses.gram_matrix(jnp.asarray(f))), rtol=1e-2)


def test_centered_gram_is_covariance_and_offset_invariant():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    centered = f - f.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(losses.centered_gram_matrix(jnp.asarray(f)), _np_gram(centered, "hw"),
                               rtol=1e-5, atol=1e-6)
    shifted = f + rng.standard_normal((2, 1, 1, 3)).astype(np.float32) * 10
    np.testing.assert_allclose(losses.centered_gram_matrix(jnp.asarray(shifted)),
                               losses.centered_gram_matrix(jnp.asarray(f)), rtol=1e-3, atol=1e-3)
    # ...while the plain Gram is not.
    assert not np.allclose(losses.gram_matrix(jnp.asarray(shifted)), losses.gram_matrix(jnp.asarray(f)))


def test_mean_std_and_tv_match_numpy():
    x = np.random.default_rng(2).random((2, 8, 9, 3))
    mean, std = losses.mean_std(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(mean, x.mean((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(std, np.sqrt(x.var((1, 2)) + 1e-5), rtol=1e-5)
    dy, dx = np.diff(x, axis=1), np.diff(x, axis=2)
    magenta = 0.5 * ((dy ** 2).reshape(2, -1).mean(1) + (dx ** 2).reshape(2, -1).mean(1))
    np.testing.assert_allclose(losses.total_variation(jnp.asarray(x, jnp.float32)), magenta, rtol=1e-5)
    l1 = np.abs(dy).reshape(2, -1).mean(1) + np.abs(dx).reshape(2, -1).mean(1)
    np.testing.assert_allclose(losses.total_variation(jnp.asarray(x, jnp.float32), "l1"), l1, rtol=1e-5)


# A two-tap stand-in for the VGG (1x1 conv + ReLU, then 2x2 average pooling + 1x1 conv + ReLU),
# written once in numpy float64 and once in jax, so the whole perceptual loss can be checked
# against a numpy float64 reference with taps of different sizes.
_W1 = np.random.default_rng(10).standard_normal((3, 5))
_W2 = np.random.default_rng(11).standard_normal((5, 6))


def _np_feats(x):
    a = np.maximum(x @ _W1, 0.0)
    b, h, w, c = a.shape
    pooled = a.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    return {"relu1_1": a, "relu2_1": np.maximum(pooled @ _W2, 0.0)}


def _jax_feats(x, taps):
    a = jax.nn.relu(x @ jnp.asarray(_W1, x.dtype))
    b, h, w, c = a.shape
    pooled = a.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    out = {"relu1_1": a, "relu2_1": jax.nn.relu(pooled @ jnp.asarray(_W2, x.dtype))}
    return {t: out[t] for t in taps}


def _np_statistic(f, kind, norm):
    mse_parts = {}
    if kind in ("gram", "both"):
        mse_parts["gram"] = _np_gram(f, norm)
    if kind in ("centered_gram", "both"):
        mse_parts["centered_gram"] = _np_gram(f - f.mean(axis=(1, 2), keepdims=True), norm)
    if kind == "mean_std":
        mse_parts["mean"] = f.mean(axis=(1, 2))
        mse_parts["std"] = np.sqrt(f.var(axis=(1, 2)) + 1e-5)
    return mse_parts


@pytest.mark.parametrize("kind,norm,tv_kind",
                         [(k, "hw", "magenta") for k in losses.STYLE_STATISTICS]
                         + [("gram", "chw", "magenta"), ("both", "none", "magenta"),
                            ("gram", "hw", "l1")])
def test_perceptual_loss_matches_numpy_float64(kind, norm, tv_kind):
    rng = np.random.default_rng(12)
    x, content, style = (rng.random((n, 6, 8, 3)) for n in (2, 2, 1))
    cfg = losses.LossConfig(content_layers={"relu1_1": 0.7, "relu2_1": 0.3},
                            style_layers={"relu1_1": 2.0, "relu2_1": 5.0}, content_weight=1.5,
                            style_weight=0.25, tv_weight=3.0, style_statistic=kind,
                            gram_norm=norm, tv_kind=tv_kind)
    fx, fc, fs = _np_feats(x), _np_feats(content), _np_feats(style)
    ref = {"content": 0.0, "style": 0.0}
    for layer, w in cfg.content_layers.items():
        ref[f"content/{layer}"] = ((fx[layer] - fc[layer]) ** 2).reshape(2, -1).mean(1)
        ref["content"] = ref["content"] + w * ref[f"content/{layer}"]
    for layer, w in cfg.style_layers.items():
        ours, target = (_np_statistic(f[layer], kind, norm) for f in (fx, fs))
        ref[f"style/{layer}"] = sum(((ours[k] - target[k]) ** 2).reshape(2, -1).mean(1)
                                    for k in ours)  # every part of the statistic counts
        ref["style"] = ref["style"] + w * ref[f"style/{layer}"]
    dy, dx = np.diff(x, axis=1), np.diff(x, axis=2)
    if tv_kind == "l1":  # (the loss used the default kind whatever the config said)
        tv = np.abs(dy).reshape(2, -1).mean(1) + np.abs(dx).reshape(2, -1).mean(1)
    else:
        tv = 0.5 * ((dy ** 2).reshape(2, -1).mean(1) + (dx ** 2).reshape(2, -1).mean(1))
    ref = dict(ref, content=1.5 * ref["content"], style=0.25 * ref["style"], tv=3.0 * tv)
    with jax.enable_x64(True):
        jx = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
        targets = losses.StyleTargets.from_images(_jax_feats, jx(style), cfg)
        total, terms = losses.perceptual_loss(
            _jax_feats, jx(x), cfg, content_feats=_jax_feats(jx(content), cfg.taps),
            style_targets=targets)
        assert total.dtype == jnp.float64
        for k, v in ref.items():
            np.testing.assert_allclose(np.asarray(terms[k]), v, rtol=1e-10, err_msg=k)
        np.testing.assert_allclose(np.asarray(total), ref["content"] + ref["style"] + ref["tv"],
                                   rtol=1e-10)


@pytest.mark.parametrize("kind", losses.STYLE_STATISTICS)
def test_losses_zero_for_identical_inputs(vgg, kind):
    x = jnp.asarray(np.random.default_rng(3).random((2, 32, 40, 3), dtype=np.float32))
    cfg = losses.LossConfig(style_statistic=kind, tv_weight=0.0)
    feats = vgg(x, cfg.taps)
    total, terms = losses.perceptual_loss(vgg, x, cfg, content_feats=feats,
                                          style_targets=losses.StyleTargets.from_features(feats, cfg))
    assert total.shape == (2,)
    np.testing.assert_allclose(terms["content"], 0.0, atol=1e-6)
    np.testing.assert_allclose(terms["style"], 0.0, atol=1e-6)
    # And positive for different inputs.
    y = jnp.flip(x, axis=1)
    total, _ = losses.perceptual_loss(vgg, y, cfg, content_feats=feats,
                                      style_targets=losses.StyleTargets.from_features(vgg(x[::-1], cfg.taps), cfg))
    assert np.all(np.asarray(total) > 0)


def test_gradients_match_finite_differences_float64(vgg_params):
    """d(loss)/d(pixels) through the real VGG16 layers, in float64, against central differences."""
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), vgg_params)
        feature_fn = lambda x, taps: vgg_lib.features(p64, x, taps)  # noqa: E731
        cfg = losses.LossConfig(content_layers={"relu2_1": 1.0},
                                style_layers={"relu1_2": 1e-3, "relu2_1": 1e-3},
                                style_statistic="both", tv_weight=10.0)
        rng = np.random.default_rng(4)
        content = jnp.asarray(rng.random((1, 32, 32, 3)))
        style = jnp.asarray(rng.random((1, 32, 32, 3)))
        targets = losses.StyleTargets.from_images(feature_fn, style, cfg)
        cfeats = feature_fn(content, cfg.taps)

        def loss(x):
            total, _ = losses.perceptual_loss(feature_fn, x, cfg, content_feats=cfeats,
                                              style_targets=targets)
            return total.sum()

        x0 = jnp.asarray(rng.random((1, 32, 32, 3)))
        grad = np.asarray(jax.grad(loss)(x0))
        eps = 1e-5
        for idx in [(0, 0, 0, 0), (0, 5, 17, 1), (0, 31, 31, 2), (0, 16, 3, 0)]:
            e = np.zeros(x0.shape)
            e[idx] = eps
            fd = (loss(x0 + e) - loss(x0 - e)) / (2 * eps)
            np.testing.assert_allclose(grad[idx], fd, rtol=1e-5, atol=1e-8 * abs(float(loss(x0))))


def test_style_targets_precomputed_broadcast_and_blend(vgg):
    rng = np.random.default_rng(5)
    styles = jnp.asarray(rng.random((2, 32, 32, 3), dtype=np.float32))
    cfg = losses.LossConfig()
    targets = losses.StyleTargets.from_images(vgg, styles, cfg)
    assert targets.stats["relu1_2"]["gram"].shape == (2, 64, 64)
    mixed = targets.blend(jnp.array([0.25, 0.75]))
    np.testing.assert_allclose(mixed.stats["relu4_3"]["gram"][0],
                               0.25 * targets.stats["relu4_3"]["gram"][0]
                               + 0.75 * targets.stats["relu4_3"]["gram"][1], rtol=1e-5)
    # Matching the blended target == weighted sum of per-style losses, up to a constant.
    x = jnp.asarray(rng.random((3, 32, 32, 3), dtype=np.float32))
    f = vgg(x, ("relu1_2",))["relu1_2"]
    g = losses.style_statistic(f)
    blended = losses.statistic_distance(g, mixed.stats["relu1_2"])
    per_style = [losses.statistic_distance(g, jax.tree_util.tree_map(lambda a, i=i: a[i:i + 1],
                                                                     targets.stats["relu1_2"]))
                 for i in range(2)]
    const = 0.25 * per_style[0] + 0.75 * per_style[1] - blended
    np.testing.assert_allclose(const, const[0], rtol=1e-4)
    # StyleTargets is a pytree: it goes through jit.
    out = jax.jit(lambda t: t.stats["relu1_2"]["gram"].sum())(targets)
    assert np.isfinite(out)
    # Weights are a mix, as everywhere else: [3, 7] = [0.3, 0.7] (it was 10x the target), also
    # per row and under jit; one weight for two styles summed them; negatives were taken.
    g0 = lambda t: np.asarray(t.stats["relu2_2"]["gram"])  # noqa: E731
    np.testing.assert_allclose(g0(targets.blend([3.0, 7.0])), g0(targets.blend([0.3, 0.7])),
                               rtol=1e-6)
    rows = jax.jit(lambda t, w: t.blend(w))(targets, jnp.array([[3.0, 7.0], [1.0, 0.0]]))
    np.testing.assert_allclose(g0(rows)[0], g0(targets.blend([0.3, 0.7]))[0], rtol=1e-6)
    np.testing.assert_allclose(g0(rows)[1], g0(targets)[0], rtol=1e-6)
    for bad, msg in (([1.0], "with S = 2"), ([[[1.0, 1.0]]], "with S = 2"),
                     ([-1.0, 2.0], ">= 0"), ([0.0, 0.0], "not all 0"), ([np.nan, 1.0], "finite")):
        with pytest.raises(ConfigError, match=msg):
            targets.blend(bad)
    # a content-only loss (no style layers) has no statistics: nothing to check or mix (the
    # batch check above was an IndexError there, in training and analysis.layer_magnitudes)
    none = losses.LossConfig(style_layers={})
    empty = losses.StyleTargets.from_images(vgg, styles, none)
    assert empty.num_styles is None and empty.blend([1.0]).stats == {}
    total, terms = losses.perceptual_loss(vgg, x, none, content_feats=None, style_targets=empty)
    assert total.shape == (3,) and not np.any(np.asarray(terms["style"]))
    # two style targets for three images: a ConfigError, not JAX's broadcasting error
    with pytest.raises(ConfigError, match="2 style targets for 3 images"):
        losses.perceptual_loss(vgg, x, cfg, content_feats=None, style_targets=targets)


def test_config_validation_and_depth_weights():
    with pytest.raises(ConfigError, match="unknown VGG16 tap"):
        losses.LossConfig(style_layers={"relu9_9": 1.0})
    with pytest.raises(ConfigError, match="style_statistic"):
        losses.LossConfig(style_statistic="gramm")
    with pytest.raises(ConfigError, match="tv_weight"):
        losses.LossConfig(tv_weight=-1)
    # NaN passed `< 0` (a step was trained, then "lower the learning rate"); a string was a
    # TypeError; an unknown tv_kind was found only when the loss was traced
    for bad in (dict(tv_weight=float("nan")), dict(style_weight="abc"),
                dict(content_weight=float("inf")), dict(style_weight=True)):
        with pytest.raises(ConfigError, match=f"{next(iter(bad))} must be a finite number"):
            losses.LossConfig(**bad)
    with pytest.raises(ConfigError, match="tv_kind must be one of"):
        losses.LossConfig(tv_kind="L1")
    # a layer weight of 0 switches a layer off: allowed (only negative ones are refused)
    zero = losses.LossConfig(content_layers={"relu3_3": 0.0},
                             style_layers={"relu1_2": 0.0, "relu2_2": 1e-3})
    assert zero.style_layers["relu1_2"] == 0.0 and zero.content_layers["relu3_3"] == 0.0
    for layers in ({"relu1_2": -1e-3}, {"relu1_2": float("nan")}):
        with pytest.raises(ConfigError, match="layer weight"):
            losses.LossConfig(style_layers=layers)
    with pytest.raises(ConfigError, match="unknown loss options"):
        losses.LossConfig.from_config({"style_wieght": 1.0})
    w = losses.depth_weighted_layers(["relu1_1", "relu2_1", "relu3_1"], total=7.0)
    assert list(w.values()) == pytest.approx([1.0, 2.0, 4.0])
    cfg = losses.LossConfig.from_config({"style_weight": 2.0, "content_layers": {"relu4_2": 1.0}})
    assert cfg.taps == ("relu4_2", "relu1_2", "relu2_2", "relu3_3", "relu4_3")


def test_loss_config_takes_ml_collections_config_dicts():
    """A ConfigDict is no Mapping but has items(): the layer-map check refused every config
    (train.py failed); from_config makes its layer maps plain dicts."""
    ml_collections = pytest.importorskip("ml_collections")
    cd = ml_collections.ConfigDict({"style_weight": 2.0, "content_layers": {"relu4_2": 1.0},
                                    "style_layers": {"relu1_2": 1e-3}})
    cfg = losses.LossConfig.from_config(cd)
    assert type(cfg.content_layers) is dict and type(cfg.style_layers) is dict
    assert cfg.taps == ("relu4_2", "relu1_2") and cfg.style_weight == 2.0
    direct = losses.LossConfig(content_layers=ml_collections.ConfigDict({"relu3_3": 1.0}))
    assert direct.taps[0] == "relu3_3"


def test_uint8_images_reach_any_feature_fn_scaled():
    """perceptual_loss and StyleTargets.from_images scale uint8 images before the feature
    function, not only VGG16 (which scales its own input): a custom feature_fn saw 0..255."""
    def fn(x, taps):
        return {t: jnp.asarray(x, jnp.float32) for t in taps}

    u8 = np.random.default_rng(5).integers(0, 256, (1, 8, 8, 3), np.uint8)
    f = u8.astype(np.float32) / 255
    cfg = losses.LossConfig(content_layers={"relu1_1": 1.0}, style_layers={"relu1_2": 1.0})
    t8, tf = (losses.StyleTargets.from_images(fn, x, cfg) for x in (u8, f))
    for a, b in zip(jax.tree.leaves(t8.stats), jax.tree.leaves(tf.stats), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    l8, lf = (losses.perceptual_loss(fn, x, cfg, content_feats={"relu1_1": f},
                                     style_targets=tf)[0] for x in (u8, f))
    np.testing.assert_allclose(l8, lf, rtol=1e-5, atol=1e-7)


def test_bfloat16_features_give_float32_statistics_and_losses():
    """bf16 features and images (the bf16 training path): the centered Gram, mean/std, content
    MSE and total variation are float32 and accumulated in float32, against float64 numpy on
    the bf16-rounded values (each was ~0.4% off when a mean, a difference or a square was
    rounded to bf16, as the plain Gram was before)."""
    rng = np.random.default_rng(21)
    fb = jnp.asarray(rng.random((2, 16, 16, 8)) * 3.0 + 1.0, jnp.bfloat16)
    tb = jnp.asarray(rng.random((2, 16, 16, 8)) * 3.0 + 1.0, jnp.bfloat16)
    f, t = (np.asarray(a.astype(jnp.float32), np.float64) for a in (fb, tb))
    c = f - f.mean(axis=(1, 2), keepdims=True)
    got = losses.centered_gram_matrix(fb)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), _np_gram(c, "hw"), rtol=1e-4, atol=1e-5)
    mean, std = losses.mean_std(fb)
    assert mean.dtype == std.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(mean), f.mean((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(std), np.sqrt(f.var((1, 2)) + 1e-5), rtol=1e-5)
    mse = losses.content_loss(fb, tb)
    assert mse.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(mse), ((f - t) ** 2).reshape(2, -1).mean(1), rtol=1e-5)
    x = f[..., :3] / 4.0
    xb = jnp.asarray(x, jnp.bfloat16)
    x = np.asarray(xb.astype(jnp.float32), np.float64)
    dy, dx = np.diff(x, axis=1), np.diff(x, axis=2)
    tv = losses.total_variation(xb)
    assert tv.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(tv), 0.5 * ((dy ** 2).reshape(2, -1).mean(1) + (dx ** 2).reshape(2, -1).mean(1)),
        rtol=1e-5)



def test_integer_images_are_scaled_in_the_losses(vgg):
    """A uint8 batch is 0..255 (as in the rest of the package) in perceptual_loss, its total
    variation and StyleTargets.from_images: it was read as floats up to 255 (the loss ~65000x
    too large, no error)."""
    u8 = np.random.default_rng(11).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    f = jnp.asarray(u8.astype(np.float32) / 255)
    cfg = losses.LossConfig(content_layers={"relu1_2": 1.0}, style_layers={"relu2_1": 1.0})
    np.testing.assert_allclose(losses.total_variation(u8), losses.total_variation(f), rtol=1e-6)
    np.testing.assert_allclose(losses.total_variation(u8.astype(np.uint16) * 257),
                               losses.total_variation(f), rtol=1e-6)
    t8 = losses.StyleTargets.from_images(vgg, u8, cfg)
    tf = losses.StyleTargets.from_images(vgg, f, cfg)
    gf = np.asarray(tf.stats["relu2_1"]["gram"])
    np.testing.assert_allclose(t8.stats["relu2_1"]["gram"], gf, rtol=1e-4,
                               atol=1e-6 * float(np.abs(gf).max()))
    feats = vgg(f[::-1], cfg.taps)
    a = losses.perceptual_loss(vgg, u8, cfg, content_feats=feats, style_targets=tf)[0]
    b = jax.jit(lambda x: losses.perceptual_loss(vgg, x, cfg, content_feats=feats,
                                                 style_targets=tf)[0])(jnp.asarray(u8))
    want = losses.perceptual_loss(vgg, f, cfg, content_feats=feats, style_targets=tf)[0]
    np.testing.assert_allclose(a, want, rtol=1e-4)
    np.testing.assert_allclose(b, want, rtol=1e-4)
    with pytest.raises(ConfigError, match="got int64"):
        losses.total_variation(u8.astype(np.int64))


def test_layer_maps_and_content_features_are_checked_with_one_line_errors(vgg):
    """A list of layers was a raw AttributeError; content features without a layer a raw
    KeyError, of another size a raw broadcast ValueError; the batch-1 message read
    "need 1 or 1"."""
    for name in ("style_layers", "content_layers"):
        with pytest.raises(ConfigError, match=f"^{name} must map layer names to weights"):
            losses.LossConfig(**{name: ["relu1_1"]})
    x = jnp.asarray(np.random.default_rng(12).random((1, 32, 40, 3), dtype=np.float32))
    cfg = losses.LossConfig(content_layers={"relu1_2": 1.0, "relu2_1": 1.0},
                            style_layers={"relu1_1": 1.0})
    feats = vgg(x, cfg.taps)
    with pytest.raises(ConfigError, match=r"^perceptual_loss: content_feats has no relu2_1 "
                                          r"\(has relu1_2\)"):
        losses.perceptual_loss(vgg, x, cfg, content_feats={"relu1_2": feats["relu1_2"]},
                               style_targets=None)
    other = vgg(jnp.zeros((1, 40, 40, 3)), cfg.taps)
    with pytest.raises(ConfigError, match=r"^perceptual_loss: content_feats\['relu1_2'\] has "
                                          r"shape \(1, 40, 40, 64\), the images' features "
                                          r"\(1, 32, 40, 64\) \(batch 1\)"):
        losses.perceptual_loss(vgg, x, cfg, content_feats=other, style_targets=None)
    with pytest.raises(ConfigError, match=r"^perceptual_loss: style_targets has no relu1_1"):
        losses.perceptual_loss(vgg, x, cfg, content_feats=None,
                               style_targets=losses.StyleTargets({}))
    feats2 = vgg(jnp.concatenate([x, x]), cfg.taps)
    two = losses.StyleTargets.from_features(feats2, cfg)
    # content features of 2 images for 1 image: not broadcast into a loss per feature
    with pytest.raises(ConfigError, match=r"^perceptual_loss: content_feats\['relu1_2'\] has "
                                          r"shape \(2, 32, 40, 64\), .* \(batch 1\)"):
        losses.perceptual_loss(vgg, x, cfg, content_feats=feats2, style_targets=None)
    with pytest.raises(ConfigError, match=r"2 style targets for 1 image \(need 1;"):
        losses.perceptual_loss(vgg, x, cfg, content_feats=None, style_targets=two)
    # a batch-1 content target still broadcasts over a batch
    total, _ = losses.perceptual_loss(vgg, jnp.concatenate([x, x]), cfg, content_feats=feats,
                                      style_targets=None)
    np.testing.assert_allclose(total[0], total[1], rtol=1e-6)
