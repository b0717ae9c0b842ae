"""Tests of arbitrary_nst.refine (test-time embedding refinement) and its Stylizer/CLI/eval use.

A random width-0.25 model with random head kernels (as in test_inference) and small generated
images: the loop must lower its own objective, optimize exactly the training loss (the first
Adam step checked against an independent gradient), keep batch examples independent and
reproduce through every entry point.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from arbitrary_nst import cli_stylize, export, losses, refine
from arbitrary_nst.errors import ConfigError, ImageError
from arbitrary_nst.inference import Stylizer, style_working_image
from arbitrary_nst.vgg import features

from test_inference import SS, make_model_file, smooth_image, write_png


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, vgg):
    return make_model_file(tmp_path_factory.mktemp("model") / "model.safetensors", vgg, seed=3)


@pytest.fixture(scope="module")
def model(model_path, vgg):
    return export.load_exported(model_path, vgg=vgg)


@pytest.fixture(scope="module")
def imgs():
    f = lambda h, w, s: smooth_image(h, w, s).astype(np.float32) / 255  # noqa: E731
    return {"content": np.stack([f(40, 40, 1), f(40, 40, 2)]),
            "style": np.stack([f(40, 40, 3), f(40, 40, 4)])}


def test_zero_steps_returns_the_start(model, imgs):
    e0 = np.asarray(model.embed(jnp.asarray(imgs["style"][:1])))
    e0 = np.repeat(e0, 2, 0)
    e, hist = refine.refine_embeddings(model, imgs["content"], imgs["style"][:1], np.ones(1),
                                       e0, steps=0)
    np.testing.assert_array_equal(e, e0)
    assert hist.shape == (1, 2) and np.all(np.isfinite(hist))


def test_loss_decreases_and_matches_the_training_loss(model, imgs):
    """The history's first entry is the training loss (computed independently here), and
    3 steps lower it for every example."""
    c, s = imgs["content"], imgs["style"]
    e0 = np.asarray(model.embed(jnp.asarray(s)))  # content i with style i
    e, hist = refine.refine_embeddings(model, c, s, np.eye(2, dtype=np.float32), e0, steps=3)
    assert hist.shape == (4, 2)
    params = model.vgg.params()
    feat = lambda x, taps: features(params, x, taps, pooling=model.vgg.pooling)  # noqa: E731
    cfg = losses.LossConfig(style_weight=refine.DEFAULT_STYLE_WEIGHT)

    graphdef, state = nnx.split(model)

    @jax.jit
    def loss_of(emb):
        y = nnx.merge(graphdef, state).transfer(jnp.asarray(c), emb)
        total, _ = losses.perceptual_loss(
            feat, y, cfg, content_feats=feat(jnp.asarray(c), ("relu3_3",)),
            style_targets=losses.StyleTargets.from_images(feat, jnp.asarray(s), cfg))
        return total

    np.testing.assert_allclose(hist[0], loss_of(jnp.asarray(e0)), rtol=1e-4)
    np.testing.assert_allclose(hist[-1], loss_of(jnp.asarray(e)), rtol=1e-4)
    assert np.all(hist[-1] < 0.97 * hist[0]), hist
    assert not np.allclose(e, e0)


def test_palette_loss_is_the_loss_of_the_aligned_output(model, imgs):
    """With a palette the loss is scored on the output aligned to the styles' mixed colour
    moments (what the Stylizer shows), and the steps lower that loss."""
    from arbitrary_nst import color

    c, s = imgs["content"], imgs["style"]
    w = np.array([0.25, 0.75], np.float32)
    e0 = np.repeat(np.asarray(model.embed(jnp.asarray(s))).T @ w[:, None], 2, 1).T
    e, hist = refine.refine_embeddings(model, c, s, w, e0, steps=3, palette=0.6)
    params = model.vgg.params()
    feat = lambda x, taps: features(params, x, taps, pooling=model.vgg.pooling)  # noqa: E731
    cfg = losses.LossConfig(style_weight=refine.DEFAULT_STYLE_WEIGHT)
    moments = w @ np.asarray(color.color_moments(s))

    def loss_of(emb, amount):
        y = model.transfer(jnp.asarray(c), jnp.asarray(emb))
        if amount:
            y = color.align_to_moments(y, jnp.asarray(moments)[None], amount)
        total, _ = losses.perceptual_loss(
            feat, y, cfg, content_feats=feat(jnp.asarray(c), ("relu3_3",)),
            style_targets=losses.StyleTargets.from_images(feat, jnp.asarray(s), cfg).blend(
                jnp.asarray(w)))
        return np.asarray(total)

    np.testing.assert_allclose(hist[0], loss_of(e0, 0.6), rtol=1e-4)
    np.testing.assert_allclose(hist[-1], loss_of(e, 0.6), rtol=1e-4)
    assert np.all(hist[-1] < hist[0]) and not np.allclose(hist[0], loss_of(e0, 0.0), rtol=1e-3)
    # palette 0 is the raw loss, as for a model without a palette
    _, raw = refine.refine_embeddings(model, c, s, w, e0, steps=0, palette=0.0)
    np.testing.assert_allclose(raw[0], loss_of(e0, 0.0), rtol=1e-4)


def test_first_step_is_adam_on_the_independent_gradient(model, imgs):
    """Adam's first update is -lr * g / (|g| + eps) elementwise: its sign pattern must be the
    one of an independently computed gradient of the loss w.r.t. the embedding."""
    c, s = imgs["content"][:1], imgs["style"][:1]
    e0 = np.asarray(model.embed(jnp.asarray(s)))
    lr = 0.01
    e1, _ = refine.refine_embeddings(model, c, s, np.ones(1), e0, steps=1, learning_rate=lr)
    params = model.vgg.params()
    feat = lambda x, taps: features(params, x, taps, pooling=model.vgg.pooling)  # noqa: E731
    cfg = losses.LossConfig(style_weight=refine.DEFAULT_STYLE_WEIGHT)
    graphdef, state = nnx.split(model)

    def loss(emb):
        m = nnx.merge(graphdef, state)
        total, _ = losses.perceptual_loss(
            feat, m.transfer(jnp.asarray(c), emb), cfg,
            content_feats=feat(jnp.asarray(c), ("relu3_3",)),
            style_targets=losses.StyleTargets.from_images(feat, jnp.asarray(s), cfg))
        return jnp.sum(total)

    g = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(e0)))
    big = np.abs(g) > 1e-3 * np.abs(g).max()
    np.testing.assert_allclose((e1 - e0)[big], (-lr * np.sign(g))[big], rtol=1e-3, atol=1e-6)


def test_first_step_with_a_palette_follows_the_exact_gradient(model, imgs):
    """With a palette the step follows the gradient through the palette's map (not the
    fixed-map surrogate, whose signs differ on some coordinates)."""
    from arbitrary_nst import color

    c, s = imgs["content"][:1], imgs["style"][:1]
    e0 = np.asarray(model.embed(jnp.asarray(s)))
    lr = 0.01
    e1, _ = refine.refine_embeddings(model, c, s, np.ones(1), e0, steps=1, learning_rate=lr,
                                     palette=0.6)
    params = model.vgg.params()
    feat = lambda x, taps: features(params, x, taps, pooling=model.vgg.pooling)  # noqa: E731
    cfg = losses.LossConfig(style_weight=refine.DEFAULT_STYLE_WEIGHT)
    graphdef, state = nnx.split(model)
    moments = color.color_moments(jnp.asarray(s))

    def loss(emb, exact):
        m = nnx.merge(graphdef, state)
        y = color.align_to_moments(m.transfer(jnp.asarray(c), emb), moments, 0.6,
                                   exact_gradient=exact)
        total, _ = losses.perceptual_loss(
            feat, y, cfg, content_feats=feat(jnp.asarray(c), ("relu3_3",)),
            style_targets=losses.StyleTargets.from_images(feat, jnp.asarray(s), cfg))
        return jnp.sum(total)

    g = np.asarray(jax.jit(jax.grad(loss), static_argnums=1)(jnp.asarray(e0), True))
    big = np.abs(g) > 1e-3 * np.abs(g).max()
    np.testing.assert_allclose((e1 - e0)[big], (-lr * np.sign(g))[big], rtol=1e-3, atol=1e-6)
    surrogate = np.asarray(jax.jit(jax.grad(loss), static_argnums=1)(jnp.asarray(e0), False))
    assert np.any(np.sign(surrogate[big]) != np.sign(g[big]))  # the check can tell them apart


def test_batch_examples_are_independent(model, imgs):
    c, s = imgs["content"], imgs["style"]
    e0 = np.asarray(model.embed(jnp.asarray(s)))
    w = np.eye(2, dtype=np.float32)
    both, h_both = refine.refine_embeddings(model, c, s, w, e0, steps=3)
    for i in range(2):
        one, h_one = refine.refine_embeddings(model, c[i:i + 1], s, w[i:i + 1], e0[i:i + 1],
                                              steps=3)
        # Batch-1 and batch-2 convolutions round differently, and Adam's first steps are
        # ~lr * sign(g): elements with near-zero gradient may differ by a fraction of lr (0.05).
        np.testing.assert_allclose(h_both[:, i], h_one[:, 0], rtol=1e-3)
        np.testing.assert_allclose(both[i], one[0], atol=0.02)
        assert np.abs(both[i] - e0[i]).max() > 0.1  # while the embedding moved much more


def test_option_errors(model, imgs):
    e0 = np.zeros((2, model.embedding_dim), np.float32)
    for kw in ({"steps": -1}, {"steps": 1.5}, {"learning_rate": 0.0}, {"style_weight": -1.0}):
        with pytest.raises(ConfigError):
            refine.refine_embeddings(model, imgs["content"], imgs["style"], np.ones(2) / 2, e0,
                                     **kw)
    with pytest.raises(ConfigError, match="must agree"):
        refine.refine_embeddings(model, imgs["content"], imgs["style"], np.ones(2) / 2, e0[:1])


# ------------------------------------------------------------------------------------ Stylizer


@pytest.fixture(scope="module")
def st(model_path, vgg):
    return Stylizer.load(model_path, vgg=vgg, style_size=SS, batch_size=2)


def test_stylizer_refine_embedding_and_stylize_agree(st, imgs):
    content = smooth_image(40, 48, 5)
    style = smooth_image(40, 36, 6)
    e, hist = st.refine_embedding(content, style, steps=3, return_history=True)
    assert e.shape == (st.embedding_dim,) and hist.shape == (4,) and hist[-1] < hist[0]
    # Contents smaller than the working size are refined at their own shorter side, rounded
    # down to a multiple of 32 (40 -> 32): the history equals the module function on that
    # working copy.
    work = style_working_image(content.astype(np.float32) / 255, 32)[None]
    small = style_working_image(style.astype(np.float32) / 255, SS)[None]
    e_ref, h_ref = refine.refine_embeddings(st.model, work, small, np.ones(1),
                                            st.embed(style), steps=3)
    np.testing.assert_allclose(e, e_ref[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hist, h_ref[:, 0], rtol=1e-4)
    # stylize(refine_steps=3) == stylize(embedding=refined), also in a batch with another.
    y = st.stylize(content, style, refine_steps=3)
    np.testing.assert_allclose(y, st.stylize(content, embedding=e), atol=1e-5)
    other = smooth_image(40, 48, 7)
    ys = st.stylize([content, other], style, refine_steps=3)
    np.testing.assert_allclose(ys[0], y, atol=1e-5)
    e_other = st.refine_embedding(other, style, steps=3)
    np.testing.assert_allclose(ys[1], st.stylize(other, embedding=e_other), atol=1e-5)
    assert not np.allclose(ys[1], st.stylize(other, style), atol=1e-3)


def test_stylizer_refine_with_a_palette(st):
    """stylize(refine_steps, palette) refines for the aligned output and shows it aligned."""
    content = smooth_image(40, 48, 11)
    style = smooth_image(40, 36, 12)
    e = st.refine_embedding(content, style, steps=3, palette=0.5)
    assert not np.allclose(e, st.refine_embedding(content, style, steps=3), atol=1e-4)
    y = st.stylize(content, style, refine_steps=3, palette=0.5)
    np.testing.assert_allclose(y, st.stylize(content, embedding=e, palette=0.5,
                                             palette_moments=st.palettes(style)), atol=1e-5)
    # luminance preservation does not apply the palette, so refinement does not see it either
    y = st.stylize(content, style, refine_steps=3, palette=0.5, preserve_color=True)
    np.testing.assert_allclose(y, st.stylize(content, embedding=st.refine_embedding(
        content, style, steps=3, palette=0.0), preserve_color=True), atol=1e-5)


def test_stylizer_refine_mixes_styles_and_strength(st):
    content = smooth_image(40, 48, 8)
    styles = [smooth_image(40, 40, 9), smooth_image(36, 44, 10)]
    e = st.refine_embedding(content, styles, weights=[0.25, 0.75], steps=3)
    y = st.stylize(content, styles, weights=[0.25, 0.75], strength=0.5, refine_steps=3)
    np.testing.assert_allclose(y, st.stylize(content, embedding=e, strength=0.5), atol=1e-5)


def test_stylize_files_refine(st, tmp_path):
    c = [write_png(tmp_path / f"c{i}.png", smooth_image(40, 48, 20 + i)) for i in range(3)]
    s = write_png(tmp_path / "s.png", smooth_image(40, 40, 30))
    res = {r.content.name: r for r in st.stylize_files(c, s, refine_steps=3)}
    assert all(r.ok for r in res.values())
    for p in c:
        want = st.stylize(str(p), s, refine_steps=3)
        np.testing.assert_allclose(res[p.name].image, want, atol=1e-5)


def test_stylizer_refine_errors(st):
    content, style = smooth_image(40, 40, 1), smooth_image(40, 40, 2)
    with pytest.raises(ConfigError, match="match"):
        st.stylize(content, style, preserve_color="match", refine_steps=3)
    with pytest.raises(ConfigError, match="style images"):
        st.stylize(content, embedding=np.zeros(st.embedding_dim, np.float32), refine_steps=3)
    with pytest.raises(ConfigError, match=">= 0"):
        st.stylize(content, style, refine_steps=-3)
    with pytest.raises(ConfigError, match="one content"):
        st.refine_embedding([content, content], style, steps=1)


def test_refining_a_blank_content_is_an_error_not_a_nan_image(st, tmp_path):
    """A flat image's gradient overflows into NaN (zero variance in every instance norm): an
    ImageError naming the file, and a batch skips it and goes on; 0 steps still work. A flat
    colour counts (its channels' different levels are no texture), grey or not."""
    red = np.full((40, 44, 3), (0.47, 0.12, 0.12), np.float32)
    with pytest.raises(ImageError, match=r"blank \(pixel std 0.0000 < 0.01\).*without refine"):
        st.stylize(red, smooth_image(40, 40, 2), refine_steps=2)
    blank, style = np.full((40, 44, 3), 0.5, np.float32), smooth_image(40, 40, 2)
    with pytest.raises(ImageError, match=r"blank \(pixel std 0.0000 < 0.01\).*without refine"):
        st.stylize(blank, style, refine_steps=2)
    with pytest.raises(ImageError, match="blank"):
        st.refine_embedding(blank, style, steps=2)
    assert np.all(np.isfinite(st.stylize(blank, style)))
    np.testing.assert_array_equal(st.refine_embedding(blank, style, steps=0),
                                  st.embed(style)[0])
    b = write_png(tmp_path / "blank.png", blank)
    c = write_png(tmp_path / "c.png", smooth_image(40, 48, 20))
    res = {r.content.name: r for r in st.stylize_files(
        [b, c], style, refine_steps=1, output=lambda p: tmp_path / f"{p.stem}_out.png")}
    assert res["c.png"].ok and not res["blank.png"].ok
    assert res["blank.png"].reason.startswith(f"{b}: blank (pixel std")
    assert not (tmp_path / "blank_out.png").exists()


# ------------------------------------------------------------------------------------ CLI


def test_cli_refine(model_path, vgg, tmp_path, capsys):
    cli_stylize._VGG["vgg"] = vgg
    c = write_png(tmp_path / "c.png", smooth_image(40, 48, 40))
    s = write_png(tmp_path / "s.png", smooth_image(40, 40, 41))
    out = tmp_path / "o.png"
    base = ["--model", str(model_path), "--style-size", str(SS), "--content", str(c),
            "--style", str(s)]
    assert cli_stylize.main([*base, "--out", str(out), "--refine", "3"]) == 0
    st = cli_stylize.load_stylizer(str(model_path))
    want = st.stylize(str(c), str(s), style_size=SS, refine_steps=3)
    got = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out), np.float32) / 255
    np.testing.assert_allclose(got, want, atol=1.01 / 255)
    capsys.readouterr()
    for extra, msg in ((["--refine", "-1"], "--refine must be >= 0"),
                       (["--refine", "2", "--strength-sweep", "3"], "--refine applies"),
                       (["--refine", "2", "--preserve-color", "match"], "--refine does not")):
        assert cli_stylize.main([*base, "--out", str(tmp_path / "x.png"), *extra]) == 1
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err


