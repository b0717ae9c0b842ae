"""Tests of arbitrary_nst.fit_style (a style's gamma/beta fitted on photos) and its Stylizer,
CLI and evaluation use.

A random width-0.25 model with random head kernels (as in test_inference) and small generated
images: the fit must optimize exactly the loss it claims (first Adam step against finite
differences of an independent loss), lower it, reproduce, round-trip through its file, and
a fitted style must mix with images exactly like the gamma/beta it stands for.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arbitrary_nst import cli, cli_stylize, color, evaluate, fit_style, losses, refine, samples
from arbitrary_nst import images
from arbitrary_nst.errors import ConfigError, ModelError
from arbitrary_nst.inference import Stylizer, style_working_image
from arbitrary_nst.vgg import features

from test_inference import SS, make_model_file, smooth_image, write_png


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, vgg):
    return make_model_file(tmp_path_factory.mktemp("model") / "model.safetensors", vgg, seed=5,
                           palette=0.5)


@pytest.fixture(scope="module")
def st(model_path, vgg):
    return Stylizer.load(model_path, vgg=vgg, style_size=SS, buckets=None)


@pytest.fixture(scope="module")
def photos():
    return [smooth_image(40, 48, 50 + i) for i in range(3)]


@pytest.fixture(scope="module")
def fitted(st, photos):
    return st.fit_style(smooth_image(40, 40, 60), photos, steps=4, batch_size=2, size=32,
                        learning_rate=0.05)


def test_flatten_roundtrip_and_heads(st):
    m = st.model
    e = jnp.asarray(np.random.default_rng(0).normal(size=(2, m.embedding_dim)), jnp.float32)
    gb = m.predictor.gamma_beta(e)
    flat = fit_style.flatten(gb)
    assert flat.shape == (2, fit_style.conditioning_size(m.cin_channels))
    for (g0, b0), (g1, b1) in zip(gb, fit_style.unflatten(flat, m.cin_channels)):
        np.testing.assert_array_equal(g0, g1)
        np.testing.assert_array_equal(b0, b1)
    np.testing.assert_array_equal(fit_style.predicted_conditioning(m, e), flat)
    with pytest.raises(ConfigError, match="needs"):
        fit_style.unflatten(flat[:, :-1], m.cin_channels)


def _loss_of(model, photos, style, flat, palette):
    """The fit's objective written independently: mean over photos of content + 0.5 style of
    the palette-aligned output conditioned on ``flat`` (a jnp scalar, differentiable)."""
    params = model.vgg.params()
    feat = lambda x, taps: features(params, x, taps, pooling=model.vgg.pooling)  # noqa: E731
    cfg = losses.LossConfig(style_weight=refine.DEFAULT_STYLE_WEIGHT)
    gb = fit_style.unflatten(jnp.asarray(flat, jnp.float32)[None], model.cin_channels)
    y = model.transfer_net(photos, gb)
    y = color.align_to_moments(y, color.color_moments(style[None]), palette,
                               exact_gradient=True)
    total, _ = losses.perceptual_loss(
        feat, y, cfg, content_feats=feat(photos, ("relu3_3",)),
        style_targets=losses.StyleTargets.from_images(feat, style[None], cfg))
    return jnp.mean(total)


def test_fit_optimizes_the_stated_loss(st, photos):
    """history[0] is the independent loss at the predicted gamma/beta (palette-aligned output),
    the first Adam step is -lr * sign(gradient of that loss) wherever the gradient is not tiny,
    and that gradient (through the palette's map too) agrees with finite differences."""
    model = st.model
    style = style_working_image(smooth_image(40, 40, 61).astype(np.float32) / 255, 32)
    work = np.stack([style_working_image(p.astype(np.float32) / 255, 32) for p in photos[:2]])
    e0 = np.asarray(model.embed(jnp.asarray(style[None])))[0]
    cond, moments, hist = fit_style.fit_conditioning(model, style, work, e0, steps=1,
                                                     batch_size=2, learning_rate=0.01, seed=3)
    # the batch the fit drew (seed 3): both photos, in this order, these flipped
    rng = np.random.default_rng(3)
    idx = rng.choice(2, 2, replace=False)
    flip = rng.random(2) < 0.5
    x = jnp.asarray(np.where(flip[:, None, None, None], work[idx][:, :, ::-1], work[idx]))
    start = np.asarray(fit_style.predicted_conditioning(model, jnp.asarray(e0)[None]))[0]
    # (jitted: op by op, its ~700 primitives each compiled on their own took 18 s)
    loss = jax.jit(lambda f: _loss_of(model, x, style, f, 0.5))  # the model's palette
    np.testing.assert_allclose(hist[0], float(loss(start)), rtol=1e-4)
    np.testing.assert_allclose(moments, np.asarray(model.palette_moments(style[None]))[0],
                               rtol=1e-5)
    step = cond - start
    grad = np.asarray(jax.jit(jax.grad(loss))(start))
    clear = np.abs(grad) > 1e-3 * np.abs(grad).max()  # float32 noise can flip tiny ones
    assert clear.sum() > 0.5 * grad.size
    np.testing.assert_allclose(step[clear], -0.01 * np.sign(grad[clear]), rtol=1e-3)
    h = 1e-3
    for i in np.argsort(-np.abs(grad))[:4]:
        up, down = start.copy(), start.copy()
        up[i] += h
        down[i] -= h
        fd = float(loss(up) - loss(down))
        np.testing.assert_allclose(fd / (2 * h), grad[i], rtol=0.02)


def test_fitting_styles_together_is_fitting_each_alone(st, photos):
    """fit_conditionings with S = 2 styles (each its own photos): the shared objective's
    gradient is each style's own gradient / S, and each style gets the fit it gets alone, except
    on coordinates whose gradient is float32 noise (~1e-8 of the largest; Adam's first step is
    about lr * sign(g), so noise picks a sign there)."""
    from flax import nnx

    model = st.model
    styles = np.stack([style_working_image(smooth_image(40, 40, 70 + i).astype(np.float32) / 255,
                                           32) for i in range(2)])
    work = np.stack([style_working_image(p.astype(np.float32) / 255, 32) for p in photos])
    draw = np.stack([work[[0, 1]], work[[2, 0]][:, :, ::-1]])  # [S=2, K=2, h, w, 3]
    emb = np.asarray(model.embed(jnp.asarray(styles)))

    graphdef, state = nnx.split(model)

    @jax.jit  # (compiled once per number of styles; run op by op the test took 44 s, now 11)
    def objective_gradient(state, styles, emb, draw):
        targets, moments, flat = fit_style._fit_start(graphdef, state, styles, emb,
                                                      style_weight=0.5)
        obj = fit_style._objective(nnx.merge(graphdef, state), draw, targets, moments,
                                   jnp.float32(0.5), 0.5)
        return jax.grad(lambda f: obj(f)[0])(flat)

    def grad_of(i):  # the gradient of the fit's objective for styles[i] (all when i is None)
        sl = slice(None) if i is None else slice(i, i + 1)
        return np.asarray(objective_gradient(state, jnp.asarray(styles[sl]),
                                             jnp.asarray(emb[sl]), jnp.asarray(draw[sl])))

    together = grad_of(None)
    both, moments, hist = fit_style.fit_conditionings(model, styles, emb, lambda: draw, steps=1,
                                                      learning_rate=0.03)
    assert both.shape[0] == 2 and hist.shape == (2, 2)
    start = np.asarray(fit_style.predicted_conditioning(model, jnp.asarray(emb)))
    for i in range(2):
        alone = grad_of(i)[0]
        scale = np.abs(alone).max()
        np.testing.assert_allclose(2 * together[i], alone, atol=1e-3 * scale)
        fit1, m1, h1 = fit_style.fit_conditionings(model, styles[i:i + 1], emb[i:i + 1],
                                                   lambda i=i: draw[i:i + 1], steps=1,
                                                   learning_rate=0.03)
        clear = np.abs(alone) > 1e-4 * scale
        assert clear.mean() > 0.5
        np.testing.assert_allclose(both[i][clear], fit1[0][clear], atol=1e-5)
        np.testing.assert_allclose(both[i][clear] - start[i][clear],
                                   -0.03 * np.sign(alone[clear]), rtol=1e-3)
        np.testing.assert_allclose(hist[:, i], h1[:, 0], rtol=1e-4)
        np.testing.assert_allclose(moments[i], m1[0], rtol=1e-6)
    with pytest.raises(ConfigError, match="photos must be"):
        fit_style.fit_conditionings(model, styles, emb, lambda: draw[:1], steps=1)


def test_fit_lowers_the_loss_and_reproduces(st, photos, fitted):
    assert fitted.history.shape == (5,)
    assert np.all(np.isfinite(fitted.history))
    assert fitted.history[-1] < 0.9 * fitted.history[0], fitted.history
    again = st.fit_style(smooth_image(40, 40, 60), photos, steps=4, batch_size=2, size=32,
                         learning_rate=0.05)
    np.testing.assert_array_equal(again.conditioning, fitted.conditioning)
    assert fitted.info["photos"] == 3 and fitted.info["steps"] == 4
    assert fitted.info["photos_given"] == 3
    assert fitted.fingerprint == fit_style.model_fingerprint(st.model)


def test_zero_offset_fitted_style_is_the_plain_style(st, photos):
    """A fitted style whose gamma/beta are the predicted ones reproduces the style image
    exactly: alone, mixed, at any strength and with the palette."""
    style = smooth_image(40, 40, 62)
    fs = st.fit_style(style, photos, steps=0, size=32)
    np.testing.assert_array_equal(fs.conditioning, st._heads(fs.embedding))
    c = photos[0]
    for kw in ({}, {"strength": 0.4}, {"palette": 0.0}, {"preserve_color": True}):
        np.testing.assert_allclose(st.stylize(c, fs, **kw), st.stylize(c, style, **kw),
                                   atol=1e-6)
    other = smooth_image(36, 44, 63)
    np.testing.assert_allclose(st.stylize(c, [other, fs], weights=[0.3, 0.7]),
                               st.stylize(c, [other, style], weights=[0.3, 0.7]), atol=2e-6)


def test_fitted_conditioning_mixes_linearly(st, photos, fitted):
    """The output is the transfer network on exactly the mixed gamma/beta: w * fitted +
    (1 - w) * heads(e_image), and with strength s: s * that + (1 - s) * heads(e_content)."""
    m = st.model
    c = photos[1].astype(np.float32) / 255
    other = smooth_image(36, 44, 64)
    e_other = st.embed(other)[0]
    e_c = st.embed(c)[0]
    g = fitted.conditioning
    g_other, g_c = st._heads(e_other), st._heads(e_c)

    def net(flat):
        return np.asarray(m.transfer_net(jnp.asarray(c)[None], fit_style.unflatten(
            jnp.asarray(flat, jnp.float32)[None], m.cin_channels)))[0]

    np.testing.assert_allclose(st.stylize(c, fitted, palette=0.0), net(g), atol=2e-5)
    mixed = 0.25 * g + 0.75 * g_other
    np.testing.assert_allclose(st.stylize(c, [fitted, other], weights=[1, 3], palette=0.0),
                               net(mixed), atol=2e-5)
    np.testing.assert_allclose(st.stylize(c, fitted, strength=0.6, palette=0.0),
                               net(0.6 * g + 0.4 * g_c), atol=2e-5)
    # transfer() with offsets (figures) agrees with stylize()
    e, mo, d = st.style_parts([fitted, other])
    assert d.shape == (2, g.size) and not np.any(d[1])
    w = np.array([0.25, 0.75], np.float32)
    np.testing.assert_allclose(
        st.transfer(c, (w @ e)[None], palette_moments=(w @ mo)[None], offsets=(w @ d)[None])[0],
        st.stylize(c, [fitted, other], weights=[1, 3]), atol=2e-5)


def test_file_roundtrip_atomic_and_errors(st, fitted, tmp_path, monkeypatch):
    p = fitted.save(tmp_path / "s.npz")
    assert sorted(os.listdir(tmp_path)) == ["s.npz"]  # no temporary file left
    back = fit_style.FittedStyle.load(p)
    for f in ("conditioning", "embedding", "moments", "history"):
        np.testing.assert_array_equal(getattr(back, f), getattr(fitted, f))
    assert back.fingerprint == fitted.fingerprint and back.info == fitted.info
    np.testing.assert_array_equal(st.stylize(smooth_image(40, 40, 1), str(p)),
                                  st.stylize(smooth_image(40, 40, 1), fitted))
    with pytest.raises(ConfigError, match="exists"):
        fitted.save(p)
    with pytest.raises(ConfigError, match=".npz"):
        fitted.save(tmp_path / "s.bin")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ModelError, match="bad.npz: not a fitted style file \\(not an .npz"):
        fit_style.FittedStyle.load(bad)  # (a non-zip file was read as a pickle)
    np.savez(tmp_path / "foreign.npz", meta=np.frombuffer(b'{"format": "x"}', np.uint8))
    with pytest.raises(ModelError, match="not a fitted style file"):
        fit_style.FittedStyle.load(tmp_path / "foreign.npz")
    with pytest.raises(ModelError, match="no such file"):
        st.stylize(smooth_image(40, 40, 1), str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "objects.npz", meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ModelError, match="holds Python objects"):  # (it advised allow_pickle)
        fit_style.FittedStyle.load(tmp_path / "objects.npz")
    # the loss history is a record: a NaN there does not make the style unusable
    with np.load(p) as z:
        parts = dict(z)
    parts["history"] = np.full_like(parts["history"], np.nan)
    np.savez(tmp_path / "nan_history.npz", **parts)
    np.testing.assert_array_equal(
        fit_style.FittedStyle.load(tmp_path / "nan_history.npz").conditioning,
        fitted.conditioning)
    # a member that unpacks to more than a fitted style ever holds is refused unread (a 2 MB
    # file whose history was 2^29 zeros took 2.2 GB; the cap here lowered to keep it small)
    parts["history"] = np.zeros(4096, np.float32)
    np.savez_compressed(tmp_path / "bomb.npz", **parts)
    monkeypatch.setattr(fit_style, "MAX_MEMBER_BYTES", 8192)
    with pytest.raises(ModelError, match="bomb.npz: not a fitted style file \\(history.npy "
                                         "unpacks to 16,512 bytes"):
        fit_style.FittedStyle.load(tmp_path / "bomb.npz")
    fit_style.FittedStyle.load(p)  # (the real one is far below it)
    alien = dataclasses.replace(fitted, fingerprint="0" * 16)
    with pytest.raises(ConfigError, match="another model"):
        st.stylize(smooth_image(40, 40, 1), alien)


