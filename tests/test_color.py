"""Colour helpers: colour spaces, luminance transfer, mean/covariance colour matching."""
from __future__ import annotations

import numpy as np
import pytest

from arbitrary_nst import color
from arbitrary_nst.errors import ConfigError


@pytest.fixture(scope="module")
def imgs():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.2, 0.8, (2, 16, 20, 3)).astype(np.float32)
    a[..., 0] *= 0.8  # some colour structure
    b = rng.uniform(0.3, 0.7, (2, 24, 12, 3)).astype(np.float32)
    b[..., 2] = 0.5 * b[..., 2] + 0.4 * b[..., 0]  # correlated channels
    return a, b


@pytest.mark.parametrize("space", ["yiq", "yuv"])
def test_roundtrip_and_gray_has_no_chroma(imgs, space):
    a, _ = imgs
    back = color.from_space(color.to_space(a, space), space)
    np.testing.assert_allclose(np.asarray(back), a, atol=1e-5)
    gray = np.full((4, 4, 3), 0.37, np.float32)
    ys = np.asarray(color.to_space(gray, space))
    np.testing.assert_allclose(ys[..., 0], 0.37, atol=1e-6)
    np.testing.assert_allclose(ys[..., 1:], 0.0, atol=1e-6)
    fwd = color.rgb_to_yiq if space == "yiq" else color.rgb_to_yuv
    inv = color.yiq_to_rgb if space == "yiq" else color.yuv_to_rgb
    np.testing.assert_allclose(np.asarray(inv(fwd(a))), a, atol=1e-5)


def test_luminance_and_gray_rgb(imgs):
    a, _ = imgs
    y = np.asarray(color.luminance(a))
    np.testing.assert_allclose(y, a @ np.array([0.299, 0.587, 0.114], np.float32), atol=1e-6)
    g = np.asarray(color.gray_rgb(a))
    assert g.shape == a.shape
    np.testing.assert_allclose(g[..., 0], y, atol=1e-6)
    np.testing.assert_allclose(np.asarray(color.chroma(g)), 0.0, atol=1e-5)


@pytest.mark.parametrize("space", ["yiq", "yuv"])
def test_transfer_luminance_keeps_content_chroma(imgs, space):
    a, _ = imgs
    stylized = np.clip(a[::-1] * 0.8 + 0.1, 0, 1)  # different image, same shape
    out = np.asarray(color.transfer_luminance(stylized, a, space))
    assert out.min() >= 0 and out.max() <= 1
    # compare where the recombined colour needed no clipping (most pixels)
    raw = np.concatenate([np.asarray(color.to_space(stylized, space))[..., :1],
                          np.asarray(color.chroma(a, space))], axis=-1)
    ok = np.all((np.asarray(color.from_space(raw, space)) >= 0)
                & (np.asarray(color.from_space(raw, space)) <= 1), axis=-1)
    assert ok.mean() > 0.7
    np.testing.assert_allclose(np.asarray(color.chroma(out, space))[ok],
                               np.asarray(color.chroma(a, space))[ok], atol=2e-4)
    np.testing.assert_allclose(np.asarray(color.luminance(out))[ok],
                               np.asarray(color.luminance(stylized))[ok], atol=2e-4)
    with pytest.raises(ConfigError):
        color.transfer_luminance(stylized[:, :8], a, space)


def test_luminance_transfer_is_the_same_in_yiq_and_yuv(imgs):
    """What the docs now say of ``color_space`` (a mutation pass found that changing it changed
    nothing): the output is content + (Y(stylized) - Y(content)) on every channel, clipped,
    in float64 by hand, whichever space."""
    a, _ = imgs
    stylized = np.clip(a[::-1] * 1.3 - 0.1, 0, 1)
    w = np.array([0.299, 0.587, 0.114])
    want = np.clip(a + ((stylized - a).astype(np.float64) @ w)[..., None], 0, 1)
    for space in ("yiq", "yuv"):
        np.testing.assert_allclose(np.asarray(color.transfer_luminance(stylized, a, space)),
                                   want, atol=2e-6, err_msg=space)


def test_match_luminance_moments(imgs):
    a, b = imgs
    out = np.asarray(color.match_luminance(b, a))
    assert out.shape == b.shape
    y, ya = np.asarray(color.luminance(out)), np.asarray(color.luminance(a))
    np.testing.assert_allclose(y.mean(axis=(1, 2)), ya.mean(axis=(1, 2)), atol=1e-3)
    np.testing.assert_allclose(y.std(axis=(1, 2)), ya.std(axis=(1, 2)), rtol=1e-2)
    np.testing.assert_allclose(out[..., 0], out[..., 2])  # gray