# ------------------------------------------------- mutation-testing pass 2 (default palette)


def test_the_default_palette_is_the_models(model, imgs):
    """Without ``palette=`` the loss sees the output with the model's own palette (it scored
    the raw output, so a palette model's refinement optimized what users never see)."""
    c, s = imgs["content"], imgs["style"]
    w = np.array([0.25, 0.75], np.float32)
    e0 = np.repeat(np.asarray(model.embed(jnp.asarray(s))).T @ w[:, None], 2, 1).T
    pal = nnx.merge(*nnx.split(model))
    pal.palette = 0.6
    _, default = refine.refine_embeddings(pal, c, s, w, e0, steps=0)
    _, explicit = refine.refine_embeddings(model, c, s, w, e0, steps=0, palette=0.6)
    _, raw = refine.refine_embeddings(model, c, s, w, e0, steps=0, palette=0.0)
    np.testing.assert_allclose(default, explicit, rtol=1e-6)
    assert not np.allclose(default, raw, rtol=1e-3)


def test_style_weights_are_a_mix_for_both_targets(model, imgs):
    """StyleTargets.blend normalizes the weights; the palette target did not ([3, 7] asked
    for colour means of ~5 on [0, 1] images while the style target was [0.3, 0.7]'s)."""
    c, s = imgs["content"], imgs["style"]
    e0 = np.repeat(np.asarray(model.embed(jnp.asarray(s[:1]))), 2, 0)
    runs = [refine.refine_embeddings(model, c, s, np.array(w, np.float32), e0, steps=1,
                                     palette=0.6) for w in ([0.3, 0.7], [3.0, 7.0])]
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-5)
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-6)
    for bad in ([0.0, 0.0], [-1.0, 2.0], [np.nan, 1.0]):  # (all zeros gave NaN targets)
        with pytest.raises(ConfigError, match="style_weights must be"):
            refine.refine_embeddings(model, c, s, np.array(bad, np.float32), e0, steps=1)


