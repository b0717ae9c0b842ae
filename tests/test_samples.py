"""Tests of arbitrary_nst.samples (built-in content photos and generated styles)."""
from __future__ import annotations

import itertools
import importlib.util

import numpy as np
import pytest

from arbitrary_nst import samples
from arbitrary_nst.errors import ConfigError, NSTError
from arbitrary_nst.images import list_images, load_image

CONTENT_SHAPES = {
    "astronaut": (512, 512, 3),
    "chelsea": (300, 451, 3),
    "coffee": (400, 600, 3),
    "rocket": (427, 640, 3),
    "motorcycle": (500, 741, 3),
}

try:
    samples.skimage_data_dir()
    HAVE_SKIMAGE_DATA = True
except NSTError:
    HAVE_SKIMAGE_DATA = False
needs_skimage = pytest.mark.skipif(
    not HAVE_SKIMAGE_DATA,
    reason=f"scikit-image data not installed ({samples.SKIMAGE_INSTALL_HINT})",
)


def _check(x: np.ndarray, shape: tuple[int, ...]) -> None:
    assert x.shape == shape
    assert x.dtype == np.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert x.std() > 0.05  # not flat


def test_names():
    assert set(CONTENT_SHAPES) == set(samples.CONTENT_NAMES)
    assert set(samples.GENERATED_STYLE_NAMES) <= set(samples.STYLE_NAMES)
    assert {"hubble", "ihc"} <= set(samples.STYLE_NAMES)
    assert len(set(samples.STYLE_NAMES)) == len(samples.STYLE_NAMES)


@needs_skimage
@pytest.mark.parametrize("name", sorted(CONTENT_SHAPES))
def test_content_images(name):
    x = samples.content_image(name)
    _check(x, CONTENT_SHAPES[name])
    small = samples.content_image(name, max_side=128)
    h, w, _ = CONTENT_SHAPES[name]
    assert max(small.shape[:2]) == 128
    assert abs(small.shape[0] / small.shape[1] - h / w) < 0.02


@pytest.mark.parametrize("name", samples.GENERATED_STYLE_NAMES)
def test_generated_styles_deterministic_any_size(name):
    a = samples.style_image(name, 96)
    _check(a, (96, 96, 3))
    samples._style_cached.cache_clear()  # regenerate from scratch, not from the cache
    b = samples.style_image(name, 96)
    np.testing.assert_array_equal(a, b)
    _check(samples.style_image(name, 50), (50, 50, 3))
    # returned arrays are private copies: mutating one does not change the next
    a[:] = 0
    assert samples.style_image(name, 96).std() > 0.05
    # painting-like, not noise: neighbouring pixels are mostly similar, colours are strong
    grad = np.abs(np.diff(b, axis=1)).mean()
    assert grad < 0.6 * np.abs(np.diff(samples.noise_image(96, 96, 0), axis=1)).mean()


@needs_skimage
@pytest.mark.parametrize("name", ["hubble", "ihc"])
def test_texture_styles(name):
    _check(samples.style_image(name, 128), (128, 128, 3))


def test_styles_differ_from_each_other():
    names = samples.GENERATED_STYLE_NAMES + (samples.STYLE_NAMES if HAVE_SKIMAGE_DATA else ())
    imgs = {n: samples.style_image(n, 64) for n in dict.fromkeys(names)}
    for a, b in itertools.combinations(imgs, 2):
        # different content and different colour statistics
        assert np.abs(imgs[a] - imgs[b]).mean() > 0.1, (a, b)
        assert np.abs(imgs[a].mean((0, 1)) - imgs[b].mean((0, 1))).max() > 0.03, (a, b)


def test_bad_names_and_sizes():
    with pytest.raises(ConfigError, match="unknown style sample"):
        samples.style_image("nope")
    with pytest.raises(ConfigError, match="unknown content sample"):
        samples.content_image("nope")
    with pytest.raises(ConfigError):
        samples.style_image("waves", 8)