def test_a_fitted_style_is_refused_by_a_model_with_other_heads(fitted, model_path, vgg, tmp_path):
    """distill's fold keeps the transfer network and changes the predictor's heads (and the
    embedding size): a fingerprint of the transfer network alone accepted the start model's
    fitted styles in the folded model."""
    from arbitrary_nst import distill, export

    model = export.load_exported(model_path, vgg=vgg)
    f, g = model.predictor.feature_dim, 2 * sum(model.cin_channels)
    rng = np.random.default_rng(0)
    corr = distill.ConditioningCorrection(rng.normal(size=(f, 1)) * 1e-3, np.zeros(1),
                                          rng.normal(size=(1, g)) * 1e-3, np.zeros(g))
    export.export_model(distill.fold_correction(model, corr), tmp_path / "folded.safetensors")
    folded = Stylizer.load(tmp_path / "folded.safetensors", vgg=vgg, style_size=SS, buckets=None)
    with pytest.raises(ConfigError, match="another model"):
        folded.stylize(smooth_image(40, 40, 1), fitted)


def test_stylizer_errors_and_bad_photos(st, fitted, photos, tmp_path):
    c = smooth_image(40, 40, 2)
    with pytest.raises(ConfigError, match="refine_steps does not apply"):
        st.stylize(c, fitted, refine_steps=2)
    with pytest.raises(ConfigError, match="luminance"):
        st.stylize(c, fitted, preserve_color="match")
    with pytest.raises(ConfigError, match="one style image"):
        st.fit_style([smooth_image(40, 40, 3), smooth_image(40, 40, 4)], photos)
    with pytest.raises(ConfigError, match="batch size"):
        st.fit_style(smooth_image(40, 40, 3), photos, batch_size=0)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    good = write_png(tmp_path / "good.png", photos[0])
    fs = st.fit_style(smooth_image(40, 40, 3), [str(broken), str(good)], steps=1, size=32)
    assert fs.info["photos"] == 1 and len(fs.info["skipped"]) == 1
    assert "broken.png" in fs.info["skipped"][0]
    with pytest.raises(ConfigError, match="no usable photos"):
        st.fit_style(smooth_image(40, 40, 3), [str(broken)], steps=1, size=32)
    # a blank photo would make the whole fit NaN (its gradient overflows): skipped
    fs = st.fit_style(smooth_image(40, 40, 3), [np.full((40, 40, 3), 0.9, np.float32), good],
                      steps=2, size=32)
    assert fs.info["photos"] == 1 and "blank (pixel std" in fs.info["skipped"][0]
    assert fs.info["skipped"][0].startswith("photo 0: ")  # which photo (it was not said)
    assert np.all(np.isfinite(fs.conditioning))
    nan_photo = np.full((40, 40, 3), np.nan, np.float32)
    fs = st.fit_style(smooth_image(40, 40, 3), [good, nan_photo], steps=1, size=32)
    assert fs.info["skipped"] == ["photo 1: image array contains NaN or infinite values"]
    fs = st.fit_style(smooth_image(40, 40, 3),  # a flat colour is as blank as a grey
                      [np.full((40, 40, 3), (0.47, 0.12, 0.12), np.float32), good],
                      steps=2, size=32)
    assert fs.info["photos"] == 1 and "blank (pixel std 0.0000" in fs.info["skipped"][0]
    assert np.all(np.isfinite(fs.conditioning))
    # blank only in the centre square the fit sees: the whole fit "diverged" (NaN)
    sides = np.full((40, 120, 3), 0.5, np.float32)
    sides[:, :30] = sides[:, -30:] = np.random.default_rng(0).random((40, 30, 3))
    fs = st.fit_style(smooth_image(40, 40, 3), [sides, good], steps=2, size=32)
    assert fs.info["photos"] == 1 and fs.info["skipped"][0].endswith("in its centre square")
    assert np.all(np.isfinite(fs.conditioning))
    # and a fitted style with NaN is not written (load would refuse it)
    nan = dataclasses.replace(fitted, conditioning=np.full_like(fitted.conditioning, np.nan))
    with pytest.raises(ModelError, match="not written: .*NaN"):
        nan.save(tmp_path / "nan.npz")
    assert not (tmp_path / "nan.npz").exists()
    # nor used: one built in memory is checked as a loaded one (NaN gave a NaN image, a list
    # embedding a raw AttributeError), and one from a file is named by the file
    for change, why in ((dict(conditioning=fitted.conditioning * np.nan), "non-finite"),
                        (dict(moments=fitted.moments * np.nan), "non-finite"),
                        (dict(moments=fitted.moments[:5]), "wrong shapes"),
                        (dict(embedding=list(fitted.embedding)), None),
                        (dict(embedding=["x"] * len(fitted.embedding)), "not numbers"),
                        (dict(embedding=fitted.embedding[:3]), "wrong size for this model")):
        bad = dataclasses.replace(fitted, **change)
        if why is None:  # (a list of numbers is an array of them)
            np.testing.assert_allclose(st.stylize(c, bad), st.stylize(c, fitted), atol=1e-6)
            continue
        with pytest.raises(ConfigError, match=f"^{fitted.name}: fitted style .*{why}"):
            st.stylize(c, bad)
    small = dataclasses.replace(fitted, embedding=fitted.embedding[:3])
    np.savez(tmp_path / "small.npz", conditioning=small.conditioning, embedding=small.embedding,
             moments=small.moments, history=small.history,
             meta=np.frombuffer(json.dumps({"format": fit_style.FORMAT,
                                            "fingerprint": fitted.fingerprint}).encode(),
                                np.uint8))
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'small.npz'}: fitted style has the "
                                          "wrong size"):
        st.stylize(c, tmp_path / "small.npz")


