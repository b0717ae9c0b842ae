"""Reading, writing, converting and resizing images: the one place that touches image files.

Every entry point (CLIs, training data, inference) goes through this module, so every image is
handled the same way:

* :func:`load_image` returns ``float32`` HWC RGB in ``[0, 1]``. EXIF orientation is applied,
  every Pillow mode is converted to RGB (transparency is composited on **white**, 16-bit
  grayscale keeps its full range), an embedded ICC profile of RGB/CMYK and 8-bit grey images
  is converted to sRGB when Pillow has LittleCMS (16-bit grey keeps its values: its depth is
  kept instead), and multi-frame files (GIF, TIFF) give their first frame.
  :func:`load_pixels` is the same as ``uint8`` for 8-bit files.
* Every problem with a file a user names raises :class:`~arbitrary_nst.errors.ImageError`
  whose ``str`` is one line ``"path: reason"`` (missing, a directory, empty, not an image,
  truncated or corrupt, too large, permission denied, ...). Programming errors (a wrong array
  shape passed by code) raise ``ValueError``/``TypeError`` as usual.
* :func:`save_image` writes atomically (temporary file in the destination folder, ``fsync``,
  rename) and refuses to replace an existing file unless asked to.

Array conventions: images are ``H x W x C`` (``C`` = 3 for RGB); ``H x W`` grayscale is
accepted wherever it is unambiguous. :func:`pad_to_multiple` and :func:`crop_to` also take
batched ``N x H x W x C`` arrays, NumPy or JAX.

Decompression bombs: :func:`load_image` reads only the header (``Image.open`` is lazy) and
compares ``width * height`` with ``max_pixels`` before anything is decoded. Pillow's own global
guard (``PIL.Image.MAX_IMAGE_PIXELS``) stays in force as a second line of defence; it is raised
for the duration of the header read only when a caller explicitly passes a larger
``max_pixels``, and Pillow's ``DecompressionBombError`` becomes an ``ImageError`` too.

Truncated files are detected because the pixel data is fully decoded (``Image.load()``) inside
the error handling, with ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` left at its default ``False``
(this module never sets it; if other code in the process sets it to ``True``, Pillow silently
fills truncated images with grey and no error can be raised here).
"""
from __future__ import annotations

import functools
import os
import re
import stat
import tempfile
import threading
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from arbitrary_nst.errors import ConfigError, ImageError
from arbitrary_nst.files import (link_no_clobber, remove_stale_temps, set_new_file_mode,
                                 temp_prefix)
from arbitrary_nst.files import os_reason as _os_reason

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "UNREADABLE_EXTENSIONS",
    "describe_image_extensions",
    "unreadable_reason",
    "glob_base",
    "SAVE_FORMATS",
    "PathLike",
    "ImageLike",
    "load_image",
    "load_pixels",
    "load_pil",
    "to_float",
    "check_array_image",
    "downscale_pil",
    "array_to_float",
    "FLOAT_IMAGE_RANGE",
    "to_uint8",
    "resize",
    "resize_max_side",
    "resize_short_side",
    "center_crop",
    "center_crop_square",
    "pad_to_multiple",
    "crop_to",
    "save_image",
    "list_images",
    "is_image_file",
]

PathLike = Union[str, "os.PathLike[str]"]
ImageLike = Union[np.ndarray, Image.Image, Any]  # ``Any``: array-likes such as jax.Array

#: Default limit on ``width * height`` of an image to decode (64 megapixels, e.g. 8000 x 8000).
DEFAULT_MAX_PIXELS: int = 64_000_000

# Formats never opened: EPS is rendered by running Ghostscript (an external PostScript
# interpreter) on the file, which is no way to treat untrusted input.
_REFUSED_FORMATS = frozenset({"EPS"})

# Pillow formats that it identifies but does not decode (MPEG: video; the "stub" formats BUFR,
# GRIB, HDF5 and WMF/EMF need a handler that is not installed: Pillow's StubImageFile), or
# that Pillow opens with another format's opener (MPO files: the JPEG one).
_IDENTIFY_ONLY = frozenset({"MPEG"})
_OPENED_AS = {"MPO": "JPEG"}
# Formats that Pillow registers whatever it was built with: their decoder must be there too.
_NEEDS_CODEC = {"JPEG": "jpg", "MPO": "jpg", "JPEG2000": "jpg_2000", "PNG": "zlib"}

# Image files that users have but that are not read here (by extension, lower case): listed by
# folder scans and globs all the same, so that a batch reports each one as skipped with this
# reason instead of leaving it out without a word. Camera raws are refused even where Pillow
# opens one as a TIFF: what it reads is the small preview embedded in the file, not the photo.
_RAW_EXTENSIONS = frozenset({
    ".3fr", ".arw", ".cr2", ".cr3", ".crw", ".dcr", ".dng", ".erf", ".iiq", ".k25", ".kdc",
    ".mef", ".mos", ".mrw", ".nef", ".nrw", ".orf", ".pef", ".raf", ".rw2", ".rwl", ".sr2",
    ".srf", ".srw", ".x3f",
})
_OTHER_UNREADABLE = {
    ".heic": "HEIC is not readable here (pip install pillow-heif)",
    ".heif": "HEIF is not readable here (pip install pillow-heif)",
    ".hif": "HEIF is not readable here (pip install pillow-heif)",
    ".avif": "AVIF is not readable here (this Pillow was built without AVIF support)",
    ".webp": "WebP is not readable here (this Pillow was built without WebP support)",
    ".jxl": "JPEG XL is not readable here (convert it to PNG or JPEG first)",
}


_HEIF_TRIED: list[bool] = []


def _init_plugins() -> None:
    """Register every Pillow plugin, and the HEIC/HEIF one of ``pillow-heif`` if installed."""
    Image.init()  # (idempotent)
    if _HEIF_TRIED:
        return
    _HEIF_TRIED.append(True)
    try:
        from pillow_heif import register_heif_opener  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - not installed (or broken): HEIC stays unreadable
        return
    if "HEIF" not in Image.OPEN:
        register_heif_opener()


def _readable_extensions() -> frozenset[str]:
    """The extensions of the still-image formats this Pillow opens and decodes."""
    from PIL import ImageFile, features

    _init_plugins()
    out = set()
    for ext, fmt in Image.registered_extensions().items():
        opener = _OPENED_AS.get(fmt, fmt)
        if opener not in Image.OPEN or opener in _REFUSED_FORMATS or opener in _IDENTIFY_ONLY:
            continue
        factory = Image.OPEN[opener][0]  # (a class, or a function such as JPEG's)
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            continue
        codec = _NEEDS_CODEC.get(fmt)
        if codec is not None and not features.check_codec(codec):
            continue
        out.add(ext.lower())
    return frozenset(out)


#: Extensions (lower case, with dot) of the still-image files that :func:`load_image` reads
#: here: every one that the installed Pillow registers for a format it opens and decodes (so
#: the list follows Pillow's build and plugins), except EPS (never opened), MPEG (video) and
#: the "stub" formats (BUFR, GRIB, HDF5, WMF/EMF) that Pillow cannot decode by itself.
#: :func:`list_images` lists the files with these extensions in a folder or glob.
IMAGE_EXTENSIONS: frozenset[str] = _readable_extensions()

#: Extensions of image files that are not read here -> the reason. :func:`list_images` lists
#: such files all the same (a batch reports each one as skipped with this reason) and
#: :func:`load_image` refuses them with it.
UNREADABLE_EXTENSIONS: dict[str, str] = {
    **{ext: why for ext, why in _OTHER_UNREADABLE.items() if ext not in IMAGE_EXTENSIONS},
    **{ext: f"{ext[1:].upper()} camera raw files are not read here (Pillow reads only their "
            "small embedded preview): convert to TIFF, PNG or JPEG first"
       for ext in sorted(_RAW_EXTENSIONS)},
}
# (a Pillow built without a decoder, e.g. OpenJPEG: the format's extensions are still registered)
UNREADABLE_EXTENSIONS.update({
    ext: f"{fmt} is not readable here (this Pillow was built without its decoder)"
    for ext, fmt in Image.registered_extensions().items()
    if fmt in _NEEDS_CODEC and ext not in IMAGE_EXTENSIONS})

