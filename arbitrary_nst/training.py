"""Training of the arbitrary style transfer model (Ghiasi et al. 2017 / Magenta).

One training step (:func:`make_train_step`) is a single ``jax.jit`` with the train state donated:

1. VGG16 features of the style batch at the union of the style-loss taps and the predictor's
   taps, computed once: they give both the Gram targets
   (:class:`~arbitrary_nst.losses.StyleTargets`) and the predictor's pooled statistics ->
   embedding -> per-layer gamma/beta;
2. VGG16 content features (``relu3_3``) of the content batch;
3. the transfer network stylizes the content batch; content + style + TV loss
   (:func:`~arbitrary_nst.losses.perceptual_loss`), averaged over the batch;
4. gradients w.r.t. the ``nnx.Param`` leaves only (the VGG is ``FrozenWeight``), optax update
   (gradient clipping, Adam with warmup/decay);
5. NaN guard: if the loss or the gradient norm is not finite, the update is *skipped* inside the
   step (state unchanged) and the step number is recorded in ``state.bad_step``; the host checks
   it at every log interval and before every checkpoint, then stops with
   :class:`TrainingDiverged`, so non-finite weights are never saved (the update is skipped when
   the new weights would not be finite either). Finite but useless weights (a learning rate of
   1e30) can be: the message then names the checkpoints to delete. No host sync per step
   otherwise.

Data parallelism: a 1-D ``jax.sharding.Mesh`` over all devices (axis ``"data"``); the batch is
sharded along it, the state and the frozen VGG are replicated; XLA inserts the gradient all-reduce.
Multi-host: ``config.distributed.initialize = True`` calls ``jax.distributed.initialize`` first;
each process loads ``batch_size / process_count`` examples (its own data seed) and the global
batch is assembled with ``jax.make_array_from_process_local_data``.

Determinism and resume: the model init, the base RNG key and the data seed come from
``config.seed``; batch ``i`` of the loader is a pure function of ``(seed, i)``. The model has no
stochastic layers, so the step uses no randomness; the base key is kept in the state and
:func:`step_key` (``fold_in(rng, step)``) is the key any stochastic extension must use, which
keeps resumes exact by construction. A checkpoint (Orbax ``CheckpointManager``, atomic: written to a
temporary folder and renamed) holds ``step, params, opt_state, rng, bad_step``; resuming restores
it and restarts the loader at the saved step, so an interrupted run continues bit-identically.

Checkpoints are saved every ``train.checkpoint_every`` steps, at the end, and on SIGINT/SIGTERM/SIGHUP
(the current step finishes, the state is saved, the loop returns cleanly); the last
``train.keep_checkpoints`` are kept. :func:`~arbitrary_nst.export.export_model` writes the small
inference file (trainable weights + model config only).

Workdir layout: ``checkpoints/<step>/``, ``tensorboard/`` (tensorboardX scalars),
``samples/step_XXXXXXX.png`` (fixed content photos x fixed styles) and, by default,
``model.safetensors`` (the export).
"""
from __future__ import annotations

import contextlib
import errno
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import export as export_lib
from . import vgg as vgg_lib
from .device_augment import finish_batch
from .errors import (MAX_SEED, STOP_SIGNALS, ConfigError, ImageError, ModelError, NSTError,
                     check_count, options_named)
from .files import is_inside, make_dir, write_atomically
from .losses import LossConfig, StyleTargets, perceptual_loss
from .models import ArbitraryStyleModel, check_model_config, with_pooling
from .progress import bar as progress_bar

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
SCHEDULES = ("constant", "cosine", "linear")
CHECKPOINT_DIR = "checkpoints"
EXPORT_NAME = "model.safetensors"
TIME_BUDGET_PLAN = "time_budget_plan.json"  # train.time_budget_s: the planned num_steps
INIT_RECORD = "init_from.json"  # train.init_from: where a fine-tuning run started, its steps
#: Train steps the loop may dispatch ahead of the last finished one (see :class:`_DispatchWindow`).
MAX_STEPS_IN_FLIGHT = 2


class TrainingDiverged(NSTError):
    """The loss became NaN/inf; training stopped and the last good checkpoint was kept."""


# ------------------------------------------------------------------------------------------------
# Config helpers


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.key`` for ConfigDict / dict / None, with a default."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default) if hasattr(cfg, key) else default


