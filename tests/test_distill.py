"""Tests of arbitrary_nst.distill (refined embeddings as targets for the predictor's MLP).

A random width-0.25 model (as in test_inference) and small generated images: the oracle must
lower the model's own loss and start from exactly the predicted embedding, the fit must recover
a known MLP and touch nothing but the MLP, and the command must be resumable and refuse to mix
oracles made with different settings.
"""
from __future__ import annotations

import io
import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from arbitrary_nst import distill, export, images
from arbitrary_nst.data import SyntheticSource
from arbitrary_nst.errors import ConfigError

from test_inference import make_model_file, smooth_image

SIZE = 32  # style working size and content crop in these tests (the VGG minimum): fast


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, vgg):
    return make_model_file(tmp_path_factory.mktemp("model") / "model.safetensors", vgg, seed=5)


@pytest.fixture
def model(model_path, vgg):
    return export.load_exported(model_path, vgg=vgg)


def _img(seed):
    return smooth_image(SIZE, SIZE, seed).astype(np.float32) / 255


def test_oracle_starts_at_the_prediction_and_lowers_the_loss(model):
    styles = np.stack([_img(1), _img(2)])
    contents = np.stack([np.stack([_img(3), _img(4)]), np.stack([_img(5), _img(6)])])  # K = 2
    r = distill.oracle_batch(model, styles, contents, steps=4)
    assert r["x"].shape == (2, model.predictor.feature_dim)
    np.testing.assert_allclose(r["e0"], np.asarray(model.embed(jnp.asarray(styles))),
                               rtol=1e-5, atol=1e-5)
    assert r["e_star"].shape == r["e0"].shape and np.all(np.isfinite(r["e_star"]))
    assert np.all(r["loss"][:, 1] < r["loss"][:, 0])  # every style's loss went down
    assert np.all(np.linalg.norm(r["e_star"] - r["e0"], axis=-1) > 1e-3)
    with pytest.raises(ConfigError, match="contents must be"):
        distill.oracle_batch(model, styles, contents[:1], steps=1)


def test_oracle_target_is_the_mean_over_contents(model):
    """K contents per style: the target is the mean of the K refinements, each equal to
    refining that content alone."""
    styles = np.stack([_img(1)])
    pair = np.stack([_img(3), _img(4)])[None]
    both = distill.oracle_batch(model, styles, pair, steps=3)["e_star"]
    one = [distill.oracle_batch(model, styles, pair[:, k:k + 1], steps=3)["e_star"]
           for k in range(2)]
    np.testing.assert_allclose(both, (one[0] + one[1]) / 2, rtol=1e-4, atol=1e-4)