# The extensions named first where a message lists the accepted ones (the rest are counted).
_COMMON_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".avif", ".heic", ".tif", ".tiff",
                      ".bmp", ".gif")


def describe_image_extensions(sep: str = ", ") -> str:
    """The accepted extensions for a message, e.g. ``"jpg, jpeg, png, ... or 58 more"``."""
    named = [e for e in _COMMON_EXTENSIONS if e in IMAGE_EXTENSIONS]
    rest = len(IMAGE_EXTENSIONS) - len(named)
    text = sep.join(e[1:] for e in named)
    return f"{text} or {rest} more" if rest else text

#: Output extension -> Pillow format name for :func:`save_image`.
SAVE_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}

#: The largest side each format can hold (libjpeg's JPEG_MAX_DIMENSION, WebP's 14-bit sizes):
#: a larger image was libjpeg's stray "Maximum supported image dimension" line and "broken
#: data stream".
MAX_SAVE_SIDE = {"JPEG": 65500, "WEBP": 16383}

_RESAMPLING = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}
Resample = Literal["lanczos", "bicubic", "bilinear", "box", "nearest"]

# Modes whose samples do not fit in 8 bits; they are converted through float, never through
# Pillow's ``convert("L")`` (which clips 16-bit values to 255 instead of scaling them).
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
#: files whose mode-"I" pixels are 16-bit by the file's own header (PGM's maxval > 255; PNG in
#: older Pillow), so 0..255 values there are a dark 16-bit image, not 8-bit data
_SIXTEEN_BIT_I_FORMATS = frozenset({"PNG", "PPM"})

# Serialises the (header-only) ``Image.open`` calls of this module, during which Pillow's global
# decompression-bomb limit may be raised and its warning silenced; see ``_open_checked``.
_OPEN_LOCK = threading.Lock()
_FULL_SIZE = "arbitrary_nst.full_size"  # PIL info key: (w, h) before a reduced JPEG decode
_FILE_FORMAT = "arbitrary_nst.format"  # PIL info key: the file's format (copies drop .format)
_GLOB_MAGIC = re.compile(r"[*?[]")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_image(
    path: PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, max_side: int | None = None
) -> np.ndarray:
    """Read an image file as ``float32`` ``H x W x 3`` RGB in ``[0, 1]``.

    Args:
        path: the image file (any format Pillow reads: JPEG, PNG, WebP, BMP, TIFF, GIF, ...).
        max_pixels: refuse images whose header says ``width * height > max_pixels``, before
            decoding anything. ``None`` disables this module's check (Pillow's own global limit
            still applies).
        max_side: if given, downscale (Lanczos, aspect kept) so that the longer side is at most
            ``max_side``. Never upscales. JPEGs are decoded at a reduced DCT scale first when
            that is possible, which makes this much faster for big photos.

    Raises:
        ImageError: the file is missing, a directory, empty, not an image, truncated or
            corrupt, too large, unreadable, or in a mode that cannot be converted to RGB.
    """
    x = load_pixels(path, max_pixels=max_pixels, max_side=max_side)
    return x if x.dtype == np.float32 else x.astype(np.float32) / np.float32(255.0)


def load_pixels(
    path: PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, max_side: int | None = None
) -> np.ndarray:
    """Like :func:`load_image`, but ``uint8`` ``H x W x 3`` for 8-bit files (a quarter of the
    bytes; :func:`load_pil`'s pixels) and ``float32`` in [0, 1] only for files with more depth
    (16-bit / float grey), which keep it to the working size."""
    im = _open_decoded(path, max_pixels=max_pixels, max_side=max_side)
    if im.mode in _HIGH_DEPTH_MODES:
        x = _high_depth_to_float(im, path)
        x = np.repeat(x[:, :, None], 3, axis=2)
        if max_side is not None:
            x = resize_max_side(x, max_side)
        return x
    rgb = _pil_to_rgb8(im, path)
    if max_side is not None:
        rgb = downscale_pil(rgb, max_side, im.info.get(_FULL_SIZE))
    return np.asarray(rgb, dtype=np.uint8)


def load_pil(
    path: PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, max_side: int | None = None
) -> Image.Image:
    """Like :func:`load_image` but return an 8-bit ``RGB`` PIL image (oriented, converted).

    16-bit grayscale is scaled (not clipped) to 8 bits. Raises the same ``ImageError`` s.
    """
    im = _open_decoded(path, max_pixels=max_pixels, max_side=max_side)
    rgb = _pil_to_rgb8(im, path)
    if max_side is not None:
        rgb = downscale_pil(rgb, max_side, im.info.get(_FULL_SIZE))
    return rgb


def _open_decoded(path: PathLike, *, max_pixels: int | None, max_side: int | None) -> Image.Image:
    """Open, size-check, fully decode and EXIF-orient ``path``; any mode. Raises ImageError."""
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1 or None, got {max_pixels}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1 or None, got {max_side}")
    name = os.fspath(path)
    _check_readable_file(name)
    if Path(name).suffix.lower() in _RAW_EXTENSIONS:  # (Pillow may open one: its preview)
        raise ImageError(name, UNREADABLE_EXTENSIONS[Path(name).suffix.lower()])
    try:
        f = open(name, "rb")
    except OSError as e:
        raise ImageError(name, _os_reason(e)) from None
    with f:
        im = _open_checked(f, name, max_pixels)
        try:
            with im:
                full = im.size
                if max_side is not None and im.format == "JPEG":
                    # Decode at a reduced DCT scale (1/2, 1/4, 1/8) while staying >= 2x the
                    # target, as Image.thumbnail does; Lanczos finishes the job afterwards.
                    w, h = im.size
                    scale = max_side / max(w, h)
                    if scale < 0.5:
                        im.draft(None, (max(1, round(w * scale * 2)), max(1, round(h * scale * 2))))
                stored = im.size
                im.load()  # force the full decode: this is where truncation shows up
                out = _exif_oriented(im)
                if out.size != stored:  # rotated by 90 degrees
                    full = full[::-1]
                # The output size follows from the full size, not the DCT-reduced one (whose
                # rounding would give a JPEG a pixel more or less than the same image as PNG).
                out.info[_FULL_SIZE] = full
                out.info[_FILE_FORMAT] = im.format
                return out
        except ImageError:
            raise
        except Image.DecompressionBombError as e:
            raise ImageError(name, _too_large_from_pillow(e, max_pixels)) from None
        except MemoryError:
            w, h = im.size
            raise ImageError(name, f"not enough memory to decode a {w} x {h} image") from None
        except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError..
            raise ImageError(name, f"truncated or corrupt image data: {_one_line(e)}") from None


def _check_readable_file(name: str) -> None:
    """Turn the usual filesystem problems into ImageError before Pillow sees the path."""
    if not name.strip():  # (it said ": no such file")
        raise ImageError(None, f"the image file name is empty ({name!r})")
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise ImageError(name, "no such file") from None
    except OSError as e:
        raise ImageError(name, _os_reason(e)) from None
    if os.path.isdir(name):
        raise ImageError(name, "is a directory, expected an image file")
    if not os.path.isfile(name):
        raise ImageError(name, "not a regular file")
    if st.st_size == 0:
        raise ImageError(name, "empty file (0 bytes)")


