"""Tests of the ``stylize`` CLI (arbitrary_nst.cli_stylize), run in-process through ``main``.

A random width-0.25 model is exported to tmp; images are small and generated; style working
size 32. Every option has a test, and every bad input gives one ``error:`` line and a non-zero
exit status.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arbitrary_nst import cli_stylize, images, inference
from arbitrary_nst.errors import ModelError, one_line

REPO = Path(__file__).resolve().parents[1]
SS = "32"


def make_model_file(path: Path, vgg, seed: int = 0) -> Path:
    """A random width-0.25 model export whose embeddings matter (random head kernels)."""
    import jax.numpy as jnp
    from flax import nnx

    from arbitrary_nst.export import export_model
    from arbitrary_nst.models import ArbitraryStyleModel

    model = ArbitraryStyleModel(vgg, width=0.25, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for key, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = tuple(var.get_value().shape)
        if key[-1] == "kernel":
            std = 0.3 if "heads" in key else 1.0 / np.sqrt(np.prod(shape[:-1]))
            v = rng.normal(0.0, std, shape)
        elif key[-1] == "bias" and "heads" in key:
            c = shape[0] // 2
            v = np.concatenate([1.0 + rng.normal(0, 0.2, c), rng.normal(0, 0.2, c)])
        else:
            v = np.ones(shape) if key[-1] == "scale" else np.zeros(shape)
        var.set_value(jnp.asarray(v, jnp.float32))
    return export_model(model, path)


def png(path: Path, h: int, w: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    small = rng.random((4, 4, 3)).astype(np.float32)
    x = images.resize(small, (h, w), method="bicubic")
    Image.fromarray(images.to_uint8(x)).save(path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory, vgg):
    path = make_model_file(tmp_path_factory.mktemp("model") / "model.safetensors", vgg)
    cli_stylize._VGG["vgg"] = vgg  # share the session's VGG with the CLI's loader
    return path


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    contents = [png(d / "a.png", 37, 45, 1), png(d / "b.png", 40, 41, 2), png(d / "c.png", 33, 47, 3)]
    styles = tmp_path / "styles"
    styles.mkdir()
    s = [png(styles / "s1.png", 48, 40, 4), png(styles / "s2.png", 36, 50, 5),
         png(styles / "s3.png", 40, 40, 6), png(styles / "s4.png", 44, 36, 7)]
    return {"dir": d, "contents": contents, "styles": s, "tmp": tmp_path}


@pytest.fixture
def cli(model, capsys):
    def run(*argv, model_arg=True):
        args = [str(a) for a in argv]
        network = not any(a == "--method" and b == "gatys" for a, b in zip(args, args[1:]))
        if model_arg and network and "--model" not in args:  # (gatys refuses them)
            args += ["--model", str(model)]
        if network and "--style-size" not in args:
            args += ["--style-size", SS]
        rc = cli_stylize.main(args)
        out, err = capsys.readouterr()
        return rc, out, err

    # the tests' style size is the default, so batch output names carry no __stylesize32 (a
    # patch of its own: a test's monkeypatch.undo() keeps it)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inference, "DEFAULT_STYLE_SIZE", int(SS))
        yield run


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


def api(model, *args, **kw):
    s = cli_stylize.load_stylizer(str(model))
    return s.stylize(*args, style_size=int(SS), **kw)


# ---------------------------------------------------------------------------- single image


def test_single_image(cli, data, model):
    c, s = data["contents"][0], data["styles"][0]
    out = data["tmp"] / "o.png"
    rc, stdout, _ = cli("--content", c, "--style", s, "--out", out)
    assert rc == 0 and "wrote" in stdout
    y = np.asarray(Image.open(out), np.float32) / 255
    assert y.shape == (37, 45, 3)
    np.testing.assert_allclose(y, api(model, c, style=s), atol=1.01 / 255)


def test_style_weights_strength_preserve_color(cli, data, model):
    c = data["contents"][0]
    s1, s2 = data["styles"][:2]
    out = data["tmp"] / "mix.png"
    rc, _, _ = cli("--content", c, "--style", s1, s2, "--style-weights", 1, 3, "--strength",
                   0.5, "--preserve-color", "--out", out)
    assert rc == 0
    y = np.asarray(Image.open(out), np.float32) / 255
    ref = api(model, c, style=[s1, s2], weights=[1, 3], strength=0.5, preserve_color=True)
    np.testing.assert_allclose(y, ref, atol=1.01 / 255)
    assert np.abs(ref - api(model, c, style=s1)).mean() > 1e-3


def test_preserve_color_match(cli, data, model):
    c, s = data["contents"][0], data["styles"][0]
    out = data["tmp"] / "match.png"
    rc, _, _ = cli("--content", c, "--style", s, "--preserve-color", "match", "--out", out)
    assert rc == 0
    y = np.asarray(Image.open(out), np.float32) / 255
    np.testing.assert_allclose(y, api(model, c, style=s, preserve_color="match"), atol=1.01 / 255)


def test_palette_in_images_and_figures(cli, data, model):
    c, s = data["contents"][0], data["styles"][0]
    out = data["tmp"] / "pal.png"
    rc, _, err = cli("--content", c, "--style", s, "--palette", 0.6, "--out", out)
    assert rc == 0, err
    y = np.asarray(Image.open(out), np.float32) / 255
    ref = api(model, c, style=s, palette=0.6)
    np.testing.assert_allclose(y, ref, atol=1.01 / 255)
    assert np.abs(ref - api(model, c, style=s)).mean() > 1e-3  # the test model's palette is 0
    # the strength sweep's last tile is the full style with the same palette
    sweep = data["tmp"] / "sweep_pal.png"
    rc, _, err = cli("--content", c, "--style", s, "--strength-sweep", 2, "--tile-size", 45,
                     "--palette", 0.6, "--out", sweep)
    assert rc == 0, err
    fig = np.asarray(Image.open(sweep)).astype(np.float32) / 255
    tile1 = fig[22:22 + 37, 4 + 49:4 + 49 + 45]
    st = cli_stylize.load_stylizer(str(model))
    want = st.stylize(st.read(c, max_side=45), style=s, style_size=int(SS), palette=0.6)
    np.testing.assert_allclose(tile1, want, atol=1.01 / 255)
    # --max-size bounds the tiles too (it was ignored by the figures): 45 -> 40 px tiles
    small = data["tmp"] / "sweep_small.png"
    rc, _, err = cli("--content", c, "--style", s, "--strength-sweep", 2, "--tile-size", 45,
                     "--max-size", 40, "--out", small)
    assert rc == 0, err
    shrink = st.read(c, max_side=45).shape[0] - st.read(c, max_side=40).shape[0]
    assert shrink > 0 and Image.open(small).size[1] == Image.open(sweep).size[1] - shrink


def test_max_size_and_style_size(cli, data):
    big = png(data["tmp"] / "big.png", 74, 90, 9)
    out = data["tmp"] / "small.png"
    rc, _, _ = cli("--content", big, "--style", data["styles"][0], "--max-size", 45,
                   "--style-size", 40, "--out", out)
    assert rc == 0 and Image.open(out).size == (45, 37)


def test_model_workdir_and_dtype(cli, data, model):
    out = data["tmp"] / "bf16.png"
    rc, _, err = cli("--content", data["contents"][0], "--style", data["styles"][0], "--model",
                     model.parent, "--dtype", "bfloat16", "--out", out)
    assert rc == 0, err
    assert Image.open(out).size == (45, 37)
    # --dtype reaches the model: bfloat16 compute differs from float32, by rounding only
    f32 = data["tmp"] / "f32.png"
    assert cli("--content", data["contents"][0], "--style", data["styles"][0], "--model",
               model.parent, "--out", f32)[0] == 0
    a, b = (np.asarray(Image.open(p), np.float64) for p in (out, f32))
    diff = np.abs(a - b)
    assert diff.max() > 0 and diff.mean() < 0.02 * 255, (diff.max(), diff.mean())


# ---------------------------------------------------------------------------- batch


def test_batch_folder_names_summary_overwrite(cli, data):
    od = data["tmp"] / "out"
    s = data["styles"][0]
    rc, stdout, err = cli("--content", data["dir"], "--style", s, "--out-dir", od,
                          "--batch-size", 2, "--workers", 2)
    assert rc == 0, err
    names = sorted(p.name for p in od.iterdir())
    assert names == ["a__s1.png", "b__s1.png", "c__s1.png"]
    assert re.search(r"^done 3, skipped 0, [\d.]+ s", stdout, re.M), stdout
    assert "img" in err  # the progress bar (images/s)
    for c in data["contents"]:
        assert Image.open(od / f"{c.stem}__s1.png").size == Image.open(c).size
    # again: outputs exist -> skipped, non-zero; --overwrite replaces them
    rc, stdout, _ = cli("--content", data["dir"], "--style", s, "--out-dir", od, "--no-progress",
                        "--batch-size", 2)
    assert rc == 1 and "done 0, skipped 3 (3 output exists)" in stdout
    rc, stdout, _ = cli("--content", data["dir"], "--style", s, "--out-dir", od, "--overwrite",
                        "--no-progress", "--batch-size", 2)
    assert rc == 0 and "done 3, skipped 0" in stdout


def _bind_mount(src: Path, dst: Path) -> bool:
    dst.mkdir()
    r = subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True)
    return r.returncode == 0


def test_inputs_reached_through_a_bind_mount_are_not_overwritten(cli, data):
    """The content folder mounted a second time (Docker with one host folder at two paths):
    the check compared resolved paths, which differ, so ``--out`` / ``--out-dir`` through the
    other mount replaced the input photo and a user's file with ``--overwrite``, and a rerun
    stylized the first run's results again. Compared by device and inode now."""
    alias = data["tmp"] / "alias"
    if not _bind_mount(data["dir"], alias):
        pytest.skip("bind mounts need root (mount --bind)")
    try:
        s, a = data["styles"][0], data["contents"][0]
        before = a.read_bytes()
        rc, _, err = cli("--content", a, "--style", s, "--out", alias / "a.png", "--overwrite")
        assert rc == 1 and "would overwrite an input file" in one_error_line(err), err
        assert a.read_bytes() == before
        rc, out, err = cli("--content", data["dir"], "--style", s, "--out-dir", alias,
                           "--no-progress")
        assert rc == 0 and "done 3, skipped 0" in out, (out, err)
        made = (data["dir"] / "a__s1.png").read_bytes()
        rc, out, err = cli("--content", data["dir"], "--style", s, "--out-dir", alias,
                           "--no-progress", "--overwrite")  # (a rerun: its results are inputs)
        assert "done 0" in out and "a__s1.png__s1" not in out + err, (out, err)
        assert sorted(p.name for p in data["dir"].iterdir()) == [
            "a.png", "a__s1.png", "b.png", "b__s1.png", "c.png", "c__s1.png"]
        assert (data["dir"] / "a__s1.png").read_bytes() == made and a.read_bytes() == before
    finally:
        subprocess.run(["umount", str(alias)], check=False)


def test_batch_glob_recursive_and_mixed_names(cli, data):
    sub = data["dir"] / "sub"
    sub.mkdir()
    png(sub / "d.png", 38, 44, 12)
    od = data["tmp"] / "o2"
    s1, s2 = data["styles"][:2]
    rc, stdout, _ = cli("--content", str(data["dir"] / "[ab].png"), "--style", s1, s2,
                        "--out-dir", od, "--no-progress", "--batch-size", 2)
    assert rc == 0 and sorted(p.name for p in od.iterdir()) == ["a__s1+s2.png", "b__s1+s2.png"]
    od3 = data["tmp"] / "o3"
    rc, stdout, _ = cli("--content", data["dir"], "--recursive", "--style", s1, "--out-dir",
                        od3, "--no-progress", "--batch-size", 2)
    assert rc == 0 and "done 4" in stdout and (od3 / "sub" / "d__s1.png").exists()
    # the input tree is mirrored: sub/a.png and a.png (a camera's DCIM/100/IMG_0001.JPG and
    # DCIM/101/IMG_0001.JPG) both get their output (one was skipped as a duplicate name)
    png(sub / "a.png", 30, 30, 13)
    od4 = data["tmp"] / "o4"
    rc, stdout, err = cli("--content", data["dir"], "--recursive", "--style", s1, "--out-dir",
                          od4, "--no-progress")
    assert rc == 0 and "done 5, skipped 0" in stdout, (stdout, err)
    assert sorted(str(p.relative_to(od4)) for p in od4.rglob("*.png")) == [
        "a__s1.png", "b__s1.png", "c__s1.png", "sub/a__s1.png", "sub/d__s1.png"]
    # ... as is a glob's tree below its part without wildcards
    od5 = data["tmp"] / "o5"
    rc, stdout, _ = cli("--content", str(data["dir"] / "**" / "a.png"), "--style", s1,
                        "--out-dir", od5, "--no-progress")
    assert rc == 0 and sorted(str(p.relative_to(od5)) for p in od5.rglob("*.png")) == [
        "a__s1.png", "sub/a__s1.png"]
    # two contents with one output name (a.png, a.jpg): the skip line names the skipped file
    png(data["dir"] / "a.jpg", 30, 30, 14)
    rc, stdout, err = cli("--content", data["dir"], "--style", s1, "--out-dir", od4,
                          "--no-progress", "--overwrite")
    assert rc == 1 and "1 duplicate output name" in stdout
    assert f"skipped: {data['dir'] / 'a.png'}: its output {od4 / 'a__s1.png'} collides with " \
           f"the output of {data['dir'] / 'a.jpg'}; rename one of the inputs (or run them into " \
           "separate --out-dir folders)" in err  # (not the API's "output function" advice)
    # run again without --overwrite: the clash is still said (both said "exists; pass
    # --overwrite", and the clash showed only after --overwrite, as told)
    rc, stdout, err = cli("--content", data["dir"], "--style", s1, "--out-dir", od4,
                          "--no-progress")
    assert rc == 1 and "1 duplicate output name" in stdout and "3 output exists" in stdout
    assert f"skipped: {data['dir'] / 'a.png'}: its output {od4 / 'a__s1.png'} collides" in err