@pytest.mark.parametrize("method", ["eig", "chol"])
def test_match_color_moments(imgs, method):
    a, b = imgs
    out = color.match_color(b, a, method)  # style b in the palette of content a
    m, c = (np.asarray(v) for v in color.color_stats(out))
    ma, ca = (np.asarray(v) for v in color.color_stats(a))
    mb, cb = (np.asarray(v) for v in color.color_stats(b))
    np.testing.assert_allclose(m, ma, atol=2e-3)
    np.testing.assert_allclose(c, ca, atol=2e-4)
    assert np.abs(mb - ma).max() > 0.01  # it did change something
    # the map is affine and the eig variant uses a symmetric-positive-definite product
    A, _ = color.color_transfer_matrix(b, a, method)
    assert np.all(np.isfinite(np.asarray(A)))


def test_errors():
    x = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ConfigError):
        color.to_space(x, "hsv")
    with pytest.raises(ConfigError):
        color.match_color(x, x, "svd")


# ---------------------------------------------------------------------------- palette


def test_color_moments_mix_like_the_pixel_mixture(imgs):
    a, b = imgs
    ma, mb = np.asarray(color.color_moments(a[0])), np.asarray(color.color_moments(b[0]))
    assert ma.shape == (color.MOMENTS_DIM,)
    # the pixels of both images together: the mixture with weights = pixel shares
    pa, pb = a[0].reshape(-1, 3), b[0].reshape(-1, 3)
    pixels = np.concatenate([pa, pb, pb])
    w = len(pa) / len(pixels)
    mix = np.asarray(color.color_moments(pixels.reshape(1, -1, 3)))
    np.testing.assert_allclose(mix, w * ma + (1 - w) * mb, atol=1e-5)
    mean, cov = (np.asarray(t) for t in color.stats_from_moments(mix))
    np.testing.assert_allclose(mean, pixels.mean(0), atol=1e-5)
    np.testing.assert_allclose(cov, np.cov(pixels.T, bias=True), atol=1e-5)
    with pytest.raises(ConfigError, match="12 values"):
        color.stats_from_moments(np.zeros(9))


