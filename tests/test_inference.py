"""Tests of arbitrary_nst.inference (the Stylizer API) with a random width-0.25 model.

The model is built abstractly (``nnx.eval_shape``) and filled with random numbers, including the
predictor heads (zero-initialized in a fresh model, which would make every embedding give the
same output), then exported to tmp; images are small and generated. Style working size 32.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arbitrary_nst import color, images, inference
from arbitrary_nst.errors import ConfigError, ImageError, ModelError
from arbitrary_nst.inference import (
    DEFAULT_BUCKETS,
    Stylizer,
    bucket_shape,
    bucket_side,
    mixture_grid,
    pad_to,
    style_working_image,
)

REPO = Path(__file__).resolve().parents[1]
SS = 32  # style working size in these tests (the VGG minimum): fast


def make_model_file(path: Path, vgg, seed: int = 0, palette: float = 0.0) -> Path:
    """Export a random width-0.25 model whose embeddings matter (random head kernels)."""
    import jax.numpy as jnp
    from flax import nnx

    from arbitrary_nst.export import export_model
    from arbitrary_nst.models import ArbitraryStyleModel

    model = ArbitraryStyleModel(vgg, width=0.25, palette=palette, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for key, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = tuple(var.get_value().shape)
        name = key[-1]
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            std = 0.3 if "heads" in key else 1.0 / np.sqrt(fan_in)
            v = rng.normal(0.0, std, shape)
        elif name == "bias" and "heads" in key:
            c = shape[0] // 2
            v = np.concatenate([1.0 + rng.normal(0, 0.2, c), rng.normal(0, 0.2, c)])
        elif name == "scale":
            v = np.ones(shape)
        else:
            v = np.zeros(shape)
        var.set_value(jnp.asarray(v, jnp.float32))
    return export_model(model, path)


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour image, uint8 HWC (as decoded files are: same compiled code)."""
    rng = np.random.default_rng(seed)
    small = rng.random((4, 4, 3)).astype(np.float32)
    big = images.resize(small, (h, w), method="bicubic")
    return images.to_uint8(big + 0.05 * rng.standard_normal((h, w, 3)).astype(np.float32))


def write_png(path: Path, x: np.ndarray) -> Path:
    Image.fromarray(images.to_uint8(x)).save(path)
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, vgg):
    return make_model_file(tmp_path_factory.mktemp("model") / "model.safetensors", vgg)


@pytest.fixture(scope="module")
def st(model_path, vgg):
    return Stylizer.load(model_path, vgg=vgg, style_size=SS, batch_size=4)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    return {
        "content": write_png(d / "content.png", smooth_image(37, 45, 1)),
        "style_a": write_png(d / "style_a.png", smooth_image(48, 40, 2)),
        "style_b": write_png(d / "style_b.png", smooth_image(36, 50, 3)),
    }


@contextlib.contextmanager
def _device_out_of_memory():
    """The jitted stylize call raising XLA's RESOURCE_EXHAUSTED, as a too large array does."""
    import jax

    def oom(*a, **k):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating "
                                         "135911179544 bytes.")

    real = inference._stylize_jit
    inference._stylize_jit = oom
    try:
        yield
    finally:
        inference._stylize_jit = real


# ---------------------------------------------------------------------------- pure helpers


def test_bucket_ladder():
    b = DEFAULT_BUCKETS
    assert all(x % 4 == 0 for x in b) and list(b) == sorted(set(b))
    for common in (256, 384, 512, 768, 1024):
        assert common in b and bucket_side(common) == common
    assert b[:8] == (32, 40, 48, 56, 64, 80, 96, 112)
    # < 25 % padding per side everywhere on the ladder
    for n in range(32, 4000, 7):
        assert n <= bucket_side(n) < 1.25 * n + 4
    assert bucket_side(1) == 32 and bucket_side(257) == 320
    assert bucket_side(5000) == 5120  # beyond the ladder: multiples of 512
    assert bucket_side(100, (64,)) == 128 and bucket_side(700, (64, 1024)) == 1024  # (top rung)
    assert bucket_side(1100, (64, 1024)) == 1536
    assert bucket_side(37, None) == 40 and bucket_side(3, None) == 8
    assert bucket_shape(33, 47) == (40, 48)


def test_pad_to_reflects_and_crops_back():
    x = np.arange(5 * 3 * 2, dtype=np.float32).reshape(5, 3, 2)
    y = pad_to(x, (9, 8))
    assert y.shape == (9, 8, 2)
    np.testing.assert_array_equal(y[:5, :3], x)
    np.testing.assert_array_equal(y[5, :3], x[3])  # reflection (no edge repeat)
    one = pad_to(np.ones((1, 1, 3), np.uint8), (32, 32))
    assert one.shape == (32, 32, 3) and one.dtype == np.uint8


def test_mixture_grid_layouts():
    for n, steps, cells in ((2, 5, 5), (3, 4, 10), (4, 3, 9), (5, 3, 9)):
        g = mixture_grid(n, steps)
        assert len(g) == cells
        for _, _, w in g:
            assert w.shape == (n,) and abs(float(w.sum()) - 1) < 1e-6 and w.min() >= 0
    tri = mixture_grid(3, 3)
    assert [(r, c) for r, c, _ in tri] == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    np.testing.assert_allclose(tri[0][2], [1, 0, 0])
    np.testing.assert_allclose(tri[-1][2], [0, 0, 1])
    with pytest.raises(ConfigError):
        mixture_grid(1, 3)
    with pytest.raises(ConfigError):
        mixture_grid(2, 1)
    # (None was a raw TypeError, NaN a ValueError, an empty ladder max()'s ValueError)
    for steps in (None, float("nan"), 2.5, "3"):
        with pytest.raises(ConfigError, match=r"^steps \(--steps\) must be an integer >= 2"):
            mixture_grid(2, steps)
    with pytest.raises(ConfigError, match="buckets must hold at least one"):
        inference.bucket_side(100, [])


@pytest.mark.parametrize("bad", [[1.0], [1, 2, 3], [-1, 2], [0, 0], [float("nan"), 1]])
def test_weight_validation(bad):
    with pytest.raises(ConfigError) as e:
        inference.normalize_weights(bad, 2)
    assert "\n" not in str(e.value)


def test_huge_weights_are_normalized_without_overflow():
    """Weights are relative: ``[1e308, 1.5e308]`` is ``[0.4, 0.6]`` (their sum overflows to
    inf, which made every weight 0 and the mixed embedding 0, a silent wrong style)."""
    w = inference.normalize_weights([1e308, 1.5e308], 2)
    np.testing.assert_allclose(w, [0.4, 0.6], rtol=1e-6)
    np.testing.assert_allclose(inference.normalize_weights([3e-310, 1e-310], 2), [0.75, 0.25],
                               rtol=1e-6)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "x"])
def test_strength_validation(bad):
    with pytest.raises(ConfigError, match="strength"):
        inference.check_strength(bad)


def test_default_batch_size_cpu():
    import jax

    if jax.default_backend() == "cpu":
        assert inference.default_batch_size() == jax.local_device_count()


def test_preserve_color_modes():
    m = inference.preserve_color_mode
    assert m(False) is None and m(None) is None and m(True) == "luminance"
    assert m("histogram") == "match" and m("match") == "match" and m("luminance") == "luminance"
    with pytest.raises(ConfigError):
        m("sepia")


# ---------------------------------------------------------------------------- loading


def test_load_builtin_missing_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(inference, "BUILTIN_MODEL", tmp_path / "nope" / "model.safetensors")
    with pytest.raises(ModelError) as e:
        Stylizer.load()
    assert "built-in model" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\x08\x00\x00"])
def test_load_corrupt_model(tmp_path, vgg, content):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    with pytest.raises(ModelError) as e:
        Stylizer.load(p, vgg=vgg)
    assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match="without model.safetensors"):
        Stylizer.load(tmp_path, vgg=vgg)
    with pytest.raises(ModelError, match="no such"):
        Stylizer.load(tmp_path / "missing.safetensors", vgg=vgg)


def test_truncated_model_file(tmp_path, vgg, model_path):
    p = tmp_path / "trunc.safetensors"
    p.write_bytes(model_path.read_bytes()[:-1000])
    with pytest.raises(ModelError) as e:
        Stylizer.load(p, vgg=vgg)
    assert "\n" not in str(e.value)


def test_load_fills_every_weight(st, model_path, vgg):
    """The eval_shape fast path holds exactly the exported tensors and the shared VGG."""
    from flax import nnx

    from arbitrary_nst.export import read_export

    tensors, _ = read_export(model_path)
    got = {"/".join(map(str, k)): np.asarray(v.get_value())
           for k, v in nnx.to_flat_state(nnx.state(st.model, nnx.Param))}
    assert set(got) == set(tensors)
    for k in tensors:
        np.testing.assert_array_equal(got[k], tensors[k])
    np.testing.assert_array_equal(np.asarray(st.model.vgg.layers["conv3_1"]["kernel"][...]),
                                  np.asarray(vgg.layers["conv3_1"]["kernel"][...]))
    # a workdir holding model.safetensors loads too
    s2 = Stylizer.load(model_path.parent, vgg=vgg)
    assert s2.model.width == 0.25


# ---------------------------------------------------------------------------- stylize


def test_odd_sizes_are_exact(st):
    for h, w in ((37, 45), (33, 47), (39, 41)):  # odd sizes, one bucket: (40, 48)
        c = smooth_image(h, w, h)
        y = st.stylize(c, style=smooth_image(40, 40, 9))
        assert y.shape == (h, w, 3) and y.dtype == np.float32
        assert np.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


def test_bucketed_results_equal_exact_sizes(model_path, vgg):
    """Padding to a bucket does not change the image: the transfer network's statistics skip
    the padding and its convs read the image's own reflection beyond the edge, so any bucket
    gives buckets=None's result (small or large padding, a size off multiples of 4, a batch of
    two sizes in one bucket, both backends)."""
    cs = [smooth_image(101, 107, 5), smooth_image(99, 110, 6)]
    style = smooth_image(40, 40, 9)
    exact = Stylizer.load(model_path, vgg=vgg, style_size=SS, buckets=None)
    want = [exact.stylize(c, style) for c in cs]
    for kw in ({"buckets": (112,)}, {"buckets": (256,)}, {"backend": "onnxruntime"}):
        st = Stylizer.load(model_path, vgg=vgg, style_size=SS, batch_size=2, **kw)
        assert st.padded_shape(*cs[0].shape[:2]) == st.padded_shape(*cs[1].shape[:2])
        for got, ref in zip(st.stylize(cs, style), want):
            np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=str(kw))


