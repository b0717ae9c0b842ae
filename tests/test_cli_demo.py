"""Tests of ``infer.py demo`` (arbitrary_nst.cli_demo) with a random width-0.25 model at 64 px:
it runs, reruns over its own folder, never writes into a folder of the user's, reports skips
in its exit status, and a named model that cannot be loaded is an error (no silent fallback)."""
from __future__ import annotations

import pytest
from PIL import Image

from arbitrary_nst import cli, cli_stylize, inference
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
