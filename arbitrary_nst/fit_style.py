"""Fitted styles: a painting's conditioning optimized once on photos, saved, and reused.

The style predictor maps any painting to the transfer network's conditioning (the gamma/beta of
its 13 conditional instance norms) in one forward pass. That amortized guess leaves a gap: with
the same transfer network, other gamma/beta paint much closer to the style (RESULTS.md, session
4: the predictor's embedding alone can be improved ~45% in style loss per photo; session 5: an
embedding refined on some photos carries over to others, so the better conditioning is a
property of the style).

For a style someone uses often, this module fits that conditioning once (Dumoulin et al. 2017:
a new style is a new set of gamma/beta for a fixed network) and stores it as a small file:

    g_0 = heads(predicted embedding of the painting)                    (~1.4k numbers)
    g_{t+1} = adam_step(g_t, d/dg mean_photos [content(T(c, g)) + w_s style(T(c, g), painting)])

over random batches of the user's photos (working copies at ``size``; the photos are only a
sample of what the style will be applied to, and are not stored). The transfer network, the
predictor and the VGG stay unchanged. Unlike :mod:`arbitrary_nst.refine` (the embedding,
per content, every time) the fit is paid once per style, and afterwards stylizing with it costs
exactly one feed-forward pass.

A :class:`FittedStyle` file (``.npz``, written atomically) holds the fitted gamma/beta, the
predicted embedding it started from, the painting's colour moments (the palette target), the
loss history and a fingerprint of the model it belongs to. The Stylizer accepts it wherever a
style image goes (``style=``, mixing with ``weights``, ``strength``); its offset from the
predicted gamma/beta mixes with the same weights as the embeddings. The heads are affine, so a
mix of fitted and plain styles is exactly the mix of their gamma/beta.

With a **palette** (the model's) the loss is taken on the aligned output, as users see it, and
differentiated through the palette's map (``exact_gradient``, :func:`color.align_to_moments`).
Training's surrogate (the map held fixed) has cosine 0.84-0.99 with that gradient and the same
sign on only 81-89% of the coordinates (v7, 3 paintings x 4 photos, 128 px); with the exact one,
50-step fits of 8 training paintings end 2.6% lower on held-out photos (RESULTS.md, session 9).

:func:`fit_conditionings` fits many styles at once, each on its own photos (one compiled step
for all; 8 styles x 50 steps in 107 s at 128² on a 2-core CPU, RESULTS.md session 9).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from . import color, losses, refine
from .errors import MAX_SEED, ConfigError, ModelError, check_count
from .files import regular_file_problem, write_atomically
from .models import check_palette
from .progress import bar as progress_bar

#: Defaults, from the measurement in RESULTS.md (session 8).
DEFAULT_STEPS = 100
DEFAULT_LEARNING_RATE = 0.02
DEFAULT_BATCH_SIZE = 4
DEFAULT_SIZE = 256
MAX_PHOTOS = 512  # more are sampled down (steps x batch photos are drawn anyway)
DEFAULT_STYLE_WEIGHT = refine.DEFAULT_STYLE_WEIGHT  # content + 0.5 style: the training balance

FORMAT = "arbitrary_nst.fitted_style/1"
SUFFIX = ".npz"
#: A fitted style's largest array unpacked: its conditioning (a few thousand floats at width
#: 1), its loss history (one float per step). Larger members are refused unread.
MAX_MEMBER_BYTES = 64 * 2**20


def check_options(steps: int, learning_rate: float, batch_size: int, style_weight: float) -> None:
    refine.check_options(steps, learning_rate, style_weight, what="fit")
    check_count(batch_size, "fit batch size")


# -- gamma/beta as one flat vector ------------------------------------------------------------

def conditioning_size(cin_channels: Sequence[int]) -> int:
    """Length ``G = 2 * sum(C)`` of the flat conditioning of a model."""
    return 2 * int(sum(cin_channels))


def flatten(gammas_betas) -> jax.Array:
    """13 ``(gamma [B, C], beta [B, C])`` -> ``[B, G]`` (per layer: gamma, then beta)."""
    return jnp.concatenate([jnp.concatenate([g, b], -1) for g, b in gammas_betas], -1)


def unflatten(flat: jax.Array, cin_channels: Sequence[int]) -> list[tuple[jax.Array, jax.Array]]:
    """Inverse of :func:`flatten`: ``[B, G]`` -> 13 ``(gamma, beta)`` pairs."""
    out, i = [], 0
    for c in cin_channels:
        out.append((flat[..., i:i + c], flat[..., i + c:i + 2 * c]))
        i += 2 * c
    if i != flat.shape[-1]:
        raise ConfigError(f"conditioning has {flat.shape[-1]} values, the model needs {i}")
    return out


def predicted_conditioning(model, embedding: jax.Array) -> jax.Array:
    """``[B, D]`` embeddings -> ``[B, G]`` gamma/beta from the predictor's heads (affine)."""
    return flatten(model.predictor.gamma_beta(embedding))


