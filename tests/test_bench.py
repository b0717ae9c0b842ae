"""The benchmarks must keep running against the library they time: tiny configurations of
``bench/infer.py`` (it calls the jitted stylize function directly, so a changed signature shows
up here as a skipped configuration, not only when someone next benchmarks), ``bench/data.py``,
``bench/train.py`` (both loader modes) and ``bench/bucketing.py``."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "infer.py"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH.parent / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_infer_bench_runs_a_tiny_configuration(tmp_path):
    mod = _load("infer")
    out = tmp_path / "bench.json"
    assert mod.main(["--widths", "0.25", "--sizes", "32", "--batches", "1", "--backends", "jax",
                     "--no-peer", "--no-pipeline", "--min-time", "0.05", "--max-reps", "3",
                     "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["skipped"] == [], result["skipped"]
    (run,) = result["ours"][0]["runs"]
    assert run["ms_per_image"] > 0 and run["reps"] >= 1


def test_data_bench_measures_both_loader_modes(tmp_path, monkeypatch):
    # No training data (as on a fresh machine): the synthetic source only.
    monkeypatch.setenv("ARBITRARY_NST_DATA", str(tmp_path / "no_data"))
    mod = _load("data")
    out = tmp_path / "data.json"
    assert mod.main(["--batches", "2", "--batch-size", "2", "--workers", "1", "--prefetch", "1",
                     "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert sorted(r["mode"] for r in runs) == ["device", "host"]
    assert all(r["source"] == "synthetic" and r["images_per_s"] > 0 for r in runs)


def test_train_bench_runs_the_smoke_config_with_each_loader_mode(tmp_path):
    mod = _load("train")
    out = tmp_path / "train.json"
    assert mod.main(["--configs", "smoke", "--steps", "1", "--warmup", "0", "--no-loop",
                     "--loader-batches", "2", "--data", "synthetic", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    # (compile_s is 0.0 when an earlier test in this process compiled the same step: JAX's
    # in-process compilation cache; a bench run is a fresh process)
    assert row["step"]["steps_per_s"] > 0 and row["step"]["compile_s"] >= 0
    assert row["loader"]["device_augment"] is True and row["loader"]["batches_per_s"] > 0
    # --host-augment's loader (its step is another compile of the same code; the batches of
    # the two modes are shown equal in test_device_augment.py)
    from arbitrary_nst import training

    cfg = training.load_config(mod.ROOT / "configs" / "smoke.py", ["data.device_augment=False"])
    host = mod.bench_loader(cfg, 2)
    assert host["device_augment"] is False and host["batches_per_s"] > 0


def test_correction_predictability_scores_what_the_features_explain(tmp_path):
    # bench/correction_predictability.py: its cross-validated kernel ridge must find a correction
    # that is a linear function of a feature block, and find nothing in features that are noise.
    import numpy as np
    import pytest

    mod = _load("correction_predictability")
    rng = np.random.default_rng(0)
    n, f, g = 96, 40, 12
    x = rng.normal(size=(n, f))
    noise = rng.normal(size=(n, f))
    offset = rng.normal(size=g)
    linear = x @ rng.normal(size=(f, g)) + offset + 0.05 * rng.normal(size=(n, g))
    explained = mod.cross_validated([x], linear, ridges=(0.01, 1.0))
    assert max(explained.values()) > 0.95
    assert max(mod.cross_validated([noise], linear, ridges=(0.01, 1.0)).values()) < 0.1
    # the shared offset: the intercept alone explains |offset|^2 of |offset|^2 + |x W|^2
    shared = offset + 0.1 * rng.normal(size=(n, g))
    assert mod.cross_validated([], shared, ridges=(1.0,))[1.0] > 0.9
    with pytest.raises(SystemExit, match="no chunk_"):
        mod.load_oracle(tmp_path)


def test_bench_scripts_give_one_error_line_for_bad_options(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    for argv in (["bench/train.py", "--configs", "nope", "--json", str(tmp_path / "t.json")],
                 ["bench/data.py", "--batch-size", "0", "--json", str(tmp_path / "d.json")]):
        p = subprocess.run([sys.executable, *argv], cwd=root, capture_output=True, text=True,
                           timeout=300)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 1 and lines and lines[-1].startswith("error: "), p.stderr
        assert "Traceback" not in p.stderr


def test_bench_options_are_checked_before_measuring_and_results_are_not_replaced(tmp_path):
    """bench/gatys.py: '--configs 64' / '0x1' and '--timeout 0' were tracebacks; '64x0',
    '--iters -1' ran and replaced the committed results with rows of errors; '--iters 0' ran
    20 iterations. data/train/vgg_loss_scales: negative counts wrote negative rates, '--size
    8' was a traceback, an unwritable --json failed after the whole measurement."""
    from arbitrary_nst.errors import ConfigError

    gatys, data, train, scales = (_load(n) for n in ("gatys", "data", "train", "vgg_loss_scales"))
    out = ["--out", str(tmp_path / "g.json")]
    for argv, msg in ((["--configs", "64"], "not SIZExBATCH"), (["--configs", "0x1"], "SIZE >= 32"),
                      (["--configs", "64x0"], "BATCH >= 1"), (["--configs", ""], "not SIZExBATCH"),
                      (["--iters", "0"], "--iters must be >= 1"),
                      (["--warmup", "-1"], "--warmup must be >= 0"),
                      (["--timeout", "0"], "--timeout must be > 0"),
                      (["--torch-configs", "x"], "--torch-configs"),
                      (["--out", str(tmp_path)], "is a directory")):
        with pytest.raises(ConfigError, match=msg):
            gatys.main(["--no-torch", *out, *argv])
    # every measurement failing (here: timing out) writes nothing
    with pytest.raises(ConfigError, match="every measurement failed .*timed out"):
        gatys.main(["--no-torch", *out, "--configs", "32x1", "--iters", "1", "--timeout", "0.01"])
    assert not (tmp_path / "g.json").exists()
    for mod, argv, msg in ((data, ["--batches", "-1"], "--batches must be >= 1"),
                           (data, ["--workers", "1", "0"], "--workers must be >= 1"),
                           (train, ["--steps", "-1"], "--steps must be >= 1"),
                           (train, ["--json", str(tmp_path)], "--json .* is a directory"),
                           (scales, ["--size", "8"], "--size must be >= 32"),
                           (scales, ["--json", str(tmp_path / "x.txt")], "unsupported output")):
        with pytest.raises(ConfigError, match=msg):
            mod.main([*argv] if "--json" in argv else [*argv, "--json", str(tmp_path / "o.json")])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_bucketing_bench_measures_bucketed_against_exact():
    """bench/bucketing.py: the padding it reports is the Stylizer's, and the bucketed result
    equals the exact one to float rounding on and off the ladder (one small case each)."""
    mod = _load("bucketing")
    on, off = mod.measure(cases=(("astronaut", 256), ("coffee", 100)), styles=("waves",),
                          edge=16)
    assert (on["h"], on["w"], on["bucket_h"], on["bucket_w"]) == (256, 256, 256, 256)
    assert on["max"] < 1e-5  # on a rung: no padding, the same result
    assert (off["h"], off["w"], off["bucket_h"], off["bucket_w"]) == (67, 100, 80, 112)
    assert off["max"] < 1e-5 and off["max"] >= off["p99"]