def test_input_types_agree(st, files):
    path = files["content"]
    f = images.load_image(path)
    u8 = images.to_uint8(f)
    style = files["style_a"]
    a = st.stylize(path, style=style)
    b = st.stylize(f, style=style)  # float input: its own compiled variant
    c = st.stylize(Image.open(path), style=Image.open(style))
    d = st.stylize(u8, style=images.load_image(style))
    for other in (b, c, d):
        np.testing.assert_allclose(a, other, atol=1e-5)
    batch = st.stylize(np.stack([u8, u8]), style=style, batch_size=2)
    assert batch.shape == (2, *f.shape)
    np.testing.assert_allclose(batch[1], a, atol=1e-5)
    lst = st.stylize([u8, u8[:35, :41]], style=style, batch_size=2)
    assert isinstance(lst, list) and lst[1].shape == (35, 41, 3)


def test_batch_composition_does_not_matter(st):
    """Batches of same-bucket images give each image the result it gets alone."""
    cs = [smooth_image(40, 48, s) for s in (11, 12, 13)]  # a batch of 2, then one alone
    style = smooth_image(40, 40, 9)
    together = st.stylize(cs, style=style, batch_size=2)
    for c, t in zip(cs, together):
        np.testing.assert_allclose(st.stylize(c, style=style, batch_size=1), t, atol=1e-5)


def test_strength_zero_is_content_embedding(st, files):
    c = st.read(files["content"])
    style = files["style_a"]
    y0 = st.stylize(c, style=style, strength=0.0)
    e_c = st.embed(c)[0]
    np.testing.assert_allclose(y0, st.transfer(c, e_c), atol=1e-5)
    # ... and 0.3 is the linear mix of the two embeddings
    e_s = st.embed(style)[0]
    y = st.stylize(c, style=style, strength=0.3)
    np.testing.assert_allclose(y, st.transfer(c, 0.3 * e_s + 0.7 * e_c), atol=1e-5)
    y1 = st.stylize(c, style=style)
    assert np.abs(y1 - y0).mean() > 1e-3  # the style does change the output


def test_uint8_content_is_read_as_value_over_255_on_the_device():
    """uint8 photos (files, PIL images) go to the jitted stylize/embed functions as bytes and
    are scaled there: every byte value must become value / 255 (float64 reference), as the
    same photo given as floats in [0, 1] (a wrong scale, e.g. / 256, darkened every
    file-based output slightly); floats pass through."""
    import jax.numpy as jnp

    v = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    got = np.asarray(inference._to_float01(jnp.asarray(v)))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, v / 255.0, rtol=1e-7, atol=0)
    f = np.linspace(0, 1, 12, dtype=np.float32).reshape(1, 2, 2, 3)
    np.testing.assert_array_equal(np.asarray(inference._to_float01(jnp.asarray(f))), f)


def test_style_mix_equals_manual_mix(st, files):
    c = st.read(files["content"])
    sa, sb = files["style_a"], files["style_b"]
    e = st.embed([sa, sb])
    assert e.shape == (2, st.embedding_dim)
    y = st.stylize(c, style=[sa, sb], weights=[1, 3])
    np.testing.assert_allclose(y, st.transfer(c, 0.25 * e[0] + 0.75 * e[1]), atol=1e-5)
    np.testing.assert_allclose(y, st.stylize(c, style=[sa, sb], weights=[2, 6]), atol=1e-6)
    np.testing.assert_allclose(st.stylize(c, style=[sa, sb], weights=[1, 0]),
                               st.stylize(c, style=sa), atol=1e-5)
    with pytest.raises(ConfigError, match="3 style weights for 2 styles"):
        st.stylize(c, style=[sa, sb], weights=[1, 2, 3])
    with pytest.raises(ConfigError, match="strength"):
        st.stylize(c, style=sa, strength=1.01)


def test_a_bad_style_array_in_a_list_is_named_by_its_position(st):
    """Contents were numbered in errors, styles not: 'style image: ... NaN' for the third."""
    g = smooth_image(40, 40, 3).astype(np.float32) / 255
    bad = g.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ImageError, match=r"^style image 2: .*NaN"):
        st.embed([g, g, bad])
    with pytest.raises(ImageError, match=r"^style image 1: .*NaN"):
        st.stylize(g, [g, bad])
    with pytest.raises(ImageError, match=r"^style image: .*NaN"):
        st.embed(bad)


def test_embedding_cache_per_file(st, tmp_path):
    p = write_png(tmp_path / "s.png", smooth_image(40, 40, 21))
    st.clear_cache()
    e1 = st.embed(p)
    assert len(st._cache) == 1
    before = inference.trace_counts().get("embed", 0)
    np.testing.assert_array_equal(st.embed(p), e1)
    assert inference.trace_counts().get("embed", 0) == before
    # a new file content (new mtime/size) is a new key
    write_png(p, smooth_image(44, 40, 22))
    os.utime(p, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns + 10**9))
    e2 = st.embed(p)
    assert len(st._cache) == 2 and not np.allclose(e1, e2)
    # another working size is another key
    st.embed(p, style_size=40)
    assert len(st._cache) == 3


def test_embedding_cache_sees_a_same_size_same_mtime_replacement(st, tmp_path):
    """cp -p / rsync -t: another image of the same byte size with the old mtime is a new file."""
    p, q = tmp_path / "s.bmp", tmp_path / "t.bmp"
    Image.fromarray((smooth_image(40, 40, 31) * 255).astype(np.uint8)).save(p)
    Image.fromarray((smooth_image(40, 40, 32) * 255).astype(np.uint8)).save(q)
    assert p.stat().st_size == q.stat().st_size
    e1 = st.embed(p)
    mtime = p.stat().st_mtime_ns
    os.replace(q, p)
    os.utime(p, ns=(mtime, mtime))
    assert not np.allclose(st.embed(p), e1)


def test_preserve_color_luminance(st, files):
    c = st.read(files["content"])
    plain = st.stylize(c, style=files["style_a"])
    kept = st.stylize(c, style=files["style_a"], preserve_color=True)
    np.testing.assert_allclose(kept, np.asarray(color.transfer_luminance(plain, images.to_float(c))),
                               atol=1e-5)


def test_preserve_color_luminance_with_an_embedding(st, files):
    c = st.read(files["content"])
    e = st.embed(files["style_a"])[0]
    plain = st.stylize(c, embedding=e)
    np.testing.assert_allclose(st.stylize(c, embedding=e, preserve_color=True),
                               np.asarray(color.transfer_luminance(plain, images.to_float(c))),
                               atol=1e-5)


def test_preserve_color_match(st, files):
    c = st.read(files["content"])
    s_small = style_working_image(images.load_image(files["style_a"]), SS)
    matched = np.asarray(color.match_color(s_small, images.to_float(c)))  # the whole photo's
    y = st.stylize(c, style=files["style_a"], preserve_color="match")
    np.testing.assert_allclose(y, st.transfer(c, st.embed(matched)[0]), atol=1e-4)


def test_content_colours_are_the_whole_photos_not_its_centre_squares(st, files):
    """Strength < 1 (the palette's content part) and "match" took the colours of the
    content's centre square at the style working size: a panorama got its middle's colours
    (mean off by up to 0.14 at palette 1)."""
    rng = np.random.default_rng(0)
    c = np.concatenate([np.full((40, 60, 3), (0.8, 0.3, 0.2)),  # middle: not the average
                        np.full((40, 40, 3), (0.3, 0.8, 0.3)),
                        np.full((40, 60, 3), (0.2, 0.3, 0.8))], axis=1)
    c = np.clip(c + 0.05 * rng.standard_normal(c.shape), 0, 1).astype(np.float32)
    want_mean, want_cov = (np.asarray(v) for v in color.color_stats(c))
    for kw in ({"strength": 0.0}, {"preserve_color": "match"}):
        y = st.stylize(c, style=files["style_a"], palette=1.0, **kw)
        mean, cov = (np.asarray(v) for v in color.color_stats(y))
        # (not exact: the output is clipped to [0, 1]; the centre square's was 0.37 off)
        np.testing.assert_allclose(mean, want_mean, atol=0.04, err_msg=str(kw))
        np.testing.assert_allclose(cov, want_cov, atol=0.04, err_msg=str(kw))
    # strength 0.25 = transfer with the mixed embedding and the mixed (whole-photo) moments
    y = st.stylize(c, style=files["style_a"], strength=0.25, palette=1.0)
    e = 0.25 * st.embed(files["style_a"])[0] + 0.75 * st.embed(style_working_image(c, SS))[0]
    m = 0.25 * st.palettes(files["style_a"])[0] + 0.75 * np.asarray(color.color_moments(c))
    np.testing.assert_allclose(y, st.transfer(c, e, palette_moments=m, palette=1.0), atol=1e-4)


def test_max_size(st):
    c = smooth_image(74, 90, 5)
    y = st.stylize(c, style=smooth_image(40, 40, 9), max_size=45)
    assert y.shape == (37, 45, 3)
    small = smooth_image(37, 45, 6)
    assert st.stylize(small, style=smooth_image(40, 40, 9), max_size=200).shape == (37, 45, 3)


def test_bad_inputs_one_line(st, tmp_path, files):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("hello")
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(files["content"].read_bytes()[:120])
    for bad in (tmp_path / "missing.png", empty, text, trunc, tmp_path):
        with pytest.raises(ImageError) as e:
            st.stylize(bad, style=files["style_a"])
        assert "\n" not in str(e.value)
        with pytest.raises(ImageError):
            st.embed(bad)
    st.max_pixels = 100
    try:
        with pytest.raises(ImageError, match="too large"):
            st.stylize(files["content"], style=files["style_a"])
    finally:
        st.max_pixels = images.DEFAULT_MAX_PIXELS