def transfer_with(model, content: jax.Array, embedding: jax.Array,
                  offset: jax.Array | None, valid_hw: jax.Array | None = None) -> jax.Array:
    """The transfer network conditioned on ``heads(embedding) + offset`` (``offset`` ``[B, G]``
    or None: the plain model); ``valid_hw``: unpadded sizes of padded content (see
    :class:`~arbitrary_nst.models.transfer.TransferNetwork`)."""
    if offset is None:
        return model.transfer(content, embedding, valid_hw)
    flat = predicted_conditioning(model, embedding) + offset
    return model.transfer_net(content, unflatten(flat, model.cin_channels), valid_hw)


def model_fingerprint(model) -> str:
    """SHA-256 (16 hex) of the weights a fitted style depends on: transfer network and heads."""
    h = hashlib.sha256()
    for part in (model.transfer_net, model.predictor.heads):
        leaves = jax.tree_util.tree_leaves_with_path(nnx.state(part, nnx.Param))
        for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
            a = np.asarray(leaf, np.float32)
            h.update(jax.tree_util.keystr(path).encode())
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


# -- the file -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)  # arrays: identity, not elementwise ==
class FittedStyle:
    """A style's fitted conditioning (module docstring).

    ``conditioning`` ``[G]``: the fitted gamma/beta; ``embedding`` ``[D]``: the predicted
    embedding of the painting it started from; ``moments`` ``[12]``: the painting's colour
    moments (palette target); ``history`` ``[steps + 1]``: the mean loss before each step and
    after the last (on that step's photos); ``fingerprint``: :func:`model_fingerprint` of the
    model it was fitted for; ``info``: how it was made (source, steps, photos, ...).
    """

    conditioning: np.ndarray
    embedding: np.ndarray
    moments: np.ndarray
    history: np.ndarray
    fingerprint: str
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.info.get("name", "fitted"))

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write atomically (a temporary file in the same folder, then renamed)."""
        path = Path(path)
        if path.suffix.lower() != SUFFIX:
            raise ConfigError(f"{path}: a fitted style file must end in {SUFFIX}")
        if path.exists() and not overwrite:
            raise ConfigError(f"{path}: exists (pass --overwrite / overwrite=True to replace it)")
        if not all(np.all(np.isfinite(np.asarray(a))) for a in
                   (self.conditioning, self.embedding, self.moments, self.history)):
            raise ModelError(f"{path}: not written: the fitted style has NaN or infinite values")
        meta = json.dumps({"format": FORMAT, "fingerprint": self.fingerprint, **self.info})

        def write(f):
            np.savez(f, conditioning=np.asarray(self.conditioning, np.float32),
                     embedding=np.asarray(self.embedding, np.float32),
                     moments=np.asarray(self.moments, np.float32),
                     history=np.asarray(self.history, np.float32),
                     meta=np.frombuffer(meta.encode(), np.uint8))

        write_atomically(path, write)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FittedStyle":
        """Read a file written by :meth:`save`; ModelError (one line) if it is not one."""
        path = Path(path)
        # (a FIFO waited in open() until a signal; a directory is said as such)
        if (why := regular_file_problem(path)) not in (None, "no such file"):
            raise ModelError(f"{path}: {why}")
        try:
            with open(path, "rb") as f:  # (np.load reads a non-zip file as a pickle)
                if f.read(4) != b"PK\x03\x04":
                    raise ModelError(f"{path}: not a fitted style file (not an .npz archive; "
                                     "`infer.py fit-style` writes them)")
            with np.load(path, allow_pickle=False) as z:
                # (sizes from the zip directory, before anything is unpacked: a 2 MB file
                # whose history was 2^29 zeros took 2.2 GB, and loaded)
                big = [i for i in z.zip.infolist() if i.file_size > MAX_MEMBER_BYTES]
                if big:
                    raise ModelError(f"{path}: not a fitted style file ({big[0].filename} "
                                     f"unpacks to {big[0].file_size:,} bytes; a fitted style's "
                                     "arrays are kilobytes)")
                meta = json.loads(bytes(z["meta"]).decode())
                if meta.get("format") != FORMAT:
                    raise ModelError(f"{path}: not a fitted style file (format "
                                     f"{meta.get('format')!r})")
                arrays = {k: np.asarray(z[k], np.float32)
                          for k in ("conditioning", "embedding", "moments", "history")}
        except ModelError:
            raise
        except FileNotFoundError:
            raise ModelError(f"{path}: no such file") from None
        except Exception as e:  # zip/npz/JSON errors of a corrupt or foreign file
            why = (f"{type(e).__name__}: {' '.join(str(e).split())}" if "allow_pickle" not in
                   str(e) else "it holds Python objects, which a fitted style never does")
            raise ModelError(f"{path}: not a readable fitted style file ({why})") from None
        # (the loss history is a record, not used: a NaN there does not spoil the style)
        if (arrays["conditioning"].ndim != 1 or arrays["embedding"].ndim != 1
                or arrays["moments"].shape != (color.MOMENTS_DIM,)
                or not all(np.all(np.isfinite(arrays[k]))
                           for k in ("conditioning", "embedding", "moments"))):
            raise ModelError(f"{path}: fitted style arrays have wrong shapes or non-finite values")
        fingerprint = str(meta.pop("fingerprint", ""))
        meta.pop("format")
        return cls(fingerprint=fingerprint, info=meta, **arrays)


def is_fitted_style_path(x) -> bool:
    return isinstance(x, (str, os.PathLike)) and Path(os.fspath(x)).suffix.lower() == SUFFIX


# -- the fit ------------------------------------------------------------------------------------

def _objective(model, photos, targets, moments, palette, style_weight: float):
    """``flat [S, G] -> (mean loss, per-style mean loss [S])`` for ``S`` styles with ``K``
    photos each (``photos [S, K, H, W, 3]``; ``targets``/``moments`` with batch ``S``): the loss
    is content + w_s style of the output, palette-aligned unless ``palette`` is None.

    Each style's loss depends on its own row of ``flat`` only, and Adam is elementwise, so one
    step on the mean is ``S`` independent fits (the 1/S scale does not change Adam's step)."""
    cfg = refine.loss_config(style_weight)
    feat = refine.feature_fn(model)
    s, k = photos.shape[:2]
    photos = photos.reshape((s * k,) + photos.shape[2:])
    content_feats = feat(photos, tuple(cfg.content_layers))
    per_photo = lambda a: jnp.repeat(a, k, axis=0)  # noqa: E731  style i -> its K photos
    targets = jax.tree_util.tree_map(per_photo, targets)
    moments = per_photo(moments)

    def loss_fn(flat):
        y = model.transfer_net(photos, unflatten(per_photo(flat), model.cin_channels))
        if palette is not None:
            y = model.align_palette(y, moments, palette, exact_gradient=True)
        total, _ = losses.perceptual_loss(feat, y, cfg, content_feats=content_feats,
                                          style_targets=targets)
        per_style = jnp.mean(total.reshape(s, k), axis=1)
        return jnp.mean(per_style), per_style

    return loss_fn


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("style_weight",))
def _fit_step(graphdef, state, photos, targets, moments, palette, flat, opt_state,
              learning_rate, *, style_weight: float):
    """One Adam step on the flat conditionings ``[S, G]`` over ``photos [S, K, H, W, 3]``:
    ``(flat, opt_state, per-style mean loss [S] before the step)``."""
    loss_fn = _objective(nnx.merge(graphdef, state), photos, targets, moments, palette,
                         style_weight)
    (_, per_style), g = jax.value_and_grad(loss_fn, has_aux=True)(flat)
    updates, opt_state = optax.adam(learning_rate).update(g, opt_state, flat)
    return optax.apply_updates(flat, updates), opt_state, per_style


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("style_weight",))
def _fit_loss(graphdef, state, photos, targets, moments, palette, flat, *, style_weight: float):
    return _objective(nnx.merge(graphdef, state), photos, targets, moments, palette,
                      style_weight)(flat)[1]


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("style_weight",))
def _fit_start(graphdef, state, style, embedding, *, style_weight: float):
    """Style targets, colour moments ``[S, 12]`` and the starting conditionings ``[S, G]``."""
    model = nnx.merge(graphdef, state)
    cfg = refine.loss_config(style_weight)
    targets = losses.StyleTargets.from_images(refine.feature_fn(model), style, cfg)
    return targets, color.color_moments(style), predicted_conditioning(model, embedding)