def _to_plain(x: Any) -> Any:
    """ConfigDict / FrozenConfigDict / tuples -> JSON-friendly dicts and lists."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, Mapping):
        return {str(k): _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    if isinstance(x, (np.generic,)):
        return x.item()
    return x


#: The project's shipped training configs (``configs/`` next to this package).
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


def base_config(name: str, config_file: str | os.PathLike):
    """The config ``name`` (e.g. ``"default.py"``) that the config file ``config_file`` builds
    on: the one next to it, else the project's (a shipped config copied to a user's folder, to
    change it, gave "default.py: config file not found")."""
    near = Path(config_file).with_name(name)
    # (a copy saved under its base's name, cpu_small.py as default.py, is not its own base:
    # that was a RecursionError inside 20000 characters of nested "get_config() failed")
    own = near.is_file() and os.path.samefile(near, config_file)
    return load_config(near if near.is_file() and not own else CONFIGS_DIR / name)


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()):
    """``get_config()`` of the Python file ``path``, with ``key.sub=value`` overrides applied
    (values parsed as Python literals when possible, else kept as strings)."""
    import ast
    import importlib.util

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found")
    if p.suffix != ".py":
        raise ConfigError(f"{path}: a config is a Python file (configs/*.py) defining "
                          "get_config()")
    spec = importlib.util.spec_from_file_location(f"_nst_config_{p.stem}", p)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # a broken config file is a user error
        raise ConfigError(f"{path}: cannot load config ({type(e).__name__}: {e})") from None
    if not hasattr(mod, "get_config"):
        raise ConfigError(f"{path}: defines no get_config()")
    try:
        config = mod.get_config()
    except Exception as e:  # e.g. a typo (c.trian.num_steps) in the user's config
        raise ConfigError(f"{path}: get_config() failed ({type(e).__name__}: "
                          f"{' '.join(str(e).split())})") from None
    check_config_sections(config, str(path))
    given: dict[str, str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        if key.strip() in given:  # (the last one won without a word, as argparse's options did)
            raise ConfigError(f"--set {key.strip()} given twice ({given[key.strip()]!r}, then "
                              f"{raw!r}): give it once")
        given[key.strip()] = raw
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
            if raw.strip().lower() in ("nan", "inf", "+inf", "-inf", "infinity", "-infinity"):
                value = float(raw)  # (then refused by the checks as a number, not a string)
        *parents, leaf = key.split(".")
        node, old = config, None
        try:
            for part in parents:
                node = node[part]
            if leaf not in node:
                raise KeyError(leaf)
            old = node[leaf]
            if isinstance(old, (list, tuple)) and isinstance(value, str):
                value = type(old)([value])  # data.content_dirs=photos/ is one folder
            node[leaf] = value
        except KeyError:
            import difflib

            near = difflib.get_close_matches(key, _dotted_keys(config), n=1, cutoff=0.75)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"override {item!r}: no config field {key!r}{hint}") from None
        except (TypeError, ValueError) as e:
            if old is None or node is config:  # (a path through a value: train.num_steps.x)
                raise ConfigError(f"override {item!r}: {' '.join(str(e).split())}") from None
            raise ConfigError(f"override {item!r}: {key} takes {type(old).__name__} values "
                              f"(it is {old!r}), got {raw!r}") from None
    return config


def refuse_unread_folders(config, overrides: Sequence[str], config_path) -> None:
    """Folders given with ``--set`` (``overrides``) to a config whose source reads none
    (``configs/smoke.py`` is ``synthetic``) are refused: the run trained on procedural images
    without a word. For the commands (train.py, distill); the API's configs may hold folders
    their source does not read."""
    src = str(_get(_get(config, "data", {}), "source", "folder") or "folder")
    if not (src == "synthetic" or src.startswith("npz:")):
        return
    given = {o.partition("=")[0].strip() for o in overrides}
    config_name = Path(config_path).name
    for key in ("data.content_dirs", "data.style_dirs"):
        if key in given and _folder_entries(config.data, key.split(".")[1]):
            raise ConfigError(
                f"--set {key}: the data source is {src!r} ({config_name}), which reads no "
                "folders; add --set data.source=folder to train on them")


def _dotted_keys(node, prefix: str = "") -> list[str]:
    """Every field of a config as ``section.field`` (nested sections too), for suggestions."""
    keys = []
    for k in node.keys():
        keys.append(prefix + k)
        if hasattr(node[k], "keys") and not isinstance(node[k], (str, bytes)):
            keys += _dotted_keys(node[k], prefix + k + ".")
    return keys


def compute_dtype(name: str | None):
    """``"float32"``, ``"bfloat16"`` or ``"auto"`` (bf16 on GPU/TPU, f32 on CPU) -> dtype or
    ``None`` (float32)."""
    name = name or "float32"
    if name == "auto":
        name = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    if name not in DTYPES:
        raise ConfigError(f"train.dtype must be 'float32', 'bfloat16' or 'auto', got {name!r}")
    return None if name == "float32" else DTYPES[name]


def resolve_init_from(value) -> str:
    """``train.init_from``: ``"builtin"`` (the shipped model), an export file, or a training
    workdir holding ``model.safetensors``. Absolute (a workdir's record of where its run began
    was relative to the first run's folder: a resume from elsewhere warned that the same file
    "is not used")."""
    if str(value) == "builtin":
        from .inference import BUILTIN_MODEL

        return str(BUILTIN_MODEL)
    return os.path.abspath(os.path.expanduser(os.fspath(value)))


def _time_budget(tcfg) -> float:
    """``train.time_budget_s`` (0 when absent: configs written before it existed)."""
    return float(_get(tcfg, "time_budget_s", 0) or 0)


def _plan_after(tcfg) -> int:
    return int(_get(tcfg, "plan_after_steps", 20))


def _finite_f32(v) -> bool:
    """Finite as the float32 the step computes with (1e39 is finite in Python, inf there)."""
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.float32(float(v))))


#: The sections every training config has (``configs/default.py``).
CONFIG_SECTIONS = ("model", "data", "loss", "optim", "train")


def check_config_sections(config, where: str = "config") -> None:
    """A ConfigDict with every section of :data:`CONFIG_SECTIONS` (a config file that deleted
    one, or whose get_config() returned a dict or None, gave an AttributeError traceback)."""
    import ml_collections

    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{where}: get_config() must return an ml_collections.ConfigDict "
                          f"(start from configs/default.py's), got {type(config).__name__}")
    missing = [k for k in CONFIG_SECTIONS
               if not isinstance(config.get(k), ml_collections.ConfigDict)]
    if missing:
        raise ConfigError(f"{where}: the config has no {', '.join(missing)} section (start "
                          "from configs/default.py's get_config() and change fields)")


def _sample_names_ok(names, known: Sequence[str]) -> bool:
    return (not isinstance(names, str) and len(names) >= 1
            and all(isinstance(n, str) and n in known for n in names))


def _folder_entries(data_cfg, key: str) -> list:
    """The entries of ``data.<key>`` (``content_dirs`` / ``style_dirs``): one folder given as a
    string is one entry; anything but a list or tuple is none."""
    dirs = _get(data_cfg, key, None)
    if isinstance(dirs, (str, os.PathLike)):
        return [dirs]
    return list(dirs) if isinstance(dirs, (list, tuple)) else []


def validate_config(config) -> None:
    """Raise :class:`ConfigError` for out-of-range training options."""
    from .samples import CONTENT_NAMES, STYLE_NAMES

    check_config_sections(config)
    t, o = config.train, config.optim
    # (field, check, what it must be); a value of the wrong type (None, a string) fails too
    checks = [
        ("train.num_steps", lambda: int(t.num_steps) >= 0, ">= 0"),
        ("train.batch_size", lambda: int(t.batch_size) >= 1, ">= 1"),
        ("train.log_every", lambda: int(t.log_every) >= 1, ">= 1"),
        ("train.checkpoint_every", lambda: int(t.checkpoint_every) >= 0, ">= 0 (0: only at exit)"),
        ("train.keep_checkpoints", lambda: int(t.keep_checkpoints) >= 1, ">= 1"),
        ("train.sample_every", lambda: int(t.sample_every) >= 0, ">= 0"),
        ("train.time_budget_s", lambda: _time_budget(t) >= 0, ">= 0 (0: off)"),
        ("train.plan_after_steps", lambda: _plan_after(t) >= 2, ">= 2"),
        ("train.export_dtype", lambda: str(_get(t, "export_dtype", "float32")) in
         ("float16", "float32"), "'float16' or 'float32'"),
        ("optim.learning_rate", lambda: _finite_f32(o.learning_rate)
         and float(o.learning_rate) > 0, "a finite float32 number > 0"),
        ("optim.schedule", lambda: o.schedule in SCHEDULES, f"one of {SCHEDULES}"),
        ("optim.warmup_steps", lambda: int(o.warmup_steps) >= 0, ">= 0"),
        ("optim.grad_clip_norm", lambda: _finite_f32(o.grad_clip_norm)
         and float(o.grad_clip_norm) >= 0, ">= 0 (0: off)"),
        ("optim.end_learning_rate_factor", lambda: 0 <= float(
            _get(o, "end_learning_rate_factor", 0.0)) <= 1, "in [0, 1]"),
        ("optim.b1", lambda: 0 <= float(_get(o, "b1", 0.9)) < 1, "in [0, 1)"),
        ("optim.b2", lambda: 0 <= float(_get(o, "b2", 0.999)) < 1, "in [0, 1)"),
        ("optim.eps", lambda: _finite_f32(_get(o, "eps", 1e-8))
         and float(_get(o, "eps", 1e-8)) > 0, "a finite float32 number > 0"),
        ("optim.momentum", lambda: 0 <= float(_get(o, "momentum", 0.0) or 0.0) < 1,
         "in [0, 1)"),
        ("train.sample_size", lambda: 32 <= int(_get(t, "sample_size", 256)) <= 2048,
         "in 32..2048 (the VGG needs >= 32 px)"),
        ("train.sample_contents", lambda: _sample_names_ok(
            _get(t, "sample_contents", ("chelsea",)), CONTENT_NAMES),
         f"one or more of {', '.join(CONTENT_NAMES)}"),
        ("train.sample_styles", lambda: _sample_names_ok(
            _get(t, "sample_styles", ("strokes",)), STYLE_NAMES),
         f"one or more of {', '.join(STYLE_NAMES)}"),
        *((f"optim.{m}_lr_multiplier", lambda m=m: _finite_f32(
            _get(o, f"{m}_lr_multiplier", 1.0)) and float(_get(o, f"{m}_lr_multiplier", 1.0))
            >= 0, "a finite number >= 0 (0: frozen)") for m in ("predictor", "embedding",
                                                                  "transfer")),
    ]
    for field, check, must in checks:
        section, name = field.split(".")
        value = _get(config[section], name, None)
        try:  # (a bool is an int to Python and to ml_collections: num_steps=True trained 1)
            ok = not isinstance(value, bool) and check()
        except (TypeError, ValueError, AttributeError, KeyError):
            ok = False
        if not ok:
            raise ConfigError(f"{field} must be {must}, got {value!r}")
    compute_dtype(t.dtype)
    check_count(_get(config, "seed", 0), "seed", 0, MAX_SEED, optional=False)
    init_from = _get(t, "init_from", None)
    if init_from is not None and not isinstance(init_from, (str, os.PathLike)):
        raise ConfigError(f"train.init_from must be 'builtin', an export file or a training "
                          f"workdir (or empty), got {init_from!r}")
    if "loss" in config:  # (a loss layer relu9_9 passed --print-config; training refused it)
        from .losses import LossConfig

        # (a field named as the user sets it: loss.style_layers: unknown VGG16 tap 'relu9_9')
        with options_named({k: f"loss.{k}" for k in config.loss}, otherwise="loss config: "):
            LossConfig.from_config(config.loss)
    if "model" in config:  # (its fields' types: None was a traceback from the constructors)
        with options_named({k: f"model.{k}" for k in config.model},
                           otherwise="model config: "):
            check_model_config(config.model.to_dict() if hasattr(config.model, "to_dict")
                               else dict(config.model))
    for key in ("content_dirs", "style_dirs"):  # ('' was the current folder: its images were
        for d in _folder_entries(config.data, key):  # trained on, the workdir guard missed it)
            if not isinstance(d, (str, os.PathLike)):  # (`[2024]`: a TypeError traceback)
                raise ConfigError(f"data.{key}: {d!r} is not a folder name (quote it: "
                                  f"['{d}'])")
            if not os.fspath(d).strip():
                raise ConfigError(f"data.{key}: an empty folder name ({os.fspath(d)!r}) - is "
                                  "a shell variable unset?")


def make_optimizer(optim_cfg, num_steps: int) -> tuple[optax.GradientTransformation,
                                                        optax.Schedule]:
    """Gradient clipping by global norm (if > 0) + Adam (or SGD) with linear warmup then a
    constant, cosine or linear schedule down to ``learning_rate * end_learning_rate_factor`` at
    ``num_steps``. Magenta: Adam, constant 1e-5 (its predictor starts from Inception weights),
    no clipping (``clip_gradient_norm=0``). SGD exists for numerical comparisons: Adam's first
    updates are ``lr * sign(g)``, which turns rounding noise in near-zero gradient entries into
    O(lr) differences, while SGD's update is linear in the gradient."""
    lr = float(optim_cfg.learning_rate)
    warmup = int(optim_cfg.warmup_steps)
    end = lr * float(_get(optim_cfg, "end_learning_rate_factor", 0.0))
    kind = optim_cfg.schedule
    decay_steps = max(int(num_steps) - warmup, 1)
    if kind == "constant":
        main = optax.constant_schedule(lr)
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
    elif kind == "linear":
        main = optax.linear_schedule(lr, end, decay_steps)
    else:
        raise ConfigError(f"optim.schedule must be one of {SCHEDULES}, got {kind!r}")
    schedule = (optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
                if warmup > 0 else main)
    parts = []
    if float(optim_cfg.grad_clip_norm) > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg.grad_clip_norm)))
    name = _get(optim_cfg, "optimizer", "adam")
    if name == "adam":
        parts.append(optax.adam(schedule, b1=float(_get(optim_cfg, "b1", 0.9)),
                                b2=float(_get(optim_cfg, "b2", 0.999)),
                                eps=float(_get(optim_cfg, "eps", 1e-8))))
    elif name == "sgd":
        momentum = float(_get(optim_cfg, "momentum", 0.0))
        parts.append(optax.sgd(schedule, momentum=momentum or None))
    else:
        raise ConfigError(f"optim.optimizer must be 'adam' or 'sgd', got {name!r}")
    mult = float(_get(optim_cfg, "predictor_lr_multiplier", 1.0))
    emb_mult = float(_get(optim_cfg, "embedding_lr_multiplier", 1.0))
    transfer_mult = float(_get(optim_cfg, "transfer_lr_multiplier", 1.0))
    if min(mult, emb_mult, transfer_mult) < 0:
        raise ConfigError(f"optim.*_lr_multiplier must be >= 0, got predictor {mult}, "
                          f"embedding {emb_mult}, transfer {transfer_mult}")
    if mult != 1.0 or emb_mult != 1.0 or transfer_mult != 1.0:
        parts.append(_scale_predictor_updates(mult, emb_mult, transfer_mult))
    return optax.chain(*parts), schedule


#: The style predictor's style -> embedding MLP (not its gamma/beta heads).
EMBEDDING_MLP = ("hidden", "bottleneck")


def _scale_predictor_updates(mult: float, embedding_mult: float = 1.0,
                             transfer_mult: float = 1.0) -> optax.GradientTransformation:
    """Multiply the style predictor's updates (its MLP and gamma/beta heads) by ``mult``, and
    those of its style -> embedding MLP alone (``EMBEDDING_MLP``) by ``embedding_mult`` too;
    everything else (the transfer network) by ``transfer_mult``. A multiplier 0 freezes its
    part exactly (the update is 0 after Adam).

    Why: every step shows 4 different styles, so the style-specific part of the heads' gradient
    (e_style x dL/d(gamma, beta)) changes sign from step to step and Adam's normalized updates
    for it average out to a small fraction of the learning rate, while the transfer network's
    gradients are consistent. A larger step for the predictor speeds up learning to condition
    on the style without destabilizing the transfer network.

    Why the MLP alone: measured on the eval paintings (RESULTS.md), optimizing just the 100-d
    embedding of a style for 10 Adam steps halves its style loss with the heads and the transfer
    network unchanged, on training paintings as much as on unseen ones, so the style -> embedding
    map is what lags; a 10x step on the whole predictor (heads included) collapsed the
    conditioning."""
    def factor(path) -> float:
        keys = [str(getattr(k, "key", k)) for k in path]
        if not keys or keys[0] != "predictor":
            return transfer_mult
        return mult * (embedding_mult if len(keys) > 1 and keys[1] in EMBEDDING_MLP else 1.0)

    def scale(updates, params=None):
        del params
        return jax.tree_util.tree_map_with_path(lambda path, u: u * factor(path), updates)

    return optax.stateless(scale)