def test_missing_skimage_gives_install_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a)
    )
    samples._style_cached.cache_clear()
    try:
        with pytest.raises(NSTError, match=r"pip install --no-deps scikit-image==0\.26\.0"):
            samples.content_image("astronaut")
        with pytest.raises(NSTError, match="scikit-image"):
            samples.style_image("hubble", 64)
        assert samples.style_image("strokes", 32).shape == (32, 32, 3)  # generated: no skimage
    finally:
        samples._style_cached.cache_clear()


@needs_skimage
def test_write_samples(tmp_path):
    paths = samples.write_samples(tmp_path / "demo", style_size=48, content_max_side=64)
    assert len(paths) == len(samples.CONTENT_NAMES) + len(samples.STYLE_NAMES)
    assert [p.stem for p in list_images(tmp_path / "demo" / "style")] == sorted(samples.STYLE_NAMES)
    assert len(list_images(tmp_path / "demo" / "content")) == len(samples.CONTENT_NAMES)
    assert load_image(tmp_path / "demo" / "style" / "mosaic.png").shape == (48, 48, 3)
    assert max(load_image(tmp_path / "demo" / "content" / "coffee.png").shape) == 64
    samples.write_samples(tmp_path / "demo", style_size=48, content_max_side=64)  # rerun is fine


def test_synthetic_images():
    n = samples.noise_image(7, 9, seed=3)
    _check(n, (7, 9, 3))
    np.testing.assert_array_equal(n, samples.noise_image(7, 9, seed=3))
    assert not np.array_equal(n, samples.noise_image(7, 9, seed=4))
    g = samples.gradient_image(5, 11)
    _check(g, (5, 11, 3))
    assert g[0, 0, 0] == 0.0 and g[0, -1, 0] == 1.0 and g[-1, 0, 1] == 1.0


def test_style_size_bounds_are_inclusive(monkeypatch):
    assert samples.style_image("waves", 16).shape == (16, 16, 3)  # the smallest size allowed
    # sizes are checked before rendering (a stub renderer: 4096 would be an 8192-px canvas)
    asked = []
    monkeypatch.setattr(samples, "_style_cached",
                        lambda name, size: asked.append((name, size)) or np.zeros((1, 1, 3)))
    for bad in (15, 4097):
        with pytest.raises(ConfigError, match=r"style size must be an integer in \[16, 4096\], got "):
            samples.style_image("waves", bad)
    samples.style_image("mosaic", 4096)
    assert asked == [("mosaic", 4096)]


@needs_skimage
def test_texture_style_is_centre_cropped_not_squashed():
    path = samples.skimage_data_dir() / "hubble_deep_field.jpg"
    photo = load_image(path)
    assert photo.shape[:2] == (872, 1000)  # not square: the crop matters
    h, w = photo.shape[:2]
    left = (w - h) // 2
    crop = photo[:, left:left + h]
    from arbitrary_nst.images import resize

    ref = resize(crop, (48, 48))
    np.testing.assert_allclose(samples.style_image("hubble", 48), ref, atol=1e-6)
    assert np.abs(resize(photo, (48, 48)) - ref).mean() > 0.005  # a squashed one differs


def test_missing_data_file_names_it_and_how_to_reinstall(monkeypatch, tmp_path):
    monkeypatch.setattr(samples, "skimage_data_dir", lambda: tmp_path)
    samples._style_cached.cache_clear()
    try:
        with pytest.raises(NSTError) as e:
            samples.content_image("chelsea")
        assert str(e.value) == (f"scikit-image data file chelsea.png is missing from {tmp_path}; "
                                f"reinstall with: {samples.SKIMAGE_INSTALL_HINT}")
        with pytest.raises(NSTError, match="ihc.png is missing"):
            samples.style_image("ihc", 32)
    finally:
        samples._style_cached.cache_clear()