def test_color_stats_with_a_mask_are_those_of_the_masked_in_pixels(imgs):
    """``color_stats(x, mask)``: numpy mean and covariance of the masked-in region only (the
    padding, with other colours, must count neither in the mean, nor in the centred
    differences, nor in the pixel count), per example of a batch."""
    a, _ = imgs
    x = a.copy()
    x[0, 10:] = np.clip(x[0, 10:] * 0.3 + 0.6, 0, 1)  # padding of other colours
    x[0, :, 12:] = 0.05
    mask = np.zeros(x.shape[:3], np.float32)
    mask[0, :10, :12] = 1
    mask[1, :7, :20] = 1
    mean, cov = (np.asarray(t) for t in color.color_stats(x, mask))
    assert mean.shape == (2, 3) and cov.shape == (2, 3, 3)
    for i, (h, w) in enumerate(((10, 12), (7, 20))):
        px = x[i, :h, :w].reshape(-1, 3).astype(np.float64)
        np.testing.assert_allclose(mean[i], px.mean(0), atol=1e-6)
        np.testing.assert_allclose(cov[i], np.cov(px.T, bias=True), atol=1e-6)
    # a full mask is no mask
    full = color.color_stats(x, np.ones(x.shape[:3], np.float32))
    for got, want in zip(full, color.color_stats(x)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_align_to_moments_amounts(imgs):
    a, b = imgs
    target = color.color_moments(b)
    full = np.asarray(color.align_to_moments(a, target, 1.0, eps=1e-5))
    # amount 1 is match_color (same map; a's values stay inside [0, 1] here)
    np.testing.assert_allclose(full, np.asarray(color.match_color(a, b, "eig")), atol=1e-5)
    got_mean, got_cov = color.color_stats(full)
    want_mean, want_cov = color.stats_from_moments(target)
    np.testing.assert_allclose(np.asarray(got_mean), np.asarray(want_mean), atol=2e-3)
    np.testing.assert_allclose(np.asarray(got_cov), np.asarray(want_cov), atol=2e-3)
    np.testing.assert_allclose(np.asarray(color.align_to_moments(a, target, 0.0)), a, atol=1e-6)
    half = np.asarray(color.align_to_moments(a, target, 0.5, eps=1e-5))
    np.testing.assert_allclose(half, np.clip(0.5 * a + 0.5 * full, 0, 1), atol=1e-5)


def test_align_to_moments_gradient_is_the_fixed_affine_map(imgs):
    import jax
    import jax.numpy as jnp

    a, b = imgs
    target = color.color_moments(b[:1])
    x = jnp.asarray(a[:1])
    a_mat, _ = color.color_transfer_matrix(a[:1], b[:1], "eig", 1e-4)
    amount = 0.3
    v = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    g = jax.grad(lambda z: jnp.sum(color.align_to_moments(z, target, amount) * v))(x)
    # d/dx of x + t (A x + b - x) with A, b held fixed: (1 - t) v + t A^T v
    want = (1 - amount) * v + amount * np.einsum("...i,ij->...j", v, np.asarray(a_mat)[0])
    np.testing.assert_allclose(np.asarray(g), want, rtol=1e-4, atol=1e-5)
    # a flat grey image (a repeated covariance eigenvalue) still has a finite gradient
    grey = jnp.full((1, 8, 8, 3), 0.5)
    g = jax.grad(lambda z: jnp.sum(color.align_to_moments(z, target, 0.5)))(grey)
    assert np.all(np.isfinite(np.asarray(g)))


def _x64_check_grads(f, x, v):
    """Directional derivative of ``f`` at ``x`` along ``v``: autodiff vs central differences,
    both in float64."""
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        x, v = jnp.asarray(x, jnp.float64), jnp.asarray(v, jnp.float64)
        _, jvp = jax.jvp(f, (x,), (v,))
        h = 1e-6
        fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
        return np.asarray(jvp), np.asarray(fd)


@pytest.mark.parametrize("p", [0.5, -0.5])
def test_sym_pow_derivative_matches_finite_differences(p):
    rng = np.random.default_rng(3)
    q = rng.normal(size=(2, 3, 3))
    c = q @ np.swapaxes(q, -1, -2) / 3 + 0.01 * np.eye(3)  # SPD, distinct eigenvalues
    d = rng.normal(size=(2, 3, 3))
    d = d + np.swapaxes(d, -1, -2)
    jvp, fd = _x64_check_grads(lambda m: color._sym_pow(m, p, 1e-4), c, d)
    np.testing.assert_allclose(jvp, fd, rtol=1e-5, atol=1e-7)


def test_sym_pow_derivative_is_finite_and_exact_at_repeated_eigenvalues():
    """At ``C = lambda I`` (a grey image's covariance is 0: all eigenvalues repeat) the
    derivative of ``C^p`` along symmetric ``D`` is ``p lambda^(p-1) D``; below the floor, 0."""
    import jax

    d = np.random.default_rng(4).normal(size=(3, 3))
    d = d + d.T
    lam = 0.04
    jvp, fd = _x64_check_grads(lambda m: color._sym_pow(m, -0.5, 1e-4), lam * np.eye(3), d)
    np.testing.assert_allclose(jvp, -0.5 * lam ** -1.5 * d, rtol=1e-6)
    np.testing.assert_allclose(jvp, fd, rtol=1e-5)
    # float32 reverse mode through a zero covariance (floored): finite, zero
    g = jax.grad(lambda m: color._sym_pow(m, -0.5, 1e-4).sum())(np.zeros((3, 3), np.float32))
    np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_align_to_moments_exact_gradient(imgs):
    """``exact_gradient=True``: the derivative of the whole map (through A and b) agrees with
    finite differences, and differs from the fixed-map surrogate; grey inputs stay finite."""
    import jax
    import jax.numpy as jnp

    a, b = imgs
    target = np.asarray(color.color_moments(b[:1]), np.float64)
    # a colour shift of every pixel (which the map's b undoes) plus noise
    v = 0.1 * np.random.default_rng(5).normal(size=a[:1].shape) + np.array([1.0, -0.5, 0.2])
    f = lambda z: color.align_to_moments(z, target, 0.5, exact_gradient=True)  # noqa: E731
    jvp, fd = _x64_check_grads(f, a[:1], v)
    np.testing.assert_allclose(jvp, fd, rtol=1e-4, atol=1e-6)
    surrogate, _ = _x64_check_grads(lambda z: color.align_to_moments(z, target, 0.5), a[:1], v)
    assert np.abs(surrogate - jvp).max() > 0.2 * np.abs(jvp).max()
    # same forward values either way
    np.testing.assert_array_equal(np.asarray(f(a[:1])),
                                  np.asarray(color.align_to_moments(a[:1], target, 0.5)))
    grey = jnp.full((1, 8, 8, 3), 0.5)
    g = jax.grad(lambda z: jnp.sum(color.align_to_moments(
        z, target.astype(np.float32), 0.5, exact_gradient=True) * jnp.arange(3.0)))(grey)
    assert np.all(np.isfinite(np.asarray(g)))


def test_integer_images_are_read_as_the_package_reads_them(rng):
    """uint8 is 0..255 and uint16 0..65535 (they were taken as floats up to 255: moments ~144,
    clipped matches); other integer types are refused."""
    from arbitrary_nst.errors import ConfigError

    x = rng.random((12, 10, 3)).astype(np.float32)
    u8 = np.round(x * 255).astype(np.uint8)
    f = u8.astype(np.float32) / 255
    u16 = (f.astype(np.float64) * 65535).round().astype(np.uint16)
    for fn in (color.color_moments, color.luminance, color.rgb_to_yiq,
               lambda a: color.match_color(a, a[::-1]),
               lambda a: color.transfer_luminance(a, a[:, ::-1]),
               lambda a: color.color_stats(a)[1]):
        want = np.asarray(fn(f))
        np.testing.assert_allclose(np.asarray(fn(u8)), want, atol=1e-5)
        np.testing.assert_allclose(np.asarray(fn(u16)), want, atol=1e-4)
    with pytest.raises(ConfigError, match="int32"):
        color.color_moments(u8.astype(np.int32))


# ------------------------------------------------- mutation-testing pass 2 (color helpers)


def test_match_luminance_is_one_affine_map_per_image():
    """``match_luminance`` shifts and scales the source's luminance with the statistics of the
    whole image (float64 numpy reference), then clips: rows standardized one by one also give
    the target's overall mean and std, but destroy the source's vertical structure; an unclipped
    result left the [0, 1] range."""
    rng = np.random.default_rng(5)
    yy = np.linspace(0.0, 1.0, 12)[:, None, None]
    src = np.clip(0.1 + 0.7 * yy + 0.05 * rng.standard_normal((2, 12, 10, 3)), 0, 1)
    src = src.astype(np.float32)  # dark top rows, bright bottom rows: rows differ in mean
    tgt = rng.uniform(0.0, 1.0, (2, 9, 14, 3)).astype(np.float32)
    tgt[1] = np.clip(tgt[1] + 0.4, 0.0, 1.0)  # a bright target: the map overshoots 1
    out = np.asarray(color.match_luminance(src, tgt))
    w = np.array([0.299, 0.587, 0.114])
    ys, yt = src.astype(np.float64) @ w, tgt.astype(np.float64) @ w
    for i in range(2):
        y = (ys[i] - ys[i].mean()) * (yt[i].std() / (ys[i].std() + 1e-5)) + yt[i].mean()
        want = np.clip(y, 0.0, 1.0)
        np.testing.assert_allclose(out[i], np.repeat(want[..., None], 3, -1), atol=2e-5)
    assert out.max() <= 1.0 and (out == 1.0).any()  # the clip was needed


def test_sym_pow_derivative_along_a_nonsymmetric_direction():
    """``eigh`` reads the symmetric part of its input, so ``C^p`` depends on ``(C + C^T) / 2``
    only: its derivative along a non-symmetric ``D`` is that along ``(D + D^T) / 2`` (finite
    differences in float64). The custom JVP without the symmetrization gave another result, and
    so did ``jax.jacfwd`` of any caller."""
    rng = np.random.default_rng(6)
    q = rng.normal(size=(3, 3))
    c = q @ q.T / 3 + 0.05 * np.eye(3)
    d = rng.normal(size=(3, 3))  # not symmetric
    jvp, fd = _x64_check_grads(lambda m: color._sym_pow(m, -0.5, 1e-4), c, d)
    np.testing.assert_allclose(jvp, fd, rtol=1e-5, atol=1e-7)
    jvp_sym, _ = _x64_check_grads(lambda m: color._sym_pow(m, -0.5, 1e-4), c, 0.5 * (d + d.T))
    np.testing.assert_allclose(jvp, jvp_sym, rtol=1e-9, atol=1e-12)


def test_matching_to_moments_equals_matching_to_the_image():
    """The content's colours are measured once on the whole photo (numpy, float64 sums) and
    styles matched to those moments: the same as matching them to the photo itself."""
    rng = np.random.default_rng(7)
    photo = rng.random((45, 130, 3)).astype(np.float32) ** np.array([1.0, 2.0, 0.5], np.float32)
    styles = rng.random((2, 32, 32, 3)).astype(np.float32) * 0.5 + 0.2
    m = color.color_moments_np(photo)
    assert m.dtype == np.float32 and m.shape == (color.MOMENTS_DIM,)
    flat = photo.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(m[:3], flat.mean(0), atol=1e-7)
    np.testing.assert_allclose(m[3:], (flat.T @ flat / len(flat)).reshape(9), atol=1e-6)
    np.testing.assert_allclose(color.match_color_to_moments(styles, m),
                               color.match_color(styles, photo), atol=2e-5)
