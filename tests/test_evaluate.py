"""Quality evaluation: metrics against independent references, and the whole run end to end on
a tiny generated set (2 contents x 2 styles at 64 px)."""
from __future__ import annotations

import csv
import io
import json
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from arbitrary_nst import evaluate, images, losses, samples, vgg as vgg_lib
from arbitrary_nst.errors import ConfigError
from arbitrary_nst.models import with_pooling


@pytest.fixture(scope="module")
def avg_vgg(vgg):
    return with_pooling(vgg, "avg")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalset")
    for n in ("astronaut", "coffee"):
        images.save_image(root / "content" / f"{n}.png", samples.content_image(n, max_side=80))
    for n in ("strokes", "waves"):
        images.save_image(root / "style" / f"{n}.png", samples.style_image(n, size=80))
    return root


def test_color_hist_distance_bounds():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (20, 30, 3)).astype(np.float32)
    assert evaluate.color_hist_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    # Same distribution, other size and order: still 0.
    assert evaluate.color_hist_distance(a, a[::-1, ::-1][:10]) < 0.5
    dark, bright = np.zeros((8, 8, 3), np.float32), np.ones((5, 9, 3), np.float32)
    assert evaluate.color_hist_distance(dark, bright) == pytest.approx(1.0)
    half = np.concatenate([dark, np.ones((8, 8, 3), np.float32)])
    assert evaluate.color_hist_distance(half, dark) == pytest.approx(0.5)


def test_metrics_match_the_loss_module_and_vanish_at_the_references(avg_vgg):
    m = evaluate.Metrics(avg_vgg)
    content = samples.content_image("chelsea", max_side=96)[:64, :64]
    style = samples.style_image("mosaic", size=64)
    out = np.clip(0.6 * content + 0.4 * style, 0, 1).astype(np.float32)
    cf = m.features(content[None])
    ss = m.style_stats(m.features(style[None]))
    (row,) = m.score(out[None], cf, [ss], [style])
    # Reference: the training loss module (Gram / HW, MSE, Magenta's 0.5e-3 per layer) on the
    # average-pooling VGG, computed independently in float32.
    params = avg_vgg.params()
    feats = lambda x, taps: vgg_lib.features(params, jnp.asarray(x), taps, pooling="avg")  # noqa
    cfg = losses.LossConfig(content_layers={"relu3_3": 1.0},
                            style_layers={t: 0.5e-3 for t in evaluate.STYLE_LAYERS},
                            tv_weight=0.0)
    targets = losses.StyleTargets.from_features(feats(style[None], evaluate.STYLE_LAYERS), cfg)
    _, terms = losses.perceptual_loss(feats, jnp.asarray(out[None]), cfg,
                                      content_feats=feats(content[None], ("relu3_3",)),
                                      style_targets=targets)
    assert row["content_relu3_3"] == pytest.approx(float(terms["content"][0]), rel=1e-4)
    assert row["style_gram"] == pytest.approx(float(terms["style"][0]), rel=1e-4)
    # The README's independent measure, written out here in float64: per-channel mean and std
    # at relu5_1 (the layer named literally, not the module's constant), squared differences
    # averaged over channels, plus the relu4_2 content term.
    f5 = {k: np.asarray(feats(x[None], ("relu5_1",))["relu5_1"][0], np.float64)
          for k, x in (("out", out), ("style", style))}
    mean = {k: f.mean(axis=(0, 1)) for k, f in f5.items()}
    std = {k: np.sqrt(f.var(axis=(0, 1)) + 1e-5) for k, f in f5.items()}
    ref = np.mean((mean["out"] - mean["style"]) ** 2) + np.mean((std["out"] - std["style"]) ** 2)
    assert row["meanstd_relu5_1"] == pytest.approx(ref, rel=1e-3)
    c42 = [np.asarray(feats(x[None], ("relu4_2",))["relu4_2"], np.float64) for x in (out, content)]
    assert row["content_relu4_2"] == pytest.approx(np.mean((c42[0] - c42[1]) ** 2), rel=1e-3)
    assert row["content_relu3_3"] > 0 and row["meanstd_relu5_1"] > 0
    # The content photo has zero content loss; the style image zero style losses.
    (c_row,) = m.score(content[None], cf, [ss], [style])
    (s_row,) = m.score(style[None], cf, [ss], [style])
    assert c_row["content_relu3_3"] == 0 and c_row["content_relu4_2"] == 0
    assert s_row["style_gram"] < 1e-6 * row["style_gram"]
    assert s_row["meanstd_relu5_1"] < 1e-6 and s_row["color_hist"] == 0
    # Mixing in more style lowers the style measures.
    assert row["style_gram"] < c_row["style_gram"]
    assert row["color_hist"] < c_row["color_hist"]


