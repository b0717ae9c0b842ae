"""Inference weights of an :class:`~arbitrary_nst.models.ArbitraryStyleModel`: one safetensors file.

The file holds only the trainable parameters (``nnx.Param``: transfer network, predictor MLP and
heads), named by their NNX path joined with ``/`` (``transfer_net/contract/conv1/kernel``, ...),
and the model config in the safetensors header ``metadata`` (string -> string):

* ``format``: ``arbitrary_nst.arbitrary_style_model``; ``format_version``: ``1``;
* ``model_config``: JSON of :meth:`ArbitraryStyleModel.config` (width, embedding_dim,
  hidden_dim, style_taps, feature_norm, vgg_pooling, palette, ...);
* ``info``: free-form JSON (training step, config name, ...), optional.

The frozen VGG16 is *not* stored (it is ~59 MB and the same for every model): loading rebuilds it
from :mod:`arbitrary_nst.weights`. Weights may be stored as float16 to halve the file; they are
always float32 in memory.

Every problem with a file (missing, not safetensors, truncated, another format, missing or
mis-shaped tensors, non-finite values) raises :class:`~arbitrary_nst.errors.ModelError` with a
one-line ``path: reason`` message.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from .errors import ConfigError, ImageError, ModelError, NSTError, out_of_memory
from .files import check_output_file, regular_file_problem, write_atomically
from .models import (CIN_LAYER_NAMES, MODEL_CONFIG_KEYS, ArbitraryStyleModel, check_model_config,
                     cin_layer_channels)
from .vgg import tap_channels

FORMAT = "arbitrary_nst.arbitrary_style_model"
FORMAT_VERSION = "1"
_DTYPES = {"float32": np.float32, "float16": np.float16}


def model_tensors(model: ArbitraryStyleModel) -> dict[str, np.ndarray]:
    """``{"a/b/kernel": float32 array}`` of every ``nnx.Param`` of ``model``."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        out["/".join(str(p) for p in path)] = np.asarray(var.get_value(), np.float32)
    return out