def test_argument_errors_are_config_errors(st, files, tmp_path):
    """Bad numbers, embeddings and callbacks are one-line ConfigErrors, not raw numpy/PIL
    errors or silently odd results (a 1x1 output for max_size=0, a NaN image for a NaN
    embedding, weights ignored)."""
    c, s = smooth_image(30, 36, 1), files["style_a"]
    e = st.embed(s)
    u8 = (c * 255).astype(np.uint8)
    bad = {
        "max_size": [lambda: st.stylize(c, s, max_size=float("nan")),
                     lambda: st.stylize(c, s, max_size=3.7),
                     lambda: st.stylize(c, s, max_size="100"),
                     lambda: st.transfer(u8, e, max_size=0),
                     lambda: list(st.stylize_files([files["content"]], s, max_size=-1))],
        "batch size": [lambda: st.stylize(c, s, batch_size=0),
                       lambda: st.transfer(c, e, batch_size=float("nan"))],
        "workers": [lambda: list(st.stylize_files([files["content"]], s, workers=-1))],
        "NaN or infinite": [lambda: st.stylize(c, embedding=np.full(e.shape[1], np.nan)),
                            lambda: st.transfer(c, np.full((2, e.shape[1]), np.inf)),
                            lambda: st.refine_embedding(c, s, steps=1,
                                                        embedding=np.full(e.shape[1], np.nan))],
        "array of numbers": [lambda: st.stylize(c, embedding="x")],
        "K >= 1": [lambda: st.transfer(c, np.zeros((0, e.shape[1])))],
        "one embedding takes none": [lambda: st.stylize(c, embedding=e[0], weights=[.5, .5])],
        "refine steps": [lambda: st.stylize(c, s, refine_steps=float("nan"))],
        "fit steps": [lambda: st.fit_style(s, [c], steps=float("nan"))],
        "must return a path": [lambda: list(st.stylize_files([files["content"]], s,
                                                             output=lambda p: None))],
        "paths": [lambda: list(st.stylize_files(5, s))],
    }
    for needle, calls in bad.items():
        for call in calls:
            with pytest.raises(ConfigError, match=re.escape(needle)):
                call()
    assert st.stylize(c, s, max_size=np.int64(20)).shape == (17, 20, 3)
    assert st.stylize(c, s, max_size=20.0).shape == (17, 20, 3)
    # weights that overflow when summed still mix (they were all 0 after inf / inf)
    np.testing.assert_allclose(st.stylize(c, [s, s], weights=[1e308, 1e308]), st.stylize(c, s),
                               atol=1e-5)


def test_constructor_options_are_checked(model_path, vgg):
    for kw, needle in (({"max_pixels": 0}, "max_pixels"), ({"buckets": []}, "buckets"),
                       ({"batch_size": 2.5}, "batch size")):
        with pytest.raises(ConfigError, match=needle):
            Stylizer.load(model_path, vgg=vgg, **kw)
    with pytest.raises(ConfigError, match="model path must be a path"):
        Stylizer.load(5, vgg=vgg)
    with pytest.raises(ConfigError, match="a fitted style .* is a style, not a model"):
        Stylizer.load("painting.npz", vgg=vgg)


def test_api_arguments_that_ran_silently_or_raised_raw(st, model_path, vgg, files):
    """Each of these ran with a wrong result (a set's order decided the mix, True counted as 1,
    jnp.int8 gave grey images, impossible palette moments gave black ones) or raised a raw
    TypeError/ValueError/ZeroDivisionError: now one ConfigError/ImageError each."""
    import jax.numpy as jnp

    from arbitrary_nst.errors import check_count

    c = smooth_image(40, 48, 1)
    sa, sb = files["style_a"], files["style_b"]
    with pytest.raises(ConfigError, match="a set has none"):
        st.stylize(c, {str(sa), str(sb)}, weights=[1, 0])
    assert st.stylize(c, {str(sa)}).shape == (40, 48, 3)  # (a set without weights is fine)
    with pytest.raises(ConfigError, match="got True"):
        check_count(True, "x")
    with pytest.raises(ConfigError, match="max_size"):
        st.stylize(c, sa, max_size=True)
    for dtype in (jnp.int8, 5, "int8"):
        with pytest.raises(ConfigError, match="dtype must be one of"):
            Stylizer.load(model_path, vgg=vgg, dtype=dtype)
    assert Stylizer.load(model_path, vgg=vgg, dtype=np.float32).model is not None
    with pytest.raises(ConfigError, match="onnxruntime backend computes in float32"):
        Stylizer.load(model_path, vgg=vgg, dtype="bfloat16", backend="onnxruntime")
    with pytest.raises(ConfigError, match="output must be a function"):  # ('str' not callable)
        st.stylize_files([sa], sb, output="out/x.png")
    # out of device memory (a 20000 x 20000 array at the default max_size=None) is typed
    with _device_out_of_memory(), pytest.raises(ConfigError,
                                                match=r"^out of memory .*pass max_size="):
        st.stylize(c, sa)
    e = st.embed(sa)[0]
    good = st.palettes(sa)[0]
    for bad in (-np.ones(12), np.r_[good[:3], -good[3:]]):  # means < 0; negative variance
        with pytest.raises(ConfigError, match="not the colour moments of an image"):
            st.transfer(c, e, palette_moments=bad)
        with pytest.raises(ConfigError, match="not the colour moments of an image"):
            st.stylize(c, embedding=e, palette_moments=bad)
    for call in (lambda: st.transfer(c, e, palette_moments="x"),
                 lambda: st.stylize(c, embedding=e, palette_moments="x"),
                 # (NaN moments of several styles were "embeddings has NaN ...")
                 lambda: st.stylize(c, embedding=e, palette_moments=np.full((1, 12), np.nan))):
        with pytest.raises(ConfigError, match="palette_moments must be finite"):
            call()
    np.testing.assert_allclose(st.transfer(c, e, palette_moments=good),
                               st.stylize(c, embedding=e, palette_moments=good), atol=1e-5)
    with pytest.raises(ImageError, match="^content image: empty image"):
        st.stylize(np.zeros((0, 5, 3), np.uint8), sa)
    with pytest.raises(ImageError, match="^content image: empty image"):
        st.stylize(Image.new("RGB", (0, 0)), sa)
    with pytest.raises(ImageError, match="^style image: empty image"):
        st.stylize(c, np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ImageError, match="^content image: empty image"):
        st.transfer(np.zeros((0, 4, 3), np.uint8), e)
    for kw, needle in (({"backend": "onnxruntime", "threads": "x"}, "threads"),
                       ({"backend": "onnxruntime", "threads": 1.5}, "threads"),
                       ({"buckets": 64}, "list of side lengths"),
                       ({"devices": ["cpu"]}, "jax devices")):
        with pytest.raises(ConfigError, match=needle):
            Stylizer(st.model, **kw)
    with pytest.raises(ConfigError, match="mix takes"):
        st.mix(np.zeros((1, 3, st.embedding_dim)))
    fitted = st.fit_style(sa, [smooth_image(40, 40, 2)], steps=1, size=32)
    for call in (st.embed, st.palettes):
        with pytest.raises(ConfigError, match="a fitted style is not an image") as err:
            call(fitted)
        assert "\n" not in str(err.value) and len(str(err.value)) < 300  # (the object's repr:
        # 45 lines of arrays)
    # 1e20 x an embedding overflowed to an all-NaN image (real ones are below 100)
    for call in (lambda: st.transfer(c, e * 1e7), lambda: st.stylize(c, embedding=e * 1e7),
                 lambda: st.mix(np.stack([e, e * 1e7]))):
        with pytest.raises(ConfigError, match="overflows float32"):
            call()


def test_a_single_path_is_one_input_not_its_characters(st, files, tmp_path):
    """stylize_files / fit_style / protected given one path (not a list) used to iterate it
    character by character ('s: no such file', ...), so protected= protected nothing."""
    res = list(st.stylize_files(files["content"], files["style_a"]))
    assert len(res) == 1 and res[0].ok
    keep = tmp_path / "keep.png"
    keep.write_bytes(b"keep")
    res = list(st.stylize_files([files["content"]], files["style_a"], output=lambda p: keep,
                                overwrite=True, protected=str(keep)))
    assert res[0].kind == "output is an input" and keep.read_bytes() == b"keep"
    fs = st.fit_style(files["style_a"], str(files["content"]), steps=1, size=32)
    assert fs.info["photos"] == 1 and fs.info["skipped"] == []
    # generators and sets are lists of images, not arrays of shape ()
    gen = st.stylize((x for x in [smooth_image(20, 24, 1), smooth_image(28, 20, 2)]),
                     files["style_a"])  # of any sizes, as a list is (it was np.stack-ed)
    assert isinstance(gen, list) and [g.shape for g in gen] == [(20, 24, 3), (28, 20, 3)]


def test_in_memory_image_errors_name_the_argument(st, files):
    bad = np.full((8, 8, 3), np.nan, np.float32)
    with pytest.raises(ImageError, match="^style image: image array contains NaN"):
        st.stylize(smooth_image(20, 24, 1), style=bad)
    with pytest.raises(ImageError, match="^content image: image array contains NaN"):
        st.stylize(bad, style=files["style_a"])
    with pytest.raises(ImageError, match="^content image 1: image array contains NaN"):
        st.stylize([smooth_image(20, 24, 1), bad], style=files["style_a"])
    with pytest.raises(ImageError, match="not an image array"):
        st.stylize([[smooth_image(20, 24, 1), smooth_image(20, 30, 1)]], style=files["style_a"])


def test_file_objects_and_folders_as_outputs_are_named(st, files, tmp_path):
    """A BytesIO or open file iterates by line: it was read as a batch of byte strings
    ("unsupported image array dtype |S39"), a memoryview was a raw NotImplementedError, a
    BytesIO among paths was "got list"; an output that is a folder said "pass --overwrite"."""
    import io

    data = files["content"].read_bytes()
    for bad in (io.BytesIO(data), memoryview(np.zeros((8, 8, 3), np.uint8))):
        with pytest.raises(ImageError, match="^content image: a .* is not an image input"):
            st.stylize(bad, files["style_a"])
    with open(files["content"], "rb") as f:
        with pytest.raises(ImageError, match="^style image: a BufferedReader is not an image"):
            st.stylize(smooth_image(20, 24, 1), f)
    with pytest.raises(ImageError, match="^content image 1: a BytesIO is not an image input"):
        st.stylize([smooth_image(20, 24, 1), io.BytesIO(data)], files["style_a"])
    with pytest.raises(ConfigError, match="got a BytesIO at position 1"):
        list(st.stylize_files([files["content"], io.BytesIO(data)], files["style_a"]))
    (tmp_path / "folder.png").mkdir()
    for overwrite in (False, True):
        res = list(st.stylize_files([files["content"]], files["style_a"], overwrite=overwrite,
                                    output=lambda p: tmp_path / "folder.png"))
        assert not res[0].ok and "is a directory, expected an output file" in res[0].reason