def test_evaluate_end_to_end_on_a_tiny_set(tiny_set, tmp_path, vgg, capsys):
    out = tmp_path / "out"
    rc = evaluate.main(["--content", str(tiny_set / "content"), "--style",
                        str(tiny_set / "style"), "--out", str(out), "--size", "64",
                        "--methods", "model,gatys,magenta_lite,identity,style",
                        "--gatys-iters", "6", "--gatys-batch", "2", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| model |" in printed and "model / magenta_lite" in printed
    methods = ["model", "gatys", "magenta_lite", "identity", "style"]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 4
    assert {r["method"] for r in rows} == set(methods)
    for r in rows:
        for k in evaluate.METRICS:
            assert np.isfinite(float(r[k])), (r["method"], k)
    by = {(r["method"], r["content"], r["style"]): r for r in rows}
    for c in ("astronaut", "coffee"):
        for s in ("strokes", "waves"):
            ident, sty = by[("identity", c, s)], by[("style", c, s)]
            assert float(ident["content_relu3_3"]) < 0.01 * float(by[("gatys", c, s)]
                                                                ["content_relu3_3"])
            # Every stylization moves the style loss from the photo's towards the painting's.
            for m in ("model", "gatys", "magenta_lite"):
                assert float(by[(m, c, s)]["style_gram"]) < float(ident["style_gram"]), (m, c, s)
            assert float(sty["style_gram"]) < float(ident["style_gram"])
            for m in methods:
                img = images.load_image(out / "images" / m / f"{c}__{s}.png")
                assert max(img.shape[:2]) == 64
    data = json.loads((out / "results.json").read_text())
    assert set(data["means"]) == set(methods) and data["means"]["model"]["pairs"] == 4
    assert data["info"]["size"] == 64
    summary = (out / "summary.md").read_text()
    assert "| gatys |" in summary and "target" in summary
    for m in methods:
        sheet = images.load_image(out / f"sheet_{m}.png")
        assert sheet.shape[0] > 3 * 128 and sheet.shape[1] > 3 * 128  # 3x3 cells of 128
    assert images.load_image(out / "sheet_side_by_side.png").shape[1] > 7 * 128
    assert (out / "scatter.png").stat().st_size > 10_000


def test_model_refine_runs_the_refinement_of_the_given_model(tiny_set, tmp_path, vgg, capsys):
    # (test_refine.py checks the refinement itself; here: evaluate runs it with --model,
    # --refine-steps and --size, on a random width-0.25 model that compiles fast)
    from test_cli_stylize import make_model_file

    model = make_model_file(tmp_path / "model.safetensors", vgg)
    out = tmp_path / "out"
    assert evaluate.main(["--content", str(tiny_set / "content"), "--style",
                          str(tiny_set / "style"), "--out", str(out), "--size", "48",
                          "--methods", "model,model_refine", "--model", str(model),
                          "--refine-steps", "2", "--no-progress"]) == 0
    assert "| model_refine |" in capsys.readouterr().out
    with open(out / "results.csv") as f:
        by = {(r["method"], r["content"], r["style"]): r for r in csv.DictReader(f)}
    assert len(by) == 2 * 4
    for c in ("astronaut", "coffee"):
        for s in ("strokes", "waves"):
            # refining moved the embedding: another output of the same model
            assert by[("model_refine", c, s)]["style_gram"] != by[("model", c, s)]["style_gram"]
            a, b = (images.load_image(out / "images" / m / f"{c}__{s}.png")
                    for m in ("model", "model_refine"))
            assert a.shape == b.shape and max(a.shape[:2]) == 48 and np.abs(a - b).mean() > 1e-4
    info = json.loads((out / "results.json").read_text())["info"]
    assert info["refine_steps"] == 2 and info["model"].endswith("model.safetensors"), info


def test_resume_reuses_outputs_and_bad_images_are_skipped(tiny_set, tmp_path, vgg):
    calls = []

    def factory(name, **kw):
        m = evaluate.make_method(name, **kw)
        run = m.run

        def counted(content, styles, keys):
            calls.append((name, len(styles)))
            return run(content, styles, keys)

        m.run = counted
        return m

    styles = tmp_path / "styles"
    styles.mkdir()
    for p in (tiny_set / "style").iterdir():
        (styles / p.name).write_bytes(p.read_bytes())
    (styles / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    kw = dict(methods=["identity", "magenta_lite"], size=48, progress=False, vgg=vgg,
              method_factory=factory)
    r1 = evaluate.evaluate(tiny_set / "content", styles, out, **kw)
    assert len(r1.skipped) == 1 and "broken.png" in r1.skipped[0]
    assert len(r1.rows) == 2 * 4 and sum(n for _, n in calls) == 2 * 4
    calls.clear()
    r2 = evaluate.evaluate(tiny_set / "content", styles, out, resume=True, **kw)
    assert calls == []  # nothing re-run
    assert [r["style_gram"] for r in r2.rows] == [r["style_gram"] for r in r1.rows]
    assert [r["seconds"] for r in r2.rows] == [r["seconds"] for r in r1.rows]
    # a resume with other settings would score the old images under the new ones: refused
    with pytest.raises(ConfigError, match=r"--resume: .* \(size 48 -> 56\)"):
        evaluate.evaluate(tiny_set / "content", styles, out, resume=True, **{**kw, "size": 56})
    # a new run of one method re-labels only that method's images: resuming both at its
    # settings is refused for the other's old images (they were scored as if new)
    evaluate.evaluate(tiny_set / "content", styles, out, **{**kw, "size": 56,
                                                            "methods": ["identity"]})
    with pytest.raises(ConfigError, match=r"holds magenta_lite images .* \(size 48 -> 56\)"):
        evaluate.evaluate(tiny_set / "content", styles, out, resume=True, **{**kw, "size": 56})
    calls.clear()
    r3 = evaluate.evaluate(tiny_set / "content", styles, out, resume=True,
                           **{**kw, "size": 56, "methods": ["identity"]})
    assert calls == [] and len(r3.rows) == 4  # its own images are reused
    # settings a method's images do not depend on (--strength for the peer) do not block it
    r4 = evaluate.evaluate(tiny_set / "content", styles, out, resume=True,
                           **{**kw, "size": 56, "methods": ["identity"], "strength": 0.3})
    assert len(r4.rows) == 4
    # a damaged earlier image is made again (it stopped the resumed run with one line)
    damaged = out / "images" / "identity" / "astronaut__strokes.png"
    damaged.write_bytes(damaged.read_bytes()[:40])
    calls.clear()
    r5 = evaluate.evaluate(tiny_set / "content", styles, out, resume=True,
                           **{**kw, "size": 56, "methods": ["identity"]})
    assert calls == [("identity", 1)] and len(r5.rows) == 4
    assert images.load_image(damaged).shape[1] == 56


def test_resume_refuses_changed_inputs_and_unknown_images(tiny_set, tmp_path, vgg):
    """Found by a user hunt: a resume scored images made from another photo of the same name
    (a traceback when its shape differed), and with settings.json gone it accepted any settings
    for the old images; a corrupt times.json was a traceback; a 3000x2 photo stopped the whole
    run without its name; --size 100000 was killed by the kernel."""
    contents = tmp_path / "contents"
    contents.mkdir()
    for p in (tiny_set / "content").iterdir():
        (contents / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    kw = dict(methods=["identity"], size=48, progress=False, vgg=vgg)
    evaluate.evaluate(contents, tiny_set / "style", out, **kw)
    first = sorted(contents.iterdir())[0]
    images.save_image(first, images.load_image(first)[:, ::-1], overwrite=True)
    with pytest.raises(ConfigError, match=r"--resume: 1 input file\(s\) changed .*content/"
                       + first.stem):
        evaluate.evaluate(contents, tiny_set / "style", out, resume=True, **kw)
    # a run of another method records the new file for *its* images only: identity's images
    # still come from the old photo
    evaluate.evaluate(contents, tiny_set / "style", out, **{**kw, "methods": ["style"]})
    with pytest.raises(ConfigError, match="identity images were made"):
        evaluate.evaluate(contents, tiny_set / "style", out, resume=True,
                          **{**kw, "methods": ["identity", "style"]})
    evaluate.evaluate(contents, tiny_set / "style", out, **kw)  # a new run records them
    evaluate.evaluate(contents, tiny_set / "style", out, resume=True, **kw)
    # a settings.json of the previous version (no inputs): its images cannot be checked
    settings = json.loads((out / "settings.json").read_text())
    del settings["methods"]["identity"]["inputs"]
    (out / "settings.json").write_text(json.dumps(settings))
    with pytest.raises(ConfigError, match="recorded without their input files"):
        evaluate.evaluate(contents, tiny_set / "style", out, resume=True, **kw)
    evaluate.evaluate(contents, tiny_set / "style", out, **kw)
    (out / "images" / "identity" / "times.json").write_text('{"a":')
    with pytest.raises(ConfigError, match="times.json: unreadable"):
        evaluate.evaluate(contents, tiny_set / "style", out, resume=True, **kw)
    # damaged: not objects where objects are recorded, or nested past the parser's depth
    # (AttributeError / RecursionError tracebacks, even without --resume)
    for bad in ('{"methods": ["x"]}', '{"methods": {"identity": 5}}', "[" * 100000 + "]" * 100000):
        (out / "settings.json").write_text(bad)
        for resume in (False, True):
            with pytest.raises(ConfigError, match="settings.json: unreadable .*delete it"):
                evaluate.evaluate(contents, tiny_set / "style", out, resume=resume, **kw)
    (out / "settings.json").unlink()
    with pytest.raises(ConfigError, match="holds images but no settings.json"):
        evaluate.evaluate(contents, tiny_set / "style", out, resume=True, **kw)
    images.save_image(contents / "thin.png", np.full((2, 300, 3), 0.5, np.float32))
    r = evaluate.evaluate(contents, tiny_set / "style", tmp_path / "o2", **kw)
    assert any("thin.png" in s and "too thin" in s for s in r.skipped)
    with pytest.raises(ConfigError, match=r"--size must be in \[32, 4096\]"):
        evaluate.evaluate(contents, tiny_set / "style", tmp_path / "o3",
                          **{**kw, "size": 100000})


def test_inputs_that_would_collide_or_be_overwritten_are_refused(tiny_set, tmp_path, vgg):
    """Two styles named 01.jpg in two folders shared one output and one score; --out holding
    the photos wrote sheets over them (and picked the sheets up as photos on a rerun)."""
    two = tmp_path / "two"
    for sub in ("monet", "vangogh"):
        (two / sub).mkdir(parents=True)
        (two / sub / "01.png").write_bytes(next((tiny_set / "style").iterdir()).read_bytes())
    kw = dict(methods=["identity"], size=48, progress=False, vgg=vgg)
    with pytest.raises(ConfigError, match="two style images are named '01'"):
        evaluate.evaluate(tiny_set / "content", str(two / "**" / "*.png"), tmp_path / "o", **kw)
    with pytest.raises(ConfigError, match="--out is inside the --content folder"):
        evaluate.evaluate(tiny_set / "content", tiny_set / "style", tiny_set / "content", **kw)
    # (given as a glob, the folder is not known as one: the photos picked are what is checked)
    with pytest.raises(ConfigError, match="--out holds the content image"):
        evaluate.evaluate(str(tiny_set / "content" / "*"), tiny_set / "style",
                          tiny_set / "content", **kw)


def test_a_file_found_unreadable_when_loaded_gives_its_pick_to_another(tiny_set, tmp_path,
                                                                         vgg):
    """``--num-contents 1`` of {a truncated JPEG, a photo}: the truncated file (found only when
    loaded, as a too large or too thin one) took the pick, and the run said "no readable content
    or style images". It is skipped once and the pick made again without it."""
    photos = tmp_path / "photos"
    photos.mkdir()
    good = photos / "b_photo.png"
    good.write_bytes((tiny_set / "content" / "astronaut.png").read_bytes())
    jpeg = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(jpeg, "JPEG")
    (photos / "a_cut.jpg").write_bytes(jpeg.getvalue()[:200])  # (its header reads fine)
    r = evaluate.evaluate(photos, tiny_set / "style", tmp_path / "o", methods=["identity"],
                          size=48, progress=False, vgg=vgg, num_contents=1, num_styles=1)
    assert {row["content"] for row in r.rows} == {"b_photo"} and r.info["contents"] == 1
    assert len(r.skipped) == 1 and r.skipped[0].startswith(str(photos / "a_cut.jpg")), r.skipped


def _plain_painting(level: float) -> np.ndarray:
    """A 40 x 40 painting of about one grey ``level`` (not blank: those are skipped)."""
    return np.full((40, 40, 3), level, np.float32) + np.linspace(0, 0.1, 40, dtype=np.float32
                                                                 )[:, None, None]


def test_a_blank_painting_is_skipped_not_scored(tiny_set, tmp_path, vgg):
    """A one-colour "painting" (a failed scan or export) was evaluated as a style and its
    scores went into the means (training skips such files): skipped with the reason, and a
    ``--num-styles`` pick it took goes to another painting."""
    styles = tmp_path / "styles"
    styles.mkdir()
    Image.fromarray(np.full((80, 96, 3), (120, 80, 40), np.uint8)).save(styles / "a_blank.png")
    [painting] = sorted((tiny_set / "style").iterdir())[:1]
    (styles / f"b_{painting.name}").write_bytes(painting.read_bytes())
    for n in (None, 1):
        r = evaluate.evaluate(tiny_set / "content", styles, tmp_path / f"o{n}",
                              methods=["identity"], size=48, progress=False, vgg=vgg,
                              num_contents=1, num_styles=n)
        assert {row["style"] for row in r.rows} == {f"b_{painting.stem}"}
        assert len(r.skipped) == 1 and r.skipped[0].startswith(
            f"{styles / 'a_blank.png'}: is blank (pixel std 0.0000 < 0.01): no style"), r.skipped


def test_long_and_non_utf8_file_names_are_evaluated(tiny_set, tmp_path, vgg):
    """Two 130-character names made an output name over 255 bytes (OSError traceback), and
    a file name that is not UTF-8 stopped the run at results.csv (UnicodeEncodeError, a .tmp
    left): the pair's image name is cut with a hash, the CSV says ``\\udcff``."""
    c, s = tmp_path / "c", tmp_path / "s"
    c.mkdir(), s.mkdir()
    photo = sorted((tiny_set / "content").iterdir())[0]
    painting = sorted((tiny_set / "style").iterdir())[0]
    (c / ("c" * 130 + ".png")).write_bytes(photo.read_bytes())
    (s / ("s" * 130 + ".png")).write_bytes(painting.read_bytes())
    odd = os.fsdecode(b"x\xff.png")
    (c / odd).write_bytes(photo.read_bytes())
    out = tmp_path / "o"
    r = evaluate.evaluate(c, s, out, methods=["identity"], size=48, progress=False, vgg=vgg)
    assert len(r.rows) == 2 and not r.skipped
    made = sorted(p.name for p in (out / "images" / "identity").glob("*.png"))
    assert len(made) == 2 and all(len(os.fsencode(n)) <= 255 for n in made), made
    assert any(n.startswith("c" * 130 + "__sss") and "~" in n for n in made), made
    csv_text = (out / "results.csv").read_text(encoding="utf-8")
    assert "x\\udcff" in csv_text and (out / "summary.md").read_text("utf-8")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # the sheets found the images under their cut names
    sheet = images.load_image(out / "sheet_identity.png")
    assert sheet.std() > 0.01


def test_out_inside_the_fit_photos_folder_is_refused(tiny_set, tmp_path, vgg):
    """``--fit-photos photos --out photos/eval``: the next run fitted its styles on the
    sheets and images written there (6 fit photos where there were 3)."""
    fit = tmp_path / "fit"
    fit.mkdir()
    (fit / "p.png").write_bytes(sorted((tiny_set / "content").iterdir())[0].read_bytes())
    with pytest.raises(ConfigError, match="--out is inside the --fit-photos folder .* as fit "
                                          "photos: use a folder outside it"):
        evaluate.evaluate(tiny_set / "content", tiny_set / "style", fit / "eval",
                          methods=["model_fit"], fit_photos=fit, size=48, progress=False,
                          vgg=vgg)
    assert sorted(p.name for p in fit.iterdir()) == ["p.png"]


def test_out_inside_a_content_or_style_folder_is_refused(tiny_set, tmp_path, vgg):
    """``--style paintings --out paintings/eval`` was accepted: the sheets and outputs written
    there were then training paintings for a later ``train.py`` on that folder (which takes
    subfolders). Refused before anything is written; a folder beside it is fine."""
    kw = dict(methods=["identity"], size=48, progress=False, vgg=vgg, num_contents=1,
              num_styles=1)
    for what in ("content", "style"):
        out = tiny_set / what / "eval" / "run"
        with pytest.raises(ConfigError, match=f"--out is inside the --{what} folder"):
            evaluate.evaluate(tiny_set / "content", tiny_set / "style", out, **kw)
        assert not (tiny_set / what / "eval").exists()
    linked = tmp_path / "to_style"
    os.symlink(tiny_set / "style", linked)  # (also through a link to the folder)
    with pytest.raises(ConfigError, match="--out is inside the --style folder"):
        evaluate.evaluate(tiny_set / "content", tiny_set / "style", linked / "eval", **kw)
    r = evaluate.evaluate(tiny_set / "content", tiny_set / "style", tmp_path / "beside", **kw)
    assert r.rows


def test_palette_reaches_the_model_methods(tiny_set, tmp_path, vgg):
    """``palette`` is the Stylizer's: 0 gives the raw network, 1 the full colour alignment,
    which brings the output's colour histogram closer to the painting's."""
    kw = dict(methods=["model"], size=48, progress=False, vgg=vgg)
    raw = evaluate.evaluate(tiny_set / "content", tiny_set / "style", tmp_path / "a",
                            palette=0.0, **kw)
    full = evaluate.evaluate(tiny_set / "content", tiny_set / "style", tmp_path / "b",
                             palette=1.0, **kw)
    assert raw.info["palette"] == 0.0 and full.info["palette"] == 1.0
    assert full.means["model"]["color_hist"] < raw.means["model"]["color_hist"]


def test_style_size_reaches_the_model_methods(tiny_set, tmp_path, vgg):
    """``style_size`` is the Stylizer's style working size: the model embeds another view of
    each painting (different outputs), while the style loss is scored against the same target."""
    kw = dict(methods=["model"], size=48, progress=False, vgg=vgg)
    made = []

    def factory(name, **k):
        made.append(k.get("style_size"))
        return evaluate.make_method(name, **k)

    default = evaluate.evaluate(tiny_set / "content", tiny_set / "style", tmp_path / "a", **kw)
    small = evaluate.evaluate(tiny_set / "content", tiny_set / "style", tmp_path / "b",
                              style_size=40, method_factory=factory, **kw)
    assert made == [40] and small.info["style_size"] == 40 and default.info["style_size"] is None
    # what the model ran with is recorded where it was left to the model (null said nothing)
    from arbitrary_nst.inference import Stylizer
    builtin = Stylizer.load(vgg=vgg)
    assert default.info["style_size_used"] == builtin.style_size and small.info["style_size_used"] == 40
    assert default.info["palette_used"] == builtin.model.palette > 0
    recorded = json.loads((tmp_path / "a" / "settings.json").read_text())["methods"]["model"]
    assert recorded["style_size"] is None and recorded["style_size_used"] == builtin.style_size
    assert recorded["palette"] is None and recorded["palette_used"] == builtin.model.palette
    a = images.load_image(tmp_path / "a" / "images" / "model" / "astronaut__strokes.png")
    b = images.load_image(tmp_path / "b" / "images" / "model" / "astronaut__strokes.png")
    assert a.shape == b.shape and np.abs(a - b).mean() > 1e-3
    assert ([r["style_gram"] for r in small.rows] != [r["style_gram"] for r in default.rows])


def test_an_interrupted_run_with_new_settings_leaves_no_image_to_resume(tiny_set, tmp_path,
                                                                         vgg):
    # settings.json takes the new settings when a run starts: a run interrupted before it made
    # anything, then resumed, scored the earlier run's images as made under the new settings
    calls = []

    def factory(name, **kw):
        m = evaluate.make_method(name, **kw)
        run = m.run

        def counted(content, styles, keys):
            calls.append(len(styles))
            if interrupt:
                raise KeyboardInterrupt
            return run(content, styles, keys)

        m.run = counted
        return m

    kw = dict(methods=["identity", "style"], progress=False, vgg=vgg, method_factory=factory)
    interrupt = False
    evaluate.evaluate(tiny_set / "content", tiny_set / "style", tmp_path / "o", size=48, **kw)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate(tiny_set / "content", tiny_set / "style", tmp_path / "o", size=56, **kw)
    interrupt, calls[:] = False, []
    r = evaluate.evaluate(tiny_set / "content", tiny_set / "style", tmp_path / "o", size=56,
                          resume=True, **kw)
    assert sum(calls) == 2 * 2 * 2  # every image made again, for both methods
    assert all(images.load_image(tmp_path / "o" / "images" / m / "astronaut__strokes.png")
               .shape[1] == 56 for m in ("identity", "style")) and r.info["size"] == 56


def test_ctrl_c_says_what_is_kept_and_how_to_go_on(tiny_set, tmp_path, monkeypatch, capsys):
    """It printed a bare "interrupted" (no "error:", no word of --resume)."""
    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate", interrupted)
    rc = evaluate.main(["--content", str(tiny_set / "content"), "--style",
                        str(tiny_set / "style"), "--out", str(tmp_path / "o"), "--methods",
                        "identity", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 130 and err.startswith("error: interrupted") and "--resume" in err
    assert err.count("\n") == 1 and str(tmp_path / "o") in err


def test_a_content_a_method_cannot_take_is_skipped_for_it(tiny_set, tmp_path, vgg, capsys):
    # (model_refine refuses a flat photo: it stopped the whole evaluation without its name)
    from arbitrary_nst.errors import ImageError

    def factory(name, **kw):
        m = evaluate.make_method(name, **kw)
        if name == "style":
            run = m.run

            def picky(content, styles, keys):
                if content.mean() < 0.45:  # (one of the two contents)
                    raise ImageError("content image", "blank (pixel std 0.0000 < 0.01)")
                return run(content, styles, keys)

            m.run = picky
        return m

    r = evaluate.evaluate(tiny_set / "content", tiny_set / "style", tmp_path / "o", size=48,
                          methods=["identity", "style"], progress=False, vgg=vgg,
                          method_factory=factory)
    assert r.means["identity"]["pairs"] == 4 and r.means["style"]["pairs"] == 2
    assert len(r.skipped) == 1 and r.skipped[0].startswith("style: content ")
    assert "blank" in r.skipped[0] and "skipped: style: content" in capsys.readouterr().err


def test_pairs_whose_output_names_collide_are_refused(tmp_path, vgg):
    for folder, names in (("c", ("a", "a__b")), ("s", ("c", "b__c"))):
        (tmp_path / folder).mkdir()
        for n in names:
            images.save_image(tmp_path / folder / f"{n}.png", samples.style_image("waves", 40))
    with pytest.raises(ConfigError, match=r"would both be written as a__b__c\.png"):
        evaluate.evaluate(tmp_path / "c", tmp_path / "s", tmp_path / "o", size=40,
                          methods=["identity"], progress=False, vgg=vgg)


def test_a_fit_is_reused_only_for_the_same_painting_and_photos(tmp_path):
    a = np.zeros((4, 5, 3), np.float32)
    b = a.copy()
    b[0, 0, 0] = 1e-3
    assert evaluate._pixels_id(a) == evaluate._pixels_id(a.copy()) != evaluate._pixels_id(b)
    assert evaluate._pixels_id(a) != evaluate._pixels_id(a.reshape(5, 4, 3))
    p = tmp_path / "p.png"
    p.write_bytes(b"one")
    before = evaluate._photo_set_id([p])
    p.write_bytes(b"two")  # the same name, another photo
    assert evaluate._photo_set_id([p]) != before


@pytest.mark.parametrize("argv, message", [
    (["--style-size", "8"], "--style-size must be >= 32"),
    (["--methods", "model,bogus"], "unknown method 'bogus'"),
    (["--gatys-iters", "0"], "--gatys-iters must be >= 1"),
    (["--model", "/nonexistent/model.safetensors"], "no such model file"),
    (["--content", "/nonexistent/dir"], "no such file or directory"),
    (["--palette", "2"], "palette must be in [0, 1]"),
    (["--thumb", "30000"], "--thumb must be in [16, 1024]"),
    (["--thumb", "1025"], "--thumb must be in [16, 1024]"),  # (both ends inclusive)
    (["--thumb", "15"], "--thumb must be in [16, 1024]"),
    (["--num-contents", "0"], "--num-contents must be >= 1"),
    (["--num-styles", "0"], "--num-styles must be >= 1"),
    (["--strength", "1.5"], "strength"),
    (["--out", __file__], "output folder is not a directory"),
    (["--out", __file__ + "/sub"], "a parent path is not a directory"),
])
def test_cli_errors_are_one_line(tiny_set, tmp_path, capsys, argv, message):
    base = {"--content": str(tiny_set / "content"), "--style": str(tiny_set / "style"),
            "--out": str(tmp_path / "o")}
    args = []
    for k, v in base.items():
        if k not in argv:
            args += [k, v]
    rc = evaluate.main(args + argv + ["--no-progress", "--size", "48"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and message in err and len(err.splitlines()) == 1, err


def test_summary_states_each_method_against_the_peer(tmp_path):
    """The verdict lines compare means correctly, for the model and the test-time methods."""
    def row(method, style, content, pair):
        return {"method": method, "content": pair[0], "style": pair[1], "style_gram": style,
                "content_relu3_3": content, "content_relu4_2": 1.0, "meanstd_relu5_1": 10.0,
                "color_hist": 0.5, "seconds": 0.1}
    pairs = [("a", "x"), ("b", "x")]
    rows = ([row("model", 3.0, 1.0, p) for p in pairs]
            + [row("model_refine", 1.5, 0.9, pairs[0]), row("model_refine", 2.5, 1.2, pairs[1])]
            + [row("magenta_lite", 2.0, 1.0, p) for p in pairs])
    methods = ["model", "model_refine", "magenta_lite"]
    means = {m: {k: float(np.mean([r[k] for r in rows if r["method"] == m]))
                 for k in ("style_gram", "content_relu3_3", "content_relu4_2",
                           "meanstd_relu5_1", "color_hist", "seconds")} for m in methods}
    result = evaluate.EvalResult(rows=rows, means=means, skipped=[], out_dir=tmp_path,
                                 methods=methods, info={"contents": 2, "styles": 1, "size": 64})
    text = evaluate.summary_markdown(result)
    assert ("* model / magenta_lite: style 1.50x, content (relu3_3) 1.00x" in text
            and "(target: style <= 1 at content <= 1: not met)" in text)
    # model_refine: style 2.0 / 2.0 = 1.00x at content 1.05 / 1.0: not met; one pair of two wins.
    assert "* model_refine / magenta_lite: style 1.00x, content (relu3_3) 1.05x" in text
    assert "style <= 1 at content <= 1: not met; test-time optimization" in text
    assert "pairs where model_refine has both lower style and lower content loss than " \
           "magenta_lite: 1 of 2." in text
    assert "pairs where model has both lower style and lower content loss than " \
           "magenta_lite: 0 of 2." in text


def test_summary_ratios_are_over_the_pairs_both_methods_ran(tmp_path):
    """model_refine skipped a flat photo (its refinement refuses one) that the peer ran: the
    ratios compared model_refine's mean over 1 pair with the peer's over 2, and said "style
    0.58x" where, on the pair both ran, it is 1.16x. Now over the shared pairs, and said."""
    def row(method, pair, style, content):
        return {"method": method, "content": pair[0], "style": pair[1], "style_gram": style,
                "content_relu3_3": content, "content_relu4_2": 1.0, "meanstd_relu5_1": 2.0,
                "color_hist": 0.5, "seconds": 0.1}
    photo, flat = ("photo", "x"), ("flat", "x")
    rows = [row("model_refine", photo, 5.8, 1.0), row("magenta_lite", photo, 5.0, 1.25),
            row("magenta_lite", flat, 15.0, 0.2), row("model", photo, 6.0, 1.0),
            row("model", flat, 14.0, 0.2), row("gatys", photo, 4.0, 1.0)]
    methods = ["model", "model_refine", "magenta_lite", "gatys"]
    means = evaluate.mean_table(rows, methods)
    text = evaluate.summary_markdown(evaluate.EvalResult(
        rows=rows, means=means, skipped=[], out_dir=tmp_path, methods=methods,
        info={"contents": 2, "styles": 1, "size": 64}))
    assert ("* pairs per method differ (model 2, model_refine 1, magenta_lite 2, gatys 1): the "
            "ratios below are over the pairs both methods ran") in text
    assert "* model_refine / magenta_lite: style 1.16x, content (relu3_3) 0.80x" in text
    assert "* model / magenta_lite: style 1.00x, content (relu3_3) 0.83x" in text
    assert "* model / gatys style: 1.50x (target <= 1.5x: met)." in text  # (6 / 4, not 10 / 4)


# ------------------------------------------------- mutation-testing pass 2 (metric details)


def test_color_histogram_is_the_joint_rgb_histogram():
    """The colour histogram is the joint 8x8x8 RGB histogram over [0, 1] (numpy's
    ``histogramdd`` as the reference, 1.0 in the top bin): a wrong index dropped the blue
    channel, a wrong scale shifted every bin edge; two images that differ only in blue are
    disjoint."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (24, 20, 3)).astype(np.float32)
    x[0, :4] = 1.0  # the upper edge belongs to the top bin
    want, _ = np.histogramdd(x.reshape(-1, 3).astype(np.float64), bins=evaluate.HIST_BINS,
                             range=[(0.0, 1.0)] * 3)
    np.testing.assert_allclose(evaluate.color_histogram(x), want.ravel() / want.sum(),
                               atol=1e-12)
    blue0 = np.zeros((6, 6, 3), np.float32)
    blue1 = blue0.copy()
    blue1[..., 2] = 0.9
    assert evaluate.color_hist_distance(blue0, blue1) == pytest.approx(1.0)


def test_score_pairs_each_output_with_its_own_style(avg_vgg):
    """``score`` compares output ``i`` with style ``i`` (statistics and colour histogram): two
    outputs that are exactly their own styles score 0 on every style metric (they were all
    compared with the first style)."""
    m = evaluate.Metrics(avg_vgg)
    s0 = samples.style_image("mosaic", size=48)
    s1 = samples.style_image("waves", size=48)
    content = samples.content_image("chelsea", max_side=96)[:48, :48]
    outs = np.stack([s0, s1]).astype(np.float32)
    stats = [m.style_stats(m.features(s[None])) for s in (s0, s1)]
    rows = m.score(outs, m.features(content[None]), stats, [s0, s1])
    for row in rows:
        assert row["style_gram"] == pytest.approx(0.0, abs=1e-12)
        assert row["meanstd_relu5_1"] == pytest.approx(0.0, abs=1e-12)
        assert row["color_hist"] == pytest.approx(0.0, abs=1e-12)
    swapped = m.score(outs[::-1], m.features(content[None]), stats, [s0, s1])
    assert all(r["style_gram"] > 0 and r["color_hist"] > 0 for r in swapped)


def test_aspect_crop_is_the_largest_box_of_the_target_aspect():
    """The "style" baseline crops the style to the content's aspect ratio: the largest
    ``(h, w)`` inside the image with that ratio (too tall and too wide images both)."""
    assert evaluate._aspect_crop((100, 50), (10, 10)) == (50, 50)  # too tall
    assert evaluate._aspect_crop((50, 100), (10, 10)) == (50, 50)  # too wide
    assert evaluate._aspect_crop((90, 120), (30, 20)) == (90, 60)
    assert evaluate._aspect_crop((90, 120), (20, 40)) == (60, 120)
    assert evaluate._aspect_crop((64, 64), (64, 64)) == (64, 64)


def test_gatys_seconds_exclude_compilation(monkeypatch):
    """Each batch is run once with one iteration (compiling the loop and the paintings'
    targets) before the timed run; the timed run's seconds per image leave that out, and the
    longest warm-up is the method's ``compile_seconds``. (A fake clock: warm-ups take 10 + the
    batch index, full runs 3.)"""
    from types import SimpleNamespace

    from arbitrary_nst import gatys

    clock, calls = [0.0], []

    def fake_run(contents, styles, *, config, progress, vgg_params):
        calls.append((config.iterations, len(contents), [s[0].shape for s in styles]))
        clock[0] += 10 + len(calls) // 2 if config.iterations == 1 else 3
        return SimpleNamespace(images=np.zeros((len(contents), 4, 4, 3), np.float32))

    monkeypatch.setattr(gatys, "run", fake_run)
    monkeypatch.setattr(evaluate, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    m = evaluate.GatysMethod(iterations=7, batch=2, vgg_params={})
    styles = [np.zeros((5 + k, 6, 3), np.float32) for k in range(3)]
    r = m.run(np.zeros((4, 4, 3), np.float32), styles, ["a", "b", "c"])
    assert [c[:2] for c in calls] == [(1, 2), (7, 2), (1, 1), (7, 1)]
    assert calls[0][2] == calls[1][2] == [(5, 6, 3), (6, 6, 3)]  # the same paintings
    assert calls[2][2] == calls[3][2] == [(7, 6, 3)]
    assert r.seconds == [1.5, 1.5, 3.0] and m.compile_seconds == 11.0


# ------------------------------------------------- mutation-testing pass 3 (selection, summary,
# sheets, timing of the feed-forward methods, CLI)


def test_pick_takes_the_items_nearest_to_evenly_spread_positions():
    """``--num-contents 4`` of 6 files: the positions 0, 5/3, 10/3, 5 round to the files 0, 2,
    3, 5 (truncating them took 0, 1, 3, 5); n >= len or None takes all, n = 1 the first."""
    items = list("abcdef")
    assert evaluate._pick(items, 4) == list("acdf")
    assert evaluate._pick(items, 2) == list("af")
    assert evaluate._pick(items, 1) == ["a"]
    assert evaluate._pick(items, 6) == items and evaluate._pick(items, 9) == items
    assert evaluate._pick(items, None) == items


def test_mean_table_is_the_arithmetic_mean_per_method():
    """Means over the pairs (hand-computed: 1, 2, 6 -> 3, which a median would give as 2),
    with each method's pair count; text columns are no metrics."""
    rows = [{"method": "a", "content": c, "style": "s", "style_gram": g, "seconds": t}
            for c, g, t in (("x", 0.5, 1.0), ("y", 0.5, 2.0), ("z", 2.0, 6.0))]
    rows.append({"method": "b", "content": "x", "style": "s", "style_gram": 4.0, "seconds": 0.0})
    table = evaluate.mean_table(rows, ["a", "b"])
    assert table == {"a": {"style_gram": pytest.approx(1.0), "seconds": pytest.approx(3.0),
                           "pairs": 3},
                     "b": {"style_gram": 4.0, "seconds": 0.0, "pairs": 1}}


def test_summary_verdicts_count_ties_as_met_and_format_numbers(tmp_path):
    """The targets say "<=": a model whose style loss equals the peer's at a lower content loss
    meets the target, a pair tied on style is a win, a style loss exactly 1.5x Gatys' meets
    that target. Numbers: 3 significant digits below 1e4, scientific above, "n/a" for a
    non-finite mean; the compile, embedding and skipped lines as documented."""
    metrics = ("content_relu3_3", "content_relu4_2", "style_gram", "meanstd_relu5_1",
               "color_hist", "seconds")

    def row(method, pair, style, content):
        return {"method": method, "content": pair[0], "style": pair[1], "style_gram": style,
                "content_relu3_3": content, "content_relu4_2": 1.0, "meanstd_relu5_1": 2.0,
                "color_hist": 0.5, "seconds": 0.1}
    pairs = [("a", "x"), ("b", "x")]
    rows = ([row("model", p, 3.0, 0.5) for p in pairs] + [row("magenta_lite", p, 3.0, 1.0)
                                                          for p in pairs]
            + [row("gatys", p, 2.0, 1.0) for p in pairs])
    methods = ["model", "magenta_lite", "gatys"]
    means = {m: {k: float(np.mean([r[k] for r in rows if r["method"] == m])) for k in metrics}
             for m in methods}
    means["gatys"]["seconds"] = 123456.0
    means["gatys"]["color_hist"] = float("nan")
    means["gatys"]["meanstd_relu5_1"] = float("inf")
    info = {"contents": 2, "styles": 1, "size": 64,
            "compile_seconds": {"model": 1.234, "gatys": 12.0}, "embed_seconds": {"model": 0.0123}}
    skipped = [f"bad{i}.png: not an image" for i in range(5)]
    text = evaluate.summary_markdown(evaluate.EvalResult(
        rows=rows, means=means, skipped=skipped, out_dir=tmp_path, methods=methods, info=info))
    assert ("* model / magenta_lite: style 1.00x, content (relu3_3) 0.50x, relu5_1 mean/std "
            "1.00x, colour hist. 1.00x (target: style <= 1 at content <= 1: met)." in text)
    assert ("pairs where model has both lower style and lower content loss than magenta_lite: "
            "2 of 2." in text)
    assert "* model / gatys style: 1.50x (target <= 1.5x: met)." in text
    assert "| gatys | 1 | 1 | 2 | n/a | n/a | 1.235e+05 |" in text
    assert "| model | 0.5 | 1 | 3 | 2 | 0.5 | 0.1 |" in text
    assert "* compile / first call (s): model 1.23, gatys 12.00" in text
    assert "* style embedding (s, per style): model 0.012" in text
    assert ("* skipped 5 (unreadable images, or a method's contents it cannot take): "
            "bad0.png: not an image; bad1.png: not an image; bad2.png: not an image; ...") in text


def _solid(h, w, rgb):
    return np.broadcast_to(np.asarray(rgb, np.float32), (h, w, 3)).copy()


def test_contact_sheet_puts_each_output_at_its_content_row_and_style_column(tmp_path):
    """Rows are contents (the photo first), columns styles (the painting first): the cell of
    content a x style y shows a__y.png, a missing output is a white cell, and an output that
    is not square is centred in its cell (thumb 16, 2 px padding)."""
    red, blue, white = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0)
    contents = [("a", _solid(16, 16, (0.2,) * 3)), ("b", _solid(16, 16, (0.4,) * 3))]
    styles = [("x", _solid(16, 16, (0.0, 1.0, 0.0))), ("y", _solid(16, 16, (0.6,) * 3))]
    img_dir = tmp_path / "images"
    images.save_image(img_dir / "a__y.png", _solid(16, 16, red))
    images.save_image(img_dir / "b__x.png", _solid(8, 16, blue))  # wide: 8 rows of 16
    evaluate.contact_sheet(tmp_path / "sheet.png", img_dir, contents, styles, 16)
    sheet = images.load_image(tmp_path / "sheet.png")
    assert sheet.shape == (3 * 18 + 2, 3 * 18 + 2, 3)

    def cell(i, j):
        return sheet[2 + i * 18:2 + i * 18 + 16, 2 + j * 18:2 + j * 18 + 16]

    def close(x, rgb):
        return np.allclose(x, np.asarray(rgb, np.float32), atol=2 / 255)

    assert close(cell(0, 0), white) and close(cell(0, 1), (0.0, 1.0, 0.0))
    assert close(cell(0, 2), (0.6,) * 3)
    assert close(cell(1, 0), (0.2,) * 3) and close(cell(2, 0), (0.4,) * 3)
    assert close(cell(1, 2), red) and close(cell(1, 1), white) and close(cell(2, 2), white)
    wide = cell(2, 1)
    assert close(wide[:4], white) and close(wide[4:12], blue) and close(wide[12:], white)


def test_column_labels_are_cut_to_their_column():
    """At --thumb 64 the label "magenta_lite_fp32" ran into the next column's and the sheet
    read "magenta_lite  magenta_lite_identity": a label longer than its column is cut ("~");
    one that fits is written whole."""
    thumb = 64
    grid = np.ones((40, 3 * (thumb + 2) + 2, 3), np.float32)
    names = ["magenta_lite", "magenta_lite_fp32", "id"]
    img = evaluate._label(grid, [(2 + j * (thumb + 2), 1, n) for j, n in enumerate(names)],
                          width=thumb)
    ink = (img[:14] < 128).any(axis=(0, 2))  # columns with text pixels in the label row
    for j in range(1, 3):  # (nothing drawn in the 2 px gap before each next column)
        left = 2 + j * (thumb + 2)
        assert not ink[left - 2:left + 1].any(), j
    wide = evaluate._label(grid, [(2, 1, "id")], width=thumb)
    assert (wide[:14] < 128).any(axis=(0, 2))[:20].any()  # (a short label: drawn)


def test_side_by_side_shows_n_pairs_spread_over_all(tmp_path):
    """``side_by_side_pairs`` of the content x style pairs, spread evenly (2 of 4: the first
    and the last), one row each under a 14 px label strip: content, style, then each method."""
    contents = [("a", _solid(16, 16, (0.2,) * 3)), ("b", _solid(16, 16, (0.4,) * 3))]
    styles = [("x", _solid(16, 16, (0.0, 1.0, 0.0))), ("y", _solid(16, 16, (0.6,) * 3))]
    for name, rgb in (("a__x", (1.0, 0.0, 0.0)), ("b__y", (0.0, 0.0, 1.0)),
                      ("a__y", (0.0, 0.0, 0.0)), ("b__x", (0.0, 0.0, 0.0))):
        images.save_image(tmp_path / "images" / "identity" / f"{name}.png", _solid(16, 16, rgb))
    evaluate.side_by_side(tmp_path / "sbs.png", tmp_path / "images", ["identity"], contents,
                          styles, 16, 2)
    img = images.load_image(tmp_path / "sbs.png")
    assert img.shape == (14 + 2 * 18 + 2, 3 * 18 + 2, 3)

    def cell(i, j):
        y, x = 14 + 2 + i * 18, 2 + j * 18
        return img[y:y + 16, x:x + 16]

    want = [[(0.2,) * 3, (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)],  # a x x
            [(0.4,) * 3, (0.6,) * 3, (0.0, 0.0, 1.0)]]  # b x y
    for i, r in enumerate(want):
        for j, rgb in enumerate(r):
            np.testing.assert_allclose(cell(i, j), np.broadcast_to(rgb, (16, 16, 3)),
                                       atol=2 / 255, err_msg=str((i, j)))


@pytest.fixture
def small_set(tmp_path):
    """A 72x48 photo (32 px high at --size 48: VGG16's minimum, kept), a 40x40 one and a
    painting, all random."""
    rng = np.random.default_rng(3)
    for name, shape in (("content/wide", (48, 72, 3)), ("content/square", (40, 40, 3)),
                        ("style/paint", (40, 40, 3))):
        images.save_image(tmp_path / f"{name}.png", rng.uniform(0, 1, shape).astype(np.float32))
    return tmp_path


def test_the_smallest_sizes_are_accepted_and_methods_run_once(small_set, vgg):
    """--size 48 makes the 72x48 photo 48x32: 32 px is enough for VGG16 (kept, not "too
    thin"); --size 32 and --style-size 32 are the smallest allowed; a method named twice runs
    once."""
    r = evaluate.evaluate(small_set / "content", small_set / "style", small_set / "o1", size=48,
                          methods=["identity", "identity"], progress=False, vgg=vgg)
    assert r.skipped == [] and r.methods == ["identity"] and len(r.rows) == 2
    assert images.load_image(small_set / "o1" / "images" / "identity" /
                             "wide__paint.png").shape == (32, 48, 3)
    r = evaluate.evaluate(small_set / "content" / "square.png", small_set / "style",
                          small_set / "o2", size=32, style_size=32, methods=["identity"],
                          progress=False, vgg=vgg)
    assert r.skipped == [] and r.info["size"] == 32 and r.info["style_size"] == 32


def test_outputs_of_another_size_are_resized_to_the_content(small_set, vgg):
    """The safety net: a method that returned another size still writes (and is scored at)
    the content's size."""
    def factory(name, **kw):
        m = evaluate.make_method(name, **kw)
        run = m.run

        def smaller(content, styles, keys):
            r = run(content, styles, keys)
            return evaluate.MethodRun([images.resize(y, (20, 24)) for y in r.outputs],
                                      r.seconds)
        m.run = smaller
        return m

    r = evaluate.evaluate(small_set / "content" / "wide.png", small_set / "style",
                          small_set / "o", size=48, methods=["identity"], progress=False,
                          vgg=vgg, method_factory=factory)
    assert r.skipped == [] and len(r.rows) == 1
    out = images.load_image(small_set / "o" / "images" / "identity" / "wide__paint.png")
    assert out.shape == (32, 48, 3)


def test_cli_exits_1_when_an_image_was_skipped(small_set, capsys):
    """An unreadable painting is skipped with one line, the others are scored, and the run
    exits 1 (the module docstring's contract)."""
    (small_set / "style" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rc = evaluate.main(["--content", str(small_set / "content" / "square.png"), "--style",
                        str(small_set / "style"), "--out", str(small_set / "o"), "--size", "32",
                        "--methods", "identity", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "skipped: " in err and "broken.png" in err
    rows = json.loads((small_set / "o" / "results.json").read_text())["rows"]
    assert [(r["content"], r["style"]) for r in rows] == [("square", "paint")]


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_feed_forward_methods_embed_once_and_time_after_a_warm_up_per_shape(monkeypatch):
    """A feed-forward method embeds each painting once (cached by name), runs one untimed
    warm-up per content shape (compiles; the longest is ``compile_seconds``) and times each
    transfer alone. (A fake clock: embedding 5 s, warm-up 20 s at the first shape and 8 s at
    the second, transfer 1 s.)"""
    clock = _FakeClock()
    monkeypatch.setattr(evaluate, "time", clock)
    calls = []

    class Fake(evaluate._EmbeddingMethod):
        name = "fake"

        def __init__(self):
            super().__init__()
            self.shapes = set()

        def _embed(self, style):
            calls.append(("embed", float(style[0, 0, 0])))
            clock.now += 5
            return float(style[0, 0, 0])

        def _transfer(self, content, e):
            calls.append(("transfer", content.shape[:2]))
            first = content.shape[:2] not in self.shapes
            self.shapes.add(content.shape[:2])
            clock.now += (20 if content.shape[0] == 4 else 8) if first else 1
            return np.full_like(content, e)

    m = Fake()
    styles = [np.full((3, 3, 3), v, np.float32) for v in (0.25, 0.75)]
    r = m.run(np.zeros((4, 4, 3), np.float32), styles, ["s", "t"])
    assert r.seconds == [1, 1] and m.compile_seconds == 20 and m.embed_seconds == [5, 5]
    assert [float(y[0, 0, 0]) for y in r.outputs] == [0.25, 0.75]
    r = m.run(np.zeros((6, 4, 3), np.float32), styles, ["s", "t"])
    assert r.seconds == [1, 1] and m.compile_seconds == 20 and m.embed_seconds == [5, 5]
    assert [c for c in calls if c[0] == "embed"] == [("embed", 0.25), ("embed", 0.75)]
    assert [c[1] for c in calls if c[0] == "transfer"] == [(4, 4)] * 3 + [(6, 4)] * 3


def test_evaluate_records_the_mean_embedding_time_and_the_transfer_seconds(small_set, vgg,
                                                                             monkeypatch):
    """results: ``seconds`` per row is the timed transfer, ``embed_seconds`` the mean
    embedding time per painting (3 s and 5 s -> 4 s), ``compile_seconds`` the warm-up."""
    clock = _FakeClock()
    monkeypatch.setattr(evaluate, "time", clock)
    rng = np.random.default_rng(4)
    images.save_image(small_set / "style" / "other.png",
                      rng.uniform(0, 1, (40, 40, 3)).astype(np.float32))
    cost = iter([3, 5])

    class Fake(evaluate._EmbeddingMethod):
        name = "model"

        def _embed(self, style):
            clock.now += next(cost)
            return None

        def _transfer(self, content, e):
            clock.now += 0.5
            return content

    r = evaluate.evaluate(small_set / "content" / "square.png", small_set / "style",
                          small_set / "o", size=32, methods=["model"], progress=False, vgg=vgg,
                          method_factory=lambda name, **kw: Fake())
    assert r.info["embed_seconds"] == {"model": 4.0}
    assert r.info["compile_seconds"] == {"model": 0.5}
    assert [row["seconds"] for row in r.rows] == [0.5, 0.5]


def test_a_resume_that_makes_no_image_keeps_the_earlier_runs_times(small_set, vgg, monkeypatch):
    """A --resume that found every image made measured no compile or embedding: results.json
    and the summary lost the times the earlier run had recorded."""
    clock = _FakeClock()
    monkeypatch.setattr(evaluate, "time", clock)

    class Fake(evaluate._EmbeddingMethod):
        name = "model"

        def _embed(self, style):
            clock.now += 3
            return None

        def _transfer(self, content, e):
            clock.now += 0.5
            return content

    kw = dict(size=32, methods=["model"], progress=False, vgg=vgg,
              method_factory=lambda name, **k: Fake())
    content, out = small_set / "content" / "square.png", small_set / "o"
    r1 = evaluate.evaluate(content, small_set / "style", out, **kw)
    assert r1.info["embed_seconds"] == {"model": 3.0} and r1.info["compile_seconds"] == {"model": 0.5}
    r2 = evaluate.evaluate(content, small_set / "style", out, resume=True, **kw)
    assert r2.info["embed_seconds"] == {"model": 3.0} and r2.info["compile_seconds"] == {"model": 0.5}
    assert r2.info["times_from_earlier_run"] == ["model"]
    assert json.loads((out / "results.json").read_text())["info"]["compile_seconds"] == {"model": 0.5}
    assert "times of model above: from the earlier run" in (out / "summary.md").read_text()
    # a resume that makes an image measures its own
    images.save_image(small_set / "style" / "other.png", _plain_painting(0.3))
    r3 = evaluate.evaluate(content, small_set / "style", out, resume=True, **kw)
    assert r3.info["embed_seconds"] == {"model": 3.0} and "times_from_earlier_run" not in r3.info


def test_gatys_compile_seconds_are_the_longest_warm_up(monkeypatch):
    """``compile_seconds`` is the longest warm-up of the batches (the first here: 10 s, then
    4 s), not the last one."""
    from types import SimpleNamespace

    from arbitrary_nst import gatys

    clock = _FakeClock()
    warm = iter([10.0, 4.0])

    def fake_run(contents, styles, *, config, progress, vgg_params):
        clock.now += next(warm) if config.iterations == 1 else 2.0
        return SimpleNamespace(images=np.zeros((len(contents), 4, 4, 3), np.float32))

    monkeypatch.setattr(gatys, "run", fake_run)
    monkeypatch.setattr(evaluate, "time", clock)
    m = evaluate.GatysMethod(iterations=5, batch=1, vgg_params={})
    r = m.run(np.zeros((4, 4, 3), np.float32), [np.zeros((5, 5, 3), np.float32)] * 2, ["a", "b"])
    assert r.seconds == [2.0, 2.0] and m.compile_seconds == 10.0


def test_a_resume_of_some_contents_keeps_the_record_of_the_others(small_set, vgg):
    """A resume of one content (--num-contents 1) must not forget what the other content's
    images were made from: that photo changed afterwards is still refused by a later resume of
    all (its stale image was reused and scored against the new photo)."""
    kw = dict(methods=["identity"], size=48, progress=False, vgg=vgg)
    content, out = small_set / "content", small_set / "o"
    evaluate.evaluate(content, small_set / "style", out, **kw)
    r = evaluate.evaluate(content, small_set / "style", out, resume=True, num_contents=1, **kw)
    assert [row["content"] for row in r.rows] == ["square"]
    wide = content / "wide.png"
    images.save_image(wide, images.load_image(wide)[:, ::-1], overwrite=True)
    with pytest.raises(ConfigError, match=r"--resume: 1 input file\(s\) changed .*content/wide"):
        evaluate.evaluate(content, small_set / "style", out, resume=True, **kw)


def test_a_run_without_resume_remakes_images_of_an_unknown_origin(small_set, vgg):
    """Images without settings.json block only --resume (what made them is unknown): a run
    without it makes them again and records its settings."""
    kw = dict(methods=["identity"], size=48, progress=False, vgg=vgg)
    out = small_set / "o"
    evaluate.evaluate(small_set / "content", small_set / "style", out, **kw)
    (out / "settings.json").unlink()
    r = evaluate.evaluate(small_set / "content", small_set / "style", out, **kw)
    assert len(r.rows) == 2
    assert json.loads((out / "settings.json").read_text())["methods"]["identity"]["size"] == 48


def test_no_readable_painting_is_one_error(small_set, vgg):
    """Readable photos but no readable painting: one ConfigError, not a traceback later."""
    styles = small_set / "broken_styles"
    styles.mkdir()
    (styles / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ConfigError, match="no readable content or style images"):
        evaluate.evaluate(small_set / "content", styles, small_set / "o", methods=["identity"],
                          size=48, progress=False, vgg=vgg)


@pytest.mark.parametrize("size, fit_size", [(50, 48), (300, 256)])
def test_model_fit_fits_at_the_evaluation_scale(small_set, vgg, size, fit_size):
    """model_fit fits on photos at the evaluation's working square: --size rounded down to a
    multiple of 4, at most fit_style's 256 (hand-computed: 50 -> 48, 300 -> 256), into
    --fitted or OUT/fitted. (The method itself is replaced: only what it is given is
    checked.)"""
    images.save_image(small_set / "fit" / "photo.png", np.full((40, 40, 3), 0.5, np.float32))
    given = {}

    def factory(name, **kw):
        given.update(kw)
        return evaluate.IdentityMethod()

    evaluate.evaluate(small_set / "content" / "square.png", small_set / "style",
                      small_set / "o", size=size, methods=["model_fit"],
                      fit_photos=small_set / "fit", fit_steps=7, fitted_dir=small_set / "fits",
                      progress=False, vgg=vgg, method_factory=factory)
    assert given["fit_size"] == fit_size and given["fit_steps"] == 7
    assert [p.name for p in given["fit_photos"]] == ["photo.png"]
    assert given["fitted_dir"] == small_set / "fits"


def test_a_resume_knows_the_model_file_by_its_bytes(tmp_path):
    """The model file was known by its size and mtime: the same model copied or downloaded
    again over it made --resume refuse ("model_file [...] -> [...]"). Its bytes now; another
    model is still refused, and a settings.json of an earlier version (size and mtime) still
    guards a resume."""
    model, out = tmp_path / "m.safetensors", tmp_path / "out"
    model.write_bytes(b"weights v1")
    out.mkdir()
    info = {"size": 48, "model": str(model)}

    def check(resume=True):
        evaluate._check_resume_settings(out, info, str(model), resume, ["model"])

    check(resume=False)
    os.utime(model, ns=(1, 1))  # (cp, a new download: the same bytes, another mtime)
    check()
    model.write_bytes(b"weights v2")
    with pytest.raises(ConfigError, match="holds model images made with other settings "
                                          r"\(model_file "):
        check()
    st = model.stat()  # an earlier version's record of this very file: accepted
    rec = json.loads((out / "settings.json").read_text())
    rec["methods"]["model"]["model_file"] = [st.st_size, st.st_mtime_ns]
    (out / "settings.json").write_text(json.dumps(rec))
    check()
    rec["methods"]["model"]["model_file"] = [st.st_size, st.st_mtime_ns + 1]
    (out / "settings.json").write_text(json.dumps(rec))
    with pytest.raises(ConfigError, match="model_file"):
        check()


def test_a_flat_settings_file_of_an_older_version_still_guards_a_resume(small_set, vgg):
    """settings.json written before per-method settings (one flat object) applies to every
    method's images: a resume at another size is refused, not scored as made at it."""
    kw = dict(methods=["identity"], progress=False, vgg=vgg)
    out = small_set / "o"
    evaluate.evaluate(small_set / "content", small_set / "style", out, size=48, **kw)
    new = json.loads((out / "settings.json").read_text())["methods"]["identity"]
    (out / "settings.json").write_text(json.dumps(new))  # the flat layout of the old version
    with pytest.raises(ConfigError, match=r"holds identity images made with other settings "
                                          r"\(size 48 -> 56\)"):
        evaluate.evaluate(small_set / "content", small_set / "style", out, size=56,
                          resume=True, **kw)


def test_an_early_error_leaves_no_empty_out_folder(tmp_path, capsys):
    """A missing --content was one error line but left the (new, empty) --out folder."""
    assert evaluate.main(["--content", str(tmp_path / "nope"), "--style", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "new" / "ev")]) == 1
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_out_among_symlinked_inputs_is_refused(tmp_path, capsys):
    """A folder of symlinks to photos elsewhere, given as --content and as --out: the check
    resolved the links (the photos are not under --out) and the sheets were written among the
    links, to be taken as photos by the next run."""
    real = tmp_path / "real"
    real.mkdir()
    links = tmp_path / "links"
    links.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 60 * i + 30, np.uint8)).save(real / f"p{i}.png")
        os.symlink(real / f"p{i}.png", links / f"p{i}.png")
    assert evaluate.main(["--content", str(links), "--style", str(real), "--out", str(links),
                          "--methods", "identity", "--size", "32", "--no-progress"]) == 1
    assert "--out is inside the --content folder" in capsys.readouterr().err
    assert sorted(p.name for p in links.iterdir()) == ["p0.png", "p1.png"]


def test_every_pair_skipped_is_one_error_and_json_has_no_nan(tmp_path, monkeypatch, capsys):
    """A method that skipped every pair (refinement refuses a flat photo) ended in a KeyError
    traceback while the summary was written; a method without pairs wrote NaN into
    results.json, which JSON.parse and strict readers refuse."""
    from arbitrary_nst.errors import ImageError

    c, st = tmp_path / "c", tmp_path / "s"
    c.mkdir(), st.mkdir()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(c / "flat.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(
        st / "s.png")

    def refuse(self, content, styles, style_keys):
        raise ImageError(None, "a flat photo")

    monkeypatch.setattr(evaluate.IdentityMethod, "run", refuse)
    argv = ["--content", str(c), "--style", str(st), "--out", str(tmp_path / "e"),
            "--methods", "identity", "--size", "32", "--no-progress"]
    assert evaluate.main(argv) == 1
    err = capsys.readouterr().err
    assert "error: no pair could be evaluated (1 skipped: identity: content flat: a flat " \
           "photo); nothing written" in err and "Traceback" not in err
    monkeypatch.undo()
    evaluate._write_json(tmp_path / "x.json", {"means": {"m": {"style": float("nan"),
                                                              "b": np.float32("inf")}}})
    assert json.loads((tmp_path / "x.json").read_text(),
                      parse_constant=lambda c: pytest.fail(c)) == {"means": {"m": {
                          "style": None, "b": None}}}


def test_a_run_that_fails_while_making_its_methods_leaves_the_earlier_run_as_it_was(tmp_path,
                                                                                   capsys):
    """--style-size 100000 (checked by the Stylizer) failed after settings.json and every
    method's times.json had been rewritten: the next --resume refused the earlier run ("made
    with other settings") and its images were made again."""
    c, st = tmp_path / "c", tmp_path / "s"
    c.mkdir(), st.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 72, 3), np.uint8)).save(c / "p.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(st / "s.png")
    argv = ["--content", str(c), "--style", str(st), "--out", str(tmp_path / "e"),
            "--methods", "identity", "--size", "64", "--no-progress"]
    assert evaluate.main(argv) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "e").rglob("*.json")}
    assert any(p.name == "settings.json" for p in before)
    assert evaluate.main([*argv[:-4], "identity,model", "--size", "64", "--no-progress",
                          "--style-size", "100000"]) == 1
    assert "style size" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (tmp_path / "e").rglob("*.json")} == before
    assert evaluate.main([*argv, "--resume"]) == 0


def test_a_new_run_into_an_earlier_out_removes_only_that_runs_sheets_of_other_methods(
        small_set, vgg):
    """Run 2 (identity) into run 1's --out (identity, style) left run 1's sheet_style.png next
    to its results, as if it had made it. It is removed (results.json of run 1 lists it);
    style's images stay for a --resume and are named in the summary; a user's file is kept."""
    kw = dict(size=32, progress=False, vgg=vgg)
    content, out = small_set / "content" / "square.png", small_set / "o"
    evaluate.evaluate(content, small_set / "style", out, methods=["identity", "style"], **kw)
    assert (out / "sheet_style.png").is_file()
    (out / "notes.txt").write_text("mine")
    (out / "sheet_mine.png").write_bytes((out / "sheet_style.png").read_bytes())
    r = evaluate.evaluate(content, small_set / "style", out, methods=["identity"], **kw)
    assert not (out / "sheet_style.png").exists() and (out / "sheet_identity.png").is_file()
    assert (out / "notes.txt").read_text() == "mine" and (out / "sheet_mine.png").is_file()
    assert (out / "images" / "style" / "square__paint.png").is_file()
    assert r.info["other_methods_images"] == ["style"]
    assert "not in these results: the images of style" in (out / "summary.md").read_text()
    # a sheet_style.png that no earlier results.json lists is not the evaluation's: kept
    (out / "sheet_style.png").write_bytes(b"a user's file")
    evaluate.evaluate(content, small_set / "style", out, methods=["identity"], **kw)
    assert (out / "sheet_style.png").read_bytes() == b"a user's file"
    # a resume of fewer methods too; a run of them all names no other images
    r = evaluate.evaluate(content, small_set / "style", out, methods=["identity", "style"],
                          resume=True, **kw)
    assert "other_methods_images" not in r.info and (out / "sheet_style.png").is_file()
    evaluate.evaluate(content, small_set / "style", out, methods=["identity"], resume=True, **kw)
    assert not (out / "sheet_style.png").exists() and (out / "sheet_mine.png").is_file()


def test_stale_sheets_are_only_sheets_an_earlier_results_json_lists(tmp_path):
    """Only sheet_<method>.png files of evaluation methods that the earlier results.json
    lists are removed: not a user's sheet_mine.png, a folder or a link of that name, nor
    anything when results.json is unreadable or not the evaluation's."""
    for n in ("style", "mine", "identity"):
        (tmp_path / f"sheet_{n}.png").write_bytes(b"x")
    (tmp_path / "sheet_gatys.png").mkdir()
    (tmp_path / "sheet_model.png").symlink_to(tmp_path / "sheet_mine.png")
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"methods": ["identity", "style", "mine", "gatys", "model"]}))
    assert evaluate._stale_sheets(tmp_path, ["identity"]) == [tmp_path / "sheet_style.png"]
    for foreign in ("[1]", "{", json.dumps({"methods": {"style": 1}})):
        results.write_text(foreign)
        assert evaluate._stale_sheets(tmp_path, ["identity"]) == [], foreign
    (tmp_path / "images" / "style").mkdir(parents=True)  # (an empty folder: no images left)
    (tmp_path / "images" / "model").mkdir()
    (tmp_path / "images" / "model" / "a__b.png").write_bytes(b"x")
    assert evaluate._other_methods_images(tmp_path, ["identity"]) == ["model"]


