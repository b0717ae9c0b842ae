"""Colour helpers: colour spaces, luminance transfer, mean/covariance colour matching."""
from __future__ import annotations

import jax
import jax.numpy as jnp
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
    # the host twin (onnxruntime's outputs: no compile per image size)
    np.testing.assert_allclose(color.transfer_luminance_np(stylized, a), want, atol=2e-6)
    with pytest.raises(ConfigError, match="shapes differ"):
        color.transfer_luminance_np(stylized[:, :8], a)


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
        # the host twin of one crop (the onnxruntime backend's palette)
        m_np, c_np = color.color_stats_np(x[i, :h, :w])
        np.testing.assert_allclose(m_np, px.mean(0), atol=1e-6)
        np.testing.assert_allclose(c_np, np.cov(px.T, bias=True), atol=1e-6)
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


def test_arrays_in_the_other_byte_order_are_read_as_their_values(rng):
    """A big-endian array (``np.frombuffer`` of FITS or PNG bytes: ``>f4``, ``>u2``) was a raw
    jax TypeError from every colour function; it is the same image."""
    x = rng.random((12, 10, 3)).astype(np.float32)
    u16 = (x * 65535).round().astype(np.uint16)
    mask = (rng.random((12, 10)) > 0.5).astype(np.float32)
    for native in (x, u16):
        swapped = native.astype(native.dtype.newbyteorder(">"))
        assert not swapped.dtype.isnative
        for fn in (color.color_moments, color.luminance, color.rgb_to_yiq,
                   lambda a: color.match_color(a, x[::-1]),
                   lambda a: color.color_stats(a, mask=mask.astype(">f4"))[1]):
            np.testing.assert_array_equal(np.asarray(fn(swapped)), np.asarray(fn(native)))


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
    # a flat source (black, one colour): the gradient was NaN everywhere (jnp.std at 0)
    for flat in (np.zeros((1, 8, 8, 3), np.float32), np.full((1, 8, 8, 3), (0.9, 0.1, 0.1),
                                                             np.float32)):
        g = jax.grad(lambda x: color.match_luminance(x, tgt[:1]).sum())(jnp.asarray(flat))
        assert np.all(np.isfinite(np.asarray(g)))


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


# ------------------------------------------------------------- mutation-testing additions


def test_sym_pow_derivative_is_accurate_in_float32_at_nearly_repeated_eigenvalues():
    """Eigenvalues 1e-5 apart (relative): the divided difference ``(f(a) - f(b)) / (a - b)``
    loses most digits to cancellation in float32, so such pairs use ``f'`` at the midpoint.
    Reference: the exact divided differences in float64 (diagonal C: ``dF = K o dC``)."""
    import jax

    w = np.array([0.04, 0.04 * (1 + 1e-5), 0.01])
    d = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.3], [0.5, 0.3, 0.0]])
    f = lambda x: x ** 0.5  # noqa: E731
    k = np.empty((3, 3))
    for i in range(3):
        for j in range(3):
            k[i, j] = (0.5 * w[i] ** -0.5 if i == j else (f(w[i]) - f(w[j])) / (w[i] - w[j]))
    _, jvp = jax.jvp(lambda m: color._sym_pow(m, 0.5, 1e-5), (np.diag(w).astype(np.float32),),
                     (d.astype(np.float32),))
    np.testing.assert_allclose(np.asarray(jvp), k * d, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["eig", "chol"])
def test_match_color_with_grey_or_flat_images_is_finite(method):
    """A grey source (rank-1 colour covariance) or a flat target (zero covariance): ``eps``
    regularizes both methods, so the result is finite, never NaN."""
    ramp = np.repeat(np.linspace(0.2, 0.8, 16, dtype=np.float32)[:, None, None], 3, axis=2)
    grey = np.broadcast_to(ramp, (16, 8, 3))
    colourful = np.random.default_rng(0).uniform(0.2, 0.8, (8, 8, 3)).astype(np.float32)
    flat = np.full((8, 8, 3), [0.6, 0.3, 0.2], np.float32)
    for src, tgt in ((grey, colourful), (colourful, flat), (grey, flat)):
        out = np.asarray(color.match_color(src, tgt, method))
        assert np.all(np.isfinite(out)), method
    np.testing.assert_allclose(np.asarray(color.match_color(colourful, flat, method)).mean((0, 1)),
                               [0.6, 0.3, 0.2], atol=1e-3)


def test_color_stats_with_an_all_zero_mask_is_finite():
    x = np.random.default_rng(1).uniform(size=(2, 4, 5, 3)).astype(np.float32)
    mean, cov = color.color_stats(x, np.zeros((2, 4, 5), np.float32))
    np.testing.assert_array_equal(np.asarray(mean), 0.0)
    np.testing.assert_array_equal(np.asarray(cov), 0.0)