def build_model(config, vgg=None) -> ArbitraryStyleModel:
    """The model of ``config.model`` (initialized from ``config.seed``) around ``vgg`` (default:
    ``load_vgg16(config.vgg_path)``; re-wrapped with ``model.vgg_pooling``), with the compute
    dtype of ``config.train.dtype``. The same VGG is the loss network."""
    m = config.model
    pooling = str(_get(m, "vgg_pooling", "max"))
    vgg_lib.check_pooling(pooling, "model.vgg_pooling")
    if vgg is None:
        vgg = vgg_lib.load_vgg16(_get(config, "vgg_path"), pooling=pooling,
                                 training_copy_ok=True)  # (taps up to relu4_3)
    vgg = with_pooling(vgg, pooling)
    return ArbitraryStyleModel(
        vgg, width=float(m.width), embedding_dim=int(m.embedding_dim),
        hidden_dim=int(m.hidden_dim), style_taps=tuple(m.style_taps),
        feature_norm=str(_get(m, "feature_norm", "layer")),
        palette=float(_get(m, "palette", 0.0)),
        dtype=compute_dtype(config.train.dtype), rngs=nnx.Rngs(int(config.seed)))


# ------------------------------------------------------------------------------------------------
# State and step


@struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; the step donates it).

    ``params``: pure dict of the model's ``nnx.Param`` values; ``rng``: base key (raw uint32[2]);
    ``bad_step``: first step whose loss/gradients were not finite (-1: none).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    bad_step: jax.Array

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state,
                "rng": self.rng, "bad_step": self.bad_step}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainState":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def init_state(model: ArbitraryStyleModel, tx: optax.GradientTransformation,
               seed: int) -> TrainState:
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.PRNGKey(int(seed) + 1), bad_step=jnp.full((), -1, jnp.int32))


def batch_loss(model: ArbitraryStyleModel, content: jax.Array, style: jax.Array,
               loss_cfg: LossConfig, *, dtype=None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean perceptual loss of ``model(content, style)`` over the batch and its terms.

    The style batch goes through the VGG once, at the union of the style-loss taps and the
    predictor's taps: the same activations give the Gram targets and the style embedding.
    """
    vgg = model.vgg
    vparams = vgg.params()

    def feats(x, taps):
        return vgg_lib.features(vparams, x, taps, pooling=vgg.pooling, dtype=dtype)

    style_taps = tuple(dict.fromkeys([*loss_cfg.style_layers, *model.predictor.taps]))
    style_feats = feats(style, style_taps)
    targets = jax.lax.stop_gradient(StyleTargets.from_features(style_feats, loss_cfg))
    embedding = model.predictor.embed_features(style_feats)
    content_feats = jax.lax.stop_gradient(feats(content, tuple(loss_cfg.content_layers)))
    stylized = model.transfer(content, embedding)
    if model.palette:  # the loss sees what users get (models/__init__.py: palette)
        stylized = model.align_palette(stylized, model.palette_moments(style),
                                       exact_gradient=loss_cfg.palette_gradient == "exact")
    total, terms = perceptual_loss(feats, stylized, loss_cfg, content_feats=content_feats,
                                   style_targets=targets)
    metrics = {k: jnp.mean(v) for k, v in terms.items()}
    loss = jnp.mean(total)
    metrics["loss"] = loss
    return loss, metrics


def make_mesh(devices=None) -> Mesh:
    """1-D data-parallel mesh (axis ``"data"``) over ``devices`` (default: all devices)."""
    from .inference import check_devices

    if devices is None:
        return Mesh(np.asarray(jax.devices()).reshape(-1), ("data",))
    return Mesh(np.asarray(check_devices(np.asarray(devices, dtype=object).reshape(-1)),
                           dtype=object), ("data",))


_STEP_CACHE: dict[Any, Callable] = {}


def _host_array(x: Any) -> np.ndarray:
    """A loader's array as sent to the device: uint8 images stay uint8 (a quarter of the
    bytes; :func:`finish_batch` converts them in the step), anything else as float32."""
    x = np.asarray(x)
    return x if x.dtype == np.uint8 else np.asarray(x, np.float32)


def make_train_step(graphdef, loss_cfg: LossConfig, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh: Mesh, *, dtype=None,
                    cache_key: Any = None) -> Callable:
    """``step(state, frozen, batch) -> (state, metrics)``: one jitted, donated, data-parallel
    training step (see the module docstring). ``frozen`` is the model's non-Param state (the
    VGG weights), passed as an argument so it is not baked into the program as constants.
    ``cache_key`` (hashable) memoizes the jitted function within the process, so repeated
    :func:`train` calls with the same setup reuse the compiled step."""
    if cache_key is not None and cache_key in _STEP_CACHE:
        return _STEP_CACHE[cache_key]
    repl = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))

    def loss_fn(params, frozen, batch):
        model = nnx.merge(graphdef, params, frozen)
        batch = finish_batch(batch)  # uint8 -> [0, 1], style colour jitter (data.device_augment)
        return batch_loss(model, batch["content"], batch["style"], loss_cfg, dtype=dtype)

    def step(state: TrainState, frozen, batch):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, frozen, batch)
        gnorm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # (a finite loss and gradient can still give non-finite weights: a huge learning rate)
        finite_params = jax.tree.reduce(lambda a, x: a & jnp.all(jnp.isfinite(x)), params,
                                        jnp.bool_(True))
        ok = jnp.isfinite(loss) & jnp.isfinite(gnorm) & finite_params
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731  (skip a bad update)
        new_state = TrainState(
            step=state.step + 1,
            params=jax.tree.map(keep, params, state.params),
            opt_state=jax.tree.map(keep, opt_state, state.opt_state),
            rng=state.rng,
            bad_step=jnp.where((state.bad_step < 0) & ~ok, state.step, state.bad_step))
        metrics = dict(metrics, grad_norm=gnorm, learning_rate=schedule(state.step))
        return new_state, metrics

    fn = jax.jit(step, donate_argnums=(0,), in_shardings=(repl, repl, data),
                 out_shardings=(repl, repl))
    if cache_key is not None:
        _STEP_CACHE[cache_key] = fn
    return fn


def step_cache_key(config, graphdef, mesh: Mesh) -> tuple:
    """What determines the compiled train step besides shapes: memoization key of
    :func:`make_train_step` (the schedule length matters only for decaying schedules)."""
    return (graphdef, json.dumps(_to_plain(config.loss), sort_keys=True),
            json.dumps(_to_plain(config.optim), sort_keys=True),
            None if config.optim.schedule == "constant" else int(config.train.num_steps),
            str(compute_dtype(config.train.dtype)), tuple(d.id for d in mesh.devices.flat))


def step_key(state: TrainState) -> jax.Array:
    """The per-step key, ``fold_in(base rng, step)``, for stochastic extensions of the step."""
    return jax.random.fold_in(state.rng, state.step)


# ------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_manager(workdir: str | os.PathLike, keep: int, *, async_save: bool = True,
                       cleanup_tmp: bool = False):
    """``cleanup_tmp``: remove the half-written ``N.orbax-checkpoint-tmp`` folders that a save
    killed midway (SIGKILL, a power cut) left (a checkpoint's size each, kept forever unless a
    later save reused step N). Only for the training run, which holds the workdir lock: a reader
    (:func:`load_checkpoint_model`) would delete the folder a running training is writing."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=int(keep), create=True,
                                           enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=cleanup_tmp)
    return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINT_DIR, options=options,
                                 item_names=("state", "meta"))


def save_checkpoint(mngr, state: TrainState, meta: dict) -> int:
    import orbax.checkpoint as ocp

    step = int(jax.device_get(state.step))
    if mngr.latest_step() == step:
        return step
    try:
        mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state.as_dict()),
                                                 meta=ocp.args.JsonSave(dict(meta, step=step))),
                  force=True)
    except Exception as e:  # noqa: BLE001 - a full disk, a folder made read-only meanwhile
        raise ModelError(checkpoint_write_error(mngr.directory, step, e)) from None
    return step


def checkpoint_write_error(directory, step: int, e: BaseException) -> str:
    """``DIR: cannot write the checkpoint of step N (reason)`` for a failed save.

    A save is asynchronous, so its failure (a full disk, a file size limit, a folder made
    read-only) surfaces at the next save or at the end: the step is the one in the failed save's
    ``N.orbax-checkpoint-tmp`` folder when the error names it (else ``step``, the save being
    made), and the reason is the operating system's (tensorstore's ``[os_error_code='28']``,
    an ``OSError``'s strerror), else the error's text on one line, cut."""
    text = " ".join(str(e).split())
    found = re.findall(re.escape(os.fspath(directory)) + r"[/\\](\d+)\.orbax-checkpoint-tmp",
                       text) or re.findall(r"(?:^|[/\\\s\"'])(\d+)\.orbax-checkpoint-tmp", text)
    if found:
        step = int(found[0])
    reason = None
    if m := re.search(r"os_error_code\W{0,3}(\d+)", text):
        reason = os.strerror(int(m.group(1)))
    else:
        seen, err = set(), e  # (an OSError, or one that caused it)
        while err is not None and id(err) not in seen:
            seen.add(id(err))
            if isinstance(err, OSError) and err.strerror:
                reason = err.strerror
                break
            err = err.__cause__ or err.__context__
    if reason is None:
        reason = f"{type(e).__name__}: {text.split(' See full TensorStore details')[0][:200]}"
    return f"{directory}: cannot write the checkpoint of step {step} ({reason})"


def restore_meta(mngr, step: int | None = None) -> dict:
    """The JSON metadata of a checkpoint (cheap: no arrays are read)."""
    import orbax.checkpoint as ocp

    step = mngr.latest_step() if step is None else step
    out = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])


def restore_checkpoint(mngr, abstract_state: TrainState, step: int | None = None,
                       *, expected_meta: dict | None = None) -> tuple[TrainState, dict]:
    """Restore ``step`` (default: the latest) into the structure/shardings of ``abstract_state``.
    With ``expected_meta``, the metadata is checked first (a clear ConfigError instead of an
    Orbax shape error when the workdir belongs to another model)."""
    import orbax.checkpoint as ocp

    step = mngr.latest_step() if step is None else step
    try:
        meta = restore_meta(mngr, step)
    except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many types for a bad file
        raise _unreadable_checkpoint(mngr, step, e) from None
    changed = []
    if expected_meta is not None:
        changed = _check_resume_meta(meta, expected_meta, mngr.directory.parent)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state.as_dict())
    try:
        out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    except Exception as e:  # noqa: BLE001 - (a truncated array file: tensorstore's Exception)
        text = str(e).lower()
        if isinstance(e, (ValueError, KeyError, TypeError)) and (
                "structure" in text or "do not match" in text or "mismatch" in text):
            # the checkpoint is fine: this config's state has another shape (e.g. a changed
            # optim.grad_clip_norm adds clipping state), so no advice to delete anything
            raise ConfigError(
                f"{mngr.directory.parent}: the checkpoint's training state does not fit this "
                f"config ({'changed: ' + ', '.join(changed) if changed else 'another setup'}); "
                "resume with the checkpoint's settings, or use a new --workdir") from None
        raise _unreadable_checkpoint(mngr, step, e) from None
    if changed:  # allowed (e.g. a lower learning rate from here on), but said
        log.warning("%s: resuming with a changed %s: the run goes on with the new values, so it "
                    "is no longer the run the checkpoint began", mngr.directory.parent,
                    ", ".join(changed))
    return TrainState.from_dict(out["state"]), meta


