"""Built-in sample images for the demo and the tests: nothing is downloaded.

* Content photos are the data files that ship inside the scikit-image wheel (read with
  :func:`arbitrary_nst.images.load_image`; scikit-image itself is never imported, so its
  dependencies are not needed). Install them with ``pip install --no-deps scikit-image==0.26.0``.
* Styles are painting-like images *generated* procedurally (NumPy + Pillow, seeded, so the
  same name and size always give the same pixels) -- ``strokes``, ``mosaic``, ``waves``,
  ``cubist`` -- plus two textures from scikit-image: ``hubble`` (Hubble deep field) and
  ``ihc`` (immunohistochemistry stain).
* :func:`noise_image` and :func:`gradient_image` are tiny synthetic images for tests.

All images are ``float32`` ``H x W x 3`` RGB in ``[0, 1]``.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from arbitrary_nst.errors import ConfigError, NSTError, check_count
from arbitrary_nst.images import (
    center_crop_square,
    load_image,
    resize,
    save_image,
    to_float,
)

__all__ = [
    "CONTENT_NAMES",
    "STYLE_NAMES",
    "GENERATED_STYLE_NAMES",
    "SKIMAGE_INSTALL_HINT",
    "skimage_data_dir",
    "content_image",
    "style_image",
    "write_samples",
    "noise_image",
    "gradient_image",
]

SKIMAGE_INSTALL_HINT = "pip install --no-deps scikit-image==0.26.0"

#: Content photo name -> file in scikit-image's ``data`` folder.
_CONTENT_FILES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
}
#: Texture styles taken from scikit-image's ``data`` folder.
_TEXTURE_FILES: dict[str, str] = {
    "hubble": "hubble_deep_field.jpg",
    "ihc": "ihc.png",
}

CONTENT_NAMES: tuple[str, ...] = tuple(_CONTENT_FILES)
GENERATED_STYLE_NAMES: tuple[str, ...] = ("strokes", "mosaic", "waves", "cubist")
STYLE_NAMES: tuple[str, ...] = GENERATED_STYLE_NAMES + tuple(_TEXTURE_FILES)

_MAX_STYLE_SIZE = 4096


# --------------------------------------------------------------------------------------------
# scikit-image data files
# --------------------------------------------------------------------------------------------


def skimage_data_dir() -> Path:
    """The ``data`` folder of the installed scikit-image wheel (without importing skimage).

    Raises:
        NSTError: scikit-image is not installed (the message says how to install it).
    """
    try:
        spec = importlib.util.find_spec("skimage")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        d = Path(loc) / "data"
        if (d / "astronaut.png").is_file():
            return d
    raise NSTError(
        "sample images need the data files of scikit-image, which is not installed; "
        f"run: {SKIMAGE_INSTALL_HINT}"
    )


def _skimage_file(filename: str) -> Path:
    path = skimage_data_dir() / filename
    if not path.is_file():
        raise NSTError(
            f"scikit-image data file {filename} is missing from {path.parent}; "
            f"reinstall with: {SKIMAGE_INSTALL_HINT}"
        )
    return path


def content_image(name: str, max_side: int | None = None) -> np.ndarray:
    """A content photo from :data:`CONTENT_NAMES`, optionally downscaled to ``max_side``.

    Raises:
        ConfigError: unknown name.
        NSTError: scikit-image's data files are not installed.
    """
    if name not in _CONTENT_FILES:
        choices = ", ".join(CONTENT_NAMES)
        raise ConfigError(f"unknown content sample {name!r}; choose from {choices}")
    max_side = check_count(max_side, "content max_side")  # (0 was a ValueError)
    return load_image(_skimage_file(_CONTENT_FILES[name]), max_side=max_side)


def style_image(name: str, size: int = 512) -> np.ndarray:
    """A ``size x size`` style image from :data:`STYLE_NAMES`.

    Generated styles are rendered at ``size`` (the same composition at every size, and the
    same pixels every time); the texture styles are centre-cropped to a square and resized.

    Raises:
        ConfigError: unknown name or ``size`` not an integer in ``16..4096``.
        NSTError: a texture style was asked for and scikit-image's data files are missing.
    """
    if name not in STYLE_NAMES:
        raise ConfigError(f"unknown style sample {name!r}; choose from {', '.join(STYLE_NAMES)}")
    # (16.7 and "64" were taken as 16 and 64)
    size = check_count(size, "style size", 16, _MAX_STYLE_SIZE, optional=False)
    return _style_cached(name, size).copy()


@functools.lru_cache(maxsize=16)
def _style_cached(name: str, size: int) -> np.ndarray:
    if name in _TEXTURE_FILES:
        x = center_crop_square(load_image(_skimage_file(_TEXTURE_FILES[name])))
        out = resize(x, (size, size))
    else:
        out = _GENERATORS[name](size)
    out = np.ascontiguousarray(out, dtype=np.float32)
    out.flags.writeable = False
    return out


def write_samples(out_dir: str | os.PathLike[str], *, style_size: int = 512,
                  content_max_side: int | None = 512, overwrite: bool = True) -> list[Path]:
    """Save every content photo to ``out_dir/content/<name>.png`` and every style to
    ``out_dir/style/<name>.png``; return the written paths (content first, then styles).

    ``overwrite`` defaults to true because the folder holds only these generated files.
    """
    # both checked before anything is written (a bad style size failed after the photos)
    check_count(style_size, "style size", 16, _MAX_STYLE_SIZE, optional=False)
    check_count(content_max_side, "content max_side")
    root = Path(out_dir)
    written = [
        save_image(root / "content" / f"{n}.png", content_image(n, max_side=content_max_side),
                   overwrite=overwrite)
        for n in CONTENT_NAMES
    ]
    written += [
        save_image(root / "style" / f"{n}.png", style_image(n, style_size), overwrite=overwrite)
        for n in STYLE_NAMES
    ]
    return written


# --------------------------------------------------------------------------------------------
# Small synthetic images for tests
# --------------------------------------------------------------------------------------------


def noise_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Uniform random ``h x w x 3`` image in ``[0, 1]`` (deterministic for a seed)."""
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def gradient_image(h: int, w: int) -> np.ndarray:
    """Smooth ``h x w x 3`` test pattern: red grows to the right, green downwards, blue along
    the anti-diagonal."""
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    x = np.ones((h, 1), np.float32) * np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    return np.stack([x, y, 1.0 - 0.5 * (x + y)], axis=2).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Procedural styles
# --------------------------------------------------------------------------------------------
# Every generator draws in normalised coordinates scaled by ``size`` (so the composition does not
# depend on the size), renders at 2x and downsamples with Lanczos for antialiasing, and uses
# its own fixed seed.