def test_pil_inputs_are_read_as_their_files(st, tmp_path, files):
    """An EXIF-rotated JPEG opened with PIL is oriented as its file is; La images work."""
    im = Image.fromarray((smooth_image(40, 60, 3) * 255).astype(np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=95)
    np.testing.assert_array_equal(images.to_float(Image.open(p)), images.load_image(p))
    assert st.stylize(Image.open(p), files["style_a"]).shape == (60, 40, 3)
    assert images.to_float(im.convert("La")).shape == (40, 60, 3)


def test_max_size_on_a_jpeg_file_equals_the_same_image_in_memory(tmp_path):
    """The reduced-scale JPEG decode rounded the target size from the reduced size: 999 x 667
    at max 50 gave 50 x 34 from the file and 50 x 33 from the pixels."""
    rng = np.random.default_rng(0)
    for w, h, m in ((999, 667, 50), (1919, 1081, 31), (1023, 341, 97)):
        a = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(a).save(tmp_path / "x.jpg", quality=90)
        want = images._scaled_size(w, h, m / max(w, h))
        assert images.load_pil(tmp_path / "x.jpg", max_side=m).size == want
        assert images.load_image(tmp_path / "x.jpg", max_side=m).shape[:2] == want[::-1]


@pytest.mark.parametrize("bad, reason", [
    (np.full((20, 24, 3), 200.0, np.float32), "must be in [0, 1], got 200..200 (divide 0..255"),
    (np.full((20, 24, 3), -1.0), "must be in [0, 1]"),
    (np.full((20, 24, 3), np.nan, np.float32), "NaN or infinite"),
    (np.zeros((3, 20, 24), np.float32), "(channels first? use H x W x C)"),
    (np.zeros((20, 24, 2), np.float32), "1, 3 or 4 channels"),
    (np.zeros((0, 24, 3), np.float32), "empty image array"),
    (np.zeros((20, 24, 3), np.int64), "unsupported image array dtype int64"),
    # (a list holding a 1-D array; ``[[0.1, 0.2, 0.3]]`` is the 1 x 3 grey image it makes)
    ([np.array([0.1, 0.2, 0.3])], "got an array of shape (3,)"),
])
def test_bad_array_images_are_image_errors_not_silent_clipping(st, files, bad, reason):
    """Float arrays in 0..255 (or -1..1) were clipped to [0, 1] before: a white (or half-black)
    image stylized without a word. Array inputs are now checked, as content and as style."""
    with pytest.raises(ImageError) as e:
        st.stylize(bad, style=files["style_a"])
    assert reason in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ImageError):
        st.stylize(files["content"], style=bad)
    # a resampling overshoot is still fine (clipped), as are the supported dtypes
    x = smooth_image(20, 24, 1) / 255.0 * 1.2 - 0.1  # -0.1..1.1
    for ok in (x, (x > 0.5), (np.clip(x, 0, 1) * 65535).astype(np.uint16)):
        assert st.stylize(ok, style=files["style_a"]).shape == (20, 24, 3)


def test_a_16_bit_grey_file_keeps_its_depth_like_the_same_array(st, files, tmp_path):
    """A 16-bit grey file (a dark, low-contrast scan) was cut to 8 bits on the content path
    (12 levels left of 2908; banding once instance norm stretched it) while the same data as a
    uint16 array kept its depth: the file now gives the array's result, on both paths."""
    yy, xx = np.mgrid[0:30, 0:36]
    u16 = (9000 + 7 * xx + 3 * yy).astype(np.uint16)  # 0.137..0.144: one 8-bit level or two
    path = tmp_path / "scan16.png"
    Image.fromarray(u16).save(path)
    assert Image.open(path).mode.startswith("I")
    want = st.stylize(u16, style=files["style_a"])
    np.testing.assert_allclose(st.stylize(path, style=files["style_a"]), want, atol=1e-6)
    flat8 = st.stylize(np.round(u16 / 65535 * 255).astype(np.uint8), style=files["style_a"])
    assert np.abs(flat8 - want).max() > 0.05  # (the 8-bit cut is far from it)
    [r] = st.stylize_files([path], files["style_a"], output=lambda p: tmp_path / "o.png")
    assert r.ok
    np.testing.assert_array_equal(images.to_uint8(images.load_image(tmp_path / "o.png")),
                                  images.to_uint8(want))


# ---------------------------------------------------------------------------- files pipeline


def test_folder_of_mixed_sizes_compiles_per_bucket(st, tmp_path, files):
    sizes = [(33, 47), (35, 45), (38, 48), (40, 41), (30, 75)]  # 5 sizes, 2 buckets
    paths = [write_png(tmp_path / f"c{i}.png", smooth_image(h, w, i)) for i, (h, w) in
             enumerate(sizes)]
    buckets = {bucket_shape(h, w) for h, w in sizes}
    assert len(buckets) == 2
    before = inference.trace_counts().get("stylize", 0)
    out = tmp_path / "out"
    results = list(st.stylize_files(paths, files["style_b"], batch_size=1,
                                    output=lambda p: out / f"{p.stem}.png"))
    compiles = inference.trace_counts().get("stylize", 0) - before
    assert all(r.ok for r in results) and len(results) == 5
    assert compiles <= len(buckets)
    for p, (h, w) in zip(paths, sizes):
        assert Image.open(out / p.name).size == (w, h)


def test_a_folder_of_mixed_sizes_is_not_decoded_whole_before_its_first_batch(
        st, tmp_path, files, monkeypatch):
    """Partial batches waited for more images of their bucket without limit: 24 photos in 24
    buckets were all decoded before the first device call (300 photos of random sizes: 151,
    +270 MiB). Now at most ``prefetch`` images wait; then the largest partial batch runs.
    (The device call is a stand-in here: what is checked is what is held, not the pixels.)"""
    sizes = [(h, w) for h in (32, 40, 48, 56, 64, 80) for w in (32, 40, 48, 56)]
    assert len({bucket_shape(h, w) for h, w in sizes}) == 24
    paths = [write_png(tmp_path / f"m{i:02d}.png", smooth_image(h, w, i))
             for i, (h, w) in enumerate(sizes)]
    decoded, real_load = [], images.load_pil
    monkeypatch.setattr(images, "load_pil", lambda p, **k: decoded.append(p) or real_load(p, **k))
    calls = []
    monkeypatch.setattr(st, "_dispatch", lambda group, plan, out_uint8, cap: calls.append(
        len(group)) or np.zeros((len(group),) + group[0].x.shape, np.float32))
    gen = st.stylize_files(paths, files["style_a"], batch_size=4, prefetch=3, workers=1)
    first = next(gen)
    assert first.ok and len(decoded) <= 2 * 3 + 4, len(decoded)
    rest = list(gen)
    assert len(rest) == 23 and all(r.ok for r in rest) and sum(calls) == 24
    assert sorted(r.image.shape[:2] for r in [first, *rest]) == sorted(sizes)
    # a prefetch below the batch size still forms full batches of one size ([3, 3, 1] padded
    # to 4 each, for a while)
    calls.clear()
    assert all(r.ok for r in st.stylize_files(paths[:1] * 8, files["style_a"], batch_size=4,
                                               prefetch=2, workers=1))
    assert calls == [4, 4]


def test_partial_batches_pad_to_a_power_of_two(st, tmp_path, files):
    # A folder's last, partial batch runs at the next power of two (capped at the batch size),
    # so 3 and then 4 images of one bucket share one compiled program, and every image comes
    # back unpadded (the padding rows are dropped).
    assert [st.padded_batch(n, 8) for n in (1, 2, 3, 4, 5, 7, 8, 9)] == [1, 2, 4, 4, 8, 8, 8, 9]
    assert st.padded_batch(3) == 4 and st.padded_batch(5) == 5  # default cap: batch_size 4
    paths = [write_png(tmp_path / f"q{i}.png", smooth_image(20, 100, 60 + i)) for i in range(4)]
    assert bucket_shape(20, 100) == (32, 112)  # a bucket no other test of this module uses
    before = inference.trace_counts().get("stylize", 0)
    three = list(st.stylize_files(paths[:3], files["style_a"], batch_size=4))
    four = list(st.stylize_files(paths, files["style_a"], batch_size=4))
    assert inference.trace_counts().get("stylize", 0) - before == 1
    assert all(r.ok and r.image.shape == (20, 100, 3) for r in three + four)
    for a, b in zip(three, four):
        np.testing.assert_allclose(a.image, b.image, atol=1e-5)


def test_files_pipeline_matches_api(st, tmp_path, files):
    paths = [write_png(tmp_path / f"p{i}.png", smooth_image(40, 44 + i, 30 + i)) for i in range(3)]
    paths.append(write_png(tmp_path / "odd.png", smooth_image(30, 75, 40)))  # another bucket
    bad = tmp_path / "bad.png"
    bad.write_text("no")
    res = list(st.stylize_files([*paths, bad], files["style_a"], batch_size=2, workers=2,
                                prefetch=2))
    ok = {r.content: r for r in res if r.ok}
    skipped = [r for r in res if not r.ok]
    assert len(ok) == 4 and len(skipped) == 1
    assert skipped[0].kind == "not an image" and "\n" not in skipped[0].reason
    for p in paths:
        np.testing.assert_allclose(ok[p].image, st.stylize(p, style=files["style_a"]), atol=1e-4)


def test_files_pipeline_refuses_inputs_and_existing(st, tmp_path, files):
    c = write_png(tmp_path / "c.png", smooth_image(38, 46, 3))
    before = c.read_bytes()
    res = list(st.stylize_files([c], files["style_a"], output=lambda p: p, overwrite=True))
    assert not res[0].ok and res[0].kind == "output is an input"
    assert c.read_bytes() == before
    res = list(st.stylize_files([c], files["style_a"], output=lambda p: files["style_a"],
                                overwrite=True))
    assert res[0].kind == "output is an input"
    existing = tmp_path / "exists.png"
    existing.write_bytes(b"keep")
    res = list(st.stylize_files([c], files["style_a"], output=lambda p: existing))
    assert res[0].kind == "output exists" and existing.read_bytes() == b"keep"
    res = list(st.stylize_files([c], files["style_a"], output=lambda p: existing, overwrite=True))
    assert res[0].ok and Image.open(existing).size == (46, 38)
    # two contents that the caller's function sends to one path: the advice is about the
    # function (renaming an input was the CLI's advice, and changes nothing here)
    d = write_png(tmp_path / "d.png", smooth_image(30, 30, 4))
    res = list(st.stylize_files([c, d], files["style_a"], output=lambda p: tmp_path / "one.png"))
    assert [r.ok for r in res].count(True) == 1
    (dup,) = [r for r in res if not r.ok]
    assert dup.kind == "duplicate output name" and "output function" in dup.reason
    assert "rename" not in dup.reason
    # a caller whose names come from the inputs' (the CLI) gives its own advice
    res = list(st.stylize_files([c, d], files["style_a"], output=lambda p: tmp_path / "two.png",
                                collision_hint="rename one"))
    (dup,) = [r for r in res if not r.ok]
    assert dup.reason.endswith("; rename one") and "output function" not in dup.reason