def _unreadable_checkpoint(mngr, step: int, e: Exception) -> ModelError:
    """One line: which checkpoint, why, and what to do (the earlier one is kept)."""
    where = mngr.directory / str(step)
    earlier = [s for s in mngr.all_steps() if s < step]
    fix = (f"delete {where} to resume from step {max(earlier)}" if earlier
           else f"delete {where} to start over")
    why = " ".join(str(e).split()).split(" See full TensorStore details")[0][:200]
    return ModelError(f"{where}: cannot restore the checkpoint ({type(e).__name__}: {why}); "
                      f"{fix}")


def _remove_unused_new_workdir(workdir: Path, top: Path) -> None:
    """Remove a workdir this run created (and its new parents up to ``top``) when its start
    failed before it wrote more than what every start writes (its run id, init record and
    lock: a data folder's typo, Ctrl-C while preparing). A workdir holding anything else
    (checkpoints, logs, an export) stays."""
    start_files = (RUN_ID_FILE, INIT_RECORD, LOCK_NAME)
    try:  # (an empty checkpoints/ is gone already: _close_checkpoints)
        if any(e.name not in start_files for e in os.scandir(workdir)):
            return
        for name in start_files:
            (workdir / name).unlink(missing_ok=True)
    except OSError:
        return
    for q in [workdir, *workdir.parents]:
        try:
            q.rmdir()  # (only ever removes an empty folder)
        except OSError:
            break
        if q == top:
            break


def _note_unused_init_from(asked, began: str, workdir) -> None:
    """A resumed run goes on from its checkpoint: say so when this command's ``init_from``
    names another start than the run's (it was ignored without a word, so continuing an old
    attempt by mistake looked like a fresh fine-tuning run)."""
    if not asked:
        return
    try:
        asked_path = os.path.realpath(resolve_init_from(asked))
    except NSTError:
        asked_path = os.fspath(asked)
    if asked_path != (os.path.realpath(began) if began else ""):
        log.warning("train.init_from=%s is not used: %s resumes its run, which began from %s "
                    "(a new --workdir starts from it)", asked, workdir, began or "scratch")


def _check_resume_meta(meta: dict, expected: dict, workdir) -> list[str]:
    """Model, batch size, seed and optimizer must match the checkpoint (else ConfigError); a
    changed data config is allowed (e.g. to fine-tune on other images) with a warning, since
    the batches then differ from those of an uninterrupted run. Returns the changed optim /
    loss / dtype settings and a changed length of a decaying schedule (said once the state is
    restored: some change its structure)."""
    for key in ("model", "batch_size", "seed"):
        if key in meta and key in expected and meta[key] != expected[key]:
            old, new = meta[key], expected[key]
            fix = "use a new --workdir or the original config"
            if isinstance(old, dict) and isinstance(new, dict):  # name what differs
                old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                what = ", ".join(f"{k} {json.dumps(old.get(k))} vs {json.dumps(new.get(k))}"
                                 for k in diff)
                if diff == ["palette"]:  # (not a weight: a new run may start from these)
                    fix = (f"to train on with another palette, start a new --workdir with "
                           f"--set train.init_from={workdir}")
            else:
                what = f"{json.dumps(old, sort_keys=True)} vs {json.dumps(new, sort_keys=True)}"
            raise ConfigError(f"{workdir}: its checkpoints were trained with a different {key} "
                              f"({what}); {fix}")
    if "data" in meta and "data" in expected:
        skip = _LOADER_ONLY_DATA_KEYS
        source = str(expected["data"].get("source") or "folder")
        if source == "synthetic" or source.startswith("npz:"):  # (tfds: reads style_dirs,
            # the weights and mixed-in content_dirs as a folder source does)
            skip += _FOLDER_DATA_KEYS  # unused: e.g. a clone elsewhere has other default paths
        elif "datasets" in meta:  # the folders' images are compared by their datasets' names
            skip += ("content_dirs", "style_dirs")  # (_note_datasets), not by how named
        old = dict(meta["data"])
        if "max_pixels" not in old:  # (a field added later, at its default then)
            from .data import DEFAULT_MAX_PIXELS_FIELD

            old["max_pixels"] = DEFAULT_MAX_PIXELS_FIELD
        changed = _changed_keys(old, expected["data"], skip=skip)
        before, now = meta.get("process_count"), expected.get("process_count")
        if before is not None and now is not None and before != now:  # (older: not recorded)
            changed.append(f"process count {before} -> {now}")
        if changed:
            log.warning("%s: the data config differs from the checkpoint's (%s); resuming anyway "
                        "(the batches will differ from those of an uninterrupted run)", workdir,
                        ", ".join(changed))
    before, now = meta.get("device_count"), expected.get("device_count")
    if before is not None and now is not None and before != now:  # (older: not recorded)
        log.warning("%s: its checkpoints were trained on %s, this run has %d; resuming "
                    "anyway (the gradients are summed in another order: the weights differ by "
                    "rounding from an uninterrupted run's)", workdir,
                    f"{before} device" + ("" if before == 1 else "s"), now)
    before, now = meta.get("config"), expected.get("config")
    if not (isinstance(before, dict) and isinstance(now, dict)):
        return []
    b_opt, n_opt = before.get("optim") or {}, now.get("optim") or {}
    if b_opt.get("optimizer") != n_opt.get("optimizer"):  # its state has another structure
        raise ConfigError(f"{workdir}: its checkpoints were trained with optim.optimizer="
                          f"{b_opt.get('optimizer')!r}, not {n_opt.get('optimizer')!r}; use a new "
                          "--workdir or the original optimizer")
    changed = [f"optim.{k}" for k in _changed_keys(b_opt, n_opt)]
    changed += [f"loss.{k}" for k in _changed_keys(before.get("loss") or {},
                                                    now.get("loss") or {})]
    b_train, n_train = before.get("train") or {}, now.get("train") or {}
    if b_train.get("dtype") != n_train.get("dtype"):
        changed.append("train.dtype")
    if (n_opt.get("schedule", "constant") != "constant" and not n_train.get("time_budget_s")
            and b_train.get("num_steps") != n_train.get("num_steps")):
        # a decaying schedule is built for num_steps: a longer run jumps back up from the
        # learning rate it had decayed to (a time-budgeted run keeps its planned length)
        changed.append(f"train.num_steps ({b_train.get('num_steps')} -> "
                       f"{n_train.get('num_steps')}: the learning-rate schedule's length)")
    return changed


#: Data settings that change how batches are made, not which: no warning on resume.
_LOADER_ONLY_DATA_KEYS = ("num_workers", "prefetch", "prepare_workers", "data_dir",
                          "allow_eval_dirs")
#: Settings only a folder source reads.
_FOLDER_DATA_KEYS = ("content_dirs", "style_dirs", "content_dir_weights", "style_dir_weights",
                     "max_pixels")


def _dataset_names(loader) -> dict[str, list[str]] | None:
    """The datasets ``loader`` reads by role; a prepared folder's name ends in a fingerprint of
    its files, so equal names are equal images (``None``: a loader without sources)."""
    out = {}
    for role in ("content", "style"):
        src = getattr(loader, role, None)
        if src is None:
            return None
        out[role] = [str(getattr(p, "name", "?")) for p in getattr(src, "parts", [src])]
    return out


def _note_datasets(loader, meta: dict, ckpt_meta: dict | None, workdir) -> None:
    """Record the loader's datasets in the checkpoints' meta; on resume, say when they are not
    the checkpoint's: a painting added to a training folder changed the batches silently (the
    folders' names were the same), while the same folders given as relative paths warned."""
    names = _dataset_names(loader)
    if names is None:
        return
    before = (ckpt_meta or {}).get("datasets")
    if before is not None and before != names:
        # not comparable: names of checkpoints before 2026-12 hashed the files' times and
        # places, and an npz: file was named by its role alone until 2026-12-07
        how = None
        if (ckpt_meta or {}).get("datasets_named_by") != "contents":
            how = "its training datasets by their files' times"
        elif any(n in ("npz-content", "npz-style") for role in before.values() for n in role):
            how = "its npz: file by its role only"
        if how is not None:
            log.info("%s: the checkpoint names %s (an older version): not compared with these "
                     "(%s)", workdir, how, json.dumps(names))
        else:
            log.warning("%s: the training images differ from the checkpoint's (%s, was %s); "
                        "resuming anyway (the batches will differ from those of an "
                        "uninterrupted run)", workdir, json.dumps(names), json.dumps(before))
    meta["datasets"] = names
    meta["datasets_named_by"] = "contents"


def _changed_keys(a: dict, b: dict, skip: Sequence[str] = ()) -> list[str]:
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k))


# ------------------------------------------------------------------------------------------------
# Sample grid


def _sample_images(config) -> tuple[np.ndarray, np.ndarray]:
    from . import images, samples

    size = int(config.train.sample_size)
    contents = []
    for name in config.train.sample_contents:
        img = images.resize_short_side(samples.content_image(name), size)
        contents.append(images.center_crop(img, (size, size)))
    styles = [samples.style_image(name, size=size) for name in config.train.sample_styles]
    return np.stack(contents).astype(np.float32), np.stack(styles).astype(np.float32)


def sample_grid(model: ArbitraryStyleModel, contents: np.ndarray, styles: np.ndarray,
                *, pad: int = 4) -> np.ndarray:
    """A grid image: top row the styles, left column the contents, cell (i, j) content i in
    style j. Returns float32 HWC in [0, 1] (white background)."""
    out = np.asarray(_stylize_all(model, jnp.asarray(contents), jnp.asarray(styles)))
    nc, ns = len(contents), len(styles)
    s = contents.shape[1]
    grid = np.ones(((nc + 1) * (s + pad) + pad, (ns + 1) * (s + pad) + pad, 3), np.float32)

    def put(r, c, img):
        y, x = pad + r * (s + pad), pad + c * (s + pad)
        grid[y:y + s, x:x + s] = img

    for j in range(ns):
        put(0, j + 1, styles[j])
    for i in range(nc):
        put(i + 1, 0, contents[i])
        for j in range(ns):
            put(i + 1, j + 1, out[i, j])
    return grid