def export_model(model: ArbitraryStyleModel, path: str | os.PathLike, *, dtype: str = "float32",
                 info: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``model``'s inference weights to ``path`` (atomically: temp file + rename), a
    ``.safetensors`` file that does not exist yet unless ``overwrite``.

    ``dtype``: ``"float32"`` (exact) or ``"float16"`` (half the size; values are rounded).
    Returns the path written.
    """
    _check_destination(path, overwrite)
    config = model.config()
    try:  # (m.palette = 5.0 was written, and that file refused by every loader)
        check_model_config(config)
    except ConfigError as e:
        raise ConfigError(f"{os.fspath(path)}: not written: {e}") from None
    return _write_export(model_tensors(model), config, path, dtype=dtype, info=info)


def convert_export(src: str | os.PathLike, dst: str | os.PathLike, *,
                   dtype: str = "float16", overwrite: bool = False) -> Path:
    """Rewrite the export ``src`` as ``dst`` with its weights stored as ``dtype`` (e.g. float16
    to carry a model to a GPU loan in half the bytes), its header unchanged; no model or VGG16
    is built. ``dst`` is never ``src`` and replaces an existing file only with ``overwrite``.
    Raises ModelError for an unreadable ``src``, ConfigError for a bad dtype or ``dst``."""
    _check_destination(dst, overwrite, inputs=[src])  # (before reading src)
    tensors, header = read_export(src)
    return _write_export(tensors, header["model_config"], dst, dtype=dtype, info=header["info"])


def _check_destination(path: str | os.PathLike, overwrite: bool, inputs=()) -> None:
    """A model file's destination: a ``.safetensors`` name, never an input, an existing file
    only with ``overwrite`` (the library wrote over anything: a photo, the built-in model)."""
    try:
        check_output_file(path, overwrite=overwrite, inputs=inputs, suffixes={".safetensors"})
    except ImageError as e:
        raise ConfigError(str(e).replace("pass --overwrite", "pass overwrite=True")) from None


def _write_export(tensors: dict[str, np.ndarray], model_config: dict[str, Any],
                  path: str | os.PathLike, *, dtype: str, info: dict[str, Any] | None) -> Path:
    """Write an export (its destination checked by the caller: _check_destination)."""
    from safetensors.numpy import save

    if dtype not in _DTYPES:
        raise ConfigError(f"export dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    tensors = {k: np.ascontiguousarray(v.astype(_DTYPES[dtype])) for k, v in tensors.items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "model_config": json.dumps(model_config, sort_keys=True)}
    if info:
        meta["info"] = json.dumps(info, sort_keys=True, default=str)
    blob = _sorted_header(save(tensors, metadata=meta))
    return write_atomically(path, lambda f: f.write(blob))


def _sorted_header(blob: bytes) -> bytes:
    """The safetensors file ``blob`` with its JSON header's keys sorted: safetensors writes
    the metadata in hash order, which changes from call to call, so exports of the same
    weights and info had different bytes (a checksum could not tell a rewritten export from a
    changed one). The tensor bytes and their offsets are unchanged."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # (safetensors pads the header to 8 bytes with spaces)
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


class OnnxFileGiven(ModelError):
    """An ``infer.py export-onnx`` file given where a model export is read (stylizing adds
    how to run the export on onnxruntime: the other commands have no --backend)."""


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def read_export(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read an export without building the model: ``(float32 tensors, header dict)`` where the
    header has ``model_config`` (dict) and ``info`` (dict, possibly empty). The tensors' names,
    dtypes and shapes are checked against the model_config from the file's header before any
    tensor data is read. Raises ModelError."""
    name = os.fspath(path)
    # (a FIFO blocked in safe_open's open(2) for good: Ctrl-C and SIGTERM did not get through)
    if (why := regular_file_problem(name)) is not None:
        raise ModelError(f"{name}: {why}" + (", not a model file" if why == "is a directory"
                                             else ""))
    # (names, dtypes and shapes from the header only: every tensor was read in full first, so
    # an extra one declared 2 GiB (a sparse file) took 5 GB before it was refused)
    meta, declared = _read_safetensors(name, lambda f: (dict(f.metadata() or {}), {
        k: (s.get_dtype(), tuple(s.get_shape())) for k in f.keys() for s in [f.get_slice(k)]}))
    if meta.get("format") != FORMAT:
        raise ModelError(f"{name}: not an arbitrary_nst model export "
                         f"(format {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{name}: unsupported export version {meta.get('format_version')!r} "
                         f"(this version reads {FORMAT_VERSION!r})")
    try:
        model_config = json.loads(meta["model_config"])
        info = json.loads(meta["info"]) if "info" in meta else {}
    except (KeyError, ValueError, RecursionError) as e:  # (JSON nested 1000+ deep: a traceback)
        raise ModelError(f"{name}: corrupt export header ({type(e).__name__}: {e})") from None
    if not isinstance(model_config, dict) or set(model_config) - set(MODEL_CONFIG_KEYS):
        raise ModelError(f"{name}: corrupt export header (model_config {model_config!r})")
    # (a damaged info, e.g. a list or a step "12.5", was an AttributeError / ValueError
    # traceback in train.py's init_from and --export checks and after a whole distillation)
    if not isinstance(info, dict):
        raise ModelError(f"{name}: corrupt export header (info {_short(info)})")
    for k in ("step", "total_steps", "num_steps"):
        v = info.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ModelError(f"{name}: corrupt export header (info.{k} {_short(v)}, expected "
                             "a whole number >= 0)")
    for k, (dtype, _) in sorted(declared.items()):
        if dtype not in ("F32", "F16"):
            raise ModelError(f"{name}: tensor {k} has dtype {_ST_DTYPES.get(dtype, dtype)}, "
                             "expected float32/float16")
    expected = _expected_shapes(name, model_config)
    _check_names(name, expected, declared)
    for k, want in sorted(expected.items()):
        if declared[k][1] != want:
            raise ModelError(f"{name}: tensor {k} has shape {declared[k][1]}, expected {want}")
    tensors = _read_safetensors(name, lambda f: {k: f.get_tensor(k) for k in expected})
    out = {}
    for k, v in tensors.items():
        v = v.astype(np.float32, copy=False)
        if not np.all(np.isfinite(v)):
            raise ModelError(f"{name}: tensor {k} contains NaN or infinite values")
        out[k] = v
    return out, {"model_config": model_config, "info": info}


#: safetensors' dtype names, as numpy names them (for the messages).
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
              "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64",
              "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool"}


def _read_safetensors(name: str, read):
    """``read(f)`` on the safetensors file ``name`` opened for numpy; ModelError (one line)
    for a file safetensors cannot read."""
    from safetensors import safe_open

    try:
        with safe_open(name, framework="numpy") as f:
            return read(f)
    except Exception as e:  # safetensors raises its own error types (and OSError, ValueError)
        if name.lower().endswith(".onnx"):  # `infer.py export-onnx` output, for deployment
            # (the hint named --backend, which only stylizing has: the Stylizer adds it)
            raise OnnxFileGiven(f"{name}: an ONNX file, not a model export; pass the "
                                ".safetensors export it was made from") from None
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ModelError(f"{name}: not a readable model export (safetensors: {reason})") from None


def _expected_shapes(name: str, model_config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """``{"a/b/kernel": shape}`` of every ``nnx.Param`` of the model ``model_config``
    describes, laid out as ArbitraryStyleModel's constructors do (a test compares them with
    built models), worked out from the config alone: a damaged header's hidden_dim 50000 and
    embedding_dim 10000 built a 7 GB model for a minute before the file's 6 MB of weights were
    found not to fit it. (Not nnx.eval_shape of the constructor: the initial values are drawn
    with NumPy, which cannot be traced, and would still be allocated.)"""
    try:
        check_model_config(model_config)
    except ConfigError as e:
        raise ModelError(f"{name}: invalid model_config in export ({' '.join(str(e).split())})") \
            from None
    defaults = inspect.signature(ArbitraryStyleModel.__init__).parameters
    cfg = {k: model_config.get(k, defaults[k].default)
           for k in ("width", "embedding_dim", "hidden_dim", "style_taps")}
    cin = cin_layer_channels(cfg["width"])  # (10 x c3, c2, c1, 3)
    c1, c2, c3 = cin[11], cin[10], cin[0]
    convs = {"contract/conv1": (9, 3, c1), "contract/conv2": (3, c1, c2),
             "contract/conv3": (3, c2, c3),
             **{f"residual/residual{i}_conv{j}": (3, c3, c3) for i in range(1, 6) for j in (1, 2)},
             "expand/expand_conv1": (3, c3, c2), "expand/expand_conv2": (3, c2, c1),
             "expand/expand_conv3": (9, c1, 3)}
    out = {f"transfer_net/{k}/kernel": (n, n, i, o) for k, (n, i, o) in convs.items()}
    for i, c in enumerate((c1, c2, c3), 1):
        for v in ("scale", "offset"):
            out[f"transfer_net/contract/norm{i}/{v}"] = (c,)
    e, h = int(cfg["embedding_dim"]), int(cfg["hidden_dim"])
    in_dim = 2 * sum(tap_channels(t) for t in cfg["style_taps"])
    for layer, i, o in ([("hidden", in_dim, h), ("bottleneck", h, e)] if h
                        else [("bottleneck", in_dim, e)]):
        out[f"predictor/{layer}/kernel"], out[f"predictor/{layer}/bias"] = (i, o), (o,)
    for layer, c in zip(CIN_LAYER_NAMES, cin):
        out[f"predictor/heads/{layer}/kernel"], out[f"predictor/heads/{layer}/bias"] = \
            (e, 2 * c), (2 * c,)
    return out


def _check_names(name: str, expected, tensors) -> None:
    """ModelError naming ``name`` unless ``tensors`` has exactly the names in ``expected``."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelError(f"{name}: weights do not match its model_config (missing: "
                         f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected: "
                         f"{extra[:3]}{'...' if len(extra) > 3 else ''})")


def recorded_steps(info: dict[str, Any]) -> int:
    """The training steps an export's ``info`` records behind it: ``total_steps`` (a chain of
    runs and distillations), or ``step`` for exports written before it (the built-in v11)."""
    return int(info.get("total_steps", info.get("step", 0)) or 0)


def lineage_name(path: str | os.PathLike) -> str:
    """How an export's ``info.init_from`` names the model a run started from: ``"builtin"``
    for the shipped model, else ``<folder>/<file>`` (a workdir's ``model.safetensors`` was
    only ``model.safetensors``, the built-in model's and every workdir's alike). Short and
    without the machine's absolute path (the file may be shared); the workdir's
    ``init_from.json`` keeps the full path."""
    from .inference import BUILTIN_MODEL

    p = Path(os.path.abspath(os.fspath(path)))
    if p.is_dir():  # a workdir: its export
        p = p / "model.safetensors"
    if os.path.realpath(p) == os.path.realpath(BUILTIN_MODEL):
        return "builtin"
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def load_exported(path: str | os.PathLike, *, vgg=None, dtype=None) -> ArbitraryStyleModel:
    """Rebuild the model from an export. ``vgg``: a VGG16 to share (default:
    ``arbitrary_nst.vgg.load_vgg16()``); ``dtype``: compute dtype (e.g. ``jnp.bfloat16``)."""
    name = os.fspath(path)
    tensors, header = read_export(name)
    if vgg is None:
        from .vgg import load_vgg16

        pooling = header["model_config"].get("vgg_pooling", "max")
        vgg = load_vgg16(pooling=pooling if pooling in ("max", "avg") else "max")
    try:
        model = ArbitraryStyleModel.from_config(vgg, header["model_config"], dtype=dtype,
                                                rngs=nnx.Rngs(0))
    except (NSTError, TypeError, ValueError) as e:
        raise ModelError(f"{name}: invalid model_config in export ({' '.join(str(e).split())})") \
            from None
    except Exception as e:  # a damaged header's width of 1000: MemoryError (137 GiB) traceback
        if out_of_memory(e) is None:  # (MemoryError included)
            raise
        raise ModelError(f"{name}: its model_config ({_config_summary(header)}) describes a "
                         "model too large to build here: the file is damaged or not meant "
                         "for this machine") from None
    assign_tensors(model, tensors, name)
    return model


def _config_summary(header: dict) -> str:
    cfg = header.get("model_config", {})
    return ", ".join(f"{k} {cfg[k]}" for k in ("width", "embedding_dim", "hidden_dim") if k in cfg)


def assign_tensors(model: ArbitraryStyleModel, tensors: dict[str, np.ndarray], name: str) -> None:
    """Set every ``nnx.Param`` of ``model`` from ``tensors`` (as read by :func:`read_export`);
    ModelError naming ``name`` when the names or shapes do not match."""
    state = nnx.state(model, nnx.Param)
    flat = nnx.to_flat_state(state)
    expected = {"/".join(str(p) for p in key): var for key, var in flat}
    _check_names(name, expected, tensors)
    for k, var in expected.items():
        want = tuple(var.get_value().shape)
        if tensors[k].shape != want:
            raise ModelError(f"{name}: tensor {k} has shape {tensors[k].shape}, expected {want}")
        var.set_value(jnp.asarray(tensors[k]))
    nnx.update(model, nnx.from_flat_state(flat))


def model_file(path: str | os.PathLike, *, warn: bool = True) -> str:
    """``path`` itself, or ``path/model.safetensors`` when ``path`` is a training workdir.
    Raises ModelError for a directory without one. ``warn``: say when that export is older
    than the workdir's latest checkpoint (off where the path is only resolved, e.g. for a
    cache key, and the model is loaded, and warned about, elsewhere)."""
    name = os.fspath(path)
    if not name.strip():  # (it said ": no such model file")
        raise ModelError("the model path is empty: give a model export (.safetensors) or a "
                         "training workdir")
    if not os.path.isdir(name):
        return name
    exported = os.path.join(name, "model.safetensors")
    if os.path.isdir(exported):  # (it said "a directory without model.safetensors")
        raise ModelError(f"{exported}: is a directory, not a model file")
    if not os.path.isfile(exported):
        steps = _checkpoint_steps(name)
        if steps:  # (a run exported elsewhere with --export, or one killed outright)
            raise ModelError(f"{name}: a training workdir without model.safetensors (its latest "
                             f"checkpoint is step {max(steps)}): pass the run's export file, "
                             "or resume the run with train.py (same config: it exports when "
                             "it finishes or is stopped)")
        raise ModelError(f"{name}: a directory without model.safetensors (pass the "
                         "export file of a trained model)")
    if warn:
        _warn_if_behind(name, exported)
    return exported


def _checkpoint_steps(workdir: str) -> list[int]:
    """The steps of the checkpoints in a training workdir (none: not one, or not readable)."""
    try:
        return [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
    except OSError:
        return []


def _warn_if_behind(workdir: str, exported: str) -> None:
    """Warn when a workdir's export is older than its latest checkpoint (a run killed outright,
    one that died, or one resumed with ``--export`` elsewhere): ``--model W`` means the
    workdir's training state, and the export silently stood for an earlier step."""
    steps = _checkpoint_steps(workdir)
    if not steps:
        return
    try:
        from safetensors import safe_open

        with safe_open(exported, framework="numpy") as f:
            step = int(json.loads((f.metadata() or {}).get("info", "{}")).get("step", -1))
    except Exception:  # noqa: BLE001 - reading it fails again, with its own one-line error
        return
    if 0 <= step < max(steps):
        logging.getLogger(__name__).warning(
            "%s is the export of step %d, but the workdir's latest checkpoint is step %d: run "
            "train.py on the workdir again (same config: it resumes, and exports when it "
            "finishes or is stopped), or pass an export file",
            exported, step, max(steps))


def init_from_export(model: ArbitraryStyleModel, path: str | os.PathLike) -> dict[str, Any]:
    """Load an export's weights into ``model`` (fine-tuning start point). The export's
    model_config must equal the model's, except ``palette`` (not a weight: a model trained
    without it can be fine-tuned with it); returns the export's header. Raises ModelError."""
    name = model_file(path)
    tensors, header = read_export(name)
    want = json.loads(json.dumps(model.config()))  # tuples -> lists, as in the header
    diff = sorted(k for k in set(want) | set(header["model_config"])
                  if k != "palette" and want.get(k) != header["model_config"].get(k))
    if diff:
        raise ModelError(f"{name}: its model config differs from the training config's in "
                         + ", ".join(f"{k} ({header['model_config'].get(k)!r} vs {want.get(k)!r})"
                                      for k in diff))
    assign_tensors(model, tensors, name)
    return header