def test_files_pipeline_never_replaces_a_content_that_looks_like_an_output(st, tmp_path, files):
    """photo.jpg's output photo.png is also a genuine content: it is not stylized as an
    "earlier output", and not replaced either, even with overwrite (it is an input)."""
    jpg = tmp_path / "photo.jpg"
    Image.fromarray((smooth_image(40, 56, 1) * 255).astype(np.uint8)).save(jpg)
    png = write_png(tmp_path / "photo.png", smooth_image(50, 50, 2))
    before = png.read_bytes()
    for overwrite in (False, True):
        res = {r.content.name: r for r in st.stylize_files(
            [jpg, png], files["style_a"], output=lambda p: tmp_path / f"{p.stem}.png",
            overwrite=overwrite)}
        assert res["photo.png"].kind == "earlier output"
        assert res["photo.jpg"].kind == "output exists" and not res["photo.jpg"].ok
        assert "not replaced even with --overwrite" in res["photo.jpg"].reason
        assert png.read_bytes() == before


def test_earlier_outputs_finds_a_jobs_own_results(tmp_path):
    """With the outputs next to the contents, the results of earlier runs (and of runs on
    those) are recognised as this job's outputs; a content that is its own output is not."""
    d = tmp_path
    paths = [d / "x.jpg", d / "x__s.png", d / "x__s__s.png", d / "y.png", d / "z__s.png"]
    found = inference.earlier_outputs(paths, lambda p: d / f"{p.stem}__s.png")
    assert found == {d / "x__s.png": d / "x.jpg", d / "x__s__s.png": d / "x__s.png"}
    assert inference.earlier_outputs(paths, lambda p: p) == {}
    assert inference.earlier_outputs(paths, lambda p: tmp_path / "elsewhere" / p.name) == {}
    # results of runs with *another* style ({content}__{other}.png, the outputs' suffix, in
    # their folder) are guessed too (a rerun with a new style stylized them again into
    # x__candy__mond.png); every __ boundary is tried (a content named my__trip.jpg)
    paths = [d / "x.jpg", d / "x__candy.png", d / "y.png", d / "y__a+b.png", d / "z__candy.png",
             d / "beach.jpg", d / "beach__sunset.jpg", d / "my__trip.jpg",
             d / "my__trip__candy.png"]
    out = lambda p: d / f"{p.stem}__mond.png"  # noqa: E731
    found = inference.earlier_other_style_outputs(paths, out)
    assert found == {d / "x__candy.png": d / "x.jpg", d / "y__a+b.png": d / "y.png",
                     d / "my__trip__candy.png": d / "my__trip.jpg"}
    skips, jobs = inference.plan_outputs(paths, out, [], overwrite=False)
    assert {j[1] for j in jobs} == {d / "x.jpg", d / "y.png", d / "z__candy.png",
                                    d / "beach.jpg", d / "beach__sunset.jpg", d / "my__trip.jpg"}
    assert all("looks like an earlier run's result" in r.reason and
               r.kind == "earlier output" for r in skips)


SHARDED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax
    from arbitrary_nst.inference import Stylizer
    from arbitrary_nst import images
    assert jax.device_count() == 4, jax.devices()
    model, out = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    contents = [rng.random((40, 44, 3)).astype(np.float32) for _ in range(6)]
    style = rng.random((40, 40, 3)).astype(np.float32)
    multi = Stylizer.load(model, style_size=32, batch_size=8)
    single = Stylizer.load(model, style_size=32, batch_size=8, devices=jax.devices()[:1])
    a = np.stack(multi.stylize(contents, style=style, strength=0.7))
    b = np.stack(single.stylize(contents, style=style, strength=0.7))
    emb = multi.embed([style, contents[0]])
    emb1 = single.embed([style, contents[0]])
    json.dump({"devices": multi.num_devices, "max_diff": float(np.abs(a - b).max()),
               "emb_diff": float(np.abs(emb - emb1).max()), "shape": list(a.shape)},
              open(out, "w"))
""")


def test_sharded_over_4_cpu_devices_equals_single_device(model_path, tmp_path):
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
               + " --xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-c", SHARDED, str(model_path), str(out)], env=env,
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["devices"] == 4 and res["shape"] == [6, 40, 44, 3]
    assert res["max_diff"] < 1e-5 and res["emb_diff"] < 1e-4


# ---------------------------------------------------------------------------- palette


@pytest.fixture(scope="module")
def st_pal(tmp_path_factory, vgg):
    """The same random weights as ``st``, exported with palette 0.5."""
    path = make_model_file(tmp_path_factory.mktemp("pal") / "model.safetensors", vgg,
                           palette=0.5)
    return Stylizer.load(path, vgg=vgg, style_size=SS, batch_size=4)


def _aligned(y, moments, amount):
    return np.asarray(color.align_to_moments(y, moments, amount))


def _moments(x, size=SS):
    return np.asarray(color.color_moments(style_working_image(images.to_float(x), size)))


def test_palette_default_comes_from_the_model(st, st_pal, files):
    c = st.read(files["content"])
    sa = files["style_a"]
    raw = st.stylize(c, style=sa)  # palette 0 (the model's default)
    np.testing.assert_allclose(st_pal.stylize(c, style=sa, palette=0.0), raw, atol=1e-6)
    m = _moments(images.load_image(sa))
    np.testing.assert_allclose(st_pal.palettes(sa)[0], m, atol=1e-6)
    want = _aligned(raw, m, 0.5)
    np.testing.assert_allclose(st_pal.stylize(c, style=sa), want, atol=1e-5)
    assert np.abs(want - raw).mean() > 1e-3  # the palette does change the output
    np.testing.assert_allclose(st.stylize(c, style=sa, palette=1.0), _aligned(raw, m, 1.0),
                               atol=1e-5)
    for bad in (-0.1, 1.2, "all"):
        with pytest.raises(ConfigError, match="palette"):
            st.stylize(c, style=sa, palette=bad)


def test_palette_mixes_with_the_styles_and_the_content(st_pal, files):
    c = st_pal.read(files["content"])
    sa, sb = files["style_a"], files["style_b"]
    m = st_pal.palettes([sa, sb])
    e = st_pal.embed([sa, sb])
    raw = st_pal.stylize(c, style=[sa, sb], weights=[1, 3], palette=0.0)
    np.testing.assert_allclose(st_pal.stylize(c, style=[sa, sb], weights=[1, 3]),
                               _aligned(raw, 0.25 * m[0] + 0.75 * m[1], 0.5), atol=1e-5)
    # strength < 1: the content's own moments enter with the content's embedding
    raw = st_pal.stylize(c, style=sa, strength=0.3, palette=0.0)
    m_c = np.asarray(color.color_moments(images.to_float(c)))  # the whole photo's
    np.testing.assert_allclose(st_pal.stylize(c, style=sa, strength=0.3),
                               _aligned(raw, 0.3 * m[0] + 0.7 * m_c, 0.5), atol=1e-5)
    # the same through embeddings: with their moments, and without (no palette)
    np.testing.assert_allclose(
        st_pal.stylize(c, embedding=e, weights=[1, 3], palette_moments=m),
        st_pal.stylize(c, style=[sa, sb], weights=[1, 3]), atol=1e-5)
    np.testing.assert_allclose(st_pal.stylize(c, embedding=e[0]),
                               st_pal.stylize(c, style=sa, palette=0.0), atol=1e-5)
    strip = st_pal.transfer(c, e, palette_moments=m)
    for k, s in enumerate((sa, sb)):
        np.testing.assert_allclose(strip[k], st_pal.stylize(c, style=s), atol=1e-5)
    with pytest.raises(ConfigError, match="palette_moments goes with embedding"):
        st_pal.stylize(c, style=sa, palette_moments=m[0])
    with pytest.raises(ConfigError, match="palette_moments"):
        st_pal.stylize(c, embedding=e[0], palette_moments=m[0, :9])
    with pytest.raises(ConfigError, match="palette_moments"):
        st_pal.transfer(c, e, palette_moments=m[:1].repeat(3, 0))
    # one palette per embedding row, as transfer asks (one embedding with two palettes took
    # one style's texture and half of each palette; 2 embeddings with 3 rows were accepted)
    for emb, mom, want in ((e[0], m, "has 2 rows for 1 embedding row"),
                           (e, np.stack([m[0], m[1], m[1]]), "has 3 rows for 2 embedding rows"),
                           (e, m[0], "has 1 row for 2 embedding rows")):
        with pytest.raises(ConfigError, match=f"^palette_moments {want}: one per style"):
            st_pal.stylize(c, embedding=emb, palette_moments=mom)


def test_palette_with_colour_preservation(st_pal, files):
    c = st_pal.read(files["content"])
    sa = files["style_a"]
    # luminance: the chroma is the content's anyway, the palette is not applied
    np.testing.assert_allclose(st_pal.stylize(c, style=sa, preserve_color=True),
                               st_pal.stylize(c, style=sa, preserve_color=True, palette=0.0),
                               atol=1e-6)
    # match: the styles were recoloured to the content, so is the output
    raw = st_pal.stylize(c, style=sa, preserve_color="match", palette=0.0)
    np.testing.assert_allclose(st_pal.stylize(c, style=sa, preserve_color="match"),
                               _aligned(raw, color.color_moments(images.to_float(c)), 0.5),
                               atol=1e-5)


def test_palette_in_the_files_pipeline(st_pal, tmp_path, files):
    paths = [write_png(tmp_path / f"p{i}.png", smooth_image(40, 44 + i, 50 + i)) for i in range(2)]
    res = list(st_pal.stylize_files(paths, files["style_a"], batch_size=2, palette=0.8))
    assert all(r.ok for r in res)
    for r in res:
        np.testing.assert_allclose(r.image, st_pal.stylize(r.content, style=files["style_a"],
                                                           palette=0.8), atol=1e-4)


def test_a_skip_from_any_error_names_its_file():
    """A per-content error that is not an ImageError (a refinement that diverged) still names
    the content in the batch's skip line, once."""
    p = Path("photos/red.png")
    r = inference.skipped_by_error(p, None, ModelError("refinement diverged (NaN)"))
    assert not r.ok and r.reason == "photos/red.png: refinement diverged (NaN)"
    r = inference.skipped_by_error(p, None, ModelError("photos/red.png: too dark"))
    assert r.reason == "photos/red.png: too dark"
    r = inference.skipped_by_error(p, None, ImageError(p, "truncated"))
    assert r.reason == "photos/red.png: truncated" and r.kind == "truncated or corrupt"


