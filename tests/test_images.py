"""Tests of arbitrary_nst.images; every input file is generated under tmp_path."""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arbitrary_nst import images
from arbitrary_nst.errors import ConfigError, ImageError
from arbitrary_nst.images import (
    center_crop,
    center_crop_square,
    crop_to,
    is_image_file,
    list_images,
    load_image,
    load_pil,
    pad_to_multiple,
    resize,
    resize_max_side,
    resize_short_side,
    short_side_center_square,
    save_image,
    to_float,
    to_uint8,
)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_jpeg(path: Path, h: int = 64, w: int = 96, **kw) -> Path:
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    Image.fromarray(a.astype(np.uint8)).save(path, "JPEG", quality=90, **kw)
    return path


def _check_float_rgb(x: np.ndarray, shape: tuple[int, int]) -> None:
    assert x.dtype == np.float32
    assert x.shape == (*shape, 3)
    assert x.min() >= 0.0 and x.max() <= 1.0


def _reason(exc: pytest.ExceptionInfo[ImageError]) -> str:
    s = str(exc.value)
    assert "\n" not in s
    return exc.value.reason


# ---------------------------------------------------------------------------------- modes


def test_rgb_png_roundtrip_exact(tmp_path):
    a = _rgb()
    Image.fromarray(a).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    _check_float_rgb(x, a.shape[:2])
    np.testing.assert_array_equal(to_uint8(x), a)


def test_grayscale_l(tmp_path):
    g = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(g).save(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png")
    _check_float_rgb(x, (16, 16))
    np.testing.assert_allclose(x[..., 0], g / 255.0, atol=1e-6)
    assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 1], x[..., 2])


def test_la_composited_on_white(tmp_path):
    la = np.zeros((8, 8, 2), np.uint8)
    la[..., 0] = 0  # black ...
    la[:, :4, 1] = 0  # ... fully transparent on the left -> white
    la[:, 4:, 1] = 255  # ... opaque on the right -> black
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    x = load_image(tmp_path / "la.png")
    np.testing.assert_allclose(x[:, :4], 1.0)
    np.testing.assert_allclose(x[:, 4:], 0.0)


def test_16bit_gray_scaled_not_clipped(tmp_path):
    g = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    im = Image.fromarray(g)
    assert im.mode == "I;16"
    im.save(tmp_path / "g16.png")
    x = load_image(tmp_path / "g16.png")
    _check_float_rgb(x, (4, 4))
    np.testing.assert_allclose(x[0, :, 0], g[0] / 65535.0, rtol=1e-6, atol=1e-7)
    assert 0.0 < x[0, 1, 0] < 0.02  # 1000/65535, not 1000 clipped to 255 -> 1.0
    # the 8-bit PIL view scales too
    p = np.asarray(load_pil(tmp_path / "g16.png"))
    assert p.dtype == np.uint8 and p.shape == (4, 4, 3)
    assert list(p[0, :, 0]) == [0, 4, 128, 255]


def test_mode_i_and_f_from_pil():
    i = Image.fromarray(np.full((2, 2), 65535, np.int32))
    assert i.mode == "I"
    np.testing.assert_allclose(to_float(i), 1.0)
    f = Image.fromarray(np.full((2, 2), 0.25, np.float32))
    assert f.mode == "F"
    np.testing.assert_allclose(to_float(f), 0.25)


def test_mode_i_holding_8bit_values_is_not_read_as_16bit(tmp_path):
    # an "I" image no file declares 16-bit (an int array, a 32-bit integer TIFF) with values in
    # 0..255 is 8-bit data: it was divided by 65535 and came out near black
    g = np.array([[0, 64, 128, 255]], np.int32).repeat(3, axis=0)
    np.testing.assert_allclose(to_float(Image.fromarray(g))[..., 0], g / 255.0, atol=1e-6)
    Image.fromarray(g).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    np.testing.assert_allclose(load_image(tmp_path / "i32.tif")[..., 0], g / 255.0, atol=1e-6)
    assert np.asarray(load_pil(tmp_path / "i32.tif"))[0, :, 0].tolist() == [0, 64, 128, 255]
    # a 16-bit PGM (Pillow 13: mode "I") declares 16 bits: dark values stay dark
    Image.fromarray(np.array([[0, 100, 200, 1000]], np.uint16)).save(tmp_path / "g16.pgm")
    assert Image.open(tmp_path / "g16.pgm").mode in ("I", "I;16", "I;16B")
    np.testing.assert_allclose(load_image(tmp_path / "g16.pgm")[0, :, 0],
                               np.array([0, 100, 200, 1000]) / 65535.0, atol=1e-6)
    Image.fromarray(np.array([[0, 100, 200, 255]], np.uint16)).save(tmp_path / "d16.pgm")
    np.testing.assert_allclose(load_image(tmp_path / "d16.pgm")[0, :, 0],
                               np.array([0, 100, 200, 255]) / 65535.0, atol=1e-6)


def test_16bit_tiff(tmp_path):
    g = np.full((3, 5), 65535 // 4, dtype=np.uint16)
    Image.fromarray(g).save(tmp_path / "g.tif")
    np.testing.assert_allclose(load_image(tmp_path / "g.tif"), 0.25, atol=1e-4)


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255  # red
    a[0, :, 3] = 0  # transparent row -> white
    a[1, :, 3] = 255  # opaque row -> red
    a[2, :, 3] = 128  # half -> pink
    Image.fromarray(a, mode="RGBA").save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    np.testing.assert_allclose(x[0], 1.0)
    np.testing.assert_allclose(x[1], [[1.0, 0.0, 0.0]] * 4)
    np.testing.assert_allclose(x[2, 0], [1.0, 127 / 255, 127 / 255], atol=2 / 255)


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (6, 4), 0)
    p.putpalette([0, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    p.paste(1, (3, 0, 6, 4))  # right half: palette index 1 = blue
    p.save(tmp_path / "p.png", transparency=0)  # index 0 (left half, black) is transparent
    x = load_image(tmp_path / "p.png")
    _check_float_rgb(x, (4, 6))
    np.testing.assert_allclose(x[:, :3], 1.0)  # white, not black
    np.testing.assert_allclose(x[:, 3:], [[[0.0, 0.0, 1.0]] * 3] * 4)


def test_palette_and_gif(tmp_path):
    a = _rgb(10, 12)
    Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.gif")
    x = load_image(tmp_path / "p.gif")
    _check_float_rgb(x, (10, 12))


def test_cmyk(tmp_path):
    c = Image.new("CMYK", (5, 3), (0, 255, 255, 0))  # red in CMYK
    c.save(tmp_path / "c.jpg", quality=100)
    c.save(tmp_path / "c.tif")
    for name in ("c.jpg", "c.tif"):
        x = load_image(tmp_path / name)
        _check_float_rgb(x, (3, 5))
        np.testing.assert_allclose(x[1, 2], [1.0, 0.0, 0.0], atol=0.05)


def test_icc_profiles(tmp_path):
    from PIL import ImageCms

    a = _rgb(6, 8)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(a).save(tmp_path / "srgb.png", icc_profile=srgb)
    Image.fromarray(a).save(tmp_path / "broken.png", icc_profile=b"not a profile")
    for name in ("srgb.png", "broken.png"):  # sRGB: unchanged; broken profile: ignored
        np.testing.assert_array_equal(to_uint8(load_image(tmp_path / name)), a)


def test_one_bit(tmp_path):
    b = np.zeros((4, 8), bool)
    b[:, 4:] = True
    Image.fromarray(b).convert("1").save(tmp_path / "b.png")
    x = load_image(tmp_path / "b.png")
    assert set(np.unique(x)) == {0.0, 1.0}
    np.testing.assert_array_equal(x[:, 4:], 1.0)
    np.testing.assert_array_equal(x[:, :4], 0.0)


def test_exif_orientation_rotates(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    path = _write_jpeg(tmp_path / "rot.jpg", h=40, w=100, exif=exif.tobytes())
    with Image.open(path) as im:
        assert im.size == (100, 40)
    x = load_image(path)
    assert x.shape == (100, 40, 3)
    assert load_pil(path).size == (40, 100)
    # the stored top-left corner (dark red/green ramp start) ends up top-right
    plain = load_image(_write_jpeg(tmp_path / "plain.jpg", h=40, w=100))
    np.testing.assert_allclose(x[0, -1], plain[0, 0], atol=0.05)


def test_max_side_downscales_keeping_aspect(tmp_path):
    path = _write_jpeg(tmp_path / "big.jpg", h=300, w=800)
    x = load_image(path, max_side=200)
    assert x.shape == (75, 200, 3)
    assert load_image(path, max_side=1000).shape == (300, 800, 3)  # never upscales
    g = np.full((30, 90), 40000, np.uint16)
    Image.fromarray(g).save(tmp_path / "g16.png")
    y = load_image(tmp_path / "g16.png", max_side=45)
    assert y.shape == (15, 45, 3)
    np.testing.assert_allclose(y, 40000 / 65535, atol=1e-4)


# --------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "nope.png")
    assert _reason(e) == "no such file"
    assert str(e.value) == f"{tmp_path / 'nope.png'}: no such file"


def test_directory(tmp_path):
    with pytest.raises(ImageError) as e:
        load_image(tmp_path)
    assert _reason(e) == "is a directory, expected an image file"


def test_zero_byte(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "empty.png")
    assert _reason(e) == "empty file (0 bytes)"


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("hello, I am not a JPEG\n")
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "notes.jpg")
    assert _reason(e) == "not an image (cannot identify format)"


def test_eps_is_refused(tmp_path):
    # Pillow would render EPS by running Ghostscript on it: never for untrusted input.
    (tmp_path / "a.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "a.eps")
    assert _reason(e) == "not an image (cannot identify format)"


def test_truncated_jpeg(tmp_path):
    data = _write_jpeg(tmp_path / "full.jpg", h=128, w=128).read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "half.jpg")
    assert _reason(e).startswith("truncated or corrupt image data: ")


def test_truncated_png(tmp_path):
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "half.png")
    assert _reason(e).startswith("truncated or corrupt image data: ")


def test_png_cut_inside_header(tmp_path):
    Image.fromarray(_rgb(16, 16)).save(tmp_path / "ok.png")
    for n in (12, 20, 40):
        (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:n])
        with pytest.raises(ImageError) as e:
            load_image(tmp_path / "cut.png")
        assert _reason(e).startswith("truncated"), n