def test_stats_from_moments_symmetrizes_the_covariance():
    """Moments whose second-moment block is not symmetric (e.g. mixed or rounded elsewhere):
    the covariance is the symmetric part of ``E[x x^T] - m m^T`` (numpy reference)."""
    rng = np.random.default_rng(2)
    mean = rng.uniform(0.2, 0.6, 3)
    second = np.outer(mean, mean) + np.diag([0.02, 0.03, 0.01])
    second[0, 1] += 0.004  # asymmetric: (0, 1) and (1, 0) differ
    moments = np.concatenate([mean, second.reshape(9)]).astype(np.float32)
    m, c = color.stats_from_moments(moments)
    cov = second - np.outer(mean, mean)
    np.testing.assert_allclose(np.asarray(m), mean, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(c), 0.5 * (cov + cov.T), atol=1e-6)


def _np_sqrt_pow(c, p, eps):
    w, v = np.linalg.eigh(c)
    return (v * np.maximum(w, eps) ** p) @ v.T


def _np_stats(x, mask=None):
    flat = np.asarray(x, np.float64).reshape(-1, 3)
    m = np.ones(len(flat)) if mask is None else np.asarray(mask, np.float64).reshape(-1)
    mean = (m[:, None] * flat).sum(0) / m.sum()
    d = (flat - mean) * m[:, None]
    return mean, d.T @ d / m.sum()


def test_match_color_eig_against_a_float64_reference_and_clipped():
    """``clip(A (x - mu_s) + mu_t)`` with ``A = C_t^(1/2) C_s^(-1/2)`` (numpy, float64); the
    target's wide range pushes part of the unclipped result outside [0, 1]."""
    rng = np.random.default_rng(5)
    src = rng.uniform(0.3, 0.7, (10, 12, 3)).astype(np.float32)
    tgt = rng.uniform(0.0, 1.0, (9, 7, 3)).astype(np.float32) ** 3
    ms, cs = _np_stats(src)
    mt, ct = _np_stats(tgt)
    a = _np_sqrt_pow(ct, 0.5, 1e-5) @ _np_sqrt_pow(cs, -0.5, 1e-5)
    raw = (src.reshape(-1, 3) - ms) @ a.T + mt
    assert raw.min() < 0.0 or raw.max() > 1.0  # (the case the clipping is for)
    out = np.asarray(color.match_color(src, tgt, "eig"))
    np.testing.assert_allclose(out, np.clip(raw, 0, 1).reshape(src.shape), atol=2e-4)


def test_align_to_moments_measures_the_masked_in_pixels_only():
    """With a mask the source statistics are those of the masked-in pixels (the padding of a
    bucketed batch is ignored), and the map applies to every pixel (numpy reference)."""
    rng = np.random.default_rng(6)
    x = rng.uniform(0.2, 0.8, (8, 10, 3)).astype(np.float32)
    mask = np.zeros((8, 10), np.float32)
    mask[:6, :7] = 1.0
    x[6:] = 0.0  # padding
    x[:, 7:] = 0.0
    mt, ct = np.array([0.5, 0.4, 0.45]), np.diag([0.02, 0.01, 0.015])
    moments = np.concatenate([mt, (ct + np.outer(mt, mt)).reshape(9)]).astype(np.float32)
    ms, cs = _np_stats(x, mask)
    a = _np_sqrt_pow(ct, 0.5, 1e-4) @ _np_sqrt_pow(cs, -0.5, 1e-4)
    ref = np.clip((x.reshape(-1, 3) - ms) @ a.T + mt, 0, 1).reshape(x.shape)
    out = np.asarray(color.align_to_moments(x, moments, mask=mask))
    np.testing.assert_allclose(out, ref, atol=2e-4)


def test_moments_of_the_wrong_size_are_a_config_error():
    x = np.full((2, 2, 3), 0.5, np.float32)
    for n in (11, 13, 24):
        with pytest.raises(ConfigError, match="12 values"):
            color.stats_from_moments(np.zeros(n, np.float32))
        with pytest.raises(ConfigError, match="12 values"):
            color.align_to_moments(x, np.zeros(n, np.float32))


def test_chroma_channels_are_the_textbook_yiq_and_yuv():
    """BT.601 ``U = 0.492111 (B - Y)``, ``V = 0.877283 (R - Y)``; NTSC
    ``I = 0.5959 R - 0.2746 G - 0.3213 B``, ``Q = 0.2115 R - 0.5227 G + 0.3112 B``."""
    x = np.random.default_rng(7).uniform(size=(3, 4, 3)).astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    uv = np.stack([0.492111 * (b - y), 0.877283 * (r - y)], -1)
    iq = np.stack([0.5959 * r - 0.2746 * g - 0.3213 * b, 0.2115 * r - 0.5227 * g + 0.3112 * b], -1)
    np.testing.assert_allclose(np.asarray(color.chroma(x.astype(np.float32), "yuv")), uv, atol=2e-4)
    np.testing.assert_allclose(np.asarray(color.chroma(x.astype(np.float32), "yiq")), iq, atol=2e-4)
    np.testing.assert_allclose(np.asarray(color.to_space(x.astype(np.float32), "yuv"))[..., 0], y,
                               atol=1e-5)


