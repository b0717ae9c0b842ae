"""Training: smoke run, exact kill-and-resume, NaN guard, 4-device data parallelism, configs, CLI.

Everything runs on generated images (``data.source = "synthetic"``) at 64x64 with the width-0.25
model of ``configs/smoke.py``; repeated ``train()`` calls in this process reuse one compiled step.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from arbitrary_nst import data, training
from arbitrary_nst.errors import ConfigError, ModelError, NSTError
from arbitrary_nst.export import (export_model, lineage_name, load_exported, model_tensors,
                                  read_export)
from arbitrary_nst.losses import LossConfig

# The damaged-checkpoint test leaves Orbax read coroutines that fail when they are closed
# later, on whichever test runs next (~90 "Exception ignored" warnings): expected, not news.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <coroutine object _read_array_index_and_device_put"
    ":pytest.PytestUnraisableExceptionWarning")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def smoke(*overrides: str):
    return training.load_config(CONFIGS / "smoke.py", list(overrides))


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def assert_trees_identical(a, b, what: str) -> None:
    la, lb = leaves(a), leaves(b)
    assert jax.tree.structure(jax.device_get(a)) == jax.tree.structure(jax.device_get(b)), what
    for i, (x, y) in enumerate(zip(la, lb)):
        assert x.dtype == y.dtype and x.shape == y.shape, (what, i)
        assert np.array_equal(x, y), f"{what}: leaf {i} differs (max |diff| " \
                                     f"{np.max(np.abs(x.astype(np.float64) - y)):.3g})"


# ------------------------------------------------------------------------------------------------


def test_smoke_training_loss_decreases_and_writes_outputs(tmp_path, vgg):
    # Two synthetic images per role and no colour jitter: the loss must fall steadily.
    cfg = smoke("train.num_steps=16", "train.checkpoint_every=8", "train.sample_every=16",
                "data.synthetic_count=2", "data.augment_strength=0.0")
    r = training.train(cfg, tmp_path, vgg=vgg, progress=False)
    assert r.step == 16 and not r.interrupted
    losses = [h["loss"] for h in r.history]
    assert len(losses) == 16 and all(np.isfinite(losses))
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.5 * first, losses
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["16", "8"]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    from arbitrary_nst.images import load_image

    grid = load_image(tmp_path / "samples" / "step_0000016.png")
    assert grid.shape == (2 * (64 + 4) + 4, 3 * (64 + 4) + 4, 3)
    # The export holds exactly the trained parameters, and nothing of the VGG.
    assert r.export_path == tmp_path / training.EXPORT_NAME
    loaded = load_exported(r.export_path, vgg=vgg)
    a, b = model_tensors(r.model), model_tensors(loaded)
    assert a.keys() == b.keys() and not any("vgg" in k for k in a)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert r.export_path.stat().st_size < 1.1 * sum(v.nbytes for v in a.values()) + 65536


def test_bfloat16_training_tracks_float32(tmp_path, vgg):
    # configs/default.py trains in bfloat16 (as the shipped model was): the compute runs in
    # bf16 (a loss that differs by rounding only), the weights and optimizer stay float32
    runs = {dt: training.train(smoke("train.num_steps=2", "train.checkpoint_every=0",
                                     f"train.dtype='{dt}'"), tmp_path / dt, vgg=vgg,
                               progress=False, export_path="")
            for dt in ("float32", "bfloat16")}
    l32, l16 = ([h["loss"] for h in runs[dt].history] for dt in ("float32", "bfloat16"))
    assert l16[0] != l32[0] and abs(l16[0] / l32[0] - 1) < 0.05, (l16, l32)
    assert np.isfinite(l16).all()
    state = runs["bfloat16"].state
    assert {x.dtype for x in leaves(state.params)} == {np.dtype(np.float32)}
    assert {x.dtype for x in leaves(state.opt_state) if x.ndim} == {np.dtype(np.float32)}


class _SteadyClock:
    """``time`` for the training module: every ``perf_counter()`` call advances 0.5 s, so the
    time-budget plan does not depend on how busy the machine is (a loaded CI once left a 30-s
    real budget room for only the 4 measuring steps)."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self):
        self.now += 0.5
        return self.now


#: shared by the time-budget tests, so that they share compiled steps (the optimizer settings
#: and the schedule length are part of the step's cache key)
_TIME_BUDGET_OVERRIDES = ("train.num_steps=100000", "train.time_budget_s=30",
                          "train.plan_after_steps=4", "optim.schedule='cosine'",
                          "optim.warmup_steps=4", "optim.end_learning_rate_factor=0.1",
                          "train.checkpoint_every=0")


def test_time_budget_plans_the_run_length_and_anneals_to_it(tmp_path, vgg, monkeypatch):
    # A budget far shorter than the configured 100000 steps: after plan_after_steps the run's
    # length is fixed from the measured rate, the cosine schedule is rebuilt for it (its last
    # learning rate is the end value of a schedule of that length) and the export says so.
    overrides = _TIME_BUDGET_OVERRIDES
    cfg = smoke(*overrides)
    monkeypatch.setattr(training, "time", _SteadyClock())
    r = training.train(cfg, tmp_path, vgg=vgg, progress=False)
    plan = json.loads((tmp_path / "time_budget_plan.json").read_text())
    # On the steady clock a step costs a few calls (~1-2 s), so 30 s fit far more than the 4
    # measuring steps and far fewer than the configured 100000.
    assert plan["time_budget_s"] == 30 and 8 <= plan["num_steps"] < 100
    assert r.step == plan["num_steps"] and not r.interrupted
    _, schedule = training.make_optimizer(cfg.optim, plan["num_steps"])
    lrs = [h["learning_rate"] for h in r.history]
    assert lrs == pytest.approx([float(schedule(i)) for i in range(r.step)], rel=1e-5)
    assert lrs[-1] < 0.5 * 1e-3  # decayed: the end of the planned length, not of 100000 steps
    info = read_export(r.export_path)[1]["info"]
    assert info["num_steps"] == plan["num_steps"]
    # Running it again resumes the planned run (already complete), not the configured 100000.
    again = training.train(smoke(*overrides), tmp_path, vgg=vgg, progress=False)
    assert again.step == plan["num_steps"] and not again.history


@pytest.mark.parametrize("warmup, schedule, said", [(0, "cosine", True), (2, "linear", True),
                                                     (4, "cosine", False),
                                                     (0, "constant", False)])
def test_the_plan_says_when_the_steps_before_it_ran_past_the_warmup(monkeypatch, caplog, warmup,
                                                                     schedule, said):
    """With a warmup shorter than the measured steps a decaying schedule's first steps ran on
    the configured length's rates: the planned num_steps (recorded) did not repeat the run
    (weights 0.02 apart), without a word. Said now; within the warmup the rates are the same."""
    import time

    monkeypatch.setattr(training, "make_train_step", lambda *a, **k: "step")
    monkeypatch.setattr(training, "step_cache_key", lambda *a, **k: None)
    cfg = smoke(f"optim.warmup_steps={warmup}", f"optim.schedule='{schedule}'")
    t_begin = time.perf_counter() - 2.0  # (4 steps, the last 3 in 1 s: ~70 more fit in 30 s)
    with caplog.at_level(logging.WARNING, logger="arbitrary_nst.training"):
        planned, _ = training._plan_time_budget(cfg, jax.numpy.zeros(()), 4, 1000, 30.0,
                                                t_begin, t_begin + 1.0, None, None, None, None)
    assert 4 < planned < 1000
    warned = [r.getMessage() for r in caplog.records if "before the plan" in r.getMessage()]
    assert warned == ([f"optim.warmup_steps={warmup} < the 4 steps before the plan: they ran on "
                       f"the {schedule} schedule of the configured 1000 steps, so a run "
                       f"configured with the planned {planned} steps differs a little; make "
                       "optim.warmup_steps >= train.plan_after_steps for runs that repeat "
                       "exactly"] if said else [])


def test_a_run_stopped_before_it_planned_plans_when_resumed(tmp_path, vgg, monkeypatch):
    overrides = _TIME_BUDGET_OVERRIDES
    monkeypatch.setattr(training, "time", _SteadyClock())

    def term_at_2(step, state):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    part = training.train(smoke(*overrides), tmp_path, vgg=vgg, progress=False,
                          export_path="", step_callback=term_at_2)
    assert part.step == 2 and not (tmp_path / "time_budget_plan.json").exists()
    r = training.train(smoke(*overrides), tmp_path, vgg=vgg, progress=False, export_path="")
    plan = json.loads((tmp_path / "time_budget_plan.json").read_text())
    assert 8 <= plan["num_steps"] < 100 and r.step == plan["num_steps"]


class _Step:
    """Stand-in for a dispatched step's outputs: records when it is waited for."""

    def __init__(self, i, log):
        self.i, self.log = i, log

    def block_until_ready(self):
        self.log.append(self.i)
        return self


def test_dispatch_window_waits_for_the_step_limit_back():
    waited = []
    window = training._DispatchWindow(limit=2)
    for i in range(3):
        window.dispatched({"loss": _Step(i, waited)})
        assert waited == list(range(i - 1))  # 0 and 1 queued freely; the third waits for 0
    for i in range(3, 6):
        window.dispatched({"loss": _Step(i, waited)})
    assert waited == [0, 1, 2, 3]  # in order, always 2 left in flight
    with pytest.raises(ValueError, match="limit"):
        training._DispatchWindow(limit=0)


def test_training_loop_never_runs_more_than_the_window_ahead(tmp_path, vgg, monkeypatch):
    # Wall-clock decisions (time budget, SIGTERM checkpoint) must be about finished steps: when
    # step n has been dispatched, step n - MAX_STEPS_IN_FLIGHT has finished.
    outputs, late = [], []  # (the state is donated to the next step: watch the metrics)

    class Recording(training._DispatchWindow):
        def dispatched(self, metrics):
            outputs.append(metrics)
            super().dispatched(metrics)

    def check(step, state):
        back = step - training.MAX_STEPS_IN_FLIGHT
        if back >= 1 and not all(x.is_ready() for x in jax.tree.leaves(outputs[back - 1])):
            late.append(step)

    monkeypatch.setattr(training, "_DispatchWindow", Recording)
    r = training.train(smoke("train.num_steps=5", "train.sample_every=0",
                             "train.checkpoint_every=0"), tmp_path, vgg=vgg, progress=False,
                       step_callback=check)
    assert r.step == 5 and len(outputs) == 5 and not late


def test_init_from_export_starts_at_its_weights_and_refuses_other_models(tmp_path, vgg,
                                                                             caplog):
    a = training.train(smoke("train.num_steps=2", "train.sample_every=0"), tmp_path / "a",
                       vgg=vgg, progress=False)
    # num_steps=0: nothing trained, so the export written is the initial model itself.
    b = training.train(smoke("train.num_steps=0", "train.sample_every=0",
                             f"train.init_from={tmp_path / 'a'}"), tmp_path / "b", vgg=vgg,
                       progress=False)
    ta, tb = model_tensors(a.model), model_tensors(b.model)
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)
    # Fine-tuning moves away from those weights (the start is not simply the random init).
    c = training.train(smoke("train.num_steps=1", "train.sample_every=0",
                             f"train.init_from={a.export_path}"), tmp_path / "c", vgg=vgg,
                       progress=False)
    tc = model_tensors(c.model)
    assert c.step == 1 and any(not np.array_equal(ta[k], tc[k]) for k in ta)
    # Chained runs add up their steps in the export header (a's 2, then c's 1, then 1 more).
    assert read_export(c.export_path)[1]["info"]["total_steps"] == 3
    # (the start's folder too: every workdir's export is a model.safetensors, the built-in
    # model's too, which is named "builtin")
    assert read_export(c.export_path)[1]["info"]["init_from"] == "a/model.safetensors"
    assert read_export(b.export_path)[1]["info"]["init_from"] == "a/model.safetensors"
    from arbitrary_nst.inference import BUILTIN_MODEL

    assert lineage_name(BUILTIN_MODEL) == "builtin"
    c2 = training.train(smoke("train.num_steps=1", "train.sample_every=0",
                              f"train.init_from={c.export_path}"), tmp_path / "c2", vgg=vgg,
                        progress=False)
    assert read_export(c2.export_path)[1]["info"]["total_steps"] == 4
    assert read_export(a.export_path)[1]["info"]["total_steps"] == 2
    fresh = model_tensors(training.train(smoke("train.num_steps=0", "train.sample_every=0"),
                                         tmp_path / "d", vgg=vgg, progress=False).model)
    assert any(not np.array_equal(ta[k], fresh[k]) for k in ta)
    with pytest.raises(NSTError, match="model config differs.*width"):
        training.train(smoke("train.num_steps=1", "model.width=0.5",
                             f"train.init_from={a.export_path}"), tmp_path / "e", vgg=vgg,
                       progress=False)
    # The palette is no weight: a model without one is fine-tuned with one, and exported so.
    f = training.train(smoke("train.num_steps=0", "train.sample_every=0", "model.palette=0.5",
                             f"train.init_from={a.export_path}"), tmp_path / "f", vgg=vgg,
                       progress=False)
    tf = model_tensors(f.model)
    assert all(np.array_equal(ta[k], tf[k]) for k in ta)
    # Fine-tuning a workdir's export in that workdir: its default export would replace the
    # start model (an explicit --export there was refused; the default was not)
    g = tmp_path / "g"
    g.mkdir()
    shutil.copy(a.export_path, g / "model.safetensors")
    before = (g / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="would replace train.init_from"):
        training.train(smoke("train.num_steps=1", f"train.init_from={g}"), g, vgg=vgg,
                       progress=False)
    assert (g / "model.safetensors").read_bytes() == before
    assert load_exported(f.export_path, vgg=vgg).palette == 0.5
    # A resumed fine-tuning run names its start file as an uninterrupted one does (it said
    # "builtin" or the path as configured) and keeps adding up the steps.
    c3 = training.train(smoke("train.num_steps=2", "train.sample_every=0",
                              f"train.init_from={a.export_path}"), tmp_path / "c", vgg=vgg,
                        progress=False)
    info = read_export(c3.export_path)[1]["info"]
    assert c3.step == 2 and info["init_from"] == "a/model.safetensors" and info["total_steps"] == 4
    # Resumed, the lineage is the run's record whatever this command's init_from says: unset
    # (the export lost the start's steps), or set for a run begun from scratch (the start was
    # loaded for nothing and its steps claimed). A workdir from before the record: its
    # checkpoint's config says where it began (and the record is written then).
    (tmp_path / "c" / training.INIT_RECORD).unlink()
    c4 = training.train(smoke("train.num_steps=3", "train.sample_every=0"), tmp_path / "c",
                        vgg=vgg, progress=False)
    assert json.loads((tmp_path / "c" / training.INIT_RECORD).read_text())["prior_steps"] == 2
    info = read_export(c4.export_path)[1]["info"]
    assert c4.step == 3 and info["init_from"] == "a/model.safetensors" and info["total_steps"] == 5
    # a command with fewer steps than the checkpoint's only exports it: its info said
    # num_steps 1 for step 3
    past = training.train(smoke("train.num_steps=1", "train.sample_every=0"), tmp_path / "c",
                          vgg=vgg, progress=False)
    info = read_export(past.export_path)[1]["info"]
    assert (past.step, info["step"], info["num_steps"], info["total_steps"]) == (3, 3, 3, 5)
    scratch = training.train(smoke("train.num_steps=1", "train.sample_every=0"), tmp_path / "h",
                             vgg=vgg, progress=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="arbitrary_nst.training"):
        resumed = training.train(smoke("train.num_steps=2", "train.sample_every=0",
                                       f"train.init_from={c4.export_path}"), tmp_path / "h",
                                 vgg=vgg, progress=False)
    assert (f"train.init_from={c4.export_path} is not used: {tmp_path / 'h'} resumes its run, "
            "which began from scratch (a new --workdir starts from it)") in caplog.messages
    info = read_export(resumed.export_path)[1]["info"]
    assert info["init_from"] == "" and info["total_steps"] == 2 and scratch.step == 1
    assert json.loads((tmp_path / "h" / training.INIT_RECORD).read_text())["init_from"] == ""
    # --export replaces this workdir's own earlier export, never another run's
    mine = tmp_path / "exports" / "mine.safetensors"
    for _ in range(2):  # (a is finished: these runs only export)
        assert training.train(smoke("train.num_steps=2", "train.sample_every=0"),
                              tmp_path / "a", export_path=mine, vgg=vgg,
                              progress=False).export_path == mine
    before = mine.read_bytes()
    with pytest.raises(ConfigError, match="is not an export of the run in"):
        training.train(smoke("train.num_steps=0", "train.sample_every=0"), tmp_path / "d",
                       export_path=mine, vgg=vgg, progress=False)
    assert mine.read_bytes() == before == a.export_path.read_bytes()  # (same bytes: below)
    # the run is known by the id in its exports, so a moved project folder still may; and an
    # export without an id inside the workdir is its own (a workdir from before run ids)
    shutil.move(tmp_path / "a", tmp_path / "moved_a")
    shutil.move(tmp_path / "exports", tmp_path / "moved")
    moved_a, mine = tmp_path / "moved_a", tmp_path / "moved" / "mine.safetensors"
    finished = smoke("train.num_steps=2", "train.sample_every=0")  # (these runs only export)
    training.train(finished, moved_a, export_path=mine, vgg=vgg, progress=False)
    (moved_a / training.RUN_ID_FILE).unlink()  # a workdir from before run ids
    inside = moved_a / "model_export.safetensors"
    export_model(load_exported(mine, vgg=vgg), inside, info={"step": 2})  # (no run id then)
    training.train(finished, moved_a, export_path=inside, vgg=vgg, progress=False)
    with pytest.raises(ConfigError, match="is not an export of the run in"):  # (a new id now)
        training.train(finished, moved_a, export_path=mine, vgg=vgg, progress=False)
    # another run's export copied into this workdir is not this run's (it was replaced there)
    stranger = moved_a / "stranger.safetensors"
    shutil.copy(mine, stranger)
    with pytest.raises(ConfigError, match="is not an export of the run in"):
        training.train(finished, moved_a, export_path=stranger, vgg=vgg, progress=False)
    assert stranger.read_bytes() == mine.read_bytes()
    # another run exporting to the same file while this one trains (two runs started with one
    # --export): its export was replaced at the end without a word; checked again there
    shared = tmp_path / "shared.safetensors"

    def other_run_exports(step, state):
        if step == 1:
            shutil.copy(mine, shared)  # (an export of the run in moved_a)

    with pytest.raises(ConfigError) as e:
        training.train(smoke("train.num_steps=1", "train.sample_every=0"), tmp_path / "e",
                       export_path=shared, vgg=vgg, progress=False,
                       step_callback=other_run_exports)
    assert str(e.value) == (
        f"{shared}: exists and is not an export of the run in {tmp_path / 'e'}; refusing to "
        "replace it (choose another --export path or remove the file); it was written while "
        f"this run trained: the weights of step 1 are in {tmp_path / 'e' / 'checkpoints'} "
        "(run again with another --export to export them)")
    assert shared.read_bytes() == mine.read_bytes()
    assert training.train(smoke("train.num_steps=1", "train.sample_every=0"), tmp_path / "e",
                          export_path=tmp_path / "e2.safetensors", vgg=vgg,
                          progress=False).step == 1