@nnx.jit
def _stylize_all(model: ArbitraryStyleModel, contents: jax.Array, styles: jax.Array) -> jax.Array:
    emb = model.embed(styles)  # [S, D]
    nc, ns = contents.shape[0], styles.shape[0]
    c = jnp.repeat(contents, ns, axis=0)
    e = jnp.tile(emb, (nc, 1))
    y = model.transfer(c, e)
    if model.palette:  # what the export gives (model(c, s)); the raw network's colours are muted
        y = model.align_palette(y, jnp.tile(model.palette_moments(styles), (nc, 1)))
    return y.reshape((nc, ns) + contents.shape[1:])


# ------------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns. ``state`` is the final train state (on device); ``model`` holds
    its parameters; ``history`` has one dict of interval-averaged metrics per log step."""

    step: int
    state: TrainState
    model: ArbitraryStyleModel
    history: list[dict[str, float]]
    interrupted: bool = False
    export_path: Path | None = None
    steps_per_sec: float | None = None
    signal: int | None = None  # the signal (SIGINT, SIGTERM, SIGHUP) received, if one was (also
    # at the last step: the run is complete then, but a script running it must still stop)


# STOP_SIGNALS (errors): the signals that stop training cleanly (finish the step, save a
# checkpoint, export): Ctrl-C, ``kill``, and a closed terminal or ssh session (SIGHUP killed
# the run, and the steps since the last checkpoint were lost); they stop the other commands
# like Ctrl-C.


class _StopRequest:
    """A signal of :data:`STOP_SIGNALS` -> finish the current step, save, return. A second
    SIGINT aborts."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


class _DispatchWindow:
    """Keeps at most ``limit`` dispatched train steps unfinished.

    JAX dispatches a jitted step and returns at once, so without a bound the loop runs ahead of
    the device by as many steps as the loader can feed, and every wall-clock decision is taken
    about steps that have not run yet: ``train.time_budget_s``' overshoot guard, the checkpoint
    after SIGTERM, the progress bar. A CPU dry run of ``bench/device_train.sh`` showed it: a
    120-s budget "stopped" a device-bound run at step 34 once its *dispatch* passed the budget,
    and the 34 queued steps then ran for many minutes more (a lent GPU's command limit would
    have killed it before the export). Waiting for the step ``limit`` back keeps the device fed
    (the next ``limit`` steps are queued already) while the loop's clock stays within
    ``limit`` steps of the device's.
    """

    def __init__(self, limit: int = MAX_STEPS_IN_FLIGHT):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = int(limit)
        self._in_flight: deque = deque()

    def dispatched(self, outputs: Any) -> None:
        """Record a step's outputs; block until no more than ``limit`` steps are unfinished."""
        self._in_flight.append(outputs)
        while len(self._in_flight) > self.limit:
            jax.block_until_ready(self._in_flight.popleft())


def _maybe_init_distributed(config) -> None:
    d = _get(config, "distributed")
    if not _get(d, "initialize", False):
        return
    if jax.distributed.is_initialized():
        return
    kw = {k: _get(d, k) for k in ("coordinator_address", "num_processes", "process_id")}
    jax.distributed.initialize(**{k: v for k, v in kw.items() if v is not None})


def _default_loader_factory(data_cfg, *, batch_size, seed, start_step, progress=False):
    """The data loader; ``progress``: a bar while image folders are first prepared."""
    from . import data

    source = str(_get(data_cfg, "source", "folder"))
    # (with a tfds: source, content_dirs are folders mixed in: checked too)
    roles = ("content", "style") if source == "folder" or source.startswith("tfds:") else ()
    for role in roles:  # (a fresh clone without the shipped configs' data said only the path)
        for d in _folder_entries(data_cfg, f"{role}_dirs"):
            if (isinstance(d, (str, os.PathLike))  # (an entry may be a catalog dataset)
                    and not os.fspath(d).startswith("tfds:")
                    and not os.path.exists(os.path.expanduser(d))):
                what = "photos" if role == "content" else "paintings"
                raise ConfigError(
                    f"{d}: no such directory (data.{role}_dirs: give your own folders of "
                    f"{what}, e.g. --set \"data.{role}_dirs=['/path/to/{what}']\"; the shipped "
                    "configs look under $ARBITRARY_NST_DATA)")
    sources = data.prepare(data_cfg, progress=progress)
    for note in data.upscale_notes(sources, data_cfg):
        log.warning("%s", note)
    return data.make_loader(data_cfg, batch_size=batch_size, seed=seed, start_step=start_step,
                            sources=sources)


def _training_folder_holding(path: Path, config) -> tuple[str, str] | None:
    """``(folder, "data.content_dirs")`` if ``path`` is inside a training image folder."""
    for key in ("content_dirs", "style_dirs"):
        for d in _folder_entries(config.data, key):
            d = os.path.expanduser(os.fspath(d))  # (as the data reads it: `--set
            # data.content_dirs=~/photos` is not expanded by the shell)
            if not d.startswith("tfds:") and os.path.isdir(d) and is_inside(path, d):
                return d, f"data.{key}"
    return None


def _prepare_workdir(workdir: Path, config) -> None:
    """Create the workdir, or say in one line why it cannot be one (before any work is done):
    also one inside a training image folder (its sample grids would become training images)."""
    inside = _training_folder_holding(workdir, config)
    if inside is not None:
        raise ConfigError(f"{workdir}: the workdir is inside the training image folder "
                          f"{inside[0]} ({inside[1]}): its sample grids would be trained on; "
                          "use a workdir outside it")
    try:
        make_dir(workdir, "the workdir")
    except ImageError as e:  # the workdir is an option: report it as one
        raise ConfigError(str(e)) from None
    for d, what in ((workdir, "the workdir"), (workdir / CHECKPOINT_DIR, "its checkpoint folder")):
        if d.is_dir() and not os.access(d, os.W_OK | os.X_OK):  # (a save failing later hung)
            raise ConfigError(f"{d}: {what} is not writable")
    if _run_id(workdir) is None:
        import uuid

        run_id = uuid.uuid4().hex
        write_atomically(workdir / RUN_ID_FILE, lambda f: f.write(f"{run_id}\n".encode()))


def _check_export_path(path: Path, config, workdir: Path) -> None:
    """Refuse an export destination that would fail only after training (a folder, say), or
    would replace an input (the ``init_from`` model, a file in a training image folder) or
    another run's export (the built-in model, or an export this workdir did not write)."""
    if path.is_dir():
        raise ConfigError(f"{path}: the export path is a directory; give a file name such as "
                          f"{path / EXPORT_NAME}")
    real = os.path.realpath(path)
    init_from = _get(config.train, "init_from")
    start = resolve_init_from(init_from) if init_from else None
    if start and os.path.isdir(start):  # a workdir: its export
        start = os.path.join(start, EXPORT_NAME)
    if start and real == os.path.realpath(start):
        raise ConfigError(f"{path}: the export would replace train.init_from, the model this "
                          "run starts from; export to another file")
    inside = _training_folder_holding(path, config)
    if inside is not None:
        raise ConfigError(f"{path}: the export would be written into the training image "
                          f"folder {inside[0]} ({inside[1]}); export to another folder")
    if path.suffix != ".safetensors":
        raise ConfigError(f"{path}: the export's file name must end in .safetensors")
    from .inference import BUILTIN_MODEL

    if real == os.path.realpath(BUILTIN_MODEL):
        raise ConfigError(f"{path}: is the built-in model; export to another file (and copy "
                          "it there if it is to be shipped)")
    if path.exists() or path.is_symlink():
        # replacing this workdir's earlier export is the normal re-run; anything else is
        # someone's file (another run's model, or not a model at all)
        from .export import read_export

        try:
            _, header = read_export(path)
        except NSTError:
            raise ConfigError(f"{path}: exists and is not a model export; refusing to replace "
                              "it (choose another --export path or remove the file)") from None
        run_id, theirs = _run_id(workdir), header["info"].get("run_id")
        # its run id is this workdir's; an export without one (made before run ids) is this
        # run's only inside its workdir (one with another run's id was replaced there too)
        own = (run_id is not None and theirs == run_id) or (
            not theirs and is_inside(path, workdir))
        if not own:
            raise ConfigError(f"{path}: exists and is not an export of the run in {workdir}; "
                              "refusing to replace it (choose another --export path or remove "
                              "the file)")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{path}: cannot write the export: {parent} is not a directory")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{path}: cannot write the export: {parent} is not writable")


#: A workdir's run id (random, made with the workdir), recorded in its exports' info: a rerun
#: may replace an export of its own run (wherever it was written), not another run's.
RUN_ID_FILE = "run_id.txt"


def _run_id(workdir: Path) -> str | None:
    try:
        return (workdir / RUN_ID_FILE).read_text().strip() or None
    except (OSError, UnicodeDecodeError):  # a damaged id is as good as none: a new one is
        return None  # written over it (it failed every run with a traceback)


#: The workdir's lock file (``fcntl.flock``; the kernel releases it when the process ends).
LOCK_NAME = ".train.lock"