def test_an_output_another_job_wrote_meanwhile_is_reported_as_existing(st, files, tmp_path):
    """Two jobs into one folder: the loser's skips said 'cannot write' though each reason was
    'exists' (the kind was fixed, not taken from the reason)."""
    dest = tmp_path / "o.png"
    results = st.stylize_files([files["content"]], files["style_a"], output=lambda p: dest)
    dest.write_bytes(b"the other job's result")  # after planning, before writing
    (r,) = list(results)
    assert not r.ok and r.kind == "output exists" and "exists" in r.reason
    assert dest.read_bytes() == b"the other job's result"


# ------------------------------------------- mutation-testing pass 2 (style mixing, strength)


def test_preserve_color_match_mixes_the_recoloured_styles_with_the_weights(st, files):
    """In match mode each style is recoloured to the content, embedded, and the embeddings are
    mixed with the given weights (reference built by hand; they were averaged equally)."""
    c = st.read(files["content"])
    es = [st.embed(np.asarray(color.match_color(
        style_working_image(images.load_image(files[k]), SS), images.to_float(c))))[0]
        for k in ("style_a", "style_b")]
    y = st.stylize(c, style=[files["style_a"], files["style_b"]], weights=[1, 3],
                   preserve_color="match")
    np.testing.assert_allclose(y, st.transfer(c, 0.25 * es[0] + 0.75 * es[1]), atol=1e-4)
    assert np.abs(y - st.transfer(c, 0.5 * es[0] + 0.5 * es[1])).max() > 1e-3


def test_refine_works_at_the_content_short_side_without_upscaling():
    """The refinement's square working copy is at most the content's shorter side (rounded
    down to a multiple of 32, >= 32): taking the longer side passed the tests (a 40 x 200
    photo refined on an upscaled 200 px copy)."""
    side = inference._refine_side
    assert side((40, 200, 3), 256) == 32 and side((200, 40, 3), 256) == 32
    assert side((70, 200, 3), 256) == 64 and side((200, 70, 3), 256) == 64
    assert side((63, 70, 3), 256) == 32 and side((300, 500, 3), 256) == 256
    assert side((20, 100, 3), 256) == 32


# ------------------------------------------- mutation-testing pass 3 (figures, cache, checks)


def test_mixture_grid_puts_each_style_at_its_place():
    """The weights of every cell, by hand: a strip goes from style 1 to style 2, the triangle
    has style 1 on top, style 2 bottom-left, style 3 bottom-right, the square has styles 1..4
    at top-left, top-right, bottom-left, bottom-right, and 5+ styles go through the styles in
    order (the layout tests only checked counts and sums: a strip running backwards, a square
    with two corners swapped or a path through the styles in reverse passed them)."""
    def cells(n, steps):
        return {(r, c): w.tolist() for r, c, w in mixture_grid(n, steps)}

    assert cells(2, 3) == {(0, 0): [1, 0], (0, 1): [0.5, 0.5], (0, 2): [0, 1]}
    tri = cells(3, 3)
    assert tri[(1, 0)] == [0.5, 0.5, 0] and tri[(1, 1)] == [0.5, 0, 0.5]
    assert tri[(2, 0)] == [0, 1, 0] and tri[(2, 1)] == [0, 0.5, 0.5]
    assert cells(4, 2) == {(0, 0): [1, 0, 0, 0], (0, 1): [0, 1, 0, 0],
                           (1, 0): [0, 0, 1, 0], (1, 1): [0, 0, 0, 1]}
    sq = cells(4, 3)
    assert sq[(0, 1)] == [0.5, 0.5, 0, 0] and sq[(1, 0)] == [0.5, 0, 0.5, 0]
    assert sq[(1, 1)] == [0.25] * 4 and sq[(2, 1)] == [0, 0, 0.5, 0.5]
    path = [w for _, w in sorted(cells(5, 3).items())]
    assert path == [[1, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0.5, 0.5, 0, 0],
                    [0, 0, 1, 0, 0], [0, 0, 0.5, 0.5, 0], [0, 0, 0, 1, 0],
                    [0, 0, 0, 0.5, 0.5], [0, 0, 0, 0, 1]]


def test_embedding_cache_drops_the_least_recently_used_file(st, files, monkeypatch):
    """At most ``cache_size`` style files stay cached, and the one used longest ago goes first
    (a lookup counts as a use): FIFO order, evicting the entry just added, or keeping one too
    many all passed the cache tests."""
    loads = []
    real = st._style_small

    def counting(x, *a, **k):
        loads.append(Path(x).name)
        return real(x, *a, **k)

    monkeypatch.setattr(st, "_style_small", counting)
    monkeypatch.setattr(st, "cache_size", 2)
    a, b, c = files["style_a"], files["style_b"], files["content"]
    st.clear_cache()
    try:
        st.embed([a, b])
        st.embed(a)  # a hit: a is now the most recently used
        assert loads == [a.name, b.name]
        st.embed(c)  # a third file: b (least recently used) goes
        assert loads == [a.name, b.name, c.name] and len(st._cache) == 2
        st.embed([a, c])  # both still cached
        assert loads == [a.name, b.name, c.name]
        st.embed(b)  # b was dropped: decoded again
        assert loads == [a.name, b.name, c.name, b.name]
    finally:
        st.clear_cache()


def test_palette_moments_with_means_outside_the_unit_range_are_refused(st, files):
    """Colour moments whose means lie outside [0, 1] are no image's (a mean of 1.5 with a
    valid covariance was taken, and the palette pushed the output beyond white)."""
    c = st.read(files["content"])
    e = st.embed(files["style_a"])[0]
    for mean in (1.5, -0.5):
        mu = np.full(3, mean)
        m = np.concatenate([mu, (np.outer(mu, mu) + 0.01 * np.eye(3)).reshape(-1)])
        with pytest.raises(ConfigError, match="not the colour moments"):
            st.stylize(c, embedding=e, palette_moments=m, palette=0.5)
        with pytest.raises(ConfigError, match="not the colour moments"):
            st.transfer(c, e, palette_moments=m, palette=0.5)


def test_an_earlier_other_style_output_is_traced_to_the_longest_content_stem(tmp_path):
    """``a__b__c.png`` next to contents ``a`` and ``a__b`` is the result for ``a__b`` (the
    longest stem that is a content), not for ``a`` (the skip line named the wrong photo)."""
    d = tmp_path
    paths = [d / "a.jpg", d / "a__b.jpg", d / "a__b__c.png"]
    found = inference.earlier_other_style_outputs(paths, lambda p: d / f"{p.stem}__new.png")
    assert found == {d / "a__b__c.png": d / "a__b.jpg"}  # (a__b.jpg: not the outputs' suffix)


def test_a_uint8_image_longer_than_max_size_on_one_side_only_is_downscaled(st):
    """``max_size`` bounds the *longer* side of uint8 arrays and PIL images as it does for
    floats and files (a 30 x 90 uint8 photo at max_size 45 stayed 30 x 90)."""
    u8 = smooth_image(30, 90, 3)
    assert st.read(u8, 45).shape == (15, 45, 3)
    assert st.read(Image.fromarray(u8), 45).shape == (15, 45, 3)
    assert st.read(u8.astype(np.float32) / 255, 45).shape == (15, 45, 3)
    assert st.read(u8.transpose(1, 0, 2).copy(), 45).shape == (45, 15, 3)


def test_a_too_large_file_is_reported_as_too_large(st, files, tmp_path, monkeypatch):
    """A file above ``max_pixels`` is skipped with kind "too large" (the summary's category;
    it was counted as a generic "error")."""
    big = write_png(tmp_path / "big.png", smooth_image(60, 60, 4))
    monkeypatch.setattr(st, "max_pixels", 1000)
    (r,) = list(st.stylize_files([big], files["style_a"]))
    assert not r.ok and r.kind == "too large" and r.reason.startswith(str(big))


def test_a_blank_photo_skipped_by_refinement_names_its_file(st, files, tmp_path):
    """With ``refine_steps`` a blank photo is skipped (refinement needs texture) and the skip
    names the file (the array-level error had no file name: the line said only "blank")."""
    blank = write_png(tmp_path / "blank.png", np.full((40, 40, 3), 0.5, np.float32))
    (r,) = list(st.stylize_files([blank], files["style_a"], refine_steps=1))
    assert not r.ok and r.reason.startswith(f"{blank}: blank")
    # blank only in the centre square refined on (noisy side strips): it said "refinement
    # diverged ... try fewer steps", which no setting fixes
    sides = np.full((40, 120, 3), 0.5, np.float32)
    sides[:, :30] = sides[:, -30:] = np.random.default_rng(0).random((40, 30, 3))
    (r,) = list(st.stylize_files([write_png(tmp_path / "sides.png", sides)], files["style_a"],
                                 refine_steps=1))
    assert not r.ok and "blank (pixel std" in r.reason and "in its centre square" in r.reason, r


def test_refining_a_folder_compiles_per_rung_not_per_photo_size(st, files, tmp_path):
    """Photos smaller than the refinement's working size were refined at their own shorter
    side (a multiple of 4): three compiled programs per distinct side (6 photos: 18 programs,
    122 of 158 s), one of them only for a loss nobody read. Now sides round down to a
    multiple of 32 and a batch does not score the last step."""
    from arbitrary_nst import refine

    rng = np.random.default_rng(3)
    paths = [write_png(tmp_path / f"c{i}.png", rng.random((h, w, 3)).astype(np.float32))
             for i, (h, w) in enumerate(((41, 50), (44, 45), (52, 60), (63, 70)))]
    fns = (refine._refine_targets, refine._refine_step, refine._refine_loss)
    before = [f._cache_size() for f in fns]
    res = list(st.stylize_files(paths, files["style_a"], refine_steps=1))
    assert all(r.ok for r in res) and len(res) == 4, res
    targets, step, loss = (f._cache_size() - b for f, b in zip(fns, before))
    assert targets <= 1 and step <= 1 and loss == 0, (targets, step, loss)
    assert inference._refine_side((63, 70, 3), 256) == 32
    assert inference._refine_side((300, 70, 3), 256) == 64
    assert inference._refine_side((300, 400, 3), 256) == 256
    # the API's history still ends with the loss after the last step
    _, hist = st.refine_embedding(paths[0], files["style_a"], steps=2, return_history=True)
    assert hist.shape == (3,)


