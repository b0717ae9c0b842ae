"""The six analysis figures, at 32 px and 2 iterations (a smoke test of every figure), plus the
numbers behind figures c and f."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from arbitrary_nst import analysis
from arbitrary_nst import images as images_lib
from arbitrary_nst import vgg as vgg_lib
from arbitrary_nst.errors import ConfigError, ImageError


def _img(h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([xx, yy, 0.5 + 0.4 * np.sin(9 * xx * yy + seed)], -1)
    return np.clip(base + 0.1 * rng.standard_normal((h, w, 3)), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def imgs():
    return _img(40, 40, 0), _img(48, 48, 1)


@pytest.fixture(scope="module")
def params(vgg_params):
    return jax.tree.map(jnp.asarray, vgg_params)


@pytest.fixture(scope="module")
def normalized(vgg_params):
    # any positive per-filter means give a valid normalized network (the real ones come from
    # the built-in images; tests/test_vgg.py covers that); fixed ones avoid a compile here
    rng = np.random.default_rng(0)
    means = {k: rng.uniform(0.5, 20.0, v["bias"].shape).astype(np.float32)
             for k, v in vgg_params.items()}
    return vgg_lib.normalize_weights(vgg_params, means)


def test_all_six_figures(tmp_path, params, normalized, imgs):
    content, style = imgs
    paths = analysis.make_figures(tmp_path, content=content, style=style, size=32, iters=1,
                                  vgg_params=params, normalized_params=normalized, verbose=False)
    assert [p.name for p in paths] == [analysis.FILENAMES[f] for f in analysis.FIGURES]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 150
    with pytest.raises(ImageError):  # no silent overwrite
        analysis.make_figures(tmp_path, content=content, style=style, size=32, iters=1,
                              figures=["c"], vgg_params=params, verbose=False)
    with pytest.raises(ConfigError):
        analysis.make_figures(tmp_path, figures=["x"], vgg_params=params)
    # a figure asked for twice is made once (the repeat failed on its own file, "exists")
    again = analysis.make_figures(tmp_path / "cc", content=content, style=style, size=32,
                                  iters=1, figures="c,c", vgg_params=params, verbose=False)
    assert [p.name for p in again] == [analysis.FILENAMES["c"]]
    with pytest.raises(ImageError, match="divide 0..255 data by 255"):  # checked, not clipped
        analysis.make_figures(tmp_path / "new", content=np.asarray(content, np.float32) * 255,
                              style=style, size=32, figures=["c"], vgg_params=params)


def _bands(fig) -> tuple[float, float]:
    """Inches between the figure's title and its highest panel, and under its lowest."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    r = canvas.get_renderer()
    boxes = [ax.get_tightbbox(r) for ax in fig.axes]
    top = fig._suptitle.get_window_extent(r).y0 - max(b.y1 for b in boxes)
    return top / fig.dpi, min(b.y0 for b in boxes) / fig.dpi


def test_gram_and_texture_figures_leave_no_empty_bands(params):
    """(c) had a fixed 2.6 in per row: a 1 in band under its title and 1.3 in under its last
    row for a square style, more for a wide one; (b) showed the style in a row of its own with
    an empty panel under it. Rows follow the style's shape (at most 3.2 in each)."""
    for shape in ((48, 48), (32, 96), (96, 32)):
        fig = analysis.fig_gram_matrices(params, None, _img(*shape, 1), batch=None, iters=0)
        top, bottom = _bands(fig)
        assert top < 0.3 and bottom < 0.3, (shape, top, bottom)
        assert fig.get_figheight() <= 5 * 3.2 + 0.5
    n = len(analysis.STYLE_LAYERS)
    jobs = [{"fig": "b", "image": _img(40, 60, i), "name": f"layer{i}"} for i in range(2 * n - 1)]
    fig = analysis.fig_style_reconstruction(params, _img(40, 60, 0), _img(48, 48, 1),
                                            batch=jobs, iters=1)
    assert len(fig.axes) == 1 + 2 * n  # (no empty panel)
    _bands(fig)  # (laid out)
    style_ax = next(ax for ax in fig.axes if ax.get_title() == "style")
    rows = sorted({round(ax.get_position().y0, 3) for ax in fig.axes if ax is not style_ax})
    assert len(rows) == 2
    lo, hi = style_ax.get_position().y0, style_ax.get_position().y1
    assert lo > rows[0] - 1e-3 and hi > rows[1]  # between the rows, spanning both


