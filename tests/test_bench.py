"""The benchmarks must keep running against the library they time: tiny configurations of
``bench/infer.py`` (it calls the jitted stylize function directly, so a changed signature shows
up here as a skipped configuration, not only when someone next benchmarks), ``bench/data.py``,
``bench/train.py`` (both loader modes) and ``bench/bucketing.py``."""
from __future__ import annotations

import importlib.util
import json
import re
import types
from pathlib import Path

import numpy as np
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
    # images/s count content images, as the step's do (the loader's counted content + style)
    for ld, b in ((row["loader"], row["batch_size"]), (host, int(cfg.train.batch_size))):
        assert ld["content_images_per_s"] == pytest.approx(b * ld["batches_per_s"], rel=0.02,
                                                           abs=0.1)
        assert "images_per_s" not in ld  # (its old key: content + style)
    assert row["step"]["images_per_s"] == pytest.approx(
        row["batch_size"] * row["step"]["steps_per_s"], rel=0.05)


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
    from arbitrary_nst.errors import ConfigError

    with pytest.raises(ConfigError, match="no chunk_"):
        mod.load_oracle(tmp_path)


def test_bench_scripts_give_one_error_line_for_bad_options(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    for argv in (["bench/train.py", "--configs", "nope", "--json", str(tmp_path / "t.json")],
                 ["bench/data.py", "--batch-size", "0", "--json", str(tmp_path / "d.json")],
                 ["bench/degraded_targets.py", "--eval-out", str(tmp_path / "nope"), "--style",
                  str(tmp_path)]):
        p = subprocess.run([sys.executable, *argv], cwd=root, capture_output=True, text=True,
                           timeout=300)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 1 and lines and lines[-1].startswith("error: "), p.stderr
        assert "Traceback" not in p.stderr


BENCH_SCRIPTS = ("backends", "bucketing", "correction_predictability", "data", "degraded_targets",
                 "gatys", "infer", "train", "vgg_loss_scales")


@pytest.mark.parametrize("name", BENCH_SCRIPTS)
def test_bench_usage_errors_are_one_line_like_the_main_commands(name, capsys):
    """Eight of the nine printed argparse's whole usage block before the error, and kept the
    last of an option given twice without a word."""
    mod = _load(name)
    required = {"correction_predictability": ["--oracle", "o", "--model", "m"],
                "degraded_targets": ["--eval-out", "e", "--style", "s"]}.get(name, [])
    out = "--out" if name == "gatys" else "--json"
    for argv, want in ((["--bogus-opt"], "unrecognized arguments: --bogus-opt"),
                       ([out, "a.json", out, "b.json"], f"argument {out}: given more than once")):
        with pytest.raises(SystemExit) as e:
            mod.main(required + argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: {want}") and f"(see `bench/{name}.py --help`)" in err


def test_bench_shared_module_run_as_a_command_points_to_the_scripts():
    """``python bench/bench_cli.py --help`` was a ModuleNotFoundError traceback."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "bench/bench_cli.py", "--help"], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "not a command" in p.stderr


def test_torch_reference_run_as_a_command_points_to_the_benchmark():
    # bench/torch_gatys.py is a module of bench/gatys.py; run directly (e.g. with --help) it was
    # a ModuleNotFoundError traceback where torch is not installed (it is not a requirement)
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "bench/torch_gatys.py", "--help"], cwd=root,
                       capture_output=True, text=True, timeout=120)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 1 and len(lines) == 1, p.stderr
    assert "bench/gatys.py --help" in lines[0] and "Traceback" not in p.stderr


def test_bench_options_are_checked_before_measuring_and_results_are_not_replaced(
        tmp_path, monkeypatch, capsys):
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
        with pytest.raises(ConfigError, match=msg):  # (--out once: twice is a usage error)
            gatys.main(["--no-torch", *(out if argv[0] != "--out" else []), *argv])
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
    # infer.py: '--sizes 0' was a failed row and exit status 0, '--batches 0' a ZeroDivisionError
    # recorded as skipped, '--min-time -1' / '--max-reps 0' were taken, '--json DIR' a traceback
    # after the whole measurement. Nothing may be measured (or even loaded) first.
    infer = _load("infer")

    def measured(*a, **k):
        raise AssertionError("measured before the options were checked")

    for name in ("bench_ours", "bench_ours_onnx", "bench_embed", "bench_peer", "bench_pipeline",
                 "random_stylizer"):
        monkeypatch.setattr(infer, name, measured)
    import arbitrary_nst.vgg

    monkeypatch.setattr(arbitrary_nst.vgg, "load_vgg16", measured)
    for argv, msg in ((["--sizes", "0"], "--sizes must be >= 32"),
                      (["--sizes", "256", "16"], "--sizes must be >= 32"),
                      (["--batches", "0"], "--batches must be >= 1"),
                      (["--widths", "0"], "--widths must be >= 0.03125"),
                      (["--min-time", "-1"], "--min-time must be >= 0"),
                      (["--min-time", "nan"], "--min-time must be >= 0"),
                      (["--max-reps", "0"], "--max-reps must be >= 1"),
                      (["--budget-s", "0"], "--budget-s must be >= 1"),
                      (["--peer-threads", "0"], "--peer-threads must be >= 1"),
                      (["--pipeline-images", "0"], "--pipeline-images must be >= 1"),
                      (["--pipeline-batch", "0"], "--pipeline-batch must be >= 1"),
                      (["--workers", "0"], "--workers must be >= 1"),
                      (["--json", str(tmp_path)], "--json .* is a directory"),
                      (["--json", str(tmp_path / "x.txt")], "unsupported output")):
        with pytest.raises(ConfigError, match=msg):
            infer.main([*argv] if "--json" in argv else [*argv, "--json", str(tmp_path / "i.json")])
    # bucketing.py likewise ('--json DIR' was a traceback after 40-80 s of measuring); it reports
    # its errors itself (exit status 1, one line)
    bucketing = _load("bucketing")
    monkeypatch.setattr(bucketing, "measure", measured)
    monkeypatch.setattr(bucketing, "cost", measured)
    for argv, msg in ((["--repeats", "-1"], "--repeats must be >= 0"),
                      (["--edge", "-1"], "--edge must be >= 0"),
                      (["--json", str(tmp_path)], "--json .* is a directory")):
        capsys.readouterr()
        assert bucketing.main([*argv] if "--json" in argv
                              else [*argv, "--json", str(tmp_path / "b.json")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and re.search(msg, err), err
    # correction_predictability.py: '--folds 0' was a ValueError after the loading, '--folds 1'
    # all-NaN scores written to the JSON
    cp = _load("correction_predictability")
    monkeypatch.setattr(cp, "load_oracle", measured)
    monkeypatch.setattr(cp, "load_oracle_meta", measured)
    for folds in ("0", "1", "-3"):
        with pytest.raises(ConfigError, match="--folds must be >= 2"):
            cp.main(["--oracle", str(tmp_path), "--model", "m", "--folds", folds])
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


# ----------------------------------------------------------------------------------------------
# Tiny, monkeypatched runs of every script's main (nothing is measured): the result files are
# not replaced without --overwrite, and each one records which code and machine produced it.

META_KEYS = {"command", "git_commit", "git_dirty", "date_utc", "versions", "device", "cpu_count"}


def _no_measuring(*a, **k):
    raise AssertionError("measured although the run was refused")


def _fake_infer(mod, monkeypatch):
    import arbitrary_nst.vgg

    monkeypatch.setattr(arbitrary_nst.vgg, "load_vgg16", lambda *a, **k: None)
    model = types.SimpleNamespace(width=0.25)
    monkeypatch.setattr(mod, "random_stylizer",
                        lambda width, *a: types.SimpleNamespace(model=model, source="fake"))
    monkeypatch.setattr(mod, "bench_embed", lambda st, args: {"ms": 1.5, "compile_s": 0.1,
                                                              "predictor": "jax"})
    row = {"compile_s": 0.1, "reps": 1, "ms_per_image": 2.0, "ms_per_image_min": 2.0,
           "images_per_s": 500.0, "batch_s": 0.002, "xla_memory_mb": 3.0, "device_peak_mb": None}
    monkeypatch.setattr(mod, "bench_ours", lambda *a, **k: dict(row))
    monkeypatch.setattr(mod, "bench_ours_onnx", lambda *a, **k: dict(row, xla_memory_mb=None))


def _fake_runs(monkeypatch, tmp_path):
    """{script: (module, argv without --json)} with every measuring function replaced."""
    import numpy as np

    runs = {}
    gatys = _load("gatys")
    jax_row = {"framework": "jax", "size": 32, "batch": 1, "iterations": 1, "evaluations": 1,
               "seconds": 1.0, "it_per_s": 1.0, "evals_per_s": 1.0, "final_loss_mean": 1.0,
               "warmup_s_incl_compile": 0.1, "peak_rss_mb": 100.0, "xla_temp_mb": 10.0}
    monkeypatch.setattr(gatys, "_run_child", lambda fw, size, batch, *a: dict(jax_row))
    monkeypatch.setattr(gatys, "_parity", lambda size: {"loss_at_content_jax": [1.0]})
    runs["gatys"] = (gatys, ["--no-torch", "--configs", "32x1", "--iters", "1"])

    infer = _load("infer")
    _fake_infer(infer, monkeypatch)
    runs["infer"] = (infer, ["--widths", "0.25", "--sizes", "32", "--batches", "1",
                             "--backends", "jax", "--no-peer", "--no-pipeline"])

    bucketing = _load("bucketing")
    row = {"content": "chelsea", "h": 67, "w": 100, "bucket_h": 80, "bucket_w": 112,
           "padded_pixels_pct": 33.7, "mean": 1e-7, "p99": 1e-6, "interior_mean": 1e-7,
           "edge_band_mean": 1e-7, "max": 1e-6}
    monkeypatch.setattr(bucketing, "measure", lambda **k: [row])
    monkeypatch.setattr(bucketing, "cost", lambda *a, **k: None)
    runs["bucketing"] = (bucketing, ["--repeats", "0"])

    data = _load("data")
    monkeypatch.setattr(data, "DATA_ROOT", tmp_path / "no_data")
    monkeypatch.setattr(data.data, "prepare", lambda cfg: {})
    monkeypatch.setattr(data, "measure", lambda cfg, sources, w, *a: {
        "mode": "host", "workers": w, "images_per_s": 1.0, "batches_per_s": 1.0})
    runs["data"] = (data, ["--workers", "1", "--modes", "host"])

    train = _load("train")
    monkeypatch.setattr(train, "bench_step", lambda cfg, steps, warmup: {
        "steps_per_s": 1.0, "images_per_s": 4.0, "dtype": "float32", "achieved_tflops": 10.0,
        "gflops_per_step": 1.0})
    monkeypatch.setattr(train, "bench_loader", lambda cfg, n: {"batches_per_s": 2.0})
    monkeypatch.setattr(train, "bench_loop", lambda cfg, n: {"steps_per_s": 0.5})
    runs["train"] = (train, ["--configs", "smoke", "--peak-tflops", "100"])

    scales = _load("vgg_loss_scales")
    monkeypatch.setattr(scales.vgg_lib, "load_vgg16", lambda **k: None)
    monkeypatch.setattr(scales, "layer_losses", lambda net, c, s: {
        t: {"content": 1.0, "style": 2.0} for t in scales.TAPS})
    runs["vgg_loss_scales"] = (scales, ["--size", "32"])

    cp = _load("correction_predictability")
    oracle = tmp_path / "oracle"
    oracle.mkdir()
    (oracle / "oracle.json").write_text(json.dumps({"style_size": 32}))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5))
    np.savez(oracle / "chunk_000.npz", index=np.arange(8), x=x, c=rng.normal(size=(8, 3)),
             c0=np.zeros((8, 3)))
    monkeypatch.setattr(cp.data, "prepare", lambda cfg: {"style": None})
    monkeypatch.setattr(cp.export, "load_exported", lambda path: None)
    monkeypatch.setattr(cp, "style_statistics", lambda model, src, idx, size: (
        x, {t: rng.normal(size=(8, 4)) for t in ("relu2_2", "relu3_3")}))
    monkeypatch.setattr(cp, "RIDGES", (1.0,))
    runs["correction_predictability"] = (cp, ["--oracle", str(oracle), "--model", "m.safetensors",
                                              "--folds", "2"])
    return runs


def test_bench_results_are_not_replaced_without_overwrite(tmp_path, monkeypatch, capsys):
    """Every script's default --json was a committed file behind a README table, replaced
    silently by any trial run (`gatys.py --configs 64x1 --iters 1` left a one-row table): an
    existing output is now refused before anything is measured unless --overwrite."""
    from arbitrary_nst.errors import ConfigError

    runs = _fake_runs(monkeypatch, tmp_path)
    for name, (mod, argv) in runs.items():
        out = tmp_path / f"{name}.json"
        out.write_text("committed\n")
        flag = "--out" if name == "gatys" else "--json"
        real = {k: getattr(mod, k) for k in ("_run_child", "bench_ours", "bench_ours_onnx",
                                               "measure", "bench_step", "layer_losses",
                                               "style_statistics") if hasattr(mod, k)}
        for k in real:
            monkeypatch.setattr(mod, k, _no_measuring)
        if name == "bucketing":  # (reports its errors itself: one line, exit status 1)
            capsys.readouterr()
            assert mod.main([*argv, flag, str(out)]) == 1
            err = capsys.readouterr().err.strip()
            assert err.startswith("error: ") and "--overwrite" in err and "\n" not in err, err
        else:
            with pytest.raises(ConfigError, match="exists; pass --overwrite"):
                mod.main([*argv, flag, str(out)])
        assert out.read_text() == "committed\n", name
        for k, v in real.items():
            monkeypatch.setattr(mod, k, v)
        assert mod.main([*argv, flag, str(out), "--overwrite"]) == 0, name
        assert json.loads(out.read_text())["meta"], name


def test_bench_results_record_the_code_and_machine(tmp_path, monkeypatch):
    """Each result JSON says which command, commit, date, versions and device produced it."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True).stdout.strip() or None
    for name, (mod, argv) in _fake_runs(monkeypatch, tmp_path).items():
        out = tmp_path / f"{name}.json"
        assert mod.main([*argv, "--out" if name == "gatys" else "--json", str(out)]) == 0
        meta = json.loads(out.read_text())["meta"]
        assert META_KEYS <= set(meta), (name, sorted(meta))
        assert meta["command"].startswith(f"python bench/{name}.py "), meta["command"]
        assert str(out) in meta["command"]
        assert meta["git_commit"] == head and isinstance(meta["git_dirty"], (bool, type(None)))
        assert meta["date_utc"].endswith("+00:00")
        assert {"python", "jax", "jaxlib", "flax", "numpy"} <= set(meta["versions"])
        if name != "data":  # (data.py never imports JAX: no device to name)
            assert meta["device"]["platform"] and meta["device"]["kind"], (name, meta["device"])


def test_train_bench_resolves_every_config_before_measuring(tmp_path, monkeypatch):
    """'--configs smoke nosuch' measured smoke for 14 s, then failed and lost it; '--dtype foo'
    and a mistyped '--data' likewise."""
    from arbitrary_nst.errors import ConfigError

    mod = _load("train")
    for name in ("bench_step", "bench_loader", "bench_loop"):
        monkeypatch.setattr(mod, name, _no_measuring)
    out = ["--json", str(tmp_path / "t.json")]
    for argv, msg in ((["--configs", "smoke", "nosuch"], "nosuch.py: config file not found"),
                      (["--configs", "smoke", "--dtype", "foo"], "--dtype: train.dtype must be"),
                      (["--configs", "smoke", "--data", "npz:/no/such.npz"], "no such file"),
                      (["--configs", "smoke", "--data", "synthtic"], "--data must be"),
                      (["--configs", "smoke", "--peak-tflops", "-1"], "--peak-tflops must be")):
        with pytest.raises(ConfigError, match=msg):
            mod.main([*argv, *out])
    assert not (tmp_path / "t.json").exists()


def test_train_bench_peak_follows_the_compute_dtype(monkeypatch):
    """fraction_of_peak divided by the bf16 peak even for --dtype float32 (TF32: half of it)."""
    mod = _load("train")
    kind = {"k": "NVIDIA H100 80GB HBM3"}
    fake = types.SimpleNamespace(default_backend=lambda: "gpu",
                                 devices=lambda: [types.SimpleNamespace(device_kind=kind["k"])])
    monkeypatch.setattr(mod, "jax", fake)
    assert mod.peak_flops(None, "bfloat16") == 989e12
    assert mod.peak_flops(None, "float32") == 495e12
    kind["k"] = "NVIDIA H100 PCIe"
    assert mod.peak_flops(None, "bfloat16") == 756e12
    kind["k"] = "Some future GPU"
    assert mod.peak_flops(None, "float32") is None
    assert mod.peak_flops(50.0, "float32") == 50e12


def test_train_bench_loop_silences_only_its_own_sigint_warning(monkeypatch, caplog):
    """The bench stops training.train's loop with a SIGINT, and the library's "received SIGINT:
    saved a checkpoint ... run again to resume" warning was printed on every bench run."""
    import logging

    mod = _load("train")
    seen = {}

    def fake_train(cfg, wd, **k):
        seen["wd"] = wd
        mod.training.log.warning("received SIGINT: saved a checkpoint at step 4 in %s; run "
                                 "again to resume", wd)
        mod.training.log.warning("a real problem")
        return types.SimpleNamespace(step=4, history=[{"steps_per_sec": 2.0}])

    monkeypatch.setattr(mod.training, "train", fake_train)
    cfg = mod.training.load_config(mod.ROOT / "configs" / "smoke.py")
    with caplog.at_level(logging.WARNING):
        assert mod.bench_loop(cfg, 2)["steps_per_s"] == 2.0
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["a real problem"], msgs
    caplog.clear()  # the filter is gone afterwards: a user's own interrupted run still says so
    mod.training.log.warning("received SIGINT: saved a checkpoint at step 4 in %s; run again "
                             "to resume", seen["wd"])
    assert len(caplog.records) == 1


def test_infer_bench_times_only_the_backends_asked_for(tmp_path, monkeypatch, capsys):
    """--backends onnxruntime still timed JAX; the style embedding line repeated the JAX
    predictor's figure as if it were onnxruntime's; memory columns said MB for MiB; a run whose
    every configuration failed wrote its table of skips and exited 0."""
    from arbitrary_nst.errors import ConfigError

    mod = _load("infer")
    _fake_infer(mod, monkeypatch)
    import arbitrary_nst.onnx_export

    monkeypatch.setattr(arbitrary_nst.onnx_export, "OnnxTransfer", lambda model, threads: object())
    monkeypatch.setattr(mod, "bench_ours", _no_measuring)
    out = tmp_path / "i.json"
    base = ["--widths", "0.25", "--sizes", "32", "--batches", "1", "--no-peer", "--no-pipeline"]
    assert mod.main([*base, "--backends", "onnxruntime", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [o["backend"] for o in res["ours"]] == ["onnxruntime"]
    assert len(res["ours"][0]["runs"]) == 1 and res["skipped"] == []
    text = capsys.readouterr().out
    (emb,) = [ln for ln in text.splitlines() if ln.startswith("Style embedding")]
    assert "JAX predictor" in emb and emb.count("1.5 ms") == 1 and "onnxruntime:" not in emb, emb
    assert "XLA memory MiB" in text and " MB" not in text
    assert "MiB" in res["units"]
    # both backends: one embedding figure per width, not one per backend
    monkeypatch.setattr(mod, "bench_ours", lambda *a, **k: mod.bench_ours_onnx())
    assert mod.main([*base, "--json", str(out), "--overwrite"]) == 0
    assert [o["backend"] for o in json.loads(out.read_text())["ours"]] == ["jax", "onnxruntime"]
    (emb,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Style emb")]
    assert emb.count("1.5 ms") == 1, emb
    # every configuration failing: exit status 1 (one error line), nothing written

    def oom(*a, **k):
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

    monkeypatch.setattr(mod, "bench_ours", oom)
    out2 = tmp_path / "none.json"
    with pytest.raises(ConfigError, match="every configuration was skipped or failed .*RESOURCE"):
        mod.main([*base, "--backends", "jax", "--json", str(out2)])
    assert not out2.exists()


def test_infer_bench_table_says_when_the_pipeline_compute_was_not_timed():
    """"compute alone: None images/s" when 512^2 x batch 1 was not among the sizes timed."""
    mod = _load("infer")
    meta = {"backend": "cpu", "device_kind": "cpu", "cpu_count": 2, "dtype": "float32"}
    pl = {"images": 2, "size": 512, "batch": 1, "workers": 2, "images_per_s": 3.0}
    res = {"meta": meta, "ours": [], "skipped": [], "peer": [], "pipeline": pl}
    assert "(compute alone: not measured: add --sizes 512 --batches 1)" in mod.format_table(res)
    res["pipeline"] = {**pl, "compute_only_images_per_s": 11.457}
    assert "(compute alone: 11.457 images/s)" in mod.format_table(res)
    # an onnxruntime row has no XLA memory: "-" (it said "None")
    row = {"size": 64, "batch": 1, "ms_per_image": 2.0, "images_per_s": 500.0,
           "compile_s": 0.0, "xla_memory_mb": None}
    res["ours"] = [{"label": "width 0.25, onnxruntime", "width": 0.25, "embed": {},
                    "runs": [row]}, {"label": "width 0.25", "width": 0.25, "embed": {},
                                     "runs": [dict(row, xla_memory_mb=3.5)]}]
    rows = [ln for ln in mod.format_table(res).splitlines() if ln.startswith("| width")]
    assert rows[0].endswith("| 0.0 | - |") and rows[1].endswith("| 0.0 | 3.5 |"), rows


def test_gatys_bench_table_says_mib():
    mod = _load("gatys")
    row = {"framework": "jax", "size": 64, "batch": 1, "iterations": 1, "evaluations": 1,
           "seconds": 1.0, "it_per_s": 1.0, "evals_per_s": 1.0, "final_loss_mean": 1.0,
           "warmup_s_incl_compile": 0.1, "peak_rss_mb": 100.0, "xla_temp_mb": 10.0}
    head = mod._fmt_table([row]).splitlines()[0]
    assert "JAX peak RSS MiB (XLA temp)" in head and "torch peak RSS MiB" in head
    assert " MB" not in head


def test_bucketing_bench_reports_progress_as_it_goes(monkeypatch, capsys):
    """bench/bucketing.py printed nothing for 40-80 s: a line per measured shape and timed call."""
    import time

    import numpy as np

    mod = _load("bucketing")

    class FakeStylizer:
        @staticmethod
        def load(model=None, buckets="ladder"):
            return FakeStylizer()

        def padded_shape(self, h, w):
            return h, w

        def embed(self, style):
            pass

        def stylize(self, x, style):
            time.sleep(0.001)  # (cost() divides by the times)
            return np.zeros(x.shape, np.float32)

    monkeypatch.setattr(mod, "Stylizer", FakeStylizer)
    monkeypatch.setattr(mod.samples, "style_image", lambda name, size: np.zeros((8, 8, 3)))
    rows = mod.measure(cases=(("astronaut", 40), ("coffee", 40)), styles=("waves",), edge=4)
    err = capsys.readouterr().err.splitlines()
    assert len(rows) == 2 and len(err) == 2, err
    assert err[0].startswith("[1/2] astronaut") and err[1].startswith("[2/2] coffee")
    mod.cost(side=40, repeats=3)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 + 3 and err[-1].startswith("cost: [3/3]"), err


def test_correction_predictability_errors_are_one_line(tmp_path, monkeypatch, capsys):
    """A missing oracle.json was a FileNotFoundError traceback."""
    import runpy
    import sys

    script = str(Path(__file__).resolve().parents[1] / "bench" / "correction_predictability.py")
    (tmp_path / "chunk_000.npz").write_bytes(b"")  # (not read: oracle.json is checked first)
    monkeypatch.setattr(sys, "argv", [script, "--oracle", str(tmp_path), "--model", "m"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(script, run_name="__main__")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and err.startswith("error: ") and "\n" not in err, err
    assert "oracle.json: not found" in err


def test_bench_meta_outside_a_git_checkout(tmp_path, monkeypatch):
    """meta(): no commit where the code is not a git checkout of its own (not an enclosing
    repository's either), and the command as a shell line that can be pasted back."""
    cli = _load("bench_cli")
    here = cli.meta(cli.ROOT / "bench" / "gatys.py", ["--configs", "64x1", "--out", "a b.json"])
    assert here["command"] == "python bench/gatys.py --configs 64x1 --out 'a b.json'"
    monkeypatch.setattr(cli, "ROOT", tmp_path)
    m = cli.meta(tmp_path / "x.py", [])
    assert m["git_commit"] is None and m["git_dirty"] is None
    assert m["command"] == "python x.py"


# ------------------------------------------------------------------------------------------------
# Mutation-testing pass: bench_cli and its callers


def test_bench_default_outputs_are_the_committed_files_and_refused(tmp_path, monkeypatch, capsys):
    """Run without --json/--out, each script writes its committed results file; that default
    must be refused like an explicit one (a check of the option alone, None, let a trial run
    replace bench/results/*.json behind a README table). Nothing is measured or written."""
    import sys

    from arbitrary_nst.errors import ConfigError

    runs = _fake_runs(monkeypatch, tmp_path)
    written = []
    for mod in [m for m, _ in runs.values()] + [sys.modules["bench.bench_cli"]]:
        if hasattr(mod, "write_json"):
            monkeypatch.setattr(mod, "write_json", lambda path, *a, **k: written.append(path))
    checked = 0
    for name, (mod, argv) in runs.items():
        if name == "correction_predictability":  # (no default: it prints only)
            continue
        for k in ("_run_child", "bench_ours", "bench_ours_onnx", "measure", "bench_step",
                  "layer_losses"):
            if hasattr(mod, k):
                monkeypatch.setattr(mod, k, _no_measuring)
        capsys.readouterr()
        try:
            rc = mod.main(list(argv))
            msg = capsys.readouterr().err
        except ConfigError as e:
            rc, msg = 1, str(e)
        except AssertionError:  # measured (on a GPU: no committed infer/train/gatys_gpu.json)
            continue
        assert rc == 1 and "exists; pass --overwrite" in msg, (name, msg)
        assert re.search(rf"bench/results/{name}[_a-z0-9]*\.json", msg), (name, msg)
        checked += 1
    import jax

    # (the committed files: *_cpu.json, data, bucketing and vgg_loss_scales on every platform)
    assert written == [] and checked == (6 if jax.default_backend() == "cpu" else 3)


def test_bench_meta_commit_is_its_own_checkouts_and_dirty_means_tracked_changes(tmp_path,
                                                                                monkeypatch):
    """A copy of the code inside another repository (vendored, or a results folder under a
    project's checkout) recorded that repository's commit as the code's; git_dirty is for
    changed tracked files (new result files and notes lying around do not make it dirty)."""
    import subprocess

    cli = _load("bench_cli")
    outer = tmp_path / "outer"
    inner = outer / "vendored" / "nst"
    inner.mkdir(parents=True)

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=outer, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    (outer / "tracked.txt").write_text("a\n")
    git("add", "tracked.txt")
    git("commit", "-q", "-m", "x")
    head = git("rev-parse", "HEAD").strip()
    monkeypatch.setattr(cli, "ROOT", inner)
    m = cli.meta(inner / "bench" / "x.py", [])
    assert m["git_commit"] is None and m["git_dirty"] is None
    monkeypatch.setattr(cli, "ROOT", outer)
    (outer / "new_result.json").write_text("{}")  # untracked
    m = cli.meta(outer / "bench" / "x.py", [])
    assert m["git_commit"] == head and m["git_dirty"] is False
    (outer / "tracked.txt").write_text("b\n")
    assert cli.meta(outer / "bench" / "x.py", [])["git_dirty"] is True


def test_bench_output_errors_name_the_scripts_own_option(tmp_path, monkeypatch):
    """gatys.py's output option is --out: its refusal said "--json ... exists", an option
    the script does not have."""
    from arbitrary_nst.errors import ConfigError

    gatys = _load("gatys")
    argv = ["--no-torch", "--configs", "32x1", "--iters", "1"]
    monkeypatch.setattr(gatys, "_run_child", _no_measuring)
    out = tmp_path / "g.json"
    out.write_text("committed\n")
    with pytest.raises(ConfigError) as e:
        gatys.main([*argv, "--out", str(out)])
    assert str(e.value).startswith(f"--out {out}: exists; pass --overwrite"), str(e.value)
    cli = _load("bench_cli")
    import types

    with pytest.raises(ConfigError) as e:
        cli.check_options(types.SimpleNamespace(overwrite=False), {}, out, "--results")
    assert str(e.value).startswith("--results ")


def test_bench_count_options_below_their_minimum_are_refused(tmp_path, monkeypatch):
    """The minimums not covered above: '--loader-batches 0' (train.py: a loader rate over
    no batches), '--reps 0' (gatys.py: taken as "unset", silently 1) and '--prefetch 0'
    (data.py) are one error before anything is measured or written."""
    from arbitrary_nst.errors import ConfigError

    for name, argv, msg in (("train", ["--loader-batches", "0"], "--loader-batches must be >= 1"),
                            ("gatys", ["--no-torch", "--reps", "0"], "--reps must be >= 1"),
                            ("data", ["--prefetch", "0"], "--prefetch must be >= 1")):
        mod = _load(name)
        for k in ("_run_child", "measure", "bench_step", "bench_loader", "bench_loop"):
            if hasattr(mod, k):
                monkeypatch.setattr(mod, k, _no_measuring)
        flag = "--out" if name == "gatys" else "--json"
        with pytest.raises(ConfigError, match=msg):
            mod.main([*argv, flag, str(tmp_path / f"{name}.json")])
    assert list(tmp_path.iterdir()) == []


def test_backends_bench_times_folder_jobs_per_backend_and_compares_their_images(tmp_path,
                                                                               capsys):
    """bench/backends.py runs infer.py per backend on generated photos of different sizes and
    reports each backend's images against the JAX backend's (at most 1 level apart)."""
    mod = _load("backends")
    photos = mod.make_photos(tmp_path / "p", 3)
    shapes = [mod.images.load_image(p).shape[:2] for p in photos]
    assert len(set(shapes)) == 3  # (different sizes: the point of the folder)
    assert shapes == [(213, 320), (259, 345), (370, 278)]  # (mod.SHAPES)
    half = [mod.images.load_image(p).shape[:2] for p in mod.make_photos(tmp_path / "h", 3, 0.5)]
    assert half == [(107, 160), (129, 172), (185, 139)]  # (each photo's sides halved, rounded)
    out = tmp_path / "b.json"
    assert mod.main(["--content", str(tmp_path / "p"), "--max-size", "48", "--repeats", "1",
                     "--backends", "jax", "auto", "onnxruntime", "--json", str(out)]) == 0
    rows = {r["backend"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["jax"]["vs_jax"] is None and rows["auto"]["resolved"] == "onnxruntime"
    for b in ("auto", "onnxruntime"):
        assert rows[b]["images"] == 3 and rows[b]["vs_jax"]["max_levels"] <= 1, rows[b]
    assert all(r["wall_s_median"] > r["job_s_median"] > 0 for r in rows.values())
    assert all(200 < r["peak_rss_mb_max"] < 20000 for r in rows.values())  # (MiB, this child's)
    assert "| auto | onnxruntime |" in capsys.readouterr().out
    with pytest.raises(Exception, match="exists; pass --overwrite"):  # (nothing run first)
        mod.main(["--repeats", "1", "--json", str(out)])


def test_infer_bench_times_warm_calls_only():
    """bench/infer.py timed the first call of the compiled program (81 ms/image where the
    warm figure was 11.8; with a short --min-time the only rep): one untimed call first."""
    import time

    mod = _load("infer")
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.3 if len(calls) == 1 else 0.01)  # (a cold first call)

    times = mod._timed_reps(fn, min_time=0.05, max_reps=5, per_rep_cap=0.2)
    assert len(calls) == len(times) + 1 and max(times) < 0.2, times
    calls.clear()
    assert len(mod._timed_reps(fn, min_time=0.05, max_reps=5, per_rep_cap=0.2,
                               warmup=0)) == len(calls) == 1  # (the cold call alone)


def test_degraded_targets_finds_outputs_that_match_a_blurred_painting(tmp_path, vgg):
    """bench/degraded_targets.py: outputs that *are* the painting's blurred copy score ~0
    against that copy and more against the painting (ratio < 1); outputs that are the painting
    score 0 against it and more against every copy."""
    from arbitrary_nst import evaluate, images

    mod = _load("degraded_targets")
    rng = np.random.default_rng(3)
    style = tmp_path / "style"
    style.mkdir()
    painting = np.clip(rng.normal(0.5, 0.25, (48, 48, 3)), 0, 1).astype(np.float32)
    images.save_image(style / "p1.png", painting)
    images.save_image(style / "unused.png", painting[::-1])  # no outputs: left out
    x = evaluate._resized_to(images.load_image(style / "p1.png"), 48)
    rows = []
    for method, out in (("blurred", mod.degrade(x, 1.3, None)), ("sharp", x)):
        (tmp_path / "ev" / "images" / method).mkdir(parents=True)
        images.save_image(tmp_path / "ev" / "images" / method / "photo__p1.png", out)
        rows.append({"method": method, "content": "photo", "style": "p1"})
        # not scored: an earlier run's leftover (a photo this run did not take), and another
        # painting's output whose name ends like p1's ("x__fast__p1" is style "fast__p1")
        images.save_image(tmp_path / "ev" / "images" / method / "old__p1.png", x[::-1])
        images.save_image(tmp_path / "ev" / "images" / method / "x__fast__p1.png", x[::-1])
        rows.append({"method": method, "content": "x", "style": "fast__p1"})
    (tmp_path / "ev" / "images" / "other").mkdir()  # outputs of another painting only
    images.save_image(tmp_path / "ev" / "images" / "other" / "photo__p9.png", x)
    rows.append({"method": "other", "content": "photo", "style": "p9"})
    with pytest.raises(Exception, match="no readable results.json"):
        mod.measure(tmp_path / "ev", style, 48, metrics=evaluate.Metrics(vgg))
    (tmp_path / "ev" / "results.json").write_text(json.dumps({"rows": rows}))
    r = mod.measure(tmp_path / "ev", style, 48, metrics=evaluate.Metrics(vgg))
    assert r["paintings"] == 1 and r["pairs"] == {"blurred": 1, "sharp": 1}
    blurred, sharp = r["methods"]["blurred"], r["methods"]["sharp"]
    assert blurred["down1.3"]["total"] < 1e-3 * blurred["painting"]["total"]
    assert sharp["painting"]["total"] < 1e-6 and min(
        sharp[k]["total"] for k in r["self"]) > 0
    # the painting's own copies are as far from it as the sharp outputs are from them
    for k in r["self"]:
        assert abs(r["self"][k]["total"] - sharp[k]["total"]) <= 1e-3 * r["self"][k]["total"]
    assert "down1.14+jpeg78+usm0.75/50" in r["self"]
    text = mod.table(r)
    assert "| blurred (1 outputs) | down1.3 |" in text and "| - |" in text
    # the unsharp mask sharpens what the degradation blurred: an edge's steepest step grows
    edge = np.repeat(np.repeat(np.linspace(0, 1, 48, dtype=np.float32)[None, :, None] > 0.5,
                               48, 0), 3, 2).astype(np.float32)
    blurred, sharpened = (mod.degrade(edge, 1.3, None, u) for u in (None, (0.75, 50)))
    assert np.abs(np.diff(sharpened, axis=1)).max() > np.abs(np.diff(blurred, axis=1)).max()
    assert 0 <= sharpened.min() and sharpened.max() <= 1
