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