def test_non_finite_options_are_errors_and_style_weight_zero_is_allowed(model, imgs):
    """NaN/inf learning rates or style weights are refused (they gave NaN embeddings); a style
    weight of exactly 0 (content loss only) is a valid choice."""
    c, s = imgs["content"], imgs["style"]
    e0 = np.zeros((2, model.embedding_dim), np.float32)
    for kw in ({"learning_rate": float("nan")}, {"learning_rate": float("inf")},
               {"style_weight": float("nan")}, {"style_weight": float("inf")}):
        with pytest.raises(ConfigError, match="finite"):
            refine.refine_embeddings(model, c, s, np.ones(2) / 2, e0, steps=1, **kw)
    e, hist = refine.refine_embeddings(model, c, s, np.ones(2) / 2, e0, steps=0,
                                       style_weight=0.0, palette=0.0)
    np.testing.assert_array_equal(e, e0)
    assert hist.shape == (1, 2) and np.all(np.isfinite(hist))



def test_refine_step_compiles_once_on_the_stylizers_sharded_state(st):
    """The Stylizer's state is replicated over a mesh, so the step returns NamedSharding arrays:
    the start and the Adam state (its ``count`` too) are placed the same way before step 1, and
    the 3 steps reuse one executable (it compiled twice, ~1.8 s each, with an unplaced start).
    (Placement only: test_stylizer_refine_embedding_and_stylize_agree checks the numbers.)"""
    sw = 0.4375  # a style weight (static argument) no other test uses: a fresh cache entry
    content = smooth_image(32, 32, 12).astype(np.float32)[None] / 255
    style = smooth_image(32, 32, 13).astype(np.float32)[None] / 255
    e0 = np.asarray(st.model.embed(jnp.asarray(style)))
    before = refine._refine_step._cache_size()
    e, hist = refine.refine_embeddings((st._graphdef, st._state), content, style, np.ones(1), e0,
                                       steps=3, style_weight=sw)
    assert refine._refine_step._cache_size() - before == 1
    assert hist.shape == (4, 1) and np.all(np.isfinite(e))