@contextlib.contextmanager
def _workdir_lock(workdir: Path):
    """Hold ``workdir``'s lock for one training run: two runs in one workdir deleted each
    other's checkpoints in progress (then hung for minutes and died with tracebacks)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    f = open(workdir / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                # a filesystem without flock (Lustre's noflock, NFS without lockd): go on
                log.warning("%s: cannot lock the workdir (%s); make sure no other run uses it",
                            workdir, e.strerror or e)
                yield
                return
            f.seek(0)
            who = f.read().strip() or "another process"
            raise ConfigError(f"{workdir}: in use by another training run ({who}); wait for it "
                              "to finish or use another workdir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield
    finally:
        f.close()


def train(config, workdir: str | os.PathLike, *, export_path: str | os.PathLike | None = None,
          loader_factory: Callable[..., Iterator[dict]] | None = None,
          step_callback: Callable[[int, TrainState], None] | None = None,
          progress: bool | None = None, vgg=None, devices=None) -> TrainResult:
    """Train (or resume training) to ``config.train.num_steps`` in ``workdir``.

    Args:
      config: a training ``ConfigDict`` (see ``configs/default.py`` for every field).
      workdir: checkpoints, TensorBoard logs, sample grids and the export go here. If it holds
        checkpoints, training resumes from the latest one.
      export_path: where to write the inference export at the end, also after SIGINT/SIGTERM/SIGHUP
        (default ``workdir/model.safetensors``; ``""`` = no export). Not written when training
        diverges.
      loader_factory: ``f(data_cfg, batch_size=, seed=, start_step=)`` -> iterator of
        ``{"content", "style"}`` numpy batches with ``.close()`` (default:
        :func:`arbitrary_nst.data.make_loader`).
      step_callback: called on the host after each step as ``f(step, state)`` (tests, hooks).
      progress: show a tqdm bar (default: when stderr is a terminal).
      vgg: an already loaded VGG16 to use (default: ``load_vgg16(config.vgg_path)``).
      devices: devices of the data-parallel mesh (default: all devices of all processes).

    Raises:
      TrainingDiverged: the loss became NaN/inf (the last good checkpoint is kept).
      ConfigError: bad options or a workdir trained with another model/batch/data config.
    """
    _maybe_init_distributed(config)
    validate_config(config)
    if not os.fspath(workdir).strip():  # (Path("") is the current folder)
        raise ConfigError(f"the workdir is an empty folder name ({os.fspath(workdir)!r})")
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    top = None  # the topmost folder of the workdir's path that this run creates, if any
    for q in [workdir, *workdir.parents]:
        if os.path.lexists(q):
            break
        top = q
    with contextlib.ExitStack() as held:
        refusal = None
        if is_main:
            try:
                if export_path:
                    _check_export_path(Path(export_path), config, workdir)
                _prepare_workdir(workdir, config)
                if export_path is None:  # the default export must not replace init_from either
                    _check_export_path(workdir / EXPORT_NAME, config, workdir)
                held.enter_context(_workdir_lock(workdir))
            except NSTError as e:
                refusal = e
        _agree_on_refusal(refusal)
        try:
            return _train(config, workdir, export_path=export_path,
                          loader_factory=loader_factory, step_callback=step_callback,
                          progress=progress, vgg=vgg, devices=devices, is_main=is_main)
        except BaseException:
            if is_main and top is not None:  # (a typo in a data folder left a new workdir)
                _remove_unused_new_workdir(workdir, top)
            raise


def _read_init_record(path: Path) -> dict[str, Any]:
    """The workdir's :data:`INIT_RECORD`, checked: a damaged one (not JSON, a ``prior_steps``
    that is no count) failed the resume with a traceback."""
    try:
        known = json.loads(path.read_text())
        began, prior = known.get("init_from") or "", int(known.get("prior_steps", 0))
        if not isinstance(began, str) or prior < 0:
            raise ValueError(f"init_from={began!r}, prior_steps={prior}")
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise ConfigError(f"{path}: the record of where this run began is damaged "
                          f"({e}); delete it (it is made again from the latest "
                          "checkpoint)") from None
    return {"init_from": began, "prior_steps": prior}


def _init_record_from_checkpoint(mngr, workdir: Path) -> dict[str, Any]:
    """Where a run began, for a workdir without its record (made before the record existed):
    the ``train.init_from`` its checkpoint was trained with, and that export's step count if
    it is still there. ``{}``: the run began from scratch (or the checkpoint does not say)."""
    try:
        began = ((restore_meta(mngr, mngr.latest_step()).get("config") or {})
                 .get("train") or {}).get("init_from")
    except Exception:  # noqa: BLE001 - an unreadable meta is reported by the restore itself
        return {}
    if not began:
        return {}
    start = resolve_init_from(began)
    try:
        info = export_lib.read_export(export_lib.model_file(start))[1]["info"]
        prior = export_lib.recorded_steps(info)
    except NSTError:
        log.warning("%s: began from %s, which is gone: its steps are not counted in the "
                    "export's total_steps", workdir, start)
        prior = 0
    return {"init_from": os.fspath(start), "prior_steps": prior}


def _agree_on_refusal(refusal: NSTError | None) -> None:
    """Raise the main process's refusal of the run (checked there alone: the workdir, the
    export path, the lock) on every process: the others went on into the first collective
    and died 30 s later with a gloo DEADLINE_EXCEEDED traceback."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        refused = int(multihost_utils.broadcast_one_to_all(np.int32(refusal is not None)))
        if refused and refusal is None:
            raise ConfigError("the main process (0) refused this run; its error says why")
    if refusal is not None:
        raise refusal