def test_jobs_cover_each_figure(imgs):
    content, _ = imgs
    jobs = analysis._jobs(content, analysis.FIGURES)
    count = {f: sum(j["fig"] == f for j in jobs) for f in "abde"}
    assert count == {"a": 5, "b": 9, "d": len(analysis.RATIOS), "e": 6}
    # (b) is texture synthesis: no content; (a) is content only
    assert all(j["over"]["content_weight"] == 0 for j in jobs if j["fig"] == "b")
    assert all(j["over"]["style_weight"] == 0 for j in jobs if j["fig"] == "a")
    styles = [j["over"]["style_weight"] for j in jobs if j["fig"] == "d"]
    assert styles == sorted(styles)  # alpha/beta decreasing


def test_gram_analysis_finds_correlated_pairs(params, imgs):
    _, style = imgs
    info = analysis.gram_analysis(params, style)
    for layer, d in info.items():
        c = vgg_lib.tap_channels(layer)
        assert d["gram"].shape == (c, c)
        assert np.allclose(d["gram"], d["gram"].T, rtol=1e-4, atol=1e-4)
        i, j = d["pair"]
        assert i != j and -1.0 <= d["corr"] <= 1.0 + 1e-5
        a, b = (m.ravel() - m.mean() for m in d["maps"])
        r = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
        assert abs(r - d["corr"]) < 1e-3


def test_layer_magnitudes(params, normalized, imgs):
    # the sizes make_figures(size=32) uses, so the compiled program of figure f is reused
    from arbitrary_nst import images

    content = images.resize_max_side(imgs[0], 32)
    style = images.resize_max_side(imgs[1], 64, upscale=True)
    std = analysis.layer_magnitudes(params, content, style)
    nrm = analysis.layer_magnitudes(normalized, content, style)
    for d in (std, nrm):
        assert list(d["content"]["layers"]) == list(analysis.CONTENT_RECON_LAYERS)
        assert list(d["style"]["layers"]) == list(analysis.STYLE_LAYERS)
        for kind in ("content", "style"):
            for key in ("loss", "grad_norm"):
                v = d[kind][key]
                assert v.shape == (5,) and np.all(np.isfinite(v)) and np.all(v > 0)
    # the normalized network divides every activation by a per-channel constant: other values
    assert not np.allclose(std["style"]["loss"], nrm["style"]["loss"], rtol=0.1)


def test_figures_are_written_where_there_are_no_hard_links(tmp_path, monkeypatch):
    """A FAT stick or SMB share has no hard links: the no-clobber move failed there after all
    the work ("error: D/.c_gram_matrices.png.rkq_ax6l.tmp: Operation not permitted")."""
    import errno
    import os

    from matplotlib.figure import Figure

    def no_links(src, dst, **kw):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    for write in (lambda p: analysis._save(Figure(figsize=(1, 1)), p, overwrite=False),
                  lambda p: images_lib.save_image(p, np.zeros((4, 4, 3)))):
        path = tmp_path / f"{len(os.listdir(tmp_path))}.png"
        write(path)
        assert Image.open(path).size[0] > 0 and os.listdir(tmp_path).count(path.name) == 1
        with pytest.raises(ImageError, match="exists"):
            write(path)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary left


# ------------------------------------------------------------------ checks, inputs, jobs


@pytest.fixture
def no_work(monkeypatch):
    """Any VGG or optimizer work fails the test: for checks that must come first."""
    from arbitrary_nst import gatys

    def fail(*a, **k):
        raise AssertionError("work started before the checks")

    monkeypatch.setattr(gatys, "load_params", fail)
    monkeypatch.setattr(gatys, "run", fail)
    monkeypatch.setattr(analysis, "default_images", fail)