def test_beyond_the_hold_limit_the_largest_partial_batch_runs(st, files, tmp_path, monkeypatch):
    """When more images wait than ``hold`` allows, the partial batch with the most images runs
    (the smallest ran: a one-image call while three of a bucket waited). The device call is a
    stand-in: what is checked is the order of the batches."""
    sizes = [(40, 40)] * 3 + [(64, 64), (32, 80)]
    paths = [write_png(tmp_path / f"h{i}.png", smooth_image(h, w, i))
             for i, (h, w) in enumerate(sizes)]
    calls = []
    monkeypatch.setattr(st, "_dispatch", lambda group, plan, out_uint8, cap: calls.append(
        [it.hw for it in group]) or np.zeros((len(group),) + group[0].x.shape, np.float32))
    # prefetch 3 with batches of 4: at most 4 images wait; the fifth sends a batch
    res = list(st.stylize_files(paths, files["style_a"], batch_size=4, prefetch=3, workers=1))
    assert len(res) == 5 and all(r.ok for r in res)
    assert calls == [[(40, 40)] * 3, [(64, 64)], [(32, 80)]]


def test_fit_style_takes_a_seeded_random_sample_of_many_photos(st, files, tmp_path, monkeypatch):
    """Of more than ``fit_style.MAX_PHOTOS`` photos a random sample chosen by ``seed`` is used
    (it took the first ones, whatever the seed: a folder sorted by date fitted on one day's
    photos). The fit itself is stopped: what is checked is which photos were read."""
    from arbitrary_nst import fit_style

    monkeypatch.setattr(fit_style, "MAX_PHOTOS", 3)
    _stop_fits(monkeypatch)
    photos = [write_png(tmp_path / f"f{i:02d}.png", smooth_image(40, 40, 70 + i))
              for i in range(12)]
    real_read = st.read

    def used(seed):
        seen = []
        monkeypatch.setattr(st, "read", lambda x, *a: seen.append(x) or real_read(x, *a))
        with pytest.raises(_FitStopped):
            st.fit_style(files["style_a"], photos, seed=seed, steps=1)
        return seen

    samples = [used(seed) for seed in range(4)]
    assert all(len(set(s)) == 3 and set(s) <= set(photos) for s in samples)
    assert all(s == sorted(s) for s in samples)  # in the order given
    assert used(2) == samples[2]  # the seed fixes the sample
    assert len({tuple(s) for s in samples}) > 1 and any(s != photos[:3] for s in samples)


class _FitStopped(Exception):
    """Raised by :func:`_stop_fits`' stand-in for the fit itself."""


def _stop_fits(monkeypatch) -> list:
    """``fit_style.fit_conditioning`` replaced by a stand-in that records how many photos it
    was given and stops; returns those counts."""
    from arbitrary_nst import fit_style

    seen = []

    def stop(model, style, work, *a, **k):
        seen.append(np.asarray(work).shape[0])
        raise _FitStopped

    monkeypatch.setattr(fit_style, "fit_conditioning", stop)
    return seen


def test_fit_style_skips_photos_smaller_than_the_vgg_minimum(st, files, monkeypatch):
    """A photo under 32 px on a side is skipped and listed (it was upscaled into the fit);
    with no other photo the fit is refused in one line. The fit itself is stopped."""
    seen = _stop_fits(monkeypatch)
    tiny = smooth_image(20, 40, 5)
    with pytest.raises(ConfigError, match=r"usable photos \(1 skipped: photo 0: smaller than 32"):
        st.fit_style(files["style_a"], [tiny], steps=1)
    with pytest.raises(_FitStopped):
        st.fit_style(files["style_a"], [tiny, smooth_image(40, 40, 6)], steps=1)
    assert seen == [1]
    # a panorama is read with its longer side capped (8x the working size): 50 px high, it is
    # 25 px as read; the reason said "smaller than 32 px" of a 4096x50 photo, no more
    with pytest.raises(ConfigError, match=r"photo 0: smaller than 32 px on its shorter side "
                       r"\(2048x25 px as read, the longer side at most 2048\)"):
        st.fit_style(files["style_a"], [smooth_image(50, 4096, 7)], steps=1)


def test_transfer_applies_one_palette_to_every_embedding(st_pal, files):
    """``palette_moments`` of shape ``[12]`` go with every one of ``K`` embeddings, as the same
    moments repeated ``K`` times do (it was refused for K > 1)."""
    c = st_pal.read(files["content"])
    e = st_pal.embed([files["style_a"], files["style_b"]])
    m = st_pal.palettes(files["style_b"])[0]
    # (batches of 1: the compiled programs of the palette tests above)
    one = st_pal.transfer(c, e, palette_moments=m, batch_size=1)
    np.testing.assert_allclose(
        one, st_pal.transfer(c, e, palette_moments=np.stack([m, m]), batch_size=1), atol=1e-6)
    raw = st_pal.transfer(c, e, palette=0.0, batch_size=1)
    for k in range(2):
        np.testing.assert_allclose(one[k], _aligned(raw[k], m, 0.5), atol=1e-5)


def test_palette_at_exact_sizes_equals_the_bucketed_result(st_pal, files):
    """With ``buckets=None`` the palette is measured inside each image as with buckets (the
    unpadded sizes were sent only when bucketing, and the palette had none to mask with)."""
    exact = Stylizer(st_pal.model, style_size=SS, buckets=None, batch_size=4)
    c = smooth_image(37, 45, 8)
    np.testing.assert_allclose(exact.stylize(c, style=files["style_a"]),
                               st_pal.stylize(c, style=files["style_a"]), atol=1e-5)


def test_buckets_must_be_multiples_of_4(st):
    """The transfer network needs sides that are multiples of 4: a ladder rung that is not
    is refused when the Stylizer is made (it was taken, and every image of that bucket
    failed at its first device call)."""
    for bad in ((30,), (32, 42), (8, 64, 130)):
        with pytest.raises(ConfigError, match="multiples of 4"):
            Stylizer(st.model, buckets=bad)
    assert Stylizer(st.model, buckets=(64, 32)).buckets == (32, 64)


def test_preserve_color_off_spellings_turn_it_off():
    """"none", "off", "false", "no" and "" (any case, spaces around) mean no colour
    preservation, as False does (they turned luminance transfer on)."""
    for off in ("none", "off", "False", " no ", "", "NONE"):
        assert inference.preserve_color_mode(off) is None
    assert inference.preserve_color_mode(" YIQ ") == "luminance"
    assert inference.preserve_color_mode("Colour") == "match"


# (last in the file: it drops every compiled program of this worker)
def test_clear_cache_can_drop_the_compiled_programs_too(st, files):
    """A service meeting many photo sizes keeps one compiled program per padded shape (10-25
    MB each on CPU); clear_cache only emptied the embedding dictionary."""
    c = smooth_image(44, 52, 31)
    y = st.stylize(c, style=files["style_a"])
    assert st._cache
    before = inference.trace_counts().get("stylize", 0)
    st.clear_cache()
    np.testing.assert_array_equal(st.stylize(c, style=files["style_a"]), y)
    assert inference.trace_counts().get("stylize", 0) == before  # still compiled
    st.clear_cache(compiled=True)
    assert not st._cache
    np.testing.assert_array_equal(st.stylize(c, style=files["style_a"]), y)
    assert inference.trace_counts().get("stylize", 0) == before + 1  # compiled again


def test_a_workdir_whose_export_is_behind_its_checkpoints_warns(model_path, tmp_path, caplog):
    """``--model W`` (a training workdir) read W/model.safetensors whatever step it was: after
    a run killed outright, or resumed with --export elsewhere, an earlier step's weights
    without a word. Now a warning names both steps; none when they agree."""
    import logging
    import shutil

    from arbitrary_nst import export

    w = tmp_path / "w"
    (w / "checkpoints" / "4").mkdir(parents=True)
    (w / "checkpoints" / "8").mkdir()
    model = export.load_exported(model_path)
    export.export_model(model, w / "model.safetensors", info={"step": 4})
    with caplog.at_level(logging.WARNING, logger="arbitrary_nst.export"):
        assert export.model_file(w) == str(w / "model.safetensors")
    assert [r.getMessage() for r in caplog.records] == [
        f"{w / 'model.safetensors'} is the export of step 4, but the workdir's latest checkpoint "
        "is step 8: run train.py on the workdir again (same config: it resumes, and exports "
        "when it finishes or is stopped), or pass an export file"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="arbitrary_nst.export"):
        assert export.model_file(w, warn=False) == str(w / "model.safetensors")
        # the CLI resolves the workdir for its cache key, then loads it: said once, not twice
        from arbitrary_nst import cli_stylize

        cli_stylize._VGG["vgg"] = model.vgg
        cli_stylize.load_stylizer(str(w))
    assert len(caplog.records) == 1 and "is the export of step 4" in caplog.text
    caplog.clear()
    shutil.rmtree(w / "checkpoints" / "8")
    with caplog.at_level(logging.WARNING, logger="arbitrary_nst.export"):
        export.model_file(w)  # (step 4 = the latest)
        export.model_file(w / "model.safetensors")  # (a file: as it is)
    assert caplog.records == []


