"""Tests of ``infer.py demo`` (arbitrary_nst.cli_demo) with a random width-0.25 model at 64 px:
it runs, reruns over its own folder, never writes into a folder of the user's, reports skips
in its exit status, and a named model that cannot be loaded is an error (no silent fallback)."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from arbitrary_nst import cli, cli_stylize, inference
from arbitrary_nst.errors import ModelError
from arbitrary_nst.cli_demo import DEMO_CONTENTS, DEMO_STYLES, MARKER

from test_cli_stylize import make_model_file


@pytest.fixture(scope="module")
def model(tmp_path_factory, vgg):
    cli_stylize._VGG["vgg"] = vgg
    return make_model_file(tmp_path_factory.mktemp("model") / "model.safetensors", vgg)


def demo(out, model, *extra):
    return cli.main(["demo", "--out-dir", str(out), "--model", str(model), "--max-size", "64",
                     "--no-progress", *extra])


def test_demo_runs_and_reruns_over_its_own_folder(model, tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo(out, model) == 0
    stylized = sorted(p.name for p in (out / "stylized").iterdir())
    assert stylized == sorted(f"{c}__{s}.png" for c in DEMO_CONTENTS for s in DEMO_STYLES)
    assert Image.open(out / "interpolation.png").size[0] > 64 * 4
    assert (out / "strength_sweep.png").is_file() and (out / MARKER).is_file()
    assert demo(out, model) == 0  # its own files are replaced
    # without the marker, demo-like names alone do not make a folder the demo's (a user's
    # interpolation.png alone in a folder was replaced)
    (out / MARKER).unlink()
    assert demo(out, model) == 1
    assert "not an earlier demo's folder" in capsys.readouterr().err
    only = tmp_path / "only"
    only.mkdir()
    (only / "interpolation.png").write_bytes(b"precious")
    assert demo(only, model) == 1 and (only / "interpolation.png").read_bytes() == b"precious"
    capsys.readouterr()


def test_demo_never_writes_into_a_users_folder(model, tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "interpolation.png").write_bytes(b"my file")
    (user / "notes.txt").write_text("mine")
    assert demo(user, model) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty and not an earlier demo's folder" in err[0]
    assert (user / "interpolation.png").read_bytes() == b"my file"
    assert sorted(p.name for p in user.iterdir()) == ["interpolation.png", "notes.txt"]


def test_demo_exit_status_reports_skipped_images(model, tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo(out, model) == 0
    (out / "inputs" / "content" / "broken.png").write_bytes(b"\x89PNG broken")
    assert demo(out, model) == 1
    assert "skipped" in capsys.readouterr().out


def test_a_named_model_that_cannot_be_loaded_is_an_error(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    assert demo(tmp_path / "demo", bad) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bad.safetensors" in err[0]
    assert not (tmp_path / "demo").exists()
    assert cli.main(["demo", "--out-dir", str(tmp_path / "d"), "--max-size", "-1"]) == 2
    # --model with --method gatys: refused before anything is written (it failed after the
    # inputs were, once stylize refused the network option)
    capsys.readouterr()
    assert cli.main(["demo", "--out-dir", str(tmp_path / "g"), "--method", "gatys",
                     "--model", str(bad)]) == 1
    assert capsys.readouterr().err.strip() == "error: --model applies to --method network only"
    assert not (tmp_path / "g").exists()


def test_without_a_built_in_model_the_demo_runs_gatys(tmp_path, monkeypatch, capsys):
    # an installation without assets/model.safetensors (README: the demo then runs Gatys)
    monkeypatch.setattr(inference, "BUILTIN_MODEL", tmp_path / "missing" / "model.safetensors")
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out-dir", str(out), "--max-size", "32", "--iterations", "2",
                     "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "no trained model" in said and "running the Gatys optimizer instead" in said
    assert Image.open(out / "gatys" / "astronaut__strokes.png").size[0] == 32
    assert not (out / "stylized").exists() and (out / MARKER).is_file()


@pytest.fixture
def stub_stylize(monkeypatch):
    """Record the demo's in-process ``stylize`` commands instead of running them; ``rcs`` lists
    the exit codes to return (then 0)."""
    from arbitrary_nst import cli_demo

    calls, rcs = [], []
    monkeypatch.setattr(cli_demo, "_stylize",
                        lambda argv: calls.append(argv) or (rcs.pop(0) if rcs else 0))
    monkeypatch.setattr(cli_stylize, "load_stylizer", lambda model, *a, **k: None)
    return calls, rcs


def _opt(argv, name, n=1):
    i = argv.index(name)
    return argv[i + 1:i + 1 + n] if n > 1 else argv[i + 1]


def test_demo_passes_its_options_to_every_stylize_call(tmp_path, stub_stylize, capsys):
    calls, _ = stub_stylize
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out-dir", str(out), "--model", "my.safetensors",
                     "--max-size", "48", "--no-progress"]) == 0
    assert len(calls) == len(DEMO_STYLES) + 2
    for argv in calls:  # the user's model, size and quietness everywhere
        assert _opt(argv, "--model") == "my.safetensors" and _opt(argv, "--max-size") == "48"
        assert "--no-progress" in argv and "--overwrite" in argv
    style_dir = out / "inputs" / "style"
    # one call per style over the content folder (several --style values would be mixed)
    assert [_opt(a, "--style") for a in calls[:4]] == [str(style_dir / f"{s}.png")
                                                      for s in DEMO_STYLES]
    assert all(_opt(a, "--content") == str(out / "inputs" / "content") and
               _opt(a, "--out-dir") == str(out / "stylized") for a in calls[:4])
    interp, sweep = calls[4], calls[5]
    a, b = _opt(interp, "--interpolate", 2)
    assert a != b and {a, b} <= {str(style_dir / f"{s}.png") for s in DEMO_STYLES}
    assert _opt(interp, "--out") == str(out / "interpolation.png")
    assert _opt(sweep, "--out") == str(out / "strength_sweep.png") and "--strength-sweep" in sweep
    # the inputs it wrote: photos at --max-size, the 4 generated styles
    for name in DEMO_CONTENTS:
        assert max(Image.open(out / "inputs" / "content" / f"{name}.png").size) == 48
    assert sorted(p.name for p in style_dir.iterdir()) == sorted(f"{s}.png" for s in DEMO_STYLES)
    # without --no-progress / --model: not passed
    calls.clear()
    assert cli.main(["demo", "--out-dir", str(out), "--max-size", "48"]) == 0
    assert calls and not any("--no-progress" in a or "--model" in a for a in calls)
    capsys.readouterr()


def test_demo_paths_that_start_with_a_dash_reach_stylize_as_paths(tmp_path, stub_stylize,
                                                                   monkeypatch, capsys):
    """`demo --out-dir=-demo` wrote its inputs, then failed on "argument --content: expected
    at least one argument": the folder, put in stylize's argv as is, was read as an option
    (`--model=-m.safetensors` too). Every argv it makes parses, to those paths."""
    calls, _ = stub_stylize
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--out-dir=-demo", "--model=-m.safetensors", "--max-size", "32",
                     "--no-progress"]) == 0
    capsys.readouterr()
    assert len(calls) == len(DEMO_STYLES) + 2
    for argv in calls:
        a = cli_stylize.build_parser().parse_args(argv)
        folder = tmp_path / "-demo" / "inputs" / "content"
        assert os.path.samefile(a.content[0], folder if a.out_dir else folder / "astronaut.png")
        assert a.model == os.path.join(".", "-m.safetensors")
        assert os.path.abspath(a.out or a.out_dir).startswith(str(tmp_path / "-demo"))


@pytest.mark.parametrize("failing", [0, 3, 4, 5])
def test_any_failed_stylize_call_makes_the_exit_status_1(tmp_path, stub_stylize, capsys, failing):
    calls, rcs = stub_stylize
    rcs.extend([0] * failing + [1])
    assert cli.main(["demo", "--out-dir", str(tmp_path / "d"), "--max-size", "32"]) == 1
    assert len(calls) == len(DEMO_STYLES) + 2  # the other calls still ran
    assert "some images were skipped" in capsys.readouterr().out


def test_gatys_fallback_gets_the_iterations(tmp_path, stub_stylize, monkeypatch, capsys):
    calls, _ = stub_stylize

    def no_model(model, *a, **k):
        raise ModelError("no built-in model")

    monkeypatch.setattr(cli_stylize, "load_stylizer", no_model)
    out = tmp_path / "d"
    assert cli.main(["demo", "--out-dir", str(out), "--max-size", "32", "--iterations", "7"]) == 0
    [argv] = calls
    assert _opt(argv, "--method") == "gatys" and _opt(argv, "--iterations") == "7"
    assert _opt(argv, "--out") == str(out / "gatys" / "astronaut__strokes.png")
    assert "no trained model" in capsys.readouterr().out


def test_demo_inputs_and_size_limits(tmp_path, stub_stylize, capsys):
    """The inputs are the 3 demo photos at --max-size and the 4 styles at 512 px whatever
    --max-size (small style images would weaken every style); a --max-size below VGG16's
    32 px is a usage error before anything is written (it failed in stylize after the
    inputs were)."""
    calls, _ = stub_stylize
    out = tmp_path / "d"
    assert cli.main(["demo", "--out-dir", str(out), "--max-size", "32"]) == 0
    photos = sorted((out / "inputs" / "content").iterdir())
    assert len(photos) == 3 and all(max(Image.open(p).size) == 32 for p in photos)
    for s in DEMO_STYLES:
        assert Image.open(out / "inputs" / "style" / f"{s}.png").size == (512, 512)
    calls.clear()
    capsys.readouterr()
    for size in ("31", "0"):
        assert cli.main(["demo", "--out-dir", str(tmp_path / "small"), "--max-size", size]) == 2
        assert "--max-size" in capsys.readouterr().err
    assert not (tmp_path / "small").exists() and not calls


def test_an_empty_output_name_is_refused_by_every_command(tmp_path, monkeypatch, capsys):
    """An empty --out / --out-dir (an unset ``$OUT``) is ``Path("")``, the current folder:
    demo and evaluate wrote their folders there, distill would have too, and the others said
    something about "." or about the option not being given. One line, exit 1, nothing
    written."""
    from arbitrary_nst import cli, data, distill, evaluate

    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(tmp_path / "c.png")
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(tmp_path / "s.png")
    before = sorted(p.name for p in tmp_path.iterdir())
    runs = {
        "demo": lambda e: cli.main(["demo", "--out-dir", e, "--max-size", "32"]),
        "evaluate": lambda e: evaluate.main(["--content", "c.png", "--style", "s.png",
                                             "--out", e, "--methods", "identity"]),
        "distill": lambda e: distill.main(["--out", e]),
        "stylize --out": lambda e: cli.main(["--content", "c.png", "--style", "s.png",
                                             "--out", e]),
        "stylize --out-dir": lambda e: cli.main(["--content", "c.png", "--style", "s.png",
                                                 "--out-dir", e]),
        "export-onnx": lambda e: cli.main(["export-onnx", "--out", e]),
        "fit-style": lambda e: cli.main(["fit-style", "--style", "s.png", "--photos", "c.png",
                                         "--out", e]),
        "data export": lambda e: data.main(["export", "--source", "synthetic", "--out", e]),
    }
    for name, run in runs.items():
        for empty in ("", " "):
            assert run(empty) == 1, name
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and " is empty; give " in err[0], (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