def test_bad_requests_are_refused_before_any_work(tmp_path, imgs, no_work):
    content, style = imgs
    kw = dict(content=content, style=style, size=32, verbose=False)
    with pytest.raises(ConfigError) as e:
        analysis.make_figures(tmp_path / "o", figures="ax", **kw)  # letters: "a" and "x"
    assert str(e.value) == "unknown figures ['x']; choose from a, b, c, d, e, f"
    with pytest.raises(ConfigError) as e:
        analysis.make_figures(tmp_path / "o", **dict(kw, size=16))
    assert str(e.value) == "analysis size must be >= 32, got 16"
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(ImageError) as e:
        analysis.make_figures(a_file, **kw)
    assert str(e.value) == f"{a_file}: exists and is not a folder"
    out = tmp_path / "o"
    out.mkdir()
    old = out / analysis.FILENAMES["c"]
    old.write_bytes(b"mine")
    with pytest.raises(ImageError) as e:  # refused before the work, not after it
        analysis.make_figures(out, figures="bc", **kw)
    assert str(e.value) == f"{old}: exists; pass --overwrite to replace it"
    with pytest.raises(ImageError, match="would overwrite an input file"):  # even with overwrite
        analysis.make_figures(out, figures="c", overwrite=True, inputs=[str(old)], **kw)
    assert old.read_bytes() == b"mine"
    thin = np.full((4, 60, 3), 0.5, np.float32)  # 60 -> 32 wide, 2 px high
    with pytest.raises(ConfigError, match="content is too thin at 32 px"):
        analysis.make_figures(tmp_path / "t", content=thin, style=style, size=32, figures="c",
                              verbose=False)


def test_inputs_are_resized_as_documented(tmp_path, monkeypatch):
    """Content: longer side ``size`` (upscaled too); style: ``2 * size``; uint8 is 0..255; a
    missing content or style is the built-in default. (Figure c's maker is a stub here.)"""
    from matplotlib.figure import Figure

    seen = []

    def stub(params, content, style, *, batch, iters):
        seen.append((content, style))
        return Figure(figsize=(1, 1))

    monkeypatch.setattr(analysis, "fig_gram_matrices", stub)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (20, 20, 3)).astype(np.uint8)  # smaller than size: upscaled
    big_style = rng.random((120, 90, 3)).astype(np.float32)
    default = (rng.random((50, 40, 3)).astype(np.float32),
               rng.random((70, 70, 3)).astype(np.float32))
    monkeypatch.setattr(analysis, "default_images", lambda size=256: default)
    paths = analysis.make_figures(tmp_path / "1", content=small, style=big_style, size=40,
                                  figures="c", vgg_params={}, verbose=False)
    assert [p.name for p in paths] == ["c_gram_matrices.png"] and paths[0].is_file()
    c, s = seen[-1]
    np.testing.assert_allclose(
        c, images_lib.resize_max_side(small.astype(np.float32) / 255, 40, upscale=True), atol=1e-6)
    assert c.shape == (40, 40, 3) and c.dtype == np.float32
    np.testing.assert_array_equal(s, images_lib.resize_max_side(big_style, 80))
    assert s.shape == (80, 60, 3)
    # only one of them given: the other is the default
    analysis.make_figures(tmp_path / "2", content=small, size=40, figures="c", vgg_params={},
                          verbose=False)
    assert seen[-1][1].shape == (80, 80, 3)
    np.testing.assert_allclose(seen[-1][1],
                               images_lib.resize_max_side(default[1], 80, upscale=True), atol=1e-6)
    analysis.make_figures(tmp_path / "3", style=big_style, size=40, figures="c", vgg_params={},
                          verbose=False)
    np.testing.assert_allclose(seen[-1][0], images_lib.resize_max_side(default[0], 40), atol=1e-6)