def test_match_color_to_moments_uses_the_default_eps():
    """A low-contrast target (colour variances ~3e-3) against the float64 reference with the
    default ``eps`` 1e-5: a larger floor would change the result."""
    rng = np.random.default_rng(8)
    src = rng.uniform(0.1, 0.9, (12, 10, 3)).astype(np.float32)
    tgt = rng.uniform(0.4, 0.6, (10, 10, 3)).astype(np.float32)
    ms, cs = _np_stats(src)
    mt, ct = _np_stats(tgt)
    a = _np_sqrt_pow(ct, 0.5, 1e-5) @ _np_sqrt_pow(cs, -0.5, 1e-5)
    ref = np.clip((src.reshape(-1, 3) - ms) @ a.T + mt, 0, 1).reshape(src.shape)
    out = np.asarray(color.match_color_to_moments(src, color.color_moments_np(tgt)))
    np.testing.assert_allclose(out, ref, atol=2e-4)


def test_align_to_moments_floors_a_nearly_grey_output_at_the_default_eps():
    """A nearly grey output (chroma variances ~1e-6, below the default floor 1e-4): the floor
    keeps the palette from blowing its faint colour noise up to the target's full colour
    spread (float64 reference with eps 1e-4; a smaller default made speckled images)."""
    rng = np.random.default_rng(9)
    ramp = np.linspace(0.2, 0.8, 12 * 10).reshape(12, 10, 1)
    x = (ramp + 1e-3 * rng.standard_normal((12, 10, 3))).astype(np.float32)
    mt, ct = np.array([0.5, 0.4, 0.45]), np.diag([0.02, 0.01, 0.015])
    moments = np.concatenate([mt, (ct + np.outer(mt, mt)).reshape(9)]).astype(np.float32)
    ms, cs = _np_stats(x)
    assert np.linalg.eigvalsh(cs)[:2].max() < 1e-5  # (the case the floor is for)
    a = _np_sqrt_pow(ct, 0.5, 1e-4) @ _np_sqrt_pow(cs, -0.5, 1e-4)
    ref = np.clip((x.reshape(-1, 3) - ms) @ a.T + mt, 0, 1).reshape(x.shape)
    np.testing.assert_allclose(np.asarray(color.align_to_moments(x, moments)), ref, atol=2e-4)


def test_sym_pow_derivative_uses_divided_differences_for_eigenvalues_a_few_percent_apart():
    """Eigenvalues 5% apart (a nearly isotropic colour covariance) are not "repeated": the
    derivative of ``C^p`` is the exact divided difference, not ``f'`` at the midpoint (which
    is off by ~1e-4 relative there). Closed form in float64 for a diagonal ``C``:
    ``dF = K o dC`` (Daleckii-Krein)."""
    import jax

    w = np.array([0.04, 0.04 * 1.05, 0.01])
    d = np.array([[0.3, 1.0, 0.5], [1.0, -0.2, 0.3], [0.5, 0.3, 0.1]])
    for p in (0.5, -0.5):
        f = lambda x: x ** p  # noqa: E731
        k = np.array([[p * w[i] ** (p - 1) if i == j else (f(w[i]) - f(w[j])) / (w[i] - w[j])
                       for j in range(3)] for i in range(3)])
        with jax.enable_x64(True):
            _, jvp = jax.jvp(lambda m: color._sym_pow(m, p, 1e-5), (np.diag(w),), (d,))
            np.testing.assert_allclose(np.asarray(jvp), k * d, rtol=1e-7, err_msg=str(p))


def test_color_moments_np_of_a_low_contrast_megapixel_photo_are_float64_accurate():
    """``color_moments_np`` centres the pixels before the float32 product and sums the mean in
    float64: a low-contrast 1 MP photo's second moments are E[x x^T] to float32 rounding
    (uncentred, the float32 sum put them ~1e-6 off, 1% of the covariance; a float32 mean
    ~4e-3)."""
    rng = np.random.default_rng(8)
    photo = (0.8 + 0.01 * rng.standard_normal((1000, 1000, 3))).astype(np.float32)
    m = color.color_moments_np(photo).astype(np.float64)
    flat = photo.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(m[:3], flat.mean(0), rtol=0, atol=1e-7)
    np.testing.assert_allclose(m[3:], (flat.T @ flat / len(flat)).reshape(9), rtol=0, atol=2e-7)