def test_corrupt_png_crc(tmp_path):
    Image.fromarray(_rgb(16, 16)).save(tmp_path / "ok.png")
    data = bytearray((tmp_path / "ok.png").read_bytes())
    i = data.index(b"IDAT") + 10
    data[i] ^= 0xFF  # flip bits inside the compressed data -> CRC mismatch
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "bad.png")
    assert _reason(e).startswith("truncated or corrupt image data: ")


def test_too_large_checked_before_decoding(tmp_path, monkeypatch):
    path = _write_jpeg(tmp_path / "a.jpg", h=50, w=60)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    with pytest.raises(ImageError) as e:
        load_image(path, max_pixels=2999)
    assert _reason(e) == "too large: 60 x 50 = 3000 pixels > limit 2999; pass a larger max_pixels (--max-pixels)"
    assert not decoded


def test_pillow_bomb_error_becomes_image_error(tmp_path, monkeypatch):
    path = _write_jpeg(tmp_path / "a.jpg", h=50, w=60)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 3000 px > 2 * 1000: Pillow raises
    with pytest.raises(ImageError) as e:
        load_image(path, max_pixels=None)
    assert _reason(e).startswith("too large: 3000 pixels")
    # an explicit, larger max_pixels wins over Pillow's global default, which is restored
    assert load_image(path, max_pixels=5000).shape == (50, 60, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_pillow_bomb_warning_is_not_leaked(tmp_path, monkeypatch, recwarn):
    path = _write_jpeg(tmp_path / "a.jpg", h=50, w=60)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 3000 px: Pillow would warn
    with pytest.raises(ImageError):
        load_image(path, max_pixels=2000)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


@pytest.mark.skipif(IS_ROOT or os.name != "posix", reason="root ignores file permissions")
def test_permission_denied(tmp_path):
    path = _write_jpeg(tmp_path / "secret.jpg")
    path.chmod(0)
    try:
        with pytest.raises(ImageError) as e:
            load_image(path)
        assert _reason(e) == "permission denied"
    finally:
        path.chmod(0o644)


def test_permission_denied_simulated(tmp_path, monkeypatch):
    path = _write_jpeg(tmp_path / "secret.jpg")

    def deny(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(images, "open", deny, raising=False)  # the module's builtin open()
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert _reason(e) == "permission denied"


def test_path_under_a_file(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ImageError):
        load_image(tmp_path / "file" / "a.png")


# ---------------------------------------------------------------------------- conversions


def test_to_float_and_to_uint8():
    a = _rgb(5, 7)
    f = to_float(a)
    assert f.dtype == np.float32 and f.shape == (5, 7, 3)
    np.testing.assert_array_equal(to_uint8(f), a)
    np.testing.assert_array_equal(to_float(Image.fromarray(a)), f)
    assert to_float(a[..., 0]).shape == (5, 7, 3)  # HW gray -> RGB
    assert to_float(a[..., :1]).shape == (5, 7, 3)
    np.testing.assert_array_equal(to_float(np.full((2, 2), 65535, np.uint16)), 1.0)
    # rounding and clipping
    v = np.array([-0.5, 0.0, 0.499 / 255, 0.501 / 255, 1.0, 3.0, np.nan], np.float32)
    assert list(to_uint8(v)) == [0, 0, 0, 1, 255, 255, 0]
    np.testing.assert_array_equal(to_float(np.array([[2.0, -1.0]])), [[[1.0] * 3, [0.0] * 3]])
    # RGBA arrays composite on white
    rgba = np.zeros((1, 1, 4), np.float32)
    np.testing.assert_array_equal(to_float(rgba), 1.0)
    with pytest.raises(ValueError):
        to_float(np.zeros((2, 2, 5), np.float32))


# ---------------------------------------------------------------------------- resize/crop


def test_resize_helpers_keep_aspect_and_range():
    x = to_float(_rgb(30, 80))
    y = resize(x, (15, 40))
    assert y.shape == (15, 40, 3) and y.dtype == np.float32
    assert 0.0 <= y.min() and y.max() <= 1.0  # Lanczos overshoot is clipped
    assert resize_max_side(x, 40).shape == (15, 40, 3)
    assert resize_max_side(x, 160).shape == (30, 80, 3)
    assert resize_max_side(x, 160, upscale=True).shape == (60, 160, 3)
    assert resize_short_side(x, 15).shape == (15, 40, 3)
    assert resize_short_side(x, 60).shape == (60, 160, 3)
    assert resize_short_side(np.zeros((80, 30, 3), np.float32), 15).shape == (40, 15, 3)
    assert resize(x[..., 0], (10, 20)).shape == (10, 20)
    assert resize(np.stack([x, x]), (10, 20)).shape == (2, 10, 20, 3)
    with pytest.raises(TypeError):
        resize(_rgb(), (4, 4))  # uint8 must go through to_float first
    # a constant image stays constant (exact float resampling, no 8-bit quantisation)
    flat = np.full((9, 13, 3), 0.3, np.float32)
    np.testing.assert_allclose(resize(flat, (4, 31)), 0.3, atol=1e-6)


def test_resize_helpers_round_the_other_side_to_nearest():
    """The side that is scaled by a fraction is rounded to the nearest integer, not truncated
    (49.5 -> 50, 99.5 -> 100; truncation gave 49 x 50 and 50 x 99 images), in both
    orientations."""
    assert resize_max_side(np.zeros((99, 100, 3), np.float32), 50).shape == (50, 50, 3)
    assert resize_max_side(np.zeros((100, 99, 3), np.float32), 50).shape == (50, 50, 3)
    assert resize_max_side(np.zeros((33, 100), np.float32), 20).shape == (7, 20)  # 6.6 -> 7
    assert resize_short_side(np.zeros((100, 199, 3), np.float32), 50).shape == (50, 100, 3)
    assert resize_short_side(np.zeros((199, 100, 3), np.float32), 50).shape == (100, 50, 3)


def test_center_crops():
    x = np.arange(5 * 8).reshape(5, 8)
    np.testing.assert_array_equal(center_crop(x, (3, 4)), x[1:4, 2:6])
    assert center_crop_square(np.zeros((5, 8, 3))).shape == (5, 5, 3)
    assert center_crop_square(np.zeros((9, 4))).shape == (4, 4)
    with pytest.raises(ValueError):
        center_crop(x, (6, 2))


@pytest.mark.parametrize("mode", ["reflect", "symmetric", "edge", "constant"])
@pytest.mark.parametrize("shape", [(5, 7, 3), (1, 9, 3), (2, 3, 5, 3), (13, 1), (3, 2, 2, 1)])
def test_pad_crop_roundtrip_exact(shape, mode):
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    padded, hw = pad_to_multiple(x, 8, mode=mode)
    sp = (0, 1) if x.ndim < 4 else (1, 2)
    assert hw == (shape[sp[0]], shape[sp[1]])
    assert padded.shape[sp[0]] % 8 == 0 and padded.shape[sp[1]] % 8 == 0
    if x.ndim >= 3:  # channels (and batch) untouched
        assert padded.shape[-1] == shape[-1]
    if x.ndim == 4:
        assert padded.shape[0] == shape[0]
    back = crop_to(padded, hw)
    assert back.shape == x.shape and back.dtype == x.dtype
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("shape,size", [((8, 4, 3), (8, 6)), ((6, 8, 3), (7, 8)),
                                        ((2, 8, 4, 3), (8, 6)), ((2, 6, 8, 3), (7, 8)),
                                        ((5, 4), (5, 5))])
def test_crop_to_refuses_a_size_larger_than_the_image(shape, size):
    """crop_to must refuse to "crop" more rows or columns than there are (slicing would
    silently return the smaller array)."""
    with pytest.raises(ValueError, match="cannot crop"):
        crop_to(np.zeros(shape, np.float32), size)


def test_pad_reflect_values_and_noop():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    p, hw = pad_to_multiple(x, 4)
    # width 3 -> 4 reflect; height 2 -> 4 needs 2 > 1 rows: falls back to symmetric
    np.testing.assert_array_equal(p[0], [0, 1, 2, 1])
    np.testing.assert_array_equal(p[:, 0], [0, 3, 3, 0])
    q, hw = pad_to_multiple(np.ones((8, 16, 3)), 8)
    assert q.shape == (8, 16, 3) and hw == (8, 16)
    with pytest.raises(ValueError):
        pad_to_multiple(x, 0)


def test_pad_crop_jax():
    jnp = pytest.importorskip("jax.numpy")
    x = jnp.asarray(np.random.default_rng(1).random((2, 7, 9, 3), dtype=np.float32))
    p, hw = pad_to_multiple(x, 4)
    assert type(p).__module__.startswith("jax")
    assert p.shape == (2, 8, 12, 3) and hw == (7, 9)
    np.testing.assert_array_equal(np.asarray(crop_to(p, hw)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(p), pad_to_multiple(np.asarray(x), 4)[0])


# ----------------------------------------------------------------------------------- save


def _tmp_leftovers(d: Path) -> list[str]:
    return [n for n in os.listdir(d) if n.endswith(".tmp")]


@pytest.mark.parametrize("ext", [".png", ".jpg", ".jpeg", ".webp", ".PNG", ".bmp", ".tif"])
def test_save_formats_roundtrip(tmp_path, ext):
    x = to_float(_rgb(20, 30))
    out = save_image(tmp_path / f"out{ext}", x)
    assert out == tmp_path / f"out{ext}" and out.is_file()
    y = load_image(out)
    assert y.shape == x.shape
    tol = 0.0 if ext.lower() in (".png", ".bmp", ".tif") else 0.25
    assert np.abs(y - x).mean() <= tol + 1e-7
    assert not _tmp_leftovers(tmp_path)
    if ext == ".tif":  # lossless and compressed (uncompressed was 3x the PNG)
        assert Image.open(out).info.get("compression") == "tiff_adobe_deflate"


def test_save_accepts_pil_uint8_gray_rgba_and_batch_of_one(tmp_path):
    save_image(tmp_path / "pil.png", Image.fromarray(_rgb()))
    save_image(tmp_path / "u8.jpg", _rgb())
    save_image(tmp_path / "gray.png", np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4))
    save_image(tmp_path / "batch.png", to_float(_rgb())[None])
    rgba = np.zeros((4, 4, 4), np.float32)  # fully transparent
    save_image(tmp_path / "rgba.jpg", rgba)  # JPEG has no alpha: composited on white
    np.testing.assert_allclose(load_image(tmp_path / "rgba.jpg"), 1.0, atol=0.02)
    with Image.open(tmp_path / "gray.png") as im:
        assert im.mode == "L"


def test_save_file_mode_is_not_0600(tmp_path):
    out = save_image(tmp_path / "a.png", _rgb())
    if os.name == "posix":
        assert out.stat().st_mode & 0o044  # group/other readable under the usual umask


def test_save_refuses_overwrite(tmp_path):
    p = save_image(tmp_path / "a.png", _rgb(seed=1))
    before = p.read_bytes()
    with pytest.raises(ImageError) as e:
        save_image(p, _rgb(seed=2))
    assert _reason(e) == "exists; pass overwrite=True (or --overwrite)"
    assert p.read_bytes() == before
    save_image(p, _rgb(seed=2), overwrite=True)
    np.testing.assert_array_equal(to_uint8(load_image(p)), _rgb(seed=2))
    assert not _tmp_leftovers(tmp_path)


def test_save_creates_parents(tmp_path):
    p = save_image(tmp_path / "a" / "b" / "c.jpg", _rgb())
    assert p.is_file()


def test_save_failure_midway_keeps_old_file(tmp_path, monkeypatch):
    p = save_image(tmp_path / "a.png", _rgb(seed=1))
    before = p.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"partial garbage")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(ImageError) as e:
        save_image(p, _rgb(seed=2), overwrite=True)
    assert _reason(e) == "cannot write: no space left on device"
    assert p.read_bytes() == before
    assert not _tmp_leftovers(tmp_path)
    with pytest.raises(ImageError):
        save_image(tmp_path / "new.png", _rgb())
    assert not (tmp_path / "new.png").exists()
    assert not _tmp_leftovers(tmp_path)


def test_save_unknown_extension_and_bad_quality(tmp_path):
    with pytest.raises(ImageError) as e:
        save_image(tmp_path / "a.gifx", _rgb())
    assert "unsupported output format ('.gifx')" in _reason(e)
    with pytest.raises(ImageError):
        save_image(tmp_path / "noext", _rgb())
    with pytest.raises(ConfigError):
        save_image(tmp_path / "a.jpg", _rgb(), quality=0)
    with pytest.raises(ImageError) as e:
        save_image(tmp_path, _rgb())
    assert os.listdir(tmp_path) == []
    # wider than the format holds: one line naming the limit (libjpeg printed a stray line and
    # "broken data stream"); PNG takes it
    wide = np.zeros((2, 16384, 3), np.uint8)
    with pytest.raises(ImageError) as e:
        save_image(tmp_path / "w.webp", wide)
    assert _reason(e) == ("16384x2 is too large for WEBP (at most 16383 px per side): save as "
                          ".png or .tif, or a smaller --max-size")
    with pytest.raises(ImageError, match="too large for JPEG"):
        save_image(tmp_path / "w.jpg", np.zeros((65501, 1, 3), np.uint8))
    assert os.listdir(tmp_path) == []
    save_image(tmp_path / "w.png", wide)
    save_image(tmp_path / "ok.webp", wide[:, :16383])


def test_save_parent_is_a_file(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ImageError) as e:
        save_image(tmp_path / "file" / "out.png", _rgb())
    assert _reason(e).startswith("cannot write: ")


@pytest.mark.skipif(IS_ROOT or os.name != "posix", reason="root ignores file permissions")
def test_save_read_only_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ImageError) as e:
            save_image(ro / "out.png", _rgb())
        assert _reason(e) == "cannot write: permission denied"
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