def test_jobs_are_the_documented_optimizations(imgs):
    from arbitrary_nst import gatys

    content, _ = imgs
    d = gatys.GatysConfig()
    jobs = analysis._jobs(content, analysis.FIGURES)
    by = {f: [j for j in jobs if j["fig"] == f] for f in "abde"}
    noise0, noise1 = gatys.noise_image(content.shape, 0), gatys.noise_image(content.shape, 1)
    gram = {"gram_weight": 1.0, "centered_weight": 0.0}
    # (a): from noise, content only, one layer each, no TV
    assert [j["name"] for j in by["a"]] == list(analysis.CONTENT_RECON_LAYERS)
    for j in by["a"]:
        np.testing.assert_array_equal(j["init"], noise0)
        assert j["over"] == dict(tv_weight=0.0, content_weight=1.0, style_weight=0.0,
                                 content_layers={j["name"]: 1.0}, **gram)
    # (b): from (other) noise, style only: single layers, then layers 1..k
    L = analysis.STYLE_LAYERS
    want = [{x: 1.0} for x in L] + [{x: 1.0 for x in L[:k]} for k in range(2, len(L) + 1)]
    assert [j["over"]["style_layers"] for j in by["b"]] == want
    assert [j["name"] for j in by["b"]][5:] == [f"{L[0]}..{L[k - 1]}" for k in range(2, 6)]
    for j in by["b"]:
        np.testing.assert_array_equal(j["init"], noise1)
        assert j["over"]["tv_weight"] == 0.0 and j["over"]["content_weight"] == 0.0
        assert j["over"]["style_weight"] == 1.0
    # (d): alpha = content weight, beta = alpha / ratio; from the content
    assert [j["name"] for j in by["d"]] == list(analysis.RATIOS)
    for j in by["d"]:
        np.testing.assert_array_equal(j["init"], content)
        assert j["over"]["content_weight"] == d.content_weight
        assert j["over"]["content_weight"] / j["over"]["style_weight"] == pytest.approx(j["name"])
        assert j["over"]["tv_weight"] == d.tv_weight
    # (e): each statistic as transfer (from the content) and texture (from noise, no content)
    for j in by["e"]:
        stat, kind = j["name"]
        assert {k: j["over"][k] for k in gram} == analysis.STATISTIC_PARTS[stat]
        if kind == "texture":
            np.testing.assert_array_equal(j["init"], noise0)
            assert j["over"]["content_weight"] == 0.0
        else:
            np.testing.assert_array_equal(j["init"], content)
            assert j["over"]["content_weight"] == d.content_weight
        assert j["over"]["style_weight"] == d.style_weight
    assert [j["name"] for j in by["e"]] == [(s, k) for s in analysis.STATISTIC_PARTS
                                            for k in ("transfer", "texture")]


def test_main_batch_hands_each_job_its_own_result(imgs, monkeypatch):
    """One gatys.run for every job; job i gets image i and column i of the last stage's history
    (gatys.run is a stub returning labelled arrays)."""
    from arbitrary_nst import gatys

    content, style = imgs
    calls = []

    def fake_run(content_b, style_, *, config, progress, vgg_params, overrides, init_image):
        calls.append((content_b, overrides, init_image, config))
        b = len(overrides)
        hist = {"content/relu1_2": np.arange(3 * b, dtype=np.float32).reshape(3, b)}
        return gatys.GatysResult(images=np.arange(b, dtype=np.float32)[:, None, None, None]
                                 * np.ones((b, 2, 2, 3), np.float32),
                                 history=[{"content/relu1_2": -np.ones((3, b))}, hist],
                                 stages=[], evaluations=[], seconds=[], config=config)

    monkeypatch.setattr(gatys, "run", fake_run)
    jobs = analysis.main_batch({}, content, style, 7, ["a", "d"])
    assert len(calls) == 1 and len(jobs) == 5 + len(analysis.RATIOS)
    content_b, overrides, init, cfg = calls[0]
    assert content_b.shape == (len(jobs),) + content.shape
    assert overrides == [j["over"] for j in jobs]
    np.testing.assert_array_equal(init, np.stack([j["init"] for j in jobs]))
    assert cfg.iterations == 7 and cfg.style_statistic == "both"
    for i, j in enumerate(jobs):
        assert np.all(j["image"] == i)
        np.testing.assert_array_equal(j["history"]["content/relu1_2"], [i, len(jobs) + i,
                                                                        2 * len(jobs) + i])
    assert analysis.main_batch({}, content, style, 7, ["c", "f"]) == [] and len(calls) == 1