def _train(config, workdir: Path, *, export_path, loader_factory, step_callback, progress, vgg,
           devices, is_main: bool) -> TrainResult:
    """:func:`train` after the checks, holding the workdir's lock."""
    tcfg = config.train
    budget = _time_budget(tcfg)
    plan_file = workdir / TIME_BUDGET_PLAN
    planned = bool(budget) and _resume_plan(workdir, plan_file, budget, tcfg, is_main)
    num_steps = int(tcfg.num_steps)
    global_batch = int(tcfg.batch_size)
    mesh = make_mesh(devices)
    n_dev, n_proc = mesh.devices.size, jax.process_count()
    if n_proc > 1 and budget:
        # Each host would measure its own rate and plan another length: the hosts would disagree.
        raise ConfigError("train.time_budget_s works on one host only; set train.num_steps")
    if global_batch % n_dev:
        raise ConfigError(f"train.batch_size ({global_batch}) must be a multiple of the number "
                          f"of devices ({n_dev})")
    dtype = compute_dtype(tcfg.dtype)
    loss_cfg = LossConfig.from_config(config.loss)
    model = build_model(config, vgg)
    mngr = checkpoint_manager(workdir, int(tcfg.keep_checkpoints),  # (the lock holder: it
                              async_save=bool(_get(tcfg, "async_checkpoints", True)),
                              cleanup_tmp=True)  # removes the tmp folders of killed saves)
    writer = loader = bar = None
    # One try from the manager's making on: a start failing before the loop (a bad init_from)
    # must close it too (its background clean-up of temporary folders ran on while the failed
    # start's folders were removed, and absl logged a traceback).
    try:
        init_from = _get(tcfg, "init_from")
        init_record = workdir / INIT_RECORD
        prior_steps = 0
        record = None  # where this run began: written once, when it begins
        if mngr.latest_step() is not None:
            # Resuming: the checkpoint holds the weights, and where the run began (its start
            # point's file and step count, recorded then; that file need not exist any more) is
            # the record's, whatever this command's init_from says (a from-scratch run resumed
            # with the config's default init_from=builtin loaded the built-in model for nothing
            # and claimed its 6971 steps). A workdir from before the record: its checkpoint's.
            if init_record.is_file():
                known = _read_init_record(init_record)
            else:
                known = record = _init_record_from_checkpoint(mngr, workdir)
            prior_steps = int(known.get("prior_steps", 0))
            began = known.get("init_from") or ""
            _note_unused_init_from(init_from, began, workdir)
            init_from = began or None  # (the export names the file, as an
            # uninterrupted run's does: "model.safetensors", not "builtin")
        elif init_from:  # fine-tuning start point
            init_from = resolve_init_from(init_from)
            init_header = export_lib.init_from_export(model, init_from)
            # Chained runs (one short GPU loan after another) add up their steps in the export.
            prior_steps = export_lib.recorded_steps(init_header["info"])
            log.info("initialized the model from %s (%d steps before)", init_from, prior_steps)
            record = {"init_from": os.fspath(init_from), "prior_steps": prior_steps}
        else:
            record = {"init_from": "", "prior_steps": 0}  # from scratch (also said)
        if record is not None and is_main:
            write_atomically(init_record, lambda f: f.write(json.dumps(record).encode()))
        graphdef, params_state, frozen = nnx.split(model, nnx.Param, ...)
        tx, schedule = make_optimizer(config.optim, num_steps)
        if is_main:
            _warn_unfinished_warmup(config.optim, num_steps, schedule)
        repl = NamedSharding(mesh, P())
        data_sharding = NamedSharding(mesh, P("data"))
        state = jax.device_put(init_state(model, tx, int(config.seed)), repl)
        frozen = jax.device_put(frozen, repl)
        step_fn = make_train_step(graphdef, loss_cfg, tx, schedule, mesh, dtype=dtype,
                                  cache_key=step_cache_key(config, graphdef, mesh))

        data_seed = int(config.seed)
        meta = {"model": model.config(), "batch_size": global_batch, "seed": int(config.seed),
                "data": _to_plain(config.data), "config": _to_plain(config),
                "process_count": n_proc,  # (each process loads its share with its own seed)
                "device_count": n_dev}
        history: list[dict[str, float]] = []
        same_setup = True  # (resumed: the loss, optimizer, data and model are the checkpoint's)
        interrupted = False
        received = None  # the signal that stopped the loop, if one did
        save_error = None  # a failed checkpoint save: said after the export
        last_rate = None
        ckpt_meta = None
        if mngr.latest_step() is not None:
            state, ckpt_meta = restore_checkpoint(mngr, state, expected_meta=meta)
            same_setup = _divergence_setup(ckpt_meta) == _divergence_setup(meta)
            log.info("resumed from step %d in %s", int(state.step), workdir)
        start = int(jax.device_get(state.step))
        if start > num_steps:  # (it said "done: step 30" for num_steps=10 without a word)
            log.warning("the checkpoint is at step %d, past train.num_steps=%d: nothing to "
                        "train; the export is step %d's", start, num_steps, start)
        if int(jax.device_get(state.bad_step)) >= 0:
            raise TrainingDiverged(f"{workdir}: the latest checkpoint recorded a non-finite loss "
                                   f"at step {int(state.bad_step)}")
        sample_every = int(tcfg.sample_every)
        sample_imgs = _sample_images(config) if sample_every and is_main else None
        if n_proc > 1 and sample_every:
            sample_imgs = _sample_images(config)  # every process joins the sample computation
        ckpt_every = int(tcfg.checkpoint_every)
        log_every = int(tcfg.log_every)
        step = start
        if step < num_steps:
            show = sys.stderr.isatty() if progress is None else progress
            bar_shown = bool(show and is_main)
            # Preparing folders shows progress also when stderr is a file or pipe (progress.bar
            # writes lines there; nohup and CI runs were silent for minutes); the step bar above
            # is for terminals only, a log gets the logged steps instead.
            kw = {} if loader_factory else {"progress": bool(is_main and progress is not False)}
            factory = loader_factory or _default_loader_factory
            loader = factory(config.data, batch_size=global_batch // n_proc,
                             seed=data_seed + 1_000_003 * jax.process_index(), start_step=step,
                             **kw)
            _note_datasets(loader, meta, ckpt_meta, workdir)
            batches = iter(loader)
            # (after the loader: a data error found while preparing left an empty log folder)
            writer = _summary_writer(workdir) if is_main else None
            bar = progress_bar(total=num_steps, initial=step, disable=not bar_shown,
                               unit="step", dynamic_ncols=True, smoothing=0.1)
            pending: list[dict[str, jax.Array]] = []
            t_last, s_last = time.perf_counter(), step
            t_samples = 0.0  # seconds of sample grids since the last log
            plan_after = _plan_after(tcfg)
            t_begin = time.perf_counter()
            t_first = None  # end of the first step (compilation included)
            window = _DispatchWindow()
            with _StopRequest() as stop:
                while step < num_steps:
                    try:
                        batch = next(batches)
                    except StopIteration:
                        raise ConfigError("the data loader ran out of batches at step "
                                          f"{step}") from None
                    gbatch = {k: jax.make_array_from_process_local_data(
                        data_sharding, _host_array(batch[k]))
                        for k in ("content", "style", "style_jitter") if k in batch}
                    state, metrics = step_fn(state, frozen, gbatch)
                    window.dispatched(metrics)
                    step += 1
                    pending.append(metrics)
                    if step == start + 1:  # (one wait: the step rates leave compiling out)
                        jax.block_until_ready(metrics)
                        t_first = time.perf_counter()
                    elif budget and step == start + plan_after and not planned:
                        num_steps, step_fn = _plan_time_budget(
                            config, metrics, step, num_steps, budget, t_begin, t_first,
                            graphdef, loss_cfg, mesh, dtype, start=start)
                        meta["config"] = _to_plain(config)
                        bar.total = num_steps
                        if is_main:
                            plan = json.dumps({"time_budget_s": budget, "num_steps": num_steps})
                            write_atomically(plan_file, lambda f: f.write(plan.encode()))
                    if step_callback is not None:
                        step_callback(step, state)
                    # Read the signal flag once: a signal arriving later in this iteration is
                    # handled after the next step (else the save below could be skipped).
                    stopping = stop.signum is not None
                    if (budget and not stopping and step < num_steps
                            and time.perf_counter() - t_begin > 1.05 * budget + 5):
                        log.warning("time budget of %.0f s exceeded at step %d/%d: stopping",
                                    budget, step, num_steps)
                        stopping = True
                    final = step == num_steps or stopping
                    if step % log_every == 0 or final:
                        host = jax.device_get(pending)
                        pending = []
                        bad = int(jax.device_get(state.bad_step))
                        now = time.perf_counter()
                        if s_last == start and step > start + 1:  # the first window: from
                            t_last, s_last = t_first, start + 1  # the compiled first step's end
                        # A window of the first step alone is its compilation: no rate (it
                        # logged 0.06 it/s where the run did 0.5, also to TensorBoard).
                        last_rate = None if step == start + 1 else \
                            (step - s_last) / max(now - t_last - t_samples, 1e-9)
                        t_last, s_last, t_samples = now, step, 0.0
                        avg = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
                        avg["step"] = step
                        if last_rate is not None:
                            avg["steps_per_sec"] = last_rate
                        history.append(avg)
                        if bad >= 0:
                            _raise_diverged(bad, host, mngr, workdir, start, same_setup)
                        if writer is not None:
                            _write_scalars(writer, avg, step, global_batch)
                        bar.set_postfix(_postfix(avg), refresh=False)
                        if not bar_shown and is_main:  # no bar (e.g. logging to a file)
                            log.info("step %d/%d %s", step, num_steps, " ".join(
                                f"{k}={v}" for k, v in _postfix(avg).items()))
                    if step == start + 1:  # (compiling, also after a resume: left out of
                        # the bar's rate and ETA as of the logged rates; tqdm's smoothed rate
                        # began with it and its ETA stayed far too long for dozens of steps)
                        bar.unpause()
                        bar.n += 1
                        bar.last_print_n = bar.n
                        bar.refresh()
                    else:
                        bar.update(1)
                    if sample_imgs is not None and (step % sample_every == 0 or final):
                        t_sample = time.perf_counter()
                        _save_samples(workdir, step, state, graphdef, frozen, sample_imgs,
                                      is_main)
                        t_samples += time.perf_counter() - t_sample  # (not training: not in it/s)
                    if (ckpt_every and step % ckpt_every == 0) or final:
                        bad = int(jax.device_get(state.bad_step))
                        if bad >= 0:
                            _raise_diverged(bad, jax.device_get(pending) if pending else [],
                                            mngr, workdir, start, same_setup)
                        try:
                            save_checkpoint(mngr, state, dict(meta, data_seed=data_seed))
                        except ModelError as e:  # (a full disk): stop; the export is written
                            save_error = str(e)
                            break
                    if stopping:
                        interrupted = step < num_steps
                        received = stop.signum
                        if stop.signum is not None:
                            msg = (f"received {signal.Signals(stop.signum).name}: saved a "
                                   f"checkpoint at step {step} in {workdir}; " + (
                                       "run again to resume" if interrupted else
                                       "the run is complete"))
                            if is_main:  # (logging's last-resort handler prints it if
                                log.warning(msg)  # the application configured none)
                        break
        try:  # an async save fails here (a full disk): the export below is still written
            mngr.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            save_error = save_error or checkpoint_write_error(mngr.directory, step, e)
        if save_error is not None and is_main:
            # a full disk: the failed save's half-written folder held the space the export
            # needs (2.2 MB of a 3.4 MB checkpoint for a 1.2 MB export, which then failed too);
            # it is this run's own (it holds the workdir lock) and is of no use: removed now,
            # not at the next resume
            for tmp in Path(mngr.directory).glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)
        final_model = nnx.merge(graphdef, jax.tree.map(jnp.asarray, _local_copy(state.params)),
                                frozen)
        out_path = None
        export_error = None
        if export_path != "" and is_main:
            out_path = Path(export_path) if export_path else workdir / EXPORT_NAME
            try:
                # checked again: another run exporting to the same file (two runs started with
                # one --export) wrote it since this run's start, and was replaced without a word
                try:
                    _check_export_path(out_path, config, workdir)
                except ConfigError as e:
                    raise ConfigError(f"{e}; it was written while this run trained: the "
                                      f"weights of step {step} are in {mngr.directory} (run "
                                      "again with another --export to export them)") from None
                export_lib.export_model(
                    final_model, out_path, dtype=str(_get(tcfg, "export_dtype", "float32")),
                    # (a checkpoint past num_steps: the run was that long; info said
                    # num_steps 4 for step 8)
                    info={"step": int(step), "num_steps": max(int(num_steps), int(step)),
                          "total_steps": prior_steps + int(step),
                          "init_from": (export_lib.lineage_name(init_from) if init_from
                                        else ""),
                          "config_name": _get(config, "name", ""),
                          # (the whole config as run, --set overrides and a time budget's
                          # planned num_steps included: the export alone names its recipe)
                          "config": _to_plain(config),
                          "run_id": _run_id(workdir) or ""},
                    overwrite=True)  # (_check_export_path allowed it before the run)
            except (NSTError, OSError) as e:
                if save_error is None:
                    raise
                export_error = (e.strerror if isinstance(e, OSError) and e.strerror
                                else " ".join(str(e).split())[:200])
                export_error = export_error.removeprefix(f"{out_path}: ")
        if save_error is not None:  # one line: the checkpoint's failure and what was kept
            if export_error is not None:
                save_error += f"; the export to {out_path} failed too ({export_error})"
            elif out_path is not None:
                save_error += f"; the weights of step {step} were exported to {out_path}"
            raise ModelError(save_error)
        return TrainResult(step=int(step), state=state, model=final_model, history=history,
                           interrupted=interrupted, export_path=out_path,
                           steps_per_sec=last_rate,
                           # (also at the last step: a signal then was eaten, exit 0, and
                           # a multi-stage script went on to its next stage)
                           signal=received)
    finally:
        if bar is not None:
            bar.close()
        if loader is not None and hasattr(loader, "close"):
            loader.close()
        if writer is not None:
            writer.close()
        _close_checkpoints(mngr, workdir, is_main)


def _close_checkpoints(mngr, workdir: Path, is_main: bool) -> None:
    """Finish the manager's saves and close it; a start that failed before any save leaves no
    empty checkpoint folder."""
    with contextlib.suppress(Exception):
        mngr.wait_until_finished()
    # Orbax's close() does not wait for the clean-up of killed saves' temporary folders that the
    # manager starts in the background (only a save does): a start that failed at once had it
    # still listing checkpoints/ while the folder was removed, and absl logged a traceback.
    cleanup = getattr(mngr, "_cleanup_tmp_directory_future", None)
    if cleanup is not None:
        with contextlib.suppress(Exception):
            cleanup.result()
    mngr.close()
    if is_main:
        with contextlib.suppress(OSError):
            (workdir / CHECKPOINT_DIR).rmdir()  # (only ever removes an empty folder)


def _summary_writer(workdir: Path):
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(workdir / "tensorboard"))