def _truncated_jpeg(path: Path) -> Path:
    Image.fromarray(smooth_image(64, 64, 4)).save(path.with_suffix(".full.jpg"), quality=90)
    data = path.with_suffix(".full.jpg").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_pil_images_whose_lazy_decode_fails_are_named_image_errors(st, files, tmp_path,
                                                                    monkeypatch):
    """A PIL image decodes lazily: a truncated file raised Pillow's raw OSError from stylize /
    transfer / embed, an image whose ``with Image.open(...)`` block had closed a bare
    AssertionError, and fit_style aborted on such a photo although unreadable photos are
    skipped and listed. Now one ImageError naming the argument, and a skipped photo."""
    trunc = _truncated_jpeg(tmp_path / "trunc.jpg")
    c = smooth_image(40, 48, 1)
    with pytest.raises(ImageError, match="^content image: truncated or corrupt image data: "):
        st.stylize(Image.open(trunc), files["style_a"])
    with pytest.raises(ImageError, match="^style image: truncated or corrupt image data: "):
        st.stylize(c, Image.open(trunc))
    with Image.open(files["style_a"]) as closed:
        pass
    with pytest.raises(ImageError, match=r"^style image: the PIL image's file is closed: call "
                                         r"im\.load\(\) inside the with block, or pass the path"):
        st.embed(closed)
    e = st.embed(files["style_a"])[0]
    with pytest.raises(ImageError, match="^content image: truncated or corrupt image data: "):
        st.transfer(Image.open(trunc), e)
    with pytest.raises(ConfigError, match=r"no usable photos \(1 skipped: photo 0: truncated"):
        st.fit_style(files["style_a"], [Image.open(trunc)], steps=1)

    seen = _stop_fits(monkeypatch)
    with pytest.raises(_FitStopped):  # the truncated photo is skipped, the fit goes on with the other
        st.fit_style(files["style_a"], [smooth_image(40, 40, 6), Image.open(trunc)], steps=1)
    assert seen == [1]


def test_numbers_given_as_strings_or_bools_are_refused(st, files, vgg):
    """``strength='0.5'``, ``strength=True``, ``palette='0.2'`` and ``weights=['1', '3']`` were
    taken (float() of them), while counts and loss weights refuse strings and bools; numpy
    scalars and ints are numbers."""
    from arbitrary_nst.models import check_palette

    c = smooth_image(20, 24, 1)
    sa, sb = files["style_a"], files["style_b"]
    for kw, needle in (({"strength": "0.5"}, "strength must be a number"),
                       ({"strength": True}, "strength must be a number"),
                       ({"strength": np.bool_(True)}, "strength must be a number"),
                       ({"palette": "0.2"}, "palette must be a number"),
                       ({"palette": False}, "palette must be a number")):
        with pytest.raises(ConfigError, match=f"^{needle} in \\[0, 1\\], got "):
            st.stylize(c, sa, **kw)
    for weights in (["1", "3"], [True, False], np.array(["1", "3"]), "13"):
        with pytest.raises(ConfigError, match="^style weights must be numbers, got "):
            st.stylize(c, [sa, sb], weights=weights)
    e = st.embed(sa)[0]
    with pytest.raises(ConfigError, match="^palette must be a number"):
        st.transfer(c, e, palette="0.2")
    for bad in (b"0.5", np.array(True), np.array([True, False]), np.array(["1"], object)):
        with pytest.raises(ConfigError, match="^strength must be a number"):
            inference.check_strength(bad)  # (float() takes bytes and 0-d bool arrays)
    with pytest.raises(ConfigError, match="^style weights must be numbers"):
        inference.normalize_weights(np.array([True, False]), 2)
    assert inference.check_strength(np.float32(0.5)) == 0.5
    assert inference.check_strength(1) == 1.0 and inference.check_strength(np.array(0.25)) == 0.25
    assert check_palette(np.float64(0.2)) == pytest.approx(0.2) and check_palette(0) == 0.0
    np.testing.assert_allclose(inference.normalize_weights([np.float32(1), 3], 2), [0.25, 0.75])
    np.testing.assert_allclose(inference.normalize_weights(np.array([1, 3]), 2), [0.25, 0.75])


def test_transfer_takes_one_offset_vector_with_one_embedding(st, files):
    """A ``[D]`` embedding with a ``[G]`` offset vector (as ``[12]`` palette moments are) was
    refused ("[K, G] ... got (G,)"); offsets that are not numbers raised a raw ValueError."""
    c = smooth_image(20, 24, 1)
    e = st.embed(files["style_a"])[0]
    g = st._conditioning_size
    d = 0.05 * np.random.default_rng(0).standard_normal(g).astype(np.float32)
    one = st.transfer(c, e, offsets=d)
    assert one.shape == (20, 24, 3)
    np.testing.assert_allclose(one, st.transfer(c, e[None], offsets=d[None])[0], atol=1e-6)
    assert np.abs(one - st.transfer(c, e)).max() > 1e-4  # (the offset is used)
    for bad, needle in (("abc", "offsets must be an array of numbers"),
                        (np.full(g, np.nan), "offsets has NaN"),
                        (d[:-1], rf"offsets must be \[K, {g}\] with K = 1 \(or \[{g}\]")):
        with pytest.raises(ConfigError, match=needle):
            st.transfer(c, e, offsets=bad)
    with pytest.raises(ConfigError, match=rf"offsets must be \[K, {g}\] with K = 2, got \({g},\)"):
        st.transfer(c, np.stack([e, e]), offsets=d)  # (one offset for K embeddings: ambiguous)
    # several contents (as stylize() takes them): "unsupported image array dtype <U13" before
    for many in ([files["content"], files["content"]], (c, c), (p for p in [c])):
        with pytest.raises(ConfigError, match=r"transfer\(\) takes one content image .*got a "
                                              r"list: call it per image, or use stylize\(\)"):
            st.transfer(many, e)


def test_inputs_that_are_no_image_are_named_by_their_type(st, files):
    """bytes, a dict or a number as an image said "got an array of shape ()" (or "unsupported
    image array dtype |S5" in a list); an empty photo list said "empty list of photos
    images"; buckets='64' said "got '6'"; a Stylizer inside jax.jit raised a raw
    TracerArrayConversionError."""
    import jax
    import jax.numpy as jnp

    c = smooth_image(20, 24, 1)
    sa = files["style_a"]
    for bad, kind in ((sa.read_bytes(), "bytes"), ({"a": 1}, "dict"), (5, "int"),
                      (np.float32(5), "float32"), (object(), "object")):
        with pytest.raises(ImageError, match=f"^style image: expected a path, a PIL image or an "
                                             f"array, got {kind}$"):
            st.stylize(c, bad)
        with pytest.raises(ImageError, match=f"^content image: expected .* got {kind}$"):
            st.stylize(bad, sa)
    with pytest.raises(ImageError, match="^style image 1: expected .* got bytes$"):
        st.stylize(c, [sa, b"x"])
    with pytest.raises(ConfigError, match="^empty list of photo images$"):
        st.fit_style(sa, photos=[])
    with pytest.raises(ConfigError, match="buckets must be a list of side lengths .* got '64'"):
        Stylizer(st.model, buckets="64")
    e = st.embed(sa)[0]
    for traced in (lambda x: jnp.asarray(st.stylize(x, sa)),
                   lambda x: jnp.asarray(st.stylize(c, x)),
                   lambda x: jnp.asarray(st.transfer(c, x[0, 0, :1] + jnp.asarray(e)))):
        with pytest.raises(ConfigError, match="^Stylizer runs its own jit; call it outside "
                                              "jax.jit"):
            jax.jit(traced)(jnp.asarray(c, jnp.float32) / 255)


def test_a_stylizer_inside_jit_is_one_line_also_for_a_style_not_embedded_yet(st):
    """The style's embedding is made first: inside jax.jit that was a raw
    TracerArrayConversionError (the content's check came after it)."""
    import jax
    import jax.numpy as jnp

    c = smooth_image(20, 24, 1)
    fresh = smooth_image(40, 40, 17)  # (an array: never embedded, not in the cache)
    for call in (lambda x: st.stylize(x, fresh), lambda x: st.embed(fresh + 0 * x[0, 0, 0]),
                 lambda x: st.palettes(fresh)):
        with pytest.raises(ConfigError, match="^Stylizer runs its own jit; call it outside "
                                              "jax.jit"):
            jax.jit(lambda x: jnp.asarray(call(x)))(jnp.asarray(c, jnp.float32) / 255)


def test_a_nested_list_image_is_one_image_not_a_batch_of_rows(st):
    """An image's ``.tolist()`` was read as a batch of its rows (6 outputs of 8 x 3 for a 6 x 8
    photo, 6 grey "styles"): a list of lists of numbers is the array it makes; a list of such
    images of one size a batch, of different sizes separate images."""
    rng = np.random.default_rng(0)
    c = rng.random((36, 40, 3)).astype(np.float32)
    s = rng.random((40, 40, 3)).astype(np.float32)
    want = st.stylize(c, s)
    np.testing.assert_array_equal(st.stylize(c.tolist(), s), want)
    np.testing.assert_array_equal(st.stylize(c, s.tolist()), want)
    both = st.stylize([c.tolist(), c.tolist()], s)
    assert np.shape(both) == (2, 36, 40, 3)
    np.testing.assert_allclose(both[0], want, atol=1e-5)  # (batched: float rounding)
    ragged = st.stylize([c.tolist(), c[:34].tolist()], s)
    assert isinstance(ragged, list) and [r.shape for r in ragged] == [(36, 40, 3), (34, 40, 3)]
    assert st.embed(s.tolist()).shape == (1, st.embedding_dim)


def test_out_of_memory_in_a_files_batch_is_one_config_error(st, files, tmp_path):
    """stylize_files let XLA's RESOURCE_EXHAUSTED through raw (only stylize, transfer and
    embed typed it): a batch of files on a GPU with a large batch_size."""
    with _device_out_of_memory():
        results = st.stylize_files([files["content"]], files["style_a"],
                                   output=lambda p: tmp_path / f"{p.stem}.png")
        with pytest.raises(ConfigError, match=r"^out of memory .*pass max_size="):
            list(results)
    assert [r.ok for r in st.stylize_files([files["content"]], files["style_a"],
                                           output=lambda p: tmp_path / f"{p.stem}.png")] == [True]


def test_a_model_palette_out_of_range_is_refused_not_applied(st, tmp_path):
    """``m.palette = 5.0`` (the README's ``m.palette = 0.5`` recipe with a bad value) was
    exported without a word to a file every loader refused, and stylized with the colours
    moved 5x along the map (NaN: no palette)."""
    from arbitrary_nst import export

    c = np.random.default_rng(0).random((36, 40, 3)).astype(np.float32)
    s = np.random.default_rng(1).random((40, 40, 3)).astype(np.float32)
    before = st.model.palette
    try:
        for bad in (5.0, float("nan")):
            st.model.palette = bad
            with pytest.raises(ConfigError, match="palette must be in"):
                export.export_model(st.model, tmp_path / "m.safetensors")
            assert not (tmp_path / "m.safetensors").exists()
            with pytest.raises(ConfigError, match="palette must be in"):
                st.stylize(c, s)
            np.testing.assert_allclose(st.stylize(c, s, palette=0.0),
                                       st.stylize(c, s, palette=0.0), atol=0)
    finally:
        st.model.palette = before