@pytest.mark.skipif(__import__("os").name != "posix", reason="POSIX file modes")
def test_figures_get_the_mode_open_would_give(tmp_path):
    import os
    import stat

    from matplotlib.figure import Figure

    old = os.umask(0o022)
    try:
        p = tmp_path / "new.png"
        analysis._save(Figure(figsize=(1, 1)), p, overwrite=False)
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644  # not mkstemp's 0600
        q = tmp_path / "old.png"
        q.write_bytes(b"old")
        q.chmod(0o640)
        analysis._save(Figure(figsize=(1, 1)), q, overwrite=True)
        assert stat.S_IMODE(os.stat(q).st_mode) == 0o640 and q.read_bytes()[:4] == b"\x89PNG"
    finally:
        os.umask(old)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["new.png", "old.png"]


def test_layer_magnitudes_match_a_float64_reference(params, imgs):
    """Per-layer content MSE and style MSE of C*H*W-normalized Grams at noise(seed 2), in float64
    from the VGG features, and pixel-gradient norms (jax.grad of the direct formula)."""
    from arbitrary_nst import gatys, images

    content = images.resize_max_side(imgs[0], 32)
    style = images.resize_max_side(imgs[1], 64, upscale=True)
    got = analysis.layer_magnitudes(params, content, style)
    x = gatys.noise_image(content.shape, 2)
    cl, sl = analysis.CONTENT_RECON_LAYERS, analysis.STYLE_LAYERS
    taps = tuple(dict.fromkeys(cl + sl))
    f64 = lambda img: {k: np.asarray(v[0], np.float64)  # noqa: E731
                       for k, v in vgg_lib.features(params, jnp.asarray(img)[None], taps).items()}
    fx, fc, fs = f64(x), f64(content), f64(style)

    def gram(f):
        m = f.reshape(-1, f.shape[-1])
        return m.T @ m / m.size

    np.testing.assert_allclose(got["content"]["loss"],
                               [np.mean((fx[k] - fc[k]) ** 2) for k in cl], rtol=2e-3)
    np.testing.assert_allclose(got["style"]["loss"],
                               [np.mean((gram(fx[k]) - gram(fs[k])) ** 2) for k in sl], rtol=2e-3)

    # gradient norms of the two shallowest terms (a short network: quick to compile)
    c0, s0 = cl[0], sl[0]
    fc0, gs0 = jnp.asarray(fc[c0], jnp.float32), jnp.asarray(gram(fs[s0]), jnp.float32)

    def content_term(img):
        return jnp.mean((vgg_lib.features(params, img[None], (c0,))[c0][0] - fc0) ** 2)

    def style_term(img):
        m = vgg_lib.features(params, img[None], (s0,))[s0][0].reshape(-1, gs0.shape[0])
        return jnp.mean((m.T @ m / m.size - gs0) ** 2)

    for kind, term in (("content", content_term), ("style", style_term)):
        g = np.asarray(jax.jit(jax.grad(term))(jnp.asarray(x)), np.float64)
        np.testing.assert_allclose(got[kind]["grad_norm"][0], np.linalg.norm(g), rtol=2e-3)


def test_gram_analysis_picks_the_most_correlated_active_pair(params):
    """The pair is, among the filters that respond on >= 10% of the inner image and whose inner
    mean energy is >= half of the whole map's, the most correlated one (float64 reference from
    the feature maps), on a painting and on grey with three small spots (filters that fire only
    there are "correlated" but cover < 10%)."""
    from arbitrary_nst import samples

    rng = np.random.default_rng(0)
    spots = np.full((64, 64, 3), 0.5, np.float32)
    for _ in range(3):
        i, j = rng.integers(16, 48, 2)
        spots[i:i + 3, j:j + 3] = rng.random(3)
    for style in (samples.style_image("strokes", 64), spots):
        _check_gram_analysis(params, style)