def test_exports_of_equal_weights_are_equal_bytes(tmp_path, vgg):
    # safetensors writes its metadata in hash order: exports of one model had other bytes
    # each time, so a checksum could not show that a resumed run equals an uninterrupted one
    from flax import nnx

    from arbitrary_nst.models import ArbitraryStyleModel

    model = ArbitraryStyleModel(vgg, width=0.25, hidden_dim=8, rngs=nnx.Rngs(0))
    info = {"step": 3, "num_steps": 5, "init_from": "", "config_name": "smoke"}
    blobs = {export_model(model, tmp_path / f"m{i}.safetensors", info=info).read_bytes()
             for i in range(6)}
    assert len(blobs) == 1
    loaded = load_exported(tmp_path / "m0.safetensors", vgg=vgg)
    a, b = model_tensors(model), model_tensors(loaded)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert read_export(tmp_path / "m0.safetensors")[1]["info"] == info


def test_palette_training_loss_is_the_loss_of_the_aligned_output(vgg, rng):
    """With ``model.palette`` the loss is taken on what users get: the network's output moved
    toward the style crop's colours (and the gradient flows through that map)."""
    import jax.numpy as jnp

    from arbitrary_nst import color
    from arbitrary_nst import vgg as vgg_lib
    from arbitrary_nst.losses import StyleTargets, perceptual_loss

    cfg = smoke("model.palette=0.7")
    model = training.build_model(cfg, vgg)
    loss_cfg = LossConfig.from_config(cfg.loss)
    content = jnp.asarray(rng.random((2, 32, 32, 3)), jnp.float32)
    style = jnp.asarray(rng.random((2, 32, 32, 3)) ** 2, jnp.float32)
    loss, _ = training.batch_loss(model, content, style, loss_cfg)
    y = color.align_to_moments(model.transfer(content, model.embed(style)),
                               color.color_moments(style), 0.7)
    np.testing.assert_allclose(np.asarray(model(content, style)), np.asarray(y), atol=1e-6)
    feats = lambda x, taps: vgg_lib.features(model.vgg.params(), x, taps,  # noqa: E731
                                             pooling=model.vgg.pooling)
    want, _ = perceptual_loss(feats, y, loss_cfg,
                              content_feats=feats(content, tuple(loss_cfg.content_layers)),
                              style_targets=StyleTargets.from_images(feats, style, loss_cfg))
    np.testing.assert_allclose(float(loss), float(jnp.mean(want)), rtol=1e-4)
    model.palette = 0.0
    raw, _ = training.batch_loss(model, content, style, loss_cfg)
    assert abs(float(raw) - float(loss)) > 1e-3 * float(loss)


def test_palette_gradient_option_selects_the_exact_or_fixed_map(vgg, rng):
    """``loss.palette_gradient``: "exact" differentiates through the palette's colour map,
    "fixed" (default, how v7 was trained) holds it constant; same loss value either way."""
    import jax.numpy as jnp

    from arbitrary_nst import color
    from arbitrary_nst import vgg as vgg_lib
    from arbitrary_nst.losses import StyleTargets, perceptual_loss

    cfg = smoke("model.palette=0.7")
    model = training.build_model(cfg, vgg)
    content = jnp.asarray(rng.random((2, 32, 32, 3)), jnp.float32)
    style = jnp.asarray(rng.random((2, 32, 32, 3)) ** 2, jnp.float32)
    feats = lambda x, taps: vgg_lib.features(model.vgg.params(), x, taps,  # noqa: E731
                                             pooling=model.vgg.pooling)
    grads = {}
    for mode in ("fixed", "exact"):
        loss_cfg = LossConfig.from_config(cfg.loss).replace(palette_gradient=mode)

        def independent(c, exact=(mode == "exact"), loss_cfg=loss_cfg):
            y = color.align_to_moments(model.transfer(c, model.embed(style)),
                                       color.color_moments(style), 0.7, exact_gradient=exact)
            cf = jax.lax.stop_gradient(feats(c, tuple(loss_cfg.content_layers)))  # a target
            total, _ = perceptual_loss(feats, y, loss_cfg, content_feats=cf,
                                       style_targets=StyleTargets.from_images(feats, style,
                                                                              loss_cfg))
            return jnp.mean(total)

        grads[mode] = np.asarray(jax.grad(
            lambda c, lc=loss_cfg: training.batch_loss(model, c, style, lc)[0])(content))
        want = np.asarray(jax.grad(independent)(content))
        np.testing.assert_allclose(grads[mode], want, rtol=1e-3,
                                   atol=1e-4 * np.abs(want).max())
    assert np.abs(grads["exact"] - grads["fixed"]).max() > 0.01 * np.abs(grads["exact"]).max()
    with pytest.raises(ConfigError, match="palette_gradient"):
        LossConfig(palette_gradient="none")


def _relu1_1_model(vgg):
    """A width-0.25 model whose predictor and loss read VGG relu1_1 only (fast to compile),
    with its loss config."""
    from flax import nnx

    from arbitrary_nst.models import ArbitraryStyleModel

    model = ArbitraryStyleModel(vgg, width=0.25, embedding_dim=8, hidden_dim=8,
                                style_taps=("relu1_1",), rngs=nnx.Rngs(0))
    loss_cfg = LossConfig(content_layers={"relu1_1": 1.0}, style_layers={"relu1_1": 1e-3},
                          tv_weight=10.0)
    return model, loss_cfg


def test_batch_loss_is_the_mean_of_the_per_example_losses(vgg, rng):
    """The training loss of a batch is the mean (not the sum) of its examples' perceptual
    losses (computed here with perceptual_loss on the model's output), and so is each term."""
    import jax.numpy as jnp
    from flax import nnx

    from arbitrary_nst import vgg as vgg_lib
    from arbitrary_nst.losses import StyleTargets, perceptual_loss

    model, loss_cfg = _relu1_1_model(vgg)
    content = jnp.asarray(rng.random((3, 32, 32, 3)), jnp.float32)
    style = jnp.asarray(rng.random((3, 32, 32, 3)) ** 2, jnp.float32)

    @nnx.jit  # (one compilation for both)
    def both(m, c, s):
        feats = lambda x, taps: vgg_lib.features(m.vgg.params(), x, taps)  # noqa: E731
        want = perceptual_loss(feats, m(c, s), loss_cfg, content_feats=feats(c, ("relu1_1",)),
                               style_targets=StyleTargets.from_images(feats, s, loss_cfg))
        return training.batch_loss(m, c, s, loss_cfg), want

    (loss, metrics), (total, terms) = both(model, content, style)
    per_example = np.asarray(total, np.float64)
    assert per_example.shape == (3,) and np.ptp(per_example) > 0.01 * per_example.mean()
    np.testing.assert_allclose(float(loss), per_example.mean(), rtol=1e-5)
    assert float(metrics["loss"]) == float(loss)
    for k in ("content", "style", "tv"):
        np.testing.assert_allclose(float(metrics[k]), float(jnp.mean(terms[k])), rtol=1e-5,
                                   err_msg=k)