_SUPERSAMPLE = 2


def _hex(c: str) -> tuple[int, int, int]:
    c = c.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def _palette(*colors: str) -> np.ndarray:
    return np.array([_hex(c) for c in colors], dtype=np.float64)


def _smooth_noise(rng: np.random.Generator, n: int, cells: int, octaves: int = 3) -> np.ndarray:
    """Fractal value noise on an ``n x n`` grid in ``[0, 1]`` (bicubic upsampled lattices)."""
    acc = np.zeros((n, n), np.float64)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        k = cells * 2**o + 1
        lattice = rng.random((k, k)).astype(np.float32)
        up = Image.fromarray(lattice).resize((n, n), Image.Resampling.BICUBIC)
        acc += amp * np.asarray(up, dtype=np.float64)
        total += amp
        amp *= 0.5
    acc /= total
    lo, hi = acc.min(), acc.max()
    return (acc - lo) / max(hi - lo, 1e-9)


def _finish(canvas: np.ndarray, size: int) -> np.ndarray:
    """uint8/float ``(S*k) x (S*k) x 3`` -> float32 ``size x size x 3`` in ``[0, 1]``."""
    a = np.clip(canvas, 0, 255).astype(np.uint8) if canvas.dtype != np.uint8 else canvas
    im = Image.fromarray(a)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    return to_float(im)