def test_fit_recovers_a_known_mlp_and_changes_nothing_else(model, model_path, vgg):
    """Targets made by a copy of the MLP with a shifted output bias (a consistent offset, like
    the one between predicted and refined embeddings): the fit must explain most of the
    held-out error, and only the MLP's tensors may change."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, model.predictor.feature_dim)).astype(np.float32)
    teacher = distill._mlp_params(model)
    teacher["bottleneck"]["bias"] = teacher["bottleneck"]["bias"] + rng.normal(
        size=teacher["bottleneck"]["bias"].shape).astype(np.float32)
    target = np.asarray(distill._mlp_apply(teacher, jnp.asarray(x)))
    before = export.model_tensors(model)
    rep = distill.fit_embedding_mlp(model, x, target, steps=400, learning_rate=1e-3,
                                    eval_every=20)
    assert rep["n_val"] == 20 and rep["n_train"] == 180
    assert rep["explained"] > 0.5, rep
    assert rep["val_mse"] < rep["start_val_mse"]
    after = export.model_tensors(model)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and all(k.startswith(("predictor/hidden/", "predictor/bottleneck/"))
                           for k in changed), changed
    # the model's own embed() now gives the fitted MLP's output
    fitted = distill._mlp_params(model)
    np.testing.assert_allclose(np.asarray(model.predictor.embed_features(
        {t: f for t, f in model.predictor.style_features(jnp.asarray(_img(1)[None])).items()})),
        np.asarray(distill._mlp_apply(fitted, jnp.asarray(distill.style_statistics(
            model, _img(1)[None])))), rtol=1e-5, atol=1e-5)


def test_fit_keeps_the_start_when_nothing_helps(model):
    """Targets equal to the current predictions: the held-out error starts at 0, so the best
    weights are the starting ones (best step 0) and the model is unchanged."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, model.predictor.feature_dim)).astype(np.float32)
    target = np.asarray(distill._mlp_apply(distill._mlp_params(model), jnp.asarray(x)))
    before = export.model_tensors(model)
    rep = distill.fit_embedding_mlp(model, x, target, steps=50, eval_every=10)
    assert rep["best_step"] == 0 and rep["explained"] == 0.0
    after = export.model_tensors(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    with pytest.raises(ConfigError, match="fit:"):
        distill.fit_embedding_mlp(model, x[:3], target[:3])


def test_fit_keeps_the_best_weights_not_the_last(model):
    """A linear map of the statistics plus noise: the held-out error falls, then rises as the
    MLP fits the noise, and the model keeps the weights of the best held-out error (the test
    above cannot tell: there nothing moves)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, model.predictor.feature_dim)).astype(np.float32)
    start = np.asarray(distill._mlp_apply(distill._mlp_params(model), jnp.asarray(x)))
    a = rng.normal(size=(x.shape[1], start.shape[1])) / np.sqrt(x.shape[1])
    target = (start + 3 * (x @ a) + 3 * rng.normal(size=start.shape)).astype(np.float32)
    rep = distill.fit_embedding_mlp(model, x, target, steps=300, learning_rate=1e-3,
                                    eval_every=10, val_fraction=0.25)
    assert 0 < rep["best_step"] < 300 and rep["curve"][-1][1] > rep["val_mse"], rep["curve"]
    out = np.asarray(distill._mlp_apply(distill._mlp_params(model), jnp.asarray(x)))
    all_mse = float(np.mean(np.sum((out - target) ** 2, -1)))
    kept = (rep["n_train"] * rep["train_mse"] + rep["n_val"] * rep["val_mse"]) / len(x)
    np.testing.assert_allclose(all_mse, kept, rtol=1e-4)


def _small_command(out, model_path, *, num_styles: int, target: str = "embedding") -> list[str]:
    """Arguments of a seconds-long distill run on synthetic images (batches of 4 styles)."""
    return ["--out", str(out), "--model", str(model_path), "--set", "data.source=synthetic",
            "--set", "data.synthetic_count=16", "--num-styles", str(num_styles), "--batch", "4",
            "--steps", "2", "--style-size", str(SIZE), "--content-crop", str(SIZE),
            "--content-short", "40", "48", "--no-progress", "--target", target,
            *(["--fit-steps", "20"] if target == "embedding" else [])]


def test_command_errors_and_ctrl_c_leave_no_empty_out_folder_and_say_what_is_kept(
        tmp_path, model_path, capsys, monkeypatch):
    """An early error (training folders missing) left an empty --out folder; Ctrl-C was a
    traceback through the refinement and did not say that finished oracle chunks are kept."""
    out = tmp_path / "new" / "d"
    args = _small_command(out, model_path, num_styles=4)
    assert distill.main(args[:4] + ["--set", "data.source=folder", "--set",
                                    f"data.style_dirs=['{tmp_path / 'nope'}']"]) == 1
    assert "no such" in capsys.readouterr().err and not (tmp_path / "new").exists()

    def interrupted(model, sources, out_dir, **kw):
        out_dir.mkdir(parents=True)
        (out_dir / "chunk_00000.npz").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(distill, "collect_oracle", interrupted)
    assert distill.main(args) == 130
    assert capsys.readouterr().err == (f"error: interrupted; the oracle chunks in "
                                       f"{out / 'oracle'} are kept: the same command goes on "
                                       "from them\n")


def test_too_few_training_styles_are_refused_before_the_oracle(tmp_path, model_path, capsys,
                                                               monkeypatch):
    args = [a.replace("synthetic_count=16", "synthetic_count=4")  # (one --set per key)
            for a in _small_command(tmp_path / "d", model_path, num_styles=8,
                                    target="conditioning")]
    monkeypatch.setattr(distill, "collect_oracle", lambda *a, **k: pytest.fail("oracle ran"))
    assert distill.main(args) == 1
    assert "the training styles hold 4 images; --target conditioning needs >= 5" in \
        capsys.readouterr().err
    for num_styles, target, need in ((4, "conditioning", 5), (3, "embedding", 4)):
        argv = _small_command(tmp_path / "d", model_path, num_styles=num_styles, target=target)
        assert distill.main(argv) == 1
        assert f"--num-styles must be >= {need} for --target {target}" in \
            capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "-5", "0"])
def test_a_bad_fit_learning_rate_is_refused_before_any_work(tmp_path, model_path, capsys, value):
    """--fit-learning-rate nan ran, fitted nothing and wrote the start model as 'distilled'."""
    args = _small_command(tmp_path / "d", model_path, num_styles=4)
    assert distill.main([*args, "--fit-learning-rate", value]) == 1
    assert "--fit-learning-rate must be finite and > 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_command_resumes_and_refuses_other_settings(tmp_path, model_path, capsys, vgg):
    out = tmp_path / "d"
    args = _small_command(out, model_path, num_styles=6)
    assert distill.main(args) == 0
    rep = json.loads((out / "distill.json").read_text())
    assert rep["oracle_styles"] == 6 and rep["oracle_loss_after"] < rep["oracle_loss_before"]
    chunks = sorted((out / "oracle").glob("chunk_*.npz"))
    assert len(chunks) == 2  # 4 + 2 styles
    m = export.load_exported(out / "model.safetensors")
    assert m.width == 0.25
    # resume: the chunks are reused as they are (same bytes, same oracle)
    stamp = [c.stat().st_mtime_ns for c in chunks]
    assert distill.main(args) == 0
    assert [c.stat().st_mtime_ns for c in chunks] == stamp
    assert json.loads((out / "distill.json").read_text())["oracle_loss_after"] == \
        rep["oracle_loss_after"]
    # --model takes a training workdir too (its model.safetensors: the same start model)
    assert distill.main([str(model_path.parent) if a == str(model_path) else a
                         for a in args]) == 0
    assert [c.stat().st_mtime_ns for c in chunks] == stamp
    # another start model in the same --out: refused (its oracle was reused as this one's)
    other = make_model_file(tmp_path / "other.safetensors", vgg, seed=6)
    capsys.readouterr()
    assert distill.main([str(other) if a == str(model_path) else a for a in args]) == 1
    assert "holds an oracle made with" in capsys.readouterr().err
    # --model = the model this run writes: refused, the input is not replaced
    own = (out / "model.safetensors").read_bytes()
    assert distill.main([str(out / "model.safetensors") if a == str(model_path) else a
                         for a in args]) == 1
    assert "would replace --model" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == own
    # other oracle settings in the same folder: one-line error, exit 1
    capsys.readouterr()
    assert distill.main([a if a != "2" else "3" for a in args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds an oracle made with" in err


def test_command_remakes_chunks_of_other_styles_and_damaged_ones(tmp_path, model_path, capsys):
    """Another --num-styles in the same --out reused the last chunk as it was (6 then 8 styles:
    the oracle had 6); a damaged chunk or oracle.json was a traceback; a bad --out too (after
    the data was prepared)."""
    out = tmp_path / "d"
    assert distill.main(_small_command(out, model_path, num_styles=6)) == 0
    assert distill.main(_small_command(out, model_path, num_styles=8)) == 0
    assert "chunk_00001.npz: holds other styles" in capsys.readouterr().err
    assert json.loads((out / "distill.json").read_text())["oracle_styles"] == 8
    with np.load(out / "oracle" / "chunk_00001.npz") as z:
        assert len(z["index"]) == 4
    first = (out / "oracle" / "chunk_00000.npz").read_bytes()
    (out / "oracle" / "chunk_00001.npz").write_bytes(b"PK\x03\x04 truncated")
    assert distill.main(_small_command(out, model_path, num_styles=8)) == 0
    assert "chunk_00001.npz: unreadable" in capsys.readouterr().err
    assert (out / "oracle" / "chunk_00000.npz").read_bytes() == first  # reused
    (out / "oracle" / "oracle.json").write_text("")
    assert distill.main(_small_command(out, model_path, num_styles=8)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "oracle.json: unreadable" in err and err.count("\n") == 1
    (tmp_path / "file").write_text("x")
    assert distill.main(_small_command(tmp_path / "file", model_path, num_styles=4)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a directory" in err and err.count("\n") == 1


def test_command_replaces_only_its_own_model_and_keeps_the_lineage(tmp_path, model_path,
                                                                   capsys, monkeypatch):
    """--out's model.safetensors was replaced whatever it was (the built-in model, a training
    workdir's export); the distilled export dropped the start's step count (a run started from
    it counted from 0)."""
    from arbitrary_nst import inference

    start = tmp_path / "start.safetensors"
    export.export_model(export.load_exported(model_path), start,
                        info={"step": 5, "total_steps": 12})

    def refused(out, needle):
        keep = (out / "model.safetensors").read_bytes()
        assert distill.main(_small_command(out, start, num_styles=4)) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
        assert (out / "model.safetensors").read_bytes() == keep
        assert not (out / "oracle").exists()

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "run_id.txt").write_text("abc\n")
    export.convert_export(model_path, workdir / "model.safetensors")
    refused(workdir, "is a training workdir")
    other = tmp_path / "other"
    other.mkdir()
    export.convert_export(model_path, other / "model.safetensors")  # a model, not distilled
    refused(other, "is not a distilled model")
    (other / "model.safetensors").write_bytes(b"not a model")
    refused(other, "is not a distilled model")
    shipped = tmp_path / "assets"
    shipped.mkdir()
    export.convert_export(model_path, shipped / "model.safetensors")
    monkeypatch.setattr(inference, "BUILTIN_MODEL", shipped / "model.safetensors")
    refused(shipped, "holds the built-in model")

    out = tmp_path / "d"
    assert distill.main(_small_command(out, start, num_styles=4)) == 0
    info = export.read_export(out / "model.safetensors")[1]["info"]
    assert info["total_steps"] == 12 and info["init_from"] == f"{tmp_path.name}/start.safetensors"
    assert info["distill"]["oracle_styles"] == 4
    assert distill.main(_small_command(out, start, num_styles=4)) == 0  # its own: replaced


def test_content_seeds_refine_the_same_styles_on_other_photos(tmp_path, model_path):
    """--content-seeds: one oracle folder per seed, same styles and start, other photo crops;
    the fitted target is their mean. The default seed's folder is the plain oracle (so an
    existing oracle is reused as it is)."""
    out = tmp_path / "d"
    base = _small_command(out, model_path, num_styles=4)
    assert distill.main(base) == 0
    one = np.load(out / "oracle" / "chunk_00000.npz")
    stamp = (out / "oracle" / "chunk_00000.npz").stat().st_mtime_ns
    assert distill.main(base + ["--content-seeds", "0", "7"]) == 0
    assert (out / "oracle" / "chunk_00000.npz").stat().st_mtime_ns == stamp  # reused
    other = np.load(out / "oracle_c7" / "chunk_00000.npz")
    assert json.loads((out / "oracle_c7" / "oracle.json").read_text())["content_seed"] == 7
    np.testing.assert_array_equal(other["index"], one["index"])
    np.testing.assert_array_equal(other["x"], one["x"])
    np.testing.assert_allclose(other["e0"], one["e0"], atol=1e-6)
    assert not np.allclose(other["e_star"], one["e_star"])  # other crops, other refinement
    rep = json.loads((out / "distill.json").read_text())
    assert rep["content_seeds"] == [0, 7]
    np.testing.assert_allclose(rep["oracle_loss_after"],
                               (one["loss"][:, 1].mean() + other["loss"][:, 1].mean()) / 2,
                               rtol=1e-6)
    both = distill.combine_oracles([dict(one), dict(other)])
    np.testing.assert_allclose(both["e_star"], (one["e_star"] + other["e_star"]) / 2)
    shifted = dict(other, e0=other["e0"] + 1.0)  # another start model
    with pytest.raises(ConfigError, match="same styles and start model"):
        distill.combine_oracles([dict(one), shifted])


def test_contents_per_style_reach_the_embedding_oracle(tmp_path, model, monkeypatch):
    """--contents-per-style K: each style is refined on K crops (ignoring it passed: the
    default is 1)."""
    seen = []
    real = distill.oracle_batch

    def spy(model, styles, contents, **kw):
        seen.append(np.shape(contents))
        return real(model, styles, contents, **kw)

    monkeypatch.setattr(distill, "oracle_batch", spy)
    src = {"style": SyntheticSource("style", 8), "content": SyntheticSource("content", 8)}
    r = distill.collect_oracle(model, src, tmp_path / "o", num_styles=3, batch=2, steps=1,
                               contents_per_style=2, style_size=SIZE, content_crop=SIZE,
                               content_short_range=(40, 48), progress=False)
    assert [s[:2] for s in seen] == [(2, 2), (1, 2)] and len(r["e_star"]) == 3


def test_content_crops_are_never_flat():
    src = SyntheticSource("content", 8)
    x = distill.content_crops(src, np.random.default_rng(0), 5, crop=SIZE, short_range=(40, 48))
    assert x.shape == (5, SIZE, SIZE, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert all(images.channel_std(c) >= distill.FLAT_CROP_STD for c in x)


@pytest.mark.parametrize("bad, msg", [(["--num-styles", "0"], "--num-styles must be >= 1"),
                                      (["--content-short", "20", "40"], "--content-short"),
                                      (["--learning-rate", "0"], "learning rate"),
                                      (["--target", "conditioning", "--rank", "0"], "--rank"),
                                      (["--target", "conditioning", "--ridge", "-1"], "--ridge"),
                                      (["--target", "conditioning", "--ridge", "nan"], "--ridge"),
                                      (["--target", "conditioning", "--scale", "inf"], "--scale"),
                                      (["--target-scale", "nan"], "--target-scale"),
                                      (["--weight-decay", "-1"], "--weight-decay"),
                                      (["--content-seeds", "-1"], "--content-seeds"),
                                      (["--seed", "-1"], "--seed must be in [0, 4294967295]"),
                                      (["--seed", str(2**32)], "--seed must be in"),
                                      (["--content-seeds", "0", str(2**32)], "--content-seeds"),
                                      # (said after the whole oracle: minutes of refinement)
                                      (["--num-styles", "3"], "--num-styles must be >= 4"),
                                      (["--target", "conditioning", "--num-styles", "4"],
                                       "--num-styles must be >= 5 for --target conditioning")])
def test_command_rejects_bad_options_in_one_line(tmp_path, capsys, bad, msg):
    assert distill.main(["--out", str(tmp_path / "d")] + bad) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1
    assert not (tmp_path / "d").exists()


# -- fitted conditionings as targets (--target conditioning) ------------------------------------

def _conditioning(model, styles) -> np.ndarray:
    from arbitrary_nst import fit_style

    return np.asarray(fit_style.flatten(model.predictor(jnp.asarray(styles))))


def test_fold_adds_the_correction_exactly_and_nothing_else(model, vgg, tmp_path):
    """The folded model's predicted gamma/beta = the old ones + scale * correction(x), for any
    style; the transfer network and the palette are untouched; the export round-trips."""
    rng = np.random.default_rng(3)
    f, g, r = model.predictor.feature_dim, 2 * sum(model.cin_channels), 3
    corr = distill.ConditioningCorrection(rng.normal(0, 0.05, (f, r)), rng.normal(0, 1, r),
                                          rng.normal(0, 0.1, (r, g)), rng.normal(0, 0.1, g))
    folded = distill.fold_correction(model, corr, scale=0.5)
    assert folded.embedding_dim == model.embedding_dim + r
    assert folded.predictor.hidden_dim == model.predictor.hidden_dim + 2 * r
    assert folded.palette == model.palette and folded.width == model.width
    styles = np.stack([_img(1), _img(2), _img(7)])
    want = _conditioning(model, styles) + 0.5 * corr(distill.style_statistics(model, styles))
    np.testing.assert_allclose(_conditioning(folded, styles), want, rtol=1e-4, atol=1e-4)
    old, new = export.model_tensors(model), export.model_tensors(folded)
    assert all(np.array_equal(old[k], new[k]) for k in old if k.startswith("transfer_net/"))
    # the old embedding dimensions are the old embedding
    e_old = np.asarray(model.embed(jnp.asarray(styles)))
    e_new = np.asarray(folded.embed(jnp.asarray(styles)))
    np.testing.assert_allclose(e_new[:, :model.embedding_dim], e_old, rtol=1e-5, atol=1e-5)
    path = export.export_model(folded, tmp_path / "folded.safetensors")
    again = export.load_exported(path, vgg=vgg)
    np.testing.assert_allclose(_conditioning(again, styles), _conditioning(folded, styles),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="do not fit"):
        distill.fold_correction(model, distill.ConditioningCorrection(
            corr.kernel[:-1], corr.bias, corr.basis, corr.offset))


def test_correction_fit_recovers_a_low_rank_map_and_picks_by_held_out_error():
    """delta = rank-2 linear map of x + a shared offset + small noise: the chosen fit explains
    nearly all of the held-out correction and predicts new styles' corrections; a grid without
    enough rank explains less; with intercept=False no shared offset is learnt."""
    rng = np.random.default_rng(0)
    n, f, g = 120, 30, 50
    x = rng.normal(size=(n, f)) * rng.uniform(0.5, 3, f) + rng.normal(size=f)
    a, b, off = rng.normal(size=(f, 2)), rng.normal(size=(2, g)), rng.normal(size=g)
    truth = lambda x: x @ a @ b + off  # noqa: E731
    delta = truth(x) + 0.01 * rng.normal(size=(n, g))
    corr, rep = distill.fit_conditioning_correction(x, delta, ridges=(0.01, 1e4), ranks=(1, 2, 8))
    assert rep["explained"] > 0.99 and rep["ridge"] == 0.01 and rep["rank"] in (2, 8), rep
    assert len(rep["grid"]) == 6 and rep["n_val"] == 24
    x_new = rng.normal(size=(10, f)) * 2
    np.testing.assert_allclose(corr(x_new), truth(x_new), atol=0.05 * np.abs(truth(x_new)).max())
    low, rep_low = distill.fit_conditioning_correction(x, delta, ridges=(0.01,), ranks=(1,))
    assert low.rank == 1 and rep_low["explained"] < rep["explained"] - 0.05
    none, _ = distill.fit_conditioning_correction(x, delta, ridges=(0.01,), ranks=(2,),
                                                  intercept=False)
    assert np.all(none.offset == 0)
    with pytest.raises(ConfigError, match="ridge must be > 0"):
        distill.fit_conditioning_correction(x, delta, ridges=(0.0,))
    with pytest.raises(ConfigError, match="fit:"):
        distill.fit_conditioning_correction(x[:4], delta[:4])


def test_correction_fit_ridge_matters_and_the_grid_says_the_rank_it_used():
    """Few noisy styles, many statistics: a large ridge wins on held-out styles (the ridge was
    never exercised: ignoring it passed); a rank above the training styles' count is that
    count, in the grid and in the correction (the grid said 64, the model had 10)."""
    rng = np.random.default_rng(3)
    n, f, g = 10, 60, 20
    x = rng.normal(size=(n, f))
    off = rng.normal(size=g)
    delta = off + 0.5 * rng.normal(size=(n, g))  # a shared offset, the rest noise
    corr, rep = distill.fit_conditioning_correction(x, delta, ridges=(1e-3, 1e4), ranks=(4, 64))
    by = {(e["ridge"], e["rank"]): e["explained"] for e in rep["grid"]}
    assert sorted(by) == [(1e-3, 4), (1e-3, 8), (1e4, 4), (1e4, 8)]  # 8 training styles
    assert rep["ridge"] == 1e4 and by[(1e4, 8)] > by[(1e-3, 8)] + 0.05, by
    assert corr.rank == rep["rank"]


def test_fit_oracle_starts_at_the_prediction_and_lowers_the_loss(model):
    styles = np.stack([_img(1), _img(2)])
    photos = np.stack([np.stack([_img(3), _img(4)]), np.stack([_img(5), _img(6)])])
    r = distill.fit_oracle_batch(model, styles, lambda: photos, steps=4)
    np.testing.assert_allclose(r["c0"], _conditioning(model, styles), rtol=1e-5, atol=1e-5)
    assert r["c"].shape == r["c0"].shape and np.all(np.isfinite(r["c"]))
    assert np.all(r["loss"][:, 1] < r["loss"][:, 0])
    assert np.all(np.linalg.norm(r["c"] - r["c0"], axis=-1) > 1e-3)


def test_conditioning_command_writes_a_folded_model(tmp_path, model_path, capsys):
    """Two oracle steps on 8 synthetic styles: no correction predicts held-out styles' (they
    made them worse, -18%, and were folded in all the same): refused, no model, the oracle
    kept. The same oracle chunks, their corrections replaced by a linear map of the statistics
    (learnable), are reused by the rerun, which folds the fitted correction in."""
    out = tmp_path / "d"
    args = _small_command(out, model_path, num_styles=8, target="conditioning") + [
        "--rank", "2", "3", "--ridge", "1", "100"]
    assert distill.main(args) == 1
    cap = capsys.readouterr()
    assert "held-out correction explained" in cap.out
    assert cap.err.startswith("error: no correction helps held-out styles") and \
        cap.err.count("\n") == 1
    assert not (out / "model.safetensors").exists()
    chunks = sorted((out / "oracle").glob("chunk_*.npz"))
    rng = np.random.default_rng(0)
    with np.load(chunks[0]) as z:
        f, g = z["x"].shape[1], z["c"].shape[1]
    a, b = rng.normal(size=(f, 2)), rng.normal(size=(2, g)) * 1e-3
    for path in chunks:
        with np.load(path) as z:
            ch = {k: z[k] for k in z.files}
        ch["c"] = (ch["c0"] + (ch["x"] - ch["x"].mean()) @ a @ b).astype(np.float32)
        np.savez(path, **ch)
    assert distill.main(args) == 0
    assert "held-out correction explained" in capsys.readouterr().out
    rep = json.loads((out / "distill.json").read_text())
    assert rep["explained"] > 0.5, rep["grid"]
    assert rep["target"] == "conditioning" and rep["rank"] in (2, 3) and len(rep["grid"]) == 4
    assert rep["oracle_loss_after"] < rep["oracle_loss_before"]
    assert json.loads((out / "oracle" / "oracle.json").read_text())["target"] == "conditioning"
    start = export.load_exported(model_path)
    m = export.load_exported(out / "model.safetensors")
    assert m.embedding_dim == start.embedding_dim + rep["rank"]
    # --scale 0.5 (the oracle reused, the same fit): the heads' biases move half as far from
    # the start model's and their rows for the new dimensions are half the full correction's;
    # the predictor's new units (which compute the correction's coordinates) are the same
    full = export.model_tensors(m)
    base = export.model_tensors(start)
    assert distill.main(args + ["--scale", "0.5"]) == 0
    assert json.loads((out / "distill.json").read_text())["scale"] == 0.5
    half = export.model_tensors(export.load_exported(out / "model.safetensors"))
    assert half.keys() == full.keys()
    grown = 0
    for k in full:
        if half[k].shape == base[k].shape:
            np.testing.assert_allclose(half[k] - base[k], 0.5 * (full[k] - base[k]),
                                       rtol=1e-5, atol=1e-7, err_msg=k)
        elif "/heads/" in k:  # (a head's kernel: rows for the new dimensions appended)
            n0 = base[k].shape[0]
            np.testing.assert_array_equal(half[k][:n0], base[k])
            np.testing.assert_allclose(half[k][n0:], 0.5 * full[k][n0:], rtol=1e-6, err_msg=k)
            grown += 1
        else:
            np.testing.assert_array_equal(half[k], full[k], err_msg=k)
    assert grown == len(start.cin_channels) and any(
        full[k].shape == base[k].shape and np.any(full[k] != base[k]) for k in base)
    # an embedding oracle in the same folder is refused (other settings)
    capsys.readouterr()
    assert distill.main(_small_command(out, model_path, num_styles=8)) == 1
    assert "holds an oracle made with" in capsys.readouterr().err


def test_correction_fit_is_ridge_on_standardized_statistics_refit_on_all_styles():
    """A float64 reference written out: standardize x with all styles' mean and (population)
    std, ridge-regress delta minus its mean on it, and (rank below G) keep the top right
    singular directions of the fitted values. The final correction is refit on every style,
    not only the training part used to choose ridge and rank."""
    rng = np.random.default_rng(5)
    n, f, g, ridge = 30, 6, 4, 7.0
    x = rng.normal(size=(n, f)) * rng.uniform(0.5, 4, f) + 3 * rng.normal(size=f)
    delta = x[:, :g] @ rng.normal(size=(g, g)) + rng.normal(size=(n, g))
    mu, sd = x.mean(0), x.std(0)
    z = (x - mu) / sd
    off = delta.mean(0)
    w = np.linalg.solve(z.T @ z + ridge * np.eye(f), z.T @ (delta - off))
    x_new = rng.normal(size=(5, f)) * 3
    z_new = (x_new - mu) / sd
    corr, rep = distill.fit_conditioning_correction(x, delta, ridges=(ridge,), ranks=(g,))
    assert rep["rank"] == g and corr.rank == g
    np.testing.assert_allclose(corr(x_new), z_new @ w + off, rtol=1e-4, atol=1e-4)
    v = np.linalg.svd(z @ w)[2][:2]  # rank 2: the fitted values' two main directions
    low, _ = distill.fit_conditioning_correction(x, delta, ridges=(ridge,), ranks=(2,))
    np.testing.assert_allclose(low(x_new), z_new @ w @ v.T @ v + off, rtol=1e-4, atol=1e-4)
    # the held-out score that chooses ridge and rank: fitted on the training part alone
    # (its mean, std and mean correction too), scored on the held-out part
    perm = np.random.default_rng(0).permutation(n)
    val, tr = perm[:6], perm[6:]  # val_fraction 0.2 of 30 styles, seed 0
    mu_t, sd_t, off_t = x[tr].mean(0), x[tr].std(0), delta[tr].mean(0)
    z_t = (x[tr] - mu_t) / sd_t
    w_t = np.linalg.solve(z_t.T @ z_t + ridge * np.eye(f), z_t.T @ (delta[tr] - off_t))
    err = np.sum((delta[val] - ((x[val] - mu_t) / sd_t @ w_t + off_t)) ** 2)
    assert rep["n_val"] == 6 and len(rep["grid"]) == 1
    np.testing.assert_allclose(rep["explained"], 1 - err / np.sum(delta[val] ** 2), rtol=1e-4)


def test_combine_oracles_averages_fitted_conditionings_too():
    """--content-seeds with --target conditioning: the fitted gamma/beta ``c`` (what is
    regressed) is the mean over the oracles, like ``loss``; the rest is the first's."""
    rng = np.random.default_rng(6)
    base = {"index": np.arange(3), "x": rng.normal(size=(3, 5)), "e0": rng.normal(size=(3, 4)),
            "c0": rng.normal(size=(3, 6))}
    ones = [dict(base, c=rng.normal(size=(3, 6)), loss=rng.random((3, 2))) for _ in range(3)]
    both = distill.combine_oracles(ones)
    np.testing.assert_allclose(both["c"], sum(o["c"] for o in ones) / 3, rtol=1e-12)
    np.testing.assert_allclose(both["loss"], sum(o["loss"] for o in ones) / 3, rtol=1e-12)
    for k in base:
        np.testing.assert_array_equal(both[k], base[k])
    assert "e_star" not in both