def test_save_read_only_dir_simulated(tmp_path, monkeypatch):
    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images.tempfile, "mkstemp", deny)
    with pytest.raises(ImageError) as e:
        save_image(tmp_path / "out.png", _rgb())
    assert _reason(e) == "cannot write: permission denied"
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ listing


def test_is_image_file():
    assert is_image_file("a.JPG") and is_image_file(Path("x/b.tiff")) and is_image_file("c.webp")
    assert not is_image_file("notes.txt") and not is_image_file("jpg")
    # every format the loader reads (not only JPEG/PNG/WebP/TIFF/BMP/GIF), and the images it
    # does not read (listed, so that a batch reports them): HEIC, camera raws
    for name in ("a.ppm", "b.TGA", "c.jp2", "d.qoi", "e.psd", "f.heic", "g.NEF", "h.dng"):
        assert is_image_file(name), name
    # not still images, or never opened: PDF, EPS/PS, MPEG, HDF5, data and text files
    for name in ("a.pdf", "b.eps", "c.ps", "d.mpg", "e.h5", "f.json", "g.npz", "h.md"):
        assert not is_image_file(name), name


def _tiny_image_bytes(fmt: str) -> bytes | None:
    """A small image in Pillow format ``fmt`` (None: this Pillow cannot write it)."""
    a = _rgb(16, 16)
    for im in (Image.fromarray(a), Image.fromarray(a).convert("L")):
        b = io.BytesIO()
        try:
            with warnings.catch_warnings():  # (Pillow 12+: "IM image format is deprecated")
                warnings.simplefilter("ignore", DeprecationWarning)
                im.save(b, format=fmt)
        except Exception:  # noqa: BLE001 - wrong mode for this format, or no writer
            continue
        return b.getvalue()
    return None


def test_image_extensions_are_every_still_format_the_loader_reads(tmp_path):
    """IMAGE_EXTENSIONS (what folder scans and globs list) was a fixed JPEG/PNG/WebP/TIFF/BMP/
    GIF list, while load_image reads every format Pillow does: a folder of .ppm/.jp2/.tga/.avif
    photos was stylized as empty. Now it is every extension Pillow registers for a format it
    decodes here; each one that Pillow can also write is checked to load."""
    ext = images.IMAGE_EXTENSIONS
    assert {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".gif",
            ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k", ".qoi", ".psd", ".ico",
            ".pcx", ".sgi", ".dds", ".mpo", ".apng"} <= ext
    if ".webp" in Image.registered_extensions():  # (only with WebP / AVIF support built in)
        assert ".webp" in ext
    if ".avif" in Image.registered_extensions():
        assert ".avif" in ext
    # never opened (EPS: Ghostscript), not decodable (MPEG, stubs), write-only (PDF, PALM)
    assert not ext & {".eps", ".ps", ".mpg", ".mpeg", ".h5", ".hdf", ".grib", ".bufr", ".wmf",
                      ".emf", ".pdf", ".palm"}
    assert all(e == e.lower() and e.startswith(".") for e in ext)
    registered = Image.registered_extensions()
    checked = 0
    for e in sorted(ext):
        data = _tiny_image_bytes(registered[e]) if registered.get(e) in Image.SAVE else None
        if data is None:
            continue
        (tmp_path / f"t{e}").write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            x = load_image(tmp_path / f"t{e}")
        assert x.ndim == 3 and x.shape[2] == 3, e
        checked += 1
    assert checked >= 30
    # the accepted extensions in a message: the usual ones named, the others counted
    text = images.describe_image_extensions()
    assert text.startswith("jpg, jpeg, png, ") and text.endswith(" more") and len(text) < 100


def test_folder_and_glob_list_every_format_the_loader_reads(tmp_path):
    """A folder with a.avif b.ppm c.jp2 d.jpg e.tga f.heic was stylized as d.jpg alone ("done
    1, skipped 0"), and 'FOLDER/*.avif' matched nothing, though --content FOLDER/a.avif
    worked. The formats the loader reads are listed; HEIC (not readable without pillow-heif)
    and camera raws are listed too, so that a batch reports them as skipped with a reason
    instead of leaving them out without a word; other files stay ignored."""
    d = tmp_path / "photos"
    d.mkdir()
    readable = {"b.ppm": "PPM", "c.jp2": "JPEG2000", "d.jpg": "JPEG", "e.tga": "TGA"}
    if ".avif" in images.IMAGE_EXTENSIONS:
        readable["a.avif"] = "AVIF"
    for name, fmt in readable.items():
        Image.fromarray(_rgb(16, 16)).save(d / name, format=fmt)
    for name in ("f.heic", "g.NEF", "h.cr2", "notes.txt", "run.json", "feats.npz", "doc.pdf"):
        (d / name).write_bytes(b"not really")
    listed = sorted(readable) + ["f.heic", "g.NEF", "h.cr2"]
    assert [p.name for p in list_images(d)] == listed
    assert [p.name for p in list_images(str(d / "*"))] == listed
    assert [p.name for p in list_images(str(tmp_path / "**" / "*"))] == listed
    for name in readable:
        assert [p.name for p in list_images(str(d / ("*" + Path(name).suffix)))] == [name]
        assert load_image(d / name).shape == (16, 16, 3)  # (what the loader reads: listed)
    if ".heic" not in images.IMAGE_EXTENSIONS:  # (pillow-heif not installed)
        with pytest.raises(ImageError) as e:
            load_image(d / "f.heic")
        assert _reason(e) == "HEIC is not readable here (pip install pillow-heif)"
    # a camera raw: refused even where Pillow would open it (as a TIFF: its small preview)
    Image.fromarray(_rgb(16, 16)).save(d / "g.NEF", format="TIFF")
    with pytest.raises(ImageError) as e:
        load_image(d / "g.NEF")
    assert _reason(e).startswith("NEF camera raw files are not read here")


