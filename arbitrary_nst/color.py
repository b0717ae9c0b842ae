"""Colour helpers for colour-preserving style transfer (Gatys et al. 2017, "Preserving Color in
Neural Artistic Style Transfer").

Two ways to keep the content's colours:

* **Luminance-only transfer**: stylize the luminance only and take the chroma from the content.
  :func:`transfer_luminance` combines the luminance (``Y``) of a stylized image with the chroma
  (``I, Q`` in YIQ or ``U, V`` in YUV) of the content; :func:`match_luminance` first gives the
  style's luminance the content's mean and standard deviation, so that the transferred
  brightness range fits the content.
* **Colour matching**: :func:`match_color` applies the affine map ``x -> A (x - mu_s) + mu_t``
  that gives the source (the style image) the mean and the 3x3 colour covariance of the target
  (the content); ``A = Sigma_t^(1/2) Sigma_s^(-1/2)`` with symmetric square roots from an
  eigendecomposition (``method="eig"``, the "image analogies" variant of the paper) or
  ``A = L_t L_s^(-1)`` from Cholesky factors (``method="chol"``).

The same affine map also does the opposite job, the **palette** of stylized outputs
(:func:`align_to_moments`): it moves an output's colours toward the style's. The target is
given as colour *moments* (:func:`color_moments`: the mean and the raw second moment
``E[x x^T]``), because convex combinations of moments are exactly the moments of the mixed pixel
distributions, so the palettes of several styles (and of the content, for the strength knob) mix
with the same weights as their embeddings.

Everything works on NumPy or JAX arrays of shape ``[..., H, W, 3]`` (RGB in [0, 1]), is jittable
and returns JAX arrays; a leading batch axis is mapped over.
"""
from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from .errors import ConfigError

ColorSpace = Literal["yiq", "yuv"]
MatchMethod = Literal["eig", "chol"]
COLOR_SPACES = ("yiq", "yuv")
MATCH_METHODS = ("eig", "chol")

# (numpy constants: a jax array made at import would start the JAX backend on
# ``import arbitrary_nst``, before a multi-host run can call jax.distributed.initialize)
#: RGB -> YIQ (NTSC 1953, as in Gatys et al. 2017 and neural-style's ``-original_colors``).
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                       [0.595716, -0.274453, -0.321263],
                       [0.211456, -0.522591, 0.311135]], np.float32)
#: RGB -> YUV (BT.601, analog).
RGB_TO_YUV = np.array([[0.299, 0.587, 0.114],
                       [-0.14714119, -0.28886916, 0.43601035],
                       [0.61497538, -0.51496512, -0.10001026]], np.float32)
RGB_TO_YIQ.flags.writeable = RGB_TO_YUV.flags.writeable = False  # (constants, as jax arrays)


def _matrix(space: ColorSpace) -> np.ndarray:
    if space == "yiq":
        return RGB_TO_YIQ
    if space == "yuv":
        return RGB_TO_YUV
    raise ConfigError(f"colour space must be one of {COLOR_SPACES}, got {space!r}")


def _jnp(x) -> jax.Array:
    """``jnp.asarray``, also of a numpy array in the other byte order (``>f4`` from
    ``np.frombuffer`` of FITS or PNG bytes), which jax refuses with a raw TypeError."""
    if isinstance(x, np.ndarray) and not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    return jnp.asarray(x)