class _Arrays:
    def __init__(self, *arrays):
        self.arrays = arrays

    def __len__(self):
        return len(self.arrays)

    def get(self, i):
        return self.arrays[i]


def test_style_images_scale_the_shorter_side_and_take_the_centre_square():
    """A 48 x 96 and a 96 x 48 painting at size 32: PIL's bicubic resize to 32 x 64 (64 x 32),
    then the centre 32 x 32 (not the top-left corner, not a squashed whole)."""
    from PIL import Image

    rng = np.random.default_rng(7)
    wide = (rng.random((48, 96, 3)) * 255).astype(np.uint8)
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))
    got = distill.style_images(_Arrays(wide, tall), [0, 1], size=32)
    assert got.shape == (2, 32, 32, 3) and got.dtype == np.float32
    w = np.asarray(Image.fromarray(wide).resize((64, 32), Image.Resampling.BICUBIC))
    t = np.asarray(Image.fromarray(tall).resize((32, 64), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(got[0], w[:, 16:48].astype(np.float32) / 255)
    np.testing.assert_array_equal(got[1], t[16:48, :].astype(np.float32) / 255)


def test_content_crops_redraw_flat_photos():
    """Half the photos flat grey: every crop is of the textured one (a flat draw is drawn
    again; stopping at a flat one instead of a textured one passed the test above, whose
    synthetic photos are never flat)."""
    rng = np.random.default_rng(8)
    flat = np.full((64, 64, 3), 128, np.uint8)
    textured = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    x = distill.content_crops(_Arrays(flat, textured), np.random.default_rng(0), 12, crop=SIZE,
                              short_range=(40, 48))
    assert all(images.channel_std(c) >= distill.FLAT_CROP_STD for c in x)


def test_oracle_refines_each_style_on_its_own_contents(model):
    """N = 2 styles with K = 2 contents each, refined together: each style's result is the
    one it gets alone (content j belongs to style j // K and starts at that style's
    prediction; interleaving them, j % N, gave style 0 the other style's photos)."""
    styles = np.stack([_img(1), _img(2)])
    contents = np.stack([np.stack([_img(3), _img(4)]), np.stack([_img(5), _img(6)])])
    both = distill.oracle_batch(model, styles, contents, steps=4)  # (compiled as above)
    for i in range(2):
        alone = distill.oracle_batch(model, styles[i:i + 1], contents[i:i + 1], steps=4)
        # (batch 2 and batch 1 round differently, and 4 Adam steps amplify it to ~6e-4 in e_star
        # and 1.5e-4 in the loss under the suite's -O0 kernels; the interleaving bug moves e_star
        # by up to 0.16 (0.03 on average) and the losses by 0.5-0.8%)
        np.testing.assert_allclose(both["e_star"][i], alone["e_star"][0], rtol=0, atol=2e-3)
        np.testing.assert_allclose(both["loss"][i], alone["loss"][0], rtol=1e-3)


def test_an_oracle_recorded_before_model_hashes_is_reused(tmp_path, model):
    """oracle.json of an older version has no model_sha256: it is taken to be this model's
    (the chunks are reused), not refused as 'made with other settings'."""
    src = {"style": SyntheticSource("style", 8), "content": SyntheticSource("content", 8)}
    kw = dict(num_styles=2, batch=2, steps=1, style_size=SIZE, content_crop=SIZE,
              content_short_range=(40, 48), progress=False)
    first = distill.collect_oracle(model, src, tmp_path / "o", **kw)
    meta = json.loads((tmp_path / "o" / "oracle.json").read_text())
    del meta["model_sha256"]
    (tmp_path / "o" / "oracle.json").write_text(json.dumps(meta))
    chunk = tmp_path / "o" / "chunk_00000.npz"
    stamp = chunk.stat().st_mtime_ns
    again = distill.collect_oracle(model, src, tmp_path / "o", **kw)
    assert chunk.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again["e_star"], first["e_star"])


def test_an_oracle_of_other_training_images_is_refused(tmp_path, model):
    """Another style folder of the same size (or files edited in place: the prepared dataset's
    name changes) reused the old oracle chunks silently, and the distilled model was fitted to
    paintings that were no longer the ones asked for."""
    src = {"style": SyntheticSource("style", 8), "content": SyntheticSource("content", 8)}
    kw = dict(num_styles=2, batch=2, steps=1, style_size=SIZE, content_crop=SIZE,
              content_short_range=(40, 48), progress=False)
    distill.collect_oracle(model, src, tmp_path / "o", **kw)
    other = SyntheticSource("style", 8)
    other.name = "paintings-0123456789ab"  # (what a changed folder's preparation is named)
    with pytest.raises(ConfigError, match=r"holds an oracle made with other data \("):
        distill.collect_oracle(model, {**src, "style": other}, tmp_path / "o", **kw)
    # an oracle.json of an older version (no "data") is taken to be of these images
    meta = json.loads((tmp_path / "o" / "oracle.json").read_text())
    del meta["data"]
    (tmp_path / "o" / "oracle.json").write_text(json.dumps(meta))
    distill.collect_oracle(model, src, tmp_path / "o", **kw)


def test_npz_training_data_is_identified_by_its_bytes(tmp_path):
    """An npz export is named by a digest of its bytes: two with the same paths differ."""
    from arbitrary_nst import data as data_lib

    ids = []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        imgs = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)) for _ in range(2)]
        blobs = []
        for im in imgs:
            b = io.BytesIO()
            im.save(b, format="JPEG")
            blobs.append(np.frombuffer(b.getvalue(), np.uint8))
        arrays = {}
        for role in ("content", "style"):
            arrays[f"{role}_jpeg"] = np.concatenate(blobs)
            arrays[f"{role}_offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        np.savez(tmp_path / f"d{seed}.npz", **arrays)
        srcs = {r: data_lib.NpzSource(tmp_path / f"d{seed}.npz", r) for r in ("content", "style")}
        ids.append(distill.data_identity(srcs))
    assert ids[0]["style"]["datasets"][0].startswith("npz-style-") and ids[0] != ids[1]


def test_target_scale_zero_fits_the_prediction_and_leaves_the_model_unchanged(tmp_path,
                                                                            model_path, capsys):
    """--target-scale 0: the target is e0 + 0 (e* - e0) = the start's own prediction, so the
    written model is the start model, tensor for tensor (the option was ignored: the refined
    embeddings were fitted); and that is said (it said only "explained 0.0%")."""
    out = tmp_path / "d"
    assert distill.main(_small_command(out, model_path, num_styles=4)
                        + ["--target-scale", "0"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: no fit step lowered the held-out error, so ") and \
        "has the start model's weights" in err and err.count("\n") == 1, err
    start = export.model_tensors(export.load_exported(model_path))
    got = export.model_tensors(export.load_exported(out / "model.safetensors"))
    assert got.keys() == start.keys()
    assert all(np.array_equal(got[k], start[k]) for k in start)
    rep = json.loads((out / "distill.json").read_text())
    assert rep["oracle_distance"] > 0.1  # (the oracle did move: e* != e0)
    assert rep["start_train_mse"] < 1e-8 and rep["start_val_mse"] < 1e-8, rep  # (float32 noise)
    assert rep["best_step"] == 0


# -- behaviour pinned by a mutation pass ---------------------------------------------------------

def test_content_crops_take_any_shorter_side_in_the_closed_range():
    """short_range is inclusive and a crop may start at any position, the last included: with
    LO = HI = crop a square photo is resized to exactly the crop and the crop is all of it (an
    open range, or one offset fewer, failed on the first draw: numpy's integers(32, 32))."""
    from PIL import Image

    rng = np.random.default_rng(9)
    photo = (rng.random((48, 48, 3)) * 255).astype(np.uint8)
    x = distill.content_crops(_Arrays(photo), np.random.default_rng(0), 2, crop=SIZE,
                              short_range=(SIZE, SIZE))
    want = np.asarray(Image.fromarray(photo).resize((SIZE, SIZE), Image.Resampling.BICUBIC),
                      np.float32) / 255
    for c in x:
        np.testing.assert_array_equal(c, want)


def test_oracle_loss_is_the_training_loss_at_the_start_and_at_the_refined_embedding(model,
                                                                                   vgg):
    """loss[:, 0] and loss[:, 1] are content + 0.5 style of the output (written independently
    from the VGG features) at e0 and at e_star: the loss after the *last* step, not after
    the first."""
    import jax

    from arbitrary_nst import losses
    from arbitrary_nst.vgg import features

    styles = _img(1)[None]
    content = _img(3)[None]
    r = distill.oracle_batch(model, styles, content[None], steps=3)
    params = vgg.params()
    feat = lambda x, taps: features(params, x, taps, pooling=model.vgg.pooling)  # noqa: E731
    cfg = losses.LossConfig(style_weight=0.5)
    targets = losses.StyleTargets.from_images(feat, jnp.asarray(styles), cfg)
    both = jnp.asarray(np.concatenate([content, content]))  # at e0 and at e_star
    cf = feat(both, ("relu3_3",))

    @jax.jit  # (one compile, both embeddings)
    def loss(e):
        y = model.transfer(both, e)
        return losses.perceptual_loss(feat, y, cfg, content_feats=cf, style_targets=targets)[0]

    np.testing.assert_allclose(r["loss"][0], np.asarray(loss(jnp.asarray(
        np.stack([r["e0"][0], r["e_star"][0]])))), rtol=1e-4)


def test_fit_judges_the_last_step_too_when_it_is_not_a_multiple_of_eval_every(model):
    """steps=30 with eval_every=50: the last step is evaluated (the command's default fit was
    never judged, so it kept the start model whatever the oracle said)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, model.predictor.feature_dim)).astype(np.float32)
    start = np.asarray(distill._mlp_apply(distill._mlp_params(model), jnp.asarray(x)))
    target = start + 1.0  # a shared shift: learnable through the bias
    rep = distill.fit_embedding_mlp(model, x, target, steps=30, learning_rate=1e-3,
                                    eval_every=50)
    assert [i for i, _ in rep["curve"]] == [30]
    assert rep["best_step"] == 30 and rep["val_mse"] < rep["start_val_mse"]


def test_fit_trains_on_minibatches_of_training_styles_only(model):
    """Each step's batch is ``batch_size`` rows of the training part: the held-out styles
    (round(val_fraction * N) of them) never reach a step (run eagerly to see the rows)."""
    import jax

    rng = np.random.default_rng(5)
    n = 37  # 0.1 * 37 = 3.7: 4 held-out styles
    x = rng.normal(size=(n, model.predictor.feature_dim)).astype(np.float32)
    target = np.asarray(distill._mlp_apply(distill._mlp_params(model), jnp.asarray(x))) + 0.5
    seen = []
    real = distill._mlp_apply

    def spy(params, xb):
        seen.append(np.asarray(xb))
        return real(params, xb)

    mp = pytest.MonkeyPatch()
    mp.setattr(distill, "_mlp_apply", spy)
    try:
        with jax.disable_jit():
            rep = distill.fit_embedding_mlp(model, x, target, steps=6, eval_every=3,
                                            batch_size=5)
    finally:
        mp.undo()
    assert rep["n_val"] == 4 and rep["n_train"] == 33
    val = seen[0]  # the first evaluation: the held-out styles
    assert len(val) == 4
    rows = lambda a: {r.tobytes() for r in a}  # noqa: E731
    batches = [b for b in seen if len(b) == 5]
    assert len(batches) == 6
    for b in batches:
        assert not rows(b) & rows(val) and rows(b) <= rows(x)


def test_correction_fit_ignores_a_constant_statistic():
    """A statistic that is the same for every style (a VGG channel that never fires): the fit
    is the one without it (finite; it was 0 / 0 = NaN), float64 reference as above."""
    rng = np.random.default_rng(11)
    n, f, g, ridge = 30, 5, 4, 3.0
    x = rng.normal(size=(n, f)) * rng.uniform(0.5, 3, f)
    delta = x[:, :g] @ rng.normal(size=(g, g)) + 0.1 * rng.normal(size=(n, g))
    x_const = np.concatenate([x, np.full((n, 1), 2.5)], 1)
    corr, _ = distill.fit_conditioning_correction(x_const, delta, ridges=(ridge,), ranks=(g,))
    mu, sd = x.mean(0), x.std(0)
    z = (x - mu) / sd
    off = delta.mean(0)
    w = np.linalg.solve(z.T @ z + ridge * np.eye(f), z.T @ (delta - off))
    x_new = rng.normal(size=(4, f))
    got = corr(np.concatenate([x_new, np.full((4, 1), 2.5)], 1))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, (x_new - mu) / sd @ w + off, rtol=1e-4, atol=1e-4)


def test_correction_rank_above_the_conditioning_size_is_that_size():
    """G = 4 gamma/beta values and rank 8 asked for: the grid and the correction say 4."""
    rng = np.random.default_rng(12)
    x = rng.normal(size=(30, 6))
    delta = x[:, :4] + 0.1 * rng.normal(size=(30, 4))
    corr, rep = distill.fit_conditioning_correction(x, delta, ridges=(1.0,), ranks=(8,))
    assert [e["rank"] for e in rep["grid"]] == [4]
    assert rep["rank"] == corr.rank == 4


def _fake_oracle(seen):
    def fake(model, styles, contents, **kw):
        seen.append(np.asarray(contents))
        n = len(styles)
        return {"x": np.zeros((n, 3), np.float32), "e0": np.zeros((n, 2), np.float32),
                "e_star": np.ones((n, 2), np.float32), "loss": np.ones((n, 2), np.float32)}
    return fake


def test_collect_oracle_takes_every_style_when_fewer_than_asked(tmp_path, model, monkeypatch):
    """--num-styles above the number of training styles: all of them, each once (the
    oracle was not refined: a stub), in chunks of ``batch``."""
    seen = []
    monkeypatch.setattr(distill, "oracle_batch", _fake_oracle(seen))
    src = {"style": SyntheticSource("style", 5), "content": SyntheticSource("content", 8)}
    r = distill.collect_oracle(model, src, tmp_path / "o", num_styles=9, batch=2, steps=1,
                               style_size=SIZE, content_crop=SIZE, content_short_range=(40, 48),
                               progress=False)
    assert sorted(r["index"].tolist()) == [0, 1, 2, 3, 4]
    assert [len(c) for c in seen] == [2, 2, 1]


def test_each_oracle_chunk_has_its_own_photos_and_a_remade_chunk_gets_the_same(tmp_path, model,
                                                                            monkeypatch):
    """Chunk c's crops come from (seed, c): two chunks do not share their crops, and a chunk
    made again (deleted, resumed) gets exactly the crops it had."""
    seen = []
    monkeypatch.setattr(distill, "oracle_batch", _fake_oracle(seen))
    src = {"style": SyntheticSource("style", 8), "content": SyntheticSource("content", 8)}
    kw = dict(num_styles=4, batch=2, steps=1, style_size=SIZE, content_crop=SIZE,
              content_short_range=(40, 48), progress=False)
    distill.collect_oracle(model, src, tmp_path / "o", **kw)
    assert len(seen) == 2 and not np.array_equal(seen[0], seen[1])
    (tmp_path / "o" / "chunk_00001.npz").unlink()
    distill.collect_oracle(model, src, tmp_path / "o", **kw)
    assert len(seen) == 3
    np.testing.assert_array_equal(seen[2], seen[1])


@pytest.mark.parametrize("target, steps, lr", [("embedding", 12, 0.05),
                                               ("conditioning", 40, 0.02)])
def test_command_oracle_defaults_depend_on_the_target(tmp_path, model_path, monkeypatch, capsys,
                                                      target, steps, lr):
    """Without --steps / --learning-rate the oracle runs 12 steps at 0.05 (embedding) or 40
    at 0.02 (conditioning), as the help says (the oracle itself is a stub that stops here)."""
    got = {}

    def stop(*a, **kw):
        got.update(kw)
        raise ConfigError("stub oracle")

    monkeypatch.setattr(distill, "collect_oracle", stop)
    args = _small_command(tmp_path / "d", model_path, num_styles=5, target=target)
    i = args.index("--steps")
    del args[i:i + 2]
    assert distill.main(args) == 1
    assert "stub oracle" in capsys.readouterr().err
    assert got["steps"] == steps and got["learning_rate"] == lr and got["target"] == target


@pytest.mark.parametrize("target, option", [
    ("conditioning", ["--fit-steps", "3000"]), ("conditioning", ["--fit-learning-rate", "1e-3"]),
    ("conditioning", ["--weight-decay", "0"]), ("conditioning", ["--target-scale", "2"]),
    ("embedding", ["--rank", "4"]), ("embedding", ["--ridge", "10"]),
    ("embedding", ["--scale", "1"])])
def test_one_targets_options_are_refused_with_the_other(tmp_path, capsys, target, option):
    """Each --target's own options (the MLP fit's for embedding, the correction's for
    conditioning) were accepted by the other without a word and changed nothing; refused now,
    even at their default values, before the model is read."""
    assert distill.main(["--out", str(tmp_path / "d"), "--model", str(tmp_path / "none"),
                         "--target", target] + option) == 1
    other = "embedding" if target == "conditioning" else "conditioning"
    assert capsys.readouterr().err == (f"error: {option[0]} applies to --target {other}\n")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("bad, msg", [(["--target", "conditioning", "--ridge", "0"], "--ridge"),
                                      (["--target", "conditioning", "--scale", "-1"], "--scale"),
                                      (["--style-size", "31"], "--style-size"),
                                      (["--content-crop", "31", "--content-short", "40", "48"],
                                       "--content-crop"),
                                      (["--content-short", "200", "180"], "--content-short")])
def test_command_rejects_boundary_options_before_any_work(tmp_path, capsys, bad, msg):
    """The edges of the option checks (ridge 0, a negative scale, 31 px, LO > HI) are refused
    up front like the rest, before the model is read (it does not exist here)."""
    assert distill.main(["--out", str(tmp_path / "d"), "--model", str(tmp_path / "none")]
                        + bad) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1
    assert not (tmp_path / "d").exists()


def test_data_identity_names_every_dataset_of_both_roles_and_counts_their_images():
    """What oracle.json's "data" records: per role (the contents too, not only the styles),
    the name of each dataset of a mixture and the number of images; another content set, one
    more image or another mixture part is another identity."""
    from arbitrary_nst.data import MixtureSource

    def ident(style, content):
        return distill.data_identity({"style": style, "content": content})

    base = ident(SyntheticSource("style", 8), SyntheticSource("content", 8))
    assert base == {"style": {"datasets": ["synthetic-style"], "images": 8},
                    "content": {"datasets": ["synthetic-content"], "images": 8}}
    other = SyntheticSource("content", 8)
    other.name = "photos-0123456789ab"
    assert ident(SyntheticSource("style", 8), other) != base
    assert ident(SyntheticSource("style", 9), SyntheticSource("content", 8)) != base
    extra = SyntheticSource("style", 4)
    extra.name = "more-paintings"
    mix = ident(MixtureSource([SyntheticSource("style", 4), extra]),
                SyntheticSource("content", 8))
    assert mix["style"] == {"datasets": ["synthetic-style", "more-paintings"], "images": 8}


def test_npz_training_data_of_the_same_sizes_is_told_apart_by_bytes_and_split(tmp_path):
    """An npz export's identity is a digest of its bytes and of where each image starts: one
    byte changed (every image the same length), or the same bytes split into other images,
    is other training data."""
    from arbitrary_nst import data as data_lib

    buf = np.random.default_rng(0).integers(0, 255, 300, np.uint8)
    variants = {"base": (buf, [0, 100, 300]), "split": (buf, [0, 120, 300])}
    edited = buf.copy()
    edited[150] ^= 1
    variants["byte"] = (edited, [0, 100, 300])
    ids = {}
    for name, (jpeg, offsets) in variants.items():
        arrays = {}
        for role in ("content", "style"):
            arrays[f"{role}_jpeg"], arrays[f"{role}_offsets"] = jpeg, np.asarray(offsets)
        np.savez(tmp_path / f"{name}.npz", **arrays)
        srcs = {r: data_lib.NpzSource(tmp_path / f"{name}.npz", r) for r in ("content", "style")}
        ids[name] = distill.data_identity(srcs)
    assert ids["base"]["style"]["images"] == 2 and ids["split"]["style"]["images"] == 2
    assert ids["byte"] != ids["base"] and ids["split"] != ids["base"]