def test_list_images_dir_glob_file(tmp_path):
    for n in ["b.png", "a.JPG", "c.webp", ".hidden.png", "notes.txt", "sub/d.png", "sub/e.bmp"]:
        (tmp_path / n).parent.mkdir(exist_ok=True)
        (tmp_path / n).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.webp"]
    rec = list_images(tmp_path, recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in rec] == [
        "a.JPG", "b.png", "c.webp", "sub/d.png", "sub/e.bmp"]
    assert [p.name for p in list_images(str(tmp_path / "*.png"))] == ["b.png"]
    assert [p.name for p in list_images(str(tmp_path / "**" / "*.png"))] == ["b.png", "d.png"]
    assert list_images(tmp_path / "notes.txt") == [tmp_path / "notes.txt"]  # explicit file


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name != "posix", reason="POSIX symlinks")
def test_list_images_recursive_reads_each_real_folder_once(tmp_path):
    """Symlinked folders are followed, but a link back up the tree (a loop) or a second link to
    a folder already listed adds nothing: each image once (it was once per level until ELOOP)."""
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "a" / "x.png").write_bytes(b"x")
    (tmp_path / "a" / "sub" / "y.png").write_bytes(b"x")
    os.symlink(tmp_path / "a", tmp_path / "a" / "sub" / "loop")
    os.symlink(tmp_path / "a" / "sub", tmp_path / "a" / "zz_again")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "z.png").write_bytes(b"x")
    os.symlink(tmp_path / "other", tmp_path / "a" / "linked")
    rec = list_images(tmp_path / "a", recursive=True)
    assert [p.relative_to(tmp_path / "a").as_posix() for p in rec] == [
        "linked/z.png", "sub/y.png", "x.png"]


@pytest.mark.parametrize("pattern", [
    "**/*.png", "**", "sub/**/*.png", "**/d?.png", "**/[ab]*", "**/[!a]*.png", "s[0-9]/**/*.png",
    "**/*[]]*.png", "**/[[]x].png", "s[!2]/**/*", "x-y/**/*.png", "**/[a-c]*", "sub/**",
    "**/deep/*", "nomatch/**/*.png", "**/*.jp?"])
@pytest.mark.parametrize("absolute", [False, True])
def test_recursive_glob_patterns_match_as_glob_does(tmp_path, monkeypatch, pattern, absolute):
    """``**`` patterns go through the loop-safe listing; on a tree without links they must
    match exactly what :mod:`glob` matches (brackets, negation, ranges, a literal ``]``)."""
    import glob

    for f in ("a.png", "b1.jpg", "sub/c.png", "sub/deep/d2.png", "sub/deep/[x].png", "s2/e.png",
              "s2/a]b.png", "s!/f.png", "x-y/g.png", ".h/i.png", "sub/.j.png"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    q = str(tmp_path / pattern) if absolute else pattern
    keep = lambda ms: sorted(m for m in ms if os.path.isfile(m) and is_image_file(m)  # noqa: E731
                             and not os.path.basename(m).startswith("."))
    assert keep(images._glob_files(q)) == keep(glob.glob(q, recursive=True))


@pytest.mark.parametrize("pattern", [
    "*.png", "*", "sub/*.png", "*/*.png", "*/deep/*", "s?/*.png", "[ab]*", "[!a]*.png",
    "s[0-9]/*", "*/*[]]*.png", "sub/deep/[[]x].png", "s[!2]/*", "*/*/*", ".h/*", ".*/*.png",
    "sub/.j*", "sub/*", "nomatch/*.png", "*.jp?", "sub/c.png", "*/c.png", "x-y/[f-h]*"])
@pytest.mark.parametrize("absolute", [False, True])
def test_plain_glob_patterns_match_as_glob_does(tmp_path, monkeypatch, pattern, absolute):
    """Patterns without ``**`` are matched level by level (to report unreadable folders,
    which :mod:`glob` passes over); on a readable tree they must match exactly what
    :mod:`glob` matches (hidden names, brackets, negation, literal parts)."""
    import glob

    for f in ("a.png", "b1.jpg", "sub/c.png", "sub/deep/d2.png", "sub/deep/[x].png", "s2/e.png",
              "s2/a]b.png", "s!/f.png", "x-y/g.png", ".h/i.png", "sub/.j.png", "t/u/v/w.png"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    q = str(tmp_path / pattern) if absolute else pattern
    assert sorted(images._glob_files(q)) == sorted(glob.glob(q))


def test_plain_glob_reports_folders_it_cannot_list(tmp_path, unlistable):
    """:mod:`glob` skipped a subfolder it could not list without a word (a batch over
    ``photos/*/*.jpg`` silently left out a folder); now it is reported like ``**`` does."""
    for n in ("a/x.png", "locked/y.png", "ok/z.png"):
        (tmp_path / n).parent.mkdir(exist_ok=True)
        (tmp_path / n).write_bytes(b"x")
    unlistable("locked")
    why = "permission denied (cannot list directory)"
    unlisted: list = []
    found = list_images(str(tmp_path / "*" / "*.png"), unlisted=unlisted)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/x.png", "ok/z.png"]
    assert unlisted == [(tmp_path / "locked", why)]
    with pytest.raises(ImageError, match="locked: permission denied"):  # (the API: an error)
        list_images(str(tmp_path / "*" / "*.png"))
    unlisted = []  # a folder the pattern does not descend into is not news
    assert [p.name for p in list_images(str(tmp_path / "o*" / "*.png"), unlisted=unlisted)] \
        == ["z.png"]
    assert unlisted == []
    # a literal part below a folder that cannot be searched (stat: EACCES) is reported too
    real_stat = os.stat

    def no_search(path, *a, **k):
        if os.path.basename(os.path.dirname(os.fspath(path))) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_stat(path, *a, **k)

    (tmp_path / "a" / "raw").mkdir()
    (tmp_path / "a" / "raw" / "r.png").write_bytes(b"x")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "stat", no_search)
        unlisted = []
        found = list_images(str(tmp_path / "*" / "raw" / "*.png"), unlisted=unlisted)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/raw/r.png"]
    assert unlisted == [(tmp_path / "locked", "cannot search directory: permission denied")]
    # a trailing slash asks for folders, as glob: no image files (it matched files too)
    with pytest.raises(ImageError, match="no image files match"):
        list_images(str(tmp_path / "*") + os.sep)
    # the folder the pattern names cannot be listed: that, not "no image files match"
    for u in (None, []):
        with pytest.raises(ImageError) as e:
            list_images(str(tmp_path / "locked" / "*.png"), unlisted=u)
        assert _reason(e) == why and str(tmp_path / "locked") in str(e.value)


@pytest.mark.skipif(os.name != "posix", reason="POSIX symlinks")
def test_recursive_glob_survives_symlink_loops(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "a" / "sub" / "y.png").write_bytes(b"x")
    os.symlink(tmp_path / "a", tmp_path / "a" / "sub" / "loop")
    os.symlink(tmp_path / "a" / "sub", tmp_path / "a" / "again")  # Python's glob: 2^40 paths
    assert list_images(str(tmp_path / "a" / "**" / "*.png")) == [tmp_path / "a" / "again" / "y.png"]


def test_list_images_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError) as e:
        list_images(tmp_path / "empty")
    assert _reason(e).endswith("in this directory")  # (nothing in it: nothing more to say)
    # what it holds instead is said: a JPEG saved without an extension, a hidden one, photos
    # one folder down (--recursive)
    (tmp_path / "empty" / "IMG_001").write_bytes(b"x")
    (tmp_path / "empty" / ".h.jpg").write_bytes(b"x")
    (tmp_path / "empty" / "2024").mkdir()
    with pytest.raises(ImageError) as e:
        list_images(tmp_path / "empty")
    assert _reason(e).endswith(" in this directory; it holds 1 subfolder (--recursive looks in "
                               "them) and 2 files left out as hidden or not named as images "
                               "(e.g. 'IMG_001')")
    with pytest.raises(ImageError) as e:
        list_images(tmp_path / "empty", recursive=True)
    assert _reason(e).endswith(" in this directory or its subfolders; it holds 2 files left "
                               "out as hidden or not named as images (e.g. 'IMG_001')")
    with pytest.raises(ImageError) as e:
        list_images(str(tmp_path / "*.png"))
    assert _reason(e) == "no image files match this pattern"
    # a folder named with [ ]: its name is a character class in the pattern; said, with the way
    # out (it said only "no image files match"), and the escaped pattern finds the image
    odd = tmp_path / "Photos [2024]"
    odd.mkdir()
    (odd / "a.png").write_bytes(b"x")
    with pytest.raises(ImageError) as e:
        list_images(str(odd / "*.png"))
    assert _reason(e) == (f"no image files match this pattern (its folder {odd} is read as a "
                          "pattern too, '[' starting a wildcard: write '[[]' for a '[', or give "
                          "the folder itself)")
    assert list_images(str(tmp_path / "Photos [[]2024]" / "*.png")) == [odd / "a.png"]
    # a file named as a folder ("photo.png/", a tab-completed name): it said "no such file or
    # directory" (load_image: "Not a directory", the OS's words)
    slash = "not a directory (a file named as a folder: a '/' after it, or a folder on its " \
            "path that is a file)"
    (tmp_path / "b.png").write_bytes(b"x")
    for call in (list_images, load_image):
        with pytest.raises(ImageError) as e:
            call(str(tmp_path / "b.png") + "/")
        assert _reason(e) == slash, call
    with pytest.raises(ImageError) as e:
        list_images(tmp_path / "missing")
    assert _reason(e) == "no such file or directory"


@pytest.mark.skipif(IS_ROOT or os.name != "posix", reason="root ignores file permissions")
def test_list_images_unreadable_dir(tmp_path):
    d = tmp_path / "locked"
    d.mkdir()
    d.chmod(0)
    try:
        with pytest.raises(ImageError) as e:
            list_images(d)
        assert "permission denied" in _reason(e)
    finally:
        d.chmod(0o755)