def fit_conditionings(model, styles: np.ndarray, embeddings: np.ndarray, draw_photos, *,
                      steps: int = DEFAULT_STEPS, learning_rate: float = DEFAULT_LEARNING_RATE,
                      style_weight: float = DEFAULT_STYLE_WEIGHT, palette: float | None = None,
                      progress: bool = False, desc: str = "fit style"
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit ``S`` styles' conditionings at once (one compiled step for all of them).

    Args:
      model: an :class:`~arbitrary_nst.models.ArbitraryStyleModel` or its ``nnx.split``.
      styles: ``[S, H, W, 3]`` style working images in [0, 1] (loss targets and palettes).
      embeddings: ``[S, D]`` the starting points (the paintings' predictions).
      draw_photos: ``() -> [S, K, h, w, 3]`` float in [0, 1], called once per step: the photos
        each style is fitted on at that step (h, w multiples of 4).
      palette: the palette the loss sees the outputs with (default: the model's).

    Returns ``(conditionings [S, G], moments [S, 12], history [steps + 1, S])``: the per-style
    mean loss before each step, and after the last one on the last step's photos.
    """
    refine.check_options(steps, learning_rate, style_weight, what="fit")
    graphdef, state = model if isinstance(model, tuple) else nnx.split(model)
    if palette is None:
        palette = nnx.merge(graphdef, state).palette
    amount = jnp.float32(check_palette(palette)) if palette else None
    sw = float(style_weight)
    targets, moments, flat = _fit_start(graphdef, state, jnp.asarray(styles, jnp.float32),
                                        jnp.asarray(embeddings, jnp.float32),
                                        style_weight=sw)
    # (placed as _fit_step returns it: one executable for every step)
    opt_state = refine.placed_like_outputs(optax.adam(learning_rate).init(flat), state)
    lr = jnp.float32(learning_rate)

    def photos_now():
        x = np.asarray(draw_photos(), np.float32)
        if x.ndim != 5 or x.shape[0] != flat.shape[0]:
            raise ConfigError(f"fit: photos must be [S, K, h, w, 3] with S = {flat.shape[0]}, "
                              f"got {x.shape}")
        return jnp.asarray(x)

    history = []
    x = None
    with progress_bar(total=int(steps), desc=desc, unit="step", disable=not progress,
                       dynamic_ncols=True) as bar:
        for _ in range(int(steps)):
            x = photos_now()
            flat, opt_state, loss = _fit_step(graphdef, state, x, targets, moments, amount,
                                              flat, opt_state, lr, style_weight=sw)
            history.append(loss)
            bar.update(1)
            if bar.n % 10 == 0:
                bar.set_postfix(loss=f"{float(jnp.mean(loss)):.3g}", refresh=False)
    if x is None:  # steps == 0: the start's loss on one draw
        x = photos_now()
    history.append(_fit_loss(graphdef, state, x, targets, moments, amount, flat,
                             style_weight=sw))
    return (np.asarray(flat, np.float32), np.asarray(moments, np.float32),
            np.asarray(jnp.stack(history), np.float32))


def fit_conditioning(model, style: np.ndarray, photos: np.ndarray, embedding: np.ndarray, *,
                     steps: int = DEFAULT_STEPS, learning_rate: float = DEFAULT_LEARNING_RATE,
                     batch_size: int = DEFAULT_BATCH_SIZE,
                     style_weight: float = DEFAULT_STYLE_WEIGHT,
                     palette: float | None = None, seed: int = 0,
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit one style's conditioning on photos.

    Args:
      model: an :class:`~arbitrary_nst.models.ArbitraryStyleModel` or its ``nnx.split``.
      style: ``[S, S, 3]`` float in [0, 1]: the style working image (loss target and palette).
      photos: ``[P, H, W, 3]`` float in [0, 1] working copies (H, W multiples of 4); each step
        takes ``min(batch_size, P)`` of them without replacement, randomly flipped.
      embedding: ``[D]`` the starting point's embedding (the painting's prediction).
      palette: the palette the loss sees the output with (default: the model's).
      seed: the photo order (``numpy`` generator: the fit is reproducible).

    Returns ``(conditioning [G], moments [12], history [steps + 1])``: the last history entry
    is the loss after the last step on the last step's photos.
    """
    check_options(steps, learning_rate, batch_size, style_weight)
    check_count(seed, "seed", 0, MAX_SEED, optional=False)
    photos = np.asarray(photos, np.float32)
    if photos.ndim != 4 or photos.shape[0] < 1:
        raise ConfigError(f"fit: photos must be [P, H, W, 3] with P >= 1, got {photos.shape}")
    rng = np.random.default_rng(seed)
    b = min(int(batch_size), photos.shape[0])

    def batch():
        x = photos[rng.choice(photos.shape[0], b, replace=False)]
        flip = rng.random(b) < 0.5
        return np.where(flip[:, None, None, None], x[:, :, ::-1], x)[None]

    flat, moments, history = fit_conditionings(
        model, np.asarray(style, np.float32)[None],
        np.asarray(embedding, np.float32).reshape(1, -1), batch, steps=steps,
        learning_rate=learning_rate, style_weight=style_weight, palette=palette,
        progress=progress)
    return flat[0], moments[0], history[:, 0]