def _open_checked(f: Any, name: str, max_pixels: int | None) -> Image.Image:
    """``Image.open`` (header only) plus the ``max_pixels`` check; returns the lazy image."""
    with _OPEN_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        try:
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that. Our limit is the
            # authoritative one: let an explicit larger max_pixels through Pillow's header check,
            # and silence the warning: anything it would warn about exceeds max_pixels too and
            # is rejected just below with a precise message (or max_pixels is None: the caller
            # opted out, and only Pillow's hard limit remains).
            if saved is not None and max_pixels is not None and max_pixels > saved:
                Image.MAX_IMAGE_PIXELS = max_pixels
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(f, formats=_open_formats())
        except UnidentifiedImageError:
            fmt = _sniff_format(f)
            if why := unreadable_reason(name):
                raise ImageError(name, why) from None
            if fmt is not None:  # the right signature, but Pillow cannot parse the header
                reason = f"truncated, corrupt or unsupported {fmt} file (cannot read its header)"
                raise ImageError(name, reason) from None
            raise ImageError(name, "not an image (cannot identify format)") from None
        except Image.DecompressionBombError as e:
            raise ImageError(name, _too_large_from_pillow(e, max_pixels)) from None
        except MemoryError:
            raise ImageError(name, "not enough memory to read the image header") from None
        except Exception as e:  # noqa: BLE001 - a corrupt header can raise nearly anything
            reason = unreadable_reason(name) or f"truncated or corrupt image data: {_one_line(e)}"
            raise ImageError(name, reason) from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        im.close()
        raise ImageError(name, _too_large(w, h, max_pixels))
    if w < 1 or h < 1:
        im.close()
        raise ImageError(name, f"image has no pixels ({w} x {h})")
    return im


def unreadable_reason(path: PathLike) -> str | None:
    """Why an image file is not read here, from its extension alone (``UNREADABLE_EXTENSIONS``:
    HEIC without pillow-heif, JPEG XL, camera raws), else None. Batches skip such files before
    planning outputs: a raw shares its name with the camera's JPEG."""
    return UNREADABLE_EXTENSIONS.get(Path(os.fspath(path)).suffix.lower())


def _open_formats() -> list[str]:
    _init_plugins()
    return [fmt for fmt in Image.ID if fmt not in _REFUSED_FORMATS]


_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _sniff_format(f: Any) -> str | None:
    """The format named by a file's magic bytes (to tell "corrupt PNG" from "not an image")."""
    try:
        f.seek(0)
        head = f.read(16)
    except (OSError, ValueError):
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    for magic, fmt in _SIGNATURES:
        if head.startswith(magic):
            return fmt
    return None


#: The advice ending a "too large" reason (callers with another option name replace it).
TOO_LARGE_HINT = "pass a larger max_pixels (--max-pixels)"


def _too_large(w: int, h: int, limit: int | None) -> str:
    return f"too large: {w} x {h} = {w * h} pixels > limit {limit}; {TOO_LARGE_HINT}"


def _too_large_from_pillow(e: Exception, limit: int | None) -> str:
    m = re.search(r"\((\d+) pixels\)", str(e))
    n = m.group(1) if m else "?"
    pil_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return (
        f"too large: {n} pixels > limit {limit if limit is not None else pil_limit} "
        f"(Pillow decompression-bomb guard); {TOO_LARGE_HINT}"
    )