def test_list_images_unreadable_dir_simulated(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(b"x")

    def deny(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(images.os, "scandir", deny)
    with pytest.raises(ImageError) as e:
        list_images(tmp_path)
    assert _reason(e) == "permission denied (cannot list directory)"


def test_unreadable_subfolders_are_collected_not_fatal(tmp_path, unlistable):
    for n in ("a.png", "locked/b.png", "ok/c.png"):
        (tmp_path / n).parent.mkdir(exist_ok=True)
        (tmp_path / n).write_bytes(b"x")
    unlistable("locked")
    with pytest.raises(ImageError, match="locked: permission denied"):  # (the API: an error)
        list_images(tmp_path, recursive=True)
    why = "permission denied (cannot list directory)"
    for spec in (tmp_path, str(tmp_path / "**" / "*.png")):
        unlisted: list = []
        found = list_images(spec, recursive=True, unlisted=unlisted)
        assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.png", "ok/c.png"]
        assert unlisted == [(tmp_path / "locked", why)]
    with pytest.raises(ImageError, match="permission denied"):  # the folder asked for itself
        list_images(tmp_path / "locked", unlisted=[])
    # a trailing ** matches at any depth: the locked folder is news (it was dropped silently)
    for pattern in (tmp_path / "**", tmp_path / "**" / "*"):
        unlisted = []
        list_images(str(pattern), unlisted=unlisted)
        assert unlisted == [(tmp_path / "locked", why)], pattern
    # a folder the pattern could not match in is not news (a batch ended with status 1)
    unlisted = []
    assert [p.name for p in list_images(str(tmp_path / "ok*" / "**" / "*.png"),
                                        unlisted=unlisted)] == ["c.png"]
    assert unlisted == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX symlinks")
def test_dangling_symlinks_are_listed_and_say_no_such_file(tmp_path):
    (tmp_path / "a.png").write_bytes(_png_bytes())
    os.symlink(tmp_path / "gone.png", tmp_path / "broken.png")
    os.symlink(tmp_path / "gone.txt", tmp_path / "broken.txt")  # not an image name: not listed
    for spec in (tmp_path, str(tmp_path / "*.png"), str(tmp_path / "**" / "*.png")):
        assert [p.name for p in list_images(spec)] == ["a.png", "broken.png"], spec
    assert list_images(tmp_path / "broken.png") == [tmp_path / "broken.png"]  # (as listed)
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "broken.png")
    assert "no such file" in _reason(e)


@pytest.mark.skipif(os.name != "posix", reason="POSIX symlinks")
def test_symlink_loops_are_listed_and_say_too_many_levels_of_links(tmp_path):
    """Two links to each other in a content folder vanished from the batch without a word
    (scandir's is_file raised ELOOP, which was passed over), while a dangling link is
    listed and reported: a loop is listed the same way, and loading it says why."""
    _write_jpeg(tmp_path / "good.jpg")
    os.symlink(tmp_path / "loop2.jpg", tmp_path / "loop1.jpg")
    os.symlink(tmp_path / "loop1.jpg", tmp_path / "loop2.jpg")
    os.symlink(tmp_path / "self.txt", tmp_path / "self.txt")  # not an image name: not listed
    for spec in (tmp_path, str(tmp_path / "*.jpg"), str(tmp_path / "**" / "*.jpg")):
        assert [p.name for p in list_images(spec)] == ["good.jpg", "loop1.jpg", "loop2.jpg"]
        assert [p.name for p in list_images(spec, recursive=True)] == [
            "good.jpg", "loop1.jpg", "loop2.jpg"]
    assert list_images(tmp_path / "loop1.jpg") == [tmp_path / "loop1.jpg"]
    for name in ("loop1.jpg", "loop2.jpg"):
        with pytest.raises(ImageError) as e:
            load_image(tmp_path / name)
        assert _reason(e) == "too many levels of symbolic links (a symlink loop)"


def test_a_file_in_a_folder_that_cannot_be_searched_is_not_missing(tmp_path, monkeypatch):
    target = tmp_path / "locked" / "p.jpg"
    real_stat, real_lstat = os.stat, os.lstat

    def deny(real):
        def stat(path, *a, **k):
            if os.fspath(path) == str(target):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real(path, *a, **k)
        return stat

    monkeypatch.setattr(os, "stat", deny(real_stat))
    monkeypatch.setattr(os, "lstat", deny(real_lstat))
    with pytest.raises(ImageError) as e:
        list_images(target)
    assert _reason(e).startswith("permission denied")
    with pytest.raises(ImageError, match="no such file or directory"):
        list_images(tmp_path / "missing.jpg")


def test_load_in_memory_bytes_not_needed():
    # load_image takes paths only; PIL images go through to_float
    with Image.open(io.BytesIO(_png_bytes())) as im:
        assert to_float(im).shape == (3, 2, 3)


def _png_bytes() -> bytes:
    b = io.BytesIO()
    Image.fromarray(_rgb(3, 2)).save(b, "PNG")
    return b.getvalue()


def test_short_side_center_square_resamples_only_the_square(monkeypatch):
    """The same pixels as resizing the shorter side and cropping the centre square, without
    making the whole resized image (a 1 x 1000 style would be 256 x 256000 floats first)."""
    rng = np.random.default_rng(0)
    for h, w, size in [(300, 400, 256), (400, 300, 200), (257, 1000, 128), (31, 47, 64),
                       (3, 1000, 32), (256, 300, 256), (100, 100, 40)]:
        x = rng.random((h, w, 3)).astype(np.float32)
        want = center_crop(resize_short_side(x, size), (size, size))
        got = short_side_center_square(x, size)
        assert got.shape == (size, size, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=5e-5)
    sizes = []
    real = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize",
                        lambda im, size, *a, **k: sizes.append(size) or real(im, size, *a, **k))
    assert short_side_center_square(rng.random((1, 1000, 3)).astype(np.float32), 64).shape == (
        64, 64, 3)
    assert sizes and max(w * h for w, h in sizes) == 64 * 64


# ------------------------------------------------------------- mutation-testing additions