class _FakeFitStylizer:
    """Stands in for the Stylizer of model_fit (no model, no compile): a fit "takes" 7 s of
    the fake clock, stylizing returns the photo; it records the palettes it is given."""

    style_size = 256

    def __init__(self, clock):
        self.clock, self.fitted, self.palettes = clock, [], []

    def _model_fingerprint(self):
        return "fake"

    def fit_style(self, style, photos, *, steps, size):
        from arbitrary_nst import fit_style

        self.fitted.append(float(style.mean()))
        self.clock.now += 7.0
        return fit_style.FittedStyle(np.zeros(4, np.float32), np.zeros(3, np.float32),
                                     np.zeros(12, np.float32), np.zeros(steps + 1, np.float32),
                                     "fake", {"steps": steps, "size": size, "style_size": 256})

    def stylize(self, content, fitted, *, palette, strength):
        self.palettes.append(palette)
        return content


@pytest.fixture
def fake_fit(small_set, monkeypatch):
    """model_fit with :class:`_FakeFitStylizer` on a fake clock; a fit photo in small_set/fit."""
    clock = _FakeClock()
    monkeypatch.setattr(evaluate, "time", clock)
    made = []

    def load(model_path, vgg, style_size, backend="auto"):
        made.append(_FakeFitStylizer(clock))
        return made[-1]

    monkeypatch.setattr(evaluate, "_load_stylizer", load)
    images.save_image(small_set / "fit" / "photo.png", np.full((40, 40, 3), 0.5, np.float32))
    return made