PLACED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from arbitrary_nst.refine import placed_like_outputs
assert jax.device_count() == 2, jax.devices()
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
replicated = NamedSharding(mesh, P())
tree = {"e": jnp.zeros((3, 5)), "count": jnp.asarray(0)}  # (3 rows: no split over 2 devices)
for state in ({"w": jax.device_put(jnp.ones(4), replicated)},
              {"w": jax.device_put(jnp.ones(4), NamedSharding(mesh, P("data")))},
              [np.ones(2), jnp.ones(2), jax.device_put(jnp.ones(2), replicated)]):
    out = placed_like_outputs(tree, state)
    for x in jax.tree.leaves(out):
        assert x.committed and x.sharding.is_equivalent_to(replicated, x.ndim), x.sharding
    np.testing.assert_array_equal(out["e"], tree["e"])
one = jax.device_put(jnp.ones(2), jax.devices()[1])  # committed to one device: that one
out = placed_like_outputs(tree, {"w": one})
assert all(x.committed and x.devices() == {jax.devices()[1]} for x in jax.tree.leaves(out))
assert placed_like_outputs(tree, {"w": jnp.ones(2), "n": 3}) is tree  # uncommitted: as is
"""


def test_placed_like_outputs_replicates_over_the_states_mesh():
    """The start of a refinement is placed as the jitted step's outputs are: replicated over
    the mesh of the first committed array of the state (even one sharded over it: the
    embeddings' batch need not divide), on the one device a state is committed to, and left
    as it is for an uncommitted state. (2 CPU devices, in a child process.)"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
               + " --xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", PLACED], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