def test_max_pixels_and_max_side_below_one_are_errors(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(_rgb(4, 6)).save(p)
    for kw in ({"max_pixels": 0}, {"max_side": 0}):
        with pytest.raises(ValueError):
            load_image(p, **kw)
        with pytest.raises(ValueError):
            load_pil(p, **kw)
    assert load_image(p, max_pixels=1_000, max_side=1_000).shape == (4, 6, 3)


def test_max_pixels_is_an_inclusive_limit(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(_rgb(4, 6)).save(p)
    assert load_image(p, max_pixels=24).shape == (4, 6, 3)  # exactly 24 pixels: allowed
    with pytest.raises(ImageError) as e:
        load_image(p, max_pixels=23)
    assert _reason(e).startswith("too large: 6 x 4 = 24 pixels > limit 23")


def test_big_jpeg_with_max_side_is_decoded_at_a_reduced_scale_of_at_least_twice_the_target(
        tmp_path, monkeypatch):
    """The DCT-reduced decode (as Image.thumbnail) stays >= 2x the target, then Lanczos."""
    from PIL import JpegImagePlugin

    path = _write_jpeg(tmp_path / "big.jpg", h=304, w=800)
    decoded = []
    real = JpegImagePlugin.JpegImageFile.draft

    def draft(self, mode, size):
        out = real(self, mode, size)
        decoded.append(self.size)
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    x = load_image(path, max_side=100)
    assert x.shape == (38, 100, 3)
    assert decoded == [(200, 76)]  # 1/4 scale: the smallest DCT scale that is >= 2 x 100 wide
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", real)
    full = load_image(path)  # full decode, then the same Lanczos: nearly the same pixels
    ref = np.asarray(Image.fromarray(to_uint8(full)).resize((100, 38), Image.Resampling.LANCZOS),
                     np.float32) / 255
    assert np.abs(x - ref).mean() < 0.02


@pytest.mark.parametrize("max_side,shape", [(50, (50, 20, 3)), (20, (20, 8, 3))])
def test_exif_rotated_jpeg_with_max_side_keeps_the_displayed_aspect(tmp_path, max_side, shape):
    """A stored 100 x 40 landscape shown rotated (portrait 40 x 100): the max_side target is
    computed from the displayed size, with and without a reduced-scale JPEG decode."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _write_jpeg(tmp_path / "rot.jpg", h=40, w=100, exif=exif.tobytes())
    assert load_image(path, max_side=max_side).shape == shape
    assert load_pil(path, max_side=max_side).size == (shape[1], shape[0])


def test_rgb_and_gray_png_transparency_keys_become_white(tmp_path):
    a = np.zeros((2, 3, 3), np.uint8)
    a[:, :, 0] = 255
    a[1] = (10, 20, 30)
    Image.fromarray(a).save(tmp_path / "rgb.png", transparency=(255, 0, 0))  # red: transparent
    x = load_image(tmp_path / "rgb.png")
    np.testing.assert_array_equal(x[0], 1.0)
    np.testing.assert_allclose(x[1], [[10 / 255, 20 / 255, 30 / 255]] * 3, rtol=1e-6)
    g = np.array([[0, 0, 77]], np.uint8)
    Image.fromarray(g).save(tmp_path / "l.png", transparency=0)  # black: transparent
    y = load_image(tmp_path / "l.png")
    np.testing.assert_array_equal(y[0, :2], 1.0)
    np.testing.assert_allclose(y[0, 2], 77 / 255, rtol=1e-6)
    np.testing.assert_array_equal(to_uint8(Image.open(tmp_path / "l.png"))[0, :2], 255)


def test_premultiplied_la_is_composited_on_white():
    la = np.zeros((1, 2, 2), np.uint8)
    la[..., 0] = (128, 255)
    la[..., 1] = (128, 0)  # half transparent grey; fully transparent white
    im = Image.fromarray(la, "LA").convert("La")  # stored premultiplied: L = 64
    assert im.mode == "La"
    # (128 / 255) * (128 / 255) + 1 * (1 - 128 / 255): un-premultiplied grey over white
    expect = 128 / 255 * 128 / 255 + (1 - 128 / 255)
    np.testing.assert_allclose(to_float(im)[0, 0], expect, atol=1.5 / 255)
    np.testing.assert_allclose(to_float(im)[0, 1], 1.0)


def test_float_mode_f_range_is_inferred_from_its_maximum():
    def f(*v):
        return to_float(Image.fromarray(np.array([v], np.float32)))[0, :, 0]

    np.testing.assert_allclose(f(0.5, 1.0), [0.5, 1.0])  # max 1: already [0, 1]
    np.testing.assert_allclose(f(51.0, 255.0), [0.2, 1.0], rtol=1e-6)  # max 255: 8-bit scale
    np.testing.assert_allclose(f(655.35, 256.0), [0.01, 256 / 65535], rtol=1e-5)  # 16-bit
    np.testing.assert_allclose(f(np.nan, 102.0, 0.0), [0.0, 0.4, 0.0], rtol=1e-6)  # NaN -> 0
    # [0, 1] data with HDR highlights / overshoot above 1 (up to 1.5): clipped, not read as
    # 0..255 data (one pixel at 1.2 made the photo near black, later "blank")
    np.testing.assert_allclose(f(0.5, 1.2), [0.5, 1.0])
    np.testing.assert_allclose(f(0.25, 1.5, np.inf), [0.25, 1.0, 1.0])
    np.testing.assert_allclose(f(16.0, 2.0), [16 / 255, 2 / 255], rtol=1e-6)
    for hdr in (1.51, 2.0, 15.9):  # neither: one line, no guess
        with pytest.raises(ImageError, match=f"float image values up to {hdr:.3g}: neither"):
            f(0.5, hdr)



def test_float_tiff_files_with_highlights_and_hdr(tmp_path):
    g = np.full((8, 8), 0.5, np.float32)
    g[0, 0] = 1.2
    Image.fromarray(g).save(tmp_path / "hot.tif")
    assert float(np.median(load_image(tmp_path / "hot.tif"))) == pytest.approx(0.5)
    Image.fromarray(g * 4).save(tmp_path / "hdr.tif")
    with pytest.raises(ImageError, match=r"hdr\.tif.*float image values up to 4\.8"):
        load_image(tmp_path / "hdr.tif")


def test_to_uint8_of_infinities_and_bools():
    v = np.array([np.inf, -np.inf, np.nan, 0.5], np.float32)
    assert list(to_uint8(v)) == [255, 0, 0, 128]
    b = np.array([[True, False]])
    out = to_uint8(b)
    assert out.dtype == np.uint8 and out.tolist() == [[255, 0]]


@pytest.mark.parametrize("quality,sampling", [(100, 0), (90, 0), (89, 2), (1, 2)])
def test_jpeg_chroma_subsampling_follows_quality(tmp_path, quality, sampling):
    from PIL import JpegImagePlugin

    p = save_image(tmp_path / "a.jpg", _rgb(16, 16), quality=quality)  # 1..100 inclusive
    with Image.open(p) as im:
        assert JpegImagePlugin.get_sampling(im) == sampling  # 0 = 4:4:4, 2 = 4:2:0


def test_saved_alpha_is_kept_where_the_format_has_it(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, :, 3] = 255
    for ext, mode in ((".png", "RGBA"), (".tif", "RGBA"), (".webp", "RGBA"), (".bmp", "RGB"),
                      (".jpg", "RGB")):
        p = save_image(tmp_path / f"rgba{ext}", rgba)
        with Image.open(p) as im:
            assert im.mode == mode, ext
        if ext in (".png", ".tif"):
            with Image.open(p) as im:
                np.testing.assert_array_equal(np.asarray(im), rgba)
        if ext == ".bmp":  # no alpha: composited on white (transparent row -> white)
            np.testing.assert_array_equal(to_uint8(load_image(p))[1], 255)
    la = Image.fromarray(np.array([[[90, 255], [0, 0]]], np.uint8), "LA")
    for ext, mode in ((".png", "LA"), (".tif", "LA"), (".jpg", "RGB")):
        p = save_image(tmp_path / f"la{ext}", la)
        with Image.open(p) as im:
            assert im.mode == mode, ext


def test_check_array_image_refuses_out_of_range_floats_and_empty_arrays():
    images.check_array_image(np.full((2, 2, 3), 1.5, np.float32))  # the allowed overshoot
    images.check_array_image(np.full((2, 2, 3), -0.5, np.float32))
    for bad in (np.full((2, 2, 3), 255.0, np.float32), np.full((2, 2, 3), -1.0, np.float32),
                np.zeros((0, 4, 3), np.float32), np.zeros((4, 0), np.uint8)):
        with pytest.raises(ImageError):
            images.check_array_image(bad)


def test_to_float_and_to_uint8_orient_a_tagged_pil_image(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _write_jpeg(tmp_path / "rot.jpg", h=40, w=100, exif=exif.tobytes())
    with Image.open(path) as im:
        assert to_float(im).shape == (100, 40, 3)
        assert to_uint8(im).shape == (100, 40, 3)
        np.testing.assert_array_equal(to_uint8(im), to_uint8(load_image(path)))


def test_rgb_icc_profile_other_than_srgb_is_converted(tmp_path):
    """An RGB profile whose red and blue primaries are swapped (the sRGB profile's rXYZ and
    bXYZ tags exchanged, and its name changed): converted to sRGB, R and B swap."""
    from PIL import ImageCms

    b = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    tags = {bytes(b[132 + 12 * i:136 + 12 * i]): 132 + 12 * i
            for i in range(int.from_bytes(b[128:132], "big"))}
    r, bl = tags[b"rXYZ"], tags[b"bXYZ"]
    b[r + 4:r + 8], b[bl + 4:bl + 8] = b[bl + 4:bl + 8], b[r + 4:r + 8]  # swap tag offsets
    name = "sRGB".encode("utf-16-be")
    b = bytearray(bytes(b).replace(name, "swap".encode("utf-16-be")))
    assert "srgb" not in ImageCms.getProfileDescription(
        ImageCms.ImageCmsProfile(io.BytesIO(bytes(b)))).lower()
    a = np.array([[[255, 0, 0], [0, 0, 255], [40, 120, 200]]], np.uint8)
    Image.fromarray(a).save(tmp_path / "swapped.png", icc_profile=bytes(b))
    x = to_uint8(load_image(tmp_path / "swapped.png")).astype(int)
    assert np.abs(x - a[..., ::-1]).max() <= 2, x
    y = to_uint8(load_pil(tmp_path / "swapped.png")).astype(int)
    assert np.abs(y - a[..., ::-1]).max() <= 2, y


def _swapped_profile(name: str) -> bytes:
    """The sRGB profile with its red and blue primaries swapped, its description ``name``."""
    from PIL import ImageCms

    b = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    tags = {bytes(b[132 + 12 * i:136 + 12 * i]): 132 + 12 * i
            for i in range(int.from_bytes(b[128:132], "big"))}
    r, bl = tags[b"rXYZ"], tags[b"bXYZ"]
    b[r + 4:r + 8], b[bl + 4:bl + 8] = b[bl + 4:bl + 8], b[r + 4:r + 8]
    old = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(bytes(b)))).strip()
    new = name.ljust(len(old))[:len(old)]
    return bytes(b).replace(old.encode("utf-16-be"), new.encode("utf-16-be")).replace(
        old.encode("ascii"), new.encode("ascii"))


_RB = np.array([[[255, 0, 0], [0, 0, 255], [40, 120, 200]]], np.uint8)


@pytest.mark.parametrize("mode", ["RGBA", "P", "RGB+tRNS", "PIL RGBA"])
def test_icc_profile_of_alpha_and_palette_images_is_converted(tmp_path, mode):
    """The profile was dropped with the alpha (RGBA PNGs in Display P3: macOS screenshots) or
    the palette: their colours came out raw, 0.015-0.025 off on 0..1 for P3 / Adobe RGB."""
    prof = _swapped_profile("swap")
    p = tmp_path / "x.png"
    if mode in ("RGBA", "PIL RGBA"):
        Image.fromarray(_RB).convert("RGBA").save(p, icc_profile=prof)
    elif mode == "P":
        Image.fromarray(_RB).convert("P", palette=Image.Palette.ADAPTIVE).save(p, icc_profile=prof)
    else:
        Image.fromarray(_RB).save(p, icc_profile=prof, transparency=(1, 2, 3))
    x = to_float(Image.open(p)) if mode == "PIL RGBA" else load_image(p)
    assert np.abs(to_uint8(x).astype(int) - _RB[..., ::-1]).max() <= 2, x


def test_a_profile_is_judged_by_what_it_does_not_by_its_name(tmp_path):
    """"Linear sRGB" (GIMP, Krita) was taken for sRGB for the "srgb" in its description and
    its colours used raw (0.17 off on 0..1); LittleCMS' own sRGB is still left as it is."""
    from PIL import ImageCms

    prof = _swapped_profile("Linear sRGB")
    assert "srgb" in ImageCms.getProfileDescription(
        ImageCms.ImageCmsProfile(io.BytesIO(prof))).lower()
    Image.fromarray(_RB).save(tmp_path / "x.png", icc_profile=prof)
    x = to_uint8(load_image(tmp_path / "x.png")).astype(int)
    assert np.abs(x - _RB[..., ::-1]).max() <= 2, x
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert images._is_srgb_profile(srgb) is True
    assert images._is_srgb_profile(prof) is False
    assert images._is_srgb_profile(b"not a profile") is None
    # a profile a few levels off sRGB (as Display P3 / Adobe RGB are) is not sRGB either
    b = bytearray(srgb)
    tags = {bytes(b[132 + 12 * i:136 + 12 * i]): 132 + 12 * i
            for i in range(int.from_bytes(b[128:132], "big"))}
    at = int.from_bytes(b[tags[b"rXYZ"] + 4:tags[b"rXYZ"] + 8], "big") + 8  # red's X
    x = int.from_bytes(b[at:at + 4], "big", signed=True)
    b[at:at + 4] = int(x * 1.005).to_bytes(4, "big", signed=True)
    shifted = Image.fromarray(images._PROBE)
    shifted.info["icc_profile"] = bytes(b)
    off = np.abs(np.asarray(images._icc_to_srgb(shifted), int) - images._PROBE).max()
    assert 1 < off <= 8 and images._is_srgb_profile(bytes(b)) is False, off


def _grey_profile(gamma: float) -> bytes:
    """A minimal ICC v2 grey display profile: D50 white, a pure-gamma ``kTRC``."""
    import struct

    def s15(x: float) -> bytes:
        return struct.pack(">i", round(x * 65536))

    d50 = s15(0.9642) + s15(1.0) + s15(0.8249)
    text = b"grey gamma\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 78
    tags = [(b"wtpt", b"XYZ " + b"\0" * 4 + d50),
            (b"kTRC", b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256))),
            (b"desc", desc)]
    start = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for sig, data in tags:
        table += sig + struct.pack(">II", start + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    header = (struct.pack(">I", start + len(body)) + b"\0" * 4 + struct.pack(">I", 0x02100000)
              + b"mntrGRAYXYZ " + b"\0" * 12 + b"acsp" + b"\0" * 28 + d50 + b"\0" * 48)
    return header + table + body


def test_grey_icc_profile_is_converted(tmp_path):
    """A grey file's profile (Photoshop's "Gray Gamma", "Dot Gain") was ignored: a linear
    (gamma 1) grey image came out 55.7 levels darker on average than viewers show it. Grey,
    grey + alpha and grey JPEG files are converted; a profile that is not a grey one, or
    broken, leaves the raw values, as for RGB images."""
    g = np.array([[0, 32, 64, 128, 192, 255]], np.uint8)
    v = g[0] / 255.0
    want = np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055) * 255  # sRGB
    linear = _grey_profile(1.0)
    Image.fromarray(g).save(tmp_path / "g.png", icc_profile=linear)
    Image.fromarray(g).convert("LA").save(tmp_path / "ga.png", icc_profile=linear)
    Image.fromarray(np.repeat(g, 8, 0).repeat(8, 1)).save(tmp_path / "g.jpg", quality=100,
                                                          icc_profile=linear)
    for name in ("g.png", "ga.png"):
        x = to_uint8(load_image(tmp_path / name))
        assert np.abs(x.astype(float) - want[None, :, None]).max() <= 1, (name, x)
        np.testing.assert_array_equal(images.load_pixels(tmp_path / name), x)
        np.testing.assert_array_equal(np.asarray(load_pil(tmp_path / name)), x)
    x = to_uint8(load_image(tmp_path / "g.jpg"))[4::8, 4::8]
    assert np.abs(x.astype(float) - want[None, :, None]).max() <= 2, x
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for i, prof in enumerate((srgb, b"not a profile", linear[:200])):
        Image.fromarray(g).save(tmp_path / f"raw{i}.png", icc_profile=prof)
        np.testing.assert_array_equal(images.load_pixels(tmp_path / f"raw{i}.png")[..., 1], g)