def test_train_step_carries_the_optimizer_state(vgg, rng):
    """Two compiled train steps on a fixed batch equal two updates of the optimizer applied by
    hand: its state (SGD momentum, schedule count) advances from step to step (a step that
    kept the initial state made every update plain SGD). Each step's gradient is read off a
    first step from that step's parameters (the same compiled step; SGD's first update is
    -lr * gradient)."""
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    lr = 1e-4
    model, loss_cfg = _relu1_1_model(vgg)
    tx = optax.sgd(optax.constant_schedule(lr), momentum=0.9)  # state: (trace, count)
    graphdef, _, frozen = nnx.split(model, nnx.Param, ...)
    mesh = training.make_mesh(jax.devices()[:1])
    repl = NamedSharding(mesh, PartitionSpec())  # as train() places them: one compilation
    frozen = jax.device_put(frozen, repl)
    batch = {"content": rng.random((2, 32, 32, 3)).astype(np.float32),
             "style": rng.random((2, 32, 32, 3)).astype(np.float32)}
    step = training.make_train_step(graphdef, loss_cfg, tx, optax.constant_schedule(lr), mesh)
    host = lambda tree: jax.tree.map(np.asarray, jax.device_get(tree))  # noqa: E731

    def fresh(params):
        return jax.device_put(training.TrainState(
            step=np.int32(0), params=params, opt_state=tx.init(params), rng=np.zeros(2, np.uint32),
            bad_step=np.int32(-1)), repl)

    state = fresh(host(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    p0 = host(state.params)
    state, _ = step(state, frozen, batch)
    p1 = host(state.params)
    state, _ = step(state, frozen, batch)
    p2, opt2 = host(state.params), host(state.opt_state)
    assert int(state.step) == 2 and int(opt2[1].count) == 2
    p1b = host(step(fresh(p1), frozen, batch)[0].params)  # one step from p1: -lr * g1
    g0 = jax.tree.map(lambda a, b: (a - b) / lr, p0, p1)
    g1 = jax.tree.map(lambda a, b: (a - b) / lr, p1, p1b)
    params, opt = p0, tx.init(p0)
    for g in (g0, g1):
        updates, opt = tx.update(g, opt, params)
        params = optax.apply_updates(params, updates)
    moved = [np.asarray(a, np.float64) - b for a, b in zip(leaves(params), leaves(p1))]
    diff = [np.asarray(a, np.float64) - b for a, b in zip(leaves(p2), leaves(params))]
    size = np.sqrt(sum(np.sum(m ** 2) for m in moved))
    assert size > 0 and np.sqrt(sum(np.sum(d ** 2) for d in diff)) < 1e-4 * size
    trace, want = leaves(opt2[0]), leaves(opt[0])  # momentum: g1 + 0.9 g0
    assert len(trace) == len(want) and any(np.abs(w).max() > 0 for w in want)
    for t, w in zip(trace, want):
        np.testing.assert_allclose(t, w, rtol=1e-3, atol=1e-3 * np.abs(w).max() + 1e-12)


def test_step_key_is_the_base_key_folded_with_the_step():
    """step_key is fold_in(rng, step): a different key at every step, reproducible."""
    import jax.numpy as jnp

    base = jax.random.PRNGKey(3)
    state = training.TrainState(step=jnp.asarray(0, jnp.int32), params={}, opt_state=(),
                                rng=base, bad_step=jnp.asarray(-1, jnp.int32))
    keys = []
    for i in range(4):
        k = np.asarray(training.step_key(state.replace(step=jnp.asarray(i, jnp.int32))))
        np.testing.assert_array_equal(k, np.asarray(jax.random.fold_in(base, i)))
        keys.append(k.tobytes())
    assert len(set(keys)) == 4 and np.asarray(base).tobytes() not in keys
    other = state.replace(step=jnp.asarray(2, jnp.int32), rng=jax.random.PRNGKey(4))
    assert np.asarray(training.step_key(other)).tobytes() != keys[2]


class _Killed(Exception):
    pass


def test_kill_and_resume_is_bit_identical(tmp_path, vgg):
    cfg = smoke("train.num_steps=6", "train.checkpoint_every=2")
    straight = training.train(cfg, tmp_path / "straight", vgg=vgg, progress=False, export_path="")

    # (a) Hard kill after step 5: nothing is saved at exit; all in-memory state is dropped and
    # the rerun resumes from the periodic checkpoint of step 4 (loader restarted at step 4).
    def kill_at_5(step, state):
        if step == 5:
            raise _Killed

    with pytest.raises(_Killed):
        training.train(cfg, tmp_path / "killed", vgg=vgg, progress=False, export_path="",
                       step_callback=kill_at_5)
    resumed = training.train(cfg, tmp_path / "killed", vgg=vgg, progress=False, export_path="")
    assert resumed.step == 6 and [h["step"] for h in resumed.history] == [5, 6]

    # (b) SIGTERM during step 3: the step finishes, a checkpoint is saved, train() returns.
    def term_at_3(step, state):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    part = training.train(cfg, tmp_path / "term", vgg=vgg, progress=False, export_path="",
                          step_callback=term_at_3)
    assert part.interrupted and part.step == 3 and part.signal == signal.SIGTERM
    assert (tmp_path / "term" / "checkpoints" / "3").is_dir()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    rest = training.train(cfg, tmp_path / "term", vgg=vgg, progress=False, export_path="")
    assert rest.step == 6

    for other, name in ((resumed, "kill"), (rest, "sigterm")):
        assert_trees_identical(straight.state.params, other.state.params, f"{name} params")
        assert_trees_identical(straight.state.opt_state, other.state.opt_state,
                               f"{name} optimizer state")
        assert_trees_identical((straight.state.step, straight.state.rng),
                               (other.state.step, other.state.rng), f"{name} step/rng")
        assert straight.history[-1]["loss"] == other.history[-1]["loss"]


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(tmp_path, vgg):
    cfg = smoke("train.num_steps=8", "train.checkpoint_every=2")

    def poisoned(data_cfg, *, batch_size, seed, start_step):
        loader = data.make_loader(data_cfg, batch_size=batch_size, seed=seed,
                                  start_step=start_step)

        class Poisoned:
            def __iter__(self):
                for step, batch in enumerate(loader, start=start_step):
                    if step == 4:  # the batch of the 5th step
                        batch = dict(batch, content=np.full_like(batch["content"], np.nan))
                    yield batch

            def close(self):
                loader.close()

        return Poisoned()

    with pytest.raises(training.TrainingDiverged) as err:
        training.train(cfg, tmp_path, vgg=vgg, progress=False, loader_factory=poisoned)
    msg = str(err.value)
    assert "\n" not in msg and "step 5" in msg and "last checkpoint is step 4" in msg
    assert not (tmp_path / training.EXPORT_NAME).exists()
    model, step = training.load_checkpoint_model(cfg, tmp_path, vgg=vgg)
    assert step == 4
    assert all(np.isfinite(v).all() for v in model_tensors(model).values())


def test_a_start_that_fails_on_its_data_leaves_no_empty_folders(tmp_path, vgg):
    """A data error found while the loader prepared the folders left empty checkpoints/ and
    tensorboard/ folders in the workdir."""
    cfg = smoke("train.num_steps=2")

    def missing_folder(data_cfg, **kw):
        raise ConfigError("/nowhere: no such directory")

    (tmp_path / "w").mkdir()  # (an existing folder: a new one is removed, test below)
    with pytest.raises(ConfigError, match="no such directory"):
        training.train(cfg, tmp_path / "w", vgg=vgg, progress=False, loader_factory=missing_folder)
    left = sorted(p.name for p in (tmp_path / "w").iterdir())
    assert training.CHECKPOINT_DIR not in left and "tensorboard" not in left, left


def test_a_new_workdir_whose_start_fails_on_its_data_is_not_left_behind(tmp_path, vgg):
    """A typo in a data folder (or Ctrl-C while preparing) left the new workdir behind with
    run_id.txt, .train.lock and init_from.json in it (and its new parent folders). A folder
    that existed before the run stays, as does anything a user put there."""
    cfg = smoke("train.num_steps=2", "data.source=folder",
                f"data.content_dirs=['{tmp_path / 'nope'}']",
                f"data.style_dirs=['{tmp_path / 'nope2'}']")
    with pytest.raises(ConfigError) as e:
        training.train(cfg, tmp_path / "runs" / "new", vgg=vgg, progress=False)
    # (a fresh clone without the shipped configs' data: the message says how to point them)
    assert str(e.value) == (
        f"{tmp_path / 'nope'}: no such directory (data.content_dirs: give your own folders of "
        "photos, e.g. --set \"data.content_dirs=['/path/to/photos']\"; the shipped configs "
        "look under $ARBITRARY_NST_DATA)")
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the new workdir was left behind"

    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="no such directory"):
        training.train(cfg, kept / "w", vgg=vgg, progress=False)
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
    with pytest.raises(ConfigError, match="no such directory"):
        training.train(cfg, kept, vgg=vgg, progress=False)  # (it existed: stays as it was)
    assert (kept / "notes.txt").is_file()


def test_the_missing_folder_hint_leaves_catalog_entries_alone(tmp_path, monkeypatch):
    """A data_dirs entry may be a TFDS catalog dataset (``'tfds:dtd'``, documented in
    default_data_config): the missing-folder check before preparing called it "tfds:dtd: no
    such directory" and stopped a config that data.prepare takes."""
    made = []
    monkeypatch.setattr(data, "source_from_catalog",
                        lambda name, split, data_dir: made.append(name) or
                        data.SyntheticSource("style", 4))
    monkeypatch.setattr(data, "prepare_folder", lambda dirs, **kw: data.SyntheticSource(
        "content", 4))
    photos = tmp_path / "photos"
    photos.mkdir()
    cfg = {"source": "folder", "content_dirs": [str(photos)], "style_dirs": ["tfds:dtd"],
           "num_workers": 0}
    loader = training._default_loader_factory(cfg, batch_size=2, seed=0, start_step=0)
    try:
        assert made == ["dtd"]
    finally:
        loader.close()
    # (a tfds: source's content folders are folders: a missing one is named as such)
    with pytest.raises(ConfigError, match=r"nope: no such directory \(data.content_dirs"):
        training._default_loader_factory(
            {"source": "tfds:coco/2017", "content_dirs": [str(tmp_path / "nope")],
             "style_dirs": ["tfds:dtd"]}, batch_size=2, seed=0, start_step=0)


def test_a_new_workdir_whose_start_fails_after_its_checkpoint_folder_is_not_left(
        tmp_path, vgg, monkeypatch):
    """An error after the checkpoint manager made checkpoints/ but before the training loop
    (``--set optim.predictor_lr_multiplier=None`` is a TypeError in make_optimizer) left the
    new workdir with an empty checkpoints/ folder and the start files."""
    def broken(*a, **kw):
        raise TypeError("float() argument must be a string or a real number, not 'NoneType'")

    monkeypatch.setattr(training, "make_optimizer", broken)
    with pytest.raises(TypeError):
        training.train(smoke("train.num_steps=2"), tmp_path / "w", vgg=vgg, progress=False)
    assert not (tmp_path / "w").exists(), sorted(p.name for p in (tmp_path / "w").iterdir())


def test_weights_that_fail_are_named_for_deletion_and_never_non_finite(tmp_path, vgg):
    """A learning rate of 1e30: step 1's loss and gradient are finite but its weights are huge,
    so step 2 diverges and checkpoint 1 cannot be resumed from (it was called 'the last good
    checkpoint'). The message says to delete it once a resume fails at once; an infinite
    learning rate (1e400 parses to inf) is refused, and non-finite weights are never kept."""
    cfg = smoke("train.num_steps=3", "train.checkpoint_every=1", "optim.learning_rate=1e30")
    with pytest.raises(training.TrainingDiverged, match="last checkpoint is step 1"):
        training.train(cfg, tmp_path, vgg=vgg, progress=False, export_path="")
    model, step = training.load_checkpoint_model(cfg, tmp_path, vgg=vgg)
    assert step == 1 and all(np.isfinite(v).all() for v in model_tensors(model).values())
    cfg.optim.learning_rate = 1e-3
    with pytest.raises(training.TrainingDiverged, match="give a non-finite loss at once: delete "
                       + re.escape(str(tmp_path / "checkpoints" / "1"))):
        training.train(cfg, tmp_path, vgg=vgg, progress=False, export_path="")
    shutil.rmtree(tmp_path / "checkpoints" / "1")
    assert training.train(cfg, tmp_path, vgg=vgg, progress=False, export_path="").step == 3
    # a resume that diverges because its own settings changed does not blame the checkpoint
    cfg = smoke("train.num_steps=6", "train.checkpoint_every=1", "loss.style_weight=1e38")
    with pytest.raises(training.TrainingDiverged, match="likely cause") as err:
        training.train(cfg, tmp_path, vgg=vgg, progress=False, export_path="")
    assert "delete" not in str(err.value)
    # a good checkpoint resumed with a learning rate whose first update overflows (SGD: lr x
    # gradient > float32 max; the loss and gradient at the checkpoint are finite): kept too
    sgd = ("optim.optimizer='sgd'", "optim.schedule='constant'", "optim.warmup_steps=0")
    cfg = smoke("train.num_steps=2", "train.checkpoint_every=1", "optim.learning_rate=1e-6",
                *sgd)
    training.train(cfg, tmp_path / "sgd", vgg=vgg, progress=False, export_path="")
    cfg = smoke("train.num_steps=4", "train.checkpoint_every=1", "optim.learning_rate=3e38",
                *sgd)
    with pytest.raises(training.TrainingDiverged, match="first update from checkpoint 2 gave "
                       "non-finite weights") as err:
        training.train(cfg, tmp_path / "sgd", vgg=vgg, progress=False, export_path="")
    assert "delete" not in str(err.value)
    with pytest.raises(ConfigError, match="not iterable"):  # (was an UnboundLocalError)
        smoke("train.num_steps.x=3")
    for lr in ("1e400", "1e39"):  # inf in Python; inf in the step's float32
        with pytest.raises(ConfigError, match="finite float32 number > 0"):
            training.validate_config(smoke(f"optim.learning_rate={lr}"))


# Four forced CPU devices vs one. Exactly equal results are not expected: with the batch split
# over 4 devices XLA computes per-device partial gradients that are then all-reduced, so sums
# run in a different order (and the convolutions see batch 1 instead of 4), which changes the
# float32 rounding (~1e-6 relative). Training from Magenta's N(0, 0.01) init under instance
# norm is also extremely sensitive at the start (a 1e-12 SGD step already lowers the loss by
# 10%), so such rounding differences grow ~100x per step and two free-running trajectories
# drift apart within a few steps whatever the device count. The test therefore compares *each
# step*: starting from the same 1-device checkpoint, one 4-device step must give the same
# parameters as the 1-device step, relative to the size of the update. SGD with momentum is used
# because its update is linear in the gradient; Adam's first updates are lr * sign(g), which
# turns rounding noise in near-zero gradient entries into O(lr) jumps.
#
# Everything runs in one subprocess (XLA_FLAGS must be set before JAX starts): the 1-device
# reference on a 1-device mesh of the same process, then the 4-device steps. It is started when
# this module is set up, so its compilation overlaps the in-process tests; it inherits the
# suite's XLA flags (conftest.py: LLVM -O0, a third less compile time).
_STEPS = 3
_MULTI_DEVICE_OVERRIDES = ["train.checkpoint_every=1", "train.keep_checkpoints=5",
                           "optim.optimizer='sgd'", "optim.learning_rate=1e-12",
                           "optim.momentum=0.9", f"train.num_steps={_STEPS}"]
_MULTI_DEVICE_SCRIPT = textwrap.dedent("""
    import json, shutil, sys
    from pathlib import Path
    import jax, numpy as np
    from arbitrary_nst import training
    from arbitrary_nst.vgg import load_vgg16
    args = json.loads(sys.argv[1])
    tmp = Path(args["tmp"])
    devices = jax.devices()
    assert len(devices) == 4, devices
    cfg = training.load_config(args["config"], args["overrides"])
    vgg = load_vgg16()
    out = {}
    host = lambda tree: jax.tree.leaves(training._local_copy(tree))
    tx, _ = training.make_optimizer(cfg.optim, args["steps"])
    for i, x in enumerate(host(training.init_state(training.build_model(cfg, vgg), tx,
                                                   cfg.seed).params)):
        out[f"ref/0/{i}"] = x

    def record(step, state):
        for i, x in enumerate(host(state.params)):
            out[f"ref/{step}/{i}"] = x

    ref = training.train(cfg, tmp / "ref", vgg=vgg, devices=devices[:1], progress=False,
                         export_path="", step_callback=record)
    assert len(jax.tree.leaves(ref.state.params)[0].sharding.device_set) == 1
    for k, h in enumerate(ref.history):
        out[f"ref/{k + 1}/loss"] = np.float32(h["loss"])
    for k in range(args["steps"]):
        wd = tmp / f"dev4_from_{k}"
        if k:  # start from the 1-device checkpoint of step k
            shutil.copytree(tmp / "ref" / "checkpoints" / str(k), wd / "checkpoints" / str(k))
        cfg.train.num_steps = k + 1
        r = training.train(cfg, wd, vgg=vgg, progress=False, export_path="")
        assert r.step == k + 1
        assert len(jax.tree.leaves(r.state.params)[0].sharding.device_set) == 4
        for i, x in enumerate(host(r.state.params)):
            out[f"dev4/{k + 1}/{i}"] = x
        out[f"dev4/{k + 1}/loss"] = np.float32(r.history[-1]["loss"])
    np.savez(tmp / "result.npz", **out)
""")


def _start_four_device_run(tmp: Path) -> subprocess.Popen:
    args = dict(config=str(CONFIGS / "smoke.py"), overrides=_MULTI_DEVICE_OVERRIDES,
                steps=_STEPS, tmp=str(tmp))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
               + " --xla_force_host_platform_device_count=4")
    with open(tmp / "log.txt", "w") as log:
        return subprocess.Popen([sys.executable, "-c", _MULTI_DEVICE_SCRIPT, json.dumps(args)],
                                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


_FOUR_DEVICE_TEST = "test_four_devices_match_one_device_step_by_step"


@pytest.fixture(scope="module", autouse=True)
def four_device_run(request, tmp_path_factory):
    """Start the 4-device subprocess when this module is set up, so that its compilation
    overlaps the in-process tests -- only in a plain (non-xdist) run that selected the test.
    Under pytest-xdist the test starts it itself (another worker provides the overlap)."""
    tmp = tmp_path_factory.mktemp("four_devices")
    selected = any(item.name == _FOUR_DEVICE_TEST for item in request.session.items)
    early = selected and not os.environ.get("PYTEST_XDIST_WORKER")
    holder = {"tmp": tmp, "proc": _start_four_device_run(tmp) if early else None}
    yield holder
    proc = holder["proc"]
    if proc is not None and proc.poll() is None:  # the test failed early or did not run
        proc.kill()
        proc.wait()


def test_four_devices_match_one_device_step_by_step(four_device_run):
    tmp = four_device_run["tmp"]
    if four_device_run["proc"] is None:
        four_device_run["proc"] = _start_four_device_run(tmp)
    rc = four_device_run["proc"].wait(timeout=600)
    assert rc == 0, (tmp / "log.txt").read_text()[-3000:]
    got = np.load(tmp / "result.npz")
    n = len([k for k in got.files if k.startswith("ref/0/")])
    for k in range(1, _STEPS + 1):
        np.testing.assert_allclose(got[f"dev4/{k}/loss"], got[f"ref/{k}/loss"], rtol=1e-5)
        num = den = 0.0
        for i in range(n):
            before, after, x4 = (got[f"ref/{k - 1}/{i}"], got[f"ref/{k}/{i}"],
                                 got[f"dev4/{k}/{i}"])
            num += float(np.sum((x4.astype(np.float64) - after) ** 2))
            den += float(np.sum((after.astype(np.float64) - before) ** 2))
            np.testing.assert_allclose(x4, after, rtol=1e-5, atol=1e-6)
        # The 4-device update equals the 1-device update to 1e-3 of its size (measured ~1e-5;
        # a missing or wrongly scaled gradient all-reduce would be O(1)).
        assert den > 0 and np.sqrt(num / den) < 1e-3, (k, np.sqrt(num / den))


# ------------------------------------------------------------------------------------------------
# Configs and the CLI


@pytest.mark.parametrize("name", ["default", "cpu_small", "smoke", "builtin"])
def test_config_files_are_valid(name):
    cfg = training.load_config(CONFIGS / f"{name}.py")
    training.validate_config(cfg)
    LossConfig.from_config(cfg.loss)
    data._cfg(cfg.data)  # the data engineer's validation accepts every field
    training.make_optimizer(cfg.optim, cfg.train.num_steps)
    assert cfg.train.batch_size >= 1 and cfg.model.embedding_dim >= 100
    json.dumps(training._to_plain(cfg))  # stored in checkpoint metadata


def test_builtin_config_builds_the_shipped_architecture():
    """configs/builtin.py fine-tunes the shipped model: its model section must be the export's
    (train.init_from refuses any other architecture)."""
    from arbitrary_nst.export import read_export
    from arbitrary_nst.inference import BUILTIN_MODEL

    cfg = training.load_config(CONFIGS / "builtin.py")
    _, header = read_export(BUILTIN_MODEL)
    shipped = header["model_config"]
    mine = json.loads(json.dumps(training._to_plain(cfg.model)))
    assert {k: mine.get(k) for k in shipped} == shipped
    assert cfg.train.init_from == "builtin"


def test_options_of_the_wrong_type_are_one_line_before_anything_is_built():
    """``--set model.width=None`` (and seed, the model's sizes and taps, the learning-rate
    multipliers set to None, a width of 1e30, a folder named by a number) were TypeError or
    ValueError tracebacks from deep inside the model, the optimizer or the data."""
    for bad, says in (("model.width=None", "width must be a number"),
                      ("model.width=1e30", "width must be"),
                      ("model.embedding_dim=None", "embedding_dim must be an integer"),
                      ("model.hidden_dim=None", "hidden_dim must be an integer"),
                      ("model.style_taps=None", "style_taps must be"),
                      ("model.feature_norm=None", "feature_norm must be"),
                      ("seed=None", "seed must be an integer"),
                      ("optim.predictor_lr_multiplier=None", "optim.predictor_lr_multiplier must"),
                      ("optim.embedding_lr_multiplier=None", "optim.embedding_lr_multiplier must"),
                      ("optim.transfer_lr_multiplier=None", "optim.transfer_lr_multiplier must"),
                      ("optim.transfer_lr_multiplier=-1", "optim.transfer_lr_multiplier must"),
                      ("data.style_dirs=[2024]", "data.style_dirs: 2024 is not a folder name"),
                      ("train.init_from=-1", "train.init_from must be 'builtin', an export"),
                      # a bool is an int to Python and ml_collections: True trained 1 step
                      ("train.num_steps=True", "train.num_steps must be >= 0, got True"),
                      ("train.batch_size=True", "train.batch_size must be >= 1, got True")):
        with pytest.raises(ConfigError) as e:
            training.validate_config(smoke(bad))
        assert says in str(e.value) and "\n" not in str(e.value), (bad, str(e.value))
    training.validate_config(smoke("model.width=0.25", "optim.predictor_lr_multiplier=0",
                                   "data.style_dirs=['2024']"))


def test_a_failed_start_closes_the_checkpoints_and_waits_for_their_cleanup(tmp_path, vgg,
                                                                            monkeypatch):
    """A start failing between the checkpoint manager's creation and the training loop (a
    missing init_from) left the manager open, and its background clean-up of temporary folders
    still listed checkpoints/ while the failed start's folders were removed: absl logged a
    FileNotFoundError traceback (6 of 40 such starts). Orbax's close() does not wait for that
    clean-up; the start's close does."""
    closed = []
    real = training._close_checkpoints
    monkeypatch.setattr(training, "_close_checkpoints",
                        lambda *a: (closed.append(a[1]), real(*a)))
    with pytest.raises(ModelError):
        training.train(smoke("train.num_steps=1", "train.init_from='/nonexistent/m.safetensors'"),
                       tmp_path / "w", vgg=vgg, progress=False)
    assert closed == [tmp_path / "w"] and not (tmp_path / "w").exists()

    order = []

    class Future:
        def result(self):
            order.append("cleanup awaited")

    class Manager:
        _cleanup_tmp_directory_future = Future()

        def wait_until_finished(self):
            order.append("saves finished")

        def close(self):
            order.append("closed")

    (tmp_path / "w2" / training.CHECKPOINT_DIR).mkdir(parents=True)
    real(Manager(), tmp_path / "w2", True)
    assert order == ["saves finished", "cleanup awaited", "closed"]
    assert not (tmp_path / "w2" / training.CHECKPOINT_DIR).exists()


def test_a_copy_of_a_shipped_config_loads_elsewhere(tmp_path):
    """Copying configs/cpu_small.py to one's own folder to change it (how a user starts) gave
    "get_config() failed (ConfigError: .../default.py: config file not found)": each shipped
    config builds on the one named next to itself. A copy builds on the project's, unless a
    copy of that one sits next to it (then that one)."""
    for name in ("cpu_small.py", "builtin.py", "smoke.py"):
        mine = tmp_path / f"my_{name}"
        shutil.copy(CONFIGS / name, mine)
        assert training.load_config(mine).to_dict() == training.load_config(
            CONFIGS / name).to_dict(), name
    own = tmp_path / "own"
    own.mkdir()
    shutil.copy(CONFIGS / "smoke.py", own / "smoke.py")
    text = (CONFIGS / "default.py").read_text().replace("c.seed = 0", "c.seed = 7")
    assert text != (CONFIGS / "default.py").read_text()
    (own / "default.py").write_text(text)
    assert training.load_config(own / "smoke.py").seed == 7
    # a copy saved under the name of the config it builds on builds on the project's
    shutil.copy(CONFIGS / "cpu_small.py", own / "default.py")
    assert training.load_config(own / "default.py").to_dict() == training.load_config(
        CONFIGS / "cpu_small.py").to_dict()


def test_config_overrides():
    cfg = smoke("train.num_steps=3", "optim.learning_rate=2e-4", "data.source=synthetic",
                "model.style_taps=('relu1_2', 'relu2_2')")
    assert cfg.train.num_steps == 3 and cfg.optim.learning_rate == 2e-4
    assert cfg.data.source == "synthetic" and tuple(cfg.model.style_taps) == ("relu1_2", "relu2_2")
    for bad in ("train.nope=1", "nosuch.field=1", "train.num_steps", "train.num_steps='x'"):
        with pytest.raises(ConfigError):
            smoke(bad)
    # a misspelt key names the field it is closest to (one letter off, sections swapped)
    for typo, field in (("trian.num_steps=5", "train.num_steps"),
                        ("train.num_step=5", "train.num_steps"),
                        ("data.contentdirs=x", "data.content_dirs")):
        with pytest.raises(ConfigError, match=rf"no config field .* \(did you mean "
                                              rf"'{re.escape(field)}'\?\)$"):
            smoke(typo)
    with pytest.raises(ConfigError, match=r"no config field 'foo'$"):  # (nothing close)
        smoke("foo=1")
    # one key set twice: the last won without a word (as repeated options did in argparse)
    with pytest.raises(ConfigError, match=r"^--set train.num_steps given twice \('2', then "
                                          r"'3'\): give it once$"):
        smoke("train.num_steps=2", "optim.learning_rate=2e-4", "train.num_steps=3")
    with pytest.raises(ConfigError):
        training.load_config(CONFIGS / "missing.py")
    bad_cfg = smoke("train.dtype='float16'")
    with pytest.raises(ConfigError):
        training.validate_config(bad_cfg)
    # values of the wrong type, and an export dtype that would fail only after training
    for bad, field in (("train.num_steps=None", "train.num_steps"),
                       ("train.export_dtype='int8'", "train.export_dtype"),
                       ("train.sample_every=None", "train.sample_every"),
                       # (these were tracebacks at the first sample grid, or accepted)
                       ("train.sample_size=0", "train.sample_size"),
                       ("train.sample_contents=()", "train.sample_contents"),
                       ("train.sample_styles=('nope',)", "train.sample_styles"),
                       ("optim.eps=-1", "optim.eps"), ("optim.b2=2", "optim.b2"),
                       ("optim.b1=-0.1", "optim.b1"), ("optim.momentum=1.5", "optim.momentum"),
                       ("optim.end_learning_rate_factor=-1",
                        "optim.end_learning_rate_factor")):
        with pytest.raises(ConfigError, match=f"^{re.escape(field)} must be"):
            training.validate_config(smoke(bad))
    for bad in ("loss.style_layers={'relu1_2': 'abc'}", "loss.content_layers={'relu3_3': -1.0}",
                "loss.style_layers={'relu1_2': 1e999}"):
        with pytest.raises(ConfigError, match="layer weight relu"):
            LossConfig.from_config(smoke(bad).loss)


def test_config_files_that_cannot_give_a_config_are_one_line(tmp_path):
    typo = tmp_path / "typo.py"
    typo.write_text((CONFIGS / "smoke.py").read_text().replace(
        "return", "c.trian.num_steps = 3\n    return", 1))
    text = tmp_path / "smoke.txt"
    text.write_text((CONFIGS / "smoke.py").read_text())
    no_optim = tmp_path / "no_optim.py"
    no_optim.write_text("from arbitrary_nst.training import load_config\n"
                        "def get_config():\n"
                        f"    c = load_config({str(CONFIGS / 'smoke.py')!r})\n"
                        "    del c['optim']\n    return c\n")
    a_dict = tmp_path / "a_dict.py"
    a_dict.write_text("def get_config():\n    return {'train': 1}\n")
    nothing = tmp_path / "nothing.py"
    nothing.write_text("def get_config():\n    pass\n")
    for path, why in ((typo, "get_config\\(\\) failed"), (text, "a config is a Python file"),
                      (no_optim, "the config has no optim section"),
                      (a_dict, "must return an ml_collections.ConfigDict .* got dict"),
                      (nothing, "got NoneType")):
        with pytest.raises(ConfigError, match=why) as e:
            training.load_config(path)
        assert "\n" not in str(e.value)


def test_resuming_a_fine_tuning_run_needs_no_start_model(tmp_path, vgg):
    """The checkpoint holds the weights; the start point's steps were recorded in the workdir."""
    a = training.train(smoke("train.num_steps=2", "train.sample_every=0"), tmp_path / "a",
                       vgg=vgg, progress=False)
    start = tmp_path / "start.safetensors"
    start.write_bytes(a.export_path.read_bytes())
    cfg = ("train.sample_every=0", f"train.init_from={start}")
    training.train(smoke("train.num_steps=1", *cfg), tmp_path / "b", vgg=vgg, progress=False)
    start.unlink()
    r = training.train(smoke("train.num_steps=2", *cfg), tmp_path / "b", vgg=vgg, progress=False)
    assert r.step == 2 and read_export(r.export_path)[1]["info"]["total_steps"] == 4


def test_train_cli_resumes_and_reports_errors_in_one_line(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    try:
        import train as train_cli
    finally:
        sys.path.remove(str(ROOT))
    wd = str(tmp_path / "wd")
    assert train_cli.main(["--config", str(CONFIGS / "smoke.py"), "--workdir", wd,
                           "--set", "train.num_steps=2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "done: step 2" in out and "exported inference weights" in out
    assert train_cli.main(["--config", str(CONFIGS / "smoke.py"), "--workdir", wd,
                           "--set", "train.num_steps=3", "--no-progress", "--export", ""]) == 0
    assert "done: step 3" in capsys.readouterr().out
    # Same workdir, different model: refused with one line, not an Orbax traceback.
    assert train_cli.main(["--config", str(CONFIGS / "smoke.py"), "--workdir", wd,
                           "--set", "model.width=0.5", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "different model" in err and "\n" not in err
    assert train_cli.main(["--config", str(CONFIGS / "smoke.py"), "--workdir", wd,
                           "--set", "train.batch_size=0"]) == 1
    assert "batch_size" in capsys.readouterr().err
    # --print-config prints it, and says what training would refuse (it exited 0)
    assert train_cli.main(["--config", str(CONFIGS / "smoke.py"), "--print-config",
                           "--set", "train.num_steps=-5"]) == 1
    cap = capsys.readouterr()
    assert "num_steps: -5" in cap.out
    assert cap.err.strip() == "error: train.num_steps must be >= 0, got -5"
    assert train_cli.main(["--config", str(CONFIGS / "smoke.py"), "--print-config"]) == 0
    # stopped by Ctrl-C (checkpoint saved): 130, so a multi-stage script stops too
    wd2 = str(tmp_path / "wd2")

    def ctrl_c_at_1(step, state):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    real_train = training.train
    try:
        training.train = lambda *a, **k: real_train(*a, **k, step_callback=ctrl_c_at_1)
        assert train_cli.main(["--config", str(CONFIGS / "smoke.py"), "--workdir", wd2,
                               "--set", "train.num_steps=3", "--no-progress"]) == 130
    finally:
        training.train = real_train
    assert "interrupted: step 1" in capsys.readouterr().out
    # out of (device) memory, e.g. data.image_size=4096: one line saying what to lower (it was
    # a JaxRuntimeError traceback); any other exception is still a traceback (a bug)
    def oom(*a, **k):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating "
                                         "290798114816 bytes.")

    def bug(*a, **k):
        raise RuntimeError("a bug")

    try:
        training.train = oom
        assert train_cli.main(["--config", str(CONFIGS / "smoke.py"), "--workdir", wd2]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: out of memory (RESOURCE_EXHAUSTED") and err.count("\n") == 1
        assert "train.batch_size, data.image_size" in err and wd2 in err
        training.train = bug
        with pytest.raises(RuntimeError, match="a bug"):
            train_cli.main(["--config", str(CONFIGS / "smoke.py"), "--workdir", wd2])
    finally:
        training.train = real_train


def test_a_damaged_checkpoint_is_one_line_naming_what_to_delete(tmp_path, vgg):
    """A truncated array file or metadata gave 140-line tensorstore / JSON tracebacks."""
    wd = tmp_path / "wd"
    cfg = ("train.sample_every=0", "train.checkpoint_every=2", "train.keep_checkpoints=3")
    training.train(smoke("train.num_steps=4", *cfg), wd, vgg=vgg, progress=False)
    ckpt = wd / training.CHECKPOINT_DIR
    assert sorted(p.name for p in ckpt.iterdir() if p.name.isdigit()) == ["2", "4"]
    biggest = max((p for p in (ckpt / "4").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])
    with pytest.raises(NSTError, match=r"cannot restore the checkpoint .*; delete .*4 to "
                                       r"resume from step 2$") as e:
        training.train(smoke("train.num_steps=6", *cfg), wd, vgg=vgg, progress=False)
    assert "\n" not in str(e.value)
    shutil.rmtree(ckpt / "4")
    assert training.train(smoke("train.num_steps=6", *cfg), wd, vgg=vgg, progress=False).step == 6


def test_damaged_workdir_records_are_one_line_or_replaced(tmp_path, vgg):
    """A damaged record of where the run began (not JSON, a list, prior_steps "abc") failed the
    resume with a JSONDecodeError / AttributeError / ValueError traceback, an undecodable run id
    with a UnicodeDecodeError one. The record: one line saying to delete it (it is then made
    again from the checkpoint); the run id: replaced, as a missing one is."""
    wd = tmp_path / "wd"
    cfg = ("train.sample_every=0", "train.checkpoint_every=1")
    training.train(smoke("train.num_steps=1", *cfg), wd, vgg=vgg, progress=False, export_path="")
    record = wd / training.INIT_RECORD
    for bad in ("not json", "[]", '{"prior_steps": "abc"}', '{"init_from": 5}'):
        record.write_text(bad)
        with pytest.raises(ConfigError, match=r"init_from.json: the record of where this run "
                                              r"began is damaged .*; delete it") as e:
            training.train(smoke("train.num_steps=2", *cfg), wd, vgg=vgg, progress=False,
                           export_path="")
        assert "\n" not in str(e.value) and str(record) in str(e.value)
    record.unlink()
    (wd / training.RUN_ID_FILE).write_bytes(b"\xff\xfe")
    assert training.train(smoke("train.num_steps=2", *cfg), wd, vgg=vgg, progress=False,
                          export_path="").step == 2
    assert json.loads(record.read_text()) == {}  # made again: from scratch (the checkpoint says)
    assert re.fullmatch(r"[0-9a-f]{32}", (wd / training.RUN_ID_FILE).read_text().strip())


def test_a_relative_init_from_is_recorded_absolute(tmp_path, vgg, monkeypatch, caplog):
    """The workdir's record of where its run began kept ``train.init_from`` as given: resumed
    from another folder with the same file's absolute path, it warned "is not used"."""
    training.train(smoke("train.num_steps=0"), tmp_path / "a", vgg=vgg, progress=False)
    start = tmp_path / "a" / "model.safetensors"
    monkeypatch.chdir(tmp_path)
    training.train(smoke("train.num_steps=1", "train.init_from=a/model.safetensors"),
                   tmp_path / "b", vgg=vgg, progress=False, export_path="")
    assert json.loads((tmp_path / "b" / training.INIT_RECORD).read_text())["init_from"] == \
        str(start)
    monkeypatch.chdir(tmp_path / "a")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="arbitrary_nst.training"):
        r = training.train(smoke("train.num_steps=2", f"train.init_from={start}"),
                           tmp_path / "b", vgg=vgg, progress=False, export_path="")
    assert r.step == 2 and not [m for m in caplog.messages if "is not used" in m]


def test_folders_are_prepared_with_progress_also_when_stderr_is_a_log(tmp_path, vgg,
                                                                      monkeypatch):
    """Preparing folders showed no progress with stderr to a file or pipe (nohup, CI, ``2> log``:
    minutes of silence for a large folder): only the step bar is for terminals."""
    seen = []

    class Stop(Exception):
        pass

    def factory(data_cfg, **kw):
        seen.append(kw["progress"])
        raise Stop

    monkeypatch.setattr(training, "_default_loader_factory", factory)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    for i, progress in enumerate((None, True, False)):
        with pytest.raises(Stop):
            training.train(smoke("train.num_steps=1"), tmp_path / f"w{i}", vgg=vgg,
                           progress=progress)
    assert seen == [True, True, False]
    # --objective prepares the folders it reads too (it was silent even on a terminal)
    def prepare(data_cfg, *, progress=False, **kw):
        seen.append(progress)
        raise Stop

    monkeypatch.setattr(data, "prepare", prepare)
    model = training.build_model(smoke(), vgg)
    for progress in (True, False):
        with pytest.raises(Stop):
            training.training_objective(smoke(), [model], vgg=vgg, progress=progress)
    assert seen[3:] == [True, False]


def test_a_workdir_takes_one_training_run_at_a_time(tmp_path, vgg, monkeypatch):
    """Two runs in one workdir deleted each other's checkpoints in progress: the second is
    refused at once (the lock is the kernel's: it goes with the process that holds it)."""
    monkeypatch.setattr(training, "_default_loader_factory",
                        lambda *a, **k: pytest.fail("data was read"))
    wd = tmp_path / "wd"
    wd.mkdir()
    with training._workdir_lock(wd):
        with pytest.raises(ConfigError, match=f"in use by another training run \\(pid "
                                              f"{os.getpid()}\\)"):
            training.train(smoke("train.num_steps=1"), wd, vgg=vgg, progress=False)
    with training._workdir_lock(wd):  # released: it can be taken again
        pass
    # a filesystem without flock (Lustre noflock, NFS without lockd): a warning, not a refusal
    import errno
    import fcntl

    def no_flock(*a):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with training._workdir_lock(wd):
        pass


def test_a_time_budget_plan_resumes_only_with_its_checkpoints(tmp_path):
    """A plan left without checkpoints made a new run stop at the old plan's length."""
    wd = tmp_path / "wd"
    (wd / training.CHECKPOINT_DIR).mkdir(parents=True)
    plan = wd / training.TIME_BUDGET_PLAN
    plan.write_text(json.dumps({"time_budget_s": 60.0, "num_steps": 31}))
    tcfg = smoke("train.num_steps=200").train
    assert not training._resume_plan(wd, plan, 300.0, tcfg, True)
    assert not plan.exists() and tcfg.num_steps == 200  # stale: removed, this run plans
    plan.write_text(json.dumps({"time_budget_s": 60.0, "num_steps": 31}))
    (wd / training.CHECKPOINT_DIR / "20").mkdir()
    assert training._resume_plan(wd, plan, 60.0, tcfg, True) and tcfg.num_steps == 31
    # another budget (a shorter loan): the plan's length, so its schedule, is kept
    tcfg.num_steps = 200
    assert training._resume_plan(wd, plan, 20.0, tcfg, True) and tcfg.num_steps == 31


def test_a_stopped_run_dies_of_its_signal_so_a_shell_script_stops():
    """train.py as a script: 130 / 143 (saved after Ctrl-C / SIGTERM) become death by that
    signal: bash ends a multi-stage script only then (an exit status of 130 went on to the next
    stage: measured with `for w in w1 w2; do python train.py ...; done` and Ctrl-C)."""
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import train; " \
           "train.exit_as_signalled(int(sys.argv[1]))"
    for status, want in ((130, -signal.SIGINT), (143, -signal.SIGTERM), (129, -signal.SIGHUP),
                         (1, 1), (0, 0)):
        r = subprocess.run([sys.executable, "-c", code, str(status)], capture_output=True)
        assert r.returncode == want, (status, r.returncode, r.stderr[-300:])


def test_bad_workdir_or_export_path_fails_before_training(tmp_path, vgg, monkeypatch):
    """A workdir that is a file, or an export path that is a folder (which would fail only at
    the end, after the training), is one ConfigError before any data is read or step run."""
    monkeypatch.setattr(training, "_default_loader_factory",
                        lambda *a, **k: pytest.fail("data was read"))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [(a_file, None, "is not a directory"),
             (a_file / "sub", None, "a parent path is not a directory"),
             (tmp_path / "wd", tmp_path, "the export path is a directory"),
             (tmp_path / "wd2", a_file / "m.safetensors", "is not a directory")]
    for workdir, export, reason in cases:
        with pytest.raises(ConfigError, match=reason) as e:
            training.train(smoke(), workdir, export_path=export, vgg=vgg, progress=False)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "wd2").exists()  # the export is checked before the workdir is made
    # an export over an input: the model the run starts from, or a training image
    start = tmp_path / "start.safetensors"
    start.write_bytes(b"model")
    cfg = smoke()
    cfg.train.init_from = str(start)
    with pytest.raises(ConfigError, match="would replace train.init_from"):
        training.train(cfg, tmp_path / "wd3", export_path=start, vgg=vgg, progress=False)
    photos = tmp_path / "photos"
    photos.mkdir()
    cfg = smoke()
    cfg.data.content_dirs = [str(photos)]
    with pytest.raises(ConfigError, match="into the training image folder"):
        training.train(cfg, tmp_path / "wd4", export_path=photos / "img00.jpg", vgg=vgg,
                       progress=False)
    assert start.read_bytes() == b"model"
    # someone's file (it was replaced by the export, exit 0), or not a .safetensors name
    notes = tmp_path / "thesis.safetensors"
    notes.write_text("my notes")
    for export, reason in ((notes, "exists and is not a model export"),
                           (tmp_path / "m.txt", "must end in .safetensors")):
        with pytest.raises(ConfigError, match=reason):
            training.train(smoke(), tmp_path / "wd5", export_path=export, vgg=vgg,
                           progress=False)
    assert notes.read_text() == "my notes"
    # a workdir inside a training image folder: its sample grids became training images
    with pytest.raises(ConfigError, match="the workdir is inside the training image folder"):
        training.train(cfg, photos / "run", vgg=vgg, progress=False)
    assert not (photos / "run").exists()
    # ... also named with a ~ (`--set data.content_dirs=~/photos`: not expanded by the shell;
    # the data expands it, the check did not, and the grids were trained on)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp_path))
        cfg.data.content_dirs = ["~/photos"]
        with pytest.raises(ConfigError, match="the workdir is inside the training image folder"):
            training.train(cfg, photos / "run", vgg=vgg, progress=False)
        with pytest.raises(ConfigError, match="into the training image folder"):
            training.train(cfg, tmp_path / "wd7", export_path=photos / "m.safetensors",
                           vgg=vgg, progress=False)
    assert not (photos / "run").exists()
    # the built-in model is never an export destination (it was replaced, exit 0)
    from arbitrary_nst.inference import BUILTIN_MODEL

    with pytest.raises(ConfigError, match="is the built-in model"):
        training.train(smoke(), tmp_path / "wd6", export_path=BUILTIN_MODEL, vgg=vgg,
                       progress=False)


def test_batch_must_divide_over_devices(tmp_path, vgg, monkeypatch):
    monkeypatch.setattr(training, "make_mesh", lambda devices=None: _FakeMesh(3))
    with pytest.raises(ConfigError, match="multiple of the number of devices"):
        training.train(smoke(), tmp_path, vgg=vgg, progress=False)


class _FakeMesh:
    def __init__(self, n):
        self.devices = np.empty(n, object)


def test_importing_the_package_leaves_jax_distributed_initialize_possible():
    # jax.distributed.initialize must run before the JAX backend starts: a jax array made at
    # import (color.py's constants) made distributed.initialize=True fail with a traceback
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    code = ("import jax, arbitrary_nst, arbitrary_nst.training, arbitrary_nst.inference, "
            "arbitrary_nst.cli, arbitrary_nst.evaluate, arbitrary_nst.data\n"
            f"jax.distributed.initialize('localhost:{port}', num_processes=1, process_id=0)\n"
            "print(jax.process_count())")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr[-2000:]


def test_a_run_refused_by_the_main_process_is_refused_by_every_process(tmp_path):
    """Two processes (gloo on CPU): the main process alone checks the workdir and the export
    path; the other went on into the first collective and died 30 s later with a 50-line
    DEADLINE_EXCEEDED traceback. Both now end at once with one error line."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen(
        [sys.executable, "train.py", "--config", "configs/smoke.py", "--workdir",
         str(tmp_path / "w"), "--export", "arbitrary_nst/assets/model.safetensors",
         "--set", "distributed.initialize=True", "--set",
         f"distributed.coordinator_address='localhost:{port}'", "--set",
         "distributed.num_processes=2", "--set", f"distributed.process_id={p}", "--no-progress"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for p in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert p.returncode == 1 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert "is the built-in model" in outs[0][1]
    assert "the main process (0) refused this run" in outs[1][1]


def test_devices_are_checked_in_one_line(vgg):
    """train(devices=[]) was a ZeroDivisionError, names an AttributeError, a device given
    twice a bare AssertionError from jax.device_put (in Stylizer too)."""
    from arbitrary_nst.inference import Stylizer

    d = jax.devices()[0]
    for devices, msg in (([], "no devices"), (["cpu:0"], "must be jax devices"),
                         ([0, 1], "must be jax devices"), ([d, d], "must be distinct")):
        with pytest.raises(ConfigError, match=msg):
            training.make_mesh(devices)
    with pytest.raises(ConfigError, match="must be distinct"):
        Stylizer(training.build_model(smoke(), vgg), devices=[d, d])
    assert training.make_mesh([d]).devices.size == 1


def test_resuming_with_another_process_count_is_said(tmp_path, caplog):
    """Each process loads its share of a batch with its own seed: resuming a 2-process run as
    one process changes the data order, which was not said."""
    cfg = training._to_plain(smoke())
    meta = lambda n: {"data": cfg["data"], "config": cfg, "process_count": n}  # noqa: E731
    with caplog.at_level(logging.WARNING):
        training._check_resume_meta(meta(2), meta(1), tmp_path)
    assert "process count 2 -> 1" in caplog.text and "batches will differ" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        training._check_resume_meta({"data": cfg["data"], "config": cfg}, meta(1), tmp_path)
        training._check_resume_meta(meta(1), meta(1), tmp_path)
    assert caplog.text == ""  # (an older checkpoint without the count: nothing to say)


def test_logged_step_rates_leave_out_compiling_and_sample_grids(tmp_path, vgg, monkeypatch):
    """The first logged it/s included the step's compilation (1.57 it/s, then 5.02), and a
    window with a sample grid its drawing. Here a grid takes 3 s: a window holding it gave
    < 0.4 it/s."""
    import time as time_lib

    real = training._save_samples

    def slow_samples(workdir, step, *args):
        real(workdir, step, *args)
        if step == 2:
            time_lib.sleep(3.0)

    monkeypatch.setattr(training, "_save_samples", slow_samples)
    r = training.train(smoke("train.num_steps=4", "train.log_every=2", "train.sample_every=2"),
                       tmp_path / "w", vgg=vgg, progress=False)
    rates = [h["steps_per_sec"] for h in r.history]
    assert [h["step"] for h in r.history] == [2, 4] and min(rates) > 0.5, rates
    # logged every step: step 1's window is its compilation alone, no rate (it logged 0.06
    # it/s where the run did 0.5, to TensorBoard too); a resumed run's first step likewise
    r = training.train(smoke("train.num_steps=3", "train.log_every=1"), tmp_path / "e",
                       vgg=vgg, progress=False)
    first, *rest = r.history
    assert "steps_per_sec" not in first and "it/s" not in training._postfix(first)
    assert [h["step"] for h in rest] == [2, 3] and all(h["steps_per_sec"] > 0.5 for h in rest)
    assert r.steps_per_sec == rest[-1]["steps_per_sec"]
    one = training.train(smoke("train.num_steps=4", "train.log_every=1"), tmp_path / "e",
                         vgg=vgg, progress=False)
    assert [h["step"] for h in one.history] == [4] and one.steps_per_sec is None
    assert "steps_per_sec" not in one.history[0]


def test_training_errors_are_user_errors():
    assert issubclass(training.TrainingDiverged, NSTError)


def test_predictor_lr_multiplier_scales_only_the_predictor_updates():
    import jax.numpy as jnp

    base = ["optim.optimizer=sgd", "optim.warmup_steps=0", "optim.schedule=constant",
            "optim.learning_rate=0.01"]
    params = {"predictor": {"heads": jnp.ones(3)}, "transfer_net": {"conv": jnp.ones(2)}}
    grads = {"predictor": {"heads": jnp.full(3, 2.0)}, "transfer_net": {"conv": jnp.full(2, 3.0)}}
    out = {}
    for mult in (1.0, 10.0):
        tx, _ = training.make_optimizer(smoke(*base, f"optim.predictor_lr_multiplier={mult}").optim,
                                        10)
        out[mult], _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(out[1.0]["predictor"]["heads"], -0.02, rtol=1e-6)
    np.testing.assert_allclose(out[10.0]["predictor"]["heads"], -0.2, rtol=1e-6)
    np.testing.assert_array_equal(out[10.0]["transfer_net"]["conv"], out[1.0]["transfer_net"]["conv"])


def test_embedding_lr_multiplier_scales_only_the_embedding_mlp():
    import jax.numpy as jnp

    base = ["optim.optimizer=sgd", "optim.warmup_steps=0", "optim.schedule=constant",
            "optim.learning_rate=0.01"]
    params = {"predictor": {"heads": jnp.ones(3), "hidden": jnp.ones(2), "bottleneck": jnp.ones(2)},
              "transfer_net": {"hidden": jnp.ones(2)}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
    tx, _ = training.make_optimizer(smoke(*base, "optim.predictor_lr_multiplier=2",
                                          "optim.embedding_lr_multiplier=5").optim, 10)
    out, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(out["predictor"]["heads"], -0.04, rtol=1e-6)
    np.testing.assert_allclose(out["predictor"]["hidden"], -0.2, rtol=1e-6)
    np.testing.assert_allclose(out["predictor"]["bottleneck"], -0.2, rtol=1e-6)
    # a transfer-net module that happens to be called "hidden" is not scaled
    np.testing.assert_allclose(out["transfer_net"]["hidden"], -0.02, rtol=1e-6)


def test_transfer_lr_multiplier_zero_freezes_only_the_transfer_net():
    import jax.numpy as jnp

    base = ["optim.warmup_steps=0", "optim.schedule=constant", "optim.learning_rate=0.01"]
    params = {"predictor": {"heads": jnp.ones(3), "hidden": jnp.ones(2)},
              "transfer_net": {"conv": jnp.ones(2)}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
    tx, _ = training.make_optimizer(smoke(*base, "optim.transfer_lr_multiplier=0",
                                          "optim.embedding_lr_multiplier=0").optim, 10)
    out, _ = tx.update(grads, tx.init(params), params)  # Adam: first step -lr * sign(g)
    np.testing.assert_allclose(out["predictor"]["heads"], -0.01, rtol=1e-5)
    np.testing.assert_array_equal(out["predictor"]["hidden"], 0.0)
    np.testing.assert_array_equal(out["transfer_net"]["conv"], 0.0)
    with pytest.raises(ConfigError, match="multiplier"):
        training.make_optimizer(smoke(*base, "optim.transfer_lr_multiplier=-1").optim, 10)


def test_training_objective_compares_models_on_the_same_batches(tmp_path, vgg, capsys):
    """train.py --objective: each model's training loss on the same fixed batches, equal to
    batch_loss on the batches the training loader itself yields."""
    import jax.numpy as jnp

    from arbitrary_nst.device_augment import finish_batch

    cfg = smoke("data.synthetic_count=6")
    a = training.build_model(cfg, vgg)
    b = training.build_model(smoke("seed=1"), vgg)
    path = export_model(b, tmp_path / "b.safetensors")
    rows = training.training_objective(cfg, [a, str(path)], num_batches=2, seed=3, vgg=vgg)
    with data.make_loader(cfg.data, batch_size=4, seed=3, num_workers=1) as loader:
        # the training loop's path: the loader's batches, finished as the step does
        batches = [finish_batch(next(loader)) for _ in range(2)]
    loss_cfg = LossConfig.from_config(cfg.loss)
    for m, r in zip([a, b], rows):
        want = [training.batch_loss(m, jnp.asarray(x["content"]), jnp.asarray(x["style"]),
                                    loss_cfg)[1] for x in batches]
        for k in ("loss", "content", "style", "tv"):
            np.testing.assert_allclose(r[k], np.mean([float(w[k]) for w in want]), rtol=2e-5)
    assert rows[0]["loss"] != rows[1]["loss"]  # other weights, other loss
    again = training.training_objective(cfg, [a], num_batches=2, seed=3, vgg=vgg)[0]
    assert again == rows[0]  # fixed batches: the same numbers every time
    other = training.training_objective(cfg, [a], num_batches=2, seed=4, vgg=vgg)[0]
    assert other["loss"] != rows[0]["loss"]
    with pytest.raises(ConfigError, match="num_batches"):
        training.training_objective(cfg, [a], num_batches=0, vgg=vgg)

    sys.path.insert(0, str(ROOT))
    try:
        import train as train_cli
    finally:
        sys.path.remove(str(ROOT))
    smoke_cfg = ["--config", str(CONFIGS / "smoke.py"), "--set", "data.synthetic_count=6"]
    assert train_cli.main(smoke_cfg + ["--objective", str(path), "--objective-batches", "2",
                                       "--objective-seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "8 fixed pairs" in out and f"| {path} | {rows[1]['loss']:.4g} |" in out
    assert train_cli.main(smoke_cfg + ["--objective", str(tmp_path / "missing.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no such file" in err and "\n" not in err
    with pytest.raises(SystemExit):
        train_cli.main(smoke_cfg)  # neither --workdir nor --objective
    assert "--workdir is required" in capsys.readouterr().err
    # --objective does not train: a --workdir or --export given with it was ignored; 0
    # batches said "num_batches must be >= 1", not the option's name
    for extra, msg in ((["--workdir", str(tmp_path / "w")], "--workdir and --export do not"),
                       (["--export", str(tmp_path / "e.safetensors")], "do not apply"),
                       (["--objective-batches", "0"], "--objective-batches must be >= 1")):
        with pytest.raises(SystemExit) as e:
            train_cli.main(smoke_cfg + ["--objective", str(path), *extra])
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_an_empty_data_variable_is_unset_not_the_current_folder(tmp_path, monkeypatch):
    """ARBITRARY_NST_DATA set but empty made the configs read content/bsds500 ... under the
    current folder ("no such directory" there); it is unset now, as ARBITRARY_NST_CACHE."""
    monkeypatch.chdir(tmp_path)
    default = training.load_config(CONFIGS / "cpu_small.py").data.content_dirs
    for empty in ("", "  "):
        monkeypatch.setenv("ARBITRARY_NST_DATA", empty)
        assert training.load_config(CONFIGS / "cpu_small.py").data.content_dirs == default
    assert all(os.path.isabs(d) for d in default)
    monkeypatch.setenv("ARBITRARY_NST_DATA", str(tmp_path / "mine"))
    assert training.load_config(CONFIGS / "cpu_small.py").data.content_dirs[0] == str(
        tmp_path / "mine" / "content" / "bsds500")


def test_a_resume_on_another_device_count_is_said(tmp_path, caplog):
    """A run resumed on another number of devices continued without a word; its weights differ
    by rounding from an uninterrupted run's (the gradients' sum in another order: 0.01 after 8
    smoke steps on 2 forced host devices against 1)."""
    with caplog.at_level(logging.WARNING, logger="arbitrary_nst.training"):
        assert training._check_resume_meta({"device_count": 2}, {"device_count": 1},
                                           tmp_path) == []
        training._check_resume_meta({"device_count": 2}, {"device_count": 2}, tmp_path)
        training._check_resume_meta({}, {"device_count": 2}, tmp_path)  # (older: not recorded)
        training._check_resume_meta({"device_count": 1}, {"device_count": 2}, tmp_path)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}: its checkpoints were trained on 2 devices, this run has 1; resuming "
        "anyway (the gradients are summed in another order: the weights differ by rounding "
        "from an uninterrupted run's)",
        f"{tmp_path}: its checkpoints were trained on 1 device, this run has 2; resuming "  # (not "1 devices")
        "anyway (the gradients are summed in another order: the weights differ by rounding "
        "from an uninterrupted run's)"]


def test_a_longer_run_of_a_decaying_schedule_is_said_on_resume(tmp_path):
    # cosine/linear schedules are built for train.num_steps: resuming a finished 3-step run
    # as a 5-step one restarts the decay (2+2 != 4 bit for bit), which was not said
    def meta(schedule, num_steps, budget=0):
        cfg = smoke(f"optim.schedule='{schedule}'", f"train.num_steps={num_steps}",
                    f"train.time_budget_s={budget}")
        return {"config": training._to_plain(cfg)}

    said = training._check_resume_meta(meta("cosine", 3), meta("cosine", 5), tmp_path)
    assert said == ["train.num_steps (3 -> 5: the learning-rate schedule's length)"]
    assert training._check_resume_meta(meta("linear", 3), meta("linear", 3), tmp_path) == []
    assert training._check_resume_meta(meta("constant", 3), meta("constant", 5), tmp_path) == []
    # a time-budgeted run sets its own length from its plan
    assert training._check_resume_meta(meta("cosine", 9, 60), meta("cosine", 4, 60),
                                       tmp_path) == []


def test_resume_compares_the_training_images_not_how_their_folders_are_named(
        tmp_path, vgg, caplog, monkeypatch):
    """A painting added to a training folder between runs changed the batches without a
    word (the folder's name was the same); the same folders given as relative paths warned
    that the data differs, and so did a copy of the folders elsewhere (the fingerprint held
    the files' times and places). The prepared datasets' names (fingerprints of the files'
    contents) decide."""
    import shutil

    from PIL import Image

    rng = np.random.default_rng(0)
    for role in ("photos", "paintings"):
        (tmp_path / role).mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (80, 96, 3), np.uint8)).save(
                tmp_path / role / f"{i}.png")

    def cfg(steps, photos, paintings):
        return smoke(f"train.num_steps={steps}", "train.sample_every=0", "data.source=folder",
                     f"data.content_dirs=['{photos}']", f"data.style_dirs=['{paintings}']",
                     f"data.data_dir='{tmp_path / 'tfds'}'", "train.batch_size=2")

    wd = tmp_path / "wd"
    training.train(cfg(1, tmp_path / "photos", tmp_path / "paintings"), wd, vgg=vgg,
                   progress=False)
    moved = tmp_path / "restored"  # a copy with new file times (cp -r, a backup restored)
    for role in ("photos", "paintings"):
        shutil.copytree(tmp_path / role, moved / role, copy_function=shutil.copyfile)
    monkeypatch.chdir(moved)
    with caplog.at_level(logging.WARNING, logger=training.log.name):
        training.train(cfg(2, "photos", "paintings"), wd, vgg=vgg, progress=False)
    assert "differ" not in caplog.text, caplog.text  # the same images, named relatively
    Image.fromarray(rng.integers(0, 255, (80, 96, 3), np.uint8)).save(
        moved / "paintings" / "new.png")
    with caplog.at_level(logging.WARNING, logger=training.log.name):
        training.train(cfg(3, "photos", "paintings"), wd, vgg=vgg, progress=False)
    assert "the training images differ from the checkpoint's" in caplog.text, caplog.text


def test_resume_with_changed_settings_is_said_or_refused(tmp_path, vgg, caplog):
    """A changed learning rate or loss weight was resumed silently (not the run the checkpoint
    began); another optimizer gave a truncated Orbax pytree message; a loader-only data
    setting warned that the batches differ, which they do not."""
    wd = tmp_path / "wd"
    base = ("train.sample_every=0", "train.checkpoint_every=2")
    training.train(smoke("train.num_steps=1", *base), wd, vgg=vgg, progress=False)
    with caplog.at_level(logging.WARNING, logger=training.log.name):  # a plain resume: silent
        training.train(smoke("train.num_steps=2", *base), wd, vgg=vgg, progress=False)
    assert not [r for r in caplog.records if "resum" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger=training.log.name):
        training.train(smoke("train.num_steps=3", "optim.learning_rate=5e-4",
                             "loss.style_weight=2.0", "data.num_workers=1",
                             "data.content_dirs=['/moved/clone/photos']", *base), wd,
                       vgg=vgg, progress=False)  # (folders unused by a synthetic source)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "resuming with a changed optim.learning_rate, loss.style_weight: the run" in said
    assert "data config differs" not in said
    with pytest.raises(ConfigError, match="optim.optimizer='adam', not 'sgd'"):
        training.train(smoke("train.num_steps=4", "optim.optimizer=sgd", *base), wd, vgg=vgg,
                       progress=False)
    # a setting that changes the optimizer state's structure: the checkpoint is fine, so the
    # message must not say to delete it (it did: "delete .../2 to resume from step ...")
    with pytest.raises(ConfigError, match=r"does not fit this config \(changed: "
                                          r"optim.grad_clip_norm, ") as e:
        training.train(smoke("train.num_steps=4", "optim.grad_clip_norm=1.0", *base), wd,
                       vgg=vgg, progress=False)
    assert "delete" not in str(e.value)


# ---------------------------------------------------------------- mutation-testing pass (CLI)


def _train_script():
    sys.path.insert(0, str(ROOT))
    try:
        import train as train_cli
    finally:
        sys.path.remove(str(ROOT))
    return train_cli


def test_train_cli_passes_its_options_and_reports_the_stop(tmp_path, monkeypatch, capsys):
    """train.py hands --workdir/--export/--no-progress to training.train as given ('' = no
    export); a run stopped by SIGTERM returns 143 (SIGINT 130); a Ctrl-C outside the loop is
    130 with one line naming the workdir."""
    import types

    train_cli = _train_script()
    calls = []

    def fake_train(config, workdir, *, export_path=None, progress=None, **kw):
        calls.append((workdir, export_path, progress))
        return types.SimpleNamespace(history=[{"loss": 1.5, "content": 0.5, "style": 1.0,
                                               "tv": 0.0}], interrupted=sig is not None,
                                     step=7, export_path=None, signal=sig)

    monkeypatch.setattr(training, "train", fake_train)
    cfg = ["--config", str(CONFIGS / "smoke.py"), "--workdir", str(tmp_path / "w")]
    for sig, extra, want in ((None, ["--export", "", "--no-progress"], 0),
                             (signal.SIGTERM, [], 143), (signal.SIGINT, ["--export", "e"], 130)):
        assert train_cli.main(cfg + extra) == want
    assert calls == [(str(tmp_path / "w"), "", False), (str(tmp_path / "w"), None, None),
                     (str(tmp_path / "w"), "e", None)]
    out = capsys.readouterr().out.splitlines()
    assert out == ["done: step 7 loss=1.5 content=0.5 style=1 tv=0"] + \
        ["interrupted: step 7 loss=1.5 content=0.5 style=1 tv=0"] * 2

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", ctrl_c)
    assert train_cli.main(cfg) == 130  # nothing saved (no workdir even): no checkpoints named
    assert capsys.readouterr().err == "error: interrupted\n"
    (tmp_path / "w" / training.CHECKPOINT_DIR / "3.orbax-checkpoint-tmp").mkdir(parents=True)
    assert train_cli.main(cfg) == 130
    assert capsys.readouterr().err == "error: interrupted\n"
    (tmp_path / "w" / training.CHECKPOINT_DIR / "2").mkdir()
    assert train_cli.main(cfg) == 130
    assert capsys.readouterr().err == \
        f"error: interrupted; the checkpoints saved so far stay in {tmp_path / 'w'}\n"


def test_train_cli_objective_options_reach_the_objective(monkeypatch, capsys):
    train_cli = _train_script()
    seen = {}

    def fake_objective(config, models, *, num_batches, seed, progress):
        seen.update(models=models, num_batches=num_batches, seed=seed, progress=progress)
        return [{"loss": 2.0, "content": 1.0, "style": 0.75, "tv": 0.25}] * len(models)

    monkeypatch.setattr(training, "training_objective", fake_objective)
    cfg = ["--config", str(CONFIGS / "smoke.py")]
    assert train_cli.main(cfg + ["--objective", "builtin", "x.safetensors",
                                 "--objective-batches", "3", "--objective-seed", "9"]) == 0
    assert seen == {"models": ["builtin", "x.safetensors"], "num_batches": 3, "seed": 9,
                    "progress": True}  # (preparing folders; progress.bar writes lines to logs)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("training objective on 12 fixed pairs (3 batches, seed 9) of ")
    assert out[3:] == ["| builtin | 2 | 1 | 0.75 | 0.25 |",
                       "| x.safetensors | 2 | 1 | 0.75 | 0.25 |"]
    assert train_cli.main(cfg + ["--objective", "builtin", "--no-progress"]) == 0
    assert seen["num_batches"] == 12 and seen["seed"] == 1234 and seen["progress"] is False


# ------------------------------------------------------------------------------------------------
# Mutation-testing pass (training.py): schedules, the time-budget plan, scalars, divergence
# messages, the export's info, checkpoint steps, the sample grid


def test_schedules_match_their_formulas_by_hand():
    """Warmup 0 -> lr over ``warmup_steps``, then the decay reaches ``lr * end_factor`` exactly
    at ``num_steps`` (not ``num_steps + warmup``) and stays there; float64 references."""
    import math as m

    lr, warmup, n, end_factor = 1e-3, 4, 14, 0.1
    end = lr * end_factor
    base = ("optim.learning_rate=1e-3", f"optim.warmup_steps={warmup}",
            f"optim.end_learning_rate_factor={end_factor}")
    for kind in ("linear", "cosine", "constant"):
        _, schedule = training.make_optimizer(smoke(*base, f"optim.schedule='{kind}'").optim, n)
        for s in range(0, 20):
            if s < warmup:
                want = lr * s / warmup
            else:
                t = min(s - warmup, n - warmup) / (n - warmup)
                want = {"linear": lr + (end - lr) * t,
                        "cosine": end + (lr - end) * 0.5 * (1 + m.cos(m.pi * t)),
                        "constant": lr}[kind]
            assert float(schedule(s)) == pytest.approx(want, rel=1e-5, abs=1e-12), (kind, s)


def test_a_warmup_longer_than_the_run_is_said(tmp_path, vgg, caplog):
    """A 6-step fine-tune with builtin.py's 100 warmup steps ended at 6% of the configured
    learning rate without a word (it looked like a run that learnt nothing)."""
    cfg = smoke("train.num_steps=2", "optim.warmup_steps=4", "optim.learning_rate=1e-3")
    with caplog.at_level(logging.WARNING, logger="arbitrary_nst.training"):
        r = training.train(cfg, tmp_path / "w", vgg=vgg, progress=False, export_path="")
    assert r.step == 2
    said = [m for m in caplog.messages if "covers the whole run" in m]
    assert said == ["optim.warmup_steps=4 covers the whole run (train.num_steps=2): the "
                    "learning rate only ramps up, to 0.00025 at the last step (25% of "
                    "optim.learning_rate=0.001); lower optim.warmup_steps for a short run"], said
    for warmup, n, warned in ((2, 2, True), (1, 2, False), (0, 1, False), (5, 0, False)):
        caplog.clear()
        o = smoke(f"optim.warmup_steps={warmup}").optim
        with caplog.at_level(logging.WARNING, logger="arbitrary_nst.training"):
            training._warn_unfinished_warmup(o, n, training.make_optimizer(o, n)[1])
        assert bool(caplog.messages) == warned, (warmup, n)


def test_sgd_momentum_and_adam_b2_reach_the_optimizer():
    """Two updates of SGD with momentum and of Adam with a non-default b2, against the update
    rules written out in float64 (gradients 1 then 3, constant learning rate)."""
    import jax.numpy as jnp

    grads = [1.0, 3.0]

    def updates(*overrides):
        tx, _ = training.make_optimizer(smoke("optim.schedule='constant'", "optim.warmup_steps=0",
                                              "optim.learning_rate=0.1", *overrides).optim, 10)
        params = {"w": jnp.float32(0.0)}
        state = tx.init(params)
        out = []
        for g in grads:
            u, state = tx.update({"w": jnp.float32(g)}, state, params)
            out.append(float(u["w"]))
        return out

    assert updates("optim.optimizer='sgd'", "optim.momentum=0.5") == pytest.approx(
        [-0.1 * 1.0, -0.1 * (3.0 + 0.5 * 1.0)], rel=1e-6)
    b1, b2, eps = 0.9, 0.5, 1e-8
    m = v = 0.0
    want = []
    for t, g in enumerate(grads, start=1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        want.append(-0.1 * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps))
    assert updates("optim.optimizer='adam'", "optim.b2=0.5") == pytest.approx(want, rel=1e-5)


class _FixedClock:
    def __init__(self, now):
        self.now = now

    def perf_counter(self):
        return self.now


def _plan(monkeypatch, *, budget, t_first, now, step, start=0, num_steps=1000):
    """``_plan_time_budget`` with its clock and the step compilation replaced."""
    import jax.numpy as jnp

    built = {}

    def fake_step(graphdef, loss_cfg, tx, schedule, mesh, **kw):
        built["schedule"] = schedule
        return "step_fn"

    monkeypatch.setattr(training, "time", _FixedClock(now))
    monkeypatch.setattr(training, "make_train_step", fake_step)
    monkeypatch.setattr(training, "step_cache_key", lambda *a: None)
    cfg = smoke(f"train.num_steps={num_steps}", "optim.schedule='linear'",
                "optim.warmup_steps=0", "optim.end_learning_rate_factor=0.0")
    planned, fn = training._plan_time_budget(cfg, jnp.zeros(()), step, num_steps, budget,
                                             0.0, t_first, None, None, None, None, start=start)
    assert fn == "step_fn" and cfg.train.num_steps == planned
    return planned, built["schedule"]


def test_time_budget_plan_is_the_documented_arithmetic(monkeypatch):
    """rate = (steps done - 1) / (now - end of the first step); the steps that fit in
    budget - elapsed - compile time - min(10, 0.1 budget); never more than configured, never
    fewer than done; the schedule is rebuilt for that length. Numbers by hand."""
    # 50 s budget, first step (compile) ends at 4 s, step 5 at 9 s: 0.8 steps/s;
    # left = 50 - 9 - 4 - min(10, 5) = 32 s -> 5 + int(25.6) = 30 steps
    planned, schedule = _plan(monkeypatch, budget=50.0, t_first=4.0, now=9.0, step=5)
    assert planned == 30
    assert float(schedule(0)) == pytest.approx(1e-3) and float(schedule(30)) == 0.0
    assert float(schedule(15)) == pytest.approx(0.5e-3, rel=1e-5)  # decays over 30 steps
    # a resumed run (start 3): its own 5 steps are measured the same way
    assert _plan(monkeypatch, budget=50.0, t_first=4.0, now=9.0, step=8, start=3)[0] == 33
    # 200 s budget: the reserve is capped at 10 s: 4 / 10 s = 0.4; left = 200-20-10-10 = 160
    assert _plan(monkeypatch, budget=200.0, t_first=10.0, now=20.0, step=5)[0] == 5 + 64
    # never more than configured, never fewer than the steps already run
    assert _plan(monkeypatch, budget=50.0, t_first=4.0, now=9.0, step=5, num_steps=20)[0] == 20
    assert _plan(monkeypatch, budget=10.0, t_first=4.0, now=9.0, step=5)[0] == 5


def test_scalars_go_to_their_tensorboard_tags():
    class Writer:
        def __init__(self):
            self.scalars, self.flushed = {}, False

        def add_scalar(self, tag, value, step):
            assert tag not in self.scalars
            self.scalars[tag] = (value, step)

        def flush(self):
            self.flushed = True

    w = Writer()
    avg = {"loss": 1.5, "content": 2.0, "style": float("nan"), "tv": float("inf"),
           "relu2_2": 0.25, "grad_norm": 3.0, "learning_rate": 1e-3, "steps_per_sec": 2.5,
           "step": 7}
    training._write_scalars(w, avg, 7, 4)
    assert w.flushed and w.scalars == {
        "loss/total": (1.5, 7), "loss/content": (2.0, 7), "layers/relu2_2": (0.25, 7),
        "train/grad_norm": (3.0, 7), "train/learning_rate": (1e-3, 7),
        "perf/steps_per_sec": (2.5, 7), "perf/images_per_sec": (10.0, 7)}  # 2.5 x batch 4


class _FakeManager:
    def __init__(self, steps):
        self.steps = steps

    def wait_until_finished(self):
        pass

    def all_steps(self):
        return list(self.steps)


def test_divergence_messages_name_the_right_checkpoints(tmp_path):
    ck = tmp_path / training.CHECKPOINT_DIR

    def message(bad, host, steps, start=0, same_setup=True):
        with pytest.raises(training.TrainingDiverged) as e:
            training._raise_diverged(bad, host, _FakeManager(steps), tmp_path, start, same_setup)
        return str(e.value)

    nan = {"loss": float("nan"), "content": 1.0, "grad_norm": float("nan")}
    # a fresh run diverging at the step of its last checkpoint: that one may be the cause
    msg = message(8, [nan], [4, 8])
    assert msg.startswith("non-finite loss, gradient or weights at step 9 (loss=nan, "
                          "content=1, grad_norm=nan); training stopped, the last checkpoint is "
                          f"step 8 in {ck} (if a resume fails at its first step, its weights are "
                          f"the cause: delete {ck / '8'} to resume from step 4)")
    assert message(6, [], []).startswith("non-finite loss, gradient or weights at step 7; "
                                         "training stopped, no checkpoint was saved yet")
    # resumed at 8 and failing at once: with the same setup its weights are blamed ...
    msg = message(8, [nan], [4, 8], start=8)
    assert f"the weights of checkpoint 8 give a non-finite loss at once: delete {ck / '8'} to " \
           "resume from step 4" in msg
    assert "the weights of checkpoint 8" in message(8, [nan], [8], start=8) and \
        "resume from the start" in message(8, [nan], [8], start=8)
    # ... unless only the update overflowed (finite loss and gradient) or the setup changed
    finite = {"loss": 1.0, "grad_norm": 2.0}
    assert "the first update from checkpoint 8 gave non-finite weights" in \
        message(8, [finite, nan], [4, 8], start=8)
    msg = message(8, [nan], [4, 8], start=8, same_setup=False)
    assert "likely cause" in msg and "delete" not in msg
    # what the blame depends on: loss, data, model and the compute dtype, not the optimizer
    cfg = training._to_plain(smoke())
    other_dtype = json.loads(json.dumps(cfg))
    other_dtype["train"]["dtype"] = "bfloat16"
    other_lr = json.loads(json.dumps(cfg))
    other_lr["optim"]["learning_rate"] = 0.5
    setup = training._divergence_setup
    assert setup({"config": cfg}) != setup({"config": other_dtype})
    assert setup({"config": cfg}) == setup({"config": other_lr})


def test_sample_grid_layout(monkeypatch):
    """Top row the styles (from column 1), left column the contents (from row 1), cell
    (i + 1, j + 1) content i in style j, white padding."""
    s, pad = 3, 4
    contents = np.stack([np.full((s, s, 3), 0.1 * (i + 1), np.float32) for i in range(2)])
    styles = np.stack([np.full((s, s, 3), 0.5 + 0.1 * j, np.float32) for j in range(3)])
    out = np.array([[np.full((s, s, 3), 0.01 * (10 * i + j + 1), np.float32) for j in range(3)]
                    for i in range(2)])
    monkeypatch.setattr(training, "_stylize_all", lambda model, c, st: out)
    grid = training.sample_grid(None, contents, styles, pad=pad)
    assert grid.shape == (3 * (s + pad) + pad, 4 * (s + pad) + pad, 3)

    def cell(r, c):
        y, x = pad + r * (s + pad), pad + c * (s + pad)
        return grid[y:y + s, x:x + s]

    want = np.ones_like(grid)
    for r in range(3):
        for c in range(4):
            y, x = pad + r * (s + pad), pad + c * (s + pad)
            if r == 0 and c > 0:
                want[y:y + s, x:x + s] = styles[c - 1]
            elif c == 0 and r > 0:
                want[y:y + s, x:x + s] = contents[r - 1]
            elif r > 0:
                want[y:y + s, x:x + s] = out[r - 1, c - 1]
    np.testing.assert_array_equal(grid, want)
    assert (cell(0, 0) == 1).all()  # the corner stays white


def test_training_option_bounds_are_inclusive_where_documented():
    """Each range's edge: the documented bound is accepted, the value just past it refused with
    the field's one-line message."""
    ok = ("train.num_steps=0", "train.checkpoint_every=0", "train.keep_checkpoints=1",
          "train.sample_every=0", "train.time_budget_s=0", "train.plan_after_steps=2",
          "train.sample_size=32", "train.sample_size=2048", "optim.warmup_steps=0",
          "optim.grad_clip_norm=0.0", "optim.end_learning_rate_factor=0.0",
          "optim.end_learning_rate_factor=1.0", "optim.b1=0.0", "optim.b2=0.0",
          "optim.momentum=0.0", "optim.learning_rate=1e-30", "optim.eps=1e-30")
    for good in ok:
        training.validate_config(smoke(good))
    bad = {"train.keep_checkpoints=0": ("train.keep_checkpoints", ">= 1", "0"),
           "train.plan_after_steps=1": ("train.plan_after_steps", ">= 2", "1"),
           "train.sample_size=2049": ("train.sample_size", "in 32..2048 (the VGG needs >= 32 px)",
                                      "2049"),
           "train.sample_size=31": ("train.sample_size", "in 32..2048 (the VGG needs >= 32 px)",
                                    "31"),
           "optim.learning_rate=0.0": ("optim.learning_rate", "a finite float32 number > 0",
                                       "0.0"),
           "optim.b1=1.0": ("optim.b1", "in [0, 1)", "1.0"),
           "optim.b2=1.0": ("optim.b2", "in [0, 1)", "1.0"),
           "optim.momentum=1.0": ("optim.momentum", "in [0, 1)", "1.0"),
           "optim.end_learning_rate_factor=1.01": ("optim.end_learning_rate_factor",
                                                   "in [0, 1]", "1.01"),
           "train.num_steps=-1": ("train.num_steps", ">= 0", "-1"),
           "train.checkpoint_every=-1": ("train.checkpoint_every", ">= 0 (0: only at exit)",
                                         "-1"),
           "optim.grad_clip_norm=-1.0": ("optim.grad_clip_norm", ">= 0 (0: off)", "-1.0")}
    for override, (field, must, got) in bad.items():
        with pytest.raises(ConfigError) as e:
            training.validate_config(smoke(override))
        assert str(e.value) == f"{field} must be {must}, got {got}", override


def test_resume_metadata_checks_field_by_field(tmp_path, caplog):
    """What a resume refuses (another model, batch size, seed or optimizer), what it returns to
    be said (changed optim/loss values, the compute dtype) and which data changes it warns of
    (not the loader-only ones; not the folder fields of a synthetic/npz source, but those of a
    tfds: source, which reads style_dirs and the weights; not a max_pixels missing from an
    older checkpoint at its default)."""
    def meta(*overrides):
        cfg = training._to_plain(smoke(*overrides))
        return {"model": {"width": cfg["model"]["width"]}, "batch_size": cfg["train"]["batch_size"],
                "seed": cfg["seed"], "data": cfg["data"], "config": cfg}

    base = meta()
    for key, changed in (("seed", meta("seed=5")), ("batch_size", meta("train.batch_size=8")),
                         ("model", meta("model.width=0.5"))):
        with pytest.raises(ConfigError, match=f"trained with a different {key} "):
            training._check_resume_meta(base, changed, tmp_path)
    with pytest.raises(ConfigError) as e:  # the model's differing keys named, not two dicts
        training._check_resume_meta({**base, "model": {"width": 0.25, "palette": 0.0, "k": [1]}},
                                    {**base, "model": {"width": 0.5, "palette": 0.0, "k": (1,)}},
                                    tmp_path)
    assert str(e.value) == (f"{tmp_path}: its checkpoints were trained with a different model "
                            "(width 0.25 vs 0.5); use a new --workdir or the original config")
    with pytest.raises(ConfigError) as e:  # a palette is not a weight: a new run may start here
        training._check_resume_meta({**base, "model": {"width": 0.25, "palette": 0.0}},
                                    {**base, "model": {"width": 0.25, "palette": 0.5}}, tmp_path)
    assert str(e.value).endswith("(palette 0.0 vs 0.5); to train on with another palette, start "
                                 f"a new --workdir with --set train.init_from={tmp_path}")
    with pytest.raises(ConfigError, match="optim.optimizer='adam', not 'sgd'"):
        training._check_resume_meta(base, meta("optim.optimizer='sgd'"), tmp_path)
    said = training._check_resume_meta(base, meta("optim.learning_rate=5e-4",
                                                  "loss.style_weight=3.0",
                                                  "train.dtype='bfloat16'"), tmp_path)
    assert said == ["optim.learning_rate", "loss.style_weight", "train.dtype"]
    with caplog.at_level(logging.WARNING):
        assert training._check_resume_meta(base, meta("data.num_workers=3", "data.prefetch=2",
                                                      "data.content_dirs=('elsewhere',)"),
                                           tmp_path) == []
    assert caplog.text == ""  # loader settings, and folders a synthetic source does not read
    with caplog.at_level(logging.WARNING):
        training._check_resume_meta(base, meta("data.augment_strength=0.5"), tmp_path)
    assert "the data config differs from the checkpoint's (augment_strength)" in caplog.text
    caplog.clear()
    folder = ("data.source='folder'", "data.content_dirs=('a',)", "data.style_dirs=('b',)")
    old = meta(*folder)
    del old["data"]["max_pixels"]  # a checkpoint from before the field
    with caplog.at_level(logging.WARNING):
        training._check_resume_meta(old, meta(*folder), tmp_path)
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING):  # a folder source reads its folders
        training._check_resume_meta(meta(*folder), meta(*folder, "data.max_pixels=1000"),
                                    tmp_path)
    assert "(max_pixels)" in caplog.text
    caplog.clear()
    tfds = ("data.source='tfds:coco/2017'", "data.style_dirs=('p', 'q')")
    with caplog.at_level(logging.WARNING):  # (tfds: skipped them: changed weights were silent)
        training._check_resume_meta(meta(*tfds, "data.style_dir_weights=(1.0, 1.0)"),
                                    meta(*tfds, "data.style_dir_weights=(1.0, 5.0)"), tmp_path)
    assert "(style_dir_weights)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # an npz: file holds its images: folders unused
        training._check_resume_meta(meta("data.source='npz:a.npz'"),
                                    meta("data.source='npz:a.npz'", *tfds[1:]), tmp_path)
    assert caplog.text == ""


def test_embedding_lr_multiplier_reaches_the_models_nested_parameters():
    """The model's parameters are nested (``predictor/hidden/kernel``): the embedding MLP is
    recognised by its module name, not by the leaf's."""
    import jax.numpy as jnp

    params = {"predictor": {"hidden": {"kernel": jnp.ones(2), "bias": jnp.ones(2)},
                            "bottleneck": {"kernel": jnp.ones(2)},
                            "heads": {"residual1_conv1": {"kernel": jnp.ones(2)}}},
              "transfer": {"conv1": {"kernel": jnp.ones(2)}}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
    tx, _ = training.make_optimizer(smoke("optim.optimizer=sgd", "optim.warmup_steps=0",
                                          "optim.schedule=constant", "optim.learning_rate=0.01",
                                          "optim.embedding_lr_multiplier=5").optim, 10)
    out, _ = tx.update(grads, tx.init(params), params)
    got = {"/".join(str(getattr(k, "key", k)) for k in path): float(v[0])
           for path, v in jax.tree_util.tree_flatten_with_path(out)[0]}
    assert got == pytest.approx({"predictor/hidden/kernel": -0.1, "predictor/hidden/bias": -0.1,
                                 "predictor/bottleneck/kernel": -0.1,
                                 "predictor/heads/residual1_conv1/kernel": -0.02,
                                 "transfer/conv1/kernel": -0.02}, rel=1e-6)


def test_a_folder_override_is_a_list_of_one_and_auto_dtype_follows_the_backend(monkeypatch):
    cfg = smoke("data.content_dirs=photos/", "data.style_dirs=('a', 'b')")
    assert list(cfg.data.content_dirs) == ["photos/"] and list(cfg.data.style_dirs) == ["a", "b"]
    import jax.numpy as jnp

    assert training.compute_dtype("auto") is None  # float32 on the CPU these tests run on
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert training.compute_dtype("auto") == jnp.bfloat16
    assert training.compute_dtype(None) is None and training.compute_dtype("float32") is None


def test_an_unreadable_checkpoint_names_the_latest_earlier_one(tmp_path):
    class Manager(_FakeManager):
        directory = tmp_path / training.CHECKPOINT_DIR

    err = training._unreadable_checkpoint(Manager([2, 4, 6]), 6, ValueError("bad\n  bytes"))
    assert str(err) == (f"{tmp_path / 'checkpoints' / '6'}: cannot restore the checkpoint "
                        f"(ValueError: bad bytes); delete {tmp_path / 'checkpoints' / '6'} to "
                        "resume from step 4")
    assert str(training._unreadable_checkpoint(Manager([2]), 2, OSError("x"))).endswith(
        f"delete {tmp_path / 'checkpoints' / '2'} to start over")


def test_a_second_ctrl_c_aborts_and_a_repeated_sigterm_does_not():
    with training._StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
    with training._StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is not stop._handler  # handlers restored
    # a closed terminal or ssh session (SIGHUP) killed the run: the steps since the last
    # checkpoint were lost; it saves and exports as on SIGTERM
    def ignore(*_):
        pass

    before = signal.signal(signal.SIGHUP, ignore)  # (unhandled, SIGHUP ends the test run)
    try:
        with training._StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            assert stop.signum == signal.SIGHUP
        assert signal.getsignal(signal.SIGHUP) is ignore
    finally:
        signal.signal(signal.SIGHUP, before)


def test_export_dtype_info_and_checkpoint_steps(tmp_path, vgg):
    """train.export_dtype reaches the file; the export's info says the run's steps, config name
    and run id; load_checkpoint_model loads the step it is asked for."""
    from safetensors import safe_open

    cfg = smoke("train.num_steps=2", "train.checkpoint_every=1", "train.keep_checkpoints=2",
                "train.export_dtype='float16'")
    r = training.train(cfg, tmp_path, vgg=vgg, progress=False)
    with safe_open(str(r.export_path), framework="numpy") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {np.dtype(np.float16)}
    info = read_export(r.export_path)[1]["info"]
    run_id = (tmp_path / training.RUN_ID_FILE).read_text().strip()
    assert {k: info[k] for k in ("step", "num_steps", "total_steps", "init_from", "config_name",
                                 "run_id")} == {"step": 2, "num_steps": 2, "total_steps": 2,
                                                "init_from": "", "config_name": "smoke",
                                                "run_id": run_id}
    # the recipe as run (a seed, a --set) is in the export, not only in pruned checkpoints
    assert info["config"] == json.loads(json.dumps(training._to_plain(cfg)))
    assert info["config"]["train"]["export_dtype"] == "float16" and "seed" in info["config"]
    m1, s1 = training.load_checkpoint_model(cfg, tmp_path, step=1, vgg=vgg)
    m2, s2 = training.load_checkpoint_model(cfg, tmp_path, vgg=vgg)
    assert (s1, s2) == (1, 2)
    t1, t2, final = model_tensors(m1), model_tensors(m2), model_tensors(r.model)
    assert all(np.array_equal(t2[k], final[k]) for k in final)
    assert any(not np.array_equal(t1[k], t2[k]) for k in t1)


def test_an_export_without_a_run_id_is_replaced_only_inside_its_workdir(tmp_path, vgg):
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / training.RUN_ID_FILE).write_text("abc\n")
    model = training.build_model(smoke(), vgg)
    inside, outside = wd / "old.safetensors", tmp_path / "old.safetensors"
    for p in (inside, outside):
        export_model(model, p, info={"step": 1})  # (made before run ids)
    cfg = smoke()
    training._check_export_path(inside, cfg, wd)
    with pytest.raises(ConfigError, match="is not an export of the run in"):
        training._check_export_path(outside, cfg, wd)
    mine = tmp_path / "mine.safetensors"
    export_model(model, mine, info={"step": 1, "run_id": "abc"})
    training._check_export_path(mine, cfg, wd)  # this run's id, wherever it is
    export_model(model, inside, info={"step": 1, "run_id": "other"}, overwrite=True)
    with pytest.raises(ConfigError, match="is not an export of the run in"):
        training._check_export_path(inside, cfg, wd)
    with pytest.raises(ConfigError, match="must end in .safetensors"):
        training._check_export_path(tmp_path / "model.onnx", cfg, wd)


# ------------------------------------------------------------------------------------------------
# Mutation-testing gaps: the time budget's overshoot stop, the final step's log line, the
# ``interrupted`` flag, training_objective's batches


class _SetClock:
    """``time`` for the training module: ``perf_counter()`` is whatever the test last set."""

    def __init__(self, now=1000.0):
        self.now = now

    def perf_counter(self):
        return self.now


def test_time_budget_overshoot_stops_past_105_percent_plus_5_s(tmp_path, vgg, monkeypatch,
                                                               caplog):
    """A 200-s budget stops the run (checkpoint, export, as on SIGTERM) once more than
    1.05 * 200 + 5 = 215 s have passed since the loop began: not at 214.9 s, not at exactly
    215 s, at 215.1 s. The clock stands still until step 3, so the plan (after 2 steps) sees
    an unbounded rate and keeps the configured 8 steps."""
    clock = _SetClock(1000.0)
    elapsed = {3: 214.9, 4: 215.0, 5: 215.1}

    def tick(step, state):
        if step in elapsed:
            clock.now = 1000.0 + elapsed[step]

    monkeypatch.setattr(training, "time", clock)
    cfg = smoke("train.num_steps=8", "train.time_budget_s=200", "train.plan_after_steps=2",
                "train.checkpoint_every=0")
    with caplog.at_level(logging.WARNING, logger="arbitrary_nst.training"):
        r = training.train(cfg, tmp_path, vgg=vgg, progress=False, step_callback=tick)
    assert json.loads((tmp_path / "time_budget_plan.json").read_text())["num_steps"] == 8
    assert r.step == 5 and r.interrupted and r.signal is None
    assert [h["step"] for h in r.history] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["5"]
    assert read_export(r.export_path)[1]["info"]["step"] == 5
    warned = [m.getMessage() for m in caplog.records if "exceeded" in m.getMessage()]
    assert warned == ["time budget of 200 s exceeded at step 5/8: stopping"]


def test_the_final_step_is_logged_when_log_every_does_not_divide_num_steps(tmp_path, vgg):
    """log_every=2 over 5 steps logs steps 2, 4 and 5: each line the mean of its own steps'
    metrics (the last one step 5's alone), as a log_every=1 run of the same steps gives them."""
    cfg = ("train.num_steps=5", "train.checkpoint_every=0", "train.sample_every=0")
    every = training.train(smoke(*cfg, "train.log_every=1"), tmp_path / "1", vgg=vgg,
                           progress=False, export_path="")
    loss = {h["step"]: h["loss"] for h in every.history}
    assert sorted(loss) == [1, 2, 3, 4, 5]
    r = training.train(smoke(*cfg, "train.log_every=2"), tmp_path / "2", vgg=vgg,
                       progress=False, export_path="")
    assert r.step == 5 and not r.interrupted
    assert [h["step"] for h in r.history] == [2, 4, 5]
    want = [(loss[1] + loss[2]) / 2, (loss[3] + loss[4]) / 2, loss[5]]
    assert [h["loss"] for h in r.history] == pytest.approx(want, rel=1e-6)


def test_a_signal_at_the_last_step_leaves_the_run_complete_not_interrupted(tmp_path, vgg,
                                                                           caplog):
    """SIGTERM during the last step: the run has done all its steps, so it is not
    ``interrupted``, but the signal is named (it was not: train.py exited 0, and a multi-stage
    script whose user pressed Ctrl-C then went on to its next stage; now 143 as for any stop)."""
    def term_at_4(step, state):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    with caplog.at_level(logging.WARNING, logger="arbitrary_nst.training"):
        r = training.train(smoke("train.num_steps=4", "train.checkpoint_every=0"), tmp_path,
                           vgg=vgg, progress=False, export_path="", step_callback=term_at_4)
    assert r.step == 4 and r.interrupted is False and r.signal == signal.SIGTERM
    assert (f"received SIGTERM: saved a checkpoint at step 4 in {tmp_path}; the run is "
            "complete") in caplog.messages
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    # nothing left to run: the same workdir again is complete too, with nothing logged
    again = training.train(smoke("train.num_steps=4", "train.checkpoint_every=0"), tmp_path,
                           vgg=vgg, progress=False, export_path="")
    assert again.step == 4 and again.interrupted is False and again.history == []


def test_training_objective_is_the_mean_over_every_batch(vgg, monkeypatch):
    """The terms are averaged over all ``num_batches`` batches (loader.batch(0), (1), ...),
    not the first or the last; 1 batch is allowed. A stand-in loss reads the batch's (constant)
    content pixel, so the expected means are by hand: pixels 0, 51, 255 -> 0, 0.2, 1."""
    import jax.numpy as jnp

    pixels = [0, 51, 255, 7]
    asked = []

    class Loader:
        def batch(self, step):
            asked.append(step)
            return {"content": np.full((4, 64, 64, 3), pixels[step], np.uint8),
                    "style": np.full((4, 64, 64, 3), 255 - pixels[step], np.uint8)}

        def close(self):
            pass

    def fake_loss(model, content, style, loss_cfg, *, dtype=None):
        terms = {"loss": jnp.mean(content), "style": jnp.mean(style)}
        return terms["loss"], terms

    monkeypatch.setattr(data, "make_loader", lambda *a, **k: Loader())
    monkeypatch.setattr(training, "batch_loss", fake_loss)
    cfg = smoke()
    model = training.build_model(cfg, vgg)
    three = training.training_objective(cfg, [model], num_batches=3, vgg=vgg)
    assert asked == [0, 1, 2]
    assert three[0]["loss"] == pytest.approx(0.4, abs=1e-6)  # (0 + 0.2 + 1) / 3
    assert three[0]["style"] == pytest.approx(0.6, abs=1e-6)  # (1 + 0.8 + 0) / 3
    asked.clear()
    one = training.training_objective(cfg, [model], num_batches=1, vgg=vgg)
    assert asked == [0] and one[0]["loss"] == 0.0 and one[0]["style"] == pytest.approx(1.0)

    train_cli = _train_script()  # --objective-batches 1 is allowed too
    seen = {}

    def fake_objective(config, models, *, num_batches, seed, progress):
        seen.update(num_batches=num_batches)
        return [{"loss": 2.0, "content": 1.0, "style": 0.75, "tv": 0.25}] * len(models)

    monkeypatch.setattr(training, "training_objective", fake_objective)
    assert train_cli.main(["--config", str(CONFIGS / "smoke.py"), "--objective", "builtin",
                           "--objective-batches", "1"]) == 0
    assert seen == {"num_batches": 1}


def test_sample_grid_shows_what_the_export_gives(vgg):
    """With a palette (configs/builtin.py sets 0.5, the README's fine-tuning recipe) the grid
    showed the raw network's muted colours, not model(c, s), what the export produces."""
    import jax.numpy as jnp

    model = training.build_model(smoke("model.palette=0.5"), vgg)
    rng = np.random.default_rng(0)
    contents = rng.uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    styles = rng.uniform(0, 1, (2, 32, 32, 3)).astype(np.float32) * [1.0, 0.5, 0.2]
    pad = 2
    grid = training.sample_grid(model, contents, styles, pad=pad)
    raw = np.asarray(model.transfer(jnp.asarray(contents[:1]), model.embed(jnp.asarray(styles[1:]))))
    for i in range(2):
        for j in range(2):
            y, x = pad + (i + 1) * (32 + pad), pad + (j + 1) * (32 + pad)
            want = np.asarray(model(jnp.asarray(contents[i:i + 1]), jnp.asarray(styles[j:j + 1])))[0]
            np.testing.assert_allclose(grid[y:y + 32, x:x + 32], want, atol=2e-5)
    y, x = pad + 32 + pad, pad + 2 * (32 + pad)
    assert np.abs(grid[y:y + 32, x:x + 32] - raw[0]).max() > 0.01  # the palette shows


def test_checkpoints_named_by_file_times_are_not_called_other_images(tmp_path, caplog):
    """Dataset names before 2026-12 hashed the files' times and places; a checkpoint that has
    them is not comparable, so a resume says so once at INFO instead of warning that the
    images differ. A checkpoint named by contents is compared as before."""
    from types import SimpleNamespace

    loader = SimpleNamespace(content=SimpleNamespace(name="photos-aaa"),
                             style=SimpleNamespace(name="paint-bbb"))
    now = {"content": ["photos-aaa"], "style": ["paint-bbb"]}
    old = {"content": ["photos-111"], "style": ["paint-222"]}
    with caplog.at_level(logging.INFO, logger=training.log.name):
        meta = {}
        training._note_datasets(loader, meta, {"datasets": old}, tmp_path)
    assert meta == {"datasets": now, "datasets_named_by": "contents"}
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "by their files' times (an older version): not compared" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=training.log.name):
        training._note_datasets(loader, {}, {"datasets": old, "datasets_named_by": "contents"},
                                tmp_path)
        training._note_datasets(loader, {}, {"datasets": now, "datasets_named_by": "contents"},
                                tmp_path)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "the training images differ from the checkpoint's" in caplog.text
    # an npz: file is named by its images (it was "npz-content" whatever it held: another
    # export written to the same path was resumed on without a word)
    from arbitrary_nst import data as data_lib

    def export(seed):
        srcs = {r: data_lib.SyntheticSource(r, 3, seed=seed) for r in ("content", "style")}
        out = tmp_path / "train.npz"
        data_lib.export_arrays({}, out, 3, 3, 32, sources=srcs)
        return SimpleNamespace(**{r: data_lib.NpzSource(out, r) for r in ("content", "style")})

    first, again, other = export(0), export(0), export(1)
    assert first.style.name.startswith("npz-style-")
    assert training._dataset_names(first) == training._dataset_names(again)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=training.log.name):
        named = {"datasets": training._dataset_names(first), "datasets_named_by": "contents"}
        training._note_datasets(again, {}, named, tmp_path)
        training._note_datasets(other, {}, named, tmp_path)
        training._note_datasets(other, {}, {"datasets": {"content": ["npz-content"],
                                                          "style": ["npz-style"]},
                                            "datasets_named_by": "contents"}, tmp_path)
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]
    assert "its npz: file by its role only (an older version)" in caplog.records[1].getMessage()


# ------------------------------------------------------------------------------------------------
# A failed checkpoint write, empty paths, a Ctrl-C at start-up, the folders of killed saves

#: tensorstore's texts of a failed save, as Orbax raised them (measured: a 5 MB tmpfs, and
#: RLIMIT_FSIZE of 1 MB); the failed save is step 4 / 2's, found at the next save (6 / 4)
_ENOSPC_TEXT = (
    'RESOURCE_EXHAUSTED: Error writing "params.transfer_net.residual.residual5_conv1.kernel/'
    '0.0.0.0" in OCDBT database at local file "{d}/4.orbax-checkpoint-tmp/state.orbax-'
    'checkpoint-tmp/ocdbt.process_0/": Failed writing: "{d}/4.orbax-checkpoint-tmp/state.orbax-'
    'checkpoint-tmp/ocdbt.process_0/d/1f4fb6def93310bd0124a2e5ca7d4c71": Failed to write 339476 '
    "bytes to file 8: No space left on device [os_error_code='28']")
_EFBIG_TEXT = (
    'OUT_OF_RANGE: Error writing "opt_state.0.0.count/0" in OCDBT database at local file '
    '"{d}/2.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/": Failed writing: '
    '"{d}/2.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/d/30e6f0830ebd19050'
    "7307b54a4223d6d\": Failed to write 2123410 bytes to file 8: File too large "
    "[os_error_code='27']")


def test_checkpoint_write_errors_name_the_failed_step_and_the_os_reason():
    """It named the save being made (step 6) and cut tensorstore's text at 200 characters,
    before the reason ("No space left on device") was said."""
    d = "/runs/w 1/checkpoints"
    msg = training.checkpoint_write_error
    assert msg(d, 6, ValueError(_ENOSPC_TEXT.format(d=d))) == \
        f"{d}: cannot write the checkpoint of step 4 (No space left on device)"
    assert msg(d, 4, ValueError(_EFBIG_TEXT.format(d=d))) == \
        f"{d}: cannot write the checkpoint of step 2 (File too large)"
    # the folder named differently in the text (a symlinked workdir): the step still found
    assert msg(d, 6, ValueError(_ENOSPC_TEXT.format(d="/elsewhere"))).endswith(
        "of step 4 (No space left on device)")
    # an OSError (a folder made read-only), also as the cause of another error
    denied = PermissionError(13, "Permission denied", f"{d}/8.orbax-checkpoint-tmp")
    assert msg(d, 8, denied) == f"{d}: cannot write the checkpoint of step 8 (Permission denied)"
    try:
        raise RuntimeError("commit failed") from denied
    except RuntimeError as e:
        assert msg(d, 10, e).endswith("step 10 (Permission denied)")
    # anything else: its own text, on one line and cut
    other = msg(d, 12, ValueError("bad\nthing " + "x" * 500))
    assert other.startswith(f"{d}: cannot write the checkpoint of step 12 (ValueError: bad "
                            "thing xxx") and "\n" not in other and len(other) < len(d) + 300


def test_a_full_disk_is_one_line_naming_the_failed_save_and_the_weights_are_exported(tmp_path):
    """A failed asynchronous save (here: a 1 MB file size limit; a full disk is the same text
    with ENOSPC) printed ~800 lines (Orbax's logged tracebacks, tensorstore's "Event loop is
    closed"), named the wrong step, cut the reason off and wrote no export."""
    # train.py run as a script under a 1 MB file size limit (set by the child itself: a
    # preexec_fn would fork this multithreaded process); the checkpoint's data file is ~2 MB,
    # the float16 export ~0.6 MB; SIGXFSZ ignored, so write() fails with EFBIG instead
    limit_and_run = ("import resource, runpy, signal, sys; "
                     "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                     f"resource.setrlimit(resource.RLIMIT_FSIZE, ({1 << 20}, {1 << 20})); "
                     "sys.argv[0] = 'train.py'; runpy.run_path('train.py', run_name='__main__')")
    wd = tmp_path / "wd"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-c", limit_and_run, "--config", str(CONFIGS / "smoke.py"),
         "--workdir", str(wd), "--no-progress", "--set", "train.num_steps=6",
         "--set", "train.checkpoint_every=1", "--set", "train.batch_size=2",
         "--set", "train.export_dtype='float16'"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Event loop is closed" not in r.stderr, \
        r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    ckpt, export = wd / training.CHECKPOINT_DIR, wd / training.EXPORT_NAME
    # (which save fails varies: OCDBT splits a save's ~2.5 MB into files of varying sizes; the
    # failure surfaces at the next save, which stops the run, or at the end)
    m = re.fullmatch(re.escape(f"error: {ckpt}: cannot write the checkpoint of step ") + r"(\d)"
                     + re.escape(" (File too large); the weights of step ") + r"(\d)"
                     + re.escape(f" were exported to {export}"), errors[0] if errors else "")
    assert len(errors) == 1 and m, r.stderr[-3000:]
    failed, exported = int(m[1]), int(m[2])
    assert not (ckpt / m[1]).exists()
    # the failed save's half-written folder is removed before the export (on a full disk it
    # held the space the export needed), not at the next resume
    assert not list(ckpt.glob("*.orbax-checkpoint-tmp*")), sorted(ckpt.iterdir())
    assert exported in (failed, failed + 1)  # (a save that fails at once: the same step)
    assert read_export(export)[1]["info"]["step"] == exported


def test_empty_folder_names_are_refused_not_the_current_folder(tmp_path, capsys, monkeypatch):
    """``--set data.content_dirs=$UNSET`` trained on the current folder's images, and
    ``--workdir ""`` wrote the checkpoints and the export into the current folder."""
    for override in ("data.content_dirs=", "data.style_dirs=['paintings', ' ']"):
        with pytest.raises(ConfigError) as e:
            training.validate_config(smoke(override))
        key = override.split("=")[0]
        assert str(e.value) == f"{key}: an empty folder name " \
            f"({'' if key.endswith('content_dirs') else ' '!r}) - is a shell variable unset?"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"the workdir is an empty folder name \(''\)"):
        training.train(smoke(), "", progress=False)
    train_cli = _train_script()
    for workdir in ("", " "):
        with pytest.raises(SystemExit) as e:
            train_cli.main(["--config", str(CONFIGS / "smoke.py"), "--workdir", workdir])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --workdir is an empty folder name ({workdir!r})") and \
            err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_ctrl_c_while_train_py_imports_jax_is_one_line(tmp_path, monkeypatch, capsys):
    """Importing the training module (JAX) takes seconds: a Ctrl-C then was a 40-line
    traceback."""
    import importlib.abc

    import arbitrary_nst

    class Interrupting(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "arbitrary_nst.training":
                raise KeyboardInterrupt
            return None

    train_cli = _train_script()
    monkeypatch.delitem(sys.modules, "arbitrary_nst.training")
    monkeypatch.delattr(arbitrary_nst, "training")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    try:
        status = train_cli.main(["--config", str(CONFIGS / "smoke.py"),
                                 "--workdir", str(tmp_path / "w")])
    except KeyboardInterrupt:  # (raised here, pytest would stop the whole session)
        pytest.fail("the Ctrl-C escaped train.py's main(): a traceback")
    assert status == 130 and capsys.readouterr().err == "error: interrupted\n"


def test_train_py_drops_only_orbax_save_failure_logs(monkeypatch):
    """train.py silences what Orbax logs on the way to a failed save (said again in its one
    error line), but an Orbax error it does not raise ("Failed to remove checkpoint": the only
    word of old checkpoints piling up) keeps its line, without the traceback; a record of
    another library keeps its traceback."""
    import logging

    train_cli = _train_script()

    def record(msg, in_orbax=True):
        code = compile("raise OSError(16, 'Device or resource busy')",
                       "/site-packages/orbax/checkpoint/x.py" if in_orbax else "/lib/other.py",
                       "exec")
        try:
            exec(code, {})
        except OSError:
            return logging.LogRecord("absl", logging.ERROR, "absl.py", 1, msg, (),
                                     sys.exc_info())

    keep = train_cli._not_an_orbax_traceback
    saved = record("[process=0] Failed to run 4 Handler Commit operations or the Commit ...")
    assert keep(saved) is False
    removal = record("Failed to remove checkpoint (%s)")
    assert keep(removal) is True and removal.exc_info is None
    other = record("Failed to run 4 Handler Commit operations", in_orbax=False)
    assert keep(other) is True and other.exc_info is not None


def test_the_folders_of_a_save_killed_midway_are_removed_when_the_run_resumes(tmp_path, vgg):
    """A SIGKILL during a save leaves ``N.orbax-checkpoint-tmp`` (a checkpoint's size): it
    stayed forever unless a later save used step N. The training run (which holds the workdir
    lock) removes it; a reader of the checkpoints does not (a running training may be writing
    it)."""
    wd = tmp_path / "wd"
    cfg = ("train.sample_every=0", "train.checkpoint_every=2", "train.keep_checkpoints=3")
    training.train(smoke("train.num_steps=4", *cfg), wd, vgg=vgg, progress=False,
                   export_path="")
    ckpt = wd / training.CHECKPOINT_DIR
    half = ckpt / "13.orbax-checkpoint-tmp"
    shutil.copytree(ckpt / "4", half)
    for marker in ("commit_success.txt", "_CHECKPOINT_METADATA"):
        (half / marker).unlink(missing_ok=True)
    _, step = training.load_checkpoint_model(smoke(*cfg), wd, vgg=vgg)
    assert step == 4 and half.is_dir()  # (a reader leaves it)
    r = training.train(smoke("train.num_steps=6", *cfg), wd, vgg=vgg, progress=False,
                       export_path="")
    assert r.step == 6 and [h["step"] for h in r.history] == [5, 6]  # resumed from step 4
    assert not list(ckpt.glob("*.orbax-checkpoint-tmp"))
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [2, 4, 6]


def test_a_blank_workdir_is_refused_by_the_api_too(tmp_path, monkeypatch):
    """``train(config, " ")`` (a blank name, not only ``""``) is refused before the workdir is
    touched, as the command line refuses ``--workdir " "``."""
    def reached(*a, **k):
        raise RuntimeError("the workdir was prepared")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(training, "_prepare_workdir", reached)
    for blank in (" ", "\t"):
        with pytest.raises(ConfigError, match=r"the workdir is an empty folder name \("):
            training.train(smoke(), blank, progress=False)
    assert not list(tmp_path.iterdir())


def test_checkpoint_write_errors_find_the_os_reason_down_the_chain_of_errors():
    """The operating system's reason is that of the first OSError with one, whether it caused
    the save's error (``from``) or was being handled when it was raised (the context), past an
    OSError that has none."""
    d = "/runs/w/checkpoints"
    denied = PermissionError(13, "Permission denied", f"{d}/8.orbax-checkpoint-tmp")
    try:
        try:
            raise denied
        except OSError:
            raise RuntimeError("commit failed")  # noqa: B904 - (the context, no cause)
    except RuntimeError as e:
        assert training.checkpoint_write_error(d, 10, e) == \
            f"{d}: cannot write the checkpoint of step 10 (Permission denied)"
    wrapped = OSError("write failed")  # (no errno, no strerror)
    wrapped.__cause__ = denied
    assert training.checkpoint_write_error(d, 12, wrapped).endswith("step 12 (Permission denied)")


def test_an_empty_folder_name_given_as_a_string_not_a_list_is_refused():
    """A config file may give ``data.content_dirs`` as one string rather than a list: ``""``
    (an unset variable) is refused as in a list, not taken as no folder at all."""
    for key in ("content_dirs", "style_dirs"):
        cfg = smoke()
        with cfg.ignore_type():
            cfg.data[key] = ""
        with pytest.raises(ConfigError, match=rf"^data\.{key}: an empty folder name \(''\)"):
            training.validate_config(cfg)


def test_the_step_bar_leaves_compiling_out_of_its_rate(tmp_path, vgg, monkeypatch):
    """tqdm's smoothed rate began with the first step, compilation included (also after every
    resume): its ETA stayed far too long for dozens of steps. The first step is counted
    without timing it, as the logged rates leave it out."""
    import io
    import time

    from tqdm import tqdm

    bars, times, rates = [], [], []

    def recording_bar(**kw):
        bars.append(tqdm(file=io.StringIO(), **{**kw, "mininterval": 0}))
        times.append(time.perf_counter())  # (the bar's start)
        return bars[-1]

    real = training._default_loader_factory

    class SlowFirstBatch:  # (a first step that takes 3 s more, as a long compilation does)
        def __init__(self, loader):
            self.loader = loader

        def __iter__(self):
            for i, b in enumerate(self.loader):
                if i == 0:
                    time.sleep(3)
                yield b

        def __getattr__(self, name):
            return getattr(self.loader, name)

    monkeypatch.setattr(training, "progress_bar", recording_bar)
    training.train(smoke("train.num_steps=7"), tmp_path / "w", vgg=vgg, progress=True,
                   loader_factory=lambda cfg, **kw: SlowFirstBatch(real(cfg, **kw)),
                   step_callback=lambda step, state: (
                       times.append(time.perf_counter()),
                       rates.append((bars[-1].format_dict["rate"],
                                     bars[-1].format_dict["elapsed"]))))
    # times: the bar's start, then the end of each step (read before the bar's update of
    # that step: the bar is closed after the last)
    step_s = (times[-1] - times[2]) / (len(times) - 3)
    rate, elapsed = rates[-1]
    assert bars[-1].n == 7 and rate is not None and rate > 0.5 / step_s, (rates, step_s)
    # the bar's clock leaves the first step (3 s + compiling) out
    assert elapsed < times[-1] - times[0] - 2.5, (elapsed, times[-1] - times[0])


def test_config_errors_name_the_field_as_it_is_set():
    """`--set model.style_taps=('relu9_9',)` said "unknown VGG16 tap 'relu9_9'" without the
    field, and a loss layer relu9_9 passed validate_config (so --print-config) and stopped
    training only later."""
    for override, want in (('model.style_taps=("relu9_9",)',
                            "model.style_taps: unknown VGG16 tap 'relu9_9'"),
                           ('loss.style_layers={"relu9_9": 1.0}',
                            "loss.style_layers: unknown VGG16 tap 'relu9_9'"),
                           ('loss.content_layers={"relu9_9": 1.0}',
                            "loss.content_layers: unknown VGG16 tap 'relu9_9'"),
                           ("loss.tv_weight=-1", "loss.tv_weight must be a finite number >= 0"),
                           ("model.palette=2", "model.palette must be in [0, 1]")):
        with pytest.raises(ConfigError) as e:
            training.validate_config(smoke(override))
        assert str(e.value).startswith(want), (override, str(e.value))