def test_a_recursive_batch_into_its_own_folder_writes_next_to_each_photo_and_reruns(cli, data):
    """With --out-dir = the --content folder and --recursive, each result lands next to its
    photo (the tree is mirrored onto itself); a rerun skips them as earlier outputs, one with
    another style does not stylize them again."""
    sub = data["dir"] / "sub"
    sub.mkdir()
    png(sub / "d.png", 38, 44, 12)
    s1, s2 = data["styles"][:2]
    argv = ("--content", data["dir"], "--recursive", "--out-dir", data["dir"], "--no-progress")
    rc, stdout, _ = cli(*argv, "--style", s1)
    assert rc == 0 and (sub / "d__s1.png").is_file() and (data["dir"] / "a__s1.png").is_file()
    rc, stdout, _ = cli(*argv, "--style", s1)
    assert rc == 1 and "done 0, skipped 8 (4 output exists, 4 earlier output)" in stdout, stdout
    rc, stdout, _ = cli(*argv, "--style", s2)
    assert "done 4, skipped 4" in stdout and not list(data["dir"].rglob("*__s1__s2.png"))


def test_several_contents_are_one_batch_and_a_file_named_twice_is_one_job(cli, data):
    """``--content a b`` (an unquoted shell glob expands to this) and ``--content a --content
    b`` stylize both: --content kept only its last value (exit 0, "skipped 0"), and the
    shell's expansion was "unrecognized arguments". A file also inside a folder given is one
    job, not a "duplicate output name" skip."""
    a, b, c = data["contents"]
    s = data["styles"][0]
    for i, argv in enumerate((["--content", a, b], ["--content", a, "--content", b],
                              ["--content", a, data["dir"]])):
        od = data["tmp"] / f"several{i}"
        rc, stdout, err = cli(*argv, "--style", s, "--out-dir", od, "--no-progress")
        want = ["a__s1.png", "b__s1.png"] + (["c__s1.png"] if i == 2 else [])
        assert rc == 0 and sorted(p.name for p in od.iterdir()) == want, (argv, stdout, err)
        assert f"done {len(want)}, skipped 0" in stdout
    # one output file for several contents is still refused, naming them all
    rc, _, err = cli("--content", a, b, "--style", s, "--out", data["tmp"] / "x.png")
    assert rc == 1 and one_error_line(err) == (f"error: {a} {b}: matches 2 images; use "
                                               "--out-dir for a batch")


def test_options_that_take_one_value_given_twice_are_usage_errors(cli, data):
    """argparse keeps the last of a repeated option without a word (``--strength 0.5 ...
    --strength 1`` ran at 1); every command of the project refuses it (status 2)."""
    a, s = data["contents"][0], data["styles"][0]
    for argv in (["--strength", "0.5", "--strength", "1", "--out", data["tmp"] / "o.png"],
                 ["--out", data["tmp"] / "o.png", "--out", data["tmp"] / "p.png"],
                 ["--out-dir", data["tmp"] / "d", "--max-size=64", "--max-size", "32"]):
        rc, _, err = cli("--content", a, "--style", s, *argv)
        assert rc == 2 and "given more than once (only the last would count); give it once" in \
            one_error_line(err), (argv, err)
    assert not (data["tmp"] / "o.png").exists() and not (data["tmp"] / "d").exists()


@pytest.mark.parametrize("argv, message", [
    (["--recursive"], "error: --recursive applies to --content folders; none given (a glob "
                      "takes subfolders with '**')"),
    (["--refine", "3", "--strength", "0"], "error: --refine does nothing at --strength 0 (the "
                                           "photo's own embedding); drop one of them"),
])
def test_options_that_would_do_nothing_are_refused(cli, data, argv, message):
    """``--recursive`` with files or globs only, and ``--refine`` at strength 0 (23 s of Adam
    steps whose result equals plain strength 0), were accepted and did nothing."""
    rc, _, err = cli("--content", data["contents"][0], "--style", data["styles"][0],
                     "--out", data["tmp"] / "o.png", *argv)
    assert rc == 1 and one_error_line(err) == message


def test_strength_0_without_refine_is_a_plain_run(cli, data):
    """Only --refine is refused at --strength 0: --strength 0 alone (the photo's own
    embedding) stylizes as asked."""
    out = data["tmp"] / "o.png"
    rc, _, err = cli("--content", data["contents"][0], "--style", data["styles"][0],
                     "--strength", 0, "--out", out)
    assert rc == 0 and out.is_file(), err


def test_batch_goes_on_past_bad_files(cli, data):
    d = data["dir"]
    (d / "empty.png").write_bytes(b"")
    (d / "text.jpg").write_text("not an image")
    (d / "trunc.png").write_bytes(data["contents"][0].read_bytes()[:150])
    od = data["tmp"] / "out"
    rc, stdout, err = cli("--content", d, "--style", data["styles"][0], "--out-dir", od,
                          "--no-progress", "--batch-size", 2)
    assert rc == 1
    assert "done 3, skipped 3 (" in stdout
    for kind in ("1 empty file", "1 not an image", "1 truncated or corrupt"):
        assert kind in stdout
    skipped = [ln for ln in err.splitlines() if ln.startswith("skipped: ")]
    assert len(skipped) == 3
    assert sorted(p.name for p in od.iterdir()) == ["a__s1.png", "b__s1.png", "c__s1.png"]


@pytest.mark.skipif(sys.platform != "linux", reason="file names of arbitrary bytes")
def test_skipped_names_with_control_characters_stay_one_escaped_line(cli, data):
    """A file name holding a newline split its "skipped:" line in two; one holding ESC [31m
    coloured the terminal (the error lines collapsed whitespace, the batch's did not)."""
    d = data["tmp"] / "odd"
    d.mkdir()
    png(d / "ok.png", 36, 36, 8)
    (d / "bad\nname.jpg").write_bytes(b"x")
    (d / "esc\x1b[31mred.jpg").write_bytes(b"x")
    rc, stdout, err = cli("--content", d, "--style", data["styles"][0], "--out-dir",
                          data["tmp"] / "o", "--no-progress")
    assert rc == 1 and "done 1, skipped 2" in stdout, (stdout, err)
    lines = err.splitlines()
    assert f"skipped: {d}/bad name.jpg: not an image (cannot identify format)" in lines, err
    assert any(ln.startswith(f"skipped: {d}/esc\\x1b[31mred.jpg: ") for ln in lines), err
    assert "\x1b" not in err
    assert one_line("a\x07b\x9bc\u2028d") == "a\\x07b\\x9bc d"  # (U+2028 is whitespace)


@pytest.mark.skipif(sys.platform != "linux", reason="file names of arbitrary bytes")
def test_names_that_are_not_utf8_are_printed_not_a_crash(cli, data):
    # a Latin-1 "é" decodes to a surrogate: printing "wrote <name>" to a strict UTF-8 stdout
    # raised UnicodeEncodeError after the image was written
    out = data["tmp"] / os.fsdecode(b"caf\xe9.png")
    rc, stdout, err = cli("--content", data["contents"][0], "--style", data["styles"][0],
                          "--out", out)
    assert rc == 0, err
    assert os.fsencode(out) in [os.fsencode(p) for p in data["tmp"].iterdir()]
    assert "wrote " in stdout and "caf\\udce9.png" in stdout


def test_batch_reports_unreadable_subfolders_and_broken_links(cli, data, unlistable):
    # --recursive over a tree with a subfolder that cannot be listed: skipped and named, the
    # rest stylized (it stopped the whole job); a symlink whose photo is gone: skipped, named
    d = data["dir"]
    (d / "locked").mkdir()
    png(d / "locked" / "x.png", 30, 30, 20)
    png(d / "sub_ok.png", 30, 30, 21)
    if hasattr(os, "symlink"):
        os.symlink(d / "gone.png", d / "broken.png")
    unlistable("locked")
    od = data["tmp"] / "out"
    rc, stdout, err = cli("--content", d, "--recursive", "--style", data["styles"][0],
                          "--out-dir", od, "--no-progress")
    assert rc == 1
    assert f"skipped: {d / 'locked'}: permission denied (cannot list directory)" in err
    assert "1 permission denied" in stdout and "done 4" in stdout
    if hasattr(os, "symlink"):
        assert f"skipped: {d / 'broken.png'}: no such file" in err and "1 missing" in stdout
    assert len([ln for ln in err.splitlines() if ln.startswith("skipped: ")]) == 2
    assert sorted(p.name for p in od.iterdir()) == [f"{x}__s1.png" for x in
                                                     ("a", "b", "c", "sub_ok")]


def test_batch_into_the_content_folder_reruns_cleanly(cli, data):
    """--out-dir = the content folder: a rerun does not stylize the first run's outputs again
    (no a__s1__s1.png) and reports them as existing; --overwrite does not replace them either
    (a name match cannot tell an earlier result from a photo of that name)."""
    d, s = data["dir"], data["styles"][0]
    originals = {c.name: c.read_bytes() for c in data["contents"]}
    rc, stdout, _ = cli("--content", d, "--style", s, "--out-dir", d, "--no-progress")
    assert rc == 0 and "done 3, skipped 0" in stdout
    first = {p.name: p.read_bytes() for p in d.iterdir()}
    rc, stdout, err = cli("--content", d, "--style", s, "--out-dir", d, "--no-progress")
    assert rc == 1 and "done 0, skipped 6 (3 output exists, 3 earlier output)" in stdout
    assert {p.name: p.read_bytes() for p in d.iterdir()} == first  # nothing new, nothing changed
    assert f"{d / 'a__s1.png'}: this job's output for {d / 'a.png'} (an earlier run" in err
    rc, stdout, _ = cli("--content", d, "--style", s, "--out-dir", d, "--overwrite",
                        "--no-progress")
    assert rc == 1 and "done 0, skipped 6 (3 output exists, 3 earlier output)" in stdout
    assert "not replaced even with --overwrite; write to another folder" in err
    assert {p.name: p.read_bytes() for p in d.iterdir()} == first
    assert all((d / n).read_bytes() == b for n, b in originals.items())
    # a content that is its own output stays an input
    rc, _, err = cli("--content", data["contents"][0], "--style", s, "--out",
                     data["contents"][0], "--overwrite")
    assert rc == 1 and "would overwrite an input" in one_error_line(err)


def test_interrupted_batch_says_what_was_done_and_how_to_finish(cli, data, monkeypatch):
    real = inference.Stylizer.stylize_files

    def two_then_ctrl_c(self, *a, **k):
        for i, r in enumerate(real(self, *a, **k)):
            if i == 2:
                raise KeyboardInterrupt
            yield r

    monkeypatch.setattr(inference.Stylizer, "stylize_files", two_then_ctrl_c)
    od = data["tmp"] / "int"
    rc, stdout, err = cli("--content", data["dir"], "--style", data["styles"][0], "--out-dir", od,
                          "--no-progress")
    assert rc == 130 and err.strip() == "error: interrupted"
    # two reported, and the third, written but not reported when Ctrl-C came, counted too
    written = sorted(p.name for p in od.iterdir())
    assert re.search(rf"^done {len(written)}, skipped 0, .*; interrupted: run the same command "
                     "again", stdout, re.M) and len(written) == 3, (stdout, written)
    monkeypatch.undo()
    rc, stdout, _ = cli("--content", data["dir"], "--style", data["styles"][0], "--out-dir", od,
                        "--no-progress")
    assert rc == 1 and "done 0, skipped 3 (3 output exists)" in stdout, stdout
    # with --overwrite an output that was there before counts only once replaced (a writer
    # thread replaced one, then Ctrl-C came before any result was reported)

    def one_written_then_ctrl_c(self, contents, styles, *, output, **k):
        images.save_image(output(contents[1]), np.zeros((4, 4, 3), np.float32),
                          overwrite=True)
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(inference.Stylizer, "stylize_files", one_written_then_ctrl_c)
    rc, stdout, _ = cli("--content", data["dir"], "--style", data["styles"][0], "--out-dir", od,
                        "--no-progress", "--overwrite")
    assert rc == 130 and re.search(r"^done 1, skipped 0, .*; interrupted", stdout, re.M), stdout


@pytest.fixture
def stop_signals_by_default():
    """SIGTERM / SIGHUP with their default action, as a command starts with them (restored)."""
    import signal

    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    previous = {n: signal.signal(getattr(signal, n), signal.SIG_DFL) for n in names}
    yield
    for n, h in previous.items():
        signal.signal(getattr(signal, n), h)


def test_sigterm_stops_a_batch_like_ctrl_c(cli, data, monkeypatch, stop_signals_by_default):
    """``kill`` (SIGTERM) killed a batch on the spot without a word (its bar at "0/12" with 7
    outputs written): it is an interruption now, the summary says what is on disk, the
    status is 143."""
    import os
    import signal
    import time

    from arbitrary_nst.errors import run_command

    real = inference.Stylizer.stylize_files

    def two_then_sigterm(self, *a, **k):
        for i, r in enumerate(real(self, *a, **k)):
            if i == 2:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # (interrupted at once)
            yield r

    monkeypatch.setattr(inference.Stylizer, "stylize_files", two_then_sigterm)
    od = data["tmp"] / "term"
    got = {}

    def command():
        got["rc"], got["out"], got["err"] = cli(
            "--content", data["dir"], "--style", data["styles"][0], "--out-dir", od,
            "--no-progress")
        return got["rc"]

    t0 = time.perf_counter()
    assert run_command(command) == 143 and time.perf_counter() - t0 < 30
    assert got["err"].strip() == "error: interrupted", got
    written = sorted(p.name for p in od.iterdir())
    assert re.search(rf"^done {len(written)}, skipped 0, .*; interrupted: run the same command "
                     "again", got["out"], re.M) and len(written) == 3, (got, written)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # (restored)