# ------------------------------------------------------------------------------------ CLI


def _one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_cli_fit_style_then_stylize(model_path, vgg, tmp_path, capsys):
    cli_stylize._VGG["vgg"] = vgg
    pdir = tmp_path / "photos"
    pdir.mkdir()
    for i in range(3):
        write_png(pdir / f"p{i}.png", smooth_image(40, 48, 70 + i))
    s = write_png(tmp_path / "s.png", smooth_image(40, 40, 75))
    out = tmp_path / "s.npz"
    base = ["fit-style", "--model", str(model_path), "--style", str(s), "--photos", str(pdir),
            "--steps", "3", "--size", "32", "--no-progress"]
    assert cli.main([*base, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: 3 photos, 3 steps" in printed
    # each photo once (a folder and a glob of it said 6 photos), never the painting itself
    i = base.index("--steps")
    one_step = [*base[:i], *base[i + 2:], "--steps", "1"]
    assert cli.main([*one_step, "--photos", str(pdir / "*.png"), "--out",
                     str(tmp_path / "twice.npz")]) == 0
    assert "wrote " + str(tmp_path / "twice.npz") + ": 3 photos, 1 step, loss" in \
        capsys.readouterr().out
    # the same photos listed in another order: the same fit (batches are drawn by index; a
    # reversed list gave another conditioning under the same record), and the record names
    # the photos used
    i = base.index("--photos")
    assert cli.main([*base[:i + 1], *map(str, sorted(pdir.iterdir(), reverse=True)),
                     *base[i + 2:], "--out", str(tmp_path / "reversed.npz")]) == 0
    capsys.readouterr()
    fs, rev = fit_style.FittedStyle.load(out), fit_style.FittedStyle.load(tmp_path / "reversed.npz")
    np.testing.assert_array_equal(rev.conditioning, fs.conditioning)
    assert rev.info["photos_digest"] == fs.info["photos_digest"]
    assert cli.main([*base[:i + 1], str(pdir / "p0.png"), str(pdir / "p1.png"), *base[i + 2:],
                     "--out", str(tmp_path / "two.npz")]) == 0
    capsys.readouterr()
    assert fit_style.FittedStyle.load(tmp_path / "two.npz").info["photos_digest"] != \
        fs.info["photos_digest"]
    assert cli.main([*base[:i + 2], str(s), *base[i + 2:], "--out",
                     str(tmp_path / "self.npz")]) == 1
    assert "--photos holds the painting" in _one_error_line(capsys)
    fs = fit_style.FittedStyle.load(out)
    assert fs.info["name"] == "s" and fs.history.shape == (4,)
    # the same fit through the API (the CLI's working size for the style is the default 256)
    st = cli_stylize.load_stylizer(str(model_path))
    want_fs = st.fit_style(str(s), sorted(pdir.iterdir()), steps=3, size=32)
    np.testing.assert_allclose(fs.conditioning, want_fs.conditioning, atol=1e-6)

    # errors: one line, exit 1
    assert cli.main([*base, "--out", str(out)]) == 1
    assert "exists" in _one_error_line(capsys)
    assert cli.main([*base, "--out", str(tmp_path / "s.txt")]) == 1
    assert ".npz" in _one_error_line(capsys)
    assert cli.main([*base, "--out", str(s / "x.npz")]) == 1
    assert "output folder is not a directory" in _one_error_line(capsys)
    assert cli.main([*base, "--out", str(s)]) == 1  # the style image: refused by its suffix
    assert ".npz" in _one_error_line(capsys)
    fitted_as_style = [str(out) if a == str(s) else a for a in base]  # (--style given once)
    assert cli.main([*fitted_as_style, "--out", str(pdir / "p0.npz")]) == 1
    assert "already a fitted style" in _one_error_line(capsys)
    i = base.index("--steps")
    assert cli.main([*base[:i], *base[i + 2:], "--out", str(out), "--overwrite", "--steps",
                     "-1"]) == 1
    # (one rule for one option: -1 was "must be an integer >= 0", 0 "must be >= 1")
    assert _one_error_line(capsys) == "error: --steps must be >= 1, got -1"
    assert cli.main([*base[:i], *base[i + 2:], "--out", str(tmp_path / "zero.npz"), "--steps",
                     "0"]) == 1  # (accepted: a 'fit' that is the predicted style, saved)
    assert "--steps must be >= 1" in _one_error_line(capsys)
    assert not (tmp_path / "zero.npz").exists()
    assert cli.main(["fit-style", "--model", str(model_path), "--style", str(s), "--photos",
                     str(tmp_path / "nope"), "--out", str(tmp_path / "t.npz")]) == 1
    assert "nope" in _one_error_line(capsys)

    # stylize with it, mixed with an image, and in an interpolation figure
    c = write_png(tmp_path / "c.png", smooth_image(40, 48, 76))
    o = tmp_path / "o.png"
    run = ["--model", str(model_path), "--content", str(c)]
    assert cli_stylize.main([*run, "--style", str(out), str(s), "--style-weights", "0.7", "0.3",
                             "--out", str(o)]) == 0
    got = np.asarray(images.load_image(o), np.float32)
    want = st.stylize(str(c), [str(out), str(s)], weights=[0.7, 0.3])
    np.testing.assert_allclose(got, want, atol=1.01 / 255)
    titles = []
    real_figure = cli_stylize.compose_figure

    def figure(tiles, *, title="", **kw):
        titles.append(title)
        return real_figure(tiles, title=title, **kw)

    cli_stylize.compose_figure = figure
    try:
        assert cli_stylize.main([*run, "--interpolate", str(out), str(s), "--steps", "3",
                                 "--tile-size", "32", "--out", str(tmp_path / "strip.png")]) == 0
    finally:
        cli_stylize.compose_figure = real_figure
    # (named as in the output names: the fitted style and its painting were both "s")
    assert titles == ["% of s-fitted / s"]
    capsys.readouterr()
    assert cli_stylize.main([*run, "--style", str(out), "--refine", "2",
                             "--out", str(tmp_path / "r.png")]) == 1
    assert "fitted" in _one_error_line(capsys)
    assert fit_style.FittedStyle.load(out).conditioning.shape == fs.conditioning.shape


def test_evaluate_model_fit(model_path, vgg, tmp_path, capsys):
    root = tmp_path / "set"
    for n in ("astronaut", "coffee"):
        images.save_image(root / "content" / f"{n}.png", samples.content_image(n, max_side=64))
    images.save_image(root / "style" / "waves.png", samples.style_image("waves", size=64))
    images.save_image(root / "fit" / "cat.png", samples.content_image("chelsea", max_side=64))
    args = ["--content", str(root / "content"), "--style", str(root / "style"), "--size", "64",
            "--model", str(model_path), "--methods", "model,model_fit,identity",
            "--fit-steps", "3", "--no-progress"]
    assert evaluate.main([*args, "--out", str(tmp_path / "o1"),
                          "--fit-photos", str(root / "content")]) == 1
    assert "must not contain evaluated contents" in capsys.readouterr().err
    # (a copy of an evaluated photo among the fit photos: the fits were made on test photos)
    (root / "fitcopy").mkdir()
    (root / "fitcopy" / "photo1.png").write_bytes((root / "content" / "coffee.png").read_bytes())
    assert evaluate.main([*args, "--out", str(tmp_path / "o1b"),
                          "--fit-photos", str(root / "fitcopy")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {root / 'fitcopy' / 'photo1.png'}: --fit-photos must not contain evaluated "
        f"contents: a copy of {root / 'content' / 'coffee.png'} (copies found: 1)")
    assert evaluate.main([*args, "--out", str(tmp_path / "o2")]) == 1
    assert "--fit-photos" in capsys.readouterr().err
    assert evaluate.main([*args, "--out", str(tmp_path / "o3"),
                          "--fit-photos", str(root / "fit")]) == 0
    import csv
    with open(tmp_path / "o3" / "results.csv") as f:
        rows = {(r["method"], r["content"]): r for r in csv.DictReader(f)}
    for c in ("astronaut", "coffee"):  # a random model: the fit only has to change the output
        fit, plain = rows[("model_fit", c)], rows[("model", c)]
        assert fit["style_gram"] != plain["style_gram"]
        assert np.isfinite(float(fit["style_gram"]))
    import json
    info = json.loads((tmp_path / "o3" / "results.json").read_text())["info"]
    assert info["fit_steps"] == 3 and info["fit_photos"] == 1
    assert info["embed_seconds"]["model_fit"] > 0 and "fits_reused" not in info
    saved = tmp_path / "o3" / "fitted" / "waves.npz"
    assert fit_style.FittedStyle.load(saved).info["steps"] == 3
    first_fingerprint = fit_style.FittedStyle.load(saved).fingerprint
    # a second run reuses the saved fit (same steps, size, photos) and gives the same images;
    # --strength applies to our methods
    assert evaluate.main([*args, "--out", str(tmp_path / "o4"), "--fit-photos",
                          str(root / "fit"), "--fitted", str(tmp_path / "o3" / "fitted")]) == 0
    info4 = json.loads((tmp_path / "o4" / "results.json").read_text())["info"]
    assert info4["fits_reused"] == 1
    a = images.load_image(tmp_path / "o3" / "images" / "model_fit" / "astronaut__waves.png")
    b = images.load_image(tmp_path / "o4" / "images" / "model_fit" / "astronaut__waves.png")
    np.testing.assert_array_equal(a, b)
    assert evaluate.main([*args, "--out", str(tmp_path / "o5"), "--fit-photos",
                          str(root / "fit"), "--fitted", str(tmp_path / "o3" / "fitted"),
                          "--strength", "0.5"]) == 0
    c = images.load_image(tmp_path / "o5" / "images" / "model_fit" / "astronaut__waves.png")
    assert np.abs(c - a).mean() > 1e-3
    with open(tmp_path / "o5" / "results.csv") as f:
        half = {(r["method"], r["content"]): r for r in csv.DictReader(f)}
    assert half[("model", "coffee")]["style_gram"] != rows[("model", "coffee")]["style_gram"]
    assert half[("identity", "coffee")]["style_gram"] == rows[("identity", "coffee")]["style_gram"]
    # the same folder with another model: refitted (and overwritten), not an error
    other = make_model_file(tmp_path / "other.safetensors", vgg, seed=9, palette=0.5)
    other_args = [a if a != str(model_path) else str(other) for a in args]
    assert evaluate.main([*other_args, "--out", str(tmp_path / "o7"), "--fit-photos",
                          str(root / "fit"), "--fitted", str(tmp_path / "o3" / "fitted")]) == 0
    info7 = json.loads((tmp_path / "o7" / "results.json").read_text())["info"]
    assert "fits_reused" not in info7
    assert fit_style.FittedStyle.load(saved).fingerprint != first_fingerprint
    assert evaluate.main([*args, "--out", str(tmp_path / "o6"), "--fit-photos",
                          str(root / "fit"), "--strength", "1.5"]) == 1
    assert "strength" in capsys.readouterr().err


def test_many_photos_are_sampled_down(st, photos, monkeypatch):
    monkeypatch.setattr(fit_style, "MAX_PHOTOS", 2)
    fs = st.fit_style(smooth_image(40, 40, 3), photos, steps=0, size=32)
    assert fs.info["photos"] == 2 and fs.info["photos_given"] == 3


def test_each_fit_step_takes_batch_size_photos(st, photos, monkeypatch):
    """fit_conditioning draws min(batch_size, P) photos a step, without replacement (taking
    all P every step passed the tests: the defaults cover every photo)."""
    seen = []
    real = fit_style.fit_conditionings

    def spy(model, styles, embeddings, draw, **kw):
        def recorded():
            x = draw()
            seen.append(x.shape)
            return x
        return real(model, styles, embeddings, recorded, **kw)

    monkeypatch.setattr(fit_style, "fit_conditionings", spy)
    work = np.stack([np.asarray(p[:32, :32], np.float32) / 255 for p in photos])
    style = np.asarray(smooth_image(32, 32, 3), np.float32) / 255
    e0 = np.asarray(st.embed(smooth_image(32, 32, 3)))[0]
    for batch_size, want in ((2, 2), (5, 3)):
        seen.clear()
        fit_style.fit_conditioning(st.model, style, work, e0, steps=2, batch_size=batch_size)
        assert seen and all(shape[:2] == (1, want) for shape in seen), seen



def test_flat_layout_is_gamma_then_beta_per_layer_and_its_size_is_exact():
    """The flat layout written out (layer 1: gamma, beta; layer 2: gamma, beta; ...), and a
    conditioning of the wrong length refused either way (a longer one was sliced silently)."""
    cin = (2, 3)
    assert fit_style.conditioning_size(cin) == 10
    flat = jnp.arange(20, dtype=jnp.float32).reshape(2, 10)
    (g1, b1), (g2, b2) = fit_style.unflatten(flat, cin)
    np.testing.assert_array_equal(g1, [[0, 1], [10, 11]])
    np.testing.assert_array_equal(b1, [[2, 3], [12, 13]])
    np.testing.assert_array_equal(g2, [[4, 5, 6], [14, 15, 16]])
    np.testing.assert_array_equal(b2, [[7, 8, 9], [17, 18, 19]])
    np.testing.assert_array_equal(fit_style.flatten([(g1, b1), (g2, b2)]), flat)
    for n in (9, 11):
        with pytest.raises(ConfigError, match=f"conditioning has {n} values, the model needs 10"):
            fit_style.unflatten(jnp.zeros((1, n)), cin)


def _small_fitted(**changes) -> fit_style.FittedStyle:
    parts = dict(conditioning=np.linspace(-1, 1, 10, dtype=np.float32),
                 embedding=np.arange(4, dtype=np.float32), moments=np.full(12, 0.5, np.float32),
                 history=np.array([3.0, 2.0, 1.5], np.float32), fingerprint="0123456789abcdef",
                 info={"name": "waves", "steps": 2})
    return fit_style.FittedStyle(**{**parts, **changes})


def test_fitted_style_file_refuses_unusable_arrays_and_replaces_only_when_asked(tmp_path):
    """A file whose conditioning is NaN or not a vector is refused on load (only the history
    may be non-finite); ``overwrite=True`` replaces an existing file atomically."""
    for name in ("s.png", "s", "s.npz.tmp"):
        with pytest.raises(ConfigError, match="a fitted style file must end in .npz"):
            _small_fitted().save(tmp_path / name)
    p = _small_fitted().save(tmp_path / "s.npz")
    # an upper-case suffix is a fitted style for every reader: also for save (and fit-style)
    up = _small_fitted().save(tmp_path / "up" / "UP.NPZ")
    assert up.name == "UP.NPZ" and fit_style.FittedStyle.load(up).info["name"] == "waves"
    assert fit_style.is_fitted_style_path(up)
    up.unlink(), up.parent.rmdir()
    with np.load(p) as z:
        parts = dict(z)
    for name, change in (("nan", np.full(10, np.nan, np.float32)),
                         ("matrix", np.zeros((2, 5), np.float32))):
        np.savez(tmp_path / f"{name}.npz", **dict(parts, conditioning=change))
        with pytest.raises(ModelError, match=f"{name}.npz: fitted style arrays have wrong shapes "
                                             "or non-finite values"):
            fit_style.FittedStyle.load(tmp_path / f"{name}.npz")
    newer = _small_fitted(conditioning=np.ones(10, np.float32), info={"name": "other"})
    with pytest.raises(ConfigError, match="exists"):
        newer.save(p)
    assert newer.save(p, overwrite=True) == p
    back = fit_style.FittedStyle.load(p)
    np.testing.assert_array_equal(back.conditioning, np.ones(10))
    assert back.info == {"name": "other"} and back.name == "other"
    assert sorted(os.listdir(tmp_path)) == ["matrix.npz", "nan.npz", "s.npz"]


def test_fitted_style_paths_are_recognized_by_suffix_in_any_case():
    assert fit_style.is_fitted_style_path("waves.npz")
    assert fit_style.is_fitted_style_path(os.path.join("a", "WAVES.NPZ"))
    assert not fit_style.is_fitted_style_path("waves.npz.png")
    assert not fit_style.is_fitted_style_path(np.zeros((4, 4, 3)))


def test_fit_options_are_checked_before_any_work():
    """Called directly (not through the Stylizer), the fit functions check their options
    first: no photos, a negative seed, batch size 0, negative steps are one-line ConfigErrors
    (the model is never touched: None would fail)."""
    style = np.zeros((32, 32, 3), np.float32)
    photos = np.zeros((2, 32, 32, 3), np.float32)
    e0 = np.zeros(4, np.float32)
    with pytest.raises(ConfigError, match=r"photos must be \[P, H, W, 3\] with P >= 1"):
        fit_style.fit_conditioning(None, style, photos[:0], e0)
    with pytest.raises(ConfigError, match="seed"):
        fit_style.fit_conditioning(None, style, photos, e0, seed=-1)
    with pytest.raises(ConfigError, match="batch size"):
        fit_style.fit_conditioning(None, style, photos, e0, batch_size=0)
    with pytest.raises(ConfigError, match=">= 0"):
        fit_style.fit_conditioning(None, style, photos, e0, steps=-1)
    with pytest.raises(ConfigError, match=">= 0"):
        fit_style.fit_conditionings(None, style[None], e0[None], lambda: photos[None], steps=-1)


def test_the_last_history_entry_is_the_fitted_loss_on_the_last_steps_photos(st, photos):
    """history[-1] is the objective (written independently: _loss_of) at the fitted gamma/beta
    on the photos of the last step, with no extra draw (a new draw made it the loss on other
    photos, not comparable with the step's); with 0 steps, the start's loss on one draw."""
    model = st.model
    style = style_working_image(smooth_image(40, 40, 61).astype(np.float32) / 255, 32)
    work = np.stack([style_working_image(p.astype(np.float32) / 255, 32) for p in photos])
    batches = [work[[0, 1]], work[[2, 0]][:, :, ::-1]]
    calls = []
    loss = jax.jit(lambda x, f: _loss_of(model, x, style, f, 0.5))  # (one compile, not eager)

    def draw():
        calls.append(1)
        return batches[(len(calls) - 1) % 2][None]

    e0 = np.asarray(model.embed(jnp.asarray(style[None])))
    start = np.asarray(fit_style.predicted_conditioning(model, jnp.asarray(e0)))[0]
    cond, _, hist = fit_style.fit_conditionings(model, style[None], e0, draw, steps=1,
                                                learning_rate=0.01)
    assert len(calls) == 1 and hist.shape == (2, 1)
    last = jnp.asarray(batches[0])
    np.testing.assert_allclose(hist[1, 0], float(loss(last, cond[0])), rtol=1e-4)
    assert not np.isclose(hist[1, 0], float(loss(jnp.asarray(batches[1]), cond[0])), rtol=1e-3)
    calls.clear()
    _, _, hist0 = fit_style.fit_conditionings(model, style[None], e0, draw, steps=0)
    assert len(calls) == 1 and hist0.shape == (1, 1)
    np.testing.assert_allclose(hist0[0, 0], float(loss(last, start)), rtol=1e-4)


def test_each_step_draws_distinct_photos_randomly_flipped(monkeypatch):
    """fit_conditioning's draw (the fit itself replaced: no compile): each step's batch is
    min(batch_size, P) *different* photos (without replacement), each as it is or mirrored
    left-right, and over the steps both happen."""
    rng = np.random.default_rng(9)
    photos = rng.random((3, 8, 12, 3)).astype(np.float32)
    draws = []

    def fake(model, styles, embeddings, draw, **kw):
        draws.extend(draw() for _ in range(20))
        g = 6
        return np.zeros((1, g), np.float32), np.zeros((1, 12), np.float32), np.zeros((1, 1))

    monkeypatch.setattr(fit_style, "fit_conditionings", fake)
    fit_style.fit_conditioning(None, np.zeros((8, 8, 3), np.float32), photos,
                               np.zeros(4, np.float32), steps=1, batch_size=3)
    flips = []
    for x in draws:
        assert x.shape == (1, 3, 8, 12, 3)
        which = []
        for y in x[0]:
            plain = [i for i in range(3) if np.array_equal(y, photos[i])]
            mirrored = [i for i in range(3) if np.array_equal(y, photos[i][:, ::-1])]
            assert len(plain) + len(mirrored) == 1
            which += plain + mirrored
            flips.append(bool(mirrored))
        assert sorted(which) == [0, 1, 2]
    assert 0.2 < np.mean(flips) < 0.8


def test_a_fitted_style_and_its_painting_write_different_batch_outputs(model_path, vgg,
                                                                       tmp_path, capsys):
    """``--style painting.npz`` then ``--style painting.png`` into one --out-dir (the README's
    sequence): both were ``photo__painting.png``, so the second run skipped every photo as
    "exists" (or replaced the fitted results with --overwrite)."""
    cli_stylize._VGG["vgg"] = vgg
    pdir = tmp_path / "photos"
    pdir.mkdir()
    write_png(pdir / "p.png", smooth_image(40, 48, 70))
    s = write_png(tmp_path / "painting.png", smooth_image(40, 40, 75))
    fitted = tmp_path / "painting.npz"
    assert cli.main(["fit-style", "--model", str(model_path), "--style", str(s), "--photos",
                     str(pdir), "--steps", "1", "--size", "32", "--no-progress",
                     "--out", str(fitted)]) == 0
    od = tmp_path / "out"
    run = ["--model", str(model_path), "--content", str(pdir), "--out-dir", str(od),
           "--no-progress"]
    assert cli_stylize.main([*run, "--style", str(fitted)]) == 0
    assert cli_stylize.main([*run, "--style", str(s)]) == 0
    assert cli_stylize.main([*run, "--style", str(fitted), str(s)]) == 0
    assert sorted(p.name for p in od.iterdir()) == [
        "p__painting-fitted+painting.png", "p__painting-fitted.png", "p__painting.png"]
    capsys.readouterr()


# -- behaviour pinned by a mutation pass ---------------------------------------------------------

def test_fitted_style_file_refuses_bad_embedding_and_moments_both_ways(tmp_path):
    """Save refuses non-finite colour moments (the file could not be loaded again); load
    refuses a non-finite or non-vector embedding and moments that are not 12 finite numbers
    (only the history may be anything)."""
    with pytest.raises(ModelError, match="not written: .*NaN"):
        _small_fitted(moments=np.full(12, np.nan, np.float32)).save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
    p = _small_fitted().save(tmp_path / "s.npz")
    with np.load(p) as z:
        parts = dict(z)
    for name, key, change in (("emb_nan", "embedding", np.full(4, np.inf, np.float32)),
                              ("emb_matrix", "embedding", np.zeros((2, 2), np.float32)),
                              ("mom_nan", "moments", np.full(12, np.nan, np.float32)),
                              ("mom_short", "moments", np.zeros(11, np.float32))):
        np.savez(tmp_path / f"{name}.npz", **dict(parts, **{key: change}))
        with pytest.raises(ModelError, match=f"{name}.npz: fitted style arrays have wrong "
                                             "shapes or non-finite values"):
            fit_style.FittedStyle.load(tmp_path / f"{name}.npz")


def test_fit_progress_bar_only_when_asked(monkeypatch, capsys):
    """progress=True shows the "fit style" bar on stderr; the default shows nothing (the
    compiled steps are stubs here: only the loop runs)."""
    g = 6
    monkeypatch.setattr(fit_style, "_fit_start", lambda *a, **k: (
        None, jnp.zeros((1, 12)), jnp.zeros((1, g))))
    monkeypatch.setattr(fit_style, "_fit_step", lambda gd, st_, x, t, m, a, flat, opt, lr, **k: (
        flat, opt, jnp.ones(1)))
    monkeypatch.setattr(fit_style, "_fit_loss", lambda *a, **k: jnp.ones(1))
    draw = lambda: np.zeros((1, 1, 8, 8, 3), np.float32)  # noqa: E731
    model = (None, None)  # a split model: (graphdef, state), never merged with a palette given
    for progress in (False, True):
        capsys.readouterr()
        _, _, hist = fit_style.fit_conditionings(model, np.zeros((1, 8, 8, 3)), np.zeros((1, 4)),
                                                 draw, steps=3, palette=0.5, progress=progress)
        assert hist.shape == (4, 1)
        err = capsys.readouterr().err
        assert ("fit style" in err) == progress, err


def test_fit_conditioning_uses_the_given_style_weight_and_palette(st, photos):
    """style_weight and palette reach the loss: with 0 steps history[0] is content +
    2 * style of the raw output (palette 0, the model's is 0.5), written independently; one
    photo, mirror-symmetric, so the random flip does not matter."""
    model = st.model
    style = style_working_image(smooth_image(40, 40, 61).astype(np.float32) / 255, 32)
    p = style_working_image(photos[0].astype(np.float32) / 255, 32)
    p = (p + p[:, ::-1]) / 2
    e0 = np.asarray(model.embed(jnp.asarray(style[None])))[0]
    _, _, hist = fit_style.fit_conditioning(model, style, p[None], e0, steps=0,
                                            style_weight=2.0, palette=0.0)
    params = model.vgg.params()
    feat = lambda x, taps: features(params, x, taps, pooling=model.vgg.pooling)  # noqa: E731

    @jax.jit  # (compiled: op by op it took seconds)
    def loss(x, s, e):
        cfg = losses.LossConfig(style_weight=2.0)
        gb = fit_style.unflatten(fit_style.predicted_conditioning(model, e), model.cin_channels)
        total, _ = losses.perceptual_loss(
            feat, model.transfer_net(x, gb), cfg, content_feats=feat(x, ("relu3_3",)),
            style_targets=losses.StyleTargets.from_images(feat, s, cfg))
        return total[0]

    assert hist.shape == (1,)
    np.testing.assert_allclose(hist[0], float(loss(jnp.asarray(p[None]), jnp.asarray(style[None]),
                                                   jnp.asarray(e0)[None])), rtol=1e-4)


def test_fit_step_compiles_once_on_the_stylizers_sharded_state(st, photos):
    """The Stylizer's state is replicated over a mesh, so _fit_step returns NamedSharding
    arrays: the Adam state made outside jit (its ``count`` too) is placed the same way before
    step 1, and the 3 steps reuse one executable (it compiled twice with an unplaced state)."""
    sw = 0.4375  # a style weight (static argument) no other test uses: a fresh cache entry
    style = style_working_image(smooth_image(40, 40, 62).astype(np.float32) / 255, 32)
    work = np.stack([style_working_image(p.astype(np.float32) / 255, 32) for p in photos[:2]])
    e0 = np.asarray(st.model.embed(jnp.asarray(style[None])))
    before = fit_style._fit_step._cache_size()
    cond, _, hist = fit_style.fit_conditionings((st._graphdef, st._state), style[None], e0,
                                                lambda: work[None], steps=3, style_weight=sw,
                                                learning_rate=0.01)
    assert fit_style._fit_step._cache_size() - before == 1
    assert hist.shape == (4, 1) and np.all(np.isfinite(cond))