def _resume_plan(workdir: Path, plan_file: Path, budget: float, tcfg, is_main: bool) -> bool:
    """A time-budgeted run resumed: keep the length (and so the schedule) it was planned with
    (``tcfg.num_steps`` is set from the plan). A plan without checkpoints (they were deleted)
    is stale and removed, so this run plans afresh. Another budget on resume keeps the plan's
    length and only bounds this session (the guard stops it, with a checkpoint, if it overruns).
    False: this run plans (also a resumed one stopped before it could)."""
    if not plan_file.is_file():
        return False
    has_ckpt = any(p.name.isdigit() for p in (workdir / CHECKPOINT_DIR).glob("*"))
    if not has_ckpt:
        log.info("%s: a time-budget plan without checkpoints (stale): planning afresh", workdir)
        if is_main:
            plan_file.unlink(missing_ok=True)
        return False
    try:
        plan = json.loads(plan_file.read_text())
        steps, planned_budget = int(plan["num_steps"]), float(plan["time_budget_s"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{plan_file}: cannot read the time-budget plan ({e}); delete it to "
                          "plan again") from None
    if planned_budget != float(budget):  # the plan's length (the schedule) stays; the new
        log.info("%s: planned with train.time_budget_s=%g; the plan's %d steps are kept, and "
                 "%g s now only bound this session's time", workdir, planned_budget, steps,
                 float(budget))  # budget only stops this session if it overruns
    tcfg.num_steps = steps
    log.info("%s: resuming a time-budgeted run planned for %d steps", workdir, steps)
    return True


def _plan_time_budget(config, metrics, step: int, num_steps: int, budget: float,
                      t_begin: float, t_first: float | None, graphdef, loss_cfg, mesh, dtype,
                      start: int = 0):
    """``train.time_budget_s``: fix the run's length from the measured step rate.

    Called once, ``train.plan_after_steps`` steps into a run that has no plan yet (a fresh one,
    or one resumed after a stop before it planned; ``start``: its first step). The rate is measured after
    the first step (which includes compilation), the steps that fit in what is left of the budget
    (minus an allowance for the recompile, the final checkpoint and export) become
    ``train.num_steps`` (never more than configured), and the optimizer's schedule and the
    compiled step are rebuilt for that length. Adam's state does not depend on the schedule, and
    during a linear warmup at least this long the first steps' learning rates are the same as
    under the new schedule, so the run is the one configured with that ``num_steps`` from the
    start. The chosen length is logged and written to ``WORKDIR/time_budget_plan.json`` (a
    resumed run keeps it); the loop also stops (checkpoint and export, as on SIGTERM) if the
    budget is overrun anyway.
    """
    jax.block_until_ready(metrics)
    now = time.perf_counter()
    first = t_first if t_first is not None else t_begin
    done = step - start
    rate = (done - 1) / max(now - first, 1e-9) if done > 1 else 0.0
    compile_s = first - t_begin
    reserve = min(10.0, 0.1 * budget)  # final checkpoint and export
    left = budget - (now - t_begin) - compile_s - reserve  # compile_s: the recompile
    planned = step + max(0, int(rate * left))
    planned = max(step, min(int(num_steps), planned))
    log.info("time budget %.0f s: %.2f steps/s after a %.1f s first step -> %d steps "
             "(configured %d)", budget, rate, compile_s, planned, num_steps)
    if (config.optim.schedule != "constant" and int(config.optim.warmup_steps) < step
            and planned != int(num_steps)):
        # (within a linear warmup the rates do not depend on the run's length; past it they
        # do, and the recorded num_steps then does not reproduce the run bit for bit)
        log.warning("optim.warmup_steps=%d < the %d steps before the plan: they ran on the %s "
                    "schedule of the configured %d steps, so a run configured with the planned "
                    "%d steps differs a little; make optim.warmup_steps >= "
                    "train.plan_after_steps for runs that repeat exactly",
                    int(config.optim.warmup_steps), step, config.optim.schedule,
                    int(num_steps), planned)
    config.train.num_steps = planned
    tx, schedule = make_optimizer(config.optim, planned)
    _warn_unfinished_warmup(config.optim, planned, schedule)
    step_fn = make_train_step(graphdef, loss_cfg, tx, schedule, mesh, dtype=dtype,
                              cache_key=step_cache_key(config, graphdef, mesh))
    return planned, step_fn


def _warn_unfinished_warmup(optim_cfg, num_steps: int, schedule) -> None:
    """Say so when the warmup covers the whole run: the learning rate never reaches the one
    configured (a 6-step fine-tune with builtin.py's 100 warmup steps: 6% of it at the end),
    which looked like a run that learnt nothing."""
    warmup = int(optim_cfg.warmup_steps)
    if 0 < int(num_steps) <= warmup:
        lr = float(optim_cfg.learning_rate)
        last = float(schedule(int(num_steps) - 1))
        log.warning("optim.warmup_steps=%d covers the whole run (train.num_steps=%d): the "
                    "learning rate only ramps up, to %.3g at the last step (%.0f%% of "
                    "optim.learning_rate=%g); lower optim.warmup_steps for a short run",
                    warmup, int(num_steps), last, 100 * last / lr, lr)


def _local_copy(tree):
    """Host copy of a replicated pytree (works for multi-host arrays too)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def _divergence_setup(meta: dict) -> dict:
    """What the loss at a checkpoint's weights depends on: loss, data, model and compute dtype
    (not the optimizer: the first step's loss is computed before its update)."""
    cfg = meta.get("config") or {}
    return {k: cfg.get(k) for k in ("loss", "data", "model")} | {
        "dtype": (cfg.get("train") or {}).get("dtype")}


def _raise_diverged(bad: int, host_metrics, mngr, workdir, start: int = 0,
                    same_setup: bool = True) -> None:
    """``bad``: the step whose weights gave a non-finite loss/gradient (or update); ``start``:
    the step this run resumed from. A checkpoint of step ``bad`` was saved before the next step
    could tell whether its weights or its batch was the cause (a learning rate of 1e30 left
    finite but huge weights at step 1, whose loss is inf on any batch). If the run diverges at
    the very step it resumed from with a non-finite loss or gradient and the checkpoint's own
    ``same_setup`` (loss, data, model, dtype), the checkpoint's weights are the cause: the
    message says to delete it (and any later one) to resume from the one before. With a
    changed setup (a style weight of 1e38), or when only the update overflowed (a new learning
    rate of 1e30), the checkpoint is not blamed."""
    mngr.wait_until_finished()
    steps = sorted(mngr.all_steps())
    terms = ""
    if host_metrics:
        m = host_metrics[-1]
        terms = " (" + ", ".join(f"{k}={float(m[k]):.4g}" for k in ("loss", "content", "style",
                                                                     "tv", "grad_norm")
                                 if k in m) + ")"
    ckpts = Path(workdir) / CHECKPOINT_DIR
    before = [s for s in steps if s < bad]
    after = [s for s in steps if s >= bad]
    back = f"step {before[-1]}" if before else "the start"
    first = host_metrics[0] if host_metrics else {}
    update_only = bool(first) and all(math.isfinite(float(first[k])) for k in
                                      ("loss", "grad_norm") if k in first)
    if start > 0 and bad == start and start in steps and update_only:
        where = (f"the first update from checkpoint {start} gave non-finite weights (its loss "
                 "and gradient were finite): lower optim.learning_rate or set "
                 "optim.grad_clip_norm; the checkpoint is kept")
    elif start > 0 and bad == start and start in steps and same_setup:
        names = " ".join(str(ckpts / str(s)) for s in after)
        where = (f"the weights of checkpoint {start} give a non-finite loss at once: delete "
                 f"{names} to resume from {back}")
    elif start > 0 and bad == start and start in steps:  # resumed with another setup
        where = (f"the last checkpoint is step {steps[-1]} in {ckpts}; this run changed the "
                 "loss, data, model or dtype settings it was trained with, which is the "
                 "likely cause (the checkpoint is kept)")
    elif steps:
        where = f"the last checkpoint is step {steps[-1]} in {ckpts}"
        if after:
            where += (f" (if a resume fails at its first step, its weights are the cause: "
                      f"delete {' '.join(str(ckpts / str(s)) for s in after)} to resume from "
                      f"{back})")
    else:
        where = "no checkpoint was saved yet"
    raise TrainingDiverged(f"non-finite loss, gradient or weights at step {bad + 1}{terms}; "
                           f"training stopped, {where} (lower optim.learning_rate or set "
                           f"optim.grad_clip_norm)")


_SCALAR_GROUPS = {"loss": "loss/total", "content": "loss/content", "style": "loss/style",
                  "tv": "loss/tv", "grad_norm": "train/grad_norm",
                  "learning_rate": "train/learning_rate", "steps_per_sec": "perf/steps_per_sec"}


def _write_scalars(writer, avg: dict, step: int, batch: int) -> None:
    for k, v in avg.items():
        if k == "step" or not math.isfinite(v):
            continue
        tag = _SCALAR_GROUPS.get(k, f"layers/{k}")
        writer.add_scalar(tag, v, step)
    if "steps_per_sec" in avg:
        writer.add_scalar("perf/images_per_sec", avg["steps_per_sec"] * batch, step)
    writer.flush()


def _postfix(avg: dict) -> dict[str, str]:
    out = {k: f"{avg[k]:.4g}" for k in ("loss", "content", "style", "tv") if k in avg}
    if "steps_per_sec" in avg:
        out["it/s"] = f"{avg['steps_per_sec']:.2f}"
    return out


def _save_samples(workdir: Path, step: int, state: TrainState, graphdef, frozen,
                  imgs: tuple[np.ndarray, np.ndarray], is_main: bool) -> None:
    from .images import save_image

    model = nnx.merge(graphdef, state.params, frozen)
    grid = sample_grid(model, *imgs)
    if is_main:
        save_image(workdir / "samples" / f"step_{step:07d}.png", grid, overwrite=True)


def load_checkpoint_model(config, workdir: str | os.PathLike, *, step: int | None = None,
                          vgg=None) -> tuple[ArbitraryStyleModel, int]:
    """The model stored in ``workdir``'s latest (or given) checkpoint, and its step."""
    model = build_model(config, vgg)
    tx, _ = make_optimizer(config.optim, int(config.train.num_steps))
    state = init_state(model, tx, int(config.seed))
    mngr = checkpoint_manager(workdir, int(config.train.keep_checkpoints), async_save=False)
    try:
        if mngr.latest_step() is None:
            raise ConfigError(f"{workdir}: no checkpoints to load")
        state, _ = restore_checkpoint(mngr, state, step)
    finally:
        mngr.close()
    graphdef, _, frozen = nnx.split(model, nnx.Param, ...)
    params = jax.tree.map(jnp.asarray, _local_copy(state.params))
    return nnx.merge(graphdef, params, frozen), int(state.step)


def training_objective(config, models: list, *, num_batches: int = 12, seed: int = 1234,
                       vgg=None, progress: bool = False) -> list[dict[str, float]]:
    """The training loss and its terms of each model, on the same ``num_batches`` batches of
    ``config``'s data and loss (``train.batch_size`` pairs each, drawn with ``seed``).

    Why: the evaluation shows where a model sits on the content/style trade-off of unseen
    pairs; this shows whether a run lowered the objective it was trained on. Measured with it
    (RESULTS.md, session 6): continuations of the distilled v5 at LR 5e-4 made the eval's style
    loss 21-34% worse *and* raised this objective 5-18% (Adam's noise floor at 4 pairs per
    step), which no eval table can tell apart from a trade-off.

    ``models``: :class:`ArbitraryStyleModel` objects, export files, training workdirs holding
    ``model.safetensors``, or ``"builtin"``. Returns one dict per model (``loss``, ``content``,
    ``style``, ``tv`` and the per-layer terms, means over the batches). ``progress``: a bar
    while image folders are first prepared.
    """
    from . import data as data_lib

    if int(num_batches) < 1:
        raise ConfigError(f"num_batches must be >= 1, got {num_batches}")
    validate_config(config)
    loss_cfg = LossConfig.from_config(config.loss)
    dtype = compute_dtype(_get(config.train, "dtype", "float32"))
    if vgg is None:
        vgg = vgg_lib.load_vgg16(config.vgg_path, training_copy_ok=True)
    loaded = []  # every model first: a bad path fails before the data is read
    for m in models:
        if not isinstance(m, ArbitraryStyleModel):
            m = export_lib.load_exported(export_lib.model_file(resolve_init_from(m)), vgg=vgg)
        loaded.append(m)
    loader = data_lib.make_loader(config.data, batch_size=int(config.train.batch_size),
                                  seed=int(seed), num_workers=1, prefetch=1,
                                  sources=data_lib.prepare(config.data, progress=progress))
    try:
        batches = [loader.batch(step) for step in range(int(num_batches))]
    finally:
        loader.close()
    # graphdef static: models of one architecture share the compiled function.
    def _terms(graphdef, state, batch):
        batch = finish_batch(batch)
        return batch_loss(nnx.merge(graphdef, state), batch["content"], batch["style"], loss_cfg,
                          dtype=dtype)[1]

    terms = jax.jit(_terms, static_argnums=0)
    out = []
    for m in loaded:
        graphdef, state = nnx.split(m)
        got = [jax.device_get(terms(graphdef, state, b)) for b in batches]
        out.append({k: float(np.mean([g[k] for g in got])) for k in got[0]})
    return out