def test_model_fit_fits_are_shown_on_the_progress_bar(small_set, vgg, fake_fit, capsys):
    """The bar of model_fit sat still (at 0 images) through the fits, minutes each: it names
    the style being fitted; with progress off nothing is printed for them."""
    images.save_image(small_set / "style" / "other.png", _plain_painting(0.2))
    kw = dict(methods=["model_fit"], size=32, vgg=vgg, fit_photos=small_set / "fit")
    content = small_set / "content" / "square.png"
    evaluate.evaluate(content, small_set / "style", small_set / "o1", progress=True, **kw)
    err = capsys.readouterr().err
    assert "fitting other (style 1/2)" in err and "fitting paint (style 2/2)" in err, err
    assert "fitting" not in re.split(r"[\r\n]", err.rstrip())[-1], err  # (cleared once fitted)
    evaluate.evaluate(content, small_set / "style", small_set / "o2", progress=False, **kw)
    assert capsys.readouterr().err == "" and len(fake_fit[-1].fitted) == 2


def test_model_fit_status_counts_the_styles_each_call_fits(small_set, fake_fit):
    """The bar's "(style i/n)" counts the styles this call still fits (an embedded one and a
    repeated key are not fits), and each call clears it when done."""
    m = evaluate.ModelFitMethod(photos=[small_set / "fit" / "photo.png"], steps=1, size=32)
    said = []
    m.status = said.append
    s1, s2 = (np.full((40, 40, 3), v, np.float32) for v in (0.1, 0.3))
    c = np.full((32, 32, 3), 0.5, np.float32)
    m.run(c, [s1], ["a"])
    m.run(c, [s1, s2, s2], ["a", "b", "b"])
    assert said == ["fitting a (style 1/1)", "", "fitting b (style 1/1)", ""]