def shown_size(path: PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file as it is shown (EXIF orientations 5-8 swap them),
    from its header: the size of a file read smaller with ``max_side``. Raises ImageError."""
    name = os.fspath(path)
    try:
        with Image.open(name) as im:
            w, h = im.size
            try:
                if im.format == "PNG":  # (getexif() decodes a PNG whose EXIF is not before
                    exif = Image.Exif()  # its pixels: 0.28 s for 6000x4000; only the order
                    exif.load(im.info.get("exif")  # of the sides could differ)
                              or _png_exif_after_pixels(im.fp) or b"")
                else:
                    exif = im.getexif()
                turned = exif.get(0x0112, 1) in (5, 6, 7, 8)
                tags = getattr(im, "tag_v2", None) if im.format == "TIFF" else None
                if turned and tags is not None and (tags.get(256), tags.get(257)) == (h, w) \
                        and w != h:  # (Pillow's TIFF plugin gives the shown size already:
                    turned = False  # turned again, 400x40 was said to be 40x400)
            except Exception:  # noqa: BLE001 - broken EXIF: as stored, as for decoding
                turned = False
    except Image.DecompressionBombError as e:  # (a header beyond 2x Pillow's limit)
        raise ImageError(name, _too_large_from_pillow(e, None)) from None
    except OSError as e:
        raise ImageError(name, _os_reason(e) if e.errno else _one_line(e)) from None
    return (h, w) if turned else (w, h)


def _png_exif_after_pixels(fp: Any) -> bytes | None:
    """The data of a PNG's ``eXIf`` chunk when it comes after the pixels (some writers put it
    there, and decoders are asked to accept it; Pillow's header read stops at the first IDAT):
    the chunk headers are walked with seeks, nothing is decoded. None if there is none or the
    chunks are damaged."""
    import struct

    if fp is None:
        return None
    try:
        fp.seek(8)  # (after the signature)
        while True:
            head = fp.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind == b"eXIf":
                data = fp.read(length)
                return data if len(data) == length else None
            if kind == b"IEND":
                return None
            fp.seek(length + 4, os.SEEK_CUR)  # (the data and its CRC)
    except (OSError, ValueError, struct.error):
        return None


def _exif_oriented(im: Image.Image) -> Image.Image:
    """Apply the EXIF Orientation tag. An unreadable EXIF block leaves the image as stored."""
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - broken EXIF must not make a decodable image unusable
        out = im.copy()
    assert out is not None
    return out


#: Why a user's PIL image whose file was closed before its pixels were read cannot be used.
CLOSED_PIL_IMAGE = ("the PIL image's file is closed: call im.load() inside the with block, "
                    "or pass the path")


def _pil_closed(im: Image.Image) -> bool:
    """Whether ``im`` was closed (``im.close()``, or the end of a ``with Image.open(...)``
    block before its pixels were read): its pixel data is gone or can no longer be read."""
    core = im.__dict__.get("_im")
    if core is None:  # never decoded: readable only while its file is open
        return bool(getattr(im, "tile", None)) and getattr(im, "fp", None) is None
    return type(core).__name__ == "DeferredError"  # what Image.close() leaves


def _decoded_pil(im: Image.Image) -> Image.Image:
    """A user's PIL image (e.g. from ``Image.open``, decoded lazily) with its pixels read:
    a truncated or corrupt file, or a closed image, as a one-line ImageError (no path: the
    caller names the argument), not Pillow's raw OSError or bare AssertionError."""
    if _pil_closed(im):
        if im.__dict__.get("_im") is not None:  # its pixels were read, then im.close()
            raise ImageError(None, "the PIL image was closed (im.close()): its pixels are gone")
        raise ImageError(None, CLOSED_PIL_IMAGE)
    try:
        im.load()
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError..
        if _pil_closed(im) or isinstance(e, AssertionError) or "closed" in str(e):
            raise ImageError(None, CLOSED_PIL_IMAGE) from None
        raise ImageError(None, f"truncated or corrupt image data: {_one_line(e)}") from None
    return im


def _oriented_if_tagged(im: Image.Image) -> Image.Image:
    """A user's PIL image (e.g. from ``Image.open``) oriented as a file of it would be: its
    EXIF Orientation applied. Untagged images are returned as they are (no copy). Its pixels
    are read first (:func:`_decoded_pil`)."""
    im = _decoded_pil(im)
    try:
        tagged = im.getexif().get(0x0112, 1) not in (None, 1)
    except Exception:  # noqa: BLE001 - broken EXIF: as stored, as for files
        tagged = False
    return _exif_oriented(im) if tagged else im


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or (im.mode in ("P", "L", "RGB") and "transparency" in im.info)


def _pil_to_rgb8(im: Image.Image, path: PathLike | None = None) -> Image.Image:
    """Any PIL image -> 8-bit RGB: alpha over white, 16-bit scaled, ICC converted to sRGB."""
    if im.mode == "RGB" and "transparency" not in im.info:
        return _icc_to_srgb(im)
    if im.mode in _HIGH_DEPTH_MODES:
        g = _high_depth_to_float(im, path)
        return Image.fromarray(_float_to_u8(g)).convert("RGB")
    if im.mode == "1":
        return im.convert("L").convert("RGB")
    if im.mode == "CMYK":
        converted = _icc_to_srgb(im)
        return converted if converted.mode == "RGB" else im.convert("RGB")
    icc = im.info.get("icc_profile")
    if _has_alpha(im):
        # convert() turns a "transparency" entry (palette index / key colour) into alpha and
        # un-premultiplies RGBa/La.
        rgba = (im.convert("LA") if im.mode == "La" else im).convert("RGBA")  # no La -> RGBA
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB")
    else:
        try:
            rgb = im.convert("RGB")
        except Exception as e:  # noqa: BLE001
            raise ImageError(path, f"unsupported image mode {im.mode!r}: {_one_line(e)}") from None
    # the profile of an RGBA / palette image describes its colours as those of an RGB one
    # (macOS screenshots: RGBA PNGs in Display P3); it was dropped with the alpha. A grey
    # image's profile (Photoshop's "Dot Gain 20%", "Gray Gamma 2.2") describes its tone
    # curve: converted through a grey -> sRGB transform (viewers show them so).
    if icc and im.mode in ("RGBA", "RGBa", "P", "PA", "RGB"):
        rgb.info["icc_profile"] = icc
        return _icc_to_srgb(rgb)
    if icc and im.mode in ("L", "LA", "La"):
        return _grey_icc_to_srgb(rgb, bytes(icc))
    return rgb


def _grey_icc_to_srgb(rgb: Image.Image, icc: bytes) -> Image.Image:
    """The grey RGB image ``rgb`` (three equal channels) of a file with the grey ICC profile
    ``icc``, in sRGB; as it is when the profile is not a usable grey one (like an RGB image's
    broken profile: the raw values)."""
    try:
        import io

        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if src.profile.xcolor_space.strip() != "GRAY":
            return rgb
        out = ImageCms.applyTransform(rgb.convert("L"), ImageCms.buildTransform(
            src, ImageCms.createProfile("sRGB"), "L", "RGB"))
    except Exception:  # noqa: BLE001 - no LittleCMS, or a broken profile: use the raw values
        return rgb
    return out if out is not None and out.mode == "RGB" else rgb


#: 16^3 colours with both ends of every channel: a profile that maps them all to themselves
#: (within 1 level) is sRGB, whatever it is called ("Linear sRGB" is not; "sRGB IEC61966-2.1"
#: and LittleCMS' own are).
_PROBE = np.stack(np.meshgrid(*[np.linspace(0, 255, 16).round().astype(np.uint8)] * 3,
                              indexing="ij"), -1).reshape(16, 256, 3)


def _to_srgb_transform(icc: bytes, mode: str):
    """A LittleCMS transform from the profile ``icc`` to sRGB for ``mode`` images (made per
    image: a transform's pixel cache is not for sharing between the loader's threads)."""
    import io

    from PIL import ImageCms

    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return ImageCms.buildTransform(src, ImageCms.createProfile("sRGB"), mode, "RGB")


@functools.lru_cache(maxsize=64)
def _is_srgb_profile(icc: bytes) -> bool | None:
    """Whether the RGB profile ``icc`` maps every colour to itself in sRGB (within 1 level);
    None if it cannot be used (no LittleCMS, a broken or non-RGB profile)."""
    from PIL import ImageCms

    try:
        out = ImageCms.applyTransform(Image.fromarray(_PROBE), _to_srgb_transform(icc, "RGB"))
    except Exception:  # noqa: BLE001
        return None
    return bool(np.abs(np.asarray(out, np.int16) - _PROBE.astype(np.int16)).max() <= 1)


def _icc_to_srgb(im: Image.Image) -> Image.Image:
    """Convert an RGB/CMYK image with an embedded ICC profile to sRGB; else return it as is.

    An RGB profile that maps colours to themselves is sRGB: the (costly) identity transform
    is skipped. This is decided on what the profile does, not on its name: "Linear sRGB"
    (GIMP, Krita) was skipped for the "srgb" in its description, a 0.17 shift on 0..1."""
    icc = im.info.get("icc_profile")
    if not icc or im.mode not in ("RGB", "CMYK"):
        return im
    if im.mode == "RGB" and _is_srgb_profile(bytes(icc)) is not False:
        return im  # sRGB already, or a profile that cannot be used: the raw values
    try:
        from PIL import ImageCms

        out = ImageCms.applyTransform(im, _to_srgb_transform(bytes(icc), im.mode))
    except Exception:  # noqa: BLE001 - no LittleCMS, or a broken profile: use the raw values
        return im
    return out if out is not None else im


def _high_depth_to_float(im: Image.Image, path: PathLike | None = None) -> np.ndarray:
    """``I;16*`` / ``I`` / ``F`` single-channel image -> ``float32`` ``H x W`` in ``[0, 1]``.

    ``I;16*`` and ``I`` (how Pillow holds 16-bit PNG/TIFF/PGM data) are divided by 65535, but an
    ``I`` image that no file declares 16-bit (not a PNG or PGM: a 32-bit integer TIFF, an array
    passed as a PIL image) whose values all lie in 0..255 is 8-bit data and divided by 255
    (it came out near black).
    ``F`` is ``[0, 1]`` data if its maximum is at most 1.5 (HDR highlights and resampling
    overshoot above 1 are clipped: one pixel at 1.2 made the whole photo 0..255 data, near
    black), 0..255 data if its maximum is in [16, 255] and 0..65535 data above. A maximum in
    (1.5, 16) fits none of them (a linear HDR render): an :class:`ImageError`, not a guess.
    """
    if im.mode == "F":
        x = np.asarray(im, dtype=np.float32)
        finite = x[np.isfinite(x)]
        finite_max = float(finite.max()) if finite.size else 0.0
        if 1.5 < finite_max < 16.0:
            raise ImageError(path, f"float image values up to {finite_max:.3g}: neither [0, 1] "
                             "(up to 1.5), 0..255 nor 0..65535 data; save it scaled to one "
                             "of those")
        if finite_max > 255.0:
            x = x / np.float32(65535.0)
        elif finite_max > 1.5:
            x = x / np.float32(255.0)
    else:
        if im.mode == "I":
            x = np.asarray(im, dtype=np.float64)
        else:  # I;16, I;16B, I;16L: numpy honours the byte order Pillow reports
            x = np.asarray(im).astype(np.float64)
        fmt = im.format or im.info.get(_FILE_FORMAT)
        eight_bit = (im.mode == "I" and fmt not in _SIXTEEN_BIT_I_FORMATS and x.size
                     and 0.0 <= float(x.min()) and float(x.max()) <= 255.0)
        key = im.info.get("transparency")  # a 16-bit grey PNG's tRNS: the transparent value
        transparent = (x == key) if isinstance(key, int) and not isinstance(key, bool) \
            else None
        x = (x / (255.0 if eight_bit else 65535.0)).astype(np.float32)
        if transparent is not None:  # on white, as every transparent image (it was black)
            x[transparent] = 1.0
    return np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0).astype(np.float32, copy=False)


def downscale_pil(im: Image.Image, max_side: int,
                   full: tuple[int, int] | None = None) -> Image.Image:
    """Lanczos downscale so the longer side is ``max_side``; ``full``: the image's size before
    a reduced-scale JPEG decode (the target size is computed from it)."""
    w, h = full or im.size
    if max(w, h) <= max_side and im.size == (w, h):
        return im
    size = _scaled_size(w, h, min(1.0, max_side / max(w, h)))
    if im.size == size:
        return im
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


# --------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------


def to_float(image: ImageLike) -> np.ndarray:
    """Convert to ``float32`` ``H x W x 3`` RGB in ``[0, 1]``.

    Accepts a PIL image of any mode (same conversion as :func:`load_image`), or an array:
    ``uint8`` (/255), ``uint16`` (/65535), ``bool``, or float (clipped to ``[0, 1]``, NaN -> 0),
    shaped ``H x W``, ``H x W x 1`` (gray -> RGB), ``H x W x 3``, or ``H x W x 4`` (RGBA,
    composited on white).
    """
    if isinstance(image, Image.Image):
        image = _oriented_if_tagged(image)
        if image.mode in _HIGH_DEPTH_MODES:
            g = _high_depth_to_float(image)
            return np.repeat(g[:, :, None], 3, axis=2)
        return np.asarray(_pil_to_rgb8(image), dtype=np.float32) / np.float32(255.0)
    x = _native_order(np.asarray(image))
    if x.dtype == np.uint8:
        f = x.astype(np.float32) / np.float32(255.0)
    elif x.dtype == np.uint16:
        f = x.astype(np.float32) / np.float32(65535.0)
    elif x.dtype == np.bool_:
        f = x.astype(np.float32)
    elif np.issubdtype(x.dtype, np.floating):
        f = np.clip(np.nan_to_num(x.astype(np.float32), nan=0.0), 0.0, 1.0)
    else:
        raise TypeError(f"to_float: unsupported dtype {x.dtype} (use uint8, uint16, bool or float)")
    return _as_rgb(f, white=1.0)