@pytest.mark.skipif(os.name != "posix", reason="POSIX symlinks")
def test_plain_glob_follows_symlinked_folders_and_lists_dangling_literal_names(tmp_path):
    import glob

    for n in ("real/a.png", "other/b.png"):
        (tmp_path / n).parent.mkdir(exist_ok=True)
        (tmp_path / n).write_bytes(b"x")
    os.symlink(tmp_path / "other", tmp_path / "link")  # glob follows it: link/b.png
    os.symlink(tmp_path / "gone.png", tmp_path / "real" / "x.png")  # dangling
    q = str(tmp_path / "*" / "*.png")
    assert sorted(images._glob_files(q)) == sorted(glob.glob(q))
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(q)] == [
        "link/b.png", "other/b.png", "real/a.png", "real/x.png"]
    # a literal last part: a dangling link is listed ("no such file" when loaded), as with *
    assert list_images(str(tmp_path / "r*" / "x.png")) == [tmp_path / "real" / "x.png"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX symlinks")
def test_list_images_of_a_symlink_to_a_folder_lists_the_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.png").write_bytes(b"x")
    os.symlink(tmp_path / "d", tmp_path / "ln")
    assert list_images(tmp_path / "ln") == [tmp_path / "ln" / "a.png"]
    os.symlink(tmp_path / "d", tmp_path / "d" / "dir.png")  # an image name, but a folder
    assert list_images(str(tmp_path / "d" / "*.png")) == [tmp_path / "d" / "a.png"]


def test_listing_is_sorted_by_path_components(tmp_path):
    """Folders are grouped: "a/x.png" comes before "a-b.png" (as tuples of names), although
    "-" sorts before "/" as characters."""
    for n in ("a/x.png", "a-b.png", "a/b/y.png"):
        (tmp_path / n).parent.mkdir(exist_ok=True)
        (tmp_path / n).write_bytes(b"x")
    expect = ["a/b/y.png", "a/x.png", "a-b.png"]
    for spec in (tmp_path, str(tmp_path / "**" / "*.png")):
        found = list_images(spec, recursive=True)
        assert [p.relative_to(tmp_path).as_posix() for p in found] == expect, spec


def test_hidden_files_are_not_listed_even_by_a_pattern_that_names_them(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / ".x.png").write_bytes(b"x")
    (tmp_path / "s" / "y.png").write_bytes(b"x")
    with pytest.raises(ImageError, match="no image files match"):
        list_images(str(tmp_path / "s*" / ".x.png"))


def test_save_single_channel_arrays_as_gray(tmp_path):
    g = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3, 1)
    p = save_image(tmp_path / "g.png", g)
    with Image.open(p) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), np.rint(g[:, :, 0] * 255).astype(np.uint8))


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_overwrite_keeps_the_replaced_files_mode(tmp_path):
    p = save_image(tmp_path / "a.png", _rgb(seed=1))
    os.chmod(p, 0o604)  # a mode no usual umask gives a new file
    save_image(p, _rgb(seed=2), overwrite=True)
    assert p.stat().st_mode & 0o777 == 0o604


def test_channel_std_is_per_channel():
    """A flat colour is blank (every channel constant), though its values differ; two colours
    are not: the largest per-channel std (hand-computed), not the std of all values."""
    red_wall = np.zeros((4, 4, 3), np.float32)
    red_wall[..., 0] = 1.0
    assert images.channel_std(red_wall) == 0.0
    assert images.blank_reason(red_wall) is not None
    two = np.array([[[1.0, 0.0, 0.0], [0.0, 0.2, 1.0]]], np.float32)  # R, B std 0.5; G 0.1
    assert images.channel_std(two) == pytest.approx(0.5)
    assert images.blank_reason(two) is None


def test_a_webp_cut_inside_its_header_is_named_as_webp(tmp_path):
    p = tmp_path / "cut.webp"
    p.write_bytes(b"RIFF\x04\x00\x00\x00WEBP")
    with pytest.raises(ImageError) as e:
        load_image(p)
    assert _reason(e) == "truncated, corrupt or unsupported WebP file (cannot read its header)"


def test_resize_to_the_same_size_still_clips():
    x = np.array([[[1.2, -0.1, 0.5]]], np.float32)
    np.testing.assert_array_equal(resize(x, (1, 1)), [[[1.0, 0.0, 0.5]]])


def test_glob_lists_only_image_files(tmp_path):
    for n in ("a.png", "notes.txt", "b.JPG", "data.npy"):
        (tmp_path / n).write_bytes(b"x")
    assert [p.name for p in list_images(str(tmp_path / "*"))] == ["a.png", "b.JPG"]
    assert [p.name for p in list_images(str(tmp_path / "**" / "*"))] == ["a.png", "b.JPG"]


def test_save_a_16_bit_pil_image_scales_it_to_8_bits(tmp_path):
    g = np.full((2, 3), 40000, np.uint16)
    p = save_image(tmp_path / "g.png", Image.fromarray(g))
    with Image.open(p) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), round(40000 / 65535 * 255))


def test_center_crop_of_an_empty_size_is_an_error():
    x = np.zeros((4, 5, 3), np.float32)
    for size in ((0, 2), (2, 0), (5, 2), (2, 6)):
        with pytest.raises(ValueError):
            center_crop(x, size)


def test_quality_reaches_the_jpeg_and_webp_encoders(tmp_path):
    """JPEG quality 100 uses all-ones quantization tables (the default 75 does not); a WebP
    of noise at quality 100 is several times larger than at quality 5."""
    noise = _rgb(64, 64, seed=3)
    p = save_image(tmp_path / "q.jpg", noise, quality=100)
    with Image.open(p) as im:
        assert all(max(t) == 1 for t in im.quantization.values())
    sizes = [save_image(tmp_path / f"q{q}.webp", noise, quality=q).stat().st_size
             for q in (5, 100)]
    assert sizes[1] > 2 * sizes[0], sizes


def test_save_without_overwrite_never_replaces_a_file_that_appears_meanwhile(tmp_path,
                                                                             monkeypatch):
    """The existence check and the write are not one step: a file created in between (another
    process) must not be clobbered; the final link refuses it."""
    p = tmp_path / "a.png"

    def racing(real):
        def check(path):
            if os.fspath(path) == str(p) and not os.path.isfile(p):
                p.write_bytes(b"theirs")  # appears right after the check
                return False
            return real(path)
        return check

    monkeypatch.setattr(os.path, "lexists", racing(os.path.lexists))
    monkeypatch.setattr(os.path, "exists", racing(os.path.exists))
    with pytest.raises(ImageError) as e:
        save_image(p, _rgb())
    assert _reason(e).startswith("exists")
    assert p.read_bytes() == b"theirs"
    assert not _tmp_leftovers(tmp_path)