@needs_skimage
def test_write_samples_without_overwrite_keeps_existing_files(tmp_path):
    from arbitrary_nst.errors import ImageError

    samples.write_samples(tmp_path, style_size=16, content_max_side=32)
    mine = tmp_path / "content" / "astronaut.png"
    mine.write_bytes(b"my own file")
    with pytest.raises(ImageError, match="exists"):
        samples.write_samples(tmp_path, style_size=16, content_max_side=32, overwrite=False)
    assert mine.read_bytes() == b"my own file"


def test_generated_styles_are_antialiased_and_clipped():
    """Rendered at 2x and downsampled with Lanczos: a 1-px checkerboard at 2x averages to grey
    (a nearest-neighbour downsample keeps pure black/white); canvases beyond 0..255 clip
    (not wrap around in the uint8 conversion)."""
    n = 16
    checker = (np.indices((2 * n, 2 * n)).sum(0) % 2 * 255).astype(np.uint8)
    out = samples._finish(np.repeat(checker[:, :, None], 3, 2), n)
    assert out.shape == (n, n, 3) and out.dtype == np.float32
    assert np.abs(out - 0.5).max() < 0.05
    canvas = np.zeros((2 * n, 2 * n, 3))
    canvas[:n] = 300.0   # top half over-exposed
    canvas[n:] = -20.0   # bottom half below 0
    out = samples._finish(canvas, 2 * n)
    assert np.all(out[:n] == 1.0) and np.all(out[n:] == 0.0)


def test_gradient_image_colours_as_documented():
    """Red grows to the right (0 -> 1 along every row), green downwards, blue along the
    anti-diagonal: 1 at the top left, 0 at the bottom right, 1/2 at the other two corners
    (checked against the formulas written out in float64)."""
    h, w = 5, 9
    g = samples.gradient_image(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = xx / (w - 1), yy / (h - 1)
    np.testing.assert_allclose(g[..., 0], x, atol=1e-6)
    np.testing.assert_allclose(g[..., 1], y, atol=1e-6)
    np.testing.assert_allclose(g[..., 2], 1.0 - 0.5 * (x + y), atol=1e-6)
    assert g[0, 0, 2] == 1.0 and g[-1, -1, 2] == 0.0
    assert g[0, -1, 2] == g[-1, 0, 2] == 0.5


@pytest.mark.parametrize("name", samples.GENERATED_STYLE_NAMES)
def test_generated_styles_have_the_same_composition_at_every_size(name):
    """"The same composition at every size": the style rendered at 48 px is close to the one
    rendered at 96 px and downsampled (much closer than another style is), not a different
    picture (a drawing in pixels, or a tile count that grows with the size)."""
    from arbitrary_nst.images import resize

    small = samples.style_image(name, 48).astype(np.float64)
    big = resize(samples.style_image(name, 96), (48, 48)).astype(np.float64)
    assert np.corrcoef(small.ravel(), big.ravel())[0, 1] > 0.75
    others = [resize(samples.style_image(o, 96), (48, 48)) for o in samples.GENERATED_STYLE_NAMES
              if o != name]
    assert np.abs(small - big).mean() < 0.6 * min(np.abs(small - o).mean() for o in others)


def test_sizes_are_checked_before_anything_is_written(tmp_path):
    """style_image("waves", 16.7) rendered at 16, "64" was taken; content max_side=0 was a
    ValueError; write_samples(style_size=8) wrote every photo before failing on the styles."""
    for bad in (16.7, "64", 8, 5000, None, True):
        with pytest.raises(ConfigError, match=r"style size must be an integer in \[16, 4096\]"):
            samples.style_image("waves", bad)
    assert samples.style_image("waves", 64.0).shape == (64, 64, 3)  # an integral float is fine
    for bad in (0, -3, 2.5):
        with pytest.raises(ConfigError, match="content max_side must be an integer"):
            samples.content_image("chelsea", max_side=bad)
    with pytest.raises(ConfigError, match="style size"):
        samples.write_samples(tmp_path / "s", style_size=8)
    with pytest.raises(ConfigError, match="content max_side"):
        samples.write_samples(tmp_path / "s", content_max_side=0)
    assert not (tmp_path / "s").exists()