def _paper_grain(rng: np.random.Generator, n: int, strength: float) -> np.ndarray:
    """Fine multiplicative grain (canvas / paper tooth) around 1.0, ``n x n x 1``."""
    g = rng.normal(0.0, 1.0, (n, n))
    for axis in (0, 1):  # [1, 2, 1] / 4 smoothing: grain a couple of pixels wide
        g = 0.5 * g + 0.25 * (np.roll(g, 1, axis) + np.roll(g, -1, axis))
    g /= max(g.std(), 1e-9)
    return (1.0 + strength * g)[:, :, None]


def _strokes(size: int) -> np.ndarray:
    """Impressionist brushwork: layers of thick strokes following a swirling flow field over a
    toned canvas, in a warm palette with a few cool accents."""
    rng = np.random.default_rng(1872)
    n = size * _SUPERSAMPLE
    # Toned ochre ground with a soft gradient.
    base = np.array(_hex("#b9864a"), np.float64)
    ground = _smooth_noise(rng, n, 3)[:, :, None]
    canvas = base * (0.75 + 0.4 * ground)
    im = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)

    warm = _palette("#f4c542", "#f08a24", "#d9481c", "#a8281d", "#f7e3a1", "#e0a43a", "#7a3b1d")
    cool = _palette("#2f5d8a", "#5f8f6a", "#1f3550")
    # Low-frequency "scene" field chooses the local colour family, so colours form regions.
    scene = _smooth_noise(rng, 64, 2, octaves=2)
    flow = _smooth_noise(rng, 64, 2, octaves=2)

    def angle_at(x: float, y: float) -> float:
        f = flow[min(int(y * 63), 63), min(int(x * 63), 63)]
        return 4.0 * math.pi * f + 0.6 * math.sin(6.0 * x) + 0.6 * math.cos(5.0 * y)

    layers = ((260, 0.09, 0.030), (520, 0.060, 0.020), (900, 0.040, 0.012))
    for count, length, width in layers:
        for _ in range(count):
            x0, y0 = rng.random(), rng.random()
            s = scene[min(int(y0 * 63), 63), min(int(x0 * 63), 63)]
            if rng.random() < 0.12:
                color = cool[rng.integers(len(cool))]
            else:  # warm: position along the palette follows the scene field
                idx = int(np.clip(s * len(warm) + rng.normal(0, 0.9), 0, len(warm) - 1))
                color = warm[idx]
            color = np.clip(color * rng.uniform(0.85, 1.12) + rng.normal(0, 8, 3), 0, 255)
            # A curved stroke: integrate the flow field for a few steps.
            pts = [(x0, y0)]
            seg = length * rng.uniform(0.6, 1.3) / 5
            x, y = x0, y0
            for _ in range(5):
                a = angle_at(min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0))
                x, y = x + seg * math.cos(a), y + seg * math.sin(a)
                pts.append((x, y))
            wpx = max(2, int(width * n * rng.uniform(0.7, 1.3)))
            xy = [(px * n, py * n) for px, py in pts]
            fill = tuple(int(c) for c in color)
            draw.line(xy, fill=fill, width=wpx, joint="curve")
            r = wpx / 2
            for px, py in (xy[0], xy[-1]):  # rounded caps
                draw.ellipse((px - r, py - r, px + r, py + r), fill=fill)
            # Bristle ridges: thin lighter and darker lines along the stroke.
            for shade, off in ((1.18, -0.25), (0.8, 0.3)):
                a = angle_at(min(max(x0, 0.0), 1.0), min(max(y0, 0.0), 1.0)) + math.pi / 2
                dx, dy = off * wpx * math.cos(a), off * wpx * math.sin(a)
                ridge = tuple(int(min(255, c * shade)) for c in color)
                draw.line([(px + dx, py + dy) for px, py in xy[1:-1]], fill=ridge,
                          width=max(1, wpx // 6), joint="curve")
    im = im.filter(ImageFilter.GaussianBlur(0.6 * _SUPERSAMPLE))
    out = np.asarray(im, dtype=np.float64) * _paper_grain(rng, n, 0.05)
    return _finish(out, size)


def _mosaic(size: int) -> np.ndarray:
    """Voronoi mosaic: glazed tiles of saturated colours laid out in a rosette, dark grout."""
    rng = np.random.default_rng(1453)
    n = size * _SUPERSAMPLE
    g = 22  # tiles per side (jittered grid)
    gy, gx = np.mgrid[0:g, 0:g]
    pts = np.stack([(gx + 0.15 + 0.7 * rng.random((g, g))) / g,
                    (gy + 0.15 + 0.7 * rng.random((g, g))) / g], -1).reshape(-1, 2)
    palette = _palette("#1d4e89", "#00a6a6", "#f2b705", "#d7263d", "#1b998b", "#c2571a",
                       "#f4f1de", "#3d1e6d", "#e76f51")
    # Colour by rings and sectors around the centre -> a designed, rosette-like pattern.
    d = np.hypot(pts[:, 0] - 0.5, pts[:, 1] - 0.5)
    ang = np.arctan2(pts[:, 1] - 0.5, pts[:, 0] - 0.5)
    ring = (d * 9).astype(int)
    petal = ((np.cos(8 * ang + 3 * d) > 0.3) & (ring % 3 != 0)).astype(int)
    idx = (ring * 2 + petal * 5 + (rng.random(len(pts)) < 0.12) * rng.integers(1, 9, len(pts)))
    tile_col = palette[idx % len(palette)] * rng.uniform(0.85, 1.1, (len(pts), 1))

    # Nearest and second-nearest seed per pixel (checked against the 5x5 neighbouring cells).
    ys, xs = (np.mgrid[0:n, 0:n] + 0.5) / n
    cy = np.minimum((ys * g).astype(int), g - 1)
    cx = np.minimum((xs * g).astype(int), g - 1)
    best = np.full((n, n), np.inf)
    second = np.full((n, n), np.inf)
    label = np.zeros((n, n), np.int64)
    for oy in range(-2, 3):
        for ox in range(-2, 3):
            ny, nx = np.clip(cy + oy, 0, g - 1), np.clip(cx + ox, 0, g - 1)
            k = ny * g + nx
            dist = np.hypot(xs - pts[k, 0], ys - pts[k, 1])
            dup = k == label  # clipped neighbours repeat: do not count a seed twice
            closer = (dist < best) & ~dup
            second = np.where(closer, best, np.where(~dup & (dist < second), dist, second))
            best = np.where(closer, dist, best)
            label = np.where(closer, k, label)
    edge = (second - best) * n  # ~ distance to the tile border, in pixels
    grout_w = 0.0045 * n
    tile_mask = np.clip((edge - grout_w) / (0.6 * _SUPERSAMPLE), 0.0, 1.0)[:, :, None]
    # Glaze: each tile is slightly domed (lighter towards its centre) with a little grain.
    dome = 1.08 - 0.35 * np.clip(best * g, 0, 1)
    col = tile_col[label] * dome[:, :, None] * _paper_grain(rng, n, 0.025)
    grout = np.array(_hex("#2b2620"), np.float64) * _paper_grain(rng, n, 0.15)
    return _finish(col * tile_mask + grout * (1.0 - tile_mask), size)


def _waves(size: int) -> np.ndarray:
    """Ukiyo-e sea: bands of Prussian blue and indigo with off-white crests, dark contour
    lines and curling foam spirals over a beige paper sky."""
    rng = np.random.default_rng(1831)
    n = size * _SUPERSAMPLE
    ys, xs = (np.mgrid[0:n, 0:n] + 0.5) / n
    # A height field of travelling waves, steeper and bigger towards the bottom left.
    warp = _smooth_noise(rng, n, 3, octaves=2)
    v = (ys * 7.0
         + 0.9 * np.sin(xs * 9.0 + ys * 3.0 + 2.5 * warp)
         + 0.5 * np.sin(xs * 23.0 - ys * 5.0)
         + 1.2 * (1.0 - ys) * np.sin(xs * 4.0 + 1.0))
    band = np.floor(v * 1.4).astype(int)
    frac = v * 1.4 - band
    blues = _palette("#0b1e3f", "#1f3a6b", "#2e5c94", "#5b8cc0", "#9cc1de")
    foam = np.array(_hex("#efe8d6"), np.float64)
    col = blues[np.mod(band, len(blues))]
    # Foam on the crest side of every band, thicker where the wave rises.
    crest = (frac > 0.78 - 0.12 * np.sin(xs * 17 + band)) & (band % 2 == 0)
    col = np.where(crest[:, :, None], foam, col)
    # Thin inner stripes in a lighter blue, like the engraved lines of a woodblock.
    stripe = (np.abs(np.sin((v * 1.4) * math.pi * 4)) < 0.12) & ~crest
    col = np.where(stripe[:, :, None], col * 0.7 + blues[-1] * 0.3, col)
    # Dark contours on band boundaries.
    line = (frac < 0.06) | (frac > 0.97)
    col = np.where(line[:, :, None], blues[0] * 0.8, col)
    # Paper sky above the horizon curve.
    horizon = 0.18 + 0.07 * np.sin(xs * 5.0 + 0.5)
    sky = np.array(_hex("#e6d8b8"), np.float64) * (0.95 + 0.08 * warp[:, :, None])
    col = np.where((ys < horizon)[:, :, None], sky, col)

    im = Image.fromarray(np.clip(col, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    # Curling foam claws: spirals with a dark outline.
    for _ in range(38):
        cx, cy = rng.random(), rng.uniform(0.25, 1.0)
        r0 = rng.uniform(0.025, 0.07) * (0.5 + cy)
        turns = rng.uniform(1.2, 2.2)
        pts = []
        for t in np.linspace(0.0, 1.0, 60):
            a = 2 * math.pi * turns * t + rng.random() * 0.05
            r = r0 * (1.0 - 0.85 * t)
            pts.append(((cx + r * math.cos(a)) * n, (cy - r * math.sin(a)) * n))
        w = max(2, int(0.012 * n * (0.5 + cy)))
        draw.line(pts, fill=tuple(int(c) for c in blues[0]), width=w + 2 * _SUPERSAMPLE,
                  joint="curve")
        draw.line(pts, fill=tuple(int(c) for c in foam), width=w, joint="curve")
        # Spray: small foam dots flung off the curl.
        for _ in range(10):
            a = rng.uniform(0.0, math.pi)
            r = r0 * rng.uniform(1.1, 1.6)
            px, py = (cx + r * math.cos(a)) * n, (cy - r * math.sin(a)) * n
            d = rng.uniform(0.003, 0.007) * n
            draw.ellipse((px - d, py - d, px + d, py + d), fill=tuple(int(c) for c in foam),
                         outline=tuple(int(c) for c in blues[0]))
    out = np.asarray(im, dtype=np.float64) * _paper_grain(rng, n, 0.035)
    return _finish(out, size)


def _cubist(size: int) -> np.ndarray:
    """Analytical cubism: overlapping translucent faceted shards in ochre, brown, grey and
    olive, each shaded by a gradient, with dark drawn edges and hatching."""
    rng = np.random.default_rng(1910)
    n = size * _SUPERSAMPLE
    palette = _palette("#c89b4a", "#8a5a2b", "#5c4033", "#9a9384", "#6b6d5a", "#d8c8a0",
                       "#3b3026", "#b07a3c")
    ys, xs = (np.mgrid[0:n, 0:n] + 0.5) / n
    tone = 0.8 + 0.35 * _smooth_noise(rng, n, 2)
    canvas = np.array(_hex("#7d6a52"), np.float64) * tone[:, :, None]
    canvas = np.ascontiguousarray(canvas)
    edges = Image.new("L", (n, n), 0)
    edraw = ImageDraw.Draw(edges)
    # A loose central "figure": shards cluster around a vertical axis.
    for _ in range(150):
        cx = 0.5 + rng.normal(0, 0.22)
        cy = rng.uniform(-0.05, 1.05)
        r = rng.uniform(0.06, 0.22)
        k = int(rng.integers(3, 7))
        angles = np.sort(rng.uniform(0, 2 * math.pi, k))
        poly = [((cx + r * rng.uniform(0.6, 1.15) * math.cos(a)) * n,
                 (cy + r * rng.uniform(0.6, 1.15) * math.sin(a)) * n) for a in angles]
        ga = rng.uniform(0, 2 * math.pi)
        color0 = palette[rng.integers(len(palette))]
        alpha = rng.uniform(0.35, 0.7)
        # Work inside the shard's bounding box only.
        x0 = max(0, int(min(p[0] for p in poly)) - 1)
        x1 = min(n, int(max(p[0] for p in poly)) + 2)
        y0 = max(0, int(min(p[1] for p in poly)) - 1)
        y1 = min(n, int(max(p[1] for p in poly)) + 2)
        if x1 <= x0 or y1 <= y0:
            continue
        mask_im = Image.new("L", (x1 - x0, y1 - y0), 0)
        ImageDraw.Draw(mask_im).polygon([(px - x0, py - y0) for px, py in poly], fill=255)
        mask = np.asarray(mask_im, dtype=np.float64)[:, :, None] / 255.0
        # Facet shading: a linear gradient across the shard, light to dark.
        bx, by = xs[y0:y1, x0:x1], ys[y0:y1, x0:x1]
        grad = ((bx - cx) * math.cos(ga) + (by - cy) * math.sin(ga)) / r
        shade = np.clip(0.95 + 0.35 * grad, 0.55, 1.35)[:, :, None]
        box = canvas[y0:y1, x0:x1]
        box[...] = box * (1 - alpha * mask) + color0 * shade * (alpha * mask)
        if rng.random() < 0.55:  # drawn edges on many shards, sometimes only partly
            start = int(rng.integers(k))
            run = poly[start:] + poly[:start]
            edraw.line(run[: int(rng.integers(2, k + 2))], fill=int(rng.uniform(150, 255)),
                       width=max(1, int(0.004 * n)))
        if rng.random() < 0.15:  # hatching inside the shard
            hatch = Image.new("L", (x1 - x0, y1 - y0), 0)
            hd = ImageDraw.Draw(hatch)
            step = 0.012 * n
            w_, h_ = x1 - x0, y1 - y0
            for t in np.arange(-h_, w_, step):
                hd.line([(t, 0), (t + h_, h_)], fill=140, width=max(1, _SUPERSAMPLE))
            hmask = np.asarray(hatch, dtype=np.float64)[:, :, None] / 255.0 * mask
            box[...] = box * (1 - 0.6 * hmask)
    edges = edges.filter(ImageFilter.GaussianBlur(0.5 * _SUPERSAMPLE))
    e = np.asarray(edges, np.float64)[:, :, None] / 255.0
    canvas = canvas * (1 - 0.75 * e) + np.array(_hex("#1e1812"), np.float64) * 0.75 * e
    canvas = canvas * _paper_grain(rng, n, 0.04)
    return _finish(canvas, size)


_GENERATORS: dict[str, Callable[[int], np.ndarray]] = {
    "strokes": _strokes,
    "mosaic": _mosaic,
    "waves": _waves,
    "cubist": _cubist,
}