def _f32(x) -> jax.Array:
    x = _jnp(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _rgb(x) -> jax.Array:
    """An RGB image as floats in [0, 1]: uint8 is 0..255 and uint16 0..65535 (as everywhere
    in the package; they were taken as floats up to 255), other integer types are refused."""
    x = _jnp(x)
    if x.dtype in (jnp.uint8, jnp.uint16):
        return x.astype(jnp.float32) / float(jnp.iinfo(x.dtype).max)
    if jnp.issubdtype(x.dtype, jnp.integer):
        raise ConfigError(f"colour functions take RGB as floats in [0, 1], uint8 or uint16; "
                          f"got {x.dtype}")
    return _f32(x)


def rgb_to_yiq(x) -> jax.Array:
    """``[..., 3]`` RGB -> YIQ (Y in [0, 1], I, Q signed)."""
    return _rgb(x) @ RGB_TO_YIQ.T


def yiq_to_rgb(x) -> jax.Array:
    """Inverse of :func:`rgb_to_yiq` (not clipped)."""
    return _f32(x) @ jnp.linalg.inv(RGB_TO_YIQ).T


def rgb_to_yuv(x) -> jax.Array:
    """``[..., 3]`` RGB -> YUV (BT.601)."""
    return _rgb(x) @ RGB_TO_YUV.T


def yuv_to_rgb(x) -> jax.Array:
    """Inverse of :func:`rgb_to_yuv` (not clipped)."""
    return _f32(x) @ jnp.linalg.inv(RGB_TO_YUV).T


def to_space(x, space: ColorSpace = "yiq") -> jax.Array:
    """RGB -> ``space`` (``"yiq"`` or ``"yuv"``)."""
    return _rgb(x) @ _matrix(space).T


def from_space(x, space: ColorSpace = "yiq") -> jax.Array:
    """``space`` -> RGB (not clipped)."""
    return _f32(x) @ jnp.linalg.inv(_matrix(space)).T


def luminance(x) -> jax.Array:
    """``[..., H, W, 3]`` RGB -> ``[..., H, W]`` luma ``Y`` (same in YIQ and YUV)."""
    return _rgb(x) @ RGB_TO_YIQ[0]


def gray_rgb(x) -> jax.Array:
    """The luminance replicated into 3 channels (what VGG sees in luminance-only transfer)."""
    y = luminance(x)
    return jnp.repeat(y[..., None], 3, axis=-1)


def chroma(x, space: ColorSpace = "yiq") -> jax.Array:
    """The two chroma channels (``I, Q`` or ``U, V``): ``[..., H, W, 2]``."""
    return to_space(x, space)[..., 1:]


def transfer_luminance(stylized, content, space: ColorSpace = "yiq") -> jax.Array:
    """Luminance of ``stylized`` with the chroma of ``content`` (same shapes), clipped to
    [0, 1]. This is neural-style's ``-original_colors 1`` and the final step of Gatys et al.'s
    luminance-only transfer. ``space`` does not change the result: YIQ and YUV share the
    luminance row and their chroma rows sum to 0, so the inverse maps a luminance change to
    the same change of R, G and B in both (output = content + (Y(stylized) - Y(content)),
    clipped); both are offered as neural-style and the papers name them."""
    s = to_space(stylized, space)
    c = to_space(content, space)
    if s.shape != c.shape:
        raise ConfigError(f"transfer_luminance: shapes differ: {s.shape} vs {c.shape}")
    out = jnp.concatenate([s[..., :1], c[..., 1:]], axis=-1)
    return jnp.clip(from_space(out, space), 0.0, 1.0)


def _std(y: jax.Array, eps: float) -> jax.Array:
    """Per-image std over (H, W), ``sqrt(var + eps^2)``: finite gradient at zero variance."""
    return jnp.sqrt(jnp.var(y, axis=(-2, -1), keepdims=True) + eps * eps)


def match_luminance(source, target, eps: float = 1e-5) -> jax.Array:
    """Gray RGB image whose luminance is ``source``'s luminance shifted and scaled to the mean and
    standard deviation of ``target``'s luminance (Gatys et al. 2017, eq. 1), clipped to [0, 1].
    ``source`` and ``target`` may have different sizes; statistics are per image (over H, W)."""
    ys, yt = luminance(source), luminance(target)
    # sqrt(var + eps^2), not jnp.std: the std's gradient at a flat image is 0/0 (NaN)
    ms, ss = jnp.mean(ys, axis=(-2, -1), keepdims=True), _std(ys, eps)
    mt, st = jnp.mean(yt, axis=(-2, -1), keepdims=True), _std(yt, eps)
    y = (ys - ms) * (st / (ss + eps)) + mt
    return jnp.repeat(jnp.clip(y, 0.0, 1.0)[..., None], 3, axis=-1)


def color_stats(x, mask=None) -> tuple[jax.Array, jax.Array]:
    """Mean ``[..., 3]`` and covariance ``[..., 3, 3]`` of the pixels of ``[..., H, W, 3]``;
    with ``mask`` (``[..., H, W]``, 0/1) of the masked-in pixels only."""
    x = _rgb(x)
    flat = x.reshape(*x.shape[:-3], -1, 3)
    if mask is None:
        mean = jnp.mean(flat, axis=-2)
        d = flat - mean[..., None, :]
        return mean, jnp.einsum("...ni,...nj->...ij", d, d) / flat.shape[-2]
    m = jnp.broadcast_to(_jnp(mask).astype(x.dtype), x.shape[:-1]).reshape(flat.shape[:-1])
    n = jnp.maximum(jnp.sum(m, axis=-1), 1.0)[..., None]
    mean = jnp.einsum("...n,...ni->...i", m, flat) / n
    d = (flat - mean[..., None, :]) * m[..., None]
    return mean, jnp.einsum("...ni,...nj->...ij", d, d) / n[..., None]


def _floored_pow(w: jax.Array, p: float, eps: float) -> jax.Array:
    return jnp.maximum(w, eps) ** p


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _sym_pow(c: jax.Array, p: float, eps: float) -> jax.Array:
    """``C^p`` of symmetric ``[..., 3, 3]`` matrices, eigenvalues floored at ``eps``."""
    w, v = jnp.linalg.eigh(c)
    return (v * _floored_pow(w, p, eps)[..., None, :]) @ jnp.swapaxes(v, -1, -2)


@_sym_pow.defjvp
def _sym_pow_jvp(p, eps, primals, tangents):
    """Daleckii-Krein: ``dF = V (K o (V^T dC V)) V^T`` with ``K_ij`` the divided difference
    ``(f(w_i) - f(w_j)) / (w_i - w_j)``, and ``f'`` at the midpoint where ``w_i ~ w_j``. Unlike
    autodiff through ``eigh`` (whose eigenvector derivative divides by ``w_i - w_j``), this is
    finite for repeated eigenvalues (a grey image's colour covariance) and exact elsewhere."""
    (c,), (dc,) = primals, tangents
    w, v = jnp.linalg.eigh(c)
    fw = _floored_pow(w, p, eps)
    vt = jnp.swapaxes(v, -1, -2)
    out = (v * fw[..., None, :]) @ vt
    wi, wj = w[..., :, None], w[..., None, :]
    diff = wi - wj
    close = jnp.abs(diff) <= 1e-3 * jnp.maximum(jnp.maximum(jnp.abs(wi), jnp.abs(wj)), eps)
    mid = 0.5 * (wi + wj)
    slope = jnp.where(mid > eps, p * jnp.maximum(mid, eps) ** (p - 1), 0.0)
    k = jnp.where(close, slope,
                  (fw[..., :, None] - fw[..., None, :]) / jnp.where(close, 1.0, diff))
    dc = 0.5 * (dc + jnp.swapaxes(dc, -1, -2))
    return out, v @ (k * (vt @ dc @ v)) @ vt


def color_transfer_matrix(source, target, method: MatchMethod = "eig",
                          eps: float = 1e-5) -> tuple[jax.Array, jax.Array]:
    """``(A, b)`` such that ``source @ A.T + b`` has ``target``'s colour mean and covariance."""
    ms, cs = color_stats(source)
    mt, ct = color_stats(target)
    eye = jnp.eye(3, dtype=cs.dtype)
    if method == "eig":
        return _eig_affine(ms, cs, mt, ct, eps)
    if method == "chol":
        ls = jnp.linalg.cholesky(cs + eps * eye)
        lt = jnp.linalg.cholesky(ct + eps * eye)
        a = lt @ jnp.linalg.inv(ls)
    else:
        raise ConfigError(f"colour matching method must be one of {MATCH_METHODS}, got {method!r}")
    return a, mt - jnp.einsum("...ij,...j->...i", a, ms)


def _eig_affine(ms, cs, mt, ct, eps: float) -> tuple[jax.Array, jax.Array]:
    """``(A, b)`` with symmetric square roots: mean/covariance ``(ms, cs)`` -> ``(mt, ct)``."""
    a = _sym_pow(ct, 0.5, eps) @ _sym_pow(cs, -0.5, eps)
    return a, mt - jnp.einsum("...ij,...j->...i", a, ms)


def match_color(source, target, method: MatchMethod = "eig", eps: float = 1e-5) -> jax.Array:
    """``source`` with its colours mapped to the mean and covariance of ``target``'s colours
    (clipped to [0, 1]). In colour-preserving transfer the source is the style image and the target
    is the content, so the style's textures arrive in the content's palette."""
    return _affine(source, *color_transfer_matrix(source, target, method, eps))


def match_color_to_moments(source, moments, eps: float = 1e-5) -> jax.Array:
    """:func:`match_color` (``"eig"``) to a target given by its :func:`color_moments`
    ``[..., 12]`` (e.g. a whole photo's, measured once, for styles at a working size)."""
    ms, cs = color_stats(source)
    return _affine(source, *_eig_affine(ms, cs, *stats_from_moments(moments), eps))


def _affine(x, a, b) -> jax.Array:
    out = jnp.einsum("...hwj,...ij->...hwi", _rgb(x), a) + b[..., None, None, :]
    return jnp.clip(out, 0.0, 1.0)


#: Size of :func:`color_moments`' last axis: the mean (3) and ``E[x x^T]`` (9, row-major).
MOMENTS_DIM = 12


def color_moments(x) -> jax.Array:
    """Colour moments ``[..., 12]`` of the pixels of ``[..., H, W, 3]``: the mean (3) and the
    raw second moment ``E[x x^T]`` (9, row-major). A convex combination of moments is the
    moments of the mixture of the pixel distributions (which means and covariances are not)."""
    x = _rgb(x)
    flat = x.reshape(*x.shape[:-3], -1, 3)
    mean = jnp.mean(flat, axis=-2)
    second = jnp.einsum("...ni,...nj->...ij", flat, flat) / flat.shape[-2]
    return jnp.concatenate([mean, second.reshape(*second.shape[:-2], 9)], axis=-1)


def color_moments_np(x: np.ndarray) -> np.ndarray:
    """:func:`color_moments` of one ``[H, W, 3]`` float image in numpy (``[12]`` float32): for
    the host, where every photo size would compile the jax version anew."""
    mean, cov = _stats64(x)
    second = cov + np.outer(mean, mean)
    return np.concatenate([mean, second.reshape(9)]).astype(np.float32)


def _stats64(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[3]`` and covariance ``[3, 3]`` (float64) of an ``[H, W, 3]`` image's pixels."""
    flat = np.asarray(x, np.float32).reshape(-1, 3)
    mean = flat.mean(0, dtype=np.float64)
    # centred before the float32 product: E[x x^T] of a low-contrast photo is mean mean^T plus
    # a tiny covariance, and its float32 sum over 12 MP put the covariance ~1% off
    d = flat - mean.astype(np.float32)
    dm = d.mean(0, dtype=np.float64)  # (what the float32 centring left)
    return mean, (d.T @ d).astype(np.float64) / len(flat) - np.outer(dm, dm)


def color_stats_np(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`color_stats` of one ``[H, W, 3]`` float image in numpy (mean ``[3]``, covariance
    ``[3, 3]``, float32), centred as :func:`color_moments_np`: for the host path, where the
    jax version compiled anew for every image size."""
    mean, cov = _stats64(x)
    return mean.astype(np.float32), cov.astype(np.float32)


def transfer_luminance_np(stylized: np.ndarray, content: np.ndarray) -> np.ndarray:
    """:func:`transfer_luminance` (YIQ) in numpy, float32: the content plus the change of
    luminance (the chroma rows of YIQ sum to 0, so that is the same), clipped to [0, 1]."""
    s = np.asarray(stylized, np.float32)
    c = np.asarray(content, np.float32)
    if s.shape != c.shape:
        raise ConfigError(f"transfer_luminance: shapes differ: {s.shape} vs {c.shape}")
    m = _matrix("yiq")
    out = np.concatenate([s @ m[:1].T, c @ m[1:].T], axis=-1)
    return np.clip(out @ np.linalg.inv(m).T.astype(np.float32), 0.0, 1.0)


def stats_from_moments(moments) -> tuple[jax.Array, jax.Array]:
    """``[..., 12]`` moments -> mean ``[..., 3]`` and covariance ``[..., 3, 3]``."""
    m = _f32(moments)
    if m.shape[-1] != MOMENTS_DIM:
        raise ConfigError(f"colour moments must have {MOMENTS_DIM} values, got shape {m.shape}")
    mean = m[..., :3]
    second = m[..., 3:].reshape(*m.shape[:-1], 3, 3)
    cov = second - mean[..., :, None] * mean[..., None, :]
    return mean, 0.5 * (cov + jnp.swapaxes(cov, -1, -2))


#: :func:`align_to_moments`' floor of the covariances' eigenvalues (a flat image is not blown up).
ALIGN_EPS = 1e-4


def align_to_moments(x, moments, amount=1.0, eps: float = ALIGN_EPS, mask=None, *,
                     exact_gradient: bool = False) -> jax.Array:
    """``x`` (``[..., H, W, 3]``) moved ``amount`` of the way to the affine recolouring that gives
    it the colour mean and covariance of ``moments`` (``[..., 12]``; see :func:`color_moments`),
    clipped to [0, 1]: ``x + amount * (A x + b - x)`` with ``A = C_t^(1/2) C_x^(-1/2)``
    (symmetric square roots, as :func:`match_color`'s ``"eig"``). ``amount`` 0 returns ``x``
    (clipped); 1 matches the moments (up to the clipping).

    Gradient: by default ``A`` and ``b`` are constants to autodiff (``stop_gradient``), so the
    gradient of the output is ``(1 - amount) + amount * A`` per pixel, the map training has
    used (a surrogate: it ignores that the map re-normalizes whatever colour statistics ``x``
    has). ``exact_gradient=True`` differentiates through ``A`` and ``b`` too (finite also for
    grey images, see :func:`_sym_pow_jvp`); the per-style fits and refinements use it, training
    with ``loss.palette_gradient="exact"`` (measured: RESULTS.md, sessions 9 and 10). ``eps`` floors the covariances' eigenvalues (a flat image is not
    blown up). ``mask`` (``[..., H, W]``, 0/1): measure ``x``'s colours on these pixels only
    (e.g. without the padding of a bucketed batch); the map applies to every pixel."""
    x = _rgb(x)
    ms, cs = color_stats(x, mask)
    mt, ct = stats_from_moments(moments)
    a, b = _eig_affine(ms, cs, mt, ct, eps)
    if not exact_gradient:
        a, b = jax.lax.stop_gradient((a, b))
    y = jnp.einsum("...hwj,...ij->...hwi", x, a) + b[..., None, None, :]
    amount = jnp.asarray(amount, x.dtype)
    return jnp.clip(x + amount * (y - x), 0.0, 1.0)