def test_model_fit_status_leaves_out_the_fits_it_reuses(small_set, fake_fit):
    """A fit reused from --fitted is no fit: with one of two paintings fitted earlier, the bar
    said "fitting b (style 2/2)" for the only fit this call made."""
    m = evaluate.ModelFitMethod(photos=[small_set / "fit" / "photo.png"], steps=1, size=32,
                                fitted_dir=small_set / "fits")
    s1, s2 = (np.full((40, 40, 3), v, np.float32) for v in (0.1, 0.3))
    c = np.full((32, 32, 3), 0.5, np.float32)
    m.run(c, [s1], ["a"])
    again = evaluate.ModelFitMethod(photos=[small_set / "fit" / "photo.png"], steps=1, size=32,
                                    fitted_dir=small_set / "fits")
    said = []
    again.status = said.append
    again.run(c, [s1, s2], ["a", "b"])
    assert said == ["fitting b (style 1/1)", ""] and again.reused == ["a"]
    assert len(fake_fit[-1].fitted) == 1  # (b only)


def test_a_reused_fit_is_not_reported_as_fitting_time(small_set, vgg, fake_fit, capsys):
    """A fit loaded from --fitted (an earlier run's) was timed as a fit: its load time went
    into embed_seconds (the fit time per style of results.json and the summary). Run 2 fits
    one new painting (7 s) and reuses one: 7 s per fit, not (7 + 0) / 2."""
    kw = dict(methods=["model_fit"], size=32, progress=False, vgg=vgg,
              fit_photos=small_set / "fit", fitted_dir=small_set / "fits")
    content = small_set / "content" / "square.png"
    r1 = evaluate.evaluate(content, small_set / "style", small_set / "o1", **kw)
    assert r1.info["embed_seconds"] == {"model_fit": 7.0} and "fits_reused" not in r1.info
    images.save_image(small_set / "style" / "other.png", _plain_painting(0.2))
    r2 = evaluate.evaluate(content, small_set / "style", small_set / "o2", **kw)
    assert len(fake_fit[-1].fitted) == 1  # only the new painting was fitted
    assert r2.info["embed_seconds"] == {"model_fit": 7.0}
    assert r2.info["fits_made"] == 1 and r2.info["fits_reused"] == 1 and r1.info["fits_made"] == 1
    r3 = evaluate.evaluate(content, small_set / "style", small_set / "o3", **kw)
    assert fake_fit[-1].fitted == [] and r3.info["fits_made"] == 0
    assert "model_fit" not in r3.info["embed_seconds"] and r3.info["fits_reused"] == 2
    summary = (small_set / "o3" / "summary.md").read_text()
    assert "model_fit: 2 fit(s) reused from --fitted" in summary and "0 made" in summary
    assert "(the fit time above)" not in summary  # (no fit made: no fit time to point to)
    assert "1 made by this run (the fit time above)" in (small_set / "o2" / "summary.md"
                                                         ).read_text()
    assert "style embedding" not in summary