def _check_gram_analysis(params, style):
    info = analysis.gram_analysis(params, style)
    feats = vgg_lib.features(params, jnp.asarray(style)[None], analysis.STYLE_LAYERS)
    for layer, d in info.items():
        f = np.asarray(feats[layer][0], np.float64)
        h, w, c = f.shape
        bh, bw = max(1, h // 8), max(1, w // 8)
        inner = f[bh:h - bh, bw:w - bw] if h > 2 * bh and w > 2 * bw else f
        m = f.reshape(-1, c) - f.reshape(-1, c).mean(0)
        var = (m ** 2).mean(0)
        active = ((var > 1e-6 * var.max()) & (np.mean(inner > 0, axis=(0, 1)) >= 0.1)
                  & (np.mean(inner ** 2, axis=(0, 1)) >= 0.5 * np.mean(f ** 2, axis=(0, 1))))
        assert active.sum() >= 2, layer
        r = (m.T @ m / len(m)) / np.sqrt(np.outer(var, var) + 1e-300)
        r[~np.outer(active, active)] = -np.inf
        np.fill_diagonal(r, -np.inf)
        i, j = d["pair"]
        assert active[i] and active[j], (layer, i, j)
        assert r[i, j] >= r.max() - 1e-4, (layer, r[i, j], r.max())
        np.testing.assert_array_equal(d["maps"][0], f[..., i].astype(np.float32))


def test_gram_analysis_grams_are_normalized_by_c_h_w(params):
    """Figure c's matrices are G = F^T F / (C H W) of each style layer (float64 reference from
    the feature maps), as the docstring and the figure's title say: not / (H W), not centered."""
    from arbitrary_nst import samples

    style = samples.style_image("mosaic", 48)
    info = analysis.gram_analysis(params, style, layers=("relu1_2", "relu2_2"))
    feats = vgg_lib.features(params, jnp.asarray(style)[None], ("relu1_2", "relu2_2"))
    for layer, d in info.items():
        f = np.asarray(feats[layer][0], np.float64)
        m = f.reshape(-1, f.shape[-1])
        np.testing.assert_allclose(d["gram"], m.T @ m / m.size, rtol=1e-4,
                                   atol=1e-6 * np.abs(m.T @ m / m.size).max())



@pytest.mark.parametrize("shape", [(96, 40), (40, 96), (48, 48)])
def test_figure_titles_stay_above_the_panels_for_any_photo_shape(shape):
    """Figures (a), (b) and (e) had a fixed height: with a portrait photo the panels grew
    taller than it and figure (a)'s title was drawn over the panel titles."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    photo, style = _img(*shape, 0), _img(40, 56, 1)
    layers = ["relu1_2", "relu2_2", "relu3_2"]
    batch = [{"fig": "a", "name": n, "image": photo, "history": {f"content/{n}": [1.0]}}
             for n in layers]
    batch += [{"fig": "b", "name": n, "image": photo} for n in range(2 * 5 - 1)]
    batch += [{"fig": "e", "name": (stat, kind), "image": photo}
              for stat in analysis.STATISTIC_PARTS for kind in ("transfer", "texture")]
    for make in (analysis.fig_content_reconstruction, analysis.fig_style_reconstruction,
                 analysis.fig_style_statistics):
        fig = make(None, photo, style, batch=batch, iters=1)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        r = canvas.get_renderer()
        top = fig._suptitle.get_window_extent(r)
        for ax in fig.axes:
            if ax.get_title():
                t = ax.title.get_window_extent(r)
                assert t.y1 <= top.y0 + 1, (make.__name__, shape, ax.get_title())
            assert ax.get_window_extent(r).y1 <= top.y0 + 1, (make.__name__, shape)