def test_plain_glob_finds_literal_names_in_a_folder_it_cannot_list(tmp_path, unlistable):
    """As :mod:`glob`: a literal part needs no listing, so ``*/locked/x.png`` is found in a
    folder that can be searched but not listed."""
    (tmp_path / "a" / "locked").mkdir(parents=True)
    (tmp_path / "a" / "locked" / "x.png").write_bytes(b"x")
    unlistable("locked")
    assert list_images(str(tmp_path / "*" / "locked" / "x.png")) == [
        tmp_path / "a" / "locked" / "x.png"]


def test_shown_size_is_the_header_size_as_shown(tmp_path):
    im = Image.fromarray(np.zeros((20, 50, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: shown 20 wide, 50 high
    im.save(tmp_path / "r.jpg", exif=exif.tobytes())
    im.save(tmp_path / "p.png")
    assert images.shown_size(tmp_path / "r.jpg") == (20, 50)
    for turn in (5, 7, 8):  # (every orientation that swaps the sides, not only 6)
        exif[0x0112] = turn
        im.save(tmp_path / f"r{turn}.jpg", exif=exif.tobytes())
        assert images.shown_size(tmp_path / f"r{turn}.jpg") == (20, 50), turn
    exif[0x0112] = 6
    assert load_image(tmp_path / "r.jpg").shape[:2] == (50, 20)
    assert images.shown_size(tmp_path / "p.png") == (50, 20)
    im.save(tmp_path / "r.png", exif=exif.tobytes())  # (read without decoding the pixels)
    assert images.shown_size(tmp_path / "r.png") == (20, 50)
    assert load_image(tmp_path / "r.png").shape[:2] == (50, 20)
    # a PNG may store its EXIF after the pixels (Pillow's header read stops at the first IDAT:
    # its size was said to be as stored, 50x20, though it is shown and read 20x50)
    import struct
    import zlib

    data = (tmp_path / "p.png").read_bytes()
    payload = exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif") else exif.tobytes()
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(
        ">I", zlib.crc32(b"eXIf" + payload))
    iend = data.rindex(b"IEND") - 4
    (tmp_path / "late.png").write_bytes(data[:iend] + chunk + data[iend:])
    with Image.open(tmp_path / "late.png") as late:
        assert "exif" not in late.info  # (the case: not in the header Pillow read)
    assert load_image(tmp_path / "late.png").shape[:2] == (50, 20)
    assert images.shown_size(tmp_path / "late.png") == (20, 50)
    (tmp_path / "cut.png").write_bytes(data[:iend] + chunk[:10])  # damaged: as stored
    assert images.shown_size(tmp_path / "cut.png") == (50, 20)
    for turn in (5, 6, 7, 8):  # a TIFF (Pillow 13 reports its shown size: it was turned twice)
        exif[0x0112] = turn
        im.save(tmp_path / f"r{turn}.tif", exif=exif.tobytes())
        assert images.shown_size(tmp_path / f"r{turn}.tif") == (20, 50), turn
        assert load_image(tmp_path / f"r{turn}.tif").shape[:2] == (50, 20), turn
    (tmp_path / "t.png").write_text("not an image")
    with pytest.raises(ImageError, match="t.png"):
        images.shown_size(tmp_path / "t.png")
    im.save(tmp_path / "big.png")  # Pillow's bomb error (beyond 2x its limit): one line
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # 1000 px > 2 x 400
        with pytest.raises(ImageError, match="big.png: too large: 1000 pixels"):
            images.shown_size(tmp_path / "big.png")


def test_a_pil_image_out_of_memory_while_decoding_is_not_called_corrupt(monkeypatch):
    """A MemoryError from a PIL image's lazy decode stays a MemoryError (the caller's
    out-of-memory handling), not "truncated or corrupt image data"."""
    im = Image.new("RGB", (4, 4))

    def load():
        raise MemoryError

    monkeypatch.setattr(im, "load", load)
    with pytest.raises(MemoryError):
        images._decoded_pil(im)


def test_a_pil_image_whose_lazy_decode_fails_is_an_image_error(tmp_path):
    """``Image.open`` decodes lazily: a truncated file raised Pillow's raw OSError from inside
    to_float / to_uint8 / save_image, and an image whose ``with Image.open(...)`` block had
    closed a bare AssertionError. Both are one-line ImageErrors without a path (the caller
    names the argument); an image loaded inside its ``with`` block stays usable."""
    data = _write_jpeg(tmp_path / "full.jpg", h=128, w=128).read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    for convert in (to_float, to_uint8, lambda im: save_image(tmp_path / "o.png", im)):
        with pytest.raises(ImageError) as e:
            convert(Image.open(tmp_path / "half.jpg"))
        assert e.value.path is None
        assert _reason(e).startswith("truncated or corrupt image data: image file is truncated")
        with Image.open(tmp_path / "full.jpg") as closed:
            pass
        with pytest.raises(ImageError) as e:
            convert(closed)
        assert _reason(e) == images.CLOSED_PIL_IMAGE and "im.load()" in _reason(e)
        gone = Image.new("RGB", (4, 4))
        gone.close()
        with pytest.raises(ImageError) as e:
            convert(gone)
        assert _reason(e) == "the PIL image was closed (im.close()): its pixels are gone"
    with Image.open(tmp_path / "full.jpg") as im:
        im.load()
    assert to_float(im).shape == (128, 128, 3) and to_uint8(Image.open(tmp_path / "full.jpg"))[
        0, 0].dtype == np.uint8


def test_a_16_bit_grey_png_with_a_transparent_value_is_on_white(tmp_path):
    """A 16-bit grey PNG's tRNS (one transparent grey value) was ignored: its transparent part
    came out black where the 8-bit twin's is white, as every transparent image's."""
    g = np.zeros((32, 64), np.uint16)
    g[:, 32:] = 40000
    Image.fromarray(g).save(tmp_path / "g16.png", transparency=0)
    Image.fromarray((g // 257).astype(np.uint8)).save(tmp_path / "g8.png", transparency=0)
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    for f in ("g16.png", "g8.png"):
        x = load_image(tmp_path / f)
        assert x[:, :32].min() == 1.0 and abs(x[:, 32:].mean() - 40000 / 65535) < 3e-3, f
        np.testing.assert_array_equal(to_uint8(Image.open(tmp_path / f)), to_uint8(x))
    x = load_image(tmp_path / "g16.png", max_side=16)  # (the resized path too)
    assert x[:, :7].min() > 0.99


def test_save_a_pil_image_as_it_is_shown_and_in_srgb(tmp_path):
    """save_image(PIL image): the EXIF orientation was dropped (a portrait photo saved
    sideways) and an ICC profile kept by PNG but dropped by JPEG (other colours); it is saved
    as an array of it would be (to_uint8: oriented, sRGB), in every format."""
    a = np.zeros((64, 96, 3), np.uint8)
    a[:, :48] = 255
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "o6.jpg", exif=exif.tobytes(), quality=95)
    shown = load_image(tmp_path / "o6.jpg")
    assert shown.shape == (96, 64, 3)
    for ext in (".png", ".jpg"):
        out = save_image(tmp_path / f"o6_out{ext}", Image.open(tmp_path / "o6.jpg"))
        assert load_image(out).shape == (96, 64, 3)
        assert np.abs(load_image(out) - shown).mean() < 0.01, ext
    prof = _swapped_profile("swap")
    blocks = np.repeat(np.repeat(_RB, 16, 0), 16, 1)  # (16-px blocks: JPEG's are 8 px)
    Image.fromarray(blocks).save(tmp_path / "swapped.png", icc_profile=prof)
    Image.fromarray(blocks).convert("RGBA").save(tmp_path / "swapped_rgba.png",
                                                 icc_profile=prof)
    for src in ("swapped.png", "swapped_rgba.png"):
        for ext in (".png", ".jpg", ".webp", ".tif"):
            out = save_image(tmp_path / f"{src}{ext}", Image.open(tmp_path / src),
                             quality=100)
            assert "icc_profile" not in Image.open(out).info, (src, ext)
            got = to_uint8(load_image(out)).astype(int)[8::16, 8::16]  # (block centres)
            tol = 2 if ext in (".png", ".tif") else 12
            assert np.abs(got - _RB[..., ::-1]).max() <= tol, (src, ext, got)
    assert Image.open(save_image(tmp_path / "a.png", Image.open(tmp_path / "swapped_rgba.png"))
                      ).mode == "RGBA"  # (the alpha kept where the format holds it)
    # the caller's image is not changed
    src = Image.open(tmp_path / "swapped.png")
    save_image(tmp_path / "b.png", src)
    assert src.info.get("icc_profile") == prof


def test_an_output_name_too_long_for_the_filesystem_is_one_image_error(tmp_path):
    """A name over 255 bytes raised OSError (ENAMETOOLONG) from the directory check: a
    traceback in evaluate, outside save_image's documented ImageError."""
    with pytest.raises(ImageError, match="cannot write: .*too long"):
        save_image(tmp_path / ("a" * 300 + ".png"), np.zeros((4, 4, 3), np.float32))


def test_big_endian_arrays_are_images(tmp_path):
    """``>u2`` (np.frombuffer of PNG/PGM bytes) was refused as "unsupported image array dtype
    >u2 (use uint8, uint16, ...)": read as the native array it equals."""
    from arbitrary_nst.images import check_array_image

    a = (np.arange(48, dtype=np.uint16).reshape(4, 4, 3) * 1300)
    for big in (a.astype(">u2"), (a / 65535).astype(">f4")):
        assert check_array_image(big).dtype.isnative
        native = big.astype(big.dtype.newbyteorder("="))
        np.testing.assert_array_equal(to_float(big), to_float(native))
    np.testing.assert_allclose(to_float(a.astype(">u2")), a / 65535, atol=1e-6)


def test_an_empty_file_name_says_so():
    """``load_image("")`` / ``--content ""`` said ": no such file" (an empty name before the
    colon)."""
    with pytest.raises(ImageError, match=r"^the image file name is empty \(''\)$"):
        load_image("")
    with pytest.raises(ImageError, match=r"^the image file or folder name is empty \(' '\)$"):
        list_images(" ")