def test_sigterm_during_refine_stops_within_a_step(cli, data, monkeypatch,
                                                   stop_signals_by_default):
    """--refine runs in a decode thread: SIGTERM (or Ctrl-C) reached the main thread at once,
    but its clean-up waited for the thread's every remaining step (a long --refine never
    stopped). The refinement now stops at its next step."""
    import os
    import signal
    import time

    from arbitrary_nst import refine
    from arbitrary_nst.errors import run_command

    real, calls = refine._refine_step, []

    def step(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        if len(calls) > 60:  # (the old code ran all 100000 steps: fail, do not hang)
            raise RuntimeError("the refinement went on after SIGTERM")
        return real(*a, **k)

    monkeypatch.setattr(refine, "_refine_step", step)
    got = {}

    def command():
        got["rc"], got["out"], got["err"] = cli(
            "--content", data["contents"][0], "--style", data["styles"][0], "--out",
            data["tmp"] / "r.png", "--refine", "100000", "--no-progress")
        return got["rc"]

    t0 = time.perf_counter()
    assert run_command(command) == 143, got
    assert len(calls) <= 5 and time.perf_counter() - t0 < 120, (len(calls), got)
    assert got["err"].strip().endswith("error: interrupted"), got
    assert not (data["tmp"] / "r.png").exists()


def test_sighup_is_an_interruption_unless_ignored(stop_signals_by_default):
    """A closed terminal (SIGHUP) stops a command like Ctrl-C (status 129); under ``nohup``
    (SIGHUP ignored) the command goes on."""
    import os
    import signal
    import time

    from arbitrary_nst.errors import Terminated, run_command

    if not hasattr(signal, "SIGHUP"):
        pytest.skip("no SIGHUP here")
    seen = []

    def command():
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(5)
            return 0
        except KeyboardInterrupt as e:
            seen.append(e)
            return 130

    assert run_command(command) == 129
    assert isinstance(seen[0], Terminated) and seen[0].signum == signal.SIGHUP
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    # the terminal is gone: printing what was kept fails (EIO), still 129, no traceback

    def command_without_a_terminal():
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(5)
            return 0
        except KeyboardInterrupt:
            raise OSError(5, "Input/output error")

    assert run_command(command_without_a_terminal) == 129
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
    t0 = time.perf_counter()
    assert run_command(lambda: (os.kill(os.getpid(), signal.SIGHUP), time.sleep(0.2), 0)[-1]) == 0
    assert time.perf_counter() - t0 >= 0.2 and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    # an unrelated OSError is not hidden
    with pytest.raises(OSError, match="disk"):
        run_command(lambda: (_ for _ in ()).throw(OSError("disk")))


def test_skip_kinds_ignore_the_words_in_paths(cli, data):
    """The summary's kinds come from the reason, not the file name: a folder called 'empty
    file' holding a truncated image is one 'truncated or corrupt'."""
    d = data["tmp"] / "empty file exists"
    d.mkdir()
    (d / "trunc.png").write_bytes(data["contents"][0].read_bytes()[:150])
    (d / "text.jpg").write_text("not an image")
    png(d / "a.png", 30, 30, 1)
    png(d / "a.jpg", 30, 30, 2)  # the same output name as a.png
    rc, stdout, _ = cli("--content", d, "--style", data["styles"][0], "--out-dir",
                        data["tmp"] / "k", "--no-progress")
    assert rc == 1 and "done 1, skipped 3 (" in stdout, stdout
    for kind in ("1 truncated or corrupt", "1 not an image", "1 duplicate output name"):
        assert kind in stdout, stdout


def test_a_batch_takes_every_format_the_loader_reads_and_names_the_unreadable(cli, data):
    """A folder batch stylized only the ten extensions of a fixed list: an AVIF, a PPM and a
    TGA photo were left out ("done 1, skipped 0", exit 0), as were an iPhone HEIC and a symlink
    loop, which are now skipped with their reasons and kinds."""
    d = data["tmp"] / "formats"
    d.mkdir()
    x = np.asarray(Image.open(data["contents"][0]).convert("RGB"))
    for name in ("a.ppm", "b.tga", "c.jpg") + (("e.avif",) if ".avif" in images.IMAGE_EXTENSIONS
                                               else ()):
        Image.fromarray(x).save(d / name)
    (d / "f.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    (d / "notes.txt").write_text("not an image, not a photo: ignored")
    os.symlink(d / "loop2.jpg", d / "loop1.jpg")
    os.symlink(d / "loop1.jpg", d / "loop2.jpg")
    n = 4 if ".avif" in images.IMAGE_EXTENSIONS else 3
    rc, stdout, err = cli("--content", d, "--style", data["styles"][0], "--out-dir",
                          data["tmp"] / "kf", "--no-progress")
    if ".heic" in images.IMAGE_EXTENSIONS:  # (pillow-heif installed: the fake HEIC is corrupt)
        pytest.skip("HEIC is readable here")
    assert rc == 1 and f"done {n}, skipped 3 (" in stdout, (stdout, err)
    assert "1 unsupported format" in stdout and "2 symlink loop" in stdout, stdout
    assert f"skipped: {d / 'f.heic'}: HEIC is not readable here (pip install pillow-heif)" in err


def test_a_raw_or_heic_next_to_its_jpeg_does_not_take_the_jpegs_output_name(cli, data):
    """A camera folder holds IMG_0001.CR2 next to IMG_0001.JPG (and a phone HEIC next to its
    PNG): the unreadable file sorted first claimed the output name, so the JPEG was skipped as
    a "duplicate output name" too and the batch wrote nothing. A symlink alias in a folder is
    its own job (a dedupe by real path let the alias take the photo's place)."""
    d = data["tmp"] / "camera"
    d.mkdir()
    Image.open(data["contents"][0]).save(d / "IMG_0001.JPG")
    Image.open(data["contents"][1]).save(d / "IMG_0002.png")
    (d / "IMG_0001.CR2").write_bytes(os.urandom(256))
    (d / "IMG_0002.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    os.symlink(d / "IMG_0002.png", d / "alias.png")
    od = data["tmp"] / "cam_out"
    rc, stdout, err = cli("--content", d, "--style", data["styles"][0], "--out-dir", od,
                          "--no-progress")
    assert sorted(p.name for p in od.iterdir()) == ["IMG_0001__s1.png", "IMG_0002__s1.png",
                                                    "alias__s1.png"], (stdout, err)
    skipped = 1 if ".heic" in images.IMAGE_EXTENSIONS else 2
    assert rc == 1 and f"done 3, skipped {skipped} ({skipped} unsupported format)" in stdout
    assert "duplicate" not in stdout + err


def test_recursive_with_a_missing_folder_says_it_is_missing(cli, data):
    """A typo'd folder with --recursive said "--recursive applies to --content folders; none
    given" instead of naming the missing folder."""
    rc, _, err = cli("--content", data["tmp"] / "photoz", "--recursive", "--style",
                     data["styles"][0], "--out-dir", data["tmp"] / "o")
    assert rc == 1 and "photoz" in one_error_line(err) and "no such" in err


def test_a_failed_run_removes_the_output_folders_it_created_and_left_empty(cli, data):
    """A bad style found after the output folder was made left ``a/deep/`` behind (empty);
    folders that were there before, and folders holding anything, stay."""
    c, s = data["contents"][0], data["styles"][0]
    missing = data["tmp"] / "nope.png"
    rc, _, err = cli("--content", c, "--style", missing, "--out-dir", data["tmp"] / "a" / "deep")
    assert rc == 1 and "no such file" in one_error_line(err)
    assert not (data["tmp"] / "a").exists()
    rc, _, _ = cli("--content", c, "--style", missing, "--out", data["tmp"] / "b" / "o.png")
    assert rc == 1 and not (data["tmp"] / "b").exists()
    (data["tmp"] / "there").mkdir()
    rc, _, _ = cli("--content", c, "--style", missing, "--out-dir", data["tmp"] / "there" / "x")
    assert rc == 1 and (data["tmp"] / "there").is_dir()
    assert not (data["tmp"] / "there" / "x").exists()
    rc, _, _ = cli("--content", c, "--style", s, "--out-dir", data["tmp"] / "ok" / "deep",
                   "--no-progress")
    assert rc == 0 and (data["tmp"] / "ok" / "deep" / "a__s1.png").is_file()


# ---------------------------------------------------------------------------- figures


def test_interpolate_strip_triangle_grid(cli, data):
    c = data["contents"][0]
    s = data["styles"]
    for n, steps, cells in ((2, 3, (1, 3)), (3, 3, (3, 3)), (4, 2, (2, 2))):
        out = data["tmp"] / f"interp{n}.png"
        rc, stdout, err = cli("--content", c, "--interpolate", *s[:n], "--steps", steps,
                              "--tile-size", 45, "--strength", 0.8, "--batch-size", 2,
                              "--out", out)
        assert rc == 0, err
        w, h = Image.open(out).size
        rows, cols = cells
        assert 4 + cols * (45 + 4) <= w <= 4 + cols * (45 + 4) + 60  # 45 x 37 tiles (+ title)
        assert h == 18 + 4 + rows * (37 + 14 + 4)
        assert f"{steps * (steps + 1) // 2 if n == 3 else rows * cols} tiles" in stdout
    # the triangle's first row holds one centred tile: the corners of its row are white
    tri = np.asarray(Image.open(data["tmp"] / "interp3.png"))
    assert (tri[25:50, 5:40] == 255).all()
    # --out-dir gives a default name
    rc, _, _ = cli("--content", c, "--interpolate", s[0], s[1], "--steps", 2, "--tile-size", 45,
                   "--batch-size", 2, "--out-dir", data["tmp"] / "figs")
    assert rc == 0 and (data["tmp"] / "figs" / "a__s1+s2__interp__steps2.png").exists()


def test_strength_sweep(cli, data, model):
    c = data["contents"][0]
    out = data["tmp"] / "sweep.png"
    rc, _, err = cli("--content", c, "--style", data["styles"][0], "--strength-sweep", 3,
                     "--tile-size", 45, "--batch-size", 2, "--out", out)
    assert rc == 0, err
    fig = np.asarray(Image.open(out))
    assert fig.shape[1] == 4 + 3 * 49
    # tile 0 is strength 0: the content's own embedding
    s = cli_stylize.load_stylizer(str(model))
    img = s.read(c, max_side=45)
    t0 = s.transfer(img, s.embed(img, style_size=32), batch_size=2)[0]
    tile0 = fig[22:22 + 37, 4:4 + 45].astype(np.float32) / 255
    np.testing.assert_allclose(tile0, t0, atol=1.01 / 255)


def test_method_gatys_uses_gatys_with_same_io(cli, data, monkeypatch):
    from arbitrary_nst import gatys

    calls = []

    class R:
        def __init__(self, x):
            self.images = x[None]

    def fake_run(content, styles, *, style_weights=None, config=None, progress=True,
                 vgg_params=None, style_names=None):
        assert style_names == [str(s) for s in data["styles"][:len(styles)]]  # for messages
        calls.append((content.shape, len(styles), list(style_weights), config))
        return R(1 - content)

    monkeypatch.setattr(gatys, "run", fake_run)
    monkeypatch.setattr(gatys, "load_params", lambda cfg: {})
    od = data["tmp"] / "g"
    rc, stdout, err = cli("--content", data["dir"], "--style", *data["styles"][:2],
                          "--style-weights", 1, 1, "--method", "gatys", "--iterations", 7,
                          "--strength", 0.5, "--preserve-color", "--max-size", 40, "--out-dir",
                          od, "--no-progress")
    assert rc == 0, err
    assert sorted(p.name for p in od.iterdir()) == [  # (equal weights: the default mix)
        f"{x}__s1+s2__gatys__iterations7__strength0.5__preserve-luminance.png" for x in "abc"]
    shape, n, w, cfg = calls[0]
    assert n == 2 and w == [0.5, 0.5] and max(shape[:2]) <= 40
    assert cfg.iterations == 7 and cfg.preserve_color == "luminance"
    assert cfg.style_weight == gatys.GatysConfig().style_weight * 0.5
    # the Gatys path shares the batch semantics: a rerun into the content folder
    rc, _, _ = cli("--content", data["dir"], "--style", data["styles"][0], "--method", "gatys",
                   "--out-dir", data["dir"], "--no-progress")
    assert rc == 0
    rc, stdout, _ = cli("--content", data["dir"], "--style", data["styles"][0], "--method",
                        "gatys", "--out-dir", data["dir"], "--no-progress")
    assert rc == 1 and "done 0, skipped 6 (3 output exists, 3 earlier output)" in stdout
    rc, _, err = cli("--content", data["contents"][0], "--method", "gatys", "--interpolate",
                     *data["styles"][:2], "--out", data["tmp"] / "x.png")
    assert rc == 1 and "gatys" in one_error_line(err)


def test_a_photo_too_small_for_gatys_is_skipped_as_too_small(cli, data, tmp_path):
    """Gatys needs 32 px on each side (VGG's pooling; the network pads smaller photos): an
    8x8 photo in a batch was skipped as "(1 error)", the summary's kind for the unknown."""
    d = tmp_path / "photos"
    d.mkdir()
    images.save_image(d / "tiny.png", np.full((8, 20, 3), 0.5, np.float32))
    rc, stdout, err = cli("--content", d, "--style", data["styles"][0], "--method", "gatys",
                          "--iterations", 1, "--out-dir", tmp_path / "o", "--no-progress")
    assert rc == 1 and "at least 32 px on each side, got 20x8" in err, err  # (was H x W)
    assert "done 0, skipped 1 (1 too small)" in stdout, stdout


# ---------------------------------------------------------------------------- bad inputs


def test_missing_builtin_model(cli, data, monkeypatch, tmp_path):
    monkeypatch.setattr(inference, "BUILTIN_MODEL", tmp_path / "none" / "model.safetensors")
    rc, _, err = cli("--content", data["contents"][0], "--style", data["styles"][0], "--out",
                     tmp_path / "o.png", model_arg=False)
    assert rc == 1 and "built-in model" in one_error_line(err)


def test_corrupt_model_file(cli, data, tmp_path, model):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(model.read_bytes()[:5000])
    rc, _, err = cli("--content", data["contents"][0], "--style", data["styles"][0], "--out",
                     tmp_path / "o.png", "--model", bad)
    assert rc == 1 and "bad.safetensors" in one_error_line(err)
    onnx = tmp_path / "model.onnx"  # an `infer.py export-onnx` file given as --model
    onnx.write_bytes(b"\x08\x07" + b"x" * 100)
    rc, _, err = cli("--content", data["contents"][0], "--style", data["styles"][0], "--out",
                     tmp_path / "o.png", "--model", onnx)
    assert rc == 1 and "an ONNX file, not a model export" in one_error_line(err)
    # (this command has --backend; fit-style, which has none, was told to use it too)
    assert one_error_line(err).endswith("(--backend onnxruntime runs that export on "
                                        "onnxruntime)")
    with pytest.raises(ModelError) as e:
        inference.Stylizer.load(onnx)
    assert str(e.value).endswith("pass the .safetensors export it was made from"), e.value


@pytest.mark.parametrize("case", [
    "missing", "not_image", "truncated", "zero_byte", "huge", "missing_style", "bad_style",
    "weights_count", "negative_weight", "strength_high", "strength_low", "out_is_input",
    "folder_to_out", "out_and_out_dir", "no_out", "unwritable_out_dir", "unreadable_folder",
    "bad_out_ext", "interpolate_with_style", "steps", "sweep_steps", "empty_folder",
    "no_match_glob", "max_size_negative", "batch_size_zero", "palette_high", "palette_gatys",
    "style_size_huge", "iterations_network", "strength_with_sweep", "gatys_tiny_max_size",
    "too_many_tiles", "long_out_name", "dtype_gatys", "fitted_gatys",
    "steps_without_interpolate", "tile_size_without_figure", "palette_luminance",
    "out_is_a_folder", "model_is_fitted", "fake_npz_style", "gatys_model", "gatys_style_size",
    "gatys_batch_size", "gatys_workers"])
def test_bad_inputs_one_line(cli, data, case, monkeypatch):
    t = data["tmp"]
    c, s = data["contents"][0], data["styles"][0]
    out = t / "o.png"
    args = ["--content", c, "--style", s, "--out", out]
    if case == "missing":
        args[1] = t / "nope.png"
    elif case == "not_image":
        (t / "x.png").write_text("hello")
        args[1] = t / "x.png"
    elif case == "truncated":
        (t / "x.png").write_bytes(c.read_bytes()[:120])
        args[1] = t / "x.png"
    elif case == "zero_byte":
        (t / "x.png").write_bytes(b"")
        args[1] = t / "x.png"
    elif case == "huge":
        args += ["--max-pixels", 100]
    elif case == "missing_style":
        args[3] = t / "nostyle.png"
    elif case == "bad_style":
        (t / "s.png").write_text("hello")
        args[3] = t / "s.png"
    elif case == "weights_count":
        args += ["--style-weights", 1, 2]
    elif case == "negative_weight":
        args = ["--content", c, "--style", s, s, "--style-weights", 1, -2, "--out", out]
    elif case == "strength_high":
        args += ["--strength", 1.5]
    elif case == "strength_low":
        args += ["--strength", -0.1]
    elif case == "out_is_input":
        args[-1] = c
        args += ["--overwrite"]
    elif case == "folder_to_out":
        args[1] = data["dir"]
    elif case == "out_and_out_dir":
        args += ["--out-dir", t / "od"]
    elif case == "no_out":
        args = args[:4]
    elif case == "unwritable_out_dir":
        (t / "file").write_text("x")
        args = args[:4] + ["--out-dir", t / "file" / "sub"]
    elif case == "unreadable_folder":
        real = os.scandir

        def deny(p="."):
            if os.fspath(p) == os.fspath(data["dir"]):
                raise PermissionError(13, "Permission denied", os.fspath(p))
            return real(p)

        monkeypatch.setattr(images.os, "scandir", deny)
        args = ["--content", data["dir"], "--style", s, "--out-dir", t / "od"]
    elif case == "bad_out_ext":
        args[-1] = t / "o.xyz"
    elif case == "interpolate_with_style":
        args += ["--interpolate", s, s]
    elif case == "steps":
        args = ["--content", c, "--interpolate", s, s, "--steps", 1, "--out", out]
    elif case == "sweep_steps":
        args += ["--strength-sweep", 1]
    elif case == "empty_folder":
        (t / "empty").mkdir()
        args = ["--content", t / "empty", "--style", s, "--out-dir", t / "od"]
    elif case == "no_match_glob":
        args = ["--content", str(t / "*.webp"), "--style", s, "--out-dir", t / "od"]
    elif case == "max_size_negative":
        args += ["--max-size", -1]
    elif case == "batch_size_zero":
        args += ["--batch-size", 0]
    elif case == "palette_high":
        args += ["--palette", 1.5]
    elif case == "palette_gatys":
        args += ["--palette", 0.5, "--method", "gatys"]
    elif case == "style_size_huge":  # was minutes of silence, then the kernel's OOM kill
        args += ["--style-size", 100000]
    elif case == "iterations_network":  # was silently ignored
        args += ["--iterations", 5]
    elif case == "strength_with_sweep":
        args += ["--strength-sweep", 3, "--strength", 0.5]
    elif case == "gatys_tiny_max_size":  # was one nameless skip line per image
        args += ["--method", "gatys", "--max-size", 16]
    elif case == "too_many_tiles":
        args = ["--content", c, "--interpolate", s, s, s, s, "--steps", 100, "--out", out]
    elif case == "long_out_name":
        args[-1] = t / ("o" * 300 + ".png")
    elif case == "dtype_gatys":
        args += ["--method", "gatys", "--dtype", "bfloat16"]
    elif case == "steps_without_interpolate":  # was silently ignored
        args += ["--steps", 3]
    elif case == "tile_size_without_figure":
        args += ["--tile-size", 64]
    elif case == "palette_luminance":  # was silently ignored
        args += ["--preserve-color", "--palette", 1]
    elif case == "out_is_a_folder":  # said "unsupported output format (no extension)"
        (t / "od").mkdir(exist_ok=True)
        args[-1] = t / "od"
    elif case == "model_is_fitted":  # said "not a readable model export (... header ...)"
        (t / "f.npz").write_bytes(b"PK\x03\x04")
        args += ["--model", t / "f.npz"]
    elif case == "fake_npz_style":  # a JPEG named .npz: "it holds Python objects"
        (t / "f.npz").write_bytes(s.read_bytes())
        args[3] = t / "f.npz"
    elif case == "fitted_gatys":  # in the CLI's words, not the API's
        (t / "f.npz").write_bytes(b"")
        args[3] = t / "f.npz"
        args += ["--method", "gatys"]
    elif case.startswith("gatys_"):  # the network's options were silently ignored
        opt = "--" + case[len("gatys_"):].replace("_", "-")
        args += ["--method", "gatys", opt, t / "none.safetensors" if opt == "--model" else 64]
    before = c.read_bytes()
    rc, _, err = cli(*args)
    assert rc != 0
    line = one_error_line(err)
    if case in ("gatys_model", "gatys_style_size", "gatys_batch_size", "gatys_workers"):
        assert line.endswith(f"{opt} applies to --method network only"), line
    assert len(line) < 400 + (300 if case == "long_out_name" else 0)
    if case.startswith("fitted"):
        assert "is a fitted style (.npz)" in line and "backend='" not in line
    want = {"palette_luminance": "does not apply with --preserve-color",
            "out_is_a_folder": "is a directory, expected an output file name (a folder of "
                               "outputs is --out-dir)",
            "model_is_fitted": "is a style, not a model",
            "fake_npz_style": "not an .npz archive"}.get(case)
    assert want is None or want in line, line
    assert c.read_bytes() == before  # an input is never written over
    if case not in ("out_is_input",):
        assert not out.exists() or case == "no_out"


def test_help_runs_as_module():
    r = subprocess.run([sys.executable, "-m", "arbitrary_nst.cli_stylize", "--help"],
                       capture_output=True, text=True, timeout=120, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0
    for opt in ("--content", "--style-weights", "--strength", "--preserve-color", "--max-size",
                "--out-dir", "--batch-size", "--overwrite", "--interpolate", "--steps",
                "--strength-sweep", "--method", "--model"):
        assert opt in r.stdout


def test_the_cli_imports_matplotlib_only_for_figures():
    """Building the CLI's parser imported arbitrary_nst.analysis, and with it matplotlib, for
    every command: with a read-only home it made a /tmp/matplotlib-* folder and warned."""
    code = ("import sys; from arbitrary_nst import cli; cli.build_parser(); "
            "print('matplotlib' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0 and r.stdout.strip() == "False", (r.stdout, r.stderr[-500:])


def test_size_limits_agree():
    """The CLIs keep copies of the style-size limit (not imported: fast --help)."""
    from arbitrary_nst import cli

    assert cli_stylize.MAX_STYLE_SIZE == cli.MAX_STYLE_SIZE == inference.MAX_STYLE_SIZE


def test_long_style_mixes_get_short_distinct_output_names():
    """Three 92-character style names made a file name too long, found at write time after
    the work; such names are cut with a hash of the styles' part (distinct mixes stay
    distinct, even with the same first 200 bytes); names that fit are unchanged."""
    tag1 = cli_stylize._stem(["a" * 92 + ".jpg", "b" * 92 + ".png", "c" * 92 + ".png"])
    tag2 = cli_stylize._stem(["a" * 92 + ".jpg", "b" * 92 + ".png", "c" * 91 + "d.png"])
    n1, n2 = (cli_stylize._output_name("photo", t) for t in (tag1, tag2))
    assert len(n1.encode()) <= 255 and len(n2.encode()) <= 255 and n1 != n2
    assert n1.startswith("photo__" + "a" * 92 + "+") and n1.endswith(".png")
    assert cli_stylize._output_name("photo", "x+y") == "photo__x+y.png"
    medium = "m" * 200  # (fits: unchanged, so a rerun finds its earlier output)
    assert cli_stylize._output_name("p", medium) == f"p__{medium}.png"
    # a content name that a disk holds but no output name could (80 CJK characters: 240
    # bytes) had every output skipped ("File name too long"): its part is cut too
    long1, long2 = "写" * 80, "写" * 79 + "字"
    starry = "starry_night_over_the_rhone"
    names = {cli_stylize._output_name(c, t, keep=k) for c in (long1, long2)
             for t in (starry, tag1) for k in ("", "__strength0.5")}
    assert len(names) == 8 and all(len(n.encode()) <= 255 for n in names), names
    assert cli_stylize._output_name(long1, starry).startswith("写" * 70)
    assert f"__{starry}~" in cli_stylize._output_name(long1, starry)
    assert cli_stylize._output_name(long1, "s1") == f"{long1}__s1.png"  # (fits: unchanged)


def test_a_photo_with_a_long_name_is_stylized(cli, data):
    long = data["tmp"] / "long"
    long.mkdir()
    c = long / ("写" * 80 + ".png")
    c.write_bytes(data["contents"][0].read_bytes())
    style = data["tmp"] / "starry_night_over_the_rhone.png"
    style.write_bytes(data["styles"][0].read_bytes())
    rc, out, err = cli("--content", long, "--style", style, "--out-dir", data["tmp"] / "o",
                       "--no-progress")
    assert rc == 0 and "done 1, skipped 0" in out, (out, err)
    [made] = (data["tmp"] / "o").iterdir()
    assert made.name.startswith("写" * 60) and len(made.name.encode()) <= 255
    rc, out, _ = cli("--content", long, "--style", style, "--out-dir", data["tmp"] / "o",
                     "--no-progress")
    assert rc == 1 and "1 output exists" in out  # (the same name again: a rerun skips it)


def test_ctrl_c_while_starting_up_is_an_interruption(monkeypatch, capsys):
    # building the parser imports JAX (seconds): a Ctrl-C then gave a traceback
    from arbitrary_nst import cli

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["--content", "x.png", "--style", "s.png", "--out", "o.png"]) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"


def test_a_ctrl_c_inside_a_gc_callback_is_delivered_after_it():
    """A Ctrl-C handled while JAX's gc callback ran (importing JAX runs many collections) was
    raised inside the callback, where Python discards it: half a second into ``train.py`` /
    ``infer.py`` it was lost and the whole job ran. The commands' entry points deliver it
    again once the callback is over."""
    import gc
    import signal
    import time

    from arbitrary_nst.errors import interrupts_outside_gc_callbacks

    fired = []

    def ctrl_c_during_a_collection(phase, info):
        if phase == "start" and not fired:
            fired.append(True)
            signal.raise_signal(signal.SIGINT)  # (its handler runs here, in the callback)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # (as a command has)
    after = None
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_outside_gc_callbacks():
                # (added here: a collection before the handler is set would fire it there)
                gc.callbacks.append(ctrl_c_during_a_collection)
                gc.collect()
                after = time.perf_counter()
                time.sleep(5)  # (interrupted within ~20 ms)
        assert fired and after is not None and time.perf_counter() - after < 2
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # (restored)
    finally:
        if ctrl_c_during_a_collection in gc.callbacks:
            gc.callbacks.remove(ctrl_c_during_a_collection)
        signal.signal(signal.SIGINT, previous)


def test_out_of_memory_is_one_line_and_other_failures_stay_tracebacks(monkeypatch, capsys):
    # XLA's RESOURCE_EXHAUSTED (analyze --size 1024, a huge --max-size) was a traceback
    import dataclasses

    import jax

    from arbitrary_nst import cli

    def oom(args):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating "
                                         "8816444296 bytes.")

    stylize = cli.COMMANDS["stylize"]
    monkeypatch.setitem(cli.COMMANDS, "stylize", dataclasses.replace(stylize, run=oom))
    assert cli.main(["--content", "x.png", "--style", "s.png", "--out", "o.png"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory (RESOURCE_EXHAUSTED") and err.count("\n") == 1
    # the hint names this command's options (it said "--size", which stylize does not have)
    assert err.endswith("bytes.): use smaller values of --max-size, --batch-size\n"), err

    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "stylize", dataclasses.replace(stylize, run=bug))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["--content", "x.png", "--style", "s.png", "--out", "o.png"])


# ---------------------------------------------------------------- mutation-testing pass (CLI)


def validated(*argv):
    """The parsed and validated options (no model, no files read): ``(mode, args)``."""
    args = cli_stylize.build_parser().parse_args([str(a) for a in argv])
    return cli_stylize._validate(args), args


def test_option_ranges_are_inclusive_and_each_bad_value_named():
    base = ["--content", "c.png", "--style", "s.png", "--out", "o.png"]
    # the bounds themselves are accepted
    assert validated(*base, "--style-size", 2048)[0] == "stylize"
    assert validated(*base, "--style-size", 32)[0] == "stylize"
    assert validated(*base, "--strength-sweep", 100)[0] == "sweep"
    assert validated(*base, "--strength-sweep", 2, "--tile-size", 8)[1].tile_size == 8
    assert validated(*base, "--strength-sweep", 2, "--tile-size", 4096)[1].tile_size == 4096
    assert validated(*base, "--max-size", 0)[1].max_size == 0  # 0 = keep the original size
    assert validated(*base, "--max-size", 8)[1].max_size == 8
    # defaults filled in by the validation
    mode, args = validated("--content", "c.png", "--interpolate", "a.png", "b.png", "--out",
                           "o.png")
    assert mode == "interpolate" and args.steps == 5 and args.tile_size == 256
    bad = [(["--style-size", 2049], "--style-size must be in [32, 2048], got 2049"),
           (["--strength-sweep", 101], "--strength-sweep must be in [2, 100], got 101"),
           (["--strength-sweep", 3, "--tile-size", 7], "--tile-size must be in [8, 4096], got 7"),
           (["--strength-sweep", 3, "--tile-size", 4097],
            "--tile-size must be in [8, 4096], got 4097"),
           (["--workers", 0], "--workers must be >= 1, got 0"),
           (["--max-pixels", 0], "--max-pixels must be >= 1, got 0"),
           (["--refine", 2, "--preserve-color", "histogram"], "--refine does not combine")]
    for extra, msg in bad:
        with pytest.raises(cli_stylize.ConfigError) as e:
            validated(*base, *extra)
        assert msg in str(e.value), (extra, str(e.value))


def test_figures_and_stylize_load_the_model_with_the_given_dtype_and_backend(data, monkeypatch,
                                                                          capsys):
    calls = []

    def spy(model, dtype="float32", backend="jax"):
        calls.append((model, dtype, backend))
        raise cli_stylize.ConfigError("stop here")

    monkeypatch.setattr(cli_stylize, "load_stylizer", spy)
    c, s = data["contents"][0], data["styles"][0]
    out = data["tmp"] / "o.png"
    for extra in (["--strength-sweep", 3], ["--interpolate", s, s], []):
        style = [] if "--interpolate" in extra else ["--style", s]
        for opts in (["--backend", "onnxruntime"], ["--dtype", "bfloat16"]):
            assert cli_stylize.main(["--content", str(c), *map(str, style), *map(str, extra),
                                     "--out", str(out), "--model", "m.safetensors",
                                     *opts]) == 1
    assert calls == [("m.safetensors", "float32", "onnxruntime"),
                     ("m.safetensors", "bfloat16", "auto")] * 3
    assert capsys.readouterr().err.count("error: stop here\n") == 6


def _capture_figure(monkeypatch):
    seen = {}
    real = cli_stylize.compose_figure

    def capture(tiles, *, title="", layout="grid", **kw):
        seen.update(tiles=tiles, title=title, layout=layout)
        return real(tiles, title=title, layout=layout, **kw)

    monkeypatch.setattr(cli_stylize, "compose_figure", capture)
    return seen


def test_interpolation_tiles_mix_embeddings_palettes_and_strength(cli, data, model,
                                                                  monkeypatch):
    """Each tile of `--interpolate A B --steps 3 --strength 0.8 --palette 0.6` is the
    API's stylize of the same mix at strength 0.8: the embedding and the palette's colour
    moments both mixed with the content's own; the labels and the title say the mix."""
    seen = _capture_figure(monkeypatch)
    c, (s1, s2) = data["contents"][0], data["styles"][:2]
    out = data["tmp"] / "interp.png"
    rc, stdout, err = cli("--content", c, "--interpolate", s1, s2, "--strength", 0.8,
                          "--palette", 0.6, "--steps", 3, "--tile-size", 45, "--batch-size", 1,
                          "--out", out)
    assert rc == 0, err
    assert "3 tiles" in stdout and out.exists()
    tiles = seen["tiles"]
    assert [(r, col, lab) for r, col, _, lab in tiles] == [
        (0, j, lab) for j, lab in enumerate(["100/0", "50/50", "0/100"])]
    # (the settings off their defaults, as in the file name: figures made with and without
    # them had one title)
    assert seen["title"] == "% of s1 / s2, strength 0.8, --palette 0.6"
    assert seen["layout"] == "grid"
    st = cli_stylize.load_stylizer(str(model))
    img = st.read(c, max_side=45)
    for j, (_, _, got, _) in enumerate(tiles):
        t = j / 2
        want = st.stylize(img, style=[s1, s2], weights=[1 - t, t], strength=0.8, palette=0.6,
                          style_size=int(SS))
        np.testing.assert_allclose(got, want, atol=2e-4, err_msg=f"tile {j}")


def test_match_mode_figure_tiles_are_stylize_in_match_mode(cli, data, model, monkeypatch):
    """With --preserve-color match the tiles' palette aimed at the recoloured styles' moments
    (clipped working squares), stylize at the photo's: tiles differed by up to 0.03 (0.1 on
    a three-colour panorama)."""
    seen = _capture_figure(monkeypatch)
    s1, s2 = data["styles"][:2]
    c = data["tmp"] / "panorama.png"
    bands = [np.full((32, 48, 3), v, np.uint8) for v in ([220, 20, 20], [20, 20, 220],
                                                         [20, 220, 20])]
    Image.fromarray(np.concatenate(bands, 1)).save(c)
    rc, _, err = cli("--content", c, "--interpolate", s1, s2, "--steps", 2, "--palette", 1,
                     "--preserve-color", "match", "--tile-size", 144, "--batch-size", 1,
                     "--out", data["tmp"] / "m.png")
    assert rc == 0, err
    assert seen["title"] == "% of s1 / s2, --palette 1, --preserve-color match"
    st = cli_stylize.load_stylizer(str(model))
    img = st.read(c, max_side=144)
    for (_, _, got, _), w in zip(seen["tiles"], ([1, 0], [0, 1])):
        want = st.stylize(img, style=[s1, s2], weights=w, preserve_color="match", palette=1.0,
                          style_size=int(SS))
        np.testing.assert_allclose(got, want, atol=2e-4, err_msg=str(w))


def test_strength_sweep_mixes_the_styles_with_their_weights(cli, data, model, monkeypatch):
    seen = _capture_figure(monkeypatch)
    c, (s1, s2) = data["contents"][0], data["styles"][:2]
    out = data["tmp"] / "sweep.png"
    rc, _, err = cli("--content", c, "--style", s1, s2, "--style-weights", 1, 3,
                     "--strength-sweep", 3, "--tile-size", 45, "--batch-size", 1, "--out", out)
    assert rc == 0, err
    assert [lab for *_, lab in seen["tiles"]] == ["0.00", "0.50", "1.00"]
    # (the mix's weights: a 1:3 mix was titled as an even one)
    assert seen["title"] == "strength 0 .. 1, style s1 / s2 (weights 0.25, 0.75)"
    st = cli_stylize.load_stylizer(str(model))
    img = st.read(c, max_side=45)
    for (_, _, got, _), t in zip(seen["tiles"][1:], (0.5, 1.0)):
        want = st.stylize(img, style=[s1, s2], weights=[1, 3], strength=t, style_size=int(SS))
        np.testing.assert_allclose(got, want, atol=2e-4, err_msg=f"strength {t}")


def test_figures_take_one_content_and_never_write_over_a_style(cli, data):
    s1, s2 = data["styles"][:2]
    rc, _, err = cli("--content", data["dir"], "--style", s1, "--strength-sweep", 2,
                     "--tile-size", 45, "--out", data["tmp"] / "f.png")
    assert rc == 1 and "figures take one content image, found 3" in one_error_line(err)
    for fig, victim in ((["--style", s1, "--strength-sweep", 2], s1),
                        (["--interpolate", s1, s2], s2)):
        before = victim.read_bytes()
        rc, _, err = cli("--content", data["contents"][0], *fig, "--tile-size", 45,
                         "--out", victim, "--overwrite")
        assert rc == 1 and "would overwrite an input" in one_error_line(err)
        assert victim.read_bytes() == before


def test_batch_max_size_0_keeps_sizes_and_no_progress_is_silent(cli, data):
    od = data["tmp"] / "full"
    rc, stdout, err = cli("--content", data["dir"], "--style", data["styles"][0], "--out-dir",
                          od, "--max-size", 0, "--no-progress")
    assert rc == 0 and err == "", err
    assert re.fullmatch(r"done 3, skipped 0, [\d.]+ s, [\d.]+ images/s\n", stdout), stdout
    for c in data["contents"]:
        assert Image.open(od / f"{c.stem}__s1.png").size == Image.open(c).size


def test_batch_summary_line():
    from types import SimpleNamespace as R

    assert cli_stylize._summary(4, [], 2.0, 4) == "done 4, skipped 0, 2.0 s, 2.00 images/s"
    skipped = [R(kind="output exists"), R(kind=None), R(kind="output exists")]
    assert (cli_stylize._summary(1, skipped, 0.5, 4)
            == "done 1, skipped 3 (2 output exists, 1 error), 0.5 s, 2.00 images/s")
    assert cli_stylize._summary(0, skipped[:1], 0.25, 1) == \
        "done 0, skipped 1 (1 output exists), 0.2 s"


def test_gatys_method_bounds_the_styles_by_max_size_too(cli, data, monkeypatch):
    from arbitrary_nst import gatys

    shapes = []

    class R:
        def __init__(self, x):
            self.images = x[None]

    def fake_run(content, styles, **kw):
        shapes.append([s.shape for s in styles])
        return R(content)

    monkeypatch.setattr(gatys, "run", fake_run)
    monkeypatch.setattr(gatys, "load_params", lambda cfg: {})
    rc, _, err = cli("--content", data["contents"][0], "--style", *data["styles"][:2],
                     "--method", "gatys", "--max-size", 32, "--out", data["tmp"] / "g.png")
    assert rc == 0, err
    assert shapes == [[(32, 27, 3), (23, 32, 3)]]  # 48x40 and 36x50, longer side 32


def test_an_error_naming_a_file_with_a_line_break_is_still_one_line(cli, data):
    missing = data["tmp"] / "two\nlines.png"
    rc, _, err = cli("--content", missing, "--style", data["styles"][0], "--out",
                     data["tmp"] / "o.png")
    assert rc == 1 and "two lines.png" in one_error_line(err)


def batch_name(*argv, content="photo"):
    """The batch output name of ``content`` for these options (validated; no model, no files)."""
    _, args = validated("--content", f"{content}.jpg", "--out-dir", "o", *argv)
    tag, keep = cli_stylize._batch_tag(args, args.style)
    return cli_stylize._output_name(content, tag, keep=keep)


def test_a_palette_given_at_the_models_own_value_is_not_in_the_name():
    """``--palette 0.5`` with the built-in model (whose palette is 0.5) is the default: it was
    named (``photo__a__palette0.5.png``), so an earlier batch was done again under a second
    name for the same pixels."""
    for palette, model_palette, name in (("0.5", 0.5, "photo__a.png"),
                                         ("0", 0.5, "photo__a__palette0.png"),
                                         ("0.5", 0.0, "photo__a__palette0.5.png")):
        _, args = validated("--content", "photo.jpg", "--out-dir", "o", "--style", "a.jpg",
                            "--palette", palette)
        tag, keep = cli_stylize._batch_tag(args, args.style, model_palette)
        assert cli_stylize._output_name("photo", tag, keep=keep) == name
        mode, args = validated("--content", "photo.jpg", "--out-dir", "o", "--interpolate",
                               "a.jpg", "b.jpg", "--palette", palette)
        assert cli_stylize._figure_name(args, mode, "photo", args.interpolate, model_palette) \
            == name.replace("photo__a", "photo__a+b__interp")


def test_batch_output_names_carry_the_settings_off_their_defaults():
    """A sweep into one --out-dir (--strength 0.5, then 1) gave both runs one name: the second
    was skipped as "output exists" (or replaced the first with --overwrite). Every setting that
    changes the result and is not at its default is in the name; at the defaults (equal
    weights, --strength 1, --iterations 500, ...) the names are the earlier versions'."""
    s2 = ["--style", "a.jpg", "b.jpg"]
    assert batch_name("--style", "a.jpg") == "photo__a.png"
    assert batch_name(*s2) == "photo__a+b.png"
    for same in (["--style-weights", 1, 1], ["--style-weights", 0.5, 0.5], ["--strength", 1],
                 ["--refine", 0], ["--style-size", inference.DEFAULT_STYLE_SIZE],
                 ["--max-size", 512], ["--max-size", 0], ["--batch-size", 2], ["--workers", 1],
                 ["--dtype", "bfloat16"], ["--max-pixels", 1000]):
        assert batch_name(*s2, *same) == "photo__a+b.png", same
    assert batch_name("--style", "a.jpg", "--style-weights", 3) == "photo__a.png"  # one style
    assert batch_name("--style", "a.jpg", "--method", "gatys") == "photo__a__gatys.png"
    assert batch_name("--style", "a.jpg", "--method", "gatys", "--iterations", 500) == \
        "photo__a__gatys.png"  # (GatysConfig's)
    assert batch_name("--style", "a.npz", "b.jpg") == "photo__a-fitted+b.png"
    names = {
        batch_name(*s2, *extra) for extra in (
            [], ["--style-weights", 0.3, 0.7], ["--style-weights", 0.7, 0.3],
            ["--strength", 0.5], ["--strength", 0.25], ["--palette", 0], ["--palette", 0.5],
            ["--preserve-color"], ["--preserve-color", "match"], ["--refine", 3],
            ["--refine", 4], ["--style-size", 64], ["--method", "gatys"],
            ["--method", "gatys", "--iterations", 7], ["--method", "gatys", "--strength", 0.5])}
    assert len(names) == 15
    assert batch_name(*s2, "--style-weights", 0.3, 0.7, "--strength", 0.5, "--palette", 0,
                      "--refine", 50, "--style-size", 384) == \
        "photo__a+b@0.3-0.7__strength0.5__palette0__refine50__stylesize384.png"
    # histogram is match's other name: the same result, the same name
    assert batch_name(*s2, "--preserve-color", "histogram") == \
        batch_name(*s2, "--preserve-color", "match") == "photo__a+b__preserve-match.png"
    assert batch_name(*s2, "--preserve-color") == "photo__a+b__preserve-luminance.png"
    assert batch_name(*s2, "--method", "gatys", "--iterations", 300, "--strength", 0.8,
                      "--style-weights", 1, 3, "--preserve-color") == \
        "photo__a+b@1-3__gatys__iterations300__strength0.8__preserve-luminance.png"
    # numbers: :g, and exact where :g's six digits would merge two values
    assert batch_name(*s2, "--style-weights", 0.00001, 1) == "photo__a+b@1e-05-1.png"
    assert batch_name(*s2, "--strength", 0.1234567) == "photo__a+b__strength0.1234567.png"
    assert batch_name(*s2, "--strength", 0.1234568) == "photo__a+b__strength0.1234568.png"


def test_readme_batch_output_names_are_the_codes():
    """The README's table of batch output names is what the command writes."""
    readme = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| `(--style [^`]*)` \| `out/([^`]*)` \|$", readme, re.M)
    assert len(rows) >= 4
    for argv, want in rows:
        assert batch_name(*argv.split()) == want, argv


def test_long_output_names_keep_their_settings_and_stay_distinct():
    """Past 255 bytes the styles' part is cut and hashed; the settings stay whole, so two
    strengths of one long mix are two names that still say which is which."""
    s = ["--style", "a" * 92 + ".jpg", "b" * 92 + ".png", "c" * 92 + ".png"]
    n1 = batch_name(*s, "--strength", 0.5)
    n2 = batch_name(*s, "--strength", 0.25)
    n3 = batch_name(*s, "--style-weights", 1, 2, 3, "--strength", 0.5)
    assert len({n1, n2, n3}) == 3 and all(len(n.encode()) <= 255 for n in (n1, n2, n3))
    assert n1.endswith("__strength0.5.png") and n2.endswith("__strength0.25.png")
    assert re.fullmatch(r"photo__a{92}\+b{92}\+c+~[0-9a-f]{8}__strength0\.5\.png", n1), n1
    assert n1.split("~")[1][:8] == n2.split("~")[1][:8]  # (the same styles: the same hash)
    # at the defaults, long names are the earlier versions' (a rerun skips what it wrote)
    assert batch_name(*s) == cli_stylize._output_name("photo", cli_stylize._stem(s[1:]))
    assert batch_name(*s, "--method", "gatys") == cli_stylize._output_name(
        "photo", cli_stylize._stem(s[1:]) + "__gatys")


def test_a_strength_and_weights_sweep_into_one_out_dir_writes_every_result(cli, data):
    """The sweep of the issue, end to end: each setting its own file (the second run was
    "done 0, skipped 3 (3 output exists)"), and a rerun of each still skips its own; the
    model's own palette is its default (the same name)."""
    od = data["tmp"] / "sweep"
    c = data["contents"][:2]
    s1, s2 = data["styles"][:2]
    # (the test model's palette is ArbitraryStyleModel's default, 0: --palette 0.5 is off it)
    runs = [(), ("--strength", 0.5), ("--style-weights", 1, 3), ("--style-weights", 3, 1),
            ("--palette", 0.5)]
    for extra in runs:
        rc, stdout, err = cli("--content", *c, "--style", s1, s2, *extra, "--out-dir", od,
                              "--no-progress")
        assert rc == 0 and stdout.startswith("done 2, skipped 0"), (extra, stdout, err)
    assert sorted(p.name for p in od.iterdir()) == sorted(
        f"{x}__s1+s2{t}.png" for x in "ab"
        for t in ("", "__strength0.5", "@1-3", "@3-1", "__palette0.5"))
    by_name = {p.name: np.asarray(Image.open(p)) for p in od.iterdir()}
    assert not np.array_equal(by_name["a__s1+s2@1-3.png"], by_name["a__s1+s2@3-1.png"])
    assert not np.array_equal(by_name["a__s1+s2.png"], by_name["a__s1+s2__strength0.5.png"])
    for extra in (*runs, ("--palette", 0)):
        rc, stdout, _ = cli("--content", *c, "--style", s1, s2, *extra, "--out-dir", od,
                            "--no-progress")
        assert rc == 1 and "done 0, skipped 2 (2 output exists)" in stdout, (extra, stdout)


def test_gatys_iterations_sweep_into_one_out_dir(cli, data, monkeypatch):
    from arbitrary_nst import gatys

    class R:
        def __init__(self, x):
            self.images = x[None]

    iters = []

    def fake_run(content, styles, *, config=None, **kw):
        iters.append(config.iterations)
        return R(1 - content)

    monkeypatch.setattr(gatys, "run", fake_run)
    monkeypatch.setattr(gatys, "load_params", lambda cfg: {})
    od = data["tmp"] / "g"
    for n in (None, 5, 9):
        extra = () if n is None else ("--iterations", n)
        rc, _, err = cli("--content", data["contents"][0], "--style", data["styles"][0],
                         "--method", "gatys", *extra, "--out-dir", od, "--no-progress")
        assert rc == 0, err
    assert iters == [gatys.GatysConfig().iterations, 5, 9]
    assert sorted(p.name for p in od.iterdir()) == [
        "a__s1__gatys.png", "a__s1__gatys__iterations5.png", "a__s1__gatys__iterations9.png"]


def test_an_output_name_of_exactly_255_bytes_is_kept():
    tag = "m" * (255 - len("p__.png"))
    assert cli_stylize._output_name("p", tag) == f"p__{tag}.png"
    assert len(cli_stylize._output_name("p", tag + "m").encode()) <= 255
    assert cli_stylize._output_name("p", tag + "m") != f"p__{tag}m.png"


def test_the_model_cache_sees_a_replaced_model_file(tmp_path, vgg, model):
    """Same path, same size, newer file (a retrained export copied over): loaded again, not
    the cached old model; an unchanged file is the cached one."""
    import shutil

    p = tmp_path / "m.safetensors"
    shutil.copyfile(model, p)
    first = cli_stylize.load_stylizer(str(p))
    assert cli_stylize.load_stylizer(str(p)) is first
    make_model_file(tmp_path / "other.safetensors", vgg, seed=1)
    os.replace(tmp_path / "other.safetensors", p)
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, os.stat(model).st_mtime_ns + 10**9))
    assert os.path.getsize(p) == os.path.getsize(model)  # (the size alone cannot tell)
    second = cli_stylize.load_stylizer(str(p))
    assert second is not first
    x = np.full((1, 16, 16, 3), 0.5, np.float32)
    e = np.zeros((1, second.embedding_dim), np.float32)
    assert np.abs(np.asarray(second.model.transfer(x, e))
                  - np.asarray(first.model.transfer(x, e))).max() > 1e-3
    # replaced with its mtime kept (cp -p, rsync -t; two quick rewrites share an mtime): the
    # key had only mtime and size, so the old model was served
    kept = os.stat(p)
    shutil.copyfile(model, tmp_path / "new.safetensors")
    os.replace(tmp_path / "new.safetensors", p)
    os.utime(p, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    third = cli_stylize.load_stylizer(str(p))
    assert third is not second
    np.testing.assert_array_equal(np.asarray(third.model.transfer(x, e)),
                                  np.asarray(first.model.transfer(x, e)))
    # a workdir is keyed by its model file (here a link to the same one): not loaded again
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.safetensors").symlink_to(p)
    assert cli_stylize.load_stylizer(str(tmp_path / "run")) is third


def test_repeated_list_options_add_up(capsys):
    """``--style a --style b`` used both styles (argparse's default kept only the last: one
    style silently dropped, rc 0), in every command that takes a list; distill's list options
    keep their defaults when not given (a list default would be extended)."""
    import importlib

    from arbitrary_nst import cli, distill

    a = cli_stylize.build_parser().parse_args([
        "--content", "p.jpg", "--style", "a.jpg", "--style", "b.jpg", "c.jpg",
        "--style-weights", "1", "--style-weights", "2", "3", "--interpolate", "x", "--interpolate",
        "y", "--out", "o.png"])
    assert (a.style, a.style_weights, a.interpolate) == (
        ["a.jpg", "b.jpg", "c.jpg"], [1.0, 2.0, 3.0], ["x", "y"])
    g = cli.build_parser().parse_args([
        "gatys", "--content", "p.jpg", "--content", "q.jpg", "--style", "a.jpg", "--style",
        "b.jpg", "--style-weights", "1", "--style-weights", "2", "--out", "o"])
    assert (g.content, g.style, g.style_weights) == (
        ["p.jpg", "q.jpg"], ["a.jpg", "b.jpg"], [1.0, 2.0])
    f = cli.build_parser().parse_args(["fit-style", "--style", "s.jpg", "--photos", "a.jpg",
                                       "--photos", "b/", "--out", "s.npz"])
    assert f.photos == ["a.jpg", "b/"]
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        train_cli = importlib.import_module("train")
    finally:
        sys.path.pop(0)
    t = train_cli.parse_args(["--config", "c.py", "--objective", "m1", "--objective", "m2"])
    assert t.objective == ["m1", "m2"]
    # distill: the lists are checked before any work; the message shows what was parsed
    for argv, got in ((["--rank", "2", "--rank", "0"], "got [2, 0], [10.0, 100.0, 1000.0], "),
                      (["--ridge", "5", "--ridge", "-1"], "got [16, 32, 64], [5.0, -1.0], ")):
        assert distill.main(["--out", "x", "--target", "conditioning", *argv]) == 1
        err = capsys.readouterr().err
        assert got in err and err.count("\n") == 1, err


def test_ctrl_c_between_results_counts_the_writes_the_pipeline_finishes(cli, data, monkeypatch):
    """Ctrl-C while a result is being handled (the pipeline paused at its yield, its writer
    threads busy): the pipeline is closed first, which finishes the writes in flight, and
    they are counted (they were not: the summary was printed before they ended)."""
    def one_then_finish_on_close(self, contents, styles, *, output, **k):
        try:
            yield inference.FileResult(Path(contents[0]), output(contents[0]), True)
        finally:  # (as stylize_files' shutdown: a write that was running completes)
            images.save_image(output(contents[1]), np.zeros((4, 4, 3), np.float32))

    class Bar:
        def update(self, n):
            raise KeyboardInterrupt

        def close(self):
            pass

        def write(self, *a, **k):
            pass

    monkeypatch.setattr(inference.Stylizer, "stylize_files", one_then_finish_on_close)
    monkeypatch.setattr(cli_stylize, "_progress", lambda total, enabled: Bar())
    od = data["tmp"] / "int2"
    rc, stdout, _ = cli("--content", data["dir"], "--style", data["styles"][0], "--out-dir", od,
                        "--no-progress")
    # the reported result (counted before the bar's Ctrl-C) and the write finished on close
    assert rc == 130 and len(list(od.iterdir())) == 1
    assert re.search(r"^done 2, skipped 0, .*; interrupted", stdout, re.M), stdout


# ------------------------------------------------------------------ mutation-testing additions


def test_tile_limit_is_inclusive_and_fitted_styles_are_found_by_any_case():
    """--interpolate 2 styles x --steps 100 is exactly 100 tiles (allowed; 101 is not), and a
    fitted style named ``.NPZ`` is a fitted style for the CLI's checks too."""
    base = ["--content", "c.png", "--out", "o.png"]
    mode, args = validated(*base, "--interpolate", "a.png", "b.png", "--steps", 100)
    assert mode == "interpolate" and args.steps == 100
    with pytest.raises(cli_stylize.ConfigError, match="more than 100 tiles"):
        validated(*base, "--interpolate", "a.png", "b.png", "--steps", 101)
    with pytest.raises(cli_stylize.ConfigError) as e:
        validated(*base, "--style", "P.NPZ", "--method", "gatys")
    assert str(e.value) == "P.NPZ is a fitted style (.npz): --method gatys needs style images"


def test_a_batch_of_one_image_shows_no_progress_bar(cli, data):
    """The bar is for batches of several images: a folder holding one image, progress not
    turned off, prints nothing but the summary."""
    (data["tmp"] / "one").mkdir()
    only = png(data["tmp"] / "one" / "x.png", 36, 40, 11)
    od = data["tmp"] / "od"
    rc, stdout, err = cli("--content", only.parent, "--style", data["styles"][0], "--out-dir",
                          od)
    assert rc == 0 and err == "", err
    assert stdout.startswith("done 1, skipped 0, ")
    assert (od / "x__s1.png").is_file()


def test_the_batch_bar_counts_the_images_stylized_not_the_skips(cli, data, monkeypatch):
    """A rerun over a half-done folder skips the outputs that exist at once: counted as done,
    they made the bar's rate and its ETA for the rest far too good. A skip leaves the total."""
    import io

    from tqdm import tqdm

    bars = []

    def recording(total, enabled):
        bars.append(tqdm(total=total, file=io.StringIO(), mininterval=0))
        return bars[-1]

    monkeypatch.setattr(cli_stylize, "_progress", recording)
    od = data["tmp"] / "bar"
    args = ("--content", data["dir"], "--style", data["styles"][0], "--out-dir", od)
    assert cli(*args)[0] == 0 and (bars[-1].n, bars[-1].total) == (3, 3)
    assert cli(*args)[0] == 1 and (bars[-1].n, bars[-1].total) == (0, 0)
    sorted(od.iterdir())[1].unlink()
    rc, stdout, _ = cli(*args)
    assert rc == 1 and "done 1, skipped 2" in stdout and (bars[-1].n, bars[-1].total) == (1, 1)


def test_a_single_output_is_replaced_only_with_overwrite(cli, data):
    c, s = data["contents"][0], data["styles"][0]
    out = data["tmp"] / "o.png"
    out.write_bytes(b"old")
    rc, _, err = cli("--content", c, "--style", s, "--out", out)
    line = one_error_line(err)
    assert rc == 1 and line.startswith(f"error: {out}: exists; pass --overwrite"), line
    assert out.read_bytes() == b"old"
    rc, stdout, err = cli("--content", c, "--style", s, "--out", out, "--overwrite")
    assert rc == 0 and stdout.startswith(f"wrote {out} ")
    assert Image.open(out).size == (45, 37)


# ------------------------------------------------------- mutation-testing pass 2 (CLI options)


def test_option_boundaries_that_are_allowed():
    """The smallest allowed values pass the checks: --workers 1, --max-pixels 1, Gatys with
    --max-size 0 (= keep the size, not a size under 32) and --iterations 0."""
    base = ["--content", "c.png", "--style", "s.png", "--out", "o.png"]
    assert validated(*base, "--workers", 1)[1].workers == 1
    assert validated(*base, "--max-pixels", 1)[1].max_pixels == 1
    mode, args = validated(*base, "--method", "gatys", "--max-size", 0)
    assert mode == "stylize" and args.max_size == 0
    assert validated(*base, "--method", "gatys", "--max-size", 32)[0] == "stylize"
    assert validated(*base, "--method", "gatys", "--iterations", 0)[1].iterations == 0
    assert validated(*base, "--refine", 0)[0] == "stylize"


@pytest.mark.parametrize("extra, msg", [
    (["--style", "s.png", "--backend", "onnxruntime", "--dtype", "bfloat16"],
     "--backend onnxruntime computes in float32; drop --dtype"),
    (["--style", "s.png", "--method", "gatys", "--backend", "onnxruntime"],
     "--backend applies to --method network only"),
    (["--style", "s.png", "--refine", -1], "--refine must be >= 0, got -1"),
    (["--style", "s.png", "--max-size", -1], "--max-size must be >= 0 (0 = keep the size), got -1"),
    (["--style", "s.png", "--batch-size", 0], "--batch-size must be >= 1, got 0"),
    (["--style", "s.png", "--method", "gatys", "--refine", 2],
     "--refine applies to --method network without --interpolate/--strength-sweep"),
    (["--style", "f.npz", "--refine", 2],
     "f.npz is a fitted style (.npz): --refine does not apply to them (they are optimized "
     "already)"),
    (["--style", "s.png", "--method", "gatys", "--iterations", -1],
     "--iterations must be >= 0, got -1"),
    (["--style", "s.png", "--max-size", 7],  # (--max-size 1 wrote a 1x1 image, exit 0)
     "--max-size must be 0 (keep the size) or >= 8 (as --tile-size), got 7"),
    (["--style", "s.png", "--method", "gatys", "--max-size", 31],
     "--method gatys needs --max-size >= 32 (VGG's smallest input), got 31"),
    (["--interpolate", "a.png", "b.png", "--strength-sweep", 3],
     "--interpolate and --strength-sweep are separate figures; give one"),
    (["--interpolate", "a.png", "b.png", "--style-weights", 1, 2],
     "--style-weights does not apply to --interpolate"),
    (["--interpolate", "a.png"], "--interpolate needs at least 2 styles"),
    (["--interpolate", "a.png", "b.png", "--workers", 2],  # (both were ignored)
     "--workers applies to stylizing images (its threads read and write them); a "
     "--interpolate/--strength-sweep figure reads one photo"),
    (["--style", "s.png", "--strength-sweep", 3, "--workers", 1],
     "--workers applies to stylizing images (its threads read and write them); a "
     "--interpolate/--strength-sweep figure reads one photo"),
    (["--interpolate", "a.png", "b.png", "--tile-size", 7],
     "--tile-size must be in [8, 4096], got 7"),
    (["--interpolate", "a.png", "b.png", "--tile-size", 4097],
     "--tile-size must be in [8, 4096], got 4097"),
])
def test_each_refused_option_says_why(extra, msg):
    with pytest.raises(cli_stylize.ConfigError) as e:
        validated("--content", "c.png", "--out", "o.png", *extra)
    assert str(e.value) == msg


def test_backend_auto_is_the_default_and_may_be_named():
    """--backend auto (the default) is a choice too: a script may name it."""
    base = ["--content", "c.png", "--style", "s.png", "--out", "o.png"]
    assert validated(*base)[1].backend == "auto"
    assert validated(*base, "--backend", "auto")[1].backend == "auto"
    assert validated(*base, "--backend", "auto", "--dtype", "bfloat16")[0] == "stylize"
    assert validated(*base, "--backend", "auto", "--method", "gatys")[0] == "stylize"


@pytest.mark.parametrize("extra", [
    ["--interpolate", "a.png", "b.png", "--strength", 1.5],  # (a figure read it as 1)
    ["--interpolate", "a.png", "b.png", "--strength", "nan"],
    ["--style", "s.png", "--strength", -0.01],
    ["--style", "s.png", "--palette", 1.01],
    ["--style", "s.png", "--palette", -0.5],
    ["--style", "s.png", "--palette", "nan"],
    ["--interpolate", "a.png", "b.png", "--palette", "nan"],
])
def test_strength_and_palette_out_of_range_or_nan_are_refused_before_any_work(extra):
    with pytest.raises(cli_stylize.ConfigError, match="strength|palette"):
        validated("--content", "c.png", "--out", "o.png", *extra)


def test_too_many_steps_are_refused_without_building_the_grid(monkeypatch):
    """--steps over the tile limit is refused by its value: the mixture grid of 4 styles x
    100000 steps (10^10 cells) is never built."""
    calls = []
    real = inference.mixture_grid

    def spy(n, steps):
        calls.append((n, steps))
        assert steps <= cli_stylize.MAX_TILES, "built the grid of a refused --steps"
        return real(n, steps)

    monkeypatch.setattr(inference, "mixture_grid", spy)
    with pytest.raises(cli_stylize.ConfigError, match="more than 100 tiles"):
        validated("--content", "c.png", "--out", "o.png", "--interpolate", "a", "b", "c", "d",
                  "--steps", 100000)
    assert calls == []


def test_strength_sweep_palette_target_goes_from_the_photo_to_the_style(cli, data, model,
                                                                      monkeypatch):
    """With --palette, a sweep tile at strength t is stylize at strength t: the palette's
    colour target is mixed from the photo's (t = 0) to the weighted style mix's (t = 1)."""
    seen = _capture_figure(monkeypatch)
    c, (s1, s2) = data["contents"][0], data["styles"][:2]
    rc, _, err = cli("--content", c, "--style", s1, s2, "--style-weights", 1, 3,
                     "--strength-sweep", 3, "--palette", 1,
                     "--tile-size", 45, "--batch-size", 1, "--out", data["tmp"] / "sw.png")
    assert rc == 0, err
    st = cli_stylize.load_stylizer(str(model))
    img = st.read(c, max_side=45)
    for (_, _, got, _), t in zip(seen["tiles"], (0.0, 0.5)):
        want = st.stylize(img, style=[s1, s2], weights=[1, 3], strength=t, palette=1.0,
                          style_size=int(SS))
        np.testing.assert_allclose(got, want, atol=2e-4, err_msg=f"strength {t}")


def test_match_mode_figure_styles_are_checked_against_max_pixels(cli, data):
    """--preserve-color match loads the style images itself: --max-pixels bounds them as
    every other input (the 48x40 style is over 1700 pixels, the 37x45 photo is not)."""
    c, s1, s2 = data["contents"][0], *data["styles"][:2]
    out = data["tmp"] / "m.png"
    rc, _, err = cli("--content", c, "--interpolate", s1, s2, "--steps", 2, "--preserve-color",
                     "match", "--max-pixels", 1700, "--tile-size", 45, "--out", out)
    line = one_error_line(err)
    assert rc == 1 and "s1.png" in line, line
    assert not out.exists()


def test_match_mode_figure_bounds_a_large_style_as_stylize_does(cli, data, model, monkeypatch):
    """A style much larger than the working size is first read at most 8 x --style-size on
    its longer side (as the API does): the tile equals stylize's match-mode result."""
    seen = _capture_figure(monkeypatch)
    c, s2 = data["contents"][0], data["styles"][1]
    big = png(data["tmp"] / "big.png", 90, 700, 21)  # longer side over 8 x 32 = 256
    rc, _, err = cli("--content", c, "--interpolate", big, s2, "--steps", 2, "--palette", 1,
                     "--preserve-color", "match", "--tile-size", 45, "--batch-size", 1,
                     "--out", data["tmp"] / "m.png")
    assert rc == 0, err
    st = cli_stylize.load_stylizer(str(model))
    img = st.read(c, max_side=45)
    want = st.stylize(img, style=[big, s2], weights=[1, 0], preserve_color="match", palette=1.0,
                      style_size=int(SS))
    np.testing.assert_allclose(seen["tiles"][0][2], want, atol=2e-4)


def test_the_model_cache_is_keyed_by_file_dtype_and_backend_and_holds_one(tmp_path, monkeypatch):
    """Loads of the same file share a Stylizer only with the same dtype and backend (an
    onnxruntime request never gets the cached JAX one); one model is kept alive at a time."""
    from types import SimpleNamespace

    loads = []

    def fake_load(model, *, vgg=None, dtype="float32", backend="jax"):
        loads.append((model, dtype, backend))
        return SimpleNamespace(dtype=dtype, backend=backend)

    monkeypatch.setattr(inference.Stylizer, "load", staticmethod(fake_load))
    monkeypatch.setattr(cli_stylize, "_STYLIZERS", {})
    monkeypatch.setitem(cli_stylize._VGG, "vgg", object())
    p = tmp_path / "m.safetensors"
    p.write_bytes(b"x" * 64)
    d = cli_stylize.load_stylizer(str(p))  # the CLI's default backend: "auto"
    assert cli_stylize.load_stylizer(str(p), "float32", "auto") is d
    a = cli_stylize.load_stylizer(str(p), "float32", "jax")
    assert a is not d
    assert cli_stylize.load_stylizer(str(p), "float32", "jax") is a
    c = cli_stylize.load_stylizer(str(p), "bfloat16", "jax")
    assert c is not a and c.dtype == "bfloat16"
    assert cli_stylize.load_stylizer(str(p), "bfloat16", "jax") is c
    b = cli_stylize.load_stylizer(str(p), "bfloat16", "onnxruntime")
    assert b is not c and b.backend == "onnxruntime"
    assert len(cli_stylize._STYLIZERS) == 1  # (the others were let go)
    assert loads == [(str(p), "float32", "auto"), (str(p), "float32", "jax"),
                     (str(p), "bfloat16", "jax"),
                     (str(p), "bfloat16", "onnxruntime")]


def test_method_gatys_never_loads_the_network(cli, data, monkeypatch):
    from arbitrary_nst import gatys

    class R:
        def __init__(self, x):
            self.images = x[None]

    def no_model(*a, **k):
        raise AssertionError("loaded the network for --method gatys")

    monkeypatch.setattr(cli_stylize, "load_stylizer", no_model)
    monkeypatch.setattr(gatys, "run", lambda content, styles, **kw: R(content))
    monkeypatch.setattr(gatys, "load_params", lambda cfg: {})
    out = data["tmp"] / "g.png"
    rc, stdout, err = cli("--content", data["contents"][0], "--style", data["styles"][0],
                          "--method", "gatys", "--max-size", 32, "--out", out)
    assert rc == 0 and err == "", err
    assert stdout.startswith(f"wrote {out} ") and out.is_file()


def test_a_strength_sweep_in_an_out_dir_is_named_for_its_styles_and_sweep(cli, data):
    od = data["tmp"] / "figs"
    rc, stdout, err = cli("--content", data["contents"][0], "--style", *data["styles"][:2],
                          "--strength-sweep", 2, "--tile-size", 8, "--batch-size", 2,
                          "--out-dir", od)
    assert rc == 0, err
    assert [p.name for p in od.iterdir()] == ["a__s1+s2__sweep.png"]
    assert stdout.startswith(f"wrote {od / 'a__s1+s2__sweep.png'} (2 tiles, ")


def test_figures_in_an_out_dir_carry_their_settings():
    """Two --interpolate figures with another --strength (or --steps) into one --out-dir had
    one name: the second was refused as "exists". The settings off their defaults are in the
    name as in batches; the tile size (the resolution) is not."""
    def name(*argv):
        mode, args = validated("--content", "photo.jpg", "--out-dir", "o", *argv)
        return cli_stylize._figure_name(args, mode, "photo", args.interpolate or args.style)

    interp = ["--interpolate", "a.jpg", "b.jpg"]
    assert name(*interp) == name(*interp, "--tile-size", 64) == "photo__a+b__interp.png"
    assert name(*interp, "--steps", cli_stylize.DEFAULT_STEPS) == "photo__a+b__interp.png"
    assert name(*interp, "--strength", 0.5, "--steps", 3, "--palette", 0) == \
        "photo__a+b__interp__strength0.5__palette0__steps3.png"
    sweep = ["--style", "a.jpg", "b.jpg", "--strength-sweep", 4]
    assert name(*sweep) == "photo__a+b__sweep.png"
    assert name(*sweep, "--style-weights", 1, 3, "--preserve-color") == \
        "photo__a+b@1-3__sweep__preserve-luminance.png"
    # past 255 bytes the styles are cut and hashed; the kind and the settings stay whole
    long = ["--interpolate", "a" * 92 + ".jpg", "b" * 92 + ".png", "c" * 92 + ".png"]
    n = name(*long, "--strength", 0.5)
    assert len(n.encode()) <= 255 and n.endswith("~" + n.split("~")[1][:8]
                                                  + "__interp__strength0.5.png"), n



def _fitted_style_file(st, style, path):
    """A fitted style for ``st``'s model: the style's embedding and its predicted gamma/beta
    plus a random offset (what fit-style's optimization would have moved)."""
    from arbitrary_nst import fit_style

    e = np.asarray(st.embed(style, style_size=int(SS)), np.float32).reshape(-1)
    pred = np.asarray(fit_style.predicted_conditioning(st.model, e[None]), np.float32)[0]
    rng = np.random.default_rng(3)
    return fit_style.FittedStyle(
        conditioning=pred + rng.normal(0, 0.3, pred.shape).astype(np.float32), embedding=e,
        moments=np.full(12, 0.4, np.float32), history=np.array([2.0, 1.0], np.float32),
        fingerprint=fit_style.model_fingerprint(st.model), info={"name": "p"}).save(path)


@pytest.mark.parametrize("figure", ["interpolate", "sweep"])
def test_figures_scale_a_fitted_styles_offset_by_the_strength(cli, data, model, monkeypatch,
                                                             figure):
    """A fitted style's gamma/beta offset is scaled by the strength in both figures (the
    content's own offset is 0): the tile at strength 0.5 equals the API's stylize."""
    st = cli_stylize.load_stylizer(str(model))
    fitted = _fitted_style_file(st, data["styles"][2], data["tmp"] / "p.npz")
    c = data["contents"][0]
    seen = _capture_figure(monkeypatch)
    if figure == "interpolate":  # tile 0: 100 % the fitted style, at --strength 0.5
        fig, tile = ["--interpolate", fitted, data["styles"][1], "--steps", 2, "--strength",
                     0.5], 0
    else:  # tile 1 of 3: strength 0.5
        fig, tile = ["--style", fitted, "--strength-sweep", 3], 1
    rc, _, err = cli("--content", c, *fig, "--tile-size", 45, "--batch-size", 1, "--out",
                     data["tmp"] / "f.png")
    assert rc == 0, err
    want = st.stylize(st.read(c, max_side=45), style=[str(fitted)], strength=0.5,
                      style_size=int(SS))
    np.testing.assert_allclose(seen["tiles"][tile][2], want, atol=2e-4)


# ---------------------------------------------------------------------------- --content listing


def test_a_relative_and_an_absolute_content_path_are_one_job_and_mirror_the_tree(cli, data,
                                                                                  monkeypatch):
    """A --content file named once relatively and once absolutely is one job (deduplicated by
    absolute path), and a relative --recursive folder mirrors its tree in --out-dir as an
    absolute one does (the subfolder of each image is looked up by its absolute path)."""
    monkeypatch.chdir(data["tmp"])
    s = data["styles"][0]
    rc, stdout, err = cli("--content", "in/a.png", data["contents"][0], "--style", s,
                          "--out-dir", "o1", "--no-progress")
    assert rc == 0 and "done 1, skipped 0" in stdout, (stdout, err)
    assert [p.name for p in (data["tmp"] / "o1").iterdir()] == ["a__s1.png"]
    (data["dir"] / "sub").mkdir()
    png(data["dir"] / "sub" / "a.png", 30, 30, 13)
    rc, stdout, err = cli("--content", "in", "--recursive", "--style", s, "--out-dir", "o2",
                          "--no-progress")
    assert rc == 0 and "done 4, skipped 0" in stdout, (stdout, err)
    od = data["tmp"] / "o2"
    assert sorted(str(p.relative_to(od)) for p in od.rglob("*.png")) == [
        "a__s1.png", "b__s1.png", "c__s1.png", "sub/a__s1.png"]


def test_a_file_named_one_by_one_is_written_flat_whatever_its_path_holds(cli, data):
    """`--content "Photos [2024]/img[1].jpg"` (a file named one by one, glob characters in its
    folder or its name) was mirrored as a glob into `out/Photos [2024]/`: another output path
    than the same photo in a folder run, so a rerun did not see the earlier result."""
    odd = data["tmp"] / "Photos [2024]"
    odd.mkdir()
    png(odd / "img[1].png", 30, 30, 18)
    png(odd / "what?.png", 30, 30, 19)
    od = data["tmp"] / "o"
    rc, stdout, err = cli("--content", odd / "img[1].png", odd / "what?.png", "--style",
                          data["styles"][0], "--out-dir", od, "--no-progress")
    assert rc == 0 and "done 2, skipped 0" in stdout, (stdout, err)
    assert sorted(str(p.relative_to(od)) for p in od.rglob("*.png")) == [
        "img[1]__s1.png", "what?__s1.png"]
    rc, stdout, err = cli("--content", odd, "--style", data["styles"][0], "--out-dir", od,
                          "--no-progress")  # (the folder: the same outputs, skipped)
    assert rc == 1 and "done 0, skipped 2 (2 output exists)" in stdout, (stdout, err)


def test_the_summary_counts_a_blocked_subfolder_as_cannot_write(cli, data):
    """A file where a mirrored subfolder of --out-dir should be: "cannot write: a parent path
    is not a directory" was counted as "(1 is a directory)" in the summary."""
    (data["dir"] / "sub").mkdir()
    png(data["dir"] / "sub" / "d.png", 30, 30, 20)
    od = data["tmp"] / "o"
    od.mkdir()
    (od / "sub").write_bytes(b"a file")
    rc, stdout, err = cli("--content", data["dir"], "--recursive", "--style", data["styles"][0],
                          "--out-dir", od, "--no-progress")
    assert rc == 1 and "done 3, skipped 1 (1 cannot write)" in stdout, (stdout, err)
    assert f"skipped: {od / 'sub' / 'd__s1.png'}: cannot write: a parent path is not a " \
           "directory" in err
    assert [inference._kind_of(r) for r in (
        "cannot write: is a directory, expected a file name", "is a directory, expected an "
        "image file", "cannot list directory: too many levels of symbolic links (a symlink "
        "loop)", "cannot list directory: input/output error", "cannot write: no space "
        "left")] == ["is a directory", "is a directory", "symlink loop", "unreadable folder",
                     "cannot write"]


@pytest.mark.parametrize("stderr", ["full", "closed"])
def test_a_stderr_that_cannot_be_written_does_not_stop_a_batch(data, model, monkeypatch, capsys,
                                                               stderr):
    """`2>/dev/full` (a log on a full disk) and `2>&-` (sys.stderr None) stopped a batch at its
    first progress line, exit 1, nothing written and nothing said; with --no-progress at its
    first "skipped:" line. Stderr is best effort: the job runs, stdout has its summary."""
    import errno
    import sys

    class Full:
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

        def isatty(self):
            return False

    (data["dir"] / "junk.png").write_bytes(b"not an image")  # (a "skipped:" line to write)
    monkeypatch.setattr(sys, "stderr", Full() if stderr == "full" else None)
    od = data["tmp"] / "o"
    rc = cli_stylize.main(["--content", str(data["dir"]), "--style", str(data["styles"][0]),
                           "--out-dir", str(od), "--model", str(model), "--style-size", SS])
    assert rc == 1  # (the junk file: skipped, as any batch's)
    assert "done 3, skipped 1 (1 not an image)" in capsys.readouterr().out
    assert sorted(p.name.split("__")[0] for p in od.iterdir()) == ["a", "b", "c"]


def test_a_reader_that_leaves_does_not_fail_the_batch(data, model):
    """`infer.py ... | head -0` (a reader that closed the pipe) wrote every output, then said
    "error: Broken pipe" and exited 1 on the summary line. stdout's lines are dropped then;
    no "Exception ignored" when Python flushes it at exit either. A stdout that cannot be
    written for another reason (a full disk) is still an error."""
    # (buffered, as a user's Python runs, the lines fail at the exit's own flush; unbuffered
    # in the command)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    for i, unbuffered in enumerate(({}, {"PYTHONUNBUFFERED": "1"})):
        read_end, write_end = os.pipe()
        os.close(read_end)  # (the reader left before the first line: each write is EPIPE)
        od = data["tmp"] / f"o{i}"
        argv = [sys.executable, "infer.py", "--content", str(data["dir"]), "--style",
                str(data["styles"][0]), "--out-dir", str(od), "--model", str(model),
                "--style-size", SS]
        try:
            r = subprocess.run(argv, stdout=write_end, stderr=subprocess.PIPE, text=True,
                               timeout=300, cwd=REPO, env={**env, **unbuffered})
        finally:
            os.close(write_end)
        assert r.returncode == 0, r.stderr[-800:]
        assert "Broken pipe" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
        assert sorted(p.name.split("__")[0] for p in od.iterdir()) == ["a", "b", "c"]
    if not os.path.exists("/dev/full"):
        return
    # a stdout that cannot be written: the summary failed at the exit's own flush (buffered),
    # a traceback "Exception ignored", status 120; unbuffered it failed in the command
    for i, unbuffered in enumerate(({}, {"PYTHONUNBUFFERED": "1"})):
        with open("/dev/full", "w") as full:
            r = subprocess.run(argv[:-6] + ["--out-dir", str(data["tmp"] / f"o{i + 2}"),
                                            "--model", str(model), "--style-size", SS],
                               stdout=full, stderr=subprocess.PIPE, text=True, timeout=300,
                               cwd=REPO, env={**env, **unbuffered})
        assert r.returncode == 1 and "No space left on device" in r.stderr, r.stderr[-800:]
        assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr


def test_glob_outputs_stay_inside_the_out_dir_and_keep_hidden_subfolders(cli, data):
    """A glob's images are mirrored below its part without wildcards: one that a ``..`` after
    a wildcard leads above that folder goes to the top of --out-dir (never beside it), and a
    hidden subfolder matched by ``.*`` keeps its name (it is not the top)."""
    (data["dir"] / "sub").mkdir()
    png(data["tmp"] / "up.png", 30, 30, 15)
    (data["dir"] / ".hid").mkdir()
    png(data["dir"] / ".hid" / "a.png", 30, 30, 16)
    od = data["tmp"] / "o"
    rc, stdout, err = cli("--content", data["dir"] / "*" / ".." / ".." / "up.png",
                          data["dir"] / ".*" / "*.png", "--style", data["styles"][0],
                          "--out-dir", od, "--no-progress")
    assert rc == 0 and "done 2, skipped 0" in stdout, (stdout, err)
    assert sorted(str(p.relative_to(od)) for p in od.rglob("*.png")) == [
        ".hid/a__s1.png", "up__s1.png"]
    assert not (data["tmp"] / "up__s1.png").exists()


def test_recursive_with_a_file_and_a_folder_is_accepted(cli, data):
    """--recursive is refused only when no --content value is a folder: with a file and a
    folder, the folder's subfolders are taken and the file too."""
    other = data["tmp"] / "other"
    (other / "sub").mkdir(parents=True)
    png(other / "sub" / "d.png", 30, 30, 17)
    od = data["tmp"] / "o"
    rc, stdout, err = cli("--content", data["contents"][0], other, "--recursive", "--style",
                          data["styles"][0], "--out-dir", od, "--no-progress")
    assert rc == 0 and "done 2, skipped 0" in stdout, (stdout, err)
    assert sorted(str(p.relative_to(od)) for p in od.rglob("*.png")) == [
        "a__s1.png", "sub/d__s1.png"]


def test_style_size_with_only_fitted_styles_at_full_strength_is_refused():
    """Fitted styles carry their own conditioning: with only those at --strength 1,
    --style-size changed nothing (the same pixels, under another `__stylesize512` name in a
    batch). Below strength 1 it sizes the photo's own embedding (also in a sweep), and with an
    image among the styles that image's: allowed, as is the default size named."""
    base = ["--content", "c.png", "--out", "o.png", "--style-size", 512]
    for styles in (["--style", "a.npz"], ["--interpolate", "a.npz", "b.NPZ"]):
        with pytest.raises(cli_stylize.ConfigError, match="--style-size does nothing"):
            validated(*base, *styles)
    assert validated(*base, "--style", "a.npz", "--strength", 0.5)[0] == "stylize"
    assert validated(*base, "--style", "a.npz", "b.png")[0] == "stylize"
    assert validated(*base, "--style", "a.npz", "--strength-sweep", 3)[0] == "sweep"
    for default in ([], ["--style-size", 256]):  # (the default: no name of its own either)
        assert validated("--content", "c.png", "--out", "o.png", "--style", "a.npz",
                         *default)[0] == "stylize"