def test_palette_help_names_every_method_it_reaches(small_set, vgg, fake_fit):
    """--palette's help named 'model' and 'model_refine' only; it also reaches model_fit's
    stylization (as `infer.py --style fitted.npz --palette A` does)."""
    helps = {a.dest: a.help for a in evaluate.build_parser()._actions}
    for m in ("'model'", "'model_refine'", "'model_fit'"):
        assert m in helps["palette"], helps["palette"]
    evaluate.evaluate(small_set / "content" / "square.png", small_set / "style",
                      small_set / "o", methods=["model_fit"], size=32, progress=False, vgg=vgg,
                      fit_photos=small_set / "fit", palette=0.3)
    assert fake_fit[-1].palettes == [0.3, 0.3]  # (the warm-up call and the timed one)


def test_fit_photos_without_model_fit_is_refused(small_set, vgg):
    """--fit-photos with --methods that leave out model_fit was ignored without a word."""
    with pytest.raises(ConfigError, match="--fit-photos is for method model_fit"):
        evaluate.evaluate(small_set / "content", small_set / "style", small_set / "o",
                          methods=["identity"], size=48, progress=False, vgg=vgg,
                          fit_photos=small_set / "content")
    assert not (small_set / "o").exists() or not any((small_set / "o").iterdir())