#: Float images outside this range are refused rather than clipped: they are 0..255 or -1..1
#: data (a white or half-black image after clipping), not [0, 1] with a resampling overshoot.
FLOAT_IMAGE_RANGE = (-0.5, 1.5)


def _native_order(a: np.ndarray) -> np.ndarray:
    """``a`` in this machine's byte order: big-endian 16-bit data (``np.frombuffer`` of PNG,
    PGM or FITS bytes: ``>u2``) was refused as "unsupported dtype >u2 (use ... uint16 ...)"."""
    if not a.dtype.isnative:
        return a.astype(a.dtype.newbyteorder("="))
    return a


def check_array_image(x: Any) -> np.ndarray:
    """A user's array image, checked (ImageError, one line) before it is converted: ``H x W``
    or ``H x W x {1,3,4}`` (channels last), at least 1 x 1, uint8/uint16/bool/float, and a float
    image finite and in [0, 1] (values within :data:`FLOAT_IMAGE_RANGE` are clipped)."""
    try:
        a = _native_order(np.asarray(x))
    except (TypeError, ValueError) as e:  # e.g. a ragged nested list
        raise ImageError(None, f"not an image array ({type(x).__name__}: {_one_line(e)})") from None
    if not (a.dtype in (np.uint8, np.uint16, np.bool_) or np.issubdtype(a.dtype, np.floating)):
        raise ImageError(None, f"unsupported image array dtype {a.dtype} (use uint8, uint16, bool "
                               "or float in [0, 1])")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        hint = " (channels first? use H x W x C)" if a.ndim == 3 and a.shape[0] in (1, 3, 4) else ""
        raise ImageError(None, f"expected an H x W or H x W x C image with 1, 3 or 4 channels, "
                               f"got an array of shape {a.shape}{hint}")
    if min(a.shape[:2]) < 1:
        raise ImageError(None, f"empty image array (shape {a.shape})")
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ImageError(None, "image array contains NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < FLOAT_IMAGE_RANGE[0] or hi > FLOAT_IMAGE_RANGE[1]:
            raise ImageError(None, f"float image values must be in [0, 1], got {lo:.4g}..{hi:.4g}"
                                   " (divide 0..255 data by 255)")
    return a


#: Pixel std ([0, 1] scale, of the channel that varies most) below which an image is blank for
#: anything that differentiates through the transfer network (refinement, fitted styles; the data
#: preparation skips such images for training): a flat image gives every instance norm zero
#: variance, and the backward pass through 13 of them (x ~316 each) overflows float32 into NaN.
#: Per channel, because a flat *colour* (a red wall) is as flat for the network as a grey one,
#: while the std of all values would count the channels' different levels as variation.
BLANK_STD = 0.01


def channel_std(x: np.ndarray) -> float:
    """The largest per-channel standard deviation of an ``H x W x C`` (or ``... x C``) image,
    on its own scale (float64 sums): 0 for any one-colour image, grey or not."""
    a = np.asarray(x, np.float64)
    a = a.reshape(-1, a.shape[-1]) if a.ndim >= 3 else a.reshape(-1, 1)
    return float(a.std(axis=0).max())


def blank_reason(x: np.ndarray) -> str | None:
    """``"blank (pixel std ...)"`` for a float [0, 1] image whose every channel has a std
    below :data:`BLANK_STD` (:func:`channel_std`), else None."""
    std = channel_std(x)
    return f"blank (pixel std {std:.4f} < {BLANK_STD})" if std < BLANK_STD else None


def array_to_float(x: Any) -> np.ndarray:
    """A user's array image, checked (:func:`check_array_image`), as float32 ``H x W x 3`` in
    [0, 1] (:func:`to_float`): how the Stylizer, Gatys and the analysis figures read arrays."""
    return to_float(check_array_image(x))


def to_uint8(image: ImageLike) -> np.ndarray:
    """Convert to ``uint8`` (float ``[0, 1]`` is scaled by 255, rounded and clipped; NaN -> 0).

    The shape is kept (``H x W``, ``H x W x C``, batched ...). ``uint8`` arrays are returned
    unchanged, ``bool`` become 0/255, PIL images become their 8-bit RGB pixels.
    """
    if isinstance(image, Image.Image):
        return np.asarray(_pil_to_rgb8(_oriented_if_tagged(image)), dtype=np.uint8).copy()
    x = np.asarray(image)
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_:
        return x.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(x.dtype, np.floating):
        return _float_to_u8(x)
    raise TypeError(f"to_uint8: unsupported dtype {x.dtype} (use float in [0, 1], uint8 or bool)")


def _float_to_u8(x: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.rint(np.clip(x, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


def _as_rgb(f: np.ndarray, *, white: float) -> np.ndarray:
    """``H x W`` / ``H x W x {1,3,4}`` float -> ``H x W x 3`` (alpha composited on white)."""
    if f.ndim == 2:
        f = f[:, :, None]
    if f.ndim != 3:
        raise ValueError(f"expected an H x W or H x W x C image, got shape {f.shape}")
    c = f.shape[2]
    if c == 1:
        f = np.repeat(f, 3, axis=2)
    elif c == 4:
        alpha = f[:, :, 3:4]
        f = f[:, :, :3] * alpha + np.float32(white) * (1.0 - alpha)
    elif c != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got shape {f.shape}")
    return np.ascontiguousarray(f, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Resizing and cropping (float arrays)
# --------------------------------------------------------------------------------------------


def _scaled_size(w: int, h: int, scale: float) -> tuple[int, int]:
    return max(1, round(w * scale)), max(1, round(h * scale))


def resize(x: np.ndarray, size: tuple[int, int], *, method: Resample = "lanczos") -> np.ndarray:
    """Resize ``H x W``, ``H x W x C`` or ``N x H x W x C`` float images to ``size = (h, w)``.

    Each channel is resampled in exact float (a Pillow mode-``F`` image) with proper
    antialiasing when shrinking; the result is ``float32`` clipped to ``[0, 1]``.
    """
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"resize: target size must be positive, got {(h, w)}")
    if method not in _RESAMPLING:
        raise ValueError(f"resize: unknown method {method!r}; choose from {sorted(_RESAMPLING)}")
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"resize: expected a float image in [0, 1], got {a.dtype} (see to_float)")
    a = a.astype(np.float32, copy=False)
    if a.ndim == 4:
        return np.stack([resize(img, (h, w), method=method) for img in a])
    if a.ndim == 2:
        return _resize_plane(a, h, w, method)
    if a.ndim != 3:
        raise ValueError(f"resize: expected H x W, H x W x C or N x H x W x C, got {a.shape}")
    if a.shape[:2] == (h, w):
        return np.clip(a, 0.0, 1.0)
    return np.stack([_resize_plane(a[:, :, c], h, w, method) for c in range(a.shape[2])], axis=2)


def _resize_plane(p: np.ndarray, h: int, w: int, method: str) -> np.ndarray:
    if p.shape == (h, w):
        return np.clip(p, 0.0, 1.0)
    im = Image.fromarray(np.ascontiguousarray(p, dtype=np.float32))  # mode "F"
    out = np.asarray(im.resize((w, h), _RESAMPLING[method]), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def resize_max_side(
    x: np.ndarray, max_side: int, *, upscale: bool = False, method: Resample = "lanczos"
) -> np.ndarray:
    """Scale so the longer side is ``max_side`` (aspect kept); smaller images are left alone
    unless ``upscale=True``."""
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    h, w = _hw(x)
    long = max(h, w)
    if long == max_side or (long < max_side and not upscale):
        return np.asarray(x, dtype=np.float32)
    nw, nh = _scaled_size(w, h, max_side / long)
    return resize(x, (nh, nw), method=method)


def resize_short_side(x: np.ndarray, size: int, *, method: Resample = "lanczos") -> np.ndarray:
    """Scale (up or down) so the shorter side is exactly ``size``, keeping the aspect ratio."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    h, w = _hw(x)
    short = min(h, w)
    if short == size:
        return np.asarray(x, dtype=np.float32)
    scale = size / short
    nh, nw = (size, max(1, round(w * scale))) if h <= w else (max(1, round(h * scale)), size)
    return resize(x, (nh, nw), method=method)


def short_side_center_square(x: np.ndarray, size: int, *,
                             method: Resample = "lanczos") -> np.ndarray:
    """``center_crop(resize_short_side(x, size), (size, size))`` of a float ``H x W [x C]``
    image, without making the whole resized image: Pillow resamples only the square's box of
    the source (the same sample positions and filter support, so the same pixels up to float
    rounding). Memory and time stay bounded for any aspect ratio: a 1 x 1000 image would
    otherwise become 256 x 256000 first."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    a = np.asarray(x, dtype=np.float32)
    h, w = _hw(a)
    if min(h, w) == size:
        return center_crop(a, (size, size))
    if method not in _RESAMPLING:
        raise ValueError(f"resize: unknown method {method!r}; choose from {sorted(_RESAMPLING)}")
    scale = size / min(h, w)
    nh, nw = (size, max(1, round(w * scale))) if h <= w else (max(1, round(h * scale)), size)
    top, left = (nh - size) // 2, (nw - size) // 2
    sy, sx = h / nh, w / nw
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)

    def plane(p: np.ndarray) -> np.ndarray:
        im = Image.fromarray(np.ascontiguousarray(p, dtype=np.float32))  # mode "F"
        out = im.resize((size, size), _RESAMPLING[method], box=box)
        return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)

    if a.ndim == 2:
        return plane(a)
    return np.stack([plane(a[:, :, c]) for c in range(a.shape[2])], axis=2)


def center_crop(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crop the central ``size = (h, w)`` region of an ``H x W [x C]`` image (a view)."""
    h, w = (int(v) for v in size)
    ih, iw = _hw(x)
    if not (1 <= h <= ih and 1 <= w <= iw):
        raise ValueError(f"center_crop: cannot crop {(h, w)} from a {ih} x {iw} image")
    top, left = (ih - h) // 2, (iw - w) // 2
    return x[top : top + h, left : left + w]


def center_crop_square(x: np.ndarray) -> np.ndarray:
    """The largest centred square of an ``H x W [x C]`` image."""
    h, w = _hw(x)
    s = min(h, w)
    return center_crop(x, (s, s))


def _hw(x: Any) -> tuple[int, int]:
    shape = np.shape(x)
    if len(shape) not in (2, 3):
        raise ValueError(f"expected an H x W or H x W x C image, got shape {tuple(shape)}")
    return int(shape[0]), int(shape[1])


# --------------------------------------------------------------------------------------------
# Padding (NumPy or JAX, HW / HWC / NHWC)
# --------------------------------------------------------------------------------------------


def _spatial_axes(ndim: int) -> tuple[int, int]:
    if ndim in (2, 3):
        return 0, 1
    if ndim == 4:
        return 1, 2
    raise ValueError(f"expected H x W, H x W x C or N x H x W x C, got {ndim} dimensions")


def _array_namespace(x: Any) -> Any:
    if type(x).__module__.split(".")[0] in ("jax", "jaxlib"):
        import jax.numpy as jnp

        return jnp
    return np


def pad_to_multiple(
    x: Any, k: int, mode: Literal["reflect", "symmetric", "edge", "constant"] = "reflect"
) -> tuple[Any, tuple[int, int]]:
    """Pad bottom/right so that height and width are multiples of ``k``.

    Works on NumPy and JAX arrays shaped ``H x W``, ``H x W x C`` or ``N x H x W x C`` (only
    the spatial axes are padded). Returns ``(padded, (h, w))`` with the original size, for
    :func:`crop_to`. ``reflect`` needs ``pad < size`` on an axis: when the pad is larger (tiny
    images) that axis falls back to ``symmetric`` (``pad <= size``) or ``edge``.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"pad_to_multiple: k must be a positive integer, got {k!r}")
    k = int(k)
    if mode not in ("reflect", "symmetric", "edge", "constant"):
        raise ValueError(f"pad_to_multiple: unknown mode {mode!r}")
    xp = _array_namespace(x)
    ay, ax = _spatial_axes(x.ndim)
    h, w = int(x.shape[ay]), int(x.shape[ax])
    pads = {ay: (-h) % k, ax: (-w) % k}
    out = x
    # One axis at a time, so each axis can pick its own fallback mode.
    for axis, (size, pad) in ((ay, (h, pads[ay])), (ax, (w, pads[ax]))):
        if pad == 0:
            continue
        m: str = mode
        if m == "reflect" and pad > size - 1:
            m = "symmetric" if pad <= size else "edge"
        elif m == "symmetric" and pad > size:
            m = "edge"
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, pad)
        out = xp.pad(out, widths, mode=m)
    return out, (h, w)


def crop_to(x: Any, size: tuple[int, int]) -> Any:
    """Undo :func:`pad_to_multiple`: keep the top-left ``size = (h, w)`` of the spatial axes."""
    h, w = (int(v) for v in size)
    ay, _ = _spatial_axes(x.ndim)
    if x.shape[ay] < h or x.shape[ay + 1] < w:
        raise ValueError(f"crop_to: cannot crop {(h, w)} from shape {tuple(x.shape)}")
    if ay == 0:
        return x[:h, :w]
    return x[:, :h, :w]


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_image(
    path: PathLike, image: ImageLike, *, overwrite: bool = False, quality: int = 95
) -> Path:
    """Write ``image`` to ``path`` atomically; the format comes from the extension.

    ``image`` is a float array in ``[0, 1]`` or a ``uint8`` array (``H x W``, ``H x W x 1/3/4``,
    or a batch of one), or a PIL image. Supported extensions: ``.png``, ``.jpg``/``.jpeg``,
    ``.webp``, ``.bmp``, ``.tif``/``.tiff``. Parent folders are created. The data goes to a
    temporary file in the destination folder that is fsync'ed and then renamed over ``path``,
    so readers never see a partial file and a failed write leaves any old file intact.
    ``quality`` (1-100) is used for JPEG and WebP; JPEGs at quality >= 90 use 4:4:4 chroma.

    Raises:
        ImageError: unknown extension, ``path`` exists and ``overwrite`` is false, ``path``
            is a directory, or it cannot be written (permission, read-only, disk full, ...).
        ConfigError: ``quality`` outside 1..100.
    """
    name = os.fspath(path)
    p = Path(name)
    ext = p.suffix.lower()
    fmt = SAVE_FORMATS.get(ext)
    if fmt is None:
        exts = ", ".join(sorted(SAVE_FORMATS))
        what = f"'{p.suffix}'" if p.suffix else "no extension"
        raise ImageError(name, f"unsupported output format ({what}); use one of {exts}")
    if not 1 <= int(quality) <= 100:
        raise ConfigError(f"quality must be in 1..100, got {quality}")
    try:
        is_dir = p.is_dir()
    except OSError as e:  # (a name over 255 bytes: ENAMETOOLONG was a traceback)
        raise ImageError(name, f"cannot write: {_os_reason(e)}") from None
    if is_dir:
        raise ImageError(name, "is a directory, expected an image file name")
    if not overwrite and os.path.lexists(name):
        raise ImageError(name, "exists; pass overwrite=True (or --overwrite)")

    pil = _to_savable_pil(image, fmt)
    if max(pil.size) > MAX_SAVE_SIDE.get(fmt, max(pil.size)):
        raise ImageError(name, f"{pil.size[0]}x{pil.size[1]} is too large for {fmt} (at most "
                               f"{MAX_SAVE_SIDE[fmt]} px per side): save as .png or .tif, or "
                               "a smaller --max-size")
    options: dict[str, Any] = {}
    if fmt == "JPEG":
        subsampling = 0 if quality >= 90 else 2  # 4:4:4 chroma keeps fine colour texture
        options = {"quality": int(quality), "optimize": True, "subsampling": subsampling}
    elif fmt == "WEBP":
        options = {"quality": int(quality), "method": 4}
    elif fmt == "PNG":
        options = {"compress_level": 6}
    elif fmt == "TIFF":  # lossless, as uncompressed (which was 3x the PNG), and read everywhere
        options = {"compression": "tiff_adobe_deflate"}

    parent = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ImageError(name, "cannot write: a parent path is not a directory") from None
    except OSError as e:
        raise ImageError(name, f"cannot write: {_os_reason(e)}") from None

    remove_stale_temps(p)  # (a batch killed midway left one per image being written)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(p.name), suffix=".tmp", dir=parent)
    except OSError as e:
        raise ImageError(name, f"cannot write: {_os_reason(e)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            pil.save(f, format=fmt, **options)
            f.flush()
            os.fsync(f.fileno())
        set_new_file_mode(tmp, name if overwrite else None)
        if overwrite:
            os.replace(tmp, name)
        else:
            link_no_clobber(tmp, name)
        _fsync_dir(parent)
    except ImageError:
        raise
    except OSError as e:
        raise ImageError(name, f"cannot write: {_os_reason(e)}") from None
    finally:
        if os.path.lexists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return p


def _fsync_dir(d: Path) -> None:
    """Make the rename durable (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _to_savable_pil(image: ImageLike, fmt: str) -> Image.Image:
    keeps_alpha = fmt in ("PNG", "WEBP", "TIFF")
    if isinstance(image, Image.Image):
        # as shown and in sRGB, as an array of it would be (to_uint8): the EXIF orientation
        # was dropped (saved sideways), an ICC profile kept by PNG but not JPEG (other colours)
        pil = _oriented_if_tagged(image)
        if pil.mode in _HIGH_DEPTH_MODES:
            pil = Image.fromarray(_float_to_u8(_high_depth_to_float(pil)))
        elif pil.info.get("icc_profile"):
            if pil.mode == "RGBA" and keeps_alpha:
                rgb = pil.convert("RGB")
                rgb.info["icc_profile"] = pil.info["icc_profile"]
                rgb = _icc_to_srgb(rgb).copy()
                rgb.putalpha(pil.getchannel("A"))
                pil = rgb
            else:
                pil = _pil_to_rgb8(pil).copy()
            pil.info.pop("icc_profile", None)  # (a copy: sRGB now, as every output)
    else:
        a = to_uint8(image)
        if a.ndim == 4 and a.shape[0] == 1:
            a = a[0]
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
            raise ValueError(f"save_image: expected H x W or H x W x 1/3/4 image, got {a.shape}")
        pil = Image.fromarray(np.ascontiguousarray(a))
    if pil.mode in ("RGB", "L") or (pil.mode == "RGBA" and keeps_alpha):
        return pil
    if pil.mode == "LA" and keeps_alpha and fmt != "WEBP":
        return pil
    return _pil_to_rgb8(pil)


# --------------------------------------------------------------------------------------------
# Finding files
# --------------------------------------------------------------------------------------------


def is_image_file(path: PathLike) -> bool:
    """Whether ``path`` has an image extension (case-insensitive): one of
    ``IMAGE_EXTENSIONS``, or of ``UNREADABLE_EXTENSIONS`` (an image all the same, which a batch
    reports as skipped rather than leaves out without a word). The file is not opened."""
    ext = Path(os.fspath(path)).suffix.lower()
    return ext in IMAGE_EXTENSIONS or ext in UNREADABLE_EXTENSIONS


def list_images(spec: PathLike, *, recursive: bool = False,
                unlisted: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Expand an image file, a directory or a glob pattern into a sorted list of image files.

    * a file: returned as is (whatever its extension; :func:`load_image` judges the content);
    * a directory: the image files in it (:func:`is_image_file`: ``IMAGE_EXTENSIONS`` or
      ``UNREADABLE_EXTENSIONS``, case-insensitive), or also in its subfolders with
      ``recursive=True``; hidden files (``.name``) are skipped;
    * a glob pattern (``*``, ``?``, ``[...]``; ``**`` matches subfolders): the matching image
      files.

    A file with an extension of ``UNREADABLE_EXTENSIONS`` (HEIC without ``pillow-heif``, a
    camera raw), and a symlink with an image extension whose target is missing or that is part
    of a loop, are listed: loading one says why it is not read ("no such file", "too many
    levels of symbolic links"), so that a batch reports it instead of dropping it without a
    word. ``unlisted``: a list that collects ``(folder, reason)`` for subfolders that cannot be
    read, which are then skipped (a batch goes on with the rest); without it such a folder is
    an error.

    Raises:
        ImageError: nothing matched, the path does not exist, or a directory cannot be read.
    """
    name = os.fspath(spec)
    if not name.strip():  # (``--content ""`` said ": no such file or directory")
        raise ImageError(None, f"the image file or folder name is empty ({name!r})")
    if os.path.isfile(name) or _dangling(name):  # (a broken link: "no such file" when loaded)
        return [Path(name)]
    if os.path.isdir(name):
        found = sorted(_scan_dir(name, recursive, unlisted), key=_sort_key)
        if not found:
            exts = describe_image_extensions()
            where = "this directory or its subfolders" if recursive else "this directory"
            raise ImageError(name, f"no image files ({exts}) in {where}"
                             + _empty_listing_hint(name, recursive))
        return found
    if _GLOB_MAGIC.search(name):
        matches = {
            Path(m)
            for m in _glob_files(name, unlisted)
            if is_image_file(m) and (os.path.isfile(m) or _dangling(m))
            and not Path(m).name.startswith(".")
        }
        if not matches:
            head = os.path.dirname(name)
            if "[" in head and os.path.isdir(head):  # ("Photos [2024]/*.jpg": a character class)
                raise ImageError(name, f"no image files match this pattern (its folder "
                                       f"{head} is read as a pattern too, '[' starting a "
                                       "wildcard: write '[[]' for a '[', or give the folder "
                                       "itself)")
            raise ImageError(name, "no image files match this pattern")
        return sorted(matches, key=_sort_key)
    if os.path.lexists(name):
        raise ImageError(name, "not a regular file or directory")
    try:
        os.stat(name)
    except PermissionError:  # (a file in a folder that cannot be searched is not "missing")
        raise ImageError(name, "permission denied (a folder on its path cannot be "
                               "searched)") from None
    except NotADirectoryError as e:  # ("photo.jpg/": it exists, a file; "no such file" misled)
        raise ImageError(name, _os_reason(e)) from None
    except OSError:
        pass
    raise ImageError(name, "no such file or directory")


def _empty_listing_hint(folder: str, recursive: bool) -> str:
    """What a folder without image files holds instead, for the error (it said only "no image
    files"): subfolders that --recursive would take, files left out as hidden or without an
    image extension (a JPEG saved as ``IMG_001``)."""
    try:  # (best effort: an entry that cannot be looked at, a symlink loop, fails it all)
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = [e for e in entries if not e.name.startswith(".") and e.is_dir()]
        others = sorted((e.name for e in entries if e.is_file()),
                        key=lambda n: (n[:1] == ".", n))
    except OSError:
        return ""
    said = []
    if subdirs and not recursive:
        said.append(f"{len(subdirs)} subfolder{'s' if len(subdirs) > 1 else ''} (--recursive "
                    "looks in them)")
    if others:
        said.append(f"{len(others)} file{'s' if len(others) > 1 else ''} left out as hidden or "
                    f"not named as images (e.g. {others[0]!r})")
    return f"; it holds {' and '.join(said)}" if said else ""


def _dangling(path: str) -> bool:
    """A symlink whose target does not exist, or that is part of a loop."""
    return os.path.islink(path) and not os.path.exists(path)


def _scan_dir(root: str, recursive: bool,
              unlisted: list[tuple[Path, str]] | None = None) -> Iterable[Path]:
    """Depth-first listing; every real directory is read once, so symlinks to folders are
    followed but a link back up the tree (a loop) or a second link to a folder already listed
    adds nothing (before, a loop listed each image once per level down to ELOOP). A subfolder
    that cannot be read is added to ``unlisted`` (if given) and skipped; ``root`` is an error."""
    stack = [root]
    seen: set[tuple[int, int]] = set()
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as e:
            _skip_or_raise(d, _listing_error(e), unlisted, fatal=d == root)
            continue
        subdirs = []
        for e in sorted(entries, key=lambda e: e.name):  # scandir's order is the filesystem's
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir()
                listed = not is_dir and is_image_file(e.name) and (e.is_file()
                                                                   or _dangling(e.path))
            except OSError:  # a symlink loop (ELOOP): listed as a dangling link is
                is_dir, listed = False, is_image_file(e.name) and _dangling(e.path)
            if is_dir and recursive:
                subdirs.append(e.path)
            elif listed:
                yield Path(e.path)
        stack.extend(reversed(subdirs))  # visited in name order


def _listing_error(e: OSError) -> str:
    return ("permission denied (cannot list directory)" if isinstance(e, PermissionError)
            else f"cannot list directory: {_os_reason(e)}")


def _skip_or_raise(folder: str, why: str, unlisted: list[tuple[Path, str]] | None, *,
                   fatal: bool) -> None:
    """A folder that cannot be listed or searched: collected in ``unlisted`` (the caller goes
    on with the rest), or an error when there is no list or it is the folder asked for."""
    if unlisted is None or fatal:
        raise ImageError(folder, why) from None  # (called in an except block)
    unlisted.append((Path(folder), why))


def glob_base(pattern: str) -> tuple[str, tuple[str, ...]] | None:
    """A glob pattern split at its first component with a wildcard: ``(literal base folder,
    the rest)`` (``("photos", ("**", "*.jpg"))``; base ``""`` when the first component has
    one), or None without a wildcard."""
    parts = Path(pattern).parts
    i = next((k for k, part in enumerate(parts) if _GLOB_MAGIC.search(part)), None)
    if i is None:
        return None
    return (os.path.join(*parts[:i]) if i else ""), parts[i:]


def _glob_files(pattern: str, unlisted: list[tuple[Path, str]] | None = None) -> Iterable[str]:
    """Paths matching a glob ``pattern``. Python's ``glob`` with ``**`` follows symlinked
    folders without loop detection (each level of a loop matches again; two loops: an
    exponential walk), so ``**`` patterns are matched against :func:`_scan_dir`'s loop-safe
    listing of the pattern's literal base folder instead; other patterns level by level
    (:func:`_walk_glob`), which unlike :mod:`glob` reports folders it cannot list."""
    if pattern.endswith(("/", os.sep)):  # folders only, as glob: never an image file
        return []
    split = glob_base(pattern)
    if split is None:  # (no wildcard: the path itself, as glob)
        return [pattern] if os.path.lexists(pattern) else []
    literal, rest = split
    if "**" not in pattern:
        return _walk_glob(literal, rest, unlisted)
    base = literal or os.curdir
    if not os.path.isdir(base):
        return []
    rx = re.compile(_glob_regex(rest))
    found = []
    skipped: list[tuple[Path, str]] | None = None if unlisted is None else []
    for p in _scan_dir(base, recursive=True, unlisted=skipped):
        rel = os.path.relpath(p, base).replace(os.sep, "/")
        if rx.fullmatch(rel):
            found.append(os.path.join(base, rel) if literal else rel)
    if skipped:  # only unreadable folders the pattern could have matched in are news
        unlisted.extend((d, why) for d, why in skipped
                        if _could_hold(Path(os.path.relpath(d, base)).parts, rest))
    return found


def _walk_glob(base: str, parts: Sequence[str],
               unlisted: list[tuple[Path, str]] | None) -> list[str]:
    """Paths matching the glob ``parts`` (no ``**``) below the literal folder ``base`` ("" for
    the working directory), level by level as :mod:`glob` matches them (hidden names only for a
    part that starts with a dot; folders only before the last part). Unlike :mod:`glob`, which
    passes over a folder it cannot list without a word, such a folder is added to ``unlisted``
    (if given; otherwise an error), and ``base`` itself is an error: the folder the pattern
    names is not "no match"."""
    import fnmatch

    level, found = [base], []
    for k, part in enumerate(parts):
        last, nxt = k == len(parts) - 1, []
        for d in level:
            if not _GLOB_MAGIC.search(part):  # a literal name: no listing needed
                p = os.path.join(d, part)
                try:
                    st = os.lstat(p) if last else os.stat(p)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except OSError as e:  # (a folder that cannot be searched: EACCES)
                    _skip_or_raise(d or os.curdir, f"cannot search directory: {_os_reason(e)}",
                                   unlisted, fatal=k == 0)
                    continue
                if last or stat.S_ISDIR(st.st_mode):
                    (found if last else nxt).append(p)
                continue
            try:
                with os.scandir(d or os.curdir) as it:
                    names = sorted((e.name, e) for e in it)
            except (FileNotFoundError, NotADirectoryError):
                continue  # (no such base folder: nothing matches)
            except OSError as e:
                _skip_or_raise(d or os.curdir, _listing_error(e), unlisted, fatal=k == 0)
                continue
            hidden_ok = part.startswith(".")
            for name, e in names:
                if (name.startswith(".") and not hidden_ok) or not fnmatch.fnmatch(name, part):
                    continue
                if last:
                    found.append(os.path.join(d, name))
                    continue
                try:
                    if e.is_dir():
                        nxt.append(os.path.join(d, name))
                except OSError:
                    continue
        level = nxt
    return found


def _could_hold(folder: Sequence[str], parts: Sequence[str]) -> bool:
    """Whether a folder (its path parts below the pattern's literal base) could hold a match
    of the glob ``parts``: its names match the pattern's folder parts up to a ``**``."""
    import fnmatch

    for k, name in enumerate(folder):
        if parts[k] == "**":  # (first: a trailing ** matches files at any depth too)
            return True
        if k >= len(parts) - 1:  # deeper than the pattern's folders
            return False
        if not fnmatch.fnmatchcase(name, parts[k]):
            return False
    return True


def _glob_regex(parts: Sequence[str]) -> str:
    """A regex for ``/``-joined relative paths matching glob ``parts`` (``**``: any number of
    folders, ``*``/``?``/``[...]`` within one name), as :mod:`glob` with ``recursive=True``."""
    out = []
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        if part == "**":
            out.append("(?:[^/]+/)*[^/]+" if last else "(?:[^/]+/)*")
            continue
        rx, j = "", 0
        while j < len(part):
            c = part[j]
            if c == "*":
                rx += "[^/]*"
            elif c == "?":
                rx += "[^/]"
            elif c == "[":
                k2 = j + 1 + (part[j + 1:j + 2] == "!")
                end = part.find("]", k2 + (part[k2:k2 + 1] == "]"))  # a leading ] is literal
                if end < 0:
                    rx += re.escape(c)  # no closing bracket: a literal [
                else:
                    neg = part[j + 1] == "!"
                    body = "".join(ch if ch == "-" else re.escape(ch) for ch in part[k2:end])
                    rx += ("[^/" if neg else "[") + body + "]"
                    j = end
            else:
                rx += re.escape(c)
            j += 1
        out.append(rx if last else rx + "/")
    return "".join(out)


def _sort_key(p: Path) -> tuple[str, ...]:
    return p.parts


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _one_line(e: object) -> str:
    s = " ".join(str(e).split())
    if not s and isinstance(e, BaseException):
        s = type(e).__name__
    return s if len(s) <= 200 else s[:197] + "..."
