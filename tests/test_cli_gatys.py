"""``infer.py gatys`` / ``analyze`` front end, called in-process through ``main([...])``.

The loss layers match ``tests/test_gatys.py`` (content relu1_1:0 + relu2_2, style relu1_1 +
relu2_1) and images are 32 px, so the compiled L-BFGS program is shared when both files run in
one process. I/O error cases use ``--iters 0`` and never compile anything.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arbitrary_nst.cli import COMMANDS, main, parse_layers
from arbitrary_nst.errors import ConfigError

LOSS = ["--content-layers", "relu1_1:0,relu2_2:1", "--style-layers", "relu1_1,relu2_1",
        "--style-weight", "3", "--tv-weight", "10"]
REPO = Path(__file__).resolve().parents[1]


def _png(path: Path, w: int, h: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx / w, yy / h, 0.5 + 0.3 * np.sin(xx / 3.0)], -1)
    img = np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    stripes = (np.indices((32, 32)).sum(0) // 3 % 2)[..., None] * np.array([[[200, 180, 20]]])
    Image.fromarray((stripes + 30).astype(np.uint8)).save(d / "style.png")
    _png(d / "style2.png", 40, 40, 9)
    (d / "notimage.png").write_bytes(b"this is not a PNG file at all")
    return {"dir": d, "a": _png(d / "a.png", 32, 32, 0), "b": _png(d / "b.png", 64, 64, 1),
            "wide": _png(d / "wide.png", 72, 48, 2), "sq48": _png(d / "sq48.png", 48, 48, 3),
            "style": d / "style.png", "style2": d / "style2.png",
            "bad": d / "notimage.png"}


def gatys_args(files, out, *extra, contents=("a",), size=32, iters=3):
    """The command line; an option of ``extra`` that takes one value replaces the default's
    (an option that takes one value given twice is a usage error)."""
    base = ["--size", str(size), "--iters", str(iters), *LOSS]
    pairs = [base[i:i + 2] for i in range(0, len(base), 2)]
    kept = [v for opt, val in pairs if opt not in extra for v in (opt, val)]
    return ["gatys", "--content", *[str(files[c]) for c in contents], "--style",
            str(files["style"]), "--out", str(out), *kept, "--quiet", *extra]


def settings_in_name(args: list[str]) -> str:
    """What a batch output name of the gatys command line ``args`` carries after ``__gatys``:
    its settings off their defaults (test_gatys_batch_names_carry_their_settings checks the
    names themselves)."""
    from arbitrary_nst.cli import _gatys_settings, build_parser, gatys_config_from_args

    a = build_parser().parse_args(args)
    return _gatys_settings(gatys_config_from_args(a), a.size)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_help_documents_every_option_with_defaults(capsys):
    assert main(["gatys", "--help"]) == 0
    out = capsys.readouterr().out
    for opt in ("--content", "--style", "--style-weights", "--out", "--size", "--iters",
                "--optimizer", "--content-weight", "--style-weight", "--tv-weight",
                "--content-layers", "--style-layers", "--depth-growth", "--style-statistic",
                "--init", "--seed", "--style-scale", "--preserve-color", "--stages",
                "--stage-iters", "--param", "--pooling", "--normalized-vgg", "--overwrite"):
        assert opt in out, opt
    assert "(default: 512)" in out and "(default: lbfgs)" in out
    assert main(["analyze", "--help"]) == 0
    assert "--quick" in capsys.readouterr().out
    assert {"gatys", "analyze"} <= set(COMMANDS)


def test_gatys_writes_result(files, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(gatys_args(files, out)) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (32, 32, 3)
    src = np.asarray(Image.open(files["a"])).astype(float)
    assert np.abs(img - src).mean() > 1.0  # stylized
    # never overwrite without --overwrite
    assert main(gatys_args(files, out, iters=0)) == 1
    assert "exists" in one_error_line(capsys)
    assert main(gatys_args(files, out, "--overwrite", iters=0)) == 0


def test_progress_bar_shows_iterations_and_terms(files, tmp_path, capsys):
    args = [a for a in gatys_args(files, tmp_path / "p.png") if a != "--quiet"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "gatys" in err and "3/3" in err
    for term in ("total", "content", "style", "tv"):
        assert f"{term}=" in err


def test_batch_groups_by_working_size_and_keeps_aspect(files, tmp_path):
    outdir = tmp_path / "outs"
    args = gatys_args(files, outdir, "--optimizer", "adam", contents=("sq48", "b", "wide"),
                      size=48, iters=2)
    tail = settings_in_name(args)
    assert main(args) == 0
    shapes = {p.name: np.asarray(Image.open(p)).shape for p in outdir.iterdir()}
    assert shapes == {f"sq48__style__gatys{tail}.png": (48, 48, 3),
                      f"b__style__gatys{tail}.png": (48, 48, 3),
                      f"wide__style__gatys{tail}.png": (32, 48, 3)}


def test_several_styles_with_weights(files, tmp_path):
    out = tmp_path / "blend.png"
    args = gatys_args(files, out, "--style-weights", "0.7", "0.3")
    i = args.index("--style")
    args[i + 1:i + 2] = [str(files["style"]), str(files["style2"])]
    assert main(args) == 0 and out.exists()


@pytest.mark.parametrize("case", ["missing", "not_image", "weights_count", "bad_layer",
                                  "bad_ext", "input_as_output", "stage_iters", "many_to_file",
                                  "stages_order"])
def test_bad_inputs_give_one_line_and_nonzero(files, tmp_path, capsys, case):
    out = tmp_path / "o.png"
    args = gatys_args(files, out, iters=0)
    if case == "missing":
        args[args.index("--content") + 1] = str(tmp_path / "nope.jpg")
    elif case == "not_image":
        args[args.index("--style") + 1] = str(files["bad"])
    elif case == "weights_count":
        args += ["--style-weights", "1", "2"]
    elif case == "bad_layer":
        args = gatys_args(files, out, "--style-layers", "relu9_1", iters=0)
    elif case == "bad_ext":
        args[args.index("--out") + 1] = str(tmp_path / "o.xyz")
    elif case == "input_as_output":
        args[args.index("--out") + 1] = str(files["a"])
        args.append("--overwrite")
    elif case == "stage_iters":
        args += ["--stages", "16", "--stage-iters", "1"]
    elif case == "many_to_file":
        args = gatys_args(files, out, contents=("a", "b"), iters=0)
    elif case == "stages_order":  # (64,48 ran in the order given: fine to coarse)
        args[args.index("--size") + 1] = "64"
        args += ["--stages", "40,32"]
    assert main(args) == 1
    line = one_error_line(capsys)
    assert "Traceback" not in line
    assert not out.exists()


def test_python_m_arbitrary_nst_names_itself_in_usage_and_hints():
    """``python -m arbitrary_nst --help`` said "usage: infer.py", and its errors pointed to
    ``infer.py ... --help``, a name the user did not type."""
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-m", "arbitrary_nst", "stylize", "--bogus"], cwd=root,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr == ("error: unrecognized arguments: --bogus (see "
                                              "`python -m arbitrary_nst stylize --help`)\n")
    assert main(["stylize", "--bogus"]) == 2  # (infer.py's own name is unchanged)


def test_usage_errors_are_one_line_and_return_2(capsys):
    for argv in (["gatys", "--content", "a.png"],
                 ["gatys", "--content", "a", "--style", "b", "--out", "c.png", "--optimizer",
                  "newton"],
                 ["gatys", "--content", "a", "--style", "b", "--out", "c.png", "--max-pixels",
                  "0"],
                 ["gatys", "--content", "a", "--style", "b", "--out", "c.png", "--size",
                  "100000"],
                 ["--bogus"], []):
        assert main(argv) == 2
        line = one_error_line(capsys)
        assert line.endswith("--help`)"), line  # not the 14-line usage block
    # (it said "invalid _nonneg_float value", the name of a helper function)
    for opt in ("--style-weights", "--style-weight", "--tv-weight"):
        assert main(["gatys", "--content", "a", "--style", "b", "--out", "c.png", opt,
                     "abc"]) == 2
        assert one_error_line(capsys).startswith(f"error: argument {opt}: not a number: 'abc'")


def test_gatys_never_writes_over_a_style_even_with_overwrite(files, tmp_path, capsys):
    style = tmp_path / "style.png"
    style.write_bytes(files["style"].read_bytes())
    args = gatys_args(files, style, "--overwrite", iters=1)
    args[args.index("--style") + 1] = str(style)
    assert main(args) == 1
    assert "would overwrite an input" in one_error_line(capsys)
    assert style.read_bytes() == files["style"].read_bytes()


def test_gatys_batch_skips_a_bad_content_and_goes_on(files, tmp_path, capsys):
    out = tmp_path / "out"
    args = gatys_args(files, out, contents=("a", "bad", "sq48"), iters=1)
    tail = settings_in_name(args)
    assert main(args) == 1
    cap = capsys.readouterr()
    assert "done 2, skipped 1" in cap.out
    assert [ln for ln in cap.err.splitlines() if ln.startswith("skipped: ")] == [
        f"skipped: {files['bad']}: not an image (cannot identify format)"]
    assert sorted(p.name for p in out.iterdir()) == [f"a__style__gatys{tail}.png",
                                                     f"sq48__style__gatys{tail}.png"]


def test_output_names_the_filesystem_cannot_hold_are_one_line(files, tmp_path, capsys):
    long = tmp_path / ("x" * 300 + ".png")
    assert main(gatys_args(files, long, iters=1)) == 1
    assert "too long" in one_error_line(capsys)
    assert main(gatys_args(files, "", iters=1)) == 1  # (it wrote into the current folder)
    assert "--out is empty" in one_error_line(capsys)
    assert main(["analyze", "--out-dir", str(tmp_path / ("y" * 300)), "--quick",
                 "--figures", "c", "--quiet"]) == 1
    assert "too long" in one_error_line(capsys)


@pytest.mark.parametrize("role, figures, uses", [("--style", "a", "b,c,d,e,f"),
                                                 ("--content", "c", "a,b,d,e,f")])
def test_analyze_refuses_an_image_its_figures_do_not_show(files, tmp_path, capsys, monkeypatch,
                                                          role, figures, uses):
    """`--figures a --style S` drew the sample photo's reconstructions and S was read and
    ignored (the same for figure c's Gram matrices and --content); refused before any work.
    With a figure that shows it the image is passed on."""
    from arbitrary_nst import analysis

    called = []
    monkeypatch.setattr(analysis, "make_figures", lambda out_dir, **kw: called.append(kw) or [])
    assert main(["analyze", role, str(files["style"]), "--out-dir", str(tmp_path / "o"),
                 "--figures", figures, "--quick", "--quiet"]) == 1
    assert one_error_line(capsys) == (f"error: {role} applies to figures {uses}; --figures "
                                      f"{figures} does not show it")
    assert not called and not (tmp_path / "o").exists()
    assert main(["analyze", role, str(files["style"]), "--out-dir", str(tmp_path / "o"),
                 "--figures", f"{figures},b", "--quick", "--quiet"]) == 0
    assert called[0]["figures"] == [figures, "b"] and called[0][role[2:]] is not None


def test_analyze_names_an_image_too_thin_for_the_vgg(tmp_path, capsys):
    # ("style image 1 is 64x1 ... style scale": unnamed, and analyze has no style scale)
    thin = tmp_path / "thin.png"
    Image.fromarray(np.full((4, 300, 3), 128, np.uint8)).save(thin)
    for role in ("--content", "--style"):
        assert main(["analyze", role, str(thin), "--out-dir", str(tmp_path / "o"), "--quick",
                     "--quiet"]) == 1
        line = one_error_line(capsys)
        assert line.startswith(f"error: {thin}: is 300x4: 1 px on its short side at --size")
        assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_analyze_refuses_an_empty_out_dir(tmp_path, capsys, monkeypatch):
    """``--out-dir ""`` (an unset ``$OUT``) wrote the six figures into the current folder."""
    from arbitrary_nst import analysis

    monkeypatch.chdir(tmp_path)
    for empty in ("", " "):
        assert main(["analyze", "--out-dir", empty, "--quick", "--quiet"]) == 1
        assert one_error_line(capsys) == "error: --out-dir is empty; give the folder for the " \
                                         "figures"
        with pytest.raises(ConfigError, match="out_dir is empty"):
            analysis.make_figures(empty, figures=["c"])
    assert list(tmp_path.iterdir()) == []


def test_analyze_never_writes_over_its_input(files, tmp_path, capsys):
    """--content named like a figure in --out-dir was replaced by the figure (--overwrite)."""
    victim = tmp_path / "a_content_reconstruction.png"
    victim.write_bytes(files["b"].read_bytes())
    assert main(["analyze", "--content", str(victim), "--out-dir", str(tmp_path), "--figures",
                 "a", "--quick", "--quiet", "--overwrite"]) == 1
    assert "would overwrite an input" in one_error_line(capsys)
    assert victim.read_bytes() == files["b"].read_bytes()


def test_parse_layers():
    assert parse_layers("relu2_1,relu1_1", what="style") == {"relu1_1": 0.5, "relu2_1": 0.5}
    assert parse_layers("relu4_2:2", what="content") == {"relu4_2": 2.0}
    for bad in ("", "relu1_1:x", "relu1_1,relu1_1", "conv9_9"):
        with pytest.raises(ConfigError):
            parse_layers(bad, what="style")


def test_analyze_command(files, tmp_path, capsys):
    out = tmp_path / "fig"
    args = ["analyze", "--style", str(files["style"]),
            "--out-dir", str(out), "--figures", "c", "--quick", "--quiet"]
    assert main(args) == 0
    assert (out / "c_gram_matrices.png").stat().st_size > 1000
    assert main(args) == 1  # refuses to overwrite
    assert "exists" in one_error_line(capsys)
    assert main(args + ["--overwrite"]) == 0
    assert main(args[:-4] + ["--figures", "z"]) == 1
    one_error_line(capsys)
    for extra in (["--size", "64"], ["--iters", "3"]):  # (--quick ignored them without a word)
        assert main(args + extra) == 1
        assert "give either --quick or --size / --iters" in one_error_line(capsys)


def test_entry_points_exit_nonzero_with_one_line(tmp_path):
    for cmd in ([sys.executable, "infer.py"], [sys.executable, "-m", "arbitrary_nst"]):
        p = subprocess.run(cmd + ["gatys", "--content", str(tmp_path / "missing.png"), "--style",
                                  str(tmp_path / "s.png"), "--out", str(tmp_path / "o.png")],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert p.returncode == 1
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "no such file" in lines[0]


def test_every_command_has_one_line_usage_errors(capsys):
    """train.py and the `python -m arbitrary_nst.*` commands print one `error: ... (see ...
    --help)` line with exit status 2, as infer.py does (they printed the whole usage block)."""
    import importlib.util
    from pathlib import Path

    from arbitrary_nst import cli_stylize, data, distill, evaluate, weights

    spec = importlib.util.spec_from_file_location(
        "train_script", Path(__file__).resolve().parents[1] / "train.py")
    train_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_script)
    cases = [(train_script.parse_args, ["--bogus"], "train.py"),
             (distill.main, ["--out", "d", "--bogus"], "python -m arbitrary_nst.distill"),
             (evaluate.main, [], "python -m arbitrary_nst.evaluate"),
             (weights.main, ["--bogus"], "python -m arbitrary_nst.weights"),
             (data.main, [], "python -m arbitrary_nst.data"),
             (data.main, ["prepare", "--workers", "x"], "python -m arbitrary_nst.data prepare"),
             (cli_stylize.main, ["--bogus"], "infer.py")]
    for fn, argv, prog in cases:
        try:
            code = fn(argv)
        except SystemExit as e:
            code = e.code
        assert code == 2, prog
        assert one_error_line(capsys).endswith(f"(see `{prog} --help`)"), prog


def test_every_command_that_shows_progress_takes_no_progress(capsys, monkeypatch):
    """``--no-progress`` (stylize, fit-style, demo, train.py, evaluate, distill) was an unknown
    option to ``gatys`` and ``analyze`` (their ``--quiet``) and to ``data prepare`` (no way to
    turn its bar off): every command takes it."""
    from arbitrary_nst import cli, data

    parser = cli.build_parser()
    args = parser.parse_args(["gatys", "--content", "c.png", "--style", "s.png", "--out",
                              "o.png", "--no-progress"])
    assert args.quiet is True
    assert parser.parse_args(["analyze", "--out-dir", "d", "--no-progress"]).quiet is True
    seen = []

    def prepare(cfg, *, progress, roles):
        seen.append(progress)
        raise data.ConfigError("stop here")

    monkeypatch.setattr(data, "prepare", prepare)
    for extra in ([], ["--no-progress"]):
        assert data.main(["prepare", "--content-dir", "photos", *extra]) == 1
    assert seen == [True, False] and capsys.readouterr().err.count("error: stop here") == 2


def test_data_folders_take_one_or_more_values():
    """`--style-dir paintings/ textures/` (as the README writes it) and repeated flags."""
    from arbitrary_nst import data

    seen = {}
    real = data.prepare
    try:
        data.prepare = lambda cfg, progress, roles: seen.update(cfg) or {}
        assert data.main(["prepare", "--content-dir", "p", "--style-dir", "a", "b",
                          "--style-dir", "c", "--style-weight", "1", "2", "3"]) == 0
    finally:
        data.prepare = real
    assert seen["content_dirs"] == ["p"] and seen["style_dirs"] == ["a", "b", "c"]
    assert seen["style_dir_weights"] == [1.0, 2.0, 3.0]


def test_weights_too_large_for_float32_are_an_error_not_the_photo(files, tmp_path, capsys):
    """--style-weight 1e30 with the default layers returned the unchanged photo with exit 0
    (its float32 gradient overflows, so L-BFGS and Adam stop dead); a zero style weight still
    runs (its image moves, or its loss is 0)."""
    out = tmp_path / "o.png"
    photo, painting = tmp_path / "photo.png", tmp_path / "painting.png"
    rng = np.random.default_rng(0)  # (noise: the largest Gram values, the earliest overflow)
    for p in (photo, painting):
        x = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
        x[0, 0], x[1, 1] = 255, 0  # (the default softclip clamps these: "moved" by 1e-3)
        Image.fromarray(x).save(p)

    def args(weight, opt):
        return ["gatys", "--content", str(photo), "--style", str(painting), "--out",
                str(out), "--size", "64", "--iters", "2", "--quiet", "--style-weight", weight,
                "--optimizer", opt]

    for opt in ("lbfgs", "adam"):
        assert main(args("1e30", opt)) == 1
        assert "made no progress" in one_error_line(capsys) and not out.exists()
    # several contents: each one that makes no progress is skipped by its file name, and the
    # job goes on (it stopped at once with "example [0, 1]" of a size group)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((96, 128, 3), 128, np.uint8)).save(grey)
    many = ["gatys", "--content", str(photo), str(grey), "--style", str(painting), "--out",
            str(tmp_path / "many"), "--size", "64", "--iters", "2", "--quiet",
            "--style-weight", "1e30"]
    assert main(many) == 1
    got = capsys.readouterr()
    skips = [ln for ln in got.err.splitlines() if ln.startswith("skipped: ")]
    assert [ln.split(": ")[1] for ln in skips] == [str(photo), str(grey)], got.err
    assert all("the optimization made no progress" in ln for ln in skips)
    assert "done 0, skipped 2 (2 error)" in got.out
    assert main(args("0", "lbfgs")) == 0 and out.exists()
    # a start already at a minimum (a smooth ramp stylized with itself: no line-search step
    # lowers the loss, while the slope stays finite) is convergence, not an overflow: it was
    # refused as "made no progress"
    ramp = tmp_path / "ramp.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 128).astype(np.uint8)[None, :, None],
                            (96, 1, 3))).save(ramp)  # (the photo's size: no new compile)
    out.unlink()
    assert main(["gatys", "--content", str(ramp), "--style", str(ramp), "--out", str(out),
                 "--size", "64", "--iters", "3", "--quiet"]) == 0 and out.exists()


# ---------------------------------------------------------------- mutation-testing pass (CLI)


def test_every_gatys_option_reaches_the_config():
    """Each option (all set to non-defaults, bounds included) is the config field it names."""
    from arbitrary_nst import gatys
    from arbitrary_nst.cli import build_parser, gatys_config_from_args

    args = build_parser().parse_args([
        "gatys", "--content", "c.png", "--style", "s.png", "--out", "o.png", "--size", "4096",
        "--style-scale", "0.5", "--iters", "7", "--optimizer", "adam", "--lr", "0.5",
        "--lbfgs-memory", str(gatys.MAX_LBFGS_MEMORY), "--param", "sigmoid", "--init", "noise",
        "--seed", str(2**32 - 1), "--stages", "64,128",
        "--chunk", "9", "--content-weight", "2", "--style-weight", "0", "--tv-weight", "0.25",
        "--content-layers", "relu3_1", "--style-layers", "relu2_1:3,relu1_1",
        "--depth-growth", "2", "--style-statistic", "mean_std", "--gram-norm", "hw",
        "--tv-kind", "l1", "--pooling", "avg", "--normalized-vgg", "--preserve-color", "match",
        "--color-space", "yuv", "--color-match", "chol"])
    cfg = gatys_config_from_args(args)
    assert args.size == 4096
    want = dict(style_scale=0.5, iterations=7, optimizer="adam", learning_rate=0.5,
                lbfgs_memory=gatys.MAX_LBFGS_MEMORY, parameterization="sigmoid", init="noise",
                seed=2**32 - 1, stage_sizes=(64, 128),
                chunk_size=9, content_weight=2.0, style_weight=0.0, tv_weight=0.25,
                content_layers={"relu3_1": 1.0}, style_layers={"relu1_1": 1.0, "relu2_1": 3.0},
                depth_growth=2.0, style_statistic="mean_std", gram_norm="hw", tv_kind="l1",
                pooling="avg", normalized_vgg=True, preserve_color="match", color_space="yuv",
                color_match_method="chol")
    assert {k: getattr(cfg, k) for k in want} == want
    assert list(cfg.style_layers) == ["relu1_1", "relu2_1"]  # shallow to deep
    # (--stage-iters: test_stage_lists_take_blanks_and_a_trailing_comma)


def test_gatys_options_given_where_they_change_nothing_are_refused(capsys):
    """`--lr 1e9` with L-BFGS, `--seed` without noise, `--color-match chol` without match,
    `--iters 100 --stage-iters 2` (ran 2) and one style's `--style-weights 100000` (a letter
    from the loss's --style-weight) ran as if not given: the output was byte-identical."""
    base = ["gatys", "--content", "c.png", "--style", "s.png", "--out", "o.png"]
    for extra, want in (
            (["--lr", "1e9"], "--lr applies to --optimizer adam"),
            (["--optimizer", "lbfgs_optax", "--lr", "0.1"], "--lr applies to --optimizer adam"),
            (["--init", "content", "--seed", "7"], "--seed applies to --init noise"),
            (["--color-match", "chol"], "--color-match applies to --preserve-color match"),
            (["--preserve-color", "luminance", "--color-match", "eig"], "--color-match applies"),
            (["--iters", "100", "--stage-iters", "2"], "give --iters (every stage) or "
                                                       "--stage-iters"),
            (["--style-weights", "100000"], "--style-weights blends two or more --style")):
        assert main([*base, *extra]) == 1, extra
        assert want in one_error_line(capsys), extra
    from arbitrary_nst.cli import build_parser, gatys_config_from_args

    for extra in (["--optimizer", "adam", "--lr", "0.1"], ["--init", "noise", "--seed", "7"],
                  ["--preserve-color", "match", "--color-match", "chol"], ["--iters", "9"],
                  ["--stages", "64", "--stage-iters", "3,4"]):
        gatys_config_from_args(build_parser().parse_args([*base, *extra]))  # (accepted)


def test_gatys_option_values_out_of_range(files, tmp_path, capsys):
    out = tmp_path / "o.png"
    usage = [(["--size", "31"], "argument --size: must be an integer in [32, 4096], got '31'"),
             (["--style-weight", "nan"], "argument --style-weight: must be a finite number >= 0, "
                                         "got nan"),
             (["--seed", str(2**32)], "argument --seed: must be an integer in [0, 4294967295]")]
    for extra, msg in usage:
        assert main(gatys_args(files, out, *extra, iters=0)) == 2, extra
        line = one_error_line(capsys)
        assert msg in line and line.endswith("(see `infer.py gatys --help`)"), line
    # (an unknown option is found by the top parser: it names the sub-command's help too)
    assert main(gatys_args(files, out, "--bogus", iters=0)) == 2
    assert one_error_line(capsys) == \
        "error: unrecognized arguments: --bogus (see `infer.py gatys --help`)"
    config = [(["--size", "64", "--stages", "64"], "--stages must be smaller than --size 64"),
              (["--style-weights", "0"], "--style-weights must have a positive sum")]
    for extra, msg in config:
        assert main(gatys_args(files, out, *extra, iters=0)) == 1, extra
        assert msg in one_error_line(capsys)
    assert not out.exists()


def test_output_paths_patterns_and_collisions(files, tmp_path):
    from arbitrary_nst.cli import output_paths

    other = tmp_path / "other"
    other.mkdir()
    twin = other / "a.png"
    twin.write_bytes(files["a"].read_bytes())
    a, b = str(files["a"]), str(files["b"])
    assert output_paths(str(tmp_path / "{name}_x.png"), [a, b], tag="style", keep="__gatys",
                        overwrite=False) == [tmp_path / "a_x.png", tmp_path / "b_x.png"]
    assert output_paths(str(tmp_path / "o"), [a, b], tag="style", keep="__gatys",
                        overwrite=False) == [tmp_path / "o" / "a__style__gatys.png",
                                             tmp_path / "o" / "b__style__gatys.png"]
    with pytest.raises(ConfigError, match="two content images would be written to the same"):
        output_paths(str(tmp_path / "o"), [a, str(twin)], tag="style", keep="__gatys",
                     overwrite=True)


def test_top_level_help_lists_the_commands(capsys):
    for argv in (["--help"], ["-h"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "COMMAND" in out and all(c in out for c in ("gatys", "fit-style", "export-onnx"))
        assert "--max-size" not in out and "--strength" not in out  # (stylize's help)


def test_errors_while_running_a_command_are_one_line_with_their_exit_status(monkeypatch,
                                                                           capsys):
    import dataclasses

    from arbitrary_nst import cli

    def raising(exc):
        def run(args):
            raise exc
        monkeypatch.setitem(cli.COMMANDS, "gatys", dataclasses.replace(cli.COMMANDS["gatys"],
                                                                       run=run))

    argv = ["gatys", "--content", "c.png", "--style", "s.png", "--out", "o.png"]
    cases = [(PermissionError(13, "Permission denied", "/x/y.png"), 1,
              "error: /x/y.png: Permission denied"),
             (OSError("disk\n  full"), 1, "error: disk full"),
             (ConfigError(""), 1, "error: ConfigError"),
             (ConfigError("a\nb"), 1, "error: a b"),
             (KeyboardInterrupt(), 130, "error: interrupted"),
             (RuntimeError("RESOURCE_EXHAUSTED: Out of memory\nwhile allocating 123 bytes\n"), 1,
              "error: out of memory (RESOURCE_EXHAUSTED: Out of memory while allocating 123 "
              "bytes): use smaller values of --size, --batch-size")]
    for exc, code, line in cases:
        raising(exc)
        assert main(argv) == code, exc
        assert capsys.readouterr().err == line + "\n"


def test_check_count_and_check_weight_bounds():
    from arbitrary_nst.errors import check_count, check_weight, out_of_memory

    assert check_count(4096, "x", 32, 4096) == 4096 and check_count(32, "x", 32, 4096) == 32
    assert check_count(512.0, "x") == 512 and type(check_count(512.0, "x")) is int
    assert check_count(None, "x") is None
    for bad in (4097, 31, 100.5, float("nan"), float("inf"), "100", True):
        with pytest.raises(ConfigError, match=r"^x must be an integer in \[32, 4096\], got "):
            check_count(bad, "x", 32, 4096)
    with pytest.raises(ConfigError):
        check_count(None, "x", optional=False)
    assert check_weight(0, "w") == 0.0 and check_weight(2, "w") == 2.0
    for bad in (float("inf"), float("nan"), -1e-9, "1", True, None):
        with pytest.raises(ConfigError, match=r"^w must be a finite number >= 0, got "):
            check_weight(bad, "w")
    assert out_of_memory(RuntimeError("INTERNAL: boom")) is None
    assert out_of_memory(RuntimeError("RESOURCE_EXHAUSTED:\n  " + "x" * 300)) == \
        "out of memory (RESOURCE_EXHAUSTED: " + "x" * (160 - 20) + ")"


def test_help_shows_defaults_but_not_for_flags(capsys):
    assert main(["gatys", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "seed of --init noise (default 0)" in out
    assert "(default: False)" not in out and "(default: None)" not in out
    import argparse

    from arbitrary_nst.cli import _Formatter

    p = argparse.ArgumentParser(formatter_class=_Formatter)
    p.add_argument("--n", type=int, default=0, help="a count")
    assert "a count (default: 0)" in " ".join(p.format_help().split())  # (0 == False: hidden)


def test_gatys_batch_passes_weights_and_quiet_and_says_what_it_did(files, tmp_path, monkeypatch,
                                                                  capsys):
    from arbitrary_nst import gatys

    calls = []

    class R:
        failures: dict = {}
        worse_than_start: dict = {}

        def __init__(self, x):
            self.images = x

        def final_terms(self):
            n = len(self.images)
            return {k: np.full(n, 1.5) for k in ("total", "content", "style", "tv")}

    def fake_run(content, styles, *, style_weights=None, config=None, progress=True,
                 vgg_params=None, style_names=None, failures="raise"):
        calls.append((content.shape, [s.shape for s in styles], style_weights, progress))
        return R(content)

    monkeypatch.setattr(gatys, "run", fake_run)
    monkeypatch.setattr(gatys, "load_params", lambda cfg: {})
    out = tmp_path / "o"
    args = gatys_args(files, out, "--style-weights", "0.7", "0.3",
                      contents=("sq48", "b", "wide"), size=48)
    i = args.index("--style")
    args[i + 1:i + 2] = [str(files["style"]), str(files["style2"])]
    tail = settings_in_name(args)
    assert main(args) == 0
    cap = capsys.readouterr()
    # --quiet: nothing on stderr; the summary line as stylize's batches
    assert re.fullmatch(r"done 3, skipped 0, [0-9.]+ s, [0-9.]+ images/s\n", cap.out), cap.out
    assert cap.err == ""
    assert calls == [((2, 48, 48, 3), [(32, 32, 3), (40, 40, 3)], [0.7, 0.3], False),
                     ((1, 32, 48, 3), [(32, 32, 3), (40, 40, 3)], [0.7, 0.3], False)]
    calls.clear()
    args.remove("--quiet")
    assert main(args + ["--overwrite"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [c[3] for c in calls] == [True, True]
    # (named by the styles and their unequal weights, as stylize's batches)
    name = f"sq48__style+style2@0.7-0.3__gatys{tail}.png"
    assert err[0] == "batch of 2 at 48x48" and \
        f"wrote {out / name}  total=1.5  content=1.5  style=1.5  tv=1.5" in err
    # --batch-size caps a batch (all of a size in one needed memory for all of them)
    calls.clear()
    assert main(args + ["--overwrite", "--batch-size", "1"]) == 0
    assert [c[0] for c in calls] == [(1, 48, 48, 3), (1, 48, 48, 3), (1, 32, 48, 3)]
    assert capsys.readouterr().err.splitlines()[0] == "batch of 1 at 48x48"
    # --iters 0 has no loss terms: said so (was "wrote X  " with trailing blanks)
    monkeypatch.setattr(R, "final_terms", lambda self: {})
    assert main(args + ["--overwrite"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert f"wrote {out / name} (0 iterations: the initial image)" in err


def test_fit_style_with_skipped_photos_exits_1(files, tmp_path, monkeypatch, capsys):
    """fit-style says which photos it skipped and, as a batch run, exits 1 then (0 without)."""
    import types

    from arbitrary_nst import inference

    saved = []

    def fake_fit(self, style, photos, **kw):
        skipped = ["bad.png: not an image"] if len(photos) > 2 else []
        return types.SimpleNamespace(info={"skipped": skipped, "photos": 2},
                                     history=np.array([2.0, 0.5]),
                                     save=lambda out, overwrite: saved.append(out))

    monkeypatch.setattr(inference.Stylizer, "load", classmethod(lambda cls, m: cls.__new__(cls)))
    monkeypatch.setattr(inference.Stylizer, "fit_style", fake_fit)
    base = ["fit-style", "--style", str(files["style"]), "--steps", "1", "--no-progress"]
    out = tmp_path / "f.npz"
    assert main([*base, "--photos", str(files["a"]), str(files["b"]), str(files["wide"]),
                 "--out", str(out)]) == 1
    cap = capsys.readouterr()
    assert cap.err == "skipped: bad.png: not an image\n"
    assert cap.out.startswith(f"wrote {out}: 2 photos (1 skipped: exit status 1, as for batch "
                              "runs), 1 step, loss 2 -> 0.5 (")
    assert main([*base, "--photos", str(files["a"]), str(files["b"]), "--out", str(out)]) == 0
    assert saved == [out, out]


def test_analyze_shows_progress_and_names_each_figure_once(files, tmp_path, capsys):
    """The default figures ran for six minutes without a line (the optimizer's bar was off),
    then every path was printed twice ("figure a: path" and the path again)."""
    out = tmp_path / "fig"
    assert main(["analyze", "--content", str(files["b"]),
                 "--out-dir", str(out), "--figures", "a", "--quick"]) == 0
    cap = capsys.readouterr()
    assert "gatys:" in cap.err and "it/s" in cap.err.replace("s/it", "it/s")  # the bar
    path = str(out / "a_content_reconstruction.png")
    assert cap.out.count(path) == 1 and f"figure a: {path}" in cap.out
    assert main(["analyze", "--content", str(files["b"]),
                 "--out-dir", str(out), "--figures", "a", "--quick", "--quiet",
                 "--overwrite"]) == 0
    cap = capsys.readouterr()
    assert cap.out == path + "\n" and "gatys:" not in cap.err  # quiet: the paths only


# ------------------------------------------------------------------ mutation-testing additions


def test_stage_lists_take_blanks_and_a_trailing_comma():
    """``--stages "64, 128,"`` is (64, 128): blanks and empty items are dropped, not errors."""
    from arbitrary_nst.cli import build_parser, gatys_config_from_args

    args = build_parser().parse_args([
        "gatys", "--content", "c.png", "--style", "s.png", "--out", "o.png", "--size", "256",
        "--stages", "64, 128,", "--stage-iters", "5,,6, 7,"])
    cfg = gatys_config_from_args(args)
    assert cfg.stage_sizes == (64, 128) and cfg.stage_iterations == (5, 6, 7)


def test_gatys_upscales_a_small_content_to_size(files, tmp_path, monkeypatch, capsys):
    """--size is the result's longer side also for a smaller content (32x32 at --size 64 is
    optimized at 64x64, not left at 32x32)."""
    from arbitrary_nst import gatys

    shapes = []

    class R:
        failures: dict = {}
        worse_than_start: dict = {}

        def __init__(self, x):
            self.images = x

        def final_terms(self):
            return {}

    def fake_run(content, styles, **kw):
        shapes.append(content.shape)
        return R(content)

    monkeypatch.setattr(gatys, "run", fake_run)
    monkeypatch.setattr(gatys, "load_params", lambda cfg: {})
    out = tmp_path / "o.png"
    assert main(gatys_args(files, out, size=64)) == 0
    assert shapes == [(1, 64, 64, 3)]
    assert Image.open(out).size == (64, 64)


def test_analyze_accepts_a_short_side_of_exactly_32_px(tmp_path, monkeypatch, capsys):
    """The VGG's limit is >= 32 px: 160x32 at --size 160 is fine, 160x31 is refused."""
    from arbitrary_nst import analysis

    called = []
    monkeypatch.setattr(analysis, "make_figures",
                        lambda out_dir, **kw: called.append(kw["size"]) or [])
    for h, rc in ((32, 0), (31, 1)):
        p = tmp_path / f"c{h}.png"
        Image.fromarray(np.full((h, 160, 3), 128, np.uint8)).save(p)
        assert main(["analyze", "--content", str(p), "--out-dir", str(tmp_path / "o"),
                     "--size", "160", "--quiet"]) == rc, h
    assert called == [160]
    assert one_error_line(capsys).startswith(
        f"error: {tmp_path / 'c31.png'}: is 160x31: 31 px on its short side at --size 160")


# ----------------------------------------------------------------------------------------------
# bug hunt: a batch is resumable (existing outputs are skipped) and Ctrl-C keeps what is written


def _fake_gatys(monkeypatch, interrupt_at=None):
    """``gatys.run`` replaced by a stand-in that returns the contents (no VGG, no compile) and
    raises KeyboardInterrupt on call number ``interrupt_at`` (1-based); returns the calls."""
    from arbitrary_nst import gatys

    calls = []

    class R:
        failures: dict = {}
        worse_than_start: dict = {}

        def __init__(self, x):
            self.images = x

        def final_terms(self):
            return {k: np.full(len(self.images), 1.5) for k in ("total", "content", "style")}

    def fake_run(content, styles, **kw):
        calls.append(content.shape)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return R(content)

    monkeypatch.setattr(gatys, "run", fake_run)
    monkeypatch.setattr(gatys, "load_params", lambda cfg: {})
    return calls


def test_gatys_batch_interrupted_keeps_its_results_and_the_same_command_finishes_it(
        files, tmp_path, monkeypatch, capsys):
    """Ctrl-C during the second working-size batch keeps the first batch's result and says how
    to go on; the same command then skips the outputs written ("exists", exit status 1) and
    computes only the rest (it stopped at once: "a__style__gatys.png: exists; pass --overwrite")."""
    out = tmp_path / "out"
    args = gatys_args(files, out, contents=("wide", "sq48", "b"), size=48)
    tail = settings_in_name(args)
    calls = _fake_gatys(monkeypatch, interrupt_at=2)
    assert main(args) == 130
    cap = capsys.readouterr()
    assert cap.err.splitlines()[-1] == "error: interrupted"
    assert cap.out.startswith("done 1, skipped 0, ")
    assert "interrupted: the images written stay; run the same command again to do the rest" \
        in cap.out
    # the batch being optimized is written only when it ends: said so
    assert "the 2 images of the batch being optimized are lost" in cap.out
    assert sorted(p.name for p in out.iterdir()) == [f"wide__style__gatys{tail}.png"]
    kept = (out / f"wide__style__gatys{tail}.png").read_bytes()

    calls = _fake_gatys(monkeypatch)
    assert main(args) == 1  # something was skipped
    cap = capsys.readouterr()
    assert [ln for ln in cap.err.splitlines() if ln.startswith("skipped: ")] == [
        f"skipped: {out / f'wide__style__gatys{tail}.png'}: exists; pass --overwrite to replace it"]
    assert re.fullmatch(r"done 2, skipped 1 \(1 output exists\), [0-9.]+ s, [0-9.]+ images/s\n",
                        cap.out), cap.out
    assert calls == [(2, 48, 48, 3)]  # only the rest ran
    assert sorted(p.name for p in out.iterdir()) == [
        f"b__style__gatys{tail}.png", f"sq48__style__gatys{tail}.png",
        f"wide__style__gatys{tail}.png"]
    assert (out / f"wide__style__gatys{tail}.png").read_bytes() == kept

    assert main(args) == 1  # all done: every content skipped, nothing runs
    cap = capsys.readouterr()
    assert cap.out.startswith("done 0, skipped 3 (3 output exists), ") and calls == [(2, 48, 48, 3)]
    assert main(args + ["--overwrite"]) == 0  # --overwrite recomputes everything
    assert calls[1:] == [(1, 32, 48, 3), (2, 48, 48, 3)]
    assert capsys.readouterr().out.startswith("done 3, skipped 0, ")
    # another style into the same folder is another batch, not three "exists" (the outputs
    # were named `{content}_gatys.png` whatever the style); two styles are named together
    i = args.index("--style")
    for styles, tag in (([files["style2"]], "style2"),
                        ([files["style"], files["style2"]], "style+style2")):
        assert main([*args[:i + 1], *map(str, styles), *args[i + 2:]]) == 0
        assert capsys.readouterr().out.startswith("done 3, skipped 0, ")
        assert {p.name for p in out.iterdir()} >= {f"{c}__{tag}__gatys{tail}.png"
                                                   for c in ("wide", "sq48", "b")}


def test_gatys_batch_skips_existing_outputs_but_never_writes_over_an_input(files, tmp_path,
                                                                           capsys):
    """With several contents an existing output is skipped and the others are optimized (the
    real optimizer here); an output that is an input is still the job's error, before any work,
    even with --overwrite; one content with an existing --out file stays an error."""
    out = tmp_path / "out"
    tail = settings_in_name(gatys_args(files, out, iters=1))
    out.mkdir()
    old = files["style"].read_bytes()
    (out / f"a__style__gatys{tail}.png").write_bytes(old)
    assert main(gatys_args(files, out, contents=("a", "sq48"), iters=1)) == 1
    cap = capsys.readouterr()
    assert (f"skipped: {out / f'a__style__gatys{tail}.png'}: exists; pass --overwrite to replace it"
            in cap.err)
    assert cap.out.startswith("done 1, skipped 1 (1 output exists), ")
    assert (out / f"a__style__gatys{tail}.png").read_bytes() == old
    assert np.asarray(Image.open(out / f"sq48__style__gatys{tail}.png")).shape == (32, 32, 3)

    for extra in ((), ("--overwrite",)):
        pattern = files["dir"] / "{name}.png"  # = the contents themselves
        assert main(gatys_args(files, pattern, *extra, contents=("a", "sq48"), iters=1)) == 1
        assert "would overwrite an input" in one_error_line(capsys)
    assert main(gatys_args(files, out / f"a__style__gatys{tail}.png", iters=1)) == 1
    assert "exists; pass --overwrite" in one_error_line(capsys)


def test_gatys_batch_names_carry_their_settings(files, tmp_path, monkeypatch, capsys):
    """A batch's outputs were `{content}__{styles}__gatys.png` whatever --iters, --seed,
    --optimizer or --size: a sweep into one folder skipped every photo of its second run as
    "exists". Every setting off its default is named after __gatys (at the defaults the
    names are the earlier ones); a long tail of them becomes one opts{hash} part."""
    calls = _fake_gatys(monkeypatch)

    def run(out, *extra):
        assert main(["gatys", "--content", str(files["a"]), str(files["sq48"]), "--style",
                     str(files["style"]), "--out", str(out), "--quiet", *extra]) in (0, 1)
        return capsys.readouterr().out

    out = tmp_path / "sweep"
    for extra in ([], ["--iters", "50"], ["--optimizer", "adam", "--init", "noise", "--seed", "7"],
                  ["--size", "64", "--style-weight", "1e3", "--tv-weight", "0"]):
        assert run(out, *extra).startswith("done 2, skipped 0"), extra
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("a__")) == [
        "a__style__gatys.png", "a__style__gatys__adam__init-noise__seed7.png",
        "a__style__gatys__iterations50.png", "a__style__gatys__size64__sw1000__tv0.png"]
    # the defaults named, and settings that change no pixel: the first run's outputs
    assert run(out, "--iters", "500", "--size", "512", "--chunk", "5", "--color-space",
               "yuv").startswith("done 0, skipped 2 (2 output exists)")
    assert len(calls) == 4
    many = ["--content-layers", "relu4_2:2", "--style-layers", "relu1_1,relu2_1", "--pooling",
            "avg", "--normalized-vgg", "--style-statistic", "mean_std", "--gram-norm", "hw",
            "--tv-kind", "l1", "--param", "sigmoid", "--stages", "32,48", "--stage-iters",
            "3,4,5", "--style-scale", "1.5", "--lbfgs-memory", "5", "--depth-growth"]
    for growth in ("2", "3"):
        assert run(tmp_path / f"many{growth}", *many, growth).startswith("done 2, skipped 0")
    two, three = (sorted((tmp_path / f"many{g}").iterdir())[0].name for g in ("2", "3"))
    assert two.startswith("a__style__gatys__scale1.5__memory5__param-sigmoid__stages32-48__"
                          "stageiters3-4-5__content-relu4_2=2__style-relu1_1=0.5+relu2_1=0.5"
                          "__opts") and len(two) < 200, two
    assert three != two and len(three) == len(two)  # (the tail's hash tells them apart)


def test_an_output_that_is_a_symlink_loop_is_one_line(files, tmp_path, monkeypatch, capsys):
    """A link to itself as --out, as a batch output in the folder, or as the folder of a {name}
    pattern was a RuntimeError traceback (Path.resolve on a loop): one line, and a batch skips
    that output and does the rest."""
    calls = _fake_gatys(monkeypatch)
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop.name)
    assert main(gatys_args(files, loop)) == 1
    assert one_error_line(capsys) == f"error: {loop}: exists; pass --overwrite to replace it"
    out = tmp_path / "out"
    out.mkdir()
    args = gatys_args(files, out, contents=("a", "sq48"))
    name = f"a__style__gatys{settings_in_name(args)}.png"
    (out / name).symlink_to(name)
    assert main(args) == 1
    cap = capsys.readouterr()
    assert cap.out.startswith("done 1, skipped 1 (1 output exists)") and len(calls) == 1
    (tmp_path / "dirloop").symlink_to("dirloop")
    assert main(gatys_args(files, tmp_path / "dirloop" / "{name}.png", contents=("a", "sq48"))) \
        == 1
    assert "Too many levels of symbolic links" in one_error_line(capsys)


def test_clashing_output_names_give_advice_that_can_work(files, tmp_path, capsys):
    """Two contents with the same file name in different folders: the output name comes from
    the name, with a folder and with a {name} pattern alike, so the advice is to rename or run
    separately (it said "use a pattern with {name}", which gives the same clash)."""
    from arbitrary_nst.cli import output_paths

    other = tmp_path / "other"
    other.mkdir()
    twin = other / "a.png"
    twin.write_bytes(files["a"].read_bytes())
    for out in (tmp_path / "o", tmp_path / "{name}_x.png"):
        assert main(gatys_args(files, out, iters=0) + ["--content", str(twin)]) == 1
        line = one_error_line(capsys)
        assert "two content images would be written to the same file" in line
        assert str(twin) in line and str(files["a"]) in line
        assert "pattern" not in line and "rename one of them or give them separate runs" in line
    with pytest.raises(ConfigError, match="is given twice"):
        output_paths(str(tmp_path / "o"), [str(files["a"]), str(files["a"])], tag="style",
                     keep="__gatys", overwrite=False)



def test_a_content_named_twice_is_one_job(files, tmp_path, monkeypatch, capsys):
    """``--content a a`` (or ``a`` and ``./a``, or a glob the shell expanded next to a named
    file) was refused as "is given twice" while the stylize command runs such a path once: now
    one job here too, in the order first given; one distinct content keeps the one-content
    rules (``--out`` is the file)."""
    calls = _fake_gatys(monkeypatch)
    tail = settings_in_name(gatys_args(files, tmp_path, size=48))
    monkeypatch.chdir(files["dir"])
    out = tmp_path / "one.png"
    assert main(gatys_args(files, out, contents=("a", "a")) + ["--content", "./a.png"]) == 0
    assert calls == [(1, 32, 32, 3)] and out.is_file()
    assert capsys.readouterr().out == ""  # (one content: no batch summary)
    od = tmp_path / "od"
    assert main(gatys_args(files, od, contents=("b", "a", "b", "a"), size=48)) == 0
    assert calls[1:] == [(2, 48, 48, 3)]
    assert capsys.readouterr().out.startswith("done 2, skipped 0, ")
    assert sorted(p.name for p in od.iterdir()) == [f"a__style__gatys{tail}.png",
                                                    f"b__style__gatys{tail}.png"]


def test_inputs_are_decoded_for_the_working_size_not_at_full_size(files, tmp_path,
                                                                   monkeypatch, capsys):
    """A 9000x6000 photo at --size 64 was decoded and resized at full size (3.1 GB, 56 s):
    contents are read at most at twice --size, styles at twice style_scale x --size, and
    analyze's content and style at twice their working sizes (--size, 2 x --size)."""
    from arbitrary_nst import analysis, images

    sides = []
    real = images.load_image

    def spy(path, **kw):
        sides.append((Path(path).name, kw.get("max_side")))
        return real(path, **kw)

    monkeypatch.setattr(images, "load_image", spy)
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8)).save(big)
    calls = _fake_gatys(monkeypatch)
    out = tmp_path / "o.png"
    assert main(["gatys", "--content", str(big), "--style", str(big), "--out", str(out),
                 "--size", "64", "--style-scale", "1.5", "--iters", "1", "--quiet"]) == 0
    assert sides == [("big.png", 192), ("big.png", 128)]  # the style (2 x 96), the content
    assert calls == [(1, 48, 64, 3)]  # (the working size itself: as before)
    sides.clear()
    monkeypatch.setattr(analysis, "make_figures", lambda out_dir, **kw: [])
    assert main(["analyze", "--content", str(big), "--style", str(big), "--out-dir",
                 str(tmp_path / "fig"), "--size", "48", "--quiet"]) == 0
    assert sides == [("big.png", 96), ("big.png", 192)]


def test_a_failed_command_removes_the_output_folders_it_created_and_left_empty(files, tmp_path,
                                                                                capsys):
    """A bad style found after the --out folder was made left ``deep/sub/`` behind (empty):
    every command of ``infer.py`` removes the folders it created when it fails."""
    out = tmp_path / "deep" / "sub" / "o.png"
    args = gatys_args(files, out, iters=0)
    args[args.index("--style") + 1] = str(files["bad"])
    assert main(args) == 1
    assert "not an image" in one_error_line(capsys)
    assert not (tmp_path / "deep").exists()


def test_usage_parser_refuses_a_second_value_by_any_spelling_once_per_parse(capsys):
    """An option that takes one value, given again under its other spelling or declared with
    ``action="store"``, is a usage error (status 2, one line); the record is per parse, so a
    parser used twice accepts each command line that names the option once."""
    from arbitrary_nst.errors import UsageParser

    parser = UsageParser(prog="p")
    parser.add_argument("--out", "-o")
    parser.add_argument("--size", action="store", type=int)
    for argv in (["-o", "a", "--out", "b"], ["--size", "1", "--size=2"]):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(argv)
        assert e.value.code == 2
        assert "given more than once (only the last would count); give it once" in \
            one_error_line(capsys)
    for _ in range(2):
        args = parser.parse_args(["-o", "a", "--size", "3"])
        assert (args.out, args.size) == ("a", 3)


@pytest.mark.parametrize("content", ["dir", "missing"])
def test_one_bad_content_is_named_before_the_out_folder(files, tmp_path, capsys, content):
    """`gatys --content photos/ --out outs` said "outs: unsupported output format (no
    extension)": the --out check ran before the content's, and blamed the wrong argument."""
    src = files["dir"] if content == "dir" else tmp_path / "nope.jpg"
    args = gatys_args(files, tmp_path / "outs", iters=0)
    args[args.index("--content") + 1] = str(src)
    assert main(args) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"error: {src}: "), line
    assert ("is a directory" if content == "dir" else "no such file") in line, line
    assert not (tmp_path / "outs").exists()


def test_gatys_says_which_outputs_adam_left_above_their_start(files, tmp_path, capsys):
    """``--optimizer adam --lr 3`` ended 100x+ above the loss it started from, exit 0 without
    a word: each such output is named in a warning (one content: the same warning)."""
    out = tmp_path / "out"
    args = gatys_args(files, out, "--optimizer", "adam", "--lr", "3", contents=("a", "sq48"),
                      iters=8)
    tail = settings_in_name(args)
    assert main(args) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: ")]
    assert [ln.split(": ")[1] for ln in warned] == [
        str(out / f"a__style__gatys{tail}.png"), str(out / f"sq48__style__gatys{tail}.png")], warned
    assert all("above its start: the Adam learning rate (3) is too large; lower it (--lr)" in ln
               for ln in warned)
    assert main(gatys_args(files, tmp_path / "one.png", "--optimizer", "adam", "--lr", "3",
                           iters=8)) == 0
    assert re.search(r"^warning: the loss ended \S+x above its start",
                     capsys.readouterr().err, re.M)
    assert main(gatys_args(files, tmp_path / "ok.png", "--optimizer", "adam", iters=8)) == 0
    assert "warning" not in capsys.readouterr().err
    # a start at the minimum (the style stylized with itself, no TV): "lower the learning
    # rate" was the wrong advice, or (a start at loss 0) nothing was said
    args = gatys_args(files, tmp_path / "self", "--optimizer", "adam", "--tv-weight", "0",
                      contents=("style", "a"), iters=8)
    assert main(args) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: ")]
    assert len(warned) == 1 and "__style__gatys" in warned[0] and warned[0].endswith(
        "which was at the loss's minimum already (Adam's steps only moved away from it); the "
        "L-BFGS optimizer keeps such a start (--optimizer lbfgs)"), warned


def test_gatys_batch_skips_a_content_whose_output_cannot_be_written(files, tmp_path, capsys):
    """A folder where one output would go stopped the whole batch before any work (stylize's
    batches skip that item): skipped by name, the rest done; every output unusable (the
    folder itself) is still the job's error."""
    out = tmp_path / "out"
    tail = settings_in_name(gatys_args(files, out, iters=1))
    (out / f"a__style__gatys{tail}.png").mkdir(parents=True)
    assert main(gatys_args(files, out, contents=("a", "sq48"), iters=1)) == 1
    cap = capsys.readouterr()
    assert "done 1, skipped 1" in cap.out, cap
    assert [ln for ln in cap.err.splitlines() if ln.startswith("skipped: ")] == [
        f"skipped: {out / f'a__style__gatys{tail}.png'}: is a directory, expected an output file "
        "name"], cap.err
    assert (out / f"sq48__style__gatys{tail}.png").is_file()
    (out / f"b__style__gatys{tail}.png").mkdir()
    (out / f"sq48__style__gatys{tail}.png").unlink()
    (out / f"sq48__style__gatys{tail}.png").mkdir()
    assert main(gatys_args(files, out, contents=("a", "b", "sq48"), iters=1)) == 1
    assert one_error_line(capsys).startswith(
        f"error: {out / f'a__style__gatys{tail}.png'}: is a directory")


def test_analyze_and_fit_style_take_the_max_pixels_their_errors_name(files, tmp_path, capsys):
    """A photo over the pixel limit said "pass a larger max_pixels (--max-pixels)" in analyze
    and fit-style, which had no such option (a usage error when given)."""
    a, style = str(files["a"]), str(files["style"])
    assert main(["analyze", "--content", a, "--style", style, "--out-dir",
                 str(tmp_path / "fig"), "--figures", "b", "--quick", "--quiet",
                 "--max-pixels", "100"]) == 1
    err = one_error_line(capsys)
    assert "> limit 100" in err and "--max-pixels" in err, err
    assert main(["fit-style", "--style", style, "--photos", a, "--out",
                 str(tmp_path / "f.npz"), "--max-pixels", "100", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "> limit 100" in err, err
    assert not (tmp_path / "f.npz").exists()
    assert main(["analyze", "--style", style, "--out-dir",
                 str(tmp_path / "fig"), "--figures", "c", "--quick", "--quiet",
                 "--max-pixels", "5000"]) == 0


def test_module_entry_of_stylize_and_help_texts(capsys):
    """`python -m arbitrary_nst.cli_stylize --help` said "usage: infer.py", showed every default
    twice ("(default 5) (default: None)") and the module's RST; it is infer.py's stylize now.
    analyze's --figures says which letter is which figure; distill's --no-progress has help."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "arbitrary_nst.cli_stylize", "--help"], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: python -m arbitrary_nst stylize")
    assert "(default: None)" not in r.stdout and ":func:" not in r.stdout
    assert main(["analyze", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "a content reconstruction, b style reconstruction, c gram matrices" in text
    from arbitrary_nst import distill

    with pytest.raises(SystemExit):
        distill.main(["--help"])
    assert re.search(r"--no-progress\s+no progress bars", capsys.readouterr().out)


def test_help_says_defaults_in_words_not_python(capsys):
    """Help said "(None = the built-in model)", "(None = min(4, CPUs))", "(None =
    GatysConfig's)": the API's terms. Every command's help says "default: ..." instead, and
    stylize's Gatys iterations name the number the gatys command uses."""
    from arbitrary_nst import gatys

    for name in COMMANDS:
        assert main([name, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "None" not in text and "GatysConfig" not in text, (name, text)
        if name == "stylize":
            assert "(default: the built-in model)" in text
            assert f"(default: as infer.py gatys, {gatys.GatysConfig().iterations})" in text


def test_a_jax_backend_that_cannot_start_is_one_line(files, tmp_path):
    """JAX_PLATFORMS naming a backend the machine lacks (a CUDA image on a host without a GPU)
    was a traceback from the first array in every command: one line, exit 1, nothing made."""
    import os

    env = {**os.environ, "JAX_PLATFORMS": "bogus"}
    r = subprocess.run([sys.executable, str(REPO / "infer.py"), "--content", str(files["a"]),
                        "--style", str(files["style"]), "--out", str(tmp_path / "o.png")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: JAX_PLATFORMS=bogus: JAX cannot start that backend here "
                               "(Unable to initialize backend 'bogus'") and \
        r.stderr.endswith("; unset JAX_PLATFORMS or set it to cpu\n"), r.stderr
    assert not (tmp_path / "o.png").exists()


def test_fit_style_recursive_needs_a_folder(files, tmp_path, capsys):
    """`fit-style --photos c.png --recursive` fitted and said nothing of the option (stylize's
    --content refuses it the same way)."""
    assert main(["fit-style", "--style", str(files["style"]), "--photos", str(files["a"]),
                 "--out", str(tmp_path / "f.npz"), "--recursive", "--steps", "1"]) == 1
    assert one_error_line(capsys) == ("error: --recursive applies to --photos folders; none "
                                      "given")


def test_one_name_for_one_setting_across_commands():
    """Gatys iterations were --iters in gatys/analyze and --iterations in stylize/demo; no
    progress was --quiet in gatys/analyze and only --no-progress in stylize/fit-style/demo:
    each command takes both names."""
    from arbitrary_nst import cli_stylize
    from arbitrary_nst.cli import build_parser

    p = build_parser()
    base = ["--content", "c.png", "--style", "s.png", "--out", "o.png"]
    assert p.parse_args(["gatys", *base, "--iterations", "7"]).iters == 7
    assert p.parse_args(["analyze", "--out-dir", "d", "--iterations", "7"]).iters == 7
    assert cli_stylize.build_parser().parse_args([*base, "--quiet"]).no_progress
    assert p.parse_args(["fit-style", "--style", "s.png", "--photos", "c.png", "--out", "f.npz",
                         "--quiet"]).no_progress
    assert p.parse_args(["demo", "--quiet"]).no_progress


def test_gatys_value_errors_name_the_option_typed(capsys):
    """GatysConfig's checks named its fields ("iterations must be an integer >= 0", "stage
    sizes must be >= 32"): options the command does not have."""
    base = ["gatys", "--content", "c.png", "--style", "s.png", "--out", "o.png", "--size", "128"]
    for extra, want in ((["--iters", "-1"], "--iters must be an integer >= 0, got -1"),
                        (["--stages", "16"], "--stages must be >= 32, got (16,)"),
                        (["--stages", "64", "--stage-iters=-1,2"], "--stage-iters must be >= 0"),
                        (["--style-scale", "1e9"], "--style-scale must be <= ")):
        assert main([*base, *extra]) == 1, extra
        assert one_error_line(capsys).startswith(f"error: {want}"), extra
    # one option's value alone: a usage error (exit 2) as the other typed options; "inf" passed
    # the weights' type and was refused after parsing (exit 1), "nan" was refused by it (2)
    for extra, want in ((["--optimizer", "adam", "--lr", "0"],
                         "--lr: must be a finite number > 0"),
                        (["--style-scale", "-1"], "--style-scale: must be a finite number > 0"),
                        (["--content-weight", "inf"], "--content-weight: must be a finite number "
                                                      ">= 0, got inf"),
                        (["--tv-weight", "nan"], "--tv-weight: must be a finite number >= 0"),
                        (["--depth-growth", "-1"], "--depth-growth: must be a finite number > 0")):
        assert main([*base, *extra]) == 2, extra
        assert one_error_line(capsys).startswith(f"error: argument {want}"), extra


def test_stylize_and_fit_style_value_errors_name_the_option_typed(files, tmp_path, capsys):
    """The library's names were said: "strength must be in [0, 1]", "style weights must be
    finite", "fit batch size must be", "fit learning rate must be"."""
    a, s = str(files["a"]), str(files["style"])
    for argv, want in (
            (["--content", a, "--style", s, "--out", str(tmp_path / "o.png"), "--strength",
              "nan"], "error: --strength must be in [0, 1], got nan"),
            (["--content", a, "--style", s, "--out", str(tmp_path / "o.png"),
              "--style-weights", "-1"], "error: --style-weights must be finite and >= 0"),
            (["--content", a, "--style", s, "--out", str(tmp_path / "o.png"), "--palette", "2"],
             "error: --palette must be in [0, 1], got 2.0"),
            ):
        assert main(argv) == 1, argv
        assert one_error_line(capsys).startswith(want), argv
    for extra, want in ((["--batch-size", "0"], "--batch-size: must be an integer >= 1, got '0'"),
                        (["--lr", "nan"], "--lr: must be a finite number > 0, got 'nan'"),
                        (["--style-weight", "-1"],
                         "--style-weight: must be a finite number >= 0")):
        assert main(["fit-style", "--style", s, "--photos", a, "--out", str(tmp_path / "f.npz"),
                     *extra]) == 2, extra
        assert one_error_line(capsys).startswith(f"error: argument {want}"), extra


def test_preserve_color_takes_the_same_values_in_stylize_and_gatys():
    """gatys took none/luminance/match and needed a value; stylize took luminance/match/
    histogram, a bare flag meaning luminance, and refused none: one set of values now."""
    from arbitrary_nst import cli_stylize
    from arbitrary_nst.cli import build_parser, gatys_config_from_args

    base = ["gatys", "--content", "c.png", "--style", "s.png", "--out", "o.png"]
    for extra, want in (([], "none"), (["--preserve-color"], "luminance"),
                        (["--preserve-color", "histogram"], "match"),
                        (["--preserve-color", "none"], "none")):
        args = build_parser().parse_args([*base, *extra])
        assert gatys_config_from_args(args).preserve_color == want, extra
    args = cli_stylize.build_parser().parse_args(["--content", "c.png", "--style", "s.png",
                                                  "--out", "o.png", "--preserve-color", "none"])
    assert cli_stylize._validate(args) == "stylize"
    assert cli_stylize._batch_tag(args, ["s.png"]) == ("s", "")  # (named as not given)