def test_a_camera_raw_next_to_its_photo_is_skipped_before_the_picks(small_set, vgg, capsys):
    """Files that are images but not read here (a camera's raw next to its JPEG) are skipped
    with their reason before the contents and paintings are picked: ``wide.CR2`` took a
    pick, or stopped the run as a second "wide"."""
    # (the style's name holds ESC [31m: escaped in its one "skipped:" line, not sent raw)
    raw, style_raw = small_set / "content" / "wide.CR2", small_set / "style" / "pa\x1b[31mint.NEF"
    raw.write_bytes(np.random.default_rng(4).bytes(256))
    style_raw.write_bytes(np.random.default_rng(5).bytes(256))
    r = evaluate.evaluate(small_set / "content", small_set / "style", small_set / "o", size=48,
                          methods=["identity"], num_contents=2, progress=False, vgg=vgg)
    assert sorted((row["content"], row["style"]) for row in r.rows) == [("square", "paint"),
                                                                        ("wide", "paint")]
    assert r.skipped == [f"{p}: {images.unreadable_reason(p)}" for p in (raw, style_raw)]
    err = capsys.readouterr().err
    assert f"skipped: {raw}: CR2 camera raw files are not read here" in err
    assert f"skipped: {small_set / 'style'}/pa\\x1b[31mint.NEF: NEF camera raw files are not " \
           "read here" in err and "\x1b" not in err


def test_model_methods_run_on_the_backend_asked_and_a_resume_keeps_to_it(small_set, vgg):
    """``backend`` reaches our model's methods: "auto" (the default, as infer.py runs) is
    onnxruntime on this CPU, so the times are what users get (they were JAX's, 2-3x slower);
    the two backends' images are at most one level apart. The backend is recorded: a resume on
    the other one is refused, and a settings.json of a version before it made JAX images."""
    kw = dict(methods=["model"], size=48, progress=False, vgg=vgg)
    content, style = small_set / "content", small_set / "style"
    ra = evaluate.evaluate(content, style, small_set / "a", **kw)
    rj = evaluate.evaluate(content, style, small_set / "j", backend="jax", **kw)
    assert (ra.info["backend"], rj.info["backend"]) == ("onnxruntime", "jax")
    assert json.loads((small_set / "a" / "results.json").read_text())["info"][
        "backend"] == "onnxruntime"
    for name in ("wide__paint.png", "square__paint.png"):
        a, j = (np.asarray(Image.open(small_set / d / "images" / "model" / name), np.int16)
                for d in ("a", "j"))
        assert np.abs(a - j).max() <= 1, name
    with pytest.raises(ConfigError, match=r"holds model images made with other settings "
                                          r"\(backend 'jax' -> 'onnxruntime'\); use a new "
                                          r"--out or the same settings \(--backend jax\)"):
        evaluate.evaluate(content, style, small_set / "j", resume=True, **kw)
    again = evaluate.evaluate(content, style, small_set / "j", resume=True, backend="jax", **kw)
    assert [r["seconds"] for r in again.rows] == [r["seconds"] for r in rj.rows]
    settings = small_set / "j" / "settings.json"
    old = json.loads(settings.read_text())
    del old["methods"]["model"]["backend"]  # (written before --backend)
    settings.write_text(json.dumps(old))
    evaluate.evaluate(content, style, small_set / "j", resume=True, backend="jax", **kw)
    settings.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=r"\(backend 'jax' -> 'onnxruntime'\)"):
        evaluate.evaluate(content, style, small_set / "j", resume=True, **kw)
    for methods in (["model"], ["identity"]):  # (checked without a model method too)
        with pytest.raises(ConfigError, match="backend must be one of"):
            evaluate.evaluate(content, style, small_set / "x", backend="tpu",
                              **{**kw, "methods": methods})
        assert not (small_set / "x").exists()


def test_every_model_method_is_loaded_with_the_backend_asked(monkeypatch, small_set):
    """``backend`` reaches the Stylizer of model, model_refine and model_fit alike (only model's
    was checked: the other two ran on "auto" whatever was asked); the default is "auto"."""
    asked = []
    monkeypatch.setattr(evaluate, "_load_stylizer",
                        lambda model_path, vgg, style_size, backend="auto": asked.append(backend))
    fit = {"fit_photos": [small_set / "style" / "paint.png"]}
    for backend in ("jax", "onnxruntime", None):
        for name in ("model", "model_refine", "model_fit"):
            asked.clear()
            kw = {} if backend is None else {"backend": backend}
            evaluate.make_method(name, **kw, **(fit if name == "model_fit" else {}))
            assert asked == [backend or "auto"], (name, backend)


def test_info_backend_is_none_when_the_methods_ran_on_two(small_set, vgg):
    """``info["backend"]`` names the one backend our methods ran on; methods of a
    ``method_factory`` on two backends (or none: no stylizer) record None, not either one."""
    class Fake(evaluate.Method):
        def __init__(self, name, backend):
            self.name = name
            if backend is not None:
                self.stylizer = type("S", (), {"backend": backend})()

        def run(self, content, styles, keys):
            return evaluate.MethodRun([content] * len(styles), [0.1] * len(styles))

    kw = dict(methods=["model", "model_refine"], size=48, progress=False, vgg=vgg)
    for backends, want in (({"model": "jax", "model_refine": "onnxruntime"}, None),
                           ({"model": "jax", "model_refine": None}, "jax"),
                           ({"model": None, "model_refine": None}, None)):
        r = evaluate.evaluate(small_set / "content", small_set / "style", small_set / "o",
                              method_factory=lambda name, **k: Fake(name, backends[name]), **kw)
        assert r.info["backend"] == want, backends


def test_the_cli_backend_option_reaches_the_run(small_set, monkeypatch, capsys):
    """``--backend jax`` is the backend the model ran on (results.json); under the default
    "auto" a model onnxruntime cannot load runs on JAX with a one-line warning."""
    from arbitrary_nst import onnx_export
    from arbitrary_nst.errors import ModelError

    argv = ["--content", str(small_set / "content" / "square.png"), "--style",
            str(small_set / "style"), "--size", "40", "--methods", "model", "--no-progress"]
    assert evaluate.main([*argv, "--out", str(small_set / "j"), "--backend", "jax"]) == 0
    info = json.loads((small_set / "j" / "results.json").read_text())["info"]
    assert info["backend"] == "jax"
    capsys.readouterr()

    def cannot(*a, **k):
        raise ModelError("no such operator")

    monkeypatch.setattr(onnx_export, "OnnxTransfer", cannot)
    assert evaluate.main([*argv, "--out", str(small_set / "a")]) == 0
    err = capsys.readouterr().err
    assert ("warning: onnxruntime cannot run this model (no such operator); running on JAX\n"
            in err), err
    assert "UserWarning" not in err and "warnings.warn" not in err, err
    info = json.loads((small_set / "a" / "results.json").read_text())["info"]
    assert info["backend"] == "jax"
